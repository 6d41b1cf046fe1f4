//! Shared helpers for the container tests: a busybox root filesystem built in a temp dir, a private state
//! root per test, and commands with generous timeouts. Tests that cannot run here fail with the reason.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Generous timeout for one command on a busy 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Fails the test unless we are root (CI runs as root).
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests run real containers and need root (CI runs them as root)");
}

/// The static busybox that the test root filesystems are made of.
pub fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("busybox not found: install busybox-static (see launcher/ci-packages.txt)");
}

/// A test environment: a root filesystem and a state root, both removed at the end.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub state: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        require_root();
        let tmp = tempfile::Builder::new().prefix("launcher-test").tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        make_rootfs(&rootfs);
        let state = tmp.path().join("state");
        Env { tmp, rootfs, state }
    }

    /// `launcher ARGS` with this environment's state root.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_launcher"));
        c.env("LAUNCHER_ROOT", &self.state).args(args).stdin(Stdio::null());
        c
    }

    /// `launcher run --rootfs R ARGS...` (options first, then the command).
    pub fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        let mut args: Vec<&str> = vec!["run"];
        args.extend_from_slice(opts);
        let r = self.rootfs.to_str().unwrap();
        args.extend_from_slice(&["--rootfs", r]);
        args.extend_from_slice(cmd);
        output(self.cmd(&args))
    }

    /// Runs `launcher ARGS` and returns its output.
    pub fn launcher(&self, args: &[&str]) -> Output {
        output(self.cmd(args))
    }

    /// Starts a detached container and returns its id.
    pub fn detach(&self, opts: &[&str], cmd: &[&str]) -> String {
        let mut o = vec!["-d"];
        o.extend_from_slice(opts);
        let out = self.run(&o, cmd);
        assert_eq!(code(&out), 0, "run -d failed: {}", stderr(&out));
        let id = stdout(&out).trim().to_string();
        assert_eq!(id.len(), 64, "run -d must print the id: {id:?}");
        id
    }

    /// The JSON of `inspect` for one container.
    pub fn inspect(&self, r: &str) -> serde_json::Value {
        let out = self.launcher(&["inspect", r]);
        assert_eq!(code(&out), 0, "inspect {r}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0].clone()
    }

    /// Polls `cond` until it holds, failing after `TIMEOUT` with `what`.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        wait_for(what, &mut cond)
    }
}

impl Drop for Env {
    /// A failed test must not leave containers behind: force-remove whatever is left in the state roots
    /// (the rootless test keeps its own under `xdg/layerfs`).
    fn drop(&mut self) {
        for root in [self.state.clone(), self.tmp.path().join("xdg/layerfs")] {
            let Ok(dir) = std::fs::read_dir(root.join("containers")) else {
                continue;
            };
            let ids: Vec<String> = dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
            if ids.is_empty() {
                continue;
            }
            let mut c = Command::new(env!("CARGO_BIN_EXE_launcher"));
            c.env("LAUNCHER_ROOT", &root).arg("rm").arg("-f").args(&ids);
            c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let _ = c.status();
        }
    }
}

pub fn wait_for(what: &str, cond: &mut dyn FnMut() -> bool) {
    let end = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builds a busybox root filesystem: /bin/busybox plus a link per applet, /etc/passwd and /etc/group.
pub fn make_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["etc", "tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox(), bin.join("busybox")).unwrap();
    let list = Command::new(busybox()).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    std::os::unix::fs::symlink("bin", root.join("sbin")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\nstaff:x:50:user\n").unwrap();
    let mut perm = std::fs::metadata(root.join("tmp")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o1777);
    std::fs::set_permissions(root.join("tmp"), perm).unwrap();
}

/// Runs a command to completion with a timeout (the child is killed and the test fails on timeout).
pub fn output(mut c: Command) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().expect("spawn launcher");
    finish(child, None)
}

/// Runs a command with `input` on its stdin.
pub fn output_with_input(mut c: Command, input: &[u8]) -> Output {
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().expect("spawn launcher");
    finish(child, Some(input.to_vec()))
}

fn finish(mut child: Child, input: Option<Vec<u8>>) -> Output {
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(r) => r.expect("wait for launcher"),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            panic!("launcher (pid {pid}) did not finish within {TIMEOUT:?}");
        }
    }
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or_else(|| panic!("killed by a signal: {:?}", o.status))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: &Output) -> String {
    assert_eq!(code(o), 0, "failed: stdout {:?} stderr {:?}", stdout(o), stderr(o));
    stdout(o)
}

/// A test image store: two layers from a busybox root, imported with the tools library as `test:1`
/// (cmd, env and workdir set) and `test:ep` (same layers; an entrypoint, a cmd and user `app`).
///
/// Lower layer: the busybox root of [`make_rootfs`], `/etc/base-only`, `/etc/to-delete`, `/srv/app/`.
/// Upper layer: `/etc/os-release` (`NAME=layertest`), a whiteout of `/etc/to-delete`, `/srv/app/hello.txt`,
/// `/srv/app/big` (64 KiB of `b`: an object of the store), `/etc/passwd` and `/etc/group` with user `app`
/// (1234:1234, supplementary group `staff`).
pub fn make_image_store(dir: &Path) -> PathBuf {
    use sha2::Digest;
    let base = dir.join("image-base");
    make_rootfs(&base);
    std::fs::write(base.join("etc/base-only"), "base\n").unwrap();
    std::fs::write(base.join("etc/to-delete"), "gone\n").unwrap();
    std::fs::create_dir_all(base.join("srv/app")).unwrap();
    let top = dir.join("image-top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::create_dir_all(top.join("srv/app")).unwrap();
    std::fs::write(top.join("etc/os-release"), "NAME=layertest\n").unwrap();
    std::fs::write(top.join("etc/.wh.to-delete"), "").unwrap();
    std::fs::write(top.join("srv/app/hello.txt"), "hello\n").unwrap();
    std::fs::write(top.join("srv/app/big"), vec![b'b'; 65536]).unwrap();
    std::fs::write(
        top.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\napp:x:1234:1234:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(top.join("etc/group"), "root:x:0:\nuser:x:1000:\nstaff:x:50:user,app\napp:x:1234:\n").unwrap();

    let layer_tar = |src: &Path| -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Complete);
        b.append_dir_all(".", src).unwrap();
        b.into_inner().unwrap()
    };
    let layers = [layer_tar(&base), layer_tar(&top)];
    let diff_ids: Vec<String> =
        layers.iter().map(|l| format!("sha256:{}", hex::encode(sha2::Sha256::digest(l)))).collect();
    let store_root = dir.join("store");
    let store = tools::store::Store::open(&store_root).unwrap();
    let images = [
        (
            "test:1",
            serde_json::json!({
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello"],
                "Cmd": ["sh", "-c", "echo $GREETING from $(pwd) as $(id -u)"],
                "WorkingDir": "/srv/app",
            }),
        ),
        (
            "test:ep",
            serde_json::json!({
                "Entrypoint": ["/bin/echo", "ep"],
                "Cmd": ["default"],
                "User": "app",
            }),
        ),
    ];
    for (tag, config) in images {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let manifest = serde_json::json!([{
            "Config": "config.json",
            "RepoTags": [tag],
            "Layers": ["l0/layer.tar", "l1/layer.tar"],
        }]);
        let mut archive = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            archive.append_data(&mut h, name, data).unwrap();
        };
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        add("config.json", &serde_json::to_vec(&config).unwrap());
        add("l0/layer.tar", &layers[0]);
        add("l1/layer.tar", &layers[1]);
        let path = dir.join(format!("{}.tar", tag.replace(':', "-")));
        std::fs::write(&path, archive.into_inner().unwrap()).unwrap();
        let opts = tools::import::ImportOptions { sync: false, ..Default::default() };
        tools::import::import(&store, &path, tag, &opts, &indicatif::ProgressBar::hidden())
            .unwrap_or_else(|e| panic!("import {tag}: {e}"));
    }
    store_root
}

/// Pids of live layerfs daemons (`comm` is `layerfs`) whose standard error (the launcher's daemons: `layerfs.log`
/// in the state directory) is under `needle` (a state root), or whose command line mentions it.
pub fn layerfs_daemons(needle: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(e.path().join("comm")), std::fs::read_to_string(e.path().join("stat")))
        else {
            continue;
        };
        if stat.contains(") Z ") || comm.trim_end() != "layerfs" {
            continue;
        }
        // The launcher's daemons log to LAYERFS.LOG in the state directory (standard error), a `layerfs`
        // program names its directories on its command line.
        let log = std::fs::read_link(e.path().join("fd/2")).unwrap_or_default();
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let needle_b = needle.as_os_str().as_encoded_bytes();
        if log.starts_with(needle) || cmd.windows(needle_b.len()).any(|w| w == needle_b) {
            out.push(pid);
        }
    }
    out
}

/// Mounts whose mount point is under `needle`, in the mount namespace of any process on the host.
pub fn mounts_under(needle: &Path) -> Vec<String> {
    let needle = needle.to_str().unwrap();
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        let Ok(mi) = std::fs::read_to_string(e.path().join("mountinfo")) else { continue };
        for l in mi.lines() {
            if l.split(' ').nth(4).is_some_and(|mp| mp.starts_with(needle)) {
                out.insert(format!("pid {}: {l}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.into_iter().collect()
}

/// Asserts that no layerfs daemon and no mount of anything under `root` is left, right now.
pub fn assert_no_leaks(root: &Path, after: &str) {
    let d = layerfs_daemons(root);
    let m = mounts_under(root);
    assert!(d.is_empty() && m.is_empty(), "after {after}: layerfs daemons {d:?} and mounts {m:#?} left");
}

/// Asserts that no layerfs daemon and no mount under `root` is left within a few seconds (for ends that
/// nobody waits for, like a killed monitor).
pub fn assert_no_leaks_soon(root: &Path, after: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let d = layerfs_daemons(root);
        let m = mounts_under(root);
        if d.is_empty() && m.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "after {after}: layerfs daemons {d:?} and mounts {m:#?} left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An environment with an image store; `launcher` finds layerfs beside itself.
pub struct ImageEnv {
    pub env: Env,
    pub store: PathBuf,
}

impl ImageEnv {
    pub fn new() -> ImageEnv {
        let env = Env::new();
        let store = make_image_store(env.tmp.path());
        ImageEnv { env, store }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd(args);
        c.env("LAYERFS_ROOT", &self.store);
        c
    }

    pub fn launcher(&self, args: &[&str]) -> Output {
        output(self.cmd(args))
    }

    /// `launcher run OPTS... ARGS...` (ARGS start with the image).
    pub fn run(&self, opts: &[&str], args: &[&str]) -> Output {
        let mut a = vec!["run"];
        a.extend_from_slice(opts);
        a.extend_from_slice(args);
        self.launcher(&a)
    }

    pub fn detach(&self, opts: &[&str], args: &[&str]) -> String {
        let mut o = vec!["-d"];
        o.extend_from_slice(opts);
        let id = ok(&self.run(&o, args)).trim().to_string();
        assert_eq!(id.len(), 64, "{id:?}");
        id
    }

    pub fn inspect(&self, r: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&ok(&self.launcher(&["inspect", r]))).unwrap();
        v[0].clone()
    }

    pub fn state_root(&self) -> &Path {
        &self.env.state
    }

    pub fn assert_clean(&self, after: &str) {
        assert_no_leaks(self.state_root(), after);
    }

    /// Number of layer files in the store.
    pub fn layers(&self) -> usize {
        std::fs::read_dir(self.store.join("layers")).unwrap().count()
    }

    /// The test's temporary directory.
    pub fn tmp(&self) -> &Path {
        self.env.tmp.path()
    }
}

/// Everything read from `master` (a pty master), accumulated by a thread of its own until EOF.
pub fn read_in_background(master: &std::fs::File) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let out = buf.clone();
    let mut m = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = m.read(&mut b) {
            if n == 0 {
                break;
            }
            out.lock().unwrap().push_str(&String::from_utf8_lossy(&b[..n]));
        }
    });
    buf
}
