//! Change management on real containers: `diff`, `commit` (stopped, and running with the freezer), `export` and
//! `cp`, on the two-layer busybox test image (`common::make_image_store`).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Adds, modifies and deletes files and replaces a directory of the image.
const CHANGES: &str = "echo added > /srv/new-file && echo changed > /etc/os-release && rm /etc/base-only && \
                       rm -r /srv/app && mkdir /srv/app && echo only > /srv/app/only";

/// What `diff` lists for [`CHANGES`] (a replaced directory: `C`, its old entries `D`, its new ones `A`).
const DIFF: &str = "C /etc\nD /etc/base-only\nC /etc/os-release\nC /srv\nC /srv/app\nD /srv/app/big\n\
                    D /srv/app/hello.txt\nA /srv/app/only\nA /srv/new-file\n";

/// What a container of an image made from [`CHANGES`] sees.
const SEEN: &str = "cat /etc/os-release /srv/new-file /srv/app/only; test -e /etc/base-only || echo gone; ls /srv/app";
const SEEN_OUT: &str = "changed\nadded\nonly\ngone\nonly\n";

#[test]
fn diff_and_commit_a_stopped_container() {
    let t = ImageEnv::new();
    ok(&t.run(&[], &["--name", "w", "test:1", "sh", "-c", CHANGES]));
    assert_eq!(ok(&t.launcher(&["diff", "w"])), DIFF);
    let before = t.layers();
    let id = ok(&t.launcher(&["commit", "w", "test:changed"])).trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id:?}");
    assert_eq!(t.layers(), before + 1, "one new layer");
    // The new image: the changes, and the base image's configuration (cmd, env, workdir).
    assert_eq!(ok(&t.run(&[], &["--rm", "test:changed", "sh", "-c", SEEN])), SEEN_OUT);
    assert_eq!(ok(&t.run(&[], &["--rm", "-w", "/", "test:changed"])), "hello from / as 0\n");
    // Committing again with no change stores nothing new: same layer, same image id.
    let again = ok(&t.launcher(&["commit", "w", "test:again"])).trim().to_string();
    assert_eq!(again, id);
    assert_eq!(t.layers(), before + 1, "no new layer");
    // --change and -m.
    let o = t.launcher(&[
        "commit",
        "-c",
        "CMD [\"cat\", \"/srv/app/only\"]",
        "-c",
        "ENV X=1",
        "-m",
        "msg",
        "w",
        "test:cmd",
    ]);
    let id2 = ok(&o).trim().to_string();
    assert_ne!(id2, id, "another configuration");
    assert_eq!(t.layers(), before + 1, "the same layer");
    assert_eq!(ok(&t.run(&[], &["--rm", "test:cmd"])), "only\n");
    assert!(ok(&t.run(&[], &["--rm", "test:cmd", "env"])).contains("X=1\n"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.store.join("images/test:cmd.json")).unwrap()).unwrap();
    assert_eq!(manifest["comment"], "msg", "{manifest}");
    // A container of the new image diffs against the new image: nothing yet.
    ok(&t.run(&[], &["--name", "w2", "test:changed", "true"]));
    assert_eq!(ok(&t.launcher(&["diff", "w2"])), "");
    // A bad change or name.
    let o = t.launcher(&["commit", "-c", "FROM x", "w", "test:bad"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("FROM"), "{}", stderr(&o));
    assert_eq!(code(&t.launcher(&["commit", "w", "Bad Name"])), 1);
    ok(&t.launcher(&["rm", "w", "w2"]));
    assert_no_leaks(&t.env.state, "diff and commit");
}

/// The container's counter, read through `cp` (a running container: through its own root).
fn counter(t: &ImageEnv, name: &str) -> u64 {
    let out = t.tmp().join("count");
    let _ = std::fs::remove_file(&out);
    // Not written yet: 0.
    let _ = t.launcher(&["cp", &format!("{name}:/tmp/count"), out.to_str().unwrap()]);
    std::fs::read_to_string(&out).unwrap_or_default().trim().parse().unwrap_or(0)
}

#[test]
fn commit_a_running_container_pauses_it() {
    let t = ImageEnv::new();
    let script = format!("{CHANGES} && i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done");
    ok(&t.run(&[], &["-d", "--name", "r", "test:1", "sh", "-c", &script]));
    wait_for("the counter", &mut || counter(&t, "r") > 2);
    // Without a limit the container has a controller-less v2 cgroup, for the freezer.
    let st = t.inspect("r");
    let dirs = st["cgroup"]["dirs"].as_array().unwrap().clone();
    let v2 = dirs.iter().find(|d| d[0] == true).unwrap_or_else(|| panic!("a v2 cgroup to freeze: {st}"));
    let v2 = PathBuf::from(v2[1].as_str().unwrap());
    assert!(st["cgroup"]["skipped"].as_str().unwrap().contains("no resource limit"), "{st}");
    // The freezer stops it for real (this is what commit does around its read of the upper).
    let cg = launcher::cgroups::Cgroup { dirs: vec![(true, v2.clone())], ..Default::default() };
    assert!(cg.freeze(Duration::from_secs(10)).unwrap());
    let frozen = counter(&t, "r");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&t, "r"), frozen, "frozen: the counter stands still");
    cg.thaw().unwrap();
    wait_for("the thaw", &mut || counter(&t, "r") > frozen);

    let id = ok(&t.launcher(&["commit", "r", "test:live"])).trim().to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    // Thawed after the commit: it goes on counting.
    let events = std::fs::read_to_string(v2.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 0"), "{events}");
    let after = counter(&t, "r");
    wait_for("the counter after commit", &mut || counter(&t, "r") > after);
    assert_eq!(t.inspect("r")["status"], "running");
    assert_eq!(ok(&t.run(&[], &["--rm", "test:live", "sh", "-c", SEEN])), SEEN_OUT);
    let n: u64 = ok(&t.run(&[], &["--rm", "test:live", "cat", "/tmp/count"])).trim().parse().unwrap();
    assert!(n > 0);
    assert!(ok(&t.launcher(&["diff", "r"])).contains("A /tmp/count\n"));
    // --pause=false: a snapshot of the live filesystem (after syncfs).
    ok(&t.launcher(&["commit", "--pause=false", "r", "test:live2"]));
    assert_eq!(ok(&t.run(&[], &["--rm", "test:live2", "sh", "-c", SEEN])), SEEN_OUT);
    ok(&t.launcher(&["rm", "-f", "r"]));
    assert!(!v2.exists(), "its cgroup is removed");

    // No cgroup to freeze: refused, unless --pause=false.
    ok(&t.run(&[], &["-d", "--name", "nocg", "--cgroups", "disabled", "test:1", "sleep", "1000"]));
    let o = t.launcher(&["commit", "nocg", "test:nocg"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("cannot pause container nocg") && stderr(&o).contains("--pause=false"),
        "{}",
        stderr(&o)
    );
    ok(&t.launcher(&["commit", "--pause=false", "nocg", "test:nocg"]));
    ok(&t.launcher(&["rm", "-f", "nocg"]));
    assert_no_leaks(&t.env.state, "commit of running containers");
}

/// `launcher ARGS...` in a private mount namespace without the cgroup v2 mount: a pure cgroup v1 host.
fn launcher_on_v1(t: &ImageEnv, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new("unshare");
    c.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"",
        "sh",
    ])
    .arg(env!("CARGO_BIN_EXE_launcher"))
    .args(args)
    .env("LAUNCHER_ROOT", &t.env.state)
    .env("LAYERFS_ROOT", &t.store)
    .stdin(std::process::Stdio::null());
    output(c)
}

/// The members of the pid namespace of process `init`.
fn pid_ns_members(init: i32) -> Vec<i32> {
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p: &i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l == ns))
        .collect();
    out.sort();
    out
}

/// Without a cgroup v2 hierarchy and without limits a container gets no cgroup at start (a v1 migration costs a
/// grace period); `commit` moves all its processes into a v1 freezer cgroup to pause it, removed at its end.
#[test]
fn commit_pauses_on_a_pure_v1_host() {
    let t = ImageEnv::new();
    let layout = launcher::cgroups::Layout::detect().unwrap();
    if !layout.hierarchies.iter().any(|h| h.controllers.iter().any(|c| c == "freezer")) {
        eprintln!("no cgroup v1 freezer hierarchy here: skipped");
        return;
    }
    let script = "sleep 1000 & sleep 1000 & i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done";
    ok(&launcher_on_v1(&t, &["run", "-d", "--name", "v1", "test:1", "sh", "-c", script]));
    wait_for("the counter", &mut || counter(&t, "v1") > 2);
    let st = t.inspect("v1");
    assert_eq!(st["cgroup"]["dirs"], serde_json::json!([]), "no cgroup joined at start: {st}");
    let freezer = PathBuf::from(st["cgroup"]["freezer_on_demand"].as_str().unwrap_or_else(|| panic!("{st}")));
    assert!(!freezer.exists(), "made by the first commit only");
    let init = st["pid"].as_i64().unwrap() as i32;

    ok(&launcher_on_v1(&t, &["commit", "v1", "test:v1"]));
    // Every process of the container is in the freezer cgroup, thawed again: it goes on counting.
    let members = pid_ns_members(init);
    assert!(members.len() >= 3, "init and two sleeps (and the counter's sleep, now and then): {members:?}");
    let procs = std::fs::read_to_string(freezer.join("cgroup.procs")).unwrap();
    let mut inside: Vec<i32> = procs.lines().map(|l| l.parse().unwrap()).collect();
    inside.sort();
    for p in pid_ns_members(init) {
        assert!(inside.contains(&p) || !Path::new(&format!("/proc/{p}")).exists(), "{p} not in {inside:?}");
    }
    assert_eq!(std::fs::read_to_string(freezer.join("freezer.state")).unwrap().trim(), "THAWED");
    let after = counter(&t, "v1");
    wait_for("the counter after commit", &mut || counter(&t, "v1") > after);
    // That cgroup freezes it for real.
    let cg = launcher::cgroups::Cgroup { dirs: vec![(false, freezer.clone())], ..Default::default() };
    assert!(cg.freeze(Duration::from_secs(10)).unwrap());
    let frozen = counter(&t, "v1");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&t, "v1"), frozen, "frozen: the counter stands still");
    cg.thaw().unwrap();
    // A second commit finds them inside already.
    ok(&launcher_on_v1(&t, &["commit", "v1", "test:v1b"]));
    assert_eq!(ok(&t.run(&[], &["--rm", "test:v1b", "sh", "-c", "test -s /tmp/count && echo counted"])), "counted\n");
    ok(&t.launcher(&["rm", "-f", "v1"]));
    assert!(!freezer.exists(), "its freezer cgroup is removed with the container");
    assert_no_leaks(&t.env.state, "commit on a pure v1 host");
}

/// A tar's entries: path -> (type, mode, uid, gid, size, link target, content).
type Tree = BTreeMap<String, (u8, u32, u64, u64, u64, Option<String>, Vec<u8>)>;

fn tree(tar_bytes: &[u8]) -> Tree {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = Tree::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().trim_end_matches('/').trim_start_matches("./").to_string();
        let h = e.header().clone();
        let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let v = (
            h.entry_type().as_byte(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.size().unwrap(),
            link,
            data,
        );
        out.insert(path, v);
    }
    out
}

#[test]
fn export_is_the_merged_view() {
    let t = ImageEnv::new();
    ok(&t.run(&[], &["--name", "e", "test:1", "sh", "-c", &format!("{CHANGES} && ln -s /srv/app/only /srv/link")]));
    let file = t.tmp().join("e.tar");
    ok(&t.launcher(&["export", "e", "-o", file.to_str().unwrap()]));
    let bytes = std::fs::read(&file).unwrap();
    // The same bytes to standard output.
    let o = t.launcher(&["export", "e"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(o.stdout, bytes);
    // tar accepts it, and it holds the changes.
    let x = t.tmp().join("x");
    std::fs::create_dir(&x).unwrap();
    let st = std::process::Command::new("tar").arg("-xf").arg(&file).arg("-C").arg(&x).status().unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read_to_string(x.join("etc/os-release")).unwrap(), "changed\n");
    assert_eq!(std::fs::read_to_string(x.join("srv/new-file")).unwrap(), "added\n");
    assert!(!x.join("etc/base-only").exists() && !x.join("srv/app/hello.txt").exists());
    assert_eq!(std::fs::read_link(x.join("srv/link")).unwrap(), Path::new("/srv/app/only"));
    assert!(x.join("bin/busybox").is_file());
    // Its tree equals the merged view of the committed image (the image's layers and the new one).
    ok(&t.launcher(&["commit", "e", "test:e"]));
    let store = tools::store::Store::open_existing(&t.store).unwrap();
    let image = store.image("test:e").unwrap();
    let layers = tools::open_image_layers(&store, &image).unwrap();
    let top: Vec<&tools::MappedLayer> = layers.iter().rev().collect();
    let (merged, _) = tools::export::export_merged(&top, Some(&store), Vec::new()).unwrap();
    let (a, b) = (tree(&bytes), tree(&merged));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{k}");
    }
    // The image's own files are all there.
    assert!(a.contains_key("etc/passwd") && a.contains_key("bin/sh") && !a.contains_key("etc/to-delete"));
    ok(&t.launcher(&["rm", "e"]));
    assert!(std::fs::read_dir(t.store.join("tmp")).unwrap().next().is_none(), "no temporary file left");
}

#[test]
fn cp_both_ways() {
    let t = ImageEnv::new();
    let h = t.tmp().join("host");
    std::fs::create_dir_all(h.join("dir/sub")).unwrap();
    std::fs::write(h.join("dir/sub/f"), "from host\n").unwrap();
    std::fs::write(h.join("file"), "host file\n").unwrap();
    let hs = |p: &str| h.join(p).to_str().unwrap().to_string();
    // Symlinks that point out of the container's root.
    let setup = "ln -s ../../../../../.. /srv/up && ln -s /etc /srv/etc-link && touch /tmp/ready && sleep 1000";
    ok(&t.run(&[], &["-d", "--name", "c", "test:1", "sh", "-c", setup]));
    wait_for("the links", &mut || ok(&t.launcher(&["diff", "c"])).contains("A /tmp/ready\n"));
    for running in [true, false] {
        let out = h.join(if running { "out-run" } else { "out-stopped" });
        std::fs::create_dir(&out).unwrap();
        let o = |p: &str| out.join(p).to_str().unwrap().to_string();
        // Container to host: a file to a new name, a file into a directory, a directory, its content (`/.`).
        ok(&t.launcher(&["cp", "c:/srv/app/hello.txt", &o("hello")]));
        assert_eq!(std::fs::read_to_string(out.join("hello")).unwrap(), "hello\n");
        ok(&t.launcher(&["cp", "c:/etc/os-release", &o("")]));
        assert_eq!(std::fs::read_to_string(out.join("os-release")).unwrap(), "NAME=layertest\n");
        ok(&t.launcher(&["cp", "c:/srv/app", &o("app-copy")]));
        assert_eq!(std::fs::read(out.join("app-copy/big")).unwrap(), vec![b'b'; 65536]);
        ok(&t.launcher(&["cp", "c:/srv/app", &o("")]));
        assert!(out.join("app/hello.txt").is_file());
        std::fs::create_dir(out.join("content")).unwrap();
        ok(&t.launcher(&["cp", "c:/srv/app/.", &o("content")]));
        assert!(out.join("content/hello.txt").is_file() && out.join("content/big").is_file());
        // Paths resolve inside the container: `..` and absolute symlinks stay in its root.
        ok(&t.launcher(&["cp", "c:/srv/up/etc/os-release", &o("via-up")]));
        assert_eq!(std::fs::read_to_string(out.join("via-up")).unwrap(), "NAME=layertest\n");
        ok(&t.launcher(&["cp", "c:/../../../../etc/base-only", &o("dotdot")]));
        assert_eq!(std::fs::read_to_string(out.join("dotdot")).unwrap(), "base\n");
        // A symlink is copied as itself.
        ok(&t.launcher(&["cp", "c:/srv/etc-link", &o("link")]));
        assert_eq!(std::fs::read_link(out.join("link")).unwrap(), Path::new("/etc"));
        // Host to container: a file, into a directory through a symlink (the container's /etc), a directory.
        let tag = if running { "run" } else { "stopped" };
        ok(&t.launcher(&["cp", &hs("file"), &format!("c:/srv/file-{tag}")]));
        ok(&t.launcher(&["cp", &hs("file"), &format!("c:/srv/etc-link/{tag}")]));
        ok(&t.launcher(&["cp", &hs("dir"), &format!("c:/srv/up/tmp/dir-{tag}")]));
        assert!(!Path::new(&format!("/etc/{tag}")).exists() && !Path::new(&format!("/tmp/dir-{tag}")).exists());
        // A directory onto a file is refused; a missing parent too.
        assert_eq!(code(&t.launcher(&["cp", &hs("dir"), "c:/etc/os-release"])), 1);
        assert_eq!(code(&t.launcher(&["cp", "c:/nosuch", &o("x")])), 1);
        assert_eq!(code(&t.launcher(&["cp", &hs("file"), "c:/nosuch/dir/x"])), 1);
        // `-`: a tar stream of the source.
        let o = t.launcher(&["cp", "c:/srv/app", "-"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let entries = tree(&o.stdout);
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["app", "app/big", "app/hello.txt"]);
        if running {
            ok(&t.launcher(&["stop", "-t", "1", "c"]));
        }
    }
    // What was copied in is in the container's changes (both times: running, then stopped and mounted).
    let diff = ok(&t.launcher(&["diff", "c"]));
    for p in
        ["/srv/file-run", "/srv/file-stopped", "/etc/run", "/etc/stopped", "/tmp/dir-run/sub/f", "/tmp/dir-stopped"]
    {
        assert!(diff.contains(&format!("A {p}\n")), "{p}: {diff}");
    }
    ok(&t.launcher(&["commit", "c", "test:cp"]));
    let seen = ok(&t.run(&[], &["--rm", "test:cp", "cat", "/srv/file-stopped", "/etc/run", "/tmp/dir-stopped/sub/f"]));
    assert_eq!(seen, "host file\nhost file\nfrom host\n");
    ok(&t.launcher(&["rm", "c"]));
    assert_no_leaks(&t.env.state, "cp");
}

#[test]
fn errors() {
    let t = ImageEnv::new();
    let out = t.tmp().join("out");
    let o = out.to_str().unwrap();
    for args in [
        vec!["diff", "nosuch"],
        vec!["commit", "nosuch", "x:1"],
        vec!["export", "nosuch"],
        vec!["cp", "nosuch:/etc", o],
        vec!["cp", o, "nosuch:/etc"],
    ] {
        let r = t.launcher(&args);
        assert_eq!(code(&r), 1, "{args:?}");
        assert_eq!(stderr(&r), "launcher: No such container: nosuch\n", "{args:?}");
    }
    // A --rootfs container has no image to diff against: a clear error; cp works on its directory.
    ok(&t.env.run(&["--name", "rf"], &["sh", "-c", "echo x > /tmp/rf"]));
    for cmd in ["diff", "commit", "export"] {
        let mut args = vec![cmd, "rf"];
        if cmd == "commit" {
            args.push("x:1");
        }
        let r = t.launcher(&args);
        assert_eq!(code(&r), 1);
        assert!(stderr(&r).contains("runs on a directory (--rootfs), not an image"), "{}", stderr(&r));
    }
    ok(&t.launcher(&["cp", "rf:/tmp/rf", o]));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "x\n");
    // Between containers, or no container at all.
    assert_eq!(code(&t.launcher(&["cp", "rf:/a", "rf:/b"])), 1);
    assert_eq!(code(&t.launcher(&["cp", o, "/tmp/x"])), 1);
    // Usage errors are clap's (125).
    assert_eq!(code(&t.launcher(&["commit", "rf"])), 125);
    ok(&t.launcher(&["rm", "rf"]));
}
