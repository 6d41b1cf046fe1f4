#!/usr/bin/env bash
# Container start-to-exit time and memory per container, side by side.
#
# 1. `launcher run --rm IMAGE /bin/true` (a busybox image of the store, the layerfs mount included) against
#    `launcher run --rm --rootfs DIR`, `bwrap --unshare-all` and `crun run` on the same root filesystem extracted
#    to a directory. hyperfine -N, RUNS runs each after 10 warm-ups; min (best of RUNS) and median, and their
#    ratios to bwrap. Everything runs in a private mount namespace with /sys/fs/cgroup/unified unmounted: crun
#    refuses this hybrid host otherwise (see /work/shared/research/launchers.md); the launcher does not care.
# 2. COUNT containers of the image running `sleep` at once: the memory each costs beyond the workload = (sum of
#    RSS of the monitors + sum of RSS of the layerfs daemons + growth of Cached in /proc/meminfo) / COUNT, with
#    PSS, anonymous RSS and Slab growth beside it to show what dominates.
#
# Usage: benches/scripts/launcher.sh [RUNS] [COUNT]        (default: 300 runs, 100 containers)
# Needs root, /dev/fuse, hyperfine, bubblewrap, crun, busybox-static (scripts/deps.sh installs them).
# The machine is shared and noisy: compare numbers within one run of this script only.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-300}
count=${2:-100}
if [ "${LAUNCHER_BENCH_INNER:-}" != 1 ]; then
  ./scripts/deps.sh
  cargo build --release -q -p launcher -p layerfs -p tools
  # Re-run inside a private mount namespace without the cgroup2 mount (for crun).
  exec env LAUNCHER_BENCH_INNER=1 unshare -m --propagation private "$0" "$@"
fi
umount /sys/fs/cgroup/unified 2>/dev/null || true

bin=$PWD/target/release
work=${BENCH_DIR:-/var/tmp/layerfs-bench}/launcher
rm -rf "$work"
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/rootfs/proc" "$work/rootfs/sys" \
  "$work/rootfs/dev" "$work/rootfs/root"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for a in $("$work/rootfs/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$work/rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$work/rootfs/etc/passwd"
printf 'root:x:0:\n' > "$work/rootfs/etc/group"
chmod 1777 "$work/rootfs/tmp"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
# The directory root for bwrap and crun: the same tarball, extracted.
mkdir -p "$work/dir" && tar -C "$work/dir" -xf "$work/busybox.tar"
# The containers' state (and their uppers) where the launcher keeps them by default: /run, a tmpfs
# (on the ext4 of $work every start costs about 1 ms more in journalled mkdir/symlink/rename).
state=/run/layerfs-bench-launcher
rm -rf "$state"
export LAYERFS_ROOT=$work/store LAUNCHER_ROOT=$state
"$bin/layertool" -q import "$work/busybox.tar" --tag bench-busybox:1 >/dev/null
# crun's bundle: its default spec, /bin/true, no terminal, a read-only root.
mkdir -p "$work/bundle" && (cd "$work/bundle" && crun spec)
python3 - "$work/bundle/config.json" "$work/dir" <<'EOF'
import json, sys
p, root = sys.argv[1], sys.argv[2]
c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
c["root"] = {"path": root, "readonly": True}
json.dump(c, open(p, "w"), indent=1)
EOF

echo "== start to exit: $runs runs each (load: $(cut -d' ' -f1-3 /proc/loadavg))"
hyperfine -N --warmup 10 --runs "$runs" --export-json "$work/start.json" \
  -n "launcher run --rm IMAGE (layerfs)" "$bin/launcher run --rm bench-busybox:1 /bin/true" \
  -n "launcher run --rm --rootfs DIR" "$bin/launcher run --rm --rootfs $work/dir /bin/true" \
  -n "bwrap --unshare-all" "bwrap --unshare-all --ro-bind $work/dir / --proc /proc --dev /dev /bin/true" \
  -n "crun run" "crun run -b $work/bundle bench-crun" >/dev/null
python3 - "$work/start.json" <<'EOF'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
rows = [(r["command"], min(r["times"]) * 1e3, r["median"] * 1e3) for r in res]
base = next(r for r in rows if r[0].startswith("bwrap"))
print(f"{'command':<36} {'min ms':>8} {'median':>8} {'min/bwrap':>10} {'med/bwrap':>10}")
for name, mn, med in rows:
    print(f"{name:<36} {mn:8.2f} {med:8.2f} {mn / base[1]:9.2f}x {med / base[2]:9.2f}x")
EOF

echo "== $count containers of one image running sleep at once"
# The experiment runs in a memory cgroup of its own (under ours), so that page cache and kernel memory growth
# are ours, not the other jobs' on this shared machine (the host-wide numbers are printed too, as a check).
cg=""
own=$(awk -F: '$2 == "memory" { print $3 }' /proc/self/cgroup)
if [ -n "$own" ] && [ -d "/sys/fs/cgroup/memory$own" ]; then
  cg=/sys/fs/cgroup/memory${own%/}/launcher-bench-$$
  mkdir "$cg"
  echo $$ > "$cg/cgroup.procs"
fi
# One container first: binaries and the image's files in the page cache, the init layer made.
"$bin/launcher" run --rm bench-busybox:1 sleep 0
sync
meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
cgstat() { if [ -n "$cg" ]; then awk -v k="$1" '$1 == k { print $2 }' "$cg/memory.stat"; else echo 0; fi; }
kmem() { if [ -n "$cg" ]; then cat "$cg/memory.kmem.usage_in_bytes" 2>/dev/null || echo 0; else echo 0; fi; }
before="$(meminfo Cached) $(meminfo Slab) $(cgstat total_cache) $(kmem)"
t0=$(date +%s.%N)
for i in $(seq "$count"); do
  "$bin/launcher" run -d --name "bench$i" bench-busybox:1 sleep 100000 >/dev/null
done
t1=$(date +%s.%N)
sleep 2
after="$(meminfo Cached) $(meminfo Slab) $(cgstat total_cache) $(kmem)"
# shellcheck disable=SC2086
python3 - "$LAUNCHER_ROOT" "$count" "$t0" "$t1" "$cg" $before $after <<'EOF'
import glob, json, sys
root, count, t0, t1, cg = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
c0, s0, cc0, k0, c1, s1, cc1, k1 = (int(x) for x in sys.argv[6:14])
MB = 1024 * 1024

def status(pid):
    out = {}
    for l in open(f"/proc/{pid}/status"):
        k, _, v = l.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            out[k] = int(v.split()[0]) * (1 if k == "Threads" else 1024)
    for l in open(f"/proc/{pid}/smaps_rollup"):
        if l.startswith("Pss:"):
            out["Pss"] = int(l.split()[1]) * 1024
    return out

mon, dmn, work = [], [], []
for f in glob.glob(f"{root}/containers/*/state.json"):
    st = json.load(open(f))
    mon.append(status(st["monitor_pid"]))
    dmn.append(status(st["layerfs"]["daemon_pid"]))
    work.append(status(st["pid"]))
assert len(mon) == count, f"{len(mon)} of {count} containers found"
avg = lambda xs, k: sum(x[k] for x in xs) / len(xs)
cache = (cc1 - cc0) if cg else (c1 - c0) * 1024
print(f"started {count} in {t1 - t0:.1f} s ({(t1 - t0) / count * 1e3:.0f} ms each, one after the other)")
print(f"{'per container, MB':<22} {'RSS':>6} {'PSS':>6} {'anon':>6} {'file':>6} {'threads':>7}")
for name, xs in (("monitor", mon), ("layerfs daemon", dmn), ("workload (sleep)", work)):
    print(f"{name:<22} {avg(xs, 'VmRSS') / MB:6.2f} {avg(xs, 'Pss') / MB:6.2f} {avg(xs, 'RssAnon') / MB:6.2f} "
          f"{avg(xs, 'RssFile') / MB:6.2f} {avg(xs, 'Threads'):7.1f}")
where = "in the bench cgroup" if cg else "host-wide (no cgroup: noisy)"
print(f"page cache growth {where}: {cache / count / MB:.3f} MB per container; host-wide Cached: "
      f"{(c1 - c0) * 1024 / count / MB:+.2f} MB (other jobs included)")
if cg:
    print(f"kernel memory growth in the bench cgroup: {(k1 - k0) / count / MB:.2f} MB per container "
          f"(namespaces, mounts, FUSE; not in the sum); host-wide Slab: {(s1 - s0) * 1024 / count / MB:+.2f} MB")
rss = sum(x["VmRSS"] for x in mon + dmn)
pss = sum(x["Pss"] for x in mon + dmn)
print(f"beyond the workload = (RSS of monitors + RSS of daemons + page cache growth) / {count}: "
      f"{(rss + cache) / count / MB:.2f} MB per container (goal: under 10); with PSS: {(pss + cache) / count / MB:.2f} MB")
EOF
"$bin/launcher" rm -f $(seq -f "bench%g" "$count") >/dev/null
# The daemons are forked children of the monitors named layerfs (comm), logging into their state directories.
left=0
for p in $(pgrep -x layerfs || true); do
  case $(readlink "/proc/$p/fd/2" || true) in "$LAUNCHER_ROOT"/*) left=$((left + 1)) ;; esac
done
echo "after rm -f: $left layerfs daemons left, $(grep -c "$LAUNCHER_ROOT" /proc/self/mountinfo || true) mounts on the host"
if [ -n "$cg" ]; then
  echo $$ > "$(dirname "$cg")/cgroup.procs"
  rmdir "$cg" 2>/dev/null || true
fi
rm -rf "$state"
