/**
 * Base module: what js2p 0.7's `js2p.base` offers (flags, Protocol, Message,
 * the version numbers and helpers), over rs2p's engine.
 */

"use strict";

const crypto = require('crypto');
const native = require('./native.js');

const base = exports;

base.version_info = [0, 7, 870];
base.node_policy_version = base.version_info[2].toString();
base.protocol_version = base.version_info.slice(0, 2).join('.');
base.version = base.version_info.join('.');

/** Protocol reserved flags, as js2p defines them. */
base.flags = {
    reserved: Array.from({ length: 0x30 }, (_, i) => i),

    // main flags
    broadcast: 0x00,
    renegotiate: 0x01,
    whisper: 0x02,
    ping: 0x03,
    pong: 0x04,

    // sub-flags
    compression: 0x01,
    handshake: 0x05,
    notify: 0x06,
    peers: 0x07,
    request: 0x08,
    resend: 0x09,
    response: 0x0A,
    store: 0x0B,
    retrieve: 0x0C,
    retrieved: 0x0D,
    forward: 0x0E,
    new_paths: 0x0F,
    revoke_paths: 0x10,
    delta: 0x11,

    // compression methods
    gzip: 0x11,
    zlib: 0x13,
    snappy: 0x20,
    bz2: 0x10,
    lzma: 0x12,
    bwtc: 0x14,
    context1: 0x15,
    defsum: 0x16,
    dmc: 0x17,
    fenwick: 0x18,
    huffman: 0x19,
    lzjb: 0x1A,
    lzjbr: 0x1B,
    lzp3: 0x1C,
    mtf: 0x1D,
    ppmd: 0x1E,
    simple: 0x1F
};

/** The compression methods the engine speaks, in order of preference. */
base.compression = [base.flags.snappy, base.flags.zlib, base.flags.gzip, base.flags.bz2, base.flags.lzma];

/** Unix time in seconds. */
base.getUTC = function getUTC() {
    return Math.floor(Date.now() / 1000);
};

base.base_58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';

/** An integer (number, BigInt or decimal string) in base 58. */
base.to_base_58 = function to_base_58(i) {
    let n = BigInt(i);
    let s = '';
    while (n > 0n) {
        s = base.base_58[Number(n % 58n)] + s;
        n /= 58n;
    }
    return s || '1';
};

/** A base-58 string as a BigInt. */
base.from_base_58 = function from_base_58(string) {
    let n = 0n;
    for (const c of String(string)) {
        const d = base.base_58.indexOf(c);
        if (d < 0) {
            throw new Error(`${JSON.stringify(c)} is not a base-58 digit`);
        }
        n = n * 58n + BigInt(d);
    }
    return n;
};

/** Hex SHA-256 of a string or Buffer. */
base.SHA256 = function SHA256(text) {
    return crypto.createHash('sha256').update(Buffer.from(text)).digest('hex');
};

/** Hex SHA-384 of a string or Buffer. */
base.SHA384 = function SHA384(text) {
    return crypto.createHash('sha384').update(Buffer.from(text)).digest('hex');
};

/**
 * A subnet: nodes with a different Protocol (subnet or transport) refuse
 * each other at the handshake. `encryption` is 'Plaintext', 'SSL' or 'ws'.
 */
base.Protocol = class Protocol {
    constructor(subnet, encryption) {
        this.subnet = subnet;
        this.encryption = encryption;
    }

    /** The id of the network, hashed from subnet, transport and version. */
    get id() {
        return native.protocolId(String(this.subnet), String(this.encryption));
    }
};

base.default_protocol = new base.Protocol('', 'Plaintext');

/**
 * A message as handlers and recv() see it (js2p's base.Message): `packets`
 * is the payload, sub-flag first.
 */
base.Message = class Message {
    constructor(server, handle, packets, sender, time, id, msg_type) {
        this.server = server;
        this.packets = packets;
        this.sender = sender;
        this.time = time;
        this.id = id;
        this.msg_type = msg_type;
        Object.defineProperty(this, '_handle', { value: handle });
    }

    get protocol() {
        return this.server.protocol;
    }

    get time_58() {
        return base.to_base_58(this.time);
    }

    /**
     * Answers the sender privately: a whisper when it is a neighbour, else
     * a route request through the mesh first (as js2p).
     */
    reply(packs) {
        if (!Array.isArray(packs)) {
            throw new TypeError('reply() takes an array of packets');
        }
        base._check(this.server._native.reply(this._handle, packs));
    }

    inspect() {
        return `Message {\n type: ${this.packets[0]}\n packets: ${JSON.stringify(this.packets.slice(1))}\n sender: ${this.sender} }`;
    }
};

const ERROR_TYPES = {
    not_a_mapping: TypeError,
    value: TypeError
};

/**
 * The Error for a failure the engine reports as [kind, message]; `code` is
 * the kind ('lease_held', 'key_not_found', 'not_a_mapping', 'closed', ...).
 */
base._error = function _error(failure) {
    const [code, message] = failure;
    const Type = ERROR_TYPES[code] || Error;
    const err = new Type(message);
    err.code = code;
    return err;
};

/** Throws the failure the engine reported, if any. */
base._check = function _check(failure) {
    if (failure) {
        throw base._error(failure);
    }
};
