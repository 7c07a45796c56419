// Package observe exports handoffd's state as Prometheus metrics.
//
// Collector reads the supervisor's status at scrape time (generations,
// connections counted at scrape time, accept queues, steering and
// migration counters) instead of keeping copies that could drift; Swaps
// records what only exists as events: swap results and the length of each
// swap phase. Metric names and labels are handoffd's contract (DESIGN.md
// §4); series of exited generations disappear with them.
//
// alerts.yml holds Prometheus alerting rules over these metrics, tested
// with promtool (testdata/alerts_test.yml); dashboard.json is a Grafana
// dashboard of them. Both are installed with handoffd.
//
// The package does not count anything itself, and apps never import it.
package observe
