//! Twilio Media Streams messages (bidirectional `<Connect><Stream>`), both directions.
//!
//! Every message is one JSON text frame. Twilio sends `sequenceNumber`, `chunk` and `timestamp`
//! as JSON *strings*; we accept strings or numbers and always write strings, as Twilio does.
//! An event name we do not know is a value (`Inbound::Unknown`), not an error: Twilio may add
//! events, and a call must not end because of one.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Why a Twilio message could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TwilioError {
    #[error("not a JSON object with an \"event\" field: {0}")]
    Json(String),
    #[error("{event} message lacks required field `{field}`")]
    MissingField { event: &'static str, field: &'static str },
    #[error("media payload is not valid base64: {0}")]
    BadBase64(String),
}

/// The stream's metadata from the `start` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamStart {
    #[serde(default)]
    pub account_sid: String,
    #[serde(default)]
    pub stream_sid: String,
    #[serde(default)]
    pub call_sid: String,
    #[serde(default)]
    pub tracks: Vec<String>,
    #[serde(default)]
    pub media_format: MediaFormat,
    /// `<Parameter name= value=>` from the TwiML, as sent.
    #[serde(default)]
    pub custom_parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u16,
}

impl Default for MediaFormat {
    fn default() -> Self {
        MediaFormat { encoding: "audio/x-mulaw".into(), sample_rate: 8000, channels: 1 }
    }
}

impl MediaFormat {
    /// The only format a bidirectional stream carries.
    pub fn is_mulaw_8k_mono(&self) -> bool {
        self.encoding == "audio/x-mulaw" && self.sample_rate == 8000 && self.channels == 1
    }
}

/// One inbound audio chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaChunk {
    pub track: String,
    /// Starts at 1, one per chunk.
    pub chunk: u64,
    /// Milliseconds since the stream started.
    pub timestamp_ms: u64,
    /// Raw μ-law bytes (base64 already decoded).
    pub payload: Vec<u8>,
}

/// A message from Twilio to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Connected { protocol: String, version: String },
    Start { sequence_number: u64, stream_sid: String, start: StreamStart },
    Media { sequence_number: u64, stream_sid: String, media: MediaChunk },
    Mark { sequence_number: u64, stream_sid: String, name: String },
    Dtmf { sequence_number: u64, stream_sid: String, track: String, digit: String },
    Stop { sequence_number: u64, stream_sid: String, account_sid: String, call_sid: String },
    /// An event this code does not know; kept so the caller can count it.
    Unknown { event: String },
}

/// A message from us to Twilio. Twilio accepts only these three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Media { stream_sid: String, payload: Vec<u8> },
    Mark { stream_sid: String, name: String },
    Clear { stream_sid: String },
}

// ---- wire shapes -------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(rename = "sequenceNumber", default, deserialize_with = "opt_num")]
    sequence_number: Option<u64>,
    #[serde(rename = "streamSid", default)]
    stream_sid: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    start: Option<StreamStart>,
    #[serde(default, borrow)]
    media: Option<RawMedia<'a>>,
    #[serde(default)]
    mark: Option<RawMark>,
    #[serde(default)]
    dtmf: Option<RawDtmf>,
    #[serde(default)]
    stop: Option<RawStop>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(default)]
    track: Option<String>,
    #[serde(default, deserialize_with = "opt_num")]
    chunk: Option<u64>,
    #[serde(default, deserialize_with = "opt_num")]
    timestamp: Option<u64>,
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMark {
    name: Option<String>,
}

#[derive(Deserialize)]
struct RawDtmf {
    #[serde(default)]
    track: Option<String>,
    digit: Option<String>,
}

#[derive(Deserialize)]
struct RawStop {
    #[serde(rename = "accountSid", default)]
    account_sid: String,
    #[serde(rename = "callSid", default)]
    call_sid: String,
}

/// Twilio writes numbers as strings; accept either, reject anything else.
fn opt_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct NumOrStr;
    impl<'de> de::Visitor<'de> for NumOrStr {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative integer, or one written as a string")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.parse().map(Some).map_err(|_| E::custom(format!("not a number: {v:?}")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(NumOrStr)
}

fn need<T>(v: Option<T>, event: &'static str, field: &'static str) -> Result<T, TwilioError> {
    v.ok_or(TwilioError::MissingField { event, field })
}

impl Inbound {
    /// Parses one text frame from Twilio.
    pub fn parse(text: &str) -> Result<Inbound, TwilioError> {
        let raw: RawMessage = serde_json::from_str(text).map_err(|e| TwilioError::Json(e.to_string()))?;
        let seq = raw.sequence_number;
        let sid = raw.stream_sid;
        Ok(match raw.event.as_ref() {
            "connected" => Inbound::Connected {
                protocol: raw.protocol.unwrap_or_default(),
                version: raw.version.unwrap_or_default(),
            },
            "start" => {
                let start = need(raw.start, "start", "start")?;
                let stream_sid = sid.unwrap_or_else(|| start.stream_sid.clone());
                if stream_sid.is_empty() {
                    return Err(TwilioError::MissingField { event: "start", field: "streamSid" });
                }
                Inbound::Start { sequence_number: seq.unwrap_or(0), stream_sid, start }
            }
            "media" => {
                let m = need(raw.media, "media", "media")?;
                let b64 = need(m.payload, "media", "media.payload")?;
                let payload = B64.decode(b64.as_bytes()).map_err(|e| TwilioError::BadBase64(e.to_string()))?;
                Inbound::Media {
                    sequence_number: need(seq, "media", "sequenceNumber")?,
                    stream_sid: need(sid, "media", "streamSid")?,
                    media: MediaChunk {
                        track: m.track.unwrap_or_else(|| "inbound".into()),
                        chunk: need(m.chunk, "media", "media.chunk")?,
                        timestamp_ms: need(m.timestamp, "media", "media.timestamp")?,
                        payload,
                    },
                }
            }
            "mark" => Inbound::Mark {
                sequence_number: seq.unwrap_or(0),
                stream_sid: need(sid, "mark", "streamSid")?,
                name: need(need(raw.mark, "mark", "mark")?.name, "mark", "mark.name")?,
            },
            "dtmf" => {
                let d = need(raw.dtmf, "dtmf", "dtmf")?;
                Inbound::Dtmf {
                    sequence_number: seq.unwrap_or(0),
                    stream_sid: need(sid, "dtmf", "streamSid")?,
                    track: d.track.unwrap_or_else(|| "inbound_track".into()),
                    digit: need(d.digit, "dtmf", "dtmf.digit")?,
                }
            }
            "stop" => {
                let s = raw.stop.unwrap_or(RawStop { account_sid: String::new(), call_sid: String::new() });
                Inbound::Stop {
                    sequence_number: seq.unwrap_or(0),
                    stream_sid: sid.unwrap_or_default(),
                    account_sid: s.account_sid,
                    call_sid: s.call_sid,
                }
            }
            other => Inbound::Unknown { event: other.to_owned() },
        })
    }

    /// Writes the message as Twilio would send it (used by the call simulator and tests).
    pub fn to_json(&self) -> String {
        use serde_json::json;
        let v = match self {
            Inbound::Connected { protocol, version } => {
                json!({"event":"connected","protocol":protocol,"version":version})
            }
            Inbound::Start { sequence_number, stream_sid, start } => json!({
                "event":"start","sequenceNumber":sequence_number.to_string(),
                "start":start,"streamSid":stream_sid}),
            Inbound::Media { sequence_number, stream_sid, media } => json!({
                "event":"media","sequenceNumber":sequence_number.to_string(),
                "media":{"track":media.track,"chunk":media.chunk.to_string(),
                         "timestamp":media.timestamp_ms.to_string(),"payload":B64.encode(&media.payload)},
                "streamSid":stream_sid}),
            Inbound::Mark { sequence_number, stream_sid, name } => json!({
                "event":"mark","sequenceNumber":sequence_number.to_string(),
                "streamSid":stream_sid,"mark":{"name":name}}),
            Inbound::Dtmf { sequence_number, stream_sid, track, digit } => json!({
                "event":"dtmf","streamSid":stream_sid,"sequenceNumber":sequence_number.to_string(),
                "dtmf":{"track":track,"digit":digit}}),
            Inbound::Stop { sequence_number, stream_sid, account_sid, call_sid } => json!({
                "event":"stop","sequenceNumber":sequence_number.to_string(),
                "stop":{"accountSid":account_sid,"callSid":call_sid},"streamSid":stream_sid}),
            Inbound::Unknown { event } => json!({"event":event}),
        };
        v.to_string()
    }
}

impl Outbound {
    /// Parses a message we (or a bridge under test) sent to Twilio. Anything but the three
    /// allowed events is an error: Twilio answers those with error 31924.
    pub fn parse(text: &str) -> Result<Outbound, TwilioError> {
        let raw: RawMessage = serde_json::from_str(text).map_err(|e| TwilioError::Json(e.to_string()))?;
        let sid = raw.stream_sid;
        match raw.event.as_ref() {
            "media" => {
                let m = need(raw.media, "media", "media")?;
                let b64 = need(m.payload, "media", "media.payload")?;
                let payload = B64.decode(b64.as_bytes()).map_err(|e| TwilioError::BadBase64(e.to_string()))?;
                Ok(Outbound::Media { stream_sid: need(sid, "media", "streamSid")?, payload })
            }
            "mark" => Ok(Outbound::Mark {
                stream_sid: need(sid, "mark", "streamSid")?,
                name: need(need(raw.mark, "mark", "mark")?.name, "mark", "mark.name")?,
            }),
            "clear" => Ok(Outbound::Clear { stream_sid: need(sid, "clear", "streamSid")? }),
            other => Err(TwilioError::Json(format!("event {other:?} is not one Twilio accepts from a server"))),
        }
    }

    /// Serialises into `out` (cleared first), so a per-call buffer is reused on the media path.
    pub fn write_json(&self, out: &mut String) {
        out.clear();
        match self {
            Outbound::Media { stream_sid, payload } => write_media_json(stream_sid, payload, out),
            Outbound::Mark { stream_sid, name } => write_mark_json(stream_sid, name, out),
            Outbound::Clear { stream_sid } => write_clear_json(stream_sid, out),
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }
}

/// Whether `s` is a Twilio identifier of that kind: `prefix` (`CA`, `AC`, `MZ`, …) and 32 hex
/// digits (protocols.md §3).
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == prefix.len() + 32 && s.starts_with(prefix) && s[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The outbound `media` message without building an `Outbound` (no payload copy).
pub fn write_media_json(stream_sid: &str, payload: &[u8], out: &mut String) {
    out.push_str(r#"{"event":"media","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","media":{"payload":""#);
    B64.encode_string(payload, out);
    out.push_str(r#""}}"#);
}

/// The outbound `mark` message, appended to `out`.
pub fn write_mark_json(stream_sid: &str, name: &str, out: &mut String) {
    out.push_str(r#"{"event":"mark","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","mark":{"name":"#);
    push_json_str(out, name);
    out.push_str("}}");
}

/// The outbound `clear` message, appended to `out`.
pub fn write_clear_json(stream_sid: &str, out: &mut String) {
    out.push_str(r#"{"event":"clear","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push('}');
}

fn push_json_str(out: &mut String, s: &str) {
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // serde_json's string escaping for the rest.
    let escaped = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    out.push_str(&escaped);
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC123","streamSid":"MZ123","callSid":"CA123","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"FirstName":"Jane"}},"streamSid":"MZ123"}"#;

    #[test]
    fn parses_documented_messages() {
        assert_eq!(
            Inbound::parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#).unwrap(),
            Inbound::Connected { protocol: "Call".into(), version: "1.0.0".into() }
        );
        match Inbound::parse(START).unwrap() {
            Inbound::Start { sequence_number, stream_sid, start } => {
                assert_eq!(sequence_number, 1);
                assert_eq!(stream_sid, "MZ123");
                assert_eq!(start.call_sid, "CA123");
                assert_eq!(start.account_sid, "AC123");
                assert!(start.media_format.is_mulaw_8k_mono());
                assert_eq!(start.custom_parameters.get("FirstName").map(String::as_str), Some("Jane"));
            }
            other => panic!("{other:?}"),
        }
        let media = r#"{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"/38A"},"streamSid":"MZ123"}"#;
        assert_eq!(
            Inbound::parse(media).unwrap(),
            Inbound::Media {
                sequence_number: 4,
                stream_sid: "MZ123".into(),
                media: MediaChunk { track: "inbound".into(), chunk: 2, timestamp_ms: 5, payload: vec![0xff, 0x7f, 0x00] },
            }
        );
        let dtmf = r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#;
        assert!(matches!(Inbound::parse(dtmf).unwrap(), Inbound::Dtmf { digit, sequence_number: 5, .. } if digit == "1"));
        let mark = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"my label"}}"#;
        assert!(matches!(Inbound::parse(mark).unwrap(), Inbound::Mark { name, .. } if name == "my label"));
        let stop = r#"{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"AC1","callSid":"CA1"},"streamSid":"MZ1"}"#;
        assert!(matches!(Inbound::parse(stop).unwrap(), Inbound::Stop { call_sid, .. } if call_sid == "CA1"));
    }

    #[test]
    fn numbers_may_be_numbers() {
        let media = r#"{"event":"media","sequenceNumber":4,"media":{"chunk":2,"timestamp":40,"payload":""},"streamSid":"MZ"}"#;
        match Inbound::parse(media).unwrap() {
            Inbound::Media { media, .. } => assert_eq!((media.chunk, media.timestamp_ms), (2, 40)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_event_is_a_value() {
        assert_eq!(
            Inbound::parse(r#"{"event":"futureThing","x":1}"#).unwrap(),
            Inbound::Unknown { event: "futureThing".into() }
        );
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        for bad in [
            "",
            "null",
            "[1,2]",
            "{}",
            r#"{"event":5}"#,
            r#"{"event":"media","sequenceNumber":"x","media":{"chunk":"1","timestamp":"0","payload":""},"streamSid":"MZ"}"#,
            r#"{"event":"media","sequenceNumber":"-1","media":{"chunk":"1","timestamp":"0","payload":""},"streamSid":"MZ"}"#,
        ] {
            assert!(matches!(Inbound::parse(bad), Err(TwilioError::Json(_))), "{bad}");
        }
        assert_eq!(
            Inbound::parse(r#"{"event":"media","sequenceNumber":"1","streamSid":"MZ"}"#),
            Err(TwilioError::MissingField { event: "media", field: "media" })
        );
        assert_eq!(
            Inbound::parse(r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":""},"streamSid":"MZ"}"#),
            Err(TwilioError::MissingField { event: "media", field: "media.chunk" })
        );
        assert!(matches!(
            Inbound::parse(r#"{"event":"media","sequenceNumber":"1","media":{"chunk":"1","timestamp":"0","payload":"!!"},"streamSid":"MZ"}"#),
            Err(TwilioError::BadBase64(_))
        ));
        assert_eq!(
            Inbound::parse(r#"{"event":"mark","streamSid":"MZ","mark":{}}"#),
            Err(TwilioError::MissingField { event: "mark", field: "mark.name" })
        );
        assert_eq!(
            Inbound::parse(r#"{"event":"start","sequenceNumber":"1","start":{}}"#),
            Err(TwilioError::MissingField { event: "start", field: "streamSid" })
        );
    }

    #[test]
    fn inbound_round_trips() {
        let msgs = [
            Inbound::parse(START).unwrap(),
            Inbound::Media {
                sequence_number: 9,
                stream_sid: "MZ9".into(),
                media: MediaChunk { track: "inbound".into(), chunk: 7, timestamp_ms: 140, payload: vec![1, 2, 255] },
            },
            Inbound::Mark { sequence_number: 3, stream_sid: "MZ9".into(), name: "a\"b".into() },
            Inbound::Dtmf { sequence_number: 4, stream_sid: "MZ9".into(), track: "inbound_track".into(), digit: "#".into() },
            Inbound::Stop { sequence_number: 5, stream_sid: "MZ9".into(), account_sid: "AC".into(), call_sid: "CA".into() },
        ];
        for m in msgs {
            let text = m.to_json();
            assert_eq!(Inbound::parse(&text).unwrap(), m, "{text}");
        }
        // Twilio's numbers are strings on the wire.
        let text = Inbound::Media {
            sequence_number: 2,
            stream_sid: "MZ".into(),
            media: MediaChunk { track: "inbound".into(), chunk: 1, timestamp_ms: 0, payload: vec![] },
        }
        .to_json();
        assert!(text.contains(r#""sequenceNumber":"2""#) && text.contains(r#""chunk":"1""#), "{text}");
    }

    #[test]
    fn outbound_messages_have_twilio_shape() {
        let media = Outbound::Media { stream_sid: "MZ1".into(), payload: vec![0xff; 160] }.to_json();
        let v: serde_json::Value = serde_json::from_str(&media).unwrap();
        assert_eq!(v["event"], "media");
        assert_eq!(v["streamSid"], "MZ1");
        // 160 μ-law bytes are 216 base64 characters.
        assert_eq!(v["media"]["payload"].as_str().unwrap().len(), 216);
        assert_eq!(
            Outbound::Mark { stream_sid: "MZ1".into(), name: "u1:3".into() }.to_json(),
            r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"u1:3"}}"#
        );
        assert_eq!(Outbound::Clear { stream_sid: "MZ1".into() }.to_json(), r#"{"event":"clear","streamSid":"MZ1"}"#);
        for m in [
            Outbound::Media { stream_sid: "MZ1".into(), payload: vec![1, 2, 3] },
            Outbound::Mark { stream_sid: "MZ\"1".into(), name: "x\\y".into() },
            Outbound::Clear { stream_sid: "MZ1".into() },
        ] {
            assert_eq!(Outbound::parse(&m.to_json()).unwrap(), m);
        }
        assert!(Outbound::parse(r#"{"event":"start","streamSid":"MZ"}"#).is_err());
    }

    #[test]
    fn sids_are_prefix_and_32_hex_digits() {
        assert!(is_sid("CA0123456789abcdef0123456789ABCDEF", "CA"));
        assert!(!is_sid("CA0123456789abcdef0123456789ABCDE", "CA"));
        assert!(!is_sid("MZ0123456789abcdef0123456789abcdef", "CA"));
        assert!(!is_sid("CA0123456789abcdef0123456789abcdeg", "CA"));
        assert!(!is_sid("CAé123456789abcdef0123456789abcde", "CA"));
    }
}
