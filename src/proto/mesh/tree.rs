//! The broadcast tree between rs2p peers (PlumTree's idea, on the links the
//! mesh already has): broadcasts are pushed eagerly on tree links only, and
//! their ids announced lazily (batched) on the other rs2p links. A node that
//! receives a copy twice prunes the link the duplicate came on out of the
//! tree (both ends stop pushing on it); one that hears of an id it has not
//! received within [`GRAFT_AFTER`] grafts the announcing link back into the
//! tree and gets the message over it. The tree so settles on the links that
//! deliver first, and repairs itself when links die.
//!
//! Only links to rs2p nodes whose handshake carries
//! [`compression::RS2P_TREE`](crate::wire::flags::compression::RS2P_TREE)
//! take part; py2p and js2p peers get every broadcast pushed, as before.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use rand::RngCore;

use super::Mesh;
use crate::proto::seen::fingerprint;
use crate::proto::{ConnId, Now};
use crate::value::Value;
use crate::wire::flags::sub;
use crate::wire::packet::TreeIds;
use crate::wire::Packed;

/// A broadcast's id as announcements and grafts carry it: its first 8
/// bytes (see [`fingerprint`]).
pub type Fingerprint = u64;

/// Announcements wait this long to be sent together: they are for repair,
/// and each costs a frame per link out of the tree.
pub const ANNOUNCE_AFTER: Duration = Duration::from_millis(100);
/// The gap between two announcement batches on a link doubles after each
/// batch the peer did not graft from, up to this. In a settled tree every
/// announcement is redundant (at 16 nodes they were most of the frames
/// and of the CPU per write); a graft on the link, or any change of the
/// tree at this node, brings the gap back to [`ANNOUNCE_AFTER`].
pub const MAX_ANNOUNCE_GAP: Duration = Duration::from_secs(2);
/// A tree link that has delivered a first copy of some broadcast leaves the
/// tree only after this many duplicates in a row (a first copy on it starts
/// the count again); one that never did leaves at its first duplicate.
///
/// With several writers a link is the fastest path for some of them and a
/// redundant one for others. Pruning it at its first duplicate cut the tree
/// apart again and again: grafts put links back, the cycles they closed
/// brought duplicates, and those pruned other links (at 1,000 simulated
/// nodes, all writing: 52k grafts, rmr 0.55). Links that only ever bring
/// duplicates still leave at once, so one writer's tree forms as fast as
/// before. Measured with `rs2p-sim --nodes 1000 --writes 300 --writers
/// all`: rmr 0.55 at 1, 0.36-0.43 at 8, 0.33-0.37 at 16, 0.32 at 32 (but
/// 0.84 at 16 nodes, where the tree formed too slowly).
pub const PRUNE_USEFUL_AFTER: u32 = 16;
/// An announced message not received this long after the announcement is
/// grafted from its announcer.
pub const GRAFT_AFTER: Duration = Duration::from_millis(150);
/// Messages kept for grafts: at most this many, this many bytes, this long.
const CACHE_COUNT: usize = 8192;
const CACHE_BYTES: usize = 32 << 20;
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Announced ids waited for, at most.
const MAX_MISSING: usize = 8192;
/// Ids in one announcement or graft, at most.
pub const MAX_IDS: usize = 1024;

/// A broadcast's short id, as announcements and grafts to compact peers
/// carry it: the first 4 bytes of its id (the low half of its
/// [`Fingerprint`]). Two recent broadcasts sharing one cost at worst a
/// graft answered with the other (dropped as a duplicate) or an
/// announcement taken as held, which the periodic reconciliation makes up.
pub type ShortId = u32;

fn short(id: Fingerprint) -> ShortId {
    // Truncation intended: the low half is the id's first 4 bytes.
    id as ShortId
}

/// Short ids of the broadcasts delivered in the last [`CACHE_FOR`] (at most
/// [`RECENT_COUNT`]): what a short announcement is checked against.
const RECENT_COUNT: usize = 1 << 16;

/// Recent broadcasts by short id, for grafts.
#[derive(Default)]
pub(super) struct Cache {
    order: VecDeque<(ShortId, Duration, usize)>,
    by_id: HashMap<ShortId, Packed>,
    bytes: usize,
}

impl Cache {
    pub(super) fn put(&mut self, packed: &Packed, now: Duration) {
        let id = short(fingerprint(&packed.id()));
        if self.by_id.contains_key(&id) {
            return;
        }
        let len = packed.body().len();
        self.by_id.insert(id, packed.clone());
        self.order.push_back((id, now, len));
        self.bytes += len;
        while self.order.len() > CACHE_COUNT
            || self.bytes > CACHE_BYTES
            || self
                .order
                .front()
                .is_some_and(|(_, t, _)| now.saturating_sub(*t) > CACHE_FOR)
        {
            let Some((old, _, n)) = self.order.pop_front() else {
                break;
            };
            self.by_id.remove(&old);
            self.bytes -= n;
        }
    }

    fn get_short(&self, id: ShortId) -> Option<&Packed> {
        self.by_id.get(&id)
    }

    fn get(&self, id: Fingerprint) -> Option<&Packed> {
        self.get_short(short(id))
            .filter(|p| fingerprint(&p.id()) == id)
    }
}

/// The short ids of recent deliveries, with the second each came (8 bytes
/// an entry in each of the two).
#[derive(Default)]
pub(super) struct Recent {
    order: VecDeque<(ShortId, u32)>,
    last: HashMap<ShortId, u32>,
}

impl Recent {
    fn put(&mut self, id: ShortId, now: Duration) {
        let now = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
        self.last.insert(id, now);
        self.order.push_back((id, now));
        let keep = CACHE_FOR.as_secs() as u32;
        while self.order.len() > RECENT_COUNT
            || self
                .order
                .front()
                .is_some_and(|(_, t)| now.saturating_sub(*t) > keep)
        {
            let Some((old, t)) = self.order.pop_front() else {
                break;
            };
            if self.last.get(&old) == Some(&t) {
                self.last.remove(&old);
            }
        }
    }

    fn contains(&self, id: ShortId) -> bool {
        self.last.contains_key(&id)
    }
}

/// An announced message not received yet: who announced it, when to graft
/// it from the next of them, and its fingerprint when an announcer gave it
/// whole (a peer without compact frames needs it whole in a graft).
pub(super) struct Missing {
    announcers: Vec<ConnId>,
    due: Duration,
    full: Option<Fingerprint>,
    /// The last announcer grafted.
    asked: Option<ConnId>,
}

/// The tree's state on one node.
#[derive(Default)]
pub(super) struct Tree {
    pub(super) cache: Cache,
    pub(super) recent: Recent,
    pub(super) missing: BTreeMap<ShortId, Missing>,
    /// Links where a graft found a gap: the peer asked for a broadcast we
    /// no longer hold, or no announcer of one sent it to us. The node
    /// reconciles them at once (see [`Mesh::take_gaps`]).
    gaps: Vec<ConnId>,
}

impl Mesh {
    /// Whether a broadcast goes to `conn` in full (else it is announced).
    pub(crate) fn eager(&self, conn: ConnId) -> bool {
        self.links.get(&conn).is_none_or(|c| !(c.tree && c.lazy))
    }

    /// Notes an id to announce to a lazy tree link.
    pub(super) fn announce(&mut self, conn: ConnId, id: Fingerprint, now: Now) {
        let Some(c) = self.links.get_mut(&conn) else {
            return;
        };
        c.announce.push(id);
        if c.announce_at.is_none() {
            // Up to a quarter of the gap later, at random. Due exactly a gap
            // after the first id, the batches of a program writing at a
            // steady rate whose period divides the gap (every 50 ms, say)
            // went out in the very millisecond a later write arrived, on
            // every node at once (they all noted the same write first): a
            // burst of announcements on every link in that write's way.
            let gap = c.announce_gap;
            let spread = u64::try_from(gap.as_micros() / 4).unwrap_or(u64::MAX);
            let jitter = Duration::from_micros(self.rng.next_u64() % spread.saturating_add(1));
            c.announce_at = Some(now.elapsed + gap + jitter);
        }
    }

    /// The tree changed at this node (a prune, a graft, a tree link lost):
    /// peers around may now miss broadcasts, so announcements go out at
    /// the shortest gap again.
    pub(super) fn tree_changed(&mut self, now: Now) {
        for c in self.links.values_mut().filter(|c| c.tree) {
            c.announce_gap = ANNOUNCE_AFTER;
            if let Some(at) = c.announce_at.as_mut() {
                *at = (*at).min(now.elapsed + ANNOUNCE_AFTER);
            }
        }
    }

    /// A link in the tree was lost (its connection closed). A node left
    /// with no link in the tree grafts back every rs2p link out of it (the
    /// duplicates that follow prune the extra ones again), rather than
    /// hear of broadcasts only from the few peers announcing to it.
    pub(super) fn tree_link_lost(&mut self, now: Now) {
        self.tree_changed(now);
        if self.eager_tree_links(ConnId::MAX) > 0 {
            return;
        }
        let lazy: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, c)| c.tree && c.lazy)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in lazy {
            if let Some(c) = self.links.get_mut(&conn) {
                c.lazy = false;
            }
            self.stats.tree_grafts += 1;
            let payload = self.ids_payload(conn, sub::RS2P_GRAFT, &[]);
            self.link_local(conn, &payload, now);
        }
    }

    /// Tree links still in the tree, other than `except`.
    fn eager_tree_links(&self, except: ConnId) -> usize {
        self.links
            .iter()
            .filter(|(id, c)| **id != except && c.tree && !c.lazy)
            .count()
    }

    /// A copy of a broadcast we already had came on `conn`: the link leaves
    /// the tree at both ends — unless it is our last link in the tree (a
    /// node keeps one, or it would hear of broadcasts only through
    /// announcements and grafts while the tree forms), or it has delivered
    /// a first copy before and has not yet brought [`PRUNE_USEFUL_AFTER`]
    /// duplicates in a row.
    pub(super) fn duplicate_from(&mut self, conn: ConnId, now: Now) {
        if !self.links.get(&conn).is_some_and(|c| c.tree && !c.lazy)
            || self.eager_tree_links(conn) == 0
        {
            return;
        }
        let Some(c) = self.links.get_mut(&conn) else {
            return;
        };
        c.dup_streak += 1;
        let needed = if c.delivered_first {
            PRUNE_USEFUL_AFTER
        } else {
            1
        };
        if c.dup_streak < needed {
            return;
        }
        c.dup_streak = 0;
        c.lazy = true;
        self.stats.tree_prunes += 1;
        self.link_local(conn, &[Value::from(sub::RS2P_PRUNE)], now);
        self.tree_changed(now);
    }

    /// A broadcast was received (or sent) for the first time; `announced`
    /// when its id goes to at least one lazy link. Only those are kept for
    /// grafts: a graft asks the announcer (a node with no lazy link, alone
    /// or among py2p and js2p peers, keeps nothing). Its short id is kept
    /// when `compact_peers` may announce it.
    pub(super) fn delivered(
        &mut self,
        packed: &Packed,
        announced: bool,
        compact_peers: bool,
        now: Now,
    ) {
        let id = short(fingerprint(&packed.id()));
        self.tree.missing.remove(&id);
        if compact_peers {
            self.tree.recent.put(id, now.elapsed);
        }
        if announced {
            self.tree.cache.put(packed, now.elapsed);
        }
    }

    /// The peer on `conn` pruned us: stop pushing to it — unless that
    /// leaves us no link in the tree, when we graft it straight back.
    pub(super) fn on_prune(&mut self, conn: ConnId, now: Now) {
        if !self.links.get(&conn).is_some_and(|c| c.tree) {
            return;
        }
        if self.eager_tree_links(conn) == 0 {
            self.stats.tree_grafts += 1;
            let payload = self.ids_payload(conn, sub::RS2P_GRAFT, &[]);
            return self.link_local(conn, &payload, now);
        }
        if let Some(c) = self.links.get_mut(&conn) {
            c.lazy = true;
        }
        self.tree_changed(now);
    }

    /// The peer on `conn` announced ids.
    pub(super) fn on_ihave(&mut self, conn: ConnId, ids: TreeIds, now: Now) {
        let Some(c) = self.links.get_mut(&conn).filter(|c| c.tree) else {
            return;
        };
        // (short id, whole fingerprint when given, held here already)
        let named: Vec<(ShortId, Option<Fingerprint>, bool)> = match ids {
            TreeIds::Full(ids) => ids
                .into_iter()
                .map(|id| {
                    let held =
                        self.seen.contains_fingerprint(id) || self.tree.cache.get(id).is_some();
                    (short(id), Some(id), held)
                })
                .collect(),
            TreeIds::Short(ids) => ids
                .into_iter()
                .map(|id| {
                    let held =
                        self.tree.recent.contains(id) || self.tree.cache.get_short(id).is_some();
                    (id, None, held)
                })
                .collect(),
        };
        // What the peer announces it has need not be announced to it.
        if !c.announce.is_empty() {
            let theirs: HashSet<ShortId> = named.iter().map(|(id, _, _)| *id).collect();
            c.announce.retain(|id| !theirs.contains(&short(*id)));
        }
        for (id, full, held) in named {
            if held {
                continue;
            }
            if let Some(m) = self.tree.missing.get_mut(&id) {
                if !m.announcers.contains(&conn) && m.announcers.len() < 8 {
                    m.announcers.push(conn);
                }
                m.full = m.full.or(full);
            } else if self.tree.missing.len() < MAX_MISSING {
                self.tree.missing.insert(
                    id,
                    Missing {
                        announcers: vec![conn],
                        due: now.elapsed + GRAFT_AFTER,
                        full,
                        asked: None,
                    },
                );
            }
        }
    }

    /// The peer on `conn` grafts us: push to it again, and send it the
    /// messages it asks for that we still hold.
    pub(super) fn on_graft(&mut self, conn: ConnId, ids: TreeIds, now: Now) {
        let Some(c) = self.links.get_mut(&conn).filter(|c| c.tree) else {
            return;
        };
        c.lazy = false;
        self.tree_changed(now);
        let (asked, wanted): (usize, Vec<Packed>) = match ids {
            TreeIds::Full(ids) => (
                ids.len(),
                ids.into_iter()
                    .filter_map(|id| self.tree.cache.get(id).cloned())
                    .collect(),
            ),
            TreeIds::Short(ids) => (
                ids.len(),
                ids.into_iter()
                    .filter_map(|id| self.tree.cache.get_short(id).cloned())
                    .collect(),
            ),
        };
        if wanted.len() < asked {
            self.tree.gaps.push(conn);
        }
        for packed in wanted {
            self.tell_neighbours(conn, now);
            self.send_packed(conn, &packed, now);
        }
    }

    /// `[flag, ids]` for the peer on `conn`: short ids to a compact peer.
    fn ids_payload(&self, conn: ConnId, flag: u8, ids: &[Fingerprint]) -> [Value; 2] {
        let compact = self.links.get(&conn).is_some_and(|c| c.bare);
        [Value::from(flag), TreeIds::to_value(ids, compact)]
    }

    /// The links where grafts found gaps since the last call, each once.
    pub(crate) fn take_gaps(&mut self) -> Vec<ConnId> {
        let mut gaps = std::mem::take(&mut self.tree.gaps);
        gaps.sort_unstable();
        gaps.dedup();
        gaps.retain(|c| self.links.contains_key(c));
        gaps
    }

    /// When the tree's timers are next due.
    pub(super) fn tree_timeout(&self) -> Option<Duration> {
        let graft = self.tree.missing.values().map(|m| m.due).min();
        let announce = self.links.values().filter_map(|c| c.announce_at).min();
        match (graft, announce) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends pending announcements, and grafts what is overdue.
    pub(super) fn tree_timers(&mut self, now: Now) {
        let t = now.elapsed;
        let pending: Vec<(ConnId, Vec<Fingerprint>)> = self
            .links
            .iter_mut()
            .filter(|(_, c)| c.announce_at.is_some_and(|at| at <= t))
            .map(|(conn, c)| {
                c.announce_at = None;
                c.announce_gap = (c.announce_gap * 2).min(MAX_ANNOUNCE_GAP);
                (*conn, std::mem::take(&mut c.announce))
            })
            .collect();
        for (conn, ids) in pending {
            for chunk in ids.chunks(MAX_IDS) {
                self.stats.tree_announcements += 1;
                let payload = self.ids_payload(conn, sub::RS2P_IHAVE, chunk);
                self.link_local(conn, &payload, now);
            }
        }
        let overdue: Vec<ShortId> = self
            .tree
            .missing
            .iter()
            .filter(|(_, m)| m.due <= t)
            .map(|(id, _)| *id)
            .collect();
        // One graft per announcer, naming everything asked of it: a node
        // that falls behind (a burst, its input held back while a peer's
        // queue drains) may have thousands of ids overdue at once.
        let mut grafts: BTreeMap<ConnId, Vec<Fingerprint>> = BTreeMap::new();
        for id in overdue {
            let Some(m) = self.tree.missing.get_mut(&id) else {
                continue;
            };
            // The next announcer still connected that can be asked: by
            // the short id if it reads compact frames, else by the whole
            // fingerprint (which such a peer's announcement gave).
            let next = loop {
                if m.announcers.is_empty() {
                    break None;
                }
                let c = m.announcers.remove(0);
                match self.links.get(&c) {
                    Some(l) if l.bare => break Some((c, u64::from(id))),
                    Some(_) => {
                        if let Some(full) = m.full {
                            break Some((c, full));
                        }
                    }
                    None => {}
                }
            };
            match next {
                Some((conn, asked)) => {
                    m.due = t + GRAFT_AFTER;
                    m.asked = Some(conn);
                    grafts.entry(conn).or_default().push(asked);
                }
                None => {
                    if let Some(conn) = m.asked {
                        self.tree.gaps.push(conn);
                    }
                    self.tree.missing.remove(&id);
                }
            }
        }
        if grafts.is_empty() {
            return;
        }
        self.tree_changed(now);
        for (conn, ids) in grafts {
            if let Some(c) = self.links.get_mut(&conn) {
                c.lazy = false;
            }
            for chunk in ids.chunks(MAX_IDS) {
                self.stats.tree_grafts += 1;
                let payload = self.ids_payload(conn, sub::RS2P_GRAFT, chunk);
                self.link_local(conn, &payload, now);
            }
        }
    }
}
