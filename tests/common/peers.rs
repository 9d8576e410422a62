//! Harness for driving real reference nodes (py2p 0.7.878 / js2p 0.7.870)
//! from Rust integration tests, so tests can build mixed meshes on
//! 127.0.0.1.
//!
//! Each [`RefPeer`] is one driver process (`tests/peers/py2p_node.py` or
//! `tests/peers/js2p_node.js`) running one reference node; it is controlled
//! by JSON lines (see `tests/peers/README.md` for the full command set).
//! The reference installs come from `scripts/setup-peers.sh` (into
//! `<repo>/.peers`); tests should skip when [`peers_available`] is false.
//!
//! ```ignore
//! mod common;
//! use common::peers::*;
//! use serde_json::json;
//!
//! #[test]
//! fn py2p_sees_our_set() {
//!     if !peers_available() { eprintln!("skipped: run scripts/setup-peers.sh"); return; }
//!     let mut py = RefPeer::spawn(Impl::Py2p, &PeerOpts::default());
//!     // ... start our node, connect it to py.port() ...
//!     py.wait_until("key arrives", Duration::from_secs(10), |p| p.get("k").is_some());
//! }
//! ```
//!
//! Only std and serde_json are used.  Set `RS2P_REPO_ROOT` to use the
//! drivers and `.peers` of another checkout, `RS2P_PEER_LOGS=1` to echo each
//! driver's stderr when it is dropped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Which reference implementation to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Impl {
    Py2p,
    Js2p,
    /// rs2p's browser node (the bundle's SyncSocket, the protocol core in
    /// WebAssembly) under Node: `tests/peers/wasm_node.mjs`. It cannot
    /// listen (port 0).
    Wasm,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Py2p => "py2p",
            Impl::Js2p => "js2p",
            Impl::Wasm => "rs2p-wasm",
        }
    }
}

/// Start-up options of a reference node (the driver's command line).
#[derive(Clone, Debug)]
pub struct PeerOpts {
    /// `"mesh"` or `"sync"`.
    pub kind: &'static str,
    /// mesh: the full subnet (default `mesh`); sync: the base subnet
    /// (default `sync`, the node joins `sync1`/`sync0`).
    pub subnet: Option<String>,
    /// sync only: `"on"` (default), `"off"`, or `"omit"` (constructor called
    /// without the argument; js2p then does not enforce leases, §8.1).
    pub leasing: Option<&'static str>,
    /// `"Plaintext"` (default), `"SSL"`, or `"ws"` (js2p only).
    pub transport: Option<&'static str>,
    /// Override the node's compression preference list, e.g.
    /// `vec!["zlib", "gzip"]`; an empty vec means no compression.
    pub compression: Option<Vec<&'static str>>,
    /// More command-line arguments, for a driver's own options.
    pub extra: Vec<&'static str>,
}

impl Default for PeerOpts {
    fn default() -> Self {
        PeerOpts {
            kind: "sync",
            subnet: None,
            leasing: None,
            transport: None,
            compression: None,
            extra: Vec::new(),
        }
    }
}

impl PeerOpts {
    pub fn sync() -> Self {
        Self::default()
    }
    pub fn mesh() -> Self {
        PeerOpts {
            kind: "mesh",
            ..Self::default()
        }
    }
    pub fn subnet(mut self, s: &str) -> Self {
        self.subnet = Some(s.to_string());
        self
    }
    pub fn leasing(mut self, l: &'static str) -> Self {
        self.leasing = Some(l);
        self
    }
    pub fn transport(mut self, t: &'static str) -> Self {
        self.transport = Some(t);
        self
    }
    pub fn compression(mut self, c: Vec<&'static str>) -> Self {
        self.compression = Some(c);
        self
    }
    pub fn arg(mut self, a: &'static str) -> Self {
        self.extra.push(a);
        self
    }

    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--kind".to_string(),
            self.kind.to_string(),
            "--host".into(),
            "127.0.0.1".into(),
        ];
        if let Some(s) = &self.subnet {
            a.push("--subnet".into());
            a.push(s.clone());
        }
        if let Some(l) = self.leasing {
            a.push("--leasing".into());
            a.push(l.into());
        }
        if let Some(t) = self.transport {
            a.push("--transport".into());
            a.push(t.into());
        }
        if let Some(c) = &self.compression {
            a.push("--compression".into());
            a.push(if c.is_empty() {
                "none".to_string()
            } else {
                c.join(",")
            });
        }
        a.extend(self.extra.iter().map(|x| x.to_string()));
        a
    }
}

const READY_DEADLINE: Duration = Duration::from_secs(30);
const REPLY_DEADLINE: Duration = Duration::from_secs(20);

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// Repository root: `$RS2P_REPO_ROOT` if set, else this crate's manifest dir.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("RS2P_REPO_ROOT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

/// True when `scripts/setup-peers.sh` has installed both references.
pub fn peers_available() -> bool {
    let root = repo_root();
    root.join(".peers/py/bin/python").exists() && root.join(".peers/js/node_modules/js2p").is_dir()
}

/// Poll `f` every 25 ms until it returns true; panic with `what` after
/// `timeout`.  For conditions over several peers (borrow them inside `f`).
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// `{"$bin": hex}`: the drivers' encoding of a byte string.
pub fn bin(bytes: &[u8]) -> Value {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    json!({ "$bin": hex })
}

/// One running reference node.
pub struct RefPeer {
    which: Impl,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr_path: PathBuf,
    id: String,
    port: u16,
    protocol_id: String,
    closed: bool,
}

impl RefPeer {
    /// Start a node and wait (≤ 30 s) for its ready line.  Panics with the
    /// driver's stderr if it does not come up.
    pub fn spawn(which: Impl, opts: &PeerOpts) -> RefPeer {
        match Self::try_spawn(which, opts) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_spawn(which: Impl, opts: &PeerOpts) -> Result<RefPeer, String> {
        let root = repo_root();
        let mut cmd = match which {
            Impl::Py2p => {
                let mut c = Command::new(root.join(".peers/py/bin/python"));
                c.arg(root.join("tests/peers/py2p_node.py"));
                c
            }
            Impl::Js2p => {
                let mut c =
                    Command::new(std::env::var_os("RS2P_NODE").unwrap_or_else(|| "node".into()));
                c.arg(root.join("tests/peers/js2p_node.js"));
                c
            }
            Impl::Wasm => {
                let mut c =
                    Command::new(std::env::var_os("RS2P_NODE").unwrap_or_else(|| "node".into()));
                // Node 20 has WebSocket behind this flag (Node 22 by default).
                c.arg("--experimental-websocket").arg("--no-warnings");
                c.arg(root.join("tests/peers/wasm_node.mjs"));
                c
            }
        };
        cmd.args(opts.to_args());
        cmd.current_dir(&root);
        cmd.env("PYTHONUNBUFFERED", "1");

        let n = SPAWNED.fetch_add(1, Ordering::SeqCst);
        let stderr_path = std::env::temp_dir().join(format!(
            "rs2p-{}-{}-{}.stderr",
            which.name(),
            std::process::id(),
            n
        ));
        let errf = File::create(&stderr_path)
            .map_err(|e| format!("creating {}: {e}", stderr_path.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(errf));

        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start the {} driver ({e}); did you run scripts/setup-peers.sh? (root {})",
                which.name(),
                root.display()
            )
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        // Bounded: one reply per command, so the reader rarely has more
        // than one line in flight; a full channel just applies backpressure.
        let (tx, rx) = mpsc::sync_channel(256);
        thread::Builder::new()
            .name(format!("{}-stdout", which.name()))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(l) => {
                            if tx.send(l).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            })
            .expect("spawn reader thread");

        let mut peer = RefPeer {
            which,
            child,
            stdin,
            lines: rx,
            stderr_path,
            id: String::new(),
            port: 0,
            protocol_id: String::new(),
            closed: false,
        };
        let ready = peer.read_reply(READY_DEADLINE, "the ready line")?;
        if ready.get("event").and_then(Value::as_str) != Some("ready") {
            return Err(peer.failure(&format!("unexpected first line {ready}")));
        }
        peer.id = ready["id"].as_str().unwrap_or_default().to_string();
        peer.port = ready["port"].as_u64().unwrap_or(0) as u16;
        peer.protocol_id = ready["protocol_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(peer)
    }

    pub fn which(&self) -> Impl {
        self.which
    }
    /// The node's id (base58 text).
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The node's protocol (subnet) id, base58 text.
    pub fn protocol_id(&self) -> &str {
        &self.protocol_id
    }

    /// The driver's stderr so far (reference logs, tracebacks).
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn failure(&mut self, what: &str) -> String {
        // A dying driver may still be writing its traceback: wait (up to a
        // second) for it to exit, so that the whole of it is shown.
        let deadline = Instant::now() + Duration::from_secs(1);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break format!("exited: {st}"),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => break "still running".to_string(),
                Err(e) => break format!("status unknown: {e}"),
            }
        };
        let err = self.stderr();
        let tail: String = {
            let start = err.len().saturating_sub(6000);
            let start = (start..err.len())
                .find(|&i| err.is_char_boundary(i))
                .unwrap_or(err.len());
            err[start..].to_string()
        };
        format!(
            "{} driver (port {}, id {}): {what} [{status}]\n--- driver stderr ({}) ---\n{tail}",
            self.which.name(),
            self.port,
            self.id,
            self.stderr_path.display()
        )
    }

    fn read_reply(&mut self, deadline: Duration, what: &str) -> Result<Value, String> {
        match self.lines.recv_timeout(deadline) {
            Ok(line) => serde_json::from_str(&line)
                .map_err(|e| self.failure(&format!("non-JSON line {line:?}: {e}"))),
            Err(RecvTimeoutError::Timeout) => {
                Err(self.failure(&format!("no {what} within {deadline:?}")))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(self.failure(&format!("driver exited before {what}")))
            }
        }
    }

    /// Send one command, return its reply (which has `"ok"`); `Err` only
    /// when the driver does not answer within 20 s or has died.
    pub fn try_cmd(&mut self, req: Value) -> Result<Value, String> {
        let line = serde_json::to_string(&req).expect("serialise request");
        let write = match self.stdin.as_mut() {
            Some(w) => w
                .write_all(line.as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .and_then(|_| w.flush()),
            None => return Err(self.failure("stdin already closed")),
        };
        if let Err(e) = write {
            return Err(self.failure(&format!("writing {line}: {e}")));
        }
        self.read_reply(REPLY_DEADLINE, &format!("reply to {line}"))
    }

    /// Send one command and return its reply line (`{"ok":true,...}` or
    /// `{"ok":false,"error":{"kind","message"}}`).  Panics if the driver
    /// does not answer within 20 s.
    pub fn cmd(&mut self, req: Value) -> Value {
        match self.try_cmd(req) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`cmd`](Self::cmd) but panics unless the reply has `"ok":true`.
    pub fn ok(&mut self, req: Value) -> Value {
        let rep = self.cmd(req.clone());
        if rep.get("ok") != Some(&Value::Bool(true)) {
            panic!(
                "{} {}: command {req} failed: {rep}",
                self.which.name(),
                self.id
            );
        }
        rep
    }

    /// Poll `f` every 25 ms until it returns true; panics with `what` (and
    /// the driver's stderr) after `timeout`.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut RefPeer) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self) {
                return;
            }
            if Instant::now() >= deadline {
                let msg = self.failure(&format!("timed out after {timeout:?} waiting for: {what}"));
                panic!("{msg}");
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    // ---- convenience wrappers around common commands -------------------

    pub fn info(&mut self) -> Value {
        self.ok(json!({"op": "info"}))
    }

    /// Dial 127.0.0.1:`port` (optionally telling the reference the peer id).
    pub fn connect(&mut self, port: u16, id: Option<&str>) -> Value {
        let mut req = json!({"op": "connect", "host": "127.0.0.1", "port": port});
        if let Some(id) = id {
            req["id"] = json!(id);
        }
        self.cmd(req)
    }

    /// Routing-table entries: `[{"id","addr","outgoing","alive"}]`.
    pub fn peers(&mut self) -> Vec<Value> {
        self.ok(json!({"op": "peers"}))["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Whether the routing table holds a live connection to `id`.
    pub fn has_peer(&mut self, id: &str) -> bool {
        self.peers()
            .iter()
            .any(|p| p["id"] == id && p["alive"] != Value::Bool(false))
    }

    /// Broadcast one user message made of `packets`.
    pub fn send(&mut self, packets: Vec<Value>) -> Value {
        self.cmd(json!({"op": "send", "packets": packets}))
    }

    /// Drain received user messages: `[{"sender","time","packets"}]`.
    pub fn recv(&mut self) -> Vec<Value> {
        self.ok(json!({"op": "recv"}))["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// sync: set; returns the reply (check `"ok"`; a lease refusal is
    /// `ok:false`, KeyError for py2p, Error for js2p).
    pub fn set(&mut self, key: &str, value: Value) -> Value {
        self.cmd(json!({"op": "set", "key": key, "value": value}))
    }

    /// sync: the value at `key`, if present.
    pub fn get(&mut self, key: &str) -> Option<Value> {
        let rep = self.ok(json!({"op": "get", "key": key}));
        if rep["found"] == Value::Bool(true) {
            Some(rep["value"].clone())
        } else {
            None
        }
    }

    /// sync: `[[key, value, {"owner","timestamp"}], ...]`.
    pub fn dump(&mut self) -> Vec<Value> {
        self.ok(json!({"op": "dump"}))["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// sync: drain recorded update/delete events.
    pub fn events(&mut self) -> Vec<Value> {
        self.ok(json!({"op": "events"}))["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `(errors, last_error)` counted by the driver.
    pub fn stats(&mut self) -> (u64, Option<String>) {
        let rep = self.ok(json!({"op": "stats"}));
        (
            rep["errors"].as_u64().unwrap_or(0),
            rep["last_error"].as_str().map(str::to_string),
        )
    }

    /// Close the node and wait for the driver to exit (also done by Drop).
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if let Some(mut w) = self.stdin.take() {
            let _ = w.write_all(b"{\"op\":\"close\"}\n");
            let _ = w.flush();
            // dropping w closes stdin: EOF also makes the driver exit
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}

impl Drop for RefPeer {
    fn drop(&mut self) {
        self.close();
        if std::env::var_os("RS2P_PEER_LOGS").is_some() {
            eprintln!(
                "--- {} {} stderr ---\n{}",
                self.which.name(),
                self.id,
                self.stderr()
            );
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}
