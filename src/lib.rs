#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod mesh;
pub(crate) mod net;
pub mod proto;
pub mod sync;
pub mod value;
pub mod wire;

pub use config::{MeshConfig, SyncConfig, Transport};
pub use error::{DecodeError, Error, Result, ValueError};
pub use mesh::{EventStream, MeshEvent, MeshSocket, Message, PeerInfo, PeerKind};
pub use proto::sync::Meta;
pub use sync::{SyncEvent, SyncEventStream, SyncSocket};
pub use value::{from_value, to_value, Integer, Value};
