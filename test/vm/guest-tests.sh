#!/bin/bash
# PID 1 of make test-vm's "tests" guest: loader's tests and the swap
# end-to-end test on the guest's kernel. Writes results/tests.rc (0 when
# every test passed) and results/tests.summary, then powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp
# In the guest nothing may skip: a missing kernel feature is a failure.
export CI=true
R=/handoff-vm/results
# From tmpfs: each exec from the uncached 9p share reads the binary anew.
B=/tmp/handoff-bin
cp -a /handoff-vm/bin "$B"
. /handoff-vm/params
up() { cut -d' ' -f1 /proc/uptime; }
booted=$(up)
ip link set lo up
ulimit -n 1048576
hostname handoff-vm

run() { # name, command...: runs a test binary, logs to results/name.log
	local name=$1 start rc
	shift
	start=$(up)
	echo "== guest: $name"
	"$@" 2>&1 | tee "$R/$name.log"
	rc=${PIPESTATUS[0]}
	echo "$name: exit $rc in $(awk -v a="$(up)" -v b="$start" 'BEGIN {printf "%.1f", a - b}')s" >>"$R/tests.times"
	return "$rc"
}

rc=0
cd "$B"
echo "== guest: loader"
run loader ./loader.test -test.v -test.count=1 -test.timeout 10m || rc=1
HANDOFF_E2E_BIN=$B HANDOFF_E2E_SWAPS=$swaps HANDOFF_E2E_SLOW=$slow \
	run e2e ./e2e.test -test.v -test.count=1 -test.timeout 15m -test.run '^(TestSwapUnderLoad|TestQUICSwapUnderLoad)$' || rc=1

{
	echo "guest kernel: $(uname -r) ($(uname -v)); booted in ${booted}s"
	cat "$R/tests.times"
	grep -hE '^(--- |ok|FAIL|PASS)|requests: ' "$R/loader.log" "$R/e2e.log" | sed 's/^/  /'
} >"$R/tests.summary"
echo $rc >"$R/tests.rc"
sync
busybox poweroff -f
