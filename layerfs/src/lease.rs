//! Leases: a mount tells the store which layers it uses, so that garbage collection
//! (`layertool rmi`/`gc`) never deletes a layer or an object that a live mount still needs.
//!
//! A mount that uses packed layers of a store holds the store's lock shared while it resolves and
//! opens them (garbage collection holds it exclusive), then writes `ROOT/leases/<pid>` (one layer
//! digest per line) before releasing the lock. The file goes away when the daemon exits; a lease
//! whose process is gone is stale and ignored (and removed) by garbage collection.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::options::{LayerSpec, MountConfig};

/// The stores a mount uses, and which of their layers.
#[derive(Debug, Default)]
pub struct Leases {
    /// Store root -> layer digests (hex).
    stores: BTreeMap<PathBuf, Vec<String>>,
    locks: Vec<File>,
    written: Vec<PathBuf>,
}

/// The store a packed layer file belongs to: `ROOT/layers/HEX.lpk` with `ROOT/objects` beside.
fn store_of(layer: &Path) -> Option<(PathBuf, String)> {
    let dir = layer.parent()?;
    if dir.file_name()? != "layers" {
        return None;
    }
    let root = dir.parent()?;
    let hex = layer.file_stem()?.to_str()?.to_string();
    (hex.len() == 64 && root.join("objects").is_dir()).then(|| (root.to_path_buf(), hex))
}

impl Leases {
    /// Takes the shared lock of every store `cfg` uses (call before opening the layers).
    pub fn lock(cfg: &MountConfig) -> std::io::Result<Leases> {
        let mut roots: Vec<PathBuf> = Vec::new();
        for spec in &cfg.lowers {
            match spec {
                LayerSpec::Image(_) => roots.push(cfg.store.clone().unwrap_or_else(crate::store::default_root)),
                LayerSpec::Packed(p) => {
                    if let Some((root, _)) = store_of(p) {
                        roots.push(root);
                    }
                }
                LayerSpec::Dir(_) => {}
            }
        }
        roots.sort();
        roots.dedup();
        let mut locks = Vec::new();
        for root in &roots {
            // A store we cannot lock (read-only, not ours) is used without a lease.
            let Ok(f) = OpenOptions::new().create(true).truncate(false).write(true).open(root.join("lock")) else {
                continue;
            };
            f.lock_shared()?;
            locks.push(f);
        }
        Ok(Leases { stores: BTreeMap::new(), locks, written: Vec::new() })
    }

    /// Records the layer files the mount opened (the resolved packed layers).
    pub fn note(&mut self, layer: &Path) {
        if let Some((root, hex)) = store_of(layer) {
            self.stores.entry(root).or_default().push(hex);
        }
    }

    /// Writes the lease files for this process, then releases the store locks.
    pub fn publish(&mut self) -> std::io::Result<()> {
        let pid = std::process::id();
        for (root, layers) in &self.stores {
            let dir = root.join("leases");
            if fs::create_dir_all(&dir).is_err() {
                continue;
            }
            let tmp = dir.join(format!(".{pid}.tmp"));
            let dst = dir.join(pid.to_string());
            let mut f = File::create(&tmp)?;
            for l in layers {
                writeln!(f, "sha256:{l}")?;
            }
            drop(f);
            fs::rename(&tmp, &dst)?;
            self.written.push(dst);
        }
        self.locks.clear();
        Ok(())
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        for p in &self.written {
            let _ = fs::remove_file(p);
        }
    }
}
