//! [`SyncSocket`]: a dictionary replicated to every node of the mesh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::config::SyncConfig;
use crate::error::{Error, Result};
use crate::mesh::MeshSocket;
use crate::net::actor::{unix_now, Ctx, Incoming, Service};
use crate::net::conn::ConnId;
use crate::proto::sync::{merge_delta, write_allowed, Meta, Refused, WriteKind};
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::Packed;

/// Events buffered per subscriber.
const EVENT_CAPACITY: usize = 65_536;
/// Size of one chunk of a state transfer handed to a connection.
const TRANSFER_CHUNK: usize = 256 * 1024;

/// A change to the dictionary, local or remote.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// A key was set or merged into.
    Update {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Value,
        /// The writer in force.
        meta: Meta,
    },
    /// A key was deleted.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

#[derive(Default)]
struct State {
    map: IndexMap<Vec<u8>, (Value, Meta)>,
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<SyncEvent>,
    leasing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // map itself is always consistent between statements.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a write under the lease rule; emits the event.
    fn apply(
        &self,
        key: &[u8],
        value: Value,
        meta: Meta,
        kind: WriteKind,
        now: i64,
    ) -> Result<(), Refused> {
        let mut st = self.lock();
        write_allowed(
            st.map.get(key).map(|(_, m)| m),
            &meta,
            kind,
            self.leasing,
            now,
        )?;
        if value.is_nil() && kind == WriteKind::Store {
            if st.map.shift_remove(key).is_some() {
                drop(st);
                let _ = self.events.send(SyncEvent::Delete { key: key.to_vec() });
            }
        } else {
            st.map.insert(key.to_vec(), (value.clone(), meta.clone()));
            drop(st);
            let _ = self.events.send(SyncEvent::Update {
                key: key.to_vec(),
                value,
                meta,
            });
        }
        Ok(())
    }
}

struct SyncService {
    shared: Arc<Shared>,
}

impl Service for SyncService {
    fn on_peer(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        // State transfer: one 5-packet store per key, framed in bulk.
        let method = ctx.send_method(conn);
        let now = ctx.now();
        let mut chunk: Vec<Bytes> = Vec::new();
        let mut chunk_len = 0;
        let mut chunks: Vec<Vec<Bytes>> = Vec::new();
        {
            let st = self.shared.lock();
            for (key, (value, meta)) in &st.map {
                let payload = [
                    Value::from(sub::STORE),
                    Value::Bin(key.clone()),
                    value.clone(),
                    Value::Bin(meta.owner.clone()),
                    Value::from(meta.timestamp),
                ];
                let packed = Packed::new(main::WHISPER, ctx.my_id(), now, &payload);
                let frame = packed.to_frame(method);
                chunk_len += frame.len();
                chunk.push(frame);
                if chunk_len >= TRANSFER_CHUNK {
                    chunks.push(std::mem::take(&mut chunk));
                    chunk_len = 0;
                }
            }
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        for c in chunks {
            ctx.send_frames(conn, &c);
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, inc: &Incoming) -> bool {
        let p = &inc.msg.payload;
        match inc.msg.sub_flag() {
            Some(sub::STORE) => {
                let Some(key) = p.get(1).and_then(Value::as_bytes) else {
                    return true;
                };
                let value = p.get(2).cloned().unwrap_or(Value::Nil);
                let meta = if p.len() == 5 {
                    // State transfer: never overwrites a truthy value.
                    if self
                        .shared
                        .lock()
                        .map
                        .get(key)
                        .is_some_and(|(v, _)| v.is_truthy())
                    {
                        return true;
                    }
                    let (Some(owner), Some(ts)) = (p[3].as_bytes(), p[4].as_i64()) else {
                        return true;
                    };
                    Meta {
                        owner: owner.to_vec(),
                        timestamp: ts,
                    }
                } else {
                    Meta {
                        owner: inc.msg.sender.clone(),
                        timestamp: inc.msg.time,
                    }
                };
                let _ = self
                    .shared
                    .apply(key, value, meta, WriteKind::Store, ctx.now());
                true
            }
            Some(sub::DELTA) => {
                let (Some(key), Some(delta)) = (
                    p.get(1).and_then(Value::as_bytes),
                    p.get(2).and_then(Value::as_map),
                ) else {
                    return true;
                };
                let meta = Meta {
                    owner: inc.msg.sender.clone(),
                    timestamp: inc.msg.time,
                };
                let merged = {
                    let st = self.shared.lock();
                    merge_delta(st.map.get(key).map(|(v, _)| v), delta)
                };
                if let Ok(merged) = merged {
                    let _ = self
                        .shared
                        .apply(key, merged, meta, WriteKind::Delta, ctx.now());
                }
                true
            }
            _ => false,
        }
    }
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn lease_error(key: &[u8], r: Refused) -> Error {
    Error::LeaseHeld {
        key: key_text(key),
        owner: key_text(&r.owner),
        expires_at: r.expires_at,
    }
}

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
    shared: Arc<Shared>,
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
    /// Binds a node and starts it.
    pub async fn bind(cfg: SyncConfig) -> Result<SyncSocket> {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            events,
            leasing: cfg.leasing,
        });
        let service = SyncService {
            shared: shared.clone(),
        };
        let mesh = MeshSocket::bind_with(cfg.mesh_config(), vec![Box::new(service)]).await?;
        Ok(SyncSocket { mesh, shared })
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
        self.shared.leasing
    }

    /// The value of a key.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Value> {
        self.shared
            .lock()
            .map
            .get(key.as_ref())
            .map(|(v, _)| v.clone())
    }

    /// The value of a key, or `default`.
    pub fn get_or(&self, key: impl AsRef<[u8]>, default: impl Into<Value>) -> Value {
        self.get(key).unwrap_or_else(|| default.into())
    }

    /// The value of a key converted with serde.
    pub fn get_as<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Ok(Some(crate::value::from_value(&v)?)),
        }
    }

    /// Owner and timestamp of a key's current value.
    pub fn metadata(&self, key: impl AsRef<[u8]>) -> Option<Meta> {
        self.shared
            .lock()
            .map
            .get(key.as_ref())
            .map(|(_, m)| m.clone())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.shared.lock().map.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the key is present.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.shared.lock().map.contains_key(key.as_ref())
    }

    /// The keys, from a consistent snapshot.
    pub fn keys(&self) -> impl Iterator<Item = Vec<u8>> {
        let keys: Vec<Vec<u8>> = self.shared.lock().map.keys().cloned().collect();
        keys.into_iter()
    }

    /// The values, from a consistent snapshot.
    pub fn values(&self) -> impl Iterator<Item = Value> {
        let v: Vec<Value> = self
            .shared
            .lock()
            .map
            .values()
            .map(|(v, _)| v.clone())
            .collect();
        v.into_iter()
    }

    /// The pairs, from a consistent snapshot.
    pub fn items(&self) -> impl Iterator<Item = (Vec<u8>, Value)> {
        let v: Vec<(Vec<u8>, Value)> = self
            .shared
            .lock()
            .map
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        v.into_iter()
    }

    /// Keys, values and metadata, from a consistent snapshot.
    pub fn entries(&self) -> Vec<(Vec<u8>, Value, Meta)> {
        self.shared
            .lock()
            .map
            .iter()
            .map(|(k, (v, m))| (k.clone(), v.clone(), m.clone()))
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
        let shared = self.shared.clone();
        self.mesh
            .run_in_actor(move |ctx| {
                let now = ctx.now();
                let meta = Meta {
                    owner: ctx.my_id().to_vec(),
                    timestamp: now,
                };
                shared
                    .apply(&key, value.clone(), meta, WriteKind::Store, now)
                    .map_err(|r| lease_error(&key, r))?;
                ctx.broadcast(&[Value::from(sub::STORE), Value::Bin(key), value]);
                Ok(())
            })
            .await?
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
            .shared
            .lock()
            .map
            .last()
            .map(|(k, (v, _))| (k.clone(), v.clone()));
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
        let Value::Map(entries) = delta else {
            return Err(Error::NotAMapping {
                key: key_text(&key),
                found: delta.kind(),
            });
        };
        let shared = self.shared.clone();
        self.mesh
            .run_in_actor(move |ctx| {
                let now = ctx.now();
                let meta = Meta {
                    owner: ctx.my_id().to_vec(),
                    timestamp: now,
                };
                let merged = {
                    let st = shared.lock();
                    merge_delta(st.map.get(&key).map(|(v, _)| v), &entries)
                }
                .map_err(|found| Error::NotAMapping {
                    key: key_text(&key),
                    found,
                })?;
                shared
                    .apply(&key, merged, meta, WriteKind::Delta, now)
                    .map_err(|r| lease_error(&key, r))?;
                ctx.broadcast(&[
                    Value::from(sub::DELTA),
                    Value::Bin(key),
                    Value::Map(entries),
                ]);
                Ok(())
            })
            .await?
    }

    /// A stream of changes from now on.
    pub fn events(&self) -> SyncEventStream {
        SyncEventStream {
            inner: BroadcastStream::new(self.shared.events.subscribe()),
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

    /// Closes the node.
    pub async fn close(&self) {
        self.mesh.close().await
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
        loop {
            match std::pin::Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(ev))) => return Poll::Ready(Some(ev)),
                Poll::Ready(Some(Err(_))) => continue,
                other => return other.map(|_| None),
            }
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync + Clone>() {}
    is::<SyncSocket>();
    is::<MeshSocket>();
    let _ = unix_now;
}
