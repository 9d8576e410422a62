//! Body compression (PROTOCOL.md §5), with bounded decompression.
//!
//! Each method produces the same container the references use: zlib and
//! gzip as CPython's `zlib` (level 6, gzip OS byte 3), bzip2 at level 9, the
//! `.xz` container with a CRC64 check at preset 6 (Python's `lzma`), and the
//! raw snappy block format.
//!
//! zlib and gzip come from C zlib with the `native-compression` feature
//! (the default) and from miniz_oxide (pure Rust) without it; bz2 and lzma
//! need that feature (C libraries) and are left out of
//! [`Compression::ALL`] without it, so a build without C code (the
//! browser's) neither offers nor accepts them.

use std::io::{Read, Write};

use crate::error::DecodeError;

/// A compression method both sides may advertise in their handshakes.
///
/// The variants are the protocol's flags; [`Compression::ALL`] lists the
/// ones this build implements ([`is_available`](Self::is_available)).
///
/// ```
/// use rs2p::wire::Compression;
/// let body = b"hello hello hello hello".repeat(10);
/// for m in Compression::ALL {
///     let packed = m.compress(&body);
///     assert_eq!(m.decompress(&packed, 1 << 20).unwrap(), body);
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    /// bzip2, flag 0x10.
    Bz2 = 0x10,
    /// gzip container, flag 0x11.
    Gzip = 0x11,
    /// xz container, flag 0x12.
    Lzma = 0x12,
    /// zlib container, flag 0x13.
    Zlib = 0x13,
    /// raw snappy, flag 0x20.
    Snappy = 0x20,
}

impl Compression {
    /// Every implemented method, in our default order of preference (py2p's
    /// order: fast and common first).
    #[cfg(feature = "native-compression")]
    pub const ALL: [Compression; 5] = [
        Compression::Snappy,
        Compression::Zlib,
        Compression::Gzip,
        Compression::Bz2,
        Compression::Lzma,
    ];

    /// Every implemented method, in our default order of preference (py2p's
    /// order: fast and common first). Without the `native-compression`
    /// feature, bz2 and lzma are not implemented.
    #[cfg(not(feature = "native-compression"))]
    pub const ALL: [Compression; 3] = [Compression::Snappy, Compression::Zlib, Compression::Gzip];

    /// True when this build implements the method (bz2 and lzma need the
    /// `native-compression` feature).
    pub fn is_available(self) -> bool {
        match self {
            Compression::Bz2 | Compression::Lzma => cfg!(feature = "native-compression"),
            Compression::Gzip | Compression::Zlib | Compression::Snappy => true,
        }
    }

    /// The method with this flag, if implemented.
    pub fn from_flag(flag: i64) -> Option<Compression> {
        let m = match flag {
            0x10 => Compression::Bz2,
            0x11 => Compression::Gzip,
            0x12 => Compression::Lzma,
            0x13 => Compression::Zlib,
            0x20 => Compression::Snappy,
            _ => return None,
        };
        m.is_available().then_some(m)
    }

    /// The method's flag.
    pub fn flag(self) -> u8 {
        self as u8
    }

    /// The method's name (`zlib`, `gzip`, `bz2`, `lzma`, `snappy`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::Bz2 => "bz2",
            Compression::Gzip => "gzip",
            Compression::Lzma => "lzma",
            Compression::Zlib => "zlib",
            Compression::Snappy => "snappy",
        }
    }

    /// Looks a method up by name.
    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Compresses `data`. A method this build does not implement (see
    /// [`is_available`](Self::is_available)) gives an empty vector; the
    /// mesh never picks one, since only implemented methods are offered.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        // Writing into a Vec cannot fail; the encoders only report I/O
        // errors of their sink.
        let out = Vec::with_capacity(data.len() / 2 + 64);
        let res: std::io::Result<Vec<u8>> = match self {
            Compression::Zlib => {
                let mut e = flate2::write::ZlibEncoder::new(out, flate2::Compression::new(6));
                e.write_all(data).and_then(|_| e.finish())
            }
            Compression::Gzip => {
                let mut e = flate2::GzBuilder::new()
                    .operating_system(3)
                    .write(out, flate2::Compression::new(6));
                e.write_all(data).and_then(|_| e.finish())
            }
            #[cfg(feature = "native-compression")]
            Compression::Bz2 => {
                let mut e = bzip2::write::BzEncoder::new(out, bzip2::Compression::best());
                e.write_all(data).and_then(|_| e.finish())
            }
            #[cfg(feature = "native-compression")]
            Compression::Lzma => {
                let mut e = liblzma::write::XzEncoder::new(out, 6);
                e.write_all(data).and_then(|_| e.finish())
            }
            #[cfg(not(feature = "native-compression"))]
            Compression::Bz2 | Compression::Lzma => Err(not_built(self)),
            // Its message, not the error: boxed in an io::Error, snap's
            // error would link its Debug impl into the browser bundle.
            Compression::Snappy => snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(|e| std::io::Error::other(e.to_string())),
        };
        res.unwrap_or_default()
    }

    /// Decompresses `data`, refusing to produce more than `max` bytes.
    pub fn decompress(self, data: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
        let method = self.name();
        let err = |e: std::io::Error| DecodeError::Decompress {
            method,
            reason: e.to_string(),
        };
        match self {
            Compression::Snappy => {
                let len = snap::raw::decompress_len(data).map_err(|e| DecodeError::Decompress {
                    method,
                    reason: e.to_string(),
                })?;
                if len > max {
                    return Err(DecodeError::DecompressedTooLarge { method, max });
                }
                snap::raw::Decoder::new().decompress_vec(data).map_err(|e| {
                    DecodeError::Decompress {
                        method,
                        reason: e.to_string(),
                    }
                })
            }
            Compression::Zlib => bounded(flate2::read::ZlibDecoder::new(data), max, method, err),
            Compression::Gzip => bounded(flate2::read::GzDecoder::new(data), max, method, err),
            #[cfg(feature = "native-compression")]
            Compression::Bz2 => bounded(bzip2::read::BzDecoder::new(data), max, method, err),
            #[cfg(feature = "native-compression")]
            Compression::Lzma => bounded(liblzma::read::XzDecoder::new(data), max, method, err),
            #[cfg(not(feature = "native-compression"))]
            Compression::Bz2 | Compression::Lzma => Err(err(not_built(self))),
        }
    }
}

#[cfg(not(feature = "native-compression"))]
fn not_built(m: Compression) -> std::io::Error {
    std::io::Error::other(format!(
        "{} is not built in (crate feature `native-compression`)",
        m.name()
    ))
}

fn bounded<R: Read>(
    reader: R,
    max: usize,
    method: &'static str,
    err: impl Fn(std::io::Error) -> DecodeError,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(err)?;
    if out.len() > max {
        return Err(DecodeError::DecompressedTooLarge { method, max });
    }
    Ok(out)
}
