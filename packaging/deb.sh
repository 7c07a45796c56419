#!/usr/bin/env bash
# make deb: a Debian package of what make install installs (PREFIX=/usr),
# with the maintainer scripts and lintian overrides of packaging/deb and a
# generated copyright file and changelog, into dist/; then lintian checks
# it with Debian's profile and any error fails. Needs dpkg-deb and lintian
# only: no debhelper.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$1 commit=$2
maintainer='handoffd maintainers <maintainers@handoffd.invalid>'
# A release tag (v1.2.0, 1.2.0-3-gabc) gives the upstream version; an
# untagged tree gets 0~git<commits>.<commit>. The Debian revision is 1:
# the package is made from upstream's tree, with no Debian changes.
if [[ $version =~ ^v?[0-9]+\.[0-9] ]]; then
	upver=${version#v}
	upver=${upver//-/+}
else
	upver=0~git$(git rev-list --count HEAD).$commit
fi
debver=$upver-1
arch=$(dpkg --print-architecture)
root=$PWD/bin/deb/root
doc=$root/usr/share/doc/handoffd
rm -rf bin/deb && mkdir -p "$root/DEBIAN" dist
# Static binaries: the package depends on nothing. Stripped: -s -w leaves
# out the symbol table and DWARF; the build information that -check reads
# below (and go version -m) stays.
CGO_ENABLED=0 make --no-print-directory install DESTDIR="$root" PREFIX=/usr SYSCONFDIR=/etc EXTRA_LDFLAGS='-s -w' \
	UNITDIR=/lib/systemd/system ZSHCOMPDIR=/usr/share/zsh/vendor-completions VERSION="$version" COMMIT="$commit" >/dev/null
find "$root/usr/share/man" -type f -name '*.[0-9]' -exec gzip -9n {} +

# The licences of handoffd and of each module linked into it, read from
# the module cache; the check fails if a binary links a module (or a
# version of it) that the file does not name.
CGO_ENABLED=0 go build -o bin/deb/copyright ./packaging/copyright
CGO_ENABLED=0 bin/deb/copyright ./cmd/handoffd ./cmd/handoffctl >"$doc/copyright"
bin/deb/copyright -check "$doc/copyright" "$root/usr/sbin/handoffd" "$root/usr/bin/handoffctl"

# One entry, for this build, dated by its commit: the same tree gives the
# same file.
{
	printf 'handoffd (%s) unstable; urgency=medium\n\n' "$debver"
	printf '  * handoffd %s, commit %s, packaged by make deb.\n\n' "$version" "$commit"
	printf ' -- %s  %s\n' "$maintainer" "$(date -R -u -d "@$(git log -1 --format=%ct)")"
} | gzip -9n >"$doc/changelog.Debian.gz"

install -D -m 0644 packaging/deb/lintian-overrides "$root/usr/share/lintian/overrides/handoffd"
cp packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
echo /etc/handoff/handoff.yaml.example >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
cat >"$root/DEBIAN/control" <<CONTROL
Package: handoffd
Version: $debver
Architecture: $arch
Maintainer: $maintainer
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: zero-downtime generation swaps for TCP services
 handoffd supervises services as numbered generations and swaps them
 without failing a request: an eBPF SK_REUSEPORT program steers new
 connections to the new generation (or, without eBPF, the generations
 share passed listening sockets) while the old one drains. Commit $commit.
CONTROL
deb=dist/handoffd_${debver}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null

# Debian's checker: an error fails make deb; warnings and the overridden
# tags (packaging/deb/lintian-overrides, each with its reason) are shown.
# (lintian's --fail-on error would count the shown overrides as errors.)
report=$(lintian --profile debian --fail-on none --show-overrides "$deb" 2>&1) ||
	{ echo "$report" >&2; echo "make deb: lintian could not check $deb" >&2; exit 1; }
echo "$report" | grep -v '^running with root privileges' >&2 || true
if grep -q '^E: ' <<<"$report"; then
	echo "make deb: lintian reports errors in $deb" >&2
	exit 1
fi
echo "$deb"
