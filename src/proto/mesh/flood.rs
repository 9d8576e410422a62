//! Sending, the broadcast flood, and the dispatch of received frames.

use bytes::Bytes;

use super::super::align;
use super::super::seen::Admit;
use super::{bytes_text, Incoming, Mesh, PeerKind, Upcall, PEERS_INTEREST};
use crate::error::{Error, Result};
use crate::proto::{ConnId, Now, Output};
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::packet::{is_live_delete, Packet};
use crate::wire::{Framing, MessageId, Packed};

impl Mesh {
    /// A frame over a limit was skipped (by the reader, for a length prefix
    /// over the frame limit, or here): counted and logged, the link kept.
    pub fn frame_skipped(&mut self, conn: ConnId, e: &crate::error::DecodeError) {
        self.stats.frames_skipped += 1;
        self.stats.last_error = Some(e.to_string());
        tracing::warn!(conn, "frame skipped: {e}");
    }

    /// A reconciliation message from `conn` was not answered: counted
    /// (`NodeStats::reconciliation_refused`) and logged, the link kept.
    pub(crate) fn reconciliation_refused(&mut self, conn: ConnId, why: &str) {
        self.stats.reconciliation_refused += 1;
        tracing::debug!(conn, "{why}: not answered");
    }

    // ----- sending -----

    /// Counts a state-transfer frame (a whisper) queued by the replica.
    pub(crate) fn transfer_sent(&mut self, bytes: usize) {
        self.stats.sent(main::WHISPER, bytes);
        self.stats.state_transfer_bytes_out += bytes as u64;
    }

    /// Queues a frame; remembered for `resend`.
    pub(super) fn send_frame(&mut self, conn: ConnId, frame: Bytes, now: Now) {
        self.send_frames(conn, std::slice::from_ref(&frame), now);
        if let Some(c) = self.links.get_mut(&conn) {
            c.last_sent = Some(frame);
        }
    }

    /// Queues frames as one write. Towards py2p-like peers the write is laid
    /// out so that py2p's reader cannot hit its framing bug (PROTOCOL.md Q5).
    pub fn send_frames(&mut self, conn: ConnId, frames: &[Bytes], now: Now) {
        let Some(c) = self.links.get_mut(&conn) else {
            return;
        };
        let bytes = if c.kind == PeerKind::Py {
            align::layout(
                &mut c.stream_pos,
                frames,
                &self.cfg.id,
                now.unix,
                c.send_method,
            )
        } else if frames.len() == 1 {
            c.stream_pos += frames[0].len() as u64;
            frames[0].clone()
        } else {
            let mut v = Vec::with_capacity(frames.iter().map(Bytes::len).sum());
            for f in frames {
                v.extend_from_slice(f);
            }
            c.stream_pos += v.len() as u64;
            v.into()
        };
        c.unsent += bytes.len();
        self.stats.bytes_sent += bytes.len() as u64;
        self.out.push_back(Output::Transmit { conn, bytes });
    }

    /// Packs and queues a message for one connection.
    pub fn send_packed(&mut self, conn: ConnId, packed: &Packed, now: Now) {
        let Some(c) = self.links.get(&conn) else {
            return;
        };
        let frame = packed.framed(c.framing(packed.body().len()));
        self.stats
            .sent(packed.msg_type().unwrap_or(u8::MAX), frame.len());
        self.send_frame(conn, frame, now);
    }

    /// Whispers `payload` to the peer on `conn`.
    pub(crate) fn whisper_to(&mut self, conn: ConnId, payload: &[Value], now: Now) {
        let packed = Packed::new(main::WHISPER, &self.cfg.id, now.unix, payload);
        self.send_packed(conn, &packed, now);
    }

    /// Sends one of the rs2p-only messages that only the peer on `conn`
    /// reads (announcements, grafts, prunes, probes). To a peer that reads
    /// compact frames ([`RS2P_BARE`](crate::wire::flags::compression::RS2P_BARE))
    /// it goes without our id and with time 0: the peer knows who is on
    /// the link and reads neither. That is 70 of the 90 bytes an
    /// announcement of one id costs.
    pub(super) fn link_local(&mut self, conn: ConnId, payload: &[Value], now: Now) {
        if self.links.get(&conn).is_some_and(|c| c.bare) {
            let packed = Packed::new(main::WHISPER, &[], 0, payload);
            self.send_packed(conn, &packed, now);
        } else {
            self.whisper_to(conn, payload, now);
        }
    }

    /// Sends a message of our own: a broadcast is flooded (and remembered,
    /// so its echoes are dropped); any other type goes to every peer.
    pub fn send(&mut self, msg_type: u8, payload: &[Value], now: Now) -> MessageId {
        let packed = Packed::new(msg_type, &self.cfg.id, now.unix, payload);
        if msg_type == main::BROADCAST {
            self.flood(&packed, payload, None, None, now);
        } else {
            for conn in self.routed(None) {
                self.send_packed(conn, &packed, now);
            }
        }
        packed.id()
    }

    /// Whispers to a neighbour.
    pub fn whisper(&mut self, peer: &[u8], payload: &[Value], now: Now) -> Result<()> {
        match self.routing.get(peer).copied() {
            Some(conn) => {
                self.whisper_to(conn, payload, now);
                Ok(())
            }
            None => Err(Error::UnknownPeer(bytes_text(peer))),
        }
    }

    /// Answers a node: a whisper when it is a neighbour, else through a
    /// route request (PROTOCOL.md §6.6).
    pub fn reply(&mut self, peer: &[u8], payload: Vec<Value>, now: Now) {
        if let Some(conn) = self.routing.get(peer).copied() {
            self.whisper_to(conn, &payload, now);
        } else {
            self.request_route(peer.to_vec(), payload, now);
        }
    }

    /// Sends a broadcast's original bytes to every peer but its creator and
    /// the connection it came from; each compression is applied once.
    ///
    /// Three rules are applied here:
    /// - **js2p cannot delete** (PROTOCOL.md J2): a sync delete (a store of
    ///   nil) is not sent to js2p-like peers, which drop the link that
    ///   delivers one;
    /// - **the broadcast tree** (rs2p peers that take part, see [`tree`]):
    ///   links out of the tree get the id announced, not the message;
    /// - **relay pruning** (older rs2p peers): what came from an rs2p peer
    ///   reached its neighbours from it — the list it sent is older than
    ///   the broadcast on the same stream, and it relays every broadcast to
    ///   every neighbour but the sender;
    /// - **the creator pushes to all**: a broadcast we create goes to every
    ///   peer, in the tree or not, so one that came straight from its
    ///   creator (a peer listing
    ///   [`RS2P_CREATOR_PUSH`](crate::wire::flags::compression::RS2P_CREATOR_PUSH))
    ///   reached all the creator's neighbours already and is relayed only
    ///   beyond them. In a mesh where every node sees the writer, a write
    ///   costs one frame per node and one hop; a burst no longer races
    ///   relays against the writer's own copies.
    ///
    /// [`tree`]: super::tree
    pub(super) fn flood(
        &mut self,
        packed: &Packed,
        payload: &[Value],
        from_conn: Option<ConnId>,
        creator: Option<&[u8]>,
        now: Now,
    ) {
        let skip_js = is_live_delete(payload);
        let from = from_conn.and_then(|c| self.links.get(&c));
        let relayed_by = from.map(|c| &c.neighbours);
        // A peer in the tree does not push to its lazy tree links, so only
        // its other neighbours are known to have the message from it.
        let from_tree = from.is_some_and(|c| c.tree);
        let from_creator = from.is_some_and(|c| {
            c.creator_push && c.peer_id.as_deref().is_some_and(|p| Some(p) == creator)
        });
        let mut pruned_count = 0;
        let targets: Vec<ConnId> = self
            .routing
            .iter()
            .filter(|(id, conn)| Some(**conn) != from_conn && creator != Some(id.as_slice()))
            .filter(|(_, conn)| !skip_js || self.peer_kind(**conn) != PeerKind::Js)
            .filter(|(id, conn)| {
                let in_tree = self.links.get(conn).is_some_and(|l| l.tree);
                let pruned = relayed_by.is_some_and(|n| n.contains(*id))
                    && (from_creator || !(from_tree && in_tree));
                pruned_count += u64::from(pruned);
                !pruned
            })
            .map(|(_, conn)| *conn)
            .collect();
        self.stats.relays_pruned += pruned_count;
        let (targets, lazy): (Vec<ConnId>, Vec<ConnId>) = targets
            .into_iter()
            .partition(|c| (from_conn.is_none() && self.cfg.creator_push) || self.eager(*c));
        // Short announcements come only from compact tree peers: without
        // one, deliveries need not be remembered by short id.
        let compact_peers = self
            .routing
            .values()
            .any(|c| self.links.get(c).is_some_and(|l| l.tree && l.bare));
        self.delivered(packed, !lazy.is_empty(), compact_peers, now);
        let id = crate::proto::seen::fingerprint(&packed.id());
        for conn in lazy {
            self.announce(conn, id, now);
        }
        if from_conn.is_some() {
            self.stats.relays += targets.len() as u64;
        }
        let mut frames: Vec<(Framing, Bytes)> = Vec::new();
        for conn in targets {
            self.tell_neighbours(conn, now);
            let framing = self.framing(conn, packed.body().len());
            let frame = match frames.iter().find(|(m, _)| *m == framing) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = packed.framed(framing);
                    frames.push((framing, f.clone()));
                    f
                }
            };
            self.stats.sent(main::BROADCAST, frame.len());
            self.send_frame(conn, frame, now);
        }
    }

    /// Our peers list for a peer of `for_kind`. **Never advertises js2p-like
    /// peers to py2p-like ones** (PROTOCOL.md §10.2 item 1): a py2p node that
    /// dials a js2p node leaves a dead routing entry and floods requests.
    pub(super) fn peers_payload(&self, for_kind: PeerKind) -> Vec<Value> {
        let mut list = Vec::new();
        for (id, conn) in &self.routing {
            let Some(c) = self.links.get(conn) else {
                continue;
            };
            if for_kind == PeerKind::Py && c.kind == PeerKind::Js {
                continue;
            }
            if let Some((h, p)) = c.full_addr() {
                list.push(peer_entry(h, p, id.clone()));
            }
        }
        vec![Value::from(sub::PEERS), Value::Array(list)]
    }

    // ----- receiving -----

    /// A frame body arrived on `conn`.
    pub(crate) fn handle_frame(&mut self, conn: ConnId, body: Bytes, now: Now) -> Upcall {
        let Some(c) = self.links.get_mut(&conn) else {
            return Upcall::Done;
        };
        c.last_recv = now.elapsed;
        c.probed = false;
        let c = &*c;
        let wire_len = body.len() + 4;
        // Most broadcasts arrive several times (every neighbour relays
        // them). An uncompressed one whose id we already hold is dropped
        // before hashing and parsing it; a forged id only loses the
        // forger's own frame.
        if body.len() > 33 && matches!(body[32], 0x90..=0x9f | 0xdc) && body[33] == main::BROADCAST
        {
            let mut id = [0u8; 32];
            id.copy_from_slice(&body[..32]);
            if self.seen.contains(&id) {
                self.stats.received(main::BROADCAST, wire_len);
                self.stats.duplicate_broadcasts += 1;
                self.duplicate_from(conn, now);
                return Upcall::Done;
            }
        }
        let parsed = Packed::decode(body, &c.recv_methods, c.bare, &self.cfg.limits);
        let (packed, mut msg) = match parsed {
            Ok(pm) => pm,
            Err(e) if e.is_limit() => {
                // A well-formed frame carrying more than we read (py2p has
                // no limits): skipped, and the rest of what the peer sends —
                // the rest of a state transfer — still arrives.
                self.frame_skipped(conn, &e);
                return Upcall::Done;
            }
            Err(e) => {
                self.stats.bad_frames += 1;
                self.stats.last_error = Some(e.to_string());
                self.drop_conn(conn, &format!("bad frame: {e}"), now);
                return Upcall::Done;
            }
        };
        self.stats.received(msg.msg_type, wire_len);
        if msg.msg_type == main::WHISPER
            && matches!(msg.sub_flag(), Some(sub::STORE | sub::RS2P_STORES))
        {
            self.stats.state_transfer_bytes_in += wire_len as u64;
        }
        // A batch of state-transfer items is moved out of the message (only
        // its sub-flag stays): a joining node reads its whole dictionary
        // this way, and copying every key, value and owner was a third of
        // its allocations.
        let packet = if msg.msg_type == main::WHISPER && msg.sub_flag() == Some(sub::RS2P_STORES) {
            Packet::stores(msg.payload.split_off(1))
        } else {
            Packet::parse(&msg)
        };
        match &packet {
            Packet::Compression(list) => {
                self.renegotiate(conn, list.clone(), now);
                return Upcall::Done;
            }
            Packet::Resend => {
                if let Some(frame) = self.links.get(&conn).and_then(|c| c.last_sent.clone()) {
                    self.send_frame(conn, frame, now);
                }
                return Upcall::Done;
            }
            _ if msg.msg_type == main::RENEGOTIATE => return Upcall::Done,
            _ => {}
        }
        if msg.msg_type == main::BROADCAST {
            // Our own broadcasts echoing back are dropped without being
            // remembered: nobody else creates messages under our id.
            if msg.sender == self.cfg.id {
                self.stats.duplicate_broadcasts += 1;
                self.duplicate_from(conn, now);
                return Upcall::Done;
            }
            match self.seen.admit(packed.id(), msg.time, now.unix) {
                Admit::New => {}
                Admit::Duplicate => {
                    self.stats.duplicate_broadcasts += 1;
                    self.duplicate_from(conn, now);
                    return Upcall::Done;
                }
                Admit::Expired => return Upcall::Done,
            }
            self.stats.broadcasts_received += 1;
            if let Some(c) = self.links.get_mut(&conn) {
                c.dup_streak = 0;
                c.delivered_first = true;
            }
            self.flood(&packed, &msg.payload, Some(conn), Some(&msg.sender), now);
        }
        match packet {
            Packet::Handshake(h) => {
                if self.handshake(conn, h, now) {
                    Upcall::Joined(conn)
                } else {
                    Upcall::Done
                }
            }
            Packet::Peers(list) => {
                self.dial_peers(list, now);
                Upcall::Done
            }
            Packet::Neighbours(list) => {
                self.neighbours_of(conn, list);
                Upcall::Done
            }
            Packet::IHave(ids) => {
                self.on_ihave(conn, ids, now);
                Upcall::Done
            }
            Packet::Graft(ids) => {
                self.on_graft(conn, ids, now);
                Upcall::Done
            }
            Packet::Prune => {
                self.on_prune(conn, now);
                Upcall::Done
            }
            Packet::Probe { reply } => {
                if !reply && self.peer_kind(conn) == PeerKind::Rs {
                    let pong = [Value::from(sub::RS2P_PROBE), Value::from(1)];
                    self.link_local(conn, &pong, now);
                }
                Upcall::Done
            }
            Packet::RequestPeers => {
                let kind = self.peer_kind(conn);
                if kind == PeerKind::Rs {
                    if let Some(c) = self.links.get_mut(&conn) {
                        c.wants_peers_until = Some(now.elapsed + PEERS_INTEREST);
                    }
                }
                let peers = self.peers_payload(kind);
                self.whisper_to(conn, &peers, now);
                Upcall::Done
            }
            Packet::Request { req_id, wanted } => {
                self.route_request(conn, req_id, wanted, now);
                Upcall::Done
            }
            Packet::Response { req_id, target } => {
                self.route_response(req_id, target, now);
                Upcall::Done
            }
            Packet::BadHandshake => {
                self.drop_conn(conn, "handshake without id or protocol id", now);
                Upcall::Done
            }
            // Malformed sync packets are the dictionary's to consume (a plain
            // mesh node hands them to its handlers).
            Packet::Ignored(why) if !matches!(msg.sub_flag(), Some(sub::STORE | sub::DELTA)) => {
                tracing::debug!(conn, why, "packet ignored");
                Upcall::Done
            }
            packet => Upcall::Message(Box::new(Incoming {
                conn,
                id: packed.id(),
                size: packed.body().len(),
                msg,
                packet,
            })),
        }
    }
}

/// One entry of a peers list: `[[host, port], id]`.
pub(super) fn peer_entry(host: String, port: u16, id: Vec<u8>) -> Value {
    Value::Array(vec![
        Value::Array(vec![Value::from(host), Value::from(port)]),
        Value::Bin(id),
    ])
}
