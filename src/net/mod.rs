//! The tokio shell: one actor task drives the protocol core
//! ([`proto::Node`](crate::proto::Node)); each connection has a reader task
//! and a writer task with a bounded queue.

pub(crate) mod actor;
pub(crate) mod conn;
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod ws;
