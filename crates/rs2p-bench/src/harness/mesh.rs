//! Linking nodes into the scenarios' meshes and reading their shape.

use super::*;

// ------------------------------------------------------------------ mesh

/// The shape of a formed mesh.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub(super) links: usize,
    pub(super) min_degree: usize,
    pub(super) max_degree: usize,
    /// Hops from node 0 to the farthest node.
    pub(super) hops_from_0: usize,
    /// Peers of node 0.
    pub(super) degree_0: usize,
    pub(super) settled: bool,
    /// From the last dial of the chain to the last change of any peer
    /// list, in ms (times read inside the nodes).
    pub(super) settle_ms: f64,
    /// From the first dial of the chain to the last change of any peer
    /// list, in ms (includes the harness' 200 ms of quiet after each dial).
    pub(super) form_ms: f64,
}

/// Dials each node to the one before it (a chain), one link at a time:
/// the next dial waits until the node has a handshaken peer and the peer
/// lists have been quiet for 200 ms (py2p's mesh tends to collapse when
/// many dials and peer-list dials cross, PROTOCOL.md §11 Q1/Q2/Q4).
///
/// Returns when the first and the last dial began (`t0` of their acks, µs).
pub(super) async fn chain(nodes: &mut [Node], deadline: Instant) -> Result<(i64, i64), WaitErr> {
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
pub(super) async fn form_mesh(
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
pub(super) fn shape(nodes: &[Node], lists: &[Vec<String>]) -> Option<Shape> {
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
pub(super) async fn settle(
    nodes: &[Node],
    quiet: Duration,
    max: Duration,
) -> Result<Shape, String> {
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

pub(super) fn shape_note(sh: &Shape) -> String {
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
