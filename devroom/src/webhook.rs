//! Webhooks: protojson `WebhookEvent` POSTed to each configured URL, signed like livekit-server
//! (`Authorization: <bare JWT>` with `sha256` = base64(sha256(body))).
//!
//! Events go through a bounded queue per URL, delivered in order by one task each; a full queue
//! drops the event with a log line, so webhooks never block the media path. Receivers are
//! local in the dev setting, so delivery is plain HTTP/1.1 (an `https://` URL is refused at start).

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Full;
use hyper::Request;
use livekit_protocol as lk;
use tokio::sync::mpsc;

use crate::auth;
use crate::room::new_sid;

const QUEUE: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Webhooks {
    queues: Vec<mpsc::Sender<lk::WebhookEvent>>,
}

impl Webhooks {
    /// Spawns one delivery task per URL (needs a tokio runtime).
    pub fn start(urls: &[String], api_key: &str, api_secret: &str) -> anyhow::Result<Webhooks> {
        let mut queues = Vec::new();
        for raw in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
            let url = url::Url::parse(raw).map_err(|e| anyhow::anyhow!("bad webhook URL {raw:?}: {e}"))?;
            if url.scheme() != "http" {
                anyhow::bail!("webhook URL {raw:?}: devroom delivers webhooks over plain http:// only");
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(deliver(url, api_key.to_string(), api_secret.to_string(), rx));
            queues.push(tx);
        }
        Ok(Webhooks { queues })
    }

    /// Waits (up to `max`) until every queue is empty, e.g. before exiting.
    pub async fn drain(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while tokio::time::Instant::now() < deadline
            && self.queues.iter().any(|q| q.capacity() < q.max_capacity())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Queues an event for every URL. Never blocks.
    pub fn emit(
        &self,
        event: &str,
        room: Option<lk::Room>,
        participant: Option<lk::ParticipantInfo>,
        track: Option<lk::TrackInfo>,
    ) {
        if self.queues.is_empty() {
            return;
        }
        let ev = lk::WebhookEvent {
            event: event.to_string(),
            room,
            participant,
            track,
            id: new_sid("EV_"),
            created_at: crate::room::unix_ms() / 1000,
            ..Default::default()
        };
        for q in &self.queues {
            if let Err(e) = q.try_send(ev.clone()) {
                tracing::warn!(event, error = %e, "webhook queue full or closed; event dropped");
            }
        }
    }
}

async fn deliver(url: url::Url, api_key: String, api_secret: String, mut rx: mpsc::Receiver<lk::WebhookEvent>) {
    while let Some(ev) = rx.recv().await {
        let body = match serde_json::to_vec(&ev) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode webhook event");
                continue;
            }
        };
        let token = auth::webhook_token(&api_key, &api_secret, &body, auth::unix_now() as u64);
        match tokio::time::timeout(TIMEOUT, post(&url, token, body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                tracing::debug!(%url, event = %ev.event, "webhook delivered")
            }
            Ok(Ok(status)) => tracing::warn!(%url, event = %ev.event, status, "webhook rejected"),
            Ok(Err(e)) => tracing::warn!(%url, event = %ev.event, error = %e, "webhook delivery failed"),
            Err(_) => tracing::warn!(%url, event = %ev.event, "webhook delivery timed out"),
        }
    }
}

/// One HTTP/1.1 POST on a fresh connection; returns the status code.
async fn post(url: &url::Url, token: String, body: Vec<u8>) -> anyhow::Result<u16> {
    let host = url.host_str().ok_or_else(|| anyhow::anyhow!("no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let req = Request::post(path)
        .header("Host", authority)
        .header("Content-Type", "application/webhook+json")
        .header("Authorization", token)
        .header("User-Agent", "LiveKit")
        .body(Full::new(Bytes::from(body)))?;
    let res = sender.send_request(req).await?;
    Ok(res.status().as_u16())
}
