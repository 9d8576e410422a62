//! [`SyncSocket`]: a dictionary replicated to every node of the mesh.

mod ordered;
mod table;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::config::SyncConfig;
use crate::error::{Error, Result};
use crate::mesh::{MeshSocket, PeerKind};
use crate::net::actor::{unix_now, Ctx, Incoming, Service};
use crate::net::conn::ConnId;
use crate::proto::sync::{
    merge_delta, supersedes, write_allowed, Meta, Refused, Version, WriteKind,
};
use crate::store::{Store, Stored};
use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::{msgpack, Packed};
use ordered::Ordered;
use table::{Slot, Table, Tomb};

/// Events buffered per subscriber.
const EVENT_CAPACITY: usize = 4096;
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

/// Tombstones kept at most; the oldest are forgotten first.
const MAX_TOMBSTONES: usize = 100_000;
/// How long a tombstone is kept: a partition healing later than this may
/// bring a deleted key back.
const TOMBSTONE_SECS: i64 = 24 * 3600;

/// Owner ids seen last, shared by the entries they wrote.
const OWNER_CACHE: usize = 16;

#[derive(Default)]
struct State {
    map: Table,
    owners: VecDeque<Arc<[u8]>>,
    /// Deleted keys: who deleted them, when, and since when they held the
    /// lease. Sent to rs2p peers so that a delete made during a partition
    /// stays deleted.
    tombs: Ordered<Tomb>,
}

impl State {
    /// The shared copy of an owner id.
    fn owner(&mut self, id: &[u8]) -> Arc<[u8]> {
        if let Some(o) = self.owners.iter().find(|o| ***o == *id) {
            return o.clone();
        }
        let o: Arc<[u8]> = id.into();
        if self.owners.len() >= OWNER_CACHE {
            self.owners.pop_front();
        }
        self.owners.push_back(o.clone());
        o
    }

    fn slot(&mut self, meta: &Meta, since: i64) -> Slot {
        Slot {
            owner: self.owner(&meta.owner),
            timestamp: meta.timestamp,
            since,
        }
    }

    fn version(&self, key: &[u8]) -> Option<Version> {
        if let Some(e) = self.map.get(key) {
            return Some(Version {
                meta: e.meta(),
                since: e.slot().since,
                deleted: false,
            });
        }
        self.tombs.get(key).map(|t| Version {
            meta: t.meta.clone(),
            since: t.since,
            deleted: true,
        })
    }

    fn bury(&mut self, key: &[u8], meta: Meta, since: i64, now: i64) {
        // A newer delete goes to the end: tombstones stay in time order.
        self.tombs.remove(key);
        self.tombs.insert(Tomb {
            key: key.into(),
            meta,
            since,
        });
        while self.tombs.len() > MAX_TOMBSTONES
            || self
                .tombs
                .first()
                .is_some_and(|t| t.meta.timestamp < now - TOMBSTONE_SECS)
        {
            self.tombs.pop_first();
        }
    }
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<SyncEvent>,
    leasing: bool,
    store: Option<Store>,
}

/// What a write changed.
enum Change {
    None,
    Set,
    Deleted,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // map itself is always consistent between statements.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a live write (store, delete or merged delta) under the
    /// references' lease rule; emits the event and records it in the store.
    /// Returns the store sequence number of the change.
    fn apply(
        &self,
        key: &[u8],
        value: Value,
        meta: Meta,
        kind: WriteKind,
        now: i64,
    ) -> Result<u64, Refused> {
        let mut st = self.lock();
        let current = st.map.get(key).map(|e| e.slot());
        write_allowed(
            current.map(|s| (&*s.owner, s.timestamp)),
            &meta,
            kind,
            self.leasing,
            now,
        )?;
        let since = match current {
            Some(s) if *s.owner == *meta.owner => s.since,
            _ => meta.timestamp,
        };
        let change = if value.is_nil() && kind == WriteKind::Store {
            if st.map.remove(key) {
                st.bury(key, meta.clone(), since, now);
                Change::Deleted
            } else {
                Change::None
            }
        } else {
            st.tombs.remove(key);
            let slot = st.slot(&meta, since);
            st.map.insert(key, &value, slot);
            Change::Set
        };
        drop(st);
        Ok(self.announce(key, change, value, meta, since))
    }

    /// Applies a version received in a state transfer when it supersedes
    /// ours (see [`supersedes`]); returns true when it changed anything.
    fn merge(&self, key: &[u8], value: Value, version: Version, now: i64) -> bool {
        let mut st = self.lock();
        if let Some(cur) = st.version(key) {
            let wins = supersedes(&cur, &version, self.leasing)
                || (cur == version
                    && !version.deleted
                    && st.map.get(key).is_some_and(|e| {
                        // Two writes by one owner in one second: keep the
                        // larger encoding everywhere, so both ends agree.
                        msgpack::encode(&value).as_slice() > e.value_bytes()
                    }));
            if !wins {
                return false;
            }
        } else if version.deleted {
            // A tombstone for a key we never had: remember it.
            st.bury(key, version.meta, version.since, now);
            return false;
        }
        let change = if version.deleted {
            let had = st.map.remove(key);
            st.bury(key, version.meta.clone(), version.since, now);
            if had {
                Change::Deleted
            } else {
                Change::None
            }
        } else {
            st.tombs.remove(key);
            let slot = st.slot(&version.meta, version.since);
            st.map.insert(key, &value, slot);
            Change::Set
        };
        drop(st);
        let changed = !matches!(change, Change::None);
        self.announce(key, change, value, version.meta, version.since);
        changed
    }

    fn announce(&self, key: &[u8], change: Change, value: Value, meta: Meta, since: i64) -> u64 {
        match change {
            Change::None => 0,
            Change::Set => {
                let seq = self.persist(key, Some(value.clone()), &meta, since);
                let _ = self.events.send(SyncEvent::Update {
                    key: key.to_vec(),
                    value,
                    meta,
                });
                seq
            }
            Change::Deleted => {
                let seq = self.persist(key, None, &meta, since);
                let _ = self.events.send(SyncEvent::Delete { key: key.to_vec() });
                seq
            }
        }
    }

    fn persist(&self, key: &[u8], value: Option<Value>, meta: &Meta, since: i64) -> u64 {
        match &self.store {
            Some(store) => store.record(
                key,
                Some(Stored {
                    value,
                    meta: meta.clone(),
                    since,
                }),
            ),
            None => 0,
        }
    }
}

struct SyncService {
    shared: Arc<Shared>,
    /// State transfers under way: the peer, whether it is rs2p, the keys
    /// (a snapshot taken at its handshake) and how far we got.
    transfers: Vec<Transfer>,
}

struct Transfer {
    conn: ConnId,
    rs2p: bool,
    keys: Vec<Box<[u8]>>,
    next: usize,
}

/// Keys framed per step of a state transfer.
const TRANSFER_BATCH: usize = 1024;
/// A state transfer is fed to a peer while less than this is queued for it.
const TRANSFER_WINDOW: usize = 8 << 20;

/// The msgpack encoding of nil: a tombstone's value.
const NIL: &[u8] = &[0xc0];

/// A state-transfer store `[store, key, value, owner, timestamp]`, with the
/// lease start as a sixth packet between rs2p nodes (`since`), encoded
/// packet after packet from the value's encoding (as the table keeps it).
struct TransferItem {
    count: usize,
    payload: Vec<u8>,
}

impl TransferItem {
    fn new(key: &[u8], value: &[u8], owner: &[u8], timestamp: i64, since: Option<i64>) -> Self {
        let mut payload = Vec::with_capacity(24 + key.len() + value.len() + owner.len());
        msgpack::encode_into(&Value::from(sub::STORE), &mut payload);
        msgpack::encode_bin(key, &mut payload);
        payload.extend_from_slice(value);
        msgpack::encode_bin(owner, &mut payload);
        msgpack::encode_int(timestamp.into(), &mut payload);
        if let Some(since) = since {
            msgpack::encode_int(since.into(), &mut payload);
        }
        TransferItem {
            count: 5 + usize::from(since.is_some()),
            payload,
        }
    }
}

impl SyncService {
    fn send_transfer(&self, ctx: &mut Ctx<'_>, conn: ConnId, items: &[TransferItem]) {
        let now = ctx.now();
        let mut chunk: Vec<Bytes> = Vec::new();
        let mut chunk_len = 0;
        for item in items {
            let packed = Packed::from_encoded_payload(
                main::WHISPER,
                ctx.my_id(),
                now,
                item.count,
                &item.payload,
            );
            let frame = packed.to_frame(ctx.send_method(conn, packed.body().len()));
            chunk_len += frame.len();
            chunk.push(frame);
            if chunk_len >= TRANSFER_CHUNK {
                ctx.send_frames(conn, &std::mem::take(&mut chunk));
                chunk_len = 0;
            }
        }
        if !chunk.is_empty() {
            ctx.send_frames(conn, &chunk);
        }
    }
}

impl Service for SyncService {
    fn on_peer(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        // State transfer: every key with its metadata (rs2p peers also get
        // lease starts and tombstones), fed as the peer reads it.
        let rs2p = ctx.peer_kind(conn) == PeerKind::Rs;
        let keys: Vec<Box<[u8]>> = {
            let st = self.shared.lock();
            let mut keys: Vec<Box<[u8]>> = st.map.keys().map(Box::from).collect();
            if rs2p {
                keys.extend(st.tombs.iter().map(|t| t.key.clone()));
            }
            keys
        };
        self.transfers.retain(|t| t.conn != conn);
        self.transfers.push(Transfer {
            conn,
            rs2p,
            keys,
            next: 0,
        });
        self.pump(ctx);
    }

    fn pump(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut jobs = std::mem::take(&mut self.transfers);
        jobs.retain_mut(|job| {
            loop {
                match ctx.queued_bytes(job.conn) {
                    None => return false,
                    // Keep the transfer to a quarter of the peer's queue.
                    Some((q, max)) if q >= TRANSFER_WINDOW.min(max / 4) => return true,
                    Some(_) => {}
                }
                if job.next >= job.keys.len() {
                    return false;
                }
                let mut items = Vec::new();
                {
                    let st = self.shared.lock();
                    while job.next < job.keys.len() && items.len() < TRANSFER_BATCH {
                        let key = &job.keys[job.next];
                        job.next += 1;
                        // Keys changed or deleted since the snapshot are sent
                        // as they are now (live broadcasts carry the rest).
                        if let Some(e) = st.map.get(key) {
                            let s = e.slot();
                            items.push(TransferItem::new(
                                key,
                                e.value_bytes(),
                                &s.owner,
                                s.timestamp,
                                job.rs2p.then_some(s.since),
                            ));
                        } else if job.rs2p {
                            if let Some(t) = st.tombs.get(key) {
                                items.push(TransferItem::new(
                                    key,
                                    NIL,
                                    &t.meta.owner,
                                    t.meta.timestamp,
                                    Some(t.since),
                                ));
                            }
                        }
                    }
                }
                self.send_transfer(ctx, job.conn, &items);
            }
        });
        self.transfers = jobs;
        !self.transfers.is_empty()
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, inc: &Incoming) -> bool {
        let p = &inc.msg.payload;
        match inc.msg.sub_flag() {
            Some(sub::STORE) if p.len() == 5 || p.len() == 6 => {
                // State transfer (a whisper, but handled whatever the flag).
                let (Some(key), Some(owner), Some(ts)) =
                    (p[1].as_bytes(), p[3].as_bytes(), p[4].as_i64())
                else {
                    return true;
                };
                let since = p.get(5).and_then(Value::as_i64).unwrap_or(ts).min(ts);
                let version = Version {
                    meta: Meta {
                        owner: owner.to_vec(),
                        timestamp: ts,
                    },
                    since,
                    deleted: p[2].is_nil(),
                };
                let value = p[2].clone();
                if p.len() == 5 {
                    // From py2p or js2p: the references' rule, a state
                    // transfer never overwrites a value already held (nor,
                    // here, brings back a key deleted after that write).
                    if version.deleted {
                        return true;
                    }
                    {
                        let st = self.shared.lock();
                        if st.map.get(key).is_some_and(|e| e.value().is_truthy())
                            || st
                                .tombs
                                .get(key)
                                .is_some_and(|t| t.meta.timestamp >= version.meta.timestamp)
                        {
                            return true;
                        }
                    }
                    let _ =
                        self.shared
                            .apply(key, value, version.meta, WriteKind::Store, ctx.now());
                    return true;
                }
                if self
                    .shared
                    .merge(key, value.clone(), version.clone(), ctx.now())
                {
                    // Pass what we learned on to the other rs2p peers, so a
                    // healed partition converges even without direct links.
                    let item = [TransferItem::new(
                        key,
                        &msgpack::encode(&value),
                        &version.meta.owner,
                        version.meta.timestamp,
                        Some(version.since),
                    )];
                    for conn in ctx.peers_of_kind(PeerKind::Rs) {
                        if conn != inc.conn {
                            self.send_transfer(ctx, conn, &item);
                        }
                    }
                }
                true
            }
            Some(sub::STORE) => {
                let Some(key) = p.get(1).and_then(Value::as_bytes) else {
                    return true;
                };
                let value = p.get(2).cloned().unwrap_or(Value::Nil);
                let meta = Meta {
                    owner: inc.msg.sender.clone(),
                    timestamp: inc.msg.time,
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
                    merge_delta(st.map.get(key).map(|e| e.value()).as_ref(), delta)
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

/// The time and metadata of a write made here, now.
fn local_meta(ctx: &Ctx<'_>) -> (i64, Meta) {
    let now = ctx.now();
    let meta = Meta {
        owner: ctx.my_id().to_vec(),
        timestamp: now,
    };
    (now, meta)
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
    shared: Arc<Shared>,
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
        let mut state = State::default();
        let mut store = None;
        if let Some(dir) = &cfg.data_dir {
            let (st, id, entries) = Store::open(dir)?;
            if mesh_cfg.id.is_none() {
                mesh_cfg.id = id;
            }
            for (key, e) in entries {
                match e.value {
                    Some(value) => {
                        let slot = state.slot(&e.meta, e.since);
                        state.map.insert(&key, &value, slot);
                    }
                    None => {
                        state.tombs.insert(Tomb {
                            key: key.into(),
                            meta: e.meta,
                            since: e.since,
                        });
                    }
                }
            }
            store = Some(st);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            events,
            leasing: cfg.leasing,
            store: store.clone(),
        });
        let service = SyncService {
            shared: shared.clone(),
            transfers: Vec::new(),
        };
        let mesh = MeshSocket::bind_with(mesh_cfg, vec![Box::new(service)]).await?;
        let committer = match &store {
            Some(st) => {
                st.save_id(mesh.id())?;
                let stop = Arc::new(tokio::sync::Notify::new());
                Some((stop.clone(), st.spawn_committer(stop)))
            }
            None => None,
        };
        Ok(SyncSocket {
            mesh,
            shared,
            committer: Arc::new(Mutex::new(committer)),
        })
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
        self.shared.lock().map.get(key.as_ref()).map(|e| e.value())
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
        self.shared.lock().map.get(key.as_ref()).map(|e| e.meta())
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
        let keys: Vec<Vec<u8>> = self.shared.lock().map.keys().map(<[u8]>::to_vec).collect();
        keys.into_iter()
    }

    /// The values, from a consistent snapshot.
    pub fn values(&self) -> impl Iterator<Item = Value> {
        let v: Vec<Value> = self.shared.lock().map.iter().map(|e| e.value()).collect();
        v.into_iter()
    }

    /// The pairs, from a consistent snapshot.
    pub fn items(&self) -> impl Iterator<Item = (Vec<u8>, Value)> {
        let v: Vec<(Vec<u8>, Value)> = self
            .shared
            .lock()
            .map
            .iter()
            .map(|e| (e.key().to_vec(), e.value()))
            .collect();
        v.into_iter()
    }

    /// Keys, values and metadata, from a consistent snapshot.
    pub fn entries(&self) -> Vec<(Vec<u8>, Value, Meta)> {
        self.shared
            .lock()
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
        let shared = self.shared.clone();
        let seq = self
            .mesh
            .run_in_actor(move |ctx| {
                let (now, meta) = local_meta(ctx);
                let seq = shared
                    .apply(&key, value.clone(), meta, WriteKind::Store, now)
                    .map_err(|r| lease_error(&key, r))?;
                ctx.broadcast(&[Value::from(sub::STORE), Value::Bin(key), value]);
                Ok::<_, Error>((seq, ctx.crowded()))
            })
            .await??;
        self.mesh.wait_for_room(seq.1).await;
        self.durable(seq.0).await
    }

    /// With a data dir, waits until the change numbered `seq` is on disk.
    async fn durable(&self, seq: u64) -> Result<()> {
        match &self.shared.store {
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
            .shared
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
        let Value::Map(entries) = delta else {
            return Err(Error::NotAMapping {
                key: key_text(&key),
                found: delta.kind(),
            });
        };
        let shared = self.shared.clone();
        let seq = self
            .mesh
            .run_in_actor(move |ctx| {
                let (now, meta) = local_meta(ctx);
                let merged = {
                    let st = shared.lock();
                    merge_delta(
                        st.map.get(key.as_slice()).map(|e| e.value()).as_ref(),
                        &entries,
                    )
                }
                .map_err(|found| Error::NotAMapping {
                    key: key_text(&key),
                    found,
                })?;
                let seq = shared
                    .apply(&key, merged, meta, WriteKind::Delta, now)
                    .map_err(|r| lease_error(&key, r))?;
                ctx.broadcast(&[
                    Value::from(sub::DELTA),
                    Value::Bin(key),
                    Value::Map(entries),
                ]);
                Ok::<_, Error>((seq, ctx.crowded()))
            })
            .await??;
        self.mesh.wait_for_room(seq.1).await;
        self.durable(seq.0).await
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

    /// Closes the node; with a data dir, everything received so far is
    /// committed first.
    pub async fn close(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer item packs to the same message, byte for byte, as the
    /// packets it stands for.
    #[test]
    fn transfer_items_pack_like_their_packets() {
        let value = Value::Map(vec![(Value::from("a"), Value::Bin(vec![1; 300]))]);
        for since in [None, Some(1_700_000_000)] {
            for v in [value.clone(), Value::Nil, Value::from(-5)] {
                let item = TransferItem::new(
                    b"key",
                    &msgpack::encode(&v),
                    b"owner-id",
                    1_795_733_000,
                    since,
                );
                let mut packets = vec![
                    Value::from(sub::STORE),
                    Value::Bin(b"key".to_vec()),
                    v,
                    Value::Bin(b"owner-id".to_vec()),
                    Value::from(1_795_733_000i64),
                ];
                packets.extend(since.map(Value::from));
                let want = Packed::new(main::WHISPER, b"me", 42, &packets);
                let got = Packed::from_encoded_payload(
                    main::WHISPER,
                    b"me",
                    42,
                    item.count,
                    &item.payload,
                );
                assert_eq!(got, want);
            }
        }
        assert_eq!(msgpack::encode(&Value::Nil), NIL);
    }
}
