//! Speech or not, on a small labelled set, for both detectors: espeak-ng speech (two voices,
//! direct and through the 8 kHz μ-law phone path) against noise bursts, mains hum, breath, DTMF
//! tones and silence. A clip counts as speech when the detector starts speech in it. Prints the
//! table docs/perf.md quotes (`cargo test -p agent --test vad_accuracy -- --nocapture`).

use agent::providers::offline_tts::OfflineTts;
use agent::vad::{Detector, VadConfig};

const RATE: u32 = 16_000;

fn cfg() -> VadConfig {
    VadConfig::from_turn(&agent::config::AgentSpec::load(None).unwrap().turn)
}

fn silence(ms: u32) -> Vec<i16> {
    vec![0; (RATE * ms / 1000) as usize]
}

/// Deterministic white noise at `dbfs`.
fn noise(ms: u32, dbfs: f32, seed: u64) -> Vec<i16> {
    let amp = 32768.0 * 10f32.powf(dbfs / 20.0) * 1.7;
    let mut x = seed;
    (0..RATE * ms / 1000)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((x >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * amp) as i16
        })
        .collect()
}

/// Breath: noise through a one-pole low-pass, quiet.
fn breath(ms: u32) -> Vec<i16> {
    let mut y = 0.0f32;
    noise(ms, -20.0, 7).into_iter().map(|s| {
        y += 0.05 * (s as f32 - y);
        y as i16
    }).collect()
}

fn tones(ms: u32, freqs: &[(f32, f32)]) -> Vec<i16> {
    (0..RATE * ms / 1000)
        .map(|i| {
            let t = i as f32 / RATE as f32;
            freqs.iter().map(|(f, a)| a * (2.0 * std::f32::consts::PI * f * t).sin()).sum::<f32>() as i16
        })
        .collect()
}

/// Mains hum: 50 Hz and its harmonics.
fn hum(ms: u32) -> Vec<i16> {
    tones(ms, &[(50.0, 4000.0), (100.0, 2000.0), (150.0, 1500.0), (250.0, 800.0)])
}

/// DTMF "159": 100 ms tone, 70 ms gap each.
fn dtmf() -> Vec<i16> {
    let mut out = Vec::new();
    for (lo, hi) in [(697.0, 1209.0), (770.0, 1336.0), (852.0, 1477.0)] {
        out.extend(tones(100, &[(lo, 6000.0), (hi, 6000.0)]));
        out.extend(silence(70));
    }
    out
}

/// 16 kHz → 8 kHz μ-law → 16 kHz, as a phone call carries it.
fn through_phone(pcm: &[i16]) -> Vec<i16> {
    let mut down = proto::resample::Resampler::new(16_000, 8_000).unwrap();
    let mut up = proto::resample::Resampler::new(8_000, 16_000).unwrap();
    let mut mid = Vec::new();
    for c in pcm.chunks(down.input_len()) {
        let mut c = c.to_vec();
        c.resize(down.input_len(), 0);
        down.process(&c, &mut mid).unwrap();
    }
    let mid: Vec<i16> = mid.iter().map(|&s| proto::g711::ulaw_decode(proto::g711::ulaw_encode(s))).collect();
    let mut out = Vec::new();
    for c in mid.chunks(up.input_len()) {
        let mut c = c.to_vec();
        c.resize(up.input_len(), 0);
        up.process(&c, &mut out).unwrap();
    }
    out
}

/// Does the detector start speech in `clip` (with half a second of silence around it)?
fn detects(d: &Detector, clip: &[i16]) -> bool {
    let mut vad = d.make(cfg());
    let mut audio = silence(500);
    audio.extend_from_slice(clip);
    audio.extend(silence(800));
    let mut started = false;
    for f in audio.chunks(320) {
        if let Some(agent::vad::VadEvent::SpeechStart { .. }) = vad.push(f, RATE) {
            started = true;
        }
    }
    started
}

#[tokio::test]
async fn silero_tells_speech_from_noise_better_than_energy() {
    let model = std::env::var("SILERO_VAD_MODEL").ok().map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(agent::vad::silero::DEFAULT_MODEL)
    });
    let silero = match Detector::choose("silero", Some(model)) {
        Ok(d) => d,
        Err(e) => {
            assert!(std::env::var("AGENT_REQUIRE_MODELS_SILERO").as_deref() != Ok("1"), "{e}");
            eprintln!("skipped: {e} (scripts/models.sh silero)");
            return;
        }
    };
    let mut clips: Vec<(String, bool, Vec<i16>)> = Vec::new();
    let lines = ["my name is john", "it happened in the warehouse", "there was a fire", "it is critical", "yes"];
    for voice in ["en-us+m3", "en-us+f2"] {
        let tts = OfflineTts::new(voice, 150, RATE);
        for l in lines {
            let pcm = tts.synthesize(l).await.unwrap();
            clips.push((format!("speech {voice} {l:?}"), true, through_phone(&pcm)));
            clips.push((format!("speech {voice} {l:?} direct"), true, pcm));
        }
    }
    for (db, seed) in [(-30.0, 1), (-20.0, 2), (-10.0, 3)] {
        clips.push((format!("noise burst 500 ms {db} dBFS"), false, noise(500, db, seed)));
        clips.push((format!("noise burst 1.5 s {db} dBFS"), false, noise(1500, db, seed + 10)));
    }
    clips.push(("door slam (noise 150 ms, -6 dBFS)".into(), false, noise(150, -6.0, 5)));
    clips.push(("mains hum 2 s".into(), false, hum(2000)));
    clips.push(("breath 1 s".into(), false, breath(1000)));
    clips.push(("DTMF 1-5-9".into(), false, dtmf()));
    clips.push(("DTMF 1-5-9 through the phone".into(), false, through_phone(&dtmf())));
    clips.push(("silence".into(), false, silence(1000)));

    let energy = Detector::Energy;
    let mut right = [0usize; 2];
    let mut speech_hits = [0usize; 2];
    let mut noise_hits = [0usize; 2];
    let speech_n = clips.iter().filter(|c| c.1).count();
    let noise_n = clips.len() - speech_n;
    eprintln!("| clip | speech? | Silero | energy |\n|---|---|---|---|");
    for (name, is_speech, pcm) in &clips {
        let got = [detects(&silero, pcm), detects(&energy, pcm)];
        for k in 0..2 {
            right[k] += (got[k] == *is_speech) as usize;
            if *is_speech {
                speech_hits[k] += got[k] as usize;
            } else {
                noise_hits[k] += got[k] as usize;
            }
        }
        let yn = |b: bool| if b { "speech" } else { "-" };
        eprintln!("| {name} | {} | {} | {} |", yn(*is_speech), yn(got[0]), yn(got[1]));
    }
    eprintln!(
        "\nSilero: {}/{} right (speech found {}/{speech_n}, non-speech called speech {}/{noise_n}); energy: {}/{} right (speech {}/{speech_n}, non-speech called speech {}/{noise_n})",
        right[0], clips.len(), speech_hits[0], noise_hits[0], right[1], clips.len(), speech_hits[1], noise_hits[1]
    );
    // Silero hears every line and takes no noise, hum, breath or tone for speech.
    assert_eq!(speech_hits[0], speech_n, "Silero missed speech");
    assert!(noise_hits[0] <= 1, "Silero called {} non-speech clips speech", noise_hits[0]);
    assert!(right[0] > right[1], "Silero is no better than the energy detector");
}
