//! [`MeshSocket`]: a node of an unstructured p2p-today mesh.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::config::MeshConfig;
use crate::error::{Error, Result};
use crate::net::actor;
use crate::net::cmd::{Cmd, Inner, RecvQueue, SyncParts};
pub use crate::net::cmd::{MeshEvent, Message};
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::{ids, MessageId};

/// Capacity of the command channel into the actor.
const CMD_CAPACITY: usize = 1024;
/// Events buffered per subscriber before it starts missing some.
const EVENT_CAPACITY: usize = 1024;

pub use crate::proto::mesh::{NodeStats, PeerInfo, PeerKind};

/// A mesh node: a cheap, cloneable, `Send + Sync` handle to a background
/// actor.
///
/// ```no_run
/// # async fn demo() -> rs2p::Result<()> {
/// use rs2p::{MeshConfig, MeshSocket, Value};
/// let a = MeshSocket::bind(MeshConfig::new("127.0.0.1:0".parse().unwrap())).await?;
/// let b = MeshSocket::bind(MeshConfig::new("127.0.0.1:0".parse().unwrap())).await?;
/// b.connect("127.0.0.1", a.local_addr().port()).await?;
/// b.send(vec![Value::from("hello")]).await?;
/// let msg = a.recv().await.unwrap();
/// assert_eq!(msg.body(), &[Value::from("hello")]);
/// a.close().await;
/// b.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MeshSocket {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for MeshSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSocket")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.local_addr)
            .finish()
    }
}

impl MeshSocket {
    /// Binds a node and starts its actor.
    pub async fn bind(cfg: MeshConfig) -> Result<MeshSocket> {
        MeshSocket::bind_with(cfg, None).await
    }

    pub(crate) async fn bind_with(cfg: MeshConfig, sync: Option<SyncParts>) -> Result<MeshSocket> {
        cfg.validate()?;
        let listener = TcpListener::bind(cfg.bind).await?;
        let local_addr = listener.local_addr()?;
        let out = match cfg.out_addr {
            Some(a) => (a.ip().to_string(), a.port()),
            None if local_addr.ip().is_unspecified() => {
                ("127.0.0.1".to_string(), local_addr.port())
            }
            None => (local_addr.ip().to_string(), local_addr.port()),
        };
        let protocol_id = cfg.protocol_id();
        let id = cfg
            .id
            .clone()
            .unwrap_or_else(|| ids::node_id_py2p(&out.0, out.1, &protocol_id, &ids::random_salt()));
        let (cmd_tx, cmd_rx) = mpsc::channel(CMD_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let queue = Arc::new(Mutex::new(RecvQueue::default()));
        let queue_notify = Arc::new(Notify::new());
        let drained = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            cmd: cmd_tx,
            id: id.clone(),
            protocol_id,
            local_addr,
            out_addr: out.clone(),
            queue: queue.clone(),
            queue_notify: queue_notify.clone(),
            drained: drained.clone(),
            events: Mutex::new(Some(events.clone())),
            actor: Mutex::new(None),
        });
        let transport: Arc<dyn crate::net::transport::Transport> = match cfg.transport {
            crate::config::Transport::Plaintext => Arc::new(crate::net::transport::Plain),
            crate::config::Transport::Ssl => Arc::new(crate::net::tls::Tls::new(&cfg.tls)?),
            crate::config::Transport::Ws => Arc::new(crate::net::ws::Ws::new(cfg.limits.max_frame)),
        };
        let shared = crate::net::cmd::Shared {
            inner: Arc::downgrade(&inner),
            queue,
            queue_notify,
            drained,
            events,
        };
        let node_settings = crate::proto::mesh::Settings {
            id: id.clone().into_bytes(),
            protocol_id: inner.protocol_id.clone().into_bytes(),
            out_addr: out,
            listen: (local_addr.ip().to_string(), local_addr.port()),
            compression: cfg.compression.clone(),
            limits: cfg.limits.clone(),
            max_outgoing: cfg.max_outgoing,
            max_connections: cfg.max_connections,
            handshake_timeout: cfg.handshake_timeout,
            seen_capacity: cfg.seen_capacity,
            reconnect: cfg.reconnect,
            creator_push: true,
        };
        let handle = actor::start(
            cfg,
            (listener, transport),
            node_settings,
            shared,
            cmd_rx,
            sync,
        );
        if let Ok(mut a) = inner.actor.lock() {
            *a = Some(handle);
        }
        tracing::info!(id = %inner.id, addr = %local_addr, "node listening");
        Ok(MeshSocket { inner })
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
    /// The protocol (subnet) id.
    pub fn protocol_id(&self) -> &str {
        &self.inner.protocol_id
    }
    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }
    /// The address advertised to peers.
    pub fn out_addr(&self) -> (&str, u16) {
        (&self.inner.out_addr.0, self.inner.out_addr.1)
    }

    pub(crate) async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd
            .send(make(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Dials a node; returns once the TCP connection is open (the handshake
    /// follows in the background).
    pub async fn connect(&self, host: &str, port: u16) -> Result<()> {
        let host = host.to_string();
        self.call(|reply| Cmd::Connect { host, port, reply })
            .await?
    }

    /// Broadcasts `[broadcast, packets...]` to the whole mesh; returns the
    /// message id.
    pub async fn send(&self, packets: Vec<Value>) -> Result<MessageId> {
        let mut payload = Vec::with_capacity(packets.len() + 1);
        payload.push(Value::from(sub::BROADCAST));
        payload.extend(packets);
        self.send_raw(main::BROADCAST, payload).await
    }

    /// Sends a message with an explicit main flag and payload (`payload[0]`
    /// is the sub-flag). Broadcasts are flooded; other flags go to the
    /// direct neighbours only.
    ///
    /// When a peer's send queue is more than half full, this waits until it
    /// has room again (or the peer is gone, or stuck), so that a fast writer
    /// is slowed down to what the network takes instead of getting peers
    /// dropped as too slow.
    pub async fn send_raw(&self, msg_type: u8, payload: Vec<Value>) -> Result<MessageId> {
        let (id, crowded) = self
            .call(|reply| Cmd::Send {
                msg_type,
                payload,
                reply,
            })
            .await?;
        self.wait_for_room(crowded).await;
        Ok(id)
    }

    /// After a local write that left some peer's send queue more than half
    /// full (`crowded`), waits until no queue is (writers signal each write
    /// they finish; the check itself runs on the actor).
    pub(crate) async fn wait_for_room(&self, crowded: bool) {
        if !crowded {
            return;
        }
        loop {
            let drained = self.inner.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match self.call(|reply| Cmd::Crowded { reply }).await {
                Ok(true) => {}
                _ => return,
            }
            // The timeout only guards against a missed signal.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), drained).await;
        }
    }

    /// Whispers `[whisper, packets...]` to one neighbour.
    pub async fn whisper(&self, peer: &str, packets: Vec<Value>) -> Result<()> {
        let mut payload = Vec::with_capacity(packets.len() + 1);
        payload.push(Value::from(sub::WHISPER));
        payload.extend(packets);
        let peer = peer.as_bytes().to_vec();
        self.call(|reply| Cmd::Whisper {
            peer,
            payload,
            reply,
        })
        .await?
    }

    /// Waits for the next user message; `None` once the node is closed.
    pub async fn recv(&self) -> Option<Message> {
        loop {
            let notified = self.inner.queue_notify.notified();
            if let Some(m) = self.try_recv() {
                return Some(m);
            }
            if self.inner.cmd.is_closed() {
                return None;
            }
            notified.await;
        }
    }

    /// The next queued user message, if any.
    pub fn try_recv(&self) -> Option<Message> {
        self.inner.queue.lock().ok()?.pop()
    }

    /// Takes every queued user message.
    pub fn drain(&self) -> Vec<Message> {
        self.inner
            .queue
            .lock()
            .map(|mut q| q.take_all())
            .unwrap_or_default()
    }

    /// A stream of events from now on; it ends when the node closes. A
    /// subscriber that falls more than 1,024 events behind misses the
    /// oldest ones and is told how many with [`MeshEvent::Lagged`].
    pub fn events(&self) -> EventStream {
        let rx = match self.inner.events.lock().ok().and_then(|e| e.clone()) {
            Some(tx) => tx.subscribe(),
            // Closed: a stream that ends at once.
            None => broadcast::channel(1).1,
        };
        EventStream {
            inner: BroadcastStream::new(rx),
        }
    }

    /// Calls `f` for every event, on a background task, until the node
    /// closes.
    pub fn on_event(&self, mut f: impl FnMut(MeshEvent) + Send + 'static) {
        let mut stream = self.events();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                f(ev);
            }
        });
    }

    /// Registers a handler that sees every message not handled by the
    /// protocol (mesh and sync) before it is queued; returning `true`
    /// claims the message (it is not queued).
    pub async fn register_handler(
        &self,
        handler: impl FnMut(&Message) -> bool + Send + 'static,
    ) -> Result<()> {
        self.inner
            .cmd
            .send(Cmd::AddHandler(Box::new(handler)))
            .await
            .map_err(|_| Error::Closed)
    }

    /// The routing table: every handshaken peer.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.call(|reply| Cmd::Peers { reply }).await
    }

    /// Cuts a peer off: drops its connection and refuses it (at its
    /// handshake) until [`unblock`](Self::unblock). Useful to ban a
    /// misbehaving node, and to simulate network partitions in tests.
    pub async fn block(&self, peer: &str) -> Result<()> {
        let peer = peer.as_bytes().to_vec();
        self.call(|reply| Cmd::Block {
            peer,
            blocked: true,
            reply,
        })
        .await
    }

    /// Lifts [`block`](Self::block); a peer we had lost is re-dialled at
    /// once.
    pub async fn unblock(&self, peer: &str) -> Result<()> {
        let peer = peer.as_bytes().to_vec();
        self.call(|reply| Cmd::Block {
            peer,
            blocked: false,
            reply,
        })
        .await
    }

    /// The node's counters.
    pub async fn stats(&self) -> Result<NodeStats> {
        self.call(|reply| Cmd::Stats { reply }).await
    }

    /// Drops the connection to a peer (it is not re-dialled); `false` when
    /// no such peer is connected.
    pub async fn disconnect(&self, peer: &str) -> Result<bool> {
        let peer = peer.as_bytes().to_vec();
        self.call(|reply| Cmd::Disconnect { peer, reply }).await
    }

    /// Stops the node: closes the listener and every connection and ends
    /// every task it started. Idempotent.
    pub async fn close(&self) {
        if let Ok(mut e) = self.inner.events.lock() {
            e.take();
        }
        let _ = self.inner.cmd.send(Cmd::Close).await;
        let handle = self.inner.actor.lock().ok().and_then(|mut a| a.take());
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    /// True once [`close`](Self::close) has run (or the actor ended).
    pub fn is_closed(&self) -> bool {
        self.inner.cmd.is_closed()
    }
}

/// A stream of [`MeshEvent`]s.
pub struct EventStream {
    inner: BroadcastStream<MeshEvent>,
}

impl futures_core::Stream for EventStream {
    type Item = MeshEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MeshEvent>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(ev))) => Poll::Ready(Some(ev)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                Poll::Ready(Some(MeshEvent::Lagged { missed }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
