//! Hostile and broken peers: each is dropped on its own, the honest peers
//! keep exchanging messages throughout.

mod support;

use std::time::Duration;

use rs2p::wire::{flags, Compression, Packed};
use rs2p::{MeshConfig, MeshSocket, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

async fn honest_pair(cfg: MeshConfig) -> (MeshSocket, MeshSocket) {
    let a = MeshSocket::bind(cfg).await.unwrap();
    let b = mesh_node().await;
    b.connect("127.0.0.1", a.local_addr().port()).await.unwrap();
    wait_until("honest link", T, || async {
        peer_count(&a).await == 1 && peer_count(&b).await == 1
    })
    .await;
    (a, b)
}

async fn still_talking(a: &MeshSocket, b: &MeshSocket, tag: &str) {
    a.send(vec![Value::from(tag)]).await.unwrap();
    let m = tokio::time::timeout(T, b.recv())
        .await
        .expect("honest peer still served")
        .unwrap();
    assert_eq!(m.body(), &[Value::from(tag)]);
}

/// A raw connection that completes the handshake as a py2p-like node.
async fn handshaken_raw(a: &MeshSocket, methods: &[Compression]) -> TcpStream {
    let mut s = TcpStream::connect(a.local_addr()).await.unwrap();
    let id = b"EvilNode1111111111111111111111111111111111111111111111111111111";
    s.write_all(&handshake(a, id, methods)).await.unwrap();
    s
}

/// A handshake frame for `a`'s subnet from a node with this id.
fn handshake(a: &MeshSocket, id: &[u8], methods: &[Compression]) -> bytes::Bytes {
    let methods = methods.iter().map(|m| Value::from(m.flag())).collect();
    handshake_listing(a, id, methods)
}

/// A handshake frame whose list of methods is `methods` as given (rs2p's
/// capability values included).
fn handshake_listing(a: &MeshSocket, id: &[u8], methods: Vec<Value>) -> bytes::Bytes {
    Packed::new(
        flags::main::WHISPER,
        id,
        now(),
        &[
            Value::from(flags::sub::HANDSHAKE),
            Value::Bin(id.to_vec()),
            Value::Bin(a.protocol_id().as_bytes().to_vec()),
            Value::Array(vec!["127.0.0.1".into(), Value::from(1u16)]),
            Value::Array(methods),
        ],
    )
    .to_frame(None)
}

/// A peer of `node` that reads slower than a node writes: a small receive
/// window, read 16 KiB at a time with a pause after each read. Returns the
/// reading task and the bytes it read so far.
async fn slow_reader(
    node: &MeshSocket,
    id: &[u8],
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = sock.connect(node.local_addr()).await.unwrap();
    s.write_all(&handshake(node, id, &[])).await.unwrap();
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = got.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    (reader, got)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn closed_by_peer(s: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the hostile connection was not closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_drop_only_the_sender() {
    let mut cfg = MeshConfig::new(local());
    cfg.limits.max_decompressed = 4 << 20;
    let (a, b) = honest_pair(cfg).await;

    let mut junk = TcpStream::connect(a.local_addr()).await.unwrap();
    junk.write_all(&[0, 0, 0, 40]).await.unwrap();
    junk.write_all(&[0x5a; 40]).await.unwrap();
    closed_by_peer(&mut junk).await;
    still_talking(&a, &b, "after garbage").await;

    // A 4 GiB length prefix: refused at once, nothing buffered.
    let mut huge = TcpStream::connect(a.local_addr()).await.unwrap();
    huge.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    closed_by_peer(&mut huge).await;
    still_talking(&a, &b, "after 4 GiB prefix").await;

    // Compression bombs after a valid handshake: 64 MiB of zeros against a
    // 4 MiB limit.
    for m in [Compression::Zlib, Compression::Bz2, Compression::Lzma] {
        let mut s = handshaken_raw(&a, &[m]).await;
        let bomb_body = m.compress(&vec![0u8; 64 << 20]);
        let mut frame = (bomb_body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&bomb_body);
        s.write_all(&frame).await.unwrap();
        closed_by_peer(&mut s).await;
        still_talking(&a, &b, m.name()).await;
    }
    assert_eq!(peer_count(&a).await, 1);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_time_out() {
    let mut cfg = MeshConfig::new(local());
    cfg.incomplete_frame_timeout = Duration::from_millis(500);
    cfg.handshake_timeout = Duration::from_millis(500);
    let (a, b) = honest_pair(cfg).await;
    // Half a frame, then nothing.
    let mut slow = handshaken_raw(&a, &[]).await;
    slow.write_all(&[0, 0, 1, 0, 1, 2, 3]).await.unwrap();
    // Connects and never says anything.
    let mut silent = TcpStream::connect(a.local_addr()).await.unwrap();
    still_talking(&a, &b, "during slowloris").await;
    closed_by_peer(&mut slow).await;
    closed_by_peer(&mut silent).await;
    still_talking(&a, &b, "after slowloris").await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_dropped() {
    let mut cfg = MeshConfig::new(local());
    cfg.send_queue = 16;
    let (a, b) = honest_pair(cfg).await;
    let mut stuck = handshaken_raw(&a, &[]).await;
    wait_until("stuck peer handshaken", T, || async {
        peer_count(&a).await == 2
    })
    .await;
    // Send until the stuck peer's socket buffers and queue are full; the
    // honest peer gets every message without delay meanwhile.
    let big = Value::Bin(
        (0..256 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    let mut sent = 0;
    while peer_count(&a).await == 2 {
        // Distinct messages: an identical one in the same second is a duplicate.
        a.send(vec![Value::from(sent), big.clone()]).await.unwrap();
        let Ok(Some(m)) = tokio::time::timeout(T, b.recv()).await else {
            panic!(
                "honest peer delayed after {sent} messages; a has {:?}, b has {:?}",
                a.peers().await,
                b.peers().await
            );
        };
        assert_eq!(m.body(), &[Value::from(sent), big.clone()]);
        sent += 1;
        assert!(sent < 2000, "never dropped the peer that does not read");
    }
    assert_eq!(a.peers().await.unwrap()[0].id, b.id());
    still_talking(&a, &b, "after dropping the stuck peer").await;
    drop(stuck.shutdown().await);
    a.close().await;
    b.close().await;
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// 1,000 idle connections and 50,000 distinct broadcasts from a hostile
/// peer: memory stays bounded and the honest sync peers stay in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_a_broadcast_flood() {
    let a = sync_node(true).await;
    let b = sync_node(true).await;
    b.connect("127.0.0.1", a.mesh().local_addr().port())
        .await
        .unwrap();
    wait_until("honest link", T, || async {
        peer_count(a.mesh()).await == 1
    })
    .await;

    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(a.mesh().local_addr()).await.unwrap());
    }
    wait_until("1,000 idle connections held", T, || async {
        a.mesh().stats().await.unwrap().connections >= 1001
    })
    .await;
    a.set("during-idle", 1).await.unwrap();
    wait_until("b in sync", T, || async { b.get("during-idle").is_some() }).await;

    let mut evil = handshaken_raw(a.mesh(), &[]).await;
    wait_until("flooder handshaken", T, || async {
        peer_count(a.mesh()).await == 2
    })
    .await;
    let evil_id = b"EvilNode1111111111111111111111111111111111111111111111111111111";
    let mut batch = Vec::new();
    for i in 0..50_000u32 {
        let p = Packed::new(
            flags::main::BROADCAST,
            evil_id,
            now(),
            &[Value::from(0), Value::from(i), Value::Bin(vec![0; 64])],
        );
        batch.extend_from_slice(&p.to_frame(None));
        if i % 1000 == 999 {
            evil.write_all(&batch).await.unwrap();
            batch.clear();
            // The honest peers keep syncing throughout.
            a.set(format!("during-flood-{i}"), i).await.unwrap();
        }
    }
    wait_until("every honest write on b", T, || async {
        (0..50).all(|k| b.contains_key(format!("during-flood-{}", k * 1000 + 999)))
    })
    .await;
    // Both queues are bounded; the flood went through to b as well.
    assert!(a.mesh().drain().len() <= 65_536);
    let rss = peak_rss_mib();
    assert!(rss < 256, "peak RSS {rss} MiB");
    eprintln!("peak RSS with 1,000 idle connections and 50,000 broadcasts: {rss} MiB");
    drop(idle);
    a.close().await;
    b.close().await;
}

/// A peer that reads, but slower than the node writes: local sends wait
/// for room in its queue instead of overflowing it, so it is not dropped
/// and receives everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_writer_down_instead_of_being_dropped() {
    let mut cfg = MeshConfig::new(local());
    cfg.send_queue = 32;
    cfg.send_queue_bytes = 64 * 1024;
    let a = MeshSocket::bind(cfg).await.unwrap();
    // About 16 MB/s at most.
    let id = b"SlowNode1111111111111111111111111111111111111111111111111111111";
    let (reader, got) = slow_reader(&a, id).await;
    wait_until("slow peer handshaken", T, || async {
        peer_count(&a).await == 1
    })
    .await;
    const N: usize = 10_000;
    let payload = Value::Bin(vec![0x5a; 1024]);
    for i in 0..N {
        a.send(vec![Value::from(i), payload.clone()]).await.unwrap();
    }
    // Every frame is over 1,100 bytes (1 KiB value, id, checksum, framing).
    wait_until("everything read", T, || async {
        got.load(std::sync::atomic::Ordering::Relaxed) >= N * 1100
    })
    .await;
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.slow_peers_dropped, 0, "{stats:?}");
    assert_eq!(peer_count(&a).await, 1);
    reader.abort();
    a.close().await;
}

/// A peer that reads in small bursts gets every frame whole, once and in
/// order: frames the node writes straight onto the stream while nothing is
/// queued, the rest of a frame the stream took only in part, and frames
/// the writer task writes from the queue never interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_frame_whole_and_in_order() {
    let mut cfg = MeshConfig::new(local());
    cfg.send_queue = 32;
    cfg.send_queue_bytes = 1 << 20;
    let a = MeshSocket::bind(cfg).await.unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = sock.connect(a.local_addr()).await.unwrap();
    let id = b"OrderNode111111111111111111111111111111111111111111111111111111";
    s.write_all(&handshake(&a, id, &[])).await.unwrap();
    wait_until("peer handshaken", T, || async { peer_count(&a).await == 1 }).await;
    const N: i64 = 1_000;
    // Sizes that do not divide the socket's buffers evenly, so that some
    // frames are taken only in part, and large enough to fill the node's
    // socket buffer (up to 4 MiB on loopback) soon.
    let sizes = [1, 7_001, 60_000, 33_333, 90_000];
    let node = a.clone();
    let reader = tokio::spawn(async move {
        let limits = rs2p::wire::Limits::default();
        let mut buf = bytes::BytesMut::new();
        let mut chunk = vec![0u8; 8 * 1024];
        let mut next = 0i64;
        let mut stall = vec![150, 450, 750];
        let deadline = tokio::time::Instant::now() + T;
        while next < N {
            while let Some(body) = rs2p::wire::next_frame(&mut buf, &limits).unwrap() {
                let (_, msg) = Packed::decode(body, &[], false, &limits).unwrap();
                let Some(pos) = msg.payload.iter().position(
                    |v| matches!(v, Value::Bin(b) if !b.is_empty() && b.iter().all(|&x| x == 0x5a)),
                ) else {
                    continue;
                };
                let i = msg.payload[pos - 1].as_i64().unwrap();
                assert_eq!(i, next, "frame {i} arrived when {next} was due");
                let Value::Bin(body) = &msg.payload[pos] else {
                    unreachable!()
                };
                assert_eq!(body.len(), sizes[i as usize % sizes.len()], "frame {i}");
                next += 1;
            }
            let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
                .await
                .expect("frames still due")
                .unwrap();
            assert!(n > 0, "closed with frame {next} due");
            buf.extend_from_slice(&chunk[..n]);
            // Stop reading now and then until the node queues frames for
            // us (the socket is full), so that later frames meet a queue.
            if stall.first().is_some_and(|&k| next >= k) {
                stall.remove(0);
                let queued = || async { node.stats().await.unwrap().send_queue_bytes > 0 };
                wait_until("frames queued for a full socket", T, queued).await;
            }
        }
    });
    for i in 0..N {
        let body = Value::Bin(vec![0x5a; sizes[i as usize % sizes.len()]]);
        a.send(vec![Value::from(i), body]).await.unwrap();
    }
    reader.await.unwrap();
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.slow_peers_dropped, 0, "{stats:?}");
    a.close().await;
}

/// A relay between a fast writer and a peer that reads slower than the
/// writer writes: while its queue to the slow peer is over half full, the
/// relay leaves the writer's frames unread (TCP then slows the writer
/// down), so the slow peer is not dropped and receives everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_holds_its_input_back_for_a_slow_peer_instead_of_dropping_it() {
    let w = mesh_node().await;
    let mut cfg = MeshConfig::new(local());
    cfg.send_queue = 32;
    cfg.send_queue_bytes = 64 * 1024;
    let r = MeshSocket::bind(cfg).await.unwrap();
    w.connect("127.0.0.1", r.local_addr().port()).await.unwrap();
    wait_until("writer and relay linked", T, || async {
        peer_count(&w).await == 1 && peer_count(&r).await == 1
    })
    .await;
    // The slow peer, linked to the relay only.
    let id = b"SlowNode2222222222222222222222222222222222222222222222222222222";
    let (reader, got) = slow_reader(&r, id).await;
    wait_until("slow peer handshaken", T, || async {
        peer_count(&r).await == 2
    })
    .await;
    const N: usize = 5_000;
    let payload = Value::Bin(vec![0x5a; 1024]);
    for i in 0..N {
        w.send(vec![Value::from(i), payload.clone()]).await.unwrap();
    }
    // Every frame is over 1,100 bytes (1 KiB value, id, checksum, framing).
    wait_until("everything relayed to the slow peer", T, || async {
        got.load(std::sync::atomic::Ordering::Relaxed) >= N * 1100
    })
    .await;
    let stats = r.stats().await.unwrap();
    assert_eq!(stats.slow_peers_dropped, 0, "{stats:?}");
    assert_eq!(peer_count(&r).await, 2);
    reader.abort();
    w.close().await;
    r.close().await;
}

/// An rs2p-like peer that sends reconciliation want lists in a loop (each
/// costs the node a pass over its dictionary): past the link's budget they
/// are counted and not answered, the link stays, and an honest peer keeps
/// syncing throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_asking_for_versions_in_a_loop_is_held_to_its_budget() {
    let a = sync_node(true).await;
    for i in 0..1_000 {
        a.set(format!("k{i}"), i).await.unwrap();
    }
    let b = sync_node(true).await;
    b.connect("127.0.0.1", a.mesh().local_addr().port())
        .await
        .unwrap();
    wait_until("the honest peer holds a's keys", T, || async {
        b.len() == 1_000
    })
    .await;
    // The hostile peer's handshake lists the rs2p capabilities, so the
    // node reconciles with it.
    let id = b"EvilSync1111111111111111111111111111111111111111111111111111111";
    let methods = vec![
        Value::from(Compression::Zlib.flag()),
        Value::from(flags::compression::RS2P_MARKER),
        Value::from(flags::compression::RS2P_RECONCILES),
    ];
    let mut s = TcpStream::connect(a.mesh().local_addr()).await.unwrap();
    s.write_all(&handshake_listing(a.mesh(), id, methods))
        .await
        .unwrap();
    wait_until("hostile peer handshaken", T, || async {
        peer_count(a.mesh()).await == 2
    })
    .await;
    // 300 want lists of 1,000 key hashes each, in one write.
    let hashes: Vec<Value> = (0..1_000u64)
        .map(|i| Value::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let want = Packed::new(
        flags::main::WHISPER,
        id,
        now(),
        &[Value::from(flags::sub::RS2P_WANT), Value::Array(hashes)],
    )
    .to_frame(None);
    let burst: Vec<u8> = (0..300).flat_map(|_| want.iter().copied()).collect();
    s.write_all(&burst).await.unwrap();
    // The budget takes 64 at once and one more every 500 ms.
    wait_until("want lists past the budget refused", T, || async {
        a.mesh()
            .stats()
            .await
            .is_ok_and(|st| st.reconciliation_refused >= 200)
    })
    .await;
    let st = a.mesh().stats().await.unwrap();
    assert!(st.reconciliation_refused <= 300 - 64, "{st:?}");
    assert_eq!(st.bad_frames, 0, "{st:?}");
    assert_eq!(peer_count(a.mesh()).await, 2, "the link stays");
    a.set("after", 1).await.unwrap();
    wait_until("the honest peer still syncs", T, || async {
        b.get("after") == Some(Value::from(1))
    })
    .await;
    drop(s);
    a.close().await;
    b.close().await;
}
