//! The `ws` transport: frames carried in WebSocket messages, as js2p (and a
//! browser) speaks it.
//!
//! - The listener accepts the HTTP upgrade on the node's own port, on any
//!   path and with any `Host` (js2p sends `Host` without the port, no
//!   subprotocol and no `Origin`). A plain HTTP request or a non-WebSocket
//!   peer fails the upgrade and the connection is closed.
//! - The dialer opens `ws://host:port/`.
//! - Each queued item (one or more whole frames) is sent as one binary
//!   message; items over [`MAX_OUT_MESSAGE`] are split across several
//!   messages (receivers join message bytes into one stream, so boundaries
//!   do not matter; js2p's WebSocket library closes on messages beyond
//!   2 MiB).
//! - Received binary and text messages are appended to the byte stream the
//!   frame reader sees; pings are answered; a Close message ends the stream.
//!
//! Unlike js2p's listener, which waits for the dialer's handshake frame
//! before sending its own, ours sends its handshake at once; js2p dialers
//! accept that.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};
use tokio_tungstenite::WebSocketStream;

use crate::net::transport::{BoxFuture, FrameWrite, Io, Transport};

/// Largest WebSocket message we send; larger items are split.
pub(crate) const MAX_OUT_MESSAGE: usize = 1 << 20;

/// Room for a WebSocket message above a frame: the length prefix.
const PREFIX: usize = 4;

/// The `ws` transport.
pub(crate) struct Ws {
    config: WebSocketConfig,
}

impl Ws {
    /// Incoming messages are bounded by the largest frame we accept (plus
    /// its length prefix), and never below what we send ourselves.
    pub(crate) fn new(max_frame: usize) -> Ws {
        let max = max_frame.saturating_add(PREFIX).max(MAX_OUT_MESSAGE);
        Ws {
            config: WebSocketConfig::default()
                .max_message_size(Some(max))
                .max_frame_size(Some(max))
                // Our writer sends whole items and flushes at once.
                .write_buffer_size(0),
        }
    }
}

impl Transport for Ws {
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Io>> {
        let config = self.config;
        Box::pin(async move {
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr()?;
            let ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config))
                .await
                .map_err(to_io)?;
            Ok(split(ws, peer))
        })
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Io>> {
        let config = self.config;
        Box::pin(async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr()?;
            let url = if host.contains(':') && !host.starts_with('[') {
                format!("ws://[{host}]:{port}/")
            } else {
                format!("ws://{host}:{port}/")
            };
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
                .await
                .map_err(to_io)?;
            Ok(split(ws, peer))
        })
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

fn split(ws: WebSocketStream<TcpStream>, peer: SocketAddr) -> Io {
    let (sink, stream) = ws.split();
    Io {
        read: Box::new(WsRead {
            stream,
            pending: Bytes::new(),
            done: false,
        }),
        write: Box::new(WsWrite { sink }),
        inline: None,
        peer,
    }
}

/// The receiving half as a byte stream: message payloads back to back.
struct WsRead {
    stream: SplitStream<WebSocketStream<TcpStream>>,
    pending: Bytes,
    done: bool,
}

impl AsyncRead for WsRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // Reading also sends the pongs that tungstenite queues for pings.
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(msg))) => match msg {
                    Message::Binary(b) => self.pending = b,
                    Message::Text(t) => self.pending = Bytes::from(t),
                    Message::Close(_) => self.done = true,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                },
                Poll::Ready(None)
                | Poll::Ready(Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                ))) => self.done = true,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Err(to_io(e)));
                }
            }
        }
    }
}

/// The sending half: one binary message per item (split when large).
struct WsWrite {
    sink: SplitSink<WebSocketStream<TcpStream>, Message>,
}

impl FrameWrite for WsWrite {
    fn write<'a>(&'a mut self, item: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            for part in item.chunks(MAX_OUT_MESSAGE) {
                self.sink
                    .feed(Message::Binary(Bytes::copy_from_slice(part)))
                    .await
                    .map_err(to_io)?;
            }
            self.sink.flush().await.map_err(to_io)
        })
    }

    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.sink.close().await.map_err(to_io) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair(max_frame: usize) -> (WebSocketStream<TcpStream>, Io) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ws = Ws::new(max_frame);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            ws.accept(tcp).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        // Like js2p: Host without the port.
        let (client, _) = tokio_tungstenite::client_async("ws://127.0.0.1/", tcp)
            .await
            .unwrap();
        (client, server.await.unwrap().unwrap())
    }

    #[tokio::test]
    async fn messages_become_one_byte_stream_and_pings_are_answered() {
        let (mut client, mut io) = pair(1 << 20).await;
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        client.send(Message::binary(&b"ab"[..])).await.unwrap();
        client.send(Message::text("cd")).await.unwrap();
        let mut got = [0u8; 4];
        io.read.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd");
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"p"))
        );

        // A small item is one message; a large one is split, in order.
        io.write.write(b"frame").await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::binary(&b"frame"[..])
        );
        let big: Vec<u8> = (0..MAX_OUT_MESSAGE * 5 / 2).map(|i| i as u8).collect();
        io.write.write(&big).await.unwrap();
        let mut joined = Vec::new();
        while joined.len() < big.len() {
            match client.next().await.unwrap().unwrap() {
                Message::Binary(b) => {
                    assert!(b.len() <= MAX_OUT_MESSAGE);
                    joined.extend_from_slice(&b);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(joined, big);

        // Close ends the stream.
        client.send(Message::Close(None)).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(io.read.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn oversized_messages_are_refused() {
        let (mut client, mut io) = pair(64).await;
        let _ = client
            .send(Message::binary(vec![0u8; MAX_OUT_MESSAGE + 1]))
            .await;
        let mut rest = Vec::new();
        assert!(io.read.read_to_end(&mut rest).await.is_err());
        assert!(rest.is_empty());
    }
}
