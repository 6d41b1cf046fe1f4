//! Rootless with subordinate ids: a temporary unprivileged user with `/etc/subuid` and `/etc/subgid` ranges
//! runs containers whose user namespace maps it to root and its ranges to uids and gids 1.. (through the
//! setuid `newuidmap`/`newgidmap` of the uidmap package).

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::*;

/// Serializes user creation and deletion within this test process.
static USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A user created for the test (with subordinate id ranges), deleted on drop.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl TempUser {
    fn new() -> TempUser {
        for tool in ["/usr/bin/newuidmap", "/usr/bin/newgidmap"] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} missing: install uidmap (see launcher/ci-packages.txt)"
            );
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("lt{}x{n}", std::process::id());
        // useradd and userdel lock /etc/passwd: one at a time.
        let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
        run_ok(Command::new("useradd").args(["-M", "-U", "-s", "/usr/sbin/nologin", &name]));
        let user = TempUser {
            uid: run_ok(Command::new("id").args(["-u", &name])).parse().unwrap(),
            gid: run_ok(Command::new("id").args(["-g", &name])).parse().unwrap(),
            name,
        };
        // useradd adds ranges when login.defs says so; make sure there is one either way.
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if launcher::idmap::ranges(&text, &user.name, user.uid).is_empty() {
                let flag = if file.ends_with("subuid") { "--add-subuids" } else { "--add-subgids" };
                run_ok(Command::new("usermod").args([flag, "500000-565535", &user.name]));
            }
        }
        user
    }

    fn ranges(&self, file: &str) -> Vec<(u32, u32)> {
        launcher::idmap::ranges(&std::fs::read_to_string(file).unwrap(), &self.name, self.uid)
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        // userdel also drops the user's subordinate ranges.
        let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

#[test]
fn rootless_with_subordinate_ids() {
    let env = Env::new();
    let user = TempUser::new();
    let base = env.tmp.path();
    let run_dir = base.join("xdg");
    std::fs::create_dir(&run_dir).unwrap();
    for p in [base.to_path_buf(), run_dir.clone()] {
        std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
    }
    let owner = format!("{}:{}", user.uid, user.gid);
    run_ok(Command::new("chown").args(["-R", &owner]).arg(&env.rootfs));
    let as_user = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &user.uid.to_string(), "--regid", &user.gid.to_string(), "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_launcher"))
            .args(args)
            .env_remove("LAUNCHER_ROOT")
            .env("XDG_RUNTIME_DIR", &run_dir)
            .stdin(std::process::Stdio::null());
        output(c)
    };
    let r = env.rootfs.to_str().unwrap();
    let script = "id -u; tr -s ' ' < /proc/self/uid_map; echo --; tr -s ' ' < /proc/self/gid_map; echo --; \
                  touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u:%g /tmp/f; grep devpts /proc/self/mounts";
    let out = as_user(&["run", "--rm", "--rootfs", r, "sh", "-c", script]);
    let text = ok(&out);
    assert!(!stderr(&out).contains("warning"), "ranges found, no fallback: {}", stderr(&out));
    let mut parts = text.split("--\n");
    let (uids, gids, rest) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let expect = |own: u32, ranges: Vec<(u32, u32)>| {
        let mut s = format!(" 0 {own} 1\n");
        let mut next = 1;
        for (start, count) in ranges {
            s += &format!(" {next} {start} {count}\n");
            next += count;
        }
        s
    };
    assert_eq!(uids, format!("0\n{}", expect(user.uid, user.ranges("/etc/subuid"))));
    assert_eq!(gids, expect(user.gid, user.ranges("/etc/subgid")));
    let mut lines = rest.lines();
    assert_eq!(lines.next(), Some("1000:1000"), "uid 1000 exists in the container: {text}");
    // devpts with gid 5 (tty), which is mapped now; the kernel shows it as the host's gid.
    let tty_gid = format!("gid={},", user.ranges("/etc/subgid")[0].0 + 4);
    assert!(lines.next().is_some_and(|l| l.contains(&tty_gid)), "devpts {tty_gid}: {text}");
    // On the host, container uid 1000 is subordinate id start+999.
    let md = std::fs::metadata(env.rootfs.join("tmp/f")).unwrap();
    assert_eq!(md.uid(), user.ranges("/etc/subuid")[0].0 + 999);
    assert_eq!(md.gid(), user.ranges("/etc/subgid")[0].0 + 999);
    // A non-root user of the image, with its supplementary group (setgroups is allowed with a full map).
    let out = as_user(&["run", "--rm", "-u", "user", "--rootfs", r, "sh", "-c", "id -u; id -g; id -G"]);
    assert_eq!(ok(&out), "1000\n1000\n1000 50\n");
}

/// Rootless images: the layerfs daemon joins the container's user namespace and mounts there. That needs
/// `/dev/fuse` open to the user (udev's 0666); this machine's is root-only, so the test gives the launcher a
/// 0666 node of its own in a private mount namespace (`unshare -m` + a bind over /dev/fuse), and checks the
/// refusal without it. The store belongs to the user (layerfs refuses to map layer files of another owner,
/// and a root-owned file looks like one from inside a user namespace).
#[test]
fn rootless_image_with_subordinate_ids() {
    let env = Env::new();
    let user = TempUser::new();
    let base = env.tmp.path();
    let run_dir = base.join("xdg");
    std::fs::create_dir(&run_dir).unwrap();
    let store = make_image_store(base);
    let node = base.join("fuse");
    let dev = nix::sys::stat::makedev(10, 229);
    nix::sys::stat::mknod(&node, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(0o666), dev)
        .unwrap();
    std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let owner = format!("{}:{}", user.uid, user.gid);
    run_ok(Command::new("chown").args(["-R", &owner]).arg(base));
    let as_user = |fuse: bool, args: &[&str]| {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"]);
        let bind = if fuse { "mount --bind \"$0\" /dev/fuse && " } else { "" };
        c.arg(format!("{bind}exec setpriv --reuid {} --regid {} --clear-groups -- \"$@\"", user.uid, user.gid))
            .arg(&node)
            .arg(env!("CARGO_BIN_EXE_launcher"))
            .args(args)
            .env_remove("LAUNCHER_ROOT")
            .env("XDG_RUNTIME_DIR", &run_dir)
            .env("LAYERFS_ROOT", &store)
            .stdin(std::process::Stdio::null());
        output(c)
    };
    let state_root = run_dir.join("layerfs");

    assert_eq!(ok(&as_user(true, &["run", "--rm", "test:1"])), "hello from /srv/app as 0\n");
    assert_no_leaks(&state_root, "a rootless run --rm");
    // A file made by a user of the image belongs to a subordinate id in the upper, on the host; rm removes it
    // from inside a user namespace with the container's maps.
    let script = "mkdir /tmp/mine && echo x > /tmp/mine/f && chmod 700 /tmp/mine && id -u";
    assert_eq!(ok(&as_user(true, &["run", "--name", "w", "-u", "user", "test:1", "sh", "-c", script])), "1000\n");
    let dir = std::fs::read_link(state_root.join("names/w")).unwrap();
    let upper = state_root.join("containers").join(dir).join("upper");
    let md = std::fs::metadata(upper.join("tmp/mine")).unwrap();
    assert_eq!(md.uid(), user.ranges("/etc/subuid")[0].0 + 999);
    ok(&as_user(true, &["rm", "w"]));
    assert!(!upper.exists(), "removed");
    assert_no_leaks(&state_root, "rootless rm");

    // Without a /dev/fuse the user may open: said before anything starts.
    let out = as_user(false, &["run", "--rm", "test:1"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("/dev/fuse is not readable and writable by uid"), "{}", stderr(&out));
}
