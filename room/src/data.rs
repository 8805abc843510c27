//! LiveKit data packets (`livekit.DataPacket`) carried on the `_reliable` / `_lossy` data
//! channels: user packets (payload, topic, destination identities) and SIP DTMF.
//!
//! Sending goes out on the *publisher* peer connection's channels; the server delivers other
//! participants' packets on the *subscriber* peer connection's channels (it opens those). This
//! module only builds and parses bytes; the driver in `room.rs` moves them.

use livekit_protocol as proto;
use prost::Message;

/// Data channel label for reliable, ordered delivery.
pub const RELIABLE_LABEL: &str = "_reliable";
/// Data channel label for unordered delivery without retransmits.
pub const LOSSY_LABEL: &str = "_lossy";
/// Largest encoded packet we send (LiveKit's default SCTP message limit is 64 KiB; keep margin).
pub const MAX_PACKET_BYTES: usize = 60 * 1024;

/// Which channel a packet travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// `_reliable`: ordered, retransmitted.
    Reliable,
    /// `_lossy`: unordered, no retransmits (may be lost).
    Lossy,
}

impl DataKind {
    /// Channel label for this kind.
    pub fn label(self) -> &'static str {
        match self {
            DataKind::Reliable => RELIABLE_LABEL,
            DataKind::Lossy => LOSSY_LABEL,
        }
    }
    /// Kind of a channel label (None for other channels).
    pub fn from_label(label: &str) -> Option<Self> {
        match label {
            RELIABLE_LABEL => Some(DataKind::Reliable),
            LOSSY_LABEL => Some(DataKind::Lossy),
            _ => None,
        }
    }
    fn proto(self) -> proto::data_packet::Kind {
        match self {
            DataKind::Reliable => proto::data_packet::Kind::Reliable,
            DataKind::Lossy => proto::data_packet::Kind::Lossy,
        }
    }
}

/// A user data packet to send with [`Room::send_data`](crate::Room::send_data).
#[derive(Debug, Clone, Default)]
pub struct DataPacketBuilder {
    /// Application payload.
    pub payload: Vec<u8>,
    /// Optional topic (receivers filter on it).
    pub topic: Option<String>,
    /// Reliable (`_reliable`) or lossy (`_lossy`).
    pub reliable: bool,
    /// Only these participants receive it (empty: everyone).
    pub destination_identities: Vec<String>,
}

impl DataPacketBuilder {
    /// A reliable packet to everyone.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self { payload: payload.into(), reliable: true, ..Default::default() }
    }
    /// Set the topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }
    /// Choose reliable (true) or lossy (false).
    pub fn reliable(mut self, reliable: bool) -> Self {
        self.reliable = reliable;
        self
    }
    /// Restrict delivery to these identities.
    pub fn to<I: IntoIterator<Item = S>, S: Into<String>>(mut self, identities: I) -> Self {
        self.destination_identities = identities.into_iter().map(Into::into).collect();
        self
    }
    /// The channel this packet goes on.
    pub fn kind(&self) -> DataKind {
        if self.reliable {
            DataKind::Reliable
        } else {
            DataKind::Lossy
        }
    }
}

/// Who we are, stamped onto outgoing packets.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sender {
    pub identity: String,
    pub sid: String,
}

#[allow(deprecated)] // `kind` and the user packet's identity fields: read by older peers
/// Encode a user packet. `sequence` is only meaningful for reliable packets.
pub(crate) fn encode_user(b: &DataPacketBuilder, from: &Sender, sequence: u32) -> Vec<u8> {
    let kind = b.kind();
    let pkt = proto::DataPacket {
        kind: kind.proto() as i32,
        participant_identity: from.identity.clone(),
        participant_sid: from.sid.clone(),
        destination_identities: b.destination_identities.clone(),
        sequence,
        value: Some(proto::data_packet::Value::User(proto::UserPacket {
            // Older servers/clients read these from the user packet.
            participant_sid: from.sid.clone(),
            participant_identity: from.identity.clone(),
            payload: b.payload.clone(),
            destination_identities: b.destination_identities.clone(),
            topic: b.topic.clone(),
            ..Default::default()
        })),
    };
    pkt.encode_to_vec()
}

#[allow(deprecated)]
/// Encode a SIP DTMF packet (always reliable).
pub(crate) fn encode_dtmf(code: u32, digit: &str, destinations: &[String], from: &Sender, sequence: u32) -> Vec<u8> {
    let pkt = proto::DataPacket {
        kind: proto::data_packet::Kind::Reliable as i32,
        participant_identity: from.identity.clone(),
        participant_sid: from.sid.clone(),
        destination_identities: destinations.to_vec(),
        sequence,
        value: Some(proto::data_packet::Value::SipDtmf(proto::SipDtmf { code, digit: digit.to_string() })),
    };
    pkt.encode_to_vec()
}

/// A user packet received from another participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMessage {
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Topic, if the sender set one.
    pub topic: Option<String>,
    /// Channel it arrived on.
    pub kind: DataKind,
    /// Sender identity (empty when sent by the server API).
    pub participant_identity: String,
    /// Sender sid (empty when sent by the server API).
    pub participant_sid: String,
}

/// A SIP DTMF digit received from another participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtmfMessage {
    /// DTMF event code (0-9, 10 = `*`, 11 = `#`, 12-15 = A-D).
    pub code: u32,
    /// The digit as text.
    pub digit: String,
    /// Sender identity.
    pub participant_identity: String,
}

/// What an incoming data channel message turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    User(DataMessage),
    Dtmf(DtmfMessage),
    /// A valid packet of a type we do not surface (speaker updates, transcriptions, RPC, …).
    Other(&'static str),
}

#[allow(deprecated)]
/// Parse one data channel message. Malformed bytes give an error (never a panic).
pub(crate) fn decode(bytes: &[u8], arrived_on: DataKind) -> Result<Incoming, prost::DecodeError> {
    let pkt = proto::DataPacket::decode(bytes)?;
    let kind = match proto::data_packet::Kind::try_from(pkt.kind) {
        Ok(proto::data_packet::Kind::Lossy) => DataKind::Lossy,
        Ok(proto::data_packet::Kind::Reliable) => arrived_on,
        Err(_) => arrived_on,
    };
    Ok(match pkt.value {
        Some(proto::data_packet::Value::User(u)) => {
            let identity = if pkt.participant_identity.is_empty() { u.participant_identity } else { pkt.participant_identity };
            let sid = if pkt.participant_sid.is_empty() { u.participant_sid } else { pkt.participant_sid };
            Incoming::User(DataMessage { payload: u.payload, topic: u.topic, kind, participant_identity: identity, participant_sid: sid })
        }
        Some(proto::data_packet::Value::SipDtmf(d)) => {
            Incoming::Dtmf(DtmfMessage { code: d.code, digit: d.digit, participant_identity: pkt.participant_identity })
        }
        Some(proto::data_packet::Value::Speaker(_)) => Incoming::Other("speaker"),
        Some(proto::data_packet::Value::Transcription(_)) => Incoming::Other("transcription"),
        Some(proto::data_packet::Value::ChatMessage(_)) => Incoming::Other("chat"),
        Some(proto::data_packet::Value::RpcRequest(_))
        | Some(proto::data_packet::Value::RpcAck(_))
        | Some(proto::data_packet::Value::RpcResponse(_)) => Incoming::Other("rpc"),
        Some(_) => Incoming::Other("other"),
        None => Incoming::Other("empty"),
    })
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;

    fn me() -> Sender {
        Sender { identity: "phone-CA1".into(), sid: "PA_1".into() }
    }

    #[test]
    fn user_packet_roundtrip() {
        let b = DataPacketBuilder::new(b"hello".to_vec()).topic("lk.control").to(["agent-1"]);
        let bytes = encode_user(&b, &me(), 7);
        let raw = proto::DataPacket::decode(bytes.as_slice()).unwrap();
        assert_eq!(raw.sequence, 7);
        assert_eq!(raw.kind, proto::data_packet::Kind::Reliable as i32);
        assert_eq!(raw.destination_identities, vec!["agent-1".to_string()]);
        match decode(&bytes, DataKind::Reliable).unwrap() {
            Incoming::User(m) => {
                assert_eq!(m.payload, b"hello");
                assert_eq!(m.topic.as_deref(), Some("lk.control"));
                assert_eq!(m.participant_identity, "phone-CA1");
                assert_eq!(m.participant_sid, "PA_1");
                assert_eq!(m.kind, DataKind::Reliable);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lossy_and_legacy_identity() {
        // A packet that only carries the identity in the (legacy) user packet.
        let pkt = proto::DataPacket {
            kind: proto::data_packet::Kind::Lossy as i32,
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                participant_identity: "old".into(),
                payload: vec![1, 2, 3],
                ..Default::default()
            })),
            ..Default::default()
        };
        match decode(&pkt.encode_to_vec(), DataKind::Lossy).unwrap() {
            Incoming::User(m) => {
                assert_eq!(m.participant_identity, "old");
                assert_eq!(m.kind, DataKind::Lossy);
                assert_eq!(m.topic, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dtmf_roundtrip() {
        let bytes = encode_dtmf(11, "#", &[], &me(), 1);
        assert_eq!(
            decode(&bytes, DataKind::Reliable).unwrap(),
            Incoming::Dtmf(DtmfMessage { code: 11, digit: "#".into(), participant_identity: "phone-CA1".into() })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[0xff, 0xff, 0xff, 0xff], DataKind::Reliable).is_err());
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = decode(&junk, DataKind::Lossy);
        }
        assert_eq!(decode(&[], DataKind::Reliable).unwrap(), Incoming::Other("empty"));
    }

    #[test]
    fn labels() {
        assert_eq!(DataKind::from_label("_reliable"), Some(DataKind::Reliable));
        assert_eq!(DataKind::from_label("_lossy"), Some(DataKind::Lossy));
        assert_eq!(DataKind::from_label("_data_track"), None);
        assert_eq!(DataPacketBuilder::new(vec![]).reliable(false).kind(), DataKind::Lossy);
    }
}
