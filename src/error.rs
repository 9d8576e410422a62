//! Error types. Every error says what was wrong and, where it applies, how
//! big the offending thing was and what the limit is.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors converting a [`Value`](crate::Value) to or from Rust types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// The value has another type than the one asked for.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What was asked for.
        expected: &'static str,
        /// What the value is.
        found: &'static str,
    },
    /// The integer does not fit the target type.
    #[error("integer {value} does not fit {target}")]
    OutOfRange {
        /// The target type.
        target: &'static str,
        /// The integer.
        value: i128,
    },
    /// serde could not convert the value.
    #[error("serde conversion failed: {0}")]
    Serde(String),
}

/// Errors decoding bytes received from the network. None of these is fatal
/// to the node: the frame is refused and, where the stream cannot be
/// resynchronised, the one connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces more than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// Configured maximum.
        max: u64,
    },
    /// The body is shorter than the 32-byte checksum.
    #[error("frame body of {len} bytes is shorter than the 32-byte checksum")]
    FrameTooShort {
        /// Body length.
        len: usize,
    },
    /// Decompressing would exceed the configured maximum.
    #[error("{method} body decompresses to more than the limit of {max} bytes")]
    DecompressedTooLarge {
        /// Compression method.
        method: &'static str,
        /// Configured maximum.
        max: usize,
    },
    /// The compressed data is corrupt.
    #[error("{method} decompression failed: {reason}")]
    Decompress {
        /// Compression method.
        method: &'static str,
        /// What the decompressor said.
        reason: String,
    },
    /// SHA-256 of the packed message does not match the checksum, whatever
    /// decompression was tried.
    #[error("checksum mismatch on a {len}-byte body (tried: {tried})")]
    ChecksumMismatch {
        /// Body length.
        len: usize,
        /// The decodings that were tried.
        tried: String,
    },
    /// msgpack ended early.
    #[error("truncated msgpack: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Offset of the value being read.
        offset: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// A msgpack marker we do not accept (0xc1, or an extension type).
    #[error("unsupported msgpack marker 0x{marker:02x} at offset {offset}")]
    BadMarker {
        /// The marker byte.
        marker: u8,
        /// Its offset.
        offset: usize,
    },
    /// A `str` with invalid UTF-8.
    #[error("invalid UTF-8 in a msgpack str at offset {offset}")]
    InvalidUtf8 {
        /// Offset of the str.
        offset: usize,
    },
    /// Nesting deeper than allowed.
    #[error("msgpack nesting deeper than the limit of {max}")]
    TooDeep {
        /// Configured maximum depth.
        max: usize,
    },
    /// More elements than allowed (counted over the whole message).
    #[error("msgpack holds more than the limit of {max} elements (declared {declared})")]
    TooManyElements {
        /// Declared count that crossed the limit.
        declared: u64,
        /// Configured maximum.
        max: usize,
    },
    /// Bytes left over after the value.
    #[error("{extra} trailing bytes after the msgpack value")]
    TrailingBytes {
        /// Count of extra bytes.
        extra: usize,
    },
    /// The packed message is not an array of at least 3 elements of the
    /// right types.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// True for a frame that is well formed but carries more than the
    /// limits allow (it can be skipped; the stream is still in step). A
    /// body that decompresses past the limit is not one: that is how
    /// compression bombs look, and their sender is dropped.
    ///
    /// ```
    /// use rs2p::DecodeError;
    /// assert!(DecodeError::TooDeep { max: 64 }.is_limit());
    /// assert!(!DecodeError::Malformed("x".into()).is_limit());
    /// ```
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            DecodeError::FrameTooLarge { .. }
                | DecodeError::TooDeep { .. }
                | DecodeError::TooManyElements { .. }
        )
    }
}

/// What went wrong with the durable store behind
/// [`SyncConfig::data_dir`](crate::SyncConfig::data_dir). Every variant
/// names the path involved: the data dir itself, or the database file in
/// it (`rs2p.redb`).
///
/// ```
/// use rs2p::StoreError;
/// let e = StoreError::InUse { path: "/var/lib/rs2p".into() };
/// assert_eq!(e.kind(), "in_use");
/// assert_eq!(e.path(), std::path::Path::new("/var/lib/rs2p"));
/// assert!(e.to_string().contains("/var/lib/rs2p"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreError {
    /// The data dir exists and is not a directory (a file, say).
    NotADirectory {
        /// The data dir.
        path: PathBuf,
    },
    /// Another node, in this process or another one, has the data dir's
    /// database open (the database file is locked while a node uses it).
    InUse {
        /// The data dir.
        path: PathBuf,
    },
    /// The operating system refused to create, open, read or write a path
    /// (permissions, a full disk, a parent that is a file, ...).
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What was being done: `create`, `open`, `read`, `write`.
        action: &'static str,
        /// The operating system's error (also the error's
        /// [`source`](std::error::Error::source)).
        source: Arc<io::Error>,
    },
    /// The database refused: it is damaged, from an unknown version, or a
    /// transaction failed.
    Database {
        /// The database file.
        path: PathBuf,
        /// The database's error (also the error's
        /// [`source`](std::error::Error::source)).
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotADirectory { path } => {
                write!(f, "data dir {} is not a directory", path.display())
            }
            StoreError::InUse { path } => write!(
                f,
                "data dir {} is in use by another node (its database is locked)",
                path.display()
            ),
            StoreError::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            StoreError::Database { path, source } => {
                write!(f, "database {} failed: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(&**source),
            StoreError::Database { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl StoreError {
    /// The path involved (the data dir, or the database file in it).
    pub fn path(&self) -> &Path {
        match self {
            StoreError::NotADirectory { path }
            | StoreError::InUse { path }
            | StoreError::Io { path, .. }
            | StoreError::Database { path, .. } => path,
        }
    }

    /// A short, stable, snake_case name of the failure: `not_a_directory`,
    /// `in_use`, `io` or `database`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotADirectory { .. } => "not_a_directory",
            StoreError::InUse { .. } => "in_use",
            StoreError::Io { .. } => "io",
            StoreError::Database { .. } => "database",
        }
    }

    /// The operating system's error, for [`StoreError::Io`].
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Errors of the mesh and sync layers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error (bind, connect, ...).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The node was closed.
    #[error("the node is closed")]
    Closed,
    /// No handshaken peer with that id.
    #[error("no connected peer with id {0}")]
    UnknownPeer(String),
    /// Another node holds the lease on this key.
    #[error("key {key:?} is leased by {owner} until {expires_at} (unix time)")]
    LeaseHeld {
        /// The key, lossily rendered as text.
        key: String,
        /// The owner's id.
        owner: String,
        /// When the lease ends, unix seconds.
        expires_at: i64,
    },
    /// `apply_delta` on a value that is not a map, or with a delta that is
    /// not a map.
    #[error("key {key:?} holds {} {found}, not a map", article(.found))]
    NotAMapping {
        /// The key, lossily rendered as text.
        key: String,
        /// The value's type.
        found: &'static str,
    },
    /// The key is absent.
    #[error("key {0:?} not found")]
    KeyNotFound(String),
    /// A value conversion failed.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// The durable store ([`SyncConfig::data_dir`](crate::SyncConfig::data_dir))
    /// could not be opened, read or written; the [`StoreError`] names the
    /// path and keeps the operating system's or the database's error as
    /// its source.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// A value nests deeper than every node can read back (peers and the
    /// store decode values of at most
    /// [`Limits::max_depth`](crate::wire::Limits) levels): refused before
    /// anything is written.
    #[error("value for key {key:?} nests {depth} levels deep; at most {max} can be replicated")]
    ValueTooDeep {
        /// The key, lossily rendered as text.
        key: String,
        /// How deep the value nests.
        depth: usize,
        /// The most allowed.
        max: usize,
    },
    /// A write's message would be larger than the frames peers accept
    /// ([`Limits::max_frame`](crate::wire::Limits)): refused before anything
    /// is written.
    #[error("value for key {key:?} takes {size} bytes on the wire; frames of at most {max} bytes can be replicated")]
    ValueTooLarge {
        /// The key, lossily rendered as text.
        key: String,
        /// The size of the message that would carry it.
        size: usize,
        /// The most allowed.
        max: usize,
    },
    /// The node has as many connections (open, pending or dialling) as it
    /// may.
    #[error("connection limit of {max} reached")]
    ConnectionLimit {
        /// The limit ([`MeshConfig::max_connections`](crate::MeshConfig::max_connections)).
        max: usize,
    },
    /// The configuration asks for something this build of rs2p leaves out:
    /// the named Cargo feature of the `rs2p` crate is off (`tls` for
    /// [`Transport::Ssl`](crate::Transport::Ssl), `ws` for
    /// [`Transport::Ws`](crate::Transport::Ws), `store` for
    /// [`SyncConfig::data_dir`](crate::SyncConfig::data_dir)).
    #[error("this build of rs2p has no `{0}` feature (enable it in Cargo.toml)")]
    FeatureDisabled(&'static str),
}

impl Error {
    /// A short, stable, snake_case name of the error's kind, for machine
    /// interfaces (the `rs2p node --json` replies use it).
    ///
    /// ```
    /// let e = rs2p::Error::KeyNotFound("k".into());
    /// assert_eq!(e.kind(), "key_not_found");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io(_) => "io",
            Error::Config(_) => "config",
            Error::Closed => "closed",
            Error::UnknownPeer(_) => "unknown_peer",
            Error::LeaseHeld { .. } => "lease_held",
            Error::NotAMapping { .. } => "not_a_mapping",
            Error::KeyNotFound(_) => "key_not_found",
            Error::Value(_) => "value",
            Error::Store(_) => "store",
            Error::ConnectionLimit { .. } => "connection_limit",
            Error::ValueTooDeep { .. } => "value_too_deep",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::FeatureDisabled(_) => "feature_disabled",
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "an" before a type name that starts with a vowel ("an int", "a str").
fn article(kind: &str) -> &'static str {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn not_a_mapping_reads_as_english() {
        let e = Error::NotAMapping {
            key: "k".into(),
            found: "int",
        };
        assert_eq!(e.to_string(), r#"key "k" holds an int, not a map"#);
        let e = Error::NotAMapping {
            key: "k".into(),
            found: "str",
        };
        assert_eq!(e.to_string(), r#"key "k" holds a str, not a map"#);
    }
}
