//! The benchmark harness behind `rs2p bench` and `rs2p bench-node`: rs2p
//! measured side by side with py2p and js2p, one process per node. Not part
//! of the `rs2p` library; the command calls [`harness::run`] and
//! [`node::run`].
//!
//! - [`harness`]: starts the nodes (`rs2p bench-node` and the py2p and js2p
//!   adapters in `adapters/`), drives the scenarios of docs/benchmarks.md and
//!   writes the tables;
//! - [`node`]: one rs2p sync node speaking the adapters' line protocol.

pub mod harness;
pub mod node;
