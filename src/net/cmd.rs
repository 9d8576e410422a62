//! What the handles ([`MeshSocket`](crate::MeshSocket),
//! [`SyncSocket`](crate::SyncSocket)) and the actor share: the commands,
//! the events and messages the actor hands out, and the handle's shared
//! state. The handles and the actor both depend on this module, never on
//! each other's internals.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use crate::error::{Error, Result};
use crate::proto::replica::Replica;
use crate::proto::sync::Meta;
use crate::proto::{NodeStats, PeerInfo};
use crate::store::Store;
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::MessageId;

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
    /// Whether some peer's send queue is more than half full.
    Crowded {
        reply: oneshot::Sender<bool>,
    },
    /// A sync write: a store (nil deletes) or, with `delta`, a merge.
    Write {
        key: Vec<u8>,
        value: Value,
        delta: bool,
        /// The store sequence number of the change (0 without a store) and
        /// whether a peer's queue is now more than half full.
        reply: oneshot::Sender<Result<(u64, bool)>>,
    },
    AddHandler(Handler),
    Close,
}

/// A user handler: sees messages before they are queued; `true` claims one.
pub(crate) type Handler = Box<dyn FnMut(&Message) -> bool + Send>;

/// What a sync node's actor needs beyond the mesh.
pub(crate) struct SyncParts {
    pub replica: Replica,
    pub events: broadcast::Sender<SyncEvent>,
    pub store: Option<Store>,
}

/// What the actor shares with the [`MeshSocket`](crate::MeshSocket) handle.
pub(crate) struct Shared {
    pub inner: Weak<Inner>,
    pub queue: Arc<Mutex<RecvQueue>>,
    pub queue_notify: Arc<Notify>,
    pub drained: Arc<Notify>,
    pub events: broadcast::Sender<MeshEvent>,
}

/// Something that happened to the node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MeshEvent {
    /// The first peer joined an empty routing table (the references'
    /// `connect` event).
    Connected,
    /// A peer finished its handshake.
    PeerJoined {
        /// Its id.
        id: String,
        /// Its advertised address.
        addr: Option<(String, u16)>,
    },
    /// A peer left the routing table.
    PeerLeft {
        /// Its id.
        id: String,
    },
    /// A handshake was refused and the connection dropped: the peer is on
    /// another subnet or transport, or another node answers at a lost
    /// peer's address.
    PeerRefused {
        /// Where we dialled, for a connection we opened.
        dialed: Option<(String, u16)>,
        /// The peer's id as its handshake gave it.
        id: String,
        /// Why, in words.
        reason: &'static str,
    },
    /// A user message was queued (the references' `message` event).
    Message(Message),
    /// This subscriber fell behind and missed that many events (the stream
    /// goes on with the next one).
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

/// A user message received by the node.
#[derive(Clone)]
pub struct Message {
    pub(crate) msg_type: u8,
    pub(crate) sender: Vec<u8>,
    pub(crate) time: i64,
    pub(crate) id: MessageId,
    pub(crate) packets: Vec<Value>,
    /// Its size on the wire, for the receive queue's byte bound.
    pub(crate) size: usize,
    pub(crate) socket: Weak<Inner>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("sender", &self.sender())
            .field("time", &self.time)
            .field("packets", &self.packets)
            .finish()
    }
}

impl Message {
    /// The creator's id.
    pub fn sender(&self) -> String {
        String::from_utf8_lossy(&self.sender).into_owned()
    }
    /// The creation time, unix seconds.
    pub fn time(&self) -> i64 {
        self.time
    }
    /// The message id (SHA-256 of its packed bytes).
    pub fn id(&self) -> MessageId {
        self.id
    }
    /// True for a broadcast, false for a whisper.
    pub fn is_broadcast(&self) -> bool {
        self.msg_type == main::BROADCAST
    }
    /// The payload as the references expose it: packet 0 is the sub-flag
    /// (0 for a user broadcast, 2 for a whisper), then the user's packets.
    pub fn packets(&self) -> &[Value] {
        &self.packets
    }
    /// The user's packets, without the sub-flag.
    pub fn body(&self) -> &[Value] {
        self.packets.get(1..).unwrap_or(&[])
    }
    /// Answers the sender: a whisper when it is a neighbour, else through
    /// the request/response route mechanism.
    pub async fn reply(&self, packets: Vec<Value>) -> Result<()> {
        let inner = self.socket.upgrade().ok_or(Error::Closed)?;
        let mut payload = Vec::with_capacity(packets.len() + 1);
        payload.push(Value::from(sub::WHISPER));
        payload.extend(packets);
        let (reply, rx) = oneshot::channel();
        inner
            .cmd
            .send(Cmd::Reply {
                peer: self.sender.clone(),
                payload,
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

pub(crate) struct Inner {
    pub(crate) cmd: mpsc::Sender<Cmd>,
    pub(crate) id: String,
    pub(crate) protocol_id: String,
    pub(crate) local_addr: SocketAddr,
    pub(crate) out_addr: (String, u16),
    pub(crate) queue: Arc<Mutex<RecvQueue>>,
    pub(crate) queue_notify: Arc<Notify>,
    /// Signalled by connection writers after each write (see
    /// `MeshSocket::wait_for_room`).
    pub(crate) drained: Arc<Notify>,
    /// Taken at [`MeshSocket::close`](crate::MeshSocket::close): once the actor's sender is gone too,
    /// every event stream ends.
    pub(crate) events: Mutex<Option<broadcast::Sender<MeshEvent>>>,
    pub(crate) actor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The received user messages waiting for `recv`, bounded by count and by
/// bytes.
#[derive(Default)]
pub(crate) struct RecvQueue {
    items: VecDeque<Message>,
    bytes: usize,
}

impl RecvQueue {
    /// Queues a message, dropping the oldest while over either bound.
    pub(crate) fn push(&mut self, m: Message, max_count: usize, max_bytes: usize) {
        while !self.items.is_empty()
            && (self.items.len() >= max_count || self.bytes + m.size > max_bytes)
        {
            self.pop();
        }
        self.bytes += m.size;
        self.items.push_back(m);
    }

    pub(crate) fn pop(&mut self) -> Option<Message> {
        let m = self.items.pop_front()?;
        self.bytes -= m.size;
        Some(m)
    }

    pub(crate) fn take_all(&mut self) -> Vec<Message> {
        self.bytes = 0;
        self.items.drain(..).collect()
    }
}

/// A change to the dictionary, local or remote.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// A key was set or merged into.
    Update {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Value,
        /// The writer in force.
        meta: Meta,
    },
    /// A key was deleted.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// This subscriber fell behind and missed that many events (the stream
    /// goes on with the next one; [`SyncSocket::entries`](crate::SyncSocket::entries) has the state).
    Lagged {
        /// Events missed.
        missed: u64,
    },
}
