//! msgpack encoding and bounded decoding of [`Value`], and the serde glue
//! ([`to_value`], [`from_value`]) that goes through them.
//!
//! The encoder always writes the smallest representation (as u-msgpack-python
//! does), so py2p's bytes are reproduced exactly. The decoder accepts every
//! msgpack type except extensions, checks every declared length against the
//! remaining input before allocating, and enforces a depth and element limit.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{DecodeError, ValueError};
use crate::value::{Integer, Value};
use crate::wire::Limits;

/// Encodes a value into a new buffer.
///
/// ```
/// use rs2p::{wire::msgpack, Value};
/// assert_eq!(msgpack::encode(&Value::from(300)), [0xcd, 0x01, 0x2c]);
/// assert_eq!(msgpack::encode(&Value::from("hi")), [0xa2, b'h', b'i']);
/// ```
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out);
    out
}

/// Encodes a value, appending to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Nil => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Int(n) => encode_int(*n, out),
        Value::F32(f) => {
            out.push(0xca);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::F64(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => {
            encode_str_header(s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(b) => encode_bin(b, out),
        Value::Array(a) => {
            encode_array_header(a.len(), out);
            for v in a {
                encode_into(v, out);
            }
        }
        Value::Map(m) => {
            let n = m.len();
            if n < 16 {
                out.push(0x80 | n as u8);
            } else if n <= 0xffff {
                out.push(0xde);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xdf);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for (k, v) in m {
                encode_into(k, out);
                encode_into(v, out);
            }
        }
    }
}

/// Writes an array header for `n` elements.
pub fn encode_array_header(n: usize, out: &mut Vec<u8>) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= 0xffff {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Writes a `bin` value.
pub fn encode_bin(b: &[u8], out: &mut Vec<u8>) {
    let n = b.len();
    if n <= 0xff {
        out.push(0xc4);
        out.push(n as u8);
    } else if n <= 0xffff {
        out.push(0xc5);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

fn encode_str_header(n: usize, out: &mut Vec<u8>) {
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= 0xff {
        out.push(0xd9);
        out.push(n as u8);
    } else if n <= 0xffff {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Writes an integer in its smallest encoding.
pub fn encode_int(n: Integer, out: &mut Vec<u8>) {
    let n = n.as_i128();
    if n >= 0 {
        if n < 128 {
            out.push(n as u8);
        } else if n <= 0xff {
            out.push(0xcc);
            out.push(n as u8);
        } else if n <= 0xffff {
            out.push(0xcd);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= 0xffff_ffff {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    } else if n >= -32 {
        out.push(n as i8 as u8);
    } else if n >= i128::from(i8::MIN) {
        out.push(0xd0);
        out.push(n as i8 as u8);
    } else if n >= i128::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(n as i16).to_be_bytes());
    } else if n >= i128::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(n as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&(n as i64).to_be_bytes());
    }
}

/// Decodes exactly one value filling `bytes`.
///
/// ```
/// use rs2p::{wire::{msgpack, Limits}, Value};
/// let v = msgpack::decode(&[0x92, 0x01, 0xc4, 0x01, 0x61], &Limits::default()).unwrap();
/// assert_eq!(v, Value::Array(vec![1.into(), Value::Bin(b"a".to_vec())]));
/// assert!(msgpack::decode(&[0xdd, 0xff, 0xff, 0xff, 0xff], &Limits::default()).is_err());
/// ```
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    let mut d = Decoder::new(bytes, limits);
    let v = d.value(0)?;
    if d.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            extra: bytes.len() - d.pos,
        });
    }
    Ok(v)
}

/// Converts any `Serialize` type into a [`Value`] (structs become maps with
/// str keys, `serde_bytes` fields become bin), by way of its msgpack
/// encoding (rmp-serde writes it, [`decode`] reads it back).
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Point { x: i32, y: i32 }
/// let v = rs2p::to_value(&Point { x: 1, y: -2 }).unwrap();
/// assert_eq!(v.map_get(&"y".into()), Some(&rs2p::Value::from(-2)));
/// let back: Point = rs2p::from_value(&v).unwrap();
/// assert_eq!(back, Point { x: 1, y: -2 });
/// ```
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| ValueError::Serde(e.to_string()))?;
    decode(&bytes, &Limits::default()).map_err(|e| ValueError::Serde(e.to_string()))
}

/// Converts a [`Value`] into any `Deserialize` type (see [`to_value`]),
/// by way of its msgpack encoding.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, ValueError> {
    let bytes = encode(value);
    rmp_serde::from_slice(&bytes).map_err(|e| ValueError::Serde(e.to_string()))
}

/// A bounded msgpack reader over a byte slice.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
    elements: usize,
    max_elements: usize,
    max_depth: usize,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(buf: &'a [u8], limits: &Limits) -> Self {
        Decoder {
            buf,
            pos: 0,
            elements: 0,
            max_elements: limits.max_elements,
            max_depth: limits.max_depth,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - rest,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn count(&mut self, declared: u64, per_item_min: usize) -> Result<usize, DecodeError> {
        // Every element takes at least one byte: refuse counts the input
        // cannot hold before allocating anything for them.
        let rest = (self.buf.len() - self.pos) as u64;
        if declared.saturating_mul(per_item_min as u64) > rest {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: (declared.saturating_mul(per_item_min as u64) - rest) as usize,
            });
        }
        let n = declared as usize;
        self.elements = self.elements.saturating_add(n);
        if self.elements > self.max_elements {
            return Err(DecodeError::TooManyElements {
                declared,
                max: self.max_elements,
            });
        }
        Ok(n)
    }

    /// Reads the header of an array and returns its length, without reading
    /// the elements.
    pub(crate) fn array_header(&mut self) -> Result<Option<usize>, DecodeError> {
        let start = self.pos;
        let m = self.byte()?;
        let n = match m {
            0x90..=0x9f => u64::from(m & 0x0f),
            0xdc => u64::from(u16::from_be_bytes(self.be()?)),
            0xdd => u64::from(u32::from_be_bytes(self.be()?)),
            _ => {
                self.pos = start;
                return Ok(None);
            }
        };
        self.count(n, 1).map(Some)
    }

    pub(crate) fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > self.max_depth {
            return Err(DecodeError::TooDeep {
                max: self.max_depth,
            });
        }
        let start = self.pos;
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => Value::Int(Integer::from(m)),
            0xe0..=0xff => Value::Int(Integer::from(m as i8)),
            0x80..=0x8f => self.map(u64::from(m & 0x0f), depth)?,
            0x90..=0x9f => self.array(u64::from(m & 0x0f), depth)?,
            0xa0..=0xbf => self.string(usize::from(m & 0x1f), start)?,
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let n = usize::from(self.byte()?);
                Value::Bin(self.take(n)?.to_vec())
            }
            0xc5 => {
                let n = usize::from(u16::from_be_bytes(self.be()?));
                Value::Bin(self.take(n)?.to_vec())
            }
            0xc6 => {
                let n = u32::from_be_bytes(self.be()?) as usize;
                Value::Bin(self.take(n)?.to_vec())
            }
            0xca => Value::F32(f32::from_be_bytes(self.be()?)),
            0xcb => Value::F64(f64::from_be_bytes(self.be()?)),
            0xcc => Value::Int(Integer::from(self.byte()?)),
            0xcd => Value::Int(Integer::from(u16::from_be_bytes(self.be()?))),
            0xce => Value::Int(Integer::from(u32::from_be_bytes(self.be()?))),
            0xcf => Value::Int(Integer::from(u64::from_be_bytes(self.be()?))),
            0xd0 => Value::Int(Integer::from(self.byte()? as i8)),
            0xd1 => Value::Int(Integer::from(i16::from_be_bytes(self.be()?))),
            0xd2 => Value::Int(Integer::from(i32::from_be_bytes(self.be()?))),
            0xd3 => Value::Int(Integer::from(i64::from_be_bytes(self.be()?))),
            0xd9 => {
                let n = usize::from(self.byte()?);
                self.string(n, start)?
            }
            0xda => {
                let n = usize::from(u16::from_be_bytes(self.be()?));
                self.string(n, start)?
            }
            0xdb => {
                let n = u32::from_be_bytes(self.be()?) as usize;
                self.string(n, start)?
            }
            0xdc => {
                let n = u64::from(u16::from_be_bytes(self.be()?));
                self.array(n, depth)?
            }
            0xdd => {
                let n = u64::from(u32::from_be_bytes(self.be()?));
                self.array(n, depth)?
            }
            0xde => {
                let n = u64::from(u16::from_be_bytes(self.be()?));
                self.map(n, depth)?
            }
            0xdf => {
                let n = u64::from(u32::from_be_bytes(self.be()?));
                self.map(n, depth)?
            }
            // 0xc1 (never used) and the ext family (0xc7-0xc9, 0xd4-0xd8):
            // neither reference sends them.
            other => {
                return Err(DecodeError::BadMarker {
                    marker: other,
                    offset: start,
                })
            }
        })
    }

    fn string(&mut self, n: usize, start: usize) -> Result<Value, DecodeError> {
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map(|s| Value::Str(s.to_owned()))
            .map_err(|_| DecodeError::InvalidUtf8 { offset: start })
    }

    fn array(&mut self, declared: u64, depth: usize) -> Result<Value, DecodeError> {
        let n = self.count(declared, 1)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, declared: u64, depth: usize) -> Result<Value, DecodeError> {
        let n = self.count(declared, 2)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            items.push((k, v));
        }
        Ok(Value::Map(items))
    }
}
