//! What a [`Room`](crate::Room) tells the application, and the participant / track snapshots
//! those events carry.
//!
//! Events come out of the bounded receiver returned by
//! [`Room::connect`](crate::Room::connect). If the application stops reading, events are
//! dropped (and counted in [`RoomStats::events_dropped`](crate::RoomStats)); the room never
//! buffers without bound.

use std::collections::HashMap;

use livekit_protocol as proto;

use crate::audio::RemoteAudioTrack;
use crate::data::{DataMessage, DtmfMessage};

/// Kind of participant (from the token's `kind` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParticipantKind {
    /// A regular client.
    Standard,
    /// An ingress.
    Ingress,
    /// An egress / recorder.
    Egress,
    /// A phone caller (LiveKit SIP, or our Twilio bridge).
    Sip,
    /// An AI agent.
    Agent,
    /// Anything newer than this crate knows.
    Other(i32),
}

impl From<i32> for ParticipantKind {
    fn from(v: i32) -> Self {
        use proto::participant_info::Kind;
        match Kind::try_from(v) {
            Ok(Kind::Standard) => Self::Standard,
            Ok(Kind::Ingress) => Self::Ingress,
            Ok(Kind::Egress) => Self::Egress,
            Ok(Kind::Sip) => Self::Sip,
            Ok(Kind::Agent) => Self::Agent,
            _ => Self::Other(v),
        }
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Audio track.
    Audio,
    /// Video track.
    Video,
    /// Data track or unknown.
    Other,
}

/// A published track as the server describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackInfo {
    /// Track sid (`TR_…`).
    pub sid: String,
    /// Track name.
    pub name: String,
    /// Audio / video.
    pub kind: TrackKind,
    /// Source (microphone, camera, …).
    pub source: proto::TrackSource,
    /// Muted by its publisher.
    pub muted: bool,
    /// MIME type (e.g. `audio/opus`), when known.
    pub mime_type: String,
}

impl From<&proto::TrackInfo> for TrackInfo {
    fn from(t: &proto::TrackInfo) -> Self {
        let kind = match proto::TrackType::try_from(t.r#type) {
            Ok(proto::TrackType::Audio) => TrackKind::Audio,
            Ok(proto::TrackType::Video) => TrackKind::Video,
            _ => TrackKind::Other,
        };
        Self {
            sid: t.sid.clone(),
            name: t.name.clone(),
            kind,
            source: proto::TrackSource::try_from(t.source).unwrap_or(proto::TrackSource::Unknown),
            muted: t.muted,
            mime_type: t.mime_type.clone(),
        }
    }
}

/// A snapshot of a participant (local or remote).
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// Server-assigned sid (`PA_…`).
    pub sid: String,
    /// Identity (the token's `sub`).
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Kind (standard, sip, agent, …).
    pub kind: ParticipantKind,
    /// Free-form metadata.
    pub metadata: String,
    /// Key/value attributes (e.g. `sip.callStatus`).
    pub attributes: HashMap<String, String>,
    /// Tracks this participant publishes.
    pub tracks: Vec<TrackInfo>,
}

impl From<&proto::ParticipantInfo> for Participant {
    fn from(p: &proto::ParticipantInfo) -> Self {
        Self {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            kind: ParticipantKind::from(p.kind),
            metadata: p.metadata.clone(),
            attributes: p.attributes.clone(),
            tracks: p.tracks.iter().map(TrackInfo::from).collect(),
        }
    }
}

/// Why the room ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// [`Room::close`](crate::Room::close) was called (or every handle was dropped).
    ClientInitiated,
    /// The server sent `leave` (removed, room deleted, duplicate identity, …).
    Server(proto::DisconnectReason),
    /// The signalling WebSocket was lost and could not be resumed.
    SignalLost(String),
    /// No pong within the server's `ping_timeout`, and resuming failed.
    PingTimeout,
    /// The media connection (ICE/DTLS) failed.
    PeerConnectionFailed(String),
}

/// How the room got (or is getting) back after a connection loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReconnectKind {
    /// The same session on a new signalling link (`reconnect=1&sid=…`): same participant sid,
    /// media kept or its ICE restarted.
    Resume,
    /// A fresh join (new sid, new peer connections, tracks republished), as the official SDKs do
    /// when the server answers `leave{RECONNECT}` or the session is gone (server restart).
    Full,
}

impl ReconnectKind {
    /// `"resume"` or `"full"` (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ReconnectKind::Resume => "resume",
            ReconnectKind::Full => "full",
        }
    }
}

/// Something happened in the room.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// A remote participant joined.
    ParticipantConnected(Participant),
    /// A remote participant left.
    ParticipantDisconnected(Participant),
    /// A remote participant joined again under a new sid (its connection or the server
    /// restarted): same identity, so the same party; its old tracks were unpublished (and
    /// unsubscribed) just before, its tracks come again as `TrackPublished` / `TrackSubscribed`.
    /// Not a `ParticipantDisconnected`: the caller did not hang up.
    ParticipantRejoined {
        /// The participant under its new sid.
        participant: Participant,
        /// The sid it had.
        old_sid: String,
    },
    /// A remote participant published a track.
    TrackPublished {
        /// The publisher.
        participant: Participant,
        /// The track.
        track: TrackInfo,
    },
    /// A remote participant unpublished a track.
    TrackUnpublished {
        /// The publisher.
        participant: Participant,
        /// The track.
        track: TrackInfo,
    },
    /// Media of a remote audio track reaches us; call [`RemoteAudioTrack::stream`] for PCM.
    TrackSubscribed {
        /// The track (hand out PCM streams from it).
        track: RemoteAudioTrack,
        /// The publisher.
        participant: Participant,
    },
    /// A remote audio track no longer reaches us (its streams end).
    TrackUnsubscribed {
        /// Track sid.
        track_sid: String,
        /// The publisher.
        participant: Participant,
    },
    /// A remote track was muted or unmuted.
    TrackMuted {
        /// Track sid.
        track_sid: String,
        /// Participant identity.
        participant_identity: String,
        /// New state.
        muted: bool,
    },
    /// Our own track was published by the server (answer to `add_track`).
    LocalTrackPublished(TrackInfo),
    /// A user data packet arrived.
    DataReceived(DataMessage),
    /// A SIP DTMF packet arrived.
    DtmfReceived(DtmfMessage),
    /// A participant's attributes changed (`changed` holds new values; removed keys map to "").
    AttributesChanged {
        /// Participant after the change (may be the local participant).
        participant: Participant,
        /// Changed keys.
        changed: HashMap<String, String>,
    },
    /// A participant's metadata changed.
    MetadataChanged {
        /// Participant after the change (may be the local participant).
        participant: Participant,
        /// Previous metadata.
        old_metadata: String,
    },
    /// A participant's name changed.
    NameChanged {
        /// Participant after the change.
        participant: Participant,
        /// Previous name.
        old_name: String,
    },
    /// Room metadata changed.
    RoomMetadataChanged(String),
    /// A remote track could not be subscribed (`SubscriptionResponse` from the server).
    SubscriptionFailed {
        /// Track sid.
        track_sid: String,
        /// The server's reason.
        error: proto::SubscriptionError,
    },
    /// The connection was lost (or the server asked us to reconnect); trying to get back. Sent
    /// once per attempt kind: a resume that escalates to a full reconnect sends
    /// `Reconnecting{Resume}` then `Reconnecting{Full}`.
    Reconnecting {
        /// Resume or full reconnect.
        kind: ReconnectKind,
    },
    /// Back in the room. After [`ReconnectKind::Full`] the participant sid is new, our tracks
    /// were republished (same [`AudioSink`](crate::AudioSink)s) and remote tracks come again as
    /// `TrackSubscribed`.
    Reconnected {
        /// Resume or full reconnect.
        kind: ReconnectKind,
    },
    /// The room is over; no more events follow.
    Disconnected(DisconnectReason),
}

/// Attribute differences between two maps: keys whose value changed or appeared, and removed
/// keys (mapped to the empty string, as LiveKit does).
pub(crate) fn attribute_changes(old: &HashMap<String, String>, new: &HashMap<String, String>) -> HashMap<String, String> {
    let mut changed = HashMap::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            changed.insert(k.clone(), v.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            changed.insert(k.clone(), String::new());
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_diff() {
        let old: HashMap<_, _> = [("a", "1"), ("b", "2"), ("c", "3")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let new: HashMap<_, _> = [("a", "1"), ("b", "9"), ("d", "4")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let d = attribute_changes(&old, &new);
        assert_eq!(d.len(), 3);
        assert_eq!(d["b"], "9");
        assert_eq!(d["c"], "");
        assert_eq!(d["d"], "4");
    }

    #[test]
    fn participant_from_proto() {
        let p = proto::ParticipantInfo {
            sid: "PA_1".into(),
            identity: "phone-CA1".into(),
            kind: proto::participant_info::Kind::Sip as i32,
            tracks: vec![proto::TrackInfo { sid: "TR_1".into(), r#type: proto::TrackType::Audio as i32, source: 2, ..Default::default() }],
            ..Default::default()
        };
        let q = Participant::from(&p);
        assert_eq!(q.kind, ParticipantKind::Sip);
        assert_eq!(q.tracks[0].kind, TrackKind::Audio);
        assert_eq!(q.tracks[0].source, proto::TrackSource::Microphone);
        assert_eq!(ParticipantKind::from(99), ParticipantKind::Other(99));
    }
}
