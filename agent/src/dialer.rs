//! Dials a person into a call's room for a warm transfer: LiveKit's SIP API
//! (`CreateSIPParticipant`, Twirp JSON) on the bridge's URL (`AGENT_SIP_URL`), authorised by a
//! LiveKit JWT with the `sip.call` grant, `wait_until_answered` — the answer is the call's
//! outcome. The number is the agent file's (the bridge's `DIAL_ALLOW` checks it again).

use std::time::Duration;

use crate::conversation::TransferEvent;

/// The bridge rings for 30 s by default; a little more for placing the call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
/// Most of an error body kept for the log.
const MAX_ERROR: usize = 300;

#[derive(Clone)]
pub struct Dialer {
    client: reqwest::Client,
    /// Base URL of the Twirp service (`https://bridge.example.com`).
    url: String,
    api_key: String,
    api_secret: String,
}

impl Dialer {
    pub fn new(url: &str, api_key: &str, api_secret: &str) -> Dialer {
        Dialer { client: crate::providers::http_util::http_client(Duration::from_secs(5)), url: url.trim_end_matches('/').to_string(), api_key: api_key.into(), api_secret: api_secret.into() }
    }

    /// The participant identity of the person dialled for `destination` (a config name).
    pub fn identity(destination: &str) -> String {
        let clean: String = destination.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(40).collect();
        format!("transfer-{clean}")
    }

    /// Places the call and waits until it is answered (`Answered`) or not (`Failed`).
    pub async fn dial(&self, room: &str, destination: &str, number: &str) -> TransferEvent {
        let token = crate::token::sign(&self.api_key, &self.api_secret, serde_json::json!({"sub": "agent-dialer", "sip": {"call": true}}), 600);
        let body = serde_json::json!({
            "sip_trunk_id": "",
            "sip_call_to": number,
            "room_name": room,
            "participant_identity": Self::identity(destination),
            "participant_name": destination,
            "wait_until_answered": true,
        });
        let req = self.client.post(format!("{}/twirp/livekit.SIP/CreateSIPParticipant", self.url)).bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(REQUEST_TIMEOUT);
        match req.send().await {
            Ok(r) if r.status().is_success() => TransferEvent::Answered,
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let msg: String = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["msg"].as_str().map(str::to_string)).unwrap_or(text).chars().take(MAX_ERROR).collect();
                TransferEvent::Failed { reason: format!("HTTP {status}: {msg}") }
            }
            Err(e) if e.is_timeout() => TransferEvent::Failed { reason: "no answer in time".into() },
            Err(e) => TransferEvent::Failed { reason: format!("request failed: {e}") },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_clean() {
        assert_eq!(Dialer::identity("sales"), "transfer-sales");
        assert_eq!(Dialer::identity("front desk/../x"), "transfer-frontdeskx");
    }
}
