//! `/rtc` signalling: the WebSocket the LiveKit SDKs join with (v0, dual peer connection).
//!
//! - Token from `Authorization: Bearer …` or `access_token=`; refused with HTTP 401 + a plain
//!   text reason before the upgrade, as livekit-server does.
//! - `/rtc/v1` (single peer connection) answers 404, which makes the SDKs fall back to `/rtc`.
//! - Frames are binary protobuf `SignalRequest` / `SignalResponse` (JSON text frames are accepted
//!   too and answered in JSON). An undecodable frame closes the socket with code 1007 and the reason.
//! - Ping (`ping_req`/`ping`) is answered here; everything else goes to the engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth;
use crate::engine::{Command, EngineHandle, JoinRequest, Joined, Outbound, ResumeRequest};
use crate::room::{self, Permission};
use crate::server::App;

/// No message from the client for this long (it pings every 5 s) ends the session.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const MAX_FRAME: usize = 1 << 20;
/// A client that does not read for this long (TCP window full) is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

type Params = HashMap<String, String>;

fn truthy(v: Option<&String>, default: bool) -> bool {
    match v.map(|s| s.as_str()) {
        None | Some("") => default,
        Some(s) => matches!(s, "1" | "true" | "True" | "TRUE"),
    }
}

/// Checks the token and grants of a join. Errors are (HTTP status, plain-text reason).
fn validate(app: &App, headers: &HeaderMap, params: &Params) -> Result<JoinInit, (StatusCode, String)> {
    let h = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = auth::token_from_request(h, params.get("access_token").map(|s| s.as_str()))
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    let claims = auth::verify(&token, &app.keys, auth::unix_now())
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    let video = claims.video();
    if !video.room_join || video.room.is_empty() {
        return Err((StatusCode::UNAUTHORIZED, "permissions denied".into()));
    }
    if claims.identity().is_empty() {
        return Err((StatusCode::UNAUTHORIZED, "participant identity cannot be empty".into()));
    }
    let mut attributes = claims.attributes.clone();
    if let Some(a) = params.get("attributes").filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::URL_SAFE
            .decode(a)
            .ok()
            .and_then(|b| serde_json::from_slice::<HashMap<String, String>>(&b).ok())
            .ok_or((StatusCode::BAD_REQUEST, "cannot decode attributes".to_string()))?;
        attributes.extend(decoded);
    }
    Ok(JoinInit {
        room: video.room.clone(),
        identity: claims.identity().to_string(),
        name: claims.name.clone(),
        kind: room::kind_from_claim(&claims.kind),
        metadata: claims.metadata.clone(),
        attributes,
        permission: Permission {
            can_publish: video.can_publish(),
            can_subscribe: video.can_subscribe(),
            can_publish_data: video.can_publish_data(),
            can_update_metadata: video.can_update_own_metadata(),
            hidden: video.hidden,
            agent: video.agent,
        },
        auto_subscribe: truthy(params.get("auto_subscribe"), true),
        room_agents: claims.room_agents(),
        protocol: params.get("protocol").and_then(|p| p.parse().ok()).unwrap_or(0),
        video: video.clone(),
        token_exp: claims.exp.unwrap_or(0.0),
        reconnect: truthy(params.get("reconnect"), false),
        sid: params.get("sid").cloned().unwrap_or_default(),
    })
}

struct JoinInit {
    room: String,
    identity: String,
    name: String,
    kind: lk::participant_info::Kind,
    metadata: String,
    attributes: HashMap<String, String>,
    permission: Permission,
    auto_subscribe: bool,
    /// The token's `roomConfig.agents` (dispatched if this join creates the room).
    room_agents: Vec<lk::RoomAgentDispatch>,
    protocol: i32,
    video: auth::VideoGrant,
    token_exp: f64,
    /// `reconnect=1&sid=…`: resume an existing participant.
    reconnect: bool,
    sid: String,
}

/// `GET /rtc/validate`: "success" or the reason the join would be refused.
pub async fn validate_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    match validate(&app, &headers, &params) {
        Ok(_) => "success".into_response(),
        Err((code, msg)) => (code, msg).into_response(),
    }
}

/// `/rtc/v1` and `/rtc/v1/validate`: not supported, so SDKs fall back to v0 `/rtc`.
pub async fn v1_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "devroom speaks only the v0 signalling path; use /rtc",
    )
        .into_response()
}

/// `GET /rtc`: WebSocket signalling.
pub async fn rtc_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let init = match validate(&app, &headers, &params) {
        Ok(i) => i,
        Err((code, msg)) => {
            tracing::info!(%code, %msg, "join refused");
            return (code, msg).into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("expected a WebSocket upgrade: {e}")).into_response(),
    };
    let (tx, rx) = mpsc::channel(app.cfg.signal_queue.max(8));
    if init.reconnect {
        let req = ResumeRequest {
            room: init.room,
            identity: init.identity,
            sid: init.sid,
            tx,
        };
        return match app.engine.call(|r| Command::Resume(req, r)).await {
            Ok(joined) => upgrade(ws, rx, &app, joined),
            Err(e) => {
                // As livekit-server: accept, say `leave` (action RECONNECT: do a full join), close.
                tracing::info!(error = %e, "resume refused");
                ws.on_upgrade(refuse_resume)
            }
        };
    }
    let req = JoinRequest {
        room: init.room,
        identity: init.identity,
        name: init.name,
        kind: init.kind,
        metadata: init.metadata,
        attributes: init.attributes,
        permission: init.permission,
        auto_subscribe: init.auto_subscribe,
        room_agents: init.room_agents,
        protocol: init.protocol,
        video: init.video,
        token_exp: init.token_exp,
        tx,
    };
    match app.engine.call(|r| Command::Join(req, r)).await {
        Ok(joined) => upgrade(ws, rx, &app, joined),
        Err(e) => (e.status(), e.msg).into_response(),
    }
}

fn upgrade(ws: WebSocketUpgrade, rx: mpsc::Receiver<Outbound>, app: &App, joined: Joined) -> Response {
    let guard = LeaveGuard {
        engine: app.engine.clone(),
        key: joined.key,
        session: joined.session,
        reason: lk::DisconnectReason::SignalClose,
    };
    // 8 KiB read buffer instead of tungstenite's 128 KiB (zero-filled, resident per participant).
    ws.max_message_size(MAX_FRAME)
        .read_buffer_size(8 * 1024)
        .on_upgrade(move |socket| session(socket, rx, guard))
}

async fn refuse_resume(mut socket: WebSocket) {
    let leave = lk::SignalResponse {
        message: Some(Resp::Leave(lk::LeaveRequest {
            can_reconnect: true,
            reason: lk::DisconnectReason::StateMismatch as i32,
            action: lk::leave_request::Action::Reconnect as i32,
            ..Default::default()
        })),
    };
    let _ = socket.send(encode(&leave, false)).await;
    let _ = socket.send(close(1000, String::new())).await;
}

/// Tells the engine the participant is gone, however the session ends (even if the upgrade fails).
struct LeaveGuard {
    engine: EngineHandle,
    key: u64,
    session: u64,
    reason: lk::DisconnectReason,
}

impl Drop for LeaveGuard {
    fn drop(&mut self) {
        let engine = self.engine.clone();
        let (key, session, reason) = (self.key, self.session, self.reason);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = engine.send(Command::Disconnect { key, session, reason }).await;
            });
        }
    }
}

fn encode(resp: &lk::SignalResponse, json: bool) -> Message {
    if json {
        Message::Text(serde_json::to_string(resp).unwrap_or_default().into())
    } else {
        Message::Binary(resp.encode_to_vec().into())
    }
}

fn close(code: u16, reason: String) -> Message {
    let mut reason = reason;
    // Close reasons are limited to 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn session(socket: WebSocket, mut rx: mpsc::Receiver<Outbound>, mut guard: LeaveGuard) {
    let (key, session) = (guard.key, guard.session);
    let (mut sink, mut stream) = socket.split();
    let mut json = false;
    let mut last_rx = Instant::now();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Outbound::Signal(resp)) => {
                    match tokio::time::timeout(SEND_TIMEOUT, sink.send(encode(&resp, json))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            tracing::warn!(key, "client is not reading its signal connection: dropping it");
                            guard.reason = lk::DisconnectReason::SignalClose;
                            break;
                        }
                    }
                }
                Some(Outbound::Close { code, reason }) => {
                    let _ = sink.send(close(code, reason)).await;
                    break;
                }
                None => {
                    // The engine removed us (leave, removal, room closed, too slow).
                    guard.reason = lk::DisconnectReason::ServerShutdown;
                    let _ = sink.send(close(1000, String::new())).await;
                    break;
                }
            },
            inc = stream.next() => {
                last_rx = Instant::now();
                let msg = match inc {
                    Some(Ok(m)) => m,
                    _ => break,
                };
                let decoded = match msg {
                    Message::Binary(b) => decode_binary(b.as_ref()),
                    Message::Text(t) => {
                        json = true;
                        decode_text(t.as_str())
                    }
                    Message::Close(_) => {
                        guard.reason = lk::DisconnectReason::ClientInitiated;
                        break;
                    }
                    _ => continue,
                };
                let req = match decoded {
                    Ok(r) => r,
                    Err(reason) => {
                        tracing::warn!(key, %reason, "closing signal connection");
                        let _ = sink.send(close(1007, reason)).await;
                        guard.reason = lk::DisconnectReason::StateMismatch;
                        break;
                    }
                };
                let Some(msg) = req.message else { continue };
                tracing::debug!(key, request = request_name(&msg), "signal request");
                match msg {
                    Req::PingReq(ping) => {
                        let pong = lk::SignalResponse { message: Some(Resp::PongResp(lk::Pong {
                            last_ping_timestamp: ping.timestamp,
                            timestamp: room::unix_ms(),
                        }))};
                        if sink.send(encode(&pong, json)).await.is_err() { break; }
                    }
                    Req::Ping(_) => {
                        let pong = lk::SignalResponse { message: Some(Resp::Pong(room::unix_ms())) };
                        if sink.send(encode(&pong, json)).await.is_err() { break; }
                    }
                    other => {
                        if matches!(other, Req::Leave(_)) {
                            guard.reason = lk::DisconnectReason::ClientInitiated;
                        }
                        if guard.engine.send(Command::Signal { key, session, msg: other }).await.is_err() {
                            break;
                        }
                    }
                }
            },
            _ = tokio::time::sleep_until(last_rx + IDLE_TIMEOUT) => {
                tracing::info!(key, "signal connection idle (no ping): closing");
                guard.reason = lk::DisconnectReason::SignalClose;
                let _ = sink.send(close(1000, "ping timeout".into())).await;
                break;
            }
        }
    }
    // `guard` drops here and removes the participant (a no-op if the engine already did).
}

/// A binary signal frame: protobuf `SignalRequest`.
pub(crate) fn decode_binary(bytes: &[u8]) -> Result<lk::SignalRequest, String> {
    lk::SignalRequest::decode(bytes).map_err(|e| format!("invalid SignalRequest protobuf: {e}"))
}

/// A text signal frame: `SignalRequest` as JSON (some SDKs' debug mode).
pub(crate) fn decode_text(text: &str) -> Result<lk::SignalRequest, String> {
    serde_json::from_str::<lk::SignalRequest>(text).map_err(|e| format!("invalid SignalRequest JSON: {e}"))
}

fn request_name(m: &Req) -> &'static str {
    match m {
        Req::Offer(_) => "offer",
        Req::Answer(_) => "answer",
        Req::Trickle(_) => "trickle",
        Req::AddTrack(_) => "add_track",
        Req::Mute(_) => "mute",
        Req::Subscription(_) => "subscription",
        Req::TrackSetting(_) => "track_setting",
        Req::Leave(_) => "leave",
        Req::UpdateLayers(_) => "update_layers",
        Req::SubscriptionPermission(_) => "subscription_permission",
        Req::SyncState(_) => "sync_state",
        Req::Simulate(_) => "simulate",
        Req::Ping(_) => "ping",
        Req::UpdateMetadata(_) => "update_metadata",
        Req::PingReq(_) => "ping_req",
        Req::UpdateAudioTrack(_) => "update_audio_track",
        Req::UpdateVideoTrack(_) => "update_video_track",
        _ => "other",
    }
}
