#!/usr/bin/env bash
# A distribution's own tools on a layerfs root: in a container of the Debian image (launcher, layerfs mount,
# host network for the Debian mirror), apt-get installs packages, dpkg verifies the checksum of every installed
# file, gcc compiles and links a program against an installed library, and CPython's own tests of file system
# behaviour run (os, shutil, posix, tempfile, glob, fileio, stat, pathlib, io, mmap, fcntl, tarfile, zipfile,
# compileall, importlib).
#
# Usage: scripts/distro-check.sh [IMAGE]   (default debian:12, imported by scripts/demo.sh)
# Needs root, /dev/fuse and the Debian mirror (not run in CI, which must not depend on the network).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-debian:12}
cargo build --release -q -p launcher -p layerfs -p tools
bin=$PWD/target/release
"$bin/layertool" inspect "$image" >/dev/null 2>&1 || {
  echo "image $image not in the store: run scripts/demo.sh first" >&2
  exit 1
}
# shellcheck disable=SC2016
"$bin/launcher" run --rm --net host "$image" sh -euc '
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q gcc libc6-dev zlib1g-dev git jq libpython3.11-testsuite > /tmp/apt.log 2>&1 \
  || { tail -20 /tmp/apt.log; exit 1; }
echo "apt-get install: ok ($(grep -c "^Setting up" /tmp/apt.log) packages set up)"
dpkg --verify && echo "dpkg --verify: every installed file matches its checksum"
git --version
cat > /tmp/z.c <<EOF
#include <zlib.h>
#include <stdio.h>
#include <string.h>
int main(void) {
  const char *s = "layerfs layerfs layerfs layerfs";
  unsigned char out[256], back[256];
  uLongf n = sizeof out, m = sizeof back;
  if (compress(out, &n, (const unsigned char *)s, strlen(s) + 1) != Z_OK) return 1;
  if (uncompress(back, &m, out, n) != Z_OK) return 2;
  return strcmp(s, (char *)back) != 0;
}
EOF
gcc -O2 -o /tmp/z /tmp/z.c -lz && /tmp/z && echo "gcc: compiled, linked against zlib, ran"
cd /tmp
if ! python3 -m test -j2 test_os test_shutil test_posix test_tempfile test_glob test_fileio test_stat test_pathlib \
  test_io test_mmap test_fcntl test_tarfile test_zipfile test_compileall test_importlib > /tmp/test.log 2>&1; then
  tail -40 /tmp/test.log
  exit 1
fi
tail -6 /tmp/test.log
'
