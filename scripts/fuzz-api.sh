#!/usr/bin/env bash
# Fuzzes the node's HTTP API against its description (docs/openapi.json)
# with schemathesis, then checks that the node is still up and syncing.
#
# Installs schemathesis (pinned) into the ignored .peers/fuzz venv the
# first time (idempotent, like scripts/setup-peers.sh), builds rs2p, starts
# two connected nodes on loopback (free ports, API on a free port too) and
# runs every schemathesis check on every operation but two: GET /v1/watch (a
# stream that never ends, tested in crates/rs2p-cli/tests/api.rs) and POST
# /v1/peers (it would make the node dial whatever addresses the fuzzer
# makes up). The run is bounded: FUZZ_SECONDS (default 60) of generation,
# and the whole script in about twice that. Fails on any schemathesis
# failure or error (a 5xx, a response that does not match the description,
# a valid request refused, an invalid one accepted), when a node died, or
# when a write no longer reaches the other node.
#
# Environment: FUZZ_SECONDS, CARGO_TARGET_DIR (where rs2p is built),
# PYTHON (interpreter for the venv; default: python3.12, python3.13,
# python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf 'fuzz-api: %s\n' "$*"; }
SECONDS_BUDGET=${FUZZ_SECONDS:-60}
VENV="$ROOT/.peers/fuzz"
ST_VERSION="4.32.5"
RECIPE="schemathesis==$ST_VERSION; recipe 2"

# ------------------------------------------------------------ schemathesis
if [ -x "$VENV/bin/st" ] && [ "$(cat "$VENV/.rs2p-setup" 2>/dev/null)" = "$RECIPE" ]; then
    say "schemathesis $ST_VERSION already installed in .peers/fuzz"
else
    # CPython 3.11's parser can fail inside hypothesis' lambda descriptions
    # ("AST constructor recursion depth mismatch"): prefer a newer one.
    PY=""
    PYENV_ROOT=$(pyenv root 2>/dev/null || true)
    for cand in ${PYTHON:-} python3.13 python3.12 \
                ${PYENV_ROOT:+"$PYENV_ROOT"/versions/3.1[2-9]*/bin/python3} python3; do
        if "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            PY=$(command -v "$cand")
            break
        fi
    done
    if [ -z "$PY" ] && command -v python3 >/dev/null 2>&1; then
        PY=$(command -v python3)
        say "no Python 3.12 or later: using $PY ($("$PY" --version 2>&1))"
    fi
    [ -n "$PY" ] || { say "ERROR: no Python 3 found"; exit 1; }
    rm -rf "$VENV"
    mkdir -p "$ROOT/.peers"
    say "creating .peers/fuzz with $PY, pip install schemathesis==$ST_VERSION"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "schemathesis==$ST_VERSION"
    echo "$RECIPE" > "$VENV/.rs2p-setup"
fi

# ------------------------------------------------------------------- nodes
cargo build --locked -q -p rs2p-cli
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rs2p-fuzz.XXXXXX")
# A copy, so that another build into the same target cannot swap it.
cp "$TARGET/debug/rs2p" "$WORK/rs2p"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Starts a headless node; prints its mesh port and API address.
start_node() { # name, extra args...
    local name=$1; shift
    "$WORK/rs2p" node --api 127.0.0.1:0 "$@" </dev/null >"$WORK/$name.out" 2>"$WORK/$name.err" &
    pids+=($!)
    local deadline=$((SECONDS + 20))
    while ! grep -q '^api on ' "$WORK/$name.out" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 "${pids[-1]}" 2>/dev/null; then
            say "ERROR: node $name did not start"; cat "$WORK/$name.err" >&2; exit 1
        fi
        sleep 0.05
    done
}
start_node a
A_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\) as .*/\1/p' "$WORK/a.out")
A_API=$(sed -n 's/^api on //p' "$WORK/a.out")
start_node b --connect "127.0.0.1:$A_PORT"
B_API=$(sed -n 's/^api on //p' "$WORK/b.out")
A_PID=${pids[0]}
B_PID=${pids[1]}
say "node a: mesh 127.0.0.1:$A_PORT, API $A_API; node b: API $B_API"

# -------------------------------------------------------------------- fuzz
say "schemathesis for ${SECONDS_BUDGET} s against node a"
status=0
timeout $((SECONDS_BUDGET * 2 + 60)) "$VENV/bin/st" run docs/openapi.json \
    --url "$A_API" \
    --checks all \
    --exclude-path /v1/watch \
    --exclude-operation-id connect \
    --max-time "$SECONDS_BUDGET" \
    --request-timeout 10 \
    --workers 2 \
    --no-color || status=$?
if [ $status -ne 0 ]; then
    say "ERROR: schemathesis found problems (exit $status)"
fi

# ------------------------------------------------------------ still alive
for p in "$A_PID" "$B_PID"; do
    if ! kill -0 "$p" 2>/dev/null; then
        say "ERROR: a node died during the run"; cat "$WORK"/*.err >&2; status=1
    fi
done
if [ $status -eq 0 ]; then
    key="after-fuzz-$$"
    curl -fsS -X PUT -H 'Content-Type: application/json' -d '"still syncing"' "$A_API/v1/kv/$key" >/dev/null
    deadline=$((SECONDS + 20))
    until [ "$(curl -fsS "$B_API/v1/kv/$key" 2>/dev/null | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["value"])' 2>/dev/null)" = "still syncing" ]; do
        if [ $SECONDS -ge $deadline ]; then
            say "ERROR: a write to node a did not reach node b after the run"; status=1; break
        fi
        sleep 0.05
    done
    keys=$(curl -fsS "$A_API/v1/status" | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["keys"])')
    curl -fsS "$A_API/health" >/dev/null || { say "ERROR: /health failed"; status=1; }
    [ $status -eq 0 ] && say "nodes alive and syncing after the run ($keys keys on a)"
fi
if [ $status -eq 0 ]; then
    say "1 passed, 0 failed"
else
    say "0 passed, 1 failed"
fi
exit $status
