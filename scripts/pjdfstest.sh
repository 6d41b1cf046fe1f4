#!/usr/bin/env bash
# POSIX conformance of layerfs with pjdfstest (https://github.com/pjd/pjdfstest), which is NOT part
# of this repository and is never downloaded here: build it yourself (autoreconf -ifs &&
# ./configure && make pjdfstest) and pass the path of the built checkout.
#
# usage: scripts/pjdfstest.sh PJDFSTEST_DIR [RUN...]
#   RUN: dir-root dir-lower lpk-root lpk-lower (default: all four)
#     dir-*  the lower layer is a directory
#     lpk-*  the lower layer is a packed .lpk, made by `layertool convert` from a tar of the same
#            tree
#     *-root prove runs at the mount root; *-lower inside a directory that comes from the lower
#
# Needs root, /dev/fuse and prove (perl). Uses target/release/layerfs and target/release/layertool
# (cargo build --release -p layerfs -p tools), or $LAYERFS / $LAYERTOOL. Each run mounts a fresh
# upper, runs `prove -rQ PJDFSTEST_DIR/tests` (about 4 minutes), prints the number of assertions and
# failures, and unmounts; everything is removed at the end. Exits non-zero on any failure.
set -uo pipefail

die() {
    echo "pjdfstest.sh: $*" >&2
    exit 2
}

[ $# -ge 1 ] || die "usage: $0 PJDFSTEST_DIR [dir-root|dir-lower|lpk-root|lpk-lower]..."
PJD=$(realpath -e "$1") || die "no such directory: $1"
shift
[ -x "$PJD/pjdfstest" ] && [ -d "$PJD/tests" ] || die "$PJD is not a built pjdfstest checkout (pjdfstest binary and tests/)"
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=(dir-root dir-lower lpk-root lpk-lower)
for r in "${RUNS[@]}"; do
    case "$r" in dir-root | dir-lower | lpk-root | lpk-lower) ;; *) die "unknown run: $r" ;; esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
LAYERFS=${LAYERFS:-$REPO/target/release/layerfs}
LAYERTOOL=${LAYERTOOL:-$REPO/target/release/layertool}
[ -x "$LAYERFS" ] || die "no $LAYERFS (cargo build --release -p layerfs)"
[ "$(id -u)" = 0 ] || die "needs root (pjdfstest changes owners and makes devices)"
[ -e /dev/fuse ] || die "needs /dev/fuse"
command -v prove > /dev/null || die "needs prove (perl)"
for r in "${RUNS[@]}"; do
    case "$r" in lpk-*) [ -x "$LAYERTOOL" ] || die "no $LAYERTOOL (cargo build --release -p tools)" ;; esac
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/layerfs-pjdfstest.XXXXXX") || die "mktemp failed"
MNT=$TMP/mnt
cleanup() {
    cd /
    if mountpoint -q "$MNT" 2> /dev/null; then
        "$LAYERFS" umount "$MNT" 2> /dev/null || umount -l "$MNT"
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The lower tree: a directory to run in, with a file and a subdirectory from the layer.
mkdir -p "$TMP/tree/lowerdir/sub" "$MNT"
echo lower > "$TMP/tree/lowerdir/file"
echo lower > "$TMP/tree/lowerdir/sub/file"
echo top > "$TMP/tree/topfile"
needs_lpk=0
for r in "${RUNS[@]}"; do case "$r" in lpk-*) needs_lpk=1 ;; esac; done
if [ $needs_lpk = 1 ]; then
    tar -C "$TMP/tree" --numeric-owner --owner=0 --group=0 -cf "$TMP/layer.tar" . || die "tar failed"
    "$LAYERTOOL" -q convert --output "$TMP/layer.lpk" "$TMP/layer.tar" > /dev/null || die "layertool convert failed"
fi

status=0
summary=()
for r in "${RUNS[@]}"; do
    case "$r" in
        dir-*) lower=$TMP/tree ;;
        lpk-*) lower=$TMP/layer.lpk ;;
    esac
    case "$r" in
        *-root) sub= ;;
        *-lower) sub=lowerdir ;;
    esac
    rm -rf "$TMP/upper" "$TMP/work"
    mkdir -p "$TMP/upper" "$TMP/work"
    if ! "$LAYERFS" -o "lowerdir=$lower,upperdir=$TMP/upper,workdir=$TMP/work" "$MNT"; then
        echo "$r: mount failed" >&2
        status=1
        summary+=("$r: mount failed")
        continue
    fi
    log=$TMP/$r.log
    start=$(date +%s)
    (cd "$MNT/$sub" && prove -rQ "$PJD/tests") > "$log" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    cd /
    "$LAYERFS" umount "$MNT" || umount -l "$MNT"
    # "Files=238, Tests=8798, ..." and, per failing file, "... Failed: N)" in the summary.
    tests=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$log")
    failed=$(sed -n 's/.*Failed: \([0-9]*\))$/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
    result=$(sed -n 's/^Result: //p' "$log")
    line="$r: ${tests:-?} assertions, $failed failed, result ${result:-none} (${secs}s)"
    echo "$line"
    summary+=("$line")
    if [ $rc -ne 0 ] || [ "$failed" != 0 ] || [ "$result" != PASS ]; then
        status=1
        sed -n '/^Test Summary Report/,$p' "$log" | head -80
    fi
done

echo "--- pjdfstest on layerfs ($PJD)"
printf '%s\n' "${summary[@]}"
exit $status
