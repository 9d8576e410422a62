//! Transports: how a TCP connection becomes a byte stream carrying frames.
//! Plain TCP here; TLS and WebSocket plug in through the same trait.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio::net::tcp::OwnedWriteHalf;
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
    /// The same stream as `write`, for a write made at once by the actor
    /// while nothing is queued for the writer task (plain TCP only: TLS and
    /// WebSocket frame and buffer what they send, so they go through the
    /// writer task).
    pub inline: Option<Arc<OwnedWriteHalf>>,
    pub peer: SocketAddr,
}

/// Turns accepted and dialed TCP connections into [`Io`].
pub(crate) trait Transport: Send + Sync + 'static {
    /// Upgrades an accepted connection (TLS or WebSocket handshake).
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Io>>;
    /// Dials `host:port` and upgrades the connection.
    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Io>>;
}

/// Writes items to a TCP stream shared with the actor's inline writes
/// (see [`Io::inline`]); the two never write at the same time, as the
/// actor writes only while this side has nothing queued.
pub(crate) struct SharedTcpWrite(pub Arc<OwnedWriteHalf>);

impl FrameWrite for SharedTcpWrite {
    fn write<'a>(&'a mut self, item: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let mut rest = item;
            while !rest.is_empty() {
                self.0.writable().await?;
                match self.0.try_write(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }
    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        // The half shuts the stream's sending side down when its last
        // owner drops it.
        Box::pin(async { Ok(()) })
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
            let w = Arc::new(w);
            Ok(Io {
                read: Box::new(r),
                write: Box::new(SharedTcpWrite(w.clone())),
                inline: Some(w),
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
