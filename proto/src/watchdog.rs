//! The rules that make every call end, sans-IO: a caller must never sit in dead air with nobody
//! in the room to talk to, and a call must not stay up when Twilio has gone quiet or when it has
//! run for too long.
//!
//! - **Nobody to talk to** (`agent_join_timeout`): from the moment the caller is in the room, and
//!   whenever every other participant publishing audio has gone, a timer runs. When it fires the
//!   first time the driver asks LiveKit to dispatch an agent again ([`WatchdogAction::Redispatch`])
//!   and the timer starts over; the second time the caller hears the fallback
//!   ([`WatchdogAction::Fallback`]). Anyone publishing audio counts: an agent, or a person
//!   answering from a browser.
//! - **Twilio silent** (`media_timeout`): Twilio sends a frame every 20 ms for as long as the call
//!   is up, so a silent socket is a dead call ([`HangupReason::MediaTimeout`]).
//! - **Too long** (`max_duration`) → [`HangupReason::MaxDuration`].
//!
//! Each of the terminal actions is returned once; after it the watchdog says nothing more.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    pub agent_join_timeout: Duration,
    pub media_timeout: Duration,
    pub max_duration: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            agent_join_timeout: Duration::from_secs(10),
            media_timeout: Duration::from_secs(15),
            max_duration: Duration::from_secs(4 * 3600),
        }
    }
}

/// Why the caller gets the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// Nobody ever published audio in the room.
    NoAgent,
    /// Everyone who was talking to the caller left.
    AgentLeft,
}

/// Why the call is hung up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupReason {
    MediaTimeout,
    MaxDuration,
}

impl FallbackReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::NoAgent => "no_agent",
            FallbackReason::AgentLeft => "agent_left",
        }
    }
}

impl HangupReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HangupReason::MediaTimeout => "media_timeout",
            HangupReason::MaxDuration => "max_duration",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogAction {
    /// Ask LiveKit to dispatch an agent into the room again (once per call).
    Redispatch,
    /// Tell the caller we cannot help (say `FALLBACK_MESSAGE` or redirect to `FALLBACK_URL`), then end.
    Fallback(FallbackReason),
    /// End the call.
    Hangup(HangupReason),
}

pub struct CallWatchdog {
    cfg: WatchdogConfig,
    started: Instant,
    last_twilio: Instant,
    /// Other participants publishing audio right now.
    others: usize,
    /// When the caller was last left with nobody publishing (None while someone is).
    alone_since: Option<Instant>,
    ever_answered: bool,
    redispatched: bool,
    finished: bool,
    out: VecDeque<WatchdogAction>,
}

impl CallWatchdog {
    /// Starts watching at `now`: the caller is in the room, nobody else yet.
    pub fn new(cfg: WatchdogConfig, now: Instant) -> CallWatchdog {
        CallWatchdog {
            cfg,
            started: now,
            last_twilio: now,
            others: 0,
            alone_since: Some(now),
            ever_answered: false,
            redispatched: false,
            finished: false,
            out: VecDeque::new(),
        }
    }

    /// Any message from Twilio.
    pub fn twilio_message(&mut self, now: Instant) {
        self.last_twilio = self.last_twilio.max(now);
    }

    /// How many other participants publish audio now.
    pub fn others_publishing(&mut self, count: usize, now: Instant) {
        match (self.others, count) {
            (0, n) if n > 0 => {
                self.alone_since = None;
                self.ever_answered = true;
            }
            (n, 0) if n > 0 => self.alone_since = Some(now),
            _ => {}
        }
        self.others = count;
    }

    /// True once a terminal action has been returned.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next action due at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<WatchdogAction> {
        if let Some(a) = self.out.pop_front() {
            return Some(a);
        }
        if self.finished {
            return None;
        }
        let terminal = if now >= self.started + self.cfg.max_duration {
            Some(WatchdogAction::Hangup(HangupReason::MaxDuration))
        } else if now >= self.last_twilio + self.cfg.media_timeout {
            Some(WatchdogAction::Hangup(HangupReason::MediaTimeout))
        } else {
            match self.alone_since {
                Some(t) if now >= t + self.cfg.agent_join_timeout => {
                    if !self.redispatched {
                        self.redispatched = true;
                        self.alone_since = Some(now);
                        return Some(WatchdogAction::Redispatch);
                    }
                    let why = if self.ever_answered { FallbackReason::AgentLeft } else { FallbackReason::NoAgent };
                    Some(WatchdogAction::Fallback(why))
                }
                _ => None,
            }
        };
        if terminal.is_some() {
            self.finished = true;
        }
        terminal
    }

    /// When to call [`poll`](Self::poll) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let mut t = (self.started + self.cfg.max_duration).min(self.last_twilio + self.cfg.media_timeout);
        if let Some(a) = self.alone_since {
            t = t.min(a + self.cfg.agent_join_timeout);
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> WatchdogConfig {
        WatchdogConfig { agent_join_timeout: 10 * S, media_timeout: 15 * S, max_duration: 3600 * S }
    }

    /// Drives the watchdog like a driver does: Twilio talks every 20 ms, the watchdog is polled
    /// at its deadlines; returns (seconds since start, action) for everything it said until `end`.
    fn run(w: &mut CallWatchdog, t0: Instant, end: Duration, mut at: impl FnMut(Duration, &mut CallWatchdog)) -> Vec<(u64, WatchdogAction)> {
        let mut said = vec![];
        let mut t = Duration::ZERO;
        while t <= end {
            at(t, w);
            while let Some(a) = w.poll(t0 + t) {
                said.push((t.as_secs(), a));
            }
            t += Duration::from_millis(20);
        }
        said
    }

    #[test]
    fn nobody_joins_redispatch_once_then_fallback() {
        let t0 = Instant::now();
        let mut w = CallWatchdog::new(cfg(), t0);
        let said = run(&mut w, t0, 60 * S, |t, w| w.twilio_message(t0 + t));
        assert_eq!(
            said,
            vec![(10, WatchdogAction::Redispatch), (20, WatchdogAction::Fallback(FallbackReason::NoAgent))]
        );
        assert!(w.is_finished());
        assert_eq!(w.poll_timeout(), None);
    }

    #[test]
    fn an_agent_in_time_keeps_the_call_and_leaving_starts_the_clock() {
        let t0 = Instant::now();
        let mut w = CallWatchdog::new(cfg(), t0);
        let said = run(&mut w, t0, 120 * S, |t, w| {
            w.twilio_message(t0 + t);
            if t == 3 * S {
                w.others_publishing(1, t0 + t);
            }
            if t == 30 * S {
                w.others_publishing(2, t0 + t);
            }
            if t == 40 * S {
                w.others_publishing(1, t0 + t);
            }
            if t == 50 * S {
                w.others_publishing(0, t0 + t); // agent killed
            }
        });
        assert_eq!(
            said,
            vec![(60, WatchdogAction::Redispatch), (70, WatchdogAction::Fallback(FallbackReason::AgentLeft))]
        );
    }

    #[test]
    fn redispatched_agent_rescues_the_call() {
        let t0 = Instant::now();
        let mut w = CallWatchdog::new(cfg(), t0);
        let said = run(&mut w, t0, 100 * S, |t, w| {
            w.twilio_message(t0 + t);
            if t == 12 * S {
                w.others_publishing(1, t0 + t);
            }
        });
        assert_eq!(said, vec![(10, WatchdogAction::Redispatch)]);
        assert!(!w.is_finished());
    }

    #[test]
    fn silent_twilio_and_long_calls_hang_up() {
        let t0 = Instant::now();
        let mut w = CallWatchdog::new(cfg(), t0);
        w.others_publishing(1, t0);
        let said = run(&mut w, t0, 60 * S, |t, w| {
            if t < 5 * S {
                w.twilio_message(t0 + t);
            }
        });
        // Last message just before 5 s, so 15 s later.
        assert_eq!(said, vec![(19, WatchdogAction::Hangup(HangupReason::MediaTimeout))]);

        let mut w = CallWatchdog::new(WatchdogConfig { max_duration: 30 * S, ..cfg() }, t0);
        w.others_publishing(1, t0);
        let said = run(&mut w, t0, 60 * S, |t, w| w.twilio_message(t0 + t));
        assert_eq!(said, vec![(30, WatchdogAction::Hangup(HangupReason::MaxDuration))]);
    }

    #[test]
    fn deadline_is_the_earliest_rule() {
        let t0 = Instant::now();
        let mut w = CallWatchdog::new(cfg(), t0);
        assert_eq!(w.poll_timeout(), Some(t0 + 10 * S));
        w.others_publishing(1, t0 + S);
        assert_eq!(w.poll_timeout(), Some(t0 + 15 * S));
        w.twilio_message(t0 + 2 * S);
        assert_eq!(w.poll_timeout(), Some(t0 + 17 * S));
        // A stale timestamp never moves the media deadline back.
        w.twilio_message(t0);
        assert_eq!(w.poll_timeout(), Some(t0 + 17 * S));
    }
}
