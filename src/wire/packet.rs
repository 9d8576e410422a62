//! Typed packets: a [`WireMessage`]'s payload read once, by name, instead of
//! by position in every handler.
//!
//! Parsing is as lenient as the references' handlers are: a packet whose
//! fields have the wrong types becomes [`Packet::Ignored`] (the message is
//! consumed and nothing happens, where py2p would drop the link), and a
//! payload that names no packet the protocol core knows is
//! [`Packet::Other`] (a user message, or one for a handler).

use crate::value::Value;
use crate::wire::flags::{compression, main, sub};
use crate::wire::WireMessage;

/// A peer's first message (`[handshake, id, protocol id, [host, port],
/// compressions]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Handshake {
    /// The peer's node id.
    pub id: Vec<u8>,
    /// Its protocol id (subnet and version hash).
    pub protocol_id: Vec<u8>,
    /// True when the protocol id came as str (js2p does that; py2p and
    /// rs2p send bin).
    pub protocol_id_is_str: bool,
    /// The address it advertises, each half when well-typed.
    pub addr: Option<(Option<String>, Option<u16>)>,
    /// Its compression flags, in its order of preference.
    pub methods: Vec<i64>,
}

impl Handshake {
    /// True when the compression list carries rs2p's marker.
    pub fn is_rs2p(&self) -> bool {
        self.methods.contains(&i64::from(compression::RS2P_MARKER))
    }

    /// True when the peer is an rs2p node that takes part in the broadcast
    /// tree.
    pub fn tree(&self) -> bool {
        self.is_rs2p() && self.methods.contains(&i64::from(compression::RS2P_TREE))
    }

    /// True when the peer is an rs2p node that reads batched
    /// state-transfer items.
    pub fn batches(&self) -> bool {
        self.is_rs2p() && self.methods.contains(&i64::from(compression::RS2P_BATCHES))
    }

    /// True when the peer is an rs2p node that reads frames without their
    /// checksum.
    pub fn bare(&self) -> bool {
        self.is_rs2p() && self.methods.contains(&i64::from(compression::RS2P_BARE))
    }

    /// True when the peer is an rs2p node that pushes the broadcasts it
    /// creates to every neighbour.
    pub fn creator_push(&self) -> bool {
        self.is_rs2p()
            && self
                .methods
                .contains(&i64::from(compression::RS2P_CREATOR_PUSH))
    }

    /// True when the peer is an rs2p node that speaks set reconciliation.
    pub fn reconciles(&self) -> bool {
        self.is_rs2p()
            && self
                .methods
                .contains(&i64::from(compression::RS2P_RECONCILES))
    }

    /// The advertised address, when both halves are there.
    pub fn full_addr(&self) -> Option<(String, u16)> {
        match &self.addr {
            Some((Some(h), Some(p))) => Some((h.clone(), *p)),
            _ => None,
        }
    }
}

/// One entry of a peers list: where a node listens and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Node id.
    pub id: Vec<u8>,
}

/// A sync store: a live write (3 packets) or a state-transfer item (5, or 6
/// between rs2p nodes).
#[derive(Clone, Debug, PartialEq)]
pub struct Store {
    /// The key.
    pub key: Vec<u8>,
    /// The value; nil is a delete.
    pub value: Value,
    /// With a state-transfer item: the owner, the write's time and, from
    /// rs2p nodes, the lease start.
    pub transfer: Option<TransferMeta>,
}

/// The metadata a state-transfer item carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferMeta {
    /// Who wrote the value.
    pub owner: Vec<u8>,
    /// When.
    pub timestamp: i64,
    /// When the owner's lease began (rs2p's sixth packet); `None` from py2p
    /// and js2p.
    pub since: Option<i64>,
}

/// A message's payload, typed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Packet {
    /// The handshake.
    Handshake(Handshake),
    /// A peers list (entries that are not `[[host, port], id]` are left out).
    Peers(Vec<PeerEntry>),
    /// rs2p only: the sender's neighbour ids ([`sub::RS2P_NEIGHBOURS`]).
    Neighbours(Vec<Vec<u8>>),
    /// The peers request `'*'`.
    RequestPeers,
    /// A route request: who can reach `wanted`?
    Request {
        /// The request id, echoed in the response.
        req_id: Vec<u8>,
        /// The node looked for.
        wanted: Vec<u8>,
    },
    /// A route response; `target` is `None` when its fields are malformed.
    Response {
        /// The request id.
        req_id: Vec<u8>,
        /// Where the node looked for listens.
        target: Option<PeerEntry>,
    },
    /// Renegotiation: the peer's compression list now.
    Compression(Vec<i64>),
    /// Renegotiation: send the last frame again.
    Resend,
    /// A sync store.
    Store(Store),
    /// rs2p only: state-transfer items in one message
    /// ([`sub::RS2P_STORES`]).
    Stores(Vec<Store>),
    /// A sync delta: merge `delta` into the map at `key`.
    Delta {
        /// The key.
        key: Vec<u8>,
        /// The entries to merge.
        delta: Vec<(Value, Value)>,
    },
    /// A handshake without an id or a protocol id: the connection is
    /// dropped.
    BadHandshake,
    /// rs2p only: a set-reconciliation message ([`sub::RS2P_SYNC`]; the
    /// protocol core reads its ranges from the payload).
    Sync,
    /// rs2p only: a want list ([`sub::RS2P_WANT`]).
    Want,
    /// rs2p only: about this many keys new to us follow
    /// ([`sub::RS2P_EXPECT`]).
    Expect(u64),
    /// rs2p only: broadcasts the peer holds ([`sub::RS2P_IHAVE`]).
    IHave(TreeIds),
    /// rs2p only: push to the peer again and send it these
    /// ([`sub::RS2P_GRAFT`]).
    Graft(TreeIds),
    /// rs2p only: stop pushing to the peer ([`sub::RS2P_PRUNE`]).
    Prune,
    /// rs2p only: a keepalive probe, or (`reply`) its answer.
    Probe {
        /// True for the answer.
        reply: bool,
    },
    /// A packet the core knows whose fields are malformed: consumed, no
    /// effect.
    Ignored(&'static str),
    /// Anything else: user broadcasts and whispers, unknown sub-flags.
    Other,
}

fn bytes(v: Option<&Value>) -> Option<Vec<u8>> {
    v.and_then(Value::as_bytes).map(<[u8]>::to_vec)
}

fn port(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
}

/// `[[host, port], id]`.
fn peer_entry(v: &Value) -> Option<PeerEntry> {
    let e = v.as_array()?;
    let addr = e.first()?.as_array()?;
    Some(PeerEntry {
        host: addr.first()?.as_str()?.to_owned(),
        port: port(addr.get(1))?,
        id: bytes(e.get(1))?,
    })
}

/// Message ids announced or grafted in one packet, at most.
pub const MAX_MESSAGE_IDS: usize = 1024;

/// Broadcasts named in an announcement or a graft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeIds {
    /// The first 8 bytes of each id, little-endian: `[u64, ...]`.
    Full(Vec<u64>),
    /// The first 4 bytes of each id, little-endian, one after the other in
    /// a bin: to peers that list
    /// [`RS2P_BARE`](crate::wire::flags::compression::RS2P_BARE), 4 bytes
    /// an id instead of 9.
    Short(Vec<u32>),
}

impl TreeIds {
    /// The packet for `ids`: short ones (their first 4 bytes) when `short`.
    pub fn to_value(ids: &[u64], short: bool) -> Value {
        if short {
            // Truncation intended: the first 4 bytes of the id.
            Value::Bin(
                ids.iter()
                    .flat_map(|id| (*id as u32).to_le_bytes())
                    .collect(),
            )
        } else {
            Value::Array(ids.iter().map(|id| Value::from(*id)).collect())
        }
    }

    /// Reads either form (`None` when malformed or too long).
    fn parse(v: Option<&Value>) -> Option<TreeIds> {
        match v? {
            Value::Array(list) if list.len() <= MAX_MESSAGE_IDS => list
                .iter()
                .map(Value::as_u64)
                .collect::<Option<_>>()
                .map(TreeIds::Full),
            Value::Bin(b) if b.len() % 4 == 0 && b.len() / 4 <= MAX_MESSAGE_IDS => {
                Some(TreeIds::Short(
                    b.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ))
            }
            _ => None,
        }
    }
}

impl Packet {
    /// Reads a message's payload.
    ///
    /// ```
    /// use rs2p::wire::packet::Packet;
    /// use rs2p::wire::WireMessage;
    /// use rs2p::Value;
    /// let msg = WireMessage {
    ///     msg_type: 2,
    ///     sender: b"me".to_vec(),
    ///     time: 1,
    ///     payload: vec![Value::from(8u8), Value::Bin(b"*".to_vec())],
    /// };
    /// assert_eq!(Packet::parse(&msg), Packet::RequestPeers);
    /// ```
    pub fn parse(msg: &WireMessage) -> Packet {
        let p = &msg.payload;
        let flag = msg.sub_flag();
        if msg.msg_type == main::RENEGOTIATE {
            return match flag {
                Some(sub::COMPRESSION) => match p.get(1).and_then(Value::as_array) {
                    Some(list) => {
                        Packet::Compression(list.iter().filter_map(Value::as_i64).collect())
                    }
                    None => Packet::Ignored("compression list is not an array"),
                },
                Some(sub::RESEND) => Packet::Resend,
                _ => Packet::Ignored("unknown renegotiation"),
            };
        }
        match flag {
            Some(sub::HANDSHAKE) if p.len() == 5 => {
                let (Some(id), Some(protocol_id)) = (bytes(p.get(1)), bytes(p.get(2))) else {
                    return Packet::BadHandshake;
                };
                Packet::Handshake(Handshake {
                    id,
                    protocol_id,
                    protocol_id_is_str: p[2].is_str(),
                    addr: p[3].as_array().map(|a| {
                        (
                            a.first().and_then(Value::as_str).map(str::to_owned),
                            port(a.get(1)),
                        )
                    }),
                    methods: p[4]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default(),
                })
            }
            Some(sub::PEERS) => match p.get(1).and_then(Value::as_array) {
                Some(list) => Packet::Peers(list.iter().filter_map(peer_entry).collect()),
                None => Packet::Ignored("peers list is not an array"),
            },
            Some(sub::RS2P_NEIGHBOURS) => match p.get(1).and_then(Value::as_array) {
                Some(list) => Packet::Neighbours(
                    list.iter()
                        .filter_map(Value::as_bytes)
                        .map(<[u8]>::to_vec)
                        .collect(),
                ),
                None => Packet::Ignored("neighbour list is not an array"),
            },
            Some(sub::RS2P_IHAVE) => match TreeIds::parse(p.get(1)) {
                Some(ids) => Packet::IHave(ids),
                None => Packet::Ignored("malformed announcement"),
            },
            Some(sub::RS2P_GRAFT) => match TreeIds::parse(p.get(1)) {
                Some(ids) => Packet::Graft(ids),
                None => Packet::Ignored("malformed graft"),
            },
            Some(sub::RS2P_PRUNE) => Packet::Prune,
            Some(sub::RS2P_SYNC) => Packet::Sync,
            Some(sub::RS2P_WANT) => Packet::Want,
            Some(sub::RS2P_EXPECT) => match p.get(1).and_then(Value::as_u64) {
                Some(count) => Packet::Expect(count),
                None => Packet::Ignored("malformed expect"),
            },
            Some(sub::RS2P_PROBE) => Packet::Probe {
                reply: p.get(1).and_then(Value::as_u64) == Some(1),
            },
            Some(sub::REQUEST) if p.len() == 2 && p[1].as_bytes() == Some(b"*") => {
                Packet::RequestPeers
            }
            Some(sub::REQUEST) if p.len() == 3 => match (bytes(p.get(1)), bytes(p.get(2))) {
                (Some(req_id), Some(wanted)) => Packet::Request { req_id, wanted },
                _ => Packet::Ignored("route request ids are not str or bin"),
            },
            Some(sub::RESPONSE) => match bytes(p.get(1)) {
                Some(req_id) => Packet::Response {
                    req_id,
                    target: p.get(2).and_then(peer_entry),
                },
                None => Packet::Other,
            },
            Some(sub::RS2P_STORES) => Packet::stores(p[1..].to_vec()),
            Some(sub::STORE) if p.len() == 5 || p.len() == 6 => {
                let (Some(key), Some(owner), Some(timestamp)) =
                    (bytes(p.get(1)), bytes(p.get(3)), p[4].as_i64())
                else {
                    return Packet::Ignored("state-transfer store with malformed fields");
                };
                Packet::Store(Store {
                    key,
                    value: p[2].clone(),
                    transfer: Some(TransferMeta {
                        owner,
                        timestamp,
                        since: p.get(5).and_then(Value::as_i64),
                    }),
                })
            }
            Some(sub::STORE) => match bytes(p.get(1)) {
                Some(key) => Packet::Store(Store {
                    key,
                    value: p.get(2).cloned().unwrap_or(Value::Nil),
                    transfer: None,
                }),
                None => Packet::Ignored("store key is not str or bin"),
            },
            Some(sub::DELTA) => match (bytes(p.get(1)), p.get(2).and_then(Value::as_map)) {
                (Some(key), Some(delta)) => Packet::Delta {
                    key,
                    delta: delta.to_vec(),
                },
                _ => Packet::Ignored("delta without a key or a map"),
            },
            _ => Packet::Other,
        }
    }

    /// True for the packets the sync dictionary handles (a plain mesh node
    /// hands them to its message handlers instead).
    pub fn is_sync(&self) -> bool {
        matches!(
            self,
            Packet::Store(_)
                | Packet::Stores(_)
                | Packet::Delta { .. }
                | Packet::Sync
                | Packet::Want
                | Packet::Expect(_)
        )
    }
}

impl Packet {
    /// A batch of state-transfer items ([`sub::RS2P_STORES`]) from the
    /// packets after its sub-flag, five each (key, value, owner, timestamp,
    /// lease start), moved rather than copied: a joining node reads its
    /// whole dictionary this way.
    pub fn stores(packets: Vec<Value>) -> Packet {
        if packets.len() % 5 != 0 {
            return Packet::Ignored("malformed batch of state-transfer items");
        }
        let mut list = Vec::with_capacity(packets.len() / 5);
        let mut it = packets.into_iter();
        while let (Some(key), Some(value), Some(owner), Some(timestamp), Some(since)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        {
            let (Some(key), Some(owner), Some(timestamp), Some(since)) = (
                owned_bytes(key),
                owned_bytes(owner),
                timestamp.as_i64(),
                since.as_i64(),
            ) else {
                return Packet::Ignored("malformed batch of state-transfer items");
            };
            list.push(Store {
                key,
                value,
                transfer: Some(TransferMeta {
                    owner,
                    timestamp,
                    since: Some(since),
                }),
            });
        }
        Packet::Stores(list)
    }
}

/// A str or bin packet's bytes, moved out of it.
fn owned_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::Bin(b) => Some(b),
        Value::Str(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// True for a live sync delete (`[store, key, nil]`), which is never sent to
/// js2p-like peers: js2p cannot delete and drops the link that delivers one.
pub fn is_live_delete(payload: &[Value]) -> bool {
    payload.len() == 3 && payload[0].as_u64() == Some(u64::from(sub::STORE)) && payload[2].is_nil()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(msg_type: u8, payload: Vec<Value>) -> WireMessage {
        WireMessage {
            msg_type,
            sender: b"s".to_vec(),
            time: 1,
            payload,
        }
    }

    #[test]
    fn a_batch_of_transfer_items_reads_as_its_stores() {
        let item = |k: &str, v: Value| {
            [
                Value::Bin(k.as_bytes().to_vec()),
                v,
                Value::Bin(b"owner".to_vec()),
                Value::from(1_800_000_000),
                Value::from(1_799_999_000),
            ]
        };
        let mut payload = vec![Value::from(sub::RS2P_STORES)];
        payload.extend(item("a", Value::from(1)));
        payload.extend(item("b", Value::Nil));
        let Packet::Stores(stores) = Packet::parse(&msg(main::WHISPER, payload.clone())) else {
            panic!("not a batch");
        };
        assert_eq!(stores.len(), 2);
        assert_eq!(stores[1].key, b"b");
        assert!(stores[1].value.is_nil());
        assert_eq!(
            stores[0].transfer,
            Some(TransferMeta {
                owner: b"owner".to_vec(),
                timestamp: 1_800_000_000,
                since: Some(1_799_999_000),
            })
        );
        // An item cut short, or a field of the wrong type, and the batch is
        // ignored whole.
        payload.pop();
        assert!(matches!(
            Packet::parse(&msg(main::WHISPER, payload.clone())),
            Packet::Ignored(_)
        ));
        payload.push(Value::from("not a time"));
        assert!(matches!(
            Packet::parse(&msg(main::WHISPER, payload)),
            Packet::Ignored(_)
        ));
    }

    #[test]
    fn handshake_kinds_and_addresses() {
        let hs = |proto: Value, methods: Vec<Value>| {
            Packet::parse(&msg(
                main::WHISPER,
                vec![
                    Value::from(sub::HANDSHAKE),
                    Value::Bin(b"id".to_vec()),
                    proto,
                    Value::Array(vec![Value::from("h"), Value::from(70_000)]),
                    Value::Array(methods),
                ],
            ))
        };
        let Packet::Handshake(h) = hs(Value::from("p"), vec![Value::from(0x2f)]) else {
            panic!("not a handshake")
        };
        assert!(h.protocol_id_is_str && h.is_rs2p());
        assert_eq!(h.addr, Some((Some("h".into()), None)), "port out of range");
        assert_eq!(h.full_addr(), None);
        let Packet::Handshake(h) = hs(Value::Bin(b"p".to_vec()), vec![Value::from(0x13)]) else {
            panic!("not a handshake")
        };
        assert!(!h.protocol_id_is_str && !h.is_rs2p());
        assert_eq!(hs(Value::from(5), vec![]), Packet::BadHandshake);
    }

    #[test]
    fn stores_live_and_transferred() {
        let live = Packet::parse(&msg(
            main::BROADCAST,
            vec![Value::from(sub::STORE), Value::from("k")],
        ));
        assert_eq!(
            live,
            Packet::Store(Store {
                key: b"k".to_vec(),
                value: Value::Nil,
                transfer: None
            })
        );
        let transfer = Packet::parse(&msg(
            main::WHISPER,
            vec![
                Value::from(sub::STORE),
                Value::from("k"),
                Value::from(1),
                Value::from("o"),
                Value::from(5),
                Value::from(3),
            ],
        ));
        let Packet::Store(s) = transfer else {
            panic!("not a store")
        };
        assert_eq!(s.transfer.unwrap().since, Some(3));
        let bad = Packet::parse(&msg(
            main::WHISPER,
            vec![
                Value::from(sub::STORE),
                Value::from("k"),
                Value::from(1),
                Value::from(7),
                Value::from(5),
            ],
        ));
        assert!(matches!(bad, Packet::Ignored(_)));
    }

    #[test]
    fn requests_and_renegotiation() {
        let r = |p| Packet::parse(&msg(main::WHISPER, p));
        assert_eq!(
            r(vec![Value::from(sub::REQUEST), Value::from("*")]),
            Packet::RequestPeers
        );
        assert_eq!(
            r(vec![
                Value::from(sub::REQUEST),
                Value::from("a"),
                Value::from("b")
            ]),
            Packet::Request {
                req_id: b"a".to_vec(),
                wanted: b"b".to_vec()
            }
        );
        assert_eq!(r(vec![Value::from(sub::REQUEST)]), Packet::Other);
        assert_eq!(
            Packet::parse(&msg(main::RENEGOTIATE, vec![Value::from(sub::RESEND)])),
            Packet::Resend
        );
        assert_eq!(
            r(vec![Value::from(sub::BROADCAST), Value::from(1)]),
            Packet::Other
        );
    }
}
