//! The LiveKit side of a call that is not media: the room (RoomService), agent dispatch, and the
//! phone participant's join token.

use std::collections::HashMap;
use std::time::Duration;

use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_api::services::room::CreateRoomOptions;
use livekit_api::services::LiveKitApi;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::Config;
use crate::registry::CallInfo;

/// RoomService and AgentDispatch requests give up after this (the caller is waiting).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests to LiveKit's API in flight at once. Each may hold a pooled HTTP connection, so this
/// also bounds the connections (and their tasks) a burst of calls leaves behind.
const MAX_IN_FLIGHT: usize = 16;

pub fn room_name(call_sid: &str) -> String {
    format!("call-{call_sid}")
}

pub fn phone_identity(call_sid: &str) -> String {
    format!("phone-{call_sid}")
}

/// The attributes LiveKit SIP sets on a phone participant, so an agent treats both paths alike:
/// `sip.phoneNumber` is the other end of the line, `sip.trunkPhoneNumber` ours.
pub fn phone_attributes(info: &CallInfo, call_status: &str) -> HashMap<String, String> {
    HashMap::from([
        ("sip.phoneNumber".to_owned(), info.remote_number().to_owned()),
        ("sip.trunkPhoneNumber".to_owned(), info.our_number().to_owned()),
        ("sip.callStatus".to_owned(), call_status.to_owned()),
        ("sip.twilio.callSid".to_owned(), info.call_sid.clone()),
        ("sip.twilio.accountSid".to_owned(), info.account_sid.clone()),
    ])
}

pub struct LiveKit {
    /// One HTTP connection pool for every service.
    api: LiveKitApi,
    in_flight: Semaphore,
    api_key: String,
    api_secret: SecretString,
    url: String,
    empty_timeout: u32,
    agent_name: String,
}

impl LiveKit {
    pub fn new(cfg: &Config) -> LiveKit {
        let host = cfg.livekit_http();
        LiveKit {
            api: LiveKitApi::with_api_key(&host, cfg.livekit_key(), cfg.livekit_secret()).with_request_timeout(REQUEST_TIMEOUT),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            api_key: cfg.livekit_key().to_owned(),
            api_secret: SecretString::from(cfg.livekit_secret()),
            url: cfg.livekit_url.clone(),
            empty_timeout: cfg.room_empty_timeout,
            agent_name: cfg.agent_name.clone(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn permit(&self) -> SemaphorePermit<'_> {
        self.in_flight.acquire().await.expect("never closed")
    }

    /// Creates `call-<CallSid>` with the call in its metadata, and dispatches the named agent.
    pub async fn create_call_room(&self, info: &CallInfo) -> anyhow::Result<()> {
        let metadata = serde_json::json!({
            "callSid": info.call_sid, "accountSid": info.account_sid, "from": info.from, "to": info.to,
        })
        .to_string();
        let name = room_name(&info.call_sid);
        let _permit = self.permit().await;
        self.api
            .room()
            .create_room(
                &name,
                CreateRoomOptions { empty_timeout: self.empty_timeout, metadata: metadata.clone(), ..Default::default() },
            )
            .await?;
        if !self.agent_name.is_empty() {
            self.api
                .agent_dispatch()
                .create_dispatch(livekit_protocol::CreateAgentDispatchRequest {
                    agent_name: self.agent_name.clone(),
                    room: name,
                    metadata,
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }

    pub async fn delete_room(&self, call_sid: &str) -> anyhow::Result<()> {
        let _permit = self.permit().await;
        self.api.room().delete_room(&room_name(call_sid)).await?;
        Ok(())
    }

    /// Whether a bridge already created this call's room (a room of that name whose metadata
    /// names the call; a room someone merely joined first does not count).
    pub async fn call_room_created(&self, call_sid: &str) -> anyhow::Result<bool> {
        let _permit = self.permit().await;
        let rooms = self.api.room().list_rooms(vec![room_name(call_sid)]).await?;
        Ok(rooms.iter().any(|r| {
            serde_json::from_str::<serde_json::Value>(&r.metadata)
                .is_ok_and(|m| m.get("callSid").and_then(|v| v.as_str()) == Some(call_sid))
        }))
    }

    /// Whether `identity` is in room `room` now (a room that does not exist has nobody).
    pub async fn participant_present(&self, room: &str, identity: &str) -> anyhow::Result<bool> {
        use livekit_api::services::{ServiceError, TwirpError};
        let _permit = self.permit().await;
        match self.api.room().list_participants(room).await {
            Ok(ps) => Ok(ps.iter().any(|p| p.identity == identity)),
            Err(ServiceError::Twirp(TwirpError::Twirp(code))) if code.code == "not_found" => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Asks LiveKit to dispatch an agent into the call's room again (nobody answered). With
    /// automatic dispatch (no `AGENT_NAME`) this asks for the unnamed agent.
    pub async fn redispatch(&self, info: &CallInfo) -> anyhow::Result<()> {
        let metadata = serde_json::json!({"callSid": info.call_sid, "redispatch": true}).to_string();
        let _permit = self.permit().await;
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.api.agent_dispatch().create_dispatch(livekit_protocol::CreateAgentDispatchRequest {
                agent_name: self.agent_name.clone(),
                room: room_name(&info.call_sid),
                metadata,
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("agent dispatch timed out"))??;
        Ok(())
    }

    /// A token that can join only this call's room, as the phone (kind `sip`), with these
    /// attributes; it may update them (`sip.callStatus` moves as the call does).
    pub fn phone_token(&self, info: &CallInfo, name: &str, attributes: HashMap<String, String>) -> anyhow::Result<String> {
        let grants = VideoGrants {
            room_join: true,
            room: info.room.clone(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            can_update_own_metadata: Some(true),
            ..Default::default()
        };
        Ok(AccessToken::with_api_key(&self.api_key, self.api_secret.expose_secret())
            .with_identity(&info.identity)
            .with_name(name)
            .with_kind("sip")
            .with_attributes(attributes)
            .with_grants(grants)
            .with_ttl(Duration::from_secs(4 * 3600 + 600))
            .to_jwt()?)
    }

    /// A participant now in a room (None when it or the room is not there).
    pub async fn participant(&self, room: &str, identity: &str) -> anyhow::Result<Option<livekit_protocol::ParticipantInfo>> {
        use livekit_api::services::{ServiceError, TwirpError};
        let _permit = self.permit().await;
        match self.api.room().get_participant(room, identity).await {
            Ok(p) => Ok(Some(p)),
            Err(ServiceError::Twirp(TwirpError::Twirp(code))) if code.code == "not_found" => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a participant from a room (RoomService RemoveParticipant).
    pub async fn remove_participant(&self, room: &str, identity: &str) -> anyhow::Result<()> {
        let _permit = self.permit().await;
        self.api.room().remove_participant(room, identity).await?;
        Ok(())
    }

    /// Sets attributes on a participant through the server API (RoomService UpdateParticipant):
    /// for a call whose room connection another replica holds.
    pub async fn update_attributes(&self, room: &str, identity: &str, attributes: HashMap<String, String>) -> anyhow::Result<()> {
        let _permit = self.permit().await;
        self.api
            .room()
            .update_participant(
                room,
                identity,
                livekit_api::services::room::UpdateParticipantOptions { attributes, ..Default::default() },
            )
            .await?;
        Ok(())
    }
}
