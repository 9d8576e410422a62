//! Anti-entropy between rs2p peers: reconciliation sessions (see
//! [`reconcile`](crate::proto::reconcile)) when a peer joins, every
//! [`RECONCILE_EVERY`] (plus up to [`RECONCILE_JITTER`]), and at once with
//! every other rs2p peer when a peer is lost — its neighbours may each hold
//! a different part of its last writes. Versions cross whatever their age:
//! a write older than the 60 s broadcast window still arrives.

use std::collections::HashMap;
use std::time::Duration;

use super::{Replica, Room, Transfer, TRANSFER_BATCH};
use crate::proto::dict::key_hash;
use crate::proto::mesh::Mesh;
use crate::proto::reconcile::{self, Range, MAX_LIST, MAX_RANGES, MAX_WANT};
use crate::proto::sketch::Sketch;
use crate::proto::{ConnId, Now};
use crate::value::Value;

/// How often each rs2p link is reconciled (by its dialling side).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Up to this much is added to each period, so links do not all reconcile
/// at once.
pub const RECONCILE_JITTER: Duration = Duration::from_secs(5);
/// Messages one session may take, each way.
pub const MAX_ROUNDS: u32 = 64;
/// A node opens at most one session a second on a link: one asked for
/// sooner (a graft's gap, a second peer lost, the periodic round) waits for
/// that second to pass, so a partition that takes fifty peers at once costs
/// each link two sessions, not fifty passes over the dictionary.
const MIN_SESSION_GAP: Duration = Duration::from_secs(1);
/// A peer's sessions closer together than this on one link are not
/// answered (half the gap honest nodes keep, for the network's jitter).
const MIN_THEIR_GAP: Duration = Duration::from_millis(500);
/// Reconciliation messages (ranges or want lists) a peer may send us at
/// once: each costs a pass over the dictionary, so past this they are
/// taken at [`BUDGET_EVERY`] only. A session's worth ([`MAX_ROUNDS`]):
/// nodes that mostly agree exchange a few messages a session, and the
/// largest honest burst, one round of item lists between two dictionaries
/// of a million keys that all differ, is about 62 (at
/// [`MAX_LIST`](crate::proto::reconcile::MAX_LIST) items each). What is
/// refused is found by a later round.
pub const BUDGET_BURST: u32 = MAX_ROUNDS;
/// One more reconciliation message is taken per link this often, past the
/// burst (honest links average one every few seconds: a session per
/// [`RECONCILE_EVERY`]).
pub const BUDGET_EVERY: Duration = Duration::from_millis(500);

struct Session {
    id: u64,
    rounds: u32,
    opened: Duration,
}

/// The sessions of one node.
#[derive(Default)]
pub(super) struct Sessions {
    /// Sessions we opened, and sessions the peer opened, per link.
    ours: HashMap<ConnId, Session>,
    theirs: HashMap<ConnId, Session>,
    next_id: u64,
    /// When the next periodic round is due.
    next_round: Option<Duration>,
    /// State of the jitter's generator (seeded from our id, so a node's
    /// schedule is the same in every run).
    jitter: u64,
    /// Per link, when its budget of reconciliation messages is next whole
    /// (a virtual arrival time: a message is taken while this is at most
    /// `BUDGET_BURST - 1` periods ahead of now).
    budget: HashMap<ConnId, Duration>,
    /// Per link, when we last opened a session on it.
    opened: HashMap<ConnId, Duration>,
    /// Per link, when a session asked for too soon after the last opens.
    deferred: HashMap<ConnId, Duration>,
}

impl Sessions {
    /// Takes one reconciliation message from the peer on `conn` out of its
    /// budget; false when the budget is spent.
    fn admit(&mut self, conn: ConnId, now: Duration) -> bool {
        let full = self.budget.entry(conn).or_insert(now);
        let from = (*full).max(now);
        if from - now > BUDGET_EVERY * (BUDGET_BURST - 1) {
            return false;
        }
        *full = from + BUDGET_EVERY;
        true
    }

    fn jittered(&mut self, mesh: &Mesh, now: Now) -> Duration {
        if self.jitter == 0 {
            self.jitter = key_hash(mesh.id()) | 1;
        }
        // splitmix64
        self.jitter = self.jitter.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let extra = RECONCILE_JITTER.as_millis() as u64;
        now.elapsed + RECONCILE_EVERY + Duration::from_millis(z % extra.max(1))
    }
}

impl Replica {
    /// Opens a reconciliation session with the rs2p peer on `conn`; on
    /// connect (`with_sketch`) its first message carries a sketch of our
    /// items, so a peer that differs in a few hundred items at most finds
    /// them all at once, whatever the size of the dictionary. Periodic and
    /// peer-lost sessions, which mostly find nothing, send ranges only.
    /// A session asked for within [`MIN_SESSION_GAP`] of the last one we
    /// opened on the link opens once that gap has passed (without sketch).
    pub(crate) fn open_session(
        &mut self,
        mesh: &mut Mesh,
        conn: ConnId,
        with_sketch: bool,
        now: Now,
    ) {
        if self.sessions.next_round.is_none() {
            self.sessions.next_round = Some(self.sessions.jittered(mesh, now));
        }
        if let Some(&last) = self.sessions.opened.get(&conn) {
            if now.elapsed.saturating_sub(last) < MIN_SESSION_GAP {
                self.sessions.deferred.insert(conn, last + MIN_SESSION_GAP);
                return;
            }
        }
        self.sessions.deferred.remove(&conn);
        self.sessions.opened.insert(conn, now.elapsed);
        self.sessions.next_id += 1;
        let id = self.sessions.next_id;
        self.sessions.ours.insert(
            conn,
            Session {
                id,
                rounds: 1,
                opened: now.elapsed,
            },
        );
        let (ranges, sketch) = reconcile::open(&self.lock(), with_sketch);
        send_sync(mesh, conn, id, &ranges, sketch.as_ref(), now);
    }

    /// A graft found a gap on `conn`: the broadcast tree could not make up
    /// a broadcast (a burst outran the announcers' caches, an announcer
    /// left). Reconciles with that peer now rather than at the next round
    /// (or a second after the last session on the link).
    pub(crate) fn reconcile_gap(&mut self, mesh: &mut Mesh, conn: ConnId, now: Now) {
        if !mesh.reconciles(conn) {
            return;
        }
        self.open_session(mesh, conn, false, now);
    }

    /// A reconciliation message from the peer on `conn`.
    pub(crate) fn on_sync(&mut self, mesh: &mut Mesh, conn: ConnId, payload: &[Value], now: Now) {
        if !mesh.reconciles(conn) {
            return;
        }
        if !self.sessions.admit(conn, now.elapsed) {
            mesh.reconciliation_refused(conn, "reconciliation messages over the link's budget");
            return;
        }
        let Some((id, ranges, sketch)) =
            reconcile::decode_sync(payload).filter(|(_, r, _)| reconcile::valid(r))
        else {
            mesh.reconciliation_refused(conn, "malformed reconciliation message");
            return;
        };
        let s = &mut self.sessions;
        let session = match s.ours.get_mut(&conn) {
            Some(ours) if ours.id == id => ours,
            _ => {
                let fresh = match s.theirs.get(&conn) {
                    Some(t) if t.id == id => false,
                    Some(t) if now.elapsed.saturating_sub(t.opened) < MIN_THEIR_GAP => {
                        mesh.reconciliation_refused(
                            conn,
                            "reconciliation sessions opened too fast",
                        );
                        return;
                    }
                    _ => true,
                };
                if fresh {
                    s.theirs.insert(
                        conn,
                        Session {
                            id,
                            rounds: 0,
                            opened: now.elapsed,
                        },
                    );
                }
                s.theirs.get_mut(&conn).expect("inserted or present")
            }
        };
        session.rounds += 1;
        if session.rounds > MAX_ROUNDS {
            mesh.reconciliation_refused(conn, "reconciliation session over its rounds");
            return;
        }
        let answer = {
            let d = self.lock();
            sketch
                .and_then(|s| reconcile::answer_sketch(&d, &s))
                .unwrap_or_else(|| reconcile::answer(&d, &ranges))
        };
        if answer.fresh >= reconcile::EXPECT_MIN {
            // Ahead of the keys, which are queued and paced.
            mesh.whisper_to(conn, &reconcile::encode_expect(answer.fresh), now);
        }
        if !answer.send.is_empty() {
            self.queue_keys(conn, answer.send);
        }
        for chunk in answer.want.chunks(MAX_WANT) {
            mesh.whisper_to(conn, &reconcile::encode_want(chunk), now);
        }
        if answer.ranges.is_empty() {
            // This side is done with the session.
            self.sessions.ours.remove(&conn);
            self.sessions.theirs.remove(&conn);
        } else {
            send_sync(mesh, conn, id, &answer.ranges, None, now);
        }
    }

    /// The peer on `conn` asks for the versions of some key hashes.
    pub(crate) fn on_want(&mut self, mesh: &mut Mesh, conn: ConnId, payload: &[Value], now: Now) {
        if !mesh.reconciles(conn) {
            return;
        }
        if !self.sessions.admit(conn, now.elapsed) {
            mesh.reconciliation_refused(conn, "reconciliation messages over the link's budget");
            return;
        }
        let Some(want) = reconcile::decode_want(payload) else {
            mesh.reconciliation_refused(conn, "malformed want list");
            return;
        };
        let keys = reconcile::wanted(&self.lock(), &want);
        if !keys.is_empty() {
            self.queue_keys(conn, keys);
        }
    }

    /// Queues versions for a peer, paced like a state transfer. The queue
    /// holds at most twice the dictionary (with tombstones) and a batch:
    /// a peer that asks for everything again and again without reading
    /// does not grow it further.
    fn queue_keys(&mut self, conn: ConnId, keys: Vec<Vec<u8>>) {
        let cap = {
            let d = self.lock();
            2 * (d.len() + d.tombstones()) + TRANSFER_BATCH
        };
        let keys = keys.into_iter().map(Vec::into_boxed_slice);
        match self.transfers.iter_mut().find(|t| t.conn == conn && t.rs2p) {
            Some(t) => t.extend_capped(keys, cap),
            None => self.transfers.push(Transfer {
                conn,
                rs2p: true,
                keys: keys.take(cap).collect(),
                next: 0,
            }),
        }
    }

    /// When the next periodic round, or a deferred session, is due.
    pub(crate) fn poll_timeout(&self) -> Option<Duration> {
        let s = &self.sessions;
        match (s.next_round, s.deferred.values().min()) {
            (Some(a), Some(&b)) => Some(a.min(b)),
            (a, b) => a.or(b.copied()),
        }
    }

    /// The periodic round: every rs2p link we dialled is reconciled. And
    /// the sessions deferred until a second after the last.
    pub(crate) fn handle_timeout(&mut self, mesh: &mut Mesh, now: Now) {
        if !self.sessions.deferred.is_empty() {
            let mut due: Vec<ConnId> = self
                .sessions
                .deferred
                .iter()
                .filter(|(_, at)| **at <= now.elapsed)
                .map(|(c, _)| *c)
                .collect();
            due.sort_unstable();
            for conn in due {
                self.sessions.deferred.remove(&conn);
                if mesh.has_conn(conn) && mesh.reconciles(conn) {
                    self.open_session(mesh, conn, false, now);
                }
            }
        }
        if self.sessions.next_round.is_some_and(|t| t <= now.elapsed) {
            self.sessions.next_round = Some(self.sessions.jittered(mesh, now));
            let conns: Vec<ConnId> = mesh
                .routed(Some(crate::proto::PeerKind::Rs))
                .into_iter()
                .filter(|c| mesh.reconciles(*c) && mesh.is_outgoing(*c))
                .collect();
            self.forget_closed(mesh);
            for conn in conns {
                self.open_session(mesh, conn, false, now);
            }
        }
    }

    /// A peer left: reconcile with every other rs2p peer now (or a second
    /// after the last session on each link).
    pub(crate) fn peer_lost(&mut self, mesh: &mut Mesh, now: Now) {
        self.forget_closed(mesh);
        let conns: Vec<ConnId> = mesh
            .routed(Some(crate::proto::PeerKind::Rs))
            .into_iter()
            .filter(|c| mesh.reconciles(*c))
            .collect();
        for conn in conns {
            self.open_session(mesh, conn, false, now);
        }
    }

    fn forget_closed(&mut self, mesh: &Mesh) {
        self.sessions.ours.retain(|c, _| mesh.has_conn(*c));
        self.sessions.theirs.retain(|c, _| mesh.has_conn(*c));
        self.sessions.budget.retain(|c, _| mesh.has_conn(*c));
        self.sessions.opened.retain(|c, _| mesh.has_conn(*c));
        self.sessions.deferred.retain(|c, _| mesh.has_conn(*c));
    }

    /// Moves queued versions along now (the simulator and tests have no
    /// pump of their own between frames).
    pub(crate) fn pump_now(&mut self, mesh: &mut Mesh, room: &dyn Room, now: Now) {
        if !self.transfers.is_empty() {
            self.pump(mesh, room, now);
        }
    }
}

/// Sends ranges, cut into messages within the caps (a sketch goes with
/// the first).
fn send_sync(
    mesh: &mut Mesh,
    conn: ConnId,
    id: u64,
    ranges: &[Range],
    mut sketch: Option<&Sketch>,
    now: Now,
) {
    let mut start = 0;
    while start < ranges.len() {
        let mut end = start;
        let mut listed = 0;
        while end < ranges.len() && end - start < MAX_RANGES {
            let n = match &ranges[end] {
                Range::Items { items, .. } => items.len(),
                _ => 0,
            };
            if listed + n > MAX_LIST && end > start {
                break;
            }
            listed += n;
            end += 1;
        }
        let payload = reconcile::encode_sync(id, &ranges[start..end], sketch.take());
        mesh.whisper_to(conn, &payload, now);
        start = end;
    }
}
