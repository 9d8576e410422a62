//! State transfer: the keys queued for a peer (a whole dictionary for a
//! py2p or js2p peer that joins, a reconciliation's answer for an rs2p
//! peer), framed a batch at a time and paced by the room in the peer's send
//! queue.

use bytes::Bytes;

use super::Replica;
use crate::proto::dict::NIL;
use crate::proto::mesh::Mesh;
use crate::proto::{ConnId, Now};
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::{msgpack, Packed};

/// Size of one chunk of a state transfer handed to a connection.
const TRANSFER_CHUNK: usize = 256 * 1024;
/// Keys framed per step of a state transfer.
pub(super) const TRANSFER_BATCH: usize = 1024;
/// A state transfer is fed to a peer while less than this is queued for it.
pub const TRANSFER_WINDOW: usize = 8 << 20;

/// How much more a connection's send queue may take: the shell's answer
/// for state-transfer pacing (`None` once the connection is gone).
pub trait Room {
    /// Bytes queued towards `conn` and not yet written, and the most that
    /// may be.
    fn queued(&self, conn: ConnId) -> Option<(usize, usize)>;

    /// Bytes of state transfer to produce in one call, at most (default:
    /// no limit). A shell whose writers run only when its event loop
    /// yields (one tokio worker) sets it, so that the first frames are on
    /// the wire while the rest are made: filling a peer's whole window at
    /// once kept a joining node idle for a third of a second.
    fn slice(&self) -> usize {
        usize::MAX
    }
}

/// Where state transfers stand after [`Node::pump`](crate::proto::Node::pump).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pump {
    /// None left.
    Done,
    /// Some left, waiting for the peers' queues to drain.
    Waiting,
    /// Some left and room for them: call again once the writers have run
    /// (the call stopped at [`Room::slice`]).
    Ready,
}

/// A [`Room`] without limits (the simulator's links take everything).
pub struct Unbounded;

impl Room for Unbounded {
    fn queued(&self, _conn: ConnId) -> Option<(usize, usize)> {
        Some((0, usize::MAX))
    }
}

pub(super) struct Transfer {
    pub(super) conn: ConnId,
    pub(super) rs2p: bool,
    pub(super) keys: Vec<Box<[u8]>>,
    pub(super) next: usize,
}

impl Transfer {
    /// Queues more keys, holding at most `cap` (sent keys are dropped
    /// first, once they are half the queue). A queue that reaches its cap
    /// belongs to a peer that asks faster than it reads: what does not fit
    /// reaches it by a later round, as between two nodes that were apart.
    pub(super) fn extend_capped(&mut self, keys: impl IntoIterator<Item = Box<[u8]>>, cap: usize) {
        if self.next > self.keys.len() / 2 {
            self.keys.drain(..self.next);
            self.next = 0;
        }
        let room = cap.saturating_sub(self.keys.len());
        self.keys.extend(keys.into_iter().take(room));
    }

    fn unsent(&self) -> usize {
        self.keys.len() - self.next
    }
}

/// A state-transfer store `[store, key, value, owner, timestamp]`, with the
/// lease start as a sixth packet between rs2p nodes (`since`), encoded
/// packet after packet from the value's encoding (as the dictionary keeps
/// it).
pub(super) struct TransferItem {
    count: usize,
    payload: Vec<u8>,
}

impl TransferItem {
    pub(super) fn new(
        key: &[u8],
        value: &[u8],
        owner: &[u8],
        timestamp: i64,
        since: Option<i64>,
    ) -> Self {
        let mut payload = Vec::with_capacity(24 + key.len() + value.len() + owner.len());
        msgpack::encode_into(&Value::from(sub::STORE), &mut payload);
        msgpack::encode_bin(key, &mut payload);
        payload.extend_from_slice(value);
        msgpack::encode_bin(owner, &mut payload);
        msgpack::encode_int(timestamp.into(), &mut payload);
        if let Some(since) = since {
            msgpack::encode_int(since.into(), &mut payload);
        }
        TransferItem {
            count: 5 + usize::from(since.is_some()),
            payload,
        }
    }
}

impl Replica {
    /// True while a state transfer is under way.
    pub fn transferring(&self) -> bool {
        !self.transfers.is_empty()
    }

    /// Keys queued for peers and not yet sent (state transfers and
    /// reconciliation answers).
    pub fn queued_keys(&self) -> usize {
        self.transfers.iter().map(Transfer::unsent).sum()
    }

    /// Moves state transfers along as peers' queues drain, and says
    /// whether work is left and when to call again.
    pub(crate) fn pump(&mut self, mesh: &mut Mesh, room: &dyn Room, now: Now) -> Pump {
        let slice = room.slice();
        let mut made = 0usize;
        let mut ready = false;
        let mut jobs = std::mem::take(&mut self.transfers);
        jobs.retain_mut(|job| loop {
            if !mesh.has_conn(job.conn) {
                return false;
            }
            match room.queued(job.conn) {
                None => return false,
                // Keep the transfer to a quarter of the peer's queue.
                Some((q, max)) if q + mesh.unsent(job.conn) >= TRANSFER_WINDOW.min(max / 4) => {
                    return true
                }
                Some(_) => {}
            }
            if job.next >= job.keys.len() {
                return false;
            }
            if made >= slice {
                ready = true;
                return true;
            }
            let mut items = Vec::new();
            {
                let d = self.lock();
                while job.next < job.keys.len() && items.len() < TRANSFER_BATCH {
                    let key = &job.keys[job.next];
                    job.next += 1;
                    // Keys changed or deleted since the snapshot are sent
                    // as they are now (live broadcasts carry the rest).
                    if let Some(e) = d.map.get(key) {
                        items.push(TransferItem::new(
                            key,
                            e.value_bytes(),
                            e.owner(),
                            e.timestamp(),
                            job.rs2p.then(|| e.since()),
                        ));
                    } else if job.rs2p {
                        if let Some(t) = d.tombs.get(key, &()) {
                            items.push(TransferItem::new(
                                key,
                                NIL,
                                &t.meta.owner,
                                t.meta.timestamp,
                                Some(t.since),
                            ));
                        }
                    }
                }
            }
            made += items.iter().map(|i| i.payload.len()).sum::<usize>();
            send_transfer(mesh, job.conn, &items, now);
        });
        self.transfers = jobs;
        match (self.transfers.is_empty(), ready) {
            (true, _) => Pump::Done,
            (false, true) => Pump::Ready,
            (false, false) => Pump::Waiting,
        }
    }
}

/// Sends state-transfer items; to rs2p peers that read them, several per
/// message ([`sub::RS2P_STORES`]), up to [`BATCH_BYTES`] of items each.
pub(super) fn send_transfer(mesh: &mut Mesh, conn: ConnId, items: &[TransferItem], now: Now) {
    if mesh.batches(conn) && items.len() > 1 && items.iter().all(|i| i.count == 6) {
        return send_batches(mesh, conn, items, now);
    }
    let mut chunk: Vec<Bytes> = Vec::new();
    let mut chunk_len = 0;
    for item in items {
        let packed = Packed::from_encoded_payload(
            main::WHISPER,
            mesh.id(),
            now.unix,
            item.count,
            &item.payload,
        );
        let frame = packed.framed(mesh.framing(conn, packed.body().len()));
        chunk_len += frame.len();
        mesh.transfer_sent(frame.len());
        chunk.push(frame);
        if chunk_len >= TRANSFER_CHUNK {
            mesh.send_frames(conn, &std::mem::take(&mut chunk), now);
            chunk_len = 0;
        }
    }
    if !chunk.is_empty() {
        mesh.send_frames(conn, &chunk, now);
    }
}

/// Items (their encodings) in one batch, at most: a batch compresses as a
/// whole and pays one header, and stays far below any frame limit.
const BATCH_BYTES: usize = 64 << 10;

/// Sends rs2p items (six packets each: the store sub-flag, then the five
/// a batch carries per item) in batches.
fn send_batches(mesh: &mut Mesh, conn: ConnId, items: &[TransferItem], now: Now) {
    let mut head = Vec::with_capacity(1);
    msgpack::encode_into(&Value::from(sub::STORE), &mut head);
    let mut batch_head = Vec::with_capacity(1);
    msgpack::encode_into(&Value::from(sub::RS2P_STORES), &mut batch_head);
    let mut frames: Vec<Bytes> = Vec::new();
    let mut payload = batch_head.clone();
    let mut count = 1;
    let mut flush = |payload: &mut Vec<u8>, count: &mut usize, mesh: &mut Mesh| {
        if *count == 1 {
            return;
        }
        let packed =
            Packed::from_encoded_payload(main::WHISPER, mesh.id(), now.unix, *count, payload);
        let frame = packed.framed(mesh.framing(conn, packed.body().len()));
        mesh.transfer_sent(frame.len());
        frames.push(frame);
        payload.clear();
        payload.extend_from_slice(&batch_head);
        *count = 1;
    };
    for item in items {
        // Each item's encoding starts with the store sub-flag, which the
        // batch's own replaces.
        let body = item
            .payload
            .strip_prefix(head.as_slice())
            .unwrap_or(&item.payload);
        if payload.len() + body.len() > BATCH_BYTES {
            flush(&mut payload, &mut count, mesh);
        }
        payload.extend_from_slice(body);
        count += 5;
    }
    flush(&mut payload, &mut count, mesh);
    mesh.send_frames(conn, &frames, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer item packs to the same message, byte for byte, as the
    /// packets it stands for.
    #[test]
    fn transfer_items_pack_like_their_packets() {
        let value = Value::Map(vec![(Value::from("a"), Value::Bin(vec![1; 300]))]);
        for since in [None, Some(1_700_000_000)] {
            for v in [value.clone(), Value::Nil, Value::from(-5)] {
                let item = TransferItem::new(
                    b"key",
                    &msgpack::encode(&v),
                    b"owner-id",
                    1_795_733_000,
                    since,
                );
                let mut packets = vec![
                    Value::from(sub::STORE),
                    Value::Bin(b"key".to_vec()),
                    v,
                    Value::Bin(b"owner-id".to_vec()),
                    Value::from(1_795_733_000i64),
                ];
                packets.extend(since.map(Value::from));
                let want = Packed::new(main::WHISPER, b"me", 42, &packets);
                let got = Packed::from_encoded_payload(
                    main::WHISPER,
                    b"me",
                    42,
                    item.count,
                    &item.payload,
                );
                assert_eq!(got, want);
            }
        }
        assert_eq!(msgpack::encode(&Value::Nil), NIL);
    }
}
