//! ICE over TCP, client side (RFC 6544 active candidates, RFC 4571 framing). livekit-server
//! offers passive TCP candidates (port 7881) and, after one UDP failure, only those; so a peer
//! connection also carries an active TCP candidate, and a TCP transmit str0m produces opens (or
//! reuses) a connection to its destination.
//!
//! Each link is a task pair: a writer fed by a bounded queue (a full queue drops the packet, as
//! a full UDP socket would) and a reader that hands frames to the room's driver through one
//! bounded channel. Links are keyed by (peer connection, server address) and die with the peer
//! connection ([`TcpLinks::clear`]) or when the server closes them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::peer::Role;

/// The port of an active TCP candidate (RFC 6544: the client does not listen; 9 is discard).
pub(crate) const ACTIVE_PORT: u16 = 9;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued for one link before packets are dropped.
const WRITE_QUEUE: usize = 256;
/// Frames from every link waiting for the driver.
pub(crate) const READ_QUEUE: usize = 512;
const MAX_FRAME: usize = 4096;
/// Links at most (a server offers a handful of TCP candidates).
const MAX_LINKS: usize = 16;

/// A frame that came in on a link: (peer connection, server address, bytes).
pub(crate) type TcpFrame = (Role, SocketAddr, Vec<u8>);

struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

/// The TCP links of one room.
pub(crate) struct TcpLinks {
    links: HashMap<(Role, SocketAddr), Link>,
    frames_tx: mpsc::Sender<TcpFrame>,
    /// Packets dropped (link queue full, too many links).
    pub dropped: u64,
}

impl TcpLinks {
    pub(crate) fn new() -> (TcpLinks, mpsc::Receiver<TcpFrame>) {
        let (frames_tx, rx) = mpsc::channel(READ_QUEUE);
        (TcpLinks { links: HashMap::new(), frames_tx, dropped: 0 }, rx)
    }

    /// The address of our active candidate on `ip`.
    pub(crate) fn active_addr(ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, ACTIVE_PORT)
    }

    /// Send one packet to `to` on `role`'s peer connection, connecting first if needed.
    pub(crate) fn send(&mut self, role: Role, to: SocketAddr, packet: &[u8]) {
        let key = (role, to);
        if self.links.get(&key).is_some_and(|l| l.tx.is_closed()) {
            self.links.remove(&key);
        }
        if !self.links.contains_key(&key) {
            if self.links.len() >= MAX_LINKS {
                self.dropped += 1;
                return;
            }
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            let task = tokio::spawn(run_link(role, to, rx, self.frames_tx.clone()));
            self.links.insert(key, Link { tx, task });
        }
        if let Some(l) = self.links.get(&key) {
            if l.tx.try_send(packet.to_vec()).is_err() {
                self.dropped += 1;
            }
        }
    }

    /// Close every link of `role` (its peer connection was replaced).
    pub(crate) fn clear(&mut self) {
        for (_, l) in self.links.drain() {
            l.task.abort();
        }
    }
}

impl Drop for TcpLinks {
    fn drop(&mut self) {
        self.clear();
    }
}

async fn run_link(role: Role, to: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>, frames: mpsc::Sender<TcpFrame>) {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%to, error = %e, "ICE-TCP connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%to, "ICE-TCP connect timed out");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    tracing::debug!(?role, %to, "ICE-TCP link up");
    let (rd, wr) = stream.into_split();
    // RFC 4571: each packet behind its 16-bit big-endian length.
    let codec = || LengthDelimitedCodec::builder().length_field_length(2).max_frame_length(MAX_FRAME).new_codec();
    let mut frames_out = FramedWrite::new(wr, codec());
    let mut frames_in = FramedRead::new(rd, codec());
    let writer = async move {
        while let Some(p) = rx.recv().await {
            if p.len() > MAX_FRAME {
                continue;
            }
            if frames_out.send(p.as_slice()).await.is_err() {
                break;
            }
        }
    };
    let reader = async move {
        // A bad length (or any read error) ends the link.
        while let Some(Ok(frame)) = frames_in.next().await {
            if !frame.is_empty() && frames.send((role, to, frame.to_vec())).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    tracing::debug!(?role, %to, "ICE-TCP link closed");
}
