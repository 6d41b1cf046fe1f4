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

struct Slot {
    inode: Arc<Inode>,
    lookups: u64,
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
            next_generation: AtomicU64::new(1),
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

    /// The inode behind `ino`, if the kernel (or the root) holds it.
    pub fn get(&self, ino: Ino) -> Option<Arc<Inode>> {
        self.shard(ino).get(&ino).map(|s| s.inode.clone())
    }

    /// Inserts the root (never forgotten).
    pub fn insert_root(&self, inode: Inode) -> Arc<Inode> {
        let inode = Arc::new(inode);
        self.shard(inode.ino).insert(inode.ino, Slot { inode: inode.clone(), lookups: 1 << 62 });
        inode
    }

    /// Finds the live inode for `ino` of type `kind` and lets `update` refresh it, or installs
    /// a new object made by `make` (replacing a dead one or one of another type, keeping the
    /// lookup count). Adds `count` kernel lookups.
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
            if !slot.inode.is_dead() && slot.inode.kind == kind {
                slot.lookups += count;
                let inode = slot.inode.clone();
                drop(shard);
                update(&inode);
                return inode;
            }
            let inode = Arc::new(make(self.new_generation()));
            slot.inode = inode.clone();
            slot.lookups += count;
            return inode;
        }
        let inode = Arc::new(make(self.new_generation()));
        shard.insert(ino, Slot { inode: inode.clone(), lookups: count });
        inode
    }

    /// Adds kernel lookups to a held inode (readdirplus and hard links reuse inodes).
    pub fn add_lookups(&self, ino: Ino, count: u64) {
        if let Some(slot) = self.shard(ino).get_mut(&ino) {
            slot.lookups += count;
        }
    }

    /// Drops `n` kernel lookups; the inode leaves the table at zero.
    pub fn forget(&self, ino: Ino, n: u64) {
        let mut shard = self.shard(ino);
        if let Some(slot) = shard.get_mut(&ino) {
            slot.lookups = slot.lookups.saturating_sub(n);
            if slot.lookups == 0 {
                shard.remove(&ino);
            }
        }
    }

    /// Number of inodes held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when only nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Current lookup count of `ino` (tests).
    pub fn lookups(&self, ino: Ino) -> u64 {
        self.shard(ino).get(&ino).map_or(0, |s| s.lookups)
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
