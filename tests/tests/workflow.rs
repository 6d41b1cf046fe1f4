//! The change-management workflow of the README, end to end on the Debian image, with the real binaries:
//! import → run a container that changes the tree → diff → commit → run the new image → export → re-import the
//! export → its tree equals the committed image's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

struct Tools {
    store: std::path::PathBuf,
    state: std::path::PathBuf,
}

impl Tools {
    fn cmd(&self, bin: &str, args: &[&str]) -> Output {
        let out = Command::new(integration_tests::workspace_bin(bin))
            .args(args)
            .env("LAYERFS_ROOT", &self.store)
            .env("LAUNCHER_ROOT", &self.state)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn text(&self, bin: &str, args: &[&str]) -> String {
        String::from_utf8(self.cmd(bin, args).stdout).unwrap()
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        let _ = Command::new(integration_tests::workspace_bin("launcher"))
            .args(["rm", "-f", "work"])
            .env("LAUNCHER_ROOT", &self.state)
            .output();
    }
}

/// An entry of a tar: type, mode, uid, gid, mtime, link target, SHA-256 of the content.
type Entry = (u8, u32, u64, u64, u64, Option<String>, [u8; 32]);

/// A tar's entries by path.
fn tree(tar: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).trim_end_matches('/').trim_start_matches("./").to_string();
        let h = e.header().clone();
        let link = e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = e.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        let v = (
            h.entry_type().as_byte(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
            link,
            hash.finalize().into(),
        );
        out.insert(path, v);
    }
    out
}

#[test]
fn import_run_diff_commit_export_reimport() {
    assert!(nix_is_root(), "this test runs containers: it needs root (CI runs it as root)");
    let tarball = integration_tests::debian_tarball();
    let dir = tempfile::tempdir().unwrap();
    let t = Tools { store: dir.path().join("store"), state: dir.path().join("state") };
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();

    // The README's walkthrough.
    t.cmd("layertool", &["import", tarball.to_str().unwrap(), "--tag", "debian:12", "-q"]);
    let script = "echo hello > /srv/greeting && rm /etc/motd && echo '# edited' >> /etc/issue";
    t.cmd("launcher", &["run", "--name", "work", "debian:12", "sh", "-c", script]);
    let start = Instant::now();
    let diff = t.text("launcher", &["diff", "work"]);
    let diff_time = start.elapsed();
    assert_eq!(diff, "C /etc\nC /etc/issue\nD /etc/motd\nC /srv\nA /srv/greeting\n");
    let start = Instant::now();
    let id = t.text("launcher", &["commit", "-c", "CMD [\"cat\", \"/srv/greeting\"]", "work", "greeted:1"]);
    let commit_time = start.elapsed();
    assert!(id.starts_with("sha256:"), "{id}");
    eprintln!("launcher diff: {diff_time:?}, launcher commit: {commit_time:?} (Debian image, 3 changes)");
    assert_eq!(t.text("launcher", &["run", "--rm", "greeted:1"]), "hello\n");
    let seen = t.text(
        "launcher",
        &["run", "--rm", "greeted:1", "sh", "-c", "tail -1 /etc/issue; test -e /etc/motd || echo gone"],
    );
    assert_eq!(seen, "# edited\ngone\n");
    t.cmd("launcher", &["export", "work", "-o", &p("work.tar")]);
    t.cmd("layertool", &["import", &p("work.tar"), "--tag", "work:exported", "-q"]);
    t.cmd("launcher", &["cp", "work:/srv/greeting", &p("greeting")]);
    assert_eq!(std::fs::read_to_string(p("greeting")).unwrap(), "hello\n");

    // The re-imported export is the committed image, entry for entry.
    t.cmd("layertool", &["export", "greeted:1", "-o", &p("greeted.tar")]);
    t.cmd("layertool", &["export", "work:exported", "-o", &p("exported.tar")]);
    let (a, b) = (tree(Path::new(&p("greeted.tar"))), tree(Path::new(&p("exported.tar"))));
    assert!(a.len() > 10_000, "the whole image: {}", a.len());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{k}");
    }
    assert!(a.contains_key("srv/greeting") && !a.contains_key("etc/motd"));
    t.cmd("launcher", &["rm", "work"]);
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
