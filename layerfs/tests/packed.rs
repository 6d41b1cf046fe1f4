//! layerfs over packed layers (`.lpk`): a three-layer image in a store built by the test (with
//! external objects), mounted by image name and by file, checked against what the layers say;
//! FUSE passthrough of object-backed files; copy-up of an object-backed file; remount.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Cursor, Read};
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use format_spec::{Kind, LayerBuilder, Meta, ObjectSink, TempObject, Timestamp, WriterOptions};
use sha2::{Digest, Sha256};

/// Objects written the way the store writes them: `objects/ab/cdef...`, mode 0444.
struct DirObjects(PathBuf);

impl ObjectSink for DirObjects {
    fn temp(&mut self) -> std::io::Result<TempObject> {
        let path = self.0.join(format!("tmp-{}", std::process::id()));
        let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        Ok(TempObject { file, path: Some(path) })
    }
    fn publish(&mut self, tmp: TempObject, digest: &[u8; 32], _size: u64) -> std::io::Result<()> {
        let hex = hex::encode(digest);
        let dir = self.0.join(&hex[..2]);
        fs::create_dir_all(&dir)?;
        let dst = dir.join(&hex[2..]);
        let src = tmp.path.unwrap();
        fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
        if dst.exists() { fs::remove_file(src) } else { fs::rename(src, dst) }
    }
    fn discard(&mut self, tmp: TempObject) {
        if let Some(p) = tmp.path {
            let _ = fs::remove_file(p);
        }
    }
}

fn meta(mode: u32) -> Meta {
    Meta { mode, uid: 0, gid: 0, mtime: Timestamp { sec: 1_650_000_000, nsec: 42 }, ..Meta::default() }
}

fn file(b: &mut LayerBuilder<'_>, path: &str, data: &[u8]) {
    b.file(path.as_bytes(), meta(0o644), data.len() as u64, &mut Cursor::new(data)).unwrap();
}

struct Store {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Layer files, lowest first.
    layers: Vec<PathBuf>,
    big: Vec<u8>,
}

fn build_store() -> Store {
    let dir = tempfile::Builder::new().prefix("layerfs-packed").tempdir().unwrap();
    let root = dir.path().join("store");
    for d in ["layers", "objects", "images"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut sparse = vec![0u8; 16 << 20];
    sparse[8 << 20] = 7;
    let mut layers = Vec::new();
    type Build<'a> = Box<dyn Fn(&mut LayerBuilder<'_>) + 'a>;
    let builds: Vec<Build<'_>> = vec![
        Box::new(|b| {
            b.dir(b"", meta(0o755)).unwrap();
            file(b, "etc/os-release", b"NAME=base\n");
            file(b, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
            b.hardlink(b"etc/passwd-", b"etc/passwd").unwrap();
            file(b, "usr/lib/libbig.so", &big);
            file(b, "usr/lib/gone", b"gone");
            file(b, "usr/share/doc/old/README", b"old");
            b.symlink(b"lib", meta(0o777), b"usr/lib").unwrap();
            b.special(b"dev/null", meta(0o666), Kind::CharDev, (1, 3)).unwrap();
            for i in 0..1000 {
                file(b, &format!("usr/share/many/f{i:04}"), format!("{i}\n").as_bytes());
            }
        }),
        Box::new(|b| {
            b.whiteout(b"usr/lib/gone").unwrap();
            b.opaque(b"usr/share/doc").unwrap();
            file(b, "usr/share/doc/new", b"new");
            file(b, "var/sparse", &sparse);
            let mut m = meta(0o755);
            m.xattrs = vec![(b"user.note".to_vec(), b"hello".to_vec())];
            b.file(b"usr/bin/tool", m, 5, &mut Cursor::new(b"tool\n")).unwrap();
        }),
        Box::new(|b| {
            file(b, "etc/os-release", b"NAME=top\n");
            file(b, "app/copy-of-big", &big);
        }),
    ];
    for (i, build) in builds.iter().enumerate() {
        let tmp = root.join(format!("layers/tmp{i}"));
        let out = File::create(&tmp).unwrap();
        let mut sink = DirObjects(root.join("objects"));
        let mut b = LayerBuilder::with_objects(out, WriterOptions { external_min: 4096 }, &mut sink);
        build(&mut b);
        b.finish(None).unwrap();
        let hex = hex::encode(Sha256::digest(fs::read(&tmp).unwrap()));
        let dst = root.join(format!("layers/{hex}.lpk"));
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        fs::rename(&tmp, &dst).unwrap();
        layers.push(dst);
    }
    let digests: Vec<String> =
        layers.iter().map(|p| format!("sha256:{}", p.file_stem().unwrap().to_string_lossy())).collect();
    let manifest = serde_json::json!({"name": "demo:1", "layers": digests});
    fs::write(root.join("images/demo:1.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    drop(builds);
    Store { _dir: dir, root, layers, big }
}

fn mount(args: &[&str], mnt: &Path) -> Mount {
    fs::create_dir_all(mnt).unwrap();
    let out = Command::new(BIN).args(args).arg(mnt).output().unwrap();
    assert!(out.status.success(), "layerfs {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(is_fuse(mnt), "mount not live when layerfs returned");
    Mount { path: mnt.to_path_buf() }
}

/// Mountpoint, upper directory and `layerfs mount` arguments for image `demo:1` of `s` with an
/// upper and work directory under `dir`.
fn image_with_upper(s: &Store, dir: &Path) -> (PathBuf, PathBuf, Vec<String>) {
    let (mnt, upper, work) = (dir.join("mnt"), dir.join("upper"), dir.join("work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let args = ["mount", "--upper", upper.to_str().unwrap(), "--work", work.to_str().unwrap()]
        .into_iter()
        .map(String::from)
        .chain(["-o".into(), format!("store={}", s.root.display()), "demo:1".into()])
        .collect();
    (mnt, upper, args)
}

/// Everything observable of a tree through the mount, by path.
fn walk(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            assert_eq!(e.ino(), m.ino(), "{}: d_ino != st_ino", p.display());
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                let mut h = Sha256::new();
                std::io::copy(&mut File::open(&p).unwrap(), &mut h).unwrap();
                format!("{} bytes {}", m.len(), &hex::encode(h.finalize())[..16])
            } else if ft.is_char_device() {
                format!("chr {}", m.rdev())
            } else {
                "other".into()
            };
            let note = xattr_get(&p, "user.note").map(|v| String::from_utf8_lossy(&v).into_owned());
            out.insert(
                p.strip_prefix(root).unwrap().display().to_string(),
                format!(
                    "{what} mode={:o} nlink={} uid={} mtime={}.{} note={note:?}",
                    m.mode(),
                    m.nlink(),
                    m.uid(),
                    m.mtime(),
                    m.mtime_nsec()
                ),
            );
        }
    }
    out
}

#[test]
fn image_by_name_shows_the_merged_layers() {
    if !can_mount() {
        return;
    }
    let s = build_store();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let store_opt = format!("store={}", s.root.display());
    let m = mount(&["mount", "-o", &store_opt, "demo:1"], &mnt);
    let tree = walk(&mnt);
    assert!(tree["etc/os-release"].starts_with("9 bytes"), "top layer wins: {}", tree["etc/os-release"]);
    assert_eq!(fs::read(mnt.join("etc/os-release")).unwrap(), b"NAME=top\n");
    assert!(!tree.contains_key("usr/lib/gone"), "whiteout hides the lower file");
    assert!(!tree.contains_key("usr/share/doc/old"), "opaque directory hides the lower content");
    assert!(tree.contains_key("usr/share/doc/new"));
    assert_eq!(tree.keys().filter(|k| k.starts_with("usr/share/many/")).count(), 1000);
    assert_eq!(fs::read(mnt.join("usr/lib/libbig.so")).unwrap(), s.big, "object-backed file");
    assert_eq!(fs::read(mnt.join("app/copy-of-big")).unwrap(), s.big);
    let a = fs::metadata(mnt.join("etc/passwd")).unwrap();
    let b = fs::metadata(mnt.join("etc/passwd-")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard links share an inode");
    assert_eq!(fs::read_link(mnt.join("lib")).unwrap(), Path::new("usr/lib"));
    assert_eq!(fs::metadata(mnt.join("dev/null")).unwrap().rdev(), libc::makedev(1, 3));
    assert_eq!(xattr_get(&mnt.join("usr/bin/tool"), "user.note").as_deref(), Some(&b"hello"[..]));
    let sp = fs::metadata(mnt.join("var/sparse")).unwrap();
    assert_eq!(sp.len(), 16 << 20);
    assert!(sp.blocks() * 512 < 1 << 20, "holes are reported as holes: {} blocks", sp.blocks());
    let mut f = File::open(mnt.join("var/sparse")).unwrap();
    let mut buf = vec![0u8; 16 << 20];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf.iter().filter(|&&b| b != 0).count(), 1);
    drop(f);
    assert_eq!(fs::metadata(mnt.join("etc/os-release")).unwrap().mtime_nsec(), 42);
    m.umount();

    // The same stack named by files (lowerdir form, topmost first) gives the same tree.
    let lower = s.layers.iter().rev().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    let objects = format!("lowerdir={lower},objects={}", s.root.join("objects").display());
    let m = mount(&["-o", &objects], &mnt);
    assert_eq!(walk(&mnt), tree);
    m.umount();
}

#[test]
fn passthrough_serves_objects_and_copy_up_leaves_them_intact() {
    if !can_mount() {
        return;
    }
    let s = build_store();
    let dir = tempfile::tempdir().unwrap();
    let (mnt, upper, args) = image_with_upper(&s, dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = mount(&args, &mnt);

    // An object-backed lower file is read by the kernel from its object, the daemon stopped.
    let lib = File::open(mnt.join("usr/lib/libbig.so")).unwrap();
    let _ = fs::write("/proc/sys/vm/drop_caches", b"1");
    let got = with_daemon_stopped(&mnt, Duration::from_secs(10), move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 3_000_000];
        let mut n = 0;
        while n < buf.len() {
            match lib.read_at(&mut buf[n..], n as u64) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        buf[..n].to_vec()
    });
    assert_eq!(got.expect("read blocked with the daemon stopped: passthrough not engaged"), s.big);

    // Copy-up of an object-backed file: the object is untouched, the upper gets the new data.
    let objects_before: Vec<_> = fs::read_dir(s.root.join("objects")).unwrap().flatten().map(|e| e.path()).collect();
    let object_hashes = |dirs: &[PathBuf]| -> Vec<String> {
        let mut v = Vec::new();
        for d in dirs {
            for e in fs::read_dir(d).unwrap().flatten() {
                v.push(hex::encode(Sha256::digest(fs::read(e.path()).unwrap())));
            }
        }
        v.sort();
        v
    };
    let before = object_hashes(&objects_before);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(mnt.join("usr/lib/libbig.so")).unwrap();
        f.write_all(b"appended").unwrap();
    }
    let mut expect = s.big.clone();
    expect.extend_from_slice(b"appended");
    assert_eq!(fs::read(mnt.join("usr/lib/libbig.so")).unwrap(), expect);
    assert_eq!(fs::read(upper.join("usr/lib/libbig.so")).unwrap(), expect);
    assert_eq!(fs::read(mnt.join("app/copy-of-big")).unwrap(), s.big, "the other name of the content is unchanged");
    assert_eq!(object_hashes(&objects_before), before, "objects are never written");
    m.umount();
    // After a remount the change is still there.
    let m = mount(&args, &mnt);
    assert_eq!(fs::read(mnt.join("usr/lib/libbig.so")).unwrap(), expect);
    m.umount();
}

#[test]
fn missing_or_corrupt_layers_are_clear_errors() {
    if !can_mount() {
        return;
    }
    let s = build_store();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let store_opt = format!("store={}", s.root.display());
    let out = Command::new(BIN).args(["mount", "-o", &store_opt, "nosuch:1"]).arg(&mnt).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"), "{}", String::from_utf8_lossy(&out.stderr));
    // A truncated layer file is refused at mount time.
    let bad = dir.path().join("bad.lpk");
    let bytes = fs::read(&s.layers[0]).unwrap();
    fs::write(&bad, &bytes[..bytes.len() - 10]).unwrap();
    let out = Command::new(BIN).args(["mount"]).arg(&bad).arg(&mnt).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_fuse(&mnt));
}

/// Bytes of `path` in the page cache (util-linux `fincore`).
fn cached_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore").args(["--bytes", "--noheadings", "--output", "RES"]).arg(path).output().unwrap();
    assert!(out.status.success(), "fincore: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn inline_data_is_read_from_the_shared_mapping_not_cached_per_mount() {
    if !can_mount() {
        return;
    }
    let s = build_store();
    let dir = tempfile::tempdir().unwrap();
    let store_opt = format!("store={}", s.root.display());
    let direct = mount(&["mount", "-o", &store_opt, "demo:1"], &dir.path().join("direct"));
    let cached_opt = format!("{store_opt},cache_inline=1");
    let cached = mount(&["mount", "-o", &cached_opt, "demo:1"], &dir.path().join("cached"));
    for m in [&direct, &cached] {
        // Read, mapped shared and private: the same bytes either way.
        assert_eq!(fs::read(m.path.join("usr/share/many/f0042")).unwrap(), b"42\n");
        let f = File::open(m.path.join("etc/passwd")).unwrap();
        for shared in [true, false] {
            let map = if shared {
                // SAFETY: a read-only mapping of a file nothing writes while the test runs.
                unsafe { memmap2::Mmap::map(&f) }.unwrap()
            } else {
                // SAFETY: as above; a private copy-on-write mapping.
                unsafe { memmap2::MmapOptions::new().map_copy_read_only(&f) }.unwrap()
            };
            assert_eq!(&map[..], b"root:x:0:0::/root:/bin/sh\n");
        }
    }
    // Only the mount with cache_inline=1 keeps a copy of the inline data in its own page cache.
    let name = "usr/share/many/f0007";
    fs::read(direct.path.join(name)).unwrap();
    fs::read(cached.path.join(name)).unwrap();
    assert_eq!(cached_bytes(&cached.path.join(name)), 4096, "cache_inline=1 caches the page");
    assert_eq!(cached_bytes(&direct.path.join(name)), 0, "inline data read with direct I/O");
    direct.umount();
    cached.umount();
}

/// Files of a packed layer are held as lower nodes (no name kept) until changed: a change
/// finds each name again. chmod of every file of a 1,000-entry directory after a walk: every
/// copy lands at its own name with its own data, also after a remount.
#[test]
fn changing_many_lower_files_finds_each_name() {
    if !can_mount() {
        return;
    }
    let s = build_store();
    let dir = tempfile::tempdir().unwrap();
    let (mnt, upper, args) = image_with_upper(&s, dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = mount(&args, &mnt);
    let many = mnt.join("usr/share/many");
    let before: BTreeMap<String, u64> = fs::read_dir(&many)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.ino()))
        .collect();
    assert_eq!(before.len(), 1000);
    for name in before.keys().rev() {
        let p = many.join(name);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    // Through the mount: st_ino stable across copy-up, the data the layer's. In the upper: the
    // mode, at the right name (its inode numbers are the host's).
    let check = |root: &Path, same_ino: bool| {
        for (name, ino) in &before {
            let i: u32 = name[1..].parse().unwrap();
            let md = fs::metadata(root.join(name)).unwrap();
            assert_eq!(md.mode() & 0o777, 0o600, "{name}");
            assert!(!same_ino || md.ino() == *ino, "{name}: st_ino changed");
            // (The upper copy is metadata-only: its data is still the layer's.)
            assert!(!same_ino || fs::read(root.join(name)).unwrap() == format!("{i}\n").as_bytes(), "{name}");
        }
    };
    check(&many, true);
    check(&upper.join("usr/share/many"), false);
    m.umount();
    let m = mount(&args, &mnt);
    check(&many, true);
    m.umount();
}

/// Lower nodes (files and directories of one packed layer, held without an inode) under churn:
/// threads walk the tree while others change files and directories below lower directory
/// nodes (each change makes full inodes of the chain of parents), rename a lower directory
/// back and forth, and make the kernel forget inodes. Afterwards every name lists once, stats
/// with `d_ino == st_ino`, reads the layer's data, and a remount shows the same tree.
#[test]
fn lower_nodes_under_churn() {
    use std::os::unix::fs::PermissionsExt;
    if !can_mount() {
        return;
    }
    let s = build_store();
    let dir = tempfile::tempdir().unwrap();
    let (mnt, _upper, args) = image_with_upper(&s, dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = mount(&args, &mnt);
    let share = mnt.join("usr/share");
    // Concurrent renames make names vanish for a moment (ENOENT); nothing else may fail.
    fn ok<T>(what: &str, r: std::io::Result<T>) {
        if let Err(e) = r {
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{what}: {e}");
        }
    }
    std::thread::scope(|sc| {
        for t in 0..4usize {
            let share = share.clone();
            sc.spawn(move || {
                for i in 0..150usize {
                    let many = share.join("many");
                    let f = |k: usize| many.join(format!("f{:04}", (k * 37 + t * 251) % 1000));
                    match t {
                        0 | 1 => {
                            // Lookups of lower nodes, and listings of lower directory nodes.
                            for e in fs::read_dir(&many).into_iter().flatten().flatten().take(200) {
                                ok("stat", fs::symlink_metadata(e.path()));
                            }
                            ok("read", fs::read(f(i)));
                            if i % 40 == t * 20 {
                                let _ = fs::write("/proc/sys/vm/drop_caches", b"2");
                            }
                        }
                        2 => {
                            // Changes below a lower directory node: chmod, new entries, renames.
                            ok("chmod", fs::set_permissions(f(i), fs::Permissions::from_mode(0o600)));
                            ok("create", fs::write(many.join(format!("new{}", i % 5)), b"n"));
                            ok("unlink", fs::remove_file(many.join(format!("new{}", (i + 2) % 5))));
                            ok("rename", fs::rename(f(i + 1), many.join(format!("moved{}", i % 3))));
                            ok("rename back", fs::rename(many.join(format!("moved{}", (i + 1) % 3)), f(i + 500)));
                        }
                        _ => {
                            // A lower directory renamed away and back while others use it.
                            if fs::rename(&many, share.join("many2")).is_ok() {
                                let _ = fs::read_dir(share.join("many2")).map(|d| d.count());
                                fs::rename(share.join("many2"), &many).unwrap();
                            }
                            let d = |k: usize| share.join(format!("d{}", k % 4));
                            if let Err(e) = fs::create_dir(d(i)) {
                                assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "mkdir: {e}");
                            }
                            ok("rmdir", fs::remove_dir(d(i + 2)));
                        }
                    }
                }
            });
        }
    });
    let tree = |root: &Path| -> BTreeMap<String, (u64, u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for e in fs::read_dir(root.join("usr/share/many")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(seen.insert(name.clone()), "{name} listed twice");
            let md = fs::symlink_metadata(e.path()).unwrap();
            assert_eq!(e.ino(), md.ino(), "{name}: d_ino != st_ino");
            out.insert(name, (md.ino(), md.mode(), fs::read(e.path()).unwrap()));
        }
        out
    };
    let before = tree(&mnt);
    for (name, (_, _, data)) in &before {
        if let Some(i) = name.strip_prefix('f').and_then(|n| n.parse::<u32>().ok()) {
            // A moved file may have landed on another's name: its data is one of the layer's.
            let v: u32 = String::from_utf8_lossy(data).trim().parse().unwrap_or_else(|_| panic!("{name}: {data:?}"));
            assert!(v < 1000, "{name} ({i}): {v}");
        }
    }
    assert!(before.len() > 900, "{} entries left", before.len());
    m.umount();
    let m = mount(&args, &mnt);
    assert_eq!(tree(&mnt), before);
    m.umount();
}
