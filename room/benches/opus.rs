//! Cost of one 20 ms frame through the Opus paths `room` runs per call: encode from the rate
//! the caller has (per complexity), decode straight to the rate the consumer wants, and the
//! `DataPacket` encoding of a control message.
//!
//! Run: `cargo bench -p room --bench opus -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use room::{OpusDecoder, OpusEncoder};

fn tone(rate: u32, frame: usize) -> Vec<i16> {
    let n = (rate / 50) as usize;
    (frame * n..(frame + 1) * n)
        .map(|i| (8_000.0 * (std::f64::consts::TAU * 440.0 * i as f64 / rate as f64).sin()) as i16)
        .collect()
}

fn encode(c: &mut Criterion) {
    for rate in [8_000u32, 16_000, 48_000] {
        for complexity in [1u8, 5, 10] {
            let mut enc = OpusEncoder::new(rate, complexity, false).unwrap();
            enc.configure(None, true).unwrap();
            let frames: Vec<Vec<i16>> = (0..50).map(|f| tone(rate, f)).collect();
            let mut i = 0;
            c.bench_function(&format!("opus_encode_{}k_c{complexity}", rate / 1000), |b| {
                b.iter(|| {
                    i = (i + 1) % frames.len();
                    black_box(enc.encode_frame(black_box(&frames[i])).unwrap().len())
                })
            });
        }
    }
}

fn decode(c: &mut Criterion) {
    let mut enc = OpusEncoder::new(48_000, 5, false).unwrap();
    enc.configure(None, true).unwrap();
    let packets: Vec<Vec<u8>> = (0..50).map(|f| enc.encode_frame(&tone(48_000, f)).unwrap().to_vec()).collect();
    for rate in [8_000u32, 16_000, 48_000] {
        let mut dec = OpusDecoder::new(rate).unwrap();
        let mut i = 0;
        c.bench_function(&format!("opus_decode_to_{}k", rate / 1000), |b| {
            b.iter(|| {
                i = (i + 1) % packets.len();
                black_box(dec.decode(black_box(&packets[i])).unwrap().len())
            })
        });
    }
    let mut dec = OpusDecoder::new(8_000).unwrap();
    c.bench_function("opus_conceal_8k", |b| b.iter(|| black_box(dec.conceal().unwrap().len())));
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
