//! The room: joining, the driver task, and the [`Room`] handle.
//!
//! [`Room::connect`] dials `/rtc`, waits for `join`, binds one UDP socket per peer connection,
//! offers the publisher peer connection (carrying the `_reliable` / `_lossy` data channels) and
//! spawns the **driver**: one tokio task per room that owns the signalling link, both str0m
//! [`Peer`]s and their sockets. The driver wakes on exactly one thing at a time — a signalling
//! message, a datagram, a command from a [`Room`] handle, an encoded frame from an
//! [`AudioSink`], or a timer — applies it, drains the peers and sends what they produced.
//! Nothing is shared with the driver but bounded channels and a small snapshot of room state
//! behind a mutex, so a room that misbehaves cannot stall another.
//!
//! Keepalive: `ping_req` every `ping_interval`; no message for `ping_timeout` means the
//! signalling link is dead. A dead link (ping timeout, socket error, or `leave` with action
//! `RESUME`) starts a **resume**: redial with `reconnect=1&sid=…` in a background task while
//! media keeps flowing, wait for `reconnect`, then send `sync_state` (our subscriber answer,
//! subscriptions, published tracks, data channels) and, if the publisher's ICE is down, an
//! ICE-restart offer. Attempts back off. When the server no longer knows the session (it answers
//! the resume with a fresh `join`, or 404) or the attempts run out, the driver **rejoins**
//! from scratch ([`RoomOptions::full_reconnect`]): new sid, new peers and sockets, our tracks
//! republished under the same cids so existing [`AudioSink`]s keep working, remote tracks
//! re-subscribed. When that fails too the room ends with [`DisconnectReason::SignalLost`] /
//! [`DisconnectReason::PingTimeout`]; `leave` from the server, 401 and 403 end it at once.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use str0m::media::Mid;
use str0m::IceConnectionState;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use url::Url;

use crate::audio::{AudioCodec, AudioSink, AudioTrackOptions, IncomingAudio, OutgoingAudio, RemoteAudioTrack, TrackShared};
use crate::data::{self, DataKind, DataPacketBuilder};
use crate::error::RoomError;
use crate::events::{attribute_changes, DisconnectReason, Participant, ReconnectKind, RoomEvent, TrackInfo, TrackKind};
use crate::ice_tcp::{TcpFrame, TcpLinks};
use crate::peer::{Peer, PeerEvent, Role, SdpMedia};
use crate::signal::{self, Incoming, JoinParams, Request, Response, SignalConn};
use crate::turn::{self, Relays, RelaysEvent};
use crate::turn_link::{LinkEvent, RelayLinks};

/// Which local candidates a room's peer connections use (RTCConfiguration's
/// `iceTransportPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IceTransportPolicy {
    /// Host (UDP and ICE-TCP) and relayed candidates; ICE prefers direct paths (RFC 8445
    /// priorities) and falls back to a TURN relay when none works.
    #[default]
    All,
    /// Relayed candidates only: every packet goes through a TURN server from the join's
    /// `ice_servers`. A server can ask for this too (`ClientConfiguration.force_relay`).
    Relay,
}

#[doc(hidden)]
pub mod fuzzing;

/// How a [`Room`] behaves.
#[derive(Debug, Clone)]
pub struct RoomOptions {
    /// Subscribe to every published track automatically (the server decides; default true).
    pub auto_subscribe: bool,
    /// Capacity of the event receiver; events beyond it are dropped and counted.
    pub event_capacity: usize,
    /// Capacity of the queue from all [`AudioSink`]s to the driver, in 20 ms frames.
    pub audio_queue_frames: usize,
    /// Data packets waiting for the data channel (before it opens, or while SCTP is full).
    pub data_queue_packets: usize,
    /// Resume after the signalling link drops (`reconnect=1&sid=…`).
    pub resume: bool,
    /// Resume attempts before escalating to a full reconnect.
    pub resume_attempts: u32,
    /// When resuming is impossible (the server answers `leave{RECONNECT}` — a restarted server
    /// does — or forgot the session, or resume attempts ran out), join again from scratch as
    /// the official SDKs do: new participant sid, new peer connections, our tracks republished
    /// (existing [`AudioSink`]s keep working; their `track_sid()` is the old one), remote tracks
    /// re-subscribed (`TrackUnsubscribed` then `TrackSubscribed` again), our attributes,
    /// metadata and explicit subscriptions restored.
    pub full_reconnect: bool,
    /// How long one reconnection episode (resumes, then full reconnects) may take before the
    /// room gives up with [`DisconnectReason::SignalLost`].
    pub reconnect_timeout: Duration,
    /// Receive video tracks. `room` only decodes audio, so by default it unsubscribes from
    /// video (the subscriber PC still accepts video m-lines the server offers).
    pub subscribe_video: bool,
    /// Local IP to bind and advertise as ICE host candidate. Default: the address of the
    /// interface that routes to the LiveKit host.
    pub local_ip: Option<IpAddr>,
    /// How long [`Room::connect`] waits for the peer connection to come up.
    pub connect_timeout: Duration,
    /// Which candidates to use (default: all; TURN relays are gathered from the join's
    /// `ice_servers` either way and used when no direct path works).
    pub ice_transport_policy: IceTransportPolicy,
    /// PEM certificates of a private CA that `turns:` (TURN over TLS) servers may present,
    /// trusted besides the system's roots (which `SSL_CERT_FILE` / `SSL_CERT_DIR` can point
    /// elsewhere). Empty: the system's roots only.
    pub turn_tls_ca_pem: Vec<u8>,
}

impl Default for RoomOptions {
    fn default() -> Self {
        Self {
            auto_subscribe: true,
            event_capacity: 1024,
            audio_queue_frames: 256,
            data_queue_packets: 1024,
            resume: true,
            resume_attempts: 3,
            full_reconnect: true,
            reconnect_timeout: Duration::from_secs(60),
            subscribe_video: false,
            local_ip: None,
            connect_timeout: Duration::from_secs(20),
            ice_transport_policy: IceTransportPolicy::All,
            turn_tls_ca_pem: Vec::new(),
        }
    }
}

/// Counters of a room (malformed input, drops, traffic). All monotonic.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoomStats {
    /// Events dropped because the event receiver was full.
    pub events_dropped: u64,
    /// Signalling messages received.
    pub signal_messages: u64,
    /// Signalling frames that could not be decoded or applied.
    pub signal_malformed: u64,
    /// Datagrams received / sent.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams that could not be sent (socket full) or were rejected on input.
    pub datagrams_bad: u64,
    /// Opus frames sent.
    pub audio_frames_out: u64,
    /// Opus frames received.
    pub audio_frames_in: u64,
    /// Outgoing frames dropped (track not negotiated yet, connection not up).
    pub audio_frames_dropped: u64,
    /// Data packets sent.
    pub data_sent: u64,
    /// Data packets received (user + DTMF).
    pub data_received: u64,
    /// Data packets dropped (queue full, lossy without buffer space).
    pub data_dropped: u64,
    /// Data packets that failed to decode.
    pub data_malformed: u64,
    /// Successful resumes.
    pub resumes: u64,
    /// Successful full reconnects (fresh joins after a failed resume or `leave{RECONNECT}`).
    pub rejoins: u64,
    /// Requests the server refused (`RequestResponse` errors: add_track, metadata, mute, …).
    pub requests_refused: u64,
    /// Remote tracks the server could not subscribe us to (`SubscriptionResponse`).
    pub subscription_failures: u64,
    /// Last signalling round-trip time in ms (from ping/pong).
    pub rtt_ms: u64,
    /// TURN allocations made (relayed candidates gathered), both peer connections.
    pub relay_allocations: u64,
    /// TURN allocations that failed (refused, timed out, TLS or connection errors).
    pub relay_failures: u64,
    /// Packets sent to / received from the LiveKit server through TURN relays.
    pub relay_packets_out: u64,
    /// Packets received through TURN relays.
    pub relay_packets_in: u64,
}

#[derive(Default)]
struct Counters {
    events_dropped: AtomicU64,
    signal_messages: AtomicU64,
    signal_malformed: AtomicU64,
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    datagrams_bad: AtomicU64,
    audio_frames_out: AtomicU64,
    audio_frames_in: AtomicU64,
    audio_frames_dropped: AtomicU64,
    data_sent: AtomicU64,
    data_received: AtomicU64,
    data_dropped: AtomicU64,
    data_malformed: AtomicU64,
    resumes: AtomicU64,
    rejoins: AtomicU64,
    requests_refused: AtomicU64,
    subscription_failures: AtomicU64,
    rtt_ms: AtomicU64,
    relay_allocations: AtomicU64,
    relay_failures: AtomicU64,
    relay_packets_out: AtomicU64,
    relay_packets_in: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Default, Clone)]
struct Snapshot {
    room_name: String,
    room_sid: String,
    room_metadata: String,
    local: Option<Participant>,
    /// By identity.
    remotes: HashMap<String, Participant>,
    /// `JoinResponse.enabled_publish_codecs`, lower-case mime types (empty: the server did not say).
    publish_codecs: Vec<String>,
}

/// Lower-case mime types of a join's `enabled_publish_codecs`.
fn publish_codecs(join: &proto::JoinResponse) -> Vec<String> {
    join.enabled_publish_codecs.iter().map(|c| c.mime.to_ascii_lowercase()).collect()
}

struct Shared {
    snapshot: Mutex<Snapshot>,
    counters: Counters,
}

impl Shared {
    fn new(join: &proto::JoinResponse, local_info: &proto::ParticipantInfo) -> Shared {
        let room = join.room.clone().unwrap_or_default();
        Shared {
            snapshot: Mutex::new(Snapshot {
                room_name: room.name,
                room_sid: room.sid,
                room_metadata: room.metadata,
                local: Some(Participant::from(local_info)),
                remotes: HashMap::new(),
                publish_codecs: publish_codecs(join),
            }),
            counters: Counters::default(),
        }
    }

    fn snap(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        match self.snapshot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

enum Command {
    PublishAudio { opts: AudioTrackOptions, reply: PublishReply },
    SendData { packet: DataPacketBuilder, reply: oneshot::Sender<Result<(), RoomError>> },
    SendDtmf { code: u32, digit: String, destinations: Vec<String>, reply: oneshot::Sender<Result<(), RoomError>> },
    UpdateMetadata {
        metadata: Option<String>,
        name: Option<String>,
        attributes: HashMap<String, String>,
        reply: oneshot::Sender<Result<(), RoomError>>,
    },
    Unpublish { cid: Arc<str> },
    Subscribe { track_sids: Vec<String>, subscribe: bool, reply: oneshot::Sender<Result<(), RoomError>> },
    SimulateSignalDrop,
    SimulateFullReconnect,
    Close { reply: oneshot::Sender<()> },
}

/// A joined LiveKit room. Cheap to clone; the room ends on [`Room::close`], when the server
/// says so, or when every handle and every [`AudioSink`] is dropped.
#[derive(Clone)]
pub struct Room {
    cmd_tx: mpsc::Sender<Command>,
    audio_tx: mpsc::Sender<OutgoingAudio>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.snap();
        f.debug_struct("Room").field("name", &s.room_name).field("sid", &s.room_sid).finish()
    }
}

/// Local IP that routes to `host:port` (no packet is sent: connecting a UDP socket only picks
/// the route).
async fn route_ip(url: &Url) -> IpAddr {
    let host = url.host_str().unwrap_or("127.0.0.1").trim_start_matches('[').trim_end_matches(']').to_string();
    let port = url.port_or_known_default().unwrap_or(7880);
    let Ok(mut addrs) = tokio::net::lookup_host((host.as_str(), port)).await else {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    };
    let Some(addr) = addrs.next() else { return IpAddr::V4(Ipv4Addr::LOCALHOST) };
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let probe = match std::net::UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(_) => return IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    match probe.connect(addr).and_then(|_| probe.local_addr()) {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// Relayed candidates only: asked by the application, or by the server
/// (`ClientConfiguration.force_relay`, as the official SDKs honour it).
fn relay_only(options: &RoomOptions, join: &proto::JoinResponse) -> bool {
    let forced = join.client_configuration.as_ref().is_some_and(|c| c.force_relay == proto::ClientConfigSetting::Enabled as i32);
    options.ice_transport_policy == IceTransportPolicy::Relay || forced
}

/// The TLS configuration for `turns:` servers, if any is offered.
fn relay_tls(options: &RoomOptions, servers: &[turn::TurnServer]) -> Option<Arc<rustls::ClientConfig>> {
    if !servers.iter().any(|s| s.transport == turn::TurnTransport::Tls) {
        return None;
    }
    match turn::tls_config(&options.turn_tls_ca_pem) {
        Ok(c) => Some(c),
        Err(e) => {
            // The TLS relays then fail with a clear reason; the others still work.
            tracing::warn!(error = %e, "TURN/TLS configuration unusable");
            None
        }
    }
}

impl Room {
    /// Join the room `token` grants, at `url` (`ws://`, `wss://`, `http://` or `https://`).
    /// Returns once the publisher peer connection is up, with the room's event receiver.
    pub async fn connect(url: &str, token: &str, options: RoomOptions) -> Result<(Room, mpsc::Receiver<RoomEvent>), RoomError> {
        let params = JoinParams { auto_subscribe: options.auto_subscribe, ..Default::default() };
        let rtc_url = signal::rtc_url(url, &params, None)?;
        let (conn, join) = signal::connect(&rtc_url, token).await?;
        let local_info = join.participant.clone().ok_or_else(|| RoomError::Protocol("join without participant".into()))?;

        let ip = match options.local_ip {
            Some(ip) => ip,
            None => route_ip(&rtc_url).await,
        };
        let relay_only = relay_only(&options, &join);
        let turn_servers = turn::turn_servers(&join.ice_servers);
        if relay_only && turn_servers.is_empty() {
            conn.abort();
            return Err(RoomError::Relay("relayed candidates only, and the server offered no TURN server".into()));
        }
        let relay_tls = relay_tls(&options, &turn_servers);
        let pub_sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let sub_sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let now = Instant::now();
        let publisher = Peer::new(Role::Publisher, pub_sock.local_addr()?, relay_only, now)?;
        let subscriber = Peer::new(Role::Subscriber, sub_sock.local_addr()?, relay_only, now)?;

        let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(16));
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (audio_tx, audio_rx) = mpsc::channel(options.audio_queue_frames.max(8));
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tcp, tcp_rx) = TcpLinks::new();
        let (relay_links, relay_rx) = RelayLinks::new();

        let shared = Arc::new(Shared::new(&join, &local_info));

        let mut engine = Engine::new(
            EngineSetup { url: url.to_string(), token: token.to_string(), params, opts: options.clone(), signal: Some(conn), tcp },
            RelaySetup { links: relay_links, tls: relay_tls, relay_only, local_ip: ip },
            &join,
            local_info,
            (publisher, subscriber),
            events_tx,
            shared.clone(),
            Some(ready_tx),
            now,
        );
        engine.on_join_participants(join.other_participants.clone());
        engine.start_relays(turn_servers);
        engine.start_negotiation();

        // The driver should never panic (str0m promises not to on any input, and we never
        // unwrap untrusted data); if it does anyway, the application still gets `Disconnected`.
        let watch_tx = engine.events_tx.clone();
        let driver = tokio::spawn(engine.run(pub_sock, sub_sock, cmd_rx, audio_rx, tcp_rx, relay_rx));
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                if e.is_panic() {
                    tracing::error!("room driver panicked");
                    let _ = watch_tx.try_send(RoomEvent::Disconnected(DisconnectReason::PeerConnectionFailed("internal error".into())));
                }
            }
        });

        let handle = Room { cmd_tx, audio_tx, shared };
        match tokio::time::timeout(options.connect_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok((handle, events_rx)),
            Ok(Ok(Err(e))) => {
                handle.close().await;
                Err(e)
            }
            Ok(Err(_)) => Err(RoomError::Closed),
            Err(_) => {
                handle.close().await;
                Err(RoomError::Timeout("peer connection"))
            }
        }
    }

    /// Room name.
    pub fn name(&self) -> String {
        self.shared.snap().room_name.clone()
    }
    /// Room sid.
    pub fn sid(&self) -> String {
        self.shared.snap().room_sid.clone()
    }
    /// Room metadata (latest known).
    pub fn metadata(&self) -> String {
        self.shared.snap().room_metadata.clone()
    }
    /// Our participant (identity, name, kind, metadata and attributes come from the token).
    pub fn local_participant(&self) -> Participant {
        self.shared.snap().local.clone().expect("set at connect")
    }
    /// Everyone else currently in the room.
    pub fn remote_participants(&self) -> Vec<Participant> {
        self.shared.snap().remotes.values().cloned().collect()
    }

    /// Whether the server lets us publish `codec` (`JoinResponse.enabled_publish_codecs`;
    /// livekit-server ≥ 1.9.1 enables PCMU and PCMA besides Opus). A server that sends no list
    /// is taken to allow Opus only.
    pub fn publish_codec_enabled(&self, codec: AudioCodec) -> bool {
        let codecs = &self.shared.snap().publish_codecs;
        codec == AudioCodec::Opus || codecs.iter().any(|m| m == codec.mime_type_lower())
    }

    /// Counters.
    pub fn stats(&self) -> RoomStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RoomStats {
            events_dropped: l(&c.events_dropped),
            signal_messages: l(&c.signal_messages),
            signal_malformed: l(&c.signal_malformed),
            datagrams_in: l(&c.datagrams_in),
            datagrams_out: l(&c.datagrams_out),
            datagrams_bad: l(&c.datagrams_bad),
            audio_frames_out: l(&c.audio_frames_out),
            audio_frames_in: l(&c.audio_frames_in),
            audio_frames_dropped: l(&c.audio_frames_dropped),
            data_sent: l(&c.data_sent),
            data_received: l(&c.data_received),
            data_dropped: l(&c.data_dropped),
            data_malformed: l(&c.data_malformed),
            resumes: l(&c.resumes),
            rejoins: l(&c.rejoins),
            requests_refused: l(&c.requests_refused),
            subscription_failures: l(&c.subscription_failures),
            rtt_ms: l(&c.rtt_ms),
            relay_allocations: l(&c.relay_allocations),
            relay_failures: l(&c.relay_failures),
            relay_packets_out: l(&c.relay_packets_out),
            relay_packets_in: l(&c.relay_packets_in),
        }
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, RoomError>>) -> Command) -> Result<T, RoomError> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx.send(make(tx)).await.map_err(|_| RoomError::Closed)?;
        rx.await.map_err(|_| RoomError::Closed)?
    }

    /// Publish a mono Opus audio track (`add_track` → `track_published` → renegotiation) and
    /// return the sink to push PCM into. Resolves once the track is negotiated.
    ///
    /// A G.711 track needs 8 kHz input; a server whose `enabled_publish_codecs` lists codecs
    /// but not this one refuses it here with [`RoomError::CodecNotEnabled`] (a server that
    /// lists none is asked anyway).
    pub async fn publish_audio(&self, options: AudioTrackOptions) -> Result<AudioSink, RoomError> {
        // Validate before bothering the server.
        match options.codec {
            AudioCodec::Opus => drop(crate::audio::OpusEncoder::new(options.sample_rate, options.complexity, options.dtx)?),
            g711 => {
                if options.sample_rate != 8_000 {
                    return Err(RoomError::InvalidSampleRate(options.sample_rate));
                }
                let listed = self.shared.snap().publish_codecs.clone();
                if !listed.is_empty() && !listed.iter().any(|m| m == g711.mime_type_lower()) {
                    return Err(RoomError::CodecNotEnabled(g711.mime_type()));
                }
            }
        }
        let opts = options.clone();
        let (sid, cid) = self.request(|reply| Command::PublishAudio { opts, reply }).await?;
        let mut sink = AudioSink::new(sid, cid.clone(), &options, self.audio_tx.clone())?;
        let cmd_tx = self.cmd_tx.clone();
        sink.on_drop = Some(Box::new(move || {
            if let Err(mpsc::error::TrySendError::Full(c)) = cmd_tx.try_send(Command::Unpublish { cid }) {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = cmd_tx.send(c).await;
                    });
                }
            }
        }));
        Ok(sink)
    }

    /// Send a user data packet. Resolves when it is handed to the data channel (reliable
    /// packets wait, bounded, for the channel to open or drain).
    pub async fn send_data(&self, packet: DataPacketBuilder) -> Result<(), RoomError> {
        self.request(|reply| Command::SendData { packet, reply }).await
    }

    /// Send a SIP DTMF packet (`code` 0-15, `digit` its text) on the reliable channel.
    pub async fn send_dtmf(&self, code: u32, digit: &str, destination_identities: Vec<String>) -> Result<(), RoomError> {
        let digit = digit.to_string();
        self.request(|reply| Command::SendDtmf { code, digit, destinations: destination_identities, reply }).await
    }

    /// Update our attributes (merged by the server; an empty value deletes a key). Needs
    /// `canUpdateOwnMetadata` in the token.
    pub async fn set_attributes(&self, attributes: HashMap<String, String>) -> Result<(), RoomError> {
        self.request(|reply| Command::UpdateMetadata { metadata: None, name: None, attributes, reply }).await
    }

    /// Update our metadata. Needs `canUpdateOwnMetadata`.
    pub async fn set_metadata(&self, metadata: impl Into<String>) -> Result<(), RoomError> {
        let metadata = Some(metadata.into());
        self.request(|reply| Command::UpdateMetadata { metadata, name: None, attributes: HashMap::new(), reply }).await
    }

    /// Subscribe to (or unsubscribe from) remote tracks by sid — for rooms joined with
    /// `auto_subscribe: false`, or to stop receiving a track. Subscriptions show up as
    /// [`RoomEvent::TrackSubscribed`] / [`RoomEvent::TrackUnsubscribed`].
    pub async fn set_subscribed(&self, track_sids: Vec<String>, subscribe: bool) -> Result<(), RoomError> {
        self.request(|reply| Command::Subscribe { track_sids, subscribe, reply }).await
    }

    /// Leave the room cleanly (`leave`, DTLS close) and stop the driver. Idempotent.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd_tx.send(Command::Close { reply: tx }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// True once the room has ended.
    pub fn is_closed(&self) -> bool {
        self.cmd_tx.is_closed()
    }

    /// Test hook: drop the signalling WebSocket as if the network cut it (starts a resume).
    #[doc(hidden)]
    pub async fn simulate_signal_drop(&self) {
        let _ = self.cmd_tx.send(Command::SimulateSignalDrop).await;
    }

    /// Test hook: reconnect from scratch as if the server had sent `leave{RECONNECT}`.
    #[doc(hidden)]
    pub async fn simulate_full_reconnect(&self) {
        let _ = self.cmd_tx.send(Command::SimulateFullReconnect).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// Answer to a publish: (track sid, cid).
type PublishReply = oneshot::Sender<Result<(String, Arc<str>), RoomError>>;

struct LocalTrack {
    cid: Arc<str>,
    opts: AudioTrackOptions,
    info: proto::TrackInfo,
    mid: Option<Mid>,
    reply: Option<PublishReply>,
}

struct PendingPublish {
    opts: AudioTrackOptions,
    /// None when republishing after a full reconnect.
    reply: Option<PublishReply>,
    deadline: Instant,
}

struct Subscribed {
    mid: String,
    stream_id: String,
    shared: Arc<TrackShared>,
    announced: bool,
}

struct QueuedData {
    kind: DataKind,
    bytes: Vec<u8>,
    reply: Option<oneshot::Sender<Result<(), RoomError>>>,
    deadline: Instant,
}

/// What a background (re)connection attempt produced.
#[allow(clippy::large_enum_variant)] // one value per reconnection
enum Relink {
    Resumed(SignalConn, proto::ReconnectResponse, Vec<Response>),
    Rejoined(SignalConn, Box<proto::JoinResponse>),
}

type ResumeResult = Result<Relink, RoomError>;

enum Wake {
    Cmd(Option<Command>),
    Udp(Role, std::io::Result<(usize, SocketAddr)>),
    Signal(Box<Incoming>),
    Resume(ResumeResult),
    Audio(Option<OutgoingAudio>),
    Tcp(Option<TcpFrame>),
    Relay(Option<LinkEvent>),
    Timer,
}

struct Engine {
    url: String,
    token: String,
    params: JoinParams,
    opts: RoomOptions,
    signal: Option<SignalConn>,
    resume_task: Option<tokio::task::JoinHandle<ResumeResult>>,
    /// The reconnection episode in progress, if any.
    reconnect: Option<Reconnect>,
    /// What has been tried since the media connection went down.
    ice_recovery: IceRecovery,
    /// Sockets of the peers created by a full reconnect; the run loop swaps them in.
    new_sockets: Option<(UdpSocket, UdpSocket)>,
    /// ICE-TCP connections of both peers.
    tcp: TcpLinks,
    /// TURN allocations of both peers (sans-IO) and their links to the servers.
    relays: Relays,
    relay_links: RelayLinks,
    relay_tls: Option<Arc<rustls::ClientConfig>>,
    /// The peers use relayed candidates only.
    relay_only: bool,
    /// The local address our sockets bind (and the address family TURN servers are reached in).
    local_ip: IpAddr,
    local: proto::ParticipantInfo,
    publisher: Peer,
    subscriber: Peer,
    events_tx: mpsc::Sender<RoomEvent>,
    shared: Arc<Shared>,
    ready: Option<oneshot::Sender<Result<(), RoomError>>>,
    closing: Option<oneshot::Sender<()>>,
    done: bool,
    // publishing
    negotiation_needed: bool,
    pending_media: VecDeque<Arc<str>>,
    pending_stop: Vec<Mid>,
    pending_publish: HashMap<String, PendingPublish>,
    local_tracks: HashMap<Arc<str>, LocalTrack>,
    // subscribing
    sub_mids: HashMap<String, SdpMedia>,
    subscribed: HashMap<String, Subscribed>,
    /// Remote participants by identity (a rejoin under the same identity replaces the old sid).
    remotes: HashMap<String, proto::ParticipantInfo>,
    /// `set_subscribed` calls: track sid → (subscribe, publisher identity, track name). Sent in
    /// `sync_state` after a resume; after a full reconnect mapped to the new sids by identity
    /// and name.
    explicit_subscriptions: HashMap<String, ExplicitSubscription>,
    /// `set_attributes` / `set_metadata` calls waiting for the server's `RequestResponse`.
    pending_metadata: HashMap<u32, PendingMetadata>,
    /// Remote participants missing from the join of our full reconnect: kept (trackless) until
    /// this deadline, as after a server restart they are rejoining too.
    rejoin_grace: HashMap<String, Instant>,
    // data
    data_queue: VecDeque<QueuedData>,
    reliable_seq: u32,
    // keepalive
    ping_interval: Option<Duration>,
    ping_timeout: Option<Duration>,
    next_ping: Instant,
    last_signal_rx: Instant,
    rtt_ms: i64,
    ice_down_since: Option<Instant>,
    metadata_request_id: u32,
}

/// Media down this long (signalling fine): resume with `reconnect_reason`, which makes the server
/// restart the subscriber's ICE, and restart the publisher's ICE ourselves.
const ICE_RESUME_AFTER: Duration = Duration::from_secs(4);
/// Still down this long: full reconnect (new peer connections, new candidates).
const ICE_FULL_AFTER: Duration = Duration::from_secs(12);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a participant missing after our full reconnect may take to come back before it is
/// reported gone (`ParticipantDisconnected`): everyone reconnects after a server restart.
const REJOIN_GRACE: Duration = Duration::from_secs(20);
const DATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `set_attributes` / `set_metadata` waits for the server's answer.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay before reconnect attempt n (the first is immediate). Capped at 2 s: a phone call
/// cannot wait out the SDKs' 7 s steps; up to 25 % jitter spreads a server restart's herd.
const RECONNECT_BACKOFF_MS: [u64; 5] = [0, 300, 800, 1500, 2000];

/// A reconnection episode: resumes first (unless the server asked for a full reconnect), then
/// fresh joins, until one works or `reconnect_timeout` runs out.
#[derive(Debug)]
struct Reconnect {
    kind: ReconnectKind,
    /// Attempts of the current kind so far.
    attempt: u32,
    started: Instant,
    /// What ends the room if the episode fails.
    cause: DisconnectReason,
    reason: proto::ReconnectReason,
}

#[derive(Debug, Default, Clone, Copy)]
struct IceRecovery {
    resume_tried: bool,
    full_tried: bool,
}

#[derive(Debug, Clone)]
struct ExplicitSubscription {
    subscribe: bool,
    identity: String,
    name: String,
}

struct PendingMetadata {
    reply: oneshot::Sender<Result<(), RoomError>>,
    deadline: Instant,
    /// Attributes the update sets (a server that sends no OK answer confirms by updating us).
    expect: HashMap<String, String>,
}

fn backoff(attempt: u32) -> Duration {
    let base = RECONNECT_BACKOFF_MS[(attempt as usize).min(RECONNECT_BACKOFF_MS.len() - 1)];
    Duration::from_millis(base + rand::random::<u64>() % (base / 4 + 1))
}

async fn recv_signal(signal: &mut Option<SignalConn>) -> Incoming {
    match signal.as_mut() {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn join_resume(task: &mut Option<tokio::task::JoinHandle<ResumeResult>>) -> ResumeResult {
    match task.as_mut() {
        Some(t) => match t.await {
            Ok(r) => r,
            Err(e) => Err(RoomError::Connect(format!("resume task: {e}"))),
        },
        None => std::future::pending().await,
    }
}

/// What a driver is built from besides the join: where to redial, and the link (none when fuzzing).
struct EngineSetup {
    url: String,
    token: String,
    params: JoinParams,
    opts: RoomOptions,
    signal: Option<SignalConn>,
    /// ICE-TCP links; the run loop owns their receiving end.
    tcp: TcpLinks,
}

/// How the driver reaches TURN servers (RTCConfiguration's relay side).
struct RelaySetup {
    links: RelayLinks,
    tls: Option<Arc<rustls::ClientConfig>>,
    relay_only: bool,
    local_ip: IpAddr,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    fn new(
        setup: EngineSetup,
        relay: RelaySetup,
        join: &proto::JoinResponse,
        local_info: proto::ParticipantInfo,
        (publisher, subscriber): (Peer, Peer),
        events_tx: mpsc::Sender<RoomEvent>,
        shared: Arc<Shared>,
        ready: Option<oneshot::Sender<Result<(), RoomError>>>,
        now: Instant,
    ) -> Engine {
        let ping_interval = (join.ping_interval > 0).then(|| Duration::from_secs(join.ping_interval as u64));
        let ping_timeout = (join.ping_timeout > 0).then(|| Duration::from_secs(join.ping_timeout as u64));
        Engine {
            url: setup.url,
            token: setup.token,
            params: setup.params,
            opts: setup.opts,
            signal: setup.signal,
            resume_task: None,
            reconnect: None,
            ice_recovery: IceRecovery::default(),
            new_sockets: None,
            tcp: setup.tcp,
            relays: Relays::default(),
            relay_links: relay.links,
            relay_tls: relay.tls,
            relay_only: relay.relay_only,
            local_ip: relay.local_ip,
            local: local_info,
            publisher,
            subscriber,
            events_tx,
            shared,
            ready,
            closing: None,
            done: false,
            negotiation_needed: false,
            pending_media: VecDeque::new(),
            pending_stop: Vec::new(),
            pending_publish: HashMap::new(),
            local_tracks: HashMap::new(),
            sub_mids: HashMap::new(),
            subscribed: HashMap::new(),
            remotes: HashMap::new(),
            explicit_subscriptions: HashMap::new(),
            pending_metadata: HashMap::new(),
            rejoin_grace: HashMap::new(),
            data_queue: VecDeque::new(),
            reliable_seq: 1,
            ping_interval,
            ping_timeout,
            next_ping: now + ping_interval.unwrap_or(Duration::from_secs(3600)),
            last_signal_rx: now,
            rtt_ms: 0,
            ice_down_since: None,
            metadata_request_id: 1,
        }
    }

    async fn run(
        mut self,
        mut pub_sock: UdpSocket,
        mut sub_sock: UdpSocket,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut audio_rx: mpsc::Receiver<OutgoingAudio>,
        mut tcp_rx: mpsc::Receiver<TcpFrame>,
        mut relay_rx: mpsc::Receiver<LinkEvent>,
    ) {
        let mut pub_buf = vec![0u8; 2048];
        let mut sub_buf = vec![0u8; 2048];
        self.pump(&pub_sock, &sub_sock);
        while !self.done {
            let deadline = self.next_deadline();
            let wake = tokio::select! {
                c = cmd_rx.recv() => Wake::Cmd(c),
                r = pub_sock.recv_from(&mut pub_buf) => Wake::Udp(Role::Publisher, r),
                r = sub_sock.recv_from(&mut sub_buf) => Wake::Udp(Role::Subscriber, r),
                m = recv_signal(&mut self.signal) => Wake::Signal(Box::new(m)),
                r = join_resume(&mut self.resume_task) => Wake::Resume(r),
                a = audio_rx.recv() => Wake::Audio(a),
                f = tcp_rx.recv() => Wake::Tcp(f),
                l = relay_rx.recv() => Wake::Relay(l),
                _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
            };
            let now = Instant::now();
            let was_timer = matches!(wake, Wake::Timer);
            match wake {
                Wake::Cmd(None) => self.shutdown(DisconnectReason::ClientInitiated).await,
                Wake::Cmd(Some(c)) => self.on_command(c, now).await,
                Wake::Udp(role, Ok((n, from))) => {
                    inc(&self.shared.counters.datagrams_in);
                    let buf = if role == Role::Publisher { &pub_buf[..n] } else { &sub_buf[..n] };
                    self.peer(role).handle_datagram(now, from, buf);
                }
                Wake::Udp(role, Err(e)) => {
                    tracing::debug!(?role, error = %e, "udp receive error");
                }
                Wake::Signal(m) => self.on_signal_incoming(*m, now),
                Wake::Resume(r) => {
                    self.resume_task = None;
                    self.on_resume_result(r, now);
                }
                Wake::Audio(Some(a)) => self.on_outgoing_audio(a, now),
                Wake::Audio(None) => {}
                Wake::Tcp(Some((role, from, bytes))) => {
                    inc(&self.shared.counters.datagrams_in);
                    self.peer(role).handle_tcp(now, from, &bytes);
                }
                Wake::Tcp(None) => {}
                Wake::Relay(Some(ev)) => self.on_relay_link(ev, now),
                Wake::Relay(None) => {}
                Wake::Timer => self.on_timer(now),
            }
            // A timer that fell due while something else won the select runs now, not after
            // another round of wake-ups (retransmits, RTCP, pacing and pings stay on time).
            let now = Instant::now();
            if !was_timer && self.next_deadline() <= now {
                self.on_timer(now);
            }
            if let Some((p, s)) = self.new_sockets.take() {
                // Full reconnect: the old peers are gone; their sockets go with them.
                pub_sock = p;
                sub_sock = s;
            }
            self.pump(&pub_sock, &sub_sock);
        }
        // Final flush (DTLS close_notify etc.), then the TURN allocations go back.
        self.pump(&pub_sock, &sub_sock);
        self.close_relays(Instant::now());
        if let Some(t) = self.resume_task.take() {
            t.abort();
        }
        for s in self.subscribed.values() {
            s.shared.close();
        }
        if let Some(reply) = self.closing.take() {
            let _ = reply.send(());
        }
    }

    fn peer(&mut self, role: Role) -> &mut Peer {
        if role == Role::Publisher {
            &mut self.publisher
        } else {
            &mut self.subscriber
        }
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut d = now + Duration::from_millis(500);
        d = d.min(self.publisher.next_timeout()).min(self.subscriber.next_timeout());
        if let Some(t) = self.relays.next_timeout() {
            d = d.min(t);
        }
        if self.signal.is_some() {
            if self.ping_interval.is_some() {
                d = d.min(self.next_ping);
            }
            if let Some(t) = self.ping_timeout {
                d = d.min(self.last_signal_rx + t);
            }
        }
        d.max(now)
    }

    fn emit(&self, e: RoomEvent) {
        if let Err(mpsc::error::TrySendError::Full(e)) = self.events_tx.try_send(e) {
            inc(&self.shared.counters.events_dropped);
            tracing::warn!(event = ?std::mem::discriminant(&e), "event receiver full; event dropped");
        }
    }

    fn send_signal(&mut self, msg: Request) {
        match self.signal.as_ref() {
            Some(s) => {
                if let Err(e) = s.send(msg) {
                    tracing::warn!(error = %e, "signalling send failed");
                }
            }
            None => tracing::debug!("signalling down; request not sent"),
        }
    }

    /// Process peer events until quiet, then send every pending datagram.
    fn pump(&mut self, pub_sock: &UdpSocket, sub_sock: &UdpSocket) {
        self.handle_peer_events();
        let now = Instant::now();
        for (peer, sock) in [(&mut self.publisher, pub_sock), (&mut self.subscriber, sub_sock)] {
            for t in peer.transmits.drain(..) {
                // From a relayed candidate: through its TURN server.
                if self.relays.send(now, t.source, t.destination, &t.contents) {
                    inc(&self.shared.counters.datagrams_out);
                    continue;
                }
                if t.proto == str0m::net::Protocol::Tcp {
                    self.tcp.send(peer.role, t.destination, &t.contents);
                    inc(&self.shared.counters.datagrams_out);
                    continue;
                }
                match sock.try_send_to(&t.contents, t.destination) {
                    Ok(_) => inc(&self.shared.counters.datagrams_out),
                    Err(e) => {
                        inc(&self.shared.counters.datagrams_bad);
                        tracing::debug!(error = %e, to = %t.destination, "udp send failed");
                    }
                }
            }
        }
        self.flush_relays();
        let c = &self.shared.counters;
        let (a, b) = (self.publisher.counters, self.subscriber.counters);
        c.audio_frames_out.store(a.audio_frames_out, Ordering::Relaxed);
        c.audio_frames_in.store(b.audio_frames_in + a.audio_frames_in, Ordering::Relaxed);
        let r = self.relays.counters();
        c.relay_allocations.store(self.relays.allocated, Ordering::Relaxed);
        c.relay_failures.store(self.relays.failed, Ordering::Relaxed);
        c.relay_packets_out.store(r.packets_out, Ordering::Relaxed);
        c.relay_packets_in.store(r.packets_in, Ordering::Relaxed);
    }

    // ---- TURN relays ---------------------------------------------------------------------

    /// One relay per TURN server for each peer connection, as libwebrtc gathers them.
    fn start_relays(&mut self, servers: Vec<turn::TurnServer>) {
        for role in [Role::Publisher, Role::Subscriber] {
            for s in &servers {
                let id = self.relays.add(role, s.clone());
                self.relay_links.open(id, s, self.local_ip);
            }
        }
        if !servers.is_empty() {
            tracing::debug!(servers = servers.len(), relay_only = self.relay_only, "gathering TURN relays");
        }
    }

    fn on_relay_link(&mut self, ev: LinkEvent, now: Instant) {
        match ev {
            LinkEvent::Up { id, local, remote } => self.relays.link_up(id, local, remote, self.relay_tls.clone(), now),
            LinkEvent::Data { id, bytes } => {
                for (role, relayed, peer, data) in self.relays.handle_input(id, now, &bytes) {
                    inc(&self.shared.counters.datagrams_in);
                    self.peer(role).handle_relayed(now, peer, relayed, &data);
                }
            }
            LinkEvent::Down { id, why } => self.relays.link_failed(id, &why, now),
        }
    }

    /// Relayed candidates go to their peer connection (and to the server by trickle once the
    /// peer has a description); failures are reported, and with relayed candidates only a
    /// peer connection left without any relay fails the join at once instead of timing out.
    fn on_relay_events(&mut self) {
        while let Some(ev) = self.relays.poll_event() {
            match ev {
                RelaysEvent::Candidate { role, relayed, local } => {
                    let peer = self.peer(role);
                    let Some(candidate) = peer.add_relay_candidate(relayed, local) else { continue };
                    tracing::debug!(?role, %relayed, "relayed candidate gathered");
                    if let Some((mid, ufrag)) = peer.trickle_target() {
                        self.send_signal(signal::req_trickle(&candidate, role, &mid, &ufrag));
                    }
                }
                RelaysEvent::Failed { role, server, reason, all_failed } => {
                    tracing::warn!(?role, %server, %reason, "TURN relay failed");
                    if all_failed && self.relay_only {
                        let why = format!("every TURN allocation of the {role:?} failed (last: {server}: {reason})");
                        if let Some(r) = self.ready.take() {
                            let _ = r.send(Err(RoomError::Relay(why.clone())));
                            self.finish(DisconnectReason::PeerConnectionFailed(why));
                        }
                    }
                }
            }
        }
    }

    /// Bytes for the TURN servers to their links; links of dead relays close.
    fn flush_relays(&mut self) {
        while let Some((id, bytes)) = self.relays.poll_transmit() {
            self.relay_links.send(id, bytes);
        }
        for id in self.relays.dead() {
            self.relay_links.close(id);
        }
    }

    /// Give every allocation back and close the links (room ending, or peers replaced).
    fn close_relays(&mut self, now: Instant) {
        for (id, bytes) in self.relays.close_all(now) {
            self.relay_links.send(id, bytes);
        }
        for id in self.relay_links.ids() {
            self.relay_links.close(id);
        }
    }

    /// The sans-IO half of [`Engine::pump`]: peer events until quiet, then queued data.
    fn handle_peer_events(&mut self) {
        for _ in 0..64 {
            let mut any = false;
            while let Some(e) = self.publisher.events.pop_front() {
                any = true;
                self.on_peer_event(Role::Publisher, e);
            }
            while let Some(e) = self.subscriber.events.pop_front() {
                any = true;
                self.on_peer_event(Role::Subscriber, e);
            }
            if !any {
                break;
            }
        }
        self.on_relay_events();
        self.flush_data_queue(Instant::now());
    }

    // ---- commands ------------------------------------------------------------------------

    async fn on_command(&mut self, c: Command, now: Instant) {
        match c {
            Command::PublishAudio { opts, reply } => {
                let cid: String = format!("audio-{:016x}", rand::random::<u64>());
                self.send_signal(signal::req_add_audio_track(&cid, &opts.name, opts.source, opts.dtx, opts.codec));
                self.pending_publish.insert(cid, PendingPublish { opts, reply: Some(reply), deadline: now + PUBLISH_TIMEOUT });
            }
            Command::SendData { packet, reply } => {
                if packet.payload.len() > data::MAX_PACKET_BYTES {
                    let _ = reply.send(Err(RoomError::TooLarge(packet.payload.len())));
                    return;
                }
                let from = self.sender();
                let seq = if packet.reliable { self.next_seq() } else { 0 };
                let bytes = data::encode_user(&packet, &from, seq);
                self.enqueue_data(packet.kind(), bytes, reply, now);
            }
            Command::SendDtmf { code, digit, destinations, reply } => {
                let from = self.sender();
                let seq = self.next_seq();
                let bytes = data::encode_dtmf(code, &digit, &destinations, &from, seq);
                self.enqueue_data(DataKind::Reliable, bytes, reply, now);
            }
            Command::UpdateMetadata { metadata, name, attributes, reply } => {
                let id = self.metadata_request_id;
                self.metadata_request_id = self.metadata_request_id.wrapping_add(1);
                if self.signal.is_none() {
                    let _ = reply.send(Err(RoomError::Connect("signalling down".into())));
                    return;
                }
                let expect = attributes.clone();
                self.send_signal(signal::req_update_metadata(metadata, name, attributes, id));
                self.pending_metadata.insert(id, PendingMetadata { reply, deadline: now + METADATA_TIMEOUT, expect });
            }
            Command::Unpublish { cid } => {
                if let Some(t) = self.local_tracks.remove(&cid) {
                    tracing::info!(track = %t.info.sid, "unpublishing");
                    match t.mid {
                        Some(mid) => {
                            self.pending_stop.push(mid);
                            self.start_negotiation();
                        }
                        None => self.pending_media.retain(|c| *c != cid),
                    }
                }
            }
            Command::Subscribe { track_sids, subscribe, reply } => {
                if self.signal.is_none() {
                    let _ = reply.send(Err(RoomError::Connect("signalling down".into())));
                    return;
                }
                for sid in &track_sids {
                    let (identity, name) = self
                        .owner_of(sid)
                        .map(|p| (p.identity.clone(), p.tracks.iter().find(|t| &t.sid == sid).map(|t| t.name.clone()).unwrap_or_default()))
                        .unwrap_or_default();
                    self.explicit_subscriptions.insert(sid.clone(), ExplicitSubscription { subscribe, identity, name });
                }
                self.send_signal(Request::Subscription(proto::UpdateSubscription { track_sids, subscribe, participant_tracks: vec![] }));
                let _ = reply.send(Ok(()));
            }
            Command::SimulateSignalDrop => {
                if let Some(s) = self.signal.take() {
                    s.abort();
                    self.signal_lost(DisconnectReason::SignalLost("simulated drop".into()), now);
                }
            }
            Command::SimulateFullReconnect => {
                if let Some(s) = self.signal.take() {
                    s.abort();
                }
                self.start_reconnect(ReconnectKind::Full, DisconnectReason::SignalLost("simulated".into()), proto::ReconnectReason::RrUnknown, now);
            }
            Command::Close { reply } => {
                self.closing = Some(reply);
                self.shutdown(DisconnectReason::ClientInitiated).await;
            }
        }
    }

    async fn shutdown(&mut self, reason: DisconnectReason) {
        if self.done {
            return;
        }
        if reason == DisconnectReason::ClientInitiated {
            self.send_signal(signal::req_leave(proto::DisconnectReason::ClientInitiated));
        }
        self.finish(reason);
        if let Some(s) = self.signal.take() {
            s.close().await;
        }
    }

    /// End the room: fail waiters, close peers, emit `Disconnected`.
    fn finish(&mut self, reason: DisconnectReason) {
        if self.done {
            return;
        }
        self.done = true;
        tracing::info!(?reason, "room disconnected");
        if let Some(r) = self.ready.take() {
            let _ = r.send(Err(match &reason {
                DisconnectReason::Server(r) => RoomError::Left(*r),
                other => RoomError::Connect(format!("{other:?}")),
            }));
        }
        for (_, p) in self.pending_publish.drain() {
            if let Some(r) = p.reply {
                let _ = r.send(Err(RoomError::Closed));
            }
        }
        for t in self.local_tracks.values_mut() {
            if let Some(r) = t.reply.take() {
                let _ = r.send(Err(RoomError::Closed));
            }
        }
        for q in self.data_queue.drain(..) {
            if let Some(r) = q.reply {
                let _ = r.send(Err(RoomError::Closed));
            }
        }
        for (_, m) in self.pending_metadata.drain() {
            let _ = m.reply.send(Err(RoomError::Closed));
        }
        self.publisher.close();
        self.subscriber.close();
        self.emit(RoomEvent::Disconnected(reason));
    }

    fn sender(&self) -> data::Sender {
        data::Sender { identity: self.local.identity.clone(), sid: self.local.sid.clone() }
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.reliable_seq;
        self.reliable_seq = self.reliable_seq.wrapping_add(1).max(1);
        s
    }

    // ---- data ----------------------------------------------------------------------------

    fn enqueue_data(&mut self, kind: DataKind, bytes: Vec<u8>, reply: oneshot::Sender<Result<(), RoomError>>, now: Instant) {
        if self.data_queue.is_empty() && self.publisher.channel_open(kind) {
            match self.publisher.send_data(kind, &bytes) {
                Ok(true) => {
                    inc(&self.shared.counters.data_sent);
                    let _ = reply.send(Ok(()));
                    return;
                }
                Ok(false) if kind == DataKind::Lossy => {
                    inc(&self.shared.counters.data_dropped);
                    let _ = reply.send(Err(RoomError::QueueFull("lossy data channel")));
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        if self.data_queue.len() >= self.opts.data_queue_packets {
            inc(&self.shared.counters.data_dropped);
            let _ = reply.send(Err(RoomError::QueueFull("data")));
            return;
        }
        self.data_queue.push_back(QueuedData { kind, bytes, reply: Some(reply), deadline: now + DATA_TIMEOUT });
    }

    fn flush_data_queue(&mut self, now: Instant) {
        while let Some(q) = self.data_queue.front_mut() {
            if now > q.deadline {
                let q = self.data_queue.pop_front().expect("front exists");
                inc(&self.shared.counters.data_dropped);
                if let Some(r) = q.reply {
                    let _ = r.send(Err(RoomError::Timeout("data channel")));
                }
                continue;
            }
            if !self.publisher.channel_open(q.kind) {
                return;
            }
            let kind = q.kind;
            match self.publisher.send_data(kind, &q.bytes) {
                Ok(true) => {
                    let q = self.data_queue.pop_front().expect("front exists");
                    inc(&self.shared.counters.data_sent);
                    if let Some(r) = q.reply {
                        let _ = r.send(Ok(()));
                    }
                }
                Ok(false) => return, // SCTP buffer full: retry on the next wake
                Err(e) => {
                    let q = self.data_queue.pop_front().expect("front exists");
                    inc(&self.shared.counters.data_dropped);
                    if let Some(r) = q.reply {
                        let _ = r.send(Err(e));
                    }
                }
            }
        }
    }

    fn on_data(&mut self, kind: Option<DataKind>, bytes: &[u8]) {
        match data::decode(bytes, kind.unwrap_or(DataKind::Reliable)) {
            Ok(data::Incoming::User(m)) => {
                inc(&self.shared.counters.data_received);
                self.emit(RoomEvent::DataReceived(m));
            }
            Ok(data::Incoming::Dtmf(d)) => {
                inc(&self.shared.counters.data_received);
                self.emit(RoomEvent::DtmfReceived(d));
            }
            Ok(data::Incoming::Other(what)) => tracing::trace!(what, "data packet ignored"),
            Err(e) => {
                inc(&self.shared.counters.data_malformed);
                tracing::debug!(error = %e, len = bytes.len(), "malformed data packet");
            }
        }
    }

    // ---- audio out -----------------------------------------------------------------------

    fn on_outgoing_audio(&mut self, a: OutgoingAudio, now: Instant) {
        let mid = self.local_tracks.get(&a.track_cid).and_then(|t| t.mid);
        let Some(mid) = mid else {
            inc(&self.shared.counters.audio_frames_dropped);
            return;
        };
        if !self.publisher.connected {
            inc(&self.shared.counters.audio_frames_dropped);
            return;
        }
        if let Err(e) = self.publisher.write_audio(now, mid, a.codec, a.rtp_time, a.payload, a.audio_level, a.talkspurt_start) {
            inc(&self.shared.counters.audio_frames_dropped);
            tracing::debug!(error = %e, "audio frame dropped");
        } else if let Some(obs) = self.local_tracks.get(&a.track_cid).and_then(|t| t.opts.on_sent.as_ref()) {
            // write_audio has handed the SRTP packet to the socket.
            (obs.0)(a.captured.elapsed());
        }
    }

    // ---- publisher negotiation -----------------------------------------------------------

    /// Send a publisher offer now if one is needed and none is in flight.
    fn start_negotiation(&mut self) {
        self.negotiation_needed = true;
        self.maybe_negotiate(false);
    }

    fn maybe_negotiate(&mut self, ice_restart: bool) {
        if !self.negotiation_needed || self.publisher.has_pending_offer() || self.signal.is_none() {
            return;
        }
        // str0m adds one media per offer here; further tracks go in follow-up offers.
        let add = self.pending_media.pop_front();
        let add_args = add.as_ref().map(|cid| {
            let codec = self.local_tracks.get(cid).map_or(AudioCodec::Opus, |t| t.opts.codec);
            (format!("{}-stream", self.local.sid), cid.clone(), codec)
        });
        let stop = std::mem::take(&mut self.pending_stop);
        let r = self.publisher.create_offer(add_args.as_ref().map(|(s, c, codec)| (s.as_str(), &**c, *codec)), &stop, ice_restart);
        self.negotiation_needed = !self.pending_media.is_empty();
        match r {
            Ok((Some(sdp), mid)) => {
                if let (Some(cid), Some(mid)) = (add, mid) {
                    if let Some(t) = self.local_tracks.get_mut(&cid) {
                        t.mid = Some(mid);
                    }
                }
                self.send_signal(signal::req_offer(sdp));
            }
            Ok((None, _)) => {}
            Err(e) => tracing::warn!(error = %e, "cannot create publisher offer"),
        }
    }

    fn on_answer(&mut self, sd: proto::SessionDescription) {
        if let Err(e) = self.publisher.accept_answer(&sd.sdp) {
            inc(&self.shared.counters.signal_malformed);
            tracing::warn!(error = %e, "publisher answer rejected");
            // Tracks waiting on this negotiation fail.
            for t in self.local_tracks.values_mut() {
                if t.reply.is_some() && t.mid.is_some() {
                    if let Some(r) = t.reply.take() {
                        let _ = r.send(Err(RoomError::Rtc(e.to_string())));
                    }
                }
            }
            return;
        }
        for t in self.local_tracks.values_mut() {
            if t.mid.is_some() {
                if let Some(r) = t.reply.take() {
                    let _ = r.send(Ok((t.info.sid.clone(), t.cid.clone())));
                }
            }
        }
        self.maybe_negotiate(false);
    }

    fn on_track_published(&mut self, r: proto::TrackPublishedResponse) {
        let Some(p) = self.pending_publish.remove(&r.cid) else {
            tracing::debug!(cid = %r.cid, "track_published for unknown cid");
            return;
        };
        let Some(info) = r.track else {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(RoomError::Protocol("track_published without track".into())));
            }
            return;
        };
        let cid: Arc<str> = r.cid.as_str().into();
        self.emit(RoomEvent::LocalTrackPublished(TrackInfo::from(&info)));
        self.local_tracks.insert(cid.clone(), LocalTrack { cid: cid.clone(), opts: p.opts, info, mid: None, reply: p.reply });
        self.pending_media.push_back(cid);
        self.start_negotiation();
    }

    // ---- subscriber ----------------------------------------------------------------------

    fn on_offer(&mut self, sd: proto::SessionDescription) {
        let (answer, sections) = match self.subscriber.accept_offer(&sd.sdp) {
            Ok(x) => x,
            Err(e) => {
                inc(&self.shared.counters.signal_malformed);
                tracing::warn!(error = %e, "subscriber offer rejected");
                return;
            }
        };
        self.send_signal(signal::req_answer(answer));
        self.sub_mids = sections.into_iter().filter(|s| s.kind == "audio" && !s.mid.is_empty()).map(|s| (s.mid.clone(), s)).collect();
        self.reconcile_subscriptions();
    }

    /// Track sid carried on an m-line (LiveKit: `a=msid:<PA_sid>|<TR_sid> <TR_sid>`).
    fn track_of(m: &SdpMedia) -> Option<String> {
        if let Some(t) = m.track_id.as_deref().filter(|t| t.starts_with("TR_")) {
            return Some(t.to_string());
        }
        let s = m.stream_id.as_deref()?;
        let t = s.split('|').nth(1).unwrap_or(s);
        (!t.is_empty() && t != "-").then(|| t.to_string())
    }

    fn owner_of(&self, track_sid: &str) -> Option<&proto::ParticipantInfo> {
        self.remotes.values().find(|p| p.tracks.iter().any(|t| t.sid == track_sid))
    }

    /// Make `subscribed` match the live audio m-lines of the latest subscriber offer.
    fn reconcile_subscriptions(&mut self) {
        let live: HashMap<String, (String, String)> = self
            .sub_mids
            .values()
            .filter(|m| m.author_sends())
            .filter_map(|m| Self::track_of(m).map(|t| (t, (m.mid.clone(), m.stream_id.clone().unwrap_or_default()))))
            .collect();
        let gone: Vec<String> = self.subscribed.iter().filter(|(sid, s)| live.get(*sid).map(|(mid, _)| mid) != Some(&s.mid)).map(|(k, _)| k.clone()).collect();
        for sid in gone {
            self.unsubscribe(&sid);
        }
        for (sid, (mid, stream_id)) in live {
            if !self.subscribed.contains_key(&sid) {
                self.subscribed.insert(sid.clone(), Subscribed { mid, stream_id, shared: Arc::new(TrackShared::default()), announced: false });
            }
        }
        self.announce_subscriptions();
    }

    /// Emit `TrackSubscribed` for subscriptions whose publisher we know.
    fn announce_subscriptions(&mut self) {
        let pending: Vec<String> = self.subscribed.iter().filter(|(_, s)| !s.announced).map(|(k, _)| k.clone()).collect();
        for sid in pending {
            let Some(owner) = self.owner_of(&sid).cloned() else { continue };
            let Some(s) = self.subscribed.get_mut(&sid) else { continue };
            s.announced = true;
            let name = owner.tracks.iter().find(|t| t.sid == sid).map(|t| t.name.clone()).unwrap_or_default();
            let track = RemoteAudioTrack {
                sid: sid.clone(),
                name,
                participant_identity: owner.identity.clone(),
                participant_sid: owner.sid.clone(),
                shared: s.shared.clone(),
            };
            tracing::debug!(track = %sid, participant = %owner.identity, stream = %s.stream_id, "track subscribed");
            self.emit(RoomEvent::TrackSubscribed { track, participant: Participant::from(&owner) });
        }
    }

    fn unsubscribe(&mut self, track_sid: &str) {
        let Some(s) = self.subscribed.remove(track_sid) else { return };
        s.shared.close();
        if s.announced {
            let participant = self.owner_of(track_sid).map(Participant::from).unwrap_or_else(|| Participant {
                sid: s.stream_id.split('|').next().unwrap_or_default().to_string(),
                identity: String::new(),
                name: String::new(),
                kind: crate::events::ParticipantKind::Standard,
                metadata: String::new(),
                attributes: HashMap::new(),
                tracks: Vec::new(),
            });
            self.emit(RoomEvent::TrackUnsubscribed { track_sid: track_sid.to_string(), participant });
        }
    }

    fn on_remote_audio(&mut self, mid: Mid, codec: AudioCodec, rtp_time: u64, payload: Arc<[u8]>) {
        let mid = mid.to_string();
        if let Some(s) = self.subscribed.values().find(|s| s.mid == mid) {
            s.shared.dispatch(IncomingAudio { codec, rtp_time, payload, received: std::time::Instant::now() });
        }
    }

    // ---- participants --------------------------------------------------------------------

    fn on_join_participants(&mut self, others: Vec<proto::ParticipantInfo>) {
        for p in others {
            if p.sid == self.local.sid || p.identity == self.local.identity {
                continue;
            }
            for t in &p.tracks {
                self.maybe_skip_video(t);
            }
            self.shared.snap().remotes.insert(p.identity.clone(), Participant::from(&p));
            self.remotes.insert(p.identity.clone(), p);
        }
    }

    /// `room` decodes audio only: unless asked for video, tell the server not to send it.
    fn maybe_skip_video(&mut self, t: &proto::TrackInfo) {
        if self.opts.auto_subscribe && !self.opts.subscribe_video && TrackInfo::from(t).kind == TrackKind::Video {
            self.send_signal(Request::Subscription(proto::UpdateSubscription {
                track_sids: vec![t.sid.clone()],
                subscribe: false,
                participant_tracks: vec![],
            }));
        }
    }

    /// A remote participant is gone (left, or replaced by a newer session of its identity):
    /// its subscriptions end, its tracks are unpublished, then `ParticipantDisconnected`.
    fn remove_remote(&mut self, old: &proto::ParticipantInfo) {
        self.rejoin_grace.remove(&old.identity);
        self.remotes.remove(&old.identity);
        self.shared.snap().remotes.remove(&old.identity);
        let participant = Participant::from(old);
        for t in &old.tracks {
            self.unsubscribe_with(&t.sid, &participant);
            self.emit(RoomEvent::TrackUnpublished { participant: participant.clone(), track: TrackInfo::from(t) });
        }
        self.emit(RoomEvent::ParticipantDisconnected(participant));
    }

    /// The same identity under a new sid: its old tracks go, it stays in the room.
    fn replace_remote(&mut self, old: &proto::ParticipantInfo, info: proto::ParticipantInfo) {
        self.rejoin_grace.remove(&info.identity);
        let was = Participant::from(old);
        for t in &old.tracks {
            self.unsubscribe_with(&t.sid, &was);
            self.emit(RoomEvent::TrackUnpublished { participant: was.clone(), track: TrackInfo::from(t) });
        }
        let participant = Participant::from(&info);
        self.shared.snap().remotes.insert(info.identity.clone(), participant.clone());
        self.remotes.insert(info.identity.clone(), info.clone());
        self.emit(RoomEvent::ParticipantRejoined { participant: participant.clone(), old_sid: old.sid.clone() });
        for t in &info.tracks {
            self.maybe_skip_video(t);
            self.emit(RoomEvent::TrackPublished { participant: participant.clone(), track: TrackInfo::from(t) });
        }
    }

    fn add_remote(&mut self, info: proto::ParticipantInfo) {
        let participant = Participant::from(&info);
        self.shared.snap().remotes.insert(info.identity.clone(), participant.clone());
        self.remotes.insert(info.identity.clone(), info.clone());
        self.emit(RoomEvent::ParticipantConnected(participant.clone()));
        for t in &info.tracks {
            self.maybe_skip_video(t);
            self.emit(RoomEvent::TrackPublished { participant: participant.clone(), track: TrackInfo::from(t) });
        }
    }

    fn on_participant_update(&mut self, infos: Vec<proto::ParticipantInfo>) {
        for info in infos {
            if info.sid == self.local.sid {
                self.on_local_update(info);
                continue;
            }
            if info.identity == self.local.identity {
                // Another session under our identity: the server is replacing us (its `leave`
                // follows) or this is our own previous sid going away.
                continue;
            }
            let disconnected = info.state == proto::participant_info::State::Disconnected as i32;
            // Keyed by identity: at protocol > 11 livekit-server sends no DISCONNECTED for the
            // old sid when an identity rejoins (room.go SendParticipantUpdates), so a new sid
            // replaces the old one here.
            let old = self.remotes.get(&info.identity).cloned();
            match old {
                None if disconnected => {}
                None => self.add_remote(info),
                Some(old) if old.sid != info.sid => {
                    let newer = info.joined_at_ms == 0 || old.joined_at_ms == 0 || info.joined_at_ms >= old.joined_at_ms;
                    if disconnected || !newer {
                        tracing::debug!(identity = %info.identity, sid = %info.sid, "update for a replaced session ignored");
                        continue;
                    }
                    tracing::info!(identity = %info.identity, old_sid = %old.sid, new_sid = %info.sid, "participant rejoined under a new sid");
                    self.replace_remote(&old, info);
                }
                Some(old) if disconnected => self.remove_remote(&old),
                Some(old) => {
                    if info.version != 0 && info.version < old.version {
                        continue; // stale update
                    }
                    let participant = Participant::from(&info);
                    self.shared.snap().remotes.insert(info.identity.clone(), participant.clone());
                    self.remotes.insert(info.identity.clone(), info.clone());
                    for t in &info.tracks {
                        match old.tracks.iter().find(|o| o.sid == t.sid) {
                            None => {
                                self.maybe_skip_video(t);
                                self.emit(RoomEvent::TrackPublished { participant: participant.clone(), track: TrackInfo::from(t) })
                            }
                            Some(o) if o.muted != t.muted => self.emit(RoomEvent::TrackMuted {
                                track_sid: t.sid.clone(),
                                participant_identity: info.identity.clone(),
                                muted: t.muted,
                            }),
                            _ => {}
                        }
                    }
                    for o in &old.tracks {
                        if !info.tracks.iter().any(|t| t.sid == o.sid) {
                            self.unsubscribe_with(&o.sid, &participant);
                            self.emit(RoomEvent::TrackUnpublished { participant: participant.clone(), track: TrackInfo::from(o) });
                        }
                    }
                    self.emit_changes(&old, &info, participant);
                }
            }
        }
        self.announce_subscriptions();
    }

    fn unsubscribe_with(&mut self, track_sid: &str, participant: &Participant) {
        if let Some(s) = self.subscribed.remove(track_sid) {
            s.shared.close();
            if s.announced {
                self.emit(RoomEvent::TrackUnsubscribed { track_sid: track_sid.to_string(), participant: participant.clone() });
            }
        }
    }

    fn emit_changes(&self, old: &proto::ParticipantInfo, new: &proto::ParticipantInfo, participant: Participant) {
        if old.metadata != new.metadata {
            self.emit(RoomEvent::MetadataChanged { participant: participant.clone(), old_metadata: old.metadata.clone() });
        }
        if old.name != new.name {
            self.emit(RoomEvent::NameChanged { participant: participant.clone(), old_name: old.name.clone() });
        }
        let changed = attribute_changes(&old.attributes, &new.attributes);
        if !changed.is_empty() {
            self.emit(RoomEvent::AttributesChanged { participant, changed });
        }
    }

    fn on_local_update(&mut self, info: proto::ParticipantInfo) {
        if info.version != 0 && info.version < self.local.version {
            return;
        }
        let old = std::mem::replace(&mut self.local, info.clone());
        let participant = Participant::from(&info);
        self.shared.snap().local = Some(participant.clone());
        self.emit_changes(&old, &info, participant);
        // A server that sends no OK `RequestResponse` confirms an update by applying it.
        let done: Vec<u32> = self
            .pending_metadata
            .iter()
            .filter(|(_, m)| !m.expect.is_empty() && m.expect.iter().all(|(k, v)| info.attributes.get(k).map_or(v.is_empty(), |x| x == v)))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(m) = self.pending_metadata.remove(&id) {
                let _ = m.reply.send(Ok(()));
            }
        }
    }

    /// The server's answer to one of our requests: errors fail the call that caused them at
    /// once, with the server's reason (livekit-server participant.go `sendRequestResponse`).
    fn on_request_response(&mut self, r: proto::RequestResponse) {
        use proto::request_response::{Reason, Request as Req};
        let reason = Reason::try_from(r.reason).unwrap_or(Reason::UnclassifiedError);
        let refused = || RoomError::Refused { reason, message: r.message.clone() };
        if !matches!(reason, Reason::Ok | Reason::Queued) {
            inc(&self.shared.counters.requests_refused);
            tracing::warn!(?reason, message = %r.message, request_id = r.request_id, "server refused a request");
        }
        match r.request {
            Some(Req::AddTrack(a)) => match reason {
                // A track with this cid is still pending: the server publishes this one after it.
                Reason::Ok | Reason::Queued => tracing::debug!(cid = %a.cid, ?reason, "add_track acknowledged"),
                _ => {
                    if let Some(reply) = self.pending_publish.remove(&a.cid).and_then(|p| p.reply) {
                        let _ = reply.send(Err(refused()));
                    }
                }
            },
            Some(Req::UpdateMetadata(_)) | None if r.request_id != 0 => {
                if let Some(m) = self.pending_metadata.remove(&r.request_id) {
                    let _ = m.reply.send(if reason == Reason::Ok { Ok(()) } else { Err(refused()) });
                }
            }
            _ => {}
        }
    }

    // ---- signalling ----------------------------------------------------------------------

    fn on_signal_incoming(&mut self, m: Incoming, now: Instant) {
        match m {
            Incoming::Message(msg) => {
                self.last_signal_rx = now;
                inc(&self.shared.counters.signal_messages);
                self.on_signal(msg, now);
            }
            Incoming::Malformed(e) => {
                self.last_signal_rx = now;
                inc(&self.shared.counters.signal_malformed);
                tracing::warn!(error = %e, "malformed signalling frame ignored");
            }
            Incoming::Closed(why) => {
                if let Some(s) = self.signal.take() {
                    s.abort();
                }
                tracing::warn!(%why, "signalling link lost");
                self.signal_lost(DisconnectReason::SignalLost(why), now);
            }
        }
    }

    fn on_signal(&mut self, msg: Response, now: Instant) {
        tracing::trace!(msg = signal::response_name(&msg), "signal");
        match msg {
            Response::Answer(sd) => self.on_answer(sd),
            Response::Offer(sd) => self.on_offer(sd),
            Response::Trickle(t) => {
                let role = if t.target == proto::SignalTarget::Subscriber as i32 { Role::Subscriber } else { Role::Publisher };
                match signal::parse_trickle(&t) {
                    Ok(Some(c)) => {
                        if let Err(e) = self.peer(role).add_remote_candidate(&c) {
                            inc(&self.shared.counters.signal_malformed);
                            tracing::debug!(error = %e, "remote candidate ignored");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        inc(&self.shared.counters.signal_malformed);
                        tracing::debug!(error = %e, "bad trickle");
                    }
                }
            }
            Response::Update(u) => self.on_participant_update(u.participants),
            Response::TrackPublished(r) => self.on_track_published(r),
            Response::TrackUnpublished(r) => {
                tracing::info!(track = %r.track_sid, "server unpublished our track");
                self.local_tracks.retain(|_, t| t.info.sid != r.track_sid);
            }
            Response::Leave(l) => {
                let reason = proto::DisconnectReason::try_from(l.reason).unwrap_or(proto::DisconnectReason::UnknownReason);
                let action = signal::leave_action(&l);
                tracing::info!(?reason, ?action, "server sent leave");
                if let Some(s) = self.signal.take() {
                    s.abort();
                }
                match action {
                    signal::LeaveAction::Resume => self.signal_lost(DisconnectReason::Server(reason), now),
                    // Negotiation failure, publication error, …: the session is gone on the
                    // server; join again (RtcEngine / RTCEngine.ts do the same).
                    signal::LeaveAction::Reconnect => {
                        self.start_reconnect(ReconnectKind::Full, DisconnectReason::Server(reason), proto::ReconnectReason::RrUnknown, now)
                    }
                    signal::LeaveAction::Disconnect => self.finish(DisconnectReason::Server(reason)),
                }
            }
            Response::RequestResponse(r) => self.on_request_response(r),
            Response::SubscriptionResponse(r) => {
                let error = proto::SubscriptionError::try_from(r.err).unwrap_or(proto::SubscriptionError::SeUnknown);
                inc(&self.shared.counters.subscription_failures);
                tracing::warn!(track = %r.track_sid, ?error, "server could not subscribe us to a track");
                self.emit(RoomEvent::SubscriptionFailed { track_sid: r.track_sid, error });
            }
            Response::Mute(m) => {
                if let Some(owner) = self.owner_of(&m.sid) {
                    let identity = owner.identity.clone();
                    self.emit(RoomEvent::TrackMuted { track_sid: m.sid, participant_identity: identity, muted: m.muted });
                }
            }
            Response::RoomUpdate(r) => {
                if let Some(room) = r.room {
                    let changed = {
                        let mut s = self.shared.snap();
                        let changed = s.room_metadata != room.metadata;
                        s.room_metadata = room.metadata.clone();
                        if !room.name.is_empty() {
                            s.room_name = room.name.clone();
                        }
                        changed
                    };
                    if changed {
                        self.emit(RoomEvent::RoomMetadataChanged(room.metadata));
                    }
                }
            }
            Response::RefreshToken(t) if !t.is_empty() => self.token = t,
            // Only the echo of a ping we sent (not from the future, not older than an hour)
            // is a round trip; the server's timestamp is untrusted (i64::MIN once overflowed).
            Response::PongResp(p) => match signal::now_ms().checked_sub(p.last_ping_timestamp) {
                Some(rtt) if (0..=3_600_000).contains(&rtt) => {
                    self.rtt_ms = rtt;
                    self.shared.counters.rtt_ms.store(rtt as u64, Ordering::Relaxed);
                }
                _ => {
                    inc(&self.shared.counters.signal_malformed);
                    tracing::debug!(last_ping_timestamp = p.last_ping_timestamp, "pong for a ping we never sent");
                }
            },
            Response::Join(_) | Response::Reconnect(_) => {
                tracing::debug!("unexpected join/reconnect ignored");
            }
            _ => {}
        }
    }

    // ---- keepalive, resume ---------------------------------------------------------------

    fn on_timer(&mut self, now: Instant) {
        self.publisher.handle_timeout(now);
        self.subscriber.handle_timeout(now);
        self.relays.handle_timeout(now);
        if self.signal.is_some() {
            if let Some(iv) = self.ping_interval {
                if now >= self.next_ping {
                    self.send_signal(signal::req_ping(signal::now_ms(), self.rtt_ms));
                    self.next_ping = now + iv;
                }
            }
            if let Some(t) = self.ping_timeout {
                if now >= self.last_signal_rx + t {
                    tracing::warn!("no signalling message within ping_timeout");
                    if let Some(s) = self.signal.take() {
                        s.abort();
                    }
                    self.signal_lost(DisconnectReason::PingTimeout, now);
                }
            }
        }
        // Publishes the server never answered.
        let expired: Vec<String> = self.pending_publish.iter().filter(|(_, p)| now > p.deadline).map(|(k, _)| k.clone()).collect();
        for cid in expired {
            if let Some(r) = self.pending_publish.remove(&cid).and_then(|p| p.reply) {
                let _ = r.send(Err(RoomError::Timeout("track_published")));
            }
        }
        // set_attributes / set_metadata the server never answered.
        let expired: Vec<u32> = self.pending_metadata.iter().filter(|(_, m)| now > m.deadline).map(|(k, _)| *k).collect();
        for id in expired {
            if let Some(m) = self.pending_metadata.remove(&id) {
                let _ = m.reply.send(Err(RoomError::Timeout("update_metadata response")));
            }
        }
        // Participants that did not come back after our full reconnect.
        let gone: Vec<String> = self.rejoin_grace.iter().filter(|(_, d)| now >= **d).map(|(k, _)| k.clone()).collect();
        for identity in gone {
            if let Some(p) = self.remotes.get(&identity).cloned() {
                self.remove_remote(&p);
            }
        }
        self.check_media(now);
    }

    /// A media connection that stays down is recovered as the SDKs do: first a resume (the
    /// server restarts the subscriber's ICE, we restart the publisher's), then a full
    /// reconnect; when that does not bring media back the room ends.
    fn check_media(&mut self, now: Instant) {
        if self.done || self.reconnect.is_some() {
            return;
        }
        let subscriber_matters = !self.subscribed.is_empty() || self.subscriber.connected;
        let never_up = !self.publisher.connected && self.ready.is_none();
        let down = self.publisher.is_failed()
            || never_up
            || (self.publisher.connected && self.publisher.ice_state == IceConnectionState::Disconnected)
            || (subscriber_matters && (self.subscriber.is_failed() || self.subscriber.ice_state == IceConnectionState::Disconnected));
        if !down {
            self.ice_down_since = None;
            self.ice_recovery = IceRecovery::default();
            return;
        }
        let since = *self.ice_down_since.get_or_insert(now);
        let down_for = now.duration_since(since);
        let failed = self.publisher.is_failed() || self.subscriber.is_failed();
        let reason = if !self.publisher.connected || self.publisher.ice_state == IceConnectionState::Disconnected || self.publisher.is_failed() {
            proto::ReconnectReason::RrPublisherFailed
        } else {
            proto::ReconnectReason::RrSubscriberFailed
        };
        let cause = DisconnectReason::PeerConnectionFailed("ICE/DTLS down".into());
        if !self.ice_recovery.resume_tried && !failed && !never_up && down_for >= ICE_RESUME_AFTER {
            self.ice_recovery.resume_tried = true;
            tracing::warn!(?reason, "media connection down; resuming with an ICE restart");
            if let Some(s) = self.signal.take() {
                s.abort();
            }
            self.start_reconnect(ReconnectKind::Resume, cause, reason, now);
        } else if !self.ice_recovery.full_tried && (failed || down_for >= ICE_FULL_AFTER || (never_up && down_for >= self.opts.connect_timeout)) {
            self.ice_recovery.full_tried = true;
            tracing::warn!(?reason, "media connection still down; reconnecting from scratch");
            if let Some(s) = self.signal.take() {
                s.abort();
            }
            self.start_reconnect(ReconnectKind::Full, cause, reason, now);
        } else if self.ice_recovery.full_tried && down_for >= ICE_FULL_AFTER + self.opts.connect_timeout {
            self.finish(cause);
        }
    }

    fn signal_lost(&mut self, cause: DisconnectReason, now: Instant) {
        self.start_reconnect(ReconnectKind::Resume, cause, proto::ReconnectReason::RrSignalDisconnected, now);
    }

    /// Start (or escalate) a reconnection episode. The signalling link is already gone.
    fn start_reconnect(&mut self, kind: ReconnectKind, cause: DisconnectReason, reason: proto::ReconnectReason, now: Instant) {
        if self.done {
            return;
        }
        let kind = match kind {
            ReconnectKind::Resume if self.opts.resume && self.opts.resume_attempts > 0 => ReconnectKind::Resume,
            _ if self.opts.full_reconnect => ReconnectKind::Full,
            _ => {
                self.finish(cause);
                return;
            }
        };
        match self.reconnect.as_mut() {
            Some(r) if r.kind == ReconnectKind::Resume && kind == ReconnectKind::Full => {
                // Escalate now (e.g. `leave{RECONNECT}` in the middle of a resume).
                if let Some(t) = self.resume_task.take() {
                    t.abort();
                }
                r.kind = ReconnectKind::Full;
                r.attempt = 0;
                self.emit(RoomEvent::Reconnecting { kind: ReconnectKind::Full });
            }
            Some(_) => return,
            None => {
                self.reconnect = Some(Reconnect { kind, attempt: 0, started: now, cause, reason });
                self.emit(RoomEvent::Reconnecting { kind });
            }
        }
        self.spawn_attempt();
    }

    fn spawn_attempt(&mut self) {
        let Some(r) = self.reconnect.as_mut() else { return };
        let delay = backoff(r.attempt);
        r.attempt += 1;
        let token = self.token.clone();
        tracing::info!(kind = r.kind.as_str(), attempt = r.attempt, ?delay, "reconnect attempt");
        if r.kind == ReconnectKind::Full {
            let url = signal::rtc_url(&self.url, &self.params, None);
            self.resume_task = Some(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let (conn, join) = signal::connect(&url?, &token).await?;
                Ok(Relink::Rejoined(conn, Box::new(join)))
            }));
        } else {
            let url = signal::rtc_url(&self.url, &self.params, Some(signal::Resume { sid: &self.local.sid, reason: r.reason }));
            self.resume_task = Some(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let (conn, resp, early) = signal::resume(&url?, &token).await?;
                Ok(Relink::Resumed(conn, resp, early))
            }));
        }
    }

    fn on_resume_result(&mut self, r: ResumeResult, now: Instant) {
        if self.done || self.reconnect.is_none() {
            match r {
                Ok(Relink::Resumed(conn, ..)) | Ok(Relink::Rejoined(conn, _)) => conn.abort(),
                Err(_) => {}
            }
            return;
        }
        match r {
            Ok(Relink::Resumed(conn, resp, early)) => {
                let attempt = self.reconnect.take().map(|r| r.attempt).unwrap_or(0);
                tracing::info!(attempt, "signalling resumed");
                self.signal = Some(conn);
                self.last_signal_rx = now;
                self.next_ping = now;
                inc(&self.shared.counters.resumes);
                let _ = resp.last_message_seq;
                self.send_sync_state();
                // Restart ICE on the publisher if its path is down; otherwise just finish any
                // negotiation that waited for the link. (The server restarts the subscriber's.)
                let ice_down = self.publisher.ice_state == IceConnectionState::Disconnected || self.ice_down_since.is_some();
                if ice_down && !self.publisher.has_pending_offer() {
                    self.negotiation_needed = true;
                    self.maybe_negotiate(true);
                } else {
                    self.maybe_negotiate(false);
                }
                self.emit(RoomEvent::Reconnected { kind: ReconnectKind::Resume });
                for m in early {
                    self.on_signal(m, now);
                }
            }
            Ok(Relink::Rejoined(conn, join)) => {
                let cause = self.reconnect.take().map(|r| r.cause);
                if let Err(e) = self.on_rejoined(conn, *join, now) {
                    tracing::warn!(error = %e, "full reconnect failed");
                    self.finish(cause.unwrap_or(DisconnectReason::SignalLost(e.to_string())));
                }
            }
            Err(e) => {
                let Some(r) = self.reconnect.as_ref() else { return };
                let (kind, attempt, started) = (r.kind, r.attempt, r.started);
                tracing::warn!(error = %e, attempt, kind = kind.as_str(), "reconnect attempt failed");
                let timed_out = now.duration_since(started) >= self.opts.reconnect_timeout;
                match e {
                    RoomError::Left(reason) => self.finish(DisconnectReason::Server(reason)),
                    RoomError::Rejected { status: 401 | 403, .. } if kind == ReconnectKind::Full || attempt > 1 => {
                        let cause = self.reconnect.take().map(|r| r.cause).unwrap_or(DisconnectReason::SignalLost(e.to_string()));
                        self.finish(cause)
                    }
                    _ if timed_out => {
                        let cause = self.reconnect.take().map(|r| r.cause).unwrap_or(DisconnectReason::SignalLost(e.to_string()));
                        self.finish(cause)
                    }
                    RoomError::ReconnectRequired(_) | RoomError::ResumeUnsupported | RoomError::Rejected { .. } if kind == ReconnectKind::Resume => {
                        tracing::info!("resume impossible; joining again from scratch");
                        let cause = self.reconnect.take().map(|r| r.cause).unwrap_or(DisconnectReason::SignalLost(e.to_string()));
                        self.start_reconnect(ReconnectKind::Full, cause, proto::ReconnectReason::RrUnknown, now);
                    }
                    _ if kind == ReconnectKind::Resume && attempt >= self.opts.resume_attempts => {
                        let cause = self.reconnect.take().map(|r| r.cause).unwrap_or(DisconnectReason::SignalLost(e.to_string()));
                        self.start_reconnect(ReconnectKind::Full, cause, proto::ReconnectReason::RrUnknown, now);
                    }
                    _ => self.spawn_attempt(),
                }
            }
        }
    }

    /// Full reconnect: a fresh `join` succeeded. Replace the peers (and their sockets), forget
    /// subscriptions, reconcile participants by identity, republish our tracks, restore our
    /// attributes, metadata and explicit subscriptions.
    fn on_rejoined(&mut self, conn: SignalConn, join: proto::JoinResponse, now: Instant) -> Result<(), RoomError> {
        let local_info = join.participant.clone().ok_or_else(|| RoomError::Protocol("join without participant".into()))?;
        let ip = self.publisher.local_ip();
        let bind = |ip: IpAddr| -> Result<UdpSocket, RoomError> {
            let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
            s.set_nonblocking(true)?;
            Ok(UdpSocket::from_std(s)?)
        };
        let (pub_sock, sub_sock) = (bind(ip)?, bind(ip)?);
        // TURN credentials name the participant: the new session comes with its own.
        let relay_only = relay_only(&self.opts, &join);
        let turn_servers = turn::turn_servers(&join.ice_servers);
        if relay_only && turn_servers.is_empty() {
            conn.abort();
            return Err(RoomError::Relay("relayed candidates only, and the server offered no TURN server".into()));
        }
        let publisher = Peer::new(Role::Publisher, pub_sock.local_addr()?, relay_only, now)?;
        let subscriber = Peer::new(Role::Subscriber, sub_sock.local_addr()?, relay_only, now)?;
        tracing::info!(old_sid = %self.local.sid, new_sid = %local_info.sid, "rejoined the room");

        self.publisher.close();
        self.subscriber.close();
        self.tcp.clear();
        self.close_relays(now);
        self.relay_only = relay_only;
        self.relay_tls = relay_tls(&self.opts, &turn_servers);
        self.start_relays(turn_servers);
        self.publisher = publisher;
        self.subscriber = subscriber;
        self.new_sockets = Some((pub_sock, sub_sock));
        self.signal = Some(conn);
        self.last_signal_rx = now;
        self.ping_interval = (join.ping_interval > 0).then(|| Duration::from_secs(join.ping_interval as u64));
        self.ping_timeout = (join.ping_timeout > 0).then(|| Duration::from_secs(join.ping_timeout as u64));
        self.next_ping = now;
        self.ice_down_since = None;
        inc(&self.shared.counters.rejoins);

        // Our participant. What we had set ourselves goes back (the join carries the token's
        // attributes; livekit-server's refreshed tokens carry the current ones, older tokens not).
        let before = std::mem::replace(&mut self.local, local_info);
        {
            let mut snap = self.shared.snap();
            snap.local = Some(Participant::from(&self.local));
            snap.publish_codecs = publish_codecs(&join);
            if let Some(room) = &join.room {
                snap.room_sid = room.sid.clone();
                snap.room_metadata = room.metadata.clone();
            }
        }
        let mut attrs = attribute_changes(&self.local.attributes, &before.attributes);
        attrs.retain(|k, v| !(v.is_empty() && !self.local.attributes.contains_key(k)));
        let metadata = (before.metadata != self.local.metadata && !before.metadata.is_empty()).then(|| before.metadata.clone());
        let name = (before.name != self.local.name && !before.name.is_empty()).then(|| before.name.clone());
        if !attrs.is_empty() || metadata.is_some() || name.is_some() {
            tracing::info!(attributes = attrs.len(), "restoring our attributes after the full reconnect");
            let id = self.metadata_request_id;
            self.metadata_request_id = self.metadata_request_id.wrapping_add(1);
            self.send_signal(signal::req_update_metadata(metadata, name, attrs, id));
        }

        // Remote media: every subscription ends; the new subscriber offer brings them back.
        let sids: Vec<String> = self.subscribed.keys().cloned().collect();
        for sid in sids {
            self.unsubscribe(&sid);
        }
        self.sub_mids.clear();

        // Participants by identity: who left while we were away, who is new, who rejoined under
        // a new sid (a restarted server gives everyone new sids).
        let fresh: HashMap<String, proto::ParticipantInfo> = join
            .other_participants
            .into_iter()
            .filter(|p| p.identity != self.local.identity)
            .map(|p| (p.identity.clone(), p))
            .collect();
        // Missing ones keep their place, trackless, for REJOIN_GRACE (see `rejoin_grace`).
        let gone: Vec<proto::ParticipantInfo> = self.remotes.values().filter(|p| !fresh.contains_key(&p.identity)).cloned().collect();
        for mut p in gone {
            let was = Participant::from(&p);
            for t in std::mem::take(&mut p.tracks) {
                self.unsubscribe_with(&t.sid, &was);
                self.emit(RoomEvent::TrackUnpublished { participant: was.clone(), track: TrackInfo::from(&t) });
            }
            self.shared.snap().remotes.insert(p.identity.clone(), Participant::from(&p));
            self.rejoin_grace.insert(p.identity.clone(), now + REJOIN_GRACE);
            self.remotes.insert(p.identity.clone(), p);
        }
        let updates: Vec<proto::ParticipantInfo> = fresh
            .into_values()
            .map(|mut p| {
                // Versions restart with the new session's view.
                p.version = 0;
                p
            })
            .collect();
        self.on_participant_update(updates);

        // Explicit subscriptions: same track sid if it survived, else the same publisher
        // identity and track name.
        let explicit: Vec<(String, ExplicitSubscription)> = self.explicit_subscriptions.drain().collect();
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for (sid, e) in explicit {
            let now_sid = self
                .remotes
                .get(&e.identity)
                .and_then(|p| p.tracks.iter().find(|t| t.sid == sid || (!e.name.is_empty() && t.name == e.name)))
                .map(|t| t.sid.clone());
            if let Some(now_sid) = now_sid {
                if e.subscribe != self.opts.auto_subscribe {
                    if e.subscribe { &mut on } else { &mut off }.push(now_sid.clone());
                }
                self.explicit_subscriptions.insert(now_sid, e);
            }
        }
        for (list, subscribe) in [(on, true), (off, false)] {
            if !list.is_empty() {
                self.send_signal(Request::Subscription(proto::UpdateSubscription { track_sids: list, subscribe, participant_tracks: vec![] }));
            }
        }

        // Our tracks: publish again under the same cids (sinks keep pushing to them).
        self.pending_media.clear();
        self.pending_stop.clear();
        let tracks: Vec<(Arc<str>, AudioTrackOptions)> = self.local_tracks.drain().map(|(cid, t)| (cid, t.opts)).collect();
        for (cid, opts) in tracks {
            self.send_signal(signal::req_add_audio_track(&cid, &opts.name, opts.source, opts.dtx, opts.codec));
            self.pending_publish.insert(cid.to_string(), PendingPublish { opts, reply: None, deadline: now + PUBLISH_TIMEOUT });
        }
        self.start_negotiation();
        self.emit(RoomEvent::Reconnected { kind: ReconnectKind::Full });
        Ok(())
    }

    /// `sync_state` after a resume, as livekit-server's `HandleSyncState` reads it: the
    /// subscriber's offer (the server's) and our answer, the explicit subscriptions that differ
    /// from auto-subscribe, our published tracks, and every data channel with its SCTP stream id.
    fn send_sync_state(&mut self) {
        let sd = |(t, sdp): (String, String)| proto::SessionDescription { r#type: t, sdp, ..Default::default() };
        let answer = self.subscriber.last_local_sdp.clone().map(sd);
        let offer = self.subscriber.last_remote_sdp.clone().map(sd);
        let track_sids: Vec<String> = self
            .explicit_subscriptions
            .iter()
            .filter(|(_, e)| e.subscribe != self.opts.auto_subscribe)
            .map(|(sid, _)| sid.clone())
            .collect();
        let publish_tracks = self
            .local_tracks
            .values()
            .map(|t| proto::TrackPublishedResponse { cid: t.cid.to_string(), track: Some(t.info.clone()) })
            .collect();
        let mut data_channels = self.publisher.data_channel_infos();
        data_channels.extend(self.subscriber.data_channel_infos());
        let sync = proto::SyncState {
            answer,
            offer,
            subscription: Some(proto::UpdateSubscription { track_sids, subscribe: !self.opts.auto_subscribe, participant_tracks: vec![] }),
            publish_tracks,
            data_channels,
            ..Default::default()
        };
        self.send_signal(Request::SyncState(sync));
    }

    // ---- peer events ---------------------------------------------------------------------

    fn on_peer_event(&mut self, role: Role, e: PeerEvent) {
        match e {
            PeerEvent::Connected => {
                tracing::debug!(?role, "peer connection up");
                if role == Role::Publisher {
                    if let Some(r) = self.ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
            }
            PeerEvent::Ice(s) => tracing::debug!(?role, state = ?s, "ice state"),
            PeerEvent::MediaAdded { mid, kind } => tracing::debug!(?role, %mid, ?kind, "media added"),
            PeerEvent::MediaChanged { mid, direction } => tracing::debug!(?role, %mid, ?direction, "media changed"),
            PeerEvent::Audio { mid, codec, rtp_time, payload } => {
                if role == Role::Subscriber {
                    self.on_remote_audio(mid, codec, rtp_time, payload);
                }
            }
            PeerEvent::ChannelOpen { kind, label } => tracing::debug!(?role, ?kind, %label, "data channel open"),
            PeerEvent::Data { kind, bytes } => self.on_data(kind, &bytes),
            PeerEvent::Failed(why) => {
                tracing::warn!(?role, %why, "peer connection failed");
                // str0m cannot recover a failed instance: new peer connections it is.
                if let Some(s) = self.signal.take() {
                    s.abort();
                }
                let reason = if role == Role::Publisher { proto::ReconnectReason::RrPublisherFailed } else { proto::ReconnectReason::RrSubscriberFailed };
                self.start_reconnect(ReconnectKind::Full, DisconnectReason::PeerConnectionFailed(why), reason, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Ctl, FakeConfig, FakeServer, Req, Resp, Seen};
    use crate::ReconnectKind;

    async fn next_event(rx: &mut mpsc::Receiver<RoomEvent>, what: &str, mut f: impl FnMut(&RoomEvent) -> bool) -> RoomEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) if f(&e) => return e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("events ended while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    fn is_req(s: &Seen, f: impl Fn(&Req) -> bool) -> bool {
        matches!(s, Seen::Request(r) if f(r))
    }

    fn remote(sid: &str, identity: &str, version: u32) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: sid.into(),
            identity: identity.into(),
            state: proto::participant_info::State::Active as i32,
            version,
            ..Default::default()
        }
    }

    async fn join(cfg: FakeConfig) -> (FakeServer, Room, mpsc::Receiver<RoomEvent>) {
        let srv = FakeServer::start(cfg).await;
        let (room, ev) = Room::connect(&srv.url.replace("ws://", "http://"), "tok123", RoomOptions::default()).await.expect("connect");
        (srv, room, ev)
    }

    #[tokio::test]
    async fn join_offer_and_clean_leave() {
        let (mut srv, room, mut ev) = join(FakeConfig::default()).await;
        match srv.wait_for("connect", |s| matches!(s, Seen::Connect { .. })).await {
            Seen::Connect { query, auth } => {
                assert_eq!(auth.as_deref(), Some("Bearer tok123"));
                assert_eq!(query["protocol"], "17");
                assert_eq!(query["auto_subscribe"], "1");
                assert!(!query.contains_key("reconnect"));
            }
            _ => unreachable!(),
        }
        srv.wait_for("publisher offer", |s| is_req(s, |r| matches!(r, Req::Offer(o) if o.sdp.contains("webrtc-datachannel")))).await;
        let me = room.local_participant();
        assert_eq!((me.identity.as_str(), me.sid.as_str(), me.name.as_str()), ("tester", "PA_test", "Tester"));
        assert_eq!(me.kind, crate::ParticipantKind::Sip);
        assert_eq!(me.attributes["a"], "1");
        assert_eq!(room.name(), "fake");

        room.close().await;
        srv.wait_for("leave", |s| {
            is_req(s, |r| matches!(r, Req::Leave(l) if l.reason == proto::DisconnectReason::ClientInitiated as i32))
        })
        .await;
        next_event(&mut ev, "Disconnected", |e| matches!(e, RoomEvent::Disconnected(DisconnectReason::ClientInitiated))).await;
        assert!(room.send_data(DataPacketBuilder::new(b"x".to_vec())).await.is_err());
        room.close().await; // idempotent
    }

    #[tokio::test]
    async fn keepalive_pings_every_interval() {
        let (mut srv, room, _ev) = join(FakeConfig { ping_interval: 1, ping_timeout: 3, ..Default::default() }).await;
        let t0 = Instant::now();
        for _ in 0..3 {
            srv.wait_for("ping_req", |s| is_req(s, |r| matches!(r, Req::PingReq(p) if p.timestamp > 0))).await;
        }
        assert!(t0.elapsed() >= Duration::from_millis(1500), "pings too fast: {:?}", t0.elapsed());
        // Pongs keep the link alive past ping_timeout.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(!room.is_closed());
        assert_eq!(room.stats().resumes, 0);
        room.close().await;
    }

    #[tokio::test]
    async fn ping_timeout_resumes_and_room_keeps_working() {
        let (mut srv, room, mut ev) = join(FakeConfig { answer_pings: false, ping_interval: 1, ping_timeout: 2, ..Default::default() }).await;
        next_event(&mut ev, "Reconnecting", |e| matches!(e, RoomEvent::Reconnecting { .. })).await;
        srv.cfg.lock().unwrap().answer_pings = true;
        match srv.wait_for("resume dial", |s| matches!(s, Seen::Connect { query, .. } if query.contains_key("reconnect"))).await {
            Seen::Connect { query, auth } => {
                assert_eq!(query["reconnect"], "1");
                assert_eq!(query["sid"], "PA_test");
                assert_eq!(auth.as_deref(), Some("Bearer tok123"));
            }
            _ => unreachable!(),
        }
        match srv.wait_for("sync_state", |s| is_req(s, |r| matches!(r, Req::SyncState(_)))).await {
            Seen::Request(Req::SyncState(s)) => {
                // The subscriber's offer and answer (none negotiated with this fake): never the
                // publisher's offer in place of the subscriber's answer.
                assert!(s.offer.is_none() && s.answer.is_none(), "{s:?}");
                assert_eq!(s.data_channels.len(), 2);
                let mut labels: Vec<&str> = s.data_channels.iter().map(|d| d.label.as_str()).collect();
                labels.sort();
                assert_eq!(labels, ["_lossy", "_reliable"]);
                assert!(s.data_channels.iter().all(|d| d.target == proto::SignalTarget::Publisher as i32));
                assert_ne!(s.data_channels[0].id, s.data_channels[1].id, "real SCTP stream ids");
                assert_eq!(s.subscription.as_ref().map(|x| (x.subscribe, x.track_sids.len())), Some((false, 0)));
            }
            _ => unreachable!(),
        }
        next_event(&mut ev, "Reconnected", |e| matches!(e, RoomEvent::Reconnected { .. })).await;
        assert_eq!(room.stats().resumes, 1);
        // Signalling works on the new link: publish (add_track → track_published → offer/answer).
        let sink = tokio::time::timeout(Duration::from_secs(10), room.publish_audio(AudioTrackOptions { sample_rate: 8000, ..Default::default() }))
            .await
            .expect("publish in time")
            .expect("publish");
        assert!(sink.track_sid().starts_with("TR_audio-"));
        next_event(&mut ev, "LocalTrackPublished", |e| matches!(e, RoomEvent::LocalTrackPublished(_))).await;
        room.close().await;
    }

    #[tokio::test]
    async fn dropped_websocket_resumes() {
        let (mut srv, room, mut ev) = join(FakeConfig::default()).await;
        srv.wait_for("offer", |s| is_req(s, |r| matches!(r, Req::Offer(_)))).await;
        srv.ctl(Ctl::Drop);
        next_event(&mut ev, "Reconnecting", |e| matches!(e, RoomEvent::Reconnecting { .. })).await;
        next_event(&mut ev, "Reconnected", |e| matches!(e, RoomEvent::Reconnected { .. })).await;
        // And the test hook does the same.
        room.simulate_signal_drop().await;
        next_event(&mut ev, "Reconnecting", |e| matches!(e, RoomEvent::Reconnecting { .. })).await;
        next_event(&mut ev, "Reconnected", |e| matches!(e, RoomEvent::Reconnected { .. })).await;
        assert_eq!(room.stats().resumes, 2);
        room.close().await;
    }

    #[tokio::test]
    async fn refused_resume_falls_back_to_a_fresh_join() {
        let (srv, room, mut ev) = join(FakeConfig { reject_resume_status: Some(401), ..Default::default() }).await;
        srv.ctl(Ctl::Drop);
        next_event(&mut ev, "Reconnected(full)", |e| matches!(e, RoomEvent::Reconnected { kind: ReconnectKind::Full })).await;
        assert_eq!(room.stats().rejoins, 1);
        room.close().await;
    }

    #[tokio::test]
    async fn resume_answered_with_leave_reconnect_joins_again() {
        // livekit-server answers a resume of a session it does not have with
        // leave{STATE_MISMATCH, RECONNECT}: that is a full reconnect, not the end.
        let (mut srv, room, mut ev) = join(FakeConfig { allow_resume: false, ..Default::default() }).await;
        srv.ctl(Ctl::Drop);
        next_event(&mut ev, "Reconnecting(resume)", |e| matches!(e, RoomEvent::Reconnecting { kind: ReconnectKind::Resume })).await;
        next_event(&mut ev, "Reconnecting(full)", |e| matches!(e, RoomEvent::Reconnecting { kind: ReconnectKind::Full })).await;
        srv.wait_for("fresh join dial", |s| matches!(s, Seen::Connect { query, .. } if !query.contains_key("reconnect"))).await;
        next_event(&mut ev, "Reconnected(full)", |e| matches!(e, RoomEvent::Reconnected { kind: ReconnectKind::Full })).await;
        assert_eq!((room.stats().rejoins, room.stats().resumes), (1, 0));
        room.close().await;
    }

    #[tokio::test]
    async fn leave_reconnect_on_a_live_link_joins_again_and_leave_disconnect_ends() {
        let (mut srv, room, mut ev) = join(FakeConfig::default()).await;
        srv.send(Resp::Leave(proto::LeaveRequest {
            reason: proto::DisconnectReason::StateMismatch as i32,
            action: proto::leave_request::Action::Reconnect as i32,
            ..Default::default()
        }));
        next_event(&mut ev, "Reconnecting(full)", |e| matches!(e, RoomEvent::Reconnecting { kind: ReconnectKind::Full })).await;
        srv.wait_for("fresh join dial", |s| matches!(s, Seen::Connect { query, .. } if !query.contains_key("reconnect"))).await;
        next_event(&mut ev, "Reconnected(full)", |e| matches!(e, RoomEvent::Reconnected { kind: ReconnectKind::Full })).await;
        assert!(!room.is_closed());
        srv.send(Resp::Leave(proto::LeaveRequest {
            reason: proto::DisconnectReason::RoomDeleted as i32,
            action: proto::leave_request::Action::Disconnect as i32,
            ..Default::default()
        }));
        let e = next_event(&mut ev, "Disconnected", |e| matches!(e, RoomEvent::Disconnected(_))).await;
        assert!(matches!(e, RoomEvent::Disconnected(DisconnectReason::Server(proto::DisconnectReason::RoomDeleted))), "{e:?}");
    }

    #[tokio::test]
    async fn refused_requests_fail_their_call_at_once() {
        let (srv, room, _ev) = join(FakeConfig { refuse: true, ..Default::default() }).await;
        let t0 = Instant::now();
        let e = room.publish_audio(AudioTrackOptions { sample_rate: 8000, ..Default::default() }).await.unwrap_err();
        assert!(matches!(e, RoomError::Refused { reason: proto::request_response::Reason::NotAllowed, .. }), "{e:?}");
        let e = room.set_attributes([("a".to_string(), "2".to_string())].into_iter().collect()).await.unwrap_err();
        assert!(matches!(e, RoomError::Refused { reason: proto::request_response::Reason::NotAllowed, ref message } if message.contains("permission")), "{e:?}");
        assert!(t0.elapsed() < PUBLISH_TIMEOUT, "refusals must not wait for a timeout");
        assert_eq!(room.stats().requests_refused, 2);
        drop(srv);
    }

    #[tokio::test]
    async fn rejoined_identity_replaces_the_old_sid_without_a_ghost() {
        let mut p2 = remote("PA_2", "agent", 1);
        p2.joined_at_ms = 1000;
        p2.tracks.push(proto::TrackInfo { sid: "TR_a".into(), r#type: proto::TrackType::Audio as i32, ..Default::default() });
        let (srv, room, mut ev) = join(FakeConfig { others: vec![p2.clone()], ..Default::default() }).await;
        // The agent rejoins under a new sid; protocol > 11 servers send no DISCONNECTED for PA_2.
        let mut p3 = remote("PA_3", "agent", 1);
        p3.joined_at_ms = 2000;
        p3.tracks.push(proto::TrackInfo { sid: "TR_b".into(), r#type: proto::TrackType::Audio as i32, ..Default::default() });
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: vec![p3.clone()] }));
        next_event(&mut ev, "TrackUnpublished(TR_a)", |e| matches!(e, RoomEvent::TrackUnpublished { track, .. } if track.sid == "TR_a")).await;
        // Not a hang-up: the same party rejoined.
        match next_event(&mut ev, "ParticipantRejoined", |e| matches!(e, RoomEvent::ParticipantRejoined { .. } | RoomEvent::ParticipantDisconnected(_))).await {
            RoomEvent::ParticipantRejoined { participant, old_sid } => assert_eq!((participant.sid.as_str(), old_sid.as_str()), ("PA_3", "PA_2")),
            other => panic!("{other:?}"),
        }
        // A late disconnect of the old sid does not remove the new session.
        let mut gone = p2.clone();
        gone.version = 2;
        gone.state = proto::participant_info::State::Disconnected as i32;
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: vec![gone] }));
        srv.send(Resp::RoomUpdate(proto::RoomUpdate { room: Some(proto::Room { name: "fake".into(), metadata: "sync".into(), ..Default::default() }) }));
        next_event(&mut ev, "RoomMetadataChanged", |e| matches!(e, RoomEvent::RoomMetadataChanged(_))).await;
        let remotes = room.remote_participants();
        assert_eq!(remotes.len(), 1, "{remotes:?}");
        assert_eq!(remotes[0].sid, "PA_3");
        assert_eq!(remotes[0].tracks[0].sid, "TR_b");
        room.close().await;
    }

    #[tokio::test]
    async fn resume_answered_with_join_gives_up_at_once_without_full_reconnect() {
        let srv = FakeServer::start(FakeConfig { resume_with_join: true, ..Default::default() }).await;
        let opts = RoomOptions { full_reconnect: false, ..Default::default() };
        let (_room, mut ev) = Room::connect(&srv.url, "t", opts).await.unwrap();
        let mut srv = srv;
        srv.ctl(Ctl::Drop);
        let e = next_event(&mut ev, "Disconnected", |e| matches!(e, RoomEvent::Disconnected(_))).await;
        assert!(matches!(e, RoomEvent::Disconnected(DisconnectReason::SignalLost(_))), "{e:?}");
        // Exactly one resume dial: no retry storm of fresh joins.
        let mut dials = 0;
        while let Ok(s) = srv.seen.try_recv() {
            if matches!(s, Seen::Connect { ref query, .. } if query.contains_key("reconnect")) {
                dials += 1;
            }
        }
        assert_eq!(dials, 1);
    }

    #[tokio::test]
    async fn full_reconnect_when_resume_is_impossible() {
        let (mut srv, room, mut ev) = join(FakeConfig { resume_with_join: true, ..Default::default() }).await;
        let mut sink = room.publish_audio(AudioTrackOptions { sample_rate: 8000, ..Default::default() }).await.expect("publish");
        let cid = match srv.wait_for("add_track", |s| is_req(s, |r| matches!(r, Req::AddTrack(_)))).await {
            Seen::Request(Req::AddTrack(a)) => a.cid,
            _ => unreachable!(),
        };
        srv.ctl(Ctl::Drop);
        next_event(&mut ev, "Reconnecting", |e| matches!(e, RoomEvent::Reconnecting { .. })).await;
        // resume dial (answered with join) then a fresh join
        srv.wait_for("fresh join dial", |s| matches!(s, Seen::Connect { query, .. } if !query.contains_key("reconnect"))).await;
        next_event(&mut ev, "Reconnected", |e| matches!(e, RoomEvent::Reconnected { .. })).await;
        // The track is republished under the same cid and renegotiated on the new peer.
        srv.wait_for("republish", |s| is_req(s, |r| matches!(r, Req::AddTrack(a) if a.cid == cid))).await;
        srv.wait_for("new offer", |s| is_req(s, |r| matches!(r, Req::Offer(o) if o.sdp.contains(&cid)))).await;
        next_event(&mut ev, "LocalTrackPublished", |e| matches!(e, RoomEvent::LocalTrackPublished(_))).await;
        let st = room.stats();
        assert_eq!((st.rejoins, st.resumes), (1, 0));
        // The old sink keeps feeding the republished track once the new peer is up.
        let deadline = Instant::now() + Duration::from_secs(10);
        let before = room.stats().audio_frames_out;
        let mut f = 0;
        while room.stats().audio_frames_out < before + 10 {
            assert!(Instant::now() < deadline, "no audio after full reconnect: {:?}", room.stats());
            sink.push(&vec![1000i16; 160]).await.unwrap();
            f += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(f > 0);
        room.close().await;
    }

    #[tokio::test]
    async fn server_leave_disconnects() {
        let (srv, room, mut ev) = join(FakeConfig::default()).await;
        srv.send(Resp::Leave(proto::LeaveRequest {
            reason: proto::DisconnectReason::ParticipantRemoved as i32,
            action: proto::leave_request::Action::Disconnect as i32,
            ..Default::default()
        }));
        let e = next_event(&mut ev, "Disconnected", |e| matches!(e, RoomEvent::Disconnected(_))).await;
        assert!(matches!(e, RoomEvent::Disconnected(DisconnectReason::Server(proto::DisconnectReason::ParticipantRemoved))));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(room.is_closed());
    }

    #[tokio::test]
    async fn malformed_frames_are_counted_and_skipped() {
        let (srv, room, mut ev) = join(FakeConfig::default()).await;
        use tokio_tungstenite::tungstenite::Message as M;
        srv.ctl(Ctl::Raw(M::Binary(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f].into())));
        srv.ctl(Ctl::Raw(M::Text("{\"join\":{}}".into())));
        srv.ctl(Ctl::Raw(M::Binary(vec![].into())));
        // A bad SDP and a bad candidate are logged and counted, not fatal.
        srv.send(Resp::Offer(proto::SessionDescription { r#type: "offer".into(), sdp: "v=0\r\ngarbage".into(), ..Default::default() }));
        srv.send(Resp::Trickle(proto::TrickleRequest { candidate_init: "{not json".into(), target: 1, r#final: false }));
        srv.send(Resp::Answer(proto::SessionDescription { r#type: "answer".into(), sdp: "nonsense".into(), ..Default::default() }));
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: vec![remote("PA_2", "agent", 1)] }));
        next_event(&mut ev, "ParticipantConnected", |e| matches!(e, RoomEvent::ParticipantConnected(p) if p.identity == "agent")).await;
        assert_eq!(room.stats().signal_malformed, 6, "{:?}", room.stats());
        assert!(!room.is_closed());
        room.close().await;
    }

    #[tokio::test]
    async fn participant_and_attribute_events() {
        let mut p2 = remote("PA_2", "agent", 1);
        p2.tracks.push(proto::TrackInfo { sid: "TR_a".into(), r#type: proto::TrackType::Audio as i32, ..Default::default() });
        let (srv, room, mut ev) = join(FakeConfig { others: vec![p2.clone()], ..Default::default() }).await;
        // Known from join: no Connected event, but listed.
        assert_eq!(room.remote_participants().len(), 1);

        let mut p3 = remote("PA_3", "supervisor", 1);
        p3.attributes.insert("x".into(), "1".into());
        p3.tracks.push(proto::TrackInfo { sid: "TR_b".into(), r#type: proto::TrackType::Audio as i32, ..Default::default() });
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: vec![p3.clone()] }));
        next_event(&mut ev, "ParticipantConnected", |e| matches!(e, RoomEvent::ParticipantConnected(p) if p.identity == "supervisor")).await;
        next_event(&mut ev, "TrackPublished", |e| matches!(e, RoomEvent::TrackPublished { track, .. } if track.sid == "TR_b")).await;

        let mut p3b = p3.clone();
        p3b.version = 2;
        p3b.attributes.insert("x".into(), "2".into());
        p3b.attributes.insert("y".into(), "3".into());
        p3b.metadata = "m".into();
        let stale = p3.clone(); // version 1 again: ignored
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: vec![p3b.clone(), stale] }));
        match next_event(&mut ev, "AttributesChanged", |e| matches!(e, RoomEvent::AttributesChanged { .. })).await {
            RoomEvent::AttributesChanged { participant, changed } => {
                assert_eq!(participant.identity, "supervisor");
                assert_eq!(changed.len(), 2);
                assert_eq!(changed["x"], "2");
            }
            _ => unreachable!(),
        }
        let snapshot = room.remote_participants().into_iter().find(|p| p.identity == "supervisor").unwrap();
        assert_eq!(snapshot.attributes["x"], "2", "stale update must not win");
        assert_eq!(snapshot.metadata, "m");

        // Our own attributes changed by the server (e.g. RoomService UpdateParticipant).
        let mut me = proto::ParticipantInfo { sid: "PA_test".into(), identity: "tester".into(), version: 5, ..Default::default() };
        me.attributes.insert("a".into(), "2".into());
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: vec![me] }));
        match next_event(&mut ev, "local AttributesChanged", |e| matches!(e, RoomEvent::AttributesChanged { participant, .. } if participant.identity == "tester")).await {
            RoomEvent::AttributesChanged { changed, .. } => assert_eq!(changed["a"], "2"),
            _ => unreachable!(),
        }
        assert_eq!(room.local_participant().attributes["a"], "2");

        // Track removed, then participant leaves.
        let mut p3c = p3b.clone();
        p3c.version = 3;
        p3c.tracks.clear();
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: vec![p3c.clone()] }));
        next_event(&mut ev, "TrackUnpublished", |e| matches!(e, RoomEvent::TrackUnpublished { track, .. } if track.sid == "TR_b")).await;
        p3c.version = 4;
        p3c.state = proto::participant_info::State::Disconnected as i32;
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: vec![p3c] }));
        next_event(&mut ev, "ParticipantDisconnected", |e| matches!(e, RoomEvent::ParticipantDisconnected(p) if p.identity == "supervisor")).await;
        assert_eq!(room.remote_participants().len(), 1);

        srv.send(Resp::RoomUpdate(proto::RoomUpdate { room: Some(proto::Room { name: "fake".into(), metadata: "rm".into(), ..Default::default() }) }));
        next_event(&mut ev, "RoomMetadataChanged", |e| matches!(e, RoomEvent::RoomMetadataChanged(m) if m == "rm")).await;
        assert_eq!(room.metadata(), "rm");
        room.close().await;
    }

    #[tokio::test]
    async fn slow_event_consumer_loses_events_not_memory() {
        let srv = FakeServer::start(FakeConfig::default()).await;
        let opts = RoomOptions { event_capacity: 16, ..Default::default() };
        let (room, mut ev) = Room::connect(&srv.url, "t", opts).await.unwrap();
        let many: Vec<_> = (0..100).map(|i| remote(&format!("PA_{i}"), &format!("p{i}"), 1)).collect();
        srv.send(Resp::Update(proto::ParticipantUpdate { participants: many }));
        let deadline = Instant::now() + Duration::from_secs(5);
        while room.remote_participants().len() < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(room.remote_participants().len(), 100);
        assert!(room.stats().events_dropped >= 84, "{:?}", room.stats());
        let mut n = 0;
        while let Ok(e) = ev.try_recv() {
            assert!(matches!(e, RoomEvent::ParticipantConnected(_)));
            n += 1;
        }
        assert_eq!(n, 16);
        room.close().await;
    }

    #[tokio::test]
    async fn connect_errors() {
        assert!(matches!(Room::connect("ftp://x", "t", RoomOptions::default()).await, Err(RoomError::InvalidUrl(_))));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = Room::connect(&format!("ws://127.0.0.1:{port}"), "t", RoomOptions::default()).await;
        assert!(matches!(r, Err(RoomError::Connect(_))), "{r:?}");
    }
}
