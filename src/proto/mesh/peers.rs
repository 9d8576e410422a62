//! The peer protocol: handshakes, peers lists, neighbour lists, routes,
//! renegotiation.

use rand::RngCore;

use super::{
    bytes_text, Link, Mesh, NeighbourLists, PeerKind, MAX_AFTER_CONNECT, MAX_PENDING_REQUESTS,
};
use crate::proto::{ConnId, Event, Now, Output};
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::packet::{Handshake, PeerEntry};
use crate::wire::{ids, Packed};

impl Mesh {
    /// Drops a connection whose handshake was refused, and tells the user.
    fn refuse(&mut self, conn: ConnId, id: Vec<u8>, reason: &'static str, now: Now) {
        let dialed = self.links.get(&conn).and_then(|c| c.dialed.clone());
        self.push(Output::Event(Event::PeerRefused { dialed, id, reason }));
        self.drop_conn(conn, reason, now);
    }

    /// A handshake. Returns true on the first one of a connection.
    ///
    /// Rules: a peer on another subnet, ourselves, a blocked peer, or (on a
    /// re-dial) a node other than the one lost there is dropped; the kind of
    /// peer is told by the type of its protocol id (**js2p sends str**) and
    /// rs2p's marker in its compression list; when **both ends dialled each
    /// other**, the connection dialled by the node with the larger id is
    /// kept, as py2p does, so both ends agree. js2p sends two handshakes: a
    /// second one only updates the peer's fields.
    pub(super) fn handshake(&mut self, conn: ConnId, h: Handshake, now: Now) -> bool {
        if h.protocol_id != self.cfg.protocol_id {
            tracing::warn!(
                conn,
                theirs = %bytes_text(&h.protocol_id),
                ours = %bytes_text(&self.cfg.protocol_id),
                "peer on another subnet/protocol: connection refused"
            );
            self.refuse(conn, h.id, "peer on another subnet or transport", now);
            return false;
        }
        if h.id == self.cfg.id {
            self.drop_conn(conn, "connected to ourselves", now);
            return false;
        }
        if self.blocked.contains(&h.id) {
            self.drop_conn(conn, "peer blocked", now);
            return false;
        }
        if let Some(want) = self.links.get(&conn).and_then(|c| c.expected_id.as_ref()) {
            if *want != h.id {
                self.refuse(
                    conn,
                    h.id,
                    "another node answers at a lost peer's address",
                    now,
                );
                return false;
            }
        }
        let kind = if h.protocol_id_is_str {
            PeerKind::Js
        } else if h.is_rs2p() {
            PeerKind::Rs
        } else {
            PeerKind::Py
        };
        if let Some(&other) = self.routing.get(&h.id) {
            if other != conn && self.links.contains_key(&other) {
                let keep_outgoing =
                    ids::cmp_ids_numeric(&self.cfg.id, &h.id) == std::cmp::Ordering::Greater;
                let this_outgoing = self.links.get(&conn).is_some_and(|c| c.outgoing);
                let other_outgoing = self.links.get(&other).is_some_and(|c| c.outgoing);
                if this_outgoing == other_outgoing || this_outgoing != keep_outgoing {
                    self.drop_conn(conn, "duplicate connection to the same peer", now);
                    return false;
                }
                self.routing.remove(&h.id);
                self.links.remove(&other);
                self.push(Output::Close { conn: other });
            }
        }
        let compression = self.cfg.compression.clone();
        let Some(c) = self.links.get_mut(&conn) else {
            return false;
        };
        let first = !c.handshaken;
        c.handshaken = true;
        c.peer_id = Some(h.id.clone());
        c.peer_addr = h.addr.clone();
        c.kind = kind;
        c.reconciles = kind == PeerKind::Rs && h.reconciles();
        c.batches = kind == PeerKind::Rs && h.batches();
        c.bare = kind == PeerKind::Rs && h.bare();
        c.creator_push = kind == PeerKind::Rs && h.creator_push();
        c.tree = kind == PeerKind::Rs && h.tree();
        c.set_peer_methods(h.methods, &compression);
        if !first {
            return false;
        }
        let addr = c.full_addr();
        let peer_id = h.id;
        let was_empty = self.routing.is_empty();
        self.routing.insert(peer_id.clone(), conn);
        self.no_redial.remove(&peer_id);
        self.redials.retain(|r| r.id != peer_id);
        tracing::info!(conn, peer = %bytes_text(&peer_id), ?kind, "peer joined");
        if was_empty {
            self.push(Output::Event(Event::Connected));
        }
        self.push(Output::Event(Event::PeerJoined { id: peer_id, addr }));
        let peers = self.peers_payload(kind);
        self.whisper_to(conn, &peers, now);
        self.tell_new_peer(conn, now);
        self.neighbours_changed();
        true
    }

    /// Tells the rs2p peers that asked for peers lately (they are short of
    /// outgoing links) of the peer of `joined`, in a peers list of that one
    /// entry: they dial the newcomer at once, where they would otherwise
    /// hear of it only at their next refresh (up to a minute later), so a
    /// mesh settles as soon as its last node is in. py2p and js2p peers get
    /// nothing new.
    fn tell_new_peer(&mut self, joined: ConnId, now: Now) {
        let t = now.elapsed;
        let Some(link) = self.links.get(&joined) else {
            return;
        };
        let (Some(id), Some((host, port))) = (link.peer_id.clone(), link.full_addr()) else {
            return;
        };
        let wanting: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(c, l)| {
                **c != joined
                    && l.handshaken
                    && l.kind == PeerKind::Rs
                    && l.wants_peers_until.is_some_and(|u| u > t)
            })
            .map(|(c, _)| *c)
            .collect();
        if wanting.is_empty() {
            return;
        }
        let peers = [
            Value::from(sub::PEERS),
            Value::Array(vec![super::flood::peer_entry(host, port, id)]),
        ];
        for conn in wanting {
            self.whisper_to(conn, &peers, now);
        }
    }

    /// Whispers kept for a node we dialled to answer it (route responses).
    pub(crate) fn flush_after_connect(&mut self, conn: ConnId, now: Now) {
        let Some(peer) = self.links.get(&conn).and_then(|c| c.peer_id.clone()) else {
            return;
        };
        if let Some(waiting) = self.after_connect.remove(&peer) {
            for payload in waiting {
                self.whisper_to(conn, &payload, now);
            }
        }
    }

    /// Our neighbours changed: every rs2p peer is to be told who they are
    /// now (see [`sub::RS2P_NEIGHBOURS`]).
    ///
    /// A peer in the broadcast tree prunes on the list for its own peers
    /// outside the tree (py2p, js2p, older rs2p: we push every broadcast to
    /// those), and, when it knows we push what we create to every
    /// neighbour, for all of them on what comes from us as its creator; an
    /// older tree peer gets only those outside, and only when that list
    /// changed.
    ///
    /// A peer prunes on the list only the relays of broadcasts it gets from
    /// us, so it is told lazily: just before the next broadcast we send it
    /// ([`tell_neighbours`](Self::tell_neighbours)), on the same stream, so
    /// it never prunes a relay on a list older or newer than the broadcast
    /// it came with. Sent on every change instead, whole lists to every
    /// rs2p peer cost a mesh of 1,000 simulated nodes 15 times the bytes of
    /// its writes while it formed.
    pub(super) fn neighbours_changed(&mut self) {
        self.neighbours_epoch += 1;
        self.neighbour_lists = None;
    }

    /// Sends the peer on `conn` our neighbour list if it may hold an older
    /// one; called before a broadcast goes to it.
    pub(super) fn tell_neighbours(&mut self, conn: ConnId, now: Now) {
        let epoch = self.neighbours_epoch;
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        if link.kind != PeerKind::Rs || link.told_epoch == epoch {
            return;
        }
        let (routing, links) = (&self.routing, &self.links);
        let lists = self.neighbour_lists.get_or_insert_with(|| NeighbourLists {
            all: routing.keys().cloned().collect(),
            outside: routing
                .iter()
                .filter(|(_, c)| !links.get(c).is_some_and(|l| l.tree))
                .map(|(id, _)| id.clone())
                .collect(),
        });
        let list = if link.tree && !link.creator_push {
            &lists.outside
        } else {
            &lists.all
        };
        let fresh = link.told_neighbours.as_ref() != Some(list);
        let list = fresh.then(|| list.to_vec());
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        link.told_epoch = epoch;
        let Some(list) = list else {
            return;
        };
        let ids = list.iter().map(|id| Value::Bin(id.clone())).collect();
        link.told_neighbours = Some(list);
        let payload = [Value::from(sub::RS2P_NEIGHBOURS), Value::Array(ids)];
        let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, &payload);
        self.send_packed(conn, &packed, now);
    }

    /// An rs2p peer's neighbour list (ignored from anyone else, and when
    /// longer than we would ever keep connections).
    pub(super) fn neighbours_of(&mut self, conn: ConnId, list: Vec<Vec<u8>>) {
        let max = self.cfg.max_connections;
        let Some(c) = self.links.get_mut(&conn) else {
            return;
        };
        if c.kind != PeerKind::Rs || list.len() > max {
            return;
        }
        c.neighbours = list.into_iter().collect();
    }

    /// Dials the nodes of a peers list we neither know nor are, while short
    /// of outgoing connections.
    pub(super) fn dial_peers(&mut self, list: Vec<PeerEntry>, now: Now) {
        for e in list {
            if self.outgoing_count() >= self.cfg.max_outgoing {
                break;
            }
            if e.id == self.cfg.id
                || self.routing.contains_key(&e.id)
                || self.is_self_addr(&e.host, e.port)
                || self.knows_addr(&e.host, e.port)
            {
                continue;
            }
            let _ = self.dial(e.host, e.port, None, now);
        }
    }

    pub(super) fn route_request(
        &mut self,
        conn: ConnId,
        req_id: Vec<u8>,
        wanted: Vec<u8>,
        now: Now,
    ) {
        let target = self.routing.get(&wanted).and_then(|c| self.links.get(c));
        if let Some((h, port)) = target.and_then(Link::full_addr) {
            let payload = [
                Value::from(sub::RESPONSE),
                Value::Bin(req_id),
                Value::Array(vec![
                    Value::Array(vec![Value::from(h), Value::from(port)]),
                    Value::Bin(wanted),
                ]),
            ];
            let packed = Packed::new(main::BROADCAST, &self.cfg.id, now.unix, &payload);
            self.send_packed(conn, &packed, now);
        }
    }

    pub(super) fn request_route(&mut self, peer: Vec<u8>, payload: Vec<Value>, now: Now) {
        let mut seed = self.cfg.id.clone();
        seed.extend_from_slice(ids::to_base58(&now.unix.to_be_bytes()).as_bytes());
        let mut salt = [0u8; 8];
        self.rng.fill_bytes(&mut salt);
        seed.extend_from_slice(&salt);
        let req_id = ids::to_base58(&<sha2::Sha384 as sha2::Digest>::digest(&seed));
        if self.pending_requests.len() >= MAX_PENDING_REQUESTS {
            self.pending_requests.clear();
        }
        self.pending_requests
            .insert(req_id.clone().into_bytes(), payload);
        let payload = [
            Value::from(sub::REQUEST),
            Value::from(req_id),
            Value::Bin(peer),
        ];
        let packed = Packed::new(main::BROADCAST, &self.cfg.id, now.unix, &payload);
        self.flood(&packed, &payload, None, None, now);
    }

    pub(super) fn route_response(&mut self, req_id: Vec<u8>, target: Option<PeerEntry>, now: Now) {
        let Some(payload) = self.pending_requests.remove(&req_id) else {
            return;
        };
        let Some(t) = target else { return };
        if let Some(&conn) = self.routing.get(&t.id) {
            self.whisper_to(conn, &payload, now);
        } else {
            let waiting = self.after_connect.entry(t.id).or_default();
            if waiting.len() < MAX_AFTER_CONNECT {
                waiting.push(payload);
            }
            if !self.knows_addr(&t.host, t.port) {
                let _ = self.dial(t.host, t.port, None, now);
            }
        }
    }

    /// The peer's compression list changed: take it, and answer with ours
    /// restricted to it — **never to js2p-like peers**, which crash on a
    /// renegotiation.
    pub(super) fn renegotiate(&mut self, conn: ConnId, given: Vec<i64>, now: Now) {
        let compression = self.cfg.compression.clone();
        let Some(c) = self.links.get_mut(&conn) else {
            return;
        };
        let changed = c.peer_methods != given;
        c.set_peer_methods(given.clone(), &compression);
        if changed && c.kind != PeerKind::Js {
            let ours: Vec<Value> = compression
                .iter()
                .filter(|m| given.contains(&i64::from(m.flag())))
                .map(|m| Value::from(m.flag()))
                .collect();
            let packed = Packed::new(
                main::RENEGOTIATE,
                &self.cfg.id,
                now.unix,
                &[Value::from(sub::COMPRESSION), Value::Array(ours)],
            );
            self.send_packed(conn, &packed, now);
        }
    }
}
