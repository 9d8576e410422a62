//! `GET /metrics`: the node's counters in the Prometheus text format
//! (version 0.0.4).
//!
//! | metric | type | labels | what |
//! |--------|------|--------|------|
//! | `rs2p_info` | gauge | `id`, `subnet`, `transport`, `version` | always 1 |
//! | `rs2p_uptime_seconds` | gauge | | time since the node started |
//! | `rs2p_peers` | gauge | `kind` (`py2p`, `rs2p`, `js2p`, `unknown`) | handshaken peers |
//! | `rs2p_connections` | gauge | | open connections, handshaken or not |
//! | `rs2p_frames_received_total` | counter | `type` | frames received, by message type |
//! | `rs2p_received_bytes_total` | counter | `type` | their bytes (as on the wire) |
//! | `rs2p_frames_sent_total` | counter | `type` | frames queued for peers |
//! | `rs2p_sent_bytes_total` | counter | `type` | their bytes |
//! | `rs2p_transmitted_bytes_total` | counter | | every byte handed to connections (padding and resends too) |
//! | `rs2p_broadcasts_received_total` | counter | | new broadcasts from peers |
//! | `rs2p_duplicate_broadcasts_total` | counter | | broadcasts received again |
//! | `rs2p_relays_total` | counter | | broadcast frames relayed |
//! | `rs2p_relays_pruned_total` | counter | | relays saved by neighbour lists |
//! | `rs2p_expired_broadcasts_total` | counter | | broadcasts older than the window |
//! | `rs2p_bad_frames_total` | counter | | undecodable frames (link dropped) |
//! | `rs2p_frames_skipped_total` | counter | | frames over a limit (link kept) |
//! | `rs2p_slow_peers_dropped_total` | counter | | peers dropped with a full send queue |
//! | `rs2p_stalled_links_total` | counter | | links dropped, silent through a keepalive probe |
//! | `rs2p_tree_prunes_total` | counter | | links taken out of the broadcast tree after a duplicate |
//! | `rs2p_tree_grafts_total` | counter | | grafts for announced broadcasts that did not arrive |
//! | `rs2p_tree_announcements_total` | counter | | announcement frames sent on links out of the tree |
//! | `rs2p_reconciliation_refused_total` | counter | | reconciliation messages not answered (malformed, too many) |
//! | `rs2p_send_queue_bytes` | gauge | | bytes waiting in the send queues |
//! | `rs2p_state_transfer_bytes_total` | counter | `direction` (`in`, `out`) | state transfers |
//! | `rs2p_keys`, `rs2p_tombstones` | gauge | | the dictionary |
//! | `rs2p_store_up` | gauge | | with `--data-dir`: 1, or 0 once the store failed |
//! | `rs2p_store_commits_total` | counter | | store transactions |
//! | `rs2p_store_commit_seconds` | histogram | | their durations |
//! | `rs2p_write_propagation_seconds` | histogram | | age of other nodes' writes on arrival |
//! | `rs2p_api_requests_total` | counter | `code` | API requests by status |
//! | `rs2p_api_watches` | gauge | | open watches |
//! | `rs2p_api_watch_events_total` | counter | | events sent to watches |
//! | `rs2p_api_watch_dropped_total` | counter | | watches dropped as too slow |
//! | `rs2p_api_feed_lagged_events_total` | counter | | changes the API's feed missed |
//! | `process_resident_memory_bytes` | gauge | | RSS (Linux) |
//!
//! Message types are `broadcast`, `renegotiate`, `whisper`, `ping`,
//! `pong`, or `other`. A write's age is measured from its timestamp, which
//! the protocol keeps in whole seconds: a write delivered at once is 0 to 1 s
//! old. State transfers count too (a peer that joins sends every key).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rs2p::{NodeStats, PeerInfo};

/// The upper bounds of `rs2p_write_propagation_seconds`' buckets.
pub const PROPAGATION_BUCKETS: [f64; 10] =
    [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];

/// The API's own counters.
#[derive(Default)]
pub struct ApiMetrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    watch_events: AtomicU64,
    watch_dropped: AtomicU64,
    feed_lagged: AtomicU64,
    /// Bucket counts, the sum of the observations, their count.
    propagation: Mutex<([u64; PROPAGATION_BUCKETS.len()], f64, u64)>,
}

impl ApiMetrics {
    /// Counts a request answered with `code`.
    pub fn request(&self, code: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry(code).or_default() += 1;
    }

    /// Counts an event sent to a watch.
    pub fn watch_event(&self) {
        self.watch_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a watch dropped as too slow.
    pub fn watch_dropped(&self) {
        self.watch_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts changes the feed missed.
    pub fn feed_lagged(&self, missed: u64) {
        self.feed_lagged.fetch_add(missed, Ordering::Relaxed);
    }

    /// Records the age of a write dated `timestamp` (unix seconds), now.
    pub fn propagation(&self, timestamp: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let age = (now - timestamp as f64).max(0.0);
        let mut p = self.propagation.lock().unwrap_or_else(|e| e.into_inner());
        for (i, bound) in PROPAGATION_BUCKETS.iter().enumerate() {
            if age <= *bound {
                p.0[i] += 1;
            }
        }
        p.1 += age;
        p.2 += 1;
    }
}

/// What one rendering of the metrics reads.
pub struct Snapshot<'a> {
    /// The library's counters.
    pub stats: &'a NodeStats,
    /// The peers.
    pub peers: &'a [PeerInfo],
    /// Keys held.
    pub keys: usize,
    /// The node id.
    pub id: &'a str,
    /// The full subnet.
    pub subnet: &'a str,
    /// The transport's name.
    pub transport: &'a str,
    /// Time since the start.
    pub uptime: Duration,
    /// True with a data dir.
    pub has_store: bool,
    /// The API's counters.
    pub api: &'a ApiMetrics,
    /// Open watches.
    pub watches: usize,
}

/// The name of a message type in the `type` label.
fn type_name(t: u8) -> &'static str {
    use rs2p::wire::flags::main;
    match t {
        main::BROADCAST => "broadcast",
        main::RENEGOTIATE => "renegotiate",
        main::WHISPER => "whisper",
        main::PING => "ping",
        main::PONG => "pong",
        _ => "other",
    }
}

/// A text-format writer.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram from cumulative bucket counts.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[(String, u64)],
        sum: f64,
        count: u64,
    ) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in buckets {
            self.sample(&bucket, &[("le", le)], n);
        }
        self.sample(&bucket, &[("le", "+Inf")], count);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count);
    }

    /// A counter family by message type, every type present.
    fn by_type(&mut self, name: &str, help: &str, map: &BTreeMap<u8, u64>) {
        self.family(name, "counter", help);
        let mut sums: BTreeMap<&str, u64> = [
            "broadcast",
            "renegotiate",
            "whisper",
            "ping",
            "pong",
            "other",
        ]
        .into_iter()
        .map(|t| (t, 0))
        .collect();
        for (t, n) in map {
            *sums.entry(type_name(*t)).or_default() += n;
        }
        for (t, n) in sums {
            self.sample(name, &[("type", t)], n);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The resident set size of this process, from /proc/self/statm.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}

/// Renders every metric.
pub fn render(s: &Snapshot<'_>) -> String {
    let st = s.stats;
    let mut o = Out(String::with_capacity(8192));
    o.family(
        "rs2p_info",
        "gauge",
        "The node: id, subnet, transport, version (always 1).",
    );
    o.sample(
        "rs2p_info",
        &[
            ("id", s.id),
            ("subnet", s.subnet),
            ("transport", s.transport),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
    o.one(
        "rs2p_uptime_seconds",
        "gauge",
        "Time since the node started.",
        s.uptime.as_secs_f64(),
    );

    o.family(
        "rs2p_peers",
        "gauge",
        "Handshaken peers by the implementation they behave like.",
    );
    for kind in ["py2p", "rs2p", "js2p", "unknown"] {
        let n = s
            .peers
            .iter()
            .filter(|p| crate::api::kind_name(p.kind) == kind)
            .count();
        o.sample("rs2p_peers", &[("kind", kind)], n);
    }
    o.one(
        "rs2p_connections",
        "gauge",
        "Open connections, handshaken or not.",
        st.connections,
    );

    o.by_type(
        "rs2p_frames_received_total",
        "Frames received, by message type.",
        &st.frames_in,
    );
    o.by_type(
        "rs2p_received_bytes_total",
        "Bytes of the frames received, by message type.",
        &st.bytes_in,
    );
    o.by_type(
        "rs2p_frames_sent_total",
        "Frames queued for peers, by message type.",
        &st.frames_out,
    );
    o.by_type(
        "rs2p_sent_bytes_total",
        "Bytes of the frames queued for peers, by message type.",
        &st.bytes_out,
    );

    let counters: [(&str, &str, u64); 14] = [
        (
            "rs2p_transmitted_bytes_total",
            "Bytes handed to connections (frames with their length prefixes, padding and resends included).",
            st.bytes_sent,
        ),
        (
            "rs2p_broadcasts_received_total",
            "Broadcasts received for the first time.",
            st.broadcasts_received,
        ),
        (
            "rs2p_duplicate_broadcasts_total",
            "Broadcasts received again (or our own echoing back).",
            st.duplicate_broadcasts,
        ),
        (
            "rs2p_relays_total",
            "Broadcast frames relayed to peers.",
            st.relays,
        ),
        (
            "rs2p_relays_pruned_total",
            "Relays not sent: the rs2p peer the broadcast came from had sent it there.",
            st.relays_pruned,
        ),
        (
            "rs2p_expired_broadcasts_total",
            "Broadcasts refused as older than the 60 s window.",
            st.expired_broadcasts,
        ),
        (
            "rs2p_bad_frames_total",
            "Undecodable frames (their connection was dropped).",
            st.bad_frames,
        ),
        (
            "rs2p_frames_skipped_total",
            "Frames over a limit, skipped (their connection kept).",
            st.frames_skipped,
        ),
        (
            "rs2p_slow_peers_dropped_total",
            "Peers dropped because their send queue was full.",
            st.slow_peers_dropped,
        ),
        (
            "rs2p_stalled_links_total",
            "Links dropped after staying silent through a keepalive probe.",
            st.stalled_links,
        ),
        (
            "rs2p_tree_prunes_total",
            "Links taken out of the broadcast tree after a duplicate.",
            st.tree_prunes,
        ),
        (
            "rs2p_tree_grafts_total",
            "Grafts sent for announced broadcasts that did not arrive in time.",
            st.tree_grafts,
        ),
        (
            "rs2p_tree_announcements_total",
            "Announcement frames sent on links out of the broadcast tree.",
            st.tree_announcements,
        ),
        (
            "rs2p_reconciliation_refused_total",
            "Reconciliation messages from rs2p peers not answered (malformed, too many).",
            st.reconciliation_refused,
        ),
    ];
    for (name, help, v) in counters {
        o.one(name, "counter", help, v);
    }
    o.one(
        "rs2p_send_queue_bytes",
        "gauge",
        "Bytes waiting in the connections' send queues.",
        st.send_queue_bytes,
    );
    o.family(
        "rs2p_state_transfer_bytes_total",
        "counter",
        "State-transfer bytes (every key, sent to a peer that joins).",
    );
    o.sample(
        "rs2p_state_transfer_bytes_total",
        &[("direction", "in")],
        st.state_transfer_bytes_in,
    );
    o.sample(
        "rs2p_state_transfer_bytes_total",
        &[("direction", "out")],
        st.state_transfer_bytes_out,
    );
    o.one("rs2p_keys", "gauge", "Keys in the dictionary.", s.keys);
    o.one(
        "rs2p_tombstones",
        "gauge",
        "Tombstones of deleted keys kept.",
        st.tombstones,
    );

    if s.has_store {
        o.one(
            "rs2p_store_up",
            "gauge",
            "1 while the durable store works, 0 once it failed.",
            u8::from(st.store_error.is_none()),
        );
    }
    o.one(
        "rs2p_store_commits_total",
        "counter",
        "Transactions committed by the durable store.",
        st.store_commits,
    );
    let mut cumulative = 0;
    let buckets: Vec<(String, u64)> = st
        .store_commit_buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            cumulative += n;
            (format!("{}", (250u64 << i) as f64 / 1e6), cumulative)
        })
        .collect();
    o.histogram(
        "rs2p_store_commit_seconds",
        "Durations of the store's commits.",
        &buckets,
        st.store_commit_micros as f64 / 1e6,
        st.store_commits,
    );

    let (counts, sum, count) = *s.api.propagation.lock().unwrap_or_else(|e| e.into_inner());
    let buckets: Vec<(String, u64)> = PROPAGATION_BUCKETS
        .iter()
        .zip(counts)
        .map(|(b, n)| (format!("{b}"), n))
        .collect();
    o.histogram(
        "rs2p_write_propagation_seconds",
        "Age of other nodes' writes when they arrive here (from the write's timestamp, whole seconds).",
        &buckets,
        sum,
        count,
    );

    o.family(
        "rs2p_api_requests_total",
        "counter",
        "API requests by status code.",
    );
    let requests = s
        .api
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (code, n) in requests {
        o.sample("rs2p_api_requests_total", &[("code", &code.to_string())], n);
    }
    o.one("rs2p_api_watches", "gauge", "Open watches.", s.watches);
    o.one(
        "rs2p_api_watch_events_total",
        "counter",
        "Events sent to watches.",
        s.api.watch_events.load(Ordering::Relaxed),
    );
    o.one(
        "rs2p_api_watch_dropped_total",
        "counter",
        "Watches dropped because their client did not keep up.",
        s.api.watch_dropped.load(Ordering::Relaxed),
    );
    o.one(
        "rs2p_api_feed_lagged_events_total",
        "counter",
        "Changes the API's event feed missed (it fell behind the node).",
        s.api.feed_lagged.load(Ordering::Relaxed),
    );
    if let Some(rss) = rss_bytes() {
        o.one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
    }
    o.0
}
