//! The writable upper directory, in the kernel overlayfs format, and the work directory.
//!
//! - Whiteout: a char device 0/0 (`.wh.NAME` files are also *read* as whiteouts, as
//!   fuse-overlayfs does; when mknod is refused, unprivileged, they are also written).
//! - Opaque directory: `trusted.overlay.opaque=y` (`user.overlay.opaque` when unprivileged).
//! - Renamed merged directory: `trusted.overlay.redirect=/lower/path` (absolute, as overlayfs
//!   writes with `redirect_dir=on`).
//! - Impure directory (holds entries with an origin): `trusted.overlay.impure=y`.
//! - Origin of a copied-up object: `trusted.layerfs.origin=LAYER:INO` (our own name: overlayfs'
//!   `origin` is a file handle we cannot produce for a packed layer). Kernel overlay ignores it.
//! - Hard-link index: `WORK/index/LAYER-INO`, a hard link to the copied-up file, so other
//!   aliases of a lower hard link find the copy (also after remount). Merged link count:
//!   `trusted.layerfs.nlink`.
//! - Metadata-only copy-up (chmod, chown, utimes, xattr changes of a lower regular file): a
//!   sparse upper file of the right size with `trusted.overlay.metacopy` (empty value); the data
//!   stays in the lower file at the same path until the first write, which copies it into the
//!   upper file in place and then removes the xattr (a crash in between leaves a valid
//!   metacopy). Kernel overlayfs reads this with `metacopy=on`.
//! - Temporary objects are built in `WORK/work/` and renamed into place (atomic copy-up).
//!
//! The upper root, `WORK/work` and `WORK/index` are opened once; everything else is reached
//! from directory fds with one component at a time (see [`crate::sys`]).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Errno, Result, SetupError};
use crate::sys;

/// Names of the xattrs we use, in the namespace chosen at mount.
#[derive(Debug, Clone)]
pub struct XattrNames {
    /// `*.overlay.opaque`
    pub opaque: CString,
    /// `*.overlay.redirect`
    pub redirect: CString,
    /// `*.overlay.impure`
    pub impure: CString,
    /// `*.layerfs.origin`
    pub origin: CString,
    /// `*.layerfs.nlink`
    pub nlink: CString,
    /// `*.overlay.metacopy`
    pub metacopy: CString,
}

impl XattrNames {
    fn new(prefix: &str) -> XattrNames {
        let n = |s: &str| CString::new(format!("{prefix}{s}")).unwrap_or_default();
        XattrNames {
            opaque: n("overlay.opaque"),
            redirect: n("overlay.redirect"),
            impure: n("overlay.impure"),
            origin: n("layerfs.origin"),
            nlink: n("layerfs.nlink"),
            metacopy: n("overlay.metacopy"),
        }
    }
}

/// True for xattr names the union reserves (hidden from users, not settable).
pub fn is_internal_xattr(name: &[u8]) -> bool {
    [
        &b"trusted.overlay."[..],
        b"user.overlay.",
        b"trusted.layerfs.",
        b"user.layerfs.",
        b"user.fuseoverlayfs.",
        b"security.fuseoverlayfs.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The upper and work directories.
#[derive(Debug)]
pub struct Upper {
    /// Upper root directory (`O_PATH`).
    pub root: OwnedFd,
    work: OwnedFd,
    index: OwnedFd,
    /// Xattr names (trusted.* as root, user.* otherwise).
    pub names: XattrNames,
    /// Also the other namespace's opaque name, accepted when reading.
    alt_opaque: CString,
    mknod_whiteouts: AtomicBool,
    tmp: AtomicU64,
    path: PathBuf,
}

fn open_dir(path: &Path, what: &'static str) -> std::result::Result<OwnedFd, SetupError> {
    let err = |source| SetupError::Open { what, path: path.to_path_buf(), source };
    let c = sys::cstr(path.as_os_str().as_bytes()).map_err(err)?;
    // The directories come from the command line (trusted), so a path is fine here.
    sys::openat(nix::fcntl::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(err)
}

fn sub_dir(parent: BorrowedFd<'_>, name: &CStr, path: &Path) -> std::result::Result<OwnedFd, SetupError> {
    let err = |source| SetupError::Work { path: path.to_path_buf(), source };
    match sys::mkdirat(parent, name, 0o700) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(err(e)),
    }
    sys::openat(parent, name, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(err)
}

/// Removes everything below `dir` (fd-relative, never following symlinks).
pub fn remove_tree_contents(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    let fd = sys::openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(e.file_name().to_owned());
        }
    }
    for n in names {
        let st = sys::fstatat(dir, &n)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let sub = sys::openat(dir, &n, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            remove_tree_contents(sub.as_fd())?;
            sys::unlinkat(dir, &n, true)?;
        } else {
            sys::unlinkat(dir, &n, false)?;
        }
    }
    Ok(())
}

impl Upper {
    /// Opens `upper` and prepares `work` (`work/work` emptied, `work/index` kept).
    pub fn open(upper: &Path, work: &Path) -> std::result::Result<Upper, SetupError> {
        let root = open_dir(upper, "upper directory")?;
        let workdir = open_dir(work, "work directory")?;
        let ust = sys::fstat(root.as_fd()).map_err(|source| SetupError::Open {
            what: "upper directory",
            path: upper.into(),
            source,
        })?;
        let wst = sys::fstat(workdir.as_fd()).map_err(|source| SetupError::Open {
            what: "work directory",
            path: work.into(),
            source,
        })?;
        let same_mount = match (sys::mount_id(root.as_fd()), sys::mount_id(workdir.as_fd())) {
            (Ok(u), Ok(w)) => u == w,
            _ => true, // no /proc: the device check alone
        };
        if ust.st_dev != wst.st_dev || !same_mount {
            return Err(SetupError::WorkDevice { upper: upper.into(), work: work.into() });
        }
        let w = sub_dir(workdir.as_fd(), c"work", work)?;
        remove_tree_contents(w.as_fd()).map_err(|source| SetupError::Work { path: work.into(), source })?;
        let index = sub_dir(workdir.as_fd(), c"index", work)?;
        // trusted.* needs CAP_SYS_ADMIN in the initial user namespace: probe it (a root inside a
        // user namespace gets EPERM) and fall back to user.* like overlayfs' `userxattr`.
        let probe = sys::XattrPath::fd(w.as_fd());
        let privileged = match sys::setxattr(&probe, c"trusted.layerfs.probe", b"1", 0) {
            Ok(()) => {
                let _ = sys::removexattr(&probe, c"trusted.layerfs.probe");
                true
            }
            Err(_) => false,
        };
        let (prefix, alt) = if privileged { ("trusted.", "user.") } else { ("user.", "trusted.") };
        let up = Upper {
            root,
            work: w,
            index,
            names: XattrNames::new(prefix),
            alt_opaque: CString::new(format!("{alt}overlay.opaque")).unwrap_or_default(),
            mknod_whiteouts: AtomicBool::new(true),
            tmp: AtomicU64::new(0),
            path: upper.to_path_buf(),
        };
        up.probe_whiteout();
        Ok(up)
    }

    fn probe_whiteout(&self) {
        let name = self.tmp_name();
        match sys::mknodat(self.work.as_fd(), &name, libc::S_IFCHR, 0) {
            Ok(()) => {
                let _ = sys::unlinkat(self.work.as_fd(), &name, false);
            }
            Err(e) => {
                tracing::warn!(
                    upper = %self.path.display(),
                    "cannot create char 0/0 whiteouts ({e}): writing .wh. files (not readable by kernel overlayfs)"
                );
                self.mknod_whiteouts.store(false, Ordering::Relaxed);
            }
        }
    }

    /// The temporary directory for atomic builds.
    pub fn work(&self) -> BorrowedFd<'_> {
        self.work.as_fd()
    }

    /// The hard-link index directory.
    pub fn index(&self) -> BorrowedFd<'_> {
        self.index.as_fd()
    }

    /// A fresh temporary name in the work directory.
    pub fn tmp_name(&self) -> CString {
        let n = self.tmp.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#{:x}-{n}", std::process::id())).unwrap_or_default()
    }

    /// Creates a whiteout named `name` in `dir` (which must not exist).
    pub fn make_whiteout(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        if self.mknod_whiteouts.load(Ordering::Relaxed) {
            match sys::mknodat(dir, &sys::cstr(name)?, libc::S_IFCHR, 0) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    self.mknod_whiteouts.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut wh = b".wh.".to_vec();
        wh.extend_from_slice(name);
        match sys::mknodat(dir, &sys::cstr(&wh)?, libc::S_IFREG, 0) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether whiteouts are char 0/0 devices (else `.wh.` files).
    pub fn mknod_whiteouts(&self) -> bool {
        self.mknod_whiteouts.load(Ordering::Relaxed)
    }

    /// Whether the directory `at` is marked opaque (either namespace).
    pub fn is_opaque(&self, at: &sys::XattrPath) -> bool {
        [&self.names.opaque, &self.alt_opaque].iter().any(|n| matches!(sys::getxattr(at, n), Ok(v) if v == b"y"))
    }

    /// Reads one of our xattrs; absent (or unreadable) is `None`.
    pub fn get(&self, at: &sys::XattrPath, name: &CStr) -> Option<Vec<u8>> {
        sys::getxattr(at, name).ok()
    }

    /// Sets one of our xattrs.
    pub fn set(&self, at: &sys::XattrPath, name: &CStr, value: &[u8]) -> Result<()> {
        Ok(sys::setxattr(at, name, value, 0)?)
    }

    /// Removes one of our xattrs (absent is fine).
    pub fn remove(&self, at: &sys::XattrPath, name: &CStr) -> Result<()> {
        match sys::removexattr(at, name) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            Err(e) => Err(Errno::from(e)),
        }
    }

    /// Filesystem statistics of the upper.
    pub fn statfs(&self) -> Result<libc::statvfs> {
        Ok(sys::fstatvfs(self.root.as_fd())?)
    }
}
