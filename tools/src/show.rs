//! Human-readable listings of layers.

use format_spec::{DirEntry, Inode, Kind, Layer, Timestamp};

/// `ls -l`-style mode string (`drwxr-xr-x`).
pub fn mode_string(kind: Kind, mode: u32) -> String {
    let t = match kind {
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::CharDev | Kind::Whiteout => 'c',
        Kind::BlockDev => 'b',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
        Kind::File => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char, unset: char| match (mode & x != 0, mode & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(exec(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(exec(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(exec(0o001, 0o1000, 't', 'T'));
    s
}

/// UTC `YYYY-MM-DD HH:MM:SS` of a timestamp.
pub fn format_time(t: Timestamp) -> String {
    let days = t.sec.div_euclid(86400);
    let secs = t.sec.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// One `ls -l` line for an entry of a layer.
pub fn ls_line<B: AsRef<[u8]>>(layer: &Layer<B>, ent: &DirEntry<'_>) -> String {
    let name = String::from_utf8_lossy(ent.name);
    if ent.kind == Kind::Whiteout {
        return format!("{} {:>3} {:>5} {:>5} {:>12} {:19} {} (whiteout)", "c---------", 0, 0, 0, "0, 0", "", name);
    }
    let inode: Inode = match layer.inode(ent.ino) {
        Ok(i) => i,
        Err(e) => return format!("?????????? {name}: {e}"),
    };
    let size = match inode.rdev() {
        Some((ma, mi)) => format!("{ma}, {mi}"),
        None => inode.size.to_string(),
    };
    let mut line = format!(
        "{} {:>3} {:>5} {:>5} {:>12} {} {}",
        mode_string(inode.kind(), inode.mode),
        inode.nlink,
        inode.uid,
        inode.gid,
        size,
        format_time(inode.mtime),
        name
    );
    if inode.kind() == Kind::Symlink
        && let Ok(t) = layer.readlink(&inode)
    {
        line.push_str(" -> ");
        line.push_str(&String::from_utf8_lossy(t));
    }
    if inode.is_opaque() {
        line.push_str(" (opaque)");
    }
    if inode.is_external() {
        line.push_str(" (object)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_times() {
        assert_eq!(mode_string(Kind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(Kind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(format_time(Timestamp { sec: 0, nsec: 0 }), "1970-01-01 00:00:00");
        assert_eq!(format_time(Timestamp { sec: 1_700_000_000, nsec: 0 }), "2023-11-14 22:13:20");
    }
}
