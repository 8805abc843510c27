//! ICE over TCP, server side (RFC 6544 passive candidates, RFC 4571 framing), as
//! livekit-server's `rtc.tcp_port` (7881): clients whose UDP is blocked connect here.
//!
//! One listener; each accepted connection gets a reader task (frames → engine, through the
//! engine's bounded command queue) and a writer task fed by a bounded queue the engine holds,
//! keyed by the client's address. The engine feeds frames to str0m as `Protocol::Tcp` input and
//! routes `Protocol::Tcp` transmits back by destination; a transmit with no connection (the
//! server never dials out: its candidates are passive) is dropped.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

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

/// RFC 4571: each packet behind its 16-bit big-endian length.
fn rfc4571_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(2).max_frame_length(MAX_FRAME).new_codec()
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
        let (rd, wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        if engine.send(Command::Tcp(TcpEvent::Opened { remote, tx })).await.is_err() {
            return;
        }
        let mut frames_out = FramedWrite::new(wr, rfc4571_codec());
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if frames_out.send(bytes::Bytes::from(frame)).await.is_err() {
                    break;
                }
            }
        });
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut frames_in = FramedRead::new(rd, rfc4571_codec());
            // A bad length (or any read error) ends the connection.
            while let Some(Ok(frame)) = frames_in.next().await {
                if frame.is_empty() {
                    continue;
                }
                let data = frame.to_vec();
                if engine.send(Command::Tcp(TcpEvent::Frame { remote, data })).await.is_err() {
                    break;
                }
            }
            writer.abort();
            let _ = engine.send(Command::Tcp(TcpEvent::Closed { remote })).await;
        });
    }
}
