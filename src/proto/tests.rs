//! Virtual-time tests of the core's timed rules: the 60 s broadcast window,
//! the one-hour lease and its same-second tie, 24 h tombstones, re-dial
//! backoff. Nodes are wired to each other directly; time only moves when a
//! test moves it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::dict::Dict;
use super::mesh::{PeerInfo, Settings, FIRST_BACKOFF, MAX_BACKOFF, REDIAL_FOR};
use super::replica::{Replica, Unbounded};
use super::sync::LEASE_SECS;
use super::{ConnId, Event, Node, Now, Output};
use crate::error::Error;
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::{next_frame, Limits, Packed};

const T0: i64 = 1_800_000_000;

/// Nodes wired directly: what one transmits, the other handles at once.
struct Net {
    nodes: Vec<Node>,
    dicts: Vec<Arc<Mutex<Dict>>>,
    wires: HashMap<(usize, ConnId), (usize, ConnId)>,
    now: Now,
    /// Dials succeed only while true.
    reachable: bool,
    /// Times of every dial, per node.
    dials: Vec<Vec<Duration>>,
    events: Vec<(usize, Event)>,
    received: Vec<(usize, Vec<Value>)>,
    /// What nodes sent to scripted peers ([`Fake`]): (conn, bytes).
    sunk: Vec<(ConnId, Bytes)>,
    /// Links (from, to) whose bytes are lost, as on a stalled link.
    lossy: std::collections::HashSet<(usize, usize)>,
    /// State-transfer and reconciliation stores delivered, per node.
    stores_in: Vec<usize>,
    /// Reconciliation messages (ranges, sketches) delivered, per node.
    syncs_in: Vec<usize>,
    /// Batches of state-transfer items delivered, per node.
    batches_in: Vec<usize>,
    /// Announcements and grafts delivered: (receiver, sub-flag, ids packet).
    tree_ids: Vec<(usize, u8, Value)>,
}

impl Net {
    fn new(ids: &[&str]) -> Net {
        let dicts: Vec<_> = ids
            .iter()
            .map(|_| Arc::new(Mutex::new(Dict::default())))
            .collect();
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let settings = Settings::new(id.as_bytes().to_vec(), "sync1", ("h", i as u16 + 1));
                Node::new(
                    settings,
                    Some(Replica::new(dicts[i].clone(), true)),
                    i as u64,
                )
            })
            .collect();
        Net {
            nodes,
            dicts,
            wires: HashMap::new(),
            now: Now {
                elapsed: Duration::ZERO,
                unix: T0,
            },
            reachable: true,
            dials: vec![Vec::new(); ids.len()],
            events: Vec::new(),
            received: Vec::new(),
            sunk: Vec::new(),
            lossy: Default::default(),
            stores_in: vec![0; ids.len()],
            syncs_in: vec![0; ids.len()],
            batches_in: vec![0; ids.len()],
            tree_ids: Vec::new(),
        }
    }

    /// Carries out outputs until every node is quiet.
    fn settle(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].poll_output() {
                    any = true;
                    self.carry_out(i, out);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn carry_out(&mut self, i: usize, out: Output) {
        let now = self.now;
        match out {
            Output::Transmit { conn, bytes } => {
                if let Some(&(usize::MAX, _)) = self.wires.get(&(i, conn)) {
                    return self.sunk.push((conn, bytes));
                }
                if let Some(&(j, theirs)) = self.wires.get(&(i, conn)) {
                    if self.lossy.contains(&(i, j)) {
                        return;
                    }
                    let mut buf = bytes::BytesMut::from(&bytes[..]);
                    while let Ok(Some(body)) = next_frame(&mut buf, &Limits::default()) {
                        match whisper_sub_flag(&body) {
                            Some((sub::STORE, _)) => self.stores_in[j] += 1,
                            Some((sub::RS2P_STORES, items)) => {
                                self.stores_in[j] += items;
                                self.batches_in[j] += 1;
                            }
                            Some((sub::RS2P_SYNC, _)) => self.syncs_in[j] += 1,
                            Some((f @ (sub::RS2P_IHAVE | sub::RS2P_GRAFT), _)) => {
                                if let Some(ids) = whisper_packet(&body, 1) {
                                    self.tree_ids.push((j, f, ids));
                                }
                            }
                            _ => {}
                        }
                        self.nodes[j].handle_frame(theirs, body, &Unbounded, now);
                    }
                }
            }
            Output::Dial { conn, port, .. } => {
                self.dials[i].push(now.elapsed);
                let j = usize::from(port) - 1;
                if !self.reachable || j >= self.nodes.len() {
                    return self.nodes[i].handle_failed(conn);
                }
                let theirs = self.nodes[j].accept(now).expect("under the limit");
                self.wires.insert((i, conn), (j, theirs));
                self.wires.insert((j, theirs), (i, conn));
                self.nodes[j].handle_ready(theirs, now);
                self.nodes[i].handle_ready(conn, now);
            }
            Output::Close { conn } => {
                if let Some((j, theirs)) =
                    self.wires.remove(&(i, conn)).filter(|w| w.0 != usize::MAX)
                {
                    self.wires.remove(&(j, theirs));
                    self.nodes[j].handle_closed(theirs, "closed by the peer", now);
                }
            }
            Output::Event(e) => self.events.push((i, e)),
            Output::Received(r) => self.received.push((i, r.packets)),
            Output::Sync(_) => {}
        }
    }

    fn connect(&mut self, from: usize, to: usize) {
        let now = self.now;
        self.nodes[from]
            .connect("h", to as u16 + 1, now)
            .expect("dial");
        self.settle();
    }

    /// Moves time on by `d`, running every timer due on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now.elapsed + d;
        loop {
            let next = self
                .nodes
                .iter()
                .filter_map(Node::poll_timeout)
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.set_time(t.max(self.now.elapsed));
            for i in 0..self.nodes.len() {
                if self.nodes[i]
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now.elapsed)
                {
                    let now = self.now;
                    self.nodes[i].handle_timeout(now);
                }
            }
            self.settle();
        }
        self.set_time(end);
    }

    fn set_time(&mut self, elapsed: Duration) {
        self.now = Now {
            elapsed,
            unix: T0 + elapsed.as_secs() as i64,
        };
    }

    fn get(&self, i: usize, key: &str) -> Option<Value> {
        self.dicts[i].lock().unwrap().get(key.as_bytes())
    }

    fn conn_to(&self, i: usize, j: usize) -> ConnId {
        self.wires
            .iter()
            .find(|((a, _), (b, _))| *a == i && *b == j)
            .expect("wired")
            .0
             .1
    }

    /// Hands node `to` a frame as if it came on its link from `from`.
    fn inject(&mut self, from: usize, to: usize, packed: &Packed) {
        let conn = self.conn_to(to, from);
        let frame = packed.to_frame(None);
        let now = self.now;
        self.nodes[to].handle_frame(conn, Bytes::copy_from_slice(&frame[4..]), &Unbounded, now);
        self.settle();
    }
}

/// Packet `at` of a whisper's payload.
fn whisper_packet(body: &[u8], at: usize) -> Option<Value> {
    let (_, m) =
        Packed::decode(Bytes::copy_from_slice(body), &[], true, &Limits::default()).ok()?;
    m.payload.get(at).cloned()
}

/// A whispered store (state transfer or reconciliation), uncompressed.
/// The sub-flag of a whisper (state-transfer stores, reconciliation), and
/// the items it carries when it is a batch.
fn whisper_sub_flag(body: &[u8]) -> Option<(u8, usize)> {
    Packed::decode(Bytes::copy_from_slice(body), &[], true, &Limits::default())
        .ok()
        .map(|(_, m)| m)
        .filter(|m| m.msg_type == main::WHISPER)
        .and_then(|m| Some((m.sub_flag()?, m.payload.len().saturating_sub(1) / 5)))
}

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

/// A scripted py2p-like, js2p-like or rs2p-like peer on node `node`: what
/// the node sends it is kept, frame by frame.
struct Fake {
    conn: ConnId,
}

impl Net {
    fn fake(&mut self, node: usize, id: &str, kind: super::PeerKind, port: u16) -> Fake {
        let marker = [crate::wire::flags::compression::RS2P_MARKER];
        let methods: &[u8] = if kind == super::PeerKind::Rs {
            &marker
        } else {
            &[]
        };
        self.fake_with(node, id, kind, port, methods)
    }

    /// A scripted peer whose handshake lists `methods` (rs2p capability
    /// values) after zlib.
    fn fake_with(
        &mut self,
        node: usize,
        id: &str,
        kind: super::PeerKind,
        port: u16,
        methods: &[u8],
    ) -> Fake {
        let now = self.now;
        let conn = self.nodes[node].accept(now).expect("under the limit");
        self.wires.insert((node, conn), (usize::MAX, conn));
        self.nodes[node].handle_ready(conn, now);
        self.settle();
        let proto = crate::wire::ids::protocol_id("sync1", "Plaintext");
        let proto = match kind {
            super::PeerKind::Js => Value::from(proto),
            _ => Value::Bin(proto.into_bytes()),
        };
        let hs = [
            Value::from(sub::HANDSHAKE),
            Value::Bin(id.as_bytes().to_vec()),
            proto,
            Value::Array(vec![Value::from("peer"), Value::from(port)]),
            Value::Array(
                std::iter::once(Value::from(0x13))
                    .chain(methods.iter().map(|m| Value::from(*m)))
                    .collect(),
            ),
        ];
        self.feed(
            node,
            conn,
            &Packed::new(main::WHISPER, id.as_bytes(), now.unix, &hs),
        );
        Fake { conn }
    }

    fn feed(&mut self, node: usize, conn: ConnId, packed: &Packed) {
        let frame = packed.to_frame(None);
        let now = self.now;
        self.nodes[node].handle_frame(conn, Bytes::copy_from_slice(&frame[4..]), &Unbounded, now);
        self.settle();
    }
}

/// The messages node `node` sent to `fake` (compressed or not).
fn sent_to(net: &Net, node: usize, fake: &Fake) -> Vec<crate::wire::WireMessage> {
    let _ = node;
    net.sunk
        .iter()
        .filter(|(c, _)| *c == fake.conn)
        .flat_map(|(_, b)| {
            let mut buf = bytes::BytesMut::from(&b[..]);
            let mut out = Vec::new();
            while let Ok(Some(body)) = next_frame(&mut buf, &Limits::default()) {
                let (_, m) = Packed::decode(
                    body,
                    &crate::wire::Compression::ALL,
                    true,
                    &Limits::default(),
                )
                .expect("our own frame");
                out.push(m);
            }
            out
        })
        .collect()
}

#[test]
fn small_frames_go_without_their_checksum_only_to_rs2p_peers_that_read_that() {
    use super::PeerKind::{Py, Rs};
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
    use super::PeerKind::{Js, Py};
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
    use super::PeerKind::{Js, Py, Rs};
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
    use super::PeerKind::{Js, Py};
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

#[test]
fn reference_state_transfers_never_overwrite_a_held_value() {
    use super::PeerKind::Py;
    let mut net = Net::new(&["A"]);
    let now = net.now;
    net.nodes[0]
        .set(b"held".to_vec(), Value::from("mine"), now)
        .unwrap();
    let py = net.fake(0, "P", Py, 11);
    for key in ["held", "new"] {
        let item = [
            Value::from(sub::STORE),
            Value::Bin(key.as_bytes().to_vec()),
            Value::from("theirs"),
            Value::Bin(b"P".to_vec()),
            Value::from(T0 + 5),
        ];
        net.feed(0, py.conn, &Packed::new(main::WHISPER, b"P", T0, &item));
    }
    assert_eq!(net.get(0, "held"), Some(Value::from("mine")));
    assert_eq!(net.get(0, "new"), Some(Value::from("theirs")));
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
    use super::PeerKind::Py;
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
    use super::replica::MAX_FUTURE_SKEW;
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
    use super::PeerKind::Py;
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

fn fill(net: &mut Net, node: usize, keys: impl IntoIterator<Item = String>) {
    let now = net.now;
    for k in keys {
        net.nodes[node]
            .set(k.into_bytes(), Value::from(node as u64), now)
            .unwrap();
    }
    net.settle();
}

fn same(net: &Net, a: usize, b: usize) -> bool {
    let list = |i: usize| {
        let d = net.dicts[i].lock().unwrap();
        let mut v: Vec<_> = d
            .versions()
            .map(|(k, val, ver)| (k.to_vec(), val, ver))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    list(a) == list(b)
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
    use super::replica::{RECONCILE_EVERY, RECONCILE_JITTER};
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

#[test]
fn a_node_that_loses_its_last_tree_link_grafts_the_others_back() {
    // Triangle: once the tree has settled, C gets A's writes from A only
    // (its link to B is out of the tree).
    let mut net = Net::new(&["A", "B", "C"]);
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
fn a_silent_link_is_probed_then_dropped() {
    use super::mesh::{PROBE_AFTER, STALLED_AFTER};
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

#[test]
fn a_broadcast_lost_on_a_tree_link_is_grafted_from_an_announcer() {
    use super::mesh::{ANNOUNCE_AFTER, GRAFT_AFTER};
    let mut net = Net::new(&["A", "B", "C"]);
    net.connect(1, 0);
    net.connect(2, 1);
    net.advance(Duration::from_secs(3));
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
    net.advance(ANNOUNCE_AFTER + GRAFT_AFTER + Duration::from_millis(10));
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
    use super::mesh::GRAFT_AFTER;
    use crate::wire::flags::compression::{RS2P_MARKER, RS2P_TREE};
    let mut net = Net::new(&["A"]);
    // An rs2p peer of an older version: in the tree, no compact frames.
    let old = net.fake_with(0, "R", super::PeerKind::Rs, 10, &[RS2P_MARKER, RS2P_TREE]);
    // It announces a broadcast A has not seen, by its whole fingerprint.
    let missing = Packed::new(
        main::BROADCAST,
        b"X",
        net.now.unix,
        &[Value::from(sub::BROADCAST)],
    );
    let fp = crate::proto::seen::fingerprint(&missing.id());
    let ihave = [
        Value::from(sub::RS2P_IHAVE),
        Value::Array(vec![Value::from(fp)]),
    ];
    let now = net.now;
    net.feed(
        0,
        old.conn,
        &Packed::new(main::WHISPER, b"R", now.unix, &ihave),
    );
    net.sunk.clear();
    net.advance(GRAFT_AFTER + Duration::from_millis(10));
    let grafts: Vec<Value> = sent_to(&net, 0, &old)
        .into_iter()
        .filter(|m| m.sub_flag() == Some(sub::RS2P_GRAFT))
        .filter_map(|m| m.payload.get(1).cloned())
        .collect();
    assert_eq!(grafts, vec![Value::Array(vec![Value::from(fp)])]);
}

/// In a settled tree the announcements on a lazy link are redundant: the
/// gap between two batches doubles up to `MAX_ANNOUNCE_GAP`, so a steady
/// stream of broadcasts costs a few announcement frames per link, not one
/// per `ANNOUNCE_AFTER`.
#[test]
fn announcements_back_off_while_the_tree_is_settled() {
    use super::mesh::{ANNOUNCE_AFTER, MAX_ANNOUNCE_GAP};
    let mut net = Net::new(&["A", "B", "C"]);
    net.connect(1, 0);
    net.connect(2, 1);
    net.advance(Duration::from_secs(3));
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
