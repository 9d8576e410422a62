//! The actor: one task per node that feeds the protocol core
//! ([`proto::Node`](crate::proto::Node)) its inputs — commands from the
//! handles, frames and closes from the connection tasks, dials and accepts,
//! its timer — with the time, and carries out the outputs. It holds no
//! protocol rule.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::config::MeshConfig;
use crate::error::{Error, Result};
use crate::net::cmd::{Cmd, Handler, MeshEvent, Message, Shared, SyncEvent, SyncParts};
use crate::net::conn::{self, ConnEvent, ConnHandle, ConnSettings, SendError};
use crate::net::transport::{Io, Transport};
use crate::proto::replica::{Change, Pump, Room};
use crate::proto::{ConnId, Event, Node, Now, Output, Received};
use crate::store::{Store, Stored};
use crate::value::Value;

/// Capacity of the channel from connection tasks to the actor (each
/// message is the frames of one read; readers also stop reading while
/// [`conn::MAX_UNHANDLED`] bytes of theirs wait for the actor).
const CONN_EVENT_CAPACITY: usize = 256;
/// Capacity of the dial-result channel.
const DIAL_CAPACITY: usize = 64;
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often bulk work (state transfers) is moved along while peers'
/// queues are full.
const PUMP_PERIOD: Duration = Duration::from_millis(2);
/// State transfer made between yields to the writers (a few batches).
const PUMP_SLICE: usize = 256 << 10;
/// How often a node holding its peers' frames back looks at its send
/// queues again, at the latest.
const HELD_RECHECK: Duration = Duration::from_millis(5);

/// Current unix time in whole seconds, as both references compute it.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The shell's clock: the core only ever sees what it says.
struct Clock {
    origin: Instant,
}

impl Clock {
    fn now(&self) -> Now {
        Now {
            elapsed: self.origin.elapsed(),
            unix: unix_now(),
        }
    }
}

/// A dial, or the transport handshake of an accepted connection, ended.
struct DialDone {
    conn: ConnId,
    result: std::io::Result<Io>,
}

/// The connections' send queues, as the core's state-transfer pacing asks.
struct Queues<'a>(&'a HashMap<ConnId, ConnHandle>);

impl Room for Queues<'_> {
    fn queued(&self, conn: ConnId) -> Option<(usize, usize)> {
        self.0.get(&conn).map(ConnHandle::queued_bytes)
    }

    fn slice(&self) -> usize {
        PUMP_SLICE
    }
}

struct Actor {
    node: Node,
    clock: Clock,
    cfg: MeshConfig,
    conns: HashMap<ConnId, ConnHandle>,
    /// Users waiting for their `connect` to be answered.
    dial_waiters: HashMap<ConnId, oneshot::Sender<Result<()>>>,
    conn_tx: mpsc::Sender<ConnEvent>,
    dial_tx: mpsc::Sender<DialDone>,
    /// Dials, and transport handshakes of accepted connections.
    dials: JoinSet<()>,
    transport: Arc<dyn Transport>,
    settings: ConnSettings,
    shared: Shared,
    sync: Option<(broadcast::Sender<SyncEvent>, Option<Store>)>,
    handlers: Vec<Handler>,
    /// The store sequence number of the last change carried out.
    last_seq: u64,
    /// Frames read and not handled yet: they wait while the node holds its
    /// peers' input back (see `Actor::run`).
    backlog: VecDeque<(ConnId, Bytes)>,
    /// Set when a frame left a reading peer's queue over half full; the
    /// queues are looked at again (all of them) only while it is set.
    hold: bool,
}

/// Starts the actor on a bound listener.
pub(crate) fn start(
    cfg: MeshConfig,
    (listener, transport): (TcpListener, Arc<dyn Transport>),
    node_settings: crate::proto::mesh::Settings,
    shared: Shared,
    cmd_rx: mpsc::Receiver<Cmd>,
    sync: Option<SyncParts>,
) -> tokio::task::JoinHandle<()> {
    let (conn_tx, conn_rx) = mpsc::channel(CONN_EVENT_CAPACITY);
    let (dial_tx, dial_rx) = mpsc::channel(DIAL_CAPACITY);
    let settings = ConnSettings {
        limits: cfg.limits.clone(),
        queue: cfg.send_queue,
        queue_bytes: cfg.send_queue_bytes,
        incomplete_timeout: cfg.incomplete_frame_timeout,
        drained: shared.drained.clone(),
    };
    let (replica, sync) = match sync {
        Some(s) => (Some(s.replica), Some((s.events, s.store))),
        None => (None, None),
    };
    let actor = Actor {
        node: Node::new(node_settings, replica, rand::random()),
        clock: Clock {
            origin: Instant::now(),
        },
        cfg,
        conns: HashMap::new(),
        dial_waiters: HashMap::new(),
        conn_tx,
        dial_tx,
        dials: JoinSet::new(),
        transport,
        settings,
        shared,
        sync,
        handlers: Vec::new(),
        last_seq: 0,
        backlog: VecDeque::new(),
        hold: false,
    };
    tokio::spawn(actor.run(listener, cmd_rx, conn_rx, dial_rx))
}

impl Actor {
    async fn run(
        mut self,
        listener: TcpListener,
        mut cmd_rx: mpsc::Receiver<Cmd>,
        mut conn_rx: mpsc::Receiver<ConnEvent>,
        mut dial_rx: mpsc::Receiver<DialDone>,
    ) {
        let mut pumping = Pump::Done;
        let drained = self.shared.drained.clone();
        loop {
            let deadline = self
                .node
                .poll_timeout()
                .map(|d| tokio::time::Instant::from_std(self.clock.origin + d));
            // Relay backpressure: while a peer that reads has its send queue
            // over half full, what the other peers send waits unread. What
            // they send would be relayed onto that queue; unread, it fills
            // their TCP windows and then their own queues towards us, which
            // slows their writers (`MeshSocket::send` and `SyncSocket::set`
            // wait for room). Without this a relay of the broadcast tree took
            // its parent's full rate and dropped its slower children as too
            // slow. A peer that makes no progress for a second does not hold
            // anything up (`ConnHandle::crowded`): it fills its queue and is
            // dropped, as before.
            let held = self.held();
            if !held && !self.backlog.is_empty() {
                self.handle_backlog();
                pumping = Pump::Ready;
                continue;
            }
            let drained = drained.notified();
            tokio::select! {
                biased;
                cmd = cmd_rx.recv() => {
                    match cmd {
                        None | Some(Cmd::Close) => break,
                        Some(cmd) => self.command(cmd),
                    }
                }
                ev = conn_rx.recv(), if !held => {
                    // The actor holds a sender, so the channel never ends.
                    let Some(ev) = ev else { break };
                    match ev {
                        ConnEvent::Frames { conn, bodies } => {
                            self.backlog.extend(bodies.into_iter().map(|b| (conn, b)));
                            self.handle_backlog();
                            pumping = Pump::Ready;
                        }
                        ConnEvent::Skipped { conn, error } => {
                            self.node.frame_skipped(conn, &error);
                        }
                        ConnEvent::Closed { conn, reason } => {
                            self.conns.remove(&conn);
                            let now = self.clock.now();
                            self.node.handle_closed(conn, &reason, now);
                        }
                    }
                }
                done = dial_rx.recv() => {
                    if let Some(done) = done { self.arrived(done) }
                }
                acc = listener.accept() => {
                    match acc {
                        Ok((stream, addr)) => self.accepted(stream, addr),
                        Err(e) => tracing::warn!("accept failed: {e}"),
                    }
                }
                _ = sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.node.handle_timeout(now);
                }
                _ = tokio::time::sleep(PUMP_PERIOD), if pumping == Pump::Waiting => {}
                // More to send at once: the writers run first.
                () = tokio::task::yield_now(), if pumping == Pump::Ready => {}
                // A writer made progress (the timeout only guards against a
                // missed signal): look at the queues again.
                _ = tokio::time::timeout(HELD_RECHECK, drained), if held => {}
            }
            if pumping != Pump::Done {
                let now = self.clock.now();
                pumping = self.node.pump(&Queues(&self.conns), now);
            }
            self.carry_out();
        }
        self.dials.abort_all();
        self.conns.clear();
        self.shared.queue_notify.notify_waiters();
        tracing::debug!("node closed");
    }

    /// True while the node holds its peers' input back: a reading peer's
    /// send queue is over half full.
    fn held(&mut self) -> bool {
        if self.hold {
            self.hold = self.crowded();
        }
        self.hold
    }

    /// Handles the frames read, in order, until one leaves a queue over
    /// half full.
    fn handle_backlog(&mut self) {
        while let Some((conn, body)) = self.backlog.pop_front() {
            let len = body.len();
            let now = self.clock.now();
            self.node
                .handle_frame(conn, body, &Queues(&self.conns), now);
            self.carry_out();
            if let Some(c) = self.conns.get(&conn) {
                c.handled(len);
            }
            if self.hold {
                break;
            }
        }
    }

    /// Carries out everything the core asked for.
    fn carry_out(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Transmit { conn, bytes } => {
                    let Some(c) = self.conns.get(&conn) else {
                        continue;
                    };
                    match c.send(bytes) {
                        Ok(()) => self.hold |= c.crowded(),
                        Err(SendError::Closed) => {}
                        Err(SendError::Full) => {
                            let (frames, idle_ms) = c.backlog();
                            let (bytes, _) = c.queued_bytes();
                            tracing::warn!(
                                conn,
                                frames,
                                bytes,
                                idle_ms,
                                held = self.hold,
                                "send queue full: dropping the peer as too slow"
                            );
                            let now = self.clock.now();
                            self.node.handle_slow(conn, now);
                        }
                    }
                }
                Output::Dial { conn, host, port } => self.dial(conn, host, port),
                Output::Close { conn } => {
                    self.conns.remove(&conn);
                }
                Output::Event(ev) => {
                    let ev = match ev {
                        Event::Connected => MeshEvent::Connected,
                        Event::PeerJoined { id, addr } => MeshEvent::PeerJoined {
                            id: String::from_utf8_lossy(&id).into_owned(),
                            addr,
                        },
                        Event::PeerLeft { id } => MeshEvent::PeerLeft {
                            id: String::from_utf8_lossy(&id).into_owned(),
                        },
                        Event::PeerRefused { dialed, id, reason } => MeshEvent::PeerRefused {
                            dialed,
                            id: String::from_utf8_lossy(&id).into_owned(),
                            reason,
                        },
                    };
                    let _ = self.shared.events.send(ev);
                }
                Output::Received(r) => self.deliver(r),
                Output::Sync(change) => self.changed(change),
            }
        }
    }

    /// A dictionary change: persisted (with a data dir) and announced. The
    /// store's copy is made only when there is a store: a node joining a
    /// mesh of a million keys makes a million changes.
    fn changed(&mut self, change: Change) {
        let Some((events, store)) = &self.sync else {
            return;
        };
        if let Some(store) = store {
            let (key, value, meta, since) = match &change {
                Change::Set {
                    key,
                    value,
                    meta,
                    since,
                } => (key, Some(value.clone()), meta, since),
                Change::Deleted { key, meta, since } => (key, None, meta, since),
            };
            let stored = Stored {
                value,
                meta: meta.clone(),
                since: *since,
            };
            self.last_seq = store.record(key, Some(stored));
        }
        let event = match change {
            Change::Set {
                key, value, meta, ..
            } => SyncEvent::Update { key, value, meta },
            Change::Deleted { key, .. } => SyncEvent::Delete { key },
        };
        let _ = events.send(event);
    }

    /// A message no protocol rule consumed: the user's handlers see it
    /// first; user broadcasts and whispers they leave are queued.
    fn deliver(&mut self, r: Received) {
        if !r.user && self.handlers.is_empty() {
            return;
        }
        let message = Message {
            msg_type: r.msg_type,
            sender: r.sender,
            time: r.time,
            id: r.id,
            packets: r.packets,
            size: r.size,
            socket: self.shared.inner.clone(),
        };
        for h in self.handlers.iter_mut() {
            if h(&message) {
                return;
            }
        }
        if r.user {
            if let Ok(mut q) = self.shared.queue.lock() {
                q.push(
                    message.clone(),
                    self.cfg.recv_queue,
                    self.cfg.recv_queue_bytes,
                );
            }
            self.shared.queue_notify.notify_waiters();
            self.shared.queue_notify.notify_one();
            let _ = self.shared.events.send(MeshEvent::Message(message));
        }
    }

    /// True when some peer's send queue is more than half full.
    fn crowded(&self) -> bool {
        self.conns.values().any(ConnHandle::crowded)
    }

    fn command(&mut self, cmd: Cmd) {
        let now = self.clock.now();
        match cmd {
            Cmd::Connect { host, port, reply } => match self.node.connect(&host, port, now) {
                Ok(conn) => {
                    self.dial_waiters.insert(conn, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::Send {
                msg_type,
                payload,
                reply,
            } => {
                let id = self.node.send(msg_type, &payload, now);
                self.carry_out();
                let _ = reply.send((id, self.crowded()));
            }
            Cmd::Whisper {
                peer,
                payload,
                reply,
            } => {
                let _ = reply.send(self.node.whisper(&peer, &payload, now));
            }
            Cmd::Reply {
                peer,
                payload,
                reply,
            } => {
                self.node.reply(&peer, payload, now);
                let _ = reply.send(Ok(()));
            }
            Cmd::Peers { reply } => {
                let _ = reply.send(self.node.peers());
            }
            Cmd::Stats { reply } => {
                let mut st = self.node.stats();
                st.send_queue_bytes = self.conns.values().map(|c| c.queued_bytes().0).sum();
                if let Some(r) = self.node.replica() {
                    st.tombstones = r.dict().lock().map_or(0, |d| d.tombstones());
                }
                if let Some((_, Some(store))) = &self.sync {
                    store.fill_stats(&mut st);
                }
                let _ = reply.send(st);
            }
            Cmd::Disconnect { peer, reply } => {
                let _ = reply.send(self.node.disconnect(&peer, now));
            }
            Cmd::Block {
                peer,
                blocked,
                reply,
            } => {
                self.node.block(&peer, blocked, now);
                let _ = reply.send(());
            }
            Cmd::Crowded { reply } => {
                let _ = reply.send(self.crowded());
            }
            Cmd::Write {
                key,
                value,
                delta,
                reply,
            } => {
                let res = if delta {
                    match value {
                        Value::Map(entries) => self.node.apply_delta(key, entries, now),
                        other => Err(Error::NotAMapping {
                            key: String::from_utf8_lossy(&key).into_owned(),
                            found: other.kind(),
                        }),
                    }
                } else {
                    self.node.set(key, value, now)
                };
                self.last_seq = 0;
                self.carry_out();
                let _ = reply.send(res.map(|()| (self.last_seq, self.crowded())));
            }
            Cmd::AddHandler(h) => self.handlers.push(h),
            Cmd::Close => {}
        }
    }

    fn dial(&mut self, conn: ConnId, host: String, port: u16) {
        let tx = self.dial_tx.clone();
        let connect = self.transport.connect(host.clone(), port);
        self.dials.spawn(async move {
            let result = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect to {host}:{port} timed out"),
                )),
            };
            let _ = tx.send(DialDone { conn, result }).await;
        });
        // Reap finished dial tasks so the set stays small.
        while self.dials.try_join_next().is_some() {}
    }

    fn arrived(&mut self, done: DialDone) {
        let waiter = self.dial_waiters.remove(&done.conn);
        match done.result {
            Ok(io) => {
                let handle = conn::spawn(io, done.conn, self.conn_tx.clone(), &self.settings);
                self.conns.insert(done.conn, handle);
                let now = self.clock.now();
                self.node.handle_ready(done.conn, now);
                if let Some(r) = waiter {
                    let _ = r.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::debug!(conn = done.conn, "connection failed: {e}");
                self.node.handle_failed(done.conn);
                if let Some(r) = waiter {
                    let _ = r.send(Err(Error::Io(e)));
                }
            }
        }
        while self.dials.try_join_next().is_some() {}
    }

    fn accepted(&mut self, stream: tokio::net::TcpStream, addr: std::net::SocketAddr) {
        let Some(conn) = self.node.accept(self.clock.now()) else {
            tracing::warn!(%addr, "connection limit of {} reached: refused", self.cfg.max_connections);
            return;
        };
        // The transport handshake (TLS, WebSocket) runs off the actor.
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
            let _ = tx.send(DialDone { conn, result }).await;
        });
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
