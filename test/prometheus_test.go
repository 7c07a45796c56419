package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestPrometheusScrapesHandoffd runs a real Prometheus server against
// handoffd's /metrics, with the alerting rules of observe/alerts.yml, and
// follows a swap through its query API; then a swap that fails fires
// HandoffSwapFailed, and nothing else fires.
func TestPrometheusScrapesHandoffd(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("prometheus is not installed (.ci/run installs Debian's package)")
		}
		t.Skip("prometheus is not installed (apt-get install prometheus)")
	}
	d := startDaemon(t, daemonOptions{metrics: true, demoArgs: []string{"--fault", "exit@3"}})
	dir := t.TempDir()
	rules, err := filepath.Abs("../observe/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [%q]\n"+
		"scrape_configs:\n  - job_name: handoffd\n    static_configs:\n      - targets: [%q]\n", rules, d.metrics)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	web := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+web)
	cmd.Stdout, cmd.Stderr = &lockedWriter{w: d.log}, &lockedWriter{w: d.log}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	if out, err := d.ctl("swap", "demo"); err != nil {
		t.Fatalf("swap: %v: %s", err, out)
	}
	// Prometheus sees the swap and generation 2 active, from its own scrapes.
	for _, q := range []struct{ query, want string }{
		{`handoff_swaps_total{service="demo",result="ok"}`, "2"},
		{`handoff_generation_info{service="demo",state="active"}`, "1"},
		{`count(handoff_connections_active{service="demo",generation="2"})`, "1"},
		{`up{job="handoffd"}`, "1"},
	} {
		promWait(t, web, q.query, q.want)
	}

	// Generation 3 exits before it is ready: the swap fails.
	if out, err := d.ctl("swap", "demo"); err == nil {
		t.Fatalf("swap to generation 3 succeeded: %s", out)
	}
	promWait(t, web, `ALERTS{alertname="HandoffSwapFailed",alertstate="firing",service="demo",job="handoffd"}`, "1")
	promWait(t, web, `count(ALERTS)`, "1")
}

// promWait polls Prometheus until query returns one sample equal to want.
func promWait(t *testing.T, web, query, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + web + "/api/v1/query?query=" + url.QueryEscape(query))
		if err == nil {
			var r struct {
				Data struct {
					Result []struct {
						Value [2]any `json:"value"`
					} `json:"result"`
				} `json:"data"`
			}
			err = json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			if err == nil && len(r.Data.Result) == 1 {
				last = fmt.Sprint(r.Data.Result[0].Value[1])
				if last == want {
					return
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Errorf("Prometheus query %s: got %q, want %q", query, last, want)
}
