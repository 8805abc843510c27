//! Dials a person into a call's room for a warm transfer, with LiveKit's own API clients
//! (`livekit-api`): `CreateSIPParticipant` (`wait_until_answered`) on the bridge's URL
//! (`AGENT_SIP_URL`; the client signs a JWT with the `sip.call` grant), and RoomService
//! `RemoveParticipant` on the LiveKit server to hang up the person's leg — also while it still
//! rings (the bridge's dialing participant leaving cancels the call at Twilio). The number is the
//! agent file's; the bridge's `DIAL_ALLOW` checks it again.

use std::time::Duration;

use livekit_api::services::room::RoomClient;
use livekit_api::services::sip::{CreateSIPParticipantOptions, SIPClient};
use livekit_api::services::ServiceError;

use crate::conversation::TransferEvent;

/// How long the person's phone rings (the bridge's default too).
const RINGING: Duration = Duration::from_secs(30);
/// Most of an error kept for the log.
const MAX_ERROR: usize = 300;

#[derive(Clone)]
pub struct Dialer {
    sip: std::sync::Arc<SIPClient>,
    rooms: std::sync::Arc<RoomClient>,
}

/// `ws(s)://` → `http(s)://`: the server API is HTTP on the same address.
fn http_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        url.to_string()
    }
}

impl Dialer {
    /// `sip_url`: LiveKit's SIP API (the bridge); `livekit_url`: the LiveKit server.
    pub fn new(sip_url: &str, livekit_url: &str, api_key: &str, api_secret: &str) -> Dialer {
        Dialer {
            sip: SIPClient::with_api_key(&http_url(sip_url), api_key, api_secret).with_failover(false).into(),
            rooms: RoomClient::with_api_key(&http_url(livekit_url), api_key, api_secret).into(),
        }
    }

    /// The participant identity of the person dialled for `destination` (a config name).
    pub fn identity(destination: &str) -> String {
        let clean: String = destination.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(40).collect();
        format!("transfer-{clean}")
    }

    /// Places the call and waits until it is answered (`Answered`) or not (`Failed`).
    pub async fn dial(&self, room: &str, destination: &str, number: &str) -> TransferEvent {
        let options = CreateSIPParticipantOptions {
            participant_identity: Self::identity(destination),
            participant_name: Some(destination.to_string()),
            wait_until_answered: Some(true),
            ringing_timeout: Some(RINGING),
            ..Default::default()
        };
        match self.sip.create_sip_participant(String::new(), number.to_string(), room.to_string(), options, None).await {
            Ok(_) => TransferEvent::Answered,
            Err(e) => TransferEvent::Failed { reason: short(&e) },
        }
    }

    /// Takes the person's leg out of the room: the bridge hangs it up (or cancels the ringing).
    pub async fn hang_up(&self, room: &str, destination_identity: &str) {
        match self.rooms.remove_participant(room, destination_identity).await {
            Ok(()) => tracing::info!("warm transfer: the person's leg was removed"),
            Err(e) => tracing::warn!(error = %short(&e), "warm transfer: could not remove the person's leg"),
        }
    }
}

fn short(e: &ServiceError) -> String {
    e.to_string().chars().take(MAX_ERROR).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_clean_and_urls_http() {
        assert_eq!(Dialer::identity("sales"), "transfer-sales");
        assert_eq!(Dialer::identity("front desk/../x"), "transfer-frontdeskx");
        assert_eq!(http_url("ws://127.0.0.1:7880/"), "http://127.0.0.1:7880");
        assert_eq!(http_url("wss://lk.example.com"), "https://lk.example.com");
        assert_eq!(http_url("https://b.example.com"), "https://b.example.com");
    }
}
