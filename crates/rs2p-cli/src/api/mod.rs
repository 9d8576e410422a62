//! The node's HTTP API (`rs2p node --api HOST:PORT`), described in
//! `docs/openapi.json`.
//!
//! JSON bodies use the value conventions of [`crate::values`] (bytes are
//! `{"$bin":"<hex>"}`). Keys are path segments, percent-decoded to bytes
//! (`/v1/kv/a%2Fb` is the key `a/b`, `%FF` the byte 0xff).
//!
//! | route | what |
//! |-------|------|
//! | `GET /health` | `{"status":"ok"}`, 503 when the node is closed or its store failed |
//! | `GET /metrics` | Prometheus text format (see [`crate::metrics`]) |
//! | `GET /v1/status` | id, subnet, transport, addresses, uptime, keys, tombstones, store |
//! | `GET /v1/peers` | the handshaken peers |
//! | `POST /v1/peers` | `{"host","port"}`: connect |
//! | `GET /v1/kv?prefix=&pattern=` | entries with owner, timestamp, lease expiry |
//! | `POST /v1/kv` | write many: `{"k": v, ...}` or `[{"key","value"}, ...]` |
//! | `GET`/`PUT`/`DELETE /v1/kv/{key}` | one key; PUT's body is the value |
//! | `POST /v1/kv/{key}/delta` | merge a JSON object into the map at the key |
//! | `GET /v1/watch?prefix=` | Server-Sent Events `update`, `delete`, `reset`, `lagged` |
//!
//! Errors are `{"error":{"kind":K,"message":M}}` with the kinds of the
//! `--json` interface; a lease refusal (409) adds `owner`, `expires_at` and
//! `expires_in`.
//!
//! Bounds: request bodies (`--api-max-body`), open watches
//! (`--api-max-watches`), connections ([`MAX_CONNECTIONS`]), the time to
//! send a request's head ([`HEADER_TIMEOUT`]). A watch whose client does
//! not keep up (more than `--api-watch-queue` events waiting for it) is
//! dropped: its connection is closed.
//!
//! Bound to an address other than loopback, the API needs a token
//! (`--api-token-file`); with a token, every request needs
//! `Authorization: Bearer <token>`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http_body_util::BodyExt;
use rs2p::{Error, SyncEvent, SyncSocket, Value};
use serde_json::{json, Value as Json};
use tokio::sync::{broadcast, mpsc, Notify, Semaphore};
use tokio_stream::StreamExt;

use crate::metrics::ApiMetrics;

mod decode;
mod watch;

use crate::values::{json_kind, json_to_key, json_to_value, key_to_json, value_to_json};
pub use decode::{glob_match, percent_encode};
use decode::{param, path_key, query, read_json};
use watch::{watch, Feed};

/// The API's address when `--api` is not given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:4480";
/// Connections served at once (more wait to be accepted).
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle watch gets a comment line (so that dead clients are
/// noticed and proxies keep the stream open).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a watch's replay of past events may wait for its client.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of events kept for resuming watches (besides
/// `--api-watch-history`'s count); the newest event is always kept.
const HISTORY_BYTES: usize = 64 << 20;

/// The value of `--api`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiAddr {
    /// Serve on this address.
    On(SocketAddr),
    /// No API.
    Off,
}

impl std::str::FromStr for ApiAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ApiAddr, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(ApiAddr::Off);
        }
        s.parse()
            .map(ApiAddr::On)
            .map_err(|_| format!("`{s}` is neither IP:PORT nor `off`"))
    }
}

/// The API's limits (options of `rs2p node`).
#[derive(Clone, Debug, clap::Args)]
pub struct ApiLimits {
    /// Largest request body the API reads, in bytes (larger: 413).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub api_max_body: usize,
    /// Most watches (`GET /v1/watch`) open at once (more: 503).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub api_max_watches: usize,
    /// Events that may wait for one watch's client; a client further
    /// behind is dropped.
    #[arg(long, value_name = "EVENTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub api_watch_queue: u32,
    /// Recent events kept so that a watch can resume (`Last-Event-ID`).
    #[arg(long, value_name = "EVENTS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub api_watch_history: u32,
}

/// What the API says about the node, fixed at start.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The full subnet (`sync1`).
    pub subnet: String,
    /// The transport's name (`plaintext`, `ssl`, `ws`).
    pub transport: &'static str,
    /// The data dir, with `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// When the node started.
    pub started: Instant,
}

/// A running API server; it stops when this is dropped.
pub struct Api {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Api {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the API could not start.
#[derive(Debug)]
pub enum StartError {
    /// The address could not be bound.
    Bind(std::io::Error),
    /// Any other reason (a missing token, an unreadable token file).
    Config(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(e) => write!(f, "{e}"),
            StartError::Config(s) => f.write_str(s),
        }
    }
}

/// Reads a token file: its first line, trimmed; it must not be empty.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token)
}

/// Starts the API on `addr` for `sync`. Refuses an address other than
/// loopback without a token.
pub async fn start(
    addr: SocketAddr,
    token: Option<String>,
    limits: ApiLimits,
    sync: SyncSocket,
    info: NodeInfo,
) -> Result<Api, StartError> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(StartError::Config(format!(
            "the API on {addr} would be reachable from other hosts: give it a token \
             with --api-token-file FILE, or bind it to loopback (--api 127.0.0.1:PORT)"
        )));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(StartError::Bind)?;
    let addr = listener.local_addr().map_err(StartError::Bind)?;
    let metrics = Arc::new(ApiMetrics::default());
    let feed = Feed::start(&sync, &limits, metrics.clone());
    let state = Arc::new(ApiState {
        sync,
        info,
        api_addr: addr,
        token,
        limits,
        feed,
        metrics,
        watches: Arc::new(AtomicUsize::new(0)),
    });
    let router = router(state);
    let task = tokio::spawn(serve(listener, router));
    Ok(Api { addr, task })
}

/// Starts the API as `rs2p node`'s options say (`None` with `--api off`,
/// or when the default address is taken: that is said on stderr). The
/// bound address is printed on stderr.
pub async fn from_args(
    args: &crate::args::NodeArgs,
    sync: &SyncSocket,
    subnet: &str,
) -> Result<Option<Api>, String> {
    let (addr, explicit) = match args.api {
        Some(ApiAddr::Off) => return Ok(None),
        Some(ApiAddr::On(a)) => (a, true),
        None => (DEFAULT_ADDR.parse().expect("a valid default"), false),
    };
    let token = match &args.api_token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let info = NodeInfo {
        subnet: subnet.to_string(),
        transport: match args.transport {
            crate::args::TransportArg::Plaintext => "plaintext",
            crate::args::TransportArg::Ssl => "ssl",
            crate::args::TransportArg::Ws => "ws",
        },
        data_dir: args.data_dir.clone(),
        started: Instant::now(),
    };
    match start(addr, token, args.api_limits.clone(), sync.clone(), info).await {
        Ok(api) => {
            eprintln!("rs2p: API on http://{}", api.local_addr());
            Ok(Some(api))
        }
        Err(StartError::Bind(e)) if !explicit => {
            eprintln!(
                "rs2p: warning: the API's default address {addr} is not available ({e}): \
                 running without the API (choose one with --api IP:PORT, or --api off)"
            );
            Ok(None)
        }
        Err(StartError::Bind(e)) => Err(format!("cannot serve the API on {addr}: {e}")),
        Err(StartError::Config(e)) => Err(e),
    }
}

// ---------------------------------------------------------------- serving

/// The connection a request came on, so that a watch can close it.
#[derive(Clone)]
struct ConnCtx(Arc<ConnKill>);

#[derive(Default)]
struct ConnKill {
    killed: AtomicBool,
    notify: Notify,
}

impl ConnCtx {
    fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        self.0.notify.notify_one();
    }

    async fn killed(&self) {
        while !self.0.killed.load(Ordering::SeqCst) {
            self.0.notify.notified().await;
        }
    }
}

/// Accepts connections (at most [`MAX_CONNECTIONS`] at once) and serves
/// HTTP/1.1 on each.
async fn serve(listener: tokio::net::TcpListener, router: Router) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little.
                tracing::warn!("API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ConnCtx(Arc::default());
        let router = router.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc_ctx = ctx.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(Body::new);
                    req.extensions_mut().insert(svc_ctx.clone());
                    let mut router = router.clone();
                    async move { tower::Service::call(&mut router, req).await }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!("API connection: {e}");
                    }
                }
                () = ctx.killed() => tracing::debug!("API connection closed: slow watch"),
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

// ------------------------------------------------------------------ state

struct ApiState {
    sync: SyncSocket,
    info: NodeInfo,
    api_addr: SocketAddr,
    token: Option<String>,
    limits: ApiLimits,
    feed: Arc<Feed>,
    metrics: Arc<ApiMetrics>,
    watches: Arc<AtomicUsize>,
}

type St = State<Arc<ApiState>>;

fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers).post(connect))
        .route("/v1/kv", get(list).post(update))
        .route("/v1/kv/{key}", get(get_key).put(put_key).delete(del_key))
        .route("/v1/kv/{key}/delta", axum::routing::post(delta))
        .route("/v1/watch", get(watch))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Every request: the token check, then the count by status code.
async fn guard(State(st): St, req: Request, next: Next) -> Response {
    let resp = if let Some(token) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            next.run(req).await
        } else {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API needs `Authorization: Bearer <token>`",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rs2p\""),
            );
            r
        }
    } else {
        next.run(req).await
    };
    st.metrics.request(resp.status().as_u16());
    resp
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ----------------------------------------------------------------- errors

/// A failed request: status, kind, message, and extra fields.
struct ApiError {
    status: StatusCode,
    body: serde_json::Map<String, Json>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
        let mut body = serde_json::Map::new();
        body.insert("kind".into(), Json::from(kind));
        body.insert("message".into(), Json::from(message.into()));
        ApiError { status, body }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::LeaseHeld { .. } | Error::NotAMapping { .. } => StatusCode::CONFLICT,
            Error::KeyNotFound(_) | Error::UnknownPeer(_) => StatusCode::NOT_FOUND,
            Error::Value(_) | Error::ValueTooDeep { .. } | Error::Config(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Io(_) => StatusCode::BAD_GATEWAY,
            Error::Closed | Error::ConnectionLimit { .. } | Error::Store(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::FeatureDisabled(_) => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut err = ApiError::new(status, e.kind(), e.to_string());
        if let Error::LeaseHeld {
            owner, expires_at, ..
        } = &e
        {
            let left = expires_at.saturating_sub(unix_now()).max(0);
            err.body.insert("owner".into(), Json::from(owner.as_str()));
            err.body
                .insert("expires_at".into(), Json::from(*expires_at));
            err.body.insert("expires_in".into(), Json::from(left));
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_response(self.status, &json!({ "error": self.body }));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response(status: StatusCode, body: &Json) -> Response {
    let mut r = (status, format!("{body}\n")).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn ok(body: Json) -> ApiResult {
    Ok(json_response(StatusCode::OK, &body))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ------------------------------------------------------------- handlers

async fn health(State(st): St) -> ApiResult {
    if st.sync.mesh().is_closed() {
        return Err(Error::Closed.into());
    }
    let stats = st.sync.mesh().stats().await?;
    if let Some(e) = stats.store_error {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store",
            format!("store error: {e}"),
        ));
    }
    ok(json!({"status": "ok"}))
}

async fn metrics(State(st): St) -> ApiResult {
    let stats = st.sync.mesh().stats().await?;
    let peers = st.sync.mesh().peers().await?;
    let text = crate::metrics::render(&crate::metrics::Snapshot {
        stats: &stats,
        peers: &peers,
        keys: st.sync.len(),
        id: st.sync.id(),
        subnet: &st.info.subnet,
        transport: st.info.transport,
        uptime: st.info.started.elapsed(),
        has_store: st.info.data_dir.is_some(),
        api: &st.metrics,
        watches: st.watches.load(Ordering::Relaxed),
    });
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

fn host_port(host: &str, port: u16) -> String {
    crate::args::HostPort {
        host: host.to_string(),
        port,
    }
    .to_string()
}

async fn status(State(st): St) -> ApiResult {
    let mesh = st.sync.mesh();
    let stats = mesh.stats().await?;
    let (out_host, out_port) = mesh.out_addr();
    let store = match (&st.info.data_dir, &stats.store_error) {
        (None, _) => json!({"state": "memory", "data_dir": null, "commits": 0, "error": null}),
        (Some(dir), err) => json!({
            "state": if err.is_some() { "failed" } else { "ok" },
            "data_dir": dir.display().to_string(),
            "commits": stats.store_commits,
            "error": err,
        }),
    };
    ok(json!({
        "id": st.sync.id(),
        "version": env!("CARGO_PKG_VERSION"),
        "subnet": st.info.subnet,
        "protocol_id": mesh.protocol_id(),
        "transport": st.info.transport,
        "leasing": st.sync.leasing(),
        "listen": mesh.local_addr().to_string(),
        "advertised": [host_port(out_host, out_port)],
        "api": st.api_addr.to_string(),
        "uptime_seconds": st.info.started.elapsed().as_secs_f64(),
        "keys": st.sync.len(),
        "tombstones": stats.tombstones,
        "peers": stats.peers,
        "connections": stats.connections,
        "store": store,
    }))
}

/// The name of a peer kind in the API and the metrics.
pub fn kind_name(kind: rs2p::PeerKind) -> &'static str {
    match kind {
        rs2p::PeerKind::Py => "py2p",
        rs2p::PeerKind::Rs => "rs2p",
        rs2p::PeerKind::Js => "js2p",
        _ => "unknown",
    }
}

async fn peers(State(st): St) -> ApiResult {
    let peers = st.sync.mesh().peers().await?;
    let list: Vec<Json> = peers
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "addr": p.addr.as_ref().map(|(h, port)| host_port(h, *port)),
                "outgoing": p.outgoing,
                "kind": kind_name(p.kind),
            })
        })
        .collect();
    ok(json!({ "peers": list }))
}

async fn connect(State(st): St, headers: HeaderMap, body: Body) -> ApiResult {
    let j = read_json(&st, &headers, body).await?;
    let host = j
        .get("host")
        .and_then(Json::as_str)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ApiError::bad("the body needs \"host\" (a non-empty string)"))?;
    let port = j
        .get("port")
        .and_then(Json::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| ApiError::bad("the body needs \"port\" (1-65535)"))?;
    st.sync.connect(host, port).await?;
    ok(json!({"ok": true, "connected": host_port(host, port)}))
}

/// One entry as the API shows it.
fn entry_json(st: &ApiState, key: &[u8], value: &Value, meta: &rs2p::Meta) -> Json {
    let lease = st
        .sync
        .leasing()
        .then(|| meta.timestamp.saturating_add(rs2p::proto::sync::LEASE_SECS));
    json!({
        "key": key_to_json(key),
        "value": value_to_json(value),
        "owner": String::from_utf8_lossy(&meta.owner),
        "timestamp": meta.timestamp,
        "lease_expires": lease,
    })
}

async fn list(State(st): St, uri: Uri) -> ApiResult {
    let params = query(&uri, &["prefix", "pattern"])?;
    let prefix = param(&params, "prefix").unwrap_or(b"");
    let pattern = param(&params, "pattern");
    let mut entries = st.sync.entries();
    entries.retain(|(k, _, _)| k.starts_with(prefix) && pattern.is_none_or(|p| glob_match(p, k)));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let list: Vec<Json> = entries
        .iter()
        .map(|(k, v, m)| entry_json(&st, k, v, m))
        .collect();
    ok(json!({ "entries": list }))
}

async fn get_key(State(st): St, uri: Uri) -> ApiResult {
    let key = path_key(&uri)?;
    // Value and metadata from one snapshot of the entry.
    let found = st
        .sync
        .get(&key)
        .and_then(|v| st.sync.metadata(&key).map(|m| (v, m)));
    match found {
        Some((v, m)) => ok(entry_json(&st, &key, &v, &m)),
        None => Err(Error::KeyNotFound(String::from_utf8_lossy(&key).into_owned()).into()),
    }
}

async fn put_key(State(st): St, uri: Uri, headers: HeaderMap, body: Body) -> ApiResult {
    let key = path_key(&uri)?;
    let j = read_json(&st, &headers, body).await?;
    let value = json_to_value(&j).map_err(ApiError::bad)?;
    if value == Value::Nil {
        return Err(ApiError::bad(
            "null deletes in the protocol: use DELETE to delete a key",
        ));
    }
    st.sync.set(&key, value).await?;
    ok(json!({"ok": true}))
}

async fn del_key(State(st): St, uri: Uri) -> ApiResult {
    let key = path_key(&uri)?;
    st.sync.del(&key).await?;
    ok(json!({"ok": true}))
}

async fn delta(State(st): St, uri: Uri, headers: HeaderMap, body: Body) -> ApiResult {
    let key = path_key(&uri)?;
    let j = read_json(&st, &headers, body).await?;
    if !j.is_object()
        || j.as_object()
            .is_some_and(|o| o.len() == 1 && o.contains_key("$bin"))
    {
        return Err(ApiError::bad(format!(
            "a delta is a JSON object, not {}",
            json_kind(&j)
        )));
    }
    let value = json_to_value(&j).map_err(ApiError::bad)?;
    st.sync.apply_delta(&key, value).await?;
    ok(json!({"ok": true}))
}

async fn update(State(st): St, headers: HeaderMap, body: Body) -> ApiResult {
    let j = read_json(&st, &headers, body).await?;
    let mut items: Vec<(Vec<u8>, Value)> = Vec::new();
    match &j {
        Json::Object(obj) => {
            for (k, v) in obj {
                let value = json_to_value(v).map_err(|e| ApiError::bad(format!("{k}: {e}")))?;
                items.push((k.as_bytes().to_vec(), value));
            }
        }
        Json::Array(arr) => {
            for (i, item) in arr.iter().enumerate() {
                let (Some(k), Some(v)) = (item.get("key"), item.get("value")) else {
                    return Err(ApiError::bad(format!(
                        "item {i}: each item is {{\"key\":K,\"value\":V}}"
                    )));
                };
                let key = json_to_key(k).map_err(|e| ApiError::bad(format!("item {i}: {e}")))?;
                let value =
                    json_to_value(v).map_err(|e| ApiError::bad(format!("item {i}: {e}")))?;
                items.push((key, value));
            }
        }
        other => {
            return Err(ApiError::bad(format!(
                "the body is an object of keys and values or an array of \
                 {{\"key\",\"value\"}}, not {}",
                json_kind(other)
            )))
        }
    }
    if let Some((k, _)) = items.iter().find(|(_, v)| *v == Value::Nil) {
        return Err(ApiError::bad(format!(
            "{}: null deletes in the protocol: use DELETE",
            String::from_utf8_lossy(k)
        )));
    }
    let total = items.len();
    for (written, (k, v)) in items.into_iter().enumerate() {
        if let Err(e) = st.sync.set(&k, v).await {
            let mut err = ApiError::from(e);
            err.body.insert("written".into(), Json::from(written));
            return Err(err);
        }
    }
    ok(json!({"ok": true, "written": total}))
}

#[cfg(test)]
mod tests {
    use super::decode::percent_decode;
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"a*", b"abc"));
        assert!(glob_match(b"*c", b"abc"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b", b"abc"));
        assert!(!glob_match(b"abc?", b"abc"));
        assert!(glob_match(b"", b""));
        assert!(!glob_match(b"", b"a"));
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%2Fb%ff", false).unwrap(), b"a/b\xff");
        assert_eq!(percent_decode("a+b", true).unwrap(), b"a b");
        assert_eq!(percent_decode("a+b", false).unwrap(), b"a+b");
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("%4", false).is_err());
        assert_eq!(percent_encode("测 /".as_bytes()), "%E6%B5%8B%20%2F");
        let raw = [0u8, 0xff, b'a', b'/'];
        assert_eq!(percent_decode(&percent_encode(&raw), false).unwrap(), raw);
    }

    #[test]
    fn addrs() {
        assert_eq!("off".parse::<ApiAddr>(), Ok(ApiAddr::Off));
        assert_eq!(
            "127.0.0.1:0".parse::<ApiAddr>(),
            Ok(ApiAddr::On("127.0.0.1:0".parse().unwrap()))
        );
        assert!("nope".parse::<ApiAddr>().is_err());
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }
}
