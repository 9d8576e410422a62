//! The `ws` transport in a build without the `ws` feature: a stand-in that
//! refuses every connection. Binding a [`Transport::Ws`](crate::Transport::Ws)
//! node fails before this is reached
//! ([`Error::FeatureDisabled`](crate::Error::FeatureDisabled)).

use std::io;

use tokio::net::TcpStream;

use crate::net::transport::{BoxFuture, Io, Transport};

/// The `ws` transport, left out of this build.
pub(crate) struct Ws;

impl Ws {
    pub(crate) fn new(_max_frame: usize) -> Ws {
        Ws
    }
}

fn disabled() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this build of rs2p has no `ws` feature",
    )
}

impl Transport for Ws {
    fn accept(&self, _tcp: TcpStream) -> BoxFuture<'static, io::Result<Io>> {
        Box::pin(async { Err(disabled()) })
    }

    fn connect(&self, _host: String, _port: u16) -> BoxFuture<'static, io::Result<Io>> {
        Box::pin(async { Err(disabled()) })
    }
}
