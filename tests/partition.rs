//! Partitions, healing and convergence between rs2p nodes, and restarts
//! from the durable store. Partitions are made in-process with
//! `MeshSocket::block` on both sides of every cut link (real sockets; the
//! blocked peers' connections are dropped and refused until unblocked, and
//! re-dialled afterwards by the nodes themselves).

mod support;

use std::time::Duration;

use rs2p::{Error, SyncConfig, SyncSocket, Value};
use support::*;

const T: Duration = Duration::from_secs(60);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn next_second() {
    let t0 = unix_now();
    wait_until("next second", T, || async { unix_now() > t0 }).await;
}

async fn cut(a: &[&SyncSocket], b: &[&SyncSocket]) {
    for x in a {
        for y in b {
            x.mesh().block(y.id()).await.unwrap();
            y.mesh().block(x.id()).await.unwrap();
        }
    }
}

async fn heal(a: &[&SyncSocket], b: &[&SyncSocket]) {
    for x in a {
        for y in b {
            x.mesh().unblock(y.id()).await.unwrap();
            y.mesh().unblock(x.id()).await.unwrap();
        }
    }
}

async fn linked(x: &SyncSocket, y: &SyncSocket) -> bool {
    x.mesh()
        .peers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.id == y.id())
}

/// Every node sees the same entries (keys, values and metadata).
async fn converged(nodes: &[SyncSocket]) -> bool {
    let mut first = nodes[0].entries();
    first.sort_by(|a, b| a.0.cmp(&b.0));
    nodes[1..].iter().all(|n| {
        let mut e = n.entries();
        e.sort_by(|a, b| a.0.cmp(&b.0));
        e == first
    })
}

async fn full_mesh(n: usize) -> Vec<SyncSocket> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(sync_node(true).await);
    }
    for i in 1..n {
        for j in 0..i {
            nodes[i]
                .connect("127.0.0.1", nodes[j].mesh().local_addr().port())
                .await
                .unwrap();
        }
    }
    wait_until("full mesh", T, || async {
        for n in &nodes {
            if peer_count(n.mesh()).await != nodes.len() - 1 {
                return false;
            }
        }
        true
    })
    .await;
    nodes
}

/// Both sides of a split write, including the same keys and a delete;
/// after the heal every node holds the same dictionary, the lease holder's
/// writes win, and the delete stays.
async fn split_write_heal(nodes: &[SyncSocket], left: usize, hold: Duration) {
    let (l, r) = nodes.split_at(left);
    let (lr, rr): (Vec<&SyncSocket>, Vec<&SyncSocket>) = (l.iter().collect(), r.iter().collect());
    // Before the split: l[0] owns "owned" and "doomed".
    l[0].set("owned", "before").await.unwrap();
    l[0].set("doomed", "soon deleted").await.unwrap();
    wait_until("pre-split writes everywhere", T, || async {
        converged(nodes).await
    })
    .await;

    cut(&lr, &rr).await;
    wait_until("split", T, || async {
        !linked(&l[0], &r[0]).await && !linked(&r[0], &l[0]).await
    })
    .await;
    next_second().await;

    // The lease holder keeps writing; the other side cannot take its key.
    l[0].set("owned", "by the lease holder, during the split")
        .await
        .unwrap();
    assert!(matches!(
        r[0].set("owned", "stolen").await,
        Err(Error::LeaseHeld { .. })
    ));
    l[0].del("doomed").await.unwrap();
    // Fresh keys written on both sides: one winner everywhere after the heal.
    l[1].set("both", "left").await.unwrap();
    r[0].set("both", "right").await.unwrap();
    // Keys only one side has.
    for (i, n) in nodes.iter().enumerate() {
        n.set(format!("only-{i}"), i as u64).await.unwrap();
    }
    // Live broadcasts cannot cross: the other side does not have them.
    assert!(!r[0].contains_key("only-0"));
    tokio::time::sleep(hold).await;

    heal(&lr, &rr).await;
    wait_until("links back", T, || async { linked(&l[0], &r[0]).await }).await;
    wait_until("every node converged", T, || async {
        converged(nodes).await
    })
    .await;
    for n in nodes {
        assert_eq!(
            n.get("owned"),
            Some(Value::from("by the lease holder, during the split"))
        );
        assert!(!n.contains_key("doomed"), "the delete was undone");
        assert_eq!(n.len(), 2 + nodes.len());
        assert!(n.get("both").is_some());
        for i in 0..nodes.len() {
            assert_eq!(n.get(format!("only-{i}")), Some(Value::from(i as u64)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_split_converges() {
    let nodes = full_mesh(3).await;
    split_write_heal(&nodes, 2, Duration::from_millis(100)).await;
    for n in nodes {
        n.close().await;
    }
}

/// Longer than the 60 s broadcast window: nothing written during the split
/// can arrive as a live broadcast any more; the state exchange on reconnect
/// carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_split_three_two_for_over_a_minute() {
    let nodes = full_mesh(5).await;
    split_write_heal(&nodes, 3, Duration::from_secs(62)).await;
    for n in nodes {
        n.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_data_and_id() {
    let dir =
        std::env::temp_dir().join(format!("rs2p-store-{}-{}", std::process::id(), unix_now()));
    let cfg = || SyncConfig::new(local()).with_data_dir(&dir);
    let a = SyncSocket::bind(cfg()).await.unwrap();
    let id = a.id().to_string();
    for i in 0..500 {
        a.set(format!("k{i}"), i).await.unwrap();
    }
    a.del("k7").await.unwrap();
    a.apply_delta("m", [("x", 1)].into_iter().collect::<Value>())
        .await
        .unwrap();
    let before = a.entries();
    a.close().await;
    // The database is released with the last handle.
    drop(a);

    let a = SyncSocket::bind(cfg()).await.unwrap();
    assert_eq!(a.id(), id, "a new id after restart");
    let mut after = a.entries();
    let mut before = before;
    before.sort_by(|x, y| x.0.cmp(&y.0));
    after.sort_by(|x, y| x.0.cmp(&y.0));
    assert!(before == after, "entries differ after restart");
    // Still the owner of its keys.
    let b = sync_node(true).await;
    b.connect("127.0.0.1", a.mesh().local_addr().port())
        .await
        .unwrap();
    wait_until("b has everything", T, || async { b.len() == 500 }).await;
    next_second().await;
    a.set("k1", "changed after restart").await.unwrap();
    wait_until("b sees the change", T, || async {
        b.get("k1") == Some(Value::from("changed after restart"))
    })
    .await;
    assert!(matches!(
        b.set("k2", "no").await,
        Err(Error::LeaseHeld { .. })
    ));
    a.close().await;
    b.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
