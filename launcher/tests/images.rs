//! `launcher run IMAGE`: containers on layerfs mounts of images imported with the tools library into a
//! temporary store (two layers from a busybox root, see `common::make_image_store`).

mod common;

use std::path::{Path, PathBuf};

use common::*;

#[test]
fn image_config_and_layers() {
    let t = ImageEnv::new();
    // The image's cmd, env and working directory.
    assert_eq!(ok(&t.run(&["--rm"], &["test:1"])), "hello from /srv/app as 0\n");
    // Both layers, the upper one winning, its whiteout hiding a file of the lower one.
    let script = "cat /etc/os-release /etc/base-only /srv/app/hello.txt; wc -c < /srv/app/big; \
                  test -e /etc/to-delete || echo deleted";
    assert_eq!(ok(&t.run(&["--rm"], &["test:1", "sh", "-c", script])), "NAME=layertest\nbase\nhello\n65536\ndeleted\n");
    // -e after the image's env, -w over its working directory.
    assert_eq!(ok(&t.run(&["--rm", "-e", "GREETING=bye", "-w", "/tmp"], &["test:1"])), "bye from /tmp as 0\n");
    let env = ok(&t.run(&["--rm"], &["test:1", "env"]));
    assert!(env.contains("PATH=/usr/local/bin:/usr/bin:/bin\n") && env.contains("GREETING=hello\n"), "{env}");
    // The image's entrypoint and cmd: CMD replaces cmd, --entrypoint replaces both.
    assert_eq!(ok(&t.run(&["--rm"], &["test:ep"])), "ep default\n");
    assert_eq!(ok(&t.run(&["--rm"], &["test:ep", "a", "b"])), "ep a b\n");
    assert_eq!(ok(&t.run(&["--rm", "--entrypoint", "/bin/echo"], &["test:ep", "x"])), "x\n");
    assert_eq!(ok(&t.run(&["--rm", "--entrypoint", ""], &["test:ep", "id", "-u"])), "1234\n");
    // The image's user, resolved through its own /etc/passwd and /etc/group; -u over it, by name or number.
    assert_eq!(
        ok(&t.run(&["--rm", "--entrypoint", "id"], &["test:ep"])),
        "uid=1234(app) gid=1234(app) groups=50(staff)\n"
    );
    assert_eq!(ok(&t.run(&["--rm", "-u", "user"], &["test:1", "id", "-u"])), "1000\n");
    assert_eq!(ok(&t.run(&["--rm", "-u", "4321:50"], &["test:1", "id"])), "uid=4321 gid=50(staff)\n");
    let o = t.run(&["--rm", "-u", "nobody"], &["test:1", "true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("unable to find user nobody"), "{}", stderr(&o));
    // Exit codes.
    assert_eq!(code(&t.run(&["--rm"], &["test:1", "sh", "-c", "exit 3"])), 3);
    let o = t.run(&["--rm"], &["test:1", "nosuchcommand"]);
    assert_eq!(code(&o), 127, "{}", stderr(&o));
    assert_eq!(code(&t.run(&["--rm"], &["test:1", "/etc/os-release"])), 126);
    // Unknown image, no image, a store that does not exist: docker's message and 125.
    let o = t.run(&["--rm"], &["nosuch"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("Unable to find image 'nosuch:latest' locally"), "{}", stderr(&o));
    let o = t.launcher(&["run", "--rm"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("requires at least 1 argument"), "{}", stderr(&o));
    let o = t.launcher(&["run", "--rm", "--store", "/nonexistent", "test:1"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("Unable to find image 'test:1' locally (store /nonexistent)"), "{}", stderr(&o));
    // An image id prefix works too.
    let id = t.inspect_image_id();
    assert_eq!(ok(&t.run(&["--rm"], &[&id[..12], "cat", "/srv/app/hello.txt"])), "hello\n");
    t.assert_clean("the runs above");
}

impl ImageEnv {
    fn inspect_image_id(&self) -> String {
        let id = self.detach(&[], &["test:1", "true"]);
        ok(&self.launcher(&["wait", &id]));
        let st = self.inspect(&id);
        ok(&self.launcher(&["rm", &id]));
        st["config"]["rootfs"]["layerfs"]["image"]["id"].as_str().unwrap().trim_start_matches("sha256:").to_string()
    }
}

#[test]
fn writes_go_to_the_upper_and_stay_until_rm() {
    let t = ImageEnv::new();
    let script = "echo data > /srv/app/new && rm /etc/base-only && echo more >> /srv/app/hello.txt && \
                  mkdir -p /var/lib/x && cat /srv/app/hello.txt";
    assert_eq!(ok(&t.run(&["--name", "w"], &["test:1", "sh", "-c", script])), "hello\nmore\n");
    let st = t.inspect("w");
    let image = &st["config"]["rootfs"]["layerfs"]["image"];
    assert_eq!(image["name"], "test:1");
    assert_eq!(image["layers"].as_array().unwrap().len(), 2);
    assert!(image["layers"][0].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(image["store"], t.store.to_str().unwrap());
    let upper = PathBuf::from(st["layerfs"]["upper"].as_str().unwrap());
    let dir = t.state_root().join("containers").join(st["id"].as_str().unwrap());
    assert_eq!(upper, dir.join("upper"));
    assert!(Path::new(st["layerfs"]["work"].as_str().unwrap()).is_dir());
    assert_eq!(st["layerfs"]["daemon_end"]["alive_at_stop"], true);
    assert_eq!(st["layerfs"]["daemon_end"]["status"], "exited 0");
    // The changes, on the host, in the kernel overlayfs format: new and copied-up files, a whiteout.
    assert_eq!(std::fs::read_to_string(upper.join("srv/app/new")).unwrap(), "data\n");
    assert_eq!(std::fs::read_to_string(upper.join("srv/app/hello.txt")).unwrap(), "hello\nmore\n");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wh = std::fs::symlink_metadata(upper.join("etc/base-only")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "a whiteout");
    assert!(upper.join("var/lib/x").is_dir());
    // Only the container's changes: the launcher's mount points live in the init layer.
    let mut top: Vec<String> =
        std::fs::read_dir(&upper).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    top.sort();
    assert_eq!(top, ["etc", "srv", "var"]);
    assert_eq!(std::fs::read_dir(upper.join("etc")).unwrap().count(), 1, "only the whiteout in etc");
    // Another container of the image sees none of it.
    let script = "test -e /srv/app/new && echo leaked; cat /etc/base-only /srv/app/hello.txt";
    assert_eq!(ok(&t.run(&["--rm"], &["test:1", "sh", "-c", script])), "base\nhello\n");
    t.assert_clean("two containers");
    // Kept until rm.
    assert!(upper.join("srv/app/new").exists());
    ok(&t.launcher(&["rm", "w"]));
    assert!(!dir.exists(), "rm removes the state directory with the upper");
}

#[test]
fn no_leaks_on_any_exit_path() {
    let t = ImageEnv::new();
    ok(&t.run(&["--rm"], &["test:1", "true"]));
    t.assert_clean("run --rm");

    // stop: SIGTERM, then SIGKILL.
    let id = t.detach(&[], &["test:1", "sleep", "1000"]);
    let daemon = t.inspect(&id)["layerfs"]["daemon_pid"].as_i64().unwrap() as i32;
    assert_eq!(layerfs_daemons(t.state_root()), [daemon]);
    // The mount exists in the daemon's namespace only: the host does not see it.
    let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!own.contains(t.state_root().to_str().unwrap()), "no mount on the host");
    let theirs = std::fs::read_to_string(format!("/proc/{daemon}/mountinfo")).unwrap();
    let mnt = t.state_root().join("mnt");
    assert!(theirs.contains(&format!(" {} ", mnt.display())), "{theirs}");
    ok(&t.launcher(&["stop", "-t", "1", &id]));
    t.assert_clean("stop");
    ok(&t.launcher(&["rm", &id]));

    // kill, then wait.
    let id = t.detach(&[], &["test:1", "sleep", "1000"]);
    ok(&t.launcher(&["kill", &id]));
    assert_eq!(ok(&t.launcher(&["wait", &id])).trim(), "137");
    t.assert_clean("kill");
    // rm -f of a running container.
    let id2 = t.detach(&[], &["test:1", "sleep", "1000"]);
    ok(&t.launcher(&["rm", "-f", &id2]));
    t.assert_clean("rm -f");
    ok(&t.launcher(&["rm", &id]));

    // A command that is not found: the container never started.
    assert_eq!(code(&t.run(&["--rm"], &["test:1", "nosuch"])), 127);
    t.assert_clean("a failed start");
    assert_eq!(code(&t.run(&["--name", "failed"], &["test:1", "nosuch"])), 127);
    t.assert_clean("a failed start without --rm");
    ok(&t.launcher(&["rm", "failed"]));

    // The monitor killed with SIGKILL: the container and the daemon go with it (parent death signals).
    let id = t.detach(&[], &["test:1", "sleep", "1000"]);
    let st = t.inspect(&id);
    let monitor = st["monitor_pid"].as_i64().unwrap() as i32;
    let init = st["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_no_leaks_soon(t.state_root(), "kill -9 of the monitor");
    wait_for("the container to die with its monitor", &mut || {
        std::fs::read_to_string(format!("/proc/{init}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    let st = t.inspect(&id);
    assert_eq!(st["status"], "exited");
    ok(&t.launcher(&["rm", &id]));
    assert!(!t.state_root().join("containers").join(&id).exists());
}

/// The daemon is outside the container's pid namespace and cgroup: an OOM kill inside the container does not
/// touch it (the filesystem keeps working), and neither does killing the container; it is gone once the
/// container is cleaned up, having exited by itself (not killed).
#[test]
fn daemon_outlives_oom_and_kill_of_the_container() {
    let t = ImageEnv::new();
    let hog = "x=a; while true; do x=$x$x$x$x; done";
    let script = format!("sh -c '{hog}'; echo status $? > /tmp/after; cat /etc/os-release >> /tmp/after; sleep 1000");
    let id = t.detach(&["-m", "16m"], &["test:1", "sh", "-c", &script]);
    let st = t.inspect(&id);
    let daemon = st["layerfs"]["daemon_pid"].as_i64().unwrap() as i32;
    let init = st["pid"].as_i64().unwrap() as i32;
    let after = PathBuf::from(st["layerfs"]["upper"].as_str().unwrap()).join("tmp/after");
    wait_for("the hog to be OOM-killed", &mut || {
        std::fs::read_to_string(&after).is_ok_and(|s| s.contains("NAME=layertest"))
    });
    assert_eq!(std::fs::read_to_string(&after).unwrap(), "status 137\nNAME=layertest\n");
    assert_eq!(layerfs_daemons(t.state_root()), [daemon], "the daemon survived the OOM kill");
    let cgroup = |pid: i32| -> String {
        let c = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        c.lines().find(|l| l.contains(":memory:")).unwrap_or("").to_string()
    };
    assert!(cgroup(init).contains(&format!("launcher-{id}")), "{}", cgroup(init));
    assert_ne!(cgroup(daemon), cgroup(init), "the daemon is not in the container's memory cgroup");
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_eq!(ns(daemon.to_string()), ns("self".into()), "the daemon is in the host's pid namespace");
    assert_ne!(ns(init.to_string()), ns("self".into()));

    ok(&t.launcher(&["kill", &id]));
    assert_eq!(ok(&t.launcher(&["wait", &id])).trim(), "137");
    t.assert_clean("kill after an OOM");
    let st = t.inspect(&id);
    assert_eq!(st["layerfs"]["daemon_end"]["alive_at_stop"], true, "alive until the cleanup: {st}");
    assert_eq!(st["layerfs"]["daemon_end"]["status"], "exited 0", "it exited by itself: {st}");
    assert!(st["error"].is_null(), "{st}");
    ok(&t.launcher(&["rm", &id]));
}

/// A daemon that dies under a running container: the container (whose root is gone) is killed, and the state
/// says why.
#[test]
fn a_dead_daemon_ends_the_container() {
    let t = ImageEnv::new();
    let id = t.detach(&[], &["test:1", "sleep", "1000"]);
    let daemon = t.inspect(&id)["layerfs"]["daemon_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(ok(&t.launcher(&["wait", &id])).trim(), "137");
    let st = t.inspect(&id);
    let err = st["error"].as_str().unwrap_or_default();
    assert!(err.contains("layerfs daemon") && err.contains("killed by SIGKILL"), "{st}");
    assert_eq!(st["layerfs"]["daemon_end"]["alive_at_stop"], false);
    t.assert_clean("a killed daemon");
    ok(&t.launcher(&["rm", &id]));
}

#[test]
fn ps_shows_the_image_and_read_only_works() {
    let t = ImageEnv::new();
    let id = t.detach(&["--name", "web"], &["test:1", "sleep", "1000"]);
    let ps = ok(&t.launcher(&["ps"]));
    let line = ps.lines().find(|l| l.contains("web")).unwrap();
    assert!(line.starts_with(&id[..12]) && line.contains("test:1"), "{ps}");
    ok(&t.launcher(&["rm", "-f", "web"]));
    let o = t.run(&["--rm", "--read-only"], &["test:1", "sh", "-c", "touch /x || echo refused"]);
    assert!(ok(&o).contains("refused"), "{}", stderr(&o));
    t.assert_clean("ps, --read-only");
}

/// `rmi` and garbage collection while a container runs an image: the layers and objects its
/// layerfs daemon uses stay (the daemon's lease), and go once the container is removed.
#[test]
fn gc_keeps_the_layers_of_running_containers() {
    let t = ImageEnv::new();
    let shared = t.env.tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let vol = format!("{}:/shared", shared.display());
    let script = "until [ -f /shared/go ]; do sleep 0.05; done; wc -c < /srv/app/big; cat /srv/app/hello.txt";
    let id = t.detach(&["-v", &vol], &["test:1", "sh", "-c", script]);
    let store = tools::store::Store::open(&t.store).unwrap();
    for img in store.images().unwrap() {
        store.remove_image(&img.name).unwrap();
    }
    let gc = store.collect_garbage().unwrap();
    assert_eq!((gc.layers, gc.objects), (0, 0), "nothing the running container uses is removed: {gc:?}");
    assert!(gc.leased >= 2, "{gc:?}");
    // The container reads files it had not touched before (the 64 KiB one is a store object).
    std::fs::write(shared.join("go"), "").unwrap();
    assert_eq!(ok(&t.launcher(&["wait", &id])).trim(), "0");
    assert_eq!(ok(&t.launcher(&["logs", &id])), "65536\nhello\n");
    ok(&t.launcher(&["rm", &id]));
    let gc = store.collect_garbage().unwrap();
    assert!(gc.layers >= 2 && gc.objects >= 1, "removed once the container is gone: {gc:?}");
    t.assert_clean("rm");
}

/// `--storage-opt` passes layerfs mount options to the daemon of an image's root: with
/// `cache_dirs=0` a listing needs the daemon every time (it blocks while the daemon is stopped).
/// Unknown keys, bad values and `--rootfs` are refused with 125.
#[test]
fn storage_opt_reaches_the_daemon() {
    let t = ImageEnv::new();
    let id = t.detach(&["--storage-opt", "cache_dirs=0", "--storage-opt", "timeout=5"], &["test:1", "sleep", "1000"]);
    let st = t.inspect(&id);
    assert_eq!(st["config"]["rootfs"]["layerfs"]["options"], serde_json::json!(["cache_dirs=0", "timeout=5"]));
    let pid = st["pid"].as_i64().unwrap();
    let daemon = st["layerfs"]["daemon_pid"].as_i64().expect("daemon pid in the state") as i32;
    let etc = PathBuf::from(format!("/proc/{pid}/root/etc"));
    let list = |p: PathBuf| std::fs::read_dir(p).unwrap().count();
    let n = list(etc.clone());
    assert!(n > 0);
    assert_eq!(list(etc.clone()), n);
    let daemon = nix::unistd::Pid::from_raw(daemon);
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lister = std::thread::spawn(move || {
        let _ = tx.send(list(etc));
    });
    let blocked = rx.recv_timeout(std::time::Duration::from_millis(1500)).is_err();
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGCONT).unwrap();
    lister.join().unwrap();
    assert!(blocked, "a listing came back with the daemon stopped: cache_dirs=0 did not reach it");
    ok(&t.launcher(&["rm", "-f", &id]));

    for (opts, what) in [
        (vec!["--storage-opt", "upperdir=/tmp"], "unknown option"),
        (vec!["--storage-opt", "cache_dirs=maybe"], "cache_dirs=maybe"),
        (vec!["--storage-opt", "cache_dirs"], "expected KEY=VALUE"),
    ] {
        let o = t.run(&opts, &["test:1", "true"]);
        assert_eq!(code(&o), 125, "{opts:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{opts:?}: {}", stderr(&o));
    }
    let dir = t.tmp().join("rootfs-for-storage-opt");
    std::fs::create_dir_all(&dir).unwrap();
    let o = t.launcher(&["run", "--storage-opt", "cache_dirs=0", "--rootfs", dir.to_str().unwrap(), "true"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(stderr(&o).contains("not to --rootfs"), "{}", stderr(&o));
    t.assert_clean("--storage-opt");
}
