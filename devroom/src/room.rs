//! Rooms and participants as LiveKit describes them: identities, permissions, tracks,
//! and the `Room` / `ParticipantInfo` / `TrackInfo` protobufs built from them.
//! Pure state, no I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livekit_protocol as lk;
use rand::Rng;

/// A LiveKit-style id: `PA_`, `TR_`, `RM_`, `EV_` + 12 base62 characters.
pub fn new_sid(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let tail: String = (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Room-level settings and lifecycle.
#[derive(Debug)]
pub struct Room {
    pub sid: String,
    pub name: String,
    pub empty_timeout: u32,
    pub departure_timeout: u32,
    pub max_participants: u32,
    pub metadata: String,
    pub creation_ms: i64,
    pub created: Instant,
    /// Participant keys in join order.
    pub members: Vec<u64>,
    /// Set when the last participant left.
    pub emptied_at: Option<Instant>,
    pub ever_joined: bool,
    /// PCMU and PCMA are enabled (livekit-server ≥ 1.9.1; `--g711-off` as before).
    pub g711: bool,
}

impl Room {
    pub fn new(name: &str, empty_timeout: u32, departure_timeout: u32, now: Instant) -> Room {
        Room {
            sid: new_sid("RM_"),
            name: name.to_string(),
            empty_timeout,
            departure_timeout,
            max_participants: 0,
            metadata: String::new(),
            creation_ms: unix_ms(),
            created: now,
            members: Vec::new(),
            emptied_at: None,
            ever_joined: false,
            g711: true,
        }
    }

    /// Whether an empty room has outlived its timeout.
    pub fn expired(&self, now: Instant) -> bool {
        if !self.members.is_empty() {
            return false;
        }
        match self.emptied_at {
            Some(t) => now.duration_since(t) >= Duration::from_secs(self.departure_timeout as u64),
            None if !self.ever_joined => {
                now.duration_since(self.created) >= Duration::from_secs(self.empty_timeout as u64)
            }
            None => true,
        }
    }

    pub fn to_proto(&self, num_participants: u32, num_publishers: u32) -> lk::Room {
        lk::Room {
            sid: self.sid.clone(),
            name: self.name.clone(),
            empty_timeout: self.empty_timeout,
            departure_timeout: self.departure_timeout,
            max_participants: self.max_participants,
            creation_time: self.creation_ms / 1000,
            creation_time_ms: self.creation_ms,
            metadata: self.metadata.clone(),
            num_participants,
            num_publishers,
            enabled_codecs: enabled_codecs(self.g711),
            ..Default::default()
        }
    }
}

pub fn enabled_codecs(g711: bool) -> Vec<lk::Codec> {
    // livekit-server ≥ 1.9.1 enables PCMU and PCMA besides Opus by default.
    ["audio/opus", "audio/PCMU", "audio/PCMA", "video/VP8", "video/H264"]
        .iter()
        .filter(|m| g711 || !m.starts_with("audio/PCM"))
        .map(|m| lk::Codec {
            mime: m.to_string(),
            fmtp_line: String::new(),
        })
        .collect()
}

/// What a participant may do (from the token's video grant, or UpdateParticipant).
#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
    pub can_update_metadata: bool,
    pub hidden: bool,
    pub agent: bool,
}

impl Permission {
    pub fn to_proto(&self) -> lk::ParticipantPermission {
        lk::ParticipantPermission {
            can_subscribe: self.can_subscribe,
            can_publish: self.can_publish,
            can_publish_data: self.can_publish_data,
            hidden: self.hidden,
            can_update_metadata: self.can_update_metadata,
            agent: self.agent,
            ..Default::default()
        }
    }
}

/// A track a participant announced with `add_track`, bound to a publisher m-line once the offer arrives.
#[derive(Debug, Clone)]
pub struct PublishedTrack {
    pub sid: String,
    pub cid: String,
    pub name: String,
    pub kind: lk::TrackType,
    pub source: i32,
    pub muted: bool,
    pub stereo: bool,
    pub disable_red: bool,
    pub stream: String,
    /// Publisher-PC mid once the offer carrying it was accepted.
    pub mid: Option<String>,
    /// Its first RTP packet arrived: the room sees it.
    pub live: bool,
    pub mime_type: String,
}

impl PublishedTrack {
    pub fn from_request(req: &lk::AddTrackRequest) -> PublishedTrack {
        let kind = lk::TrackType::try_from(req.r#type).unwrap_or(lk::TrackType::Audio);
        PublishedTrack {
            sid: new_sid("TR_"),
            cid: req.cid.clone(),
            name: req.name.clone(),
            kind,
            source: req.source,
            muted: req.muted,
            stereo: req.stereo,
            disable_red: req.disable_red,
            stream: req.stream.clone(),
            mid: None,
            live: false,
            mime_type: String::new(),
        }
    }

    pub fn published(&self) -> bool {
        self.mid.is_some() && self.live
    }

    pub fn to_proto(&self) -> lk::TrackInfo {
        let mid = self.mid.clone().unwrap_or_default();
        lk::TrackInfo {
            sid: self.sid.clone(),
            r#type: self.kind as i32,
            name: self.name.clone(),
            muted: self.muted,
            source: self.source,
            mime_type: self.mime_type.clone(),
            mid: mid.clone(),
            stereo: self.stereo,
            disable_red: self.disable_red,
            stream: self.stream.clone(),
            codecs: if self.mime_type.is_empty() {
                Vec::new()
            } else {
                vec![lk::SimulcastCodecInfo {
                    mime_type: self.mime_type.clone(),
                    mid,
                    cid: self.cid.clone(),
                    ..Default::default()
                }]
            },
            ..Default::default()
        }
    }
}

/// Identity and presentation of a participant (everything in ParticipantInfo but the tracks).
#[derive(Debug, Clone)]
pub struct Identity {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub kind: lk::participant_info::Kind,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    pub permission: Permission,
    pub joined_at_ms: i64,
    pub state: lk::participant_info::State,
    pub version: u32,
}

impl Identity {
    pub fn to_proto(&self, tracks: &[PublishedTrack]) -> lk::ParticipantInfo {
        let tracks: Vec<lk::TrackInfo> = tracks
            .iter()
            .filter(|t| t.published())
            .map(PublishedTrack::to_proto)
            .collect();
        lk::ParticipantInfo {
            sid: self.sid.clone(),
            identity: self.identity.clone(),
            state: self.state as i32,
            is_publisher: !tracks.is_empty(),
            tracks,
            metadata: self.metadata.clone(),
            joined_at: self.joined_at_ms / 1000,
            joined_at_ms: self.joined_at_ms,
            name: self.name.clone(),
            version: self.version,
            permission: Some(self.permission.to_proto()),
            kind: self.kind as i32,
            attributes: self.attributes.clone(),
            ..Default::default()
        }
    }

    /// Applies an attribute update the LiveKit way: an empty value deletes the key.
    pub fn merge_attributes(&mut self, update: &HashMap<String, String>) {
        for (k, v) in update {
            if v.is_empty() {
                self.attributes.remove(k);
            } else {
                self.attributes.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Maps a token's `kind` claim (`standard`, `agent`, `sip`, …) to the protobuf enum.
pub fn kind_from_claim(kind: &str) -> lk::participant_info::Kind {
    lk::participant_info::Kind::from_str_name(&kind.to_ascii_uppercase())
        .unwrap_or(lk::participant_info::Kind::Standard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_have_prefix_and_length() {
        let s = new_sid("PA_");
        assert!(s.starts_with("PA_"));
        assert_eq!(s.len(), 15);
        assert_ne!(s, new_sid("PA_"));
    }

    #[test]
    fn room_expiry() {
        let t0 = Instant::now();
        let mut r = Room::new("r", 10, 5, t0);
        assert!(!r.expired(t0 + Duration::from_secs(9)));
        assert!(r.expired(t0 + Duration::from_secs(10)));
        r.members.push(1);
        r.ever_joined = true;
        assert!(!r.expired(t0 + Duration::from_secs(100)));
        r.members.clear();
        r.emptied_at = Some(t0 + Duration::from_secs(100));
        assert!(!r.expired(t0 + Duration::from_secs(104)));
        assert!(r.expired(t0 + Duration::from_secs(105)));
    }

    #[test]
    fn kinds_and_attributes() {
        assert_eq!(kind_from_claim("sip"), lk::participant_info::Kind::Sip);
        assert_eq!(kind_from_claim("agent"), lk::participant_info::Kind::Agent);
        assert_eq!(kind_from_claim(""), lk::participant_info::Kind::Standard);
        let mut id = Identity {
            sid: "PA_x".into(),
            identity: "x".into(),
            name: String::new(),
            kind: lk::participant_info::Kind::Standard,
            metadata: String::new(),
            attributes: HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
            permission: Permission {
                can_publish: true,
                can_subscribe: true,
                can_publish_data: true,
                can_update_metadata: false,
                hidden: false,
                agent: false,
            },
            joined_at_ms: 0,
            state: lk::participant_info::State::Joined,
            version: 1,
        };
        id.merge_attributes(&HashMap::from([("a".into(), String::new()), ("c".into(), "3".into())]));
        assert_eq!(id.attributes.len(), 2);
        assert_eq!(id.attributes["c"], "3");
    }
}
