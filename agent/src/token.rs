//! LiveKit access tokens (HS256 JWT, `reference/protocols.md` §4): the agent's own join token in
//! `--room` mode and the worker's `/agent` registration token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Sign `claims` (a JSON object; `iss`, `nbf`, `iat`, `exp` are added) with the API secret.
pub fn sign(
    api_key: &str,
    api_secret: &str,
    mut claims: serde_json::Value,
    ttl_secs: u64,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Some(obj) = claims.as_object_mut() {
        obj.insert("iss".into(), api_key.into());
        obj.insert("nbf".into(), now.saturating_sub(10).into());
        obj.insert("iat".into(), now.into());
        obj.insert("exp".into(), (now + ttl_secs).into());
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let input = format!("{header}.{payload}");
    let mut mac =
        Hmac::<Sha256>::new_from_slice(api_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{sig}")
}

/// A join token for the agent participant (kind `agent`).
pub fn agent_join_token(
    api_key: &str,
    api_secret: &str,
    room: &str,
    identity: &str,
    name: &str,
) -> String {
    let claims = serde_json::json!({
        "sub": identity,
        "name": name,
        "kind": "agent",
        "video": {"roomJoin": true, "room": room, "canPublish": true, "canSubscribe": true, "canPublishData": true, "agent": true},
    });
    sign(api_key, api_secret, claims, 6 * 3600)
}

/// The token a worker registers with (`video.agent = true`, as livekit-agents does).
pub fn worker_token(api_key: &str, api_secret: &str) -> String {
    sign(
        api_key,
        api_secret,
        serde_json::json!({"sub": "", "video": {"agent": true}}),
        3600,
    )
}

/// The claims of a token (no signature check: for tests and logs).
pub fn claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_token_claims() {
        let t = agent_join_token("devkey", "secret", "call-CA1", "agent-call-CA1", "Agent");
        let c = claims(&t).unwrap();
        assert_eq!(c["iss"], "devkey");
        assert_eq!(c["sub"], "agent-call-CA1");
        assert_eq!(c["kind"], "agent");
        assert_eq!(c["video"]["room"], "call-CA1");
        assert!(c["exp"].as_u64().unwrap() > c["nbf"].as_u64().unwrap());
        // Signature: HMAC-SHA256 over header.payload.
        let (input, sig) = t.rsplit_once('.').unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(input.as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(sig).unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
    }
}
