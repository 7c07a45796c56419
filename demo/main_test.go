package main

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
)

var testApp = appInfo{Service: "demo", Generation: 7, PID: 1234, Version: "test"}

var testHealth = &health{}

func serve(t *testing.T, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	gin.SetMode(gin.TestMode)
	w := httptest.NewRecorder()
	newEngine(testApp, func() string { return "hi" }, testHealth.ok, &counter{generation: testApp.Generation}, false).ServeHTTP(w, httptest.NewRequest(method, target, strings.NewReader(body)))
	return w
}

func TestRoot(t *testing.T) {
	w := serve(t, "GET", "/", "")
	var got rootReply
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 {
		t.Fatalf("GET /: %d %s %v", w.Code, w.Body, err)
	}
	if want := (rootReply{testApp, "hi"}); got != want {
		t.Errorf("GET / = %+v, want %+v", got, want)
	}
}

func TestHealthz(t *testing.T) {
	if w := serve(t, "GET", "/healthz", ""); w.Code != 200 || w.Body.String() != "ok" {
		t.Errorf("GET /healthz: %d %q, want 200 ok", w.Code, w.Body)
	}
	f, err := parseFault("unhealthy@7:10ms", testApp.Generation)
	if err != nil {
		t.Fatal(err)
	}
	f.afterReady(testHealth)
	defer testHealth.failing.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for testHealth.ok() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if w := serve(t, "GET", "/healthz", ""); w.Code != 503 {
		t.Errorf("GET /healthz after --fault unhealthy: %d %q, want 503", w.Code, w.Body)
	}
}

func TestSlow(t *testing.T) {
	type reply struct {
		Generation int   `json:"generation"`
		PID        int   `json:"pid"`
		SleptMS    int64 `json:"slept_ms"`
		Bytes      int64 `json:"bytes"`
	}
	for _, tc := range []struct {
		method, target, body string
		code                 int
		want                 reply
	}{
		{"GET", "/slow?ms=20", "", 200, reply{7, 1234, 20, 0}},
		{"GET", "/slow", "", 200, reply{7, 1234, 0, 0}},
		{"POST", "/slow?ms=5", "hello world", 200, reply{7, 1234, 5, 11}},
		{"GET", "/slow?ms=abc", "", 400, reply{}},
		{"POST", "/slow?ms=-1", "x", 400, reply{}},
	} {
		w := serve(t, tc.method, tc.target, tc.body)
		if w.Code != tc.code {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.target, w.Code, w.Body, tc.code)
			continue
		}
		if tc.code != 200 {
			continue
		}
		var got reply
		if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got != tc.want {
			t.Errorf("%s %s = %s (%v), want %+v", tc.method, tc.target, w.Body, err, tc.want)
		}
	}
}

func TestParseSlow(t *testing.T) {
	for in, want := range map[string]time.Duration{"0": 0, "250": 250 * time.Millisecond, "60000": time.Minute, "9999999": time.Minute} {
		if got, err := parseSlow(in); err != nil || got != want {
			t.Errorf("parseSlow(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-5", "1.5", "1e3"} {
		if _, err := parseSlow(in); err == nil {
			t.Errorf("parseSlow(%q): want an error", in)
		}
	}
}

func TestParseFault(t *testing.T) {
	for _, tc := range []struct {
		spec string
		gen  int
		want fault
		bad  bool
	}{
		{"", 3, fault{}, false},
		{"exit@3", 3, fault{kind: "exit"}, false},
		{"exit@3", 2, fault{}, false},
		{"exit@2,hang@3", 3, fault{kind: "hang"}, false},
		{"crash@*:500ms", 7, fault{kind: "crash", delay: 500 * time.Millisecond}, false},
		{"explode@1", 1, fault{}, true},
		{"crash@1:soon", 1, fault{}, true},
		{"exit", 1, fault{}, true},
		{"unhealthy@2:1s", 2, fault{kind: "unhealthy", delay: time.Second}, false},
		{"unhealthy@*", 4, fault{kind: "unhealthy"}, false},
		{"oom@4:1s", 4, fault{kind: "oom", delay: time.Second}, false},
	} {
		got, err := parseFault(tc.spec, tc.gen)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("parseFault(%q, %d) = %+v, %v", tc.spec, tc.gen, got, err)
		}
	}
}
