//! The one owner of memory mappings of packed layer files.
//!
//! Contract: a packed layer is mapped read-only, once per process, and the mapping lives as long as
//! the [`Mapping`]. The store keeps layer files read-only (mode 0444, written once by temp file +
//! rename, never modified in place), so the file is never truncated while mapped. A file that
//! someone else could write is refused: a truncation under a live mapping would turn reads into
//! SIGBUS. Everyone else holds byte offsets into the mapping, never raw pointers.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A read-only mapping of a whole file.
#[derive(Debug)]
pub struct Mapping {
    map: Option<memmap2::Mmap>,
    len: u64,
}

impl Mapping {
    /// Maps `path` read-only. Refuses files writable by group or others, or owned by another
    /// user than the caller (or root), since those could change under the mapping.
    pub fn open(path: &Path) -> io::Result<Mapping> {
        let file = File::open(path)?;
        Self::from_file(&file)
    }

    /// Maps an open file read-only (see [`Mapping::open`] for the checks).
    pub fn from_file(file: &File) -> io::Result<Mapping> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.mode() & 0o022 != 0 || (meta.uid() != euid && meta.uid() != 0) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "layer file is writable by others: refusing to map it (it could be truncated under the mapping)",
            ));
        }
        let len = meta.len();
        if len == 0 {
            return Ok(Mapping { map: None, len });
        }
        // SAFETY: the mapping is read-only and private to this process; the file is checked above
        // to be writable only by its owner (root or us) and the store never modifies layer files
        // after the rename that publishes them, so the bytes cannot change or shrink under us.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        Ok(Mapping { map: Some(map), len })
    }

    /// Advises the kernel that `range` will be read soon (best effort).
    pub fn will_need(&self, offset: usize, len: usize) {
        if let Some(map) = &self.map {
            let _ = map.advise_range(memmap2::Advice::WillNeed, offset, len.min(map.len().saturating_sub(offset)));
        }
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
