//! `rs2p`: run a p2p-today 0.7 sync node (interactive, scripted through
//! JSON lines, or headless) or watch a few nodes replicate in a demo.

use std::fmt;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

mod demo;
mod json;
mod node;
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
    /// More log output on stderr: -v info, -vv debug, -vvv trace (default:
    /// warnings only; RUST_LOG, when set, overrides this).
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
    /// Build with --release: `cargo run --release -- bench`.
    Bench(rs2p_bench::harness::BenchArgs),
    /// One node driven by `rs2p bench` through JSON lines (see
    /// docs/benchmarks.md).
    #[command(hide = true)]
    BenchNode(rs2p_bench::node::BenchNodeArgs),
    /// Write a fresh self-signed TLS certificate and key (PEM) for
    /// `rs2p node --transport ssl --tls-cert FILE --tls-key FILE`, and print
    /// its SHA-256 fingerprint (what other nodes pass to --tls-pin).
    TlsKeygen(TlsKeygenArgs),
}

/// Options of `rs2p tls-keygen`.
#[derive(Debug, Args)]
pub struct TlsKeygenArgs {
    /// Where to write the certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: std::path::PathBuf,
    /// Where to write the private key (PEM; created readable by the owner
    /// only).
    #[arg(long, value_name = "FILE")]
    pub key: std::path::PathBuf,
    /// Replace files that already exist.
    #[arg(long)]
    pub force: bool,
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
    unknown_peer, value, store.
  Events: update {key, value, owner, timestamp}, delete {key}, peer_joined {id, addr},
    peer_left {id}, as {\"event\":NAME, ...}.
  Values are JSON (integers stay integers); bytes are {\"$bin\":\"<hex>\"}. Keys are strings
  or {\"$bin\":\"<hex>\"}. Map keys that are not strings print as their text.

Shell (a terminal on stdin, no --json): type `help` at the `rs2p>` prompt.";

/// The transport to speak. Its name is hashed into the protocol id, so
/// nodes on different transports never share a mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// Plain TCP (py2p's and js2p's `Plaintext`).
    Plaintext,
    /// TLS (py2p's and js2p's `SSL`) with a fresh self-signed certificate;
    /// peers' certificates are not checked, so it only protects against
    /// passive eavesdropping.
    Ssl,
    /// WebSocket (js2p's `ws`); see --http-port for the browser page.
    Ws,
}

impl TransportArg {
    /// The library's transport.
    pub fn to_transport(self) -> rs2p::Transport {
        match self {
            TransportArg::Plaintext => rs2p::Transport::Plaintext,
            TransportArg::Ssl => rs2p::Transport::Ssl,
            TransportArg::Ws => rs2p::Transport::Ws,
        }
    }
}

/// A `HOST:PORT` pair whose host may be a name, an IPv4 address or a
/// bracketed IPv6 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// The host, without brackets.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<HostPort, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{port}` is not a port (0-65535)"))?;
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Options of `rs2p node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(short, long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// A node to connect to at startup (repeatable). Startup fails when one
    /// cannot be reached.
    #[arg(short, long, value_name = "HOST:PORT")]
    pub connect: Vec<HostPort>,

    /// Base subnet name; the leasing digit is appended (`sync` becomes
    /// `sync1`, or `sync0` with --no-leasing). Only nodes with the same
    /// subnet, leasing and transport can talk.
    #[arg(long, value_name = "NAME", default_value = "sync")]
    pub subnet: String,

    /// Turn leases off: any node may overwrite any key, the latest write
    /// wins.
    #[arg(long)]
    pub no_leasing: bool,

    /// Transport to speak.
    #[arg(long, value_enum, default_value_t = TransportArg::Plaintext)]
    pub transport: TransportArg,

    /// With --transport ws: serve a browser page on this port (same host as
    /// --listen) that joins the mesh from the browser.
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,

    /// Address advertised to peers (default: the listening address, or
    /// 127.0.0.1 when listening on 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    pub out_addr: Option<SocketAddr>,

    /// Keep the dictionary and the node id in this folder, so that a
    /// restarted node (even after a crash) has every acknowledged write and
    /// the same id; writes return once they are on disk.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,

    /// With --transport ssl: this node's certificate chain (PEM, leaf
    /// first), e.g. from `rs2p tls-keygen`. Default: a fresh self-signed
    /// certificate at every start. Its fingerprint is printed on stderr.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// With --transport ssl: talk only to nodes whose certificate has this
    /// SHA-256 fingerprint (64 hex digits, colons allowed; repeatable).
    /// Both ends are then authenticated: list every node of the mesh, this
    /// one too. Only rs2p nodes can join such a mesh (py2p and js2p present
    /// no client certificate). Without it, any certificate is accepted, as
    /// py2p and js2p do: TLS then only hides the traffic from passive
    /// eavesdroppers.
    #[arg(long, value_name = "SHA256")]
    pub tls_pin: Vec<rs2p::config::CertFingerprint>,

    /// Speak JSON lines on stdin/stdout instead of running the shell.
    #[arg(long)]
    pub json: bool,
}

/// Options of `rs2p demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of nodes (2 to 16).
    #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=16))]
    pub nodes: u8,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rs2p: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.command {
        Command::Node(args) => node::run(&rt, args),
        Command::Demo(args) => rt.block_on(demo::run(args)),
        Command::Bench(args) => rs2p_bench::harness::run(&rt, args),
        Command::BenchNode(args) => rs2p_bench::node::run(&rt, args),
        Command::TlsKeygen(args) => node::tls_keygen(&args),
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

    #[test]
    fn host_port() {
        let hp: HostPort = "example.org:80".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("example.org", 80));
        let hp: HostPort = "[::1]:5".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("::1", 5));
        assert_eq!(hp.to_string(), "[::1]:5");
        assert!("nope".parse::<HostPort>().is_err());
        assert!(":1".parse::<HostPort>().is_err());
        assert!("h:70000".parse::<HostPort>().is_err());
    }
}
