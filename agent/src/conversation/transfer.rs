//! Warm transfer (cascaded mode): the caller is put on hold, the person is dialled into the same
//! room (the driver's `CreateSIPParticipant` on the bridge, with `wait_until_answered`), the
//! agent briefs them, then leaves — the bridge mixes the room's voices, so caller and person hear
//! each other. If the person does not answer, hangs up, or declines (any key during the brief or
//! the moment after), their leg is hung up, the caller is told, and the conversation goes on.
//!
//! ```text
//! Announcing ──line heard──▶ Dialing (hold tone) ──answered──▶ Briefing ──heard + DECLINE_WINDOW──▶ leave
//!                               │ failed / DIAL_DEADLINE          │ key / person left
//!                               └──────────────▶ failed line, back to the conversation ◀┘
//! ```
//!
//! While it runs the caller's speech and keys are nobody's turn (they are on hold).

use std::time::{Duration, Instant};

use super::speech::{LineKind, Origin, SpeechState};
use super::{Conversation, FinishReason, Output, SpeechId, Voice, END_GRACE};

/// The person's phone rings this long at most (the bridge's ringing timeout is 30 s), plus
/// the time to place the call.
pub const DIAL_DEADLINE: Duration = Duration::from_secs(45);
/// After the brief, how long the person has to decline with a key before the agent leaves.
pub const DECLINE_WINDOW: Duration = Duration::from_secs(3);
/// One stretch of the hold tone (queued again while the hold lasts).
const HOLD_CYCLE_MS: usize = 4000;

/// What the driver reports about the person's leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// The person answered and is in the room.
    Answered,
    /// Busy, no answer, refused, or the dial request failed (`reason` is for the log).
    Failed { reason: String },
    /// The person pressed a key (declines).
    Key,
    /// The person's participant left the room.
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Transfer {
    /// The transfer line plays to the caller.
    Announcing { destination: String, number: String, line: SpeechId },
    /// The person's phone rings; the caller hears the hold tone.
    Dialing { destination: String, hold: Option<SpeechId>, deadline: Instant },
    /// The person hears the brief; `leave_at` once it was heard.
    Briefing { destination: String, brief: SpeechId, leave_at: Option<Instant> },
}

impl Conversation {
    pub(super) fn transferring(&self) -> bool {
        self.transfer.is_some()
    }

    pub(super) fn start_warm_transfer(&mut self, destination: String, number: String) {
        tracing::info!(%destination, "warm transfer: announcing");
        let line = self.spec.transfer_line.clone();
        let line = self.say(LineKind::TransferLine, &line, Voice::Main);
        self.transfer = Some(Transfer::Announcing { destination, number, line });
    }

    pub(super) fn transfer_deadline(&self) -> Option<Instant> {
        match &self.transfer {
            Some(Transfer::Announcing { line, .. }) => self.speech(*line).and_then(|s| s.finished_at).map(|t| t + END_GRACE),
            Some(Transfer::Dialing { deadline, .. }) => Some(*deadline),
            Some(Transfer::Briefing { brief, leave_at, .. }) => {
                leave_at.or_else(|| self.speech(*brief).and_then(|s| s.finished_at).map(|t| t + END_GRACE))
            }
            None => None,
        }
    }

    /// A speech is over: heard whole (the bridge said so, or END_GRACE after its last frame).
    fn heard_out(&self, id: SpeechId) -> bool {
        self.speech(id).is_none_or(|s| match s.state {
            SpeechState::Finished => s.complete || !s.spoke || s.finished_at.is_some_and(|t| self.now >= t + END_GRACE),
            SpeechState::Cut { .. } => true,
            _ => false,
        })
    }

    pub(super) fn transfer_timers(&mut self) {
        let now = self.now;
        match self.transfer.clone() {
            Some(Transfer::Announcing { destination, number, line }) if self.heard_out(line) => {
                tracing::info!(%destination, "warm transfer: dialling");
                self.out.push_back(Output::Dial { destination: destination.clone(), number });
                let hold = self.hold_tone();
                self.transfer = Some(Transfer::Dialing { destination, hold, deadline: now + DIAL_DEADLINE });
            }
            Some(Transfer::Dialing { destination, deadline, .. }) if now >= deadline => {
                self.transfer_failed(&destination, "no answer in time", true);
            }
            Some(Transfer::Dialing { destination, hold, deadline }) if hold.is_none_or(|h| self.speech(h).is_none_or(|s| s.is_over())) => {
                let hold = self.hold_tone();
                self.transfer = Some(Transfer::Dialing { destination, hold, deadline });
            }
            Some(Transfer::Briefing { destination, brief, leave_at: None }) if self.heard_out(brief) => {
                self.transfer = Some(Transfer::Briefing { destination, brief, leave_at: Some(now + DECLINE_WINDOW) });
            }
            Some(Transfer::Briefing { destination, leave_at: Some(t), .. }) if now >= t => {
                tracing::info!(%destination, "warm transfer: the person took the call; leaving");
                self.transfer = None;
                self.finish(FinishReason::Transferred);
            }
            _ => {}
        }
    }

    pub(super) fn on_transfer_event(&mut self, ev: TransferEvent) {
        let Some(t) = self.transfer.clone() else { return };
        match (t, ev) {
            (Transfer::Dialing { destination, .. }, TransferEvent::Answered) => {
                tracing::info!(%destination, "warm transfer: answered; briefing");
                self.stop_everything();
                let text = self.brief_text(&destination);
                let brief = self.say(LineKind::Brief, &text, Voice::Main);
                self.transfer = Some(Transfer::Briefing { destination, brief, leave_at: None });
            }
            (Transfer::Dialing { destination, .. }, TransferEvent::Failed { reason }) => self.transfer_failed(&destination, &reason, false),
            (Transfer::Briefing { destination, .. }, TransferEvent::Key) => self.transfer_failed(&destination, "declined", true),
            (Transfer::Briefing { destination, .. }, TransferEvent::Left | TransferEvent::Failed { .. }) => {
                self.transfer_failed(&destination, "hung up", false)
            }
            (_, ev) => tracing::debug!(?ev, "transfer event ignored in this state"),
        }
    }

    /// The person is not coming: their leg goes (if it is up), the caller hears so, and the
    /// conversation takes the caller's turns again.
    fn transfer_failed(&mut self, destination: &str, reason: &str, hang_up_person: bool) {
        tracing::warn!(%destination, %reason, "warm transfer failed; back to the caller");
        self.stop_everything();
        if hang_up_person {
            self.out.push_back(Output::HangUpTransfer);
        }
        self.transfer = None;
        self.caller = Default::default();
        self.cascaded_note(&format!("(The transfer to {destination} did not happen: {reason}. The caller is back with you.)"));
        let line = self.spec.transfer_failed_line.replace("{destination}", destination);
        self.say(LineKind::Reprompt, &line, Voice::Main);
    }

    /// What the person hears: who is calling and what the form has so far.
    fn brief_text(&self, destination: &str) -> String {
        let mut s = format!("Hello, this is the {} line with a caller for {destination}.", self.spec.name);
        let known: Vec<String> = self.spec.fields.iter().filter_map(|f| self.fields.get(&f.name).map(|v| format!("{}: {v}", f.name.replace('_', " ")))).collect();
        if !known.is_empty() {
            s.push_str(&format!(" {}.", known.join(", ")));
        }
        s.push_str(" Press any key to decline, or stay on the line to take the call.");
        s
    }

    /// A soft tone the caller hears on hold: 400 ms of 440 Hz at about -30 dBFS, then quiet,
    /// [`HOLD_CYCLE_MS`] in all. Played through the playout like any speech (named to the
    /// bridge), so cutting it is exact.
    fn hold_tone(&mut self) -> Option<SpeechId> {
        let rate = self.playout.rate() as usize;
        let reply = self.next_reply;
        self.next_reply += 1;
        let id = self.new_speech(Origin::Line { reply, kind: LineKind::Hold }, false);
        let tone = rate * 400 / 1000;
        let pcm: Vec<i16> = (0..rate * HOLD_CYCLE_MS / 1000)
            .map(|i| if i < tone { (1000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate as f64).sin()) as i16 } else { 0 })
            .collect();
        if !self.playout.push(id, 0, &pcm) {
            return None;
        }
        self.playout.end(id);
        Some(id)
    }
}
