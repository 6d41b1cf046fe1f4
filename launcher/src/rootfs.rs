//! Where a container's root filesystem comes from: the seam between the launcher and the store.
//!
//! Today a plain directory ([`RootFsSpec::Dir`]). Tomorrow a layerfs mount ([`RootFsSpec::Layerfs`]): the
//! monitor runs `layerfs -o lowerdir=...,upperdir=...,workdir=... MOUNTPOINT` in the container's state
//! directory before the container is cloned (so the FUSE server lives outside the container's pid namespace
//! and cgroup, and stopping or OOM-killing the container never kills its filesystem), and unmounts it after
//! the container ended. The container sees the mount through its rslave root, so the host-side unmount
//! propagates.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to obtain the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootFsSpec {
    /// A directory used as it is (`--rootfs DIR`).
    Dir { path: PathBuf },
    /// A layerfs mount of read-only lower layers (topmost first) with upper and work directories in the
    /// container's state directory.
    Layerfs { program: PathBuf, lowerdirs: Vec<PathBuf> },
}

/// A root filesystem ready to be pivoted into; [`PreparedRoot::release`] undoes what `prepare` did.
#[derive(Debug)]
pub struct PreparedRoot {
    /// The directory the container's init bind-mounts and pivots into.
    pub path: PathBuf,
    /// A mount we made and must unmount.
    mounted: Option<PathBuf>,
}

impl RootFsSpec {
    /// Checks the spec early (in the CLI) so that errors come before anything is created.
    pub fn validate(&self) -> Result<()> {
        match self {
            RootFsSpec::Dir { path } => {
                let md =
                    std::fs::metadata(path).map_err(|e| Error::Rootfs { path: path.clone(), reason: e.to_string() })?;
                if !md.is_dir() {
                    return Err(Error::Rootfs { path: path.clone(), reason: "not a directory".into() });
                }
                if !path.is_absolute() {
                    return Err(Error::Rootfs { path: path.clone(), reason: "must be absolute".into() });
                }
                Ok(())
            }
            RootFsSpec::Layerfs { lowerdirs, .. } if lowerdirs.is_empty() => {
                Err(Error::Rootfs { path: PathBuf::new(), reason: "layerfs needs at least one lower directory".into() })
            }
            RootFsSpec::Layerfs { .. } => Ok(()),
        }
    }

    /// Makes the root filesystem available; `state_dir` is the container's state directory.
    pub fn prepare(&self, state_dir: &Path) -> Result<PreparedRoot> {
        match self {
            RootFsSpec::Dir { path } => Ok(PreparedRoot { path: path.clone(), mounted: None }),
            RootFsSpec::Layerfs { program, lowerdirs } => {
                let upper = state_dir.join("upper");
                let work = state_dir.join("work");
                let merged = state_dir.join("merged");
                for d in [&upper, &work, &merged] {
                    std::fs::create_dir_all(d).map_err(|e| Error::io("create layerfs directories", e))?;
                }
                let lower: Vec<String> = lowerdirs.iter().map(|p| p.display().to_string()).collect();
                let opts =
                    format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
                let out = Command::new(program)
                    .arg("-o")
                    .arg(&opts)
                    .arg(&merged)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| Error::Rootfs { path: program.clone(), reason: format!("spawn: {e}") })?;
                if !out.status.success() {
                    return Err(Error::Rootfs {
                        path: merged,
                        reason: format!(
                            "{} failed ({}): {}",
                            program.display(),
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    });
                }
                Ok(PreparedRoot { path: merged.clone(), mounted: Some(merged) })
            }
        }
    }
}

impl PreparedRoot {
    /// Unmounts what `prepare` mounted (lazily: the FUSE server then exits by itself).
    pub fn release(self) -> Result<()> {
        if let Some(m) = self.mounted {
            match nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(Error::sys("unmount the root filesystem", e)),
            }
        }
        Ok(())
    }

    /// A root prepared earlier by another process (the monitor recovers it from the spec on cleanup).
    pub fn recover(spec: &RootFsSpec, state_dir: &Path) -> PreparedRoot {
        match spec {
            RootFsSpec::Dir { path } => PreparedRoot { path: path.clone(), mounted: None },
            RootFsSpec::Layerfs { .. } => {
                let m = state_dir.join("merged");
                PreparedRoot { path: m.clone(), mounted: Some(m) }
            }
        }
    }
}
