//! One stretch of agent speech as the conversation tracks it: what it says, how far it got,
//! what the bridge says the caller heard of it, and how it ended.

use std::time::Instant;

use super::heard::{heard_text, Segment};
use super::io::ReplyId;
use super::playout::SpeechId;
use crate::metrics::TurnClock;

/// A line the agent says by itself (not the model's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Greeting,
    /// "Sorry, could you say that again?" after a failed reply.
    Reprompt,
    /// The agent file's closing line (form complete).
    Closing,
    /// `end_call`'s message.
    Goodbye,
    TransferLine,
    /// The vendor failed: sorry, goodbye (then hang up).
    Apology,
    /// The agent is shutting down: goodbye (then hang up).
    Shutdown,
    /// The message left on an answering machine (then hang up).
    MachineMessage,
    /// The soft tone the caller hears on hold (a warm transfer).
    Hold,
    /// What the person a warm transfer dialled hears about the caller.
    Brief,
}

impl LineKind {
    /// Lines the caller cannot talk over: the call ends after them whatever is said.
    pub fn is_final(self) -> bool {
        matches!(self, LineKind::Apology | LineKind::Shutdown | LineKind::MachineMessage)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A reply task of ours: the LLM's words.
    Reply(ReplyId),
    /// A reply task speaking a line of ours.
    Line { reply: ReplyId, kind: LineKind },
    /// A Realtime assistant item.
    Item { item_id: String, response_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechState {
    /// Waiting in the playout (or for audio).
    Queued,
    Playing,
    /// Stopped by caller sound; may resume or be cut.
    Paused { pushed_ms: u32 },
    /// All of it was pushed.
    Finished,
    /// Stopped for good after `pushed_ms` (an interruption, or the call ended).
    Cut { pushed_ms: u32 },
}

#[derive(Debug, Clone)]
pub struct Speech {
    pub id: SpeechId,
    pub origin: Origin,
    /// Its sentences as spoken (a Realtime item: its transcript).
    pub texts: Vec<String>,
    pub state: SpeechState,
    /// The names it went out under (a resumed speech gets a new one) and where in the speech
    /// each starts, ms.
    pub wires: Vec<(String, u32)>,
    /// The bridge's latest heard position, ms into the speech.
    pub bridge_heard: Option<u32>,
    /// The bridge's final report for an interrupted playback came.
    pub bridge_final: bool,
    /// The bridge says all of it played.
    pub complete: bool,
    /// Sentence positions and total length, once it left the playout.
    pub segments: Vec<Segment>,
    pub length_ms: u32,
    pub cut_at: Option<Instant>,
    pub finished_at: Option<Instant>,
    pub clock: TurnClock,
    /// Its row in the call record: (seq, started_ms).
    pub record: Option<(u32, i64)>,
    /// Its heard text is final and recorded.
    pub settled: bool,
    /// Some audio of it went out.
    pub spoke: bool,
}

impl Speech {
    pub fn new(id: SpeechId, origin: Origin) -> Speech {
        Speech {
            id,
            origin,
            texts: Vec::new(),
            state: SpeechState::Queued,
            wires: Vec::new(),
            bridge_heard: None,
            bridge_final: false,
            complete: false,
            segments: Vec::new(),
            length_ms: 0,
            cut_at: None,
            finished_at: None,
            clock: TurnClock::default(),
            record: None,
            settled: false,
            spoke: false,
        }
    }

    pub fn full_text(&self) -> String {
        self.texts.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
    }

    pub fn line_kind(&self) -> Option<LineKind> {
        match self.origin {
            Origin::Line { kind, .. } => Some(kind),
            _ => None,
        }
    }

    pub fn reply(&self) -> Option<ReplyId> {
        match self.origin {
            Origin::Reply(r) | Origin::Line { reply: r, .. } => Some(r),
            Origin::Item { .. } => None,
        }
    }

    /// The label the bridge knows it by now.
    pub fn wire(&self) -> Option<&str> {
        self.wires.last().map(|(l, _)| l.as_str())
    }

    /// Best knowledge of what the caller heard, ms: the bridge's report, else what was pushed.
    pub fn heard_ms(&self) -> u32 {
        match self.state {
            SpeechState::Finished => self.length_ms,
            SpeechState::Cut { pushed_ms } | SpeechState::Paused { pushed_ms } => {
                self.bridge_heard.unwrap_or(pushed_ms).min(pushed_ms)
            }
            SpeechState::Queued | SpeechState::Playing => self.bridge_heard.unwrap_or(0),
        }
    }

    /// The heard part of its text.
    pub fn heard_text(&self) -> String {
        if self.state == SpeechState::Finished {
            return self.full_text();
        }
        heard_text(&self.segments, self.heard_ms(), self.length_ms)
    }

    /// It is over: played or cut.
    pub fn is_over(&self) -> bool {
        matches!(self.state, SpeechState::Finished | SpeechState::Cut { .. })
    }
}
