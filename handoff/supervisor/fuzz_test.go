package supervisor

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// FuzzParseConfig checks that the config parser never panics and returns
// either a config that validates or a one-line error.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(designExample))
	f.Add([]byte("services: [{name: web, command: [web], listeners: [{name: http, address: 'tcp6://[::1]:80'}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			if cfg != nil {
				t.Fatalf("config and error: %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if cfg == nil || len(cfg.Services) == 0 {
			t.Fatalf("no config and no error")
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
	})
}

// FuzzAPIRequest sends arbitrary requests to the control API of a
// supervisor run by fakes: it must never panic, must answer JSON, and
// may answer 5xx only to a swap, whose failures are the service's.
func FuzzAPIRequest(f *testing.F) {
	f.Add("GET", "/v1/status", []byte(nil), uint32(0))
	f.Add("POST", "/v1/services/demo/swap", []byte(`{"timeout":"1s"}`), uint32(0))
	f.Add("POST", "/v1/services/demo/swap", []byte(`{}`), uint32(65534))
	f.Add("GET", "/v1/status?service=demo", []byte(nil), uint32(65534))
	f.Add("PUT", "/v1/stop", []byte(`x`), uint32(0))
	f.Fuzz(func(t *testing.T, method, target string, body []byte, uid uint32) {
		req, err := http.NewRequest(method, "http://handoffd"+target, bytes.NewReader(body))
		if err != nil {
			return
		}
		api := testAPI(t, &Config{ReadGroup: "65534"})
		req = req.WithContext(WithPeerCred(req.Context(), &PeerCred{UID: uid, GID: uid}))
		w := httptest.NewRecorder()
		api.Handler().ServeHTTP(w, req)
		if w.Code >= 500 && !strings.HasSuffix(req.URL.Path, "/swap") {
			t.Fatalf("%s %q: %d %s", method, target, w.Code, w.Body)
		}
		if w.Code >= 400 && w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s %q: %d answered as %q: %s", method, target, w.Code, w.Header().Get("Content-Type"), w.Body)
		}
	})
}

// FuzzNotifyMessage checks the sd_notify parser against the protocol:
// ready when one of the newline-separated lines is exactly READY=1.
func FuzzNotifyMessage(f *testing.F) {
	f.Add([]byte("READY=1"))
	f.Add([]byte("STATUS=starting\nREADY=1\n"))
	f.Add([]byte("READY=0\nSTOPPING=1"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		want := slices.Contains(strings.Split(string(msg), "\n"), "READY=1")
		if got := parseNotify(msg); got != want {
			t.Fatalf("parseNotify(%q) = %v, want %v", msg, got, want)
		}
	})
}
