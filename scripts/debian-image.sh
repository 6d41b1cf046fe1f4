#!/usr/bin/env bash
# Builds (once, then cached) the Debian root filesystem tarball that the end-to-end tests and the
# benchmarks use, with mmdebstrap from Debian's archive. Prints the tarball's path.
#   debian-image.sh [bench]   ~45k entries, ~800 MB: Debian 12 minbase + python3, gcc, perl, git ...
# Cache: $LAYERFS_TEST_CACHE (default /var/cache/layerfs-test).
set -euo pipefail
cache=${LAYERFS_TEST_CACHE:-/var/cache/layerfs-test}
variant=${1:-bench}
pkgs="python3,python3-pip,python3-setuptools,python3-yaml,python3-requests,python3-django,python3-sympy,python3-babel,python3-pygments,python3-jinja2,python3-botocore,perl,perl-doc,gcc,libc6-dev,make,git,git-man,curl,vim,less,procps,iproute2,sqlite3,tzdata,manpages,manpages-dev,busybox,adwaita-icon-theme"
out="$cache/debian-bookworm-$variant.tar"
if [ ! -s "$out" ]; then
  mkdir -p "$cache"
  tmp="$out.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  mmdebstrap --quiet --format=tar --variant=minbase --include="$pkgs" --mode=root \
    --customize-hook='rm -f "$1"/etc/hostname "$1"/etc/resolv.conf' \
    bookworm "$tmp" >&2
  mv "$tmp" "$out"
  trap - EXIT
fi
echo "$out"
