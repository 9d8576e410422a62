//! `rs2p node --json`: a machine interface over JSON lines.
//!
//! Every line on stdin is one request, a JSON object with an `op` field and
//! an optional `id` of any JSON type, echoed back in the reply. Every
//! request gets exactly one reply line, in request order, with an `ok`
//! field; blank lines are skipped. Event lines (with an `event` field)
//! interleave with replies as things happen. The first line printed is
//! `{"event":"listening","addr":"HOST:PORT","id":"<node id>"}`.
//!
//! Values and keys use the JSON forms of [`crate::values`] (bytes are
//! `{"$bin":"<hex>"}`).
//!
//! | op | fields | reply (besides `"ok":true`) |
//! |----|--------|-----------------------------|
//! | `set` | `key`, `value` | |
//! | `del` | `key` | |
//! | `update` | `items` (object) | |
//! | `apply_delta` | `key`, `delta` | |
//! | `get` | `key` | `found`, `value` (null when not found) |
//! | `pop` | `key` | `found`, `value`; the key is deleted |
//! | `keys` | | `keys` |
//! | `len` | | `len` |
//! | `dump` | | `items`: `[[key, value, {"owner", "timestamp"}], ...]` |
//! | `connect` | `host`, `port` | once the TCP connection is open |
//! | `peers` | | `peers`: `[{"id", "addr" ("HOST:PORT" or null), "outgoing"}]` |
//! | `id` | | `id`, `addr`, `subnet`, `protocol_id` |
//! | `broadcast` | `packets` (array) | |
//! | `recv` | | `messages`: `[{"sender", "time", "packets"}]` (drains the queue) |
//! | `wait` | `key`, `value`?, `absent`?, `timeout_ms`? (10000) | `elapsed_ms` |
//! | `close` | | then the process exits 0 (EOF on stdin does the same) |
//!
//! The `id` op's reply holds the node id in `id`; a request id given with
//! that op is echoed as `request_id` instead.
//!
//! `wait` returns once `key` holds `value` (any value when `value` is
//! missing or null; an integer matches an integral float), or once it is
//! absent with `"absent":true`; after `timeout_ms` it fails with kind
//! `timeout`. Requests run strictly in order: a `wait` delays the requests
//! after it, while events keep being printed.
//!
//! Failures are `{"ok":false,"error":{"kind":K,"message":M}}`. `K` is the
//! snake_case name of the library's error variant (`lease_held`,
//! `not_a_mapping`, `key_not_found`, `closed`, `io`, `config`,
//! `unknown_peer`, `value`, `store`), or `bad_request` for a line that is
//! not JSON, not an object, has an unknown op or a missing or invalid
//! field, or holds an integer beyond 64 bits (which JSON readers turn into
//! a float), or `timeout` for a `wait`. A `lease_held` error also has
//! `owner` (the whole node id) and `expires_at` (unix seconds), and, on a
//! node without `--data-dir`, a `hint`. `not_a_mapping` comes both for a
//! key that holds something else than a map and for a delta that is not a
//! JSON object; the message says which.
//!
//! Events: `{"event":"update","key","value","owner","timestamp"}`,
//! `{"event":"delete","key"}`, `{"event":"peer_joined","id","addr"}`,
//! `{"event":"peer_left","id"}`.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rs2p::{Error, MeshEvent, SyncEvent, Value};
use serde_json::{json, Map, Value as Json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::node::{Node, Signals};
use crate::values::{
    check_integers, json_kind, json_to_key, json_to_value, key_to_json, value_to_json,
};

/// Lines waiting for the stdout writer.
const OUT_QUEUE: usize = 1024;
/// Lines read ahead from stdin.
const IN_QUEUE: usize = 64;
/// `wait`'s default timeout.
const DEFAULT_WAIT_MS: u64 = 10_000;
/// Most ready events printed between a request's completion and its reply.
const MAX_EVENTS_BEFORE_REPLY: usize = 1024;
/// How often `wait` re-checks even without an event.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// A failed request: the error kind, a message, and fields that say more
/// (a lease's `owner` and `expires_at`).
#[derive(Debug)]
pub struct ReqError {
    kind: &'static str,
    message: String,
    extra: Fields,
}

impl ReqError {
    fn bad(message: impl Into<String>) -> ReqError {
        ReqError {
            kind: "bad_request",
            message: message.into(),
            extra: Fields::new(),
        }
    }
}

impl From<Error> for ReqError {
    fn from(e: Error) -> ReqError {
        let mut extra = Fields::new();
        let message = match &e {
            Error::LeaseHeld {
                owner, expires_at, ..
            } => {
                extra.insert("owner".into(), json!(owner));
                extra.insert("expires_at".into(), json!(expires_at));
                let left = crate::human::duration(expires_at - crate::human::unix_now());
                format!("{e}, for {left} more")
            }
            Error::NotAMapping { key, found } => crate::human::not_a_map(key, found),
            _ => e.to_string(),
        };
        ReqError {
            kind: e.kind(),
            message,
            extra,
        }
    }
}

type Fields = Map<String, Json>;

/// A request's fields, with typed accessors that fail as `bad_request`.
struct Req<'a> {
    op: &'a str,
    fields: &'a Fields,
}

impl Req<'_> {
    fn field(&self, name: &str) -> Result<&Json, ReqError> {
        self.fields
            .get(name)
            .ok_or_else(|| ReqError::bad(format!("`{}` needs the field \"{name}\"", self.op)))
    }

    fn key(&self) -> Result<Vec<u8>, ReqError> {
        json_to_key(self.field("key")?).map_err(|e| ReqError::bad(format!("\"key\": {e}")))
    }

    fn value(&self, name: &str) -> Result<Value, ReqError> {
        json_to_value(self.field(name)?).map_err(|e| ReqError::bad(format!("\"{name}\": {e}")))
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, ReqError> {
        match self.fields.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ReqError::bad(format!(
                "\"{name}\" must be a boolean, not {}",
                json_kind(other)
            ))),
        }
    }

    fn opt_u64(&self, name: &str) -> Result<Option<u64>, ReqError> {
        match self.fields.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(j) => j
                .as_u64()
                .map(Some)
                .ok_or_else(|| ReqError::bad(format!("\"{name}\" must be a non-negative integer"))),
        }
    }
}

/// Runs the JSON interface until `close`, EOF on stdin, or a signal.
///
/// One task reads requests and events and queues their lines in order:
/// the events a request causes locally are printed before its reply, and
/// events keep flowing while a request (a `wait`) is pending.
pub async fn run(node: Node) -> ExitCode {
    let (out_tx, out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    let writer = std::thread::spawn(move || write_lines(out_rx));
    let (in_tx, mut in_rx) = mpsc::channel(IN_QUEUE);
    // Never joined: it may stay blocked on stdin until the process exits.
    std::thread::spawn(move || read_lines(in_tx));

    // Subscribe before announcing, so that no event is missed.
    let mut events = Events {
        sync: node.sync.events(),
        mesh: node.sync.mesh().events(),
    };
    let mut signals = Signals::install();
    if let Err(e) = node.dial().await {
        eprintln!("rs2p: {e}");
        return ExitCode::FAILURE;
    }
    let out = Out(out_tx);
    let hello = json!({"event": "listening", "addr": node.addr(), "id": node.id()});
    let mut ok = out.send(&hello).await;

    let signal = signals.recv();
    tokio::pin!(signal);
    'requests: while ok {
        let line = tokio::select! {
            line = in_rx.recv() => line,
            ev = events.next() => {
                ok = out.send(&ev).await;
                continue;
            }
            _ = &mut signal => break,
        };
        let line = match line {
            None => break, // EOF
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                ok = out.send(&error_reply(None, &ReqError::bad(e))).await;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let handling = handle_line(&node, &line);
        tokio::pin!(handling);
        let (reply, close) = loop {
            tokio::select! {
                r = &mut handling => break r,
                ev = events.next() => {
                    if !out.send(&ev).await {
                        break 'requests;
                    }
                }
                _ = &mut signal => break 'requests,
            }
        };
        // Events the request caused (a local write's update) come first;
        // bounded, so that a flood of remote events cannot hold the reply.
        for _ in 0..MAX_EVENTS_BEFORE_REPLY {
            let Some(ev) = events.ready().await else {
                break;
            };
            if !out.send(&ev).await {
                break 'requests;
            }
        }
        ok = out.send(&reply).await;
        if close {
            break;
        }
    }

    node.sync.close().await;
    drop(events);
    drop(out);
    // Every line queued so far gets written before the process exits.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    ExitCode::SUCCESS
}

/// The sender to the stdout writer.
struct Out(mpsc::Sender<String>);

impl Out {
    /// Queues one line; `false` once stdout is gone.
    async fn send(&self, line: &Json) -> bool {
        self.0.send(line.to_string()).await.is_ok()
    }
}

/// The node's dictionary and mesh events, as JSON lines.
struct Events {
    sync: rs2p::SyncEventStream,
    mesh: rs2p::EventStream,
}

impl Events {
    /// The next event worth printing (pending forever once both streams
    /// have ended).
    async fn next(&mut self) -> Json {
        loop {
            let line = tokio::select! {
                Some(ev) = self.sync.next() => sync_event_json(ev),
                Some(ev) = self.mesh.next() => mesh_event_json(ev),
                else => std::future::pending().await,
            };
            if let Some(line) = line {
                return line;
            }
        }
    }

    /// An event that is ready now, if any.
    async fn ready(&mut self) -> Option<Json> {
        tokio::select! {
            biased;
            line = self.next() => Some(line),
            () = std::future::ready(()) => None,
        }
    }
}

fn sync_event_json(ev: SyncEvent) -> Option<Json> {
    Some(match ev {
        SyncEvent::Update { key, value, meta } => json!({
            "event": "update",
            "key": key_to_json(&key),
            "value": value_to_json(&value),
            "owner": String::from_utf8_lossy(&meta.owner),
            "timestamp": meta.timestamp,
        }),
        SyncEvent::Delete { key } => json!({"event": "delete", "key": key_to_json(&key)}),
        _ => return None,
    })
}

fn mesh_event_json(ev: MeshEvent) -> Option<Json> {
    Some(match ev {
        MeshEvent::PeerJoined { id, addr } => json!({
            "event": "peer_joined",
            "id": id,
            "addr": addr_json(addr.as_ref()),
        }),
        MeshEvent::PeerLeft { id } => json!({"event": "peer_left", "id": id}),
        MeshEvent::PeerRefused { dialed, id, reason } => json!({
            "event": "peer_refused",
            "id": id,
            "dialed": addr_json(dialed.as_ref()),
            "reason": reason,
        }),
        _ => return None,
    })
}

/// Owns stdout: one whole line per message, flushed. Ends when every
/// sender is gone or stdout fails.
fn write_lines(mut rx: mpsc::Receiver<String>) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(line) = rx.blocking_recv() {
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}

/// Reads stdin line by line; a line that is not UTF-8 is sent as an error.
/// Ends at EOF, on a read error, or when the receiver is gone.
fn read_lines(tx: mpsc::Sender<Result<String, String>>) {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("cannot read stdin: {e}");
                break;
            }
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let line = String::from_utf8(std::mem::take(&mut buf))
            .map_err(|e| format!("line is not UTF-8: {e}"));
        if tx.blocking_send(line).is_err() {
            break;
        }
    }
}

fn addr_json(addr: Option<&(String, u16)>) -> Json {
    match addr {
        Some((host, port)) if host.contains(':') => json!(format!("[{host}]:{port}")),
        Some((host, port)) => json!(format!("{host}:{port}")),
        None => Json::Null,
    }
}

fn error_reply(id: Option<&Json>, e: &ReqError) -> Json {
    let mut reply = Fields::new();
    if let Some(id) = id {
        reply.insert("id".into(), id.clone());
    }
    reply.insert("ok".into(), Json::Bool(false));
    let mut error = Fields::new();
    error.insert("kind".into(), json!(e.kind));
    error.insert("message".into(), json!(e.message));
    error.extend(e.extra.clone());
    reply.insert("error".into(), Json::Object(error));
    Json::Object(reply)
}

/// Answers one line; `true` when the node is to close.
async fn handle_line(node: &Node, line: &str) -> (Json, bool) {
    if let Err(e) = check_integers(line) {
        return (error_reply(None, &ReqError::bad(e)), false);
    }
    let parsed: Json = match serde_json::from_str(line) {
        Ok(j) => j,
        Err(e) => {
            return (
                error_reply(None, &ReqError::bad(format!("line is not JSON: {e}"))),
                false,
            )
        }
    };
    let Json::Object(fields) = parsed else {
        let e = ReqError::bad(format!(
            "a request must be a JSON object, not {}",
            json_kind(&parsed)
        ));
        return (error_reply(None, &e), false);
    };
    let request_id = fields.get("id");
    let op = match fields.get("op") {
        Some(Json::String(op)) => op.as_str(),
        Some(other) => {
            let e = ReqError::bad(format!("\"op\" must be a string, not {}", json_kind(other)));
            return (error_reply(request_id, &e), false);
        }
        None => {
            let e = ReqError::bad("a request needs an \"op\" field");
            return (error_reply(request_id, &e), false);
        }
    };
    let req = Req {
        op,
        fields: &fields,
    };
    match handle(node, &req).await {
        Ok(extra) => {
            let mut reply = Fields::new();
            if let Some(id) = request_id {
                let echo = if extra.contains_key("id") {
                    "request_id"
                } else {
                    "id"
                };
                reply.insert(echo.into(), id.clone());
            }
            reply.insert("ok".into(), Json::Bool(true));
            reply.extend(extra);
            (Json::Object(reply), op == "close")
        }
        Err(mut e) => {
            if e.kind == "lease_held" && !node.context().durable {
                e.extra.insert(
                    "hint".into(),
                    json!(
                        "if the owner was this node before a restart: a node keeps its id \
                         (and its leases) across restarts only with --data-dir"
                    ),
                );
            }
            (error_reply(request_id, &e), false)
        }
    }
}

/// Runs one request; the reply's fields besides `ok` and `id`.
async fn handle(node: &Node, req: &Req<'_>) -> Result<Fields, ReqError> {
    let sync = &node.sync;
    let mut r = Fields::new();
    match req.op {
        "set" => {
            let key = req.key()?;
            let value = req.value("value")?;
            sync.set(key, value).await?;
        }
        "del" => sync.del(req.key()?).await?,
        "update" => {
            let Json::Object(items) = req.field("items")? else {
                return Err(ReqError::bad("\"items\" must be an object"));
            };
            let pairs = items
                .iter()
                .map(|(k, v)| {
                    json_to_value(v)
                        .map(|v| (k.as_bytes().to_vec(), v))
                        .map_err(|e| ReqError::bad(format!("\"items\".\"{k}\": {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            sync.update(pairs).await?;
        }
        "apply_delta" => {
            let key = req.key()?;
            let delta = req.value("delta")?;
            if !matches!(delta, Value::Map(_)) {
                // The library says the same with found = the delta's kind,
                // which reads as if the key held it.
                return Err(ReqError {
                    kind: "not_a_mapping",
                    message: format!(
                        "the delta for key {} is {}, not a map: apply_delta merges a JSON \
                         object into the map at the key",
                        key_to_json(&key),
                        json_kind(req.field("delta")?)
                    ),
                    extra: Fields::new(),
                });
            }
            sync.apply_delta(key, delta).await?;
        }
        "get" => found(&mut r, sync.get(req.key()?)),
        "pop" => {
            let v = sync.pop(req.key()?).await?;
            found(&mut r, v);
        }
        "keys" => {
            let keys: Vec<Json> = sync.keys().map(|k| key_to_json(&k)).collect();
            r.insert("keys".into(), Json::Array(keys));
        }
        "len" => {
            r.insert("len".into(), json!(sync.len()));
        }
        "dump" => {
            let items: Vec<Json> = sync
                .entries()
                .into_iter()
                .map(|(k, v, meta)| {
                    json!([
                        key_to_json(&k),
                        value_to_json(&v),
                        {"owner": String::from_utf8_lossy(&meta.owner), "timestamp": meta.timestamp},
                    ])
                })
                .collect();
            r.insert("items".into(), Json::Array(items));
        }
        "connect" => {
            let host = match req.field("host")? {
                Json::String(h) if !h.is_empty() => h.clone(),
                _ => return Err(ReqError::bad("\"host\" must be a non-empty string")),
            };
            let port = req
                .field("port")?
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| ReqError::bad("\"port\" must be an integer from 0 to 65535"))?;
            sync.connect(&host, port).await?;
        }
        "peers" => {
            let peers: Vec<Json> = sync
                .mesh()
                .peers()
                .await?
                .into_iter()
                .map(|p| {
                    json!({
                        "id": p.id,
                        "addr": addr_json(p.addr.as_ref()),
                        "outgoing": p.outgoing,
                    })
                })
                .collect();
            r.insert("peers".into(), Json::Array(peers));
        }
        "id" => {
            r.insert("id".into(), json!(node.id()));
            r.insert("addr".into(), json!(node.addr()));
            r.insert("subnet".into(), json!(node.subnet));
            r.insert("protocol_id".into(), json!(sync.mesh().protocol_id()));
        }
        "broadcast" => {
            let Value::Array(packets) = req.value("packets")? else {
                return Err(ReqError::bad("\"packets\" must be an array"));
            };
            sync.mesh().send(packets).await?;
        }
        "recv" => {
            let messages: Vec<Json> = sync
                .mesh()
                .drain()
                .into_iter()
                .map(|m| {
                    json!({
                        "sender": m.sender(),
                        "time": m.time(),
                        "packets": m.packets().iter().map(value_to_json).collect::<Vec<_>>(),
                    })
                })
                .collect();
            r.insert("messages".into(), Json::Array(messages));
        }
        "wait" => {
            let elapsed = wait(node, req).await?;
            r.insert("elapsed_ms".into(), json!(elapsed));
        }
        "close" => {}
        other => {
            return Err(ReqError::bad(format!(
                "unknown op \"{other}\" (expected one of set, del, update, apply_delta, get, \
                 pop, keys, len, dump, connect, peers, id, broadcast, recv, wait, close)"
            )))
        }
    }
    Ok(r)
}

fn found(r: &mut Fields, v: Option<Value>) {
    r.insert("found".into(), Json::Bool(v.is_some()));
    r.insert("value".into(), v.as_ref().map_or(Json::Null, value_to_json));
}

/// `wait`: the milliseconds it took for the key to reach the state asked.
async fn wait(node: &Node, req: &Req<'_>) -> Result<u128, ReqError> {
    let key = req.key()?;
    let want = match req.fields.get("value") {
        None | Some(Json::Null) => None,
        Some(_) => Some(req.value("value")?),
    };
    let absent = req.opt_bool("absent")?.unwrap_or(false);
    if absent && want.is_some() {
        return Err(ReqError::bad(
            "\"absent\":true and \"value\" cannot be asked together",
        ));
    }
    let timeout_ms = req.opt_u64("timeout_ms")?.unwrap_or(DEFAULT_WAIT_MS);
    // Subscribe before the first check, so that no change slips between.
    let mut events = node.sync.events();
    let start = Instant::now();
    // A timeout too large for the clock means no deadline at all.
    let deadline = start.checked_add(Duration::from_millis(timeout_ms));
    loop {
        let current = node.sync.get(&key);
        let done = match (&current, &want) {
            _ if absent => current.is_none(),
            (Some(_), None) => true,
            (Some(have), Some(want)) => crate::values::values_match(have, want),
            (None, _) => false,
        };
        if done {
            return Ok(start.elapsed().as_millis());
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            let what = match (&want, absent) {
                (_, true) => "to be absent".to_string(),
                (Some(v), _) => format!("to hold {}", value_to_json(v)),
                (None, _) => "to be set".to_string(),
            };
            return Err(ReqError {
                extra: Fields::new(),
                kind: "timeout",
                message: format!(
                    "waited {timeout_ms} ms for key {} {what}",
                    key_to_json(&key)
                ),
            });
        }
        let next = now + WAIT_POLL;
        let next = deadline.map_or(next, |d| d.min(next));
        tokio::select! {
            ev = events.next() => {
                if ev.is_none() {
                    // The node is closing: no more events, keep polling.
                    tokio::time::sleep_until(next.into()).await;
                }
            }
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}
