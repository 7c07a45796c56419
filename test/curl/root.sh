#!/usr/bin/env bash
# Makes a Debian 13 (trixie) root with curl, whose libcurl speaks HTTP/3
# (nghttp3 over OpenSSL's QUIC), for test/quic_curl_test.go: a client of
# HTTP/3 that no one here wrote. The root is made once with debootstrap
# (minbase) and kept: a second run finds it and does nothing.
#
#   test/curl/root.sh [DIR]     DIR defaults to $HANDOFF_CURL_ROOT or
#                               /var/cache/handoffd-test/trixie-curl
set -euo pipefail
root=${1:-${HANDOFF_CURL_ROOT:-/var/cache/handoffd-test/trixie-curl}}
if [ -f "$root/.complete" ]; then
	exit 0
fi
command -v debootstrap >/dev/null || {
	echo "installing debootstrap from Debian"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
# The host's Debian mirror, from whichever of apt's source files it has
# (grep fails on the ones it lacks, and head may cut it short: neither
# matters here).
mirror=$(grep -hoE '(https?|file)://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
	/etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
rm -rf "$root.tmp"
mkdir -p "$(dirname "$root")"
start=$SECONDS
debootstrap --variant=minbase --include=curl,ca-certificates trixie "$root.tmp" "$mirror" >"$root.log" 2>&1 || {
	tail -20 "$root.log" >&2
	exit 1
}
chroot "$root.tmp" curl --version | grep -q HTTP3 || {
	echo "curl in $root.tmp has no HTTP3" >&2
	exit 1
}
rm -rf "$root"
mv "$root.tmp" "$root"
touch "$root/.complete"
echo "Debian 13 root with curl (HTTP/3) made in $root in $((SECONDS - start)) s"
