//! The durable store behind `--data-dir`: the dictionary, its metadata,
//! tombstones and the node's identity in a redb database.
//!
//! redb is pure Rust, maintained, and durable per committed transaction
//! (copy-on-write B-trees with a checksummed commit). Writes are grouped:
//! the actor records each change in a pending map (the latest change per
//! key wins) and a committer task writes everything pending in one
//! transaction; a local `set` returns once the commit holding its change is
//! durable. Under concurrent writers many sets share one fsync.

use std::path::Path;
#[cfg(feature = "store")]
use std::path::PathBuf;
use std::sync::Arc;
#[cfg(feature = "store")]
use std::sync::Mutex;

#[cfg(feature = "store")]
use indexmap::IndexMap;
#[cfg(feature = "store")]
use redb::{Database, ReadableTable, TableDefinition};
#[cfg(feature = "store")]
use tokio::sync::watch;
use tokio::sync::Notify;

#[cfg(feature = "store")]
use crate::error::StoreError;
use crate::error::{Error, Result};
use crate::mesh::NodeStats;
use crate::proto::sync::Meta;
use crate::value::Value;
#[cfg(feature = "store")]
use crate::wire::{msgpack, Limits};

#[cfg(feature = "store")]
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
#[cfg(feature = "store")]
const NODE: TableDefinition<&str, &str> = TableDefinition::new("node");

/// What is stored for a key: a value or a tombstone, with its metadata.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stored {
    pub value: Option<Value>,
    pub meta: Meta,
    pub since: i64,
}

#[cfg(feature = "store")]
impl Stored {
    fn encode(&self) -> Vec<u8> {
        msgpack::encode(&Value::Array(vec![
            self.value.clone().unwrap_or(Value::Nil),
            Value::Bin(self.meta.owner.clone()),
            Value::from(self.meta.timestamp),
            Value::from(self.since),
            Value::Bool(self.value.is_none()),
        ]))
    }

    fn decode(bytes: &[u8]) -> Option<Stored> {
        // A value sits one level deeper here than in a message: anything a
        // peer could send us must read back after a restart.
        let limits = Limits {
            max_elements: usize::MAX,
            max_depth: Limits::default().max_depth + 1,
            ..Limits::default()
        };
        let v = msgpack::decode(bytes, &limits).ok()?;
        let a = v.as_array()?;
        let deleted = a.get(4)?.as_bool()?;
        Some(Stored {
            value: (!deleted).then(|| a[0].clone()),
            meta: Meta {
                owner: a.get(1)?.as_bytes()?.to_vec(),
                timestamp: a.get(2)?.as_i64()?,
            },
            since: a.get(3)?.as_i64()?,
        })
    }
}

/// What takes each saved key as the store is opened.
pub(crate) type Load<'a> = &'a mut dyn FnMut(&[u8], Stored);

#[cfg(feature = "store")]
struct Pending {
    changes: IndexMap<Vec<u8>, Option<Stored>>,
    seq: u64,
}

/// A handle to the store; cheap to clone.
#[cfg(feature = "store")]
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
    /// The database file, for error messages.
    file: Arc<PathBuf>,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    /// The last durable sequence number, and the error that stopped the
    /// store, if any.
    committed: watch::Receiver<(u64, Option<StoreError>)>,
    committed_tx: Arc<watch::Sender<(u64, Option<StoreError>)>>,
    /// Commits, their durations by bucket, and their total time (µs).
    commits: Arc<Mutex<(u64, [u64; 12], u64)>>,
}

/// The database file in a data dir.
#[cfg(feature = "store")]
const DB_FILE: &str = "rs2p.redb";

/// Memory the database may use for its page cache.
#[cfg(feature = "store")]
const STORE_CACHE: usize = 32 << 20;

/// A database error on `file` (in the data dir `dir`) as a [`StoreError`]:
/// a locked database is [`StoreError::InUse`], an operating system error
/// [`StoreError::Io`] (doing `action`), anything else
/// [`StoreError::Database`].
#[cfg(feature = "store")]
fn db_error(dir: &Path, file: &Path, action: &'static str, e: impl Into<redb::Error>) -> Error {
    let e = match e.into() {
        redb::Error::DatabaseAlreadyOpen => StoreError::InUse {
            path: dir.to_path_buf(),
        },
        redb::Error::Io(source) => io_error(file, action, source),
        other => StoreError::Database {
            path: file.to_path_buf(),
            source: Arc::new(other),
        },
    };
    Error::Store(e)
}

/// An operating system error on `path`, while doing `action`.
#[cfg(feature = "store")]
fn io_error(path: &Path, action: &'static str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        action,
        source: Arc::new(source),
    }
}

#[cfg(feature = "store")]
impl Store {
    /// Opens (or creates) the store in `dir`; hands every saved key to
    /// `load` as it is read (so a million keys are never held twice), and
    /// returns the store and the saved node id. Every failure is an
    /// [`Error::Store`] naming the path.
    pub(crate) fn open(dir: &Path, load: Load<'_>) -> Result<(Store, Option<String>)> {
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::Store(StoreError::NotADirectory {
                    path: dir.to_path_buf(),
                }))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create", e))?;
            }
            Err(e) => return Err(Error::Store(io_error(dir, "open", e))),
        }
        let file = dir.join(DB_FILE);
        // redb caches up to 1 GiB by default: reading a million keys at
        // start-up took the node's peak memory to 780 MiB. The dictionary
        // lives in memory anyway; the store only needs pages for commits.
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE)
            .create(&file)
            .map_err(|e| db_error(dir, &file, "open", e))?;
        let read_err = |e: redb::Error| db_error(dir, &file, "read", e);
        let mut id = None;
        {
            let w = db
                .begin_write()
                .map_err(|e| db_error(dir, &file, "write", e))?;
            {
                let write_err = |e: redb::TableError| db_error(dir, &file, "write", e);
                let _ = w.open_table(DATA).map_err(write_err)?;
                let _ = w.open_table(NODE).map_err(write_err)?;
            }
            w.commit().map_err(|e| db_error(dir, &file, "write", e))?;
            let r = db.begin_read().map_err(|e| read_err(e.into()))?;
            let node = r.open_table(NODE).map_err(|e| read_err(e.into()))?;
            if let Some(v) = node.get("id").map_err(|e| read_err(e.into()))? {
                id = Some(v.value().to_string());
            }
            let data = r.open_table(DATA).map_err(|e| read_err(e.into()))?;
            for row in data.iter().map_err(|e| read_err(e.into()))? {
                let (k, v) = row.map_err(|e| read_err(e.into()))?;
                match Stored::decode(v.value()) {
                    Some(s) => load(k.value(), s),
                    None => tracing::warn!("unreadable stored entry skipped"),
                }
            }
        }
        let (tx, rx) = watch::channel((0, None));
        let store = Store {
            db: Arc::new(db),
            file: Arc::new(file),
            pending: Arc::new(Mutex::new(Pending {
                changes: IndexMap::new(),
                seq: 0,
            })),
            wake: Arc::new(Notify::new()),
            committed: rx,
            committed_tx: Arc::new(tx),
            commits: Arc::default(),
        };
        Ok((store, id))
    }

    /// A database error while writing.
    fn write_err(&self, e: impl Into<redb::Error>) -> Error {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        db_error(dir, &self.file, "write", e)
    }

    /// Saves the node id (at once, durably).
    pub(crate) fn save_id(&self, id: &str) -> Result<()> {
        let w = self.db.begin_write().map_err(|e| self.write_err(e))?;
        {
            let mut t = w.open_table(NODE).map_err(|e| self.write_err(e))?;
            t.insert("id", id).map_err(|e| self.write_err(e))?;
        }
        w.commit().map_err(|e| self.write_err(e))
    }

    /// Records a change (None: the key is gone for good); returns the
    /// sequence number to wait for.
    pub(crate) fn record(&self, key: &[u8], stored: Option<Stored>) -> u64 {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.seq += 1;
        p.changes.insert(key.to_vec(), stored);
        let seq = p.seq;
        drop(p);
        self.wake.notify_one();
        seq
    }

    /// Waits until the change numbered `seq` is durable.
    pub(crate) async fn durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.committed.clone();
        let state = rx
            .wait_for(|(c, err)| *c >= seq || err.is_some())
            .await
            .map_err(|_| Error::Closed)?;
        match &state.1 {
            Some(e) => Err(Error::Store(e.clone())),
            None => Ok(()),
        }
    }

    /// Writes everything pending in one transaction.
    fn commit_pending(&self) -> Result<()> {
        let (changes, seq) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut p.changes), p.seq)
        };
        if changes.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let w = self.db.begin_write().map_err(|e| self.write_err(e))?;
        {
            let mut t = w.open_table(DATA).map_err(|e| self.write_err(e))?;
            for (k, v) in &changes {
                match v {
                    Some(s) => {
                        t.insert(k.as_slice(), s.encode().as_slice())
                            .map_err(|e| self.write_err(e))?;
                    }
                    None => {
                        t.remove(k.as_slice()).map_err(|e| self.write_err(e))?;
                    }
                }
            }
        }
        w.commit().map_err(|e| self.write_err(e))?;
        self.committed_tx.send_modify(|c| c.0 = seq);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut c = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        c.0 += 1;
        c.2 = c.2.saturating_add(micros);
        if let Some(b) = (0..12).find(|i| micros <= 250 << i) {
            c.1[b] += 1;
        }
        Ok(())
    }

    /// Adds the store's counters to `st`.
    pub(crate) fn fill_stats(&self, st: &mut NodeStats) {
        let c = *self.commits.lock().unwrap_or_else(|e| e.into_inner());
        (
            st.store_commits,
            st.store_commit_buckets,
            st.store_commit_micros,
        ) = c;
        st.store_error = self.committed.borrow().1.as_ref().map(ToString::to_string);
    }

    /// Runs the committer until `stop` is notified, then commits what is
    /// left.
    pub(crate) fn spawn_committer(&self, stop: Arc<Notify>) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let stopping = tokio::select! {
                    _ = store.wake.notified() => false,
                    _ = stop.notified() => true,
                };
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.commit_pending()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!("store commit failed: {e}");
                        let e = match e {
                            Error::Store(e) => e,
                            other => StoreError::Database {
                                path: store.file.to_path_buf(),
                                source: Arc::new(other),
                            },
                        };
                        store.committed_tx.send_modify(|c| c.1 = Some(e));
                    }
                    Err(e) => {
                        tracing::error!("store committer failed: {e}");
                        let e = StoreError::Database {
                            path: store.file.to_path_buf(),
                            source: Arc::new(e),
                        };
                        store.committed_tx.send_modify(|c| c.1 = Some(e));
                    }
                }
                if stopping {
                    break;
                }
            }
        })
    }
}

/// The store in a build without the `store` feature: it cannot be opened,
/// so binding a node with a
/// [`data_dir`](crate::SyncConfig::data_dir) fails with
/// [`Error::FeatureDisabled`].
#[cfg(not(feature = "store"))]
#[derive(Clone)]
pub(crate) enum Store {}

#[cfg(not(feature = "store"))]
impl Store {
    pub(crate) fn open(_dir: &Path, _load: Load<'_>) -> Result<(Store, Option<String>)> {
        Err(Error::FeatureDisabled("store"))
    }

    pub(crate) fn save_id(&self, _id: &str) -> Result<()> {
        match *self {}
    }

    pub(crate) fn record(&self, _key: &[u8], _stored: Option<Stored>) -> u64 {
        match *self {}
    }

    pub(crate) async fn durable(&self, _seq: u64) -> Result<()> {
        match *self {}
    }

    pub(crate) fn spawn_committer(&self, _stop: Arc<Notify>) -> tokio::task::JoinHandle<()> {
        match *self {}
    }

    pub(crate) fn fill_stats(&self, _st: &mut NodeStats) {
        match *self {}
    }
}
