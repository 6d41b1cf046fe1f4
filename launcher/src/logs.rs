//! Container logs in conmon's k8s-file format: `<RFC3339Nano> <stdout|stderr> <F|P> <text>\n`, `P` marking
//! a partial line (output that did not end with a newline yet). Rotation renames (`ctr.log` → `ctr.log.1`
//! → ...), never truncates, so a reader that holds the old file keeps every byte.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::LogConfig;

/// The log file name in the container's state directory.
pub const LOG_FILE: &str = "ctr.log";

/// Which stream a log entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends log entries, rotating by size.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    cfg: LogConfig,
}

impl LogWriter {
    /// Opens (appending) the log at `path`.
    pub fn open(path: &Path, cfg: LogConfig) -> io::Result<LogWriter> {
        let file = File::options().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { path: path.to_path_buf(), file, size, cfg })
    }

    /// Logs a chunk of output: one entry per line, the unterminated rest as a partial entry.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let ts = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let mut rest = data;
        while !rest.is_empty() {
            let (line, partial, next) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], false, &rest[i + 1..]),
                None => (rest, true, &rest[rest.len()..]),
            };
            self.entry(&ts, stream, partial, line)?;
            rest = next;
        }
        Ok(())
    }

    fn entry(&mut self, ts: &str, stream: Stream, partial: bool, line: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(ts.len() + line.len() + 12);
        buf.extend_from_slice(ts.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(stream.as_str().as_bytes());
        buf.extend_from_slice(if partial { b" P " } else { b" F " });
        buf.extend_from_slice(line);
        buf.push(b'\n');
        if let Some(max) = self.cfg.max_size
            && self.size > 0
            && self.size + buf.len() as u64 > max
        {
            self.rotate()?;
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let n = self.cfg.max_files;
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if n == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..n).rev() {
                match std::fs::rename(name(i), name(i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, name(1))?;
        }
        self.file = File::options().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// One parsed log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time: Option<SystemTime>,
    pub stream: Stream,
    pub partial: bool,
    pub data: Vec<u8>,
}

/// Parses one line of the log (without its newline).
pub fn parse_line(line: &[u8]) -> Option<Entry> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let ts = it.next()?;
    let stream = match it.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match it.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let data = it.next().unwrap_or(b"").to_vec();
    let time = std::str::from_utf8(ts).ok().and_then(|s| humantime::parse_rfc3339(s).ok());
    Some(Entry { time, stream, partial, data })
}

/// A logical line: consecutive partial entries of one stream joined with the entry that completes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub time: Option<SystemTime>,
    pub stream: Stream,
    /// The text, with its newline unless the output ended without one.
    pub data: Vec<u8>,
}

/// Joins entries into logical lines.
#[derive(Default)]
pub struct Assembler {
    pending: Vec<(Option<SystemTime>, Stream, Vec<u8>)>,
}

impl Assembler {
    /// Feeds an entry; returns a line when it completes one.
    pub fn push(&mut self, e: Entry) -> Option<Line> {
        let idx = self.pending.iter().position(|(_, s, _)| *s == e.stream);
        if e.partial {
            match idx {
                Some(i) => self.pending[i].2.extend_from_slice(&e.data),
                None => self.pending.push((e.time, e.stream, e.data)),
            }
            return None;
        }
        let (time, mut data) = match idx {
            Some(i) => {
                let (t, _, d) = self.pending.remove(i);
                (t, d)
            }
            None => (e.time, Vec::new()),
        };
        data.extend_from_slice(&e.data);
        data.push(b'\n');
        Some(Line { time, stream: e.stream, data })
    }

    /// Lines still partial at the end of the log (output that never got its newline).
    pub fn finish(&mut self) -> Vec<Line> {
        self.pending.drain(..).map(|(time, stream, data)| Line { time, stream, data }).collect()
    }
}

/// The log files of a container, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join(LOG_FILE);
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let n = name.strip_prefix(LOG_FILE)?.strip_prefix('.')?.parse().ok()?;
                Some((n, dir.join(name)))
            })
            .collect()
        })
        .unwrap_or_default();
    rotated.sort_by_key(|b| std::cmp::Reverse(b.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(base);
    out
}

/// Parses `--since`: RFC 3339, a duration back from now (`10m`, `1h30m`), or Unix seconds.
pub fn parse_since(s: &str) -> Option<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Some(t);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return SystemTime::now().checked_sub(d);
    }
    let secs: f64 = s.parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

/// Options of `logs`.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub tail: Option<usize>,
    pub since: Option<SystemTime>,
}

/// Reads all complete log content, applies `--since` and `--tail`.
pub fn read_lines(dir: &Path, opts: &ReadOptions) -> io::Result<(Vec<Line>, Cursor)> {
    let mut asm = Assembler::default();
    let mut lines = Vec::new();
    let all = files(dir);
    let mut cursor = Cursor::default();
    for (i, f) in all.iter().enumerate() {
        let file = match File::open(f) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let is_live = i + 1 == all.len();
        let mut r = BufReader::new(file);
        let mut buf = Vec::new();
        let mut offset = 0u64;
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                break;
            }
            offset += n as u64;
            if let Some(e) = parse_line(&buf[..buf.len() - 1])
                && let Some(l) = asm.push(e)
            {
                lines.push(l);
            }
        }
        if is_live {
            let ino = r.get_ref().metadata()?.ino();
            cursor = Cursor { file: Some(r.into_inner()), ino, offset };
        }
    }
    // Output that has no newline yet counts as a line of its own; its continuation, if any, comes
    // through the cursor as further data for the same line.
    lines.extend(asm.finish());
    if let Some(since) = opts.since {
        lines.retain(|l| l.time.is_none_or(|t| t >= since));
    }
    if let Some(n) = opts.tail
        && lines.len() > n
    {
        lines.drain(..lines.len() - n);
    }
    Ok((lines, cursor))
}

/// Where a follower stands in the live log.
#[derive(Default)]
pub struct Cursor {
    file: Option<File>,
    ino: u64,
    offset: u64,
}

impl Cursor {
    /// Reads what was appended since the last call, following a rotation (the old file is read to its end
    /// first, then the new one from its start). Entries come out as they are: a partial entry is text
    /// without a newline, so a terminal shows the line growing.
    pub fn poll(&mut self, dir: &Path) -> io::Result<Vec<Line>> {
        let mut out = Vec::new();
        let path = dir.join(LOG_FILE);
        loop {
            if self.file.is_none() {
                match File::open(&path) {
                    Ok(f) => {
                        self.ino = f.metadata()?.ino();
                        self.offset = 0;
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(e),
                }
            }
            let f = self.file.as_mut().expect("file opened above");
            f.seek(SeekFrom::Start(self.offset))?;
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            self.offset += complete as u64;
            for l in data[..complete].split(|b| *b == b'\n') {
                if let Some(mut e) = parse_line(l) {
                    if !e.partial {
                        e.data.push(b'\n');
                    }
                    out.push(Line { time: e.time, stream: e.stream, data: e.data });
                }
            }
            // Rotated away? Then continue with the new file.
            let rotated = match std::fs::metadata(&path) {
                Ok(m) => m.ino() != self.ino,
                Err(_) => false,
            };
            if rotated {
                self.file = None;
                continue;
            }
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line]) -> String {
        lines.iter().map(|l| String::from_utf8_lossy(&l.data).into_owned()).collect()
    }

    #[test]
    fn format_and_parse() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(LOG_FILE);
        let mut w = LogWriter::open(&p, LogConfig::default()).unwrap();
        w.write(Stream::Stdout, b"hello\nwor").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"ld\n").unwrap();
        let raw = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = raw.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].ends_with(" stdout F hello"), "{}", lines[0]);
        assert!(lines[1].ends_with(" stdout P wor"));
        assert!(lines[2].ends_with(" stderr F oops"));
        // RFC 3339 with nanoseconds.
        let ts = lines[0].split(' ').next().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('.') && ts.len() == 30, "{ts}");
        let (got, _) = read_lines(tmp.path(), &ReadOptions::default()).unwrap();
        assert_eq!(text(&got), "hello\noops\nworld\n");
        assert_eq!(got[1].stream, Stream::Stderr);
        let (tail, _) = read_lines(tmp.path(), &ReadOptions { tail: Some(1), since: None }).unwrap();
        assert_eq!(text(&tail), "world\n");
        let future = SystemTime::now() + Duration::from_secs(60);
        let (none, _) = read_lines(tmp.path(), &ReadOptions { tail: None, since: Some(future) }).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn rotation_renames_and_follow_survives_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(LOG_FILE);
        let cfg = LogConfig { max_size: Some(200), max_files: 2 };
        let mut w = LogWriter::open(&p, cfg).unwrap();
        w.write(Stream::Stdout, b"first\n").unwrap();
        let (_, mut cur) = read_lines(tmp.path(), &ReadOptions::default()).unwrap();
        let mut followed = String::new();
        for i in 0..30 {
            w.write(Stream::Stdout, format!("line {i:02}\n").as_bytes()).unwrap();
            followed += &text(&cur.poll(tmp.path()).unwrap());
        }
        let expect: String = (0..30).map(|i| format!("line {i:02}\n")).collect();
        assert_eq!(followed, expect);
        // Never more than max_files rotated files, each within the size limit.
        let fs = files(tmp.path());
        assert_eq!(fs.len(), 3, "{fs:?}");
        for f in &fs {
            assert!(std::fs::metadata(f).unwrap().len() <= 200);
        }
        // Reading all files gives the newest lines in order.
        let (all, _) = read_lines(tmp.path(), &ReadOptions::default()).unwrap();
        assert!(text(&all).ends_with("line 28\nline 29\n"));
    }

    #[test]
    fn since_forms() {
        assert!(parse_since("2020-01-01T00:00:00Z").is_some());
        assert!(parse_since("10m").unwrap() < SystemTime::now());
        assert!(parse_since("1700000000").is_some());
        assert!(parse_since("bogus").is_none());
    }
}
