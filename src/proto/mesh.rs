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
use rand::RngCore;

use super::align;
use super::seen::{Admit, Seen};
use super::{ConnId, Event, Now, Output};
use crate::error::{Error, Result};
use crate::value::Value;
use crate::wire::flags::{self, main, sub};
use crate::wire::packet::{is_live_delete, Handshake, Packet, PeerEntry};
use crate::wire::{ids, Compression, Limits, MessageId, Packed, WireMessage};

/// Longest wait between two re-dials of a lost peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// First wait before a lost peer is re-dialled; it doubles per attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// For how long a lost peer is re-dialled.
pub const REDIAL_FOR: Duration = Duration::from_secs(3600);
/// First wait before a node short of outgoing links asks for peers again;
/// the wait doubles up to `MAX_REFRESH`, and starts over when a peer leaves.
const FIRST_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(60);
/// Pending route requests kept (reply to a non-neighbour).
const MAX_PENDING_REQUESTS: usize = 1024;
/// Whispers kept per node we are dialling to deliver a reply to.
const MAX_AFTER_CONNECT: usize = 64;
/// Bodies smaller than this go uncompressed to rs2p peers: compressing
/// them costs time on both ends and saves no bytes. (Receivers accept an
/// uncompressed body whatever was negotiated.)
const RS2P_COMPRESS_MIN: usize = 512;

/// How a peer encodes its ids, which tells which reference it behaves like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// Sends its protocol id as bin: py2p.
    Py,
    /// Another rs2p node (bin ids and the rs2p marker in its handshake).
    Rs,
    /// Sends its protocol id as str: js2p.
    Js,
    /// No handshake yet.
    Unknown,
}

/// A handshaken peer, as the routing table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node id.
    pub id: String,
    /// The address it advertised, if any.
    pub addr: Option<(String, u16)>,
    /// True when we dialed it.
    pub outgoing: bool,
    /// Which reference it behaves like.
    pub kind: PeerKind,
}

/// Counters of a node, for monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Handshaken peers.
    pub peers: usize,
    /// Open connections (handshaken or not).
    pub connections: usize,
    /// Broadcasts refused as older than the 60 s window.
    pub expired_broadcasts: u64,
    /// Frames refused as undecodable (their connection was dropped).
    pub bad_frames: u64,
    /// The last decoding error.
    pub last_error: Option<String>,
    /// Peers dropped because their send queue was full.
    pub slow_peers_dropped: u64,
    /// Broadcasts received for the first time (not counting our own).
    pub broadcasts_received: u64,
    /// Broadcasts received again (every neighbour relays them), or our
    /// own echoing back.
    pub duplicate_broadcasts: u64,
    /// Broadcast frames relayed to peers.
    pub relays: u64,
    /// Relays not sent because the rs2p peer the broadcast came from had
    /// already sent it to that neighbour (see the crate docs).
    pub relays_pruned: u64,
}

/// What the mesh rules need to know about the node.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our node id.
    pub id: Vec<u8>,
    /// Our protocol id (subnet and transport hashed, see
    /// [`ids::protocol_id`]).
    pub protocol_id: Vec<u8>,
    /// The address we advertise.
    pub out_addr: (String, u16),
    /// The address we listen on, when it differs (`0.0.0.0`).
    pub listen: (String, u16),
    /// Compression methods, in order of preference.
    pub compression: Vec<Compression>,
    /// Decoding limits.
    pub limits: Limits,
    /// Outgoing connections opened from peers lists.
    pub max_outgoing: usize,
    /// Most connections at once (handshaken, pending or dialling).
    pub max_connections: usize,
    /// Time a new connection has to send its handshake.
    pub handshake_timeout: Duration,
    /// Broadcast ids remembered for duplicate suppression.
    pub seen_capacity: usize,
    /// Re-dial peers we lost.
    pub reconnect: bool,
}

impl Settings {
    /// Defaults for a node with this id on this subnet (plaintext), at this
    /// address.
    pub fn new(id: Vec<u8>, subnet: &str, addr: (&str, u16)) -> Settings {
        let out_addr = (addr.0.to_owned(), addr.1);
        Settings {
            id,
            protocol_id: ids::protocol_id(subnet, "Plaintext").into_bytes(),
            listen: out_addr.clone(),
            out_addr,
            compression: Compression::ALL.to_vec(),
            limits: Limits::default(),
            max_outgoing: 4,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(30),
            seen_capacity: 1 << 18,
            reconnect: true,
        }
    }
}

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
    /// An rs2p peer's own neighbours, as it last told us
    /// ([`sub::RS2P_NEIGHBOURS`]): it relays every broadcast to them itself.
    neighbours: HashSet<Vec<u8>>,
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
            neighbours: HashSet::new(),
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

    fn method_for(&self, len: usize) -> Option<Compression> {
        if self.kind == PeerKind::Rs && len < RS2P_COMPRESS_MIN {
            None
        } else {
            self.send_method
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

    /// The compression to use towards `conn` for a body of `len` bytes.
    pub fn send_method(&self, conn: ConnId, len: usize) -> Option<Compression> {
        self.links.get(&conn).and_then(|c| c.method_for(len))
    }

    fn outgoing_count(&self) -> usize {
        self.links.values().filter(|c| c.outgoing).count()
    }

    fn is_self_addr(&self, host: &str, port: u16) -> bool {
        let (out_host, out_port) = (&self.cfg.out_addr.0, self.cfg.out_addr.1);
        let (listen_host, listen_port) = (&self.cfg.listen.0, self.cfg.listen.1);
        port == out_port && (host == out_host || host_is_local(host) && host_is_local(out_host))
            || (port == listen_port && (host_is_local(host) || host == listen_host))
    }

    fn knows_addr(&self, host: &str, port: u16) -> bool {
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
    fn dial(
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
        let methods: Vec<Value> = self
            .cfg
            .compression
            .iter()
            .map(|m| Value::from(m.flag()))
            .chain(std::iter::once(Value::from(
                flags::compression::RS2P_MARKER,
            )))
            .collect();
        let payload = [
            Value::from(sub::HANDSHAKE),
            Value::Bin(self.cfg.id.clone()),
            Value::Bin(self.cfg.protocol_id.clone()),
            Value::Array(vec![
                Value::from(self.cfg.out_addr.0.as_str()),
                Value::from(self.cfg.out_addr.1),
            ]),
            Value::Array(methods),
        ];
        let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, &payload);
        self.send_frame(conn, packed.to_frame(None), now);
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

    // ----- sending -----

    /// Queues a frame; remembered for `resend`.
    fn send_frame(&mut self, conn: ConnId, frame: Bytes, now: Now) {
        self.send_frames(conn, std::slice::from_ref(&frame), now);
        if let Some(c) = self.links.get_mut(&conn) {
            c.last_sent = Some(frame);
        }
    }

    /// Queues frames as one write. Towards py2p-like peers the write is laid
    /// out so that py2p's reader cannot hit its framing bug (PROTOCOL.md Q5).
    pub fn send_frames(&mut self, conn: ConnId, frames: &[Bytes], now: Now) {
        let Some(c) = self.links.get_mut(&conn) else {
            return;
        };
        let bytes = if c.kind == PeerKind::Py {
            align::layout(
                &mut c.stream_pos,
                frames,
                &self.cfg.id,
                now.unix,
                c.send_method,
            )
        } else if frames.len() == 1 {
            c.stream_pos += frames[0].len() as u64;
            frames[0].clone()
        } else {
            let mut v = Vec::with_capacity(frames.iter().map(Bytes::len).sum());
            for f in frames {
                v.extend_from_slice(f);
            }
            c.stream_pos += v.len() as u64;
            v.into()
        };
        c.unsent += bytes.len();
        self.out.push_back(Output::Transmit { conn, bytes });
    }

    /// Packs and queues a message for one connection.
    pub fn send_packed(&mut self, conn: ConnId, packed: &Packed, now: Now) {
        let Some(c) = self.links.get(&conn) else {
            return;
        };
        let frame = packed.to_frame(c.method_for(packed.body().len()));
        self.send_frame(conn, frame, now);
    }

    fn whisper_to(&mut self, conn: ConnId, payload: &[Value], now: Now) {
        let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, payload);
        self.send_packed(conn, &packed, now);
    }

    /// Sends a message of our own: a broadcast is flooded (and remembered,
    /// so its echoes are dropped); any other type goes to every peer.
    pub fn send(&mut self, msg_type: u8, payload: &[Value], now: Now) -> MessageId {
        let packed = Packed::new(msg_type, &self.cfg.id, now.unix, payload);
        if msg_type == main::BROADCAST {
            self.flood(&packed, payload, None, None, now);
        } else {
            for conn in self.routed(None) {
                self.send_packed(conn, &packed, now);
            }
        }
        packed.id()
    }

    /// Whispers to a neighbour.
    pub fn whisper(&mut self, peer: &[u8], payload: &[Value], now: Now) -> Result<()> {
        match self.routing.get(peer).copied() {
            Some(conn) => {
                self.whisper_to(conn, payload, now);
                Ok(())
            }
            None => Err(Error::UnknownPeer(bytes_text(peer))),
        }
    }

    /// Answers a node: a whisper when it is a neighbour, else through a
    /// route request (PROTOCOL.md §6.6).
    pub fn reply(&mut self, peer: &[u8], payload: Vec<Value>, now: Now) {
        if let Some(conn) = self.routing.get(peer).copied() {
            self.whisper_to(conn, &payload, now);
        } else {
            self.request_route(peer.to_vec(), payload, now);
        }
    }

    /// Sends a broadcast's original bytes to every peer but its creator and
    /// the connection it came from; each compression is applied once.
    ///
    /// Two rules are applied here:
    /// - **js2p cannot delete** (PROTOCOL.md J2): a sync delete (a store of
    ///   nil) is not sent to js2p-like peers, which drop the link that
    ///   delivers one;
    /// - **relay pruning** (rs2p only): what came from an rs2p peer reached
    ///   its neighbours from it — the list it sent is older than the
    ///   broadcast on the same stream, and it relays every broadcast to
    ///   every neighbour but the sender.
    fn flood(
        &mut self,
        packed: &Packed,
        payload: &[Value],
        from_conn: Option<ConnId>,
        creator: Option<&[u8]>,
        now: Now,
    ) {
        let skip_js = is_live_delete(payload);
        let relayed_by = from_conn
            .and_then(|c| self.links.get(&c))
            .map(|c| &c.neighbours);
        let mut pruned_count = 0;
        let targets: Vec<ConnId> = self
            .routing
            .iter()
            .filter(|(id, conn)| Some(**conn) != from_conn && creator != Some(id.as_slice()))
            .filter(|(_, conn)| !skip_js || self.peer_kind(**conn) != PeerKind::Js)
            .filter(|(id, _)| {
                let pruned = relayed_by.is_some_and(|n| n.contains(*id));
                pruned_count += u64::from(pruned);
                !pruned
            })
            .map(|(_, conn)| *conn)
            .collect();
        self.stats.relays_pruned += pruned_count;
        if from_conn.is_some() {
            self.stats.relays += targets.len() as u64;
        }
        let mut frames: Vec<(Option<Compression>, Bytes)> = Vec::new();
        for conn in targets {
            let method = self.send_method(conn, packed.body().len());
            let frame = match frames.iter().find(|(m, _)| *m == method) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = packed.to_frame(method);
                    frames.push((method, f.clone()));
                    f
                }
            };
            self.send_frame(conn, frame, now);
        }
    }

    /// Our peers list for a peer of `for_kind`. **Never advertises js2p-like
    /// peers to py2p-like ones** (PROTOCOL.md §10.2 item 1): a py2p node that
    /// dials a js2p node leaves a dead routing entry and floods requests.
    fn peers_payload(&self, for_kind: PeerKind) -> Vec<Value> {
        let mut list = Vec::new();
        for (id, conn) in &self.routing {
            let Some(c) = self.links.get(conn) else {
                continue;
            };
            if for_kind == PeerKind::Py && c.kind == PeerKind::Js {
                continue;
            }
            if let Some((h, p)) = c.full_addr() {
                list.push(Value::Array(vec![
                    Value::Array(vec![Value::from(h), Value::from(p)]),
                    Value::Bin(id.clone()),
                ]));
            }
        }
        vec![Value::from(sub::PEERS), Value::Array(list)]
    }

    // ----- receiving -----

    /// A frame body arrived on `conn`.
    pub(crate) fn handle_frame(&mut self, conn: ConnId, body: Bytes, now: Now) -> Upcall {
        let Some(c) = self.links.get(&conn) else {
            return Upcall::Done;
        };
        // Most broadcasts arrive several times (every neighbour relays
        // them). An uncompressed one whose id we already hold is dropped
        // before hashing and parsing it; a forged id only loses the
        // forger's own frame.
        if body.len() > 33 && matches!(body[32], 0x90..=0x9f | 0xdc) && body[33] == main::BROADCAST
        {
            let mut id = [0u8; 32];
            id.copy_from_slice(&body[..32]);
            if self.seen.contains(&id) {
                self.stats.duplicate_broadcasts += 1;
                return Upcall::Done;
            }
        }
        let parsed = Packed::from_body(body, &c.recv_methods, &self.cfg.limits)
            .and_then(|p| p.parse(&self.cfg.limits).map(|m| (p, m)));
        let (packed, msg) = match parsed {
            Ok(pm) => pm,
            Err(e) => {
                self.stats.bad_frames += 1;
                self.stats.last_error = Some(e.to_string());
                self.drop_conn(conn, &format!("bad frame: {e}"), now);
                return Upcall::Done;
            }
        };
        let packet = Packet::parse(&msg);
        match &packet {
            Packet::Compression(list) => {
                self.renegotiate(conn, list.clone(), now);
                return Upcall::Done;
            }
            Packet::Resend => {
                if let Some(frame) = self.links.get(&conn).and_then(|c| c.last_sent.clone()) {
                    self.send_frame(conn, frame, now);
                }
                return Upcall::Done;
            }
            _ if msg.msg_type == main::RENEGOTIATE => return Upcall::Done,
            _ => {}
        }
        if msg.msg_type == main::BROADCAST {
            // Our own broadcasts echoing back are dropped without being
            // remembered: nobody else creates messages under our id.
            if msg.sender == self.cfg.id {
                self.stats.duplicate_broadcasts += 1;
                return Upcall::Done;
            }
            match self.seen.admit(packed.id(), msg.time, now.unix) {
                Admit::New => {}
                Admit::Duplicate => {
                    self.stats.duplicate_broadcasts += 1;
                    return Upcall::Done;
                }
                Admit::Expired => return Upcall::Done,
            }
            self.stats.broadcasts_received += 1;
            self.flood(&packed, &msg.payload, Some(conn), Some(&msg.sender), now);
        }
        match packet {
            Packet::Handshake(h) => {
                if self.handshake(conn, h, now) {
                    Upcall::Joined(conn)
                } else {
                    Upcall::Done
                }
            }
            Packet::Peers(list) => {
                self.dial_peers(list, now);
                Upcall::Done
            }
            Packet::Neighbours(list) => {
                self.neighbours_of(conn, list);
                Upcall::Done
            }
            Packet::RequestPeers => {
                let peers = self.peers_payload(self.peer_kind(conn));
                self.whisper_to(conn, &peers, now);
                Upcall::Done
            }
            Packet::Request { req_id, wanted } => {
                self.route_request(conn, req_id, wanted, now);
                Upcall::Done
            }
            Packet::Response { req_id, target } => {
                self.route_response(req_id, target, now);
                Upcall::Done
            }
            Packet::BadHandshake => {
                self.drop_conn(conn, "handshake without id or protocol id", now);
                Upcall::Done
            }
            // Malformed sync packets are the dictionary's to consume (a plain
            // mesh node hands them to its handlers).
            Packet::Ignored(why) if !matches!(msg.sub_flag(), Some(sub::STORE | sub::DELTA)) => {
                tracing::debug!(conn, why, "packet ignored");
                Upcall::Done
            }
            packet => Upcall::Message(Box::new(Incoming {
                conn,
                id: packed.id(),
                msg,
                packet,
            })),
        }
    }

    /// A handshake. Returns true on the first one of a connection.
    ///
    /// Rules: a peer on another subnet, ourselves, a blocked peer, or (on a
    /// re-dial) a node other than the one lost there is dropped; the kind of
    /// peer is told by the type of its protocol id (**js2p sends str**) and
    /// rs2p's marker in its compression list; when **both ends dialled each
    /// other**, the connection dialled by the node with the larger id is
    /// kept, as py2p does, so both ends agree. js2p sends two handshakes: a
    /// second one only updates the peer's fields.
    fn handshake(&mut self, conn: ConnId, h: Handshake, now: Now) -> bool {
        if h.protocol_id != self.cfg.protocol_id {
            tracing::warn!(
                conn,
                theirs = %bytes_text(&h.protocol_id),
                ours = %bytes_text(&self.cfg.protocol_id),
                "peer on another subnet/protocol: connection refused"
            );
            self.drop_conn(conn, "peer on another subnet", now);
            return false;
        }
        if h.id == self.cfg.id {
            self.drop_conn(conn, "connected to ourselves", now);
            return false;
        }
        if self.blocked.contains(&h.id) {
            self.drop_conn(conn, "peer blocked", now);
            return false;
        }
        if let Some(want) = self.links.get(&conn).and_then(|c| c.expected_id.as_ref()) {
            if *want != h.id {
                self.drop_conn(conn, "another node answers at a lost peer's address", now);
                return false;
            }
        }
        let kind = if h.protocol_id_is_str {
            PeerKind::Js
        } else if h.is_rs2p() {
            PeerKind::Rs
        } else {
            PeerKind::Py
        };
        if let Some(&other) = self.routing.get(&h.id) {
            if other != conn && self.links.contains_key(&other) {
                let keep_outgoing =
                    ids::cmp_ids_numeric(&self.cfg.id, &h.id) == std::cmp::Ordering::Greater;
                let this_outgoing = self.links.get(&conn).is_some_and(|c| c.outgoing);
                let other_outgoing = self.links.get(&other).is_some_and(|c| c.outgoing);
                if this_outgoing == other_outgoing || this_outgoing != keep_outgoing {
                    self.drop_conn(conn, "duplicate connection to the same peer", now);
                    return false;
                }
                self.routing.remove(&h.id);
                self.links.remove(&other);
                self.push(Output::Close { conn: other });
            }
        }
        let compression = self.cfg.compression.clone();
        let Some(c) = self.links.get_mut(&conn) else {
            return false;
        };
        let first = !c.handshaken;
        c.handshaken = true;
        c.peer_id = Some(h.id.clone());
        c.peer_addr = h.addr.clone();
        c.kind = kind;
        c.set_peer_methods(h.methods, &compression);
        if !first {
            return false;
        }
        let addr = c.full_addr();
        let peer_id = h.id;
        let was_empty = self.routing.is_empty();
        self.routing.insert(peer_id.clone(), conn);
        self.no_redial.remove(&peer_id);
        self.redials.retain(|r| r.id != peer_id);
        tracing::info!(conn, peer = %bytes_text(&peer_id), ?kind, "peer joined");
        if was_empty {
            self.push(Output::Event(Event::Connected));
        }
        self.push(Output::Event(Event::PeerJoined { id: peer_id, addr }));
        let peers = self.peers_payload(kind);
        self.whisper_to(conn, &peers, now);
        self.announce_neighbours(now);
        true
    }

    /// Whispers kept for a node we dialled to answer it (route responses).
    pub(crate) fn flush_after_connect(&mut self, conn: ConnId, now: Now) {
        let Some(peer) = self.links.get(&conn).and_then(|c| c.peer_id.clone()) else {
            return;
        };
        if let Some(waiting) = self.after_connect.remove(&peer) {
            for payload in waiting {
                self.whisper_to(conn, &payload, now);
            }
        }
    }

    /// Tells every rs2p peer who our neighbours are now (see
    /// [`sub::RS2P_NEIGHBOURS`]). Called whenever the routing table
    /// changes, before anything else is sent, so that a peer never prunes a
    /// relay on a list that is newer than the broadcast it came with.
    fn announce_neighbours(&mut self, now: Now) {
        let rs = self.routed(Some(PeerKind::Rs));
        if rs.is_empty() {
            return;
        }
        let ids = self
            .routing
            .keys()
            .map(|id| Value::Bin(id.clone()))
            .collect();
        let payload = [Value::from(sub::RS2P_NEIGHBOURS), Value::Array(ids)];
        let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, &payload);
        for c in rs {
            self.send_packed(c, &packed, now);
        }
    }

    /// An rs2p peer's neighbour list (ignored from anyone else, and when
    /// longer than we would ever keep connections).
    fn neighbours_of(&mut self, conn: ConnId, list: Vec<Vec<u8>>) {
        let max = self.cfg.max_connections;
        let Some(c) = self.links.get_mut(&conn) else {
            return;
        };
        if c.kind != PeerKind::Rs || list.len() > max {
            return;
        }
        c.neighbours = list.into_iter().collect();
    }

    /// Dials the nodes of a peers list we neither know nor are, while short
    /// of outgoing connections.
    fn dial_peers(&mut self, list: Vec<PeerEntry>, now: Now) {
        for e in list {
            if self.outgoing_count() >= self.cfg.max_outgoing {
                break;
            }
            if e.id == self.cfg.id
                || self.routing.contains_key(&e.id)
                || self.is_self_addr(&e.host, e.port)
                || self.knows_addr(&e.host, e.port)
            {
                continue;
            }
            let _ = self.dial(e.host, e.port, None, now);
        }
    }

    fn route_request(&mut self, conn: ConnId, req_id: Vec<u8>, wanted: Vec<u8>, now: Now) {
        let target = self.routing.get(&wanted).and_then(|c| self.links.get(c));
        if let Some((h, port)) = target.and_then(Link::full_addr) {
            let payload = [
                Value::from(sub::RESPONSE),
                Value::Bin(req_id),
                Value::Array(vec![
                    Value::Array(vec![Value::from(h), Value::from(port)]),
                    Value::Bin(wanted),
                ]),
            ];
            let packed = Packed::new(main::BROADCAST, &self.cfg.id, now.unix, &payload);
            self.send_packed(conn, &packed, now);
        }
    }

    fn request_route(&mut self, peer: Vec<u8>, payload: Vec<Value>, now: Now) {
        let mut seed = self.cfg.id.clone();
        seed.extend_from_slice(ids::to_base58(&now.unix.to_be_bytes()).as_bytes());
        let mut salt = [0u8; 8];
        self.rng.fill_bytes(&mut salt);
        seed.extend_from_slice(&salt);
        let req_id = ids::to_base58(&<sha2::Sha384 as sha2::Digest>::digest(&seed));
        if self.pending_requests.len() >= MAX_PENDING_REQUESTS {
            self.pending_requests.clear();
        }
        self.pending_requests
            .insert(req_id.clone().into_bytes(), payload);
        let payload = [
            Value::from(sub::REQUEST),
            Value::from(req_id),
            Value::Bin(peer),
        ];
        let packed = Packed::new(main::BROADCAST, &self.cfg.id, now.unix, &payload);
        self.flood(&packed, &payload, None, None, now);
    }

    fn route_response(&mut self, req_id: Vec<u8>, target: Option<PeerEntry>, now: Now) {
        let Some(payload) = self.pending_requests.remove(&req_id) else {
            return;
        };
        let Some(t) = target else { return };
        if let Some(&conn) = self.routing.get(&t.id) {
            self.whisper_to(conn, &payload, now);
        } else {
            let waiting = self.after_connect.entry(t.id).or_default();
            if waiting.len() < MAX_AFTER_CONNECT {
                waiting.push(payload);
            }
            if !self.knows_addr(&t.host, t.port) {
                let _ = self.dial(t.host, t.port, None, now);
            }
        }
    }

    /// The peer's compression list changed: take it, and answer with ours
    /// restricted to it — **never to js2p-like peers**, which crash on a
    /// renegotiation.
    fn renegotiate(&mut self, conn: ConnId, given: Vec<i64>, now: Now) {
        let compression = self.cfg.compression.clone();
        let Some(c) = self.links.get_mut(&conn) else {
            return;
        };
        let changed = c.peer_methods != given;
        c.set_peer_methods(given.clone(), &compression);
        if changed && c.kind != PeerKind::Js {
            let ours: Vec<Value> = compression
                .iter()
                .filter(|m| given.contains(&i64::from(m.flag())))
                .map(|m| Value::from(m.flag()))
                .collect();
            let packed = Packed::new(
                main::RENEGOTIATE,
                &self.cfg.id,
                now.unix,
                &[Value::from(sub::COMPRESSION), Value::Array(ours)],
            );
            self.send_packed(conn, &packed, now);
        }
    }

    /// Removes a connection; a peer leaves the routing table, and we ask
    /// the others for peers and plan a re-dial.
    pub(crate) fn drop_conn(&mut self, conn: ConnId, reason: &str, now: Now) {
        let Some(c) = self.links.remove(&conn) else {
            return;
        };
        self.push(Output::Close { conn });
        tracing::debug!(conn, %reason, "dropping connection");
        let Some(peer_id) = c.peer_id.clone() else {
            return;
        };
        if self.routing.get(&peer_id) != Some(&conn) {
            return;
        }
        self.routing.remove(&peer_id);
        self.announce_neighbours(now);
        tracing::info!(peer = %bytes_text(&peer_id), %reason, "peer left");
        self.push(Output::Event(Event::PeerLeft {
            id: peer_id.clone(),
        }));
        if self.cfg.reconnect && !self.no_redial.contains(&peer_id) {
            let target = c.dialed.clone().or_else(|| c.full_addr());
            if let Some((host, port)) = target {
                self.redials.retain(|r| r.id != peer_id);
                self.redials.push(Redial {
                    host,
                    port,
                    id: peer_id,
                    due: now.elapsed + FIRST_BACKOFF,
                    attempts: 0,
                    since: now.elapsed,
                });
            }
        }
        if self.outgoing_count() < self.cfg.max_outgoing {
            self.ask_for_peers(false, now);
        }
        self.refresh_every = FIRST_REFRESH;
        self.next_refresh = now.elapsed + FIRST_REFRESH;
    }

    /// Sends the peers request `'*'` as bin, which py2p and js2p both answer
    /// with a peers list (**py2p sends str but only understands bin**).
    /// **js2p also re-sends its whole dictionary** in answer (J10), so
    /// periodic refreshes skip js2p-like peers.
    fn ask_for_peers(&mut self, periodic: bool, now: Now) {
        let payload = [Value::from(sub::REQUEST), Value::Bin(b"*".to_vec())];
        let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, &payload);
        let conns: Vec<ConnId> = self
            .routed(None)
            .into_iter()
            .filter(|c| !periodic || self.peer_kind(*c) != PeerKind::Js)
            .collect();
        for c in conns {
            self.send_packed(c, &packed, now);
        }
    }

    // ----- timers -----

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let handshakes = self
            .links
            .values()
            .filter(|c| c.open && !c.handshaken)
            .map(|c| c.opened + self.cfg.handshake_timeout);
        let redials = self.redials.iter().map(|r| r.due.min(r.since + REDIAL_FOR));
        handshakes
            .chain(redials)
            .chain(std::iter::once(self.next_refresh))
            .min()
    }

    /// Runs what is due: peers refreshes, handshake timeouts, re-dials.
    pub fn handle_timeout(&mut self, now: Now) {
        let t = now.elapsed;
        // A node short of outgoing links asks its peers for theirs now and
        // then: peers lists are otherwise only sent at handshakes, so the
        // first nodes of a chain would never hear of the later ones.
        if t >= self.next_refresh {
            if !self.routing.is_empty() && self.outgoing_count() < self.cfg.max_outgoing {
                self.ask_for_peers(true, now);
            }
            self.refresh_every = (self.refresh_every * 2).min(MAX_REFRESH);
            self.next_refresh = t + self.refresh_every;
        }
        let timeout = self.cfg.handshake_timeout;
        let stale: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, c)| c.open && !c.handshaken && t.saturating_sub(c.opened) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for conn in stale {
            self.drop_conn(conn, "no handshake in time", now);
        }
        let mut due = Vec::new();
        self.redials.retain_mut(|r| {
            if t.saturating_sub(r.since) >= REDIAL_FOR {
                return false;
            }
            if r.due <= t {
                due.push((r.host.clone(), r.port, r.id.clone()));
                r.attempts += 1;
                let backoff = FIRST_BACKOFF * 2u32.saturating_pow(r.attempts.min(10));
                r.due = t + backoff.min(MAX_BACKOFF);
            }
            true
        });
        for (host, port, id) in due {
            if self.routing.contains_key(&id)
                || self.blocked.contains(&id)
                || self.knows_addr(&host, port)
            {
                continue;
            }
            let _ = self.dial(host, port, Some(id), now);
        }
    }
}
