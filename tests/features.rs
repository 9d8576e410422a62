//! The optional parts of the library (`tls`, `ws`, `store`): with a feature
//! off, asking for what it provides fails at bind time with
//! `Error::FeatureDisabled`, before any socket is opened; with it on (the
//! default), the same configurations bind. scripts/test.sh runs this file
//! both ways (`cargo test -p rs2p --no-default-features --test features`).

use std::net::SocketAddr;
use std::path::PathBuf;

use rs2p::{Error, MeshConfig, MeshSocket, SyncConfig, SyncSocket, Transport};

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Binds a mesh node on `transport`: `Ok` when `feature` is on, else the
/// typed error naming it.
async fn check_transport(transport: Transport, feature: &str, on: bool) {
    let got = MeshSocket::bind(MeshConfig::new(local()).with_transport(transport)).await;
    match got {
        Ok(node) => {
            assert!(on, "{transport:?} bound without the `{feature}` feature");
            node.close().await;
        }
        Err(Error::FeatureDisabled(f)) => {
            assert!(!on, "{transport:?} refused with the `{feature}` feature on");
            assert_eq!(f, feature);
            let e = Error::FeatureDisabled(f);
            assert_eq!(e.kind(), "feature_disabled");
            assert!(e.to_string().contains(feature), "{e}");
        }
        Err(e) => panic!("{transport:?}: unexpected error {e}"),
    }
}

#[tokio::test]
async fn ssl_needs_tls() {
    check_transport(Transport::Ssl, "tls", cfg!(feature = "tls")).await;
}

#[tokio::test]
async fn ws_needs_ws() {
    check_transport(Transport::Ws, "ws", cfg!(feature = "ws")).await;
}

#[tokio::test]
async fn plaintext_needs_nothing() {
    let node = MeshSocket::bind(MeshConfig::new(local())).await.unwrap();
    node.close().await;
}

#[tokio::test]
async fn data_dir_needs_store() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("rs2p-features-{}-{nanos}", std::process::id()));
    let on = cfg!(feature = "store");
    let got = SyncSocket::bind(SyncConfig::new(local()).with_data_dir(&dir)).await;
    match got {
        Ok(node) => {
            assert!(on, "data_dir accepted without `store`");
            node.close().await;
        }
        Err(Error::FeatureDisabled(f)) => {
            assert!(!on, "data_dir refused with `store` on");
            assert_eq!(f, "store");
            assert!(!dir.exists(), "nothing is written without the store");
        }
        Err(e) => panic!("data_dir: unexpected error {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
