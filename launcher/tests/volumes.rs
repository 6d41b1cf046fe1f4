//! `-v HOST:CTR[:ro|rw]` and `--tmpfs` on real containers.

mod common;

use std::path::Path;

use common::*;

fn mount_opts(mounts: &str, target: &str) -> Vec<String> {
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(target))
        .unwrap_or_else(|| panic!("no mount on {target} in:\n{mounts}"));
    line.split(' ').nth(3).unwrap().split(',').map(str::to_string).collect()
}

/// Unmounts a host mount when dropped (the test's own submount under a volume source).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn volumes_bind_host_paths() {
    let env = Env::new();
    let host = env.tmp.path().join("host");
    let sub = host.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(host.join("hello"), "from-host\n").unwrap();
    // A mount below the source: `ro` must make it read-only too (recursive read-only).
    nix::mount::mount(Some("tmpfs"), &sub, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap();
    let _guard = Unmount(sub.clone());
    let file = env.tmp.path().join("conf");
    std::fs::write(&file, "setting=1\n").unwrap();
    let h = host.to_str().unwrap();
    let rw = format!("{h}:/data");
    let ro = format!("{h}:/deep/new/ro:ro");
    let f = format!("{}:/etc/app/conf:ro", file.display());
    let script = "cat /data/hello; echo inside > /data/out && echo rw-ok; \
                  touch /deep/new/ro/x 2>/dev/null && echo ro-writable; \
                  touch /deep/new/ro/sub/x 2>/dev/null && echo ro-sub-writable; \
                  touch /data/sub/y && echo rw-sub-ok; \
                  cat /etc/app/conf; echo x >> /etc/app/conf 2>/dev/null && echo conf-writable; \
                  touch /scratch/t && echo tmpfs-ok; cat /proc/self/mounts";
    let out = ok(&env.run(
        &["--rm", "-v", &rw, "-v", &ro, "--volume", &f, "--tmpfs", "/scratch:size=1m,mode=1777"],
        &["sh", "-c", script],
    ));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("from-host"));
    assert_eq!(lines.next(), Some("rw-ok"));
    assert_eq!(lines.next(), Some("rw-sub-ok"), "{out}");
    assert_eq!(lines.next(), Some("setting=1"));
    assert_eq!(lines.next(), Some("tmpfs-ok"), "{out}");
    assert!(!out.contains("writable"), "read-only volumes refused every write: {out}");
    assert_eq!(std::fs::read_to_string(host.join("out")).unwrap(), "inside\n", "writes reach the host");
    assert!(sub.join("y").exists());
    assert!(mount_opts(&out, "/data").contains(&"rw".to_string()));
    assert!(mount_opts(&out, "/deep/new/ro").contains(&"ro".to_string()));
    assert!(mount_opts(&out, "/deep/new/ro/sub").contains(&"ro".to_string()), "submounts are read-only too");
    assert!(mount_opts(&out, "/etc/app/conf").contains(&"ro".to_string()));
    let t = mount_opts(&out, "/scratch");
    assert!(t.contains(&"nosuid".to_string()) && t.contains(&"noexec".to_string()), "{t:?}");
    // The missing mount points were created inside the root filesystem.
    assert!(env.rootfs.join("deep/new/ro").is_dir());
    assert!(env.rootfs.join("etc/app/conf").is_file());
    // The host's own mount below the source is untouched (still writable on the host).
    std::fs::write(sub.join("host-write"), "ok").unwrap();
}

#[test]
fn volume_targets_stay_inside_the_root() {
    let env = Env::new();
    let host = env.tmp.path().join("vol");
    std::fs::create_dir(&host).unwrap();
    // An image symlink pointing at an absolute host path: the mount must land inside the root.
    let outside = env.tmp.path().join("outside");
    std::os::unix::fs::symlink(&outside, env.rootfs.join("evil")).unwrap();
    let v = format!("{}:/evil/mnt", host.display());
    let out = ok(&env.run(&["--rm", "-v", &v], &["sh", "-c", "touch /evil/mnt/x && echo ok"]));
    assert_eq!(out.trim(), "ok");
    assert!(!outside.exists(), "nothing created on the host through the symlink");
    let inside = env.rootfs.join(outside.strip_prefix("/").unwrap()).join("mnt");
    assert!(inside.is_dir(), "the target was resolved with the rootfs as /: {}", inside.display());
    assert!(host.join("x").exists());
}

#[test]
fn volume_errors() {
    let env = Env::new();
    let missing = env.tmp.path().join("nope");
    let v = format!("{}:/data", missing.display());
    let o = env.run(&["--rm", "-v", &v], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("bind source path does not exist"), "{}", stderr(&o));
    assert!(stderr(&o).contains(missing.to_str().unwrap()));
    let o = env.run(&["--rm", "-v", "myvolume:/data"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("named volumes are not supported"), "{}", stderr(&o));
    let h = env.tmp.path().to_str().unwrap();
    let o = env.run(&["--rm", "-v", &format!("{h}:/data:rx")], &["true"]);
    assert_eq!(code(&o), 125);
    let o = env.run(&["--rm", "--tmpfs", "/t:bogus"], &["true"]);
    assert_eq!(code(&o), 125);
    // A file over a directory fails at mount time and names the step.
    std::fs::write(env.tmp.path().join("f"), "x").unwrap();
    let o = env.run(&["--rm", "-v", &format!("{h}/f:/bin")], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("bind volume /bin"), "{}", stderr(&o));
    assert!(!Path::new(&env.state).join("containers").read_dir().unwrap().any(|_| true), "--rm cleaned up");
}
