//! The browser bundle's node (src/web/bundle/rs2p.mjs: the protocol core in
//! WebAssembly with its JavaScript shell) under Node, against real rs2p
//! nodes over `ws`: no browser, a few seconds. tests/browser.rs runs the
//! same bundle in Chromium.
//!
//! Needs Node 20.10+ (its WebSocket); fails when it is missing, unless
//! RS2P_SKIP_WASM=1.

mod common;

use common::node::*;
use common::peers::*;
use rs2p::{Error, SyncConfig, SyncSocket, Transport, Value};
use serde_json::json;

/// A bundle node, or `None` when RS2P_SKIP_WASM=1 says to skip.
fn wasm_peer(opts: &PeerOpts) -> Option<RefPeer> {
    if std::env::var("RS2P_SKIP_WASM").as_deref() == Ok("1") {
        eprintln!("skipped: RS2P_SKIP_WASM=1");
        return None;
    }
    match RefPeer::try_spawn(Impl::Wasm, opts) {
        Ok(p) => Some(p),
        Err(e) => panic!("{e}\n(set RS2P_SKIP_WASM=1 to skip)"),
    }
}

fn ws_node(rt: &Rt, leasing: bool) -> SyncSocket {
    rt.sync(
        SyncConfig::new(local())
            .with_transport(Transport::Ws)
            .with_leasing(leasing),
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[test]
fn bundle_node_syncs_with_rs2p() {
    let rt = Rt::new();
    let r = ws_node(&rt, true);
    rt.block(r.set("before", "set before the bundle joined"))
        .unwrap();
    let Some(mut w) = wasm_peer(&PeerOpts::sync()) else {
        return;
    };
    assert_eq!(w.protocol_id(), r.mesh().protocol_id());
    w.connect(r.mesh().local_addr().port(), None);
    wait_for("rs2p sees the bundle node", T, || {
        rt.peer_ids(r.mesh()).contains(&w.id().to_string())
    });
    w.wait_until("the early key", T, |w| w.get("before").is_some());
    let dump = w.dump();
    let before = dump.iter().find(|i| i[0] == "before").unwrap();
    assert_eq!(before[1], json!("set before the bundle joined"));
    assert_eq!(before[2]["owner"], json!(r.id()));
    let peers = w.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0]["id"], json!(r.id()));
    assert_eq!(peers[0]["kind"], json!("rs2p"));
    // rs2p sees no address for it (a browser cannot listen).
    let seen = rt.block(r.mesh().peers()).unwrap();
    assert_eq!(seen[0].addr, None, "{seen:?}");

    // Live writes both ways, with their owners; values of every type.
    rt.block(r.set("rs-live", "from rs2p")).unwrap();
    let value = json!({"n": 1, "big": 1u64 << 40, "f": 1.5, "s": "é", "list": [null, true, {"$bin": "00ff"}]});
    w.ok(json!({"op": "set", "key": "w-live", "value": value}));
    w.wait_until("rs2p's write", T, |w| {
        w.get("rs-live") == Some(json!("from rs2p"))
    });
    wait_for("the bundle's write on rs2p", T, || {
        r.get("w-live").is_some()
    });
    assert_eq!(r.metadata("w-live").unwrap().owner, w.id().as_bytes());
    assert_eq!(json_of(&r.get("w-live").unwrap()), value);
    let events = w.events();
    assert!(
        events.iter().any(|e| e["event"] == "update"
            && e["key"] == "rs-live"
            && e["owner"] == json!(r.id())),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["event"] == "connect"), "{events:?}");

    // Deltas both ways.
    rt.block(r.apply_delta("map", Value::from_iter([("a", Value::from(1))])))
        .unwrap();
    w.wait_until("rs2p's delta", T, |w| w.get("map") == Some(json!({"a": 1})));
    w.ok(json!({"op": "delta", "key": "w-map", "delta": {"b": 2}}));
    w.ok(json!({"op": "delta", "key": "w-map", "delta": {"c": [3]}}));
    wait_for("the bundle's deltas on rs2p", T, || {
        r.get("w-map").map(|v| json_of(&v)) == Some(json!({"b": 2, "c": [3]}))
    });

    // Leases hold both ways (a write in the owner's second is settled by
    // the id tie-break instead: step past it).
    let t0 = unix_now();
    wait_for("next second", T, || unix_now() > t0);
    let theirs = rt.block(r.set("w-live", "rs2p tries"));
    assert!(
        matches!(theirs, Err(Error::LeaseHeld { ref owner, .. }) if owner == w.id()),
        "{theirs:?}"
    );
    let refused = w.set("rs-live", json!("the bundle tries"));
    assert_eq!(refused["ok"], json!(false), "{refused}");
    assert_eq!(refused["error"]["kind"], json!("LeaseError"), "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is leased by"),
        "{refused}"
    );
    assert_eq!(w.get("rs-live"), Some(json!("from rs2p")));
    // rs2p's map is leased to rs2p, for deltas too.
    let refused = w.cmd(json!({"op": "delta", "key": "map", "delta": {"b": 2}}));
    assert_eq!(refused["error"]["kind"], json!("LeaseError"), "{refused}");

    // Deletes from the bundle reach rs2p; a missing key is a KeyError.
    w.ok(json!({"op": "del", "key": "w-live"}));
    wait_for("the delete on rs2p", T, || r.get("w-live").is_none());
    let missing = w.cmd(json!({"op": "del", "key": "never"}));
    assert_eq!(missing["error"]["kind"], json!("KeyError"), "{missing}");
    rt.block(r.del("rs-live")).unwrap();
    w.wait_until("rs2p's delete", T, |w| w.get("rs-live").is_none());

    assert_eq!(w.stats().0, 0, "{:?}", w.stats());
    w.close();
    rt.block(r.close());
}

/// Two bundle nodes see each other's writes through an rs2p node, and one
/// without leases joins the `sync0` subnet whichever order the constructor
/// gets its arguments in.
#[test]
fn bundle_nodes_meet_through_rs2p() {
    let rt = Rt::new();
    let r = ws_node(&rt, false);
    let Some(mut a) = wasm_peer(&PeerOpts::sync().leasing("off")) else {
        return;
    };
    let mut b = wasm_peer(
        &PeerOpts::sync()
            .leasing("off")
            .arg("--order")
            .arg("leasing"),
    )
    .unwrap();
    assert_eq!(a.protocol_id(), r.mesh().protocol_id());
    assert_eq!(b.protocol_id(), r.mesh().protocol_id());
    let port = r.mesh().local_addr().port();
    a.connect(port, None);
    b.connect(port, None);
    wait_for("both bundle nodes on rs2p", T, || {
        rt.peer_ids(r.mesh()).len() == 2
    });
    a.ok(json!({"op": "set", "key": "from-a", "value": "a"}));
    b.wait_until("a's write at b", T, |b| b.get("from-a") == Some(json!("a")));
    // Without leases the later second wins (within one second, the id
    // tie-break decides).
    let t0 = unix_now();
    wait_for("next second", T, || unix_now() > t0);
    b.ok(json!({"op": "set", "key": "from-a", "value": "b wins: no leases"}));
    a.wait_until("b's overwrite at a", T, |a| {
        a.get("from-a") == Some(json!("b wins: no leases"))
    });
    assert_eq!(a.stats().0, 0);
    assert_eq!(b.stats().0, 0);
}

/// Garbage on a link never traps the WebAssembly core: random bytes,
/// corrupt frames, mutated copies of its own frames, absurd lengths, deep
/// nesting. The node drops such links and stays usable.
#[test]
fn hostile_input_never_traps_the_core() {
    let Some(mut w) = wasm_peer(&PeerOpts::sync()) else {
        return;
    };
    for seed in [1, 2, 3] {
        let rep = w.ok(json!({"op": "hostile", "seed": seed, "rounds": 1500}));
        assert_eq!(rep["raised"], json!([]), "{rep}");
        assert_eq!(rep["status"], json!("Nominal"), "{rep}");
        assert_eq!(rep["alive"], json!(true), "{rep}");
        assert!(rep["drops"].as_u64().unwrap() > 10, "{rep}");
    }
    assert_eq!(w.stats().0, 0, "{:?}", w.stats());
}
