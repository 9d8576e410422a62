//! rs2p nodes for the interop tests: a tokio runtime owned by the (plain,
//! synchronous) test, so the blocking reference harness and our async nodes
//! can be driven from the same thread.

use std::future::Future;
use std::time::Duration;

use rs2p::{MeshConfig, MeshSocket, SyncConfig, SyncSocket};

pub struct Rt(tokio::runtime::Runtime);

impl Rt {
    pub fn new() -> Rt {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Rt(rt)
    }

    pub fn block<F: Future>(&self, f: F) -> F::Output {
        self.0.block_on(f)
    }

    pub fn mesh(&self, cfg: MeshConfig) -> MeshSocket {
        self.block(MeshSocket::bind(cfg))
            .expect("bind rs2p mesh node")
    }

    pub fn sync(&self, cfg: SyncConfig) -> SyncSocket {
        self.block(SyncSocket::bind(cfg))
            .expect("bind rs2p sync node")
    }

    pub fn peer_ids(&self, m: &MeshSocket) -> Vec<String> {
        self.block(m.peers())
            .map(|p| p.into_iter().map(|p| p.id).collect())
            .unwrap_or_default()
    }
}

pub fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Fails unless the reference peers are installed, except when
/// RS2P_SKIP_REFERENCES=1 says to skip on purpose.
pub fn require_peers() -> bool {
    if super::peers::peers_available() {
        return true;
    }
    if std::env::var("RS2P_SKIP_REFERENCES").as_deref() == Ok("1") {
        eprintln!("skipped: reference peers not installed (RS2P_SKIP_REFERENCES=1)");
        return false;
    }
    panic!("reference peers missing: run scripts/setup-peers.sh (or set RS2P_SKIP_REFERENCES=1)");
}

pub const T: Duration = Duration::from_secs(30);

/// The drivers' JSON form of a value (`{"$bin":hex}` for bytes).
pub fn json_of(v: &rs2p::Value) -> serde_json::Value {
    use rs2p::Value as V;
    use serde_json::json;
    match v {
        V::Nil => serde_json::Value::Null,
        V::Bool(b) => json!(b),
        V::Int(n) => match n.as_i64() {
            Some(i) => json!(i),
            None => json!(n.as_u64()),
        },
        V::F32(f) => json!(f),
        V::F64(f) => json!(f),
        V::Str(s) => json!(s),
        V::Bin(b) => super::peers::bin(b),
        V::Array(a) => serde_json::Value::Array(a.iter().map(json_of).collect()),
        V::Map(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let k = match k.as_bytes() {
                        Some(b) => String::from_utf8_lossy(b).into_owned(),
                        None => k.to_string(),
                    };
                    (k, json_of(v))
                })
                .collect(),
        ),
    }
}
