//! The local store: packed layers by digest, content-addressed objects, image manifests.
//!
//! ```text
//! ROOT/
//!   layers/<sha256 of the .lpk>.lpk   read-only (0444) packed layers
//!   objects/<2 hex>/<62 hex>          read-only (0444) file contents named by their SHA-256
//!   images/<name:tag, %-escaped>.json image manifests (ordered layers + config)
//!   sources/<sha256 of a source blob> the layer a source blob was converted to (a cache)
//!   tmp/                              temporary files, renamed into place when complete
//!   lock                              flock: imports and mounts hold it shared, garbage collection exclusive
//!   leases/<pid>                      layers a live layerfs mount uses (kept by garbage collection)
//! ```
//!
//! Every file is written to `tmp/` and renamed into place when complete, so a killed import
//! leaves no half layer, object or manifest under its final name. Objects are published before
//! the layers that reference them and layers before the manifests that reference them, with one
//! `syncfs` before each manifest, so a manifest never names something missing after a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use format_spec::{ObjectSink, TempObject};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::image::{Image, ImageRef};

/// A 32-byte SHA-256.
pub type Digest32 = [u8; 32];

/// An open store (its directories exist).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held store lock (released on drop).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// Parses `sha256:HEX` or `HEX` into a digest.
pub fn parse_digest(s: &str) -> Option<Digest32> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// `sha256:HEX`.
pub fn digest_string(d: &Digest32) -> String {
    format!("sha256:{}", hex::encode(d))
}

impl Store {
    /// The default root: `$LAYERFS_ROOT`, else `/var/lib/layerfs` for root, else
    /// `$XDG_DATA_HOME/layerfs` (or `~/.local/share/layerfs`).
    pub fn default_root() -> PathBuf {
        layerfs::store::default_root()
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for d in ["layers", "objects", "images", "sources", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| StoreError::io(format!("creating {}", p.display()), e))?;
        }
        // All 256 object fan-out directories up front: no mkdir per object.
        for i in 0..=255u8 {
            let p = root.join("objects").join(format!("{i:02x}"));
            match fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(format!("creating {}", p.display()), e)),
            }
        }
        Ok(Store { root })
    }

    /// Opens an existing store without creating anything.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        if !root.join("layers").is_dir() {
            return Err(StoreError::NoStore(root));
        }
        Ok(Store { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_file(&self) -> Result<File, StoreError> {
        let p = self.root.join("lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| StoreError::io(format!("opening {}", p.display()), e))
    }

    fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        let f = self.lock_file()?;
        let r = if exclusive { f.lock() } else { f.lock_shared() };
        r.map_err(|e| StoreError::io("locking the store", e))?;
        Ok(StoreLock { _file: f })
    }

    /// The shared lock that writers (imports, commits) hold while they work.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(false)
    }

    /// The exclusive lock garbage collection holds.
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock(true)
    }

    /// The exclusive lock if nobody holds the store lock now (`None`: an import, a mount being
    /// set up or a garbage collection is under way).
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock>, StoreError> {
        let f = self.lock_file()?;
        match f.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io("locking the store", e)),
        }
    }

    /// Runs `work`, which publishes into the store, under the shared lock. If it fails, what it
    /// already published is referenced by no image (objects, the layers of a multi-layer image,
    /// source records): it is collected at once unless another writer holds the store (then the
    /// next `rmi`/`gc` does), so that a full disk does not stay full. `work`'s own error is what
    /// the caller gets; a failed collection leaves the rest to the next one.
    pub fn write_or_collect<T, E: From<StoreError>>(&self, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let lock = self.lock_shared()?;
        let res = work();
        drop(lock);
        if res.is_err()
            && let Ok(Some(_gc)) = self.try_lock_exclusive()
        {
            let _ = self.collect_garbage();
        }
        res
    }

    /// Path of layer `digest`.
    pub fn layer_path(&self, digest: &Digest32) -> PathBuf {
        layerfs::store::layer_path(&self.root, &hex::encode(digest))
    }

    /// Path of object `digest`.
    pub fn object_path(&self, digest: &Digest32) -> PathBuf {
        let h = hex::encode(digest);
        self.root.join("objects").join(&h[..2]).join(&h[2..])
    }

    /// The objects directory.
    pub fn objects_dir(&self) -> PathBuf {
        layerfs::store::objects_dir(&self.root)
    }

    fn image_path(&self, r: &ImageRef) -> PathBuf {
        layerfs::store::image_path(&self.root, r)
    }

    /// A new temporary file in `tmp/` (mode 0644 until published).
    pub fn temp_file(&self, prefix: &str) -> Result<(File, PathBuf), StoreError> {
        let dir = self.root.join("tmp");
        let t = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(fs::Permissions::from_mode(0o644))
            .tempfile_in(&dir)
            .map_err(|e| StoreError::io(format!("creating a temporary file in {}", dir.display()), e))?;
        let (f, p) = t.keep().map_err(|e| StoreError::io("keeping a temporary file", e.error))?;
        Ok((f, p))
    }

    /// Publishes temporary file `tmp` as layer `digest` (read-only). If the layer exists
    /// already, the temporary file is removed. Returns true when the layer is new.
    pub fn publish_layer(&self, tmp: &Path, digest: &Digest32) -> Result<bool, StoreError> {
        let dst = self.layer_path(digest);
        publish(tmp, &dst)
    }

    /// Records that source blob `source` converts to layer `layer`.
    pub fn remember_source(&self, source: &Digest32, layer: &Digest32) -> Result<(), StoreError> {
        let dst = self.root.join("sources").join(hex::encode(source));
        self.write_atomic(&dst, digest_string(layer).as_bytes())
    }

    /// The layer a source blob was converted to before, if that layer is still stored.
    pub fn source_layer(&self, source: &Digest32) -> Option<Digest32> {
        let p = self.root.join("sources").join(hex::encode(source));
        let s = fs::read_to_string(p).ok()?;
        let d = parse_digest(s.trim())?;
        self.layer_path(&d).is_file().then_some(d)
    }

    /// Writes `bytes` to `dst` atomically (temp file, fsync, rename).
    pub fn write_atomic(&self, dst: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let (mut f, tmp) = self.temp_file(".write-")?;
        let r = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io(format!("writing {}", dst.display()), e));
        }
        fs::rename(&tmp, dst).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::io(format!("renaming into {}", dst.display()), e)
        })
    }

    /// Flushes everything written to the store's filesystem.
    pub fn sync(&self) -> Result<(), StoreError> {
        let d = File::open(&self.root).map_err(|e| StoreError::io("opening the store root", e))?;
        nix::unistd::syncfs(&d).map_err(|e| StoreError::io("syncfs on the store", e.into()))
    }

    /// Saves image manifest `image` under its name (replacing an older one). Callers that wrote
    /// layers or objects for it call [`Store::sync`] first.
    pub fn save_image(&self, image: &Image) -> Result<(), StoreError> {
        let r = ImageRef::parse(&image.name)?;
        let json = serde_json::to_vec_pretty(image).map_err(|e| StoreError::Json(image.name.clone(), e.to_string()))?;
        self.write_atomic(&self.image_path(&r), &json)
    }

    /// Loads image `name` (`NAME[:TAG]`, or a unique prefix of an image id).
    pub fn image(&self, name: &str) -> Result<Image, StoreError> {
        let r = ImageRef::parse(name)?;
        let p = self.image_path(&r);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Json(p.display().to_string(), e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // An image id (or a unique prefix of one).
                let want = name.strip_prefix("sha256:").unwrap_or(name);
                if want.len() >= 4 && want.bytes().all(|c| c.is_ascii_hexdigit()) {
                    let matches: Vec<Image> =
                        self.images()?.into_iter().filter(|i| i.id_hex().starts_with(want)).collect();
                    if matches.len() == 1 {
                        return Ok(matches.into_iter().next().expect("one match"));
                    }
                }
                Err(StoreError::NoSuchImage(r.to_string()))
            }
            Err(e) => Err(StoreError::io(format!("reading {}", p.display()), e)),
        }
    }

    /// All images, sorted by name.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))? {
            let ent = ent.map_err(|e| StoreError::io("listing images", e))?;
            let p = ent.path();
            if p.extension().is_some_and(|x| x == "json") {
                let b = fs::read(&p).map_err(|e| StoreError::io(format!("reading {}", p.display()), e))?;
                let img: Image =
                    serde_json::from_slice(&b).map_err(|e| StoreError::Json(p.display().to_string(), e.to_string()))?;
                out.push(img);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes image `name`'s manifest (not its layers: see [`Store::collect_garbage`]).
    pub fn remove_image(&self, name: &str) -> Result<Image, StoreError> {
        let img = self.image(name)?;
        let r = ImageRef::parse(&img.name)?;
        fs::remove_file(self.image_path(&r)).map_err(|e| StoreError::io(format!("removing image {}", img.name), e))?;
        Ok(img)
    }

    /// Removes every layer, object and source record that no image references. The caller holds
    /// the exclusive lock, so no import is running.
    pub fn collect_garbage(&self) -> Result<GcStats, StoreError> {
        let mut stats = GcStats::default();
        let images = self.images()?;
        let mut live_layers = std::collections::HashSet::new();
        for img in &images {
            for l in &img.layers {
                live_layers.insert(parse_digest(l).ok_or_else(|| StoreError::BadDigest(l.clone()))?);
            }
        }
        // Layers that live mounts use (their leases), even if no image names them any more.
        if let Ok(entries) = fs::read_dir(self.root.join("leases")) {
            for ent in entries.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let Ok(pid) = name.parse::<u32>() else { continue };
                // A layerfs daemon: the `layerfs` program, or one a launcher forked (named `layerfs`
                // too); a pid reused by anything else is no lease.
                let alive = fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_ascii_end() == b"layerfs");
                if !alive {
                    let _ = fs::remove_file(ent.path());
                    continue;
                }
                for line in fs::read_to_string(ent.path()).unwrap_or_default().lines() {
                    if let Some(d) = parse_digest(line.trim()) {
                        stats.leased += live_layers.insert(d) as u64;
                    }
                }
            }
        }
        let mut live_objects = std::collections::HashSet::new();
        for d in &live_layers {
            let layer = crate::open_layer(&self.layer_path(d)).map_err(|e| StoreError::Layer(hex::encode(d), e))?;
            for (_, obj) in layer.external_files().map_err(|e| StoreError::Format(hex::encode(d), e))? {
                live_objects.insert(obj);
            }
        }
        let layers = self.root.join("layers");
        for ent in fs::read_dir(&layers).map_err(|e| StoreError::io("listing layers", e))? {
            let ent = ent.map_err(|e| StoreError::io("listing layers", e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            let Some(d) = name.strip_suffix(".lpk").and_then(parse_digest) else { continue };
            if !live_layers.contains(&d) {
                stats.bytes += ent.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(ent.path()).map_err(|e| StoreError::io(format!("removing layer {name}"), e))?;
                stats.layers += 1;
            }
        }
        let sources = self.root.join("sources");
        for ent in fs::read_dir(&sources).map_err(|e| StoreError::io("listing sources", e))? {
            let ent = ent.map_err(|e| StoreError::io("listing sources", e))?;
            let keep = fs::read_to_string(ent.path())
                .ok()
                .and_then(|s| parse_digest(s.trim()))
                .is_some_and(|d| live_layers.contains(&d));
            if !keep {
                let _ = fs::remove_file(ent.path());
            }
        }
        let objects = self.objects_dir();
        for sub in fs::read_dir(&objects).map_err(|e| StoreError::io("listing objects", e))? {
            let sub = sub.map_err(|e| StoreError::io("listing objects", e))?;
            let prefix = sub.file_name().to_string_lossy().into_owned();
            let Ok(entries) = fs::read_dir(sub.path()) else { continue };
            for ent in entries {
                let ent = ent.map_err(|e| StoreError::io("listing objects", e))?;
                let full = format!("{prefix}{}", ent.file_name().to_string_lossy());
                let live = parse_digest(&full).is_some_and(|d| live_objects.contains(&d));
                if !live {
                    stats.bytes += ent.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(ent.path()).map_err(|e| StoreError::io(format!("removing object {full}"), e))?;
                    stats.objects += 1;
                }
            }
        }
        // Leftovers of killed imports.
        if let Ok(entries) = fs::read_dir(self.root.join("tmp")) {
            for ent in entries.flatten() {
                let _ = fs::remove_file(ent.path());
            }
        }
        Ok(stats)
    }

    /// An object sink writing into this store.
    pub fn object_sink(&self) -> StoreObjects<'_> {
        StoreObjects { store: self }
    }
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcStats {
    /// Layers removed.
    pub layers: u64,
    /// Objects removed.
    pub objects: u64,
    /// Bytes freed (apparent sizes).
    pub bytes: u64,
    /// Layers kept only because a live mount uses them.
    pub leased: u64,
}

/// Renames `tmp` to `dst` read-only, unless `dst` exists (then `tmp` is removed). True when new.
fn publish(tmp: &Path, dst: &Path) -> Result<bool, StoreError> {
    let _ = fs::set_permissions(tmp, fs::Permissions::from_mode(0o444));
    if dst.exists() {
        let _ = fs::remove_file(tmp);
        return Ok(false);
    }
    fs::rename(tmp, dst).map_err(|e| {
        let _ = fs::remove_file(tmp);
        StoreError::io(format!("renaming into {}", dst.display()), e)
    })?;
    Ok(true)
}

/// [`ObjectSink`] over a store: each object is written to an unnamed `O_TMPFILE` (mode 0444) in
/// `objects/` and linked to `objects/ab/cdef...` when complete, so a killed import never leaves a
/// partial object under a name (and nothing to clean up).
pub struct StoreObjects<'a> {
    store: &'a Store,
}

impl ObjectSink for StoreObjects<'_> {
    fn temp(&mut self) -> io::Result<TempObject> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o444)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(self.store.objects_dir())?;
        Ok(TempObject { file, path: None })
    }

    fn publish(&mut self, tmp: TempObject, digest: &[u8; 32], _size: u64) -> io::Result<()> {
        let dst = self.store.object_path(digest);
        let src = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&tmp.file));
        match nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            src.as_str(),
            nix::fcntl::AT_FDCWD,
            &dst,
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        ) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(io::Error::other(format!("linking object {}: {e}", dst.display()))),
        }
    }

    fn discard(&mut self, tmp: TempObject) {
        drop(tmp.file);
    }
}

/// SHA-256 of a whole file.
pub fn sha256_file(path: &Path) -> io::Result<Digest32> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Opens `path` for reading without following a symlink in its last component.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}
