//! Property tests of the wire codec: round trips for arbitrary values and
//! messages, and no panic (nor unbounded allocation) on arbitrary or mutated
//! input. Longer fuzzing: see `fuzz/README.md`.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rs2p::wire::{msgpack, next_frame, Compression, Framing, Limits, Packed, WireMessage};
use rs2p::{Integer, Value};

/// `PROPTEST_CASES` raises every case count for longer runs.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(default, |n: u32| n.max(default))
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Int(Integer::from(n))),
        any::<u64>().prop_map(|n| Value::Int(Integer::from(n))),
        any::<f32>()
            .prop_filter("NaN never equals itself", |f| !f.is_nan())
            .prop_map(Value::F32),
        any::<f64>()
            .prop_filter("NaN never equals itself", |f| !f.is_nan())
            .prop_map(Value::F64),
        ".{0,40}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bin),
    ];
    leaf.prop_recursive(4, 64, 20, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..18).prop_map(Value::Map),
        ]
    })
}

fn compression() -> impl Strategy<Value = Option<Compression>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(Compression::ALL.to_vec()).prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2_000), ..ProptestConfig::default() })]

    #[test]
    fn value_round_trip(v in value()) {
        let bytes = msgpack::encode(&v);
        let back = msgpack::decode(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(msgpack::encode(&back), bytes);
    }

    #[test]
    fn message_round_trip(
        msg_type in 0u8..5,
        sender in proptest::collection::vec(any::<u8>(), 0..70),
        time in any::<i64>(),
        payload in proptest::collection::vec(value(), 0..6),
        method in compression(),
    ) {
        let packed = Packed::new(msg_type, &sender, time, &payload);
        let frame = packed.to_frame(method);
        let mut buf = BytesMut::from(&frame[..]);
        let body = next_frame(&mut buf, &Limits::default()).unwrap().unwrap();
        let methods: Vec<_> = method.into_iter().collect();
        let back = Packed::from_body(body, &methods, &Limits::default()).unwrap();
        prop_assert_eq!(&back, &packed);
        let msg = back.parse(&Limits::default()).unwrap();
        prop_assert_eq!(msg.msg_type, msg_type);
        prop_assert_eq!(msg.sender, sender);
        prop_assert_eq!(msg.time, time);
        prop_assert_eq!(msg.payload, payload);
    }

    /// Every framing an rs2p receiver may get on a link to an rs2p peer
    /// (checked, compressed, bare) decodes to the same message and id.
    #[test]
    fn every_framing_decodes_on_a_bare_link(
        msg_type in 0u8..5,
        sender in proptest::collection::vec(any::<u8>(), 0..70),
        time in any::<i64>(),
        payload in proptest::collection::vec(value(), 0..6),
        method in compression(),
        bare in any::<bool>(),
    ) {
        let packed = Packed::new(msg_type, &sender, time, &payload);
        let framing = if bare { Framing::Bare } else { Framing::Checked(method) };
        let frame = packed.framed(framing);
        let mut buf = BytesMut::from(&frame[..]);
        let body = next_frame(&mut buf, &Limits::default()).unwrap().unwrap();
        let methods: Vec<_> = method.into_iter().collect();
        let (back, msg) = Packed::decode(body, &methods, true, &Limits::default()).unwrap();
        prop_assert_eq!(&back, &packed);
        prop_assert_eq!(msg.payload, payload);
    }
}

fn small_limits() -> Limits {
    Limits {
        max_frame: 1 << 16,
        max_decompressed: 1 << 16,
        max_depth: 16,
        max_elements: 10_000,
    }
}

/// Feeds bytes to every decoder; only errors may come out.
fn feed(bytes: &[u8]) {
    let limits = small_limits();
    let _ = msgpack::decode(bytes, &limits);
    let _ = WireMessage::parse(bytes, &limits);
    let mut buf = BytesMut::from(bytes);
    if let Ok(Some(body)) = next_frame(&mut buf, &limits) {
        if let Ok(p) = Packed::from_body(body, &Compression::ALL, &limits) {
            let _ = p.parse(&limits);
        }
    }
    let _ = Packed::from_body(Bytes::copy_from_slice(bytes), &[], &limits);
    let _ = Packed::decode(
        Bytes::copy_from_slice(bytes),
        &Compression::ALL,
        true,
        &limits,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(60_000), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        feed(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(50_000), failure_persistence: None, ..ProptestConfig::default() })]

    /// Valid frames with a few bytes flipped, cut or inserted: the decoder
    /// reaches deep into the format before failing.
    #[test]
    fn mutated_frames_never_panic(
        payload in proptest::collection::vec(value(), 0..4),
        method in compression(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let frame = Packed::new(0, b"sender", 1_795_733_000, &payload).to_frame(method);
        let mut bytes = frame.to_vec();
        for (at, b, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] ^= b | 1,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, b),
            }
        }
        feed(&bytes);
        // Also with the length prefix fixed up, so the body is parsed.
        if bytes.len() >= 4 {
            let n = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            feed(&bytes);
        }
    }
}

#[test]
fn hostile_sizes_are_refused_with_typed_errors() {
    let limits = Limits::default();
    // A 4 GiB length prefix: refused before anything is buffered.
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
    let err = next_frame(&mut buf, &limits).unwrap_err();
    assert!(
        err.to_string()
            .contains("4294967295 bytes exceeds the limit"),
        "{err}"
    );
    assert!(buf.capacity() < 1 << 20);

    // An array claiming 4 billion elements.
    let err = msgpack::decode(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0], &limits).unwrap_err();
    assert!(matches!(err, rs2p::DecodeError::Truncated { .. }), "{err}");

    // Deep nesting.
    let deep = vec![0x91u8; 1000];
    let err = msgpack::decode(&deep, &limits).unwrap_err();
    assert!(
        matches!(err, rs2p::DecodeError::TooDeep { max: 64 }),
        "{err}"
    );

    // Compression bombs: 64 MiB of zeros in every format, limit 1 MiB.
    let zeros = vec![0u8; 64 << 20];
    let small = Limits {
        max_decompressed: 1 << 20,
        ..Limits::default()
    };
    for m in Compression::ALL {
        let bomb = m.compress(&zeros);
        let err = Packed::from_body(bomb.into(), &[m], &small).unwrap_err();
        assert!(
            matches!(
                err,
                rs2p::DecodeError::DecompressedTooLarge { max: 1_048_576, .. }
            ),
            "{}: {err}",
            m.name()
        );
    }

    // A checksum mismatch says what was tried.
    let mut body = Packed::new(0, b"x", 1, &[]).body().to_vec();
    body[0] ^= 1;
    let err = Packed::from_body(body.into(), &[Compression::Zlib], &limits).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");

    // A checksum that holds over something other than a packed array is
    // still a plain body (tried after the compressed readings, since a
    // plain body starts with an array), and parsing it says what is wrong.
    let hello = msgpack::encode(&Value::from("hello"));
    let mut body = <sha2::Sha256 as sha2::Digest>::digest(&hello).to_vec();
    body.extend_from_slice(&hello);
    let plain = Packed::from_body(body.into(), &[Compression::Zlib], &limits).unwrap();
    assert!(plain.parse(&limits).is_err());

    // Wrong types where packets are expected.
    let not_array = msgpack::encode(&Value::from("hello"));
    assert!(WireMessage::parse(&not_array, &limits).is_err());
    let short = msgpack::encode(&Value::Array(vec![0.into(), "id".into()]));
    assert!(WireMessage::parse(&short, &limits)
        .unwrap_err()
        .to_string()
        .contains("2 packets"));
    let bad_time = msgpack::encode(&Value::Array(vec![0.into(), "id".into(), "now".into()]));
    assert!(WireMessage::parse(&bad_time, &limits)
        .unwrap_err()
        .to_string()
        .contains("time is str"));
}

/// A bare message over the receiver's limits is a limit error (the frame is
/// skipped, the link kept), as a checked one is; not a bad frame.
#[test]
fn a_bare_message_over_the_limits_is_a_limit_error() {
    let mut deep = Value::from(1);
    for _ in 0..65 {
        deep = Value::Array(vec![deep]);
    }
    let packed = Packed::new(0, b"sender", 1, &[Value::from(0), deep]);
    for framing in [Framing::Bare, Framing::Checked(None)] {
        let frame = packed.framed(framing);
        let body = Bytes::copy_from_slice(&frame[4..]);
        let err = Packed::decode(body, &[], true, &Limits::default()).unwrap_err();
        assert!(err.is_limit(), "{framing:?}: {err}");
    }
}
