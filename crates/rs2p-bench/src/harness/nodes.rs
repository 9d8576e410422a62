//! The implementations under test and their node processes: start, drive
//! over the line protocol, stop; their statistics.

use super::*;
use std::sync::{Condvar, Mutex};

// ------------------------------------------------------------------ impls

/// An implementation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Impl {
    Rs2p,
    Py2p,
    Js2p,
}

impl Impl {
    pub(super) fn name(self) -> &'static str {
        match self {
            Impl::Rs2p => "rs2p",
            Impl::Py2p => "py2p",
            Impl::Js2p => "js2p",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Impl> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rs2p" | "rs" | "rust" => Some(Impl::Rs2p),
            "py2p" | "py" | "python" => Some(Impl::Py2p),
            "js2p" | "js" | "node" => Some(Impl::Js2p),
            _ => None,
        }
    }

    pub(super) fn is_ref(self) -> bool {
        self != Impl::Rs2p
    }
}

/// Where things are, and how to start an adapter.
pub(super) struct Env {
    pub(super) root: PathBuf,
    pub(super) exe: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) seq: AtomicU64,
    /// Versions the adapters reported.
    pub(super) versions: std::sync::Mutex<BTreeMap<Impl, String>>,
}

impl Env {
    /// An adapter script.
    pub(super) fn adapter(&self, name: &str) -> PathBuf {
        self.root.join(ADAPTERS).join(name)
    }

    pub(super) fn python(&self) -> PathBuf {
        self.root.join(".peers/py/bin/python")
    }

    pub(super) fn js2p_dir(&self) -> PathBuf {
        match std::env::var_os("RS2P_JS2P") {
            Some(p) => PathBuf::from(p),
            None => self.root.join(".peers/js/node_modules/js2p"),
        }
    }

    /// Why an implementation cannot run here, if it cannot.
    pub(super) fn check(&self, imp: Impl) -> Result<(), String> {
        match imp {
            Impl::Rs2p => Ok(()),
            Impl::Py2p => {
                let adapter = self.adapter("py2p_adapter.py");
                if !adapter.exists() {
                    return Err(format!("{} is missing", adapter.display()));
                }
                if succeeds(Command::new(self.python()).args(["-c", "import py2p"])) {
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
                if succeeds(Command::new("node").arg("--version")) {
                    Ok(())
                } else {
                    Err("`node` is not on PATH".into())
                }
            }
        }
    }

    pub(super) fn command(&self, imp: Impl, extra: &[&std::ffi::OsStr]) -> Command {
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
pub(super) struct Ev {
    pub(super) ev: String,
    pub(super) t: i64,
    pub(super) j: Json,
}

impl Ev {
    pub(super) fn i64(&self, name: &str) -> Option<i64> {
        self.j.get(name).and_then(Json::as_i64)
    }
    pub(super) fn u64(&self, name: &str) -> Option<u64> {
        self.j.get(name).and_then(Json::as_u64)
    }
    pub(super) fn str(&self, name: &str) -> Option<&str> {
        self.j.get(name).and_then(Json::as_str)
    }
}

/// Why waiting for an event ended without it.
#[derive(Debug)]
pub(super) enum WaitErr {
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

/// Runs `cmd` with its output discarded: true when it exits with success.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One adapter process.
pub(super) struct Node {
    pub(super) imp: Impl,
    pub(super) label: String,
    pub(super) child: Child,
    pub(super) cmds: std::sync::mpsc::Sender<String>,
    pub(super) rx: mpsc::UnboundedReceiver<Ev>,
    /// The latest `peers` event: (t, listen addresses).
    pub(super) peers: watch::Receiver<(i64, Vec<String>)>,
    pub(super) pending: VecDeque<Ev>,
    /// The latest `progress` count.
    pub(super) progress: Option<u64>,
    pub(super) pid: u32,
    pub(super) port: u16,
    pub(super) version: String,
    /// While true, the thread reading the node's stdout reads no further
    /// line (see [`Node::hold_output`]).
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl Node {
    /// Starts an adapter and waits for its `ready` line.
    pub(super) async fn start(env: &Env, imp: Impl, tag: &str) -> Result<Node, String> {
        Node::start_with(env, imp, tag, &[]).await
    }

    /// [`Node::start`] with extra arguments for the adapter.
    pub(super) async fn start_with(
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
        let held = Arc::new((Mutex::new(false), Condvar::new()));
        let hold = held.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                {
                    let (lock, cv) = &*hold;
                    let mut on = lock.lock().unwrap_or_else(|e| e.into_inner());
                    while *on {
                        on = cv.wait(on).unwrap_or_else(|e| e.into_inner());
                    }
                }
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
            held,
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

    /// Stops (`true`) or resumes reading the node's output. Timed events
    /// carry the time the node stamped them with, so reading them later
    /// changes no figure; what it spares is the harness being woken for
    /// every line while the nodes under test share the CPU with it. The
    /// node's writes go to the pipe meanwhile (64 KiB on Linux: about
    /// 1,400 update lines before a node would block on it).
    pub(super) fn hold_output(&self, on: bool) {
        let (lock, cv) = &*self.held;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = on;
        cv.notify_all();
    }

    pub(super) fn send(&self, j: Json) {
        let mut line = j.to_string();
        line.push('\n');
        let _ = self.cmds.send(line);
    }

    /// The next event of `kind` (earlier events of other kinds are kept for
    /// later; `progress` only updates [`Node::progress`]).
    pub(super) async fn expect(&mut self, kind: &str, deadline: Instant) -> Result<Ev, WaitErr> {
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

    pub(super) fn peer_list(&self) -> Vec<String> {
        self.peers.borrow().1.clone()
    }

    /// CPU time (ns, from schedstat) and context switches (voluntary and
    /// not) of all the process' threads so far.
    pub(super) fn sched(&self) -> (u64, u64) {
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
    pub(super) fn memory_kib(&self) -> (Option<u64>, Option<u64>) {
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
pub(super) fn sched_all(nodes: &[Node]) -> (u64, u64) {
    nodes
        .iter()
        .map(Node::sched)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Asks every node to quit; kills those that do not exit within 5 s.
pub(super) async fn shutdown(nodes: Vec<Node>) {
    for n in &nodes {
        n.hold_output(false);
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
pub(super) async fn start_nodes(
    env: &Env,
    imp: Impl,
    n: usize,
    tag: &str,
) -> Result<Vec<Node>, String> {
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
pub(super) async fn gather_stats_each(nodes: &mut [Node]) -> Vec<Option<Ev>> {
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
pub(super) async fn gather_stats(nodes: &mut [Node]) -> Vec<Ev> {
    gather_stats_each(nodes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Notes on what the nodes counted: exceptions, expired broadcasts, slow
/// peers dropped.
pub(super) fn stats_notes(imp: Impl, stats: &[Ev]) -> Vec<String> {
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

pub(super) fn short(s: &str) -> String {
    let s = s.trim().lines().last().unwrap_or("").trim();
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s.to_string()
    }
}
