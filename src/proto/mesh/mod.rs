//! The mesh state machine (PROTOCOL.md §6): connections and their peers,
//! the routing table, the broadcast flood, routes, renegotiation, re-dial.
//!
//! [`Mesh`] owns everything a node knows about its peers. It is driven by
//! [`Node`](super::Node), which adds the dictionary; the rules that exist
//! for py2p or js2p compatibility are named in the doc of the method that
//! applies them and tested in this module.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;

use super::seen::Seen;
use super::{ConnId, Now, Output};
use crate::error::{Error, Result};
use crate::value::Value;
use crate::wire::flags::{self, main, sub};
use crate::wire::packet::Packet;
use crate::wire::{Compression, Framing, MessageId, Packed, WireMessage};

mod flood;
mod peers;
mod timers;
mod tree;
mod types;

pub use timers::{PROBE_AFTER, STALLED_AFTER};
pub use tree::{ANNOUNCE_AFTER, GRAFT_AFTER, MAX_ANNOUNCE_GAP, PRUNE_USEFUL_AFTER};
pub use types::{NodeStats, PeerInfo, PeerKind, Settings};

/// Longest wait between two re-dials of a lost peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// First wait before a lost peer is re-dialled; it doubles per attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// For how long a lost peer is re-dialled.
pub const REDIAL_FOR: Duration = Duration::from_secs(3600);
/// First wait before a node short of outgoing links asks for peers again;
/// the wait doubles up to `MAX_REFRESH`, and starts over when a peer leaves.
const FIRST_REFRESH: Duration = Duration::from_millis(250);
const MAX_REFRESH: Duration = Duration::from_secs(60);
/// How long an rs2p peer's request for peers keeps it told of our new
/// peers: a node short of outgoing links asks again at least this often.
const PEERS_INTEREST: Duration = Duration::from_secs(61);
/// Pending route requests kept (reply to a non-neighbour).
const MAX_PENDING_REQUESTS: usize = 1024;
/// Whispers kept per node we are dialling to deliver a reply to.
const MAX_AFTER_CONNECT: usize = 64;
/// Bodies smaller than this go uncompressed to rs2p peers: compressing
/// them costs time on both ends and saves no bytes. (Receivers accept an
/// uncompressed body whatever was negotiated.)
const RS2P_COMPRESS_MIN: usize = 512;

/// One connection as the core knows it.
struct Link {
    /// True once the transport is up (a dial connected, an accepted
    /// connection finished its TLS or WebSocket handshake).
    open: bool,
    outgoing: bool,
    opened: Duration,
    /// Where we dialed, for outgoing connections.
    dialed: Option<(String, u16)>,
    peer_id: Option<Vec<u8>>,
    peer_addr: Option<(Option<String>, Option<u16>)>,
    kind: PeerKind,
    send_method: Option<Compression>,
    recv_methods: Vec<Compression>,
    peer_methods: Vec<i64>,
    last_sent: Option<Bytes>,
    handshaken: bool,
    /// Bytes queued on this connection so far (py2p framing workaround).
    stream_pos: u64,
    /// Bytes in [`Output::Transmit`]s not yet taken by the shell.
    unsent: usize,
    /// For re-dials: the id the node at this address must have.
    expected_id: Option<Vec<u8>>,
    /// An rs2p peer that speaks set reconciliation.
    reconciles: bool,
    /// The peer reads batched state-transfer items
    /// ([`sub::RS2P_STORES`]).
    batches: bool,
    /// The peer reads frames without their checksum ([`Framing::Bare`]).
    bare: bool,
    /// The peer pushes what it creates to every neighbour
    /// ([`flags::compression::RS2P_CREATOR_PUSH`]).
    creator_push: bool,
    /// An rs2p peer in the broadcast tree; `lazy` when the link is out of
    /// the tree (broadcasts are announced on it, not pushed), with the ids
    /// waiting to be announced.
    tree: bool,
    lazy: bool,
    announce: Vec<tree::Fingerprint>,
    /// When the pending announcements go out, and the gap between two
    /// batches on this link (it grows while the peer never grafts).
    announce_at: Option<Duration>,
    announce_gap: Duration,
    /// Duplicates in a row on this link, and whether it ever delivered a
    /// first copy: when it leaves the tree (see `PRUNE_USEFUL_AFTER`).
    dup_streak: u32,
    delivered_first: bool,
    /// The neighbour list last sent on this link, and the
    /// `Mesh::neighbours_epoch` it was checked at.
    told_neighbours: Option<Vec<Vec<u8>>>,
    told_epoch: u64,
    /// When a frame last arrived, and whether the silence since was probed.
    last_recv: Duration,
    probed: bool,
    /// An rs2p peer's own neighbours, as it last told us
    /// ([`sub::RS2P_NEIGHBOURS`]): it relays every broadcast to them itself.
    neighbours: HashSet<Vec<u8>>,
    /// Until when an rs2p peer that asked us for peers (it is short of
    /// outgoing links) is sent our list again whenever a new peer joins us.
    wants_peers_until: Option<Duration>,
}

impl Link {
    fn new(outgoing: bool, dialed: Option<(String, u16)>, now: Now) -> Link {
        Link {
            open: false,
            outgoing,
            opened: now.elapsed,
            dialed,
            peer_id: None,
            peer_addr: None,
            kind: PeerKind::Unknown,
            send_method: None,
            recv_methods: Vec::new(),
            peer_methods: Vec::new(),
            last_sent: None,
            handshaken: false,
            stream_pos: 0,
            unsent: 0,
            expected_id: None,
            reconciles: false,
            batches: false,
            bare: false,
            creator_push: false,
            tree: false,
            lazy: false,
            announce: Vec::new(),
            announce_at: None,
            announce_gap: tree::ANNOUNCE_AFTER,
            dup_streak: 0,
            delivered_first: false,
            told_neighbours: None,
            told_epoch: 0,
            last_recv: now.elapsed,
            probed: false,
            neighbours: HashSet::new(),
            wants_peers_until: None,
        }
    }

    /// Takes the peer's compression list: we send with the first of our
    /// methods it lists, and try its methods we know, in its order, on what
    /// we receive (PROTOCOL.md §5.2).
    fn set_peer_methods(&mut self, methods: Vec<i64>, ours: &[Compression]) {
        self.send_method = ours
            .iter()
            .copied()
            .find(|m| methods.contains(&i64::from(m.flag())));
        self.recv_methods = methods
            .iter()
            .filter_map(|f| Compression::from_flag(*f))
            .filter(|m| ours.contains(m))
            .collect();
        self.peer_methods = methods;
    }

    /// How a message body of `len` bytes goes to this peer: small ones
    /// uncompressed to rs2p peers, and without their checksum to those
    /// that read that.
    fn framing(&self, len: usize) -> Framing {
        if self.kind == PeerKind::Rs && len < RS2P_COMPRESS_MIN {
            if self.bare {
                Framing::Bare
            } else {
                Framing::Checked(None)
            }
        } else {
            Framing::Checked(self.send_method)
        }
    }

    fn full_addr(&self) -> Option<(String, u16)> {
        match &self.peer_addr {
            Some((Some(h), Some(p))) => Some((h.clone(), *p)),
            _ => None,
        }
    }
}

struct Redial {
    host: String,
    port: u16,
    id: Vec<u8>,
    due: Duration,
    attempts: u32,
    since: Duration,
}

/// A decoded message no mesh rule consumed, for the dictionary or the
/// user.
pub struct Incoming {
    /// The connection it came on.
    pub conn: ConnId,
    /// Its id.
    pub id: MessageId,
    /// The message.
    pub msg: WireMessage,
    /// Its payload, typed.
    pub packet: Packet,
    /// Its packed size in bytes.
    pub size: usize,
}

/// What a frame did, for the layer above the mesh.
pub(crate) enum Upcall {
    /// Nothing more to do.
    Done,
    /// A peer finished its first handshake on this connection.
    Joined(ConnId),
    /// A message for the dictionary or the user.
    Message(Box<Incoming>),
}

/// The mesh state machine.
///
/// Connections and the routing table are ordered maps: the outputs of one
/// input come in the same order in every run (the simulator relies on it),
/// and the tables are bounded by the connection limit.
pub struct Mesh {
    cfg: Settings,
    links: BTreeMap<ConnId, Link>,
    routing: BTreeMap<Vec<u8>, ConnId>,
    seen: Seen,
    next_conn: ConnId,
    pending_requests: HashMap<Vec<u8>, Vec<Value>>,
    after_connect: HashMap<Vec<u8>, Vec<Vec<Value>>>,
    redials: Vec<Redial>,
    no_redial: HashSet<Vec<u8>>,
    /// Peers refused at handshake and not re-dialled until unblocked.
    blocked: HashSet<Vec<u8>>,
    stats: NodeStats,
    /// When to ask peers for theirs again, and the current interval.
    next_refresh: Duration,
    refresh_every: Duration,
    rng: StdRng,
    out: VecDeque<Output>,
    /// The broadcast tree between rs2p peers.
    tree: tree::Tree,
    /// Counts changes of our neighbours (a link's `told_epoch` behind it:
    /// the peer may hold an old list), and the lists for rs2p peers (all
    /// neighbours; those out of the tree) since the last change.
    neighbours_epoch: u64,
    neighbour_lists: Option<NeighbourLists>,
}

/// Our neighbour lists for rs2p peers.
struct NeighbourLists {
    /// Every neighbour.
    all: Vec<Vec<u8>>,
    /// The neighbours out of the broadcast tree.
    outside: Vec<Vec<u8>>,
}

fn bytes_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn host_is_local(h: &str) -> bool {
    h == "127.0.0.1" || h == "localhost" || h == "0.0.0.0" || h == "::1"
}

impl Mesh {
    /// A node with no connections. `rng` is the only randomness the rules
    /// use (route request ids).
    pub fn new(cfg: Settings, rng: StdRng) -> Mesh {
        Mesh {
            seen: Seen::new(cfg.seen_capacity),
            cfg,
            links: BTreeMap::new(),
            routing: BTreeMap::new(),
            next_conn: 1,
            pending_requests: HashMap::new(),
            after_connect: HashMap::new(),
            redials: Vec::new(),
            no_redial: HashSet::new(),
            blocked: HashSet::new(),
            stats: NodeStats::default(),
            next_refresh: FIRST_REFRESH,
            refresh_every: FIRST_REFRESH,
            rng,
            out: VecDeque::new(),
            tree: tree::Tree::default(),
            neighbours_epoch: 1,
            neighbour_lists: None,
        }
    }

    /// Our id.
    pub fn id(&self) -> &[u8] {
        &self.cfg.id
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.cfg
    }

    pub(crate) fn push(&mut self, out: Output) {
        self.out.push_back(out);
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.out.pop_front()?;
        if let Output::Transmit { conn, bytes } = &out {
            if let Some(l) = self.links.get_mut(conn) {
                l.unsent = l.unsent.saturating_sub(bytes.len());
            }
        }
        Some(out)
    }

    /// Bytes queued for `conn` in outputs the shell has not taken yet (so
    /// state transfers pace themselves on what is really queued).
    pub fn unsent(&self, conn: ConnId) -> usize {
        self.links.get(&conn).map_or(0, |l| l.unsent)
    }

    // ----- queries -----

    /// The handshaken peers, sorted by id.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .routing
            .iter()
            .filter_map(|(id, conn)| {
                let c = self.links.get(conn)?;
                Some(PeerInfo {
                    id: bytes_text(id),
                    addr: c.full_addr(),
                    outgoing: c.outgoing,
                    kind: c.kind,
                })
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The counters.
    pub fn stats(&self) -> NodeStats {
        let mut st = self.stats.clone();
        st.expired_broadcasts = self.seen.expired();
        st.peers = self.routing.len();
        st.connections = self.links.values().filter(|l| l.open).count();
        st
    }

    /// The kind of peer on `conn`.
    pub fn peer_kind(&self, conn: ConnId) -> PeerKind {
        self.links.get(&conn).map_or(PeerKind::Unknown, |c| c.kind)
    }

    /// True when the peer on `conn` is an rs2p node that speaks set
    /// reconciliation.
    pub fn reconciles(&self, conn: ConnId) -> bool {
        self.links.get(&conn).is_some_and(|c| c.reconciles)
    }

    /// True when the peer on `conn` is an rs2p node that reads batched
    /// state-transfer items.
    pub fn batches(&self, conn: ConnId) -> bool {
        self.links.get(&conn).is_some_and(|c| c.batches)
    }

    /// True when we dialled `conn`.
    pub fn is_outgoing(&self, conn: ConnId) -> bool {
        self.links.get(&conn).is_some_and(|c| c.outgoing)
    }

    /// True while the connection is known (pending or open).
    pub fn has_conn(&self, conn: ConnId) -> bool {
        self.links.contains_key(&conn)
    }

    /// The handshaken connections, to peers of one kind when `kind` is set.
    pub fn routed(&self, kind: Option<PeerKind>) -> Vec<ConnId> {
        self.routing
            .values()
            .copied()
            .filter(|c| kind.is_none_or(|k| self.peer_kind(*c) == k))
            .collect()
    }

    /// The py2p and js2p peers a version that came from `from` by state
    /// transfer or merge is passed on to: all but `from` and, when `from`
    /// is an rs2p peer, those it told us it links to itself (it passes the
    /// version on to them).
    pub(crate) fn reference_relays(&self, from: ConnId) -> Vec<ConnId> {
        let told = self.links.get(&from).map(|c| &c.neighbours);
        self.routing
            .iter()
            .filter(|(_, conn)| **conn != from)
            .filter(|(_, conn)| matches!(self.peer_kind(**conn), PeerKind::Py | PeerKind::Js))
            .filter(|(id, _)| !told.is_some_and(|n| n.contains(*id)))
            .map(|(_, conn)| *conn)
            .collect()
    }

    /// How a message body of `len` bytes is framed for `conn`.
    pub fn framing(&self, conn: ConnId, len: usize) -> Framing {
        self.links
            .get(&conn)
            .map_or(Framing::Checked(None), |c| c.framing(len))
    }

    pub(super) fn outgoing_count(&self) -> usize {
        self.links.values().filter(|c| c.outgoing).count()
    }

    pub(super) fn is_self_addr(&self, host: &str, port: u16) -> bool {
        let (out_host, out_port) = (&self.cfg.out_addr.0, self.cfg.out_addr.1);
        let (listen_host, listen_port) = (&self.cfg.listen.0, self.cfg.listen.1);
        port == out_port && (host == out_host || host_is_local(host) && host_is_local(out_host))
            || (port == listen_port && (host_is_local(host) || host == listen_host))
    }

    pub(super) fn knows_addr(&self, host: &str, port: u16) -> bool {
        self.links.values().any(|c| {
            c.dialed
                .as_ref()
                .is_some_and(|(h, p)| h == host && *p == port)
                || matches!(&c.peer_addr, Some((Some(h), Some(p))) if h == host && *p == port)
        })
    }

    // ----- connections -----

    /// Dials a node: a [`Output::Dial`] follows.
    pub fn connect(&mut self, host: &str, port: u16, now: Now) -> Result<ConnId> {
        self.dial(host.to_owned(), port, None, now)
    }

    /// Dials; with `expect`, only the node with that id is accepted there
    /// (a re-dial must not join whatever node now uses a lost peer's port).
    pub(super) fn dial(
        &mut self,
        host: String,
        port: u16,
        expect: Option<Vec<u8>>,
        now: Now,
    ) -> Result<ConnId> {
        if self.links.len() >= self.cfg.max_connections {
            return Err(Error::ConnectionLimit {
                max: self.cfg.max_connections,
            });
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let mut link = Link::new(true, Some((host.clone(), port)), now);
        link.expected_id = expect;
        self.links.insert(conn, link);
        self.push(Output::Dial { conn, host, port });
        Ok(conn)
    }

    /// A connection arrived on the listener: `Some(id)` to take it (then
    /// [`handle_ready`](Self::handle_ready) once its transport handshake is
    /// done), `None` to refuse it (the connection limit is reached).
    pub fn accept(&mut self, now: Now) -> Option<ConnId> {
        if self.links.len() >= self.cfg.max_connections {
            return None;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.links.insert(conn, Link::new(false, None, now));
        Some(conn)
    }

    /// The transport of `conn` is up: our handshake goes out, first and
    /// uncompressed (exactly one per connection).
    pub fn handle_ready(&mut self, conn: ConnId, now: Now) {
        let Some(link) = self.links.get_mut(&conn) else {
            // Forgotten meanwhile (closed, blocked): the shell closes it.
            return self.push(Output::Close { conn });
        };
        link.open = true;
        link.opened = now.elapsed;
        link.last_recv = now.elapsed;
        let methods: Vec<Value> = self
            .cfg
            .compression
            .iter()
            .map(|m| Value::from(m.flag()))
            .chain([
                Value::from(flags::compression::RS2P_MARKER),
                Value::from(flags::compression::RS2P_RECONCILES),
                Value::from(flags::compression::RS2P_TREE),
                Value::from(flags::compression::RS2P_BATCHES),
                Value::from(flags::compression::RS2P_BARE),
            ])
            .chain(
                self.cfg
                    .creator_push
                    .then(|| Value::from(flags::compression::RS2P_CREATOR_PUSH)),
            )
            .collect();
        let payload = [
            Value::from(sub::HANDSHAKE),
            Value::Bin(self.cfg.id.clone()),
            Value::Bin(self.cfg.protocol_id.clone()),
            // An empty host advertises no address (a browser cannot listen).
            Value::Array(if self.cfg.out_addr.0.is_empty() {
                vec![Value::Nil, Value::Nil]
            } else {
                vec![
                    Value::from(self.cfg.out_addr.0.as_str()),
                    Value::from(self.cfg.out_addr.1),
                ]
            }),
            Value::Array(methods),
        ];
        let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, &payload);
        let frame = packed.to_frame(None);
        self.stats.sent(main::WHISPER, frame.len());
        self.send_frame(conn, frame, now);
    }

    /// A dial or a transport handshake failed.
    pub fn handle_failed(&mut self, conn: ConnId) {
        self.links.remove(&conn);
    }

    /// The shell could not queue bytes for `conn`: its send queue is full.
    pub fn handle_slow(&mut self, conn: ConnId, now: Now) {
        if self.links.contains_key(&conn) {
            self.stats.slow_peers_dropped += 1;
            self.drop_conn(conn, "peer too slow: send queue full", now);
        }
    }

    /// The connection ended (end of stream, error, framing limit).
    pub fn handle_closed(&mut self, conn: ConnId, reason: &str, now: Now) {
        self.drop_conn(conn, reason, now);
    }

    /// Drops a peer by id (the user's `disconnect`): it is not re-dialled.
    pub fn disconnect(&mut self, peer: &[u8], now: Now) -> bool {
        match self.routing.get(peer).copied() {
            Some(conn) => {
                self.no_redial.insert(peer.to_vec());
                self.drop_conn(conn, "disconnected by the user", now);
                true
            }
            None => false,
        }
    }

    /// Blocks a peer (dropped, refused at handshake, not re-dialled) or
    /// unblocks it (its re-dial is due at once).
    pub fn block(&mut self, peer: &[u8], blocked: bool, now: Now) {
        if blocked {
            if let Some(conn) = self.routing.get(peer).copied() {
                self.drop_conn(conn, "peer blocked", now);
            }
            self.blocked.insert(peer.to_vec());
        } else {
            self.blocked.remove(peer);
            for r in self.redials.iter_mut().filter(|r| r.id == peer) {
                r.due = now.elapsed;
                r.attempts = 0;
                r.since = now.elapsed;
            }
        }
    }
}
