//! The one-time, short-lived token that ties a Media Streams WebSocket to the `/incoming-call`
//! that admitted it. TwiML cannot put a query on the stream URL, so the token travels as a
//! `<Parameter>` and comes back in `start.customParameters`.
//!
//! Format: `<expires_unix>.<nonce>.<base64url(HMAC-SHA256(secret, call_sid|expires|nonce))>`.
//! One-time use is the registry's job (it remembers the nonce until it is consumed).

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

/// A verified token's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTokenClaims {
    pub expires_unix: u64,
    pub nonce: String,
}

fn sign(secret: &[u8], call_sid: &str, expires_unix: u64, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(call_sid.as_bytes());
    mac.update(b"|");
    mac.update(expires_unix.to_string().as_bytes());
    mac.update(b"|");
    mac.update(nonce.as_bytes());
    B64URL.encode(mac.finalize().into_bytes())
}

/// `nonce` must be unpredictable (the caller draws it from a CSPRNG) and contain no `.`.
pub fn mint(secret: &[u8], call_sid: &str, expires_unix: u64, nonce: &str) -> String {
    format!("{expires_unix}.{nonce}.{}", sign(secret, call_sid, expires_unix, nonce))
}

pub fn verify(secret: &[u8], token: &str, call_sid: &str, now_unix: u64) -> Result<StreamTokenClaims, StreamTokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some(exp), Some(nonce), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(StreamTokenError::Malformed);
    };
    let expires_unix: u64 = exp.parse().map_err(|_| StreamTokenError::Malformed)?;
    if nonce.is_empty() || sig.is_empty() {
        return Err(StreamTokenError::Malformed);
    }
    let expected = sign(secret, call_sid, expires_unix, nonce);
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

    #[test]
    fn mint_verify_expire_and_tamper() {
        let t = mint(b"k", "CA1", 1000, "n1");
        assert_eq!(verify(b"k", &t, "CA1", 999), Ok(StreamTokenClaims { expires_unix: 1000, nonce: "n1".into() }));
        assert_eq!(verify(b"k", &t, "CA1", 1001), Err(StreamTokenError::Expired));
        assert_eq!(verify(b"k", &t, "CA2", 999), Err(StreamTokenError::BadSignature));
        assert_eq!(verify(b"other", &t, "CA1", 999), Err(StreamTokenError::BadSignature));
        let longer = t.replacen("1000.", "2000.", 1);
        assert_eq!(verify(b"k", &longer, "CA1", 999), Err(StreamTokenError::BadSignature));
        for bad in ["", "x", "1.2", "a.b.c", "1..c", "1.n."] {
            assert!(verify(b"k", bad, "CA1", 0).is_err(), "{bad}");
        }
    }
}
