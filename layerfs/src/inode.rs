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
//! 2. The table's chunk locks (lower nodes of dense layers): one at a time, after any
//!    `Inode::state` lock and before the table's shard and far-parent locks; no `Inode::state`
//!    lock is taken while one is held.
//! 3. Leaf locks, held only for a copy and never while taking another lock: table shards, the
//!    far-parent table, `Inode::pos`, the handle table, the upper directory fd cache, the lower
//!    fd caches.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ino::{Generation, INO_BITS, Ino, LayerId, lower_parts};
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

/// Lower nodes per dense layer: entries of 8 bytes indexed by inode number, in chunks that exist
/// while a node of theirs is held (a walk of `usr/lib` of the Debian image touches 86 chunks of
/// 256 for its 19,758 entries: 0.2 MB where a hash table takes 0.8).
const CHUNK: usize = 256;

struct Chunk {
    live: u32,
    e: [u64; CHUNK],
}

/// Entry layout: count (20 bits, the maximum pins the node) | kind code (3) | far parent (1) |
/// parent (40 bits: the parent's inode number in the same layer, or 0 with the far bit, the
/// parent then in [`InodeTable::far_parents`]). 0 = no node.
const D_COUNT_SHIFT: u32 = 44;
const D_COUNT_MAX: u64 = (1 << 20) - 1;
const D_KIND_SHIFT: u32 = 41;
const D_FAR: u64 = 1 << INO_BITS;
const D_LOW_MASK: u64 = (1 << INO_BITS) - 1;

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

fn d_count(e: u64) -> u64 {
    e >> D_COUNT_SHIFT
}

fn d_kind(e: u64) -> FileKind {
    code_kind((e >> D_KIND_SHIFT) & 7)
}

fn d_with_count(e: u64, count: u64) -> u64 {
    (e & ((1 << D_COUNT_SHIFT) - 1)) | count.min(D_COUNT_MAX) << D_COUNT_SHIFT
}

/// The lower nodes of one layer whose inode numbers are below a bound.
struct Dense {
    chunks: Vec<Mutex<Option<Box<Chunk>>>>,
}

/// Node id → [`Node`], sharded. A lower node holds its parent by node id: the parent's count
/// includes one for each such child, so the parent stays in the table (full or lower) as long
/// as any lower node below it does, whatever the kernel forgets first. When a lower node
/// becomes a full inode, its [`Pos::parent`] holds the parent instead.
pub struct InodeTable {
    shards: Vec<Mutex<HashMap<Ino, Slot>>>,
    /// By node id tag (layer id + 1): dense layers' lower nodes. For their node ids the chunk
    /// lock is taken first (then the shard lock), so a node moves between the chunk and the
    /// hash atomically.
    dense: Vec<Option<Dense>>,
    /// Parents of dense lower nodes that are not in the node's own layer (the root, merged
    /// directories named after another layer).
    far_parents: Mutex<HashMap<Ino, Ino>>,
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
        Self::with_dense_layers(&[])
    }

    /// An empty table that keeps the lower nodes of the given layers, whose inode numbers are
    /// below the given bounds, in arrays instead of the hash.
    pub fn with_dense_layers(layers: &[(LayerId, u64)]) -> InodeTable {
        let mut dense: Vec<Option<Dense>> = Vec::new();
        // Beyond 2^24 inodes the chunk directory alone would cost a megabyte per mount: such
        // layers (or corrupt ones claiming to be) use the hash.
        for &(id, bound) in layers.iter().filter(|(_, bound)| *bound <= 1 << 24) {
            let tag = id.0 as usize + 1;
            if dense.len() <= tag {
                dense.resize_with(tag + 1, || None);
            }
            let n = usize::try_from(bound.min(D_LOW_MASK)).unwrap_or(usize::MAX).div_ceil(CHUNK);
            dense[tag] = Some(Dense { chunks: (0..n).map(|_| Mutex::new(None)).collect() });
        }
        InodeTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            dense,
            far_parents: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(Generation::LOWER.0 + 1),
        }
    }

    /// The chunk lock and index of `ino`'s entry, when it is a node id of a dense layer.
    fn dense_pos(&self, ino: Ino) -> Option<(&Mutex<Option<Box<Chunk>>>, usize)> {
        let (layer, n) = lower_parts(ino)?;
        let d = self.dense.get(layer.0 as usize + 1)?.as_ref()?;
        let n = usize::try_from(n).ok()?;
        Some((d.chunks.get(n / CHUNK)?, n % CHUNK))
    }

    /// The live entry of a locked chunk.
    fn d_entry(chunk: &Option<Box<Chunk>>, i: usize) -> Option<u64> {
        chunk.as_ref().map(|c| c.e[i]).filter(|e| *e != 0)
    }

    /// Packs a dense entry for `ino` held by `parent` (recording a far parent).
    fn d_pack(&self, ino: Ino, kind: FileKind, count: u64, parent: Ino) -> u64 {
        let base = count.min(D_COUNT_MAX) << D_COUNT_SHIFT | kind_code(kind) << D_KIND_SHIFT;
        if parent.0 >> INO_BITS == ino.0 >> INO_BITS && parent.0 & D_LOW_MASK != 0 {
            base | (parent.0 & D_LOW_MASK)
        } else {
            lock(&self.far_parents).insert(ino, parent);
            base | D_FAR
        }
    }

    /// The parent an entry of `ino` holds.
    fn d_parent(&self, ino: Ino, e: u64) -> Ino {
        if e & D_FAR != 0 {
            lock(&self.far_parents).get(&ino).copied().unwrap_or(Ino::ROOT)
        } else {
            Ino((ino.0 >> INO_BITS) << INO_BITS | (e & D_LOW_MASK))
        }
    }

    /// Clears the entry `i` of a locked chunk (freeing the chunk when it was the last), returns
    /// the parent it held.
    fn d_clear(&self, chunk: &mut Option<Box<Chunk>>, i: usize, ino: Ino) -> Option<Ino> {
        let c = chunk.as_mut()?;
        let e = std::mem::take(&mut c.e[i]);
        if e == 0 {
            return None;
        }
        c.live -= 1;
        if c.live == 0 {
            *chunk = None;
        }
        let parent = self.d_parent(ino, e);
        if e & D_FAR != 0 {
            lock(&self.far_parents).remove(&ino);
        }
        Some(parent)
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
        if let Some((m, i)) = self.dense_pos(ino)
            && let Some(e) = Self::d_entry(&lock(m), i)
        {
            return Some(Node::Lower { parent: self.d_parent(ino, e), kind: d_kind(e) });
        }
        self.shard(ino).get(&ino).map(Slot::node)
    }

    /// The full inode behind `ino`, if the kernel holds it as one (not as a lower node: see
    /// `Union::inode`, which turns those into full inodes).
    pub fn get(&self, ino: Ino) -> Option<Arc<Inode>> {
        self.shard(ino).get(&ino).and_then(|s| s.full_inode().cloned())
    }

    /// Generation of `ino` (a held object's, else [`Generation::LOWER`]).
    pub fn generation(&self, ino: Ino) -> Generation {
        self.node(ino).map_or(Generation::LOWER, |n| n.generation())
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
        // A dense lower node: its chunk stays locked until the full inode is in the hash.
        let mut dense = self.dense_pos(ino).map(|(m, i)| (lock(m), i));
        if let Some((chunk, i)) = dense.as_mut()
            && let Some(e) = Self::d_entry(chunk, *i)
        {
            let generation = if d_kind(e) == kind { Generation::LOWER } else { self.new_generation() };
            let total = if d_count(e) == D_COUNT_MAX { u32::MAX } else { add(d_count(e) as u32, count) };
            let inode = Arc::new(make(generation));
            self.shard(ino).insert(ino, Slot::Full { inode: inode.clone(), count: total });
            let parent = self.d_clear(chunk, *i, ino);
            drop(dense);
            self.release(parent);
            return inode;
        }
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
                drop(dense);
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
        drop(dense);
        self.release(old.held_parent());
        inode
    }

    /// Holds `ino` as a lower node looked up in `parent` (a held node id), adding `count` kernel
    /// lookups; `None` when the node id stands for a full inode (live, or dead and to be
    /// replaced by a new generation): the caller then goes the full way
    /// ([`InodeTable::get_or_insert`]).
    pub fn insert_lower(&self, ino: Ino, kind: FileKind, parent: Ino, count: u64) -> Option<()> {
        if let Some((m, i)) = self.dense_pos(ino) {
            let mut chunk = lock(m);
            if self.shard(ino).contains_key(&ino) {
                return None;
            }
            let c = chunk.get_or_insert_with(|| Box::new(Chunk { live: 0, e: [0; CHUNK] }));
            let e = c.e[i];
            let old_parent = if e == 0 {
                c.e[i] = self.d_pack(ino, kind, count, parent);
                c.live += 1;
                None
            } else {
                if d_kind(e) != kind {
                    return None;
                }
                let total = if d_count(e) == D_COUNT_MAX { D_COUNT_MAX } else { d_count(e).saturating_add(count) };
                let old = self.d_parent(ino, e);
                if old == parent {
                    c.e[i] = d_with_count(e, total);
                    return Some(());
                }
                if e & D_FAR != 0 {
                    lock(&self.far_parents).remove(&ino);
                }
                c.e[i] = self.d_pack(ino, kind, total, parent);
                Some(old)
            };
            drop(chunk);
            self.add_lookups(parent, 1);
            self.release(old_parent);
            return Some(());
        }
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
        if let Some((m, i)) = self.dense_pos(ino) {
            let mut chunk = lock(m);
            if let Some(e) = Self::d_entry(&chunk, i) {
                let count = if d_count(e) == D_COUNT_MAX { u32::MAX } else { d_count(e) as u32 };
                let inode = Arc::new(make());
                self.shard(ino).insert(ino, Slot::Full { inode: inode.clone(), count });
                let parent = self.d_clear(&mut chunk, i, ino);
                drop(chunk);
                self.release(parent);
                return Some(inode);
            }
        }
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
        if let Some((m, i)) = self.dense_pos(ino) {
            let mut chunk = lock(m);
            if let Some(c) = chunk.as_mut()
                && c.e[i] != 0
            {
                let e = c.e[i];
                if d_count(e) != D_COUNT_MAX {
                    c.e[i] = d_with_count(e, d_count(e).saturating_add(count));
                }
                return;
            }
        }
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
            if let Some((m, i)) = self.dense_pos(ino) {
                let mut chunk = lock(m);
                if let Some(e) = Self::d_entry(&chunk, i) {
                    if d_count(e) == D_COUNT_MAX {
                        return;
                    }
                    let left = d_count(e).saturating_sub(n);
                    if left == 0 {
                        next = self.d_clear(&mut chunk, i, ino).map(|p| (p, 1));
                    } else if let Some(c) = chunk.as_mut() {
                        c.e[i] = d_with_count(e, left);
                    }
                    continue;
                }
            }
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

    /// Number of dense lower nodes.
    fn dense_len(&self) -> usize {
        let chunks = self.dense.iter().flatten().flat_map(|d| d.chunks.iter());
        chunks.map(|m| lock(m).as_ref().map_or(0, |c| c.live as usize)).sum()
    }

    /// Number of inodes held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum::<usize>() + self.dense_len()
    }

    /// Number of inodes held as lower nodes (without an [`Inode`]).
    pub fn lower_nodes(&self) -> usize {
        let hashed: usize =
            self.shards.iter().map(|s| lock(s).values().filter(|s| s.full_inode().is_none()).count()).sum();
        hashed + self.dense_len()
    }

    /// True when only nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Current count of `ino` (kernel lookups plus lower nodes below it; tests).
    pub fn lookups(&self, ino: Ino) -> u64 {
        if let Some((m, i)) = self.dense_pos(ino)
            && let Some(e) = Self::d_entry(&lock(m), i)
        {
            return d_count(e);
        }
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
    fn dense_layers_keep_lower_nodes_in_chunks() {
        use crate::ino::lower_ino;
        let t = InodeTable::with_dense_layers(&[(LayerId(0), 1000)]);
        let root = |g| Inode::new(Ino::ROOT, g, FileKind::Directory, pos(), State::default());
        t.insert_root(root(Generation(9)));
        let (d, e, f) = (lower_ino(LayerId(0), 5), lower_ino(LayerId(0), 6), lower_ino(LayerId(0), 300));
        t.insert_lower(d, FileKind::Directory, Ino::ROOT, 1).unwrap();
        t.insert_lower(e, FileKind::Directory, d, 1).unwrap();
        t.insert_lower(f, FileKind::Symlink, e, 1).unwrap();
        t.insert_lower(f, FileKind::Symlink, e, 2).unwrap();
        assert!(matches!(t.node(d), Some(Node::Lower { parent: Ino::ROOT, kind: FileKind::Directory })));
        assert!(matches!(t.node(f), Some(Node::Lower { parent: p, kind: FileKind::Symlink }) if p == e));
        assert_eq!([d, e, f].map(|i| t.lookups(i)), [2, 2, 3]);
        assert_eq!((t.len(), t.lower_nodes(), lock(&t.far_parents).len()), (4, 3, 1));
        assert!(t.shards.iter().all(|s| lock(s).len() <= 1));
        // A node of another kind under the same id goes the full way.
        assert!(t.insert_lower(f, FileKind::Regular, e, 1).is_none());
        // Forgetting the parents first keeps them while something below is held.
        t.forget(d, 1);
        t.forget(e, 1);
        assert_eq!(t.lower_nodes(), 3);
        t.forget(f, 3);
        assert_eq!((t.len(), lock(&t.far_parents).len()), (1, 0));
        assert_eq!(t.dense.iter().flatten().flat_map(|d| &d.chunks).filter(|c| lock(c).is_some()).count(), 0);
        // Becoming a full inode moves the count to the hash and drops the hold on the parent.
        t.insert_lower(d, FileKind::Directory, Ino::ROOT, 1).unwrap();
        t.insert_lower(e, FileKind::Directory, d, 1).unwrap();
        let mk = || Inode::new(e, Generation::LOWER, FileKind::Directory, pos(), State::default());
        let full = t.make_full(e, mk).unwrap();
        assert_eq!((t.lookups(e), t.lookups(d), t.lower_nodes()), (1, 1, 1));
        assert!(Arc::ptr_eq(&t.get(e).unwrap(), &full));
        assert!(t.insert_lower(e, FileKind::Directory, d, 1).is_none());
        assert_eq!(t.generation(e), Generation::LOWER);
        // The full way on a lower node of another type: a new object, a new generation.
        let other = |g| Inode::new(d, g, FileKind::Regular, pos(), State::default());
        let o = t.get_or_insert(d, FileKind::Regular, 1, |_| {}, other);
        assert_ne!(o.generation, Generation::LOWER);
        assert_eq!((t.lookups(d), t.lower_nodes()), (2, 0));
        // Counts that reach the maximum pin the node.
        t.insert_lower(f, FileKind::Regular, Ino::ROOT, 1).unwrap();
        t.add_lookups(f, 1 << 30);
        t.forget(f, 1 << 30);
        assert_eq!(t.lookups(f), D_COUNT_MAX);
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
