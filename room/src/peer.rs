//! One WebRTC peer connection (publisher or subscriber), as a sans-IO state machine over a
//! str0m [`Rtc`].
//!
//! A [`Peer`] never touches a socket or a clock: datagrams and time come in through
//! [`Peer::handle_datagram`] / [`Peer::handle_timeout`], and everything it wants done comes out
//! of [`Peer::drain`] as [`Peer::transmits`] (datagrams to send), [`Peer::events`] and the next
//! deadline ([`Peer::next_timeout`]). Each mutation is followed by a full drain, which is
//! str0m's single-mutation contract.
//!
//! # Sockets
//!
//! The room driver (`room.rs`) currently gives each `Peer` its own UDP socket (two per room).
//! Because `Peer` is sans-IO, many peers can share one socket later without touching this file:
//! a socket task `recv_from`s, asks each registered peer [`Peer::accepts`] (str0m matches
//! STUN by ICE ufrag and other traffic by the nominated remote address) and forwards the
//! datagram to the owning room's task through a bounded channel; rooms send their
//! [`Peer::transmits`] through a shared `Arc<UdpSocket>`. One caveat decides how far to share:
//! a LiveKit server in single-port mode (pion's UDP mux, `livekit-server --dev`) demultiplexes
//! non-STUN packets by *our* address, so two peers that talk to the same server address must use
//! different local ports. A pool of sockets where each socket carries at most one peer per
//! server address respects that and still serves thousands of calls from a handful of ports.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::audio::AudioCodec;
use crate::data::DataKind;
use crate::error::RoomError;

/// Which of the two v0 peer connections this is.
pub(crate) type Role = proto::SignalTarget;

/// Something the driver should know about.
#[derive(Debug)]
pub(crate) enum PeerEvent {
    /// ICE + DTLS up: media and data can flow.
    Connected,
    /// ICE state changed.
    Ice(IceConnectionState),
    /// An m-line became usable (after negotiation).
    MediaAdded { mid: Mid, kind: MediaKind },
    /// An m-line changed direction (e.g. went inactive when a track was removed).
    MediaChanged { mid: Mid, direction: Direction },
    /// One audio frame (Opus, PCMU or PCMA) from the remote side.
    Audio { mid: Mid, codec: AudioCodec, rtp_time: u64, payload: Arc<[u8]> },
    /// A data channel opened (ours on the publisher, the server's on the subscriber).
    ChannelOpen { kind: Option<DataKind>, label: String },
    /// A data channel message.
    Data { kind: Option<DataKind>, bytes: Vec<u8> },
    /// The str0m instance is closed or hit an internal error; the peer is unusable.
    Failed(String),
}

/// Counters for malformed or dropped input (never panics, always counts).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PeerCounters {
    pub bad_datagrams: u64,
    /// Video (or another codec we do not decode) that reached us anyway.
    pub undecodable_media: u64,
    pub audio_frames_in: u64,
    pub audio_frames_out: u64,
    pub audio_write_errors: u64,
}

/// A media section of an SDP: its mid and `a=msid` (stream id, track id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SdpMedia {
    pub mid: String,
    pub kind: String,
    pub stream_id: Option<String>,
    pub track_id: Option<String>,
    /// `sendonly`, `recvonly`, `sendrecv` or `inactive` (as written by the SDP's author).
    pub direction: Option<String>,
    /// Port 0: the m-line is rejected / stopped.
    pub port_zero: bool,
}

impl SdpMedia {
    /// True when the author of this SDP sends media on it (the m-line carries a live track).
    pub(crate) fn author_sends(&self) -> bool {
        !self.port_zero && matches!(self.direction.as_deref(), Some("sendonly") | Some("sendrecv") | None)
    }
}

/// Pull each m-section's mid and msid out of an SDP (str0m keeps the remote msid only for
/// m-lines it creates, and LiveKit reuses m-lines for new tracks).
pub(crate) fn sdp_media_sections(sdp: &str) -> Vec<SdpMedia> {
    let mut out: Vec<SdpMedia> = Vec::new();
    let mut cur: Option<SdpMedia> = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            if let Some(m) = cur.take() {
                out.push(m);
            }
            let mut it = rest.split_whitespace();
            let kind = it.next().unwrap_or("").to_string();
            let port_zero = it.next() == Some("0");
            cur = Some(SdpMedia { mid: String::new(), kind, stream_id: None, track_id: None, direction: None, port_zero });
        } else if let Some(m) = cur.as_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                m.mid = mid.trim().to_string();
            } else if let Some(d) = ["a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"].iter().find(|d| line == **d) {
                m.direction = Some(d[2..].to_string());
            } else if let Some(msid) = line.strip_prefix("a=msid:") {
                let mut it = msid.split_whitespace();
                m.stream_id = it.next().map(str::to_string);
                m.track_id = it.next().map(str::to_string);
            } else if m.stream_id.is_none() {
                // Plan-B style `a=ssrc:<n> msid:<stream> <track>`.
                if let Some(rest) = line.strip_prefix("a=ssrc:") {
                    if let Some(idx) = rest.find("msid:") {
                        let mut it = rest[idx + 5..].split_whitespace();
                        m.stream_id = it.next().map(str::to_string);
                        m.track_id = it.next().map(str::to_string);
                    }
                }
            }
        }
    }
    if let Some(m) = cur {
        out.push(m);
    }
    out
}

/// A str0m peer connection plus the bookkeeping LiveKit needs.
pub(crate) struct Peer {
    pub role: Role,
    rtc: Rtc,
    local: SocketAddr,
    /// Our active ICE-TCP candidate's address (`destination` of TCP input).
    tcp_local: SocketAddr,
    pending_offer: Option<SdpPendingOffer>,
    has_remote_description: bool,
    early_candidates: Vec<Candidate>,
    channels: HashMap<ChannelId, (Option<DataKind>, String)>,
    send_channels: HashMap<DataKind, ChannelId>,
    open_send_channels: HashMap<DataKind, ChannelId>,
    pub connected: bool,
    pub ice_state: IceConnectionState,
    failed: bool,
    /// Datagrams to send, filled by [`Peer::drain`].
    pub transmits: Vec<Transmit>,
    /// Events, filled by [`Peer::drain`].
    pub events: VecDeque<PeerEvent>,
    next_timeout: Instant,
    pub counters: PeerCounters,
    /// The last local description we produced (for SyncState on resume).
    pub last_local_sdp: Option<(String, String)>,
    /// The last remote offer we answered (the subscriber's, for SyncState on resume).
    pub last_remote_sdp: Option<(String, String)>,
    /// Codec of each of our audio m-lines (publisher): the offer names only that one.
    send_codecs: HashMap<Mid, AudioCodec>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("role", &self.role).field("local", &self.local).field("connected", &self.connected).finish()
    }
}

const MAX_EARLY_CANDIDATES: usize = 64;
const MAX_EVENTS: usize = 4096;

/// Our offer names only each audio m-line's own codec, as a browser's `setCodecPreferences`
/// does: the server's answer then has that codec alone, and livekit-server (and devroom) take
/// the track's mime type from it. An m-line whose codec is not found is left as it is.
pub(crate) fn restrict_audio_codecs(sdp: &str, codecs: &HashMap<Mid, AudioCodec>) -> String {
    if codecs.is_empty() {
        return sdp.to_string();
    }
    let mut out = String::with_capacity(sdp.len());
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut String| {
        let mid = section.iter().find_map(|l| l.strip_prefix("a=mid:")).map(str::trim);
        let codec = mid.and_then(|m| codecs.get(&Mid::from(m)));
        let is_audio = section.first().is_some_and(|l| l.starts_with("m=audio "));
        let name = match codec {
            Some(AudioCodec::Opus) => "opus/",
            Some(AudioCodec::Pcmu) => "PCMU/",
            Some(AudioCodec::Pcma) => "PCMA/",
            None => "",
        };
        let keep: Vec<&str> = section
            .iter()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .filter_map(|r| r.split_once(' '))
            .filter(|(_, n)| !name.is_empty() && n.len() >= name.len() && n[..name.len()].eq_ignore_ascii_case(name))
            .map(|(pt, _)| pt)
            .collect();
        if !is_audio || keep.is_empty() {
            for l in section.drain(..) {
                out.push_str(l);
                out.push_str("\r\n");
            }
            return;
        }
        for l in section.drain(..) {
            let pt_of = |rest: &str| rest.split([' ', ':']).next().map(str::to_string);
            let attr_pt = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().find_map(|p| l.strip_prefix(p)).and_then(pt_of);
            if let Some(pt) = attr_pt {
                if !keep.contains(&pt.as_str()) {
                    continue;
                }
            }
            if let Some(rest) = l.strip_prefix("m=audio ") {
                // m=audio <port> <proto> <fmt>...
                let mut it = rest.split(' ');
                let (port, proto) = (it.next().unwrap_or("9"), it.next().unwrap_or("UDP/TLS/RTP/SAVPF"));
                out.push_str(&format!("m=audio {port} {proto} {}\r\n", keep.join(" ")));
                continue;
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
    };
    for line in sdp.split("\r\n").flat_map(|l| l.split('\n')).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            flush(&mut section, &mut out);
        }
        section.push(line);
    }
    flush(&mut section, &mut out);
    out
}

impl Peer {
    /// A new peer whose local candidates are `local` (a UDP socket the driver owns) and an
    /// active ICE-TCP one, unless `relay_only` (RTCConfiguration's `iceTransportPolicy:
    /// "relay"`): then it has none until relayed candidates are added
    /// ([`Peer::add_relay_candidate`]).
    pub(crate) fn new(role: Role, local: SocketAddr, relay_only: bool, now: Instant) -> Result<Self, RoomError> {
        // Opus first: str0m lists an m-line's codecs in this order, and each of our own audio
        // m-lines is narrowed to its track's codec in the offer (`restrict_audio_codecs`).
        let builder = Rtc::builder().clear_codecs().enable_opus(true, false).enable_pcmu(true, false).enable_pcma(true, false);
        // The subscriber takes whatever the room carries, so no m-line of the server's offer is
        // refused (livekit-server ≥ 1.9.1 forwards PCMU/PCMA; video is unsubscribed by the
        // room, but an offer may carry it first).
        let builder = match role {
            Role::Subscriber => builder.enable_vp8(true).enable_h264(true).enable_vp9(true).enable_av1(true),
            _ => builder,
        };
        let mut rtc = builder
            .set_stats_interval(None)
            // Hand audio frames over at once, gaps and all: the AudioStream conceals short
            // gaps (and drops late packets), the consumer owns any jitter buffer. Holding back
            // for reordering would add up to 300 ms of latency after every loss.
            .set_reordering_size_audio(0)
            .build(now);
        let tcp_local = crate::ice_tcp::TcpLinks::active_addr(local.ip());
        if !relay_only {
            let cand = Candidate::host(local, Protocol::Udp).map_err(|e| RoomError::Rtc(format!("local candidate: {e}")))?;
            rtc.add_local_candidate(cand);
            // ICE over TCP to the server's passive candidates (livekit-server's fallback when
            // UDP fails; with UDP blocked the only way in). Lower priority than UDP by type
            // preference.
            let tcp = Candidate::builder()
                .tcp()
                .host(tcp_local)
                .tcptype(str0m::net::TcpType::Active)
                .build()
                .map_err(|e| RoomError::Rtc(format!("local TCP candidate: {e}")))?;
            rtc.add_local_candidate(tcp);
        }
        let mut p = Self {
            role,
            rtc,
            local,
            tcp_local,
            pending_offer: None,
            has_remote_description: false,
            early_candidates: Vec::new(),
            channels: HashMap::new(),
            send_channels: HashMap::new(),
            open_send_channels: HashMap::new(),
            connected: false,
            ice_state: IceConnectionState::New,
            failed: false,
            transmits: Vec::new(),
            events: VecDeque::new(),
            next_timeout: now,
            counters: PeerCounters::default(),
            last_local_sdp: None,
            last_remote_sdp: None,
            send_codecs: HashMap::new(),
        };
        p.drain();
        Ok(p)
    }

    /// IP of the local candidate.
    pub(crate) fn local_ip(&self) -> std::net::IpAddr {
        self.local.ip()
    }

    /// When [`Peer::handle_timeout`] must be called next.
    pub(crate) fn next_timeout(&self) -> Instant {
        self.next_timeout
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed
    }

    /// True while an offer of ours waits for its answer.
    pub(crate) fn has_pending_offer(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// Whether a datagram from `source` belongs to this peer (for sockets shared by peers).
    #[allow(dead_code)]
    pub(crate) fn accepts(&self, now: Instant, source: SocketAddr, bytes: &[u8]) -> bool {
        let Ok(contents) = bytes.try_into() else { return false };
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: self.local, contents });
        self.rtc.accepts(&input)
    }

    // ---- inputs --------------------------------------------------------------------------

    /// Feed one datagram received on our socket.
    pub(crate) fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        if self.failed {
            return;
        }
        let contents = match bytes.try_into() {
            Ok(c) => c,
            Err(_) => {
                self.counters.bad_datagrams += 1;
                return;
            }
        };
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: self.local, contents });
        if let Err(e) = self.rtc.handle_input(input) {
            self.counters.bad_datagrams += 1;
            tracing::debug!(role = ?self.role, error = %e, "datagram rejected");
        }
        self.drain();
    }

    /// Feed one ICE-TCP frame from the server at `source`.
    pub(crate) fn handle_tcp(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        if self.failed {
            return;
        }
        let Ok(contents) = bytes.try_into() else {
            self.counters.bad_datagrams += 1;
            return;
        };
        let input = Input::Receive(now, Receive { proto: Protocol::Tcp, source, destination: self.tcp_local, contents });
        if let Err(e) = self.rtc.handle_input(input) {
            self.counters.bad_datagrams += 1;
            tracing::debug!(role = ?self.role, error = %e, "TCP frame rejected");
        }
        self.drain();
    }

    /// Feed one packet a peer sent to our relayed candidate `relayed` (unwrapped by the relay).
    pub(crate) fn handle_relayed(&mut self, now: Instant, source: SocketAddr, relayed: SocketAddr, bytes: &[u8]) {
        if self.failed {
            return;
        }
        let Ok(contents) = bytes.try_into() else {
            self.counters.bad_datagrams += 1;
            return;
        };
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: relayed, contents });
        if let Err(e) = self.rtc.handle_input(input) {
            self.counters.bad_datagrams += 1;
            tracing::debug!(role = ?self.role, error = %e, "relayed packet rejected");
        }
        self.drain();
    }

    /// Add a relayed candidate (a TURN allocation at `relayed`, reached from our socket `local`).
    /// Its priority is RFC 8445's for a relay (type preference below host, server- and
    /// peer-reflexive), so ICE uses it only when no direct path works. Returns the candidate as
    /// an SDP attribute value for trickle, or `None` if str0m refused it.
    pub(crate) fn add_relay_candidate(&mut self, relayed: SocketAddr, local: SocketAddr) -> Option<String> {
        let c = match Candidate::relayed(relayed, local, Protocol::Udp) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(role = ?self.role, %relayed, error = %e, "relayed candidate refused");
                return None;
            }
        };
        let sdp = self.rtc.add_local_candidate(c).map(|c| c.to_sdp_string());
        self.drain();
        // `a=candidate:…` → `candidate:…`, as RTCIceCandidate.candidate has it.
        sdp.map(|s| s.strip_prefix("a=").map(str::to_string).unwrap_or(s))
    }

    /// The first m-line's mid and our ufrag, for a trickled candidate (`sdpMid`,
    /// `usernameFragment`); `None` before we produced a description (the candidate then goes in
    /// it).
    pub(crate) fn trickle_target(&self) -> Option<(String, String)> {
        let (_, sdp) = self.last_local_sdp.as_ref()?;
        let mid = sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=mid:"))?.to_string();
        let ufrag = sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))?.to_string();
        Some((mid, ufrag))
    }

    /// Advance time.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.failed {
            return;
        }
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(role = ?self.role, error = %e, "timeout handling error");
        }
        self.drain();
    }

    /// Add a remote ICE candidate (`candidate:…`). Before the remote description is known the
    /// candidate is kept (bounded) and applied afterwards.
    pub(crate) fn add_remote_candidate(&mut self, sdp_candidate: &str) -> Result<(), RoomError> {
        let c = Candidate::from_sdp_string(sdp_candidate).map_err(|e| RoomError::Protocol(format!("bad candidate {sdp_candidate:?}: {e}")))?;
        if !self.has_remote_description {
            if self.early_candidates.len() < MAX_EARLY_CANDIDATES {
                self.early_candidates.push(c);
            }
            return Ok(());
        }
        self.rtc.add_remote_candidate(c);
        self.drain();
        Ok(())
    }

    fn apply_early_candidates(&mut self) {
        for c in std::mem::take(&mut self.early_candidates) {
            self.rtc.add_remote_candidate(c);
            self.drain();
        }
    }

    // ---- negotiation ---------------------------------------------------------------------

    /// Publisher: create an offer with the LiveKit data channels (first time), an optional new
    /// send-only audio m-line (stream id, msid track id `cid` — how the server matches it to the
    /// `add_track` request — and codec), and an optional ICE restart. Returns the SDP, or `None`
    /// when there is nothing to negotiate. Returns the mid of the new audio m-line too.
    pub(crate) fn create_offer(
        &mut self,
        add_audio: Option<(&str, &str, AudioCodec)>,
        stop: &[Mid],
        ice_restart: bool,
    ) -> Result<(Option<String>, Option<Mid>), RoomError> {
        if self.pending_offer.is_some() {
            return Err(RoomError::Rtc("offer already pending".into()));
        }
        let mut api = self.rtc.sdp_api();
        let mut new_channels = Vec::new();
        if self.send_channels.is_empty() {
            let rel = api.add_channel_with_config(ChannelConfig {
                label: DataKind::Reliable.label().into(),
                ordered: true,
                reliability: Reliability::Reliable,
                ..Default::default()
            });
            let lossy = api.add_channel_with_config(ChannelConfig {
                label: DataKind::Lossy.label().into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            });
            new_channels.push((DataKind::Reliable, rel));
            new_channels.push((DataKind::Lossy, lossy));
        }
        let mid = add_audio.map(|(stream_id, cid, codec)| {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, Some(stream_id.to_string()), Some(cid.to_string()), None);
            (mid, codec)
        });
        for mid in stop {
            // Inactive (not port 0): the m-line can be reused and the server sees the track stop.
            api.set_direction(*mid, Direction::Inactive);
        }
        if ice_restart {
            api.ice_restart(true);
        }
        let applied = api.apply();
        for (k, id) in new_channels {
            self.send_channels.insert(k, id);
            self.channels.insert(id, (Some(k), k.label().to_string()));
        }
        if let Some((mid, codec)) = mid {
            self.send_codecs.insert(mid, codec);
        }
        let sdp = match applied {
            Some((offer, pending)) => {
                self.pending_offer = Some(pending);
                let s = restrict_audio_codecs(&offer.to_sdp_string(), &self.send_codecs);
                self.last_local_sdp = Some(("offer".into(), s.clone()));
                Some(s)
            }
            None => None,
        };
        self.drain();
        Ok((sdp, mid.map(|(m, _)| m)))
    }

    /// Publisher: apply the server's answer to our pending offer.
    pub(crate) fn accept_answer(&mut self, sdp: &str) -> Result<(), RoomError> {
        let Some(pending) = self.pending_offer.take() else {
            return Err(RoomError::Protocol("answer without a pending offer".into()));
        };
        tracing::trace!(role = ?self.role, %sdp, "remote answer");
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| RoomError::Protocol(format!("bad answer SDP: {e}")))?;
        let r = self.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| RoomError::Rtc(format!("accept answer: {e}")));
        if r.is_ok() && !self.has_remote_description {
            self.has_remote_description = true;
            self.apply_early_candidates();
        }
        self.drain();
        r
    }

    /// Subscriber: answer the server's offer. Returns the answer SDP and the offer's m-sections.
    pub(crate) fn accept_offer(&mut self, sdp: &str) -> Result<(String, Vec<SdpMedia>), RoomError> {
        tracing::trace!(role = ?self.role, %sdp, "remote offer");
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| RoomError::Protocol(format!("bad offer SDP: {e}")))?;
        let sections = sdp_media_sections(sdp);
        let answer = self.rtc.sdp_api().accept_offer(offer).map_err(|e| RoomError::Rtc(format!("accept offer: {e}")));
        let answer = match answer {
            Ok(a) => a.to_sdp_string(),
            Err(e) => {
                self.drain();
                return Err(e);
            }
        };
        self.last_local_sdp = Some(("answer".into(), answer.clone()));
        self.last_remote_sdp = Some(("offer".into(), sdp.to_string()));
        if !self.has_remote_description {
            self.has_remote_description = true;
            self.apply_early_candidates();
        }
        self.drain();
        Ok((answer, sections))
    }

    // ---- media and data ------------------------------------------------------------------

    /// Send one audio frame (`codec`, RTP time at its clock) on `mid`. Before the connection
    /// is up str0m drops media; that is counted, not an error.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_audio(
        &mut self,
        now: Instant,
        mid: Mid,
        codec: AudioCodec,
        rtp_time: u64,
        payload: Vec<u8>,
        level: i8,
        talkspurt_start: bool,
    ) -> Result<(), RoomError> {
        if self.failed || !self.connected {
            self.counters.audio_write_errors += 1;
            return Ok(());
        }
        let Some(writer) = self.rtc.writer(mid) else {
            self.counters.audio_write_errors += 1;
            return Err(RoomError::Rtc(format!("no writer for mid {mid}")));
        };
        let (want, clock) = match codec {
            AudioCodec::Opus => (Codec::Opus, str0m::media::Frequency::FORTY_EIGHT_KHZ),
            AudioCodec::Pcmu => (Codec::PCMU, str0m::media::Frequency::EIGHT_KHZ),
            AudioCodec::Pcma => (Codec::PCMA, str0m::media::Frequency::EIGHT_KHZ),
        };
        let Some(pt) = writer.payload_params().find(|p| p.spec().codec == want).map(|p| p.pt()) else {
            self.counters.audio_write_errors += 1;
            return Err(RoomError::Rtc(format!("{want} not negotiated")));
        };
        let r = writer
            .audio_level(-level.clamp(0, 127), level < 50)
            .start_of_talkspurt(talkspurt_start)
            .write(pt, now, MediaTime::new(rtp_time, clock), payload);
        match r {
            Ok(()) => self.counters.audio_frames_out += 1,
            Err(e) => {
                self.counters.audio_write_errors += 1;
                tracing::debug!(error = %e, "audio write failed");
            }
        }
        // str0m packetises and paces written media on its clock: without time moving on, the
        // packet would wait for the driver's next timer turn (which, on a busy driver, lost to
        // other wake-ups and queued audio for hundreds of ms). Let it go out now.
        self.handle_timeout(now);
        Ok(())
    }

    /// Whether our `_reliable`/`_lossy` channel of this kind is open.
    pub(crate) fn channel_open(&self, kind: DataKind) -> bool {
        self.open_send_channels.contains_key(&kind)
    }

    /// Write a message on our channel of `kind`. `Ok(false)`: not open yet or no buffer space.
    pub(crate) fn send_data(&mut self, kind: DataKind, bytes: &[u8]) -> Result<bool, RoomError> {
        let Some(id) = self.open_send_channels.get(&kind).copied() else { return Ok(false) };
        let r = match self.rtc.channel(id) {
            Some(mut ch) => ch.write(true, bytes).map_err(|e| RoomError::Rtc(format!("data channel write: {e}"))),
            None => Ok(false),
        };
        self.drain();
        r
    }

    /// Every open LiveKit data channel of this peer connection (ours on the publisher, the
    /// server's on the subscriber) with its SCTP stream id, for SyncState on resume.
    pub(crate) fn data_channel_infos(&mut self) -> Vec<proto::DataChannelInfo> {
        let mut v: Vec<proto::DataChannelInfo> = Vec::new();
        let mut ids: Vec<(ChannelId, String)> = self.channels.iter().filter(|(_, (k, _))| k.is_some()).map(|(id, (_, l))| (*id, l.clone())).collect();
        ids.sort_by(|a, b| a.1.cmp(&b.1));
        for (id, label) in ids {
            if let Some(stream) = self.rtc.direct_api().sctp_stream_id_by_channel_id(id) {
                v.push(proto::DataChannelInfo { label, id: stream as u32, target: self.role as i32 });
            }
        }
        v
    }

    /// Close the connection (DTLS close_notify, SCTP shutdown) and flush what that produces.
    pub(crate) fn close(&mut self) {
        let _ = self.rtc.close();
        self.drain();
    }

    // ---- output --------------------------------------------------------------------------

    /// Drain str0m until it only has a timeout left (the single-mutation contract).
    pub(crate) fn drain(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => self.transmits.push(t),
                Ok(Output::Event(e)) => self.on_event(e),
                Err(e) => {
                    tracing::warn!(role = ?self.role, error = %e, "peer connection failed");
                    self.failed = true;
                    self.push_event(PeerEvent::Failed(e.to_string()));
                    self.next_timeout = Instant::now() + Duration::from_secs(3600);
                    return;
                }
            }
        }
    }

    fn push_event(&mut self, e: PeerEvent) {
        if self.events.len() >= MAX_EVENTS {
            // The driver drains after every call; this only trips on a bug. Drop, don't grow.
            tracing::warn!(role = ?self.role, "peer event queue full; dropping event");
            return;
        }
        self.events.push_back(e);
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.push_event(PeerEvent::Connected);
            }
            Event::IceConnectionStateChange(s) => {
                self.ice_state = s;
                self.push_event(PeerEvent::Ice(s));
            }
            Event::MediaAdded(m) => self.push_event(PeerEvent::MediaAdded { mid: m.mid, kind: m.kind }),
            Event::MediaChanged(m) => self.push_event(PeerEvent::MediaChanged { mid: m.mid, direction: m.direction }),
            Event::MediaData(d) => {
                let codec = match d.params.spec().codec {
                    Codec::Opus => AudioCodec::Opus,
                    Codec::PCMU => AudioCodec::Pcmu,
                    Codec::PCMA => AudioCodec::Pcma,
                    _ => {
                        self.counters.undecodable_media += 1;
                        return;
                    }
                };
                self.counters.audio_frames_in += 1;
                if self.counters.audio_frames_in <= 3 {
                    tracing::debug!(role = ?self.role, pt = ?d.params.pt(), ?codec, len = d.data.len(), "first audio frames");
                }
                let rtp_time = d.time.rebase(str0m::media::Frequency::FORTY_EIGHT_KHZ).numer();
                self.push_event(PeerEvent::Audio { mid: d.mid, codec, rtp_time, payload: d.data });
            }
            Event::ChannelOpen(id, label) => {
                let kind = DataKind::from_label(&label);
                self.channels.insert(id, (kind, label.clone()));
                if let Some(k) = kind {
                    if self.send_channels.get(&k) == Some(&id) {
                        self.open_send_channels.insert(k, id);
                    }
                }
                self.push_event(PeerEvent::ChannelOpen { kind, label });
            }
            Event::ChannelData(d) => {
                let kind = self.channels.get(&d.id).and_then(|(k, _)| *k);
                self.push_event(PeerEvent::Data { kind, bytes: d.data });
            }
            Event::ChannelClose(id) => {
                if let Some((Some(k), _)) = self.channels.remove(&id) {
                    if self.open_send_channels.get(&k) == Some(&id) {
                        self.open_send_channels.remove(&k);
                    }
                }
            }
            Event::Closed => {
                self.failed = true;
                self.push_event(PeerEvent::Failed("closed".into()));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=msid:PA_abc|TR_xyz TR_xyz\r\na=sendonly\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";

    #[test]
    fn parses_msid_per_mid() {
        let s = sdp_media_sections(OFFER);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].mid, "0");
        assert_eq!(s[0].kind, "audio");
        assert_eq!(s[0].stream_id.as_deref(), Some("PA_abc|TR_xyz"));
        assert_eq!(s[0].track_id.as_deref(), Some("TR_xyz"));
        assert_eq!(s[0].direction.as_deref(), Some("sendonly"));
        assert!(s[0].author_sends());
        assert_eq!(s[1].kind, "application");
        assert_eq!(s[1].track_id, None);
        assert!(sdp_media_sections("garbage\nm=\n").len() == 1);
        let planb = "m=audio 9 RTP 111\na=mid:a\na=ssrc:1 msid:S T\n";
        assert_eq!(sdp_media_sections(planb)[0].track_id.as_deref(), Some("T"));
    }

    /// Two peers wired back to back in memory: offer/answer, ICE, DTLS, SCTP, audio and data —
    /// the same path the room driver takes, without sockets.
    #[test]
    fn loopback_audio_and_data() {
        loopback(AudioCodec::Opus);
    }

    /// A PCMU track end to end: the offer names PCMU alone, the answer accepts it, and the
    /// payload arrives byte for byte with an 8 kHz RTP clock.
    #[test]
    fn loopback_pcmu() {
        loopback(AudioCodec::Pcmu);
    }

    fn loopback(codec: AudioCodec) {
        let mut now = Instant::now();
        let a_addr: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let mut a = Peer::new(Role::Publisher, a_addr, false, now).unwrap();
        let mut b = Peer::new(Role::Subscriber, b_addr, false, now).unwrap();

        let (offer, mid) = a.create_offer(Some(("stream", "cid-1", codec)), &[], false).unwrap();
        let mid = mid.unwrap();
        let offer_audio = offer.as_deref().unwrap().lines().find(|l| l.starts_with("m=audio")).unwrap().to_string();
        assert_eq!(offer_audio.trim_end().ends_with(" 0"), codec == AudioCodec::Pcmu, "{offer_audio}");
        let (answer, sections) = b.accept_offer(&offer.unwrap()).unwrap();
        assert!(sections.iter().any(|s| s.track_id.as_deref() == Some("cid-1")));
        a.accept_answer(&answer).unwrap();
        assert!(a.accept_answer(&answer).is_err(), "second answer must be refused");

        let mut got_audio = Vec::new();
        let mut got_data = Vec::new();
        let mut b_channel_open = false;
        let mut sent = 0u64;
        for step in 0..3000 {
            for t in std::mem::take(&mut a.transmits) {
                b.handle_datagram(now, a_addr, &t.contents);
            }
            for t in std::mem::take(&mut b.transmits) {
                a.handle_datagram(now, b_addr, &t.contents);
            }
            while let Some(e) = b.events.pop_front() {
                match e {
                    PeerEvent::Audio { payload, codec: c, rtp_time, .. } => {
                        assert_eq!(c, codec);
                        got_audio.push((rtp_time, payload));
                    }
                    PeerEvent::Data { bytes, kind } => got_data.push((kind, bytes)),
                    PeerEvent::ChannelOpen { .. } => b_channel_open = true,
                    _ => {}
                }
            }
            a.events.clear();
            if a.connected && step % 4 == 0 && sent < 20 {
                let (payload, step) = match codec {
                    AudioCodec::Opus => (vec![0xf8, 0xff, 0xfe], 960),
                    _ => (vec![0x55; 160], 160),
                };
                a.write_audio(now, mid, codec, 1000 + sent * step, payload, 30, sent == 0).unwrap();
                sent += 1;
            }
            if a.channel_open(DataKind::Reliable) && got_data.is_empty() && b_channel_open {
                let _ = a.send_data(DataKind::Reliable, b"ping").unwrap();
            }
            if got_audio.len() >= 10 && !got_data.is_empty() {
                break;
            }
            now += Duration::from_millis(5);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        assert!(a.connected && b.connected);
        assert!(got_audio.len() >= 10, "audio frames: {}", got_audio.len());
        match codec {
            AudioCodec::Opus => assert_eq!(&got_audio[0].1[..], &[0xf8, 0xff, 0xfe]),
            _ => assert_eq!(&got_audio[0].1[..], &[0x55; 160]),
        }
        // Consecutive 20 ms frames are 960 ticks apart on the 48 kHz time base either way.
        assert_eq!(got_audio[1].0 - got_audio[0].0, 960);
        assert_eq!(got_data[0], (Some(DataKind::Reliable), b"ping".to_vec()));
    }

    /// Each of our audio m-lines names only its track's codec; other m-lines are untouched.
    #[test]
    fn offer_names_only_each_tracks_codec() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtcp-fb:111 transport-cc\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=sendonly\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let codecs: HashMap<Mid, AudioCodec> = [(Mid::from("0"), AudioCodec::Pcmu), (Mid::from("1"), AudioCodec::Opus)].into();
        let out = restrict_audio_codecs(sdp, &codecs);
        let sections: Vec<&str> = out.split("m=").collect();
        assert!(sections[1].starts_with("audio 9 UDP/TLS/RTP/SAVPF 0\r\n"), "{}", sections[1]);
        assert!(sections[1].contains("a=rtpmap:0 PCMU/8000") && !sections[1].contains("opus") && !sections[1].contains("PCMA"));
        assert!(sections[1].contains("a=sendonly"));
        assert!(sections[2].starts_with("audio 9 UDP/TLS/RTP/SAVPF 111\r\n") && !sections[2].contains("PCMU"));
        assert!(sections[3].starts_with("application"));
        assert_eq!(restrict_audio_codecs(sdp, &HashMap::new()), sdp);
    }

    #[test]
    fn garbage_input_is_counted() {
        let now = Instant::now();
        let mut p = Peer::new(Role::Subscriber, "127.0.0.1:40003".parse().unwrap(), false, now).unwrap();
        let src: SocketAddr = "127.0.0.1:9".parse().unwrap();
        p.handle_datagram(now, src, &[]);
        p.handle_datagram(now, src, &[0x80, 0x6f, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9]);
        p.handle_datagram(now, src, &[0x16, 0xfe, 0xfd, 0, 0]);
        assert!(!p.is_failed());
        assert!(p.accept_offer("v=0\r\nnonsense").is_err());
        assert!(p.accept_answer("v=0").is_err());
        assert!(p.add_remote_candidate("candidate:garbage").is_err());
    }
}
