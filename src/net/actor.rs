//! The mesh actor: owns the routing table, the duplicate window, the
//! connections and the services (sync), and runs every protocol rule of
//! PROTOCOL.md §6.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinSet;

use crate::config::MeshConfig;
use crate::error::{Error, Result};
use crate::mesh::{Inner, MeshEvent, Message, NodeStats, PeerInfo, PeerKind};
use crate::net::align;
use crate::net::conn::{self, ConnEvent, ConnHandle, ConnId, ConnSettings, SendError};
use crate::net::transport::{Io, Transport};
use crate::proto::seen::{Admit, Seen};
use crate::value::Value;
use crate::wire::flags::{self, main, sub};
use crate::wire::{ids, Compression, MessageId, Packed, WireMessage};

/// Capacity of the channel from connection tasks to the actor (each
/// message is the frames of one read; readers also stop reading while
/// [`conn::MAX_UNHANDLED`] bytes of theirs wait for the actor).
const CONN_EVENT_CAPACITY: usize = 256;
/// Capacity of the dial-result channel.
const DIAL_CAPACITY: usize = 64;
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Housekeeping period (handshake timeouts, re-dials).
const TICK: Duration = Duration::from_millis(250);
/// Longest wait between two re-dials of a lost peer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// For how long a lost peer is re-dialled.
const REDIAL_FOR: Duration = Duration::from_secs(3600);
/// How often bulk work (state transfers) is moved along while peers'
/// queues are full.
const PUMP_PERIOD: Duration = Duration::from_millis(2);
/// First wait before a node short of outgoing links asks for peers again;
/// the wait doubles up to `MAX_REFRESH`, and starts over when a peer leaves.
const FIRST_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(60);
/// Pending route requests kept (reply to a non-neighbour).
const MAX_PENDING_REQUESTS: usize = 1024;

/// Current unix time in whole seconds, as both references compute it.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A request to the actor.
pub(crate) enum Cmd {
    Connect {
        host: String,
        port: u16,
        reply: oneshot::Sender<Result<()>>,
    },
    Send {
        msg_type: u8,
        payload: Vec<Value>,
        /// The id, and whether a peer's queue is now more than half full.
        reply: oneshot::Sender<(MessageId, bool)>,
    },
    Whisper {
        peer: Vec<u8>,
        payload: Vec<Value>,
        reply: oneshot::Sender<Result<()>>,
    },
    Reply {
        peer: Vec<u8>,
        payload: Vec<Value>,
        reply: oneshot::Sender<Result<()>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    Stats {
        reply: oneshot::Sender<NodeStats>,
    },
    Disconnect {
        peer: Vec<u8>,
        reply: oneshot::Sender<bool>,
    },
    Block {
        peer: Vec<u8>,
        blocked: bool,
        reply: oneshot::Sender<()>,
    },
    Call(Box<dyn FnOnce(&mut Ctx<'_>) + Send>),
    AddHandler(Handler),
    Close,
}

/// A user handler: sees messages before they are queued; `true` claims one.
pub(crate) type Handler = Box<dyn FnMut(&Message) -> bool + Send>;

/// A protocol extension running inside the actor (the sync dictionary).
pub(crate) trait Service: Send + 'static {
    /// A peer finished its handshake on `conn` (first handshake only).
    fn on_peer(&mut self, ctx: &mut Ctx<'_>, conn: ConnId);
    /// A message arrived; `true` claims it.
    fn on_message(&mut self, ctx: &mut Ctx<'_>, inc: &Incoming) -> bool;
    /// Moves bulk work along (state transfers) as peers' queues drain;
    /// `true` while work is left.
    fn pump(&mut self, _ctx: &mut Ctx<'_>) -> bool {
        false
    }
}

/// A received, decoded message.
pub(crate) struct Incoming {
    pub conn: ConnId,
    pub id: MessageId,
    pub msg: WireMessage,
}

struct Conn {
    handle: ConnHandle,
    outgoing: bool,
    opened: Instant,
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
    /// For re-dials: the id the node at this address must have.
    expected_id: Option<Vec<u8>>,
    /// An rs2p peer's own neighbours, as it last told us
    /// ([`sub::RS2P_NEIGHBOURS`]): it relays every broadcast to them itself.
    neighbours: HashSet<Vec<u8>>,
}

/// Bodies smaller than this go uncompressed to rs2p peers: compressing
/// them costs time on both ends and saves no bytes. (Receivers accept an
/// uncompressed body whatever was negotiated.)
const RS2P_COMPRESS_MIN: usize = 512;

impl Conn {
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
}

struct Redial {
    host: String,
    port: u16,
    id: Vec<u8>,
    due: Instant,
    attempts: u32,
    since: Instant,
}

/// A dial, or the transport handshake of an accepted connection, ended.
struct DialDone {
    host: String,
    port: u16,
    outgoing: bool,
    expect: Option<Vec<u8>>,
    result: std::io::Result<Io>,
    reply: Option<oneshot::Sender<Result<()>>>,
}

/// Everything the actor owns except the services, so that services can be
/// handed a `Ctx` over it.
pub(crate) struct Core {
    cfg: MeshConfig,
    id: Vec<u8>,
    protocol_id: Vec<u8>,
    out_host: String,
    out_port: u16,
    conns: HashMap<ConnId, Conn>,
    routing: HashMap<Vec<u8>, ConnId>,
    seen: Seen,
    next_conn: ConnId,
    conn_tx: mpsc::Sender<ConnEvent>,
    dial_tx: mpsc::Sender<DialDone>,
    dialing: HashSet<(String, u16)>,
    /// Dials, and transport handshakes of accepted connections.
    dials: JoinSet<()>,
    upgrading: usize,
    transport: Arc<dyn Transport>,
    settings: ConnSettings,
    inner: Weak<Inner>,
    queue: Arc<Mutex<VecDeque<Message>>>,
    queue_notify: Arc<Notify>,
    events: broadcast::Sender<MeshEvent>,
    pending_requests: HashMap<Vec<u8>, Vec<Value>>,
    after_connect: HashMap<Vec<u8>, Vec<Vec<Value>>>,
    redials: Vec<Redial>,
    no_redial: HashSet<Vec<u8>>,
    /// Peers refused at handshake and not re-dialled until unblocked.
    blocked: HashSet<Vec<u8>>,
    stats: NodeStats,
    /// When to ask peers for theirs again, and the current interval.
    next_refresh: Instant,
    refresh_every: Duration,
}

/// The view of the actor that services and `Cmd::Call` closures get.
pub(crate) struct Ctx<'a> {
    core: &'a mut Core,
}

impl Ctx<'_> {
    /// Unix seconds.
    pub(crate) fn now(&self) -> i64 {
        unix_now()
    }
    /// Our id.
    pub(crate) fn my_id(&self) -> &[u8] {
        &self.core.id
    }
    /// Packs and floods a broadcast; returns its id.
    pub(crate) fn broadcast(&mut self, payload: &[Value]) -> MessageId {
        let now = unix_now();
        let packed = Packed::new(main::BROADCAST, &self.core.id, now, payload);
        self.core.flood(&packed, payload, None, None);
        packed.id()
    }
    /// Queues frames on a connection as one write (bulk transfers).
    pub(crate) fn send_frames(&mut self, conn: ConnId, frames: &[Bytes]) {
        self.core.send_frames(conn, frames);
    }
    /// The kind of peer on `conn`.
    pub(crate) fn peer_kind(&self, conn: ConnId) -> PeerKind {
        self.core
            .conns
            .get(&conn)
            .map_or(PeerKind::Unknown, |c| c.kind)
    }
    /// The handshaken connections to peers of one kind.
    pub(crate) fn peers_of_kind(&self, kind: PeerKind) -> Vec<ConnId> {
        self.core
            .routing
            .values()
            .copied()
            .filter(|c| self.core.conns.get(c).is_some_and(|c| c.kind == kind))
            .collect()
    }
    /// Bytes queued towards `conn` and not yet written, and the most that
    /// may be; `None` when the connection is gone.
    pub(crate) fn queued_bytes(&self, conn: ConnId) -> Option<(usize, usize)> {
        self.core.conns.get(&conn).map(|c| c.handle.queued_bytes())
    }
    /// True when some peer's send queue is more than half full.
    pub(crate) fn crowded(&self) -> bool {
        self.core.crowded()
    }

    /// The compression to use towards `conn` for a body of `len` bytes.
    pub(crate) fn send_method(&self, conn: ConnId, len: usize) -> Option<Compression> {
        self.core.conns.get(&conn).and_then(|c| c.method_for(len))
    }
}

/// What the actor shares with the [`MeshSocket`](crate::MeshSocket) handle.
pub(crate) struct Shared {
    pub inner: Weak<Inner>,
    pub queue: Arc<Mutex<VecDeque<Message>>>,
    pub queue_notify: Arc<Notify>,
    pub drained: Arc<Notify>,
    pub events: broadcast::Sender<MeshEvent>,
}

/// Starts the actor on a bound listener.
pub(crate) fn start(
    cfg: MeshConfig,
    (listener, transport): (TcpListener, Arc<dyn Transport>),
    id: Vec<u8>,
    out: (String, u16),
    shared: Shared,
    cmd_rx: mpsc::Receiver<Cmd>,
    services: Vec<Box<dyn Service>>,
) -> tokio::task::JoinHandle<()> {
    let Shared {
        inner,
        queue,
        queue_notify,
        drained,
        events,
    } = shared;
    let (conn_tx, conn_rx) = mpsc::channel(CONN_EVENT_CAPACITY);
    let (dial_tx, dial_rx) = mpsc::channel(DIAL_CAPACITY);
    let settings = ConnSettings {
        limits: cfg.limits.clone(),
        queue: cfg.send_queue,
        queue_bytes: cfg.send_queue_bytes,
        incomplete_timeout: cfg.incomplete_frame_timeout,
        drained,
    };
    let core = Core {
        protocol_id: cfg.protocol_id().into_bytes(),
        seen: Seen::new(cfg.seen_capacity),
        cfg,
        id,
        out_host: out.0,
        out_port: out.1,
        conns: HashMap::new(),
        routing: HashMap::new(),
        next_conn: 1,
        conn_tx,
        dial_tx,
        dialing: HashSet::new(),
        dials: JoinSet::new(),
        upgrading: 0,
        transport,
        settings,
        inner,
        queue,
        queue_notify,
        events,
        pending_requests: HashMap::new(),
        after_connect: HashMap::new(),
        redials: Vec::new(),
        no_redial: HashSet::new(),
        blocked: HashSet::new(),
        stats: NodeStats::default(),
        next_refresh: Instant::now() + FIRST_REFRESH,
        refresh_every: FIRST_REFRESH,
    };
    tokio::spawn(run(core, listener, cmd_rx, conn_rx, dial_rx, services))
}

async fn run(
    mut core: Core,
    listener: TcpListener,
    mut cmd_rx: mpsc::Receiver<Cmd>,
    mut conn_rx: mpsc::Receiver<ConnEvent>,
    mut dial_rx: mpsc::Receiver<DialDone>,
    mut services: Vec<Box<dyn Service>>,
) {
    let mut handlers: Vec<Handler> = Vec::new();
    let mut pumping = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            cmd = cmd_rx.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Cmd::Close => break,
                    Cmd::AddHandler(h) => handlers.push(h),
                    Cmd::Call(f) => f(&mut Ctx { core: &mut core }),
                    other => core.command(other),
                }
            }
            ev = conn_rx.recv() => {
                // The actor holds a sender, so the channel never ends.
                let Some(ev) = ev else { break };
                match ev {
                    ConnEvent::Frames { conn, bodies } => {
                        let len = bodies.iter().map(Bytes::len).sum();
                        for body in bodies {
                            core.frame(conn, body, &mut services, &mut handlers);
                        }
                        if let Some(c) = core.conns.get(&conn) {
                            c.handle.handled(len);
                        }
                        pumping = true;
                    }
                    ConnEvent::Closed { conn, reason } => core.drop_conn(conn, &reason),
                }
            }
            done = dial_rx.recv() => {
                if let Some(done) = done { core.arrived(done) }
            }
            acc = listener.accept() => {
                match acc {
                    Ok((stream, addr)) => core.accepted(stream, addr),
                    Err(e) => tracing::warn!("accept failed: {e}"),
                }
            }
            _ = tick.tick() => core.housekeeping(),
            _ = tokio::time::sleep(PUMP_PERIOD), if pumping => {}
        }
        if pumping {
            pumping = false;
            for s in services.iter_mut() {
                pumping |= s.pump(&mut Ctx { core: &mut core });
            }
        }
    }
    core.dials.abort_all();
    core.conns.clear();
    core.routing.clear();
    core.queue_notify.notify_waiters();
    tracing::debug!("node closed");
}

fn bytes_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Core {
    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Connect { host, port, reply } => self.dial(host, port, Some(reply)),
            Cmd::Send {
                msg_type,
                payload,
                reply,
            } => {
                let now = unix_now();
                let packed = Packed::new(msg_type, &self.id, now, &payload);
                if msg_type == main::BROADCAST {
                    self.flood(&packed, &payload, None, None);
                } else {
                    let conns: Vec<ConnId> = self.routing.values().copied().collect();
                    for conn in conns {
                        self.send_packed(conn, &packed);
                    }
                }
                let _ = reply.send((packed.id(), self.crowded()));
            }
            Cmd::Whisper {
                peer,
                payload,
                reply,
            } => {
                let res = match self.routing.get(&peer).copied() {
                    Some(conn) => {
                        let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &payload);
                        self.send_packed(conn, &packed);
                        Ok(())
                    }
                    None => Err(Error::UnknownPeer(bytes_text(&peer))),
                };
                let _ = reply.send(res);
            }
            Cmd::Reply {
                peer,
                payload,
                reply,
            } => {
                if let Some(conn) = self.routing.get(&peer).copied() {
                    let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &payload);
                    self.send_packed(conn, &packed);
                } else {
                    self.request_route(peer, payload);
                }
                let _ = reply.send(Ok(()));
            }
            Cmd::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Cmd::Stats { reply } => {
                let mut st = self.stats.clone();
                st.expired_broadcasts = self.seen.expired();
                st.peers = self.routing.len();
                st.connections = self.conns.len();
                let _ = reply.send(st);
            }
            Cmd::Disconnect { peer, reply } => {
                let found = match self.routing.get(&peer).copied() {
                    Some(conn) => {
                        self.no_redial.insert(peer);
                        self.drop_conn(conn, "disconnected by the user");
                        true
                    }
                    None => false,
                };
                let _ = reply.send(found);
            }
            Cmd::Block {
                peer,
                blocked,
                reply,
            } => {
                if blocked {
                    if let Some(conn) = self.routing.get(&peer).copied() {
                        self.drop_conn(conn, "peer blocked");
                    }
                    self.blocked.insert(peer);
                } else {
                    self.blocked.remove(&peer);
                    let now = Instant::now();
                    for r in self.redials.iter_mut().filter(|r| r.id == peer) {
                        r.due = now;
                        r.attempts = 0;
                        r.since = now;
                    }
                }
                let _ = reply.send(());
            }
            Cmd::Close | Cmd::Call(_) | Cmd::AddHandler(_) => {}
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .routing
            .iter()
            .filter_map(|(id, conn)| {
                let c = self.conns.get(conn)?;
                let addr = match &c.peer_addr {
                    Some((Some(h), Some(p))) => Some((h.clone(), *p)),
                    _ => None,
                };
                Some(PeerInfo {
                    id: bytes_text(id),
                    addr,
                    outgoing: c.outgoing,
                    kind: c.kind,
                })
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn outgoing_count(&self) -> usize {
        self.conns.values().filter(|c| c.outgoing).count() + self.dialing.len()
    }

    fn is_self_addr(&self, host: &str, port: u16) -> bool {
        port == self.out_port
            && (host == self.out_host || host_is_local(host) && host_is_local(&self.out_host))
            || (port == self.cfg.bind.port()
                && (host_is_local(host) || host == self.cfg.bind.ip().to_string()))
    }

    fn knows_addr(&self, host: &str, port: u16) -> bool {
        self.dialing.contains(&(host.to_string(), port))
            || self.conns.values().any(|c| {
                c.dialed
                    .as_ref()
                    .is_some_and(|(h, p)| h == host && *p == port)
                    || matches!(&c.peer_addr, Some((Some(h), Some(p))) if h == host && *p == port)
            })
    }

    fn dial(&mut self, host: String, port: u16, reply: Option<oneshot::Sender<Result<()>>>) {
        self.dial_expecting(host, port, None, reply);
    }

    /// Dials; with `expect`, only the node with that id is accepted there
    /// (a re-dial must not join whatever node now uses a lost peer's port).
    fn dial_expecting(
        &mut self,
        host: String,
        port: u16,
        expect: Option<Vec<u8>>,
        reply: Option<oneshot::Sender<Result<()>>>,
    ) {
        if self.conns.len() + self.dialing.len() >= self.cfg.max_connections {
            if let Some(r) = reply {
                let _ = r.send(Err(Error::Config("connection limit reached".into())));
            }
            return;
        }
        self.dialing.insert((host.clone(), port));
        let tx = self.dial_tx.clone();
        let connect = self.transport.connect(host.clone(), port);
        self.dials.spawn(async move {
            let result = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )),
            };
            let _ = tx
                .send(DialDone {
                    host,
                    port,
                    outgoing: true,
                    expect,
                    result,
                    reply,
                })
                .await;
        });
        // Reap finished dial tasks so the set stays small.
        while self.dials.try_join_next().is_some() {}
    }

    fn arrived(&mut self, done: DialDone) {
        if done.outgoing {
            self.dialing.remove(&(done.host.clone(), done.port));
        } else {
            self.upgrading = self.upgrading.saturating_sub(1);
        }
        match done.result {
            Ok(io) => {
                let dialed = done.outgoing.then(|| (done.host.clone(), done.port));
                let conn = self.register(io, done.outgoing, dialed);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.expected_id = done.expect;
                }
                if let Some(r) = done.reply {
                    let _ = r.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::debug!(
                    outgoing = done.outgoing,
                    "connection to {}:{} failed: {e}",
                    done.host,
                    done.port
                );
                if let Some(r) = done.reply {
                    let _ = r.send(Err(Error::Io(e)));
                }
            }
        }
        while self.dials.try_join_next().is_some() {}
    }

    fn accepted(&mut self, stream: tokio::net::TcpStream, addr: SocketAddr) {
        if self.conns.len() + self.upgrading + self.dialing.len() >= self.cfg.max_connections {
            tracing::warn!(%addr, "connection limit of {} reached: refused", self.cfg.max_connections);
            return;
        }
        // The transport handshake (TLS, WebSocket) runs off the actor.
        self.upgrading += 1;
        let tx = self.dial_tx.clone();
        let upgrade = self.transport.accept(stream);
        let limit = self.cfg.handshake_timeout;
        self.dials.spawn(async move {
            let result = match tokio::time::timeout(limit, upgrade).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "transport handshake timed out",
                )),
            };
            let _ = tx
                .send(DialDone {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                    outgoing: false,
                    expect: None,
                    result,
                    reply: None,
                })
                .await;
        });
    }

    fn register(&mut self, io: Io, outgoing: bool, dialed: Option<(String, u16)>) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        let handle = conn::spawn(io, id, self.conn_tx.clone(), &self.settings);
        self.conns.insert(
            id,
            Conn {
                handle,
                outgoing,
                opened: Instant::now(),
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
                expected_id: None,
                neighbours: HashSet::new(),
            },
        );
        // Exactly one handshake, first and uncompressed.
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
            Value::Bin(self.id.clone()),
            Value::Bin(self.protocol_id.clone()),
            Value::Array(vec![
                Value::from(self.out_host.as_str()),
                Value::from(self.out_port),
            ]),
            Value::Array(methods),
        ];
        let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &payload);
        self.send_frame(id, packed.to_frame(None));
        id
    }

    /// True when some handshaken peer's send queue is more than half full.
    fn crowded(&self) -> bool {
        self.routing
            .values()
            .any(|c| self.conns.get(c).is_some_and(|c| c.handle.crowded()))
    }

    /// Queues a frame; a peer whose queue is full is dropped.
    fn send_frame(&mut self, conn: ConnId, frame: Bytes) {
        self.send_frames(conn, std::slice::from_ref(&frame));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_sent = Some(frame);
        }
    }

    /// Queues frames as one write; a peer whose queue is full is dropped.
    /// Towards py2p-like peers the write is laid out so that py2p's reader
    /// cannot hit its framing bug (see [`align`]).
    fn send_frames(&mut self, conn: ConnId, frames: &[Bytes]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let bytes = if c.kind == PeerKind::Py {
            align::layout(
                &mut c.stream_pos,
                frames,
                &self.id,
                unix_now(),
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
        match c.handle.send(bytes) {
            Ok(()) => {}
            Err(SendError::Full) => {
                self.stats.slow_peers_dropped += 1;
                self.drop_conn(conn, "peer too slow: send queue full")
            }
            Err(SendError::Closed) => {}
        }
    }

    fn send_packed(&mut self, conn: ConnId, packed: &Packed) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let frame = packed.to_frame(c.method_for(packed.body().len()));
        self.send_frame(conn, frame);
    }

    /// Sends a broadcast's original bytes to every peer but its creator and
    /// the connection it came from; each compression is applied once.
    ///
    /// A sync delete (a store of nil) is not sent to js2p-like peers: js2p
    /// cannot delete and drops the link that delivers one (PROTOCOL.md J2).
    fn flood(
        &mut self,
        packed: &Packed,
        payload: &[Value],
        from_conn: Option<ConnId>,
        creator: Option<&[u8]>,
    ) {
        let skip_js = is_delete(payload);
        let mut frames: Vec<(Option<Compression>, Bytes)> = Vec::new();
        // What came from an rs2p peer reached its neighbours from it: the
        // list it sent is older than the broadcast on the same stream, and
        // it relays every broadcast to every neighbour but the sender.
        let relayed_by = from_conn
            .and_then(|c| self.conns.get(&c))
            .map(|c| &c.neighbours);
        let mut pruned_count = 0;
        let targets: Vec<ConnId> = self
            .routing
            .iter()
            .filter(|(id, conn)| Some(**conn) != from_conn && creator != Some(id.as_slice()))
            .filter(|(_, conn)| {
                !skip_js || self.conns.get(conn).is_some_and(|c| c.kind != PeerKind::Js)
            })
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
        for conn in targets {
            let Some(method) = self
                .conns
                .get(&conn)
                .map(|c| c.method_for(packed.body().len()))
            else {
                continue;
            };
            let frame = match frames.iter().find(|(m, _)| *m == method) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = packed.to_frame(method);
                    frames.push((method, f.clone()));
                    f
                }
            };
            self.send_frame(conn, frame);
        }
    }

    fn peers_payload(&self, for_kind: PeerKind) -> Vec<Value> {
        let mut list = Vec::new();
        for (id, conn) in &self.routing {
            let Some(c) = self.conns.get(conn) else {
                continue;
            };
            // Never advertise js2p-like peers to py2p-like ones (§10.2 item 1).
            if for_kind == PeerKind::Py && c.kind == PeerKind::Js {
                continue;
            }
            if let Some((Some(h), Some(p))) = &c.peer_addr {
                list.push(Value::Array(vec![
                    Value::Array(vec![Value::from(h.as_str()), Value::from(*p)]),
                    Value::Bin(id.clone()),
                ]));
            }
        }
        vec![Value::from(sub::PEERS), Value::Array(list)]
    }

    fn frame(
        &mut self,
        conn: ConnId,
        body: Bytes,
        services: &mut [Box<dyn Service>],
        handlers: &mut [Handler],
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
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
                return;
            }
        }
        let packed = match Packed::from_body(body, &c.recv_methods, &self.cfg.limits) {
            Ok(p) => p,
            Err(e) => {
                self.stats.bad_frames += 1;
                self.stats.last_error = Some(e.to_string());
                return self.drop_conn(conn, &format!("bad frame: {e}"));
            }
        };
        let msg = match packed.parse(&self.cfg.limits) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_frames += 1;
                self.stats.last_error = Some(e.to_string());
                return self.drop_conn(conn, &format!("bad message: {e}"));
            }
        };
        let now = unix_now();
        if msg.msg_type == main::RENEGOTIATE {
            return self.renegotiate(conn, &msg);
        }
        if msg.msg_type == main::BROADCAST {
            // Our own broadcasts echoing back are dropped without being
            // remembered: nobody else creates messages under our id.
            if msg.sender == self.id {
                self.stats.duplicate_broadcasts += 1;
                return;
            }
            match self.seen.admit(packed.id(), msg.time, now) {
                Admit::New => {}
                Admit::Duplicate => {
                    self.stats.duplicate_broadcasts += 1;
                    return;
                }
                Admit::Expired => return,
            }
            self.stats.broadcasts_received += 1;
            self.flood(&packed, &msg.payload, Some(conn), Some(&msg.sender));
        }
        let inc = Incoming {
            conn,
            id: packed.id(),
            msg,
        };
        let claimed = match inc.msg.sub_flag() {
            Some(sub::HANDSHAKE) if inc.msg.payload.len() == 5 => {
                self.handshake(conn, &inc.msg, services);
                true
            }
            Some(sub::PEERS) => {
                self.peers(&inc.msg);
                true
            }
            Some(sub::RS2P_NEIGHBOURS) => {
                self.neighbours_of(conn, &inc.msg);
                true
            }
            Some(sub::RESPONSE) => self.response(&inc.msg),
            Some(sub::REQUEST) => self.request(conn, &inc.msg),
            _ => false,
        };
        if claimed {
            return;
        }
        for s in services.iter_mut() {
            if s.on_message(&mut Ctx { core: self }, &inc) {
                return;
            }
        }
        let is_user = matches!(inc.msg.sub_flag(), Some(sub::BROADCAST | sub::WHISPER));
        if !is_user && handlers.is_empty() {
            return;
        }
        let message = Message {
            msg_type: inc.msg.msg_type,
            sender: inc.msg.sender,
            time: inc.msg.time,
            id: inc.id,
            packets: inc.msg.payload,
            socket: self.inner.clone(),
        };
        for h in handlers.iter_mut() {
            if h(&message) {
                return;
            }
        }
        if is_user {
            if let Ok(mut q) = self.queue.lock() {
                if q.len() >= self.cfg.recv_queue {
                    q.pop_front();
                }
                q.push_back(message.clone());
            }
            self.queue_notify.notify_waiters();
            self.queue_notify.notify_one();
            let _ = self.events.send(MeshEvent::Message(message));
        }
    }

    fn handshake(&mut self, conn: ConnId, msg: &WireMessage, services: &mut [Box<dyn Service>]) {
        let p = &msg.payload;
        let (Some(peer_id), Some(proto)) = (p[1].as_bytes(), p[2].as_bytes()) else {
            return self.drop_conn(conn, "handshake without id or protocol id");
        };
        if proto != self.protocol_id.as_slice() {
            tracing::warn!(
                conn,
                theirs = %bytes_text(proto),
                ours = %bytes_text(&self.protocol_id),
                "peer on another subnet/protocol: connection refused"
            );
            return self.drop_conn(conn, "peer on another subnet");
        }
        if peer_id == self.id.as_slice() {
            return self.drop_conn(conn, "connected to ourselves");
        }
        if self.blocked.contains(peer_id) {
            return self.drop_conn(conn, "peer blocked");
        }
        let peer_id = peer_id.to_vec();
        if let Some(want) = self.conns.get(&conn).and_then(|c| c.expected_id.as_ref()) {
            if *want != peer_id {
                return self.drop_conn(conn, "another node answers at a lost peer's address");
            }
        }
        let rs2p_marker = p[4].as_array().is_some_and(|a| {
            a.iter()
                .any(|m| m.as_u64() == Some(u64::from(flags::compression::RS2P_MARKER)))
        });
        let kind = if p[2].is_str() {
            PeerKind::Js
        } else if rs2p_marker {
            PeerKind::Rs
        } else {
            PeerKind::Py
        };
        let peer_addr = p[3].as_array().map(|a| {
            (
                a.first().and_then(Value::as_str).map(str::to_owned),
                a.get(1)
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok()),
            )
        });
        let peer_methods: Vec<i64> = p[4]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();

        // Both ends dialed each other: keep the connection dialed by the
        // node with the larger id, as py2p does, so both ends agree.
        if let Some(&other) = self.routing.get(&peer_id) {
            if other != conn && self.conns.contains_key(&other) {
                let keep_outgoing =
                    ids::cmp_ids_numeric(&self.id, &peer_id) == std::cmp::Ordering::Greater;
                let this_outgoing = self.conns.get(&conn).is_some_and(|c| c.outgoing);
                let other_outgoing = self.conns.get(&other).is_some_and(|c| c.outgoing);
                if this_outgoing == other_outgoing || this_outgoing != keep_outgoing {
                    return self.drop_conn(conn, "duplicate connection to the same peer");
                }
                self.routing.remove(&peer_id);
                self.drop_conn_quiet(other);
            }
        }

        let first = {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let first = !c.handshaken;
            c.handshaken = true;
            c.peer_id = Some(peer_id.clone());
            c.peer_addr = peer_addr;
            c.kind = kind;
            c.set_peer_methods(peer_methods, &self.cfg.compression);
            first
        };
        if !first {
            return;
        }
        let was_empty = self.routing.is_empty();
        self.routing.insert(peer_id.clone(), conn);
        self.no_redial.remove(&peer_id);
        self.redials.retain(|r| r.id != peer_id);
        let id_text = bytes_text(&peer_id);
        tracing::info!(conn, peer = %id_text, ?kind, "peer joined");
        if was_empty {
            let _ = self.events.send(MeshEvent::Connected);
        }
        let addr = match self.conns.get(&conn).and_then(|c| c.peer_addr.clone()) {
            Some((Some(h), Some(p))) => Some((h, p)),
            _ => None,
        };
        let _ = self
            .events
            .send(MeshEvent::PeerJoined { id: id_text, addr });
        let peers = self.peers_payload(kind);
        let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &peers);
        self.send_packed(conn, &packed);
        self.announce_neighbours();
        for s in services.iter_mut() {
            s.on_peer(&mut Ctx { core: self }, conn);
        }
        if let Some(waiting) = self.after_connect.remove(&peer_id) {
            for payload in waiting {
                let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &payload);
                self.send_packed(conn, &packed);
            }
        }
    }

    /// Tells every rs2p peer who our neighbours are now (see
    /// [`sub::RS2P_NEIGHBOURS`]). Called whenever the routing table
    /// changes, before anything else is sent, so that a peer never prunes a
    /// relay on a list that is newer than the broadcast it came with.
    fn announce_neighbours(&mut self) {
        let rs: Vec<ConnId> = self
            .routing
            .values()
            .copied()
            .filter(|c| self.conns.get(c).is_some_and(|c| c.kind == PeerKind::Rs))
            .collect();
        if rs.is_empty() {
            return;
        }
        let ids = self
            .routing
            .keys()
            .map(|id| Value::Bin(id.clone()))
            .collect();
        let payload = [Value::from(sub::RS2P_NEIGHBOURS), Value::Array(ids)];
        let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &payload);
        for c in rs {
            self.send_packed(c, &packed);
        }
    }

    /// An rs2p peer's neighbour list (ignored from anyone else, and when
    /// longer than we would ever keep connections).
    fn neighbours_of(&mut self, conn: ConnId, msg: &WireMessage) {
        let max = self.cfg.max_connections;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(list) = msg.payload.get(1).and_then(Value::as_array) else {
            return;
        };
        if c.kind != PeerKind::Rs || list.len() > max {
            return;
        }
        c.neighbours = list
            .iter()
            .filter_map(Value::as_bytes)
            .map(<[u8]>::to_vec)
            .collect();
    }

    fn peers(&mut self, msg: &WireMessage) {
        let Some(list) = msg.payload.get(1).and_then(Value::as_array) else {
            return;
        };
        for entry in list {
            if self.outgoing_count() >= self.cfg.max_outgoing {
                break;
            }
            let Some(e) = entry.as_array() else { continue };
            let (Some(addr), Some(id)) = (
                e.first().and_then(Value::as_array),
                e.get(1).and_then(Value::as_bytes),
            ) else {
                continue;
            };
            let (Some(host), Some(port)) = (
                addr.first().and_then(Value::as_str),
                addr.get(1)
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok()),
            ) else {
                continue;
            };
            if id == self.id.as_slice()
                || self.routing.contains_key(id)
                || self.is_self_addr(host, port)
                || self.knows_addr(host, port)
            {
                continue;
            }
            self.dial(host.to_string(), port, None);
        }
    }

    fn request(&mut self, conn: ConnId, msg: &WireMessage) -> bool {
        let p = &msg.payload;
        if p.len() == 2 && p[1].as_bytes() == Some(b"*") {
            let kind = self.conns.get(&conn).map_or(PeerKind::Unknown, |c| c.kind);
            let peers = self.peers_payload(kind);
            let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &peers);
            self.send_packed(conn, &packed);
            return true;
        }
        if p.len() == 3 {
            if let (Some(req_id), Some(wanted)) = (p[1].as_bytes(), p[2].as_bytes()) {
                if let Some(target) = self.routing.get(wanted).and_then(|c| self.conns.get(c)) {
                    if let Some((Some(h), Some(port))) = &target.peer_addr {
                        let payload = [
                            Value::from(sub::RESPONSE),
                            Value::Bin(req_id.to_vec()),
                            Value::Array(vec![
                                Value::Array(vec![Value::from(h.as_str()), Value::from(*port)]),
                                Value::Bin(wanted.to_vec()),
                            ]),
                        ];
                        let now = unix_now();
                        let packed = Packed::new(main::BROADCAST, &self.id, now, &payload);
                        self.send_packed(conn, &packed);
                    }
                }
            }
            return true;
        }
        false
    }

    fn request_route(&mut self, peer: Vec<u8>, payload: Vec<Value>) {
        let now = unix_now();
        let mut seed = self.id.clone();
        seed.extend_from_slice(ids::to_base58(&now.to_be_bytes()).as_bytes());
        seed.extend_from_slice(&rand::random::<[u8; 8]>());
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
        let packed = Packed::new(main::BROADCAST, &self.id, now, &payload);
        self.flood(&packed, &payload, None, None);
    }

    fn response(&mut self, msg: &WireMessage) -> bool {
        let p = &msg.payload;
        let Some(req_id) = p.get(1).and_then(Value::as_bytes) else {
            return false;
        };
        let Some(payload) = self.pending_requests.remove(req_id) else {
            return true;
        };
        let Some(info) = p.get(2).and_then(Value::as_array) else {
            return true;
        };
        let addr = info.first().and_then(Value::as_array);
        let id = info.get(1).and_then(Value::as_bytes);
        if let (Some(addr), Some(id)) = (addr, id) {
            if let (Some(h), Some(port)) = (
                addr.first().and_then(Value::as_str),
                addr.get(1)
                    .and_then(Value::as_u64)
                    .and_then(|x| u16::try_from(x).ok()),
            ) {
                if let Some(&conn) = self.routing.get(id) {
                    let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &payload);
                    self.send_packed(conn, &packed);
                } else {
                    let waiting = self.after_connect.entry(id.to_vec()).or_default();
                    if waiting.len() < 64 {
                        waiting.push(payload);
                    }
                    if !self.knows_addr(h, port) {
                        self.dial(h.to_string(), port, None);
                    }
                }
            }
        }
        true
    }

    fn renegotiate(&mut self, conn: ConnId, msg: &WireMessage) {
        match msg.sub_flag() {
            Some(sub::COMPRESSION) => {
                let Some(list) = msg.payload.get(1).and_then(Value::as_array) else {
                    return;
                };
                let given: Vec<i64> = list.iter().filter_map(Value::as_i64).collect();
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let changed = c.peer_methods != given;
                c.set_peer_methods(given.clone(), &self.cfg.compression);
                if changed && c.kind != PeerKind::Js {
                    let ours: Vec<Value> = self
                        .cfg
                        .compression
                        .iter()
                        .filter(|m| given.contains(&i64::from(m.flag())))
                        .map(|m| Value::from(m.flag()))
                        .collect();
                    let packed = Packed::new(
                        main::RENEGOTIATE,
                        &self.id,
                        unix_now(),
                        &[Value::from(sub::COMPRESSION), Value::Array(ours)],
                    );
                    self.send_packed(conn, &packed);
                }
            }
            Some(sub::RESEND) => {
                if let Some(frame) = self.conns.get(&conn).and_then(|c| c.last_sent.clone()) {
                    self.send_frame(conn, frame);
                }
            }
            _ => {}
        }
    }

    /// Removes a connection; the peer leaves the routing table, and we ask
    /// the others for peers and plan a re-dial.
    pub(crate) fn drop_conn(&mut self, conn: ConnId, reason: &str) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        tracing::debug!(conn, %reason, "dropping connection");
        let Some(peer_id) = c.peer_id else { return };
        if self.routing.get(&peer_id) != Some(&conn) {
            return;
        }
        self.routing.remove(&peer_id);
        self.announce_neighbours();
        tracing::info!(peer = %bytes_text(&peer_id), %reason, "peer left");
        let _ = self.events.send(MeshEvent::PeerLeft {
            id: bytes_text(&peer_id),
        });
        if self.cfg.reconnect && !self.no_redial.contains(&peer_id) {
            let target = match (c.dialed, c.peer_addr) {
                (Some((h, p)), _) => Some((h, p)),
                (None, Some((Some(h), Some(p)))) => Some((h, p)),
                _ => None,
            };
            if let Some((host, port)) = target {
                let now = Instant::now();
                self.redials.retain(|r| r.id != peer_id);
                self.redials.push(Redial {
                    host,
                    port,
                    id: peer_id,
                    due: now + Duration::from_millis(500),
                    attempts: 0,
                    since: now,
                });
            }
        }
        // Ask the remaining peers for theirs (as bin '*', which py2p and js2p
        // both answer with a peers list), to refill our outgoing slots.
        if self.outgoing_count() < self.cfg.max_outgoing {
            self.ask_for_peers(false);
        }
        self.refresh_every = FIRST_REFRESH;
        self.next_refresh = Instant::now() + FIRST_REFRESH;
    }

    /// Sends the peers request `'*'` (as bin, which py2p and js2p both
    /// answer with a peers list). js2p also re-sends its whole dictionary in
    /// answer (J10), so periodic refreshes skip js2p-like peers.
    fn ask_for_peers(&mut self, periodic: bool) {
        let payload = [Value::from(sub::REQUEST), Value::Bin(b"*".to_vec())];
        let packed = Packed::new(main::WHISPER, &self.id, unix_now(), &payload);
        let conns: Vec<ConnId> = self
            .routing
            .values()
            .copied()
            .filter(|c| !periodic || self.conns.get(c).is_some_and(|c| c.kind != PeerKind::Js))
            .collect();
        for c in conns {
            self.send_packed(c, &packed);
        }
    }

    fn drop_conn_quiet(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        // A node short of outgoing links asks its peers for theirs now and
        // then: peers lists are otherwise only sent at handshakes, so the
        // first nodes of a chain would never hear of the later ones.
        if now >= self.next_refresh {
            if !self.routing.is_empty() && self.outgoing_count() < self.cfg.max_outgoing {
                self.ask_for_peers(true);
            }
            self.refresh_every = (self.refresh_every * 2).min(MAX_REFRESH);
            self.next_refresh = now + self.refresh_every;
        }
        let timeout = self.cfg.handshake_timeout;
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.handshaken && now.duration_since(c.opened) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for conn in stale {
            self.drop_conn(conn, "no handshake in time");
        }
        let mut due = Vec::new();
        self.redials.retain_mut(|r| {
            if now.duration_since(r.since) > REDIAL_FOR {
                return false;
            }
            if r.due <= now {
                due.push((r.host.clone(), r.port, r.id.clone()));
                r.attempts += 1;
                let backoff = Duration::from_millis(500) * 2u32.saturating_pow(r.attempts.min(10));
                r.due = now + backoff.min(MAX_BACKOFF);
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
            self.dial_expecting(host, port, Some(id), None);
        }
    }
}

fn is_delete(payload: &[Value]) -> bool {
    payload.len() == 3 && payload[0].as_u64() == Some(u64::from(sub::STORE)) && payload[2].is_nil()
}

fn host_is_local(h: &str) -> bool {
    h == "127.0.0.1" || h == "localhost" || h == "0.0.0.0" || h == "::1"
}
