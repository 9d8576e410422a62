//! An insertion-ordered map from byte keys to entries with O(1) removal
//! anywhere (amortised), the way Python's `dict` keeps order: entries live
//! in a vector in insertion order, a removed entry leaves a hole, and the
//! vector is compacted once holes outnumber entries.
//!
//! `IndexMap::shift_remove` keeps order too but moves every later entry, so
//! deleting the keys of a 100,000-key dictionary one by one took minutes.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// An entry that can tell its key, given where keys are kept (`C`: the
/// table's record arena for the dictionary's entries, `()` for entries
/// that hold their own).
pub(crate) trait Keyed<C: ?Sized> {
    fn key<'a>(&'a self, keys: &'a C) -> &'a [u8];
}

/// Holes tolerated before compaction is considered.
const MIN_HOLES: usize = 32;

/// Entries in insertion order, found by key. Holds at most `u32::MAX`
/// slots (positions are 32-bit): an insert past that is refused.
///
/// The index holds bare 32-bit positions (4 bytes and a control byte per
/// bucket; a million keys sit in 2^21 buckets). It is grown by rebuilding
/// it from the slots in order, so that the keys are read and hashed in the
/// order they are stored (hashbrown's own rehash visits its buckets in
/// hash order: a cache miss and a SipHash per entry, a third of a
/// 1,000,000-key join when it did).
pub(crate) struct Ordered<E> {
    /// Entries in insertion order; `None` where one was removed.
    slots: Vec<Option<E>>,
    /// Positions in `slots` of the live entries, by key hash.
    index: HashTable<u32>,
    /// SipHash with secret keys: keys come from the network.
    hasher: HashKeys,
    /// Live entries.
    live: usize,
    /// Every slot before this one is a hole.
    head: usize,
}

/// The secret keys of a map's SipHash (keys come from the network, so
/// their hashes must not be predictable). By default random per map, from
/// std's `RandomState`; but on wasm32-unknown-unknown std has no randomness
/// and `RandomState`'s keys are fixed, so the node re-keys its dictionary
/// from its seed ([`HashKeys::from_seed`]).
#[derive(Clone, Copy)]
pub(crate) struct HashKeys(u64, u64);

impl HashKeys {
    /// Keys as secret as `seed`: two SplitMix64 outputs of it. (Not a
    /// second ChaCha generator: its block function would be linked into
    /// the browser bundle twice.)
    pub fn from_seed(seed: u64) -> HashKeys {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        HashKeys(next(), next())
    }
}

impl Default for HashKeys {
    fn default() -> Self {
        // RandomState's own keys are not readable; two hashes under them
        // are as secret (random natively).
        let s = std::collections::hash_map::RandomState::new();
        HashKeys(s.hash_one(0u8), s.hash_one(1u8))
    }
}

// std's SipHasher (SipHash-2-4) is deprecated only in favour of
// DefaultHasher, which cannot be keyed.
#[allow(deprecated)]
impl BuildHasher for HashKeys {
    type Hasher = std::hash::SipHasher;

    fn build_hasher(&self) -> Self::Hasher {
        std::hash::SipHasher::new_with_keys(self.0, self.1)
    }
}

impl<E> Default for Ordered<E> {
    fn default() -> Self {
        Ordered {
            slots: Vec::new(),
            index: HashTable::new(),
            hasher: Default::default(),
            live: 0,
            head: 0,
        }
    }
}

impl<E> Ordered<E> {
    pub fn len(&self) -> usize {
        self.live
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &E> {
        self.slots[self.head..].iter().flatten()
    }

    pub fn first(&self) -> Option<&E> {
        self.iter().next()
    }

    // Used by the tokio shell (feature `net`).
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub fn last(&self) -> Option<&E> {
        // Trailing holes are always dropped.
        self.slots.last().and_then(Option::as_ref)
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn position<C: ?Sized>(&self, key: &[u8], keys: &C) -> Option<usize>
    where
        E: Keyed<C>,
    {
        if self.live == 0 {
            return None;
        }
        let slots = &self.slots;
        self.index
            .find(self.hash(key), |&at| holds(slots, at, key, keys))
            .map(|&at| at as usize)
    }

    pub fn get<C: ?Sized>(&self, key: &[u8], keys: &C) -> Option<&E>
    where
        E: Keyed<C>,
    {
        self.position(key, keys)
            .and_then(|i| self.slots[i].as_ref())
    }

    pub fn get_mut<C: ?Sized>(&mut self, key: &[u8], keys: &C) -> Option<&mut E>
    where
        E: Keyed<C>,
    {
        self.position(key, keys)
            .and_then(|i| self.slots[i].as_mut())
    }

    // Used by the tokio shell (feature `net`).
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub fn contains_key<C: ?Sized>(&self, key: &[u8], keys: &C) -> bool
    where
        E: Keyed<C>,
    {
        self.position(key, keys).is_some()
    }

    /// Inserts an entry; one with the same key is replaced in its place,
    /// as in a Python dict. Returns the entry that is not in the map
    /// afterwards: the one replaced, or this one if the map already has
    /// `u32::MAX` slots.
    pub fn insert<C: ?Sized>(&mut self, entry: E, keys: &C) -> Option<E>
    where
        E: Keyed<C>,
    {
        let hash = self.hash(entry.key(keys));
        let slots = &self.slots;
        if let Some(&at) = self
            .index
            .find(hash, |&at| holds(slots, at, entry.key(keys), keys))
        {
            return self.slots[at as usize].replace(entry);
        }
        if u32::try_from(self.slots.len()).is_err() {
            self.compact(keys);
        }
        let Ok(at) = u32::try_from(self.slots.len()) else {
            return Some(entry);
        };
        if self.index.len() >= self.index.capacity() {
            self.rebuild(self.live.max(8) * 2, keys);
        }
        self.slots.push(Some(entry));
        self.live += 1;
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, at, |&at| {
            hasher.hash_one(key_at(slots, at, keys).unwrap_or_default())
        });
        None
    }

    /// Makes room for `additional` more entries at once, so that filling
    /// them in does not grow the index step by step (each step hashes
    /// every key again: about 1.8 million hashes on the way to a million
    /// keys).
    pub fn reserve<C: ?Sized>(&mut self, additional: usize, keys: &C)
    where
        E: Keyed<C>,
    {
        let wanted = self.live.saturating_add(additional);
        if wanted > self.index.capacity() {
            self.rebuild(wanted, keys);
        }
        self.slots.reserve(additional);
    }

    // Used by tests of the room a peer's hint makes.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.index.capacity()
    }

    /// Removes and returns the entry of a key; the others keep their order.
    pub fn remove<C: ?Sized>(&mut self, key: &[u8], keys: &C) -> Option<E>
    where
        E: Keyed<C>,
    {
        if self.live == 0 {
            return None;
        }
        let hash = self.hash(key);
        let slots = &self.slots;
        let found = self
            .index
            .find_entry(hash, |&at| holds(slots, at, key, keys))
            .ok()?;
        let (at, _) = found.remove();
        self.take(at as usize, keys)
    }

    /// Removes and returns the oldest entry.
    pub fn pop_first<C: ?Sized>(&mut self, keys: &C) -> Option<E>
    where
        E: Keyed<C>,
    {
        let i = self.head + self.slots[self.head..].iter().position(Option::is_some)?;
        let hash = self.hash(self.slots[i].as_ref()?.key(keys));
        if let Ok(found) = self.index.find_entry(hash, |&at| at as usize == i) {
            found.remove();
        }
        self.take(i, keys)
    }

    /// Takes the entry at `slots[i]`, already out of the index.
    fn take<C: ?Sized>(&mut self, i: usize, keys: &C) -> Option<E>
    where
        E: Keyed<C>,
    {
        let entry = self.slots[i].take();
        self.live -= 1;
        self.tidy(keys);
        entry
    }

    /// Drops holes at both ends, and compacts when holes outnumber entries.
    fn tidy<C: ?Sized>(&mut self, keys: &C)
    where
        E: Keyed<C>,
    {
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        while self.head < self.slots.len() && self.slots[self.head].is_none() {
            self.head += 1;
        }
        self.head = self.head.min(self.slots.len());
        let holes = self.slots.len() - self.live;
        if holes > MIN_HOLES && holes > self.live {
            self.compact(keys);
        }
    }

    /// Hashes every key again under `hasher` from now on.
    pub fn rekey<C: ?Sized>(&mut self, hasher: HashKeys, keys: &C)
    where
        E: Keyed<C>,
    {
        self.hasher = hasher;
        self.compact(keys);
    }

    fn compact<C: ?Sized>(&mut self, keys: &C)
    where
        E: Keyed<C>,
    {
        self.slots.retain(Option::is_some);
        self.slots.shrink_to(self.slots.len().max(MIN_HOLES) * 2);
        self.head = 0;
        self.rebuild(self.live, keys);
    }

    /// A new index for at least `capacity` entries, filled from the slots
    /// in order.
    fn rebuild<C: ?Sized>(&mut self, capacity: usize, keys: &C)
    where
        E: Keyed<C>,
    {
        let mut index = HashTable::with_capacity(capacity.max(self.live));
        let (slots, hasher) = (&self.slots, &self.hasher);
        let rehash = |&at: &u32| hasher.hash_one(key_at(slots, at, keys).unwrap_or_default());
        for (i, slot) in slots.iter().enumerate().skip(self.head) {
            // Positions fit: `insert` keeps slots under u32::MAX.
            let (Some(e), Ok(at)) = (slot, u32::try_from(i)) else {
                continue;
            };
            index.insert_unique(hasher.hash_one(e.key(keys)), at, rehash);
        }
        self.index = index;
    }
}

/// The key of `slots[at]`, if it holds an entry.
fn key_at<'a, E: Keyed<C>, C: ?Sized>(
    slots: &'a [Option<E>],
    at: u32,
    keys: &'a C,
) -> Option<&'a [u8]> {
    slots
        .get(at as usize)
        .and_then(Option::as_ref)
        .map(|e| e.key(keys))
}

/// Whether `slots[at]` holds the entry of `key`.
fn holds<E: Keyed<C>, C: ?Sized>(slots: &[Option<E>], at: u32, key: &[u8], keys: &C) -> bool {
    key_at(slots, at, keys) == Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Keyed<()> for (Vec<u8>, u32) {
        fn key(&self, _: &()) -> &[u8] {
            &self.0
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        PopFirst,
        Rekey(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k % 64, v)),
            any::<u8>().prop_map(|k| Op::Remove(k % 64)),
            Just(Op::PopFirst),
            any::<u64>().prop_map(Op::Rekey),
        ]
    }

    proptest! {
        /// Behaves like a model (a Vec of pairs in insertion order).
        #[test]
        fn matches_an_ordered_model(ops in proptest::collection::vec(op(), 0..600)) {
            let mut m: Ordered<(Vec<u8>, u32)> = Ordered::default();
            let mut model: Vec<(Vec<u8>, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let key = vec![k];
                        let old = m.insert((key.clone(), v), &());
                        let pos = model.iter().position(|e| e.0 == key);
                        let want = pos.map(|p| std::mem::replace(&mut model[p], (key, v)));
                        if pos.is_none() {
                            model.push((vec![k], v));
                        }
                        prop_assert_eq!(old, want);
                    }
                    Op::Remove(k) => {
                        let got = m.remove(&[k], &());
                        let want = model.iter().position(|e| e.0 == [k]).map(|p| model.remove(p));
                        prop_assert_eq!(got, want);
                    }
                    Op::PopFirst => {
                        let want = if model.is_empty() { None } else { Some(model.remove(0)) };
                        prop_assert_eq!(m.pop_first(&()), want);
                    }
                    Op::Rekey(seed) => {
                        let keys = HashKeys::from_seed(seed);
                        m.rekey(keys, &());
                        prop_assert_eq!(m.hash(b"k"), keys.hash_one(b"k".as_slice()));
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                prop_assert!(m.iter().eq(model.iter()));
                prop_assert_eq!(m.last(), model.last());
                for k in 0..64u8 {
                    prop_assert_eq!(m.get(&[k], &()), model.iter().find(|e| e.0 == [k]));
                }
            }
        }
    }

    #[test]
    fn keys_decide_the_hashes() {
        // Hashes depend on the keys, so a peer cannot aim at the buckets
        // without them (on wasm32 RandomState's keys are fixed).
        let a = HashKeys(1, 2);
        let b = HashKeys(1, 3);
        assert_ne!(a.hash_one(b"key"), b.hash_one(b"key"));
        assert_eq!(a.hash_one(b"key"), HashKeys(1, 2).hash_one(b"key"));
        let (e, f) = (HashKeys::from_seed(1), HashKeys::from_seed(2));
        assert_ne!((e.0, e.1), (f.0, f.1));
        assert_ne!(e.0, e.1);
        let (c, d) = (HashKeys::default(), HashKeys::default());
        assert_ne!((c.0, c.1), (d.0, d.1), "default keys are per map");
    }

    #[test]
    fn removing_most_keys_keeps_order_and_compacts() {
        let mut m: Ordered<(Vec<u8>, u32)> = Ordered::default();
        let n = 200_000u32;
        for i in 0..n {
            m.insert((i.to_be_bytes().to_vec(), i), &());
        }
        // From the middle outwards, then the rest from the front: with a
        // shifting remove this is quadratic (minutes); here it is linear.
        for i in (n / 4..3 * n / 4).rev() {
            assert_eq!(m.remove(&i.to_be_bytes(), &()).map(|e| e.1), Some(i));
        }
        assert!(m.slots.len() <= 2 * m.len() + MIN_HOLES + 1);
        let mut left = Vec::new();
        while let Some(e) = m.pop_first(&()) {
            left.push(e.1);
        }
        let want: Vec<u32> = (0..n / 4).chain(3 * n / 4..n).collect();
        assert_eq!(left, want);
        assert_eq!(m.len(), 0);
        assert!(m.first().is_none() && m.last().is_none());
    }
}
