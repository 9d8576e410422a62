//! Anti-entropy between rs2p peers: reconciliation sessions (see
//! [`reconcile`](crate::proto::reconcile)) when a peer joins, every
//! [`RECONCILE_EVERY`] (plus up to [`RECONCILE_JITTER`]), and at once with
//! every other rs2p peer when a peer is lost — its neighbours may each hold
//! a different part of its last writes. Versions cross whatever their age:
//! a write older than the 60 s broadcast window still arrives.

use std::collections::HashMap;
use std::time::Duration;

use super::{Replica, Room, Transfer};
use crate::proto::dict::key_hash;
use crate::proto::mesh::Mesh;
use crate::proto::reconcile::{self, Range, MAX_LIST, MAX_RANGES, MAX_WANT};
use crate::proto::sketch::Sketch;
use crate::proto::{ConnId, Now};
use crate::value::Value;
use crate::wire::flags::main;
use crate::wire::Packed;

/// How often each rs2p link is reconciled (by its dialling side).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Up to this much is added to each period, so links do not all reconcile
/// at once.
pub const RECONCILE_JITTER: Duration = Duration::from_secs(5);
/// Messages one session may take, each way.
const MAX_ROUNDS: u32 = 64;
/// A peer opens at most one session a second on a link.
const MIN_SESSION_GAP: Duration = Duration::from_secs(1);

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
}

impl Sessions {
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
    /// left). Reconciles with that peer now rather than at the next round,
    /// unless a session of ours on the link opened less than a second ago.
    pub(crate) fn reconcile_gap(&mut self, mesh: &mut Mesh, conn: ConnId, now: Now) {
        if !mesh.reconciles(conn) {
            return;
        }
        if let Some(s) = self.sessions.ours.get(&conn) {
            if now.elapsed.saturating_sub(s.opened) < MIN_SESSION_GAP {
                return;
            }
        }
        self.open_session(mesh, conn, false, now);
    }

    /// A reconciliation message from the peer on `conn`.
    pub(crate) fn on_sync(&mut self, mesh: &mut Mesh, conn: ConnId, payload: &[Value], now: Now) {
        if !mesh.reconciles(conn) {
            return;
        }
        let Some((id, ranges, sketch)) =
            reconcile::decode_sync(payload).filter(|(_, r, _)| reconcile::valid(r))
        else {
            tracing::debug!(conn, "malformed reconciliation message ignored");
            return;
        };
        let s = &mut self.sessions;
        let session = match s.ours.get_mut(&conn) {
            Some(ours) if ours.id == id => ours,
            _ => {
                let fresh = match s.theirs.get(&conn) {
                    Some(t) if t.id == id => false,
                    Some(t) if now.elapsed.saturating_sub(t.opened) < MIN_SESSION_GAP => {
                        tracing::debug!(conn, "reconciliation sessions opened too fast: ignored");
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
            tracing::debug!(
                conn,
                "reconciliation session over {MAX_ROUNDS} rounds: dropped"
            );
            return;
        }
        let answer = {
            let d = self.lock();
            sketch
                .and_then(|s| reconcile::answer_sketch(&d, &s))
                .unwrap_or_else(|| reconcile::answer(&d, &ranges))
        };
        if !answer.send.is_empty() {
            self.queue_keys(conn, answer.send);
        }
        for chunk in answer.want.chunks(MAX_WANT) {
            let payload = reconcile::encode_want(chunk);
            let packed = Packed::new(main::WHISPER, mesh.id(), now.unix, &payload);
            mesh.send_packed(conn, &packed, now);
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
    pub(crate) fn on_want(&mut self, mesh: &mut Mesh, conn: ConnId, payload: &[Value]) {
        if !mesh.reconciles(conn) {
            return;
        }
        let Some(want) = reconcile::decode_want(payload) else {
            tracing::debug!(conn, "malformed want list ignored");
            return;
        };
        let keys = reconcile::wanted(&self.lock(), &want);
        if !keys.is_empty() {
            self.queue_keys(conn, keys);
        }
    }

    /// Queues versions for a peer, paced like a state transfer.
    fn queue_keys(&mut self, conn: ConnId, keys: Vec<Vec<u8>>) {
        let keys = keys.into_iter().map(Vec::into_boxed_slice);
        match self.transfers.iter_mut().find(|t| t.conn == conn && t.rs2p) {
            Some(t) => t.keys.extend(keys),
            None => self.transfers.push(Transfer {
                conn,
                rs2p: true,
                keys: keys.collect(),
                next: 0,
            }),
        }
    }

    /// When the next periodic round is due.
    pub(crate) fn poll_timeout(&self) -> Option<Duration> {
        self.sessions.next_round
    }

    /// The periodic round: every rs2p link we dialled is reconciled.
    pub(crate) fn handle_timeout(&mut self, mesh: &mut Mesh, now: Now) {
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

    /// A peer left: reconcile with every other rs2p peer now.
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
        let packed = Packed::new(main::WHISPER, mesh.id(), now.unix, &payload);
        mesh.send_packed(conn, &packed, now);
        start = end;
    }
}
