//! The wire layer: pure bytes to typed values and back, no I/O.
//!
//! - [`msgpack`]: the [`Value`](crate::Value) codec, smallest encodings,
//!   bounded decoding;
//! - [`Packed`], [`WireMessage`], [`next_frame`]: frames and message ids;
//! - [`Compression`]: the five body compressions;
//! - [`ids`]: base58, protocol ids, node ids;
//! - [`flags`]: every flag value of protocol 0.7.

pub mod compression;
pub mod flags;
pub mod frame;
pub mod ids;
pub mod msgpack;
pub mod packet;

pub use compression::Compression;
pub use frame::{next_frame, Framing, MessageId, Packed, WireMessage};

/// Limits applied to everything decoded from the network.
///
/// ```
/// let l = rs2p::wire::Limits { max_frame: 1 << 20, ..Default::default() };
/// assert_eq!(l.max_depth, 64);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body accepted, in bytes, as announced by the length
    /// prefix (default 16 MiB; the references accept up to 4 GiB).
    pub max_frame: usize,
    /// Largest decompressed body, in bytes (default 64 MiB).
    pub max_decompressed: usize,
    /// Deepest nesting of arrays and maps (default 64).
    pub max_depth: usize,
    /// Most array and map elements in one message (default 4 Mi).
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_decompressed: 64 << 20,
            max_depth: 64,
            max_elements: 4 << 20,
        }
    }
}
