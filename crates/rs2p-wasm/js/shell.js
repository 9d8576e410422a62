// The JavaScript shell of rs2p's browser node, around the protocol core
// (`Core`, compiled to WebAssembly from crates/rs2p-wasm). The shell owns
// the WebSockets, one timer, the clock and the random bytes, and gives the
// core js2p's browser API. No protocol rule lives here: framing, checksums,
// handshakes, peers, the dictionary, leases, deltas, state transfers and
// re-dials all run in the core.
//
// scripts/build-wasm.sh pastes this file into rs2p.js (a classic script)
// and rs2p.mjs (an ES module) after wasm-bindgen's glue; `rs2pShell` gets
// the glue's exports and whether the module is loaded yet.
function rs2pShell(wasm, isLoaded) {
    "use strict";
    const VERSION = "__RS2P_VERSION__";

    function notLoaded() {
        return new Error("rs2p: the WebAssembly module is not loaded yet (wait for rs2p.ready)");
    }

    /** Reports an error thrown by a listener without breaking the node. */
    function report(err) {
        setTimeout(() => { throw err; }, 0);
    }

    /** The part of Node's EventEmitter that js2p's sockets use. */
    class EventEmitter {
        constructor() { this._listeners = new Map(); }
        on(name, fn) {
            if (typeof fn !== "function") throw new TypeError("rs2p: a listener is a function");
            const list = this._listeners.get(name) || [];
            list.push(fn);
            this._listeners.set(name, list);
            return this;
        }
        addListener(name, fn) { return this.on(name, fn); }
        once(name, fn) {
            const wrapped = (...args) => { this.off(name, wrapped); fn.apply(this, args); };
            wrapped.listener = fn;
            return this.on(name, wrapped);
        }
        off(name, fn) {
            const list = this._listeners.get(name);
            if (list) {
                const i = list.findIndex((f) => f === fn || f.listener === fn);
                if (i >= 0) list.splice(i, 1);
            }
            return this;
        }
        removeListener(name, fn) { return this.off(name, fn); }
        removeAllListeners(name) {
            if (name === undefined) this._listeners.clear(); else this._listeners.delete(name);
            return this;
        }
        listenerCount(name) { return (this._listeners.get(name) || []).length; }
        emit(name, ...args) {
            const list = this._listeners.get(name);
            if (!list || list.length === 0) return false;
            for (const fn of list.slice()) {
                try { fn.apply(this, args); } catch (e) { report(e); }
            }
            return true;
        }
    }

    /**
     * A subnet, as js2p's `base.Protocol(subnet, encryption)`. In a
     * browser the only transport is `'ws'`.
     */
    class Protocol {
        constructor(subnet, encryption) {
            this.subnet = subnet === undefined || subnet === null ? "" : String(subnet);
            this.encryption = encryption === undefined ? "ws" : String(encryption);
        }
        /** The protocol id peers compare in their handshakes. */
        get id() {
            if (!isLoaded()) throw notLoaded();
            return wasm.protocolId(this.subnet, this.encryption);
        }
    }

    function randomBytes(n) {
        const c = globalThis.crypto;
        if (!c || typeof c.getRandomValues !== "function") {
            throw new Error("rs2p: crypto.getRandomValues is not available");
        }
        return c.getRandomValues(new Uint8Array(n));
    }

    function bracket(host) {
        return host.includes(":") && !host.startsWith("[") ? "[" + host + "]" : host;
    }

    /**
     * A node holding the replicated dictionary, as js2p's
     * `sync.SyncSocket(addr, port, protocol, leasing)`. A browser cannot
     * listen: `addr` and `port` are null. `protocol` and `leasing` may come
     * in either order.
     *
     * Events: `'connect'` (sock) when the first peer joins, `'update'`
     * (sock, key, value, meta) and `'delete'` (sock, key) for every change
     * of the dictionary, local or remote; and, rs2p's additions, `'peer'`
     * (sock, id, addr), `'peer_left'` (sock, id) and `'error'` (sock, err).
     */
    class SyncSocket extends EventEmitter {
        constructor(addr, port, protocolOrLeasing, leasingOrProtocol) {
            super();
            if (!isLoaded()) throw notLoaded();
            if ((addr !== null && addr !== undefined) || (port !== null && port !== undefined)) {
                throw new TypeError("rs2p: a browser node cannot listen: pass null, null as addr and port");
            }
            let protocol = null;
            let leasing = true;
            for (const x of [protocolOrLeasing, leasingOrProtocol]) {
                if (x === undefined || x === null) continue;
                if (typeof x === "boolean") leasing = x;
                else if (typeof x === "object" && typeof x.subnet === "string") protocol = x;
                else throw new TypeError("rs2p: expected a Protocol or a boolean (leasing), got " + typeof x);
            }
            protocol = protocol || new Protocol("sync", "ws");
            if (protocol.encryption !== "ws") {
                throw new TypeError("rs2p: a browser node speaks 'ws' only, not '" + protocol.encryption + "'");
            }
            this._conns = new Map();
            this._timer = null;
            this._closed = false;
            this._errors = [];
            const self = this;
            // The core's side of the shell. Nothing here throws, and nothing
            // calls back into the core before returning.
            const host = {
                send(conn, bytes) {
                    const ws = self._conns.get(conn);
                    if (ws && ws.readyState === 1) {
                        try { ws.send(bytes.slice()); } catch (e) { /* a close follows */ }
                    }
                },
                dial(conn, h, p) { self._dial(conn, h, p); },
                close(conn) {
                    const ws = self._conns.get(conn);
                    self._conns.delete(conn);
                    if (ws) { try { ws.close(); } catch (e) { /* already closed */ } }
                },
                queued(conn) {
                    const ws = self._conns.get(conn);
                    return ws ? (ws.bufferedAmount || 0) : -1;
                },
                timer(delay) {
                    if (self._timer !== null) clearTimeout(self._timer);
                    // setTimeout fires at once past 2^31-1 ms: wake up
                    // early instead (the core re-arms what is not due).
                    self._timer = delay < 0 ? null : setTimeout(() => {
                        self._timer = null;
                        self._input("timeout");
                    }, Math.min(delay, 0x7fffffff));
                },
                now() { return performance.now(); },
            };
            this._core = new wasm.Core(protocol.subnet, protocol.encryption, leasing, randomBytes(56), host);
            /** The subnet joined (the leasing digit appended, as js2p's). */
            this.protocol = new Protocol(protocol.subnet + (leasing ? "1" : "0"), "ws");
            this.leasing = leasing;
        }

        /** This node's id. */
        get id() { return this._core.id; }

        /** The handshaken peers: a Map from id to {id, addr, outgoing, kind}. */
        get routing_table() {
            const table = new Map();
            if (this._closed) return table;
            for (const p of this._core.peers()) table.set(p.id, p);
            return table;
        }

        /** "Nominal", or the errors met so far. */
        get status() { return this._errors.length ? this._errors.slice() : "Nominal"; }

        /** The number of keys. */
        get size() { return this._closed ? 0 : this._core.size; }

        /** Counters: {peers, connections, badFrames, framesSkipped, lastError}. */
        stats() { return this._core.stats(); }

        /** Dials the node at ws://addr:port/ (the link comes up later). */
        connect(addr, port) {
            this._check();
            this._call("connect", String(addr), Number(port));
        }

        /** The value at `key`, or `fallback`. */
        get(key, fallback) {
            this._check();
            const v = this._core.get(key);
            return v === undefined ? fallback : v;
        }

        /** True when `key` holds a value. */
        has(key) { this._check(); return this._core.has(key); }

        /** {owner, timestamp} of the value at `key`, or undefined. */
        metadata(key) { this._check(); return this._core.meta(key); }

        /** Sets `key` (null deletes it); throws a LeaseError when another node holds it. */
        set(key, value) {
            this._check();
            this._call("set", key, value === undefined ? null : value);
        }

        /** Deletes `key`; throws a KeyError when it holds nothing. */
        del(key) { this._check(); this._call("del", key); }

        /** Merges the mapping `delta` into the mapping at `key`. */
        apply_delta(key, delta) { this._check(); this._call("applyDelta", key, delta); }

        /** Sets every pair of an object or a Map. */
        update(pairs) {
            const entries = pairs instanceof Map ? pairs.entries() : Object.entries(pairs);
            for (const [k, v] of entries) this.set(k, v);
        }

        /** The keys (strings, or Uint8Array for keys that are not UTF-8). */
        *keys() {
            if (this._closed) return;
            yield* this._core.keys();
        }

        /** The values. */
        *values() {
            for (const k of this.keys()) {
                const v = this._core.get(k);
                if (v !== undefined) yield v;
            }
        }

        /** The [key, value] pairs. */
        *items() {
            for (const k of this.keys()) {
                const v = this._core.get(k);
                if (v !== undefined) yield [k, v];
            }
        }

        /** Removes `key` and returns its value, or `fallback` when absent. */
        pop(key, fallback) {
            this._check();
            const v = this._core.get(key);
            if (v === undefined) return fallback;
            this.del(key);
            return v;
        }

        /** Removes and returns a [key, value] pair (the first key), or undefined. */
        popitem() {
            for (const k of this.keys()) return [k, this.pop(k)];
            return undefined;
        }

        /** Closes every connection; the socket is unusable afterwards. */
        close() {
            if (this._closed) return;
            this._closed = true;
            if (this._timer !== null) clearTimeout(this._timer);
            this._timer = null;
            for (const ws of this._conns.values()) {
                try { ws.close(); } catch (e) { /* already closed */ }
            }
            this._conns.clear();
            const core = this._core;
            this._core = null;
            try { core.free(); } catch (e) { /* freed */ }
        }

        _check() {
            if (this._closed) throw new Error("rs2p: the socket is closed");
        }

        _dial(conn, h, p) {
            const WS = SyncSocket.WebSocket || globalThis.WebSocket;
            let ws;
            try {
                ws = new WS("ws://" + bracket(h) + ":" + p + "/");
            } catch (e) {
                queueMicrotask(() => this._input("failed", conn));
                return;
            }
            ws.binaryType = "arraybuffer";
            let open = false;
            this._conns.set(conn, ws);
            ws.onopen = () => {
                if (this._conns.get(conn) !== ws) return;
                open = true;
                this._input("opened", conn);
            };
            ws.onmessage = (ev) => {
                if (this._conns.get(conn) !== ws) return;
                const data = typeof ev.data === "string" ? new TextEncoder().encode(ev.data) : new Uint8Array(ev.data);
                this._input("received", conn, data);
            };
            ws.onclose = (ev) => {
                if (this._conns.get(conn) !== ws) return;
                this._conns.delete(conn);
                if (open) this._input("closed", conn, "WebSocket closed (" + ev.code + ")");
                else this._input("failed", conn);
            };
            ws.onerror = () => { /* a close follows */ };
        }

        /** A command: its errors (a held lease, a bad value) go to the caller. */
        _call(method, ...args) {
            let events;
            try {
                events = this._core[method](...args);
            } catch (e) {
                if (typeof WebAssembly !== "undefined" && e instanceof WebAssembly.RuntimeError) {
                    this._errors.push(e);
                    this.close(); // the core's state is unknown after a trap
                }
                throw e;
            }
            this._dispatch(events);
        }

        /** An input from a WebSocket or the timer: errors become 'error' events. */
        _input(method, ...args) {
            if (this._closed) return;
            let events;
            try {
                events = this._core[method](...args);
            } catch (e) {
                this._errors.push(e);
                const trapped = typeof WebAssembly !== "undefined" && e instanceof WebAssembly.RuntimeError;
                if (trapped) this.close(); // the core's state is unknown after a trap
                this.emit("error", this, e);
                return;
            }
            this._dispatch(events);
        }

        _dispatch(events) {
            for (const ev of events) {
                switch (ev[0]) {
                    case "update": this.emit("update", this, ev[1], ev[2], ev[3]); break;
                    case "delete": this.emit("delete", this, ev[1]); break;
                    case "connect": this.emit("connect", this); break;
                    case "peer": this.emit("peer", this, ev[1], ev[2]); break;
                    case "peer_left": this.emit("peer_left", this, ev[1]); break;
                    default: break;
                }
            }
        }
    }
    /** The WebSocket class to use (default: the global one). */
    SyncSocket.WebSocket = null;

    const base = { Protocol, EventEmitter, version: VERSION };
    const sync = { SyncSocket, default_protocol: new Protocol("sync", "ws") };
    return { base, sync, version: VERSION };
}
