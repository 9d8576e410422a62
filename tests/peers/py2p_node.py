#!/usr/bin/env python3
"""Drive one real py2p 0.7.878 node (MeshSocket or SyncSocket) over stdin/stdout.

Run with the interpreter of the venv made by scripts/setup-peers.sh:

    .peers/py/bin/python tests/peers/py2p_node.py --kind sync --port 0

Protocol (shared with tests/peers/js2p_node.js; see tests/peers/README.md):
one JSON object per line on stdin (field "op"), exactly one JSON reply line
per command on stdout, in order.  The first stdout line is the "ready"
event.  Everything else the process prints (py2p prints to stdout on its
own, e.g. on every delta, PROTOCOL.md Q9) is redirected to stderr.

JSON value convention: JSON string <-> str, number <-> int/float, array <->
list (tuples are output as arrays), object <-> dict with str keys, null,
bool; {"$bin": "<hex>"} <-> bytes.

Threading: py2p runs its network loop (MeshDaemon.mainloop) in its own
thread and has no locking at all.  To avoid racing it, the driver replaces
mainloop with a copy of the original loop that additionally runs queued
driver jobs between two select() rounds; every command touching the socket
is executed as such a job on py2p's own network thread.
"""
from __future__ import annotations

import os
import sys

# --- keep the real stdout for protocol lines, send everything else to stderr
_PROTO_FD = os.dup(1)
os.dup2(2, 1)
OUT = os.fdopen(_PROTO_FD, "w", buffering=1, encoding="utf-8")
sys.stdout = sys.stderr

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import queue  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from itertools import chain  # noqa: E402
from select import select  # noqa: E402

IMPL = "py2p"


def emit(obj):
    OUT.write(json.dumps(obj, separators=(",", ":")) + "\n")
    OUT.flush()


def log(*args):
    print("[py2p_node]", *args, file=sys.stderr, flush=True)


class BadRequest(Exception):
    """A malformed command line (not JSON, not an object, unknown op, ...)."""


class NotFound(Exception):
    """A whisper to an id that is not in the routing table."""


# ----------------------------------------------------------------- JSON <-> py
def to_json(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        # NaN / inf are not JSON; they are passed through as json.dumps does
        # (NaN, Infinity), which serde_json rejects -- tests should not use them.
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bin": bytes(v).hex()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        # msgpack maps may have bytes keys; JSON object keys must be text, so
        # bytes keys are decoded as UTF-8 (invalid sequences -> U+FFFD).
        # A str key and a bytes key with the same text would collide.
        out = {}
        for k, x in v.items():
            if isinstance(k, (bytes, bytearray)):
                k = bytes(k).decode("utf-8", "replace")
            elif not isinstance(k, str):
                k = json.dumps(to_json(k))
            out[k] = to_json(x)
        return out
    # umsgpack.Ext or anything unexpected
    return {"$repr": repr(v)}


def from_json(v):
    if isinstance(v, dict):
        if len(v) == 1 and "$bin" in v:
            return bytes.fromhex(v["$bin"])
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def key_out(k):
    """Keys are output as text when they decode as UTF-8, else as $bin."""
    if isinstance(k, (bytes, bytearray)):
        try:
            return bytes(k).decode("utf-8")
        except UnicodeDecodeError:
            return {"$bin": bytes(k).hex()}
    if isinstance(k, str):
        return k
    return to_json(k)


def id_text(x):
    """Node ids / owners are base58 text; py2p holds them as bytes."""
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", "replace")
    if x is None:
        return None
    return str(x)


def key_in(v):
    if isinstance(v, str):
        return v  # py2p's sanitize_packet encodes str keys as UTF-8 itself
    if isinstance(v, dict) and len(v) == 1 and "$bin" in v:
        return bytes.fromhex(v["$bin"])
    raise BadRequest("key must be a string or {\"$bin\": hex}")


# ------------------------------------------------------------------- options
def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=["mesh", "sync"], default="sync")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--subnet", default=None)
    p.add_argument("--leasing", choices=["on", "off", "omit"], default="on")
    p.add_argument("--transport", choices=["Plaintext", "SSL", "ws"],
                   default="Plaintext")
    p.add_argument("--compression", default=None,
                   help="comma-separated preference list (e.g. zlib,gzip); "
                        "'' or 'none' = no compression; omitted = py2p default")
    p.add_argument("--debug", type=int, default=0,
                   help="py2p debug_level (its prints go to stderr)")
    p.add_argument("--sendall", action="store_true",
                   help="fix py2p's send: write whole frames (sendall) instead "
                        "of one send() whose count is ignored")
    return p.parse_args()


def free_port(host):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------- driver
class Driver:
    def __init__(self, args):
        import py2p  # noqa: F401
        from py2p import base, flags, mesh, messages, sync

        self.base, self.flags, self.mesh, self.sync = base, flags, mesh, sync
        self.args = args
        self.jobs = queue.Queue()
        self.events = []
        self.errors = 0
        self.last_error = None
        self.comp_names = {flags.snappy: "snappy", flags.zlib: "zlib",
                           flags.gzip: "gzip", flags.bz2: "bz2",
                           flags.lzma: "lzma"}

        if args.transport == "ws":
            raise ValueError("py2p has no ws transport (js2p only)")

        # --compression: py2p keeps its preference list in the module-level
        # list py2p.messages.compression (imported by name into base and
        # mesh, so it must be changed in place).  It is used for the
        # handshake, for choosing the send method and for decompression.
        if args.compression is not None:
            wanted = [c.strip() for c in args.compression.split(",")
                      if c.strip() and c.strip() != "none"]
            by_name = {v: k for k, v in self.comp_names.items()}
            avail = list(messages.compression)
            new = []
            for name in wanted:
                if name not in by_name:
                    raise ValueError("unknown compression method %r" % name)
                if by_name[name] not in avail:
                    raise ValueError("compression %r is not available in this "
                                     "py2p install" % name)
                new.append(by_name[name])
            messages.compression[:] = new
        self.compression = messages.compression

        self._patch()

        port = args.port or free_port(args.host)
        if args.kind == "mesh":
            prot = base.Protocol(args.subnet or "mesh", args.transport)
            self.sock = mesh.MeshSocket(args.host, port, prot,
                                        debug_level=args.debug)
        else:
            prot = base.Protocol(args.subnet or "sync", args.transport)
            kw = {}
            if args.leasing != "omit":
                kw["leasing"] = args.leasing == "on"
            self.sock = sync.SyncSocket(args.host, port, prot,
                                        debug_level=args.debug, **kw)
            # Event signatures (sync.py): 'update'(conn, key, data, new_meta)
            # with new_meta = metatuple(owner, timestamp); 'delete'(conn, key).
            self.sock.on("update", self._on_update)
            self.sock.on("delete", self._on_delete)
        self.port = port

    # -- hooks into py2p ------------------------------------------------------
    def _record_error(self, text):
        self.errors += 1
        self.last_error = text

    def _patch(self):
        drv = self
        mesh, base = self.mesh, self.base

        # 1. Network loop: the original MeshDaemon.mainloop, verbatim, plus
        #    the driver's job pump, and an exception guard (the original
        #    thread would die silently; here the error is counted).
        def mainloop(self):
            while self.main_thread.is_alive() and self.alive:
                try:
                    conns = chain(self.server.routing_table.values(),
                                  self.server.awaiting_ids, (self.sock, ))
                    for handler in select(list(conns), [], [], 0.01)[0]:
                        if handler == self.sock:
                            self.handle_accept()
                        else:
                            self.process_data(handler)
                    for handler in chain(
                            tuple(self.server.routing_table.values()),
                            self.server.awaiting_ids):
                        self.kill_old_nodes(handler)
                except Exception as e:
                    drv._record_error("network loop: %s: %s" % (type(e).__name__, e))
                    log("exception in py2p network loop:\n" + traceback.format_exc())
                    time.sleep(0.05)
                drv._run_jobs()

        mesh.MeshDaemon.mainloop = mainloop

        # 2. Error accounting.  py2p reports handler exceptions only through
        #    its __print__ (and daemon.exceptions for the fatal ones):
        #    - "Failed to decode message ... Exception: e" (level 1): an
        #      IndexError/struct.error while handling a frame; py2p then sends
        #      the renegotiate pair (PROTOCOL.md 6.11);
        #    - "This exception was: e" (level 1): any other exception; the
        #      connection is dropped and peers are re-requested (6.12).
        orig_print = base.BaseSocket.__print__

        def __print__(self, *a, **kw):
            try:
                text = " ".join(str(x) for x in a)
                if text.startswith("Failed to decode message") or \
                        text.startswith("This exception was:"):
                    drv._record_error(text)
            except Exception:
                pass
            return orig_print(self, *a, **kw)

        base.BaseSocket.__print__ = __print__

        # 3. Mark connections py2p has disconnected (it only shuts the socket
        #    down and may leave it in the routing table, Q4/Q8), so "peers"
        #    can report them as not alive.
        orig_disconnect = mesh.MeshSocket.disconnect

        def disconnect(self, handler):
            try:
                handler._rs2p_closed = True
            except AttributeError:
                pass
            return orig_disconnect(self, handler)

        mesh.MeshSocket.disconnect = disconnect

        # 4. --sendall: py2p's send_InternalMessage (base.py) makes one
        #    send() on a socket with a 1 s timeout and ignores the count it
        #    returns, so a frame bigger than the socket's send buffer (about
        #    3.8 MB on loopback) is cut short and the stream is out of step
        #    for good. This copy of it is verbatim but for sendall (with a
        #    timeout long enough for a big frame to a busy reader), so tests
        #    can show what a peer does with big frames py2p formats.
        if self.args.sendall:
            from socket import error as SocketException
            from traceback import format_exc
            flags = self.flags

            def send_InternalMessage(self, msg):
                msg.compression = self.compression
                if msg.msg_type in (flags.whisper, flags.broadcast):
                    self.last_sent = msg.payload
                try:
                    timeout = self.sock.gettimeout()
                    self.sock.settimeout(60)
                    try:
                        self.sock.sendall(msg.string)
                    finally:
                        self.sock.settimeout(timeout)
                    return msg
                except (IOError, SocketException):
                    self.server.daemon.exceptions.append(format_exc())
                    self.server.disconnect(self)

            base.BaseConnection.send_InternalMessage = send_InternalMessage

    def _on_update(self, conn, key, data, meta):
        self.events.append({"event": "update", "key": key_out(key),
                            "value": to_json(data),
                            "owner": id_text(meta.owner),
                            "timestamp": to_json(meta.timestamp)})

    def _on_delete(self, conn, key):
        self.events.append({"event": "delete", "key": key_out(key)})

    # -- running on the network thread ----------------------------------------
    def _run_jobs(self):
        while True:
            try:
                fn, box, done = self.jobs.get_nowait()
            except queue.Empty:
                return
            try:
                box["value"] = fn()
            except BaseException as e:  # reported to the caller
                box["error"] = e
            done.set()

    def on_net(self, fn):
        thread = self.sock.daemon.daemon
        if not thread.is_alive():
            return fn()
        box, done = {}, threading.Event()
        self.jobs.put((fn, box, done))
        while not done.wait(0.05):
            if not thread.is_alive():
                self._run_jobs()  # thread died: run it here
        if "error" in box:
            raise box["error"]
        return box.get("value")

    # -- commands ------------------------------------------------------------
    def info(self):
        return {"id": id_text(self.sock.id), "port": self.port,
                "protocol_id": id_text(self.sock.protocol.id),
                "impl": IMPL, "kind": self.args.kind,
                "host": self.args.host, "transport": self.args.transport,
                "compression": [self.comp_names.get(c, c) for c in self.compression]}

    def handle(self, req):
        op = req.get("op")
        s = self.sock
        sync_ops = {"set", "set_at", "set_random", "digest", "del", "delta", "get", "keys", "len", "dump", "events"}
        if op in sync_ops and self.args.kind != "sync":
            raise BadRequest("op %r needs --kind sync" % op)

        if op == "info":
            return self.info()
        if op == "connect":
            host, port = req.get("host", "127.0.0.1"), req.get("port")
            if not isinstance(port, int):
                raise BadRequest("connect needs an integer port")
            pid = req.get("id")
            # py2p's routing table is keyed by bytes ids
            pid = pid.encode() if isinstance(pid, str) else from_json(pid)
            r = self.on_net(lambda: s.connect(host, port, pid))
            return {"result": to_json(r)}
        if op == "peers":
            return self.on_net(self._peers)
        if op == "send":
            packets = [from_json(p) for p in req.get("packets", [])]
            self.on_net(lambda: s.send(*packets))
            return {}
        if op == "whisper":
            packets = [from_json(p) for p in req.get("packets", [])]
            to = req.get("to")

            def whisper():
                conn = None
                for k, c in s.routing_table.items():
                    if id_text(k) == to:
                        conn = c
                        break
                if conn is None:
                    raise NotFound("no routing-table entry for id %r" % to)
                conn.send(self.flags.whisper, self.flags.whisper, *packets)
            self.on_net(whisper)
            return {}
        if op == "recv":
            def recv():
                out = []
                while True:
                    m = s.recv()
                    if m is None:
                        return out
                    out.append({"sender": id_text(m.sender), "time": m.time,
                                "packets": to_json(m.packets)})
            return {"messages": self.on_net(recv)}
        if op == "set":
            k, v = key_in(req.get("key")), from_json(req.get("value"))
            self.on_net(lambda: s.set(k, v))
            return {}
        if op == "set_random":
            # A big incompressible value made here, so that tests do not
            # pipe tens of MB of hex through the driver (nor allocate it).
            k, n = key_in(req.get("key")), req.get("size")
            if not isinstance(n, int) or n < 0:
                raise BadRequest("set_random needs a size (bytes)")
            v = os.urandom(n)
            self.on_net(lambda: s.set(k, v))
            return {"sha256": hashlib.sha256(v).hexdigest()}
        if op == "digest":
            k = key_in(req.get("key"))
            miss = object()
            v = self.on_net(lambda: s.get(k, miss))
            if v is miss:
                return {"found": False}
            if not isinstance(v, (bytes, bytearray)):
                raise BadRequest("digest needs a bytes value")
            return {"found": True, "len": len(v),
                    "sha256": hashlib.sha256(bytes(v)).hexdigest()}
        if op == "set_at":
            # A set made while py2p's clock reads `time` (a clock years
            # ahead, or a corrupt one): py2p stamps both its own metadata
            # and the message with getUTC(), which sync and base import by
            # name.
            k, v, t = key_in(req.get("key")), from_json(req.get("value")), req.get("time")
            if not isinstance(t, int):
                raise BadRequest("set_at needs an integer time")
            sync_mod, base_mod = self.sync, self.base

            def set_at():
                saved = sync_mod.getUTC, base_mod.getUTC
                sync_mod.getUTC = base_mod.getUTC = lambda: t
                try:
                    s.set(k, v)
                finally:
                    sync_mod.getUTC, base_mod.getUTC = saved
            self.on_net(set_at)
            return {}
        if op == "del":
            k = key_in(req.get("key"))

            def delete():
                del s[k]
            self.on_net(delete)
            return {}
        if op == "delta":
            k, d = key_in(req.get("key")), from_json(req.get("delta"))
            self.on_net(lambda: s.apply_delta(k, d))
            return {}
        if op == "get":
            k = key_in(req.get("key"))
            miss = object()
            v = self.on_net(lambda: s.get(k, miss))
            if v is miss:
                return {"found": False, "value": None}
            return {"found": True, "value": to_json(v)}
        if op == "keys":
            return {"keys": self.on_net(lambda: [key_out(k) for k in list(s.data)])}
        if op == "len":
            return {"len": self.on_net(lambda: len(s.data))}
        if op == "dump":
            def dump():
                items = []
                for k, v in list(s.data.items()):
                    meta = s.metadata.get(k)
                    items.append([key_out(k), to_json(v), {
                        "owner": id_text(meta.owner) if meta else None,
                        "timestamp": to_json(meta.timestamp) if meta else None}])
                return items
            return {"items": self.on_net(dump)}
        if op == "events":
            def drain():
                ev, self.events = self.events, []
                return ev
            return {"events": self.on_net(drain)}
        if op == "stats":
            # errors: exceptions raised while py2p handled a received frame
            # (see _patch); exceptions: len(daemon.exceptions), which also
            # counts failed sends (e.g. BrokenPipe on a connection py2p
            # already shut down, Q8's request storm).
            exc = list(s.daemon.exceptions)
            last_exc = exc[-1].strip().splitlines()[-1] if exc else None
            return {"errors": self.errors, "last_error": self.last_error,
                    "exceptions": len(exc), "last_exception": last_exc}
        raise BadRequest("unknown op %r" % (op,))

    def _peers(self):
        s = self.sock
        seen = set()
        peers = []
        for k, c in list(s.routing_table.items()):
            if id(c) in seen:
                continue
            seen.add(id(c))
            addr = c.addr
            try:
                fileno = c.sock.fileno()
            except Exception:
                fileno = -1
            alive = not getattr(c, "_rs2p_closed", False) and fileno != -1
            peers.append({"id": id_text(k),
                          "addr": [to_json(addr[0]), to_json(addr[1])] if addr else None,
                          "outgoing": bool(c.outgoing),
                          "alive": alive})
        return {"peers": peers, "awaiting": len(s.awaiting_ids),
                "entries": len(s.routing_table)}

    def close(self):
        try:
            self.sock.close()
        except Exception as e:
            log("close:", repr(e))


def error_obj(e):
    msg = e.args[0] if (len(e.args) == 1 and isinstance(e.args[0], str)) else str(e)
    return {"kind": type(e).__name__, "message": msg}


def main():
    args = parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        drv = Driver(args)
    except Exception as e:
        log("start-up failed:\n" + traceback.format_exc())
        emit({"event": "error", "error": error_obj(e)})
        OUT.flush()
        os._exit(2)
    info = drv.info()
    emit({"event": "ready", "id": info["id"], "host": args.host,
          "port": info["port"], "protocol_id": info["protocol_id"]})
    log("ready", info)

    while True:
        line = sys.stdin.readline()
        if not line:
            break  # EOF = close
        line = line.strip()
        if not line:
            continue
        try:
            try:
                req = json.loads(line)
            except ValueError as e:
                raise BadRequest("invalid JSON: %s" % e)
            if not isinstance(req, dict):
                raise BadRequest("command must be a JSON object")
            if req.get("op") == "close":
                emit({"ok": True})
                break
            reply = {"ok": True}
            reply.update(drv.handle(req))
        except Exception as e:
            reply = {"ok": False, "error": error_obj(e)}
        emit(reply)

    drv.close()
    OUT.flush()
    # py2p's daemon thread is not a daemon thread; don't wait for anything.
    os._exit(0)


if __name__ == "__main__":
    main()
