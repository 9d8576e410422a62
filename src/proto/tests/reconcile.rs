//! Between rs2p nodes: merges while connected, reconciliation on join, on
//! return and every round, and what neighbours share when a writer dies.

use super::*;

#[test]
fn writes_straddling_a_second_settle_while_connected() {
    let mut net = Net::new(&["A", "B"]);
    net.connect(0, 1);
    // A writes at the end of one second, B at the start of the next, each
    // before hearing of the other: both refuse the other's write.
    let now = net.now;
    net.nodes[0]
        .set(b"k".to_vec(), Value::from("a"), now)
        .unwrap();
    net.set_time(Duration::from_secs(1));
    let now = net.now;
    net.nodes[1]
        .set(b"k".to_vec(), Value::from("b"), now)
        .unwrap();
    net.settle();
    // The lease taken first (A's) wins on both sides.
    assert_eq!(net.get(0, "k"), Some(Value::from("a")));
    assert_eq!(net.get(1, "k"), Some(Value::from("a")));
    let v0 = net.dicts[0].lock().unwrap().version(b"k");
    let v1 = net.dicts[1].lock().unwrap().version(b"k");
    assert_eq!(v0, v1);
}

#[test]
fn rs2p_peers_reconcile_on_join_and_send_only_what_differs() {
    let mut net = Net::new(&["A", "B"]);
    fill(&mut net, 0, (0..2000).map(|i| format!("k{i}")));
    // B holds the same versions (a copy of A's dictionary) but for 10 keys
    // it lacks and 5 of its own.
    {
        let a = net.dicts[0].lock().unwrap();
        let mut b = net.dicts[1].lock().unwrap();
        for (k, v, ver) in a.versions() {
            if !k.ends_with(b"7") || k.len() < 5 || k[2] != b'1' {
                b.load(k, Some(&v), ver.meta.clone(), ver.since);
            }
        }
    }
    fill(&mut net, 1, (0..5).map(|i| format!("b{i}")));
    let missing = 2000 + 5 - net.dicts[1].lock().unwrap().len();
    assert!(missing > 0 && missing < 40, "{missing}");
    net.connect(1, 0);
    assert!(same(&net, 0, 1), "identical after the session");
    let moved = net.stores_in[0] + net.stores_in[1];
    assert!(
        moved <= 3 * (missing + 5),
        "{moved} stores crossed for {} differences",
        missing + 5
    );
}

/// A node that comes back holding most of the dictionary finds what
/// differs from the sketch in the first message: one reconciliation message
/// crosses, however large the dictionary, and only the differing versions
/// follow.
#[test]
fn a_returning_peer_finds_the_difference_in_one_message() {
    let mut net = Net::new(&["A", "B"]);
    fill(&mut net, 0, (0..5000).map(|i| format!("k{i}")));
    {
        let a = net.dicts[0].lock().unwrap();
        let mut b = net.dicts[1].lock().unwrap();
        for (k, v, ver) in a.versions() {
            b.load(k, Some(&v), ver.meta.clone(), ver.since);
        }
    }
    // While B is away, A rewrites 40 keys and adds 10.
    net.advance(Duration::from_secs(5));
    fill(
        &mut net,
        0,
        (0..40).chain(6000..6010).map(|i| format!("k{i}")),
    );
    net.connect(1, 0);
    assert!(same(&net, 0, 1), "identical after the session");
    assert_eq!(net.syncs_in, vec![1, 0], "one sketch, no ranges");
    // B's 40 old versions cross too (both sides send what differs; the
    // merge rule keeps A's), A's 50.
    let moved = net.stores_in[0] + net.stores_in[1];
    assert_eq!(moved, 90, "{:?}", net.stores_in);
    // Between rs2p nodes the versions travel in batches, one message a
    // side here.
    assert_eq!(net.batches_in, vec![1, 1]);
}

#[test]
fn a_write_lost_on_a_live_link_arrives_by_the_next_periodic_round() {
    use crate::proto::replica::{RECONCILE_EVERY, RECONCILE_JITTER};
    let mut net = Net::new(&["A", "B"]);
    net.connect(1, 0);
    // A's write to B is lost (the link drops bytes, the connection stays).
    net.lossy.insert((0, 1));
    let now = net.now;
    net.nodes[0]
        .set(b"lost".to_vec(), Value::from(1), now)
        .unwrap();
    net.settle();
    net.lossy.clear();
    assert!(net.get(1, "lost").is_none());
    net.advance(RECONCILE_EVERY + RECONCILE_JITTER);
    assert_eq!(net.get(1, "lost"), Some(Value::from(1)));
    assert_eq!(net.nodes[1].peers().len(), 1, "without a reconnect");
}

#[test]
fn a_crashed_writer_s_last_writes_are_shared_by_its_neighbours_at_once() {
    // Triangle: once the broadcast tree has settled, B does not push A's
    // writes to C (A sends them to C itself). A's next write reaches B but
    // is lost towards C; then A dies before anything else happens.
    let mut net = Net::new(&["A", "B", "C"]);
    net.connect(0, 1);
    net.connect(0, 2);
    net.connect(1, 2);
    fill(&mut net, 0, (0..3).map(|i| format!("settle{i}")));
    net.lossy.insert((0, 2));
    let now = net.now;
    net.nodes[0]
        .set(b"stranded".to_vec(), Value::from(1), now)
        .unwrap();
    net.settle();
    assert_eq!(net.get(1, "stranded"), Some(Value::from(1)));
    assert!(net.get(2, "stranded").is_none(), "the tree left C to A");
    // A crashes: B and C see their links to it end.
    net.lossy.clear();
    for (j, c) in [(1, net.conn_to(1, 0)), (2, net.conn_to(2, 0))] {
        let now = net.now;
        net.nodes[j].handle_closed(c, "reset", now);
    }
    net.settle();
    assert_eq!(
        net.get(2, "stranded"),
        Some(Value::from(1)),
        "without waiting for a round"
    );
}

/// Send queues with room, and a shell that takes a transfer a slice at a
/// time (its writers run between calls, as with one tokio worker).
struct Sliced;

impl Room for Sliced {
    fn queued(&self, _conn: ConnId) -> Option<(usize, usize)> {
        Some((0, usize::MAX))
    }

    fn slice(&self) -> usize {
        16 << 10
    }
}

#[test]
fn a_transfer_is_made_a_slice_at_a_time_when_the_shell_asks() {
    use crate::proto::replica::Pump;
    let mut net = Net::new(&["A"]);
    fill(&mut net, 0, (0..5000).map(|i| format!("k{i}")));
    let r = reconciling_peer(&mut net, 0, "R", 10);
    // R holds nothing: A queues its 5,000 keys, taken 1,024 at a time
    // (sent one store a message to this peer, which takes no batches), and
    // makes one such batch (over the 16 KiB slice) before it returns.
    let msg = holds_nothing(&net, "R", 1);
    net.feed_room(0, r.conn, &msg, &Sliced);
    assert_eq!(messages_with(&net, &r, STORES), 1024);
    let mut calls = Vec::new();
    loop {
        let now = net.now;
        let pumped = net.nodes[0].pump(&Sliced, now);
        net.settle();
        calls.push(pumped);
        if pumped != Pump::Ready || calls.len() > 10 {
            break;
        }
    }
    assert_eq!(
        calls,
        [Pump::Ready, Pump::Ready, Pump::Ready, Pump::Done],
        "a batch a call, and nothing left at the end"
    );
    assert_eq!(messages_with(&net, &r, STORES), 5000);
    assert_eq!(net.nodes[0].replica().expect("sync node").queued_keys(), 0);
    // Without a slice (the simulator), the whole transfer goes at once.
    let r2 = reconciling_peer(&mut net, 0, "S", 11);
    let msg = holds_nothing(&net, "S", 1);
    net.feed(0, r2.conn, &msg);
    assert_eq!(messages_with(&net, &r2, STORES), 5000);
}

/// A node answering a peer that holds nothing says how many keys follow,
/// ahead of the first of them; fewer than [`rec::EXPECT_MIN`] go without.
#[test]
fn a_holder_announces_how_many_new_keys_follow() {
    let mut net = Net::new(&["A"]);
    fill(&mut net, 0, (0..5000).map(|i| format!("k{i}")));
    let r = reconciling_peer(&mut net, 0, "R", 10);
    let msg = holds_nothing(&net, "R", 1);
    net.feed(0, r.conn, &msg);
    let sent = sent_to(&net, 0, &r);
    let first_store = sent
        .iter()
        .position(|m| m.sub_flag().is_some_and(|f| STORES.contains(&f)))
        .expect("the keys were sent");
    let hints: Vec<(usize, Option<u64>)> = sent
        .iter()
        .enumerate()
        .filter(|(_, m)| m.sub_flag() == Some(sub::RS2P_EXPECT))
        .map(|(i, m)| (i, m.payload.get(1).and_then(Value::as_u64)))
        .collect();
    assert_eq!(hints.len(), 1, "{hints:?}");
    assert_eq!(hints[0].1, Some(5000));
    assert!(hints[0].0 < first_store, "the hint comes first");

    // A small answer goes without a hint.
    let mut net = Net::new(&["A"]);
    fill(&mut net, 0, (0..100).map(|i| format!("k{i}")));
    let r = reconciling_peer(&mut net, 0, "R", 10);
    let msg = holds_nothing(&net, "R", 1);
    net.feed(0, r.conn, &msg);
    assert_eq!(messages_with(&net, &r, STORES), 100);
    assert_eq!(messages_with(&net, &r, &[sub::RS2P_EXPECT]), 0);
}

/// Whichever side opens the session, the node joining gets one hint:
/// dialing (the holder answers its empty ranges) or dialed (the holder's
/// ranges come back as empty lists).
#[test]
fn a_joining_node_gets_one_hint_whoever_dials() {
    for holder_dials in [false, true] {
        let mut net = Net::new(&["A", "B"]);
        fill(&mut net, 0, (0..5000).map(|i| format!("k{i}")));
        if holder_dials {
            net.connect(0, 1);
        } else {
            net.connect(1, 0);
        }
        assert!(same(&net, 0, 1));
        assert_eq!(net.expects_in[1], [5000], "holder dials: {holder_dials}");
        assert!(net.expects_in[0].is_empty());
        assert!(net.dicts[1].lock().unwrap().map.capacity() >= 5000);
    }
}

/// The hint makes room at once (the index is not grown again while the
/// keys arrive), never more than `MAX_RESERVE` keys however large the
/// count, and only from a peer that reconciles.
#[test]
fn a_hint_makes_room_at_once_and_only_so_much() {
    use crate::proto::dict::MAX_RESERVE;
    let capacity = |net: &Net| net.dicts[0].lock().unwrap().map.capacity();
    let mut net = Net::new(&["B"]);
    let py = net.fake(0, "P", crate::PeerKind::Py, 9);
    let hint = |net: &Net, from: &str, n: u64| {
        whisper(net, from, &[Value::from(sub::RS2P_EXPECT), Value::from(n)])
    };
    let msg = hint(&net, "P", 5000);
    net.feed(0, py.conn, &msg);
    assert!(capacity(&net) < 5000, "not from a py2p peer");
    let r = reconciling_peer(&mut net, 0, "R", 10);
    let msg = hint(&net, "R", 5000);
    net.feed(0, r.conn, &msg);
    let made = capacity(&net);
    assert!(made >= 5000, "{made}");
    fill(&mut net, 0, (0..5000).map(|i| format!("k{i}")));
    assert_eq!(capacity(&net), made, "no growth while the keys came");
    // A hostile count.
    let msg = hint(&net, "R", u64::MAX);
    net.feed(0, r.conn, &msg);
    let made = capacity(&net);
    assert!((MAX_RESERVE..2 * MAX_RESERVE).contains(&made), "{made}");
    let msg = hint(&net, "R", u64::MAX);
    net.feed(0, r.conn, &msg);
    assert_eq!(capacity(&net), made, "room is made once");
    let msg = whisper(
        &net,
        "R",
        &[Value::from(sub::RS2P_EXPECT), Value::from("x")],
    );
    net.feed(0, r.conn, &msg);
    assert_eq!(net.nodes[0].peers().len(), 2, "both links kept");
}
