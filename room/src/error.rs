//! Errors returned by the `room` API.

/// Everything that can go wrong joining or using a room.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// `LIVEKIT_URL` is not a usable ws/wss/http/https URL.
    #[error("invalid LiveKit URL: {0}")]
    InvalidUrl(String),
    /// TCP/TLS/WebSocket connection to the signalling server failed.
    #[error("signalling connection failed: {0}")]
    Connect(String),
    /// The server refused the WebSocket upgrade (401: bad token, 404: no such path, …).
    #[error("server rejected the connection: HTTP {status}: {body}")]
    Rejected {
        /// HTTP status of the refused upgrade.
        status: u16,
        /// Response body, if any (trimmed).
        body: String,
    },
    /// No `join` response in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The server sent something we cannot work with.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server asked us to leave while joining.
    #[error("server sent leave: {0:?}")]
    Left(livekit_protocol::DisconnectReason),
    /// The server told us to join again from scratch (`leave` with action `RECONNECT`, e.g.
    /// `STATE_MISMATCH` for a resume of a session it no longer has).
    #[error("server asked for a full reconnect: {0:?}")]
    ReconnectRequired(livekit_protocol::DisconnectReason),
    /// The server refused a request (`RequestResponse` with an error reason).
    #[error("server refused the request: {reason:?}: {message}")]
    Refused {
        /// The server's reason (`NOT_ALLOWED`, `LIMIT_EXCEEDED`, …).
        reason: livekit_protocol::request_response::Reason,
        /// The server's message, if any.
        message: String,
    },
    /// The server answered a resume with a fresh `join`: it does not keep sessions across a
    /// signalling drop.
    #[error("server does not support resuming this session")]
    ResumeUnsupported,
    /// Only relayed candidates may be used (`IceTransportPolicy::Relay`, or the server's
    /// `force_relay`) and no TURN relay could be had: none offered, or every allocation failed.
    #[error("no TURN relay: {0}")]
    Relay(String),
    /// WebRTC (str0m) failure.
    #[error("webrtc error: {0}")]
    Rtc(String),
    /// Local socket failure.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// Opus failure.
    #[error("opus error: {0}")]
    Opus(String),
    /// A sample rate Opus cannot take directly (use 8000, 12000, 16000, 24000 or 48000).
    #[error("unsupported sample rate {0} Hz (use 8000, 12000, 16000, 24000 or 48000)")]
    InvalidSampleRate(u32),
    /// The server's `enabled_publish_codecs` does not include this codec.
    #[error("the server does not enable {0} for publishing")]
    CodecNotEnabled(&'static str),
    /// A bounded queue was full; the request was dropped.
    #[error("queue full: {0}")]
    QueueFull(&'static str),
    /// The data packet is larger than the channel allows.
    #[error("data packet of {0} bytes is too large")]
    TooLarge(usize),
    /// The room is closed (or its driver task ended).
    #[error("room closed")]
    Closed,
}
