//! Minimal HS256 LiveKit access-token minting for tests and examples (the production helper
//! lives in `proto`; this keeps `room`'s tests self-contained).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Claims of a join token.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub identity: String,
    pub name: String,
    pub room: String,
    /// `standard`, `sip`, `agent`, …
    pub kind: String,
    pub metadata: String,
    pub attributes: Vec<(String, String)>,
}

/// Sign a join token for `grant` with `key`/`secret`, valid for an hour.
pub fn join_token(key: &str, secret: &str, grant: &Grant) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let attrs: serde_json::Map<String, serde_json::Value> =
        grant.attributes.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let mut claims = serde_json::json!({
        "iss": key,
        "sub": grant.identity,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "exp": now + 3600,
        "video": {
            "roomJoin": true,
            "room": grant.room,
            "canPublish": true,
            "canSubscribe": true,
            "canPublishData": true,
            "canUpdateOwnMetadata": true
        }
    });
    let obj = claims.as_object_mut().unwrap();
    if !grant.name.is_empty() {
        obj.insert("name".into(), grant.name.clone().into());
    }
    if !grant.kind.is_empty() {
        obj.insert("kind".into(), grant.kind.clone().into());
    }
    if !grant.metadata.is_empty() {
        obj.insert("metadata".into(), grant.metadata.clone().into());
    }
    if !attrs.is_empty() {
        obj.insert("attributes".into(), serde_json::Value::Object(attrs));
    }
    sign(secret, &claims)
}

#[allow(dead_code)] // used by the tests, not by the example that shares this file
/// Sign a server-API token with `roomAdmin` (and `roomCreate`/`roomList`) for `room`.
pub fn admin_token(key: &str, secret: &str, room: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": key, "sub": "test-admin", "nbf": now.saturating_sub(10), "iat": now, "exp": now + 600,
        "video": { "roomAdmin": true, "room": room, "roomCreate": true, "roomList": true }
    });
    sign(secret, &claims)
}

fn sign(secret: &str, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}
