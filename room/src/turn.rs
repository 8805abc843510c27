//! TURN relay candidates (RFC 8656), sans-IO: what libwebrtc does with the `turn:` / `turns:`
//! servers of `JoinResponse.ice_servers`.
//!
//! A [`Relay`] is one allocation on one TURN server for one peer connection, over UDP, TCP or
//! TLS-on-TCP. The TURN client state machine is `turn-client-proto` (TLS: `turn-client-rustls`),
//! which authenticates (long-term credentials), refreshes the allocation, its permissions and
//! channel bindings on its own clock; `Relay` adds what a WebRTC agent needs on top: a
//! permission is asked for a peer the first time we send to it (packets wait for it, bounded),
//! a channel is bound once the peer is reachable (4-byte ChannelData instead of a 36-byte Send
//! indication per packet), and an allocation that fails or does not complete within
//! [`ALLOCATE_TIMEOUT`] is reported as [`RelayEvent::Failed`], never left hanging.
//!
//! Like [`Peer`](crate::peer::Peer) it never touches a socket or a clock: bytes from the
//! server come in through [`Relay::handle_input`] (a datagram, or any chunk of the TCP/TLS
//! stream), bytes for the server come out of [`Relay::poll_transmit`], and time through
//! [`Relay::handle_timeout`] / [`Relay::next_timeout`]. [`Relays`] holds every relay of a room
//! and routes str0m's transmits from a relayed candidate to the relay that owns it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use turn_client_proto::api::{TurnClientApi, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::prelude::DelayedTransmitBuild;
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::{TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;
use turn_client_rustls::TurnClientRustls;

use crate::peer::Role;

turn_client_proto::impl_client!(TurnClient, (Udp, TurnClientUdp), (Tcp, TurnClientTcp), (Tls, TurnClientRustls));

/// TURN servers taken from one `JoinResponse` (each gives one relay per peer connection).
pub(crate) const MAX_TURN_SERVERS: usize = 4;
/// An allocation not done by then is a failure (the crate's own STUN timeout is ~40 s).
pub(crate) const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(8);
/// Bytes for the server waiting for the link (a full queue drops, as a full socket would).
const MAX_OUT: usize = 256;
/// Packets waiting for a permission, per relay.
const MAX_WAITING: usize = 32;
/// Peers we bind channels to, per relay (a LiveKit server offers a handful of candidates).
const MAX_CHANNELS: usize = 16;
/// A relay over TCP/TLS that is allocated while the UDP relay of the same peer connection is
/// still allocating waits this long for it, so the UDP relay is added first and gets the higher
/// local preference (libwebrtc ranks relays UDP > TCP > TLS).
const HOLD_FOR_UDP: Duration = Duration::from_secs(1);
/// Longest url / username / credential we take from the server.
const MAX_FIELD: usize = 512;

/// How we reach a TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TurnTransport {
    /// `turn:host?transport=udp` (the default for `turn:`).
    Udp,
    /// `turn:host?transport=tcp`.
    Tcp,
    /// `turns:host?transport=tcp` (TLS on TCP; the default for `turns:`).
    Tls,
}

impl TurnTransport {
    fn as_str(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        }
    }
}

/// One TURN server url with its credentials.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TurnServer {
    pub transport: TurnTransport,
    /// Host name or IP literal (no brackets); also the TLS server name.
    pub host: String,
    pub port: u16,
    pub username: String,
    pub credential: String,
}

impl std::fmt::Debug for TurnServer {
    // Credentials never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self)
    }
}

impl std::fmt::Display for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.transport == TurnTransport::Tls { "turns" } else { "turn" };
        let transport = if self.transport == TurnTransport::Udp { "udp" } else { "tcp" };
        if self.host.contains(':') {
            write!(f, "{scheme}:[{}]:{}?transport={transport}", self.host, self.port)
        } else {
            write!(f, "{scheme}:{}:{}?transport={transport}", self.host, self.port)
        }
    }
}

/// Parse one TURN url (RFC 7065: `turn:host[:port][?transport=udp|tcp]`,
/// `turns:host[:port][?transport=tcp]`). `stun:` urls and what we cannot use give `None`.
pub(crate) fn parse_turn_url(url: &str) -> Option<(TurnTransport, String, u16)> {
    let url = url.trim();
    if url.len() > MAX_FIELD {
        return None;
    }
    let (secure, rest) = if let Some(r) = url.strip_prefix("turns:") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("turn:") {
        (false, r)
    } else {
        return None;
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let transport = match query {
        None => None,
        Some(q) => {
            let t = q.split('&').find_map(|kv| kv.strip_prefix("transport="))?;
            Some(t.to_ascii_lowercase())
        }
    };
    let transport = match (secure, transport.as_deref()) {
        (false, None | Some("udp")) => TurnTransport::Udp,
        (false, Some("tcp")) => TurnTransport::Tcp,
        (true, None | Some("tcp")) => TurnTransport::Tls,
        // `turns:…?transport=udp` is DTLS; not supported (nor by LiveKit).
        _ => return None,
    };
    let default_port = if secure { 5349 } else { 3478 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default_port),
        }
    };
    if host.is_empty() || port == 0 || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some((transport, host, port))
}

/// The TURN servers of a join's `ice_servers`, as libwebrtc reads them: every `turn:` /
/// `turns:` url with its entry's username and credential (entries without them are skipped, a
/// TURN server always authenticates), duplicates dropped, at most [`MAX_TURN_SERVERS`].
pub(crate) fn turn_servers(ice_servers: &[proto::IceServer]) -> Vec<TurnServer> {
    let mut out: Vec<TurnServer> = Vec::new();
    for s in ice_servers {
        if s.username.is_empty() || s.credential.is_empty() || s.username.len() > MAX_FIELD || s.credential.len() > MAX_FIELD {
            continue;
        }
        for url in &s.urls {
            let Some((transport, host, port)) = parse_turn_url(url) else { continue };
            let t = TurnServer { transport, host, port, username: s.username.clone(), credential: s.credential.clone() };
            if out.len() < MAX_TURN_SERVERS && !out.iter().any(|o| o.transport == t.transport && o.host == t.host && o.port == t.port) {
                out.push(t);
            }
        }
    }
    out
}

/// What a relay tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RelayEvent {
    /// The allocation is up: `relayed` is the candidate address peers send to.
    Allocated { relayed: SocketAddr },
    /// The allocation failed (or a working one was lost); the relay is dead.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RelayState {
    Allocating { deadline: Instant },
    Allocated(SocketAddr),
    Failed(String),
}

/// Counters of one relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayCounters {
    /// Packets sent to peers through the server.
    pub packets_out: u64,
    /// Packets from peers received through the server.
    pub packets_in: u64,
    /// Packets dropped (no allocation, permission refused, queues full).
    pub dropped: u64,
}

/// One TURN allocation for one peer connection.
pub(crate) struct Relay {
    client: TurnClient,
    transport: TurnTransport,
    /// `turn-client-proto` counts time from here.
    epoch: Instant,
    state: RelayState,
    to_server: VecDeque<Vec<u8>>,
    /// Packets for peers whose permission is being created.
    waiting: Vec<(SocketAddr, Vec<u8>)>,
    channels: HashSet<SocketAddr>,
    events: VecDeque<RelayEvent>,
    next_timeout: Instant,
    pub counters: RelayCounters,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("transport", &self.transport).field("state", &self.state).finish()
    }
}

/// Why a relay could not even start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RelayError {
    #[error("TURN/TLS needs a TLS configuration")]
    NoTlsConfig,
    #[error("bad TLS server name {0:?}")]
    BadServerName(String),
}

impl Relay {
    /// Start allocating on `server` (resolved to `server_addr`) from our socket `local` (the
    /// UDP socket, or the TCP connection's local address). TLS needs `tls`.
    pub(crate) fn new(
        server: &TurnServer,
        local: SocketAddr,
        server_addr: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        now: Instant,
    ) -> Result<Relay, RelayError> {
        let mut config = TurnConfig::new(TurnCredentials::new(&server.username, &server.credential));
        // Over UDP a request is retransmitted from 500 ms; the allocation deadline is ours.
        config.set_request_retransmits(Duration::from_millis(500), Duration::from_secs(3), 5, Duration::from_secs(3));
        config.set_allocation_transport(TransportType::Udp);
        let client = match server.transport {
            TurnTransport::Udp => TurnClient::Udp(TurnClientUdp::allocate(local, server_addr, config)),
            TurnTransport::Tcp => TurnClient::Tcp(TurnClientTcp::allocate(local, server_addr, config)),
            TurnTransport::Tls => {
                let tls = tls.ok_or(RelayError::NoTlsConfig)?;
                let name = rustls::pki_types::ServerName::try_from(server.host.clone())
                    .map_err(|_| RelayError::BadServerName(server.host.clone()))?;
                TurnClient::Tls(TurnClientRustls::allocate(local, server_addr, config, name, tls))
            }
        };
        let mut r = Relay {
            client,
            transport: server.transport,
            epoch: now,
            state: RelayState::Allocating { deadline: now + ALLOCATE_TIMEOUT },
            to_server: VecDeque::new(),
            waiting: Vec::new(),
            channels: HashSet::new(),
            events: VecDeque::new(),
            next_timeout: now,
            counters: RelayCounters::default(),
        };
        r.drive(now);
        Ok(r)
    }

    pub(crate) fn transport(&self) -> TurnTransport {
        self.transport
    }

    /// The relayed address once allocated.
    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            RelayState::Allocated(a) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn is_failed(&self) -> bool {
        matches!(self.state, RelayState::Failed(_))
    }

    pub(crate) fn is_allocating(&self) -> bool {
        matches!(self.state, RelayState::Allocating { .. })
    }

    pub(crate) fn next_timeout(&self) -> Instant {
        self.next_timeout
    }

    /// Bytes for the server (a datagram for UDP; a piece of the stream for TCP/TLS).
    pub(crate) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.to_server.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    fn t(&self, now: Instant) -> turn_client_proto::types::Instant {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos().min(i64::MAX as u128) as i64;
        turn_client_proto::types::Instant::from_nanos(nanos)
    }

    fn instant_at(&self, t: turn_client_proto::types::Instant) -> Instant {
        self.epoch + Duration::from_nanos(t.as_nanos().max(0) as u64)
    }

    fn push_out(&mut self, bytes: Vec<u8>) {
        if self.to_server.len() >= MAX_OUT {
            self.counters.dropped += 1;
            return;
        }
        self.to_server.push_back(bytes);
    }

    fn fail(&mut self, why: String) {
        if self.is_failed() {
            return;
        }
        tracing::warn!(transport = self.transport.as_str(), reason = %why, "TURN relay failed");
        self.counters.dropped += self.waiting.len() as u64;
        self.waiting.clear();
        self.state = RelayState::Failed(why.clone());
        self.events.push_back(RelayEvent::Failed(why));
    }

    /// The link to the server is gone (connect failed, TCP closed, socket error).
    pub(crate) fn link_failed(&mut self, why: &str) {
        self.fail(format!("connection to the TURN server: {why}"));
    }

    /// Bytes from the server. Returns what peers sent us through it: (peer, packet).
    pub(crate) fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        if self.is_failed() {
            return out;
        }
        let t = self.t(now);
        let transport = if self.transport == TurnTransport::Udp { TransportType::Udp } else { TransportType::Tcp };
        let transmit = Transmit::new(bytes, transport, self.client.remote_addr(), self.client.local_addr());
        match self.client.recv(transmit, t) {
            TurnRecvRet::PeerData(d) => {
                self.counters.packets_in += 1;
                out.push((d.peer, d.data().to_vec()));
            }
            TurnRecvRet::Handled | TurnRecvRet::Ignored(_) | TurnRecvRet::PeerIcmp { .. } => {}
        }
        // A TCP chunk can carry several messages.
        while let Some(d) = self.client.poll_recv(t) {
            self.counters.packets_in += 1;
            out.push((d.peer, d.data().to_vec()));
        }
        self.drive(now);
        out
    }

    /// Send one packet to `to` through the relay.
    pub(crate) fn send(&mut self, now: Instant, to: SocketAddr, data: &[u8]) {
        if self.relayed().is_none() {
            self.counters.dropped += 1;
            return;
        }
        let t = self.t(now);
        if !self.client.have_permission(TransportType::Udp, to.ip()) {
            // First packet to this peer: ask for its permission, hold the packet meanwhile
            // (the first ICE checks then go out as soon as it is granted).
            match self.client.create_permission(TransportType::Udp, to.ip(), t) {
                Ok(()) | Err(turn_client_proto::api::CreatePermissionError::AlreadyExists) => {
                    if self.waiting.len() < MAX_WAITING {
                        self.waiting.push((to, data.to_vec()));
                    } else {
                        self.counters.dropped += 1;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "TURN permission not possible");
                    self.counters.dropped += 1;
                }
            }
            self.drive(now);
            return;
        }
        self.send_now(t, to, data);
        if !self.channels.contains(&to) && self.channels.len() < MAX_CHANNELS {
            self.channels.insert(to);
            if let Err(e) = self.client.bind_channel(TransportType::Udp, to, t) {
                tracing::debug!(error = %e, "TURN channel bind not possible");
            }
        }
        self.drive(now);
    }

    fn send_now(&mut self, t: turn_client_proto::types::Instant, to: SocketAddr, data: &[u8]) {
        match self.client.send_to(TransportType::Udp, to, data, t) {
            Ok(Some(transmit)) => {
                self.counters.packets_out += 1;
                self.push_out(transmit.data.build());
            }
            // TLS: the record was buffered inside rustls and comes out of poll_transmit.
            Ok(None) => self.counters.packets_out += 1,
            Err(e) => {
                tracing::trace!(error = %e, "TURN send failed");
                self.counters.dropped += 1;
            }
        }
    }

    /// Advance time (retransmits, refreshes of the allocation, permissions and channels).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let RelayState::Allocating { deadline } = self.state {
            if now >= deadline {
                let _ = self.client.delete(self.t(now));
                self.fail(format!("no allocation within {} s", ALLOCATE_TIMEOUT.as_secs()));
            }
        }
        if !self.is_failed() {
            self.drive(now);
        }
    }

    /// Give the allocation back (a Refresh with lifetime 0); best effort, the link closes after.
    pub(crate) fn close(&mut self, now: Instant) {
        if self.relayed().is_some() {
            let _ = self.client.delete(self.t(now));
            self.flush(self.t(now));
        }
        self.state = RelayState::Failed("closed".into());
    }

    fn flush(&mut self, t: turn_client_proto::types::Instant) {
        while let Some(tx) = self.client.poll_transmit(t) {
            let bytes = tx.data.to_vec();
            if !bytes.is_empty() {
                self.push_out(bytes);
            }
        }
    }

    /// Run the client until it only waits: its transmits, events and next deadline.
    fn drive(&mut self, now: Instant) {
        let t = self.t(now);
        let mut wait = now + Duration::from_secs(3600);
        // `poll` answers "now" while (TLS) bytes are waiting to be written; bounded anyway.
        for _ in 0..64 {
            let ret = self.client.poll(t);
            self.flush(t);
            match ret {
                TurnPollRet::WaitUntil(at) if at <= t => continue,
                TurnPollRet::WaitUntil(at) => {
                    wait = self.instant_at(at);
                    break;
                }
                TurnPollRet::Closed => {
                    let why = match self.state {
                        RelayState::Allocating { .. } if self.transport == TurnTransport::Tls => {
                            "closed before allocating (TLS handshake, certificate or authentication failed)"
                        }
                        RelayState::Allocating { .. } => "closed before allocating (refused or unauthenticated)",
                        _ => "allocation closed by the server or expired",
                    };
                    self.fail(why.into());
                    break;
                }
                // TCP allocations (RFC 6062) are never asked for.
                TurnPollRet::AllocateTcpSocket { .. } | TurnPollRet::TcpClose { .. } => continue,
            }
        }
        while let Some(e) = self.client.poll_event() {
            self.on_event(e, t);
        }
        // Draining events may have produced more transmits (flushed permissions).
        self.flush(t);
        if let RelayState::Allocating { deadline } = self.state {
            wait = wait.min(deadline);
        }
        self.next_timeout = if self.is_failed() { now + Duration::from_secs(3600) } else { wait.max(now) };
    }

    fn on_event(&mut self, e: TurnEvent, t: turn_client_proto::types::Instant) {
        match e {
            TurnEvent::AllocationCreated(TransportType::Udp, relayed) => {
                if matches!(self.state, RelayState::Allocating { .. }) {
                    tracing::debug!(transport = self.transport.as_str(), %relayed, "TURN allocation created");
                    self.state = RelayState::Allocated(relayed);
                    self.events.push_back(RelayEvent::Allocated { relayed });
                }
            }
            TurnEvent::AllocationCreated(..) => {}
            TurnEvent::AllocationCreateFailed(family) => {
                self.fail(format!("allocation refused ({family:?})"));
            }
            TurnEvent::PermissionCreated(_, ip) => {
                let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting).into_iter().partition(|(to, _)| to.ip() == ip);
                self.waiting = rest;
                for (to, data) in ready {
                    self.send_now(t, to, &data);
                    if !self.channels.contains(&to) && self.channels.len() < MAX_CHANNELS {
                        self.channels.insert(to);
                        let _ = self.client.bind_channel(TransportType::Udp, to, t);
                    }
                }
            }
            TurnEvent::PermissionCreateFailed(_, ip) => {
                tracing::debug!(%ip, "TURN permission refused");
                let before = self.waiting.len();
                self.waiting.retain(|(to, _)| to.ip() != ip);
                self.counters.dropped += (before - self.waiting.len()) as u64;
            }
            TurnEvent::ChannelCreateFailed(_, peer) => {
                // Send indications keep working; don't ask again.
                tracing::debug!(%peer, "TURN channel bind refused");
            }
            TurnEvent::ChannelCreated(..) | TurnEvent::TcpConnected(_) | TurnEvent::TcpConnectFailed(_) => {}
        }
    }
}

/// Identifies one relay (and its link) in a room.
pub(crate) type RelayId = u64;

/// What [`Relays`] tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RelaysEvent {
    /// Add this relayed candidate to `role`'s peer connection (and trickle it).
    Candidate { role: Role, relayed: SocketAddr, local: SocketAddr },
    /// A relay of `role` failed; `all_failed` when no relay of `role` is left.
    Failed { role: Role, server: String, reason: String, all_failed: bool },
}

struct Entry {
    role: Role,
    server: TurnServer,
    /// None until the link to the server is up.
    relay: Option<Relay>,
    /// Allocated but not yet handed out as a candidate (waiting for the UDP relay).
    held_since: Option<Instant>,
    announced: bool,
    /// Failed before the relay existed (link never came up).
    failed: bool,
}

/// Every relay of one room: both peer connections × the join's TURN servers.
#[derive(Default)]
pub(crate) struct Relays {
    entries: HashMap<RelayId, Entry>,
    /// Relayed address → relay, for str0m's transmits.
    by_relayed: HashMap<SocketAddr, RelayId>,
    next_id: RelayId,
    events: VecDeque<RelaysEvent>,
    /// Counters of relays that are gone (closed, failed or replaced).
    retired: RelayCounters,
    /// Allocations made / failed since the room started.
    pub allocated: u64,
    pub failed: u64,
}

impl Relays {
    /// A relay of `role` on `server`: returns its id; the driver opens the link and calls
    /// [`Relays::link_up`] (or [`Relays::link_failed`]).
    pub(crate) fn add(&mut self, role: Role, server: TurnServer) -> RelayId {
        self.next_id += 1;
        let id = self.next_id;
        self.entries.insert(id, Entry { role, server, relay: None, held_since: None, announced: false, failed: false });
        id
    }

    /// Relays configured for `role`.
    #[cfg(test)]
    pub(crate) fn count(&self, role: Role) -> usize {
        self.entries.values().filter(|e| e.role == role).count()
    }

    /// The link is connected: start allocating.
    pub(crate) fn link_up(&mut self, id: RelayId, local: SocketAddr, remote: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>, now: Instant) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        if e.relay.is_some() || e.failed {
            return;
        }
        match Relay::new(&e.server, local, remote, tls, now) {
            Ok(r) => e.relay = Some(r),
            Err(err) => {
                e.failed = true;
                let ev = self.failure(id, err.to_string());
                self.events.push_back(ev);
            }
        }
        self.collect(now);
    }

    /// The link failed or closed.
    pub(crate) fn link_failed(&mut self, id: RelayId, why: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        match e.relay.as_mut() {
            Some(r) => r.link_failed(why),
            None if !e.failed => {
                e.failed = true;
                let ev = self.failure(id, format!("connection to the TURN server: {why}"));
                self.events.push_back(ev);
            }
            None => {}
        }
        self.collect(now);
    }

    fn failure(&mut self, id: RelayId, reason: String) -> RelaysEvent {
        self.failed += 1;
        let e = &self.entries[&id];
        let role = e.role;
        let all_failed = self.entries.values().filter(|o| o.role == role).all(|o| o.failed || o.relay.as_ref().is_some_and(Relay::is_failed));
        RelaysEvent::Failed { role, server: e.server.to_string(), reason, all_failed }
    }

    /// Bytes from relay `id`'s server: (role, relayed address, peer, packet) for the peers.
    pub(crate) fn handle_input(&mut self, id: RelayId, now: Instant, bytes: &[u8]) -> Vec<(Role, SocketAddr, SocketAddr, Vec<u8>)> {
        let Some(e) = self.entries.get_mut(&id) else { return Vec::new() };
        let role = e.role;
        let Some(r) = e.relay.as_mut() else { return Vec::new() };
        let got = r.handle_input(now, bytes);
        let relayed = r.relayed();
        self.collect(now);
        match relayed {
            Some(relayed) => got.into_iter().map(|(peer, data)| (role, relayed, peer, data)).collect(),
            None => Vec::new(),
        }
    }

    /// If `source` is one of our relayed addresses, send `data` through that relay and return
    /// true (str0m's transmit from a relayed candidate); false for our own sockets' transmits.
    pub(crate) fn send(&mut self, now: Instant, source: SocketAddr, to: SocketAddr, data: &[u8]) -> bool {
        let Some(id) = self.by_relayed.get(&source).copied() else { return false };
        if let Some(r) = self.entries.get_mut(&id).and_then(|e| e.relay.as_mut()) {
            r.send(now, to, data);
        }
        self.collect(now);
        true
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            if let Some(r) = e.relay.as_mut() {
                if r.next_timeout() <= now {
                    r.handle_timeout(now);
                }
            }
        }
        self.collect(now);
    }

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        let relays = self.entries.values().filter_map(|e| e.relay.as_ref()).map(Relay::next_timeout);
        let held = self.entries.values().filter_map(|e| e.held_since).map(|t| t + HOLD_FOR_UDP);
        relays.chain(held).min()
    }

    /// Bytes for the servers: (relay, bytes).
    pub(crate) fn poll_transmit(&mut self) -> Option<(RelayId, Vec<u8>)> {
        for (id, e) in self.entries.iter_mut() {
            if let Some(b) = e.relay.as_mut().and_then(Relay::poll_transmit) {
                return Some((*id, b));
            }
        }
        None
    }

    pub(crate) fn poll_event(&mut self) -> Option<RelaysEvent> {
        self.events.pop_front()
    }

    /// Relays that are gone for good (their links can close).
    pub(crate) fn dead(&self) -> Vec<RelayId> {
        self.entries.iter().filter(|(_, e)| e.failed || e.relay.as_ref().is_some_and(Relay::is_failed)).map(|(id, _)| *id).collect()
    }

    /// Give every allocation back (room closing or peers replaced) and forget them. Returns the
    /// last bytes to send before the links close.
    pub(crate) fn close_all(&mut self, now: Instant) -> Vec<(RelayId, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            if let Some(r) = e.relay.as_mut() {
                r.close(now);
                while let Some(b) = r.poll_transmit() {
                    out.push((*id, b));
                }
                add_counters(&mut self.retired, r.counters);
            }
        }
        self.entries.clear();
        self.by_relayed.clear();
        self.events.clear();
        out
    }

    /// Sum of every relay's counters (live and retired).
    pub(crate) fn counters(&self) -> RelayCounters {
        let mut c = self.retired;
        for r in self.entries.values().filter_map(|e| e.relay.as_ref()) {
            add_counters(&mut c, r.counters);
        }
        c
    }

    /// Turn each relay's events into ours, in the order candidates should be added.
    fn collect(&mut self, now: Instant) {
        let ids: Vec<RelayId> = self.entries.keys().copied().collect();
        for id in ids {
            while let Some(ev) = self.entries.get_mut(&id).and_then(|e| e.relay.as_mut()).and_then(Relay::poll_event) {
                match ev {
                    RelayEvent::Allocated { relayed } => {
                        self.allocated += 1;
                        self.by_relayed.insert(relayed, id);
                        if let Some(e) = self.entries.get_mut(&id) {
                            e.held_since = Some(now);
                        }
                    }
                    RelayEvent::Failed(reason) => {
                        if let Some(relayed) = self.entries.get(&id).and_then(|e| e.relay.as_ref()).and_then(|r| match &r.state {
                            RelayState::Failed(_) => None,
                            _ => r.relayed(),
                        }) {
                            self.by_relayed.remove(&relayed);
                        }
                        let ev = self.failure(id, reason);
                        self.events.push_back(ev);
                    }
                }
            }
        }
        // Hand out allocated candidates: UDP relays at once, TCP/TLS ones once no UDP relay of
        // the same peer connection is still allocating (or after HOLD_FOR_UDP).
        let udp_pending: HashSet<Role> = self
            .entries
            .values()
            .filter(|e| e.server.transport == TurnTransport::Udp && !e.failed && e.relay.as_ref().is_none_or(Relay::is_allocating))
            .map(|e| e.role)
            .collect();
        let mut ready: Vec<(RelayId, Role, SocketAddr, SocketAddr, bool)> = Vec::new();
        for (id, e) in self.entries.iter() {
            let (Some(since), Some(r)) = (e.held_since, e.relay.as_ref()) else { continue };
            let Some(relayed) = r.relayed() else { continue };
            let is_udp = r.transport() == TurnTransport::Udp;
            if is_udp || !udp_pending.contains(&e.role) || now >= since + HOLD_FOR_UDP {
                ready.push((*id, e.role, relayed, r.client.local_addr(), is_udp));
            }
        }
        // UDP first, then by id (the order the servers were listed in).
        ready.sort_by_key(|(id, _, _, _, udp)| (!*udp, *id));
        for (id, role, relayed, local, _) in ready {
            if let Some(e) = self.entries.get_mut(&id) {
                e.held_since = None;
                e.announced = true;
            }
            self.events.push_back(RelaysEvent::Candidate { role, relayed, local });
        }
    }
}

fn add_counters(into: &mut RelayCounters, c: RelayCounters) {
    into.packets_out += c.packets_out;
    into.packets_in += c.packets_in;
    into.dropped += c.dropped;
}

/// The TLS configuration for `turns:` servers: the system's roots (`SSL_CERT_FILE` /
/// `SSL_CERT_DIR` are honoured) plus `extra_pem` (PEM certificates of a private CA).
pub(crate) fn tls_config(extra_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in system_roots().iter() {
        let _ = roots.add(cert.clone());
    }
    if !extra_pem.is_empty() {
        let mut n = 0;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(extra_pem) {
            let cert: rustls::pki_types::CertificateDer<'static> = cert.map_err(|e| format!("TURN CA PEM: {e}"))?;
            roots.add(cert).map_err(|e| format!("TURN CA certificate: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err("TURN CA PEM holds no certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system's trust store, read once per process.
fn system_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let r = rustls_native_certs::load_native_certs();
        for e in r.errors.iter().take(3) {
            tracing::debug!(error = %e, "system root certificate not loaded");
        }
        r.certs
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
    use turn_server_proto::server::TurnServer as Server;
    use turn_server_rustls::RustlsTurnServer;

    const USER: &str = "user";
    const PASS: &str = "pass";

    fn server_url(transport: TurnTransport, username: &str) -> super::TurnServer {
        super::TurnServer { transport, host: "localhost".into(), port: 3478, username: username.into(), credential: PASS.into() }
    }

    /// The other side: a TURN server (turn-server-proto, the same family as our client but an
    /// independent state machine) wired to our relay in memory, with one peer behind it.
    struct World<S: TurnServerApi> {
        server: S,
        epoch: Instant,
        client: SocketAddr,
        listen: SocketAddr,
        relayed: Option<SocketAddr>,
        transport: TransportType,
        /// What the peer received from the relay: (from relayed address, bytes).
        peer_rx: Vec<Vec<u8>>,
        /// What our relay received from the peer.
        got: Vec<(SocketAddr, Vec<u8>)>,
        /// Bytes we sent the server, for looking at their framing.
        sent: Vec<Vec<u8>>,
    }

    const PEER: &str = "127.0.0.1:40000";
    const RELAY: &str = "127.0.0.1:50000";

    impl<S: TurnServerApi> World<S> {
        fn new(server: S, transport: TransportType, now: Instant) -> Self {
            let listen = server.listen_address();
            World {
                server,
                epoch: now,
                client: "127.0.0.1:30000".parse().unwrap(),
                listen,
                relayed: None,
                transport,
                peer_rx: Vec::new(),
                got: Vec::new(),
                sent: Vec::new(),
            }
        }

        fn t(&self, now: Instant) -> turn_server_proto::types::Instant {
            turn_server_proto::types::Instant::from_nanos(now.duration_since(self.epoch).as_nanos() as i64)
        }

        fn deliver(&mut self, relay: &mut Relay, now: Instant, to: SocketAddr, from: SocketAddr, data: Vec<u8>) {
            if to == self.client {
                self.got.extend(relay.handle_input(now, &data));
            } else if to == PEER.parse().unwrap() {
                assert_eq!(Some(from), self.relayed, "peer data comes from the relayed address");
                self.peer_rx.push(data);
            }
        }

        /// Move bytes both ways until quiet.
        fn pump(&mut self, relay: &mut Relay, now: Instant) {
            let t = self.t(now);
            for _ in 0..100 {
                let mut moved = false;
                while let Some(bytes) = relay.poll_transmit() {
                    moved = true;
                    self.sent.push(bytes.clone());
                    let tx = Transmit::new(bytes, self.transport, self.client, self.listen);
                    if let Some(out) = self.server.recv(tx, t) {
                        let out = out.build();
                        self.deliver(relay, now, out.to, out.from, out.data);
                    }
                }
                loop {
                    match self.server.poll(t) {
                        TurnServerPollRet::AllocateSocket { transport, listen_addr, client_addr, allocation_transport, family } => {
                            moved = true;
                            let relayed: SocketAddr = RELAY.parse().unwrap();
                            self.relayed = Some(relayed);
                            self.server.allocated_socket(transport, listen_addr, client_addr, allocation_transport, family, Ok(relayed), t);
                        }
                        TurnServerPollRet::WaitUntil(_) => break,
                        _ => {}
                    }
                }
                while let Some(out) = self.server.poll_transmit(t) {
                    moved = true;
                    self.deliver(relay, now, out.to, out.from, out.data);
                }
                if !moved {
                    break;
                }
            }
        }

        /// Let `dur` pass: the relay's deadlines in order (the client paces its requests 50 ms
        /// apart), moving bytes after each. Returns the time reached.
        fn run(&mut self, relay: &mut Relay, now: Instant, dur: Duration) -> Instant {
            let end = now + dur;
            let mut t = now;
            self.pump(relay, t);
            for _ in 0..10_000 {
                let next = relay.next_timeout();
                if next > end {
                    break;
                }
                t = next.max(t);
                relay.handle_timeout(t);
                self.pump(relay, t);
            }
            end
        }

        /// The peer sends `data` to our relayed address.
        fn peer_send(&mut self, relay: &mut Relay, now: Instant, data: &[u8]) {
            let t = self.t(now);
            let tx = Transmit::new(data.to_vec(), TransportType::Udp, PEER.parse().unwrap(), self.relayed.unwrap());
            if let Some(out) = self.server.recv(tx, t) {
                let out = out.build();
                self.deliver(relay, now, out.to, out.from, out.data);
            }
            self.pump(relay, now);
        }
    }

    fn log() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    }

    fn udp_world(now: Instant) -> World<Server> {
        log();
        let mut server = Server::new(TransportType::Udp, "127.0.0.1:3478".parse().unwrap(), "livekit".into());
        server.add_user(USER.into(), PASS.into());
        World::new(server, TransportType::Udp, now)
    }

    /// Run until allocated; returns the relayed address and the time.
    fn allocate<S: TurnServerApi>(w: &mut World<S>, relay: &mut Relay, now: Instant) -> (SocketAddr, Instant) {
        let t = w.run(relay, now, Duration::from_millis(500));
        match relay.poll_event() {
            Some(RelayEvent::Allocated { relayed }) => (relayed, t),
            other => panic!("expected an allocation, got {other:?}"),
        }
    }

    const STEP: Duration = Duration::from_millis(200);

    #[test]
    fn udp_relay_carries_packets_both_ways_on_a_channel() {
        let now = Instant::now();
        let mut w = udp_world(now);
        let mut relay = Relay::new(&server_url(TurnTransport::Udp, USER), w.client, w.listen, None, now).unwrap();
        let (relayed, now) = allocate(&mut w, &mut relay, now);
        assert_eq!(relayed, RELAY.parse::<SocketAddr>().unwrap());
        assert_eq!(relay.relayed(), Some(relayed));

        // First packet waits for the permission, then goes.
        let peer: SocketAddr = PEER.parse().unwrap();
        relay.send(now, peer, b"check-1");
        let now = w.run(&mut relay, now, STEP);
        assert_eq!(w.peer_rx, vec![b"check-1".to_vec()]);

        // And back.
        w.peer_send(&mut relay, now, b"reply-1");
        assert_eq!(w.got, vec![(peer, b"reply-1".to_vec())]);

        // Once the channel is bound, packets travel as ChannelData (4-byte header, channel
        // numbers 0x4000-0x7FFF) instead of 36-byte Send indications.
        let now = w.run(&mut relay, now, STEP);
        w.sent.clear();
        relay.send(now, peer, b"media-2");
        w.pump(&mut relay, now);
        assert_eq!(w.peer_rx.last().unwrap(), b"media-2");
        let framed = w.sent.iter().find(|b| b.windows(7).any(|x| x == b"media-2")).expect("sent");
        assert_eq!(&framed[4..11], b"media-2", "ChannelData header: {framed:?}");
        assert_eq!(framed[0] & 0xc0, 0x40, "channel number");
        assert_eq!(relay.counters.packets_out, 2);
        assert_eq!(relay.counters.packets_in, 1);
        assert_eq!(relay.counters.dropped, 0);
    }

    /// The allocation, the permission and the channel outlive their lifetimes (10 min, 5 min,
    /// 10 min on the server) because the client refreshes them: an hour of traffic later the
    /// relay still carries packets both ways.
    #[test]
    fn udp_relay_stays_alive_for_an_hour() {
        let start = Instant::now();
        let mut w = udp_world(start);
        let mut relay = Relay::new(&server_url(TurnTransport::Udp, USER), w.client, w.listen, None, start).unwrap();
        let (_, mut now) = allocate(&mut w, &mut relay, start);
        let peer: SocketAddr = PEER.parse().unwrap();
        relay.send(now, peer, b"first");
        now = w.run(&mut relay, now, STEP);
        let mut sent = 1;
        while now < start + Duration::from_secs(3600) {
            now = w.run(&mut relay, now, Duration::from_secs(5));
            relay.send(now, peer, format!("m{sent}").as_bytes());
            sent += 1;
            w.pump(&mut relay, now);
        }
        assert!(!relay.is_failed());
        assert_eq!(w.peer_rx.len(), sent, "every packet reached the peer");
        w.peer_send(&mut relay, now, b"still here");
        assert_eq!(w.got.last().unwrap(), &(peer, b"still here".to_vec()));
        assert!(relay.next_timeout() > now, "a future deadline, not a busy loop");
        assert_eq!(relay.counters.dropped, 0);
    }

    #[test]
    fn wrong_credentials_fail_the_relay_by_the_deadline() {
        let now = Instant::now();
        let mut w = udp_world(now);
        let mut relay = Relay::new(&server_url(TurnTransport::Udp, "intruder"), w.client, w.listen, None, now).unwrap();
        // The server answers 401 to the unknown user; the client does not trust an
        // unauthenticated error and retries until our deadline ends the attempt.
        let t = w.run(&mut relay, now, ALLOCATE_TIMEOUT);
        assert!(relay.is_failed(), "{relay:?}");
        assert!(w.relayed.is_none(), "no allocation was made");
        assert!(matches!(relay.poll_event(), Some(RelayEvent::Failed(_))));
        relay.send(t, PEER.parse().unwrap(), b"x");
        assert_eq!(relay.counters.dropped, 1);
    }

    #[test]
    fn silent_server_fails_the_relay_by_the_deadline() {
        let now = Instant::now();
        let mut relay =
            Relay::new(&server_url(TurnTransport::Udp, USER), "127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), None, now).unwrap();
        let mut t = now;
        let mut wakeups = 0;
        while !relay.is_failed() {
            t = relay.next_timeout().max(t);
            relay.handle_timeout(t);
            while relay.poll_transmit().is_some() {}
            wakeups += 1;
            assert!(wakeups < 100, "deadlines move on");
        }
        assert!(t <= now + ALLOCATE_TIMEOUT);
        assert!(matches!(relay.poll_event(), Some(RelayEvent::Failed(r)) if r.contains("no allocation")));
    }

    fn tls_world(now: Instant) -> (World<RustlsTurnServer>, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let mut server = RustlsTurnServer::new("127.0.0.1:5349".parse().unwrap(), "livekit".into(), Arc::new(config));
        server.add_user(USER.into(), PASS.into());
        (World::new(server, TransportType::Tcp, now), ck.cert.pem())
    }

    #[test]
    fn tls_relay_checks_the_certificate_and_carries_packets() {
        let now = Instant::now();
        let (mut w, ca) = tls_world(now);
        let tls = tls_config(ca.as_bytes()).unwrap();
        let mut relay = Relay::new(&server_url(TurnTransport::Tls, USER), w.client, w.listen, Some(tls), now).unwrap();
        let (relayed, mut now) = allocate(&mut w, &mut relay, now);
        assert_eq!(relayed, RELAY.parse::<SocketAddr>().unwrap());
        let peer: SocketAddr = PEER.parse().unwrap();
        for i in 0..5 {
            relay.send(now, peer, format!("over tls {i}").as_bytes());
            now = w.run(&mut relay, now, STEP);
            w.peer_send(&mut relay, now, format!("back {i}").as_bytes());
        }
        assert_eq!(w.peer_rx.len(), 5);
        assert_eq!(w.peer_rx[4], b"over tls 4");
        assert_eq!(w.got.len(), 5);
        assert_eq!(w.got[4], (peer, b"back 4".to_vec()));
        // Nothing readable went over the wire.
        assert!(!w.sent.iter().any(|b| b.windows(8).any(|x| x == b"over tls")));
    }

    #[test]
    fn tls_relay_refuses_a_certificate_nobody_vouches_for() {
        let now = Instant::now();
        let (mut w, _ca) = tls_world(now);
        let tls = tls_config(b"").unwrap();
        let mut relay = Relay::new(&server_url(TurnTransport::Tls, USER), w.client, w.listen, Some(tls), now).unwrap();
        w.run(&mut relay, now, Duration::from_secs(1));
        assert!(relay.is_failed(), "refused at the handshake, not by the deadline: {relay:?}");
        assert!(relay.relayed().is_none());
        assert!(w.relayed.is_none(), "no allocation was made");
    }

    #[test]
    fn turn_urls_as_libwebrtc_reads_them() {
        use TurnTransport::*;
        assert_eq!(parse_turn_url("turn:10.0.0.1:3478?transport=udp"), Some((Udp, "10.0.0.1".into(), 3478)));
        assert_eq!(parse_turn_url("turns:turn.example.com:443?transport=tcp"), Some((Tls, "turn.example.com".into(), 443)));
        assert_eq!(parse_turn_url("turn:turn.example.com"), Some((Udp, "turn.example.com".into(), 3478)));
        assert_eq!(parse_turn_url("turns:turn.example.com"), Some((Tls, "turn.example.com".into(), 5349)));
        assert_eq!(parse_turn_url("turn:[::1]:3479?transport=tcp"), Some((Tcp, "::1".into(), 3479)));
        assert_eq!(parse_turn_url("turn:[::1]"), Some((Udp, "::1".into(), 3478)));
        for bad in [
            "stun:stun.l.google.com:19302",
            "turns:host:443?transport=udp",
            "turn:host:0",
            "turn:host:99999",
            "turn::3478",
            "turn:[::1",
            "turn:host?transport=sctp",
            "turn:user@host",
            "http://host",
            "",
        ] {
            assert_eq!(parse_turn_url(bad), None, "{bad}");
        }
        assert_eq!(parse_turn_url(&format!("turn:{}", "a".repeat(600))), None);

        let ice = |urls: &[&str], user: &str| proto::IceServer {
            urls: urls.iter().map(|s| s.to_string()).collect(),
            username: user.into(),
            credential: "secret".into(),
        };
        let servers = turn_servers(&[
            ice(&["stun:stun.example.com:3478"], ""),
            ice(&["turn:1.2.3.4:3478?transport=udp", "turns:turn.example.com:443?transport=tcp"], "u1"),
            ice(&["turn:1.2.3.4:3478?transport=udp"], "u2"),
            ice(&["turn:5.6.7.8:3478"], ""),
            ice(&["turn:9.9.9.1", "turn:9.9.9.2", "turn:9.9.9.3"], "u3"),
        ]);
        let shown: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shown,
            ["turn:1.2.3.4:3478?transport=udp", "turns:turn.example.com:443?transport=tcp", "turn:9.9.9.1:3478?transport=udp", "turn:9.9.9.2:3478?transport=udp"]
        );
        assert_eq!(servers[0].username, "u1");
        assert!(!format!("{:?}", servers[0]).contains("secret"), "credentials stay out of logs");
    }

    /// Relays of one room: a TLS relay allocated before the UDP one of the same peer connection
    /// is handed out after it (UDP relays get the higher local preference), and str0m's
    /// transmits from a relayed address go through the relay that owns it.
    #[test]
    fn relays_order_candidates_udp_first_and_route_transmits() {
        let now = Instant::now();
        let (mut tls_w, ca) = tls_world(now);
        let mut udp_w = udp_world(now);
        let mut relays = Relays::default();
        let udp = relays.add(Role::Publisher, server_url(TurnTransport::Udp, USER));
        let tls = relays.add(Role::Publisher, server_url(TurnTransport::Tls, USER));
        assert_eq!(relays.count(Role::Publisher), 2);

        // TLS link up and allocated first.
        relays.link_up(tls, tls_w.client, tls_w.listen, Some(tls_config(ca.as_bytes()).unwrap()), now);
        let pump = |relays: &mut Relays, id: RelayId, w: &mut dyn FnMut(&mut Relay)| {
            let r = relays.entries.get_mut(&id).unwrap().relay.as_mut().unwrap();
            w(r);
        };
        pump(&mut relays, tls, &mut |r| {
            tls_w.run(r, now, STEP);
        });
        relays.collect(now);
        assert_eq!(relays.poll_event(), None, "held while the UDP relay is allocating");

        // UDP link up: its candidate comes first, the TLS one right after.
        relays.link_up(udp, udp_w.client, udp_w.listen, None, now);
        pump(&mut relays, udp, &mut |r| {
            udp_w.run(r, now, STEP);
        });
        relays.collect(now);
        let relayed = RELAY.parse().unwrap();
        assert_eq!(relays.poll_event(), Some(RelaysEvent::Candidate { role: Role::Publisher, relayed, local: udp_w.client }));
        assert_eq!(relays.poll_event(), Some(RelaysEvent::Candidate { role: Role::Publisher, relayed, local: tls_w.client }));

        // Routing: a transmit from an address that is not ours is not taken.
        assert!(!relays.send(now, "127.0.0.1:9".parse().unwrap(), PEER.parse().unwrap(), b"x"));
        // Both worlds hand out the same relayed address; the last one registered owns it.
        assert!(relays.send(now, relayed, PEER.parse().unwrap(), b"via relay"));

        // A failing relay is reported, and when it is the last, as all failed.
        relays.link_failed(udp, "reset", now);
        match relays.poll_event() {
            Some(RelaysEvent::Failed { role: Role::Publisher, all_failed: false, reason, .. }) => assert!(reason.contains("reset"), "{reason}"),
            other => panic!("{other:?}"),
        }
        relays.link_failed(tls, "reset", now);
        assert!(matches!(relays.poll_event(), Some(RelaysEvent::Failed { all_failed: true, .. })));
        assert_eq!(relays.dead().len(), 2);
        assert_eq!(relays.failed, 2);
    }

    #[test]
    fn a_held_tls_candidate_goes_out_when_udp_is_slow() {
        let now = Instant::now();
        let (mut tls_w, ca) = tls_world(now);
        let mut relays = Relays::default();
        let _udp = relays.add(Role::Subscriber, server_url(TurnTransport::Udp, USER));
        let tls = relays.add(Role::Subscriber, server_url(TurnTransport::Tls, USER));
        relays.link_up(tls, tls_w.client, tls_w.listen, Some(tls_config(ca.as_bytes()).unwrap()), now);
        tls_w.run(relays.entries.get_mut(&tls).unwrap().relay.as_mut().unwrap(), now, STEP);
        relays.collect(now);
        assert_eq!(relays.poll_event(), None);
        let at = relays.next_timeout().unwrap();
        assert!(at <= now + HOLD_FOR_UDP);
        relays.handle_timeout(at);
        assert!(matches!(relays.poll_event(), Some(RelaysEvent::Candidate { role: Role::Subscriber, .. })));
    }
}
