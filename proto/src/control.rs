//! Control messages between the bridge and the agent, carried as LiveKit data packets on the
//! call's room under [`CONTROL_TOPIC`] (transcripts under [`TRANSCRIPT_TOPIC`], for browsers).
//!
//! JSON, one object per packet: `{"v":2,"type":"interrupt",...}`. `v` is the protocol version;
//! fields we do not know are ignored and a `type` we do not know is a value, so either side can
//! be upgraded first.
//!
//! Version 2 adds [`Control::Utterance`]: the agent names each stretch of its speech before its
//! first frame, and the bridge labels its `playback` reports with that name, so neither side has
//! to infer the other's numbering from silences. A v1 agent never sends it and gets the bridge's
//! own labels (`b1`, `b2`, … by silence); a v1 bridge ignores it as an unknown type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const CONTROL_TOPIC: &str = "callbridge.control";
pub const TRANSCRIPT_TOPIC: &str = "transcript";
/// The version this code writes. Readers accept any version: new fields are optional.
pub const VERSION: u32 = 2;
/// Longest utterance id accepted (they are short labels such as `a12`).
pub const MAX_UTTERANCE_ID: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Agent → bridge: the caller talked over us; drop unplayed audio now (Twilio `clear`).
    Interrupt {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        utterance_id: Option<String>,
    },
    /// Agent → bridge (v2): the agent's audio from now on is the utterance `utterance_id`; the
    /// bridge's `playback` reports for it carry this id.
    Utterance { utterance_id: String },
    /// Bridge → agent: how much of an utterance the caller has actually heard.
    Playback {
        utterance_id: String,
        heard_ms: u32,
        /// The whole utterance was played.
        #[serde(default)]
        complete: bool,
        /// Playback was cut short by an interrupt; `heard_ms` is final.
        #[serde(default)]
        interrupted: bool,
    },
    /// Agent → bridge: end the phone call.
    Hangup {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Agent → bridge: move the call to another number.
    Transfer { to: String },
    /// Bridge → agent: the caller pressed a key.
    Dtmf { digit: String },
    /// Agent → room: a line of the conversation, and the form's fields so far.
    Transcript {
        role: String,
        text: String,
        #[serde(default = "yes")]
        is_final: bool,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        fields: BTreeMap<String, String>,
    },
    /// A type this version does not know.
    #[serde(skip)]
    Unknown { kind: String },
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("control message is not UTF-8 JSON: {0}")]
    Json(String),
    #[error("control message lacks `type`")]
    NoType,
    #[error("control message of type {kind:?} is malformed: {msg}")]
    Malformed { kind: String, msg: String },
}

#[derive(Serialize)]
struct Envelope<'a> {
    v: u32,
    #[serde(flatten)]
    msg: &'a Control,
}

impl Control {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&Envelope { v: VERSION, msg: self }).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<Control, ControlError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ControlError::Json(e.to_string()))?;
        let kind = value.get("type").and_then(|t| t.as_str()).ok_or(ControlError::NoType)?.to_owned();
        const KNOWN: [&str; 7] = ["interrupt", "utterance", "playback", "hangup", "transfer", "dtmf", "transcript"];
        if !KNOWN.contains(&kind.as_str()) {
            return Ok(Control::Unknown { kind });
        }
        let msg: Control =
            serde_json::from_value(value).map_err(|e| ControlError::Malformed { kind: kind.clone(), msg: e.to_string() })?;
        match &msg {
            Control::Utterance { utterance_id } if !valid_utterance_id(utterance_id) => {
                Err(ControlError::Malformed { kind, msg: "utterance_id must be 1-64 printable ASCII characters".into() })
            }
            _ => Ok(msg),
        }
    }
}

/// An utterance id as the agent may name one: 1 to [`MAX_UTTERANCE_ID`] printable ASCII
/// characters (it is echoed into every report and log line).
pub fn valid_utterance_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_UTTERANCE_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_type() {
        let all = [
            Control::Interrupt { utterance_id: Some("u7".into()) },
            Control::Interrupt { utterance_id: None },
            Control::Utterance { utterance_id: "a3".into() },
            Control::Playback { utterance_id: "u7".into(), heard_ms: 1240, complete: false, interrupted: true },
            Control::Hangup { reason: Some("done".into()) },
            Control::Transfer { to: "+15551234567".into() },
            Control::Dtmf { digit: "#".into() },
            Control::Transcript {
                role: "user".into(),
                text: "my name is Ada".into(),
                is_final: true,
                fields: [("name".to_string(), "Ada".to_string())].into(),
            },
        ];
        for m in all {
            let bytes = m.to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["v"], 2);
            assert_eq!(Control::parse(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn wire_shape_is_stable() {
        let b = Control::Playback { utterance_id: "a".into(), heard_ms: 20, complete: true, interrupted: false }.to_bytes();
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"{"v":2,"type":"playback","utterance_id":"a","heard_ms":20,"complete":true,"interrupted":false}"#
        );
    }

    #[test]
    fn tolerant_of_new_fields_versions_and_types() {
        // A v1 peer's messages read the same.
        assert_eq!(
            Control::parse(br#"{"v":1,"type":"interrupt","utterance_id":"b1"}"#).unwrap(),
            Control::Interrupt { utterance_id: Some("b1".into()) }
        );
        assert_eq!(
            Control::parse(br#"{"v":2,"type":"hangup","reason":"x","future":[1,2]}"#).unwrap(),
            Control::Hangup { reason: Some("x".into()) }
        );
        assert_eq!(Control::parse(br#"{"type":"dtmf","digit":"5"}"#).unwrap(), Control::Dtmf { digit: "5".into() });
        assert_eq!(Control::parse(br#"{"v":1,"type":"wave"}"#).unwrap(), Control::Unknown { kind: "wave".into() });
    }

    #[test]
    fn malformed_is_a_typed_error() {
        assert!(matches!(Control::parse(b"\xff\xfe"), Err(ControlError::Json(_))));
        assert!(matches!(Control::parse(b"[]"), Err(ControlError::NoType)));
        assert!(matches!(Control::parse(br#"{"v":1}"#), Err(ControlError::NoType)));
        assert!(matches!(
            Control::parse(br#"{"v":1,"type":"transfer"}"#),
            Err(ControlError::Malformed { kind, .. }) if kind == "transfer"
        ));
        assert!(matches!(
            Control::parse(br#"{"v":1,"type":"playback","utterance_id":"a","heard_ms":-5}"#),
            Err(ControlError::Malformed { .. })
        ));
        let long = format!(r#"{{"v":2,"type":"utterance","utterance_id":"{}"}}"#, "a".repeat(65));
        for bad in [r#"{"v":2,"type":"utterance","utterance_id":""}"#, r#"{"v":2,"type":"utterance","utterance_id":"a b"}"#, &long] {
            assert!(matches!(Control::parse(bad.as_bytes()), Err(ControlError::Malformed { .. })), "{bad}");
        }
    }
}
