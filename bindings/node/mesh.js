/**
 * Mesh module: js2p 0.7's `js2p.mesh.MeshSocket` over rs2p's engine.
 *
 * The engine (handshakes, peer lists, flooding, duplicate suppression,
 * compression, re-dials) runs on the addon's threads. Received messages
 * that no protocol rule consumes come to this object on Node's event loop:
 * the handlers given to register_handler() see them first, in order, until
 * one returns true; broadcasts and whispers left over are queued for recv()
 * and announced with the 'message' event.
 */

"use strict";

const EventEmitter = require('events');
const base = require('./base.js');
const native = require('./native.js');

const m = exports;

m.max_outgoing = 4;

/** The Protocol MeshSocket uses when given none. */
m.default_protocol = new base.Protocol('mesh', 'Plaintext');

/** Messages kept for recv() before the oldest are dropped. */
m.max_queue = 65536;

/** Caught exceptions kept for `status` before the oldest are dropped. */
const MAX_EXCEPTIONS = 100;

// Passed by SyncSocket to MeshSocket's constructor.
const INTERNAL = Symbol('rs2p.internal');
m._INTERNAL = INTERNAL;

const ANY_HOST = new Set(['', '0.0.0.0', '::']);

function check_port(port, what) {
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
        throw new TypeError(`${what} must be an integer from 0 to 65535, not ${String(port)}`);
    }
}

/** Calls into the addon, turning its argument errors into TypeErrors. */
function call(fn) {
    try {
        return fn();
    }
    catch (e) {
        if (e && e.code === 'InvalidArg') {
            const err = new TypeError(e.message);
            err.code = 'invalid_arg';
            throw err;
        }
        throw e;
    }
}
m._call = call;

/**
 * A peer, as routing_table holds it and as handlers get it: `id`, `addr`
 * ([host, port] it advertised), `outgoing` (we dialed it), `kind` ('py2p',
 * 'js2p' or 'rs2p').
 */
m.MeshConnection = class MeshConnection {
    constructor(server, id, addr, outgoing, kind, msg) {
        this.server = server;
        this.id = id;
        this.addr = addr;
        this.outgoing = outgoing;
        this.kind = kind;
        Object.defineProperty(this, '_msg', { value: msg });
    }

    get protocol() {
        return this.server.protocol;
    }

    /**
     * Sends to this peer. What rs2p can send here: a whisper
     * (`send(flags.whisper, [flags.whisper, ...packets])`), which goes to
     * this peer, or through a route request when the connection stands for
     * the sender of a message it is no longer a neighbour of; and a
     * broadcast (`send(flags.broadcast, [flags.broadcast, ...packets])`),
     * flooded to the whole mesh. Other flags are the protocol's and throw a
     * TypeError.
     */
    send(msg_type, packs) {
        if (!Array.isArray(packs)) {
            throw new TypeError('send() takes an array of packets');
        }
        const nat = this.server._live();
        if (msg_type === base.flags.whisper && packs[0] === base.flags.whisper) {
            const rest = packs.slice(1);
            if (this._msg) {
                base._check(call(() => nat.reply(this._msg._handle, rest)));
            }
            else {
                base._check(call(() => nat.whisper(String(this.id), rest)));
            }
        }
        else if (msg_type === base.flags.broadcast && packs[0] === base.flags.broadcast) {
            base._check(call(() => nat.send(base.flags.broadcast, packs)));
        }
        else {
            throw new TypeError('rs2p: a connection sends [whisper, ...] whispers and [broadcast, ...] broadcasts only');
        }
    }

    close() {
        this.server.disconnect(this);
    }
};

/**
 * js2p's MeshSocket(addr, port [, protocol [, out_addr [, debug_level]]]).
 *
 * Port 0 picks a free port; `addr` then holds the real one. Events:
 * 'connect' (conn) when the routing table goes from empty to one peer,
 * 'message' (conn) when a message is queued for recv().
 */
m.MeshSocket = class MeshSocket extends EventEmitter {
    constructor(addr, port, protocol, out_addr, debug_level, internal) {
        super();
        if (addr === undefined || addr === null) {
            addr = '';
        }
        if (typeof addr !== 'string') {
            throw new TypeError(`addr must be a string, not ${typeof addr}`);
        }
        check_port(port, 'port');
        protocol = protocol || m.default_protocol;
        if (typeof protocol.subnet !== 'string' || typeof protocol.encryption !== 'string') {
            throw new TypeError('protocol must be a base.Protocol(subnet, encryption)');
        }
        let out_host, out_port;
        if (out_addr !== undefined && out_addr !== null) {
            if (!Array.isArray(out_addr) || typeof out_addr[0] !== 'string') {
                throw new TypeError('out_addr must be [host, port]');
            }
            check_port(out_addr[1], 'out_addr[1]');
            [out_host, out_port] = out_addr;
        }
        const sync = internal && internal[INTERNAL];
        this.protocol = protocol;
        this.debug_level = debug_level || 0;
        this.queue = [];
        this.exceptions = [];
        this.requests = {};
        this.__handlers = [];

        // The addon holds this callback, not the socket: a socket nobody
        // references can be collected, and its node then stops.
        const weak = new WeakRef(this);
        const on_events = (batch) => {
            const self = weak.deref();
            if (self) {
                self._on_events(batch);
            }
        };
        this._native = call(() => new native.NativeNode({
            host: addr,
            port,
            subnet: sync ? sync.subnet : protocol.subnet,
            transport: protocol.encryption,
            sync: Boolean(sync),
            leasing: sync ? sync.leasing : true,
            outHost: out_host,
            outPort: out_port
        }, on_events));
        const info = this._native.info();
        this.id = info.id;
        this.addr = [ANY_HOST.has(addr) ? info.outHost : addr, info.port];
        this.out_addr = [info.outHost, info.outPort];
    }

    /** The addon's node, or an Error when closed. */
    _live() {
        if (this._native.closed) {
            const err = new Error('the node is closed');
            err.code = 'closed';
            throw err;
        }
        return this._native;
    }

    _record(err) {
        this.exceptions.push(err);
        if (this.exceptions.length > MAX_EXCEPTIONS) {
            this.exceptions.shift();
        }
        console.warn(`rs2p: caught in a handler or event listener of node ${this.id} (see its status): ${err && err.stack ? err.stack : err}`);
    }

    /** emit(), with exceptions of listeners kept in `status` (as js2p). */
    _emit(...args) {
        try {
            this.emit(...args);
        }
        catch (e) {
            this._record(e);
        }
    }

    _on_events(batch) {
        for (const ev of batch) {
            this._on_event(ev);
        }
    }

    _on_event(ev) {
        switch (ev[0]) {
            case 'connect':
                this._emit('connect', this);
                break;
            case 'message': {
                const msg = new base.Message(this, ev[1], ev[2], ev[3], ev[4], ev[5], ev[6]);
                this._on_message(msg);
                break;
            }
            case 'error': {
                const err = new Error(ev[1]);
                err.code = 'io';
                this.exceptions.push(err);
                if (this.exceptions.length > MAX_EXCEPTIONS) {
                    this.exceptions.shift();
                }
                break;
            }
            case 'lagged':
                this._emit('lagged', this, ev[1]);
                break;
            default:
                break;
        }
    }

    _on_message(msg) {
        const conn = new m.MeshConnection(this, msg.sender, null, false, undefined, msg);
        try {
            if (this.handle_msg(msg, conn)) {
                return;
            }
        }
        catch (e) {
            this._record(e);
            return;
        }
        const flag = msg.packets[0];
        if (flag === base.flags.whisper || flag === base.flags.broadcast) {
            this.queue.push(msg);
            if (this.queue.length > m.max_queue) {
                this.queue.shift();
            }
            this._emit('message', this);
        }
    }

    /** Runs the registered handlers until one returns true. */
    handle_msg(msg, conn) {
        for (const handler of this.__handlers) {
            if (handler(msg, conn)) {
                return true;
            }
        }
        return false;
    }

    /**
     * Registers `callback(msg, conn)`, called for every message the
     * protocol leaves, before it is queued; returning true claims it.
     */
    register_handler(callback) {
        if (typeof callback !== 'function') {
            throw new TypeError('register_handler() takes a function');
        }
        this.__handlers.push(callback);
    }

    /**
     * With `num`: an array of up to `num` queued messages; without: the
     * next message, or undefined.
     */
    recv(num) {
        if (num) {
            return this.queue.splice(0, num);
        }
        return this.queue.shift();
    }

    /**
     * Dials a node; returns at once (the handshake follows, and a failure
     * is kept in `status`). Returns false, doing nothing, for this node's
     * own address or id, and true when `id` is already connected.
     */
    connect(addr, port, id) {
        if (typeof addr !== 'string') {
            throw new TypeError(`addr must be a string, not ${typeof addr}`);
        }
        check_port(port, 'port');
        if ((id !== undefined && id !== null && String(id) === this.id) ||
            (addr === this.addr[0] && port === this.addr[1]) ||
            (addr === this.out_addr[0] && port === this.out_addr[1])) {
            return false;
        }
        if (id !== undefined && id !== null && this.routing_table.has(String(id))) {
            return true;
        }
        this._live().connect(addr, port);
    }

    /**
     * Sends `[type, ...packets]` with main flag `flag` (both default to
     * broadcast): a broadcast reaches the whole mesh.
     */
    send(packets, flag, type) {
        if (!Array.isArray(packets)) {
            throw new TypeError('send() takes an array of packets');
        }
        const main_flag = flag || base.flags.broadcast;
        const sub_flag = type || base.flags.broadcast;
        const nat = this._live();
        base._check(call(() => nat.send(main_flag, [sub_flag, ...packets])));
    }

    /** The peers, by id (a new Map at each read). */
    get routing_table() {
        const table = new Map();
        if (this._native.closed) {
            return table;
        }
        for (const p of this._native.peers()) {
            const addr = p.host === undefined || p.host === null ? null : [p.host, p.port];
            table.set(p.id, new m.MeshConnection(this, p.id, addr, p.outgoing, p.kind));
        }
        return table;
    }

    /** Connections without a handshake yet: the engine keeps them. */
    get awaiting_ids() {
        return [];
    }

    /** The peers this node dialed. */
    get outgoing() {
        return [...this.routing_table.values()].filter((c) => c.outgoing);
    }

    /** "Nominal", or the exceptions caught so far. */
    get status() {
        if (this.exceptions.length) {
            return this.exceptions;
        }
        return 'Nominal';
    }

    /** Drops the connection to a peer (a MeshConnection or an id). */
    disconnect(handler) {
        const id = handler && typeof handler === 'object' ? handler.id : handler;
        return this._live().disconnect(String(id));
    }

    /**
     * Stops the node: its port is closed and every connection dropped when
     * this returns; it no longer keeps the process alive. Idempotent.
     */
    close() {
        this._native.close();
    }
};
