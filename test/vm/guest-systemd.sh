#!/bin/bash
# Run by handoff-vm.service in make test-vm's "systemd" guest, where
# systemd is PID 1: installs the package and tests handoffd.service
# (test/systemd_vm_test.go). Writes results/systemd.rc and .summary; the
# unit powers the guest off when this ends.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp CI=true
R=/handoff-vm/results
. /handoff-vm/params
booted=$(cut -d' ' -f1 /proc/uptime)
# From tmpfs: each exec from the uncached 9p share reads the binary anew.
B=/tmp/handoff-bin
cp -a /handoff-vm/bin "$B"
# dpkg's man-db trigger would rebuild the whole man index: minutes under
# emulation, and not what is tested.
rm -f /var/lib/man-db/auto-update
# The guest's root is the host's: a handoffd package installed on the host
# would turn the test's installation into an upgrade. Purged here, in the
# guest's overlay, the package stays as the host has it.
if dpkg -s handoffd >/dev/null 2>&1; then
	echo "== guest: purging the host's handoffd package $(dpkg-query -W -f '${Version}' handoffd) in the guest"
	dpkg --purge handoffd
fi
echo "== guest: systemd $(systemctl --version | head -1 | cut -d' ' -f2) as PID 1, kernel $(uname -r)"
HANDOFF_E2E_BIN=$B HANDOFF_E2E_SLOW=$slow HANDOFF_DEB=$(ls /handoff-vm/*.deb) \
	"$B/systemd.test" -test.v -test.count=1 -test.timeout 20m -test.run '^TestSystemdUnit$' 2>&1 | tee "$R/systemd.log"
rc=${PIPESTATUS[0]}
end=$(cut -d' ' -f1 /proc/uptime)
{
	echo "guest kernel: $(uname -r), systemd $(systemctl --version | head -1 | cut -d' ' -f2) as PID 1; booted in ${booted}s; test ran $(awk -v a="$end" -v b="$booted" 'BEGIN {printf "%.1f", a - b}')s"
	grep -hE '^(--- |ok|FAIL|PASS)|requests, |handoffd version ' "$R/systemd.log" | sed 's/^/  /'
} >"$R/systemd.summary"
echo "$rc" >"$R/systemd.rc"
sync
exit "$rc"
