//! A deterministic simulator of rs2p meshes over the protocol core.
//!
//! Many [`Node`]s run in one process on a virtual clock. Links are pipes
//! with a latency drawn per link; bytes a node transmits arrive at the other
//! end after it, in order. Dials succeed when the target is up and on the
//! same side of a partition. A partition closes every link across it (as a
//! reset or a keepalive timeout would) and refuses dials across it until it
//! heals; a restarted node comes back with its id and what its durable
//! store kept (its whole dictionary: acknowledged writes are on disk) and
//! dials one live node. Everything random is drawn from one RNG seeded by
//! [`SimConfig::seed`], and events at the same virtual time run in the order
//! they were scheduled, so the same configuration gives the same [`Report`]
//! (apart from `wall_ms`).
//!
//! ```
//! use rs2p_sim::{run, SimConfig, Writers};
//! let report = run(&SimConfig { nodes: 20, writes: 10, writers: Writers::All, ..SimConfig::default() });
//! assert!(report.converged);
//! assert_eq!(report.missed, 0);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rs2p::proto::dict::Dict;
use rs2p::proto::mesh::Settings;
use rs2p::proto::replica::{Replica, Unbounded};
use rs2p::proto::sync::Version;
use rs2p::proto::{ConnId, Node, Now, Output};
use rs2p::wire::flags::{main, sub};
use rs2p::wire::{next_frame, Limits, MessageId, Packed};
use rs2p::Value;

/// Unix time at virtual time zero.
const EPOCH_UNIX: i64 = 1_800_000_000;
/// The host every simulated node advertises (nodes differ by port).
const HOST: &str = "sim";

/// Who writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writers {
    /// Node 0 makes every write.
    One,
    /// Every write is made by a node drawn at random.
    All,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed of every random draw.
    pub seed: u64,
    /// Number of writes (each to a key of its own).
    pub writes: usize,
    /// Who writes.
    pub writers: Writers,
    /// Cut the nodes in two halves for this long from the first write.
    pub partition: Option<Duration>,
    /// Restart this many nodes, spread over the writes.
    pub churn: usize,
    /// Link latency, drawn per link between these bounds.
    pub latency: (Duration, Duration),
    /// How long a restarted node stays down.
    pub downtime: Duration,
    /// Outgoing connections per node (the mesh's `max_outgoing`).
    pub max_outgoing: usize,
    /// Give up this long after the last write (or the heal).
    pub deadline: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 100,
            seed: 1,
            writes: 100,
            writers: Writers::One,
            partition: None,
            churn: 0,
            latency: (Duration::from_millis(10), Duration::from_millis(50)),
            downtime: Duration::from_secs(2),
            max_outgoing: 4,
            deadline: Duration::from_secs(300),
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Nodes simulated.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Writes made.
    pub writes: usize,
    /// (write, live node) pairs where the node did not hold the write at
    /// the end.
    pub missed: usize,
    /// True when every live node held identical entries (values, owners,
    /// timestamps, lease starts) at the end.
    pub converged: bool,
    /// Relative message redundancy of the writes' broadcasts:
    /// `payload frames / (deliveries - 1) - 1`, summed over writes
    /// (iroh-gossip's definition; 0 is a perfect tree).
    pub rmr: f64,
    /// Largest hop count at which a node first received a write's
    /// broadcast.
    pub ldh: u32,
    /// Frames sent in all (every kind).
    pub frames: u64,
    /// Frames carrying a write's broadcast.
    pub payload_frames: u64,
    /// State-transfer frames (catch-up after joins, restarts, partitions).
    pub transfer_frames: u64,
    /// Bytes sent in all.
    pub bytes: u64,
    /// Nodes that first received a write's broadcast, summed over writes
    /// (the writer included).
    pub deliveries: u64,
    /// Virtual time of the last change to any dictionary, from the start
    /// (the mesh forms from time zero; writes start at 5 s).
    pub virtual_ms: u64,
    /// Reconciliation messages the nodes did not answer (malformed, over
    /// a session's rounds or a link's budget): 0 between honest nodes.
    pub refused: u64,
    /// Wall-clock time of the run.
    pub wall_ms: u64,
}

impl Report {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"nodes\":{},\"seed\":{},\"writes\":{},\"missed\":{},\"converged\":{},\"rmr\":{:.4},\"ldh\":{},\"frames\":{},\"payload_frames\":{},\"transfer_frames\":{},\"bytes\":{},\"deliveries\":{},\"virtual_ms\":{},\"refused\":{},\"wall_ms\":{}}}",
            self.nodes,
            self.seed,
            self.writes,
            self.missed,
            self.converged,
            self.rmr,
            self.ldh,
            self.frames,
            self.payload_frames,
            self.transfer_frames,
            self.bytes,
            self.deliveries,
            self.virtual_ms,
            self.refused,
            self.wall_ms
        )
    }
}

enum Ev {
    /// Nodes join one after another, each dialling one earlier node.
    Join {
        node: usize,
    },
    /// A dial reaches its target (or fails).
    Connect {
        from: usize,
        conn: ConnId,
        port: u16,
    },
    /// Bytes arrive at the end of a pipe.
    Deliver {
        pipe: u64,
        to: End,
        from: usize,
        bytes: Bytes,
    },
    /// The other end closed the connection (or crashed).
    Closed {
        to: End,
    },
    Timer {
        node: usize,
        gen: u64,
    },
    Write {
        index: usize,
    },
    Partition,
    Heal,
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One end of a pipe.
#[derive(Clone, Copy)]
struct End {
    node: usize,
    /// Which run of the node (a restart starts its connection ids over).
    life: u32,
    conn: ConnId,
}

struct Pipe {
    ends: [End; 2],
    latency: Duration,
    /// When the last bytes sent each way arrive (pipes keep order).
    last: [Duration; 2],
}

struct SimNode {
    node: Option<Node>,
    settings: Settings,
    dict: Arc<Mutex<Dict>>,
    timer: Option<Duration>,
    timer_gen: u64,
    life: u32,
}

struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    pipes: HashMap<u64, Pipe>,
    next_pipe: u64,
    /// (node, conn) -> pipe.
    by_end: HashMap<(usize, ConnId), u64>,
    partitioned: bool,
    /// Write broadcasts: the hop count at each node's first receipt.
    hops: HashMap<MessageId, HashMap<usize, u32>>,
    /// The keys written, in order.
    keys: Vec<Vec<u8>>,
    report: Report,
    /// Pipes carrying bytes not yet delivered.
    in_flight: u64,
    limits: Limits,
}

fn side(node: usize) -> usize {
    node % 2
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let nodes = (0..cfg.nodes)
            .map(|i| {
                let mut id = [0u8; 24];
                rng.fill(&mut id[..]);
                let id = rs2p::wire::ids::to_base58(&id).into_bytes();
                let port = u16::try_from(i + 1).unwrap_or(u16::MAX);
                let mut settings = Settings::new(id, "sync1", (HOST, port));
                settings.max_outgoing = cfg.max_outgoing;
                SimNode {
                    node: None,
                    settings,
                    dict: Arc::new(Mutex::new(Dict::default())),
                    timer: None,
                    timer_gen: 0,
                    life: 0,
                }
            })
            .collect();
        Sim {
            report: Report {
                nodes: cfg.nodes,
                seed: cfg.seed,
                writes: cfg.writes,
                ..Report::default()
            },
            cfg,
            rng,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            pipes: HashMap::new(),
            next_pipe: 0,
            by_end: HashMap::new(),
            partitioned: false,
            hops: HashMap::new(),
            keys: Vec::new(),
            in_flight: 0,
            limits: Limits::default(),
        }
    }

    fn at(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    fn clock(&self) -> Now {
        Now {
            elapsed: self.now,
            unix: EPOCH_UNIX + self.now.as_secs() as i64,
        }
    }

    fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let replica = Replica::new(n.dict.clone(), true);
        let seed = self.cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        n.node = Some(Node::new(n.settings.clone(), Some(replica), seed));
        n.timer = None;
        n.life += 1;
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.alive(b) && (!self.partitioned || side(a) == side(b))
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.cfg.latency;
        if hi <= lo {
            return lo;
        }
        let us = self
            .rng
            .gen_range(lo.as_micros() as u64..=hi.as_micros() as u64);
        Duration::from_micros(us)
    }

    /// Runs an input on node `i`, then carries out its outputs.
    fn with_node(&mut self, i: usize, f: impl FnOnce(&mut Node, Now)) {
        let now = self.clock();
        let Some(node) = self.nodes[i].node.as_mut() else {
            return;
        };
        f(node, now);
        self.carry_out(i);
    }

    fn carry_out(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].node.as_mut().and_then(Node::poll_output) else {
                break;
            };
            match out {
                Output::Transmit { conn, bytes } => self.transmit(i, conn, bytes),
                Output::Dial { conn, port, .. } => {
                    let lat = self.latency();
                    self.at(
                        self.now + lat,
                        Ev::Connect {
                            from: i,
                            conn,
                            port,
                        },
                    );
                }
                Output::Close { conn } => {
                    if let Some(pipe) = self.by_end.get(&(i, conn)).copied() {
                        self.drop_pipe(pipe, Some(i));
                    }
                }
                Output::Sync(_) => self.report.virtual_ms = self.now.as_millis() as u64,
                _ => {}
            }
        }
        let Some(node) = self.nodes[i].node.as_ref() else {
            return;
        };
        let due = node.poll_timeout();
        let n = &mut self.nodes[i];
        if due.is_some() && due != n.timer {
            n.timer = due;
            n.timer_gen += 1;
            let gen = n.timer_gen;
            if let Some(t) = due {
                self.at(t, Ev::Timer { node: i, gen });
            }
        }
    }

    /// Counts the frames in `bytes` and notes the hop counts of write
    /// broadcasts sent by `from`.
    fn classify(&mut self, from: usize, bytes: &Bytes) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(body)) = next_frame(&mut buf, &self.limits) {
            self.report.frames += 1;
            // Bare frames too: every node here is rs2p.
            let Ok((packed, msg)) = Packed::decode(body, &[], true, &self.limits) else {
                continue;
            };
            if !matches!(msg.sub_flag(), Some(sub::STORE | sub::RS2P_STORES)) {
                continue;
            }
            if msg.msg_type == main::BROADCAST {
                self.report.payload_frames += 1;
                // The first node to send a write's broadcast is its writer.
                self.hops
                    .entry(packed.id())
                    .or_default()
                    .entry(from)
                    .or_insert(0);
            } else {
                self.report.transfer_frames += 1;
            }
        }
    }

    fn transmit(&mut self, from: usize, conn: ConnId, bytes: Bytes) {
        self.report.bytes += bytes.len() as u64;
        self.classify(from, &bytes);
        let Some(&pipe) = self.by_end.get(&(from, conn)) else {
            return;
        };
        let Some(p) = self.pipes.get_mut(&pipe) else {
            return;
        };
        let dir = usize::from(p.ends[0].node != from);
        let to = p.ends[1 - dir];
        let arrive = (self.now + p.latency).max(p.last[dir]);
        p.last[dir] = arrive;
        self.in_flight += 1;
        self.at(
            arrive,
            Ev::Deliver {
                pipe,
                to,
                from,
                bytes,
            },
        );
    }

    /// Notes the hop count of write broadcasts `to` receives from `from`.
    fn note_hops(&mut self, from: usize, to: usize, bytes: &Bytes) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(body)) = next_frame(&mut buf, &self.limits) {
            let Ok((packed, msg)) = Packed::decode(body, &[], true, &self.limits) else {
                continue;
            };
            if msg.msg_type != main::BROADCAST {
                continue;
            }
            if let Some(h) = self.hops.get_mut(&packed.id()) {
                if let Some(&hf) = h.get(&from) {
                    h.entry(to).or_insert(hf + 1);
                }
            }
        }
    }

    /// Removes a pipe. The ends other than `quiet` (the node that closed
    /// it, or crashed) learn of it one latency later.
    fn drop_pipe(&mut self, pipe: u64, quiet: Option<usize>) {
        let Some(p) = self.pipes.remove(&pipe) else {
            return;
        };
        for e in p.ends {
            self.by_end.remove(&(e.node, e.conn));
            if Some(e.node) != quiet {
                self.at(self.now + p.latency, Ev::Closed { to: e });
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join { node } => {
                self.start_node(node);
                if node > 0 {
                    let to = self.rng.gen_range(0..node);
                    let port = self.nodes[to].settings.out_addr.1;
                    self.with_node(node, |n, now| {
                        let _ = n.connect(HOST, port, now);
                    });
                }
            }
            Ev::Connect { from, conn, port } => {
                let to = usize::from(port) - 1;
                if !self.alive(from) {
                    return;
                }
                if to >= self.nodes.len() || !self.reachable(from, to) {
                    return self.with_node(from, |n, _| n.handle_failed(conn));
                }
                let now = self.clock();
                let Some(theirs) = self.nodes[to].node.as_mut().and_then(|n| n.accept(now)) else {
                    return self.with_node(from, |n, _| n.handle_failed(conn));
                };
                let pipe = self.next_pipe;
                self.next_pipe += 1;
                let latency = self.latency();
                self.pipes.insert(
                    pipe,
                    Pipe {
                        ends: [
                            End {
                                node: from,
                                life: self.nodes[from].life,
                                conn,
                            },
                            End {
                                node: to,
                                life: self.nodes[to].life,
                                conn: theirs,
                            },
                        ],
                        latency,
                        last: [self.now; 2],
                    },
                );
                self.by_end.insert((from, conn), pipe);
                self.by_end.insert((to, theirs), pipe);
                self.with_node(to, |n, now| n.handle_ready(theirs, now));
                self.with_node(from, |n, now| n.handle_ready(conn, now));
            }
            Ev::Deliver {
                pipe,
                to,
                from,
                bytes,
            } => {
                self.in_flight -= 1;
                if !self.pipes.contains_key(&pipe) {
                    return;
                }
                let conn = to.conn;
                self.note_hops(from, to.node, &bytes);
                let limits = self.limits.clone();
                self.with_node(to.node, |n, now| {
                    let mut buf = BytesMut::from(&bytes[..]);
                    while let Ok(Some(body)) = next_frame(&mut buf, &limits) {
                        n.handle_frame(conn, body, &Unbounded, now);
                    }
                });
            }
            Ev::Closed { to } => {
                if self.nodes[to.node].life != to.life {
                    return;
                }
                self.with_node(to.node, |n, now| {
                    n.handle_closed(to.conn, "closed by the peer", now)
                });
            }
            Ev::Timer { node, gen } => {
                if self.nodes[node].timer_gen != gen {
                    return;
                }
                self.nodes[node].timer = None;
                self.with_node(node, |n, now| n.handle_timeout(now));
            }
            Ev::Write { index } => {
                let writer = match self.cfg.writers {
                    Writers::One => 0,
                    Writers::All => self.rng.gen_range(0..self.nodes.len()),
                };
                // A node that is down cannot write: a live one does, or,
                // with every node down, the write waits for one to be back.
                let Some(writer) = (0..self.nodes.len())
                    .map(|k| (writer + k) % self.nodes.len())
                    .find(|&w| self.alive(w))
                else {
                    self.at(self.now + Duration::from_millis(100), Ev::Write { index });
                    return;
                };
                let key = format!("w{index:06}").into_bytes();
                self.keys.push(key.clone());
                let value = Value::from(index as u64);
                self.with_node(writer, |n, now| {
                    let _ = n.set(key, value, now);
                });
            }
            Ev::Partition => {
                self.partitioned = true;
                let cut: Vec<u64> = self
                    .pipes
                    .iter()
                    .filter(|(_, p)| side(p.ends[0].node) != side(p.ends[1].node))
                    .map(|(id, _)| *id)
                    .collect();
                let mut cut = cut;
                cut.sort_unstable();
                for pipe in cut {
                    self.drop_pipe(pipe, None);
                }
            }
            Ev::Heal => self.partitioned = false,
            Ev::Crash { node } => {
                // The node drawn may be down already: the next live one
                // (never the one writer) crashes instead, so `--churn K`
                // is K restarts; with every node down, none.
                let n = self.nodes.len();
                let spared = (self.cfg.writers == Writers::One && n > 1).then_some(0);
                let Some(node) = (0..n)
                    .map(|k| (node + k) % n)
                    .find(|&k| self.alive(k) && Some(k) != spared)
                else {
                    return;
                };
                let mine: Vec<u64> = {
                    let mut v: Vec<u64> = self
                        .by_end
                        .iter()
                        .filter(|((n, _), _)| *n == node)
                        .map(|(_, p)| *p)
                        .collect();
                    v.sort_unstable();
                    v
                };
                if let Some(gone) = self.nodes[node].node.take() {
                    self.report.refused += gone.stats().reconciliation_refused;
                }
                for pipe in mine {
                    self.drop_pipe(pipe, Some(node));
                }
                let back = self.now + self.cfg.downtime;
                self.at(back, Ev::Restart { node });
            }
            Ev::Restart { node } => {
                self.start_node(node);
                let live: Vec<usize> = (0..self.nodes.len())
                    .filter(|&k| k != node && self.reachable(node, k))
                    .collect();
                if !live.is_empty() {
                    let to = live[self.rng.gen_range(0..live.len())];
                    let port = self.nodes[to].settings.out_addr.1;
                    self.with_node(node, |n, now| {
                        let _ = n.connect(HOST, port, now);
                    });
                }
            }
        }
    }

    fn entries(&self, i: usize) -> Vec<(Vec<u8>, Value, Version)> {
        let d = self.nodes[i].dict.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(Vec<u8>, Value, Version)> = d
            .versions()
            .map(|(k, val, ver)| (k.to_vec(), val, ver))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn missed(&self) -> usize {
        let mut missed = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            if !self.alive(i) {
                continue;
            }
            let d = n.dict.lock().unwrap_or_else(|e| e.into_inner());
            missed += self.keys.iter().filter(|k| d.get(k).is_none()).count();
        }
        missed
    }

    fn converged(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.alive(i)).collect();
        let Some(&first) = live.first() else {
            return true;
        };
        let want = self.entries(first);
        live[1..].iter().all(|&i| self.entries(i) == want)
    }

    fn run(mut self) -> Report {
        let wall = Instant::now();
        let n = self.nodes.len();
        for i in 0..n {
            self.at(Duration::from_millis(2 * i as u64), Ev::Join { node: i });
        }
        let start = Duration::from_secs(5).max(Duration::from_millis(2 * n as u64 + 1000));
        let span = self
            .cfg
            .partition
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(10 * self.cfg.writes as u64));
        let step = span / self.cfg.writes.max(1) as u32;
        for w in 0..self.cfg.writes {
            self.at(start + step * w as u32, Ev::Write { index: w });
        }
        if let Some(p) = self.cfg.partition {
            self.at(start, Ev::Partition);
            self.at(start + p, Ev::Heal);
        }
        for k in 0..self.cfg.churn {
            let node = self.rng.gen_range(0..n);
            let node = if self.cfg.writers == Writers::One && node == 0 && n > 1 {
                1
            } else {
                node
            };
            let t = start + span * (k as u32 + 1) / (self.cfg.churn as u32 + 1);
            self.at(t, Ev::Crash { node });
        }
        let last_event = start + span + self.cfg.downtime;
        let deadline = last_event + self.cfg.deadline;
        let mut next_check = last_event;
        while let Some(Reverse(s)) = self.queue.pop() {
            if s.at > deadline {
                break;
            }
            self.now = s.at;
            self.handle(s.ev);
            if self.now >= next_check && self.in_flight == 0 {
                next_check = self.now + Duration::from_millis(500);
                if self.keys.len() == self.cfg.writes && self.missed() == 0 && self.converged() {
                    break;
                }
            }
        }
        self.report.missed = self.missed();
        self.report.converged = self.converged();
        for n in self.nodes.iter().filter_map(|n| n.node.as_ref()) {
            self.report.refused += n.stats().reconciliation_refused;
        }
        let mut redundancy_base = 0u64;
        for h in self.hops.values() {
            self.report.deliveries += h.len() as u64;
            redundancy_base += h.len().saturating_sub(1) as u64;
            self.report.ldh = self.report.ldh.max(h.values().copied().max().unwrap_or(0));
        }
        self.report.rmr = if redundancy_base > 0 {
            self.report.payload_frames as f64 / redundancy_base as f64 - 1.0
        } else {
            0.0
        };
        self.report.wall_ms = wall.elapsed().as_millis() as u64;
        self.report
    }
}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> Report {
    Sim::new(cfg.clone()).run()
}
