package handoff

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/handoffd/handoffd/internal/joinproto"
	"github.com/handoffd/handoffd/kernel"
	"golang.org/x/sys/unix"
)

// fakeHandoffd returns the client end of a socketpair whose server end
// answers one join request with the 101, then offer with files attached,
// and a channel closed once the server end and the files are closed.
func fakeHandoffd(t *testing.T, offer joinproto.Offer, files ...*os.File) (*net.UnixConn, <-chan struct{}) {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	client, server := conn(pair[0]), conn(pair[1])
	t.Cleanup(func() { client.Close() })
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		defer server.Close()
		req, err := http.ReadRequest(bufio.NewReader(server))
		if err != nil || req.URL.Path != "/v1/services/demo/join" || req.Header.Get("Upgrade") != joinproto.Protocol {
			t.Errorf("join request: %v %+v", err, req)
			return
		}
		server.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: handoff-join\r\n\r\n"))
		payload, _ := json.Marshal(offer)
		var fds []int
		for _, f := range files {
			fds = append(fds, int(f.Fd()))
		}
		if _, _, err := server.WriteMsgUnix(append(payload, '\n'), unix.UnixRights(fds...), nil); err != nil {
			t.Errorf("send fds: %v", err)
		}
		for _, f := range files {
			f.Close()
		}
	}()
	return client, done
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestJoinRejectsWhatIsNotAListener(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	connected, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer connected.Close()
	unixLn, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer unixLn.Close()

	for _, tc := range []struct {
		name, address, want string
		file                func() *os.File
	}{
		{"connected socket", "tcp://127.0.0.1:8080", "not listening", func() *os.File {
			f, _ := connected.(*net.TCPConn).File()
			return f
		}},
		{"pipe", "tcp://127.0.0.1:8080", "not a socket", func() *os.File {
			r, w, _ := os.Pipe()
			w.Close()
			return r
		}},
		{"unix listener for a tcp address", "tcp://127.0.0.1:8080", "family AF_UNIX", func() *os.File {
			f, _ := unixLn.(*net.UnixListener).File()
			return f
		}},
		{"ipv4 listener for an ipv6 address", "tcp://[::1]:8080", "family AF_INET", func() *os.File {
			f, _ := tcp.(*net.TCPListener).File()
			return f
		}},
		{"tcp listener for a QUIC listener", "udp://127.0.0.1:8080", "not a datagram socket", func() *os.File {
			f, _ := tcp.(*net.TCPListener).File()
			return f
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			c, served := fakeHandoffd(t, joinproto.Offer{Generation: 2, Listeners: []string{"http"}, Addresses: []string{tc.address}}, tc.file())
			_, _, _, err := join(c, "demo")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `listener "http"`) {
				t.Fatalf("join: %v, want an error about listener \"http\" that says %q", err, tc.want)
			}
			c.Close()
			<-served
			if after := openFDs(t); after > before {
				t.Errorf("%d fds open after the rejected join, %d before: the received fd was not closed", after, before)
			}
		})
	}
}

// TestJoinTakesQUICSocket: the UDP socket of a QUIC listener passes the
// join's checks.
func TestJoinTakesQUICSocket(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	f, err := pc.File()
	if err != nil {
		t.Fatal(err)
	}
	c, _ := fakeHandoffd(t, joinproto.Offer{Generation: 3, Listeners: []string{"h3"}, Addresses: []string{"udp://" + pc.LocalAddr().String()}}, f)
	_, fds, _, err := join(c, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != 1 {
		t.Fatalf("%d fds", len(fds))
	}
	if _, err := kernel.CheckUDP(fds[0]); err != nil {
		t.Errorf("joined fd: %v", err)
	}
}

func TestJoinTakesListener(t *testing.T) {
	f, addr := listenerFile(t)
	c, _ := fakeHandoffd(t, joinproto.Offer{Generation: 7, Listeners: []string{"http"}, Addresses: []string{"tcp://" + addr}}, f)
	offer, fds, _, err := join(c, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if offer.Generation != 7 || len(fds) != 1 {
		t.Fatalf("offer %+v with %d fds", offer, len(fds))
	}
	ln, err := fileListener(fds[0], "http")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != addr {
		t.Errorf("listener on %s, want %s", ln.Addr(), addr)
	}
	assertAccepts(t, ln)
}

func TestJoinRefused(t *testing.T) {
	pair, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	fc, _ := net.FileConn(os.NewFile(uintptr(pair[0]), "client"))
	fs, _ := net.FileConn(os.NewFile(uintptr(pair[1]), "server"))
	defer fc.Close()
	go func() {
		defer fs.Close()
		http.ReadRequest(bufio.NewReader(fs))
		body := `{"error":"permission denied: uid 65534 may not POST /v1/services/demo/join"}`
		fs.Write([]byte("HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: " +
			itoa(len(body)) + "\r\n\r\n" + body))
	}()
	_, _, _, err := join(fc.(*net.UnixConn), "demo")
	if err == nil || !strings.Contains(err.Error(), "refused: permission denied: uid 65534") {
		t.Errorf("join: %v, want handoffd's refusal", err)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }
