//! Per-20 ms-frame cost of the non-codec media path: Twilio JSON in and out, inbound gap fill,
//! and the outbound pacer with a mark per frame.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use proto::inbound::{InboundAudio, InboundConfig};
use proto::pacer::{Output, Pacer, PacerConfig, UtteranceId};
use proto::twilio::{write_media_json, Inbound, MediaChunk};

fn pacer_frame(c: &mut Criterion) {
    // Steady state: 20 ms of audio in, one frame + mark out, the previous mark's echo back.
    c.bench_function("pacer: push+poll+echo per 20ms frame", |b| {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        let audio = [0x55u8; 160];
        let mut now = t0;
        let mut last_mark = String::with_capacity(32);
        b.iter(|| {
            p.push(UtteranceId(1), black_box(&audio));
            if !last_mark.is_empty() {
                p.handle_mark(&last_mark, now);
            }
            while let Some(o) = p.poll_output(now) {
                if let Output::Mark(m) = o {
                    use std::fmt::Write;
                    last_mark.clear();
                    let _ = write!(last_mark, "{m}");
                } else {
                    black_box(o);
                }
            }
            now += Duration::from_millis(20);
        });
    });
}

fn inbound_frame(c: &mut Criterion) {
    let media = Inbound::Media {
        sequence_number: 2,
        stream_sid: "MZ18ad3ab5a668481ce02b83e7395059f0".into(),
        media: MediaChunk { track: "inbound".into(), chunk: 1, timestamp_ms: 0, payload: vec![0x7f; 160] },
    }
    .to_json();
    c.bench_function("twilio: parse inbound media message", |b| {
        b.iter(|| black_box(Inbound::parse(black_box(&media)).unwrap()));
    });
    c.bench_function("inbound: push+poll per 20ms frame", |b| {
        let mut a = InboundAudio::new(InboundConfig::default());
        let mut chunk = MediaChunk { track: "inbound".into(), chunk: 1, timestamp_ms: 0, payload: vec![0x7f; 160] };
        b.iter(|| {
            a.push(&chunk);
            black_box(a.poll_frame());
            chunk.chunk += 1;
        });
    });
    c.bench_function("twilio: write outbound media message", |b| {
        let mut buf = String::with_capacity(512);
        let payload = [0x7fu8; 160];
        b.iter(|| {
            buf.clear();
            write_media_json("MZ18ad3ab5a668481ce02b83e7395059f0", black_box(&payload), &mut buf);
            black_box(&buf);
        });
    });
}

fn recording_and_keys(c: &mut Criterion) {
    // RECORDINGS_DIR: one caller frame in, one heard frame placed, final samples out.
    c.bench_function("recording: caller + heard frame + poll per 20ms frame", |b| {
        let t0 = Instant::now();
        let mut r = proto::recording::CallRecorder::new(t0);
        let (pcm, mulaw) = ([100i16; 160], [0x55u8; 160]);
        let mut now = t0;
        b.iter(|| {
            r.caller(black_box(&pcm));
            r.played(black_box(&mulaw), now);
            black_box(r.poll(now, Duration::from_millis(200)));
            now += Duration::from_millis(20);
        });
    });
    c.bench_function("dtmf: tones for one 20ms frame", |b| {
        let mut t = proto::dtmf::DtmfTones::new();
        let keys = proto::dtmf::parse_dial_string("1234567890*#ABCD").unwrap();
        b.iter(|| {
            if t.is_idle() {
                t.push(&keys).unwrap();
            }
            black_box(t.next_frame());
        });
    });
    c.bench_function("dtmf: detect in one 20ms frame", |b| {
        let mut d = proto::dtmf::DtmfDetector::new();
        let frame: Vec<i16> = (0..160).map(|n| ((n * 37) % 2000) as i16 - 1000).collect();
        b.iter(|| black_box(d.push(black_box(&frame))));
    });
}

criterion_group!(benches, pacer_frame, inbound_frame, recording_and_keys);
criterion_main!(benches);
