//! A scripted caller, as a sans-IO state machine: it listens to what the far end plays, waits
//! for it to finish a turn, then says its next line — and measures how long the far end took to
//! answer each line. Time is an argument (any monotonic origin; the driver picks one).
//!
//! The rules, the way a patient human caller behaves:
//! - a *turn* of the far end is audio louder than [`ConversationConfig::loud_dbfs`] followed by
//!   [`ConversationConfig::quiet_after`] of nothing loud; only then does the caller speak;
//! - a line is spoken for its length (the driver sends the audio); the *answer latency* is from
//!   the end of the line to the first loud frame heard after it;
//! - [`Conversation::repeat_last`] makes the next line the previous one again (the far end said
//!   it did not understand);
//! - when the far end does not answer a line within [`ConversationConfig::answer_timeout`], the
//!   conversation gives up (`Step::GaveUp`); after the last line is answered it is `Done`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ConversationConfig {
    /// A frame at least this loud (dBFS, RMS) is the far end speaking.
    pub loud_dbfs: f32,
    /// This much quiet after the far end spoke ends its turn.
    pub quiet_after: Duration,
    /// The far end must start answering within this long after a line ends (or greet within
    /// this long of the start).
    pub answer_timeout: Duration,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            loud_dbfs: -40.0,
            quiet_after: Duration::from_millis(1200),
            answer_timeout: Duration::from_secs(20),
        }
    }
}

/// What the driver should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send line `index` now.
    Say { index: usize },
    /// Every line was said and answered; the far end's last turn is over.
    Done,
    /// The far end did not answer line `index` (None: never greeted) in time.
    GaveUp { index: Option<usize> },
}

/// One answered line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub index: usize,
    /// When the line finished playing to the far end.
    pub line_ended: Duration,
    /// End of the line → first loud frame heard after it.
    pub latency: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Listening; `heard` is when the far end's current turn started (None: not yet).
    Listening { since: Duration, heard: Option<Duration> },
    /// Our line `index` plays until `until`.
    Speaking { index: usize, until: Duration },
    Finished,
}

#[derive(Debug)]
pub struct Conversation {
    cfg: ConversationConfig,
    lines: Vec<Duration>,
    next: usize,
    state: State,
    last_loud: Option<Duration>,
    /// The line being answered and when it ended.
    pending: Option<(usize, Duration)>,
    answers: Vec<Answer>,
}

impl Conversation {
    /// `lines` are the lengths of the lines the caller will say, in order. `now` is the start
    /// of the call (the far end usually greets first).
    pub fn new(cfg: ConversationConfig, lines: Vec<Duration>, now: Duration) -> Conversation {
        Conversation {
            cfg,
            lines,
            next: 0,
            state: State::Listening { since: now, heard: None },
            last_loud: None,
            pending: None,
            answers: Vec::new(),
        }
    }

    /// A frame of the far end's audio, heard at `at` with this RMS level.
    pub fn on_heard(&mut self, at: Duration, level_dbfs: f32) {
        if level_dbfs < self.cfg.loud_dbfs {
            return;
        }
        self.last_loud = Some(at);
        if let State::Listening { heard, .. } = &mut self.state {
            if heard.is_none() {
                *heard = Some(at);
                if let Some((index, line_ended)) = self.pending.take() {
                    self.answers.push(Answer {
                        index,
                        line_ended,
                        latency: at.saturating_sub(line_ended),
                    });
                }
            }
        }
    }

    /// Say the previous line again next (the far end asked for it). No effect before the first line.
    pub fn repeat_last(&mut self) {
        self.next = self.next.saturating_sub(1);
    }

    /// Advance to `now`: what to do, if anything.
    pub fn poll(&mut self, now: Duration) -> Option<Step> {
        match self.state {
            State::Finished => None,
            State::Speaking { index, until } => {
                if now < until {
                    return None;
                }
                self.pending = Some((index, until));
                self.state = State::Listening { since: until, heard: None };
                self.poll(now)
            }
            State::Listening { since, heard: None } => {
                if now.saturating_sub(since) >= self.cfg.answer_timeout {
                    self.state = State::Finished;
                    return Some(Step::GaveUp { index: self.pending.map(|(i, _)| i) });
                }
                None
            }
            State::Listening { heard: Some(_), .. } => {
                let quiet_since = self.last_loud.unwrap_or(now);
                if now.saturating_sub(quiet_since) < self.cfg.quiet_after {
                    return None;
                }
                if self.next >= self.lines.len() {
                    self.state = State::Finished;
                    return Some(Step::Done);
                }
                let index = self.next;
                self.next += 1;
                self.state = State::Speaking { index, until: now + self.lines[index] };
                Some(Step::Say { index })
            }
        }
    }

    /// When [`poll`](Self::poll) next has something to say, if nothing is heard before then.
    pub fn next_deadline(&self) -> Option<Duration> {
        match self.state {
            State::Finished => None,
            State::Speaking { until, .. } => Some(until),
            State::Listening { since, heard: None } => Some(since + self.cfg.answer_timeout),
            State::Listening { heard: Some(h), .. } => {
                Some(self.last_loud.unwrap_or(h) + self.cfg.quiet_after)
            }
        }
    }

    /// Lines answered so far, with their latency.
    pub fn answers(&self) -> &[Answer] {
        &self.answers
    }

    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }
}

/// RMS level of 16-bit PCM in dBFS (-120 for digital silence).
pub fn level_dbfs(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return -120.0;
    }
    let sum: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / pcm.len() as f64).sqrt() / 32768.0;
    if rms <= 1e-6 {
        -120.0
    } else {
        (20.0 * rms.log10()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The far end speaks from `from` to `to` (20 ms frames, loud).
    fn speak(c: &mut Conversation, from: u64, to: u64) -> Vec<(u64, Step)> {
        let mut steps = Vec::new();
        let mut t = from;
        while t < to {
            c.on_heard(ms(t), -20.0);
            if let Some(s) = c.poll(ms(t)) {
                steps.push((t, s));
            }
            t += 20;
        }
        steps
    }

    /// Quiet from `from` to `to`, polling every 20 ms.
    fn quiet(c: &mut Conversation, from: u64, to: u64) -> Vec<(u64, Step)> {
        let mut steps = Vec::new();
        let mut t = from;
        while t < to {
            c.on_heard(ms(t), -90.0);
            if let Some(s) = c.poll(ms(t)) {
                steps.push((t, s));
            }
            t += 20;
        }
        steps
    }

    #[test]
    fn waits_for_the_greeting_to_end_then_speaks_each_line_and_measures_answers() {
        let cfg = ConversationConfig { quiet_after: ms(1000), ..Default::default() };
        let mut c = Conversation::new(cfg, vec![ms(1500), ms(800)], ms(0));
        assert!(quiet(&mut c, 0, 2000).is_empty(), "nothing said before the greeting");
        // Greeting 2.0–5.0 s with a short pause inside it (not a turn end).
        assert!(speak(&mut c, 2000, 3000).is_empty());
        assert!(quiet(&mut c, 3000, 3500).is_empty());
        assert!(speak(&mut c, 3500, 5000).is_empty());
        let s = quiet(&mut c, 5000, 6100);
        // last loud frame at 4980 → quiet for 1000 ms at 5980
        assert_eq!(s, vec![(5980, Step::Say { index: 0 })]);
        assert_eq!(c.next_deadline(), Some(ms(5980 + 1500)));
        // Line 0 plays 5980–7480; the answer starts 900 ms after it.
        assert!(quiet(&mut c, 6100, 8380).is_empty());
        assert!(speak(&mut c, 8380, 9000).is_empty());
        assert_eq!(c.answers().len(), 1);
        assert_eq!(c.answers()[0].index, 0);
        assert_eq!(c.answers()[0].line_ended, ms(7480));
        assert_eq!(c.answers()[0].latency, ms(900));
        let s = quiet(&mut c, 9000, 10_100);
        assert_eq!(s, vec![(9980, Step::Say { index: 1 })]);
        assert!(quiet(&mut c, 10_100, 11_000).is_empty());
        assert!(speak(&mut c, 11_000, 11_400).is_empty());
        assert_eq!(c.answers()[1].latency, ms(11_000 - 10_780));
        let s = quiet(&mut c, 11_400, 12_500);
        assert_eq!(s, vec![(12_380, Step::Done)]);
        assert!(c.is_finished());
        assert!(c.poll(ms(20_000)).is_none());
    }

    #[test]
    fn audio_heard_while_speaking_does_not_count_as_an_answer() {
        let cfg = ConversationConfig { quiet_after: ms(500), ..Default::default() };
        let mut c = Conversation::new(cfg, vec![ms(1000)], ms(0));
        speak(&mut c, 0, 400);
        assert_eq!(quiet(&mut c, 400, 1000), vec![(880, Step::Say { index: 0 })]);
        // far end talks over the line (echo, or it did not stop): not an answer
        speak(&mut c, 1000, 1400);
        assert!(c.answers().is_empty());
        quiet(&mut c, 1400, 2200);
        speak(&mut c, 2200, 2400);
        assert_eq!(c.answers()[0].latency, ms(2200 - 1880));
    }

    #[test]
    fn repeat_last_says_the_same_line_again() {
        let cfg = ConversationConfig { quiet_after: ms(500), ..Default::default() };
        let mut c = Conversation::new(cfg, vec![ms(300), ms(300)], ms(0));
        speak(&mut c, 0, 200);
        assert_eq!(quiet(&mut c, 200, 800), vec![(680, Step::Say { index: 0 })]);
        quiet(&mut c, 800, 1200);
        speak(&mut c, 1200, 1600); // "sorry, I did not catch that"
        c.repeat_last();
        assert_eq!(quiet(&mut c, 1600, 2200), vec![(2080, Step::Say { index: 0 })]);
    }

    #[test]
    fn gives_up_when_the_far_end_never_answers() {
        let cfg = ConversationConfig { answer_timeout: ms(3000), ..Default::default() };
        let mut c = Conversation::new(cfg.clone(), vec![ms(300)], ms(0));
        assert_eq!(c.next_deadline(), Some(ms(3000)));
        assert_eq!(quiet(&mut c, 0, 3100), vec![(3000, Step::GaveUp { index: None })]);

        let cfg = ConversationConfig { quiet_after: ms(500), ..cfg };
        let mut c = Conversation::new(cfg, vec![ms(300)], ms(0));
        speak(&mut c, 0, 100);
        assert_eq!(quiet(&mut c, 100, 700), vec![(580, Step::Say { index: 0 })]);
        assert_eq!(
            quiet(&mut c, 700, 4000),
            vec![(880 + 3000, Step::GaveUp { index: Some(0) })]
        );
    }

    #[test]
    fn levels() {
        assert_eq!(level_dbfs(&[]), -120.0);
        assert_eq!(level_dbfs(&[0; 160]), -120.0);
        let full: Vec<i16> = (0..160).map(|i| if i % 2 == 0 { 32767 } else { -32767 }).collect();
        assert!(level_dbfs(&full).abs() < 0.01);
        let half: Vec<i16> = full.iter().map(|s| s / 2).collect();
        assert!((level_dbfs(&half) + 6.02).abs() < 0.05);
    }
}
