//! Mono resampling of 20 ms chunks between the phone side (8 kHz μ-law) and the room side
//! (16/24/48 kHz), built on rubato's FFT resampler.
//!
//! A [`Resampler`] is one direction of one call's audio. It keeps the filter state across
//! chunks, so consecutive chunks join without a seam, and it owns every buffer it needs: after
//! [`Resampler::new`] no call allocates (except [`Resampler::process`] growing the caller's
//! `Vec` when its capacity is short).
//!
//! `rubato::Fft` with `FixedSync::Both` turns exactly one 20 ms chunk in into one 20 ms chunk
//! out (160 ↔ 960 samples for 8 ↔ 48 kHz) and delays the signal by half its FFT block, which
//! [`Resampler::delay_samples`] reports in output samples (10 ms per step). Equal rates copy
//! through with no delay, so callers need no special case. Rubato works in `f32`; the `i16`
//! entry points convert at the edges with rounding and saturation.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::audioadapter_buffers::SizeError;
use rubato::{Fft, FixedSync, Resampler as _};
use thiserror::Error;

/// Length of every chunk a [`Resampler`] takes and returns.
pub const CHUNK_MS: u32 = 20;

/// Sample rates a [`Resampler`] accepts on either side: G.711 telephony and the usual
/// WebRTC/TTS/STT rates. Every pair among them, in either direction, is supported.
pub const SUPPORTED_RATES_HZ: [u32; 4] = [8_000, 16_000, 24_000, 48_000];

const CHUNKS_PER_SECOND: u32 = 1000 / CHUNK_MS;
const I16_SCALE: f32 = 32_768.0;

/// Samples in one 20 ms chunk at `rate_hz`.
pub const fn chunk_len(rate_hz: u32) -> usize {
    (rate_hz / CHUNKS_PER_SECOND) as usize
}

#[derive(Debug, Error)]
pub enum ResampleError {
    #[error("unsupported sample rate {rate_hz} Hz (supported: 8000, 16000, 24000, 48000)")]
    UnsupportedRate { rate_hz: u32 },
    #[error("input chunk has {actual} samples, expected {expected} (20 ms at the input rate)")]
    WrongInputLength { expected: usize, actual: usize },
    #[error("output buffer holds {available} samples, the chunk needs {needed}")]
    OutputTooShort { needed: usize, available: usize },
    /// Rubato chose block sizes that are not one 20 ms chunk; a guard, not expected to happen.
    #[error("rubato chose {input_len} -> {output_len} samples per chunk, not 20 ms")]
    UnexpectedChunkSize { input_len: usize, output_len: usize },
    #[error("rubato construction: {0}")]
    Construction(#[from] rubato::ResamplerConstructionError),
    #[error("rubato processing: {0}")]
    Processing(#[from] rubato::ResampleError),
    #[error("rubato buffer adapter: {0}")]
    Buffer(#[from] SizeError),
}

/// One direction of one call's audio: 20 ms mono chunks from `from_hz` to `to_hz`.
#[derive(Debug)]
pub struct Resampler {
    from_hz: u32,
    to_hz: u32,
    input_len: usize,
    output_len: usize,
    /// `None` when both rates are equal: chunks are copied through unchanged.
    engine: Option<Fft<f32>>,
    /// Scratch for the `i16` entry points, sized once to one chunk each.
    input_f32: Vec<f32>,
    output_f32: Vec<f32>,
}

impl Resampler {
    /// Build a resampler for 20 ms chunks; both rates must be in [`SUPPORTED_RATES_HZ`].
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, ResampleError> {
        for rate_hz in [from_hz, to_hz] {
            if !SUPPORTED_RATES_HZ.contains(&rate_hz) {
                return Err(ResampleError::UnsupportedRate { rate_hz });
            }
        }
        let input_len = chunk_len(from_hz);
        let output_len = chunk_len(to_hz);
        let engine = if from_hz == to_hz {
            None
        } else {
            let engine = Fft::<f32>::new(
                from_hz as usize,
                to_hz as usize,
                input_len,
                1,
                FixedSync::Both,
            )?;
            if engine.input_frames_next() != input_len || engine.output_frames_next() != output_len
            {
                return Err(ResampleError::UnexpectedChunkSize {
                    input_len: engine.input_frames_next(),
                    output_len: engine.output_frames_next(),
                });
            }
            Some(engine)
        };
        Ok(Self {
            from_hz,
            to_hz,
            input_len,
            output_len,
            engine,
            input_f32: vec![0.0; input_len],
            output_f32: vec![0.0; output_len],
        })
    }

    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Samples every input chunk must have (20 ms at `from_hz`).
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Samples every call produces (20 ms at `to_hz`).
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// How far the output lags the input, in output samples: output sample `n` corresponds to
    /// input time `(n - delay_samples()) / to_hz`. The first chunks carry this much warm-up.
    pub fn delay_samples(&self) -> usize {
        self.engine
            .as_ref()
            .map_or(0, |engine| engine.output_delay())
    }

    /// Forget all history, as if newly built (e.g. after a `clear` or a stream restart).
    pub fn reset(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            engine.reset();
        }
    }

    /// Resample one chunk of exactly [`input_len`](Self::input_len) samples into the start of
    /// `output`, which must hold at least [`output_len`](Self::output_len) samples. Returns the
    /// number written. On error nothing is written and the state is unchanged.
    pub fn process_into(
        &mut self,
        input: &[i16],
        output: &mut [i16],
    ) -> Result<usize, ResampleError> {
        self.check_lengths(input.len(), output.len())?;
        for (scaled, &sample) in self.input_f32.iter_mut().zip(input) {
            *scaled = f32::from(sample) / I16_SCALE;
        }
        run_chunk(self.engine.as_mut(), &self.input_f32, &mut self.output_f32)?;
        for (sample, &value) in output.iter_mut().zip(&self.output_f32) {
            *sample = to_i16(value);
        }
        Ok(self.output_len)
    }

    /// Resample one chunk and append the result to `output`. Returns the number appended.
    /// On error `output` is left as it was.
    pub fn process(
        &mut self,
        input: &[i16],
        output: &mut Vec<i16>,
    ) -> Result<usize, ResampleError> {
        // Check first so a bad chunk never grows the caller's buffer.
        self.check_lengths(input.len(), self.output_len)?;
        let start = output.len();
        output.resize(start + self.output_len, 0);
        let result = self.process_into(input, &mut output[start..]);
        if result.is_err() {
            output.truncate(start);
        }
        result
    }

    /// `f32` variant of [`process_into`](Self::process_into), for samples in -1.0..=1.0.
    /// Values outside that range are clipped and NaN counts as silence: rubato's inverse FFT
    /// panics on NaN, and one NaN would otherwise poison every later chunk.
    pub fn process_f32_into(
        &mut self,
        input: &[f32],
        output: &mut [f32],
    ) -> Result<usize, ResampleError> {
        self.check_lengths(input.len(), output.len())?;
        for (sanitized, &value) in self.input_f32.iter_mut().zip(input) {
            *sanitized = if value.is_nan() {
                0.0
            } else {
                value.clamp(-1.0, 1.0)
            };
        }
        run_chunk(
            self.engine.as_mut(),
            &self.input_f32,
            &mut output[..self.output_len],
        )?;
        Ok(self.output_len)
    }

    fn check_lengths(&self, input_len: usize, output_capacity: usize) -> Result<(), ResampleError> {
        if input_len != self.input_len {
            return Err(ResampleError::WrongInputLength {
                expected: self.input_len,
                actual: input_len,
            });
        }
        if output_capacity < self.output_len {
            return Err(ResampleError::OutputTooShort {
                needed: self.output_len,
                available: output_capacity,
            });
        }
        Ok(())
    }
}

/// Run one chunk through rubato (or copy it when the rates match). Lengths are already checked:
/// `input` is one input chunk and `output` exactly one output chunk.
fn run_chunk(
    engine: Option<&mut Fft<f32>>,
    input: &[f32],
    output: &mut [f32],
) -> Result<(), ResampleError> {
    let Some(engine) = engine else {
        output.copy_from_slice(input);
        return Ok(());
    };
    let input_adapter = InterleavedSlice::new(input, 1, input.len())?;
    let output_frames = output.len();
    let mut output_adapter = InterleavedSlice::new_mut(output, 1, output_frames)?;
    engine.process_into_buffer(&input_adapter, &mut output_adapter, None)?;
    Ok(())
}

/// Round half away from zero and saturate; `as` maps NaN to 0 and clamps out-of-range values.
fn to_i16(value: f32) -> i16 {
    let scaled = value * I16_SCALE;
    // Adding ±0.5 and truncating avoids a libm `roundf` call on baseline x86-64.
    (scaled + 0.5f32.copysign(scaled)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;

    const TONE_HZ: f64 = 1_000.0;
    const TONE_AMPLITUDE: f64 = 16_384.0;
    /// One second of audio per test: long enough for a stable SNR, short enough to stay fast.
    const TEST_CHUNKS: usize = 50;
    /// Chunks skipped before measuring, covering every delay here (at most 20 ms) twice over.
    const WARM_UP_CHUNKS: usize = 3;

    /// Whether the test driver keeps the resampler's history between chunks. `ResetEachChunk`
    /// is the negative control: it shows each check below would catch lost state.
    #[derive(Clone, Copy, PartialEq)]
    enum History {
        Kept,
        ResetEachChunk,
    }

    /// A continuous sine at `tone_hz` starting at `phase` (radians), sampled at `rate_hz`
    /// and shifted later by `delay_samples`.
    fn tone_at(rate_hz: u32, tone_hz: f64, phase: f64, len: usize, delay_samples: f64) -> Vec<f64> {
        (0..len)
            .map(|n| {
                let seconds = (n as f64 - delay_samples) / f64::from(rate_hz);
                TONE_AMPLITUDE * (TAU * tone_hz * seconds + phase).sin()
            })
            .collect()
    }

    /// The 1 kHz test tone.
    fn tone(rate_hz: u32, len: usize, delay_samples: f64) -> Vec<f64> {
        tone_at(rate_hz, TONE_HZ, 0.0, len, delay_samples)
    }

    fn to_pcm(signal: &[f64]) -> Vec<i16> {
        signal.iter().map(|&value| value.round() as i16).collect()
    }

    /// Feed `input` chunk by chunk and return the concatenated output.
    fn run(resampler: &mut Resampler, input: &[i16], history: History) -> Vec<i16> {
        let mut output = Vec::new();
        for chunk in input.chunks_exact(resampler.input_len()) {
            if history == History::ResetEachChunk {
                resampler.reset();
            }
            resampler.process(chunk, &mut output).expect("valid chunk");
        }
        output
    }

    /// SNR in dB of `actual` against `expected`, both from index `skip` on.
    fn snr_db(expected: &[f64], actual: &[i16], skip: usize) -> f64 {
        let mut signal_energy = 0.0;
        let mut noise_energy = 0.0;
        for (&want, &got) in expected.iter().zip(actual).skip(skip) {
            signal_energy += want * want;
            noise_energy += (f64::from(got) - want).powi(2);
        }
        10.0 * (signal_energy / noise_energy.max(f64::MIN_POSITIVE)).log10()
    }

    /// 8 kHz tone → `mid_hz` → 8 kHz, compared with the input shifted by both reported delays.
    fn round_trip_snr_db(mid_hz: u32, history: History) -> f64 {
        let mut up = Resampler::new(8_000, mid_hz).unwrap();
        let mut down = Resampler::new(mid_hz, 8_000).unwrap();
        let input = to_pcm(&tone(8_000, chunk_len(8_000) * TEST_CHUNKS, 0.0));
        let middle = run(&mut up, &input, history);
        let output = run(&mut down, &middle, history);

        let ratio = (mid_hz / 8_000) as usize;
        // The upsampler's delay is a whole number of 8 kHz samples for every supported rate.
        assert_eq!(up.delay_samples() % ratio, 0);
        let total_delay = up.delay_samples() / ratio + down.delay_samples();
        let expected = tone(8_000, output.len(), total_delay as f64);
        snr_db(&expected, &output, WARM_UP_CHUNKS * chunk_len(8_000))
    }

    /// One direction, compared with the analytic tone at the output rate shifted by the delay.
    fn one_way_snr_db(from_hz: u32, to_hz: u32, history: History) -> f64 {
        let mut resampler = Resampler::new(from_hz, to_hz).unwrap();
        let input = to_pcm(&tone(from_hz, chunk_len(from_hz) * TEST_CHUNKS, 0.0));
        let output = run(&mut resampler, &input, history);
        let expected = tone(to_hz, output.len(), resampler.delay_samples() as f64);
        snr_db(&expected, &output, WARM_UP_CHUNKS * chunk_len(to_hz))
    }

    /// Tones for the continuity check. At 1 kHz every boundary falls on the same phase of the
    /// tone, so it runs twice: boundaries on a zero crossing (steepest step) and on a peak
    /// (where a seam shows most); 440 Hz walks the boundaries through five phases.
    const CONTINUITY_TONES: [(f64, f64); 3] = [(1_000.0, 0.0), (1_000.0, TAU / 4.0), (440.0, 0.0)];

    /// Largest |Δ| between the last sample of a chunk and the first of the next, and largest
    /// |Δ| between neighbours inside a chunk, both after warm-up.
    fn boundary_and_inside_steps(
        from_hz: u32,
        to_hz: u32,
        (tone_hz, phase): (f64, f64),
        history: History,
    ) -> (i32, i32) {
        let mut resampler = Resampler::new(from_hz, to_hz).unwrap();
        let input_len = chunk_len(from_hz) * TEST_CHUNKS;
        let input = to_pcm(&tone_at(from_hz, tone_hz, phase, input_len, 0.0));
        let output = run(&mut resampler, &input, history);
        let chunk = chunk_len(to_hz);
        let mut max_boundary_step = 0;
        let mut max_inside_step = 0;
        for index in WARM_UP_CHUNKS * chunk + 1..output.len() {
            let step = (i32::from(output[index]) - i32::from(output[index - 1])).abs();
            if index % chunk == 0 {
                max_boundary_step = max_boundary_step.max(step);
            } else {
                max_inside_step = max_inside_step.max(step);
            }
        }
        (max_boundary_step, max_inside_step)
    }

    #[test]
    fn chunk_sizes_and_delays_for_supported_pairs() {
        let cases = [
            (8_000, 48_000, 160, 960),
            (48_000, 8_000, 960, 160),
            (8_000, 16_000, 160, 320),
            (16_000, 8_000, 320, 160),
            (8_000, 24_000, 160, 480),
            (24_000, 8_000, 480, 160),
            (16_000, 48_000, 320, 960),
            (8_000, 8_000, 160, 160),
        ];
        for (from_hz, to_hz, input_len, output_len) in cases {
            let resampler = Resampler::new(from_hz, to_hz).unwrap();
            assert_eq!(resampler.from_hz(), from_hz);
            assert_eq!(resampler.to_hz(), to_hz);
            assert_eq!(resampler.input_len(), input_len, "{from_hz}->{to_hz}");
            assert_eq!(resampler.output_len(), output_len, "{from_hz}->{to_hz}");
            // Half a chunk (10 ms) of delay in every resampling direction, none when copying.
            let expected_delay = if from_hz == to_hz { 0 } else { output_len / 2 };
            assert_eq!(
                resampler.delay_samples(),
                expected_delay,
                "{from_hz}->{to_hz}"
            );
        }
    }

    #[test]
    fn unsupported_rates_are_typed_errors() {
        for (from_hz, to_hz, bad_hz) in [
            (44_100, 8_000, 44_100),
            (8_000, 0, 0),
            (8_000, 11_025, 11_025),
        ] {
            match Resampler::new(from_hz, to_hz) {
                Err(ResampleError::UnsupportedRate { rate_hz }) => assert_eq!(rate_hz, bad_hz),
                other => panic!("{from_hz}->{to_hz}: {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors_and_change_nothing() {
        let mut resampler = Resampler::new(8_000, 48_000).unwrap();
        let mut output = vec![7i16; 960];
        for bad_len in [0, 159, 161, 960] {
            let result = resampler.process_into(&vec![1_000; bad_len], &mut output);
            assert!(
                matches!(result, Err(ResampleError::WrongInputLength { expected: 160, actual }) if actual == bad_len),
                "{result:?}"
            );
        }
        let result = resampler.process_into(&[1_000; 160], &mut output[..959]);
        assert!(matches!(
            result,
            Err(ResampleError::OutputTooShort {
                needed: 960,
                available: 959
            })
        ));
        assert!(output.iter().all(|&sample| sample == 7));

        let mut appended = vec![5i16; 3];
        assert!(resampler.process(&[0; 10], &mut appended).is_err());
        assert_eq!(appended, [5, 5, 5]);

        let mut output_f32 = [0.0f32; 960];
        assert!(resampler
            .process_f32_into(&[0.0; 161], &mut output_f32)
            .is_err());
        assert!(resampler
            .process_f32_into(&[0.0; 160], &mut output_f32[..100])
            .is_err());

        // The rejected calls did not feed the filter: output equals a fresh resampler's.
        let input = to_pcm(&tone(8_000, 160 * 4, 0.0));
        let after_errors = run(&mut resampler, &input, History::Kept);
        let fresh = run(
            &mut Resampler::new(8_000, 48_000).unwrap(),
            &input,
            History::Kept,
        );
        assert_eq!(after_errors, fresh);
    }

    #[test]
    fn process_appends_and_into_writes_only_one_chunk() {
        let mut resampler = Resampler::new(8_000, 16_000).unwrap();
        let mut appended = vec![9i16; 2];
        assert_eq!(resampler.process(&[0; 160], &mut appended).unwrap(), 320);
        assert_eq!(appended.len(), 322);
        assert_eq!(appended[..2], [9, 9]);

        let mut larger = vec![9i16; 400];
        assert_eq!(resampler.process_into(&[0; 160], &mut larger).unwrap(), 320);
        assert!(larger[320..].iter().all(|&sample| sample == 9));
    }

    #[test]
    fn tone_round_trip_through_48k_keeps_40_db_snr() {
        let snr = round_trip_snr_db(48_000, History::Kept);
        assert!(snr >= 40.0, "8k->48k->8k SNR {snr:.1} dB");
    }

    #[test]
    fn tone_round_trip_through_16k_keeps_40_db_snr() {
        let snr = round_trip_snr_db(16_000, History::Kept);
        assert!(snr >= 40.0, "8k->16k->8k SNR {snr:.1} dB");
    }

    #[test]
    fn tone_round_trip_through_24k_keeps_40_db_snr() {
        let snr = round_trip_snr_db(24_000, History::Kept);
        assert!(snr >= 40.0, "8k->24k->8k SNR {snr:.1} dB");
    }

    const ONE_WAY_DIRECTIONS: [(u32, u32); 6] = [
        (8_000, 48_000),
        (48_000, 8_000),
        (8_000, 16_000),
        (16_000, 8_000),
        (8_000, 24_000),
        (24_000, 8_000),
    ];

    #[test]
    fn each_direction_matches_the_ideal_tone_at_the_reported_delay() {
        for (from_hz, to_hz) in ONE_WAY_DIRECTIONS {
            let snr = one_way_snr_db(from_hz, to_hz, History::Kept);
            assert!(snr >= 40.0, "{from_hz}->{to_hz} SNR {snr:.1} dB");
        }
    }

    #[test]
    fn reported_delay_is_the_best_alignment_for_a_non_periodic_signal() {
        // A 1 kHz tone repeats every 8 samples at 8 kHz, so it cannot tell a delay from the
        // same delay ± 8. Pseudo-random noise has a single best alignment.
        let mut state = 0x2545_F491_u32;
        let noise: Vec<i16> = (0..chunk_len(8_000) * TEST_CHUNKS)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((state >> 16) as i16) / 4
            })
            .collect();
        let mut up = Resampler::new(8_000, 48_000).unwrap();
        let mut down = Resampler::new(48_000, 8_000).unwrap();
        let output = run(
            &mut down,
            &run(&mut up, &noise, History::Kept),
            History::Kept,
        );
        let reported = up.delay_samples() / 6 + down.delay_samples();

        let skip = WARM_UP_CHUNKS * chunk_len(8_000);
        let error_at_lag = |lag: usize| -> f64 {
            (skip..output.len())
                .map(|n| (f64::from(output[n]) - f64::from(noise[n - lag])).powi(2))
                .sum()
        };
        let best_lag = (0..=skip)
            .min_by(|&a, &b| error_at_lag(a).total_cmp(&error_at_lag(b)))
            .unwrap();
        assert_eq!(best_lag, reported);
    }

    const CONTINUITY_DIRECTIONS: [(u32, u32); 4] = [
        (8_000, 48_000),
        (48_000, 8_000),
        (8_000, 16_000),
        (8_000, 24_000),
    ];

    /// Allowance for i16 rounding: both maxima are samples of the same smooth curve, so they
    /// may differ by a rounding step even with a perfect join. A seam is thousands of LSBs.
    const ROUNDING_SLACK: i32 = 2;

    #[test]
    fn no_jump_at_chunk_boundaries() {
        for (from_hz, to_hz) in CONTINUITY_DIRECTIONS {
            for tone in CONTINUITY_TONES {
                let (boundary, inside) =
                    boundary_and_inside_steps(from_hz, to_hz, tone, History::Kept);
                assert!(
                    boundary <= inside + ROUNDING_SLACK,
                    "{from_hz}->{to_hz} {tone:?}: boundary step {boundary} > inside step {inside}"
                );
            }
        }
    }

    #[test]
    fn checks_above_fail_if_history_is_lost_between_chunks() {
        // Negative control for the SNR, delay and continuity tests: the same drivers with a
        // reset before each chunk must fail those tests' thresholds.
        for mid_hz in [16_000, 24_000, 48_000] {
            let snr = round_trip_snr_db(mid_hz, History::ResetEachChunk);
            assert!(
                snr < 40.0,
                "8k->{mid_hz}->8k still {snr:.1} dB without history"
            );
        }
        for (from_hz, to_hz) in ONE_WAY_DIRECTIONS {
            let snr = one_way_snr_db(from_hz, to_hz, History::ResetEachChunk);
            assert!(
                snr < 40.0,
                "{from_hz}->{to_hz} still {snr:.1} dB without history"
            );
        }
        for (from_hz, to_hz) in CONTINUITY_DIRECTIONS {
            let seam_found = CONTINUITY_TONES.into_iter().any(|tone| {
                let (boundary, inside) =
                    boundary_and_inside_steps(from_hz, to_hz, tone, History::ResetEachChunk);
                boundary > inside + ROUNDING_SLACK
            });
            assert!(
                seam_found,
                "{from_hz}->{to_hz}: no seam found without history"
            );
        }
    }

    #[test]
    fn reset_restores_the_fresh_state() {
        let input = to_pcm(&tone(8_000, 160 * 4, 0.0));
        let mut resampler = Resampler::new(8_000, 48_000).unwrap();
        let first = run(&mut resampler, &input, History::Kept);
        resampler.reset();
        let second = run(&mut resampler, &input, History::Kept);
        assert_eq!(first, second);
    }

    #[test]
    fn f32_and_i16_paths_agree() {
        let input = to_pcm(&tone(8_000, 160 * 6, 0.0));
        let mut via_i16 = Resampler::new(8_000, 48_000).unwrap();
        let mut via_f32 = Resampler::new(8_000, 48_000).unwrap();
        let mut output_f32 = [0.0f32; 960];
        let mut output_i16 = [0i16; 960];
        for chunk in input.chunks_exact(160) {
            let chunk_f32: Vec<f32> = chunk.iter().map(|&s| f32::from(s) / I16_SCALE).collect();
            via_f32
                .process_f32_into(&chunk_f32, &mut output_f32)
                .unwrap();
            via_i16.process_into(chunk, &mut output_i16).unwrap();
            for (&as_f32, &as_i16) in output_f32.iter().zip(&output_i16) {
                assert_eq!(to_i16(as_f32), as_i16);
            }
        }
    }

    #[test]
    fn resampler_can_move_into_a_call_task() {
        fn assert_send<T: Send>() {}
        assert_send::<Resampler>();
    }

    #[test]
    fn equal_rates_copy_through() {
        let mut resampler = Resampler::new(8_000, 8_000).unwrap();
        let input: Vec<i16> = (0..160).map(|n| n * 100 - 8_000).collect();
        let mut output = Vec::new();
        resampler.process(&input, &mut output).unwrap();
        assert_eq!(output, input);
    }

    #[test]
    fn full_scale_and_non_finite_input_saturate_without_panicking() {
        let mut resampler = Resampler::new(8_000, 48_000).unwrap();
        let mut output = [0i16; 960];
        let square: Vec<i16> = (0..160)
            .map(|n| if n % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        for _ in 0..3 {
            resampler.process_into(&square, &mut output).unwrap();
        }
        let mut output_f32 = [0.0f32; 960];
        let hostile = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -1e30,
            2.0,
        ];
        for value in hostile {
            resampler
                .process_f32_into(&[value; 160], &mut output_f32)
                .unwrap();
            assert!(
                output_f32.iter().all(|sample| sample.is_finite()),
                "{value}"
            );
        }
        // NaN is silence: after enough NaN chunks to flush the history, the output is silent.
        for _ in 0..3 {
            resampler
                .process_f32_into(&[f32::NAN; 160], &mut output_f32)
                .unwrap();
        }
        assert!(output_f32.iter().all(|&sample| sample == 0.0));
        assert_eq!(to_i16(f32::NAN), 0);
        assert_eq!(to_i16(10.0), i16::MAX);
        assert_eq!(to_i16(-10.0), i16::MIN);
    }
}
