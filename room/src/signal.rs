//! LiveKit client signalling over the v0 (`/rtc`, dual peer connection) WebSocket.
//!
//! Frames are binary protobuf: we send `livekit.SignalRequest`, the server sends
//! `livekit.SignalResponse` (types from the `livekit-protocol` crate). The token goes in an
//! `Authorization: Bearer` header. This module has three layers:
//!
//! * pure functions: the join/resume URL ([`rtc_url`]), request builders (`req_*`),
//!   [`decode_response`], trickle-candidate JSON — all unit-tested without a socket;
//! * [`SignalConn`]: one WebSocket, with a writer task fed by a bounded queue and a reader the
//!   room driver polls;
//! * [`connect`]: dial, then wait for `join` (or `reconnect` when resuming).

use std::time::Duration;

use futures_util::stream::{SplitStream, StreamExt};
use futures_util::SinkExt;
use livekit_protocol as proto;
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::audio::AudioCodec;
use crate::error::RoomError;

/// Protocol version we speak on `/rtc` (the Rust SDK's value).
pub const PROTOCOL_VERSION: u32 = 17;
/// How long to wait for the TCP/TLS/WebSocket handshake and then for `join`/`reconnect`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Outgoing signalling messages waiting for the socket.
const WRITE_QUEUE: usize = 256;
/// Largest signalling frame we accept (SDPs of big rooms are tens of KiB).
const MAX_FRAME: usize = 4 << 20;

pub(crate) type Request = proto::signal_request::Message;
pub(crate) type Response = proto::signal_response::Message;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Query parameters of a join.
#[derive(Debug, Clone)]
pub(crate) struct JoinParams {
    pub auto_subscribe: bool,
    pub adaptive_stream: bool,
    pub sdk: String,
    pub version: String,
}

impl Default for JoinParams {
    fn default() -> Self {
        Self { auto_subscribe: true, adaptive_stream: false, sdk: "rust".into(), version: env!("CARGO_PKG_VERSION").into() }
    }
}

/// What a resume dial tells the server: our participant sid and why we are reconnecting
/// (livekit-server restarts the subscriber's ICE, and counts short connections by reason).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resume<'a> {
    pub sid: &'a str,
    pub reason: proto::ReconnectReason,
}

/// Build the `/rtc` WebSocket URL from `LIVEKIT_URL` (ws, wss, http or https; a path prefix is
/// kept). `resume` adds `reconnect=1&sid=…&reconnect_reason=…` for a resume.
pub(crate) fn rtc_url(base: &str, p: &JoinParams, resume: Option<Resume<'_>>) -> Result<Url, RoomError> {
    let mut url = Url::parse(base.trim()).map_err(|e| RoomError::InvalidUrl(format!("{base}: {e}")))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(RoomError::InvalidUrl(format!("unsupported scheme {other:?}"))),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(RoomError::InvalidUrl(format!("{base}: missing host")));
    }
    url.set_scheme(scheme).map_err(|_| RoomError::InvalidUrl(base.into()))?;
    {
        let mut segs = url.path_segments_mut().map_err(|_| RoomError::InvalidUrl(base.into()))?;
        segs.pop_if_empty().push("rtc");
    }
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("sdk", &p.sdk)
            .append_pair("version", &p.version)
            .append_pair("protocol", &PROTOCOL_VERSION.to_string())
            .append_pair("os", std::env::consts::OS)
            .append_pair("auto_subscribe", if p.auto_subscribe { "1" } else { "0" })
            .append_pair("adaptive_stream", if p.adaptive_stream { "1" } else { "0" });
        if let Some(r) = resume {
            q.append_pair("reconnect", "1").append_pair("sid", r.sid).append_pair("reconnect_reason", &(r.reason as i32).to_string());
        }
    }
    Ok(url)
}

/// Encode a request as a binary frame payload.
pub(crate) fn encode_request(msg: Request) -> Vec<u8> {
    proto::SignalRequest { message: Some(msg) }.encode_to_vec()
}

/// Decode a server frame. `Ok(None)`: a valid frame with a message type this protocol version
/// does not know (ignored).
pub(crate) fn decode_response(bytes: &[u8]) -> Result<Option<Response>, RoomError> {
    let r = proto::SignalResponse::decode(bytes).map_err(|e| RoomError::Protocol(format!("bad SignalResponse: {e}")))?;
    Ok(r.message)
}

/// What a server `leave` asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaveAction {
    /// The session is over.
    Disconnect,
    /// Resume this session (`reconnect=1&sid=…`).
    Resume,
    /// Join again from scratch: the server no longer has (or wants) this session.
    Reconnect,
}

/// Classify a `leave`. Protocol ≥ 13 servers say it in `action`; older ones set
/// `can_reconnect` for "join again" (livekit-server `sendLeaveRequest`).
pub(crate) fn leave_action(l: &proto::LeaveRequest) -> LeaveAction {
    use proto::leave_request::Action;
    match Action::try_from(l.action) {
        Ok(Action::Resume) => LeaveAction::Resume,
        Ok(Action::Reconnect) => LeaveAction::Reconnect,
        _ if l.can_reconnect => LeaveAction::Reconnect,
        _ => LeaveAction::Disconnect,
    }
}

/// The error a `leave` received while (re)connecting turns into.
pub(crate) fn leave_error(l: &proto::LeaveRequest) -> RoomError {
    let reason = proto::DisconnectReason::try_from(l.reason).unwrap_or(proto::DisconnectReason::UnknownReason);
    match leave_action(l) {
        LeaveAction::Disconnect => RoomError::Left(reason),
        LeaveAction::Resume | LeaveAction::Reconnect => RoomError::ReconnectRequired(reason),
    }
}

/// Short name of a response, for logs and counters.
pub(crate) fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Join(_) => "join",
        Response::Answer(_) => "answer",
        Response::Offer(_) => "offer",
        Response::Trickle(_) => "trickle",
        Response::Update(_) => "update",
        Response::TrackPublished(_) => "track_published",
        Response::Leave(_) => "leave",
        Response::Mute(_) => "mute",
        Response::SpeakersChanged(_) => "speakers_changed",
        Response::RoomUpdate(_) => "room_update",
        Response::ConnectionQuality(_) => "connection_quality",
        Response::RefreshToken(_) => "refresh_token",
        Response::TrackUnpublished(_) => "track_unpublished",
        Response::Pong(_) => "pong",
        Response::Reconnect(_) => "reconnect",
        Response::PongResp(_) => "pong_resp",
        Response::TrackSubscribed(_) => "track_subscribed",
        Response::RequestResponse(_) => "request_response",
        Response::SubscriptionResponse(_) => "subscription_response",
        _ => "other",
    }
}

pub(crate) fn req_offer(sdp: String) -> Request {
    Request::Offer(proto::SessionDescription { r#type: "offer".into(), sdp, ..Default::default() })
}

pub(crate) fn req_answer(sdp: String) -> Request {
    Request::Answer(proto::SessionDescription { r#type: "answer".into(), sdp, ..Default::default() })
}

/// `RTCIceCandidateInit` as JSON, the `candidateInit` of a trickle.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CandidateInit {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sdpMLineIndex")]
    pub sdp_m_line_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A trickled local candidate (our host candidates travel in the SDP; relayed ones, gathered
/// later, by trickle): on the first m-line, `mid` as our description names it.
pub(crate) fn req_trickle(candidate: &str, target: proto::SignalTarget, mid: &str, ufrag: &str) -> Request {
    let init = CandidateInit {
        candidate: candidate.to_string(),
        sdp_mid: Some(mid.to_string()),
        sdp_m_line_index: Some(0),
        username_fragment: Some(ufrag.to_string()),
    };
    Request::Trickle(proto::TrickleRequest {
        candidate_init: serde_json::to_string(&init).unwrap_or_default(),
        target: target as i32,
        r#final: false,
    })
}

/// Parse a trickle's candidate. `Ok(None)` for the end-of-candidates marker (empty candidate).
pub(crate) fn parse_trickle(t: &proto::TrickleRequest) -> Result<Option<String>, RoomError> {
    let init: CandidateInit =
        serde_json::from_str(&t.candidate_init).map_err(|e| RoomError::Protocol(format!("bad candidateInit: {e}")))?;
    let c = init.candidate.trim();
    if c.is_empty() {
        return Ok(None);
    }
    // str0m wants the `candidate:` prefix; some servers omit it or add `a=`.
    let c = c.strip_prefix("a=").unwrap_or(c);
    Ok(Some(if c.starts_with("candidate:") { c.to_string() } else { format!("candidate:{c}") }))
}

#[allow(deprecated)] // disable_dtx/stereo: still read by older servers
/// `add_track` for an audio track; its codec goes in `simulcast_codecs`, from which
/// livekit-server takes the track's mime type and prefers that codec in its answer.
pub(crate) fn req_add_audio_track(cid: &str, name: &str, source: proto::TrackSource, dtx: bool, codec: AudioCodec) -> Request {
    let dtx = dtx && codec == AudioCodec::Opus;
    Request::AddTrack(proto::AddTrackRequest {
        cid: cid.to_string(),
        name: name.to_string(),
        r#type: proto::TrackType::Audio as i32,
        source: source as i32,
        disable_dtx: !dtx,
        disable_red: true,
        stereo: false,
        audio_features: if dtx { vec![] } else { vec![proto::AudioTrackFeature::TfNoDtx as i32] },
        simulcast_codecs: vec![proto::SimulcastCodec { codec: codec.mime_type().to_string(), cid: cid.to_string(), ..Default::default() }],
        ..Default::default()
    })
}

pub(crate) fn req_leave(reason: proto::DisconnectReason) -> Request {
    Request::Leave(proto::LeaveRequest {
        can_reconnect: false,
        reason: reason as i32,
        action: proto::leave_request::Action::Disconnect as i32,
        regions: None,
    })
}

pub(crate) fn req_ping(now_ms: i64, rtt_ms: i64) -> Request {
    Request::PingReq(proto::Ping { timestamp: now_ms, rtt: rtt_ms })
}

pub(crate) fn req_update_metadata(
    metadata: Option<String>,
    name: Option<String>,
    attributes: std::collections::HashMap<String, String>,
    request_id: u32,
) -> Request {
    Request::UpdateMetadata(proto::UpdateParticipantMetadata {
        metadata: metadata.unwrap_or_default(),
        name: name.unwrap_or_default(),
        attributes,
        request_id,
    })
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------------------------

/// What came off the socket.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one message at a time, moved straight into the handler
pub(crate) enum Incoming {
    Message(Response),
    /// A frame we could not use (bad protobuf, text, unknown type): log, count, continue.
    Malformed(String),
    /// The socket closed or failed.
    Closed(String),
}

impl Incoming {
    /// One binary frame, as the driver takes it.
    pub(crate) fn from_binary(bytes: &[u8]) -> Incoming {
        match decode_response(bytes) {
            Ok(Some(m)) => Incoming::Message(m),
            Ok(None) => Incoming::Malformed("empty or unknown SignalResponse".into()),
            Err(e) => Incoming::Malformed(e.to_string()),
        }
    }
}

/// One signalling WebSocket: a bounded writer queue (drained by a task) and a reader.
pub(crate) struct SignalConn {
    tx: mpsc::Sender<WsMessage>,
    rx: SplitStream<Ws>,
    writer: tokio::task::JoinHandle<()>,
}

impl SignalConn {
    /// Queue a request. Fails only when the writer is gone or the queue is full (the link is
    /// then unusable anyway and the driver treats it as lost).
    pub(crate) fn send(&self, msg: Request) -> Result<(), RoomError> {
        let bytes = encode_request(msg);
        self.tx.try_send(WsMessage::Binary(bytes.into())).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RoomError::QueueFull("signalling"),
            mpsc::error::TrySendError::Closed(_) => RoomError::Closed,
        })
    }

    /// Next thing from the server (cancel-safe).
    pub(crate) async fn recv(&mut self) -> Incoming {
        loop {
            match self.rx.next().await {
                None => return Incoming::Closed("websocket ended".into()),
                Some(Err(e)) => return Incoming::Closed(e.to_string()),
                Some(Ok(WsMessage::Binary(b))) => return Incoming::from_binary(&b),
                Some(Ok(WsMessage::Text(t))) => return Incoming::Malformed(format!("text frame of {} bytes", t.len())),
                Some(Ok(WsMessage::Close(f))) => {
                    return Incoming::Closed(f.map(|f| format!("close {}: {}", f.code, f.reason)).unwrap_or_else(|| "close".into()))
                }
                Some(Ok(_)) => continue, // ping/pong (answered by tungstenite), raw frames
            }
        }
    }

    /// Flush queued requests, send a close frame, and stop the writer (bounded wait).
    pub(crate) async fn close(self) {
        let _ = self.tx.try_send(WsMessage::Close(None));
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer).await;
    }

    /// Drop the link without a close handshake (used when it is already dead).
    pub(crate) fn abort(self) {
        self.writer.abort();
    }
}

fn tls_connector() -> tokio_tungstenite::Connector {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(c)),
        // Cannot happen with the aws-lc provider; fall back to whatever tungstenite defaults to.
        Err(_) => tokio_tungstenite::Connector::Plain,
    }
}

/// Dial the WebSocket (no waiting for `join`).
pub(crate) async fn dial(url: &Url, token: &str) -> Result<SignalConn, RoomError> {
    let mut req = url.as_str().into_client_request().map_err(|e| RoomError::InvalidUrl(e.to_string()))?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| RoomError::Protocol("token has invalid characters".into()))?;
    req.headers_mut().insert("Authorization", auth);
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_FRAME);
    cfg.max_frame_size = Some(MAX_FRAME);
    // Signal messages are small (an SDP is a few KiB); the default 128 KiB read buffer is
    // zero-filled on first read and stays resident for the whole call. Larger frames still fit.
    cfg.read_buffer_size = 8 * 1024;
    let connector = if url.scheme() == "wss" { Some(tls_connector()) } else { None };
    let fut = tokio_tungstenite::connect_async_tls_with_config(req, Some(cfg), true, connector);
    let (ws, _resp) = match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Err(_) => return Err(RoomError::Timeout("websocket handshake")),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).trim().chars().take(300).collect()).unwrap_or_default();
            return Err(RoomError::Rejected { status, body });
        }
        Ok(Err(e)) => return Err(RoomError::Connect(e.to_string())),
        Ok(Ok(x)) => x,
    };
    let (mut sink, rx) = ws.split();
    let (tx, mut wrx) = mpsc::channel::<WsMessage>(WRITE_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = wrx.recv().await {
            let is_close = matches!(m, WsMessage::Close(_));
            if let Err(e) = sink.send(m).await {
                tracing::debug!(error = %e, "signalling write failed");
                break;
            }
            if is_close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    Ok(SignalConn { tx, rx, writer })
}

/// Dial and wait for `join`. Messages that arrive before it are an error (the server sends
/// `join` first).
pub(crate) async fn connect(url: &Url, token: &str) -> Result<(SignalConn, proto::JoinResponse), RoomError> {
    let mut conn = dial(url, token).await?;
    let first = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match conn.recv().await {
                Incoming::Message(Response::Join(j)) => return Ok(j),
                Incoming::Message(Response::Leave(l)) => return Err(leave_error(&l)),
                Incoming::Message(other) => {
                    tracing::warn!(msg = response_name(&other), "message before join; ignored");
                }
                Incoming::Malformed(e) => tracing::warn!(error = %e, "malformed frame before join"),
                Incoming::Closed(why) => return Err(RoomError::Connect(format!("closed before join: {why}"))),
            }
        }
    })
    .await;
    match first {
        Ok(Ok(join)) => Ok((conn, join)),
        Ok(Err(e)) => {
            conn.abort();
            Err(e)
        }
        Err(_) => {
            conn.abort();
            Err(RoomError::Timeout("join response"))
        }
    }
}

/// Dial with `reconnect=1&sid=…` and wait for `reconnect`. Other messages that arrive first are
/// returned so the caller can process them after the resume.
pub(crate) async fn resume(url: &Url, token: &str) -> Result<(SignalConn, proto::ReconnectResponse, Vec<Response>), RoomError> {
    let mut conn = dial(url, token).await?;
    let mut early = Vec::new();
    let r = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match conn.recv().await {
                Incoming::Message(Response::Reconnect(r)) => return Ok(r),
                // livekit-server answers a resume it cannot honour with
                // `leave{STATE_MISMATCH, RECONNECT}` (roommanager.go StartSession).
                Incoming::Message(Response::Leave(l)) => return Err(leave_error(&l)),
                // A server without resume support treats the dial as a fresh join (new sid, new
                // peer connections): our peers do not match it, so this resume failed.
                Incoming::Message(Response::Join(_)) => return Err(RoomError::ResumeUnsupported),
                Incoming::Message(other) => {
                    if early.len() < 256 {
                        early.push(other)
                    }
                }
                Incoming::Malformed(e) => tracing::warn!(error = %e, "malformed frame while resuming"),
                Incoming::Closed(why) => return Err(RoomError::Connect(format!("closed while resuming: {why}"))),
            }
        }
    })
    .await;
    match r {
        Ok(Ok(resp)) => Ok((conn, resp, early)),
        Ok(Err(e)) => {
            conn.abort();
            Err(e)
        }
        Err(_) => {
            conn.abort();
            Err(RoomError::Timeout("reconnect response"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(url: &Url) -> std::collections::HashMap<String, String> {
        url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    }

    #[test]
    fn url_mapping() {
        let p = JoinParams::default();
        let u = rtc_url("http://127.0.0.1:7880", &p, None).unwrap();
        assert_eq!(u.scheme(), "ws");
        assert_eq!(u.path(), "/rtc");
        let m = q(&u);
        assert_eq!(m["protocol"], "17");
        assert_eq!(m["auto_subscribe"], "1");
        assert_eq!(m["sdk"], "rust");
        assert!(!m.contains_key("reconnect"));

        let u = rtc_url("https://lk.example.com/base/", &p, Some(Resume { sid: "PA_abc", reason: proto::ReconnectReason::RrSubscriberFailed })).unwrap();
        assert_eq!(u.scheme(), "wss");
        assert_eq!(u.path(), "/base/rtc");
        let m = q(&u);
        assert_eq!(m["reconnect"], "1");
        assert_eq!(m["sid"], "PA_abc");
        assert_eq!(m["reconnect_reason"], "3");

        assert_eq!(rtc_url("wss://x.livekit.cloud", &p, None).unwrap().as_str().split('?').next().unwrap(), "wss://x.livekit.cloud/rtc");
        assert_eq!(rtc_url("ws://h:1/", &p, None).unwrap().path(), "/rtc");
        assert!(matches!(rtc_url("ftp://h", &p, None), Err(RoomError::InvalidUrl(_))));
        assert!(matches!(rtc_url("not a url", &p, None), Err(RoomError::InvalidUrl(_))));
    }

    #[test]
    fn leave_actions() {
        use livekit_protocol::leave_request::Action;
        let l = |action: Action, can_reconnect: bool| proto::LeaveRequest {
            action: action as i32,
            can_reconnect,
            reason: proto::DisconnectReason::StateMismatch as i32,
            regions: None,
        };
        assert_eq!(leave_action(&l(Action::Reconnect, false)), LeaveAction::Reconnect);
        assert_eq!(leave_action(&l(Action::Resume, false)), LeaveAction::Resume);
        assert_eq!(leave_action(&l(Action::Disconnect, false)), LeaveAction::Disconnect);
        // Servers before protocol 13: can_reconnect means "join again".
        assert_eq!(leave_action(&l(Action::Disconnect, true)), LeaveAction::Reconnect);
        assert!(matches!(leave_error(&l(Action::Reconnect, false)), RoomError::ReconnectRequired(proto::DisconnectReason::StateMismatch)));
        assert!(matches!(leave_error(&l(Action::Disconnect, false)), RoomError::Left(proto::DisconnectReason::StateMismatch)));
    }

    #[test]
    fn request_encoding() {
        let bytes = encode_request(req_add_audio_track("cid1", "mic", proto::TrackSource::Microphone, false, AudioCodec::Opus));
        let r = proto::SignalRequest::decode(bytes.as_slice()).unwrap();
        match r.message.unwrap() {
            proto::signal_request::Message::AddTrack(a) => {
                assert_eq!(a.cid, "cid1");
                assert_eq!(a.r#type, proto::TrackType::Audio as i32);
                assert_eq!(a.source, proto::TrackSource::Microphone as i32);
                assert_eq!(a.audio_features, vec![proto::AudioTrackFeature::TfNoDtx as i32]);
                assert!(a.disable_red);
            }
            other => panic!("{other:?}"),
        }
        // Field numbers on the wire: offer = 1, ping_req = 16, leave = 8.
        assert_eq!(encode_request(req_offer("v=0".into()))[0], (1 << 3) | 2);
        assert_eq!(encode_request(req_ping(5, 0))[0..2], [0x82, 0x01]); // tag 16, wire type 2
        assert_eq!(encode_request(req_leave(proto::DisconnectReason::ClientInitiated))[0], (8 << 3) | 2);
        match proto::SignalRequest::decode(encode_request(req_leave(proto::DisconnectReason::ClientInitiated)).as_slice()).unwrap().message {
            Some(proto::signal_request::Message::Leave(l)) => {
                assert_eq!(l.reason, proto::DisconnectReason::ClientInitiated as i32);
                assert_eq!(l.action, proto::leave_request::Action::Disconnect as i32);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_decoding() {
        let join = proto::SignalResponse {
            message: Some(Response::Join(proto::JoinResponse {
                participant: Some(proto::ParticipantInfo { sid: "PA_1".into(), identity: "me".into(), ..Default::default() }),
                ping_interval: 5,
                ping_timeout: 15,
                subscriber_primary: true,
                ..Default::default()
            })),
        };
        match decode_response(&join.encode_to_vec()).unwrap() {
            Some(Response::Join(j)) => {
                assert_eq!(j.participant.unwrap().identity, "me");
                assert_eq!((j.ping_interval, j.ping_timeout), (5, 15));
            }
            other => panic!("{other:?}"),
        }
        let pong = proto::SignalResponse { message: Some(Response::PongResp(proto::Pong { last_ping_timestamp: 42, timestamp: 43 })) };
        assert!(matches!(decode_response(&pong.encode_to_vec()).unwrap(), Some(Response::PongResp(p)) if p.last_ping_timestamp == 42));
        // Garbage is an error, an empty frame is "nothing".
        assert!(decode_response(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_response(&[]).unwrap().is_none());
        // An unknown field number (999) is skipped, not an error.
        assert!(decode_response(&[0xba, 0x3e, 0x00]).unwrap().is_none());
    }

    #[test]
    fn trickle_json() {
        let r = req_trickle("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", proto::SignalTarget::Subscriber, "0", "uf");
        let Request::Trickle(t) = r else { panic!() };
        assert_eq!(t.target, proto::SignalTarget::Subscriber as i32);
        let v: serde_json::Value = serde_json::from_str(&t.candidate_init).unwrap();
        assert_eq!(v["sdpMLineIndex"], 0);
        assert_eq!(v["sdpMid"], "0");
        assert_eq!(parse_trickle(&t).unwrap().unwrap(), "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host");

        let js = proto::TrickleRequest {
            candidate_init: r#"{"candidate":"1 1 UDP 2 10.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"ab"}"#.into(),
            target: 1,
            r#final: false,
        };
        assert_eq!(parse_trickle(&js).unwrap().unwrap(), "candidate:1 1 UDP 2 10.0.0.1 9 typ host");
        let end = proto::TrickleRequest { candidate_init: r#"{"candidate":""}"#.into(), ..Default::default() };
        assert_eq!(parse_trickle(&end).unwrap(), None);
        let bad = proto::TrickleRequest { candidate_init: "{nope".into(), ..Default::default() };
        assert!(parse_trickle(&bad).is_err());
    }
}
