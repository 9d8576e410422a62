#!/usr/bin/env python3
"""Smoke test of the reference-node drivers (plain python3, no pytest).

    bash scripts/setup-peers.sh && python3 tests/peers/smoke.py [-v] [-k NAME]

Starts real py2p / js2p nodes through tests/peers/py2p_node.py and
tests/peers/js2p_node.js on 127.0.0.1 and checks that they sync, broadcast,
whisper and refuse leased keys.  Ends with "N passed, N failed".
"""
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = os.path.join(ROOT, ".peers", "py", "bin", "python")
JS_MODULE = os.path.join(ROOT, ".peers", "js", "node_modules", "js2p")
VERBOSE = "-v" in sys.argv


class Peer:
    """One driver process (same job as tests/common/peers.rs, in Python)."""

    def __init__(self, impl, *args):
        if impl == "py2p":
            cmd = [PY, os.path.join(HERE, "py2p_node.py")]
        else:
            cmd = ["node", os.path.join(HERE, "js2p_node.js")]
        self.impl = impl
        self.errf = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd + list(args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errf,
                                     text=True, bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self._line(30, "ready line")
        if ready.get("event") != "ready":
            raise RuntimeError("%s did not start: %s\n%s" % (impl, ready, self.stderr()))
        self.id, self.port = ready["id"], ready["port"]
        self.ready = ready

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _line(self, timeout, what):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError("%s: timeout waiting for %s\n%s" % (self.impl, what, self.stderr()))
        if line is None:
            raise RuntimeError("%s: driver exited (rc=%s) waiting for %s\n%s"
                               % (self.impl, self.proc.poll(), what, self.stderr()))
        return json.loads(line)

    def stderr(self):
        self.errf.seek(0)
        return self.errf.read().decode("utf-8", "replace")[-4000:]

    def cmd(self, op, **kw):
        req = dict(op=op, **kw)
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rep = self._line(20, "reply to %s" % op)
        if VERBOSE:
            print("   %s %s -> %s" % (self.impl, json.dumps(req), json.dumps(rep)[:300]))
        return rep

    def ok(self, op, **kw):
        rep = self.cmd(op, **kw)
        if not rep.get("ok"):
            raise AssertionError("%s %s %s failed: %s" % (self.impl, op, kw, rep))
        return rep

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op":"close"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except Exception:
                pass
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_until(what, fn, timeout=10.0):
    deadline = time.time() + timeout
    while True:
        r = fn()
        if r:
            return r
        if time.time() > deadline:
            raise AssertionError("timed out waiting for: " + what)
        time.sleep(0.05)


def linked(a, b):
    """Connect b -> a and wait until each lists the other as a live peer."""
    b.ok("connect", host="127.0.0.1", port=a.port)

    def has(x, y):
        return any(p["id"] == y.id and p.get("alive", True)
                   for p in x.ok("peers")["peers"])
    wait_until("%s and %s see each other" % (a.impl, b.impl),
               lambda: has(a, b) and has(b, a))


def check_sync_pair(impl, *extra):
    a = Peer(impl, "--kind", "sync", *extra)
    b = Peer(impl, "--kind", "sync", *extra)
    try:
        assert a.ready["protocol_id"] == b.ready["protocol_id"]
        linked(a, b)
        a.ok("set", key="greeting", value={"text": "hi", "n": 7, "raw": {"$bin": "00ff"}})
        got = wait_until("B has the key", lambda: b.ok("get", key="greeting")["found"] and b.ok("get", key="greeting"))
        assert got["value"] == {"text": "hi", "n": 7, "raw": {"$bin": "00ff"}}, got
        items = b.ok("dump")["items"]
        assert len(items) == 1, items
        key, value, meta = items[0]
        assert key == "greeting" and meta["owner"] == a.id and isinstance(meta["timestamp"], int), items
        evs = b.ok("events")["events"]
        assert any(e["event"] == "update" and e["key"] == "greeting" and e["owner"] == a.id
                   for e in evs), evs
        a.ok("send", packets=["hello", 42, {"$bin": "c0ffee"}])
        msgs = wait_until("B receives the broadcast", lambda: b.ok("recv")["messages"])
        assert msgs[0]["sender"] == a.id and msgs[0]["packets"] == [0, "hello", 42, {"$bin": "c0ffee"}], msgs
        b.ok("whisper", to=a.id, packets=["psst"])
        msgs = wait_until("A receives the whisper", lambda: a.ok("recv")["messages"])
        assert msgs[0]["sender"] == b.id and msgs[0]["packets"] == [2, "psst"], msgs
        for p in (a, b):
            st = p.ok("stats")
            assert st["errors"] == 0, st
        return "A=%s.. B=%s.. synced, owner/timestamp %s, broadcast+whisper ok" % (
            a.id[:8], b.id[:8], meta)
    finally:
        assert a.close() == 0
        assert b.close() == 0


def check_transport_pair(impl, transport):
    a = Peer(impl, "--kind", "sync", "--transport", transport)
    b = Peer(impl, "--kind", "sync", "--transport", transport)
    try:
        linked(a, b)
        a.ok("set", key="t", value=transport)
        wait_until("B has the key", lambda: b.ok("get", key="t")["value"] == transport)
        b.ok("set", key="u", value=[1, 2, 3])
        wait_until("A has B's key", lambda: a.ok("get", key="u")["value"] == [1, 2, 3])
        return "%s %s: keys synced both ways (protocol_id %s)" % (impl, transport, a.ready["protocol_id"][:10])
    finally:
        a.close()
        b.close()


def next_second(p):
    """Wait until the clock is past the timestamp of every key p holds: a
    write in the *same* second as the owner's is allowed when the writer's
    id sorts lower (lease rule 5, PROTOCOL.md 8.3)."""
    newest = max(m["timestamp"] for _, _, m in p.ok("dump")["items"])
    while int(time.time()) <= newest:
        time.sleep(0.05)


def check_lease_refusal_py2p():
    a = Peer("py2p", "--kind", "sync")
    b = Peer("py2p", "--kind", "sync")
    try:
        linked(a, b)
        a.ok("set", key="leased", value=1)
        wait_until("B has the key", lambda: b.ok("get", key="leased")["found"])
        next_second(b)
        rep = b.cmd("set", key="leased", value=2)
        assert rep["ok"] is False and rep["error"]["kind"] == "KeyError", rep
        assert b.ok("get", key="leased")["value"] == 1
        a.ok("set", key="leased", value=3)  # the owner may overwrite
        wait_until("B sees the owner's overwrite", lambda: b.ok("get", key="leased")["value"] == 3)
        next_second(b)
        rep2 = b.cmd("del", key="leased")
        assert rep2["ok"] is False and rep2["error"]["kind"] == "KeyError", rep2
        return "B's set -> %s" % json.dumps(rep["error"])
    finally:
        a.close()
        b.close()


def check_lease_refusal_js2p():
    a = Peer("js2p", "--kind", "sync")  # --leasing on (explicit true)
    b = Peer("js2p", "--kind", "sync")
    try:
        linked(a, b)
        a.ok("set", key="leased", value=1)
        wait_until("B has the key", lambda: b.ok("get", key="leased")["found"])
        next_second(b)
        rep = b.cmd("set", key="leased", value=2)
        assert rep["ok"] is False, rep
        return "B's set -> %s" % json.dumps(rep["error"])
    finally:
        a.close()
        b.close()


def check_mesh_pair(impl):
    a = Peer(impl, "--kind", "mesh", "--subnet", "smoke-mesh")
    b = Peer(impl, "--kind", "mesh", "--subnet", "smoke-mesh")
    try:
        linked(a, b)
        rep = a.cmd("set", key="x", value=1)
        assert rep["ok"] is False and rep["error"]["kind"] == "BadRequest", rep
        a.ok("send", packets=[{"k": [1, None, True, 1.5]}])
        msgs = wait_until("B receives", lambda: b.ok("recv")["messages"])
        assert msgs[0]["packets"] == [0, {"k": [1, None, True, 1.5]}], msgs
        return "mesh broadcast ok, peers of A: %s" % json.dumps(a.ok("peers"))
    finally:
        a.close()
        b.close()


def check_compression_override(impl):
    a = Peer(impl, "--kind", "sync", "--compression", "gzip")
    b = Peer(impl, "--kind", "sync")
    c = Peer(impl, "--kind", "sync", "--compression", "none")
    try:
        assert a.ok("info")["compression"] == ["gzip"], a.ok("info")
        assert c.ok("info")["compression"] == [], c.ok("info")
        linked(a, b)
        a.ok("set", key="z", value="x" * 500)
        wait_until("B has the key", lambda: b.ok("get", key="z")["found"])
        b.ok("set", key="y", value="y" * 500)
        wait_until("A has B's key", lambda: a.ok("get", key="y")["found"])
        c.ok("connect", host="127.0.0.1", port=b.port)
        wait_until("C gets state transfer", lambda: c.ok("len")["len"] == 2)
        return "gzip-only / none / default nodes interoperate; B: %s" % b.ok("info")["compression"]
    finally:
        a.close()
        b.close()
        c.close()


def check_malformed_and_eof(impl):
    p = Peer(impl)
    p.proc.stdin.write("not json\n[1,2]\n{\"op\":\"nope\"}\n{\"op\":\"info\"}\n")
    p.proc.stdin.flush()
    r = [p._line(10, "reply") for _ in range(4)]
    assert [x["ok"] for x in r] == [False, False, False, True], r
    assert all(x["error"]["kind"] == "BadRequest" for x in r[:3]), r
    p.proc.stdin.close()  # EOF = close
    rc = p.proc.wait(10)
    assert rc == 0, rc
    return "malformed lines rejected, EOF -> exit 0"


CHECKS = [
    ("py2p sync pair", lambda: check_sync_pair("py2p")),
    ("js2p sync pair", lambda: check_sync_pair("js2p")),
    ("js2p ws pair", lambda: check_transport_pair("js2p", "ws")),
    ("py2p SSL pair", lambda: check_transport_pair("py2p", "SSL")),
    ("js2p SSL pair", lambda: check_transport_pair("js2p", "SSL")),
    ("py2p lease refusal", check_lease_refusal_py2p),
    ("js2p lease refusal", check_lease_refusal_js2p),
    ("py2p mesh pair", lambda: check_mesh_pair("py2p")),
    ("js2p mesh pair", lambda: check_mesh_pair("js2p")),
    ("py2p compression override", lambda: check_compression_override("py2p")),
    ("js2p compression override", lambda: check_compression_override("js2p")),
    ("py2p malformed/EOF", lambda: check_malformed_and_eof("py2p")),
    ("js2p malformed/EOF", lambda: check_malformed_and_eof("js2p")),
]


def main():
    if not (os.path.exists(PY) and os.path.isdir(JS_MODULE)):
        print("reference peers missing: run scripts/setup-peers.sh first")
        return 2
    only = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else None
    passed = failed = 0
    for name, fn in CHECKS:
        if only and only not in name:
            continue
        t0 = time.time()
        try:
            detail = fn()
            passed += 1
            print("PASS %-28s %5.2fs  %s" % (name, time.time() - t0, detail))
        except Exception:
            failed += 1
            print("FAIL %-28s %5.2fs\n%s" % (name, time.time() - t0, traceback.format_exc()))
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
