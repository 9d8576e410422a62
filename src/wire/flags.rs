//! Message flags of protocol 0.7 (PROTOCOL.md §4).
//!
//! The *main flag* is packet 0 of every message; the *sub-flag* is the first
//! payload packet. Values `0x00..=0x2f` are reserved for the protocol: user
//! sub-flags should avoid them.
//!
//! ```
//! use rs2p::wire::flags;
//! assert_eq!(flags::sub::STORE, 0x0b);
//! assert_eq!(flags::name(flags::sub::DELTA), Some("delta"));
//! ```

/// Main flags (packet 0).
pub mod main {
    /// A flooded message, relayed by every node.
    pub const BROADCAST: u8 = 0x00;
    /// Connection-level renegotiation (compression, resend); never relayed.
    pub const RENEGOTIATE: u8 = 0x01;
    /// A message for the direct neighbour only; never relayed.
    pub const WHISPER: u8 = 0x02;
    /// Reserved, unused by mesh and sync.
    pub const PING: u8 = 0x03;
    /// Reserved, unused by mesh and sync.
    pub const PONG: u8 = 0x04;
}

/// Sub-flags (payload packet 0).
pub mod sub {
    /// A user broadcast.
    pub const BROADCAST: u8 = 0x00;
    /// Compression renegotiation (with main flag renegotiate).
    pub const COMPRESSION: u8 = 0x01;
    /// A user whisper.
    pub const WHISPER: u8 = 0x02;
    /// Reserved.
    pub const PING: u8 = 0x03;
    /// Reserved.
    pub const PONG: u8 = 0x04;
    /// The connection handshake.
    pub const HANDSHAKE: u8 = 0x05;
    /// Chord only.
    pub const NOTIFY: u8 = 0x06;
    /// A peers list.
    pub const PEERS: u8 = 0x07;
    /// A request (`'*'` for peers, or a route request).
    pub const REQUEST: u8 = 0x08;
    /// Ask the peer to resend its last message (with main flag renegotiate).
    pub const RESEND: u8 = 0x09;
    /// The answer to a route request.
    pub const RESPONSE: u8 = 0x0a;
    /// A sync store (set, delete, state transfer).
    pub const STORE: u8 = 0x0b;
    /// Chord only.
    pub const RETRIEVE: u8 = 0x0c;
    /// Chord only.
    pub const RETRIEVED: u8 = 0x0d;
    /// Chord only.
    pub const FORWARD: u8 = 0x0e;
    /// Chord only.
    pub const NEW_PATHS: u8 = 0x0f;
    /// Chord only.
    pub const REVOKE_PATHS: u8 = 0x10;
    /// A sync delta (merge into a map).
    pub const DELTA: u8 = 0x11;
    /// Not in protocol 0.7: an rs2p node's list of its neighbours' ids,
    /// whispered only to rs2p peers (recognised by
    /// [`RS2P_MARKER`](super::compression::RS2P_MARKER)) after that list
    /// changed, just before the next broadcast it sends them, so that they
    /// need not relay to those neighbours what it relays to them.
    pub const RS2P_NEIGHBOURS: u8 = 0x2f;
    /// Not in protocol 0.7: a set-reconciliation message between rs2p
    /// nodes (`[0x2e, session, ranges]`, see `proto::reconcile`).
    pub const RS2P_SYNC: u8 = 0x2e;
    /// Not in protocol 0.7: the key hashes whose versions an rs2p node asks
    /// for after comparing item lists (`[0x2d, [key hash, ...]]`).
    pub const RS2P_WANT: u8 = 0x2d;
    /// Not in protocol 0.7: a keepalive probe between rs2p nodes
    /// (`[0x2c, 0]`), answered with `[0x2c, 1]`.
    pub const RS2P_PROBE: u8 = 0x2c;
    /// Not in protocol 0.7: ids of broadcasts an rs2p node received, sent
    /// to the rs2p peers it does not push them to (`[0x2b, [id, ...]]`).
    pub const RS2P_IHAVE: u8 = 0x2b;
    /// Not in protocol 0.7: "push broadcasts to me again, and send me
    /// these" (`[0x2a, [id, ...]]`).
    pub const RS2P_GRAFT: u8 = 0x2a;
    /// Not in protocol 0.7: "stop pushing broadcasts to me" (`[0x29]`).
    pub const RS2P_PRUNE: u8 = 0x29;
    /// Not in protocol 0.7: several state-transfer items in one message
    /// between rs2p nodes (`[0x28, key, value, owner, timestamp, since,
    /// key, ...]`, five packets an item), so a transfer or a
    /// reconciliation pays one header and checksum per batch, not per key,
    /// and the batch compresses as a whole.
    pub const RS2P_STORES: u8 = 0x28;
    /// Not in protocol 0.7: "the versions of about this many keys you do
    /// not hold follow" (`[0x27, count]`), sent by an rs2p node whose
    /// reconciliation answer sends a peer thousands of new keys (a node
    /// joining), so that the peer makes room for them at once instead of
    /// growing its index as they arrive.
    pub const RS2P_EXPECT: u8 = 0x27;
}

/// Compression flags, as advertised in handshakes (see
/// [`Compression`](crate::wire::Compression) for the implemented ones).
pub mod compression {
    /// bzip2.
    pub const BZ2: u8 = 0x10;
    /// gzip container.
    pub const GZIP: u8 = 0x11;
    /// xz container (Python's `lzma` module).
    pub const LZMA: u8 = 0x12;
    /// zlib container.
    pub const ZLIB: u8 = 0x13;
    /// Reserved, not implemented by anyone.
    pub const BWTC: u8 = 0x14;
    /// Reserved, not implemented by anyone.
    pub const CONTEXT1: u8 = 0x15;
    /// Reserved, not implemented by anyone.
    pub const DEFSUM: u8 = 0x16;
    /// Reserved, not implemented by anyone.
    pub const DMC: u8 = 0x17;
    /// Reserved, not implemented by anyone.
    pub const FENWICK: u8 = 0x18;
    /// Reserved, not implemented by anyone.
    pub const HUFFMAN: u8 = 0x19;
    /// Reserved, not implemented by anyone.
    pub const LZJB: u8 = 0x1a;
    /// Reserved, not implemented by anyone.
    pub const LZJBR: u8 = 0x1b;
    /// Reserved, not implemented by anyone.
    pub const LZP3: u8 = 0x1c;
    /// Reserved, not implemented by anyone.
    pub const MTF: u8 = 0x1d;
    /// Reserved, not implemented by anyone.
    pub const PPMD: u8 = 0x1e;
    /// Reserved, not implemented by anyone.
    pub const SIMPLE: u8 = 0x1f;
    /// Raw snappy block format.
    pub const SNAPPY: u8 = 0x20;
    /// Not a compression: rs2p appends this reserved value to the list in
    /// its handshake so that rs2p nodes recognise each other. py2p and js2p
    /// intersect the list with the methods they know, so they ignore it.
    pub const RS2P_MARKER: u8 = 0x2f;
    /// Not a compression either: an rs2p node that speaks set
    /// reconciliation ([`RS2P_SYNC`](super::sub::RS2P_SYNC)) lists this
    /// after [`RS2P_MARKER`]; an rs2p peer without it gets full state
    /// transfers.
    pub const RS2P_RECONCILES: u8 = 0x2e;
    /// Not a compression: an rs2p node that takes part in the broadcast
    /// tree ([`RS2P_IHAVE`](super::sub::RS2P_IHAVE), graft, prune) lists
    /// this too.
    pub const RS2P_TREE: u8 = 0x2d;
    /// Not a compression: an rs2p node that reads batched state-transfer
    /// items ([`RS2P_STORES`](super::sub::RS2P_STORES)) lists this too.
    pub const RS2P_BATCHES: u8 = 0x2c;
    /// Not a compression: an rs2p node that reads frames without their
    /// checksum ([`Framing::Bare`](crate::wire::Framing::Bare)) lists this
    /// too.
    pub const RS2P_BARE: u8 = 0x2b;
    /// Not a compression: an rs2p node that pushes every broadcast it
    /// creates to every neighbour, in the tree or not, lists this too. Its
    /// tree peers then get its whole neighbour list
    /// ([`RS2P_NEIGHBOURS`](super::sub::RS2P_NEIGHBOURS)), and what comes
    /// from its creator is not relayed to the creator's neighbours.
    pub const RS2P_CREATOR_PUSH: u8 = 0x2a;
}

/// The protocol's name of a sub-flag, for logs.
pub fn name(sub_flag: u8) -> Option<&'static str> {
    Some(match sub_flag {
        sub::BROADCAST => "broadcast",
        sub::COMPRESSION => "compression",
        sub::WHISPER => "whisper",
        sub::PING => "ping",
        sub::PONG => "pong",
        sub::HANDSHAKE => "handshake",
        sub::NOTIFY => "notify",
        sub::PEERS => "peers",
        sub::REQUEST => "request",
        sub::RESEND => "resend",
        sub::RESPONSE => "response",
        sub::STORE => "store",
        sub::RETRIEVE => "retrieve",
        sub::RETRIEVED => "retrieved",
        sub::FORWARD => "forward",
        sub::NEW_PATHS => "new_paths",
        sub::REVOKE_PATHS => "revoke_paths",
        sub::DELTA => "delta",
        _ => return None,
    })
}
