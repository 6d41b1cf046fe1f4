//! Typed errors of the reader and the writer.

use crate::raw::SectionId;

/// What is wrong with a packed layer, and where. Every corruption a reader can meet maps to one
/// of these; none panics.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The file is shorter than a structure it must hold.
    #[error("truncated: {what} needs bytes up to {end}, the file has {len}")]
    Truncated {
        /// The structure.
        what: &'static str,
        /// The end offset the structure needs.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// The first 8 bytes are not the magic.
    #[error("not a packed layer (bad magic {found:02x?})")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// A major version this reader does not know.
    #[error("unsupported format version {major}.{minor} (this reader knows 1.x)")]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// Feature bits this reader does not know, in a word where that is fatal.
    #[error("unsupported {word} features {bits:#x}")]
    UnsupportedFeatures {
        /// `incompat` or `ro_compat`.
        word: &'static str,
        /// The unknown bits.
        bits: u32,
    },
    /// The header's crc32 does not match.
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// A header field holds an impossible value.
    #[error("bad header field {field}: {value}")]
    BadHeader {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A section's table entry is inconsistent (bounds, alignment, count, overlap).
    #[error("section {section}: {reason} (offset {offset}, length {length})")]
    BadSection {
        /// The section.
        section: SectionId,
        /// What is wrong.
        reason: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        length: u64,
    },
    /// A section's crc32 does not match.
    #[error(
        "section {section} checksum mismatch at offset {offset} (stored {stored:#010x}, computed {computed:#010x})"
    )]
    SectionChecksum {
        /// The section.
        section: SectionId,
        /// Its offset.
        offset: u64,
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// An inode number outside `1..=inode_count`.
    #[error("inode {ino} out of range (the layer has {count})")]
    InodeOutOfRange {
        /// The number.
        ino: u64,
        /// The layer's inode count.
        count: u64,
    },
    /// An inode record breaks an invariant.
    #[error("inode {ino}: {reason}")]
    BadInode {
        /// The inode.
        ino: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A directory entry breaks an invariant.
    #[error("directory inode {dir}, entry {index}: {reason}")]
    BadDirent {
        /// The directory.
        dir: u32,
        /// Index of the entry within the directory.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An extent breaks an invariant.
    #[error("inode {ino}, extent {index}: {reason}")]
    BadExtent {
        /// The file.
        ino: u32,
        /// Index of the extent within the file.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An extent's data does not match its crc32.
    #[error(
        "inode {ino}, extent {index} (data at offset {data_off}, {len} bytes): checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    DataChecksum {
        /// The file.
        ino: u32,
        /// Index of the extent.
        index: u64,
        /// Offset of the data in the layer file.
        data_off: u64,
        /// Length of the extent.
        len: u32,
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// An xattr set or entry breaks an invariant.
    #[error("inode {ino}: xattr {index}: {reason}")]
    BadXattr {
        /// The inode.
        ino: u32,
        /// Index of the entry in its set.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A string reference points outside the pool.
    #[error("string at {offset} (+{len}) is outside the string pool ({pool} bytes)")]
    BadString {
        /// Offset in the pool.
        offset: u64,
        /// Length.
        len: u64,
        /// Pool size.
        pool: u64,
    },
    /// The tree is not a tree (a directory reached twice, a cycle, an unreachable directory).
    #[error("directory structure: {reason} (inode {ino})")]
    BadTree {
        /// The inode where it was found.
        ino: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The operation needs another file type.
    #[error("inode {ino} is not a {expected}")]
    WrongType {
        /// The inode.
        ino: u32,
        /// What was expected.
        expected: &'static str,
    },
    /// The file's data is an external object, which this layer file does not hold.
    #[error("inode {ino} keeps its data in external object {digest}")]
    External {
        /// The inode.
        ino: u32,
        /// The object's digest, hex.
        digest: String,
    },
}

/// Errors of the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// An I/O error on the output or an object, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A path or name that the format cannot hold.
    #[error("{path}: {reason}")]
    BadPath {
        /// The path, lossily decoded.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A limit of the format (counts, sizes) is exceeded.
    #[error("format limit exceeded: {0}")]
    Limit(&'static str),
}

impl WriteError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        WriteError::Io { context: context.into(), source }
    }

    pub(crate) fn path(path: &[u8], reason: &'static str) -> Self {
        WriteError::BadPath { path: String::from_utf8_lossy(path).into_owned(), reason }
    }
}
