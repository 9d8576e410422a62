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
/// A write by `new` of kind `kind` is allowed when the key has no metadata
/// (`current` is `None`: its owner and timestamp); the owner is the same;
/// it is a delta and leasing is off; the lease has expired
/// (`time < now - 3600`); within the same second the current owner id is
/// byte-wise greater than the new one; or, with leasing off, the new write
/// is later.
///
/// ```
/// use rs2p::proto::sync::{write_allowed, Meta, WriteKind};
/// let cur = Some((&b"B"[..], 100));
/// let by = |o: &[u8], t| Meta { owner: o.to_vec(), timestamp: t };
/// assert!(write_allowed(cur, &by(b"B", 50), WriteKind::Store, true, 200).is_ok());
/// assert!(write_allowed(cur, &by(b"C", 101), WriteKind::Store, true, 200).is_err());
/// assert!(write_allowed(cur, &by(b"A", 100), WriteKind::Store, true, 200).is_ok());
/// assert!(write_allowed(cur, &by(b"C", 101), WriteKind::Store, false, 200).is_ok());
/// assert!(write_allowed(cur, &by(b"C", 101), WriteKind::Store, true, 3701).is_ok());
/// ```
pub fn write_allowed(
    current: Option<(&[u8], i64)>,
    new: &Meta,
    kind: WriteKind,
    leasing: bool,
    now: i64,
) -> Result<(), Refused> {
    let Some((owner, timestamp)) = current else {
        return Ok(());
    };
    let allowed = owner == new.owner.as_slice()
        || (kind == WriteKind::Delta && !leasing)
        || timestamp < now.saturating_sub(LEASE_SECS)
        || (timestamp == new.timestamp && owner > new.owner.as_slice())
        || (timestamp < new.timestamp && !leasing);
    if allowed {
        Ok(())
    } else {
        Err(Refused {
            owner: owner.to_vec(),
            expires_at: timestamp.saturating_add(LEASE_SECS),
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

/// One version of a key, as rs2p nodes exchange them when links come back:
/// its metadata, when its owner's lease began, and whether it is a delete
/// (a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// Owner and time of the write.
    pub meta: Meta,
    /// When the owner's lease on the key began (its first write of an
    /// unbroken series), unix seconds.
    pub since: i64,
    /// True for a delete.
    pub deleted: bool,
}

impl Version {
    /// When this version's lease ends: an hour after the write, or at once
    /// for a delete (a delete releases the key).
    fn lease_end(&self) -> i64 {
        if self.deleted {
            self.meta.timestamp
        } else {
            self.meta.timestamp.saturating_add(LEASE_SECS)
        }
    }
}

/// Which of two versions of a key every rs2p node keeps when they meet
/// after a partition: `true` when `incoming` replaces `current`.
///
/// The rule is symmetric (both ends of a link pick the same winner), so
/// state exchanged after a partition converges:
///
/// 1. the same owner: the later write wins;
/// 2. leasing off: the later write wins; in the same second the smaller
///    owner id wins (the references' tie-break);
/// 3. leasing on, two owners: the lease rule first — a version whose
///    lease had ended (an hour after its write, or at its delete) before
///    the other's lease began loses; otherwise both claimed the key at
///    overlapping times and the lease taken first wins (the earlier
///    `since`, then the smaller owner id). A lease holder's writes are
///    therefore never lost to a node that wrote the key unaware of the
///    lease while partitioned.
///
/// ```
/// use rs2p::proto::sync::{supersedes, Meta, Version};
/// let v = |o: &[u8], t, since, deleted| Version { meta: Meta { owner: o.to_vec(), timestamp: t }, since, deleted };
/// // A held the lease since 100 and wrote again at 900; B wrote at 500 unaware.
/// let a = v(b"A", 900, 100, false);
/// let b = v(b"B", 500, 500, false);
/// assert!(!supersedes(&a, &b, true) && supersedes(&b, &a, true));
/// // B's write came after A's lease had ended.
/// let b_late = v(b"B", 5000, 5000, false);
/// assert!(supersedes(&a, &b_late, true));
/// ```
pub fn supersedes(current: &Version, incoming: &Version, leasing: bool) -> bool {
    let (c, i) = (current, incoming);
    if c.meta.owner == i.meta.owner {
        // The later write; in one second a delete; then the earlier lease
        // start, so that two versions differing only there still have one
        // winner on both sides.
        return (i.meta.timestamp, i.deleted, std::cmp::Reverse(i.since))
            > (c.meta.timestamp, c.deleted, std::cmp::Reverse(c.since));
    }
    if !leasing {
        return i.meta.timestamp > c.meta.timestamp
            || (i.meta.timestamp == c.meta.timestamp && i.meta.owner < c.meta.owner);
    }
    if i.since > c.lease_end() {
        return true;
    }
    if c.since > i.lease_end() {
        return false;
    }
    (i.since, &i.meta.owner) < (c.since, &c.meta.owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version() -> impl Strategy<Value = Version> {
        (0u8..4, 0i64..10_000, 0i64..10_000, any::<bool>()).prop_map(|(o, t, back, deleted)| {
            Version {
                meta: Meta {
                    owner: vec![b'A' + o],
                    timestamp: t,
                },
                since: t - back.min(t),
                deleted,
            }
        })
    }

    proptest! {
        /// Both ends of a link agree on the winner.
        #[test]
        fn both_ends_pick_the_same_winner(a in version(), b in version(), leasing in any::<bool>()) {
            prop_assume!(a != b);
            let a_keeps = !supersedes(&a, &b, leasing);
            let b_takes = supersedes(&b, &a, leasing);
            // Exactly one of them is the winner, seen from both sides.
            let winner_from_a = if a_keeps { &a } else { &b };
            let winner_from_b = if b_takes { &a } else { &b };
            prop_assert_eq!(winner_from_a, winner_from_b);
        }
    }
}
