#!/usr/bin/env python3
"""Benchmark adapter: one py2p 0.7.878 SyncSocket speaking the line protocol
of `rs2p bench-node` (see docs/benchmarks.md), so that `rs2p bench` drives
py2p exactly as it drives rs2p and js2p.

    .peers/py/bin/python crates/rs2p-bench/adapters/py2p_adapter.py --host 127.0.0.1 --port 0

stdout: events, one JSON object per line, each with "ev" and "t"
(microseconds since the Unix epoch, read on py2p's network thread when the
thing happened).  stdin: commands ("cmd"), handled in order.  Everything
py2p prints goes to stderr.

Threading: py2p runs its network loop (MeshDaemon.mainloop) in its own
thread and has no locking, so -- as tests/peers/py2p_node.py does -- the
loop is replaced by a copy of the original with a job pump, and every
command runs on py2p's own network thread.  Unlike the test driver, a
wake-up socket is part of the select() set, so a queued command runs at
once instead of after up to 10 ms of select() timeout (a user calling
set() from their own thread would not wait either).  A burst runs in
chunks of BURST_CHUNK sets, one chunk per loop turn, so py2p keeps serving
its connections meanwhile.
"""
from __future__ import annotations

import os
import sys

# keep the real stdout for events; py2p's own prints go to stderr
_PROTO_FD = os.dup(1)
os.dup2(2, 1)
OUT = os.fdopen(_PROTO_FD, "w", buffering=1, encoding="utf-8")
sys.stdout = sys.stderr

import argparse  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from itertools import chain  # noqa: E402
from select import select  # noqa: E402

BURST_CHUNK = 100
PEERS_EVERY = 0.02
_OUT_LOCK = threading.Lock()


def now_us():
    return time.time_ns() // 1000


def emit(ev, t, **fields):
    obj = {"ev": ev, "t": t}
    obj.update(fields)
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    with _OUT_LOCK:
        OUT.write(line)
        OUT.flush()


def log(*args):
    print("[py2p_adapter]", *args, file=sys.stderr, flush=True)


def free_port(host):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def text(k):
    if isinstance(k, (bytes, bytearray)):
        return bytes(k).decode("utf-8", "replace")
    return str(k)


class Adapter:
    def __init__(self, host, port):
        import py2p  # noqa: F401
        from py2p import base, mesh, sync

        self.base, self.mesh, self.sync_mod = base, mesh, sync
        self.jobs = queue.Queue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.trace = None  # bytes prefix
        self.watch = None  # [target, step, next]
        self.updates = 0
        self.logged_exceptions = 0
        self.last_peers = None
        self.next_peers_check = 0.0
        self._patch()
        self.port = port or free_port(host)
        self.host = host
        prot = base.Protocol("sync", "Plaintext")
        self.sock = sync.SyncSocket(host, self.port, prot, leasing=True)
        self.sock.on("update", self._on_update)

    # -- py2p hooks --------------------------------------------------------
    def _patch(self):
        adp = self

        def mainloop(self):
            while self.main_thread.is_alive() and self.alive:
                try:
                    conns = list(chain(self.server.routing_table.values(),
                                       self.server.awaiting_ids,
                                       (self.sock, adp.wake_r)))
                    for handler in select(conns, [], [], 0.01)[0]:
                        if handler is adp.wake_r:
                            try:
                                while adp.wake_r.recv(4096):
                                    pass
                            except (BlockingIOError, InterruptedError):
                                pass
                        elif handler == self.sock:
                            self.handle_accept()
                        else:
                            self.process_data(handler)
                    for handler in chain(
                            tuple(self.server.routing_table.values()),
                            self.server.awaiting_ids):
                        self.kill_old_nodes(handler)
                except Exception:
                    log("exception in py2p network loop:\n" + traceback.format_exc())
                    time.sleep(0.05)
                adp._run_jobs()
                adp._check_peers()
                exc = self.exceptions
                if len(exc) > adp.logged_exceptions:
                    for e in exc[adp.logged_exceptions:adp.logged_exceptions + 5]:
                        log("py2p exception:\n" + e)
                    adp.logged_exceptions = len(exc)

        self.mesh.MeshDaemon.mainloop = mainloop

    def _on_update(self, conn, key, data, meta):
        t = now_us()
        self.updates += 1
        tr = self.trace
        if tr is not None:
            kb = key if isinstance(key, (bytes, bytearray)) else str(key).encode()
            if kb.startswith(tr):
                emit("update", t, key=text(key))
        if self.watch is not None:
            self._check_watch(len(self.sock.data), t)

    def _check_watch(self, n, t):
        w = self.watch
        if w is None:
            return
        if n >= w[0]:
            emit("count", t, n=n)
            self.watch = None
        elif n >= w[2]:
            emit("progress", t, n=n)
            while w[2] <= n:
                w[2] += w[1]

    def _check_peers(self):
        now = time.monotonic()
        if now < self.next_peers_check:
            return
        self.next_peers_check = now + PEERS_EVERY
        addrs = []
        for c in list(self.sock.routing_table.values()):
            a = c.addr  # set by the handshake; None before it
            if a:
                addrs.append("%s:%s" % (text(a[0]), a[1]))
        addrs.sort()
        if addrs != self.last_peers:
            self.last_peers = addrs
            emit("peers", now_us(), n=len(addrs), peers=addrs)
        if self.watch is not None:
            self._check_watch(len(self.sock.data), now_us())

    # -- jobs on the network thread -------------------------------------------
    def _run_jobs(self):
        # Only the jobs queued before this turn: a burst re-queues itself
        # after each chunk and must not starve the network loop.
        for _ in range(self.jobs.qsize()):
            try:
                fn = self.jobs.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except BaseException:
                log("job failed:\n" + traceback.format_exc())

    def submit(self, fn):
        self.jobs.put(fn)
        try:
            self.wake_w.send(b"x")
        except (BlockingIOError, InterruptedError):
            pass

    def on_net(self, fn):
        """Runs fn on the network thread; returns (value, exception)."""
        box = {}
        done = threading.Event()

        def job():
            try:
                box["v"] = fn()
            except BaseException as e:
                box["e"] = e
            done.set()
        thread = self.sock.daemon.daemon
        if not thread.is_alive():
            job()
        else:
            self.submit(job)
            while not done.wait(0.5):
                if not thread.is_alive():
                    self._run_jobs()
        if "e" in box:
            raise box["e"]
        return box.get("v")

    # -- commands -----------------------------------------------------------
    def burst(self, prefix, count, size):
        rand = os.urandom(max(0, size - 8))
        state = {"i": 0, "errors": 0, "first": None, "t0": None}
        done = threading.Event()
        s = self.sock

        def chunk():
            if state["t0"] is None:
                state["t0"] = now_us()
            i = state["i"]
            end = min(count, i + BURST_CHUNK)
            while i < end:
                try:
                    s.set("%s%07d" % (prefix, i), (b"%08d" % i) + rand)
                except Exception as e:
                    state["errors"] += 1
                    if state["first"] is None:
                        state["first"] = "%s: %s" % (type(e).__name__, e)
                i += 1
            state["i"] = i
            if i >= count:
                emit("burst_done", now_us(), count=count, t0=state["t0"],
                     errors=state["errors"], first_error=state["first"])
                done.set()
            else:
                self.submit(chunk)  # next loop turn

        self.submit(chunk)
        done.wait()

    def handle(self, cmd):
        name = cmd.get("cmd")
        s = self.sock
        if name == "connect":
            host, port = cmd["host"], int(cmd["port"])

            def go():
                t0 = now_us()
                s.connect(host, port)
                return t0
            t0 = self.on_net(go)
            emit("ack", now_us(), cmd="connect", t0=t0)
        elif name == "trace":
            prefix = str(cmd["prefix"]).encode()

            def go():
                self.trace = prefix
            self.on_net(go)
            emit("ack", now_us(), cmd="trace")
        elif name == "watch":
            target = int(cmd["count"])

            def go():
                step = max(1, target // 20)
                self.watch = [target, step, step]
                emit("ack", now_us(), cmd="watch")
                self._check_watch(len(s.data), now_us())
            self.on_net(go)
        elif name == "set":
            key, value = str(cmd["key"]), str(cmd["value"]).encode()

            def go():
                t = now_us()
                s.set(key, value)
                t_end = now_us()
                emit("set", t, key=key, t_end=t_end)
            self.on_net(go)
        elif name == "burst":
            self.burst(str(cmd["prefix"]), int(cmd["count"]), int(cmd["size"]))
        elif name == "stats":
            def go():
                exc = list(s.daemon.exceptions)
                last = exc[-1].strip().splitlines()[-1] if exc else None
                emit("stats", now_us(), keys=len(s.data), updates=self.updates,
                     peers=len(s.routing_table), exceptions=len(exc),
                     last_exception=last, expired=0)
            self.on_net(go)
        elif name == "quit":
            return True
        else:
            raise ValueError("unknown command %r" % (name,))
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    try:
        adp = Adapter(args.host, args.port)
    except Exception as e:
        log("start-up failed:\n" + traceback.format_exc())
        emit("error", now_us(), error="start-up failed: %r" % (e,))
        os._exit(2)
    try:
        from importlib.metadata import version as dist_version
        version = dist_version("py2p")
    except Exception:
        import py2p
        version = getattr(py2p, "__version__", "?")
    emit("ready", now_us(), impl="py2p", version=version, pid=os.getpid(),
         host=args.host, port=adp.port)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        cmd = None
        try:
            cmd = json.loads(line)
            if adp.handle(cmd):
                break
        except Exception as e:
            log("command failed:\n" + traceback.format_exc())
            emit("error", now_us(), error="%s: %s" % (type(e).__name__, e),
                 cmd=(cmd.get("cmd") if isinstance(cmd, dict) else None))
    try:
        adp.sock.close()
    except Exception as e:
        log("close:", repr(e))
    emit("bye", now_us())
    OUT.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
