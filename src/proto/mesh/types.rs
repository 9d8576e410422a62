//! The mesh's public types: peer kinds and infos, counters, settings.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::wire::{ids, Compression, Limits};

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
    /// Well-formed frames over a limit (frame size, decompressed size,
    /// nesting, element count): skipped, their connection kept.
    pub frames_skipped: u64,
    /// The last decoding error.
    pub last_error: Option<String>,
    /// Peers dropped because their send queue was full.
    pub slow_peers_dropped: u64,
    /// Links dropped after staying silent through a keepalive probe.
    pub stalled_links: u64,
    /// Bytes handed to connections (frames, with their length prefixes;
    /// not TCP/IP headers).
    pub bytes_sent: u64,
    /// Links taken out of the broadcast tree after a duplicate.
    pub tree_prunes: u64,
    /// Grafts sent for announced broadcasts that did not arrive in time.
    pub tree_grafts: u64,
    /// Announcement frames sent (batches of ids on links out of the tree).
    pub tree_announcements: u64,
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
    /// Reconciliation messages from rs2p peers not answered: malformed,
    /// over a session's rounds, sessions opened faster than one a second,
    /// or past the link's budget (each costs a pass over the dictionary).
    pub reconciliation_refused: u64,
    /// Frames received, by message type (the main type of the header:
    /// [`main::BROADCAST`](crate::wire::flags::main::BROADCAST),
    /// [`main::WHISPER`](crate::wire::flags::main::WHISPER), ...). A frame
    /// counts once it is decoded, or when it is dropped unread as a
    /// duplicate broadcast; bad and skipped frames are not here.
    pub frames_in: BTreeMap<u8, u64>,
    /// Bytes of the frames in [`frames_in`](Self::frames_in), as received
    /// (compressed, with their 4-byte length prefixes).
    pub bytes_in: BTreeMap<u8, u64>,
    /// Frames queued for peers, by message type (relays included; answers
    /// to `resend` and padding towards py2p are not counted).
    pub frames_out: BTreeMap<u8, u64>,
    /// Bytes of the frames in [`frames_out`](Self::frames_out), as sent.
    pub bytes_out: BTreeMap<u8, u64>,
    /// Bytes of state transfers sent: the keys a sync node sends a peer
    /// that joins.
    pub state_transfer_bytes_out: u64,
    /// Bytes of whispered stores received: state transfers from peers (and
    /// rs2p peers' answers to refused writes).
    pub state_transfer_bytes_in: u64,
    /// Bytes waiting in the connections' send queues now.
    pub send_queue_bytes: usize,
    /// Tombstones held (a sync node's deleted keys, kept for a while).
    pub tombstones: usize,
    /// Transactions committed by the durable store (with a data dir).
    pub store_commits: u64,
    /// Store commits by duration: bucket `i` counts the commits that took
    /// at most 250 µs × 2^i (250 µs to 512 ms); the commits that took
    /// longer are in [`store_commits`](Self::store_commits) only.
    pub store_commit_buckets: [u64; 12],
    /// Total time of the store commits, in microseconds.
    pub store_commit_micros: u64,
    /// The error that stopped the durable store, if any (writes then fail).
    pub store_error: Option<String>,
}

impl NodeStats {
    /// Counts a received frame of `bytes` bytes.
    pub(crate) fn received(&mut self, msg_type: u8, bytes: usize) {
        *self.frames_in.entry(msg_type).or_default() += 1;
        *self.bytes_in.entry(msg_type).or_default() += bytes as u64;
    }

    /// Counts a frame queued for a peer.
    pub(crate) fn sent(&mut self, msg_type: u8, bytes: usize) {
        *self.frames_out.entry(msg_type).or_default() += 1;
        *self.bytes_out.entry(msg_type).or_default() += bytes as u64;
    }
}

/// What the mesh rules need to know about the node.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our node id.
    pub id: Vec<u8>,
    /// Our protocol id (subnet and transport hashed, see
    /// [`ids::protocol_id`]).
    pub protocol_id: Vec<u8>,
    /// The address we advertise. An empty host advertises none (`[nil,
    /// nil]` in the handshake), for a node that cannot listen (a browser):
    /// peers then neither list it in peers lists nor re-dial it.
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
    /// Push the broadcasts we create to every peer, in the broadcast tree
    /// or not, and tell rs2p peers so
    /// ([`RS2P_CREATOR_PUSH`](crate::wire::flags::compression::RS2P_CREATOR_PUSH)):
    /// they then relay what they get from us only beyond our neighbours.
    /// On by default; off, the node behaves as rs2p nodes before it did
    /// (its writes go along the tree only).
    pub creator_push: bool,
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
            creator_push: true,
        }
    }
}
