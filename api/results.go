package api

// SwapRequest is the optional body of POST /v1/services/{name}/swap.
type SwapRequest struct {
	// Timeout bounds the swap as a Go duration ("30s"); the service's
	// ready_timeout applies as well.
	Timeout string `json:"timeout,omitempty"`
	// Canary, a percentage above 0 and at most 100, makes the new
	// generation a canary that receives this share of new connections
	// beside the active one (ebpf mode), instead of all of them.
	Canary *float64 `json:"canary,omitempty"`
	// Sticky splits a canary by client address: a client stays on one
	// generation.
	Sticky bool `json:"sticky,omitempty"`
}

// CanaryRequest is the body of POST /v1/services/{name}/canary.
type CanaryRequest struct {
	// Weight is the canary's new share of new connections, in percent
	// from 0 to 100.
	Weight float64 `json:"weight"`
}

// CanaryResult says what share of new connections a canary receives.
type CanaryResult struct {
	Service    string `json:"service"`
	Generation int    `json:"generation"`
	// Active is the generation that receives the rest.
	Active int `json:"active"`
	// Weight is the canary's share, from 0 to 1.
	Weight float64 `json:"weight"`
	Sticky bool    `json:"sticky"`
}

// SwapResult tells what a successful swap (or rollback) did.
type SwapResult struct {
	Service    string `json:"service"`
	Generation int    `json:"generation"`
	PID        int    `json:"pid"`
	// Previous is the generation that now drains; 0 on the first start.
	// For a canary it is the active generation, which keeps running.
	Previous int `json:"previous"`
	// Canary is set when the new generation became a canary.
	Canary *CanaryResult `json:"canary,omitempty"`
	// StartToReady and ReadyToActive are the phases of the swap, in seconds.
	StartToReady  float64 `json:"start_to_ready_seconds"`
	ReadyToActive float64 `json:"ready_to_active_seconds"`
}

// DrainResult says which generation POST /v1/services/{name}/drain sent
// to drain.
type DrainResult struct {
	Service    string `json:"service"`
	Generation int    `json:"generation"`
}

// ReloadResult says which generation POST /v1/services/{name}/reload
// signalled.
type ReloadResult struct {
	Service    string `json:"service"`
	Generation int    `json:"generation"`
	PID        int    `json:"pid"`
}

// ConfigChanges says what a config reload did, by service name.
type ConfigChanges struct {
	// Changed services run their next generation with the new config.
	Changed []string `json:"changed"`
	// Added services were started (generation 1).
	Added []string `json:"added"`
	// Removed services are being stopped: their generations drain.
	Removed []string `json:"removed"`
}

// Empty says whether the reload changed nothing.
func (c ConfigChanges) Empty() bool {
	return len(c.Changed) == 0 && len(c.Added) == 0 && len(c.Removed) == 0
}

// ErrorBody is the JSON body of every answer that is not 200 OK.
type ErrorBody struct {
	Error string `json:"error"`
}

// The phases of a swap, as the swap_phase_seconds metric labels them.
const (
	PhaseStartToReady      = "start_to_ready"
	PhaseReadyToActive     = "ready_to_active"
	PhaseActiveToOldExited = "active_to_old_exited"
)
