package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"

	"github.com/gin-gonic/gin"
	"github.com/handoffd/handoffd/handoff"
)

// counter is the demo's state: a number that POST /counter increments
// and that each generation hands to the next one (state_handoff). One
// mutex guards it all, so that every increment lands on one side of the
// snapshot: in it, or counted in afterSnapshot, never both or neither.
type counter struct {
	generation int

	mu            sync.Mutex
	value         int
	snapshotted   bool // this generation took a snapshot
	afterSnapshot int  // increments and merged finals since the last snapshot
	restored      bool
	restoredFrom  int // the generation whose snapshot was restored
	restoredValue int
	merged        int // sum of the finals merged into this generation
}

// snapshot is the JSON of a snapshot; Generation says where it comes
// from, for GET /counter's restored_from.
type snapshot struct {
	Counter    int `json:"counter"`
	Generation int `json:"generation"`
}

// final is the JSON of a final delta.
type final struct {
	Delta int `json:"delta"`
}

// incrementReply is POST /counter's answer.
type incrementReply struct {
	Counter       int  `json:"counter"`
	Generation    int  `json:"generation"`
	AfterSnapshot bool `json:"after_snapshot"`
}

// counterReply is GET /counter's answer.
type counterReply struct {
	Counter       int  `json:"counter"`
	Generation    int  `json:"generation"`
	Restored      bool `json:"restored"`
	RestoredFrom  int  `json:"restored_from"`
	RestoredValue int  `json:"restored_value"`
	AfterSnapshot int  `json:"after_snapshot"`
	Merged        int  `json:"merged"`
}

func (c *counter) increment() incrementReply {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.value++
	if c.snapshotted {
		c.afterSnapshot++
	}
	return incrementReply{Counter: c.value, Generation: c.generation, AfterSnapshot: c.snapshotted}
}

func (c *counter) read() counterReply {
	c.mu.Lock()
	defer c.mu.Unlock()
	return counterReply{Counter: c.value, Generation: c.generation, Restored: c.restored,
		RestoredFrom: c.restoredFrom, RestoredValue: c.restoredValue,
		AfterSnapshot: c.afterSnapshot, Merged: c.merged}
}

// routes adds POST /counter and GET /counter to r.
func (c *counter) routes(r *gin.Engine) {
	r.POST("/counter", func(g *gin.Context) { g.JSON(http.StatusOK, c.increment()) })
	r.GET("/counter", func(g *gin.Context) { g.JSON(http.StatusOK, c.read()) })
}

// handler is the counter's StateHandler; withFinal sends a final delta
// after the drain (--counter-final).
func (c *counter) handler(withFinal bool) handoff.StateHandler {
	h := handoff.StateHandler{Snapshot: c.snapshot, Restore: c.restore, Merge: c.merge}
	if withFinal {
		h.Final = c.final
	}
	return h
}

// snapshot writes the value; from now on increments count as after it.
// The JSON is written under the lock: the snapshot point is exact.
func (c *counter) snapshot(w io.Writer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := json.NewEncoder(w).Encode(snapshot{Counter: c.value, Generation: c.generation}); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	c.snapshotted, c.afterSnapshot = true, 0
	slog.Info("counter snapshot", "generation", c.generation, "counter", c.value)
	return nil
}

// restore takes the previous generation's value, before this one serves.
func (c *counter) restore(r io.Reader) error {
	var s snapshot
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.value += s.Counter
	c.restored, c.restoredFrom, c.restoredValue = true, s.Generation, s.Counter
	slog.Info("counter restored", "generation", c.generation, "from", s.Generation, "counter", s.Counter)
	return nil
}

// final writes what the next generation has not seen: the increments
// since the snapshot; or, without a snapshot (a generation that started
// cold, or a canary that was rolled back), all that this generation added
// to what it restored.
func (c *counter) final(w io.Writer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delta := c.afterSnapshot
	if !c.snapshotted {
		delta = c.value - c.restoredValue
	}
	if err := json.NewEncoder(w).Encode(final{Delta: delta}); err != nil {
		return fmt.Errorf("write final: %w", err)
	}
	slog.Info("counter final", "generation", c.generation, "delta", delta, "snapshotted", c.snapshotted)
	return nil
}

// merge adds an older generation's final.
func (c *counter) merge(from int, r io.Reader) error {
	var f final
	if err := json.NewDecoder(r).Decode(&f); err != nil {
		return fmt.Errorf("read final of generation %d: %w", from, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.value += f.Delta
	c.merged += f.Delta
	if c.snapshotted {
		c.afterSnapshot += f.Delta
	}
	slog.Info("counter merged", "generation", c.generation, "from", from, "delta", f.Delta, "counter", c.value)
	return nil
}
