//! Scenario 8: the simulator's figures, run in this process (the
//! `rs2p-sim` crate): a thousand of rs2p's protocol cores on a virtual
//! clock with 10-50 ms links, measuring what no two-core machine can host
//! as processes: the broadcast tree's redundancy and depth, and that every
//! write reaches every node, also across a partition and restarts. The
//! simulation is deterministic, so one run is all there is to take.

use super::*;
use rs2p_sim::{SimConfig, Writers};

/// The simulated cases, by key.
pub(super) const CASES: [&str; 3] = [
    "one writer",
    "all writers",
    "all writers, half cut off for 20 s, 20 restarts",
];

/// What `rs2p-sim` is given for case `case`.
pub(super) fn config(case: usize, nodes: usize, writes: usize) -> SimConfig {
    let mut cfg = SimConfig {
        nodes,
        writes,
        seed: 1,
        writers: Writers::One,
        ..SimConfig::default()
    };
    if case > 0 {
        cfg.writers = Writers::All;
    }
    if case > 1 {
        cfg.partition = Some(Duration::from_secs(20));
        cfg.churn = 20;
        cfg.seed = 11;
    }
    cfg
}

/// The command line that gives the same figures.
fn command(cfg: &SimConfig) -> String {
    let mut c = format!(
        "rs2p-sim --nodes {} --writes {} --writers {} --seed {}",
        cfg.nodes,
        cfg.writes,
        match cfg.writers {
            Writers::One => "one",
            Writers::All => "all",
        },
        cfg.seed
    );
    if let Some(p) = cfg.partition {
        let _ = write!(c, " --partition-s {}", p.as_secs());
    }
    if cfg.churn > 0 {
        let _ = write!(c, " --churn {}", cfg.churn);
    }
    c
}

/// Runs one case (on a blocking thread: a simulation is seconds of CPU).
pub(super) async fn run_sim(case: usize, nodes: usize, writes: usize) -> RunResult {
    let cfg = config(case, nodes, writes);
    let info = command(&cfg);
    let r = tokio::task::spawn_blocking(move || rs2p_sim::run(&cfg))
        .await
        .map_err(|e| format!("the simulation stopped: {e}"))?;
    let mut figures = BTreeMap::new();
    figures.insert("rmr", r.rmr);
    figures.insert("ldh", f64::from(r.ldh));
    figures.insert("missed", r.missed as f64);
    figures.insert("diverged", if r.converged { 0.0 } else { 1.0 });
    figures.insert("virtual_ms", r.virtual_ms as f64);
    figures.insert("wall_ms", r.wall_ms as f64);
    figures.insert("frames", r.frames as f64);
    figures.insert("refused", r.refused as f64);
    Ok(RunOut {
        figures,
        notes: Vec::new(),
        info: vec![info],
    })
}
