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
mod mesh;
mod nodes;
mod plan;
mod report;
mod restart;
mod scenarios;
mod sim;

use mesh::*;
use nodes::*;
use plan::Plan;
use report::*;
use scenarios::*;

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
    /// memory, wire, formation, restart, sim).
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
    /// Latency scenario: append a line per set and node to FILE (nodes in
    /// the mesh, implementation, node 0's pid, which tells runs apart, the
    /// node's index, the key, and microseconds from the set on node 0 to
    /// that node's update), to see which sets and nodes make a percentile.
    #[arg(long, value_name = "FILE")]
    pub latency_log: Option<std::path::PathBuf>,
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
    plan.lat_log = args.latency_log.clone();
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
        "sim",
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
    // Experiments only (not used by `rs2p bench` itself): the rs2p nodes
    // from another build, e.g. an older commit's, under this harness.
    let other = std::env::var_os("RS2P_BENCH_NODE_EXE").map(PathBuf::from);
    let exe = match other.map_or_else(std::env::current_exe, Ok) {
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
    if wanted("sim") && impls.contains(&Impl::Rs2p) {
        for case in 0..sim::CASES.len() {
            jobs.push(("sim", case, Impl::Rs2p, plan.sim_nodes));
        }
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
            // A simulation gives the same figures every run.
            let runs = if scenario == "sim" { 1 } else { plan.runs };
            for r in 0..runs {
                let what = match scenario {
                    "latency" => format!("latency N={key}"),
                    "throughput" => format!("throughput N={} K={size}", plan.tp_nodes),
                    "join" => format!("join M={size}"),
                    "memory" => format!("memory M={size}"),
                    "formation" => format!("formation N={key}"),
                    "restart" => format!("restart M={size} D={}", plan.restart_stale),
                    "sim" => format!("simulator N={size}, {}", sim::CASES[key]),
                    _ => format!("wire {size} sets"),
                };
                eprint!(
                    "[{:>6.1}s] {what} {} run {}/{}: ",
                    started.elapsed().as_secs_f64(),
                    imp.name(),
                    r + 1,
                    runs
                );
                let _ = std::io::stderr().flush();
                let res = match scenario {
                    "latency" => run_latency(&env, imp, key, &plan).await,
                    "throughput" => run_throughput(&env, imp, size, &plan).await,
                    "join" => run_join(&env, imp, size, &plan).await,
                    "memory" => run_memory(&env, imp, size, &plan).await,
                    "formation" => formation::run_formation(&env, imp, key).await,
                    "restart" => restart::run_restart(&env, size, plan.restart_stale, &plan).await,
                    "sim" => sim::run_sim(key, size, plan.sim_writes).await,
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
        // How many times better rs2p is than each reference, this row.
        let mut advantage: BTreeMap<Impl, f64> = BTreeMap::new();
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
                        advantage.insert(i, r);
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
            let mut t = match (spec.target, ours) {
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
            if let Some((other, times)) = spec.vs_ref.filter(|(o, _)| impls.contains(o)) {
                let met = advantage.get(&other).is_some_and(|&r| r >= times);
                let mut obj = match target_json {
                    Json::Object(o) => o,
                    _ => serde_json::Map::new(),
                };
                let both = obj.get("met").and_then(Json::as_bool).unwrap_or(true) && met;
                obj.insert("met".into(), both.into());
                obj.insert("times_better_than".into(), other.name().into());
                obj.insert("times".into(), times.into());
                obj.insert("times_met".into(), met.into());
                target_json = Json::Object(obj);
                let sep = if t.is_empty() { "" } else { "; " };
                let verdict = if met { "met" } else { "MISSED" };
                let _ = write!(t, "{sep}≥ {} {} {verdict}", fmt_ratio(times), other.name());
            }
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
                "--root" | "--logs" | "--out" | "--latency-log" => skip = true,
                "--no-write" => {}
                a2 if a2.starts_with("--root=")
                    || a2.starts_with("--latency-log=")
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
        "Median of {} run(s) per figure (a reference that does not finish a size is not run again; the simulator's, 8., run once: a simulation gives the same figures every time). \"rs2p vs X\" says how many times better rs2p is: X ÷ rs2p for times, bytes and memory, rs2p ÷ X for rates; it is left out where the sizes differ and the figure is a total.\n",
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
