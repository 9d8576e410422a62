//! `GET /v1/watch`: the node's changes as Server-Sent Events, numbered,
//! with a ring of the recent ones for clients that resume.

use super::*;

/// One event of the feed. Its SSE frame is written when a watch first
/// sends it: a node nobody watches keeps only the change (formatting every
/// change as JSON was a third of the CPU a received write cost the node,
/// measured with callgrind).
struct FeedEvent {
    seq: u64,
    /// The key (None for `lagged`, which every watch gets).
    key: Option<Vec<u8>>,
    /// What changed.
    data: FeedData,
    /// The feed's epoch, for the event id.
    epoch: Arc<str>,
    /// Bytes the event holds, about (the ring's bound).
    size: usize,
    /// The SSE frame (`id:`, `event:`, `data:` lines and a blank line).
    frame: OnceLock<Bytes>,
}

/// The change an event stands for.
enum FeedData {
    Update {
        value: Value,
        owner: Vec<u8>,
        timestamp: i64,
    },
    Delete,
    Lagged {
        missed: u64,
    },
}

impl FeedEvent {
    fn frame(&self) -> Bytes {
        self.frame
            .get_or_init(|| {
                let key = || self.key.as_deref().map_or(Json::Null, key_to_json);
                let (name, data) = match &self.data {
                    FeedData::Update {
                        value,
                        owner,
                        timestamp,
                    } => (
                        "update",
                        json!({
                            "key": key(),
                            "value": value_to_json(value),
                            "owner": String::from_utf8_lossy(owner),
                            "timestamp": timestamp,
                        }),
                    ),
                    FeedData::Delete => ("delete", json!({"key": key()})),
                    FeedData::Lagged { missed } => ("lagged", json!({"missed": missed})),
                };
                Bytes::from(format!(
                    "id: {}-{}\nevent: {name}\ndata: {data}\n\n",
                    self.epoch, self.seq
                ))
            })
            .clone()
    }
}

/// About how many bytes `v` takes (its msgpack size, give or take headers).
fn approx_size(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len() + 5,
        Value::Bin(b) => b.len() + 5,
        Value::Array(a) => 5 + a.iter().map(approx_size).sum::<usize>(),
        Value::Map(m) => {
            5 + m
                .iter()
                .map(|(k, v)| approx_size(k) + approx_size(v))
                .sum::<usize>()
        }
        _ => 9,
    }
}

/// The node's changes, numbered, with a ring of the recent ones.
pub(super) struct Feed {
    /// A random prefix of the event ids, new at every start, so that a
    /// client resuming across a restart is told to start over.
    epoch: Arc<str>,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<FeedEvent>>,
}

struct Ring {
    events: VecDeque<Arc<FeedEvent>>,
    capacity: usize,
    /// Bytes the events hold, about.
    bytes: usize,
    next_seq: u64,
}

impl Feed {
    pub(super) fn start(
        sync: &SyncSocket,
        limits: &ApiLimits,
        metrics: Arc<ApiMetrics>,
    ) -> Arc<Feed> {
        let (live, _) = broadcast::channel(limits.api_watch_queue as usize);
        let feed = Arc::new(Feed {
            epoch: Arc::from(format!("{:08x}", rand_u32())),
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                capacity: limits.api_watch_history as usize,
                bytes: 0,
                next_seq: 1,
            }),
            live,
        });
        let mut events = sync.events();
        let me = sync.id().as_bytes().to_vec();
        let weak = Arc::downgrade(&feed);
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let Some(feed) = weak.upgrade() else { break };
                let (key, data) = match ev {
                    SyncEvent::Update { key, value, meta } => {
                        if meta.owner != me {
                            metrics.propagation(meta.timestamp);
                        }
                        let data = FeedData::Update {
                            value,
                            owner: meta.owner,
                            timestamp: meta.timestamp,
                        };
                        (Some(key), data)
                    }
                    SyncEvent::Delete { key } => (Some(key), FeedData::Delete),
                    SyncEvent::Lagged { missed } => {
                        metrics.feed_lagged(missed);
                        (None, FeedData::Lagged { missed })
                    }
                    _ => continue,
                };
                feed.push(key, data);
            }
        });
        feed
    }

    fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    fn push(&self, key: Option<Vec<u8>>, data: FeedData) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let size = 64
            + key.as_ref().map_or(0, Vec::len)
            + match &data {
                FeedData::Update { value, owner, .. } => approx_size(value) + owner.len(),
                _ => 0,
            };
        let ev = Arc::new(FeedEvent {
            seq,
            key,
            data,
            epoch: self.epoch.clone(),
            size,
            frame: OnceLock::new(),
        });
        ring.bytes += ev.size;
        ring.events.push_back(ev.clone());
        while ring.events.len() > ring.capacity
            || ring.bytes > HISTORY_BYTES && ring.events.len() > 1
        {
            if let Some(old) = ring.events.pop_front() {
                ring.bytes -= old.size;
            }
        }
        // Sent under the lock: a watch subscribing sees each event either
        // in the ring or live, never both, never neither.
        let _ = self.live.send(ev);
    }

    /// Subscribes; with the id of the last event a client saw, also the
    /// events after it (or a `reset` frame when they are gone). The first
    /// frame to send is the hello: without a last id (or with a reset) it
    /// carries the id of the feed's current position, so that a client
    /// that saw no event yet can resume too.
    fn subscribe(
        &self,
        last: Option<&str>,
    ) -> (
        Vec<Arc<FeedEvent>>,
        Bytes,
        broadcast::Receiver<Arc<FeedEvent>>,
    ) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.live.subscribe();
        let here = self.id(ring.next_seq - 1);
        let Some(last) = last else {
            let hello = format!("retry: 1000\nid: {here}\n: watching\n\n");
            return (Vec::new(), Bytes::from(hello), rx);
        };
        let reset = |reason: &str| {
            let data = json!({"reason": reason});
            Bytes::from(format!(
                "retry: 1000\n: watching\n\nid: {here}\nevent: reset\ndata: {data}\n\n"
            ))
        };
        let seq = last
            .strip_prefix(&*self.epoch)
            .and_then(|s| s.strip_prefix('-'))
            .and_then(|s| s.parse::<u64>().ok());
        let Some(seq) = seq else {
            return (
                Vec::new(),
                reset("unknown event id (the node restarted?)"),
                rx,
            );
        };
        if seq >= ring.next_seq {
            return (Vec::new(), reset("event id from the future"), rx);
        }
        let oldest = ring.events.front().map_or(ring.next_seq, |e| e.seq);
        if seq + 1 < oldest {
            return (
                Vec::new(),
                reset("the events after that id are no longer kept"),
                rx,
            );
        }
        let replay = ring
            .events
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect();
        (
            replay,
            Bytes::from_static(b"retry: 1000\n: watching\n\n"),
            rx,
        )
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// Counts an open watch; released when dropped.
struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) async fn watch(
    State(st): St,
    Extension(conn): Extension<ConnCtx>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    let params = query(&uri, &["prefix", "last_event_id"])?;
    let prefix = param(&params, "prefix").unwrap_or(b"").to_vec();
    let last = headers
        .get("last-event-id")
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| param(&params, "last_event_id").map(<[u8]>::to_vec));
    let last = match last {
        None => None,
        Some(b) => {
            Some(String::from_utf8(b).map_err(|_| ApiError::bad("Last-Event-ID is not UTF-8"))?)
        }
    };
    let max = st.limits.api_max_watches;
    if st
        .watches
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_watches",
            format!("{max} watches are open already (--api-max-watches)"),
        ));
    }
    let slot = WatchSlot(st.watches.clone());
    let (replay, hello, rx) = st.feed.subscribe(last.as_deref());
    let queue = st.limits.api_watch_queue as usize;
    let (tx, body_rx) = mpsc::channel::<Bytes>(queue);
    let metrics = st.metrics.clone();
    tokio::spawn(forward(Forward {
        slot,
        prefix,
        replay,
        hello,
        rx,
        tx,
        conn,
        metrics,
    }));
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(body_rx).map(Ok::<_, Infallible>),
    );
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// What a watch's forwarding task holds.
struct Forward {
    slot: WatchSlot,
    prefix: Vec<u8>,
    replay: Vec<Arc<FeedEvent>>,
    hello: Bytes,
    rx: broadcast::Receiver<Arc<FeedEvent>>,
    tx: mpsc::Sender<Bytes>,
    conn: ConnCtx,
    metrics: Arc<ApiMetrics>,
}

/// Moves a watch's events from the feed to its client's queue; drops the
/// client (closes its connection) when the queue is full or the feed has
/// overtaken it.
async fn forward(mut f: Forward) {
    let _slot = f.slot;
    let wanted = |e: &FeedEvent| e.key.as_ref().is_none_or(|k| k.starts_with(&f.prefix));
    let mut last_seq = 0;
    let replayed = async {
        f.tx.send(f.hello.clone()).await.map_err(|_| ())?;
        for e in &f.replay {
            last_seq = e.seq;
            if wanted(e) {
                f.tx.send(e.frame()).await.map_err(|_| ())?;
                f.metrics.watch_event();
            }
        }
        Ok::<(), ()>(())
    };
    match tokio::time::timeout(REPLAY_TIMEOUT, replayed).await {
        Ok(Ok(())) => {}
        Ok(Err(())) => return,
        Err(_) => {
            f.metrics.watch_dropped();
            f.conn.kill();
            return;
        }
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        let frame = tokio::select! {
            ev = f.rx.recv() => match ev {
                Ok(e) if e.seq > last_seq && wanted(&e) => e.frame(),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    f.metrics.watch_dropped();
                    f.conn.kill();
                    return;
                }
                // The node closed.
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
            () = f.tx.closed() => return,
        };
        let event = !frame.starts_with(b":");
        match f.tx.try_send(frame) {
            Ok(()) => {
                if event {
                    f.metrics.watch_event();
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                f.metrics.watch_dropped();
                f.conn.kill();
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
