//! What goes into a [`Conversation`](super::Conversation) and what comes out of it.

use std::time::Instant;

use proto::control::Control;

use super::machine::AnsweredBy;
use super::transfer::TransferEvent;
use super::outcome::{Outcome, Stage};
use super::tools::Refusal;
use crate::metrics::TurnTimings;
use crate::providers::openai_realtime::RealtimeEvent;
use crate::providers::{ChatMessage, Fields, SttEvent, ToolCall, ToolSpec};
use crate::record::TurnRow;

/// Our id of one reply task (an LLM reply, or a line spoken with a TTS).
pub type ReplyId = u64;

/// Which synthesiser speaks a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    /// The call's own voice (the stack's TTS).
    Main,
    /// The local last-resort voice, for apologies when the main one (or the Realtime model)
    /// has failed.
    Fallback,
}

/// What a reply task makes.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplySource {
    /// Ask the LLM, speak what it says sentence by sentence.
    Llm { messages: Vec<ChatMessage>, tools: Vec<ToolSpec> },
    /// Speak this line.
    Text(String),
}

/// What a reply task reports (cascaded mode, and spoken lines in both modes).
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyEvent {
    /// The LLM's first text or tool call.
    FirstToken,
    /// Sentence `seg` of the reply went to the TTS.
    Sentence { seg: usize, text: String },
    /// Audio of sentence `seg`, mono PCM at the playout's rate.
    Audio { seg: usize, pcm: Vec<i16> },
    ToolCall(ToolCall),
    /// The LLM finished (`finish_reason` as the vendor said it).
    LlmDone { finish_reason: String },
    /// All of the reply's audio was handed over.
    Done,
    /// The reply failed at `stage`; `fatal`: retrying is pointless (authentication, …).
    Failed { stage: Stage, error: String, fatal: bool },
}

/// What happened, for [`Conversation::handle`](super::Conversation::handle).
#[derive(Debug)]
pub enum Input {
    /// Nothing new: a deadline from `poll_timeout` passed.
    Timeout,
    /// The caller's voice activity detector heard speech begin.
    SpeechStarted,
    /// The caller's speech ended at `at` (its last voiced frame; the detector says so a
    /// hangover later).
    SpeechEnded { at: Instant },
    /// The recogniser (cascaded mode).
    Stt(SttEvent),
    /// A reply task.
    Reply { reply: ReplyId, event: ReplyEvent },
    /// The OpenAI Realtime session (Realtime mode).
    Realtime(RealtimeEvent),
    /// The bridge: how much of one of our utterances the caller heard.
    Playback { utterance_id: String, heard_ms: u32, complete: bool, interrupted: bool },
    /// The bridge: the caller pressed a key.
    Dtmf { digit: String },
    /// Twilio's answering-machine verdict (the phone participant's `sip.twilio.answeredBy`).
    AnsweredBy(AnsweredBy),
    /// The person a warm transfer dialled (the driver's `Output::Dial`).
    Transfer(TransferEvent),
    /// The phone participant left.
    CallerLeft,
    /// The room went away.
    RoomClosed,
    /// The agent is shutting down: say goodbye and hang up now.
    Shutdown,
}

impl Input {
    /// What the far end's sound (or keys) made: nobody's turn once a machine is on the line.
    pub(super) fn is_from_caller(&self) -> bool {
        matches!(self, Input::SpeechStarted | Input::SpeechEnded { .. } | Input::Stt(_) | Input::Dtmf { .. } | Input::Realtime(_))
    }
}

/// A write to the call record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOp {
    /// Insert or replace turn `row.seq`.
    Turn(TurnRow),
    Field { name: String, value: String },
}

/// Something to count.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A caller turn answered.
    Turn,
    Interruption,
    /// The agent stopped for caller sound that brought no words, and resumed.
    FalseInterruption,
    /// Caller words while the agent talked that did not interrupt it.
    Backchannel,
    ProviderError(Stage),
    TurnTimings(TurnTimings),
    ToolRefused(Refusal),
    /// A preemptive reply's transcript was confirmed (kept) or not (thrown away).
    Preemptive { kept: bool },
}

/// What to do, from [`Conversation::poll_output`](super::Conversation::poll_output).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Push this 20 ms frame into the agent's track now.
    Frame(Vec<i16>),
    /// To the bridge (topic `callbridge.control`).
    Control(Control),
    /// Warm transfer: dial `number` (the agent file's, for `destination`) into this room through
    /// the bridge (`CreateSIPParticipant`, `wait_until_answered`) and report with
    /// `Input::Transfer`.
    Dial { destination: String, number: String },
    /// Warm transfer declined or given up: hang up the dialled person's leg (only theirs).
    HangUpTransfer,
    /// Press these keys on the phone line, in order: LiveKit `SipDTMF` packets (as the SDKs'
    /// `publish_dtmf`), which the bridge plays to the far end as tones. Valid keys only.
    PressKeys { keys: String },
    /// A line of the conversation for the room (topic `transcript`); `role` is `user`,
    /// `assistant` or `fields` (a field update with no text).
    Transcript { role: &'static str, text: String, is_final: bool, fields: Fields },
    StartReply { reply: ReplyId, source: ReplySource, voice: Voice },
    CancelReply { reply: ReplyId },
    /// Tell the recogniser to finish the caller's utterance now.
    SttFinalize,
    /// Send this client event to the Realtime session.
    RealtimeSend(serde_json::Value),
    /// Close the Realtime session (the call no longer talks to the model).
    RealtimeClose,
    Record(RecordOp),
    Metric(Metric),
    /// The call is over. Nothing follows.
    End(Outcome),
}
