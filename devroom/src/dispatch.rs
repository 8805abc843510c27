//! LiveKit agent dispatch, server side: the `/agent` WebSocket that agent workers register on
//! (`livekit_agent.proto`), and the jobs that send them into rooms.
//!
//! **Workers.** `GET /agent` with `Authorization: Bearer <JWT>` (or `access_token=`); the token
//! must carry `video.agent = true`, otherwise the upgrade is refused with HTTP 401 and a plain
//! text reason, as livekit-server does. Frames are binary protobuf, `WorkerMessage` in and
//! `ServerMessage` out:
//! 1. the first worker message must be `register` (type `JT_ROOM`; devroom has no publisher or
//!    participant jobs): the answer is `RegisterWorkerResponse{worker_id: "AW_…", server_info}`.
//!    Anything else first closes the socket (code 1008 and the reason);
//! 2. `update_worker{status, load}`: a `WS_FULL` worker is offered nothing; among the others the
//!    least loaded (reported load, then jobs held) gets the next offer;
//! 3. `ping` → `pong{last_timestamp, timestamp}`;
//! 4. `availability` answers an offer; `update_job` reports a job's status (`JS_SUCCESS` /
//!    `JS_FAILED` free the worker's slot).
//!
//! An undecodable frame after registration is logged and counted and the connection stays;
//! the 16th closes it (1007). A worker whose bounded outgoing queue fills up is dropped.
//!
//! **Jobs.** A new room (Twirp `CreateRoom`, or the first `/rtc` join) gets one dispatch per
//! `CreateRoomRequest.agents[]` entry — for a room a join creates, per entry of the token's
//! `roomConfig.agents` — (sent to workers registered under that `agent_name`, with its
//! metadata), or, when none are named, one automatic dispatch (sent to
//! workers registered with an empty `agent_name`). Each dispatch makes one `JT_ROOM` job
//! (`AJ_…`), offered with `availability{job}` to one worker at a time: `available=true` gets
//! `assignment{job, token}` — `url` unset, so the worker joins the server it registered with —
//! where the token joins that room as the identity and name the worker asked for (kind
//! `agent`, publish/subscribe/data, `video.agent`); `available=false`, or no answer within
//! `--agent-offer-timeout-ms`, passes the offer to the next worker. With no worker (left) to
//! take it the job is dropped (JS_FAILED), as the open-source livekit-server does: no retry when
//! a worker registers later, no second round of offers once every worker declined. When the room finishes
//! (departure/empty timeout, `DeleteRoom`, shutdown) or its dispatch is deleted, the worker
//! holding a job gets `termination{job_id}`.
//!
//! A worker that disconnects loses its jobs: offers go to the next worker, assigned jobs whose
//! agent has not joined the room yet are offered again (`resuming = true`), and assigned jobs
//! whose agent is in the room stay with that agent (no second agent is sent). A job status update
//! for such a job from a later connection (a worker that reconnected) adopts it.
//!
//! **Twirp `livekit.AgentDispatchService`**: `CreateDispatch` (creates the room when needed,
//! without an automatic dispatch), `ListDispatch`, `DeleteDispatch`, with `roomAdmin` for the
//! room, as livekit-server. `ListDispatch` shows each job's state as the workers report it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use lk::server_message::Message as ServerMsg;
use lk::worker_message::Message as WorkerMsg;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use crate::auth;
use crate::engine::{Command, Engine, EngineHandle};
use crate::room::{self, new_sid};
use crate::server::App;
use crate::twirp::ApiError;

/// Server messages queued per worker before it is dropped as too slow.
const WORKER_QUEUE: usize = 64;
/// Registered workers at most (more are refused).
const MAX_WORKERS: usize = 256;
/// Dispatches per room at most (CreateRoom `agents` plus CreateDispatch).
pub(crate) const MAX_DISPATCHES_PER_ROOM: usize = 16;
/// The first message (`register`) must arrive within this.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// No message from a registered worker for this long closes its connection (workers send
/// `update_worker` every few seconds, livekit-agents pings every 30 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_FRAME: usize = 1 << 20;
/// Undecodable frames tolerated on one connection.
const MAX_MALFORMED: u32 = 16;
/// Lifetime of the join token in an assignment (livekit-server's agent tokens: 1 h; the
/// participant's refresh_token keeps it going after that).
const AGENT_TOKEN_TTL_SECS: f64 = 3600.0;

// ------------------------------------------------------------------ engine side

/// What a worker connection tells the engine.
pub enum WorkerCmd {
    Register {
        worker_id: String,
        agent_name: String,
        version: String,
        tx: mpsc::Sender<lk::ServerMessage>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Availability { worker_id: String, resp: lk::AvailabilityResponse },
    UpdateWorker { worker_id: String, status: lk::UpdateWorkerStatus },
    UpdateJob { worker_id: String, update: lk::UpdateJobStatus },
    Gone { worker_id: String },
}

struct Worker {
    agent_name: String,
    version: String,
    tx: mpsc::Sender<lk::ServerMessage>,
    full: bool,
    load: f32,
    /// Jobs offered to or held by this worker.
    jobs: HashSet<String>,
    /// Registration order (tie-break among equally loaded workers).
    seq: u64,
    /// Queue full: removed (and its jobs handed on) at the next reap.
    doomed: bool,
}

struct DispatchRec {
    id: String,
    agent_name: String,
    metadata: String,
    attributes: HashMap<String, String>,
    created_at_ns: i64,
    jobs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// Waiting for a worker to offer it to.
    Pending,
    Offered { worker: String, deadline: Instant },
    /// `None`: its worker disconnected while the agent was in the room.
    Assigned { worker: Option<String> },
    Ended,
}

struct JobRec {
    id: String,
    dispatch_id: String,
    room: String,
    agent_name: String,
    metadata: String,
    attributes: HashMap<String, String>,
    stage: Stage,
    /// Workers that said no (or did not answer) to this job.
    declined: HashSet<String>,
    last_declined: Option<Instant>,
    resuming: bool,
    created: Instant,
    state: lk::JobState,
}

impl JobRec {
    fn to_proto(&self, room: Option<lk::Room>) -> lk::Job {
        lk::Job {
            id: self.id.clone(),
            dispatch_id: self.dispatch_id.clone(),
            r#type: lk::JobType::JtRoom as i32,
            room,
            metadata: self.metadata.clone(),
            agent_name: self.agent_name.clone(),
            state: Some(self.state.clone()),
            attributes: self.attributes.clone(),
            ..Default::default()
        }
    }
}

/// Workers, dispatches and jobs; owned by the engine task.
pub(crate) struct Dispatcher {
    workers: HashMap<String, Worker>,
    jobs: HashMap<String, JobRec>,
    /// Room name → its dispatches in creation order.
    dispatches: HashMap<String, Vec<DispatchRec>>,
    next_seq: u64,
    offer_timeout: Duration,
}

impl Dispatcher {
    pub(crate) fn new(offer_timeout: Duration) -> Dispatcher {
        Dispatcher {
            workers: HashMap::new(),
            jobs: HashMap::new(),
            dispatches: HashMap::new(),
            next_seq: 1,
            offer_timeout,
        }
    }

    /// The least loaded live worker registered under `agent_name` that has not declined.
    fn pick_worker(&self, agent_name: &str, declined: &HashSet<String>) -> Option<String> {
        self.workers
            .iter()
            .filter(|(id, w)| !w.doomed && !w.full && w.agent_name == agent_name && !declined.contains(*id))
            .min_by(|(_, a), (_, b)| {
                a.load
                    .total_cmp(&b.load)
                    .then(a.jobs.len().cmp(&b.jobs.len()))
                    .then(a.seq.cmp(&b.seq))
            })
            .map(|(id, _)| id.clone())
    }

    /// Queues a message for a worker; a full queue dooms it. Returns whether it was queued.
    fn send(&mut self, worker_id: &str, msg: ServerMsg) -> bool {
        let Some(w) = self.workers.get_mut(worker_id) else {
            return false;
        };
        if w.doomed {
            return false;
        }
        match w.tx.try_send(lk::ServerMessage { message: Some(msg) }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(worker = %worker_id, "worker queue full: dropping slow worker");
                w.doomed = true;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The connection ended; its Gone command follows.
                w.doomed = true;
                false
            }
        }
    }

    fn dispatch_proto(&self, room: &str, d: &DispatchRec) -> lk::AgentDispatch {
        lk::AgentDispatch {
            id: d.id.clone(),
            agent_name: d.agent_name.clone(),
            room: room.to_string(),
            metadata: d.metadata.clone(),
            attributes: d.attributes.clone(),
            state: Some(lk::AgentDispatchState {
                jobs: d
                    .jobs
                    .iter()
                    .filter_map(|j| self.jobs.get(j))
                    .map(|j| {
                        j.to_proto(Some(lk::Room {
                            name: room.to_string(),
                            ..Default::default()
                        }))
                    })
                    .collect(),
                created_at: d.created_at_ns,
                deleted_at: 0,
            }),
            ..Default::default()
        }
    }
}

fn unix_ns() -> i64 {
    room::unix_ms().saturating_mul(1_000_000)
}

fn worker_status_name(full: bool) -> &'static str {
    if full {
        "WS_FULL"
    } else {
        "WS_AVAILABLE"
    }
}

impl Engine {
    /// A room was created: make its dispatches and jobs and offer them. `agents` empty means
    /// automatic dispatch (one job for workers without an agent name). Returns the dispatch ids.
    pub(crate) fn dispatch_room_started(&mut self, room: &str, agents: &[lk::RoomAgentDispatch]) -> Vec<String> {
        let automatic = [lk::RoomAgentDispatch::default()];
        let agents = if agents.is_empty() { &automatic[..] } else { agents };
        let ids: Vec<String> = agents
            .iter()
            .take(MAX_DISPATCHES_PER_ROOM)
            .map(|a| self.add_dispatch(room, &a.agent_name, &a.metadata, &a.attributes))
            .collect();
        self.dispatch_pending(Instant::now());
        ids
    }

    /// Adds one dispatch (and its job) to a room; the caller offers it.
    fn add_dispatch(
        &mut self,
        room: &str,
        agent_name: &str,
        metadata: &str,
        attributes: &HashMap<String, String>,
    ) -> String {
        let d = &mut self.dispatch;
        let dispatch_id = new_sid("AD_");
        let job_id = new_sid("AJ_");
        let now_ns = unix_ns();
        let job = JobRec {
            id: job_id.clone(),
            dispatch_id: dispatch_id.clone(),
            room: room.to_string(),
            agent_name: agent_name.to_string(),
            metadata: metadata.to_string(),
            attributes: attributes.clone(),
            stage: Stage::Pending,
            declined: HashSet::new(),
            last_declined: None,
            resuming: false,
            created: Instant::now(),
            state: lk::JobState {
                status: lk::JobStatus::JsPending as i32,
                updated_at: now_ns,
                ..Default::default()
            },
        };
        tracing::info!(%room, dispatch = %dispatch_id, job = %job_id, agent_name, "agent job created");
        d.jobs.insert(job_id.clone(), job);
        d.dispatches.entry(room.to_string()).or_default().push(DispatchRec {
            id: dispatch_id.clone(),
            agent_name: agent_name.to_string(),
            metadata: metadata.to_string(),
            attributes: attributes.clone(),
            created_at_ns: now_ns,
            jobs: vec![job_id],
        });
        dispatch_id
    }

    /// The room is gone: the workers holding its jobs get `termination`, its jobs are forgotten.
    pub(crate) fn dispatch_room_finished(&mut self, room: &str) {
        let Some(dispatches) = self.dispatch.dispatches.remove(room) else {
            return;
        };
        for d in dispatches {
            for job_id in d.jobs {
                self.terminate_job(&job_id);
            }
        }
    }

    /// Sends `termination` to the worker holding a job (if any) and removes the job.
    fn terminate_job(&mut self, job_id: &str) {
        let Some(job) = self.dispatch.jobs.remove(job_id) else {
            return;
        };
        match job.stage {
            Stage::Offered { worker, .. } => {
                if let Some(w) = self.dispatch.workers.get_mut(&worker) {
                    w.jobs.remove(job_id);
                }
            }
            Stage::Assigned { worker: Some(worker) } => {
                if let Some(w) = self.dispatch.workers.get_mut(&worker) {
                    w.jobs.remove(job_id);
                }
                tracing::info!(job = %job_id, room = %job.room, %worker, "job terminated");
                self.dispatch.send(
                    &worker,
                    ServerMsg::Termination(lk::JobTermination {
                        job_id: job_id.to_string(),
                    }),
                );
            }
            Stage::Assigned { worker: None } => {
                tracing::info!(job = %job_id, room = %job.room, "job ended; its worker had disconnected, nobody to tell");
            }
            Stage::Pending | Stage::Ended => {}
        }
    }

    /// Offers every pending job that has a candidate worker (oldest first).
    fn dispatch_pending(&mut self, now: Instant) {
        let mut pending: Vec<(Instant, String)> = self
            .dispatch
            .jobs
            .values()
            .filter(|j| j.stage == Stage::Pending)
            .map(|j| (j.created, j.id.clone()))
            .collect();
        pending.sort();
        for (_, id) in pending {
            self.offer_job(&id, now);
        }
    }

    /// Offers a pending job to the best candidate, if there is one.
    fn offer_job(&mut self, job_id: &str, now: Instant) {
        let Some(job) = self.dispatch.jobs.get(job_id) else {
            return;
        };
        if job.stage != Stage::Pending {
            return;
        }
        let Some(worker_id) = self.dispatch.pick_worker(&job.agent_name, &job.declined) else {
            // As the open-source livekit-server (agentservice.go JobRequest): no worker left to
            // try means the job is dropped, not kept for a worker that may register later.
            tracing::warn!(job = %job_id, room = %job.room, agent_name = %job.agent_name, tried = job.declined.len(), "no worker available: job dropped");
            self.drop_job(job_id);
            return;
        };
        let room = self.room_proto(&job.room);
        let deadline = now + self.dispatch.offer_timeout;
        let Some(job) = self.dispatch.jobs.get_mut(job_id) else {
            return;
        };
        job.stage = Stage::Offered {
            worker: worker_id.clone(),
            deadline,
        };
        let msg = ServerMsg::Availability(lk::AvailabilityRequest {
            job: Some(job.to_proto(room)),
            resuming: job.resuming,
        });
        tracing::info!(job = %job_id, room = %job.room, worker = %worker_id, "job offered");
        if let Some(w) = self.dispatch.workers.get_mut(&worker_id) {
            w.jobs.insert(job_id.to_string());
        }
        // A failed send dooms the worker; reaping it hands the offer on.
        self.dispatch.send(&worker_id, msg);
    }

    /// Periodic: offers nobody answered in time go to the next worker.
    pub(crate) fn dispatch_tick(&mut self, now: Instant) {
        let expired: Vec<(String, String)> = self
            .dispatch
            .jobs
            .values()
            .filter_map(|j| match &j.stage {
                Stage::Offered { worker, deadline } if *deadline <= now => Some((j.id.clone(), worker.clone())),
                _ => None,
            })
            .collect();
        for (job_id, worker) in expired {
            tracing::info!(job = %job_id, %worker, "no availability answer in time: offering elsewhere");
            self.job_declined(&job_id, &worker, now);
        }
        self.dispatch_pending(now);
    }

    /// A job nobody can take: it ends (JS_FAILED in ListDispatch), nothing retries it.
    fn drop_job(&mut self, job_id: &str) {
        if let Some(j) = self.dispatch.jobs.get_mut(job_id) {
            j.stage = Stage::Ended;
            j.state.status = lk::JobStatus::JsFailed as i32;
            j.state.error = "no worker available".into();
            j.state.updated_at = unix_ns();
        }
    }

    /// `worker` will not take `job_id`: back to pending, offered to the next candidate.
    fn job_declined(&mut self, job_id: &str, worker: &str, now: Instant) {
        if let Some(w) = self.dispatch.workers.get_mut(worker) {
            w.jobs.remove(job_id);
        }
        if let Some(j) = self.dispatch.jobs.get_mut(job_id) {
            j.stage = Stage::Pending;
            j.declined.insert(worker.to_string());
            j.last_declined = Some(now);
        }
        self.offer_job(job_id, now);
    }

    /// Removes workers whose queue overflowed (see [`Dispatcher::send`]).
    pub(crate) fn dispatch_reap(&mut self) {
        let doomed: Vec<String> = self
            .dispatch
            .workers
            .iter()
            .filter(|(_, w)| w.doomed)
            .map(|(id, _)| id.clone())
            .collect();
        for id in doomed {
            self.worker_lost(&id);
        }
    }

    /// A worker is gone: its offers go elsewhere; its assigned jobs are offered again unless
    /// their agent is already in the room.
    fn worker_lost(&mut self, worker_id: &str) {
        let Some(w) = self.dispatch.workers.remove(worker_id) else {
            return;
        };
        tracing::info!(worker = %worker_id, agent_name = %w.agent_name, version = %w.version, jobs = w.jobs.len(), "worker gone");
        let now = Instant::now();
        let mut jobs: Vec<String> = w.jobs.into_iter().collect();
        jobs.sort();
        for job_id in jobs {
            let Some(job) = self.dispatch.jobs.get(&job_id) else {
                continue;
            };
            match job.stage.clone() {
                Stage::Offered { .. } => {
                    self.job_declined(&job_id, worker_id, now);
                }
                Stage::Assigned { .. } => {
                    let identity = job.state.participant_identity.clone();
                    let joined = self.find_participant(&job.room, &identity).is_some();
                    let Some(job) = self.dispatch.jobs.get_mut(&job_id) else {
                        continue;
                    };
                    if joined {
                        tracing::warn!(job = %job_id, room = %job.room, %identity,
                            "worker lost a running job; its agent is in the room, so it is not dispatched again");
                        job.stage = Stage::Assigned { worker: None };
                    } else {
                        tracing::warn!(job = %job_id, room = %job.room, "worker lost a job before its agent joined: dispatching it again");
                        job.stage = Stage::Pending;
                        job.resuming = true;
                        job.declined.insert(worker_id.to_string());
                        job.state.status = lk::JobStatus::JsPending as i32;
                        job.state.participant_identity.clear();
                        job.state.worker_id.clear();
                        job.state.updated_at = unix_ns();
                        self.offer_job(&job_id, now);
                    }
                }
                Stage::Pending | Stage::Ended => {}
            }
        }
    }

    pub(crate) fn on_worker(&mut self, cmd: WorkerCmd) {
        let now = Instant::now();
        match cmd {
            WorkerCmd::Register {
                worker_id,
                agent_name,
                version,
                tx,
                reply,
            } => {
                if self.dispatch.workers.len() >= MAX_WORKERS {
                    let _ = reply.send(Err(format!("too many workers (at most {MAX_WORKERS})")));
                    return;
                }
                let seq = self.dispatch.next_seq;
                self.dispatch.next_seq += 1;
                tracing::info!(worker = %worker_id, %agent_name, %version, "worker registered");
                self.dispatch.workers.insert(
                    worker_id,
                    Worker {
                        agent_name,
                        version,
                        tx,
                        full: false,
                        load: 0.0,
                        jobs: HashSet::new(),
                        seq,
                        doomed: false,
                    },
                );
                let _ = reply.send(Ok(()));
                self.dispatch_pending(now);
            }
            WorkerCmd::Availability { worker_id, resp } => self.on_availability(&worker_id, resp, now),
            WorkerCmd::UpdateWorker { worker_id, status } => {
                let Some(w) = self.dispatch.workers.get_mut(&worker_id) else {
                    return;
                };
                let was_full = w.full;
                if let Some(s) = status.status {
                    w.full = s == lk::WorkerStatus::WsFull as i32;
                }
                if status.load.is_finite() {
                    w.load = status.load.clamp(0.0, f32::MAX);
                }
                if was_full != w.full {
                    tracing::info!(worker = %worker_id, status = worker_status_name(w.full), load = w.load, "worker status");
                }
                if was_full && !w.full {
                    self.forget_declines(&worker_id);
                    self.dispatch_pending(now);
                }
            }
            WorkerCmd::UpdateJob { worker_id, update } => self.on_update_job(&worker_id, update, now),
            WorkerCmd::Gone { worker_id } => self.worker_lost(&worker_id),
        }
    }

    /// The worker may say yes again (it freed a slot).
    fn forget_declines(&mut self, worker_id: &str) {
        for j in self.dispatch.jobs.values_mut() {
            j.declined.remove(worker_id);
        }
    }

    fn on_availability(&mut self, worker_id: &str, resp: lk::AvailabilityResponse, now: Instant) {
        let offered_here = self.dispatch.jobs.get(&resp.job_id).is_some_and(
            |j| matches!(&j.stage, Stage::Offered { worker, .. } if worker == worker_id),
        );
        if !offered_here {
            tracing::info!(worker = %worker_id, job = %resp.job_id, "availability answer for a job not offered to this worker (late or unknown); ignored");
            return;
        }
        if !resp.available {
            tracing::info!(worker = %worker_id, job = %resp.job_id, "worker declined the job");
            self.job_declined(&resp.job_id, worker_id, now);
            return;
        }
        let room_proto = self
            .dispatch
            .jobs
            .get(&resp.job_id)
            .and_then(|j| self.room_proto(&j.room));
        let Some(room_proto) = room_proto else {
            // The room went away meanwhile (its jobs go with it); nothing to assign.
            return;
        };
        let (key, secret) = (self.cfg.api_key.clone(), self.cfg.api_secret.clone());
        let Some(job) = self.dispatch.jobs.get_mut(&resp.job_id) else {
            return;
        };
        let identity = if resp.participant_identity.trim().is_empty() {
            format!("agent-{}", job.id)
        } else {
            resp.participant_identity.clone()
        };
        let token = agent_token(
            &key,
            &secret,
            &job.room,
            &identity,
            &resp.participant_name,
            &resp.participant_metadata,
            &resp.participant_attributes,
        );
        let now_ns = unix_ns();
        job.stage = Stage::Assigned {
            worker: Some(worker_id.to_string()),
        };
        job.resuming = false;
        job.state.status = lk::JobStatus::JsPending as i32;
        job.state.participant_identity = identity.clone();
        job.state.worker_id = worker_id.to_string();
        job.state.error.clear();
        job.state.updated_at = now_ns;
        tracing::info!(job = %job.id, room = %job.room, worker = %worker_id, %identity, "job assigned");
        let msg = ServerMsg::Assignment(lk::JobAssignment {
            job: Some(job.to_proto(Some(room_proto))),
            url: None,
            token,
        });
        self.dispatch.send(worker_id, msg);
    }

    fn on_update_job(&mut self, worker_id: &str, update: lk::UpdateJobStatus, now: Instant) {
        let Some(job) = self.dispatch.jobs.get_mut(&update.job_id) else {
            tracing::debug!(worker = %worker_id, job = %update.job_id, "status for an unknown (or finished) job; ignored");
            return;
        };
        match &job.stage {
            Stage::Assigned { worker: Some(w) } if w == worker_id => {}
            Stage::Assigned { worker: None } => {
                // Its worker disconnected; this is that worker again on a new connection.
                tracing::info!(job = %job.id, worker = %worker_id, "job adopted by a new worker connection");
                job.stage = Stage::Assigned {
                    worker: Some(worker_id.to_string()),
                };
                job.state.worker_id = worker_id.to_string();
                if let Some(w) = self.dispatch.workers.get_mut(worker_id) {
                    w.jobs.insert(update.job_id.clone());
                }
            }
            Stage::Ended => {
                tracing::debug!(job = %job.id, "status for an ended job; ignored");
                return;
            }
            _ => {
                tracing::warn!(job = %job.id, worker = %worker_id, "status for a job this worker does not hold; ignored");
                return;
            }
        }
        let Some(job) = self.dispatch.jobs.get_mut(&update.job_id) else {
            return;
        };
        let status = lk::JobStatus::try_from(update.status).unwrap_or(lk::JobStatus::JsPending);
        let now_ns = unix_ns();
        job.state.status = status as i32;
        job.state.error = update.error;
        job.state.updated_at = now_ns;
        tracing::info!(job = %job.id, room = %job.room, worker = %worker_id, status = status.as_str_name(), error = %job.state.error, "job status");
        match status {
            lk::JobStatus::JsRunning => {
                if job.state.started_at == 0 {
                    job.state.started_at = now_ns;
                }
            }
            lk::JobStatus::JsSuccess | lk::JobStatus::JsFailed => {
                job.state.ended_at = now_ns;
                job.stage = Stage::Ended;
                if let Some(w) = self.dispatch.workers.get_mut(worker_id) {
                    w.jobs.remove(&update.job_id);
                }
                self.forget_declines(worker_id);
                self.dispatch_pending(now);
            }
            lk::JobStatus::JsPending => {}
        }
    }

    // --------------------------------------------------------- AgentDispatchService

    pub(crate) fn create_dispatch(&mut self, req: lk::CreateAgentDispatchRequest) -> Result<lk::AgentDispatch, ApiError> {
        let room = req.room.trim().to_string();
        if room.is_empty() {
            return Err(ApiError::invalid_argument("room name is required"));
        }
        let id = if self.rooms.contains_key(&room) {
            if self.dispatch.dispatches.get(&room).map_or(0, Vec::len) >= MAX_DISPATCHES_PER_ROOM {
                return Err(ApiError::resource_exhausted(format!(
                    "at most {MAX_DISPATCHES_PER_ROOM} dispatches per room"
                )));
            }
            let id = self.add_dispatch(&room, &req.agent_name, &req.metadata, &req.attributes);
            self.dispatch_pending(Instant::now());
            id
        } else {
            // A new room whose only dispatch is this one.
            let (_, ids) = self.create_room_with_agents(lk::CreateRoomRequest {
                name: room.clone(),
                agents: vec![lk::RoomAgentDispatch {
                    agent_name: req.agent_name.clone(),
                    metadata: req.metadata.clone(),
                    attributes: req.attributes.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            })?;
            ids.into_iter()
                .next()
                .ok_or_else(|| ApiError::internal("dispatch not created"))?
        };
        self.find_dispatch(&room, &id)
            .ok_or_else(|| ApiError::internal("dispatch vanished"))
    }

    fn find_dispatch(&self, room: &str, id: &str) -> Option<lk::AgentDispatch> {
        let d = self.dispatch.dispatches.get(room)?.iter().find(|d| d.id == id)?;
        Some(self.dispatch.dispatch_proto(room, d))
    }

    pub(crate) fn list_dispatch(&self, req: lk::ListAgentDispatchRequest) -> Result<Vec<lk::AgentDispatch>, ApiError> {
        if !self.rooms.contains_key(&req.room) {
            return Err(ApiError::not_found("requested room does not exist"));
        }
        Ok(self
            .dispatch
            .dispatches
            .get(&req.room)
            .map(|ds| {
                ds.iter()
                    .filter(|d| req.dispatch_id.is_empty() || d.id == req.dispatch_id)
                    .map(|d| self.dispatch.dispatch_proto(&req.room, d))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub(crate) fn delete_dispatch(&mut self, req: lk::DeleteAgentDispatchRequest) -> Result<lk::AgentDispatch, ApiError> {
        if !self.rooms.contains_key(&req.room) {
            return Err(ApiError::not_found("requested room does not exist"));
        }
        let mut proto = self
            .find_dispatch(&req.room, &req.dispatch_id)
            .ok_or_else(|| ApiError::not_found("dispatch does not exist"))?;
        let mut removed = Vec::new();
        if let Some(ds) = self.dispatch.dispatches.get_mut(&req.room) {
            if let Some(i) = ds.iter().position(|d| d.id == req.dispatch_id) {
                removed = ds.remove(i).jobs;
            }
        }
        for job_id in removed {
            self.terminate_job(&job_id);
        }
        tracing::info!(room = %req.room, dispatch = %req.dispatch_id, "dispatch deleted");
        if let Some(s) = proto.state.as_mut() {
            s.deleted_at = unix_ns();
        }
        Ok(proto)
    }
}

/// The join token handed to a worker in `assignment`: that room, kind `agent`, the identity
/// and name the worker asked for, publish/subscribe/data and `video.agent`.
pub(crate) fn agent_token(
    api_key: &str,
    api_secret: &str,
    room: &str,
    identity: &str,
    name: &str,
    metadata: &str,
    attributes: &HashMap<String, String>,
) -> String {
    let now = auth::unix_now().floor();
    let claims = serde_json::json!({
        "iss": api_key,
        "sub": identity,
        "name": name,
        "kind": "agent",
        "metadata": metadata,
        "attributes": attributes,
        "nbf": now - 10.0,
        "iat": now,
        "exp": now + AGENT_TOKEN_TTL_SECS,
        "video": {
            "roomJoin": true,
            "room": room,
            "canPublish": true,
            "canSubscribe": true,
            "canPublishData": true,
            "canUpdateOwnMetadata": true,
            "agent": true,
        },
    });
    auth::sign(&claims, api_secret)
}

// ------------------------------------------------------------------ HTTP side

/// `GET /agent`: a worker's control connection.
pub async fn agent_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let h = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let claims = auth::token_from_request(h, params.get("access_token").map(String::as_str))
        .and_then(|t| auth::verify(&t, &app.keys, auth::unix_now()));
    let claims = match claims {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "worker refused");
            return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    if !claims.video().agent {
        tracing::info!("worker refused: token lacks video.agent");
        return (StatusCode::UNAUTHORIZED, "permissions denied").into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("expected a WebSocket upgrade: {e}")).into_response()
        }
    };
    let engine = app.engine.clone();
    ws.max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| worker_session(socket, engine))
}

fn close(code: u16, reason: impl Into<String>) -> Message {
    let mut reason: String = reason.into();
    while reason.len() > 120 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

fn encode(msg: ServerMsg) -> Message {
    Message::Binary(lk::ServerMessage { message: Some(msg) }.encode_to_vec().into())
}

/// Tells the engine the worker is gone, however the session ends.
struct GoneGuard {
    engine: EngineHandle,
    worker_id: Option<String>,
}

impl Drop for GoneGuard {
    fn drop(&mut self) {
        let Some(worker_id) = self.worker_id.take() else {
            return;
        };
        let engine = self.engine.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = engine.send(Command::Worker(WorkerCmd::Gone { worker_id })).await;
            });
        }
    }
}

// Transient, one per frame: boxing the message would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Frame {
    Msg(WorkerMsg),
    /// A frame without a message (ignored).
    Empty,
    Malformed(String),
    Closed,
}

fn decode(m: Option<Result<Message, axum::Error>>) -> Frame {
    match m {
        Some(Ok(Message::Binary(b))) => match lk::WorkerMessage::decode(b.as_ref()) {
            Ok(lk::WorkerMessage { message: Some(m) }) => Frame::Msg(m),
            Ok(_) => Frame::Empty,
            Err(e) => Frame::Malformed(format!("invalid WorkerMessage protobuf: {e}")),
        },
        Some(Ok(Message::Text(_))) => Frame::Malformed("text frame: expected binary protobuf WorkerMessage".into()),
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Frame::Closed,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Frame::Empty,
    }
}

async fn worker_session(socket: WebSocket, engine: EngineHandle) {
    let (mut sink, mut stream) = socket.split();
    // 1. register
    let reg = match tokio::time::timeout(REGISTER_TIMEOUT, async {
        loop {
            match decode(stream.next().await) {
                Frame::Empty => continue,
                other => return other,
            }
        }
    })
    .await
    {
        Ok(Frame::Msg(WorkerMsg::Register(r))) => r,
        Ok(Frame::Msg(other)) => {
            tracing::info!(message = worker_msg_name(&other), "worker did not register first: closing");
            let _ = sink.send(close(1008, "the first message must be register")).await;
            return;
        }
        Ok(Frame::Malformed(why)) => {
            tracing::warn!(%why, "malformed first worker message: closing");
            let _ = sink.send(close(1007, why)).await;
            return;
        }
        Ok(Frame::Empty) | Ok(Frame::Closed) => return,
        Err(_) => {
            tracing::info!("worker did not register in time: closing");
            let _ = sink.send(close(1008, "register timeout")).await;
            return;
        }
    };
    if reg.r#type != lk::JobType::JtRoom as i32 {
        let t = lk::JobType::try_from(reg.r#type)
            .map(|t| t.as_str_name().to_string())
            .unwrap_or_else(|_| reg.r#type.to_string());
        tracing::info!(job_type = %t, "worker refused: devroom dispatches JT_ROOM jobs only");
        let _ = sink
            .send(close(1008, format!("unsupported job type {t}: devroom dispatches JT_ROOM jobs only")))
            .await;
        return;
    }
    let worker_id = new_sid("AW_");
    let (tx, mut rx) = mpsc::channel::<lk::ServerMessage>(WORKER_QUEUE);
    let (reply_tx, reply_rx) = oneshot::channel();
    let cmd = Command::Worker(WorkerCmd::Register {
        worker_id: worker_id.clone(),
        agent_name: reg.agent_name.clone(),
        version: reg.version.clone(),
        tx,
        reply: reply_tx,
    });
    if engine.send(cmd).await.is_err() {
        let _ = sink.send(close(1011, "server stopping")).await;
        return;
    }
    let mut guard = GoneGuard {
        engine: engine.clone(),
        worker_id: Some(worker_id.clone()),
    };
    match reply_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            tracing::warn!(%why, "worker refused");
            guard.worker_id = None;
            let _ = sink.send(close(1013, why)).await;
            return;
        }
        Err(_) => {
            let _ = sink.send(close(1011, "server stopping")).await;
            return;
        }
    }
    let answer = encode(ServerMsg::Register(lk::RegisterWorkerResponse {
        worker_id: worker_id.clone(),
        server_info: Some(crate::engine::server_info()),
        ..Default::default()
    }));
    if !matches!(tokio::time::timeout(SEND_TIMEOUT, sink.send(answer)).await, Ok(Ok(()))) {
        return;
    }

    // 2. serve
    let mut malformed = 0u32;
    let mut last_rx = tokio::time::Instant::now();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => {
                    let Some(m) = m.message else { continue };
                    match tokio::time::timeout(SEND_TIMEOUT, sink.send(encode(m))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            tracing::warn!(worker = %worker_id, "worker is not reading its connection: dropping it");
                            break;
                        }
                    }
                }
                None => {
                    // The engine dropped us (too slow).
                    let _ = sink.send(close(1008, "worker too slow")).await;
                    break;
                }
            },
            inc = stream.next() => {
                last_rx = tokio::time::Instant::now();
                let msg = match decode(inc) {
                    Frame::Msg(m) => m,
                    Frame::Empty => continue,
                    Frame::Closed => break,
                    Frame::Malformed(why) => {
                        malformed += 1;
                        tracing::warn!(worker = %worker_id, %why, count = malformed, "malformed worker message ignored");
                        if malformed >= MAX_MALFORMED {
                            let _ = sink.send(close(1007, format!("{malformed} malformed messages; last: {why}"))).await;
                            break;
                        }
                        continue;
                    }
                };
                tracing::debug!(worker = %worker_id, message = worker_msg_name(&msg), "worker message");
                let worker_id = worker_id.clone();
                let cmd = match msg {
                    WorkerMsg::Ping(p) => {
                        let pong = encode(ServerMsg::Pong(lk::WorkerPong {
                            last_timestamp: p.timestamp,
                            timestamp: room::unix_ms(),
                        }));
                        if sink.send(pong).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    WorkerMsg::Register(_) => {
                        tracing::info!(worker = %worker_id, "worker registered twice; ignored");
                        continue;
                    }
                    WorkerMsg::Availability(resp) => WorkerCmd::Availability { worker_id, resp },
                    WorkerMsg::UpdateWorker(status) => WorkerCmd::UpdateWorker { worker_id, status },
                    WorkerMsg::UpdateJob(update) => WorkerCmd::UpdateJob { worker_id, update },
                    other => {
                        tracing::debug!(worker = %worker_id, message = worker_msg_name(&other), "worker message not supported by devroom; ignored");
                        continue;
                    }
                };
                if engine.send(Command::Worker(cmd)).await.is_err() {
                    break;
                }
            },
            _ = tokio::time::sleep_until(last_rx + IDLE_TIMEOUT) => {
                tracing::info!(worker = %worker_id, "worker connection idle: closing");
                let _ = sink.send(close(1000, "idle timeout")).await;
                break;
            }
        }
    }
    tracing::info!(worker = %worker_id, malformed, "worker connection ended");
    drop(guard);
}

fn worker_msg_name(m: &WorkerMsg) -> &'static str {
    match m {
        WorkerMsg::Register(_) => "register",
        WorkerMsg::Availability(_) => "availability",
        WorkerMsg::UpdateWorker(_) => "update_worker",
        WorkerMsg::UpdateJob(_) => "update_job",
        WorkerMsg::Ping(_) => "ping",
        WorkerMsg::SimulateJob(_) => "simulate_job",
        WorkerMsg::MigrateJob(_) => "migrate_job",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_token_joins_the_room_as_an_agent() {
        let keys = auth::Keys::single("devkey", "secret");
        let attrs = HashMap::from([("a".to_string(), "b".to_string())]);
        let t = agent_token("devkey", "secret", "call-1", "agent-call-1", "Agent", "m", &attrs);
        let c = auth::verify(&t, &keys, auth::unix_now()).unwrap();
        assert_eq!(c.identity(), "agent-call-1");
        assert_eq!(c.name, "Agent");
        assert_eq!(c.kind, "agent");
        assert_eq!(c.metadata, "m");
        assert_eq!(c.attributes["a"], "b");
        let v = c.video();
        assert!(v.room_join && v.room == "call-1" && v.agent);
        assert!(v.can_publish() && v.can_subscribe() && v.can_publish_data());
    }

    fn worker(agent_name: &str, seq: u64, load: f32, full: bool) -> Worker {
        let (tx, _rx) = mpsc::channel(1);
        Worker {
            agent_name: agent_name.into(),
            version: String::new(),
            tx,
            full,
            load,
            jobs: HashSet::new(),
            seq,
            doomed: false,
        }
    }

    #[test]
    fn picks_the_least_loaded_matching_worker() {
        let mut d = Dispatcher::new(Duration::from_secs(5));
        d.workers.insert("AW_a".into(), worker("", 1, 0.5, false));
        d.workers.insert("AW_b".into(), worker("", 2, 0.1, false));
        d.workers.insert("AW_c".into(), worker("", 3, 0.0, true));
        d.workers.insert("AW_n".into(), worker("named", 4, 0.0, false));
        let none = HashSet::new();
        assert_eq!(d.pick_worker("", &none).as_deref(), Some("AW_b"));
        assert_eq!(d.pick_worker("named", &none).as_deref(), Some("AW_n"));
        assert_eq!(d.pick_worker("other", &none), None);
        let declined = HashSet::from(["AW_b".to_string()]);
        assert_eq!(d.pick_worker("", &declined).as_deref(), Some("AW_a"));
        // equal load: fewer jobs, then the earlier registration
        d.workers.get_mut("AW_a").unwrap().load = 0.1;
        d.workers.get_mut("AW_b").unwrap().jobs.insert("AJ_x".into());
        assert_eq!(d.pick_worker("", &none).as_deref(), Some("AW_a"));
    }
}
