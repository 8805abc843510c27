//! A call's recording as the caller lived it, sans-IO: two channels on one clock — left what
//! the caller said (Twilio's frames, gaps filled), right what the caller heard, placed where
//! Twilio played it. Twilio's own recording cannot show this: the pacer decides what is heard
//! when, an interrupt cuts audio already sent, and an underrun is a hole in what was heard.
//!
//! The right channel follows the pacer's model of Twilio's playback buffer: a frame sent at
//! `now` plays from `max(end of the previous frame, now)` for 20 ms; a `clear` at `now` drops
//! whatever would have played after `now`. Samples become final (nothing can change them)
//! once both the caller's audio has arrived for them and their time has passed; final samples
//! are handed out interleaved (L, R, …) for the driver to append to a file as the call goes.
//!
//! Memory is bounded: the caller channel waits at most [`MAX_CALLER_LAG`] for late frames
//! (silence is written instead, and frames arriving after it are dropped), so what is held is
//! at most that lag plus the pacer's lead.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::g711::ulaw_decode;

/// Samples per second per channel.
pub const RATE: u32 = 8_000;
/// How long the caller's channel may lag the clock before silence is recorded for it.
pub const MAX_CALLER_LAG: Duration = Duration::from_secs(1);
/// A pause in what the caller heard shorter than this, between two pieces of audio, is a gap
/// inside speech (an underrun); a longer one is the silence between turns.
pub const GAP_WITHIN_SPEECH: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordingStats {
    /// Samples per channel handed out.
    pub samples: u64,
    pub caller_ms: u64,
    /// Audio the caller heard (after cuts).
    pub heard_ms: u64,
    /// Audio sent to Twilio but cut by a `clear` before it played.
    pub cleared_ms: u64,
    pub clears: u64,
    /// Holes inside the caller's playback shorter than [`GAP_WITHIN_SPEECH`]: heard underruns.
    pub heard_gaps: u64,
    pub heard_gap_ms: u64,
    /// The caller's audio that came too late and was recorded as silence.
    pub caller_late_ms: u64,
}

fn samples(d: Duration) -> u64 {
    (d.as_nanos() * RATE as u128 / 1_000_000_000) as u64
}

fn ms(samples: u64) -> u64 {
    samples * 1000 / RATE as u64
}

pub struct CallRecorder {
    start: Instant,
    /// Caller samples from `written` on.
    left: VecDeque<i16>,
    /// Heard samples from `written` on (0 where nothing played).
    right: VecDeque<i16>,
    /// Samples per channel already handed out.
    written: u64,
    /// Caller samples still to drop (they arrived after silence was recorded in their place).
    left_skip: u64,
    /// Where the last heard frame ends.
    play_end: u64,
    /// Heard samples placed and not cut.
    placed: u64,
    stats: RecordingStats,
}

impl CallRecorder {
    /// Time zero is `start` (the stream's start).
    pub fn new(start: Instant) -> CallRecorder {
        CallRecorder {
            start,
            left: VecDeque::new(),
            right: VecDeque::new(),
            written: 0,
            left_skip: 0,
            play_end: 0,
            placed: 0,
            stats: RecordingStats::default(),
        }
    }

    pub fn stats(&self) -> &RecordingStats {
        &self.stats
    }

    fn pos(&self, t: Instant) -> u64 {
        samples(t.saturating_duration_since(self.start))
    }

    /// 20 ms of the caller (in Twilio's order, gaps already filled).
    pub fn caller(&mut self, pcm: &[i16]) {
        let skip = (self.left_skip as usize).min(pcm.len());
        self.left_skip -= skip as u64;
        self.left.extend(&pcm[skip..]);
        self.stats.caller_ms = ms(self.written + self.left.len() as u64);
    }

    /// A μ-law frame sent to Twilio at `now`: it plays after what is already queued.
    pub fn played(&mut self, mulaw: &[u8], now: Instant) {
        let at = self.pos(now).max(self.play_end).max(self.written);
        let gap = at.saturating_sub(self.play_end);
        if self.play_end > 0 && gap > 0 && gap < samples(GAP_WITHIN_SPEECH) {
            self.stats.heard_gaps += 1;
            self.stats.heard_gap_ms += ms(gap);
        }
        let offset = (at - self.written) as usize;
        if self.right.len() < offset {
            self.right.resize(offset, 0);
        }
        self.right.truncate(offset);
        self.right.extend(mulaw.iter().map(|b| ulaw_decode(*b)));
        self.play_end = at + mulaw.len() as u64;
        self.placed += mulaw.len() as u64;
    }

    /// Twilio `clear` at `now`: nothing queued plays any more.
    pub fn cleared(&mut self, now: Instant) {
        self.stats.clears += 1;
        let cut = self.pos(now).max(self.written);
        if self.play_end > cut {
            self.stats.cleared_ms += ms(self.play_end - cut);
            self.cleared_quietly(cut);
        }
    }

    /// Final samples, interleaved (L, R), once at least `min` of them are ready.
    pub fn poll(&mut self, now: Instant, min: Duration) -> Option<Vec<i16>> {
        let now_pos = self.pos(now);
        // A caller that went quiet on the wire is recorded as silence after a while.
        let lag_floor = now_pos.saturating_sub(samples(MAX_CALLER_LAG));
        let caller_end = self.written + self.left.len() as u64;
        if caller_end < lag_floor {
            let missing = lag_floor - caller_end;
            self.left.resize(self.left.len() + missing as usize, 0);
            self.left_skip += missing;
            self.stats.caller_late_ms += ms(missing);
        }
        let end = (self.written + self.left.len() as u64).min(now_pos);
        if end < self.written + samples(min).max(1) {
            return None;
        }
        Some(self.take(end))
    }

    /// The call is over at `now`: everything that can still be written, interleaved.
    pub fn finish(&mut self, now: Instant) -> Vec<i16> {
        let now_pos = self.pos(now);
        // Audio queued past the end never played.
        self.cleared_quietly(now_pos);
        let end = (self.written + self.left.len() as u64).max(now_pos);
        self.take(end)
    }

    fn cleared_quietly(&mut self, cut: u64) {
        let cut = cut.max(self.written);
        if self.play_end > cut {
            self.placed -= (self.play_end - cut).min(self.placed);
            self.right.truncate((cut - self.written) as usize);
            self.play_end = cut;
        }
    }

    fn take(&mut self, end: u64) -> Vec<i16> {
        let n = end.saturating_sub(self.written) as usize;
        let mut out = Vec::with_capacity(n * 2);
        for _ in 0..n {
            out.push(self.left.pop_front().unwrap_or(0));
            out.push(self.right.pop_front().unwrap_or(0));
        }
        self.written += n as u64;
        self.stats.samples = self.written;
        self.stats.heard_ms = ms(self.placed.min(self.written));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711::ulaw_encode;

    const MS: Duration = Duration::from_millis(1);

    fn frame(v: i16) -> [u8; 160] {
        [ulaw_encode(v); 160]
    }

    /// Drives a recorder for `until_ms`: the caller sends a frame every 20 ms (value 100),
    /// `agent(t)` says whether a frame is sent to Twilio at t; returns the interleaved output.
    fn run(rec: &mut CallRecorder, t0: Instant, until_ms: u64, mut at: impl FnMut(u64, &mut CallRecorder)) -> Vec<i16> {
        let mut out = Vec::new();
        for t in (0..until_ms).step_by(5) {
            let now = t0 + MS * t as u32;
            if t % 20 == 0 && t > 0 {
                rec.caller(&[100; 160]);
            }
            at(t, rec);
            if let Some(chunk) = rec.poll(now, Duration::from_millis(100)) {
                out.extend(chunk);
            }
        }
        out.extend(rec.finish(t0 + MS * until_ms as u32));
        out
    }

    fn right(out: &[i16]) -> Vec<i16> {
        out.iter().skip(1).step_by(2).copied().collect()
    }

    #[test]
    fn heard_audio_lands_where_it_played_with_gaps_and_cuts() {
        let t0 = Instant::now();
        let mut rec = CallRecorder::new(t0);
        let v = crate::g711::ulaw_decode(ulaw_encode(5000));
        let out = run(&mut rec, t0, 2000, |t, rec| {
            // 200 ms of speech sent in a burst at 100 ms (the pacer's lead lets it queue), a
            // pause, speech with a 40 ms hole at 800 ms, then a reply cut by a clear at 1400 ms.
            if t == 100 {
                for _ in 0..10 {
                    rec.played(&frame(5000), t0 + MS * 100);
                }
            }
            if t % 20 == 0 && ((700..800).contains(&t) || (840..900).contains(&t)) {
                rec.played(&frame(5000), t0 + MS * t as u32);
            }
            if t == 1200 {
                for _ in 0..25 {
                    rec.played(&frame(5000), t0 + MS * 1200);
                }
            }
            if t == 1400 {
                rec.cleared(t0 + MS * 1400);
            }
        });
        let r = right(&out);
        assert_eq!(r.len(), 16_000, "two seconds");
        let loud = |a: usize, b: usize| r[a * 8..b * 8].iter().all(|s| *s == v);
        let quiet = |a: usize, b: usize| r[a * 8..b * 8].iter().all(|s| *s == 0);
        assert!(quiet(0, 100) && loud(100, 300) && quiet(300, 700));
        assert!(loud(700, 800) && quiet(800, 840) && loud(840, 900) && quiet(900, 1200));
        assert!(loud(1200, 1400) && quiet(1400, 2000), "the clear cut what had not played");
        let st = rec.stats();
        assert_eq!((st.heard_gaps, st.heard_gap_ms), (1, 40));
        assert_eq!((st.clears, st.cleared_ms), (1, 300));
        assert_eq!(st.heard_ms, 200 + 100 + 60 + 200);
        // The caller's channel is the caller, sample for sample.
        let l: Vec<i16> = out.iter().step_by(2).copied().collect();
        assert!(l[160..].iter().take(15_000).all(|s| *s == 100));
    }

    #[test]
    fn a_silent_caller_is_recorded_as_silence_and_late_audio_dropped() {
        let t0 = Instant::now();
        let mut rec = CallRecorder::new(t0);
        rec.caller(&[7; 160]);
        // Nothing from Twilio for 3 s: the output still moves, one second behind.
        let chunk = rec.poll(t0 + Duration::from_secs(3), Duration::from_millis(100)).unwrap();
        assert_eq!(chunk.len() / 2, 2 * 8000);
        assert_eq!(rec.stats().caller_late_ms, 2000 - 20);
        // The late frames that then arrive are the ones already recorded as silence.
        for _ in 0..10 {
            rec.caller(&[9; 160]);
        }
        let rest = rec.finish(t0 + Duration::from_secs(3));
        assert_eq!(rest.len() / 2, 8000);
        assert!(rest.iter().step_by(2).all(|s| *s == 0));
        assert!(rec.left.is_empty() && rec.right.is_empty());
    }

    #[test]
    fn nothing_is_held_longer_than_the_lag() {
        let t0 = Instant::now();
        let mut rec = CallRecorder::new(t0);
        for t in 0..600u32 {
            let now = t0 + MS * (t * 100);
            rec.played(&frame(1), now);
            let _ = rec.poll(now, Duration::from_millis(100));
            assert!(rec.left.len() <= 8_100 && rec.right.len() <= 8_400, "{} {}", rec.left.len(), rec.right.len());
        }
    }
}
