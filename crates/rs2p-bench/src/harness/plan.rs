//! The plan of a benchmark run: sizes, counts and time limits, full or
//! `--quick`.

use super::*;

/// Sizes and limits of a benchmark run.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) runs: usize,
    pub(super) lat_sizes: Vec<usize>,
    pub(super) lat_sets: usize,
    pub(super) lat_spacing_ms: u64,
    pub(super) lat_log: Option<std::path::PathBuf>,
    pub(super) lat_limit: Duration,
    pub(super) tp_nodes: usize,
    pub(super) tp_keys: usize,
    pub(super) tp_keys_ref: usize,
    pub(super) tp_value: usize,
    pub(super) tp_limit: Duration,
    pub(super) join_sizes: Vec<usize>,
    pub(super) join_size_ref: usize,
    pub(super) join_limit: Duration,
    pub(super) load_limit: Duration,
    pub(super) mem_keys: usize,
    pub(super) value: usize,
    pub(super) wire_sets: usize,
    pub(super) wire_limit: Duration,
    pub(super) form_sizes: Vec<usize>,
    pub(super) restart_keys: usize,
    pub(super) restart_stale: usize,
    /// Simulated nodes and writes of scenario 8 (`rs2p-sim`).
    pub(super) sim_nodes: usize,
    pub(super) sim_writes: usize,
}

impl Plan {
    pub(super) fn full() -> Plan {
        Plan {
            runs: 3,
            lat_sizes: vec![3, 8, 16],
            lat_sets: 200,
            lat_spacing_ms: 50,
            lat_log: None,
            lat_limit: Duration::from_secs(60),
            tp_nodes: 8,
            tp_keys: 10_000,
            tp_keys_ref: 3_000,
            tp_value: 16,
            tp_limit: Duration::from_secs(120),
            join_sizes: vec![10_000, 100_000, 1_000_000],
            join_size_ref: 10_000,
            join_limit: Duration::from_secs(90),
            load_limit: Duration::from_secs(180),
            mem_keys: 100_000,
            value: 100,
            wire_sets: 1000,
            wire_limit: Duration::from_secs(60),
            form_sizes: vec![16],
            restart_keys: 1_000_000,
            restart_stale: 100,
            sim_nodes: 1000,
            sim_writes: 300,
        }
    }

    pub(super) fn quick() -> Plan {
        Plan {
            runs: 1,
            lat_sizes: vec![3, 8],
            lat_sets: 50,
            tp_keys: 2_000,
            tp_keys_ref: 500,
            tp_limit: Duration::from_secs(60),
            join_sizes: vec![2_000, 10_000],
            join_size_ref: 2_000,
            join_limit: Duration::from_secs(30),
            load_limit: Duration::from_secs(60),
            mem_keys: 20_000,
            wire_sets: 200,
            form_sizes: vec![8],
            restart_keys: 20_000,
            sim_nodes: 100,
            sim_writes: 100,
            ..Plan::full()
        }
    }

    pub(super) fn tp_keys_for(&self, imp: Impl) -> usize {
        if imp.is_ref() {
            self.tp_keys_ref
        } else {
            self.tp_keys
        }
    }
}
