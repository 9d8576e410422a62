"use strict";

// js2p 0.7's SyncSocket tutorial (docs/javascript/tutorial/sync.rst), with
// only the require changed: every snippet runs as written and does what the
// tutorial says.

const assert = require('assert');
const { waitFor, nextEvent, closeAll } = require('./helpers.js');

describe('the js2p SyncSocket tutorial, on rs2p', function () {
    this.timeout(30000);
    let sock, peer, a, b;

    afterEach(() => closeAll(sock, peer, a, b));

    it('runs as written', async function () {
        // > const sync = require('js2p').sync;
        const sync = require('rs2p').sync;
        // "You can override the last restriction by constructing with
        // leasing set to false": leasing before the protocol.
        sock = new sync.SyncSocket('', 4444, false);
        assert.strictEqual(sock.leasing, false);
        assert.strictEqual(sock.protocol.subnet, 'sync0');
        assert.strictEqual(sock.protocol.encryption, 'Plaintext');
        assert.strictEqual(sock.addr[1], 4444);

        // A second node, so that changes also come from the network.
        peer = new sync.SyncSocket('127.0.0.1', 0, false);
        peer.connect(...sock.addr);
        await nextEvent(sock, 'connect');

        // The tutorial's event snippets, with its console.log recorded.
        const lines = [];
        const console = { log: (line) => lines.push(line) };
        const updates = [];
        const deletes = [];
        sock.on('update', (conn, key, new_data, meta) => {
            // conn is a reference to the socket
            console.log(`${key} was updated to have value ${new_data}`);
            console.log(`This change was made by ${meta.owner} at unix time ${meta.timestamp}`);
            updates.push({ conn, key, new_data, meta });
        });
        sock.on('delete', (conn, key) => {
            console.log(`The association with key ${key} was deleted`);
            deletes.push({ conn, key });
        });

        // get: null with a null fallback, undefined without one.
        let foo = sock.get('test key', null);  // Returns null if there is nothing at that key
        let bar = sock.get('test key');        // Returns undefined if there is nothing at that key
        assert.strictEqual(foo, null);
        assert.strictEqual(bar, undefined);

        // set
        const before = Math.floor(Date.now() / 1000);
        sock.set('test key', 'value');
        sock.set('测试', 'test');
        assert.strictEqual(sock.get('test key'), 'value');
        assert.strictEqual(sock.get('测试'), 'test');
        await waitFor('the peer to hold both keys',
                      () => peer.get('test key') === 'value' && peer.get('测试') === 'test');

        // "Keys are automatically translated to a Buffer"
        const keys = [];
        for (let k of sock.keys()) {
            keys.push(k);
        }
        assert.ok(keys.every((k) => Buffer.isBuffer(k)), 'keys are Buffers');
        assert.deepStrictEqual(keys.map(String).sort(), ['test key', '测试'].sort());
        assert.strictEqual(sock.get(Buffer.from('测试')), 'test', 'a Buffer key reads the same value');

        // The 'update' event, for each set, with meta.owner and meta.timestamp.
        await waitFor('two update events', () => updates.length >= 2);
        const u = updates.find((x) => String(x.key) === '测试');
        assert.strictEqual(u.conn, sock);
        assert.ok(Buffer.isBuffer(u.key));
        assert.strictEqual(u.new_data, 'test');
        assert.strictEqual(u.meta.owner, sock.id);
        assert.ok(u.meta.timestamp >= before && u.meta.timestamp <= Math.floor(Date.now() / 1000) + 1,
                  `timestamp ${u.meta.timestamp} is now`);
        assert.ok(lines.includes('测试 was updated to have value test'), lines.join('\n'));
        assert.ok(lines.includes(`This change was made by ${sock.id} at unix time ${u.meta.timestamp}`),
                  lines.join('\n'));

        // A change made by another node: its id is the owner.
        peer.set('remote', 'from the peer');
        await waitFor('the remote update', () => updates.some((x) => String(x.key) === 'remote'));
        assert.strictEqual(updates.find((x) => String(x.key) === 'remote').meta.owner, peer.id);

        // del: 'test' was never set, so there is nothing to clear (no
        // error); a key that is there is deleted everywhere.
        sock.del('test');
        assert.strictEqual(sock.del('test'), false);
        assert.strictEqual(sock.del('test key'), true);
        assert.strictEqual(sock.get('test key'), undefined);
        await waitFor('the delete event', () => deletes.length === 1);
        assert.strictEqual(deletes[0].conn, sock);
        assert.ok(Buffer.isBuffer(deletes[0].key));
        assert.strictEqual(String(deletes[0].key), 'test key');
        assert.ok(lines.includes('The association with key test key was deleted'));
        await waitFor('the peer to lose the key', () => peer.get('test key') === undefined);

        // update: a set per key.
        sock.update({ a: 1 });
        assert.strictEqual(sock.get('a'), 1);
        await waitFor('the peer to get a', () => peer.get('a') === 1);
    });

    it('pop and popitem throw when leasing and the key is not ours', async function () {
        const sync = require('rs2p').sync;
        a = new sync.SyncSocket('127.0.0.1', 0);
        b = new sync.SyncSocket('127.0.0.1', 0);
        // Of two writes in the same second the smaller id's wins: the owner
        // here is the node with the smaller one, so that b's writes are
        // refused whatever the clock.
        if (a.id > b.id) {
            [a, b] = [b, a];
        }
        assert.strictEqual(a.leasing, true);
        b.connect(...a.addr);
        await nextEvent(a, 'connect');

        a.set('owned by a', 'x');
        await waitFor('b to see the key', () => b.get('owned by a') === 'x');

        // "This will raise an Error if another node has set this value already"
        assert.throws(() => b.set('owned by a', 'y'), (e) => e instanceof Error && e.code === 'lease_held');
        assert.throws(() => b.pop('owned by a'), (e) => e instanceof Error && e.code === 'lease_held');
        assert.throws(() => b.popitem(), (e) => e instanceof Error && e.code === 'lease_held');
        assert.strictEqual(b.get('owned by a'), 'x', 'a refused pop leaves the key');

        // Its owner may pop it; then anyone may set it.
        assert.strictEqual(a.pop('owned by a'), 'x');
        assert.strictEqual(a.pop('owned by a', 'gone'), 'gone');
        await waitFor('b to see the delete', () => b.get('owned by a') === undefined);
        b.set('owned by a', 'now b');
        assert.deepStrictEqual(b.popitem().map(String), ['owned by a', 'now b']);
        assert.strictEqual(b.popitem(), undefined);
    });
});
