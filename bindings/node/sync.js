/**
 * Sync module: js2p 0.7's `js2p.sync.SyncSocket` over rs2p's engine: a
 * dictionary replicated to every node, with leases.
 *
 * Keys are Buffers (a string key is its UTF-8 bytes); values go and come
 * as js2p sends and returns them (strings, numbers, booleans, Buffers,
 * arrays, plain objects). Reads are local; writes are checked against the
 * lease rule by the engine, applied, broadcast, and throw an Error when
 * refused (nothing is sent then).
 */

"use strict";

const base = require('./base.js');
const mesh = require('./mesh.js');

const m = exports;

/** The Protocol SyncSocket uses when given none. */
m.default_protocol = new base.Protocol('sync', 'Plaintext');

/** Owner and time of a key's value, as the 'update' event passes it. */
m.metatuple = class metatuple {
    constructor(owner, timestamp) {
        this.owner = owner;
        this.timestamp = timestamp;
    }
};

const call = mesh._call;

function check_key(key) {
    if (typeof key === 'string' || key instanceof Uint8Array || key instanceof ArrayBuffer) {
        return key;
    }
    throw new TypeError(`a key must be a string or a Buffer, not ${key === null ? 'null' : typeof key}`);
}

/**
 * SyncSocket(addr, port [, protocol [, leasing [, out_addr [, debug_level]]]])
 * as js2p 0.7.870's code takes it, or
 * SyncSocket(addr, port [, leasing [, protocol [, out_addr [, debug_level]]]])
 * as js2p's tutorial writes it (`new sync.SyncSocket('', 4444, false)`): a
 * boolean third argument is `leasing`. Leasing is on unless `leasing` is
 * false (js2p joins the leasing subnet but enforces no lease when the
 * argument is left out; rs2p enforces them).
 *
 * Events: 'update' (conn, key, new_data, meta) with `meta.owner` and
 * `meta.timestamp`, 'delete' (conn, key), and MeshSocket's.
 */
m.SyncSocket = class SyncSocket extends mesh.MeshSocket {
    constructor(addr, port, ...rest) {
        let protocol, leasing, out_addr, debug_level;
        if (typeof rest[0] === 'boolean') {
            [leasing, protocol, out_addr, debug_level] = rest;
        }
        else {
            [protocol, leasing, out_addr, debug_level] = rest;
        }
        protocol = protocol || m.default_protocol;
        if (typeof protocol.subnet !== 'string' || typeof protocol.encryption !== 'string') {
            throw new TypeError('protocol must be a base.Protocol(subnet, encryption)');
        }
        const leases = leasing !== false;
        const used = new base.Protocol(protocol.subnet + (leases ? '1' : '0'), protocol.encryption);
        super(addr, port, used, out_addr, debug_level,
              { [mesh._INTERNAL]: { subnet: protocol.subnet, leasing: leases } });
        this.__leasing = leases;
    }

    /** True when leases are enforced. */
    get leasing() {
        return this.__leasing;
    }

    _on_event(ev) {
        switch (ev[0]) {
            case 'update':
                this._emit('update', this, ev[1], ev[2], new m.metatuple(ev[3], ev[4]));
                break;
            case 'delete':
                this._emit('delete', this, ev[1]);
                break;
            default:
                super._on_event(ev);
        }
    }

    /**
     * The value at `key`, or `fallback` when there is none (so `undefined`
     * without one). Unlike js2p, a falsy value (0, '', false) is returned
     * as it is.
     */
    get(key, fallback) {
        const nat = this._live();
        check_key(key);
        const v = call(() => nat.get(key));
        return v === null ? fallback : v;
    }

    /**
     * Sets `key` to `data`; throws an Error (code 'lease_held') when another
     * node holds the key's lease. Setting null or undefined deletes.
     */
    set(key, data) {
        const nat = this._live();
        check_key(key);
        if (data === null || data === undefined) {
            this.del(key);
            return;
        }
        base._check(call(() => nat.set(key, data)));
    }

    /**
     * Deletes `key` (a store of nothing, broadcast to every node); throws
     * when another node holds its lease. Returns false when there was no
     * such key (js2p's del always throws).
     */
    del(key) {
        const nat = this._live();
        check_key(key);
        const failure = call(() => nat.del(key));
        if (!failure) {
            return true;
        }
        if (failure[0] === 'key_not_found') {
            return false;
        }
        throw base._error(failure);
    }

    /** set() for each key of an object (or each entry of a Map). */
    update(update_dict) {
        if (update_dict instanceof Map) {
            for (const [key, value] of update_dict) {
                this.set(key, value);
            }
            return;
        }
        if (update_dict === null || typeof update_dict !== 'object') {
            throw new TypeError('update() takes an object');
        }
        for (const key of Object.keys(update_dict)) {
            this.set(key, update_dict[key]);
        }
    }

    /**
     * Merges the object `delta` into the object at `key` (one level deep;
     * an absent key starts empty). Throws a TypeError when either is not a
     * mapping, an Error when the lease is another node's (leases are not
     * checked for deltas when leasing is off).
     */
    apply_delta(key, delta) {
        const nat = this._live();
        check_key(key);
        base._check(call(() => nat.applyDelta(key, delta)));
    }

    /** The keys (Buffers), from a snapshot taken at the first next(). */
    *keys() {
        for (const key of this._live().keys()) {
            yield key;
        }
    }

    /** The values, from a snapshot taken at the first next(). */
    *values() {
        const flat = this._live().items();
        for (let i = 1; i < flat.length; i += 2) {
            yield flat[i];
        }
    }

    /** [key, value] pairs, from a snapshot taken at the first next(). */
    *items() {
        const flat = this._live().items();
        for (let i = 0; i < flat.length; i += 2) {
            yield [flat[i], flat[i + 1]];
        }
    }

    /**
     * Deletes `key` and returns its value, or returns `fallback` when there
     * is none. Throws when another node holds the lease.
     */
    pop(key, fallback) {
        const v = this.get(key, null);
        if (v === null) {
            return fallback;
        }
        if (!this.del(key)) {
            return fallback;
        }
        return v;
    }

    /**
     * Deletes the first key and returns [key, value] (undefined when
     * empty). Throws when another node holds the lease.
     */
    popitem() {
        for (const key of this.keys()) {
            return [key, this.pop(key)];
        }
        return undefined;
    }

    /** rs2p: true when `key` has a value. */
    has(key) {
        return this.get(key, null) !== null;
    }

    /** rs2p: the number of keys. */
    get size() {
        return this._native.closed ? 0 : this._native.size();
    }

    /** rs2p: owner and time of the value at `key` (a metatuple), or undefined. */
    meta(key) {
        const nat = this._live();
        check_key(key);
        const md = call(() => nat.metadata(key));
        return md === null ? undefined : new m.metatuple(md.owner, md.timestamp);
    }
};
