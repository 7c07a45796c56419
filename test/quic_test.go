package test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/quicid"
	"github.com/handoffd/handoffd/loader"
)

// quicSwaps is how many swaps TestQUICSwapUnderLoad makes: swapCount.
var quicSwaps = swapCount

// TestQUICSwapUnderLoad swaps a service that serves HTTP/1.1 and HTTP/2
// on a TCP port and HTTP/3 on the UDP port of the same number, while 16
// HTTP/3 clients keep a connection each and 16 dial one per request,
// none sending a request twice: not one request may fail, a kept
// connection stays on its generation until that generation's GOAWAY, and
// a connection dialed after a generation became active reaches it or a
// later one.
func TestQUICSwapUnderLoad(t *testing.T) {
	d := startDaemon(t, daemonOptions{quic: true})
	l := startH3Load(d.addr, loadClients/2, loadClients/2)
	active := map[int]time.Time{}
	time.Sleep(300 * time.Millisecond)
	for i := range quicSwaps {
		time.Sleep(swapEvery)
		out, err := d.ctl("swap", "demo")
		if want := fmt.Sprintf("demo: generation %d active", i+2); err != nil || !strings.Contains(out, want) {
			t.Errorf("swap %d: %v: %q, want %q", i+1, err, out, want)
		}
		for _, g := range d.status().Generations {
			if g.ActiveAt != nil {
				active[g.ID] = *g.ActiveAt
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
	res := l.stopLoad()
	last := quicSwaps + 1
	st := d.waitFor("every old generation exited", 40*time.Second*slow, func(st api.ServiceStatus) bool {
		return liveCount(st) == 1 && st.Generations[len(st.Generations)-1].ID == last
	})
	checkH3Result(t, res, quicSwaps, loadClients/2)
	checkDials(t, res, active)
	for gen := 2; gen <= last; gen++ {
		if res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered no HTTP/3 request", gen)
		}
	}
	checkNoLeaks(t, d, st)
}

// checkH3Result fails the test on any failed request or moved
// connection. A request that the old generation refused with
// H3_REQUEST_REJECTED was not processed (RFC 9114, 4.1.1: the client may
// treat it as never sent): quic-go's server sends one GOAWAY, naming the
// last stream it took, and refuses a stream that the client opened while
// the GOAWAY was on its way. Such refusals are counted apart; more than
// one per kept connection and GOAWAY would be refusals outside that race,
// and fail the test.
func checkH3Result(t *testing.T, res h3Result, swaps, kept int) {
	t.Helper()
	t.Logf("HTTP/3: %d ok, %d failed, %d rejected (H3_REQUEST_REJECTED), %d not sent on a new connection that had got GOAWAY, %d connections; per generation %v",
		res.OK, res.Failed, res.Rejected, res.Unsent, res.Conns, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d HTTP/3 requests failed, first ones: %q", res.Failed, res.Failures)
	}
	if res.Rejected > swaps*kept {
		t.Errorf("%d HTTP/3 requests were rejected: more than one per kept connection and GOAWAY", res.Rejected)
	}
	if res.Moved > 0 {
		t.Errorf("%d kept connections were answered by two generations", res.Moved)
	}
	if res.OK < 100*swaps {
		t.Errorf("only %d HTTP/3 requests succeeded: the load did not run", res.OK)
	}
}

// checkDials fails the test when a connection dialed after a generation
// was active reached an older one.
func checkDials(t *testing.T, res h3Result, active map[int]time.Time) {
	t.Helper()
	late := 0
	for _, dl := range res.Dials {
		for gen, at := range active {
			if dl.At.After(at) && dl.Gen < gen {
				if late < 5 {
					t.Errorf("a connection dialed %v after generation %d was active reached generation %d",
						dl.At.Sub(at), gen, dl.Gen)
				}
				late++
				break
			}
		}
	}
	if late > 0 {
		t.Errorf("%d of %d connections reached a generation older than the active one", late, len(res.Dials))
	}
}

// quicSplitConns is how many real HTTP/3 connections TestQUICCanary
// dials through the split: 1000, or HANDOFF_E2E_QUIC_SPLIT. Each costs a
// TLS handshake on both sides, which a race-built demo on 2 CPUs makes
// about 70 ms; the split's accuracy is counted over quicSplitDraws
// first datagrams instead.
var quicSplitConns = envInt("HANDOFF_E2E_QUIC_SPLIT", 1000)

// quicSplitDraws is how many new connections' first datagrams
// TestQUICCanary counts the split's accuracy over.
const quicSplitDraws = 20000

// TestQUICCanary runs a 30% canary of an HTTP/3 service. The first
// datagrams of 20000 new connections (Initials, each with a fresh random
// destination connection ID, as a client picks it: an independent draw),
// sent to the service's port, must reach the canary's socket 30 +- 1.5 %
// of the time, as the steering program counted per generation; 1000 real
// HTTP/3 connections (quic-go, each from a fresh UDP socket) must all be
// answered, by the canary 30 +- 5 % of the time (3.5 standard deviations).
// Then it promotes the canary, and rolls a second one back; 16 clients
// that never send a request twice run the whole time, and none may fail.
func TestQUICCanary(t *testing.T) {
	d := startDaemon(t, daemonOptions{quic: true})
	l := startH3Load(d.addr, loadClients/4, loadClients/4)
	time.Sleep(300 * time.Millisecond)

	d.ctlOK("generation 2 is a canary", "swap", "--canary", "30%", "demo")
	draws := splitDraws(t, d, quicSplitDraws)
	share := float64(draws[2]) / quicSplitDraws
	t.Logf("split over the first datagrams of %d new connections, by the program's counters: %v, canary share %.4f",
		quicSplitDraws, draws, share)
	if share < 0.285 || share > 0.315 {
		t.Errorf("the canary got %.4f of %d new connections (%v), want 0.30 +- 0.015", share, quicSplitDraws, draws)
	}
	start := time.Now()
	byGen := splitCount(t, d.addr, quicSplitConns, 4)
	share = float64(byGen[2]) / float64(quicSplitConns)
	t.Logf("split over %d HTTP/3 connections in %v: %v, canary share %.4f",
		quicSplitConns, time.Since(start).Round(time.Millisecond), byGen, share)
	if byGen[1]+byGen[2] != quicSplitConns || share < 0.25 || share > 0.35 {
		t.Errorf("canary answered %.4f of %d new connections (%v), want 0.30 +- 0.05", share, quicSplitConns, byGen)
	}
	d.ctlOK("generation 2 active", "promote", "demo")
	// A drain ends when the last connection closed: a client's
	// CONNECTION_CLOSE that a busy host dropped leaves the connection to
	// quic-go's idle timeout (30 s) or the drain's deadline.
	d.waitFor("generation 1 drained", 40*time.Second*slow, func(st api.ServiceStatus) bool {
		return stateOf(st, 1) == api.StateExited
	})
	if byGen := splitCount(t, d.addr, 200, 8); byGen[2] != 200 {
		t.Errorf("after the promotion new connections reached %v, want all on generation 2", byGen)
	}

	d.ctlOK("generation 3 is a canary", "swap", "--canary", "50%", "demo")
	time.Sleep(time.Second)
	d.ctlOK("rolled back to generation 2", "rollback", "demo")
	d.waitFor("canary 3 drained", 40*time.Second*slow, func(st api.ServiceStatus) bool {
		return stateOf(st, 3) == api.StateExited
	})
	if byGen := splitCount(t, d.addr, 200, 8); byGen[2] != 200 {
		t.Errorf("after the rollback new connections reached %v, want all on generation 2", byGen)
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stopLoad()
	checkH3Result(t, res, 3, loadClients/4)
	if res.ByGen[3] == 0 {
		t.Errorf("the canary answered none of the load's requests: %v", res.ByGen)
	}
}

// splitDraws sends the Initials of n new connections to the service's QUIC
// port, each with a fresh random destination connection ID, and returns
// how many the steering program placed in the slot of each live
// generation, from its pinned counters. The generations drop them: they
// cannot decrypt them.
func splitDraws(t *testing.T, d *daemon, n int) map[int]int {
	t.Helper()
	q, err := loader.OpenPinnedQUIC(filepath.Join(d.bpfDir, "demo", "h3"))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	gens := map[int]uint32{}
	for _, g := range d.status().Generations {
		if g.State.Live() {
			gens[g.ID] = quicid.SlotOf(g.ID)
		}
	}
	count := func() map[int]uint64 {
		c := map[int]uint64{}
		for gen, slot := range gens {
			qc, err := q.Counters(slot)
			if err != nil {
				t.Fatal(err)
			}
			c[gen] = qc.Initials
		}
		return c
	}
	before := count()
	raddr, err := net.ResolveUDPAddr("udp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	packet := make([]byte, 1200)
	for i := range n {
		// An Initial of QUIC v1: the flags, the version, the DCID's
		// length and the DCID, then an SCID, padded as a client pads it.
		copy(packet, []byte{0xc0, 0, 0, 0, 1, 8})
		rand.Read(packet[6:14])
		packet[14] = 8
		rand.Read(packet[15:23])
		if _, err := conn.Write(packet); err != nil {
			t.Fatalf("send Initial %d: %v", i, err)
		}
		if i%500 == 499 {
			time.Sleep(time.Millisecond) // let the receivers keep up: no drop in a full buffer
		}
	}
	// The program counts as it steers, before any socket is read.
	placed := map[int]int{}
	deadline := time.Now().Add(10 * time.Second * slow)
	for {
		after, total := count(), 0
		for gen := range gens {
			placed[gen] = int(after[gen] - before[gen])
			total += placed[gen]
		}
		if total >= n || time.Now().After(deadline) {
			if total < n {
				t.Fatalf("the program placed %d of %d Initials (%v) within %s", total, n, placed, 10*time.Second*slow)
			}
			return placed
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// splitCount dials n connections over workers at once, one GET each, and
// counts which generation answered; it fails the test on any error. Its
// clients offer X25519 alone: a ClientHello of one datagram, made at a
// third of the cost.
func splitCount(t *testing.T, addr string, n, workers int) map[int]int {
	t.Helper()
	l := &h3Load{addr: addr, small: true}
	var mu sync.Mutex
	byGen := map[int]int{}
	var errs []string
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				c, _, err := l.dial()
				var gen int
				if err == nil {
					gen, err = c.get()
					c.close()
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err.Error())
				} else {
					byGen[gen]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("%d of %d new connections failed, first: %q", len(errs), n, errs[0])
	}
	return byGen
}

// TestQUICRestartAndReadoption kills handoffd (SIGKILL) under HTTP/3 load:
// the generation serves on, steered by the pinned program; a new handoffd
// re-adopts it, its UDP socket included, and swaps it out with a GOAWAY
// drain. Not one request fails.
func TestQUICRestartAndReadoption(t *testing.T) {
	d := startDaemon(t, daemonOptions{quic: true, metrics: true})
	l := startH3Load(d.addr, loadClients/4, loadClients/4)
	// The 8 kept connections show in status and in the metrics, as the
	// generation reports them.
	d.waitFor("generation 1 reports its QUIC connections", 10*time.Second*slow, func(st api.ServiceStatus) bool {
		n := quicConns(st, 1)
		return n != nil && *n >= loadClients/4
	})
	if m, _ := d.scrape("handoff_quic_connections"); m["1"] < loadClients/4 {
		t.Errorf("handoff_quic_connections = %v, want at least %d on generation 1", m, loadClients/4)
	}
	d.ctlOK("generation 2 active", "swap", "demo")
	st := d.waitFor("one generation", 10*time.Second*slow, func(st api.ServiceStatus) bool { return liveCount(st) == 1 })
	if n := quicConns(st, 2); n == nil || *n < loadClients/4 {
		d.waitFor("generation 2 reports its QUIC connections", 10*time.Second*slow, func(st api.ServiceStatus) bool {
			n := quicConns(st, 2)
			return n != nil && *n >= loadClients/4
		})
	}
	pid := st.Generations[len(st.Generations)-1].PID
	d.restart(syscall.SIGKILL)
	st = d.waitFor("re-adopted generation 2", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		last := st.Generations[len(st.Generations)-1]
		return last.ID == 2 && last.State == api.StateActive
	})
	if got := st.Generations[len(st.Generations)-1].PID; got != pid {
		t.Fatalf("generation 2 has pid %d after the restart, want the same process %d", got, pid)
	}
	time.Sleep(500 * time.Millisecond)
	out, err := d.ctl("swap", "--wait", "demo")
	if err != nil || !strings.Contains(out, "generation 3 active") || !strings.Contains(out, "drained") {
		t.Fatalf("swap after the restart: %v: %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stopLoad()
	checkH3Result(t, res, 2, loadClients/4)
	for gen := 1; gen <= 3; gen++ {
		if res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered no request: %v", gen, res.ByGen)
		}
	}
}

// quicConns returns the QUIC connections generation gen reports on the
// listener h3, or nil.
func quicConns(st api.ServiceStatus, gen int) *int64 {
	for _, g := range st.Generations {
		for _, l := range g.Listeners {
			if g.ID == gen && l.Name == "h3" && l.Protocol == "quic" {
				return l.Connections
			}
		}
	}
	return nil
}

// TestQUICCrashAndProbation: HTTPS over TCP announces HTTP/3 (Alt-Svc);
// with probation, the replaced generation stays
// in standby, steerable; the new one crashes a second after it is active
// and new QUIC connections go back to the standby one at once. Then the
// active generation is killed: its replacement takes the new connections.
func TestQUICCrashAndProbation(t *testing.T) {
	d := startDaemon(t, daemonOptions{quic: true, probation: "30s", demoArgs: []string{"--fault", "crash@2:1s"}})
	// HTTPS on the TCP port announces HTTP/3 on the UDP one.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Get("https://" + d.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	_, port, _ := net.SplitHostPort(d.addr)
	if got, want := resp.Header.Get("Alt-Svc"), `h3=":`+port+`"`; !strings.HasPrefix(got, want) {
		t.Errorf("Alt-Svc %q over %s, want it to start with %q", got, resp.Proto, want)
	}
	d.ctlOK("generation 2 active", "swap", "demo")
	// Generation 1 stayed in standby, steerable: steering flips back to
	// it, and nothing new is started.
	st := d.waitFor("rollback to generation 1", 10*time.Second*slow, func(st api.ServiceStatus) bool {
		return stateOf(st, 1) == api.StateActive && stateOf(st, 2) == api.StateExited
	})
	if last := st.Generations[len(st.Generations)-1]; last.ID != 2 {
		t.Errorf("generation %d is the newest; a rollback from probation must not start a new one", last.ID)
	}
	if byGen := splitCount(t, d.addr, 100, 8); byGen[1] != 100 {
		t.Errorf("after generation 2 crashed, new connections reached %v, want all on generation 1", byGen)
	}

	pid := d.status().Generations[0].PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st = d.waitFor("a replacement of generation 1", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		last := st.Generations[len(st.Generations)-1]
		return last.ID == 3 && last.State == api.StateActive
	})
	if byGen := splitCount(t, d.addr, 100, 8); byGen[3] != 100 {
		t.Errorf("after generation 1 was killed, new connections reached %v, want all on generation 3 (%+v)", byGen, st.Generations)
	}
}

// TestQUICNeedsEBPF: a QUIC listener is refused in fdpass mode, and with
// mode auto on a host where eBPF steering is not allowed (no CAP_BPF in
// handoffd's bounding set) handoffd refuses to start, in one line that
// says why, rather than fall back to fdpass and drop the listener.
func TestQUICNeedsEBPF(t *testing.T) {
	requireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux) not found: %v", err)
	}
	for _, tc := range []struct {
		mode string
		wrap []string
		want string
	}{
		{"fdpass", nil, "listener h3: a QUIC listener needs ebpf mode"},
		{"auto", []string{setpriv, "--bounding-set", "-bpf,-sys_admin,-perfmon,-net_admin", "--inh-caps", "-all", "--"},
			"mode auto: eBPF steering is unavailable"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			dir := t.TempDir()
			port := freePort(t)
			cfg := fmt.Sprintf(`control: %s
mode: %s
state_dir: %s
bpf_dir: /sys/fs/bpf/handoff-e2e-%d-%d
services:
  - name: demo
    command: [%q, "--tls", "--http3", "h3"]
    listeners:
      - {name: http, address: "tcp://127.0.0.1:%d"}
      - {name: h3, address: "udp://127.0.0.1:%d", protocol: quic}
`, filepath.Join(dir, "handoffd.sock"), tc.mode, dir, os.Getpid(), port, filepath.Join(bin, "demo"), port, port)
			path := filepath.Join(dir, "handoff.yaml")
			if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			argv := append(append([]string{}, tc.wrap...), filepath.Join(bin, "handoffd"), "--config", path)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second*slow)
			defer cancel()
			out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("handoffd in mode %s with a QUIC listener: %v, want a refusal:\n%s", tc.mode, err, out)
			}
			last := strings.TrimSpace(string(out))
			if i := strings.LastIndexByte(last, '\n'); i >= 0 {
				last = last[i+1:]
			}
			if !strings.Contains(last, tc.want) || !strings.Contains(last, "needs ebpf mode") {
				t.Errorf("handoffd's last line %q, want it to say %q and that QUIC needs ebpf mode", last, tc.want)
			}
			if pids := generationsOf(filepath.Join(dir, "handoffd.sock")); len(pids) > 0 {
				t.Errorf("generations %v started", pids)
			}
		})
	}
}

// TestQUICJoinFromOutside: a demo started by the test joins a service
// with a QUIC listener (join: true), takes its UDP socket from handoffd
// and serves HTTP/3 as generation 2 under load; a swap replaces it.
// Not one request fails.
func TestQUICJoinFromOutside(t *testing.T) {
	d := startDaemon(t, daemonOptions{quic: true, serviceYAML: "    join: true\n"})
	l := startH3Load(d.addr, loadClients/4, loadClients/4)
	time.Sleep(500 * time.Millisecond)
	o := startOutsider(t, d, filepath.Join(bin, "demo"), nil, "--tls", "--http3", "h3")
	d.waitFor("the outside process active as generation 2", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		g := st.Generations[len(st.Generations)-1]
		return g.ID == 2 && g.State == api.StateActive && g.PID == o.cmd.Process.Pid
	})
	time.Sleep(700 * time.Millisecond)
	d.ctlOK("demo: generation 3 active", "swap", "demo")
	o.wait(t, 15*time.Second*slow)
	if !o.cmd.ProcessState.Success() {
		t.Errorf("the outside process ended with %s, want a clean drain; output:\n%s", o.cmd.ProcessState, o.out.String())
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stopLoad()
	checkH3Result(t, res, 2, loadClients/4)
	if res.ByGen[2] == 0 {
		t.Errorf("the outside process answered no HTTP/3 request: %v", res.ByGen)
	}
}

// TestQUICMigration: a client moves its connection to another address
// (QUIC connection migration) after a swap; its connection ID, not the
// 4-tuple, keeps it on the generation that holds it, here in standby
// (probation), and a new connection goes to the new generation.
func TestQUICMigration(t *testing.T) {
	d := startDaemon(t, daemonOptions{quic: true, probation: "30s"})
	raddr, err := net.ResolveUDPAddr("udp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	transport := func(ip net.IP) *quic.Transport {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
		if err != nil {
			t.Fatal(err)
		}
		tr := &quic.Transport{Conn: c}
		t.Cleanup(func() { tr.Close(); c.Close() })
		return tr
	}
	first := transport(net.IPv4(127, 0, 0, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second*slow)
	defer cancel()
	qc, err := first.Dial(ctx, raddr, h3TLS(), h3QUICConfig())
	if err != nil {
		t.Fatal(err)
	}
	c := &h3Conn{qc: qc, cc: (&http3.Transport{}).NewClientConn(qc)}
	defer c.close()
	if gen, err := c.get(); err != nil || gen != 1 {
		t.Fatalf("GET before the swap: generation %d, %v", gen, err)
	}
	d.ctlOK("generation 2 active", "swap", "demo")

	// Another local address: every 4-tuple hash changes.
	path, err := qc.AddPath(transport(net.IPv4(127, 0, 0, 2)))
	if err != nil {
		t.Fatal(err)
	}
	if err := path.Probe(ctx); err != nil {
		t.Fatalf("probe the new path: %v", err)
	}
	if err := path.Switch(); err != nil {
		t.Fatalf("switch to the new path: %v", err)
	}
	for i := range 20 {
		if gen, err := c.get(); err != nil || gen != 1 {
			t.Fatalf("GET %d after the move: generation %d, %v; want generation 1 on its moved connection", i, gen, err)
		}
	}
	if got := qc.LocalAddr().(*net.UDPAddr).IP; !got.Equal(net.IPv4(127, 0, 0, 2)) {
		t.Errorf("the connection is on %v after the switch", got)
	}
	if byGen := splitCount(t, d.addr, 20, 4); byGen[2] != 20 {
		t.Errorf("new connections reached %v, want all on generation 2", byGen)
	}
}
