//! The dictionary ([`Dict`]): entries, tombstones, and the write and merge
//! rules applied to them. Its storage is kept small: one heap allocation
//! per key holding the key, its times and its value's msgpack encoding,
//! and a 24-byte entry per key in an insertion-ordered table (`Ordered`).
//!
//! A [`Value`] tree for a 100-byte binary costs a 32-byte enum plus a heap
//! block, and a boxed key another block of at least 32 bytes; packing key and
//! encoded value together roughly halves the memory of a dictionary of small
//! values (issue 7's 100,000-key figure). Reads decode the value, which for
//! the small values this store is meant for costs about as much as the clone
//! a read made before. The write time and lease start go into the same
//! block (5-6 bytes for times of this century, which fit in the rounding
//! of the allocation), not beside the pointer: the entry shrank from 48 to
//! 24 bytes, 24 MB for a million keys.

use std::collections::VecDeque;
use std::sync::Arc;

use super::ordered::{HashKeys, Keyed, Ordered};
use crate::proto::sync::{supersedes, write_allowed, Meta, Refused, Version, WriteKind};
use crate::value::Value;
use crate::wire::{msgpack, Limits};

/// Appends `n` as LEB128 (7 bits a byte, low first).
fn put_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Reads a LEB128 number at `*at`, moving `*at` past it. Only reads what
/// [`put_varint`] wrote into this table's own records; a malformed one
/// (which cannot happen) reads as the bits seen so far.
fn get_varint(buf: &[u8], at: &mut usize) -> u64 {
    let mut n = 0u64;
    let mut shift = 0u32;
    while let Some(&b) = buf.get(*at) {
        *at += 1;
        if shift < 64 {
            n |= u64::from(b & 0x7f) << shift;
        }
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    n
}

/// A key's write time and lease start, as read back from its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Times {
    timestamp: i64,
    since: i64,
}

/// Where the parts of a record are.
struct Layout {
    times: Times,
    key: std::ops::Range<usize>,
}

/// A key, its times and its value's msgpack encoding in one allocation:
///
/// ```text
/// varint(key_len << 1 | wide)
/// wide = 0: timestamp as u32 LE, varint(timestamp - since)
/// wide = 1: timestamp as i64 LE, since as i64 LE
/// key || value
/// ```
///
/// Times are unix seconds: every write of this century is narrow (a key
/// of up to 63 bytes then has 6 bytes of header where a fixed layout
/// needed 20). Wide ones (a peer's clock far off, a lease start after the
/// write) are kept exactly.
struct Record(Box<[u8]>);

impl Record {
    fn new(key: &[u8], value: &Value, times: Times) -> Record {
        let narrow = u32::try_from(times.timestamp).ok().zip(
            times
                .timestamp
                .checked_sub(times.since)
                .and_then(|d| u64::try_from(d).ok()),
        );
        let mut buf = Vec::with_capacity(24 + key.len() + 16);
        put_varint(
            &mut buf,
            (key.len() as u64) << 1 | u64::from(narrow.is_none()),
        );
        match narrow {
            Some((timestamp, back)) => {
                buf.extend_from_slice(&timestamp.to_le_bytes());
                put_varint(&mut buf, back);
            }
            None => {
                buf.extend_from_slice(&times.timestamp.to_le_bytes());
                buf.extend_from_slice(&times.since.to_le_bytes());
            }
        }
        buf.extend_from_slice(key);
        msgpack::encode_into(value, &mut buf);
        Record(buf.into_boxed_slice())
    }

    fn layout(&self) -> Layout {
        let b = &self.0;
        let mut at = 0;
        let head = get_varint(b, &mut at);
        let key_len = usize::try_from(head >> 1).unwrap_or(usize::MAX);
        let word = |at: usize, n: usize| -> [u8; 8] {
            let mut w = [0u8; 8];
            if let Some(s) = b.get(at..at + n) {
                w[..n].copy_from_slice(s);
            }
            w
        };
        let times = if head & 1 == 0 {
            let w = word(at, 4);
            let timestamp = i64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            at += 4;
            let back = get_varint(b, &mut at);
            Times {
                timestamp,
                // Written as timestamp - since >= 0, so this is exact.
                since: timestamp.wrapping_sub(back as i64),
            }
        } else {
            let t = Times {
                timestamp: i64::from_le_bytes(word(at, 8)),
                since: i64::from_le_bytes(word(at + 8, 8)),
            };
            at += 16;
            t
        };
        let end = at.saturating_add(key_len).min(b.len());
        Layout {
            times,
            key: at.min(end)..end,
        }
    }

    fn key(&self) -> &[u8] {
        &self.0[self.layout().key]
    }

    fn value_bytes(&self) -> &[u8] {
        &self.0[self.layout().key.end..]
    }

    fn times(&self) -> Times {
        self.layout().times
    }
}

/// A writer's id, shared between the entries it wrote: a thin pointer, 8
/// bytes in every entry where an `Arc<[u8]>` took 16 (a million entries:
/// 8 MB), for one more indirection when the bytes are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner(Arc<Box<[u8]>>);

impl std::ops::Deref for Owner {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Owner {
    fn from(id: &[u8]) -> Owner {
        Owner(Arc::new(id.into()))
    }
}

/// Who wrote a key's value, when, and since when they have held it: what
/// a write stores beside the value.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    /// The writer's id (shared between the entries it wrote).
    pub owner: Owner,
    /// The write's time.
    pub timestamp: i64,
    /// When the owner's lease began (for partition healing).
    pub since: i64,
}

/// Limits for decoding what this table encoded itself: no depth or element
/// limit beyond what the value had when it was stored (a local write may be
/// deeper than the network limits allow).
const STORED: Limits = Limits {
    max_frame: usize::MAX,
    max_decompressed: usize::MAX,
    max_depth: usize::MAX,
    max_elements: usize::MAX,
};

/// One key: its record (key, times, value) and its writer. 24 bytes.
pub(crate) struct Entry {
    record: Record,
    owner: Owner,
}

impl Keyed for Entry {
    fn key(&self) -> &[u8] {
        self.record.key()
    }
}

impl Entry {
    pub fn key(&self) -> &[u8] {
        self.record.key()
    }

    /// The value's msgpack encoding.
    pub fn value_bytes(&self) -> &[u8] {
        self.record.value_bytes()
    }

    /// The value, decoded.
    pub fn value(&self) -> Value {
        // The bytes are this table's own encoding of a Value, and encoding
        // and decoding round-trip every Value (tests/codec_props.rs); nil
        // stands in should that ever break rather than a panic.
        let v = msgpack::decode(self.value_bytes(), &STORED);
        debug_assert!(v.is_ok(), "stored value does not decode: {v:?}");
        v.unwrap_or(Value::Nil)
    }

    /// Who wrote the value.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// When the value was written.
    pub fn timestamp(&self) -> i64 {
        self.record.times().timestamp
    }

    /// When the owner's lease on the key began.
    pub fn since(&self) -> i64 {
        self.record.times().since
    }

    pub fn meta(&self) -> Meta {
        Meta {
            owner: self.owner.to_vec(),
            timestamp: self.timestamp(),
        }
    }

    /// The version's hash for reconciliation ([`item_hash`]). Computed
    /// when asked (a scan of the dictionary per reconciliation message)
    /// rather than kept: 8 bytes a key.
    pub fn item_hash(&self) -> u64 {
        let Layout { times, key } = self.record.layout();
        let b = &self.record.0;
        item_hash(
            &b[key.clone()],
            &b[key.end..],
            &self.owner,
            times.timestamp,
            times.since,
        )
    }
}

/// Keys in insertion order, each with its value and [`Slot`].
#[derive(Default)]
pub(crate) struct Table {
    map: Ordered<Entry>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    // Used by the tokio shell (feature `net`).
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Sets a key; a key already present keeps its place in the order.
    pub fn insert(&mut self, key: &[u8], value: &Value, slot: Slot) {
        let times = Times {
            timestamp: slot.timestamp,
            since: slot.since,
        };
        self.map.insert(Entry {
            record: Record::new(key, value, times),
            owner: slot.owner,
        });
    }

    /// Removes a key, keeping the order of the others; true if it was there.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.map.remove(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.map.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.map.iter().map(Entry::key)
    }

    // Used by the tokio shell (feature `net`).
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    /// The most recently inserted entry.
    pub fn last(&self) -> Option<&Entry> {
        self.map.last()
    }
}

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

impl Keyed for Tomb {
    fn key(&self) -> &[u8] {
        &self.key
    }
}

/// Tombstones kept at most; the oldest are forgotten first.
pub const MAX_TOMBSTONES: usize = 100_000;
/// How long a tombstone is kept: a partition healing later than this may
/// bring a deleted key back.
pub const TOMBSTONE_SECS: i64 = 24 * 3600;
/// Owner ids seen last, shared by the entries they wrote.
const OWNER_CACHE: usize = 16;

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
    owners: VecDeque<Owner>,
    pub(crate) tombs: Ordered<Tomb>,
}

impl Dict {
    /// Hashes the keys of entries and tombstones under `keys` from now on
    /// (`Node::new` draws them from its seed: see `HashKeys`).
    pub(crate) fn rekey(&mut self, keys: HashKeys) {
        self.map.map.rekey(keys);
        self.tombs.rekey(keys);
    }

    /// The shared copy of an owner id.
    fn owner(&mut self, id: &[u8]) -> Owner {
        if let Some(o) = self.owners.iter().find(|o| ***o == *id) {
            return o.clone();
        }
        let o = Owner::from(id);
        if self.owners.len() >= OWNER_CACHE {
            self.owners.pop_front();
        }
        self.owners.push_back(o.clone());
        o
    }

    fn slot(&mut self, meta: &Meta, since: i64) -> Slot {
        Slot {
            owner: self.owner(&meta.owner),
            timestamp: meta.timestamp,
            since,
        }
    }

    /// The value of a key.
    pub fn get(&self, key: &[u8]) -> Option<Value> {
        self.map.get(key).map(Entry::value)
    }

    /// Owner and time of a key's value.
    pub fn meta(&self, key: &[u8]) -> Option<Meta> {
        self.map.get(key).map(Entry::meta)
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
        self.tombs.get(key).map(|t| Version {
            meta: t.meta.clone(),
            since: t.since,
            deleted: true,
        })
    }

    /// Loads an entry (or, with `None`, a tombstone) as a store kept it.
    pub fn load(&mut self, key: &[u8], value: Option<&Value>, meta: Meta, since: i64) {
        match value {
            Some(v) => {
                let slot = self.slot(&meta, since);
                self.map.insert(key, v, slot);
            }
            None => {
                self.tombs.insert(Tomb {
                    key: key.into(),
                    meta,
                    since,
                });
            }
        }
    }

    fn bury(&mut self, key: &[u8], meta: Meta, since: i64, now: i64) {
        // A newer delete goes to the end: tombstones stay in time order.
        self.tombs.remove(key);
        self.tombs.insert(Tomb {
            key: key.into(),
            meta,
            since,
        });
        while self.tombs.len() > MAX_TOMBSTONES
            || self
                .tombs
                .first()
                .is_some_and(|t| t.meta.timestamp < now.saturating_sub(TOMBSTONE_SECS))
        {
            self.tombs.pop_first();
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
            current.map(|e| (&**e.owner(), e.timestamp())),
            meta,
            kind,
            leasing,
            now,
        )?;
        let since = match current {
            Some(e) if **e.owner() == *meta.owner => e.since(),
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
            self.tombs.remove(key);
            let slot = self.slot(meta, since);
            self.map.insert(key, value, slot);
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
            self.tombs.remove(key);
            let slot = self.slot(&version.meta, version.since);
            self.map.insert(key, value, slot);
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
                .get(key)
                .is_some_and(|t| t.meta.timestamp >= timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(ts: i64) -> Slot {
        Slot {
            owner: Owner::from(&b"owner"[..]),
            timestamp: ts,
            since: ts,
        }
    }

    #[test]
    fn keeps_keys_values_and_order() {
        let mut t = Table::default();
        let values = [
            Value::Bin(vec![7; 100]),
            Value::from("测试"),
            Value::Nil,
            Value::Array(vec![1.into(), Value::F32(1.5), Value::from(-3)]),
            Value::Map(vec![(Value::from("k"), Value::Bool(true))]),
        ];
        for (i, v) in values.iter().enumerate() {
            t.insert(format!("key{i}").as_bytes(), v, slot(i as i64));
        }
        t.insert(b"", &Value::from(u64::MAX), slot(9));
        assert_eq!(t.len(), 6);
        for (i, v) in values.iter().enumerate() {
            let e = t.get(format!("key{i}").as_bytes()).unwrap();
            assert_eq!(&e.value(), v);
            assert_eq!(e.timestamp(), i as i64);
            assert_eq!(e.meta().owner, b"owner");
        }
        assert_eq!(t.get(b"").unwrap().value(), Value::from(u64::MAX));
        // Overwriting keeps the place; removing keeps the others' order.
        t.insert(b"key1", &Value::from(1), slot(10));
        assert!(t.remove(b"key0"));
        assert!(!t.remove(b"key0"));
        let keys: Vec<&[u8]> = t.keys().collect();
        assert_eq!(
            keys,
            [&b"key1"[..], b"key2", b"key3", b"key4", b""].to_vec()
        );
        assert_eq!(t.get(b"key1").unwrap().value(), Value::from(1));
        assert_eq!(t.get(b"key1").unwrap().timestamp(), 10);
        assert_eq!(t.last().unwrap().key(), b"");
        assert!(t.contains_key(b"key4") && !t.contains_key(b"key"));
    }

    #[test]
    fn an_entry_is_24_bytes() {
        // The figure docs/performance.md's memory arithmetic relies on.
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 24);
    }

    #[test]
    fn times_of_every_range_round_trip() {
        let edges = [
            0,
            1,
            1_700_000_000,
            i64::from(u32::MAX) - 1,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            -1,
            i64::MIN,
            i64::MAX,
        ];
        let mut t = Table::default();
        for (i, &timestamp) in edges.iter().enumerate() {
            for (j, &since) in edges.iter().enumerate() {
                // Keys of 0 to 200 bytes: the header's key length takes
                // one or two bytes.
                let key = vec![b'k'; (i * edges.len() + j) * 3];
                let slot = Slot {
                    owner: Owner::from(&b"o"[..]),
                    timestamp,
                    since,
                };
                let v = Value::Bin(key.clone());
                t.insert(&key, &v, slot);
                let e = t.get(&key).unwrap();
                assert_eq!(
                    (e.key(), e.timestamp(), e.since(), e.value()),
                    (&key[..], timestamp, since, v)
                );
                assert_eq!(
                    e.item_hash(),
                    item_hash(&key, e.value_bytes(), b"o", timestamp, since)
                );
            }
        }
    }

    #[test]
    fn a_record_of_this_century_has_a_six_byte_header() {
        let times = Times {
            timestamp: 1_800_000_000,
            since: 1_800_000_000 - 100,
        };
        let r = Record::new(b"key-0001", &Value::Bin(vec![0; 100]), times);
        // 1 (key length) + 4 (time) + 1 (lease start) + 8 + 102.
        assert_eq!(r.0.len(), 6 + 8 + 102);
        assert_eq!(r.times(), times);
    }

    #[test]
    fn deeper_than_the_network_limit_round_trips() {
        let mut v = Value::from(1);
        for _ in 0..200 {
            v = Value::Array(vec![v]);
        }
        let mut t = Table::default();
        t.insert(b"deep", &v, slot(1));
        assert_eq!(t.get(b"deep").unwrap().value(), v);
    }

    #[test]
    fn many_keys_are_all_found() {
        let mut t = Table::default();
        for i in 0..10_000u32 {
            t.insert(&i.to_be_bytes(), &Value::from(i), slot(0));
        }
        for i in 0..10_000u32 {
            assert_eq!(t.get(&i.to_be_bytes()).unwrap().value(), Value::from(i));
        }
        assert!(t.get(&10_000u32.to_be_bytes()).is_none());
    }
}
