//! A LiveKit participant in pure Rust: no libwebrtc.
//!
//! * **Signalling** (`signal.rs`): the v0 `/rtc` WebSocket with binary protobuf
//!   `SignalRequest` / `SignalResponse` from the `livekit-protocol` crate, token in
//!   `Authorization: Bearer`, keepalive with `ping_req`, resume with `reconnect=1&sid=…`, and a
//!   full rejoin when the server cannot resume.
//! * **WebRTC** (`peer.rs`): two sans-IO [str0m](https://docs.rs/str0m) peer connections, the
//!   v0 "dual PC" layout — the *publisher* (we offer: our audio + the `_reliable` / `_lossy`
//!   data channels) and the *subscriber* (the server offers: other participants' tracks and its
//!   data channels).
//! * **Audio** ([`audio`]): Opus via libopus, encoded from the caller's rate
//!   (8/16/24/48 kHz in, 48 kHz RTP clock) and decoded straight to the rate a consumer asks
//!   for.
//! * **Data** ([`data`]): `DataPacket` user packets (topic, destinations) and SIP
//!   DTMF.
//! * **Driver** (`room.rs`): one tokio task per room owns the WebSocket, both peers and their
//!   UDP sockets; [`Room`] handles, [`AudioSink`]s and [`AudioStream`]s talk to it through
//!   bounded channels. `Peer` never sees a socket, so many rooms can later share one UDP
//!   socket (see the `peer` module docs for how and the one caveat).
//!
//! Every queue is bounded: a slow consumer loses frames or events and a counter
//! ([`RoomStats`], [`AudioStream::dropped_packets`], [`AudioSink::dropped_frames`]) says so.
//! Malformed signalling, RTP or data never panics: it is logged, counted and skipped, or the
//! room disconnects cleanly with a [`DisconnectReason`].
//!
//! * **ICE** : a host UDP candidate, an active ICE-TCP one (`ice_tcp.rs`) and a relayed
//!   candidate per TURN server of the join's `ice_servers` (`turn.rs`, sans-IO on
//!   `turn-client-proto`; TURN over UDP, TCP and TLS, links in `turn_link.rs`). RFC 8445
//!   priorities make ICE prefer direct paths; [`IceTransportPolicy::Relay`] (or the server's
//!   `force_relay`) uses relays only.
//!
//! Not supported: video, STUN server-reflexive gathering (LiveKit servers learn our NAT address
//! as a peer-reflexive candidate), the v1 single-PC path, E2EE, data streams.
//!
//! # Example
//!
//! Join, publish 20 ms frames of 8 kHz PCM, play whatever audio others publish, talk on the
//! data channel:
//!
//! ```no_run
//! use room::{AudioTrackOptions, DataPacketBuilder, Room, RoomEvent, RoomOptions};
//!
//! # async fn run(url: &str, token: &str) -> Result<(), room::RoomError> {
//! let (room, mut events) = Room::connect(url, token, RoomOptions::default()).await?;
//! let mut sink = room
//!     .publish_audio(AudioTrackOptions { sample_rate: 8_000, dtx: true, ..Default::default() })
//!     .await?;
//! tokio::spawn(async move {
//!     let mut t = tokio::time::interval(std::time::Duration::from_millis(20));
//!     loop {
//!         t.tick().await;
//!         let frame = [0i16; 160]; // 20 ms at 8 kHz, from the phone leg
//!         if sink.push(&frame).await.is_err() {
//!             break;
//!         }
//!     }
//! });
//! room.send_data(DataPacketBuilder::new(b"hello".to_vec()).topic("chat")).await?;
//! while let Some(ev) = events.recv().await {
//!     match ev {
//!         RoomEvent::TrackSubscribed { track, participant } => {
//!             let mut pcm = track.stream(8_000)?; // decoder outputs 8 kHz directly
//!             tokio::spawn(async move {
//!                 while let Some(frame) = pcm.recv().await {
//!                     // frame.samples: 160 samples of 8 kHz mono from `participant`
//!                     let _ = (&participant.identity, frame.samples.len());
//!                 }
//!             });
//!         }
//!         RoomEvent::DataReceived(m) => println!("{}: {:?}", m.participant_identity, m.payload),
//!         RoomEvent::Disconnected(reason) => {
//!             println!("room ended: {reason:?}");
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! room.close().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod audio;
pub mod data;
mod error;
mod ice_tcp;
pub mod events;
mod peer;
mod room;
mod signal;
mod turn;
mod turn_link;
#[cfg(test)]
mod testing;

pub use audio::{
    AudioCodec, AudioFrame, AudioSink, AudioStream, AudioTrackOptions, OpusDecoder, OpusEncoder, PhoneAudio, PhoneFrame, PhoneStream, PushError,
    RemoteAudioTrack, SendLatencyObserver, SinkStats,
};
pub use data::{DataKind, DataMessage, DataPacketBuilder, DtmfMessage};
pub use error::RoomError;
pub use events::{DisconnectReason, Participant, ParticipantKind, ReconnectKind, RoomEvent, TrackInfo, TrackKind};
pub use room::{IceTransportPolicy, Room, RoomOptions, RoomStats};

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub use room::fuzzing;

/// Re-export of the protocol types this crate speaks (`TrackSource`, `DisconnectReason`, …).
pub use livekit_protocol as proto;
