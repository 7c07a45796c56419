package bpf

// The sizes the programs are compiled with, for Go. bpf_test.go checks
// them against the C sources and the compiled objects.
const (
	// Slots is the number of listening sockets one steering map holds
	// (SLOTS in steer.c): generation g of a listener uses slot g % Slots.
	Slots = 64

	// The canary split is one 64-bit word (steer.c's splits map): the
	// threshold in its low SplitThresholdBits bits (0 to 1<<32), the
	// canary's slot in the byte from SplitSlotShift, and the sticky flag
	// at bit SplitStickyShift.
	SplitThresholdBits = 33
	SplitSlotShift     = 40
	SplitStickyShift   = 48
)
