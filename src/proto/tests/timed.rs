//! Virtual-time tests of the timed rules: the 60 s broadcast window, the
//! one-hour lease and its same-second tie, 24 h tombstones, re-dial backoff,
//! keepalive probes.

use super::*;

#[test]
fn broadcasts_older_than_60_s_are_dropped() {
    let mut net = Net::new(&["A", "B"]);
    net.connect(0, 1);
    let user = |text: &str| [Value::from(sub::BROADCAST), Value::from(text)];
    for (age, name) in [(60, "at the edge"), (61, "too old"), (0, "fresh")] {
        let p = Packed::new(main::BROADCAST, b"C", net.now.unix - age, &user(name));
        net.inject(0, 1, &p);
    }
    let got: Vec<&Value> = net.received.iter().map(|(_, p)| &p[1]).collect();
    assert_eq!(got, [&Value::from("at the edge"), &Value::from("fresh")]);
    assert_eq!(net.nodes[1].stats().expired_broadcasts, 1);
    // A minute later the window has moved: the same message is new again
    // only if still inside it (it is not).
    net.advance(Duration::from_secs(61));
    let p = Packed::new(main::BROADCAST, b"C", T0, &user("fresh"));
    net.inject(0, 1, &p);
    assert_eq!(net.received.len(), 2);
}

#[test]
fn a_lease_holds_for_an_hour_after_the_last_write() {
    let mut net = Net::new(&["A", "B"]);
    net.connect(0, 1);
    let now = net.now;
    net.nodes[0]
        .set(b"k".to_vec(), Value::from(1), now)
        .unwrap();
    net.settle();
    assert_eq!(net.get(1, "k"), Some(Value::from(1)));
    net.advance(Duration::from_secs(LEASE_SECS as u64 - 1));
    let now = net.now;
    let err = net.nodes[1]
        .set(b"k".to_vec(), Value::from(2), now)
        .unwrap_err();
    assert!(
        matches!(err, Error::LeaseHeld { expires_at, .. } if expires_at == T0 + LEASE_SECS),
        "{err}"
    );
    // The owner writes again: its lease runs an hour from this write.
    net.nodes[0]
        .set(b"k".to_vec(), Value::from(3), now)
        .unwrap();
    net.settle();
    net.advance(Duration::from_secs(LEASE_SECS as u64));
    let now = net.now;
    assert!(net.nodes[1]
        .set(b"k".to_vec(), Value::from(4), now)
        .is_err());
    net.advance(Duration::from_secs(2));
    let now = net.now;
    net.nodes[1]
        .set(b"k".to_vec(), Value::from(5), now)
        .unwrap();
    net.settle();
    assert_eq!(net.get(0, "k"), Some(Value::from(5)));
    assert_eq!(net.get(1, "k"), Some(Value::from(5)));
}

#[test]
fn writes_in_the_same_second_go_to_the_smaller_owner_id() {
    // Two writers in one second reach a third node in both orders; it keeps
    // the write of the smaller id either way.
    for order in [["Z", "A"], ["A", "Z"]] {
        let mut net = Net::new(&["M", "R"]);
        net.connect(0, 1);
        for owner in order {
            let payload = [
                Value::from(sub::STORE),
                Value::Bin(b"k".to_vec()),
                Value::from(owner),
            ];
            let p = Packed::new(main::BROADCAST, owner.as_bytes(), T0, &payload);
            net.inject(0, 1, &p);
        }
        assert_eq!(net.get(1, "k"), Some(Value::from("A")), "order {order:?}");
    }
}

#[test]
fn tombstones_are_kept_for_24_hours() {
    let mut net = Net::new(&["A"]);
    let now = net.now;
    for k in ["gone", "also"] {
        net.nodes[0].set(k.into(), Value::from(1), now).unwrap();
    }
    net.nodes[0].set(b"gone".to_vec(), Value::Nil, now).unwrap();
    net.settle();
    assert_eq!(net.dicts[0].lock().unwrap().tombstones(), 1);
    // Tombstones are pruned when the next delete is recorded.
    net.advance(Duration::from_secs(24 * 3600));
    let now = net.now;
    net.nodes[0].set(b"also".to_vec(), Value::Nil, now).unwrap();
    assert_eq!(
        net.dicts[0].lock().unwrap().tombstones(),
        2,
        "not older than 24 h yet"
    );
    net.advance(Duration::from_secs(2));
    let now = net.now;
    net.nodes[0]
        .set(b"new".to_vec(), Value::from(1), now)
        .unwrap();
    net.nodes[0].set(b"new".to_vec(), Value::Nil, now).unwrap();
    let d = net.dicts[0].lock().unwrap();
    assert_eq!(d.tombstones(), 2, "the first tombstone left after 24 h");
    assert!(d.version(b"gone").is_none() && d.version(b"also").is_some());
}

#[test]
fn a_lost_peer_is_redialled_with_exponential_backoff_for_an_hour() {
    let mut net = Net::new(&["A", "B"]);
    net.connect(0, 1);
    assert_eq!(net.dials[0].len(), 1);
    // B's side drops the link while B stays unreachable.
    net.reachable = false;
    let lost = net.now.elapsed;
    let conn = net.conn_to(1, 0);
    let now = net.now;
    net.nodes[1].handle_closed(conn, "test", now);
    net.settle();
    net.advance(Duration::from_secs(120));
    let gaps: Vec<u64> = std::iter::once(lost)
        .chain(net.dials[0][1..].iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    let first = FIRST_BACKOFF.as_millis() as u64;
    let max = MAX_BACKOFF.as_millis() as u64;
    assert_eq!(
        &gaps[..7],
        &[
            first,
            2 * first,
            4 * first,
            8 * first,
            16 * first,
            32 * first,
            max
        ],
        "all gaps: {gaps:?}"
    );
    // It comes back: the next attempt joins it again.
    net.reachable = true;
    net.advance(MAX_BACKOFF);
    assert_eq!(net.nodes[0].peers().len(), 1);
    // Lost again and never back: the re-dials stop after an hour.
    net.reachable = false;
    let conn = net.conn_to(1, 0);
    let now = net.now;
    net.nodes[1].handle_closed(conn, "test", now);
    net.settle();
    net.advance(REDIAL_FOR + Duration::from_secs(60));
    let before = net.dials[0].len();
    net.advance(Duration::from_secs(3600));
    assert_eq!(
        net.dials[0].len(),
        before,
        "still re-dialling after an hour"
    );
}

#[test]
fn a_silent_link_is_probed_then_dropped() {
    use crate::proto::mesh::{PROBE_AFTER, STALLED_AFTER};
    let mut net = Net::new(&["A", "B"]);
    net.connect(1, 0);
    // Answers to probes keep a quiet link up.
    net.advance(STALLED_AFTER * 3);
    assert_eq!(net.nodes[0].peers().len(), 1);
    // B stops reading and answering (a stall): A probes, then drops it.
    net.lossy.insert((1, 0));
    net.advance(PROBE_AFTER);
    assert_eq!(net.nodes[0].peers().len(), 1, "probed, not dropped yet");
    net.advance(STALLED_AFTER);
    assert_eq!(net.nodes[0].peers().len(), 0);
    assert_eq!(net.nodes[0].stats().stalled_links, 1);
}

/// A node rewrites a key within one second while a peer misses the
/// rewrites; when the two reconcile, the last write wins on both — before,
/// the two versions were equal (same owner, same second) and the larger
/// encoding won, reverting the writer's own acknowledged write.
#[test]
fn rewrites_within_a_second_survive_reconciliation() {
    let mut net = Net::new(&["A", "B"]);
    net.connect(0, 1);
    net.advance(Duration::from_secs(3));
    let set = |net: &mut Net, key: &str, v: Value| {
        let now = net.now;
        net.nodes[0].set(key.as_bytes().to_vec(), v, now).unwrap();
        net.settle();
    };
    set(&mut net, "k", Value::from("a much longer first value"));
    set(&mut net, "gone", Value::from("a much longer first value"));
    assert_eq!(
        net.get(1, "k"),
        Some(Value::from("a much longer first value"))
    );
    // B misses what follows, all in the same second.
    net.lossy.insert((0, 1));
    set(&mut net, "k", Value::from("second"));
    set(&mut net, "k", Value::from("3rd"));
    set(&mut net, "gone", Value::Nil);
    set(&mut net, "gone", Value::from("back"));
    net.lossy.clear();
    // The periodic reconciliation round.
    net.advance(Duration::from_secs(40));
    for node in [0, 1] {
        assert_eq!(net.get(node, "k"), Some(Value::from("3rd")), "node {node}");
        assert_eq!(
            net.get(node, "gone"),
            Some(Value::from("back")),
            "node {node}"
        );
    }
    // Dated ahead by at most OWN_AHEAD seconds, however many rewrites.
    for i in 0..20 {
        set(&mut net, "hot", Value::from(i));
    }
    let t = net.dicts[0].lock().unwrap().meta(b"hot").unwrap().timestamp;
    assert!(t <= net.now.unix + crate::proto::replica::OWN_AHEAD, "{t}");
    assert!(same(&net, 0, 1));
}
