//! The complete check of a packed layer: every checksum and every invariant of `SPEC.md`.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::error::FormatError;
use crate::raw::*;
use crate::reader::{Inode, Layer, Segment, name_prefix, valid_name};

/// Counts gathered by [`Layer::verify`] (and shown by `layertool inspect`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inodes.
    pub inodes: u64,
    /// Directories.
    pub dirs: u64,
    /// Regular files (inodes, not names).
    pub files: u64,
    /// Regular files whose data is an external object.
    pub external_files: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets.
    pub specials: u64,
    /// Directory entries, whiteouts included.
    pub dirents: u64,
    /// Whiteouts.
    pub whiteouts: u64,
    /// Opaque directories.
    pub opaque_dirs: u64,
    /// Names that are extra hardlinks (entries beyond the first of an inode).
    pub hardlinks: u64,
    /// Extents.
    pub extents: u64,
    /// Sum of regular file sizes (each inode once).
    pub file_bytes: u64,
    /// Bytes of stored data referenced by extents (shared extents counted once).
    pub stored_bytes: u64,
    /// Inodes with extended attributes.
    pub with_xattrs: u64,
    /// Sparse files whose SHA-256 was not recomputed because their holes exceed 1 GiB (hashing
    /// a terabyte of zeros takes minutes); their stored data is still checked by the extent crcs.
    pub digests_skipped: u64,
}

/// Holes larger than this are not hashed by [`Layer::verify`].
const MAX_HASHED_HOLES: u64 = 1 << 30;

/// What [`Layer::verify`] checks beyond the structure.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Check every extent's crc32 and every inline file's SHA-256 against its digest.
    pub data: bool,
}

impl<B: AsRef<[u8]>> Layer<B> {
    /// Checks every section checksum and every structural invariant (and, with `opts.data`, every
    /// byte of inline data). Returns counts of what the layer holds. External objects are not this
    /// crate's to check: see [`Layer::external_files`].
    pub fn verify(&self, opts: VerifyOptions) -> Result<Stats, FormatError> {
        for id in SectionId::ALL {
            self.check_section(id)?;
        }
        let n = self.inode_count() as usize;
        let dirent_total = self.header().sections[SectionId::Dirents as usize].count as usize;
        let mut refs = vec![0u32; n + 1];
        let mut dir_seen = vec![false; n + 1];
        let mut dirent_used = vec![false; dirent_total];
        let mut stats = Stats { inodes: n as u64, ..Stats::default() };

        // Walk the tree from the root: every directory exactly once, entries sorted and valid.
        let root = self.inode(ROOT_INO)?;
        if !root.is_dir() || root.parent != ROOT_INO {
            return Err(FormatError::BadTree {
                ino: ROOT_INO,
                reason: "root is not a directory that is its own parent",
            });
        }
        dir_seen[ROOT_INO as usize] = true;
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(dir) = queue.pop_front() {
            let first = dir.a_b().0 as usize;
            let mut prev: Option<&[u8]> = None;
            let mut subdirs = 0u32;
            for (i, ent) in self.read_dir(&dir, 0)?.enumerate() {
                let ent = ent?;
                let bad = |reason| FormatError::BadDirent { dir: dir.ino, index: i as u64, reason };
                let slot = first + i;
                if dirent_used[slot] {
                    return Err(bad("entry shared with another directory"));
                }
                dirent_used[slot] = true;
                valid_name(ent.name).map_err(bad)?;
                if self.raw_dirent(slot).map(|d| d.prefix) != Some(name_prefix(ent.name)) {
                    return Err(bad("prefix does not match the name"));
                }
                if self.raw_dirent(slot).map(|d| d.reserved.get()) != Some(0) {
                    return Err(bad("reserved field is not zero"));
                }
                if prev.is_some_and(|p| p >= ent.name) {
                    return Err(bad("entries not sorted strictly by name"));
                }
                prev = Some(ent.name);
                stats.dirents += 1;
                if ent.kind == Kind::Whiteout {
                    stats.whiteouts += 1;
                    continue;
                }
                let child = self.inode(ent.ino)?;
                if child.kind() != ent.kind {
                    return Err(bad("kind does not match the inode's type"));
                }
                if child.is_dir() {
                    if dir_seen[ent.ino as usize] {
                        return Err(FormatError::BadTree { ino: ent.ino, reason: "directory reached twice" });
                    }
                    if child.parent != dir.ino {
                        return Err(FormatError::BadTree {
                            ino: ent.ino,
                            reason: "parent field names another directory",
                        });
                    }
                    dir_seen[ent.ino as usize] = true;
                    subdirs += 1;
                    queue.push_back(child);
                } else {
                    if refs[ent.ino as usize] > 0 {
                        stats.hardlinks += 1;
                    }
                    refs[ent.ino as usize] += 1;
                }
            }
            if dir.nlink != subdirs + 2 {
                return Err(FormatError::BadInode {
                    ino: dir.ino,
                    reason: "directory nlink is not 2 + subdirectories",
                });
            }
        }

        let mut checked_runs: HashSet<(u32, u32)> = HashSet::new();
        for ino in 1..=n as u32 {
            let inode = self.inode(ino)?;
            let bad = |reason| FormatError::BadInode { ino, reason };
            if inode.is_dir() {
                if !dir_seen[ino as usize] {
                    return Err(FormatError::BadTree { ino, reason: "directory not reachable from the root" });
                }
            } else {
                if refs[ino as usize] == 0 {
                    return Err(FormatError::BadTree { ino, reason: "inode not reachable from the root" });
                }
                if refs[ino as usize] != inode.nlink {
                    return Err(bad("nlink does not match the number of names"));
                }
                if inode.parent != 0 {
                    return Err(bad("parent set on a non-directory"));
                }
            }
            if inode.has_xattrs() {
                stats.with_xattrs += 1;
                let mut prev: Option<&[u8]> = None;
                for (i, (k, _)) in self.xattrs(&inode)?.into_iter().enumerate() {
                    let badx = |reason| FormatError::BadXattr { ino, index: i as u64, reason };
                    if k.contains(&0) {
                        return Err(badx("key contains NUL"));
                    }
                    if prev.is_some_and(|p| p >= k) {
                        return Err(badx("keys not sorted strictly"));
                    }
                    prev = Some(k);
                }
                if prev.is_none() {
                    return Err(bad("empty xattr set"));
                }
            }
            let (a, b) = inode.a_b();
            match inode.kind() {
                Kind::Dir => {
                    stats.dirs += 1;
                    stats.opaque_dirs += inode.is_opaque() as u64;
                    if inode.extra_raw() != 0 {
                        return Err(bad("extra field set on a directory"));
                    }
                }
                Kind::File => {
                    stats.files += 1;
                    stats.file_bytes = stats.file_bytes.saturating_add(inode.size);
                    let digest = self.digest(&inode)?;
                    if inode.is_external() {
                        stats.external_files += 1;
                        if digest.is_none() || a != 0 || b != 0 {
                            return Err(bad("external file without a digest, or with extents"));
                        }
                        continue;
                    }
                    let fresh = checked_runs.insert((a, b));
                    let blocks = self.check_extents(&inode, opts.data && fresh)?;
                    if fresh {
                        stats.extents += b as u64;
                        stats.stored_bytes += self.extents(&inode)?.iter().map(|e| e.len.get() as u64).sum::<u64>();
                    }
                    if blocks != inode.allocated_bytes() / BLOCK_SIZE {
                        return Err(bad("allocated block count does not match the extents"));
                    }
                    let stored: u64 = self.extents(&inode)?.iter().map(|e| e.len.get() as u64).sum();
                    let huge_holes = inode.size.saturating_sub(stored) > MAX_HASHED_HOLES;
                    if opts.data && fresh && digest.is_some() && huge_holes {
                        stats.digests_skipped += 1;
                    } else if let (true, true, Some(d)) = (opts.data, fresh, digest) {
                        let mut h = Sha256::new();
                        for seg in self.read_segments(&inode, 0, inode.size)? {
                            match seg {
                                Segment::Data(s) => h.update(s),
                                Segment::Zeros(z) => feed_zeros(&mut h, z),
                            }
                        }
                        if h.finalize().as_slice() != d {
                            return Err(bad("content does not match its SHA-256 digest"));
                        }
                    }
                }
                Kind::Symlink => {
                    stats.symlinks += 1;
                    let target = self.readlink(&inode)?;
                    if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
                        return Err(bad("symlink target empty, too long, or containing NUL"));
                    }
                    if inode.size != b as u64 || inode.extra_raw() != 0 {
                        return Err(bad("symlink size or extra field wrong"));
                    }
                }
                Kind::CharDev | Kind::BlockDev | Kind::Fifo | Kind::Socket => {
                    stats.specials += 1;
                    if a != 0 || b != 0 || inode.size != 0 {
                        return Err(bad("special file with data fields set"));
                    }
                    if matches!(inode.kind(), Kind::Fifo | Kind::Socket) && inode.extra_raw() != 0 {
                        return Err(bad("fifo or socket with a device number"));
                    }
                }
                Kind::Whiteout => unreachable!("inodes are never whiteouts"),
            }
        }
        if dirent_used.iter().any(|u| !u) {
            return Err(FormatError::BadTree { ino: ROOT_INO, reason: "dirent table holds entries of no directory" });
        }
        Ok(stats)
    }

    /// Checks the extents of an inline file; returns its count of allocated 4 KiB blocks.
    fn check_extents(&self, inode: &Inode, data: bool) -> Result<u64, FormatError> {
        let exts = self.extents(inode)?;
        let mut end = 0u64;
        let mut blocks = 0u64;
        for (i, e) in exts.iter().enumerate() {
            let bad = |reason| FormatError::BadExtent { ino: inode.ino, index: i as u64, reason };
            let bytes = self.extent_data(inode, i, e)?;
            let fo = e.file_off.get();
            if fo < end {
                return Err(bad("extents overlap or are unsorted"));
            }
            end = fo.checked_add(bytes.len() as u64).ok_or(bad("file offset overflows"))?;
            if end > inode.size {
                return Err(bad("extent beyond the end of the file"));
            }
            blocks += (bytes.len() as u64).div_ceil(BLOCK_SIZE);
            if data {
                let computed = crc32(bytes);
                if computed != e.crc32.get() {
                    return Err(FormatError::DataChecksum {
                        ino: inode.ino,
                        index: i as u64,
                        data_off: e.data_off.get(),
                        len: e.len.get(),
                        stored: e.crc32.get(),
                        computed,
                    });
                }
            }
        }
        Ok(blocks)
    }

    /// Regular files whose data is an external object: `(inode, digest)`, each inode once.
    pub fn external_files(&self) -> Result<Vec<(Inode, [u8; 32])>, FormatError> {
        let mut out = Vec::new();
        for ino in 1..=self.inode_count() {
            let inode = self.inode(ino)?;
            if inode.is_external()
                && let Some(d) = self.digest(&inode)?
            {
                out.push((inode, *d));
            }
        }
        Ok(out)
    }

    fn raw_dirent(&self, index: usize) -> Option<&RawDirent> {
        let sec = self.header().sections[SectionId::Dirents as usize];
        let start = sec.offset as usize + index * 16;
        let bytes = self.bytes().get(start..start + 16)?;
        zerocopy::FromBytes::ref_from_bytes(bytes).ok()
    }
}

/// Feeds `n` zero bytes to a hasher.
pub(crate) fn feed_zeros(h: &mut Sha256, mut n: u64) {
    static Z: [u8; 65536] = [0; 65536];
    while n > 0 {
        let k = n.min(Z.len() as u64) as usize;
        h.update(&Z[..k]);
        n -= k as u64;
    }
}
