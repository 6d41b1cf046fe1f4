//! Reading a packed layer from bytes (usually a read-only mapping).
//!
//! [`Layer::open`] is O(1): it checks the header (magic, version, features, crc, the exact file
//! size) and the bounds of every section, and parses nothing proportional to the number of
//! entries. Every accessor then checks what it touches (record indexes, string ranges, data
//! ranges) and answers a typed [`FormatError`] instead of panicking or reading out of bounds,
//! whatever the bytes hold. [`Layer::verify`] checks everything once: checksums of every
//! section and every extent, and every structural invariant of `SPEC.md`.

use std::cmp::Ordering;
use std::ops::Range;

use zerocopy::FromBytes;

use crate::error::FormatError;
use crate::raw::*;

/// A byte range of the layer file, already checked against the file's length.
type Span = Range<usize>;

/// A packed layer opened over its bytes.
#[derive(Debug)]
pub struct Layer<B: AsRef<[u8]>> {
    bytes: B,
    info: HeaderInfo,
    sections: [Span; 8],
}

/// The decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Major version.
    pub version_major: u16,
    /// Minor version.
    pub version_minor: u16,
    /// Exact file size.
    pub file_size: u64,
    /// Incompatible feature bits.
    pub incompat: u32,
    /// Read-only compatible feature bits.
    pub ro_compat: u32,
    /// Compatible feature bits.
    pub compat: u32,
    /// Number of inodes.
    pub inode_count: u64,
    /// Start of the data area.
    pub data_start: u64,
    /// End of the data area.
    pub data_end: u64,
    /// SHA-256 of the source tar, or zeros.
    pub source_digest: [u8; 32],
    /// The section table (defined slots only).
    pub sections: [SectionInfo; 8],
}

/// One decoded section table slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SectionInfo {
    /// Absolute offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Number of records.
    pub count: u64,
    /// Stored crc32.
    pub crc32: u32,
}

/// A timestamp (seconds and nanoseconds since the epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds.
    pub sec: i64,
    /// Nanoseconds, < 10^9.
    pub nsec: u32,
}

/// A decoded inode (a copy of its 64-byte record, checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Its number.
    pub ino: u32,
    /// `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// `INODE_*` flags.
    pub flags: u32,
    kind: Kind,
    a: u32,
    b: u32,
    extra: u64,
    xattrs: u32,
    /// Parent directory (directories only; 0 otherwise).
    pub parent: u32,
}

impl Inode {
    /// The file type.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// True for a directory that hides the layers below it.
    pub fn is_opaque(&self) -> bool {
        self.flags & INODE_OPAQUE != 0
    }

    /// True for a regular file whose data is an external object.
    pub fn is_external(&self) -> bool {
        self.flags & INODE_EXTERNAL != 0
    }

    /// Device number `(major, minor)` of a device node.
    pub fn rdev(&self) -> Option<(u32, u32)> {
        matches!(self.kind, Kind::CharDev | Kind::BlockDev).then_some(((self.extra >> 32) as u32, self.extra as u32))
    }

    /// Bytes allocated to the file's data (non-hole 4 KiB blocks), for `st_blocks`.
    pub fn allocated_bytes(&self) -> u64 {
        if self.kind == Kind::File { (self.extra >> 32) * BLOCK_SIZE } else { 0 }
    }

    /// True when the inode has extended attributes.
    pub fn has_xattrs(&self) -> bool {
        self.xattrs != 0
    }

    pub(crate) fn a_b(&self) -> (u32, u32) {
        (self.a, self.b)
    }

    pub(crate) fn extra_raw(&self) -> u64 {
        self.extra
    }

    fn digest_index(&self) -> Option<u32> {
        if self.kind == Kind::File { (self.extra as u32).checked_sub(1) } else { None }
    }
}

/// A decoded directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// The name (1..=255 bytes, no `/` or NUL).
    pub name: &'a [u8],
    /// The entry's type ([`Kind::Whiteout`] for a whiteout).
    pub kind: Kind,
    /// The inode (0 for a whiteout).
    pub ino: u32,
    /// Index of the entry within its directory: a stable readdir offset.
    pub index: u32,
}

/// An extended attribute: key and value.
pub type Xattr<'a> = (&'a [u8], &'a [u8]);

/// A piece of a regular file's content, as [`Layer::read_segments`] yields it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Bytes stored in the layer.
    Data(&'a [u8]),
    /// A hole of this many zero bytes.
    Zeros(u64),
}

/// Big-endian number of the first 4 name bytes, zero-padded.
pub(crate) fn name_prefix(name: &[u8]) -> [u8; 4] {
    let mut p = [0u8; 4];
    let n = name.len().min(4);
    p[..n].copy_from_slice(&name[..n]);
    p
}

/// Checks a name against the format's rules.
pub fn valid_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > NAME_MAX {
        return Err("name longer than 255 bytes");
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..");
    }
    if name.iter().any(|&c| c == b'/' || c == 0) {
        return Err("name contains / or NUL");
    }
    Ok(())
}

impl<B: AsRef<[u8]>> Layer<B> {
    /// Opens a layer over `bytes`: checks the header and the section table. O(1).
    pub fn open(bytes: B) -> Result<Self, FormatError> {
        let buf = bytes.as_ref();
        let len = buf.len() as u64;
        let head = buf.get(..HEADER_SIZE as usize).ok_or(FormatError::Truncated {
            what: "header",
            end: HEADER_SIZE as u64,
            len,
        })?;
        let raw = RawHeader::ref_from_bytes(head).map_err(|_| FormatError::Truncated {
            what: "header",
            end: HEADER_SIZE as u64,
            len,
        })?;
        if raw.magic != MAGIC {
            return Err(FormatError::BadMagic { found: raw.magic });
        }
        let (major, minor) = (raw.version_major.get(), raw.version_minor.get());
        if major != VERSION_MAJOR {
            return Err(FormatError::UnsupportedVersion { major, minor });
        }
        let computed = crc32(&head[..HEADER_SIZE as usize - 4]);
        // Fuzzing builds skip checksums so that the fuzzer reaches the structural checks.
        if computed != raw.crc32.get() && !cfg!(fuzzing) {
            return Err(FormatError::HeaderChecksum { stored: raw.crc32.get(), computed });
        }
        let incompat = raw.incompat.get();
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(FormatError::UnsupportedFeatures { word: "incompat", bits: incompat & !INCOMPAT_KNOWN });
        }
        // Unknown ro_compat bits only forbid modification; this crate never modifies a layer.
        let bad = |field: &'static str, value: u64| FormatError::BadHeader { field, value };
        if raw.header_size.get() != HEADER_SIZE {
            return Err(bad("header_size", raw.header_size.get().into()));
        }
        if raw.file_size.get() != len {
            return Err(FormatError::Truncated { what: "file (header file_size)", end: raw.file_size.get(), len });
        }
        if raw.block_log2.get() != BLOCK_LOG2 {
            return Err(bad("block_log2", raw.block_log2.get().into()));
        }
        if raw.root_ino.get() != ROOT_INO {
            return Err(bad("root_ino", raw.root_ino.get().into()));
        }
        if raw.reserved0.get() != 0 || raw.reserved1 != [0; 20] {
            return Err(bad("reserved", 1));
        }
        if buf.len() < HEADER_AREA as usize || buf[HEADER_SIZE as usize..HEADER_AREA as usize].iter().any(|&b| b != 0) {
            return Err(bad("header padding", 1));
        }
        let (data_start, data_end) = (raw.data_start.get(), raw.data_end.get());
        if data_start != HEADER_AREA {
            return Err(bad("data_start", data_start));
        }
        if data_end < data_start || data_end > len {
            return Err(bad("data_end", data_end));
        }
        let mut infos = [SectionInfo::default(); 8];
        let mut spans: [Span; 8] = Default::default();
        for (slot, s) in raw.sections.iter().enumerate().skip(8) {
            if s.offset.get() != 0 || s.length.get() != 0 || s.count.get() != 0 || s.crc32.get() != 0 {
                return Err(bad("unused section slot", slot as u64));
            }
        }
        let mut placed: Vec<(u64, u64, SectionId)> = Vec::with_capacity(8);
        for id in SectionId::ALL {
            let s = &raw.sections[id as usize];
            let info = SectionInfo {
                offset: s.offset.get(),
                length: s.length.get(),
                count: s.count.get(),
                crc32: s.crc32.get(),
            };
            let err =
                |reason| FormatError::BadSection { section: id, reason, offset: info.offset, length: info.length };
            if s.reserved.get() != 0 {
                return Err(err("reserved field is not zero"));
            }
            if info.count.checked_mul(id.record_size()) != Some(info.length) {
                return Err(err("length is not count * record size"));
            }
            if info.length == 0 {
                if info.offset != 0 || info.crc32 != 0 {
                    return Err(err("empty section with an offset or checksum"));
                }
            } else {
                if !info.offset.is_multiple_of(8) {
                    return Err(err("offset not 8-aligned"));
                }
                if info.offset < data_end {
                    return Err(err("section inside the data area"));
                }
                let end = info.offset.checked_add(info.length).ok_or_else(|| err("offset + length overflows"))?;
                if end > len {
                    return Err(err("section beyond the end of the file"));
                }
                placed.push((info.offset, end, id));
            }
            infos[id as usize] = info;
            spans[id as usize] = info.offset as usize..(info.offset + info.length) as usize;
        }
        placed.sort_unstable();
        for w in placed.windows(2) {
            if w[0].1 > w[1].0 {
                let s = infos[w[1].2 as usize];
                return Err(FormatError::BadSection {
                    section: w[1].2,
                    reason: "overlaps another section",
                    offset: s.offset,
                    length: s.length,
                });
            }
        }
        let inode_count = raw.inode_count.get();
        let inodes = infos[SectionId::Inodes as usize];
        if inodes.count != inode_count || inode_count == 0 || inode_count > u32::MAX as u64 {
            return Err(bad("inode_count", inode_count));
        }
        let times = infos[SectionId::Times as usize];
        let has_times = raw.compat.get() & COMPAT_TIMES != 0;
        if (has_times && times.count != inode_count) || (!has_times && times.count != 0) {
            return Err(FormatError::BadSection {
                section: SectionId::Times,
                reason: "count does not match the TIMES feature and the inode count",
                offset: times.offset,
                length: times.length,
            });
        }
        let info = HeaderInfo {
            version_major: major,
            version_minor: minor,
            file_size: len,
            incompat,
            ro_compat: raw.ro_compat.get(),
            compat: raw.compat.get(),
            inode_count,
            data_start,
            data_end,
            source_digest: raw.source_digest,
            sections: infos,
        };
        Ok(Layer { bytes, info, sections: spans })
    }

    /// The decoded header.
    pub fn header(&self) -> &HeaderInfo {
        &self.info
    }

    /// The underlying bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The owner of the bytes (a mapping, a vector).
    pub fn source(&self) -> &B {
        &self.bytes
    }

    /// Consumes the layer, returning its bytes.
    pub fn into_inner(self) -> B {
        self.bytes
    }

    /// Number of inodes.
    pub fn inode_count(&self) -> u32 {
        self.info.inode_count as u32
    }

    /// The root directory's inode number.
    pub fn root(&self) -> u32 {
        ROOT_INO
    }

    fn section(&self, id: SectionId) -> &[u8] {
        // The span was checked against the length at open.
        &self.bytes.as_ref()[self.sections[id as usize].clone()]
    }

    fn records<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + zerocopy::Unaligned>(
        &self,
        id: SectionId,
    ) -> &[T] {
        // Lengths are multiples of the record size (checked at open); an impossible failure
        // degrades to an empty table, which every caller treats as out of range.
        <[T]>::ref_from_bytes(self.section(id)).unwrap_or(&[])
    }

    /// A run of `count` records starting at `first`, checked.
    fn run<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + zerocopy::Unaligned>(
        &self,
        id: SectionId,
        first: u32,
        count: u32,
    ) -> Option<&[T]> {
        let all = self.records::<T>(id);
        let start = first as usize;
        let end = start.checked_add(count as usize)?;
        all.get(start..end)
    }

    /// Bytes `[off, off+len)` of the string pool.
    pub fn string(&self, off: u32, len: u32) -> Result<&[u8], FormatError> {
        let pool = self.section(SectionId::Strings);
        let end = off as u64 + len as u64;
        pool.get(off as usize..end as usize).ok_or(FormatError::BadString {
            offset: off as u64,
            len: len as u64,
            pool: pool.len() as u64,
        })
    }

    fn raw_inode(&self, ino: u32) -> Result<&RawInode, FormatError> {
        let count = self.info.inode_count;
        let idx = (ino as u64).checked_sub(1).filter(|&i| i < count);
        idx.and_then(|i| self.records::<RawInode>(SectionId::Inodes).get(i as usize))
            .ok_or(FormatError::InodeOutOfRange { ino: ino as u64, count })
    }

    /// Inode `ino`, decoded and checked (type, flags, nanoseconds).
    pub fn inode(&self, ino: u32) -> Result<Inode, FormatError> {
        let r = self.raw_inode(ino)?;
        let bad = |reason| FormatError::BadInode { ino, reason };
        let mode = r.mode.get();
        let kind = Kind::from_mode(mode).ok_or(bad("unknown file type in mode"))?;
        if mode & !(S_IFMT | 0o7777) != 0 {
            return Err(bad("unknown bits in mode"));
        }
        let flags = r.flags.get();
        if flags & !INODE_FLAGS_KNOWN != 0 {
            return Err(bad("unknown flags"));
        }
        if flags & INODE_OPAQUE != 0 && kind != Kind::Dir {
            return Err(bad("opaque flag on a non-directory"));
        }
        if flags & INODE_EXTERNAL != 0 && (kind != Kind::File || self.info.incompat & INCOMPAT_EXTERNAL_DATA == 0) {
            return Err(bad("external flag on a non-file or without the EXTERNAL_DATA feature"));
        }
        let mtime = Timestamp { sec: r.mtime_sec.get(), nsec: r.mtime_nsec.get() };
        if mtime.nsec >= 1_000_000_000 {
            return Err(bad("mtime nanoseconds out of range"));
        }
        Ok(Inode {
            ino,
            mode,
            uid: r.uid.get(),
            gid: r.gid.get(),
            nlink: r.nlink.get(),
            size: r.size.get(),
            mtime,
            flags,
            kind,
            a: r.a.get(),
            b: r.b.get(),
            extra: r.extra.get(),
            xattrs: r.xattrs.get(),
            parent: r.parent.get(),
        })
    }

    /// Access and change times of `ino` (the mtime when the layer has no TIMES section).
    pub fn times(&self, inode: &Inode) -> (Timestamp, Timestamp) {
        let t = self.records::<RawTimes>(SectionId::Times).get(inode.ino as usize - 1);
        match t {
            Some(t) => (
                Timestamp { sec: t.atime_sec.get(), nsec: t.atime_nsec.get().min(999_999_999) },
                Timestamp { sec: t.ctime_sec.get(), nsec: t.ctime_nsec.get().min(999_999_999) },
            ),
            None => (inode.mtime, inode.mtime),
        }
    }

    fn dirents_of(&self, dir: &Inode) -> Result<&[RawDirent], FormatError> {
        if dir.kind != Kind::Dir {
            return Err(FormatError::WrongType { ino: dir.ino, expected: "directory" });
        }
        self.run::<RawDirent>(SectionId::Dirents, dir.a, dir.b)
            .ok_or(FormatError::BadInode { ino: dir.ino, reason: "dirent range outside the dirent table" })
    }

    fn decode_dirent(&self, dir: u32, index: usize, d: &RawDirent) -> Result<DirEntry<'_>, FormatError> {
        let bad = |reason| FormatError::BadDirent { dir, index: index as u64, reason };
        let name = self.string(d.name_off.get(), d.name_len.into())?;
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        let kind = Kind::from_u8(d.kind).ok_or(bad("unknown kind"))?;
        let ino = d.ino.get();
        if (kind == Kind::Whiteout) != (ino == 0) {
            return Err(bad("whiteouts and only whiteouts have inode 0"));
        }
        Ok(DirEntry { name, kind, ino, index: index as u32 })
    }

    /// Looks `name` up in directory `dir` (binary search, no allocation).
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry<'_>>, FormatError> {
        let ents = self.dirents_of(dir)?;
        let key = u32::from_be_bytes(name_prefix(name));
        let pool = self.section(SectionId::Strings);
        let mut failed = None;
        let found = ents.binary_search_by(|d| {
            match u32::from_be_bytes(d.prefix).cmp(&key) {
                Ordering::Equal => {}
                o => return o,
            }
            let (off, len) = (d.name_off.get() as usize, d.name_len as usize);
            match pool.get(off..off + len) {
                Some(n) => n.cmp(name),
                None => {
                    failed =
                        Some(FormatError::BadString { offset: off as u64, len: len as u64, pool: pool.len() as u64 });
                    Ordering::Less
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        match found {
            Ok(i) => self.decode_dirent(dir.ino, i, &ents[i]).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Number of entries of directory `dir` (whiteouts included).
    pub fn dir_len(&self, dir: &Inode) -> Result<u32, FormatError> {
        Ok(self.dirents_of(dir)?.len() as u32)
    }

    /// The entries of `dir` from index `start` on, in name order (whiteouts included). The index of
    /// an entry is a stable readdir offset.
    pub fn read_dir<'s>(
        &'s self,
        dir: &Inode,
        start: u32,
    ) -> Result<impl Iterator<Item = Result<DirEntry<'s>, FormatError>> + 's, FormatError> {
        let ents = self.dirents_of(dir)?;
        let dino = dir.ino;
        let start = (start as usize).min(ents.len());
        Ok(ents[start..].iter().enumerate().map(move |(i, d)| self.decode_dirent(dino, start + i, d)))
    }

    /// The target of symlink `inode`.
    pub fn readlink(&self, inode: &Inode) -> Result<&[u8], FormatError> {
        if inode.kind != Kind::Symlink {
            return Err(FormatError::WrongType { ino: inode.ino, expected: "symlink" });
        }
        self.string(inode.a, inode.b)
    }

    /// The SHA-256 of regular file `inode`'s content, if the layer records it.
    pub fn digest(&self, inode: &Inode) -> Result<Option<&[u8; 32]>, FormatError> {
        match inode.digest_index() {
            None => Ok(None),
            Some(i) => self
                .records::<RawDigest>(SectionId::Digests)
                .get(i as usize)
                .map(Some)
                .ok_or(FormatError::BadInode { ino: inode.ino, reason: "digest index outside the digest table" }),
        }
    }

    /// The extents of inline regular file `inode`, sorted by file offset.
    pub fn extents(&self, inode: &Inode) -> Result<&[RawExtent], FormatError> {
        if inode.kind != Kind::File {
            return Err(FormatError::WrongType { ino: inode.ino, expected: "regular file" });
        }
        if inode.is_external() {
            return Err(self.external_error(inode));
        }
        self.run::<RawExtent>(SectionId::Extents, inode.a, inode.b)
            .ok_or(FormatError::BadInode { ino: inode.ino, reason: "extent range outside the extent table" })
    }

    fn external_error(&self, inode: &Inode) -> FormatError {
        let digest = match self.digest(inode) {
            Ok(Some(d)) => crate::hex(d),
            _ => "(missing digest)".into(),
        };
        FormatError::External { ino: inode.ino, digest }
    }

    /// The stored bytes of extent `index` of `inode`, bounds-checked against the data area.
    pub fn extent_data(&self, inode: &Inode, index: usize, e: &RawExtent) -> Result<&[u8], FormatError> {
        let bad = |reason| FormatError::BadExtent { ino: inode.ino, index: index as u64, reason };
        let (off, len) = (e.data_off.get(), e.len.get() as u64);
        if len == 0 || len > MAX_EXTENT as u64 {
            return Err(bad("length is 0 or over 1 MiB"));
        }
        let end = off.checked_add(len).ok_or(bad("data offset overflows"))?;
        if off < self.info.data_start || end > self.info.data_end {
            return Err(bad("data outside the data area"));
        }
        Ok(&self.bytes.as_ref()[off as usize..end as usize])
    }

    /// The content of `inode` in `[offset, offset+len)` (clamped to its size) as stored slices and
    /// holes, without copying.
    pub fn read_segments(&self, inode: &Inode, offset: u64, len: u64) -> Result<Vec<Segment<'_>>, FormatError> {
        let exts = self.extents(inode)?;
        let end = offset.saturating_add(len).min(inode.size);
        let mut out = Vec::new();
        let mut pos = offset;
        // First extent that ends after `offset`.
        let first = exts.partition_point(|e| e.file_off.get().saturating_add(e.len.get() as u64) <= offset);
        for (i, e) in exts.iter().enumerate().skip(first) {
            if pos >= end {
                break;
            }
            let (fo, el) = (e.file_off.get(), e.len.get() as u64);
            if fo >= end {
                break;
            }
            let fend = fo.checked_add(el).ok_or(FormatError::BadExtent {
                ino: inode.ino,
                index: i as u64,
                reason: "file offset overflows",
            })?;
            if fo > pos {
                out.push(Segment::Zeros(fo - pos));
                pos = fo;
            } else if fend <= pos {
                return Err(FormatError::BadExtent {
                    ino: inode.ino,
                    index: i as u64,
                    reason: "extents overlap or are unsorted",
                });
            }
            let data = self.extent_data(inode, i, e)?;
            let a = (pos - fo) as usize;
            let b = (end.min(fend) - fo) as usize;
            out.push(Segment::Data(&data[a..b]));
            pos = fo + b as u64;
        }
        if pos < end {
            out.push(Segment::Zeros(end - pos));
        }
        Ok(out)
    }

    /// Reads `inode`'s content at `offset` into `buf`; returns the number of bytes read (short only
    /// at the end of the file).
    pub fn read(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize, FormatError> {
        let mut n = 0;
        for seg in self.read_segments(inode, offset, buf.len() as u64)? {
            match seg {
                Segment::Data(d) => {
                    buf[n..n + d.len()].copy_from_slice(d);
                    n += d.len();
                }
                Segment::Zeros(z) => {
                    buf[n..n + z as usize].fill(0);
                    n += z as usize;
                }
            }
        }
        Ok(n)
    }

    /// The extended attributes of `inode`, sorted by key.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<Xattr<'_>>, FormatError> {
        let entries = self.xattr_entries(inode)?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            out.push(self.decode_xattr(inode.ino, i, e)?);
        }
        Ok(out)
    }

    /// The value of extended attribute `key` of `inode` (binary search).
    pub fn xattr(&self, inode: &Inode, key: &[u8]) -> Result<Option<&[u8]>, FormatError> {
        let entries = self.xattr_entries(inode)?;
        let mut failed = None;
        let found = entries.binary_search_by(|e| match self.string(e.key_off.get(), e.key_len.into()) {
            Ok(k) => k.cmp(key),
            Err(err) => {
                failed = Some(err);
                Ordering::Less
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        match found {
            Ok(i) => Ok(Some(self.decode_xattr(inode.ino, i, &entries[i])?.1)),
            Err(_) => Ok(None),
        }
    }

    fn xattr_entries(&self, inode: &Inode) -> Result<&[RawXattrEntry], FormatError> {
        let Some(set) = inode.xattrs.checked_sub(1) else {
            return Ok(&[]);
        };
        let bad = |reason| FormatError::BadXattr { ino: inode.ino, index: 0, reason };
        let s =
            self.records::<RawXattrSet>(SectionId::XattrSets).get(set as usize).ok_or(bad("set outside the table"))?;
        self.run::<RawXattrEntry>(SectionId::XattrEntries, s.first.get(), s.count.get())
            .ok_or(bad("entries outside the table"))
    }

    fn decode_xattr(&self, ino: u32, index: usize, e: &RawXattrEntry) -> Result<(&[u8], &[u8]), FormatError> {
        let bad = |reason| FormatError::BadXattr { ino, index: index as u64, reason };
        if e.key_len == 0 {
            return Err(bad("empty key"));
        }
        if e.value_len.get() as usize > XATTR_VALUE_MAX {
            return Err(bad("value longer than 64 KiB"));
        }
        Ok((self.string(e.key_off.get(), e.key_len.into())?, self.string(e.value_off.get(), e.value_len.get())?))
    }

    /// Checks the checksum of one section.
    pub fn check_section(&self, id: SectionId) -> Result<(), FormatError> {
        let info = self.info.sections[id as usize];
        let computed = if info.length == 0 { 0 } else { crc32(self.section(id)) };
        if computed != info.crc32 && !cfg!(fuzzing) {
            return Err(FormatError::SectionChecksum {
                section: id,
                offset: info.offset,
                stored: info.crc32,
                computed,
            });
        }
        Ok(())
    }
}
