//! Data packets for the room (control messages for the bridge, transcripts for browsers, the
//! keys the agent presses as LiveKit `SipDTMF`), sent
//! by a task of their own so the call's loop never waits on the room: a reliable send can take
//! seconds during a reconnect, and the caller's audio must not freeze meanwhile. The queue is
//! bounded; what does not fit is dropped and counted, never buffered without bound.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use room::{DataPacketBuilder, Room};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Packets waiting to be sent.
const QUEUE: usize = 256;
/// One send that takes longer is given up (and counted).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// One packet to send.
enum Packet {
    Data { topic: &'static str, payload: Vec<u8> },
    /// A key, as LiveKit SDKs' `publish_dtmf` sends it (RFC 4733 code and the key).
    Dtmf { code: u32, key: char },
}

pub struct Outbox {
    tx: Option<mpsc::Sender<Packet>>,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Outbox {
    pub fn new(room: Room, metrics: Arc<Metrics>) -> Outbox {
        let (tx, mut rx) = mpsc::channel::<Packet>(QUEUE);
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            while let Some(packet) = rx.recv().await {
                let topic = match &packet {
                    Packet::Data { topic, .. } => *topic,
                    Packet::Dtmf { .. } => "sip_dtmf",
                };
                let send = async {
                    match packet {
                        Packet::Data { topic, payload } => room.send_data(DataPacketBuilder::new(payload).topic(topic)).await,
                        Packet::Dtmf { code, key } => room.send_dtmf(code, &key.to_string(), vec![]).await,
                    }
                };
                match tokio::time::timeout(SEND_TIMEOUT, send).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        m.data_dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, topic, "data packet not sent");
                    }
                    Err(_) => {
                        m.data_dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic, "data packet send timed out");
                    }
                }
            }
        });
        Outbox { tx: Some(tx), task, metrics }
    }

    /// Queues a packet; never waits.
    pub fn send(&self, topic: &'static str, payload: Vec<u8>) {
        self.queue(Packet::Data { topic, payload }, topic);
    }

    /// Queues one `SipDTMF` packet per key, in order (reliable, so they arrive in order);
    /// keys that are not keypad keys are skipped. Never waits.
    pub fn press_keys(&self, keys: &str) {
        for c in keys.chars() {
            match proto::dtmf::code_of(c) {
                Ok(code) => self.queue(Packet::Dtmf { code, key: c.to_ascii_uppercase() }, "sip_dtmf"),
                Err(e) => tracing::warn!(error = %e, "not a key; not pressed"),
            }
        }
    }

    fn queue(&self, packet: Packet, what: &'static str) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(packet).is_err() {
            self.metrics.data_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(what, "data queue full; packet dropped");
        }
    }

    /// Sends what is queued (at most `wait`), then stops.
    pub async fn close(mut self, wait: Duration) {
        self.tx = None;
        let abort = self.task.abort_handle();
        if tokio::time::timeout(wait, &mut self.task).await.is_err() {
            abort.abort();
        }
    }
}
