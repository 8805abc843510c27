//! An answering machine on the line (outbound calls): Twilio's asynchronous answering-machine
//! detection reaches the agent as the phone participant's `sip.twilio.answeredBy`, and the agent
//! file's `[outbound] on_machine` says what to do.
//!
//! * `human`, `unknown` (or nothing at all, as on inbound calls): the conversation goes on.
//! * `machine_start` (the greeting is playing): the agent stops talking and stops listening —
//!   the greeting is not a caller's turn — and waits for its end (`machine_wait_ms` at most; with
//!   Twilio's `Enable` mode the end is never reported), then leaves the message.
//! * `machine_end_beep` / `_silence` / `_other` (the greeting is over, recording now): the
//!   message, then hang up. The message is a final line: a voicemail's noises do not stop it.
//! * `on_machine = "hangup"`, or `fax`: hang up at once, nothing said.

use std::time::{Duration, Instant};

use super::speech::LineKind;
use super::{Conversation, EndAction, FinishReason, Voice};
use crate::config::OnMachine;

/// The longest a voicemail message may take to play before the call is hung up anyway.
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(90);

/// Twilio's `AnsweredBy`, as the bridge parses it (the phone participant's
/// `sip.twilio.answeredBy`).
pub use proto::outbound::AnsweredBy;

/// The machine's greeting has ended (the beep, silence, or something else after it).
fn greeting_over(v: AnsweredBy) -> bool {
    matches!(v, AnsweredBy::MachineEndBeep | AnsweredBy::MachineEndSilence | AnsweredBy::MachineEndOther)
}

/// Where a call with a machine on the line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Machine {
    /// The greeting plays; leave the message at `until` if its end is not reported.
    Waiting { until: Instant },
    /// The message is being left, or the call hung up.
    Done,
}

impl Conversation {
    /// A machine is on the line: the caller's sound is not a conversation any more.
    pub(super) fn machine_on_line(&self) -> bool {
        self.machine.is_some()
    }

    pub(super) fn machine_deadline(&self) -> Option<Instant> {
        match self.machine {
            Some(Machine::Waiting { until }) => Some(until),
            _ => None,
        }
    }

    pub(super) fn on_answered_by(&mut self, v: AnsweredBy) {
        if self.machine == Some(Machine::Done) || self.pending_end.is_some() {
            return;
        }
        tracing::info!(answered_by = v.as_str(), "answering-machine detection");
        match v {
            // Twilio does not take a verdict back: a late `human` after `machine_start` is
            // ignored, the message is still left.
            AnsweredBy::Human | AnsweredBy::Unknown if self.machine.is_some() => {
                tracing::warn!("answeredBy changed after a machine was detected; ignored")
            }
            AnsweredBy::Human | AnsweredBy::Unknown => {}
            AnsweredBy::Fax => self.machine_hang_up(),
            _ if self.spec.outbound.on_machine == OnMachine::Hangup => self.machine_hang_up(),
            // Already waiting for the greeting's end.
            AnsweredBy::MachineStart if self.machine.is_some() => {}
            AnsweredBy::MachineStart => {
                self.stop_listening();
                let wait = Duration::from_millis(self.spec.outbound.machine_wait_ms as u64);
                self.machine = Some(Machine::Waiting { until: self.now + wait });
            }
            v if greeting_over(v) => self.leave_message(),
            _ => {}
        }
    }

    /// `machine_start` came but not the greeting's end: leave the message anyway.
    pub(super) fn machine_timers(&mut self) {
        if self.machine_deadline().is_some_and(|t| self.now >= t) {
            tracing::info!("no end of the voicemail greeting reported; leaving the message");
            self.leave_message();
        }
    }

    fn leave_message(&mut self) {
        self.stop_listening();
        self.machine = Some(Machine::Done);
        let msg = self.spec.outbound.machine_message.clone();
        let speech = self.say(LineKind::MachineMessage, &msg, Voice::Main);
        self.end_after_within(
            Some(speech),
            EndAction::Hangup { reason: "voicemail message left" },
            FinishReason::Machine { message_left: true },
            MESSAGE_DEADLINE,
        );
    }

    /// Stops the agent, and forgets the far end's sound so far: it is no caller (a greeting
    /// heard as speech that never ends would stop the message).
    fn stop_listening(&mut self) {
        self.stop_everything();
        self.caller = Default::default();
        self.cascaded_forget_turn();
    }

    fn machine_hang_up(&mut self) {
        self.stop_listening();
        self.machine = Some(Machine::Done);
        self.end_after(None, EndAction::Hangup { reason: "answering machine" }, FinishReason::Machine { message_left: false });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_values_round_trip_and_only_the_ends_of_a_greeting_end_it() {
        for v in ["human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"] {
            assert_eq!(AnsweredBy::parse(v).map(AnsweredBy::as_str), Some(v));
        }
        assert_eq!(AnsweredBy::parse("MACHINE_START"), None);
        assert_eq!(AnsweredBy::parse(""), None);
        let ends: Vec<AnsweredBy> = ["human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"]
            .into_iter()
            .filter_map(AnsweredBy::parse)
            .filter(|&v| greeting_over(v))
            .collect();
        assert_eq!(ends, [AnsweredBy::MachineEndBeep, AnsweredBy::MachineEndSilence, AnsweredBy::MachineEndOther]);
    }
}
