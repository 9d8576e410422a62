//! `rs2p`: run a p2p-today 0.7 sync node (interactive, scripted through
//! JSON lines, or headless) or watch a few nodes replicate in a demo.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tokio::runtime::Runtime;
use tracing_subscriber::EnvFilter;

use crate::args::{DemoArgs, NodeArgs, TlsKeygenArgs};

mod api;
mod args;
mod client;
mod demo;
mod human;
mod json;
mod metrics;
mod node;
mod probe;
mod remote_shell;
mod shell;
mod values;

/// A p2p-today protocol 0.7 node, wire-compatible with py2p and js2p.
///
/// rs2p keeps a dictionary replicated to every node of a mesh (py2p's and
/// js2p's SyncSocket). Run `rs2p demo` to see a few nodes converge, or
/// `rs2p node` to join a mesh.
#[derive(Debug, Parser)]
#[command(name = "rs2p", version, propagate_version = true)]
struct Cli {
    /// More log output on stderr: -v info (and connections refused for
    /// another subnet), -vv debug, -vvv trace (default: warnings only;
    /// RUST_LOG, when set, overrides this).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a sync node until Ctrl-C or SIGTERM.
    ///
    /// With --json, stdin and stdout speak JSON lines (one request per
    /// line in, one reply per request out, with events in between). Without
    /// --json and with a terminal on stdin, an interactive shell (type
    /// `help`). Otherwise the node prints `listening on HOST:PORT as ID` and
    /// runs until it gets a signal.
    #[command(after_long_help = NODE_HELP)]
    Node(NodeArgs),
    /// Start a few nodes in this process and watch them replicate.
    ///
    /// The nodes listen on 127.0.0.1 (free ports) and are linked as a chain.
    /// Each writes a key; the demo prints every node's view until they all
    /// agree (20 s at most), then shows a write refused because another
    /// node holds the key's lease. Exits 1 when the views do not converge.
    Demo(DemoArgs),
    /// Measure rs2p beside py2p and js2p (one process per node) and write
    /// the table to docs/benchmarks.md and docs/benchmarks.json.
    ///
    /// The references are the ones installed by scripts/setup-peers.sh.
    /// Build with --release: `cargo run --release --bin rs2p -- bench`.
    Bench(rs2p_bench::harness::BenchArgs),
    /// One node driven by `rs2p bench` through JSON lines (see
    /// docs/benchmarks.md).
    #[command(hide = true)]
    BenchNode(rs2p_bench::node::BenchNodeArgs),
    /// Write a fresh self-signed TLS certificate and key (PEM) for
    /// `rs2p node --transport ssl --tls-cert FILE --tls-key FILE`, and print
    /// its SHA-256 fingerprint (what other nodes pass to --tls-pin).
    TlsKeygen(TlsKeygenArgs),
    /// Client commands: talk to a running node's HTTP API (--endpoint).
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// The long help's appendix of `rs2p node`: the JSON interface in short.
const NODE_HELP: &str = "\
JSON interface (--json):
  First line out: {\"event\":\"listening\",\"addr\":\"HOST:PORT\",\"id\":\"<node id>\"}.
  Then one request per line in, {\"op\":OP, ...fields}, with an optional \"id\" (any JSON)
  echoed in the reply (as \"request_id\" for the op `id`, whose \"id\" is the node id).
  Ops and fields:
    set {key, value}            del {key}                 update {items: {...}}
    apply_delta {key, delta}    get {key} / pop {key}     -> found, value
    keys -> keys                len -> len                dump -> items [[key, value, {owner, timestamp}]]
    connect {host, port}        peers -> peers [{id, addr, outgoing}]
    id -> id, addr, subnet, protocol_id
    broadcast {packets: [...]}  recv -> messages [{sender, time, packets}]
    wait {key, value?, absent?, timeout_ms? = 10000} -> elapsed_ms
    close (EOF on stdin does the same; the process exits 0)
  Replies: {\"ok\":true, ...} or {\"ok\":false,\"error\":{\"kind\":K,\"message\":M}} with K one of
    bad_request, timeout, lease_held, not_a_mapping, key_not_found, closed, io, config,
    unknown_peer, value, store; lease_held errors also carry owner, expires_at (unix time)
    and, without --data-dir, a hint.
  Events: update {key, value, owner, timestamp}, delete {key}, peer_joined {id, addr},
    peer_left {id}, as {\"event\":NAME, ...}.
  Values are JSON (integers stay integers); bytes are {\"$bin\":\"<hex>\"}. Keys are strings
  or {\"$bin\":\"<hex>\"}. Map keys that are not strings print as their text.

Shell (a terminal on stdin, no --json): type `help` at the `rs2p>` prompt.";

fn init_logging(verbose: u8) {
    let default = match verbose {
        // Connections refused for another subnet are logged from -v on:
        // `rs2p node --connect` explains its own by subnet name.
        0 => "warn,rs2p::proto::mesh::peers=error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).unwrap_or_else(|_| EnvFilter::new(default))
        }
        _ => EnvFilter::new(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs `rs2p node`: starts the node, then hands it to the JSON interface,
/// the interactive shell, or runs it headless until a signal. The exit code
/// says whether it started.
fn run_node(rt: &Runtime, args: NodeArgs) -> ExitCode {
    let node = match rt.block_on(node::start(&args)) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("rs2p: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        rt.block_on(json::run(node))
    } else if std::io::stdin().is_terminal() {
        shell::run(rt, node)
    } else {
        rt.block_on(node::headless(node))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // A node runs on the workers it was given (one by default, see
    // `NodeArgs::threads`); the other commands take one per core.
    let workers = match &cli.command {
        Command::Node(args) => Some(usize::from(args.threads)),
        Command::BenchNode(args) => Some(rs2p_bench::node::workers(args)),
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rs2p: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.command {
        Command::Node(args) => run_node(&rt, args),
        Command::Demo(args) => rt.block_on(demo::run(args)),
        Command::Bench(args) => rs2p_bench::harness::run(&rt, args),
        Command::BenchNode(args) => rs2p_bench::node::run(&rt, args),
        Command::TlsKeygen(args) => node::tls_keygen(&args),
        Command::Client(cmd) => client::run(&rt, cmd),
    };
    // Threads blocked on stdin or the terminal must not hold the exit.
    rt.shutdown_background();
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
