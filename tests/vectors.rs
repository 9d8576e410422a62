//! Every record of the captured vectors (tests/data/vectors, a copy of
//! ../shared/vectors): frames decode to the recorded packets with the
//! recorded types, the recorded packets encode to the recorded bytes, and
//! the computed ids are reproduced.

use std::path::PathBuf;

use rs2p::wire::{ids, msgpack, next_frame, Compression, Limits, Packed};
use rs2p::{Integer, Value};
use serde_json::Value as Json;

fn records() -> Vec<(String, Json)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors");
    let mut out = Vec::new();
    for file in ["py2p.jsonl", "js2p.jsonl", "interop.jsonl"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("vector file");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let rec: Json = serde_json::from_str(line).expect("vector line is JSON");
            out.push((file.to_string(), rec));
        }
    }
    assert!(
        out.len() >= 300,
        "expected all vector records, got {}",
        out.len()
    );
    out
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

/// Converts a typed record value into a Value, checking that the recorded
/// integer width is the smallest one (so our minimal encoder matches it).
fn typed(t: &Json) -> Value {
    let (k, v) = t
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("typed value");
    let int = |v: &Json| -> Integer {
        if let Some(u) = v.as_u64() {
            Integer::from(u)
        } else {
            Integer::from(v.as_i64().expect("integer"))
        }
    };
    match k.as_str() {
        "nil" => Value::Nil,
        "bool" => Value::Bool(v.as_bool().unwrap()),
        "fixint" | "uint8" | "uint16" | "uint32" | "uint64" | "int8" | "int16" | "int32"
        | "int64" => {
            let n = int(v);
            let mut enc = Vec::new();
            msgpack::encode_int(n, &mut enc);
            let expect = match k.as_str() {
                "fixint" => 1,
                "uint8" | "int8" => 2,
                "uint16" | "int16" => 3,
                "uint32" | "int32" => 5,
                _ => 9,
            };
            assert_eq!(enc.len(), expect, "{k} {n} is not the smallest width");
            Value::Int(n)
        }
        "float32" => Value::F32(v.as_f64().unwrap() as f32),
        "float64" => Value::F64(v.as_f64().unwrap()),
        "str" => Value::Str(v.as_str().unwrap().to_string()),
        "bin" => Value::Bin(unhex(v.as_str().unwrap())),
        "array" => Value::Array(v.as_array().unwrap().iter().map(typed).collect()),
        "map" => Value::Map(
            v.as_array()
                .unwrap()
                .iter()
                .map(|kv| (typed(&kv[0]), typed(&kv[1])))
                .collect(),
        ),
        other => panic!("unknown typed key {other}"),
    }
}

#[test]
fn every_frame_decodes_and_reencodes() {
    let limits = Limits::default();
    let mut frames = 0;
    let mut exact_compressed = 0;
    for (file, rec) in records() {
        let Some(frame_hex) = rec.get("frame_hex").and_then(Json::as_str) else {
            continue;
        };
        let name = rec["name"].as_str().unwrap();
        let frame = unhex(frame_hex);
        let mut buf = bytes::BytesMut::from(&frame[..]);
        let body = next_frame(&mut buf, &limits)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete frame"));
        assert!(buf.is_empty(), "{name}: bytes after the frame");
        let method = rec["compression"].as_str().unwrap_or("none");
        let compression = match method {
            "none" => None,
            m => Some(Compression::from_name(m).unwrap_or_else(|| panic!("{name}: {m}"))),
        };
        let methods: Vec<Compression> = compression.into_iter().collect();
        let packed =
            Packed::from_body(body, &methods, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));

        if rec["kind"] == "message_id" {
            // Checked in `computed_ids_and_encodings`.
            assert_eq!(hex::encode(packed.id()), rec["id_hex"], "{name}: id");
        } else if rec["kind"] == "frame_example" {
            let plain = unhex(rec["uncompressed_body_hex"].as_str().unwrap());
            assert_eq!(packed.body().as_ref(), &plain[..], "{name}: body");
        } else {
            assert_eq!(
                hex::encode(packed.id()),
                rec["checksum_hex"],
                "{name}: checksum"
            );
            assert_eq!(
                hex::encode(packed.msgpack()),
                rec["msgpack_hex"],
                "{name}: msgpack"
            );

            // Decode: the recorded packets, with the recorded types.
            let decoded = msgpack::decode(packed.msgpack(), &limits)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let recorded = Value::Array(
                rec["packets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(typed)
                    .collect(),
            );
            assert_eq!(decoded, recorded, "{name}: decoded packets");
            let msg = packed
                .parse(&limits)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(msg.payload.len() + 3, recorded.as_array().unwrap().len());

            // Encode: the recorded packets give the recorded bytes.
            assert_eq!(
                hex::encode(msgpack::encode(&recorded)),
                rec["msgpack_hex"],
                "{name}: re-encoded msgpack"
            );
        }
        // The whole frame: byte for byte for py2p's output (same zlib, bz2,
        // liblzma and snappy settings). js2p's compressors (zlibjs, snappy
        // 7) emit other valid bytes, so for its compressed frames only the
        // decompressed body is compared (done above).
        let reencoded = packed.to_frame(compression);
        let by_py2p = rec["implementation"]
            .as_str()
            .is_some_and(|i| i.starts_with("py2p") || i.contains("patched"))
            || file == "py2p.jsonl";
        if compression.is_none() || by_py2p {
            assert_eq!(hex::encode(&reencoded), frame_hex, "{name}: frame bytes");
            if compression.is_some() {
                exact_compressed += 1;
            }
        }
        let mut again = bytes::BytesMut::from(&reencoded[..]);
        let body = next_frame(&mut again, &limits).unwrap().unwrap();
        assert_eq!(Packed::from_body(body, &methods, &limits).unwrap(), packed);
        frames += 1;
    }
    assert!(frames >= 240, "only {frames} frames checked");
    eprintln!("{frames} frames, {exact_compressed} compressed frames byte-exact");
    assert!(
        exact_compressed > 30,
        "only {exact_compressed} compressed frames exact"
    );
}

#[test]
fn computed_ids_and_encodings() {
    let limits = Limits::default();
    let mut checked = 0;
    for (_, rec) in records() {
        let name = rec["name"].as_str().unwrap();
        match rec["kind"].as_str().unwrap() {
            "protocol_id" => {
                let i = &rec["input"];
                assert_eq!(i["protocol_version"], ids::PROTOCOL_VERSION);
                let got = ids::protocol_id(
                    i["subnet"].as_str().unwrap(),
                    i["encryption"].as_str().unwrap(),
                );
                assert_eq!(got, rec["output"].as_str().unwrap(), "{name}");
            }
            "node_id" => {
                let i = &rec["input"];
                let pid = i["protocol_id"].as_str().unwrap();
                let salt = i["user_salt"].as_str().unwrap();
                let got = if name.starts_with("py2p") {
                    let a = &i["out_addr"];
                    ids::node_id_py2p(
                        a[0].as_str().unwrap(),
                        a[1].as_u64().unwrap() as u16,
                        pid,
                        salt,
                    )
                } else {
                    let a = &i["bind_addr"];
                    ids::node_id_js2p(
                        a[0].as_str().unwrap(),
                        a[1].as_u64().unwrap() as u16,
                        pid,
                        salt,
                    )
                };
                assert_eq!(got, rec["output"].as_str().unwrap(), "{name}");
            }
            "base58_int" => {
                let bytes = match rec.get("input_hex_bytes").and_then(Json::as_str) {
                    Some(h) => unhex(h),
                    None => dec_to_bytes(rec["input_int"].as_str().unwrap()),
                };
                let out = rec["output"].as_str().unwrap();
                assert_eq!(ids::to_base58(&bytes), out, "{name}");
                let back = ids::from_base58(out).unwrap();
                let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
                assert_eq!(back, trimmed, "{name}: decode");
            }
            "message_id" => {
                let raw = unhex(rec["msgpack_hex"].as_str().unwrap());
                let p = Packed::from_msgpack(&raw);
                assert_eq!(hex::encode(p.id()), rec["id_hex"], "{name}");
                assert_eq!(hex::encode(p.to_frame(None)), rec["frame_hex"], "{name}");
                let Some(packets) = rec.get("packets").and_then(Json::as_array) else {
                    checked += 1;
                    continue;
                };
                let packets: Vec<Value> = packets.iter().map(typed).collect();
                let p = Packed::from_msgpack(&msgpack::encode(&Value::Array(packets.clone())));
                assert_eq!(hex::encode(p.id()), rec["id_hex"], "{name}");
                assert_eq!(hex::encode(p.to_frame(None)), rec["frame_hex"], "{name}");
                // The same message built from typed parts.
                let sender = packets[1].as_bytes().unwrap();
                let q = Packed::new(0, sender, packets[2].as_i64().unwrap(), &packets[3..]);
                if packets[1].is_bin() {
                    assert_eq!(q, p, "{name}: Packed::new");
                }
            }
            "msgpack_encoding" => {
                let v =
                    msgpack::decode(&unhex(rec["msgpack_hex"].as_str().unwrap()), &limits).unwrap();
                let n = rec["input_js_number"].as_f64().unwrap();
                assert_eq!(v.as_f64(), Some(n), "{name}");
                if n.fract() == 0.0 {
                    // Integral floats are accepted where integers are expected.
                    assert_eq!(v.as_i64(), Some(n as i64), "{name}");
                }
            }
            _ => continue,
        }
        checked += 1;
    }
    assert!(checked >= 70, "only {checked} computed records");
}

/// Decimal text to big-endian bytes.
fn dec_to_bytes(s: &str) -> Vec<u8> {
    let mut num: Vec<u8> = Vec::new();
    for c in s.bytes() {
        let mut carry = u32::from(c - b'0');
        for b in num.iter_mut().rev() {
            let acc = u32::from(*b) * 10 + carry;
            *b = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        while carry > 0 {
            num.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    if num.is_empty() {
        num.push(0);
    }
    num
}
