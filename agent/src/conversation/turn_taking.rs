//! When the caller's sound stops the agent, and when it does not.
//!
//! * **Words interrupt.** While the agent speaks, a transcript with at least
//!   `min_interruption_words` words that are not backchannels ("uh-huh", "okay", "yeah", …),
//!   after at least `min_interrupt_ms` of speech, stops it for good.
//! * **Long speech stops it for a moment.** Caller speech lasting `vad_interrupt_ms` stops the
//!   agent before the recogniser has words. If words follow, that is an interruption; if the
//!   caller's sound ends and `false_interruption_timeout_ms` passes without them (a cough, a door,
//!   noise), or the turn turns out a backchannel, the agent resumes from what the caller heard —
//!   the bridge's report for the stopped utterance, never a guess from timing.
//! * **Noise is not a turn.** A transcript counts only if the voice activity detector heard
//!   speech (`min_speech_ms`) since the last turn and it has a word that is not a filler.

use std::time::{Duration, Instant};

use proto::control::Control;

use super::speech::SpeechState;
use super::{Conversation, Metric, Output, SpeechId, LEAD_ESTIMATE};
use crate::dialog::normalize;

/// Sounds that are no words at all: a transcript of only these is noise.
const FILLERS: [&str; 12] = ["uh", "um", "umm", "er", "erm", "hmm", "mm", "mhm", "ah", "eh", "huh", "hm"];
/// Words a listener says to show they are listening: they do not interrupt.
const BACKCHANNELS: [&str; 16] = [
    "yeah", "yes", "yep", "yup", "okay", "ok", "right", "sure", "alright", "aha", "oh", "uh-huh", "i", "see", "got", "it",
];

/// Words of `text` that are not fillers.
pub fn real_words(text: &str) -> usize {
    normalize(text).split_whitespace().filter(|w| !FILLERS.contains(w)).count()
}

/// Words of `text` that count towards an interruption (neither fillers nor backchannels).
pub fn interrupting_words(text: &str) -> usize {
    normalize(text).split_whitespace().filter(|w| !FILLERS.contains(w) && !BACKCHANNELS.contains(w)).count()
}

/// The caller's side of turn-taking.
#[derive(Debug, Default)]
pub(super) struct Caller {
    pub in_speech: bool,
    pub since: Option<Instant>,
    /// Speech heard since the last turn was taken, ms (a transcript without any is noise).
    pub speech_ms: u32,
    /// When the caller's last speech ended.
    pub eos_at: Option<Instant>,
    /// The speech the caller's sound stopped, waiting for words.
    pub paused: Option<SpeechId>,
    /// When it resumes if no words come.
    pub resume_at: Option<Instant>,
}

/// What caller words mean while the agent talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WordsVerdict {
    /// The agent was not talking.
    NotTalking,
    /// They interrupted it (it is cut now).
    Interrupted,
    /// A backchannel or too few words: the agent talks on.
    TalkOn,
}

impl Conversation {
    fn ms(&self, v: u32) -> Duration {
        Duration::from_millis(v as u64)
    }

    /// The agent's voice is going out, or stopped for the caller and may resume.
    pub(super) fn agent_talking(&self) -> bool {
        self.playout.playing().is_some() || self.caller.paused.is_some()
    }

    /// Caller speech so far, including what is going on now, ms.
    pub(super) fn caller_speech_ms(&self) -> u32 {
        let ongoing = match (self.caller.in_speech, self.caller.since) {
            (true, Some(s)) => self.now.saturating_duration_since(s).as_millis() as u32,
            _ => 0,
        };
        self.caller.speech_ms.saturating_add(ongoing)
    }

    pub(super) fn on_speech_started(&mut self) {
        self.caller.in_speech = true;
        self.caller.since = Some(self.now);
        self.caller.eos_at = None;
        // Still talking: no resuming while the caller's sound goes on.
        self.caller.resume_at = None;
        self.cascaded_speech_started();
    }

    pub(super) fn on_speech_ended(&mut self, at: Instant) {
        if self.caller.in_speech {
            let since = self.caller.since.unwrap_or(at);
            self.caller.speech_ms = self.caller.speech_ms.saturating_add(at.saturating_duration_since(since).as_millis() as u32);
        }
        self.caller.in_speech = false;
        self.caller.eos_at = Some(at);
        if self.caller.paused.is_some() {
            self.caller.resume_at = Some(self.now + self.ms(self.spec.turn.false_interruption_timeout_ms));
        }
        self.cascaded_speech_ended();
    }

    pub(super) fn caller_deadline(&self) -> Option<Instant> {
        let long_speech = match (self.caller.in_speech, self.caller.since) {
            (true, Some(s)) if self.playout.playing().is_some() => Some(s + self.ms(self.spec.turn.vad_interrupt_ms)),
            _ => None,
        };
        [long_speech, self.caller.resume_at].into_iter().flatten().min()
    }

    pub(super) fn caller_timers(&mut self) {
        let now = self.now;
        if let (true, Some(s)) = (self.caller.in_speech, self.caller.since) {
            if self.playout.playing().is_some() && now >= s + self.ms(self.spec.turn.vad_interrupt_ms) {
                self.stop_for_caller();
            }
        }
        if self.caller.resume_at.is_some_and(|t| now >= t) {
            self.resume_after_false_interruption();
        }
    }

    /// Caller words (interim or final) while the agent may be talking.
    pub(super) fn caller_words(&mut self, text: &str, turn_end: bool) -> WordsVerdict {
        if !self.agent_talking() {
            return WordsVerdict::NotTalking;
        }
        let words = interrupting_words(text) as u32;
        let long_enough = !self.caller.in_speech
            || self.caller.since.is_some_and(|s| self.now >= s + self.ms(self.spec.turn.min_interrupt_ms));
        if words >= self.spec.turn.min_interruption_words.max(1) && long_enough {
            self.commit_interruption();
            return WordsVerdict::Interrupted;
        }
        if turn_end {
            self.out.push_back(Output::Metric(Metric::Backchannel));
            if self.caller.paused.is_some() {
                self.resume_after_false_interruption();
            }
        }
        WordsVerdict::TalkOn
    }

    /// Pauses the speech being played and clears the bridge. Returns it.
    fn pause_for_caller(&mut self) -> Option<SpeechId> {
        if let Some(p) = self.caller.paused {
            return Some(p);
        }
        let (speech, pushed_ms) = self.playout.pause(self.now)?;
        let label = self.speech(speech).and_then(|s| s.wire().map(str::to_string));
        tracing::info!(utterance = ?label, "caller speaks over the agent: stopped");
        self.out.push_back(Output::Control(Control::Interrupt { utterance_id: label }));
        if let Some(s) = self.speech_mut(speech) {
            s.state = SpeechState::Paused { pushed_ms };
        }
        Some(speech)
    }

    /// Long caller speech without words yet: stop, and wait for words (or resume).
    fn stop_for_caller(&mut self) {
        if self.caller.paused.is_some() {
            return;
        }
        let Some(speech) = self.pause_for_caller() else { return };
        self.caller.paused = Some(speech);
        if !self.spec.turn.resume_false_interruption {
            self.commit_interruption();
        }
    }

    /// The caller interrupted: the speech stops for good and is trimmed to what they heard.
    pub(super) fn commit_interruption(&mut self) {
        let speech = match self.caller.paused.take() {
            Some(s) => Some(s),
            None => self.pause_for_caller(),
        };
        self.caller.resume_at = None;
        let Some(speech) = speech else { return };
        tracing::info!(speech, "interruption");
        self.out.push_back(Output::Metric(Metric::Interruption));
        self.cut(speech);
        self.cancel_pending_end_for(speech);
        self.engine_interrupted(speech);
    }

    /// No words came: play on from what the caller heard.
    pub(super) fn resume_after_false_interruption(&mut self) {
        self.caller.resume_at = None;
        let Some(speech) = self.caller.paused.take() else { return };
        let Some(s) = self.speech_mut(speech) else { return };
        let SpeechState::Paused { pushed_ms } = s.state else { return };
        let from = match (s.bridge_final, s.bridge_heard) {
            (true, Some(h)) => h.min(pushed_ms),
            _ => pushed_ms.saturating_sub(LEAD_ESTIMATE.as_millis() as u32),
        };
        s.state = SpeechState::Playing;
        s.bridge_final = false;
        tracing::info!(speech, from_ms = from, "false interruption: resuming");
        self.playout.resume(from);
        self.out.push_back(Output::Metric(Metric::FalseInterruption));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_backchannels() {
        assert_eq!(real_words("Uh, um... hmm"), 0);
        assert_eq!(real_words("okay"), 1);
        assert_eq!(interrupting_words("uh-huh, okay, yeah"), 0);
        assert_eq!(interrupting_words("yeah yeah I see"), 0);
        assert_eq!(interrupting_words("no wait, that's wrong"), 4);
        assert_eq!(interrupting_words("stop please"), 2);
    }
}
