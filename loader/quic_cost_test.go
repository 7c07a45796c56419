package loader

import (
	"testing"

	"github.com/handoffd/handoffd/internal/quicid"
)

// BenchmarkQUICSteer measures what steer_quic costs per datagram, by
// kind of datagram, from the kernel's own count of the program's runs and
// run time (BPF_ENABLE_STATS): ns/packet is the program alone; ns/op is
// the whole send and receive over loopback. Run it on a quiet host:
//
//	go test -run '^$' -bench QUICSteer -benchtime 200000x ./loader/
func BenchmarkQUICSteer(b *testing.B) {
	requireEBPF(b)
	inNetns(b)
	stats, err := EnableStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	q := loadQUIC(b)
	fds, port := quicGroup(b, q, 1, 2)
	activateQUIC(b, q, 2)
	client, _ := udpSocket(b, loopback, 0, false)
	cookieCID := cid(b, fds[0], 1)
	knownDCID := randomCID(8)
	sendTo(b, client, port, longPacket(typeInitial, knownDCID))
	receiver(b, fds...)
	for _, kind := range []struct {
		name   string
		packet func() []byte
	}{
		// A packet of a connection under way: the common case.
		{"short-header-by-cookie", func() []byte { return shortPacket(cookieCID) }},
		// The first Initial of a new connection: placed and remembered.
		{"initial-new", func() []byte { return longPacket(typeInitial, randomCID(8)) }},
		// A later Initial of a handshake under way, found in flows.
		{"initial-by-flow", func() []byte { return longPacket(typeInitial, knownDCID) }},
		// A short header whose cookie no slot has: placed as new.
		{"short-header-stray", func() []byte { return shortPacket(randomCID(quicid.Len)) }},
	} {
		b.Run(kind.name, func(b *testing.B) {
			packets := make([][]byte, b.N)
			for i := range packets {
				packets[i] = kind.packet()
			}
			before, err := q.Program().Stats()
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				sendTo(b, client, port, packets[i])
				receiver(b, fds...)
			}
			b.StopTimer()
			after, err := q.Program().Stats()
			if err != nil {
				b.Fatal(err)
			}
			runs := after.RunCount - before.RunCount
			if runs < uint64(b.N) {
				b.Fatalf("the program ran %d times for %d datagrams", runs, b.N)
			}
			b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "ns/packet")
		})
	}
}
