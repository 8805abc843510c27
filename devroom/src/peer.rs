//! One WebRTC peer connection (str0m `Rtc`, sans-IO) and the SDP / ICE helpers around it.
//!
//! Every participant has two, as in LiveKit's v0 "dual PC" mode:
//! - the **publisher** PC: the client offers, we answer; the client creates the `_reliable` and
//!   `_lossy` data channels on it and sends its audio there;
//! - the **subscriber** PC: we offer (data channels we create + one send-only m-line per
//!   subscribed track), the client answers.
//!
//! All peers share one UDP socket; [`Peer::accepts`] demultiplexes by ICE ufrag / remote address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Input, Rtc, RtcConfig};

pub const RELIABLE_LABEL: &str = "_reliable";
pub const LOSSY_LABEL: &str = "_lossy";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// LiveKit data packet kinds, by data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    Reliable,
    Lossy,
}

impl DataKind {
    pub fn from_label(label: &str) -> Option<DataKind> {
        match label {
            RELIABLE_LABEL => Some(DataKind::Reliable),
            LOSSY_LABEL => Some(DataKind::Lossy),
            _ => None,
        }
    }

    pub fn proto(self) -> livekit_protocol::data_packet::Kind {
        match self {
            DataKind::Reliable => livekit_protocol::data_packet::Kind::Reliable,
            DataKind::Lossy => livekit_protocol::data_packet::Kind::Lossy,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid SDP {kind}: {msg}")]
    Sdp { kind: &'static str, msg: String },
    #[error("answer without a pending offer")]
    NoPendingOffer,
}

pub struct Peer {
    pub rtc: Rtc,
    pub role: Role,
    /// Earliest time this peer wants an `Input::Timeout`.
    pub next_timeout: Instant,
    /// Input was given or an API call made since the last poll: poll it (only such peers and
    /// those whose timeout passed are polled, so idle peers cost nothing per packet).
    pub dirty: bool,
    /// Subscriber only: the offer we sent and wait an answer for.
    pub pending: Option<SdpPendingOffer>,
    /// Data channel ids by kind: for the publisher those the client opened,
    /// for the subscriber those we created.
    pub channels: HashMap<ChannelId, DataKind>,
    pub open_channels: HashMap<DataKind, ChannelId>,
    pub connected: bool,
}

impl Peer {
    /// `udp`: our UDP candidate (None with `--udp-off`); `tcp`: our passive ICE-TCP candidate;
    /// `g711`: PCMU and PCMA enabled (else a G.711-only m-line gets no codec in our answer).
    pub fn new(role: Role, now: Instant, udp: Option<SocketAddr>, tcp: Option<SocketAddr>, ice_lite: bool, g711: bool) -> Peer {
        let mut rtc = RtcConfig::new()
            .set_ice_lite(ice_lite)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_pcmu(g711, false)
            .enable_pcma(g711, false)
            .enable_vp8(true)
            .enable_h264(true)
            .build(now);
        if let Some(Ok(c)) = udp.map(|a| Candidate::host(a, "udp")) {
            rtc.add_local_candidate(c);
        }
        if let Some(Ok(c)) = tcp.map(|a| Candidate::builder().tcp().host(a).tcptype(str0m::net::TcpType::Passive).build()) {
            rtc.add_local_candidate(c);
        }
        Peer {
            rtc,
            role,
            next_timeout: now,
            dirty: true,
            pending: None,
            channels: HashMap::new(),
            open_channels: HashMap::new(),
            connected: false,
        }
    }

    pub fn accepts(&self, input: &Input) -> bool {
        self.rtc.is_alive() && self.rtc.accepts(input)
    }

    /// Publisher: accepts a client offer and returns the answer SDP.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, PeerError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| PeerError::Sdp {
            kind: "offer",
            msg: e.to_string(),
        })?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| PeerError::Sdp {
                kind: "offer",
                msg: e.to_string(),
            })?;
        Ok(answer.to_sdp_string())
    }

    /// Subscriber: applies the client's answer to our pending offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| PeerError::Sdp {
            kind: "answer",
            msg: e.to_string(),
        })?;
        let pending = self.pending.take().ok_or(PeerError::NoPendingOffer)?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| PeerError::Sdp {
                kind: "answer",
                msg: e.to_string(),
            })
    }

    /// Adds a remote candidate from a trickle `candidateInit` JSON string.
    /// Returns Ok(false) for end-of-candidates / candidates str0m cannot use (e.g. mDNS names).
    pub fn add_remote_candidate_json(&mut self, candidate_init: &str) -> Result<bool, String> {
        let Some(line) = parse_candidate_init(candidate_init)? else {
            return Ok(false);
        };
        match Candidate::from_sdp_string(&line) {
            Ok(c) => {
                self.rtc.add_remote_candidate(c);
                Ok(true)
            }
            Err(e) => {
                tracing::debug!(candidate = %line, error = %e, "ignoring remote candidate");
                Ok(false)
            }
        }
    }
}

/// Subscriber-side changes for one renegotiation.
pub struct SubscriberChange {
    /// (stream id `PA_…|TR_…`, track sid, kind) for every new send-only m-line.
    pub add: Vec<(String, String, MediaKind)>,
    pub stop: Vec<Mid>,
    /// Create the `_reliable` / `_lossy` channels (first offer).
    pub data_channels: bool,
    /// New ICE credentials (after a client resumed).
    pub ice_restart: bool,
}

impl Peer {
    /// Builds a new subscriber offer. Returns the offer SDP and the mids assigned to `change.add`
    /// (same order), or None when there is nothing to negotiate.
    pub fn create_subscriber_offer(&mut self, change: &SubscriberChange) -> Option<(String, Vec<Mid>)> {
        let mut api = self.rtc.sdp_api();
        let mut new_channels = Vec::new();
        if change.data_channels {
            let r = api.add_channel_with_config(ChannelConfig {
                label: RELIABLE_LABEL.into(),
                ordered: true,
                reliability: Reliability::Reliable,
                ..Default::default()
            });
            let l = api.add_channel_with_config(ChannelConfig {
                label: LOSSY_LABEL.into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            });
            new_channels.push((r, DataKind::Reliable));
            new_channels.push((l, DataKind::Lossy));
        }
        let mut mids = Vec::new();
        for (stream_id, track_id, kind) in &change.add {
            let mid = api.add_media(
                *kind,
                Direction::SendOnly,
                Some(stream_id.clone()),
                Some(track_id.clone()),
                None,
            );
            mids.push(mid);
        }
        for mid in &change.stop {
            api.stop_media(*mid);
        }
        if change.ice_restart {
            let _ = api.ice_restart(true);
        }
        let (offer, pending) = api.apply()?;
        for (id, kind) in new_channels {
            self.channels.insert(id, kind);
        }
        self.pending = Some(pending);
        Some((offer.to_sdp_string(), mids))
    }
}

/// An SDP without its candidates: livekit-server trickles them (`SignalResponse.trickle`)
/// instead, so a client that only reads the SDP never connects.
pub fn strip_candidates(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let l = line.trim_end();
        if l.starts_with("a=candidate:") || l == "a=end-of-candidates" {
            continue;
        }
        out.push_str(line);
    }
    out
}

/// Our local candidates as trickle `candidateInit` JSON strings, on the first m-line (its real
/// mid: browsers refuse a candidate for a mid the description does not have; str0m's mids are
/// not "0").
pub fn candidate_inits(sdp: &str) -> Vec<String> {
    let ufrag = sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:")).unwrap_or("").to_string();
    let mid = sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=mid:")).unwrap_or("0").to_string();
    let mut seen = std::collections::HashSet::new();
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a="))
        .filter(|c| c.starts_with("candidate:"))
        .filter(|c| seen.insert(c.to_string()))
        .map(|c| serde_json::json!({"candidate": c, "sdpMid": mid, "sdpMLineIndex": 0, "usernameFragment": ufrag}).to_string())
        .collect()
}

/// The `candidate` line out of a trickle `candidateInit` (`{"candidate":"candidate:…","sdpMid":"0",…}`).
pub fn parse_candidate_init(candidate_init: &str) -> Result<Option<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(candidate_init).map_err(|e| format!("candidateInit is not JSON: {e}"))?;
    let cand = v
        .get("candidate")
        .and_then(|c| c.as_str())
        .ok_or_else(|| "candidateInit has no candidate".to_string())?;
    let cand = cand.trim();
    if cand.is_empty() {
        return Ok(None);
    }
    let line = cand.strip_prefix("a=").unwrap_or(cand);
    Ok(Some(line.to_string()))
}

/// One m-section of a remote SDP, as far as track binding needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaSection {
    pub mid: String,
    pub kind: String,
    /// The MediaStreamTrack id from `a=msid:<stream> <track>` (LiveKit's `cid`).
    pub track_id: Option<String>,
    /// Whether the remote side sends on it (sendrecv/sendonly and not rejected).
    pub remote_sends: bool,
}

/// Extracts the m-sections of an SDP (mid, kind, msid track id, direction).
pub fn parse_media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut out: Vec<MediaSection> = Vec::new();
    let mut cur: Option<(MediaSection, bool, Option<String>)> = None; // (section, rejected, ssrc msid)
    let finish = |cur: Option<(MediaSection, bool, Option<String>)>, out: &mut Vec<MediaSection>| {
        if let Some((mut s, rejected, ssrc_msid)) = cur {
            if rejected {
                s.remote_sends = false;
            }
            if s.track_id.is_none() {
                s.track_id = ssrc_msid;
            }
            out.push(s);
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            finish(cur.take(), &mut out);
            let mut it = rest.split_whitespace();
            let kind = it.next().unwrap_or("").to_string();
            let port = it.next().unwrap_or("0");
            cur = Some((
                MediaSection {
                    mid: String::new(),
                    kind,
                    track_id: None,
                    // sendrecv is the SDP default
                    remote_sends: true,
                },
                port == "0",
                None,
            ));
            continue;
        }
        let Some((s, _, ssrc_msid)) = cur.as_mut() else {
            continue;
        };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            // as str0m normalises it (ASCII alphanumerics, at most 16 characters)
            s.mid = Mid::from(mid.trim()).to_string();
        } else if let Some(msid) = line.strip_prefix("a=msid:") {
            let mut parts = msid.split_whitespace();
            let _stream = parts.next();
            if let Some(track) = parts.next() {
                s.track_id = Some(track.to_string());
            }
        } else if line.starts_with("a=ssrc:") && line.contains(" msid:") {
            if let Some(track) = line.split_whitespace().nth(2) {
                *ssrc_msid = Some(track.to_string());
            }
        } else if line == "a=recvonly" || line == "a=inactive" {
            s.remote_sends = false;
        } else if line == "a=sendonly" || line == "a=sendrecv" {
            s.remote_sends = true;
        }
    }
    finish(cur, &mut out);
    out
}

pub fn media_kind(kind: livekit_protocol::TrackType) -> MediaKind {
    match kind {
        livekit_protocol::TrackType::Video => MediaKind::Video,
        _ => MediaKind::Audio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendonly\r\na=msid:stream-a track-cid-1\r\n\
m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=sendonly\r\na=ssrc:1 msid:s track-cid-2\r\n";

    #[test]
    fn parses_sections() {
        let s = parse_media_sections(OFFER);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].kind, "application");
        assert_eq!(s[1].mid, "1");
        assert_eq!(s[1].track_id.as_deref(), Some("track-cid-1"));
        assert!(s[1].remote_sends);
        assert_eq!(s[2].track_id.as_deref(), Some("track-cid-2"));
        assert!(!s[2].remote_sends, "port 0 means rejected");
    }

    #[test]
    fn candidate_init() {
        let j = r#"{"candidate":"candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
        assert_eq!(
            parse_candidate_init(j).unwrap().unwrap(),
            "candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host"
        );
        assert_eq!(parse_candidate_init(r#"{"candidate":""}"#).unwrap(), None);
        assert!(parse_candidate_init("nope").is_err());
        assert!(Candidate::from_sdp_string("candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host").is_ok());
    }

    #[test]
    fn candidates_move_from_the_sdp_to_trickle() {
        let sdp = "v=0\r\na=ice-ufrag:abcd\r\nm=audio 9 UDP 111\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\na=end-of-candidates\r\na=mid:Xq9\r\nm=application 9 x\r\na=mid:Ab1\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n";
        let stripped = strip_candidates(sdp);
        assert!(!stripped.contains("candidate"), "{stripped}");
        assert!(stripped.contains("a=mid:Xq9\r\n"));
        let inits = candidate_inits(sdp);
        assert_eq!(inits.len(), 1, "one per distinct candidate");
        let v: serde_json::Value = serde_json::from_str(&inits[0]).unwrap();
        assert_eq!(v["candidate"], "candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host");
        assert_eq!(v["usernameFragment"], "abcd");
        assert_eq!(v["sdpMid"], "Xq9", "the first m-line's mid");
    }

    #[test]
    fn garbage_sdp_is_an_error_not_a_panic() {
        let mut p = Peer::new(Role::Publisher, Instant::now(), Some("127.0.0.1:9".parse().unwrap()), None, false, true);
        assert!(p.accept_offer("this is not sdp").is_err());
        assert!(p.accept_offer("").is_err());
        assert!(matches!(p.accept_answer("v=0"), Err(PeerError::Sdp { .. }) | Err(PeerError::NoPendingOffer)));
    }
}
