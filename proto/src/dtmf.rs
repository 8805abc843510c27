//! DTMF ("touch tones"): the keys, LiveKit's codes for them, in-band tones to play to a phone,
//! and a detector for tones in audio.
//!
//! Media Streams cannot send digits to Twilio, so keys an agent presses go in-band: each key is
//! its row and column frequency summed (ITU-T Q.23), 100 ms on and 70 ms off. LiveKit carries
//! keys as `SipDTMF { code, digit }` with RFC 4733 event codes (0-9, `*` 10, `#` 11, A-D 12-15),
//! and LiveKit SIP's `dtmf` dial string also knows `w`: wait half a second.
//!
//! [`DtmfTones`] makes the audio, 20 ms at a time, sans-IO. [`DtmfDetector`] finds keys in 8 kHz
//! audio with the Goertzel algorithm (the simulator's ear; also a check on the tones made here).

use std::collections::VecDeque;
use std::time::Duration;

use crate::tones::{amplitude_dbm0, dual_tone_sample, FRAME_SAMPLES, RATE};

/// How long a key's tone lasts.
pub const TONE_ON: Duration = Duration::from_millis(100);
/// The silence after each key.
pub const TONE_OFF: Duration = Duration::from_millis(70);
/// `w` in a dial string.
pub const PAUSE: Duration = Duration::from_millis(500);
/// Keys (and pauses) waiting to be played; more are refused. 64 keys is 11 s of tones.
pub const MAX_QUEUED: usize = 64;

const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [['1', '2', '3', 'A'], ['4', '5', '6', 'B'], ['7', '8', '9', 'C'], ['*', '0', '#', 'D']];
/// Q.23-style levels: the high group a little louder than the low one (positive twist).
const LOW_DBM0: f64 = -7.0;
const HIGH_DBM0: f64 = -5.0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("{0:?} is not a DTMF key (0-9 * # A-D)")]
    NotAKey(char),
    #[error("code {0} is not a DTMF event (0-15)")]
    NotACode(u32),
    #[error("more than {MAX_QUEUED} keys waiting")]
    TooMany,
}

/// A key's normal form (`a`-`d` become `A`-`D`), or an error.
pub fn key(c: char) -> Result<char, DtmfError> {
    let k = c.to_ascii_uppercase();
    if k.is_ascii_digit() || matches!(k, '*' | '#' | 'A'..='D') {
        Ok(k)
    } else {
        Err(DtmfError::NotAKey(c))
    }
}

/// The RFC 4733 event code LiveKit uses for a key.
pub fn code_of(c: char) -> Result<u32, DtmfError> {
    Ok(match key(c)? {
        d @ '0'..='9' => d as u32 - '0' as u32,
        '*' => 10,
        '#' => 11,
        l => l as u32 - 'A' as u32 + 12,
    })
}

/// The key of an RFC 4733 event code.
pub fn key_of(code: u32) -> Result<char, DtmfError> {
    match code {
        0..=9 => Ok((b'0' + code as u8) as char),
        10 => Ok('*'),
        11 => Ok('#'),
        12..=15 => Ok((b'A' + (code - 12) as u8) as char),
        _ => Err(DtmfError::NotACode(code)),
    }
}

fn frequencies(k: char) -> (f64, f64) {
    for (r, row) in KEYS.iter().enumerate() {
        if let Some(c) = row.iter().position(|x| *x == k) {
            return (ROWS[r], COLS[c]);
        }
    }
    unreachable!("only normalised keys reach here")
}

/// One step of a dial string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Press {
    Key(char),
    /// `w`: half a second of silence.
    Pause,
}

impl Press {
    fn samples(self) -> u64 {
        let ms = match self {
            Press::Key(_) => (TONE_ON + TONE_OFF).as_millis(),
            Press::Pause => PAUSE.as_millis(),
        };
        ms as u64 * RATE as u64 / 1000
    }
}

/// Parses a dial string (`"1234#"`, `"ww123"`): keys, and `w` for a pause. Spaces are ignored.
pub fn parse_dial_string(s: &str) -> Result<Vec<Press>, DtmfError> {
    let presses: Vec<Press> = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == 'w' || c == 'W' { Ok(Press::Pause) } else { key(c).map(Press::Key) })
        .collect::<Result<_, _>>()?;
    if presses.len() > MAX_QUEUED {
        return Err(DtmfError::TooMany);
    }
    Ok(presses)
}

/// How long a dial string takes to play.
pub fn duration_of(presses: &[Press]) -> Duration {
    let samples: u64 = presses.iter().map(|p| p.samples()).sum();
    Duration::from_micros(samples * 1_000_000 / RATE as u64)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DtmfStats {
    pub keys_played: u64,
    /// Keys refused because [`MAX_QUEUED`] were already waiting.
    pub keys_refused: u64,
}

/// Makes the tones of queued keys, 20 ms at a time (the last frame padded with silence).
#[derive(Debug, Default)]
pub struct DtmfTones {
    queue: VecDeque<Press>,
    /// Samples of the front press already made.
    pos: u64,
    stats: DtmfStats,
}

impl DtmfTones {
    pub fn new() -> DtmfTones {
        DtmfTones::default()
    }

    pub fn stats(&self) -> &DtmfStats {
        &self.stats
    }

    /// Queues presses; all or nothing when they do not fit.
    pub fn push(&mut self, presses: &[Press]) -> Result<(), DtmfError> {
        if self.queue.len() + presses.len() > MAX_QUEUED {
            self.stats.keys_refused += presses.iter().filter(|p| matches!(p, Press::Key(_))).count() as u64;
            return Err(DtmfError::TooMany);
        }
        self.queue.extend(presses.iter().copied());
        Ok(())
    }

    /// Nothing queued.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next 20 ms of tones, or `None` when nothing is queued.
    pub fn next_frame(&mut self) -> Option<[i16; FRAME_SAMPLES]> {
        if self.queue.is_empty() {
            return None;
        }
        let mut out = [0i16; FRAME_SAMPLES];
        let on = TONE_ON.as_millis() as u64 * RATE as u64 / 1000;
        let (lo, hi) = (amplitude_dbm0(LOW_DBM0), amplitude_dbm0(HIGH_DBM0));
        for s in out.iter_mut() {
            let Some(press) = self.queue.front().copied() else { break };
            if let Press::Key(k) = press {
                if self.pos < on {
                    let (f1, f2) = frequencies(k);
                    *s = dual_tone_sample(f1, lo, f2, hi, self.pos);
                }
            }
            self.pos += 1;
            if self.pos >= press.samples() {
                self.queue.pop_front();
                self.pos = 0;
                if matches!(press, Press::Key(_)) {
                    self.stats.keys_played += 1;
                }
            }
        }
        Some(out)
    }
}

/// Samples per Goertzel block: 205 at 8 kHz (25.6 ms) puts every DTMF frequency near a bin.
const BLOCK: usize = 205;
/// A block is a key when this share of its energy is in the key's two frequencies.
const MIN_SHARE: f64 = 0.6;
/// Each tone at least this loud (about −40 dBm0): silence and line noise are not keys.
const MIN_AMPLITUDE: f64 = 300.0;
/// Row and column levels may differ by up to this factor in power (8 dB of twist either way).
const MAX_TWIST: f64 = 6.3;

/// A key heard, and where: the sample (from the first one pushed) at which it was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub key: char,
    pub at_sample: u64,
}

/// Finds DTMF keys in 8 kHz PCM pushed in any chunk sizes. A key counts once it fills two
/// blocks in a row (~50 ms) and again only after a block without it, so one press is one key.
#[derive(Debug)]
pub struct DtmfDetector {
    block: Vec<f64>,
    samples: u64,
    /// The key the last block showed.
    last: Option<char>,
    /// The key currently held down (already reported).
    held: Option<char>,
}

impl Default for DtmfDetector {
    fn default() -> Self {
        DtmfDetector { block: Vec::with_capacity(BLOCK), samples: 0, last: None, held: None }
    }
}

/// Goertzel power of `freq` in `x` (|X(f)|², unnormalised).
fn goertzel(x: &[f64], freq: f64) -> f64 {
    let w = std::f64::consts::TAU * freq / RATE as f64;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for v in x {
        let s0 = v + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

impl DtmfDetector {
    pub fn new() -> DtmfDetector {
        DtmfDetector::default()
    }

    /// Feeds audio; returns the keys recognised in it.
    pub fn push(&mut self, pcm: &[i16]) -> Vec<Detected> {
        let mut found = Vec::new();
        for s in pcm {
            self.block.push(*s as f64);
            self.samples += 1;
            if self.block.len() == BLOCK {
                let k = Self::classify(&self.block);
                self.block.clear();
                match (k, self.last) {
                    (Some(k), Some(prev)) if k == prev && self.held != Some(k) => {
                        self.held = Some(k);
                        found.push(Detected { key: k, at_sample: self.samples });
                    }
                    (None, _) => self.held = None,
                    (Some(k), _) if self.held.is_some_and(|h| h != k) => self.held = None,
                    _ => {}
                }
                self.last = k;
            }
        }
        found
    }

    /// `n` samples of silence, without the work of analysing them: a held key is released and
    /// the sample count moves on.
    pub fn push_silence(&mut self, n: u64) -> Vec<Detected> {
        let room = (BLOCK - self.block.len()) as u64;
        if n <= room + BLOCK as u64 {
            return self.push(&vec![0i16; n as usize]);
        }
        // Finish the block in progress and one more: after that every block is plain silence.
        let mut found = self.push(&vec![0i16; (room + BLOCK as u64) as usize]);
        let rest = n - room - BLOCK as u64;
        let whole = rest / BLOCK as u64 * BLOCK as u64;
        self.samples += whole;
        found.extend(self.push(&vec![0i16; (rest - whole) as usize]));
        found
    }

    fn classify(x: &[f64]) -> Option<char> {
        let energy: f64 = x.iter().map(|v| v * v).sum();
        let n = x.len() as f64;
        // A sine of amplitude A gives |X|² ≈ (A·N/2)² and Σx² ≈ N·A²/2: the two agree when the
        // power is scaled by 2/N.
        let power = |f: f64| goertzel(x, f) * 2.0 / n;
        let rows: Vec<f64> = ROWS.iter().map(|f| power(*f)).collect();
        let cols: Vec<f64> = COLS.iter().map(|f| power(*f)).collect();
        let best = |v: &[f64]| v.iter().enumerate().fold((0, 0.0), |(bi, bv), (i, x)| if *x > bv { (i, *x) } else { (bi, bv) });
        let (r, pr) = best(&rows);
        let (c, pc) = best(&cols);
        let min_power = MIN_AMPLITUDE * MIN_AMPLITUDE * n / 2.0;
        if pr < min_power || pc < min_power {
            return None;
        }
        if pr / pc > MAX_TWIST || pc / pr > MAX_TWIST {
            return None;
        }
        if (pr + pc) < MIN_SHARE * energy {
            return None;
        }
        Some(KEYS[r][c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(s: &str) -> Vec<i16> {
        let mut t = DtmfTones::new();
        t.push(&parse_dial_string(s).unwrap()).unwrap();
        let mut pcm = Vec::new();
        while let Some(f) = t.next_frame() {
            pcm.extend_from_slice(&f);
        }
        pcm
    }

    #[test]
    fn codes_follow_rfc4733() {
        for (k, c) in [('0', 0), ('9', 9), ('*', 10), ('#', 11), ('A', 12), ('d', 15)] {
            assert_eq!(code_of(k), Ok(c));
            assert_eq!(key_of(c), Ok(k.to_ascii_uppercase()));
        }
        assert_eq!(code_of('x'), Err(DtmfError::NotAKey('x')));
        assert_eq!(key_of(16), Err(DtmfError::NotACode(16)));
    }

    #[test]
    fn tones_are_100_ms_on_70_off() {
        let pcm = play("5");
        assert_eq!(pcm.len(), 9 * FRAME_SAMPLES, "170 ms rounds up to nine frames");
        let on = pcm.iter().position(|s| *s != 0).unwrap();
        let off = pcm.iter().rposition(|s| *s != 0).unwrap();
        assert_eq!(on, 1, "sample 0 of a sine is 0");
        assert!((795..800).contains(&off), "{off}");
        assert!(pcm[800..].iter().all(|s| *s == 0));
        assert_eq!(duration_of(&parse_dial_string("12w").unwrap()), Duration::from_millis(840));
    }

    #[test]
    fn dial_strings() {
        assert_eq!(parse_dial_string("1 w#").unwrap(), vec![Press::Key('1'), Press::Pause, Press::Key('#')]);
        assert_eq!(parse_dial_string("12x"), Err(DtmfError::NotAKey('x')));
        assert_eq!(parse_dial_string(&"1".repeat(MAX_QUEUED + 1)), Err(DtmfError::TooMany));
        let mut t = DtmfTones::new();
        t.push(&parse_dial_string(&"1".repeat(MAX_QUEUED)).unwrap()).unwrap();
        assert_eq!(t.push(&[Press::Key('2')]), Err(DtmfError::TooMany));
        assert_eq!(t.stats().keys_refused, 1);
    }

    #[test]
    fn the_detector_hears_every_key_once() {
        let all = "123A456B789C*0#D1100";
        let pcm = play(all);
        let mut d = DtmfDetector::new();
        // Odd chunk sizes: the detector keeps its blocks across pushes.
        let heard: String = pcm.chunks(77).flat_map(|c| d.push(c)).map(|k| k.key).collect();
        assert_eq!(heard, all);
    }

    #[test]
    fn silence_is_skipped_but_counted() {
        let mut d = DtmfDetector::new();
        let mut e = DtmfDetector::new();
        let pcm = play("7");
        assert!(d.push_silence(100_003).is_empty());
        assert!(e.push(&vec![0; 100_003]).is_empty());
        let (a, b) = (d.push(&pcm), e.push(&pcm));
        assert_eq!(a, b, "the same key at the same sample");
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn the_detector_survives_mulaw_and_ignores_speechlike_sound() {
        use crate::g711::{ulaw_decode, ulaw_encode};
        let pcm: Vec<i16> = play("#9").iter().map(|s| ulaw_decode(ulaw_encode(*s))).collect();
        let mut d = DtmfDetector::new();
        assert_eq!(d.push(&pcm).iter().map(|k| k.key).collect::<String>(), "#9");
        // A single tone, a chord of three, silence and noise are not keys.
        let mut d = DtmfDetector::new();
        let one: Vec<i16> = (0..8000).map(|n| dual_tone_sample(697.0, 8000.0, 0.0, 0.0, n)).collect();
        let chord: Vec<i16> = (0..8000)
            .map(|n| dual_tone_sample(697.0, 6000.0, 1209.0, 6000.0, n).saturating_add(dual_tone_sample(500.0, 9000.0, 0.0, 0.0, n)))
            .collect();
        let mut x: u32 = 1;
        let noise: Vec<i16> = (0..8000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 8000) as i16 - 4000
            })
            .collect();
        for pcm in [one, chord, vec![0; 8000], noise] {
            assert!(d.push(&pcm).is_empty());
        }
    }
}
