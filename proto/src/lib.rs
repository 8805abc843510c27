//! Sans-IO core of callbridge: every wire format and timing rule, no sockets, no tasks, no clock.
//!
//! Time always comes in as an argument (`now: Instant`), so pacing, gap fill, marks and barge-in
//! are tested faster than real time, as in str0m.

pub mod signature;
pub mod twilio;
pub mod twiml;
pub mod g711;
pub mod resample;
pub mod pacer;
pub mod control;
pub mod inbound;
pub mod call;
pub mod mixer;
pub mod stream_token;
pub mod dial_policy;
pub mod redact;
pub mod watchdog;
pub mod tones;
pub mod dtmf;
pub mod twirp;
pub mod outbound;
pub mod recording;
