package control

import (
	"testing"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/kernel"
)

func TestJoinAccess(t *testing.T) {
	a := testAPI(t, &config.Config{Group: "100"})
	svc, _ := a.sup.Service("demo")
	svc.Config().User = "65534"
	h := a.Handler()
	stranger := &kernel.PeerCred{PID: 43, UID: 1234, GID: 1234}
	code, msg := call(t, h, stranger, "POST", "/v1/services/demo/join", "")
	if code != 403 || msg != "permission denied: uid 1234 may not POST /v1/services/demo/join; only root and members of group 100 or service demo's user 65534 may" {
		t.Errorf("stranger: %d %q", code, msg)
	}
	// The service's user gets past the check; without the upgrade
	// headers the handler then says what is missing.
	user := &kernel.PeerCred{PID: 44, UID: 65534, GID: 65534}
	if code, msg := call(t, h, user, "POST", "/v1/services/demo/join", ""); code != 426 {
		t.Errorf("service user without Upgrade: %d %q, want 426", code, msg)
	}
	// The service's user may do nothing else.
	if code, _ := call(t, h, user, "POST", "/v1/services/demo/swap", ""); code != 403 {
		t.Errorf("service user swapping: %d, want 403", code)
	}
}
