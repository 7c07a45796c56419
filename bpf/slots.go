package bpf

// The sizes the programs are compiled with, for Go. bpf_test.go checks
// them against the C sources and the compiled objects.
const (
	// Slots is the number of listening sockets one steering map holds
	// (SLOTS in steer.c): generation g of a listener uses slot g % Slots.
	Slots = 64
	// TrackingSlots is the number of slots the connection counter counts
	// in (TRACKING_SLOTS in tracking.h): each counted listener takes a
	// range of Slots of them.
	TrackingSlots = 4096
)
