//! rs2p-only SyncSocket behaviour over real sockets.

mod support;

use std::time::Duration;

use rs2p::{Error, SyncEvent, Value};
use support::*;
use tokio_stream::StreamExt;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_replicate_and_joiners_get_everything() {
    let a = sync_node(true).await;
    a.set("early", "before peers").await.unwrap();
    let b = sync_node(true).await;
    b.connect("127.0.0.1", a.mesh().local_addr().port())
        .await
        .unwrap();
    wait_until("state transfer", T, || async { b.get("early").is_some() }).await;
    assert_eq!(b.metadata("early").unwrap().owner, a.id().as_bytes());

    b.set("测试", "成功").await.unwrap();
    a.set("int", 256).await.unwrap();
    let list: Value = (1..10).map(Value::from).collect();
    a.set(&b"bytes-key"[..], list.clone()).await.unwrap();
    wait_until("values everywhere", T, || async {
        a.get("测试") == Some("成功".into())
            && b.get("int") == Some(256.into())
            && b.get(b"bytes-key") == Some(list.clone())
    })
    .await;
    assert_eq!(a.get("测试".as_bytes()), Some(Value::from("成功")));
    assert_eq!(b.get_as::<u32>("int").unwrap(), Some(256));
    assert_eq!(a.len(), 4);
    assert_eq!(a.snapshot(), b.snapshot());

    a.del("int").await.unwrap();
    wait_until("delete replicated", T, || async { !b.contains_key("int") }).await;
    assert!(matches!(a.del("int").await, Err(Error::KeyNotFound(_))));
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_enforced_and_can_be_switched_off() {
    for leasing in [true, false] {
        let a = sync_node(leasing).await;
        let b = sync_node(leasing).await;
        b.connect("127.0.0.1", a.mesh().local_addr().port())
            .await
            .unwrap();
        wait_until("handshake", T, || async { peer_count(b.mesh()).await == 1 }).await;
        a.set("k", "a's").await.unwrap();
        wait_until("replicated", T, || async { b.get("k").is_some() }).await;
        // A second later, so the same-second tie-break cannot apply.
        let t0 = a.metadata("k").unwrap().timestamp;
        wait_until("next second", T, || async { unix_now() > t0 }).await;
        let res = b.set("k", "b's").await;
        if leasing {
            match res {
                Err(Error::LeaseHeld {
                    owner, expires_at, ..
                }) => {
                    assert_eq!(owner, a.id());
                    assert_eq!(expires_at, t0 + 3600);
                }
                other => panic!("expected LeaseHeld, got {other:?}"),
            }
            assert!(b.del("k").await.is_err());
            assert_eq!(b.get("k"), Some(Value::from("a's")));
            // The owner can change and delete it.
            a.set("k", "again").await.unwrap();
            wait_until("owner's change", T, || async {
                b.get("k") == Some("again".into())
            })
            .await;
            a.del("k").await.unwrap();
            wait_until("owner's delete", T, || async { b.get("k").is_none() }).await;
        } else {
            res.unwrap();
            wait_until("b's write wins", T, || async {
                a.get("k") == Some("b's".into())
            })
            .await;
        }
        a.close().await;
        b.close().await;
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_merge_and_events_fire_once() {
    let a = sync_node(true).await;
    let b = sync_node(true).await;
    let mut events = b.events();
    b.connect("127.0.0.1", a.mesh().local_addr().port())
        .await
        .unwrap();
    wait_until("handshake", T, || async { peer_count(a.mesh()).await == 1 }).await;
    a.apply_delta("m", [("x", 1), ("y", 2)].into_iter().collect::<Value>())
        .await
        .unwrap();
    a.apply_delta(
        "m",
        [("y", Value::from(3)), ("z", Value::Nil)]
            .into_iter()
            .collect::<Value>(),
    )
    .await
    .unwrap();
    let want: Value = [("x", Value::from(1)), ("y", 3.into()), ("z", Value::Nil)]
        .into_iter()
        .collect();
    wait_until("merged", T, || async { b.get("m") == Some(want.clone()) }).await;
    a.set("plain", 5).await.unwrap();
    assert!(matches!(
        a.apply_delta("plain", [("a", 1)].into_iter().collect::<Value>())
            .await,
        Err(Error::NotAMapping { found: "int", .. })
    ));
    assert!(matches!(
        a.apply_delta("m", 5).await,
        Err(Error::NotAMapping { .. })
    ));
    a.del("plain").await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(
            tokio::time::timeout(T, events.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let meta_ok = |m: &rs2p::Meta| m.owner == a.id().as_bytes() && m.timestamp > 0;
    assert!(
        matches!(&seen[0], SyncEvent::Update { key, meta, .. } if key == b"m" && meta_ok(meta))
    );
    assert!(
        matches!(&seen[1], SyncEvent::Update { key, value, .. } if key == b"m" && *value == want)
    );
    assert!(matches!(&seen[2], SyncEvent::Update { key, .. } if key == b"plain"));
    assert!(matches!(&seen[3], SyncEvent::Delete { key } if key == b"plain"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), events.next())
            .await
            .is_err(),
        "an event fired twice"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_nothing() {
    let a = sync_node(true).await;
    let b = sync_node(true).await;
    b.connect("127.0.0.1", a.mesh().local_addr().port())
        .await
        .unwrap();
    wait_until("handshake", T, || async { peer_count(a.mesh()).await == 1 }).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                a.set(format!("t{t}-{i}"), i).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.len(), 4000);
    wait_until("all 4000 on b", T, || async { b.len() == 4000 }).await;
    assert!(a.snapshot() == b.snapshot(), "a and b differ");
    // pop / popitem / update.
    assert_eq!(a.pop("t0-1").await.unwrap(), Some(Value::from(1)));
    assert_eq!(a.pop("t0-1").await.unwrap(), None);
    assert_eq!(a.pop_or("t0-1", "dflt").await.unwrap(), Value::from("dflt"));
    a.update([("u1", 1), ("u2", 2)]).await.unwrap();
    let (k, v) = a.popitem().await.unwrap().unwrap();
    assert_eq!((k.as_slice(), v), (&b"u2"[..], Value::from(2)));
    wait_until("b follows", T, || async { a.snapshot() == b.snapshot() }).await;
    assert_eq!(b.len(), 4000);
    a.close().await;
    b.close().await;
}

/// A dictionary larger than a peer's send queue still reaches a joiner:
/// the state transfer is fed as the joiner reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_transfer_larger_than_the_send_queue() {
    let mut cfg = rs2p::SyncConfig::new(local());
    cfg.mesh.send_queue_bytes = 1 << 20;
    let a = rs2p::SyncSocket::bind(cfg).await.unwrap();
    let value = Value::Bin((0..400u32).map(|i| (i * 7919 % 251) as u8).collect());
    for i in 0..20_000 {
        a.set(format!("big{i:05}"), value.clone()).await.unwrap();
    }
    let b = sync_node(true).await;
    b.connect("127.0.0.1", a.mesh().local_addr().port())
        .await
        .unwrap();
    wait_until("all 20,000 keys (8 MB) on the joiner", T, || async {
        b.len() == 20_000
    })
    .await;
    assert_eq!(
        peer_count(a.mesh()).await,
        1,
        "the joiner was dropped as too slow"
    );
    assert_eq!(b.get("big19999"), Some(value));
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_is_told_and_streams_end_at_close() {
    let a = sync_node(true).await;
    let mut events = a.events();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    a.on_event(move |ev| {
        let _ = seen_tx.send(ev);
    });
    for i in 0..5000 {
        a.set(format!("k{i}"), i).await.unwrap();
    }
    // The stream keeps the last 4,096 changes and says how many it dropped.
    let first = tokio::time::timeout(T, events.next())
        .await
        .expect("an event");
    assert_eq!(
        first,
        Some(SyncEvent::Lagged {
            missed: 5000 - 4096
        })
    );
    a.close().await;
    let rest = tokio::time::timeout(T, async {
        let mut n = 0;
        while events.next().await.is_some() {
            n += 1;
        }
        n
    })
    .await
    .expect("the stream ends once the node is closed");
    assert_eq!(rest, 4096);
    // The on_event task ends too: its sender is dropped.
    let drained = tokio::time::timeout(T, async {
        let mut n = 0;
        while seen_rx.recv().await.is_some() {
            n += 1;
        }
        n
    })
    .await
    .expect("the on_event task ends once the node is closed");
    assert!(drained >= 4096, "{drained}");
    assert!(
        a.events().next().await.is_none(),
        "a stream made after close ends at once"
    );
}
