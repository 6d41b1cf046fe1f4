#!/usr/bin/env bash
# Commit and diff time against the size of the change (not of the image), on the Debian image:
# uppers made by a real layerfs mount with 1, 100 and 10k files changed (half modified lower
# files, half new ones; from 100 on also a deleted directory, a chmod and a renamed directory).
# Compared with the classic way: tar of the upper + `layertool import` of that tar, and, when
# podman is installed, `podman commit` of a container on fuse-overlayfs making the same change.
# Usage: benches/scripts/commit.sh [TARBALL] [RUNS]  (default: the cached Debian bench image, 3)
# Work area: $BENCH_DIR (default /var/tmp/layerfs-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/deps.sh
cargo build --release -q -p tools -p layerfs
tarball=${1:-$(./scripts/debian-image.sh)}
runs=${2:-3}
work=${BENCH_DIR:-/var/tmp/layerfs-bench}/commit
lt=$PWD/target/release/layertool
lfs=$PWD/target/release/layerfs
cleanup() {
  # Our layerfs mounts, and podman's own mounts of its storage, deepest first.
  awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    "$lfs" umount "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m" || true
  done
}
trap cleanup EXIT
cleanup
rm -rf "$work"; mkdir -p "$work"
store=$work/store   # commits
tstore=$work/tstore # tar + import: its own store, so that neither finds the other's objects
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$lt" -q --root "$store" import --no-sync "$tarball" --tag debian:bench >/dev/null
"$lt" -q --root "$tstore" import --no-sync "$tarball" --tag debian:bench >/dev/null
entries=$(tar tf "$tarball" | wc -l)
echo "image:   $tarball ($(du -m "$tarball" | cut -f1) MB, $entries entries); best of $runs, page cache warm"

# Seconds (ms resolution) of one run of a command, in bash.
once() {
  local s e
  s=$(date +%s%N)
  bash -c "$1" >/dev/null 2>"$work/err" || { echo "failed: $1: $(tail -n1 "$work/err")" >&2; echo "-"; return; }
  e=$(date +%s%N)
  awk "BEGIN{printf \"%.3f\", ($e - $s) / 1e9}"
}
# The best of $runs runs.
best() {
  local b="" t
  for _ in $(seq "$runs"); do
    t=$(once "$1")
    [ "$t" = "-" ] && { echo "-"; return; }
    if [ -z "$b" ] || awk "BEGIN{exit !($t < $b)}"; then b=$t; fi
  done
  echo "$b"
}

# The change: N files (half modified lower files, half new), through a layerfs mount.
make_upper() {
  local n=$1 u=$work/upper-$1 w=$work/work-$1 m=$work/mnt-$1
  mkdir -p "$u" "$w" "$m"
  "$lfs" mount --upper "$u" --work "$w" -o "store=$store" debian:bench "$m"
  local half=$(( (n + 1) / 2 )) new=$(( n / 2 ))
  find "$m/usr/share" -type f | sort > "$work/files"
  head -n "$half" "$work/files" | while read -r f; do echo "# changed" >> "$f"; done
  if [ "$new" -gt 0 ]; then
    mkdir -p "$m/usr/local/lib/bench"
    (cd "$m/usr/local/lib/bench" && seq "$new" | while read -r i; do
      mkdir -p "d$((i % 100))" && printf 'new file %s\n' "$i" > "d$((i % 100))/f$i"; done)
  fi
  if [ "$n" -ge 100 ]; then
    rm -rf "$m/usr/share/doc/perl"
    chmod 600 "$m/usr/lib/x86_64-linux-gnu/libc.so.6" 2>/dev/null || true
    mv "$m/usr/share/zoneinfo/Europe" "$m/usr/share/zoneinfo/Europa"
  fi
  sync
  "$lfs" umount "$m"
}

podman_ok=""
if command -v podman >/dev/null && command -v fuse-overlayfs >/dev/null; then
  proot=$work/podman
  # This host: crun refuses hybrid cgroups (runc does not), and the hard RLIMIT_NOFILE/NPROC are
  # below podman's defaults.
  pod=(podman --root "$proot/root" --runroot "$proot/run" --storage-driver overlay
    --storage-opt overlay.mount_program=/usr/bin/fuse-overlayfs)
  if command -v runc >/dev/null; then pod+=(--runtime runc); fi
  run_opts=(--network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
  pod() { "${pod[@]}" "$@"; }
  if pod import -q "$tarball" bench:debian >/dev/null 2>"$work/podman.err" \
    && pod run --rm "${run_opts[@]}" bench:debian /bin/true >/dev/null 2>>"$work/podman.err"; then
    podman_ok=1
  else
    echo "podman: installed but does not work here: $(tail -n1 "$work/podman.err")"
  fi
else
  echo "podman: not installed (apt-get install podman), skipped"
fi

printf '%-7s %8s %8s %9s %8s %9s %11s %8s %9s\n' change "upper MB" "diff s" "commit s" "again s" "layer KB" "tar+import" "again s" "podman s"
for n in 1 100 10000; do
  make_upper "$n"
  u=$work/upper-$n
  umb=$(du -sm "$u" | cut -f1)
  d=$(best "'$lt' -q --root '$store' diff '$u' --base debian:bench")
  # First commit: a store that has none of the new contents; then again (nothing new stored).
  c1=$(once "'$lt' -q --root '$store' commit --no-sync '$u' --base debian:bench --tag 'bench:$n'")
  c2=$(best "'$lt' -q --root '$store' commit --no-sync '$u' --base debian:bench --tag 'bench:$n'")
  layer=$("$lt" --root "$store" inspect "bench:$n" | awk '/^file:/ {f=$2} END {print f}')
  lkb=$(( $(stat -c %s "$layer") / 1024 ))
  tar_import="tar -C '$u' -cf '$work/upper.tar' . && '$lt' -q --root '$tstore' import --no-sync '$work/upper.tar' --tag 'tar:$n'"
  t1=$(once "$tar_import")
  t2=$(best "$tar_import")
  p="-"
  if [ -n "$podman_ok" ]; then
    pod rm -f "c$n" >/dev/null 2>&1 || true
    script="half=$(( (n + 1) / 2 )); new=$(( n / 2 )); find /usr/share -type f | sort > /tmp/files; head -n \$half /tmp/files | while read -r f; do echo '# changed' >> \"\$f\"; done; mkdir -p /usr/local/lib/bench; cd /usr/local/lib/bench; for i in \$(seq \$new); do mkdir -p d\$((i % 100)); echo new file \$i > d\$((i % 100))/f\$i; done; rm -f /tmp/files"
    if [ "$n" -ge 100 ]; then script="$script; rm -rf /usr/share/doc/perl; chmod 600 /usr/lib/x86_64-linux-gnu/libc.so.6; mv /usr/share/zoneinfo/Europe /usr/share/zoneinfo/Europa"; fi
    pod run --name "c$n" "${run_opts[@]}" bench:debian /bin/sh -c "$script" >/dev/null
    p=$(once "$(printf '%q ' "${pod[@]}") commit -q c$n bench:c$n")
  fi
  printf '%-7s %8s %8s %9s %8s %9s %11s %8s %9s\n' "$n" "$umb" "$d" "$c1" "$c2" "$lkb" "$t1" "$t2" "$p"
done
echo "reference: one walk of the whole image (layertool export -o /dev/null): $(best "'$lt' -q --root '$store' export debian:bench -o /dev/null") s"
echo "(diff and commit read the upper and look names up in the image: their time follows the change,"
echo " not the image's $entries entries. 'commit s' and 'tar+import' store new contents, 'again' the"
echo " same command repeated: same layer, nothing new stored. podman: commit of a container that made"
echo " the same change, on fuse-overlayfs (with a mount program, containers/storage finds the changes"
echo " by comparing whole trees: its naive diff).)"
rm -rf "$work"
