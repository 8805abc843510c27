//! `callsim`: a Twilio call simulator and load generator for the callbridge bridge.
//!
//! It does what Twilio does for an inbound call: POSTs the signed voice webhook, reads the
//! TwiML, opens the signed Media Streams WebSocket, streams 20 ms μ-law frames on a real-time
//! (or accelerated) clock, models Twilio's outbound playback buffer (marks echoed when their
//! audio has played, `clear` honoured), and reports what the caller would have heard.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! let cfg = callsim::CallConfig::new("http://127.0.0.1:8080")
//!     .auth_token("secret")
//!     .tone(440.0)
//!     .duration_secs(3.0)
//!     .dtmf_at(Duration::from_secs(1), '5');
//! let report = callsim::run_call(cfg.clone()).await?;
//! assert_eq!(report.outcome, callsim::Outcome::Completed);
//!
//! // Act on a call and watch it live.
//! let mut call = callsim::spawn_call(cfg);
//! while let Some(ev) = call.next_event().await {
//!     if let callsim::CallEvent::Mark { name, .. } = ev {
//!         if name == "greeting-done" { call.dtmf('1').await; call.hangup().await; }
//!     }
//! }
//! let report = call.finish().await?;
//! # Ok(()) }
//! ```

pub mod audio_source;
pub mod call;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conversation;
pub mod far_end;
pub mod load;
pub mod playback;
pub mod report;
pub mod sid;
pub mod webhook;

pub use audio_source::AudioSpec;
pub use call::{run_call, spawn_call, stream_urls, Call, CallEvent};
pub use config::{Action, CallConfig, Pace};
pub use conversation::{Conversation, ConversationConfig, Step};
pub use load::run_calls;
pub use playback::{HeardKey, Playback, PlaybackConfig};
pub use report::{Aggregate, ClosedBy, LoadReport, Outcome, Report};
