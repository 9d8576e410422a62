//! Node configuration.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::wire::{ids, Compression, Limits};

pub(crate) mod tls;

#[cfg(feature = "tls")]
pub use tls::TlsIdentity;
pub use tls::{CertFingerprint, TlsConfig, TlsVerify};

/// The transport, whose name is hashed into the protocol id (so nodes on
/// different transports never share a subnet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// Plain TCP (`Plaintext`).
    #[default]
    Plaintext,
    /// TLS (`SSL`), as py2p and js2p speak it; settings in
    /// [`MeshConfig::tls`]. By default this only protects against passive
    /// eavesdropping (no peer is authenticated, see [`TlsVerify`]).
    ///
    /// Needs the crate feature `tls` (on by default); without it, binding
    /// fails with [`Error::FeatureDisabled`].
    Ssl,
    /// WebSocket (`ws`), as js2p and browsers speak it: the node's port
    /// accepts WebSocket upgrades (any path, `Host` and `Origin`, so a page
    /// from any site a local user visits could connect) and peers are
    /// dialed at `ws://host:port/`. No encryption, no authentication. py2p
    /// has no ws transport. See [`web`](crate::web) for a browser page.
    ///
    /// Needs the crate feature `ws` (on by default); without it, binding
    /// fails with [`Error::FeatureDisabled`].
    Ws,
}

impl Transport {
    /// The name hashed into the protocol id.
    pub fn encryption_name(self) -> &'static str {
        match self {
            Transport::Plaintext => "Plaintext",
            Transport::Ssl => "SSL",
            Transport::Ws => "ws",
        }
    }
}

/// Configuration of a [`MeshSocket`](crate::MeshSocket).
///
/// ```
/// let cfg = rs2p::MeshConfig::new("127.0.0.1:0".parse().unwrap()).with_subnet("mesh");
/// assert_eq!(cfg.protocol_id(), "EpAmyZWv9rZUKmjQgU3FTUD4GrJHvVEXizmghVBc8eGD");
/// assert_eq!(cfg.max_outgoing, 4);
/// ```
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Address advertised to peers (default: the bound address).
    pub out_addr: Option<SocketAddr>,
    /// The subnet name (default `mesh`).
    pub subnet: String,
    /// The transport.
    pub transport: Transport,
    /// TLS certificate and peer checking, used with [`Transport::Ssl`]. The
    /// default, like py2p and js2p, authenticates no peer: it only protects
    /// against passive eavesdropping (see [`TlsVerify`]).
    pub tls: TlsConfig,
    /// Outgoing connections opened from peers lists (default 4).
    pub max_outgoing: usize,
    /// Compression methods, in order of preference.
    pub compression: Vec<Compression>,
    /// Decoding limits.
    pub limits: Limits,
    /// Writes queued for one peer before it is dropped as too slow
    /// (default 4,096). Local writes (`send`, `set`, ...) wait while a
    /// peer that is still reading has its queue more than half full, so a
    /// fast writer is slowed down instead of getting its peers dropped.
    pub send_queue: usize,
    /// Bytes queued for one peer before it is dropped as too slow (default
    /// 64 MiB).
    pub send_queue_bytes: usize,
    /// Most connections open at once (handshaken or not).
    pub max_connections: usize,
    /// Time a new connection has to send its handshake.
    pub handshake_timeout: Duration,
    /// Time a peer may leave a frame incomplete (the references' 60 s).
    pub incomplete_frame_timeout: Duration,
    /// Received user messages kept until `recv`; the oldest are dropped past
    /// this.
    pub recv_queue: usize,
    /// Bytes of received user messages (as they came on the wire) kept
    /// until `recv` (default 64 MiB); the oldest are dropped past this, so
    /// peers sending big broadcasts to a node that does not read cannot
    /// grow its memory without bound.
    pub recv_queue_bytes: usize,
    /// Broadcast ids remembered for duplicate suppression.
    pub seen_capacity: usize,
    /// Re-dial peers we lost, with exponential backoff.
    pub reconnect: bool,
    /// Node id to use instead of a fresh random one.
    pub id: Option<String>,
}

impl MeshConfig {
    /// Defaults for a node listening on `bind`.
    pub fn new(bind: SocketAddr) -> MeshConfig {
        MeshConfig {
            bind,
            out_addr: None,
            subnet: "mesh".into(),
            transport: Transport::Plaintext,
            tls: TlsConfig::default(),
            max_outgoing: 4,
            compression: Compression::ALL.to_vec(),
            limits: Limits::default(),
            send_queue: 4096,
            send_queue_bytes: 64 << 20,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(30),
            incomplete_frame_timeout: Duration::from_secs(60),
            recv_queue: 65_536,
            recv_queue_bytes: 64 << 20,
            seen_capacity: 1 << 18,
            reconnect: true,
            id: None,
        }
    }

    /// Sets the subnet.
    pub fn with_subnet(mut self, subnet: impl Into<String>) -> Self {
        self.subnet = subnet.into();
        self
    }

    /// Sets the transport.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Sets the TLS settings (for [`Transport::Ssl`]).
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the advertised address.
    pub fn with_out_addr(mut self, addr: SocketAddr) -> Self {
        self.out_addr = Some(addr);
        self
    }

    /// Sets the compression preference list (empty = never compress).
    pub fn with_compression(mut self, methods: Vec<Compression>) -> Self {
        self.compression = methods;
        self
    }

    /// The protocol id this configuration hashes to.
    pub fn protocol_id(&self) -> String {
        ids::protocol_id(&self.subnet, self.transport.encryption_name())
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.transport == Transport::Ssl && !cfg!(feature = "tls") {
            return Err(Error::FeatureDisabled("tls"));
        }
        if self.transport == Transport::Ws && !cfg!(feature = "ws") {
            return Err(Error::FeatureDisabled("ws"));
        }
        if self.send_queue == 0 || self.recv_queue == 0 || self.max_connections == 0 {
            return Err(Error::Config(
                "send_queue, recv_queue and max_connections must be at least 1".into(),
            ));
        }
        if self.limits.max_frame < 64 {
            return Err(Error::Config(format!(
                "max_frame of {} bytes cannot hold a handshake",
                self.limits.max_frame
            )));
        }
        let mut seen = Vec::new();
        for m in &self.compression {
            if !m.is_available() {
                return Err(Error::FeatureDisabled("native-compression"));
            }
            if seen.contains(m) {
                return Err(Error::Config(format!(
                    "compression {} listed twice",
                    m.name()
                )));
            }
            seen.push(*m);
        }
        Ok(())
    }
}

/// Configuration of a [`SyncSocket`](crate::SyncSocket).
///
/// ```
/// let cfg = rs2p::SyncConfig::new("127.0.0.1:0".parse().unwrap());
/// assert!(cfg.leasing);
/// assert_eq!(cfg.mesh_config().subnet, "sync1");
/// ```
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// The mesh settings; its `subnet` is the base subnet (default `sync`),
    /// to which `1` or `0` is appended for leasing on or off.
    pub mesh: MeshConfig,
    /// Enforce leases (default true).
    pub leasing: bool,
    /// Keep the dictionary and the node id in this folder (a redb
    /// database), so a restarted node loses nothing and keeps its id.
    /// Needs the crate feature `store` (on by default); without it, binding
    /// fails with [`Error::FeatureDisabled`].
    pub data_dir: Option<std::path::PathBuf>,
}

impl SyncConfig {
    /// Defaults for a node listening on `bind`.
    pub fn new(bind: SocketAddr) -> SyncConfig {
        SyncConfig {
            mesh: MeshConfig::new(bind).with_subnet("sync"),
            leasing: true,
            data_dir: None,
        }
    }

    /// Turns leasing on or off.
    pub fn with_leasing(mut self, leasing: bool) -> Self {
        self.leasing = leasing;
        self
    }

    /// Sets the base subnet.
    pub fn with_subnet(mut self, subnet: impl Into<String>) -> Self {
        self.mesh.subnet = subnet.into();
        self
    }

    /// Keeps the dictionary and the node id in `dir`.
    pub fn with_data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets the transport.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.mesh.transport = transport;
        self
    }

    /// Sets the TLS settings (for [`Transport::Ssl`]).
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.mesh.tls = tls;
        self
    }

    /// The mesh configuration with the leasing digit folded into the subnet.
    pub fn mesh_config(&self) -> MeshConfig {
        let mut m = self.mesh.clone();
        m.subnet = format!("{}{}", m.subnet, if self.leasing { 1 } else { 0 });
        m
    }
}
