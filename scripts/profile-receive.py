#!/usr/bin/env python3
"""Counts the instructions an `rs2p node` spends on writes it receives.

Starts node A, and node B under callgrind (`valgrind --tool=callgrind`,
instrumentation off), connected to A. Once B has joined, turns B's
instrumentation on, writes N keys on A through its HTTP API (20 ms apart, so
that each crosses on its own, as in the benchmark's latency scenario), waits
until B holds them all, turns instrumentation off and stops both nodes.

    cargo build --release --bin rs2p
    python3 scripts/profile-receive.py [N] [OUT]     # N = 1000, OUT = callgrind.out
    callgrind_annotate --inclusive=yes callgrind.out | head -60

Needs valgrind. Under valgrind the CPU's SHA extensions are hidden, so the
sha2 crate falls back to its portable code: its share of the profile is
several times what it is natively.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RS2P", os.path.join(ROOT, "target", "release", "rs2p"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
OUT = sys.argv[2] if len(sys.argv) > 2 else "callgrind.out"


def start(cmd):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    first, second = p.stdout.readline(), p.stdout.readline()
    addr = re.search(r"listening on (\S+)", first).group(1)
    api = re.search(r"api on http://(\S+)", second).group(1)
    return p, addr, api


def metric(api, name):
    host, port = api.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def wait(what, cond, limit):
    deadline = time.time() + limit
    while not cond():
        if time.time() > deadline:
            sys.exit(f"profile-receive: timed out waiting for {what}")
        time.sleep(0.2)


def main():
    a, a_addr, a_api = start([BIN, "node", "-l", "127.0.0.1:0", "--api", "127.0.0.1:0"])
    b, _, b_api = start(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                         f"--callgrind-out-file={OUT}", BIN, "node", "-l", "127.0.0.1:0",
                         "--api", "127.0.0.1:0", "-c", a_addr])
    try:
        wait("B to join A", lambda: metric(b_api, 'rs2p_peers{kind="rs2p"}') == 1.0, 120)
        subprocess.run(["callgrind_control", "-i", "on", str(b.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        host, port = a_api.split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        for i in range(N):
            c.request("PUT", f"/v1/kv/L{i:05d}", body=json.dumps(f"v{i:07d}"),
                      headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"profile-receive: PUT answered {r.status}")
            time.sleep(0.02)
        wait("B to hold every key", lambda: metric(b_api, "rs2p_keys") == float(N), 300)
        subprocess.run(["callgrind_control", "-i", "off", str(b.pid)], check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        for p in (b, a):
            p.send_signal(signal.SIGINT)
        for p in (b, a):
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"profile-receive: {N} writes received by B; profile in {OUT}")


if __name__ == "__main__":
    main()
