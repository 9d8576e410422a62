//! Helpers shared by the rs2p-only integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use rs2p::{MeshConfig, MeshSocket, SyncConfig, SyncSocket};

/// Polls `cond` every 10 ms until it holds; panics with `what` after
/// `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn mesh_node() -> MeshSocket {
    MeshSocket::bind(MeshConfig::new(local())).await.unwrap()
}

pub async fn sync_node(leasing: bool) -> SyncSocket {
    SyncSocket::bind(SyncConfig::new(local()).with_leasing(leasing))
        .await
        .unwrap()
}

pub async fn peer_count(m: &MeshSocket) -> usize {
    m.peers().await.map(|p| p.len()).unwrap_or(0)
}
