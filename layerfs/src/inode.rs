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

/// What a node id stands for: a full [`Inode`], or a *lower node*: an object that exists only
/// in one lower layer (a directory, or a file with one link), untouched since its lookup. A
/// lower node costs its table slot only (no `Inode`, no name, no lower path): its layer and
/// inode number are in its node id (see [`crate::ino::lower_parts`]), its parent is held by node
/// id, its name is found again in its parent's lower directory when an operation needs the full
/// inode (see `Union::inode`), and its generation is [`Generation::LOWER`]. Read-mostly
/// containers hold tens of thousands of these.
#[derive(Clone, Debug)]
pub enum Node {
    /// A full inode.
    Full(Arc<Inode>),
    /// A lower node.
    Lower {
        /// The node id of the directory it was looked up in (held by the table while this node
        /// is: see [`InodeTable`]).
        parent: Ino,
        /// Its type.
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

/// A table slot (16 bytes). `count` is the number of references to the node id: the kernel's
/// lookups plus one for each lower node whose parent it is. A count that reaches `u32::MAX`
/// stays there (the node is never dropped).
enum Slot {
    Full { inode: Arc<Inode>, count: u32 },
    Lower { parent: Ino, count: u32, kind: FileKind },
}

fn add(count: u32, n: u64) -> u32 {
    u32::try_from(u64::from(count).saturating_add(n)).unwrap_or(u32::MAX)
}

impl Slot {
    fn count(&self) -> u32 {
        match self {
            Slot::Full { count, .. } | Slot::Lower { count, .. } => *count,
        }
    }

    fn count_mut(&mut self) -> &mut u32 {
        match self {
            Slot::Full { count, .. } | Slot::Lower { count, .. } => count,
        }
    }

    fn node(&self) -> Node {
        match self {
            Slot::Full { inode, .. } => Node::Full(inode.clone()),
            Slot::Lower { parent, kind, .. } => Node::Lower { parent: *parent, kind: *kind },
        }
    }

    fn full_inode(&self) -> Option<&Arc<Inode>> {
        match self {
            Slot::Full { inode, .. } => Some(inode),
            Slot::Lower { .. } => None,
        }
    }

    /// The parent a lower node holds.
    fn held_parent(&self) -> Option<Ino> {
        match self {
            Slot::Full { .. } => None,
            Slot::Lower { parent, .. } => Some(*parent),
        }
    }
}

const SHARDS: usize = 32;

/// Node id → [`Node`], sharded. A lower node holds its parent by node id: the parent's count
/// includes one for each such child, so the parent stays in the table (full or lower) as long
/// as any lower node below it does, whatever the kernel forgets first. When a lower node
/// becomes a full inode, its [`Pos::parent`] holds the parent instead.
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
        self.shard(inode.ino).insert(inode.ino, Slot::Full { inode: inode.clone(), count: u32::MAX });
        inode
    }

    /// Drops one reference of `parent` (see [`InodeTable::forget`]).
    fn release(&self, parent: Option<Ino>) {
        if let Some(p) = parent {
            self.forget(p, 1);
        }
    }

    /// Finds the live inode for `ino` of type `kind` and lets `update` refresh it, or installs
    /// a new object made by `make` (replacing a dead one or one of another type, keeping the
    /// count; a lower node becomes the new object with its generation). Adds `count` kernel
    /// lookups.
    pub fn get_or_insert(
        &self,
        ino: Ino,
        kind: FileKind,
        count: u64,
        update: impl FnOnce(&Arc<Inode>),
        make: impl FnOnce(Generation) -> Inode,
    ) -> Arc<Inode> {
        let mut shard = self.shard(ino);
        let Some(slot) = shard.get_mut(&ino) else {
            let inode = Arc::new(make(self.new_generation()));
            shard.insert(ino, Slot::Full { inode: inode.clone(), count: add(0, count) });
            return inode;
        };
        let total = add(slot.count(), count);
        let generation = match &*slot {
            Slot::Full { inode, .. } if !inode.is_dead() && inode.kind == kind => {
                let inode = inode.clone();
                *slot.count_mut() = total;
                drop(shard);
                update(&inode);
                return inode;
            }
            // The same object, now with a state a lower node cannot hold (an upper copy,
            // another name): it keeps its generation.
            Slot::Lower { kind: k, .. } if *k == kind => Generation::LOWER,
            _ => self.new_generation(),
        };
        let inode = Arc::new(make(generation));
        let old = std::mem::replace(slot, Slot::Full { inode: inode.clone(), count: total });
        drop(shard);
        self.release(old.held_parent());
        inode
    }

    /// Holds `ino` as a lower node looked up in `parent` (a held node id), adding `count` kernel
    /// lookups; `None` when the node id stands for a full inode (live, or dead and to be
    /// replaced by a new generation): the caller then goes the full way
    /// ([`InodeTable::get_or_insert`]).
    pub fn insert_lower(&self, ino: Ino, kind: FileKind, parent: Ino, count: u64) -> Option<()> {
        let mut shard = self.shard(ino);
        let old_parent = match shard.get_mut(&ino) {
            None => {
                shard.insert(ino, Slot::Lower { parent, count: add(0, count), kind });
                None
            }
            Some(slot) => match slot {
                Slot::Lower { parent: p, count: c, kind: k } if *k == kind => {
                    *c = add(*c, count);
                    if *p == parent {
                        return Some(());
                    }
                    Some(std::mem::replace(p, parent))
                }
                _ => return None,
            },
        };
        drop(shard);
        // The new reference to the parent (held by the caller's lookup, so it is in the table).
        self.add_lookups(parent, 1);
        self.release(old_parent);
        Some(())
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
        let old = std::mem::replace(slot, Slot::Full { inode: inode.clone(), count: slot.count() });
        drop(shard);
        self.release(old.held_parent());
        Some(inode)
    }

    /// Adds kernel lookups to a held inode (readdirplus and hard links reuse inodes).
    pub fn add_lookups(&self, ino: Ino, count: u64) {
        if let Some(slot) = self.shard(ino).get_mut(&ino) {
            let c = slot.count_mut();
            *c = add(*c, count);
        }
    }

    /// Drops `n` references (kernel lookups) of `ino`; a node that nothing references any more
    /// leaves the table, and drops its reference of its parent in turn (called with no shard
    /// locked).
    pub fn forget(&self, ino: Ino, n: u64) {
        let mut next = Some((ino, n));
        while let Some((ino, n)) = next.take() {
            let mut shard = self.shard(ino);
            let Some(slot) = shard.get_mut(&ino) else { return };
            let c = slot.count_mut();
            if *c == u32::MAX {
                return;
            }
            *c = u32::try_from(u64::from(*c).saturating_sub(n)).unwrap_or(0);
            if *c == 0 {
                next = shard.remove(&ino).and_then(|s| s.held_parent()).map(|p| (p, 1));
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

    /// Current count of `ino` (kernel lookups plus lower nodes below it; tests).
    pub fn lookups(&self, ino: Ino) -> u64 {
        self.shard(ino).get(&ino).map_or(0, |s| u64::from(s.count()))
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

    #[test]
    fn lower_nodes_hold_their_parents() {
        assert!(std::mem::size_of::<Slot>() <= 16);
        let t = InodeTable::new();
        let make = |g| Inode::new(Ino(1), g, FileKind::Directory, pos(), State::default());
        t.get_or_insert(Ino(1), FileKind::Directory, 1, |_| {}, make);
        t.insert_lower(Ino(2), FileKind::Directory, Ino(1), 1).unwrap();
        t.insert_lower(Ino(3), FileKind::Regular, Ino(2), 2).unwrap();
        assert_eq!((t.lookups(Ino(1)), t.lookups(Ino(2)), t.lookups(Ino(3))), (2, 2, 2));
        // The kernel forgets the parents first: they stay while the file is held.
        t.forget(Ino(1), 1);
        t.forget(Ino(2), 1);
        assert!(matches!(t.node(Ino(2)), Some(Node::Lower { parent: Ino(1), kind: FileKind::Directory })));
        assert!(t.get(Ino(1)).is_some());
        t.forget(Ino(3), 1);
        assert_eq!(t.len(), 3);
        t.forget(Ino(3), 1);
        assert!(t.is_empty());
        // A lower node turned full no longer holds its parent by id.
        t.get_or_insert(Ino(1), FileKind::Directory, 1, |_| {}, make);
        t.insert_lower(Ino(2), FileKind::Directory, Ino(1), 1).unwrap();
        assert_eq!(t.lookups(Ino(1)), 2);
        let mk = || Inode::new(Ino(2), Generation::LOWER, FileKind::Directory, pos(), State::default());
        t.make_full(Ino(2), mk).unwrap();
        assert_eq!(t.lookups(Ino(1)), 1);
        assert!(t.insert_lower(Ino(2), FileKind::Directory, Ino(1), 1).is_none());
    }
}
