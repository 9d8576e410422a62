//! The protocol core: every mesh and sync rule as state machines with no
//! I/O.
//!
//! A [`Node`] is fed inputs — a connection is ready or closed, a frame
//! arrived, a timer fired, a command from the handle — each with the
//! current time ([`Now`]), and queues outputs ([`Output`]): bytes to send on
//! a connection, a dial, a connection to close, an event, a received
//! message, a change to persist. Nothing here reads a clock, draws
//! randomness of its own (a seeded RNG is handed in), spawns a task or
//! touches a socket, so every rule runs the same way under the tokio shell
//! (`net`), in unit tests with a hand-made clock, and in the deterministic
//! simulator (`rs2p-sim`) with thousands of nodes in one process.
//!
//! - [`mesh`]: handshakes and peer kinds, dial conflicts, peers exchange,
//!   the broadcast flood with its duplicate window ([`seen`]) and relay
//!   pruning, whispers and routes, renegotiation, re-dial with backoff;
//! - [`sync`]: the dictionary's lease, merge and delta rules;
//! - [`dict`]: the dictionary itself (entries, tombstones);
//! - [`replica`]: the sync state machine: live writes, state transfers,
//!   merges after partitions;
//! - [`node`]: a mesh with an optional replica, the one thing a shell
//!   drives.
//!
//! ```
//! use std::time::Duration;
//! use rs2p::proto::{mesh::Settings, node::Node, Now, Output};
//! let now = Now { elapsed: Duration::ZERO, unix: 1_800_000_000 };
//! let mut a = Node::new(Settings::new(b"A".to_vec(), "mesh", ("127.0.0.1", 1)), None, 1);
//! let conn = a.connect("127.0.0.1", 2, now).unwrap();
//! assert!(matches!(a.poll_output(), Some(Output::Dial { host, port: 2, .. }) if host == "127.0.0.1"));
//! a.handle_ready(conn, now); // the shell connected: the handshake goes out first
//! assert!(matches!(a.poll_output(), Some(Output::Transmit { conn: c, .. }) if c == conn));
//! ```

pub(crate) mod align;
pub mod dict;
pub mod mesh;
pub mod node;
mod ordered;
pub mod reconcile;
pub mod replica;
pub mod seen;
pub mod sketch;
pub mod sync;
mod table;
#[cfg(test)]
mod tests;

use std::time::Duration;

use bytes::Bytes;

use crate::value::Value;
use crate::wire::MessageId;

pub use mesh::{NodeStats, PeerInfo, PeerKind};
pub use node::Node;

/// Identifies a connection inside one node (assigned by the core).
pub type ConnId = u64;

/// The time, as the shell (or the simulator) tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    /// Monotonic time since an arbitrary origin: timers are set in it.
    pub elapsed: Duration,
    /// Unix time in whole seconds, as both references stamp messages.
    pub unix: i64,
}

/// Something the shell must do, or tell the user.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Output {
    /// Write these bytes (whole frames) on the connection, in order.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: Bytes,
    },
    /// Open a connection; report it with [`Node::handle_ready`] or
    /// [`Node::handle_failed`].
    Dial {
        /// The connection id reserved for it.
        conn: ConnId,
        /// Host to dial.
        host: String,
        /// Port to dial.
        port: u16,
    },
    /// Close the connection (the core has forgotten it).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// A change in the routing table.
    Event(Event),
    /// A message for the user's handlers and queue.
    Received(Received),
    /// The dictionary changed.
    Sync(replica::Change),
}

/// A change in the routing table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The first peer joined an empty routing table.
    Connected,
    /// A peer finished its handshake.
    PeerJoined {
        /// Its id.
        id: Vec<u8>,
        /// The address it advertised.
        addr: Option<(String, u16)>,
    },
    /// A peer left the routing table.
    PeerLeft {
        /// Its id.
        id: Vec<u8>,
    },
    /// A handshake was refused and its connection dropped for a reason a
    /// person should hear about (another subnet or transport, another node
    /// answering at a lost peer's address). Routine refusals (a duplicate
    /// connection, ourselves) are not reported.
    PeerRefused {
        /// Where we dialled, for a connection we opened.
        dialed: Option<(String, u16)>,
        /// The peer's id as its handshake gave it.
        id: Vec<u8>,
        /// Why, in words.
        reason: &'static str,
    },
}

/// A message no protocol rule consumed.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// Main flag.
    pub msg_type: u8,
    /// Its creator.
    pub sender: Vec<u8>,
    /// Its creation time.
    pub time: i64,
    /// Its id.
    pub id: MessageId,
    /// The payload; packet 0 is the sub-flag.
    pub packets: Vec<Value>,
    /// True for a user broadcast or whisper (queued for `recv`); false for
    /// anything else, which only handlers see.
    pub user: bool,
    /// The message's size on the wire (its packed body), in bytes.
    pub size: usize,
}
