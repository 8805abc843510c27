//! Twirp errors as LiveKit's servers write them: `{"code":"…","msg":"…","meta":{…}}` with the
//! HTTP status the Twirp spec gives each code. The bridge serves LiveKit's `livekit.SIP` service,
//! and LiveKit's SDKs read these (`TwirpError.code`, `.message`, `.metadata`).

use std::collections::BTreeMap;

use serde::Serialize;

/// Twirp's error codes (the ones a LiveKit server answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TwirpCode {
    InvalidArgument,
    Malformed,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    BadRoute,
    DeadlineExceeded,
    Aborted,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Internal,
}

impl TwirpCode {
    pub fn as_str(self) -> &'static str {
        match self {
            TwirpCode::InvalidArgument => "invalid_argument",
            TwirpCode::Malformed => "malformed",
            TwirpCode::Unauthenticated => "unauthenticated",
            TwirpCode::PermissionDenied => "permission_denied",
            TwirpCode::NotFound => "not_found",
            TwirpCode::BadRoute => "bad_route",
            TwirpCode::DeadlineExceeded => "deadline_exceeded",
            TwirpCode::Aborted => "aborted",
            TwirpCode::FailedPrecondition => "failed_precondition",
            TwirpCode::ResourceExhausted => "resource_exhausted",
            TwirpCode::Unavailable => "unavailable",
            TwirpCode::Internal => "internal",
        }
    }

    /// The HTTP status the Twirp spec assigns.
    pub fn http_status(self) -> u16 {
        match self {
            TwirpCode::InvalidArgument | TwirpCode::Malformed => 400,
            TwirpCode::Unauthenticated => 401,
            TwirpCode::PermissionDenied => 403,
            TwirpCode::NotFound | TwirpCode::BadRoute => 404,
            TwirpCode::DeadlineExceeded => 408,
            TwirpCode::Aborted => 409,
            TwirpCode::FailedPrecondition => 412,
            TwirpCode::ResourceExhausted => 429,
            TwirpCode::Unavailable => 503,
            TwirpCode::Internal => 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TwirpError {
    pub code: TwirpCode,
    pub msg: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl TwirpError {
    pub fn new(code: TwirpCode, msg: impl Into<String>) -> TwirpError {
        TwirpError { code, msg: msg.into(), meta: BTreeMap::new() }
    }

    pub fn with_meta(mut self, key: &str, value: impl Into<String>) -> TwirpError {
        self.meta.insert(key.to_owned(), value.into());
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"code":"internal","msg":"error"}"#.into())
    }
}

impl std::fmt::Display for TwirpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_matches_twirp() {
        let e = TwirpError::new(TwirpCode::ResourceExhausted, "sip status 486: Busy Here")
            .with_meta("sip_status_code", "486")
            .with_meta("sip_status", "Busy Here");
        assert_eq!(
            e.to_json(),
            r#"{"code":"resource_exhausted","msg":"sip status 486: Busy Here","meta":{"sip_status":"Busy Here","sip_status_code":"486"}}"#
        );
        assert_eq!(e.code.http_status(), 429);
        assert_eq!(TwirpError::new(TwirpCode::Unauthenticated, "x").to_json(), r#"{"code":"unauthenticated","msg":"x"}"#);
        assert_eq!(TwirpCode::DeadlineExceeded.http_status(), 408);
    }
}
