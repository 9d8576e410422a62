//! The tokio shell: one actor task drives the protocol core
//! ([`proto::Node`](crate::proto::Node)); each connection has a reader task
//! and a writer task with a bounded queue.

pub(crate) mod actor;
pub(crate) mod cmd;
pub(crate) mod conn;
pub(crate) mod tls;
pub(crate) mod transport;
// Without the `ws` feature, a stand-in that refuses every connection.
#[cfg_attr(not(feature = "ws"), path = "ws_off.rs")]
pub(crate) mod ws;
