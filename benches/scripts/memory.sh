#!/usr/bin/env bash
# Memory of N simultaneous read-only mounts of one image, each reading the same working set (all of
# usr/lib): growth of Cached in /proc/meminfo plus the daemons' RSS, and the memory charged to a
# cgroup holding the mounts, their daemons and the readers (immune to other processes), for kernel
# overlayfs (lower = the extracted image), fuse-overlayfs, layerfs, layerfs without passthrough and
# layerfs with cache_inline=1 and layerfs with cache_dirs=0. Printed in MB and as a ratio to
# kernel overlayfs at the same N. The last columns add the kernel memory charged to the cgroup
# (slab: dentries, inodes, FUSE requests; kernel overlayfs keeps its per-mount objects there).
#
# Usage: benches/scripts/memory.sh [N...]   (default: 1 10 100; above 10 only overlay and the
#        layerfs variants that share the page cache: the others cache every mount separately and
#        100 mounts would need tens of GB). MEM_FS="overlay layerfs ..." picks the file systems.
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
  # From /proc/mounts, not mountpoint(1): a mount whose daemon died fails its stat (ENOTCONN).
  local m
  for m in $(awk -v d="$mdir/" 'index($2, d) == 1 {print $2}' /proc/mounts); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  sleep 0.5
  rm -rf "$mdir"
  if [ -n "${cg_base:-}" ] && [ -d "$cg_base/layerfs-bench-mem" ]; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$cg_base/layerfs-bench-mem" 2>/dev/null && break; sleep 0.5; done
  fi
}
trap cleanup EXIT

cached_kb() { awk '/^Cached:/{print $2}' /proc/meminfo; }
# A memory cgroup of our own, below ours (v2 when it has the memory controller, else v1), so
# that what the mounts and readers are charged for is measured apart from everything else on a
# shared machine (a compiler filling the page cache does not count).
memcg_base() {
  if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    echo "/sys/fs/cgroup$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)"
  elif [ -d /sys/fs/cgroup/memory ]; then
    echo "/sys/fs/cgroup/memory$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)"
  fi
}
cg_base=$(memcg_base)
cg_kb() { # cgroup -> "file_kb anon_kb kernel_kb"
  if [ -f "$1/memory.current" ]; then
    awk '$1=="file"{f=$2} $1=="anon"{a=$2} $1=="kernel"{k=$2} END{print int(f/1024), int(a/1024), int(k/1024)}' \
      "$1/memory.stat"
  else
    local k=0
    [ -f "$1/memory.kmem.usage_in_bytes" ] && k=$(($(cat "$1/memory.kmem.usage_in_bytes") / 1024))
    awk -v k="$k" '$1=="total_cache"{f=$2} $1=="total_rss"{a=$2} END{print int(f/1024), int(a/1024), k}' \
      "$1/memory.stat"
  fi
}
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
  local cg=""
  if [ -n "$cg_base" ]; then cg=$cg_base/layerfs-bench-mem; rmdir "$cg" 2>/dev/null || true; mkdir "$cg"; fi
  (
  [ -z "$cg" ] || echo "$BASHPID" > "$cg/cgroup.procs"
  for i in $(seq "$n"); do
    local m=$mdir/m$i; mkdir -p "$m"
    case $fs in
      overlay) mkdir -p "$mdir/empty"; mount -t overlay overlay -o "lowerdir=$mdir/empty:$lower" "$m" ;;
      fuse-overlayfs) fuse-overlayfs -o "lowerdir=$lower" "$m" 2>/dev/null ;;
      layerfs) "$bin/layerfs" mount -o "store=$store" bench-base "$m" 2>/dev/null ;;
      layerfs-nopt) "$bin/layerfs" mount -o "store=$store,passthrough=0" bench-base "$m" 2>/dev/null ;;
      layerfs-cache) "$bin/layerfs" mount -o "store=$store,cache_inline=1" bench-base "$m" 2>/dev/null ;;
      layerfs-nodircache) "$bin/layerfs" mount -o "store=$store,cache_dirs=0" bench-base "$m" 2>/dev/null ;;
    esac
  done
  for i in $(seq "$n"); do
    (cd "$mdir/m$i/usr/lib" && find . -type f -print0 | xargs -0 cat > /dev/null)
  done
  )
  local cgfile=0 cganon=0 cgkernel=0
  if [ -n "$cg" ]; then read -r cgfile cganon cgkernel < <(cg_kb "$cg"); fi
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
  # The cgroup's charge (file + anon pages of the mounting and reading processes and their
  # daemons) is the same measure, immune to other processes' page cache.
  echo $(( (after - before + rss) / 1024 )) $(( (after - before + anon) / 1024 )) $((rss / 1024)) $((anon / 1024)) \
    $(( (cgfile + cganon) / 1024 )) $(( (cgfile + cganon + cgkernel) / 1024 ))
}

ratio() { awk "BEGIN{printf \"%.2f\", $1 / ($2 > 0 ? $2 : 1)}"; }
[ -n "$cg_base" ] || echo "no memory cgroup found: the 'charged' column stays 0" >&2
echo "working set: $(du -sm --apparent-size "$lower/usr/lib" | cut -f1) MB (usr/lib of the Debian image), $(nproc) cores, $(uname -r)"
printf '%-18s %5s %14s %6s %15s %6s %7s %8s %11s %6s %18s %6s\n' fs N "Cached+RSS MB" ratio "Cached+anon MB" ratio \
  "RSS MB" "anon MB" "charged MB" ratio "charged+kernel MB" ratio
for n in "${ns[@]}"; do
  ref=""; cref=""; kref=""
  for fs in ${MEM_FS:-overlay fuse-overlayfs layerfs layerfs-nodircache layerfs-nopt layerfs-cache}; do
    # The others cache every mount separately: 100 mounts would need tens of GB.
    case $fs in overlay | layerfs | layerfs-nodircache) ;; *) [ "$n" -le 10 ] || continue ;; esac
    read -r total real rss anon charged kcharged < <(measure "$fs" "$n")
    [ -n "$ref" ] || ref=$total
    [ -n "$cref" ] || cref=$charged
    [ -n "$kref" ] || kref=$kcharged
    printf '%-18s %5d %14d %6s %15d %6s %7d %8d %11d %6s %18d %6s\n' "$fs" "$n" "$total" "$(ratio "$total" "$ref")" \
      "$real" "$(ratio "$real" "$ref")" "$rss" "$anon" "$charged" "$(ratio "$charged" "$cref")" \
      "$kcharged" "$(ratio "$kcharged" "$kref")"
  done
done
