//! `rs2p bench`: rs2p side by side with py2p and js2p.
//!
//! Every node is its own process running an adapter that speaks the line
//! protocol of `rs2p bench-node` ([`crate::node`]): `rs2p bench-node`
//! itself, `crates/rs2p-bench/adapters/py2p_adapter.py` and
//! `crates/rs2p-bench/adapters/js2p_adapter.js`.
//! The harness starts them, links them, drives the seven scenarios of
//! docs/benchmarks.md, prints one table and writes it as markdown and JSON.
//!
//! Timing comes from the nodes: each event carries the wall-clock time (µs)
//! at which it happened inside the node, and all nodes share the machine's
//! clock, so the harness' own scheduling never enters a figure.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};

use crate::node::now_us;

mod formation;
mod restart;

const HOST: &str = "127.0.0.1";

/// Where the py2p and js2p adapters are, from the repository root.
const ADAPTERS: &str = "crates/rs2p-bench/adapters";

/// Options of `rs2p bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Implementations to measure (comma-separated: rs2p, py2p, js2p).
    /// The references need `scripts/setup-peers.sh`; one that is not
    /// installed is reported as such.
    #[arg(long = "impl", value_delimiter = ',', default_value = "rs2p,py2p,js2p")]
    pub impls: Vec<String>,
    /// Small sizes and one run: a smoke test of the harness (a minute or
    /// two), not figures to publish.
    #[arg(long)]
    pub quick: bool,
    /// Runs per figure (default 3, 1 with --quick); the table shows the
    /// median. A reference that does not finish is not run again.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Where to write the results: OUT.md and OUT.json.
    #[arg(long, default_value = "docs/benchmarks")]
    pub out: PathBuf,
    /// Only these scenarios (comma-separated: latency, throughput, join,
    /// memory, wire, formation, restart).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The repository (holds crates/rs2p-bench/adapters/ and .peers/;
    /// default: the current directory if it has the adapters, else where
    /// rs2p was built from).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Keep each node's stderr here (default: a fresh directory under the
    /// system temp directory).
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// Do not write OUT.md / OUT.json, only print the table.
    #[arg(long)]
    pub no_write: bool,
    /// Latency scenario: node counts (comma-separated; default 3,8,16, or
    /// 3,8 with --quick).
    #[arg(long, value_delimiter = ',', value_name = "N")]
    pub nodes: Vec<usize>,
    /// Latency scenario: milliseconds between two sets (default 50, so that
    /// each set crosses an idle mesh).
    #[arg(long, value_name = "MS")]
    pub spacing_ms: Option<u64>,
    /// Throughput scenario: keys written by rs2p (default 10,000) and by
    /// the references (default 3,000), as `K` or `K_RS2P,K_REFERENCES`.
    #[arg(long, value_delimiter = ',', value_name = "K")]
    pub keys: Vec<usize>,
    /// Join scenario: key counts for rs2p (default 10,000 and 100,000); the
    /// references join 10,000 (2,000 with --quick).
    #[arg(long, value_delimiter = ',', value_name = "M")]
    pub join_keys: Vec<usize>,
    /// Restart scenario: keys held (default 1,000,000) and keys rewritten
    /// while the node is down (default 100; a power of ten ≤ 10,000), as
    /// `M,D`.
    #[arg(long, value_delimiter = ',', value_name = "M,D")]
    pub restart_keys: Vec<usize>,
}

// ------------------------------------------------------------------ impls

/// An implementation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Impl {
    Rs2p,
    Py2p,
    Js2p,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Rs2p => "rs2p",
            Impl::Py2p => "py2p",
            Impl::Js2p => "js2p",
        }
    }

    fn parse(s: &str) -> Option<Impl> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rs2p" | "rs" | "rust" => Some(Impl::Rs2p),
            "py2p" | "py" | "python" => Some(Impl::Py2p),
            "js2p" | "js" | "node" => Some(Impl::Js2p),
            _ => None,
        }
    }

    fn is_ref(self) -> bool {
        self != Impl::Rs2p
    }
}

/// Where things are, and how to start an adapter.
struct Env {
    root: PathBuf,
    exe: PathBuf,
    logs: PathBuf,
    seq: AtomicU64,
    /// Versions the adapters reported.
    versions: std::sync::Mutex<BTreeMap<Impl, String>>,
}

impl Env {
    /// An adapter script.
    fn adapter(&self, name: &str) -> PathBuf {
        self.root.join(ADAPTERS).join(name)
    }

    fn python(&self) -> PathBuf {
        self.root.join(".peers/py/bin/python")
    }

    fn js2p_dir(&self) -> PathBuf {
        match std::env::var_os("RS2P_JS2P") {
            Some(p) => PathBuf::from(p),
            None => self.root.join(".peers/js/node_modules/js2p"),
        }
    }

    /// Why an implementation cannot run here, if it cannot.
    fn check(&self, imp: Impl) -> Result<(), String> {
        match imp {
            Impl::Rs2p => Ok(()),
            Impl::Py2p => {
                let adapter = self.adapter("py2p_adapter.py");
                if !adapter.exists() {
                    return Err(format!("{} is missing", adapter.display()));
                }
                let ok = Command::new(self.python())
                    .args(["-c", "import py2p"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    Ok(())
                } else {
                    Err("py2p is not installed (run scripts/setup-peers.sh)".into())
                }
            }
            Impl::Js2p => {
                let adapter = self.adapter("js2p_adapter.js");
                if !adapter.exists() {
                    return Err(format!("{} is missing", adapter.display()));
                }
                if !self.js2p_dir().join("package.json").exists() {
                    return Err("js2p is not installed (run scripts/setup-peers.sh)".into());
                }
                let ok = Command::new("node")
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    Ok(())
                } else {
                    Err("`node` is not on PATH".into())
                }
            }
        }
    }

    fn command(&self, imp: Impl, extra: &[&std::ffi::OsStr]) -> Command {
        let mut c = match imp {
            Impl::Rs2p => {
                let mut c = Command::new(&self.exe);
                c.arg("bench-node");
                c
            }
            Impl::Py2p => {
                let mut c = Command::new(self.python());
                c.arg(self.adapter("py2p_adapter.py"));
                c
            }
            Impl::Js2p => {
                let mut c = Command::new("node");
                c.arg(self.adapter("js2p_adapter.js"));
                c.env("RS2P_JS2P", self.js2p_dir());
                c
            }
        };
        c.args(["--host", HOST, "--port", "0"]);
        c.args(extra);
        c
    }
}

// ------------------------------------------------------------------ nodes

/// An event line of an adapter.
#[derive(Clone, Debug)]
struct Ev {
    ev: String,
    t: i64,
    j: Json,
}

impl Ev {
    fn i64(&self, name: &str) -> Option<i64> {
        self.j.get(name).and_then(Json::as_i64)
    }
    fn u64(&self, name: &str) -> Option<u64> {
        self.j.get(name).and_then(Json::as_u64)
    }
    fn str(&self, name: &str) -> Option<&str> {
        self.j.get(name).and_then(Json::as_str)
    }
}

/// Why waiting for an event ended without it.
#[derive(Debug)]
enum WaitErr {
    /// The deadline passed.
    Timeout(String),
    /// The node reported an error or exited.
    Fail(String),
}

impl std::fmt::Display for WaitErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitErr::Timeout(s) | WaitErr::Fail(s) => f.write_str(s),
        }
    }
}

/// One adapter process.
struct Node {
    imp: Impl,
    label: String,
    child: Child,
    cmds: std::sync::mpsc::Sender<String>,
    rx: mpsc::UnboundedReceiver<Ev>,
    /// The latest `peers` event: (t, listen addresses).
    peers: watch::Receiver<(i64, Vec<String>)>,
    pending: VecDeque<Ev>,
    /// The latest `progress` count.
    progress: Option<u64>,
    pid: u32,
    port: u16,
    version: String,
}

impl Node {
    /// Starts an adapter and waits for its `ready` line.
    async fn start(env: &Env, imp: Impl, tag: &str) -> Result<Node, String> {
        Node::start_with(env, imp, tag, &[]).await
    }

    /// [`Node::start`] with extra arguments for the adapter.
    async fn start_with(
        env: &Env,
        imp: Impl,
        tag: &str,
        extra: &[&std::ffi::OsStr],
    ) -> Result<Node, String> {
        let n = env.seq.fetch_add(1, Ordering::Relaxed);
        let label = format!("{}-{tag}-{n}", imp.name());
        let log_path = env.logs.join(format!("{label}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let mut child = env
            .command(imp, extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start the {} adapter: {e}", imp.name()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdin = child.stdin.take().expect("piped stdin");

        let (tx, rx) = mpsc::unbounded_channel();
        let (ptx, prx) = watch::channel((0i64, Vec::<String>::new()));
        let lbl = label.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let j: Json = match serde_json::from_str(&line) {
                    Ok(j) => j,
                    Err(_) => {
                        eprintln!("bench: {lbl}: not JSON on stdout: {line}");
                        continue;
                    }
                };
                let ev = Ev {
                    ev: j.get("ev").and_then(Json::as_str).unwrap_or("").to_string(),
                    t: j.get("t").and_then(Json::as_i64).unwrap_or(0),
                    j,
                };
                if ev.ev == "peers" {
                    let list =
                        ev.j.get("peers")
                            .and_then(Json::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                    ptx.send_replace((ev.t, list));
                } else if tx.send(ev).is_err() {
                    break;
                }
            }
        });
        // Commands are written by a thread of their own, so that the
        // harness never blocks on a node that is busy.
        let (ctx, crx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in crx {
                if stdin.write_all(line.as_bytes()).is_err() || stdin.flush().is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        let mut node = Node {
            imp,
            label,
            child,
            cmds: ctx,
            rx,
            peers: prx,
            pending: VecDeque::new(),
            progress: None,
            pid,
            port: 0,
            version: String::new(),
        };
        let ready = node
            .expect("ready", Instant::now() + Duration::from_secs(30))
            .await
            .map_err(|e| {
                format!(
                    "{} did not start: {e} (log: {})",
                    node.label,
                    log_path.display()
                )
            })?;
        node.port = ready
            .u64("port")
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("ready without a port")?;
        node.version = ready.str("version").unwrap_or("?").to_string();
        if let Ok(mut v) = env.versions.lock() {
            v.insert(imp, node.version.clone());
        }
        Ok(node)
    }

    fn send(&self, j: Json) {
        let mut line = j.to_string();
        line.push('\n');
        let _ = self.cmds.send(line);
    }

    /// The next event of `kind` (earlier events of other kinds are kept for
    /// later; `progress` only updates [`Node::progress`]).
    async fn expect(&mut self, kind: &str, deadline: Instant) -> Result<Ev, WaitErr> {
        if let Some(i) = self.pending.iter().position(|e| e.ev == kind) {
            return Ok(self.pending.remove(i).expect("index in range"));
        }
        loop {
            let ev = match tokio::time::timeout_at(deadline.into(), self.rx.recv()).await {
                Err(_) => {
                    return Err(WaitErr::Timeout(format!(
                        "{}: no `{kind}` in time",
                        self.label
                    )))
                }
                Ok(None) => {
                    let status = self.child.try_wait().ok().flatten();
                    return Err(WaitErr::Fail(format!(
                        "{} exited ({})",
                        self.label,
                        status.map_or("still running".into(), |s| s.to_string())
                    )));
                }
                Ok(Some(ev)) => ev,
            };
            if ev.ev == kind {
                return Ok(ev);
            }
            match ev.ev.as_str() {
                "progress" => self.progress = ev.u64("n"),
                "error" => {
                    return Err(WaitErr::Fail(format!(
                        "{}: {}",
                        self.label,
                        ev.str("error").unwrap_or("error")
                    )))
                }
                _ => self.pending.push_back(ev),
            }
        }
    }

    fn peer_list(&self) -> Vec<String> {
        self.peers.borrow().1.clone()
    }

    /// CPU time (ns, from schedstat) and context switches (voluntary and
    /// not) of all the process' threads so far.
    fn sched(&self) -> (u64, u64) {
        let mut ns = 0u64;
        let mut cs = 0u64;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return (0, 0);
        };
        for t in tasks.flatten() {
            let dir = t.path();
            if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(s) = std::fs::read_to_string(dir.join("status")) {
                for l in s.lines() {
                    if l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                    {
                        cs += l
                            .split_whitespace()
                            .nth(1)
                            .and_then(|x| x.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                }
            }
        }
        (ns, cs)
    }

    /// VmHWM (peak resident set) and VmRSS of the process, in KiB.
    fn memory_kib(&self) -> (Option<u64>, Option<u64>) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

/// CPU time and context switches summed over the nodes (see
/// [`Node::sched`]).
fn sched_all(nodes: &[Node]) -> (u64, u64) {
    nodes
        .iter()
        .map(Node::sched)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Asks every node to quit; kills those that do not exit within 5 s.
async fn shutdown(nodes: Vec<Node>) {
    for n in &nodes {
        n.send(json!({ "cmd": "quit" }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for mut n in nodes {
        loop {
            match n.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Starts `n` nodes at once.
async fn start_nodes(env: &Env, imp: Impl, n: usize, tag: &str) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        match Node::start(env, imp, tag).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                shutdown(nodes).await;
                return Err(e);
            }
        }
    }
    Ok(nodes)
}

/// `stats` of each node, in node order (`None`: no answer within 3 s).
async fn gather_stats_each(nodes: &mut [Node]) -> Vec<Option<Ev>> {
    for n in nodes.iter() {
        n.send(json!({ "cmd": "stats" }));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut out = Vec::new();
    for n in nodes.iter_mut() {
        out.push(n.expect("stats", deadline).await.ok());
    }
    out
}

/// `stats` of the nodes that answer.
async fn gather_stats(nodes: &mut [Node]) -> Vec<Ev> {
    gather_stats_each(nodes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Notes on what the nodes counted: exceptions, expired broadcasts, slow
/// peers dropped.
fn stats_notes(imp: Impl, stats: &[Ev]) -> Vec<String> {
    let sum = |f: &str| stats.iter().filter_map(|s| s.u64(f)).sum::<u64>();
    let mut notes = Vec::new();
    let exc = sum("exceptions");
    if exc > 0 {
        let last = stats
            .iter()
            .filter_map(|s| s.str("last_exception"))
            .next_back()
            .map(short)
            .unwrap_or_default();
        notes.push(format!(
            "{}: {exc} exception(s) on the nodes, last: {last}",
            imp.name()
        ));
    }
    let expired = sum("expired");
    if expired > 0 {
        notes.push(format!(
            "{}: {expired} broadcast(s) refused as expired",
            imp.name()
        ));
    }
    let slow = sum("slow_peers_dropped");
    if slow > 0 {
        notes.push(format!(
            "{}: {slow} peer(s) dropped as too slow",
            imp.name()
        ));
    }
    notes
}

fn short(s: &str) -> String {
    let s = s.trim().lines().last().unwrap_or("").trim();
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s.to_string()
    }
}

// ------------------------------------------------------------------ mesh

/// The shape of a formed mesh.
#[derive(Debug, Clone)]
struct Shape {
    links: usize,
    min_degree: usize,
    max_degree: usize,
    /// Hops from node 0 to the farthest node.
    hops_from_0: usize,
    /// Peers of node 0.
    degree_0: usize,
    settled: bool,
    /// From the last dial of the chain to the last change of any peer
    /// list, in ms (times read inside the nodes).
    settle_ms: f64,
    /// From the first dial of the chain to the last change of any peer
    /// list, in ms (includes the harness' 200 ms of quiet after each dial).
    form_ms: f64,
}

/// Dials each node to the one before it (a chain), one link at a time:
/// the next dial waits until the node has a handshaken peer and the peer
/// lists have been quiet for 200 ms (py2p's mesh tends to collapse when
/// many dials and peer-list dials cross, PROTOCOL.md §11 Q1/Q2/Q4).
///
/// Returns when the first and the last dial began (`t0` of their acks, µs).
async fn chain(nodes: &mut [Node], deadline: Instant) -> Result<(i64, i64), WaitErr> {
    let mut first_dial = None;
    let mut last_dial = now_us();
    for i in 1..nodes.len() {
        let port = nodes[i - 1].port;
        nodes[i].send(json!({ "cmd": "connect", "host": HOST, "port": port }));
        let ack = nodes[i].expect("ack", deadline).await?;
        last_dial = ack.i64("t0").unwrap_or(ack.t);
        first_dial.get_or_insert(last_dial);
        let snap = |nodes: &[Node]| nodes[..=i].iter().map(Node::peer_list).collect::<Vec<_>>();
        let mut last = snap(nodes);
        let mut changed = Instant::now();
        loop {
            if Instant::now() >= deadline {
                return Err(WaitErr::Timeout(format!(
                    "{} has no peer after its connect",
                    nodes[i].label
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = snap(nodes);
            if now != last {
                last = now;
                changed = Instant::now();
            }
            if !last[i].is_empty() && changed.elapsed() >= Duration::from_millis(200) {
                break;
            }
        }
    }
    Ok((first_dial.unwrap_or(last_dial), last_dial))
}

/// Starts `n` nodes, links them as a chain and waits for the mesh to
/// settle; up to 3 attempts with fresh processes (the references' meshes
/// sometimes fall apart while forming). Returns the nodes, the shape and
/// the number of attempts.
async fn form_mesh(
    env: &Env,
    imp: Impl,
    n: usize,
    tag: &str,
) -> Result<(Vec<Node>, Shape, usize), String> {
    let mut why = String::new();
    for attempt in 1..=3 {
        let mut nodes = start_nodes(env, imp, n, tag).await?;
        let deadline = Instant::now() + Duration::from_secs(10 + 2 * n as u64);
        let res = match chain(&mut nodes, deadline).await {
            Ok((first_dial, last_dial)) => {
                settle(&nodes, Duration::from_secs(1), Duration::from_secs(15))
                    .await
                    .map(|mut sh| {
                        let last_change = nodes
                            .iter()
                            .map(|n| n.peers.borrow().0)
                            .max()
                            .unwrap_or(last_dial);
                        sh.settle_ms = (last_change - last_dial).max(0) as f64 / 1000.0;
                        sh.form_ms = (last_change - first_dial).max(0) as f64 / 1000.0;
                        sh
                    })
            }
            Err(e) => Err(format!("linking the chain: {e}")),
        };
        match res {
            Ok(sh) => return Ok((nodes, sh, attempt)),
            Err(e) => {
                let stats = gather_stats(&mut nodes).await;
                why = e;
                if let Some(note) = stats_notes(imp, &stats).into_iter().next() {
                    let _ = write!(why, "; {note}");
                }
                eprint!("(mesh attempt {attempt} failed: {why}) ");
                shutdown(nodes).await;
            }
        }
    }
    Err(format!("no mesh of {n} nodes in 3 attempts: {why}"))
}

/// Graph of the nodes' peer lists; `None` when not connected.
fn shape(nodes: &[Node], lists: &[Vec<String>]) -> Option<Shape> {
    let by_port: HashMap<u16, usize> = nodes.iter().enumerate().map(|(i, n)| (n.port, i)).collect();
    let n = nodes.len();
    let mut adj = vec![std::collections::BTreeSet::new(); n];
    for (i, list) in lists.iter().enumerate() {
        for a in list {
            let port = a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            if let Some(&j) = port.and_then(|p| by_port.get(&p)) {
                if j != i {
                    adj[i].insert(j);
                    adj[j].insert(i);
                }
            }
        }
    }
    let mut dist = vec![usize::MAX; n];
    dist[0] = 0;
    let mut q = VecDeque::from([0usize]);
    while let Some(i) = q.pop_front() {
        for &j in &adj[i] {
            if dist[j] == usize::MAX {
                dist[j] = dist[i] + 1;
                q.push_back(j);
            }
        }
    }
    if dist.contains(&usize::MAX) {
        return None;
    }
    Some(Shape {
        links: adj.iter().map(|s| s.len()).sum::<usize>() / 2,
        min_degree: adj.iter().map(|s| s.len()).min().unwrap_or(0),
        max_degree: adj.iter().map(|s| s.len()).max().unwrap_or(0),
        hops_from_0: dist.iter().copied().max().unwrap_or(0),
        degree_0: adj[0].len(),
        settled: true,
        settle_ms: 0.0,
        form_ms: 0.0,
    })
}

/// Waits until the peer lists have not changed for `quiet` and the mesh is
/// connected (at most `max`; a connected but still changing mesh is used
/// then, and said so).
async fn settle(nodes: &[Node], quiet: Duration, max: Duration) -> Result<Shape, String> {
    let start = Instant::now();
    let snap = |nodes: &[Node]| nodes.iter().map(Node::peer_list).collect::<Vec<_>>();
    let mut last = snap(nodes);
    let mut changed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = snap(nodes);
        if now != last {
            last = now;
            changed = Instant::now();
        }
        let sh = shape(nodes, &last);
        if let Some(sh) = &sh {
            if changed.elapsed() >= quiet {
                return Ok(sh.clone());
            }
        }
        if start.elapsed() >= max {
            return match sh {
                Some(mut sh) => {
                    sh.settled = false;
                    Ok(sh)
                }
                None => Err(format!(
                    "the mesh did not connect within {} s (peers per node: {:?})",
                    max.as_secs(),
                    last.iter().map(Vec::len).collect::<Vec<_>>()
                )),
            };
        }
    }
}

fn shape_note(sh: &Shape) -> String {
    format!(
        "mesh: {} links, degree {}-{} (node 0: {}), {} hop(s) from node 0 to the farthest{}",
        sh.links,
        sh.min_degree,
        sh.max_degree,
        sh.degree_0,
        sh.hops_from_0,
        if sh.settled {
            ""
        } else {
            " (peer lists still changing)"
        }
    )
}

// ------------------------------------------------------------------ runs

/// The figures of one run.
#[derive(Debug, Default, Clone)]
struct RunOut {
    figures: BTreeMap<&'static str, f64>,
    /// Anomalies, shown as footnotes of the table.
    notes: Vec<String>,
    /// Context (mesh shapes), listed with the secondary figures.
    info: Vec<String>,
}

type RunResult = Result<RunOut, String>;

fn secs(us: i64) -> f64 {
    us as f64 / 1e6
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn dnf(limit: Duration, what: &str) -> String {
    format!("did not finish in {} s ({what})", limit.as_secs())
}

/// How far the nodes got, for a "did not finish" reason.
async fn progress_detail(nodes: &mut [Node], of: &[usize], target: usize) -> String {
    let imp = nodes[0].imp;
    let stats = gather_stats_each(nodes).await;
    let slowest = of
        .iter()
        .map(|&i| {
            stats[i]
                .as_ref()
                .and_then(|s| s.u64("keys"))
                .or(nodes[i].progress)
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(0);
    let mut s = format!(
        "slowest node had {} of {} keys",
        fmt_int(slowest as f64),
        fmt_int(target as f64)
    );
    let all: Vec<Ev> = stats.into_iter().flatten().collect();
    let notes = stats_notes(imp, &all);
    if !notes.is_empty() {
        let _ = write!(s, "; {}", notes.join("; "));
    }
    s
}

/// Scenario 1: N nodes as a chain, mesh formed; spaced sets on node 0; per
/// set, the time until every node has it.
/// Bytes sent on the loopback interface so far (Linux), headers included.
fn loopback_bytes() -> Option<u64> {
    std::fs::read_to_string("/sys/class/net/lo/statistics/tx_bytes")
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn run_latency(env: &Env, imp: Impl, n: usize, plan: &Plan) -> RunResult {
    let limit = plan.lat_limit;
    let (mut nodes, sh, attempts) = form_mesh(env, imp, n, &format!("lat{n}")).await?;
    let start = Instant::now();
    let deadline = start + limit;
    let res = async {
        for node in nodes.iter_mut().skip(1) {
            node.send(json!({ "cmd": "trace", "prefix": "L" }));
            node.expect("ack", deadline).await.map_err(|e| e.to_string())?;
        }
        let sets = plan.lat_sets;
        let spacing = Duration::from_millis(plan.lat_spacing_ms);
        let mut t_set: HashMap<String, i64> = HashMap::new();
        // Idle cost of the mesh (timers, polling), subtracted below.
        let idle0 = sched_all(&nodes);
        let lo0 = loopback_bytes();
        let idle_from = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sched0 = sched_all(&nodes);
        let lo_idle = loopback_bytes();
        let stats0 = gather_stats(&mut nodes).await;
        let idle_s = idle_from.elapsed().as_secs_f64();
        let t_begin = Instant::now();
        for j in 0..sets {
            tokio::time::sleep_until((t_begin + spacing * j as u32).into()).await;
            let key = format!("L{j:04}");
            nodes[0].send(json!({ "cmd": "set", "key": key, "value": format!("v{j:07}") }));
            let ev = nodes[0].expect("set", deadline).await.map_err(|e| match e {
                WaitErr::Timeout(_) => dnf(limit, &format!("{j} of {sets} sets made")),
                WaitErr::Fail(s) => s,
            })?;
            t_set.insert(key, ev.t);
        }
        // Every node's update times; a set that some node never gets within
        // 10 s after the last one counts as lost.
        let collect_until = (Instant::now() + Duration::from_secs(10)).min(deadline);
        let mut latest: HashMap<String, i64> = HashMap::new();
        let mut got: HashMap<String, usize> = HashMap::new();
        let mut incomplete = 0usize;
        for node in nodes.iter_mut().skip(1) {
            // The first time this node held each key (a reference may report
            // a key twice).
            let mut first: HashMap<String, i64> = HashMap::new();
            while first.len() < sets {
                match node.expect("update", collect_until).await {
                    Ok(ev) => {
                        let Some(key) = ev.str("key").map(str::to_owned) else {
                            continue;
                        };
                        if t_set.contains_key(&key) {
                            first.entry(key).or_insert(ev.t);
                        }
                    }
                    Err(WaitErr::Timeout(_)) => {
                        incomplete += 1;
                        break;
                    }
                    Err(WaitErr::Fail(s)) => return Err(s),
                }
            }
            for (key, t) in first {
                let e = latest.entry(key.clone()).or_insert(t);
                *e = (*e).max(t);
                *got.entry(key).or_default() += 1;
            }
        }
        let sched1 = sched_all(&nodes);
        let lo1 = loopback_bytes();
        let busy_s = t_begin.elapsed().as_secs_f64();
        let idle_ns = (sched0.0 - idle0.0) as f64 / idle_s * busy_s;
        let idle_cs = (sched0.1 - idle0.1) as f64 / idle_s * busy_s;
        let mut lat: Vec<f64> = Vec::with_capacity(sets);
        let mut lost = 0usize;
        for (key, t0) in &t_set {
            match (latest.get(key), got.get(key)) {
                (Some(t1), Some(&c)) if c == n - 1 => lat.push((t1 - t0) as f64 / 1000.0),
                _ => {
                    lost += 1;
                    lat.push(f64::INFINITY);
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        let p50 = percentile(&lat, 50.0);
        let p99 = percentile(&lat, 99.0);
        let stats = gather_stats(&mut nodes).await;
        let mut out = RunOut::default();
        out.info.push(format!("N={n}: {}", shape_note(&sh)));
        if attempts > 1 {
            out.notes.push(format!("{}: the mesh of {n} formed at attempt {attempts}", imp.name()));
        }
        out.notes.extend(stats_notes(imp, &stats));
        if lost > 0 {
            out.notes.push(format!(
                "N={n}: {lost} of {sets} sets did not reach every node within 10 s ({incomplete} node(s) incomplete)"
            ));
        }
        if !p99.is_finite() {
            return Err(format!(
                "{lost} of {sets} sets never reached every node{}",
                stats_notes(imp, &stats)
                    .first()
                    .map(|s| format!("; {s}"))
                    .unwrap_or_default()
            ));
        }
        out.figures.insert("p50_ms", p50);
        out.figures.insert("p99_ms", p99);
        out.figures.insert("lost", lost as f64);
        // Broadcast frames delivered per set (first receipts + duplicates),
        // where the node counts them (rs2p).
        let per_set = |f: &str| {
            let v: Vec<u64> = stats.iter().filter_map(|s| s.u64(f)).collect();
            (v.len() == stats.len() && !v.is_empty())
                .then(|| v.iter().sum::<u64>() as f64 / sets as f64)
        };
        if let (Some(b), Some(d)) = (per_set("broadcasts"), per_set("duplicates")) {
            out.figures.insert("frames_per_set", b + d);
            out.figures.insert("duplicates_per_set", d);
        }
        if let Some(p) = per_set("relays_pruned") {
            out.figures.insert("relays_pruned_per_set", p);
        }
        // What the nodes sent while the sets propagated, as they count it
        // (rs2p: frames with their prefixes, no TCP/IP headers); the
        // loopback figure below has the headers but also whatever else the
        // machine sends on loopback meanwhile.
        let sent = |st: &[Ev]| -> Option<u64> {
            let v: Vec<u64> = st.iter().filter_map(|s| s.u64("bytes_sent")).collect();
            (v.len() == st.len() && !v.is_empty()).then(|| v.iter().sum())
        };
        if let (Some(b0), Some(b1)) = (sent(&stats0), sent(&stats)) {
            out.figures.insert("bytes_sent_per_set", b1.saturating_sub(b0) as f64 / sets as f64);
        }
        // Of which whispers (rs2p: tree announcements, grafts, prunes,
        // pings), and the announcement frames among them.
        let total = |st: &[Ev], f: &str| -> Option<u64> {
            let v: Vec<u64> = st.iter().filter_map(|s| s.u64(f)).collect();
            (v.len() == st.len() && !v.is_empty()).then(|| v.iter().sum())
        };
        for (field, figure) in [
            ("whisper_bytes_sent", "whisper_bytes_per_set"),
            ("announcements", "announcements_per_set"),
        ] {
            if let (Some(a), Some(b)) = (total(&stats0, field), total(&stats, field)) {
                out.figures.insert(figure, b.saturating_sub(a) as f64 / sets as f64);
            }
        }
        out.figures.insert(
            "cpu_ms_per_set",
            ((sched1.0 - sched0.0) as f64 - idle_ns).max(0.0) / 1e6 / sets as f64,
        );
        out.figures.insert(
            "ctx_switches_per_set",
            ((sched1.1 - sched0.1) as f64 - idle_cs).max(0.0) / sets as f64,
        );
        // Every byte the loopback interface carried (IP and TCP headers
        // included) while the sets propagated, less the mesh's idle traffic.
        if let (Some(a), Some(b), Some(c)) = (lo0, lo_idle, lo1) {
            let idle_rate = (b - a) as f64 / idle_s;
            let used = (c - b) as f64 - idle_rate * busy_s;
            out.figures.insert("loopback_bytes_per_set", used.max(0.0) / sets as f64);
        }
        out.figures.insert(
            "idle_cpu_ms_per_s",
            (sched0.0 - idle0.0) as f64 / 1e6 / idle_s,
        );
        Ok(out)
    }
    .await;
    shutdown(nodes).await;
    res
}

/// Scenario 2: N=8 chain; node 0 writes K keys as fast as its API allows;
/// local rate and time until every node has every key.
async fn run_throughput(env: &Env, imp: Impl, keys: usize, plan: &Plan) -> RunResult {
    let n = plan.tp_nodes;
    let limit = plan.tp_limit;
    let (mut nodes, sh, attempts) = form_mesh(env, imp, n, "tp").await?;
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    let res = async {
        for node in nodes.iter_mut().skip(1) {
            node.send(json!({ "cmd": "watch", "count": keys }));
            node.expect("ack", setup_deadline)
                .await
                .map_err(|e| e.to_string())?;
        }
        let sched0 = sched_all(&nodes);
        let deadline = Instant::now() + limit;
        nodes[0]
            .send(json!({ "cmd": "burst", "prefix": "T", "count": keys, "size": plan.tp_value }));
        let done = match nodes[0].expect("burst_done", deadline).await {
            Ok(ev) => ev,
            Err(WaitErr::Timeout(_)) => {
                return Err(dnf(limit, "node 0 was still writing"));
            }
            Err(WaitErr::Fail(s)) => return Err(s),
        };
        let t0 = done.i64("t0").unwrap_or(done.t);
        let errors = done.u64("errors").unwrap_or(0);
        let mut last = done.t;
        let others: Vec<usize> = (1..n).collect();
        for i in 1..n {
            match nodes[i].expect("count", deadline).await {
                Ok(ev) => last = last.max(ev.t),
                Err(WaitErr::Timeout(_)) => {
                    let d = progress_detail(&mut nodes, &others, keys).await;
                    return Err(dnf(limit, &d));
                }
                Err(WaitErr::Fail(s)) => return Err(s),
            }
        }
        let stats = gather_stats(&mut nodes).await;
        let mut out = RunOut::default();
        out.info.push(format!("throughput: {}", shape_note(&sh)));
        if attempts > 1 {
            out.notes.push(format!(
                "{}: the mesh of {n} formed at attempt {attempts}",
                imp.name()
            ));
        }
        out.notes.extend(stats_notes(imp, &stats));
        if errors > 0 {
            out.notes.push(format!(
                "{}: {errors} of {keys} sets refused locally ({})",
                imp.name(),
                done.str("first_error").unwrap_or("?")
            ));
        }
        let sched1 = sched_all(&nodes);
        out.figures.insert(
            "cpu_ms_per_1000_sets",
            (sched1.0 - sched0.0) as f64 / 1e6 / keys as f64 * 1000.0,
        );
        out.figures.insert(
            "ctx_switches_per_set",
            (sched1.1 - sched0.1) as f64 / keys as f64,
        );
        let local = secs(done.t - t0);
        let conv = secs(last - t0);
        out.figures.insert("local_rate", keys as f64 / local);
        out.figures.insert("conv_s", conv);
        out.figures.insert("conv_rate", keys as f64 / conv);
        Ok(out)
    }
    .await;
    shutdown(nodes).await;
    res
}

/// Loads `m` keys into a lone node with a burst.
async fn load(
    node: &mut Node,
    prefix: &str,
    m: usize,
    size: usize,
    limit: Duration,
) -> Result<Ev, String> {
    node.send(json!({ "cmd": "burst", "prefix": prefix, "count": m, "size": size }));
    match node.expect("burst_done", Instant::now() + limit).await {
        Ok(ev) => Ok(ev),
        Err(WaitErr::Timeout(_)) => Err(dnf(limit, &format!("loading {m} keys into the node"))),
        Err(WaitErr::Fail(s)) => Err(s),
    }
}

fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// Scenario 3: a node holding M keys of 100-byte values; a fresh node
/// connects; time until it holds them all.
async fn run_join(env: &Env, imp: Impl, m: usize, plan: &Plan) -> RunResult {
    let mut a = Node::start(env, imp, "join-a").await?;
    let res = async {
        let done = load(&mut a, "J", m, plan.value, plan.load_limit).await?;
        let load_s = secs(done.t - done.i64("t0").unwrap_or(done.t));
        let (a_peak, _) = a.memory_kib();
        let mut b = Node::start(env, imp, "join-b").await?;
        let r = async {
            let limit = plan.join_limit;
            let deadline = Instant::now() + limit;
            b.send(json!({ "cmd": "watch", "count": m }));
            b.expect("ack", deadline).await.map_err(|e| e.to_string())?;
            b.send(json!({ "cmd": "connect", "host": HOST, "port": a.port }));
            let ack = b.expect("ack", deadline).await.map_err(|e| e.to_string())?;
            let t0 = ack.i64("t0").unwrap_or(ack.t);
            let count = match b.expect("count", deadline).await {
                Ok(ev) => ev,
                Err(WaitErr::Timeout(_)) => {
                    let held = b.progress.unwrap_or(0);
                    b.send(json!({ "cmd": "stats" }));
                    let st = b
                        .expect("stats", Instant::now() + Duration::from_secs(3))
                        .await
                        .ok();
                    let held = st.as_ref().and_then(|s| s.u64("keys")).unwrap_or(held);
                    let mut why = format!(
                        "the new node had {} of {} keys",
                        fmt_int(held as f64),
                        fmt_int(m as f64)
                    );
                    if let Some(n) = st
                        .map(|s| stats_notes(imp, &[s]))
                        .and_then(|v| v.into_iter().next())
                    {
                        let _ = write!(why, "; {n}");
                    }
                    a.send(json!({ "cmd": "stats" }));
                    if let Ok(sa) = a
                        .expect("stats", Instant::now() + Duration::from_secs(3))
                        .await
                    {
                        if let Some(n) = stats_notes(imp, &[sa]).into_iter().next() {
                            let _ = write!(why, "; holder: {n}");
                        }
                    }
                    return Err(dnf(limit, &why));
                }
                Err(WaitErr::Fail(s)) => return Err(s),
            };
            let join_s = secs(count.t - t0);
            let (b_peak, _) = b.memory_kib();
            let mut out = RunOut::default();
            out.figures.insert("join_s", join_s);
            out.figures.insert("joiner_peak_mib", mib(b_peak));
            out.figures.insert("holder_peak_mib", mib(a_peak));
            out.figures.insert("load_rate", m as f64 / load_s);
            Ok(out)
        }
        .await;
        shutdown(vec![b]).await;
        r
    }
    .await;
    shutdown(vec![a]).await;
    res
}

/// Scenario 4: peak RSS of a node holding M keys of 100-byte values,
/// loaded with a burst on the node itself.
async fn run_memory(env: &Env, imp: Impl, m: usize, plan: &Plan) -> RunResult {
    let mut a = Node::start(env, imp, "mem").await?;
    let res = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (base_peak, _) = a.memory_kib();
        let done = load(&mut a, "M", m, plan.value, plan.load_limit).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (peak, rss) = a.memory_kib();
        let mut out = RunOut::default();
        out.figures.insert("peak_mib", mib(peak));
        out.figures.insert("rss_mib", mib(rss));
        out.figures.insert("baseline_mib", mib(base_peak));
        out.figures.insert(
            "load_rate",
            m as f64 / secs(done.t - done.i64("t0").unwrap_or(done.t)),
        );
        Ok(out)
    }
    .await;
    shutdown(vec![a]).await;
    res
}

/// A TCP relay counting the bytes of one connection in each direction.
struct Relay {
    port: u16,
    /// Bytes from the dialer (B) to the target (A), and back.
    b_to_a: Arc<AtomicU64>,
    a_to_b: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: u16) -> Result<Relay, String> {
        let listener = tokio::net::TcpListener::bind((HOST, 0))
            .await
            .map_err(|e| format!("relay: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let b_to_a = Arc::new(AtomicU64::new(0));
        let a_to_b = Arc::new(AtomicU64::new(0));
        let (ba, ab) = (b_to_a.clone(), a_to_b.clone());
        let task = tokio::spawn(async move {
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            let Ok(outbound) = tokio::net::TcpStream::connect((HOST, target)).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            let up = tokio::spawn(pump(ir, ow, ba));
            let down = tokio::spawn(pump(or, iw, ab));
            let _ = tokio::join!(up, down);
        });
        Ok(Relay {
            port,
            b_to_a,
            a_to_b,
            task,
        })
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.a_to_b.load(Ordering::SeqCst),
            self.b_to_a.load(Ordering::SeqCst),
        )
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                count.fetch_add(k as u64, Ordering::SeqCst);
                if to.write_all(&buf[..k]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Scenario 5: bytes on the one link between two nodes per set of a
/// 4-byte key and an 8-byte value, through a counting relay.
async fn run_wire(env: &Env, imp: Impl, plan: &Plan) -> RunResult {
    let sets = plan.wire_sets.min(1000);
    let limit = plan.wire_limit;
    let deadline = Instant::now() + limit;
    let mut nodes = start_nodes(env, imp, 2, "wire").await?;
    let relay = Relay::start(nodes[0].port).await?;
    let res = async {
        nodes[1].send(json!({ "cmd": "connect", "host": HOST, "port": relay.port }));
        nodes[1]
            .expect("ack", deadline)
            .await
            .map_err(|e| e.to_string())?;
        let sh = settle(&nodes, Duration::from_secs(1), Duration::from_secs(10)).await?;
        if sh.links != 1 {
            return Err(format!("expected one link, found {}", sh.links));
        }
        let c0 = relay.counts();
        let idle_from = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c1 = relay.counts();
        let idle_rate = ((c1.0 + c1.1) - (c0.0 + c0.1)) as f64 / idle_from.elapsed().as_secs_f64();
        let busy_from = Instant::now();
        nodes[1].send(json!({ "cmd": "watch", "count": sets }));
        nodes[1]
            .expect("ack", deadline)
            .await
            .map_err(|e| e.to_string())?;
        // Paced (one set every 2 ms), so that this counts bytes rather than
        // testing py2p's reader under load (PROTOCOL.md §11 Q5).
        for j in 0..sets {
            nodes[0].send(
                json!({ "cmd": "set", "key": format!("k{j:03}"), "value": format!("v{j:07}") }),
            );
            nodes[0]
                .expect("set", deadline)
                .await
                .map_err(|e| match e {
                    WaitErr::Timeout(_) => dnf(limit, "node A was still setting"),
                    WaitErr::Fail(s) => s,
                })?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        match nodes[1].expect("count", deadline).await {
            Ok(_) => {}
            Err(WaitErr::Timeout(_)) => {
                let d = progress_detail(&mut nodes, &[1], sets).await;
                return Err(dnf(limit, &d));
            }
            Err(WaitErr::Fail(s)) => return Err(s),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c2 = relay.counts();
        let busy = busy_from.elapsed().as_secs_f64();
        let a_to_b = (c2.0 - c1.0) as f64;
        let b_to_a = (c2.1 - c1.1) as f64;
        let total = a_to_b + b_to_a - idle_rate * busy;
        let stats = gather_stats(&mut nodes).await;
        let mut out = RunOut::default();
        out.notes.extend(stats_notes(imp, &stats));
        out.figures.insert("bytes_per_set", total / sets as f64);
        out.figures.insert("a_to_b_per_set", a_to_b / sets as f64);
        out.figures.insert("b_to_a_per_set", b_to_a / sets as f64);
        out.figures.insert("idle_bytes_per_s", idle_rate);
        out.figures.insert("setup_bytes", (c0.0 + c0.1) as f64);
        Ok(out)
    }
    .await;
    relay.task.abort();
    shutdown(nodes).await;
    res
}

// ------------------------------------------------------------------ plan

/// Sizes and limits of a benchmark run.
#[derive(Debug, Clone)]
struct Plan {
    runs: usize,
    lat_sizes: Vec<usize>,
    lat_sets: usize,
    lat_spacing_ms: u64,
    lat_limit: Duration,
    tp_nodes: usize,
    tp_keys: usize,
    tp_keys_ref: usize,
    tp_value: usize,
    tp_limit: Duration,
    join_sizes: Vec<usize>,
    join_size_ref: usize,
    join_limit: Duration,
    load_limit: Duration,
    mem_keys: usize,
    value: usize,
    wire_sets: usize,
    wire_limit: Duration,
    form_sizes: Vec<usize>,
    restart_keys: usize,
    restart_stale: usize,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            runs: 3,
            lat_sizes: vec![3, 8, 16],
            lat_sets: 200,
            lat_spacing_ms: 50,
            lat_limit: Duration::from_secs(60),
            tp_nodes: 8,
            tp_keys: 10_000,
            tp_keys_ref: 3_000,
            tp_value: 16,
            tp_limit: Duration::from_secs(120),
            join_sizes: vec![10_000, 100_000, 1_000_000],
            join_size_ref: 10_000,
            join_limit: Duration::from_secs(90),
            load_limit: Duration::from_secs(180),
            mem_keys: 100_000,
            value: 100,
            wire_sets: 1000,
            wire_limit: Duration::from_secs(60),
            form_sizes: vec![16],
            restart_keys: 1_000_000,
            restart_stale: 100,
        }
    }

    fn quick() -> Plan {
        Plan {
            runs: 1,
            lat_sizes: vec![3, 8],
            lat_sets: 50,
            tp_keys: 2_000,
            tp_keys_ref: 500,
            tp_limit: Duration::from_secs(60),
            join_sizes: vec![2_000, 10_000],
            join_size_ref: 2_000,
            join_limit: Duration::from_secs(30),
            load_limit: Duration::from_secs(60),
            mem_keys: 20_000,
            wire_sets: 200,
            form_sizes: vec![8],
            restart_keys: 20_000,
            ..Plan::full()
        }
    }

    fn tp_keys_for(&self, imp: Impl) -> usize {
        if imp.is_ref() {
            self.tp_keys_ref
        } else {
            self.tp_keys
        }
    }
}

// ------------------------------------------------------------------ results

/// All runs of one scenario size for one implementation.
#[derive(Debug)]
struct Measured {
    scenario: &'static str,
    /// N for latency, M for join, 0 otherwise.
    key: usize,
    imp: Impl,
    /// The size actually used (K, M, sets).
    size: usize,
    runs: Vec<RunResult>,
    /// Set when the implementation was not run at all.
    skipped: Option<String>,
}

impl Measured {
    fn values(&self, figure: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter_map(|r| r.figures.get(figure).copied())
            .collect()
    }

    fn failures(&self) -> Vec<&String> {
        self.runs.iter().filter_map(|r| r.as_ref().err()).collect()
    }

    fn info(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in self.runs.iter().filter_map(|r| r.as_ref().ok()) {
            for n in &r.info {
                if !v.contains(n) {
                    v.push(n.clone());
                }
            }
        }
        v
    }

    fn notes(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in self.runs.iter().filter_map(|r| r.as_ref().ok()) {
            for n in &r.notes {
                if !v.contains(n) {
                    v.push(n.clone());
                }
            }
        }
        v
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
}

/// One line of the table.
struct RowSpec {
    id: String,
    label: String,
    scenario: &'static str,
    key: Option<usize>,
    figure: &'static str,
    unit: &'static str,
    better: Better,
    /// The rs2p target: value and whether it is a maximum (`<`, `≤`) or a
    /// minimum (`≥`).
    target: Option<(f64, &'static str)>,
    /// The size this row is about (the reference's may differ).
    size: Option<usize>,
    size_name: &'static str,
    /// The figure scales with the size (a total time): no ratio across
    /// different sizes.
    size_bound: bool,
}

fn fmt_int(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn fmt_val(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let num = match unit {
        "sets/s" => fmt_int(v),
        _ if v >= 1000.0 => fmt_int(v),
        _ if v >= 100.0 => format!("{v:.0}"),
        _ if v >= 10.0 => format!("{v:.1}"),
        _ if v >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    };
    format!("{num} {unit}")
}

fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        "n/a".into()
    } else if r >= 100.0 {
        format!("{r:.0}×")
    } else if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

/// A rendered cell.
struct CellOut {
    text: String,
    median: Option<f64>,
    status: &'static str,
    size: Option<usize>,
    runs: Vec<f64>,
    notes: Vec<String>,
}

fn cell(row: &RowSpec, m: Option<&Measured>, imp: Impl, plan: &Plan) -> CellOut {
    let Some(m) = m else {
        let reason = match (row.scenario, imp.is_ref()) {
            ("join", true) => format!(
                "not run (M reduced to {})",
                fmt_int(plan.join_size_ref as f64)
            ),
            ("restart", true) => "n/a (keeps nothing across a restart: see 3.)".into(),
            _ => "not run".into(),
        };
        return CellOut {
            text: reason,
            median: None,
            status: "not_run",
            size: None,
            runs: vec![],
            notes: vec![],
        };
    };
    if let Some(why) = &m.skipped {
        return CellOut {
            text: format!("not run ({why})"),
            median: None,
            status: "not_run",
            size: Some(m.size),
            runs: vec![],
            notes: vec![],
        };
    }
    let vals = m.values(row.figure);
    let fails = m.failures();
    let mut notes = m.notes();
    let size_suffix = match row.size {
        Some(s) if s != m.size => format!(" ({}={})", row.size_name, fmt_int(m.size as f64)),
        _ => String::new(),
    };
    if vals.is_empty() {
        let why = fails.first().map(|s| s.as_str()).unwrap_or("no figure");
        let short = shorten(why);
        if short != why {
            notes.push(format!("{}: {why}", imp.name()));
        }
        return CellOut {
            text: format!("{short}{size_suffix}"),
            median: None,
            status: "dnf",
            size: Some(m.size),
            runs: vec![],
            notes,
        };
    }
    let med = median(&vals);
    let mut text = format!("{}{size_suffix}", fmt_val(med, row.unit));
    if !fails.is_empty() {
        let _ = write!(text, " ({} of {} runs failed)", fails.len(), m.runs.len());
        for f in fails {
            notes.push(format!("{} failed run: {f}", imp.name()));
        }
    }
    CellOut {
        text,
        median: Some(med),
        status: "ok",
        size: Some(m.size),
        runs: vals,
        notes,
    }
}

/// What a failure comes from, when it is a known reference bug.
fn cause_of(text: &str) -> Option<&'static str> {
    if text.contains("Real message size 4 !=") {
        Some("link dropped by py2p's framing bug, PROTOCOL.md §11 Q5")
    } else if text.contains("Checksum failed") {
        Some("py2p lost its place in the stream (checksum failed)")
    } else {
        None
    }
}

/// The first clause of a failure, with its known cause; the whole text
/// goes to a footnote.
fn shorten(full: &str) -> String {
    let mut s = match full.find("; ") {
        Some(i) => full[..i].to_string(),
        None => full.to_string(),
    };
    let open = s.matches('(').count();
    let close = s.matches(')').count();
    if let Some(c) = cause_of(full) {
        if open > close {
            let _ = write!(s, "; {c}");
        } else {
            let _ = write!(s, " ({c})");
        }
    }
    for _ in close..open {
        s.push(')');
    }
    s
}

fn rows(plan: &Plan) -> Vec<RowSpec> {
    let mut v = Vec::new();
    for &n in &plan.lat_sizes {
        for (fig, p) in [("p50_ms", "p50"), ("p99_ms", "p99")] {
            v.push(RowSpec {
                id: format!("latency_{p}_n{n}"),
                label: format!("1. propagation {p}, N={n} ({} sets)", plan.lat_sets),
                scenario: "latency",
                key: Some(n),
                figure: fig,
                unit: "ms",
                better: Better::Lower,
                target: (n == 16 && p == "p99").then_some((2.0, "<")),
                size: None,
                size_name: "",
                size_bound: false,
            });
        }
    }
    let k = plan.tp_keys;
    let n = plan.tp_nodes;
    v.push(RowSpec {
        id: "throughput_local".into(),
        label: format!("2. sets/s accepted locally, N={n}, K={}", fmt_int(k as f64)),
        scenario: "throughput",
        key: None,
        figure: "local_rate",
        unit: "sets/s",
        better: Better::Higher,
        target: None,
        size: Some(k),
        size_name: "K",
        size_bound: false,
    });
    v.push(RowSpec {
        id: "throughput_converged".into(),
        label: format!("2. sets/s to convergence, N={n}, K={}", fmt_int(k as f64)),
        scenario: "throughput",
        key: None,
        figure: "conv_rate",
        unit: "sets/s",
        better: Better::Higher,
        target: Some((15_000.0, "≥")),
        size: Some(k),
        size_name: "K",
        size_bound: false,
    });
    v.push(RowSpec {
        id: "throughput_time".into(),
        label: format!(
            "2. time until all {n} nodes hold all K={} keys",
            fmt_int(k as f64)
        ),
        scenario: "throughput",
        key: None,
        figure: "conv_s",
        unit: "s",
        better: Better::Lower,
        target: None,
        size: Some(k),
        size_name: "K",
        size_bound: true,
    });
    for &m in &plan.join_sizes {
        v.push(RowSpec {
            id: format!("join_{m}"),
            label: format!(
                "3. join: fresh node gets M={} keys (100 B values)",
                fmt_int(m as f64)
            ),
            scenario: "join",
            key: Some(m),
            figure: "join_s",
            unit: "s",
            better: Better::Lower,
            target: match m {
                100_000 => Some((1.0, "<")),
                1_000_000 => Some((1.5, "<")),
                _ => None,
            },
            size: Some(m),
            size_name: "M",
            size_bound: true,
        });
    }
    if let Some(&m) = plan.join_sizes.iter().max() {
        v.push(RowSpec {
            id: format!("join_rss_{m}"),
            label: format!("3. join: joiner peak RSS, M={}", fmt_int(m as f64)),
            scenario: "join",
            key: Some(m),
            figure: "joiner_peak_mib",
            unit: "MiB",
            better: Better::Lower,
            target: (m == 1_000_000).then_some((150.0, "<")),
            size: Some(m),
            size_name: "M",
            size_bound: true,
        });
    }
    let m = plan.mem_keys;
    v.push(RowSpec {
        id: "memory_peak".into(),
        label: format!(
            "4. peak RSS holding {} keys (100 B values)",
            fmt_int(m as f64)
        ),
        scenario: "memory",
        key: None,
        figure: "peak_mib",
        unit: "MiB",
        better: Better::Lower,
        target: (m == 100_000).then_some((30.0, "<")),
        size: Some(m),
        size_name: "M",
        size_bound: true,
    });
    v.push(RowSpec {
        id: "wire_bytes".into(),
        label: "5. bytes on the link per set (4 B key, 8 B value)".into(),
        scenario: "wire",
        key: None,
        figure: "bytes_per_set",
        unit: "B",
        better: Better::Lower,
        target: Some((131.0, "≤")),
        size: None,
        size_name: "",
        size_bound: false,
    });
    for &n in &plan.form_sizes {
        v.push(RowSpec {
            id: format!("formation_n{n}"),
            label: format!("6. mesh formation, N={n}: settled after the chain's last dial"),
            scenario: "formation",
            key: Some(n),
            figure: "settle_ms",
            unit: "ms",
            better: Better::Lower,
            target: None,
            size: None,
            size_name: "",
            size_bound: false,
        });
    }
    let (m, d) = (plan.restart_keys, plan.restart_stale);
    for (id, what, figure, unit, target) in [
        (
            "restart_bytes",
            "bytes over the link",
            "catchup_bytes",
            "B",
            Some((65_536.0, "≤")),
        ),
        ("restart_time", "time", "catchup_s", "s", Some((1.0, "<"))),
    ] {
        v.push(RowSpec {
            id: id.into(),
            label: format!(
                "7. restart holding M={} keys, D={d} stale: {what} to catch up",
                fmt_int(m as f64)
            ),
            scenario: "restart",
            key: None,
            figure,
            unit,
            better: Better::Lower,
            target: (m == 1_000_000 && d == 100).then_some(target).flatten(),
            size: Some(m),
            size_name: "M",
            size_bound: true,
        });
    }
    v
}

fn target_met(t: (f64, &str), v: f64) -> bool {
    match t.1 {
        "<" => v < t.0,
        "≤" => v <= t.0,
        "≥" => v >= t.0,
        _ => v > t.0,
    }
}

// ------------------------------------------------------------------ machine

fn cmd_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let s = if s.is_empty() {
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    } else {
        s
    };
    (!s.is_empty()).then_some(s)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn utc_now() -> String {
    let s = now_us() / 1_000_000;
    let (y, m, d) = civil(s.div_euclid(86_400));
    let r = s.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        r / 3600,
        r / 60 % 60
    )
}

fn machine(env: &Env) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    m.insert("cpu", model);
    m.insert(
        "nproc",
        cmd_output("nproc", &[]).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        }),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    m.insert("memory", mem);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| {
            l.trim_start_matches("PRETTY_NAME=")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_else(|| std::env::consts::OS.into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    m.insert("os", format!("{os}, Linux {kernel}"));
    m.insert(
        "rustc",
        cmd_output("rustc", &["--version"]).unwrap_or_else(|| "?".into()),
    );
    m.insert(
        "python",
        cmd_output(&env.python().to_string_lossy(), &["--version"])
            .unwrap_or_else(|| "not installed".into()),
    );
    m.insert(
        "node",
        cmd_output("node", &["--version"]).unwrap_or_else(|| "not installed".into()),
    );
    let root = env.root.to_string_lossy().to_string();
    let commit = cmd_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "?".into());
    let dirty = cmd_output(
        "git",
        &["-C", &root, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_some();
    m.insert(
        "rs2p",
        format!(
            "{} (commit {commit}{}), {} build",
            env!("CARGO_PKG_VERSION"),
            if dirty { " + uncommitted changes" } else { "" },
            if cfg!(debug_assertions) {
                "DEBUG"
            } else {
                "release"
            }
        ),
    );
    m.insert("date", utc_now());
    m
}

// ------------------------------------------------------------------ output

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| {} |",
            self.header
                .iter()
                .map(|s| esc(s))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            out,
            "|{}|",
            self.header
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---" } else { "--:" })
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} |",
                r.iter().map(|s| esc(s)).collect::<Vec<_>>().join(" | ")
            );
        }
        out
    }

    fn text(&self) -> String {
        let w = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| w(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(w(c).min(60));
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(w(c));
                if i == 0 {
                    let _ = write!(s, "{c}{}", " ".repeat(pad));
                } else {
                    let _ = write!(s, "  {}{c}", " ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", line(&self.header));
        let _ = writeln!(
            out,
            "{}",
            widths
                .iter()
                .map(|n| "-".repeat(*n))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
        out
    }
}

/// The line after which docs/benchmarks.md holds sections `rs2p bench`
/// does not write and keeps.
const KEEP_MARKER: &str =
    "<!-- Sections below are measured by other tools; `rs2p bench` keeps them. -->";

/// The method section of docs/benchmarks.md.
const METHOD: &str = include_str!("../method.md");

// ------------------------------------------------------------------ main

fn resolve_root(arg: Option<PathBuf>) -> PathBuf {
    if let Some(r) = arg {
        return r;
    }
    if let Ok(cwd) = std::env::current_dir() {
        if cwd.join(ADAPTERS).is_dir() {
            return cwd;
        }
    }
    // The repository root, two levels above this crate.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

async fn bench(args: BenchArgs) -> ExitCode {
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(r) = args.runs {
        plan.runs = r.max(1);
    }
    if !args.nodes.is_empty() {
        plan.lat_sizes = args.nodes.iter().map(|&n| n.clamp(2, 64)).collect();
    }
    match args.keys.as_slice() {
        [] => {}
        [k] => {
            plan.tp_keys = *k;
            plan.tp_keys_ref = *k;
        }
        [k, r, ..] => {
            plan.tp_keys = *k;
            plan.tp_keys_ref = *r;
        }
    }
    if !args.join_keys.is_empty() {
        plan.join_sizes = args.join_keys.clone();
    }
    // rs2p always joins the references' size too, so that row has a ratio.
    if !plan.join_sizes.contains(&plan.join_size_ref) {
        plan.join_sizes.push(plan.join_size_ref);
    }
    plan.join_sizes.sort_unstable();
    plan.join_sizes.dedup();
    if let Some(ms) = args.spacing_ms {
        plan.lat_spacing_ms = ms;
    }
    if let Some(&m) = args.restart_keys.first() {
        plan.restart_keys = m;
    }
    if let Some(&d) = args.restart_keys.get(1) {
        plan.restart_stale = d;
    }
    let mut impls: Vec<Impl> = Vec::new();
    for s in &args.impls {
        match Impl::parse(s) {
            Some(i) if !impls.contains(&i) => impls.push(i),
            Some(_) => {}
            None => {
                eprintln!("rs2p bench: unknown implementation `{s}` (rs2p, py2p, js2p)");
                return ExitCode::FAILURE;
            }
        }
    }
    impls.sort();
    let scenarios = [
        "latency",
        "throughput",
        "join",
        "memory",
        "wire",
        "formation",
        "restart",
    ];
    for s in &args.only {
        if !scenarios.contains(&s.as_str()) {
            eprintln!(
                "rs2p bench: unknown scenario `{s}` ({})",
                scenarios.join(", ")
            );
            return ExitCode::FAILURE;
        }
    }
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let root = resolve_root(args.root.clone());
    let logs = args
        .logs
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rs2p-bench-{}", std::process::id())));
    if let Err(e) = std::fs::create_dir_all(&logs) {
        eprintln!("rs2p bench: cannot create {}: {e}", logs.display());
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rs2p bench: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = Env {
        root,
        exe,
        logs,
        seq: AtomicU64::new(0),
        versions: std::sync::Mutex::new(BTreeMap::new()),
    };
    if cfg!(debug_assertions) {
        eprintln!("rs2p bench: WARNING: this is a debug build; use `cargo run --release --bin rs2p -- bench`");
    }
    let mut unavailable: HashMap<Impl, String> = HashMap::new();
    for &i in &impls {
        if let Err(e) = env.check(i) {
            eprintln!("rs2p bench: {}: {e}", i.name());
            unavailable.insert(i, e);
        }
    }
    eprintln!(
        "rs2p bench: {} run(s) per figure; node logs in {}",
        plan.runs,
        env.logs.display()
    );
    let started = Instant::now();
    let load_before = loadavg();
    let mut results: Vec<Measured> = Vec::new();

    // (scenario, key, size per impl)
    let mut jobs: Vec<(&'static str, usize, Impl, usize)> = Vec::new();
    if wanted("latency") {
        for &n in &plan.lat_sizes {
            for &i in &impls {
                jobs.push(("latency", n, i, plan.lat_sets));
            }
        }
    }
    if wanted("throughput") {
        for &i in &impls {
            jobs.push(("throughput", 0, i, plan.tp_keys_for(i)));
        }
    }
    if wanted("join") {
        for &m in &plan.join_sizes {
            for &i in &impls {
                if i.is_ref() && m != plan.join_size_ref {
                    continue;
                }
                jobs.push(("join", m, i, m));
            }
        }
    }
    if wanted("memory") {
        for &i in &impls {
            jobs.push(("memory", 0, i, plan.mem_keys));
        }
    }
    if wanted("wire") {
        for &i in &impls {
            jobs.push(("wire", 0, i, plan.wire_sets.min(1000)));
        }
    }
    if wanted("formation") {
        for &n in &plan.form_sizes {
            for &i in &impls {
                jobs.push(("formation", n, i, n));
            }
        }
    }
    if wanted("restart") && impls.contains(&Impl::Rs2p) {
        jobs.push(("restart", 0, Impl::Rs2p, plan.restart_keys));
    }

    for (scenario, key, imp, size) in jobs {
        let mut m = Measured {
            scenario,
            key,
            imp,
            size,
            runs: Vec::new(),
            skipped: unavailable.get(&imp).cloned(),
        };
        if m.skipped.is_none() {
            for r in 0..plan.runs {
                let what = match scenario {
                    "latency" => format!("latency N={key}"),
                    "throughput" => format!("throughput N={} K={size}", plan.tp_nodes),
                    "join" => format!("join M={size}"),
                    "memory" => format!("memory M={size}"),
                    "formation" => format!("formation N={key}"),
                    "restart" => format!("restart M={size} D={}", plan.restart_stale),
                    _ => format!("wire {size} sets"),
                };
                eprint!(
                    "[{:>6.1}s] {what} {} run {}/{}: ",
                    started.elapsed().as_secs_f64(),
                    imp.name(),
                    r + 1,
                    plan.runs
                );
                let _ = std::io::stderr().flush();
                let res = match scenario {
                    "latency" => run_latency(&env, imp, key, &plan).await,
                    "throughput" => run_throughput(&env, imp, size, &plan).await,
                    "join" => run_join(&env, imp, size, &plan).await,
                    "memory" => run_memory(&env, imp, size, &plan).await,
                    "formation" => formation::run_formation(&env, imp, key).await,
                    "restart" => restart::run_restart(&env, size, plan.restart_stale, &plan).await,
                    _ => run_wire(&env, imp, &plan).await,
                };
                match &res {
                    Ok(o) => eprintln!(
                        "{}{}",
                        o.info.iter().map(|i| format!("[{i}] ")).collect::<String>(),
                        o.figures
                            .iter()
                            .map(|(k, v)| format!(
                                "{k}={}",
                                if v.abs() >= 100.0 {
                                    format!("{v:.0}")
                                } else {
                                    format!("{v:.3}")
                                }
                            ))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    Err(e) => eprintln!("FAILED: {e}"),
                }
                let failed = res.is_err();
                m.runs.push(res);
                if failed && imp.is_ref() {
                    eprintln!("           ({} did not finish: not repeated)", imp.name());
                    break;
                }
            }
        }
        results.push(m);
    }

    // ---- table
    let specs: Vec<RowSpec> = rows(&plan)
        .into_iter()
        .filter(|r| wanted(r.scenario))
        .collect();
    let mut header = vec!["scenario".to_string()];
    for &i in &impls {
        header.push(i.name().to_string());
        if i.is_ref() && impls.contains(&Impl::Rs2p) {
            header.push(format!("rs2p vs {}", i.name()));
        }
    }
    if impls.contains(&Impl::Rs2p) {
        header.push("rs2p target".into());
    }
    let mut table = Table {
        header,
        rows: Vec::new(),
    };
    let mut footnotes: Vec<String> = Vec::new();
    let mut json_rows = Vec::new();
    for spec in &specs {
        let mut line = vec![spec.label.clone()];
        let mut cells_json = serde_json::Map::new();
        let mut outs: BTreeMap<Impl, CellOut> = BTreeMap::new();
        for &i in &impls {
            let m = results.iter().find(|m| {
                m.scenario == spec.scenario && m.imp == i && spec.key.is_none_or(|k| m.key == k)
            });
            outs.insert(i, cell(spec, m, i, &plan));
        }
        let ours = outs
            .get(&Impl::Rs2p)
            .and_then(|c| c.median.map(|v| (v, c.size)));
        let mut target_json = Json::Null;
        for &i in &impls {
            let c = &outs[&i];
            let mut text = c.text.clone();
            let mut refs = Vec::new();
            for n in &c.notes {
                let idx = match footnotes.iter().position(|f| f == n) {
                    Some(p) => p,
                    None => {
                        footnotes.push(n.clone());
                        footnotes.len() - 1
                    }
                };
                refs.push(format!("[{}]", idx + 1));
            }
            if !refs.is_empty() {
                let _ = write!(text, " {}", refs.join(""));
            }
            line.push(text);
            let mut ratio = None;
            if i.is_ref() && impls.contains(&Impl::Rs2p) {
                let r = match (ours, c.median) {
                    (Some((o, osize)), Some(t)) if !(spec.size_bound && osize != c.size) => {
                        let r = match spec.better {
                            Better::Lower => t / o,
                            Better::Higher => o / t,
                        };
                        ratio = Some(r);
                        fmt_ratio(r)
                    }
                    (Some(_), Some(_)) => "n/a (other size)".into(),
                    _ => "–".into(),
                };
                line.push(r);
            }
            cells_json.insert(
                i.name().into(),
                json!({
                    "status": c.status,
                    "median": c.median,
                    "runs": c.runs,
                    "size": c.size,
                    "text": c.text,
                    "notes": c.notes,
                    "rs2p_advantage": ratio,
                }),
            );
        }
        if impls.contains(&Impl::Rs2p) {
            let t = match (spec.target, ours) {
                (Some(t), Some((v, _))) => {
                    let met = target_met(t, v);
                    target_json = json!({ "value": t.0, "op": t.1, "met": met });
                    format!(
                        "{} {} {}",
                        t.1,
                        fmt_val(t.0, spec.unit),
                        if met { "met" } else { "MISSED" }
                    )
                }
                (Some(t), None) => {
                    target_json = json!({ "value": t.0, "op": t.1, "met": false });
                    format!("{} {} MISSED", t.1, fmt_val(t.0, spec.unit))
                }
                _ => String::new(),
            };
            line.push(t);
        }
        table.rows.push(line);
        json_rows.push(json!({
            "id": spec.id,
            "label": spec.label,
            "unit": spec.unit,
            "better": match spec.better { Better::Lower => "lower", Better::Higher => "higher" },
            "target": target_json,
            "cells": cells_json,
        }));
    }

    let cmdline = {
        // Options that only say where things are do not change results.
        let mut a: Vec<String> = vec!["rs2p".into()];
        let mut skip = false;
        for arg in std::env::args().skip(1) {
            if skip {
                skip = false;
                continue;
            }
            match arg.as_str() {
                "--root" | "--logs" | "--out" => skip = true,
                "--no-write" => {}
                a2 if a2.starts_with("--root=")
                    || a2.starts_with("--logs=")
                    || a2.starts_with("--out=") => {}
                _ => a.push(arg),
            }
        }
        a.join(" ")
    };
    let mut mach = machine(&env);
    mach.insert(
        "load",
        format!(
            "{} before, {} after (1/5/15-minute load averages; the harness' own nodes count too)",
            load_before,
            loadavg()
        ),
    );
    let elapsed = started.elapsed().as_secs_f64();

    println!();
    print!("{}", table.text());
    for (i, f) in footnotes.iter().enumerate() {
        println!("[{}] {f}", i + 1);
    }
    println!(
        "\nmedian of {} run(s); \"rs2p vs X\" = how many times better rs2p is (X ÷ rs2p for times, bytes, memory; rs2p ÷ X for rates). {:.0} s in all.",
        plan.runs, elapsed
    );

    if args.no_write {
        return ExitCode::SUCCESS;
    }
    // ---- markdown
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks: rs2p, py2p and js2p side by side\n");
    let _ = writeln!(
        md,
        "Generated by `{cmdline}` on {} ({:.0} s). Regenerate with:\n\n```sh\nbash scripts/setup-peers.sh              # once: installs py2p and js2p into .peers/\ncargo run --release --bin rs2p -- bench  # writes docs/benchmarks.md and docs/benchmarks.json\n```\n",
        mach["date"], elapsed
    );
    let _ = writeln!(md, "## Machine\n");
    for (k, label) in [
        ("cpu", "CPU"),
        ("nproc", "nproc"),
        ("memory", "Memory"),
        ("os", "OS"),
        ("rustc", "rustc"),
        ("rs2p", "rs2p"),
        ("python", "Python (py2p)"),
        ("node", "Node (js2p)"),
        ("date", "Date"),
        ("load", "Load"),
    ] {
        let _ = writeln!(md, "- {label}: {}", mach[k]);
    }
    let _ = writeln!(
        md,
        "- Implementations: {}; one process per node, all on loopback (127.0.0.1), plaintext TCP, leasing on, each implementation's default compression.\n",
        impls
            .iter()
            .map(|i| {
                let v = env
                    .versions
                    .lock()
                    .ok()
                    .and_then(|v| v.get(i).cloned())
                    .unwrap_or_else(|| "?".into());
                match i {
                    Impl::Rs2p => format!("rs2p {v} (`rs2p bench-node`)"),
                    Impl::Py2p => format!("py2p {v} (`crates/rs2p-bench/adapters/py2p_adapter.py`)"),
                    Impl::Js2p => format!("js2p {v} (`crates/rs2p-bench/adapters/js2p_adapter.js`)"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "Median of {} run(s) per figure (a reference that does not finish a size is not run again). \"rs2p vs X\" says how many times better rs2p is: X ÷ rs2p for times, bytes and memory, rs2p ÷ X for rates; it is left out where the sizes differ and the figure is a total.\n",
        plan.runs
    );
    md.push_str(&table.markdown());
    if !footnotes.is_empty() {
        let _ = writeln!(md, "\nNotes:\n");
        for (i, f) in footnotes.iter().enumerate() {
            let _ = writeln!(md, "{}. {}", i + 1, f.replace('|', "\\|"));
        }
    }
    if !unavailable.is_empty() {
        let _ = writeln!(md);
        for (i, why) in &unavailable {
            let _ = writeln!(md, "- {} not measured: {why}", i.name());
        }
    }
    let _ = writeln!(md, "\n### Secondary figures (medians)\n");
    for m in &results {
        let figs: BTreeMap<&str, f64> = m
            .runs
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .flat_map(|r| r.figures.keys().copied())
            .map(|k| (k, median(&m.values(k))))
            .collect();
        if figs.is_empty() {
            continue;
        }
        let what = match m.scenario {
            "latency" => format!("latency N={}", m.key),
            "throughput" => format!("throughput K={}", fmt_int(m.size as f64)),
            "join" => format!("join M={}", fmt_int(m.size as f64)),
            "memory" => format!("memory M={}", fmt_int(m.size as f64)),
            "formation" => format!("formation N={}", m.key),
            "restart" => format!(
                "restart M={} D={}",
                fmt_int(m.size as f64),
                plan.restart_stale
            ),
            _ => format!("wire {} sets", m.size),
        };
        let _ = writeln!(
            md,
            "- {what}, {}: {}",
            m.imp.name(),
            figs.iter()
                .map(|(k, v)| format!(
                    "{k} = {}",
                    if v.abs() >= 100.0 {
                        fmt_int(*v)
                    } else {
                        format!("{v:.3}")
                    }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for i in m.info() {
            let _ = writeln!(md, "  - {i}");
        }
    }
    let _ = writeln!(md, "\n{}", METHOD.trim_end());
    let plan_json = json!({
        "runs": plan.runs,
        "latency": { "nodes": plan.lat_sizes, "sets": plan.lat_sets, "spacing_ms": plan.lat_spacing_ms, "limit_s": plan.lat_limit.as_secs() },
        "throughput": { "nodes": plan.tp_nodes, "keys": plan.tp_keys, "keys_references": plan.tp_keys_ref, "value_bytes": plan.tp_value, "limit_s": plan.tp_limit.as_secs() },
        "join": { "keys": plan.join_sizes, "keys_references": plan.join_size_ref, "value_bytes": plan.value, "limit_s": plan.join_limit.as_secs(), "load_limit_s": plan.load_limit.as_secs() },
        "memory": { "keys": plan.mem_keys, "value_bytes": plan.value },
        "wire": { "sets": plan.wire_sets.min(1000), "key_bytes": 4, "value_bytes": 8 },
        "formation": { "nodes": plan.form_sizes },
        "restart": { "keys": plan.restart_keys, "stale": plan.restart_stale, "value_bytes": plan.value },
    });
    let raw: Vec<Json> = results
        .iter()
        .map(|m| {
            json!({
                "scenario": m.scenario,
                "key": m.key,
                "impl": m.imp.name(),
                "size": m.size,
                "skipped": m.skipped,
                "runs": m.runs.iter().map(|r| match r {
                    Ok(o) => json!({ "ok": true, "figures": o.figures, "notes": o.notes, "info": o.info }),
                    Err(e) => json!({ "ok": false, "error": e }),
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "generated": mach["date"],
        "command": cmdline,
        "elapsed_s": elapsed,
        "machine": mach,
        "plan": plan_json,
        "rows": json_rows,
        "notes": footnotes,
        "raw": raw,
    });
    let md_path = with_ext(&args.out, "md");
    let json_path = with_ext(&args.out, "json");
    // Sections after the marker in the existing file hold figures measured
    // by other tools (the browser bundle's): they are kept.
    let md = match std::fs::read_to_string(&md_path) {
        Ok(old) => match old.find(KEEP_MARKER) {
            Some(at) => format!("{}\n{}", md.trim_end(), &old[at..]),
            None => md,
        },
        Err(_) => md,
    };
    if let Some(dir) = md_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut code = ExitCode::SUCCESS;
    for (path, text) in [
        (&md_path, md),
        (
            &json_path,
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n",
        ),
    ] {
        match std::fs::write(path, text) {
            Ok(()) => eprintln!("rs2p bench: wrote {}", path.display()),
            Err(e) => {
                eprintln!("rs2p bench: cannot write {}: {e}", path.display());
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}

fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Runs `rs2p bench`.
pub fn run(rt: &Runtime, args: BenchArgs) -> ExitCode {
    rt.block_on(bench(args))
}
