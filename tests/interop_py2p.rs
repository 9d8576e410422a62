//! rs2p in meshes of real py2p 0.7.878 nodes on 127.0.0.1.

mod common;

use std::time::Duration;

use common::node::*;
use common::peers::*;
use rs2p::{Compression, Error, MeshConfig, SyncConfig, Value};
use serde_json::json;

fn py_mesh() -> RefPeer {
    RefPeer::spawn(Impl::Py2p, &PeerOpts::mesh())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn rs2p_joins_a_three_node_py2p_mesh() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let mut p1 = py_mesh();
    let mut p2 = py_mesh();
    let mut p3 = py_mesh();
    p2.connect(p1.port(), None);
    p3.connect(p1.port(), None);
    wait_for("py2p mesh forms", T, || {
        p1.peers().len() == 2 && !p3.peers().is_empty()
    });

    let r = rt.mesh(MeshConfig::new(local()));
    rt.block(r.connect("127.0.0.1", p1.port())).unwrap();
    // p1's peers list makes us dial p2 and p3 as well.
    wait_for("rs2p linked to all three", T, || rt.peer_ids(&r).len() == 3);
    for p in [&mut p1, &mut p2, &mut p3] {
        let rid = r.id().to_string();
        p.wait_until("py2p lists rs2p", T, |p| p.has_peer(&rid));
    }

    // A py2p broadcast arrives exactly once in our queue.
    p2.send(vec![json!("from p2"), bin(b"raw")]);
    let m = rt
        .block(async { tokio::time::timeout(T, r.recv()).await })
        .unwrap()
        .unwrap();
    assert_eq!(m.sender(), p2.id());
    assert_eq!(
        m.packets(),
        &[
            Value::from(0),
            Value::from("from p2"),
            Value::from(&b"raw"[..])
        ]
    );
    // Our broadcast arrives exactly once at every py2p node.
    for p in [&mut p1, &mut p3] {
        p.wait_until("p2's broadcast", T, |p| !p.recv().is_empty());
    }
    p2.recv();
    rt.block(r.send(vec![Value::from("from rs2p"), Value::from(7)]))
        .unwrap();
    let rid = r.id().to_string();
    let mut got: Vec<Vec<serde_json::Value>> = vec![Vec::new(); 3];
    for (i, p) in [&mut p1, &mut p2, &mut p3].into_iter().enumerate() {
        p.wait_until("rs2p broadcast", T, |p| {
            got[i].extend(p.recv());
            !got[i].is_empty()
        });
    }
    // A later marker from p1 arrives after any duplicate would have.
    p1.send(vec![json!("marker")]);
    let m = rt
        .block(async { tokio::time::timeout(T, r.recv()).await })
        .unwrap()
        .unwrap();
    assert_eq!(
        m.body(),
        &[Value::from("marker")],
        "a duplicate of p2's broadcast arrived"
    );
    for (i, p) in [&mut p2, &mut p3].into_iter().enumerate() {
        p.wait_until("marker", T, |p| {
            got[i + 1].extend(p.recv());
            got[i + 1]
                .iter()
                .any(|m| m["packets"] == json!([0, "marker"]))
        });
    }
    for g in &got {
        let ours: Vec<_> = g.iter().filter(|m| m["sender"] == rid).collect();
        assert_eq!(ours.len(), 1, "{g:?}");
        assert_eq!(ours[0]["packets"], json!([0, "from rs2p", 7]));
    }
    assert!(r.try_recv().is_none());

    // Routing tables agree: each py2p node lists us, and we list each.
    let ours = rt.peer_ids(&r);
    for p in [&mut p1, &mut p2, &mut p3] {
        assert!(ours.contains(&p.id().to_string()));
        let live: Vec<String> = p
            .peers()
            .iter()
            .filter(|e| e["alive"] != json!(false))
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect();
        assert!(live.contains(&r.id().to_string()), "{live:?}");
        assert_eq!(p.stats().0, 0, "py2p reported errors: {:?}", p.stats());
    }
    rt.block(r.close());
}

#[test]
fn py2p_mesh_with_rs2p_survives_a_node_leaving() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let mut p1 = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    let mut p2 = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    let mut p3 = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    let r = rt.sync(SyncConfig::new(local()));
    // Every py2p node is linked to rs2p; p2 and p3 also to p1.
    for p in [&mut p1, &mut p2, &mut p3] {
        p.connect(r.mesh().local_addr().port(), None);
    }
    p2.connect(p1.port(), None);
    p3.connect(p1.port(), None);
    let ids = [
        p1.id().to_string(),
        p2.id().to_string(),
        p3.id().to_string(),
    ];
    wait_for("rs2p sees all three", T, || {
        rt.peer_ids(r.mesh()).len() == 3
    });
    // (Whether a direct p1-p2 link survives py2p's own handling of
    // simultaneous dials, Q4, is py2p's business; the mesh must not depend
    // on it.)

    // p3 leaves. py2p's own reaction (a str '*' request that its py2p peers
    // answer with a broken renegotiation, PROTOCOL.md §6.12) may still cut
    // the p1-p2 link; rs2p must not add to it, and keeps the mesh whole.
    p3.close();
    wait_for("rs2p notices p3 left", T, || {
        !rt.peer_ids(r.mesh()).contains(&ids[2])
    });
    rt.block(r.set("after", "p3 left")).unwrap();
    p1.ok(json!({"op":"set","key":"from-p1","value":1}));
    for p in [&mut p1, &mut p2] {
        p.wait_until("rs2p write arrives", T, |p| {
            p.get("after") == Some(json!("p3 left"))
        });
    }
    p2.wait_until("p1 write reaches p2", T, |p| {
        p.get("from-p1") == Some(json!(1))
    });
    wait_for("p1 write reaches rs2p", T, || {
        r.get("from-p1") == Some(Value::from(1))
    });
    // Both stay linked to rs2p, and the mesh is connected.
    let rid = r.id().to_string();
    for p in [&mut p1, &mut p2] {
        assert!(p.has_peer(&rid), "{:?}", p.peers());
    }
    assert!(rt.peer_ids(r.mesh()).contains(&ids[0]) && rt.peer_ids(r.mesh()).contains(&ids[1]));
    // And a later write from p2 still reaches p1.
    p2.ok(json!({"op":"set","key":"from-p2","value":2}));
    p1.wait_until("p2 write reaches p1", T, |p| {
        p.get("from-p2") == Some(json!(2))
    });
    rt.block(r.close());
}

#[test]
fn sync_scenario_with_py2p() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let r = rt.sync(SyncConfig::new(local()));
    rt.block(r.set("before", "peers joined")).unwrap();
    let mut p1 = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    let mut p2 = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    p1.connect(r.mesh().local_addr().port(), None);
    p2.connect(p1.port(), None);
    wait_for("rs2p has both", T, || rt.peer_ids(r.mesh()).len() == 2);
    p1.ok(json!({"op":"set","key":"测试","value":"成功"}));
    p2.ok(json!({"op":"set","key":"int","value":256}));
    rt.block(r.set("list", (1..10).map(Value::from).collect::<Value>()))
        .unwrap();
    rt.block(r.set(&b"\xffbin"[..], Value::from(&b"\x00\x01"[..])))
        .unwrap();
    let expect = [
        ("before", json!("peers joined")),
        ("测试", json!("成功")),
        ("int", json!(256)),
        ("list", json!([1, 2, 3, 4, 5, 6, 7, 8, 9])),
    ];
    for p in [&mut p1, &mut p2] {
        for (k, v) in &expect {
            p.wait_until(&format!("{k} on py2p"), T, |p| p.get(k).as_ref() == Some(v));
        }
        let items = p.dump();
        let bin_item = items
            .iter()
            .find(|i| i[0] == bin(b"\xffbin"))
            .expect("binary key");
        assert_eq!(bin_item[1], bin(b"\x00\x01"));
        assert_eq!(bin_item[2]["owner"], r.id());
    }
    wait_for("py2p writes on rs2p", T, || {
        r.get("测试") == Some(Value::from("成功")) && r.get("int") == Some(Value::from(256))
    });
    assert_eq!(r.metadata("测试").unwrap().owner, p1.id().as_bytes());
    assert_eq!(r.len(), 5);
    rt.block(r.close());
}

#[test]
fn leasing_across_rs2p_and_py2p() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    for leasing in [true, false] {
        let r = rt.sync(SyncConfig::new(local()).with_leasing(leasing));
        let mut p = RefPeer::spawn(
            Impl::Py2p,
            &PeerOpts::sync().leasing(if leasing { "on" } else { "off" }),
        );
        p.connect(r.mesh().local_addr().port(), None);
        wait_for("linked", T, || rt.peer_ids(r.mesh()).len() == 1);
        p.ok(json!({"op":"set","key":"py-owned","value":"p"}));
        rt.block(r.set("rs-owned", "r")).unwrap();
        wait_for("both keys everywhere", T, || r.get("py-owned").is_some());
        p.wait_until("rs key", T, |p| p.get("rs-owned").is_some());
        let t0 = unix_now();
        wait_for("next second", T, || unix_now() > t0);

        let before = p.dump();
        let ours = rt.block(r.set("py-owned", "r tries"));
        let theirs = p.cmd(json!({"op":"set","key":"rs-owned","value":"p tries"}));
        if leasing {
            assert!(
                matches!(ours, Err(Error::LeaseHeld { ref owner, .. }) if owner == p.id()),
                "{ours:?}"
            );
            assert_eq!(
                theirs["ok"],
                json!(false),
                "{theirs} {before:?} now {}",
                unix_now()
            );
            assert_eq!(theirs["error"]["kind"], json!("KeyError"));
            // Nothing was sent: py2p still holds its value.
            assert_eq!(p.get("py-owned"), Some(json!("p")));
            // Owners may change and delete their keys.
            p.ok(json!({"op":"set","key":"py-owned","value":"p2"}));
            wait_for("owner change", T, || {
                r.get("py-owned") == Some(Value::from("p2"))
            });
            rt.block(r.set("rs-owned", "r2")).unwrap();
            p.wait_until("rs owner change", T, |p| {
                p.get("rs-owned") == Some(json!("r2"))
            });
            p.ok(json!({"op":"del","key":"py-owned"}));
            wait_for("owner delete", T, || r.get("py-owned").is_none());
            rt.block(r.del("rs-owned")).unwrap();
            p.wait_until("rs delete", T, |p| p.get("rs-owned").is_none());
        } else {
            ours.unwrap();
            assert_eq!(theirs["ok"], json!(true), "{theirs}");
            wait_for("p's write", T, || {
                r.get("rs-owned") == Some(Value::from("p tries"))
            });
            p.wait_until("r's write", T, |p| {
                p.get("py-owned") == Some(json!("r tries"))
            });
        }
        assert_eq!(p.stats().0, 0, "{:?}", p.stats());
        rt.block(r.close());
    }
}

#[test]
fn late_joiners_get_ten_thousand_keys() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let r = rt.sync(SyncConfig::new(local()));
    rt.block(async {
        for i in 0..10_000 {
            r.set(format!("key{i:05}"), format!("value {i}"))
                .await
                .unwrap();
        }
    });
    let mut p = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    let r2 = rt.sync(SyncConfig::new(local()));
    p.connect(r.mesh().local_addr().port(), None);
    rt.block(r2.connect("127.0.0.1", r.mesh().local_addr().port()))
        .unwrap();
    wait_for("rs2p joiner has all", T, || r2.len() == 10_000);
    p.wait_until("py2p joiner has all", Duration::from_secs(90), |p| {
        p.ok(json!({"op":"len"}))["len"] == json!(10_000)
    });
    let items = p.dump();
    assert_eq!(items.len(), 10_000);
    for item in items.iter().step_by(997) {
        let k = item[0].as_str().unwrap();
        let meta = r.metadata(k).unwrap();
        assert_eq!(item[1], json_of(&r.get(k).unwrap()));
        assert_eq!(item[2]["owner"], r.id());
        assert_eq!(item[2]["timestamp"], json!(meta.timestamp));
        assert_eq!(r2.metadata(k).unwrap(), meta);
    }
    rt.block(r.close());
    rt.block(r2.close());
}

#[test]
fn delta_validation_with_a_mixed_mesh() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    // As py2p's delta_validation: leasing off, three writers merge into one
    // map.
    let r = rt.sync(SyncConfig::new(local()).with_leasing(false));
    let mut p1 = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync().leasing("off"));
    let mut p2 = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync().leasing("off"));
    p1.connect(r.mesh().local_addr().port(), None);
    p2.connect(r.mesh().local_addr().port(), None);
    wait_for("linked", T, || rt.peer_ids(r.mesh()).len() == 2);
    rt.block(r.apply_delta("store", [("a", 1), ("b", 2)].into_iter().collect::<Value>()))
        .unwrap();
    let want1 = json!({"a": 1, "b": 2});
    p1.wait_until("first delta", T, |p| p.get("store") == Some(want1.clone()));
    p1.ok(json!({"op":"delta","key":"store","delta":{"b":3,"c":4}}));
    let want2 = json!({"a": 1, "b": 3, "c": 4});
    wait_for("second delta on rs2p", T, || {
        r.get("store").map(|v| json_of(&v)) == Some(want2.clone())
    });
    p2.wait_until("second delta on p2", T, |p| {
        p.get("store") == Some(want2.clone())
    });
    p2.ok(json!({"op":"delta","key":"store","delta":{"d":{"nested":true}}}));
    let want3 = json!({"a": 1, "b": 3, "c": 4, "d": {"nested": true}});
    wait_for("third delta on rs2p", T, || {
        r.get("store").map(|v| json_of(&v)) == Some(want3.clone())
    });
    p1.wait_until("third delta on p1", T, |p| {
        p.get("store") == Some(want3.clone())
    });
    assert_eq!(r.metadata("store").unwrap().owner, p2.id().as_bytes());
    rt.block(r.close());
}

#[test]
fn every_compression_method_works_with_py2p() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    for (name, m) in [
        ("zlib", Compression::Zlib),
        ("gzip", Compression::Gzip),
        ("bz2", Compression::Bz2),
        ("lzma", Compression::Lzma),
        ("snappy", Compression::Snappy),
    ] {
        let Ok(mut p) = RefPeer::try_spawn(Impl::Py2p, &PeerOpts::sync().compression(vec![name]))
        else {
            panic!("py2p cannot use {name}: is python-snappy installed by setup-peers.sh?");
        };
        let mut cfg = SyncConfig::new(local());
        cfg.mesh.compression = vec![m];
        let r = rt.sync(cfg);
        p.connect(r.mesh().local_addr().port(), None);
        wait_for("linked", T, || rt.peer_ids(r.mesh()).len() == 1);
        let big = "x".repeat(5000);
        rt.block(r.set("from-rs", big.as_str())).unwrap();
        p.ok(json!({"op":"set","key":"from-py","value":name}));
        p.wait_until(&format!("{name}: rs2p value"), T, |p| {
            p.get("from-rs") == Some(json!(big))
        });
        wait_for(&format!("{name}: py2p value"), T, || {
            r.get("from-py") == Some(Value::from(name))
        });
        assert_eq!(p.stats().0, 0, "{name}: {:?}", p.stats());
        rt.block(r.close());
    }
}
