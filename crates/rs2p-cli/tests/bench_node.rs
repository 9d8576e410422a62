//! Functional test of `rs2p bench-node`, the adapter `rs2p bench` drives
//! (the line protocol of docs/benchmarks.md): two processes, connect,
//! trace/set/update, watch/count, burst, stats, errors, quit. No timing
//! assertions; every wait has a deadline so a stuck child fails the test.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

const BIN: &str = env!("CARGO_BIN_EXE_rs2p");
const T: Duration = Duration::from_secs(20);
/// Interval of the polling loops (each has a deadline).
const POLL: Duration = Duration::from_millis(20);

struct Node {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Node {
    fn start(name: &'static str) -> Node {
        let mut child = Command::new(BIN)
            .args(["bench-node", "--host", "127.0.0.1", "--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {BIN}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Node {
            name,
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, cmd: Json) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next event of `kind`; every line on stdout must be a JSON object
    /// with `ev` and an integer `t`. Other kinds are skipped, except
    /// `error`, which fails the test.
    fn expect(&mut self, kind: &str) -> Json {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => panic!("{}: no `{kind}` within {T:?}", self.name),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: stdout closed while waiting for `{kind}`", self.name)
                }
            };
            let j: Json = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: stdout line is not JSON ({e}): {line}", self.name));
            let ev = j["ev"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no `ev`: {line}", self.name));
            let t = j["t"]
                .as_i64()
                .unwrap_or_else(|| panic!("{}: no integer `t`: {line}", self.name));
            assert!(
                t > 1_500_000_000_000_000,
                "{}: `t` is not µs since the epoch: {line}",
                self.name
            );
            if ev == kind {
                return j;
            }
            if ev == "error" && kind != "error" {
                panic!(
                    "{}: unexpected error while waiting for `{kind}`: {line}",
                    self.name
                );
            }
        }
    }

    /// Asks for `stats` until `done` holds for the answer (which is
    /// returned); fails after `T`.
    fn stats_until(&mut self, what: &str, done: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + T;
        loop {
            self.send(json!({ "cmd": "stats" }));
            let st = self.expect("stats");
            if done(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {T:?}; last stats {st}",
                self.name
            );
            std::thread::sleep(POLL);
        }
    }

    fn quit(mut self) {
        self.send(json!({ "cmd": "quit" }));
        self.expect("bye");
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{}: exit status {status}", self.name);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: did not exit after quit",
                self.name
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[test]
fn bench_node_protocol() {
    let mut a = Node::start("a");
    let ready = a.expect("ready");
    assert_eq!(ready["impl"], "rs2p");
    assert!(ready["pid"].as_u64().is_some());
    assert!(ready["version"].as_str().is_some());
    assert_eq!(ready["host"], "127.0.0.1");
    let port_a = ready["port"].as_u64().expect("ready.port");
    assert!(port_a > 0);
    let first_peers = a.expect("peers");
    assert_eq!(first_peers["n"], 0);

    let mut b = Node::start("b");
    let port_b = b.expect("ready")["port"].as_u64().unwrap();
    b.expect("peers");

    // trace + watch before anything arrives; watch of 0 keys would count at
    // once, 3 keys waits for x1 and the two burst keys.
    b.send(json!({ "cmd": "trace", "prefix": "x" }));
    assert_eq!(b.expect("ack")["cmd"], "trace");
    b.send(json!({ "cmd": "watch", "count": 3 }));
    assert_eq!(b.expect("ack")["cmd"], "watch");

    let before = now_us();
    b.send(json!({ "cmd": "connect", "host": "127.0.0.1", "port": port_a }));
    let ack = b.expect("ack");
    assert_eq!(ack["cmd"], "connect");
    let t0 = ack["t0"].as_i64().expect("connect ack has t0");
    assert!(t0 >= before && t0 <= ack["t"].as_i64().unwrap());

    // Both sides report the other's listen address.
    let pb = b.expect("peers");
    assert_eq!(pb["n"], 1, "{pb}");
    assert_eq!(pb["peers"][0], format!("127.0.0.1:{port_a}"));
    let pa = a.expect("peers");
    assert_eq!(pa["n"], 1, "{pa}");
    assert_eq!(pa["peers"][0], format!("127.0.0.1:{port_b}"));

    a.send(json!({ "cmd": "set", "key": "x1", "value": "hello" }));
    let set = a.expect("set");
    assert_eq!(set["key"], "x1");
    assert!(set["t_end"].as_i64().unwrap() >= set["t"].as_i64().unwrap());
    let up = b.expect("update");
    assert_eq!(up["key"], "x1");
    assert!(up["t"].as_i64().unwrap() >= set["t"].as_i64().unwrap());

    a.send(json!({ "cmd": "burst", "prefix": "b-", "count": 2, "size": 16 }));
    let done = a.expect("burst_done");
    assert_eq!(done["count"], 2);
    assert_eq!(done["errors"], 0);
    assert!(done["first_error"].is_null());
    assert!(done["t"].as_i64().unwrap() >= done["t0"].as_i64().unwrap());

    let count = b.expect("count");
    assert!(count["n"].as_u64().unwrap() >= 3, "{count}");

    // A watch that is already satisfied answers at once.
    b.send(json!({ "cmd": "watch", "count": 1 }));
    b.expect("ack");
    assert_eq!(b.expect("count")["n"], 3);

    // `count` reads the dictionary's length, which can run ahead of the
    // task that counts update events: wait for that counter too.
    let st = b.stats_until("3 updates counted", |st| {
        st["updates"].as_u64().is_some_and(|n| n >= 3)
    });
    assert_eq!(st["keys"], 3, "{st}");
    assert_eq!(st["peers"], 1, "{st}");
    assert_eq!(st["exceptions"], 0, "{st}");
    assert!(st["expired"].as_u64().is_some(), "{st}");
    a.send(json!({ "cmd": "stats" }));
    assert_eq!(a.expect("stats")["keys"], 3);

    // Failures are events, not exits.
    a.send(json!({ "cmd": "no-such-command" }));
    assert!(a.expect("error")["error"].as_str().is_some());
    a.send(json!({ "cmd": "set", "key": "x2" }));
    a.expect("error");
    a.send(json!({ "cmd": "connect", "host": "127.0.0.1", "port": 1 }));
    a.expect("error");
    a.send(json!({ "cmd": "stats" }));
    a.expect("stats");

    b.quit();
    a.quit();
}

/// The standard output of a command that must have succeeded (its
/// output and error output in the failure message otherwise).
fn succeeded(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `rs2p bench` end to end on its smallest latency run, with the
/// per-set log: one line per set and node, each a latency it measured.
#[test]
fn bench_latency_run_writes_its_log() {
    let dir = std::env::temp_dir().join(format!(
        "rs2p-bench-log-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("latency.log");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(BIN)
        .args([
            "bench", "--only", "latency", "--impl", "rs2p", "--nodes", "3",
        ])
        .args([
            "--runs",
            "1",
            "--spacing-ms",
            "5",
            "--no-write",
            "--root",
            root,
        ])
        .arg("--logs")
        .arg(&dir)
        .arg("--latency-log")
        .arg(&log)
        .output()
        .expect("runs rs2p bench");
    let text = succeeded(&out);
    assert!(text.contains("propagation p99, N=3"), "{text}");
    let logged = std::fs::read_to_string(&log).expect("the latency log");
    let lines: Vec<Vec<&str>> = logged.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 2 * 200, "two nodes, 200 sets each");
    for l in &lines {
        assert_eq!(l[..2], ["3", "rs2p"], "{l:?}");
        assert!(["1", "2"].contains(&l[3]), "{l:?}");
        assert!(l[4].starts_with('L'), "{l:?}");
        let us: i64 = l[5].parse().expect("microseconds");
        assert!((0..10_000_000).contains(&us), "{l:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scenario 8 (`--only sim`): the simulator's figures in the table, with
/// their targets at the full size only (here `--quick`: 100 nodes).
#[test]
fn bench_reports_the_simulator_s_figures() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(BIN)
        .args(["bench", "--only", "sim", "--impl", "rs2p", "--quick"])
        .args(["--no-write", "--root", root])
        .output()
        .expect("runs rs2p bench");
    let text = succeeded(&out);
    let row = |what: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("8. simulator, 100 nodes, 100 writes") && l.contains(what))
            .map(str::to_owned)
            .collect()
    };
    let missed = row("deliveries missed");
    assert_eq!(missed.len(), 3, "{text}");
    for l in &missed {
        assert!(l.split_whitespace().any(|w| w == "0"), "{l}");
        assert!(!l.contains("met"), "no target below 1,000 nodes: {l}");
    }
    let rmr = row("relative message redundancy");
    assert_eq!(rmr.len(), 2, "{text}");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains(
            "rs2p-sim --nodes 100 --writes 100 --writers all --seed 11 --partition-s 20 --churn 20"
        ),
        "each case says its command: {progress}"
    );
}
