//! A node of the protocol: the mesh rules and, for a sync node, the
//! dictionary's, behind one set of inputs and outputs.

use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::mesh::{Mesh, NodeStats, PeerInfo, Settings, Upcall};
use super::ordered::HashKeys;
use super::replica::{Pump, Replica, Room};
use super::{ConnId, Event, Now, Output, Received};
use crate::error::{Error, Result};
use crate::value::Value;
use crate::wire::flags::sub;
use crate::wire::MessageId;

/// A protocol node: feed it inputs with the time, carry out its outputs.
///
/// The inputs are the `handle_*` methods (a connection is ready, failed or
/// closed, a frame arrived, a timer fired) and the commands (`connect`,
/// `send`, `set`, ...); after each, [`poll_output`](Self::poll_output)
/// yields what to do until it returns `None`, and
/// [`poll_timeout`](Self::poll_timeout) says when to call
/// [`handle_timeout`](Self::handle_timeout).
pub struct Node {
    mesh: Mesh,
    replica: Option<Replica>,
    /// The time of the latest input (outputs taken later act at it).
    now: Option<Now>,
}

impl Node {
    /// A node; with a [`Replica`], a sync node. `seed` seeds the only
    /// randomness the rules use.
    pub fn new(settings: Settings, replica: Option<Replica>, seed: u64) -> Node {
        if let Some(r) = &replica {
            // The dictionary's hash keys, secret as the seed is: std has
            // no randomness for them on wasm32. Derived from the seed
            // apart from the generator, so the rules' draws stay as they
            // were (and the simulator's runs with them).
            let keys = HashKeys::from_seed(seed);
            r.dict()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rekey(keys);
        }
        Node {
            mesh: Mesh::new(settings, StdRng::seed_from_u64(seed)),
            replica,
            now: None,
        }
    }

    /// The mesh state.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The dictionary's state machine, on a sync node.
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_ref()
    }

    /// Our id.
    pub fn id(&self) -> &[u8] {
        self.mesh.id()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.mesh.poll_output()?;
        if let (Output::Event(Event::PeerLeft { .. }), Some(r), Some(now)) =
            (&out, self.replica.as_mut(), self.now)
        {
            // Its neighbours may each hold a different part of its last
            // writes: reconcile with the rest now.
            r.peer_lost(&mut self.mesh, now);
        }
        Some(out)
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due
    /// (monotonic, as [`Now::elapsed`]).
    pub fn poll_timeout(&self) -> Option<Duration> {
        let replica = self.replica.as_ref().and_then(Replica::poll_timeout);
        match (self.mesh.poll_timeout(), replica) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Now) {
        self.now = Some(now);
        self.mesh.handle_timeout(now);
        if let Some(r) = self.replica.as_mut() {
            r.handle_timeout(&mut self.mesh, now);
        }
        self.reconcile_gaps(now);
    }

    /// Reconciles the links where the broadcast tree found gaps.
    fn reconcile_gaps(&mut self, now: Now) {
        let gaps = self.mesh.take_gaps();
        if let Some(r) = self.replica.as_mut() {
            for conn in gaps {
                r.reconcile_gap(&mut self.mesh, conn, now);
            }
        }
    }

    /// Dials a node (an [`Output::Dial`] follows). Fails with
    /// [`Error::ConnectionLimit`] when the node has its most connections.
    pub fn connect(&mut self, host: &str, port: u16, now: Now) -> Result<ConnId> {
        self.mesh.connect(host, port, now)
    }

    /// A connection arrived: `Some(id)` to take it, `None` to refuse it.
    pub fn accept(&mut self, now: Now) -> Option<ConnId> {
        self.mesh.accept(now)
    }

    /// The transport of a dialled or accepted connection is up.
    pub fn handle_ready(&mut self, conn: ConnId, now: Now) {
        self.mesh.handle_ready(conn, now);
    }

    /// A dial or transport handshake failed.
    pub fn handle_failed(&mut self, conn: ConnId) {
        self.mesh.handle_failed(conn);
    }

    /// The connection ended.
    pub fn handle_closed(&mut self, conn: ConnId, reason: &str, now: Now) {
        self.now = Some(now);
        self.mesh.handle_closed(conn, reason, now);
    }

    /// The shell's reader skipped a frame over a limit on `conn` (the link
    /// stays).
    pub fn frame_skipped(&mut self, conn: ConnId, error: &crate::error::DecodeError) {
        self.mesh.frame_skipped(conn, error);
    }

    /// The shell could not queue bytes for `conn` (its queue is full).
    pub fn handle_slow(&mut self, conn: ConnId, now: Now) {
        self.now = Some(now);
        self.mesh.handle_slow(conn, now);
    }

    /// A frame body (the bytes after the length prefix) arrived on `conn`.
    /// `room` tells how full the peers' send queues are, for state
    /// transfers.
    pub fn handle_frame(&mut self, conn: ConnId, body: Bytes, room: &dyn Room, now: Now) {
        self.now = Some(now);
        self.dispatch_frame(conn, body, room, now);
        self.reconcile_gaps(now);
    }

    fn dispatch_frame(&mut self, conn: ConnId, body: Bytes, room: &dyn Room, now: Now) {
        match self.mesh.handle_frame(conn, body, now) {
            Upcall::Done => {}
            Upcall::Joined(conn) => {
                if let Some(r) = self.replica.as_mut() {
                    r.on_peer(&mut self.mesh, conn, room, now);
                }
                self.mesh.flush_after_connect(conn, now);
            }
            Upcall::Message(mut inc) => {
                if let Some(r) = self.replica.as_mut() {
                    if r.on_message(&mut self.mesh, &mut inc, now) {
                        r.pump_now(&mut self.mesh, room, now);
                        return;
                    }
                }
                let user = matches!(inc.msg.sub_flag(), Some(sub::BROADCAST | sub::WHISPER));
                let inc = *inc;
                self.mesh.push(Output::Received(Received {
                    msg_type: inc.msg.msg_type,
                    sender: inc.msg.sender,
                    time: inc.msg.time,
                    id: inc.id,
                    packets: inc.msg.payload,
                    user,
                    size: inc.size,
                }));
            }
        }
    }

    /// Moves state transfers along, and says whether some are left and
    /// when to call again: once peers' queues have drained
    /// ([`Pump::Waiting`]) or once the writers have run ([`Pump::Ready`]).
    pub fn pump(&mut self, room: &dyn Room, now: Now) -> Pump {
        match self.replica.as_mut() {
            Some(r) => r.pump(&mut self.mesh, room, now),
            None => Pump::Done,
        }
    }

    /// Sends a message of our own (a broadcast is flooded).
    pub fn send(&mut self, msg_type: u8, payload: &[Value], now: Now) -> MessageId {
        self.mesh.send(msg_type, payload, now)
    }

    /// Whispers to a neighbour.
    pub fn whisper(&mut self, peer: &[u8], payload: &[Value], now: Now) -> Result<()> {
        self.mesh.whisper(peer, payload, now)
    }

    /// Answers a node, through a route when it is not a neighbour.
    pub fn reply(&mut self, peer: &[u8], payload: Vec<Value>, now: Now) {
        self.mesh.reply(peer, payload, now);
    }

    /// Drops a peer; it is not re-dialled.
    pub fn disconnect(&mut self, peer: &[u8], now: Now) -> bool {
        self.now = Some(now);
        self.mesh.disconnect(peer, now)
    }

    /// Blocks or unblocks a peer.
    pub fn block(&mut self, peer: &[u8], blocked: bool, now: Now) {
        self.now = Some(now);
        self.mesh.block(peer, blocked, now);
    }

    /// The handshaken peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.mesh.peers()
    }

    /// The counters.
    pub fn stats(&self) -> NodeStats {
        self.mesh.stats()
    }

    fn replica_mut(&mut self) -> Result<(&mut Replica, &mut Mesh)> {
        match self.replica.as_mut() {
            Some(r) => Ok((r, &mut self.mesh)),
            None => Err(Error::Config("this node holds no dictionary".into())),
        }
    }

    /// Sets a key (nil deletes it); see [`Replica::set`].
    pub fn set(&mut self, key: Vec<u8>, value: Value, now: Now) -> Result<()> {
        let (r, mesh) = self.replica_mut()?;
        r.set(mesh, key, value, now)
    }

    /// Merges a map into the map at `key`; see [`Replica::apply_delta`].
    pub fn apply_delta(
        &mut self,
        key: Vec<u8>,
        delta: Vec<(Value, Value)>,
        now: Now,
    ) -> Result<()> {
        let (r, mesh) = self.replica_mut()?;
        r.apply_delta(mesh, key, delta, now)
    }
}
