//! The embedded TURN server, as livekit-server's (`turn:` in livekit.yaml, `pkg/service/turn.go`;
//! pion/turn there, the sans-IO `turn-server-proto` / `turn-server-rustls` here): TURN over UDP
//! on `--turn-port`, over TLS on `--turn-tls-port`, UDP relays on the node IP, realm
//! `livekit`, credentials made per participant at join (`turn_auth.rs`).
//!
//! Peer policy: livekit-server refuses relays to loopback and private addresses unless
//! `turn.allow_restricted_peer_cidrs` allows them, since its TURN only exists to reach its own
//! SFU. devroom relays to its own node IP only (the SFU), whatever that address is.
//!
//! One task owns both state machines, the UDP socket, the TLS connections' writers and the
//! relay sockets; readers (TLS connections, relay sockets) feed it through one bounded queue.
//! Limits: [`MAX_RELAYS`] allocations, [`MAX_TLS_CONNECTIONS`] connections, [`MAX_USERS`]
//! credentials (devroom is a test server: credentials are not forgotten when they expire, and
//! an expired one still allocates — livekit-server refuses a new allocation after its TTL).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use turn_server_proto::api::{SocketAllocateError, TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer;
use turn_server_proto::stun::agent::Transmit;
use turn_server_proto::types::{AddressFamily, TransportType};
use turn_server_rustls::RustlsTurnServer;

use crate::config::Config;

/// livekit-server's `LivekitRealm`.
pub const REALM: &str = "livekit";
const MAX_RELAYS: usize = 1024;
const MAX_TLS_CONNECTIONS: usize = 256;
const MAX_USERS: usize = 100_000;
const IO_QUEUE: usize = 4096;
const WRITE_QUEUE: usize = 512;
const MAX_READ: usize = 4096;

/// What the engine needs to hand out TURN servers at join.
#[derive(Clone)]
pub struct Turn {
    /// `turn:` address (node IP, UDP port), if enabled.
    pub udp: Option<SocketAddr>,
    /// TLS port, if enabled.
    pub tls_port: Option<u16>,
    pub domain: String,
    /// The certificate's PEM (self-signed unless files were given).
    pub cert_pem: Option<String>,
    pub ttl: Duration,
    users: mpsc::Sender<Io>,
}

impl Turn {
    /// The `ice_servers` entry for participant `sid`, as livekit-server's
    /// `iceServersForParticipant` fills it, with its credentials registered.
    pub fn ice_server(&self, api_key: &str, api_secret: &str, sid: &str) -> lk::IceServer {
        let expiry = crate::auth::unix_now() as i64 + self.ttl.as_secs() as i64;
        let username = crate::turn_auth::username(api_key, sid, expiry);
        let credential = crate::turn_auth::password(api_secret, sid, expiry);
        if self.users.try_send(Io::AddUser(username.clone(), credential.clone())).is_err() {
            tracing::warn!("TURN server busy; credentials not registered");
        }
        let mut urls = Vec::new();
        if let Some(a) = self.udp {
            urls.push(format!("turn:{a}?transport=udp"));
        }
        if let Some(p) = self.tls_port {
            urls.push(format!("turns:{}:{p}?transport=tcp", self.domain));
        }
        lk::IceServer { urls, username, credential }
    }
}

/// What the readers and the engine tell the TURN task.
enum Io {
    AddUser(String, String),
    TlsOpen { client: SocketAddr, tx: mpsc::Sender<Vec<u8>> },
    TlsData { client: SocketAddr, bytes: Vec<u8> },
    TlsClosed { client: SocketAddr },
    Relayed { relay: SocketAddr, from: SocketAddr, bytes: Vec<u8> },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Udp,
    Tls,
}

struct RelaySocket {
    sock: Arc<UdpSocket>,
    owner: Which,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the TURN server when `--turn-port` or `--turn-tls-port` is given.
pub async fn start(cfg: &Config) -> anyhow::Result<Option<Turn>> {
    if cfg.turn_port.is_none() && cfg.turn_tls_port.is_none() {
        return Ok(None);
    }
    let node_ip = cfg.advertised_ip();
    let bind_ip = cfg.listen.ip();
    let (io_tx, io_rx) = mpsc::channel(IO_QUEUE);

    let udp = match cfg.turn_port {
        Some(port) => {
            let sock = UdpSocket::bind(SocketAddr::new(bind_ip, port)).await?;
            let listen = SocketAddr::new(node_ip, sock.local_addr()?.port());
            Some((Arc::new(sock), TurnServer::new(TransportType::Udp, listen, REALM.into())))
        }
        None => None,
    };
    let (tls, cert_pem) = match cfg.turn_tls_port {
        Some(port) => {
            let (config, pem) = tls_server_config(cfg)?;
            let listener = TcpListener::bind(SocketAddr::new(bind_ip, port)).await?;
            let listen = SocketAddr::new(node_ip, listener.local_addr()?.port());
            tokio::spawn(accept(listener, io_tx.clone()));
            (Some(RustlsTurnServer::new(listen, REALM.into(), config)), Some(pem))
        }
        None => (None, None),
    };
    if let (Some(path), Some(pem)) = (&cfg.turn_cert_out, &cert_pem) {
        std::fs::write(path, pem)?;
    }
    let turn = Turn {
        udp: udp.as_ref().map(|(_, s)| s.listen_address()),
        tls_port: tls.as_ref().map(|s| s.listen_address().port()),
        domain: cfg.turn_domain.clone(),
        cert_pem,
        ttl: Duration::from_secs(cfg.turn_ttl_secs.max(1)),
        users: io_tx.clone(),
    };
    tracing::info!(udp = ?turn.udp, tls_port = ?turn.tls_port, domain = %turn.domain, "TURN listening");
    let driver = Driver {
        udp,
        tls,
        tls_conns: HashMap::new(),
        relays: HashMap::new(),
        users: 0,
        io_tx,
        node_ip,
        bind_ip,
        epoch: Instant::now(),
        dropped: 0,
    };
    tokio::spawn(driver.run(io_rx));
    Ok(Some(turn))
}

/// The certificate from `--turn-cert-file`/`--turn-key-file`, or a self-signed one.
fn tls_server_config(cfg: &Config) -> anyhow::Result<(Arc<rustls::ServerConfig>, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (chain, key, pem) = match (&cfg.turn_cert_file, &cfg.turn_key_file) {
        (Some(c), Some(k)) => {
            let pem = std::fs::read_to_string(c)?;
            let chain = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(k)?;
            (chain, key, pem)
        }
        _ => {
            let ck = rcgen::generate_simple_self_signed(vec![cfg.turn_domain.clone()])?;
            let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            (vec![ck.cert.der().clone()], key, ck.cert.pem())
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok((Arc::new(config), pem))
}

/// Accepts TLS connections; each gets a reader feeding the TURN task and a writer it feeds.
async fn accept(listener: TcpListener, io: mpsc::Sender<Io>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TURN/TLS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        if io.send(Io::TlsOpen { client, tx }).await.is_err() {
            return;
        }
        let writer = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let io = io.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_READ];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.send(Io::TlsData { client, bytes: buf[..n].to_vec() }).await.is_err() {
                            break;
                        }
                    }
                }
            }
            writer.abort();
            let _ = io.send(Io::TlsClosed { client }).await;
        });
    }
}

struct Driver {
    udp: Option<(Arc<UdpSocket>, TurnServer)>,
    tls: Option<RustlsTurnServer>,
    tls_conns: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// By relayed address (node IP, port).
    relays: HashMap<SocketAddr, RelaySocket>,
    users: usize,
    io_tx: mpsc::Sender<Io>,
    node_ip: IpAddr,
    bind_ip: IpAddr,
    epoch: Instant,
    /// Packets dropped (queues full, peers the policy refuses).
    dropped: u64,
}

impl Driver {
    fn t(&self) -> turn_server_proto::types::Instant {
        turn_server_proto::types::Instant::from_nanos(self.epoch.elapsed().as_nanos().min(i64::MAX as u128) as i64)
    }

    fn instant_at(&self, t: turn_server_proto::types::Instant) -> Instant {
        self.epoch + Duration::from_nanos(t.as_nanos().max(0) as u64)
    }

    async fn run(mut self, mut io: mpsc::Receiver<Io>) {
        let udp_sock = self.udp.as_ref().map(|(s, _)| s.clone());
        let mut buf = vec![0u8; MAX_READ];
        loop {
            let next = self.drive();
            tokio::select! {
                r = recv_udp(udp_sock.as_deref(), &mut buf) => match r {
                    Ok((n, from)) => self.on_udp(from, buf[..n].to_vec()),
                    Err(e) => tracing::trace!(error = %e, "TURN UDP receive error"),
                },
                m = io.recv() => match m {
                    Some(m) => self.on_io(m),
                    None => break,
                },
                _ = tokio::time::sleep_until(next.into()) => {}
            }
        }
    }

    fn on_udp(&mut self, from: SocketAddr, bytes: Vec<u8>) {
        let t = self.t();
        let Some((_, server)) = self.udp.as_mut() else { return };
        let to = server.listen_address();
        if let Some(out) = server.recv(Transmit::new(bytes, TransportType::Udp, from, to), t) {
            let out = out.build();
            self.route(out.transport, out.from, out.to, out.data);
        }
    }

    fn on_io(&mut self, m: Io) {
        let t = self.t();
        match m {
            Io::AddUser(user, pass) => {
                if self.users >= MAX_USERS {
                    tracing::warn!("too many TURN credentials; not registered");
                    return;
                }
                self.users += 1;
                if let Some((_, s)) = self.udp.as_mut() {
                    s.add_user(user.clone(), pass.clone());
                }
                if let Some(s) = self.tls.as_mut() {
                    s.add_user(user, pass);
                }
            }
            Io::TlsOpen { client, tx } => {
                if self.tls_conns.len() >= MAX_TLS_CONNECTIONS {
                    tracing::warn!(%client, "too many TURN/TLS connections; refused");
                    return;
                }
                self.tls_conns.insert(client, tx);
            }
            Io::TlsData { client, bytes } => {
                let Some(server) = self.tls.as_mut() else { return };
                let to = server.listen_address();
                if let Some(out) = server.recv(Transmit::new(bytes, TransportType::Tcp, client, to), t) {
                    let out = out.build();
                    self.route(out.transport, out.from, out.to, out.data);
                }
            }
            Io::TlsClosed { client } => {
                self.tls_conns.remove(&client);
            }
            Io::Relayed { relay, from, bytes } => {
                let Some(owner) = self.relays.get(&relay).map(|r| r.owner) else { return };
                let tx = Transmit::new(bytes, TransportType::Udp, from, relay);
                let out = match owner {
                    Which::Udp => self.udp.as_mut().and_then(|(_, s)| s.recv(tx, t)).map(|o| o.build()),
                    Which::Tls => self.tls.as_mut().and_then(|s| s.recv(tx, t)).map(|o| o.build()),
                };
                if let Some(out) = out {
                    self.route(out.transport, out.from, out.to, out.data);
                }
            }
        }
    }

    /// Send what a state machine produced to where it goes.
    fn route(&mut self, transport: TransportType, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if let Some((sock, server)) = self.udp.as_ref() {
            if transport == TransportType::Udp && from == server.listen_address() {
                if sock.try_send_to(&data, to).is_err() {
                    self.dropped += 1;
                }
                return;
            }
        }
        if let Some(server) = self.tls.as_ref() {
            if transport == TransportType::Tcp && from == server.listen_address() {
                match self.tls_conns.get(&to) {
                    Some(tx) if tx.try_send(data).is_ok() => {}
                    _ => self.dropped += 1,
                }
                return;
            }
        }
        if let Some(relay) = self.relays.get(&from) {
            // Only the SFU is reachable through this relay.
            if to.ip() != self.node_ip || relay.sock.try_send_to(&data, to).is_err() {
                self.dropped += 1;
            }
            return;
        }
        tracing::trace!(%from, %to, "TURN transmit with no route");
        self.dropped += 1;
    }

    /// Poll both servers until they only wait; returns when to poll again.
    fn drive(&mut self) -> Instant {
        let mut next = Instant::now() + Duration::from_secs(1);
        for which in [Which::Udp, Which::Tls] {
            for _ in 0..256 {
                let t = self.t();
                let ret = match which {
                    Which::Udp => match self.udp.as_mut() {
                        Some((_, s)) => s.poll(t),
                        None => break,
                    },
                    Which::Tls => match self.tls.as_mut() {
                        Some(s) => s.poll(t),
                        None => break,
                    },
                };
                self.flush(which);
                match ret {
                    TurnServerPollRet::WaitUntil(at) => {
                        if at > t {
                            next = next.min(self.instant_at(at));
                            break;
                        }
                    }
                    TurnServerPollRet::AllocateSocket { transport, listen_addr, client_addr, allocation_transport, family } => {
                        let result = self.allocate(which, allocation_transport, family);
                        match which {
                            Which::Udp => {
                                if let Some((_, s)) = self.udp.as_mut() {
                                    s.allocated_socket(transport, listen_addr, client_addr, allocation_transport, family, result, t)
                                }
                            }
                            Which::Tls => {
                                if let Some(s) = self.tls.as_mut() {
                                    s.allocated_socket(transport, listen_addr, client_addr, allocation_transport, family, result, t)
                                }
                            }
                        }
                    }
                    TurnServerPollRet::SocketClose { listen_addr, .. } => {
                        if let Some(r) = self.relays.remove(&listen_addr) {
                            r.task.abort();
                        }
                    }
                    TurnServerPollRet::TcpClose { remote_addr, .. } => {
                        self.tls_conns.remove(&remote_addr);
                    }
                    // TCP allocations (RFC 6062) are refused above; nothing to connect.
                    TurnServerPollRet::TcpConnect { .. } => {}
                }
                self.flush(which);
            }
        }
        next.max(Instant::now())
    }

    fn flush(&mut self, which: Which) {
        loop {
            let t = self.t();
            let out = match which {
                Which::Udp => self.udp.as_mut().and_then(|(_, s)| s.poll_transmit(t)),
                Which::Tls => self.tls.as_mut().and_then(|s| s.poll_transmit(t)),
            };
            let Some(out) = out else { break };
            self.route(out.transport, out.from, out.to, out.data);
        }
    }

    /// A UDP relay socket on the node IP for an allocation.
    fn allocate(&mut self, owner: Which, transport: TransportType, family: AddressFamily) -> Result<SocketAddr, SocketAllocateError> {
        if transport != TransportType::Udp || (family == AddressFamily::IPV4) != self.node_ip.is_ipv4() {
            return Err(SocketAllocateError::AddressFamilyNotSupported);
        }
        if self.relays.len() >= MAX_RELAYS {
            return Err(SocketAllocateError::InsufficientCapacity);
        }
        let sock = std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))
            .and_then(|s| s.set_nonblocking(true).map(|_| s))
            .and_then(UdpSocket::from_std)
            .map_err(|_| SocketAllocateError::InsufficientCapacity)?;
        let port = sock.local_addr().map_err(|_| SocketAllocateError::InsufficientCapacity)?.port();
        let relay = SocketAddr::new(self.node_ip, port);
        let sock = Arc::new(sock);
        let reader = sock.clone();
        let io = self.io_tx.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_READ];
            loop {
                match reader.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        // A full queue loses the packet, as a full socket would.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = io.try_send(Io::Relayed { relay, from, bytes: buf[..n].to_vec() }) {
                            break;
                        }
                    }
                    Err(e) => tracing::trace!(error = %e, "TURN relay receive error"),
                }
            }
        });
        tracing::debug!(%relay, ?owner, "TURN relay allocated");
        self.relays.insert(relay, RelaySocket { sock, owner, task });
        Ok(relay)
    }
}

async fn recv_udp(sock: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}
