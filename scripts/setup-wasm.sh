#!/usr/bin/env bash
# Installs what building the browser bundle (crates/rs2p-wasm) needs, into
# the ignored folder <repo>/.wasm-toolchain:
#
#   root/          Debian's rustc-web, cargo-web, rust-web-src and
#                  libstd-rust-web-* unpacked with dpkg-deb -x (rustup cannot
#                  fetch the wasm32 target here; Debian's compiler builds std
#                  for wasm32 from rust-web-src with -Zbuild-std)
#   bin/wasm-bindgen   wasm-bindgen-cli $WASM_BINDGEN_VERSION (cargo install
#                  with the normal toolchain; it must match the wasm-bindgen
#                  crate in Cargo.lock exactly)
#   env.sh         the variables scripts/build-wasm.sh sources
#
# and apt-get installs the compiler's runtime libraries (libllvmN, the
# cargo-web libraries) and lld-N for wasm-ld. Idempotent: when the marker
# says the same recipe is in place it returns at once. Needs root (apt-get)
# only when something is missing. RS2P_SKIP_WASM=1 skips it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The toolchain lives in a cache outside the clone (a fresh clone, as CI
# makes, would otherwise rebuild wasm-bindgen-cli for minutes), and
# <repo>/.wasm-toolchain points there. A real folder there is used as it is.
CACHE="${RS2P_WASM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rs2p/wasm-toolchain}"
if [ -d "$ROOT/.wasm-toolchain" ] && [ ! -L "$ROOT/.wasm-toolchain" ]; then
    DIR="$ROOT/.wasm-toolchain"
else
    mkdir -p "$CACHE"
    ln -sfn "$CACHE" "$ROOT/.wasm-toolchain"
    DIR="$CACHE"
fi
WASM_BINDGEN_VERSION=0.2.130
DEBS=(rustc-web cargo-web rust-web-src libstd-rust-web-dev)
# The compiler series the committed bundle is built with: the same
# compiler gives the same bytes, which scripts/build-wasm.sh --check relies
# on (bookworm-security may carry a newer rustc-web; bookworm keeps 1.85).
RUSTC_SERIES=1.85.
RECIPE="${DEBS[*]} $RUSTC_SERIES wasm-bindgen-cli $WASM_BINDGEN_VERSION; recipe 2"

say() { printf 'setup-wasm: %s\n' "$*"; }

if [ "${RS2P_SKIP_WASM:-0}" = 1 ]; then
    say "skipped (RS2P_SKIP_WASM=1)"
    exit 0
fi

if [ -f "$DIR/.rs2p-setup" ] && [ "$(cat "$DIR/.rs2p-setup")" = "$RECIPE" ] &&
    [ -x "$DIR/bin/wasm-bindgen" ] && [ -f "$DIR/env.sh" ]; then
    # shellcheck source=/dev/null
    . "$DIR/env.sh"
    if LD_LIBRARY_PATH="$RS2P_WASM_LD_LIBRARY_PATH" "$RS2P_WASM_RUSTC" -vV >/dev/null 2>&1 &&
        [ -x "$CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER" ]; then
        exit 0
    fi
    say "toolchain in .wasm-toolchain does not run any more; redoing"
fi

t0=$(date +%s)
mkdir -p "$DIR"
rm -f "$DIR/.rs2p-setup"
GI="$ROOT/.gitignore"
if ! grep -qxE '/?\.wasm-toolchain/?' "$GI" 2>/dev/null; then
    echo "/.wasm-toolchain/" >>"$GI"
    say "added /.wasm-toolchain/ to .gitignore"
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
        say "ERROR: installing packages needs root"
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
LOG="$DIR/setup.log"
: >"$LOG"
apt_updated=0
apt_update() {
    if [ $apt_updated = 0 ]; then
        "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1 || true
        apt_updated=1
    fi
}
apt_install() {
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" >>"$LOG" 2>&1; then
        apt_update
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" >>"$LOG" 2>&1 || {
            tail -20 "$LOG" >&2
            say "ERROR: apt-get install $* failed"
            exit 1
        }
    fi
}

# ------------------------------------------------- the Debian compiler
say "fetching ${DEBS[*]} (apt-get download)"
mkdir -p "$DIR/debs"
rm -rf "$DIR/root"
mkdir -p "$DIR/root"
(
    cd "$DIR/debs"
    rm -f ./*.deb
    pick() { apt-cache madison rustc-web | awk -v s="$RUSTC_SERIES" 'index($3, s) == 1 {print $3; exit}'; }
    ver=$(pick)
    if [ -z "$ver" ]; then
        apt_update
        ver=$(pick)
    fi
    if [ -z "$ver" ]; then
        echo "setup-wasm: ERROR: no rustc-web ${RUSTC_SERIES}x in the package lists" >&2
        exit 1
    fi
    apt-get download "${DEBS[@]/%/=$ver}" >>"$LOG" 2>&1
    # libstd-rust-web-dev depends on the versioned libstd-rust-web-X.Y,
    # which holds the compiler's own shared libraries.
    std=$(apt-cache depends libstd-rust-web-dev | awk '/Depends: libstd-rust-web-[0-9]/{print $2; exit}')
    apt-get download "$std" >>"$LOG" 2>&1
) || {
    tail -20 "$LOG" >&2
    say "ERROR: apt-get download failed"
    exit 1
}
for deb in "$DIR"/debs/*.deb; do
    dpkg-deb -x "$deb" "$DIR/root"
done

# Runtime libraries of the unpacked compiler and cargo (not the packages
# unpacked above, which conflict with rustup's toolchain).
runtime=()
for pkg in rustc-web cargo-web "$(basename "$(ls "$DIR"/debs/libstd-rust-web-[0-9]*.deb)" | cut -d_ -f1)"; do
    while read -r dep; do
        case "$dep" in
        libstd-rust-web* | rustc-web | gcc | binutils | "<"*) ;;
        lib*) runtime+=("$dep") ;;
        esac
    done < <(apt-cache depends "$pkg" | awk '$1 == "Depends:" {print $2}')
done
RUSTC="$DIR/root/usr/bin/rustc"
export LD_LIBRARY_PATH="$DIR/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
llvm=$(printf '%s\n' "${runtime[@]}" | sed -n 's/^libllvm\([0-9][0-9]*\)$/\1/p' | head -1)
if [ -z "$llvm" ]; then
    say "ERROR: cannot tell the LLVM version of rustc-web"
    exit 1
fi
say "apt-get install ${runtime[*]} lld-$llvm"
apt_install "${runtime[@]}" "lld-$llvm"
if ! "$RUSTC" -vV >>"$LOG" 2>&1; then
    tail -20 "$LOG" >&2
    say "ERROR: the unpacked rustc does not run"
    exit 1
fi
src="$("$RUSTC" --print sysroot)/lib/rustlib/src/rust/library"
if [ ! -d "$src/std" ]; then
    say "ERROR: no std source at $src (rust-web-src)"
    exit 1
fi
LINKER="/usr/lib/llvm-$llvm/bin/wasm-ld"
[ -x "$LINKER" ] || {
    say "ERROR: $LINKER missing after installing lld-$llvm"
    exit 1
}

cat >"$DIR/env.sh" <<EOF
# Written by scripts/setup-wasm.sh: the Debian compiler for wasm32.
export RS2P_WASM_RUSTC="$RUSTC"
export RS2P_WASM_CARGO="$DIR/root/usr/bin/cargo"
export RS2P_WASM_BINDGEN="$DIR/bin/wasm-bindgen"
export RS2P_WASM_LD_LIBRARY_PATH="$DIR/root/usr/lib/x86_64-linux-gnu"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$LINKER"
EOF

# ------------------------------------------------- wasm-bindgen-cli
if [ -x "$DIR/bin/wasm-bindgen" ] &&
    [ "$("$DIR/bin/wasm-bindgen" --version 2>/dev/null)" = "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    say "wasm-bindgen $WASM_BINDGEN_VERSION already in .wasm-toolchain/bin"
else
    say "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION (several minutes, once)"
    # Not --locked: its lockfile pins a crate version the index lacks. A
    # target dir of its own, so the build cache is kept for a re-run.
    env -u LD_LIBRARY_PATH CARGO_TARGET_DIR="$DIR/cli-target" \
        cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --root "$DIR" >>"$LOG" 2>&1 || {
        tail -30 "$LOG" >&2
        say "ERROR: cargo install wasm-bindgen-cli failed"
        exit 1
    }
    rm -rf "$DIR/cli-target"
fi

echo "$RECIPE" >"$DIR/.rs2p-setup"
say "wasm toolchain ready in .wasm-toolchain ($(( $(date +%s) - t0 )) s; $("$RUSTC" --version))"
