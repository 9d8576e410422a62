//! `rs2p node`: start a sync node (the JSON interface and the shell take it
//! from there), run it headless, handle shutdown signals; `rs2p
//! tls-keygen`.

use std::io::Write;
use std::process::ExitCode;

use crate::args::{HostPort, NodeArgs, TlsKeygenArgs};
use rs2p::config::{TlsConfig, TlsIdentity, TlsVerify};
use rs2p::{SyncConfig, SyncSocket};

/// A running node and what was configured for it.
pub struct Node {
    /// The node.
    pub sync: SyncSocket,
    /// The full subnet, with the leasing digit (`sync1`).
    pub subnet: String,
    /// The nodes to dial at startup (`--connect`).
    connect: Vec<HostPort>,
    /// The browser page server (`--http-port`), alive as long as the node.
    _web: Option<rs2p::web::WebServer>,
    /// The HTTP API (`--api`), alive as long as the node.
    api: Option<crate::api::Api>,
}

impl Node {
    /// The bound address as `HOST:PORT`.
    pub fn addr(&self) -> String {
        self.sync.mesh().local_addr().to_string()
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        self.sync.id()
    }

    /// The API's bound address, when it runs.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().map(crate::api::Api::local_addr)
    }

    /// Dials the `--connect` nodes. Each mode calls this once it listens
    /// for events, so that no `peer_joined` is missed. On failure the node
    /// is closed and the message says which node could not be reached.
    pub async fn dial(&self) -> Result<(), String> {
        for peer in &self.connect {
            if let Err(e) = self.sync.connect(&peer.host, peer.port).await {
                self.sync.close().await;
                return Err(format!("cannot connect to {peer}: {e}"));
            }
            tracing::info!(%peer, "connected");
        }
        Ok(())
    }
}

/// Binds the node described by `args` (`--connect` is for [`Node::dial`]).
pub async fn start(args: &NodeArgs) -> Result<Node, String> {
    let mut cfg = SyncConfig::new(args.listen)
        .with_subnet(args.subnet.clone())
        .with_leasing(!args.no_leasing);
    cfg.mesh.transport = args.transport.to_transport();
    cfg.mesh.out_addr = args.out_addr;
    cfg.data_dir = args.data_dir.clone();
    let subnet = cfg.mesh_config().subnet;
    if args.http_port.is_some() && cfg.mesh.transport != rs2p::Transport::Ws {
        return Err("--http-port needs --transport ws".into());
    }
    let ssl = cfg.mesh.transport == rs2p::Transport::Ssl;
    if !ssl && (args.tls_cert.is_some() || !args.tls_pin.is_empty()) {
        return Err("--tls-cert, --tls-key and --tls-pin need --transport ssl".into());
    }
    let mut fingerprint = None;
    if ssl {
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => TlsIdentity::from_pem_files(cert, key),
            _ => TlsIdentity::generate(),
        }
        .map_err(|e| e.to_string())?;
        fingerprint = Some(identity.fingerprint());
        let mut tls = TlsConfig::new().with_identity(identity);
        if !args.tls_pin.is_empty() {
            tls = tls.with_verify(TlsVerify::Pinned(args.tls_pin.clone()));
        }
        cfg.mesh.tls = tls;
    }
    let sync = SyncSocket::bind(cfg)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    if let Some(fp) = fingerprint {
        eprintln!("rs2p: TLS certificate fingerprint {fp}");
    }
    let web = match args.http_port {
        Some(port) => {
            let addr = std::net::SocketAddr::new(args.listen.ip(), port);
            match rs2p::web::serve(addr, &sync).await {
                Ok(web) => {
                    eprintln!("rs2p: browser page at http://{}/", web.local_addr());
                    Some(web)
                }
                Err(e) => {
                    sync.close().await;
                    return Err(format!("cannot serve the page on {addr}: {e}"));
                }
            }
        }
        None => None,
    };
    let api = match crate::api::from_args(args, &sync, &subnet).await {
        Ok(api) => api,
        Err(e) => {
            sync.close().await;
            return Err(e);
        }
    };
    Ok(Node {
        sync,
        subnet,
        connect: args.connect.clone(),
        _web: web,
        api,
    })
}

/// Runs `rs2p tls-keygen`: writes a new certificate and key, prints the
/// fingerprint.
pub fn tls_keygen(args: &TlsKeygenArgs) -> ExitCode {
    match write_keys(args) {
        Ok(fp) => {
            println!("{fp}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rs2p: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_keys(args: &TlsKeygenArgs) -> Result<String, String> {
    let (cert, key) = TlsIdentity::generate_pem().map_err(|e| e.to_string())?;
    let fp = TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes())
        .map_err(|e| e.to_string())?
        .fingerprint();
    let write = |path: &std::path::Path, text: &str, private: bool| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true);
        if args.force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        opts.open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&args.key, &key, true)?;
    write(&args.cert, &cert, false)?;
    Ok(fp.to_string())
}

/// No terminal, no JSON: say where we listen, then wait for a signal.
pub async fn headless(node: Node) -> ExitCode {
    let mut signals = Signals::install();
    if let Err(e) = node.dial().await {
        eprintln!("rs2p: {e}");
        return ExitCode::FAILURE;
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {} as {}", node.addr(), node.id());
        if let Some(api) = node.api_addr() {
            let _ = writeln!(out, "api on http://{api}");
        }
        let _ = out.flush();
    }
    signals.recv().await;
    node.sync.close().await;
    ExitCode::SUCCESS
}

/// The shutdown signals: Ctrl-C (SIGINT) and, on Unix, SIGTERM. The
/// handlers are installed when this is made, so make it before telling
/// anyone that the node is up. A handler that cannot be installed is logged
/// and never fires.
pub struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers (needs a running tokio runtime).
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let install = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot listen for {name}: {e}");
                    None
                }
            };
            Signals {
                int: install(SignalKind::interrupt(), "SIGINT"),
                term: install(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves when a shutdown signal arrives.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = one(&mut self.int) => tracing::info!("SIGINT: shutting down"),
                () = one(&mut self.term) => tracing::info!("SIGTERM: shutting down"),
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    }
}
