//! The one-time, short-lived token that ties a Media Streams WebSocket to the `/incoming-call`
//! that admitted it. TwiML cannot put a query on the stream URL, so the token travels as a
//! `<Parameter>` and comes back in `start.customParameters`, next to the call's description
//! (`callSid`, `accountSid`, `from`, `to`, and the room and identity the phone joins as), which
//! the token's MAC covers: whichever replica the stream lands on can trust that description
//! without having seen the webhook.
//!
//! The same MAC, over a description whose `call_sid` is still empty, signs the TwiML and
//! callback URLs of an outbound call before Twilio has given it a CallSid.
//!
//! Format: `<expires_unix>.<nonce>.<base64url(HMAC-SHA256(key, call_sid|account_sid|from|to|room|identity|direction|expires|nonce))>`.
//! The key is the same on every replica ([`derive_key`]). One-time use is the bridge's job.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamTokenError {
    #[error("stream token is malformed")]
    Malformed,
    #[error("stream token has expired")]
    Expired,
    #[error("stream token does not match this call")]
    BadSignature,
}

/// What the webhook learned about a call, as the token vouches for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDescription<'a> {
    pub call_sid: &'a str,
    pub account_sid: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// The room the phone joins and its identity there.
    pub room: &'a str,
    pub identity: &'a str,
    /// Placed by the bridge (`CreateSIPParticipant`) rather than received.
    pub outbound: bool,
}

/// A verified token's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTokenClaims {
    pub expires_unix: u64,
    pub nonce: String,
}

/// The token key from secrets every replica already shares (an explicit `BRIDGE_SECRET`, or the
/// Twilio auth token and the LiveKit API secret), so no replica needs to have minted a token to
/// check it. Domain-separated, so it is never the same as any secret it comes from.
pub fn derive_key(secrets: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"callbridge stream token key v1").expect("HMAC takes keys of any length");
    for s in secrets {
        // Length-prefixed: ("ab","c") and ("a","bc") give different keys.
        mac.update(&(s.len() as u64).to_be_bytes());
        mac.update(s);
    }
    mac.finalize().into_bytes().into()
}

fn sign(key: &[u8], call: &CallDescription<'_>, expires_unix: u64, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    let direction = if call.outbound { "outbound" } else { "inbound" };
    for part in [call.call_sid, call.account_sid, call.from, call.to, call.room, call.identity, direction, &expires_unix.to_string(), nonce] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    B64URL.encode(mac.finalize().into_bytes())
}

/// `nonce` must be unpredictable (the caller draws it from a CSPRNG) and contain no `.`.
pub fn mint(key: &[u8], call: &CallDescription<'_>, expires_unix: u64, nonce: &str) -> String {
    format!("{expires_unix}.{nonce}.{}", sign(key, call, expires_unix, nonce))
}

pub fn verify(key: &[u8], token: &str, call: &CallDescription<'_>, now_unix: u64) -> Result<StreamTokenClaims, StreamTokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some(exp), Some(nonce), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(StreamTokenError::Malformed);
    };
    let expires_unix: u64 = exp.parse().map_err(|_| StreamTokenError::Malformed)?;
    if nonce.is_empty() || sig.is_empty() {
        return Err(StreamTokenError::Malformed);
    }
    let expected = sign(key, call, expires_unix, nonce);
    if !bool::from(expected.as_bytes().ct_eq(sig.as_bytes())) {
        return Err(StreamTokenError::BadSignature);
    }
    if now_unix > expires_unix {
        return Err(StreamTokenError::Expired);
    }
    Ok(StreamTokenClaims { expires_unix, nonce: nonce.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: CallDescription<'static> = CallDescription {
        call_sid: "CA1",
        account_sid: "AC1",
        from: "+15550000001",
        to: "+15550000002",
        room: "call-CA1",
        identity: "phone-CA1",
        outbound: false,
    };

    #[test]
    fn mint_verify_expire_and_tamper() {
        let t = mint(b"k", &CALL, 1000, "n1");
        assert_eq!(verify(b"k", &t, &CALL, 999), Ok(StreamTokenClaims { expires_unix: 1000, nonce: "n1".into() }));
        assert_eq!(verify(b"k", &t, &CALL, 1001), Err(StreamTokenError::Expired));
        assert_eq!(verify(b"k", &t, &CallDescription { call_sid: "CA2", ..CALL }, 999), Err(StreamTokenError::BadSignature));
        assert_eq!(verify(b"other", &t, &CALL, 999), Err(StreamTokenError::BadSignature));
        let longer = t.replacen("1000.", "2000.", 1);
        assert_eq!(verify(b"k", &longer, &CALL, 999), Err(StreamTokenError::BadSignature));
        for bad in ["", "x", "1.2", "a.b.c", "1..c", "1.n."] {
            assert!(verify(b"k", bad, &CALL, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_call_description_is_covered() {
        let t = mint(b"k", &CALL, 1000, "n1");
        for changed in [
            CallDescription { from: "+19005550100", ..CALL },
            CallDescription { to: "+19005550100", ..CALL },
            CallDescription { account_sid: "AC2", ..CALL },
            CallDescription { room: "someone-elses-room", ..CALL },
            CallDescription { identity: "agent", ..CALL },
            CallDescription { outbound: true, ..CALL },
            CallDescription { call_sid: "", ..CALL },
            // Moving a separator between fields is a different description.
            CallDescription { from: "+1555000000", to: "1+15550000002", ..CALL },
        ] {
            assert_eq!(verify(b"k", &t, &changed, 999), Err(StreamTokenError::BadSignature), "{changed:?}");
        }
    }

    #[test]
    fn keys_derive_from_shared_secrets() {
        let a = derive_key(&[b"twilio", b"livekit"]);
        assert_eq!(a, derive_key(&[b"twilio", b"livekit"]), "every replica gets the same key");
        assert_ne!(a, derive_key(&[b"twili", b"olivekit"]));
        assert_ne!(a, derive_key(&[b"twilio", b"other"]));
        assert_ne!(&a[..], b"twilio");
    }
}
