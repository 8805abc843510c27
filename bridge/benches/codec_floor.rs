//! The codec floor of one call: the work no bridge can avoid per 20 ms frame in each direction
//! (G.711 + libopus), at the Opus complexities the bridge may be configured with. Compare the
//! bridge's measured CPU per call against this (docs/perf.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use room::audio::{OpusDecoder, OpusEncoder};

fn speechlike(n: usize, start: usize) -> Vec<i16> {
    // A few harmonics with a slow amplitude wobble: Opus treats it as voice (a steady pure tone
    // would be classified as noise).
    (start..start + n)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let env = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let s: f64 = [180.0, 360.0, 540.0, 1100.0]
                .iter()
                .enumerate()
                .map(|(k, f)| (2.0 * std::f64::consts::PI * f * t).sin() / (k + 1) as f64)
                .sum();
            (6000.0 * env * s) as i16
        })
        .collect()
}

fn floor(c: &mut Criterion) {
    let pcm: Vec<Vec<i16>> = (0..50).map(|k| speechlike(160, k * 160)).collect();
    let mulaw: Vec<Vec<u8>> = pcm.iter().map(|f| f.iter().map(|s| proto::g711::ulaw_encode(*s)).collect()).collect();
    for complexity in [1u8, 5, 10] {
        c.bench_function(&format!("caller→room: μ-law decode + Opus encode 8k, complexity {complexity}"), |b| {
            let mut enc = OpusEncoder::new(8_000, complexity, false).unwrap();
            let mut buf = [0i16; 160];
            let mut k = 0;
            b.iter(|| {
                proto::g711::ulaw_decode_into(&mulaw[k % 50], &mut buf).unwrap();
                black_box(enc.encode_frame(&buf).unwrap().len());
                k += 1;
            });
        });
    }
    let mut enc = OpusEncoder::new(8_000, 5, false).unwrap();
    let packets: Vec<Vec<u8>> = pcm.iter().map(|f| enc.encode_frame(f).unwrap().to_vec()).collect();
    c.bench_function("room→caller: Opus decode to 8k + μ-law encode", |b| {
        let mut dec = OpusDecoder::new(8_000).unwrap();
        let mut out = [0u8; 160];
        let mut k = 0;
        b.iter(|| {
            let pcm = dec.decode(&packets[k % 50]).unwrap();
            proto::g711::ulaw_encode_into(&pcm, &mut out).unwrap();
            black_box(&out);
            k += 1;
        });
    });
}

criterion_group!(benches, floor);
criterion_main!(benches);
