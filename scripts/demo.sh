#!/usr/bin/env bash
# The main job (README): build, make a Debian image, import it into the store, inspect and verify
# it. (Mounting it with layerfs and running a container in it join as those land.)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release -q
bin=target/release
tarball=$(./scripts/debian-image.sh)
echo "== import $tarball"
time $bin/layertool import "$tarball" --tag debian:12
$bin/layertool images
echo "== inspect"
$bin/layertool inspect debian:12 | tail -n 12
echo "== verify"
$bin/layertool verify debian:12
