//! The inode table: node id → [`Inode`], with kernel lookup counts, forget and generations.
//!
//! ## Node ids, reuse and generations
//! The node id is the `st_ino` we report (see [`crate::ino`]). A node id can come back for a
//! different object: the host fs recycles the inode number of a deleted upper file. Then the
//! table replaces the [`Inode`] object behind the id with a new one carrying a fresh
//! [`Generation`] (the kernel notices the generation change and drops its stale inode), and
//! **keeps the lookup count**: the kernel's `FORGET` for its old inode carries the same node id
//! and no generation, so the count of a node id is the sum over all kernel inodes that used it.
//! That is what keeps the table consistent under the inode-number reuse that corrupts
//! fuse-overlayfs' table.
//!
//! ## Lock order (documented once, followed everywhere)
//! 1. `Inode::state` locks: a directory before anything inside it; two unrelated inodes in
//!    ascending node id order. Never lock a parent while holding a child.
//! 2. Leaf locks, held only for a copy and never while taking another lock: table shards,
//!    `Inode::pos`, the handle table, the upper directory fd cache, the lower fd caches.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ino::{Generation, Ino, LayerId};
use crate::lower::{FileKind, LowerIno};

/// One lower object contributing to a merged inode: layer position (0 = topmost lower) and
/// its inode number in that layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowerRef {
    /// Index into the stack, topmost lower first.
    pub layer: usize,
    /// Inode number within the layer.
    pub ino: LowerIno,
}

/// The lower objects of an inode: one for files, stored inline (no allocation per inode).
pub type Lowers = smallvec::SmallVec<[LowerRef; 1]>;

/// A name in a directory, stored inline up to 24 bytes (most names), so that an inode costs
/// one allocation.
pub type Name = smallvec::SmallVec<[u8; 24]>;

/// Where an inode sits in the merged tree (one of its names, for hard links).
#[derive(Debug, Clone)]
pub struct Pos {
    /// Parent directory (`None` for the root). Holding the parent keeps the chain of names
    /// to the upper root alive, like the kernel's dentry tree.
    pub parent: Option<Arc<Inode>>,
    /// Name in the parent.
    pub name: Name,
    /// An `O_PATH` fd to the upper object when it is not reachable by `name`: the name is gone
    /// (unlinked while still referenced, so operations on open-unlinked files keep working),
    /// or it is a lower name of a hard link whose copy is in the index (not linked into the
    /// parent until the name itself changes).
    pub detached: Option<Arc<OwnedFd>>,
}

/// Mutable union state of an inode (guarded by `Inode::state`).
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The object exists in the upper directory (at `pos`, or at `pos.detached`).
    pub upper: bool,
    /// Directories: the lower directories merged under it, top first. Other files: the lower
    /// object holding the data while there is no upper copy (at most one).
    pub lowers: Lowers,
    /// Origin of the object (lower layer and inode), kept across copy-up.
    pub origin: Option<(LayerId, LowerIno)>,
    /// Directories: some entry inside carries an origin (its `d_ino` needs a lookup).
    pub impure: bool,
    /// Directories with lower parts: the path of those parts from the lower roots (no leading
    /// slash; empty for the root). Used to write redirects on directory rename.
    pub lower_path: Option<Vec<u8>>,
    /// Regular files: the upper copy is linked into the hard-link index.
    pub indexed: bool,
    /// Regular files: the upper copy holds metadata only (`overlay.metacopy`); the data is
    /// still `lowers[0]`'s.
    pub metacopy: bool,
}

/// An inode of the merged tree.
#[derive(Debug)]
pub struct Inode {
    /// Node id and `st_ino`.
    pub ino: Ino,
    /// Generation of this object.
    pub generation: Generation,
    /// Type (fixed for the life of the object).
    pub kind: FileKind,
    dead: AtomicBool,
    pos: Mutex<Pos>,
    state: Mutex<State>,
}

impl Inode {
    /// A new inode.
    pub fn new(ino: Ino, generation: Generation, kind: FileKind, pos: Pos, state: State) -> Inode {
        Inode { ino, generation, kind, dead: AtomicBool::new(false), pos: Mutex::new(pos), state: Mutex::new(state) }
    }

    /// A copy of the position (leaf lock).
    pub fn pos(&self) -> Pos {
        lock(&self.pos).clone()
    }

    /// Updates the position (leaf lock).
    pub fn set_pos(&self, f: impl FnOnce(&mut Pos)) {
        f(&mut lock(&self.pos))
    }

    /// Locks the union state (see the lock order in the module docs).
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The object has no name left (its last link is gone).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Marks the object as having no name left.
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release)
    }
}

/// Locks a mutex, ignoring poisoning (a panicking request must not wedge the filesystem; our
/// critical sections leave the data consistent at every step).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a node id stands for: a full [`Inode`], or a *lower node*: a file (not a directory)
/// that exists only in one lower layer, with one link, untouched since its lookup. A lower node
/// costs its table slot only (no `Inode`, no name): its layer and inode number are in its node
/// id (see [`crate::ino::lower_parts`]), its name is found again in its parent's lower
/// directory when an operation needs the full inode (see `Union::inode`), and its generation is
/// [`Generation::LOWER`]. Read-mostly containers hold tens of thousands of these.
#[derive(Clone, Debug)]
pub enum Node {
    /// A full inode.
    Full(Arc<Inode>),
    /// A lower node: its parent directory (held, like `Pos::parent`) and its type.
    Lower {
        /// The directory it was looked up in.
        parent: Arc<Inode>,
        /// Its type (never a directory).
        kind: FileKind,
    },
}

impl Node {
    /// Type of the object.
    pub fn kind(&self) -> FileKind {
        match self {
            Node::Full(i) => i.kind,
            Node::Lower { kind, .. } => *kind,
        }
    }

    /// Generation of the object.
    pub fn generation(&self) -> Generation {
        match self {
            Node::Full(i) => i.generation,
            Node::Lower { .. } => Generation::LOWER,
        }
    }
}

/// A table slot: 16 bytes. `inode` is the inode itself, or for a lower node its parent;
/// `meta` holds the kernel's lookup count in its low bits and, for a lower node, its type in
/// the top byte (0 for a full inode).
struct Slot {
    inode: Arc<Inode>,
    meta: u64,
}

const COUNT_BITS: u32 = 56;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn kind_code(kind: FileKind) -> u64 {
    1 + match kind {
        FileKind::Regular => 0,
        FileKind::Directory => 1,
        FileKind::Symlink => 2,
        FileKind::CharDevice => 3,
        FileKind::BlockDevice => 4,
        FileKind::Fifo => 5,
        FileKind::Socket => 6,
    }
}

fn code_kind(code: u64) -> FileKind {
    match code {
        1 => FileKind::Regular,
        2 => FileKind::Directory,
        3 => FileKind::Symlink,
        4 => FileKind::CharDevice,
        5 => FileKind::BlockDevice,
        6 => FileKind::Fifo,
        _ => FileKind::Socket,
    }
}

impl Slot {
    fn full(inode: Arc<Inode>, lookups: u64) -> Slot {
        Slot { inode, meta: lookups.min(COUNT_MASK) }
    }

    fn lower(parent: Arc<Inode>, kind: FileKind, lookups: u64) -> Slot {
        Slot { inode: parent, meta: kind_code(kind) << COUNT_BITS | lookups.min(COUNT_MASK) }
    }

    fn lookups(&self) -> u64 {
        self.meta & COUNT_MASK
    }

    fn set_lookups(&mut self, n: u64) {
        self.meta = (self.meta & !COUNT_MASK) | n.min(COUNT_MASK);
    }

    fn node(&self) -> Node {
        match self.meta >> COUNT_BITS {
            0 => Node::Full(self.inode.clone()),
            code => Node::Lower { parent: self.inode.clone(), kind: code_kind(code) },
        }
    }

    fn full_inode(&self) -> Option<&Arc<Inode>> {
        (self.meta >> COUNT_BITS == 0).then_some(&self.inode)
    }
}

const SHARDS: usize = 32;

/// Node id → inode, sharded.
pub struct InodeTable {
    shards: Vec<Mutex<HashMap<Ino, Slot>>>,
    next_generation: AtomicU64,
}

impl std::fmt::Debug for InodeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InodeTable({} inodes)", self.len())
    }
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    /// An empty table.
    pub fn new() -> InodeTable {
        InodeTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_generation: AtomicU64::new(Generation::LOWER.0 + 1),
        }
    }

    fn shard(&self, ino: Ino) -> MutexGuard<'_, HashMap<Ino, Slot>> {
        let h = ino.0 ^ (ino.0 >> 40);
        lock(&self.shards[(h as usize) % SHARDS])
    }

    /// A fresh generation number.
    pub fn new_generation(&self) -> Generation {
        Generation(self.next_generation.fetch_add(1, Ordering::Relaxed))
    }

    /// What `ino` stands for, if the kernel (or the root) holds it.
    pub fn node(&self, ino: Ino) -> Option<Node> {
        self.shard(ino).get(&ino).map(Slot::node)
    }

    /// The full inode behind `ino`, if the kernel holds it as one (not as a lower node: see
    /// `Union::inode`, which turns those into full inodes).
    pub fn get(&self, ino: Ino) -> Option<Arc<Inode>> {
        self.shard(ino).get(&ino).and_then(|s| s.full_inode().cloned())
    }

    /// Generation of `ino` (a held object's, else [`Generation::LOWER`]).
    pub fn generation(&self, ino: Ino) -> Generation {
        self.shard(ino).get(&ino).map_or(Generation::LOWER, |s| s.node().generation())
    }

    /// Inserts the root (never forgotten).
    pub fn insert_root(&self, inode: Inode) -> Arc<Inode> {
        let inode = Arc::new(inode);
        self.shard(inode.ino).insert(inode.ino, Slot::full(inode.clone(), 1 << 55));
        inode
    }

    /// Finds the live inode for `ino` of type `kind` and lets `update` refresh it, or installs
    /// a new object made by `make` (replacing a dead one or one of another type, keeping the
    /// lookup count; a lower node becomes the new object with its generation). Adds `count`
    /// kernel lookups.
    pub fn get_or_insert(
        &self,
        ino: Ino,
        kind: FileKind,
        count: u64,
        update: impl FnOnce(&Arc<Inode>),
        make: impl FnOnce(Generation) -> Inode,
    ) -> Arc<Inode> {
        let mut shard = self.shard(ino);
        if let Some(slot) = shard.get_mut(&ino) {
            let lookups = slot.lookups() + count;
            match slot.node() {
                Node::Full(inode) if !inode.is_dead() && inode.kind == kind => {
                    slot.set_lookups(lookups);
                    drop(shard);
                    update(&inode);
                    return inode;
                }
                Node::Lower { kind: k, .. } if k == kind => {
                    // The same object, now with a state a lower node cannot hold (an upper
                    // copy, another name): it keeps its generation.
                    let inode = Arc::new(make(Generation::LOWER));
                    *slot = Slot::full(inode.clone(), lookups);
                    return inode;
                }
                _ => {}
            }
            let inode = Arc::new(make(self.new_generation()));
            *slot = Slot::full(inode.clone(), lookups);
            return inode;
        }
        let inode = Arc::new(make(self.new_generation()));
        shard.insert(ino, Slot::full(inode.clone(), count));
        inode
    }

    /// Holds `ino` as a lower node looked up in `parent`, adding `count` kernel lookups;
    /// `None` when the node id stands for a full inode (live, or dead and to be replaced by a
    /// new generation): the caller then goes the full way ([`InodeTable::get_or_insert`]).
    pub fn insert_lower(&self, ino: Ino, kind: FileKind, parent: &Arc<Inode>, count: u64) -> Option<()> {
        let mut shard = self.shard(ino);
        match shard.get_mut(&ino) {
            None => {
                shard.insert(ino, Slot::lower(parent.clone(), kind, count));
                Some(())
            }
            Some(slot) => match slot.node() {
                Node::Lower { kind: k, .. } if k == kind => {
                    *slot = Slot::lower(parent.clone(), kind, slot.lookups() + count);
                    Some(())
                }
                _ => None,
            },
        }
    }

    /// Turns the lower node `ino` into the full inode `make` builds (with
    /// [`Generation::LOWER`]), unless another thread did first; returns the full inode, or
    /// `None` when `ino` is not held.
    pub fn make_full(&self, ino: Ino, make: impl FnOnce() -> Inode) -> Option<Arc<Inode>> {
        let mut shard = self.shard(ino);
        let slot = shard.get_mut(&ino)?;
        if let Some(inode) = slot.full_inode() {
            return Some(inode.clone());
        }
        let inode = Arc::new(make());
        *slot = Slot::full(inode.clone(), slot.lookups());
        Some(inode)
    }

    /// Adds kernel lookups to a held inode (readdirplus and hard links reuse inodes).
    pub fn add_lookups(&self, ino: Ino, count: u64) {
        if let Some(slot) = self.shard(ino).get_mut(&ino) {
            slot.set_lookups(slot.lookups() + count);
        }
    }

    /// Drops `n` kernel lookups; the inode leaves the table at zero.
    pub fn forget(&self, ino: Ino, n: u64) {
        let mut shard = self.shard(ino);
        if let Some(slot) = shard.get_mut(&ino) {
            let left = slot.lookups().saturating_sub(n);
            slot.set_lookups(left);
            if left == 0 {
                shard.remove(&ino);
            }
        }
    }

    /// Number of inodes held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Number of inodes held as lower nodes (without an [`Inode`]).
    pub fn lower_nodes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).values().filter(|s| s.full_inode().is_none()).count()).sum()
    }

    /// True when only nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Current lookup count of `ino` (tests).
    pub fn lookups(&self, ino: Ino) -> u64 {
        self.shard(ino).get(&ino).map_or(0, Slot::lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos() -> Pos {
        Pos { parent: None, name: Name::from_slice(b"x"), detached: None }
    }

    #[test]
    fn reuse_keeps_lookup_count_and_bumps_generation() {
        let t = InodeTable::new();
        let make = |g| Inode::new(Ino(7), g, FileKind::Regular, pos(), State::default());
        let a = t.get_or_insert(Ino(7), FileKind::Regular, 1, |_| {}, make);
        let a2 = t.get_or_insert(Ino(7), FileKind::Regular, 1, |_| {}, make);
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(t.lookups(Ino(7)), 2);
        a.mark_dead();
        let b = t.get_or_insert(Ino(7), FileKind::Regular, 1, |_| {}, make);
        assert_ne!(a.generation, b.generation);
        assert_eq!(t.lookups(Ino(7)), 3);
        t.forget(Ino(7), 2); // the kernel forgets the old inode
        assert!(t.get(Ino(7)).is_some());
        t.forget(Ino(7), 1);
        assert!(t.get(Ino(7)).is_none());
    }
}
