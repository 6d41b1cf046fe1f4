//! Errors. The core speaks [`Errno`] (the value the kernel gets back); setup code speaks
//! [`SetupError`]. An `io::Error` is converted to an `Errno` exactly once, keeping its raw errno:
//! never re-wrap an `io::Error` with `io::Error::new`, that loses the errno and the kernel would
//! see EIO. Put context in a log line instead.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A positive errno value returned to the kernel.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident),*) => { impl Errno { $(
        #[doc = concat!("`", stringify!($name), "`")]
        pub const $name: Errno = Errno(libc::$name);
    )* } };
}
errnos!(
    EPERM,
    ENOENT,
    EIO,
    EBADF,
    EACCES,
    EEXIST,
    EXDEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENOSPC,
    EROFS,
    EMLINK,
    ERANGE,
    ENAMETOOLONG,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENODATA,
    EOPNOTSUPP,
    ENOTSUP,
    EOVERFLOW,
    EFBIG,
    ESTALE,
    ENXIO
);

impl Errno {
    /// The raw value.
    pub fn code(self) -> i32 {
        self.0
    }

    /// The errno of the last failed libc call.
    pub fn last() -> Errno {
        Errno::from(io::Error::last_os_error())
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", io::Error::from_raw_os_error(self.0), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Errno {
        Errno(e as i32)
    }
}

/// Result of a core operation.
pub type Result<T, E = Errno> = std::result::Result<T, E>;

/// Errors while setting up a mount (bad options, unusable directories).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A mount option could not be parsed.
    #[error("bad mount option {option:?}: {reason}")]
    BadOption { option: String, reason: String },
    /// A layer, upper or work directory could not be opened.
    #[error("cannot open {what} {path:?}: {source}")]
    Open { what: &'static str, path: PathBuf, source: io::Error },
    /// The upper and work directories are not on one filesystem, or not under one mount (a
    /// rename from one to the other would fail with EXDEV, as kernel overlayfs also refuses).
    #[error("upper {upper:?} and work {work:?} must be on the same filesystem, under the same mount")]
    WorkDevice { upper: PathBuf, work: PathBuf },
    /// Preparing the work directory failed.
    #[error("cannot prepare work directory {path:?}: {source}")]
    Work { path: PathBuf, source: io::Error },
    /// Too many layers for the inode number encoding.
    #[error("too many layers: {0} (at most {max})", max = crate::ino::MAX_LAYERS)]
    TooManyLayers(usize),
    /// Command-line usage error.
    #[error("{0}")]
    Usage(String),
}
