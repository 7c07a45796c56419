package observe

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"
)

// TestDashboardUsesKnownMetrics keeps observe/dashboard.json in step with
// the metrics this package exports.
func TestDashboardUsesKnownMetrics(t *testing.T) {
	data, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	known := map[string]bool{}
	for _, n := range []string{"generation_info", "connections_active", "connections_accepted_total",
		"accept_queue_length", "steered_connections_total", "migrated_requests_total", "swaps_total",
		"swap_phase_seconds_bucket", "mode", "fd_store_fds", "fd_store_refused_total",
		"state_handoffs_total", "state_finals_total", "service_failed"} {
		known["handoff_"+n] = true
	}
	metric := regexp.MustCompile(`handoff_[a-z_]+`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range metric.FindAllString(tg.Expr, -1) {
				if !known[m] {
					t.Errorf("panel %q uses %s, which handoffd does not export", p.Title, m)
				}
			}
		}
	}
}
