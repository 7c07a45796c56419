package observe

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/handoffd/handoffd/api"
)

// TestAlertRules checks alerts.yml with promtool and runs its unit tests
// (testdata/alerts_test.yml): each alert fires when it should and not when
// it should not.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is not installed (.ci/run installs Debian's prometheus package, which has it)")
		}
		t.Skip("promtool is not installed (apt-get install prometheus)")
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "testdata/alerts_test.yml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// exported is what handoffd exports: for each series name (a histogram's
// _bucket, _sum and _count included), its labels and the values they took
// in a scrape of every metric.
type exported map[string]map[string]map[string]bool

func scrapeAll(t *testing.T) exported {
	t.Helper()
	s := NewSwaps()
	s.Known("demo")
	s.PhaseDone("demo", api.PhaseStartToReady, time.Second)
	s.DrainKilled("demo", 3)
	s.GenerationCrashed("demo")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The same services in fdpass mode, where every listener is shared.
	fdpass := testStatus()
	for i := range fdpass.Services {
		fdpass.Services[i].Mode = api.ModeFDPass
		for j := range fdpass.Services[i].Listeners {
			fdpass.Services[i].Listeners[j].Mode = api.ModeFDPass
		}
	}
	var families []*dto.MetricFamily
	for _, cs := range [][]prometheus.Collector{{s, NewCollector(testStatus(), api.ModeEBPF, log)}, {NewCollector(fdpass, api.ModeFDPass, log)}} {
		reg := prometheus.NewRegistry()
		reg.MustRegister(cs...)
		got, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		families = append(families, got...)
	}
	out := exported{"up": {"job": {}, "instance": {}}}
	for _, f := range families {
		names := []string{f.GetName()}
		if f.GetType().String() == "HISTOGRAM" {
			names = []string{f.GetName() + "_bucket", f.GetName() + "_sum", f.GetName() + "_count"}
		}
		for _, n := range names {
			// Prometheus adds job and instance to every series it scrapes.
			labels := out[n]
			if labels == nil {
				labels = map[string]map[string]bool{"job": {}, "instance": {}}
			}
			if strings.HasSuffix(n, "_bucket") {
				labels["le"] = map[string]bool{}
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if labels[l.GetName()] == nil {
						labels[l.GetName()] = map[string]bool{}
					}
					labels[l.GetName()][l.GetValue()] = true
				}
			}
			out[n] = labels
		}
	}
	return out
}

// enumerated are the labels whose values handoffd chooses from a fixed
// set: a rule may only match values that a scrape shows.
var enumerated = map[string]bool{"result": true, "mode": true, "source": true, "state": true, "phase": true, "reason": true}

var (
	selector = regexp.MustCompile(`\b([a-z_]+)\{([^}]*)\}`)
	matcher  = regexp.MustCompile(`([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	byClause = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	metric   = regexp.MustCompile(`\b(?:handoff_[a-z_]+|up)\b`)
)

// TestAlertsUseExportedMetrics keeps alerts.yml, and the series its unit
// tests feed promtool, in step with what handoffd exports: every metric
// exists, every label matched or grouped by is one of its labels, and
// every value matched for a label with a fixed set of values is one of
// them.
func TestAlertsUseExportedMetrics(t *testing.T) {
	known := scrapeAll(t)
	check := func(where, expr string) {
		if !metric.MatchString(expr) {
			t.Errorf("%s: %s uses no handoffd metric", where, expr)
		}
		var used []string
		for _, m := range metric.FindAllString(expr, -1) {
			if known[m] == nil {
				t.Errorf("%s: %s, which handoffd does not export", where, m)
			}
			used = append(used, m)
		}
		for _, sel := range selector.FindAllStringSubmatch(expr, -1) {
			labels := known[sel[1]]
			for _, mt := range matcher.FindAllStringSubmatch(sel[2], -1) {
				values, ok := labels[mt[1]]
				switch {
				case !ok:
					t.Errorf("%s: %s has no label %s", where, sel[1], mt[1])
				case enumerated[mt[1]] && !strings.Contains(mt[2], "~") && !values[mt[3]]:
					t.Errorf("%s: %s{%s=%q}: handoffd exports %s only as %v", where, sel[1], mt[1], mt[3], mt[1], keys(values))
				}
			}
		}
		for _, by := range byClause.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(by[1], ",") {
				l = strings.TrimSpace(l)
				if !hasLabel(known, used, l) {
					t.Errorf("%s: groups by %s, which none of %v has", where, l, used)
				}
			}
		}
	}
	rules, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	exprs := regexp.MustCompile(`(?m)^\s+expr:\s*(.+)$`).FindAllStringSubmatch(string(rules), -1)
	if len(exprs) < 7 {
		t.Fatalf("alerts.yml: %d expressions, want one per alert", len(exprs))
	}
	for _, e := range exprs {
		check("alerts.yml", e[1])
	}
	tests, err := os.ReadFile("testdata/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range regexp.MustCompile(`(?m)^\s+- series:\s*'(.+)'$`).FindAllStringSubmatch(string(tests), -1) {
		check("testdata/alerts_test.yml", s[1])
	}
}

func hasLabel(known exported, metrics []string, label string) bool {
	for _, m := range metrics {
		if _, ok := known[m][label]; ok {
			return true
		}
	}
	return false
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
