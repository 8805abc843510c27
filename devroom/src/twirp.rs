//! Twirp `livekit.RoomService` over HTTP: `POST /twirp/livekit.RoomService/<Method>`, and
//! `livekit.AgentDispatchService` (`CreateDispatch`, `ListDispatch`, `DeleteDispatch`).
//!
//! Bodies are protobuf-JSON (`application/json`) or binary protobuf (`application/protobuf`);
//! the response uses the request's encoding. Auth as livekit-server: a Bearer JWT with
//! `roomCreate` (CreateRoom, DeleteRoom), `roomList` (ListRooms) or `roomAdmin` + `room`
//! (participant operations, SendData, UpdateRoomMetadata). Errors are Twirp JSON
//! `{"code":"…","msg":"…"}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use livekit_protocol as lk;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::{self, Claims};
use crate::engine::{Admin, Command};
use crate::server::App;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: &'static str,
    pub msg: String,
}

impl ApiError {
    fn new(code: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError { code, msg: msg.into() }
    }
    pub fn unauthenticated(msg: impl Into<String>) -> ApiError {
        Self::new("unauthenticated", msg)
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        Self::new("not_found", msg)
    }
    pub fn invalid_argument(msg: impl Into<String>) -> ApiError {
        Self::new("invalid_argument", msg)
    }
    pub fn malformed(msg: impl Into<String>) -> ApiError {
        Self::new("malformed", msg)
    }
    pub fn bad_route(msg: impl Into<String>) -> ApiError {
        Self::new("bad_route", msg)
    }
    pub fn resource_exhausted(msg: impl Into<String>) -> ApiError {
        Self::new("resource_exhausted", msg)
    }
    pub fn internal(msg: impl Into<String>) -> ApiError {
        Self::new("internal", msg)
    }

    /// HTTP status for the Twirp code (twirp spec).
    pub fn status(&self) -> StatusCode {
        match self.code {
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "not_found" | "bad_route" => StatusCode::NOT_FOUND,
            "invalid_argument" | "malformed" | "out_of_range" => StatusCode::BAD_REQUEST,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "failed_precondition" => StatusCode::PRECONDITION_FAILED,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "msg": self.msg}).to_string();
        (self.status(), [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Json,
    Protobuf,
}

fn decode<T>(enc: Encoding, body: &[u8]) -> Result<T, ApiError>
where
    T: prost::Message + Default + DeserializeOwned,
{
    match enc {
        Encoding::Json => {
            let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
                &b"{}"[..]
            } else {
                body
            };
            serde_json::from_slice(body)
                .map_err(|e| ApiError::malformed(format!("the json request could not be decoded: {e}")))
        }
        Encoding::Protobuf => T::decode(body)
            .map_err(|e| ApiError::malformed(format!("the protobuf request could not be decoded: {e}"))),
    }
}

fn encode<T: prost::Message + Serialize>(enc: Encoding, msg: &T) -> Response {
    match enc {
        Encoding::Json => match serde_json::to_vec(msg) {
            Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
            Err(e) => ApiError::internal(format!("cannot encode response: {e}")).into_response(),
        },
        Encoding::Protobuf => (
            [(header::CONTENT_TYPE, "application/protobuf")],
            msg.encode_to_vec(),
        )
            .into_response(),
    }
}

fn authenticate(app: &App, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let h = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = auth::token_from_request(h, None).map_err(|_| ApiError::unauthenticated("permissions denied"))?;
    auth::verify(&token, &app.keys, auth::unix_now()).map_err(|e| ApiError::unauthenticated(e.to_string()))
}

fn ensure(ok: bool) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthenticated("permissions denied"))
    }
}

fn ensure_admin(claims: &Claims, room: &str) -> Result<(), ApiError> {
    let v = claims.video();
    ensure(v.room_admin && !room.is_empty() && v.room == room)
}

pub async fn handle(
    State(app): State<Arc<App>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match route(&app, &method, &headers, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, error = %e, "twirp error");
            e.into_response()
        }
    }
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => Ok(Encoding::Json),
        "application/protobuf" | "application/x-protobuf" => Ok(Encoding::Protobuf),
        other => Err(ApiError::bad_route(format!(
            "unexpected Content-Type: {other:?} (want application/json or application/protobuf)"
        ))),
    }
}

async fn route(app: &App, method: &str, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let enc = encoding(headers)?;
    let known = [
        "CreateRoom",
        "DeleteRoom",
        "ListRooms",
        "ListParticipants",
        "GetParticipant",
        "RemoveParticipant",
        "UpdateParticipant",
        "MutePublishedTrack",
        "UpdateRoomMetadata",
        "UpdateSubscriptions",
        "SendData",
    ];
    if !known.contains(&method) {
        return Err(ApiError::bad_route(format!(
            "no handler for path \"/twirp/livekit.RoomService/{method}\""
        )));
    }
    let claims = authenticate(app, headers)?;
    let video = claims.video();
    let engine = &app.engine;
    Ok(match method {
        "CreateRoom" => {
            let req: lk::CreateRoomRequest = decode(enc, body)?;
            ensure(video.room_create)?;
            let room = engine.call(|r| Command::Admin(Admin::CreateRoom(req, r))).await?;
            encode(enc, &room)
        }
        "DeleteRoom" => {
            let req: lk::DeleteRoomRequest = decode(enc, body)?;
            ensure(video.room_create)?;
            engine
                .call(|r| Command::Admin(Admin::DeleteRoom(req.room, r)))
                .await?;
            encode(enc, &lk::DeleteRoomResponse {})
        }
        "ListRooms" => {
            let req: lk::ListRoomsRequest = decode(enc, body)?;
            ensure(video.room_list)?;
            let rooms = engine
                .call(|r| Command::Admin(Admin::ListRooms(req.names, r)))
                .await?;
            encode(enc, &lk::ListRoomsResponse { rooms })
        }
        "ListParticipants" => {
            let req: lk::ListParticipantsRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            let participants = engine
                .call(|r| Command::Admin(Admin::ListParticipants(req.room, r)))
                .await?;
            encode(enc, &lk::ListParticipantsResponse { participants })
        }
        "GetParticipant" => {
            let req: lk::RoomParticipantIdentity = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            let p = engine
                .call(|r| Command::Admin(Admin::GetParticipant(req.room, req.identity, r)))
                .await?;
            encode(enc, &p)
        }
        "RemoveParticipant" => {
            let req: lk::RoomParticipantIdentity = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            engine
                .call(|r| Command::Admin(Admin::RemoveParticipant(req.room, req.identity, r)))
                .await?;
            encode(enc, &lk::RemoveParticipantResponse {})
        }
        "UpdateParticipant" => {
            let req: lk::UpdateParticipantRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            let p = engine
                .call(|r| Command::Admin(Admin::UpdateParticipant(req, r)))
                .await?;
            encode(enc, &p)
        }
        "MutePublishedTrack" => {
            let req: lk::MuteRoomTrackRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            let track = engine
                .call(|r| Command::Admin(Admin::MutePublishedTrack(req, r)))
                .await?;
            encode(enc, &lk::MuteRoomTrackResponse { track: Some(track) })
        }
        "UpdateRoomMetadata" => {
            let req: lk::UpdateRoomMetadataRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            let room = engine
                .call(|r| Command::Admin(Admin::UpdateRoomMetadata(req.room, req.metadata, r)))
                .await?;
            encode(enc, &room)
        }
        "UpdateSubscriptions" => {
            let req: lk::UpdateSubscriptionsRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            engine
                .call(|r| Command::Admin(Admin::UpdateSubscriptions(req, r)))
                .await?;
            encode(enc, &lk::UpdateSubscriptionsResponse {})
        }
        "SendData" => {
            let req: lk::SendDataRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            engine.call(|r| Command::Admin(Admin::SendData(req, r))).await?;
            encode(enc, &lk::SendDataResponse {})
        }
        _ => unreachable!("checked against `known`"),
    })
}

/// `POST /twirp/livekit.AgentDispatchService/<Method>`: CreateDispatch, ListDispatch,
/// DeleteDispatch (`roomAdmin` for the request's room, as livekit-server).
pub async fn handle_agent_dispatch(
    State(app): State<Arc<App>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match route_agent_dispatch(&app, &method, &headers, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, error = %e, "twirp error");
            e.into_response()
        }
    }
}

async fn route_agent_dispatch(
    app: &App,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let enc = encoding(headers)?;
    if !["CreateDispatch", "ListDispatch", "DeleteDispatch"].contains(&method) {
        return Err(ApiError::bad_route(format!(
            "no handler for path \"/twirp/livekit.AgentDispatchService/{method}\""
        )));
    }
    let claims = authenticate(app, headers)?;
    let engine = &app.engine;
    Ok(match method {
        "CreateDispatch" => {
            let req: lk::CreateAgentDispatchRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            let d = engine.call(|r| Command::Admin(Admin::CreateDispatch(req, r))).await?;
            encode(enc, &d)
        }
        "ListDispatch" => {
            let req: lk::ListAgentDispatchRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            let agent_dispatches = engine.call(|r| Command::Admin(Admin::ListDispatch(req, r))).await?;
            encode(enc, &lk::ListAgentDispatchResponse { agent_dispatches })
        }
        _ => {
            let req: lk::DeleteAgentDispatchRequest = decode(enc, body)?;
            ensure_admin(&claims, &req.room)?;
            let d = engine.call(|r| Command::Admin(Admin::DeleteDispatch(req, r))).await?;
            encode(enc, &d)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_json_spellings_and_protobuf() {
        let a: lk::CreateRoomRequest =
            decode(Encoding::Json, br#"{"name":"r","emptyTimeout":7}"#).unwrap();
        let b: lk::CreateRoomRequest =
            decode(Encoding::Json, br#"{"name":"r","empty_timeout":7}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.empty_timeout, 7);
        let empty: lk::ListRoomsRequest = decode(Encoding::Json, b"").unwrap();
        assert!(empty.names.is_empty());
        let bin = prost::Message::encode_to_vec(&a);
        let c: lk::CreateRoomRequest = decode(Encoding::Protobuf, &bin).unwrap();
        assert_eq!(a, c);
        let bad: Result<lk::CreateRoomRequest, _> = decode(Encoding::Json, b"{not json");
        assert_eq!(bad.unwrap_err().code, "malformed");
        let bad: Result<lk::CreateRoomRequest, _> = decode(Encoding::Protobuf, &[0xff, 0xff, 0xff]);
        assert_eq!(bad.unwrap_err().code, "malformed");
    }
}
