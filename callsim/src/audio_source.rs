//! The caller's voice: 20 ms frames of 160 μ-law bytes from silence, a tone, a WAV file, a raw
//! μ-law file, or audio a test injects during the call.
//!
//! WAV files may have any sample rate and channel count, as integer PCM (8/16/24/32 bit) or
//! 32-bit float. Channels are averaged to mono. A rate other than 8 kHz is converted simply:
//! a box filter (the mean of the source samples each output sample covers) when going down,
//! linear interpolation when going up. That is fine for load and for speech recognisers, not
//! for listening tests; give an 8 kHz mono PCM16 file when the exact samples matter.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// 20 ms of μ-law at 8 kHz.
pub const FRAME_BYTES: usize = 160;
/// 20 ms.
pub const FRAME: Duration = Duration::from_millis(20);
/// Stream length for silence and tones when no duration is given.
pub const DEFAULT_GENERATED: Duration = Duration::from_secs(5);
/// Most injected audio waiting to be sent (10 minutes).
pub const MAX_INJECTED: usize = 8000 * 600;
/// Peak of the generated tone (about -10 dBFS).
pub const TONE_AMPLITUDE: f64 = 10_000.0;

#[derive(Debug, Clone, PartialEq)]
pub enum AudioSpec {
    Silence,
    /// A sine at `hz`.
    Tone { hz: f32 },
    /// A WAV file (see the module docs for what is accepted).
    Wav(PathBuf),
    /// Headerless μ-law bytes at 8 kHz.
    Mulaw(PathBuf),
    /// μ-law bytes already in memory (what [`AudioSpec::load`] turns files into).
    MulawBytes(Arc<[u8]>),
    /// PCM16 8 kHz mono samples in memory.
    Pcm8k(Arc<[i16]>),
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot read WAV {path}: {source}")]
    Wav { path: PathBuf, source: hound::Error },
    #[error("WAV {path}: unsupported format ({bits}-bit {format:?})")]
    WavFormat { path: PathBuf, bits: u16, format: hound::SampleFormat },
}

impl AudioSpec {
    /// Reads any file once, so the result can be cloned cheaply into many calls.
    pub fn load(&self) -> Result<AudioSpec, AudioError> {
        Ok(match self {
            AudioSpec::Wav(path) => AudioSpec::MulawBytes(encode(&read_wav_8k(path)?).into()),
            AudioSpec::Mulaw(path) => AudioSpec::MulawBytes(
                std::fs::read(path).map_err(|source| AudioError::Io { path: path.clone(), source })?.into(),
            ),
            AudioSpec::Pcm8k(pcm) => AudioSpec::MulawBytes(encode(pcm).into()),
            other => other.clone(),
        })
    }
}

/// PCM16 to μ-law.
pub fn encode(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().map(|&s| proto::g711::ulaw_encode(s)).collect()
}

/// μ-law to PCM16.
pub fn decode(mulaw: &[u8]) -> Vec<i16> {
    mulaw.iter().map(|&b| proto::g711::ulaw_decode(b)).collect()
}

/// Reads a WAV file as 8 kHz mono PCM16.
pub fn read_wav_8k(path: &Path) -> Result<Vec<i16>, AudioError> {
    let wav_err = |source| AudioError::Wav { path: path.to_owned(), source };
    let reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<i32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ 1..=32) => {
            let shift = i32::from(bits) - 16;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| if shift >= 0 { v >> shift } else { v << -shift }))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * 32767.0) as i32))
            .collect::<Result<_, _>>()
            .map_err(wav_err)?,
        (format, bits) => return Err(AudioError::WavFormat { path: path.to_owned(), bits, format }),
    };
    let mono: Vec<i16> = interleaved
        .chunks(channels)
        .map(|c| (c.iter().map(|&v| i64::from(v)).sum::<i64>() / c.len() as i64).clamp(-32768, 32767) as i16)
        .collect();
    Ok(resample_to_8k(&mono, spec.sample_rate))
}

/// Simple rate conversion to 8 kHz (box filter down, linear interpolation up).
pub fn resample_to_8k(input: &[i16], from_hz: u32) -> Vec<i16> {
    if from_hz == 8000 || from_hz == 0 || input.is_empty() {
        return input.to_vec();
    }
    let ratio = f64::from(from_hz) / 8000.0;
    let out_len = (input.len() as u64 * 8000 / u64::from(from_hz)) as usize;
    let mut out = Vec::with_capacity(out_len);
    for i in 0..out_len {
        let start = i as f64 * ratio;
        let v = if ratio > 1.0 {
            let a = start.floor() as usize;
            let b = (((i + 1) as f64 * ratio).ceil() as usize).clamp(a + 1, input.len());
            let window = &input[a.min(input.len() - 1)..b];
            window.iter().map(|&s| i64::from(s)).sum::<i64>() as f64 / window.len() as f64
        } else {
            let a = start.floor() as usize;
            let frac = start - a as f64;
            let x0 = f64::from(input[a.min(input.len() - 1)]);
            let x1 = f64::from(input[(a + 1).min(input.len() - 1)]);
            x0 + (x1 - x0) * frac
        };
        out.push(v.round().clamp(-32768.0, 32767.0) as i16);
    }
    out
}

enum Kind {
    Silence,
    Tone { step: f64, n: u64 },
    Bytes { data: Arc<[u8]>, pos: usize },
}

/// Produces the call's frames, one per 20 ms.
pub struct AudioSource {
    kind: Kind,
    injected: VecDeque<u8>,
    total_frames: u64,
    emitted: u64,
}

impl AudioSource {
    /// `spec` should already be [`AudioSpec::load`]ed (files are read here otherwise).
    pub fn new(spec: &AudioSpec, duration: Option<Duration>) -> Result<AudioSource, AudioError> {
        let loaded = spec.load()?;
        let (kind, natural) = match loaded {
            AudioSpec::Silence => (Kind::Silence, DEFAULT_GENERATED),
            AudioSpec::Tone { hz } => {
                (Kind::Tone { step: std::f64::consts::TAU * f64::from(hz) / 8000.0, n: 0 }, DEFAULT_GENERATED)
            }
            AudioSpec::MulawBytes(data) => {
                let natural = Duration::from_micros(data.len() as u64 * 125);
                (Kind::Bytes { data, pos: 0 }, natural)
            }
            AudioSpec::Wav(_) | AudioSpec::Mulaw(_) | AudioSpec::Pcm8k(_) => unreachable!("load() converts these"),
        };
        let d = duration.unwrap_or(natural);
        let total_frames = d.as_micros().div_ceil(FRAME.as_micros()) as u64;
        Ok(AudioSource { kind, injected: VecDeque::new(), total_frames, emitted: 0 })
    }

    /// Frames the stream will carry (it ends after the last one).
    pub fn total_frames(&self) -> u64 {
        self.total_frames
    }

    /// Queues μ-law audio to go out ahead of the configured source (bounded; excess dropped).
    /// Returns how many bytes were accepted.
    pub fn inject(&mut self, mulaw: &[u8]) -> usize {
        let take = mulaw.len().min(MAX_INJECTED.saturating_sub(self.injected.len()));
        self.injected.extend(&mulaw[..take]);
        take
    }

    /// Fills the next frame; `false` when the stream is over.
    pub fn next_frame(&mut self, out: &mut [u8; FRAME_BYTES]) -> bool {
        if self.emitted >= self.total_frames {
            return false;
        }
        self.emitted += 1;
        for b in out.iter_mut() {
            // The configured source keeps running under injected audio, so the file or tone
            // carries on in time afterwards.
            let base = match &mut self.kind {
                Kind::Silence => 0xFF,
                Kind::Tone { step, n } => {
                    let v = (TONE_AMPLITUDE * (*step * *n as f64).sin()).round() as i16;
                    *n += 1;
                    proto::g711::ulaw_encode(v)
                }
                Kind::Bytes { data, pos } => {
                    let v = data.get(*pos).copied().unwrap_or(0xFF);
                    *pos += 1;
                    v
                }
            };
            *b = self.injected.pop_front().unwrap_or(base);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(src: &mut AudioSource) -> Vec<[u8; FRAME_BYTES]> {
        let mut out = Vec::new();
        let mut f = [0u8; FRAME_BYTES];
        while src.next_frame(&mut f) {
            out.push(f);
        }
        out
    }

    #[test]
    fn durations_round_up_to_frames() {
        let mut s = AudioSource::new(&AudioSpec::Silence, Some(Duration::from_millis(1010))).unwrap();
        assert_eq!(s.total_frames(), 51);
        assert_eq!(frames(&mut s).len(), 51);
        assert_eq!(AudioSource::new(&AudioSpec::Silence, None).unwrap().total_frames(), 250);
    }

    #[test]
    fn bytes_end_with_the_file_and_pad_the_last_frame() {
        let data: Arc<[u8]> = (0..200u32).map(|i| i as u8).collect::<Vec<_>>().into();
        let mut s = AudioSource::new(&AudioSpec::MulawBytes(data), None).unwrap();
        let f = frames(&mut s);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1][39], 199);
        assert!(f[1][40..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn tone_is_a_sine_and_injection_goes_first() {
        let mut s = AudioSource::new(&AudioSpec::Tone { hz: 1000.0 }, Some(Duration::from_millis(60))).unwrap();
        assert_eq!(s.inject(&[0x42; 200]), 200);
        let f = frames(&mut s);
        assert!(f[0].iter().all(|&b| b == 0x42));
        assert!(f[1][..40].iter().all(|&b| b == 0x42));
        // 1 kHz at 8 kHz: period of 8 samples; samples 2 and 6 are the peaks.
        let pcm = decode(&f[2]);
        assert!(pcm[2] > 9000 && pcm[6] < -9000, "{:?}", &pcm[..8]);
    }

    #[test]
    fn resampling_keeps_length_and_level() {
        let input: Vec<i16> = vec![1000; 48_000];
        let out = resample_to_8k(&input, 48_000);
        assert_eq!(out.len(), 8000);
        assert!(out.iter().all(|&s| s == 1000));
        let up = resample_to_8k(&[0, 100, 200, 300], 4000);
        assert_eq!(up, vec![0, 50, 100, 150, 200, 250, 300, 300]);
        let odd = resample_to_8k(&vec![-5; 44_100], 44_100);
        assert_eq!(odd.len(), 8000);
        assert!(odd.iter().all(|&s| s == -5));
    }

    #[test]
    fn wav_files_of_any_rate_and_channels_load() {
        let dir = std::env::temp_dir().join(format!("callsim-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stereo16k.wav");
        let spec = hound::WavSpec { channels: 2, sample_rate: 16_000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..16_000 {
            w.write_sample(2000i16).unwrap();
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        let pcm = read_wav_8k(&path).unwrap();
        assert_eq!(pcm.len(), 8000);
        assert!(pcm.iter().all(|&s| s == 1000));
        assert!(matches!(AudioSpec::Wav(dir.join("missing.wav")).load(), Err(AudioError::Wav { .. })));
        std::fs::write(dir.join("junk.wav"), b"not a wav").unwrap();
        assert!(AudioSpec::Wav(dir.join("junk.wav")).load().is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
