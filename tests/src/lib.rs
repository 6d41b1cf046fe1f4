//! Shared helpers of the integration tests (the tests themselves are in `tests/`).

use std::path::PathBuf;
use std::process::Command;

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The cached Debian root filesystem tarball, built with mmdebstrap on first use (needs root and
/// Debian's archive). Panics with the reason when it cannot be had: this test must not pass
/// silently.
pub fn debian_tarball() -> PathBuf {
    let script = repo_root().join("scripts/debian-image.sh");
    let out = Command::new(&script).output().unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "building the Debian test image failed (needs root, mmdebstrap and Debian's archive):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

/// A binary of the workspace, built in the same profile as the running test (`cargo test
/// --workspace` builds them all). Panics with a hint when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps/..");
    let p = dir.join(name);
    assert!(p.is_file(), "{} is missing: build the workspace first (cargo build --workspace)", p.display());
    p
}
