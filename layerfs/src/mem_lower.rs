//! An in-memory [`Lower`] for tests of the union core (and a reference for implementers).
//! Built with a small path-based builder; inode numbers are dense, the root is 1.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::ControlFlow;

use crate::error::{Errno, Result};
use crate::lower::{Lower, LowerAttr, LowerDirEntry, LowerIno, LowerLookup, Timespec};

#[derive(Debug, Clone)]
enum Entry {
    Node(u64),
    Whiteout,
}

#[derive(Debug, Clone)]
enum Data {
    Dir(BTreeMap<Vec<u8>, Entry>),
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Other,
}

#[derive(Debug, Clone)]
struct Node {
    attr: LowerAttr,
    data: Data,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    opaque: bool,
}

/// An in-memory layer.
#[derive(Debug, Clone)]
pub struct MemLower {
    nodes: Vec<Node>,
    name: String,
}

fn attr(mode: u32, size: u64) -> LowerAttr {
    let t = Timespec { sec: 1_000_000_000, nsec: 0 };
    LowerAttr {
        mode,
        nlink: 1,
        uid: 0,
        gid: 0,
        size,
        blocks: size.div_ceil(512),
        rdev: 0,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

impl MemLower {
    /// An empty layer (just a root directory, mode 0755).
    pub fn new(name: &str) -> MemLower {
        MemLower {
            nodes: vec![Node {
                attr: LowerAttr { nlink: 2, ..attr(libc::S_IFDIR | 0o755, 0) },
                data: Data::Dir(BTreeMap::new()),
                xattrs: BTreeMap::new(),
                opaque: false,
            }],
            name: name.to_string(),
        }
    }

    fn node(&self, ino: LowerIno) -> Result<&Node> {
        self.nodes.get((ino.0 as usize).wrapping_sub(1)).ok_or(Errno::ESTALE)
    }

    fn split(path: &str) -> (Vec<&str>, &str) {
        let mut parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let last = parts.pop().unwrap_or("");
        (parts, last)
    }

    /// Index of directory `parts`, created (0755) as needed.
    fn dir_index(&mut self, parts: &[&str]) -> usize {
        let mut cur = 0usize;
        for p in parts {
            let existing = match &self.nodes[cur].data {
                Data::Dir(m) => match m.get(p.as_bytes()) {
                    Some(Entry::Node(i)) => Some(*i as usize - 1),
                    _ => None,
                },
                _ => panic!("{p} is not under a directory"),
            };
            cur = match existing {
                Some(i) => i,
                None => self.insert(cur, p, libc::S_IFDIR | 0o755, Data::Dir(BTreeMap::new())),
            };
        }
        cur
    }

    fn insert(&mut self, dir: usize, name: &str, mode: u32, data: Data) -> usize {
        let size = match &data {
            Data::File(d) | Data::Symlink(d) => d.len() as u64,
            _ => 0,
        };
        let mut a = attr(mode, size);
        if matches!(data, Data::Dir(_)) {
            a.nlink = 2;
            self.nodes[dir].attr.nlink += 1;
        }
        self.nodes.push(Node { attr: a, data, xattrs: BTreeMap::new(), opaque: false });
        let idx = self.nodes.len() - 1;
        if let Data::Dir(m) = &mut self.nodes[dir].data {
            m.insert(name.as_bytes().to_vec(), Entry::Node(idx as u64 + 1));
        }
        idx
    }

    fn index_of(&self, path: &str) -> usize {
        let mut cur = 0usize;
        for p in path.split('/').filter(|s| !s.is_empty()) {
            cur = match &self.nodes[cur].data {
                Data::Dir(m) => match m.get(p.as_bytes()) {
                    Some(Entry::Node(i)) => *i as usize - 1,
                    _ => panic!("no {path}"),
                },
                _ => panic!("no {path}"),
            };
        }
        cur
    }

    /// Adds a directory (parents are created).
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let (parents, last) = Self::split(path);
        let d = self.dir_index(&parents);
        let i = self.insert(d, last, libc::S_IFDIR | mode, Data::Dir(BTreeMap::new()));
        let _ = i;
        self
    }

    /// Adds a regular file.
    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let (parents, last) = Self::split(path);
        let d = self.dir_index(&parents);
        self.insert(d, last, libc::S_IFREG | mode, Data::File(data.to_vec()));
        self
    }

    /// Adds a symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let (parents, last) = Self::split(path);
        let d = self.dir_index(&parents);
        self.insert(d, last, libc::S_IFLNK | 0o777, Data::Symlink(target.as_bytes().to_vec()));
        self
    }

    /// Adds a device node, fifo or socket.
    pub fn special(mut self, path: &str, mode: u32, rdev: u64) -> Self {
        let (parents, last) = Self::split(path);
        let d = self.dir_index(&parents);
        let i = self.insert(d, last, mode, Data::Other);
        self.nodes[i].attr.rdev = rdev;
        self
    }

    /// Adds a whiteout.
    pub fn whiteout(mut self, path: &str) -> Self {
        let (parents, last) = Self::split(path);
        let d = self.dir_index(&parents);
        if let Data::Dir(m) = &mut self.nodes[d].data {
            m.insert(last.as_bytes().to_vec(), Entry::Whiteout);
        }
        self
    }

    /// Marks a directory opaque.
    pub fn opaque(mut self, path: &str) -> Self {
        let i = self.index_of(path);
        self.nodes[i].opaque = true;
        self
    }

    /// Adds a hard link `new` to the existing file `existing`.
    pub fn hardlink(mut self, existing: &str, new: &str) -> Self {
        let i = self.index_of(existing);
        let (parents, last) = Self::split(new);
        let d = self.dir_index(&parents);
        if let Data::Dir(m) = &mut self.nodes[d].data {
            m.insert(last.as_bytes().to_vec(), Entry::Node(i as u64 + 1));
        }
        self.nodes[i].attr.nlink += 1;
        self
    }

    /// Sets an extended attribute.
    pub fn xattr(mut self, path: &str, name: &str, value: &[u8]) -> Self {
        let i = self.index_of(path);
        self.nodes[i].xattrs.insert(name.as_bytes().to_vec(), value.to_vec());
        self
    }

    /// Sets owner and mtime of an object.
    pub fn owner(mut self, path: &str, uid: u32, gid: u32) -> Self {
        let i = self.index_of(path);
        self.nodes[i].attr.uid = uid;
        self.nodes[i].attr.gid = gid;
        self
    }
}

impl Lower for MemLower {
    fn root(&self) -> LowerIno {
        LowerIno(1)
    }

    /// A scan, but of a few entries: tests want lower nodes.
    fn finds_names_by_inode(&self) -> bool {
        true
    }

    fn ino_bound(&self) -> Option<u64> {
        Some(self.nodes.len() as u64 + 1)
    }

    fn lookup(&self, dir: LowerIno, name: &[u8]) -> Result<LowerLookup> {
        let Data::Dir(m) = &self.node(dir)?.data else {
            return Err(Errno::ENOTDIR);
        };
        Ok(match m.get(name) {
            None => LowerLookup::NotFound,
            Some(Entry::Whiteout) => LowerLookup::Whiteout,
            Some(Entry::Node(i)) => {
                LowerLookup::Found { ino: LowerIno(*i), kind: self.node(LowerIno(*i))?.attr.kind() }
            }
        })
    }

    fn getattr(&self, ino: LowerIno) -> Result<LowerAttr> {
        Ok(self.node(ino)?.attr)
    }

    fn is_opaque(&self, dir: LowerIno) -> Result<bool> {
        Ok(self.node(dir)?.opaque)
    }

    fn readdir(&self, dir: LowerIno, f: &mut dyn FnMut(&[u8], LowerDirEntry) -> ControlFlow<()>) -> Result<()> {
        let Data::Dir(m) = &self.node(dir)?.data else {
            return Err(Errno::ENOTDIR);
        };
        for (name, e) in m {
            let de = match e {
                Entry::Whiteout => LowerDirEntry::Whiteout,
                Entry::Node(i) => {
                    LowerDirEntry::Entry { ino: LowerIno(*i), kind: self.node(LowerIno(*i))?.attr.kind() }
                }
            };
            if f(name, de).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn readlink(&self, ino: LowerIno) -> Result<Vec<u8>> {
        match &self.node(ino)?.data {
            Data::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn listxattr(&self, ino: LowerIno) -> Result<Vec<Vec<u8>>> {
        Ok(self.node(ino)?.xattrs.keys().cloned().collect())
    }

    fn getxattr(&self, ino: LowerIno, name: &[u8]) -> Result<Vec<u8>> {
        self.node(ino)?.xattrs.get(name).cloned().ok_or(Errno::ENODATA)
    }

    fn read(&self, ino: LowerIno, offset: u64, size: u32) -> Result<Cow<'_, [u8]>> {
        match &self.node(ino)?.data {
            Data::File(d) => {
                let start = (offset as usize).min(d.len());
                let end = start.saturating_add(size as usize).min(d.len());
                Ok(Cow::Borrowed(&d[start..end]))
            }
            Data::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn open_backing(&self, _ino: LowerIno) -> Result<Option<File>> {
        Ok(None)
    }

    fn describe(&self) -> String {
        format!("mem:{}", self.name)
    }
}
