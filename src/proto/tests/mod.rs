//! Tests of the protocol core: nodes wired to each other directly (what one
//! transmits, the other handles at once) and scripted peers, on a virtual
//! clock that only moves when a test moves it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::dict::Dict;
use super::mesh::{PeerInfo, Settings, FIRST_BACKOFF, MAX_BACKOFF, REDIAL_FOR};
use super::reconcile::{self as rec, Range};
use super::replica::{Replica, Room, Unbounded};
use super::sync::LEASE_SECS;
use super::{ConnId, Event, Node, Now, Output};
use crate::error::Error;
use crate::value::Value;
use crate::wire::flags::compression::{RS2P_MARKER, RS2P_RECONCILES};
use crate::wire::flags::{main, sub};
use crate::wire::{next_frame, Limits, Packed};

mod compat;
mod hostile;
mod reconcile;
mod timed;
mod tree;

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
    /// The counts of expect hints delivered, per node.
    expects_in: Vec<Vec<u64>>,
    /// Announcements and grafts delivered: (receiver, sub-flag, ids packet).
    tree_ids: Vec<(usize, u8, Value)>,
}

impl Net {
    fn new(ids: &[&str]) -> Net {
        Net::with_settings(ids, |_| {})
    }

    /// Nodes whose settings `adjust` changes first.
    fn with_settings(ids: &[&str], adjust: impl Fn(&mut Settings)) -> Net {
        let dicts: Vec<_> = ids
            .iter()
            .map(|_| Arc::new(Mutex::new(Dict::default())))
            .collect();
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut settings =
                    Settings::new(id.as_bytes().to_vec(), "sync1", ("h", i as u16 + 1));
                adjust(&mut settings);
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
            expects_in: vec![Vec::new(); ids.len()],
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
                            Some((sub::RS2P_EXPECT, _)) => {
                                let count = whisper_packet(&body, 1).and_then(|v| v.as_u64());
                                self.expects_in[j].push(count.unwrap_or(u64::MAX));
                            }
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
        self.feed_room(node, conn, packed, &Unbounded);
    }

    /// Feeds a frame with `room` telling how full the peers' queues are.
    fn feed_room(&mut self, node: usize, conn: ConnId, packed: &Packed, room: &dyn Room) {
        let frame = packed.to_frame(None);
        let now = self.now;
        self.nodes[node].handle_frame(conn, Bytes::copy_from_slice(&frame[4..]), room, now);
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

/// A scripted rs2p peer that reconciles.
fn reconciling_peer(net: &mut Net, node: usize, id: &str, port: u16) -> Fake {
    net.fake_with(
        node,
        id,
        super::PeerKind::Rs,
        port,
        &[RS2P_MARKER, RS2P_RECONCILES],
    )
}

fn whisper(net: &Net, from: &str, payload: &[Value]) -> Packed {
    Packed::new(main::WHISPER, from.as_bytes(), net.now.unix, payload)
}

/// A session's message whose one range, the whole key space, holds
/// `count` items summing to `sum`.
fn whole_space(net: &Net, from: &str, session: u64, count: u64, sum: u64) -> Packed {
    let range = [Range::Fingerprint {
        lo: 0,
        hi: u64::MAX,
        count,
        sum,
    }];
    whisper(net, from, &rec::encode_sync(session, &range, None))
}

/// Its sender holds nothing at all: the node answers with every key.
fn holds_nothing(net: &Net, from: &str, session: u64) -> Packed {
    whole_space(net, from, session, 0, 0)
}

fn messages_with(net: &Net, fake: &Fake, flags: &[u8]) -> usize {
    sent_to(net, 0, fake)
        .iter()
        .filter(|m| m.msg_type == main::WHISPER && m.sub_flag().is_some_and(|f| flags.contains(&f)))
        .count()
}

/// Versions sent, alone or in batches.
const STORES: &[u8] = &[sub::STORE, sub::RS2P_STORES];

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
