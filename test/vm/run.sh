#!/usr/bin/env bash
# make test-vm: boots Debian 12's kernel (6.1) under qemu and runs, inside
# it, loader's tests, the swap end-to-end test and handoffd's systemd
# unit under a real systemd. The guest's root is this host's root, shared
# read-only over 9p under a tmpfs overlay; a second, writable share
# ($VM_DIR/share, mounted at /handoff-vm) carries the test binaries, the
# kernel's modules and the results. No /dev/kvm is needed: qemu emulates
# the CPU (TCG). Exits non-zero if any guest run fails.
#
#   VM_DIR       where the kernel, initramfs and share go (default bin/vm)
#   VM_SWAPS     swaps per swap test in the guest (default 5)
#   VM_SLOW      how many times the guest's test timeouts are stretched (default 5)
#   VM_RUNS      which guest runs: "tests systemd" (the default), or one
set -euo pipefail
cd "$(dirname "$0")/../.."
VM_DIR=$(realpath -m "${VM_DIR:-bin/vm}")
VM_SWAPS=${VM_SWAPS:-5}
VM_SLOW=${VM_SLOW:-5}
VM_RUNS=${VM_RUNS:-tests systemd}
export DEBIAN_FRONTEND=noninteractive

say() { printf '== test-vm: %s\n' "$*"; }

install_tools() {
	local missing=()
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || missing+=(busybox-static)
	command -v depmod >/dev/null || missing+=(kmod)
	command -v man >/dev/null || missing+=(man-db)
	command -v file >/dev/null || missing+=(file)
	if [ ${#missing[@]} -gt 0 ]; then
		say "installing ${missing[*]} from Debian"
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

# bookworm_sources sets APT_OPTS so that apt-get and apt-cache see
# Debian 12's packages: nothing on a Debian 12 host; elsewhere a private
# list (the host's Debian mirror, suite bookworm) in $VM_DIR/apt, which
# leaves the host's apt untouched.
APT_OPTS=()
bookworm_sources() {
	[ "$(. /etc/os-release; echo "${VERSION_CODENAME:-}")" != bookworm ] || return 0
	local a=$VM_DIR/apt uri
	uri=$(grep -hoE '(https?|file)://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
		/etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | tr -d ' ')
	[ -n "$uri" ] || { echo "test-vm: no Debian mirror in /etc/apt/sources.list*: add one" >&2; return 1; }
	mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm main" >"$a/sources.list"
	APT_OPTS=(-o Dir::Etc::SourceList="$a/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o Dir::State::Lists="$a/lists" -o Dir::Cache="$a/cache")
	apt-get "${APT_OPTS[@]}" update -qq
}

# fetch_kernel downloads Debian 12's current 6.1 kernel package, and
# unpacks its vmlinux (uncompressed: TCG takes seconds to unpack the xz
# bzImage at each boot) and its modules (with modules.dep).
fetch_kernel() {
	bookworm_sources
	local pkg
	pkg=$(apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-6\.1\./ {print $2; exit}')
	[ -n "$pkg" ] || { echo "test-vm: no linux-image-6.1.*-amd64 in Debian 12's package lists (apt-get update?)" >&2; return 1; }
	KVER=${pkg#linux-image-}
	K=$VM_DIR/kernel/$KVER
	if [ -f "$K/vmlinux" ] && [ -f "$K/lib/modules/$KVER/modules.dep" ]; then
		return
	fi
	say "fetching $pkg"
	rm -rf "$K" && mkdir -p "$K/deb"
	(cd "$K/deb" && apt-get "${APT_OPTS[@]}" download -qq "$pkg" 2>&1 | grep -v unsandboxed || true)
	ls "$K"/deb/*.deb >/dev/null
	dpkg-deb -x "$K"/deb/*.deb "$K/root"
	local z=$K/root/boot/vmlinuz-$KVER off
	off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$z" | cut -d: -f1 | sed -n 1p)
	[ -n "$off" ] || { echo "test-vm: $z holds no xz stream" >&2; return 1; }
	# xz stops at the stream's end, before tail's: no pipe, no SIGPIPE.
	xz -dc --single-stream <(tail -c +$((off + 1)) "$z") >"$K/vmlinux"
	mkdir -p "$K/lib/modules"
	mv "$K/root/lib/modules/$KVER" "$K/lib/modules/"
	depmod -b "$K" "$KVER"
	rm -rf "$K/root" "$K/deb"
}

# build_initramfs: busybox, /init and the modules that mount the root
# (virtio, 9p, overlay), in the order modprobe would load them.
build_initramfs() {
	local d=$VM_DIR/initramfs m
	rm -rf "$d" && mkdir -p "$d/bin" "$d/dev" "$d/proc" "$d/sys" "$d/modules"
	cp /bin/busybox "$d/bin/"
	cp test/vm/init "$d/init"
	mknod "$d/dev/console" c 5 1
	: >"$d/modules.list"
	for m in $(for top in virtio_pci 9pnet_virtio 9p overlay virtio_rng; do
		modprobe -d "$K" -S "$KVER" --show-depends "$top"
	done | awk '$1 == "insmod" && !seen[$2]++ {print $2}'); do
		cp "$m" "$d/modules/"
		basename "$m" >>"$d/modules.list"
	done
	(cd "$d" && find . | busybox cpio -o -H newc 2>/dev/null) >"$VM_DIR/initramfs.cpio"
}

# build_share fills the writable share: test binaries (built here), the
# guest scripts and files, the kernel's modules, and an empty results/.
build_share() {
	local s=$VM_DIR/share
	rm -rf "$s" && mkdir -p "$s/bin" "$s/results" "$s/modules" "$s/rootfs/etc"
	go build -ldflags "-X main.version=${VERSION:-vm}" -o "$s/bin/" ./cmd/handoffd ./cmd/handoffctl ./demo
	go test -c -o "$s/bin/loader.test" ./loader
	go test -c -o "$s/bin/e2e.test" ./test
	go test -c -tags vm -o "$s/bin/systemd.test" ./test
	cp -a "$K/lib/modules/$KVER" "$s/modules/"
	cp test/vm/guest-*.sh "$s/bin/"
	cp -a test/vm/rootfs/. "$s/rootfs/"
	: >"$s/rootfs/etc/fstab"
	# Units of early boot that the test needs not and that take seconds each
	# under emulation (modprobe scans the 9p root; udev walks /sys).
	local u
	for u in modprobe@.service systemd-modules-load.service systemd-udevd.service systemd-udev-trigger.service \
		systemd-udev-settle.service systemd-tmpfiles-setup-dev.service systemd-hwdb-update.service \
		systemd-binfmt.service systemd-sysusers.service systemd-random-seed.service systemd-journal-flush.service \
		e2scrub_reap.service ldconfig.service systemd-pstore.service; do
		ln -sf /dev/null "$s/rootfs/etc/systemd/system/$u"
	done
	printf 'swaps=%s\nslow=%s\n' "$VM_SWAPS" "$VM_SLOW" >"$s/params"
	# The newest package that make deb made.
	local deb
	deb=$(ls -t dist/handoffd_*.deb 2>/dev/null | sed -n 1p)
	[ -n "$deb" ] || { echo "test-vm: no dist/handoffd_*.deb: run make deb first" >&2; return 1; }
	cp "$deb" "$s/"
}

# boot runs one guest with init $1 and waits for it to power off; the
# guest writes results/$2.rc.
boot() {
	local init=$1 name=$2 start=$SECONDS
	say "booting $KVER for '$name' (qemu TCG, 2 vCPUs, 2 GiB)"
	timeout 20m qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 2G -smp 2 \
		-display none -monitor none -serial stdio -no-reboot -nic none \
		-kernel "$K/vmlinux" -initrd "$VM_DIR/initramfs.cpio" \
		-append "console=ttyS0 panic=-1 quiet loglevel=4 handoff.init=$init $3" \
		-device virtio-rng-pci \
		-virtfs local,id=root,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap \
		-virtfs "local,id=share,path=$VM_DIR/share,mount_tag=share,security_model=none,multidevs=remap" \
		</dev/null 2>&1 | tee "$VM_DIR/$name.console.log" | sed -u 's/\r$//'
	say "'$name' took $((SECONDS - start)) s on the host"
	local rc
	rc=$(cat "$VM_DIR/share/results/$name.rc" 2>/dev/null || echo "none (the guest did not finish)")
	if [ "$rc" != 0 ]; then
		say "'$name' failed in the guest: exit $rc"
		return 1
	fi
}

install_tools
fetch_kernel
build_initramfs
build_share
fail=0
for run in $VM_RUNS; do
	case $run in
	tests) boot /handoff-vm/bin/guest-tests.sh tests "" || fail=1 ;;
	systemd) boot /lib/systemd/systemd systemd "systemd.unit=handoff-vm.target systemd.show_status=false" || fail=1 ;;
	*) echo "test-vm: VM_RUNS: unknown run $run (use tests, systemd)" >&2; exit 2 ;;
	esac
done
cat "$VM_DIR"/share/results/*.summary 2>/dev/null || true
exit $fail
