#!/usr/bin/env bash
# Side-by-side filesystem comparison on the same Debian image: kernel overlayfs, fuse-overlayfs
# and layerfs (with FUSE passthrough, and with it turned off), each mounted fresh with an empty
# upper directory, running the same workloads. Prints seconds and ratios to kernel overlayfs and
# to fuse-overlayfs. The machine is shared and noisy: every number is the best of RUNS, and the
# filesystems are measured in one run, one after the other, workload by workload.
#
# Usage: benches/scripts/fs-compare.sh [RUNS] [FS...]      (default: 3 runs, all filesystems)
# Needs root, /dev/fuse, fuse-overlayfs, fio (scripts/deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/deps.sh
cargo build --release -q -p tools -p layerfs
runs=${1:-3}
shift || true
fss=("$@")
[ ${#fss[@]} -gt 0 ] || fss=(overlay fuse-overlayfs layerfs layerfs-nopt)
bin=$PWD/target/release
work=${BENCH_DIR:-/var/tmp/layerfs-bench}/fs
tarball=$(./scripts/debian-image.sh)

mkdir -p "$work"
# Data: the Debian image plus a second layer holding a 1 GiB file and a 100 MB file.
if [ ! -f "$work/ready" ]; then
  rm -rf "$work"/*
  mkdir -p "$work/lower-debian" "$work/lower-big/data"
  tar -xf "$tarball" -C "$work/lower-debian"
  head -c $((1024 * 1024 * 1024)) /dev/urandom > "$work/lower-big/data/1g.bin"
  head -c $((100 * 1024 * 1024)) /dev/urandom > "$work/lower-big/data/100m.bin"
  tar -cf "$work/big.tar" -C "$work/lower-big" .
  "$bin/layertool" -q --root "$work/store" import "$tarball" --tag bench-base
  "$bin/layertool" -q --root "$work/store" import "$work/big.tar" --tag bench-big
  # A 10k-file tarball to untar into each mount.
  mkdir -p "$work/small/src"
  for d in $(seq 0 99); do mkdir -p "$work/small/src/d$d"; for f in $(seq 0 99); do echo "file $d $f" > "$work/small/src/d$d/f$f"; done; done
  tar -cf "$work/small.tar" -C "$work/small" src
  touch "$work/ready"
fi
base_lpk=$("$bin/layertool" --root "$work/store" inspect bench-base | sed -n 's/^layer sha256:\(.*\)/\1/p' | head -n1)
big_lpk=$("$bin/layertool" --root "$work/store" inspect bench-big | sed -n 's/^layer sha256:\(.*\)/\1/p' | head -n1)
base_lpk="$work/store/layers/$base_lpk.lpk"
big_lpk="$work/store/layers/$big_lpk.lpk"

mnt=$work/mnt
# Upper and work directories live on a tmpfs: the comparison then measures the union filesystems,
# not ext4 (which here slows file creation by 10x for ~30 s after a large rm -rf: it skips
# recently deleted inodes when allocating). BENCH_UPPER_DISK=1 puts them on disk instead.
up=$work/up
mkdir -p "$up"
if [ -z "${BENCH_UPPER_DISK:-}" ] && ! mountpoint -q "$up"; then mount -t tmpfs -o size=6g tmpfs "$up"; fi
upper=$up/upper
wdir=$up/work

unmount() {
  if mountpoint -q "$mnt"; then umount "$mnt" 2>/dev/null || umount -l "$mnt"; fi
  for _ in $(seq 50); do pgrep -f "fuse-overlayfs.*$mnt|layerfs.*$mnt" >/dev/null || break; sleep 0.1; done
}

do_mount() { # fs
  unmount
  rm -rf "$upper" "$wdir"; mkdir -p "$upper" "$wdir" "$mnt"
  mount_only "$1"
}

mount_only() { # fs: mounts on a clean upper (the mount-time row times this alone)
  case $1 in
    overlay) mount -t overlay overlay -o "lowerdir=$work/lower-big:$work/lower-debian,upperdir=$upper,workdir=$wdir" "$mnt" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$work/lower-big:$work/lower-debian,upperdir=$upper,workdir=$wdir" "$mnt" 2>/dev/null ;;
    layerfs) "$bin/layerfs" -o "lowerdir=$big_lpk:$base_lpk,upperdir=$upper,workdir=$wdir,objects=$work/store/objects" "$mnt" 2>/dev/null ;;
    layerfs-nopt) "$bin/layerfs" -o "lowerdir=$big_lpk:$base_lpk,upperdir=$upper,workdir=$wdir,objects=$work/store/objects,passthrough=0" "$mnt" 2>/dev/null ;;
  esac
}

daemon_pid() {
  pgrep -n -f "(fuse-overlayfs|layerfs).*$mnt" || true
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# workload name -> shell snippet run in the mount ($mnt); "cold" ones drop caches first.
declare -a wl_names wl_cmds wl_cold wl_fresh
wl() { wl_names+=("$1"); wl_cold+=("$2"); wl_fresh+=("$3"); wl_cmds+=("$4"); }
wl "find -printf (cold)"           1 0 "find . -printf '%p %s %m %i\n' > /dev/null"
wl "find -printf (warm)"           0 0 "find . -printf '%p %s %m %i\n' > /dev/null"
wl "tar c of the tree"             1 0 "tar -cf - --exclude=./data . | wc -c > /dev/null"
wl "1 GiB sequential read (cold)"  1 0 "dd if=data/1g.bin of=/dev/null bs=1M status=none"
wl "1 GiB sequential read (warm)"  0 0 "dd if=data/1g.bin of=/dev/null bs=1M status=none"
# fio drops the file's page cache before it starts unless --invalidate=0: through kernel overlayfs that empties
# the real file's cache (a cold, disk-bound run), through FUSE only the mount's own: warm for everyone instead.
wl "4k random read (fio, 10 s, warm)" 0 0 "fio --name=r --filename=data/1g.bin --rw=randread --bs=4k --size=1g --runtime=10 --time_based --readonly --invalidate=0 --output-format=terse | awk -F';' '{print \$8}' > $work/fio-iops"
wl "copy-up 100 MB (append)"       0 1 "echo x >> data/100m.bin"
wl "copy-up 100 MB (chmod only)"   0 1 "chmod 600 data/100m.bin"
wl "20,000 4k writes (new file)"   0 1 "dd if=/dev/zero of=written.bin bs=4k count=20000 status=none"
wl "untar 10k files"               0 1 "tar -xf $work/small.tar"
wl "rm -rf usr/share (lower tree)" 0 1 "rm -rf usr/share"
wl "python3 imports x20"           0 0 "for i in \$(seq 20); do chroot . /usr/bin/python3 -c 'import json, email, http.client, sqlite3'; done"

declare -A result
printf '%-32s' workload; for fs in "${fss[@]}"; do printf ' %14s' "$fs"; done; echo
# Mount time.
printf '%-32s' "mount (ms)"
for fs in "${fss[@]}"; do
  best=""
  for r in $(seq "$runs"); do
    unmount; rm -rf "$upper" "$wdir"; mkdir -p "$upper" "$wdir" "$mnt"
    s=$(date +%s%N); mount_only "$fs"; stat "$mnt/usr" > /dev/null; e=$(date +%s%N)
    t=$(( (e - s) / 1000 ))
    if [ -z "$best" ] || [ "$t" -lt "$best" ]; then best=$t; fi
  done
  best=$(awk "BEGIN{printf \"%.2f\", $best / 1000}")
  result[$fs,mount]=$best
  printf ' %14s' "$best"
done
echo
for i in "${!wl_names[@]}"; do
  printf '%-32s' "${wl_names[$i]}"
  for fs in "${fss[@]}"; do
    best=""
    do_mount "$fs"
    for r in $(seq "$runs"); do
      if [ "${wl_fresh[$i]}" = 1 ]; then do_mount "$fs"; fi
      [ "${wl_cold[$i]}" = 1 ] && drop_caches
      s=$(date +%s%N)
      (cd "$mnt" && bash -c "${wl_cmds[$i]}") || { best="error"; break; }
      e=$(date +%s%N)
      t=$(awk "BEGIN{printf \"%.3f\", ($e - $s) / 1e9}")
      if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
    done
    if [[ ${wl_names[$i]} == 4k* ]] && [ "$best" != error ]; then best="$(cat "$work/fio-iops")iops"; fi
    result[$fs,$i]=$best
    printf ' %14s' "$best"
  done
  echo
done
# Daemon RSS after a full walk.
printf '%-32s' "daemon RSS after walk (MB)"
for fs in "${fss[@]}"; do
  do_mount "$fs"
  (cd "$mnt" && find . -printf '%p %s\n' > /dev/null)
  pid=$(daemon_pid)
  if [ -n "$pid" ]; then rss=$(( $(awk '/VmRSS/{print $2}' /proc/$pid/status) / 1024 )); else rss="-"; fi
  printf ' %14s' "$rss"
done
echo
unmount
mountpoint -q "$up" && umount "$up"
echo
echo "upper/work on $( [ -n "${BENCH_UPPER_DISK:-}" ] && echo disk || echo tmpfs ); best of $runs runs"
echo "Ratios (seconds / seconds of the reference; < 1 is faster):"
for ref in overlay fuse-overlayfs; do
  [[ " ${fss[*]} " == *" $ref "* ]] || continue
  echo "  against $ref:"
  for i in "${!wl_names[@]}"; do
    [[ ${wl_names[$i]} == 4k* ]] && continue
    printf '    %-32s' "${wl_names[$i]}"
    for fs in "${fss[@]}"; do
      a=${result[$fs,$i]}; b=${result[$ref,$i]}
      if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] && awk "BEGIN{exit !($b > 0)}"; then
        printf ' %14s' "$(awk "BEGIN{printf \"%.2f\", $a / $b}")"
      else printf ' %14s' "-"; fi
    done
    echo
  done
done
