//! One connection: a reader task that splits frames off the stream and a
//! writer task fed by a bounded queue; on plain TCP the actor writes a
//! frame itself while that queue is empty and the connection is quiet.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::error::DecodeError;
use crate::net::transport::{BoxRead, Io};
use crate::wire::{next_frame, Limits};

/// Identifies a connection inside one node.
pub(crate) use crate::proto::ConnId;

/// What connection tasks report to the actor.
pub(crate) enum ConnEvent {
    /// Complete frame bodies arrived (all those one read completed).
    Frames { conn: ConnId, bodies: Vec<Bytes> },
    /// A frame over the frame limit was read past (not buffered).
    Skipped { conn: ConnId, error: DecodeError },
    /// The connection ended (end of stream, error, limit).
    Closed { conn: ConnId, reason: String },
}

/// The actor's side of a connection. Dropping it stops both tasks and
/// closes the socket.
pub(crate) struct ConnHandle {
    tx: mpsc::Sender<Bytes>,
    /// The stream itself, written at once while nothing is queued
    /// ([`Io::inline`]).
    inline: Option<Arc<OwnedWriteHalf>>,
    /// The start of the current [`BUSY_GAP`] window and the frames that
    /// found the queue empty in it: past [`INLINE_PER_GAP`], frames are
    /// queued.
    inline_window: Cell<(Instant, u32)>,
    /// Bytes queued and not yet written, bounded by `max_queued`.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    /// When the writer last made progress ([`now_ms`]): finished a write,
    /// or was handed a frame with nothing queued.
    progress: Arc<AtomicU64>,
    /// Bytes of frames read and not yet handled by the actor.
    unhandled: Arc<Unhandled>,
    reader: AbortHandle,
    writer: AbortHandle,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The peer is not reading fast enough: its queue is full.
    Full,
    /// The connection is gone.
    Closed,
}

impl ConnHandle {
    /// Bytes queued and not yet written, and the most that may be.
    pub(crate) fn queued_bytes(&self) -> (usize, usize) {
        (self.queued.load(Ordering::Relaxed), self.max_queued)
    }

    /// True when the queue is more than half full, in frames or in bytes,
    /// and the peer is still reading: a writer that has made no progress for
    /// [`STUCK`] does not count (local writers then stop waiting for it, and
    /// its queue fills until it is dropped as too slow).
    pub(crate) fn crowded(&self) -> bool {
        let busy = self.tx.capacity() < self.tx.max_capacity() / 2
            || self.queued.load(Ordering::Relaxed) > self.max_queued / 2;
        let idle_ms = now_ms().saturating_sub(self.progress.load(Ordering::Relaxed));
        busy && u128::from(idle_ms) < STUCK.as_millis()
    }

    /// The actor handled `len` bytes of frames from this connection.
    pub(crate) fn handled(&self, len: usize) {
        // The reader only waits while the backlog is over the limit.
        if self.unhandled.bytes.fetch_sub(len, Ordering::Relaxed) > MAX_UNHANDLED {
            self.unhandled.notify.notify_one();
        }
    }

    /// Frames queued, and milliseconds since the writer last made
    /// progress: for the log line of a peer dropped as too slow.
    pub(crate) fn backlog(&self) -> (usize, u64) {
        let frames = self.tx.max_capacity() - self.tx.capacity();
        let idle_ms = now_ms().saturating_sub(self.progress.load(Ordering::Relaxed));
        (frames, idle_ms)
    }

    /// True when the frame about to be sent may be written inline: counts
    /// it against the current window.
    fn inline_allowed(&self) -> bool {
        let now = Instant::now();
        let (start, count) = self.inline_window.get();
        let (start, count) = if now.duration_since(start) >= BUSY_GAP {
            (now, 0)
        } else {
            (start, count)
        };
        self.inline_window.set((start, count.saturating_add(1)));
        count < INLINE_PER_GAP
    }

    /// Sends a frame without waiting: written at once when the stream
    /// takes it and the connection is quiet, else queued for the writer
    /// task.
    pub(crate) fn send(&self, mut frame: Bytes) -> Result<(), SendError> {
        // Nothing queued means the writer task holds no frame and will not
        // write until it is handed one (it counts a frame off only once
        // written), so this write cannot interleave with one of its own.
        // Written here, a frame leaves in the actor's turn, instead of
        // waking the writer task, often on the other worker thread. Not in a
        // burst: there the writer task, on the other worker, writes many
        // frames per syscall while the actor goes on.
        let queued = self.queued.load(Ordering::Acquire);
        if let Some(stream) = self.inline.as_ref().filter(|_| queued == 0) {
            if self.inline_allowed() {
                match stream.try_write(&frame) {
                    Ok(n) if n == frame.len() => {
                        self.progress.store(now_ms(), Ordering::Relaxed);
                        return Ok(());
                    }
                    Ok(n) => frame.advance(n),
                    // Full (the writer task waits for room) or broken (the
                    // writer task meets the error too and reports it).
                    Err(_) => {}
                }
            }
        }
        let len = frame.len();
        if queued + len > self.max_queued {
            return Err(SendError::Full);
        }
        if queued == 0 {
            self.progress.store(now_ms(), Ordering::Relaxed);
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.try_send(frame).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            }
        })
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A reader stops reading while this many bytes of its frames wait for the
/// actor (plus at most one read's worth), so a fast peer cannot pile up
/// memory in front of a busy node.
pub(crate) const MAX_UNHANDLED: usize = 1 << 20;

/// The largest frame a reader reads past instead of closing the
/// connection (py2p values have no size limit; 4 GiB prefixes are garbage).
const MAX_SKIPPED_FRAME: u64 = 1 << 30;

/// Frame bytes a reader handed to the actor and the actor has not handled.
#[derive(Default)]
struct Unhandled {
    bytes: AtomicUsize,
    notify: tokio::sync::Notify,
}

/// A connection is written inline at most [`INLINE_PER_GAP`] times in this
/// long; more frames than that are a burst, and go through the writer
/// task, which batches them while the actor goes on.
const BUSY_GAP: Duration = Duration::from_millis(1);
/// See [`BUSY_GAP`]: enough for what one write sends a peer (a neighbour
/// list, the write, an announcement), few enough that a burst of writes
/// costs the actor no syscall per frame.
const INLINE_PER_GAP: u32 = 4;

/// How long a writer may make no progress before local writers stop
/// waiting for room in its queue.
const STUCK: Duration = Duration::from_secs(1);

/// Milliseconds since the first call (a monotonic clock shared by threads).
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Settings of the connection tasks.
#[derive(Clone)]
pub(crate) struct ConnSettings {
    pub limits: Limits,
    pub queue: usize,
    pub queue_bytes: usize,
    pub incomplete_timeout: Duration,
    /// Signalled after every write, for writers waiting for room.
    pub drained: Arc<tokio::sync::Notify>,
}

/// Starts the tasks of a new connection.
pub(crate) fn spawn(
    io: Io,
    conn: ConnId,
    events: mpsc::Sender<ConnEvent>,
    settings: &ConnSettings,
) -> ConnHandle {
    let Io {
        read: mut rd,
        write: mut wr,
        inline,
        peer,
    } = io;
    let peer: SocketAddr = peer;
    let (tx, mut rx) = mpsc::channel::<Bytes>(settings.queue);
    let queued = Arc::new(AtomicUsize::new(0));
    let written = queued.clone();
    let drained = settings.drained.clone();
    let progress = Arc::new(AtomicU64::new(now_ms()));
    let progressed = progress.clone();

    let limits = settings.limits.clone();
    let incomplete = settings.incomplete_timeout;
    let ev = events.clone();
    let unhandled = Arc::new(Unhandled::default());
    let backlog = unhandled.clone();
    let reader = tokio::spawn(async move {
        let reason = read_loop(&mut rd, conn, &ev, &backlog, &limits, incomplete).await;
        tracing::debug!(conn, %peer, %reason, "connection closed");
        let _ = ev.send(ConnEvent::Closed { conn, reason }).await;
    });

    let writer = tokio::spawn(async move {
        // Frames already waiting are written together: one syscall for a
        // burst, and each frame stays whole and in order.
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            // Let the tasks already runnable go first (the actor queueing
            // more frames, the program making more writes). On plain TCP a
            // frame comes here only in a burst (a quiet link is written
            // inline), and a burst written a frame per syscall woke every
            // peer once per frame; on TLS and WebSocket links the wait is
            // the rest of the tasks' turn. Measured in docs/performance.md:
            // sets/s to convergence in a burst 62,000 -> 97,000, CPU per set
            // a third lower.
            tokio::task::yield_now().await;
            let (res, len) = if rx.is_empty() {
                (wr.write(&first).await, first.len())
            } else {
                batch.clear();
                batch.extend_from_slice(&first);
                while batch.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                (wr.write(&batch).await, batch.len())
            };
            written.fetch_sub(len, Ordering::Release);
            progressed.store(now_ms(), Ordering::Relaxed);
            drained.notify_waiters();
            if let Err(e) = res {
                let _ = events
                    .send(ConnEvent::Closed {
                        conn,
                        reason: format!("write failed: {e}"),
                    })
                    .await;
                return;
            }
        }
        let _ = wr.shutdown().await;
    });

    ConnHandle {
        tx,
        inline,
        inline_window: Cell::new((Instant::now(), 0)),
        queued,
        max_queued: settings.queue_bytes,
        progress,
        unhandled,
        reader: reader.abort_handle(),
        writer: writer.abort_handle(),
    }
}

async fn read_loop(
    rd: &mut BoxRead,
    conn: ConnId,
    events: &mpsc::Sender<ConnEvent>,
    backlog: &Unhandled,
    limits: &Limits,
    incomplete: Duration,
) -> String {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Bytes of an oversized frame still to read past: such a frame (py2p
    // sends any size) is skipped without buffering it, and the link stays.
    let mut skip = 0usize;
    let mut frames_read = 0u64;
    loop {
        let mut bodies = Vec::new();
        let error = loop {
            if skip > 0 {
                let n = skip.min(buf.len());
                buf.advance(n);
                skip -= n;
                if skip > 0 {
                    break None;
                }
            }
            match next_frame(&mut buf, limits) {
                Ok(Some(body)) => {
                    frames_read += 1;
                    bodies.push(body);
                }
                Ok(None) => break None,
                // Only once the peer has sent a frame (its handshake), and
                // not for absurd lengths: before that it is garbage.
                Err(error @ DecodeError::FrameTooLarge { len, .. })
                    if frames_read > 0 && len <= MAX_SKIPPED_FRAME =>
                {
                    buf.advance(4);
                    skip = usize::try_from(len).unwrap_or(usize::MAX);
                    if events
                        .send(ConnEvent::Skipped { conn, error })
                        .await
                        .is_err()
                    {
                        return "node closed".into();
                    }
                }
                Err(e) => break Some(e.to_string()),
            }
        };
        if !bodies.is_empty() {
            let len: usize = bodies.iter().map(Bytes::len).sum();
            backlog.bytes.fetch_add(len, Ordering::Relaxed);
            if events
                .send(ConnEvent::Frames { conn, bodies })
                .await
                .is_err()
            {
                return "node closed".into();
            }
            loop {
                let handled = backlog.notify.notified();
                if backlog.bytes.load(Ordering::Relaxed) <= MAX_UNHANDLED {
                    break;
                }
                handled.await;
            }
        }
        if let Some(e) = error {
            return e;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let read = if buf.is_empty() && skip == 0 {
            rd.read_buf(&mut buf).await
        } else {
            match tokio::time::timeout(incomplete, rd.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    return format!(
                        "frame left incomplete for {} s ({} bytes buffered)",
                        incomplete.as_secs(),
                        buf.len()
                    )
                }
            }
        };
        match read {
            Ok(0) => return "end of stream".into(),
            Ok(_) => {}
            Err(e) => return format!("read failed: {e}"),
        }
    }
}
