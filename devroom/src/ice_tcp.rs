//! ICE over TCP, server side (RFC 6544 passive candidates, RFC 4571 framing), as
//! livekit-server's `rtc.tcp_port` (7881): clients whose UDP is blocked connect here.
//!
//! One listener; each accepted connection gets a reader task (frames → engine, through the
//! engine's bounded command queue) and a writer task fed by a bounded queue the engine holds,
//! keyed by the client's address. The engine feeds frames to str0m as `Protocol::Tcp` input and
//! routes `Protocol::Tcp` transmits back by destination; a transmit with no connection (the
//! server never dials out: its candidates are passive) is dropped.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::engine::{Command, EngineHandle};

/// Largest frame accepted (RFC 4571 allows 64 KiB; ICE/DTLS/SRTP packets stay under 1.5 KiB).
const MAX_FRAME: usize = 4096;
/// Frames waiting to be written to one connection; a client that does not read loses packets.
pub const WRITE_QUEUE: usize = 512;

/// What a connection tells the engine.
pub enum TcpEvent {
    Opened { remote: SocketAddr, tx: mpsc::Sender<Vec<u8>> },
    Frame { remote: SocketAddr, data: Vec<u8> },
    Closed { remote: SocketAddr },
}

/// Accepts ICE-TCP connections for the engine until the listener fails.
pub async fn serve(listener: TcpListener, engine: EngineHandle) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        if engine.send(Command::Tcp(TcpEvent::Opened { remote, tx })).await.is_err() {
            return;
        }
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let len = (frame.len() as u16).to_be_bytes();
                if wr.write_all(&len).await.is_err() || wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut len = [0u8; 2];
            loop {
                if rd.read_exact(&mut len).await.is_err() {
                    break;
                }
                let n = u16::from_be_bytes(len) as usize;
                if n == 0 || n > MAX_FRAME {
                    tracing::debug!(%remote, n, "ICE-TCP frame of a bad size: closing");
                    break;
                }
                let mut data = vec![0u8; n];
                if rd.read_exact(&mut data).await.is_err() {
                    break;
                }
                if engine.send(Command::Tcp(TcpEvent::Frame { remote, data })).await.is_err() {
                    break;
                }
            }
            writer.abort();
            let _ = engine.send(Command::Tcp(TcpEvent::Closed { remote })).await;
        });
    }
}
