#![doc = include_str!("../README.md")]
//!
//! # How the crate is layered
//!
//! - [`wire`]: pure bytes to typed values and back (msgpack [`Value`]s,
//!   frames, typed packets, compression, ids, flags); no I/O, every size
//!   bounded.
//! - [`proto`]: the protocol core. Every mesh and sync rule runs in state
//!   machines ([`proto::Node`]: a [`proto::mesh::Mesh`] and, for a sync
//!   node, a [`proto::replica::Replica`]) that are fed inputs — a
//!   connection is ready or closed, a frame arrived, a timer fired, a
//!   command — with the current time ([`proto::Now`]), and answer with
//!   outputs ([`proto::Output`]): bytes to send on a connection, a dial, a
//!   close, an event, a received message, a dictionary change. No clock, no
//!   sockets, no tasks; randomness is a seeded RNG handed in. The same
//!   state machines run under the tokio shell and in the deterministic
//!   simulator (`rs2p-sim`).
//! - the network shell (private): one tokio actor per node feeds the core
//!   and carries out its outputs; each connection has a reader task (frame
//!   splitting) and a writer task fed by a bounded queue; transports are
//!   TCP, TLS and WebSocket.
//! - [`MeshSocket`] and [`SyncSocket`]: cheap `Clone + Send + Sync`
//!   handles with synchronous reads and streams of events.
//!
//! `ARCHITECTURE.md` in the repository follows one frame through the
//! layers.
//!
//! # Where rs2p differs from py2p and js2p
//!
//! py2p and js2p cannot talk to each other (py2p compares the protocol id as
//! bytes, js2p sends it as text). rs2p talks to both, and can bridge a py2p
//! mesh and a js2p mesh. To do that it:
//!
//! - sends its node id, protocol id, sync keys, owners and `'*'` as msgpack
//!   **bin**, like py2p (js2p accepts that), and accepts **str or bin**
//!   everywhere an id, key, owner, request id or `'*'` is expected;
//! - accepts integers of any width and integral float64 (js2p writes
//!   integers beyond 32 bits as float64);
//! - sends exactly **one handshake** per connection, first and uncompressed,
//!   and tolerates the two that js2p sends;
//! - relays broadcasts with their **original bytes** (the message id is the
//!   SHA-256 of those bytes), and does not send them back to the connection
//!   they came from;
//! - classifies peers by the type of the protocol id in their handshake
//!   (bin: py2p-like, str: js2p-like, see [`PeerKind`]) and **never
//!   advertises js2p-like peers to py2p-like peers** (a py2p node that dials
//!   a js2p node leaves a dead routing entry and floods requests);
//! - **never sends renegotiation** to js2p-like peers (js2p crashes on it),
//!   answers `resend` by re-sending the last frame verbatim, and keeps
//!   accepting compressed frames after compression was turned off;
//! - answers the peers request `'*'` in both encodings and sends it as bin
//!   (py2p sends str but only understands bin, which then breaks its own
//!   links);
//! - **passes on what a state transfer brings**: a key that a py2p or
//!   js2p peer's state transfer (or an rs2p peer's) adds to the dictionary
//!   goes on to the other py2p and js2p peers as a state-transfer store,
//!   paced like a transfer (the references never forward what a transfer
//!   brought; for a bridge that would leave one side without what the
//!   other side held before the bridge met it);
//! - does **not relay deletes to js2p-like peers**: js2p cannot delete and
//!   drops the link that delivers a nil store. A key deleted elsewhere
//!   therefore stays on js2p nodes;
//! - never drops a connection for a handler error: a delete of a missing
//!   key, a delta on a non-map, a state transfer with odd types are ignored
//!   (py2p drops the link on each);
//! - bounds everything the references leave unbounded: frame size (16 MiB by
//!   default, theirs 4 GiB), decompressed size, msgpack nesting and element
//!   count, the duplicate window, per-peer send queues (a peer that stops
//!   reading is dropped), the received-message queue, connections, and the
//!   time a peer may take to send its handshake;
//! - re-dials lost peers with exponential backoff (neither reference
//!   reconnects), and only accepts the node with the lost id at that
//!   address;
//! - while it has fewer than 4 outgoing links, asks its peers for their
//!   lists now and then (after 250 ms, doubling to a minute; the references
//!   ask only when a peer leaves), and tells an rs2p peer that asked it in
//!   the last minute of each new peer that joins it (a peers list of that
//!   one entry), so the asking node dials the newcomer at once and a mesh
//!   settles as soon as its last node is in (py2p and js2p peers never get
//!   these lists);
//! - converges after partitions: rs2p nodes exchange lease start times and
//!   tombstones with their state (a sixth packet in the state-transfer store
//!   that only rs2p peers receive) and keep, per key, the version chosen by
//!   [`proto::sync::supersedes`] (the lease holder's writes win; deletes
//!   stay deleted). State transfers *from* py2p and js2p keep the
//!   references' rule (never overwrite a value held);
//! - writes to py2p-like peers are laid out so that py2p's reader never hits
//!   its framing bug (a read leaving exactly 4 bytes), with padding frames
//!   (sub-flag `ping`) that py2p ignores; and appends a reserved value
//!   (0x2f) to the compression list of its handshake so rs2p nodes know each
//!   other (the references intersect that list with what they know);
//! - sends small frames (under 512 bytes) uncompressed to other rs2p nodes,
//!   and without their 32-byte checksum to those that list the capability
//!   value 0x2b ([`wire::Framing::Bare`]; the receiver computes the
//!   checksum, which is the message id, itself);
//! - tells its rs2p peers who its neighbours are (a whisper with the
//!   rs2p-only sub-flag [`wire::flags::sub::RS2P_NEIGHBOURS`], sent after its
//!   routing table changed, just before the next broadcast it sends that
//!   peer) and does not relay a
//!   broadcast received from an rs2p peer to that peer's neighbours: the
//!   peer has sent it to them itself. In a mesh of rs2p nodes this removes
//!   most duplicate deliveries (at 16 nodes, about half the CPU time per
//!   broadcast) at the cost of the flood's redundancy on those links: a
//!   broadcast lost between the peer and its neighbour (a link that dies
//!   with frames queued) is not made up by the other path, only by the
//!   state transfer when the two reconnect. py2p and js2p peers never see
//!   the message and are relayed to as before;
//! - pushes every broadcast it creates to every peer, in the broadcast tree
//!   or not, and lists the capability value 0x2a to say so: a tree peer
//!   then gets its whole neighbour list, and a broadcast that came straight
//!   from its creator is relayed only beyond the creator's neighbours. In
//!   a mesh where every node sees the writer, a write costs one frame a
//!   node and one hop, and a burst of writes no longer races the tree's
//!   relays against the writer's own copies (10,000 writes at 8 nodes:
//!   about 2,500 duplicates a node before, none now);
//! - sends rs2p peers that list the capability value 0x2c its state
//!   transfers and reconciled versions several items per message (sub-flag
//!   0x28), compressed as a whole;
//! - between rs2p peers that list the capability values 0x2d and 0x2e in
//!   their handshake (after the 0x2f marker; the references drop unknown
//!   values when they intersect compression lists), broadcasts follow a
//!   **broadcast tree** (eager push on tree links, 8-byte id announcements
//!   on the others, graft and prune: [`proto::mesh`]'s `tree` module,
//!   sub-flags 0x29-0x2b), and dictionaries are **reconciled** instead of
//!   sent whole: on connect, every 30 s, and when a peer is lost
//!   ([`proto::reconcile`], sub-flags 0x2d-0x2e, and 0x27 ahead of a
//!   large answer). Links to rs2p and py2p
//!   peers silent for 10 s are **probed** (rs2p: sub-flag 0x2c; py2p: the
//!   peers request `'*'`) and dropped after 30 s of silence. py2p and js2p
//!   never receive any of these messages;
//! - refuses a local write whose value a peer or the store could not read
//!   back (nested deeper than 64 levels, or in a message over the frame
//!   limit) with [`Error::ValueTooDeep`] / [`Error::ValueTooLarge`], and
//!   skips, without dropping the link, a peer's frame over a limit (py2p
//!   has none);
//! - takes writes dated more than 300 s ahead of its clock as dated 300 s
//!   ahead (py2p and js2p take the lease as dated, even years ahead), and
//!   writes dated before 1970 (a broken clock) as dated 0
//!   ([`proto::replica::dated`]);
//! - answers a live write it refuses under the lease rule, when it comes
//!   from an rs2p peer, with its own version and lease start, so two rs2p
//!   nodes that wrote a key in different seconds settle it by the merge
//!   rule while connected;
//! - can keep its dictionary and id on disk ([`SyncConfig::data_dir`]);
//! - over TLS ("SSL"), accepts any certificate by default and does not check
//!   the handshake signature either ([`config::TlsVerify::AcceptAny`]): that
//!   is what talking to js2p (RSA-1024, SHA-1) needs, and what the
//!   references do. TLS then only protects against passive eavesdropping.
//!   Between rs2p nodes, [`config::TlsVerify::Pinned`] authenticates both
//!   ends by certificate fingerprint;
//! - over WebSocket ("ws"), accepts any `Origin` (browsers may join from any
//!   page), splits messages over 1 MiB (js2p's library closes on messages
//!   over 2 MiB), and sends its handshake first on both sides (js2p's
//!   listener waits for the dialer's).
//!
//! ## The rs2p-only messages
//!
//! All are whispers (`[sub-flag, ...]` after the usual header), sent only
//! on links whose handshake listed the matching capability after the 0x2f
//! marker. py2p and js2p never list those values (they intersect the list
//! with the methods they know), so they never receive any of these and
//! their traffic is exactly the references' own.
//!
//! | sub-flag | payload | capability | what for |
//! |---|---|---|---|
//! | 0x2f neighbours | `[0x2f, [node id, ...]]` | marker 0x2f | relay pruning: to peers out of the tree and peers that list 0x2a, every neighbour; to other tree peers, those out of the tree |
//! | 0x2e sync | `[0x2e, session, [[mode, lo, hi, data], ...]]` (mode 1 `[count, sum]`, 2 a split `[count, sum, ...]`, 3 `[key hash, version hash, ...]`); on connect, from a dictionary of 4,096 items or more, a fourth element, a 12 KiB bin: an IBLT of every `(key hash, version hash)` ([`proto::sketch`]) | 0x2e | set reconciliation: on connect, every 30 s, when a peer is lost; up to about 400 differing items are found from the sketch in one message, more by range fingerprints |
//! | 0x2d want | `[0x2d, [key hash, ...]]` | 0x2e | the versions to send after comparing item lists |
//! | 0x27 expect | `[0x27, count]` | 0x2e | ahead of a reconciliation's answer that sends 4,096 keys or more the peer holds no version of (a node joining): the peer makes room for them at once instead of growing its index as they arrive (about 15 % less CPU for a node joining a million keys) |
//! | 0x28 stores | `[0x28, key, value, owner, timestamp, lease start, key, ...]` (five packets an item, up to 64 KiB of items) | 0x2c | state transfers and reconciliation: one header and checksum per batch, compressed as a whole |
//! | 0x2c probe | `[0x2c, 0]`, answered `[0x2c, 1]` | marker 0x2f | keepalive after 10 s of silence, dropped after 30 s more |
//! | 0x2b announce | `[0x2b, [id, ...]]` (ids: the first 8 bytes of a broadcast's id, as u64); to peers that list 0x2b, `[0x2b, bin]`, the first 4 bytes of each id one after the other | 0x2d | lazy push on links out of the tree: batched, 100 ms doubling to 2 s while the tree is settled; an id the peer announced first is not announced back |
//! | 0x2a graft | `[0x2a, [id, ...]]` (or a bin of 4-byte ids, as above) | 0x2d | "push to me again, and send me these": an announced broadcast missing 150 ms later, or (no ids) on every link out of the tree when a node's last tree link closes |
//! | 0x29 prune | `[0x29]` | 0x2d | "stop pushing to me": a duplicate came on the link (after 16 in a row on a link that ever delivered a first copy) |
//!
//! Frames to peers that list 0x2b may also be *bare*: a body under 512
//! bytes sent without its checksum (`length || packed`, no compression).
//! The receiver tells one by its first byte (a msgpack array header, where
//! a checked body starts with checksum bytes) and a message that parses to
//! the end; anything else is read the usual way. To those peers the
//! messages above that only the link's other end reads (announce, graft,
//! prune, probe) also go with an empty sender and time 0.
//!
//! Every count in them is capped (ids per announcement or graft, ranges,
//! items and want lists per reconciliation message, rounds per session,
//! the room an expect hint makes: 4,194,304 keys in all); a malformed one
//! is ignored with the link kept. Each reconciliation message
//! costs a pass over the dictionary, so a node answers a link's messages
//! within a budget (64 at once, then one every 500 ms), a peer's sessions
//! one per half second at most, and holds at most twice its dictionary in
//! versions queued for a peer that asks faster than it reads; it opens its
//! own sessions at most once a second per link (a partition that takes
//! many peers at once costs each remaining link two sessions). What is not
//! answered is counted (`NodeStats::reconciliation_refused`, the metric
//! `rs2p_reconciliation_refused_total`), and between honest nodes stays 0.
//!
//! # Crate features
//!
//! - `net` (default): the tokio shell — [`config`], [`MeshSocket`],
//!   [`SyncSocket`] — and the OS random generator for node ids. Without it
//!   (`default-features = false`) the crate is the core alone, [`wire`] and
//!   [`proto`], which needs no tokio, no OS randomness and no C code and
//!   builds for `wasm32-unknown-unknown` (the browser node,
//!   `crates/rs2p-wasm`).
//! - `native-compression` (default): zlib and gzip through C zlib, and bz2
//!   and lzma; without it zlib and gzip are pure Rust and bz2 and lzma are
//!   not offered (see [`Compression`]).
//! - `tls`, `ws`, `store` (default; each implies `net`): the SSL and ws
//!   transports and [`SyncConfig::data_dir`]; without one, asking for it
//!   fails at bind time with [`Error::FeatureDisabled`].
//! - `web` (default): the browser page and bundle server
//!   (`rs2p::web`).
#![warn(missing_docs)]

#[cfg(feature = "net")]
pub mod config;
pub mod error;
#[cfg(feature = "net")]
pub mod mesh;
#[cfg(feature = "net")]
pub(crate) mod net;
pub mod proto;
#[cfg(feature = "net")]
pub(crate) mod store;
#[cfg(feature = "net")]
pub mod sync;
pub mod value;
#[cfg(feature = "web")]
pub mod web;
pub mod wire;

#[cfg(feature = "net")]
pub use config::{MeshConfig, SyncConfig, Transport};
pub use error::{DecodeError, Error, Result, StoreError, ValueError};
#[cfg(feature = "net")]
pub use mesh::{EventStream, MeshEvent, MeshSocket, Message};
pub use proto::sync::Meta;
pub use proto::{NodeStats, PeerInfo, PeerKind};
#[cfg(feature = "net")]
pub use sync::{SyncEvent, SyncEventStream, SyncSocket};
pub use value::{Integer, Value};
pub use wire::msgpack::{from_value, to_value};
pub use wire::Compression;
