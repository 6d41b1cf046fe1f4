#!/usr/bin/env bash
# Disk use of two images that share their files but not their layers (issue 7): the Debian root
# filesystem imported as one layer (image A), and again as an OCI image of two layers split
# differently (image B: everything but usr/share, then usr/share). Printed against the sum of their
# layer tarballs and against per-layer formats that share nothing between layers (self-contained
# `.lpk` files from `layertool convert`, and one mkfs.erofs image per layer), with ratios to the
# tarballs.
#
# Usage: benches/scripts/disk.sh [TARBALL]   (default: the cached Debian bench image)
# Work area: $BENCH_DIR/disk (default /var/tmp/layerfs-bench/disk), ~5 GB.
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/deps.sh
cargo build --release -q -p tools
tarball=${1:-$(./scripts/debian-image.sh)}
work=${BENCH_DIR:-/var/tmp/layerfs-bench}/disk
rm -rf "$work"; mkdir -p "$work"
lt=$PWD/target/release/layertool

# Image B's layers (a stream filter: members under usr/share go to the second tarball; hard links
# follow their target so that each layer is valid on its own) and its OCI layout.
python3 - "$tarball" "$work" <<'EOF'
import hashlib, json, os, sys, tarfile
src, work = sys.argv[1], sys.argv[2]
def top(name):
    n = name.lstrip("./")
    return n == "usr/share" or n.startswith("usr/share/")
where = {}
with tarfile.open(src) as t, tarfile.open(f"{work}/b1.tar", "w", format=tarfile.PAX_FORMAT) as o1, \
        tarfile.open(f"{work}/b2.tar", "w", format=tarfile.PAX_FORMAT) as o2:
    for m in t:
        second = top(m.linkname) if m.islnk() else top(m.name)
        where[m.name] = second
        (o2 if second else o1).addfile(m, t.extractfile(m) if m.isreg() else None)
blobs = f"{work}/oci/blobs/sha256"
os.makedirs(blobs)
def blob(data=None, path=None):
    if path:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        d = h.hexdigest(); os.link(path, f"{blobs}/{d}"); size = os.path.getsize(path)
    else:
        d = hashlib.sha256(data).hexdigest(); size = len(data)
        open(f"{blobs}/{d}", "wb").write(data)
    return {"digest": f"sha256:{d}", "size": size}
layers = [blob(path=f"{work}/b{i}.tar") for i in (1, 2)]
diff_ids = [l["digest"] for l in layers]
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/bash"]},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
c = blob(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": dict(c, mediaType="application/vnd.oci.image.config.v1+json"),
    "layers": [dict(l, mediaType="application/vnd.oci.image.layer.v1.tar") for l in layers]}).encode()
m = blob(manifest)
json.dump({"schemaVersion": 2, "manifests": [dict(m, mediaType="application/vnd.oci.image.manifest.v1+json",
           annotations={"org.opencontainers.image.ref.name": "split"})]}, open(f"{work}/oci/index.json", "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(f"{work}/oci/oci-layout", "w"))
EOF

mb() { du -s --block-size=1M "$@" | awk '{s+=$1} END{print s}'; }      # disk blocks
amb() { du -s --apparent-size --block-size=1M "$@" | awk '{s+=$1} END{print s}'; }
"$lt" -q --root "$work/store" import "$tarball" --tag a:1
"$lt" -q --root "$work/store" import "$work/oci" --tag b:1
for i in a b1 b2; do
  in=$tarball; [ "$i" = a ] || in=$work/$i.tar
  "$lt" -q convert "$in" -o "$work/$i.lpk"
  if command -v mkfs.erofs >/dev/null; then
    mkdir "$work/x-$i"; tar -xf "$in" -C "$work/x-$i"; mkfs.erofs "$work/$i.erofs" "$work/x-$i" >/dev/null 2>&1
    rm -rf "$work/x-$i"
  fi
done

tars=$(( $(amb "$tarball") + $(amb "$work/b1.tar" "$work/b2.tar") ))
row() { printf '%-52s %9s %7s\n' "$1" "$2" "$(awk "BEGIN{printf \"%.2f\", $2 / $tars}")"; }
echo "input: $tarball; image A = 1 layer, image B = 2 layers (usr/share apart); $(uname -r)"
printf '%-52s %9s %7s\n' "two images, stored as" "MB" ratio
row "layer tarballs (sum, uncompressed)" "$tars"
row "self-contained .lpk per layer (layertool convert)" "$(mb "$work/a.lpk" "$work/b1.lpk" "$work/b2.lpk")"
if [ -f "$work/a.erofs" ]; then row "erofs image per layer (mkfs.erofs)" "$(mb "$work"/*.erofs)"; fi
row "layerfs store (layers + shared objects)" "$(mb "$work/store")"
echo "store: $(find "$work/store/objects" -type f | wc -l) objects, $(mb "$work/store/objects") MB; layers $(mb "$work/store/layers") MB"
rm -rf "$work"
