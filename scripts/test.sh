#!/usr/bin/env bash
# The project's test command (README): gates, unit and integration tests, end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q
cargo build --workspace --release -q
cargo test --workspace --release
./scripts/e2e.sh
