#!/usr/bin/env bash
# Sets up what the tests need (the reference peers py2p and js2p, in the
# ignored .peers/ folder) and runs every test, lint and doc check.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-peers.sh
scripts/setup-browser.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --locked --no-deps --quiet
cargo test --locked --all-targets
cargo test --locked --doc
