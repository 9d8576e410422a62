"use strict";

// A node keeps the process alive while it is open and releases it once
// closed; a node whose socket is garbage-collected stops.

const assert = require('assert');
const path = require('path');
const { spawn } = require('child_process');
const readline = require('readline');
const { waitFor, closeAll } = require('./helpers.js');
const { sync } = require('rs2p');

/** Runs a fixture; resolves with its exit code and stdout lines. */
function run(fixture, args, on_line) {
    const child = spawn(process.execPath, [...args, path.join(__dirname, 'fixtures', fixture)],
                        { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines = [];
    readline.createInterface({ input: child.stdout }).on('line', (l) => {
        lines.push(l);
        if (on_line) {
            on_line(l);
        }
    });
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, lines })));
    return { child, exited };
}

/** Resolves with the fixture's result, or kills it and rejects after `ms`. */
function within(ms, { child, exited }) {
    let timer;
    const timeout = new Promise((resolve, reject) => {
        timer = setTimeout(() => {
            child.kill('SIGKILL');
            reject(new Error(`the child process did not exit within ${ms} ms`));
        }, ms);
    });
    return Promise.race([exited, timeout]).finally(() => clearTimeout(timer));
}

describe('node lifecycle', function () {
    this.timeout(30000);
    let peer;
    afterEach(() => closeAll(peer));

    it('an open node keeps the process alive; once closed, the process exits by itself', async function () {
        let port;
        const proc = run('until_closed.js', [], (l) => {
            if (port === undefined) {
                port = JSON.parse(l).port;
            }
        });
        await waitFor('the child to start', () => port !== undefined, 15000);
        peer = new sync.SyncSocket('127.0.0.1', 0);
        peer.connect('127.0.0.1', port);
        // The child writes once we are connected: it is still running.
        await waitFor("the child's key", () => peer.get('hello') === 'from the child', 15000);
        peer.set('bye', 1);
        const { code, signal } = await within(15000, proc);
        assert.strictEqual(signal, null);
        assert.strictEqual(code, 0);
        await waitFor('the child to leave the routing table', () => peer.routing_table.size === 0);
    });

    it('a garbage-collected socket stops its node', async function () {
        const { code, lines } = await within(20000, run('collected.js', ['--expose-gc']));
        assert.deepStrictEqual(lines, ['stopped']);
        assert.strictEqual(code, 0);
    });
});
