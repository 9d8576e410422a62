//! The crate's features. scripts/test.sh runs this file three ways:
//!
//! - `--no-default-features`: the core alone (wire + proto, no tokio, no C
//!   compressors, no OS randomness), which is what the browser build
//!   (crates/rs2p-wasm) compiles. Two sync nodes run over in-memory links
//!   and zlib and gzip still work (pure Rust); bz2 and lzma are not offered.
//! - `--no-default-features --features net`: the tokio shell without its
//!   optional parts (`tls`, `ws`, `store`): asking for one fails at bind
//!   time with `Error::FeatureDisabled`, before any socket is opened;
//! - the defaults: the same configurations bind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rs2p::proto::dict::Dict;
use rs2p::proto::mesh::Settings;
use rs2p::proto::replica::{Replica, Unbounded};
use rs2p::proto::{ConnId, Node, Now, Output};
use rs2p::wire::{next_frame, Compression, Limits};
use rs2p::Value;

/// Carries out `from`'s outputs: bytes written on `from_conn` go to `to`
/// on `to_conn`, split into frames as a shell would.
fn deliver(from: &mut Node, to: &mut Node, to_conn: ConnId, now: Now) -> usize {
    let mut moved = 0;
    let mut buf = BytesMut::new();
    while let Some(out) = from.poll_output() {
        if let Output::Transmit { bytes, .. } = out {
            buf.extend_from_slice(&bytes);
            moved += 1;
        }
    }
    while let Some(body) = next_frame(&mut buf, &Limits::default()).unwrap() {
        to.handle_frame(to_conn, body, &Unbounded, now);
    }
    assert!(buf.is_empty(), "whole frames only");
    moved
}

fn sync_node(id: &str, dict: &Arc<Mutex<Dict>>, port: u16) -> Node {
    let mut settings = Settings::new(id.as_bytes().to_vec(), "sync1", ("127.0.0.1", port));
    settings.protocol_id = rs2p::wire::ids::protocol_id("sync1", "ws").into_bytes();
    Node::new(settings, Some(Replica::new(dict.clone(), true)), 7)
}

/// The core needs no feature: a set on one node reaches the other over an
/// in-memory link, and the lease holds on the far side.
#[test]
fn core_alone_syncs_two_nodes() {
    let now = Now {
        elapsed: Duration::from_secs(1),
        unix: 1_800_000_000,
    };
    let (da, db) = (Arc::default(), Arc::default());
    let mut a = sync_node("A", &da, 1);
    let mut b = sync_node("B", &db, 2);
    a.set(b"before".to_vec(), Value::from("x"), now).unwrap();
    while a.poll_output().is_some() {}

    let ca = a.connect("127.0.0.1", 2, now).unwrap();
    let cb = b.accept(now).unwrap();
    a.handle_ready(ca, now);
    b.handle_ready(cb, now);
    // Until both sides are quiet: handshakes, peers lists, the state
    // transfer or reconciliation.
    for _ in 0..50 {
        let moved = deliver(&mut a, &mut b, cb, now) + deliver(&mut b, &mut a, ca, now);
        if moved == 0 {
            break;
        }
    }
    assert_eq!(a.peers().len(), 1);
    assert_eq!(db.lock().unwrap().get(b"before"), Some(Value::from("x")));

    a.set(b"live".to_vec(), Value::from(1), now).unwrap();
    deliver(&mut a, &mut b, cb, now);
    assert_eq!(db.lock().unwrap().get(b"live"), Some(Value::from(1)));
    let meta = db.lock().unwrap().meta(b"live").unwrap();
    assert_eq!(meta.owner, b"A");
    let later = Now {
        unix: now.unix + 5,
        ..now
    };
    assert!(matches!(
        b.set(b"live".to_vec(), Value::from(2), later),
        Err(rs2p::Error::LeaseHeld { .. })
    ));
}

/// zlib and gzip work in every build (C zlib or miniz_oxide); bz2 and lzma
/// only with `native-compression`.
#[test]
fn compression_matches_the_features() {
    let body = b"hello hello hello hello".repeat(40);
    for m in [Compression::Zlib, Compression::Gzip, Compression::Snappy] {
        assert!(m.is_available());
        let packed = m.compress(&body);
        assert!(packed.len() < body.len());
        assert_eq!(m.decompress(&packed, 1 << 20).unwrap(), body);
    }
    let native = cfg!(feature = "native-compression");
    for m in [Compression::Bz2, Compression::Lzma] {
        assert_eq!(m.is_available(), native, "{m:?}");
        assert_eq!(Compression::ALL.contains(&m), native, "{m:?}");
        assert_eq!(Compression::from_flag(m.flag().into()).is_some(), native);
        if !native {
            let e = m.decompress(b"BZh91AY&SY", 1 << 20).unwrap_err();
            assert!(e.to_string().contains("not built in"), "{e}");
        }
    }
    assert_eq!(Compression::ALL.len(), if native { 5 } else { 3 });
    // A zlib stream from C zlib (CPython's zlib.compress(b"rs2p" * 8)) reads
    // back with either backend.
    let from_cpython = [
        0x78, 0x9c, 0x2b, 0x2a, 0x36, 0x2a, 0x28, 0xc2, 0x83, 0x01, 0xca, 0xd8, 0x0c, 0x39,
    ];
    assert_eq!(
        Compression::Zlib
            .decompress(&from_cpython, 1 << 10)
            .unwrap(),
        b"rs2p".repeat(8)
    );
}

#[cfg(feature = "net")]
mod net {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use rs2p::{Compression, Error, MeshConfig, MeshSocket, SyncConfig, SyncSocket, Transport};

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

    /// Asking for bz2 without the C compressors is refused at bind time.
    #[tokio::test]
    async fn bz2_needs_native_compression() {
        let on = cfg!(feature = "native-compression");
        let cfg = MeshConfig::new(local()).with_compression(vec![Compression::Bz2]);
        match MeshSocket::bind(cfg).await {
            Ok(node) => {
                assert!(on, "bz2 accepted without `native-compression`");
                node.close().await;
            }
            Err(Error::FeatureDisabled(f)) => {
                assert!(!on, "bz2 refused with `native-compression` on");
                assert_eq!(f, "native-compression");
            }
            Err(e) => panic!("bz2: unexpected error {e}"),
        }
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
}
