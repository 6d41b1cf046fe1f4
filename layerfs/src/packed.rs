//! The packed lower: a `.lpk` layer (format-spec) served straight from its one read-only mapping.
//!
//! Lookups are binary searches in the mapping, `getattr` decodes one 64-byte record, readdir walks
//! the sorted entry run, and inline data is handed out as borrowed slices of the mapping (no copy
//! until the FUSE reply). Files whose data is an external object (`INODE_EXTERNAL`) have a backing
//! file of their own in the store's `objects/` directory: the core hands it to the kernel for FUSE
//! passthrough (one page cache for every mount) and to `copy_file_range` for copy-up.
//!
//! Bad bytes in the layer never panic: every `FormatError` becomes `EIO` (logged once with what and
//! where), like a disk error.

use std::borrow::Cow;
use std::ffi::CString;
use std::fs::File;
use std::ops::{ControlFlow, Range};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use format_spec::{FormatError, Inode, Kind, Layer, Segment};

use crate::error::{Errno, Result, SetupError};
use crate::lower::{FileKind, Lower, LowerAttr, LowerDirEntry, LowerIno, LowerLookup, Timespec};
use crate::mapping::Mapping;

/// A packed layer file as a lower layer.
pub struct PackedLower {
    layer: Layer<Mapping>,
    path: PathBuf,
    /// The store's `objects/` directory, opened once (external data is opened relative to it).
    objects: Option<OwnedFd>,
    logged: AtomicBool,
}

impl std::fmt::Debug for PackedLower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLower").field("path", &self.path).finish_non_exhaustive()
    }
}

fn kind(k: Kind) -> FileKind {
    match k {
        Kind::File => FileKind::Regular,
        Kind::Dir => FileKind::Directory,
        Kind::Symlink => FileKind::Symlink,
        Kind::CharDev => FileKind::CharDevice,
        Kind::BlockDev => FileKind::BlockDevice,
        Kind::Fifo => FileKind::Fifo,
        // Dirents of kind whiteout never reach here (handled by the callers).
        Kind::Socket | Kind::Whiteout => FileKind::Socket,
    }
}

fn ts(t: format_spec::Timestamp) -> Timespec {
    Timespec { sec: t.sec, nsec: t.nsec }
}

impl PackedLower {
    /// Maps and opens the packed layer at `path` (O(1): the header and section bounds are
    /// checked, nothing is walked). `objects` is the store's objects directory, needed when the
    /// layer keeps data in external objects (the default: the `objects/` directory beside the
    /// layer's `layers/` directory, when it exists).
    pub fn open(path: &Path, objects: Option<&Path>) -> std::result::Result<PackedLower, SetupError> {
        let open_err =
            |what: &'static str, source: std::io::Error| SetupError::Open { what, path: path.to_path_buf(), source };
        let map = Mapping::open(path).map_err(|e| open_err("packed layer", e))?;
        let layer = Layer::open(map).map_err(|e| open_err("packed layer", std::io::Error::other(e.to_string())))?;
        let external = layer.header().incompat & format_spec::raw::INCOMPAT_EXTERNAL_DATA != 0;
        let default_objects = path.parent().and_then(|p| p.parent()).map(|p| p.join("objects"));
        let objects_dir = objects.map(Path::to_path_buf).or(default_objects.filter(|p| p.is_dir()));
        let objects = match (&objects_dir, external) {
            (Some(dir), _) => {
                let f = File::open(dir).map_err(|e| open_err("objects directory", e))?;
                if !f.metadata().map_err(|e| open_err("objects directory", e))?.is_dir() {
                    return Err(open_err("objects directory", std::io::Error::from_raw_os_error(libc::ENOTDIR)));
                }
                Some(OwnedFd::from(f))
            }
            (None, true) => {
                return Err(open_err(
                    "packed layer with external data (no objects directory: pass objects=DIR)",
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                ));
            }
            (None, false) => None,
        };
        Ok(PackedLower { layer, path: path.to_path_buf(), objects, logged: AtomicBool::new(false) })
    }

    fn corrupt(&self, e: FormatError) -> Errno {
        if !self.logged.swap(true, Ordering::Relaxed) {
            eprintln!("layerfs: {}: corrupt packed layer: {e}", self.path.display());
        }
        Errno::EIO
    }

    fn inode(&self, ino: LowerIno) -> Result<Inode> {
        let n = u32::try_from(ino.0).map_err(|_| Errno::ESTALE)?;
        self.layer.inode(n).map_err(|e| self.corrupt(e))
    }

    fn object(&self, inode: &Inode) -> Result<File> {
        let digest = self.layer.digest(inode).map_err(|e| self.corrupt(e))?.ok_or(Errno::EIO)?;
        let hex = format_spec::hex(digest);
        let rel = CString::new(format!("{}/{}", &hex[..2], &hex[2..])).expect("hex has no NUL");
        let dir = self.objects.as_ref().ok_or(Errno::EIO)?;
        // Beneath the objects directory, no symlink followed.
        let fd = crate::sys::openat_beneath(dir.as_fd(), &rel, libc::O_RDONLY).map_err(|e| {
            eprintln!("layerfs: {}: object {hex} for inode {}: {e}", self.path.display(), inode.ino);
            Errno::EIO
        })?;
        let file = File::from(fd);
        let len = file.metadata().map_err(Errno::from)?.len();
        if len != inode.size {
            eprintln!(
                "layerfs: {}: object {hex} has {len} bytes, inode {} says {}",
                self.path.display(),
                inode.ino,
                inode.size
            );
            return Err(Errno::EIO);
        }
        Ok(file)
    }
}

impl Lower for PackedLower {
    fn root(&self) -> LowerIno {
        LowerIno(self.layer.root() as u64)
    }

    /// Metadata is read at random by lookups: ask for all of it (it is small) in one go.
    fn prefetch(&self) {
        let meta_start = self.layer.header().data_end as usize;
        let len = self.layer.bytes().len();
        self.layer.source().will_need(meta_start, len.saturating_sub(meta_start));
    }

    fn lookup(&self, dir: LowerIno, name: &[u8]) -> Result<LowerLookup> {
        let d = self.inode(dir)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        match self.layer.lookup(&d, name).map_err(|e| self.corrupt(e))? {
            None => Ok(LowerLookup::NotFound),
            Some(e) if e.kind == Kind::Whiteout => Ok(LowerLookup::Whiteout),
            Some(e) => Ok(LowerLookup::Found { ino: LowerIno(e.ino as u64), kind: kind(e.kind) }),
        }
    }

    fn getattr(&self, ino: LowerIno) -> Result<LowerAttr> {
        let i = self.inode(ino)?;
        let (atime, ctime) = self.layer.times(&i);
        let rdev = i.rdev().map(|(ma, mi)| libc::makedev(ma, mi)).unwrap_or(0);
        let size = if i.is_dir() { 4096 } else { i.size };
        let blocks = if i.is_dir() { 8 } else { i.allocated_bytes() / 512 };
        Ok(LowerAttr {
            mode: i.mode,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size,
            blocks,
            rdev,
            atime: ts(atime),
            mtime: ts(i.mtime),
            ctime: ts(ctime),
        })
    }

    fn is_opaque(&self, dir: LowerIno) -> Result<bool> {
        Ok(self.inode(dir)?.is_opaque())
    }

    fn readdir(&self, dir: LowerIno, f: &mut dyn FnMut(&[u8], LowerDirEntry) -> ControlFlow<()>) -> Result<()> {
        let d = self.inode(dir)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        for e in self.layer.read_dir(&d, 0).map_err(|e| self.corrupt(e))? {
            let e = e.map_err(|e| self.corrupt(e))?;
            let ent = if e.kind == Kind::Whiteout {
                LowerDirEntry::Whiteout
            } else {
                LowerDirEntry::Entry { ino: LowerIno(e.ino as u64), kind: kind(e.kind) }
            };
            if f(e.name, ent).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn finds_names_by_inode(&self) -> bool {
        true
    }

    fn ino_bound(&self) -> Option<u64> {
        Some(u64::from(self.layer.inode_count()) + 1)
    }

    /// The writers number a directory's children consecutively in name order (SPEC.md, a hint
    /// readers may use but not trust): the entry is looked for from the index that numbering
    /// gives, a few entries on (whiteouts and hard-link aliases before it push it later), and
    /// only then by scanning the whole directory. Every answer is checked against the entry.
    fn name_of(&self, dir: LowerIno, ino: LowerIno) -> Result<Option<Vec<u8>>> {
        const AHEAD: usize = 64;
        let d = self.inode(dir)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let corrupt = |e| self.corrupt(e);
        let first = self.layer.read_dir(&d, 0).map_err(corrupt)?.enumerate().find_map(|(i, e)| match e {
            Ok(e) if e.ino != 0 => Some(Ok((i, u64::from(e.ino)))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        });
        let Some((idx0, ino0)) = first.transpose().map_err(corrupt)? else { return Ok(None) };
        // The entry naming `ino` among at most `limit` entries from index `start`.
        let find = |start: u32, limit: usize| -> Result<Option<Vec<u8>>> {
            for e in self.layer.read_dir(&d, start).map_err(corrupt)?.take(limit) {
                let e = e.map_err(corrupt)?;
                if u64::from(e.ino) == ino.0 {
                    return Ok(Some(e.name.to_vec()));
                }
            }
            Ok(None)
        };
        if let Some(guess) = ino.0.checked_sub(ino0).and_then(|d| u32::try_from(idx0 as u64 + d).ok())
            && let Some(name) = find(guess, AHEAD)?
        {
            return Ok(Some(name));
        }
        find(0, usize::MAX)
    }

    fn readlink(&self, ino: LowerIno) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind() != Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        self.layer.readlink(&i).map(<[u8]>::to_vec).map_err(|e| self.corrupt(e))
    }

    fn listxattr(&self, ino: LowerIno) -> Result<Vec<Vec<u8>>> {
        let i = self.inode(ino)?;
        Ok(self.layer.xattrs(&i).map_err(|e| self.corrupt(e))?.into_iter().map(|(k, _)| k.to_vec()).collect())
    }

    fn getxattr(&self, ino: LowerIno, name: &[u8]) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        match self.layer.xattr(&i, name).map_err(|e| self.corrupt(e))? {
            Some(v) => Ok(v.to_vec()),
            None => Err(Errno::ENODATA),
        }
    }

    fn read(&self, ino: LowerIno, offset: u64, size: u32) -> Result<Cow<'_, [u8]>> {
        let i = self.inode(ino)?;
        if i.kind() != Kind::File {
            return Err(if i.is_dir() { Errno::EISDIR } else { Errno::EINVAL });
        }
        if i.is_external() {
            let f = self.object(&i)?;
            let want = (size as u64).min(i.size.saturating_sub(offset)) as usize;
            let mut buf = vec![0u8; want];
            let mut done = 0;
            while done < want {
                let n = std::os::unix::fs::FileExt::read_at(&f, &mut buf[done..], offset + done as u64)
                    .map_err(Errno::from)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            buf.truncate(done);
            return Ok(Cow::Owned(buf));
        }
        let segs = self.layer.read_segments(&i, offset, size as u64).map_err(|e| self.corrupt(e))?;
        match segs.as_slice() {
            [] => Ok(Cow::Borrowed(&[])),
            [Segment::Data(d)] => Ok(Cow::Borrowed(d)),
            _ => {
                let mut v = Vec::with_capacity(size as usize);
                for s in segs {
                    match s {
                        Segment::Data(d) => v.extend_from_slice(d),
                        Segment::Zeros(z) => v.resize(v.len() + z as usize, 0),
                    }
                }
                Ok(Cow::Owned(v))
            }
        }
    }

    fn open_backing(&self, ino: LowerIno) -> Result<Option<File>> {
        let i = self.inode(ino)?;
        if i.kind() == Kind::File && i.is_external() { self.object(&i).map(Some) } else { Ok(None) }
    }

    fn has_backing(&self, ino: LowerIno) -> Result<bool> {
        let i = self.inode(ino)?;
        Ok(i.kind() == Kind::File && i.is_external())
    }

    fn next_data(&self, ino: LowerIno, offset: u64) -> Result<Option<Range<u64>>> {
        let i = self.inode(ino)?;
        if i.is_external() {
            // The core asks the backing file (SEEK_DATA) for external data.
            return Ok((offset < i.size).then_some(offset..i.size));
        }
        let exts = self.layer.extents(&i).map_err(|e| self.corrupt(e))?;
        let first = exts.partition_point(|e| e.file_off.get() + e.len.get() as u64 <= offset);
        // Merge adjacent extents into one data run.
        let mut run: Option<Range<u64>> = None;
        for e in &exts[first..] {
            let (s, end) = (e.file_off.get(), e.file_off.get() + e.len.get() as u64);
            match &mut run {
                None => run = Some(s.max(offset)..end),
                Some(r) if r.end == s => r.end = end,
                Some(_) => break,
            }
        }
        Ok(run)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use format_spec::{LayerBuilder, Meta};

    /// `name_of` finds every named entry, also where whiteouts and hard-link aliases break the
    /// consecutive numbering it starts from, and nothing for inodes not in the directory.
    #[test]
    fn name_of_finds_every_entry_despite_whiteouts_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.lpk");
        let mut b = LayerBuilder::new(File::create(&path).unwrap());
        let meta = Meta { mode: 0o644, ..Meta::default() };
        b.dir(b"", Meta { mode: 0o755, ..Meta::default() }).unwrap();
        b.file(b"a/target", meta.clone(), 1, &mut std::io::Cursor::new(b"t")).unwrap();
        b.whiteout(b"d/0-gone").unwrap();
        b.hardlink(b"d/1-alias", b"a/target").unwrap();
        for i in 0..200 {
            if i % 50 == 0 {
                b.whiteout(format!("d/f{i:03}-wh").as_bytes()).unwrap();
            }
            b.file(format!("d/f{i:03}").as_bytes(), meta.clone(), 1, &mut std::io::Cursor::new(b"x")).unwrap();
        }
        b.finish(None).unwrap();
        let l = PackedLower::open(&path, None).unwrap();
        let LowerLookup::Found { ino: d, .. } = l.lookup(l.root(), b"d").unwrap() else { panic!("no d") };
        let mut entries = Vec::new();
        l.readdir(d, &mut |name, e| {
            if let LowerDirEntry::Entry { ino, .. } = e {
                entries.push((name.to_vec(), ino));
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(entries.len(), 201);
        for (name, ino) in entries {
            assert_eq!(l.name_of(d, ino).unwrap(), Some(name.clone()), "{}", String::from_utf8_lossy(&name));
        }
        assert_eq!(l.name_of(d, l.root()).unwrap(), None);
        assert_eq!(l.name_of(d, LowerIno(1 << 30)).unwrap(), None);
    }
}
