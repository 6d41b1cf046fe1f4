//! The lower-layer interface: the union core talks to read-only layers only through [`Lower`].
//!
//! A stack is `Vec<Arc<dyn Lower>>`, topmost first (the order of overlay's `lowerdir=`).
//! Implementations: [`crate::dir_lower::DirLower`] (a plain directory, either whiteout
//! convention), [`crate::mem_lower::MemLower`] (in memory, for tests) and, in another crate, the
//! packed `.lpk` lower.
//!
//! ## Contract
//! - A layer is immutable while mounted: the core and the kernel cache freely.
//! - [`LowerIno`] is the layer's own inode number: stable across mounts (it becomes part of
//!   `st_ino`, also after copy-up), unique within the layer, and equal for hard links of one
//!   file. The core only passes to [`Lower::getattr`] and friends numbers that came from
//!   [`Lower::root`] or [`Lower::lookup`]; the numbers [`Lower::readdir`] reports are used as
//!   `d_ino` only.
//! - Whiteouts and opaque markers are *typed*: `lookup` answers [`LowerLookup::Whiteout`],
//!   `readdir` reports [`LowerDirEntry::Whiteout`] and never the marker files themselves
//!   (`.wh.NAME`, `.wh..wh..opq`), and [`Lower::is_opaque`] answers the opaque question. How a
//!   layer stores them (char 0/0 devices, `.wh.` files, xattrs, flags) is its own business.
//! - `readdir` reports entries in any order (the core sorts nothing and relies on no order);
//!   the packed lower happens to report them sorted by name. It must report each name once.
//! - Errors are errnos ([`Errno`]); `getxattr` of a missing attribute is `ENODATA`.
//! - Methods are called concurrently from many threads.

use std::borrow::Cow;
use std::fmt::Debug;
use std::fs::File;
use std::ops::{ControlFlow, Range};

use crate::error::{Errno, Result};

/// An inode number inside one lower layer (see the module docs for the contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LowerIno(pub u64);

/// The type of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// The kind encoded in the `S_IFMT` bits of `mode`.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    /// True for directories.
    pub fn is_dir(self) -> bool {
        self == FileKind::Directory
    }
}

/// A point in time: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timespec {
    /// Seconds (may be negative).
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

/// Attributes of a lower object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowerAttr {
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    /// Link count within the layer.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (symlinks: length of the target).
    pub size: u64,
    /// Allocated 512-byte blocks (an estimate is fine).
    pub blocks: u64,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Access time.
    pub atime: Timespec,
    /// Modification time.
    pub mtime: Timespec,
    /// Change time.
    pub ctime: Timespec,
}

impl LowerAttr {
    /// The file kind from `mode`.
    pub fn kind(&self) -> FileKind {
        FileKind::from_mode(self.mode).unwrap_or(FileKind::Regular)
    }
}

/// Answer of [`Lower::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowerLookup {
    /// The name exists in this layer.
    Found {
        /// Its inode number.
        ino: LowerIno,
        /// Its type.
        kind: FileKind,
    },
    /// The name is whited out in this layer: it hides the name in the layers below.
    Whiteout,
    /// This layer says nothing about the name.
    NotFound,
}

/// One entry reported by [`Lower::readdir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowerDirEntry {
    /// A real entry.
    Entry {
        /// Inode number (used as `d_ino` only).
        ino: LowerIno,
        /// Type.
        kind: FileKind,
    },
    /// A whiteout for this name.
    Whiteout,
}

/// A read-only layer (see the module docs for the contract). Object-safe.
pub trait Lower: Send + Sync + Debug {
    /// The root directory.
    fn root(&self) -> LowerIno;

    /// Asks the kernel to read ahead what lookups will need (best effort; called by the daemon
    /// once the mount is live, so that it does not delay the mount).
    fn prefetch(&self) {}

    /// Looks `name` (one component, never `.`/`..`) up in directory `dir`.
    fn lookup(&self, dir: LowerIno, name: &[u8]) -> Result<LowerLookup>;

    /// Attributes of `ino`.
    fn getattr(&self, ino: LowerIno) -> Result<LowerAttr>;

    /// Whether directory `dir` is opaque (hides the same directory in the layers below).
    fn is_opaque(&self, dir: LowerIno) -> Result<bool>;

    /// Calls `f` for every entry of `dir` (whiteouts included, marker files excluded, no `.` and
    /// `..`), in any order, until `f` breaks.
    fn readdir(&self, dir: LowerIno, f: &mut dyn FnMut(&[u8], LowerDirEntry) -> ControlFlow<()>) -> Result<()>;

    /// Whether [`Lower::name_of`] costs about a lookup (not a scan of the directory): only then
    /// does the core keep no name for this layer's files (lower nodes, see
    /// `crate::inode::Node`), since every change to such a file asks for its name again (a
    /// `chown -R` of a directory of n files would scan it n times).
    fn finds_names_by_inode(&self) -> bool {
        false
    }

    /// A bound below which all of this layer's inode numbers lie, when they are dense (numbered
    /// from 1): the core then keeps this layer's lower nodes in arrays indexed by inode number
    /// (`crate::inode::InodeTable`). Only asked of layers that find names by inode.
    fn ino_bound(&self) -> Option<u64> {
        None
    }

    /// The name of `ino` in directory `dir`, when it has one there (used for files with one
    /// link, whose name the core does not keep: see `crate::inode::Node`). The default scans
    /// `readdir` and checks the name with `lookup`.
    fn name_of(&self, dir: LowerIno, ino: LowerIno) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.readdir(dir, &mut |name, e| match e {
            LowerDirEntry::Entry { ino: i, .. } if i == ino => {
                found = Some(name.to_vec());
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        })?;
        match found {
            Some(name) if matches!(self.lookup(dir, &name)?, LowerLookup::Found { ino: i, .. } if i == ino) => {
                Ok(Some(name))
            }
            _ => Ok(None),
        }
    }

    /// Target of symlink `ino`.
    fn readlink(&self, ino: LowerIno) -> Result<Vec<u8>>;

    /// Names of the extended attributes of `ino` (all of them: the core filters internal ones).
    fn listxattr(&self, ino: LowerIno) -> Result<Vec<Vec<u8>>>;

    /// Value of extended attribute `name` of `ino`; `ENODATA` when absent.
    fn getxattr(&self, ino: LowerIno, name: &[u8]) -> Result<Vec<u8>>;

    /// Reads up to `size` bytes at `offset` of regular file `ino` (short only at end of file).
    /// The fallback data path, used when [`Lower::open_backing`] gives no file.
    fn read(&self, ino: LowerIno, offset: u64, size: u32) -> Result<Cow<'_, [u8]>>;

    /// A read-only file holding exactly the data of `ino` at offset 0, for FUSE passthrough and
    /// `copy_file_range`/reflink copy-up; `None` when the data is not a file of its own (then
    /// the core serves reads through [`Lower::read`]).
    fn open_backing(&self, ino: LowerIno) -> Result<Option<File>>;

    /// Whether [`Lower::open_backing`] of regular file `ino` gives a file, without opening it
    /// (opens of files whose backing id the kernel still holds need no file).
    fn has_backing(&self, ino: LowerIno) -> Result<bool> {
        Ok(self.open_backing(ino)?.is_some())
    }

    /// The first data extent of `ino` that ends after `offset` (sparse files), or `None` past the
    /// last one. Only used when `open_backing` gives no file (otherwise the core asks the file
    /// with `SEEK_DATA`/`SEEK_HOLE`). The default says the whole file is data.
    fn next_data(&self, ino: LowerIno, offset: u64) -> Result<Option<Range<u64>>> {
        let size = self.getattr(ino)?.size;
        Ok((offset < size).then_some(offset..size))
    }

    /// A short description for logs (a path, a layer digest).
    fn describe(&self) -> String;
}

/// Reads the whole target of `ino` through `read` (helper for implementations and tests).
pub fn read_all(lower: &dyn Lower, ino: LowerIno) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let chunk = lower.read(ino, out.len() as u64, 1 << 20)?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

/// Returns `ENOTDIR` unless `kind` is a directory.
pub fn expect_dir(kind: FileKind) -> Result<()> {
    if kind.is_dir() { Ok(()) } else { Err(Errno::ENOTDIR) }
}

/// Reads up to `size` bytes of `file` at `offset` (fewer only at the end of the file).
pub(crate) fn read_at_most(file: &std::fs::File, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; size as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}
