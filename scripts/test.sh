#!/usr/bin/env bash
# The project's test command (README): gates (fmt, clippy, docs), unit and integration tests (real
# mounts, containers and a real Debian image, built once with mmdebstrap and cached).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q
cargo build --workspace --release -q
cargo test --workspace --release
