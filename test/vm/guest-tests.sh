#!/bin/bash
# PID 1 of make test-vm's "tests-<kernel>" guests: what the guest's kernel
# must pass. Profile ebpf (6.1, 6.12): loader's tests (QUIC steering
# included) and the ebpf end-to-end suite (swaps under load in both modes,
# a canary split, promoted and rolled back, the connection counts, mode
# auto taking ebpf); not the HTTP/3 swap test, whose 32 quic-go clients
# one emulated CPU runs too slowly for its floor of answers.
# Profile fdpass (5.10, without the migrate attach type): the same swaps
# and counts in fdpass mode, and mode auto falling back to fdpass by
# probe. Writes results/<run>.rc (0 when every test passed),
# results/<run>.summary and results/<run>.kernel, then powers off.
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
name=tests profile=ebpf
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	handoff.run=*) name=${arg#handoff.run=} ;;
	handoff.profile=*) profile=${arg#handoff.profile=} ;;
	esac
done
uname -r >"$R/$name.kernel"

run() { # part, command...: runs a test binary, logs to results/<run>.<part>.log
	local part=$1 start rc
	shift
	start=$(up)
	echo "== guest: $part"
	"$@" 2>&1 | tee "$R/$name.$part.log"
	rc=${PIPESTATUS[0]}
	echo "$part: exit $rc in $(awk -v a="$(up)" -v b="$start" 'BEGIN {printf "%.1f", a - b}')s" >>"$R/$name.times"
	return "$rc"
}

rc=0
cd "$B"
export HANDOFF_E2E_BIN=$B HANDOFF_E2E_SWAPS=$swaps HANDOFF_E2E_SLOW=$slow
case $profile in
ebpf)
	# Not TestSplitAccuracy: its 60,000 connections take many minutes
	# under emulation, and the end-to-end canary measures the split.
	run loader ./loader.test -test.v -test.count=1 -test.timeout 10m -test.skip '^TestSplitAccuracy$' || rc=1
	HANDOFF_E2E_AUTO_MODE=ebpf run e2e ./e2e.test -test.v -test.count=1 -test.timeout 18m \
		-test.run '^(TestSwapUnderLoad|TestCanaryUnderLoad|TestCanaryAutomaticRollback|TestDrainProgressCounted|TestAutoModeByProbe)$' || rc=1
	;;
fdpass)
	HANDOFF_E2E_AUTO_MODE=fdpass run e2e ./e2e.test -test.v -test.count=1 -test.timeout 18m \
		-test.run '^(TestSwapUnderLoad|TestDrainProgressCounted|TestCanaryRefusedInFDPass|TestAutoModeByProbe)$/^fdpass' || rc=1
	;;
*)
	echo "guest-tests: unknown profile $profile" >&2
	rc=1
	;;
esac

{
	echo "$name: guest kernel $(uname -r) ($(uname -v)), profile $profile; booted in ${booted}s"
	cat "$R/$name.times"
	grep -hE '^(--- |ok|FAIL|PASS)|requests: |fallback line' "$R/$name".*.log | sed 's/^/  /'
} >"$R/$name.summary"
echo $rc >"$R/$name.rc"
sync
busybox poweroff -f
