#!/usr/bin/env bash
# Import speed, peak memory and size: layertool against tar -x, mkfs.erofs and squashfs on the same
# Debian root filesystem tarball, side by side in one run, printed with ratios to `tar -x`.
# Usage: benches/scripts/import.sh [TARBALL] [RUNS]   (default: the cached Debian bench image, 3 runs)
# Work area: $BENCH_DIR (default /var/tmp/layerfs-bench), on the same filesystem for every tool.
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/deps.sh
cargo build --release -q -p tools
tarball=${1:-$(./scripts/debian-image.sh)}
runs=${2:-3}
work=${BENCH_DIR:-/var/tmp/layerfs-bench}/import
rm -rf "$work"; mkdir -p "$work"
lt=$PWD/target/release/layertool
entries=$(tar tf "$tarball" | wc -l)
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "input:   $tarball ($(du -m "$tarball" | cut -f1) MB, $entries entries), page cache warm, best of $runs"
cat "$tarball" > /dev/null

# name | command (run in $work, output under $work/out) ; peak RSS from /usr/bin/time
declare -a names cmds
add() { names+=("$1"); cmds+=("$2"); }
add "tar -x (reference)"            "mkdir \$OUT && tar -xf '$tarball' -C \$OUT"
add "layertool convert (inline)"    "'$lt' -q convert '$tarball' -o \$OUT"
add "tar -x + sync"                 "mkdir \$OUT && tar -xf '$tarball' -C \$OUT && sync"
add "layertool import (objects, syncfs)" "'$lt' -q --root \$OUT import '$tarball' --tag bench"
add "layertool import (objects, --no-sync)" "'$lt' -q --root \$OUT import --no-sync '$tarball' --tag bench"
add "mkfs.erofs 1.5 (tar -x + mkfs)" "mkdir \$X && tar -xf '$tarball' -C \$X && mkfs.erofs \$OUT \$X >/dev/null"
add "mksquashfs (tar -x + mksq, -noI -noD -noF)" "mkdir \$X && tar -xf '$tarball' -C \$X && mksquashfs \$X \$OUT -quiet -no-progress -noI -noD -noF -noX >/dev/null"
add "mksquashfs lz4 (tar -x + mksq)" "mkdir \$X && tar -xf '$tarball' -C \$X && mksquashfs \$X \$OUT -quiet -no-progress -comp lz4 >/dev/null"
add "tar2sqfs lz4 (streaming, 2 jobs)" "tar2sqfs -q -c lz4 -j 2 -f \$OUT < '$tarball'"

printf '%-44s %9s %7s %9s %9s\n' tool seconds ratio "peak MB" "size MB"
ref=""
settle() {
  # ext4 skips inodes deleted in the last ~30 s when it allocates new ones (recently_deleted()):
  # right after an rm -rf of 46k files, creating files costs 10x more. Let deletions age first.
  rm -rf "$work"/out-* "$work"/x-*; sync; sleep "${SETTLE:-35}"
}
for i in "${!names[@]}"; do
  settle
  best=""; rss=0; size=0
  for r in $(seq "$runs"); do
    out="$work/out-$r"; x="$work/x-$r"
    s=$( { cd "$work" && OUT=$out X=$x /usr/bin/time -f '%e %M' bash -c "${cmds[$i]}" 2>&1 >/dev/null; } | tail -n1) || true
    if ! [[ $s =~ ^[0-9.]+\ [0-9]+$ ]]; then echo "${names[$i]}: failed: $s" >&2; continue 2; fi
    t=${s% *}; m=${s#* }
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; rss=$m; size=$(du -sm --apparent-size "$out" | cut -f1); fi
  done
  [ -n "$ref" ] || ref=$best
  printf '%-44s %9.2f %7.2f %9d %9d\n' "${names[$i]}" "$best" "$(awk "BEGIN{print $best/$ref}")" $((rss / 1024)) "$size"
done
echo "(ratio = time / tar -x; peak MB = max RSS of the slowest process in the command; sizes are apparent sizes)"
rm -rf "$work"
