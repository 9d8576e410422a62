//! The dictionary ([`Dict`]): entries, tombstones, and the write and merge
//! rules applied to them. The entries' storage is `Table`
//! (`proto/table.rs`).

use super::ordered::{HashKeys, Keyed, Ordered};
pub(crate) use super::table::{EntryRef, Table, Times};
use crate::proto::sync::{supersedes, write_allowed, Meta, Refused, Version, WriteKind};
use crate::value::Value;
use crate::wire::msgpack;

/// A deleted key: who deleted it, when, and since when they held the lease.
pub(crate) struct Tomb {
    pub key: Box<[u8]>,
    pub meta: Meta,
    pub since: i64,
}

impl Tomb {
    /// The tombstone's hash for reconciliation (its value is nil).
    pub fn hash(&self) -> u64 {
        item_hash(
            &self.key,
            NIL,
            &self.meta.owner,
            self.meta.timestamp,
            self.since,
        )
    }
}

/// The msgpack encoding of nil: a tombstone's value.
pub(crate) const NIL: &[u8] = &[0xc0];

/// A 64-bit hash of one version of a key — key, value encoding, owner,
/// time, lease start — the same on every rs2p node (reconciliation compares
/// them). Each part is length-prefixed, so no two versions share an input.
pub(crate) fn item_hash(key: &[u8], value: &[u8], owner: &[u8], timestamp: i64, since: i64) -> u64 {
    let mut h = Hasher64::default();
    h.part(key);
    h.part(value);
    h.part(owner);
    h.part(&timestamp.to_le_bytes());
    h.part(&since.to_le_bytes());
    h.finish()
}

/// Where a key sits in the space reconciliation splits into ranges.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    let mut h = Hasher64::default();
    h.part(key);
    h.finish()
}

/// A small, fully specified 64-bit hash (8-byte words mixed by
/// multiplication, murmur3's finaliser at the end): nodes of every version
/// and platform must agree on it, which `std`'s hashers do not promise.
#[derive(Default)]
struct Hasher64 {
    h: u64,
}

impl Hasher64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::K).rotate_left(31);
    }

    fn part(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
    }

    fn finish(&self) -> u64 {
        let mut x = self.h;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

impl Keyed<()> for Tomb {
    fn key(&self, _: &()) -> &[u8] {
        &self.key
    }
}

/// Tombstones kept at most; the oldest are forgotten first.
pub const MAX_TOMBSTONES: usize = 100_000;

/// How long a tombstone is kept: a partition healing later than this may
/// bring a deleted key back.
pub const TOMBSTONE_SECS: i64 = 24 * 3600;

/// Keys a peer's hint ([`Dict::reserve`]) makes room for, at most: a
/// hostile hint costs at most the index's control bytes (8 MiB) and
/// address space the index and entries fill only as keys arrive.
pub const MAX_RESERVE: usize = 1 << 22;

/// What a write changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Nothing (a delete of a missing key, a version that lost).
    Nothing,
    /// The key now holds the value.
    Set,
    /// The key was deleted.
    Deleted,
}

/// The replicated dictionary: entries in insertion order (as a Python dict
/// iterates), and the tombstones of deleted keys, which rs2p nodes exchange
/// so a delete made during a partition stays deleted.
///
/// ```
/// use rs2p::proto::dict::{Changed, Dict};
/// use rs2p::proto::sync::{Meta, WriteKind};
/// use rs2p::Value;
/// let mut d = Dict::default();
/// let a = Meta { owner: b"A".to_vec(), timestamp: 100 };
/// let b = Meta { owner: b"B".to_vec(), timestamp: 101 };
/// assert_eq!(d.apply(b"k", &Value::from(1), &a, WriteKind::Store, true, 100), Ok((Changed::Set, 100)));
/// assert!(d.apply(b"k", &Value::from(2), &b, WriteKind::Store, true, 101).is_err()); // A's lease
/// assert_eq!(d.get(b"k"), Some(Value::from(1)));
/// ```
#[derive(Default)]
pub struct Dict {
    pub(crate) map: Table,
    pub(crate) tombs: Ordered<Tomb>,
}

impl Dict {
    /// Hashes the keys of entries and tombstones under `keys` from now on
    /// (`Node::new` draws them from its seed: see `HashKeys`).
    pub(crate) fn rekey(&mut self, keys: HashKeys) {
        self.map.rekey(keys);
        self.tombs.rekey(keys, &());
    }

    /// The value of a key.
    pub fn get(&self, key: &[u8]) -> Option<Value> {
        self.map.get(key).map(|e| e.value())
    }

    /// Owner and time of a key's value.
    pub fn meta(&self, key: &[u8]) -> Option<Meta> {
        self.map.get(key).map(|e| e.meta())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The keys, in insertion order (the values are not decoded).
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.map.keys()
    }

    /// Makes room for `additional` more keys at once: a peer's hint that
    /// that many new keys follow (a node joining a mesh), so the index is
    /// not grown step by step while they arrive. The room made, hint after
    /// hint, is at most [`MAX_RESERVE`] keys.
    pub fn reserve(&mut self, additional: u64) {
        let len = self.map.len();
        let room = MAX_RESERVE.saturating_sub(len);
        let additional = usize::try_from(additional).unwrap_or(usize::MAX).min(room);
        if additional > 0 {
            self.map.reserve(additional);
        }
    }

    /// Number of tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombs.len()
    }

    /// Every entry with its version (values, owners, times, lease starts),
    /// in insertion order.
    pub fn versions(&self) -> impl Iterator<Item = (&[u8], Value, Version)> {
        self.map.iter().map(|e| {
            (
                e.key(),
                e.value(),
                Version {
                    meta: e.meta(),
                    since: e.since(),
                    deleted: false,
                },
            )
        })
    }

    /// The version of a key held here: its value's, or its tombstone's.
    pub fn version(&self, key: &[u8]) -> Option<Version> {
        if let Some(e) = self.map.get(key) {
            return Some(Version {
                meta: e.meta(),
                since: e.since(),
                deleted: false,
            });
        }
        self.tombs.get(key, &()).map(|t| Version {
            meta: t.meta.clone(),
            since: t.since,
            deleted: true,
        })
    }

    /// Loads an entry (or, with `None`, a tombstone) as a store kept it.
    pub fn load(&mut self, key: &[u8], value: Option<&Value>, meta: Meta, since: i64) {
        match value {
            Some(v) => self.put(key, v, &meta, since),
            None => self.entomb(key, meta, since),
        }
    }

    /// Stores a value with its version.
    fn put(&mut self, key: &[u8], value: &Value, meta: &Meta, since: i64) {
        let times = Times {
            timestamp: meta.timestamp,
            since,
        };
        self.map.insert(key, value, &meta.owner, times);
    }

    /// Adds a tombstone (last in the order).
    fn entomb(&mut self, key: &[u8], meta: Meta, since: i64) {
        let tomb = Tomb {
            key: key.into(),
            meta,
            since,
        };
        self.tombs.insert(tomb, &());
    }

    fn bury(&mut self, key: &[u8], meta: Meta, since: i64, now: i64) {
        // A newer delete goes to the end: tombstones stay in time order.
        self.tombs.remove(key, &());
        self.entomb(key, meta, since);
        while self.tombs.len() > MAX_TOMBSTONES
            || self
                .tombs
                .first()
                .is_some_and(|t| t.meta.timestamp < now.saturating_sub(TOMBSTONE_SECS))
        {
            self.tombs.pop_first(&());
        }
    }

    /// Applies a live write (a store, a delete — a store of nil — or a
    /// merged delta) under the references' lease rule. Returns what changed
    /// and the lease start of the version now held.
    pub fn apply(
        &mut self,
        key: &[u8],
        value: &Value,
        meta: &Meta,
        kind: WriteKind,
        leasing: bool,
        now: i64,
    ) -> Result<(Changed, i64), Refused> {
        let current = self.map.get(key);
        write_allowed(
            current.map(|e| (e.owner(), e.timestamp())),
            meta,
            kind,
            leasing,
            now,
        )?;
        let since = match current {
            Some(e) if e.owner() == meta.owner.as_slice() => e.since(),
            _ => meta.timestamp,
        };
        let changed = if value.is_nil() && kind == WriteKind::Store {
            if self.map.remove(key) {
                self.bury(key, meta.clone(), since, now);
                Changed::Deleted
            } else {
                Changed::Nothing
            }
        } else {
            self.tombs.remove(key, &());
            self.put(key, value, meta, since);
            Changed::Set
        };
        Ok((changed, since))
    }

    /// Applies a version received from an rs2p node (a state transfer or a
    /// reconciliation) when it supersedes ours (see [`supersedes`]).
    pub fn merge(
        &mut self,
        key: &[u8],
        value: &Value,
        version: &Version,
        leasing: bool,
        now: i64,
    ) -> Changed {
        if let Some(cur) = self.version(key) {
            let wins = supersedes(&cur, version, leasing)
                || (cur == *version
                    && !version.deleted
                    && self.map.get(key).is_some_and(|e| {
                        // Two writes by one owner in one second: keep the
                        // larger encoding everywhere, so both ends agree.
                        msgpack::encode(value).as_slice() > e.value_bytes()
                    }));
            if !wins {
                return Changed::Nothing;
            }
        } else if version.deleted {
            // A tombstone for a key we never had: remember it.
            self.bury(key, version.meta.clone(), version.since, now);
            return Changed::Nothing;
        }
        if version.deleted {
            let had = self.map.remove(key);
            self.bury(key, version.meta.clone(), version.since, now);
            if had {
                Changed::Deleted
            } else {
                Changed::Nothing
            }
        } else {
            self.tombs.remove(key, &());
            self.put(key, value, &version.meta, version.since);
            Changed::Set
        }
    }

    /// The references' rule for a state transfer from py2p or js2p: it
    /// never overwrites a value held (nor, here, brings back a key deleted
    /// after that write).
    pub(crate) fn reference_transfer_blocked(&self, key: &[u8], timestamp: i64) -> bool {
        self.map.get(key).is_some_and(|e| e.value().is_truthy())
            || self
                .tombs
                .get(key, &())
                .is_some_and(|t| t.meta.timestamp >= timestamp)
    }
}
