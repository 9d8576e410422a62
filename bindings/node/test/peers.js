"use strict";

// Drives other implementations' nodes from the tests, over JSON lines:
// real py2p and js2p nodes through the repository's drivers
// (tests/peers/*_node.*, installed by scripts/setup-peers.sh into .peers/),
// and `rs2p node --json`.

const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');
const { spawn } = require('child_process');
const { ROOT } = require('./helpers.js');

const PY = path.join(ROOT, '.peers/py/bin/python');
const JS2P = path.join(ROOT, '.peers/js/node_modules/js2p');

/** True when scripts/setup-peers.sh installed py2p and js2p. */
function referencesInstalled() {
    return fs.existsSync(PY) && fs.existsSync(JS2P);
}

/** The rs2p command: $RS2P_BIN, else the workspace's debug build. */
function rs2pBin() {
    if (process.env.RS2P_BIN) {
        return process.env.RS2P_BIN;
    }
    const target = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
    return path.join(target, 'debug', 'rs2p');
}

const START_MS = 30000;
const REPLY_MS = 20000;

/** One node in a child process, spoken to in JSON lines. */
class LinePeer {
    constructor(name, cmd, args, ready_event) {
        this.name = name;
        this.pending = [];
        this.stderr = [];
        this.child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PYTHONUNBUFFERED: '1' } });
        this.child.stderr.on('data', (d) => {
            this.stderr.push(d);
            if (this.stderr.length > 200) {
                this.stderr.shift();
            }
        });
        this.exited = new Promise((resolve) => this.child.on('exit', (code) => {
            for (const p of this.pending.splice(0)) {
                p.reject(new Error(`${this.name} exited (${code}) before replying\n${this.log()}`));
            }
            resolve(code);
        }));
        this.ready = new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`${this.name} did not start\n${this.log()}`)), START_MS);
            readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
                let msg;
                try {
                    msg = JSON.parse(line);
                }
                catch (e) {
                    return;
                }
                if (msg.event === ready_event) {
                    clearTimeout(timer);
                    resolve(msg);
                }
                else if (msg.event === 'error' && 'error' in msg) {
                    clearTimeout(timer);
                    reject(new Error(`${this.name}: ${JSON.stringify(msg.error)}`));
                }
                else if ('ok' in msg) {
                    const p = this.pending.shift();
                    if (p) {
                        clearTimeout(p.timer);
                        p.resolve(msg);
                    }
                }
            });
        });
    }

    log() {
        return Buffer.concat(this.stderr).toString().split('\n').slice(-30).join('\n');
    }

    /** Sends one request; resolves with its reply (rejects when not ok, unless `allow_fail`). */
    request(req, allow_fail) {
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`${this.name}: no reply to ${JSON.stringify(req)}`)), REPLY_MS);
            this.pending.push({
                timer,
                resolve: (msg) => (msg.ok || allow_fail ? resolve(msg)
                                   : reject(new Error(`${this.name}: ${JSON.stringify(req)} failed: ${JSON.stringify(msg.error)}`))),
                reject
            });
            this.child.stdin.write(JSON.stringify(req) + '\n');
        });
    }

    async get(key) {
        const r = await this.request({ op: 'get', key });
        return r.found ? r.value : undefined;
    }

    async close() {
        if (this.child.exitCode === null && this.child.signalCode === null) {
            this.child.stdin.end();
            const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
            await this.exited;
            clearTimeout(timer);
        }
    }
}

/** A py2p or js2p node through tests/peers/<impl>_node.*; `port` once ready. */
async function reference(impl, kind = 'sync', extra = []) {
    const args = ['--kind', kind, '--host', '127.0.0.1', ...extra];
    const peer = impl === 'py2p'
        ? new LinePeer('py2p', PY, [path.join(ROOT, 'tests/peers/py2p_node.py'), ...args], 'ready')
        : new LinePeer('js2p', process.execPath, [path.join(ROOT, 'tests/peers/js2p_node.js'), ...args], 'ready');
    const ready = await peer.ready;
    peer.id = ready.id;
    peer.port = ready.port;
    return peer;
}

/** An `rs2p node --json` listening on 127.0.0.1, a free port. */
async function rs2pNode(extra = []) {
    const peer = new LinePeer('rs2p', rs2pBin(), ['node', '--listen', '127.0.0.1:0', '--json', ...extra], 'listening');
    const ready = await peer.ready;
    peer.id = ready.id;
    peer.port = Number(ready.addr.split(':').pop());
    return peer;
}

/** `{"$bin": hex}`, the drivers' form of bytes. */
function bin(buf) {
    return { $bin: Buffer.from(buf).toString('hex') };
}

module.exports = { referencesInstalled, rs2pBin, reference, rs2pNode, bin, tmpdir: os.tmpdir };
