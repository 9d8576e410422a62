//! rs2p in meshes of real js2p 0.7.870 nodes, and rs2p bridging a py2p
//! node and a js2p node (which cannot talk to each other directly).

mod common;

use common::node::*;
use common::peers::*;
use rs2p::{Compression, Error, MeshConfig, SyncConfig, Value};
use serde_json::json;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn recv_all(
    p: &mut RefPeer,
    what: &str,
    until: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    p.wait_until(what, T, |p| {
        got.extend(p.recv());
        until(&got)
    });
    got
}

#[test]
fn rs2p_joins_a_three_node_js2p_mesh() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let mut j1 = RefPeer::spawn(Impl::Js2p, &PeerOpts::mesh());
    let mut j2 = RefPeer::spawn(Impl::Js2p, &PeerOpts::mesh());
    let mut j3 = RefPeer::spawn(Impl::Js2p, &PeerOpts::mesh());
    j2.connect(j1.port(), None);
    j3.connect(j1.port(), None);
    wait_for("js2p star forms", T, || j1.peers().len() == 2);
    let r = rt.mesh(MeshConfig::new(local()));
    rt.block(r.connect("127.0.0.1", j1.port())).unwrap();
    // js2p on one host never dials a second peer (same-host rule, J4), so
    // rs2p dials the others from j1's peers list.
    wait_for("rs2p linked to all three", T, || rt.peer_ids(&r).len() == 3);

    j2.send(vec![json!("from j2")]);
    let m = rt
        .block(async { tokio::time::timeout(T, r.recv()).await })
        .unwrap()
        .unwrap();
    assert_eq!(m.sender(), j2.id());
    assert_eq!(m.packets(), &[Value::from(0), Value::from("from j2")]);
    for p in [&mut j1, &mut j3] {
        recv_all(p, "j2's broadcast", |g| !g.is_empty());
    }
    j2.recv();

    rt.block(r.send(vec![Value::from("from rs2p")])).unwrap();
    let rid = r.id().to_string();
    let mut got = Vec::new();
    for p in [&mut j1, &mut j2, &mut j3] {
        got.push(recv_all(p, "rs2p broadcast", |g| !g.is_empty()));
    }
    j1.send(vec![json!("marker")]);
    let m = rt
        .block(async { tokio::time::timeout(T, r.recv()).await })
        .unwrap()
        .unwrap();
    assert_eq!(
        m.body(),
        &[Value::from("marker")],
        "a duplicate arrived at rs2p"
    );
    for (i, p) in [&mut j2, &mut j3].into_iter().enumerate() {
        let more = recv_all(p, "marker", |g| {
            g.iter().any(|m| m["packets"] == json!([0, "marker"]))
        });
        got[i + 1].extend(more);
    }
    for g in &got {
        let ours: Vec<_> = g.iter().filter(|m| m["sender"] == rid).collect();
        assert_eq!(ours.len(), 1, "{g:?}");
        assert_eq!(ours[0]["packets"], json!([0, "from rs2p"]));
    }
    assert!(r.try_recv().is_none());
    for p in [&mut j1, &mut j2, &mut j3] {
        assert!(p.has_peer(&rid), "{:?}", p.peers());
        assert_eq!(p.stats().0, 0, "js2p errors: {:?}", p.stats());
    }
    rt.block(r.close());
}

#[test]
fn sync_scenario_and_leases_with_js2p() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let r = rt.sync(SyncConfig::new(local()));
    rt.block(r.set("before", "peers joined")).unwrap();
    let mut j1 = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync());
    let mut j2 = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync());
    j1.connect(r.mesh().local_addr().port(), None);
    j2.connect(r.mesh().local_addr().port(), None);
    wait_for("rs2p has both", T, || rt.peer_ids(r.mesh()).len() == 2);
    j1.ok(json!({"op":"set","key":"测试","value":"成功"}));
    j2.ok(json!({"op":"set","key":"int","value":256}));
    rt.block(r.set("list", (1..10).map(Value::from).collect::<Value>()))
        .unwrap();
    let expect = [
        ("before", json!("peers joined")),
        ("测试", json!("成功")),
        ("int", json!(256)),
        ("list", json!([1, 2, 3, 4, 5, 6, 7, 8, 9])),
    ];
    for p in [&mut j1, &mut j2] {
        for (k, v) in &expect {
            p.wait_until(&format!("{k} on js2p"), T, |p| p.get(k).as_ref() == Some(v));
        }
    }
    wait_for("js2p writes on rs2p", T, || {
        r.get("测试") == Some(Value::from("成功")) && r.get("int") == Some(Value::from(256))
    });
    assert_eq!(r.metadata("int").unwrap().owner, j2.id().as_bytes());

    // Leases both ways (js2p constructed with leasing on).
    let t0 = unix_now();
    wait_for("next second", T, || unix_now() > t0);
    let ours = rt.block(r.set("int", 1));
    assert!(
        matches!(ours, Err(Error::LeaseHeld { ref owner, .. }) if owner == j2.id()),
        "{ours:?}"
    );
    let theirs = j1.cmd(json!({"op":"set","key":"list","value":"j1 tries"}));
    assert_eq!(theirs["ok"], json!(false), "{theirs}");

    // A delete on rs2p is not relayed to js2p (it would cost the link).
    rt.block(r.del("list")).unwrap();
    rt.block(r.set("after-delete", true)).unwrap();
    for p in [&mut j1, &mut j2] {
        p.wait_until("later write", T, |p| {
            p.get("after-delete") == Some(json!(true))
        });
        assert_eq!(p.stats().0, 0, "{:?}", p.stats());
    }
    assert_eq!(rt.peer_ids(r.mesh()).len(), 2, "a js2p link was lost");
    rt.block(r.close());
}

#[test]
fn compression_with_js2p() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    for (name, m) in [
        ("zlib", Compression::Zlib),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
    ] {
        let mut j = match RefPeer::try_spawn(Impl::Js2p, &PeerOpts::sync().compression(vec![name]))
        {
            Ok(j) => j,
            Err(e) => panic!("js2p cannot use {name}: {e}"),
        };
        let mut cfg = SyncConfig::new(local());
        cfg.mesh.compression = vec![m];
        let r = rt.sync(cfg);
        j.connect(r.mesh().local_addr().port(), None);
        wait_for("linked", T, || rt.peer_ids(r.mesh()).len() == 1);
        let big = "y".repeat(5000);
        rt.block(r.set("from-rs", big.as_str())).unwrap();
        j.ok(json!({"op":"set","key":"from-js","value":name}));
        j.wait_until(&format!("{name}: rs2p value"), T, |p| {
            p.get("from-rs") == Some(json!(big))
        });
        wait_for(&format!("{name}: js2p value"), T, || {
            r.get("from-js") == Some(Value::from(name))
        });
        assert_eq!(j.stats().0, 0, "{name}: {:?}", j.stats());
        rt.block(r.close());
    }
}

#[test]
fn rs2p_bridges_py2p_and_js2p() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let r = rt.sync(SyncConfig::new(local()));
    let mut p = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    let mut j = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync());
    p.connect(r.mesh().local_addr().port(), None);
    j.connect(r.mesh().local_addr().port(), None);
    wait_for("rs2p linked to both", T, || {
        rt.peer_ids(r.mesh()).len() == 2
    });

    // Broadcasts both ways through rs2p.
    p.send(vec![json!("py says hi")]);
    let got = recv_all(&mut j, "py2p broadcast at js2p", |g| !g.is_empty());
    assert_eq!(got[0]["packets"], json!([0, "py says hi"]));
    assert_eq!(got[0]["sender"], p.id());
    j.send(vec![json!("js says hi")]);
    let got = recv_all(&mut p, "js2p broadcast at py2p", |g| !g.is_empty());
    assert_eq!(got[0]["packets"], json!([0, "js says hi"]));
    assert_eq!(got[0]["sender"], j.id());

    // Writes both ways.
    p.ok(json!({"op":"set","key":"py-key","value":"py value"}));
    j.ok(json!({"op":"set","key":"js-key","value":{"nested":[1,2]}}));
    j.wait_until("py2p write at js2p", T, |j| {
        j.get("py-key") == Some(json!("py value"))
    });
    p.wait_until("js2p write at py2p", T, |p| {
        p.get("js-key") == Some(json!({"nested":[1,2]}))
    });
    p.ok(json!({"op":"delta","key":"py-map","delta":{"a":1}}));
    j.wait_until("py2p delta at js2p", T, |j| {
        j.get("py-map") == Some(json!({"a":1}))
    });
    let js_meta = p.dump().into_iter().find(|i| i[0] == "js-key").unwrap();
    assert_eq!(js_meta[2]["owner"], j.id());
    // py2p never learned js2p's address (it would dial it and break, §10.2).
    assert!(!p.has_peer(j.id()));
    assert_eq!(p.stats().0, 0, "{:?}", p.stats());
    assert_eq!(j.stats().0, 0, "{:?}", j.stats());
    rt.block(r.close());
}

/// Two rs2p nodes, b dialled to a.
fn linked_pair(rt: &Rt) -> (rs2p::SyncSocket, rs2p::SyncSocket) {
    let a = rt.sync(SyncConfig::new(local()));
    let b = rt.sync(SyncConfig::new(local()));
    rt.block(b.connect("127.0.0.1", a.mesh().local_addr().port()))
        .unwrap();
    (a, b)
}

/// What a bridge learns from one side's state transfer reaches the other
/// side's peers that were linked before it: a js2p peer linked first gets
/// the keys a py2p peer brings when it joins later (and the py2p peer gets
/// the js2p peer's keys in its own state transfer, as before), also across
/// two rs2p nodes; and a py2p peer gets what a js2p peer joining later
/// brings.
#[test]
fn rs2p_bridge_passes_on_what_a_state_transfer_brings() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let (a, b) = linked_pair(&rt);
    let (pa, pb) = (a.mesh().local_addr().port(), b.mesh().local_addr().port());
    let mut j = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync());
    j.ok(json!({"op":"set","key":"js-old","value":"js"}));
    j.connect(pa, None);
    wait_for("js2p linked to a", T, || rt.peer_ids(a.mesh()).len() == 2);
    wait_for("js2p's keys at b", T, || {
        b.get("js-old") == Some(Value::from("js"))
    });

    // A py2p peer holding keys of its own joins the bridge: a directly,
    // then b.
    for (name, port) in [("a", pa), ("b", pb)] {
        let mut p = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
        let keys: Vec<String> = (0..50).map(|i| format!("py-{name}-{i}")).collect();
        for k in &keys {
            p.ok(json!({"op":"set","key":k,"value":{"from":name}}));
        }
        p.connect(port, None);
        j.wait_until(&format!("py2p's keys at js2p through {name}"), T, |j| {
            let held = j.dump();
            keys.iter().all(|k| {
                held.iter()
                    .any(|i| i[0] == json!(k) && i[1] == json!({"from":name}))
            })
        });
        p.wait_until(&format!("js2p's key at py2p through {name}"), T, |p| {
            p.get("js-old") == Some(json!("js"))
        });
        wait_for(
            &format!("py2p's keys on both rs2p nodes ({name})"),
            T,
            || {
                [&a, &b]
                    .iter()
                    .all(|n| keys.iter().all(|k| n.get(k).is_some()))
            },
        );
        assert_eq!(p.stats().0, 0, "{:?}", p.stats());
        p.close();
    }

    // The other way: a js2p peer joining b with keys of its own reaches a
    // py2p peer linked to a before.
    let mut p = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    p.connect(pa, None);
    let a_id = a.mesh().id().to_string();
    p.wait_until("py2p linked to a", T, |p| p.has_peer(&a_id));
    let mut late = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync());
    late.ok(json!({"op":"set","key":"js-late","value":[1,2,3]}));
    late.connect(pb, None);
    p.wait_until("the late js2p peer's key at py2p", T, |p| {
        p.get("js-late") == Some(json!([1, 2, 3]))
    });
    assert_eq!(p.stats().0, 0, "{:?}", p.stats());
    assert_eq!(late.stats().0, 0, "{:?}", late.stats());
    assert_eq!(j.stats().0, 0, "{:?}", j.stats());
    rt.block(a.close());
    rt.block(b.close());
}

/// Two rs2p nodes sharing a py2p peer and a js2p peer: each rs2p node knows
/// the other's neighbours and leaves the references to it (relays pruned),
/// and still every broadcast and write reaches every node.
#[test]
fn two_rs2p_nodes_share_reference_peers_without_losing_anything() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let (a, b) = linked_pair(&rt);
    let (pa, pb) = (a.mesh().local_addr().port(), b.mesh().local_addr().port());
    let mut p = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    let mut j = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync());
    p.connect(pa, None);
    p.connect(pb, None);
    j.connect(pa, None);
    rt.block(b.connect("127.0.0.1", j.port())).unwrap();
    wait_for("both rs2p nodes linked to everyone", T, || {
        rt.peer_ids(a.mesh()).len() == 3 && rt.peer_ids(b.mesh()).len() == 3
    });

    // Broadcasts from a reach both references, through a alone.
    for i in 0..10 {
        rt.block(a.mesh().send(vec![Value::from(i)])).unwrap();
    }
    for r in [&mut p, &mut j] {
        let got = recv_all(r, "a's broadcasts", |g| g.len() >= 10);
        let bodies: Vec<_> = got.iter().map(|m| m["packets"][1].clone()).collect();
        assert_eq!(bodies, (0..10).map(|i| json!(i)).collect::<Vec<_>>());
    }
    // b left py2p and js2p to a (unless py2p relayed a broadcast to b
    // before a's own copy arrived, when b relays it as usual).
    // b gets a's broadcasts on its own link to a, in its own time: the
    // references holding them says nothing about b's counter yet.
    wait_for("b to prune a relay of a's broadcasts", T, || {
        rt.block(b.mesh().stats()).unwrap().relays_pruned > 0
    });

    // Writes from every side reach every node.
    rt.block(a.set("from-a", "a")).unwrap();
    p.ok(json!({"op":"set","key":"from-py","value":"py"}));
    j.ok(json!({"op":"set","key":"from-js","value":"js"}));
    for r in [&mut p, &mut j] {
        r.wait_until("every write", T, |r| {
            r.get("from-a") == Some(json!("a"))
                && r.get("from-py") == Some(json!("py"))
                && r.get("from-js") == Some(json!("js"))
        });
    }
    wait_for("every write on the rs2p nodes", T, || {
        [&a, &b].iter().all(|n| {
            n.get("from-py") == Some(Value::from("py"))
                && n.get("from-js") == Some(Value::from("js"))
        })
    });
    // A delete from a reaches py2p (js2p cannot delete: never sent to it).
    rt.block(a.del("from-a")).unwrap();
    p.wait_until("the delete at py2p", T, |p| p.get("from-a").is_none());
    wait_for("the delete at b", T, || b.get("from-a").is_none());
    assert_eq!(p.stats().0, 0, "{:?}", p.stats());
    assert_eq!(j.stats().0, 0, "{:?}", j.stats());
    rt.block(a.close());
    rt.block(b.close());
}
