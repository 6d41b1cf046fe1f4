#!/usr/bin/env bash
# The main job (README): build, make a Debian image, import it into the store, inspect and verify
# it, run containers in it (layerfs mounts of the image).
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
echo "== run a container in it"
time $bin/launcher run --rm debian:12 cat /etc/os-release
$bin/launcher run --rm -e GREETING=hello -w /tmp debian:12 \
  python3 -c 'import os, platform, sqlite3; print(os.environ["GREETING"], "from python", platform.python_version(), "in", os.getcwd(), "with sqlite", sqlite3.sqlite_version)'
echo "== a container's changes stay in its upper directory until rm"
id=$($bin/launcher run -d debian:12 sh -c 'echo demo > /root/note; rm /etc/issue')
$bin/launcher wait "$id" >/dev/null
upper=$($bin/launcher inspect "$id" | sed -n 's/^ *"upper": "\(.*\)",$/\1/p')
find "$upper" -mindepth 1 | sed "s|^$upper||"
$bin/launcher rm "$id" >/dev/null
