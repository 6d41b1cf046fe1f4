//! The layerfs seam on its own: the daemon is a child of the caller in a mount namespace of its own, says when
//! its mount is live, is seen by nobody else, and is gone after `release`.

mod common;

use std::path::Path;

use common::*;
use launcher::rootfs::{LayerfsDirs, LayerfsSpec, RootFsSpec};

fn in_mountinfo(pid: &str, path: &Path) -> bool {
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let p = path.to_str().unwrap();
    mi.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// No libtest harness (see Cargo.toml): the seam clones from this process, which must be single-threaded.
fn main() {
    layerfs_daemon_in_its_own_mount_namespace();
    println!("rootfs_seam: layerfs_daemon_in_its_own_mount_namespace ... ok");
}

fn layerfs_daemon_in_its_own_mount_namespace() {
    let env = Env::new();
    let lower = env.tmp.path().join("lower");
    std::fs::create_dir_all(lower.join("etc")).unwrap();
    std::fs::write(lower.join("etc/motd"), "from the lower\n").unwrap();
    let spec = RootFsSpec::Layerfs(LayerfsSpec {
        lowerdirs: vec![lower.clone()],
        objects: None,
        image: None,
        options: vec![],
    });
    spec.validate().unwrap();
    let state = env.tmp.path().join("ctr");
    std::fs::create_dir(&state).unwrap();
    let dirs = LayerfsDirs::new(env.tmp.path(), &state);
    let fresh = || {
        let _ = std::fs::remove_dir_all(state.join("upper"));
        let _ = std::fs::remove_dir_all(state.join("work"));
        &dirs
    };

    let mut root = spec.prepare(fresh(), false).unwrap();
    assert_eq!(root.path, env.tmp.path().join("mnt"));
    let daemon = root.daemon.as_mut().unwrap();
    daemon.wait_ready().unwrap();
    let pid = daemon.pid;
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u32 = ppid.rsplit(") ").next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(ppid, std::process::id(), "the daemon is our child");
    // A forked child running the layerfs library (no exec): named `layerfs`, seen by the leak checks.
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap(), "layerfs\n");
    assert_eq!(layerfs_daemons(env.tmp.path()), [pid]);
    // Mounted in the daemon's namespace, where the file shows through; not in ours.
    assert!(in_mountinfo(&pid.to_string(), &root.path), "mounted in the daemon's namespace");
    assert!(!in_mountinfo("self", &root.path), "not on the host");
    let through = Path::new(&format!("/proc/{pid}/root")).join(root.path.strip_prefix("/").unwrap()).join("etc/motd");
    assert_eq!(std::fs::read_to_string(through).unwrap(), "from the lower\n");
    // The init layer holds the mount points; the upper stays empty.
    let init = env.tmp.path().join("init-layer");
    assert!(init.join("etc/hosts").is_file() && init.join("proc").is_dir());
    assert_eq!(std::fs::read_dir(state.join("upper")).unwrap().count(), 0);
    let end = root.release().unwrap();
    assert!(end.alive_at_stop);
    assert_eq!(end.status, "exited 0");
    assert!(!alive(pid), "reaped");
    assert_no_leaks(env.tmp.path(), "release");

    // A daemon that dies under us is reported as such.
    let mut root = spec.prepare(fresh(), false).unwrap();
    let d = root.daemon.as_mut().unwrap();
    d.wait_ready().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let end = root.release().unwrap();
    assert_eq!(end.status, "killed by SIGKILL");
    assert_no_leaks(env.tmp.path(), "a killed daemon");

    // A failing mount: the error carries the daemon's log.
    let bad = RootFsSpec::Layerfs(LayerfsSpec {
        lowerdirs: vec!["/nonexistent/layer".into()],
        objects: None,
        image: None,
        options: vec![],
    });
    let mut root = bad.prepare(fresh(), false).unwrap();
    let err = root.daemon.as_mut().unwrap().wait_ready().unwrap_err().to_string();
    assert!(err.starts_with("layerfs: mount: ") && err.contains("/nonexistent/layer"), "{err}");
    assert!(err.contains("exited 1"), "{err}");
    root.release();
    assert_no_leaks(env.tmp.path(), "failed mounts");

    // A plain directory needs no daemon.
    let dir = RootFsSpec::Dir { path: env.rootfs.clone() };
    let r = dir.prepare(fresh(), false).unwrap();
    assert_eq!(r.path, env.rootfs);
    assert!(r.release().is_none());
}
