//! Any sequence of builder operations: what the builder accepts, the reader reads back, and the
//! result always verifies.
#![no_main]

use std::io::Cursor;

use arbitrary::Arbitrary;
use format_spec::{Kind, Layer, LayerBuilder, Meta, Timestamp, VerifyOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Dir(u8, u16),
    File(u8, u16, Vec<u8>, bool),
    Symlink(u8, Vec<u8>),
    Hardlink(u8, u8),
    Special(u8, u8),
    Whiteout(u8),
    Opaque(u8),
    Xattr(u8, Vec<u8>, Vec<u8>),
}

const NAMES: [&str; 12] = ["a", "b", "a/b", "a/c", "b/a", "a/b/c", "d", "a/b/c/d", "e/f", "x", "a/x", "long"];

fn path(i: u8) -> &'static [u8] {
    NAMES[i as usize % NAMES.len()].as_bytes()
}

fuzz_target!(|ops: Vec<Op>| {
    let file = tempfile::tempfile().unwrap();
    let mut b = LayerBuilder::new(file.try_clone().unwrap());
    for op in ops.iter().take(64) {
        let meta = |mode: u16| Meta { mode: mode as u32, mtime: Timestamp { sec: 5, nsec: 6 }, ..Meta::default() };
        let _ = match op {
            Op::Dir(p, m) => b.dir(path(*p), meta(*m)),
            Op::File(p, m, data, sparse) => {
                let mut d = data.clone();
                if *sparse {
                    d.resize(d.len() + 8192, 0);
                    d.extend_from_slice(data);
                }
                b.file(path(*p), meta(*m), d.len() as u64, &mut Cursor::new(d))
            }
            Op::Symlink(p, t) => b.symlink(path(*p), meta(0o777), t),
            Op::Hardlink(p, t) => b.hardlink(path(*p), path(*t)),
            Op::Special(p, k) => {
                let kind = [Kind::CharDev, Kind::BlockDev, Kind::Fifo, Kind::Socket][*k as usize % 4];
                b.special(path(*p), meta(0o600), kind, (1, 2))
            }
            Op::Whiteout(p) => b.whiteout(path(*p)),
            Op::Opaque(p) => b.opaque(path(*p)),
            Op::Xattr(p, k, v) => {
                let mut m = meta(0o644);
                m.xattrs = vec![(k.clone(), v.clone())];
                b.file(path(*p), m, 1, &mut Cursor::new(b"x"))
            }
        };
    }
    b.finish(None).unwrap();
    let bytes = std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).unwrap();
    let layer = Layer::open(&bytes[..]).expect("a written layer opens");
    layer.verify(VerifyOptions { data: true }).expect("a written layer verifies");
});
