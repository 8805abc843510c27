//! Cost of one 20 ms frame through each codec and resampler step the bridge runs per call.
//!
//! Run: `cargo bench -p proto --bench codec -- --warm-up-time 1 --measurement-time 3`.
//! Every figure is the time for one frame (160 samples at 8 kHz, or 20 ms at the other rate).

use std::f64::consts::TAU;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use proto::g711::{
    alaw_decode_into, alaw_encode, alaw_encode_into, ulaw_decode_into, ulaw_encode,
    ulaw_encode_into,
};
use proto::resample::{chunk_len, Resampler};

/// A speech-like level 440 Hz tone, so codec tables see varied segments and not one entry.
fn tone(rate_hz: u32) -> Vec<i16> {
    (0..chunk_len(rate_hz))
        .map(|n| (8_000.0 * (TAU * 440.0 * n as f64 / f64::from(rate_hz)).sin()) as i16)
        .collect()
}

fn g711(c: &mut Criterion) {
    let pcm = tone(8_000);
    let ulaw: Vec<u8> = pcm.iter().map(|&s| ulaw_encode(s)).collect();
    let alaw: Vec<u8> = pcm.iter().map(|&s| alaw_encode(s)).collect();
    let mut pcm_out = [0i16; 160];
    let mut codes_out = [0u8; 160];

    c.bench_function("ulaw_decode_160", |b| {
        b.iter(|| ulaw_decode_into(black_box(&ulaw), black_box(&mut pcm_out)))
    });
    c.bench_function("ulaw_encode_160", |b| {
        b.iter(|| ulaw_encode_into(black_box(&pcm), black_box(&mut codes_out)))
    });
    c.bench_function("alaw_decode_160", |b| {
        b.iter(|| alaw_decode_into(black_box(&alaw), black_box(&mut pcm_out)))
    });
    c.bench_function("alaw_encode_160", |b| {
        b.iter(|| alaw_encode_into(black_box(&pcm), black_box(&mut codes_out)))
    });
}

fn resample(c: &mut Criterion) {
    for (from_hz, to_hz) in [
        (8_000, 48_000),
        (48_000, 8_000),
        (8_000, 16_000),
        (16_000, 8_000),
    ] {
        let mut resampler = Resampler::new(from_hz, to_hz).expect("supported rates");
        let input = tone(from_hz);
        let mut output = vec![0i16; resampler.output_len()];
        let name = format!("resample_{}k_to_{}k_20ms", from_hz / 1000, to_hz / 1000);
        c.bench_function(&name, |b| {
            b.iter(|| resampler.process_into(black_box(&input), black_box(&mut output)))
        });
    }
}

criterion_group!(benches, g711, resample);
criterion_main!(benches);
