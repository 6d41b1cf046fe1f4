//! Any bytes as a (possibly compressed) tar: conversion either fails with an error or produces a
//! layer that opens and verifies.
#![no_main]

use format_spec::{Layer, LayerBuilder, VerifyOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = tempfile::tempfile().unwrap();
    let mut b = LayerBuilder::new(file.try_clone().unwrap());
    let Ok(reader) = tools::convert::decompress(data) else { return };
    if tools::convert::convert_tar(reader, &mut b).is_err() {
        return;
    }
    b.finish(None).unwrap();
    let bytes = std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).unwrap();
    let layer = Layer::open(&bytes[..]).expect("a converted layer opens");
    layer.verify(VerifyOptions { data: true }).expect("a converted layer verifies");
});
