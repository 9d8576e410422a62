//! `rs2p demo`: a few nodes in one process, replicating a dictionary.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rs2p::{Error, SyncConfig, SyncSocket, Value};
use unicode_width::UnicodeWidthStr;

use crate::args::DemoArgs;
use crate::values::{key_display, value_to_json, values_match};

/// How long the nodes get to link up, and then to converge.
const DEADLINE: Duration = Duration::from_secs(20);
/// Least time between two tables printed while waiting.
const TABLE_EVERY: Duration = Duration::from_millis(200);
/// How often views are compared.
const POLL: Duration = Duration::from_millis(20);

/// Runs the demo; 0 when every view converged and the lease held.
pub async fn run(args: DemoArgs) -> ExitCode {
    let n = usize::from(args.nodes);
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        let cfg = SyncConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        match SyncSocket::bind(cfg).await {
            Ok(node) => nodes.push(node),
            Err(e) => return fail(&nodes, &format!("cannot start a node: {e}")).await,
        }
    }
    let code = match demo(&nodes).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("rs2p demo: {msg}");
            ExitCode::FAILURE
        }
    };
    close_all(&nodes).await;
    code
}

async fn fail(nodes: &[SyncSocket], msg: &str) -> ExitCode {
    eprintln!("rs2p demo: {msg}");
    close_all(nodes).await;
    ExitCode::FAILURE
}

async fn close_all(nodes: &[SyncSocket]) {
    for node in nodes {
        node.close().await;
    }
    println!("closed all {} nodes", nodes.len());
}

async fn demo(nodes: &[SyncSocket]) -> Result<(), String> {
    let n = nodes.len();
    println!("started {n} nodes:");
    for (i, node) in nodes.iter().enumerate() {
        println!("  node{i}  {}  {}", node.mesh().local_addr(), node.id());
    }

    // A chain: node i dials node i-1.
    for i in 1..n {
        let port = nodes[i - 1].mesh().local_addr().port();
        nodes[i]
            .connect("127.0.0.1", port)
            .await
            .map_err(|e| format!("node{i} cannot connect to node{}: {e}", i - 1))?;
    }
    let chain: Vec<String> = (0..n).map(|i| format!("node{i}")).collect();
    println!("linked as a chain: {}", chain.join(" <- "));
    let start = Instant::now();
    loop {
        let mut lonely = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.mesh().peers().await.map_or(true, |p| p.is_empty()) {
                lonely.push(i);
            }
        }
        if lonely.is_empty() {
            break;
        }
        if start.elapsed() > DEADLINE {
            return Err(format!(
                "nodes {lonely:?} have no peer after {} s",
                DEADLINE.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    println!("every node has a peer");

    // Writes from different nodes; `expected` is what every view must reach.
    let writes: [(&str, Value); 3] = [
        ("greeting", Value::from("hello")),
        ("测试", Value::from("成功")),
        ("count", Value::from(256)),
    ];
    let mut expected: Vec<(Vec<u8>, Value)> = Vec::new();
    for (i, (k, v)) in writes.into_iter().enumerate() {
        let w = i % n;
        println!("node{w}: set {k} = {}", value_to_json(&v));
        nodes[w]
            .set(k, v.clone())
            .await
            .map_err(|e| format!("node{w} cannot set {k}: {e}"))?;
        expected.push((k.as_bytes().to_vec(), v));
    }
    let last = n - 1;
    let delta = Value::Map(vec![
        (Value::from("name"), Value::from("rs2p")),
        (Value::from("nodes"), Value::from(n)),
    ]);
    println!("node{last}: apply_delta profile {}", value_to_json(&delta));
    nodes[last]
        .apply_delta("profile", delta.clone())
        .await
        .map_err(|e| format!("node{last} cannot apply a delta to profile: {e}"))?;
    expected.push((b"profile".to_vec(), delta));

    // Watch the views converge.
    let start = Instant::now();
    let mut last_table: Option<Instant> = None;
    loop {
        let converged = nodes.iter().all(|node| {
            node.len() == expected.len()
                && expected
                    .iter()
                    .all(|(k, v)| node.get(k).is_some_and(|have| values_match(&have, v)))
        });
        if converged {
            println!(
                "converged after {} ms: all {n} nodes hold the same {} keys",
                start.elapsed().as_millis(),
                expected.len()
            );
            print_table(nodes, &expected);
            break;
        }
        if start.elapsed() > DEADLINE {
            println!("not converged:");
            print_table(nodes, &expected);
            return Err(format!(
                "the views did not converge within {} s",
                DEADLINE.as_secs()
            ));
        }
        if last_table.is_none_or(|t| t.elapsed() >= TABLE_EVERY) {
            println!("waiting ({} ms):", start.elapsed().as_millis());
            print_table(nodes, &expected);
            last_table = Some(Instant::now());
        }
        tokio::time::sleep(POLL).await;
    }

    lease_refusal(nodes).await
}

/// node1 tries to overwrite node0's key once node0's write is in the past,
/// when the lease (not the same-second tie-break) decides.
async fn lease_refusal(nodes: &[SyncSocket]) -> Result<(), String> {
    let meta = nodes[0]
        .metadata("greeting")
        .ok_or("node0 lost its key greeting")?;
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| format!("the clock is before 1970: {e}"))?;
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now_secs > meta.timestamp {
            break;
        }
        // Sleep to the next second boundary.
        let to_next = Duration::from_secs(1)
            .saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
        tokio::time::sleep(to_next + Duration::from_millis(5)).await;
    }
    println!(
        "node1: set greeting = \"mine now\" (node0 wrote it {})",
        crate::human::age(meta.timestamp, crate::human::unix_now())
    );
    match nodes[1].set("greeting", "mine now").await {
        Err(e @ Error::LeaseHeld { .. }) => {
            // The demo's nodes are gone at exit: no hint about --data-dir.
            let ctx = crate::human::Context { durable: true };
            println!(
                "refused (lease held): {} (node0)",
                crate::human::describe(&e, ctx)
            );
            println!(
                "greeting is still {} on node1",
                nodes[1]
                    .get("greeting")
                    .map_or(serde_json::Value::Null, |v| value_to_json(&v))
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "node1's write failed with an unexpected error: {e}"
        )),
        Ok(()) => Err("node1's write was accepted although node0 holds the lease".into()),
    }
}

/// Rows are keys, columns are nodes; `-` where a node lacks the key.
fn print_table(nodes: &[SyncSocket], expected: &[(Vec<u8>, Value)]) {
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(expected.len() + 1);
    let mut header = vec!["key".to_string()];
    header.extend((0..nodes.len()).map(|i| format!("node{i}")));
    rows.push(header);
    for (k, _) in expected {
        let mut row = vec![key_display(k)];
        row.extend(nodes.iter().map(|node| {
            node.get(k)
                .map_or_else(|| "-".to_string(), |v| value_to_json(&v).to_string())
        }));
        rows.push(row);
    }
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].width()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str("  ");
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c].saturating_sub(cell.width())));
            }
        }
        println!("{line}");
    }
}
