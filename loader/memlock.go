package loader

import (
	"sync"

	"github.com/cilium/ebpf/rlimit"
)

var memlockOnce sync.Once

// liftMemlock removes RLIMIT_MEMLOCK for this process on kernels before
// 5.11, which charge BPF maps and programs to it rather than to the memory
// cgroup: there the steering program fails to load with EPERM under the
// default limit, which looks like a missing privilege. On later kernels it
// changes nothing. Each load calls it first.
func liftMemlock() {
	memlockOnce.Do(func() {
		// Without CAP_SYS_RESOURCE this fails; the load that follows then
		// fails too and says what is missing.
		_ = rlimit.RemoveMemlock()
	})
}
