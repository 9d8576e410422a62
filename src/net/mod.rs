//! The tokio shell: one actor task owns all mesh state; each connection has
//! a reader task and a writer task with a bounded queue.

pub(crate) mod actor;
pub(crate) mod align;
pub(crate) mod conn;
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod ws;
