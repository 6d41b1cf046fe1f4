//! Getting images out again: the merged view as a root filesystem tar (`export`), every layer as
//! an OCI layer tar in an OCI image layout archive (`save`), and the merged view as one new packed
//! layer (`flatten`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};

use format_spec::{Inode, Kind, LayerBuilder, Meta, Segment, WriterOptions};
use sha2::{Digest, Sha256};

use crate::MappedLayer;
use crate::error::ImportError;
use crate::image::Image;
use crate::merged::{MergedDir, MergedView, Source};
use crate::store::{Digest32, Store, digest_string, parse_digest};

/// What an export wrote.
#[derive(Clone, Debug, Default)]
pub struct ExportStats {
    /// Entries written.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Entries that a tar cannot hold (sockets), skipped.
    pub skipped: Vec<String>,
}

fn fmt_err(what: &str, e: format_spec::FormatError) -> ImportError {
    ImportError::BadSource(format!("{what}: {e}"))
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImportError {
    let what = what.into();
    move |e| ImportError::io(what, e)
}

/// The content of a regular file of a layer, as a reader (inline bytes, or its object).
pub fn file_reader<'a>(
    layer: &'a MappedLayer,
    inode: &Inode,
    store: Option<&Store>,
) -> Result<Box<dyn Read + 'a>, ImportError> {
    if inode.is_external() {
        let store = store.ok_or_else(|| ImportError::BadSource("a layer with external data needs its store".into()))?;
        let d = layer
            .digest(inode)
            .map_err(|e| fmt_err("layer", e))?
            .ok_or_else(|| ImportError::BadSource("external file without digest".into()))?;
        let p = store.object_path(d);
        let f = File::open(&p).map_err(io_err(format!("opening object {}", p.display())))?;
        return Ok(Box::new(f.take(inode.size)));
    }
    let segs = layer.read_segments(inode, 0, inode.size).map_err(|e| fmt_err("layer", e))?;
    Ok(Box::new(SegmentReader { segs, idx: 0, pos: 0 }))
}

struct SegmentReader<'a> {
    segs: Vec<Segment<'a>>,
    idx: usize,
    pos: u64,
}

impl Read for SegmentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(seg) = self.segs.get(self.idx) {
            let len = match seg {
                Segment::Data(d) => d.len() as u64,
                Segment::Zeros(z) => *z,
            };
            if self.pos >= len {
                self.idx += 1;
                self.pos = 0;
                continue;
            }
            let n = ((len - self.pos) as usize).min(buf.len());
            match seg {
                Segment::Data(d) => buf[..n].copy_from_slice(&d[self.pos as usize..self.pos as usize + n]),
                Segment::Zeros(_) => buf[..n].fill(0),
            }
            self.pos += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

pub(crate) fn meta_of(layer: &MappedLayer, inode: &Inode) -> Result<Meta, ImportError> {
    let (atime, ctime) = layer.times(inode);
    let has_times = layer.header().compat & format_spec::raw::COMPAT_TIMES != 0;
    let xattrs = layer
        .xattrs(inode)
        .map_err(|e| fmt_err("layer", e))?
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    Ok(Meta {
        mode: inode.mode & 0o7777,
        uid: inode.uid,
        gid: inode.gid,
        mtime: inode.mtime,
        atime: has_times.then_some(atime),
        ctime: has_times.then_some(ctime),
        xattrs,
    })
}

/// Writes tar entries for layer inodes.
struct TarOut<W: Write> {
    b: tar::Builder<W>,
    stats: ExportStats,
}

impl<W: Write> TarOut<W> {
    fn new(w: W) -> Self {
        let mut b = tar::Builder::new(w);
        b.mode(tar::HeaderMode::Complete);
        b.follow_symlinks(false);
        TarOut { b, stats: ExportStats::default() }
    }

    fn pax(&mut self, meta: &Meta) -> Result<(), ImportError> {
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        let t = |ts: format_spec::Timestamp| {
            if ts.nsec == 0 { ts.sec.to_string() } else { format!("{}.{:09}", ts.sec, ts.nsec) }.into_bytes()
        };
        if meta.mtime.nsec != 0 || meta.mtime.sec < 0 {
            recs.push(("mtime".into(), t(meta.mtime)));
        }
        if let Some(a) = meta.atime {
            recs.push(("atime".into(), t(a)));
        }
        if let Some(c) = meta.ctime {
            recs.push(("ctime".into(), t(c)));
        }
        for (k, v) in &meta.xattrs {
            recs.push((format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)), v.clone()));
        }
        if !recs.is_empty() {
            self.b
                .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io_err("writing the tar"))?;
        }
        Ok(())
    }

    fn header(kind: tar::EntryType, meta: &Meta, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode);
        h.set_uid(meta.uid as u64);
        h.set_gid(meta.gid as u64);
        h.set_mtime(meta.mtime.sec.max(0) as u64);
        h.set_size(size);
        h
    }

    /// One entry for `inode` of `layer` at `path` (relative, no leading `/`).
    fn entry(
        &mut self,
        layer: &MappedLayer,
        inode: &Inode,
        path: &[u8],
        link_to: Option<&[u8]>,
        store: Option<&Store>,
    ) -> Result<(), ImportError> {
        use std::os::unix::ffi::OsStrExt;
        let meta = meta_of(layer, inode)?;
        let p = String::from_utf8_lossy(path).into_owned();
        let path_os = std::ffi::OsStr::from_bytes(path).to_owned();
        if let Some(target) = link_to {
            let mut h = Self::header(tar::EntryType::Link, &meta, 0);
            self.b
                .append_link(&mut h, &path_os, std::ffi::OsStr::from_bytes(target))
                .map_err(io_err("writing the tar"))?;
            self.stats.entries += 1;
            return Ok(());
        }
        self.pax(&meta)?;
        match inode.kind() {
            Kind::Dir => {
                let mut h = Self::header(tar::EntryType::Directory, &meta, 0);
                let mut dir = path_os.clone();
                dir.push("/");
                self.b.append_data(&mut h, &dir, io::empty()).map_err(io_err("writing the tar"))?;
            }
            Kind::File => {
                let mut h = Self::header(tar::EntryType::Regular, &meta, inode.size);
                let r = file_reader(layer, inode, store)?;
                self.b.append_data(&mut h, &path_os, r).map_err(io_err(format!("writing {p} to the tar")))?;
                self.stats.bytes += inode.size;
            }
            Kind::Symlink => {
                let mut h = Self::header(tar::EntryType::Symlink, &meta, 0);
                let target = layer.readlink(inode).map_err(|e| fmt_err("layer", e))?;
                self.b
                    .append_link(&mut h, &path_os, std::ffi::OsStr::from_bytes(target))
                    .map_err(io_err("writing the tar"))?;
            }
            Kind::CharDev | Kind::BlockDev | Kind::Fifo => {
                let t = match inode.kind() {
                    Kind::CharDev => tar::EntryType::Char,
                    Kind::BlockDev => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                };
                let mut h = Self::header(t, &meta, 0);
                if let Some((ma, mi)) = inode.rdev() {
                    h.set_device_major(ma).map_err(io_err("device number"))?;
                    h.set_device_minor(mi).map_err(io_err("device number"))?;
                }
                self.b.append_data(&mut h, &path_os, io::empty()).map_err(io_err("writing the tar"))?;
            }
            Kind::Socket | Kind::Whiteout => {
                self.stats.skipped.push(p);
                return Ok(());
            }
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// An empty marker file (OCI whiteouts).
    fn marker(&mut self, path: &[u8]) -> Result<(), ImportError> {
        use std::os::unix::ffi::OsStrExt;
        let meta = Meta::default();
        let mut h = Self::header(tar::EntryType::Regular, &meta, 0);
        self.b
            .append_data(&mut h, std::ffi::OsStr::from_bytes(path), io::empty())
            .map_err(io_err("writing the tar"))?;
        self.stats.entries += 1;
        Ok(())
    }

    fn finish(self) -> Result<(W, ExportStats), ImportError> {
        let w = self.b.into_inner().map_err(io_err("finishing the tar"))?;
        Ok((w, self.stats))
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The visitor of [`walk_merged`]: `(path, source, inode, first name of its hard-link group)`.
type Visit<'f> = dyn FnMut(&[u8], Source, &Inode, Option<&[u8]>) -> Result<(), ImportError> + 'f;

/// Calls `f(path, source, inode, first_name_of_hardlink)` for every entry of the merged view,
/// depth first in name order: a directory, then everything under it, then its next sibling (the
/// root first, with an empty path). Extractors rely on that order: GNU tar sets a directory's
/// times once it has left it, so a directory revisited later would get the extraction's time.
fn walk_merged(view: &MergedView<'_>, f: &mut Visit<'_>) -> Result<(), ImportError> {
    let root = view.root().map_err(|e| fmt_err("layer", e))?;
    let top = root.parts[0];
    f(b"", top, &view.inode(top).map_err(|e| fmt_err("layer", e))?, None)?;
    let mut links: HashMap<Source, Vec<u8>> = HashMap::new();
    let listing = |dir: &MergedDir| -> Result<Vec<_>, ImportError> {
        let mut v = view.read_dir(dir).map_err(|e| fmt_err("layer", e))?;
        v.reverse();
        Ok(v)
    };
    // The directories being listed, innermost last: (path, entries left, reversed).
    let mut stack = vec![(Vec::new(), listing(&root)?)];
    while let Some((path, entries)) = stack.last_mut() {
        let Some(e) = entries.pop() else {
            stack.pop();
            continue;
        };
        let p = join(path, &e.name);
        let inode = view.inode(e.source).map_err(|e| fmt_err("layer", e))?;
        if let Some(d) = e.dir {
            f(&p, e.source, &inode, None)?;
            let children = listing(&d)?;
            stack.push((p, children));
        } else if inode.nlink > 1 {
            match links.get(&e.source) {
                Some(first) => f(&p, e.source, &inode, Some(first))?,
                None => {
                    f(&p, e.source, &inode, None)?;
                    links.insert(e.source, p);
                }
            }
        } else {
            f(&p, e.source, &inode, None)?;
        }
    }
    Ok(())
}

/// Writes the merged view of `layers` (topmost first) as a root filesystem tar to `out`.
pub fn export_merged<W: Write>(
    layers: &[&MappedLayer],
    store: Option<&Store>,
    out: W,
) -> Result<(W, ExportStats), ImportError> {
    let view = MergedView::new(layers.to_vec());
    let mut tar = TarOut::new(out);
    walk_merged(&view, &mut |path, src, inode, link| {
        let layer = view.layers()[src.layer];
        if path.is_empty() {
            return tar.entry(layer, inode, b".", None, store);
        }
        tar.entry(layer, inode, path, link, store)
    })?;
    tar.finish()
}

/// Writes one layer as an OCI layer tar: its own entries, whiteouts as `.wh.NAME` files and
/// opaque directories with a `.wh..wh..opq` file.
pub fn export_layer<W: Write>(
    layer: &MappedLayer,
    store: Option<&Store>,
    out: W,
) -> Result<(W, ExportStats), ImportError> {
    let mut tar = TarOut::new(out);
    let root = layer.inode(layer.root()).map_err(|e| fmt_err("layer", e))?;
    tar.entry(layer, &root, b".", None, store)?;
    if root.is_opaque() {
        tar.marker(b".wh..wh..opq")?;
    }
    let mut links: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut stack: Vec<(Vec<u8>, Inode)> = vec![(Vec::new(), root)];
    while let Some((path, dir)) = stack.pop() {
        let mut subdirs = Vec::new();
        for ent in layer.read_dir(&dir, 0).map_err(|e| fmt_err("layer", e))? {
            let ent = ent.map_err(|e| fmt_err("layer", e))?;
            let p = join(&path, ent.name);
            if ent.kind == Kind::Whiteout {
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(ent.name);
                tar.marker(&join(&path, &wh))?;
                continue;
            }
            let inode = layer.inode(ent.ino).map_err(|e| fmt_err("layer", e))?;
            if inode.is_dir() {
                tar.entry(layer, &inode, &p, None, store)?;
                if inode.is_opaque() {
                    tar.marker(&join(&p, b".wh..wh..opq"))?;
                }
                subdirs.push((p, inode));
            } else if inode.nlink > 1 {
                match links.get(&inode.ino) {
                    Some(first) => tar.entry(layer, &inode, &p, Some(first), store)?,
                    None => {
                        tar.entry(layer, &inode, &p, None, store)?;
                        links.insert(inode.ino, p);
                    }
                }
            } else {
                tar.entry(layer, &inode, &p, None, store)?;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    tar.finish()
}

/// Squashes the merged view of `layers` (topmost first) into one new layer written to `out`:
/// external files are re-referenced by digest (no data copied), inline ones re-packed.
pub fn flatten(
    layers: &[&MappedLayer],
    store: &Store,
    out: File,
    opts: WriterOptions,
) -> Result<format_spec::Summary, ImportError> {
    let view = MergedView::new(layers.to_vec());
    let mut sink = store.object_sink();
    let mut b = LayerBuilder::with_objects(out, opts, &mut sink);
    walk_merged(&view, &mut |path, src, inode, link| {
        let layer = view.layers()[src.layer];
        if let Some(first) = link {
            return Ok(b.hardlink(path, first)?);
        }
        let meta = meta_of(layer, inode)?;
        match inode.kind() {
            Kind::Dir => b.dir(path, meta)?,
            Kind::File if inode.is_external() => {
                let d = layer
                    .digest(inode)
                    .map_err(|e| fmt_err("layer", e))?
                    .ok_or_else(|| ImportError::BadSource("external file without digest".into()))?;
                b.external_file(path, meta, inode.size, d, inode.allocated_bytes())?;
            }
            Kind::File => {
                let mut r = file_reader(layer, inode, Some(store))?;
                b.file(path, meta, inode.size, &mut r)?;
            }
            Kind::Symlink => b.symlink(path, meta, layer.readlink(inode).map_err(|e| fmt_err("layer", e))?)?,
            k @ (Kind::CharDev | Kind::BlockDev | Kind::Fifo | Kind::Socket) => {
                b.special(path, meta, k, inode.rdev().unwrap_or((0, 0)))?
            }
            Kind::Whiteout => {}
        }
        Ok(())
    })?;
    Ok(b.finish(None)?)
}

/// A writer that hashes what it writes.
struct HashWriter<W: Write> {
    inner: W,
    h: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `image` as an OCI image layout archive (a tar holding `oci-layout`, `index.json` and
/// `blobs/sha256/...`), loadable by podman, skopeo and `layertool import`. Layers are gzip-compressed
/// OCI layer tars. Temporary files go to the store's `tmp/`.
pub fn save_oci_archive<W: Write>(store: &Store, image: &Image, out: W) -> Result<W, ImportError> {
    let mut blobs: Vec<(Digest32, std::path::PathBuf, u64)> = Vec::new();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let cleanup = |blobs: &[(Digest32, std::path::PathBuf, u64)]| {
        for (_, p, _) in blobs {
            let _ = std::fs::remove_file(p);
        }
    };
    let result = (|| -> Result<W, ImportError> {
        for l in &image.layers {
            let d = parse_digest(l).ok_or_else(|| ImportError::BadSource(format!("bad layer digest {l}")))?;
            let layer = crate::open_layer(&store.layer_path(&d))
                .map_err(|e| ImportError::BadSource(format!("layer {l}: {e}")))?;
            let (f, p) = store.temp_file(".save-")?;
            blobs.push(([0; 32], p.clone(), 0));
            let gz = flate2::write::GzEncoder::new(
                HashWriter { inner: io::BufWriter::new(f), h: Sha256::new(), n: 0 },
                flate2::Compression::fast(),
            );
            let tar_hash = HashWriter { inner: gz, h: Sha256::new(), n: 0 };
            let (tar_hash, _) = export_layer(&layer, Some(store), tar_hash)?;
            let diff_id: Digest32 = tar_hash.h.finalize().into();
            let gz = tar_hash.inner.finish().map_err(io_err("compressing a layer"))?;
            let mut blob_hash = gz;
            blob_hash.flush().map_err(io_err("writing a layer"))?;
            let blob: Digest32 = blob_hash.h.finalize().into();
            let last = blobs.last_mut().expect("pushed above");
            last.0 = blob;
            last.2 = blob_hash.n;
            layer_descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest_string(&blob),
                "size": blob_hash.n,
            }));
            diff_ids.push(digest_string(&diff_id));
        }
        let c = &image.config;
        let mut cfg = serde_json::json!({
            "Env": c.env, "Cmd": c.cmd, "WorkingDir": c.working_dir, "User": c.user, "Labels": c.labels,
        });
        if !c.entrypoint.is_empty() {
            cfg["Entrypoint"] = serde_json::json!(c.entrypoint);
        }
        if let Some(s) = &c.stop_signal {
            cfg["StopSignal"] = serde_json::json!(s);
        }
        let mut config = serde_json::json!({
            "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(created) = &image.created {
            config["created"] = serde_json::json!(created);
        }
        let config = serde_json::to_vec(&config).expect("JSON");
        let config_digest: Digest32 = Sha256::digest(&config).into();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_string(&config_digest), "size": config.len()},
            "layers": layer_descs,
        }))
        .expect("JSON");
        let manifest_digest: Digest32 = Sha256::digest(&manifest).into();
        let tag = image.name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest_string(&manifest_digest),
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": image.name},
            }],
        }))
        .expect("JSON");
        let mut ar = tar::Builder::new(out);
        let mut put = |name: &str, data: &mut dyn Read, size: u64| -> Result<(), ImportError> {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(size);
            ar.append_data(&mut h, name, data).map_err(io_err("writing the archive"))
        };
        put("oci-layout", &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..], 30)?;
        put("index.json", &mut &index[..], index.len() as u64)?;
        put(&format!("blobs/sha256/{}", hex::encode(manifest_digest)), &mut &manifest[..], manifest.len() as u64)?;
        put(&format!("blobs/sha256/{}", hex::encode(config_digest)), &mut &config[..], config.len() as u64)?;
        for (d, p, size) in &blobs {
            let mut f = File::open(p).map_err(io_err("reading a layer blob"))?;
            put(&format!("blobs/sha256/{}", hex::encode(d)), &mut f, *size)?;
        }
        ar.into_inner().map_err(io_err("finishing the archive"))
    })();
    cleanup(&blobs);
    result
}
