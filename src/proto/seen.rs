//! The waterfall's duplicate-suppression window (PROTOCOL.md §6.7), with a
//! hard bound on memory.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::wire::MessageId;

/// The fingerprints are already uniformly random (SHA-256 bits): hash them
/// as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// 64 bits of the message id. The id is the SHA-256 of the packed message,
/// time included, so it stands for the references' `(id, time)` pair. An
/// accidental collision among the entries held is negligible (about 2^-46
/// at full capacity), and a deliberate one only hides the forger's own
/// messages.
pub(crate) fn fingerprint(id: &[u8; 32]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&id[..8]);
    u64::from_le_bytes(head)
}

/// How long a broadcast is accepted after its creation time, in seconds.
pub const WINDOW_SECS: i64 = 60;

/// What [`Seen::admit`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// New and inside the window: handle and relay it.
    New,
    /// Already seen.
    Duplicate,
    /// Older than the window.
    Expired,
}

/// Remembers `(id, time)` of recent broadcasts (as 64-bit fingerprints, 24
/// bytes an entry).
///
/// Entries leave when they are older than [`WINDOW_SECS`] (messages that old
/// are refused anyway) or, under a flood, when more than `capacity` are held:
/// the oldest entry is dropped first.
///
/// ```
/// use rs2p::proto::seen::Seen;
/// let mut seen = Seen::new(2);
/// assert!(seen.insert([1; 32], 100, 100));
/// assert!(!seen.insert([1; 32], 100, 100)); // duplicate
/// assert!(!seen.insert([2; 32], 30, 100)); // older than the window
/// ```
#[derive(Debug)]
pub struct Seen {
    set: HashSet<u64, BuildHasherDefault<Identity>>,
    order: VecDeque<(u64, i64)>,
    capacity: usize,
    expired: u64,
}

impl Seen {
    /// An empty window holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Seen {
        Seen {
            set: HashSet::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            expired: 0,
        }
    }

    /// Records a message; `true` when it is new and inside the window (it
    /// should be handled and relayed), `false` when it must be dropped.
    pub fn insert(&mut self, id: MessageId, time: i64, now: i64) -> bool {
        self.admit(id, time, now) == Admit::New
    }

    /// Records a message and says why it was taken or refused.
    ///
    /// ```
    /// use rs2p::proto::seen::{Admit, Seen};
    /// let mut seen = Seen::new(8);
    /// assert_eq!(seen.admit([1; 32], 100, 100), Admit::New);
    /// assert_eq!(seen.admit([1; 32], 100, 100), Admit::Duplicate);
    /// assert_eq!(seen.admit([2; 32], 30, 100), Admit::Expired);
    /// ```
    pub fn admit(&mut self, id: MessageId, time: i64, now: i64) -> Admit {
        if time < now - WINDOW_SECS {
            self.expired += 1;
            return Admit::Expired;
        }
        let fp = fingerprint(&id);
        if !self.set.insert(fp) {
            return Admit::Duplicate;
        }
        self.order.push_back((fp, time));
        self.prune(now);
        Admit::New
    }

    fn prune(&mut self, now: i64) {
        // Insertion order is close to time order; a late old entry is kept
        // until the entries before it leave, which the capacity bounds.
        while let Some(&(fp, t)) = self.order.front() {
            if self.order.len() > self.capacity || t <= now - WINDOW_SECS {
                self.order.pop_front();
                self.set.remove(&fp);
            } else {
                break;
            }
        }
    }

    /// True when a message with this fingerprint ([`fingerprint`]) was seen.
    pub(crate) fn contains_fingerprint(&self, fp: u64) -> bool {
        self.set.contains(&fp)
    }

    /// True when a message with this id was seen (and is still held).
    pub fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(&fingerprint(id))
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Broadcasts refused as older than the window so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_under_flood() {
        let mut s = Seen::new(1000);
        for i in 0..50_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            assert!(s.insert(id, 1000, 1000));
        }
        assert_eq!(s.len(), 1000);
    }

    #[test]
    fn window_expiry() {
        let mut s = Seen::new(10);
        assert!(s.insert([1; 32], 100, 100));
        assert!(s.insert([2; 32], 161, 161));
        assert_eq!(s.len(), 1, "the entry of time 100 left at now = 161");
        assert!(!s.insert([3; 32], 100, 161));
        assert_eq!(s.expired(), 1);
        assert!(s.contains(&[2; 32]) && !s.contains(&[1; 32]));
    }
}
