//! LiveKit access tokens: HS256 JWTs signed with the API secret.
//!
//! Verification follows livekit/protocol `auth/verifier.go`: HS256 only, `exp` required,
//! one minute of leeway on `exp`/`nbf`, identity from `sub` (falling back to `jti`).
//! Signing is used for webhook `Authorization` tokens (and by tests).

use std::collections::HashMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Leeway applied to `exp` and `nbf`, as livekit-server does.
const LEEWAY_SECS: f64 = 60.0;

/// The `video` grant of a LiveKit token (JSON names as in `auth/grants.go`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct VideoGrant {
    pub room_create: bool,
    pub room_list: bool,
    pub room_record: bool,
    pub room_admin: bool,
    pub room_join: bool,
    pub room: String,
    pub can_publish: Option<bool>,
    pub can_subscribe: Option<bool>,
    pub can_publish_data: Option<bool>,
    pub can_publish_sources: Option<Vec<String>>,
    pub can_update_own_metadata: Option<bool>,
    pub ingress_admin: bool,
    pub hidden: bool,
    pub recorder: bool,
    pub agent: bool,
}

impl VideoGrant {
    /// Unset permissions default to allowed, as in livekit's `GetCanPublish` & co.
    pub fn can_publish(&self) -> bool {
        match &self.can_publish_sources {
            Some(sources) if self.can_publish.unwrap_or(true) => !sources.is_empty(),
            _ => self.can_publish.unwrap_or(true),
        }
    }
    pub fn can_subscribe(&self) -> bool {
        self.can_subscribe.unwrap_or(true)
    }
    pub fn can_publish_data(&self) -> bool {
        self.can_publish_data.unwrap_or(true)
    }
    pub fn can_update_own_metadata(&self) -> bool {
        self.can_update_own_metadata.unwrap_or(false)
    }
}

/// The claims devroom reads from a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub jti: String,
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    pub name: String,
    pub kind: String,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    pub video: Option<VideoGrant>,
    pub sha256: String,
    /// `roomConfig`: protojson `RoomConfiguration` applied when the join creates the room
    /// (devroom reads its `agents`). Kept raw so an odd value never invalidates the token.
    pub room_config: Option<serde_json::Value>,
}

impl Claims {
    /// Participant identity: `sub`, else `jti`.
    pub fn identity(&self) -> &str {
        if self.sub.is_empty() {
            &self.jti
        } else {
            &self.sub
        }
    }

    pub fn video(&self) -> VideoGrant {
        self.video.clone().unwrap_or_default()
    }

    /// The agents `roomConfig` asks to dispatch (`{"agents":[{"agentName":…,"metadata":…}]}`);
    /// empty when absent or unreadable.
    pub fn room_agents(&self) -> Vec<livekit_protocol::RoomAgentDispatch> {
        self.room_config
            .as_ref()
            .and_then(|v| serde_json::from_value::<livekit_protocol::RoomConfiguration>(v.clone()).ok())
            .map(|c| c.agents)
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("invalid authorization header. Must start with Bearer ")]
    MissingBearer,
    #[error("no authorization token")]
    Missing,
    #[error("invalid authorization token")]
    Malformed,
    #[error("invalid authorization token: unsupported signing algorithm {0:?} (only HS256)")]
    Algorithm(String),
    #[error("invalid API key")]
    UnknownKey,
    #[error("invalid authorization token: signature is invalid")]
    Signature,
    #[error("invalid authorization token: token has no expiry (exp)")]
    NoExpiry,
    #[error("invalid authorization token: token is expired (exp)")]
    Expired,
    #[error("invalid authorization token: token is not valid yet (nbf)")]
    NotYetValid,
}

/// API key → secret lookup.
#[derive(Debug, Clone)]
pub struct Keys {
    keys: HashMap<String, String>,
}

impl Keys {
    pub fn single(key: &str, secret: &str) -> Self {
        let mut keys = HashMap::new();
        keys.insert(key.to_string(), secret.to_string());
        Keys { keys }
    }

    pub fn secret(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .ok()
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Verifies `token` and returns its claims. `now` is UNIX seconds.
pub fn verify(token: &str, keys: &Keys, now: f64) -> Result<Claims, AuthError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: Header = b64url_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed)?;
    if header.alg != "HS256" {
        return Err(AuthError::Algorithm(header.alg));
    }
    let claims: Claims = b64url_decode(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed)?;
    let secret = keys.secret(&claims.iss).ok_or(AuthError::UnknownKey)?;
    let sig = b64url_decode(s).ok_or(AuthError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| AuthError::Signature)?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| AuthError::Signature)?;
    let exp = claims.exp.ok_or(AuthError::NoExpiry)?;
    if now > exp + LEEWAY_SECS {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claims.nbf {
        if now + LEEWAY_SECS < nbf {
            return Err(AuthError::NotYetValid);
        }
    }
    Ok(claims)
}

/// Signs an arbitrary JSON claims object with HS256.
pub fn sign(claims: &serde_json::Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{sig}")
}

/// The webhook `Authorization` token: bare JWT carrying `sha256` = base64(sha256(body)).
pub fn webhook_token(api_key: &str, secret: &str, body: &[u8], now: u64) -> String {
    let hash = STANDARD.encode(Sha256::digest(body));
    let claims = serde_json::json!({
        "iss": api_key,
        "nbf": now,
        "exp": now + 300,
        "sha256": hash,
        "video": {},
    });
    sign(&claims, secret)
}

/// Extracts the token from `Authorization: Bearer …` or the `access_token` query value.
pub fn token_from_request(
    authorization: Option<&str>,
    access_token: Option<&str>,
) -> Result<String, AuthError> {
    if let Some(h) = authorization.filter(|h| !h.is_empty()) {
        let t = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or(AuthError::MissingBearer)?;
        return Ok(t.trim().to_string());
    }
    match access_token {
        Some(t) if !t.is_empty() => Ok(t.to_string()),
        _ => Err(AuthError::Missing),
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::single("devkey", "secret")
    }

    fn token(extra: serde_json::Value) -> String {
        let mut c = serde_json::json!({"iss":"devkey","sub":"alice","exp": unix_now() + 600.0});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(&c, "secret")
    }

    #[test]
    fn roundtrip_with_grants() {
        let t = token(serde_json::json!({
            "name":"Alice","kind":"sip","attributes":{"a":"b"},
            "video":{"roomJoin":true,"room":"r1","canPublish":false}
        }));
        let c = verify(&t, &keys(), unix_now()).unwrap();
        assert_eq!(c.identity(), "alice");
        assert_eq!(c.kind, "sip");
        assert_eq!(c.attributes["a"], "b");
        let v = c.video();
        assert!(v.room_join && v.room == "r1");
        assert!(!v.can_publish() && v.can_subscribe() && v.can_publish_data());
    }

    #[test]
    fn rejects_bad_tokens() {
        let now = unix_now();
        assert_eq!(verify("x.y", &keys(), now).unwrap_err(), AuthError::Malformed);
        let t = token(serde_json::json!({}));
        let mut bad = t.clone();
        bad.push('A');
        assert_eq!(verify(&bad, &keys(), now).unwrap_err(), AuthError::Signature);
        let wrong = sign(&serde_json::json!({"iss":"devkey","exp":now+60.0}), "other");
        assert_eq!(verify(&wrong, &keys(), now).unwrap_err(), AuthError::Signature);
        let unknown = sign(&serde_json::json!({"iss":"nokey","exp":now+60.0}), "secret");
        assert_eq!(verify(&unknown, &keys(), now).unwrap_err(), AuthError::UnknownKey);
        let noexp = sign(&serde_json::json!({"iss":"devkey"}), "secret");
        assert_eq!(verify(&noexp, &keys(), now).unwrap_err(), AuthError::NoExpiry);
        let expired = sign(&serde_json::json!({"iss":"devkey","exp":now-120.0}), "secret");
        assert_eq!(verify(&expired, &keys(), now).unwrap_err(), AuthError::Expired);
        // within leeway
        let recent = sign(&serde_json::json!({"iss":"devkey","exp":now-30.0}), "secret");
        assert!(verify(&recent, &keys(), now).is_ok());
        let hs512 = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"iss":"devkey"}"#)
        );
        assert!(matches!(verify(&hs512, &keys(), now), Err(AuthError::Algorithm(_))));
    }

    #[test]
    fn room_config_agents() {
        let t = token(serde_json::json!({
            "roomConfig": {"agents": [{"agentName": "intake", "metadata": "m"}], "emptyTimeout": 5}
        }));
        let c = verify(&t, &keys(), unix_now()).unwrap();
        let agents = c.room_agents();
        assert_eq!(agents.len(), 1);
        assert_eq!((agents[0].agent_name.as_str(), agents[0].metadata.as_str()), ("intake", "m"));
        // An unreadable roomConfig is ignored, not a bad token.
        let t = token(serde_json::json!({"roomConfig": {"agents": "nope"}}));
        assert!(verify(&t, &keys(), unix_now()).unwrap().room_agents().is_empty());
        assert!(verify(&token(serde_json::json!({})), &keys(), unix_now()).unwrap().room_agents().is_empty());
    }

    #[test]
    fn token_extraction() {
        assert_eq!(token_from_request(Some("Bearer abc"), None).unwrap(), "abc");
        assert_eq!(token_from_request(None, Some("q")).unwrap(), "q");
        assert_eq!(token_from_request(Some("Basic x"), Some("q")), Err(AuthError::MissingBearer));
        assert_eq!(token_from_request(None, None), Err(AuthError::Missing));
    }

    #[test]
    fn webhook_token_has_body_hash() {
        let t = webhook_token("devkey", "secret", b"{}", unix_now() as u64);
        let c = verify(&t, &keys(), unix_now()).unwrap();
        assert_eq!(c.sha256, STANDARD.encode(Sha256::digest(b"{}")));
    }
}
