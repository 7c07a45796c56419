package control

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/kernel"
)

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
		a := testAPI(t, &config.Config{ReadGroup: "65534"})
		req = req.WithContext(WithPeerCred(req.Context(), &kernel.PeerCred{UID: uid, GID: uid}))
		w := httptest.NewRecorder()
		a.Handler().ServeHTTP(w, req)
		if w.Code >= 500 && !strings.HasSuffix(req.URL.Path, "/swap") {
			t.Fatalf("%s %q: %d %s", method, target, w.Code, w.Body)
		}
		if w.Code >= 400 && w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s %q: %d answered as %q: %s", method, target, w.Code, w.Header().Get("Content-Type"), w.Body)
		}
	})
}
