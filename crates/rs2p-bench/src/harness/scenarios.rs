//! Scenarios 1-5: propagation latency, throughput, join, memory, bytes on
//! the wire.

use super::*;

// ------------------------------------------------------------------ runs

/// The figures of one run.
#[derive(Debug, Default, Clone)]
pub(super) struct RunOut {
    pub(super) figures: BTreeMap<&'static str, f64>,
    /// Anomalies, shown as footnotes of the table.
    pub(super) notes: Vec<String>,
    /// Context (mesh shapes), listed with the secondary figures.
    pub(super) info: Vec<String>,
}

pub(super) type RunResult = Result<RunOut, String>;

pub(super) fn secs(us: i64) -> f64 {
    us as f64 / 1e6
}

/// Nearest-rank percentile of sorted values.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

pub(super) fn dnf(limit: Duration, what: &str) -> String {
    format!("did not finish in {} s ({what})", limit.as_secs())
}

/// How far the nodes got, for a "did not finish" reason.
pub(super) async fn progress_detail(nodes: &mut [Node], of: &[usize], target: usize) -> String {
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
pub(super) fn loopback_bytes() -> Option<u64> {
    std::fs::read_to_string("/sys/class/net/lo/statistics/tx_bytes")
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(super) async fn run_latency(env: &Env, imp: Impl, n: usize, plan: &Plan) -> RunResult {
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
        // One write first, not measured: a fresh mesh's first broadcast is
        // the one that settles which links carry the next ones (rs2p's
        // tree), and each implementation's first write pays for what it
        // sets up lazily. Its key is not traced.
        nodes[0].send(json!({ "cmd": "set", "key": "warm-up", "value": "w" }));
        nodes[0].expect("set", deadline).await.map_err(|e| match e {
            WaitErr::Timeout(_) => dnf(limit, "the warm-up set was not made"),
            WaitErr::Fail(s) => s,
        })?;
        // Idle cost of the mesh (timers, polling), subtracted below.
        let idle0 = sched_all(&nodes);
        let lo0 = loopback_bytes();
        let idle_from = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sched0 = sched_all(&nodes);
        let lo_idle = loopback_bytes();
        let stats0 = gather_stats(&mut nodes).await;
        let idle_s = idle_from.elapsed().as_secs_f64();
        // Every node reports each update (node 0 each set) as it happens;
        // the lines are read after the last set, so that the harness does
        // not compete with the nodes for the CPU while the sets propagate
        // (all implementations alike; each line carries the node's own
        // time). Reading node 0's acknowledgement of each set in turn, and
        // starting to read the others' lines right after the last set, put
        // harness work into the propagation of every set and of the last
        // one (seen as the slowest set of many runs).
        for node in nodes.iter() {
            node.hold_output(true);
        }
        let t_begin = Instant::now();
        for j in 0..sets {
            tokio::time::sleep_until((t_begin + spacing * j as u32).into()).await;
            let key = format!("L{j:04}");
            nodes[0].send(json!({ "cmd": "set", "key": key, "value": format!("v{j:07}") }));
        }
        // The last set gets the same quiet time as the others.
        tokio::time::sleep_until((t_begin + spacing * sets as u32).into()).await;
        for node in nodes.iter() {
            node.hold_output(false);
        }
        for j in 0..sets {
            let ev = nodes[0].expect("set", deadline).await.map_err(|e| match e {
                WaitErr::Timeout(_) => dnf(limit, &format!("{j} of {sets} sets made")),
                WaitErr::Fail(s) => s,
            })?;
            if let Some(key) = ev.str("key") {
                t_set.insert(key.to_owned(), ev.t);
            }
        }
        // Every node's update times; a set that some node never gets within
        // 10 s after the last one counts as lost.
        let collect_until = (Instant::now() + Duration::from_secs(10)).min(deadline);
        let mut latest: HashMap<String, i64> = HashMap::new();
        let mut got: HashMap<String, usize> = HashMap::new();
        let mut incomplete = 0usize;
        let mut log = String::new();
        let pid0 = nodes[0].pid;
        for (index, node) in nodes.iter_mut().enumerate().skip(1) {
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
            if plan.lat_log.is_some() {
                for (key, t) in &first {
                    let us = t - t_set.get(key).copied().unwrap_or(*t);
                    let name = imp.name();
                    log.push_str(&format!("{n} {name} {pid0} {index} {key} {us}\n"));
                }
            }
            for (key, t) in first {
                let e = latest.entry(key.clone()).or_insert(t);
                *e = (*e).max(t);
                *got.entry(key).or_default() += 1;
            }
        }
        if let Some(path) = &plan.lat_log {
            append_latency_log(path, &log)?;
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
        // The nodes' counters (rs2p's) over the sets, per set: from the
        // stats taken just before them, as the nodes' totals also hold the
        // mesh's forming and the warm-up set (whose flood through a tree not
        // yet formed read as 0.2-0.4 duplicates per set).
        let total = |st: &[Ev], f: &str| -> Option<u64> {
            let v: Vec<u64> = st.iter().filter_map(|s| s.u64(f)).collect();
            (v.len() == st.len() && !v.is_empty()).then(|| v.iter().sum())
        };
        let per_set = |f: &str| {
            Some(total(&stats, f)?.saturating_sub(total(&stats0, f)?) as f64 / sets as f64)
        };
        // Broadcast frames delivered (first receipts + duplicates); what the
        // nodes sent as they count it (frames with their prefixes, no TCP/IP
        // headers: the loopback figure below has the headers but also
        // whatever else the machine sends on loopback meanwhile); of which
        // whispers (tree announcements, grafts, prunes, pings), and the
        // announcement frames among them.
        if let (Some(b), Some(d)) = (per_set("broadcasts"), per_set("duplicates")) {
            out.figures.insert("frames_per_set", b + d);
            out.figures.insert("duplicates_per_set", d);
        }
        for (field, figure) in [
            ("relays_pruned", "relays_pruned_per_set"),
            ("bytes_sent", "bytes_sent_per_set"),
            ("whisper_bytes_sent", "whisper_bytes_per_set"),
            ("announcements", "announcements_per_set"),
        ] {
            if let Some(v) = per_set(field) {
                out.figures.insert(figure, v);
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
pub(super) async fn run_throughput(env: &Env, imp: Impl, keys: usize, plan: &Plan) -> RunResult {
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
pub(super) async fn load(
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

/// Appends `text` to the latency log at `path` (made if missing).
fn append_latency_log(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write the latency log {}: {e}", path.display()))
}

pub(super) fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// Scenario 3: a node holding M keys of 100-byte values; a fresh node
/// connects; time until it holds them all.
pub(super) async fn run_join(env: &Env, imp: Impl, m: usize, plan: &Plan) -> RunResult {
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
pub(super) async fn run_memory(env: &Env, imp: Impl, m: usize, plan: &Plan) -> RunResult {
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
pub(super) struct Relay {
    pub(super) port: u16,
    /// Bytes from the dialer (B) to the target (A), and back.
    pub(super) b_to_a: Arc<AtomicU64>,
    pub(super) a_to_b: Arc<AtomicU64>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub(super) async fn start(target: u16) -> Result<Relay, String> {
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

    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.a_to_b.load(Ordering::SeqCst),
            self.b_to_a.load(Ordering::SeqCst),
        )
    }
}

pub(super) async fn pump(
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
pub(super) async fn run_wire(env: &Env, imp: Impl, plan: &Plan) -> RunResult {
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
