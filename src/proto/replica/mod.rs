//! The sync state machine (PROTOCOL.md §8): local writes checked against the
//! lease rule and broadcast, live writes from peers, state transfers to new
//! peers paced by what they read, and merges of the versions rs2p nodes
//! exchange after a partition.

use std::sync::{Arc, Mutex, MutexGuard};

use super::dict::{Changed, Dict};
use super::mesh::{Incoming, Mesh, PeerKind};
use super::sync::{merge_delta, Meta, Refused, Version, WriteKind};
use super::{ConnId, Now, Output};
use crate::error::{Error, Result};
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::msgpack;
use crate::wire::packet::{Packet, Store, TransferMeta};

mod relay;
mod sessions;
mod transfer;

use relay::PassOn;
use transfer::{send_transfer, Transfer, TransferItem, TRANSFER_BATCH};

pub use sessions::{BUDGET_BURST, BUDGET_EVERY, MAX_ROUNDS, RECONCILE_EVERY, RECONCILE_JITTER};
pub use transfer::{Pump, Room, Unbounded, TRANSFER_WINDOW};

/// How far ahead of our clock a write may be dated: later dates are taken
/// as now plus this, so a peer with a clock years ahead cannot take a lease
/// for years (py2p and js2p take it as dated).
pub const MAX_FUTURE_SKEW: i64 = 300;

/// How far ahead of the clock a node dates its own rewrites of a key, at
/// most (see `Replica::own_time`): well inside [`MAX_FUTURE_SKEW`], and
/// little more than the clock skew peers see between machines anyway.
pub const OWN_AHEAD: i64 = 5;

/// The date a peer's write is taken as, at `now`: as sent, but no later
/// than [`MAX_FUTURE_SKEW`] ahead, and no earlier than 0 (1970). A date
/// before 1970 comes only from a broken clock; as 0 its lease has still
/// long ended, and lease ends (`timestamp + 3600`) and ages (`now -
/// timestamp`) stay far from overflowing wherever they are shown.
///
/// ```
/// use rs2p::proto::replica::{dated, MAX_FUTURE_SKEW};
/// let now = 1_800_000_000;
/// assert_eq!(dated(now - 5, now), now - 5);
/// assert_eq!(dated(i64::MAX, now), now + MAX_FUTURE_SKEW);
/// assert_eq!(dated(i64::MIN, now), 0);
/// ```
pub fn dated(timestamp: i64, now: i64) -> i64 {
    timestamp.max(0).min(now.saturating_add(MAX_FUTURE_SKEW))
}

/// A change to the dictionary, to persist and to tell the user.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// The key now holds this value.
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Value,
        /// The writer in force.
        meta: Meta,
        /// When its lease began.
        since: i64,
    },
    /// The key was deleted.
    Deleted {
        /// The key.
        key: Vec<u8>,
        /// Who deleted it, and when.
        meta: Meta,
        /// When the deleter's lease began.
        since: i64,
    },
}

/// The dictionary's state machine. The dictionary itself sits behind a
/// mutex that the handle's synchronous reads share; the replica is its only
/// writer.
pub struct Replica {
    dict: Arc<Mutex<Dict>>,
    leasing: bool,
    transfers: Vec<Transfer>,
    /// Reconciliation sessions with rs2p peers (see [`sessions`]).
    sessions: sessions::Sessions,
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn lease_error(key: &[u8], r: Refused) -> Error {
    Error::LeaseHeld {
        key: key_text(key),
        owner: key_text(&r.owner),
        expires_at: r.expires_at,
    }
}

impl Replica {
    /// A replica of `dict`, with leases enforced or not.
    pub fn new(dict: Arc<Mutex<Dict>>, leasing: bool) -> Replica {
        Replica {
            dict,
            leasing,
            transfers: Vec::new(),
            sessions: sessions::Sessions::default(),
        }
    }

    /// The dictionary (reads take its lock briefly).
    pub fn dict(&self) -> &Arc<Mutex<Dict>> {
        &self.dict
    }

    /// True when leases are enforced.
    pub fn leasing(&self) -> bool {
        self.leasing
    }

    fn lock(&self) -> MutexGuard<'_, Dict> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // dictionary is consistent between statements.
        self.dict.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn announce(
        mesh: &mut Mesh,
        key: Vec<u8>,
        changed: Changed,
        value: Value,
        meta: Meta,
        since: i64,
    ) {
        let change = match changed {
            Changed::Nothing => return,
            Changed::Set => Change::Set {
                key,
                value,
                meta,
                since,
            },
            Changed::Deleted => Change::Deleted { key, meta, since },
        };
        mesh.push(Output::Sync(change));
    }

    fn apply(
        &self,
        mesh: &mut Mesh,
        key: &[u8],
        value: Value,
        meta: Meta,
        kind: WriteKind,
        now: Now,
    ) -> std::result::Result<Changed, Refused> {
        let (changed, since) =
            self.lock()
                .apply(key, &value, &meta, kind, self.leasing, now.unix)?;
        Self::announce(mesh, key.to_vec(), changed, value, meta, since);
        Ok(changed)
    }

    // ----- commands -----

    /// Sets a key (a nil value deletes it) and broadcasts the store. Fails
    /// with [`Error::LeaseHeld`], sending nothing, when another node holds
    /// the key's lease.
    pub fn set(&mut self, mesh: &mut Mesh, key: Vec<u8>, value: Value, now: Now) -> Result<()> {
        if !value.is_nil() {
            check_value(mesh, &key, &value)?;
        }
        let now = self.own_time(mesh, &key, now);
        let meta = Meta {
            owner: mesh.id().to_vec(),
            timestamp: now.unix,
        };
        self.apply(mesh, &key, value.clone(), meta, WriteKind::Store, now)
            .map_err(|r| lease_error(&key, r))?;
        mesh.send(
            main::BROADCAST,
            &[Value::from(sub::STORE), Value::Bin(key), value],
            now,
        );
        Ok(())
    }

    /// The time of a write of ours to `key` (its version's timestamp and
    /// its message's time): now, or a second after our own version of the
    /// key when that is not older, at most [`OWN_AHEAD`] seconds ahead.
    ///
    /// Two writes of one key by one node in one second would otherwise
    /// have equal versions: peers that saw both keep the later, but a peer
    /// that missed the second (a lost link, a restart) reconciles the two
    /// by their encodings, and the larger one, maybe the first, then wins
    /// everywhere, on the writer too: an acknowledged write lost. A key
    /// written more often than once a second for long runs up to
    /// `OWN_AHEAD` ahead and from there ties as before.
    fn own_time(&self, mesh: &Mesh, key: &[u8], now: Now) -> Now {
        // Read in place: `Dict::version` would copy the owner on every
        // local write.
        let ours = {
            let d = self.lock();
            match d.map.get(key) {
                Some(e) => (e.owner() == mesh.id()).then(|| e.timestamp()),
                None => d
                    .tombs
                    .get(key, &())
                    .filter(|t| t.meta.owner == mesh.id())
                    .map(|t| t.meta.timestamp),
            }
        };
        match ours {
            Some(t) if t >= now.unix => Now {
                unix: t.saturating_add(1).min(now.unix.saturating_add(OWN_AHEAD)),
                ..now
            },
            _ => now,
        }
    }

    /// Merges a map into the map at `key` and broadcasts the delta.
    pub fn apply_delta(
        &mut self,
        mesh: &mut Mesh,
        key: Vec<u8>,
        entries: Vec<(Value, Value)>,
        now: Now,
    ) -> Result<()> {
        let now = self.own_time(mesh, &key, now);
        let meta = Meta {
            owner: mesh.id().to_vec(),
            timestamp: now.unix,
        };
        let current = self.lock().get(&key);
        let merged =
            merge_delta(current.as_ref(), &entries).map_err(|found| Error::NotAMapping {
                key: key_text(&key),
                found,
            })?;
        // The delta travels live, the merged map in state transfers: both
        // must be readable everywhere.
        check_value(mesh, &key, &merged)?;
        self.apply(mesh, &key, merged, meta, WriteKind::Delta, now)
            .map_err(|r| lease_error(&key, r))?;
        mesh.send(
            main::BROADCAST,
            &[
                Value::from(sub::DELTA),
                Value::Bin(key),
                Value::Map(entries),
            ],
            now,
        );
        Ok(())
    }

    // ----- peers -----

    /// A peer joined: its state transfer starts — every key with its
    /// metadata (rs2p peers also get lease starts and tombstones), fed as
    /// the peer reads it.
    pub(crate) fn on_peer(&mut self, mesh: &mut Mesh, conn: ConnId, room: &dyn Room, now: Now) {
        if mesh.reconciles(conn) {
            // Between rs2p nodes that reconcile, the dialling side opens a
            // session instead: only what differs crosses.
            if mesh.is_outgoing(conn) {
                self.open_session(mesh, conn, true, now);
            }
            return;
        }
        let rs2p = mesh.peer_kind(conn) == PeerKind::Rs;
        let keys: Vec<Box<[u8]>> = {
            let d = self.lock();
            let mut keys: Vec<Box<[u8]>> = d.map.keys().map(Box::from).collect();
            if rs2p {
                keys.extend(d.tombs.iter().map(|t| t.key.clone()));
            }
            keys
        };
        self.transfers.retain(|t| t.conn != conn);
        self.transfers.push(Transfer {
            conn,
            rs2p,
            keys,
            next: 0,
        });
        self.pump(mesh, room, now);
    }

    /// A message for the dictionary; false when it is not one.
    pub(crate) fn on_message(&mut self, mesh: &mut Mesh, inc: &mut Incoming, now: Now) -> bool {
        let date = |t: i64| dated(t, now.unix);
        match &mut inc.packet {
            Packet::Store(Store {
                key,
                value,
                transfer: Some(t),
            }) => {
                let (key, value, t) = (
                    std::mem::take(key),
                    std::mem::replace(value, Value::Nil),
                    t.clone(),
                );
                let to = PassOn::of(mesh, inc.conn);
                self.on_transfer_item(mesh, &to, key, value, t, now);
                true
            }
            Packet::Stores(items) => {
                // Only rs2p peers send batches, and they are read only from
                // rs2p peers.
                if mesh.peer_kind(inc.conn) == PeerKind::Rs {
                    let to = PassOn::of(mesh, inc.conn);
                    for s in std::mem::take(items) {
                        if let Some(t) = s.transfer {
                            self.on_transfer_item(mesh, &to, s.key, s.value, t, now);
                        }
                    }
                }
                true
            }
            Packet::Store(Store {
                key,
                value,
                transfer: None,
            }) => {
                let meta = Meta {
                    owner: inc.msg.sender.clone(),
                    timestamp: date(inc.msg.time),
                };
                if self
                    .apply(mesh, key, value.clone(), meta, WriteKind::Store, now)
                    .is_err()
                {
                    self.answer_refusal(mesh, inc.conn, key, now);
                }
                true
            }
            Packet::Delta { key, delta } => {
                let meta = Meta {
                    owner: inc.msg.sender.clone(),
                    timestamp: date(inc.msg.time),
                };
                let current = self.lock().get(key);
                if let Ok(merged) = merge_delta(current.as_ref(), delta) {
                    if self
                        .apply(mesh, key, merged, meta, WriteKind::Delta, now)
                        .is_err()
                    {
                        self.answer_refusal(mesh, inc.conn, key, now);
                    }
                }
                true
            }
            Packet::Sync => {
                self.on_sync(mesh, inc.conn, &inc.msg.payload, now);
                true
            }
            Packet::Want => {
                self.on_want(mesh, inc.conn, &inc.msg.payload, now);
                true
            }
            Packet::Expect(count) if mesh.reconciles(inc.conn) => {
                // Room is all a hint makes, and only so much
                // (`dict::MAX_RESERVE`): no budget needed.
                self.lock().reserve(*count);
                true
            }
            // A store or delta with malformed fields: consumed, as the
            // references would (they drop the link instead).
            Packet::Ignored(_) => true,
            _ => false,
        }
    }

    /// One state-transfer item: a peer's version of a key, with its owner,
    /// date and (from rs2p peers) lease start; passed on `to` those peers
    /// when it changes the dictionary.
    fn on_transfer_item(
        &mut self,
        mesh: &mut Mesh,
        to: &PassOn,
        key: Vec<u8>,
        value: Value,
        t: TransferMeta,
        now: Now,
    ) {
        let date = |t: i64| dated(t, now.unix);
        let timestamp = date(t.timestamp);
        let version = Version {
            meta: Meta {
                owner: t.owner,
                timestamp,
            },
            // An rs2p peer's lease start, dated the same way.
            since: t.since.map_or(timestamp, date).min(timestamp),
            deleted: value.is_nil(),
        };
        if t.since.is_none() {
            self.reference_transfer(mesh, to, &key, value, version, now);
        } else {
            self.merge_transfer(mesh, to, key, value, version, now);
        }
    }

    /// A live write from an rs2p peer was refused by the lease rule: we hold
    /// a version it does not know of (two nodes wrote the key in different
    /// seconds before either heard of the other). The peer gets our version
    /// with its lease start, and the merge rule ([`supersedes`]) settles the
    /// key on both sides while they stay connected (py2p and js2p keep the
    /// references' rule and never see this).
    ///
    /// [`supersedes`]: super::sync::supersedes
    fn answer_refusal(&mut self, mesh: &mut Mesh, conn: ConnId, key: &[u8], now: Now) {
        if mesh.peer_kind(conn) != PeerKind::Rs {
            return;
        }
        let item = {
            let d = self.lock();
            let Some(e) = d.map.get(key) else { return };
            TransferItem::new(
                key,
                e.value_bytes(),
                e.owner(),
                e.timestamp(),
                Some(e.since()),
            )
        };
        send_transfer(mesh, conn, &[item], now);
    }

    /// A state-transfer item from py2p or js2p: **the references' rule**, a
    /// state transfer never overwrites a value already held (nor, here,
    /// brings back a key deleted after that write), and carries no deletes.
    fn reference_transfer(
        &mut self,
        mesh: &mut Mesh,
        to: &PassOn,
        key: &[u8],
        value: Value,
        version: Version,
        now: Now,
    ) {
        if version.deleted
            || self
                .lock()
                .reference_transfer_blocked(key, version.meta.timestamp)
        {
            return;
        }
        let meta = version.meta.clone();
        if let Ok(Changed::Set) = self.apply(mesh, key, value.clone(), meta, WriteKind::Store, now)
        {
            self.pass_on(mesh, to, key, &value, &version, now);
        }
    }

    /// A version from an rs2p node: kept when it supersedes ours, and then
    /// passed on ([`Replica::pass_on`]).
    fn merge_transfer(
        &mut self,
        mesh: &mut Mesh,
        to: &PassOn,
        key: Vec<u8>,
        value: Value,
        version: Version,
        now: Now,
    ) {
        let changed = self
            .lock()
            .merge(&key, &value, &version, self.leasing, now.unix);
        if changed == Changed::Nothing {
            return;
        }
        self.pass_on(mesh, to, &key, &value, &version, now);
        let since = version.since;
        Self::announce(mesh, key, changed, value, version.meta, since);
    }

    /// A version that came from `from` by state transfer or merge changed
    /// our dictionary: it is passed on, so that what one side of a bridge
    /// held before it met us reaches the other side too, and a healed
    /// partition converges even without direct links.
    ///
    /// - To rs2p peers along the broadcast tree (every rs2p peer outside
    ///   it is reconciled with in time), at once, without a copy per link.
    ///   The item is encoded only when it goes somewhere: a node joining a
    ///   mesh through one peer merges its whole dictionary this way.
    /// - To py2p and js2p peers as a state transfer would bring it (they
    ///   keep what they hold, as in their own transfers), paced like one:
    ///   the key joins the queue of that peer's transfer and is sent as it
    ///   is then. Without this, a js2p peer linked before a py2p peer
    ///   joined with keys of its own got them only at its next
    ///   reconnection. Deletes are not passed on to them: their transfers
    ///   carry none.
    fn pass_on(
        &mut self,
        mesh: &mut Mesh,
        to: &PassOn,
        key: &[u8],
        value: &Value,
        version: &Version,
        now: Now,
    ) {
        if !to.tree.is_empty() {
            let item = [TransferItem::new(
                key,
                &msgpack::encode(value),
                &version.meta.owner,
                version.meta.timestamp,
                Some(version.since),
            )];
            for &conn in &to.tree {
                send_transfer(mesh, conn, &item, now);
            }
        }
        if version.deleted || to.references.is_empty() {
            return;
        }
        // A queue never holds more keys than twice the dictionary (and a
        // batch): past that the peer has stopped reading for long, and what
        // does not fit waits for its next state transfer, as it would
        // between two py2p or js2p nodes.
        let cap = 2 * self.lock().len() + TRANSFER_BATCH;
        for &conn in &to.references {
            match self.transfers.iter_mut().find(|t| t.conn == conn) {
                Some(job) => job.extend_capped([Box::from(key)], cap),
                None => self.transfers.push(Transfer {
                    conn,
                    rs2p: false,
                    keys: vec![Box::from(key)],
                    next: 0,
                }),
            }
        }
    }
}

/// Bytes a state-transfer store adds to its key, value and two copies of
/// the node id (checksum, headers, flags, times).
const STORE_OVERHEAD: usize = 96;

/// One set of limits for every local write: a value is refused, before
/// anything is written, when a peer or the store could not read it back —
/// more than `max_depth` levels deep ([`Value::height`]: the decoder takes
/// the message array as level 0 and values sit at level 1, so a value of
/// exactly `max_depth` levels is what a peer accepts from the network
/// too), or in a message larger than `max_frame`.
fn check_value(mesh: &Mesh, key: &[u8], value: &Value) -> Result<()> {
    let limits = &mesh.settings().limits;
    let max_depth = limits.max_depth;
    let depth = value.height();
    if depth > max_depth {
        return Err(Error::ValueTooDeep {
            key: key_text(key),
            depth,
            max: max_depth,
        });
    }
    let size = msgpack::encode(value).len() + key.len() + 2 * mesh.id().len() + STORE_OVERHEAD;
    let max = limits.max_frame.min(limits.max_decompressed);
    if size > max {
        return Err(Error::ValueTooLarge {
            key: key_text(key),
            size,
            max,
        });
    }
    Ok(())
}
