//! Call-progress tones at 8 kHz: the sum of two sines (what DTMF keys and the ringback a caller
//! hears are made of), and the ringback cadence LiveKit SIP plays into a room while an outbound
//! call rings (`play_dialtone`).

use std::f64::consts::TAU;

/// Samples per second of every tone here (G.711).
pub const RATE: u32 = 8_000;
/// 20 ms at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// The peak of a full-scale μ-law sine (+3.17 dBm0), as decoded to 16-bit PCM.
const FULL_SCALE: f64 = 32_124.0;

/// The amplitude of a sine at `dbm0` (power relative to the digital milliwatt of G.711).
pub fn amplitude_dbm0(dbm0: f64) -> f64 {
    FULL_SCALE * 10f64.powf((dbm0 - 3.17) / 20.0)
}

/// Sample `n` of `a1·sin(2π·f1·n/8000) + a2·sin(2π·f2·n/8000)`, saturated to i16.
pub fn dual_tone_sample(f1: f64, a1: f64, f2: f64, a2: f64, n: u64) -> i16 {
    let t = n as f64 / RATE as f64;
    let v = a1 * (TAU * f1 * t).sin() + a2 * (TAU * f2 * t).sin();
    v.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16
}

/// North American ringback: 440 + 480 Hz at −19 dBm0 each, 2 s on, 4 s off, as a phone network
/// plays it to a caller while the far end rings. Endless: the driver stops pulling frames when
/// the call is answered or over.
#[derive(Debug, Clone, Default)]
pub struct Ringback {
    /// Samples produced so far.
    n: u64,
}

impl Ringback {
    const ON: u64 = 2 * RATE as u64;
    const PERIOD: u64 = 6 * RATE as u64;

    pub fn new() -> Ringback {
        Ringback::default()
    }

    /// The next 20 ms.
    pub fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        let a = amplitude_dbm0(-19.0);
        let mut out = [0i16; FRAME_SAMPLES];
        for s in out.iter_mut() {
            if self.n % Self::PERIOD < Self::ON {
                *s = dual_tone_sample(440.0, a, 480.0, a, self.n);
            }
            self.n += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_g711() {
        // 0 dBm0 is 3.17 dB below a full-scale sine.
        assert!((amplitude_dbm0(3.17) - FULL_SCALE).abs() < 1e-6);
        assert!((amplitude_dbm0(0.0) / FULL_SCALE - 0.694).abs() < 0.001);
    }

    #[test]
    fn ringback_is_two_seconds_on_four_off() {
        let mut r = Ringback::new();
        let loud: Vec<bool> = (0..600) // 12 s of 20 ms frames
            .map(|_| r.next_frame().iter().map(|s| (*s as f64).powi(2)).sum::<f64>() > 1e6)
            .collect();
        assert!(loud[..100].iter().all(|l| *l), "first 2 s ring");
        assert!(loud[100..300].iter().all(|l| !l), "then 4 s quiet");
        assert!(loud[300..400].iter().all(|l| *l), "and again");
    }
}
