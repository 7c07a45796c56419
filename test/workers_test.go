package test

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// TestWorkersCounted counts the connections of a server whose workers
// hold them: gunicorn, unmodified, with 4 sync workers forked from its
// arbiter. Each worker accepts one connection and waits for its request;
// the others wait in the listening socket's queue. status and the kernel
// (ss) agree on every connection, in both modes: the workers are the
// generation's descendants, and the queue is the generation's.
func TestWorkersCounted(t *testing.T) {
	a := debianApps[0]
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			requireApp(t, a)
			dir := t.TempDir()
			for name, text := range a.files {
				if err := os.WriteFile(dir+"/"+name, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			d := startDaemon(t, daemonOptions{mode: mode, command: a.command(dir)})
			const held = 10
			for range held {
				c, err := net.DialTimeout("tcp", d.addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			st := d.waitFor("10 connections on generation 1", 10*time.Second, func(st api.ServiceStatus) bool {
				return connections(st)[1] == held
			})
			if n := kernelEstablished(t, d.port()); n != held {
				t.Errorf("ss sees %d established connections on :%s, want %d", n, d.port(), held)
			}
			source := map[string]string{"ebpf": api.SourceEBPF, "fdpass": api.SourceProc}[mode]
			if g := st.Generations[0]; g.ConnectionsSource != source {
				t.Errorf("counted from %q, want %q", g.ConnectionsSource, source)
			}
			// Nothing is counted twice over a while: the workers take
			// turns, and their arbiter holds the listener too.
			for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if c := connections(d.status()); c[1] != held {
					t.Fatalf("status counts %v, want %d on generation 1", c, held)
				}
			}
		})
	}
}
