#!/usr/bin/env bash
# make test-vm: boots Debian's kernels 5.10 (Debian 11), 6.1 (Debian 12)
# and 6.12 (Debian 13) under qemu and runs, inside each, what that kernel
# must pass: on 6.1 and 6.12 loader's tests and the ebpf end-to-end suite
# (swaps under load in both modes, a canary split, promoted and rolled
# back, the connection counts, mode auto taking ebpf); on 5.10,
# which lacks the migrate attach type, the fdpass suite and mode auto
# falling back to fdpass by probe. handoffd's systemd unit runs under a
# real systemd on one kernel (6.1). The guest's root is this host's root,
# shared read-only over 9p under a tmpfs overlay; a second, writable
# share ($VM_DIR/share, mounted at /handoff-vm) carries the test binaries,
# the kernels' modules and the results. No /dev/kvm is needed: qemu
# emulates the CPU (TCG). Guests run VM_JOBS at a time. Prints one line
# per kernel and exits non-zero if any guest run fails.
#
#   VM_DIR       where the kernels, initramfs and share go (default bin/vm)
#   VM_KERNELS   which kernels boot (default "5.10 6.1 6.12")
#   VM_RUNS      which guest runs: "tests systemd" (the default), or one
#   VM_SYSTEMD_KERNEL  the kernel of the systemd run (default 6.1)
#   VM_JOBS      guests at once (default 1: each guest gets every core, so that
#                its load tests keep their timing; 2 halves the vCPUs)
#   VM_SMP       vCPUs per guest (default: the host's cores / VM_JOBS, at least 1)
#   VM_SWAPS     swaps per swap test in the guest (default 5)
#   VM_SLOW      how many times the guest's test timeouts are stretched (default 5)
#   VM_TIMEOUT   a guest's time limit on the host (default 25m)
set -euo pipefail
cd "$(dirname "$0")/../.."
VM_DIR=$(realpath -m "${VM_DIR:-bin/vm}")
VM_KERNELS=${VM_KERNELS:-5.10 6.1 6.12}
VM_RUNS=${VM_RUNS:-tests systemd}
VM_SYSTEMD_KERNEL=${VM_SYSTEMD_KERNEL:-6.1}
VM_JOBS=${VM_JOBS:-1}
VM_SMP=${VM_SMP:-$(( $(nproc) / VM_JOBS > 1 ? $(nproc) / VM_JOBS : 1 ))}
VM_SWAPS=${VM_SWAPS:-5}
VM_SLOW=${VM_SLOW:-5}
VM_TIMEOUT=${VM_TIMEOUT:-25m}
export DEBIAN_FRONTEND=noninteractive

say() { printf '== test-vm: %s\n' "$*"; }

# suite names the Debian release that ships kernel $1; profile, what the
# kernel runs: ebpf (the migrate attach type is there, 5.14 and later) or
# fdpass.
suite() {
	case $1 in
	5.10) echo bullseye ;;
	6.1) echo bookworm ;;
	6.12) echo trixie ;;
	*) echo "test-vm: VM_KERNELS: unknown kernel $1 (use 5.10, 6.1, 6.12)" >&2; return 1 ;;
	esac
}
profile() { case $1 in 5.10) echo fdpass ;; *) echo ebpf ;; esac; }

install_tools() {
	local missing=()
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || missing+=(busybox-static)
	command -v depmod >/dev/null || missing+=(kmod)
	command -v man >/dev/null || missing+=(man-db)
	command -v file >/dev/null || missing+=(file)
	command -v zstd >/dev/null || missing+=(zstd)
	if [ ${#missing[@]} -gt 0 ]; then
		say "installing ${missing[*]} from Debian"
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

# debian_sources $suite sets APT_OPTS so that apt-get and apt-cache see
# that Debian release's packages, from a private list (the host's Debian
# mirror, that suite) in $VM_DIR/apt/$suite: the host's apt stays as it is.
APT_OPTS=()
debian_sources() {
	local suite=$1 a=$VM_DIR/apt/$1 uri
	# grep fails on a missing file: set -o pipefail would end the script.
	uri=$({ grep -hoE '(https?|file)://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
		/etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | head -1 | tr -d ' ')
	[ -n "$uri" ] || { echo "test-vm: no Debian mirror in /etc/apt/sources.list*: add one" >&2; return 1; }
	mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$a/sources.list"
	APT_OPTS=(-o Dir::Etc::SourceList="$a/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o Dir::State::Lists="$a/lists" -o Dir::Cache="$a/cache")
	apt-get "${APT_OPTS[@]}" update -qq
}

# fetch_kernel $version downloads the current Debian kernel of that
# version (linux-image-<abi>-amd64-unsigned, the one linux-image-amd64 of
# its release depends on), and unpacks its vmlinux (uncompressed: TCG
# takes seconds to unpack the bzImage at each boot) and its modules (with
# modules.dep). Sets KVER[$version] and KDIR[$version].
declare -A KVER KDIR
fetch_kernel() {
	local v=$1 suite pkg kver k
	suite=$(suite "$v")
	debian_sources "$suite"
	pkg=$(apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 |
		awk -v p="linux-image-$v." '$1 == "Depends:" && index($2, p) == 1 {print $2; exit}')
	[ -n "$pkg" ] || { echo "test-vm: no linux-image-$v.*-amd64 in Debian $suite's package lists" >&2; return 1; }
	kver=${pkg#linux-image-}
	pkg=$pkg-unsigned
	k=$VM_DIR/kernel/$kver
	KVER[$v]=$kver KDIR[$v]=$k
	if [ -f "$k/vmlinux" ] && [ -f "$k/lib/modules/$kver/modules.dep" ]; then
		return
	fi
	say "fetching $pkg ($suite)"
	rm -rf "$k" && mkdir -p "$k/deb"
	(cd "$k/deb" && apt-get "${APT_OPTS[@]}" download -qq "$pkg" 2>&1 | grep -v unsandboxed || true)
	ls "$k"/deb/*.deb >/dev/null
	dpkg-deb -x "$k"/deb/*.deb "$k/root"
	local z=$k/root/boot/vmlinuz-$kver off m
	# Debian compresses 5.10 and 6.1 with xz, 6.12 with zstd.
	off=$({ LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$z" || true; } | cut -d: -f1 | sed -n 1p)
	if [ -n "$off" ]; then
		# xz stops at the stream's end, before tail's: no pipe, no SIGPIPE.
		xz -dc --single-stream <(tail -c +$((off + 1)) "$z") >"$k/vmlinux"
	else
		off=$({ LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$z" || true; } | cut -d: -f1 | sed -n 1p)
		[ -n "$off" ] || { echo "test-vm: $z holds no xz or zstd stream" >&2; return 1; }
		# zstd complains of what follows the frame, once it is written.
		zstd -qdc <(tail -c +$((off + 1)) "$z") >"$k/vmlinux" 2>/dev/null || true
	fi
	file -L "$k/vmlinux" | grep -q 'ELF 64-bit' || { echo "test-vm: no vmlinux in $z" >&2; return 1; }
	mkdir -p "$k/lib/modules"
	# Debian 13 ships them in /usr/lib/modules, xz-compressed.
	for m in "$k/root/lib/modules/$kver" "$k/root/usr/lib/modules/$kver"; do
		[ ! -d "$m" ] || mv "$m" "$k/lib/modules/"
	done
	depmod -b "$k" "$kver"
	rm -rf "$k/root" "$k/deb"
}

# build_initramfs $version: busybox, /init and the modules that mount
# the root (virtio, 9p, overlay), in the order modprobe would load them,
# in $VM_DIR/initramfs-$kver.cpio.
build_initramfs() {
	local k=${KDIR[$1]} kver=${KVER[$1]} d=$VM_DIR/initramfs m
	rm -rf "$d" && mkdir -p "$d/bin" "$d/dev" "$d/proc" "$d/sys" "$d/modules"
	cp /bin/busybox "$d/bin/"
	cp test/vm/init "$d/init"
	mknod "$d/dev/console" c 5 1
	: >"$d/modules.list"
	for m in $(for top in virtio_pci 9pnet_virtio 9p overlay virtio_rng; do
		modprobe -d "$k" -S "$kver" --show-depends "$top"
	done | awk '$1 == "insmod" && !seen[$2]++ {print $2}'); do
		# busybox's insmod wants them uncompressed.
		case $m in
		*.ko.xz) xz -dc "$m" >"$d/modules/$(basename "$m" .xz)" ;;
		*) cp "$m" "$d/modules/" ;;
		esac
		basename "$m" .xz >>"$d/modules.list"
	done
	(cd "$d" && find . | busybox cpio -o -H newc 2>/dev/null) >"$VM_DIR/initramfs-$kver.cpio"
	rm -rf "$d"
}

# build_share fills the writable share: test binaries (built here), the
# guest scripts and files, the kernels' modules, and an empty results/.
build_share() {
	local s=$VM_DIR/share v
	rm -rf "$s" && mkdir -p "$s/bin" "$s/results" "$s/modules" "$s/rootfs/etc"
	go build -ldflags "-X main.version=${VERSION:-vm}" -o "$s/bin/" ./cmd/handoffd ./cmd/handoffctl ./demo
	go test -c -o "$s/bin/loader.test" ./loader
	go test -c -o "$s/bin/e2e.test" ./test
	go test -c -tags vm -o "$s/bin/systemd.test" ./test
	for v in $VM_KERNELS; do
		cp -a "${KDIR[$v]}/lib/modules/${KVER[$v]}" "$s/modules/"
	done
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

# boot $name $version $init $append runs one guest and waits for it to
# power off; the guest writes results/$name.rc. Its console goes to
# $VM_DIR/$name.console.log and, each line prefixed with its name, here.
boot() {
	local name=$1 v=$2 init=$3 start=$SECONDS kver=${KVER[$2]} rc
	say "booting $kver for '$name' (qemu TCG, $VM_SMP vCPUs, 2 GiB)"
	# no_timer_check: on a loaded host the emulated timer can miss the
	# IO-APIC check, and 5.10 then panics at boot.
	timeout --foreground "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 2G -smp "$VM_SMP" \
		-display none -monitor none -serial stdio -no-reboot -nic none \
		-kernel "${KDIR[$v]}/vmlinux" -initrd "$VM_DIR/initramfs-$kver.cpio" \
		-append "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check handoff.init=$init handoff.run=$name $4" \
		-device virtio-rng-pci \
		-virtfs local,id=root,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap \
		-virtfs "local,id=share,path=$VM_DIR/share,mount_tag=share,security_model=none,multidevs=remap" \
		</dev/null 2>&1 | tee "$VM_DIR/$name.console.log" | sed -u "s/\r\$//; s/^/[$name] /"
	echo $((SECONDS - start)) >"$VM_DIR/share/results/$name.host-seconds"
	say "'$name' took $((SECONDS - start)) s on the host"
	rc=$(cat "$VM_DIR/share/results/$name.rc" 2>/dev/null || echo "none (the guest did not finish)")
	if [ "$rc" != 0 ]; then
		say "'$name' failed in the guest: exit $rc"
		return 1
	fi
}

# summary $version prints the kernel's line: its release, its modes, the
# test functions run and failed (from the go test -v logs of its runs),
# and the host's seconds for each run.
summary() {
	local v=$1 r=$VM_DIR/share/results name logs=() runs="" tests failed rc bad=0
	for name in tests-$v systemd; do
		[ -f "$r/$name.host-seconds" ] || continue
		[ "$name" != systemd ] || [ "$v" = "$VM_SYSTEMD_KERNEL" ] || continue
		runs+=" $name $(cat "$r/$name.host-seconds")s"
		rc=$(cat "$r/$name.rc" 2>/dev/null || echo none)
		[ "$rc" = 0 ] || { bad=1; runs+=" (exit $rc)"; }
		logs+=($(ls "$r/$name.log" "$r/$name".*.log 2>/dev/null || true))
	done
	[ -n "$runs" ] || return 0
	tests=$(cat "${logs[@]}" 2>/dev/null | grep -cE '^--- (PASS|FAIL|SKIP)' || true)
	failed=$(cat "${logs[@]}" 2>/dev/null | grep -cE '^--- (FAIL|SKIP)' || true)
	local modes="ebpf+fdpass (swaps in both), auto→ebpf"
	[ "$(profile "$v")" = ebpf ] || modes="fdpass, auto→fdpass by probe"
	printf 'test-vm: %-5s %-22s %s; %d tests, %d failed; %s%s\n' "$v" "$(cat "$r/tests-$v.kernel" 2>/dev/null || echo "${KVER[$v]}")" \
		"$modes" "$tests" "$failed" "${runs# }" "$([ $bad = 0 ] || echo "; FAILED")"
}

install_tools
for v in $VM_KERNELS; do
	fetch_kernel "$v"
	build_initramfs "$v"
done
build_share

# The guest runs, VM_JOBS at a time, the longest first: the ebpf suites,
# the systemd run, the fdpass suite.
jobs=()
for run in $VM_RUNS; do
	case $run in
	tests)
		for v in $VM_KERNELS; do
			[ "$(profile "$v")" = ebpf ] || continue
			jobs+=("tests-$v $v /handoff-vm/bin/guest-tests.sh handoff.profile=ebpf")
		done ;;
	systemd)
		[[ " $VM_KERNELS " == *" $VM_SYSTEMD_KERNEL "* ]] ||
			{ echo "test-vm: VM_SYSTEMD_KERNEL $VM_SYSTEMD_KERNEL is not in VM_KERNELS" >&2; exit 2; }
		jobs+=("systemd $VM_SYSTEMD_KERNEL /lib/systemd/systemd systemd.unit=handoff-vm.target systemd.show_status=false") ;;
	*) echo "test-vm: VM_RUNS: unknown run $run (use tests, systemd)" >&2; exit 2 ;;
	esac
done
if [[ " $VM_RUNS " == *" tests "* ]]; then
	for v in $VM_KERNELS; do
		[ "$(profile "$v")" = fdpass ] || continue
		jobs+=("tests-$v $v /handoff-vm/bin/guest-tests.sh handoff.profile=fdpass")
	done
fi
fail=0 running=0 start=$SECONDS
for job in "${jobs[@]}"; do
	if [ "$running" -ge "$VM_JOBS" ]; then
		wait -n || fail=1
		running=$((running - 1))
	fi
	read -r name v init append <<<"$job"
	boot "$name" "$v" "$init" "$append" &
	running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
	wait -n || fail=1
	running=$((running - 1))
done
cat "$VM_DIR"/share/results/*.summary 2>/dev/null || true
for v in $VM_KERNELS; do summary "$v"; done
say "$(( SECONDS - start )) s for the guests, $VM_JOBS at a time, $VM_SMP vCPUs each; load $(cut -d' ' -f1-3 /proc/loadavg)"
exit $fail
