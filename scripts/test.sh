#!/usr/bin/env bash
# Sets up what the tests need (the reference peers py2p and js2p, in the
# ignored .peers/ folder; Chromium; the wasm toolchain, in the ignored
# .wasm-toolchain/ folder) and runs every test, lint and doc check of the
# workspace (the library rs2p, the command rs2p-cli, the harness
# rs2p-bench, the simulator rs2p-sim, the browser core rs2p-wasm), then
# fuzzes the node's HTTP API (scripts/fuzz-api.sh).
#
# fmt, clippy and doc stop at the first failure. The tests then run to the
# end: every test binary runs even when one fails, and the failures are
# listed at the end, with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-peers.sh
scripts/setup-browser.sh
# The browser bundle (src/web/bundle/, committed) must match a fresh build
# of crates/rs2p-wasm; this installs the wasm toolchain on first use
# (scripts/setup-wasm.sh). Its tests run with the others (tests/wasm.rs
# under Node, tests/browser.rs in Chromium).
scripts/build-wasm.sh --check
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# The library as the core alone (wire + proto: what the browser build
# compiles), and as the tokio shell without its optional parts (tls, ws,
# store, web, native-compression).
cargo clippy --locked -p rs2p --no-default-features -- -D warnings
cargo clippy --locked -p rs2p --no-default-features --features net -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --locked --workspace --no-deps --quiet

# Each run's output also goes to a log, from which the failures are
# gathered at the end.
log=$(mktemp "${TMPDIR:-/tmp}/rs2p-test.XXXXXX")
trap 'rm -f "$log"' EXIT
failed=()
run() {
    local status
    set +e
    "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    set -e
    [ "$status" -eq 0 ] || failed+=("$*")
}
run cargo test --locked --workspace --all-targets --no-fail-fast
run cargo test --locked --workspace --doc --no-fail-fast
run cargo test --locked -p rs2p --no-default-features --test features
run cargo test --locked -p rs2p --no-default-features --features net --test features
run scripts/test-node.sh
run scripts/fuzz-api.sh
if [ ${#failed[@]} -gt 0 ]; then
    {
        echo
        echo "test.sh: FAILED"
        printf '  command: %s\n' "${failed[@]}"
        # Every failed test, with the test binary it is in.
        awk '/^ +(Running|Doc-tests) /{bin=$0; sub(/^ +/, "", bin)}
             /^test .* \.\.\. FAILED$/{sub(/^test /, ""); sub(/ \.\.\. FAILED$/, "");
                                       print "  test:    " bin ": " $0}' "$log"
        # The failed test binaries as cargo names them (also those that crashed
        # or timed out without a failed test).
        awk '/^error: [0-9]+ targets? failed:/{on=1; next} on && /^ +`/{print "  target: " $0; next} {on=0}' "$log"
    } >&2
    exit 1
fi
echo "test.sh: all passed"
