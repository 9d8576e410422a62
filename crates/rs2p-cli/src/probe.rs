//! Why a `--connect` peer did not join: a look at what the node at that
//! address says first on a plain TCP connection (a p2p-today node sends its
//! handshake as soon as it accepts a plaintext connection; TLS and
//! WebSocket listeners wait for the dialer), and the subnet and transport
//! its protocol id stands for, when it is one of the likely ones.

use std::time::Duration;

use bytes::BytesMut;
use rs2p::wire::flags::sub;
use rs2p::wire::{ids, next_frame, Limits, Packed};
use rs2p::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long the probe waits for the first frame.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// What the node at an address said first on a plain TCP connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// A plaintext p2p-today handshake.
    Handshake {
        /// The sender's node id.
        id: String,
        /// Its protocol id (base58 text).
        protocol_id: String,
    },
    /// Nothing (within the deadline, or the connection was closed): it
    /// waits for the dialer to speak first, as TLS and WebSocket listeners
    /// do.
    Silent,
    /// Bytes that are not a p2p-today handshake.
    Other,
    /// No TCP connection (the message says why).
    Unreachable(String),
}

/// Connects to `host:port`, reads the first frame and closes.
pub async fn probe(host: &str, port: u16) -> Probe {
    let stream = tokio::time::timeout(PROBE_WAIT, TcpStream::connect((host, port))).await;
    let mut s = match stream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Probe::Unreachable(e.to_string()),
        Err(_) => return Probe::Unreachable("no answer".into()),
    };
    let limits = Limits {
        max_frame: 64 << 10,
        ..Limits::default()
    };
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + PROBE_WAIT;
    loop {
        match next_frame(&mut buf, &limits) {
            Ok(Some(body)) => return handshake(body),
            Ok(None) => {}
            Err(_) => return Probe::Other,
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Probe::Silent,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Probe::Silent,
        }
    }
}

/// The handshake in a frame body, if it is one.
fn handshake(body: bytes::Bytes) -> Probe {
    let limits = Limits::default();
    let Ok(packed) = Packed::from_body(body, &[], &limits) else {
        return Probe::Other;
    };
    let Ok(msg) = packed.parse(&limits) else {
        return Probe::Other;
    };
    if msg.sub_flag() != Some(sub::HANDSHAKE) || msg.payload.len() < 3 {
        return Probe::Other;
    }
    let text = |v: &Value| match v {
        Value::Str(s) => Some(s.clone()),
        Value::Bin(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    match (text(&msg.payload[1]), text(&msg.payload[2])) {
        (Some(id), Some(protocol_id)) => Probe::Handshake { id, protocol_id },
        _ => Probe::Other,
    }
}

/// A subnet and transport a protocol id stands for.
#[derive(Debug, PartialEq, Eq)]
pub struct Named {
    /// The full subnet (`sync1`).
    pub subnet: String,
    /// The transport's `--transport` name.
    pub transport: &'static str,
}

/// The transports' `--transport` names and the names hashed into the
/// protocol id.
const TRANSPORTS: [(&str, &str); 3] = [("plaintext", "Plaintext"), ("ssl", "SSL"), ("ws", "ws")];

/// Which of the likely subnets (`base` and `sync`, with either leasing
/// digit, and `mesh`) and transports `protocol_id` hashes, if any.
pub fn name_protocol(protocol_id: &str, base: &str) -> Option<Named> {
    let mut subnets = Vec::new();
    for b in [base, "sync"] {
        for digit in ["1", "0"] {
            let s = format!("{b}{digit}");
            if !subnets.contains(&s) {
                subnets.push(s);
            }
        }
    }
    subnets.push(base.to_string());
    subnets.push("mesh".to_string());
    for subnet in subnets {
        for (transport, encryption) in TRANSPORTS {
            if ids::protocol_id(&subnet, encryption) == protocol_id {
                return Some(Named { subnet, transport });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_likely_subnets() {
        let pid = ids::protocol_id("sync1", "Plaintext");
        assert_eq!(
            name_protocol(&pid, "other"),
            Some(Named {
                subnet: "sync1".into(),
                transport: "plaintext"
            })
        );
        let pid = ids::protocol_id("other0", "SSL");
        assert_eq!(
            name_protocol(&pid, "other"),
            Some(Named {
                subnet: "other0".into(),
                transport: "ssl"
            })
        );
        assert_eq!(
            name_protocol(&ids::protocol_id("elsewhere1", "ws"), "sync"),
            None
        );
    }
}
