//! Garbage collection never deletes what a live mount uses: `rmi` of an image whose container
//! (here: a layerfs mount) is still running keeps its layers and objects until the mount ends.

use std::io::Write;
use std::process::Command;

use indicatif::ProgressBar;
use tools::import::{ImportOptions, import};
use tools::store::Store;

#[test]
fn rmi_keeps_layers_and_objects_of_live_mounts() {
    assert!(std::path::Path::new("/dev/fuse").exists(), "this test mounts layerfs: needs /dev/fuse and root");
    let layerfs = integration_tests::workspace_bin("layerfs");
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("etc/motd", &b"hi\n"[..]), ("usr/lib/big.so", &big[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    let tarball = dir.path().join("rootfs.tar");
    std::fs::File::create(&tarball).unwrap().write_all(&b.into_inner().unwrap()).unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    import(&store, &tarball, "leased:1", &ImportOptions::default(), &ProgressBar::hidden()).unwrap();

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let store_opt = format!("store={}", store.root().display());
    let out = Command::new(&layerfs).args(["mount", "-o", &store_opt, "leased:1"]).arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unmount = || {
        let _ = Command::new(&layerfs).arg("umount").arg(&mnt).status();
    };

    {
        let _lock = store.lock_exclusive().unwrap();
        store.remove_image("leased:1").unwrap();
        let gc = store.collect_garbage().unwrap();
        if gc.leased != 1 || gc.objects != 0 {
            unmount();
            panic!("gc deleted what a live mount uses: {gc:?}");
        }
    }
    // The object-backed file was never opened before the gc: it still reads.
    let read = std::fs::read(mnt.join("usr/lib/big.so"));
    unmount();
    assert_eq!(read.unwrap(), big);
    // Once the mount is gone (its daemon exits and its lease with it), gc frees everything.
    let mut freed = None;
    for _ in 0..100 {
        let _lock = store.lock_exclusive().unwrap();
        let gc = store.collect_garbage().unwrap();
        if gc.layers == 1 {
            freed = Some(gc);
            break;
        }
        drop(_lock);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let gc = freed.expect("the layer was freed after the mount ended");
    assert!(gc.objects >= 1, "{gc:?}");
}
