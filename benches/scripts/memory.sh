#!/usr/bin/env bash
# Memory of N simultaneous read-only mounts of one image, each reading the same working set (all of
# usr/lib): growth of Cached in /proc/meminfo plus the daemons' RSS, for kernel overlayfs (lower =
# the extracted image), fuse-overlayfs, layerfs with FUSE passthrough and layerfs without it.
# Printed in MB and as a ratio to kernel overlayfs at the same N.
#
# Usage: benches/scripts/memory.sh [N...]   (default: 1 10 100; fuse-overlayfs only up to 10, as
#        it caches every mount separately and 100 mounts would need ~40 GB)
# Needs root, /dev/fuse, fuse-overlayfs (scripts/deps.sh). Uses the data of fs-compare.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/deps.sh
cargo build --release -q -p tools -p layerfs
ns=("$@")
[ ${#ns[@]} -gt 0 ] || ns=(1 10 100)
bin=$PWD/target/release
work=${BENCH_DIR:-/var/tmp/layerfs-bench}/fs
if [ ! -f "$work/ready" ]; then
  echo "run benches/scripts/fs-compare.sh once first (it prepares the data)" >&2
  exit 1
fi
lower=$work/lower-debian
store=$work/store
mdir=$work/memory
cleanup() {
  for m in "$mdir"/m[0-9]*; do
    [ -d "$m" ] || continue
    mountpoint -q "$m" && { umount "$m" 2>/dev/null || umount -l "$m"; }
  done
  sleep 0.5
  rm -rf "$mdir"
}
trap cleanup EXIT

cached_kb() { awk '/^Cached:/{print $2}' /proc/meminfo; }
daemons_kb() { # pattern field (VmRSS or RssAnon)
  local total=0
  for p in $(pgrep -f "$1" || true); do
    total=$((total + $(awk -v f="$2:" '$1==f{print $2}' /proc/$p/status 2>/dev/null || echo 0)))
  done
  echo $total
}

measure() { # fs n -> MB
  local fs=$1 n=$2
  cleanup; mkdir -p "$mdir"
  sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1
  local before; before=$(cached_kb)
  for i in $(seq "$n"); do
    local m=$mdir/m$i; mkdir -p "$m"
    case $fs in
      overlay) mkdir -p "$mdir/empty"; mount -t overlay overlay -o "lowerdir=$mdir/empty:$lower" "$m" ;;
      fuse-overlayfs) fuse-overlayfs -o "lowerdir=$lower" "$m" 2>/dev/null ;;
      layerfs) "$bin/layerfs" mount -o "store=$store" bench-base "$m" 2>/dev/null ;;
      layerfs-nopt) "$bin/layerfs" mount -o "store=$store,passthrough=0" bench-base "$m" 2>/dev/null ;;
    esac
  done
  for i in $(seq "$n"); do
    (cd "$mdir/m$i/usr/lib" && find . -type f -print0 | xargs -0 cat > /dev/null)
  done
  local after rss anon pat
  after=$(cached_kb)
  case $fs in
    overlay) pat="^$" ;;
    fuse-overlayfs) pat="fuse-overlayfs.*$mdir" ;;
    *) pat="layerfs mount.*$mdir" ;;
  esac
  rss=$(daemons_kb "$pat" VmRSS); anon=$(daemons_kb "$pat" RssAnon)
  # Cached + RSS (the issue's measure; RSS double-counts shared file pages such as the mapped
  # layer, which Cached already holds) and Cached + anonymous RSS (what the mounts really cost).
  echo $(( (after - before + rss) / 1024 )) $(( (after - before + anon) / 1024 )) $((rss / 1024)) $((anon / 1024))
}

echo "working set: $(du -sm --apparent-size "$lower/usr/lib" | cut -f1) MB (usr/lib of the Debian image), $(nproc) cores, $(uname -r)"
printf '%-16s %5s %16s %7s %16s %7s %11s %11s\n' fs N "Cached+RSS MB" ratio "Cached+anon MB" ratio "RSS MB" "anon MB"
for n in "${ns[@]}"; do
  ref=""
  for fs in overlay fuse-overlayfs layerfs layerfs-nopt; do
    if [ "$fs" = fuse-overlayfs ] && [ "$n" -gt 10 ]; then continue; fi
    read -r total real rss anon < <(measure "$fs" "$n")
    [ -n "$ref" ] || ref=$total
    printf '%-16s %5d %16d %7s %16d %7s %11d %11d\n' "$fs" "$n" "$total" "$(awk "BEGIN{printf \"%.2f\", $total / ($ref > 0 ? $ref : 1)}")" \
      "$real" "$(awk "BEGIN{printf \"%.2f\", $real / ($ref > 0 ? $ref : 1)}")" "$rss" "$anon"
  done
done
