//! `rs2p-sim`: runs one simulated mesh and prints what it measured.

use std::process::ExitCode;
use std::time::Duration;

use rs2p_sim::{run, SimConfig, Writers};

const USAGE: &str = "usage: rs2p-sim --nodes N --seed S --writes W --writers one|all \
[--partition-s T] [--churn K] [--latency-ms LO-HI] [--json]";

fn parse(args: &[String]) -> Result<(SimConfig, bool), String> {
    let mut cfg = SimConfig::default();
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let num = |v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{a} takes a whole number, not {v:?}"))
        };
        match a.as_str() {
            "--nodes" => cfg.nodes = num(value()?)? as usize,
            "--seed" => cfg.seed = num(value()?)?,
            "--writes" => cfg.writes = num(value()?)? as usize,
            "--writers" => {
                cfg.writers = match value()?.as_str() {
                    "one" => Writers::One,
                    "all" => Writers::All,
                    other => return Err(format!("--writers takes one or all, not {other:?}")),
                }
            }
            "--partition-s" => {
                let v = value()?;
                let s: f64 = v
                    .parse()
                    .map_err(|_| format!("--partition-s takes seconds, not {v:?}"))?;
                if !(0.0..=86_400.0).contains(&s) {
                    return Err(format!("--partition-s {s} is out of range (0 to 86400)"));
                }
                cfg.partition = Some(Duration::from_secs_f64(s));
            }
            "--churn" => cfg.churn = num(value()?)? as usize,
            "--latency-ms" => {
                let v = value()?;
                let (lo, hi) = v.split_once('-').unwrap_or((&v, &v));
                let lo = num(lo.to_string())?;
                let hi = num(hi.to_string())?;
                if lo > hi {
                    return Err(format!(
                        "--latency-ms {v}: the low bound is above the high one"
                    ));
                }
                cfg.latency = (Duration::from_millis(lo), Duration::from_millis(hi));
            }
            "--json" => json = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if cfg.nodes == 0 || cfg.nodes > 60_000 {
        return Err("--nodes takes 1 to 60000".into());
    }
    Ok((cfg, json))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cfg, json) = match parse(&args) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rs2p-sim: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let r = run(&cfg);
    if json {
        println!("{}", r.to_json());
    } else {
        println!(
            "{} nodes, seed {}, {} writes: missed {}, converged {}, rmr {:.3}, ldh {}, \
             {} frames ({} payload, {} transfer), {} bytes, {} ms simulated, {} ms wall",
            r.nodes,
            r.seed,
            r.writes,
            r.missed,
            r.converged,
            r.rmr,
            r.ldh,
            r.frames,
            r.payload_frames,
            r.transfer_frames,
            r.bytes,
            r.virtual_ms,
            r.wall_ms
        );
    }
    if r.missed == 0 && r.converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
