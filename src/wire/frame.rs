//! Frames: `length(4, BE) || C(SHA-256(packed) || packed)` where `packed` is
//! the msgpack array `[msg_type, sender, time, payload...]` (PROTOCOL.md §1).

use bytes::{Buf, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::error::DecodeError;
use crate::value::Value;
use crate::wire::msgpack::{self, Decoder};
use crate::wire::{Compression, Limits};

/// A message id: the SHA-256 checksum of its packed bytes.
pub type MessageId = [u8; 32];

/// An encoded message: checksum followed by the packed msgpack array. This
/// is the uncompressed frame body; relays keep it unchanged so that the id
/// survives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    body: Bytes,
}

impl Packed {
    /// Packs `[msg_type, sender(bin), time, payload...]`, as py2p does.
    ///
    /// ```
    /// use rs2p::wire::Packed;
    /// let p = Packed::new(0, b"QmExampleSenderId", 1795733000,
    ///     &[11.into(), rs2p::Value::Bin(b"key".to_vec()), "value".into()]);
    /// assert_eq!(hex(&p.id()[..4]), "a0bdd28a");
    /// # fn hex(b: &[u8]) -> String { b.iter().map(|x| format!("{x:02x}")).collect() }
    /// ```
    pub fn new(msg_type: u8, sender: &[u8], time: i64, payload: &[Value]) -> Packed {
        let mut buf = Packed::header(
            msg_type,
            sender,
            time,
            payload.len(),
            64 + payload.len() * 16,
        );
        for p in payload {
            msgpack::encode_into(p, &mut buf);
        }
        Packed::seal(buf)
    }

    /// Packs like [`new`](Self::new) a payload of `count` values given
    /// already encoded, one after the other, in `payload`.
    pub(crate) fn from_encoded_payload(
        msg_type: u8,
        sender: &[u8],
        time: i64,
        count: usize,
        payload: &[u8],
    ) -> Packed {
        let mut buf = Packed::header(msg_type, sender, time, count, payload.len());
        buf.extend_from_slice(payload);
        Packed::seal(buf)
    }

    /// Room for the checksum, then `[msg_type, sender, time` of an array of
    /// `3 + count` elements; `more` bytes reserved beyond.
    fn header(msg_type: u8, sender: &[u8], time: i64, count: usize, more: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(32 + 16 + sender.len() + more);
        buf.resize(32, 0);
        msgpack::encode_array_header(3 + count, &mut buf);
        buf.push(msg_type);
        msgpack::encode_bin(sender, &mut buf);
        msgpack::encode_int(time.into(), &mut buf);
        buf
    }

    /// Packs an already encoded msgpack array.
    pub fn from_msgpack(packed: &[u8]) -> Packed {
        let mut buf = Vec::with_capacity(32 + packed.len());
        buf.resize(32, 0);
        buf.extend_from_slice(packed);
        Packed::seal(buf)
    }

    fn seal(mut buf: Vec<u8>) -> Packed {
        let sum = Sha256::digest(&buf[32..]);
        buf[..32].copy_from_slice(&sum);
        Packed { body: buf.into() }
    }

    /// The message id (checksum).
    pub fn id(&self) -> MessageId {
        let mut id = [0u8; 32];
        id.copy_from_slice(&self.body[..32]);
        id
    }

    /// The message type (the array's first element, when it is a small
    /// positive int as every message has it).
    pub fn msg_type(&self) -> Option<u8> {
        let m = self.msgpack();
        let at = match m.first()? {
            0x90..=0x9f => 1,
            0xdc => 3,
            0xdd => 5,
            _ => return None,
        };
        m.get(at).copied().filter(|t| *t < 0x80)
    }

    /// The packed msgpack array.
    pub fn msgpack(&self) -> &[u8] {
        &self.body[32..]
    }

    /// Checksum followed by the msgpack bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The complete frame laid out as `framing` says.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use rs2p::wire::{next_frame, Framing, Limits, Packed};
    /// let p = Packed::new(2, b"me", 1, &[0.into()]);
    /// let bare = p.framed(Framing::Bare);
    /// // The bare frame leaves the 32-byte checksum out; the receiver
    /// // computes it.
    /// assert_eq!(bare.len() + 32, p.framed(Framing::Checked(None)).len());
    /// let body = next_frame(&mut BytesMut::from(&bare[..]), &Limits::default())
    ///     .unwrap()
    ///     .unwrap();
    /// let (back, _) = Packed::decode(body, &[], true, &Limits::default()).unwrap();
    /// assert_eq!(back, p);
    /// ```
    pub fn framed(&self, framing: Framing) -> Bytes {
        match framing {
            Framing::Checked(compression) => self.to_frame(compression),
            Framing::Bare => length_prefixed(self.msgpack()),
        }
    }

    /// Decodes and parses a frame body (without its length prefix) as
    /// [`from_body`](Self::from_body) and [`parse`](Self::parse) do; with
    /// `bare`, a body that is a message without its checksum (sent
    /// [`Framing::Bare`] by an rs2p peer that said it would) is taken too,
    /// its id computed here.
    pub fn decode(
        body: Bytes,
        methods: &[Compression],
        bare: bool,
        limits: &Limits,
    ) -> Result<(Packed, WireMessage), DecodeError> {
        // A bare message starts with its array header. A checked body may
        // start the same way (its checksum's first byte) and so may a
        // compressed one (a snappy length): those fail the parse and are
        // read the usual way.
        if bare && matches!(body.first(), Some(0x90..=0x9f | 0xdc | 0xdd)) {
            match WireMessage::parse(&body, limits) {
                Ok(msg) => return Ok((Packed::from_msgpack(&body), msg)),
                // A bare message over our limits is reported as such (the
                // frame is skipped, the link kept), unless the body reads
                // the usual way.
                Err(e) if e.is_limit() => {
                    return Packed::from_body(body, methods, limits)
                        .and_then(|p| p.parse(limits).map(|m| (p, m)))
                        .map_err(|_| e)
                }
                Err(_) => {}
            }
        }
        let packed = Packed::from_body(body, methods, limits)?;
        let msg = packed.parse(limits)?;
        Ok((packed, msg))
    }

    /// The complete frame, compressed with `compression` if given.
    pub fn to_frame(&self, compression: Option<Compression>) -> Bytes {
        let compressed;
        let body: &[u8] = match compression {
            None => &self.body,
            Some(m) => {
                compressed = m.compress(&self.body);
                &compressed
            }
        };
        length_prefixed(body)
    }

    /// Decodes a frame body (without its length prefix).
    ///
    /// A body that already carries a valid checksum is taken as it is; else
    /// each method in `methods` is tried, then every other method we know,
    /// since the references sometimes compress when they said they would not
    /// (PROTOCOL.md §5.2, §6.11).
    pub fn from_body(
        body: Bytes,
        methods: &[Compression],
        limits: &Limits,
    ) -> Result<Packed, DecodeError> {
        // A packed message is a msgpack array, so an uncompressed body has
        // an array header right after its checksum. A body without one is
        // tried compressed first: hashing it as it is would be wasted on
        // every compressed frame (a tenth of a large join's time).
        let looks_plain = body
            .get(32)
            .is_some_and(|b| matches!(b, 0x90..=0x9f | 0xdc | 0xdd));
        if looks_plain && body_is_valid(&body) {
            return Ok(Packed { body });
        }
        let mut tried = vec!["none"];
        let others = Compression::ALL
            .into_iter()
            .filter(|m| !methods.contains(m));
        let mut last_err = None;
        for m in methods.iter().copied().chain(others) {
            tried.push(m.name());
            match m.decompress(&body, limits.max_decompressed) {
                Ok(plain) if body_is_valid(&plain) => return Ok(Packed { body: plain.into() }),
                Ok(_) => {}
                Err(e @ DecodeError::DecompressedTooLarge { .. }) => last_err = Some(e),
                Err(_) => {}
            }
        }
        if !looks_plain && body_is_valid(&body) {
            return Ok(Packed { body });
        }
        if body.len() < 32 && last_err.is_none() {
            return Err(DecodeError::FrameTooShort { len: body.len() });
        }
        Err(last_err.unwrap_or(DecodeError::ChecksumMismatch {
            len: body.len(),
            tried: tried.join(", "),
        }))
    }

    /// Parses the packed array into a [`WireMessage`].
    pub fn parse(&self, limits: &Limits) -> Result<WireMessage, DecodeError> {
        WireMessage::parse(self.msgpack(), limits)
    }
}

/// `body` behind its 4-byte big-endian length: a frame.
fn length_prefixed(body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.into()
}

fn body_is_valid(body: &[u8]) -> bool {
    body.len() >= 32 && Sha256::digest(&body[32..]).as_slice() == &body[..32]
}

/// How a message is laid out in a frame's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// As every peer reads it: the checksum, then the packed message,
    /// compressed as a whole with the method if one is given.
    Checked(Option<Compression>),
    /// The packed message alone, uncompressed: only to rs2p peers that list
    /// [`RS2P_BARE`](crate::wire::flags::compression::RS2P_BARE). The
    /// checksum is the message's id, which the receiver computes anyway;
    /// leaving it out saves 32 bytes a frame, a quarter of a small write.
    Bare,
}

/// A decoded message: `[msg_type, sender, time, payload...]`.
#[derive(Clone, Debug, PartialEq)]
pub struct WireMessage {
    /// Main flag.
    pub msg_type: u8,
    /// The creator's id, as bytes (str and bin both accepted).
    pub sender: Vec<u8>,
    /// Creation time, unix seconds (integral floats accepted).
    pub time: i64,
    /// Payload packets; packet 0 is the sub-flag.
    pub payload: Vec<Value>,
}

impl WireMessage {
    /// Parses a packed msgpack array.
    pub fn parse(msgpack: &[u8], limits: &Limits) -> Result<WireMessage, DecodeError> {
        let mut d = Decoder::new(msgpack, limits);
        let n = d
            .array_header()?
            .ok_or_else(|| DecodeError::Malformed("message is not a msgpack array".into()))?;
        if n < 3 {
            return Err(DecodeError::Malformed(format!(
                "message has {n} packets, at least 3 are needed"
            )));
        }
        let msg_type = d.value(1)?;
        let msg_type = msg_type
            .as_u64()
            .and_then(|m| u8::try_from(m).ok())
            .ok_or_else(|| {
                DecodeError::Malformed(format!(
                    "message type is {}, not a small int",
                    msg_type.kind()
                ))
            })?;
        let sender = match d.value(1)? {
            Value::Bin(b) => b,
            Value::Str(s) => s.into_bytes(),
            other => {
                return Err(DecodeError::Malformed(format!(
                    "sender is {}, not str or bin",
                    other.kind()
                )))
            }
        };
        let time = d.value(1)?;
        let time = time.as_i64().ok_or_else(|| {
            DecodeError::Malformed(format!("time is {}, not an integer", time.kind()))
        })?;
        let mut payload = Vec::with_capacity(n - 3);
        for _ in 3..n {
            payload.push(d.value(1)?);
        }
        if d.pos != msgpack.len() {
            return Err(DecodeError::TrailingBytes {
                extra: msgpack.len() - d.pos,
            });
        }
        Ok(WireMessage {
            msg_type,
            sender,
            time,
            payload,
        })
    }

    /// The sub-flag (payload packet 0) when it is a small integer.
    pub fn sub_flag(&self) -> Option<u8> {
        self.payload
            .first()
            .and_then(Value::as_u64)
            .and_then(|f| u8::try_from(f).ok())
    }
}

/// Splits frames off a receive buffer.
///
/// ```
/// use bytes::BytesMut;
/// use rs2p::wire::{next_frame, Limits, Packed};
/// let frame = Packed::new(2, b"me", 1, &[0.into()]).to_frame(None);
/// let mut buf = BytesMut::from(&frame[..]);
/// let body = next_frame(&mut buf, &Limits::default()).unwrap().unwrap();
/// assert_eq!(body.len(), frame.len() - 4);
/// assert!(buf.is_empty());
/// ```
pub fn next_frame(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Bytes>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > limits.max_frame {
        return Err(DecodeError::FrameTooLarge {
            len: len as u64,
            max: limits.max_frame as u64,
        });
    }
    if buf.len() < 4 + len {
        // Reserve only what the announced (and checked) length needs.
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}
