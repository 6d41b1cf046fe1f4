//! Reading an overlay upper directory (layerfs or kernel overlayfs format) without trusting it.
//!
//! The upper of a container may still be in use, and the container may be hostile: everything is
//! reached from directory fds one component at a time, never following a symlink (`O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`, xattrs through `/proc/self/fd/DIRFD/NAME` with the `l*xattr` calls, see
//! [`layerfs::sys`]). Nothing outside the upper is ever opened through it.
//!
//! What the upper's markers mean (`layerfs/README.md`, "On-disk format of the upper"):
//! - whiteout: a char device 0/0, a `.wh.NAME` file, or an empty regular file with
//!   `*.overlay.whiteout` (the kernel's xattr whiteouts);
//! - opaque directory: `trusted.overlay.opaque=y` / `user.overlay.opaque=y`
//!   (`user.fuseoverlayfs.opaque=y` too), or a `.wh..wh..opq` file inside it;
//! - renamed merged directory: `*.overlay.redirect` (absolute `/a/b`, or relative: a name in the
//!   parent's lower directory);
//! - metadata-only copy: `*.overlay.metacopy` (the data is still in the lower file);
//! - origin of a copy-up: `*.layerfs.origin=LAYER:INO` (LAYER counted from the bottom).
//!
//! Internal attributes (`trusted.overlay.*`, `user.overlay.*`, `*.layerfs.*`, fuse-overlayfs'
//! own) are never reported as the entry's extended attributes.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use format_spec::Kind;
use layerfs::sys;

use crate::error::UpperError;

/// How deep the upper's directories may nest (each level holds one open directory).
pub const MAX_DEPTH: usize = 1000;

/// Extended attributes: (key, value), sorted by key.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What an upper entry is, with its overlay meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpperKind {
    /// The name is deleted from the layers below.
    Whiteout,
    /// A directory.
    Dir {
        /// Hides the layers below.
        opaque: bool,
        /// A renamed merged directory: the lower path its content comes from.
        redirect: Option<Vec<u8>>,
    },
    /// A regular file.
    File {
        /// Metadata-only copy: the data is in the lower file.
        metacopy: bool,
        /// The redirect of a renamed metadata-only copy (kernel overlayfs).
        redirect: Option<Vec<u8>>,
    },
    /// A symbolic link.
    Symlink,
    /// A device node, fifo or socket.
    Special(Kind),
}

/// One entry of an upper directory.
#[derive(Clone, Debug)]
pub struct UpperEntry {
    /// Its name (for a whiteout: the deleted name).
    pub name: Vec<u8>,
    /// What it is.
    pub kind: UpperKind,
    /// Its `stat` (of the marker, for a whiteout).
    pub st: libc::stat,
    /// `*.layerfs.origin`: the lower object it was copied up from (layer from the bottom, ino).
    pub origin: Option<(u32, u32)>,
    /// Its user-visible extended attributes, sorted by key.
    pub xattrs: Xattrs,
}

impl UpperEntry {
    /// `(st_dev, st_ino)`: its identity on the upper's filesystem.
    pub fn id(&self) -> (u64, u64) {
        (self.st.st_dev, self.st.st_ino)
    }

    /// Whether the file may have holes (fewer allocated blocks than its size needs).
    pub fn maybe_sparse(&self) -> bool {
        (self.st.st_blocks as u64).saturating_mul(512) < self.st.st_size as u64
    }
}

/// True for the xattrs overlay implementations keep for themselves.
pub fn is_internal_xattr(key: &[u8]) -> bool {
    if layerfs::upper::is_internal_xattr(key) {
        return true;
    }
    // `*.layerfs.*` in any namespace.
    key.iter().position(|&c| c == b'.').is_some_and(|dot| key[dot + 1..].starts_with(b"layerfs."))
}

fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> UpperError {
    let context = context.into();
    move |source| UpperError::Io { context, source }
}

fn cname(name: &[u8]) -> Result<CString, UpperError> {
    sys::cstr(name).map_err(io(String::from_utf8_lossy(name).into_owned()))
}

/// Opens the upper's root directory. The path comes from the caller and is trusted (the
/// container controls what is inside the upper, not where it is): it may be a symlink.
pub fn open_root(path: &Path) -> Result<OwnedFd, UpperError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(format!("opening the upper directory {}", path.display())))?;
    Ok(OwnedFd::from(f))
}

/// Opens subdirectory `name` of `dir` (never through a symlink).
pub fn open_dir(dir: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<OwnedFd, UpperError> {
    sys::openat(dir, &cname(name)?, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| changed_or(e, path))
}

/// Opens regular file `name` of `dir` for reading (never through a symlink, never blocking on a
/// fifo swapped in meanwhile) and checks that it is still the inode `id`.
pub fn open_file(dir: BorrowedFd<'_>, name: &[u8], id: (u64, u64), path: &[u8]) -> Result<File, UpperError> {
    let fd = sys::openat(dir, &cname(name)?, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)
        .map_err(|e| changed_or(e, path))?;
    let st = sys::fstat(fd.as_fd()).map_err(io(display(path)))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || (st.st_dev, st.st_ino) != id {
        return Err(UpperError::Changed(display(path)));
    }
    Ok(File::from(fd))
}

fn changed_or(e: io::Error, path: &[u8]) -> UpperError {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => UpperError::Changed(display(path)),
        _ => UpperError::Io { context: display(path), source: e },
    }
}

/// `/path` for messages.
pub fn display(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// Joins a relative path and a name.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The names in directory `dir`, sorted, `.` and `..` excluded.
fn names(dir: BorrowedFd<'_>, path: &[u8]) -> Result<Vec<Vec<u8>>, UpperError> {
    let fd = sys::openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io(display(path)))?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(|e| UpperError::Io { context: display(path), source: e.into() })?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(|e| UpperError::Io { context: display(path), source: e.into() })?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// All xattrs of the object at `at`: (user-visible ones sorted, internal ones).
fn xattrs(at: &sys::XattrPath, path: &[u8]) -> Result<(Xattrs, Xattrs), UpperError> {
    let list = match sys::listxattr(at) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => return Err(changed_or(e, path)),
    };
    let (mut visible, mut internal) = (Vec::new(), Vec::new());
    for key in list.split(|&c| c == 0).filter(|k| !k.is_empty()) {
        let value = match sys::getxattr(at, &cname(key)?) {
            Ok(v) => v,
            // Removed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(changed_or(e, path)),
        };
        if is_internal_xattr(key) {
            internal.push((key.to_vec(), value));
        } else {
            visible.push((key.to_vec(), value));
        }
    }
    visible.sort();
    Ok((visible, internal))
}

fn internal<'a>(list: &'a [(Vec<u8>, Vec<u8>)], suffix: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for (k, v) in list {
        for ns in [&b"trusted."[..], b"user."] {
            if k.len() == ns.len() + suffix.len() && k.starts_with(ns) && k.ends_with(suffix) {
                // trusted.* first (the root's namespace), then user.*.
                if found.is_none() || ns == b"trusted." {
                    found = Some(v.as_slice());
                }
            }
        }
    }
    found
}

fn parse_origin(v: &[u8]) -> Option<(u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (l, i) = s.split_once(':')?;
    Some((l.parse().ok()?, i.parse().ok()?))
}

/// Describes the object at `at` (a directory fd's own object, or a child).
fn describe(name: &[u8], st: libc::stat, at: &sys::XattrPath, path: &[u8]) -> Result<UpperEntry, UpperError> {
    let fmt = st.st_mode & libc::S_IFMT;
    // Whiteout devices carry no xattrs worth reading.
    if fmt == libc::S_IFCHR && st.st_rdev == 0 {
        return Ok(UpperEntry { name: name.to_vec(), kind: UpperKind::Whiteout, st, origin: None, xattrs: Vec::new() });
    }
    let (visible, int) = xattrs(at, path)?;
    let origin = internal(&int, b"layerfs.origin").and_then(parse_origin);
    let kind = match fmt {
        libc::S_IFDIR => {
            let opaque = internal(&int, b"overlay.opaque") == Some(b"y")
                || int.iter().any(|(k, v)| k == b"user.fuseoverlayfs.opaque" && v == b"y");
            UpperKind::Dir { opaque, redirect: internal(&int, b"overlay.redirect").map(<[u8]>::to_vec) }
        }
        libc::S_IFREG => {
            if st.st_size == 0 && internal(&int, b"overlay.whiteout").is_some() {
                UpperKind::Whiteout
            } else {
                UpperKind::File {
                    metacopy: internal(&int, b"overlay.metacopy").is_some(),
                    redirect: internal(&int, b"overlay.redirect").map(<[u8]>::to_vec),
                }
            }
        }
        libc::S_IFLNK => UpperKind::Symlink,
        libc::S_IFCHR => UpperKind::Special(Kind::CharDev),
        libc::S_IFBLK => UpperKind::Special(Kind::BlockDev),
        libc::S_IFIFO => UpperKind::Special(Kind::Fifo),
        libc::S_IFSOCK => UpperKind::Special(Kind::Socket),
        _ => return Err(UpperError::Io { context: display(path), source: io::Error::other("unknown file type") }),
    };
    Ok(UpperEntry { name: name.to_vec(), kind, st, origin, xattrs: visible })
}

/// The upper's root directory itself (its metadata, opacity).
pub fn root_entry(root: BorrowedFd<'_>) -> Result<UpperEntry, UpperError> {
    let st = sys::fstat(root).map_err(io("the upper directory"))?;
    let mut e = describe(b"", st, &sys::XattrPath::fd(root), b"")?;
    if let UpperKind::Dir { opaque, .. } = &mut e.kind {
        *opaque |= has_opaque_marker(root);
    }
    Ok(e)
}

/// Whether directory `dir` holds a `.wh..wh..opq` marker (it is then opaque).
pub fn has_opaque_marker(dir: BorrowedFd<'_>) -> bool {
    sys::fstatat(dir, c".wh..wh..opq").is_ok()
}

/// The entries of upper directory `dir` (at `path`), sorted by name, with the overlay markers
/// interpreted: `.wh.NAME` files become whiteouts of NAME (unless NAME itself exists), and
/// `.wh..wh.*` markers are skipped (see [`has_opaque_marker`]).
pub fn read_dir(dir: BorrowedFd<'_>, path: &[u8]) -> Result<Vec<UpperEntry>, UpperError> {
    let all = names(dir, path)?;
    let mut out: Vec<UpperEntry> = Vec::with_capacity(all.len());
    for name in &all {
        let c = cname(name)?;
        let st = match sys::fstatat(dir, &c) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // removed meanwhile
            Err(e) => return Err(UpperError::Io { context: display(&join(path, name)), source: e }),
        };
        if let Some(target) = name.strip_prefix(b".wh.")
            && !target.is_empty()
            && !target.starts_with(b".wh.")
        {
            if all.binary_search_by(|n| n.as_slice().cmp(target)).is_err() {
                out.push(UpperEntry {
                    name: target.to_vec(),
                    kind: UpperKind::Whiteout,
                    st,
                    origin: None,
                    xattrs: Vec::new(),
                });
            }
            continue;
        }
        if name.starts_with(b".wh..wh.") {
            // Other aufs/overlay metadata (`.wh..wh.plnk` ...): never content.
            continue;
        }
        let p = join(path, name);
        out.push(describe(name, st, &sys::XattrPath::child(dir, &c), &p)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The target of symlink `name` in `dir`.
pub fn read_link(dir: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<Vec<u8>, UpperError> {
    sys::readlinkat(dir, &cname(name)?).map_err(|e| changed_or(e, path))
}

/// Reads a file as exactly `size` bytes: holes (`SEEK_HOLE`/`SEEK_DATA`) are produced as zeros
/// without reading them, and a file that shrank meanwhile is padded with zeros (a file that grew
/// is cut): the layer gets the size that was listed, whatever a running container does.
pub struct SparseReader<'a> {
    file: File,
    pos: u64,
    size: u64,
    /// The current run: data up to `run_end` when `in_data`, else a hole up to `run_end`.
    run_end: u64,
    in_data: bool,
    /// Bytes read, for progress.
    counter: &'a dyn Fn(u64),
}

impl<'a> SparseReader<'a> {
    /// A reader of the first `size` bytes of `file`. Without `maybe_sparse` (a file whose
    /// allocated blocks cover its size), holes are not looked for.
    pub fn new(file: File, size: u64, maybe_sparse: bool, counter: &'a dyn Fn(u64)) -> Self {
        let run_end = if maybe_sparse { 0 } else { size };
        SparseReader { file, pos: 0, size, run_end, in_data: true, counter }
    }

    fn next_run(&mut self) {
        use nix::unistd::{Whence, lseek};
        let fd = self.file.as_fd();
        let pos = self.pos as i64;
        match lseek(fd, pos, Whence::SeekData) {
            Ok(d) if d as u64 > self.pos => {
                self.in_data = false;
                self.run_end = (d as u64).min(self.size);
            }
            Ok(_) => {
                self.in_data = true;
                let hole = lseek(fd, pos, Whence::SeekHole).map(|h| h as u64).unwrap_or(self.size);
                self.run_end = hole.clamp(self.pos + 1, self.size);
            }
            // ENXIO: no data after pos (a hole up to the end, or the file shrank).
            Err(nix::errno::Errno::ENXIO) => {
                self.in_data = false;
                self.run_end = self.size;
            }
            // No SEEK_DATA support: all data.
            Err(_) => {
                self.in_data = true;
                self.run_end = self.size;
            }
        }
    }
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.run_end {
            self.next_run();
        }
        let want = ((self.run_end - self.pos) as usize).min(buf.len());
        let n = if self.in_data {
            let n = std::os::unix::fs::FileExt::read_at(&self.file, &mut buf[..want], self.pos)?;
            if n == 0 {
                // Shrank meanwhile: zeros up to the listed size.
                self.in_data = false;
                self.run_end = self.size;
                buf[..want].fill(0);
                want
            } else {
                n
            }
        } else {
            buf[..want].fill(0);
            want
        };
        self.pos += n as u64;
        (self.counter)(n as u64);
        Ok(n)
    }
}

/// Major and minor numbers of a device.
pub fn rdev(st: &libc::stat) -> (u32, u32) {
    (nix::sys::stat::major(st.st_rdev) as u32, nix::sys::stat::minor(st.st_rdev) as u32)
}
