//! How a call ended, typed. The call record and the `--room` mode's JSON keep the strings older
//! versions wrote (`completed`, `caller_hung_up`, `error: stt: …`), so they come from `Display`.

use std::fmt;

use crate::providers::Fields;

/// Which part of the agent failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Stt,
    Llm,
    Tts,
    Realtime,
    /// Joining, publishing, subscribing: before the conversation could start.
    Setup,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stt => "stt",
            Stage::Llm => "llm",
            Stage::Tts => "tts",
            Stage::Realtime => "realtime",
            Stage::Setup => "setup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// Every field recorded, then the agent hung up.
    Completed,
    /// The agent hung up (`end_call`) before the form was complete.
    CallerGoodbye,
    /// Handed to a person (`transfer`).
    Transferred,
    /// The phone participant left (or its status went to `hangup`).
    CallerHungUp,
    /// Nobody to talk to: the phone participant never came.
    NoCaller,
    /// The room went away under us.
    RoomClosed,
    /// The agent is shutting down: it said goodbye and hung up.
    Drained,
    /// An answering machine (or a fax) answered: the agent left its message, or hung up.
    Machine { message_left: bool },
    /// A vendor or the setup failed; the caller heard an apology and the call was hung up.
    Error { stage: Stage, message: String },
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinishReason::Completed => f.write_str("completed"),
            FinishReason::CallerGoodbye => f.write_str("caller_goodbye"),
            FinishReason::Transferred => f.write_str("transferred"),
            FinishReason::CallerHungUp => f.write_str("caller_hung_up"),
            FinishReason::NoCaller => f.write_str("no_caller"),
            FinishReason::RoomClosed => f.write_str("room_closed"),
            FinishReason::Drained => f.write_str("drained"),
            FinishReason::Machine { message_left: true } => f.write_str("voicemail_left"),
            FinishReason::Machine { message_left: false } => f.write_str("answering_machine"),
            FinishReason::Error { stage, message } => write!(f, "error: {}: {message}", stage.as_str()),
        }
    }
}

impl FinishReason {
    pub fn is_error(&self) -> bool {
        matches!(self, FinishReason::Error { .. })
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub reason: FinishReason,
    pub fields: Fields,
    /// Caller turns answered.
    pub turns: u32,
}

impl Outcome {
    pub fn new(reason: FinishReason) -> Outcome {
        Outcome { reason, fields: Fields::new(), turns: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_the_records_of_older_versions() {
        assert_eq!(FinishReason::CallerHungUp.to_string(), "caller_hung_up");
        let e = FinishReason::Error { stage: Stage::Realtime, message: "HTTP 401".into() };
        assert_eq!(e.to_string(), "error: realtime: HTTP 401");
        assert!(e.is_error() && !FinishReason::Completed.is_error());
    }
}
