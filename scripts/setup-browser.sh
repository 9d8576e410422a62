#!/usr/bin/env bash
# Installs headless Chromium (Debian package `chromium`) for tests/browser.rs,
# which loads rs2p's browser page and drives it over the DevTools protocol.
#
# Idempotent: when chromium is already on PATH it prints nothing and returns
# at once.  Needs root (apt-get) only when it has to install.  Set
# RS2P_SKIP_BROWSER=1 to skip (tests/browser.rs then skips as well).
set -u -o pipefail

say() { printf 'setup-browser: %s\n' "$*"; }

if [ "${RS2P_SKIP_BROWSER:-0}" = 1 ]; then
    say "skipped (RS2P_SKIP_BROWSER=1)"
    exit 0
fi

find_chromium() {
    local c
    for c in ${RS2P_CHROMIUM:-} chromium chromium-browser; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

if find_chromium >/dev/null; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "ERROR: chromium missing and apt-get unavailable; install Chromium or set RS2P_SKIP_BROWSER=1"
    exit 1
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        say "ERROR: installing chromium needs root; install it or set RS2P_SKIP_BROWSER=1"
        exit 1
    fi
fi

t0=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
LOG=$(mktemp)
say "installing chromium with apt-get (log: $LOG)"
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >"$LOG" 2>&1; then
    # The package lists may be missing or stale on a fresh machine.
    "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >>"$LOG" 2>&1; then
        tail -20 "$LOG" >&2
        say "ERROR: apt-get could not install chromium"
        exit 1
    fi
fi
if path=$(find_chromium); then
    say "chromium installed ($path, $(( $(date +%s) - t0 )) s)"
    rm -f "$LOG"
else
    say "ERROR: chromium installed but not on PATH (see $LOG)"
    exit 1
fi
