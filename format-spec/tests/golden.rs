//! Golden files: the bytes of released format versions never change meaning. Every released
//! version's sample stays here and must keep opening and verifying; the current writer must
//! reproduce the current version's sample byte for byte (set `UPDATE_GOLDEN=1` to rewrite it
//! after a deliberate format change, which also needs a version bump in `SPEC.md`).

use std::io::Cursor;

use format_spec::raw::{COMPAT_TIMES, MAGIC, RawHeader, RawInode, SectionId};
use format_spec::{Kind, Layer, LayerBuilder, Meta, Timestamp, VerifyOptions};
use zerocopy::FromBytes;

const GOLDEN_V1_0: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v1.0-sample.lpk");

fn sample() -> Vec<u8> {
    let file = tempfile::tempfile().unwrap();
    let mut b = LayerBuilder::new(file.try_clone().unwrap());
    let m = |mode| Meta { mode, uid: 0, gid: 0, mtime: Timestamp { sec: 1_000_000_000, nsec: 5 }, ..Meta::default() };
    b.dir(b"", m(0o755)).unwrap();
    b.file(b"etc/hostname", m(0o644), 4, &mut Cursor::new(b"lpk\n")).unwrap();
    b.hardlink(b"etc/hostname.link", b"etc/hostname").unwrap();
    b.symlink(b"bin", m(0o777), b"usr/bin").unwrap();
    b.special(b"dev/null", m(0o666), Kind::CharDev, (1, 3)).unwrap();
    b.whiteout(b"usr/removed").unwrap();
    b.opaque(b"var").unwrap();
    let mut x = m(0o755);
    x.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
    x.ctime = Some(Timestamp { sec: 7, nsec: 8 });
    b.file(b"usr/bin/tool", x, 5000, &mut Cursor::new(vec![0xab; 5000])).unwrap();
    b.finish(Some([0x11; 32])).unwrap();
    std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).unwrap()
}

#[test]
fn writer_reproduces_the_golden_file() {
    let bytes = sample();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN_V1_0, &bytes).unwrap();
    }
    let golden = std::fs::read(GOLDEN_V1_0).expect("golden file present");
    assert!(golden == bytes, "the writer's output changed: a format change needs a version bump (see SPEC.md)");
}

#[test]
fn golden_v1_0_reads_and_matches_the_spec_offsets() {
    let golden = std::fs::read(GOLDEN_V1_0).unwrap();
    // Annotated header bytes (SPEC.md §3).
    assert_eq!(&golden[0..8], &MAGIC);
    assert_eq!(&golden[0..8], b"\x89LPK\r\n\x1a\n");
    assert_eq!(u16::from_le_bytes([golden[8], golden[9]]), 1, "version_major at 8");
    assert_eq!(u32::from_le_bytes(golden[12..16].try_into().unwrap()), 512, "header_size at 12");
    assert_eq!(u64::from_le_bytes(golden[16..24].try_into().unwrap()), golden.len() as u64, "file_size at 16");
    assert_eq!(u32::from_le_bytes(golden[32..36].try_into().unwrap()), COMPAT_TIMES, "compat at 32");
    assert_eq!(u32::from_le_bytes(golden[36..40].try_into().unwrap()), 12, "block_log2 at 36");
    assert_eq!(u32::from_le_bytes(golden[40..44].try_into().unwrap()), 1, "root_ino at 40");
    assert_eq!(u64::from_le_bytes(golden[56..64].try_into().unwrap()), 4096, "data_start at 56");
    assert_eq!(&golden[72..104], &[0x11; 32], "source_digest at 72");
    assert_eq!(crc32fast::hash(&golden[..508]).to_le_bytes(), golden[508..512], "crc32 at 508");
    assert!(golden[512..4096].iter().all(|&b| b == 0));
    let h = RawHeader::read_from_bytes(&golden[..512]).unwrap();
    let inodes = h.sections[SectionId::Inodes as usize];
    // Inode 1 is the root directory, at the start of the INODES section (SPEC.md §5).
    let root = RawInode::read_from_bytes(&golden[inodes.offset.get() as usize..][..64]).unwrap();
    assert_eq!(root.mode.get(), 0o40755);
    assert_eq!(root.parent.get(), 1);
    assert_eq!(
        u32::from_le_bytes(golden[inodes.offset.get() as usize + 60..][..4].try_into().unwrap()),
        1,
        "parent at 60"
    );

    let layer = Layer::open(&golden[..]).unwrap();
    let st = layer.verify(VerifyOptions { data: true }).unwrap();
    assert_eq!(
        (st.dirs, st.files, st.symlinks, st.specials, st.whiteouts, st.opaque_dirs, st.hardlinks),
        (6, 2, 1, 1, 1, 1, 1)
    );
    let root = layer.inode(1).unwrap();
    let names: Vec<_> = layer.read_dir(&root, 0).unwrap().map(|e| e.unwrap().name.to_vec()).collect();
    assert_eq!(names, [&b"bin"[..], b"dev", b"etc", b"usr", b"var"]);
}
