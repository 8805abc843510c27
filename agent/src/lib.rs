//! The callbridge voice agent: joins call rooms (directly with `--room`, or through LiveKit agent
//! dispatch), finds the phone participant (kind `sip`) and holds the conversation:
//! VAD → streaming STT → streaming LLM → sentence-by-sentence streaming TTS, with barge-in,
//! form filling from the agent file, transcripts on the room's data channel, a SQLite call
//! record and per-turn latency metrics.
//!
//! * [`config`]: command line / environment and the agent file format.
//! * [`worker`]: joining rooms (`--room`, and the `/agent` dispatch protocol).
//! * [`session`]: one call's conversation loop.
//! * [`realtime_session`]: the same call on OpenAI Realtime (speech to speech, μ-law both ways).
//! * [`vad`], [`turn`]: voice activity; what the caller heard and barge-in trimming.
//! * [`dialog`]: the rule-based dialog behind the offline LLM.
//! * [`record`], [`metrics`]: call records and Prometheus metrics.
//! * [`providers`]: STT/LLM/TTS interfaces, vendor clients and the offline stack.

mod call_events;
pub mod config;
pub mod conversation;
pub mod dialog;
pub mod metrics;
pub mod providers;
pub mod realtime_session;
pub mod record;
pub mod session;
pub mod silence_fill;
pub mod stack;
pub mod token;
pub mod turn;
pub mod vad;
pub mod worker;
