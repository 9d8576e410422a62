//! A fixed-size invertible Bloom lookup table (IBLT) of a dictionary's
//! items `(key hash, version hash)`: the first message of a reconciliation
//! on connect carries one, and a peer whose dictionary differs by up to a
//! few hundred items finds every difference in that one message.
//!
//! Each item is added to [`HASHES`] cells, one in each third of the table
//! (so always three distinct cells): the cell counts it and XORs in its
//! key hash, version hash and a 32-bit check of both. Subtracting the
//! peer's table from ours cell by cell cancels every item both hold; what
//! is left is the symmetric difference, which [`Sketch::decode`] peels: a
//! cell holding exactly one item (count ±1 and a matching check) names
//! it, and removing it from its other cells frees more. When too many
//! items differ the peeling stalls, decoding fails, and the session goes
//! on with range fingerprints ([`reconcile`](super::reconcile)), whose
//! cost also grows with the difference.
//!
//! The table costs [`CELLS`] × 24 bytes on the wire (12 KiB) and one scan
//! of the dictionary on each side; with three hashes it decodes with high
//! probability up to about `CELLS / 1.3` differing items (a key whose
//! version differs counts twice: one item on each side).

/// Cells in a sketch. Fixed: a sketch of any other size is not read.
pub const CELLS: usize = 512;
/// Cells each item is added to (one per third of the table).
pub const HASHES: usize = 3;
/// Bytes of one encoded cell: count (i32), key hash, version hash (u64),
/// check (u32), little-endian.
const CELL_BYTES: usize = 24;
/// Bytes of an encoded sketch.
pub const ENCODED_LEN: usize = CELLS * CELL_BYTES;

const PART: usize = CELLS / HASHES;

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Cell {
    count: i32,
    kh: u64,
    ih: u64,
    check: u32,
}

impl Cell {
    fn is_empty(&self) -> bool {
        *self == Cell::default()
    }
}

/// The splitmix64 finaliser: a fixed, well-mixing 64-bit permutation
/// (every node must place items in the same cells).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn check_of(kh: u64, ih: u64) -> u32 {
    (mix(kh ^ mix(ih ^ 0x5bd1_e995)) >> 32) as u32
}

fn cells_of(kh: u64, ih: u64) -> [usize; HASHES] {
    let base = mix(kh.wrapping_add(mix(ih)));
    let mut out = [0; HASHES];
    for (j, slot) in out.iter_mut().enumerate() {
        let h = mix(base ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(j as u64 + 1)));
        *slot = j * PART + (h % PART as u64) as usize;
    }
    out
}

/// An IBLT of `(key hash, version hash)` items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sketch {
    cells: Vec<Cell>,
}

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch {
            cells: vec![Cell::default(); CELLS],
        }
    }
}

/// The two sides of a decoded difference.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Difference {
    /// Items held by the side that subtracted the other's sketch only.
    pub ours: Vec<(u64, u64)>,
    /// Items held by the other side only.
    pub theirs: Vec<(u64, u64)>,
}

impl Sketch {
    fn toggle(&mut self, kh: u64, ih: u64, sign: i32) {
        let check = check_of(kh, ih);
        for i in cells_of(kh, ih) {
            let c = &mut self.cells[i];
            c.count = c.count.wrapping_add(sign);
            c.kh ^= kh;
            c.ih ^= ih;
            c.check ^= check;
        }
    }

    /// Adds an item.
    pub fn insert(&mut self, kh: u64, ih: u64) {
        self.toggle(kh, ih, 1);
    }

    /// The sketch of a set of items.
    pub fn of(items: impl IntoIterator<Item = (u64, u64)>) -> Sketch {
        let mut s = Sketch::default();
        for (kh, ih) in items {
            s.insert(kh, ih);
        }
        s
    }

    /// Takes `other` away, cell by cell: what is left holds the items only
    /// `self` holds (counted +1) and those only `other` holds (−1).
    pub fn subtract(&mut self, other: &Sketch) {
        for (c, o) in self.cells.iter_mut().zip(&other.cells) {
            c.count = c.count.wrapping_sub(o.count);
            c.kh ^= o.kh;
            c.ih ^= o.ih;
            c.check ^= o.check;
        }
    }

    /// Peels a subtracted sketch into the two sides of the difference;
    /// `None` when it does not decode (too many differences).
    pub fn decode(mut self) -> Option<Difference> {
        let mut out = Difference::default();
        let pure = |c: &Cell| (c.count == 1 || c.count == -1) && c.check == check_of(c.kh, c.ih);
        let mut queue: Vec<usize> = (0..CELLS).filter(|i| pure(&self.cells[*i])).collect();
        // Each peel removes one item from the table; a table of `CELLS`
        // cells with `HASHES` per item cannot hold more than this many
        // items without some cell overflowing its meaning, so this bounds
        // the work whatever a peer sent.
        let mut budget = CELLS * HASHES;
        while let Some(i) = queue.pop() {
            let c = self.cells[i];
            if !pure(&c) {
                continue;
            }
            if budget == 0 {
                return None;
            }
            budget -= 1;
            if c.count == 1 {
                out.ours.push((c.kh, c.ih));
            } else {
                out.theirs.push((c.kh, c.ih));
            }
            self.toggle(c.kh, c.ih, -c.count);
            for j in cells_of(c.kh, c.ih) {
                if pure(&self.cells[j]) {
                    queue.push(j);
                }
            }
        }
        self.cells.iter().all(Cell::is_empty).then_some(out)
    }

    /// The wire form: [`ENCODED_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        for c in &self.cells {
            out.extend_from_slice(&c.count.to_le_bytes());
            out.extend_from_slice(&c.kh.to_le_bytes());
            out.extend_from_slice(&c.ih.to_le_bytes());
            out.extend_from_slice(&c.check.to_le_bytes());
        }
        out
    }

    /// Reads the wire form; `None` unless it is exactly [`ENCODED_LEN`]
    /// bytes.
    pub fn decode_wire(bytes: &[u8]) -> Option<Sketch> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let cells = bytes
            .chunks_exact(CELL_BYTES)
            .map(|b| {
                let (count, rest) = b.split_at(4);
                let (kh, rest) = rest.split_at(8);
                let (ih, check) = rest.split_at(8);
                Some(Cell {
                    count: i32::from_le_bytes(count.try_into().ok()?),
                    kh: u64::from_le_bytes(kh.try_into().ok()?),
                    ih: u64::from_le_bytes(ih.try_into().ok()?),
                    check: u32::from_le_bytes(check.try_into().ok()?),
                })
            })
            .collect::<Option<Vec<Cell>>>()?;
        Some(Sketch { cells })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(range: std::ops::Range<u64>, version: u64) -> Vec<(u64, u64)> {
        range.map(|i| (mix(i + 1), mix(i ^ version))).collect()
    }

    #[test]
    fn the_difference_of_two_large_sets_decodes() {
        // 100 keys whose versions differ, 20 only on one side, 30 only on
        // the other, among 50,000 shared.
        let shared = items(0..50_000, 1);
        let mut a = shared.clone();
        let mut b = shared;
        let a_new = items(0..100, 2);
        let b_old = items(0..100, 1);
        a.retain(|it| !b_old.contains(it));
        a.extend(&a_new);
        let a_only = items(60_000..60_020, 1);
        let b_only = items(70_000..70_030, 1);
        a.extend(&a_only);
        b.extend(&b_only);
        let mut sa = Sketch::of(a.iter().copied());
        let sb = Sketch::decode_wire(&Sketch::of(b.iter().copied()).encode()).unwrap();
        sa.subtract(&sb);
        let mut d = sa.decode().expect("decodes");
        d.ours.sort_unstable();
        d.theirs.sort_unstable();
        let mut want_ours: Vec<_> = a_new.iter().chain(&a_only).copied().collect();
        let mut want_theirs: Vec<_> = b_old.iter().chain(&b_only).copied().collect();
        want_ours.sort_unstable();
        want_theirs.sort_unstable();
        assert_eq!(d.ours, want_ours);
        assert_eq!(d.theirs, want_theirs);
    }

    #[test]
    fn equal_sets_decode_to_nothing_and_too_many_differences_do_not_decode() {
        let a = Sketch::of(items(0..1000, 1));
        let mut same = a.clone();
        same.subtract(&a);
        assert_eq!(same.decode(), Some(Difference::default()));
        let mut far = a.clone();
        far.subtract(&Sketch::of(items(0..1000, 2)));
        assert_eq!(far.decode(), None, "2,000 differing items in 512 cells");
    }

    #[test]
    fn only_the_exact_size_is_read() {
        assert!(Sketch::decode_wire(&[0; ENCODED_LEN - 1]).is_none());
        assert!(Sketch::decode_wire(&[0; ENCODED_LEN + 24]).is_none());
        assert_eq!(
            Sketch::decode_wire(&[0; ENCODED_LEN]),
            Some(Sketch::default())
        );
    }

    #[test]
    fn garbage_never_loops_or_panics() {
        // Arbitrary cells: decoding ends (the peel budget), whatever it
        // says.
        let mut bytes = vec![0u8; ENCODED_LEN];
        let mut x = 7u64;
        for b in bytes.iter_mut() {
            x = mix(x);
            *b = x as u8;
        }
        let s = Sketch::decode_wire(&bytes).unwrap();
        let _ = s.decode();
    }
}
