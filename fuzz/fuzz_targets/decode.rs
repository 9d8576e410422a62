#![no_main]
//! Every decoder of network input, fed arbitrary bytes: only errors may
//! come out, never a panic or an allocation beyond the limits.

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rs2p::wire::{msgpack, next_frame, Compression, Limits, Packed, WireMessage};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_frame: 1 << 20,
        max_decompressed: 1 << 20,
        ..Limits::default()
    };
    let _ = msgpack::decode(data, &limits);
    let _ = WireMessage::parse(data, &limits);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(body)) = next_frame(&mut buf, &limits) {
        if let Ok(p) = Packed::from_body(body, &Compression::ALL, &limits) {
            let _ = p.parse(&limits);
        }
    }
    let _ = Packed::from_body(Bytes::copy_from_slice(data), &[], &limits);
});
