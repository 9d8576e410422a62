//! Encode and decode throughput of the wire codec: a 100-byte and a 1 MiB
//! payload, uncompressed and with each compression.
//!
//! `cargo bench --bench codec`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rs2p::wire::{next_frame, Compression, Limits, Packed};
use rs2p::Value;

fn payload(size: usize) -> Vec<Value> {
    // Realistic, partly compressible data: a store of a key and a value.
    let text: String = (0..size)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    vec![
        Value::from(11),
        Value::Bin(b"some/key".to_vec()),
        Value::Str(text),
    ]
}

fn bench(c: &mut Criterion) {
    let id = b"4xD7wXvqR453LWpWstiAFVwB7yu1UeuAWcPdU7b5ofdMEnRc5pbHdWLKjrg15642JD";
    let limits = Limits::default();
    let methods: Vec<Option<Compression>> = std::iter::once(None)
        .chain(Compression::ALL.into_iter().map(Some))
        .collect();
    for (label, size) in [("100B", 100usize), ("1MiB", 1 << 20)] {
        let p = payload(size);
        let mut g = c.benchmark_group(format!("encode/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        if size > 1000 {
            g.sample_size(10);
        }
        for m in &methods {
            let name = m.map_or("none", |m| m.name());
            g.bench_with_input(BenchmarkId::from_parameter(name), m, |b, m| {
                b.iter(|| Packed::new(0, id, 1_795_733_000, &p).to_frame(*m))
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("decode/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        if size > 1000 {
            g.sample_size(10);
        }
        for m in &methods {
            let name = m.map_or("none", |m| m.name());
            let frame = Packed::new(0, id, 1_795_733_000, &p).to_frame(*m);
            let known: Vec<Compression> = m.iter().copied().collect();
            g.bench_with_input(BenchmarkId::from_parameter(name), &frame, |b, frame| {
                b.iter(|| {
                    let mut buf = bytes::BytesMut::from(&frame[..]);
                    let body = next_frame(&mut buf, &limits).unwrap().unwrap();
                    Packed::from_body(body, &known, &limits)
                        .unwrap()
                        .parse(&limits)
                        .unwrap()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
