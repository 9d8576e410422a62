#!/usr/bin/env node
// Drive one real js2p 0.7.870 node (MeshSocket or SyncSocket) over
// stdin/stdout.  Same interface as tests/peers/py2p_node.py; see
// tests/peers/README.md.
//
//     node tests/peers/js2p_node.js --kind sync --port 0 [--transport ws]
//
// js2p is loaded from <repo>/.peers/js/node_modules/js2p (installed by
// scripts/setup-peers.sh), or from $RS2P_JS2P if set.
//
// stdout carries only protocol lines: console.log/info/debug (which js2p
// uses for its own messages) are redirected to stderr.
'use strict';

const path = require('path');
const util = require('util');
const net = require('net');
const readline = require('readline');

// ------------------------------------------------ stdout is for protocol only
const toStderr = (...a) => { process.stderr.write(util.format(...a) + '\n'); };
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(...a) {
    toStderr('[js2p_node]', ...a);
}

// ------------------------------------------------ error accounting
// js2p catches exceptions in its frame handler and in send() itself (pushes
// them onto socket.exceptions and destroys the connection); anything that
// escapes (e.g. thrown from socket callbacks, PROTOCOL.md section 11) would
// kill the process, so it is caught and counted here instead.
let uncaught = 0;
let lastError = null;
process.on('uncaughtException', (err) => {
    uncaught += 1;
    lastError = `uncaught: ${err && err.stack ? err.stack : String(err)}`;
    log('uncaught exception (counted, node keeps running):', err && err.stack ? err.stack : err);
});
process.on('unhandledRejection', (err) => {
    uncaught += 1;
    lastError = `unhandled rejection: ${err && err.stack ? err.stack : String(err)}`;
    log('unhandled rejection (counted):', err);
});

class BadRequest extends Error { get name() { return 'BadRequest'; } }
class NotFound extends Error { get name() { return 'NotFound'; } }

// ------------------------------------------------ options
function parseArgs(argv) {
    const opts = {
        kind: 'sync', host: '127.0.0.1', port: 0, subnet: null,
        leasing: 'on', transport: 'Plaintext', compression: null, debug: 0,
    };
    for (let i = 0; i < argv.length; i++) {
        let a = argv[i];
        let val;
        const eq = a.indexOf('=');
        if (a.startsWith('--') && eq > 0) {
            val = a.slice(eq + 1);
            a = a.slice(0, eq);
        }
        const next = () => (val !== undefined ? val : argv[++i]);
        switch (a) {
            case '--kind': opts.kind = next(); break;
            case '--host': opts.host = next(); break;
            case '--port': opts.port = parseInt(next(), 10); break;
            case '--subnet': opts.subnet = next(); break;
            case '--leasing': opts.leasing = next(); break;
            case '--transport': opts.transport = next(); break;
            case '--compression': opts.compression = next(); break;
            case '--debug': opts.debug = parseInt(next(), 10); break;
            default: throw new BadRequest(`unknown argument ${a}`);
        }
    }
    if (!['mesh', 'sync'].includes(opts.kind)) throw new BadRequest('--kind must be mesh or sync');
    if (!['on', 'off', 'omit'].includes(opts.leasing)) throw new BadRequest('--leasing must be on, off or omit');
    if (!['Plaintext', 'SSL', 'ws'].includes(opts.transport)) throw new BadRequest('--transport must be Plaintext, SSL or ws');
    if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new BadRequest('bad --port');
    return opts;
}

// ------------------------------------------------ JSON <-> js2p values
const utf8 = new util.TextDecoder('utf-8', { fatal: true });

function toJson(v) {
    if (v === null || v === undefined) return null;
    if (typeof v === 'string' || typeof v === 'boolean') return v;
    if (typeof v === 'number') return v; // NaN/Infinity become null in JSON
    if (typeof v === 'bigint') return Number(v);
    if (Buffer.isBuffer(v) || v instanceof Uint8Array) return { $bin: Buffer.from(v).toString('hex') };
    if (Array.isArray(v)) return v.map(toJson);
    if (v && typeof v.toJSNumber === 'function') return v.toJSNumber(); // big-integer
    if (typeof v === 'object') {
        const out = {};
        for (const k of Object.keys(v)) out[k] = toJson(v[k]); // keys are already text in JS
        return out;
    }
    return { $repr: String(v) };
}

function fromJson(v) {
    if (Array.isArray(v)) return v.map(fromJson);
    if (v && typeof v === 'object') {
        const ks = Object.keys(v);
        if (ks.length === 1 && ks[0] === '$bin') return Buffer.from(v.$bin, 'hex');
        const out = {};
        for (const k of ks) out[k] = fromJson(v[k]);
        return out;
    }
    // Note: JSON numbers become JS numbers; 1.0 is indistinguishable from 1
    // and js2p (msgpack-lite) sends integral numbers as ints.
    return v;
}

function keyOut(k) {
    if (Buffer.isBuffer(k)) {
        try { return utf8.decode(k); } catch (e) { return { $bin: k.toString('hex') }; }
    }
    if (typeof k === 'string') return k;
    return toJson(k);
}

function idText(x) {
    if (x === null || x === undefined) return null;
    if (Buffer.isBuffer(x)) return x.toString('utf8');
    return String(x);
}

function keyIn(v) {
    if (typeof v === 'string') return v;
    if (v && typeof v === 'object' && Object.keys(v).length === 1 && typeof v.$bin === 'string') {
        return Buffer.from(v.$bin, 'hex');
    }
    throw new BadRequest('key must be a string or {"$bin": hex}');
}

// js2p stores data under the UTF-8 decoding of the key Buffer (sync.js does
// `new Buffer(key)` and then uses it as a property name).
function propOf(key) {
    return Buffer.from(key).toString();
}

function errorObj(e) {
    if (e instanceof Error) return { kind: e.name || (e.constructor && e.constructor.name) || 'Error', message: e.message };
    return { kind: typeof e, message: String(e) };
}

// ------------------------------------------------ start-up
function freePort(host) {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.on('error', reject);
        srv.listen(0, host, () => {
            const port = srv.address().port;
            srv.close(() => resolve(port));
        });
    });
}

function loadJs2p() {
    const where = process.env.RS2P_JS2P ||
        path.join(__dirname, '..', '..', '.peers', 'js', 'node_modules', 'js2p');
    return require(where);
}

async function start(opts) {
    const js2p = loadJs2p();
    const base = js2p.base;

    // --compression: js2p keeps its preference list in the module-level
    // array js2p.base.compression (used for the handshake, the send method
    // and decompression); it is replaced in place.
    if (opts.compression !== null) {
        const wanted = opts.compression.split(',').map((s) => s.trim()).filter((s) => s && s !== 'none');
        const avail = base.compression.slice();
        const list = [];
        for (const name of wanted) {
            if (!['snappy', 'zlib', 'gzip', 'bz2', 'lzma'].includes(name)) throw new Error(`unknown compression method ${name}`);
            const flag = base.flags[name];
            if (!avail.includes(flag)) throw new Error(`compression ${name} is not available in js2p here`);
            list.push(flag);
        }
        base.compression.splice(0, base.compression.length, ...list);
    }

    const port = opts.port || await freePort(opts.host);
    let sock;
    if (opts.kind === 'mesh') {
        const prot = new base.Protocol(opts.subnet || 'mesh', opts.transport);
        sock = new js2p.mesh.MeshSocket(opts.host, port, prot, undefined, opts.debug);
    } else {
        const prot = new base.Protocol(opts.subnet || 'sync', opts.transport);
        // SyncSocket(addr, port, protocol, leasing, out_addr, debug_level).
        // 'omit' calls it without the leasing argument: js2p then joins
        // <subnet>1 but does not enforce leases (PROTOCOL.md 8.1).
        if (opts.leasing === 'omit') sock = new js2p.sync.SyncSocket(opts.host, port, prot);
        else sock = new js2p.sync.SyncSocket(opts.host, port, prot, opts.leasing === 'on');
    }

    // The listener was started inside the constructor; wait for it.
    await new Promise((resolve, reject) => {
        let ready = false;
        sock.incoming.on('error', (err) => {
            if (!ready) reject(err);
            else {
                uncaught += 1;
                lastError = `server error: ${err}`;
                log('server error:', err);
            }
        });
        sock.incoming.once('listening', () => { ready = true; resolve(); });
    });
    return { js2p, base, sock, port };
}

// ------------------------------------------------ commands
function makeDriver(opts, st) {
    const { base, sock, port } = st;
    let events = [];
    const compNames = {};
    for (const n of ['snappy', 'zlib', 'gzip']) compNames[base.flags[n]] = n;

    if (opts.kind === 'sync') {
        // sync.js: emit('update', this, key, new_data, new_meta) with
        // new_meta = metatuple {owner, timestamp}; emit('delete', this, key).
        // The key is a Buffer for local writes and whatever the wire carried
        // (Buffer for bin, string for str) for remote ones.
        sock.on('update', (s, key, value, meta) => {
            events.push({
                event: 'update', key: keyOut(key), value: toJson(value),
                owner: idText(meta && meta.owner), timestamp: toJson(meta && meta.timestamp),
            });
        });
        sock.on('delete', (s, key) => { events.push({ event: 'delete', key: keyOut(key) }); });
    }

    // js2p pushes the exceptions it catches (frame handling, send) onto
    // sock.exceptions and drops the connection; hook the push to remember
    // the latest one.
    if (Array.isArray(sock.exceptions)) {
        sock.exceptions.push = function (...items) {
            for (const e of items) {
                lastError = `handler: ${e && e.stack ? e.stack : String(e)}`;
                log('js2p caught an exception (connection dropped):', lastError);
            }
            return Array.prototype.push.apply(this, items);
        };
    }

    function info() {
        return {
            id: idText(sock.id), port, protocol_id: idText(sock.protocol.id),
            impl: 'js2p', kind: opts.kind, host: opts.host, transport: opts.transport,
            compression: base.compression.map((c) => compNames[c] || c),
        };
    }

    function connAlive(c) {
        const s = c.sock;
        if (!s) return false;
        if (typeof s.destroyed === 'boolean') return !s.destroyed; // net/tls
        if (typeof s.readyState === 'number') return s.readyState <= 1; // nodejs-websocket
        return true;
    }

    function peers() {
        // routing_table is a Map keyed by the id *object* (string, or a new
        // Buffer per handshake for bin ids, J7), so one connection can
        // appear under several keys: report each connection once.
        const seen = new Set();
        const out = [];
        for (const [key, c] of sock.routing_table) {
            if (seen.has(c)) continue;
            seen.add(c);
            const addr = c.addr;
            out.push({
                id: idText(key),
                addr: addr && addr.length >= 2 ? [toJson(addr[0]), toJson(addr[1])] : null,
                outgoing: !!c.outgoing,
                alive: connAlive(c),
            });
        }
        return { peers: out, awaiting: sock.awaiting_ids.length, entries: sock.routing_table.size };
    }

    const needSync = new Set(['set', 'del', 'delta', 'get', 'keys', 'len', 'dump', 'events']);

    function handle(req) {
        const op = req.op;
        if (needSync.has(op) && opts.kind !== 'sync') throw new BadRequest(`op ${op} needs --kind sync`);
        switch (op) {
            case 'info': return info();
            case 'connect': {
                const host = req.host || '127.0.0.1';
                if (!Number.isInteger(req.port)) throw new BadRequest('connect needs an integer port');
                const id = req.id === undefined || req.id === null ? undefined : fromJson(req.id);
                const r = sock.connect(host, req.port, id);
                return { result: r === undefined ? null : toJson(r) };
            }
            case 'peers': return peers();
            case 'send': {
                const packets = (req.packets || []).map(fromJson);
                sock.send(packets);
                return {};
            }
            case 'whisper': {
                const packets = (req.packets || []).map(fromJson);
                let conn = null;
                for (const [key, c] of sock.routing_table) {
                    if (idText(key) === req.to) { conn = c; break; }
                }
                if (!conn) throw new NotFound(`no routing-table entry for id ${req.to}`);
                conn.send(base.flags.whisper, [base.flags.whisper, ...packets]);
                return {};
            }
            case 'recv': {
                const messages = [];
                while (sock.queue.length) {
                    const m = sock.recv();
                    messages.push({ sender: idText(m.sender), time: toJson(m.time), packets: toJson(m.packets) });
                }
                return { messages };
            }
            case 'set': sock.set(keyIn(req.key), fromJson(req.value)); return {};
            case 'del': sock.del(keyIn(req.key)); return {};
            case 'delta': sock.apply_delta(keyIn(req.key), fromJson(req.delta)); return {};
            case 'get': {
                // not sock.get(): it returns the fallback for falsy values
                const p = propOf(keyIn(req.key));
                if (Object.prototype.hasOwnProperty.call(sock.data, p)) return { found: true, value: toJson(sock.data[p]) };
                return { found: false, value: null };
            }
            // keys/len/dump read the data table directly: js2p's keys()
            // skips keys whose value is falsy.
            case 'keys': return { keys: Object.keys(sock.data) };
            case 'len': return { len: Object.keys(sock.data).length };
            case 'dump': {
                const items = Object.keys(sock.data).map((k) => {
                    const meta = sock.metadata[k];
                    return [k, toJson(sock.data[k]), {
                        owner: meta ? idText(meta.owner) : null,
                        timestamp: meta ? toJson(meta.timestamp) : null,
                    }];
                });
                return { items };
            }
            case 'events': { const ev = events; events = []; return { events: ev }; }
            case 'stats': {
                const exc = sock.exceptions || [];
                return { errors: exc.length + uncaught, last_error: lastError, exceptions: exc.length };
            }
            default: throw new BadRequest(`unknown op ${JSON.stringify(op)}`);
        }
    }
    return { handle, info };
}

// ------------------------------------------------ main
async function main() {
    let opts;
    let st;
    try {
        opts = parseArgs(process.argv.slice(2));
        st = await start(opts);
    } catch (e) {
        log('start-up failed:', e && e.stack ? e.stack : e);
        emit({ event: 'error', error: errorObj(e) });
        process.exit(2);
    }
    const drv = makeDriver(opts, st);
    const info = drv.info();
    emit({ event: 'ready', id: info.id, host: opts.host, port: info.port, protocol_id: info.protocol_id });
    log('ready', JSON.stringify(info));

    let closing = false;
    function shutdown() {
        if (closing) return;
        closing = true;
        try { st.sock.close(); } catch (e) { log('close:', e); }
        // give destroy()/end() a moment, then go
        setTimeout(() => process.exit(0), 50);
    }

    const rl = readline.createInterface({ input: process.stdin, terminal: false });
    rl.on('line', (line) => {
        if (closing) return;
        line = line.trim();
        if (!line) return;
        let reply;
        try {
            let req;
            try { req = JSON.parse(line); } catch (e) { throw new BadRequest(`invalid JSON: ${e.message}`); }
            if (!req || typeof req !== 'object' || Array.isArray(req)) throw new BadRequest('command must be a JSON object');
            if (req.op === 'close') {
                emit({ ok: true });
                shutdown();
                return;
            }
            reply = Object.assign({ ok: true }, drv.handle(req));
        } catch (e) {
            reply = { ok: false, error: errorObj(e) };
        }
        emit(reply);
    });
    rl.on('close', shutdown); // EOF on stdin
}

main();
