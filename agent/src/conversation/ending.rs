//! How a call ends: the last line, then `hangup` or `transfer` once the caller heard it (the
//! bridge says so, or [`END_GRACE`] after its last frame, never later than [`END_DEADLINE`]);
//! provider failures (reprompt, then apology and hang-up); shutting down; the outcome.

use std::time::Instant;

use proto::control::Control;

use super::speech::{LineKind, Speech, SpeechState};
use super::{Conversation, EndAction, FinishReason, Metric, Output, Outcome, PendingEnd, SpeechId, Stage, Voice};
use super::{APOLOGY_LINE, END_DEADLINE, END_GRACE, MAX_FAILURES, REPROMPT_LINE, SHUTDOWN_LINE};

impl Conversation {
    /// The call ends with `action` once `speech` (if any) has been heard.
    pub(super) fn end_after(&mut self, speech: Option<SpeechId>, action: EndAction, reason: FinishReason) {
        self.end_after_within(speech, action, reason, END_DEADLINE);
    }

    /// As [`end_after`](Self::end_after), for a line that may take longer than [`END_DEADLINE`].
    pub(super) fn end_after_within(&mut self, speech: Option<SpeechId>, action: EndAction, reason: FinishReason, within: std::time::Duration) {
        self.pending_end = Some(PendingEnd { speech, await_item: false, action, reason, deadline: self.now + within });
        self.check_pending_end();
    }

    /// The call ends with `action` once the next Realtime item (the last line) was heard.
    pub(super) fn end_after_next_item(&mut self, action: EndAction, reason: FinishReason) {
        self.pending_end = Some(PendingEnd { speech: None, await_item: true, action, reason, deadline: self.now + END_DEADLINE });
    }

    pub(super) fn pending_end_grace(&self) -> Option<Instant> {
        let pe = self.pending_end.as_ref()?;
        let s = self.speech(pe.speech?)?;
        s.finished_at.map(|t| t + END_GRACE)
    }

    pub(super) fn check_pending_end(&mut self) {
        let Some(pe) = &self.pending_end else { return };
        let now = self.now;
        let done = !pe.await_item && match pe.speech.and_then(|id| self.speech(id)) {
            None => true,
            Some(s) => match s.state {
                SpeechState::Finished => s.complete || !s.spoke || s.finished_at.is_some_and(|t| now >= t + END_GRACE),
                SpeechState::Cut { .. } => true,
                _ => false,
            },
        };
        if !(done || now >= pe.deadline) {
            return;
        }
        let Some(pe) = self.pending_end.take() else { return };
        let control = match pe.action {
            EndAction::Hangup { reason } => {
                tracing::info!(reason, "hanging up");
                Control::Hangup { reason: Some(reason.into()) }
            }
            EndAction::Transfer { number } => {
                tracing::info!("transferring the call");
                Control::Transfer { to: number }
            }
        };
        self.out.push_back(Output::Control(control));
        self.finish(pe.reason);
    }

    /// The caller talked over a goodbye: the call goes on (never after an apology).
    pub(super) fn cancel_pending_end_for(&mut self, speech: SpeechId) {
        let cancel = self.pending_end.as_ref().is_some_and(|pe| {
            pe.speech == Some(speech) && !self.speech(speech).and_then(|s| s.line_kind()).is_some_and(LineKind::is_final)
        });
        if cancel {
            tracing::info!("caller spoke over the last line; the call goes on");
            self.pending_end = None;
        }
    }

    /// A reply failed: ask again, or after [`MAX_FAILURES`] (or a fatal error) apologise and
    /// hang up. Never dead air.
    pub(super) fn provider_failed(&mut self, stage: Stage, error: &str, fatal: bool) {
        self.failures += 1;
        self.out.push_back(Output::Metric(Metric::ProviderError(stage)));
        tracing::warn!(stage = stage.as_str(), %error, failures = self.failures, "reply failed");
        if fatal || self.failures >= MAX_FAILURES {
            self.give_up(stage, error);
        } else {
            let voice = if stage == Stage::Tts { Voice::Fallback } else { Voice::Main };
            self.say(LineKind::Reprompt, REPROMPT_LINE, voice);
        }
    }

    /// The call cannot go on: a last apology (the local voice when the failing part is the one
    /// that speaks), then hang up.
    pub(super) fn give_up(&mut self, stage: Stage, error: &str) {
        if self.pending_end.as_ref().is_some_and(|pe| pe.reason.is_error()) {
            return;
        }
        tracing::error!(stage = stage.as_str(), %error, "giving up on the call");
        self.stop_everything();
        let voice = if matches!(stage, Stage::Tts | Stage::Realtime) { Voice::Fallback } else { Voice::Main };
        let speech = self.say(LineKind::Apology, APOLOGY_LINE, voice);
        let reason = FinishReason::Error { stage, message: error.to_string() };
        self.end_after(Some(speech), EndAction::Hangup { reason: "agent unavailable" }, reason);
    }

    /// Shutting down: whatever is going on, a goodbye and a hang-up.
    pub(super) fn shut_down(&mut self) {
        if self.pending_end.as_ref().is_some_and(|pe| matches!(pe.reason, FinishReason::Drained | FinishReason::Error { .. })) {
            return;
        }
        self.stop_everything();
        let speech = self.say(LineKind::Shutdown, SHUTDOWN_LINE, Voice::Main);
        self.end_after(Some(speech), EndAction::Hangup { reason: "agent shutting down" }, FinishReason::Drained);
    }

    /// Stops all speech and every reply in flight.
    pub(super) fn stop_everything(&mut self) {
        if let Some((speech, _)) = self.playout.pause(self.now) {
            let label = self.speech(speech).and_then(|s| s.wire().map(str::to_string));
            self.out.push_back(Output::Control(Control::Interrupt { utterance_id: label }));
        }
        let live: Vec<SpeechId> = self.speeches.iter().filter(|s| !s.is_over()).map(|s| s.id).collect();
        for id in live {
            if let Some(r) = self.speech(id).and_then(Speech::reply) {
                self.out.push_back(Output::CancelReply { reply: r });
            }
            self.cut(id);
        }
        self.engine_stop();
    }

    /// Ends the call: settles what was said, then `End`.
    pub(super) fn finish(&mut self, reason: FinishReason) {
        if self.over {
            return;
        }
        let live: Vec<SpeechId> = self.speeches.iter().filter(|s| !s.is_over()).map(|s| s.id).collect();
        for id in live {
            if let Some(r) = self.speech(id).and_then(Speech::reply) {
                self.out.push_back(Output::CancelReply { reply: r });
            }
            self.cut(id);
        }
        let unsettled: Vec<SpeechId> = self.speeches.iter().filter(|s| !s.settled).map(|s| s.id).collect();
        for id in unsettled {
            self.settle(id);
        }
        self.engine_finish();
        self.over = true;
        let outcome = Outcome { reason, fields: self.fields.clone(), turns: self.turns };
        self.out.push_back(Output::End(outcome));
    }
}
