#!/usr/bin/env node
// Benchmark adapter: one js2p 0.7.870 SyncSocket speaking the line protocol
// of `rs2p bench-node` (see docs/benchmarks.md), so that `rs2p bench`
// drives js2p exactly as it drives rs2p and py2p.
//
//     node crates/rs2p-bench/adapters/js2p_adapter.js --host 127.0.0.1 --port 0
//
// stdout: events, one JSON object per line, each with "ev" and "t"
// (microseconds since the Unix epoch: performance.timeOrigin +
// performance.now(), which has microsecond resolution; Date.now() only has
// milliseconds).  stdin: commands ("cmd"), handled in order.  js2p's own
// console output goes to stderr.
//
// js2p is loaded from <repo>/.peers/js/node_modules/js2p (installed by
// scripts/setup-peers.sh), or from $RS2P_JS2P if set.
//
// js2p keeps its dictionary in a plain object, whose size costs O(n) to
// count; the adapter counts keys itself by wrapping SyncSocket.__store (a
// key is new when the object did not have it before the store).  A burst
// runs in chunks of BURST_CHUNK sets with setImmediate() in between, so
// js2p keeps serving its sockets meanwhile.
'use strict';

const path = require('path');
const util = require('util');
const net = require('net');
const crypto = require('crypto');
const readline = require('readline');
const { performance } = require('perf_hooks');

const BURST_CHUNK = 100;

const toStderr = (...a) => { process.stderr.write(util.format(...a) + '\n'); };
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;
console.warn = toStderr;

function nowUs() {
    return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

function emit(ev, t, fields) {
    process.stdout.write(JSON.stringify(Object.assign({ ev, t }, fields || {})) + '\n');
}

function log(...a) { toStderr('[js2p_adapter]', ...a); }

let uncaught = 0;
let lastUncaught = null;
process.on('uncaughtException', (e) => {
    uncaught += 1;
    lastUncaught = String(e && e.stack ? e.stack : e);
    log('uncaught exception (the node keeps running):', lastUncaught);
});

function parseArgs(argv) {
    const o = { host: '127.0.0.1', port: 0 };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === '--host') o.host = argv[++i];
        else if (a === '--port') o.port = parseInt(argv[++i], 10);
        else throw new Error(`unknown argument ${a}`);
    }
    return o;
}

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

function text(k) {
    if (Buffer.isBuffer(k)) return k.toString('utf8');
    return String(k);
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const where = process.env.RS2P_JS2P ||
        path.join(__dirname, '..', '..', '..', '.peers', 'js', 'node_modules', 'js2p');
    const js2p = require(where);
    let js2pVersion = '?';
    try { js2pVersion = require(path.join(where, 'package.json')).version; } catch (e) { /* keep '?' */ }
    const base = js2p.base;
    const port = opts.port || await freePort(opts.host);
    const sock = new js2p.sync.SyncSocket(opts.host, port, new base.Protocol('sync', 'Plaintext'), true);
    await new Promise((resolve, reject) => {
        sock.incoming.once('error', reject);
        sock.incoming.once('listening', resolve);
    });
    sock.incoming.on('error', (e) => log('server error:', e));

    let trace = null;
    let watch = null; // {target, step, next}
    let updates = 0;
    let keys = 0;

    const has = (k) => Object.prototype.hasOwnProperty.call(sock.data, k);
    const origStore = sock.__store;
    sock.__store = function (key, newData, newMeta, error) {
        const had = has(key);
        const r = origStore.call(this, key, newData, newMeta, error);
        const hasNow = has(key);
        if (!had && hasNow) keys += 1;
        else if (had && !hasNow) keys -= 1;
        return r;
    };

    function checkWatch(t) {
        if (!watch) return;
        if (keys >= watch.target) {
            emit('count', t, { n: keys });
            watch = null;
        } else if (keys >= watch.next) {
            emit('progress', t, { n: keys });
            while (watch.next <= keys) watch.next += watch.step;
        }
    }

    sock.on('update', (s, key) => {
        const t = nowUs();
        updates += 1;
        if (trace !== null) {
            const k = text(key);
            if (k.startsWith(trace)) emit('update', t, { key: k });
        }
        if (watch) checkWatch(t);
    });

    // Handshaken peers, one per connection (js2p can list one connection
    // under several ids).
    let lastPeers = null;
    const peersTimer = setInterval(() => {
        const seen = new Set();
        const addrs = [];
        for (const c of sock.routing_table.values()) {
            if (seen.has(c)) continue;
            seen.add(c);
            if (c.addr && c.addr.length >= 2) addrs.push(`${text(c.addr[0])}:${c.addr[1]}`);
        }
        addrs.sort();
        const key = JSON.stringify(addrs);
        if (key !== lastPeers) {
            lastPeers = key;
            emit('peers', nowUs(), { n: addrs.length, peers: addrs });
        }
        if (watch) checkWatch(nowUs());
    }, 20);

    function burst(prefix, count, size) {
        return new Promise((resolve) => {
            const rand = crypto.randomBytes(Math.max(0, size - 8));
            let i = 0;
            let errors = 0;
            let first = null;
            const t0 = nowUs();
            const chunk = () => {
                const end = Math.min(count, i + BURST_CHUNK);
                for (; i < end; i++) {
                    try {
                        const v = Buffer.concat([Buffer.from(String(i).padStart(8, '0')), rand]);
                        sock.set(prefix + String(i).padStart(7, '0'), v);
                    } catch (e) {
                        errors += 1;
                        if (first === null) first = String(e && e.message ? e.message : e);
                    }
                }
                if (i >= count) {
                    emit('burst_done', nowUs(), { count, t0, errors, first_error: first });
                    resolve();
                } else {
                    setImmediate(chunk);
                }
            };
            chunk();
        });
    }

    async function handle(cmd) {
        switch (cmd.cmd) {
            case 'connect': {
                const t0 = nowUs();
                sock.connect(cmd.host, cmd.port);
                emit('ack', nowUs(), { cmd: 'connect', t0 });
                return false;
            }
            case 'trace':
                trace = String(cmd.prefix);
                emit('ack', nowUs(), { cmd: 'trace' });
                return false;
            case 'watch': {
                const target = cmd.count;
                const step = Math.max(1, Math.floor(target / 20));
                watch = { target, step, next: step };
                emit('ack', nowUs(), { cmd: 'watch' });
                checkWatch(nowUs());
                return false;
            }
            case 'set': {
                const t = nowUs();
                sock.set(String(cmd.key), Buffer.from(String(cmd.value), 'utf8'));
                const tEnd = nowUs();
                emit('set', t, { key: cmd.key, t_end: tEnd });
                return false;
            }
            case 'burst':
                await burst(String(cmd.prefix), cmd.count, cmd.size);
                return false;
            case 'stats': {
                const exc = sock.exceptions || [];
                const last = exc.length ? String(exc[exc.length - 1]) : lastUncaught;
                emit('stats', nowUs(), {
                    keys, updates, peers: new Set(sock.routing_table.values()).size,
                    exceptions: exc.length + uncaught, last_exception: last, expired: 0,
                });
                return false;
            }
            case 'quit':
                return true;
            default:
                throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
        }
    }

    emit('ready', nowUs(), { impl: 'js2p', version: js2pVersion, pid: process.pid, host: opts.host, port });

    // Commands run one after another, in order.
    let chain = Promise.resolve();
    let closing = false;
    const quit = () => {
        if (closing) return;
        closing = true;
        clearInterval(peersTimer);
        try { sock.close(); } catch (e) { log('close:', e); }
        emit('bye', nowUs());
        setTimeout(() => process.exit(0), 20);
    };
    const rl = readline.createInterface({ input: process.stdin, terminal: false });
    rl.on('line', (line) => {
        line = line.trim();
        if (!line) return;
        chain = chain.then(async () => {
            if (closing) return;
            let cmd = null;
            try {
                cmd = JSON.parse(line);
                if (await handle(cmd)) quit();
            } catch (e) {
                log('command failed:', e && e.stack ? e.stack : e);
                emit('error', nowUs(), { error: String(e && e.message ? e.message : e), cmd: cmd && cmd.cmd });
            }
        });
    });
    rl.on('close', () => { chain = chain.then(quit); });
}

main().catch((e) => {
    log('start-up failed:', e && e.stack ? e.stack : e);
    emit('error', nowUs(), { error: `start-up failed: ${e}` });
    process.exit(2);
});
