//! The dictionary's storage ([`Table`]): keys in insertion order, each
//! with its value's msgpack encoding, its writer, its write time and its
//! lease start, in about 30 bytes a key beyond the key and value
//! themselves.
//!
//! - **Records** (key, times, encoded value) are appended to chunks of up
//!   to 1 MiB (`Records`), not allocated one by one: a 110-byte key and
//!   value took a 128-byte heap block, and a 16-byte pointer to it; here
//!   it takes 117 bytes and an 8-byte position. A chunk left less than
//!   half full by overwrites and deletes has its live records moved to the
//!   chunk being filled, so the arena holds at most twice what is live
//!   (plus the chunk being filled).
//! - **Writers** are interned (`Owners`): an entry holds a 4-byte number
//!   for its owner id, counted, and dropped with its last key.
//! - **Entries** are 12 bytes (record position, owner number), in the
//!   insertion-ordered [`Ordered`], whose index holds 4-byte positions.
//!
//! Reads decode the value, which for the small values this store is meant
//! for costs about what the clone of a [`Value`] a read made before cost.

use std::hash::BuildHasher;
use std::num::NonZeroU32;

use hashbrown::HashTable;

use super::dict::item_hash;
use super::ordered::{HashKeys, Keyed, Ordered};
use crate::proto::sync::Meta;
use crate::value::Value;
use crate::wire::{msgpack, Limits};

/// Emits `n` as LEB128 (7 bits a byte, low first), a byte at a time.
fn varint(mut n: u64, mut emit: impl FnMut(u8)) {
    while n >= 0x80 {
        emit((n as u8) | 0x80);
        n >>= 7;
    }
    emit(n as u8);
}

/// Appends `n` as LEB128.
fn put_varint(buf: &mut Vec<u8>, n: u64) {
    varint(n, |b| buf.push(b));
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

/// A key's write time and lease start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Times {
    pub timestamp: i64,
    pub since: i64,
}

/// Flag bits of a record's head (below the key length).
const DEAD: u64 = 1;
const WIDE: u64 = 2;
const FLAG_BITS: u32 = 2;

/// A record in a chunk:
///
/// ```text
/// varint(length of the rest)
/// varint(key_len << 2 | wide << 1 | dead)
/// wide = 0: timestamp as u32 LE, varint(timestamp - since)
/// wide = 1: timestamp as i64 LE, since as i64 LE
/// key || value (msgpack)
/// ```
///
/// Times are unix seconds: every write of this century is narrow (a key
/// of up to 31 bytes then has 7 bytes of header). Wide ones (a peer's
/// clock far off, a lease start after the write) are kept exactly. `dead`
/// is set in place when the record is freed (the head's first byte holds
/// it), so that moving a chunk's records skips the dead ones.
#[derive(Clone, Copy)]
struct Rec<'a> {
    /// The record from its head on (the length prefix excluded).
    body: &'a [u8],
    head: u64,
    times: Times,
    /// Where the key starts in `body`.
    key_at: usize,
}

impl<'a> Rec<'a> {
    /// Parses the record at the start of `bytes`; returns it and its whole
    /// length (prefix included).
    fn parse(bytes: &'a [u8]) -> (Rec<'a>, usize) {
        let mut at = 0;
        let len = usize::try_from(get_varint(bytes, &mut at)).unwrap_or(usize::MAX);
        let end = at.saturating_add(len).min(bytes.len());
        let body = &bytes[at..end];
        let mut at = 0;
        let head = get_varint(body, &mut at);
        let word = |at: usize, n: usize| -> [u8; 8] {
            let mut w = [0u8; 8];
            if let Some(s) = body.get(at..at + n) {
                w[..n].copy_from_slice(s);
            }
            w
        };
        let times = if head & WIDE == 0 {
            let w = word(at, 4);
            let timestamp = i64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            at += 4;
            let back = get_varint(body, &mut at);
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
        let rec = Rec {
            body,
            head,
            times,
            key_at: at.min(body.len()),
        };
        (rec, end)
    }

    fn key_end(&self) -> usize {
        let key_len = usize::try_from(self.head >> FLAG_BITS).unwrap_or(usize::MAX);
        self.key_at.saturating_add(key_len).min(self.body.len())
    }

    fn key(&self) -> &'a [u8] {
        &self.body[self.key_at..self.key_end()]
    }

    fn value_bytes(&self) -> &'a [u8] {
        &self.body[self.key_end()..]
    }

    fn dead(&self) -> bool {
        self.head & DEAD != 0
    }
}

/// A record's head (see [`Rec`]): at most 10 + 16 bytes.
struct Head {
    bytes: [u8; 32],
    len: usize,
}

impl Head {
    fn new(key_len: usize, times: Times) -> Head {
        let narrow = u32::try_from(times.timestamp).ok().zip(
            times
                .timestamp
                .checked_sub(times.since)
                .and_then(|d| u64::try_from(d).ok()),
        );
        let mut h = Head {
            bytes: [0u8; 32],
            len: 0,
        };
        let wide = if narrow.is_some() { 0 } else { WIDE };
        h.varint((key_len as u64) << FLAG_BITS | wide);
        match narrow {
            Some((timestamp, back)) => {
                h.put(&timestamp.to_le_bytes());
                h.varint(back);
            }
            None => {
                h.put(&times.timestamp.to_le_bytes());
                h.put(&times.since.to_le_bytes());
            }
        }
        h
    }

    fn put(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    fn varint(&mut self, n: u64) {
        varint(n, |b| self.put(&[b]));
    }
}

/// Appends the record of `key` (whose head is `head`) and an encoded
/// value to `buf`.
fn encode_record(buf: &mut Vec<u8>, head: &Head, key: &[u8], value: &[u8]) {
    put_varint(buf, (head.len + key.len() + value.len()) as u64);
    buf.extend_from_slice(&head.bytes[..head.len]);
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
}

/// Bytes of a LEB128 number.
fn varint_len(n: u64) -> usize {
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Where a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct At {
    chunk: u32,
    offset: u32,
}

/// The largest chunk; records of at least an eighth of it get a chunk of
/// their own.
const CHUNK_MAX: usize = 1 << 20;
/// The first chunk (a small dictionary stays small).
const CHUNK_MIN: usize = 4 << 10;

struct Chunk {
    bytes: Vec<u8>,
    /// Bytes of live records.
    live: usize,
}

/// The record arena.
#[derive(Default)]
struct Records {
    /// Chunks by number; a released one is empty and listed in `spare`.
    chunks: Vec<Chunk>,
    spare: Vec<u32>,
    /// The chunk being filled.
    tail: Option<u32>,
    /// Bytes of live records in all chunks.
    live: usize,
    /// A value's encoding, reused between writes.
    scratch: Vec<u8>,
}

impl Records {
    fn rec(&self, at: At) -> Rec<'_> {
        let bytes = self
            .chunks
            .get(at.chunk as usize)
            .and_then(|c| c.bytes.get(at.offset as usize..))
            .unwrap_or_default();
        Rec::parse(bytes).0
    }

    /// A chunk with room for `len` more bytes: the tail, or a new one.
    /// Returns it, and the old tail when it was retired for a new one.
    fn room(&mut self, len: usize) -> (u32, Option<u32>) {
        if let Some(t) = self.tail {
            let c = &self.chunks[t as usize];
            if c.bytes.capacity() - c.bytes.len() >= len {
                return (t, None);
            }
        }
        let size = if len >= CHUNK_MAX / 8 {
            len
        } else {
            // Grow with the dictionary: an eighth of what is live.
            (self.live / 8).clamp(CHUNK_MIN, CHUNK_MAX).max(len)
        };
        let chunk = Chunk {
            bytes: Vec::with_capacity(size),
            live: 0,
        };
        let n = match self.spare.pop() {
            Some(n) => {
                self.chunks[n as usize] = chunk;
                n
            }
            None => {
                // Chunk numbers stay far below u32::MAX: each holds at
                // least one record, and there are at most u32::MAX keys.
                let n = u32::try_from(self.chunks.len()).unwrap_or(u32::MAX);
                self.chunks.push(chunk);
                n
            }
        };
        if len >= CHUNK_MAX / 8 {
            // A chunk of its own: the tail stays.
            return (n, None);
        }
        let retired = self.tail.replace(n);
        (n, retired)
    }

    /// Appends a record of `len` bytes, which `write` puts at the end of
    /// the chunk it is given. Returns where it went, and a chunk retired
    /// from being the tail (emptied by the caller when under half live).
    fn append(&mut self, len: usize, write: impl FnOnce(&mut Vec<u8>)) -> (At, Option<u32>) {
        let (n, retired) = self.room(len);
        let c = &mut self.chunks[n as usize];
        // Chunks hold at most CHUNK_MAX bytes, or one record (whose length
        // fits a frame, far below 4 GiB).
        let offset = u32::try_from(c.bytes.len()).unwrap_or(u32::MAX);
        write(&mut c.bytes);
        debug_assert_eq!(c.bytes.len() - offset as usize, len);
        c.live += len;
        self.live += len;
        (At { chunk: n, offset }, retired)
    }

    /// Stores a record as it is (one moved out of a chunk being emptied).
    fn push(&mut self, record: &[u8]) -> (At, Option<u32>) {
        self.append(record.len(), |b| b.extend_from_slice(record))
    }

    /// Stores the record of a key, its times and its encoded value.
    fn push_new(&mut self, key: &[u8], times: Times, value: &[u8]) -> (At, Option<u32>) {
        let head = Head::new(key.len(), times);
        let rest = head.len + key.len() + value.len();
        let len = varint_len(rest as u64) + rest;
        self.append(len, |b| encode_record(b, &head, key, value))
    }

    /// Marks a record dead. Returns its chunk when that should be
    /// emptied: less than half of it live and not the tail.
    fn free(&mut self, at: At) -> Option<u32> {
        let c = self.chunks.get_mut(at.chunk as usize)?;
        let start = at.offset as usize;
        let (rec, len) = Rec::parse(c.bytes.get(start..)?);
        if rec.dead() {
            return None;
        }
        // The head's first byte holds the flags (LEB128 is low bits first);
        // it sits right after the length prefix.
        let head_at = start + len - rec.body.len();
        if let Some(b) = c.bytes.get_mut(head_at) {
            *b |= DEAD as u8;
        }
        c.live -= len;
        self.live -= len;
        self.underfull(at.chunk)
    }

    /// Whether chunk `n` should be emptied.
    fn underfull(&self, n: u32) -> Option<u32> {
        let c = &self.chunks[n as usize];
        (Some(n) != self.tail && c.live * 2 < c.bytes.len()).then_some(n)
    }

    /// Releases an emptied chunk.
    fn release(&mut self, n: u32) {
        if let Some(c) = self.chunks.get_mut(n as usize) {
            c.bytes = Vec::new();
            c.live = 0;
            self.spare.push(n);
        }
    }
}

/// A writer's number in [`Owners`] (its index plus one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OwnerId(NonZeroU32);

impl OwnerId {
    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// The writers' ids, each held once and counted by the entries holding
/// it.
#[derive(Default)]
struct Owners {
    /// Id and count by number; a count of 0 is a free number.
    ids: Vec<(Box<[u8]>, usize)>,
    free: Vec<OwnerId>,
    /// Numbers by id hash (with the table's secret hash keys).
    index: HashTable<OwnerId>,
    /// The last one interned: most writes come from a few writers.
    last: Option<OwnerId>,
}

impl Owners {
    fn get(&self, o: OwnerId) -> &[u8] {
        self.ids.get(o.index()).map(|e| &*e.0).unwrap_or_default()
    }

    /// The number of `id`, counted once more.
    fn intern(&mut self, id: &[u8], hasher: &HashKeys) -> OwnerId {
        let found = self.last.filter(|&o| self.get(o) == id).or_else(|| {
            let ids = &self.ids;
            self.index
                .find(hasher.hash_one(id), |o| &*ids[o.index()].0 == id)
                .copied()
        });
        let o = match found {
            Some(o) => o,
            None => {
                let o = match self.free.pop() {
                    Some(o) => {
                        self.ids[o.index()] = (id.into(), 0);
                        o
                    }
                    None => {
                        self.ids.push((id.into(), 0));
                        // At most one owner per key, and keys are counted
                        // in u32 positions.
                        let n = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
                        OwnerId(NonZeroU32::MIN.saturating_add(n - 1))
                    }
                };
                let ids = &self.ids;
                self.index.insert_unique(hasher.hash_one(id), o, |o| {
                    hasher.hash_one(&*ids[o.index()].0)
                });
                o
            }
        };
        self.ids[o.index()].1 += 1;
        self.last = Some(o);
        o
    }

    /// Counts one entry less for `o`; forgets it at none.
    fn release(&mut self, o: OwnerId, hasher: &HashKeys) {
        let Some(e) = self.ids.get_mut(o.index()) else {
            return;
        };
        e.1 = e.1.saturating_sub(1);
        if e.1 > 0 {
            return;
        }
        let id = std::mem::take(&mut e.0);
        if let Ok(found) = self.index.find_entry(hasher.hash_one(&*id), |&x| x == o) {
            found.remove();
        }
        self.free.push(o);
        if self.last == Some(o) {
            self.last = None;
        }
    }

    fn rekey(&mut self, hasher: &HashKeys) {
        let ids = &self.ids;
        let mut index = HashTable::with_capacity(self.index.len());
        for o in self.index.iter() {
            index.insert_unique(hasher.hash_one(&*ids[o.index()].0), *o, |o| {
                hasher.hash_one(&*ids[o.index()].0)
            });
        }
        self.index = index;
    }
}

/// One key: where its record is, and who wrote it. 12 bytes.
struct Entry {
    at: At,
    owner: OwnerId,
}

impl Keyed<Records> for Entry {
    fn key<'a>(&'a self, records: &'a Records) -> &'a [u8] {
        records.rec(self.at).key()
    }
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

/// A key held in a [`Table`], read in place.
#[derive(Clone, Copy)]
pub(crate) struct EntryRef<'a> {
    rec: Rec<'a>,
    owner: &'a [u8],
}

impl<'a> EntryRef<'a> {
    pub fn key(&self) -> &'a [u8] {
        self.rec.key()
    }

    /// The value's msgpack encoding.
    pub fn value_bytes(&self) -> &'a [u8] {
        self.rec.value_bytes()
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
    pub fn owner(&self) -> &'a [u8] {
        self.owner
    }

    /// When the value was written.
    pub fn timestamp(&self) -> i64 {
        self.rec.times.timestamp
    }

    /// When the owner's lease on the key began.
    pub fn since(&self) -> i64 {
        self.rec.times.since
    }

    pub fn meta(&self) -> Meta {
        Meta {
            owner: self.owner.to_vec(),
            timestamp: self.timestamp(),
        }
    }

    /// The version's hash for reconciliation ([`item_hash`]), computed
    /// when asked (a pass over the dictionary per reconciliation message)
    /// rather than kept: 8 bytes a key.
    pub fn item_hash(&self) -> u64 {
        item_hash(
            self.key(),
            self.value_bytes(),
            self.owner,
            self.timestamp(),
            self.since(),
        )
    }
}

/// Keys in insertion order, each with its value, writer and times.
#[derive(Default)]
pub(crate) struct Table {
    map: Ordered<Entry>,
    records: Records,
    owners: Owners,
    hasher: HashKeys,
}

impl Table {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    fn view(&self, e: &Entry) -> EntryRef<'_> {
        EntryRef {
            rec: self.records.rec(e.at),
            owner: self.owners.get(e.owner),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<EntryRef<'_>> {
        self.map.get(key, &self.records).map(|e| self.view(e))
    }

    // Used by the tokio shell (feature `net`).
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.map.contains_key(key, &self.records)
    }

    /// Sets a key; a key already present keeps its place in the order.
    pub fn insert(&mut self, key: &[u8], value: &Value, owner: &[u8], times: Times) {
        let mut value_bytes = std::mem::take(&mut self.records.scratch);
        value_bytes.clear();
        msgpack::encode_into(value, &mut value_bytes);
        let (at, retired) = self.records.push_new(key, times, &value_bytes);
        self.records.scratch = value_bytes;
        let owner = self.owners.intern(owner, &self.hasher);
        let entry = Entry { at, owner };
        if let Some(old) = self.map.insert(entry, &self.records) {
            if old.at == at {
                // Refused (u32::MAX slots): nothing was stored.
                self.owners.release(owner, &self.hasher);
                let _ = self.records.free(at);
            } else {
                self.drop_entry(&old);
            }
        }
        if let Some(n) = retired.and_then(|n| self.records.underfull(n)) {
            self.empty_chunk(n);
        }
    }

    /// Makes room for `additional` more keys (see [`Ordered::reserve`]).
    pub fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional, &self.records);
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Removes a key, keeping the order of the others; true if it was there.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key, &self.records) {
            Some(old) => {
                self.drop_entry(&old);
                true
            }
            None => false,
        }
    }

    /// Frees what an entry out of the map held.
    fn drop_entry(&mut self, old: &Entry) {
        self.owners.release(old.owner, &self.hasher);
        if let Some(n) = self.records.free(old.at) {
            self.empty_chunk(n);
        }
    }

    /// Moves the live records of chunk `n` to the tail and releases it
    /// (and so for any tail retired on the way that is under half live).
    fn empty_chunk(&mut self, n: u32) {
        let mut pending = vec![n];
        let mut record = Vec::new();
        while let Some(n) = pending.pop() {
            let mut offset = 0usize;
            while let Some(bytes) = self
                .records
                .chunks
                .get(n as usize)
                .and_then(|c| c.bytes.get(offset..))
                .filter(|b| !b.is_empty())
            {
                let (rec, len) = Rec::parse(bytes);
                let old = At {
                    chunk: n,
                    offset: offset as u32,
                };
                offset += len.max(1);
                if rec.dead() {
                    continue;
                }
                let key = rec.key().to_vec();
                record.clear();
                record.extend_from_slice(&bytes[..len]);
                let (at, retired) = self.records.push(&record);
                pending.extend(retired.and_then(|r| self.records.underfull(r)));
                // The entry points at the old copy until it is moved.
                if let Some(e) = self.map.get_mut(&key, &self.records) {
                    if e.at == old {
                        e.at = at;
                    }
                }
                // The copy left in chunk n no longer counts.
                self.records.live -= len;
            }
            self.records.release(n);
        }
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.map.iter().map(|e| self.view(e))
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().map(|e| e.key())
    }

    // Used by the tokio shell (feature `net`).
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    /// The most recently inserted entry.
    pub fn last(&self) -> Option<EntryRef<'_>> {
        self.map.last().map(|e| self.view(e))
    }

    /// Hashes keys and owner ids under `hasher` from now on.
    pub fn rekey(&mut self, hasher: HashKeys) {
        self.hasher = hasher;
        self.map.rekey(hasher, &self.records);
        self.owners.rekey(&self.hasher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ts: i64) -> Times {
        Times {
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
            t.insert(format!("key{i}").as_bytes(), v, b"owner", at(i as i64));
        }
        t.insert(b"", &Value::from(u64::MAX), b"owner", at(9));
        assert_eq!(t.len(), 6);
        for (i, v) in values.iter().enumerate() {
            let e = t.get(format!("key{i}").as_bytes()).unwrap();
            assert_eq!(&e.value(), v);
            assert_eq!(e.timestamp(), i as i64);
            assert_eq!(e.meta().owner, b"owner");
        }
        assert_eq!(t.get(b"").unwrap().value(), Value::from(u64::MAX));
        // Overwriting keeps the place; removing keeps the others' order.
        t.insert(b"key1", &Value::from(1), b"owner", at(10));
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
    fn an_entry_is_12_bytes() {
        // The figure docs/performance.md's memory arithmetic relies on.
        assert_eq!(std::mem::size_of::<Entry>(), 12);
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 12);
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
                let v = Value::Bin(key.clone());
                t.insert(&key, &v, b"o", Times { timestamp, since });
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
    fn a_record_of_this_century_has_a_seven_byte_header() {
        let times = Times {
            timestamp: 1_800_000_000,
            since: 1_800_000_000 - 100,
        };
        let mut t = Table::default();
        t.insert(b"key-0001", &Value::Bin(vec![0; 100]), b"o", times);
        // 1 (length) + 1 (key length) + 4 (time) + 1 (lease start) + 8 + 102.
        assert_eq!(t.records.live, 7 + 8 + 102);
        assert_eq!(
            t.records
                .rec(At {
                    chunk: 0,
                    offset: 0
                })
                .times,
            times
        );
    }

    #[test]
    fn deeper_than_the_network_limit_round_trips() {
        let mut v = Value::from(1);
        for _ in 0..200 {
            v = Value::Array(vec![v]);
        }
        let mut t = Table::default();
        t.insert(b"deep", &v, b"owner", at(1));
        assert_eq!(t.get(b"deep").unwrap().value(), v);
    }

    #[test]
    fn many_keys_are_all_found() {
        let mut t = Table::default();
        for i in 0..10_000u32 {
            t.insert(&i.to_be_bytes(), &Value::from(i), b"owner", at(0));
        }
        for i in 0..10_000u32 {
            assert_eq!(t.get(&i.to_be_bytes()).unwrap().value(), Value::from(i));
        }
        assert!(t.get(&10_000u32.to_be_bytes()).is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Key, value length, owner, time.
        Set(u8, u16, u8, i64),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), 0u16..3000, 0u8..4, -2i64..5_000_000_000)
                .prop_map(|(k, n, o, t)| Op::Set(k % 96, n, o, t)),
            1 => any::<u8>().prop_map(|k| Op::Remove(k % 96)),
        ]
    }

    proptest! {
        /// Behaves like a model (a Vec in insertion order), however records
        /// move between chunks; the arena never holds more than twice what
        /// is live plus the chunk being filled.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 0..1500), seed in any::<u64>()) {
            let mut t = Table::default();
            t.rekey(HashKeys::from_seed(seed));
            type Model = Vec<(Vec<u8>, Vec<u8>, Vec<u8>, Times)>;
            let mut model: Model = Vec::new();
            for op in ops {
                match op {
                    Op::Set(k, n, o, ts) => {
                        let key = vec![k; (k % 7) as usize];
                        let value = vec![k; n as usize];
                        let owner = vec![b'A' + o; 20];
                        let times = Times { timestamp: ts, since: ts - i64::from(o) * 3 };
                        t.insert(&key, &Value::Bin(value.clone()), &owner, times);
                        let row = (key.clone(), value, owner, times);
                        match model.iter().position(|e| e.0 == key) {
                            Some(p) => model[p] = row,
                            None => model.push(row),
                        }
                    }
                    Op::Remove(k) => {
                        let key = vec![k; (k % 7) as usize];
                        let had = model.iter().position(|e| e.0 == key).map(|p| model.remove(p));
                        prop_assert_eq!(t.remove(&key), had.is_some());
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                let total: usize = t.records.chunks.iter().map(|c| c.bytes.len()).sum();
                let tail = t.records.tail.map_or(0, |n| t.records.chunks[n as usize].bytes.len());
                let live: usize = t.records.chunks.iter().map(|c| c.live).sum();
                prop_assert_eq!(live, t.records.live);
                prop_assert!(total <= 2 * live + tail + 1, "{} bytes held for {} live", total, live);
            }
            let got: Model = t
                .iter()
                .map(|e| {
                    let Value::Bin(v) = e.value() else { panic!("not binary") };
                    (e.key().to_vec(), v, e.owner().to_vec(), Times { timestamp: e.timestamp(), since: e.since() })
                })
                .collect();
            prop_assert_eq!(&got, &model);
            for (key, value, owner, times) in &model {
                let e = t.get(key).unwrap();
                prop_assert_eq!(e.value(), Value::Bin(value.clone()));
                prop_assert_eq!(e.owner(), &owner[..]);
                prop_assert_eq!(e.timestamp(), times.timestamp);
            }
            // Owners of no key are forgotten.
            let owners: std::collections::HashSet<&[u8]> = model.iter().map(|e| &e.2[..]).collect();
            prop_assert_eq!(t.owners.index.len(), owners.len());
        }
    }

    #[test]
    fn overwriting_keeps_the_arena_near_what_is_live() {
        let mut t = Table::default();
        for round in 0..20i64 {
            for i in 0..5_000u32 {
                t.insert(&i.to_be_bytes(), &Value::Bin(vec![0; 100]), b"o", at(round));
            }
        }
        let total: usize = t.records.chunks.iter().map(|c| c.bytes.len()).sum();
        assert!(
            total <= 2 * t.records.live + CHUNK_MAX,
            "{total} for {}",
            t.records.live
        );
        for i in 0..5_000u32 {
            assert_eq!(t.get(&i.to_be_bytes()).unwrap().timestamp(), 19);
        }
    }

    #[test]
    fn a_large_value_has_a_chunk_of_its_own() {
        let mut t = Table::default();
        t.insert(b"small", &Value::from(1), b"o", at(1));
        t.insert(b"big", &Value::Bin(vec![1; CHUNK_MAX]), b"o", at(1));
        t.insert(b"small2", &Value::from(2), b"o", at(1));
        assert_eq!(t.records.chunks.len(), 2);
        assert!(t.remove(b"big"));
        // Released at once: it was not the tail.
        assert!(t.records.chunks[1].bytes.capacity() == 0);
        assert_eq!(t.get(b"small2").unwrap().value(), Value::from(2));
    }
}
