//! devroom: a single-node LiveKit-protocol server for tests and the offline demo.
//!
//! Speaks enough of livekit-server for the official SDKs: `/rtc` signalling (v0, two peer
//! connections), a small SFU on one UDP socket (str0m), LiveKit data packets, the Twirp
//! `RoomService`, webhooks, and agent dispatch (agent workers register on `/agent`; each new
//! room sends a job to the automatic agent or to the agents `CreateRoom` names; the Twirp
//! `AgentDispatchService` — see the `dispatch` module), and an embedded TURN server over UDP
//! and TLS (`turn` module, `--turn-port` / `--turn-tls-port`). Never for production.

// livekit-server still fills the deprecated protobuf fields (UserPacket.participant_sid, …)
// for older clients, and so do we.
#![allow(deprecated)]

pub mod auth;
pub mod config;
mod dispatch;
mod engine;
mod ice_tcp;
mod peer;
pub mod room;
mod roomservice;
mod server;
mod sfu;
mod signal;
mod twirp;
pub mod turn;
pub mod turn_auth;
mod webhook;

pub use config::Config;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub use engine::fuzzing;
pub use server::{start, Running};
