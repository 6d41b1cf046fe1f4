//! A lower layer that is a plain directory (fuse-overlayfs / containers-storage compatible).
//!
//! Whiteouts: a char device 0/0 or a `.wh.NAME` file. Opaque directories:
//! `trusted.overlay.opaque=y`, `user.overlay.opaque=y`, `user.fuseoverlayfs.opaque=y`, or a
//! `.wh..wh..opq` file inside. Marker files are never reported as entries.
//!
//! [`LowerIno`] is the host `st_ino`. The layer remembers, for each number it handed out by
//! `lookup`, one (parent, name) location and reaches objects through cached `O_PATH` directory
//! fds (an LRU, so the number of fds stays bounded) and `*at` calls with one component and
//! `O_NOFOLLOW`. The directory must not contain mount points (their inode numbers could collide).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Errno, Result, SetupError};
use crate::lower::{FileKind, Lower, LowerAttr, LowerDirEntry, LowerIno, LowerLookup, Timespec};
use crate::sys;

const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const WH_PREFIX: &[u8] = b".wh.";
const DIR_FD_CACHE: usize = 512;
const ATTR_CACHE: usize = 4096;

#[derive(Debug)]
struct Loc {
    parent: u64,
    name: CString,
}

/// A plain directory used as a read-only layer.
#[derive(Debug)]
pub struct DirLower {
    path: PathBuf,
    root_fd: Arc<OwnedFd>,
    root_ino: u64,
    locs: RwLock<HashMap<u64, Loc>>,
    dir_fds: Mutex<lru::LruCache<u64, Arc<OwnedFd>>>,
    /// Attributes seen by recent lookups (the layer is immutable: never stale), so the
    /// `getattr` that follows a lookup costs no syscall.
    attrs: Mutex<lru::LruCache<u64, LowerAttr>>,
    /// Opacity of directories already asked about.
    opaque: RwLock<HashMap<u64, bool>>,
}

/// Converts a host `stat` to [`LowerAttr`].
pub fn attr_from_stat(st: &sys::Stat) -> LowerAttr {
    LowerAttr {
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        rdev: st.st_rdev,
        atime: Timespec { sec: st.st_atime, nsec: st.st_atime_nsec as u32 },
        mtime: Timespec { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 },
        ctime: Timespec { sec: st.st_ctime, nsec: st.st_ctime_nsec as u32 },
    }
}

/// True for a char device 0/0 (the overlay whiteout).
pub fn is_whiteout_stat(st: &sys::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

impl DirLower {
    /// Opens directory `path` as a layer (no tree walk: cost independent of its size).
    pub fn open(path: &Path) -> std::result::Result<DirLower, SetupError> {
        let err = |source| SetupError::Open { what: "lower directory", path: path.to_path_buf(), source };
        // The layer path itself is trusted (it comes from the command line) and may be a symlink
        // (containers-storage passes l/<id> symlinks): canonicalize, then hold an fd.
        let real = std::fs::canonicalize(path).map_err(err)?;
        let c = sys::cstr(real.as_os_str().as_bytes()).map_err(err)?;
        let fd = sys::openat(nix::fcntl::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(err)?;
        let st = sys::fstat(fd.as_fd()).map_err(err)?;
        Ok(DirLower {
            path: path.to_path_buf(),
            root_fd: Arc::new(fd),
            root_ino: st.st_ino,
            locs: RwLock::new(HashMap::new()),
            dir_fds: Mutex::new(lru::LruCache::new(NonZeroUsize::new(DIR_FD_CACHE).unwrap_or(NonZeroUsize::MIN))),
            attrs: Mutex::new(lru::LruCache::new(NonZeroUsize::new(ATTR_CACHE).unwrap_or(NonZeroUsize::MIN))),
            opaque: RwLock::new(HashMap::new()),
        })
    }

    fn loc(&self, ino: u64) -> Result<(u64, CString)> {
        let locs = self.locs.read().map_err(|_| Errno::EIO)?;
        let l = locs.get(&ino).ok_or(Errno::ESTALE)?;
        Ok((l.parent, l.name.clone()))
    }

    fn dir_fd(&self, ino: u64) -> Result<Arc<OwnedFd>> {
        if ino == self.root_ino {
            return Ok(self.root_fd.clone());
        }
        if let Some(fd) = self.dir_fds.lock().map_err(|_| Errno::EIO)?.get(&ino) {
            return Ok(fd.clone());
        }
        let (parent, name) = self.loc(ino)?;
        let pfd = self.dir_fd(parent)?;
        let fd = Arc::new(sys::openat(pfd.as_fd(), &name, libc::O_PATH | libc::O_DIRECTORY, 0)?);
        self.dir_fds.lock().map_err(|_| Errno::EIO)?.put(ino, fd.clone());
        Ok(fd)
    }

    /// Calls `f` with (directory fd, name) of `ino`; the root is (root fd, "").
    fn with_obj<T>(&self, ino: u64, f: impl FnOnce(BorrowedFd<'_>, &CString) -> Result<T>) -> Result<T> {
        if ino == self.root_ino {
            return f(self.root_fd.as_fd(), &CString::default());
        }
        let (parent, name) = self.loc(ino)?;
        let pfd = self.dir_fd(parent)?;
        f(pfd.as_fd(), &name)
    }

    fn has_opaque_xattr(at: &sys::XattrPath) -> bool {
        [c"trusted.overlay.opaque", c"user.overlay.opaque", c"user.fuseoverlayfs.opaque"]
            .iter()
            .any(|n| matches!(sys::getxattr(at, n), Ok(v) if v == b"y"))
    }
}

impl Lower for DirLower {
    fn root(&self) -> LowerIno {
        LowerIno(self.root_ino)
    }

    fn lookup(&self, dir: LowerIno, name: &[u8]) -> Result<LowerLookup> {
        if name.starts_with(WH_PREFIX) {
            return Ok(LowerLookup::NotFound);
        }
        let dfd = self.dir_fd(dir.0)?;
        let cname = sys::cstr(name)?;
        match sys::fstatat(dfd.as_fd(), &cname) {
            Ok(st) => {
                if is_whiteout_stat(&st) {
                    return Ok(LowerLookup::Whiteout);
                }
                let kind = FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)?;
                if let Ok(mut c) = self.attrs.lock() {
                    c.put(st.st_ino, attr_from_stat(&st));
                }
                let mut locs = self.locs.write().map_err(|_| Errno::EIO)?;
                locs.entry(st.st_ino).or_insert(Loc { parent: dir.0, name: cname });
                Ok(LowerLookup::Found { ino: LowerIno(st.st_ino), kind })
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let mut wh = WH_PREFIX.to_vec();
                wh.extend_from_slice(name);
                let wh = sys::cstr(&wh)?;
                match sys::fstatat(dfd.as_fd(), &wh) {
                    Ok(_) => Ok(LowerLookup::Whiteout),
                    Err(_) => Ok(LowerLookup::NotFound),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn getattr(&self, ino: LowerIno) -> Result<LowerAttr> {
        if let Some(a) = self.attrs.lock().ok().and_then(|mut c| c.get(&ino.0).copied()) {
            return Ok(a);
        }
        self.with_obj(ino.0, |d, n| Ok(attr_from_stat(&sys::fstatat(d, n)?)))
    }

    fn is_opaque(&self, dir: LowerIno) -> Result<bool> {
        if let Some(o) = self.opaque.read().ok().and_then(|m| m.get(&dir.0).copied()) {
            return Ok(o);
        }
        let dfd = self.dir_fd(dir.0)?;
        let o = Self::has_opaque_xattr(&sys::XattrPath::fd(dfd.as_fd()))
            || sys::fstatat(dfd.as_fd(), &sys::cstr(OPAQUE_MARKER)?).is_ok();
        if let Ok(mut m) = self.opaque.write() {
            m.insert(dir.0, o);
        }
        Ok(o)
    }

    fn readdir(&self, dir: LowerIno, f: &mut dyn FnMut(&[u8], LowerDirEntry) -> ControlFlow<()>) -> Result<()> {
        let dfd = self.dir_fd(dir.0)?;
        let fd = sys::openat(dfd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let mut d = nix::dir::Dir::from_fd(fd)?;
        for ent in d.iter() {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." || name == OPAQUE_MARKER {
                continue;
            }
            let flow = if let Some(target) = name.strip_prefix(WH_PREFIX) {
                if target.is_empty() {
                    continue;
                }
                f(target, LowerDirEntry::Whiteout)
            } else {
                use nix::dir::Type;
                let kind = match ent.file_type() {
                    Some(Type::File) => Some(FileKind::Regular),
                    Some(Type::Directory) => Some(FileKind::Directory),
                    Some(Type::Symlink) => Some(FileKind::Symlink),
                    Some(Type::BlockDevice) => Some(FileKind::BlockDevice),
                    Some(Type::Fifo) => Some(FileKind::Fifo),
                    Some(Type::Socket) => Some(FileKind::Socket),
                    // Char devices may be whiteouts, unknown types need a stat.
                    Some(Type::CharacterDevice) | None => None,
                };
                match kind {
                    Some(kind) => f(name, LowerDirEntry::Entry { ino: LowerIno(ent.ino()), kind }),
                    None => {
                        let st = sys::fstatat(dfd.as_fd(), ent.file_name())?;
                        if is_whiteout_stat(&st) {
                            f(name, LowerDirEntry::Whiteout)
                        } else {
                            f(
                                name,
                                LowerDirEntry::Entry {
                                    ino: LowerIno(st.st_ino),
                                    kind: FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)?,
                                },
                            )
                        }
                    }
                }
            };
            if flow.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn readlink(&self, ino: LowerIno) -> Result<Vec<u8>> {
        self.with_obj(ino.0, |d, n| Ok(sys::readlinkat(d, n)?))
    }

    fn listxattr(&self, ino: LowerIno) -> Result<Vec<Vec<u8>>> {
        self.with_obj(ino.0, |d, n| {
            let raw = sys::listxattr(&sys::XattrPath::child(d, n))?;
            Ok(raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(<[u8]>::to_vec).collect())
        })
    }

    fn getxattr(&self, ino: LowerIno, name: &[u8]) -> Result<Vec<u8>> {
        let cname = sys::cstr(name)?;
        self.with_obj(ino.0, |d, n| Ok(sys::getxattr(&sys::XattrPath::child(d, n), &cname)?))
    }

    fn read(&self, ino: LowerIno, offset: u64, size: u32) -> Result<Cow<'_, [u8]>> {
        let file = self.open_backing(ino)?.ok_or(Errno::EIO)?;
        Ok(Cow::Owned(crate::lower::read_at_most(&file, offset, size)?))
    }

    fn open_backing(&self, ino: LowerIno) -> Result<Option<File>> {
        self.with_obj(ino.0, |d, n| {
            let fd = sys::openat(d, n, libc::O_RDONLY | libc::O_NOATIME, 0)
                .or_else(|_| sys::openat(d, n, libc::O_RDONLY, 0))?;
            Ok(Some(File::from(fd)))
        })
    }

    fn has_backing(&self, _ino: LowerIno) -> Result<bool> {
        // Every regular file of a directory is a file of its own.
        Ok(true)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn both_whiteout_conventions_and_opaque() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        std::fs::create_dir_all(p.join("d/sub")).unwrap();
        std::fs::write(p.join("d/f"), b"hello").unwrap();
        std::fs::write(p.join(".wh.gone"), b"").unwrap();
        std::fs::write(p.join("d/.wh..wh..opq"), b"").unwrap();
        symlink("target", p.join("l")).unwrap();
        let dev = CString::new("chr").unwrap();
        let root = File::open(p).unwrap();
        sys::mknodat(root.as_fd(), &dev, libc::S_IFCHR | 0o600, 0).unwrap();

        let l = DirLower::open(p).unwrap();
        let r = l.root();
        assert_eq!(l.lookup(r, b"gone").unwrap(), LowerLookup::Whiteout);
        assert_eq!(l.lookup(r, b"chr").unwrap(), LowerLookup::Whiteout);
        assert_eq!(l.lookup(r, b".wh.gone").unwrap(), LowerLookup::NotFound);
        assert_eq!(l.lookup(r, b"nope").unwrap(), LowerLookup::NotFound);
        let LowerLookup::Found { ino: d, kind } = l.lookup(r, b"d").unwrap() else { panic!() };
        assert!(kind.is_dir());
        assert!(l.is_opaque(d).unwrap());
        assert!(!l.is_opaque(r).unwrap());
        let LowerLookup::Found { ino: f, .. } = l.lookup(d, b"f").unwrap() else { panic!() };
        assert_eq!(&*l.read(f, 1, 100).unwrap(), b"ello");
        assert_eq!(l.getattr(f).unwrap().size, 5);
        let LowerLookup::Found { ino: ln, .. } = l.lookup(r, b"l").unwrap() else { panic!() };
        assert_eq!(l.readlink(ln).unwrap(), b"target");

        let mut names = Vec::new();
        l.readdir(r, &mut |n, e| {
            names.push((n.to_vec(), matches!(e, LowerDirEntry::Whiteout)));
            ControlFlow::Continue(())
        })
        .unwrap();
        names.sort();
        assert_eq!(
            names,
            vec![(b"chr".to_vec(), true), (b"d".to_vec(), false), (b"gone".to_vec(), true), (b"l".to_vec(), false)]
        );
    }
}
