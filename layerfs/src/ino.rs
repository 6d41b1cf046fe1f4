//! Identity domains, each its own newtype, and the inode number encoding.
//!
//! | type | domain |
//! |---|---|
//! | [`Ino`] | FUSE node id. fuser sends `FileAttr::ino` as both the node id and `st_ino`, so the node id *is* the `st_ino` we report. |
//! | [`Generation`] | bumped whenever a node id is reused for another object (upper inode numbers are recycled by the host fs) |
//! | [`Fh`] | an open file or directory handle |
//! | [`LayerId`] | a lower layer counted from the **bottom** (0 = lowest): stable when layers are stacked on top, so it can be persisted |
//! | [`crate::lower::LowerIno`] | an inode number inside one lower layer (stable, unique within the layer) |
//! | [`UpperIno`] | an `st_ino` on the upper filesystem |
//!
//! ## st_ino encoding (like overlayfs `xino`)
//! `st_ino = tag << 40 | ino`, where `tag` is 0 for objects born in the upper directory and
//! `LayerId + 1` for objects that come from a lower layer (also after copy-up: the origin is
//! remembered in an xattr). So numbers are unique across layers, stable across copy-up, rename
//! and remount, and `d_ino == st_ino`. An inode number that does not fit in 40 bits is folded
//! (xor of its high and low parts) into the range with bit 39 set; such numbers can collide in
//! theory, which is logged once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Bits of the per-layer inode number.
pub const INO_BITS: u32 = 40;
/// Largest number of lower layers the encoding allows.
pub const MAX_LAYERS: usize = (1 << (64 - INO_BITS)) - 2;
const INO_MASK: u64 = (1 << INO_BITS) - 1;

/// FUSE node id, equal to the `st_ino` reported to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory (FUSE_ROOT_ID).
    pub const ROOT: Ino = Ino(1);
}

/// Generation of a node id (see module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation of an object first seen as a lower node (see [`crate::inode::Node`]);
    /// it keeps it when it becomes a full inode. Every later object of the node id gets a
    /// fresh one.
    pub const LOWER: Generation = Generation(1);
}

/// Open file / directory handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

/// A lower layer counted from the bottom (0 = lowest layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerId(pub u32);

/// `st_ino` of an object on the upper filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpperIno(pub u64);

static FOLD_WARNED: AtomicBool = AtomicBool::new(false);

fn fold(ino: u64) -> u64 {
    if ino <= INO_MASK && ino & (1 << (INO_BITS - 1)) == 0 {
        return ino;
    }
    if !FOLD_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(ino, "inode number does not fit in {INO_BITS} bits: folding it (st_ino may collide)");
    }
    let folded = (ino ^ (ino >> INO_BITS) ^ (ino >> 60)) & (INO_MASK >> 1);
    folded | (1 << (INO_BITS - 1))
}

/// `st_ino` of an object born in the upper directory.
pub fn upper_ino(ino: UpperIno) -> Ino {
    let v = fold(ino.0);
    // Node id 1 is the root; an upper object numbered 1 (only a root on tmpfs) moves aside.
    if v == Ino::ROOT.0 {
        return Ino(1 << (INO_BITS - 1));
    }
    Ino(v)
}

/// `st_ino` of an object whose origin is inode `ino` of lower layer `layer`.
pub fn lower_ino(layer: LayerId, ino: u64) -> Ino {
    Ino((u64::from(layer.0) + 1) << INO_BITS | fold(ino))
}

/// The layer and inode number a lower node id was made from ([`lower_ino`]), unless the
/// number was folded (then the node id does not name them).
pub fn lower_parts(ino: Ino) -> Option<(LayerId, u64)> {
    let tag = ino.0 >> INO_BITS;
    let n = ino.0 & INO_MASK;
    (tag != 0 && n & (1 << (INO_BITS - 1)) == 0).then(|| (LayerId((tag - 1) as u32), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_do_not_collide() {
        assert_ne!(lower_ino(LayerId(0), 5), lower_ino(LayerId(1), 5));
        assert_ne!(lower_ino(LayerId(0), 5), upper_ino(UpperIno(5)));
        assert_eq!(upper_ino(UpperIno(1)).0, 1 << 39);
        let big = upper_ino(UpperIno(u64::MAX - 3));
        assert!(big.0 < 1 << INO_BITS);
        assert_eq!(lower_parts(lower_ino(LayerId(3), 77)), Some((LayerId(3), 77)));
        assert_eq!(lower_parts(lower_ino(LayerId(0), 1 << 45)), None);
        assert_eq!(lower_parts(upper_ino(UpperIno(5))), None);
    }
}
