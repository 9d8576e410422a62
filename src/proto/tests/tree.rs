//! The broadcast tree: grafts, announcements and their back-off, peers of
//! older versions.

use super::*;

/// Whole fingerprints of `n` broadcasts no node has seen.
fn unseen(net: &Net, n: i64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let p = Packed::new(main::BROADCAST, b"X", net.now.unix, &[Value::from(i)]);
            Value::from(crate::proto::seen::fingerprint(&p.id()))
        })
        .collect()
}

/// The scripted peer `fake` sends node 0 `[flag, ids]`.
fn tell(net: &mut Net, fake: &Fake, flag: u8, ids: Vec<Value>) {
    let now = net.now;
    let payload = [Value::from(flag), Value::Array(ids)];
    net.feed(
        0,
        fake.conn,
        &Packed::new(main::WHISPER, b"R", now.unix, &payload),
    );
}

/// The id lists of the grafts node 0 sent `fake`.
fn grafts_to(net: &Net, fake: &Fake) -> Vec<Value> {
    sent_to(net, 0, fake)
        .into_iter()
        .filter(|m| m.sub_flag() == Some(sub::RS2P_GRAFT))
        .filter_map(|m| m.payload.get(1).cloned())
        .collect()
}

/// Nodes that push their own broadcasts along the tree only, as rs2p nodes
/// before [`RS2P_CREATOR_PUSH`](crate::wire::flags::compression::RS2P_CREATOR_PUSH).
fn older_nodes(ids: &[&str]) -> Net {
    Net::with_settings(ids, |s| s.creator_push = false)
}

/// Three older nodes (see [`older_nodes`]) linked B-A and C-B, and by the
/// peers exchange A-C: a triangle, settled.
fn older_triangle() -> Net {
    let mut net = older_nodes(&["A", "B", "C"]);
    net.connect(1, 0);
    net.connect(2, 1);
    net.advance(Duration::from_secs(3));
    net
}

/// A scripted rs2p peer on node 0 with these capabilities.
fn tree_peer(net: &mut Net, caps: &[u8]) -> Fake {
    net.fake_with(0, "R", crate::proto::PeerKind::Rs, 10, caps)
}

#[test]
fn a_node_that_loses_its_last_tree_link_grafts_the_others_back() {
    // Triangle: once the tree has settled, C gets A's writes from A only
    // (its link to B is out of the tree). The nodes push their own writes
    // along the tree only, as rs2p nodes before the creator push did (with
    // it, B never relays A's writes to C and no link ever leaves).
    let mut net = older_nodes(&["A", "B", "C"]);
    net.connect(0, 1);
    net.connect(0, 2);
    net.connect(1, 2);
    fill(&mut net, 0, (0..3).map(|i| format!("settle{i}")));
    let grafts = net.nodes[2].stats().tree_grafts;
    // The link A-C ends (both ends see it); A and B stay linked.
    let (ac, ca) = (net.conn_to(0, 2), net.conn_to(2, 0));
    net.wires.remove(&(0, ac));
    net.wires.remove(&(2, ca));
    let now = net.now;
    net.nodes[0].handle_closed(ac, "reset", now);
    net.nodes[2].handle_closed(ca, "reset", now);
    net.settle();
    assert_eq!(net.nodes[2].stats().tree_grafts, grafts + 1, "C grafts B");
    // A's next write reaches C through B at once, not after an
    // announcement and a graft.
    fill(&mut net, 0, ["after".to_string()]);
    assert_eq!(net.get(2, "after"), Some(Value::from(0)));
}

#[test]
fn a_broadcast_lost_on_a_tree_link_is_grafted_from_an_announcer() {
    use crate::proto::mesh::{ANNOUNCE_AFTER, GRAFT_AFTER};
    // Writes along the tree only (see above): a link leaves the tree.
    let mut net = older_triangle();
    let user = |i: i64| [Value::from(sub::BROADCAST), Value::from(i)];
    for i in 0..3 {
        let now = net.now;
        net.nodes[0].send(main::BROADCAST, &user(i), now);
        net.settle();
    }
    let st: Vec<_> = net.nodes.iter().map(Node::stats).collect();
    assert!(st.iter().map(|s| s.tree_prunes).sum::<u64>() >= 1, "{st:?}");
    let dups: u64 = st.iter().map(|s| s.duplicate_broadcasts).sum();
    // A's pushes to C are lost from now on: C hears of the next broadcast
    // from B's announcement and grafts it.
    net.lossy.insert((0, 2));
    let now = net.now;
    net.nodes[0].send(main::BROADCAST, &user(9), now);
    net.settle();
    let at_c = |net: &Net| {
        net.received
            .iter()
            .filter(|(n, p)| *n == 2 && p[1] == Value::from(9))
            .count()
    };
    assert_eq!(at_c(&net), 0, "C got it before any graft");
    // The announcement goes out up to a quarter of its gap late (jitter).
    net.advance(ANNOUNCE_AFTER * 5 / 4 + GRAFT_AFTER + Duration::from_millis(10));
    assert_eq!(at_c(&net), 1);
    assert!(net.nodes[2].stats().tree_grafts >= 1);
    let after: u64 = net
        .nodes
        .iter()
        .map(|n| n.stats().duplicate_broadcasts)
        .sum();
    assert_eq!(after, dups, "the graft brought no duplicate");
    // Between current rs2p nodes ids travel as 4-byte short ids in a bin.
    assert!(net
        .tree_ids
        .iter()
        .any(|(j, f, _)| *j == 1 && *f == sub::RS2P_GRAFT));
    for (_, f, ids) in &net.tree_ids {
        match ids {
            Value::Bin(b) => assert_eq!(b.len() % 4, 0),
            Value::Array(a) => assert!(a.is_empty(), "sub-flag {f}: {ids:?}"),
            other => panic!("sub-flag {f}: {other:?}"),
        }
    }
}

#[test]
fn a_tree_peer_without_compact_frames_is_announced_to_and_grafted_from_by_whole_ids() {
    use crate::proto::mesh::GRAFT_AFTER;
    use crate::wire::flags::compression::{RS2P_MARKER, RS2P_TREE};
    let mut net = Net::new(&["A"]);
    // An rs2p peer of an older version: in the tree, no compact frames.
    let old = tree_peer(&mut net, &[RS2P_MARKER, RS2P_TREE]);
    // It announces a broadcast A has not seen, by its whole fingerprint.
    let ids = unseen(&net, 1);
    tell(&mut net, &old, sub::RS2P_IHAVE, ids.clone());
    net.sunk.clear();
    net.advance(GRAFT_AFTER + Duration::from_millis(10));
    assert_eq!(grafts_to(&net, &old), vec![Value::Array(ids)]);
}

/// In a settled tree the announcements on a lazy link are redundant: the
/// gap between two batches doubles up to `MAX_ANNOUNCE_GAP`, so a steady
/// stream of broadcasts costs a few announcement frames per link, not one
/// per `ANNOUNCE_AFTER`.
#[test]
fn announcements_back_off_while_the_tree_is_settled() {
    use crate::proto::mesh::{ANNOUNCE_AFTER, MAX_ANNOUNCE_GAP};
    // Writes along the tree only (see above), so a link is out of it.
    let mut net = older_triangle();
    let user = |i: i64| [Value::from(sub::BROADCAST), Value::from(i)];
    let every = Duration::from_millis(50);
    let broadcast = |net: &mut Net, i: i64| {
        let now = net.now;
        net.nodes[0].send(main::BROADCAST, &user(i), now);
        net.settle();
        net.advance(every);
    };
    // The tree forms (a prune) and the gaps grow.
    for i in 0..100 {
        broadcast(&mut net, i);
    }
    let st: Vec<_> = net.nodes.iter().map(Node::stats).collect();
    assert!(st.iter().map(|s| s.tree_prunes).sum::<u64>() >= 1, "{st:?}");
    let whispers =
        |net: &Net| -> u64 { net.nodes.iter().map(|n| n.stats().tree_announcements).sum() };
    let before = whispers(&net);
    let window = 4 * MAX_ANNOUNCE_GAP;
    let count = (window.as_millis() / every.as_millis()) as i64;
    for i in 0..count {
        broadcast(&mut net, 100 + i);
    }
    let sent = whispers(&net) - before;
    // Each lazy direction (at most 2 in a triangle) sends about one batch
    // per MAX_ANNOUNCE_GAP: 8 or so in the window, where a fixed
    // ANNOUNCE_AFTER would have sent 80.
    let fixed = 2 * (window.as_millis() / ANNOUNCE_AFTER.as_millis()) as u64;
    assert!(
        sent <= 12,
        "{sent} announcements in {window:?} (a fixed gap: {fixed})"
    );
    assert!(sent >= 2, "{sent}: the lazy link still hears of broadcasts");
    // Every broadcast reached both other nodes once.
    for n in [1, 2] {
        let got = net.received.iter().filter(|(k, _)| *k == n).count() as i64;
        assert_eq!(got, 100 + count, "node {n}");
    }
}

/// A batch of announcements is not due exactly a gap after its first id:
/// the gaps are multiples of 100 ms, so with a program writing every 50 ms
/// every node's batches went out in the very millisecond of a later write
/// (all nodes note the same write first), on every link out of the tree,
/// just as that write was being relayed.
#[test]
fn announcement_batches_do_not_fall_on_a_steady_writers_beat() {
    let mut net = older_triangle();
    let ihaves = |net: &Net| {
        net.tree_ids
            .iter()
            .filter(|(_, f, _)| *f == sub::RS2P_IHAVE)
            .count()
    };
    let (mut batches, mut on_the_beat) = (0, 0);
    for i in 0..400 {
        let now = net.now;
        let user = [Value::from(sub::BROADCAST), Value::from(i)];
        net.nodes[0].send(main::BROADCAST, &user, now);
        net.settle();
        // Fifty 1 ms steps to the next write: a batch due on the beat goes
        // out in the last one.
        for step in 0..50 {
            let before = ihaves(&net);
            net.advance(Duration::from_millis(1));
            let sent = ihaves(&net) - before;
            batches += sent;
            if step == 49 {
                on_the_beat += sent;
            }
        }
    }
    assert!(batches >= 8, "{batches} batches: the tree has a lazy link");
    assert!(
        on_the_beat * 4 <= batches,
        "{on_the_beat} of {batches} announcement batches on a write's beat"
    );
}

#[test]
fn overdue_ids_are_grafted_in_one_message_per_announcer() {
    use crate::proto::mesh::GRAFT_AFTER;
    use crate::wire::flags::compression::{RS2P_MARKER, RS2P_TREE};
    let mut net = Net::new(&["A"]);
    let peer = tree_peer(&mut net, &[RS2P_MARKER, RS2P_TREE]);
    // 300 broadcasts A has not seen, announced at once.
    let ids = unseen(&net, 300);
    tell(&mut net, &peer, sub::RS2P_IHAVE, ids.clone());
    net.sunk.clear();
    net.advance(GRAFT_AFTER + Duration::from_millis(10));
    let grafts = grafts_to(&net, &peer);
    assert_eq!(grafts.len(), 1, "one graft for the 300 ids");
    let mut asked = grafts[0].as_array().expect("whole ids").to_vec();
    let mut want = ids;
    asked.sort_by_key(|v| v.as_u64());
    want.sort_by_key(|v| v.as_u64());
    assert_eq!(asked, want);
}

/// The syncs (reconciliation messages) node 0 sent to `fake`.
fn syncs_to(net: &Net, fake: &Fake) -> usize {
    sent_to(net, 0, fake)
        .iter()
        .filter(|m| m.sub_flag() == Some(sub::RS2P_SYNC))
        .count()
}

#[test]
fn a_graft_for_a_broadcast_no_longer_held_reconciles_at_once() {
    use crate::wire::flags::compression::{RS2P_MARKER, RS2P_RECONCILES, RS2P_TREE};
    let mut net = Net::new(&["A"]);
    let peer = tree_peer(&mut net, &[RS2P_MARKER, RS2P_RECONCILES, RS2P_TREE]);
    net.sunk.clear();
    // The peer asks for a broadcast A never held (or let go of).
    let ids = unseen(&net, 1);
    tell(&mut net, &peer, sub::RS2P_GRAFT, ids.clone());
    assert_eq!(
        syncs_to(&net, &peer),
        1,
        "A reconciles with the peer at once"
    );
    // Another one within the second opens no second session.
    tell(&mut net, &peer, sub::RS2P_GRAFT, ids);
    assert_eq!(syncs_to(&net, &peer), 1);
}

#[test]
fn an_announced_broadcast_no_announcer_sends_is_reconciled_for() {
    use crate::proto::mesh::GRAFT_AFTER;
    use crate::wire::flags::compression::{RS2P_MARKER, RS2P_RECONCILES, RS2P_TREE};
    let mut net = Net::new(&["A"]);
    let peer = tree_peer(&mut net, &[RS2P_MARKER, RS2P_RECONCILES, RS2P_TREE]);
    let ids = unseen(&net, 1);
    tell(&mut net, &peer, sub::RS2P_IHAVE, ids);
    net.sunk.clear();
    // A grafts, the peer never answers; once no announcer is left to ask,
    // A reconciles with the one it asked.
    net.advance(GRAFT_AFTER + Duration::from_millis(10));
    assert_eq!(syncs_to(&net, &peer), 0, "grafted, not reconciled yet");
    net.advance(GRAFT_AFTER + Duration::from_millis(10));
    assert_eq!(syncs_to(&net, &peer), 1);
}

/// Every broadcast A writes in this net: (duplicates, relays) summed over
/// the nodes, and whether every node got all of them.
fn write_from(net: &mut Net, writer: usize, n: i64) -> (u64, u64, bool) {
    let before: Vec<_> = net.nodes.iter().map(Node::stats).collect();
    let user = |i: i64| [Value::from(sub::BROADCAST), Value::from(1000 + i)];
    for i in 0..n {
        let now = net.now;
        net.nodes[writer].send(main::BROADCAST, &user(i), now);
        net.settle();
        net.advance(Duration::from_millis(20));
    }
    let after: Vec<_> = net.nodes.iter().map(Node::stats).collect();
    let sum = |f: fn(&crate::proto::mesh::NodeStats) -> u64| -> u64 {
        after.iter().zip(&before).map(|(a, b)| f(a) - f(b)).sum()
    };
    let all = (0..net.nodes.len()).filter(|&j| j != writer).all(|j| {
        (0..n).all(|i| {
            net.received
                .iter()
                .any(|(k, p)| *k == j && p[1] == Value::from(1000 + i))
        })
    });
    (sum(|s| s.duplicate_broadcasts), sum(|s| s.relays), all)
}

#[test]
fn a_creator_pushes_to_every_neighbour_and_they_relay_nothing_among_themselves() {
    // A triangle: A's writes reach B and C straight from A, who both know
    // A's neighbours, so neither relays (no duplicate, one hop).
    let mut net = Net::new(&["A", "B", "C"]);
    net.connect(0, 1);
    net.connect(0, 2);
    net.connect(1, 2);
    net.advance(Duration::from_secs(3));
    let (dups, relays, all) = write_from(&mut net, 0, 40);
    assert!(all, "every node got every write");
    assert_eq!((dups, relays), (0, 0));
    assert!(net.nodes[1].stats().relays_pruned >= 40);
}

#[test]
fn what_came_from_its_creator_is_still_relayed_beyond_the_creators_neighbours() {
    // D is linked to A only; A, B and C form a triangle. D's writes come to
    // A from their creator, and A relays them to B and C (not D's
    // neighbours); B and C, who got them from a relay, keep the tree
    // between them as before.
    // No dials from peers lists: D stays linked to A only.
    let mut net = Net::with_settings(&["A", "B", "C", "D"], |s| s.max_outgoing = 0);
    net.connect(0, 1);
    net.connect(0, 2);
    net.connect(1, 2);
    net.connect(3, 0);
    net.advance(Duration::from_secs(3));
    assert_eq!(net.nodes[3].stats().peers, 1);
    let relays = net.nodes[0].stats().relays;
    let (_, _, all) = write_from(&mut net, 3, 40);
    assert!(all, "every node got every write");
    // A relayed each to both B and C (D's only neighbour is A itself).
    assert_eq!(net.nodes[0].stats().relays - relays, 80);
}

#[test]
fn an_older_creator_is_relayed_for_as_before() {
    // A pushes its writes along the tree only (an rs2p node before the
    // creator push, which does not list it): B and C must not leave each
    // other out on A's behalf.
    let mut net = Net::with_settings(&["A", "B", "C"], |s| {
        if s.id == b"A" {
            s.creator_push = false;
        }
    });
    net.connect(0, 1);
    net.connect(0, 2);
    net.connect(1, 2);
    net.advance(Duration::from_secs(3));
    let (_, _, all) = write_from(&mut net, 0, 40);
    assert!(all, "every node got every write");
    // A link out of A's tree is repaired by B or C, not left to the
    // creator's list: drop A's pushes to C.
    net.lossy.insert((0, 2));
    let (_, _, all) = write_from(&mut net, 0, 5);
    net.advance(Duration::from_secs(1));
    let got_all = (0..5).all(|i| {
        net.received
            .iter()
            .any(|(k, p)| *k == 2 && p[1] == Value::from(1000 + i))
    });
    assert!(all || got_all, "C got A's writes through B");
}

#[test]
fn a_neighbour_list_goes_out_just_before_the_next_broadcast_only() {
    use crate::wire::flags::compression::{RS2P_CREATOR_PUSH, RS2P_MARKER, RS2P_TREE};
    let mut net = Net::new(&["A"]);
    let peer = tree_peer(&mut net, &[RS2P_MARKER, RS2P_TREE, RS2P_CREATOR_PUSH]);
    // A's neighbours change twice; nothing is broadcast yet.
    let q = net.fake(0, "Q", crate::proto::PeerKind::Rs, 11);
    let p = net.fake(0, "P", crate::proto::PeerKind::Py, 12);
    let lists = |net: &Net| -> Vec<(usize, Value)> {
        sent_to(net, 0, &peer)
            .iter()
            .enumerate()
            .filter(|(_, m)| m.sub_flag() == Some(sub::RS2P_NEIGHBOURS))
            .map(|(i, m)| (i, m.payload.get(1).cloned().unwrap_or(Value::Nil)))
            .collect()
    };
    let ids = |ids: &[&str]| {
        Value::Array(
            ids.iter()
                .map(|i| Value::Bin(i.as_bytes().to_vec()))
                .collect(),
        )
    };
    assert!(lists(&net).is_empty(), "no list without a broadcast");
    fill(&mut net, 0, ["one".to_string()]);
    let sent = sent_to(&net, 0, &peer);
    let told = lists(&net);
    assert_eq!(told.len(), 1, "one list, with the first broadcast");
    assert_eq!(
        sent[told[0].0 + 1].msg_type,
        main::BROADCAST,
        "right before it"
    );
    // Every neighbour of A, the peer itself included.
    assert_eq!(told[0].1, ids(&["P", "Q", "R"]));
    // Nothing changed since: the next broadcast goes without a list.
    fill(&mut net, 0, ["two".to_string()]);
    assert_eq!(lists(&net).len(), 1);
    // Q and P leave: the list goes out again, before the next broadcast.
    let now = net.now;
    for f in [&q, &p] {
        net.wires.remove(&(0, f.conn));
        net.nodes[0].handle_closed(f.conn, "reset", now);
    }
    net.settle();
    assert_eq!(lists(&net).len(), 1);
    fill(&mut net, 0, ["three".to_string()]);
    let told = lists(&net);
    assert_eq!(told.len(), 2);
    assert_eq!(told[1].1, ids(&["R"]));
}
