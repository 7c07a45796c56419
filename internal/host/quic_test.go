package host

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/kernel"
	"github.com/handoffd/handoffd/loader"
)

// fakeQUIC records what a quicLane asks of its steering.
type fakeQUIC struct {
	calls []string
}

func (f *fakeQUIC) Attach(fd int) error {
	f.calls = append(f.calls, "attach")
	return nil
}

func (f *fakeQUIC) Insert(slot uint32, fd int) error {
	f.calls = append(f.calls, fmt.Sprintf("insert %d", slot))
	return nil
}

func (f *fakeQUIC) Activate(slot uint32) error {
	f.calls = append(f.calls, fmt.Sprintf("activate %d", slot))
	return nil
}

func (f *fakeQUIC) SetSplit(sp loader.Split) error {
	f.calls = append(f.calls, fmt.Sprintf("split %d %.2f %v", sp.Slot, sp.Share, sp.Sticky))
	return nil
}

func (f *fakeQUIC) Counters(uint32) (loader.QUICCounters, error) { return loader.QUICCounters{}, nil }

func (f *fakeQUIC) Remove() error {
	f.calls = append(f.calls, "remove")
	return nil
}

// quicService is a service with one QUIC listener on a free port.
func quicService(t *testing.T) *config.ServiceConfig {
	f, err := kernel.ListenUDP("probe", "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := kernel.BoundUDPAddr(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return &config.ServiceConfig{Name: "web", Listeners: []config.ListenerConfig{
		{Name: "h3", Address: "udp://" + a.String(), Protocol: config.ProtocolQUIC},
	}}
}

func TestQUICLane(t *testing.T) {
	st := &fakeQUIC{}
	var asked []string
	r, err := newRouter(quicService(t), api.ModeEBPF, 64, steerings{quic: func(service, listener string, reuse bool) (QUICSteering, error) {
		asked = append(asked, fmt.Sprintf("%s/%s %v", service, listener, reuse))
		return st, nil
	}}, false)
	if err != nil {
		t.Fatal(err)
	}
	files, err := r.Prepare(66)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFiles(files)
	if _, err := kernel.CheckUDP(int(files[0].Fd())); err != nil {
		t.Errorf("generation's socket: %v", err)
	}
	if err := r.Activate(66); err != nil {
		t.Fatal(err)
	}
	if err := r.SetSplit(67, 0.25, true); err != nil {
		t.Fatal(err)
	}
	if err := r.Promote(67); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DialProbe(context.Background(), 67, 0); !errors.Is(err, errQUICProbe) {
		t.Errorf("DialProbe: %v, want %v", err, errQUICProbe)
	}
	if r.Slots() != 64 {
		t.Errorf("Slots() = %d", r.Slots())
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{"attach", "insert 2", "activate 2", "split 3 0.25 true", "activate 3", "split 0 0.00 false", "remove"}
	if !slices.Equal(st.calls, want) {
		t.Errorf("steering calls %q, want %q", st.calls, want)
	}
	if !slices.Equal(asked, []string{"web/h3 false"}) {
		t.Errorf("steerings loaded: %q", asked)
	}
}

func TestQUICLaneNeedsEBPF(t *testing.T) {
	_, err := newRouter(quicService(t), api.ModeFDPass, 0, steerings{}, false)
	if !errors.Is(err, config.ErrQUICNeedsEBPF) {
		t.Errorf("fdpass router for a QUIC listener: %v, want %v", err, config.ErrQUICNeedsEBPF)
	}
}
