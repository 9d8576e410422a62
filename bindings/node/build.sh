#!/bin/sh
# Builds the native addon (cargo build -p rs2p-node) and copies it here as
# rs2p.node. Run from anywhere; `npm install` in this folder, and
# `npm install <path to this folder>` in another project, run it too.
#
#   RS2P_NODE_PROFILE=dev|release   cargo profile (default release)
#   CARGO_TARGET_DIR                where cargo builds (default: the
#                                   workspace's target/)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PROFILE=${RS2P_NODE_PROFILE:-release}
case "$PROFILE" in
    dev|debug) PROFILE=dev; DIR=debug ;;
    release) DIR=release ;;
    *) DIR=$PROFILE ;;
esac
command -v cargo >/dev/null 2>&1 || { echo "rs2p: cargo is needed to build the addon (https://rustup.rs)" >&2; exit 1; }
echo "rs2p: cargo build -p rs2p-node --profile $PROFILE" >&2
cargo build --manifest-path "$ROOT/Cargo.toml" --locked -p rs2p-node --profile "$PROFILE"
TARGET=${CARGO_TARGET_DIR:-$(cargo metadata --manifest-path "$ROOT/Cargo.toml" --format-version 1 --no-deps |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).target_directory))')}
case "$(uname -s)" in
    Darwin) LIB=librs2p_node.dylib ;;
    *) LIB=librs2p_node.so ;;
esac
cp "$TARGET/$DIR/$LIB" "$HERE/rs2p.node.tmp"
mv "$HERE/rs2p.node.tmp" "$HERE/rs2p.node"
echo "rs2p: built $HERE/rs2p.node" >&2
