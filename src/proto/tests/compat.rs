//! Rules kept for py2p and js2p, and what rs2p refuses or tolerates from
//! any peer: framing, advertising, renegotiation, dial conflicts, limits,
//! dates, subnets, peers lists.

use super::*;

#[test]
fn small_frames_go_without_their_checksum_only_to_rs2p_peers_that_read_that() {
    use crate::proto::PeerKind::{Py, Rs};
    let mut net = Net::new(&["A", "B"]);
    net.connect(0, 1);
    // A scripted rs2p peer of an older version (no RS2P_BARE) and a py2p
    // one: both must get checked frames.
    let old_rs = net.fake(0, "R", Rs, 10);
    let py = net.fake(0, "P", Py, 11);
    let now = net.now;
    net.sunk.clear();
    net.nodes[0]
        .set(b"k".to_vec(), Value::from("v"), now)
        .unwrap();
    net.settle();
    assert_eq!(
        net.get(1, "k"),
        Some(Value::from("v")),
        "B reads the bare frame"
    );
    for f in [&old_rs, &py] {
        let frames: Vec<Bytes> = net
            .sunk
            .iter()
            .filter(|(c, _)| *c == f.conn)
            .flat_map(|(_, b)| {
                let mut buf = bytes::BytesMut::from(&b[..]);
                std::iter::from_fn(move || next_frame(&mut buf, &Limits::default()).ok().flatten())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(!frames.is_empty());
        for body in frames {
            Packed::from_body(body, &[], &Limits::default()).expect("a checked frame");
        }
    }
    // What A sends B is 32 bytes shorter than the checked frame.
    let packed = Packed::new(
        main::BROADCAST,
        b"A",
        now.unix,
        &[Value::from(sub::BROADCAST)],
    );
    let conn = net.conn_to(0, 1);
    let bare = packed.framed(net.nodes[0].mesh().framing(conn, packed.body().len()));
    assert_eq!(bare.len() + 32, packed.to_frame(None).len());
    // A frame whose checksum is wrong is still refused on a bare link.
    let mut bad = packed.body().to_vec();
    bad[0] ^= 1;
    let b_conn = net.conn_to(1, 0);
    net.nodes[1].handle_frame(b_conn, Bytes::from(bad), &Unbounded, now);
    net.settle();
    assert_eq!(net.nodes[1].stats().bad_frames, 1);
}

#[test]
fn deletes_are_not_flooded_to_js2p_peers() {
    use crate::proto::PeerKind::{Js, Py};
    let mut net = Net::new(&["A"]);
    let js = net.fake(0, "J", Js, 10);
    let py = net.fake(0, "P", Py, 11);
    let now = net.now;
    net.nodes[0]
        .set(b"k".to_vec(), Value::from(1), now)
        .unwrap();
    net.nodes[0].set(b"k".to_vec(), Value::Nil, now).unwrap();
    net.settle();
    let stores = |f: &Fake| {
        sent_to(&net, 0, f)
            .into_iter()
            .filter(|m| m.msg_type == main::BROADCAST && m.sub_flag() == Some(sub::STORE))
            .map(|m| m.payload[2].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(stores(&py), [Value::from(1), Value::Nil]);
    assert_eq!(
        stores(&js),
        [Value::from(1)],
        "js2p drops the link on a nil store"
    );
}

#[test]
fn js2p_peers_are_not_advertised_to_py2p_peers() {
    use crate::proto::PeerKind::{Js, Py, Rs};
    let mut net = Net::new(&["A"]);
    net.fake(0, "J", Js, 10);
    let py = net.fake(0, "P", Py, 11);
    let rs = net.fake(0, "R", Rs, 12);
    let listed = |f: &Fake| {
        sent_to(&net, 0, f)
            .into_iter()
            .filter(|m| m.sub_flag() == Some(sub::PEERS))
            .flat_map(|m| match crate::wire::packet::Packet::parse(&m) {
                crate::wire::packet::Packet::Peers(l) => l,
                _ => Vec::new(),
            })
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    assert!(
        !listed(&py).contains(&b"J".to_vec()),
        "py2p must not hear of J"
    );
    assert!(listed(&rs).contains(&b"J".to_vec()) && listed(&rs).contains(&b"P".to_vec()));
}

#[test]
fn renegotiation_is_answered_except_to_js2p_peers() {
    use crate::proto::PeerKind::{Js, Py};
    let mut net = Net::new(&["A"]);
    let js = net.fake(0, "J", Js, 10);
    let py = net.fake(0, "P", Py, 11);
    let list = [
        Value::from(sub::COMPRESSION),
        Value::Array(vec![Value::from(0x11)]),
    ];
    for (f, id) in [(&js, "J"), (&py, "P")] {
        let p = Packed::new(main::RENEGOTIATE, id.as_bytes(), net.now.unix, &list);
        net.feed(0, f.conn, &p);
    }
    let answers = |f: &Fake| {
        sent_to(&net, 0, f)
            .iter()
            .filter(|m| m.msg_type == main::RENEGOTIATE)
            .count()
    };
    assert_eq!(answers(&py), 1);
    assert_eq!(answers(&js), 0, "js2p crashes on a renegotiation");
}

#[test]
fn crossed_dials_keep_the_connection_of_the_larger_id() {
    let mut net = Net::new(&["2", "9"]);
    let now = net.now;
    // Both dial before either handshake is read.
    net.nodes[0].connect("h", 2, now).unwrap();
    net.nodes[1].connect("h", 1, now).unwrap();
    net.settle();
    assert_eq!(net.nodes[0].peers().len(), 1);
    assert_eq!(net.nodes[1].peers().len(), 1);
    let kept = &net.nodes[1].peers()[0];
    assert!(
        kept.outgoing,
        "node 9 (the larger id) keeps the link it dialled"
    );
    assert!(!net.nodes[0].peers()[0].outgoing);
    assert_eq!(net.wires.len(), 2, "one link left, seen from both ends");
}

/// Node 0 holds "held", written by itself.
fn holding() -> Net {
    let mut net = Net::new(&["A"]);
    let now = net.now;
    net.nodes[0]
        .set(b"held".to_vec(), Value::from("mine"), now)
        .unwrap();
    net
}

/// The py2p-like peer "P" sends node 0 a state-transfer item: `key` holds
/// "theirs".
fn transfer_from_p(net: &mut Net, py: &Fake, key: &str) {
    let item = [
        Value::from(sub::STORE),
        Value::Bin(key.as_bytes().to_vec()),
        Value::from("theirs"),
        Value::Bin(b"P".to_vec()),
        Value::from(T0 + 5),
    ];
    net.feed(0, py.conn, &Packed::new(main::WHISPER, b"P", T0, &item));
}

#[test]
fn reference_state_transfers_never_overwrite_a_held_value() {
    use crate::proto::PeerKind::Py;
    let mut net = holding();
    let py = net.fake(0, "P", Py, 11);
    for key in ["held", "new"] {
        transfer_from_p(&mut net, &py, key);
    }
    assert_eq!(net.get(0, "held"), Some(Value::from("mine")));
    assert_eq!(net.get(0, "new"), Some(Value::from("theirs")));
}

#[test]
fn what_a_reference_transfer_brings_is_passed_on_to_the_other_reference_peers() {
    use crate::proto::PeerKind::{Js, Py};
    let mut net = holding();
    let py = net.fake(0, "P", Py, 11);
    let js = net.fake(0, "J", Js, 12);
    let other_py = net.fake(0, "Q", Py, 13);
    let transferred = |net: &Net, f: &Fake| {
        sent_to(net, 0, f)
            .into_iter()
            .filter(|m| m.msg_type == main::WHISPER && m.sub_flag() == Some(sub::STORE))
            .filter_map(|m| match (&m.payload[1], m.payload.len()) {
                (Value::Bin(k), 5) => Some(String::from_utf8_lossy(k).into_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let before = [&py, &js, &other_py].map(|f| transferred(&net, f).len());
    for key in ["held", "new"] {
        transfer_from_p(&mut net, &py, key);
    }
    let after = [&py, &js, &other_py].map(|f| transferred(&net, f));
    assert_eq!(after[0].len(), before[0], "nothing goes back to its source");
    for (f, got) in [(1, &after[1]), (2, &after[2])] {
        assert_eq!(
            got[before[f]..],
            ["new".to_string()],
            "only what changed the dictionary is passed on"
        );
    }
}

fn nested(depth: usize) -> Value {
    let mut v = Value::from(1);
    for _ in 1..depth {
        v = Value::Array(vec![v]);
    }
    v
}

#[test]
fn values_peers_could_not_read_are_refused_before_anything_is_sent() {
    let mut net = Net::new(&["A", "B"]);
    net.connect(0, 1);
    let now = net.now;
    // What a peer's decoder accepts, no more and no less.
    let max = Limits::default().max_depth;
    net.nodes[0]
        .set(b"deep".to_vec(), nested(max), now)
        .unwrap();
    net.settle();
    assert_eq!(
        net.get(1, "deep"),
        Some(nested(max)),
        "the deepest allowed arrives"
    );
    let err = net.nodes[0]
        .set(b"deeper".to_vec(), nested(max + 1), now)
        .unwrap_err();
    assert!(
        matches!(err, Error::ValueTooDeep { depth, max: m, .. } if depth == max + 1 && m == max),
        "{err}"
    );
    let big = Value::Bin(vec![7; Limits::default().max_frame]);
    let err = net.nodes[0].set(b"big".to_vec(), big, now).unwrap_err();
    assert!(matches!(err, Error::ValueTooLarge { .. }), "{err}");
    // A delta whose merged map would be too deep is refused too.
    let delta = vec![(Value::from("x"), nested(max))];
    let err = net.nodes[0]
        .apply_delta(b"m".to_vec(), delta, now)
        .unwrap_err();
    assert!(matches!(err, Error::ValueTooDeep { .. }), "{err}");
    assert!(
        net.nodes[0].poll_output().is_none(),
        "a refused write sends nothing"
    );
    assert!(
        net.get(0, "deeper").is_none() && net.get(0, "big").is_none() && net.get(0, "m").is_none()
    );
}

#[test]
fn a_frame_over_a_limit_is_skipped_and_the_link_stays() {
    use crate::proto::PeerKind::Py;
    let mut net = Net::new(&["A"]);
    let py = net.fake(0, "P", Py, 11);
    for (key, value) in [("deep", nested(70)), ("fine", Value::from(1))] {
        let payload = [Value::from(sub::STORE), Value::from(key), value];
        net.feed(
            0,
            py.conn,
            &Packed::new(main::BROADCAST, b"P", T0, &payload),
        );
    }
    assert_eq!(net.get(0, "fine"), Some(Value::from(1)));
    assert!(net.get(0, "deep").is_none());
    let st = net.nodes[0].stats();
    assert_eq!((st.frames_skipped, st.bad_frames, st.peers), (1, 0, 1));
}

#[test]
fn a_store_dated_years_ahead_takes_no_lease_beyond_the_skew() {
    use crate::proto::replica::MAX_FUTURE_SKEW;
    let mut net = Net::new(&["A", "B"]);
    net.connect(0, 1);
    for (key, time) in [("ahead", T0 + 10 * 365 * 86_400), ("max", i64::MAX)] {
        let payload = [Value::from(sub::STORE), Value::from(key), Value::from(1)];
        net.inject(0, 1, &Packed::new(main::BROADCAST, b"Z", time, &payload));
        let meta = net.dicts[1].lock().unwrap().meta(key.as_bytes()).unwrap();
        assert_eq!(meta.timestamp, T0 + MAX_FUTURE_SKEW, "{key}");
    }
    let now = net.now;
    assert!(net.nodes[1]
        .set(b"ahead".to_vec(), Value::from(2), now)
        .is_err());
    net.advance(Duration::from_secs(
        (LEASE_SECS + MAX_FUTURE_SKEW + 1) as u64,
    ));
    let now = net.now;
    net.nodes[1]
        .set(b"ahead".to_vec(), Value::from(2), now)
        .unwrap();
    net.nodes[1]
        .set(b"max".to_vec(), Value::from(2), now)
        .unwrap();
}

#[test]
fn a_store_dated_before_1970_is_taken_as_dated_0() {
    use crate::proto::PeerKind::Py;
    let mut net = Net::new(&["A"]);
    let py = net.fake(0, "P", Py, 11);
    // A live write that old is outside the 60 s window: dropped.
    let payload = [Value::from(sub::STORE), Value::from("live"), Value::from(1)];
    net.feed(
        0,
        py.conn,
        &Packed::new(main::BROADCAST, b"P", i64::MIN, &payload),
    );
    assert!(net.get(0, "live").is_none());
    assert_eq!(net.nodes[0].stats().expired_broadcasts, 1);
    // In a state transfer (py2p sends the date its clock gave the write),
    // it is taken as dated 0: no lease end or age below zero anywhere.
    let item = [
        Value::from(sub::STORE),
        Value::Bin(b"min".to_vec()),
        Value::from(1),
        Value::Bin(b"P".to_vec()),
        Value::from(i64::MIN),
    ];
    net.feed(0, py.conn, &Packed::new(main::WHISPER, b"P", T0, &item));
    let meta = net.dicts[0].lock().unwrap().meta(b"min").unwrap();
    assert_eq!(meta.timestamp, 0);
    // Its lease ended long ago: anyone may write it.
    let now = net.now;
    net.nodes[0]
        .set(b"min".to_vec(), Value::from(2), now)
        .unwrap();
    assert_eq!(net.nodes[0].stats().peers, 1);
}

/// A node on another subnet is refused, and the dialling side hears why
/// (the `rs2p` command's start-up and the shell's `watch` show it).
#[test]
fn a_peer_on_another_subnet_is_refused_with_an_event() {
    let mut net = Net::new(&["a", "b"]);
    let settings = Settings::new(b"b".to_vec(), "other", ("h", 2));
    net.nodes[1] = Node::new(settings, Some(Replica::new(net.dicts[1].clone(), true)), 1);
    net.connect(0, 1);
    net.settle();
    let refused: Vec<_> = net
        .events
        .iter()
        .filter_map(|(i, e)| match e {
            Event::PeerRefused { dialed, id, reason } => {
                Some((*i, dialed.clone(), id.clone(), *reason))
            }
            _ => None,
        })
        .collect();
    assert!(
        refused.contains(&(
            0,
            Some(("h".to_string(), 2)),
            b"b".to_vec(),
            "peer on another subnet or transport"
        )),
        "{refused:?}"
    );
    assert!(!net
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::PeerJoined { .. })));
}

/// A node short of outgoing links that asked a peer for peers hears of that
/// peer's next new peer at once, instead of at its next refresh (up to a
/// minute later): a chain of joins settles as soon as the last one is in.
#[test]
fn a_node_short_of_links_hears_of_its_peers_new_peers_at_once() {
    // Later nodes get smaller ids, so a newcomer's peers list (sorted by
    // id) leads with other newcomers, not with the first nodes, which stay
    // short of outgoing links.
    let names: Vec<String> = (0..9).map(|i| format!("n{}", 9 - i)).collect();
    let ids: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut net = Net::new(&ids);
    // Each node dials the one before it, 300 ms apart (the refresh timers
    // run, so the nodes short of links ask for peers now and then); after
    // the last join no time passes: only what that join itself sends can
    // link it to the nodes still short of links.
    for i in 1..ids.len() {
        if i > 1 {
            net.advance(Duration::from_millis(300));
        }
        net.connect(i, i - 1);
    }
    let peers: Vec<Vec<PeerInfo>> = net.nodes.iter().map(Node::peers).collect();
    for (i, p) in peers.iter().enumerate() {
        let outgoing = p.iter().filter(|p| p.outgoing).count();
        assert!(
            outgoing >= 4 || p.len() == ids.len() - 1,
            "node {i} has {outgoing} outgoing links and {} peers of {}: {:?}",
            p.len(),
            ids.len() - 1,
            p.iter().map(|p| (&p.id, p.outgoing)).collect::<Vec<_>>()
        );
    }
}
