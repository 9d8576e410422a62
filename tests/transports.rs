//! The `SSL` (TLS) and `ws` (WebSocket) transports: rs2p with rs2p, with
//! real py2p 0.7.878 and js2p 0.7.870 nodes, pinned TLS, and peers on the
//! wrong transport.

mod common;

use common::node::*;
use common::peers::*;
use rs2p::config::{TlsConfig, TlsIdentity, TlsVerify};
use rs2p::{SyncConfig, SyncSocket, Transport, Value};
use serde_json::json;

fn node(rt: &Rt, t: Transport) -> SyncSocket {
    rt.sync(SyncConfig::new(local()).with_transport(t))
}

fn port(s: &SyncSocket) -> u16 {
    s.mesh().local_addr().port()
}

fn dial(rt: &Rt, from: &SyncSocket, to: u16) -> rs2p::Result<()> {
    rt.block(from.mesh().connect("127.0.0.1", to))
}

fn peer_count(rt: &Rt, s: &SyncSocket) -> usize {
    rt.peer_ids(s.mesh()).len()
}

#[test]
fn rs2p_pairs_sync_over_ssl_and_ws() {
    let rt = Rt::new();
    for (t, name) in [(Transport::Ssl, "SSL"), (Transport::Ws, "ws")] {
        let a = node(&rt, t);
        let b = node(&rt, t);
        assert_eq!(
            a.mesh().protocol_id(),
            rs2p::wire::ids::protocol_id("sync1", name)
        );
        dial(&rt, &b, port(&a)).unwrap();
        wait_for(&format!("{name}: linked"), T, || {
            peer_count(&rt, &a) == 1 && peer_count(&rt, &b) == 1
        });
        rt.block(a.set("from-a", name)).unwrap();
        rt.block(b.set("from-b", vec![1u8; 100_000])).unwrap();
        wait_for(&format!("{name}: both keys on both nodes"), T, || {
            [&a, &b].iter().all(|n| {
                n.get("from-a") == Some(Value::from(name))
                    && n.get("from-b") == Some(Value::from(vec![1u8; 100_000]))
            })
        });
        rt.block(a.close());
        rt.block(b.close());
    }
}

/// rs2p (SSL) linked to a py2p node and a js2p node; writes from each of
/// the three reach the other two. `rs2p_dials` picks who dials whom, so
/// that both reference clients and both reference servers are exercised.
fn ssl_mixed_mesh(rs2p_dials_py2p: bool) {
    let rt = Rt::new();
    let r = node(&rt, Transport::Ssl);
    let mut p = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync().transport("SSL"));
    let mut j = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync().transport("SSL"));
    assert_eq!(p.protocol_id(), r.mesh().protocol_id());
    assert_eq!(j.protocol_id(), r.mesh().protocol_id());
    if rs2p_dials_py2p {
        dial(&rt, &r, p.port()).unwrap();
        j.connect(port(&r), None);
    } else {
        p.connect(port(&r), None);
        // js2p's server certificate is RSA-1024/SHA-1: AcceptAny must not
        // check its handshake signature.
        dial(&rt, &r, j.port()).unwrap();
    }
    wait_for("rs2p linked to py2p and js2p", T, || {
        peer_count(&rt, &r) == 2
    });

    rt.block(r.set("rs-key", "from rs2p")).unwrap();
    p.ok(json!({"op":"set","key":"py-key","value":"from py2p"}));
    j.ok(json!({"op":"set","key":"js-key","value":{"n":[1,2]}}));
    wait_for("py2p and js2p writes on rs2p", T, || {
        r.get("py-key") == Some(Value::from("from py2p")) && r.get("js-key").is_some()
    });
    let expect = [
        ("rs-key", json!("from rs2p")),
        ("py-key", json!("from py2p")),
        ("js-key", json!({"n":[1,2]})),
    ];
    for peer in [&mut p, &mut j] {
        for (k, v) in &expect {
            peer.wait_until(&format!("{k} over SSL"), T, |x| {
                x.get(k).as_ref() == Some(v)
            });
        }
        assert_eq!(peer.stats().0, 0, "{:?}", peer.stats());
    }
    assert_eq!(r.metadata("py-key").unwrap().owner, p.id().as_bytes());
    assert_eq!(r.metadata("js-key").unwrap().owner, j.id().as_bytes());
    rt.block(r.close());
}

#[test]
fn ssl_mixed_mesh_rs2p_dials_py2p_js2p_dials_rs2p() {
    if !require_peers() {
        return;
    }
    ssl_mixed_mesh(true);
}

#[test]
fn ssl_mixed_mesh_py2p_dials_rs2p_rs2p_dials_js2p() {
    if !require_peers() {
        return;
    }
    ssl_mixed_mesh(false);
}

#[test]
fn ws_with_js2p_both_directions() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let r = node(&rt, Transport::Ws);
    let mut j1 = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync().transport("ws"));
    let mut j2 = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync().transport("ws"));
    assert_eq!(j1.protocol_id(), r.mesh().protocol_id());
    rt.block(r.set("early", "before any peer")).unwrap();
    // js2p dials us (our listener sends its handshake without waiting) ...
    j1.connect(port(&r), None);
    // ... and we dial js2p.
    dial(&rt, &r, j2.port()).unwrap();
    wait_for("rs2p linked to both js2p nodes", T, || {
        peer_count(&rt, &r) == 2
    });
    let rid = r.id().to_string();
    for j in [&mut j1, &mut j2] {
        j.wait_until("js2p lists rs2p", T, |j| j.has_peer(&rid));
    }

    j1.ok(json!({"op":"set","key":"j1","value":"from j1"}));
    j2.ok(json!({"op":"set","key":"j2","value":[1,2,3]}));
    // Larger than one WebSocket message we send (1 MiB): split and rejoined.
    let big = "z".repeat(1_500_000);
    rt.block(r.set("big", big.as_str())).unwrap();
    wait_for("js2p writes on rs2p", T, || {
        r.get("j1") == Some(Value::from("from j1")) && r.get("j2").is_some()
    });
    let expect = [
        ("early", json!("before any peer")),
        ("j1", json!("from j1")),
        ("j2", json!([1, 2, 3])),
        ("big", json!(big)),
    ];
    for j in [&mut j1, &mut j2] {
        for (k, v) in &expect {
            j.wait_until(&format!("{k} over ws"), T, |x| x.get(k).as_ref() == Some(v));
        }
    }
    // A broadcast crosses too.
    j1.send(vec![json!("hello over ws")]);
    j2.wait_until("j1's broadcast at j2 via rs2p", T, |j| {
        j.recv()
            .iter()
            .any(|m| m["packets"] == json!([0, "hello over ws"]))
    });
    for j in [&mut j1, &mut j2] {
        assert_eq!(j.stats().0, 0, "{:?}", j.stats());
        assert!(j.has_peer(&rid));
    }
    rt.block(r.close());
}

#[test]
fn pinned_tls_accepts_only_pinned_nodes() {
    let rt = Rt::new();
    let ida = TlsIdentity::generate().unwrap();
    let idb = TlsIdentity::generate().unwrap();
    let idc = TlsIdentity::generate().unwrap();
    let pins = vec![ida.fingerprint(), idb.fingerprint()];
    let pinned = |id: &TlsIdentity, pins: Vec<_>| {
        rt.sync(
            SyncConfig::new(local())
                .with_transport(Transport::Ssl)
                .with_tls(
                    TlsConfig::new()
                        .with_identity(id.clone())
                        .with_verify(TlsVerify::Pinned(pins)),
                ),
        )
    };
    let a = pinned(&ida, pins.clone());
    let b = pinned(&idb, pins.clone());
    // c pins a and b but is not pinned by them; d runs the compatibility
    // mode (no client certificate).
    let c = pinned(
        &idc,
        vec![ida.fingerprint(), idb.fingerprint(), idc.fingerprint()],
    );
    let d = node(&rt, Transport::Ssl);

    // a refuses c's server certificate while dialing: a clean error.
    let err = dial(&rt, &a, port(&c)).unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // a, as listener, refuses c's and d's client certificates (the dialer may
    // see its TLS handshake complete before the refusal arrives).
    let _ = dial(&rt, &c, port(&a));
    let _ = dial(&rt, &d, port(&a));
    // The pinned peer gets in, in both directions.
    dial(&rt, &b, port(&a)).unwrap();
    wait_for("a and b linked", T, || {
        peer_count(&rt, &a) == 1 && peer_count(&rt, &b) == 1
    });
    rt.block(a.set("a", 1)).unwrap();
    rt.block(b.set("b", 2)).unwrap();
    wait_for("pinned nodes sync", T, || {
        a.get("b") == Some(Value::from(2)) && b.get("a") == Some(Value::from(1))
    });
    rt.block(c.set("c", 3)).unwrap();
    rt.block(d.set("d", 4)).unwrap();
    let ids = rt.peer_ids(a.mesh());
    assert_eq!(ids, vec![b.id().to_string()]);
    for n in [&c, &d] {
        assert_eq!(peer_count(&rt, n), 0);
        assert!(n.get("a").is_none());
    }
    assert!(a.get("c").is_none() && a.get("d").is_none());
    // A pinned dialer refuses a compatibility-mode listener's certificate.
    assert!(dial(&rt, &b, port(&d)).is_err());
    for n in [a, b, c, d] {
        rt.block(n.close());
    }
}

#[test]
fn peers_on_another_transport_are_refused_cleanly() {
    if !require_peers() {
        return;
    }
    let rt = Rt::new();
    let ssl = node(&rt, Transport::Ssl);
    let ws = node(&rt, Transport::Ws);
    let plain = node(&rt, Transport::Plaintext);
    let mut p_plain = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync());
    let mut j_plain = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync());
    let mut p_ssl = RefPeer::spawn(Impl::Py2p, &PeerOpts::sync().transport("SSL"));
    let mut j_ws = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync().transport("ws"));

    // Wrong transport, both directions: a plaintext py2p node dials the SSL
    // node, a plaintext js2p node dials the ws node; our SSL and ws dialers
    // get a clean error from plaintext listeners.
    p_plain.connect(port(&ssl), None);
    j_plain.connect(port(&ws), None);
    assert!(dial(&rt, &ssl, p_plain.port()).is_err());
    assert!(dial(&rt, &ws, j_plain.port()).is_err());
    assert!(dial(&rt, &ws, port(&ssl)).is_err());

    // Everybody keeps working with the right peers.
    p_ssl.connect(port(&ssl), None);
    j_ws.connect(port(&ws), None);
    p_plain.connect(port(&plain), None);
    j_plain.connect(port(&plain), None);
    wait_for("right-transport links", T, || {
        peer_count(&rt, &ssl) == 1 && peer_count(&rt, &ws) == 1 && peer_count(&rt, &plain) == 2
    });
    rt.block(ssl.set("ssl", "s")).unwrap();
    rt.block(ws.set("ws", "w")).unwrap();
    rt.block(plain.set("plain", "p")).unwrap();
    p_ssl.wait_until("ssl key", T, |p| p.get("ssl") == Some(json!("s")));
    j_ws.wait_until("ws key", T, |j| j.get("ws") == Some(json!("w")));
    p_plain.wait_until("plain key at py2p", T, |p| {
        p.get("plain") == Some(json!("p"))
    });
    j_plain.wait_until("plain key at js2p", T, |j| {
        j.get("plain") == Some(json!("p"))
    });
    assert_eq!(rt.peer_ids(ssl.mesh()), vec![p_ssl.id().to_string()]);
    assert_eq!(rt.peer_ids(ws.mesh()), vec![j_ws.id().to_string()]);
    // Nothing leaked across transports.
    assert!(p_plain.get("ssl").is_none() && j_plain.get("ws").is_none());
    assert!(ssl.get("plain").is_none() && ws.get("plain").is_none());
    for n in [ssl, ws, plain] {
        rt.block(n.close());
    }
}
