//! The simulator's clock: the wall clock, a faster one, or one that jumps from event to event.
//! Stream time starts at 0 when `start` is sent.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Pace;

#[derive(Debug)]
pub struct SimClock {
    t0: Instant,
    /// `None`: fast mode, where time is whatever `jump_to` last set.
    speed: Option<f64>,
    fast_now: Duration,
}

impl SimClock {
    pub fn start(pace: Pace) -> SimClock {
        let speed = match pace {
            Pace::RealTime => Some(1.0),
            Pace::Speed(x) if x.is_finite() && x > 0.0 => Some(x),
            Pace::Speed(_) => Some(1.0),
            Pace::Fast => None,
        };
        SimClock { t0: Instant::now(), speed, fast_now: Duration::ZERO }
    }

    pub fn is_fast(&self) -> bool {
        self.speed.is_none()
    }

    /// Stream time now.
    pub fn now(&self) -> Duration {
        match self.speed {
            None => self.fast_now,
            Some(1.0) => self.t0.elapsed(),
            Some(x) => self.t0.elapsed().mul_f64(x),
        }
    }

    /// The wall-clock instant at which stream time reaches `t` (real-time and speed modes).
    pub fn instant_of(&self, t: Duration) -> Instant {
        match self.speed {
            None | Some(1.0) => self.t0 + t,
            Some(x) => self.t0 + t.div_f64(x),
        }
    }

    /// Fast mode: move time forward to `t` (never back).
    pub fn jump_to(&mut self, t: Duration) {
        self.fast_now = self.fast_now.max(t);
    }
}
