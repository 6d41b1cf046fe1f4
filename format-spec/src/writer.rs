//! Writing a packed layer in one streaming pass.
//!
//! [`LayerBuilder`] takes entries in any order (as a tar gives them), writes each file's data
//! once as it arrives (hashing it in the same pass), keeps only metadata in memory (per-directory
//! hash maps: no quadratic lookups), and writes the sorted metadata and the header at
//! [`LayerBuilder::finish`]. The output is a pure function of the entries and their order: no
//! timestamps, no hash-map iteration order, zeroed padding.
//!
//! Data placement: a file of at least 4 KiB starts on a 4 KiB boundary; smaller files are packed
//! densely into 4 KiB pages, never straddling a page. An all-zero 4 KiB block (or an all-zero
//! tail block) is a hole and is not stored. Identical contents are stored once (by SHA-256).
//! With an [`ObjectSink`], files of at least `external_min` bytes go to content-addressed
//! objects instead (`SPEC.md`, "External data").

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{I64, U16, U32, U64};

use crate::error::WriteError;
use crate::raw::*;
use crate::reader::{Timestamp, name_prefix, valid_name};

/// Metadata of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`0o7777`); the type bits are ignored.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time, when the source has it.
    pub atime: Option<Timestamp>,
    /// Change time, when the source has it.
    pub ctime: Option<Timestamp>,
    /// Extended attributes (full keys such as `security.capability`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Options of [`LayerBuilder`].
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// With an object sink: files of at least this many bytes become external objects.
    pub external_min: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { external_min: BLOCK_SIZE }
    }
}

/// A temporary file that will become an object.
#[derive(Debug)]
pub struct TempObject {
    /// The open file (written by the builder at offsets; holes are left unwritten).
    pub file: File,
    /// Its path, if it has one (an `O_TMPFILE` has none).
    pub path: Option<PathBuf>,
}

/// Where external objects go (the store implements it).
pub trait ObjectSink {
    /// A fresh, empty, writable temporary file on the objects' filesystem.
    fn temp(&mut self) -> io::Result<TempObject>;
    /// Publishes `tmp` as the object named `digest` (of `size` bytes), or discards it when that
    /// object exists already. Must be durable before it returns if the caller asks for it.
    fn publish(&mut self, tmp: TempObject, digest: &[u8; 32], size: u64) -> io::Result<()>;
    /// Drops `tmp` (its content is stored already, or the write failed).
    fn discard(&mut self, tmp: TempObject);
}

/// What [`LayerBuilder::finish`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Size of the layer file.
    pub file_size: u64,
    /// Inodes written.
    pub inodes: u64,
    /// Regular files whose content was already stored (in this layer or, for objects, at all).
    pub deduplicated: u64,
    /// Bytes of file data in the layer file.
    pub inline_bytes: u64,
    /// Bytes of file data handed to external objects (before their own dedup).
    pub external_bytes: u64,
    /// Digests of the external objects the layer references, each once, sorted.
    pub objects: Vec<[u8; 32]>,
}

type NodeId = u32;

/// Owned xattrs, sorted by key.
type XattrList = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    Node(NodeId),
    Whiteout,
}

#[derive(Clone, Copy, Debug)]
enum FileData {
    Empty,
    Inline { first: u32, count: u32, blocks: u32, digest: u32 },
    External { blocks: u32, digest: u32 },
}

#[derive(Debug)]
enum Body {
    Dir { children: HashMap<Box<[u8]>, Child>, opaque: bool },
    File { size: u64, data: FileData },
    Symlink(Box<[u8]>),
    Device { kind: Kind, major: u32, minor: u32 },
    Fifo,
    Socket,
}

#[derive(Debug)]
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    times: Option<Box<(Timestamp, Timestamp)>>,
    xattrs: u32,
    body: Body,
}

impl Node {
    fn kind(&self) -> Kind {
        match &self.body {
            Body::Dir { .. } => Kind::Dir,
            Body::File { .. } => Kind::File,
            Body::Symlink(_) => Kind::Symlink,
            Body::Device { kind, .. } => *kind,
            Body::Fifo => Kind::Fifo,
            Body::Socket => Kind::Socket,
        }
    }
}

struct SmallPage {
    offset: u64,
    buf: Vec<u8>,
}

/// Builds one packed layer file (see the module documentation).
pub struct LayerBuilder<'s> {
    out: File,
    opts: WriterOptions,
    sink: Option<&'s mut dyn ObjectSink>,
    nodes: Vec<Node>,
    /// End of the data written so far (block-aligned: small pages are reserved whole).
    data_end: u64,
    page: Option<SmallPage>,
    extents: Vec<RawExtent>,
    digests: Vec<[u8; 32]>,
    /// Content digest -> what was stored for it.
    stored: HashMap<[u8; 32], FileData>,
    xattr_sets: Vec<XattrList>,
    xattr_index: HashMap<XattrList, u32>,
    buf: Vec<u8>,
    summary: Summary,
}

const DIR_DEFAULT: u32 = 0o755;

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> WriteError {
    move |e| WriteError::io(context, e)
}

impl<'s> LayerBuilder<'s> {
    /// A builder writing a self-contained layer (all data inline) to `out`, which must be empty.
    pub fn new(out: File) -> Self {
        Self::build(out, WriterOptions::default(), None)
    }

    /// A builder that sends files of at least `opts.external_min` bytes to `sink` as objects.
    pub fn with_objects(out: File, opts: WriterOptions, sink: &'s mut dyn ObjectSink) -> Self {
        Self::build(out, opts, Some(sink))
    }

    fn build(out: File, opts: WriterOptions, sink: Option<&'s mut dyn ObjectSink>) -> Self {
        let root = Node {
            mode: DIR_DEFAULT,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            times: None,
            xattrs: 0,
            body: Body::Dir { children: HashMap::new(), opaque: false },
        };
        LayerBuilder {
            out,
            opts,
            sink,
            nodes: vec![root],
            data_end: HEADER_AREA,
            page: None,
            extents: Vec::new(),
            digests: Vec::new(),
            stored: HashMap::new(),
            xattr_sets: Vec::new(),
            xattr_index: HashMap::new(),
            buf: vec![0; MAX_EXTENT as usize],
            summary: Summary::default(),
        }
    }

    /// Splits a normalised relative path into checked components (`""` is the root).
    fn components(path: &[u8]) -> Result<Vec<&[u8]>, WriteError> {
        if path.is_empty() {
            return Ok(Vec::new());
        }
        path.split(|&c| c == b'/')
            .map(|c| valid_name(c).map(|()| c).map_err(|reason| WriteError::path(path, reason)))
            .collect()
    }

    /// The directory node at `comps`, creating missing directories with default metadata.
    fn dir_at(&mut self, path: &[u8], comps: &[&[u8]]) -> Result<NodeId, WriteError> {
        let mut cur: NodeId = 0;
        for name in comps {
            let Body::Dir { children, .. } = &self.nodes[cur as usize].body else { unreachable!() };
            match children.get(*name) {
                Some(Child::Node(id)) => {
                    if !matches!(self.nodes[*id as usize].body, Body::Dir { .. }) {
                        return Err(WriteError::path(path, "a parent is not a directory (symlinked or file prefix)"));
                    }
                    cur = *id;
                }
                other => {
                    let was_whiteout = other.is_some();
                    let id = self.push(Node {
                        mode: DIR_DEFAULT,
                        uid: 0,
                        gid: 0,
                        mtime: Timestamp::default(),
                        times: None,
                        xattrs: 0,
                        body: Body::Dir { children: HashMap::new(), opaque: was_whiteout },
                    })?;
                    let Body::Dir { children, .. } = &mut self.nodes[cur as usize].body else { unreachable!() };
                    children.insert((*name).into(), Child::Node(id));
                    cur = id;
                }
            }
        }
        Ok(cur)
    }

    fn push(&mut self, node: Node) -> Result<NodeId, WriteError> {
        let id = u32::try_from(self.nodes.len()).map_err(|_| WriteError::Limit("more than 2^32 - 2 inodes"))?;
        if id == u32::MAX {
            return Err(WriteError::Limit("more than 2^32 - 2 inodes"));
        }
        self.nodes.push(node);
        Ok(id)
    }

    fn make_node(&mut self, meta: Meta, body: Body) -> Result<Node, WriteError> {
        let xattrs = self.intern_xattrs(meta.xattrs)?;
        let times = match (meta.atime, meta.ctime) {
            (None, None) => None,
            (a, c) => Some(Box::new((a.unwrap_or(meta.mtime), c.unwrap_or(meta.mtime)))),
        };
        Ok(Node { mode: meta.mode & 0o7777, uid: meta.uid, gid: meta.gid, mtime: meta.mtime, times, xattrs, body })
    }

    fn intern_xattrs(&mut self, mut xattrs: XattrList) -> Result<u32, WriteError> {
        if xattrs.is_empty() {
            return Ok(0);
        }
        xattrs.sort();
        xattrs.dedup_by(|a, b| a.0 == b.0);
        for (k, v) in &xattrs {
            if k.is_empty() || k.len() > NAME_MAX || k.contains(&0) {
                return Err(WriteError::path(k, "bad xattr key (empty, over 255 bytes, or NUL)"));
            }
            if v.len() > XATTR_VALUE_MAX {
                return Err(WriteError::path(k, "xattr value over 64 KiB"));
            }
        }
        if let Some(&i) = self.xattr_index.get(&xattrs) {
            return Ok(i);
        }
        let i = u32::try_from(self.xattr_sets.len() + 1).map_err(|_| WriteError::Limit("too many xattr sets"))?;
        self.xattr_sets.push(xattrs.clone());
        self.xattr_index.insert(xattrs, i);
        Ok(i)
    }

    /// Places `node` at `path` with tar semantics: a later entry replaces an earlier one, except
    /// that a directory over a directory only updates its metadata (keeping its children).
    fn place(&mut self, path: &[u8], node: Node) -> Result<NodeId, WriteError> {
        let comps = Self::components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root: only a directory can be the root.
            let Body::Dir { .. } = node.body else {
                return Err(WriteError::path(b"/", "the root must be a directory"));
            };
            self.update_dir(0, node);
            return Ok(0);
        };
        let parent = self.dir_at(path, parents)?;
        let Body::Dir { children, .. } = &self.nodes[parent as usize].body else { unreachable!() };
        let existing = children.get(*name).copied();
        if let (Some(Child::Node(id)), Body::Dir { .. }) = (existing, &node.body)
            && matches!(self.nodes[id as usize].body, Body::Dir { .. })
        {
            self.update_dir(id, node);
            return Ok(id);
        }
        let mut node = node;
        if let (Some(Child::Whiteout), Body::Dir { opaque, .. }) = (existing, &mut node.body) {
            // A whiteout and a directory of the same name in one layer: the directory replaces
            // the lower one entirely.
            *opaque = true;
        }
        let id = self.push(node)?;
        let Body::Dir { children, .. } = &mut self.nodes[parent as usize].body else { unreachable!() };
        children.insert((*name).into(), Child::Node(id));
        Ok(id)
    }

    fn update_dir(&mut self, id: NodeId, node: Node) {
        let Body::Dir { opaque: new_opaque, .. } = node.body else {
            return;
        };
        let old = &mut self.nodes[id as usize];
        old.mode = node.mode;
        old.uid = node.uid;
        old.gid = node.gid;
        old.mtime = node.mtime;
        old.times = node.times;
        old.xattrs = node.xattrs;
        if let Body::Dir { opaque, .. } = &mut old.body {
            *opaque |= new_opaque;
        }
    }

    /// Adds (or updates) a directory.
    pub fn dir(&mut self, path: &[u8], meta: Meta) -> Result<(), WriteError> {
        let node = self.make_node(meta, Body::Dir { children: HashMap::new(), opaque: false })?;
        self.place(path, node).map(drop)
    }

    /// Adds a regular file of `size` bytes read from `data` (exactly `size` bytes are read).
    pub fn file(&mut self, path: &[u8], meta: Meta, size: u64, data: &mut dyn Read) -> Result<(), WriteError> {
        Self::components(path)?.last().ok_or_else(|| WriteError::path(path, "the root must be a directory"))?;
        let file_data = self.write_data(path, size, data)?;
        let node = self.make_node(meta, Body::File { size, data: file_data })?;
        self.place(path, node).map(drop)
    }

    /// Adds a regular file whose content is the existing external object `digest` (of `size`
    /// bytes, `allocated` bytes of which are not holes): nothing is read or copied. Used to
    /// re-pack files of other layers (flatten, commit) without touching their data.
    pub fn external_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        size: u64,
        digest: &[u8; 32],
        allocated: u64,
    ) -> Result<(), WriteError> {
        Self::components(path)?.last().ok_or_else(|| WriteError::path(path, "the root must be a directory"))?;
        let data = if size == 0 {
            FileData::Empty
        } else if let Some(&d) = self.stored.get(digest) {
            self.summary.deduplicated += 1;
            d
        } else {
            let blocks =
                u32::try_from(allocated.div_ceil(BLOCK_SIZE)).map_err(|_| WriteError::Limit("file over 16 TiB"))?;
            let d = FileData::External { blocks, digest: self.digest_index(digest)? };
            self.stored.insert(*digest, d);
            self.summary.objects.push(*digest);
            d
        };
        let node = self.make_node(meta, Body::File { size, data })?;
        self.place(path, node).map(drop)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &[u8], meta: Meta, target: &[u8]) -> Result<(), WriteError> {
        if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
            return Err(WriteError::path(path, "symlink target empty, over 4095 bytes, or containing NUL"));
        }
        let node = self.make_node(meta, Body::Symlink(target.into()))?;
        self.place(path, node).map(drop)
    }

    /// Adds a device node, fifo or socket (`rdev` is ignored for fifos and sockets).
    pub fn special(&mut self, path: &[u8], meta: Meta, kind: Kind, rdev: (u32, u32)) -> Result<(), WriteError> {
        let body = match kind {
            Kind::CharDev | Kind::BlockDev => Body::Device { kind, major: rdev.0, minor: rdev.1 },
            Kind::Fifo => Body::Fifo,
            Kind::Socket => Body::Socket,
            _ => return Err(WriteError::path(path, "not a special file kind")),
        };
        let node = self.make_node(meta, body)?;
        self.place(path, node).map(drop)
    }

    /// Adds a hard link at `path` to the existing non-directory entry at `target`.
    pub fn hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), WriteError> {
        let tcomps = Self::components(target)?;
        let mut cur: NodeId = 0;
        for (i, name) in tcomps.iter().enumerate() {
            let Body::Dir { children, .. } = &self.nodes[cur as usize].body else {
                return Err(WriteError::path(target, "hard link target's parent is not a directory"));
            };
            match children.get(*name) {
                Some(Child::Node(id)) => cur = *id,
                _ => {
                    return Err(WriteError::path(path, "hard link to an entry that does not exist"));
                }
            }
            if i + 1 == tcomps.len() && matches!(self.nodes[cur as usize].body, Body::Dir { .. }) {
                return Err(WriteError::path(path, "hard link to a directory"));
            }
        }
        if cur == 0 {
            return Err(WriteError::path(path, "hard link to the root"));
        }
        let comps = Self::components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(WriteError::path(path, "hard link at the root"));
        };
        let parent = self.dir_at(path, parents)?;
        let Body::Dir { children, .. } = &mut self.nodes[parent as usize].body else { unreachable!() };
        children.insert((*name).into(), Child::Node(cur));
        Ok(())
    }

    /// Records that `path` is deleted from the layers below. A whiteout never hides an entry of
    /// this layer: if `path` exists here it stays (a directory becomes opaque instead).
    pub fn whiteout(&mut self, path: &[u8]) -> Result<(), WriteError> {
        let comps = Self::components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(WriteError::path(path, "whiteout of the root"));
        };
        let parent = self.dir_at(path, parents)?;
        let Body::Dir { children, .. } = &mut self.nodes[parent as usize].body else { unreachable!() };
        match children.get(*name).copied() {
            Some(Child::Node(id)) => {
                if let Body::Dir { opaque, .. } = &mut self.nodes[id as usize].body {
                    *opaque = true;
                }
            }
            Some(Child::Whiteout) => {}
            None => {
                children.insert((*name).into(), Child::Whiteout);
            }
        }
        Ok(())
    }

    /// Marks directory `path` opaque (creating it if needed): the layers below are hidden there.
    pub fn opaque(&mut self, path: &[u8]) -> Result<(), WriteError> {
        let comps = Self::components(path)?;
        let id = self.dir_at(path, &comps)?;
        if let Body::Dir { opaque, .. } = &mut self.nodes[id as usize].body {
            *opaque = true;
        }
        Ok(())
    }

    fn digest_index(&mut self, digest: &[u8; 32]) -> Result<u32, WriteError> {
        let i = u32::try_from(self.digests.len() + 1).map_err(|_| WriteError::Limit("too many digests"))?;
        self.digests.push(*digest);
        Ok(i)
    }

    fn write_data(&mut self, path: &[u8], size: u64, data: &mut dyn Read) -> Result<FileData, WriteError> {
        if size == 0 {
            return Ok(FileData::Empty);
        }
        if self.sink.is_some() && size >= self.opts.external_min {
            return self.write_external(path, size, data);
        }
        if size < BLOCK_SIZE {
            return self.write_small(path, size as usize, data);
        }
        self.write_large(path, size, data)
    }

    fn read_chunk(data: &mut dyn Read, buf: &mut [u8], path: &[u8]) -> Result<(), WriteError> {
        data.read_exact(buf)
            .map_err(|e| WriteError::io(format!("reading the data of {}", String::from_utf8_lossy(path)), e))
    }

    fn write_small(&mut self, path: &[u8], size: usize, data: &mut dyn Read) -> Result<FileData, WriteError> {
        let mut buf = std::mem::take(&mut self.buf);
        let res = Self::read_chunk(data, &mut buf[..size], path);
        let bytes = &buf[..size];
        let out = res.and_then(|()| {
            let digest: [u8; 32] = Sha256::digest(bytes).into();
            if let Some(&d) = self.stored.get(&digest) {
                self.summary.deduplicated += 1;
                return Ok(d);
            }
            let d = if is_zero(bytes) {
                // One all-zero (tail) block: a hole.
                FileData::Inline { first: 0, count: 0, blocks: 0, digest: self.digest_index(&digest)? }
            } else {
                let off = self.place_small(bytes)?;
                let first = self.extents.len() as u32;
                self.extents.push(RawExtent {
                    file_off: U64::new(0),
                    data_off: U64::new(off),
                    len: U32::new(size as u32),
                    crc32: U32::new(crc32(bytes)),
                });
                FileData::Inline { first, count: 1, blocks: 1, digest: self.digest_index(&digest)? }
            };
            self.stored.insert(digest, d);
            Ok(d)
        });
        self.buf = buf;
        out
    }

    /// Copies a small file's bytes into the current small-file page; returns their offset.
    fn place_small(&mut self, bytes: &[u8]) -> Result<u64, WriteError> {
        if self.page.as_ref().is_none_or(|p| p.buf.len() + bytes.len() > BLOCK_SIZE as usize) {
            self.flush_page()?;
            let offset = self.data_end;
            self.data_end += BLOCK_SIZE;
            self.page = Some(SmallPage { offset, buf: Vec::with_capacity(BLOCK_SIZE as usize) });
        }
        let page = self.page.as_mut().expect("page set above");
        let off = page.offset + page.buf.len() as u64;
        page.buf.extend_from_slice(bytes);
        self.summary.inline_bytes += bytes.len() as u64;
        Ok(off)
    }

    fn flush_page(&mut self) -> Result<(), WriteError> {
        if let Some(mut p) = self.page.take() {
            // The whole page, zero-padded: the padding is defined whatever was there before.
            p.buf.resize(BLOCK_SIZE as usize, 0);
            self.out.write_all_at(&p.buf, p.offset).map_err(io_err("writing the layer's data"))?;
        }
        Ok(())
    }

    /// Streams a file of at least one block: 4 KiB-aligned, zero blocks become holes, extents of
    /// at most 1 MiB. A content already stored is rewound and shared.
    fn write_large(&mut self, path: &[u8], size: u64, data: &mut dyn Read) -> Result<FileData, WriteError> {
        let start = self.data_end;
        let first_extent = self.extents.len();
        let mut hasher = Sha256::new();
        let mut pos = start; // where the next stored byte goes
        let mut file_off = 0u64;
        let mut cur: Option<(RawExtent, crc32fast::Hasher)> = None;
        let mut blocks = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        while file_off < size {
            let n = (size - file_off).min(buf.len() as u64) as usize;
            if let Err(e) = Self::read_chunk(data, &mut buf[..n], path) {
                result = Err(e);
                break;
            }
            hasher.update(&buf[..n]);
            // Runs of non-zero blocks within this chunk, written with one call each.
            let mut i = 0;
            while i < n {
                let bl = (n - i).min(BLOCK_SIZE as usize);
                let block = &buf[i..i + bl];
                if is_zero(block) {
                    if let Some((e, h)) = cur.take() {
                        self.extents.push(finish_extent(e, h));
                    }
                } else {
                    blocks += 1;
                    let continues = cur.as_ref().is_some_and(|(e, _)| e.len.get() + (bl as u32) <= MAX_EXTENT);
                    if !continues {
                        if let Some((e, h)) = cur.take() {
                            self.extents.push(finish_extent(e, h));
                        }
                        cur = Some((
                            RawExtent {
                                file_off: U64::new(file_off + i as u64),
                                data_off: U64::new(pos),
                                len: U32::new(0),
                                crc32: U32::new(0),
                            },
                            crc32fast::Hasher::new(),
                        ));
                    }
                    let (e, h) = cur.as_mut().expect("extent open");
                    e.len.set(e.len.get() + bl as u32);
                    h.update(block);
                    if let Err(err) = self.out.write_all_at(block, pos) {
                        result = Err(WriteError::io("writing the layer's data", err));
                        break;
                    }
                    pos += bl as u64;
                }
                i += bl;
            }
            if result.is_err() {
                break;
            }
            file_off += n as u64;
        }
        self.buf = buf;
        result?;
        if let Some((e, h)) = cur.take() {
            self.extents.push(finish_extent(e, h));
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if let Some(&d) = self.stored.get(&digest) {
            // Already stored: rewind; the next data overwrites these bytes.
            self.extents.truncate(first_extent);
            self.summary.deduplicated += 1;
            return Ok(d);
        }
        self.summary.inline_bytes += pos - start;
        self.data_end = pos.next_multiple_of(BLOCK_SIZE);
        // Zero the tail padding (it may hold bytes of a rewound duplicate).
        let pad = (self.data_end - pos) as usize;
        if pad > 0 {
            self.out.write_all_at(&ZEROS[..pad], pos).map_err(io_err("writing the layer's data"))?;
        }
        let count = u32::try_from(self.extents.len() - first_extent).map_err(|_| WriteError::Limit("extents"))?;
        let first = u32::try_from(first_extent).map_err(|_| WriteError::Limit("more than 2^32 extents"))?;
        let blocks = u32::try_from(blocks).map_err(|_| WriteError::Limit("file over 16 TiB"))?;
        let d = FileData::Inline { first, count, blocks, digest: self.digest_index(&digest)? };
        self.stored.insert(digest, d);
        Ok(d)
    }

    /// Streams a file into a temporary object (holes left unwritten), then publishes it.
    fn write_external(&mut self, path: &[u8], size: u64, data: &mut dyn Read) -> Result<FileData, WriteError> {
        let sink = self.sink.as_mut().expect("checked by the caller");
        let tmp = sink.temp().map_err(io_err("creating a temporary object"))?;
        let mut hasher = Sha256::new();
        let mut file_off = 0u64;
        let mut blocks = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        while file_off < size {
            let n = (size - file_off).min(buf.len() as u64) as usize;
            if let Err(e) = Self::read_chunk(data, &mut buf[..n], path) {
                result = Err(e);
                break;
            }
            hasher.update(&buf[..n]);
            let mut i = 0;
            while i < n {
                // Write maximal runs of non-zero blocks with one call.
                let mut j = i;
                while j < n && !is_zero(&buf[j..(j + BLOCK_SIZE as usize).min(n)]) {
                    j = (j + BLOCK_SIZE as usize).min(n);
                }
                if j > i {
                    blocks += ((j - i) as u64).div_ceil(BLOCK_SIZE);
                    if let Err(e) = tmp.file.write_all_at(&buf[i..j], file_off + i as u64) {
                        result = Err(WriteError::io("writing a temporary object", e));
                        break;
                    }
                    i = j;
                } else {
                    i = (i + BLOCK_SIZE as usize).min(n);
                }
            }
            if result.is_err() {
                break;
            }
            file_off += n as u64;
        }
        self.buf = buf;
        let digest: [u8; 32] = hasher.finalize().into();
        let published = result.and_then(|()| {
            tmp.file.set_len(size).map_err(io_err("sizing a temporary object"))?;
            Ok(())
        });
        let sink = self.sink.as_mut().expect("checked by the caller");
        if let Err(e) = published {
            sink.discard(tmp);
            return Err(e);
        }
        if let Some(&d) = self.stored.get(&digest) {
            sink.discard(tmp);
            self.summary.deduplicated += 1;
            return Ok(d);
        }
        sink.publish(tmp, &digest, size).map_err(io_err("publishing an object"))?;
        self.summary.external_bytes += size;
        self.summary.objects.push(digest);
        let blocks = u32::try_from(blocks).map_err(|_| WriteError::Limit("file over 16 TiB"))?;
        let d = FileData::External { blocks, digest: self.digest_index(&digest)? };
        self.stored.insert(digest, d);
        Ok(d)
    }

    /// Writes the metadata and the header; `source_digest` is the SHA-256 of the source tar.
    pub fn finish(mut self, source_digest: Option<[u8; 32]>) -> Result<Summary, WriteError> {
        self.flush_page()?;
        // Number inodes breadth-first, children in name order: the children of a directory get
        // consecutive numbers (a readdirplus touches one run of inode records).
        let n = self.nodes.len();
        let mut ino_of = vec![0u32; n];
        let mut order: Vec<NodeId> = vec![0];
        let mut refs = vec![0u32; n];
        ino_of[0] = ROOT_INO;
        // Per directory (in BFS order): its sorted entries.
        let mut dir_entries: Vec<Vec<(Box<[u8]>, Child)>> = Vec::new();
        let mut subdirs = vec![0u32; n];
        let mut parent_of = vec![0u32; n];
        let mut qi = 0;
        while qi < order.len() {
            let id = order[qi];
            qi += 1;
            let Body::Dir { children, .. } = &mut self.nodes[id as usize].body else {
                continue;
            };
            let mut ents: Vec<(Box<[u8]>, Child)> = std::mem::take(children).into_iter().collect();
            ents.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (_, c) in &ents {
                if let Child::Node(cid) = *c {
                    refs[cid as usize] += 1;
                    if ino_of[cid as usize] == 0 {
                        ino_of[cid as usize] = u32::try_from(order.len() + 1)
                            .map_err(|_| WriteError::Limit("more than 2^32 - 1 inodes"))?;
                        order.push(cid);
                    }
                    if matches!(self.nodes[cid as usize].body, Body::Dir { .. }) {
                        subdirs[id as usize] += 1;
                        parent_of[cid as usize] = ino_of[id as usize];
                    }
                }
            }
            dir_entries.push(ents);
        }
        parent_of[0] = ROOT_INO;

        // Strings: names of each directory together, in BFS order, then symlink targets and
        // xattrs; identical strings stored once.
        let mut strings = StringPool::default();
        let mut dirents: Vec<RawDirent> = Vec::new();
        let mut dir_range = vec![(0u32, 0u32); n];
        let mut di = 0;
        for &id in &order {
            if !matches!(self.nodes[id as usize].body, Body::Dir { .. }) {
                continue;
            }
            let ents = &dir_entries[di];
            di += 1;
            let first = u32::try_from(dirents.len()).map_err(|_| WriteError::Limit("more than 2^32 dirents"))?;
            for (name, c) in ents {
                let (kind, ino) = match *c {
                    Child::Whiteout => (Kind::Whiteout, 0),
                    Child::Node(cid) => (self.nodes[cid as usize].kind(), ino_of[cid as usize]),
                };
                dirents.push(RawDirent {
                    name_off: U32::new(strings.intern(name)?),
                    ino: U32::new(ino),
                    name_len: name.len() as u8,
                    kind: kind as u8,
                    reserved: U16::new(0),
                    prefix: name_prefix(name),
                });
            }
            dir_range[id as usize] = (first, ents.len() as u32);
        }
        drop(dir_entries);

        let mut xattr_entries: Vec<RawXattrEntry> = Vec::new();
        let mut xattr_sets: Vec<RawXattrSet> = Vec::new();
        for set in &self.xattr_sets {
            xattr_sets
                .push(RawXattrSet { first: U32::new(xattr_entries.len() as u32), count: U32::new(set.len() as u32) });
            for (k, v) in set {
                xattr_entries.push(RawXattrEntry {
                    key_off: U32::new(strings.intern(k)?),
                    value_off: U32::new(strings.intern(v)?),
                    value_len: U32::new(v.len() as u32),
                    key_len: k.len() as u8,
                    reserved: [0; 3],
                });
            }
        }

        let has_times = order.iter().any(|&id| self.nodes[id as usize].times.is_some());
        let mut inodes: Vec<RawInode> = Vec::with_capacity(order.len());
        let mut times: Vec<RawTimes> = Vec::new();
        let mut external = false;
        for &id in &order {
            let node = &self.nodes[id as usize];
            let kind = node.kind();
            let (mut a, mut b, mut extra, mut size, mut flags) = (0u32, 0u32, 0u64, 0u64, 0u32);
            let nlink = match kind {
                Kind::Dir => subdirs[id as usize] + 2,
                _ => refs[id as usize],
            };
            match &node.body {
                Body::Dir { opaque, .. } => {
                    (a, b) = dir_range[id as usize];
                    if *opaque {
                        flags |= INODE_OPAQUE;
                    }
                }
                Body::File { size: s, data } => {
                    size = *s;
                    match *data {
                        FileData::Empty => {}
                        FileData::Inline { first, count, blocks, digest } => {
                            (a, b) = (first, count);
                            extra = (blocks as u64) << 32 | digest as u64;
                        }
                        FileData::External { blocks, digest } => {
                            flags |= INODE_EXTERNAL;
                            external = true;
                            extra = (blocks as u64) << 32 | digest as u64;
                        }
                    }
                }
                Body::Symlink(t) => {
                    a = strings.intern(t)?;
                    b = t.len() as u32;
                    size = t.len() as u64;
                }
                Body::Device { major, minor, .. } => extra = (*major as u64) << 32 | *minor as u64,
                Body::Fifo | Body::Socket => {}
            }
            inodes.push(RawInode {
                mode: U32::new(kind.mode_bits() | node.mode),
                uid: U32::new(node.uid),
                gid: U32::new(node.gid),
                nlink: U32::new(nlink),
                size: U64::new(size),
                mtime_sec: I64::new(node.mtime.sec),
                mtime_nsec: U32::new(node.mtime.nsec),
                flags: U32::new(flags),
                a: U32::new(a),
                b: U32::new(b),
                extra: U64::new(extra),
                xattrs: U32::new(node.xattrs),
                parent: U32::new(if kind == Kind::Dir { parent_of[id as usize] } else { 0 }),
            });
            if has_times {
                let (at, ct) = node.times.as_deref().copied().unwrap_or((node.mtime, node.mtime));
                times.push(RawTimes {
                    atime_sec: I64::new(at.sec),
                    ctime_sec: I64::new(ct.sec),
                    atime_nsec: U32::new(at.nsec),
                    ctime_nsec: U32::new(ct.nsec),
                });
            }
        }
        let mut objects: Vec<[u8; 32]> = std::mem::take(&mut self.summary.objects);
        objects.sort_unstable();
        objects.dedup();

        // Metadata starts on a block boundary after the data.
        let data_end = self.data_end;
        let mut pos = data_end;
        let mut table = [RawSection::default(); SECTION_SLOTS];
        self.out.seek(SeekFrom::Start(pos)).map_err(io_err("seeking in the layer"))?;
        let mut w = BufWriter::with_capacity(1 << 20, &mut self.out);
        let sections: [(SectionId, &[u8], usize); 8] = [
            (SectionId::Inodes, inodes.as_bytes(), inodes.len()),
            (SectionId::Dirents, dirents.as_bytes(), dirents.len()),
            (SectionId::Extents, self.extents.as_bytes(), self.extents.len()),
            (SectionId::XattrSets, xattr_sets.as_bytes(), xattr_sets.len()),
            (SectionId::XattrEntries, xattr_entries.as_bytes(), xattr_entries.len()),
            (SectionId::Digests, self.digests.as_bytes(), self.digests.len()),
            (SectionId::Times, times.as_bytes(), times.len()),
            (SectionId::Strings, &strings.bytes, strings.bytes.len()),
        ];
        for (id, bytes, count) in sections {
            if bytes.is_empty() {
                continue;
            }
            let pad = pos.next_multiple_of(8) - pos;
            w.write_all(&[0u8; 8][..pad as usize]).map_err(io_err("writing the layer's metadata"))?;
            pos += pad;
            w.write_all(bytes).map_err(io_err("writing the layer's metadata"))?;
            table[id as usize] = RawSection {
                offset: U64::new(pos),
                length: U64::new(bytes.len() as u64),
                count: U64::new(count as u64),
                crc32: U32::new(crc32(bytes)),
                reserved: U32::new(0),
            };
            pos += bytes.len() as u64;
        }
        w.flush().map_err(io_err("writing the layer's metadata"))?;
        drop(w);
        let file_size = pos.max(HEADER_AREA);
        let mut header = RawHeader {
            magic: MAGIC,
            version_major: U16::new(VERSION_MAJOR),
            version_minor: U16::new(VERSION_MINOR),
            header_size: U32::new(HEADER_SIZE),
            file_size: U64::new(file_size),
            incompat: U32::new(if external { INCOMPAT_EXTERNAL_DATA } else { 0 }),
            ro_compat: U32::new(0),
            compat: U32::new(if has_times { COMPAT_TIMES } else { 0 }),
            block_log2: U32::new(BLOCK_LOG2),
            root_ino: U32::new(ROOT_INO),
            reserved0: U32::new(0),
            inode_count: U64::new(inodes.len() as u64),
            data_start: U64::new(HEADER_AREA),
            data_end: U64::new(data_end),
            source_digest: source_digest.unwrap_or([0; 32]),
            sections: table,
            reserved1: [0; 20],
            crc32: U32::new(0),
        };
        header.crc32 = U32::new(crc32(&header.as_bytes()[..HEADER_SIZE as usize - 4]));
        let mut area = vec![0u8; HEADER_AREA as usize];
        area[..HEADER_SIZE as usize].copy_from_slice(header.as_bytes());
        self.out.write_all_at(&area, 0).map_err(io_err("writing the layer's header"))?;
        self.out.set_len(file_size).map_err(io_err("sizing the layer"))?;
        self.summary.file_size = file_size;
        self.summary.inodes = inodes.len() as u64;
        self.summary.objects = objects;
        Ok(self.summary)
    }
}

static ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];

/// True when `block` (at most 4 KiB) is all zeros.
fn is_zero(block: &[u8]) -> bool {
    block == &ZEROS[..block.len()]
}

fn finish_extent(mut e: RawExtent, h: crc32fast::Hasher) -> RawExtent {
    e.crc32 = U32::new(h.finalize());
    e
}

#[derive(Default)]
struct StringPool {
    bytes: Vec<u8>,
    index: HashMap<Box<[u8]>, u32>,
}

impl StringPool {
    fn intern(&mut self, s: &[u8]) -> Result<u32, WriteError> {
        if let Some(&off) = self.index.get(s) {
            return Ok(off);
        }
        let off = u32::try_from(self.bytes.len()).map_err(|_| WriteError::Limit("string pool over 4 GiB"))?;
        if off as u64 + s.len() as u64 > u32::MAX as u64 {
            return Err(WriteError::Limit("string pool over 4 GiB"));
        }
        self.bytes.extend_from_slice(s);
        self.index.insert(s.into(), off);
        Ok(off)
    }
}
