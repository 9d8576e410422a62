//! The options of the subcommands, and the `HOST:PORT` type they share.

use std::fmt;
use std::str::FromStr;

use clap::{Args, ValueEnum};

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
    /// The `--transport` name.
    pub fn name(self) -> &'static str {
        match self {
            TransportArg::Plaintext => "plaintext",
            TransportArg::Ssl => "ssl",
            TransportArg::Ws => "ws",
        }
    }

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
        let port = match port.parse::<u64>() {
            Ok(p) => u16::try_from(p).map_err(|_| format!("port {p} is out of range (0-65535)"))?,
            Err(_) => return Err(format!("`{port}` is not a port number (0-65535)")),
        };
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
    /// Address to listen on: an IP address or a host name (resolved), and
    /// a port (0 picks a free port).
    #[arg(short, long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    pub listen: HostPort,

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

    /// Address advertised to peers, as an IP address or a host name
    /// (resolved here) and port (default: the listening address, or
    /// 127.0.0.1 when listening on 0.0.0.0). Give it when other hosts are
    /// to reach this node.
    #[arg(long, value_name = "HOST:PORT")]
    pub out_addr: Option<HostPort>,

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

    /// Worker threads of the node's async runtime. One carries a node's
    /// work without handing it between threads, which costs less CPU and
    /// time per write; more let connection reads and writes (TLS
    /// encryption among them) run beside the protocol on other cores.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,

    /// Speak JSON lines on stdin/stdout instead of running the shell.
    #[arg(long)]
    pub json: bool,

    /// The HTTP API (`rs2p get`, `rs2p status`, ... and /metrics): IP:PORT
    /// (port 0 picks a free port), or `off`. Default: 127.0.0.1:4480, and
    /// when that port is taken the node says so and runs without the API;
    /// an address given here must be free. An address other than loopback
    /// needs --api-token-file.
    #[arg(long, value_name = "IP:PORT|off")]
    pub api: Option<crate::api::ApiAddr>,

    /// A file whose first line is the API's token: every request then needs
    /// `Authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub api_limits: crate::api::ApiLimits,
}

/// Options of `rs2p demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of nodes (2 to 16).
    #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=16))]
    pub nodes: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        let hp: HostPort = "example.org:80".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("example.org", 80));
        let hp: HostPort = "[::1]:5".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("::1", 5));
        assert_eq!(hp.to_string(), "[::1]:5");
        assert!("nope".parse::<HostPort>().is_err());
        assert!(":1".parse::<HostPort>().is_err());
        let e = "127.0.0.1:99999".parse::<HostPort>().unwrap_err();
        assert_eq!(e, "port 99999 is out of range (0-65535)");
        let e = "h:http".parse::<HostPort>().unwrap_err();
        assert!(e.contains("not a port number"), "{e}");
        let hp: HostPort = "localhost:0".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("localhost", 0));
    }
}
