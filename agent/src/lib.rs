//! The callbridge voice agent: joins call rooms (directly with `--room`, or through LiveKit agent
//! dispatch), finds the phone participant (kind `sip`) and holds the conversation: VAD →
//! streaming STT → streaming LLM → sentence-by-sentence streaming TTS, or OpenAI Realtime, with
//! barge-in, form filling from the agent file, transcripts on the room's data channel, a SQLite
//! call record and per-turn latency metrics.
//!
//! * [`conversation`]: one call's conversation as a sans-IO state machine (both modes).
//! * [`call`]: drives it for one call in a room; [`reply_task`], [`ears`], [`realtime_link`],
//!   [`outbox`], [`dialer`] (warm transfer's `CreateSIPParticipant`) are its I/O.
//! * [`config`]: command line / environment and the agent file format.
//! * [`worker`]: joining rooms (`--room`, and the `/agent` dispatch protocol).
//! * [`vad`]: voice activity; [`dialog`]: the rule-based dialog behind the offline LLM.
//! * [`record`], [`metrics`]: call records and Prometheus metrics.
//! * [`providers`]: STT/LLM/TTS interfaces, vendor clients and the offline stack;
//!   [`stack`] chooses them.

pub mod call;
mod call_events;
pub mod config;
pub mod conversation;
pub mod dialer;
pub mod dialog;
pub mod ears;
pub mod metrics;
pub mod outbox;
pub mod providers;
pub mod realtime_link;
pub mod record;
pub mod reply_task;
pub mod silence_fill;
pub mod stack;
pub mod token;
pub mod vad;
pub mod worker;
