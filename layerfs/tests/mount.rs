//! Real mounts: the corner cases of DESIGN.md, each also checked after unmount + remount.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::*;

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).ino()
}

/// DESIGN 1: `rm -rf d; mkdir -p d/sub` at the root and nested brings back an empty `d`.
#[test]
fn rm_rf_then_mkdir_comes_back_empty() {
    if !can_mount() {
        return;
    }
    let e = Env::new(2);
    write(e.l(1).join("d/old/file"), b"x");
    write(e.l(1).join("d/f"), b"x");
    write(e.l(0).join("n/d/f"), b"x");
    write(e.l(1).join("n/d/g"), b"x");
    let m = e.mount();
    fs::remove_dir_all(e.m("d")).unwrap();
    fs::create_dir_all(e.m("d/sub")).unwrap();
    fs::remove_dir_all(e.m("n/d")).unwrap();
    fs::create_dir_all(e.m("n/d/sub")).unwrap();
    for d in ["d", "n/d"] {
        assert_eq!(ls(&e.m(d)), ["sub"], "{d}");
        assert!(ls(&e.m(&format!("{d}/sub"))).is_empty());
    }
    m.umount();
    let m = e.mount();
    for d in ["d", "n/d"] {
        assert_eq!(ls(&e.m(d)), ["sub"], "{d} after remount");
        assert!(ls(&e.m(&format!("{d}/sub"))).is_empty());
        assert!(whiteouts_in(&e.upper.join(d)).is_empty(), "whiteout inside opaque {d}");
        assert_eq!(xattr_get(&e.upper.join(d), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    }
    m.umount();
}

/// DESIGN 2: a whiteout replaced by a file, a directory or a symlink, then renamed over.
#[test]
fn whiteout_replaced_and_renamed_over() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    for n in ["f", "d", "s", "r"] {
        write(e.l(0).join(n), b"lower");
    }
    let m = e.mount();
    for n in ["f", "d", "s", "r"] {
        fs::remove_file(e.m(n)).unwrap();
    }
    assert_eq!(whiteouts_in(&e.upper), ["d", "f", "r", "s"]);
    write(e.m("f"), b"file");
    fs::create_dir(e.m("d")).unwrap();
    symlink("target", e.m("s")).unwrap();
    write(e.m("tmp"), b"renamed");
    fs::rename(e.m("tmp"), e.m("r")).unwrap();
    assert!(whiteouts_in(&e.upper).is_empty(), "stale whiteouts");
    fs::rename(e.m("f"), e.m("s")).unwrap(); // file over symlink over whiteout
    assert_eq!(ls(&e.mnt), ["d", "r", "s"]);
    assert_eq!(fs::read(e.m("s")).unwrap(), b"file");
    assert_eq!(whiteouts_in(&e.upper), ["f"]);
    m.umount();
    let m = e.mount();
    assert_eq!(ls(&e.mnt), ["d", "r", "s"]);
    assert_eq!(fs::read(e.m("r")).unwrap(), b"renamed");
    assert!(ls(&e.m("d")).is_empty());
    m.umount();
}

/// DESIGN 3: hard-linked lower files stay linked through copy-up and remount.
#[test]
fn hardlinked_lower_files() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    write(e.l(0).join("a/h1"), b"old");
    fs::create_dir(e.l(0).join("b")).unwrap();
    fs::hard_link(e.l(0).join("a/h1"), e.l(0).join("b/h2")).unwrap();
    fs::hard_link(e.l(0).join("a/h1"), e.l(0).join("h3")).unwrap();
    let m = e.mount();
    let before = ino(&e.m("a/h1"));
    assert_eq!(before, ino(&e.m("b/h2")));
    fs::OpenOptions::new().append(true).open(e.m("a/h1")).unwrap().write_all(b"+new").unwrap();
    let check = |when: &str| {
        for p in ["a/h1", "b/h2", "h3"] {
            assert_eq!(fs::read(e.m(p)).unwrap(), b"old+new", "{p} {when}");
            let md = fs::metadata(e.m(p)).unwrap();
            assert_eq!(md.ino(), before, "{p} st_ino {when}");
            assert_eq!(md.nlink(), 3, "{p} st_nlink {when}");
        }
    };
    check("in the same mount");
    m.umount();
    let m = e.mount();
    check("after remount");
    fs::remove_file(e.m("h3")).unwrap();
    assert_eq!(fs::metadata(e.m("a/h1")).unwrap().nlink(), 2);
    m.umount();
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let od = fs::File::open(from.parent().unwrap()).unwrap();
    let nd = fs::File::open(to.parent().unwrap()).unwrap();
    let on = layerfs::sys::cstr(from.file_name().unwrap().as_encoded_bytes()).unwrap();
    let nn = layerfs::sys::cstr(to.file_name().unwrap().as_encoded_bytes()).unwrap();
    layerfs::sys::renameat2(od.as_fd(), &on, nd.as_fd(), &nn, flags)
}

/// DESIGN 4: the rename matrix.
#[test]
fn rename_matrix() {
    if !can_mount() {
        return;
    }
    let e = Env::new(2);
    write(e.l(1).join("dir/bottom"), b"b");
    write(e.l(0).join("dir/top"), b"t");
    write(e.l(0).join("dir/sub/deep"), b"d");
    write(e.l(1).join("x"), b"x");
    write(e.l(1).join("y"), b"y");
    write(e.l(0).join("p"), b"p");
    write(e.l(0).join("q"), b"q");
    let m = e.mount();
    let dir_ino = ino(&e.m("dir"));
    let deep_ino = ino(&e.m("dir/sub/deep"));
    // merged directory rename, then re-create the old name
    fs::rename(e.m("dir"), e.m("moved")).unwrap();
    fs::create_dir(e.m("dir")).unwrap();
    assert!(ls(&e.m("dir")).is_empty());
    assert_eq!(ls(&e.m("moved")), ["bottom", "sub", "top"]);
    assert_eq!(ino(&e.m("moved")), dir_ino);
    // file over lower file
    fs::rename(e.m("x"), e.m("y")).unwrap();
    assert_eq!(fs::read(e.m("y")).unwrap(), b"x");
    assert!(!e.m("x").exists());
    write(e.m("x"), b"again");
    // NOREPLACE and EXCHANGE
    let noreplace = 1;
    let exchange = 2;
    assert_eq!(renameat2(&e.m("p"), &e.m("q"), noreplace).unwrap_err().raw_os_error(), Some(17));
    renameat2(&e.m("p"), &e.m("q"), exchange).unwrap();
    assert_eq!(fs::read(e.m("p")).unwrap(), b"q");
    assert_eq!(fs::read(e.m("q")).unwrap(), b"p");
    // rename into a subdirectory of a renamed directory
    fs::rename(e.m("y"), e.m("moved/sub/y")).unwrap();
    m.umount();
    let m = e.mount();
    assert!(ls(&e.m("dir")).is_empty());
    assert_eq!(ls(&e.m("moved")), ["bottom", "sub", "top"]);
    assert_eq!(ls(&e.m("moved/sub")), ["deep", "y"]);
    assert_eq!(ino(&e.m("moved")), dir_ino);
    assert_eq!(ino(&e.m("moved/sub/deep")), deep_ino);
    assert_eq!(fs::read(e.m("x")).unwrap(), b"again");
    assert_eq!(fs::read(e.m("moved/sub/y")).unwrap(), b"x");
    assert_eq!(ls(&e.mnt), ["dir", "moved", "p", "q", "x"]);
    m.umount();
}

/// Makes the kernel forget unused dentries and inodes, so the next access asks the daemon.
fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
}

/// `mkdir new; mv lowerdir new/`: a merged directory moved into a directory that exists only
/// in the upper keeps its lower contents (through its redirect), also nested deeper, moved
/// back, and after remount.
#[test]
fn merged_dir_moved_into_upper_only_dir() {
    if !can_mount() {
        return;
    }
    let e = Env::new(2);
    write(e.l(1).join("lowerdir/bottom"), b"b");
    write(e.l(0).join("lowerdir/top"), b"t");
    write(e.l(0).join("lowerdir/sub/deep"), b"d");
    let check = |at: &str, dir_ino: u64, when: &str| {
        assert_eq!(ls(&e.m(at)), ["bottom", "sub", "top"], "{at} {when}");
        let sub: Vec<String> = ls(&e.m(&format!("{at}/sub"))).into_iter().filter(|n| n != "added").collect();
        assert_eq!(sub, ["deep"], "{at}/sub {when}");
        assert_eq!(fs::read(e.m(&format!("{at}/bottom"))).unwrap(), b"b", "{when}");
        assert_eq!(fs::read(e.m(&format!("{at}/top"))).unwrap(), b"t", "{when}");
        assert_eq!(fs::read(e.m(&format!("{at}/sub/deep"))).unwrap(), b"d", "{when}");
        assert_eq!(ino(&e.m(at)), dir_ino, "{at} st_ino {when}");
    };
    let m = e.mount();
    let dir_ino = ino(&e.m("lowerdir"));
    fs::create_dir(e.m("new")).unwrap();
    sh(&format!("cd {} && mv lowerdir new/", e.mnt.display()));
    check("new/lowerdir", dir_ino, "in the same mount");
    drop_caches();
    check("new/lowerdir", dir_ino, "after drop_caches");
    m.umount();
    let m = e.mount();
    check("new/lowerdir", dir_ino, "after remount");
    assert_eq!(ls(&e.mnt), ["new"]);
    // deeper
    fs::create_dir_all(e.m("new/a/b")).unwrap();
    fs::rename(e.m("new/lowerdir"), e.m("new/a/b/lowerdir")).unwrap();
    write(e.m("new/a/b/lowerdir/sub/added"), b"+");
    drop_caches();
    check("new/a/b/lowerdir", dir_ino, "nested");
    m.umount();
    let m = e.mount();
    check("new/a/b/lowerdir", dir_ino, "nested, after remount");
    assert_eq!(fs::read(e.m("new/a/b/lowerdir/sub/added")).unwrap(), b"+");
    // and back
    fs::rename(e.m("new/a/b/lowerdir"), e.m("lowerdir")).unwrap();
    m.umount();
    let m = e.mount();
    check("lowerdir", dir_ino, "moved back, after remount");
    assert!(ls(&e.m("new/a/b")).is_empty());
    m.umount();
}

/// `ln` of a lower file with one link: both names count two links (same `st_ino`), also
/// after remount; unlinking one brings the other back to one.
#[test]
fn link_of_single_link_lower_file() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    write(e.l(0).join("d/f"), b"data");
    let m = e.mount();
    let f_ino = ino(&e.m("d/f"));
    fs::hard_link(e.m("d/f"), e.m("g")).unwrap();
    let check = |when: &str| {
        for p in ["d/f", "g"] {
            let md = fs::metadata(e.m(p)).unwrap();
            assert_eq!((md.ino(), md.nlink()), (f_ino, 2), "{p} {when}");
            assert_eq!(fs::read(e.m(p)).unwrap(), b"data", "{p} {when}");
        }
    };
    check("in the same mount");
    drop_caches();
    check("after drop_caches");
    m.umount();
    let m = e.mount();
    check("after remount");
    fs::remove_file(e.m("g")).unwrap();
    assert_eq!(fs::metadata(e.m("d/f")).unwrap().nlink(), 1);
    m.umount();
    let m = e.mount();
    assert_eq!(fs::metadata(e.m("d/f")).unwrap().nlink(), 1);
    assert!(!e.m("g").exists());
    m.umount();
}

/// Looking up a name of a hard link whose link group was copied up changes nothing: not the
/// parent's times, not the upper (in the same mount and after remount).
#[test]
fn hardlink_alias_lookup_changes_no_parent() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    write(e.l(0).join("h/x"), b"old");
    fs::create_dir(e.l(0).join("g")).unwrap();
    fs::hard_link(e.l(0).join("h/x"), e.l(0).join("g/y")).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::open(e.l(0).join("g")).unwrap().set_times(fs::FileTimes::new().set_modified(old)).unwrap();
    let times = |p: &str| {
        let md = fs::metadata(e.m(p)).unwrap();
        (md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec())
    };
    let m = e.mount();
    let g0 = times("g");
    let x_ino = ino(&e.m("h/x"));
    fs::OpenOptions::new().append(true).open(e.m("h/x")).unwrap().write_all(b"+new").unwrap();
    let md = fs::metadata(e.m("g/y")).unwrap();
    assert_eq!((md.ino(), md.nlink()), (x_ino, 2));
    drop_caches();
    assert_eq!(times("g"), g0, "a lookup changed the parent (same mount)");
    assert!(!e.upper.join("g").exists(), "a lookup copied the parent up");
    m.umount();
    let m = e.mount();
    assert_eq!(times("g"), g0);
    let md = fs::metadata(e.m("g/y")).unwrap();
    assert_eq!((md.ino(), md.nlink()), (x_ino, 2));
    assert_eq!(fs::read(e.m("g/y")).unwrap(), b"old+new");
    drop_caches();
    assert_eq!(times("g"), g0, "a lookup changed the parent (after remount)");
    assert!(!e.upper.join("g").exists(), "a lookup copied the parent up");
    // changing the alias name itself links it up
    fs::rename(e.m("g/y"), e.m("g/z")).unwrap();
    m.umount();
    let m = e.mount();
    let md = fs::metadata(e.m("g/z")).unwrap();
    assert_eq!((md.ino(), md.nlink()), (x_ino, 2));
    assert_eq!(fs::read(e.m("g/z")).unwrap(), b"old+new");
    assert_eq!(ls(&e.m("g")), ["z"]);
    fs::remove_file(e.m("g/z")).unwrap();
    assert_eq!(fs::metadata(e.m("h/x")).unwrap().nlink(), 1);
    m.umount();
}

/// DESIGN 5: open-unlinked and open-renamed files keep working.
#[test]
fn open_unlinked_files() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    write(e.l(0).join("lower"), b"lower data");
    let m = e.mount();
    let mut f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(e.m("tmp")).unwrap();
    f.write_all(b"hello").unwrap();
    fs::remove_file(e.m("tmp")).unwrap();
    f.write_all(b" world").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello world");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.set_len(3).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3);
    f.set_permissions(fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
    // a lower file, opened then unlinked
    let mut l = fs::File::open(e.m("lower")).unwrap();
    fs::remove_file(e.m("lower")).unwrap();
    let mut s = String::new();
    l.read_to_string(&mut s).unwrap();
    assert_eq!(s, "lower data");
    // open, renamed away, still works
    let mut r = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(e.m("r1")).unwrap();
    fs::rename(e.m("r1"), e.m("r2")).unwrap();
    r.write_all(b"renamed").unwrap();
    drop(r);
    assert_eq!(fs::read(e.m("r2")).unwrap(), b"renamed");
    drop(f);
    drop(l);
    m.umount();
}

fn acl_bytes() -> Vec<u8> {
    // system.posix_acl_access: version 2, entries (tag, perm, id)
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in
        [(1u16, 6u16, u32::MAX), (2, 4, 1234), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
    {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// DESIGN 6: copy-up fidelity.
#[test]
fn copy_up_fidelity() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    let l = e.l(0);
    fs::create_dir(l.join("secret")).unwrap();
    write(l.join("secret/f"), b"data");
    fs::set_permissions(l.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    write(l.join("ro"), b"abc\n");
    fs::set_permissions(l.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
    write(l.join("caps"), b"#!/bin/true\n");
    std::os::unix::fs::chown(l.join("caps"), Some(1234), Some(4321)).unwrap();
    xattr_set(&l.join("caps"), "security.capability", &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    xattr_set(&l.join("caps"), "user.note", b"kept");
    xattr_set(&l.join("caps"), "system.posix_acl_access", &acl_bytes());
    let sparse = fs::File::create(l.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at_end();
    drop(sparse);
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    for p in ["ro", "caps", "secret", "secret/f", "sparse"] {
        let f = fs::File::open(l.join(p)).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(old).set_accessed(old)).unwrap();
    }
    let m = e.mount();
    let secret_mtime = fs::metadata(e.m("secret")).unwrap().mtime();
    // chown of a child must not touch its parent's times, nor widen the parent's mode
    std::os::unix::fs::chown(e.m("secret/f"), Some(7), Some(7)).unwrap();
    assert_eq!(fs::metadata(e.m("secret")).unwrap().mtime(), secret_mtime);
    assert_eq!(fs::metadata(e.upper.join("secret")).unwrap().mode() & 0o7777, 0o700);
    // metadata change on a capability file keeps xattrs, owner, times
    xattr_set(&e.m("caps"), "user.added", b"1");
    let md = fs::metadata(e.upper.join("caps")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mtime()), (1234, 4321, 1_000_000_000));
    assert!(xattr_get(&e.upper.join("caps"), "security.capability").is_some());
    assert_eq!(xattr_get(&e.m("caps"), "user.note").unwrap(), b"kept");
    assert_eq!(xattr_get(&e.m("caps"), "system.posix_acl_access").unwrap(), acl_bytes());
    // sparse holes survive a copy-up
    fs::OpenOptions::new().write(true).open(e.m("sparse")).unwrap().write_all(b"x").unwrap();
    let up = fs::metadata(e.upper.join("sparse")).unwrap();
    assert_eq!(up.len(), 64 << 20);
    assert!(up.blocks() < 1024, "holes filled: {} blocks", up.blocks());
    // sed -i and cp on a read-only file
    sh(&format!("sed -i s/abc/xyz/ {}", e.m("ro").display()));
    assert_eq!(fs::read(e.m("ro")).unwrap(), b"xyz\n");
    sh(&format!("cp {} {}", e.m("caps").display(), e.m("copy").display()));
    assert_eq!(fs::read(e.m("copy")).unwrap(), b"#!/bin/true\n");
    // 0555 directory: entries can still be made by root
    fs::create_dir(e.m("r5")).unwrap();
    fs::set_permissions(e.m("r5"), fs::Permissions::from_mode(0o555)).unwrap();
    write(e.m("r5/in"), b"1");
    m.umount();
    let m = e.mount();
    assert_eq!(fs::metadata(e.m("caps")).unwrap().uid(), 1234);
    assert_eq!(xattr_get(&e.m("caps"), "user.added").unwrap(), b"1");
    assert!(
        !layerfs::sys::listxattr(&layerfs::sys::XattrPath::path(&e.m("caps")))
            .unwrap()
            .windows(8)
            .any(|w| w == b"overlay." || w == b"layerfs."),
        "internal xattrs visible"
    );
    assert_eq!(fs::read(e.m("r5/in")).unwrap(), b"1");
    m.umount();
}

trait WriteEnd {
    fn write_all_at_end(&self);
}
impl WriteEnd for fs::File {
    fn write_all_at_end(&self) {
        use std::os::unix::fs::FileExt;
        self.write_all_at(b"end", (64 << 20) - 3).unwrap();
        self.write_all_at(b"start", 0).unwrap();
    }
}

/// DESIGN 7: readdir integrity.
#[test]
fn readdir_integrity() {
    if !can_mount() {
        return;
    }
    let e = Env::new(2);
    for i in 0..150 {
        write(e.l(1).join(format!("big/f{i:03}")), b"");
    }
    for i in 0..20 {
        write(e.l(0).join(format!("big/t{i:03}")), b"");
    }
    write(e.l(0).join("big/.wh.f000"), b"");
    chr_whiteout(&e.l(0).join("big/f001"));
    let m = e.mount();
    fs::remove_file(e.m("big/f002")).unwrap();
    write(e.m("big/u000"), b"");
    let names = ls(&e.m("big"));
    assert_eq!(names.len(), 150 - 3 + 20 + 1);
    assert!(!names.iter().any(|n| n.starts_with(".wh.") || n == "f000" || n == "f001" || n == "f002"));
    for _ in 0..3 {
        assert_eq!(ls(&e.m("big")), names, "repeated opens differ");
    }
    for ent in fs::read_dir(e.m("big")).unwrap() {
        let ent = ent.unwrap();
        assert_eq!(ent.ino(), ino(&ent.path()), "d_ino != st_ino for {:?}", ent.file_name());
    }
    // create and unlink during iteration: no duplicates, every untouched entry seen
    let mut seen = HashSet::new();
    let mut it = fs::read_dir(e.m("big")).unwrap();
    for _ in 0..50 {
        let n = it.next().unwrap().unwrap().file_name();
        assert!(seen.insert(n));
    }
    for i in 0..30 {
        write(e.m(&format!("big/new{i}")), b"");
        let _ = fs::remove_file(e.m(&format!("big/t{i:03}")));
    }
    for ent in it {
        let n = ent.unwrap().file_name();
        assert!(seen.insert(n.clone()), "duplicate {n:?}");
    }
    for n in &names {
        if !n.starts_with('t') {
            assert!(seen.contains(std::ffi::OsStr::new(n)), "missing {n}");
        }
    }
    // telldir / seekdir
    let out = sh(&format!(
        "perl -e 'opendir(D, \"{}\") or die; my @a; for (1..40) {{ readdir(D) }} my $p = telldir(D); my $x = readdir(D); for (1..30) {{ readdir(D) }} seekdir(D, $p); my $y = readdir(D); print $x eq $y ? \"same\" : \"differ $x $y\"'",
        e.m("big").display()
    ));
    assert_eq!(out, "same");
    m.umount();
    let m = e.mount();
    let after = ls(&e.m("big"));
    assert!(!after.iter().any(|n| n.starts_with(".wh.")));
    assert_eq!(after.len(), names.len() - 20 + 30);
    m.umount();
    readdir_integrity_100k();
}

/// Part of `readdir_integrity`: a directory of 100,000 entries (60k from the bottom layer, 20k
/// from the top one, 20k made in the upper through the mount) listed by two readers at once
/// while entries of every origin are created, unlinked and renamed through the mount (by the
/// reading thread and by another one). Neither reader sees a name twice or misses a name that
/// existed throughout; afterwards (and after remount) the listing is exactly what is there.
fn readdir_integrity_100k() {
    let e = Env::new(2);
    for (layer, prefix, n) in [(1, "b", 60_000), (0, "t", 20_000)] {
        let d = e.l(layer).join("huge");
        fs::create_dir(&d).unwrap();
        for i in 0..n {
            fs::File::create(d.join(format!("{prefix}{i:05}"))).unwrap();
        }
    }
    let m = e.mount();
    let d = e.m("huge");
    for i in 0..20_000 {
        fs::File::create(d.join(format!("u{i:05}"))).unwrap();
    }
    let initial: HashSet<std::ffi::OsString> = fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(initial.len(), 100_000);
    // Names changed during the iteration (every 50th of each origin), and names created.
    let touched = |n: &str| n[1..].parse::<u32>().is_ok_and(|i| i % 50 == 7);
    let mut r1 = fs::read_dir(&d).unwrap();
    let mut r2 = fs::read_dir(&d).unwrap();
    let mut seen1 = HashSet::new();
    let mut seen2 = HashSet::new();
    let take = |it: &mut fs::ReadDir, seen: &mut HashSet<std::ffi::OsString>, k: usize| {
        for _ in 0..k {
            let Some(ent) = it.next() else { return };
            let n = ent.unwrap().file_name();
            assert!(seen.insert(n.clone()), "duplicate {n:?}");
        }
    };
    take(&mut r1, &mut seen1, 30_000);
    take(&mut r2, &mut seen2, 70_000);
    let changer = |prefix: &'static str, n: u32| {
        let d = d.clone();
        move || {
            for i in (7..n).step_by(50) {
                let p = d.join(format!("{prefix}{i:05}"));
                if i % 100 == 7 {
                    fs::remove_file(&p).unwrap();
                } else {
                    fs::rename(&p, d.join(format!("r{prefix}{i:05}"))).unwrap();
                }
                fs::File::create(d.join(format!("n{prefix}{i:05}"))).unwrap();
            }
        }
    };
    std::thread::scope(|s| {
        s.spawn(changer("b", 60_000));
        s.spawn(changer("t", 20_000));
        changer("u", 20_000)();
        // A full listing in between (the kernel's cache of the listing is gone by now).
        assert!(fs::read_dir(&d).unwrap().count() > 90_000);
        take(&mut r1, &mut seen1, 20_000);
    });
    take(&mut r1, &mut seen1, usize::MAX);
    take(&mut r2, &mut seen2, usize::MAX);
    drop((r1, r2));
    for (which, seen) in [("first", &seen1), ("second", &seen2)] {
        for n in &initial {
            let s = n.to_string_lossy();
            assert!(touched(&s) || seen.contains(n), "{which} reader missed {s}");
        }
        for n in seen {
            let s = n.to_string_lossy();
            assert!(initial.contains(n) || s.starts_with('n') || s.starts_with('r'), "{which} reader saw {s}");
        }
    }
    let mut expected: std::collections::BTreeSet<String> =
        initial.iter().map(|n| n.to_string_lossy().into_owned()).collect();
    for (prefix, n) in [("b", 60_000), ("t", 20_000), ("u", 20_000)] {
        for i in (7..n).step_by(50) {
            let name = format!("{prefix}{i:05}");
            assert!(expected.remove(&name));
            if i % 100 != 7 {
                expected.insert(format!("r{name}"));
            }
            expected.insert(format!("n{name}"));
        }
    }
    let expected: Vec<String> = expected.into_iter().collect();
    assert_eq!(ls(&d), expected);
    m.umount();
    let m = e.mount();
    assert_eq!(ls(&d), expected);
    m.umount();
}

/// DESIGN 8: st_ino stable across copy-up, rename and remount, unique across layers.
#[test]
fn inode_identity() {
    if !can_mount() {
        return;
    }
    let e = Env::new(2);
    write(e.l(0).join("a"), b"top");
    write(e.l(1).join("b"), b"bottom");
    write(e.l(1).join("d/c"), b"c");
    let m = e.mount();
    write(e.m("u"), b"upper");
    let (a, b, c, u) = (ino(&e.m("a")), ino(&e.m("b")), ino(&e.m("d/c")), ino(&e.m("u")));
    let all: HashSet<u64> = [a, b, c, u, ino(&e.m("d")), ino(&e.mnt)].into();
    assert_eq!(all.len(), 6, "inode numbers collide across layers");
    fs::OpenOptions::new().append(true).open(e.m("b")).unwrap().write_all(b"!").unwrap();
    assert_eq!(ino(&e.m("b")), b, "copy-up changed st_ino");
    fs::rename(e.m("d/c"), e.m("c2")).unwrap();
    assert_eq!(ino(&e.m("c2")), c, "rename changed st_ino");
    m.umount();
    let m = e.mount();
    assert_eq!(
        (ino(&e.m("a")), ino(&e.m("b")), ino(&e.m("c2")), ino(&e.m("u"))),
        (a, b, c, u),
        "remount changed st_ino"
    );
    sh(&format!("find {} > /dev/null", e.mnt.display()));
    m.umount();
}

/// DESIGN 9: shared writable mmap of a lower file; many mappings with closed fds.
#[test]
fn mmap_and_fd_use() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    write(e.l(0).join("mm"), &[b'a'; 8192]);
    for i in 0..300 {
        write(e.l(0).join(format!("many/f{i}")), &[b'x'; 4096]);
    }
    let m = e.mount();
    sh(&format!(
        "python3 -c '
import mmap, os
fd = os.open(\"{0}\", os.O_RDWR)
mm = mmap.mmap(fd, 8192, mmap.MAP_SHARED)
os.close(fd)
mm[0:5] = b\"hello\"
mm.flush()
maps = []
for i in range(300):
    fd = os.open(\"{1}/f%d\" % i, os.O_RDONLY)
    maps.append(mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ))
    os.close(fd)
assert all(x[0:1] == b\"x\" for x in maps)
'",
        e.m("mm").display(),
        e.m("many").display()
    ));
    assert_eq!(&fs::read(e.m("mm")).unwrap()[..6], b"helloa");
    let pids = daemon_pids(&e.mnt);
    assert_eq!(pids.len(), 1);
    let fds = fs::read_dir(format!("/proc/{}/fd", pids[0])).unwrap().count();
    assert!(fds < 200, "daemon holds {fds} fds after the mappings are gone");
    m.umount();
    let m = e.mount();
    assert_eq!(&fs::read(e.m("mm")).unwrap()[..6], b"helloa");
    m.umount();
}

/// Names, statfs, special files, xattrs, fallocate, SEEK_DATA/HOLE, O_APPEND, ownership.
#[test]
fn posix_odds_and_ends() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    fs::create_dir(e.l(0).join("sg")).unwrap();
    std::os::unix::fs::chown(e.l(0).join("sg"), Some(0), Some(555)).unwrap();
    fs::set_permissions(e.l(0).join("sg"), fs::Permissions::from_mode(0o2777)).unwrap();
    let m = e.mount();
    let long = "x".repeat(256);
    let err = fs::write(e.m(&long), b"").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(36), "ENAMETOOLONG");
    write(e.m(&"y".repeat(255)), b"ok");
    assert_eq!(sh(&format!("stat -f -c %l {}", e.mnt.display())).trim(), "255");
    // devices, fifos, sockets: create, link, rename
    sh(&format!(
        "cd {} && mknod nul c 1 3 && mkfifo fifo && ln fifo fifo2 && mv nul nul2 && echo hi > nul2",
        e.mnt.display()
    ));
    drop(std::os::unix::net::UnixListener::bind(e.m("sock")).unwrap());
    assert!(fs::symlink_metadata(e.m("sock")).unwrap().file_type().is_socket());
    fs::rename(e.m("sock"), e.m("sock2")).unwrap();
    assert!(fs::symlink_metadata(e.m("fifo2")).unwrap().file_type().is_fifo());
    assert_eq!(fs::symlink_metadata(e.m("fifo")).unwrap().nlink(), 2);
    assert_eq!(fs::symlink_metadata(e.m("nul2")).unwrap().rdev(), (1 << 8) | 3);
    // xattrs
    write(e.m("x"), b"");
    xattr_set(&e.m("x"), "user.a", b"1");
    assert_eq!(xattr_get(&e.m("x"), "user.a").unwrap(), b"1");
    assert!(
        layerfs::sys::setxattr(&layerfs::sys::XattrPath::path(&e.m("x")), c"trusted.overlay.opaque", b"y", 0).is_err()
    );
    // fallocate, SEEK_DATA / SEEK_HOLE, O_APPEND
    sh(&format!(
        "python3 -c '
import os
fa = os.open(\"{0}.fa\", os.O_RDWR | os.O_CREAT, 0o644)
os.posix_fallocate(fa, 0, 8192)
assert os.fstat(fa).st_size == 8192 and os.fstat(fa).st_blocks >= 16
fd = os.open(\"{0}\", os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, b\"a\", 0)
os.pwrite(fd, b\"z\", 1 << 20)
assert os.fstat(fd).st_size == (1 << 20) + 1
assert os.lseek(fd, 0, os.SEEK_DATA) == 0
h = os.lseek(fd, 0, os.SEEK_HOLE)
assert 4096 <= h < (1 << 20), h
assert os.lseek(fd, h, os.SEEK_DATA) >= h
a = os.open(\"{1}\", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(a, b\"1\"); os.write(a, b\"2\")
b = os.open(\"{1}\", os.O_WRONLY | os.O_APPEND)
os.write(b, b\"3\"); os.write(a, b\"4\")
'",
        e.m("falloc").display(),
        e.m("app").display()
    ));
    assert_eq!(fs::read(e.m("app")).unwrap(), b"1234");
    // new entries belong to the caller; setgid directories pass their group on
    sh(&format!(
        "setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo > {0}/sg/mine && mkdir {0}/sg/subdir'",
        e.mnt.display()
    ));
    let md = fs::metadata(e.m("sg/mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 555));
    let sd = fs::metadata(e.m("sg/subdir")).unwrap();
    assert_eq!((sd.uid(), sd.gid()), (1000, 555));
    assert_ne!(sd.mode() & 0o2000, 0, "setgid not inherited by subdir");
    let denied = sh(&format!(
        "setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'touch {0}/nope 2>/dev/null && echo yes || echo no'",
        e.mnt.display()
    ));
    assert_eq!(denied.trim(), "no", "default_permissions not enforced");
    m.umount();
    let m = e.mount();
    assert_eq!(fs::metadata(e.m("sg/mine")).unwrap().gid(), 555);
    assert_eq!(fs::symlink_metadata(e.m("fifo")).unwrap().nlink(), 2);
    m.umount();
}

/// The upper directory is in the kernel overlayfs format: kernel overlay shows the same tree.
#[test]
fn upper_works_under_kernel_overlay() {
    if !can_mount() {
        return;
    }
    let e = Env::new(2);
    write(e.l(1).join("d/a"), b"a");
    write(e.l(1).join("d/b"), b"b");
    write(e.l(1).join("gone"), b"g");
    write(e.l(0).join("keep/k"), b"k");
    write(e.l(1).join("old/x"), b"x");
    let m = e.mount();
    fs::remove_file(e.m("gone")).unwrap();
    fs::remove_file(e.m("d/a")).unwrap();
    write(e.m("d/c"), b"c");
    fs::remove_dir_all(e.m("old")).unwrap();
    fs::create_dir(e.m("old")).unwrap();
    fs::rename(e.m("keep"), e.m("kept")).unwrap();
    fs::set_permissions(e.m("d/b"), fs::Permissions::from_mode(0o600)).unwrap(); // metacopy
    let tree = sh(&format!("cd {} && find . -printf '%p %m %s\n' | sort && cat d/b", e.mnt.display()));
    m.umount();
    let kmnt = e.dir.path().join("kmnt");
    fs::create_dir(&kmnt).unwrap();
    let kwork = e.dir.path().join("kwork");
    fs::create_dir(&kwork).unwrap();
    sh(&format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={},redirect_dir=on,metacopy=on {}",
        e.lowerdir(),
        e.upper.display(),
        kwork.display(),
        kmnt.display()
    ));
    let ktree = sh(&format!("cd {} && find . -printf '%p %m %s\n' | sort && cat d/b", kmnt.display()));
    sh(&format!("umount {}", kmnt.display()));
    assert_eq!(tree, ktree);
}

/// The fuse-overlayfs command line, `.wh.` lowers, SIGTERM and `layerfs mount`.
#[test]
fn command_lines_and_signals() {
    if !can_mount() {
        return;
    }
    let e = Env::new(2);
    let odd = e.dir.path().join("odd:name");
    fs::create_dir(&odd).unwrap();
    write(odd.join("from-odd"), b"");
    write(e.l(1).join("d/x"), b"");
    write(e.l(1).join("d/y"), b"");
    write(e.l(0).join("d/.wh..wh..opq"), b"");
    write(e.l(0).join("d/z"), b"");
    write(e.l(1).join("w"), b"");
    write(e.l(0).join(".wh.w"), b"");
    let opts = format!(
        "lowerdir={}:{}:{},upperdir={},workdir={}",
        e.l(0).display(),
        odd.display().to_string().replace(':', "\\:"),
        e.l(1).display(),
        e.upper.display(),
        e.work.display()
    );
    let out = std::process::Command::new(BIN)
        .args(["-o", &opts, "-o", "rw,dev,suid,nonsense_option", "overlay"])
        .arg(&e.mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense_option"));
    let m = Mount { path: e.mnt.clone() };
    assert_eq!(ls(&e.mnt), ["d", "from-odd"]);
    assert_eq!(ls(&e.m("d")), ["z"]);
    assert!(sh("cat /proc/mounts").contains(&format!("overlay {} fuse", e.mnt.display())));
    m.umount();
    // foreground + SIGTERM unmounts and exits
    let mut child = std::process::Command::new(BIN)
        .args(["mount", "-f", "--upper"])
        .arg(&e.upper)
        .arg("--work")
        .arg(&e.work)
        .arg(e.l(0))
        .arg(e.l(1))
        .arg(&e.mnt)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !is_fuse(&e.mnt) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(is_fuse(&e.mnt));
    assert_eq!(ls(&e.mnt), ["d"]);
    sh(&format!("kill -TERM {}", child.id()));
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!is_fuse(&e.mnt));
    // read-only without an upper
    let out = std::process::Command::new(BIN).arg("mount").arg(e.l(1)).arg(&e.mnt).output().unwrap();
    assert!(out.status.success());
    let m = Mount { path: e.mnt.clone() };
    assert_eq!(fs::write(e.m("new"), b"").unwrap_err().raw_os_error(), Some(30));
    m.umount();
}

/// Create/link/unlink/rename loops on several threads while the kernel forgets inodes.
#[test]
fn churn() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    for i in 0..50 {
        write(e.l(0).join(format!("c/l{i}")), b"lower");
    }
    let m = e.mount();
    let root = e.m("c");
    std::thread::scope(|s| {
        for t in 0..4 {
            let root = root.clone();
            s.spawn(move || {
                for i in 0..300 {
                    let a = root.join(format!("t{t}-{}", i % 7));
                    let b = root.join(format!("t{t}-{}", (i + 3) % 7));
                    let l = root.join(format!("l{}", (i * 7 + t) % 50));
                    let _ = fs::write(&a, format!("{t}:{i}"));
                    let _ = fs::hard_link(&a, root.join(format!("h{t}-{}", i % 5)));
                    let _ = fs::rename(&a, &b);
                    let _ = fs::remove_file(root.join(format!("h{t}-{}", (i + 2) % 5)));
                    match i % 4 {
                        0 => {
                            let _ = fs::remove_file(&l);
                        }
                        1 => {
                            let _ = fs::write(&l, b"again");
                        }
                        2 => {
                            let _ = fs::create_dir(root.join(format!("d{t}")));
                            let _ = fs::write(root.join(format!("d{t}/f")), b"");
                        }
                        _ => {
                            let _ = fs::remove_file(root.join(format!("d{t}/f")));
                            let _ = fs::remove_dir(root.join(format!("d{t}/mv{}", (t + 3) % 4)));
                            let _ = fs::remove_dir(root.join(format!("d{t}")));
                        }
                    }
                    // directory renames across parents, both directions (lock order)
                    let (x, y) = if i % 2 == 0 {
                        (root.join(format!("mv{t}")), root.join(format!("d{}/mv{t}", (t + 1) % 4)))
                    } else {
                        (root.join(format!("d{}/mv{t}", (t + 1) % 4)), root.join(format!("mv{t}")))
                    };
                    let _ = fs::create_dir(&x);
                    let _ = fs::rename(&x, &y);
                    if i % 50 == 0 {
                        // make the kernel forget inodes
                        let _ = fs::write("/proc/sys/vm/drop_caches", b"2");
                    }
                    let _ = fs::read_dir(&root).map(|d| d.count());
                }
            });
        }
    });
    // consistency: every listed name can be stat'ed, d_ino == st_ino, no duplicates
    let mut seen = HashSet::new();
    for ent in fs::read_dir(&root).unwrap() {
        let ent = ent.unwrap();
        assert!(seen.insert(ent.file_name()));
        let md = fs::symlink_metadata(ent.path()).unwrap();
        assert_eq!(ent.ino(), md.ino(), "{:?}", ent.file_name());
    }
    let before = ls(&root);
    m.umount();
    let m = e.mount();
    assert_eq!(ls(&root), before);
    for n in &before {
        let p = root.join(n);
        if p.is_file() {
            fs::read(&p).unwrap();
        }
    }
    m.umount();
}

/// FUSE passthrough engages: reads and writes through open files are served while the daemon
/// is stopped (SIGSTOP); writes included, since the daemon handles set-id clearing
/// (FUSE_HANDLE_KILLPRIV_V2) and the kernel stops asking it for `security.capability` before
/// each write. Contents are the same with passthrough turned off.
#[test]
fn passthrough_engages_and_fallback_matches() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write(e.l(0).join("lower"), &data);
    let m = e.mount();
    write(e.m("upper"), &data);
    let lower = fs::File::open(e.m("lower")).unwrap();
    let upper = fs::OpenOptions::new().read(true).write(true).open(e.m("upper")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&upper, b"via-passthrough", 10).unwrap();
    // Only read/write calls: anything else (fstat) would need the daemon.
    let got = with_daemon_stopped(&e.mnt, std::time::Duration::from_secs(10), move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 400_000];
        let mut n = 0;
        let r1 = loop {
            match lower.read_at(&mut buf[n..], n as u64) {
                Ok(0) => break Some(buf[..n].to_vec()),
                Ok(k) => n += k,
                Err(_) => break None,
            }
        };
        let r2 = (0..100).all(|i| upper.write_all_at(b"stopped", 1000 + 8 * i).is_ok());
        let mut b2 = vec![0u8; 15];
        let r3 = upper.read_exact_at(&mut b2, 10).map(|_| b2);
        (r1, r2, r3.ok())
    });
    let (r1, r2, r3) = got.expect("I/O blocked while the daemon was stopped: passthrough not engaged");
    assert_eq!(r1.as_deref(), Some(&data[..]));
    assert!(r2);
    assert_eq!(r3.as_deref(), Some(&b"via-passthrough"[..]));
    m.umount();
    // Fallback: the daemon serves the data itself.
    let m = e.mount_with(&["-o", "passthrough=0"]);
    assert_eq!(fs::read(e.m("lower")).unwrap(), data);
    let up = fs::read(e.m("upper")).unwrap();
    assert_eq!(&up[10..25], b"via-passthrough");
    assert_eq!(&up[1000 + 8 * 99..1000 + 8 * 99 + 7], b"stopped");
    // copy-up while a read is open
    let mut r = fs::File::open(e.m("lower")).unwrap();
    fs::OpenOptions::new().append(true).open(e.m("lower")).unwrap().write_all(b"!").unwrap();
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).unwrap();
    assert_eq!(&buf[..data.len()], &data[..]);
    assert_eq!(fs::metadata(e.m("lower")).unwrap().len(), data.len() as u64 + 1);
    drop(r);
    m.umount();
}

/// A mount whose daemon died is reported (ENOTCONN), not hung, and can be unmounted.
#[test]
fn dead_daemon_is_reported() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    write(e.l(0).join("f"), b"x");
    let m = e.mount();
    let pid = daemon_pids(&e.mnt)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // ENOTCONN or ECONNABORTED, at once: not a hang
    let err = fs::metadata(e.m("f")).unwrap_err().raw_os_error();
    assert!(matches!(err, Some(107 | 103)), "{err:?}");
    let out = std::process::Command::new(BIN).arg("mount").arg(e.l(0)).arg(&e.mnt).output().unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("daemon died"), "{msg}");
    m.umount();
}

/// `-f -o ready_fd=N`: the foreground daemon says "ready" on an inherited pipe once the mount is
/// live (the launcher keeps it as its child this way); SIGTERM unmounts and ends it.
#[test]
fn foreground_ready_fd() {
    if !can_mount() {
        return;
    }
    let env = Env::new(1);
    write(env.l(0).join("f"), b"lower");
    let (r, w) = nix::unistd::pipe().unwrap();

    let opts = format!(
        "lowerdir={},upperdir={},workdir={},ready_fd={}",
        env.lowerdir(),
        env.upper.display(),
        env.work.display(),
        w.as_raw_fd()
    );
    let mut child =
        std::process::Command::new(common::BIN).arg("-f").arg("-o").arg(opts).arg(&env.mnt).spawn().unwrap();
    drop(w);
    let mut got = String::new();
    fs::File::from(r).read_to_string(&mut got).unwrap();
    assert_eq!(got, "ready\n");
    assert!(is_fuse(&env.mnt), "live when ready is said");
    assert_eq!(fs::read(env.m("f")).unwrap(), b"lower");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!is_fuse(&env.mnt));

    // A failing mount closes the pipe without a word.
    let (r, w) = nix::unistd::pipe().unwrap();
    let opts = format!("lowerdir=/nonexistent,ready_fd={}", w.as_raw_fd());
    let mut child = std::process::Command::new(common::BIN)
        .arg("-f")
        .arg("-o")
        .arg(opts)
        .arg(&env.mnt)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(w);
    let mut got = String::new();
    fs::File::from(r).read_to_string(&mut got).unwrap();
    assert_eq!(got, "");
    assert!(!child.wait().unwrap().success());
}

/// Unprivileged use: layerfs mounted by root of a user namespace (`unshare -Urm`: no
/// capability in the initial namespace) writes `user.overlay.*` xattrs, never `trusted.*`, falls
/// back from passthrough (and says so), cannot create devices; the upper it leaves is the same
/// tree when mounted again by the real root.
#[test]
fn unprivileged_in_a_user_namespace() {
    if !can_mount() {
        return;
    }
    let env = Env::new(1);
    write(env.l(0).join("a"), b"lower a");
    write(env.l(0).join("d/x"), b"x");
    write(env.l(0).join("big"), &[7u8; 100_000]);
    let log = env.upper.parent().unwrap().join("daemon.log");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},log={}",
        env.lowerdir(),
        env.upper.display(),
        env.work.display(),
        log.display()
    );
    let m = env.mnt.display();
    let script = format!(
        "set -e; {BIN} -o {opts} {m}; cat {m}/a; echo; rm {m}/a; echo new > {m}/b; rm -rf {m}/d; mkdir {m}/d; \
         printf more >> {m}/big; cat {m}/big | wc -c; if mknod {m}/null c 1 3 2>/dev/null; then echo mknod-ok; fi; \
         ls -A {m}; umount {m}"
    );
    let out = std::process::Command::new("unshare").args(["-Urm", "sh", "-c", &script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("lower a\n100004\n"), "{stdout}");
    assert!(!stdout.contains("mknod-ok"), "a device node was created in a user namespace: {stdout}");
    assert_eq!(stdout.lines().skip(2).collect::<Vec<_>>(), ["b", "big", "d"], "{stdout}");
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("FUSE passthrough unavailable"), "the fallback is logged: {log}");
    // The upper, as the user namespace left it.
    let wh = whiteouts_in(&env.upper);
    assert!(wh == ["a"] || wh == [".wh.a"], "{wh:?}");
    assert_eq!(xattr_get(&env.upper.join("d"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr_get(&env.upper.join("d"), "trusted.overlay.opaque"), None);
    let listing = sh(&format!("getfattr -R -d -m - --absolute-names {} 2>/dev/null || true", env.upper.display()));
    assert!(!listing.contains("trusted."), "no trusted.* xattr in the upper: {listing}");
    assert_eq!(fs::read(env.upper.join("b")).unwrap(), b"new\n");
    // Mounted again by the real root: the same tree.
    let mnt = env.mount();
    assert_eq!(ls(&env.mnt), ["b", "big", "d"]);
    assert!(ls(&env.m("d")).is_empty(), "d stays opaque");
    assert_eq!(fs::metadata(env.m("big")).unwrap().len(), 100_004);
    mnt.umount();
}

/// Copy-up from a lower on one filesystem to an upper on another (tmpfs, as a container's state
/// under /run): `copy_file_range` cannot cross them, the data goes by sendfile; contents and holes
/// are kept.
#[test]
fn copy_up_across_filesystems() {
    if !can_mount() {
        return;
    }
    let env = Env::new(1);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    write(env.l(0).join("data"), &data);
    let sparse = fs::File::create(env.l(0).join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 32 << 20).unwrap();
    drop(sparse);
    // Upper and work share a filesystem: one tmpfs, two directories.
    struct Tmpfs(std::path::PathBuf);
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    sh(&format!("mount -t tmpfs tmpfs {}", env.upper.display()));
    let _tmpfs = Tmpfs(env.upper.clone());
    let (upper, work) = (env.upper.join("u"), env.upper.join("w"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    let opts = format!("lowerdir={},upperdir={},workdir={}", env.lowerdir(), upper.display(), work.display());
    let out = std::process::Command::new(BIN).args(["-o", &opts]).arg(&env.mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Mount { path: env.mnt.clone() };
    fs::OpenOptions::new().append(true).open(env.m("data")).unwrap().write_all(b"end").unwrap();
    fs::OpenOptions::new().write(true).open(env.m("sparse")).unwrap().write_all(b"start").unwrap();
    let mut want = data.clone();
    want.extend_from_slice(b"end");
    assert_eq!(fs::read(env.m("data")).unwrap(), want);
    assert_eq!(fs::read(upper.join("data")).unwrap(), want, "the copy in the upper");
    let copy = fs::metadata(upper.join("sparse")).unwrap();
    assert_eq!(copy.len(), 64 << 20);
    assert!(copy.blocks() * 512 < 1 << 20, "holes kept: {} blocks", copy.blocks());
    let got = fs::read(upper.join("sparse")).unwrap();
    assert_eq!(&got[..5], b"start");
    assert_eq!(&got[32 << 20..(32 << 20) + 6], b"middle");
    assert_eq!(got.iter().filter(|&&b| b != 0).count(), 11);
    m.umount();
}

/// Lists `dir` while the daemon of `mnt` is stopped: the listing if it came from the kernel's
/// cache within `wait`, else `None`.
fn list_with_daemon_stopped(mnt: &Path, dir: PathBuf, wait: std::time::Duration) -> Option<Vec<String>> {
    with_daemon_stopped(mnt, wait, move || ls(&dir))
}

/// By default the kernel caches directory listings (served with the daemon stopped); with
/// `cache_dirs=0` every listing is asked of the daemon (no per-mount page cache for them), and
/// comes out the same.
#[test]
fn directory_listings_cached_unless_cache_dirs_0() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    fs::create_dir(e.l(0).join("d")).unwrap();
    let mut want: Vec<String> = (0..300).map(|i| format!("file-{i:03}")).collect();
    for n in &want {
        write(e.l(0).join("d").join(n), b"x");
    }
    want.sort();
    let m = e.mount();
    write(e.m("d/new"), b"upper");
    want.push("new".into());
    want.sort();
    // Twice: the kernel asks for the directory's attributes again after a listing it did not
    // have cached (the atime it cannot know).
    assert_eq!(ls(&e.m("d")), want);
    assert_eq!(ls(&e.m("d")), want);
    let cached = list_with_daemon_stopped(&e.mnt, e.m("d"), std::time::Duration::from_secs(10));
    assert_eq!(cached.as_ref(), Some(&want), "listing not served from the kernel's cache");
    m.umount();

    let m = e.mount_with(&["-o", "cache_dirs=0"]);
    assert_eq!(ls(&e.m("d")), want);
    assert_eq!(ls(&e.m("d")), want);
    let got = list_with_daemon_stopped(&e.mnt, e.m("d"), std::time::Duration::from_millis(1500));
    assert_eq!(got, None, "cache_dirs=0: a listing came back with the daemon stopped");
    fs::remove_file(e.m("d/file-000")).unwrap();
    want.retain(|n| n != "file-000");
    assert_eq!(ls(&e.m("d")), want);
    m.umount();
}

/// Unmounts (lazily) the given mounts on drop, last first.
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = layerfs::mount::umount(p, true);
        }
    }
}

/// A full upper file system: a write and a copy-up that do not fit fail with ENOSPC, nothing
/// half-copied shows or stays behind in the work directory, the lower data stays readable,
/// metadata-only changes still work, and the mount works again once space is freed.
#[test]
fn full_upper_gives_enospc_and_loses_nothing() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    write(e.l(0).join("big"), &big);
    write(e.l(0).join("small"), b"small lower file");
    // Upper and work on one 1 MiB tmpfs.
    let small = e.dir.path().join("small-fs");
    fs::create_dir(&small).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    let mut guard = Unmount(vec![small.clone()]);
    let (upper, work) = (small.join("u"), small.join("w"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    let mount = |upper: &Path, work: &Path| {
        std::process::Command::new(BIN)
            .arg("-o")
            .arg(format!("lowerdir={},upperdir={},workdir={}", e.lowerdir(), upper.display(), work.display()))
            .arg(&e.mnt)
            .output()
            .unwrap()
    };
    // The same file system under two mounts (bind mounts) is refused at mount, as kernel
    // overlayfs does, instead of failing every copy-up with EXDEV later.
    for (d, at) in [(&upper, &e.upper), (&work, &e.work)] {
        let st = std::process::Command::new("mount").arg("--bind").arg(d).arg(at).status().unwrap();
        assert!(st.success(), "bind mount");
        guard.0.push(at.clone());
    }
    let out = mount(&e.upper, &work);
    assert!(!out.status.success(), "upper and work under different mounts were accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("under the same mount"), "{out:?}");
    let out = mount(&upper, &work);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Mount { path: e.mnt.clone() };

    // A new file bigger than the upper: the write fails with ENOSPC.
    let err = fs::write(e.m("new"), &big).expect_err("3 MB fitted in a 1 MiB upper");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    fs::remove_file(e.m("new")).unwrap();

    // A copy-up that does not fit: the open for writing fails, the file keeps its lower data,
    // and nothing of the attempt is left in the upper or the work directory.
    let err = fs::OpenOptions::new().append(true).open(e.m("big")).expect_err("copy-up of 3 MB fitted in 1 MiB");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(fs::read(e.m("big")).unwrap(), big);
    assert!(!upper.join("big").exists(), "a partial copy-up is visible in the upper");
    assert_eq!(ls(&work.join("work")), Vec::<String>::new(), "copy-up leftovers in the work directory");

    // Metadata-only changes need no data copy: they still work on the full upper.
    fs::set_permissions(e.m("big"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(e.m("big")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read(e.m("big")).unwrap(), big);

    // Small changes fit: the mount is healthy.
    fs::OpenOptions::new().append(true).open(e.m("small")).unwrap().write_all(b" + upper").unwrap();
    assert_eq!(fs::read(e.m("small")).unwrap(), b"small lower file + upper");
    m.umount();
    // After a remount everything is as it was left.
    let out = mount(&upper, &work);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Mount { path: e.mnt.clone() };
    assert_eq!(fs::read(e.m("big")).unwrap(), big);
    assert_eq!(fs::metadata(e.m("big")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read(e.m("small")).unwrap(), b"small lower file + upper");
    assert!(!e.m("new").exists());
    m.umount();
    drop(guard);
}

/// fuse-overlayfs' `uidmapping=`/`gidmapping=`: stored ids are shown shifted, ids from the
/// kernel are stored shifted back, POSIX ACLs included; unmapped ids become 65534.
#[test]
fn uid_and_gid_mapping() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    let l = e.l(0);
    write(l.join("root-owned"), b"r");
    write(l.join("user-owned"), b"u");
    std::os::unix::fs::chown(l.join("user-owned"), Some(1), Some(2)).unwrap();
    write(l.join("stranger"), b"s");
    std::os::unix::fs::chown(l.join("stranger"), Some(500_000), Some(500_000)).unwrap();
    write(l.join("acl"), b"a");
    xattr_set(&l.join("acl"), "system.posix_acl_access", &acl_bytes());
    let m = e.mount_with(&["-o", "uidmapping=0:1000:1:1:100000:65536,gidmapping=0:2000:1:1:200000:65536"]);
    let ids = |p: &str| {
        let md = fs::symlink_metadata(e.m(p)).unwrap();
        (md.uid(), md.gid())
    };
    assert_eq!(ids("root-owned"), (1000, 2000));
    assert_eq!(ids("user-owned"), (100_000, 200_001));
    assert_eq!(ids("stranger"), (65534, 65534));
    assert_eq!(ids(""), (1000, 2000));
    // ACL: the named user 1234 is stored, shown as 100000 + 1233.
    let shown = xattr_get(&e.m("acl"), "system.posix_acl_access").unwrap();
    assert_eq!(u32::from_le_bytes(shown[4 + 8 + 4..4 + 16].try_into().unwrap()), 100_000 + 1233);
    // chown through the mount stores the ids shifted back, the ACL goes back as it came.
    std::os::unix::fs::chown(e.m("root-owned"), Some(100_004), Some(200_005)).unwrap();
    let md = fs::metadata(e.upper.join("root-owned")).unwrap();
    assert_eq!((md.uid(), md.gid()), (5, 6));
    assert_eq!(ids("root-owned"), (100_004, 200_005));
    xattr_set(&e.m("acl"), "system.posix_acl_access", &shown);
    assert_eq!(xattr_get(&e.upper.join("acl"), "system.posix_acl_access").unwrap(), acl_bytes());
    // A file created by a caller the mapping knows is stored as its stored id; one created by
    // a caller it does not know (host root here) gets the overflow id, as in fuse-overlayfs.
    sh(&format!("setpriv --reuid=1000 --regid=2000 --clear-groups touch {}", e.m("tmp-by-mapped").display()));
    let md = fs::metadata(e.upper.join("tmp-by-mapped")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
    assert_eq!(ids("tmp-by-mapped"), (1000, 2000));
    write(e.m("by-host-root"), b"x");
    let md = fs::metadata(e.upper.join("by-host-root")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    m.umount();
    // A bad mapping is refused with the option's name.
    let out = std::process::Command::new(BIN)
        .args(["-o", &format!("lowerdir={},uidmapping=0:1000", e.lowerdir())])
        .arg(&e.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("uidmapping"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Set-id bits are cleared by a write or a truncation from a caller without CAP_FSETID (an
/// ordinary user), kept for root, as on a local filesystem; such files are written through the
/// daemon (which clears the bits), not passthrough.
#[test]
fn writes_by_unprivileged_callers_clear_setid_bits() {
    if !can_mount() {
        return;
    }
    let e = Env::new(1);
    for n in ["w", "t", "o", "root", "nogx"] {
        write(e.l(0).join(n), b"#!/bin/sh\n");
        std::os::unix::fs::chown(e.l(0).join(n), Some(1000), Some(1000)).unwrap();
    }
    let m = e.mount();
    for (n, mode) in [("w", 0o6775), ("t", 0o6775), ("o", 0o6775), ("root", 0o6775), ("nogx", 0o2766)] {
        fs::set_permissions(e.m(n), fs::Permissions::from_mode(mode)).unwrap();
    }
    let as_user = |cmd: &str| sh(&format!("setpriv --reuid=1000 --regid=1000 --clear-groups sh -c '{cmd}'"));
    as_user(&format!("echo x >> {}", e.m("w").display()));
    as_user(&format!("truncate -s 3 {}", e.m("t").display()));
    as_user(&format!("echo x >> {}", e.m("nogx").display()));
    as_user(&format!("echo y > {}", e.m("o").display()));
    sh(&format!("echo x >> {}", e.m("root").display()));
    let mode = |n: &str| fs::metadata(e.m(n)).unwrap().mode() & 0o7777;
    assert_eq!(mode("w"), 0o775, "write by a user clears set-uid and set-gid");
    assert_eq!(mode("t"), 0o775, "truncation by a user clears them");
    assert_eq!(mode("o"), 0o775, "O_TRUNC by a user clears them");
    assert_eq!(mode("nogx"), 0o2766, "set-gid without group execution stays");
    assert_eq!(mode("root"), 0o6775, "root keeps them");
    assert_eq!(fs::read(e.m("w")).unwrap(), b"#!/bin/sh\nx\n");
    assert_eq!(fs::metadata(e.upper.join("w")).unwrap().mode() & 0o7777, 0o775);
    m.umount();
}
