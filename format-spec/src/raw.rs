//! On-disk structures of the packed layer format, byte for byte as `SPEC.md` defines them.
//!
//! Every struct is little-endian, `Unaligned` and `FromBytes`, so a reader can view any byte
//! range as these types without `unsafe` and without alignment requirements. Sizes are asserted
//! at compile time next to each struct; `reserved` fields are explicit and must be zero.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The 8 magic bytes at offset 0 (PNG-style: a high byte, CR LF, ^Z and LF catch text-mode
/// transfers and truncated transfers of the first bytes).
pub const MAGIC: [u8; 8] = [0x89, b'L', b'P', b'K', b'\r', b'\n', 0x1a, b'\n'];
/// Major version: readers refuse any other.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version written by this crate. Readers accept any minor of their major.
pub const VERSION_MINOR: u16 = 0;
/// Bytes of the header that are defined (and covered by its crc).
pub const HEADER_SIZE: u32 = 512;
/// Size of the header area: the data area starts here.
pub const HEADER_AREA: u64 = 4096;
/// log2 of the block size: data of files of at least one block starts block-aligned.
pub const BLOCK_LOG2: u32 = 12;
/// The block size (4 KiB).
pub const BLOCK_SIZE: u64 = 1 << BLOCK_LOG2;
/// The largest extent, in bytes (1 MiB).
pub const MAX_EXTENT: u32 = 1 << 20;
/// The root directory's inode number.
pub const ROOT_INO: u32 = 1;
/// Longest name of a directory entry, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes (PATH_MAX - 1).
pub const SYMLINK_MAX: usize = 4095;
/// Longest xattr value, in bytes (the kernel's XATTR_SIZE_MAX).
pub const XATTR_VALUE_MAX: usize = 65536;
/// Number of slots in the section table.
pub const SECTION_SLOTS: usize = 12;

/// Incompatible feature: some regular files keep their data in content-addressed objects
/// outside the layer file (see `SPEC.md`, "External data"). Readers that do not know it must
/// refuse the file.
pub const INCOMPAT_EXTERNAL_DATA: u32 = 1 << 0;
/// All incompatible features this crate understands.
pub const INCOMPAT_KNOWN: u32 = INCOMPAT_EXTERNAL_DATA;
/// Read-only-compatible features this crate understands (none yet).
pub const RO_COMPAT_KNOWN: u32 = 0;
/// Compatible feature: the TIMES section holds atime and ctime for every inode.
pub const COMPAT_TIMES: u32 = 1 << 0;
/// All compatible features this crate understands.
pub const COMPAT_KNOWN: u32 = COMPAT_TIMES;

/// Inode flag: a directory whose lower layers are hidden (OCI `.wh..wh..opq`).
pub const INODE_OPAQUE: u32 = 1 << 0;
/// Inode flag: a regular file whose data is the external object named by its digest.
pub const INODE_EXTERNAL: u32 = 1 << 1;
/// All inode flags this crate understands.
pub const INODE_FLAGS_KNOWN: u32 = INODE_OPAQUE | INODE_EXTERNAL;

/// Section ids: the index of a section in the header's section table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum SectionId {
    /// Inode records ([`RawInode`]).
    Inodes = 0,
    /// Directory entries ([`RawDirent`]).
    Dirents = 1,
    /// Data extents ([`RawExtent`]).
    Extents = 2,
    /// Extended attribute sets ([`RawXattrSet`]).
    XattrSets = 3,
    /// Extended attribute entries ([`RawXattrEntry`]).
    XattrEntries = 4,
    /// SHA-256 digests of regular files' contents ([`RawDigest`]).
    Digests = 5,
    /// Access and change times ([`RawTimes`]), one per inode (compat feature TIMES).
    Times = 6,
    /// The string pool: names, symlink targets, xattr keys and values.
    Strings = 7,
}

impl SectionId {
    /// Every defined section, in table order.
    pub const ALL: [SectionId; 8] = [
        SectionId::Inodes,
        SectionId::Dirents,
        SectionId::Extents,
        SectionId::XattrSets,
        SectionId::XattrEntries,
        SectionId::Digests,
        SectionId::Times,
        SectionId::Strings,
    ];

    /// Size of one record of this section, in bytes.
    pub const fn record_size(self) -> u64 {
        match self {
            SectionId::Inodes => 64,
            SectionId::Dirents => 16,
            SectionId::Extents => 24,
            SectionId::XattrSets => 8,
            SectionId::XattrEntries => 16,
            SectionId::Digests => 32,
            SectionId::Times => 24,
            SectionId::Strings => 1,
        }
    }

    /// Lowercase name, as error messages and `layertool inspect` print it.
    pub const fn name(self) -> &'static str {
        match self {
            SectionId::Inodes => "inodes",
            SectionId::Dirents => "dirents",
            SectionId::Extents => "extents",
            SectionId::XattrSets => "xattr-sets",
            SectionId::XattrEntries => "xattr-entries",
            SectionId::Digests => "digests",
            SectionId::Times => "times",
            SectionId::Strings => "strings",
        }
    }
}

impl std::fmt::Display for SectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One slot of the section table (32 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawSection {
    /// Absolute offset of the section, 8-aligned (0 for an empty section).
    pub offset: U64,
    /// Length in bytes: `count * record_size`.
    pub length: U64,
    /// Number of records.
    pub count: U64,
    /// crc32 (IEEE) of the section's bytes (0 for an empty section).
    pub crc32: U32,
    /// Must be zero.
    pub reserved: U32,
}
const _: () = assert!(size_of::<RawSection>() == 32);

/// The header: the first 512 bytes of the file (the rest of the first 4 KiB is zero).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION_MAJOR`].
    pub version_major: U16,
    /// [`VERSION_MINOR`] of the writer.
    pub version_minor: U16,
    /// [`HEADER_SIZE`].
    pub header_size: U32,
    /// Exact size of the whole file in bytes (catches truncation and appended garbage).
    pub file_size: U64,
    /// Incompatible features: a reader must refuse a file with a bit it does not know.
    pub incompat: U32,
    /// Read-only compatible features: a reader may read, but must not modify, a file with a bit it
    /// does not know.
    pub ro_compat: U32,
    /// Compatible features: a reader may ignore bits it does not know.
    pub compat: U32,
    /// [`BLOCK_LOG2`].
    pub block_log2: U32,
    /// [`ROOT_INO`].
    pub root_ino: U32,
    /// Must be zero.
    pub reserved0: U32,
    /// Number of inodes (= count of the inode section).
    pub inode_count: U64,
    /// Start of the data area ([`HEADER_AREA`]).
    pub data_start: U64,
    /// End of the data area; metadata sections start at or after it.
    pub data_end: U64,
    /// SHA-256 of the uncompressed source tar (the OCI diff_id), or zero when unknown.
    pub source_digest: [u8; 32],
    /// The section table, indexed by [`SectionId`]; slots 8..12 must be zero.
    pub sections: [RawSection; SECTION_SLOTS],
    /// Must be zero.
    pub reserved1: [u8; 20],
    /// crc32 of bytes `[0, 508)` of the header.
    pub crc32: U32,
}
const _: () = assert!(size_of::<RawHeader>() == HEADER_SIZE as usize);

/// An inode record (64 bytes). Inode number `n` (from 1) is record `n - 1`.
///
/// `a`, `b` and `extra` mean different things per file type (see `SPEC.md`):
///
/// | type | `a` | `b` | `extra` |
/// |---|---|---|---|
/// | directory | first dirent | dirent count | 0 |
/// | regular, inline | first extent | extent count | digest index + 1 (low 32), 4 KiB blocks (high 32) |
/// | regular, external | 0 | 0 | digest index + 1 (low 32), 4 KiB blocks (high 32) |
/// | symlink | target string offset | target length | 0 |
/// | char/block device | 0 | 0 | major (high 32), minor (low 32) |
/// | fifo, socket | 0 | 0 | 0 |
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawInode {
    /// `st_mode`: file type and permission bits.
    pub mode: U32,
    /// Owner.
    pub uid: U32,
    /// Group.
    pub gid: U32,
    /// Link count: for non-directories the number of dirents naming it in this layer, for
    /// directories 2 + the number of subdirectories.
    pub nlink: U32,
    /// Size in bytes (regular files, symlinks); 0 for the others.
    pub size: U64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: I64,
    /// Modification time, nanoseconds (< 10^9).
    pub mtime_nsec: U32,
    /// `INODE_*` flags.
    pub flags: U32,
    /// Per-type field (see the table above).
    pub a: U32,
    /// Per-type field (see the table above).
    pub b: U32,
    /// Per-type field (see the table above).
    pub extra: U64,
    /// Extended attributes: 0 for none, else `n` names xattr set `n - 1`.
    pub xattrs: U32,
    /// Directories: the parent directory's inode (the root names itself). Others: 0.
    pub parent: U32,
}
const _: () = assert!(size_of::<RawInode>() == 64);

/// File type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Regular file.
    File = 1,
    /// Directory.
    Dir = 2,
    /// Symbolic link.
    Symlink = 3,
    /// Character device.
    CharDev = 4,
    /// Block device.
    BlockDev = 5,
    /// Named pipe.
    Fifo = 6,
    /// Unix socket.
    Socket = 7,
    /// Whiteout: the name is deleted from the layers below (no inode).
    Whiteout = 8,
}

impl Kind {
    /// Decodes a dirent kind byte.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::CharDev,
            5 => Kind::BlockDev,
            6 => Kind::Fifo,
            7 => Kind::Socket,
            8 => Kind::Whiteout,
            _ => return None,
        })
    }

    /// The kind of an inode with this `st_mode` (never [`Kind::Whiteout`]).
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & S_IFMT {
            S_IFREG => Kind::File,
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            S_IFCHR => Kind::CharDev,
            S_IFBLK => Kind::BlockDev,
            S_IFIFO => Kind::Fifo,
            S_IFSOCK => Kind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind (0 for a whiteout).
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => S_IFREG,
            Kind::Dir => S_IFDIR,
            Kind::Symlink => S_IFLNK,
            Kind::CharDev => S_IFCHR,
            Kind::BlockDev => S_IFBLK,
            Kind::Fifo => S_IFIFO,
            Kind::Socket => S_IFSOCK,
            Kind::Whiteout => 0,
        }
    }
}

/// `st_mode` file type mask and values (Linux).
pub const S_IFMT: u32 = 0o170000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Block device.
pub const S_IFBLK: u32 = 0o060000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010000;

/// A directory entry (16 bytes). A directory's entries are contiguous and sorted strictly by name
/// bytes (unsigned, shorter first on a common prefix).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawDirent {
    /// Offset of the name in the string pool.
    pub name_off: U32,
    /// Inode number (0 for a whiteout).
    pub ino: U32,
    /// Name length, 1..=255.
    pub name_len: u8,
    /// [`Kind`] as a byte.
    pub kind: u8,
    /// Must be zero.
    pub reserved: U16,
    /// The first 4 bytes of the name, zero-padded: comparing prefixes as big-endian numbers
    /// orders most entries without touching the string pool.
    pub prefix: [u8; 4],
}
const _: () = assert!(size_of::<RawDirent>() == 16);

/// A run of a regular file's data (24 bytes). Gaps between extents are holes (zeros).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawExtent {
    /// Offset in the file.
    pub file_off: U64,
    /// Absolute offset of the bytes in the layer file, inside the data area.
    pub data_off: U64,
    /// Length in bytes, 1..=[`MAX_EXTENT`].
    pub len: U32,
    /// crc32 (IEEE) of the extent's bytes.
    pub crc32: U32,
}
const _: () = assert!(size_of::<RawExtent>() == 24);

/// A set of extended attributes (8 bytes): a run of entries sorted strictly by key.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawXattrSet {
    /// First entry.
    pub first: U32,
    /// Number of entries (at least 1).
    pub count: U32,
}
const _: () = assert!(size_of::<RawXattrSet>() == 8);

/// One extended attribute (16 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawXattrEntry {
    /// Offset of the full key (`security.capability`) in the string pool.
    pub key_off: U32,
    /// Offset of the value in the string pool.
    pub value_off: U32,
    /// Value length, 0..=65536.
    pub value_len: U32,
    /// Key length, 1..=255.
    pub key_len: u8,
    /// Must be zero.
    pub reserved: [u8; 3],
}
const _: () = assert!(size_of::<RawXattrEntry>() == 16);

/// The SHA-256 of a regular file's whole content, holes read as zeros (32 bytes).
pub type RawDigest = [u8; 32];

/// Access and change times of one inode (24 bytes), present with the TIMES feature.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawTimes {
    /// Access time, seconds.
    pub atime_sec: I64,
    /// Change time, seconds.
    pub ctime_sec: I64,
    /// Access time, nanoseconds.
    pub atime_nsec: U32,
    /// Change time, nanoseconds.
    pub ctime_nsec: U32,
}
const _: () = assert!(size_of::<RawTimes>() == 24);

/// crc32 (IEEE, as crc32fast computes it) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}
