//! Results: the table's rows, cells and targets, the machine's description,
//! and the markdown and JSON written.

use super::*;

// ------------------------------------------------------------------ results

/// All runs of one scenario size for one implementation.
#[derive(Debug)]
pub(super) struct Measured {
    pub(super) scenario: &'static str,
    /// N for latency, M for join, 0 otherwise.
    pub(super) key: usize,
    pub(super) imp: Impl,
    /// The size actually used (K, M, sets).
    pub(super) size: usize,
    pub(super) runs: Vec<RunResult>,
    /// Set when the implementation was not run at all.
    pub(super) skipped: Option<String>,
}

impl Measured {
    pub(super) fn values(&self, figure: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter_map(|r| r.figures.get(figure).copied())
            .collect()
    }

    pub(super) fn failures(&self) -> Vec<&String> {
        self.runs.iter().filter_map(|r| r.as_ref().err()).collect()
    }

    pub(super) fn info(&self) -> Vec<String> {
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

    pub(super) fn notes(&self) -> Vec<String> {
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
pub(super) enum Better {
    Lower,
    Higher,
}

/// One line of the table.
pub(super) struct RowSpec {
    pub(super) id: String,
    pub(super) label: String,
    pub(super) scenario: &'static str,
    pub(super) key: Option<usize>,
    pub(super) figure: &'static str,
    pub(super) unit: &'static str,
    pub(super) better: Better,
    /// The rs2p target: value and whether it is a maximum (`<`, `≤`) or a
    /// minimum (`≥`).
    pub(super) target: Option<(f64, &'static str)>,
    /// The size this row is about (the reference's may differ).
    pub(super) size: Option<usize>,
    pub(super) size_name: &'static str,
    /// The figure scales with the size (a total time): no ratio across
    /// different sizes.
    pub(super) size_bound: bool,
    /// A second target: rs2p at least this many times better than that
    /// implementation in the same run.
    pub(super) vs_ref: Option<(Impl, f64)>,
}

pub(super) fn fmt_int(v: f64) -> String {
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

pub(super) fn fmt_val(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if unit.is_empty() {
        // Counts and ratios (the simulator's).
        if v.fract() == 0.0 {
            return fmt_int(v);
        }
        let four = format!("{v:.4}");
        return four.trim_end_matches('0').to_string();
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

pub(super) fn fmt_ratio(r: f64) -> String {
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
pub(super) struct CellOut {
    pub(super) text: String,
    pub(super) median: Option<f64>,
    pub(super) status: &'static str,
    pub(super) size: Option<usize>,
    pub(super) runs: Vec<f64>,
    pub(super) notes: Vec<String>,
}

pub(super) fn cell(row: &RowSpec, m: Option<&Measured>, imp: Impl, plan: &Plan) -> CellOut {
    let Some(m) = m else {
        let reason = match (row.scenario, imp.is_ref()) {
            ("join", true) => format!(
                "not run (M reduced to {})",
                fmt_int(plan.join_size_ref as f64)
            ),
            ("restart", true) => "n/a (keeps nothing across a restart: see 3.)".into(),
            ("sim", true) => "n/a (simulates rs2p's core)".into(),
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
pub(super) fn cause_of(text: &str) -> Option<&'static str> {
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
pub(super) fn shorten(full: &str) -> String {
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

pub(super) fn rows(plan: &Plan) -> Vec<RowSpec> {
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
                vs_ref: (n == 16 && p == "p99").then_some((Impl::Py2p, 10.0)),
            });
        }
        if n == 16 {
            v.push(RowSpec {
                id: format!("latency_loopback_n{n}"),
                label: format!("1. loopback bytes per set, N={n} (all links, headers included)"),
                scenario: "latency",
                key: Some(n),
                figure: "loopback_bytes_per_set",
                unit: "B",
                better: Better::Lower,
                target: Some((4_000.0, "≤")),
                size: None,
                size_name: "",
                size_bound: false,
                vs_ref: None,
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
        vs_ref: None,
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
        vs_ref: None,
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
        vs_ref: None,
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
            vs_ref: None,
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
            vs_ref: None,
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
        vs_ref: None,
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
        vs_ref: None,
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
            vs_ref: None,
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
            vs_ref: None,
        });
    }
    let full = plan.sim_nodes == 1000 && plan.sim_writes == 300;
    for (case, what, figure, unit, target) in [
        (
            0,
            "relative message redundancy",
            "rmr",
            "",
            Some((0.1, "≤")),
        ),
        (0, "largest hop count", "ldh", "", Some((12.0, "≤"))),
        (0, "deliveries missed", "missed", "", Some((0.0, "≤"))),
        (
            1,
            "relative message redundancy",
            "rmr",
            "",
            Some((0.5, "≤")),
        ),
        (1, "deliveries missed", "missed", "", Some((0.0, "≤"))),
        (2, "deliveries missed", "missed", "", Some((0.0, "≤"))),
        (
            2,
            "live nodes not identical at the end",
            "diverged",
            "",
            Some((0.0, "≤")),
        ),
        (
            2,
            "simulated time until converged",
            "virtual_ms",
            "ms",
            None,
        ),
    ] {
        v.push(RowSpec {
            id: format!("sim_{case}_{figure}"),
            label: format!(
                "8. simulator, {} nodes, {} writes, {}: {what}",
                fmt_int(plan.sim_nodes as f64),
                plan.sim_writes,
                super::sim::CASES[case]
            ),
            scenario: "sim",
            key: Some(case),
            figure,
            unit,
            better: Better::Lower,
            target: target.filter(|_| full),
            size: None,
            size_name: "",
            size_bound: false,
            vs_ref: None,
        });
    }
    v
}

pub(super) fn target_met(t: (f64, &str), v: f64) -> bool {
    match t.1 {
        "<" => v < t.0,
        "≤" => v <= t.0,
        "≥" => v >= t.0,
        _ => v > t.0,
    }
}

// ------------------------------------------------------------------ machine

pub(super) fn cmd_output(cmd: &str, args: &[&str]) -> Option<String> {
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
pub(super) fn civil(days: i64) -> (i64, u32, u32) {
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

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

pub(super) fn utc_now() -> String {
    let s = now_us() / 1_000_000;
    let (y, m, d) = civil(s.div_euclid(86_400));
    let r = s.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        r / 3600,
        r / 60 % 60
    )
}

pub(super) fn machine(env: &Env) -> BTreeMap<&'static str, String> {
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

pub(super) struct Table {
    pub(super) header: Vec<String>,
    pub(super) rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn markdown(&self) -> String {
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

    pub(super) fn text(&self) -> String {
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
pub(super) const KEEP_MARKER: &str =
    "<!-- Sections below are measured by other tools; `rs2p bench` keeps them. -->";

/// The method section of docs/benchmarks.md.
pub(super) const METHOD: &str = include_str!("../../method.md");
