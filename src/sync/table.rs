//! The dictionary's storage, kept small: one heap allocation per key holding
//! the key and its value's msgpack encoding, and a 48-byte entry per key in
//! an insertion-ordered table ([`Ordered`]).
//!
//! A [`Value`] tree for a 100-byte binary costs a 32-byte enum plus a heap
//! block, and a boxed key another block of at least 32 bytes; packing key and
//! encoded value together roughly halves the memory of a dictionary of small
//! values (issue 7's 100,000-key figure). Reads decode the value, which for
//! the small values this store is meant for costs about as much as the clone
//! a read made before.

use std::sync::Arc;

use super::ordered::{Keyed, Ordered};
use crate::proto::sync::Meta;
use crate::value::Value;
use crate::wire::{msgpack, Limits};

/// Bytes of the key-length prefix of a record.
const LEN: usize = 4;

/// A key and its value's msgpack encoding in one allocation:
/// `key_len (u32, LE) || key || value`.
struct Record(Box<[u8]>);

impl Record {
    fn new(key: &[u8], value: &Value) -> Record {
        let mut buf = Vec::with_capacity(LEN + key.len() + 16);
        // Keys come from frames bounded far below 4 GiB (Limits::max_frame),
        // or from the local API: a longer key is cut at the prefix's range,
        // which can only make it unreachable, never corrupt a neighbour.
        let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&key[..len as usize]);
        msgpack::encode_into(value, &mut buf);
        Record(buf.into_boxed_slice())
    }

    fn key_len(&self) -> usize {
        let mut n = [0u8; LEN];
        n.copy_from_slice(&self.0[..LEN]);
        u32::from_le_bytes(n) as usize
    }

    fn key(&self) -> &[u8] {
        &self.0[LEN..LEN + self.key_len()]
    }

    fn value_bytes(&self) -> &[u8] {
        &self.0[LEN + self.key_len()..]
    }
}

/// Who wrote a key's value, when, and since when they have held it.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    /// The writer's id (shared between the entries it wrote).
    pub owner: Arc<[u8]>,
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

/// One key: its record and slot.
pub(super) struct Entry {
    record: Record,
    slot: Slot,
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

    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    pub fn meta(&self) -> Meta {
        Meta {
            owner: self.slot.owner.to_vec(),
            timestamp: self.slot.timestamp,
        }
    }
}

/// Keys in insertion order, each with its value and [`Slot`].
#[derive(Default)]
pub(super) struct Table {
    map: Ordered<Entry>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Sets a key; a key already present keeps its place in the order.
    pub fn insert(&mut self, key: &[u8], value: &Value, slot: Slot) {
        self.map.insert(Entry {
            record: Record::new(key, value),
            slot,
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

    /// The most recently inserted entry.
    pub fn last(&self) -> Option<&Entry> {
        self.map.last()
    }
}

/// A deleted key: who deleted it, when, and since when they held the lease.
pub(super) struct Tomb {
    pub key: Box<[u8]>,
    pub meta: Meta,
    pub since: i64,
}

impl Keyed for Tomb {
    fn key(&self) -> &[u8] {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(ts: i64) -> Slot {
        Slot {
            owner: Arc::from(&b"owner"[..]),
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
            assert_eq!(e.slot().timestamp, i as i64);
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
        assert_eq!(t.get(b"key1").unwrap().slot().timestamp, 10);
        assert_eq!(t.last().unwrap().key(), b"");
        assert!(t.contains_key(b"key4") && !t.contains_key(b"key"));
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
