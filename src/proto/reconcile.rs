//! Range-based set reconciliation between rs2p nodes: the two sides find
//! the keys whose versions differ in round trips and bytes that grow with
//! the difference, not with the dictionary.
//!
//! Every key and tombstone is an item `(key hash, version hash)` (see
//! `dict::key_hash` and
//! `dict::item_hash`). A range of key hashes is
//! described by its item count and the wrapping sum of its version hashes
//! (its fingerprint), or by its item list. A side that receives a
//! fingerprint compares it with its own: equal ranges are done; a differing
//! range comes back split in [`BRANCH`] fingerprints, or as the side's item
//! list once it holds at most [`LIST_MAX`] items there. A side that
//! receives an item list sends its versions the other lacks or holds
//! differently (as state-transfer stores with lease starts, merged by
//! [`supersedes`](super::sync::supersedes)) and asks for the other's (a
//! want list). Both dictionaries then hold, per key, the version the merge
//! rule picks.
//!
//! Messages are whispers with rs2p-only sub-flags ([`sub::RS2P_SYNC`],
//! [`sub::RS2P_WANT`]), sent only to peers whose handshake carries
//! [`compression::RS2P_RECONCILES`]: py2p and js2p never see them. Every
//! count is capped ([`MAX_RANGES`], [`MAX_LIST`], [`MAX_WANT`], rounds per
//! session in the replica), so a hostile peer costs at most two scans of
//! the dictionary per message, and the replica takes a link's messages
//! within a budget ([`BUDGET_BURST`](super::replica::BUDGET_BURST) at once,
//! then one per [`BUDGET_EVERY`](super::replica::BUDGET_EVERY)).
//!
//! [`compression::RS2P_RECONCILES`]: crate::wire::flags::compression::RS2P_RECONCILES

use std::collections::HashMap;

use super::dict::{key_hash, Dict, EntryRef, Tomb};
use super::sketch::Sketch;
use crate::value::Value;
use crate::wire::flags::sub;

/// Children of a split range.
pub const BRANCH: usize = 16;
/// A side holding at most this many items in a differing range lists them.
pub const LIST_MAX: usize = 32;
/// Ranges in one message, at most.
pub const MAX_RANGES: usize = 2048;
/// Items listed in one message, at most (a list of more is refused).
pub const MAX_LIST: usize = 16_384;
/// Key hashes in one want list, at most.
pub const MAX_WANT: usize = 16_384;

/// A range of key hashes, `lo..=hi`, and what the sender holds in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Range {
    /// Count and fingerprint of the whole range.
    Fingerprint {
        /// Lowest key hash.
        lo: u64,
        /// Highest key hash.
        hi: u64,
        /// Items held.
        count: u64,
        /// Wrapping sum of their version hashes.
        sum: u64,
    },
    /// The range cut in [`BRANCH`] equal parts, with each part's count and
    /// fingerprint.
    Split {
        /// Lowest key hash.
        lo: u64,
        /// Highest key hash.
        hi: u64,
        /// `(count, sum)` per part.
        parts: Vec<(u64, u64)>,
    },
    /// Every item held in the range: `(key hash, version hash)`.
    Items {
        /// Lowest key hash.
        lo: u64,
        /// Highest key hash.
        hi: u64,
        /// The items.
        items: Vec<(u64, u64)>,
    },
}

impl Range {
    fn bounds(&self) -> (u64, u64) {
        match self {
            Range::Fingerprint { lo, hi, .. }
            | Range::Split { lo, hi, .. }
            | Range::Items { lo, hi, .. } => (*lo, *hi),
        }
    }
}

/// The bounds of part `i` of `lo..=hi` cut in [`BRANCH`] parts.
fn part(lo: u64, hi: u64, i: usize) -> (u64, u64) {
    let step = (hi - lo) / BRANCH as u64;
    let plo = lo + step * i as u64;
    let phi = if i + 1 == BRANCH {
        hi
    } else {
        lo + step * (i as u64 + 1) - 1
    };
    (plo, phi)
}

/// Which part of `lo..=hi` holds `kh`.
fn part_of(lo: u64, hi: u64, kh: u64) -> usize {
    let step = (hi - lo) / BRANCH as u64;
    (((kh - lo) / step.max(1)) as usize).min(BRANCH - 1)
}

/// Ranges too narrow to cut are listed instead.
fn splittable(lo: u64, hi: u64) -> bool {
    hi - lo >= BRANCH as u64
}

/// One item of the dictionary: its key, key hash, and where its version
/// hash comes from.
struct Item<'a> {
    key: &'a [u8],
    kh: u64,
    of: Of<'a>,
}

enum Of<'a> {
    Entry(EntryRef<'a>),
    Tomb(&'a Tomb),
}

impl Item<'_> {
    /// The version hash, computed when asked: the dictionary does not keep
    /// it (8 bytes a key), and a pass that only places keys in ranges
    /// (`wanted`, ranges already equal) need not hash the values.
    fn ih(&self) -> u64 {
        match self.of {
            Of::Entry(e) => e.item_hash(),
            Of::Tomb(t) => t.hash(),
        }
    }
}

fn items(dict: &Dict) -> impl Iterator<Item = Item<'_>> {
    let entries = dict.map.iter().map(|e| Item {
        key: e.key(),
        kh: key_hash(e.key()),
        of: Of::Entry(e),
    });
    let tombs = dict.tombs.iter().map(|t| Item {
        key: &t.key,
        kh: key_hash(&t.key),
        of: Of::Tomb(t),
    });
    entries.chain(tombs)
}

/// Count and fingerprint of a set of items.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Print {
    count: u64,
    sum: u64,
}

impl Print {
    fn add(&mut self, ih: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(ih);
    }
}

/// What to do after reading a peer's ranges.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Ranges to send back (empty: this side is done).
    pub ranges: Vec<Range>,
    /// Keys whose versions to send the peer.
    pub send: Vec<Vec<u8>>,
    /// Key hashes of the peer's versions to ask for.
    pub want: Vec<u64>,
    /// How many of `send` are keys (not tombstones) the peer holds no
    /// version of: in ranges where it holds nothing, or missing from its
    /// item lists (worth a hint, [`encode_expect`], when a node joins).
    pub fresh: usize,
}

/// The opening message of a session: the whole space, split (or listed
/// when small), and with `with_sketch` the sketch of every item (see
/// [`sketch`](super::sketch)), for a dictionary of at least
/// [`SKETCH_MIN_ITEMS`]; one pass over the dictionary for both.
pub fn open(dict: &Dict, with_sketch: bool) -> (Vec<Range>, Option<Sketch>) {
    let (lo, hi) = (0, u64::MAX);
    let total = dict.map.len() + dict.tombs.len();
    if total <= LIST_MAX {
        let items = items(dict).map(|it| (it.kh, it.ih())).collect();
        return (vec![Range::Items { lo, hi, items }], None);
    }
    let mut parts = vec![Print::default(); BRANCH];
    let mut sketch = (with_sketch && total >= SKETCH_MIN_ITEMS).then(Sketch::default);
    for it in items(dict) {
        let ih = it.ih();
        parts[part_of(lo, hi, it.kh)].add(ih);
        if let Some(s) = sketch.as_mut() {
            s.insert(it.kh, ih);
        }
    }
    let ranges = vec![Range::Split {
        lo,
        hi,
        parts: parts.iter().map(|p| (p.count, p.sum)).collect(),
    }];
    (ranges, sketch)
}

/// A dictionary holds at least this many items before the opening message
/// of a session carries a sketch: below it, ranges find a difference in a
/// few small rounds, for less than the sketch's 12 KiB.
pub const SKETCH_MIN_ITEMS: usize = 4096;

/// Reads a peer's sketch against our dictionary: when the difference
/// decodes, the whole answer (our versions it lacks or holds differently,
/// and a want list of its versions), with no ranges left to compare;
/// `None` when too much differs, and the ranges must be compared.
pub fn answer_sketch(dict: &Dict, theirs: &Sketch) -> Option<Answer> {
    let mut ours = Sketch::of(items(dict).map(|it| (it.kh, it.ih())));
    ours.subtract(theirs);
    let diff = ours.decode()?;
    let mut out = Answer::default();
    if !diff.ours.is_empty() {
        let ours: Vec<u64> = diff.ours.iter().map(|(kh, _)| *kh).collect();
        out.send = wanted(dict, &ours);
    }
    // Both sides' versions of a key that differs cross (as with item
    // lists): the merge rule picks the same one on both sides.
    out.want = diff.theirs.iter().map(|(kh, _)| *kh).collect();
    out.want.sort_unstable();
    out.want.dedup();
    Some(out)
}

/// A unit of comparison: a range the peer described, with its print (or
/// item list).
enum Theirs {
    Print(Print),
    Items(HashMap<u64, u64>),
}

/// Reads a peer's ranges against our dictionary. The ranges must be sorted
/// and disjoint (the caller checked them with [`valid`]).
pub fn answer(dict: &Dict, ranges: &[Range]) -> Answer {
    // The peer's ranges and parts, flattened into units sorted by `lo`.
    let mut units: Vec<(u64, u64, Theirs)> = Vec::new();
    for r in ranges {
        match r {
            Range::Fingerprint { lo, hi, count, sum } => units.push((
                *lo,
                *hi,
                Theirs::Print(Print {
                    count: *count,
                    sum: *sum,
                }),
            )),
            Range::Split { lo, hi, parts } => {
                for (i, (count, sum)) in parts.iter().enumerate() {
                    let (plo, phi) = part(*lo, *hi, i);
                    let print = Print {
                        count: *count,
                        sum: *sum,
                    };
                    units.push((plo, phi, Theirs::Print(print)));
                }
            }
            Range::Items { lo, hi, items } => {
                units.push((*lo, *hi, Theirs::Items(items.iter().copied().collect())))
            }
        }
    }
    let find = |kh: u64| -> Option<usize> {
        let i = units.partition_point(|u| u.0 <= kh);
        (i > 0 && kh <= units[i - 1].1).then(|| i - 1)
    };
    // First pass: our print per unit. Versions are hashed only where the
    // sums are compared: against a peer that holds nothing in a range (a
    // node joining) or listed its items, the count decides, and hashing a
    // million values first held back the transfer's first byte by 150 ms.
    let mut ours = vec![Print::default(); units.len()];
    for it in items(dict) {
        if let Some(u) = find(it.kh) {
            match units[u].2 {
                Theirs::Print(p) if p.count > 0 => ours[u].add(it.ih()),
                _ => ours[u].count += 1,
            }
        }
    }
    // Decide per unit.
    #[derive(Clone, Copy, PartialEq)]
    enum Plan {
        Done,
        /// Send every item we hold there (the peer holds none).
        SendAll,
        /// Compare with the peer's list.
        Compare,
        /// Send our list.
        List,
        /// Send our parts.
        Split,
    }
    let plans: Vec<Plan> = units
        .iter()
        .zip(&ours)
        .map(|((lo, hi, theirs), mine)| match theirs {
            Theirs::Items(_) => Plan::Compare,
            Theirs::Print(p) if p == mine => Plan::Done,
            Theirs::Print(p) if p.count == 0 => Plan::SendAll,
            Theirs::Print(_) if mine.count as usize <= LIST_MAX || !splittable(*lo, *hi) => {
                Plan::List
            }
            Theirs::Print(_) => Plan::Split,
        })
        .collect();
    if plans.iter().all(|p| *p == Plan::Done) {
        return Answer::default();
    }

    // Second pass: lists, parts and the items to send.
    let mut lists: Vec<Vec<(u64, u64)>> = vec![Vec::new(); units.len()];
    let mut parts: Vec<Vec<Print>> = vec![Vec::new(); units.len()];
    let mut out = Answer::default();
    // Of the peer's listed items, the ones we hold too.
    let mut matched: Vec<std::collections::HashSet<u64>> = vec![Default::default(); units.len()];
    for it in items(dict) {
        let Some(u) = find(it.kh) else { continue };
        match plans[u] {
            Plan::Done => {}
            Plan::SendAll => {
                out.fresh += usize::from(matches!(it.of, Of::Entry(_)));
                out.send.push(it.key.to_vec());
            }
            Plan::List => lists[u].push((it.kh, it.ih())),
            Plan::Split => {
                if parts[u].is_empty() {
                    parts[u] = vec![Print::default(); BRANCH];
                }
                let (lo, hi) = (units[u].0, units[u].1);
                parts[u][part_of(lo, hi, it.kh)].add(it.ih());
            }
            Plan::Compare => {
                let Theirs::Items(theirs) = &units[u].2 else {
                    continue;
                };
                match theirs.get(&it.kh) {
                    Some(ih) if *ih == it.ih() => {
                        matched[u].insert(it.kh);
                    }
                    Some(_) => {
                        // Both hold a version: each sends its own, and the
                        // merge rule picks the same one on both sides.
                        matched[u].insert(it.kh);
                        out.send.push(it.key.to_vec());
                        out.want.push(it.kh);
                    }
                    None => {
                        out.fresh += usize::from(matches!(it.of, Of::Entry(_)));
                        out.send.push(it.key.to_vec());
                    }
                }
            }
        }
    }
    for (u, (lo, hi, theirs)) in units.iter().enumerate() {
        match plans[u] {
            Plan::List => out.ranges.push(Range::Items {
                lo: *lo,
                hi: *hi,
                items: std::mem::take(&mut lists[u]),
            }),
            Plan::Split => out.ranges.push(Range::Split {
                lo: *lo,
                hi: *hi,
                parts: parts[u].iter().map(|p| (p.count, p.sum)).collect(),
            }),
            Plan::Compare => {
                // Their items we do not hold: ask for them.
                let Theirs::Items(theirs) = theirs else {
                    continue;
                };
                let mut missing: Vec<u64> = theirs
                    .keys()
                    .filter(|k| !matched[u].contains(k))
                    .copied()
                    .collect();
                missing.sort_unstable();
                out.want.extend(missing);
            }
            Plan::Done | Plan::SendAll => {}
        }
    }
    out.want.sort_unstable();
    out.want.dedup();
    out
}

/// The keys held whose key hashes are wanted.
pub fn wanted(dict: &Dict, want: &[u64]) -> Vec<Vec<u8>> {
    let want: std::collections::HashSet<u64> = want.iter().copied().collect();
    items(dict)
        .filter(|it| want.contains(&it.kh))
        .map(|it| it.key.to_vec())
        .collect()
}

/// True when ranges are sorted, disjoint, well formed and within the caps.
pub fn valid(ranges: &[Range]) -> bool {
    if ranges.len() > MAX_RANGES {
        return false;
    }
    let mut listed = 0usize;
    let mut last_hi: Option<u64> = None;
    for r in ranges {
        let (lo, hi) = r.bounds();
        if lo > hi || last_hi.is_some_and(|h| lo <= h) {
            return false;
        }
        last_hi = Some(hi);
        match r {
            Range::Split { parts, .. } if parts.len() != BRANCH || !splittable(lo, hi) => {
                return false
            }
            Range::Items { items, .. } => {
                listed += items.len();
                if listed > MAX_LIST || items.iter().any(|(kh, _)| *kh < lo || *kh > hi) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

// ----- encoding -----

fn int(n: u64) -> Value {
    Value::from(n)
}

/// `[RS2P_SYNC, session, [[mode, lo, hi, data], ...]]`: mode 1 a
/// fingerprint `[count, sum]`, 2 a split `[count, sum, count, sum, ...]`, 3
/// an item list `[key hash, version hash, ...]`; the opening message of a
/// session on connect adds a fourth element, the sender's
/// [`Sketch`] as bin (peers that do not know it read the ranges alone).
pub fn encode_sync(session: u64, ranges: &[Range], sketch: Option<&Sketch>) -> Vec<Value> {
    let ranges = ranges
        .iter()
        .map(|r| {
            let (mode, data) = match r {
                Range::Fingerprint { count, sum, .. } => (1, vec![int(*count), int(*sum)]),
                Range::Split { parts, .. } => (
                    2,
                    parts.iter().flat_map(|(c, s)| [int(*c), int(*s)]).collect(),
                ),
                Range::Items { items, .. } => (
                    3,
                    items.iter().flat_map(|(k, h)| [int(*k), int(*h)]).collect(),
                ),
            };
            let (lo, hi) = r.bounds();
            Value::Array(vec![int(mode), int(lo), int(hi), Value::Array(data)])
        })
        .collect();
    let mut payload = vec![
        Value::from(sub::RS2P_SYNC),
        int(session),
        Value::Array(ranges),
    ];
    if let Some(s) = sketch {
        payload.push(Value::Bin(s.encode()));
    }
    payload
}

fn pairs(data: &[Value]) -> Option<Vec<(u64, u64)>> {
    if data.len() % 2 != 0 {
        return None;
    }
    data.chunks_exact(2)
        .map(|c| Some((c[0].as_u64()?, c[1].as_u64()?)))
        .collect()
}

/// A sync message: its session, ranges, and the sender's sketch.
pub type Sync = (u64, Vec<Range>, Option<Sketch>);

/// Reads a sync message (`None` when malformed; a sketch of another size
/// is left out).
pub fn decode_sync(payload: &[Value]) -> Option<Sync> {
    let session = payload.get(1)?.as_u64()?;
    let list = payload.get(2)?.as_array()?;
    if list.len() > MAX_RANGES {
        return None;
    }
    let mut ranges = Vec::with_capacity(list.len());
    for r in list {
        let r = r.as_array()?;
        let (mode, lo, hi) = (
            r.first()?.as_u64()?,
            r.get(1)?.as_u64()?,
            r.get(2)?.as_u64()?,
        );
        let data = pairs(r.get(3)?.as_array()?)?;
        ranges.push(match mode {
            1 if data.len() == 1 => Range::Fingerprint {
                lo,
                hi,
                count: data[0].0,
                sum: data[0].1,
            },
            2 => Range::Split {
                lo,
                hi,
                parts: data,
            },
            3 => Range::Items {
                lo,
                hi,
                items: data,
            },
            _ => return None,
        });
    }
    let sketch = match payload.get(3) {
        Some(Value::Bin(b)) => Sketch::decode_wire(b),
        _ => None,
    };
    Some((session, ranges, sketch))
}

/// `[RS2P_WANT, [key hash, ...]]`.
pub fn encode_want(want: &[u64]) -> Vec<Value> {
    vec![
        Value::from(sub::RS2P_WANT),
        Value::Array(want.iter().map(|k| int(*k)).collect()),
    ]
}

/// Reads a want list (`None` when malformed or over [`MAX_WANT`]).
pub fn decode_want(payload: &[Value]) -> Option<Vec<u64>> {
    let list = payload.get(1)?.as_array()?;
    if list.len() > MAX_WANT {
        return None;
    }
    list.iter().map(Value::as_u64).collect()
}

/// Answers with at least this many new keys for the peer go with a hint
/// ([`encode_expect`]): below it, growing the index as they come costs
/// next to nothing.
pub const EXPECT_MIN: usize = 4096;

/// `[RS2P_EXPECT, count]`: about `count` keys the peer does not hold
/// follow, so that it makes room for them at once.
pub fn encode_expect(count: usize) -> Vec<Value> {
    vec![Value::from(sub::RS2P_EXPECT), int(count as u64)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sync::{Meta, Version, WriteKind};
    use proptest::prelude::*;

    fn dict(keys: impl IntoIterator<Item = (String, i64)>) -> Dict {
        let mut d = Dict::default();
        for (k, v) in keys {
            let meta = Meta {
                owner: b"o".to_vec(),
                timestamp: 100,
            };
            d.apply(
                k.as_bytes(),
                &Value::from(v),
                &meta,
                WriteKind::Store,
                false,
                100,
            )
            .unwrap();
        }
        d
    }

    /// Runs a session between two dictionaries, moving versions across as
    /// the messages say; returns the rounds and the items moved.
    fn reconcile(a: &mut Dict, b: &mut Dict) -> (usize, usize) {
        let mut msg = open(a, false).0;
        let mut rounds = 0;
        let mut moved = 0;
        let (mut from, mut to) = (&mut *a, &mut *b);
        while !msg.is_empty() {
            rounds += 1;
            assert!(rounds < 40, "no end");
            assert!(valid(&msg));
            let ans = answer(to, &msg);
            let mut copy = |src: &Dict, dst: &mut Dict, keys: &[Vec<u8>]| {
                for k in keys {
                    let v = src.version(k).unwrap();
                    let value = src.get(k).unwrap_or(Value::Nil);
                    dst.merge(k, &value, &v, false, 100);
                    moved += 1;
                }
            };
            copy(to, from, &ans.send);
            let want = wanted(from, &ans.want);
            copy(from, to, &want);
            msg = ans.ranges;
            std::mem::swap(&mut from, &mut to);
        }
        (rounds, moved)
    }

    fn contents(d: &Dict) -> Vec<(Vec<u8>, Version)> {
        let mut v: Vec<_> = d.versions().map(|(k, _, ver)| (k.to_vec(), ver)).collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    }

    #[test]
    fn a_few_differences_among_many_keys_take_a_few_rounds() {
        let mut a = dict((0..20_000).map(|i| (format!("k{i}"), i)));
        let mut b =
            dict((0..20_000).map(|i| (format!("k{i}"), if i % 1000 == 7 { -1 } else { i })));
        let meta = Meta {
            owner: b"p".to_vec(),
            timestamp: 200,
        };
        b.apply(
            b"only-b",
            &Value::from(1),
            &meta,
            WriteKind::Store,
            false,
            200,
        )
        .unwrap();
        let (rounds, moved) = reconcile(&mut a, &mut b);
        assert_eq!(contents(&a), contents(&b));
        assert!(rounds <= 6, "{rounds} rounds");
        assert!(moved <= 3 * 21, "{moved} items moved for 21 differences");
    }

    #[test]
    fn encoding_round_trips() {
        let ranges = vec![
            Range::Fingerprint {
                lo: 0,
                hi: 5,
                count: 1,
                sum: u64::MAX,
            },
            Range::Split {
                lo: 6,
                hi: 1000,
                parts: vec![(1, 2); BRANCH],
            },
            Range::Items {
                lo: 1001,
                hi: u64::MAX,
                items: vec![(2000, 3)],
            },
        ];
        assert!(valid(&ranges));
        assert_eq!(
            decode_sync(&encode_sync(9, &ranges, None)),
            Some((9, ranges.clone(), None))
        );
        let mut sketch = Sketch::default();
        sketch.insert(1, 2);
        assert_eq!(
            decode_sync(&encode_sync(9, &ranges, Some(&sketch))),
            Some((9, ranges, Some(sketch)))
        );
        assert_eq!(
            decode_want(&encode_want(&[1, u64::MAX])),
            Some(vec![1, u64::MAX])
        );
        let overlapping = vec![
            Range::Items {
                lo: 0,
                hi: 10,
                items: vec![],
            },
            Range::Items {
                lo: 10,
                hi: 20,
                items: vec![],
            },
        ];
        assert!(!valid(&overlapping));
    }

    proptest! {
        /// Whatever the two sides hold, one session leaves them identical.
        #[test]
        fn any_two_dictionaries_end_identical(
            a in proptest::collection::vec((0u16..300, 0i64..3), 0..200),
            b in proptest::collection::vec((0u16..300, 0i64..3), 0..200),
        ) {
            let mut da = dict(a.into_iter().map(|(k, v)| (format!("k{k}"), v)));
            let mut db = dict(b.into_iter().map(|(k, v)| (format!("k{k}"), v)));
            reconcile(&mut da, &mut db);
            prop_assert_eq!(contents(&da), contents(&db));
        }
    }
}
