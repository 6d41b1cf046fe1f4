//! Helpers of the commit/diff tests: a synthetic base image, real layerfs and kernel overlayfs
//! mounts, and an entry-by-entry snapshot of a mounted tree.
//!
//! These tests need root, /dev/fuse and overlayfs (CI has all three). They FAIL with the reason
//! when they cannot run, unless a developer sets `LAYERFS_SKIP_MOUNT_TESTS=1`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use tools::import::{ImportOptions, import};
use tools::store::Store;

/// Returns false (skip) only when the developer asked for it; panics with the reason when the
/// machine cannot run mount tests.
pub fn can_mount() -> bool {
    if std::env::var_os("LAYERFS_SKIP_MOUNT_TESTS").is_some() {
        eprintln!("LAYERFS_SKIP_MOUNT_TESTS is set: skipping a mount test");
        return false;
    }
    assert!(
        layerfs::sys::geteuid() == 0,
        "commit tests mount filesystems and need root (CI runs as root); set LAYERFS_SKIP_MOUNT_TESTS=1 to skip"
    );
    assert!(Path::new("/dev/fuse").exists(), "commit tests need /dev/fuse; set LAYERFS_SKIP_MOUNT_TESTS=1 to skip");
    true
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// The layerfs binary (`target/release/layerfs`), built once if missing.
pub fn layerfs_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = target_dir().join("release/layerfs");
        if !bin.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "--release", "-p", "layerfs"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running cargo build");
            assert!(st.success(), "cargo build --release -p layerfs failed");
        }
        assert!(bin.exists(), "{} missing (cargo build --release -p layerfs)", bin.display());
        bin
    })
}

/// The layertool binary of this build.
pub const LAYERTOOL: &str = env!("CARGO_BIN_EXE_layertool");

pub fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "sh -c {script:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory (under `$LAYERFS_TEST_TMP` or the system temp dir).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::var_os("LAYERFS_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from))
        .unwrap()
}

fn is_mounted(p: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = p.to_string_lossy().into_owned();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A live mount (layerfs or kernel overlayfs); unmounted on drop.
pub struct Mount {
    pub path: PathBuf,
    fuse: bool,
}

impl Mount {
    /// `layerfs mount [--upper U --work W] -o store=ROOT IMAGE MNT`.
    pub fn layerfs(store: &Path, image: &str, upper: Option<(&Path, &Path)>, mnt: &Path) -> Mount {
        fs::create_dir_all(mnt).unwrap();
        let mut cmd = Command::new(layerfs_bin());
        cmd.arg("mount");
        if let Some((u, w)) = upper {
            cmd.arg("--upper").arg(u).arg("--work").arg(w);
        }
        cmd.arg("-o").arg(format!("store={}", store.display())).arg(image).arg(mnt);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "layerfs mount failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(is_mounted(mnt), "layerfs returned without a live mount");
        Mount { path: mnt.to_path_buf(), fuse: true }
    }

    /// `mount -t overlay` with `redirect_dir=on,metacopy=on`.
    pub fn overlay(lower: &Path, upper: &Path, work: &Path, mnt: &Path) -> Mount {
        fs::create_dir_all(mnt).unwrap();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on,metacopy=on",
            lower.display(),
            upper.display(),
            work.display()
        );
        let out = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(mnt).output().unwrap();
        assert!(
            out.status.success(),
            "mount -t overlay failed (overlayfs with redirect_dir and metacopy is needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount { path: mnt.to_path_buf(), fuse: false }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = if self.fuse {
            Command::new(layerfs_bin()).arg("umount").arg(&self.path).status().is_ok_and(|s| s.success())
        } else {
            Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success())
        };
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while is_mounted(&self.path) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !std::thread::panicking() {
            assert!(!is_mounted(&self.path), "{} still mounted", self.path.display());
        }
    }
}

/// A tar builder for the synthetic base image.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

pub fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

impl Default for Tar {
    fn default() -> Self {
        Tar { b: tar::Builder::new(Vec::new()) }
    }
}

impl Tar {
    pub fn pax(&mut self, recs: &[(&str, &[u8])]) -> &mut Self {
        self.b.append_pax_extensions(recs.iter().map(|(k, v)| (*k, *v))).unwrap();
        self
    }
    pub fn file_as(&mut self, path: &str, mode: u32, uid: u64, data: &[u8]) -> &mut Self {
        let mut h = header(tar::EntryType::Regular, mode, uid, data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }
    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_as(path, 0o644, 0, data)
    }
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = header(tar::EntryType::Directory, mode, 0, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn device(&mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = header(kind, 0o660, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    pub fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// `n` pseudo-random bytes (xorshift; the same `seed` gives the same bytes).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A POSIX access ACL in the kernel's xattr form: user::rwx, user:UID:rw-, group::r-x,
/// mask::rwx, other::r-x (consistent with mode 0775).
pub fn acl(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in
        [(1u16, 7u16, u32::MAX), (2, 6, uid), (4, 5, u32::MAX), (0x10, 7, u32::MAX), (0x20, 5, u32::MAX)]
    {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `security.capability` (v2) granting CAP_NET_RAW (13) permitted and effective.
pub fn cap_net_raw() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// The base image's first layer: every entry type, metadata and the structures the changes
/// below touch (a hard-link group, a directory to rename holding half of another group, a
/// symlink to replace, a big file to chmod, ...).
pub fn base_tar() -> Vec<u8> {
    let mut t = Tar::default();
    t.dir("etc/", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .file("etc/motd", b"welcome\n")
        .file("etc/os-release", b"ID=test\n")
        .dir("etc/alternatives/", 0o755)
        .symlink("etc/alternatives/editor", "/usr/bin/vi")
        .dir("usr/", 0o755)
        .dir("usr/bin/", 0o755)
        .pax(&[
            ("SCHILY.xattr.security.capability", &cap_net_raw()),
            ("SCHILY.xattr.user.origin", b"base"),
            ("mtime", b"1600000000.123456789"),
        ])
        .file_as("usr/bin/ping", 0o4755, 0, &noise(1, 20_000))
        .file_as("usr/bin/tool", 0o755, 0, &noise(2, 10_000))
        .hardlink("usr/bin/tool-alias", "usr/bin/tool")
        .dir("usr/sbin/", 0o755)
        .hardlink("usr/sbin/tool2", "usr/bin/tool")
        .hardlink("usr/sbin/tool3", "usr/bin/tool")
        .file("usr/sbin/small", b"small\n")
        .hardlink("usr/sbin/small-link", "usr/sbin/small")
        .dir("usr/lib/", 0o755)
        .file("usr/lib/big.bin", &noise(3, 8 << 20))
        .file("usr/lib/libc.so", &noise(4, 300_000))
        .dir("usr/share/", 0o755)
        .dir("usr/share/doc/", 0o755);
    for i in 0..20 {
        t.file(&format!("usr/share/doc/pkg{i}/README"), format!("package {i}\n").as_bytes())
            .file(&format!("usr/share/doc/pkg{i}/changelog"), &noise(100 + i, 5000));
    }
    t.dir("opt/", 0o755)
        .dir("opt/old/", 0o750)
        .file("opt/old/a", b"a")
        .file("opt/old/b", b"b")
        .file("opt/old/deep/x", b"x")
        .dir("srv/", 0o755)
        .dir("srv/moveme/", 0o700)
        .file("srv/moveme/file1", b"file1\n")
        .file("srv/moveme/sub/a", b"sub a\n")
        .file("srv/moveme/sub/b", &noise(5, 70_000))
        .file("srv/moveme/hl1", b"linked across the rename\n")
        .hardlink("srv/moveme/sub/hl2", "srv/moveme/hl1")
        .hardlink("srv/hl-outside", "srv/moveme/hl1")
        .symlink("srv/link", "moveme")
        .pax(&[("SCHILY.xattr.system.posix_acl_access", &acl(1000)), ("SCHILY.xattr.user.dir", b"d")])
        .dir("srv/acl/", 0o775)
        .file("srv/acl/inside", b"acl\n")
        .dir("var/", 0o755)
        .dir("var/lib/", 0o755)
        .file("var/lib/data.db", &noise(6, 100_000))
        .dir("home/", 0o755)
        .dir("tmp/", 0o1777)
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("dev/sda", tar::EntryType::Block, 8, 0)
        .device("run/initctl", tar::EntryType::Fifo, 0, 0);
    let mut sparse = vec![0u8; 16 << 20];
    sparse[..4096].copy_from_slice(&noise(7, 4096));
    sparse[8 << 20..(8 << 20) + 5].copy_from_slice(b"hello");
    t.file("var/sparse", &sparse);
    t.file_as("home/user/.bashrc", 0o644, 1000, b"export PS1='$ '\n");
    t.bytes()
}

/// A store with the base image `base:1` imported from [`base_tar`].
pub fn store_with_base(dir: &Path) -> Store {
    let store = Store::open(dir.join("store")).unwrap();
    let tar = dir.join("base.tar");
    fs::write(&tar, base_tar()).unwrap();
    import(&store, &tar, "base:1", &ImportOptions { sync: false, ..ImportOptions::default() }, &ProgressBar::hidden())
        .unwrap();
    store
}

/// What the comparison looks at, for one entry of a mounted tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    /// Regular files, symlinks: the size; directories: none (arbitrary).
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub sha256: Option<String>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<(u64, u64)>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For a hard-linked file: every path of the tree sharing its inode.
    pub links: Vec<String>,
}

fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let at = layerfs::sys::XattrPath::path(p);
    let list = layerfs::sys::listxattr(&at).unwrap_or_default();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = list
        .split(|&c| c == 0)
        .filter(|k| !k.is_empty())
        .map(|k| {
            let v = layerfs::sys::getxattr(&at, &CString::new(k).unwrap())
                .unwrap_or_else(|e| panic!("getxattr {} {}: {e}", p.display(), String::from_utf8_lossy(k)));
            (k.to_vec(), v)
        })
        .collect();
    out.sort();
    out
}

fn sha_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Every entry under `root` (the root itself as ""), by path. Each directory is stat'ed before
/// its entries are looked up.
pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inos: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let e = Entry {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            size: (!ft.is_dir()).then_some(m.size()),
            nlink: (!ft.is_dir()).then_some(m.nlink()),
            sha256: ft.is_file().then(|| sha_file(&p)),
            target: ft.is_symlink().then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
            rdev: (ft.is_char_device() || ft.is_block_device())
                .then(|| (nix::sys::stat::major(m.rdev()), nix::sys::stat::minor(m.rdev()))),
            xattrs: xattrs_of(&p),
            links: Vec::new(),
        };
        if !ft.is_dir() && m.nlink() > 1 {
            inos.entry(m.ino()).or_default().push(rel.clone());
        }
        out.insert(rel.clone(), e);
        if ft.is_dir() {
            let mut names: Vec<String> =
                fs::read_dir(&p).unwrap().map(|d| d.unwrap().file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(if rel.is_empty() { n } else { format!("{rel}/{n}") });
            }
        }
    }
    for group in inos.into_values() {
        let mut g = group.clone();
        g.sort();
        for p in &group {
            out.get_mut(p).unwrap().links = g.clone();
        }
    }
    out
}

/// Asserts two snapshots are equal, listing every difference (`skip`: paths left out).
pub fn assert_same_tree(what: &str, want: &BTreeMap<String, Entry>, got: &BTreeMap<String, Entry>, skip: &[&str]) {
    let mut diffs = Vec::new();
    for (p, w) in want {
        if skip.contains(&p.as_str()) {
            continue;
        }
        match got.get(p) {
            None => diffs.push(format!("missing: {p:?}")),
            Some(g) if g != w => diffs.push(format!("{p:?}:\n    want {w:?}\n    got  {g:?}")),
            _ => {}
        }
    }
    for p in got.keys() {
        if !want.contains_key(p) && !skip.contains(&p.as_str()) {
            diffs.push(format!("extra: {p:?}"));
        }
    }
    assert!(diffs.is_empty(), "{what}: {} differences:\n{}", diffs.len(), diffs.join("\n"));
}

/// Sets an xattr on a path (no symlink following).
pub fn setxattr(p: &Path, k: &str, v: &[u8]) {
    layerfs::sys::setxattr(&layerfs::sys::XattrPath::path(p), &CString::new(k).unwrap(), v, 0)
        .unwrap_or_else(|e| panic!("setxattr {} {k}: {e}", p.display()));
}

/// Makes `base:2`: `base:1` plus a layer committed from a hand-made bare upper (a whiteout, an
/// opaque directory, new files, internal xattrs that must not survive).
pub fn store_with_two_layers(dir: &Path) -> Store {
    let store = store_with_base(dir);
    let up = dir.join("layer2-upper");
    sh(&format!(
        "mkdir -p {u} && cd {u} && mkdir -p usr/share/doc home/user2 etc usr/bin && mknod usr/share/doc/pkg19 c 0 0 \
         && touch usr/share/doc/.wh.pkg18 home/.wh..wh..opq && echo two > home/user2/file \
         && echo conf > etc/layer2.conf && printf 'tool v2' > usr/bin/new-tool && chmod 755 usr/bin/new-tool \
         && touch -d '2022-02-02 02:02:02.222222222' etc/layer2.conf",
        u = up.display()
    ));
    setxattr(&up.join("etc"), "trusted.overlay.impure", b"y");
    setxattr(&up.join("etc/layer2.conf"), "trusted.layerfs.origin", b"0:1");
    setxattr(&up.join("etc/layer2.conf"), "user.layer", b"2");
    // The upper's directories carry the base's metadata (as a copy-up would).
    sh(&format!(
        "cd {u} && touch -d @1600000000 usr/share/doc usr/share usr etc usr/bin home && chmod 755 . && touch -d @1600000000 .",
        u = up.display()
    ));
    let img = store.image("base:1").unwrap();
    let req = tools::commit::ImageCommit { base: Some(&img), name: "base:2", changes: &[], message: None };
    tools::commit::commit_image(&store, &up, &req, &tools::commit::CommitOptions::default(), &ProgressBar::hidden())
        .unwrap();
    store
}

/// The changes of an `apt-get install`-like run, applied through a mount (layerfs or kernel
/// overlayfs): many files added, some deleted, some modified, a directory replaced, directories
/// renamed, metadata-only changes (chmod of a big file), a hard-link group partly modified,
/// xattrs, a symlink replaced by a directory, special files, a sparse file.
pub fn apply_changes(m: &Path, kernel: bool) {
    let w = |rel: &str, data: &[u8]| {
        let p = m.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    };
    // Many files added, some big (objects), one a copy of a base file (deduplicated).
    for i in 0..1500 {
        w(&format!("usr/lib/newpkg/sub{}/file{i}.txt", i % 15), format!("new file {i}\n").as_bytes());
    }
    for i in 0..20 {
        w(&format!("usr/lib/newpkg/data{i}.bin"), &noise(1000 + i, 64 << 10));
    }
    fs::copy(m.join("usr/lib/libc.so"), m.join("usr/lib/newpkg/libc-copy.so")).unwrap();
    // Deleted: a directory tree, files.
    fs::remove_dir_all(m.join("usr/share/doc/pkg3")).unwrap();
    fs::remove_file(m.join("etc/hosts")).unwrap();
    fs::remove_file(m.join("usr/share/doc/pkg4/changelog")).unwrap();
    // Modified: appended, overwritten in the middle, truncated.
    let mut f = fs::OpenOptions::new().append(true).open(m.join("etc/passwd")).unwrap();
    std::io::Write::write_all(&mut f, b"user:x:1000:1000::/home/user:/bin/sh\n").unwrap();
    drop(f);
    let f = fs::OpenOptions::new().write(true).open(m.join("var/lib/data.db")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"PATCHED", 50_000).unwrap();
    drop(f);
    fs::OpenOptions::new().write(true).truncate(true).open(m.join("usr/share/doc/pkg5/README")).unwrap();
    // A directory replaced (opaque).
    fs::remove_dir_all(m.join("opt/old")).unwrap();
    w("opt/old/new", b"replacement\n");
    // Directories renamed (redirects), then changed inside.
    fs::rename(m.join("srv/moveme"), m.join("srv/moved")).unwrap();
    w("srv/moved/new.txt", b"added after the rename\n");
    fs::remove_file(m.join("srv/moved/sub/a")).unwrap();
    fs::rename(m.join("usr/share/doc/pkg2"), m.join("usr/share/doc/pkg2-renamed")).unwrap();
    if kernel {
        // Into a new directory (an absolute redirect under a directory with no lower). layerfs
        // loses the lower content of such a directory (a layerfs bug), so only on overlayfs.
        fs::create_dir(m.join("newdir")).unwrap();
        fs::rename(m.join("usr/share/doc/pkg1"), m.join("newdir/pkg1")).unwrap();
    }
    // Metadata-only changes.
    sh(&format!(
        "cd {m} && chmod 0600 usr/lib/big.bin && chown 1000:1000 usr/lib/libc.so \
         && touch -d '2021-02-03 04:05:06.789' usr/share/doc/pkg7/changelog && chmod 0700 etc/alternatives",
        m = m.display()
    ));
    setxattr(&m.join("usr/share/doc/pkg6/changelog"), "user.note", b"metadata only");
    // A hard-link group partly modified; a name removed; new links.
    let mut f = fs::OpenOptions::new().append(true).open(m.join("usr/bin/tool")).unwrap();
    std::io::Write::write_all(&mut f, b"patched").unwrap();
    drop(f);
    fs::remove_file(m.join("usr/sbin/tool3")).unwrap();
    fs::hard_link(m.join("usr/lib/newpkg/sub0/file0.txt"), m.join("usr/lib/newpkg/file0-link")).unwrap();
    fs::hard_link(m.join("etc/os-release"), m.join("etc/os-release-link")).unwrap();
    // Xattrs: a file capability, an ACL, a user xattr on a directory.
    setxattr(&m.join("usr/lib/newpkg/data0.bin"), "security.capability", &cap_net_raw());
    fs::create_dir(m.join("usr/lib/newpkg/acl")).unwrap();
    sh(&format!("chmod 0775 {}", m.join("usr/lib/newpkg/acl").display()));
    setxattr(&m.join("usr/lib/newpkg/acl"), "system.posix_acl_access", &acl(1000));
    setxattr(&m.join("usr/lib/newpkg"), "user.package", b"newpkg 1.0");
    // A symlink replaced by a directory; a file replaced by a symlink.
    fs::remove_file(m.join("srv/link")).unwrap();
    w("srv/link/inside", b"now a directory\n");
    fs::remove_file(m.join("etc/motd")).unwrap();
    std::os::unix::fs::symlink("/etc/os-release", m.join("etc/motd")).unwrap();
    // Special files.
    sh(&format!("cd {m} && mkfifo run/newfifo && mknod dev/null2 c 1 3 && mknod dev/sdb b 8 16", m = m.display()));
    drop(std::os::unix::net::UnixListener::bind(m.join("tmp/sock")).unwrap());
    // A sparse file, and nanosecond times on new entries.
    let f = fs::File::create(m.join("tmp/sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 32 << 20).unwrap();
    drop(f);
    sh(&format!(
        "cd {m} && touch -d '2020-05-06 07:08:09.987654321' usr/lib/newpkg/sub1/file1.txt usr/lib/newpkg/sub1",
        m = m.display()
    ));
}
