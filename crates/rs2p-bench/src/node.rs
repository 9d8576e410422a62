//! `rs2p bench-node`: one sync node driven by the benchmark harness
//! (`rs2p bench`) through JSON lines. The same line protocol is spoken by
//! `adapters/py2p_adapter.py` and `adapters/js2p_adapter.js` (in this
//! crate), so the harness
//! drives all three implementations identically; docs/benchmarks.md
//! describes it.
//!
//! stdout carries only events, one JSON object per line, each with `ev`
//! (its kind) and `t` (microseconds since the Unix epoch, read when the
//! thing happened inside the node). stdin carries commands (`cmd`), handled
//! in order. Diagnostics go to stderr.
//!
//! Per-update work is kept small: an update costs a lock and a length check
//! unless its key is traced, so the adapter is never the bottleneck.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use rs2p::{MeshEvent, SyncConfig, SyncEvent, SyncSocket, Value};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;

/// Options of `rs2p bench-node`.
#[derive(Debug, Args)]
pub struct BenchNodeArgs {
    /// Address to listen on (and to advertise).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; `ready` says which).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Worker threads of the node's runtime: 0 = as `rs2p node` runs by
    /// default (one), N = N workers. Also read from RS2P_BENCH_THREADS.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Keep the dictionary and the node id in this directory (the restart
    /// scenario: a node stopped with `quit` comes back with both).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Writes one event line and flushes it.
fn emit(ev: &str, t: i64, mut fields: Json) {
    let obj = fields.as_object_mut().expect("event fields are an object");
    let mut line = serde_json::Map::with_capacity(obj.len() + 2);
    line.insert("ev".into(), Json::from(ev));
    line.insert("t".into(), Json::from(t));
    line.append(obj);
    let text = Json::Object(line).to_string();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Writes one `update` line. The line every traced update costs, so it
/// is written directly rather than built as a JSON map (which was a
/// twentieth of a node's CPU time per propagated set in scenario 1).
fn emit_update(t: i64, key: &[u8]) {
    let key = Json::from(String::from_utf8_lossy(key));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, r#"{{"ev":"update","t":{t},"key":{key}}}"#);
    let _ = out.flush();
}

/// What `watch` waits for.
struct Watch {
    target: usize,
    step: usize,
    next: usize,
    /// Look at the dictionary's length again once `State::updates` reaches
    /// this: each update adds at most one key, so the next mark cannot be
    /// reached earlier (keeps the per-update cost to a comparison).
    check_at: u64,
}

#[derive(Default)]
struct State {
    /// `trace` prefix: updates of keys starting with it are reported.
    trace: Option<Vec<u8>>,
    watch: Option<Watch>,
    /// Update events seen since the event task started.
    updates: u64,
    /// True once the event task runs.
    subscribed: bool,
    /// True while the watch fallback task runs.
    fallback: bool,
}

/// The adapter's state (a panic elsewhere while holding it leaves it
/// usable: every field is consistent between statements).
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reports progress of the watch, if any, given `n` keys held at `t`.
fn check_watch(st: &mut State, n: usize, t: i64) {
    let updates = st.updates;
    let Some(w) = st.watch.as_mut() else { return };
    if n >= w.target {
        emit("count", t, json!({ "n": n }));
        st.watch = None;
        return;
    }
    if n >= w.next {
        emit("progress", t, json!({ "n": n }));
        while w.next <= n {
            w.next += w.step;
        }
    }
    w.check_at = updates + (w.next.min(w.target) - n) as u64;
}

/// Starts the task that looks at update events (once; on the first
/// `trace` or `watch`, so that a node nobody watches pays nothing for it).
fn subscribe(sync: &SyncSocket, state: &Arc<Mutex<State>>) {
    {
        let mut st = lock(state);
        if st.subscribed {
            return;
        }
        st.subscribed = true;
    }
    let mut events = sync.events();
    let state = state.clone();
    let sync = sync.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let SyncEvent::Update { key, .. } = ev else {
                continue;
            };
            let mut st = lock(&state);
            st.updates += 1;
            if let Some(p) = &st.trace {
                if key.starts_with(p) {
                    emit_update(now_us(), &key);
                }
            }
            if st.watch.as_ref().is_some_and(|w| st.updates >= w.check_at) {
                let t = now_us();
                let n = sync.len();
                check_watch(&mut st, n, t);
            }
        }
    });
}

/// Reports the peer list whenever it changes: re-read after each peer
/// event of the node (at most every 20 ms) and once a second in case one
/// was missed, so a quiet node costs nothing.
fn spawn_peers_loop(sync: &SyncSocket) {
    let sync = sync.clone();
    tokio::spawn(async move {
        let mut events = sync.mesh().events();
        let mut last: Option<Vec<String>> = None;
        loop {
            let Ok(peers) = sync.mesh().peers().await else {
                return;
            };
            let t = now_us();
            let mut addrs: Vec<String> = peers
                .iter()
                .map(|p| match &p.addr {
                    Some((h, port)) => format!("{h}:{port}"),
                    None => format!("?{}", p.id),
                })
                .collect();
            addrs.sort();
            if last.as_ref() != Some(&addrs) {
                emit("peers", t, json!({ "n": addrs.len(), "peers": addrs }));
                last = Some(addrs);
            }
            let timeout = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(timeout);
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        None => return,
                        Some(MeshEvent::Message(_)) => continue,
                        Some(_) => break,
                    },
                    () = &mut timeout => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// While a watch is active, re-checks it every 100 ms, in case the update
/// event that reached the target was missed.
fn spawn_watch_fallback(sync: &SyncSocket, state: &Arc<Mutex<State>>) {
    {
        let mut st = lock(state);
        if st.fallback {
            return;
        }
        st.fallback = true;
    }
    let sync = sync.clone();
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut st = lock(&state);
            if st.watch.is_none() {
                st.fallback = false;
                return;
            }
            let n = sync.len();
            check_watch(&mut st, n, now_us());
        }
    });
}

fn field_str<'a>(cmd: &'a Json, name: &str) -> Result<&'a str, String> {
    cmd.get(name)
        .and_then(Json::as_str)
        .ok_or_else(|| format!("`{name}` (a string) is required"))
}

fn field_u64(cmd: &Json, name: &str) -> Result<u64, String> {
    cmd.get(name)
        .and_then(Json::as_u64)
        .ok_or_else(|| format!("`{name}` (a non-negative integer) is required"))
}

/// Handles one command; `Ok(true)` means quit.
async fn handle(sync: &SyncSocket, state: &Arc<Mutex<State>>, cmd: &Json) -> Result<bool, String> {
    let name = field_str(cmd, "cmd")?;
    match name {
        "connect" => {
            let host = field_str(cmd, "host")?;
            let port = u16::try_from(field_u64(cmd, "port")?).map_err(|_| "bad port")?;
            let t0 = now_us();
            sync.connect(host, port)
                .await
                .map_err(|e| format!("connect {host}:{port}: {e}"))?;
            emit("ack", now_us(), json!({ "cmd": "connect", "t0": t0 }));
        }
        "trace" => {
            let prefix = field_str(cmd, "prefix")?.as_bytes().to_vec();
            lock(state).trace = Some(prefix);
            subscribe(sync, state);
            emit("ack", now_us(), json!({ "cmd": "trace" }));
        }
        "watch" => {
            let target = field_u64(cmd, "count")? as usize;
            let step = (target / 20).max(1);
            // Subscribe first, so that no update between the check below and
            // the subscription is missed.
            subscribe(sync, state);
            let mut st = lock(state);
            st.watch = Some(Watch {
                target,
                step,
                next: step,
                check_at: 0,
            });
            emit("ack", now_us(), json!({ "cmd": "watch" }));
            let n = sync.len();
            check_watch(&mut st, n, now_us());
            let watching = st.watch.is_some();
            drop(st);
            if watching {
                spawn_watch_fallback(sync, state);
            }
        }
        "set" => {
            let key = field_str(cmd, "key")?;
            let value = field_str(cmd, "value")?;
            let t = now_us();
            let res = sync.set(key, Value::Bin(value.as_bytes().to_vec())).await;
            let t_end = now_us();
            res.map_err(|e| format!("set {key}: {e}"))?;
            emit("set", t, json!({ "key": key, "t_end": t_end }));
        }
        "burst" => {
            let prefix = field_str(cmd, "prefix")?;
            let count = field_u64(cmd, "count")?;
            let size = field_u64(cmd, "size")? as usize;
            // One random tail per burst (cheap), or one per value
            // (`distinct`: values that do not compress as a batch).
            let distinct = cmd.get("distinct").and_then(Json::as_bool) == Some(true);
            let mut tail: Vec<u8> = (0..size.saturating_sub(8))
                .map(|_| rand::random::<u8>())
                .collect();
            let mut errors = 0u64;
            let mut first_error: Option<String> = None;
            let t0 = now_us();
            for i in 0..count {
                let key = format!("{prefix}{i:07}");
                let mut value = format!("{i:08}").into_bytes();
                if distinct {
                    tail.iter_mut().for_each(|b| *b = rand::random::<u8>());
                }
                value.extend_from_slice(&tail);
                if let Err(e) = sync.set(key, Value::Bin(value)).await {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
            let t = now_us();
            emit(
                "burst_done",
                t,
                json!({ "count": count, "t0": t0, "errors": errors, "first_error": first_error }),
            );
        }
        "stats" => {
            let st = sync
                .mesh()
                .stats()
                .await
                .map_err(|e| format!("stats: {e}"))?;
            let updates = lock(state).updates;
            emit(
                "stats",
                now_us(),
                json!({
                    "keys": sync.len(),
                    "updates": updates,
                    "peers": st.peers,
                    "exceptions": st.bad_frames,
                    "last_exception": st.last_error,
                    "expired": st.expired_broadcasts,
                    "slow_peers_dropped": st.slow_peers_dropped,
                    "broadcasts": st.broadcasts_received,
                    "duplicates": st.duplicate_broadcasts,
                    "relays_pruned": st.relays_pruned,
                    "bytes_sent": st.bytes_sent,
                    // Whispers: announcements, grafts, prunes, pings.
                    "whisper_bytes_sent": st.bytes_out.get(&rs2p::wire::flags::main::WHISPER).copied().unwrap_or(0),
                    "announcements": st.tree_announcements,
                }),
            );
        }
        "quit" => return Ok(true),
        other => return Err(format!("unknown command `{other}`")),
    }
    Ok(false)
}

async fn main_loop(args: BenchNodeArgs) -> ExitCode {
    let bind = match tokio::net::lookup_host((args.host.as_str(), args.port)).await {
        Ok(mut addrs) => match addrs.next() {
            Some(a) => a,
            None => {
                eprintln!("rs2p bench-node: {} does not resolve", args.host);
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("rs2p bench-node: {}: {e}", args.host);
            return ExitCode::FAILURE;
        }
    };
    let mut cfg = SyncConfig::new(bind)
        .with_subnet("sync")
        .with_leasing(true)
        .with_transport(rs2p::Transport::Plaintext);
    // Experiments only (not used by `rs2p bench`): a cap on connections.
    if let Some(n) = std::env::var("RS2P_BENCH_MAX_CONNECTIONS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
    {
        cfg.mesh.max_connections = n.max(1);
    }
    if let Some(dir) = &args.data_dir {
        cfg = cfg.with_data_dir(dir);
    }
    let sync = match SyncSocket::bind(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rs2p bench-node: cannot listen on {bind}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = sync.mesh().local_addr().port();
    emit(
        "ready",
        now_us(),
        json!({
            "impl": "rs2p",
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "host": args.host,
            "port": port,
            "keys": sync.len(),
        }),
    );
    let state = Arc::new(Mutex::new(State::default()));
    spawn_peers_loop(&sync);

    let mut lines = command_lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break, // EOF: same as quit
            Err(e) => {
                eprintln!("rs2p bench-node: stdin: {e}");
                break;
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cmd: Json = match serde_json::from_str(line) {
            Ok(c) => c,
            Err(e) => {
                emit(
                    "error",
                    now_us(),
                    json!({ "error": format!("bad JSON: {e}") }),
                );
                continue;
            }
        };
        match handle(&sync, &state, &cmd).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                eprintln!("rs2p bench-node: {e}");
                emit(
                    "error",
                    now_us(),
                    json!({ "error": e, "cmd": cmd.get("cmd").cloned().unwrap_or(Json::Null) }),
                );
            }
        }
    }
    sync.close().await;
    emit("bye", now_us(), json!({}));
    ExitCode::SUCCESS
}

/// The command lines on stdin.
///
/// When stdin is a pipe (as `rs2p bench` starts the node) it is read through
/// the runtime's own poller: a command then wakes the one worker that waits
/// on it. `tokio::io::stdin` reads on a blocking-pool thread instead, which
/// cost the writing node five thread wake-ups per command (measured with
/// strace during scenario 1), all competing with the nodes it writes to for
/// the two cores.
fn command_lines() -> tokio::io::Lines<BufReader<Box<dyn tokio::io::AsyncRead + Unpin + Send>>> {
    let pipe = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok());
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match pipe {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdin()),
    };
    BufReader::new(input).lines()
}

/// Worker threads for the runtime of `rs2p bench-node`: `--threads`,
/// else RS2P_BENCH_THREADS, else one, as `rs2p node` runs by default.
pub fn workers(args: &BenchNodeArgs) -> usize {
    let env = || {
        std::env::var("RS2P_BENCH_THREADS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    match args.threads {
        0 => env().filter(|&n| n > 0).unwrap_or(1),
        n => n,
    }
}

/// Runs `rs2p bench-node` on `rt` (built with [`workers`] threads): the
/// command loop is a task on the runtime, as server code would run it (with
/// `RS2P_BENCH_BLOCK_ON` set, it runs on the calling thread under
/// `block_on` instead, as a plain `#[tokio::main]` loop would; every
/// awaited `set()` then crosses threads twice).
pub fn run(rt: &Runtime, args: BenchNodeArgs) -> ExitCode {
    if std::env::var_os("RS2P_BENCH_BLOCK_ON").is_some() {
        return rt.block_on(main_loop(args));
    }
    rt.block_on(async {
        tokio::spawn(main_loop(args))
            .await
            .unwrap_or(ExitCode::FAILURE)
    })
}
