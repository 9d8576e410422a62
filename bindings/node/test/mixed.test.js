"use strict";

// A mixed mesh: a node of this package, a real js2p 0.7.870 node, a real
// py2p 0.7.878 node and an `rs2p node` command hold the same dictionary;
// deletes from the package reach py2p and rs2p (js2p cannot delete: rs2p
// never sends deletes to js2p peers, whose link would break on them).
//
// Needs scripts/setup-peers.sh and `cargo build --bin rs2p`; skipped
// without them unless RS2P_REQUIRE_PEERS=1 (scripts/test-node.sh sets it).

const assert = require('assert');
const fs = require('fs');
const { waitFor, nextEvent, closeAll } = require('./helpers.js');
const { referencesInstalled, rs2pBin, reference, rs2pNode, bin } = require('./peers.js');
const { base, sync } = require('rs2p');

const WAIT = 20000;

/**
 * Resolves once check() resolves true, polling; check() may resolve a
 * string saying what is still missing.
 */
async function eventually(what, check, ms = WAIT) {
    const deadline = Date.now() + ms;
    for (;;) {
        const ok = await check();
        if (ok === true) {
            return;
        }
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${ms} ms waiting for: ${what}${ok ? ` (${ok})` : ''}`);
        }
        await new Promise((r) => setTimeout(r, 50));
    }
}

/**
 * Resolves once `peer` (a node driven over JSON lines) lists a live link
 * to each of `ids` (named by `names` in the error): it has read their
 * handshakes itself.
 */
async function linked(peer, ids, names) {
    await eventually(`${peer.name} to be linked to ${ids.map((id) => names[id]).join(' and ')}`, async () => {
        const { peers } = await peer.request({ op: 'peers' });
        const live = new Set(peers.filter((p) => p.alive !== false).map((p) => p.id));
        const missing = ids.filter((id) => !live.has(id)).map((id) => names[id]);
        return missing.length === 0 || `not yet: ${missing.join(', ')}`;
    });
}

describe('a mixed mesh: package, js2p, py2p and rs2p nodes', function () {
    this.timeout(90000);
    let pkg, js, py, rs;

    before(function () {
        const missing = !referencesInstalled() ? 'py2p/js2p (scripts/setup-peers.sh)'
            : !fs.existsSync(rs2pBin()) ? `the rs2p command (${rs2pBin()}; cargo build --bin rs2p)` : null;
        if (missing) {
            if (process.env.RS2P_REQUIRE_PEERS === '1') {
                throw new Error(`missing ${missing}`);
            }
            console.warn(`skipped: missing ${missing}`);
            this.skip();
        }
    });

    after(async function () {
        closeAll(pkg);
        await Promise.all([js, py, rs].filter(Boolean).map((p) => p.close()));
    });

    it('holds one dictionary; deletes reach py2p and rs2p', async function () {
        [js, py, rs] = await Promise.all([reference('js2p'), reference('py2p'), rs2pNode()]);
        pkg = new sync.SyncSocket('127.0.0.1', 0);
        const names = { [pkg.id]: 'the package node', [js.id]: 'js2p', [py.id]: 'py2p', [rs.id]: 'rs2p' };
        // rs2p and py2p are linked first. py2p dials the nodes of a peers
        // list it has no link to yet, so the package node's list, naming
        // rs2p, could reach py2p before rs2p's handshake and cross two
        // dials, which py2p can settle by dropping both links for a moment
        // (rs2p re-dials): a write could fall in that gap.
        await rs.request({ op: 'connect', host: '127.0.0.1', port: py.port });
        await linked(rs, [py.id], names);
        await linked(py, [rs.id], names);
        // The package node bridges js2p and the py2p-speaking nodes.
        const joined = nextEvent(pkg, 'connect');
        pkg.connect('127.0.0.1', js.port);
        pkg.connect('127.0.0.1', py.port);
        pkg.connect('127.0.0.1', rs.port);
        await joined;
        await waitFor('the package node to have three peers', () => pkg.routing_table.size === 3, WAIT);
        const kinds = [...pkg.routing_table.values()].map((c) => [c.id, c.kind]);
        assert.deepStrictEqual(new Map(kinds), new Map([[js.id, 'js2p'], [py.id, 'py2p'], [rs.id, 'rs2p']]));
        // That is not yet a mesh: the package node lists js2p and py2p as
        // soon as their handshakes arrive, and they send theirs when they
        // accept a connection, before reading ours. A write at js2p before
        // it has read the package node's handshake is broadcast to none of
        // its peers; the package node gets the key later in js2p's state
        // transfer, and keeps it without passing it on (state transfers
        // are not relayed, as in py2p and js2p), so py2p never gets it.
        // The writes wait until every node has read the package node's
        // handshake.
        for (const peer of [js, py, rs]) {
            await linked(peer, [pkg.id], names);
        }

        // One write from each.
        pkg.set('from package', { nested: [1, 'two'], bytes: Buffer.from('b') });
        pkg.set('package bytes', Buffer.from([0, 1, 2]));
        await js.request({ op: 'set', key: 'from js2p', value: 'js' });
        await py.request({ op: 'set', key: 'from py2p', value: bin([9, 9]) });
        await rs.request({ op: 'set', key: 'from rs2p', value: 256 });

        const expected = {
            'from package': { nested: [1, 'two'], bytes: Buffer.from('b') },
            'package bytes': Buffer.from([0, 1, 2]),
            'from js2p': 'js',
            'from py2p': Buffer.from([9, 9]),
            'from rs2p': 256
        };
        // How the drivers print those values (bytes as $bin; map values too).
        const wire = {
            'from package': { nested: [1, 'two'], bytes: bin('b') },
            'package bytes': bin([0, 1, 2]),
            'from js2p': 'js',
            'from py2p': bin([9, 9]),
            'from rs2p': 256
        };
        await waitFor('the package node to hold every key', () => pkg.size === 5, WAIT);
        for (const [k, v] of Object.entries(expected)) {
            assert.deepStrictEqual(pkg.get(k), v, k);
        }
        for (const peer of [js, py, rs]) {
            await eventually(`${peer.name} to hold every key`, async () => {
                for (const [k, v] of Object.entries(wire)) {
                    const got = await peer.get(k);
                    if (JSON.stringify(got) !== JSON.stringify(v)) {
                        return `${k} is ${JSON.stringify(got)}`;
                    }
                }
                return true;
            });
        }
        // Same owners everywhere: each key is leased by its writer.
        const owners = { 'from package': pkg.id, 'from js2p': js.id, 'from py2p': py.id, 'from rs2p': rs.id };
        for (const [k, owner] of Object.entries(owners)) {
            assert.strictEqual(pkg.meta(k).owner, owner, k);
        }
        const pyDump = await py.request({ op: 'dump' });
        for (const [k, , meta] of pyDump.items) {
            if (owners[k]) {
                assert.strictEqual(meta.owner, owners[k], `py2p's owner of ${k}`);
            }
        }

        // The lease holds across implementations (once the second of the
        // writes is over: within it, the smaller id may still take a key).
        const last = Math.max(...Object.keys(owners).map((k) => pkg.meta(k).timestamp));
        await waitFor('the next second', () => base.getUTC() > last, 3000);
        assert.throws(() => pkg.set('from py2p', 'mine'), (e) => e.code === 'lease_held');
        const refused = await js.request({ op: 'set', key: 'from package', value: 'js' }, true);
        assert.strictEqual(refused.ok, false, 'js2p refuses to overwrite the package\'s key');

        // Deletes from the package reach py2p and rs2p.
        const deleted = [];
        pkg.on('delete', (conn, key) => deleted.push(String(key)));
        assert.strictEqual(pkg.del('from package'), true);
        assert.strictEqual(pkg.pop('package bytes').toString('hex'), '000102');
        for (const peer of [py, rs]) {
            await eventually(`${peer.name} to lose both keys`, async () =>
                (await peer.get('from package')) === undefined && (await peer.get('package bytes')) === undefined);
        }
        assert.deepStrictEqual(deleted.sort(), ['from package', 'package bytes']);
        // A delete from rs2p reaches the package and py2p.
        await rs.request({ op: 'del', key: 'from rs2p' });
        await waitFor('the package node to lose the rs2p key', () => pkg.get('from rs2p') === undefined, WAIT);
        await eventually('py2p to lose the rs2p key', async () => (await py.get('from rs2p')) === undefined);

        // js2p keeps what was deleted elsewhere: a marker sent after the
        // deletes reaches it, the deletes never do.
        pkg.set('marker', 'after the deletes');
        await eventually('js2p to get the marker', async () => (await js.get('marker')) === 'after the deletes');
        assert.strictEqual(await js.get('from package') !== undefined, true);
        assert.strictEqual((await js.get('from rs2p')), 256);

        // Apart from that, one dictionary.
        const pkgKeys = [...pkg.keys()].map(String).sort();
        assert.deepStrictEqual(pkgKeys, ['from js2p', 'from py2p', 'marker']);
        for (const peer of [py, rs]) {
            await eventually(`${peer.name} to get the marker`, async () => (await peer.get('marker')) === 'after the deletes');
            const keys = (await peer.request({ op: 'keys' })).keys.map(String).sort();
            assert.deepStrictEqual(keys, pkgKeys, `${peer.name}'s keys`);
        }
        const jsKeys = (await js.request({ op: 'keys' })).keys.map(String).sort();
        assert.deepStrictEqual(jsKeys, [...pkgKeys, 'from package', 'from rs2p', 'package bytes'].sort());

        // No peer logged a protocol error.
        for (const peer of [js, py]) {
            const stats = await peer.request({ op: 'stats' });
            assert.strictEqual(stats.errors, 0, `${peer.name}: ${JSON.stringify(stats)}`);
        }
        assert.strictEqual(pkg.status, 'Nominal');
    });
});
