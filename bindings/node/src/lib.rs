//! The native half of the `rs2p` Node.js package: rs2p's [`MeshSocket`] and
//! [`SyncSocket`] behind a small class, `NativeNode`, that the package's
//! JavaScript layer (`base.js`, `mesh.js`, `sync.js`) wraps in js2p 0.7's
//! API.
//!
//! - One tokio runtime, owned by the addon, runs every node of the process.
//! - Calls from JavaScript that js2p makes synchronous (`set`, `send`,
//!   `routing_table`, ...) wait for the node's actor to answer: the time of a
//!   message on a channel, plus, when a peer's send queue is more than half
//!   full, the time for it to drain (the library's back-pressure). `connect`
//!   does not wait.
//! - Events go the other way through an [`events::Outbox`] and a threadsafe
//!   function: the engine never waits for JavaScript.
//! - A node keeps Node's event loop alive while it is open, as js2p's
//!   listening server does; [`NativeNode::close`], or the garbage collection
//!   of the JavaScript object, stops it and releases the loop.
//!
//! Values cross as described in [`convert`].

#![deny(missing_docs)]

pub mod convert;
pub mod events;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock};

use napi::bindgen_prelude::External;
use napi::{Error, Result, Status};
use napi_derive::napi;
use rs2p::{
    MeshConfig, MeshEvent, MeshSocket, Message, PeerKind, SyncConfig, SyncEvent, SyncSocket,
    Transport,
};
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;

use crate::convert::{Bytes, Js};
use crate::events::{Callback, Event, Outbox};

/// The runtime every node of this process runs on.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 4);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("rs2p-node")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("rs2p: cannot start the tokio runtime: {e}"))
    })
}

fn error(msg: impl Into<String>) -> Error {
    Error::new(Status::GenericFailure, msg.into())
}

fn type_error(msg: impl Into<String>) -> Error {
    Error::new(Status::InvalidArg, msg.into())
}

/// The transport named as js2p names it: `Plaintext`, `SSL` or `ws`.
fn transport(name: &str) -> Result<Transport> {
    match name {
        "Plaintext" => Ok(Transport::Plaintext),
        "SSL" => Ok(Transport::Ssl),
        "ws" => Ok(Transport::Ws),
        other => Err(error(format!(
            "Unknown transport protocol {other:?} (rs2p speaks Plaintext, SSL and ws)"
        ))),
    }
}

fn port(n: u32) -> Result<u16> {
    u16::try_from(n).map_err(|_| Error::new(Status::InvalidArg, format!("port {n} is not 0-65535")))
}

/// The address to listen on for js2p's `addr` argument: `''` and `0.0.0.0`
/// are every IPv4 address, `::` every address, a name is resolved (IPv4
/// preferred, as `localhost` is where js2p's tests dial).
fn bind_addr(host: &str, port: u16) -> Result<SocketAddr> {
    match host {
        "" | "0.0.0.0" => return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        "::" => return Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))),
        _ => {}
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| error(format!("cannot resolve {host:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| error(format!("{host:?} resolves to no address")))
}

fn peer_kind(k: PeerKind) -> &'static str {
    match k {
        PeerKind::Py => "py2p",
        PeerKind::Rs => "rs2p",
        PeerKind::Js => "js2p",
        _ => "unknown",
    }
}

/// What the JavaScript layer passes to [`NativeNode::new`].
#[napi(object)]
pub struct NodeOptions {
    /// Host to listen on (`''`, `0.0.0.0`, an address or a name).
    pub host: String,
    /// Port to listen on (0: any free port).
    pub port: u32,
    /// The subnet; for a sync node the base subnet, to which the leasing
    /// digit is appended (`sync` becomes `sync1` or `sync0`).
    pub subnet: String,
    /// `Plaintext`, `SSL` or `ws`.
    pub transport: String,
    /// A SyncSocket (true) or a MeshSocket.
    pub sync: bool,
    /// Enforce leases (sync nodes).
    pub leasing: bool,
    /// Host advertised to peers.
    pub out_host: Option<String>,
    /// Port advertised to peers.
    pub out_port: Option<u32>,
}

/// Where a node listens and what it advertises.
#[napi(object)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// The protocol id (subnet and transport hashed).
    pub protocol_id: String,
    /// The bound address.
    pub host: String,
    /// The bound port (the real one when bound to port 0).
    pub port: u32,
    /// The host advertised to peers.
    pub out_host: String,
    /// The port advertised to peers.
    pub out_port: u32,
}

/// A peer in the routing table.
#[napi(object)]
pub struct Peer {
    /// Its node id.
    pub id: String,
    /// The host it advertised, if any.
    pub host: Option<String>,
    /// The port it advertised, if any.
    pub port: Option<u32>,
    /// True when this node dialed it.
    pub outgoing: bool,
    /// `py2p`, `js2p` or `rs2p`: which implementation it behaves like.
    pub kind: String,
}

/// Owner and time of a key's value.
#[napi(object)]
pub struct KeyMeta {
    /// The owner's node id.
    pub owner: String,
    /// The write's time, unix seconds.
    pub timestamp: f64,
}

/// The protocol id of a subnet and transport (js2p's `Protocol.id`).
#[napi]
pub fn protocol_id(subnet: String, encryption: String) -> String {
    rs2p::wire::ids::protocol_id(&subnet, &encryption)
}

/// `release` or `dev`: how the addon was compiled.
#[napi]
pub fn build_profile() -> String {
    if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    }
    .to_string()
}

struct Open {
    mesh: MeshSocket,
    sync: Option<SyncSocket>,
    outbox: Arc<Outbox>,
}

impl Open {
    fn sync(&self) -> Result<&SyncSocket> {
        self.sync
            .as_ref()
            .ok_or_else(|| error("this is a MeshSocket: it has no dictionary"))
    }

    /// Stops the node in the background (for the garbage collector's path).
    fn close_later(self) {
        self.outbox.shut();
        let Open { mesh, sync, .. } = self;
        runtime().spawn(async move {
            match sync {
                Some(s) => s.close().await,
                None => mesh.close().await,
            }
        });
    }
}

/// A failure JavaScript turns into an `Error`: `[kind, message]`, where
/// `kind` is the library's error kind (`lease_held`, `key_not_found`,
/// `not_a_mapping`, `closed`, ...).
type Failure = Option<Vec<String>>;

fn failure(e: rs2p::Error) -> Failure {
    Some(vec![e.kind().to_string(), e.to_string()])
}

fn outcome(r: rs2p::Result<()>) -> Failure {
    r.err().and_then(failure)
}

/// One node: a MeshSocket, or a SyncSocket and its mesh.
#[napi]
pub struct NativeNode {
    open: Option<Open>,
}

#[napi]
impl NativeNode {
    /// Binds and starts a node; `on_events` is called on Node's event loop
    /// with batches of events (see [`events::Batch`]).
    #[napi(constructor)]
    pub fn new(opts: NodeOptions, on_events: Callback) -> Result<Self> {
        let transport = transport(&opts.transport)?;
        let bind = bind_addr(&opts.host, port(opts.port)?)?;
        let out_addr = match (&opts.out_host, opts.out_port) {
            (Some(h), Some(p)) => Some(bind_addr(h, port(p)?)?),
            (None, None) => None,
            _ => return Err(type_error("out_addr must be [host, port]")),
        };
        let outbox = Outbox::new(on_events);
        let rt = runtime();
        let (mesh, sync) = if opts.sync {
            let mut cfg = SyncConfig::new(bind)
                .with_subnet(opts.subnet)
                .with_leasing(opts.leasing)
                .with_transport(transport);
            cfg.mesh.out_addr = out_addr;
            let sync = rt
                .block_on(SyncSocket::bind(cfg))
                .map_err(|e| error(format!("cannot start a node on {bind}: {e}")))?;
            (sync.mesh().clone(), Some(sync))
        } else {
            let mut cfg = MeshConfig::new(bind)
                .with_subnet(opts.subnet)
                .with_transport(transport);
            cfg.out_addr = out_addr;
            let mesh = rt
                .block_on(MeshSocket::bind(cfg))
                .map_err(|e| error(format!("cannot start a node on {bind}: {e}")))?;
            (mesh, None)
        };
        // Every message the protocol leaves goes to JavaScript, whose
        // handlers and queue take it from there (js2p's register_handler
        // and recv).
        let to_js = outbox.clone();
        let registered = rt.block_on(mesh.register_handler(move |m: &Message| {
            to_js.push(Event::Message(m.clone()));
            true
        }));
        let open = Open {
            mesh: mesh.clone(),
            sync: sync.clone(),
            outbox: outbox.clone(),
        };
        if let Err(e) = registered {
            open.close_later();
            return Err(error(format!("the node stopped at start: {e}")));
        }
        let mut mesh_events = mesh.events();
        let mesh_outbox = outbox.clone();
        rt.spawn(async move {
            while let Some(ev) = mesh_events.next().await {
                if let MeshEvent::Connected = ev {
                    mesh_outbox.push(Event::Connect);
                }
            }
        });
        if let Some(sync) = &sync {
            let mut sync_events = sync.events();
            rt.spawn(async move {
                while let Some(ev) = sync_events.next().await {
                    match ev {
                        SyncEvent::Update { key, value, meta } => outbox.push(Event::Update {
                            key,
                            value,
                            owner: meta.owner,
                            timestamp: meta.timestamp,
                        }),
                        SyncEvent::Delete { key } => outbox.push(Event::Delete { key }),
                        // This task fell behind the engine (it only moves
                        // events into the outbox, so it should not): say
                        // how many were lost, as for the outbox's own limit.
                        SyncEvent::Lagged { missed } => outbox.missed(missed),
                        _ => {}
                    }
                }
            });
        }
        Ok(NativeNode { open: Some(open) })
    }

    fn open(&self) -> Result<&Open> {
        self.open
            .as_ref()
            .ok_or_else(|| error("the node is closed"))
    }

    /// Id, addresses and protocol id.
    #[napi]
    pub fn info(&self) -> Result<NodeInfo> {
        let o = self.open()?;
        let local = o.mesh.local_addr();
        let (out_host, out_port) = o.mesh.out_addr();
        Ok(NodeInfo {
            id: o.mesh.id().to_string(),
            protocol_id: o.mesh.protocol_id().to_string(),
            host: local.ip().to_string(),
            port: u32::from(local.port()),
            out_host: out_host.to_string(),
            out_port: u32::from(out_port),
        })
    }

    /// True once closed.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.open.as_ref().is_none_or(|o| o.mesh.is_closed())
    }

    /// Dials a node without waiting; a failure comes back as an `error`
    /// event.
    #[napi]
    pub fn connect(&self, host: String, port: u32) -> Result<()> {
        let o = self.open()?;
        let port = self::port(port)?;
        let mesh = o.mesh.clone();
        let outbox = o.outbox.clone();
        runtime().spawn(async move {
            if let Err(e) = mesh.connect(&host, port).await {
                outbox.push(Event::Error(format!("connect to {host}:{port}: {e}")));
            }
        });
        Ok(())
    }

    /// Sends `payload` (sub-flag first) with main flag `msg_type`:
    /// broadcasts are flooded, other flags go to every neighbour.
    #[napi]
    pub fn send(&self, msg_type: u32, payload: Vec<Js>) -> Result<Failure> {
        let o = self.open()?;
        let msg_type = u8::try_from(msg_type).map_err(|_| type_error("a message type is 0-255"))?;
        let payload = payload.into_iter().map(|j| j.0).collect();
        Ok(runtime()
            .block_on(o.mesh.send_raw(msg_type, payload))
            .err()
            .and_then(failure))
    }

    /// Whispers `[whisper, packets...]` to one neighbour.
    #[napi]
    pub fn whisper(&self, peer: String, packets: Vec<Js>) -> Result<Failure> {
        let o = self.open()?;
        let packets = packets.into_iter().map(|j| j.0).collect();
        Ok(outcome(runtime().block_on(o.mesh.whisper(&peer, packets))))
    }

    /// Answers a received message (a whisper when its sender is a
    /// neighbour, else through a route request).
    #[napi]
    pub fn reply(&self, msg: &External<Message>, packets: Vec<Js>) -> Result<Failure> {
        self.open()?;
        let packets = packets.into_iter().map(|j| j.0).collect();
        Ok(outcome(runtime().block_on(msg.reply(packets))))
    }

    /// The routing table.
    #[napi]
    pub fn peers(&self) -> Result<Vec<Peer>> {
        let o = self.open()?;
        let peers = runtime()
            .block_on(o.mesh.peers())
            .map_err(|e| error(e.to_string()))?;
        Ok(peers
            .into_iter()
            .map(|p| Peer {
                id: p.id,
                host: p.addr.as_ref().map(|a| a.0.clone()),
                port: p.addr.as_ref().map(|a| u32::from(a.1)),
                outgoing: p.outgoing,
                kind: peer_kind(p.kind).to_string(),
            })
            .collect())
    }

    /// Drops the connection to a peer; false when it is not connected.
    #[napi]
    pub fn disconnect(&self, peer: String) -> Result<bool> {
        let o = self.open()?;
        runtime()
            .block_on(o.mesh.disconnect(&peer))
            .map_err(|e| error(e.to_string()))
    }

    /// Stops the node and releases Node's event loop. Idempotent.
    #[napi]
    pub fn close(&mut self) {
        if let Some(o) = self.open.take() {
            o.outbox.shut();
            runtime().block_on(async {
                match &o.sync {
                    Some(s) => s.close().await,
                    None => o.mesh.close().await,
                }
            });
        }
    }

    /// The value of a key; `null` when absent.
    #[napi]
    pub fn get(&self, key: Bytes) -> Result<Option<Js>> {
        Ok(self.open()?.sync()?.get(&key.0).map(Js))
    }

    /// Owner and time of a key's value; `null` when absent.
    #[napi]
    pub fn metadata(&self, key: Bytes) -> Result<Option<KeyMeta>> {
        Ok(self.open()?.sync()?.metadata(&key.0).map(|m| KeyMeta {
            owner: String::from_utf8_lossy(&m.owner).into_owned(),
            timestamp: m.timestamp as f64,
        }))
    }

    /// Sets a key.
    #[napi]
    pub fn set(&self, key: Bytes, value: Js) -> Result<Failure> {
        let sync = self.open()?.sync()?;
        if value.0.is_nil() {
            return Ok(outcome(runtime().block_on(sync.del(&key.0))));
        }
        Ok(outcome(runtime().block_on(sync.set(&key.0, value.0))))
    }

    /// Deletes a key.
    #[napi]
    pub fn del(&self, key: Bytes) -> Result<Failure> {
        let sync = self.open()?.sync()?;
        Ok(outcome(runtime().block_on(sync.del(&key.0))))
    }

    /// Merges a map into the map at a key.
    #[napi]
    pub fn apply_delta(&self, key: Bytes, delta: Js) -> Result<Failure> {
        let sync = self.open()?.sync()?;
        Ok(outcome(
            runtime().block_on(sync.apply_delta(&key.0, delta.0)),
        ))
    }

    /// The keys, from a consistent snapshot.
    #[napi]
    pub fn keys(&self) -> Result<Vec<Bytes>> {
        Ok(self.open()?.sync()?.keys().map(Bytes).collect())
    }

    /// `[key, value]` pairs, from a consistent snapshot, flattened:
    /// `[k0, v0, k1, v1, ...]`.
    #[napi]
    pub fn items(&self) -> Result<Vec<Js>> {
        let sync = self.open()?.sync()?;
        let mut out = Vec::with_capacity(sync.len() * 2);
        for (k, v) in sync.items() {
            out.push(Js(rs2p::Value::Bin(k)));
            out.push(Js(v));
        }
        Ok(out)
    }

    /// Number of keys.
    #[napi]
    pub fn size(&self) -> Result<u32> {
        let n = self.open()?.sync()?.len();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

impl Drop for NativeNode {
    fn drop(&mut self) {
        // The JavaScript object was garbage-collected without close().
        if let Some(o) = self.open.take() {
            o.close_later();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_as_js2p_takes_them() {
        assert_eq!(
            bind_addr("", 4444).unwrap(),
            "0.0.0.0:4444".parse().unwrap()
        );
        assert_eq!(
            bind_addr("0.0.0.0", 1).unwrap(),
            "0.0.0.0:1".parse().unwrap()
        );
        assert_eq!(bind_addr("::", 1).unwrap(), "[::]:1".parse().unwrap());
        assert_eq!(
            bind_addr("127.0.0.1", 0).unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(bind_addr("[::1]", 5).unwrap(), "[::1]:5".parse().unwrap());
        assert_eq!(
            bind_addr("localhost", 7).unwrap(),
            "127.0.0.1:7".parse().unwrap()
        );
        assert!(bind_addr("no such host.invalid", 7).is_err());
    }

    #[test]
    fn transports_by_js2p_name() {
        assert_eq!(transport("Plaintext").unwrap(), Transport::Plaintext);
        assert_eq!(transport("SSL").unwrap(), Transport::Ssl);
        assert_eq!(transport("ws").unwrap(), Transport::Ws);
        assert!(transport("wss").is_err());
        assert!(port(65536).is_err());
        assert_eq!(port(65535).unwrap(), 65535);
    }
}
