//! A real Debian root filesystem (mmdebstrap): import it, verify it, and check every entry of the
//! packed layer against the source tarball: type, mode, owner, mtime, size, content, symlink
//! target, device numbers and hard links.

use std::collections::HashMap;
use std::io::Read;

use format_spec::{Kind, VerifyOptions};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use tools::import::{ImportOptions, import};
use tools::open_layer;
use tools::store::{Store, parse_digest};

#[test]
fn debian_rootfs_imports_entry_for_entry() {
    let tarball = integration_tests::debian_tarball();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let report = import(&store, &tarball, "debian:12", &ImportOptions::default(), &ProgressBar::hidden()).unwrap();
    let digest = parse_digest(&report.image.layers[0]).unwrap();
    let layer = open_layer(&store.layer_path(&digest)).unwrap();
    let stats = layer.verify(VerifyOptions { data: true }).unwrap();
    assert!(stats.inodes > 10_000, "a real image: {stats:?}");

    let mut hardlinks: HashMap<String, u32> = HashMap::new();
    let mut checked = 0u64;
    let mut ar = tar::Archive::new(std::fs::File::open(&tarball).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let h = e.header().clone();
        let mut cur = layer.inode(layer.root()).unwrap();
        for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let ent = layer.lookup(&cur, c.as_bytes()).unwrap().unwrap_or_else(|| panic!("{path}: missing"));
            cur = layer.inode(ent.ino).unwrap();
        }
        let what = &path;
        assert_eq!(cur.mode & 0o7777, h.mode().unwrap() & 0o7777, "{what}: mode");
        assert_eq!(cur.uid as u64, h.uid().unwrap(), "{what}: uid");
        assert_eq!(cur.gid as u64, h.gid().unwrap(), "{what}: gid");
        assert_eq!(cur.mtime.sec as u64, h.mtime().unwrap(), "{what}: mtime");
        match h.entry_type() {
            tar::EntryType::Regular => {
                assert_eq!(cur.kind(), Kind::File, "{what}");
                assert_eq!(cur.size, e.size(), "{what}: size");
                let mut src = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = e.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    src.update(&buf[..n]);
                }
                let src: [u8; 32] = src.finalize().into();
                if cur.size > 0 {
                    assert_eq!(layer.digest(&cur).unwrap(), Some(&src), "{what}: digest");
                }
                if cur.is_external() {
                    let obj = std::fs::read(store.object_path(&src)).unwrap();
                    assert_eq!(<[u8; 32]>::from(Sha256::digest(&obj)), src, "{what}: object");
                } else {
                    let mut data = vec![0u8; cur.size as usize];
                    layer.read(&cur, 0, &mut data).unwrap();
                    assert_eq!(<[u8; 32]>::from(Sha256::digest(&data)), src, "{what}: content");
                }
            }
            tar::EntryType::Directory => assert!(cur.is_dir(), "{what}"),
            tar::EntryType::Symlink => {
                assert_eq!(layer.readlink(&cur).unwrap(), &*e.link_name_bytes().unwrap(), "{what}")
            }
            tar::EntryType::Link => {
                let target = String::from_utf8(e.link_name_bytes().unwrap().into_owned()).unwrap();
                hardlinks.insert(path.clone(), cur.ino);
                hardlinks.insert(target, cur.ino);
            }
            tar::EntryType::Char | tar::EntryType::Block => assert_eq!(
                cur.rdev(),
                Some((h.device_major().unwrap().unwrap(), h.device_minor().unwrap().unwrap())),
                "{what}"
            ),
            tar::EntryType::Fifo => assert_eq!(cur.kind(), Kind::Fifo, "{what}"),
            t => panic!("{what}: unexpected entry type {t:?}"),
        }
        checked += 1;
    }
    assert_eq!(checked, report.layers[0].convert.as_ref().unwrap().entries);
    // Every name of a hard-linked file resolves to one inode.
    for (path, ino) in &hardlinks {
        let mut cur = layer.inode(layer.root()).unwrap();
        for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            cur = layer.inode(layer.lookup(&cur, c.as_bytes()).unwrap().unwrap().ino).unwrap();
        }
        assert_eq!(cur.ino, *ino, "{path}: hard link");
        assert!(cur.nlink >= 2, "{path}: nlink");
    }

    // A second import stores nothing new.
    let before: u64 = walk_size(store.root());
    let again = import(&store, &tarball, "debian:again", &ImportOptions::default(), &ProgressBar::hidden()).unwrap();
    assert_eq!(again.image.layers, report.image.layers);
    assert!(!again.layers[0].new);
    let images = walk_size(&store.root().join("images"));
    assert!(walk_size(store.root()) <= before + images, "a second import stored data");
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { walk_size(&e.path()) } else { m.len() };
    }
    total
}
