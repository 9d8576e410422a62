//! Lost connections, re-dials with backoff, peers refreshes and handshake
//! timeouts.

use std::time::Duration;

use super::{
    bytes_text, Mesh, PeerKind, Redial, FIRST_BACKOFF, FIRST_REFRESH, MAX_BACKOFF, MAX_REFRESH,
    REDIAL_FOR,
};
use crate::proto::{ConnId, Event, Now, Output};
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::Packed;

/// A link silent this long is probed.
pub const PROBE_AFTER: Duration = Duration::from_secs(10);
/// A link silent this long (after a probe) is dropped as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// The peers whose silence is probed (see `Mesh::keepalive`).
fn probed_kind(kind: PeerKind) -> bool {
    matches!(kind, PeerKind::Rs | PeerKind::Py)
}

impl Mesh {
    /// Removes a connection; a peer leaves the routing table, and we ask
    /// the others for peers and plan a re-dial.
    pub(crate) fn drop_conn(&mut self, conn: ConnId, reason: &str, now: Now) {
        let Some(c) = self.links.remove(&conn) else {
            return;
        };
        self.push(Output::Close { conn });
        tracing::debug!(conn, %reason, "dropping connection");
        if c.tree && !c.lazy {
            self.tree_link_lost(now);
        }
        let Some(peer_id) = c.peer_id.clone() else {
            return;
        };
        if self.routing.get(&peer_id) != Some(&conn) {
            return;
        }
        self.routing.remove(&peer_id);
        self.neighbours_changed();
        tracing::info!(peer = %bytes_text(&peer_id), %reason, "peer left");
        self.push(Output::Event(Event::PeerLeft {
            id: peer_id.clone(),
        }));
        if self.cfg.reconnect && !self.no_redial.contains(&peer_id) {
            let target = c.dialed.clone().or_else(|| c.full_addr());
            if let Some((host, port)) = target {
                self.redials.retain(|r| r.id != peer_id);
                self.redials.push(Redial {
                    host,
                    port,
                    id: peer_id,
                    due: now.elapsed + FIRST_BACKOFF,
                    attempts: 0,
                    since: now.elapsed,
                });
            }
        }
        if self.outgoing_count() < self.cfg.max_outgoing {
            self.ask_for_peers(false, now);
        }
        self.refresh_every = FIRST_REFRESH;
        self.next_refresh = now.elapsed + FIRST_REFRESH;
    }

    /// Sends the peers request `'*'` as bin, which py2p and js2p both answer
    /// with a peers list (**py2p sends str but only understands bin**).
    /// **js2p also re-sends its whole dictionary** in answer (J10), so
    /// periodic refreshes skip js2p-like peers.
    pub(super) fn ask_for_peers(&mut self, periodic: bool, now: Now) {
        let payload = [Value::from(sub::REQUEST), Value::Bin(b"*".to_vec())];
        let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, &payload);
        let conns: Vec<ConnId> = self
            .routed(None)
            .into_iter()
            .filter(|c| !periodic || self.peer_kind(*c) != PeerKind::Js)
            .collect();
        for c in conns {
            self.send_packed(c, &packed, now);
        }
    }

    // ----- timers -----

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let handshakes = self
            .links
            .values()
            .filter(|c| c.open && !c.handshaken)
            .map(|c| c.opened + self.cfg.handshake_timeout);
        let redials = self.redials.iter().map(|r| r.due.min(r.since + REDIAL_FOR));
        let silences = self
            .links
            .values()
            .filter(|c| c.handshaken && probed_kind(c.kind))
            .map(|c| c.last_recv + if c.probed { STALLED_AFTER } else { PROBE_AFTER });
        handshakes
            .chain(redials)
            .chain(silences)
            .chain(self.tree_timeout())
            .chain(std::iter::once(self.next_refresh))
            .min()
    }

    /// Keepalive: a link silent for [`PROBE_AFTER`] is probed — an rs2p
    /// peer answers [`sub::RS2P_PROBE`], a py2p peer the peers request `'*'`
    /// — and one still silent [`STALLED_AFTER`] after its last frame is
    /// dropped as stalled (then re-dialled, and reconciled once back).
    /// js2p peers are not probed: js2p answers `'*'` with its whole
    /// dictionary (J10), and ignores what it does not know.
    fn keepalive(&mut self, now: Now) {
        let t = now.elapsed;
        let mut stalled = Vec::new();
        let mut probes = Vec::new();
        for (conn, c) in self.links.iter_mut() {
            if !c.handshaken || !probed_kind(c.kind) {
                continue;
            }
            let silent = t.saturating_sub(c.last_recv);
            if silent >= STALLED_AFTER {
                stalled.push(*conn);
            } else if silent >= PROBE_AFTER && !c.probed {
                c.probed = true;
                probes.push((*conn, c.kind));
            }
        }
        for (conn, kind) in probes {
            if kind == PeerKind::Rs {
                self.link_local(conn, &[Value::from(sub::RS2P_PROBE), Value::from(0)], now);
            } else {
                let payload = [Value::from(sub::REQUEST), Value::Bin(b"*".to_vec())];
                let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, &payload);
                self.send_packed(conn, &packed, now);
            }
        }
        for conn in stalled {
            self.stats.stalled_links += 1;
            let reason = format!("link silent for {} s", STALLED_AFTER.as_secs());
            self.drop_conn(conn, &reason, now);
        }
    }

    /// Runs what is due: peers refreshes, handshake timeouts, keepalive,
    /// re-dials.
    pub fn handle_timeout(&mut self, now: Now) {
        self.tree_timers(now);
        self.keepalive(now);
        let t = now.elapsed;
        // A node short of outgoing links asks its peers for theirs now and
        // then: peers lists are otherwise only sent at handshakes, so the
        // first nodes of a chain would never hear of the later ones.
        if t >= self.next_refresh {
            if !self.routing.is_empty() && self.outgoing_count() < self.cfg.max_outgoing {
                self.ask_for_peers(true, now);
            }
            self.refresh_every = (self.refresh_every * 2).min(MAX_REFRESH);
            self.next_refresh = t + self.refresh_every;
        }
        let timeout = self.cfg.handshake_timeout;
        let stale: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, c)| c.open && !c.handshaken && t.saturating_sub(c.opened) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for conn in stale {
            self.drop_conn(conn, "no handshake in time", now);
        }
        let mut due = Vec::new();
        self.redials.retain_mut(|r| {
            if t.saturating_sub(r.since) >= REDIAL_FOR {
                return false;
            }
            if r.due <= t {
                due.push((r.host.clone(), r.port, r.id.clone()));
                r.attempts += 1;
                let backoff = FIRST_BACKOFF * 2u32.saturating_pow(r.attempts.min(10));
                r.due = t + backoff.min(MAX_BACKOFF);
            }
            true
        });
        for (host, port, id) in due {
            if self.routing.contains_key(&id)
                || self.blocked.contains(&id)
                || self.knows_addr(&host, port)
            {
                continue;
            }
            let _ = self.dial(host, port, Some(id), now);
        }
    }
}
