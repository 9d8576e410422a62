#!/usr/bin/env bash
# Builds the Node.js package (bindings/node) and runs its tests:
#
#   - cargo fmt/clippy/test of the addon crate (rs2p-node);
#   - js2p 0.7.870's own js_src/test/test_mesh.js and test_sync.js, copied
#     unchanged from the js2p that scripts/setup-peers.sh installs, next to
#     the package's base.js/mesh.js/sync.js (their require('../mesh.js')
#     then loads ours), over plaintext, SSL and ws. They never close their
#     sockets, so mocha runs them with --exit;
#   - the package's tests (bindings/node/test): the js2p tutorial as
#     written, the API, the lifecycle (exit after close, garbage
#     collection), and a mixed mesh with real js2p, py2p and `rs2p node`;
#   - `npm install <repo>/bindings/node` from a scratch project.
#
# Ends with the line "node: N passed, N failed".
#
# Environment: RS2P_NODE_PROFILE (cargo profile of the addon, default dev
# here; build.sh alone defaults to release), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export RS2P_NODE_PROFILE=${RS2P_NODE_PROFILE:-dev}

scripts/setup-peers.sh
cargo fmt -p rs2p-node -- --check
cargo clippy --locked -p rs2p-node --all-targets -- -D warnings
cargo test --locked -p rs2p-node
cargo build --locked --workspace --bin rs2p   # wherever the CLI lives in the workspace
TARGET=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).target_directory))')}
export RS2P_BIN="$TARGET/debug/rs2p"

# mocha (into the ignored bindings/node/node_modules) and the addon (the
# package's install script runs build.sh).
(cd bindings/node && npm install --no-audit --no-fund --loglevel=error)

JS2P_TESTS=.peers/js/node_modules/js2p/js_src/test
rm -rf bindings/node/js2p_test
mkdir -p bindings/node/js2p_test
for t in test_mesh.js test_sync.js; do
    cp "$JS2P_TESTS/$t" bindings/node/js2p_test/
    cmp "$JS2P_TESTS/$t" "bindings/node/js2p_test/$t"
done

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
status=0
cd bindings/node
# js2p's tests set no timeouts of their own: the outer timeout bounds them.
# They listen on fixed ports (44565-44597, 44665-44685), inside the range
# the kernel takes the local ports of outgoing connections from, so any
# connection on the machine (theirs included) can take one first. As root,
# run them in a network namespace of their own whose outgoing ports start
# above theirs.
JS2P_MOCHA=(node_modules/.bin/mocha --exit js2p_test/test_mesh.js js2p_test/test_sync.js)
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null &&
   unshare -n true 2>/dev/null; then
    echo "js2p's tests: in a network namespace of their own (outgoing ports 50000-60999)"
    timeout 600 unshare -n sh -c 'ip link set lo up &&
        echo "50000 60999" > /proc/sys/net/ipv4/ip_local_port_range &&
        exec "$@"' sh "${JS2P_MOCHA[@]}" 2>&1 | tee -a "$LOG" || status=1
else
    timeout 600 "${JS2P_MOCHA[@]}" 2>&1 | tee -a "$LOG" || status=1
fi
RS2P_REQUIRE_PEERS=1 timeout 900 node_modules/.bin/mocha test/ 2>&1 | tee -a "$LOG" || status=1
cd "$ROOT"

# The install command, from another project: it builds the addon again
# (the package's install script), so start without one.
rm -f bindings/node/rs2p.node
SCRATCH=$(mktemp -d)
(
    cd "$SCRATCH" &&
    npm init -y >/dev/null &&
    npm install --no-audit --no-fund --loglevel=error "$ROOT/bindings/node" &&
    node -e '
const { sync } = require("rs2p");
const s = new sync.SyncSocket("127.0.0.1", 0);
s.set("k", "v");
if (s.get("k") !== "v") { process.exit(1); }
s.close();
console.log("  1 passing (npm install ./bindings/node from another project)");'
) 2>&1 | tee -a "$LOG" || status=1
rm -rf "$SCRATCH"

passed=$(sed -n 's/^ *\([0-9][0-9]*\) passing.*/\1/p' "$LOG" | awk '{s += $1} END {print s + 0}')
failed=$(sed -n 's/^ *\([0-9][0-9]*\) failing.*/\1/p' "$LOG" | awk '{s += $1} END {print s + 0}')
pending=$(sed -n 's/^ *\([0-9][0-9]*\) pending.*/\1/p' "$LOG" | awk '{s += $1} END {print s + 0}')
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
    failed=1
fi
echo "node: $passed passed, $failed failed, $pending skipped"
exit "$status"
