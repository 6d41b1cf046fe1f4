#!/usr/bin/env bash
# Side-by-side timings: layerfs vs fuse-overlayfs vs kernel overlayfs on the same lower.
# usage: bench.sh [LOWER_TREE] (default /usr); needs root, fuse-overlayfs, a release build.
# Prints seconds per workload and the ratio to layerfs. Not run in CI.
set -euo pipefail
TREE=${1:-/usr}
BIN=${LAYERFS_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/layerfs}
T=$(mktemp -d /tmp/layerfs-bench.XXXX)
trap 'for m in $T/*/m; do umount -l $m 2>/dev/null || true; done; rm -rf $T' EXIT
mkdir -p $T/data
head -c $((1<<30)) /dev/zero | tr '\0' 'x' > $T/data/big        # 1 GiB, not sparse
head -c $((100<<20)) /dev/urandom > $T/data/copyup              # 100 MB for copy-up
mkdir -p $T/data/src && (cd $T/data/src && for i in $(seq 1 10000); do echo $i > f$i; done) && tar cf $T/10k.tar -C $T/data/src . && rm -rf $T/data/src
now() { date +%s.%N; }
t() { local s=$(now); "$@" >/dev/null 2>&1; echo "$(now) - $s" | bc; }
mnt() { # kind dir
  local k=$1 d=$T/$1; mkdir -p $d/u $d/w $d/m
  local s=$(now)
  case $k in
    layerfs) $BIN -o lowerdir=$T/data:$TREE,upperdir=$d/u,workdir=$d/w $d/m ;;
    fuse-overlayfs) fuse-overlayfs -o lowerdir=$T/data:$TREE,upperdir=$d/u,workdir=$d/w $d/m ;;
    kernel) mount -t overlay overlay -o lowerdir=$T/data:$TREE,upperdir=$d/u,workdir=$d/w $d/m ;;
  esac
  echo "$(now) - $s" | bc
}
declare -A R
for k in layerfs fuse-overlayfs kernel; do
  m=$T/$k/m
  R[$k,mount]=$(mnt $k)
  sync; echo 3 > /proc/sys/vm/drop_caches
  R[$k,find_cold]=$(t find $m -printf '%i %s %m\n')
  R[$k,find_warm]=$(t find $m -printf '%i %s %m\n')
  R[$k,tar_share]=$(t tar cf /dev/null -C $m share/doc)
  sync; echo 3 > /proc/sys/vm/drop_caches
  R[$k,read_1g_cold]=$(t cat $m/big)
  R[$k,read_1g_warm]=$(t cat $m/big)
  R[$k,copyup_100m]=$(t sh -c "echo >> $m/copyup")
  R[$k,chmod_copyup_100m]=$(t chmod 600 $m/big)
  R[$k,untar_10k]=$(t tar xf $T/10k.tar -C $m/share)
  R[$k,rm_rf_doc]=$(t rm -rf $m/share/doc)
  pid=$(pgrep -n -f "$m" || true)
  R[$k,rss_mb]=$( [ -n "$pid" ] && [ $k != kernel ] && awk '/VmRSS/{print $2/1024}' /proc/$pid/status || echo 0)
  umount $m || umount -l $m
done
printf "%-18s %10s %15s %10s %12s %12s\n" workload layerfs fuse-overlayfs kernel "fo/layerfs" "kernel/layerfs"
for w in mount find_cold find_warm tar_share read_1g_cold read_1g_warm copyup_100m chmod_copyup_100m untar_10k rm_rf_doc rss_mb; do
  a=${R[layerfs,$w]} b=${R[fuse-overlayfs,$w]} c=${R[kernel,$w]}
  printf "%-18s %10.3f %15.3f %10.3f %12.2f %12.2f\n" $w $a $b $c $(echo "$b / ($a+0.0001)" | bc -l) $(echo "$c / ($a+0.0001)" | bc -l)
done
