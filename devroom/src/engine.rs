//! The engine: one task that owns the UDP socket, every room, every participant and every
//! peer connection. Signal sessions and the Twirp API talk to it through one bounded command
//! queue; it talks back through each participant's bounded signal queue.
//!
//! Keeping all state in one task makes the room rules simple (no locks, one order of events).
//! Media/data forwarding and subscriber negotiation live in `sfu.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use str0m::media::{MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::Input;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::dispatch::{Dispatcher, WorkerCmd};
use crate::peer::{Peer, Role};
use crate::room::{self, Identity, Permission, PublishedTrack, Room};
use crate::twirp::ApiError;
use crate::webhook::Webhooks;

#[doc(hidden)]
pub mod fuzzing;

const COMMAND_QUEUE: usize = 1024;
/// Tracks announced but not yet published, per participant (livekit-server `cMaxPendingTracks`).
const MAX_PENDING_TRACKS: usize = 20;
const PING_INTERVAL: i32 = 5;
const PING_TIMEOUT: i32 = 15;
/// Reliable data packets held for a participant whose subscriber channel is not open yet.
pub(crate) const PENDING_RELIABLE_MAX: usize = 128;
pub const SERVER_VERSION: &str = "1.9.0";
pub const PROTOCOL_VERSION: i32 = 16;

/// What a signal session asks for when a client connects to `/rtc`.
pub struct JoinRequest {
    pub room: String,
    pub identity: String,
    pub name: String,
    pub kind: lk::participant_info::Kind,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    pub permission: Permission,
    pub auto_subscribe: bool,
    /// Agents to dispatch if this join creates the room (the token's `roomConfig.agents`;
    /// empty: automatic dispatch).
    pub room_agents: Vec<lk::RoomAgentDispatch>,
    /// The client's `protocol` query parameter.
    pub protocol: i32,
    /// The join token's grant and expiry (unix seconds), for `refresh_token`.
    pub video: crate::auth::VideoGrant,
    pub token_exp: f64,
    pub tx: mpsc::Sender<Outbound>,
}

/// What the engine queues for a signal session.
#[derive(Debug)]
pub enum Outbound {
    Signal(Box<lk::SignalResponse>),
    /// Close the WebSocket with this code and reason (after the queued messages).
    Close { code: u16, reason: String },
}

/// A client redialling `/rtc?reconnect=1&sid=…` after its signal connection dropped.
pub struct ResumeRequest {
    pub room: String,
    pub identity: String,
    pub sid: String,
    pub tx: mpsc::Sender<Outbound>,
}

#[derive(Debug)]
pub struct Joined {
    pub key: u64,
    /// Identifies the signal connection; commands from a replaced connection are ignored.
    pub session: u64,
}

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// RoomService operations (see `twirp.rs`). Transient: one per API call.
#[allow(clippy::large_enum_variant)]
pub enum Admin {
    CreateRoom(lk::CreateRoomRequest, Reply<lk::Room>),
    DeleteRoom(String, Reply<()>),
    ListRooms(Vec<String>, Reply<Vec<lk::Room>>),
    ListParticipants(String, Reply<Vec<lk::ParticipantInfo>>),
    GetParticipant(String, String, Reply<lk::ParticipantInfo>),
    RemoveParticipant(String, String, Reply<()>),
    UpdateParticipant(lk::UpdateParticipantRequest, Reply<lk::ParticipantInfo>),
    MutePublishedTrack(lk::MuteRoomTrackRequest, Reply<lk::TrackInfo>),
    UpdateRoomMetadata(String, String, Reply<lk::Room>),
    UpdateSubscriptions(lk::UpdateSubscriptionsRequest, Reply<()>),
    SendData(lk::SendDataRequest, Reply<()>),
    // AgentDispatchService (see `dispatch.rs`)
    CreateDispatch(lk::CreateAgentDispatchRequest, Reply<lk::AgentDispatch>),
    ListDispatch(lk::ListAgentDispatchRequest, Reply<Vec<lk::AgentDispatch>>),
    DeleteDispatch(lk::DeleteAgentDispatchRequest, Reply<lk::AgentDispatch>),
}

#[allow(clippy::large_enum_variant)]
pub enum Command {
    Join(JoinRequest, Reply<Joined>),
    Resume(ResumeRequest, Reply<Joined>),
    Signal { key: u64, session: u64, msg: Req },
    /// The signal connection ended. `SignalClose` (dropped without `leave`) keeps the participant
    /// for `--resume-window`; any other reason removes it.
    Disconnect { key: u64, session: u64, reason: lk::DisconnectReason },
    Admin(Admin),
    /// An agent worker's `/agent` connection (see `dispatch.rs`).
    Worker(WorkerCmd),
    /// An ICE-TCP connection (see `ice_tcp.rs`).
    Tcp(crate::ice_tcp::TcpEvent),
    /// Close every room (participants get `leave` SERVER_SHUTDOWN), then reply.
    Shutdown(oneshot::Sender<()>),
}

/// Cloneable handle used by the HTTP side.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    pub rtc_addr: SocketAddr,
}

impl EngineHandle {
    pub async fn send(&self, cmd: Command) -> Result<(), ApiError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| ApiError::internal("engine stopped"))
    }

    /// Sends a command built around a reply channel and waits for the answer.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await
            .map_err(|_| ApiError::internal("engine dropped the request"))?
    }
}

/// A subscription: one published track sent to one subscriber on a send-only m-line.
#[derive(Debug, Clone)]
pub(crate) struct DownTrack {
    pub track_sid: String,
    pub publisher: u64,
    pub publisher_sid: String,
    pub source_mid: Mid,
    pub kind: MediaKind,
    pub state: DownState,
    /// Unsubscribed/unpublished: stop its m-line at the next negotiation.
    pub removed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DownState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    NegotiatingStop(Mid),
}

pub(crate) struct Participant {
    pub key: u64,
    pub room: String,
    pub info: Identity,
    pub tracks: Vec<PublishedTrack>,
    pub tx: mpsc::Sender<Outbound>,
    pub session: u64,
    /// When the signal connection dropped without `leave` (resume possible for `--resume-window`).
    pub signal_lost: Option<Instant>,
    /// The subscriber offer awaiting an answer, re-sent after a resume.
    pub last_offer: Option<lk::SessionDescription>,
    pub publisher: Peer,
    pub subscriber: Peer,
    pub down: Vec<DownTrack>,
    pub auto_subscribe: bool,
    /// The client's signalling protocol version (`protocol=`).
    pub protocol: i32,
    pub video: crate::auth::VideoGrant,
    pub token_exp: f64,
    pub next_refresh: Instant,
    pub refresh_every: Duration,
    /// Our last answer (publisher) / offer (subscriber) with its candidates, for trickle.
    pub publisher_sdp: String,
    pub subscriber_sdp: String,
    /// When the subscriber offer awaiting its answer was sent (negotiation timeout).
    pub offer_sent_at: Option<Instant>,
    /// Restart the subscriber's ICE with the next offer (after a resume, as livekit-server).
    pub sub_ice_restart: bool,
    /// Subscriber PC needs a new offer.
    pub sub_dirty: bool,
    /// The first subscriber offer also creates the data channels.
    pub sub_needs_channels: bool,
    pub offer_id: u32,
    pub pending_reliable: VecDeque<Arc<[u8]>>,
    pub joined_webhook_sent: bool,
    /// Set when the participant must be removed at the next reap (slow, failed, left).
    pub doomed: Option<(lk::DisconnectReason, bool)>,
}

impl Participant {
    /// Queues a signal message; a full queue marks the participant as too slow.
    pub fn send(&mut self, msg: Resp) {
        if self.doomed.is_some() && !matches!(msg, Resp::Leave(_)) {
            return;
        }
        match self.tx.try_send(Outbound::Signal(Box::new(lk::SignalResponse { message: Some(msg) }))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(identity = %self.info.identity, "signal queue full: dropping slow participant");
                self.doom(lk::DisconnectReason::StateMismatch, false);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The session ended; its Disconnect command decides what happens next.
                tracing::trace!(identity = %self.info.identity, "signal connection gone; message dropped");
            }
        }
    }

    /// Ends the session because of a protocol error: `leave`, then a WebSocket close carrying `why`.
    pub fn fail(&mut self, why: String) {
        tracing::warn!(identity = %self.info.identity, %why, "ending session");
        self.send(Resp::Leave(lk::LeaveRequest {
            can_reconnect: false,
            reason: lk::DisconnectReason::StateMismatch as i32,
            action: lk::leave_request::Action::Disconnect as i32,
            ..Default::default()
        }));
        let _ = self.tx.try_send(Outbound::Close { code: 1007, reason: why });
        self.doom(lk::DisconnectReason::StateMismatch, false);
    }

    pub fn doom(&mut self, reason: lk::DisconnectReason, notify: bool) {
        if self.doomed.is_none() {
            self.doomed = Some((reason, notify));
        }
    }

    /// Sends our candidates of one peer connection by trickle (they are not in our SDPs).
    pub fn trickle_candidates(&mut self, target: lk::SignalTarget) {
        let sdp = match target {
            lk::SignalTarget::Publisher => self.publisher_sdp.clone(),
            lk::SignalTarget::Subscriber => self.subscriber_sdp.clone(),
        };
        for candidate_init in crate::peer::candidate_inits(&sdp) {
            self.send(Resp::Trickle(lk::TrickleRequest { candidate_init, target: target as i32, r#final: false }));
        }
    }

    /// A token for this participant's current claims (livekit-server `refreshToken`): valid
    /// 10 minutes, or as long as the original one when that is longer.
    pub fn refresh_token(&mut self, api_key: &str, api_secret: &str) -> String {
        let now = crate::auth::unix_now().floor();
        let exp = (now + 600.0).max(self.token_exp);
        self.next_refresh = Instant::now() + self.refresh_every;
        let mut video = serde_json::to_value(&self.video).unwrap_or_default();
        if let Some(v) = video.as_object_mut() {
            let perm = &self.info.permission;
            v.insert("canPublish".into(), perm.can_publish.into());
            v.insert("canSubscribe".into(), perm.can_subscribe.into());
            v.insert("canPublishData".into(), perm.can_publish_data.into());
        }
        let claims = serde_json::json!({
            "iss": api_key,
            "sub": self.info.identity,
            "name": self.info.name,
            "kind": self.info.kind.as_str_name().to_ascii_lowercase(),
            "metadata": self.info.metadata,
            "attributes": self.info.attributes,
            "nbf": now - 10.0,
            "iat": now,
            "exp": exp,
            "video": video,
        });
        crate::auth::sign(&claims, api_secret)
    }

    pub fn proto(&self) -> lk::ParticipantInfo {
        self.info.to_proto(&self.tracks)
    }

    pub fn bump(&mut self) {
        self.info.version += 1;
    }

    pub fn is_publisher(&self) -> bool {
        self.tracks.iter().any(|t| t.published())
    }
}

pub struct Engine {
    pub(crate) cfg: Arc<Config>,
    pub(crate) socket: Arc<UdpSocket>,
    /// Address in our ICE candidate (and the `destination` str0m expects).
    pub(crate) local_addr: SocketAddr,
    /// Our passive ICE-TCP candidate's address, and the open connections by client address.
    pub(crate) tcp_addr: Option<SocketAddr>,
    pub(crate) tcp_conns: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    pub(crate) rooms: HashMap<String, Room>,
    pub(crate) parts: HashMap<u64, Participant>,
    pub(crate) next_key: u64,
    pub(crate) next_session: u64,
    pub(crate) webhooks: Webhooks,
    /// Demultiplexing cache: remote address → peer (checked with `accepts` before use).
    pub(crate) by_addr: HashMap<SocketAddr, (u64, Role)>,
    /// Agent workers and the jobs of every room.
    pub(crate) dispatch: Dispatcher,
    /// The embedded TURN server, if enabled.
    pub(crate) turn: Option<crate::turn::Turn>,
}

/// Binds the RTC socket and starts the engine task.
pub async fn start(cfg: Arc<Config>, webhooks: Webhooks, turn: Option<crate::turn::Turn>) -> anyhow::Result<EngineHandle> {
    let socket = UdpSocket::bind(cfg.rtc_bind()).await?;
    let bound = socket.local_addr()?;
    let local_addr = SocketAddr::new(cfg.advertised_ip(), bound.port());
    let tcp_listener = tokio::net::TcpListener::bind(cfg.tcp_bind()).await?;
    let tcp_addr = SocketAddr::new(cfg.advertised_ip(), tcp_listener.local_addr()?.port());
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let engine = Engine::new(cfg, Arc::new(socket), local_addr, Some(tcp_addr), webhooks, turn);
    tokio::spawn(engine.run(rx));
    let handle = EngineHandle {
        tx,
        rtc_addr: local_addr,
    };
    tracing::info!(%tcp_addr, "ICE-TCP listening");
    tokio::spawn(crate::ice_tcp::serve(tcp_listener, handle.clone()));
    Ok(handle)
}

impl Engine {
    /// `ice_servers` for participant `sid` (livekit-server `iceServersForParticipant`): the
    /// embedded TURN server with fresh credentials, or nothing (livekit-server would add its
    /// default public STUN servers, which an offline test server cannot reach).
    fn ice_servers(&self, sid: &str) -> Vec<lk::IceServer> {
        self.turn.iter().map(|t| t.ice_server(&self.cfg.api_key, &self.cfg.api_secret, sid)).collect()
    }

    /// `force_relay` when asked (`--force-relay`).
    fn client_configuration(&self) -> Option<lk::ClientConfiguration> {
        self.cfg.force_relay.then(|| lk::ClientConfiguration {
            force_relay: lk::ClientConfigSetting::Enabled as i32,
            ..Default::default()
        })
    }

    /// `tcp_addr`: the ICE-TCP listener's advertised address (none: no TCP candidates).
    fn new(cfg: Arc<Config>, socket: Arc<UdpSocket>, local_addr: SocketAddr, tcp_addr: Option<SocketAddr>, webhooks: Webhooks, turn: Option<crate::turn::Turn>) -> Engine {
        let offer_timeout = Duration::from_millis(cfg.agent_offer_timeout_ms.max(1));
        Engine {
            cfg,
            socket,
            local_addr,
            tcp_addr,
            tcp_conns: HashMap::new(),
            rooms: HashMap::new(),
            parts: HashMap::new(),
            next_key: 1,
            next_session: 1,
            webhooks,
            by_addr: HashMap::new(),
            dispatch: Dispatcher::new(offer_timeout),
            turn,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let socket = self.socket.clone();
        let mut buf = vec![0u8; 2048];
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.drive();
            self.reap();
            let now = Instant::now();
            let next = self
                .parts
                .values()
                .flat_map(|p| [p.publisher.next_timeout, p.subscriber.next_timeout])
                .min()
                .unwrap_or(now + Duration::from_secs(1))
                .max(now)
                .min(now + Duration::from_secs(1));
            tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => self.on_udp(&buf[..n], source),
                    // ICMP errors (e.g. a client port that went away) surface here on Linux.
                    Err(e) => tracing::debug!(error = %e, "udp recv error"),
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = housekeeping.tick() => self.housekeeping(),
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            self.on_timeout(Instant::now());
        }
        tracing::info!("engine stopped");
    }

    fn on_udp(&mut self, data: &[u8], source: SocketAddr) {
        if self.cfg.udp_off {
            return;
        }
        self.on_datagram(data, source, Protocol::Udp);
    }

    fn on_tcp(&mut self, ev: crate::ice_tcp::TcpEvent) {
        use crate::ice_tcp::TcpEvent;
        match ev {
            TcpEvent::Opened { remote, tx } => {
                // Bounded like everything else: a flood of connections cannot grow this.
                if self.tcp_conns.len() >= 4 * self.parts.len() + 64 {
                    tracing::warn!(%remote, "too many ICE-TCP connections; refused");
                    return;
                }
                self.tcp_conns.insert(remote, tx);
            }
            TcpEvent::Frame { remote, data } => self.on_datagram(&data, remote, Protocol::Tcp),
            TcpEvent::Closed { remote } => {
                self.tcp_conns.remove(&remote);
            }
        }
    }

    fn on_datagram(&mut self, data: &[u8], source: SocketAddr, proto: Protocol) {
        let destination = match proto {
            Protocol::Udp => self.local_addr,
            _ => match self.tcp_addr {
                Some(a) => a,
                None => return,
            },
        };
        let Ok(contents) = data.try_into() else {
            tracing::trace!(%source, "unrecognised datagram");
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let cached = self.by_addr.get(&source).copied().filter(|(k, role)| {
            self.parts.get(k).is_some_and(|p| match role {
                Role::Publisher => p.publisher.accepts(&input),
                Role::Subscriber => p.subscriber.accepts(&input),
            })
        });
        let target = cached.or_else(|| {
            let found = self.parts.values().find_map(|p| {
                if p.publisher.accepts(&input) {
                    Some((p.key, Role::Publisher))
                } else if p.subscriber.accepts(&input) {
                    Some((p.key, Role::Subscriber))
                } else {
                    None
                }
            });
            if let Some(t) = found {
                if self.by_addr.len() > 4 * self.parts.len() + 64 {
                    let parts = &self.parts;
                    self.by_addr.retain(|_, (k, _)| parts.contains_key(k));
                }
                self.by_addr.insert(source, t);
            }
            found
        });
        let Some((key, role)) = target else {
            tracing::trace!(%source, "no peer accepts datagram");
            return;
        };
        if let Some(p) = self.parts.get_mut(&key) {
            let peer = match role {
                Role::Publisher => &mut p.publisher,
                Role::Subscriber => &mut p.subscriber,
            };
            if let Err(e) = peer.rtc.handle_input(input) {
                tracing::warn!(identity = %p.info.identity, ?role, error = %e, "peer failed");
                peer.rtc.disconnect();
            }
            peer.dirty = true;
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        for p in self.parts.values_mut() {
            for peer in [&mut p.publisher, &mut p.subscriber] {
                if peer.next_timeout <= now && peer.rtc.is_alive() {
                    peer.dirty = true;
                    if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                        tracing::warn!(identity = %p.info.identity, error = %e, "peer timeout handling failed");
                        peer.rtc.disconnect();
                    }
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        // Commands may call into any peer (answers, candidates, offers, data): poll them next.
        match &cmd {
            Command::Signal { key, .. } => {
                if let Some(p) = self.parts.get_mut(key) {
                    p.publisher.dirty = true;
                    p.subscriber.dirty = true;
                }
            }
            // The peer that takes the frame marks itself.
            Command::Tcp(_) => {}
            _ => {
                for p in self.parts.values_mut() {
                    p.publisher.dirty = true;
                    p.subscriber.dirty = true;
                }
            }
        }
        match cmd {
            Command::Join(req, reply) => {
                let res = self.join(req);
                let _ = reply.send(res);
            }
            Command::Resume(req, reply) => {
                let res = self.resume(req);
                let _ = reply.send(res);
            }
            Command::Signal { key, session, msg } => {
                if self.parts.get(&key).is_some_and(|p| p.session == session) {
                    self.on_signal(key, msg);
                }
            }
            Command::Disconnect { key, session, reason } => {
                let Some(p) = self.parts.get_mut(&key) else {
                    return;
                };
                if p.session != session {
                    return; // a replaced connection
                }
                if reason == lk::DisconnectReason::SignalClose && p.doomed.is_none() {
                    tracing::info!(identity = %p.info.identity, "signal connection lost; participant kept for resume");
                    p.signal_lost = Some(Instant::now());
                } else {
                    self.remove_participant(key, reason, false);
                }
            }
            Command::Admin(a) => self.on_admin(a),
            Command::Worker(w) => self.on_worker(w),
            Command::Tcp(ev) => self.on_tcp(ev),
            Command::Shutdown(reply) => {
                let names: Vec<String> = self.rooms.keys().cloned().collect();
                for name in names {
                    self.close_room(&name, lk::DisconnectReason::ServerShutdown);
                }
                let _ = reply.send(());
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .rooms
            .values()
            .filter(|r| r.expired(now))
            .map(|r| r.name.clone())
            .collect();
        for name in expired {
            tracing::info!(room = %name, "closing empty room");
            self.close_room(&name, lk::DisconnectReason::RoomClosed);
        }
        self.dispatch_tick(now);
        let window = Duration::from_secs(self.cfg.resume_window as u64);
        let negotiation_timeout = Duration::from_secs(self.cfg.negotiation_timeout_secs.max(1));
        let (api_key, api_secret) = (self.cfg.api_key.clone(), self.cfg.api_secret.clone());
        for p in self.parts.values_mut() {
            if p.doomed.is_some() || p.signal_lost.is_some() {
                continue;
            }
            if now >= p.next_refresh {
                let token = p.refresh_token(&api_key, &api_secret);
                p.send(Resp::RefreshToken(token));
            }
            // livekit-server transport.go: an offer unanswered for 15 s is a failed negotiation,
            // and the participant is told to join again (IssueFullReconnect).
            if p.offer_sent_at.is_some_and(|t| now.duration_since(t) >= negotiation_timeout) {
                tracing::warn!(identity = %p.info.identity, "subscriber negotiation timed out: asking for a full reconnect");
                p.send(Resp::Leave(lk::LeaveRequest {
                    reason: lk::DisconnectReason::StateMismatch as i32,
                    action: lk::leave_request::Action::Reconnect as i32,
                    ..Default::default()
                }));
                let _ = p.tx.try_send(Outbound::Close { code: 1000, reason: "negotiation failed".into() });
                p.doom(lk::DisconnectReason::StateMismatch, false);
                p.offer_sent_at = None;
            }
        }
        for p in self.parts.values_mut() {
            if p.signal_lost.is_some_and(|t| now.duration_since(t) >= window) {
                tracing::info!(identity = %p.info.identity, "no resume within the window: removing participant");
                p.doom(lk::DisconnectReason::SignalClose, false);
            }
        }
    }

    /// Removes participants marked as doomed.
    fn reap(&mut self) {
        let doomed: Vec<(u64, lk::DisconnectReason, bool)> = self
            .parts
            .values()
            .filter_map(|p| p.doomed.map(|(r, n)| (p.key, r, n)))
            .collect();
        for (key, reason, notify) in doomed {
            self.remove_participant(key, reason, notify);
        }
        self.dispatch_reap();
    }

    // ---------------------------------------------------------------- rooms

    pub(crate) fn room_proto(&self, name: &str) -> Option<lk::Room> {
        let room = self.rooms.get(name)?;
        let members: Vec<&Participant> = room.members.iter().filter_map(|k| self.parts.get(k)).collect();
        let n = members.iter().filter(|p| !p.info.permission.hidden).count() as u32;
        let pubs = members.iter().filter(|p| p.is_publisher()).count() as u32;
        Some(room.to_proto(n, pubs))
    }

    fn ensure_room(&mut self, name: &str, agents: &[lk::RoomAgentDispatch]) -> &mut Room {
        if !self.rooms.contains_key(name) {
            let mut room = Room::new(
                name,
                self.cfg.empty_timeout,
                self.cfg.departure_timeout,
                Instant::now(),
            );
            room.g711 = !self.cfg.g711_off;
            tracing::info!(room = %name, sid = %room.sid, "room created");
            self.rooms.insert(name.to_string(), room);
            let proto = self.room_proto(name);
            self.webhooks.emit("room_started", proto, None, None);
            self.dispatch_room_started(name, agents);
        }
        self.rooms.get_mut(name).expect("just inserted")
    }

    pub(crate) fn close_room(&mut self, name: &str, reason: lk::DisconnectReason) {
        let Some(room) = self.rooms.get(name) else {
            return;
        };
        let members = room.members.clone();
        for key in members {
            self.remove_participant(key, reason, true);
        }
        let proto = self.room_proto(name);
        self.rooms.remove(name);
        self.dispatch_room_finished(name);
        self.webhooks.emit("room_finished", proto, None, None);
    }

    /// Keys of the other participants in `key`'s room.
    pub(crate) fn others(&self, key: u64) -> Vec<u64> {
        let Some(p) = self.parts.get(&key) else {
            return Vec::new();
        };
        self.rooms
            .get(&p.room)
            .map(|r| r.members.iter().copied().filter(|k| *k != key).collect())
            .unwrap_or_default()
    }

    pub(crate) fn find_participant(&self, room: &str, identity: &str) -> Option<u64> {
        let r = self.rooms.get(room)?;
        r.members
            .iter()
            .copied()
            .find(|k| self.parts.get(k).is_some_and(|p| p.info.identity == identity))
    }

    /// Sends `key`'s current ParticipantInfo to the others in its room (and to itself if asked).
    pub(crate) fn broadcast_info(&mut self, key: u64, include_self: bool) {
        let Some(p) = self.parts.get(&key) else {
            return;
        };
        let info = p.proto();
        let hidden = p.info.permission.hidden;
        if include_self {
            if let Some(p) = self.parts.get_mut(&key) {
                p.send(Resp::Update(lk::ParticipantUpdate {
                    participants: vec![info.clone()],
                }));
            }
        }
        if hidden {
            return;
        }
        for other in self.others(key) {
            if let Some(o) = self.parts.get_mut(&other) {
                o.send(Resp::Update(lk::ParticipantUpdate {
                    participants: vec![info.clone()],
                }));
            }
        }
    }

    // ---------------------------------------------------------- participants

    fn join(&mut self, req: JoinRequest) -> Result<Joined, ApiError> {
        if req.identity.is_empty() {
            return Err(ApiError::unauthenticated("token has no identity (sub)"));
        }
        {
            let room = self.ensure_room(&req.room, &req.room_agents);
            if room.max_participants > 0 && room.members.len() as u32 >= room.max_participants {
                return Err(ApiError::resource_exhausted("room is full"));
            }
        }
        if let Some(old) = self.find_participant(&req.room, &req.identity) {
            tracing::info!(identity = %req.identity, "duplicate identity: removing the older session");
            self.remove_participant(old, lk::DisconnectReason::DuplicateIdentity, true);
        }
        let ice_lite = self.cfg.ice_lite;
        let udp_candidate = (!self.cfg.udp_off).then_some(self.local_addr);
        let refresh_every = Duration::from_secs(self.cfg.token_refresh_secs.max(1));

        let now = Instant::now();
        let key = self.next_key;
        self.next_key += 1;
        let info = Identity {
            sid: room::new_sid("PA_"),
            identity: req.identity.clone(),
            name: req.name,
            kind: req.kind,
            metadata: req.metadata,
            attributes: req.attributes,
            permission: req.permission,
            joined_at_ms: room::unix_ms(),
            state: lk::participant_info::State::Joined,
            version: 1,
        };
        let sid = info.sid.clone();
        let session = self.next_session;
        self.next_session += 1;
        let mut p = Participant {
            key,
            room: req.room.clone(),
            info,
            tracks: Vec::new(),
            tx: req.tx,
            session,
            signal_lost: None,
            last_offer: None,
            publisher: Peer::new(Role::Publisher, now, udp_candidate, self.tcp_addr, ice_lite, !self.cfg.g711_off),
            subscriber: Peer::new(Role::Subscriber, now, udp_candidate, self.tcp_addr, ice_lite, !self.cfg.g711_off),
            down: Vec::new(),
            auto_subscribe: req.auto_subscribe,
            protocol: req.protocol,
            video: req.video,
            token_exp: req.token_exp,
            next_refresh: now + refresh_every,
            refresh_every,
            publisher_sdp: String::new(),
            subscriber_sdp: String::new(),
            offer_sent_at: None,
            sub_ice_restart: false,
            sub_dirty: true,
            sub_needs_channels: true,
            offer_id: 0,
            pending_reliable: VecDeque::new(),
            joined_webhook_sent: false,
            doomed: None,
        };

        let room = self.rooms.get_mut(&req.room).expect("ensured above");
        room.members.push(key);
        room.ever_joined = true;
        room.emptied_at = None;
        let others: Vec<u64> = room.members.iter().copied().filter(|k| *k != key).collect();

        let other_infos: Vec<lk::ParticipantInfo> = others
            .iter()
            .filter_map(|k| self.parts.get(k))
            .filter(|o| !o.info.permission.hidden)
            .map(Participant::proto)
            .collect();
        let can_subscribe = p.info.permission.can_subscribe;
        let join = lk::JoinResponse {
            room: None, // filled below once p is inserted (counts include it)
            participant: Some(p.proto()),
            other_participants: other_infos,
            server_version: SERVER_VERSION.into(),
            ice_servers: self.ice_servers(&sid),
            client_configuration: self.client_configuration(),
            subscriber_primary: can_subscribe,
            ping_timeout: PING_TIMEOUT,
            ping_interval: PING_INTERVAL,
            server_info: Some(server_info()),
            enabled_publish_codecs: room::enabled_codecs(!self.cfg.g711_off),
            fast_publish: p.info.permission.can_publish,
            ..Default::default()
        };

        // Subscribe to what is already published.
        if p.auto_subscribe && can_subscribe {
            // Hidden participants are invisible to others, so are their tracks.
            for o in others.iter().filter_map(|k| self.parts.get(k)).filter(|o| !o.info.permission.hidden) {
                for t in o.tracks.iter().filter(|t| t.published()) {
                    p.down.push(DownTrack::new(o, t));
                }
            }
        }
        tracing::info!(room = %req.room, identity = %req.identity, %sid, "participant joined");
        self.parts.insert(key, p);
        let mut join = join;
        join.room = self.room_proto(&req.room);
        if let Some(p) = self.parts.get_mut(&key) {
            p.send(Resp::Join(join));
            // As livekit-server's rtcSessionWorker: a first refresh at once (for tokens close to
            // expiry), then every --token-refresh-secs.
            let token = p.refresh_token(&self.cfg.api_key, &self.cfg.api_secret);
            p.send(Resp::RefreshToken(token));
        }
        self.broadcast_info(key, false);
        Ok(Joined { key, session })
    }

    /// Attaches a new signal connection to a participant whose connection dropped; its peer
    /// connections (and media) were never interrupted.
    fn resume(&mut self, req: ResumeRequest) -> Result<Joined, ApiError> {
        let key = self
            .find_participant(&req.room, &req.identity)
            .filter(|k| {
                self.parts
                    .get(k)
                    .is_some_and(|p| p.doomed.is_none() && (req.sid.is_empty() || p.info.sid == req.sid))
            })
            .ok_or_else(|| ApiError::not_found("participant to resume not found"))?;
        let session = self.next_session;
        self.next_session += 1;
        let room = self.room_proto(&self.parts[&key].room);
        let others: Vec<lk::ParticipantInfo> = self
            .others(key)
            .iter()
            .filter_map(|k| self.parts.get(k))
            .filter(|o| !o.info.permission.hidden)
            .map(Participant::proto)
            .collect();
        let ice_servers = self.ice_servers(&self.parts[&key].info.sid);
        let client_configuration = self.client_configuration();
        let p = self.parts.get_mut(&key).expect("found");
        tracing::info!(identity = %p.info.identity, "participant resumed");
        // Dropping the old sender ends the old session (if it is still around).
        p.tx = req.tx;
        p.session = session;
        p.signal_lost = None;
        p.send(Resp::Reconnect(lk::ReconnectResponse {
            server_info: Some(server_info()),
            ice_servers,
            client_configuration,
            ..Default::default()
        }));
        let mut all = others;
        all.push(p.proto());
        p.send(Resp::Update(lk::ParticipantUpdate { participants: all }));
        if let Some(room) = room {
            p.send(Resp::RoomUpdate(lk::RoomUpdate { room: Some(room) }));
        }
        // An offer in flight may have been lost with the old connection: send it again
        // (the same SDP, so a client that did apply it just answers again). Otherwise restart
        // the subscriber's ICE, as livekit-server's ResumeParticipant does.
        if p.subscriber.pending.is_some() {
            if let Some(offer) = p.last_offer.clone() {
                p.send(Resp::Offer(offer));
                p.trickle_candidates(lk::SignalTarget::Subscriber);
            }
        } else if p.subscriber.connected {
            p.sub_ice_restart = true;
            p.sub_dirty = true;
        }
        Ok(Joined { key, session })
    }

    /// Removes a participant: tells it why (if `notify`), unsubscribes everyone from its
    /// tracks, tells the others, fires webhooks.
    pub(crate) fn remove_participant(&mut self, key: u64, reason: lk::DisconnectReason, notify: bool) {
        self.remove_participant_as(key, reason, notify, reason == lk::DisconnectReason::DuplicateIdentity)
    }

    /// `replaced`: a newer session of the same identity exists. Clients at protocol > 11 then get
    /// no DISCONNECTED update for the old sid (livekit-server room.go `SendParticipantUpdates`
    /// skips DUPLICATE_IDENTITY for `SupportsIdentityBasedReconnection`).
    fn remove_participant_as(&mut self, key: u64, reason: lk::DisconnectReason, notify: bool, replaced: bool) {
        let Some(mut p) = self.parts.remove(&key) else {
            return;
        };
        tracing::info!(room = %p.room, identity = %p.info.identity, ?reason, "participant left");
        if notify {
            p.doomed = None;
            p.send(Resp::Leave(lk::LeaveRequest {
                can_reconnect: false,
                reason: reason as i32,
                action: lk::leave_request::Action::Disconnect as i32,
                ..Default::default()
            }));
        }
        p.publisher.rtc.disconnect();
        p.subscriber.rtc.disconnect();
        let room_name = p.room.clone();
        let mut members = Vec::new();
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.members.retain(|k| *k != key);
            if room.members.is_empty() {
                room.emptied_at = Some(Instant::now());
            }
            members = room.members.clone();
        }
        for other in &members {
            if let Some(o) = self.parts.get_mut(other) {
                let mut changed = false;
                for d in o.down.iter_mut().filter(|d| d.publisher == key) {
                    d.removed = true;
                    changed = true;
                }
                if changed {
                    o.sub_dirty = true;
                }
            }
        }
        p.info.state = lk::participant_info::State::Disconnected;
        p.bump();
        let mut info = p.proto();
        info.disconnect_reason = reason as i32;
        if !p.info.permission.hidden {
            for other in &members {
                if let Some(o) = self.parts.get_mut(other) {
                    if replaced && o.protocol > 11 {
                        continue;
                    }
                    o.send(Resp::Update(lk::ParticipantUpdate {
                        participants: vec![info.clone()],
                    }));
                }
            }
        }
        let room_proto = self.room_proto(&room_name);
        for t in p.tracks.iter().filter(|t| t.published()) {
            self.webhooks.emit(
                "track_unpublished",
                room_proto.clone(),
                Some(info.clone()),
                Some(t.to_proto()),
            );
        }
        // Paired with participant_joined (sent when it became ACTIVE).
        if p.joined_webhook_sent {
            self.webhooks.emit("participant_left", room_proto, Some(info), None);
        }
        // Dropping `p` drops its signal sender: the session closes the WebSocket.
    }

    // --------------------------------------------------------------- signal

    fn on_signal(&mut self, key: u64, msg: Req) {
        if !self.parts.contains_key(&key) {
            return;
        }
        match msg {
            Req::Offer(sd) => self.on_publisher_offer(key, sd),
            Req::Answer(sd) => self.on_subscriber_answer(key, sd),
            Req::Trickle(t) => {
                let p = self.parts.get_mut(&key).expect("checked");
                let peer = if t.target == lk::SignalTarget::Subscriber as i32 {
                    &mut p.subscriber
                } else {
                    &mut p.publisher
                };
                if let Err(e) = peer.add_remote_candidate_json(&t.candidate_init) {
                    tracing::warn!(identity = %p.info.identity, error = %e, "bad trickle candidate");
                }
            }
            Req::AddTrack(req) => self.on_add_track(key, req),
            Req::Mute(m) => {
                let p = self.parts.get_mut(&key).expect("checked");
                if let Some(t) = p.tracks.iter_mut().find(|t| t.sid == m.sid) {
                    t.muted = m.muted;
                    p.bump();
                    self.broadcast_info(key, false);
                }
            }
            Req::Subscription(s) => self.on_subscription(key, s),
            Req::Leave(_) => {
                if let Some(p) = self.parts.get_mut(&key) {
                    p.doom(lk::DisconnectReason::ClientInitiated, false);
                }
            }
            Req::UpdateMetadata(u) => {
                let p = self.parts.get_mut(&key).expect("checked");
                if !p.info.permission.can_update_metadata {
                    p.send(Resp::RequestResponse(lk::RequestResponse {
                        request_id: u.request_id,
                        reason: lk::request_response::Reason::NotAllowed as i32,
                        message: "does not have permission to update own metadata".into(),
                        request: Some(lk::request_response::Request::UpdateMetadata(u)),
                    }));
                    return;
                }
                if !u.name.is_empty() {
                    p.info.name = u.name.clone();
                }
                if !u.metadata.is_empty() {
                    p.info.metadata = u.metadata.clone();
                }
                p.info.merge_attributes(&u.attributes);
                p.bump();
                p.send(Resp::RequestResponse(lk::RequestResponse {
                    request_id: u.request_id,
                    reason: lk::request_response::Reason::Ok as i32,
                    request: Some(lk::request_response::Request::UpdateMetadata(u.clone())),
                    ..Default::default()
                }));
                // Claims changed: a token carrying them (livekit-server `OnClaimsChanged`), so a
                // full reconnect comes back with them.
                let token = p.refresh_token(&self.cfg.api_key, &self.cfg.api_secret);
                p.send(Resp::RefreshToken(token));
                self.broadcast_info(key, true);
            }
            Req::PingReq(ping) => {
                let p = self.parts.get_mut(&key).expect("checked");
                p.send(Resp::PongResp(lk::Pong {
                    last_ping_timestamp: ping.timestamp,
                    timestamp: room::unix_ms(),
                }));
            }
            Req::Ping(_) => {
                let p = self.parts.get_mut(&key).expect("checked");
                p.send(Resp::Pong(room::unix_ms()));
            }
            other => {
                tracing::debug!(msg = ?std::mem::discriminant(&other), "ignoring signal request");
            }
        }
    }

    fn on_add_track(&mut self, key: u64, req: lk::AddTrackRequest) {
        let p = self.parts.get_mut(&key).expect("checked");
        // As livekit-server participant.go AddTrack / addPendingTrack.
        let refuse = |p: &mut Participant, reason: lk::request_response::Reason, message: String, req: lk::AddTrackRequest| {
            tracing::warn!(identity = %p.info.identity, cid = %req.cid, ?reason, "add_track refused");
            p.send(Resp::RequestResponse(lk::RequestResponse {
                reason: reason as i32,
                message,
                request: Some(lk::request_response::Request::AddTrack(req)),
                ..Default::default()
            }));
        };
        if !p.info.permission.can_publish {
            return refuse(p, lk::request_response::Reason::NotAllowed, "does not have permission to publish".into(), req);
        }
        if req.r#type != lk::TrackType::Audio as i32 && req.r#type != lk::TrackType::Video as i32 {
            return refuse(p, lk::request_response::Reason::UnsupportedType, "unsupported track type".into(), req);
        }
        let pending = p.tracks.iter().filter(|t| !t.published()).count();
        if pending >= MAX_PENDING_TRACKS {
            return refuse(p, lk::request_response::Reason::LimitExceeded, format!("too many pending tracks, rejecting new track, numPendingTracks: {pending}"), req);
        }
        if !req.cid.is_empty() && p.tracks.iter().any(|t| t.cid == req.cid) {
            // A track with this cid exists: livekit-server queues the new one (published after
            // the first one goes) and says QUEUED; devroom does not publish it.
            tracing::info!(identity = %p.info.identity, cid = %req.cid, "add_track for a cid in use: queued");
            p.send(Resp::RequestResponse(lk::RequestResponse {
                reason: lk::request_response::Reason::Queued as i32,
                request: Some(lk::request_response::Request::AddTrack(req)),
                ..Default::default()
            }));
            return;
        }
        let t = PublishedTrack::from_request(&req);
        let info = t.to_proto();
        tracing::info!(identity = %p.info.identity, sid = %t.sid, cid = %t.cid, name = %t.name, "track announced");
        p.tracks.push(t);
        p.send(Resp::TrackPublished(lk::TrackPublishedResponse {
            cid: req.cid,
            track: Some(info),
        }));
    }

    fn on_publisher_offer(&mut self, key: u64, sd: lk::SessionDescription) {
        let p = self.parts.get_mut(&key).expect("checked");
        let answer = match p.publisher.accept_offer(&sd.sdp) {
            Ok(a) => a,
            Err(e) => {
                p.fail(format!("publisher {e}"));
                return;
            }
        };
        let sections = crate::peer::parse_media_sections(&sd.sdp);
        let mut newly_published = Vec::new();
        let mut unpublished = Vec::new();
        for s in sections.iter().filter(|s| s.kind == "audio" || s.kind == "video") {
            let bound = p.tracks.iter().position(|t| t.mid.as_deref() == Some(s.mid.as_str()));
            match (bound, s.remote_sends) {
                (Some(_), true) => {}
                (Some(i), false) => unpublished.push(p.tracks.remove(i)),
                (None, true) => {
                    let want = if s.kind == "video" {
                        lk::TrackType::Video
                    } else {
                        lk::TrackType::Audio
                    };
                    let by_cid = s.track_id.as_ref().and_then(|cid| {
                        p.tracks.iter().position(|t| t.mid.is_none() && &t.cid == cid)
                    });
                    let idx = by_cid.or_else(|| {
                        p.tracks.iter().position(|t| t.mid.is_none() && t.kind == want)
                    });
                    if let Some(i) = idx {
                        let mid = Mid::from(s.mid.as_str());
                        let mime = p
                            .publisher
                            .rtc
                            .writer(mid)
                            .and_then(|w| w.payload_params().next().map(|pp| pp.spec().codec))
                            .map(|c| format!("{}/{}", s.kind, c))
                            .unwrap_or_else(|| format!("{}/opus", s.kind));
                        let t = &mut p.tracks[i];
                        t.mid = Some(s.mid.clone());
                        t.mime_type = mime;
                        newly_published.push(t.sid.clone());
                    } else {
                        tracing::debug!(mid = %s.mid, "publisher m-line without add_track; ignored");
                    }
                }
                (None, false) => {}
            }
        }
        let mid_to_track_id = p
            .tracks
            .iter()
            .filter_map(|t| t.mid.clone().map(|m| (m, t.sid.clone())))
            .collect();
        p.send(Resp::Answer(lk::SessionDescription {
            r#type: "answer".into(),
            sdp: crate::peer::strip_candidates(&answer),
            id: sd.id,
            mid_to_track_id,
        }));
        p.publisher_sdp = answer;
        p.trickle_candidates(lk::SignalTarget::Publisher);
        for t in unpublished {
            self.on_track_unpublished(key, t);
        }
        for sid in newly_published {
            if self.cfg.publish_on_rtp {
                tracing::debug!(%sid, "track bound to its m-line; published on its first RTP packet");
                continue;
            }
            // livekit-server ≥ 1.8.2: the track is published with the SDP (FireOnTrackBySdp).
            if let Some(t) = self.parts.get_mut(&key).and_then(|p| p.tracks.iter_mut().find(|t| t.sid == sid)) {
                t.live = true;
            }
            self.on_track_published(key, &sid);
        }
    }

    /// A track's media is flowing: tell everyone, subscribe them.
    pub(crate) fn on_track_published(&mut self, key: u64, track_sid: &str) {
        let Some(p) = self.parts.get_mut(&key) else {
            return;
        };
        p.bump();
        let Some(t) = p.tracks.iter().find(|t| t.sid == track_sid).cloned() else {
            return;
        };
        tracing::info!(identity = %p.info.identity, sid = %t.sid, mime = %t.mime_type, "track published");
        let info = p.proto();
        let hidden = p.info.permission.hidden;
        // Participant updates go out before the subscriber offers that carry the track.
        self.broadcast_info(key, false);
        let pub_snapshot = DownTrackSource {
            key,
            sid: info.sid.clone(),
        };
        for other in self.others(key).into_iter().filter(|_| !hidden) {
            if let Some(o) = self.parts.get_mut(&other) {
                if o.auto_subscribe && o.info.permission.can_subscribe {
                    o.down.push(DownTrack::from_parts(&pub_snapshot, &t));
                    o.sub_dirty = true;
                }
            }
        }
        let room = self.parts.get(&key).map(|p| p.room.clone()).unwrap_or_default();
        self.webhooks
            .emit("track_published", self.room_proto(&room), Some(info), Some(t.to_proto()));
    }

    fn on_track_unpublished(&mut self, key: u64, t: PublishedTrack) {
        for other in self.others(key) {
            if let Some(o) = self.parts.get_mut(&other) {
                let mut changed = false;
                for d in o.down.iter_mut().filter(|d| d.track_sid == t.sid) {
                    d.removed = true;
                    changed = true;
                }
                o.sub_dirty |= changed;
            }
        }
        let Some(p) = self.parts.get_mut(&key) else {
            return;
        };
        tracing::info!(identity = %p.info.identity, sid = %t.sid, "track unpublished");
        p.bump();
        p.send(Resp::TrackUnpublished(lk::TrackUnpublishedResponse {
            track_sid: t.sid.clone(),
        }));
        let info = p.proto();
        let room = p.room.clone();
        self.broadcast_info(key, false);
        self.webhooks
            .emit("track_unpublished", self.room_proto(&room), Some(info), Some(t.to_proto()));
    }

    fn on_subscriber_answer(&mut self, key: u64, sd: lk::SessionDescription) {
        let p = self.parts.get_mut(&key).expect("checked");
        match p.subscriber.accept_answer(&sd.sdp) {
            Ok(()) => {}
            Err(crate::peer::PeerError::NoPendingOffer) => {
                tracing::warn!(identity = %p.info.identity, "subscriber answer without a pending offer; ignored");
                return;
            }
            Err(e) => {
                p.fail(format!("subscriber {e}"));
                return;
            }
        }
        p.offer_sent_at = None;
        p.down.retain(|d| !matches!(d.state, DownState::NegotiatingStop(_)));
        for d in p.down.iter_mut() {
            if let DownState::Negotiating(m) = d.state {
                d.state = DownState::Open(m);
            }
        }
        if p.down.iter().any(|d| d.state == DownState::ToOpen || d.removed) {
            p.sub_dirty = true;
        }
    }

    pub(crate) fn on_subscription(&mut self, key: u64, s: lk::UpdateSubscription) {
        let mut sids: Vec<String> = s.track_sids.clone();
        for pt in &s.participant_tracks {
            sids.extend(pt.track_sids.iter().cloned());
        }
        let others = self.others(key);
        let mut to_add = Vec::new();
        if s.subscribe {
            for sid in &sids {
                for o in others.iter().filter_map(|k| self.parts.get(k)) {
                    if let Some(t) = o.tracks.iter().find(|t| &t.sid == sid && t.published()) {
                        to_add.push(DownTrack::new(o, t));
                    }
                }
            }
        }
        let Some(p) = self.parts.get_mut(&key) else {
            return;
        };
        if s.subscribe {
            if !p.info.permission.can_subscribe {
                return;
            }
            for d in to_add {
                if !p.down.iter().any(|x| x.track_sid == d.track_sid && !x.removed) {
                    p.down.push(d);
                    p.sub_dirty = true;
                }
            }
        } else {
            for d in p.down.iter_mut().filter(|d| sids.contains(&d.track_sid)) {
                d.removed = true;
                p.sub_dirty = true;
            }
        }
    }
}

pub(crate) fn server_info() -> lk::ServerInfo {
    lk::ServerInfo {
        edition: lk::server_info::Edition::Standard as i32,
        version: SERVER_VERSION.into(),
        protocol: PROTOCOL_VERSION,
        node_id: "ND_devroom".into(),
        ..Default::default()
    }
}

pub(crate) struct DownTrackSource {
    pub key: u64,
    pub sid: String,
}

impl DownTrack {
    fn new(publisher: &Participant, t: &PublishedTrack) -> DownTrack {
        DownTrack::from_parts(
            &DownTrackSource {
                key: publisher.key,
                sid: publisher.info.sid.clone(),
            },
            t,
        )
    }

    fn from_parts(src: &DownTrackSource, t: &PublishedTrack) -> DownTrack {
        DownTrack {
            track_sid: t.sid.clone(),
            publisher: src.key,
            publisher_sid: src.sid.clone(),
            source_mid: Mid::from(t.mid.as_deref().unwrap_or("")),
            kind: crate::peer::media_kind(t.kind),
            state: DownState::ToOpen,
            removed: false,
        }
    }
}
