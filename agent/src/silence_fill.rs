//! Keeps the caller's audio on the wall clock through Opus DTX pauses.
//!
//! A sender with DTX (the bridge, LiveKit SIP, browsers) stops sending packets while the caller
//! is silent, so the decoded stream simply pauses — but end-of-speech detection counts time in
//! frames and would wait for frames that never come (one comfort-noise refresh per 400 ms: a
//! 600 ms hangover took 12 s). libwebrtc's jitter buffer plays comfort noise in such pauses; we
//! do the same job with digital silence: once no frame has come for [`SilenceFill::WAIT`], the
//! pause is filled up to now, and when packets resume, the RTP time jump covers whatever the
//! timer did not. Sans-IO: time is an argument.

use std::time::{Duration, Instant};

/// RTP clock ticks (48 kHz) per 20 ms frame.
const RTP_PER_FRAME: u64 = 960;
const FRAME: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub struct SilenceFill {
    /// When the last real frame arrived.
    last_real: Option<Instant>,
    /// RTP time the next real frame should carry.
    expected_rtp: Option<u64>,
    /// Silence frames already given since the last real frame.
    filled: u64,
}

impl SilenceFill {
    /// How long frames may be late before the pause counts as silence (covers network jitter).
    pub const WAIT: Duration = Duration::from_millis(60);

    pub fn new() -> SilenceFill {
        SilenceFill::default()
    }

    /// A real frame arrived. Returns how many silence frames go before it: the part of an RTP
    /// jump (a DTX pause) that [`on_timer`](Self::on_timer) has not filled already.
    pub fn on_frame(&mut self, rtp_timestamp: u64, now: Instant) -> u64 {
        let missing = match self.expected_rtp {
            Some(exp) if rtp_timestamp > exp => (rtp_timestamp - exp) / RTP_PER_FRAME,
            _ => 0,
        };
        let before = missing.saturating_sub(self.filled);
        self.expected_rtp = Some(rtp_timestamp + RTP_PER_FRAME);
        self.last_real = Some(now);
        self.filled = 0;
        before
    }

    /// Silence frames due now (frames that should have arrived since the last real one, once
    /// they are [`WAIT`](Self::WAIT) late).
    pub fn on_timer(&mut self, now: Instant) -> u64 {
        let Some(last) = self.last_real else { return 0 };
        let since = now.saturating_duration_since(last);
        if since < Self::WAIT {
            return 0;
        }
        let due = (since.as_millis() / FRAME.as_millis()) as u64;
        let n = due.saturating_sub(self.filled);
        self.filled += n;
        n
    }

    /// When [`on_timer`](Self::on_timer) next has frames to give.
    pub fn next_deadline(&self) -> Option<Instant> {
        let last = self.last_real?;
        let next = last + FRAME * (self.filled as u32 + 1);
        Some(next.max(last + Self::WAIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_frames_need_no_fill() {
        let t0 = Instant::now();
        let mut f = SilenceFill::new();
        for i in 0..50u64 {
            let now = t0 + FRAME * i as u32;
            assert_eq!(f.on_frame(1000 + i * RTP_PER_FRAME, now), 0);
            assert_eq!(f.on_timer(now + Duration::from_millis(10)), 0);
        }
    }

    #[test]
    fn a_dtx_pause_is_filled_on_the_wall_clock_and_not_twice() {
        let t0 = Instant::now();
        let mut f = SilenceFill::new();
        assert_eq!(f.on_timer(t0 + Duration::from_secs(5)), 0, "nothing before the first frame");
        assert_eq!(f.on_frame(0, t0), 0);
        // Nothing for 40 ms: jitter, not silence yet.
        assert_eq!(f.on_timer(t0 + Duration::from_millis(40)), 0);
        assert_eq!(f.next_deadline(), Some(t0 + SilenceFill::WAIT));
        // At 60 ms three frames are due; then one per 20 ms.
        assert_eq!(f.on_timer(t0 + Duration::from_millis(60)), 3);
        assert_eq!(f.on_timer(t0 + Duration::from_millis(70)), 0);
        assert_eq!(f.next_deadline(), Some(t0 + Duration::from_millis(80)));
        assert_eq!(f.on_timer(t0 + Duration::from_millis(80)), 1);
        let mut total = 4;
        for ms in (100..=600).step_by(20) {
            total += f.on_timer(t0 + Duration::from_millis(ms));
        }
        assert_eq!(total, 30, "600 ms of silence is 30 frames");
        // Packets resume after a 1 s pause (frames 1..=49 never came): the 19 not yet filled go first.
        assert_eq!(f.on_frame(50 * RTP_PER_FRAME, t0 + Duration::from_millis(1000)), 19);
        assert_eq!(f.on_frame(51 * RTP_PER_FRAME, t0 + Duration::from_millis(1020)), 0);
    }

    #[test]
    fn a_late_frame_without_a_gap_adds_nothing_more() {
        let t0 = Instant::now();
        let mut f = SilenceFill::new();
        f.on_frame(0, t0);
        assert_eq!(f.on_timer(t0 + Duration::from_millis(80)), 4);
        // the frame was merely late (no RTP jump): nothing more to fill
        assert_eq!(f.on_frame(RTP_PER_FRAME, t0 + Duration::from_millis(85)), 0);
        assert_eq!(f.on_timer(t0 + Duration::from_millis(100)), 0);
    }
}
