package observe

import (
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/handoffd/handoffd/api"
)

const namespace = "handoff"

// StatusSource is what Collector reads at scrape time; *lifecycle.Supervisor
// implements it.
type StatusSource interface {
	Status(service string) (api.Status, error)
}

var (
	generationInfo = prometheus.NewDesc(namespace+"_generation_info",
		"A live generation of a service: its pid and lifecycle state (starting, ready, active, canary, standby, draining). Always 1.",
		[]string{"service", "generation", "pid", "state"}, nil)
	connectionsActive = prometheus.NewDesc(namespace+"_connections_active",
		"TCP connections a generation holds (ESTABLISHED or CLOSE_WAIT, accepted or queued), counted at scrape time; source=ebpf when the kernel counted its processes' sockets (a task_file iterator), proc when sock_diag and the processes' fds did.",
		[]string{"service", "generation", "source"}, nil)
	connectionsAccepted = prometheus.NewDesc(namespace+"_connections_accepted_total",
		"Connection requests the kernel handed to a generation's listeners: new ones the SK_REUSEPORT program steered there, and those it migrated there from a closing listener (ebpf mode).",
		[]string{"service", "generation"}, nil)
	acceptQueue = prometheus.NewDesc(namespace+"_accept_queue_length",
		"Connections waiting in a listener's accept queue (TCP_INFO of the listening socket).",
		[]string{"service", "listener", "generation"}, nil)
	quicConnections = prometheus.NewDesc(namespace+"_quic_connections",
		"QUIC connections a generation holds on a QUIC listener, as the generation reports them (handoff/handoffquic, on NOTIFY_SOCKET).",
		[]string{"service", "listener", "generation"}, nil)
	steered = prometheus.NewDesc(namespace+"_steered_connections_total",
		"New connections the SK_REUSEPORT program sent to a generation's listeners.",
		[]string{"service", "generation"}, nil)
	migrated = prometheus.NewDesc(namespace+"_migrated_requests_total",
		"Requests the kernel moved from a closing listener's SYN or accept queue to the active generation.",
		[]string{"service"}, nil)
	generationWeight = prometheus.NewDesc(namespace+"_generation_weight",
		"Share of new connections, from 0 to 1, that steering sends to a live generation: 1 for the active one, P and 1-P for a canary and the active one, 0 for the others.",
		[]string{"service", "generation"}, nil)
	serviceFailed = prometheus.NewDesc(namespace+"_service_failed",
		"1 while a service is failed: no generation of it serves, starting one failed (or it could not be re-adopted), and handoffd retries with backoff; the reason is in status and in handoffd's log. 0 otherwise.",
		[]string{"service"}, nil)
	fdStoreFDs = prometheus.NewDesc(namespace+"_fd_store_fds",
		"Fds a service keeps in handoffd's fd store (FDSTORE=1), passed to each new generation after its listeners.",
		[]string{"service"}, nil)
	listenerCounting = prometheus.NewDesc(namespace+"_listener_counting_info",
		"How the connections a live generation holds on a TCP listener are counted (the generation's connections_source): source=ebpf in the kernel, proc by matching the generation's fds with the kernel's socket table, none when they could not be counted; mode is the listener's own (ebpf: steered, fdpass: a shared socket). Always 1.",
		[]string{"service", "listener", "generation", "mode", "source"}, nil)
	modeDesc = prometheus.NewDesc(namespace+"_mode",
		"How handoffd hands listeners over: ebpf (steering) or fdpass (shared sockets). Always 1.",
		[]string{"mode"}, nil)
)

// Collector exports the supervisor's state at scrape time.
type Collector struct {
	src  StatusSource
	mode api.Mode
	log  *slog.Logger
}

// NewCollector returns a collector over src; mode is handoffd's mode.
func NewCollector(src StatusSource, mode api.Mode, log *slog.Logger) *Collector {
	return &Collector{src: src, mode: mode, log: log}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{generationInfo, connectionsActive, connectionsAccepted,
		acceptQueue, quicConnections, steered, migrated, generationWeight, modeDesc, fdStoreFDs, serviceFailed, listenerCounting} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(modeDesc, prometheus.GaugeValue, 1, string(c.mode))
	st, err := c.src.Status("")
	if err != nil {
		c.log.Error("collect metrics", "err", err)
		return
	}
	for _, svc := range st.Services {
		failed := 0.0
		if svc.State == api.ServiceFailed {
			failed = 1
		}
		ch <- prometheus.MustNewConstMetric(serviceFailed, prometheus.GaugeValue, failed, svc.Name)
		n := 0
		for _, fds := range svc.FDStore {
			n += fds
		}
		ch <- prometheus.MustNewConstMetric(fdStoreFDs, prometheus.GaugeValue, float64(n), svc.Name)
		if svc.Mode == api.ModeEBPF {
			ch <- prometheus.MustNewConstMetric(migrated, prometheus.CounterValue, float64(svc.MigratedRequests), svc.Name)
		}
		for _, g := range svc.Generations {
			if g.State.Live() {
				collectGeneration(ch, svc.Name, g)
				collectCounting(ch, svc, g)
			}
		}
	}
}

// collectCounting says, per TCP listener of a live generation, how its
// connections are counted. (A QUIC listener's are what the generation
// reports; a UNIX one's are not counted.)
func collectCounting(ch chan<- prometheus.Metric, svc api.ServiceStatus, g api.GenerationStatus) {
	source := g.ConnectionsSource
	if g.Connections == nil || source == "" {
		source = "none"
	}
	gen := strconv.Itoa(g.ID)
	for _, l := range svc.Listeners {
		if strings.HasPrefix(l.Address, "tcp") {
			ch <- prometheus.MustNewConstMetric(listenerCounting, prometheus.GaugeValue, 1, svc.Name, l.Name, gen, string(l.Mode), source)
		}
	}
}

func collectGeneration(ch chan<- prometheus.Metric, service string, g api.GenerationStatus) {
	gen := strconv.Itoa(g.ID)
	ch <- prometheus.MustNewConstMetric(generationInfo, prometheus.GaugeValue, 1, service, gen, strconv.Itoa(g.PID), g.State.String())
	if g.Weight != nil {
		ch <- prometheus.MustNewConstMetric(generationWeight, prometheus.GaugeValue, *g.Weight, service, gen)
	}
	if g.Connections != nil {
		ch <- prometheus.MustNewConstMetric(connectionsActive, prometheus.GaugeValue, float64(*g.Connections), service, gen, g.ConnectionsSource)
	}
	var accepted, steer uint64
	var counted bool
	for _, l := range g.Listeners {
		if l.AcceptQueue != nil {
			ch <- prometheus.MustNewConstMetric(acceptQueue, prometheus.GaugeValue, float64(*l.AcceptQueue), service, l.Name, gen)
		}
		if l.Protocol == "quic" && l.Connections != nil {
			ch <- prometheus.MustNewConstMetric(quicConnections, prometheus.GaugeValue, float64(*l.Connections), service, l.Name, gen)
		}
		if l.Accepted != nil && l.Steered != nil {
			accepted += *l.Accepted
			steer += *l.Steered
			counted = true
		}
	}
	if counted {
		ch <- prometheus.MustNewConstMetric(connectionsAccepted, prometheus.CounterValue, float64(accepted), service, gen)
		ch <- prometheus.MustNewConstMetric(steered, prometheus.CounterValue, float64(steer), service, gen)
	}
}

// Swaps records swap results and phases; it implements lifecycle.Observer.
type Swaps struct {
	total  *prometheus.CounterVec
	phases *prometheus.HistogramVec
	kills  *prometheus.CounterVec
	cut    *prometheus.CounterVec
	// refused, handoffs and finals count the fd store's refusals and
	// the state handoffs.
	refused  *prometheus.CounterVec
	handoffs *prometheus.CounterVec
	finals   *prometheus.CounterVec
	crashes  *prometheus.CounterVec
}

// NewSwaps returns the swap metrics, to be registered with Register.
func NewSwaps() *Swaps {
	return &Swaps{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "swaps_total",
			Help: "Swaps by result: ok (the new generation is active), failed (it never was; the old one stayed), refused (another swap was under way), rolled_back (a canary's share went back to 0, or the previous generation was made active again, by hand or on a crash or failed health checks), canary (the new generation became a canary; its promotion counts as ok).",
		}, []string{"service", "result"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "swap_phase_seconds",
			Help: "Length of each swap phase: start_to_ready (process start to READY=1), ready_to_active (the steering flip), active_to_old_exited (the old generation's drain).",
			// 10µs to ~40s: the flip takes microseconds, a drain up to drain_timeout.
			Buckets: prometheus.ExponentialBuckets(1e-5, 4, 12),
		}, []string{"service", "phase"}),
		kills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "drain_timeouts_total",
			Help: "Generations that drain_timeout ended with SIGKILL because they had not exited.",
		}, []string{"service"}),
		cut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "drain_killed_connections_total",
			Help: "Connections that generations still held when drain_timeout ended them.",
		}, []string{"service"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "fd_store_refused_total",
			Help: "Messages to the fd store that handoffd refused, their fds closed, by reason: full (over fd_store_max), name (invalid FDNAME), unsealed (a snapshot or final that is not a sealed memfd), oversize (over 4096 bytes, or fds cut off), unexpected (a HANDOFF_STATE nobody asked for, a HANDOFF_FINAL from a generation not draining, fds without FDSTORE=1), off (fd_store_max 0).",
		}, []string{"service", "reason"}),
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "state_handoffs_total",
			Help: "State handoffs to new generations (state_handoff), by result: loaded (the previous generation's snapshot was loaded), cold (there was none to hand over), failed, timeout (state_timeout passed); all but loaded start cold.",
		}, []string{"service", "result"}),
		finals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "state_finals_total",
			Help: "Final deltas of drained generations (HANDOFF_FINAL=1), by result: relayed to the active generation, or dropped.",
		}, []string{"service", "result"}),
		crashes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "generation_crashes_total",
			Help: "Generations that exited (any status or signal) when nobody had asked them to stop: an active one (handoffd replaced it: by a new generation, the canary, or the one in standby), a canary (rolled back) or one in standby. The exit of a draining generation is not counted.",
		}, []string{"service"}),
	}
}

// FDStoreRefused implements lifecycle.Observer.
func (s *Swaps) FDStoreRefused(service, reason string) {
	s.refused.WithLabelValues(service, reason).Inc()
}

// StateHandoff implements lifecycle.Observer.
func (s *Swaps) StateHandoff(service, result string) {
	s.handoffs.WithLabelValues(service, result).Inc()
}

// StateFinal implements lifecycle.Observer.
func (s *Swaps) StateFinal(service, result string) { s.finals.WithLabelValues(service, result).Inc() }

// GenerationCrashed implements lifecycle.Observer.
func (s *Swaps) GenerationCrashed(service string) { s.crashes.WithLabelValues(service).Inc() }

// DrainKilled implements lifecycle.Observer.
func (s *Swaps) DrainKilled(service string, held int64) {
	s.kills.WithLabelValues(service).Inc()
	if held > 0 {
		s.cut.WithLabelValues(service).Add(float64(held))
	}
}

// SwapDone implements lifecycle.Observer.
func (s *Swaps) SwapDone(service, result string) { s.total.WithLabelValues(service, result).Inc() }

// PhaseDone implements lifecycle.Observer.
func (s *Swaps) PhaseDone(service, phase string, d time.Duration) {
	s.phases.WithLabelValues(service, phase).Observe(d.Seconds())
}

// Describe implements prometheus.Collector.
func (s *Swaps) Describe(ch chan<- *prometheus.Desc) {
	s.total.Describe(ch)
	s.phases.Describe(ch)
	s.kills.Describe(ch)
	s.cut.Describe(ch)
	s.refused.Describe(ch)
	s.handoffs.Describe(ch)
	s.finals.Describe(ch)
	s.crashes.Describe(ch)
}

// Collect implements prometheus.Collector.
func (s *Swaps) Collect(ch chan<- prometheus.Metric) {
	s.total.Collect(ch)
	s.phases.Collect(ch)
	s.kills.Collect(ch)
	s.cut.Collect(ch)
	s.refused.Collect(ch)
	s.handoffs.Collect(ch)
	s.finals.Collect(ch)
	s.crashes.Collect(ch)
}

// Known makes the swap counters of a service exist at 0 before its first
// swap, so that rate() and alerts see them from the start.
func (s *Swaps) Known(service string) {
	for _, r := range []string{"ok", "failed", "refused", "rolled_back", "canary"} {
		s.total.WithLabelValues(service, r)
	}
	s.kills.WithLabelValues(service)
	s.cut.WithLabelValues(service)
	s.crashes.WithLabelValues(service)
	for _, r := range []string{"full", "name", "unsealed", "oversize", "unexpected", "off"} {
		s.refused.WithLabelValues(service, r)
	}
	for _, r := range []string{"loaded", "cold", "failed", "timeout"} {
		s.handoffs.WithLabelValues(service, r)
	}
	for _, r := range []string{"relayed", "dropped"} {
		s.finals.WithLabelValues(service, r)
	}
}

// Handler returns the /metrics handler for the given collectors, plus the
// Go runtime's and the process's own (goroutines, open fds, memory), by
// which handoffd itself is watched for leaks.
func Handler(log *slog.Logger, cs ...prometheus.Collector) (http.Handler, error) {
	reg := prometheus.NewRegistry()
	cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)}), nil
}
