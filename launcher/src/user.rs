//! `-u USER[:GROUP]` resolved against the container's own /etc/passwd and /etc/group.

use crate::error::SetupError;

/// The most of /etc/passwd or /etc/group that is read (a bigger file is cut there).
pub const MAX_DB_SIZE: u64 = 4 << 20;

/// Reads the container's `/etc/passwd` or `/etc/group` the safe way (the image may be hostile): only a regular
/// file (a FIFO would block the init, `/dev/zero` would never end; opened non-blocking), at most
/// [`MAX_DB_SIZE`] bytes. Anything else reads as empty: numeric ids still work, names are not found.
pub fn read_db(path: &std::path::Path) -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path) else {
        return String::new();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(MAX_DB_SIZE).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// `/etc/passwd` and `/etc/group` of a container about to start on a layerfs root, read from its packed layers
/// (topmost first; `store`: the store holding their objects) by the monitor while the init builds its root, so
/// that the init resolves its user with no FUSE round trip (ten of them otherwise: lookup, open, two reads and
/// release of each file). A fresh container's root shows exactly that: its upper is empty, and the launcher's
/// init layer above holds only mount points. `None` when the init must look itself: a `-v`/`--tmpfs` mount
/// covers the files, a layer is not a packed file, `/etc` or a file is not what [`read_db`] reads (a symlink to
/// follow, a FIFO...), or a layer cannot be read.
pub fn read_image_dbs(
    layers: &[std::path::PathBuf],
    store: Option<&std::path::Path>,
    mounts: &[crate::mounts::UserMount],
) -> Option<(String, String)> {
    use std::io::Read;
    use std::path::Path;
    use tools::merged::MergedView;
    let covered = ["/", "/etc", "/etc/passwd", "/etc/group"];
    if mounts.iter().any(|m| covered.iter().any(|c| m.destination() == Path::new(c))) {
        return None;
    }
    let opened: Vec<tools::MappedLayer> =
        layers.iter().map(|p| if p.is_file() { tools::open_layer(p).ok() } else { None }).collect::<Option<_>>()?;
    let view = MergedView::new(opened.iter().collect());
    let Some(etc) = view.lookup(b"etc").ok()? else { return Some((String::new(), String::new())) };
    let etc = etc.dir?;
    let store = store.and_then(|s| tools::store::Store::open_existing(s).ok());
    let read = |name: &[u8]| -> Option<String> {
        let Some(e) = view.lookup_in(&etc, name).ok()? else { return Some(String::new()) };
        if e.kind != format_spec::Kind::File {
            return None;
        }
        let layer = view.layers()[e.source.layer];
        let inode = layer.inode(e.source.ino).ok()?;
        let mut buf = Vec::new();
        let reader = tools::export::file_reader(layer, &inode, store.as_ref()).ok()?;
        reader.take(MAX_DB_SIZE).read_to_end(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    Some((read(b"passwd")?, read(b"group")?))
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group; the primary group is not repeated).
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5] })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (`None`: root) like docker/runc: numeric ids need no passwd entry (then gid 0, home /),
/// names must exist; supplementary groups are the groups listing the user.
pub fn resolve(spec: Option<&str>, passwd: &str, group: &str) -> Result<User, SetupError> {
    let spec = spec.unwrap_or("0");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => {
            Some(passwd_entries(passwd).find(|e| e.name == u).ok_or_else(|| SetupError::UnknownUser(u.to_string()))?)
        }
    };
    let (uid, mut gid, home, name) = match (&entry, u.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_string(), Some(e.name)),
        (None, Ok(uid)) => (uid, 0, "/".to_string(), None),
        (None, Err(_)) => return Err(SetupError::UnknownUser(u.to_string())),
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, id, _)| id)
                .ok_or_else(|| SetupError::UnknownGroup(g.to_string()))?,
        };
    }
    let mut groups = Vec::new();
    if let Some(name) = name {
        for (_, id, members) in group_entries(group) {
            if members.contains(&name) && id != gid && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(User { uid, gid, groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nbad line\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\nvideo:x:44:www\n";

    /// A packed layer at `dir/name` built by `f`.
    fn layer(
        dir: &std::path::Path,
        name: &str,
        f: impl FnOnce(&mut format_spec::LayerBuilder<'_>),
    ) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut b = format_spec::LayerBuilder::new(std::fs::File::create(&path).unwrap());
        f(&mut b);
        b.finish(None).unwrap();
        path
    }

    fn file(b: &mut format_spec::LayerBuilder<'_>, path: &str, data: &str) {
        let meta = format_spec::Meta { mode: 0o644, ..Default::default() };
        b.file(path.as_bytes(), meta, data.len() as u64, &mut std::io::Cursor::new(data.as_bytes())).unwrap();
    }

    #[test]
    fn image_dbs_are_what_a_fresh_root_shows() {
        use crate::mounts::UserMount;
        let d = tempfile::tempdir().unwrap();
        let base = layer(d.path(), "base", |b| {
            file(b, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
            file(b, "etc/group", "root:x:0:\n");
        });
        let top = layer(d.path(), "top", |b| {
            file(b, "etc/passwd", PASSWD);
            b.whiteout(b"etc/group").unwrap();
        });
        // Topmost first; the whiteout hides the group file.
        let (p, g) = read_image_dbs(&[top.clone(), base.clone()], None, &[]).unwrap();
        assert_eq!((p.as_str(), g.as_str()), (PASSWD, ""));
        assert_eq!(read_image_dbs(std::slice::from_ref(&base), None, &[]).unwrap().1, "root:x:0:\n");
        // Volumes over the files, a directory layer, /etc a symlink or a file a FIFO: the init looks itself.
        let tmpfs = |dst: &str| UserMount::Tmpfs { destination: dst.into(), options: vec![] };
        for dst in ["/etc", "/etc/passwd", "/etc/group", "/"] {
            assert_eq!(read_image_dbs(std::slice::from_ref(&base), None, &[tmpfs(dst)]), None, "{dst}");
        }
        assert!(read_image_dbs(std::slice::from_ref(&base), None, &[tmpfs("/etc/x")]).is_some());
        assert_eq!(read_image_dbs(&[d.path().to_path_buf()], None, &[]), None);
        let link = layer(d.path(), "link", |b| {
            b.symlink(b"etc", format_spec::Meta { mode: 0o777, ..Default::default() }, b"private/etc").unwrap();
        });
        assert_eq!(read_image_dbs(&[link, base.clone()], None, &[]), None);
        let fifo = layer(d.path(), "fifo", |b| {
            b.special(
                b"etc/passwd",
                format_spec::Meta { mode: 0o644, ..Default::default() },
                format_spec::Kind::Fifo,
                (0, 0),
            )
            .unwrap();
        });
        assert_eq!(read_image_dbs(&[fifo, base], None, &[]), None);
        // No /etc at all: nothing to find, as in the container.
        let empty = layer(d.path(), "empty", |b| file(b, "bin/x", "x"));
        assert_eq!(read_image_dbs(&[empty], None, &[]), Some((String::new(), String::new())));
    }

    #[test]
    fn resolution() {
        let root = resolve(None, PASSWD, GROUP).unwrap();
        assert_eq!(root, User { uid: 0, gid: 0, groups: vec![], home: "/root".into() });
        let www = resolve(Some("www"), PASSWD, GROUP).unwrap();
        assert_eq!(www, User { uid: 33, gid: 33, groups: vec![50, 44], home: "/var/www".into() });
        let n = resolve(Some("1000:1001"), PASSWD, GROUP).unwrap();
        assert_eq!(n, User { uid: 1000, gid: 1001, groups: vec![], home: "/".into() });
        assert_eq!(resolve(Some("33:staff"), PASSWD, GROUP).unwrap().gid, 50);
        assert_eq!(resolve(Some("nobody"), PASSWD, GROUP), Err(SetupError::UnknownUser("nobody".into())));
        assert_eq!(resolve(Some("0:nogroup"), PASSWD, GROUP), Err(SetupError::UnknownGroup("nogroup".into())));
    }

    #[test]
    fn hostile_databases_read_as_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(read_db(&fifo), "");
        assert_eq!(read_db(std::path::Path::new("/dev/zero")), "");
        assert_eq!(read_db(tmp.path()), "");
        assert_eq!(read_db(&tmp.path().join("missing")), "");
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![b'x'; (MAX_DB_SIZE + 10) as usize]).unwrap();
        assert_eq!(read_db(&big).len() as u64, MAX_DB_SIZE);
        let ok = tmp.path().join("passwd");
        std::fs::write(&ok, PASSWD).unwrap();
        assert_eq!(read_db(&ok), PASSWD);
    }
}
