//! Data packets for the room (control messages for the bridge, transcripts for browsers), sent
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

pub struct Outbox {
    tx: Option<mpsc::Sender<(&'static str, Vec<u8>)>>,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Outbox {
    pub fn new(room: Room, metrics: Arc<Metrics>) -> Outbox {
        let (tx, mut rx) = mpsc::channel::<(&'static str, Vec<u8>)>(QUEUE);
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            while let Some((topic, payload)) = rx.recv().await {
                let send = room.send_data(DataPacketBuilder::new(payload).topic(topic));
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
        let Some(tx) = &self.tx else { return };
        if tx.try_send((topic, payload)).is_err() {
            self.metrics.data_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, "data queue full; packet dropped");
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
