//! An rs2p peer that abuses reconciliation: what it can make a node hold
//! and compute stays bounded, its link stays up, and honest peers carry on.

use super::*;
use crate::proto::dict::key_hash;
use crate::proto::reconcile;
use crate::proto::replica::{BUDGET_BURST, BUDGET_EVERY, MAX_ROUNDS};

/// Send queues that are always full: a peer that never reads.
struct Full;

impl Room for Full {
    fn queued(&self, _conn: ConnId) -> Option<(usize, usize)> {
        Some((usize::MAX / 4, usize::MAX / 4))
    }
}

/// Differs from any dictionary of more than one item: the node answers
/// with its ranges.
fn differs(net: &Net, from: &str, session: u64) -> Packed {
    whole_space(net, from, session, 1, 1)
}

#[test]
fn a_peer_that_asks_for_everything_without_reading_holds_a_bounded_queue() {
    let mut net = Net::new(&["A"]);
    let keys: Vec<String> = (0..2000).map(|i| format!("k{i}")).collect();
    fill(&mut net, 0, keys.iter().cloned());
    let r = reconciling_peer(&mut net, 0, "R", 10);
    let all: Vec<u64> = keys.iter().map(|k| key_hash(k.as_bytes())).collect();
    // A new session every second saying it holds nothing, and a want list
    // of every key, from a peer whose queue never drains.
    for session in 1..=40 {
        let msg = holds_nothing(&net, "R", session);
        net.feed_room(0, r.conn, &msg, &Full);
        let want = whisper(&net, "R", &reconcile::encode_want(&all));
        net.feed_room(0, r.conn, &want, &Full);
        net.advance(Duration::from_secs(1));
    }
    let queued = net.nodes[0].replica().expect("sync node").queued_keys();
    assert!(
        (2000..=2 * 2000 + 1024).contains(&queued),
        "{queued} keys queued for 2,000 held"
    );
    assert_eq!(net.nodes[0].stats().reconciliation_refused, 0);
    assert_eq!(net.nodes[0].peers().len(), 1, "the link stays");
}

#[test]
fn reconciliation_messages_past_the_link_s_budget_are_not_answered() {
    let mut net = Net::new(&["A", "B"]);
    fill(&mut net, 0, (0..100).map(|i| format!("k{i}")));
    let r = reconciling_peer(&mut net, 0, "R", 10);
    let one = |i: usize| vec![key_hash(format!("k{}", i % 100).as_bytes())];
    // 200 want lists at once: each would cost a pass over the dictionary.
    for i in 0..200 {
        let want = whisper(&net, "R", &reconcile::encode_want(&one(i)));
        net.feed(0, r.conn, &want);
    }
    let burst = BUDGET_BURST as usize;
    assert_eq!(messages_with(&net, &r, STORES), burst);
    assert_eq!(
        net.nodes[0].stats().reconciliation_refused,
        (200 - burst) as u64
    );
    // Ten seconds later, what the budget took back in them.
    net.advance(Duration::from_secs(10));
    for i in 0..200 {
        let want = whisper(&net, "R", &reconcile::encode_want(&one(i)));
        net.feed(0, r.conn, &want);
    }
    let refilled = (Duration::from_secs(10).as_millis() / BUDGET_EVERY.as_millis()) as usize;
    assert_eq!(messages_with(&net, &r, STORES), burst + refilled);
    assert_eq!(net.nodes[0].peers().len(), 1, "the link stays");
    // An honest node joining meanwhile reconciles as ever.
    fill(&mut net, 1, (0..50).map(|i| format!("b{i}")));
    net.connect(1, 0);
    assert!(same(&net, 0, 1), "A and B identical");
    assert_eq!(net.dicts[0].lock().unwrap().len(), 150);
}

#[test]
fn sessions_opened_too_fast_and_rounds_past_the_cap_are_not_answered() {
    let mut net = Net::new(&["A"]);
    fill(&mut net, 0, (0..5000).map(|i| format!("k{i}")));
    let r = reconciling_peer(&mut net, 0, "R", 10);
    // Ten sessions opened in the same second: the first is answered.
    for session in 1..=10 {
        let msg = differs(&net, "R", session);
        net.feed(0, r.conn, &msg);
    }
    assert_eq!(messages_with(&net, &r, &[sub::RS2P_SYNC]), 1);
    // The first session's rounds, one a second (within the budget): it is
    // answered until it has had its rounds.
    for _ in 0..MAX_ROUNDS + 5 {
        net.advance(Duration::from_secs(1));
        let msg = differs(&net, "R", 1);
        net.feed(0, r.conn, &msg);
    }
    assert_eq!(
        messages_with(&net, &r, &[sub::RS2P_SYNC]),
        MAX_ROUNDS as usize
    );
    assert_eq!(net.nodes[0].stats().reconciliation_refused, 9 + 6);
    // A new session a second later is answered.
    net.advance(Duration::from_secs(1));
    let msg = differs(&net, "R", 2);
    net.feed(0, r.conn, &msg);
    assert_eq!(
        messages_with(&net, &r, &[sub::RS2P_SYNC]),
        MAX_ROUNDS as usize + 1
    );
}

#[test]
fn peers_lost_together_start_one_wave_of_sessions_a_second() {
    let mut net = Net::new(&["A", "B", "C"]);
    net.connect(0, 1);
    net.connect(0, 2);
    fill(&mut net, 0, (0..100).map(|i| format!("k{i}")));
    let fakes: Vec<Fake> = (0..10)
        .map(|i| reconciling_peer(&mut net, 0, &format!("R{i}"), 20 + i))
        .collect();
    net.advance(Duration::from_secs(5));
    let before = net.syncs_in.clone();
    // The ten leave at once (a partition): A reconciles with B and C at
    // once, and once more a second later, not ten times.
    for f in &fakes {
        let now = net.now;
        net.nodes[0].handle_closed(f.conn, "reset", now);
        net.settle();
    }
    let waves = |net: &Net| (net.syncs_in[1] - before[1], net.syncs_in[2] - before[2]);
    assert_eq!(waves(&net), (1, 1));
    net.advance(Duration::from_secs(2));
    assert_eq!(waves(&net), (2, 2));
    net.advance(Duration::from_secs(5));
    assert_eq!(waves(&net), (2, 2), "and no more");
    assert_eq!(net.nodes[0].stats().reconciliation_refused, 0);
}
