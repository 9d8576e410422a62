//! Wire-level behaviour checked with a hand-driven raw peer: what rs2p
//! sends, in which order and encoding (PROTOCOL.md §6).

mod support;

use std::time::Duration;

use bytes::BytesMut;
use rs2p::wire::flags::{main, sub};
use rs2p::wire::{next_frame, Compression, Limits, Packed, WireMessage};
use rs2p::{MeshConfig, MeshSocket, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);
const RAW_ID: &[u8] = b"RawPeer11111111111111111111111111111111111111111111111111111111";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Raw {
    s: TcpStream,
    buf: BytesMut,
    methods: Vec<Compression>,
}

impl Raw {
    async fn connect(node: &MeshSocket) -> Raw {
        Raw {
            s: TcpStream::connect(node.local_addr()).await.unwrap(),
            buf: BytesMut::new(),
            methods: Vec::new(),
        }
    }

    /// The next frame: (was it sent uncompressed, decoded message).
    async fn next(&mut self) -> (bool, WireMessage) {
        let limits = Limits::default();
        loop {
            if let Some(body) = next_frame(&mut self.buf, &limits).unwrap() {
                let p = Packed::from_body(body.clone(), &self.methods, &limits).unwrap();
                // Uncompressed when the body is the checksum and msgpack.
                let plain = p.body() == &body;
                let m = p.parse(&limits).unwrap();
                if m.sub_flag() == Some(sub::PING) {
                    // Padding that keeps py2p's reader safe (this raw peer
                    // looks like py2p); ignored as py2p ignores it.
                    continue;
                }
                if m.sub_flag() == Some(sub::REQUEST) && m.payload.len() == 2 {
                    // The node asking for peers now and then.
                    assert_eq!(m.payload[1], Value::Bin(b"*".to_vec()));
                    continue;
                }
                return (plain, m);
            }
            let n = tokio::time::timeout(T, self.s.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    async fn next_with_sub(&mut self, flag: u8) -> WireMessage {
        loop {
            let (_, m) = self.next().await;
            if m.sub_flag() == Some(flag) {
                return m;
            }
        }
    }

    async fn send(&mut self, msg_type: u8, payload: &[Value]) {
        let p = Packed::new(msg_type, RAW_ID, now(), payload);
        self.s.write_all(&p.to_frame(None)).await.unwrap();
    }

    async fn handshake(&mut self, node: &MeshSocket, methods: &[Compression]) {
        self.send(
            main::WHISPER,
            &[
                Value::from(sub::HANDSHAKE),
                Value::Bin(RAW_ID.to_vec()),
                Value::Bin(node.protocol_id().as_bytes().to_vec()),
                Value::Array(vec!["127.0.0.1".into(), Value::from(9u16)]),
                Value::Array(methods.iter().map(|m| Value::from(m.flag())).collect()),
            ],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_first_uncompressed_then_peers_and_requests() {
    let node = mesh_node().await;
    let mut raw = Raw::connect(&node).await;
    // The node's handshake comes first, uncompressed, with bin ids.
    let (plain, hs) = raw.next().await;
    assert!(plain);
    assert_eq!(hs.msg_type, main::WHISPER);
    assert_eq!(hs.sub_flag(), Some(sub::HANDSHAKE));
    assert_eq!(hs.payload.len(), 5);
    assert_eq!(hs.payload[1], Value::Bin(node.id().as_bytes().to_vec()));
    assert_eq!(
        hs.payload[2],
        Value::Bin(node.protocol_id().as_bytes().to_vec())
    );
    let port = node.local_addr().port();
    assert_eq!(
        hs.payload[3],
        Value::Array(vec!["127.0.0.1".into(), Value::from(port)])
    );

    raw.methods = vec![Compression::Zlib];
    raw.handshake(&node, &[Compression::Zlib]).await;
    // Then our peers list, compressed with the method we advertised.
    let (plain, peers) = raw.next().await;
    assert!(
        !plain,
        "frames after the handshake use the negotiated compression"
    );
    assert_eq!(peers.sub_flag(), Some(sub::PEERS));

    // The peers request, as str (py2p's way) and as bin.
    raw.send(
        main::WHISPER,
        &[Value::from(sub::REQUEST), Value::from("*")],
    )
    .await;
    raw.next_with_sub(sub::PEERS).await;
    raw.send(
        main::WHISPER,
        &[Value::from(sub::REQUEST), Value::Bin(b"*".to_vec())],
    )
    .await;
    raw.next_with_sub(sub::PEERS).await;

    // Renegotiation: no compression from now on; the node answers with its
    // intersection (none) and sends uncompressed.
    raw.send(
        main::RENEGOTIATE,
        &[Value::from(sub::COMPRESSION), Value::Array(vec![])],
    )
    .await;
    let (_, ans) = raw.next().await;
    assert_eq!(ans.msg_type, main::RENEGOTIATE);
    assert_eq!(
        ans.payload,
        vec![Value::from(sub::COMPRESSION), Value::Array(vec![])]
    );
    raw.methods.clear();
    raw.send(
        main::WHISPER,
        &[Value::from(sub::REQUEST), Value::from("*")],
    )
    .await;
    let (plain, _) = raw.next().await;
    assert!(plain, "still compressed after renegotiating none");

    // Resend: the last frame again, byte for byte the same message.
    raw.send(main::RENEGOTIATE, &[Value::from(sub::RESEND)])
        .await;
    let (_, again) = raw.next().await;
    assert_eq!(again.sub_flag(), Some(sub::PEERS));
    node.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whispers_are_not_relayed_and_broadcasts_keep_their_bytes() {
    let a = mesh_node().await;
    let b = mesh_node().await;
    b.connect("127.0.0.1", a.local_addr().port()).await.unwrap();
    wait_until("a-b", T, || async { peer_count(&a).await == 1 }).await;
    let mut raw = Raw::connect(&a).await;
    raw.next().await;
    raw.handshake(&a, &[]).await;
    wait_until("raw joined", T, || async { peer_count(&a).await == 2 }).await;

    // A whisper to a is not passed on to b.
    raw.send(
        main::WHISPER,
        &[Value::from(sub::WHISPER), Value::from("for a only")],
    )
    .await;
    let m = tokio::time::timeout(T, a.recv()).await.unwrap().unwrap();
    assert_eq!(m.body(), &[Value::from("for a only")]);

    // A broadcast reaches b with its original id (the bytes were relayed
    // unchanged), and b's own broadcast reaches raw through a.
    let p = Packed::new(
        main::BROADCAST,
        RAW_ID,
        now(),
        &[Value::from(0), Value::from("flood")],
    );
    raw.s.write_all(&p.to_frame(None)).await.unwrap();
    let m = tokio::time::timeout(T, b.recv()).await.unwrap().unwrap();
    assert_eq!(m.id(), p.id());
    assert_eq!(m.body(), &[Value::from("flood")]);
    assert!(b.try_recv().is_none(), "the whisper was relayed");
    let id = b.send(vec![Value::from("from b")]).await.unwrap();
    loop {
        let (_, m) = raw.next().await;
        if m.msg_type == main::BROADCAST && m.sender == b.id().as_bytes() {
            assert_eq!(m.payload, vec![Value::from(0), Value::from("from b")]);
            let repacked = Packed::new(main::BROADCAST, &m.sender, m.time, &m.payload);
            assert_eq!(repacked.id(), id);
            break;
        }
    }
    // A broadcast older than 60 s is neither handled nor relayed.
    let old = Packed::new(
        main::BROADCAST,
        RAW_ID,
        now() - 120,
        &[Value::from(0), Value::from("old")],
    );
    raw.s.write_all(&old.to_frame(None)).await.unwrap();
    let marker = Packed::new(
        main::BROADCAST,
        RAW_ID,
        now(),
        &[Value::from(0), Value::from("marker")],
    );
    raw.s.write_all(&marker.to_frame(None)).await.unwrap();
    let m = tokio::time::timeout(T, b.recv()).await.unwrap().unwrap();
    assert_eq!(m.body(), &[Value::from("marker")]);
    assert_eq!(a.stats().await.unwrap().expired_broadcasts, 1);
    a.close().await;
    b.close().await;
}

/// `reply` to a sender that is not a neighbour goes through the
/// request/response route: the node that knows it answers with its
/// address, and the reply is whispered after connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_to_a_non_neighbour_goes_through_a_route_request() {
    let chain = || {
        let mut cfg = MeshConfig::new(local());
        cfg.max_outgoing = 0; // only explicit connects: a chain a - b - c
        cfg
    };
    let a = MeshSocket::bind(chain()).await.unwrap();
    let b = MeshSocket::bind(chain()).await.unwrap();
    let c = MeshSocket::bind(chain()).await.unwrap();
    a.connect("127.0.0.1", b.local_addr().port()).await.unwrap();
    c.connect("127.0.0.1", b.local_addr().port()).await.unwrap();
    // Each end counts a link once it has the other's handshake: b having
    // both says nothing yet about a and c.
    wait_until("chain", T, || async {
        peer_count(&b).await == 2 && peer_count(&a).await == 1 && peer_count(&c).await == 1
    })
    .await;

    c.send(vec![Value::from("question")]).await.unwrap();
    let q = tokio::time::timeout(T, a.recv()).await.unwrap().unwrap();
    assert_eq!(q.sender(), c.id());
    q.reply(vec![Value::from("answer")]).await.unwrap();
    // b also got the question; the answer is a whisper for c alone.
    let got = loop {
        let m = tokio::time::timeout(T, c.recv()).await.unwrap().unwrap();
        if !m.is_broadcast() {
            break m;
        }
    };
    assert_eq!(got.sender(), a.id());
    assert_eq!(got.body(), &[Value::from("answer")]);
    assert!(
        a.peers().await.unwrap().iter().any(|p| p.id == c.id()),
        "a connected to c to answer"
    );
    for n in [a, b, c] {
        n.close().await;
    }
}
