//! Shared helpers for the mount tests: real layerfs mounts over lower directories built by the
//! tests. These tests need root and /dev/fuse (CI has both); without them they FAIL with the
//! reason, unless a developer sets `LAYERFS_SKIP_MOUNT_TESTS=1` on a machine that cannot mount.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_layerfs");

/// Returns false (skip) only when the developer asked for it; panics with the reason when the
/// machine cannot mount.
pub fn can_mount() -> bool {
    if std::env::var_os("LAYERFS_SKIP_MOUNT_TESTS").is_some() {
        eprintln!("LAYERFS_SKIP_MOUNT_TESTS is set: skipping a mount test");
        return false;
    }
    assert!(
        layerfs::sys::geteuid() == 0,
        "mount tests need root (CI runs as root); set LAYERFS_SKIP_MOUNT_TESTS=1 to skip them explicitly"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "mount tests need /dev/fuse; set LAYERFS_SKIP_MOUNT_TESTS=1 to skip them explicitly"
    );
    true
}

/// A test directory with lower layers (`l0` on top), an upper, a work dir and a mountpoint.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Env {
    pub fn new(layers: usize) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-test")
            .tempdir_in(std::env::var_os("LAYERFS_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from))
            .unwrap();
        let lowers: Vec<PathBuf> = (0..layers).map(|i| dir.path().join(format!("l{i}"))).collect();
        for l in &lowers {
            fs::create_dir(l).unwrap();
        }
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let mnt = dir.path().join("mnt");
        for d in [&upper, &work, &mnt] {
            fs::create_dir(d).unwrap();
        }
        Env { dir, lowers, upper, work, mnt }
    }

    pub fn l(&self, i: usize) -> &Path {
        &self.lowers[i]
    }

    /// `lowerdir=` value, top first.
    pub fn lowerdir(&self) -> String {
        self.lowers.iter().map(|p| p.display().to_string().replace(':', "\\:")).collect::<Vec<_>>().join(":")
    }

    /// Mounts with the fuse-overlayfs command line; returns once the mount is live.
    pub fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    pub fn mount_with(&self, extra: &[&str]) -> Mount {
        let opts =
            format!("lowerdir={},upperdir={},workdir={}", self.lowerdir(), self.upper.display(), self.work.display());
        let mut cmd = Command::new(BIN);
        cmd.arg("-o").arg(opts);
        for e in extra {
            cmd.arg(e);
        }
        cmd.arg(&self.mnt);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "layerfs failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(is_fuse(&self.mnt), "mount not live when layerfs returned");
        Mount { path: self.mnt.clone() }
    }

    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

pub fn is_fuse(p: &Path) -> bool {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let parent_dev = fs::metadata(p.parent().unwrap()).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev()
    });
    let dev = fs::metadata(p).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev()
    });
    layerfs::sys::is_fuse_mount(&c).unwrap_or(false) && parent_dev.ok() != dev.ok()
}

/// Pids of layerfs daemons serving `mnt`.
pub fn daemon_pids(mnt: &Path) -> Vec<u32> {
    let needle = mnt.as_os_str().as_bytes();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if stat.contains(") Z ") {
            continue;
        }
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"layerfs")) && args.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// A live mount; unmounted (and its daemon gone) on drop.
pub struct Mount {
    pub path: PathBuf,
}

impl Mount {
    pub fn umount(self) {
        drop(self)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let pids = daemon_pids(&self.path);
        let st = Command::new(BIN).arg("umount").arg(&self.path).status();
        if !matches!(st, Ok(s) if s.success()) {
            let _ = layerfs::mount::umount(&self.path, true);
        }
        // The daemon exits by itself once unmounted: wait for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        while pids.iter().any(|p| Path::new(&format!("/proc/{p}/cmdline")).exists() && !is_zombie(*p))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !std::thread::panicking() {
            assert!(!is_fuse(&self.path), "still mounted after umount");
            for p in pids {
                assert!(
                    !Path::new(&format!("/proc/{p}/cmdline")).exists() || is_zombie(p),
                    "daemon {p} did not exit after umount"
                );
            }
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

/// Sorted names in a directory.
pub fn ls(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn write(p: impl AsRef<Path>, data: &[u8]) {
    let p = p.as_ref();
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap();
}

pub fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "sh -c {script:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates a char 0/0 whiteout (overlay convention) at `p`.
pub fn chr_whiteout(p: &Path) {
    let dir = fs::File::open(p.parent().unwrap()).unwrap();
    let name = CString::new(p.file_name().unwrap().as_bytes()).unwrap();
    use std::os::fd::AsFd;
    layerfs::sys::mknodat(dir.as_fd(), &name, libc_s_ifchr(), 0).unwrap();
}

pub fn libc_s_ifchr() -> u32 {
    0o020000
}

pub fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    let at = layerfs::sys::XattrPath::path(p);
    layerfs::sys::setxattr(&at, &CString::new(name).unwrap(), value, 0)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

pub fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let at = layerfs::sys::XattrPath::path(p);
    layerfs::sys::getxattr(&at, &CString::new(name).unwrap()).ok()
}

/// Names of entries in the upper directory `p` that are whiteouts (either convention).
pub fn whiteouts_in(p: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut v = Vec::new();
    for e in fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if (m.file_type().is_char_device() && m.rdev() == 0) || n.starts_with(".wh.") {
            v.push(n);
        }
    }
    v.sort();
    v
}

/// Runs `f` on another thread while the daemon serving `mnt` is stopped (SIGSTOP): its result if
/// it came back within `wait` (served without the daemon: passthrough, the kernel's caches), else
/// `None` (it needed the daemon; the daemon is continued and `f` let finish either way).
pub fn with_daemon_stopped<T: Send + 'static>(
    mnt: &Path,
    wait: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let pid = nix::unistd::Pid::from_raw(daemon_pids(mnt)[0] as i32);
    struct Cont(nix::unistd::Pid);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let cont = Cont(pid);
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let got = rx.recv_timeout(wait).ok();
    drop(cont);
    worker.join().unwrap();
    got
}
