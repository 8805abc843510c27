//! The I/O side of TURN: one link per relay to its server — a connected UDP socket, or a TCP
//! connection whose bytes are a TLS (or plain) stream that the relay's state machine
//! (`turn.rs`) reads and writes. The links only move bytes.
//!
//! Each link is one task: it resolves the server, connects (bounded by [`CONNECT_TIMEOUT`]),
//! reports [`LinkEvent::Up`] with its addresses, then forwards what arrives as
//! [`LinkEvent::Data`] and writes what the room queues for it (a bounded queue: a full one
//! drops, as a full socket would). Any failure ends the link with [`LinkEvent::Down`]. Links
//! die with the room ([`RelayLinks::clear`]) or when their relay is given up.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::turn::{RelayId, TurnServer, TurnTransport};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes to a stalled TCP connection give up after this long (the link then fails).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued for one link before packets are dropped.
const WRITE_QUEUE: usize = 256;
/// Events from every link waiting for the driver.
pub(crate) const READ_QUEUE: usize = 512;
/// Largest datagram / read chunk.
const MAX_READ: usize = 4096;

/// What a link tells the room's driver.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    Up { id: RelayId, local: SocketAddr, remote: SocketAddr },
    Data { id: RelayId, bytes: Vec<u8> },
    Down { id: RelayId, why: String },
}

struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

/// The TURN links of one room.
pub(crate) struct RelayLinks {
    links: HashMap<RelayId, Link>,
    events_tx: mpsc::Sender<LinkEvent>,
    /// Messages dropped (link queue full, link gone, driver queue full for UDP).
    pub dropped: u64,
}

impl RelayLinks {
    pub(crate) fn new() -> (RelayLinks, mpsc::Receiver<LinkEvent>) {
        let (events_tx, rx) = mpsc::channel(READ_QUEUE);
        (RelayLinks { links: HashMap::new(), events_tx, dropped: 0 }, rx)
    }

    /// Connect relay `id` to `server`; `local_ip` picks the address family to prefer.
    pub(crate) fn open(&mut self, id: RelayId, server: &TurnServer, local_ip: IpAddr) {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let task = tokio::spawn(run_link(id, server.transport, server.host.clone(), server.port, local_ip, rx, self.events_tx.clone()));
        if let Some(old) = self.links.insert(id, Link { tx, task }) {
            old.task.abort();
        }
    }

    pub(crate) fn send(&mut self, id: RelayId, bytes: Vec<u8>) {
        match self.links.get(&id) {
            Some(l) if l.tx.try_send(bytes).is_ok() => {}
            _ => self.dropped += 1,
        }
    }

    /// Stop relay `id`'s link once what is queued for it is written.
    pub(crate) fn close(&mut self, id: RelayId) {
        // Dropping the sender ends the writer after the queue; the task then ends.
        if let Some(l) = self.links.remove(&id) {
            drop(l.tx);
            // The reader half must not outlive the room: bound the task's remaining life.
            let task = l.task;
            tokio::spawn(async move {
                let abort = task.abort_handle();
                if tokio::time::timeout(WRITE_TIMEOUT, task).await.is_err() {
                    abort.abort();
                }
            });
        }
    }

    /// Stop every link now.
    pub(crate) fn clear(&mut self) {
        for (_, l) in self.links.drain() {
            l.task.abort();
        }
    }

    pub(crate) fn ids(&self) -> Vec<RelayId> {
        self.links.keys().copied().collect()
    }
}

impl Drop for RelayLinks {
    fn drop(&mut self) {
        self.clear();
    }
}

async fn resolve(host: &str, port: u16, prefer_v6: bool) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => return Err(format!("resolving {host}: {e}")),
        Err(_) => return Err(format!("resolving {host}: timed out")),
    };
    addrs
        .iter()
        .find(|a| a.is_ipv6() == prefer_v6)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host} has no address"))
}

async fn run_link(
    id: RelayId,
    transport: TurnTransport,
    host: String,
    port: u16,
    local_ip: IpAddr,
    rx: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<LinkEvent>,
) {
    let why = match resolve(&host, port, local_ip.is_ipv6()).await {
        Err(e) => e,
        Ok(remote) => match transport {
            TurnTransport::Udp => udp_link(id, remote, rx, &events).await,
            TurnTransport::Tcp | TurnTransport::Tls => tcp_link(id, remote, rx, &events).await,
        },
    };
    tracing::debug!(id, %why, "TURN link down");
    let _ = events.send(LinkEvent::Down { id, why }).await;
}

async fn udp_link(id: RelayId, remote: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>, events: &mpsc::Sender<LinkEvent>) -> String {
    let bind: SocketAddr = if remote.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let sock = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return format!("bind: {e}"),
    };
    // Connected: only the server's datagrams come in, and local_addr() names the route.
    if let Err(e) = sock.connect(remote).await {
        return format!("connect {remote}: {e}");
    }
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(e) => return format!("local address: {e}"),
    };
    if events.send(LinkEvent::Up { id, local, remote }).await.is_err() {
        return "room gone".into();
    }
    let mut buf = vec![0u8; MAX_READ];
    loop {
        tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) => {
                    // A full driver queue loses the datagram, as a full socket buffer would.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = events.try_send(LinkEvent::Data { id, bytes: buf[..n].to_vec() }) {
                        return "room gone".into();
                    }
                }
                // ICMP port unreachable and the like: the server is not there (yet); the
                // relay's own timers decide when to give up.
                Err(e) => tracing::trace!(id, error = %e, "TURN UDP receive error"),
            },
            m = rx.recv() => match m {
                Some(bytes) => {
                    if let Err(e) = sock.send(&bytes).await {
                        tracing::trace!(id, error = %e, "TURN UDP send error");
                    }
                }
                None => return "closed".into(),
            },
        }
    }
}

async fn tcp_link(id: RelayId, remote: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>, events: &mpsc::Sender<LinkEvent>) -> String {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(remote)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("connect {remote}: {e}"),
        Err(_) => return format!("connect {remote}: timed out"),
    };
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => return format!("local address: {e}"),
    };
    if events.send(LinkEvent::Up { id, local, remote }).await.is_err() {
        return "room gone".into();
    }
    let (mut rd, mut wr) = stream.into_split();
    let reader = async {
        let mut buf = vec![0u8; MAX_READ];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return "closed by the server".to_string(),
                // A stream must not lose bytes: wait for the driver (bounded queue).
                Ok(n) => {
                    if events.send(LinkEvent::Data { id, bytes: buf[..n].to_vec() }).await.is_err() {
                        return "room gone".into();
                    }
                }
                Err(e) => return format!("read: {e}"),
            }
        }
    };
    let writer = async {
        while let Some(bytes) = rx.recv().await {
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return format!("write: {e}"),
                Err(_) => return "write: timed out".to_string(),
            }
        }
        let _ = wr.shutdown().await;
        "closed".to_string()
    };
    tokio::select! {
        why = reader => why,
        why = writer => why,
    }
}
