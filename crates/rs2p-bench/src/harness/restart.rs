//! Scenario 7: a node restarted from its data dir catches up with what
//! changed while it was down (rs2p only: py2p and js2p keep nothing across
//! a restart, so a restarted reference node is a fresh joiner, scenario 3).
//!
//! A holds M keys; B joins it with `--data-dir`, then quits (committing
//! everything). A rewrites D of the keys. B starts again from its data dir
//! (same id, M keys) and dials A through the counting relay; the figures
//! are the time until B holds the D new values and the bytes that crossed
//! the link both ways (handshakes included), which with reconciliation
//! grow with D, not with M.

use std::collections::HashSet;
use std::ffi::OsStr;

use super::*;

/// The rewritten keys are the first D of the burst (`R0000000`...); D is a
/// power of ten at most 10,000, so one key prefix selects exactly them.
fn stale_prefix(stale: usize) -> Option<String> {
    let digits = match stale {
        1 => 0,
        10 => 1,
        100 => 2,
        1_000 => 3,
        10_000 => 4,
        _ => return None,
    };
    Some(format!("R{}", "0".repeat(7 - digits)))
}

/// Waits for `node`'s process to exit (after `quit`), up to `limit`: a node
/// with a data dir commits what it holds before it exits.
async fn wait_exit(node: &mut Node, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match node.child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{} exited with {status}", node.label)),
            Err(e) => return Err(format!("{}: {e}", node.label)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = node.child.kill();
                let _ = node.child.wait();
                return Err(format!(
                    "{} did not exit within {} s of quit",
                    node.label,
                    limit.as_secs()
                ));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

pub(super) async fn run_restart(env: &Env, m: usize, stale: usize, plan: &Plan) -> RunResult {
    let prefix =
        stale_prefix(stale).ok_or_else(|| format!("D={stale}: not a power of ten ≤ 10,000"))?;
    if stale > m {
        return Err(format!("D={stale} is more than M={m}"));
    }
    let dir = env.logs.join(format!(
        "restart-{}",
        env.seq.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let extra = [OsStr::new("--data-dir"), dir.as_os_str()];
    let mut a = Node::start(env, Impl::Rs2p, "restart-a").await?;
    let res = async {
        load(&mut a, "R", m, plan.value, plan.load_limit).await?;

        // B joins with a data dir, then stops cleanly.
        let mut b = Node::start_with(env, Impl::Rs2p, "restart-b", &extra).await?;
        let deadline = Instant::now() + plan.join_limit;
        let first = async {
            b.send(json!({ "cmd": "watch", "count": m }));
            b.expect("ack", deadline).await.map_err(|e| e.to_string())?;
            b.send(json!({ "cmd": "connect", "host": HOST, "port": a.port }));
            b.expect("ack", deadline).await.map_err(|e| e.to_string())?;
            b.expect("count", deadline)
                .await
                .map_err(|e| format!("B's first join: {e}"))?;
            b.send(json!({ "cmd": "quit" }));
            wait_exit(&mut b, Duration::from_secs(120)).await
        }
        .await;
        if first.is_err() {
            shutdown(vec![b]).await;
        }
        first?;

        // While B is down, A rewrites D keys, each with new random bytes
        // (values that share bytes would compress together and flatter the
        // figure).
        a.send(json!({ "cmd": "burst", "prefix": "R", "count": stale, "size": plan.value, "distinct": true }));
        a.expect("burst_done", Instant::now() + plan.load_limit)
            .await
            .map_err(|e| format!("rewriting {stale} keys on A: {e}"))?;

        let spawned = now_us();
        let mut b = Node::start_with(env, Impl::Rs2p, "restart-b2", &extra).await?;
        let relay = Relay::start(a.port).await;
        let r = async {
            let relay = relay?;
            let restart_s = secs(now_us() - spawned);
            let deadline = Instant::now() + plan.join_limit;
            b.send(json!({ "cmd": "stats" }));
            let held = b
                .expect("stats", deadline)
                .await
                .map_err(|e| e.to_string())?
                .u64("keys")
                .unwrap_or(0) as usize;
            if held != m {
                return Err(format!(
                    "B came back with {} of {} keys",
                    fmt_int(held as f64),
                    fmt_int(m as f64)
                ));
            }
            let (b_start_peak, _) = b.memory_kib();
            b.send(json!({ "cmd": "trace", "prefix": prefix }));
            b.expect("ack", deadline).await.map_err(|e| e.to_string())?;
            b.send(json!({ "cmd": "connect", "host": HOST, "port": relay.port }));
            let ack = b.expect("ack", deadline).await.map_err(|e| e.to_string())?;
            let t0 = ack.i64("t0").unwrap_or(ack.t);
            let mut seen = HashSet::new();
            let mut last = t0;
            while seen.len() < stale {
                match b.expect("update", deadline).await {
                    Ok(ev) => {
                        if let Some(k) = ev.str("key") {
                            seen.insert(k.to_string());
                        }
                        last = last.max(ev.t);
                    }
                    Err(WaitErr::Timeout(_)) => {
                        return Err(dnf(
                            plan.join_limit,
                            &format!("B had {} of the {stale} new values", seen.len()),
                        ))
                    }
                    Err(WaitErr::Fail(s)) => return Err(s),
                }
            }
            // Whatever the exchange still sends after the last value (the
            // end of a reconciliation round) counts too.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (a_to_b, b_to_a) = relay.counts();
            relay.task.abort();
            let (b_peak, _) = b.memory_kib();
            let mut out = RunOut::default();
            out.figures.insert("catchup_s", secs(last - t0));
            out.figures
                .insert("catchup_bytes", (a_to_b + b_to_a) as f64);
            out.figures.insert("a_to_b_bytes", a_to_b as f64);
            out.figures.insert("b_to_a_bytes", b_to_a as f64);
            out.figures.insert("restart_s", restart_s);
            out.figures.insert("restart_peak_mib", mib(b_start_peak));
            out.figures.insert("peak_mib", mib(b_peak));
            Ok(out)
        }
        .await;
        shutdown(vec![b]).await;
        r
    }
    .await;
    shutdown(vec![a]).await;
    let _ = std::fs::remove_dir_all(&dir);
    res
}

#[cfg(test)]
mod tests {
    use super::stale_prefix;

    #[test]
    fn the_stale_prefix_selects_exactly_the_first_d_keys() {
        for d in [1usize, 10, 100, 1_000, 10_000] {
            let p = stale_prefix(d).expect("a power of ten");
            let n = (0..100_000)
                .map(|i| format!("R{i:07}"))
                .filter(|k| k.starts_with(&p))
                .count();
            assert_eq!(n, d, "prefix {p}");
        }
        assert_eq!(stale_prefix(50), None);
    }
}
