//! layerfs: a copy-on-write union filesystem (FUSE) over read-only layers.
//!
//! Module map (see `layerfs/README.md` for the architecture notes):
//! - [`lower`]: the [`lower::Lower`] trait, the only way the core reaches read-only layers;
//!   [`packed`] (`.lpk` packed layers, mmap'd), [`dir_lower`] (plain directories) and
//!   [`mem_lower`] (in memory, tests) implement it.
//! - [`store`]: the layout of the local store (images by name, layers, objects).
//! - [`upper`]: the writable upper directory in the kernel overlayfs format, and the work dir.
//! - [`core`]: the union logic, fuser-free, `Result<T, Errno>` everywhere.
//! - [`inode`]: inode table, lookup counts, generations, lock order.
//! - [`ino`]: identity newtypes and the `st_ino` encoding.
//! - [`fuse`]: the thin fuser adapter (errno mapped in one place), passthrough.
//! - [`options`]: command lines (ours and fuse-overlayfs'), mount options.
//! - [`mount`]: mounting, daemonising, unmounting.
//! - [`sys`]: the system-call wrappers, the only `unsafe` (with [`mapping`]).
//! - [`mapping`]: the one owner of packed-layer mappings.

pub mod core;
pub mod dir_lower;
pub mod error;
pub mod fuse;
pub mod idmap;
pub mod ino;
pub mod inode;
pub mod lease;
pub mod lower;
pub mod mapping;
pub mod mem_lower;
pub mod mount;
pub mod options;
pub mod packed;
pub mod store;
pub mod sys;
pub mod upper;

pub use crate::core::Union;
pub use crate::error::{Errno, SetupError};
pub use crate::lower::Lower;
