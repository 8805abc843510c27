//! Energy voice-activity detection with an adaptive noise floor and hangover, on 20 ms frames.
//!
//! A frame is *voiced* when its level is `margin_db` above the tracked noise floor (and above
//! `min_dbfs`). Speech starts after `min_speech_ms` of voiced frames (one unvoiced frame in
//! between is forgiven) and ends after `hangover_ms` of unvoiced ones. Cheap enough to run on
//! every frame of every call.

#[derive(Debug, Clone)]
pub struct VadConfig {
    pub margin_db: f32,
    pub min_dbfs: f32,
    pub min_speech_ms: u32,
    pub hangover_ms: u32,
}

impl VadConfig {
    pub fn from_turn(t: &crate::config::TurnSpec) -> VadConfig {
        VadConfig {
            margin_db: t.vad_margin_db,
            min_dbfs: t.vad_min_dbfs,
            min_speech_ms: t.min_speech_ms,
            hangover_ms: t.end_of_speech_ms,
        }
    }
}

pub use super::VadEvent;

#[derive(Debug, Clone)]
pub struct Vad {
    cfg: VadConfig,
    noise_db: f32,
    in_speech: bool,
    onset_ms: u32,
    onset_gap: bool,
    speech_ms: u32,
    silence_ms: u32,
}

/// Level of a frame in dBFS (-100 for digital silence).
pub fn level_dbfs(frame: &[i16]) -> f32 {
    if frame.is_empty() {
        return -100.0;
    }
    let e: f64 = frame.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / frame.len() as f64;
    let rms = e.sqrt() / 32768.0;
    if rms <= 1e-5 {
        -100.0
    } else {
        (20.0 * rms.log10()) as f32
    }
}

impl Vad {
    pub fn new(cfg: VadConfig) -> Vad {
        Vad {
            cfg,
            noise_db: -70.0,
            in_speech: false,
            onset_ms: 0,
            onset_gap: false,
            speech_ms: 0,
            silence_ms: 0,
        }
    }

    pub fn config(&self) -> &VadConfig {
        &self.cfg
    }

    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// Length of the current speech so far (0 when not in speech).
    pub fn speech_ms(&self) -> u32 {
        if self.in_speech {
            self.speech_ms
        } else {
            0
        }
    }

    /// Unvoiced time at the end of the current speech (0 when not in speech).
    pub fn silence_ms(&self) -> u32 {
        if self.in_speech {
            self.silence_ms
        } else {
            0
        }
    }

    pub fn noise_floor_db(&self) -> f32 {
        self.noise_db
    }

    /// One frame (any length; its duration is computed from `rate`).
    pub fn push(&mut self, frame: &[i16], rate: u32) -> Option<VadEvent> {
        let ms = (frame.len() as u64 * 1000 / rate.max(1) as u64) as u32;
        let level = level_dbfs(frame);
        let threshold = (self.noise_db + self.cfg.margin_db).max(self.cfg.min_dbfs);
        let voiced = level > threshold;
        // Noise floor: follows quiet frames quickly down, slowly up; barely moves in speech.
        if !voiced {
            let a = if level < self.noise_db { 0.3 } else { 0.05 };
            self.noise_db += a * (level - self.noise_db);
        } else {
            self.noise_db += 0.002 * (level - self.noise_db);
        }
        self.noise_db = self.noise_db.clamp(-90.0, -10.0);

        if !self.in_speech {
            if voiced {
                self.onset_ms += ms;
                self.onset_gap = false;
                if self.onset_ms >= self.cfg.min_speech_ms {
                    self.in_speech = true;
                    self.speech_ms = self.onset_ms;
                    self.silence_ms = 0;
                    let onset = self.onset_ms;
                    self.onset_ms = 0;
                    return Some(VadEvent::SpeechStart { onset_ms: onset });
                }
            } else if self.onset_ms > 0 && !self.onset_gap {
                self.onset_gap = true; // forgive one gap
            } else {
                self.onset_ms = 0;
                self.onset_gap = false;
            }
            None
        } else {
            self.speech_ms += ms;
            if voiced {
                self.silence_ms = 0;
                None
            } else {
                self.silence_ms += ms;
                if self.silence_ms >= self.cfg.hangover_ms {
                    self.in_speech = false;
                    let speech = self.speech_ms.saturating_sub(self.silence_ms);
                    self.speech_ms = 0;
                    self.silence_ms = 0;
                    Some(VadEvent::SpeechEnd { speech_ms: speech })
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (i as f64 * 0.3).sin()) as i16)
            .collect()
    }

    #[test]
    fn detects_speech_with_hangover() {
        let mut v = Vad::new(VadConfig {
            margin_db: 12.0,
            min_dbfs: -50.0,
            min_speech_ms: 100,
            hangover_ms: 300,
        });
        let quiet = tone(320, 30.0);
        let loud = tone(320, 8000.0);
        for _ in 0..20 {
            assert_eq!(v.push(&quiet, 16000), None);
        }
        let mut events = Vec::new();
        for _ in 0..25 {
            events.extend(v.push(&loud, 16000));
        }
        assert_eq!(events, [VadEvent::SpeechStart { onset_ms: 100 }]);
        assert!(v.in_speech() && v.speech_ms() == 500);
        let mut ends = Vec::new();
        for i in 0..20 {
            if let Some(e) = v.push(&quiet, 16000) {
                ends.push((i, e));
            }
        }
        assert_eq!(ends, [(14, VadEvent::SpeechEnd { speech_ms: 500 })]);
    }
}
