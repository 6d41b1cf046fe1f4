//! Converting one layer tarball (plain, gzip or zstd) into a packed layer, in one streaming pass.
//!
//! Tar semantics and OCI layer semantics are applied here; the format's rules (names, tree,
//! dedup, holes) are the writer's. Hostile input is normalised or refused, and said so:
//! absolute paths lose their leading `/`, `.` components vanish, `..` is resolved lexically and an
//! entry that would escape the root is refused; a hard link to a missing entry, a path through a
//! non-directory, an over-long name are errors. Nothing is ever written outside the output.

use std::io::{self, BufRead, BufReader, Read};

use format_spec::{Kind, LayerBuilder, Meta, Timestamp};
use sha2::{Digest, Sha256};

use crate::error::ImportError;

/// The compression of a stream, by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Detects the compression of `r` by peeking at its first bytes.
pub fn detect(r: &mut impl BufRead) -> io::Result<Compression> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// A reader that hashes what passes through it (the OCI diff_id of an uncompressed tar, the
/// digest of a compressed blob). The hashing runs on a thread of its own, fed copies of the bytes
/// through a bounded channel, so that it overlaps with the conversion on another core.
pub struct HashingReader<R> {
    inner: R,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<[u8; 32]>>,
    /// Bytes not yet sent: small reads (tar headers) are batched so that the channel sees few,
    /// large chunks.
    pending: Vec<u8>,
    count: u64,
}

const HASH_BATCH: usize = 256 * 1024;

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        let worker = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for chunk in rx {
                    h.update(&chunk);
                }
                h.finalize().into()
            })
            .expect("spawning the hashing thread");
        HashingReader { inner, tx: Some(tx), worker: Some(worker), pending: Vec::with_capacity(HASH_BATCH), count: 0 }
    }

    /// Reads the rest of the stream and returns its SHA-256 and length.
    pub fn finish(mut self) -> io::Result<([u8; 32], u64)> {
        io::copy(&mut self, &mut io::sink())?;
        self.send_pending()?;
        drop(self.tx.take());
        let digest = self
            .worker
            .take()
            .expect("worker present")
            .join()
            .map_err(|_| io::Error::other("hashing thread panicked"))?;
        Ok((digest, self.count))
    }
}

impl<R> HashingReader<R> {
    fn send_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(HASH_BATCH));
        match &self.tx {
            Some(tx) => tx.send(chunk).map_err(|_| io::Error::other("hashing thread ended")),
            None => Ok(()),
        }
    }
}

impl<R> Drop for HashingReader<R> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() >= HASH_BATCH {
            self.send_pending()?;
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// Wraps `r` in the decompressor its magic bytes call for.
pub fn decompress<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(1 << 20, r);
    Ok(match detect(&mut r)? {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    })
}

/// What a conversion saw.
#[derive(Clone, Debug, Default)]
pub struct ConvertReport {
    /// Tar entries read.
    pub entries: u64,
    /// SHA-256 of the uncompressed tar (the OCI diff_id).
    pub diff_id: [u8; 32],
    /// Length of the uncompressed tar.
    pub tar_bytes: u64,
    /// Things normalised or skipped, one line each.
    pub warnings: Vec<String>,
}

/// Normalises an archive path: strips leading `/`, drops `.` and empty components, resolves
/// `..` lexically. Returns `None` when the path escapes the root. `changed` tells whether the
/// result differs from the input in more than a trailing `/` or a leading `./`.
pub fn normalize(path: &[u8]) -> Option<(Vec<u8>, bool)> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut changed = path.starts_with(b"/");
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                changed = true;
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some((out.join(&b'/'), changed))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = int.parse().ok()?;
    let mut nsec = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nsec = format!("{digits:0<9}").parse().ok()?;
    }
    // "-1.5" means -1 s - 0.5 s: normalise to a non-negative nanosecond part.
    if int.starts_with('-') && nsec > 0 {
        return Some(Timestamp { sec: sec - 1, nsec: 1_000_000_000 - nsec });
    }
    Some(Timestamp { sec, nsec })
}

/// PAX sparse formats 0.1 and 1.0 (GNU tar `--sparse --format=posix`): the map, the real size
/// and the real name.
struct PaxSparse {
    major: Option<u32>,
    map: Vec<(u64, u64)>,
    real_size: Option<u64>,
    name: Option<Vec<u8>>,
}

/// Reads a sparse file's data chunks and yields the full content, holes as zeros.
struct SparseReader<R> {
    inner: R,
    map: Vec<(u64, u64)>,
    idx: usize,
    pos: u64,
    size: u64,
}

impl<R: Read> Read for SparseReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        while self.idx < self.map.len() && self.map[self.idx].0 + self.map[self.idx].1 <= self.pos {
            self.idx += 1;
        }
        let (off, len) = self.map.get(self.idx).copied().unwrap_or((self.size, 0));
        if self.pos < off {
            let n = ((off - self.pos) as usize).min(buf.len());
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        let n = ((off + len - self.pos) as usize).min(buf.len());
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sparse file data ends early"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads the decimal sparse map of format 1.0 from the start of the data; consumes the padding.
fn read_sparse_map_v1(r: &mut impl Read) -> io::Result<Vec<(u64, u64)>> {
    let mut consumed = 0u64;
    let mut read_num = |r: &mut dyn Read| -> io::Result<u64> {
        let mut s = Vec::new();
        let mut b = [0u8; 1];
        loop {
            r.read_exact(&mut b)?;
            consumed += 1;
            if b[0] == b'\n' {
                break;
            }
            if !b[0].is_ascii_digit() || s.len() > 20 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad sparse map"));
            }
            s.push(b[0]);
        }
        std::str::from_utf8(&s)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad sparse map number"))
    };
    let n = read_num(r)?;
    if n > 1 << 20 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "sparse map too long"));
    }
    let mut map = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let off = read_num(r)?;
        let len = read_num(r)?;
        map.push((off, len));
    }
    let pad = consumed.next_multiple_of(512) - consumed;
    io::copy(&mut r.take(pad), &mut io::sink())?;
    Ok(map)
}

fn check_map(map: &[(u64, u64)], size: u64) -> bool {
    let mut end = 0u64;
    for &(off, len) in map {
        let Some(e) = off.checked_add(len) else { return false };
        if off < end || e > size {
            return false;
        }
        end = e;
    }
    true
}

/// Converts the tar stream `input` (already decompressed) into `builder`. Returns what it saw;
/// the caller finishes the builder.
pub fn convert_tar(input: impl Read, builder: &mut LayerBuilder<'_>) -> Result<ConvertReport, ImportError> {
    let mut hashing = HashingReader::new(input);
    let mut report = ConvertReport::default();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut last: Option<String> = None;
        let entries = archive.entries().map_err(|e| ImportError::Tar { entries: 0, last: None, source: e })?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| ImportError::Tar { entries: report.entries, last: last.clone(), source: e })?;
            report.entries += 1;
            let raw_path = entry.path_bytes().into_owned();
            last = Some(lossy(&raw_path));
            add_entry(&mut entry, &raw_path, builder, &mut report)?;
        }
    }
    let (diff_id, tar_bytes) = hashing.finish().map_err(|e| ImportError::io("reading the end of the archive", e))?;
    report.diff_id = diff_id;
    report.tar_bytes = tar_bytes;
    Ok(report)
}

fn add_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw_path: &[u8],
    builder: &mut LayerBuilder<'_>,
    report: &mut ConvertReport,
) -> Result<(), ImportError> {
    let header = entry.header().clone();
    let etype = header.entry_type();
    let bad = |reason: String| ImportError::BadEntry { path: lossy(raw_path), reason };
    if etype.is_pax_global_extensions() {
        return Ok(());
    }

    // PAX records: times, xattrs, sparse.
    let mut meta = Meta::default();
    let mut sparse = PaxSparse { major: None, map: Vec::new(), real_size: None, name: None };
    let mut mtime = None;
    if let Some(pax) = entry.pax_extensions().map_err(|e| bad(format!("bad PAX header: {e}")))? {
        for ext in pax {
            let ext = ext.map_err(|e| bad(format!("bad PAX record: {e}")))?;
            let (k, v) = (ext.key_bytes(), ext.value_bytes());
            match k {
                b"mtime" => mtime = parse_time(v),
                b"atime" => meta.atime = parse_time(v),
                b"ctime" => meta.ctime = parse_time(v),
                b"GNU.sparse.major" => sparse.major = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()),
                b"GNU.sparse.name" => sparse.name = Some(v.to_vec()),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    sparse.real_size = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
                }
                b"GNU.sparse.map" => {
                    let nums: Option<Vec<u64>> = std::str::from_utf8(v)
                        .ok()
                        .map(|s| s.split(',').map(|n| n.parse().ok()).collect::<Option<Vec<u64>>>())
                        .unwrap_or(None);
                    let nums = nums.filter(|n| n.len() % 2 == 0).ok_or_else(|| bad("bad GNU.sparse.map".into()))?;
                    sparse.major.get_or_insert(0);
                    sparse.map = nums.chunks(2).map(|c| (c[0], c[1])).collect();
                }
                _ => {
                    if let Some(key) = k.strip_prefix(b"SCHILY.xattr.") {
                        meta.xattrs.push((key.to_vec(), v.to_vec()));
                    }
                }
            }
        }
    }

    let raw_path: Vec<u8> = match &sparse.name {
        Some(n) if sparse.major.is_some() => n.clone(),
        _ => raw_path.to_vec(),
    };
    let bad = |reason: String| ImportError::BadEntry { path: lossy(&raw_path), reason };
    let Some((path, changed)) = normalize(&raw_path) else {
        return Err(bad("path escapes the root (too many ..)".into()));
    };
    if changed {
        report.warnings.push(format!("{}: path normalised to /{}", lossy(&raw_path), lossy(&path)));
    }

    // OCI whiteouts.
    let (parent, base) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], &path[..]),
    };
    if let Some(target) = base.strip_prefix(b".wh.") {
        if target == b".wh..opq" {
            builder.opaque(parent)?;
        } else if target.is_empty() || target.starts_with(b".wh.") {
            return Err(bad("invalid whiteout name".into()));
        } else {
            let mut p = parent.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(target);
            builder.whiteout(&p)?;
        }
        return Ok(());
    }

    // An empty numeric field (all NUL or spaces, as some writers leave them) reads as 0.
    let empty = |f: &[u8]| f.iter().all(|&b| b == 0 || b == b' ');
    let old = header.as_old();
    meta.mode = if empty(&old.mode) { 0 } else { header.mode().map_err(|e| bad(format!("bad mode: {e}")))? } & 0o7777;
    let uid = if empty(&old.uid) { 0 } else { header.uid().map_err(|e| bad(format!("bad uid: {e}")))? };
    let gid = if empty(&old.gid) { 0 } else { header.gid().map_err(|e| bad(format!("bad gid: {e}")))? };
    meta.uid = u32::try_from(uid).map_err(|_| bad("uid over 2^32".into()))?;
    meta.gid = u32::try_from(gid).map_err(|_| bad("gid over 2^32".into()))?;
    meta.mtime = match mtime {
        Some(t) => t,
        None if empty(&old.mtime) => Timestamp::default(),
        None => Timestamp { sec: header.mtime().map_err(|e| bad(format!("bad mtime: {e}")))? as i64, nsec: 0 },
    };
    if let Some(gnu) = header.as_gnu() {
        if meta.atime.is_none() {
            meta.atime = gnu.atime().ok().filter(|&t| t != 0).map(|t| Timestamp { sec: t as i64, nsec: 0 });
        }
        if meta.ctime.is_none() {
            meta.ctime = gnu.ctime().ok().filter(|&t| t != 0).map(|t| Timestamp { sec: t as i64, nsec: 0 });
        }
    }

    use tar::EntryType as E;
    match etype {
        E::Regular | E::Continuous | E::GNUSparse => {
            if path.is_empty() {
                return Err(bad("a regular file cannot be the root".into()));
            }
            if let Some(major) = sparse.major {
                let size = sparse.real_size.ok_or_else(|| bad("PAX sparse file without a real size".into()))?;
                let map = if major >= 1 {
                    read_sparse_map_v1(entry).map_err(|e| bad(format!("bad sparse map: {e}")))?
                } else {
                    std::mem::take(&mut sparse.map)
                };
                if !check_map(&map, size) {
                    return Err(bad("sparse map out of order or beyond the file size".into()));
                }
                let mut r = SparseReader { inner: &mut *entry, map, idx: 0, pos: 0, size };
                builder.file(&path, meta, size, &mut r)?;
            } else {
                let size = match header.as_gnu().filter(|_| etype.is_gnu_sparse()) {
                    Some(g) => g.real_size().map_err(|e| bad(format!("bad sparse size: {e}")))?,
                    None => entry.size(),
                };
                builder.file(&path, meta, size, entry)?;
            }
        }
        E::Directory => builder.dir(&path, meta)?,
        E::Symlink => {
            let target = entry.link_name_bytes().ok_or_else(|| bad("symlink without a target".into()))?;
            builder.symlink(&path, meta, &target)?;
        }
        E::Link => {
            let target = entry.link_name_bytes().ok_or_else(|| bad("hard link without a target".into()))?;
            let Some((target, _)) = normalize(&target) else {
                return Err(bad("hard link target escapes the root".into()));
            };
            builder.hardlink(&path, &target)?;
        }
        E::Char | E::Block => {
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            let kind = if etype == E::Char { Kind::CharDev } else { Kind::BlockDev };
            builder.special(&path, meta, kind, (major, minor))?;
        }
        E::Fifo => builder.special(&path, meta, Kind::Fifo, (0, 0))?,
        other => {
            report.warnings.push(format!(
                "{}: skipped tar entry of type {:?}",
                lossy(&raw_path),
                other.as_byte() as char
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize(b"./a/b/"), Some((b"a/b".to_vec(), false)));
        assert_eq!(normalize(b"/etc/passwd"), Some((b"etc/passwd".to_vec(), true)));
        assert_eq!(normalize(b"a/../b"), Some((b"b".to_vec(), true)));
        assert_eq!(normalize(b"./"), Some((Vec::new(), false)));
        assert_eq!(normalize(b"../x"), None);
        assert_eq!(normalize(b"a/../../x"), None);
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_time(b"1700000000.5"), Some(Timestamp { sec: 1_700_000_000, nsec: 500_000_000 }));
        assert_eq!(parse_time(b"12"), Some(Timestamp { sec: 12, nsec: 0 }));
        assert_eq!(parse_time(b"-1.25"), Some(Timestamp { sec: -2, nsec: 750_000_000 }));
        assert_eq!(parse_time(b"x"), None);
    }
}
