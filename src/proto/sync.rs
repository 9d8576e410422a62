//! The replicated dictionary's rules (PROTOCOL.md §8.3, §8.5): who may write
//! a key, and how a delta merges into a map.

use crate::value::Value;

/// How long a lease lasts after the owner's last write, in seconds.
pub const LEASE_SECS: i64 = 3600;

/// Who wrote a key last, and when (unix seconds, the message time).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Meta {
    /// The owner's node id, as bytes.
    pub owner: Vec<u8>,
    /// The write's time.
    pub timestamp: i64,
}

/// The kind of write being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A store (set or delete).
    Store,
    /// A delta (merge into a map).
    Delta,
}

/// Why a write was refused: the lease held and when it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The current owner.
    pub owner: Vec<u8>,
    /// When the lease ends, unix seconds.
    pub expires_at: i64,
}

/// The lease rule, exactly as py2p and js2p apply it.
///
/// A write by `new` of kind `kind` is allowed when the key has no metadata;
/// the owner is the same; it is a delta and leasing is off; the lease has
/// expired (`time < now - 3600`); within the same second the current owner
/// id is byte-wise greater than the new one; or, with leasing off, the new
/// write is later.
///
/// ```
/// use rs2p::proto::sync::{write_allowed, Meta, WriteKind};
/// let cur = Meta { owner: b"B".to_vec(), timestamp: 100 };
/// let by = |o: &[u8], t| Meta { owner: o.to_vec(), timestamp: t };
/// assert!(write_allowed(Some(&cur), &by(b"B", 50), WriteKind::Store, true, 200).is_ok());
/// assert!(write_allowed(Some(&cur), &by(b"C", 101), WriteKind::Store, true, 200).is_err());
/// assert!(write_allowed(Some(&cur), &by(b"A", 100), WriteKind::Store, true, 200).is_ok());
/// assert!(write_allowed(Some(&cur), &by(b"C", 101), WriteKind::Store, false, 200).is_ok());
/// assert!(write_allowed(Some(&cur), &by(b"C", 101), WriteKind::Store, true, 3701).is_ok());
/// ```
pub fn write_allowed(
    current: Option<&Meta>,
    new: &Meta,
    kind: WriteKind,
    leasing: bool,
    now: i64,
) -> Result<(), Refused> {
    let Some(cur) = current else { return Ok(()) };
    let allowed = cur.owner == new.owner
        || (kind == WriteKind::Delta && !leasing)
        || cur.timestamp < now - LEASE_SECS
        || (cur.timestamp == new.timestamp && cur.owner > new.owner)
        || (cur.timestamp < new.timestamp && !leasing);
    if allowed {
        Ok(())
    } else {
        Err(Refused {
            owner: cur.owner.clone(),
            expires_at: cur.timestamp + LEASE_SECS,
        })
    }
}

/// Merges `delta` one level deep into `current` (absent = empty map):
/// existing top-level entries are replaced, others kept, new ones appended.
/// `Err` names the type of a current value that is not a map.
///
/// ```
/// use rs2p::{proto::sync::merge_delta, Value};
/// let cur: Value = [("a", 1), ("b", 2)].into_iter().collect();
/// let delta = [(Value::from("b"), Value::from(3)), (Value::from("c"), Value::Nil)];
/// let merged = merge_delta(Some(&cur), &delta).unwrap();
/// assert_eq!(merged, [("a", Value::from(1)), ("b", 3.into()), ("c", Value::Nil)].into_iter().collect());
/// assert_eq!(merge_delta(Some(&Value::from(5)), &delta), Err("int"));
/// ```
pub fn merge_delta(
    current: Option<&Value>,
    delta: &[(Value, Value)],
) -> Result<Value, &'static str> {
    let mut map = match current {
        None => Vec::with_capacity(delta.len()),
        Some(Value::Map(m)) => m.clone(),
        Some(other) => return Err(other.kind()),
    };
    for (k, v) in delta {
        match map.iter_mut().find(|(mk, _)| mk == k) {
            Some(slot) => slot.1 = v.clone(),
            None => map.push((k.clone(), v.clone())),
        }
    }
    Ok(Value::Map(map))
}
