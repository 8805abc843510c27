//! Joining calls.
//!
//! * `--room NAME`: join that room directly with a token we mint (identity `agent-<room>`,
//!   kind `agent`) and hold its conversation ([`run_room`]).
//! * Worker mode (no `--room`): LiveKit agent dispatch ([`run_worker`]), the protocol of
//!   `livekit_agent.proto` as the official `livekit-agents` worker speaks it:
//!   1. WebSocket to `<LIVEKIT_URL>/agent` with `Authorization: Bearer <token with video.agent>`;
//!   2. `WorkerMessage{register{type: JT_ROOM, agent_name, version, allowed_permissions}}`;
//!      the first server message must be `register` (our worker id);
//!   3. `availability{job}` → `WorkerMessage{availability{job_id, available, participant_identity,
//!      participant_name}}` (declined when `--max-jobs` calls are running);
//!   4. `assignment{job, url?, token}` → join the room with that token (at `url` when given) and
//!      run the call; `update_job{JS_RUNNING}`, then `JS_SUCCESS`/`JS_FAILED` when it ends;
//!   5. `termination{job_id}` → leave that room;
//!   6. every 2.5 s `update_worker{status: WS_AVAILABLE|WS_FULL, load, job_count}`.
//!
//!   An empty agent name is automatic dispatch (a job for every new room); `--agent-name` makes
//!   it explicit (rooms or tokens name the agent). A lost connection is retried with back-off;
//!   running calls go on meanwhile.
//!
//!   Draining (SIGTERM): the worker reports `WS_FULL` at once and declines every job offered,
//!   as livekit-agents does, and [`run_worker`] returns when its last call has ended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use prost::Message as _;
use room::{Room, RoomOptions};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::call::{self, CallParams};
use crate::conversation::Outcome;

/// How long a job may wind down after the server terminated it.
const TERMINATION_GRACE: Duration = Duration::from_secs(3);

/// Where a worker registers: `ws(s)://host[/path]/agent`.
pub fn agent_url(livekit_url: &str) -> Result<String, String> {
    let mut u =
        url::Url::parse(livekit_url).map_err(|e| format!("LIVEKIT_URL {livekit_url:?}: {e}"))?;
    let scheme = match u.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        s => {
            return Err(format!(
                "LIVEKIT_URL scheme {s:?} is not ws, wss, http or https"
            ))
        }
    };
    u.set_scheme(scheme).map_err(|_| "bad scheme".to_string())?;
    let path = u.path().trim_end_matches('/').to_string();
    u.set_path(&format!("{path}/agent"));
    u.set_query(None);
    Ok(u.to_string())
}

/// Join `room_name` directly and hold its call.
pub async fn run_room(
    url: &str,
    key: &str,
    secret: &str,
    room_name: &str,
    identity: Option<&str>,
    params: CallParams,
) -> anyhow::Result<Outcome> {
    let identity = identity
        .map(str::to_string)
        .unwrap_or_else(|| format!("agent-{room_name}"));
    let token =
        crate::token::agent_join_token(key, secret, room_name, &identity, &params.spec.name);
    let (room, events) = Room::connect(url, &token, RoomOptions::default()).await?;
    tracing::info!(room = %room_name, %identity, "joined");
    Ok(call::run(room, events, params).await)
}

pub struct WorkerOptions {
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
    pub agent_name: String,
    pub max_jobs: u32,
    /// Give up after this many consecutive failed connections (None: never).
    pub max_retries: Option<u32>,
    /// Set to true: take no more jobs, return once the running ones are over.
    pub drain: Option<watch::Receiver<bool>>,
}

async fn drained(rx: &mut Option<watch::Receiver<bool>>) {
    match rx {
        Some(rx) => {
            if rx.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

fn encode(m: lk::worker_message::Message) -> WsMessage {
    WsMessage::Binary(
        lk::WorkerMessage { message: Some(m) }
            .encode_to_vec()
            .into(),
    )
}

/// Run as a dispatch worker until the process ends, `max_retries` connections fail, or it is
/// drained and its calls are over.
pub async fn run_worker(mut opts: WorkerOptions, params: CallParams) -> anyhow::Result<()> {
    let active = Arc::new(AtomicU32::new(0));
    let jobs: Arc<tokio::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>> =
        Default::default();
    // Rooms our running jobs are in (a second job for one of them is declined).
    let rooms: Arc<tokio::sync::Mutex<std::collections::HashSet<String>>> = Default::default();
    // Job status updates outlive a connection: they queue here and go out on the next one.
    let (status_tx, mut status_rx) = mpsc::channel::<lk::worker_message::Message>(256);
    let mut failures = 0u32;
    loop {
        if opts.drain.as_ref().is_some_and(|d| *d.borrow()) && active.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        match connect_and_serve(&mut opts, &params, &active, &jobs, &rooms, &status_tx, &mut status_rx).await {
            Ok(true) => return Ok(()),
            Ok(false) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "worker connection failed");
                if opts.max_retries.is_some_and(|m| failures > m) {
                    return Err(e);
                }
            }
        }
        let delay = Duration::from_secs((2 * failures.saturating_sub(1)).min(10) as u64);
        tokio::time::sleep(delay.max(Duration::from_millis(500))).await;
    }
}

/// Serves one connection; Ok(true) once drained with no call left.
async fn connect_and_serve(
    opts: &mut WorkerOptions,
    params: &CallParams,
    active: &Arc<AtomicU32>,
    jobs: &Arc<tokio::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>>,
    rooms: &Arc<tokio::sync::Mutex<std::collections::HashSet<String>>>,
    status_tx: &mpsc::Sender<lk::worker_message::Message>,
    status_rx: &mut mpsc::Receiver<lk::worker_message::Message>,
) -> anyhow::Result<bool> {
    let url = agent_url(&opts.url).map_err(anyhow::Error::msg)?;
    let token = crate::token::worker_token(&opts.api_key, &opts.api_secret);
    let mut req = url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out connecting to {url}"))??;
    let (mut tx, mut rx) = ws.split();
    tx.send(encode(lk::worker_message::Message::Register(
        lk::RegisterWorkerRequest {
            r#type: lk::JobType::JtRoom as i32,
            agent_name: opts.agent_name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            #[allow(deprecated)]
            allowed_permissions: Some(lk::ParticipantPermission {
                can_subscribe: true,
                can_publish: true,
                can_publish_data: true,
                can_update_metadata: true,
                agent: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    )))
    .await?;
    // The first message must be the registration answer.
    let worker_id = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .map_err(|_| anyhow::anyhow!("no register response"))?;
        match m {
            Some(Ok(WsMessage::Binary(b))) => match lk::ServerMessage::decode(b.as_ref()) {
                Ok(lk::ServerMessage {
                    message: Some(lk::server_message::Message::Register(r)),
                }) => break r.worker_id,
                Ok(other) => anyhow::bail!("expected register response first, got {other:?}"),
                Err(e) => anyhow::bail!("malformed server message: {e}"),
            },
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(other)) => {
                anyhow::bail!("unexpected websocket message before registration: {other:?}")
            }
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed before registration"),
        }
    };
    tracing::info!(%worker_id, agent_name = %opts.agent_name, "worker registered");
    params.metrics.worker_registrations.fetch_add(1, Ordering::Relaxed);
    let mut load_tick = tokio::time::interval(Duration::from_millis(2500));
    let mut draining = opts.drain.as_ref().is_some_and(|d| *d.borrow());
    let mut drain = opts.drain.clone();
    let status_msg = |n: u32, full: bool, max: u32| {
        let status = if full { lk::WorkerStatus::WsFull } else { lk::WorkerStatus::WsAvailable };
        encode(lk::worker_message::Message::UpdateWorker(lk::UpdateWorkerStatus {
            status: Some(status as i32),
            load: n as f32 / max.max(1) as f32,
            job_count: n,
            ..Default::default()
        }))
    };
    // Assignments we said yes to, waiting for the server (and their rooms).
    let mut accepted: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut accepted_rooms: HashMap<String, String> = HashMap::new();
    loop {
        if draining && active.load(Ordering::Relaxed) == 0 && accepted.is_empty() {
            tracing::info!("drained: no call left");
            let _ = tx.send(status_msg(0, true, opts.max_jobs)).await;
            let _ = tx.send(WsMessage::Close(None)).await;
            return Ok(true);
        }
        tokio::select! {
            _ = drained(&mut drain), if !draining => {
                draining = true;
                let n = active.load(Ordering::Relaxed);
                tracing::info!(calls = n, "draining: no more jobs");
                tx.send(status_msg(n, true, opts.max_jobs)).await?;
            }
            _ = load_tick.tick() => {
                let n = active.load(Ordering::Relaxed);
                tx.send(status_msg(n, draining || n >= opts.max_jobs, opts.max_jobs)).await?;
                // Assignments that never came (7.5 s, as livekit-agents) free their slot.
                accepted.retain(|_, t| t.elapsed() < Duration::from_millis(7500));
                accepted_rooms.retain(|j, _| accepted.contains_key(j));
            }
            st = status_rx.recv() => {
                if let Some(m) = st {
                    let ended = matches!(&m, lk::worker_message::Message::UpdateJob(u)
                        if u.status == lk::JobStatus::JsSuccess as i32 || u.status == lk::JobStatus::JsFailed as i32);
                    tx.send(encode(m)).await?;
                    if ended {
                        // Say at once that a slot is free: a server drops the jobs it cannot
                        // place (livekit-server does), it does not wait for the next tick.
                        load_tick.reset_immediately();
                    }
                }
            }
            m = rx.next() => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("worker connection closed"),
                };
                let bytes = match m {
                    WsMessage::Binary(b) => b,
                    WsMessage::Close(_) => anyhow::bail!("server closed the worker connection"),
                    _ => continue,
                };
                let msg = match lk::ServerMessage::decode(bytes.as_ref()) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed server message ignored");
                        continue;
                    }
                };
                match msg.message {
                    Some(lk::server_message::Message::Availability(req)) => {
                        let Some(job) = req.job else { continue };
                        let room_name = job.room.as_ref().map(|r| r.name.clone()).unwrap_or_default();
                        let busy = active.load(Ordering::Relaxed) + accepted.len() as u32;
                        // A room we already serve: after a LiveKit restart the room is created
                        // again and dispatched again, while our agent rejoins it by itself.
                        let serving = rooms.lock().await.contains(&room_name) || accepted_rooms.values().any(|r| *r == room_name);
                        let available = !draining && busy < opts.max_jobs && !room_name.is_empty() && !serving;
                        if available {
                            params.metrics.jobs_accepted.fetch_add(1, Ordering::Relaxed);
                            accepted.insert(job.id.clone(), tokio::time::Instant::now());
                            accepted_rooms.insert(job.id.clone(), room_name.clone());
                        } else {
                            params.metrics.jobs_declined.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::info!(job = %job.id, room = %room_name, available, serving, "job offered");
                        tx.send(encode(lk::worker_message::Message::Availability(lk::AvailabilityResponse {
                            job_id: job.id.clone(),
                            available,
                            participant_identity: if available { format!("agent-{room_name}") } else { String::new() },
                            participant_name: if available { params.spec.name.clone() } else { String::new() },
                            ..Default::default()
                        }))).await?;
                    }
                    Some(lk::server_message::Message::Assignment(a)) => {
                        let Some(job) = a.job else { continue };
                        accepted_rooms.remove(&job.id);
                        if accepted.remove(&job.id).is_none() {
                            tracing::warn!(job = %job.id, "assignment for a job we did not accept; ignored");
                            continue;
                        }
                        let url = a.url.filter(|u| !u.is_empty()).unwrap_or_else(|| opts.url.clone());
                        let job_id = job.id.clone();
                        let room_name = job.room.as_ref().map(|r| r.name.clone()).unwrap_or_default();
                        active.fetch_add(1, Ordering::Relaxed);
                        let (params, active2, status_tx, jobs2) = (params.clone(), active.clone(), status_tx.clone(), jobs.clone());
                        rooms.lock().await.insert(room_name.clone());
                        let rooms2 = rooms.clone();
                        let token = a.token;
                        let jid = job_id.clone();
                        // Hold the map while spawning so a job that ends at once still finds
                        // itself in it (and gives its slot back).
                        let mut map = jobs.lock().await;
                        let handle = tokio::spawn(async move {
                            let status = |s: lk::JobStatus, error: String| lk::worker_message::Message::UpdateJob(lk::UpdateJobStatus { job_id: jid.clone(), status: s as i32, error });
                            let result = match Room::connect(&url, &token, RoomOptions::default()).await {
                                Ok((room, events)) => {
                                    tracing::info!(job = %jid, room = %room_name, "job running");
                                    let _ = status_tx.send(status(lk::JobStatus::JsRunning, String::new())).await;
                                    let out = call::run(room, events, params).await;
                                    if out.reason.is_error() { Err(out.reason.to_string()) } else { Ok(out) }
                                }
                                Err(e) => Err(format!("join {room_name}: {e}")),
                            };
                            let m = match &result {
                                Ok(_) => status(lk::JobStatus::JsSuccess, String::new()),
                                Err(e) => {
                                    tracing::warn!(job = %jid, error = %e, "job failed");
                                    status(lk::JobStatus::JsFailed, e.clone())
                                }
                            };
                            rooms2.lock().await.remove(&room_name);
                            // Whoever takes the job out of the map gives its slot back (before
                            // the status goes out, so the load sent after it counts it free).
                            if jobs2.lock().await.remove(&jid).is_some() {
                                active2.fetch_sub(1, Ordering::Relaxed);
                            }
                            let _ = status_tx.send(m).await;
                        });
                        map.insert(job_id, handle.abort_handle());
                        drop(map);
                    }
                    Some(lk::server_message::Message::Termination(t)) => {
                        // The room is going away (the session sees that too and winds down:
                        // last words, call record). Give it a moment, then stop it.
                        if jobs.lock().await.contains_key(&t.job_id) {
                            tracing::info!(job = %t.job_id, "job terminated by the server");
                            let (jobs, active, status_tx) = (jobs.clone(), active.clone(), status_tx.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(TERMINATION_GRACE).await;
                                if let Some(h) = jobs.lock().await.remove(&t.job_id) {
                                    tracing::warn!(job = %t.job_id, "job still running after termination; stopped");
                                    h.abort();
                                    active.fetch_sub(1, Ordering::Relaxed);
                                    let _ = status_tx.try_send(lk::worker_message::Message::UpdateJob(lk::UpdateJobStatus {
                                        job_id: t.job_id,
                                        status: lk::JobStatus::JsSuccess as i32,
                                        error: String::new(),
                                    }));
                                }
                            });
                        }
                    }
                    Some(lk::server_message::Message::Register(_)) | Some(lk::server_message::Message::Pong(_)) => {}
                    Some(lk::server_message::Message::GoAway(g)) => {
                        anyhow::bail!("server is draining this connection: {}", g.reason);
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_urls() {
        assert_eq!(
            agent_url("http://127.0.0.1:7880").unwrap(),
            "ws://127.0.0.1:7880/agent"
        );
        assert_eq!(
            agent_url("wss://x.livekit.cloud/").unwrap(),
            "wss://x.livekit.cloud/agent"
        );
        assert_eq!(
            agent_url("https://h/base?x=1").unwrap(),
            "wss://h/base/agent"
        );
        assert!(agent_url("ftp://h").is_err());
    }
}
