//! Images made by real tools: a two-layer OCI image built with umoci (real gzip layers, real
//! whiteouts and opaque directories), then copied by skopeo into a `docker save`-style archive
//! and an OCI archive; each is imported and checked.

use std::path::Path;
use std::process::Command;

use format_spec::{Kind, VerifyOptions};
use indicatif::ProgressBar;
use tools::import::{ImportOptions, import};
use tools::store::{Store, parse_digest};
use tools::{MappedLayer, open_layer};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed? scripts/deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lookup(layer: &MappedLayer, path: &str) -> Option<format_spec::DirEntry<'static>> {
    let mut cur = layer.inode(layer.root()).unwrap();
    let mut last = None;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let e = layer.lookup(&cur, c.as_bytes()).unwrap()?;
        last = Some(format_spec::DirEntry { name: &[], kind: e.kind, ino: e.ino, index: e.index });
        if e.kind != Kind::Whiteout {
            cur = layer.inode(e.ino).unwrap();
        }
    }
    last
}

/// Builds `oci:demo:v1` (busybox-like base) and `oci:demo:v2` (changes on top) with umoci.
fn build_umoci_image(dir: &Path) {
    let oci = dir.join("oci");
    let bundle = dir.join("bundle");
    run(Command::new("umoci").args(["init", "--layout"]).arg(&oci));
    run(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:v1", oci.display())));
    run(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:v1", oci.display())).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc/conf.d", "var/cache/apt", "usr/share/doc/pkg"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("etc/os-release"), "NAME=demo\n").unwrap();
    std::fs::write(rootfs.join("etc/conf.d/a.conf"), "a=1\n").unwrap();
    std::fs::write(rootfs.join("var/cache/apt/pkgcache.bin"), vec![1u8; 200_000]).unwrap();
    std::fs::write(rootfs.join("usr/share/doc/pkg/README"), "old docs\n").unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::hard_link(rootfs.join("etc/os-release"), rootfs.join("etc/os-release.link")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--refresh-bundle", "--image"])
        .arg(format!("{}:v1", oci.display()))
        .arg(&bundle));
    run(Command::new("umoci").args(["config", "--image"]).arg(format!("{}:v1", oci.display())).args([
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "DEMO=1",
        "--config.workingdir",
        "/etc",
    ]));
    // v2: delete a file, replace a directory, add files.
    std::fs::remove_file(rootfs.join("var/cache/apt/pkgcache.bin")).unwrap();
    std::fs::remove_dir_all(rootfs.join("usr/share/doc/pkg")).unwrap();
    std::fs::create_dir_all(rootfs.join("usr/share/doc/pkg")).unwrap();
    std::fs::write(rootfs.join("usr/share/doc/pkg/NEW"), "new docs\n").unwrap();
    std::fs::write(rootfs.join("etc/conf.d/b.conf"), "b=2\n").unwrap();
    // Repack the modified tree as v2 on top of v1 (umoci diffs the bundle against its mtree).
    run(Command::new("umoci").args(["repack", "--image"]).arg(format!("{}:v2", oci.display())).arg(&bundle));
}

fn check_v2(store: &Store, image: &str) {
    let img = store.image(image).unwrap();
    assert!(img.layers.len() >= 2, "{image}: {:?}", img.layers);
    let layers: Vec<MappedLayer> =
        img.layers.iter().map(|l| open_layer(&store.layer_path(&parse_digest(l).unwrap())).unwrap()).collect();
    for l in &layers {
        l.verify(VerifyOptions { data: true }).unwrap();
    }
    let base = &layers[layers.len() - 2];
    let top = &layers[layers.len() - 1];
    assert_eq!(lookup(base, "bin/sh").unwrap().kind, Kind::Symlink);
    let osr = base.inode(lookup(base, "etc/os-release").unwrap().ino).unwrap();
    assert_eq!(osr.nlink, 2, "hard link kept");
    assert_eq!(lookup(top, "var/cache/apt/pkgcache.bin").unwrap().kind, Kind::Whiteout, "deleted file");
    let doc = lookup(top, "usr/share/doc/pkg").unwrap();
    let doc_inode = top.inode(doc.ino).unwrap();
    let replaced =
        doc_inode.is_opaque() || lookup(top, "usr/share/doc/pkg/README").is_some_and(|e| e.kind == Kind::Whiteout);
    assert!(replaced, "a replaced directory hides the old content");
    assert!(lookup(top, "usr/share/doc/pkg/NEW").is_some());
    assert!(lookup(top, "etc/conf.d/b.conf").is_some());
}

#[test]
fn umoci_and_skopeo_images_import() {
    let dir = tempfile::tempdir().unwrap();
    build_umoci_image(dir.path());
    let store = Store::open(dir.path().join("store")).unwrap();
    let pb = ProgressBar::hidden();
    let oci = dir.path().join("oci");

    let v1 = import(&store, &oci, "demo:v1", &ImportOptions::default(), &pb).unwrap();
    assert_eq!(v1.image.config.cmd, vec!["/bin/sh"]);
    assert!(v1.image.config.env.iter().any(|e| e == "DEMO=1"));
    assert_eq!(v1.image.config.working_dir, "/etc");
    import(&store, &oci, "demo:v2", &ImportOptions::default(), &pb).unwrap();
    check_v2(&store, "demo:v2");

    // skopeo: docker-archive (docker save format) and oci-archive.
    let docker = dir.path().join("docker.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v2", oci.display()))
        .arg(format!("docker-archive:{}:demo:v2", docker.display())));
    let d = import(&store, &docker, "docker-demo:v2", &ImportOptions::default(), &pb).unwrap();
    check_v2(&store, "docker-demo:v2");
    let ociar = dir.path().join("oci-archive.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v2", oci.display()))
        .arg(format!("oci-archive:{}:v2", ociar.display())));
    let o = import(&store, &ociar, "ociar-demo:v2", &ImportOptions::default(), &pb).unwrap();
    check_v2(&store, "ociar-demo:v2");
    // Same layer contents through every route: the same packed layers.
    let v2 = store.image("demo:v2").unwrap();
    assert_eq!(o.image.layers, v2.layers);
    assert_eq!(d.image.layers, v2.layers, "docker-archive layers are uncompressed but convert identically");
}
