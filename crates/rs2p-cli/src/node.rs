//! `rs2p node`: start a sync node (the JSON interface and the shell take it
//! from there), run it headless, handle shutdown signals; `rs2p
//! tls-keygen`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::{HostPort, NodeArgs, TlsKeygenArgs};
use crate::human::{self, Context};
use crate::probe::{self, Probe};
use rs2p::config::{TlsConfig, TlsIdentity, TlsVerify};
use rs2p::{Error, MeshEvent, SyncConfig, SyncSocket};
use tokio_stream::StreamExt;

/// How long a dialled peer has to complete its handshake.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// How often the dial looks at the connection count meanwhile.
const JOIN_POLL: Duration = Duration::from_millis(50);

/// A running node and what was configured for it.
pub struct Node {
    /// The node.
    pub sync: SyncSocket,
    /// The full subnet, with the leasing digit (`sync1`).
    pub subnet: String,
    /// The base subnet (`--subnet`).
    base_subnet: String,
    /// The transport's `--transport` name.
    transport: &'static str,
    /// The node keeps its data and id in a `--data-dir`.
    durable: bool,
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

    /// What the hints of [`human::describe`] need to know.
    pub fn context(&self) -> Context {
        Context {
            durable: self.durable,
        }
    }

    /// Dials the `--connect` nodes and waits for each to complete its
    /// handshake. Each mode calls this once it listens for events, so that
    /// no `peer_joined` is missed. On failure the node is closed and the
    /// message says which node could not be reached and why.
    pub async fn dial(&self) -> Result<(), String> {
        for peer in &self.connect {
            if let Err(e) = self.join(peer).await {
                self.sync.close().await;
                return Err(e);
            }
            tracing::info!(%peer, "connected");
        }
        Ok(())
    }

    /// Connects to `peer` and waits until a peer joins (or the connection
    /// is dropped, or [`JOIN_WAIT`] passes). The error says what went wrong
    /// and what to do.
    pub async fn join(&self, peer: &HostPort) -> Result<(), String> {
        let mesh = self.sync.mesh();
        let mut events = mesh.events();
        let before = mesh.stats().await.map_err(|e| e.to_string())?.connections;
        if let Err(e) = self.sync.connect(&peer.host, peer.port).await {
            return Err(self.connect_failed(peer, &e).await);
        }
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        let dropped = loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(MeshEvent::PeerJoined { .. }) => return Ok(()),
                    // Say why at once rather than at the next poll.
                    Some(MeshEvent::PeerRefused { .. }) => break true,
                    Some(_) => {}
                    None => return Err("the node closed".into()),
                },
                () = tokio::time::sleep(JOIN_POLL) => {
                    let now = mesh.stats().await.map_err(|e| e.to_string())?;
                    if now.connections <= before {
                        break true;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break false;
                    }
                }
            }
        };
        // A join may have come with the poll that saw the drop.
        loop {
            let ev = tokio::select! {
                biased;
                ev = events.next() => ev,
                () = std::future::ready(()) => None,
            };
            match ev {
                Some(MeshEvent::PeerJoined { .. }) => return Ok(()),
                Some(_) => {}
                None => break,
            }
        }
        if dropped && self.joined_already(peer).await {
            return Ok(());
        }
        Err(self.refused(peer, dropped).await)
    }

    /// True when the node at `peer` is a peer already: it dialled this
    /// node while this node dialled it, and this node's dial was dropped
    /// as the second connection between the two (both ends keep the same
    /// one, so which survives is not ours to choose). Told by the address
    /// the peer advertised, or by the id it sends in a plaintext handshake.
    async fn joined_already(&self, peer: &HostPort) -> bool {
        let Ok(peers) = self.sync.mesh().peers().await else {
            return false;
        };
        let at_addr = peers.iter().any(|p| {
            p.addr
                .as_ref()
                .is_some_and(|(host, port)| *port == peer.port && *host == peer.host)
        });
        if at_addr {
            return true;
        }
        if self.transport != "plaintext" {
            return false;
        }
        match probe::probe(&peer.host, peer.port).await {
            Probe::Handshake { id, .. } => peers.iter().any(|p| p.id == id),
            _ => false,
        }
    }

    /// Why `connect` failed, with a hint.
    async fn connect_failed(&self, peer: &HostPort, e: &Error) -> String {
        let head = format!("cannot connect to {peer}: {e}");
        if let Error::Io(io) = e {
            let hint = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    Some("nothing listens there: check the address and that the node runs")
                }
                std::io::ErrorKind::TimedOut => Some("no answer: check the address and firewalls"),
                _ => None,
            };
            if let Some(hint) = hint {
                return format!("{head}\n  hint: {hint}");
            }
        }
        if self.transport == "plaintext" || head.contains("certificate") {
            return head;
        }
        // A TLS or WebSocket dial to a plaintext node fails in its
        // handshake; a plaintext node says so by speaking first.
        match probe::probe(&peer.host, peer.port).await {
            Probe::Handshake { protocol_id, .. } => {
                let theirs = probe::name_protocol(&protocol_id, &self.base_subnet)
                    .map(|n| format!(" (subnet {})", n.subnet))
                    .unwrap_or_default();
                format!(
                    "cannot connect to {peer}: this peer speaks plaintext{theirs}, not {}\n  \
                     hint: try --transport plaintext",
                    self.transport
                )
            }
            _ => format!(
                "{head}\n  hint: the peer may speak another transport than {}: check its --transport",
                self.transport
            ),
        }
    }

    /// Why the peer at `peer` did not join although the connection opened.
    async fn refused(&self, peer: &HostPort, dropped: bool) -> String {
        let ours = format!("subnet {} over {}", self.subnet, self.transport);
        let what = if dropped {
            "closed the connection"
        } else {
            "sent no handshake"
        };
        match probe::probe(&peer.host, peer.port).await {
            Probe::Handshake { id, .. } if id == self.id() => {
                format!("cannot connect to {peer}: that is this node's own address")
            }
            Probe::Handshake { protocol_id, .. }
                if protocol_id == self.sync.mesh().protocol_id() =>
            {
                format!(
                    "cannot connect to {peer}: the node there is on this node's {ours} but {what} \
                     without joining\n  hint: run with -v to see why"
                )
            }
            Probe::Handshake { protocol_id, .. } => {
                match probe::name_protocol(&protocol_id, &self.base_subnet) {
                    Some(theirs) => {
                        let mut hints = subnet_hints(&theirs.subnet, &self.subnet);
                        if theirs.transport != self.transport {
                            hints.push(format!("with --transport {}", theirs.transport));
                        }
                        format!(
                            "cannot connect to {peer}: it is on subnet {} over {}, this node on {ours}; \
                             only nodes on the same subnet and transport can talk\n  \
                             hint: start this node {}",
                            theirs.subnet,
                            theirs.transport,
                            hints.join(", ")
                        )
                    }
                    None => format!(
                        "cannot connect to {peer}: it is on another subnet or transport than this \
                         node's {ours} (its protocol id {}, ours {})\n  \
                         hint: give this node the peer's --subnet, --no-leasing and --transport",
                        human::short_id(&protocol_id),
                        human::short_id(self.sync.mesh().protocol_id())
                    ),
                }
            }
            Probe::Silent if self.transport == "plaintext" => format!(
                "cannot connect to {peer}: it {what} without a plaintext handshake; it may speak \
                 TLS or WebSocket\n  hint: try --transport ssl or --transport ws"
            ),
            _ => format!(
                "cannot connect to {peer}: it {what} without joining this node's {ours}\n  \
                 hint: check its --subnet, --no-leasing and --transport, or run with -v"
            ),
        }
    }
}

/// What to change in this node's options to go from the full subnet
/// `ours` to `theirs` (each a base name and a leasing digit, as `sync1`;
/// `theirs` may also be a mesh subnet without the digit).
fn subnet_hints(theirs: &str, ours: &str) -> Vec<String> {
    let split = |s: &str| match s.char_indices().last() {
        Some((i, d @ ('0' | '1'))) if i > 0 => (s[..i].to_string(), Some(d)),
        _ => (s.to_string(), None),
    };
    let ((their_base, their_digit), (our_base, our_digit)) = (split(theirs), split(ours));
    let mut hints = Vec::new();
    if their_base != our_base {
        hints.push(format!("with --subnet {their_base}"));
    }
    match (their_digit, our_digit) {
        (Some('0'), Some('1')) => hints.push("with --no-leasing".into()),
        (Some('1'), Some('0')) => hints.push("without --no-leasing".into()),
        (None, _) => hints.push(format!(
            "on subnet {theirs} (a mesh subnet: `rs2p node` always appends a leasing digit)"
        )),
        _ => {}
    }
    hints
}

/// The first address `hp` resolves to; `what` names the option.
async fn resolve(hp: &HostPort, what: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host((hp.host.as_str(), hp.port))
        .await
        .map_err(|e| format!("{what} {hp}: cannot resolve `{}`: {e}", hp.host))?;
    addrs
        .next()
        .ok_or_else(|| format!("{what} {hp}: `{}` has no address", hp.host))
}

/// Why binding failed: the address and the reason, with a hint.
fn bind_failed(listen: &HostPort, addr: SocketAddr, e: &Error) -> String {
    let shown = if listen.host == addr.ip().to_string() {
        addr.to_string()
    } else {
        format!("{listen} ({addr})")
    };
    let head = format!("cannot listen on {shown}: {e}");
    let hint = match e {
        Error::Io(io) => match io.kind() {
            std::io::ErrorKind::AddrInUse => Some(format!(
                "another program already listens on port {}: choose another --listen port, or \
                 port 0 for a free one",
                addr.port()
            )),
            std::io::ErrorKind::AddrNotAvailable => Some(format!(
                "{} is not an address of this machine: listen on one of its addresses, or 0.0.0.0",
                addr.ip()
            )),
            std::io::ErrorKind::PermissionDenied => {
                Some("ports below 1024 need privileges: choose a port above 1023".to_string())
            }
            _ => None,
        },
        _ => None,
    };
    match hint {
        Some(h) => format!("{head}\n  hint: {h}"),
        None => head,
    }
}

/// Binds the node described by `args` (`--connect` is for [`Node::dial`]).
/// Failures of the data dir and of the listening address are told apart.
pub async fn start(args: &NodeArgs) -> Result<Node, String> {
    let listen = resolve(&args.listen, "--listen").await?;
    let mut cfg = SyncConfig::new(listen)
        .with_subnet(args.subnet.clone())
        .with_leasing(!args.no_leasing);
    cfg.mesh.transport = args.transport.to_transport();
    cfg.mesh.out_addr = match &args.out_addr {
        Some(hp) => Some(resolve(hp, "--out-addr").await?),
        None => None,
    };
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
    let sync = SyncSocket::bind(cfg).await.map_err(|e| match &e {
        Error::Store(se) => human::store_error(se),
        _ => bind_failed(&args.listen, listen, &e),
    })?;
    if let Some(fp) = fingerprint {
        eprintln!("rs2p: TLS certificate fingerprint {fp}");
    }
    let web = match args.http_port {
        Some(port) => {
            let addr = SocketAddr::new(listen.ip(), port);
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
        base_subnet: args.subnet.clone(),
        transport: args.transport.name(),
        durable: args.data_dir.is_some(),
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
