//! Transports: how a TCP connection becomes a byte stream carrying frames.
//! Plain TCP here; TLS and WebSocket plug in through the same trait.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A boxed future, for the object-safe traits below.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The receiving half: bytes in, frames are split off by the reader task.
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// The sending half: each call writes one queued item (one or more whole
/// frames) — as one write on a stream, as one message on a WebSocket.
pub(crate) trait FrameWrite: Send {
    fn write<'a>(&'a mut self, item: &'a [u8]) -> BoxFuture<'a, io::Result<()>>;
    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>>;
}

/// A connection ready to carry frames.
pub(crate) struct Io {
    pub read: BoxRead,
    pub write: Box<dyn FrameWrite>,
    pub peer: SocketAddr,
}

/// Turns accepted and dialed TCP connections into [`Io`].
pub(crate) trait Transport: Send + Sync + 'static {
    /// Upgrades an accepted connection (TLS or WebSocket handshake).
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Io>>;
    /// Dials `host:port` and upgrades the connection.
    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Io>>;
}

/// Writes items to any byte stream.
pub(crate) struct StreamWrite<W>(pub W);

impl<W: AsyncWrite + Send + Unpin> FrameWrite for StreamWrite<W> {
    fn write<'a>(&'a mut self, item: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(self.0.write_all(item))
    }
    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.0.shutdown())
    }
}

/// Plain TCP (`Plaintext`).
pub(crate) struct Plain;

impl Transport for Plain {
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Io>> {
        Box::pin(async move {
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr()?;
            let (r, w) = tcp.into_split();
            Ok(Io {
                read: Box::new(r),
                write: Box::new(StreamWrite(w)),
                peer,
            })
        })
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Io>> {
        Box::pin(async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            Plain.accept(tcp).await
        })
    }
}
