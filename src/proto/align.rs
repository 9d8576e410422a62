//! Keeping py2p's reader out of its framing bug (PROTOCOL.md §11 Q5).
//!
//! py2p reads 1024 bytes at a time and, when a frame it has just processed
//! leaves **exactly 4 bytes** (the next length prefix) in its buffer, takes
//! those 4 bytes for a whole frame and drops the connection. A reader that
//! is behind reads 1024-byte chunks aligned on the point where it last
//! caught up, which is one of our write boundaries. So towards py2p-like
//! peers every write is laid out so that, counted from its start:
//!
//! - it starts and ends at a multiple of 1024 bytes of the stream (a padding
//!   frame fills the gap), and
//! - no frame inside it ends 4 bytes before a multiple of 1024 (a small
//!   padding frame is put in front of a frame that would).
//!
//! A padding frame is a whisper with the unused sub-flag `ping` and a bin of
//! filler: py2p (and js2p, and rs2p) silently ignore it. It is compressed
//! like any frame, and sized by adjusting the filler until the compressed
//! frame has the wanted length.

use bytes::Bytes;

use crate::value::Value;
use crate::wire::flags::{main, sub};
use crate::wire::{Compression, Packed};

const CHUNK: u64 = 1024;
const BAD_RESIDUE: u64 = 1020;

/// Incompressible filler (a fixed xorshift sequence), so that a padding
/// frame's compressed length follows its filler length.
fn filler(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A padding frame of exactly `len` bytes (length prefix included), if one
/// can be made.
pub(crate) fn pad_frame(
    sender: &[u8],
    time: i64,
    method: Option<Compression>,
    len: u64,
) -> Option<Bytes> {
    let make = |n: usize| {
        let payload = [Value::from(sub::PING), Value::Bin(filler(n))];
        Packed::new(main::WHISPER, sender, time, &payload).to_frame(method)
    };
    let base = make(0).len() as i64;
    let mut n = (len as i64 - base).max(0);
    for _ in 0..8 {
        let f = make(n as usize);
        let diff = len as i64 - f.len() as i64;
        if diff == 0 {
            return Some(f);
        }
        n = (n + diff).max(0);
        if n == 0 && diff < 0 {
            return None;
        }
    }
    // bz2 and xz lengths do not follow the filler exactly: look around.
    (1..48)
        .flat_map(|d| [n - d, n + d])
        .filter(|c| *c >= 0)
        .find_map(|c| {
            let f = make(c as usize);
            (f.len() as u64 == len).then_some(f)
        })
}

/// Lays out `frames` for a py2p-like peer whose stream is at byte `pos`;
/// returns the bytes to write and advances `pos`.
pub(crate) fn layout(
    pos: &mut u64,
    frames: &[Bytes],
    sender: &[u8],
    time: i64,
    method: Option<Compression>,
) -> Bytes {
    let smallest = smallest_pad(sender, time, method);
    let total: usize = frames.iter().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(total + 2 * CHUNK as usize);
    let push = |out: &mut Vec<u8>, pos: &mut u64, b: &[u8]| {
        out.extend_from_slice(b);
        *pos += b.len() as u64;
    };
    // Start on a boundary.
    if let Some(p) = pad_to_boundary(*pos, smallest, sender, time, method) {
        push(&mut out, pos, &p);
    }
    for f in frames {
        if (*pos + f.len() as u64) % CHUNK == BAD_RESIDUE {
            // Shift the frame with a small pad that itself ends safely.
            let mut l = smallest;
            while (*pos + l) % CHUNK == BAD_RESIDUE
                || (*pos + l + f.len() as u64) % CHUNK == BAD_RESIDUE
            {
                l += 1;
            }
            if let Some(p) = pad_frame(sender, time, method, l) {
                push(&mut out, pos, &p);
            }
        }
        push(&mut out, pos, f);
    }
    if let Some(p) = pad_to_boundary(*pos, smallest, sender, time, method) {
        push(&mut out, pos, &p);
    }
    out.into()
}

fn smallest_pad(sender: &[u8], time: i64, method: Option<Compression>) -> u64 {
    let payload = [Value::from(sub::PING), Value::Bin(Vec::new())];
    Packed::new(main::WHISPER, sender, time, &payload)
        .to_frame(method)
        .len() as u64
        + 8
}

fn pad_to_boundary(
    pos: u64,
    smallest: u64,
    sender: &[u8],
    time: i64,
    method: Option<Compression>,
) -> Option<Bytes> {
    let mut need = (CHUNK - pos % CHUNK) % CHUNK;
    if need == 0 {
        return None;
    }
    while need < smallest {
        need += CHUNK;
    }
    pad_frame(sender, time, method, need).or_else(|| pad_frame(sender, time, method, need + CHUNK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{next_frame, Limits};

    /// py2p's reader: 1024-byte reads, and the bug check after each frame.
    fn py2p_reads(stream: &[u8], start: usize) -> Result<usize, usize> {
        let mut buf: Vec<u8> = Vec::new();
        let mut at = start;
        let mut frames = 0;
        while at < stream.len() {
            let end = (at + 1024).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            let mut bm = bytes::BytesMut::from(&buf[..]);
            while next_frame(&mut bm, &Limits::default()).unwrap().is_some() {
                frames += 1;
                if bm.len() == 4 {
                    return Err(frames);
                }
            }
            buf = bm.to_vec();
        }
        Ok(frames)
    }

    #[test]
    fn no_frame_ever_leaves_exactly_four_bytes() {
        for method in [
            None,
            Some(Compression::Zlib),
            Some(Compression::Snappy),
            Some(Compression::Gzip),
            Some(Compression::Bz2),
            Some(Compression::Lzma),
        ] {
            let id = b"4xD7wXvqR453LWpWstiAFVwB7yu1UeuAWcPdU7b5ofdMEnRc5pbHdWLKjrg15642JD";
            // Frames of every size from 40 to 2100 bytes, sent in writes of
            // 1 to 7 frames.
            let frames: Vec<Bytes> = (0..2100usize)
                .step_by(if method.is_some() { 7 } else { 1 })
                .map(|n| {
                    Packed::new(2, id, 1, &[Value::from(11), Value::Bin(filler(n))])
                        .to_frame(method)
                })
                .collect();
            let mut pos = 240; // after a handshake
            let mut stream = vec![0u8; 240];
            let mut naive = vec![0u8; 240];
            let mut write_starts = Vec::new();
            for (i, group) in frames.chunks(1 + (frames.len() % 7)).enumerate() {
                write_starts.push(stream.len());
                let bytes = layout(&mut pos, group, id, 1, method);
                stream.extend_from_slice(&bytes);
                for f in group {
                    naive.extend_from_slice(f);
                }
                let _ = i;
            }
            assert_eq!(pos as usize, stream.len());
            // From every write boundary where the reader may have caught up.
            for &s in write_starts.iter().skip(1).step_by(37) {
                let mut st = vec![0u8; 0];
                st.extend_from_slice(&stream[s..]);
                assert!(
                    py2p_reads(&st, 0).is_ok(),
                    "{method:?}: bug hit from write at {s}"
                );
            }
            // Without the layout, the same frames do hit it.
            if method.is_none() {
                assert!(py2p_reads(&naive[240..], 0).is_err());
            }
        }
    }
}
