//! Importing images into the store: root filesystem tarballs, OCI image layouts (directories
//! or tar archives) and `docker save` archives.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use format_spec::{LayerBuilder, Summary, WriterOptions};
use indicatif::ProgressBar;

use crate::convert::{self, ConvertReport, HashingReader};
use crate::error::ImportError;
use crate::image::{Image, ImageConfig, ImageRef};
use crate::store::{Digest32, Store, digest_string, parse_digest, sha256_file};

/// Options of an import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Regular files of at least this many bytes become shared objects; smaller ones stay
    /// inline in the layer file.
    pub external_min: u64,
    /// Flush everything to disk before publishing the image (`syncfs`), so that a power loss
    /// never leaves a manifest naming unwritten objects. Off: faster, safe against a killed
    /// process but not against a power loss (like `dpkg --force-unsafe-io`).
    pub sync: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { external_min: 4096, sync: true }
    }
}

/// What an import did, per layer.
#[derive(Clone, Debug)]
pub struct LayerReport {
    /// Where the layer came from.
    pub source: String,
    /// The packed layer's digest.
    pub digest: Digest32,
    /// False when the layer was stored already (nothing written).
    pub new: bool,
    /// True when the conversion was skipped thanks to the source cache.
    pub cached: bool,
    /// Conversion details (absent when cached).
    pub convert: Option<ConvertReport>,
    /// Writer details (absent when cached).
    pub summary: Option<Summary>,
}

/// What an import did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// The image written.
    pub image: Image,
    /// Its layers, lowest first.
    pub layers: Vec<LayerReport>,
}

/// A layer blob to convert.
struct LayerBlob {
    description: String,
    /// Digest of the blob as stored (compressed): verified while reading, and the cache key.
    blob_digest: Option<Digest32>,
    /// Expected diff_id (SHA-256 of the uncompressed tar), verified after conversion.
    diff_id: Option<Digest32>,
    size: u64,
    open: Box<dyn Fn() -> io::Result<Box<dyn Read>>>,
}

/// Removes a temporary file unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct ProgressReader<R> {
    inner: R,
    pb: ProgressBar,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}

/// Converts one layer tarball (plain, gzip or zstd) into a self-contained packed layer written
/// to `out` (all data inline).
pub fn convert_file(input: &Path, out: File, pb: &ProgressBar) -> Result<(ConvertReport, Summary), ImportError> {
    let f = File::open(input).map_err(|e| ImportError::io(format!("opening {}", input.display()), e))?;
    pb.set_length(f.metadata().map(|m| m.len()).unwrap_or(0));
    let reader = ProgressReader { inner: f, pb: pb.clone() };
    let tar = convert::decompress(reader).map_err(|e| ImportError::io("starting decompression", e))?;
    let mut builder = LayerBuilder::new(out);
    let report = convert::convert_tar(tar, &mut builder)?;
    let summary = builder.finish(Some(report.diff_id))?;
    Ok((report, summary))
}

fn convert_into_store(
    store: &Store,
    blob: &LayerBlob,
    opts: &ImportOptions,
    pb: &ProgressBar,
) -> Result<LayerReport, ImportError> {
    if let Some(d) = blob.blob_digest
        && let Some(layer) = store.source_layer(&d)
    {
        pb.inc(blob.size);
        return Ok(LayerReport {
            source: blob.description.clone(),
            digest: layer,
            new: false,
            cached: true,
            convert: None,
            summary: None,
        });
    }
    let (file, tmp) = store.temp_file(".layer-")?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let raw = (blob.open)().map_err(|e| ImportError::io(format!("opening {}", blob.description), e))?;
    let mut raw = BufReader::with_capacity(1 << 20, ProgressReader { inner: raw, pb: pb.clone() });
    let compression =
        convert::detect(&mut raw).map_err(|e| ImportError::io(format!("reading {}", blob.description), e))?;
    let mut sink = store.object_sink();
    let out = file.try_clone().map_err(|e| ImportError::io("duplicating a file handle", e))?;
    let mut builder = LayerBuilder::with_objects(out, WriterOptions { external_min: opts.external_min }, &mut sink);
    let (report, blob_digest) = if compression == convert::Compression::None {
        // An uncompressed blob is the tar itself: its digest is the diff_id (hashed once).
        let report = convert::convert_tar(raw, &mut builder)?;
        let d = report.diff_id;
        (report, d)
    } else {
        let mut hashing = HashingReader::new(raw);
        let tar = convert::decompress(&mut hashing).map_err(|e| ImportError::io("starting decompression", e))?;
        let report = convert::convert_tar(tar, &mut builder)?;
        let (d, _) = hashing.finish().map_err(|e| ImportError::io(format!("reading {}", blob.description), e))?;
        (report, d)
    };
    let summary = builder.finish(Some(report.diff_id))?;
    if let Some(want) = blob.blob_digest
        && want != blob_digest
    {
        return Err(ImportError::BadSource(format!(
            "{}: content digest is {}, the manifest says {}",
            blob.description,
            digest_string(&blob_digest),
            digest_string(&want)
        )));
    }
    if let Some(want) = blob.diff_id
        && want != report.diff_id
    {
        return Err(ImportError::BadSource(format!(
            "{}: uncompressed digest is {}, the image config says {}",
            blob.description,
            digest_string(&report.diff_id),
            digest_string(&want)
        )));
    }
    if opts.sync {
        file.sync_all().map_err(|e| ImportError::io("syncing the layer", e))?;
    }
    let digest = sha256_file(&tmp).map_err(|e| ImportError::io("hashing the layer", e))?;
    let new = store.publish_layer(&tmp, &digest)?;
    guard.0 = None;
    store.remember_source(&blob_digest, &digest)?;
    Ok(LayerReport {
        source: blob.description.clone(),
        digest,
        new,
        cached: false,
        convert: Some(report),
        summary: Some(summary),
    })
}

/// An index of the members of an uncompressed tar file: path -> (data offset, size).
struct TarIndex {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
    links: HashMap<String, String>,
}

impl TarIndex {
    fn scan(path: &Path) -> io::Result<TarIndex> {
        let f = File::open(path)?;
        let mut ar = tar::Archive::new(f);
        let mut members = HashMap::new();
        let mut links = HashMap::new();
        for e in ar.entries_with_seek()? {
            let e = e?;
            let name = String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./").to_string();
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(name, (e.raw_file_position(), e.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(t) = e.link_name_bytes() {
                        let t = String::from_utf8_lossy(&t).to_string();
                        let resolved = if e.header().entry_type() == tar::EntryType::Symlink {
                            let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                            normalize_str(&dir.join(&t).to_string_lossy())
                        } else {
                            normalize_str(&t)
                        };
                        links.insert(name, resolved);
                    }
                }
                _ => {}
            }
        }
        Ok(TarIndex { path: path.to_path_buf(), members, links })
    }

    fn get(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = normalize_str(name);
        for _ in 0..8 {
            if let Some(&m) = self.members.get(&name) {
                return Some(m);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, ImportError> {
        let (off, size) = self.get(name).ok_or_else(|| self.missing(name))?;
        if size > 64 << 20 {
            return Err(ImportError::BadSource(format!("{name}: metadata file too large")));
        }
        let mut r = self.open_at(off, size).map_err(|e| ImportError::io(format!("reading {name}"), e))?;
        let mut v = Vec::new();
        r.read_to_end(&mut v).map_err(|e| ImportError::io(format!("reading {name}"), e))?;
        Ok(v)
    }

    fn open_at(&self, off: u64, size: u64) -> io::Result<Box<dyn Read>> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(off))?;
        Ok(Box::new(f.take(size)))
    }

    fn missing(&self, name: &str) -> ImportError {
        ImportError::BadSource(format!("{}: no member {name}", self.path.display()))
    }
}

fn normalize_str(p: &str) -> String {
    convert::normalize(p.as_bytes()).map(|(v, _)| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default()
}

/// Where blobs of an OCI layout live: a directory, or a tar archive.
enum BlobSource {
    Dir(PathBuf),
    Tar(std::rc::Rc<TarIndex>),
}

impl BlobSource {
    fn read(&self, name: &str) -> Result<Vec<u8>, ImportError> {
        match self {
            BlobSource::Dir(d) => {
                let p = d.join(name);
                let meta = std::fs::metadata(&p).map_err(|e| ImportError::io(format!("reading {}", p.display()), e))?;
                if meta.len() > 64 << 20 {
                    return Err(ImportError::BadSource(format!("{}: metadata file too large", p.display())));
                }
                std::fs::read(&p).map_err(|e| ImportError::io(format!("reading {}", p.display()), e))
            }
            BlobSource::Tar(t) => t.read(name),
        }
    }

    fn layer(
        &self,
        name: &str,
        blob_digest: Option<Digest32>,
        diff_id: Option<Digest32>,
    ) -> Result<LayerBlob, ImportError> {
        match self {
            BlobSource::Dir(d) => {
                let p = d.join(name);
                let size =
                    std::fs::metadata(&p).map_err(|e| ImportError::io(format!("reading {}", p.display()), e))?.len();
                Ok(LayerBlob {
                    description: p.display().to_string(),
                    blob_digest,
                    diff_id,
                    size,
                    open: Box::new(move || Ok(Box::new(File::open(&p)?) as Box<dyn Read>)),
                })
            }
            BlobSource::Tar(t) => {
                let (off, size) = t.get(name).ok_or_else(|| t.missing(name))?;
                let t = t.clone();
                Ok(LayerBlob {
                    description: format!("{}:{name}", t.path.display()),
                    blob_digest,
                    diff_id,
                    size,
                    open: Box::new(move || t.open_at(off, size)),
                })
            }
        }
    }
}

fn json(bytes: &[u8], what: &str) -> Result<serde_json::Value, ImportError> {
    serde_json::from_slice(bytes).map_err(|e| ImportError::BadSource(format!("{what}: invalid JSON: {e}")))
}

fn blob_name(digest: &str) -> Result<(String, Digest32), ImportError> {
    let d = parse_digest(digest).filter(|_| digest.starts_with("sha256:"));
    let d = d.ok_or_else(|| ImportError::BadSource(format!("unsupported digest {digest:?} (sha256 only)")))?;
    Ok((format!("blobs/sha256/{}", hex::encode(d)), d))
}

/// Reads an OCI image layout (index.json, manifests, config) and lists its layers.
fn oci_layers(src: &BlobSource, want_ref: Option<&str>) -> Result<(Vec<LayerBlob>, serde_json::Value), ImportError> {
    let index = json(&src.read("index.json")?, "index.json")?;
    let mut manifest_desc = pick_manifest(&index, want_ref)?;
    // Follow nested indexes (multi-platform images) to a manifest.
    for _ in 0..4 {
        let mt = manifest_desc["mediaType"].as_str().unwrap_or_default();
        if !mt.contains("index") && !mt.contains("manifest.list") {
            break;
        }
        let (name, _) = blob_name(manifest_desc["digest"].as_str().unwrap_or_default())?;
        let nested = json(&src.read(&name)?, &name)?;
        manifest_desc = pick_manifest(&nested, None)?;
    }
    let (mname, _) = blob_name(manifest_desc["digest"].as_str().unwrap_or_default())?;
    let manifest = json(&src.read(&mname)?, &mname)?;
    let (cname, _) = blob_name(manifest["config"]["digest"].as_str().unwrap_or_default())?;
    let config = json(&src.read(&cname)?, &cname)?;
    let diff_ids: Vec<Option<Digest32>> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().map(|d| d.as_str().and_then(parse_digest)).collect())
        .unwrap_or_default();
    let layers = manifest["layers"].as_array().ok_or_else(|| ImportError::BadSource(format!("{mname}: no layers")))?;
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let mt = l["mediaType"].as_str().unwrap_or_default();
        if mt.contains("foreign") || mt.contains("nondistributable") {
            return Err(ImportError::BadSource(format!(
                "layer {i}: non-distributable layer {mt} is not in the layout"
            )));
        }
        let (name, d) = blob_name(l["digest"].as_str().unwrap_or_default())?;
        out.push(src.layer(&name, Some(d), diff_ids.get(i).copied().flatten())?);
    }
    Ok((out, config))
}

fn pick_manifest(index: &serde_json::Value, want_ref: Option<&str>) -> Result<serde_json::Value, ImportError> {
    let ms = index["manifests"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ImportError::BadSource("index.json lists no manifests".into()))?;
    if let Some(r) = want_ref
        && let Some(m) = ms.iter().find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(r))
    {
        return Ok(m.clone());
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let native = ms.iter().find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch);
    Ok(native.unwrap_or(&ms[0]).clone())
}

/// Reads a `docker save` archive's manifest.json and lists the layers of its first image.
fn docker_layers(t: &std::rc::Rc<TarIndex>) -> Result<(Vec<LayerBlob>, serde_json::Value), ImportError> {
    let manifest = json(&t.read("manifest.json")?, "manifest.json")?;
    let first = manifest
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| ImportError::BadSource("manifest.json lists no image".into()))?;
    let cname = first["Config"].as_str().ok_or_else(|| ImportError::BadSource("manifest.json: no Config".into()))?;
    let config = json(&t.read(cname)?, cname)?;
    let diff_ids: Vec<Option<Digest32>> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().map(|d| d.as_str().and_then(parse_digest)).collect())
        .unwrap_or_default();
    let layers = first["Layers"].as_array().ok_or_else(|| ImportError::BadSource("manifest.json: no Layers".into()))?;
    let src = BlobSource::Tar(t.clone());
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = l.as_str().ok_or_else(|| ImportError::BadSource("manifest.json: bad layer entry".into()))?;
        let blob = name.strip_prefix("blobs/sha256/").and_then(parse_digest);
        out.push(src.layer(name, blob, diff_ids.get(i).copied().flatten())?);
    }
    Ok((out, config))
}

/// Imports `source` into `store` as image `tag`.
pub fn import(
    store: &Store,
    source: &Path,
    tag: &str,
    opts: &ImportOptions,
    pb: &ProgressBar,
) -> Result<ImportReport, ImportError> {
    let image_ref = ImageRef::parse(tag).map_err(crate::StoreError::from)?;
    let meta = std::fs::metadata(source).map_err(|e| ImportError::io(format!("reading {}", source.display()), e))?;
    let (blobs, config, kind) = if meta.is_dir() {
        if !source.join("oci-layout").is_file() {
            return Err(ImportError::BadSource(format!(
                "{} is a directory but not an OCI image layout (no oci-layout file)",
                source.display()
            )));
        }
        let (b, c) = oci_layers(&BlobSource::Dir(source.to_path_buf()), Some(&image_ref.tag))?;
        (b, Some(c), "OCI layout")
    } else {
        let mut f = File::open(source).map_err(|e| ImportError::io(format!("opening {}", source.display()), e))?;
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic).map_err(|e| ImportError::io(format!("reading {}", source.display()), e))?;
        let compressed = magic[..n].starts_with(&[0x1f, 0x8b]) || magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        let index = if compressed { None } else { TarIndex::scan(source).ok().map(std::rc::Rc::new) };
        match index {
            Some(t) if t.get("manifest.json").is_some() => {
                let (b, c) = docker_layers(&t)?;
                (b, Some(c), "docker save archive")
            }
            Some(t) if t.get("oci-layout").is_some() && t.get("index.json").is_some() => {
                let (b, c) = oci_layers(&BlobSource::Tar(t), Some(&image_ref.tag))?;
                (b, Some(c), "OCI archive")
            }
            _ => {
                let p = source.to_path_buf();
                let blob = LayerBlob {
                    description: source.display().to_string(),
                    blob_digest: None,
                    diff_id: None,
                    size: meta.len(),
                    open: Box::new(move || Ok(Box::new(File::open(&p)?) as Box<dyn Read>)),
                };
                (vec![blob], None, "root filesystem tarball")
            }
        }
    };
    pb.set_length(blobs.iter().map(|b| b.size).sum());
    pb.set_message(format!("{kind}, {} layer(s)", blobs.len()));
    store.write_or_collect(|| import_locked(store, source, &image_ref, &blobs, config.as_ref(), opts, pb))
}

fn import_locked(
    store: &Store,
    source: &Path,
    image_ref: &ImageRef,
    blobs: &[LayerBlob],
    config: Option<&serde_json::Value>,
    opts: &ImportOptions,
    pb: &ProgressBar,
) -> Result<ImportReport, ImportError> {
    let mut layers = Vec::new();
    for blob in blobs {
        layers.push(convert_into_store(store, blob, opts, pb)?);
    }
    let image = Image {
        name: image_ref.to_string(),
        layers: layers.iter().map(|l| digest_string(&l.digest)).collect(),
        diff_ids: layers
            .iter()
            .map(|l| l.convert.as_ref().map(|c| digest_string(&c.diff_id)))
            .zip(blobs.iter().map(|b| b.diff_id))
            .map(|(c, d)| c.or(d.map(|d| digest_string(&d))).unwrap_or_default())
            .collect(),
        config: config.map(ImageConfig::from_oci).unwrap_or_else(ImageConfig::rootfs_default),
        created: config.and_then(|c| c["created"].as_str().map(String::from)),
        source: std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf()).display().to_string(),
        comment: None,
    };
    if opts.sync {
        store.sync()?;
    }
    store.save_image(&image)?;
    Ok(ImportReport { image, layers })
}
