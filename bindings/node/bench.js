#!/usr/bin/env node
"use strict";

// Benchmark of this package against js2p 0.7.870, in the same run and the
// same way: three SyncSockets in this one Node.js process, on 127.0.0.1,
// linked as a triangle, plaintext, leasing on.
//
//   propagation: node A sets a key; the time until B and C have both
//     emitted 'update' for it (sequential sets; median and p99);
//   throughput: A sets K keys in a loop; sets/s accepted locally (the loop),
//     and sets/s to convergence (until B and C have emitted 'update' for
//     all K keys).
//
// The figures are what a Node.js program using either library sees: for
// js2p all protocol work shares the program's event loop; for rs2p it runs
// on the addon's threads and only the events come to the loop.
//
//   node bench.js [--quick] [--runs N] [--write]
//
// --write puts the table into docs/benchmarks.md, in its own section
// (between the node-package markers; appended when absent).

const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const { execSync } = require('child_process');

const ROOT = path.resolve(__dirname, '..', '..');
const JS2P = path.join(ROOT, '.peers/js/node_modules/js2p/js_src');

const args = process.argv.slice(2);
const QUICK = args.includes('--quick');
const WRITE = args.includes('--write');
const RUNS = Number((args[args.indexOf('--runs') + 1] || '').match(/^\d+$/) ? args[args.indexOf('--runs') + 1] : (QUICK ? 1 : 3));
const LATENCY_SETS = QUICK ? 50 : 200;
const K = QUICK ? 500 : 3000;
const DEADLINE_MS = 120000;

function quiet(fn) {
    const { log, warn } = console;
    console.log = () => {};
    console.warn = () => {};
    try {
        return fn();
    }
    finally {
        console.log = log;
        console.warn = warn;
    }
}

function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => {
            const port = s.address().port;
            s.close(() => resolve(port));
        });
    });
}

function waitFor(what, cond, ms = DEADLINE_MS) {
    const deadline = Date.now() + ms;
    return new Promise((resolve, reject) => {
        const tick = () => {
            if (cond()) {
                resolve();
            }
            else if (Date.now() > deadline) {
                reject(new Error(`timed out waiting for ${what}`));
            }
            else {
                setImmediate(tick);
            }
        };
        tick();
    });
}

const IMPLS = {
    rs2p: {
        label: 'rs2p package',
        async start() {
            const { sync } = require('./index.js');
            return [0, 1, 2].map(() => new sync.SyncSocket('127.0.0.1', 0));
        },
        has_peer: (s, id) => s.routing_table.has(id)
    },
    js2p: {
        label: 'js2p 0.7.870',
        async start() {
            const sync = quiet(() => require(path.join(JS2P, 'sync.js')));
            const nodes = [];
            for (let i = 0; i < 3; i++) {
                const port = await freePort();
                nodes.push(quiet(() => new sync.SyncSocket('127.0.0.1', port)));
            }
            return nodes;
        },
        has_peer: (s, id) => [...s.routing_table.keys()].some((k) => String(k) === id)
    }
};

function percentile(sorted, p) {
    const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p / 100 * sorted.length) - 1));
    return sorted[i];
}

function median(xs) {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.floor((s.length - 1) / 2)];
}

async function runOnce(name, run) {
    const impl = IMPLS[name];
    const nodes = await impl.start();
    const [a, b, c] = nodes;
    const { log } = console;
    if (name === 'js2p') {
        console.log = () => {};
    }
    try {
        b.connect('127.0.0.1', a.addr[1]);
        c.connect('127.0.0.1', a.addr[1]);
        c.connect('127.0.0.1', b.addr[1]);
        await waitFor('a triangle', () => nodes.every((n) => nodes.every((m) => m === n || impl.has_peer(n, m.id))), 30000);

        // Propagation.
        const arrived = new Map();
        const watch = (n) => n.on('update', (conn, key) => {
            const k = String(key);
            if (k.startsWith('lat') || k.startsWith('thr')) {
                if (!arrived.has(k)) {
                    arrived.set(k, []);
                }
                arrived.get(k).push(process.hrtime.bigint());
            }
        });
        watch(b);
        watch(c);
        const lat = [];
        for (let i = 0; i < LATENCY_SETS; i++) {
            const key = `lat-${run}-${i}`;
            const t0 = process.hrtime.bigint();
            a.set(key, 'valueXYZ');
            await waitFor(`${key} on both`, () => (arrived.get(key) || []).length >= 2, 30000);
            const last = arrived.get(key).reduce((x, y) => (y > x ? y : x));
            lat.push(Number(last - t0) / 1e6);
        }
        lat.sort((x, y) => x - y);

        // Throughput.
        let got = 0;
        const count = (conn, key) => {
            if (String(key).startsWith('thr')) {
                got++;
            }
        };
        b.on('update', count);
        c.on('update', count);
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < K; i++) {
            a.set(`thr-${run}-${i}`, 'valueXYZ');
        }
        const t1 = process.hrtime.bigint();
        await waitFor(`all ${K} keys on both`, () => got >= 2 * K);
        const t2 = process.hrtime.bigint();
        return {
            p50_ms: percentile(lat, 50),
            p99_ms: percentile(lat, 99),
            local_rate: K / (Number(t1 - t0) / 1e9),
            conv_rate: K / (Number(t2 - t0) / 1e9),
            conv_s: Number(t2 - t0) / 1e9
        };
    }
    finally {
        for (const n of nodes) {
            quiet(() => n.close());
        }
        console.log = log;
    }
}

function fmt(x, unit) {
    const digits = x >= 100 ? 0 : x >= 10 ? 1 : x >= 1 ? 2 : 3;
    return `${x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })} ${unit}`;
}

function machine() {
    let commit = 'unknown';
    try {
        commit = execSync('git rev-parse --short HEAD', { cwd: ROOT }).toString().trim();
        // The file this writes does not count.
        if (execSync("git status --porcelain -- . ':!docs/benchmarks.md'", { cwd: ROOT }).toString().trim()) {
            commit += ' + uncommitted changes';
        }
    }
    catch (e) { /* not a checkout */ }
    const profile = `${require('./native.js').buildProfile()} build`;
    return { commit, profile, cpus: os.cpus().length, cpu: (os.cpus()[0] || {}).model || 'unknown', node: process.version };
}

async function main() {
    const load_before = os.loadavg().map((x) => x.toFixed(2)).join(' ');
    const results = {};
    for (const name of Object.keys(IMPLS)) {
        if (name === 'js2p' && !fs.existsSync(JS2P)) {
            console.error('js2p is not installed (scripts/setup-peers.sh): skipped');
            continue;
        }
        const runs = [];
        for (let r = 0; r < RUNS; r++) {
            runs.push(await runOnce(name, r));
            process.stderr.write(`${IMPLS[name].label}: run ${r + 1}/${RUNS} ${JSON.stringify(runs[r])}\n`);
        }
        results[name] = { runs };
        for (const k of Object.keys(runs[0])) {
            results[name][k] = median(runs.map((x) => x[k]));
        }
    }
    const m = machine();
    const load_after = os.loadavg().map((x) => x.toFixed(2)).join(' ');
    const rs = results.rs2p;
    const js = results.js2p;
    const row = (what, key, unit, better) => {
        const r = rs ? fmt(rs[key], unit) : '–';
        const j = js ? fmt(js[key], unit) : '–';
        const ratio = rs && js ? `${(better === 'lower' ? js[key] / rs[key] : rs[key] / js[key]).toFixed(1)}×` : '–';
        return `| ${what} | ${r} | ${j} | ${ratio} |`;
    };
    const table = [
        '| scenario (3 nodes, one process) | rs2p package | js2p 0.7.870 | package vs js2p |',
        '|---|--:|--:|--:|',
        row(`propagation p50 (${LATENCY_SETS} sets)`, 'p50_ms', 'ms', 'lower'),
        row(`propagation p99 (${LATENCY_SETS} sets)`, 'p99_ms', 'ms', 'lower'),
        row(`sets/s accepted locally, K=${K.toLocaleString('en-US')}`, 'local_rate', 'sets/s', 'higher'),
        row(`sets/s to convergence, K=${K.toLocaleString('en-US')}`, 'conv_rate', 'sets/s', 'higher'),
        row(`time until both peers emitted 'update' for all K keys`, 'conv_s', 's', 'lower')
    ].join('\n');
    const date = new Date().toISOString().replace('T', ' ').slice(0, 16) + ' UTC';
    const range = (r, key, unit) => {
        const xs = r.runs.map((x) => x[key]);
        return `${fmt(Math.min(...xs), unit)} to ${fmt(Math.max(...xs), unit)}`;
    };
    const spread = Object.keys(results).map((name) =>
        `${IMPLS[name].label}: sets/s to convergence ${range(results[name], 'conv_rate', 'sets/s')}, propagation p50 ${range(results[name], 'p50_ms', 'ms')}`).join('; ');
    const busy = Number(load_before.split(' ')[0]) > m.cpus
        ? ' The machine was busy (its load average above its core count): the package\'s pipeline spans several threads, which then wait for the CPU, so its figures vary more between runs than js2p\'s single-threaded ones.'
        : '';
    const section = [
        '<!-- node-package:begin (written by bindings/node/bench.js --write) -->',
        '## Node.js package (bindings/node) against js2p',
        '',
        `Generated by \`node bindings/node/bench.js${args.length ? ' ' + args.join(' ') : ''}\` on ${date}, median of ${RUNS} run(s); rs2p ${m.commit} (${m.profile} of the addon), Node ${m.node}, ${m.cpus} × ${m.cpu}; load average ${load_before} before, ${load_after} after (1/5/15 min).`,
        '',
        'Three SyncSockets of one implementation in one Node.js process, on 127.0.0.1, linked as a triangle, plaintext, leasing on, 8-byte values. Propagation: node A sets a key, the time until the other two have both emitted `update` for it (sets one after the other). Throughput: A sets K keys in a loop; the loop\'s rate, and the rate until both other nodes have emitted `update` for every key. These are the figures a Node.js program sees: with js2p all protocol work shares the program\'s event loop; with the package it runs on the addon\'s threads and only the events come to the loop. (`rs2p bench` above runs one process per node and measures other things; it rewrites this file without this section, so run this one after it.)',
        '',
        table,
        '',
        `Range over the runs: ${spread}.${busy}`,
        '',
        'Regenerate: `bindings/node/build.sh && node bindings/node/bench.js --write` (needs `scripts/setup-peers.sh` for js2p).',
        '<!-- node-package:end -->'
    ].join('\n');
    console.log(section);
    if (WRITE) {
        const file = path.join(ROOT, 'docs', 'benchmarks.md');
        const text = fs.readFileSync(file, 'utf8');
        const re = /<!-- node-package:begin[\s\S]*?<!-- node-package:end -->/;
        const out = re.test(text) ? text.replace(re, section) : `${text.replace(/\n*$/, '\n')}\n${section}\n`;
        fs.writeFileSync(file, out);
        console.error(`wrote ${file}`);
    }
    process.exit(0);
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
