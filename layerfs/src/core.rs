//! The union core: lookup, attributes, readdir merge, whiteouts, opaque directories, copy-up,
//! and every namespace operation. No fuser types here: every method returns
//! `Result<T, Errno>`, so the union logic is unit-tested without mounting (see the tests at
//! the end, over [`crate::mem_lower::MemLower`]).
//!
//! See `layerfs/README.md` (ARCHITECTURE) for the on-disk format and the design of
//! directory rename (redirects), hard links (index) and inode numbers.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::dir_lower::{attr_from_stat, is_whiteout_stat};
use crate::error::{Errno, Result, SetupError};
use crate::ino::{Fh, Generation, Ino, LayerId, UpperIno, lower_ino, lower_parts, upper_ino};
use crate::inode::{Inode, InodeTable, LowerRef, Lowers, Name, Node, Pos, State, lock};
use crate::lower::{FileKind, Lower, LowerAttr, LowerDirEntry, LowerIno, LowerLookup, Timespec};
use crate::sys::{self, SetTime};
use crate::upper::{Upper, is_internal_xattr, remove_tree_contents};

/// Longest name component accepted (names over it get `ENAMETOOLONG`).
pub const NAME_MAX: usize = 255;

/// The caller of a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    /// Caller uid (new files belong to it).
    pub uid: u32,
    /// Caller gid.
    pub gid: u32,
    /// Caller pid.
    pub pid: u32,
}

/// Attributes as reported to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Node id and `st_ino`.
    pub ino: Ino,
    /// Generation of the node id.
    pub generation: Generation,
    /// Type.
    pub kind: FileKind,
    /// Permission bits (07777).
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Device number.
    pub rdev: u32,
    /// Access time.
    pub atime: Timespec,
    /// Modification time.
    pub mtime: Timespec,
    /// Change time.
    pub ctime: Timespec,
}

/// One directory entry of a readdir snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name.
    pub name: Vec<u8>,
    /// `d_ino` (equal to the `st_ino` a lookup gives).
    pub ino: Ino,
    /// Type.
    pub kind: FileKind,
}

/// Part of a directory listing (see [`Union::readdir`]).
#[derive(Clone, Debug)]
pub struct DirPage {
    /// The whole listing ("." and ".." first, then in the order of their offsets).
    pub entries: Arc<Vec<DirEntry>>,
    /// Index of the first entry to return.
    pub start: usize,
    keys: Arc<Vec<u64>>,
}

impl DirPage {
    /// The offset that continues the listing after `entries[i]`.
    pub fn offset(&self, i: usize) -> u64 {
        self.keys[i]
    }
}

/// The offset of a directory entry: a function of its name alone (1 and 2 for "." and "..";
/// names hash to `3..2^63`), so an offset means the same in every listing of a directory and
/// a listing continued from it skips and repeats nothing, however the directory changed and
/// whichever listing the offset came from (the kernel's cache of an older one included).
fn name_key(name: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    match name {
        b"." => 1,
        b".." => 2,
        _ => {
            // SipHash with fixed keys: the same in every listing of this process.
            let mut h = std::hash::DefaultHasher::new();
            name.hash(&mut h);
            3 + h.finish() % ((1 << 63) - 3)
        }
    }
}

/// A listing in offset order, with the offsets.
type Listing = (Arc<Vec<DirEntry>>, Arc<Vec<u64>>);

/// Recent listings by directory (a leaf lock), so that a reader going on from an offset finds
/// the listing without merging the directory again.
struct Listings {
    map: lru::LruCache<(Ino, Generation), Listing>,
    entries: usize,
}

/// At most this many entries are held in listings (beyond it the oldest go).
const LISTING_ENTRIES: usize = 1 << 18;

impl Listings {
    fn new() -> Listings {
        Listings { map: lru::LruCache::unbounded(), entries: 0 }
    }

    fn get(&mut self, dir: (Ino, Generation)) -> Option<Listing> {
        self.map.get(&dir).cloned()
    }

    fn remove(&mut self, dir: (Ino, Generation)) {
        if let Some((l, _)) = self.map.pop(&dir) {
            self.entries -= l.len();
        }
    }

    fn insert(&mut self, dir: (Ino, Generation), l: Listing) {
        self.entries += l.0.len();
        if let Some((_, (old, _))) = self.map.push(dir, l) {
            self.entries -= old.len();
        }
        while self.entries > LISTING_ENTRIES && self.map.len() > 1 {
            if let Some((_, (old, _))) = self.map.pop_lru() {
                self.entries -= old.len();
            }
        }
    }
}

/// What `setattr` changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New permission bits (type bits ignored).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// Open handle the change came through (ftruncate, fchmod).
    pub fh: Option<Fh>,
    /// A size change by a caller that may not keep set-id bits: they are cleared.
    pub kill_setid: bool,
}

/// Filesystem statistics.
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Identity of a file's data source, for sharing one passthrough backing id per inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackingKey {
    /// Inode.
    pub ino: Ino,
    /// Its generation.
    pub generation: Generation,
    /// Where the data is.
    pub source: BackingSource,
}

/// The file holding an inode's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackingSource {
    /// The upper copy.
    Upper,
    /// A lower file (immutable: its backing id may outlive the opens, see `fuse.rs`).
    Lower {
        /// Layer position.
        layer: usize,
        /// Inode in the layer.
        ino: LowerIno,
    },
}

/// Result of `open`/`create`.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    /// The handle.
    pub fh: Fh,
    /// The data cannot change behind the kernel's back (lower-only): keep the page cache.
    pub keep_cache: bool,
    /// When the data is a file of its own: the key for passthrough.
    pub backing: Option<BackingKey>,
    /// The data lives inline in a packed layer's mapping, one page cache shared by every mount
    /// of the layer: a per-mount kernel cache of it would only duplicate those pages.
    pub inline: bool,
    /// Open for writing a file with set-id bits: its writes must reach the daemon (no
    /// passthrough), which clears the bits when the writer may not keep them (see
    /// [`Union::write`]).
    pub setid: bool,
}

/// Mode bits a write or truncation by a caller without CAP_FSETID clears: set-user-id, and
/// set-group-id when group execution is on (without it the bit means mandatory locking).
fn killed_setid_bits(mode: u32) -> u32 {
    let mut kill = mode & libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    kill
}

enum FileSrc {
    Upper(File),
    /// A lower file; `file` is its backing file, opened on first use (an open whose backing
    /// id the kernel still holds never needs it).
    Lower {
        layer: usize,
        ino: LowerIno,
        backed: bool,
        file: OnceLock<File>,
    },
}

/// An open file (directories have no handle: see [`Union::readdir`]).
struct Handle {
    /// The inode (`None` for a lower node opened for reading: it stays one).
    inode: Option<Arc<Inode>>,
    src: FileSrc,
    writable: bool,
}

/// How to reach an upper object: a directory fd and a name, or an fd to the object itself.
enum Loc {
    At(Arc<OwnedFd>, CString),
    Fd(Arc<OwnedFd>),
}

impl Loc {
    fn dir_name(&self) -> (BorrowedFd<'_>, &CStr) {
        match self {
            Loc::At(d, n) => (d.as_fd(), n.as_c_str()),
            Loc::Fd(f) => (f.as_fd(), c""),
        }
    }
    fn stat(&self) -> Result<sys::Stat> {
        let (d, n) = self.dir_name();
        Ok(sys::fstatat(d, n)?)
    }
    fn xattr(&self) -> sys::XattrPath {
        match self {
            Loc::At(d, n) => sys::XattrPath::child(d.as_fd(), n),
            Loc::Fd(f) => sys::XattrPath::fd(f.as_fd()),
        }
    }
    fn open(&self, flags: i32) -> Result<File> {
        match self {
            Loc::At(d, n) => Ok(File::from(sys::openat(d.as_fd(), n, flags, 0)?)),
            Loc::Fd(f) => Ok(File::from(sys::reopen(f.as_fd(), flags)?)),
        }
    }
    fn opath(&self) -> Result<OwnedFd> {
        match self {
            Loc::At(d, n) if !n.is_empty() => Ok(sys::openat(d.as_fd(), n, libc::O_PATH, 0)?),
            Loc::At(d, _) => Ok(nix::unistd::dup(d.as_fd())?),
            Loc::Fd(f) => Ok(nix::unistd::dup(f.as_fd())?),
        }
    }
}

/// Outcome of resolving a name in a merged directory.
struct Found {
    kind: FileKind,
    ino: Ino,
    state: State,
}

/// The union filesystem core.
pub struct Union {
    layers: Vec<Arc<dyn Lower>>,
    upper: Option<Upper>,
    upper_root: Option<Arc<OwnedFd>>,
    /// `WORK/index` (hard-link index), shared with `Loc`s.
    index_fd: Option<Arc<OwnedFd>>,
    table: InodeTable,
    root: Arc<Inode>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    dir_fds: Mutex<lru::LruCache<Ino, (Generation, Arc<OwnedFd>)>>,
    listings: Mutex<Listings>,
}

impl std::fmt::Debug for Union {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Union")
            .field("layers", &self.layers.len())
            .field("upper", &self.upper.is_some())
            .field("table", &self.table)
            .finish()
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Names the upper format cannot hold as plain entries.
fn check_new_name(name: &[u8]) -> Result<()> {
    check_name(name)?;
    if name.starts_with(b".wh.") {
        // `.wh.` names are whiteouts in layer tarballs and in fuse-overlayfs uppers.
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn join(base: &[u8], name: &[u8]) -> Vec<u8> {
    if base.is_empty() {
        name.to_vec()
    } else {
        let mut v = base.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

fn ts_of(st_sec: i64, st_nsec: i64) -> Timespec {
    Timespec { sec: st_sec, nsec: st_nsec as u32 }
}

fn to_settime(t: Timespec) -> SetTime {
    SetTime::At { sec: t.sec, nsec: t.nsec }
}

fn parse_origin(v: &[u8]) -> Option<(LayerId, LowerIno)> {
    let s = std::str::from_utf8(v).ok()?;
    let (l, i) = s.split_once(':')?;
    Some((LayerId(l.parse().ok()?), LowerIno(i.parse().ok()?)))
}

fn is_enoent(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

impl Union {
    /// Builds the union of `layers` (topmost first) under `upper` (`None`: read-only).
    pub fn new(layers: Vec<Arc<dyn Lower>>, upper: Option<Upper>) -> std::result::Result<Union, SetupError> {
        if layers.len() > crate::ino::MAX_LAYERS {
            return Err(SetupError::TooManyLayers(layers.len()));
        }
        let dense: Vec<(LayerId, u64)> = (0..layers.len())
            .filter(|&i| layers[i].finds_names_by_inode())
            .filter_map(|i| Some((LayerId((layers.len() - 1 - i) as u32), layers[i].ino_bound()?)))
            .collect();
        let table = InodeTable::with_dense_layers(&dense);
        let upper_root = match &upper {
            Some(u) => Some(Arc::new(nix::unistd::dup(u.root.as_fd()).map_err(|e| SetupError::Open {
                what: "upper directory",
                path: "(fd)".into(),
                source: e.into(),
            })?)),
            None => None,
        };
        let index_fd = match &upper {
            Some(u) => Some(Arc::new(nix::unistd::dup(u.index()).map_err(|e| SetupError::Open {
                what: "index directory",
                path: "(fd)".into(),
                source: e.into(),
            })?)),
            None => None,
        };
        let root_opaque = match (&upper, &upper_root) {
            (Some(u), Some(r)) => u.is_opaque(&sys::XattrPath::fd(r.as_fd())),
            _ => false,
        };
        let mut lowers = Lowers::new();
        if !root_opaque {
            for (i, l) in layers.iter().enumerate() {
                lowers.push(LowerRef { layer: i, ino: l.root() });
                if l.is_opaque(l.root()).unwrap_or(false) {
                    break;
                }
            }
        }
        let state = State {
            upper: upper.is_some(),
            lowers,
            origin: None,
            impure: true,
            lower_path: Some(Vec::new()),
            indexed: false,
            metacopy: false,
        };
        let root = table.insert_root(Inode::new(
            Ino::ROOT,
            table.new_generation(),
            FileKind::Directory,
            Pos { parent: None, name: Name::new(), detached: None },
            state,
        ));
        Ok(Union {
            layers,
            upper,
            upper_root,
            index_fd,
            table,
            root,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dir_fds: Mutex::new(lru::LruCache::new(NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN))),
            listings: Mutex::new(Listings::new()),
        })
    }

    /// The inode table (for the adapter's forget handling and tests).
    pub fn table(&self) -> &InodeTable {
        &self.table
    }

    /// Whether there is an upper directory.
    pub fn writable(&self) -> bool {
        self.upper.is_some()
    }

    fn upper(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(Errno::EROFS)
    }

    fn layer_id(&self, pos: usize) -> LayerId {
        LayerId((self.layers.len() - 1 - pos) as u32)
    }

    fn lower_ref_ino(&self, r: LowerRef) -> Ino {
        lower_ino(self.layer_id(r.layer), r.ino.0)
    }

    /// What `ino` stands for (see [`Node`]): read-only operations serve lower nodes as they
    /// are.
    fn node(&self, ino: Ino) -> Result<Node> {
        if ino == Ino::ROOT {
            return Ok(Node::Full(self.root.clone()));
        }
        self.table.node(ino).ok_or(Errno::ESTALE)
    }

    /// The full inode of `ino`; a lower node becomes one (its name found again in its
    /// parent's lower directory).
    fn inode(&self, ino: Ino) -> Result<Arc<Inode>> {
        match self.node(ino)? {
            Node::Full(inode) => Ok(inode),
            Node::Lower { parent, kind } => {
                let lr = self.lower_node_ref(ino)?;
                // The parent first (a lower directory node becomes a full inode too).
                let parent = self.inode(parent)?;
                let ps = parent.state().clone();
                let dir = ps.lowers.iter().find(|r| r.layer == lr.layer).copied().ok_or(Errno::ESTALE)?;
                let name = self.layers[lr.layer].name_of(dir.ino, lr.ino)?.ok_or(Errno::ESTALE)?;
                let mut state = self.lower_node_state(lr);
                if kind.is_dir() {
                    state.lower_path = ps.lower_path.as_ref().map(|p| join(p, &name));
                }
                let pos = Pos { parent: Some(parent), name: Name::from_vec(name), detached: None };
                self.table.make_full(ino, || Inode::new(ino, Generation::LOWER, kind, pos, state)).ok_or(Errno::ESTALE)
            }
        }
    }

    /// The full inode held for the object `found` at `name` in `parent`, if the kernel holds
    /// one (a lower node becomes one, named from the lookup at hand); dead inodes and inodes of
    /// another type do not count.
    fn held_inode(&self, parent: &Arc<Inode>, name: &[u8], found: &Found) -> Option<Arc<Inode>> {
        let inode = match self.table.node(found.ino)? {
            Node::Full(inode) => inode,
            Node::Lower { kind, .. } => {
                if kind != found.kind {
                    return None;
                }
                let pos = Pos { parent: Some(parent.clone()), name: Name::from_slice(name), detached: None };
                let state = found.state.clone();
                self.table.make_full(found.ino, || Inode::new(found.ino, Generation::LOWER, kind, pos, state))?
            }
        };
        (inode.kind == found.kind && !inode.is_dead()).then_some(inode)
    }

    /// The union state of a lower node in layer position and inode `lr` (without the lower path
    /// of a directory: that needs its name and its parent's).
    fn lower_node_state(&self, lr: LowerRef) -> State {
        State { origin: Some((self.layer_id(lr.layer), lr.ino)), lowers: [lr].into(), ..State::default() }
    }

    /// The layer position and inode of a lower node.
    fn lower_node_ref(&self, ino: Ino) -> Result<LowerRef> {
        let (layer, n) = lower_parts(ino).ok_or(Errno::ESTALE)?;
        let pos = (self.layers.len() - 1).checked_sub(layer.0 as usize).ok_or(Errno::ESTALE)?;
        Ok(LowerRef { layer: pos, ino: LowerIno(n) })
    }

    // ----- upper addressing -------------------------------------------------------------

    fn upper_dir_fd(&self, inode: &Inode) -> Result<Arc<OwnedFd>> {
        if inode.ino == Ino::ROOT {
            return self.upper_root.clone().ok_or(Errno::EROFS);
        }
        if let Some((g, fd)) = lock(&self.dir_fds).get(&inode.ino)
            && *g == inode.generation
        {
            return Ok(fd.clone());
        }
        let pos = inode.pos();
        if let Some(d) = pos.detached {
            return Ok(d);
        }
        let parent = pos.parent.ok_or(Errno::ESTALE)?;
        let pfd = self.upper_dir_fd(&parent)?;
        let fd = Arc::new(sys::openat(pfd.as_fd(), &sys::cstr(&pos.name)?, libc::O_PATH | libc::O_DIRECTORY, 0)?);
        lock(&self.dir_fds).put(inode.ino, (inode.generation, fd.clone()));
        Ok(fd)
    }

    fn index_fd(&self) -> Result<Arc<OwnedFd>> {
        self.index_fd.clone().ok_or(Errno::EROFS)
    }

    fn forget_dir_fd(&self, ino: Ino) {
        lock(&self.dir_fds).pop(&ino);
    }

    fn upper_loc(&self, inode: &Inode) -> Result<Loc> {
        if inode.ino == Ino::ROOT {
            return Ok(Loc::Fd(self.upper_root.clone().ok_or(Errno::EROFS)?));
        }
        let pos = inode.pos();
        if let Some(d) = pos.detached {
            return Ok(Loc::Fd(d));
        }
        let parent = pos.parent.ok_or(Errno::ESTALE)?;
        Ok(Loc::At(self.upper_dir_fd(&parent)?, sys::cstr(&pos.name)?))
    }

    fn read_origin(&self, at: &sys::XattrPath) -> Option<(LayerId, LowerIno)> {
        let u = self.upper.as_ref()?;
        parse_origin(&u.get(at, &u.names.origin)?)
    }

    fn upper_wh_file(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
        let mut wh = b".wh.".to_vec();
        wh.extend_from_slice(name);
        match sys::cstr(&wh) {
            Ok(c) => sys::fstatat(dir, &c).is_ok(),
            Err(_) => false,
        }
    }

    // ----- lower merging -----------------------------------------------------------------

    /// The lower directories named `name` under `lowers`, top first, stopping at the first
    /// whiteout, non-directory or opaque directory.
    fn merge_lower_dirs(&self, lowers: &[LowerRef], name: &[u8]) -> Result<Lowers> {
        let mut out = Lowers::new();
        for lr in lowers {
            let l = &self.layers[lr.layer];
            match l.lookup(lr.ino, name)? {
                LowerLookup::NotFound => continue,
                LowerLookup::Whiteout => break,
                LowerLookup::Found { ino, kind } => {
                    if !kind.is_dir() {
                        break;
                    }
                    out.push(LowerRef { layer: lr.layer, ino });
                    // The lowest layer's opacity hides nothing: skip the question.
                    if lr.layer + 1 < self.layers.len() && l.is_opaque(ino)? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn root_lowers(&self) -> Lowers {
        let mut out = Lowers::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.push(LowerRef { layer: i, ino: l.root() });
            if l.is_opaque(l.root()).unwrap_or(false) {
                break;
            }
        }
        out
    }

    /// Lower directories at `path` (components separated by `/`) from the layer roots.
    fn lower_dirs_at(&self, path: &[u8]) -> Result<Lowers> {
        let mut cur = self.root_lowers();
        // Redirects come from the upper (written by us): still, never follow `.`/`..`.
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b"." && *c != b"..") {
            if cur.is_empty() {
                break;
            }
            cur = self.merge_lower_dirs(&cur, comp)?;
        }
        Ok(cur)
    }

    /// The first answer of the lower layers for `name` (what an upper entry there would hide).
    fn lower_first(&self, lowers: &[LowerRef], name: &[u8]) -> Result<Option<FileKind>> {
        for lr in lowers {
            match self.layers[lr.layer].lookup(lr.ino, name)? {
                LowerLookup::NotFound => continue,
                LowerLookup::Whiteout => return Ok(None),
                LowerLookup::Found { kind, .. } => return Ok(Some(kind)),
            }
        }
        Ok(None)
    }

    // ----- lookup ------------------------------------------------------------------------

    /// Resolves `name` in directory `parent`, whose union state is `ps`.
    fn resolve(&self, parent: &Inode, ps: &State, name: &[u8]) -> Result<Option<Found>> {
        if parent.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let cname = sys::cstr(name)?;
        if ps.upper {
            let pfd = self.upper_dir_fd(parent)?;
            match sys::fstatat(pfd.as_fd(), &cname) {
                Ok(st) if is_whiteout_stat(&st) => return Ok(None),
                Ok(st) => return self.resolve_upper(&pfd, &cname, st, ps, name).map(Some),
                Err(e) if is_enoent(&e) => {
                    if !ps.lowers.is_empty() && Self::upper_wh_file(pfd.as_fd(), name) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.resolve_lowers(ps, name)
    }

    /// Resolves `name` in the lower parts of a directory whose union state is `ps` (the part
    /// of [`Union::resolve`] after the upper directory).
    fn resolve_lowers(&self, ps: &State, name: &[u8]) -> Result<Option<Found>> {
        for (i, lr) in ps.lowers.iter().enumerate() {
            let l = &self.layers[lr.layer];
            match l.lookup(lr.ino, name)? {
                LowerLookup::NotFound => continue,
                LowerLookup::Whiteout => return Ok(None),
                LowerLookup::Found { ino, kind } => {
                    let r = LowerRef { layer: lr.layer, ino };
                    let mut state = State { origin: Some((self.layer_id(lr.layer), ino)), ..State::default() };
                    if kind.is_dir() {
                        state.lowers.push(r);
                        if i + 1 < ps.lowers.len() && !l.is_opaque(ino)? {
                            state.lowers.extend(self.merge_lower_dirs(&ps.lowers[i + 1..], name)?);
                        }
                        state.lower_path = ps.lower_path.as_ref().map(|p| join(p, name));
                    } else {
                        state.lowers.push(r);
                    }
                    return Ok(Some(Found { kind, ino: self.lower_ref_ino(r), state }));
                }
            }
        }
        Ok(None)
    }

    fn resolve_upper(&self, pfd: &Arc<OwnedFd>, cname: &CStr, st: sys::Stat, ps: &State, name: &[u8]) -> Result<Found> {
        let u = self.upper()?;
        let kind = FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)?;
        let at = sys::XattrPath::child(pfd.as_fd(), cname);
        let mut state = State { upper: true, ..State::default() };
        let origin = if kind.is_dir() || ps.impure { self.read_origin(&at) } else { None };
        if kind.is_dir() {
            state.impure = u.get(&at, &u.names.impure).as_deref() == Some(b"y");
            // A redirect counts wherever the directory sits: a merged directory moved into a
            // directory with no lower parts (`mkdir new; mv lowerdir new/`) keeps its lower
            // contents through it.
            let redirect = Self::redirect_path(u, &at, ps.lower_path.as_deref());
            if (redirect.is_some() || !ps.lowers.is_empty()) && !u.is_opaque(&at) {
                if let Some(path) = redirect {
                    state.lowers = self.lower_dirs_at(&path)?;
                    state.lower_path = Some(path);
                } else {
                    state.lowers = self.merge_lower_dirs(&ps.lowers, name)?;
                    state.lower_path = ps.lower_path.as_ref().map(|p| join(p, name));
                }
            }
        } else if st.st_nlink > 1 && origin.is_some() && u.get(&at, &u.names.nlink).is_some() {
            // Linked into the hard-link index (copy-up of a lower hard link): the index holds
            // one of the links. A copy-up of a file with one link that was `ln`ed since has
            // more links but no index entry, and counts them all.
            state.indexed = true;
        } else if kind == FileKind::Regular && u.get(&at, &u.names.metacopy).is_some() {
            // Data still in the lower file at the same path.
            for lr in &ps.lowers {
                match self.layers[lr.layer].lookup(lr.ino, name)? {
                    LowerLookup::NotFound => continue,
                    LowerLookup::Found { ino, kind: FileKind::Regular } => {
                        state.lowers.push(LowerRef { layer: lr.layer, ino });
                        state.metacopy = true;
                        break;
                    }
                    _ => break,
                }
            }
            if !state.metacopy {
                tracing::warn!(name = %String::from_utf8_lossy(name), "metacopy without lower data");
            }
        }
        state.origin = origin;
        let ino = match origin {
            Some((l, i)) => lower_ino(l, i.0),
            None if kind.is_dir() && !state.lowers.is_empty() => self.lower_ref_ino(state.lowers[0]),
            None => upper_ino(UpperIno(st.st_ino)),
        };
        Ok(Found { kind, ino, state })
    }

    /// Where the redirect of upper directory `at` points, from the lower roots (a relative
    /// redirect is taken from `base`, the lower path of its parent).
    fn redirect_path(u: &Upper, at: &sys::XattrPath, base: Option<&[u8]>) -> Option<Vec<u8>> {
        let redirect = u.get(at, &u.names.redirect)?;
        Some(match redirect.strip_prefix(b"/") {
            Some(abs) => abs.to_vec(),
            None => join(base.unwrap_or(b""), &redirect),
        })
    }

    fn instantiate(&self, parent: &Arc<Inode>, name: &[u8], found: Found, count: u64) -> Arc<Inode> {
        let pos = Pos { parent: Some(parent.clone()), name: Name::from_slice(name), detached: None };
        let Found { kind, ino, state } = found;
        let pos2 = pos.clone();
        let state2 = state.clone();
        self.table.get_or_insert(
            ino,
            kind,
            count,
            move |existing| {
                let mut st = existing.state();
                // Never downgrade: a lower-only alias of a file that has an upper copy (hard
                // link) keeps addressing the copy.
                if state2.upper || !st.upper {
                    *st = state2;
                    drop(st);
                    existing.set_pos(|p| *p = pos2);
                }
            },
            move |g| Inode::new(ino, g, kind, pos, state),
        )
    }

    /// Looks `name` up in `parent`; adds one kernel lookup to the result.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        if let Node::Lower { kind, .. } = self.node(parent)? {
            // A lower directory node: only its layer can answer, and it stays a lower node
            // unless the answer needs a full inode (a hard link).
            if !kind.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            let ps = self.lower_node_state(self.lower_node_ref(parent)?);
            let found = self.resolve_lowers(&ps, name)?.ok_or(Errno::ENOENT)?;
            if let Some(attr) = self.lookup_lower_node(parent, &found)? {
                return Ok(attr);
            }
        }
        let p = self.inode(parent)?;
        let ps = p.state().clone();
        let found = self.resolve(&p, &ps, name)?.ok_or(Errno::ENOENT)?;
        if let Some(attr) = self.lookup_lower_node(p.ino, &found)? {
            return Ok(attr);
        }
        let upper_found = found.state.upper;
        let inode = self.instantiate(&p, name, found, 1);
        // A lower alias of a hard link whose copy exists: in this mount the inode already
        // addresses the copy (through another name); after a remount the copy is found in the
        // index. Either way the alias shares the copy's data and attributes without being
        // linked into its own directory: a lookup changes nothing in the upper (the parent's
        // times stay). The name is linked up when it is itself changed (see `name_up`).
        let attr = self.attr_of(&inode)?;
        if !upper_found && attr.nlink > 1 && inode.kind == FileKind::Regular && self.upper.is_some() {
            self.attach_index(&inode)?;
            return self.attr_of(&inode);
        }
        Ok(attr)
    }

    /// Holds `found` (looked up in `parent`) as a lower node (see [`Node`]) when it is one: a
    /// directory or a file with one link only in one lower layer (one that finds names by
    /// inode), whose node id names its layer and inode.
    fn lookup_lower_node(&self, parent: Ino, found: &Found) -> Result<Option<Attr>> {
        let s = &found.state;
        if s.upper || s.lowers.len() != 1 || s.metacopy {
            return Ok(None);
        }
        let lr = s.lowers[0];
        if self.lower_node_ref(found.ino).ok() != Some(lr) || !self.layers[lr.layer].finds_names_by_inode() {
            return Ok(None);
        }
        let a = self.layers[lr.layer].getattr(lr.ino)?;
        if a.nlink != 1 && !found.kind.is_dir() {
            return Ok(None);
        }
        if self.table.insert_lower(found.ino, found.kind, parent, 1).is_none() {
            return Ok(None);
        }
        Ok(Some(self.attr_from_lower(found.ino, Generation::LOWER, found.kind, &a, false)))
    }

    /// Points a lower-only inode at its copy in the hard-link index, if there is one.
    fn attach_index(&self, inode: &Inode) -> Result<()> {
        let u = self.upper()?;
        let mut s = inode.state();
        let Some(o) = s.origin.filter(|_| !s.upper) else { return Ok(()) };
        let fd = match sys::openat(self.index_fd()?.as_fd(), &Self::index_key(o), libc::O_PATH, 0) {
            Ok(fd) => Arc::new(fd),
            Err(e) if is_enoent(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        s.indexed = u.get(&sys::XattrPath::fd(fd.as_fd()), &u.names.nlink).is_some();
        s.upper = true;
        s.metacopy = false;
        s.lowers.clear();
        inode.set_pos(|p| p.detached = Some(fd));
        Ok(())
    }

    /// Makes sure the object at `name` in `parent` (`inode`) has an upper entry under that
    /// very name: copy-up, and for a name of a lower hard link whose copy sits under another
    /// name (or in the index), a link to that copy. Done before an operation changes the name.
    fn name_up(&self, parent: &Arc<Inode>, name: &[u8], inode: &Arc<Inode>) -> Result<()> {
        self.copy_up(inode)?;
        if inode.kind == FileKind::Regular {
            let s = parent.state().clone();
            if self.resolve(parent, &s, name)?.is_some_and(|f| !f.state.upper) {
                self.link_alias_up(parent, name, inode)?;
            }
        }
        Ok(())
    }

    fn index_key(o: (LayerId, LowerIno)) -> CString {
        CString::new(format!("{}-{}", o.0.0, o.1.0)).unwrap_or_default()
    }

    /// Where to link an upper object from: its index entry when it has one (by name: no
    /// `linkat(AT_EMPTY_PATH)`, which needs CAP_DAC_READ_SEARCH), else its upper location.
    fn link_source(&self, inode: &Inode) -> Result<Loc> {
        let (indexed, origin) = {
            let s = inode.state();
            (s.indexed, s.origin)
        };
        match origin {
            Some(o) if indexed => Ok(Loc::At(self.index_fd()?, Self::index_key(o))),
            _ => self.upper_loc(inode),
        }
    }

    fn link_alias_up(&self, parent: &Arc<Inode>, name: &[u8], inode: &Arc<Inode>) -> Result<()> {
        self.copy_up(parent)?;
        let mut pg = parent.state();
        let src = self.link_source(inode)?;
        let pfd = self.upper_dir_fd(parent)?;
        let (sd, sn) = src.dir_name();
        let cname = sys::cstr(name)?;
        match sys::fstatat(pfd.as_fd(), &cname) {
            Ok(_) => return Ok(()),
            Err(e) if is_enoent(&e) => {}
            Err(e) => return Err(e.into()),
        }
        sys::linkat(sd, sn, pfd.as_fd(), &cname)?;
        self.mark_impure_locked(parent, &mut pg, &pfd)?;
        Ok(())
    }

    // ----- attributes --------------------------------------------------------------------

    fn attr_from_lower(
        &self,
        ino: Ino,
        generation: Generation,
        kind: FileKind,
        a: &LowerAttr,
        merged_dir: bool,
    ) -> Attr {
        Attr {
            ino,
            generation,
            kind,
            perm: (a.mode & 0o7777) as u16,
            nlink: if merged_dir { 1 } else { a.nlink },
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            blocks: a.blocks,
            rdev: a.rdev as u32,
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
        }
    }

    fn attr_from_stat(&self, inode: &Inode, st: &sys::Stat, s: &State) -> Attr {
        let mut a = self.attr_from_lower(inode.ino, inode.generation, inode.kind, &attr_from_stat(st), false);
        if s.metacopy
            && let Some(lr) = s.lowers.first()
            && let Ok(la) = self.layers[lr.layer].getattr(lr.ino)
        {
            a.blocks = la.blocks;
        }
        if inode.kind.is_dir() && !s.lowers.is_empty() {
            a.nlink = 1;
        } else if s.indexed && st.st_nlink > 1 {
            a.nlink = st.st_nlink as u32 - 1;
            if let Some(u) = &self.upper
                && let Ok(loc) = self.upper_loc(inode)
                && let Some(v) = u.get(&loc.xattr(), &u.names.nlink)
                && let Some(n) = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok())
            {
                a.nlink = n;
            }
        }
        a
    }

    /// Attributes of `inode`.
    fn attr_of(&self, inode: &Inode) -> Result<Attr> {
        let s = inode.state().clone();
        if s.upper {
            let st = self.upper_loc(inode)?.stat()?;
            return Ok(self.attr_from_stat(inode, &st, &s));
        }
        let lr = s.lowers.first().ok_or(Errno::ESTALE)?;
        let a = self.layers[lr.layer].getattr(lr.ino)?;
        let merged_dir = inode.kind.is_dir() && s.lowers.len() > 1;
        let mut attr = self.attr_from_lower(inode.ino, inode.generation, inode.kind, &a, merged_dir);
        if inode.is_dead() && !inode.kind.is_dir() {
            attr.nlink = 0;
        }
        Ok(attr)
    }

    /// `getattr`; with an open handle, asks the open file (works for unlinked files).
    pub fn getattr(&self, ino: Ino, fh: Option<Fh>) -> Result<Attr> {
        if let Some(fh) = fh
            && let Ok(f) = self.handle(fh)
            && let FileSrc::Upper(file) = &f.src
            && let Some(inode) = f.inode.as_ref().filter(|i| i.ino == ino)
        {
            let st = sys::fstat(file.as_fd())?;
            let s = inode.state().clone();
            return Ok(self.attr_from_stat(inode, &st, &s));
        }
        match self.node(ino)? {
            Node::Full(inode) => self.attr_of(&inode),
            Node::Lower { kind, .. } => {
                let lr = self.lower_node_ref(ino)?;
                let a = self.layers[lr.layer].getattr(lr.ino)?;
                Ok(self.attr_from_lower(ino, Generation::LOWER, kind, &a, false))
            }
        }
    }

    /// Drops kernel lookups.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino != Ino::ROOT {
            self.table.forget(ino, n);
        }
    }

    // ----- copy-up -----------------------------------------------------------------------

    /// Makes sure `inode` exists in the upper directory (and so do its ancestors).
    pub fn copy_up(&self, inode: &Arc<Inode>) -> Result<()> {
        self.copy_up_inner(inode, false)
    }

    /// Copy-up for a metadata change: regular files get a metadata-only copy (see
    /// `upper.rs`); everything else a full one.
    pub fn copy_up_meta(&self, inode: &Arc<Inode>) -> Result<()> {
        self.copy_up_inner(inode, true)
    }

    fn copy_up_inner(&self, inode: &Arc<Inode>, meta_only: bool) -> Result<()> {
        self.upper()?;
        {
            let s = inode.state();
            if s.upper && (!s.metacopy || meta_only) {
                return Ok(());
            }
        }
        if inode.state().upper {
            let mut cs = inode.state();
            if !cs.metacopy {
                return Ok(());
            }
            return self.finish_metacopy(inode, &mut cs);
        }
        loop {
            let pos = inode.pos();
            let parent = pos.parent.clone().ok_or(Errno::ESTALE)?;
            self.copy_up(&parent)?;
            // Lock order: parent, then child.
            let mut ps = parent.state();
            let mut cs = inode.state();
            if cs.upper {
                return Ok(());
            }
            let now = inode.pos();
            if !now.parent.as_ref().is_some_and(|p| Arc::ptr_eq(p, &parent)) || now.name != pos.name {
                continue; // renamed meanwhile
            }
            return self.copy_up_locked(&parent, &mut ps, inode, &mut cs, &now.name, meta_only);
        }
    }

    /// Copies the data of a metadata-only copy into the upper file in place, then drops the
    /// metacopy mark (until then the lower data stays authoritative: crash-safe).
    fn finish_metacopy(&self, inode: &Inode, cs: &mut State) -> Result<()> {
        let u = self.upper()?;
        let lr = *cs.lowers.first().ok_or(Errno::EIO)?;
        let loc = self.upper_loc(inode)?;
        let st = loc.stat()?;
        let file = loc.open(libc::O_WRONLY)?;
        let size = self.layers[lr.layer].getattr(lr.ino)?.size;
        self.copy_data(lr, size, &file)?;
        file.set_len(st.st_size as u64)?;
        drop(file);
        let (d, n) = loc.dir_name();
        sys::utimensat(
            d,
            n,
            Some(to_settime(ts_of(st.st_atime, st.st_atime_nsec))),
            Some(to_settime(ts_of(st.st_mtime, st.st_mtime_nsec))),
        )?;
        u.remove(&loc.xattr(), &u.names.metacopy)?;
        cs.metacopy = false;
        cs.lowers.clear();
        Ok(())
    }

    fn copy_up_locked(
        &self,
        parent: &Inode,
        ps: &mut State,
        inode: &Inode,
        cs: &mut State,
        name: &[u8],
        meta_only: bool,
    ) -> Result<()> {
        let u = self.upper()?;
        let lr = *cs.lowers.first().ok_or(Errno::ESTALE)?;
        let lower = &self.layers[lr.layer];
        let a = lower.getattr(lr.ino)?;
        let metacopy = meta_only && inode.kind == FileKind::Regular && a.nlink <= 1 && a.size > 0;
        let pfd = self.upper_dir_fd(parent)?;
        let cname = sys::cstr(name)?;
        let pst = sys::fstat(pfd.as_fd())?;
        let origin = cs.origin.unwrap_or((self.layer_id(lr.layer), lr.ino));
        let work = u.work();
        let tmp = u.tmp_name();

        let hardlinked = inode.kind == FileKind::Regular && a.nlink > 1;
        if hardlinked && sys::fstatat(u.index(), &Self::index_key(origin)).is_ok() {
            // Another alias was copied up already: this name becomes one more link.
            sys::linkat(u.index(), &Self::index_key(origin), pfd.as_fd(), &cname)?;
        } else {
            let r = self.build_copy(u, work, &tmp, inode.kind, lr, &a, origin, metacopy);
            if let Err(e) = r {
                let _ = sys::unlinkat(work, &tmp, inode.kind.is_dir());
                return Err(e);
            }
            if hardlinked {
                // The nlink xattr marks the copy as indexed (see `resolve_upper`): both or neither.
                let at = sys::XattrPath::child(work, &tmp);
                let r = u
                    .set(&at, &u.names.nlink, a.nlink.to_string().as_bytes())
                    .and_then(|()| Ok(sys::linkat(work, &tmp, u.index(), &Self::index_key(origin))?));
                if let Err(e) = r {
                    let _ = sys::unlinkat(work, &tmp, false);
                    return Err(e);
                }
            }
            if let Err(e) = sys::renameat2(work, &tmp, pfd.as_fd(), &cname, libc::RENAME_NOREPLACE) {
                let _ = sys::unlinkat(work, &tmp, inode.kind.is_dir());
                return Err(e.into());
            }
            if inode.kind.is_dir() {
                // Moving a directory rewrites its `..`, which touches its times on some hosts.
                let _ = sys::utimensat(pfd.as_fd(), &cname, Some(to_settime(a.atime)), Some(to_settime(a.mtime)));
            }
        }
        self.mark_impure_locked(parent, ps, &pfd)?;
        // Copy-up is not a change of the parent: restore its times.
        let _ = sys::utimensat(
            pfd.as_fd(),
            c"",
            Some(to_settime(ts_of(pst.st_atime, pst.st_atime_nsec))),
            Some(to_settime(ts_of(pst.st_mtime, pst.st_mtime_nsec))),
        );
        cs.upper = true;
        cs.origin = Some(origin);
        cs.indexed = hardlinked;
        cs.metacopy = metacopy;
        if !inode.kind.is_dir() && !metacopy {
            cs.lowers.clear();
        }
        Ok(())
    }

    /// Builds the copy of a lower object as `work/tmp`, with data, xattrs, owner, mode, times.
    #[allow(clippy::too_many_arguments)]
    fn build_copy(
        &self,
        u: &Upper,
        work: BorrowedFd<'_>,
        tmp: &CStr,
        kind: FileKind,
        lr: LowerRef,
        a: &LowerAttr,
        origin: (LayerId, LowerIno),
        metacopy: bool,
    ) -> Result<()> {
        let lower = &self.layers[lr.layer];
        match kind {
            FileKind::Directory => sys::mkdirat(work, tmp, 0o700)?,
            FileKind::Symlink => {
                let target = lower.readlink(lr.ino)?;
                sys::symlinkat(&sys::cstr(&target)?, work, tmp)?;
            }
            FileKind::Regular => {
                let fd = sys::openat(work, tmp, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600)?;
                let f = File::from(fd);
                if metacopy {
                    f.set_len(a.size)?;
                } else {
                    self.copy_data(lr, a.size, &f)?;
                }
            }
            _ => sys::mknodat(work, tmp, a.mode, a.rdev)?,
        }
        // Owner first: a chown drops file capabilities and set-id bits, so xattrs and the
        // mode come after it.
        sys::fchownat(work, tmp, a.uid, a.gid)?;
        let at = sys::XattrPath::child(work, tmp);
        for name in lower.listxattr(lr.ino)? {
            if is_internal_xattr(&name) {
                continue;
            }
            let value = lower.getxattr(lr.ino, &name)?;
            let cn = sys::cstr(&name)?;
            if let Err(e) = sys::setxattr(&at, &cn, &value, 0) {
                // Unprivileged uppers cannot hold trusted.*/security.* attributes.
                if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP)) {
                    tracing::warn!(name = %String::from_utf8_lossy(&name), %e, "xattr not copied up");
                } else {
                    return Err(e.into());
                }
            }
        }
        if metacopy {
            u.set(&at, &u.names.metacopy, b"")?;
        }
        if kind != FileKind::Symlink || u.names.origin.to_bytes().starts_with(b"trusted.") {
            u.set(&at, &u.names.origin, format!("{}:{}", origin.0.0, origin.1.0).as_bytes())?;
        }
        if kind != FileKind::Symlink {
            let fd = sys::openat(work, tmp, libc::O_PATH, 0)?;
            sys::fchmod_any(fd.as_fd(), a.mode & 0o7777)?;
        }
        sys::utimensat(work, tmp, Some(to_settime(a.atime)), Some(to_settime(a.mtime)))?;
        Ok(())
    }

    /// Copies file data, keeping holes: reflink, else `copy_file_range` over the data extents
    /// (`SEEK_DATA`/`SEEK_HOLE`), else reads through the layer.
    fn copy_data(&self, lr: LowerRef, size: u64, dst: &File) -> Result<()> {
        let lower = &self.layers[lr.layer];
        if let Some(src) = lower.open_backing(lr.ino)? {
            if sys::ficlone(dst.as_fd(), src.as_fd()).is_ok() {
                return Ok(());
            }
            // copy_file_range, else (across filesystems: EXDEV) sendfile, which copies between the
            // page caches in the kernel like overlayfs's copy-up, else read/write.
            #[derive(PartialEq)]
            enum How {
                CopyRange,
                SendFile,
                ReadWrite,
            }
            let mut how = How::CopyRange;
            let mut buf = Vec::new();
            let mut off = 0u64;
            while off < size {
                let start = match sys::lseek(src.as_fd(), off as i64, libc::SEEK_DATA) {
                    Ok(s) => s as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
                    Err(_) => off,
                };
                let end =
                    sys::lseek(src.as_fd(), start as i64, libc::SEEK_HOLE).map(|e| e as u64).unwrap_or(size).min(size);
                let mut pos = start;
                while pos < end {
                    let want = ((end - pos) as usize).min(1 << 30);
                    let mut n = None;
                    if how == How::CopyRange {
                        match sys::copy_file_range(src.as_fd(), pos, dst.as_fd(), pos, want) {
                            Ok(c) => n = Some(c),
                            Err(_) => how = How::SendFile,
                        }
                    }
                    if how == How::SendFile {
                        let mut from = pos as libc::off_t;
                        let sent = sys::lseek(dst.as_fd(), pos as i64, libc::SEEK_SET)
                            .ok()
                            .and_then(|_| nix::sys::sendfile::sendfile(dst, src.as_fd(), Some(&mut from), want).ok());
                        match sent {
                            Some(c) => n = Some(c),
                            None => how = How::ReadWrite,
                        }
                    }
                    let n = match n {
                        Some(n) => n,
                        None => {
                            buf.resize(want.min(1 << 20), 0);
                            let n = src.read_at(&mut buf, pos)?;
                            dst.write_all_at(&buf[..n], pos)?;
                            n
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    pos += n as u64;
                }
                off = end.max(start + 1);
            }
        } else {
            let mut off = 0u64;
            while let Some(r) = lower.next_data(lr.ino, off)? {
                let mut pos = r.start;
                while pos < r.end {
                    let chunk = lower.read(lr.ino, pos, ((r.end - pos).min(1 << 20)) as u32)?;
                    if chunk.is_empty() {
                        break;
                    }
                    dst.write_all_at(&chunk, pos)?;
                    pos += chunk.len() as u64;
                }
                if r.end <= off {
                    break;
                }
                off = r.end;
            }
        }
        dst.set_len(size)?;
        Ok(())
    }

    fn mark_impure(&self, dir: &Inode, _s: &mut State) -> Result<()> {
        let pfd = self.upper_dir_fd(dir)?;
        let mut s = dir.state();
        self.mark_impure_locked(dir, &mut s, &pfd)
    }

    fn mark_impure_locked(&self, _dir: &Inode, s: &mut State, pfd: &Arc<OwnedFd>) -> Result<()> {
        if s.impure {
            return Ok(());
        }
        let u = self.upper()?;
        let st = sys::fstat(pfd.as_fd())?;
        u.set(&sys::XattrPath::fd(pfd.as_fd()), &u.names.impure, b"y")?;
        let _ = sys::utimensat(
            pfd.as_fd(),
            c"",
            Some(to_settime(ts_of(st.st_atime, st.st_atime_nsec))),
            Some(to_settime(ts_of(st.st_mtime, st.st_mtime_nsec))),
        );
        s.impure = true;
        Ok(())
    }

    // ----- creation ----------------------------------------------------------------------

    /// Common part of mknod/mkdir/symlink/create/link: `make` creates the object as `name` in
    /// the given directory; the new entry replaces a whiteout atomically, becomes opaque when
    /// it is a directory hiding a lower one, and belongs to the caller.
    fn create_entry(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        make: &dyn Fn(BorrowedFd<'_>, &CStr) -> Result<()>,
    ) -> Result<Arc<Inode>> {
        check_new_name(name)?;
        let u = self.upper()?;
        let p = self.inode(parent)?;
        self.copy_up(&p)?;
        let ps = p.state();
        if self.resolve(&p, &ps, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let pfd = self.upper_dir_fd(&p)?;
        let cname = sys::cstr(name)?;
        let pst = sys::fstat(pfd.as_fd())?;
        let whiteout = match sys::fstatat(pfd.as_fd(), &cname) {
            Ok(st) if is_whiteout_stat(&st) => true,
            Ok(_) => return Err(Errno::EEXIST),
            Err(e) if is_enoent(&e) => false,
            Err(e) => return Err(e.into()),
        };
        let wh_file = !ps.lowers.is_empty() && Self::upper_wh_file(pfd.as_fd(), name);
        let opaque =
            kind.is_dir() && !ps.lowers.is_empty() && self.lower_first(&ps.lowers, name)? == Some(FileKind::Directory);
        let gid = if pst.st_mode & libc::S_ISGID != 0 { pst.st_gid } else { ctx.gid };
        let finish = |d: BorrowedFd<'_>, n: &CStr| -> Result<()> {
            if opaque {
                u.set(&sys::XattrPath::child(d, n), &u.names.opaque, b"y")?;
            }
            if ctx.uid != 0 || gid != 0 || sys::geteuid() != 0 {
                sys::fchownat(d, n, ctx.uid, gid)?;
                if mode & 0o6000 != 0 && kind != FileKind::Symlink {
                    let fd = sys::openat(d, n, libc::O_PATH, 0)?;
                    let m = if kind.is_dir() { (mode & 0o7777) | (pst.st_mode & libc::S_ISGID) } else { mode & 0o7777 };
                    sys::fchmod_any(fd.as_fd(), m)?;
                }
            }
            Ok(())
        };
        if whiteout || opaque {
            // Build in the work dir, then swap it with the whiteout (or move it in).
            let work = u.work();
            let tmp = u.tmp_name();
            make(work, &tmp)?;
            let r = finish(work, &tmp).and_then(|()| {
                if whiteout {
                    sys::renameat2(work, &tmp, pfd.as_fd(), &cname, libc::RENAME_EXCHANGE)?;
                    sys::unlinkat(work, &tmp, false)?;
                } else {
                    sys::renameat2(work, &tmp, pfd.as_fd(), &cname, libc::RENAME_NOREPLACE)?;
                }
                Ok(())
            });
            if let Err(e) = r {
                let _ = sys::unlinkat(work, &tmp, kind.is_dir());
                return Err(e);
            }
        } else {
            make(pfd.as_fd(), &cname)?;
            if let Err(e) = finish(pfd.as_fd(), &cname) {
                let _ = sys::unlinkat(pfd.as_fd(), &cname, kind.is_dir());
                return Err(e);
            }
        }
        if wh_file {
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(name);
            let _ = sys::unlinkat(pfd.as_fd(), &sys::cstr(&wh)?, false);
        }
        let found = self.resolve(&p, &ps, name)?.ok_or(Errno::EIO)?;
        drop(ps);
        Ok(self.instantiate(&p, name, found, 1))
    }

    /// `mknod` (regular files, devices, fifos, sockets).
    pub fn mknod(&self, ctx: &Ctx, parent: Ino, name: &[u8], mode: u32, rdev: u64) -> Result<Attr> {
        let kind = FileKind::from_mode(mode).ok_or(Errno::EINVAL)?;
        if kind == FileKind::CharDevice && rdev == 0 {
            // A char 0/0 device is a whiteout in the upper format.
            return Err(Errno::EPERM);
        }
        if kind.is_dir() || kind == FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        let inode = self.create_entry(ctx, parent, name, kind, mode, &|d, n| Ok(sys::mknodat(d, n, mode, rdev)?))?;
        self.attr_of(&inode)
    }

    /// `mkdir`.
    pub fn mkdir(&self, ctx: &Ctx, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let m = mode & 0o7777;
        let inode = self.create_entry(ctx, parent, name, FileKind::Directory, m, &|d, n| Ok(sys::mkdirat(d, n, m)?))?;
        self.attr_of(&inode)
    }

    /// `symlink`.
    pub fn symlink(&self, ctx: &Ctx, parent: Ino, name: &[u8], target: &[u8]) -> Result<Attr> {
        let t = sys::cstr(target)?;
        let inode =
            self.create_entry(ctx, parent, name, FileKind::Symlink, 0o777, &|d, n| Ok(sys::symlinkat(&t, d, n)?))?;
        self.attr_of(&inode)
    }

    /// `create` + open.
    pub fn create(&self, ctx: &Ctx, parent: Ino, name: &[u8], mode: u32, flags: i32) -> Result<(Attr, Opened)> {
        let m = mode & 0o7777;
        let inode = self.create_entry(ctx, parent, name, FileKind::Regular, m, &|d, n| {
            Ok(sys::mknodat(d, n, libc::S_IFREG | m, 0)?)
        })?;
        let attr = self.attr_of(&inode)?;
        let opened = self.open_inode(&inode, flags)?;
        Ok((attr, opened))
    }

    /// `link`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr> {
        check_new_name(newname)?;
        let inode = self.inode(ino)?;
        if inode.kind.is_dir() {
            return Err(Errno::EPERM);
        }
        self.copy_up(&inode)?;
        let src = self.link_source(&inode)?;
        let origin = inode.state().origin;
        let np = self.inode(newparent)?;
        // Link, replacing a whiteout like any creation.
        let u = self.upper()?;
        self.copy_up(&np)?;
        let mut ps = np.state();
        if self.resolve(&np, &ps, newname)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let pfd = self.upper_dir_fd(&np)?;
        let cname = sys::cstr(newname)?;
        let (sd, sn) = src.dir_name();
        let whiteout = matches!(sys::fstatat(pfd.as_fd(), &cname), Ok(st) if is_whiteout_stat(&st));
        if whiteout {
            let tmp = u.tmp_name();
            sys::linkat(sd, sn, u.work(), &tmp)?;
            sys::renameat2(u.work(), &tmp, pfd.as_fd(), &cname, libc::RENAME_EXCHANGE)?;
            sys::unlinkat(u.work(), &tmp, false)?;
        } else {
            sys::linkat(sd, sn, pfd.as_fd(), &cname)?;
        }
        if origin.is_some() {
            self.mark_impure_locked(&np, &mut ps, &pfd)?;
        }
        self.adjust_nlink(&inode, 1);
        drop(ps);
        self.table.add_lookups(inode.ino, 1);
        self.attr_of(&inode)
    }

    /// Keeps the merged link count of an indexed hard link in step.
    fn adjust_nlink(&self, inode: &Inode, delta: i64) {
        let Some(u) = &self.upper else { return };
        if !inode.state().indexed {
            return;
        }
        if let Ok(loc) = self.upper_loc(inode) {
            let at = loc.xattr();
            if let Some(v) = u.get(&at, &u.names.nlink)
                && let Some(n) = std::str::from_utf8(&v).ok().and_then(|s| s.parse::<i64>().ok())
            {
                let _ = u.set(&at, &u.names.nlink, (n + delta).max(0).to_string().as_bytes());
            }
        }
    }

    // ----- removal -----------------------------------------------------------------------

    /// Whether the merged directory is empty.
    fn merged_empty(&self, inode: &Inode) -> Result<bool> {
        let snap = self.snapshot(inode, 3)?;
        Ok(snap.len() <= 2)
    }

    /// `unlink` / `rmdir`.
    pub fn remove(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        check_name(name)?;
        let u = self.upper()?;
        let p = self.inode(parent)?;
        self.copy_up(&p)?;
        {
            // A lower hard link losing a name: copy it into the index first, so the other
            // names keep an exact link count (also after remount).
            let s = p.state().clone();
            if let Some(f) = self.resolve(&p, &s, name)?
                && !f.state.upper
                && f.kind == FileKind::Regular
                && let Some(lr) = f.state.lowers.first()
                && self.layers[lr.layer].getattr(lr.ino)?.nlink > 1
            {
                let i = self.probe_inode(&p, name, f);
                self.copy_up(&i)?;
                // The copy may sit at another name of the inode: give this name its link.
                let s = p.state().clone();
                if self.resolve(&p, &s, name)?.is_some_and(|f| !f.state.upper) {
                    self.link_alias_up(&p, name, &i)?;
                }
            }
        }
        let ps = p.state();
        let found = self.resolve(&p, &ps, name)?.ok_or(Errno::ENOENT)?;
        if dir && !found.kind.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !dir && found.kind.is_dir() {
            return Err(Errno::EISDIR);
        }
        let child = self.held_inode(&p, name, &found);
        if dir {
            let probe = match &child {
                Some(c) => c.clone(),
                None => Arc::new(Inode::new(
                    found.ino,
                    Generation(0),
                    found.kind,
                    Pos { parent: Some(p.clone()), name: Name::from_slice(name), detached: None },
                    found.state.clone(),
                )),
            };
            if !self.merged_empty(&probe)? {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let pfd = self.upper_dir_fd(&p)?;
        let cname = sys::cstr(name)?;
        let need_whiteout = !ps.lowers.is_empty() && self.lower_first(&ps.lowers, name)?.is_some();
        let mut last_link = true;
        if found.state.upper {
            let st = sys::fstatat(pfd.as_fd(), &cname)?;
            last_link = if found.state.indexed {
                // The merged count lives in the inode's xattr (the index holds a link too).
                let at = sys::XattrPath::child(pfd.as_fd(), &cname);
                let n = u
                    .get(&at, &u.names.nlink)
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u32>().ok())
                    .unwrap_or((st.st_nlink as u32).saturating_sub(1));
                if n > 1 {
                    u.set(&at, &u.names.nlink, (n - 1).to_string().as_bytes())?;
                }
                n <= 1
            } else {
                dir || st.st_nlink <= 1
            };
            // Keep open-unlinked files reachable.
            let detached = match &child {
                Some(_) if !dir => Some(Arc::new(sys::openat(pfd.as_fd(), &cname, libc::O_PATH, 0)?)),
                _ => None,
            };
            if dir {
                let sub = sys::openat(pfd.as_fd(), &cname, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                remove_tree_contents(sub.as_fd())?;
            }
            if need_whiteout {
                let tmp = u.tmp_name();
                u.make_whiteout(u.work(), tmp.to_bytes())?;
                if u.mknod_whiteouts() {
                    sys::renameat2(u.work(), &tmp, pfd.as_fd(), &cname, libc::RENAME_EXCHANGE)?;
                    sys::unlinkat(u.work(), &tmp, dir)?;
                } else {
                    let _ = sys::unlinkat(u.work(), &sys::cstr(&[b".wh.", tmp.to_bytes()].concat())?, false);
                    sys::unlinkat(pfd.as_fd(), &cname, dir)?;
                    u.make_whiteout(pfd.as_fd(), name)?;
                }
            } else {
                sys::unlinkat(pfd.as_fd(), &cname, dir)?;
            }
            if let Some(c) = &child
                && let Some(d) = detached
            {
                c.set_pos(|pp| {
                    if pp.parent.as_ref().is_some_and(|x| Arc::ptr_eq(x, &p)) && pp.name[..] == *name {
                        pp.detached = Some(d);
                    }
                });
            }
        } else {
            u.make_whiteout(pfd.as_fd(), name)?;
        }
        if let Some(c) = &child {
            if last_link {
                c.mark_dead();
            }
            if dir {
                self.forget_dir_fd(c.ino);
            }
        }
        Ok(())
    }

    // ----- rename ------------------------------------------------------------------------

    fn probe_inode(&self, parent: &Arc<Inode>, name: &[u8], found: Found) -> Arc<Inode> {
        if let Some(i) = self.held_inode(parent, name, &found) {
            return i;
        }
        Arc::new(Inode::new(
            found.ino,
            Generation(0),
            found.kind,
            Pos { parent: Some(parent.clone()), name: Name::from_slice(name), detached: None },
            found.state,
        ))
    }

    /// `rename` / `renameat2` (`flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    pub fn rename(&self, oparent: Ino, oname: &[u8], nparent: Ino, nname: &[u8], flags: u32) -> Result<()> {
        check_name(oname)?;
        check_new_name(nname)?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Errno::EINVAL);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let u = self.upper()?;
        let op = self.inode(oparent)?;
        let np = self.inode(nparent)?;
        self.copy_up(&op)?;
        self.copy_up(&np)?;

        // Phase 1 (no parent locks): find both ends and copy them up as needed.
        let src_found = {
            let s = op.state().clone();
            self.resolve(&op, &s, oname)?.ok_or(Errno::ENOENT)?
        };
        let dst_found = {
            let s = np.state().clone();
            self.resolve(&np, &s, nname)?
        };
        if flags & libc::RENAME_NOREPLACE != 0 && dst_found.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst_found.is_none() {
            return Err(Errno::ENOENT);
        }
        if let Some(d) = &dst_found
            && d.ino == src_found.ino
            && !exchange
        {
            return Ok(()); // two names of one file: nothing to do
        }
        let src_kind = src_found.kind;
        // The lower file behind the destination name when that name is not in the upper.
        let dst_lower = dst_found.as_ref().and_then(|d| {
            (d.kind == FileKind::Regular && !d.state.upper).then(|| d.state.lowers.first().copied()).flatten()
        });
        let src = self.probe_inode(&op, oname, src_found);
        let dst = dst_found.map(|f| self.probe_inode(&np, nname, f));
        if let Some(d) = &dst
            && !exchange
        {
            match (src_kind.is_dir(), d.kind.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.merged_empty(d)? => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        self.name_up(&op, oname, &src)?;
        if exchange && let Some(d) = &dst {
            self.name_up(&np, nname, d)?;
        }
        // A lower hard link losing this name: index it first (see `remove`).
        if !exchange
            && let Some(d) = &dst
            && let Some(lr) = dst_lower
            && self.layers[lr.layer].getattr(lr.ino)?.nlink > 1
        {
            self.name_up(&np, nname, d)?;
        }

        // Phase 2: lock both parents (see the lock order in inode.rs) and move.
        let (g1, g2);
        let (ps_o, ps_n): (State, State);
        if Arc::ptr_eq(&op, &np) {
            g1 = Some(op.state());
            g2 = None;
            ps_o = g1.as_ref().map(|g| (**g).clone()).unwrap_or_default();
            ps_n = ps_o.clone();
        } else if !self.is_ancestor(&op, &np) && (self.is_ancestor(&np, &op) || np.ino < op.ino) {
            // Lock order: a directory before anything inside it, else ascending node id.
            g2 = Some(np.state());
            g1 = Some(op.state());
            ps_o = g1.as_ref().map(|g| (**g).clone()).unwrap_or_default();
            ps_n = g2.as_ref().map(|g| (**g).clone()).unwrap_or_default();
        } else {
            g1 = Some(op.state());
            g2 = Some(np.state());
            ps_o = g1.as_ref().map(|g| (**g).clone()).unwrap_or_default();
            ps_n = g2.as_ref().map(|g| (**g).clone()).unwrap_or_default();
        }
        let ofd = self.upper_dir_fd(&op)?;
        let nfd = self.upper_dir_fd(&np)?;
        let con = sys::cstr(oname)?;
        let cnn = sys::cstr(nname)?;

        // Directories keep their lower parts through a redirect, or stop merging at the new
        // name by becoming opaque.
        let prepare_dir = |d: &Inode,
                           dir_fd: &Arc<OwnedFd>,
                           n: &CStr,
                           target_lowers: &[LowerRef],
                           target_name: &[u8]|
         -> Result<()> {
            if !d.kind.is_dir() {
                return Ok(());
            }
            let at = sys::XattrPath::child(dir_fd.as_fd(), n);
            let s = d.state().clone();
            if !s.lowers.is_empty() {
                let path = s.lower_path.clone().unwrap_or_default();
                let mut v = b"/".to_vec();
                v.extend_from_slice(&path);
                u.set(&at, &u.names.redirect, &v)?;
            } else if !target_lowers.is_empty()
                && self.lower_first(target_lowers, target_name)? == Some(FileKind::Directory)
            {
                u.set(&at, &u.names.opaque, b"y")?;
            }
            Ok(())
        };

        if exchange {
            let d = dst.as_ref().ok_or(Errno::ENOENT)?;
            prepare_dir(&src, &ofd, &con, &ps_n.lowers, nname)?;
            prepare_dir(d, &nfd, &cnn, &ps_o.lowers, oname)?;
            sys::renameat2(ofd.as_fd(), &con, nfd.as_fd(), &cnn, libc::RENAME_EXCHANGE)?;
            let sp = src.pos();
            let dp = d.pos();
            src.set_pos(|p| *p = Pos { detached: None, ..dp.clone() });
            d.set_pos(|p| *p = Pos { detached: None, ..sp.clone() });
        } else {
            prepare_dir(&src, &ofd, &con, &ps_n.lowers, nname)?;
            // What is at the new name in the upper: a whiteout, an entry, or nothing.
            match sys::fstatat(nfd.as_fd(), &cnn) {
                Ok(st) if is_whiteout_stat(&st) && src.kind.is_dir() => {
                    sys::unlinkat(nfd.as_fd(), &cnn, false)?;
                }
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                    let sub = sys::openat(nfd.as_fd(), &cnn, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                    remove_tree_contents(sub.as_fd())?;
                }
                _ => {}
            }
            if !ps_n.lowers.is_empty() && Self::upper_wh_file(nfd.as_fd(), nname) {
                let _ = sys::unlinkat(nfd.as_fd(), &sys::cstr(&[&b".wh."[..], nname].concat())?, false);
            }
            let detached = match &dst {
                Some(d) if !d.kind.is_dir() && d.state().upper => {
                    sys::openat(nfd.as_fd(), &cnn, libc::O_PATH, 0).ok().map(Arc::new)
                }
                _ => None,
            };
            let mut dst_links = sys::fstatat(nfd.as_fd(), &cnn).map(|s| s.st_nlink).unwrap_or(0);
            let dst_indexed = dst.as_ref().is_some_and(|d| d.state().indexed);
            if dst_indexed {
                // The merged count lives in the inode's xattr (the index holds a link too).
                let at = sys::XattrPath::child(nfd.as_fd(), &cnn);
                let n = u
                    .get(&at, &u.names.nlink)
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
                    .unwrap_or(dst_links.saturating_sub(1));
                if n > 1 {
                    u.set(&at, &u.names.nlink, (n - 1).to_string().as_bytes())?;
                }
                dst_links = n;
            }
            let need_whiteout = !ps_o.lowers.is_empty() && self.lower_first(&ps_o.lowers, oname)?.is_some();
            let mut done = false;
            if need_whiteout && u.mknod_whiteouts() {
                match sys::renameat2(ofd.as_fd(), &con, nfd.as_fd(), &cnn, libc::RENAME_WHITEOUT) {
                    Ok(()) => done = true,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM | libc::ENOTSUP)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !done {
                sys::renameat2(ofd.as_fd(), &con, nfd.as_fd(), &cnn, 0)?;
                if need_whiteout {
                    u.make_whiteout(ofd.as_fd(), oname)?;
                }
            }
            if let Some(d) = &dst {
                if d.kind.is_dir() || dst_links <= 1 {
                    d.mark_dead();
                }
                if let Some(fd) = detached {
                    d.set_pos(|p| p.detached = Some(fd));
                }
                if d.kind.is_dir() {
                    self.forget_dir_fd(d.ino);
                }
            }
            src.set_pos(|p| *p = Pos { parent: Some(np.clone()), name: Name::from_slice(nname), detached: None });
        }
        let src_state = src.state().clone();
        drop(g1);
        drop(g2);
        if src_state.origin.is_some() || src.kind.is_dir() {
            self.mark_impure(&np, &mut State::default())?;
        }
        if exchange {
            self.mark_impure(&op, &mut State::default())?;
        }
        Ok(())
    }

    /// Whether `a` is a proper ancestor of `b` (positions only: leaf locks).
    fn is_ancestor(&self, a: &Arc<Inode>, b: &Arc<Inode>) -> bool {
        let mut cur = b.pos().parent;
        while let Some(p) = cur {
            if Arc::ptr_eq(&p, a) {
                return true;
            }
            cur = p.pos().parent;
        }
        false
    }

    // ----- setattr, readlink, xattrs -----------------------------------------------------

    /// `setattr`: size, owner, mode, times (in that order); copies up first.
    pub fn setattr(&self, ino: Ino, s: &SetAttr) -> Result<Attr> {
        let inode = self.inode(ino)?;
        if s.size == Some(0) && inode.kind == FileKind::Regular {
            // Truncation to zero (`> file`, O_TRUNC) needs none of the old data.
            self.copy_up_meta(&inode)?;
            let mut cs = inode.state();
            if cs.metacopy {
                let u = self.upper()?;
                let loc = self.upper_loc(&inode)?;
                loc.open(libc::O_WRONLY)?.set_len(0)?;
                u.remove(&loc.xattr(), &u.names.metacopy)?;
                cs.metacopy = false;
                cs.lowers.clear();
            }
        } else if s.size.is_some() {
            self.copy_up(&inode)?;
        } else {
            self.copy_up_meta(&inode)?;
        }
        let loc = self.upper_loc(&inode)?;
        if let Some(size) = s.size {
            if inode.kind.is_dir() {
                return Err(Errno::EISDIR);
            }
            let via_handle = s.fh.and_then(|fh| self.handle(fh).ok()).and_then(|f| match &f.src {
                FileSrc::Upper(file) if f.writable => Some(file.set_len(size)),
                _ => None,
            });
            match via_handle {
                Some(r) => r?,
                None => loc.open(libc::O_WRONLY)?.set_len(size)?,
            }
            if s.kill_setid && s.mode.is_none() {
                Self::kill_setid(loc.opath()?.as_fd())?;
            }
        }
        if s.uid.is_some() || s.gid.is_some() {
            let (d, n) = loc.dir_name();
            sys::fchownat(d, n, s.uid.unwrap_or(u32::MAX), s.gid.unwrap_or(u32::MAX))?;
        }
        if let Some(mode) = s.mode
            && inode.kind != FileKind::Symlink
        {
            let fd = loc.opath()?;
            sys::fchmod_any(fd.as_fd(), mode & 0o7777)?;
        }
        if s.atime.is_some() || s.mtime.is_some() {
            let (d, n) = loc.dir_name();
            sys::utimensat(d, n, s.atime, s.mtime)?;
        }
        self.getattr(ino, s.fh)
    }

    /// `readlink`.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = match self.node(ino)? {
            Node::Full(inode) => inode,
            Node::Lower { kind: FileKind::Symlink, .. } => {
                let lr = self.lower_node_ref(ino)?;
                return self.layers[lr.layer].readlink(lr.ino);
            }
            Node::Lower { .. } => return Err(Errno::EINVAL),
        };
        if inode.kind != FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        let s = inode.state().clone();
        if s.upper {
            let (d, n) = match self.upper_loc(&inode)? {
                Loc::At(d, n) => (d, n),
                Loc::Fd(f) => (f, CString::default()),
            };
            return Ok(sys::readlinkat(d.as_fd(), &n)?);
        }
        let lr = s.lowers.first().ok_or(Errno::ESTALE)?;
        self.layers[lr.layer].readlink(lr.ino)
    }

    /// `getxattr`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if is_internal_xattr(name) {
            return Err(Errno::ENODATA);
        }
        let inode = match self.node(ino)? {
            Node::Full(inode) => inode,
            Node::Lower { .. } => {
                let lr = self.lower_node_ref(ino)?;
                return self.layers[lr.layer].getxattr(lr.ino, name);
            }
        };
        let s = inode.state().clone();
        if s.upper {
            let loc = self.upper_loc(&inode)?;
            return Ok(sys::getxattr(&loc.xattr(), &sys::cstr(name)?)?);
        }
        let lr = s.lowers.first().ok_or(Errno::ESTALE)?;
        self.layers[lr.layer].getxattr(lr.ino, name)
    }

    /// `listxattr`: NUL-terminated names.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let lr = match self.node(ino)? {
            Node::Full(inode) => {
                let s = inode.state().clone();
                if s.upper {
                    let loc = self.upper_loc(&inode)?;
                    let list = sys::listxattr(&loc.xattr())?;
                    return Ok(Self::visible_xattrs(list.split(|b| *b == 0).filter(|n| !n.is_empty())));
                }
                *s.lowers.first().ok_or(Errno::ESTALE)?
            }
            Node::Lower { .. } => self.lower_node_ref(ino)?,
        };
        let names = self.layers[lr.layer].listxattr(lr.ino)?;
        Ok(Self::visible_xattrs(names.iter().map(Vec::as_slice)))
    }

    /// NUL-terminated names, our own attributes left out.
    fn visible_xattrs<'a>(names: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        for n in names.filter(|n| !is_internal_xattr(n)) {
            out.extend_from_slice(n);
            out.push(0);
        }
        out
    }

    /// `setxattr` (copies up).
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if is_internal_xattr(name) {
            return Err(Errno::EPERM);
        }
        let inode = self.inode(ino)?;
        self.copy_up_meta(&inode)?;
        let loc = self.upper_loc(&inode)?;
        Ok(sys::setxattr(&loc.xattr(), &sys::cstr(name)?, value, flags)?)
    }

    /// `removexattr` (copies up).
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        if is_internal_xattr(name) {
            return Err(Errno::ENODATA);
        }
        let inode = self.inode(ino)?;
        if !inode.state().upper {
            // Check that it exists before copying up for nothing.
            self.getxattr(ino, name)?;
        }
        self.copy_up_meta(&inode)?;
        let loc = self.upper_loc(&inode)?;
        Ok(sys::removexattr(&loc.xattr(), &sys::cstr(name)?)?)
    }

    /// `statfs`: the upper filesystem's numbers, name length 255.
    pub fn statfs(&self) -> Result<Statfs> {
        match &self.upper {
            Some(u) => {
                let s = u.statfs()?;
                Ok(Statfs {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: s.f_bsize as u32,
                    // `.wh.NAME` whiteout files need four more bytes.
                    namelen: if u.mknod_whiteouts() { NAME_MAX as u32 } else { NAME_MAX as u32 - 4 },
                    frsize: s.f_frsize as u32,
                })
            }
            None => Ok(Statfs { bsize: 4096, namelen: NAME_MAX as u32, frsize: 4096, ..Statfs::default() }),
        }
    }

    // ----- files -------------------------------------------------------------------------

    fn new_handle(&self, h: Handle) -> Fh {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(h));
        Fh(fh)
    }

    fn handle(&self, fh: Fh) -> Result<Arc<Handle>> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// `open`. Opening for writing (or with `O_TRUNC`) copies up.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<Opened> {
        let node = self.node(ino)?;
        if node.kind().is_dir() {
            return Err(Errno::EISDIR);
        }
        if let Node::Lower { .. } = node
            && flags & libc::O_ACCMODE == libc::O_RDONLY
            && flags & libc::O_TRUNC == 0
        {
            // Reading a lower node: it stays one.
            let lr = self.lower_node_ref(ino)?;
            return self.open_lower(None, ino, Generation::LOWER, lr, true);
        }
        self.open_inode(&self.inode(ino)?, flags)
    }

    /// A handle reading lower file `lr` (`keep_cache`: no upper copy can change it).
    fn open_lower(
        &self,
        inode: Option<Arc<Inode>>,
        ino: Ino,
        generation: Generation,
        lr: LowerRef,
        keep_cache: bool,
    ) -> Result<Opened> {
        let backed = self.layers[lr.layer].has_backing(lr.ino)?;
        let backing = backed.then_some(BackingKey {
            ino,
            generation,
            source: BackingSource::Lower { layer: lr.layer, ino: lr.ino },
        });
        let src = FileSrc::Lower { layer: lr.layer, ino: lr.ino, backed, file: OnceLock::new() };
        let fh = self.new_handle(Handle { inode, src, writable: false });
        Ok(Opened { fh, keep_cache, backing, inline: !backed, setid: false })
    }

    fn open_inode(&self, inode: &Arc<Inode>, flags: i32) -> Result<Opened> {
        let acc = flags & libc::O_ACCMODE;
        let writable = acc != libc::O_RDONLY;
        if writable || flags & libc::O_TRUNC != 0 {
            self.copy_up(inode)?;
        }
        let keep = flags
            & (libc::O_ACCMODE | libc::O_APPEND | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME);
        let s = inode.state().clone();
        if s.upper && !s.metacopy {
            let file = self.upper_loc(inode)?.open(keep)?;
            let setid = writable && killed_setid_bits(sys::fstat(file.as_fd())?.st_mode) != 0;
            let backing = BackingKey { ino: inode.ino, generation: inode.generation, source: BackingSource::Upper };
            let fh = self.new_handle(Handle { inode: Some(inode.clone()), src: FileSrc::Upper(file), writable });
            return Ok(Opened { fh, keep_cache: false, backing: Some(backing), inline: false, setid });
        }
        let lr = *s.lowers.first().ok_or(Errno::ESTALE)?;
        self.open_lower(Some(inode.clone()), inode.ino, inode.generation, lr, !s.upper)
    }

    /// The file holding the data of an open file, if it has one of its own (opened now for a
    /// lower file).
    fn data_file<'a>(&self, src: &'a FileSrc) -> Result<Option<&'a File>> {
        match src {
            FileSrc::Upper(file) => Ok(Some(file)),
            FileSrc::Lower { backed: false, .. } => Ok(None),
            FileSrc::Lower { layer, ino, file, .. } => {
                if file.get().is_none()
                    && let Some(f) = self.layers[*layer].open_backing(*ino)?
                {
                    let _ = file.set(f); // a concurrent open may have won: same file
                }
                Ok(file.get())
            }
        }
    }

    /// Calls `f` with the fd holding the data of an open file (for passthrough).
    pub fn with_backing_fd<T>(&self, fh: Fh, f: impl FnOnce(BorrowedFd<'_>) -> T) -> Result<T> {
        let h = self.handle(fh)?;
        match self.data_file(&h.src)? {
            Some(file) => Ok(f(file.as_fd())),
            None => Err(Errno::EINVAL),
        }
    }

    /// `read`.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> Result<Vec<u8>> {
        let f = self.handle(fh)?;
        match (self.data_file(&f.src)?, &f.src) {
            (Some(file), _) => Ok(crate::lower::read_at_most(file, offset, size)?),
            (None, FileSrc::Lower { layer, ino, .. }) => Ok(self.layers[*layer].read(*ino, offset, size)?.into_owned()),
            (None, FileSrc::Upper(_)) => Err(Errno::EIO),
        }
    }

    fn with_upper_file<T>(&self, fh: Fh, f: impl FnOnce(&File) -> Result<T>) -> Result<T> {
        let h = self.handle(fh)?;
        match &h.src {
            FileSrc::Upper(file) => f(file),
            _ => Err(Errno::EBADF),
        }
    }

    /// `write` (the file was copied up at open).
    /// `write`. `kill_setid`: the writer may not keep set-id bits (no CAP_FSETID: the kernel
    /// says so with `FUSE_WRITE_KILL_SUIDGID` once the daemon handles it, see `fuse.rs`), so
    /// they are cleared first, as a local filesystem does.
    pub fn write(&self, fh: Fh, offset: u64, data: &[u8], kill_setid: bool) -> Result<u32> {
        self.with_upper_file(fh, |file| {
            if kill_setid {
                Self::kill_setid(file.as_fd())?;
            }
            // With O_APPEND the host appends whatever the offset (pwrite on Linux).
            file.write_all_at(data, offset)?;
            Ok(data.len() as u32)
        })
    }

    /// Clears the set-id bits a write by an unprivileged caller clears.
    fn kill_setid(fd: BorrowedFd<'_>) -> Result<()> {
        let mode = sys::fstat(fd)?.st_mode;
        let kill = killed_setid_bits(mode);
        if kill != 0 {
            sys::fchmod_any(fd, mode & 0o7777 & !kill)?;
        }
        Ok(())
    }

    /// `fsync`.
    pub fn fsync(&self, fh: Fh, datasync: bool) -> Result<()> {
        match self.with_upper_file(fh, |file| {
            if datasync {
                file.sync_data()?
            } else {
                file.sync_all()?
            }
            Ok(())
        }) {
            Err(Errno::EBADF) => Ok(()),
            r => r,
        }
    }

    /// `fallocate`.
    pub fn fallocate(&self, fh: Fh, offset: u64, length: u64, mode: i32) -> Result<()> {
        self.with_upper_file(fh, |file| Ok(sys::fallocate(file.as_fd(), mode, offset as i64, length as i64)?))
    }

    /// `lseek` for `SEEK_DATA` / `SEEK_HOLE` (others are handled by the kernel).
    pub fn lseek(&self, fh: Fh, offset: i64, whence: i32) -> Result<i64> {
        let f = self.handle(fh)?;
        match (self.data_file(&f.src)?, &f.src) {
            (Some(file), _) => Ok(sys::lseek(file.as_fd(), offset, whence)?),
            (None, FileSrc::Upper(_)) => Err(Errno::EIO),
            (None, FileSrc::Lower { layer, ino, .. }) => {
                let l = &self.layers[*layer];
                let size = l.getattr(*ino)?.size as i64;
                if offset < 0 || offset >= size {
                    return Err(Errno::ENXIO);
                }
                let ext = l.next_data(*ino, offset as u64)?;
                match (whence, ext) {
                    (libc::SEEK_DATA, Some(r)) => Ok((r.start as i64).max(offset)),
                    (libc::SEEK_DATA, None) => Err(Errno::ENXIO),
                    (libc::SEEK_HOLE, Some(r)) if (r.start as i64) <= offset => Ok(r.end as i64),
                    (libc::SEEK_HOLE, _) => Ok(offset),
                    _ => Err(Errno::EINVAL),
                }
            }
        }
    }

    /// `copy_file_range` between two open files.
    pub fn copy_file_range(&self, fh_in: Fh, off_in: u64, fh_out: Fh, off_out: u64, len: u64) -> Result<u32> {
        let fin = self.handle(fh_in)?;
        let len = len.min(1 << 30) as usize;
        self.with_upper_file(fh_out, |out| match (self.data_file(&fin.src)?, &fin.src) {
            (Some(file), _) => Ok(sys::copy_file_range(file.as_fd(), off_in, out.as_fd(), off_out, len)? as u32),
            (None, FileSrc::Upper(_)) => Err(Errno::EIO),
            (None, FileSrc::Lower { layer, ino, .. }) => {
                let data = self.layers[*layer].read(*ino, off_in, len.min(1 << 20) as u32)?;
                out.write_all_at(&data, off_out)?;
                Ok(data.len() as u32)
            }
        })
    }

    /// `release`.
    pub fn release(&self, fh: Fh) {
        lock(&self.handles).remove(&fh.0);
    }

    // ----- directories -------------------------------------------------------------------

    /// Read-ahead of every lower layer's metadata (see [`Lower::prefetch`]).
    pub fn prefetch(&self) {
        for l in &self.layers {
            l.prefetch();
        }
    }

    /// `opendir`: checks the directory; true when nothing of it is in the upper (its listing
    /// cannot change behind the kernel). No handle: listings are found by their offsets (see
    /// [`Union::readdir`]), so the kernel may skip OPENDIR/RELEASEDIR altogether.
    pub fn opendir(&self, ino: Ino) -> Result<bool> {
        let node = self.node(ino)?;
        if !node.kind().is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(match node {
            Node::Full(inode) => !inode.state().upper,
            Node::Lower { .. } => true,
        })
    }

    /// Entries of directory `dir` after `offset` (0 = from the start; otherwise an offset this
    /// method handed out, see [`DirPage::offset`]).
    ///
    /// Entries come in the order of their offsets, and an entry's offset is a function of its
    /// name (see `name_key`): going on from an offset returns the entries of the current
    /// listing whose offsets are larger. So nothing that stays in the directory is skipped or
    /// repeated while the directory changes, also when the listing the offset came from is long
    /// gone (the kernel caches listings and hands their offsets to later readers: opendir has
    /// no handle) or when the reader seeks back (telldir/seekdir). Offset 0 merges the
    /// directory anew; the listing is kept for the readers going on from it until read to the
    /// end (or when too many entries are held, least recently used first), else merged again.
    /// Two names with the same 63-bit hash (never seen in practice) still both appear once in a
    /// listing read without changes.
    pub fn readdir(&self, dir: Ino, offset: u64) -> Result<DirPage> {
        let node = self.node(dir)?;
        if !node.kind().is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let key = (dir, node.generation());
        let cached = if offset == 0 { None } else { lock(&self.listings).get(key) };
        let (entries, keys) = match cached {
            Some(l) => l,
            None => {
                let l = match node {
                    Node::Full(inode) => Self::sorted_listing(self.snapshot(&inode, usize::MAX)?),
                    Node::Lower { parent, .. } => {
                        let s = self.lower_node_state(self.lower_node_ref(dir)?);
                        Self::sorted_listing(self.snapshot_of(dir, parent, &s, None, usize::MAX)?)
                    }
                };
                lock(&self.listings).insert(key, l.clone());
                l
            }
        };
        let start = keys.partition_point(|k| *k <= offset);
        if start >= entries.len() {
            lock(&self.listings).remove(key);
        }
        Ok(DirPage { entries, start, keys })
    }

    /// The merged listing of `dir` in offset order, with the offsets (strictly increasing:
    /// a name whose hash is taken by another gets the next free offset).
    fn sorted_listing(snapshot: Vec<DirEntry>) -> Listing {
        let mut v: Vec<(u64, DirEntry)> = snapshot.into_iter().map(|e| (name_key(&e.name), e)).collect();
        v.sort_unstable_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        for i in 1..v.len() {
            if v[i].0 <= v[i - 1].0 {
                v[i].0 = v[i - 1].0 + 1;
            }
        }
        let keys = v.iter().map(|e| e.0).collect();
        let entries = v.into_iter().map(|e| e.1).collect();
        (Arc::new(entries), Arc::new(keys))
    }

    /// The merged listing of `dir` ("." and ".." first), at most `limit` entries.
    fn snapshot(&self, dir: &Inode, limit: usize) -> Result<Vec<DirEntry>> {
        let s = dir.state().clone();
        let parent_ino = dir.pos().parent.map_or(Ino::ROOT, |p| p.ino);
        let upper_fd = if s.upper { Some(self.upper_dir_fd(dir)?) } else { None };
        self.snapshot_of(dir.ino, parent_ino, &s, upper_fd, limit)
    }

    /// The merged listing of directory `ino` (in `parent_ino`, with union state `s` and its
    /// upper directory `upper_fd` when `s.upper`), at most `limit` entries.
    fn snapshot_of(
        &self,
        ino: Ino,
        parent_ino: Ino,
        s: &State,
        upper_fd: Option<Arc<OwnedFd>>,
        limit: usize,
    ) -> Result<Vec<DirEntry>> {
        let mut out = vec![
            DirEntry { name: b".".to_vec(), ino, kind: FileKind::Directory },
            DirEntry { name: b"..".to_vec(), ino: parent_ino, kind: FileKind::Directory },
        ];
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        // Upper entries: name -> (d_ino, kind).
        let mut upper_entries: Vec<(Vec<u8>, u64, FileKind)> = Vec::new();
        let mut ufd = None;
        if let Some(fd) = upper_fd {
            let rd = sys::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            let mut d = nix::dir::Dir::from_fd(rd)?;
            for e in d.iter() {
                let e = e?;
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                if let Some(t) = name.strip_prefix(b".wh.") {
                    seen.insert(t.to_vec());
                    continue;
                }
                use nix::dir::Type;
                let kind = match e.file_type() {
                    Some(Type::File) => FileKind::Regular,
                    Some(Type::Directory) => FileKind::Directory,
                    Some(Type::Symlink) => FileKind::Symlink,
                    Some(Type::BlockDevice) => FileKind::BlockDevice,
                    Some(Type::Fifo) => FileKind::Fifo,
                    Some(Type::Socket) => FileKind::Socket,
                    _ => {
                        let st = sys::fstatat(fd.as_fd(), e.file_name())?;
                        if is_whiteout_stat(&st) {
                            seen.insert(name.to_vec());
                            continue;
                        }
                        FileKind::from_mode(st.st_mode).unwrap_or(FileKind::Regular)
                    }
                };
                seen.insert(name.to_vec());
                upper_entries.push((name.to_vec(), e.ino(), kind));
            }
            ufd = Some(fd);
        }
        // Lower entries, top first; remember the lower answer for upper directories.
        let upper_names: HashSet<&[u8]> = upper_entries.iter().map(|e| e.0.as_slice()).collect();
        let mut lower_dir_of_upper: HashMap<Vec<u8>, Ino> = HashMap::new();
        let mut decided: HashSet<Vec<u8>> = HashSet::new();
        let mut lower_entries = Vec::new();
        for lr in &s.lowers {
            let layer_id = self.layer_id(lr.layer);
            let mut this_layer: Vec<Vec<u8>> = Vec::new();
            self.layers[lr.layer].readdir(lr.ino, &mut |name, e| {
                if upper_names.contains(name) {
                    if !decided.contains(name) {
                        this_layer.push(name.to_vec());
                        if let LowerDirEntry::Entry { ino, kind: FileKind::Directory } = e {
                            lower_dir_of_upper.insert(name.to_vec(), lower_ino(layer_id, ino.0));
                        }
                    }
                    return ControlFlow::Continue(());
                }
                if seen.contains(name) {
                    return ControlFlow::Continue(());
                }
                this_layer.push(name.to_vec());
                if let LowerDirEntry::Entry { ino, kind } = e {
                    lower_entries.push(DirEntry { name: name.to_vec(), ino: lower_ino(layer_id, ino.0), kind });
                }
                ControlFlow::Continue(())
            })?;
            for n in this_layer {
                decided.insert(n.clone());
                seen.insert(n);
            }
        }
        // d_ino of upper entries, the same way lookup computes st_ino.
        if let Some(fd) = &ufd {
            let u = self.upper()?;
            for (name, d_ino, kind) in upper_entries {
                let cname = sys::cstr(&name)?;
                let at = sys::XattrPath::child(fd.as_fd(), &cname);
                let origin = if s.impure || kind.is_dir() { self.read_origin(&at) } else { None };
                // The same choice as `resolve_upper`: origin, else for a merged directory its
                // topmost lower part (through its redirect when it has one).
                let merged = match origin {
                    Some((l, i)) => Some(lower_ino(l, i.0)),
                    None if kind.is_dir() && !u.is_opaque(&at) => {
                        match Self::redirect_path(u, &at, s.lower_path.as_deref()) {
                            Some(path) => self.lower_dirs_at(&path)?.first().map(|r| self.lower_ref_ino(*r)),
                            None => lower_dir_of_upper.get(&name).copied(),
                        }
                    }
                    None => None,
                };
                let ino = merged.unwrap_or(upper_ino(UpperIno(d_ino)));
                out.push(DirEntry { name, ino, kind });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        for e in lower_entries {
            out.push(e);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_lower::MemLower;
    use std::path::Path;

    struct Fixture {
        _dir: tempfile::TempDir,
        u: Union,
    }

    fn fixture(lowers: Vec<MemLower>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("upper")).unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let upper = Upper::open(&dir.path().join("upper"), &dir.path().join("work")).unwrap();
        let layers: Vec<Arc<dyn Lower>> = lowers.into_iter().map(|l| Arc::new(l) as Arc<dyn Lower>).collect();
        let u = Union::new(layers, Some(upper)).unwrap();
        Fixture { _dir: dir, u }
    }

    fn remount(f: Fixture, lowers: Vec<MemLower>) -> Fixture {
        let Fixture { _dir: dir, u } = f;
        drop(u);
        let upper = Upper::open(&dir.path().join("upper"), &dir.path().join("work")).unwrap();
        let layers: Vec<Arc<dyn Lower>> = lowers.into_iter().map(|l| Arc::new(l) as Arc<dyn Lower>).collect();
        Fixture { u: Union::new(layers, Some(upper)).unwrap(), _dir: dir }
    }

    fn upper_path(f: &Fixture) -> std::path::PathBuf {
        f._dir.path().join("upper")
    }

    fn names(u: &Union, ino: Ino) -> Vec<String> {
        let v = u.readdir(ino, 0).unwrap().entries;
        let mut n: Vec<String> = v[2..].iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
        n.sort();
        n
    }

    fn path_ino(u: &Union, path: &str) -> Result<Attr> {
        let mut cur = u.getattr(Ino::ROOT, None)?;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = u.lookup(cur.ino, c.as_bytes())?;
        }
        Ok(cur)
    }

    fn read_all(u: &Union, ino: Ino) -> Vec<u8> {
        let o = u.open(ino, libc::O_RDONLY).unwrap();
        let d = u.read(o.fh, 0, 1 << 20).unwrap();
        u.release(o.fh);
        d
    }

    const CTX: Ctx = Ctx { uid: 1000, gid: 1000, pid: 1 };

    fn base() -> Vec<MemLower> {
        vec![
            MemLower::new("top")
                .file("a/top.txt", b"top", 0o644)
                .whiteout("a/gone")
                .dir("b", 0o755)
                .opaque("b")
                .file("b/only", b"b", 0o644),
            MemLower::new("bottom")
                .file("a/gone", b"x", 0o644)
                .file("a/bottom.txt", b"bottom", 0o600)
                .file("b/hidden", b"h", 0o644)
                .file("d/sub/f", b"f", 0o644)
                .file("big", &[7u8; 10000], 0o444)
                .hardlink("big", "big2"),
        ]
    }

    #[test]
    fn lower_nodes_cost_no_inode_until_changed() {
        let lowers = || {
            vec![
                MemLower::new("top").file("a/new.txt", b"new", 0o644),
                MemLower::new("bottom")
                    .file("a/f", b"data", 0o640)
                    .xattr("a/f", "user.k", b"v")
                    .symlink("a/l", "f")
                    .file("a/g", b"g", 0o644)
                    .file("a/h", b"h", 0o644)
                    .file("a/k", b"k", 0o644)
                    .file("big", &[7u8; 100], 0o444)
                    .hardlink("big", "big2"),
            ]
        };
        let f = fixture(lowers());
        let u = &f.u;
        let a = path_ino(u, "a").unwrap();
        let [fa, la, ga, ha, ka] = ["f", "l", "g", "h", "k"].map(|n| u.lookup(a.ino, n.as_bytes()).unwrap());
        path_ino(u, "a/new.txt").unwrap();
        // Files with one link in one layer are lower nodes; a merged directory and hard links are not.
        let _big = path_ino(u, "big").unwrap();
        assert_eq!(u.table().lower_nodes(), 6);
        // Read-only operations keep them so.
        assert_eq!(fa.generation, Generation::LOWER);
        assert_eq!(u.getattr(fa.ino, None).unwrap(), fa);
        assert_eq!(read_all(u, fa.ino), b"data");
        assert_eq!(u.getxattr(fa.ino, b"user.k").unwrap(), b"v");
        assert_eq!(u.listxattr(fa.ino).unwrap(), b"user.k\0");
        assert_eq!(u.readlink(la.ino).unwrap(), b"f");
        assert_eq!(u.readlink(fa.ino).unwrap_err(), Errno::EINVAL);
        assert_eq!(u.opendir(fa.ino).unwrap_err(), Errno::ENOTDIR);
        assert_eq!(u.open(a.ino, libc::O_RDONLY).unwrap_err(), Errno::EISDIR);
        assert_eq!(u.lookup(a.ino, b"f").unwrap(), fa);
        assert_eq!(u.table().lookups(fa.ino), 2);
        assert_eq!(u.table().lower_nodes(), 6);
        // A change makes a full inode of the same identity: its name is found again.
        let ch = SetAttr { mode: Some(0o600), ..SetAttr::default() };
        let after = u.setattr(fa.ino, &ch).unwrap();
        assert_eq!((after.ino, after.generation, after.perm), (fa.ino, fa.generation, 0o600));
        assert_eq!(std::fs::metadata(upper_path(&f).join("a/f")).unwrap().len(), 4);
        assert_eq!(u.table().lower_nodes(), 5);
        assert_eq!(u.table().lookups(fa.ino), 2);
        // Writing through a read-only open taken before the copy-up still reads the old data.
        let o = u.open(ga.ino, libc::O_RDONLY).unwrap();
        let w = u.open(ga.ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
        u.write(w.fh, 0, b"G2", false).unwrap();
        u.release(w.fh);
        assert_eq!(u.read(o.fh, 0, 10).unwrap(), b"g");
        u.release(o.fh);
        assert_eq!(read_all(u, ga.ino), b"G2");
        // Unlinking a held lower node: fstat sees nlink 0, the data stays readable.
        let o = u.open(ha.ino, libc::O_RDONLY).unwrap();
        u.remove(a.ino, b"h", false).unwrap();
        assert_eq!(u.getattr(ha.ino, Some(o.fh)).unwrap().nlink, 0);
        assert_eq!(u.read(o.fh, 0, 10).unwrap(), b"h");
        u.release(o.fh);
        assert_eq!(path_ino(u, "a/h").unwrap_err(), Errno::ENOENT);
        // Rename and link keep the node id; the link count follows.
        u.rename(a.ino, b"k", Ino::ROOT, b"k2", 0).unwrap();
        assert_eq!(path_ino(u, "k2").unwrap().ino, ka.ino);
        let l = u.link(la.ino, Ino::ROOT, b"l2").unwrap();
        assert_eq!((l.ino, l.nlink), (la.ino, 2));
        assert_eq!(u.table().lower_nodes(), 1); // new.txt
        // Forgetting drops them.
        let n = u.table().len();
        let new = path_ino(u, "a/new.txt").unwrap();
        u.forget(new.ino, 2);
        assert_eq!(u.table().len(), n - 1);
        assert_eq!(u.table().lower_nodes(), 0);
        assert_eq!(u.getattr(new.ino, None).unwrap_err(), Errno::ESTALE);
        // After a remount the changes are there; untouched files are lower nodes again.
        let f = remount(f, lowers());
        let u = &f.u;
        assert_eq!(path_ino(u, "a/f").unwrap().perm, 0o600);
        assert_eq!(path_ino(u, "a/f").unwrap().ino, fa.ino);
        assert_eq!(u.table().lower_nodes(), 0);
        assert_eq!(path_ino(u, "a/new.txt").unwrap().ino, new.ino);
        assert_eq!(u.table().lower_nodes(), 1);
    }

    #[test]
    fn lower_directories_are_lower_nodes_until_changed() {
        let lowers = || {
            vec![
                MemLower::new("top").file("x/t", b"t", 0o644),
                MemLower::new("bottom")
                    .file("d/e/f", b"f", 0o644)
                    .file("d/e/k", b"k", 0o644)
                    .file("d/e/sub/h", b"h", 0o644)
                    .file("d/e/hl1", b"hl", 0o644)
                    .hardlink("d/e/hl1", "d/hl2")
                    .file("d/z", b"z", 0o644),
            ]
        };
        let f = fixture(lowers());
        let u = &f.u;
        let d = path_ino(u, "d").unwrap();
        let e = u.lookup(d.ino, b"e").unwrap();
        let sub = u.lookup(e.ino, b"sub").unwrap();
        let h = u.lookup(sub.ino, b"h").unwrap();
        // Directories of one layer are lower nodes too, and so is what is looked up in them.
        assert_eq!(
            (d.generation, e.generation, sub.generation),
            (Generation::LOWER, Generation::LOWER, Generation::LOWER)
        );
        assert_eq!(u.table().lower_nodes(), 4);
        assert_eq!(u.getattr(e.ino, None).unwrap(), e);
        assert!(u.opendir(e.ino).unwrap());
        let page = u.readdir(e.ino, 0).unwrap();
        assert_eq!((page.entries[0].ino, page.entries[1].ino), (e.ino, d.ino));
        assert_eq!(names(u, e.ino), ["f", "hl1", "k", "sub"]);
        assert_eq!(names(u, d.ino), ["e", "hl2", "z"]);
        let sub_entry = page.entries.iter().find(|x| x.name == b"sub").unwrap();
        assert_eq!((sub_entry.ino, sub_entry.kind), (sub.ino, FileKind::Directory));
        assert_eq!(u.lookup(e.ino, b"nope").unwrap_err(), Errno::ENOENT);
        assert_eq!(u.lookup(h.ino, b"x").unwrap_err(), Errno::ENOTDIR);
        assert_eq!(read_all(u, h.ino), b"h");
        assert_eq!(u.table().lower_nodes(), 4);
        // A directory's count holds the lower nodes below it besides the kernel's lookups.
        assert_eq!([d.ino, e.ino, sub.ino, h.ino].map(|i| u.table().lookups(i)), [2, 2, 2, 1]);
        // A change below makes full inodes of the chain, each with its name and lower path.
        let ch = SetAttr { mode: Some(0o600), ..SetAttr::default() };
        assert_eq!(u.setattr(h.ino, &ch).unwrap().perm, 0o600);
        assert!(upper_path(&f).join("d/e/sub/h").exists());
        assert_eq!(read_all(u, h.ino), b"h");
        assert_eq!(u.table().lower_nodes(), 0);
        assert_eq!(path_ino(u, "d/e").unwrap().ino, e.ino);
        assert_eq!(path_ino(u, "d/e/sub").unwrap().generation, Generation::LOWER);
        // A hard link looked up in a lower directory node is a full inode (its parent too).
        let d2 = path_ino(u, "d").unwrap();
        assert_eq!(d2.ino, d.ino);
        u.forget(e.ino, u.table().lookups(e.ino));
        let e2 = u.lookup(d.ino, b"e").unwrap();
        let hl1 = u.lookup(e2.ino, b"hl1").unwrap();
        assert_eq!(hl1.nlink, 2);
        assert_eq!(u.lookup(d.ino, b"hl2").unwrap().ino, hl1.ino);
        // Renaming a directory that was a lower node writes the right redirect; creating in
        // one copies its chain up.
        let e3 = path_ino(u, "d/e").unwrap();
        u.rename(d.ino, b"e", Ino::ROOT, b"e2", 0).unwrap();
        assert_eq!(names(u, e3.ino), ["f", "hl1", "k", "sub"]);
        let x = path_ino(u, "x").unwrap();
        let x2 = u.lookup(Ino::ROOT, b"d").unwrap();
        let (made, o) = u.create(&CTX, x2.ino, b"new", 0o644, libc::O_WRONLY).unwrap();
        u.release(o.fh);
        assert_eq!(made.uid, 1000);
        assert!(x.ino != x2.ino);
        let f = remount(f, lowers());
        let u = &f.u;
        assert_eq!(names(u, path_ino(u, "e2").unwrap().ino), ["f", "hl1", "k", "sub"]);
        assert_eq!(path_ino(u, "e2").unwrap().ino, e.ino);
        assert_eq!(read_all(u, path_ino(u, "e2/sub/h").unwrap().ino), b"h");
        assert_eq!(path_ino(u, "e2/sub/h").unwrap().perm, 0o600);
        assert_eq!(names(u, path_ino(u, "d").unwrap().ino), ["hl2", "new", "z"]);
        assert_eq!(path_ino(u, "d/e").unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn merge_whiteouts_and_opaque() {
        let f = fixture(base());
        let u = &f.u;
        assert_eq!(names(u, Ino::ROOT), ["a", "b", "big", "big2", "d"]);
        let a = path_ino(u, "a").unwrap();
        assert_eq!(names(u, a.ino), ["bottom.txt", "top.txt"]);
        assert_eq!(path_ino(u, "a/gone").unwrap_err(), Errno::ENOENT);
        let b = path_ino(u, "b").unwrap();
        assert_eq!(names(u, b.ino), ["only"]);
        // d_ino == st_ino for every entry.
        for e in u.readdir(a.ino, 0).unwrap().entries[2..].iter() {
            assert_eq!(u.lookup(a.ino, &e.name).unwrap().ino, e.ino);
        }
        // Unique across layers.
        let t = path_ino(u, "a/top.txt").unwrap();
        let bt = path_ino(u, "a/bottom.txt").unwrap();
        assert_ne!(t.ino, bt.ino);
        assert_eq!(path_ino(u, "big").unwrap().ino, path_ino(u, "big2").unwrap().ino);
        assert_eq!(path_ino(u, "x".repeat(256).as_str()).unwrap_err(), Errno::ENAMETOOLONG);
    }

    #[test]
    fn rm_rf_then_mkdir_is_empty_and_opaque_after_remount() {
        let f = fixture(base());
        let u = &f.u;
        let d = path_ino(u, "d").unwrap();
        let sub = path_ino(u, "d/sub").unwrap();
        u.remove(sub.ino, b"f", false).unwrap();
        u.remove(d.ino, b"sub", true).unwrap();
        u.remove(Ino::ROOT, b"d", true).unwrap();
        assert_eq!(path_ino(u, "d").unwrap_err(), Errno::ENOENT);
        let d2 = u.mkdir(&CTX, Ino::ROOT, b"d", 0o755).unwrap();
        assert_eq!(d2.uid, 1000);
        let s2 = u.mkdir(&CTX, d2.ino, b"sub", 0o755).unwrap();
        assert!(names(u, s2.ino).is_empty());
        assert_eq!(names(u, d2.ino), ["sub"]);
        let f = remount(f, base());
        let u = &f.u;
        assert_eq!(names(u, path_ino(u, "d/sub").unwrap().ino), Vec::<String>::new());
        assert_eq!(names(u, path_ino(u, "d").unwrap().ino), ["sub"]);
        // no whiteout inside the opaque directory
        let up = upper_path(&f);
        assert_eq!(std::fs::read_dir(up.join("d")).unwrap().count(), 1);
    }

    #[test]
    fn copy_up_keeps_ino_data_and_parent_times() {
        let f = fixture(base());
        let u = &f.u;
        let a = path_ino(u, "a").unwrap();
        let t = path_ino(u, "a/bottom.txt").unwrap();
        u.setattr(t.ino, &SetAttr { uid: Some(5), ..Default::default() }).unwrap();
        let t2 = u.getattr(t.ino, None).unwrap();
        assert_eq!((t2.ino, t2.perm, t2.uid, t2.mtime), (t.ino, 0o600, 5, t.mtime));
        assert_eq!(u.getattr(a.ino, None).unwrap().mtime, a.mtime);
        assert_eq!(read_all(u, t.ino), b"bottom");
        let f = remount(f, base());
        let u = &f.u;
        let t3 = path_ino(u, "a/bottom.txt").unwrap();
        assert_eq!((t3.ino, t3.uid), (t.ino, 5));
        let e = u.readdir(path_ino(u, "a").unwrap().ino, 0).unwrap().entries;
        assert!(e.iter().any(|e| e.name == b"bottom.txt" && e.ino == t.ino));
    }

    #[test]
    fn hardlinks_survive_copy_up_and_remount() {
        let f = fixture(base());
        let u = &f.u;
        let b1 = path_ino(u, "big").unwrap();
        let o = u.open(b1.ino, libc::O_WRONLY).unwrap();
        u.write(o.fh, 0, b"new", false).unwrap();
        u.release(o.fh);
        let b2 = path_ino(u, "big2").unwrap();
        assert_eq!(b1.ino, b2.ino);
        assert_eq!(&read_all(u, b2.ino)[..3], b"new");
        assert_eq!(u.getattr(b2.ino, None).unwrap().nlink, 2);
        let f = remount(f, base());
        let u = &f.u;
        let c2 = path_ino(u, "big2").unwrap();
        assert_eq!(c2.ino, b1.ino);
        assert_eq!(&read_all(u, c2.ino)[..3], b"new");
        assert_eq!(c2.nlink, 2);
        let c1 = path_ino(u, "big").unwrap();
        assert_eq!(c1.nlink, 2);
    }

    #[test]
    fn rename_merged_dir_uses_redirect() {
        let f = fixture(base());
        let u = &f.u;
        let a = path_ino(u, "a").unwrap();
        u.rename(Ino::ROOT, b"a", Ino::ROOT, b"z", 0).unwrap();
        assert_eq!(path_ino(u, "a").unwrap_err(), Errno::ENOENT);
        let z = path_ino(u, "z").unwrap();
        assert_eq!(z.ino, a.ino);
        assert_eq!(names(u, z.ino), ["bottom.txt", "top.txt"]);
        u.mkdir(&CTX, Ino::ROOT, b"a", 0o700).unwrap();
        let a2 = path_ino(u, "a").unwrap();
        assert!(names(u, a2.ino).is_empty());
        let f = remount(f, base());
        let u = &f.u;
        let z = path_ino(u, "z").unwrap();
        assert_eq!(z.ino, a.ino);
        assert_eq!(names(u, z.ino), ["bottom.txt", "top.txt"]);
        assert!(names(u, path_ino(u, "a").unwrap().ino).is_empty());
        assert_eq!(read_all(u, path_ino(u, "z/top.txt").unwrap().ino), b"top");
    }

    /// An upper directory with a redirect and no origin (as other writers of the overlay
    /// format leave them): readdir's d_ino is the st_ino lookup gives.
    #[test]
    fn redirect_without_origin_keeps_d_ino_equal_to_st_ino() {
        let f = fixture(base());
        let u = &f.u;
        let new = u.mkdir(&CTX, Ino::ROOT, b"new", 0o755).unwrap();
        u.rename(Ino::ROOT, b"a", new.ino, b"moved", 0).unwrap();
        let up = u.upper.as_ref().unwrap();
        let moved = std::fs::File::open(upper_path(&f).join("new/moved")).unwrap();
        let at = sys::XattrPath::fd(moved.as_fd());
        assert!(up.get(&at, &up.names.redirect).is_some());
        up.remove(&at, &up.names.origin).unwrap();
        drop(moved);
        let f = remount(f, base());
        let u = &f.u;
        let new = path_ino(u, "new").unwrap();
        let looked_up = u.lookup(new.ino, b"moved").unwrap();
        let listed = u.readdir(new.ino, 0).unwrap().entries.iter().find(|e| e.name == b"moved").unwrap().ino;
        assert_eq!(listed, looked_up.ino);
        assert_eq!(names(u, looked_up.ino), ["bottom.txt", "top.txt"]);
    }

    #[test]
    fn merged_dir_moved_into_upper_only_dir_keeps_lower_contents() {
        let f = fixture(base());
        let u = &f.u;
        let a = path_ino(u, "a").unwrap();
        let new = u.mkdir(&CTX, Ino::ROOT, b"new", 0o755).unwrap();
        u.rename(Ino::ROOT, b"a", new.ino, b"a", 0).unwrap();
        u.rename(Ino::ROOT, b"d", new.ino, b"d", 0).unwrap();
        let check = |u: &Union, at: &str| {
            assert_eq!(names(u, path_ino(u, at).unwrap().ino), ["bottom.txt", "top.txt"], "{at}");
            assert_eq!(path_ino(u, at).unwrap().ino, a.ino, "{at}");
            assert_eq!(read_all(u, path_ino(u, &format!("{at}/top.txt")).unwrap().ino), b"top");
            assert_eq!(read_all(u, path_ino(u, &format!("{at}/bottom.txt")).unwrap().ino), b"bottom");
        };
        check(u, "new/a");
        let f = remount(f, base());
        let u = &f.u;
        check(u, "new/a");
        assert_eq!(read_all(u, path_ino(u, "new/d/sub/f").unwrap().ino), b"f");
        assert_eq!(path_ino(u, "a").unwrap_err(), Errno::ENOENT);
        // Deeper, then back to where it came from.
        let x = u.mkdir(&CTX, path_ino(u, "new").unwrap().ino, b"x", 0o755).unwrap();
        let y = u.mkdir(&CTX, x.ino, b"y", 0o755).unwrap();
        u.rename(path_ino(u, "new").unwrap().ino, b"a", y.ino, b"a", 0).unwrap();
        let f = remount(f, base());
        let u = &f.u;
        check(u, "new/x/y/a");
        u.rename(path_ino(u, "new/x/y").unwrap().ino, b"a", Ino::ROOT, b"a", 0).unwrap();
        let f = remount(f, base());
        let u = &f.u;
        check(u, "a");
        assert_eq!(names(u, path_ino(u, "new/x/y").unwrap().ino), Vec::<String>::new());
    }

    #[test]
    fn link_of_a_single_link_lower_file_counts_two() {
        let f = fixture(base());
        let u = &f.u;
        let t = path_ino(u, "a/top.txt").unwrap();
        assert_eq!(t.nlink, 1);
        assert_eq!(u.link(t.ino, Ino::ROOT, b"t2").unwrap().nlink, 2);
        let f = remount(f, base());
        let u = &f.u;
        let (t1, t2) = (path_ino(u, "a/top.txt").unwrap(), path_ino(u, "t2").unwrap());
        assert_eq!((t1.nlink, t2.nlink), (2, 2));
        assert_eq!((t1.ino, t2.ino), (t.ino, t.ino));
        u.remove(Ino::ROOT, b"t2", false).unwrap();
        assert_eq!(u.getattr(t1.ino, None).unwrap().nlink, 1);
        let f = remount(f, base());
        let u = &f.u;
        assert_eq!(path_ino(u, "a/top.txt").unwrap().nlink, 1);
    }

    #[test]
    fn looking_up_an_indexed_alias_changes_no_parent() {
        let lowers = || vec![MemLower::new("l").file("h/x", b"data", 0o644).dir("g", 0o755).hardlink("h/x", "g/y")];
        let f = fixture(lowers());
        let u = &f.u;
        let x = path_ino(u, "h/x").unwrap();
        let o = u.open(x.ino, libc::O_WRONLY).unwrap();
        u.write(o.fh, 0, b"DATA", false).unwrap();
        u.release(o.fh);
        let times = |a: Attr| (a.mtime, a.ctime);
        for round in 0..2 {
            let g = path_ino(u, "g").unwrap();
            let y = path_ino(u, "g/y").unwrap();
            assert_eq!((y.ino, y.nlink), (x.ino, 2), "round {round}");
            assert_eq!(times(u.getattr(g.ino, None).unwrap()), times(g), "round {round}");
            assert_eq!(read_all(u, y.ino), b"DATA");
        }
        assert!(!upper_path(&f).join("g").exists(), "a lookup copied the parent up");
        let f = remount(f, lowers());
        let u = &f.u;
        let g = path_ino(u, "g").unwrap();
        let y = path_ino(u, "g/y").unwrap();
        assert_eq!((y.ino, y.nlink), (x.ino, 2));
        assert_eq!(times(u.getattr(g.ino, None).unwrap()), times(g));
        assert!(!upper_path(&f).join("g").exists(), "a lookup copied the parent up");
        assert_eq!(read_all(u, y.ino), b"DATA");
        // Changes through the alias reach the copy; linking, renaming and removing it keep
        // the count.
        u.setattr(y.ino, &SetAttr { mode: Some(0o600), ..Default::default() }).unwrap();
        assert_eq!(path_ino(u, "h/x").unwrap().perm, 0o600);
        assert_eq!(u.link(y.ino, g.ino, b"w").unwrap().nlink, 3);
        assert_eq!(path_ino(u, "h/x").unwrap().nlink, 3);
        u.remove(g.ino, b"w", false).unwrap();
        assert_eq!(path_ino(u, "h/x").unwrap().nlink, 2);
        u.rename(g.ino, b"y", g.ino, b"z", 0).unwrap();
        assert_eq!(path_ino(u, "g/z").unwrap().nlink, 2);
        let f = remount(f, lowers());
        let u = &f.u;
        assert_eq!(path_ino(u, "g/y").unwrap_err(), Errno::ENOENT);
        let z = path_ino(u, "g/z").unwrap();
        assert_eq!((z.ino, z.nlink, z.perm), (x.ino, 2, 0o600));
        u.remove(path_ino(u, "g").unwrap().ino, b"z", false).unwrap();
        assert_eq!(path_ino(u, "h/x").unwrap().nlink, 1);
        assert_eq!(read_all(u, path_ino(u, "h/x").unwrap().ino), b"DATA");
    }

    #[test]
    fn whiteout_replaced_then_renamed_over() {
        let f = fixture(base());
        let u = &f.u;
        let a = path_ino(u, "a").unwrap();
        u.remove(a.ino, b"top.txt", false).unwrap();
        u.symlink(&CTX, a.ino, b"top.txt", b"target").unwrap();
        let (_attr, o) = u.create(&CTX, a.ino, b"new", 0o644, libc::O_WRONLY).unwrap();
        u.release(o.fh);
        u.rename(a.ino, b"new", a.ino, b"top.txt", 0).unwrap();
        assert_eq!(names(u, a.ino), ["bottom.txt", "top.txt"]);
        let t = path_ino(u, "a/top.txt").unwrap();
        assert_eq!(t.kind, FileKind::Regular);
        let up = upper_path(&f).join("a");
        let mut on_disk: Vec<String> =
            std::fs::read_dir(&up).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        on_disk.sort();
        assert_eq!(on_disk, ["top.txt"]);
        assert!(!Path::new(&up.join("new")).exists());
    }

    #[test]
    fn rename_exchange_and_noreplace() {
        let f = fixture(base());
        let u = &f.u;
        let a = path_ino(u, "a").unwrap();
        assert_eq!(u.rename(a.ino, b"top.txt", a.ino, b"bottom.txt", libc::RENAME_NOREPLACE), Err(Errno::EEXIST));
        u.rename(a.ino, b"top.txt", a.ino, b"bottom.txt", libc::RENAME_EXCHANGE).unwrap();
        assert_eq!(read_all(u, path_ino(u, "a/bottom.txt").unwrap().ino), b"top");
        assert_eq!(read_all(u, path_ino(u, "a/top.txt").unwrap().ino), b"bottom");
    }

    #[test]
    fn metadata_only_copy_up_then_write() {
        let f = fixture(base());
        let u = &f.u;
        let b = path_ino(u, "a/bottom.txt").unwrap();
        u.setattr(b.ino, &SetAttr { mode: Some(0o640), ..Default::default() }).unwrap();
        let up = upper_path(&f).join("a/bottom.txt");
        assert_eq!(std::fs::metadata(&up).unwrap().len(), 6);
        assert_eq!(std::fs::read(&up).unwrap(), [0u8; 6], "data was copied");
        assert_eq!(read_all(u, b.ino), b"bottom");
        assert_eq!(u.getattr(b.ino, None).unwrap().perm, 0o640);
        let f = remount(f, base());
        let u = &f.u;
        let b2 = path_ino(u, "a/bottom.txt").unwrap();
        assert_eq!((b2.ino, b2.perm), (b.ino, 0o640));
        assert_eq!(read_all(u, b2.ino), b"bottom");
        let o = u.open(b2.ino, libc::O_WRONLY).unwrap();
        u.write(o.fh, 0, b"B", false).unwrap();
        u.release(o.fh);
        assert_eq!(read_all(u, b2.ino), b"Bottom");
        assert_eq!(std::fs::read(upper_path(&f).join("a/bottom.txt")).unwrap(), b"Bottom");
        let f = remount(f, base());
        let u = &f.u;
        let b3 = path_ino(u, "a/bottom.txt").unwrap();
        assert_eq!(read_all(u, b3.ino), b"Bottom");
        assert_eq!(b3.perm, 0o640);
    }

    #[test]
    fn truncate_to_zero_copies_no_data() {
        let f = fixture(base());
        let u = &f.u;
        let b = path_ino(u, "big").unwrap();
        u.setattr(b.ino, &SetAttr { size: Some(0), ..Default::default() }).unwrap();
        assert_eq!(u.getattr(b.ino, None).unwrap().size, 0);
        let t = path_ino(u, "a/top.txt").unwrap();
        u.setattr(t.ino, &SetAttr { size: Some(0), ..Default::default() }).unwrap();
        assert!(read_all(u, t.ino).is_empty());
        let f = remount(f, base());
        let u = &f.u;
        assert!(read_all(u, path_ino(u, "a/top.txt").unwrap().ino).is_empty());
        assert_eq!(path_ino(u, "big2").unwrap().size, 0);
    }

    #[test]
    fn removing_a_lower_hard_link_keeps_counts_exact() {
        let f = fixture(base());
        let u = &f.u;
        let b = path_ino(u, "big").unwrap();
        assert_eq!(b.nlink, 2);
        u.remove(Ino::ROOT, b"big2", false).unwrap();
        assert_eq!(path_ino(u, "big").unwrap().nlink, 1);
        let f = remount(f, base());
        let u = &f.u;
        let b = path_ino(u, "big").unwrap();
        assert_eq!(b.nlink, 1);
        assert_eq!(path_ino(u, "big2").unwrap_err(), Errno::ENOENT);
        let l = u.link(b.ino, Ino::ROOT, b"big3").unwrap();
        assert_eq!(l.nlink, 2);
        u.remove(Ino::ROOT, b"big", false).unwrap();
        assert_eq!(path_ino(u, "big3").unwrap().nlink, 1);
        assert_eq!(read_all(u, b.ino).len(), 10000);
    }

    #[test]
    fn renaming_over_a_lower_hard_link_keeps_counts_exact() {
        let f = fixture(base());
        let u = &f.u;
        let a = path_ino(u, "a").unwrap();
        u.rename(a.ino, b"top.txt", Ino::ROOT, b"big2", 0).unwrap();
        assert_eq!(path_ino(u, "big").unwrap().nlink, 1);
        assert_eq!(read_all(u, path_ino(u, "big2").unwrap().ino), b"top");
        let f = remount(f, base());
        let u = &f.u;
        assert_eq!(path_ino(u, "big").unwrap().nlink, 1);
        assert_eq!(read_all(u, path_ino(u, "big").unwrap().ino).len(), 10000);
    }

    #[test]
    fn listings_go_on_from_any_offset_without_skips_or_repeats() {
        let f = fixture(base());
        let u = &f.u;
        let a = path_ino(u, "a").unwrap();
        for i in 0..300 {
            let (_, o) = u.create(&CTX, a.ino, format!("f{i}").as_bytes(), 0o644, libc::O_WRONLY).unwrap();
            u.release(o.fh);
        }
        let name = |e: &DirEntry| String::from_utf8_lossy(&e.name).into_owned();
        let p = u.readdir(a.ino, 0).unwrap();
        assert_eq!(p.entries.len(), 2 + 2 + 300);
        assert!((1..p.entries.len()).all(|i| p.offset(i - 1) < p.offset(i)), "offsets increase");
        let mut seen: Vec<String> = p.entries[..150].iter().map(name).collect();
        let off = p.offset(149);
        // Changes on both sides of the reader's position, then the listing is lost (evicted,
        // or the reader went on from the kernel's cache of an older listing).
        let before: Vec<String> = p.entries[2..].iter().map(name).collect();
        let (read, unread) = (before[10].clone(), before[200].clone());
        for n in [&read, &unread] {
            u.remove(a.ino, n.as_bytes(), false).unwrap();
        }
        for i in 0..50 {
            let (_, o) = u.create(&CTX, a.ino, format!("new{i}").as_bytes(), 0o644, libc::O_WRONLY).unwrap();
            u.release(o.fh);
        }
        *lock(&u.listings) = Listings::new();
        let mut off = off;
        loop {
            let q = u.readdir(a.ino, off).unwrap();
            if q.start >= q.entries.len() {
                break;
            }
            seen.push(name(&q.entries[q.start]));
            off = q.offset(q.start);
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "repeated entries");
        for n in before.iter().filter(|n| **n != read && **n != unread) {
            assert!(seen.contains(n), "{n} skipped");
        }
        assert!(!seen.contains(&unread));
        // Seeking back goes on after the same entry (in the current listing); an offset past
        // the end gives nothing.
        let back = u.readdir(a.ino, p.offset(99)).unwrap();
        assert!(back.offset(back.start - 1) <= p.offset(99) && back.offset(back.start) > p.offset(99));
        assert!(back.entries[back.start..].iter().take(20).any(|e| e.name == p.entries[100].name));
        assert!(!back.entries[back.start..].iter().any(|e| e.name == p.entries[99].name));
        let end = u.readdir(a.ino, u64::MAX >> 1).unwrap();
        assert_eq!(end.start, end.entries.len());
    }

    #[test]
    fn rmdir_not_empty_and_failed_ops_change_nothing() {
        let f = fixture(base());
        let u = &f.u;
        assert_eq!(u.remove(Ino::ROOT, b"a", true), Err(Errno::ENOTEMPTY));
        assert_eq!(u.remove(Ino::ROOT, b"a", false), Err(Errno::EISDIR));
        assert_eq!(u.mkdir(&CTX, Ino::ROOT, b"a", 0o755).unwrap_err(), Errno::EEXIST);
        assert_eq!(names(u, Ino::ROOT), ["a", "b", "big", "big2", "d"]);
    }
}
