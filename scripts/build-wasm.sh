#!/usr/bin/env bash
# Builds the browser bundle: the protocol core (crates/rs2p-wasm) for
# wasm32-unknown-unknown with Debian's compiler (scripts/setup-wasm.sh), its
# wasm-bindgen glue, and the JavaScript shell (crates/rs2p-wasm/js/), into
#
#   src/web/bundle/rs2p.wasm   the core
#   src/web/bundle/rs2p.js     a classic script: defines the global `rs2p`
#                              and fetches rs2p.wasm from beside itself
#   src/web/bundle/rs2p.mjs    an ES module with the same exports (browsers
#                              and Node 20)
#
# These outputs are committed, so `cargo build` needs no wasm toolchain: the
# node binary embeds them (src/web/mod.rs) and serves them with --http-port.
#
#   scripts/build-wasm.sh           rebuild src/web/bundle/
#   scripts/build-wasm.sh --check   rebuild into a temporary folder and fail
#                                   when src/web/bundle/ differs (stale)
#   scripts/build-wasm.sh --out D   rebuild into D
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/src/web/bundle"
check=0
while [ $# -gt 0 ]; do
    case "$1" in
    --check) check=1 ;;
    --out)
        OUT="$2"
        shift
        ;;
    *)
        echo "build-wasm: unknown argument $1" >&2
        exit 2
        ;;
    esac
    shift
done

if [ "${RS2P_SKIP_WASM:-0}" = 1 ]; then
    echo "build-wasm: skipped (RS2P_SKIP_WASM=1)"
    exit 0
fi
scripts/setup-wasm.sh
# shellcheck source=/dev/null
. "$ROOT/.wasm-toolchain/env.sh"

say() { printf 'build-wasm: %s\n' "$*"; }
t0=$(date +%s)
TARGET_DIR="$ROOT/.wasm-toolchain/target"
# Debian's compiler and cargo (not rustup's), std rebuilt for wasm32 from
# rust-web-src. Panics abort without location strings: smaller, and the
# output does not depend on the checkout's path. The release profile is
# set here rather than in the workspace's Cargo.toml. For size (docs/
# benchmarks.md): std's `optimize_for_size` (small sorts and formatting,
# ~14 KB less code), and the bulk-memory and non-trapping float-to-int
# instructions (memory.copy/fill instead of loops in code, casts without
# range checks), which every browser since 2021 and Node 12+ run and which
# newer rustc enables by default for this target.
(
    export LD_LIBRARY_PATH="$RS2P_WASM_LD_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export RUSTC="$RS2P_WASM_RUSTC" RUSTDOC=false RUSTC_BOOTSTRAP=1
    export RUSTFLAGS="-Zlocation-detail=none --remap-path-prefix=$ROOT=/rs2p --remap-path-prefix=$HOME=/home -Ctarget-feature=+bulk-memory,+nontrapping-fptoint"
    export CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=fat
    export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort
    export CARGO_PROFILE_RELEASE_DEBUG=false
    unset RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER
    "$RS2P_WASM_CARGO" build --locked --release -p rs2p-wasm \
        --target wasm32-unknown-unknown \
        -Zbuild-std=std,panic_abort -Zbuild-std-features=panic_immediate_abort,optimize_for_size \
        --target-dir "$TARGET_DIR" --quiet
)
WASM="$TARGET_DIR/wasm32-unknown-unknown/release/rs2p_wasm.wasm"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rs2p-wasm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
BINDGEN=("$RS2P_WASM_BINDGEN" --no-typescript --remove-name-section --remove-producers-section)
"${BINDGEN[@]}" --target web --out-dir "$WORK/web" "$WASM"
"${BINDGEN[@]}" --target no-modules --out-dir "$WORK/classic" "$WASM"
if ! cmp -s "$WORK/web/rs2p_wasm_bg.wasm" "$WORK/classic/rs2p_wasm_bg.wasm"; then
    say "ERROR: wasm-bindgen made different modules for the two targets"
    exit 1
fi
DEST="$OUT"
[ $check = 1 ] && DEST="$WORK/out"
mkdir -p "$DEST"
node "$ROOT/crates/rs2p-wasm/js/assemble.mjs" "$WORK" "$DEST"
# assemble.mjs strips comments and indentation: the outputs must still parse.
node --check "$DEST/rs2p.js"
node --check "$DEST/rs2p.mjs"

if [ $check = 1 ]; then
    stale=0
    for f in rs2p.wasm rs2p.js rs2p.mjs; do
        if ! cmp -s "$DEST/$f" "$OUT/$f"; then
            say "STALE: src/web/bundle/$f differs from a fresh build"
            stale=1
        fi
    done
    if [ $stale = 1 ]; then
        say "run scripts/build-wasm.sh and commit src/web/bundle/"
        exit 1
    fi
    say "src/web/bundle/ is up to date ($(( $(date +%s) - t0 )) s)"
else
    say "built $(du -b "$DEST/rs2p.wasm" | cut -f1) bytes of wasm into ${DEST#"$ROOT"/} ($(( $(date +%s) - t0 )) s)"
fi
