//! The packed layer format (`.lpk`): one file per image layer, read through a memory mapping.
//!
//! `SPEC.md` beside this crate is the normative description; this crate is its reference
//! implementation and the only code that parses layer bytes. It has no `unsafe`: the on-disk
//! structures are `zerocopy` views ([`raw`]), every access is bounds-checked, and bad bytes give
//! a typed [`FormatError`] naming what is wrong and where.
//!
//! - [`Layer::open`] is O(1); [`Layer::verify`] checks everything.
//! - [`LayerBuilder`] writes a layer in one streaming pass.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod raw;
pub mod reader;
pub mod verify;
pub mod writer;

pub use error::{FormatError, WriteError};
pub use raw::Kind;
pub use reader::{DirEntry, HeaderInfo, Inode, Layer, Segment, Timestamp, Xattr, valid_name};
pub use verify::{Stats, VerifyOptions};
pub use writer::{LayerBuilder, Meta, ObjectSink, Summary, TempObject, WriterOptions};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
