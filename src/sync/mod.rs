//! [`SyncSocket`]: a dictionary replicated to every node of the mesh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::config::SyncConfig;
use crate::error::{Error, Result};
use crate::mesh::MeshSocket;
pub use crate::net::cmd::SyncEvent;
use crate::net::cmd::{Cmd, SyncParts};
use crate::proto::dict::Dict;
use crate::proto::replica::Replica;
use crate::proto::sync::Meta;
use crate::store::Store;
use crate::value::Value;

/// Events buffered per subscriber.
const EVENT_CAPACITY: usize = 4096;

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// The store's committer task and the signal that stops it.
type Committer = (Arc<tokio::sync::Notify>, tokio::task::JoinHandle<()>);

/// A node holding a replicated dictionary (py2p's and js2p's
/// `SyncSocket`). Reads are local and synchronous; writes are checked
/// against the lease rule, applied, then broadcast.
///
/// ```no_run
/// # async fn demo() -> rs2p::Result<()> {
/// use rs2p::{SyncConfig, SyncSocket, Value};
/// let a = SyncSocket::bind(SyncConfig::new("127.0.0.1:0".parse().unwrap())).await?;
/// a.set("测试", "成功").await?;
/// assert_eq!(a.get("测试"), Some(Value::from("成功")));
/// a.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SyncSocket {
    mesh: MeshSocket,
    dict: Arc<Mutex<Dict>>,
    /// Taken at [`close`](Self::close), so that event streams end.
    events: Arc<Mutex<Option<broadcast::Sender<SyncEvent>>>>,
    leasing: bool,
    /// The base subnet (without the leasing digit).
    subnet: Arc<str>,
    store: Option<Store>,
    committer: Arc<Mutex<Option<Committer>>>,
}

impl std::fmt::Debug for SyncSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSocket")
            .field("mesh", &self.mesh)
            .field("len", &self.len())
            .finish()
    }
}

impl SyncSocket {
    /// Binds a node and starts it. With [`SyncConfig::data_dir`], the
    /// dictionary and the node id are loaded from (and kept in) that
    /// folder.
    pub async fn bind(cfg: SyncConfig) -> Result<SyncSocket> {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let mut mesh_cfg = cfg.mesh_config();
        let mut dict = Dict::default();
        let mut store = None;
        if let Some(dir) = &cfg.data_dir {
            let (st, id) = Store::open(dir, &mut |key, e| {
                dict.load(key, e.value.as_ref(), e.meta, e.since);
            })?;
            if mesh_cfg.id.is_none() {
                mesh_cfg.id = id;
            }
            store = Some(st);
        }
        let dict = Arc::new(Mutex::new(dict));
        let parts = SyncParts {
            replica: Replica::new(dict.clone(), cfg.leasing),
            events: events.clone(),
            store: store.clone(),
        };
        let mesh = MeshSocket::bind_with(mesh_cfg, Some(parts)).await?;
        let committer = match &store {
            Some(st) => {
                // The node is already listening: close it rather than
                // leave a mesh running behind a failed bind.
                if let Err(e) = st.save_id(mesh.id()) {
                    mesh.close().await;
                    return Err(e);
                }
                let stop = Arc::new(tokio::sync::Notify::new());
                Some((stop.clone(), st.spawn_committer(stop)))
            }
            None => None,
        };
        Ok(SyncSocket {
            mesh,
            dict,
            events: Arc::new(Mutex::new(Some(events))),
            leasing: cfg.leasing,
            subnet: cfg.mesh.subnet.as_str().into(),
            store,
            committer: Arc::new(Mutex::new(committer)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Dict> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // dictionary is consistent between statements.
        self.dict.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The underlying mesh node (peers, user messages, events).
    pub fn mesh(&self) -> &MeshSocket {
        &self.mesh
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        self.mesh.id()
    }

    /// True when leases are enforced.
    pub fn leasing(&self) -> bool {
        self.leasing
    }

    /// The base subnet, without the leasing digit (`sync` for a node on
    /// `sync1`): what js2p's `Protocol` and rs2p's browser bundle take.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The value of a key.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Value> {
        self.lock().map.get(key.as_ref()).map(|e| e.value())
    }

    /// The value of a key, or `default`.
    pub fn get_or(&self, key: impl AsRef<[u8]>, default: impl Into<Value>) -> Value {
        self.get(key).unwrap_or_else(|| default.into())
    }

    /// The value of a key converted with serde.
    pub fn get_as<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Ok(Some(crate::from_value(&v)?)),
        }
    }

    /// Owner and timestamp of a key's current value.
    pub fn metadata(&self, key: impl AsRef<[u8]>) -> Option<Meta> {
        self.lock().map.get(key.as_ref()).map(|e| e.meta())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the key is present.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.lock().map.contains_key(key.as_ref())
    }

    /// The keys, from a consistent snapshot.
    pub fn keys(&self) -> impl Iterator<Item = Vec<u8>> {
        let keys: Vec<Vec<u8>> = self.lock().map.keys().map(<[u8]>::to_vec).collect();
        keys.into_iter()
    }

    /// The values, from a consistent snapshot.
    pub fn values(&self) -> impl Iterator<Item = Value> {
        let v: Vec<Value> = self.lock().map.iter().map(|e| e.value()).collect();
        v.into_iter()
    }

    /// The pairs, from a consistent snapshot.
    pub fn items(&self) -> impl Iterator<Item = (Vec<u8>, Value)> {
        let v: Vec<(Vec<u8>, Value)> = self
            .lock()
            .map
            .iter()
            .map(|e| (e.key().to_vec(), e.value()))
            .collect();
        v.into_iter()
    }

    /// Keys, values and metadata, from a consistent snapshot.
    pub fn entries(&self) -> Vec<(Vec<u8>, Value, Meta)> {
        self.lock()
            .map
            .iter()
            .map(|e| (e.key().to_vec(), e.value(), e.meta()))
            .collect()
    }

    /// A plain copy of the dictionary.
    pub fn snapshot(&self) -> HashMap<Vec<u8>, Value> {
        self.items().collect()
    }

    /// Same as [`snapshot`](Self::snapshot) (the references' `copy()`).
    pub fn copy(&self) -> HashMap<Vec<u8>, Value> {
        self.snapshot()
    }

    /// Sets a key. Fails with [`Error::LeaseHeld`] (and sends nothing)
    /// when another node holds its lease.
    pub async fn set(&self, key: impl AsRef<[u8]>, value: impl Into<Value>) -> Result<()> {
        self.store(key.as_ref().to_vec(), value.into()).await
    }

    async fn store(&self, key: Vec<u8>, value: Value) -> Result<()> {
        self.write(key, value, false).await
    }

    /// A write carried out by the node's actor: the lease rule, the change,
    /// the broadcast; then the wait for room in peers' queues and, with a
    /// data dir, for the change to be on disk.
    async fn write(&self, key: Vec<u8>, value: Value, delta: bool) -> Result<()> {
        let (seq, crowded) = self
            .mesh
            .call(|reply| Cmd::Write {
                key,
                value,
                delta,
                reply,
            })
            .await??;
        self.mesh.wait_for_room(crowded).await;
        self.durable(seq).await
    }

    /// With a data dir, waits until the change numbered `seq` is on disk.
    async fn durable(&self, seq: u64) -> Result<()> {
        match &self.store {
            Some(store) if seq > 0 => store.durable(seq).await,
            _ => Ok(()),
        }
    }

    /// Deletes a key (a store of nil). Fails with [`Error::KeyNotFound`]
    /// when absent, [`Error::LeaseHeld`] when leased by another node.
    pub async fn del(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        if !self.contains_key(key) {
            return Err(Error::KeyNotFound(key_text(key)));
        }
        self.store(key.to_vec(), Value::Nil).await
    }

    /// Sets every pair.
    pub async fn update<K: AsRef<[u8]>, V: Into<Value>>(
        &self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()> {
        for (k, v) in pairs {
            self.set(k, v).await?;
        }
        Ok(())
    }

    /// Removes a key and returns its value (`None` when absent).
    pub async fn pop(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        let key = key.as_ref();
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                self.store(key.to_vec(), Value::Nil).await?;
                Ok(Some(v))
            }
        }
    }

    /// Removes a key and returns its value, or `default` when absent.
    pub async fn pop_or(&self, key: impl AsRef<[u8]>, default: impl Into<Value>) -> Result<Value> {
        Ok(self.pop(key).await?.unwrap_or_else(|| default.into()))
    }

    /// Removes and returns the most recently inserted pair.
    pub async fn popitem(&self) -> Result<Option<(Vec<u8>, Value)>> {
        let last = self
            .lock()
            .map
            .last()
            .map(|e| (e.key().to_vec(), e.value()));
        match last {
            None => Ok(None),
            Some((k, v)) => {
                self.store(k.clone(), Value::Nil).await?;
                Ok(Some((k, v)))
            }
        }
    }

    /// Merges a map into the map at `key` (one level deep), as the
    /// references' `apply_delta`.
    pub async fn apply_delta(&self, key: impl AsRef<[u8]>, delta: impl Into<Value>) -> Result<()> {
        let key = key.as_ref().to_vec();
        let delta = delta.into();
        if !matches!(delta, Value::Map(_)) {
            return Err(Error::NotAMapping {
                key: key_text(&key),
                found: delta.kind(),
            });
        }
        self.write(key, delta, true).await
    }

    /// A stream of changes from now on; it ends when the node closes. A
    /// subscriber more than 4,096 changes behind misses the oldest and is
    /// told how many with [`SyncEvent::Lagged`].
    pub fn events(&self) -> SyncEventStream {
        SyncEventStream {
            inner: BroadcastStream::new(match self.events.lock().ok().and_then(|e| e.clone()) {
                Some(tx) => tx.subscribe(),
                None => broadcast::channel(1).1,
            }),
        }
    }

    /// Calls `f` for every change, on a background task.
    pub fn on_event(&self, mut f: impl FnMut(SyncEvent) + Send + 'static) {
        let mut stream = self.events();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                f(ev);
            }
        });
    }

    /// Connects to a node (see [`MeshSocket::connect`]).
    pub async fn connect(&self, host: &str, port: u16) -> Result<()> {
        self.mesh.connect(host, port).await
    }

    /// Closes the node; with a data dir, everything received so far is
    /// committed first.
    pub async fn close(&self) {
        if let Ok(mut e) = self.events.lock() {
            e.take();
        }
        self.mesh.close().await;
        let committer = self.committer.lock().ok().and_then(|mut c| c.take());
        if let Some((stop, task)) = committer {
            stop.notify_one();
            let _ = task.await;
        }
    }
}

/// A stream of [`SyncEvent`]s.
pub struct SyncEventStream {
    inner: BroadcastStream<SyncEvent>,
}

impl futures_core::Stream for SyncEventStream {
    type Item = SyncEvent;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<SyncEvent>> {
        use std::task::Poll;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        match std::pin::Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(ev))) => Poll::Ready(Some(ev)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                Poll::Ready(Some(SyncEvent::Lagged { missed }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync + Clone>() {}
    is::<SyncSocket>();
    is::<MeshSocket>();
}
