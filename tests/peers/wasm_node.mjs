#!/usr/bin/env node
// Drive one rs2p browser node -- the bundle's SyncSocket (src/web/bundle/
// rs2p.mjs: the protocol core in WebAssembly and its JavaScript shell) --
// under Node over stdin/stdout, with the same JSON lines as js2p_node.js
// (see README.md). Needs Node's WebSocket (Node 22, or Node 20.10+ with
// --experimental-websocket).
//
//     node --experimental-websocket tests/peers/wasm_node.mjs [--subnet S] [--leasing on|off] [--order protocol|leasing]
//
// The node cannot listen (a browser cannot): its ready line has port 0.
// RS2P_BUNDLE names another rs2p.mjs. Besides the usual commands, `hostile`
// feeds a second node garbage through a stand-in WebSocket (see below).
import { createHash } from "node:crypto";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const bundle = process.env.RS2P_BUNDLE
    ? pathToFileURL(process.env.RS2P_BUNDLE).href
    : new URL("../../src/web/bundle/rs2p.mjs", import.meta.url).href;

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

let uncaught = 0;
let lastError = null;
process.on("uncaughtException", (err) => {
    uncaught += 1;
    lastError = "uncaught: " + (err && err.stack ? err.stack : String(err));
    process.stderr.write("[wasm_node] " + lastError + "\n");
});

const opts = { subnet: "sync", leasing: "on", order: "protocol" };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === "--subnet") opts.subnet = next();
    else if (a === "--leasing") opts.leasing = next();
    else if (a === "--order") opts.order = next();
    else if (a === "--kind" || a === "--host" || a === "--transport") next(); // the harness' defaults
    else {
        emit({ event: "error", error: { kind: "BadRequest", message: "unknown argument " + a } });
        process.exit(2);
    }
}

if (typeof globalThis.WebSocket !== "function") {
    emit({ event: "error", error: { kind: "NoWebSocket", message: "this Node has no WebSocket (use Node 22, or Node 20 with --experimental-websocket)" } });
    process.exit(2);
}

let rs2p;
try {
    rs2p = await import(bundle);
} catch (e) {
    emit({ event: "error", error: { kind: "Load", message: String(e && e.stack ? e.stack : e) } });
    process.exit(2);
}

// ------------------------------------------------ JSON <-> values
function toJson(v) {
    if (v === null || v === undefined) return null;
    if (typeof v === "bigint") return Number(v);
    if (v instanceof Uint8Array) return { $bin: Buffer.from(v).toString("hex") };
    if (Array.isArray(v)) return v.map(toJson);
    if (v instanceof Map) {
        const out = {};
        for (const [k, x] of v) out[typeof k === "string" ? k : JSON.stringify(toJson(k))] = toJson(x);
        return out;
    }
    if (typeof v === "object") {
        const out = {};
        for (const k of Object.keys(v)) out[k] = toJson(v[k]);
        return out;
    }
    return v;
}

function fromJson(v) {
    if (Array.isArray(v)) return v.map(fromJson);
    if (v && typeof v === "object") {
        const ks = Object.keys(v);
        if (ks.length === 1 && ks[0] === "$bin") return new Uint8Array(Buffer.from(v.$bin, "hex"));
        const out = {};
        for (const k of ks) out[k] = fromJson(v[k]);
        return out;
    }
    return v;
}

const keyIn = (k) => (k && typeof k === "object" ? fromJson(k) : k);
const keyOut = (k) => (typeof k === "string" ? k : toJson(k));

// ------------------------------------------------ the node
const protocol = new rs2p.base.Protocol(opts.subnet, "ws");
const leasing = opts.leasing !== "off";
const sock = opts.order === "leasing"
    ? new rs2p.sync.SyncSocket(null, null, leasing, protocol)
    : new rs2p.sync.SyncSocket(null, null, protocol, leasing);
let events = [];
const errors = [];
sock.on("update", (s, key, value, meta) => {
    events.push({ event: "update", key: keyOut(key), value: toJson(value), owner: meta.owner, timestamp: meta.timestamp });
});
sock.on("delete", (s, key) => events.push({ event: "delete", key: keyOut(key) }));
sock.on("connect", () => events.push({ event: "connect" }));
sock.on("error", (s, e) => { errors.push(String(e)); lastError = String(e && e.stack ? e.stack : e); });

// ------------------------------------------------ hostile input
// A stand-in WebSocket: opens at once, records what the node sends, and
// lets the driver hand the node any bytes.
class FakeSocket {
    constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.bufferedAmount = 0;
        this.sent = [];
        this.closed = false;
        FakeSocket.last = this;
        queueMicrotask(() => { this.readyState = 1; if (this.onopen) this.onopen({}); });
    }
    send(bytes) { this.sent.push(new Uint8Array(bytes)); }
    close() { this.closed = true; this.readyState = 3; }
    deliver(bytes) {
        if (!this.closed && this.onmessage) this.onmessage({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
    }
}

function rng(seed) { // xorshift32, deterministic per seed
    let x = seed >>> 0 || 1;
    return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
}

function frame(packed) { // length || sha256(packed) || packed
    const sum = createHash("sha256").update(packed).digest();
    const out = new Uint8Array(4 + 32 + packed.length);
    new DataView(out.buffer).setUint32(0, 32 + packed.length);
    out.set(sum, 4);
    out.set(packed, 36);
    return out;
}

/**
 * Connects a fresh node to stand-in sockets and feeds it `rounds` pieces
 * of garbage: random bytes, random bodies behind valid length prefixes,
 * checksummed random msgpack, its own frames with bytes flipped (checksum
 * recomputed), absurd lengths, deep nesting, huge counts. Reports how many
 * links the node dropped and every error it raised (a trap in the core
 * would be one).
 */
async function hostile(seed, rounds) {
    const next = rng(seed);
    const victim = new rs2p.sync.SyncSocket(null, null, protocol, leasing);
    const raised = [];
    victim.on("error", (s, e) => raised.push(String(e)));
    rs2p.sync.SyncSocket.WebSocket = FakeSocket;
    let fake = null;
    let drops = 0;
    let own = [];
    const reopen = async () => {
        victim.connect("fake.invalid", 1);
        fake = FakeSocket.last;
        await new Promise((r) => setTimeout(r, 0));
        for (const f of fake.sent) own.push(f.slice(4));
    };
    try {
        await reopen();
        for (let i = 0; i < rounds; i++) {
            if (fake.closed) { drops++; await reopen(); }
            const n = next() % 300;
            const rand = new Uint8Array(n).map(() => next() & 255);
            let bytes;
            switch (i % 7) {
                case 0: bytes = rand; break;
                case 1: { bytes = new Uint8Array(4 + n); new DataView(bytes.buffer).setUint32(0, n); bytes.set(rand, 4); break; }
                case 2: bytes = frame(rand); break;
                case 3: {
                    const body = own.length ? own[next() % own.length].slice() : rand;
                    for (let k = 0; k < 1 + (next() % 4); k++) if (body.length > 32) body[32 + (next() % (body.length - 32))] ^= 1 << (next() % 8);
                    bytes = frame(body.subarray(32));
                    break;
                }
                case 4: { bytes = new Uint8Array(8); new DataView(bytes.buffer).setUint32(0, 0xffffffff - (next() % 1000)); break; }
                case 5: bytes = frame(new Uint8Array(2000 + (next() % 5000)).fill(0x91)); break;
                default: { // an array claiming 2^32-1 elements, a str claiming 4 GiB
                    const p = Uint8Array.of(0x94, 0x00, 0xa1, 0x41, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff, 0xdb, 0xff, 0xff, 0xff, 0xff);
                    bytes = frame(p);
                }
            }
            fake.deliver(bytes);
            if (i % 50 === 0) await new Promise((r) => setTimeout(r, 0));
        }
        // Still a working node: a write goes out.
        if (fake.closed) { drops++; await reopen(); }
        victim.set("still-alive", 1);
    } finally {
        rs2p.sync.SyncSocket.WebSocket = null;
    }
    const status = victim.status;
    const alive = victim.get("still-alive") === 1;
    victim.close();
    return { rounds, drops, raised, status: typeof status === "string" ? status : status.map(String), alive };
}

// ------------------------------------------------ commands
async function handle(req) {
    switch (req.op) {
        case "info": return { id: sock.id, port: 0, protocol_id: sock.protocol.id, impl: "rs2p-wasm", kind: "sync", leasing };
        case "connect": sock.connect(req.host || "127.0.0.1", req.port); return { result: null };
        case "peers": {
            const peers = Array.from(sock.routing_table.values()).map((p) => ({ id: p.id, addr: p.addr, outgoing: p.outgoing, alive: true, kind: p.kind }));
            return { peers, awaiting: 0, entries: peers.length };
        }
        case "set": sock.set(keyIn(req.key), fromJson(req.value)); return {};
        case "del": sock.del(keyIn(req.key)); return {};
        case "delta": sock.apply_delta(keyIn(req.key), fromJson(req.delta)); return {};
        case "pop": { const v = sock.pop(keyIn(req.key), undefined); return { found: v !== undefined, value: toJson(v) }; }
        case "get": {
            const v = sock.get(keyIn(req.key));
            return { found: v !== undefined, value: toJson(v) };
        }
        case "keys": return { keys: Array.from(sock.keys(), keyOut) };
        case "len": return { len: sock.size };
        case "dump": return { items: Array.from(sock.items(), ([k, v]) => [keyOut(k), toJson(v), sock.metadata(k)]) };
        case "events": { const ev = events; events = []; return { events: ev }; }
        case "stats": {
            const status = sock.status;
            return { errors: errors.length + uncaught + (typeof status === "string" ? 0 : status.length), last_error: lastError, exceptions: 0, core: sock.stats() };
        }
        case "hostile": return hostile(req.seed || 1, req.rounds || 1000);
        case "close": sock.close(); return {};
        default: { const e = new Error("unknown op " + req.op); e.name = "BadRequest"; throw e; }
    }
}

emit({ event: "ready", id: sock.id, host: null, port: 0, protocol_id: sock.protocol.id });
const rl = createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on("line", (line) => {
    if (!line.trim()) return;
    chain = chain.then(async () => {
        let req;
        try { req = JSON.parse(line); } catch (e) { emit({ ok: false, error: { kind: "BadRequest", message: "not JSON" } }); return; }
        try {
            const rep = await handle(req);
            emit({ ok: true, ...rep });
            if (req.op === "close") process.exit(0);
        } catch (e) {
            emit({ ok: false, error: { kind: (e && e.name) || "Error", message: String(e && e.message ? e.message : e) } });
        }
    });
});
rl.on("close", () => { chain.then(() => { sock.close(); process.exit(0); }); });
