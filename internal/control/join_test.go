package control

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/kernel"
)

// TestJoinAccess: joining is a service's choice, and then open to root,
// group and processes that run as the service (its user and group); a
// live generation of another service may not join, even as the same user.
func TestJoinAccess(t *testing.T) {
	service := func(name string, join bool) config.ServiceConfig {
		return config.ServiceConfig{Name: name, Command: []string{name}, User: "65534", Join: join,
			Listeners:    []config.ListenerConfig{{Name: "http", Address: "tcp://127.0.0.1:1"}},
			ReadyTimeout: config.Duration(time.Second), DrainTimeout: config.Duration(time.Second),
			StopSignal: config.Signal(syscall.SIGTERM)}
	}
	a := testAPI(t, &config.Config{Group: "100", Services: []config.ServiceConfig{service("demo", true), service("web", false)}})
	h := a.Handler()
	for _, tc := range []struct {
		name string
		peer *kernel.PeerCred
		path string
		code int
		msg  string
	}{
		{"root, join off", rootPeer, "/v1/services/web/join", 403,
			"service web does not accept joins: set join: true in its config to let a process started outside handoffd become its next generation"},
		{"service user, join off", &kernel.PeerCred{PID: 44, UID: 65534, GID: 65534}, "/v1/services/web/join", 403,
			"service web does not accept joins"},
		{"stranger", &kernel.PeerCred{PID: 43, UID: 1234, GID: 1234}, "/v1/services/demo/join", 403,
			"permission denied: uid 1234 (gid 1234) may not join service demo; only root and members of group 100 or processes that run as service demo's user 65534 (gid 65534) may"},
		// Past the check, the handler says what is missing: the upgrade.
		{"service user", &kernel.PeerCred{PID: 44, UID: 65534, GID: 65534}, "/v1/services/demo/join", 426, ""},
		{"root", rootPeer, "/v1/services/demo/join", 426, ""},
		{"group member", &kernel.PeerCred{PID: 45, UID: 1234, GID: 1234, Groups: []uint32{100}}, "/v1/services/demo/join", 426, ""},
		{"service user in another group", &kernel.PeerCred{PID: 44, UID: 65534, GID: 1234}, "/v1/services/demo/join", 403,
			"permission denied: uid 65534 (gid 1234) may not join service demo"},
		{"generation of another service, same user", &kernel.PeerCred{PID: 1301, UID: 65534, GID: 65534}, "/v1/services/demo/join", 403,
			"permission denied: pid 1301 is generation 1 of service web or runs under it, and may not join service demo"},
		{"generation of another service, as root", &kernel.PeerCred{PID: 1301, UID: 0, GID: 0}, "/v1/services/demo/join", 403,
			"permission denied: pid 1301 is generation 1 of service web"},
		{"service user swapping", &kernel.PeerCred{PID: 44, UID: 65534, GID: 65534}, "/v1/services/demo/swap", 403, "permission denied"},
	} {
		code, msg := call(t, h, tc.peer, "POST", tc.path, "")
		if code != tc.code || !strings.HasPrefix(msg, tc.msg) {
			t.Errorf("%s: %d %q, want %d %q", tc.name, code, msg, tc.code, tc.msg)
		}
	}
}
