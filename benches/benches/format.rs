//! Micro-benchmarks of the packed layer reader on a 50,000-entry layer (500 directories of 100
//! files, plus one directory of 10,000): open, lookup (hit, miss), readdir, getattr, read.
//! Run: `cargo bench -p benches --bench format`. Prints the machine first.

use std::hint::black_box;
use std::io::Cursor;

use criterion::{Criterion, criterion_group, criterion_main};
use format_spec::{Layer, LayerBuilder, Meta, Timestamp};

fn build() -> Vec<u8> {
    let file = tempfile::tempfile().unwrap();
    let mut b = LayerBuilder::new(file.try_clone().unwrap());
    let meta = Meta { mode: 0o644, mtime: Timestamp { sec: 1, nsec: 0 }, ..Meta::default() };
    let data = vec![7u8; 64 * 1024];
    for d in 0..500 {
        for f in 0..100 {
            let size = if f == 0 { data.len() } else { 100 + f };
            let path = format!("usr/lib/dir{d:03}/file{f:03}.py");
            b.file(path.as_bytes(), meta.clone(), size as u64, &mut Cursor::new(&data[..size])).unwrap();
        }
    }
    for f in 0..10_000 {
        b.file(format!("big/f{f:05}").as_bytes(), meta.clone(), 10, &mut Cursor::new(&data[..10])).unwrap();
    }
    b.finish(None).unwrap();
    std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).unwrap()
}

fn benches(c: &mut Criterion) {
    eprintln!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    let bytes = build();
    let layer = Layer::open(&bytes[..]).unwrap();
    eprintln!("layer: {} inodes, {} bytes", layer.inode_count(), bytes.len());
    let root = layer.inode(1).unwrap();
    let usr = layer.inode(layer.lookup(&root, b"usr").unwrap().unwrap().ino).unwrap();
    let lib = layer.inode(layer.lookup(&usr, b"lib").unwrap().unwrap().ino).unwrap();
    let dir = layer.inode(layer.lookup(&lib, b"dir250").unwrap().unwrap().ino).unwrap();
    let big = layer.inode(layer.lookup(&root, b"big").unwrap().unwrap().ino).unwrap();
    let file0 = layer.inode(layer.lookup(&dir, b"file000.py").unwrap().unwrap().ino).unwrap();

    c.bench_function("open (header + section bounds)", |b| b.iter(|| Layer::open(black_box(&bytes[..])).unwrap()));
    c.bench_function("lookup hit (dir of 500)", |b| b.iter(|| layer.lookup(&lib, black_box(b"dir371")).unwrap()));
    c.bench_function("lookup hit (dir of 10000)", |b| b.iter(|| layer.lookup(&big, black_box(b"f07311")).unwrap()));
    c.bench_function("lookup miss (dir of 10000)", |b| b.iter(|| layer.lookup(&big, black_box(b"libc.so.6")).unwrap()));
    c.bench_function("getattr (inode record)", |b| b.iter(|| layer.inode(black_box(file0.ino)).unwrap()));
    c.bench_function("readdir 100 entries", |b| {
        b.iter(|| layer.read_dir(&dir, 0).unwrap().map(|e| e.unwrap().ino as u64).sum::<u64>())
    });
    c.bench_function("readdirplus 100 entries (entry + inode)", |b| {
        b.iter(|| layer.read_dir(&dir, 0).unwrap().map(|e| layer.inode(e.unwrap().ino).unwrap().size).sum::<u64>())
    });
    let mut buf = vec![0u8; 4096];
    c.bench_function("read 4 KiB", |b| b.iter(|| layer.read(&file0, black_box(8192), &mut buf).unwrap()));
    let mut big_buf = vec![0u8; 64 * 1024];
    c.bench_function("read 64 KiB", |b| b.iter(|| layer.read(&file0, 0, &mut big_buf).unwrap()));
}

criterion_group!(name = format; config = Criterion::default().sample_size(50); targets = benches);
criterion_main!(format);
