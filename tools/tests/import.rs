//! layertool on synthetic tarballs and images: every entry type checked against the source,
//! hostile archives, OCI layouts, docker save archives, the store and its garbage collection.

mod common;

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use format_spec::{Kind, VerifyOptions};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use tools::import::{ImportOptions, convert_file, import};
use tools::store::{Store, digest_string, parse_digest};
use tools::{MappedLayer, open_layer};

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

/// A tar builder with helpers for every entry type.
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Self {
        Tar { b: tar::Builder::new(Vec::new()) }
    }
    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }
    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    fn device(&mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = header(kind, 0o660, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b.append_pax_extensions(records.iter().map(|(k, v)| (*k, *v))).unwrap();
        self
    }
    /// A raw header whose name is written verbatim (no normalisation by the tar crate).
    fn raw_name(&mut self, name: &[u8], kind: tar::EntryType, data: &[u8], link: Option<&[u8]>) -> &mut Self {
        let mut h = header(kind, 0o644, data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

fn convert_bytes(tar: &[u8]) -> Result<(MappedLayer, tempfile::TempDir), tools::ImportError> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tar");
    std::fs::write(&input, tar).unwrap();
    let out = dir.path().join("out.lpk");
    let f = std::fs::File::create(&out).unwrap();
    convert_file(&input, f, &ProgressBar::hidden())?;
    let mut perm = std::fs::metadata(&out).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
    std::fs::set_permissions(&out, perm).unwrap();
    Ok((open_layer(&out).unwrap(), dir))
}

fn resolve(layer: &MappedLayer, path: &str) -> Option<format_spec::DirEntry<'static>> {
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

fn read_all(layer: &MappedLayer, path: &str) -> Vec<u8> {
    let e = resolve(layer, path).unwrap_or_else(|| panic!("{path} missing"));
    let inode = layer.inode(e.ino).unwrap();
    let mut v = vec![0; inode.size as usize];
    layer.read(&inode, 0, &mut v).unwrap();
    v
}

/// Checks every entry of a (well-formed) tarball against the packed layer.
fn check_against_source(tar_bytes: &[u8], layer: &MappedLayer) {
    let mut ar = tar::Archive::new(Cursor::new(tar_bytes));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let h = e.header().clone();
        let ent = resolve(layer, &path).unwrap_or_else(|| panic!("{path} missing from the layer"));
        let inode = layer.inode(ent.ino).unwrap();
        assert_eq!(inode.mode & 0o7777, h.mode().unwrap() & 0o7777, "{path} mode");
        assert_eq!(inode.uid as u64, h.uid().unwrap(), "{path} uid");
        assert_eq!(inode.gid as u64, h.gid().unwrap(), "{path} gid");
        assert_eq!(inode.mtime.sec as u64, h.mtime().unwrap(), "{path} mtime");
        match h.entry_type() {
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                assert_eq!(read_all(layer, &path), data, "{path} content");
            }
            tar::EntryType::Directory => assert!(inode.is_dir()),
            tar::EntryType::Symlink => {
                assert_eq!(layer.readlink(&inode).unwrap(), &*e.link_name_bytes().unwrap(), "{path}")
            }
            tar::EntryType::Char => {
                assert_eq!(inode.rdev(), Some((h.device_major().unwrap().unwrap(), h.device_minor().unwrap().unwrap())))
            }
            _ => {}
        }
    }
}

#[test]
fn every_entry_type_matches_the_source() {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut sparse = vec![0u8; 8 << 20];
    sparse[4 << 20] = 1;
    let mut t = Tar::new();
    t.dir("etc/", 0o755)
        .file("etc/hostname", b"box\n")
        .file("etc/empty", b"")
        .file("big", &big)
        .file("sparse", &sparse)
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .hardlink("etc/hostname.bak", "etc/hostname")
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("dev/loop0", tar::EntryType::Block, 7, 0)
        .device("run/initctl", tar::EntryType::Fifo, 0, 0)
        .dir("tmp/", 0o1777)
        .pax(&[
            ("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            ("SCHILY.xattr.user.x", b"y"),
            ("mtime", b"1600000000.25"),
            ("atime", b"1600000001.5"),
        ])
        .file("usr/bin/ping", b"\x7fELF")
        .file(&format!("long/{}", "n".repeat(255)), b"long name")
        .file(&((0..100).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/") + "/deep"), b"deep");
    let bytes = t.bytes();
    let (layer, _d) = convert_bytes(&bytes).unwrap();
    let stats = layer.verify(VerifyOptions { data: true }).unwrap();
    check_against_source(&bytes, &layer);
    assert_eq!(stats.hardlinks, 1);
    let h = layer.inode(resolve(&layer, "etc/hostname").unwrap().ino).unwrap();
    assert_eq!(h.nlink, 2);
    let ping = layer.inode(resolve(&layer, "usr/bin/ping").unwrap().ino).unwrap();
    assert_eq!(layer.xattr(&ping, b"user.x").unwrap(), Some(&b"y"[..]));
    assert_eq!(layer.xattr(&ping, b"security.capability").unwrap().unwrap().len(), 20);
    assert_eq!(ping.mtime.nsec, 250_000_000);
    assert_eq!(layer.times(&ping).0.nsec, 500_000_000);
    let sp = layer.inode(resolve(&layer, "sparse").unwrap().ino).unwrap();
    assert_eq!(sp.allocated_bytes(), 4096, "holes are not stored");
    assert_eq!(resolve(&layer, "tmp").map(|e| layer.inode(e.ino).unwrap().mode), Some(0o41777));
    // Diff id = SHA-256 of the tar.
    assert_eq!(layer.header().source_digest, <[u8; 32]>::from(Sha256::digest(&bytes)));
}

#[test]
fn whiteouts_and_opaque_directories() {
    let mut t = Tar::new();
    t.dir("usr/", 0o755)
        .file("usr/.wh.gone", b"")
        .dir("var/", 0o755)
        .file("var/.wh..wh..opq", b"")
        .file("var/new", b"n")
        .file(".wh.top", b"")
        .file("keep", b"k")
        .file(".wh.keep", b"");
    let (layer, _d) = convert_bytes(&t.bytes()).unwrap();
    layer.verify(VerifyOptions { data: true }).unwrap();
    assert_eq!(resolve(&layer, "usr/gone").unwrap().kind, Kind::Whiteout);
    assert_eq!(resolve(&layer, "top").unwrap().kind, Kind::Whiteout);
    assert!(resolve(&layer, "usr/.wh.gone").is_none(), "whiteout markers never become files");
    assert!(resolve(&layer, "var/.wh..wh..opq").is_none());
    assert!(layer.inode(resolve(&layer, "var").unwrap().ino).unwrap().is_opaque());
    assert_eq!(read_all(&layer, "var/new"), b"n");
    assert_eq!(read_all(&layer, "keep"), b"k", "a whiteout hides only lower layers");
}

#[test]
fn hostile_archives_are_normalised_or_refused() {
    // Absolute paths and inner `..` are normalised (and reported).
    let mut t = Tar::new();
    t.raw_name(b"/etc/passwd", tar::EntryType::Regular, b"root", None);
    t.raw_name(b"a/../b", tar::EntryType::Regular, b"b", None);
    let (layer, _d) = convert_bytes(&t.bytes()).unwrap();
    assert_eq!(read_all(&layer, "etc/passwd"), b"root");
    assert_eq!(read_all(&layer, "b"), b"b");

    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("escape", {
            let mut t = Tar::new();
            t.raw_name(b"../../etc/shadow", tar::EntryType::Regular, b"x", None);
            t.bytes()
        }),
        ("hardlink to a missing entry", {
            let mut t = Tar::new();
            t.hardlink("a", "nowhere");
            t.bytes()
        }),
        ("hardlink escaping", {
            let mut t = Tar::new();
            t.raw_name(b"h", tar::EntryType::Link, b"", Some(b"../../../etc/shadow"));
            t.bytes()
        }),
        ("symlinked prefix", {
            let mut t = Tar::new();
            t.symlink("evil", "/etc").file("evil/passwd", b"pwned");
            t.bytes()
        }),
        ("over-long name", {
            let mut t = Tar::new();
            t.file(&"n".repeat(256), b"x");
            t.bytes()
        }),
        ("truncated", {
            let mut t = Tar::new();
            t.file("f", &[1u8; 100_000]);
            let b = t.bytes();
            b[..50_000].to_vec()
        }),
    ];
    for (what, bytes) in refused {
        let err = convert_bytes(&bytes).err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(!err.to_string().is_empty(), "{what}");
    }
}

#[test]
fn duplicates_follow_tar_semantics() {
    let mut t = Tar::new();
    t.file("f", b"one").file("f", b"two").dir("d/", 0o700).file("d/x", b"x").dir("d/", 0o750);
    let (layer, _d) = convert_bytes(&t.bytes()).unwrap();
    assert_eq!(read_all(&layer, "f"), b"two");
    assert_eq!(read_all(&layer, "d/x"), b"x");
    assert_eq!(layer.inode(resolve(&layer, "d").unwrap().ino).unwrap().mode, 0o40750);
}

#[test]
fn conversion_is_deterministic_and_compressed_inputs_match() {
    let mut t = Tar::new();
    for i in 0..50 {
        t.file(&format!("dir{}/f{i}", i % 7), format!("content {i}").repeat(i * 100).as_bytes());
    }
    let bytes = t.bytes();
    let (a, _d1) = convert_bytes(&bytes).unwrap();
    let (b, _d2) = convert_bytes(&bytes).unwrap();
    assert_eq!(a.bytes(), b.bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    let (c, _d3) = convert_bytes(&gz.finish().unwrap()).unwrap();
    assert_eq!(a.bytes(), c.bytes());
    let zst = zstd::encode_all(&bytes[..], 1).unwrap();
    let (d, _d4) = convert_bytes(&zst).unwrap();
    assert_eq!(a.bytes(), d.bytes());
}

#[test]
fn gnu_tar_sparse_files() {
    // GNU tar writes real sparse archives (old GNU format and PAX 1.0).
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 32 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", (64 << 20) - 3).unwrap();
    drop(f);
    for format in ["gnu", "posix"] {
        let out = Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-cf", "-", "-C"])
            .arg(&src)
            .arg("sparse")
            .output()
            .expect("GNU tar is installed");
        assert!(out.status.success());
        assert!(out.stdout.len() < 1 << 20, "{format}: tar did not write a sparse archive");
        let (layer, _d) = convert_bytes(&out.stdout).unwrap();
        let content = read_all(&layer, "sparse");
        assert_eq!(content.len(), 64 << 20, "{format}");
        assert_eq!(&content[32 << 20..(32 << 20) + 6], b"middle", "{format}");
        assert_eq!(&content[(64 << 20) - 3..], b"end", "{format}");
        let inode = layer.inode(resolve(&layer, "sparse").unwrap().ino).unwrap();
        assert_eq!(inode.allocated_bytes(), 2 * 4096, "{format}");
    }
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Writes an OCI image layout with the given layer tarballs (gzip-compressed).
fn write_oci_layout(dir: &Path, layers: &[Vec<u8>], tag: &str) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |b: &[u8]| -> String {
        let d = sha(b);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), b).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(l).unwrap();
        let gz = gz.finish().unwrap();
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(&gz), "size": gz.len()}));
        diff_ids.push(sha(l));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/bin", "A=b"], "Cmd": ["/bin/sh", "-c", "echo hi"], "WorkingDir": "/srv", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let cb = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&cb), "size": cb.len()},
        "layers": descs
    });
    let mb = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(&mb), "size": mb.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn two_layers() -> Vec<Vec<u8>> {
    let shared = vec![42u8; 100_000];
    let mut base = Tar::new();
    base.dir("etc/", 0o755)
        .file("etc/os-release", b"base\n")
        .file("usr/lib/libbig.so", &shared)
        .file("usr/lib/gone", b"g");
    let mut top = Tar::new();
    top.file("usr/lib/.wh.gone", b"").file("app/copy-of-big", &shared).file("etc/os-release", b"top\n");
    vec![base.bytes(), top.bytes()]
}

fn store_in(dir: &Path) -> Store {
    Store::open(dir.join("store")).unwrap()
}

#[test]
fn oci_layout_import_shares_objects_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    write_oci_layout(&layout, &two_layers(), "v1");
    let store = store_in(dir.path());
    let pb = ProgressBar::hidden();
    let rep = import(&store, &layout, "demo:v1", &ImportOptions::default(), &pb).unwrap();
    assert_eq!(rep.image.layers.len(), 2);
    assert!(rep.layers.iter().all(|l| l.new));
    assert_eq!(rep.image.config.cmd, vec!["/bin/sh", "-c", "echo hi"]);
    assert_eq!(rep.image.config.working_dir, "/srv");
    assert_eq!(rep.image.config.user, "1000:1000");
    assert_eq!(rep.image.created.as_deref(), Some("2026-01-02T03:04:05Z"));
    // The 100 kB content appears in both layers and is stored once, as an object.
    let objects: Vec<_> = walk(&store.objects_dir());
    assert_eq!(objects.len(), 1, "{objects:?}");
    let obj_meta = std::fs::metadata(&objects[0]).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&obj_meta.permissions()) & 0o777, 0o444);
    for l in &rep.image.layers {
        let layer = open_layer(&store.layer_path(&parse_digest(l).unwrap())).unwrap();
        layer.verify(VerifyOptions { data: true }).unwrap();
    }
    // Again: nothing new is stored, nothing converted.
    let before = walk(store.root());
    let rep2 = import(&store, &layout, "demo:v1", &ImportOptions::default(), &pb).unwrap();
    assert!(rep2.layers.iter().all(|l| !l.new && l.cached));
    assert_eq!(rep2.image, rep.image);
    assert_eq!(walk(store.root()), before);
    // The top layer's whiteout is a whiteout.
    let top = open_layer(&store.layer_path(&parse_digest(&rep.image.layers[1]).unwrap())).unwrap();
    assert_eq!(resolve(&top, "usr/lib/gone").unwrap().kind, Kind::Whiteout);
}

#[test]
fn corrupt_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    write_oci_layout(&layout, &two_layers(), "v1");
    // Replace the base layer's blob by another valid gzip stream with a different digest.
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdig = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&mdig[7..])).unwrap()).unwrap();
    let l0 = manifest["layers"][0]["digest"].as_str().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&Tar::new().bytes()).unwrap();
    std::fs::write(layout.join("blobs/sha256").join(&l0[7..]), gz.finish().unwrap()).unwrap();
    let store = store_in(dir.path());
    let err = import(&store, &layout, "bad:v1", &ImportOptions::default(), &ProgressBar::hidden()).unwrap_err();
    assert!(err.to_string().contains("digest"), "{err}");
    assert!(store.image("bad:v1").is_err(), "no manifest for a failed import");
    assert!(walk(&store.root().join("tmp")).is_empty(), "no temporary file left behind");
}

#[test]
fn docker_save_archive_import() {
    let layers = two_layers();
    let mut ar = Tar::new();
    let mut names = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        ar.file(&name, l);
        names.push(name);
        diff_ids.push(sha(l));
    }
    let config =
        serde_json::json!({"config": {"Cmd": ["/bin/true"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    ar.file("cfg.json", &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["demo:latest"], "Layers": names}]);
    ar.file("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("save.tar");
    std::fs::write(&path, ar.bytes()).unwrap();
    let store = store_in(dir.path());
    let rep = import(&store, &path, "saved", &ImportOptions::default(), &ProgressBar::hidden()).unwrap();
    assert_eq!(rep.image.name, "saved:latest");
    assert_eq!(rep.image.layers.len(), 2);
    assert_eq!(rep.image.config.cmd, vec!["/bin/true"]);
    assert_eq!(rep.image.diff_ids, diff_ids);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if !p.ends_with("lock") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn layertool(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_layertool")).arg("--root").arg(root).args(args).output().unwrap()
}

#[test]
fn cli_import_ls_cat_verify_rmi() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut t = Tar::new();
    t.dir("etc/", 0o755).file("etc/motd", b"hello\n").file("usr/big", &vec![7u8; 50_000]).file("usr/.wh.old", b"");
    let tarball = dir.path().join("rootfs.tar");
    std::fs::write(&tarball, t.bytes()).unwrap();
    let out = layertool(&root, &["import", tarball.to_str().unwrap(), "--tag", "mini:1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = layertool(&root, &["images"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("mini:1"));
    let store = Store::open_existing(&root).unwrap();
    let img = store.image("mini:1").unwrap();
    let lpk = store.layer_path(&parse_digest(&img.layers[0]).unwrap());
    let lpk = lpk.to_str().unwrap();
    let out = layertool(&root, &["ls", lpk, "/usr"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.contains("old (whiteout)"), "{ls}");
    assert!(ls.contains("big (object)"), "{ls}");
    let out = layertool(&root, &["cat", lpk, "etc/motd"]);
    assert_eq!(out.stdout, b"hello\n");
    let out = layertool(&root, &["cat", lpk, "usr/big"]);
    assert_eq!(out.stdout, vec![7u8; 50_000]);
    assert!(layertool(&root, &["verify", "mini:1"]).status.success());
    // Corrupt the object: verify names it and fails.
    let obj = walk(&store.objects_dir()).pop().unwrap();
    let mut perm = std::fs::metadata(&obj).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&obj, perm).unwrap();
    std::fs::write(&obj, vec![8u8; 50_000]).unwrap();
    let out = layertool(&root, &["verify", "mini:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("corrupt"));
    let out = layertool(&root, &["inspect", "mini:1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&digest_string(&parse_digest(&img.layers[0]).unwrap())));
    // rmi removes the image, its layer and its object.
    let out = layertool(&root, &["rmi", "mini:1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(walk(&root.join("layers")).is_empty());
    assert!(walk(&root.join("objects")).is_empty());
    assert!(!layertool(&root, &["rmi", "mini:1"]).status.success());
}

#[test]
fn rmi_keeps_what_other_images_share() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    write_oci_layout(&layout, &two_layers(), "v1");
    let store = store_in(dir.path());
    let pb = ProgressBar::hidden();
    let a = import(&store, &layout, "a", &ImportOptions::default(), &pb).unwrap();
    // b: only the base layer.
    let base_only = dir.path().join("oci-base");
    write_oci_layout(&base_only, &two_layers()[..1], "v1");
    let b = import(&store, &base_only, "b", &ImportOptions::default(), &pb).unwrap();
    assert_eq!(a.image.layers[0], b.image.layers[0]);
    let _lock = store.lock_exclusive().unwrap();
    store.remove_image("a").unwrap();
    let gc = store.collect_garbage().unwrap();
    assert_eq!(gc.layers, 1);
    let base = open_layer(&store.layer_path(&parse_digest(&b.image.layers[0]).unwrap())).unwrap();
    for (_, d) in base.external_files().unwrap() {
        assert!(store.object_path(&d).is_file(), "shared object removed");
    }
}

/// Everything observable of an image's merged tree, by path.
fn merged_tree(store: &Store, image: &str) -> std::collections::BTreeMap<Vec<u8>, String> {
    use tools::merged::MergedView;
    let img = store.image(image).unwrap();
    let layers = tools::open_image_layers(store, &img).unwrap();
    let view = MergedView::new(layers.iter().rev().collect());
    let mut out = std::collections::BTreeMap::new();
    let mut links: std::collections::HashMap<tools::merged::Source, Vec<u8>> = Default::default();
    let mut stack = vec![(Vec::new(), view.root().unwrap())];
    while let Some((path, dir)) = stack.pop() {
        for e in view.read_dir(&dir).unwrap() {
            let mut p = path.clone();
            p.push(b'/');
            p.extend_from_slice(&e.name);
            let layer = view.layers()[e.source.layer];
            let inode = view.inode(e.source).unwrap();
            let content = match inode.kind() {
                Kind::File => {
                    let mut r = tools::export::file_reader(layer, &inode, Some(store)).unwrap();
                    let mut h = Sha256::new();
                    std::io::copy(&mut r, &mut h).unwrap();
                    hex::encode(h.finalize())
                }
                Kind::Symlink => String::from_utf8_lossy(layer.readlink(&inode).unwrap()).into_owned(),
                _ => format!("{:?}", inode.rdev()),
            };
            let link = if inode.nlink > 1 && !inode.is_dir() {
                links.entry(e.source).or_insert_with(|| p.clone()).clone()
            } else {
                Vec::new()
            };
            let xattrs: Vec<_> =
                layer.xattrs(&inode).unwrap().into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            out.insert(
                p.clone(),
                format!(
                    "{:?} {:o} {}:{} {:?} size={} {content} link={} xattrs={xattrs:?}",
                    inode.kind(),
                    inode.mode,
                    inode.uid,
                    inode.gid,
                    inode.mtime,
                    if inode.is_dir() { 0 } else { inode.size },
                    String::from_utf8_lossy(&link)
                ),
            );
            if let Some(d) = e.dir {
                stack.push((p, d));
            }
        }
    }
    out
}

fn rich_layers() -> Vec<Vec<u8>> {
    let mut layers = two_layers();
    let mut t = Tar::new();
    t.dir("opt/", 0o755)
        .file("opt/a", b"a")
        .hardlink("opt/a-link", "opt/a")
        .symlink("opt/s", "a")
        .device("opt/null", tar::EntryType::Char, 1, 3)
        .pax(&[("SCHILY.xattr.user.k", b"v"), ("mtime", b"1700000000.123456789")])
        .file("opt/x", b"x")
        .dir("usr/lib/", 0o755)
        .file("usr/lib/.wh..wh..opq", b"")
        .file("usr/lib/only", b"only");
    layers.push(t.bytes());
    layers
}

#[test]
fn export_save_flatten_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    write_oci_layout(&layout, &rich_layers(), "v1");
    let store = store_in(dir.path());
    let pb = ProgressBar::hidden();
    import(&store, &layout, "orig", &ImportOptions::default(), &pb).unwrap();
    let orig = merged_tree(&store, "orig");
    assert!(!orig.contains_key(&b"/usr/lib/gone"[..]), "whited out");
    assert!(!orig.contains_key(&b"/usr/lib/libbig.so"[..]), "hidden by the opaque directory");
    assert!(orig.contains_key(&b"/usr/lib/only"[..]));
    let root = dir.path().join("store");
    let root = root.to_str().unwrap();

    // export -> import: the same tree.
    let tarball = dir.path().join("rootfs.tar");
    let out = Command::new(env!("CARGO_BIN_EXE_layertool"))
        .args(["--root", root, "export", "orig", "-o", tarball.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // GNU tar reads it too.
    let list = Command::new("tar").arg("tf").arg(&tarball).output().unwrap();
    assert!(list.status.success());
    assert!(String::from_utf8_lossy(&list.stdout).contains("opt/a-link"));
    import(&store, &tarball, "reimported", &ImportOptions::default(), &pb).unwrap();
    assert_eq!(merged_tree(&store, "reimported"), orig);

    // save (OCI archive) -> import: the same tree and the same number of layers.
    let archive = dir.path().join("image.tar");
    let out = Command::new(env!("CARGO_BIN_EXE_layertool"))
        .args(["--root", root, "save", "orig", "-o", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let loaded = import(&store, &archive, "loaded", &ImportOptions::default(), &pb).unwrap();
    assert_eq!(loaded.image.layers.len(), 3);
    assert_eq!(merged_tree(&store, "loaded"), orig);
    assert_eq!(loaded.image.config, store.image("orig").unwrap().config);
    // skopeo accepts the archive.
    let inspect =
        Command::new("skopeo").arg("inspect").arg(format!("oci-archive:{}", archive.display())).output().unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));

    // flatten: one layer, the same tree, no object copied.
    let objects_before = walk(&store.objects_dir()).len();
    let out = Command::new(env!("CARGO_BIN_EXE_layertool"))
        .args(["--root", root, "flatten", "orig", "flat"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(store.image("flat").unwrap().layers.len(), 1);
    assert_eq!(merged_tree(&store, "flat"), orig);
    assert_eq!(walk(&store.objects_dir()).len(), objects_before);
}

/// Import into a store on a full file system: a clear error naming the cause, and no trace of the
/// failed image (no image, layer, object, source or temporary file); the store stays usable and
/// every image in it verifies.
#[test]
fn import_into_a_full_store_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let fsdir = dir.path().join("fs");
    std::fs::create_dir(&fsdir).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&fsdir).status().unwrap();
    assert!(st.success(), "mounting a 2 MiB tmpfs failed: this test needs root (CI runs as root)");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _umount = Umount(fsdir.clone());
    let root = fsdir.join("store");
    let entries = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join(d))
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };

    let mut small = Tar::new();
    small.dir("etc/", 0o755).file("etc/motd", b"hello\n").file("etc/data", &common::noise(1, 100_000));
    let small_tar = dir.path().join("small.tar");
    std::fs::write(&small_tar, small.bytes()).unwrap();
    let out = layertool(&root, &["import", "--no-sync", small_tar.to_str().unwrap(), "--tag", "small:1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before: Vec<_> = ["images", "layers", "objects", "sources"].iter().map(|d| walk(&root.join(d))).collect();

    let mut big = Tar::new();
    big.file("usr/a", &common::noise(2, 1_500_000)).file("usr/b", &common::noise(3, 1_500_000));
    let big_tar = dir.path().join("big.tar");
    std::fs::write(&big_tar, big.bytes()).unwrap();
    let out = layertool(&root, &["import", "--no-sync", big_tar.to_str().unwrap(), "--tag", "big:1"]);
    assert!(!out.status.success(), "3 MB imported into a 2 MiB store");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");

    let after: Vec<_> = ["images", "layers", "objects", "sources"].iter().map(|d| walk(&root.join(d))).collect();
    assert_eq!(before, after, "the failed import left something in the store");
    assert_eq!(entries("tmp"), Vec::<String>::new(), "temporary files left behind");
    let images = String::from_utf8_lossy(&layertool(&root, &["images"]).stdout).into_owned();
    assert!(images.contains("small:1") && !images.contains("big:1"), "{images}");
    let out = layertool(&root, &["verify", "small:1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // The store is usable: once there is room, the same import goes through.
    assert!(layertool(&root, &["rmi", "small:1"]).status.success());
    let mut fits = Tar::new();
    fits.file("usr/a", &common::noise(2, 1_000_000));
    let fits_tar = dir.path().join("fits.tar");
    std::fs::write(&fits_tar, fits.bytes()).unwrap();
    let out = layertool(&root, &["import", "--no-sync", fits_tar.to_str().unwrap(), "--tag", "fits:1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(layertool(&root, &["verify", "fits:1"]).status.success());
}
