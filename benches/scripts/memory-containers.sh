#!/usr/bin/env bash
# Memory of N containers of one image, each reading the same working set (all of usr/lib of the
# Debian image), then idling: the same launcher runs them on kernel overlayfs mounts (`--rootfs`
# on an overlay of the extracted image), on fuse-overlayfs mounts (`--rootfs` likewise), and on
# the image itself (layerfs, default options and `cache_dirs=0`). Everything runs in a memory
# cgroup of its own: what it is charged for (file + anon pages: monitors, layerfs daemons, the
# containers and the mounts' page cache), and that plus the kernel memory charged (slab: inodes,
# dentries, namespaces). MB and ratio to kernel overlayfs at the same N.
#
# Usage: benches/scripts/memory-containers.sh [N...]   (default: 1 10; fuse-overlayfs only up to 10)
# Needs root, /dev/fuse, a cgroup v1 memory controller or cgroup v2 with memory, and the data of
# fs-compare.sh (run it once first). MEM_FS="overlay layerfs ..." picks the file systems.
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/deps.sh
cargo build --release -q -p tools -p layerfs -p launcher
ns=("$@")
[ ${#ns[@]} -gt 0 ] || ns=(1 10)
bin=$PWD/target/release
work=${BENCH_DIR:-/var/tmp/layerfs-bench}/fs
if [ ! -f "$work/ready" ]; then
  echo "run benches/scripts/fs-compare.sh once first (it prepares the data)" >&2
  exit 1
fi
lower=$work/lower-debian
mdir=$work/memory-containers
state=/run/layerfs-bench-memory-containers
export LAYERFS_ROOT=$work/store LAUNCHER_ROOT=$state

if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  cg_base="/sys/fs/cgroup$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)"
elif [ -d /sys/fs/cgroup/memory ]; then
  cg_base="/sys/fs/cgroup/memory$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)"
else
  echo "no memory cgroup controller: cannot measure" >&2
  exit 1
fi
cg=${cg_base%/}/layerfs-bench-memc

cleanup() {
  if [ -d "$state" ]; then
    "$bin/launcher" ps -aq 2>/dev/null | xargs -r "$bin/launcher" rm -f >/dev/null 2>&1 || true
  fi
  local m
  for m in $(awk -v d="$mdir/" 'index($2, d) == 1 {print $2}' /proc/mounts); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  rm -rf "$mdir" "$state"
  if [ -d "$cg" ]; then
    for _ in $(seq 20); do rmdir "$cg" 2>/dev/null && break; sleep 0.5; done
  fi
}
trap cleanup EXIT

charged() { # -> "charged_mb charged_plus_kernel_mb"
  if [ -f "$cg/memory.current" ]; then
    awk '$1=="file"{f=$2} $1=="anon"{a=$2} $1=="kernel"{k=$2} END{print int((f+a)/1048576), int((f+a+k)/1048576)}' \
      "$cg/memory.stat"
  else
    local k; k=$(cat "$cg/memory.kmem.usage_in_bytes" 2>/dev/null || echo 0)
    awk -v k="$k" '$1=="total_cache"{f=$2} $1=="total_rss"{a=$2} END{print int((f+a)/1048576), int((f+a+k)/1048576)}' \
      "$cg/memory.stat"
  fi
}

read_cmd='find /usr/lib -type f -print0 | xargs -0 cat > /dev/null; echo read-done; exec sleep 100000'

measure() { # fs n -> "charged charged+kernel"
  local fs=$1 n=$2 i
  cleanup
  mkdir -p "$mdir" "$state"
  sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1
  mkdir "$cg"
  (
    echo "$BASHPID" > "$cg/cgroup.procs"
    for i in $(seq "$n"); do
      local m=$mdir/m$i
      mkdir -p "$m" "$mdir/u$i" "$mdir/w$i"
      case $fs in
        overlay)
          mount -t overlay overlay -o "lowerdir=$lower,upperdir=$mdir/u$i,workdir=$mdir/w$i" "$m"
          "$bin/launcher" run -d --name "c$i" --rootfs "$m" sh -c "$read_cmd" >/dev/null ;;
        fuse-overlayfs)
          fuse-overlayfs -o "lowerdir=$lower,upperdir=$mdir/u$i,workdir=$mdir/w$i" "$m" 2>/dev/null
          "$bin/launcher" run -d --name "c$i" --rootfs "$m" sh -c "$read_cmd" >/dev/null ;;
        layerfs)
          "$bin/launcher" run -d --name "c$i" bench-base sh -c "$read_cmd" >/dev/null ;;
        layerfs-nodircache)
          "$bin/launcher" run -d --name "c$i" --storage-opt cache_dirs=0 bench-base sh -c "$read_cmd" >/dev/null ;;
      esac
    done
    # Every container has read its working set.
    for i in $(seq "$n"); do
      for _ in $(seq 600); do
        "$bin/launcher" logs "c$i" 2>/dev/null | grep -q read-done && break
        sleep 0.5
      done
    done
  )
  sleep 1
  charged
}

ratio() { awk "BEGIN{printf \"%.2f\", $1 / ($2 > 0 ? $2 : 1)}"; }
echo "working set: $(du -sm --apparent-size "$lower/usr/lib" | cut -f1) MB (usr/lib of the Debian image) per container, $(nproc) cores, $(uname -r)"
printf '%-20s %5s %12s %7s %20s %7s\n' fs N "charged MB" ratio "charged+kernel MB" ratio
for n in "${ns[@]}"; do
  ref=""; kref=""
  for fs in ${MEM_FS:-overlay fuse-overlayfs layerfs layerfs-nodircache}; do
    if [ "$fs" = fuse-overlayfs ] && [ "$n" -gt 10 ]; then continue; fi
    read -r c k < <(measure "$fs" "$n")
    [ -n "$ref" ] || ref=$c
    [ -n "$kref" ] || kref=$k
    printf '%-20s %5d %12d %7s %20d %7s\n' "$fs" "$n" "$c" "$(ratio "$c" "$ref")" "$k" "$(ratio "$k" "$kref")"
  done
done
