//! Any bytes: opening, verifying and every accessor answer without panicking or reading out of
//! bounds.
#![no_main]

use format_spec::{Layer, VerifyOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(layer) = Layer::open(data) else { return };
    let _ = layer.verify(VerifyOptions { data: true });
    for ino in 1..=layer.inode_count().min(4096) {
        let Ok(inode) = layer.inode(ino) else { continue };
        let _ = layer.xattrs(&inode);
        let _ = layer.xattr(&inode, b"security.capability");
        let _ = layer.readlink(&inode);
        let _ = layer.digest(&inode);
        let _ = layer.times(&inode);
        let _ = layer.lookup(&inode, b"etc");
        if let Ok(it) = layer.read_dir(&inode, 0) {
            for e in it.take(256) {
                let _ = e;
            }
        }
        let mut buf = [0u8; 4096];
        let _ = layer.read(&inode, 0, &mut buf);
        let _ = layer.read(&inode, inode.size.saturating_sub(10), &mut buf);
        let _ = layer.read_segments(&inode, 0, u64::MAX);
    }
});
