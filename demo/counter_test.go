package main

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/gin-gonic/gin"
)

// counterEngine serves the routes over one counter of generation gen.
func counterEngine(gen int) (*counter, *gin.Engine) {
	gin.SetMode(gin.TestMode)
	c := &counter{generation: gen}
	app := testApp
	app.Generation = gen
	return c, newEngine(app, func() string { return "hi" }, testHealth.ok, c, false)
}

func call[T any](t *testing.T, e *gin.Engine, method string) T {
	t.Helper()
	w := httptest.NewRecorder()
	e.ServeHTTP(w, httptest.NewRequest(method, "/counter", nil))
	var got T
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 {
		t.Fatalf("%s /counter: %d %s %v", method, w.Code, w.Body, err)
	}
	return got
}

func TestCounterHandsOver(t *testing.T) {
	old, oldE := counterEngine(3)
	for i := 1; i <= 4; i++ {
		if got := call[incrementReply](t, oldE, "POST"); got != (incrementReply{Counter: i, Generation: 3}) {
			t.Fatalf("POST %d = %+v", i, got)
		}
	}
	var snap bytes.Buffer
	if err := old.snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if snap.String() != `{"counter":4,"generation":3}`+"\n" {
		t.Errorf("snapshot %q", snap.String())
	}
	if got := call[incrementReply](t, oldE, "POST"); got != (incrementReply{Counter: 5, Generation: 3, AfterSnapshot: true}) {
		t.Errorf("POST after the snapshot = %+v", got)
	}

	next, nextE := counterEngine(4)
	if err := next.restore(&snap); err != nil {
		t.Fatal(err)
	}
	call[incrementReply](t, nextE, "POST")
	var fin bytes.Buffer
	if err := old.final(&fin); err != nil {
		t.Fatal(err)
	}
	if fin.String() != `{"delta":1}`+"\n" {
		t.Errorf("final %q, want delta 1", fin.String())
	}
	if err := next.merge(3, &fin); err != nil {
		t.Fatal(err)
	}
	want := counterReply{Counter: 6, Generation: 4, Restored: true, RestoredFrom: 3, RestoredValue: 4, Merged: 1}
	if got := call[counterReply](t, nextE, "GET"); got != want {
		t.Errorf("GET /counter = %+v, want %+v", got, want)
	}

	// Merged after its own snapshot, a final counts as after it.
	if err := next.snapshot(&bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if err := next.merge(2, bytes.NewBufferString(`{"delta":5}`)); err != nil {
		t.Fatal(err)
	}
	if got := call[counterReply](t, nextE, "GET"); got.Counter != 11 || got.AfterSnapshot != 5 || got.Merged != 6 {
		t.Errorf("GET /counter after a merge past the snapshot = %+v, want counter 11, after_snapshot 5, merged 6", got)
	}
}

// A generation that never took a snapshot hands over all it added to what
// it restored (a rolled-back canary, or one that started cold).
func TestCounterFinalWithoutSnapshot(t *testing.T) {
	c, e := counterEngine(5)
	if err := c.restore(bytes.NewBufferString(`{"counter":10,"generation":4}`)); err != nil {
		t.Fatal(err)
	}
	call[incrementReply](t, e, "POST")
	call[incrementReply](t, e, "POST")
	var fin bytes.Buffer
	if err := c.final(&fin); err != nil {
		t.Fatal(err)
	}
	if fin.String() != `{"delta":2}`+"\n" {
		t.Errorf("final %q, want delta 2", fin.String())
	}
	if err := c.restore(bytes.NewBufferString(`not json`)); err == nil {
		t.Error("restore of garbage: want an error")
	}
	if err := c.merge(1, bytes.NewBufferString(`{"delta":`)); err == nil {
		t.Error("merge of garbage: want an error")
	}
}

func TestCounterHandlerFinalFlag(t *testing.T) {
	c := &counter{}
	if h := c.handler(false); h.Final != nil || h.Snapshot == nil || h.Restore == nil || h.Merge == nil {
		t.Error("--counter-final=false: want Snapshot, Restore and Merge, no Final")
	}
	if h := c.handler(true); h.Final == nil {
		t.Error("--counter-final: want a Final")
	}
}

// Under concurrent increments, each one is in the snapshot or counted
// after it: never both, never neither.
func TestCounterSnapshotIsExact(t *testing.T) {
	c, e := counterEngine(1)
	const clients, each = 8, 200
	var (
		wg           sync.WaitGroup
		mu           sync.Mutex
		before, past int // replies with after_snapshot false, true
	)
	for range clients {
		wg.Go(func() {
			for range each {
				r := call[incrementReply](t, e, "POST")
				mu.Lock()
				if r.AfterSnapshot {
					past++
				} else {
					before++
				}
				mu.Unlock()
			}
		})
	}
	var snap bytes.Buffer
	wg.Go(func() {
		if err := c.snapshot(&snap); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	var s snapshot
	if err := json.Unmarshal(snap.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	got := c.read()
	if s.Counter != before || got.AfterSnapshot != past || s.Counter+got.AfterSnapshot != clients*each {
		t.Errorf("snapshot %d + after_snapshot %d (replies: %d before, %d after), want %d in all",
			s.Counter, got.AfterSnapshot, before, past, clients*each)
	}
}
