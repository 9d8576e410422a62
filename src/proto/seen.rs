//! The waterfall's duplicate-suppression window (PROTOCOL.md §6.7), with a
//! hard bound on memory.

use std::collections::{HashSet, VecDeque};

use crate::wire::MessageId;

/// How long a broadcast is accepted after its creation time, in seconds.
pub const WINDOW_SECS: i64 = 60;

/// Remembers `(id, time)` of recent broadcasts.
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
    set: HashSet<(MessageId, i64)>,
    order: VecDeque<(MessageId, i64)>,
    capacity: usize,
    expired: u64,
}

impl Seen {
    /// An empty window holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Seen {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            expired: 0,
        }
    }

    /// Records a message; `true` when it is new and inside the window (it
    /// should be handled and relayed), `false` when it must be dropped.
    pub fn insert(&mut self, id: MessageId, time: i64, now: i64) -> bool {
        if time < now - WINDOW_SECS {
            self.expired += 1;
            return false;
        }
        if !self.set.insert((id, time)) {
            return false;
        }
        self.order.push_back((id, time));
        self.prune(now);
        true
    }

    /// Records a message we send ourselves, so its echoes are dropped.
    pub fn remember(&mut self, id: MessageId, time: i64, now: i64) {
        if self.set.insert((id, time)) {
            self.order.push_back((id, time));
            self.prune(now);
        }
    }

    fn prune(&mut self, now: i64) {
        // Insertion order is close to time order; a late old entry is kept
        // until the entries before it leave, which the capacity bounds.
        while let Some(&(id, t)) = self.order.front() {
            if self.order.len() > self.capacity || t <= now - WINDOW_SECS {
                self.order.pop_front();
                self.set.remove(&(id, t));
            } else {
                break;
            }
        }
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
        // Same id, other time: a different message for the references too.
        assert!(s.insert([2; 32], 162, 162));
    }
}
