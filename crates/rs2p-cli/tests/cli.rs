//! Integration tests of the `rs2p` binary, run as child processes: the JSON
//! interface of `rs2p node --json`, the headless node, `rs2p demo`, the
//! help texts, and (on Unix) the interactive shell through a pty.
//!
//! Every read from a child has a deadline, so a stuck child fails the test
//! instead of hanging it; children are killed when their handle drops.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

const BIN: &str = env!("CARGO_BIN_EXE_rs2p");
/// Deadline for one expected line or exit.
const T: Duration = Duration::from_secs(20);
/// Interval of the polling loops (each has a deadline).
const POLL: Duration = Duration::from_millis(20);

/// A running `rs2p` with its stdout read line by line on a thread.
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Event lines seen while reading replies, not yet looked at.
    events: Vec<Json>,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str], stdin: Stdio) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {BIN}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
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
        });
        Proc {
            name,
            child,
            stdin,
            lines,
            events: Vec::new(),
        }
    }

    /// `rs2p node --json ...args`, with its listening line read.
    fn json_node(name: &'static str, args: &[&str]) -> (Proc, Listening) {
        let mut all = vec!["node", "--json"];
        all.extend_from_slice(args);
        let mut p = Proc::spawn(name, &all, Stdio::piped());
        let hello = p.json_line();
        assert_eq!(hello["event"], "listening", "{name}: first line {hello}");
        let addr = hello["addr"].as_str().expect("addr").to_string();
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("port in addr");
        let id = hello["id"].as_str().expect("id").to_string();
        assert!(!id.is_empty());
        (p, Listening { addr, port, id })
    }

    /// The next stdout line; fails after `T`, or when stdout closed.
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(T) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: no line within {} s", self.name, T.as_secs())
            }
            Err(RecvTimeoutError::Disconnected) => panic!("{}: stdout closed", self.name),
        }
    }

    fn json_line(&mut self) -> Json {
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{}: not JSON: {l:?}: {e}", self.name))
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot write stdin: {e}", self.name));
    }

    /// Sends one line and returns the reply.
    fn raw(&mut self, line: &str) -> Json {
        self.write_line(line);
        self.reply()
    }

    /// The next reply (the first line with "ok"); event lines read
    /// meanwhile are kept in `events`.
    fn reply(&mut self) -> Json {
        loop {
            let j = self.json_line();
            if j.get("event").is_some() {
                self.events.push(j);
            } else {
                assert!(
                    j.get("ok").is_some_and(Json::is_boolean),
                    "{}: reply without ok: {j}",
                    self.name
                );
                return j;
            }
        }
    }

    fn req(&mut self, req: Json) -> Json {
        self.raw(&req.to_string())
    }

    /// A request that must succeed.
    fn ok(&mut self, req: Json) -> Json {
        let reply = self.req(req.clone());
        assert_eq!(reply["ok"], true, "{}: {req} -> {reply}", self.name);
        reply
    }

    /// A request that must fail with `kind`; returns the error message.
    fn fails(&mut self, req: Json, kind: &str) -> String {
        let reply = self.req(req.clone());
        assert_eq!(reply["ok"], false, "{}: {req} -> {reply}", self.name);
        assert_eq!(
            reply["error"]["kind"], kind,
            "{}: {req} -> {reply}",
            self.name
        );
        let msg = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{}: empty message in {reply}", self.name);
        msg.to_string()
    }

    /// The node still answers.
    fn alive(&mut self) {
        let reply = self.ok(json!({"op": "len", "id": "alive"}));
        assert_eq!(reply["id"], "alive");
        assert!(reply["len"].is_u64());
    }

    /// Waits for an event matching `pred` (seen earlier or read now) and
    /// removes it from `events`.
    fn event(&mut self, what: &str, pred: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + T;
        loop {
            if let Some(i) = self.events.iter().position(&pred) {
                return self.events.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let j: Json = serde_json::from_str(&l)
                        .unwrap_or_else(|e| panic!("{}: not JSON: {l:?}: {e}", self.name));
                    assert!(j.get("event").is_some(), "{}: unasked reply {j}", self.name);
                    self.events.push(j);
                }
                Err(_) => panic!(
                    "{}: no {what} event within {} s; saw {:?}",
                    self.name,
                    T.as_secs(),
                    self.events
                ),
            }
        }
    }

    /// Waits for the process to exit, with a deadline.
    fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running after {} s",
                self.name,
                T.as_secs()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Every remaining stdout line, once the process has exited.
    fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match self.lines.recv_timeout(T) {
                Ok(l) => out.push(l),
                Err(RecvTimeoutError::Disconnected) => return out,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: stdout still open after {} s", self.name, T.as_secs())
                }
            }
        }
    }

    #[cfg(unix)]
    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "{}: kill failed", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Listening {
    addr: String,
    port: u16,
    id: String,
}

fn now_secs() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_secs()).expect("seconds fit i64")
}

/// Polls until the wall clock is past `t` (unix seconds).
fn wait_until_after(t: i64) {
    let deadline = Instant::now() + T;
    while now_secs() <= t {
        assert!(Instant::now() < deadline, "clock did not pass {t}");
        std::thread::sleep(POLL);
    }
}

/// The owner and timestamp of `key` in a `dump` reply.
fn dump_meta(dump: &Json, key: &str) -> (String, i64) {
    let items = dump["items"].as_array().expect("items array");
    let item = items
        .iter()
        .find(|i| i[0] == key)
        .unwrap_or_else(|| panic!("{key} not in {dump}"));
    let meta = &item[2];
    (
        meta["owner"].as_str().expect("owner").to_string(),
        meta["timestamp"].as_i64().expect("timestamp"),
    )
}

#[test]
fn two_json_nodes() {
    let (mut a, la) = Proc::json_node("A", &[]);
    let (mut b, lb) = Proc::json_node("B", &[]);
    assert_ne!(la.id, lb.id);
    assert!(la.addr.starts_with("127.0.0.1:") && la.port != 0);

    // id: the request id moves to request_id, the node id is in id.
    let id = a.ok(json!({"op": "id", "id": 41}));
    assert_eq!(id["id"], la.id.as_str());
    assert_eq!(id["request_id"], 41);
    assert_eq!(id["addr"], la.addr.as_str());
    assert_eq!(id["subnet"], "sync1");
    assert!(id["protocol_id"].as_str().is_some_and(|p| !p.is_empty()));

    // connect, then both see each other.
    let reply = b.ok(json!({"op": "connect", "host": "127.0.0.1", "port": la.port, "id": "c"}));
    assert_eq!(reply["id"], "c");
    let joined = b.event("peer_joined", |e| {
        e["event"] == "peer_joined" && e["id"] == la.id.as_str()
    });
    assert_eq!(joined["addr"], la.addr.as_str());
    a.event("peer_joined", |e| {
        e["event"] == "peer_joined" && e["id"] == lb.id.as_str()
    });
    let peers = b.ok(json!({"op": "peers"}));
    let peer = peers["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"] == la.id.as_str()))
        .unwrap_or_else(|| panic!("A not in B's peers: {peers}"));
    assert_eq!(peer["outgoing"], true);
    assert_eq!(peer["addr"], la.addr.as_str());
    let peers = a.ok(json!({"op": "peers"}));
    let peer = peers["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"] == lb.id.as_str()))
        .unwrap_or_else(|| panic!("B not in A's peers: {peers}"));
    assert_eq!(peer["outgoing"], false);

    // set on A, wait on B, dump shows A as the owner.
    let reply = a.ok(json!({"op": "set", "key": "greeting", "value": "hello", "id": 1}));
    assert_eq!(reply["id"], 1);
    // A's own update event comes before the reply.
    let own = a
        .events
        .iter()
        .position(|e| e["event"] == "update" && e["key"] == "greeting");
    assert!(
        own.is_some(),
        "A's update event before its reply: {:?}",
        a.events
    );
    let waited =
        b.ok(json!({"op": "wait", "key": "greeting", "value": "hello", "timeout_ms": 10000}));
    assert!(waited["elapsed_ms"].is_u64());
    let ev = b.event("update", |e| {
        e["event"] == "update" && e["key"] == "greeting"
    });
    assert_eq!(ev["value"], "hello");
    assert_eq!(ev["owner"], la.id.as_str());
    assert!(ev["timestamp"].is_i64());
    let dump = b.ok(json!({"op": "dump"}));
    let (owner, t_greeting) = dump_meta(&dump, "greeting");
    assert_eq!(owner, la.id);
    let got = b.ok(json!({"op": "get", "key": "greeting"}));
    assert_eq!(
        (got["found"].clone(), got["value"].clone()),
        (json!(true), json!("hello"))
    );
    let got = b.ok(json!({"op": "get", "key": "nothing"}));
    assert_eq!(
        (got["found"].clone(), got["value"].clone()),
        (json!(false), Json::Null)
    );

    // Every value type, bytes as {"$bin":hex}, a binary key.
    let value = json!({"s": "测试", "i": -3, "u": u64::MAX, "f": 2.5, "n": null, "b": true,
                       "a": [1, {"$bin": "00ff"}]});
    a.ok(json!({"op": "update", "items": {"x": 1, "typed": value, "bytes": {"$bin": "c0ffee"}}}));
    a.ok(json!({"op": "set", "key": {"$bin": "ff00"}, "value": "binary key"}));
    b.ok(json!({"op": "wait", "key": {"$bin": "ff00"}, "value": "binary key"}));
    let got = b.ok(json!({"op": "get", "key": "typed"}));
    assert_eq!(got["value"], value);
    let got = b.ok(json!({"op": "get", "key": "bytes"}));
    assert_eq!(got["value"], json!({"$bin": "c0ffee"}));
    let keys = b.ok(json!({"op": "keys"}));
    let keys = keys["keys"].as_array().expect("keys").clone();
    for k in [
        json!("greeting"),
        json!("x"),
        json!("typed"),
        json!("bytes"),
        json!({"$bin": "ff00"}),
    ] {
        assert!(keys.contains(&k), "{k} not in {keys:?}");
    }
    assert_eq!(b.ok(json!({"op": "len"}))["len"], 5);

    // apply_delta, pop, del, replicated.
    a.ok(json!({"op": "apply_delta", "key": "profile", "delta": {"name": "rs2p"}}));
    a.ok(json!({"op": "apply_delta", "key": "profile", "delta": {"nodes": 2}}));
    b.ok(json!({"op": "wait", "key": "profile", "value": {"name": "rs2p", "nodes": 2}}));
    let popped = a.ok(json!({"op": "pop", "key": "x"}));
    assert_eq!(
        (popped["found"].clone(), popped["value"].clone()),
        (json!(true), json!(1))
    );
    let popped = a.ok(json!({"op": "pop", "key": "x"}));
    assert_eq!(popped["found"], false);
    a.ok(json!({"op": "del", "key": "bytes"}));
    b.ok(json!({"op": "wait", "key": "x", "absent": true}));
    b.ok(json!({"op": "wait", "key": "bytes", "absent": true, "timeout_ms": 10000}));
    b.event("delete", |e| e["event"] == "delete" && e["key"] == "bytes");

    // broadcast and recv: packets start with the sub-flag 0.
    a.ok(json!({"op": "broadcast", "packets": ["hi", 7, {"$bin": "01"}]}));
    let deadline = Instant::now() + T;
    let message = loop {
        let r = b.ok(json!({"op": "recv"}));
        if let Some(m) = r["messages"].as_array().and_then(|m| m.first()) {
            break m.clone();
        }
        assert!(Instant::now() < deadline, "B received no message");
        std::thread::sleep(POLL);
    };
    assert_eq!(message["sender"], la.id.as_str());
    assert_eq!(message["packets"], json!([0, "hi", 7, {"$bin": "01"}]));
    assert!(message["time"].is_i64());
    assert_eq!(b.ok(json!({"op": "recv"}))["messages"], json!([]));

    // lease_held: B writes A's key once A's write is in the past (within
    // the same second the smaller id may win the tie).
    wait_until_after(t_greeting);
    let reply = b.req(json!({"op": "set", "key": "greeting", "value": "mine"}));
    let error = &reply["error"];
    assert_eq!(error["kind"], "lease_held", "{reply}");
    // The whole id and the unix time, for programs; the duration left and
    // a hint (B has no --data-dir) in words.
    assert_eq!(error["owner"], la.id.as_str(), "{reply}");
    assert_eq!(error["expires_at"], t_greeting + 3600, "{reply}");
    let msg = error["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&la.id), "{msg}");
    assert!(msg.contains(" m more"), "{msg}");
    assert!(
        error["hint"]
            .as_str()
            .is_some_and(|h| h.contains("--data-dir")),
        "{reply}"
    );
    b.alive();
    b.fails(json!({"op": "del", "key": "greeting"}), "lease_held");
    b.alive();
    assert_eq!(
        b.ok(json!({"op": "get", "key": "greeting"}))["value"],
        "hello"
    );

    // not_a_mapping, key_not_found.
    a.ok(json!({"op": "set", "key": "n", "value": 5}));
    let msg = a.fails(
        json!({"op": "apply_delta", "key": "n", "delta": {"k": 1}}),
        "not_a_mapping",
    );
    assert!(msg.contains("holds an int, not a map"), "{msg}");
    a.alive();
    // The delta itself is not a map: said so, whatever the key holds.
    for key in ["n", "newmap"] {
        let msg = a.fails(
            json!({"op": "apply_delta", "key": key, "delta": "notjson"}),
            "not_a_mapping",
        );
        assert!(msg.contains("the delta for key"), "{msg}");
        assert!(msg.contains("is a string, not a map"), "{msg}");
        assert!(!msg.contains("holds"), "{msg}");
    }
    assert_eq!(a.ok(json!({"op": "get", "key": "newmap"}))["found"], false);
    a.alive();
    a.fails(json!({"op": "del", "key": "missing"}), "key_not_found");
    a.alive();

    // bad_request: malformed lines; the request id is echoed when known.
    for line in [
        "not json",
        r#"{"op":"nope"}"#,
        r#"{"op":"set"}"#,
        r#"{"op":"set","key":"k"}"#,
        r#"{"op":"get","key":1}"#,
        r#"{"op":"set","key":"k","value":{"$bin":"zz"}}"#,
        r#"{"op":"connect","host":"127.0.0.1","port":70000}"#,
        r#"{"op":"wait","key":"k","timeout_ms":-1}"#,
        r#"{"op":"wait","key":"k","value":1,"absent":true}"#,
        r#"{"op":"update","items":[]}"#,
        r#"{"op":"broadcast","packets":"x"}"#,
        // Beyond 64 bits: JSON readers would make it the float 1e20.
        r#"{"op":"set","key":"big","value":99999999999999999999}"#,
        r#"{"id":3}"#,
        "[1,2]",
        "\"op\"",
    ] {
        let reply = a.raw(line);
        assert_eq!(reply["ok"], false, "{line} -> {reply}");
        assert_eq!(reply["error"]["kind"], "bad_request", "{line} -> {reply}");
        a.alive();
    }
    // A line that is not UTF-8.
    let stdin = a.stdin.as_mut().expect("stdin");
    stdin.write_all(b"{\"op\":\"\xff\"}\n").expect("write");
    stdin.flush().expect("flush");
    let reply = a.reply();
    assert_eq!(reply["error"]["kind"], "bad_request", "{reply}");
    a.alive();
    let reply = a.raw(r#"{"op":"nope","id":"x1"}"#);
    assert_eq!(
        (reply["id"].clone(), reply["error"]["kind"].clone()),
        (json!("x1"), json!("bad_request"))
    );

    // timeout.
    let msg = b.fails(
        json!({"op": "wait", "key": "never", "timeout_ms": 100}),
        "timeout",
    );
    assert!(msg.contains("never"), "{msg}");
    b.alive();
    b.fails(
        json!({"op": "wait", "key": "greeting", "value": "other", "timeout_ms": 100}),
        "timeout",
    );
    b.fails(
        json!({"op": "wait", "key": "greeting", "absent": true, "timeout_ms": 100}),
        "timeout",
    );
    b.alive();

    // An io error: nothing listens on a's port once... use a closed port.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = free.local_addr().expect("addr").port();
    drop(free);
    b.fails(
        json!({"op": "connect", "host": "127.0.0.1", "port": closed_port}),
        "io",
    );
    b.alive();

    // close: B replies, exits 0; A sees it leave.
    let reply = b.ok(json!({"op": "close", "id": [1, 2]}));
    assert_eq!(reply["id"], json!([1, 2]));
    assert!(b.exit_status().success());
    a.event("peer_left", |e| {
        e["event"] == "peer_left" && e["id"] == lb.id.as_str()
    });

    // EOF on stdin closes A.
    drop(a.stdin.take());
    assert!(a.exit_status().success());
}

#[test]
fn json_node_options() {
    let (mut p, l) = Proc::json_node(
        "opts",
        &[
            "--listen",
            "127.0.0.1:0",
            "--subnet",
            "test",
            "--no-leasing",
            "--transport",
            "plaintext",
        ],
    );
    let id = p.ok(json!({"op": "id"}));
    assert_eq!(id["subnet"], "test0");
    assert_eq!(id["id"], l.id.as_str());
    // A second node with --connect on the command line, on three runtime
    // workers (the first runs on the default one).
    let port = l.port.to_string();
    let target = format!("127.0.0.1:{port}");
    let (mut q, lq) = Proc::json_node(
        "opts2",
        &[
            "--subnet",
            "test",
            "--no-leasing",
            "-c",
            &target,
            "--threads",
            "3",
        ],
    );
    q.event("peer_joined", |e| {
        e["event"] == "peer_joined" && e["id"] == l.id.as_str()
    });
    // Without leasing the latest write wins.
    p.ok(json!({"op": "set", "key": "k", "value": 1}));
    q.ok(json!({"op": "wait", "key": "k", "value": 1}));
    let t = dump_meta(&q.ok(json!({"op": "dump"})), "k").1;
    wait_until_after(t);
    q.ok(json!({"op": "set", "key": "k", "value": 2}));
    p.ok(json!({"op": "wait", "key": "k", "value": 2}));
    assert_eq!(dump_meta(&p.ok(json!({"op": "dump"})), "k").0, lq.id);
    drop(q.stdin.take());
    assert!(q.exit_status().success());
    p.ok(json!({"op": "close"}));
    assert!(p.exit_status().success());
}

#[test]
fn unreachable_connect_fails_startup() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let target = format!("127.0.0.1:{port}");
    let out = run_with_input(&["node", "--json", "--connect", &target], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {target}")),
        "{stderr}"
    );
}

/// A scratch path under the temporary directory (nothing is created).
fn scratch(name: &str) -> std::path::PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("rs2p-cli-{name}-{}-{nanos}", std::process::id()))
}

/// Start-up failures name what was wrong and what to do; data-dir
/// failures are not reported as listen failures.
#[test]
fn startup_errors_say_what_and_what_to_do() {
    let fails = |args: &[&str], code: i32| {
        let out = run_with_input(args, "");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        stderr
    };

    // --data-dir names a file.
    let file = scratch("file");
    std::fs::write(&file, "x").expect("scratch file");
    let path = file.to_string_lossy().into_owned();
    let err = fails(&["node", "--json", "--data-dir", &path], 1);
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert!(err.contains("hint: "), "{err}");
    assert!(!err.contains("cannot listen"), "{err}");
    // ... or a folder below a file: the operating system's reason.
    let below = format!("{path}/sub");
    let err = fails(&["node", "--json", "--data-dir", &below], 1);
    assert!(
        err.contains(&below) && err.contains("Not a directory"),
        "{err}"
    );
    let _ = std::fs::remove_file(&file);

    // --data-dir in use by another node.
    let dir = scratch("in-use");
    let dir_s = dir.to_string_lossy().into_owned();
    let (mut first, _) = Proc::json_node("first", &["--data-dir", &dir_s]);
    let err = fails(&["node", "--json", "--data-dir", &dir_s], 1);
    assert!(err.contains(&dir_s), "{err}");
    assert!(
        err.contains("another node already uses this data dir"),
        "{err}"
    );
    assert!(!err.contains("cannot listen"), "{err}");
    first.ok(json!({"op": "close"}));
    assert!(first.exit_status().success());
    let _ = std::fs::remove_dir_all(&dir);

    // The listening address: a port in use, a port out of range, a name.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let listen = format!("127.0.0.1:{port}");
    let err = fails(&["node", "--json", "--listen", &listen], 1);
    assert!(err.contains(&format!("cannot listen on {listen}")), "{err}");
    assert!(err.contains("another program already listens"), "{err}");
    drop(taken);
    let err = fails(&["node", "--listen", "127.0.0.1:99999"], 2);
    assert!(
        err.contains("port 99999 is out of range (0-65535)"),
        "{err}"
    );
    let (mut named, l) = Proc::json_node("named", &["--listen", "localhost:0"]);
    assert!(l.port != 0, "{}", l.addr);
    named.ok(json!({"op": "close"}));
    assert!(named.exit_status().success());
}

/// `--connect` to a node on another subnet or transport fails start-up
/// with both named, and what to change.
#[test]
fn connect_to_another_subnet_or_transport_fails_startup() {
    let (mut a, la) = Proc::json_node("plain", &[]);
    let target = format!("127.0.0.1:{}", la.port);
    let fails = |args: &[&str]| {
        let mut all = vec!["node", "--json", "--connect", &target];
        all.extend_from_slice(args);
        let out = run_with_input(&all, "");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        stderr
    };
    let err = fails(&["--subnet", "other"]);
    assert!(
        err.contains(&format!("cannot connect to {target}")),
        "{err}"
    );
    assert!(
        err.contains("subnet sync1") && err.contains("other1"),
        "{err}"
    );
    assert!(err.contains("--subnet sync"), "{err}");
    assert!(!err.contains("WARN"), "no log line with hashes: {err}");
    let err = fails(&["--no-leasing"]);
    assert!(
        err.contains("sync0") && err.contains("without --no-leasing"),
        "{err}"
    );
    let err = fails(&["--transport", "ssl"]);
    assert!(err.contains("this peer speaks plaintext"), "{err}");
    assert!(err.contains("try --transport plaintext"), "{err}");
    a.alive();
    a.ok(json!({"op": "close"}));
    assert!(a.exit_status().success());
}

#[cfg(unix)]
#[test]
fn headless_node_stops_on_sigterm() {
    let mut p = Proc::spawn("headless", &["node"], Stdio::null());
    let line = p.line();
    let rest = line
        .strip_prefix("listening on 127.0.0.1:")
        .unwrap_or_else(|| panic!("first line: {line:?}"));
    let (port, id) = rest.split_once(" as ").expect("`as ID`");
    assert!(port.parse::<u16>().is_ok_and(|p| p != 0), "{line}");
    assert!(!id.is_empty());
    p.signal(libc::SIGTERM);
    assert!(p.exit_status().success());

    // The JSON interface also stops cleanly on a signal.
    let (mut j, _) = Proc::json_node("json-sigint", &[]);
    j.alive();
    j.signal(libc::SIGINT);
    assert!(j.exit_status().success());
}

#[test]
fn demo_converges_and_shows_the_lease() {
    for n in [2usize, 3] {
        let nodes = n.to_string();
        let mut p = Proc::spawn("demo", &["demo", "--nodes", &nodes], Stdio::null());
        let status = p.exit_status();
        let out = p.rest();
        let text = out.join("\n");
        assert!(status.success(), "demo exited {status}:\n{text}");
        let conv = out
            .iter()
            .position(|l| l.starts_with("converged"))
            .unwrap_or_else(|| panic!("no `converged` line:\n{text}"));
        assert!(out[conv].contains(&format!("all {n} nodes")), "{text}");
        let header: Vec<&str> = out[conv + 1].split_whitespace().collect();
        let mut want = vec!["key".to_string()];
        want.extend((0..n).map(|i| format!("node{i}")));
        assert_eq!(header, want, "{text}");
        let profile = format!(r#"{{"name":"rs2p","nodes":{n}}}"#);
        for (i, (key, value)) in [
            ("greeting", r#""hello""#),
            ("测试", r#""成功""#),
            ("count", "256"),
            ("profile", profile.as_str()),
        ]
        .into_iter()
        .enumerate()
        {
            let row: Vec<&str> = out[conv + 2 + i].split_whitespace().collect();
            let mut want = vec![key];
            want.extend(std::iter::repeat_n(value, n));
            assert_eq!(row, want, "{text}");
        }
        let refused = out
            .iter()
            .find(|l| l.starts_with("refused (lease held)"))
            .unwrap_or_else(|| panic!("no lease refusal:\n{text}"));
        assert!(refused.contains("\"greeting\" is leased by"), "{text}");
        assert!(
            out.iter()
                .any(|l| l == r#"greeting is still "hello" on node1"#),
            "{text}"
        );
        assert_eq!(
            out.last().map(String::as_str),
            Some(format!("closed all {n} nodes").as_str())
        );
    }
}

/// Runs rs2p with `input` on stdin (then EOF) and collects its output,
/// failing after `T`.
fn run_with_input(args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rs2p");
    let mut stdin = child.stdin.take().expect("stdin");
    // The child may exit without reading: a broken pipe is fine.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(T) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            #[cfg(unix)]
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on our own child; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            panic!("rs2p {args:?} still running after {} s", T.as_secs())
        }
    }
}

#[test]
fn logs_go_to_stderr() {
    let out = run_with_input(&["-vv", "node", "--json"], "{\"op\":\"close\"}\n");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        serde_json::from_str::<Json>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node listening"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colours when not a terminal: {stderr}"
    );
}

#[test]
fn help_and_usage_errors() {
    let run = |args: &[&str]| {
        let out = run_with_input(args, "");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for word in ["node", "demo", "--verbose", "--version"] {
        assert!(out.contains(word), "--help lacks {word}:\n{out}");
    }
    let (code, out, _) = run(&["node", "--help"]);
    assert_eq!(code, Some(0));
    for word in [
        "--listen",
        "--connect",
        "--subnet",
        "--no-leasing",
        "--transport",
        "plaintext",
        "--out-addr",
        "--json",
        "--verbose",
        "--threads",
        "127.0.0.1:0",
    ] {
        assert!(out.contains(word), "node --help lacks {word}:\n{out}");
    }
    let (code, out, _) = run(&["demo", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--nodes"), "{out}");
    for bad in [
        &["node", "--transport", "quic"][..],
        &["node", "--listen", "nowhere"],
        &["node", "--connect", "no-port"],
        &["node", "--threads", "0"],
        &["demo", "--nodes", "1"],
        &["demo", "--nodes", "17"],
        &["frobnicate"],
    ] {
        let (code, _, err) = run(bad);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
        assert!(err.contains("error"), "{bad:?}: {err}");
    }
}

#[cfg(unix)]
#[test]
fn interactive_shell() {
    use expectrl::{Eof, Expect, Session};

    let (mut peer, lp) = Proc::json_node("peer", &[]);
    peer.ok(json!({"op": "set", "key": "from_peer", "value": [1, "two"]}));

    let mut cmd = Command::new(BIN);
    cmd.args(["node", "--listen", "127.0.0.1:0"])
        .env("TERM", "xterm");
    let mut sh = Session::spawn(cmd).expect("spawn the shell in a pty");
    sh.set_expect_timeout(Some(T));
    let banner = sh.expect("type `help` for commands").expect("banner");
    let banner = String::from_utf8_lossy(banner.before()).into_owned();
    assert!(banner.contains("listening on 127.0.0.1:"), "{banner}");
    sh.expect("rs2p> ").expect("prompt");

    sh.send_line("set greeting hello").expect("send");
    sh.expect("ok\r\n").expect("set ok");
    sh.expect("rs2p> ").expect("prompt");
    sh.send_line("get greeting").expect("send");
    sh.expect("\"hello\"").expect("get shows the value");
    sh.expect("rs2p> ").expect("prompt");
    sh.send_line("set n {\"a\": 1}").expect("send");
    sh.expect("ok\r\n").expect("set ok");
    sh.send_line("delta n {\"b\": 2}").expect("send");
    sh.expect("ok\r\n").expect("delta ok");
    sh.send_line("get n").expect("send");
    sh.expect("{\"a\":1,\"b\":2}").expect("merged map");
    sh.send_line("delta greeting {\"b\": 2}").expect("send");
    sh.expect("error: ").expect("delta on a str fails");
    sh.expect("not a map").expect("not a map");
    sh.expect("rs2p> ").expect("prompt after an error");
    sh.send_line("bogus").expect("send");
    sh.expect("unknown command").expect("unknown command");
    sh.expect("rs2p> ").expect("prompt");

    // Output up to the next prompt, after one command.
    fn run(sh: &mut impl Expect, line: &str) -> String {
        sh.send_line(line).expect("send");
        let seen = sh
            .expect("rs2p> ")
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        String::from_utf8_lossy(seen.before()).into_owned()
    }
    // Strict values: null (a delete), integers beyond 64 bits, broken JSON
    // are refused, with what to do; -s stores any text as a string.
    let out = run(&mut sh, "SET nul null");
    assert!(out.contains("error: null would delete nul"), "{out}");
    assert!(out.contains("`del nul`"), "{out}");
    let out = run(&mut sh, "set big 99999999999999999999");
    assert!(
        out.contains("error: integer 99999999999999999999 is out of range"),
        "{out}"
    );
    let out = run(&mut sh, "set br {bad json");
    assert!(out.contains("error: VALUE is not valid JSON"), "{out}");
    assert!(out.contains("set -s"), "{out}");
    let out = run(&mut sh, "get br");
    assert!(out.contains("(not found)"), "{out}");
    assert!(run(&mut sh, "set -s br {bad json").contains("ok"));
    assert!(run(&mut sh, "Get br").contains("\"{bad json\""));
    // A delta that is not a map is named as such.
    let out = run(&mut sh, "delta newmap \"text\"");
    assert!(out.contains("the delta is a str, not a map"), "{out}");
    // Keys print so that they can be typed back; patterns select them.
    assert!(run(&mut sh, "set \"two words\" 2").contains("ok"));
    assert!(run(&mut sh, "set user:1 one").contains("ok"));
    assert!(run(&mut sh, "set user:2 two").contains("ok"));
    let out = run(&mut sh, "KEYS");
    assert!(out.contains("\"two words\""), "{out}");
    let out = run(&mut sh, "keys user:*");
    assert!(out.contains("user:1") && out.contains("user:2"), "{out}");
    assert!(!out.contains("greeting"), "{out}");
    let out = run(&mut sh, "items user:?");
    assert!(out.contains("user:1 = \"one\"  (by this node, "), "{out}");
    assert!(out.contains(" ago)"), "{out}");
    assert!(!out.contains("t="), "{out}");
    // Tab completes commands, then keys.
    sh.send("ge\t").expect("send");
    sh.send("greet\t").expect("send");
    sh.send_line("").expect("send");
    sh.expect("\"hello\"").expect("get greeting, completed");
    sh.expect("rs2p> ").expect("prompt");
    run(&mut sh, "clear");

    sh.send_line(format!("connect 127.0.0.1:{}", lp.port))
        .expect("send");
    sh.expect("connected to 127.0.0.1:").expect("connected");
    sh.expect("rs2p> ").expect("prompt");
    // peers, until the handshake is done.
    let deadline = Instant::now() + T;
    loop {
        sh.send_line("peers").expect("send");
        let seen = sh.expect("rs2p> ").expect("prompt after peers");
        let seen = String::from_utf8_lossy(seen.before()).into_owned();
        if seen.contains(&lp.id) {
            assert!(seen.contains("outgoing"), "{seen}");
            break;
        }
        assert!(Instant::now() < deadline, "peer never listed: {seen}");
        std::thread::sleep(POLL);
    }
    // Both ways: the peer got the shell's keys, the shell the peer's.
    peer.ok(json!({"op": "wait", "key": "greeting", "value": "hello"}));
    let deadline = Instant::now() + T;
    loop {
        sh.send_line("get from_peer").expect("send");
        let seen = sh.expect("rs2p> ").expect("prompt after get");
        if String::from_utf8_lossy(seen.before()).contains("[1,\"two\"]") {
            break;
        }
        assert!(Instant::now() < deadline, "from_peer never arrived");
        std::thread::sleep(POLL);
    }

    // The peer's key is leased to it: the refusal says for how long, with
    // the id shortened, and why a restarted node may be locked out.
    let short = format!("{}…{}", &lp.id[..4], &lp.id[lp.id.len() - 4..]);
    wait_until_after(dump_meta(&peer.ok(json!({"op": "dump"})), "from_peer").1);
    let out = run(&mut sh, "set from_peer 1");
    assert!(
        out.contains(&format!("key \"from_peer\" is leased by {short} for ")),
        "{out}"
    );
    assert!(out.contains(" m more"), "{out}");
    assert!(out.contains("only with --data-dir"), "{out}");
    assert!(!out.contains(&lp.id), "{out}");

    // watch prints the peer's writes, and peers joining and leaving, as
    // they happen.
    sh.send_line("watch").expect("send");
    sh.expect("watching updates: on").expect("watch on");
    sh.expect("rs2p> ").expect("prompt");
    peer.ok(json!({"op": "set", "key": "live", "value": 42}));
    sh.expect(format!("[update] live = 42  (by {short})"))
        .expect("watched update");
    let shell_addr = banner
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the shell's address in its banner")
        .to_string();
    let (mut third, l3) = Proc::json_node("third", &["--connect", &shell_addr]);
    let short3 = format!("{}…{}", &l3.id[..4], &l3.id[l3.id.len() - 4..]);
    sh.expect(format!("[peer joined] {short3}"))
        .expect("watched join");
    third.ok(json!({"op": "close"}));
    sh.expect(format!("[peer left] {short3}"))
        .expect("watched leave");

    sh.send_line("quit").expect("send");
    sh.expect(Eof).expect("the shell exits");
    let deadline = Instant::now() + T;
    let status = loop {
        let status = sh.get_process().status().expect("status");
        let text = format!("{status:?}");
        if !text.contains("StillAlive") {
            break text;
        }
        assert!(Instant::now() < deadline, "shell still running");
        std::thread::sleep(POLL);
    };
    assert!(
        status.starts_with("Exited(") && status.ends_with(", 0)"),
        "{status}"
    );
    let shell_id = banner
        .split("rs2p node ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the shell's id in its banner")
        .to_string();
    peer.event("the shell's peer_left", |e| {
        e["event"] == "peer_left" && e["id"] == shell_id.as_str()
    });
}

/// `rs2p tls-keygen` writes a certificate and key and prints the
/// fingerprint; nodes started with those files and pinning each other's
/// fingerprints replicate over TLS; TLS options without `--transport ssl`
/// and malformed fingerprints are refused.
#[test]
fn tls_keygen_and_pinned_nodes() {
    let dir = std::env::temp_dir().join(format!("rs2p-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let keygen = |name: &str| {
        let (cert, key) = (path(&format!("{name}.pem")), path(&format!("{name}.key")));
        let out = run_with_input(&["tls-keygen", "--cert", &cert, "--key", &key], "");
        assert!(out.status.success(), "{out:?}");
        let fp = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(fp.len(), 64, "{fp}");
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()), "{fp}");
        (cert, key, fp)
    };
    let (cert_a, key_a, fp_a) = keygen("a");
    let (cert_b, key_b, fp_b) = keygen("b");
    assert_ne!(fp_a, fp_b);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_a)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    }
    // Existing files are not overwritten without --force.
    let again = run_with_input(&["tls-keygen", "--cert", &cert_a, "--key", &key_a], "");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("cannot write"));

    let tls = |cert: &str, key: &str| {
        vec![
            "--transport".to_string(),
            "ssl".into(),
            "--tls-cert".into(),
            cert.into(),
            "--tls-key".into(),
            key.into(),
            "--tls-pin".into(),
            fp_a.clone(),
            "--tls-pin".into(),
            fp_b.clone(),
        ]
    };
    let args_a = tls(&cert_a, &key_a);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let (mut a, la) = Proc::json_node("tls-a", &args_a);
    let target = format!("127.0.0.1:{}", la.port);
    let mut args_b = tls(&cert_b, &key_b);
    args_b.extend(["--connect".to_string(), target]);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let (mut b, _) = Proc::json_node("tls-b", &args_b);
    b.event("peer_joined", |e| {
        e["event"] == "peer_joined" && e["id"] == la.id.as_str()
    });
    a.ok(json!({"op": "set", "key": "over-tls", "value": "pinned"}));
    b.ok(json!({"op": "wait", "key": "over-tls", "value": "pinned"}));
    // A node that does not pin A's certificate refuses it when dialling.
    let (mut c, _) = Proc::json_node("tls-c", &["--transport", "ssl", "--tls-pin", &fp_b]);
    let reply = c.req(json!({"op": "connect", "host": "127.0.0.1", "port": la.port}));
    assert_eq!(reply["ok"], false, "unpinned server accepted: {reply}");
    let msg = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("certificate"), "{reply}");
    c.ok(json!({"op": "close"}));
    a.ok(json!({"op": "close"}));
    b.ok(json!({"op": "close"}));
    assert!(a.exit_status().success() && b.exit_status().success());

    let out = run_with_input(&["node", "--json", "--tls-pin", &fp_a], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("need --transport ssl"));
    let out = run_with_input(&["node", "--transport", "ssl", "--tls-pin", "abc"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));
    let out = run_with_input(&["node", "--transport", "ssl", "--tls-cert", &cert_a], "");
    assert_eq!(out.status.code(), Some(2), "--tls-cert needs --tls-key");
    let _ = std::fs::remove_dir_all(&dir);
}
