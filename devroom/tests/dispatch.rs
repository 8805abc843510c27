//! Agent dispatch at the protocol level: raw `/agent` WebSocket workers speaking
//! `livekit_agent.proto` (WorkerMessage / ServerMessage) against devroom — registration, auth,
//! offers on room creation, assignment tokens that join `/rtc` as an agent, declines and
//! timeouts, explicit (named) dispatch and the AgentDispatchService, jobs waiting for a worker,
//! termination, and what a worker's disconnect does to its jobs.

mod common;

use std::time::Duration;

use common::{grant_token, join_token, Devroom, API_KEY, API_SECRET};
use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::VideoGrants;
use livekit_api::services::agent_dispatch::AgentDispatchClient;
use livekit_api::services::room::RoomClient;
use livekit_protocol as lk;
use lk::server_message::Message as S;
use lk::worker_message::Message as W;
use prost::Message as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn worker_token() -> String {
    let now = devroom::auth::unix_now() as u64;
    devroom::auth::sign(
        &serde_json::json!({"iss": API_KEY, "sub": "", "exp": now + 600, "video": {"agent": true}}),
        API_SECRET,
    )
}

async fn connect(server: &Devroom, token: &str) -> Ws {
    let mut req = format!("{}/agent", server.ws_url()).into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws connect");
    ws
}

async fn send(ws: &mut Ws, m: W) {
    let bytes = lk::WorkerMessage { message: Some(m) }.encode_to_vec();
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

/// Next server message within `within` (None: nothing came, or the socket closed).
async fn next_within(ws: &mut Ws, within: Duration) -> Option<S> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Binary(b)))) => {
                return Some(lk::ServerMessage::decode(b.as_ref()).expect("decode").message.expect("message"))
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(_) => continue,
        }
    }
}

async fn next(ws: &mut Ws) -> S {
    next_within(ws, Duration::from_secs(10))
        .await
        .expect("timed out waiting for a server message")
}

/// Connects and registers; returns the socket and the worker id.
async fn register(server: &Devroom, agent_name: &str) -> (Ws, String) {
    let mut ws = connect(server, &worker_token()).await;
    send(
        &mut ws,
        W::Register(lk::RegisterWorkerRequest {
            r#type: lk::JobType::JtRoom as i32,
            agent_name: agent_name.into(),
            version: "test".into(),
            ..Default::default()
        }),
    )
    .await;
    let S::Register(r) = next(&mut ws).await else {
        panic!("register answer first")
    };
    assert!(r.worker_id.starts_with("AW_"), "{}", r.worker_id);
    assert!(r.server_info.is_some());
    (ws, r.worker_id)
}

async fn expect_offer(ws: &mut Ws) -> lk::AvailabilityRequest {
    match next(ws).await {
        S::Availability(a) => a,
        other => panic!("expected an availability request, got {other:?}"),
    }
}

/// Asserts no server message (pongs aside) arrives for `d`.
async fn expect_silence(ws: &mut Ws, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match next_within(ws, left).await {
            None => return,
            Some(S::Pong(_)) => continue,
            Some(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

async fn answer(ws: &mut Ws, job_id: &str, available: bool, identity: &str) {
    send(
        ws,
        W::Availability(lk::AvailabilityResponse {
            job_id: job_id.into(),
            available,
            participant_identity: identity.into(),
            participant_name: if available { format!("Agent {identity}") } else { String::new() },
            ..Default::default()
        }),
    )
    .await;
}

async fn expect_assignment(ws: &mut Ws) -> lk::JobAssignment {
    match next(ws).await {
        S::Assignment(a) => a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

fn rooms(server: &Devroom) -> RoomClient {
    RoomClient::with_api_key(&server.http_url(), API_KEY, API_SECRET)
}

fn dispatches(server: &Devroom) -> AgentDispatchClient {
    AgentDispatchClient::with_api_key(&server.http_url(), API_KEY, API_SECRET)
}

/// Twirp RoomService.CreateRoom in protojson (the Rust SDK's options have no `agents`).
async fn create_room_json(server: &Devroom, body: serde_json::Value) -> serde_json::Value {
    let token = grant_token(VideoGrants {
        room_create: true,
        ..Default::default()
    });
    let (st, _, body) = common::http(
        "POST",
        &format!("{}/twirp/livekit.RoomService/CreateRoom", server.http_url()),
        &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/json")],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Joins `/rtc` with `token` and returns the socket once the join response came.
async fn rtc_join(server: &Devroom, token: &str) -> (Ws, lk::JoinResponse) {
    let mut req = format!("{}/rtc?protocol=16&sdk=rust", server.ws_url())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("rtc connect");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("join response")
            .expect("open")
            .expect("frame");
        if let Message::Binary(b) = m {
            if let Some(lk::signal_response::Message::Join(j)) =
                lk::SignalResponse::decode(b.as_ref()).unwrap().message
            {
                return (ws, j);
            }
        }
    }
}

async fn http_refusal(req: tungstenite::handshake::client::Request) -> (u16, String) {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("connection unexpectedly accepted"),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

async fn close_code(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for close");
        match m {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn worker_registers_pings_and_survives_garbage() {
    let server = Devroom::start("dispatch_register", &[]);
    let (mut ws, _id) = register(&server, "").await;

    send(&mut ws, W::Ping(lk::WorkerPing { timestamp: 1234 })).await;
    let S::Pong(p) = next(&mut ws).await else { panic!("pong") };
    assert_eq!(p.last_timestamp, 1234);
    assert!(p.timestamp > 1_600_000_000_000, "server time in ms: {}", p.timestamp);

    // Undecodable frames are ignored (logged and counted); the connection stays.
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff, 0x01].into())).await.unwrap();
    ws.send(Message::Text("{\"ping\":{}}".into())).await.unwrap();
    // A second register and a worker status are fine too.
    send(&mut ws, W::Register(lk::RegisterWorkerRequest::default())).await;
    send(
        &mut ws,
        W::UpdateWorker(lk::UpdateWorkerStatus {
            status: Some(lk::WorkerStatus::WsAvailable as i32),
            load: 0.25,
            job_count: 0,
            ..Default::default()
        }),
    )
    .await;
    send(&mut ws, W::Ping(lk::WorkerPing { timestamp: 99 })).await;
    let S::Pong(p) = next(&mut ws).await else { panic!("pong after garbage") };
    assert_eq!(p.last_timestamp, 99);

    // Too much garbage closes the connection cleanly.
    for _ in 0..20 {
        if ws.send(Message::Binary(vec![0xff; 3].into())).await.is_err() {
            break;
        }
    }
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!(code, 1007, "{reason}");
}

#[tokio::test]
async fn agent_endpoint_refuses_bad_tokens_and_bad_registrations() {
    let server = Devroom::start("dispatch_auth", &[]);
    let url = format!("{}/agent", server.ws_url());

    let (st, _) = http_refusal(url.clone().into_client_request().unwrap()).await;
    assert_eq!(st, 401);

    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut().insert("Authorization", "Bearer garbage".parse().unwrap());
    let (st, body) = http_refusal(req).await;
    assert_eq!(st, 401);
    assert!(body.contains("invalid authorization token"), "{body}");

    let now = devroom::auth::unix_now() as u64;
    let forged = devroom::auth::sign(
        &serde_json::json!({"iss": API_KEY, "exp": now + 600, "video": {"agent": true}}),
        "wrong-secret",
    );
    let (st, _) = http_refusal(format!("{url}?access_token={forged}").into_client_request().unwrap()).await;
    assert_eq!(st, 401);

    // A valid token without the agent grant (a room join token) is not enough.
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {}", join_token("alice", "r")).parse().unwrap());
    let (st, body) = http_refusal(req).await;
    assert_eq!(st, 401);
    assert!(body.contains("permissions denied"), "{body}");

    // Something other than register first: closed with a reason.
    let mut ws = connect(&server, &worker_token()).await;
    send(&mut ws, W::Ping(lk::WorkerPing { timestamp: 1 })).await;
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("register"), "{reason}");

    // Only JT_ROOM workers.
    let mut ws = connect(&server, &worker_token()).await;
    send(
        &mut ws,
        W::Register(lk::RegisterWorkerRequest {
            r#type: lk::JobType::JtPublisher as i32,
            ..Default::default()
        }),
    )
    .await;
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("JT_PUBLISHER"), "{reason}");

    // Garbage first: closed too, and the server is still fine afterwards.
    let mut ws = connect(&server, &worker_token()).await;
    ws.send(Message::Binary(vec![0xff, 0xff].into())).await.unwrap();
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, 1007);
    let _ = register(&server, "").await;
}

#[tokio::test]
async fn room_job_is_offered_assigned_joins_as_agent_and_is_terminated() {
    let server = Devroom::start("dispatch_assign", &[]);
    let (mut ws, worker_id) = register(&server, "").await;

    let room = rooms(&server)
        .create_room("disp-room", Default::default())
        .await
        .expect("create_room");
    let offer = expect_offer(&mut ws).await;
    let job = offer.job.expect("job");
    assert!(job.id.starts_with("AJ_"), "{}", job.id);
    assert!(!job.dispatch_id.is_empty());
    assert_eq!(job.r#type, lk::JobType::JtRoom as i32);
    assert_eq!(job.agent_name, "");
    let job_room = job.room.clone().expect("job room");
    assert_eq!((job_room.name.as_str(), job_room.sid.as_str()), ("disp-room", room.sid.as_str()));
    assert!(!offer.resuming);

    answer(&mut ws, &job.id, true, "agent-disp-room").await;
    let a = expect_assignment(&mut ws).await;
    assert_eq!(a.job.as_ref().map(|j| j.id.as_str()), Some(job.id.as_str()));
    assert_eq!(a.url, None, "the worker joins the server it registered with");

    // The token joins exactly that room, as an agent, with the identity the worker chose.
    let keys = devroom::auth::Keys::single(API_KEY, API_SECRET);
    let claims = devroom::auth::verify(&a.token, &keys, devroom::auth::unix_now()).expect("valid token");
    assert_eq!(claims.identity(), "agent-disp-room");
    assert_eq!(claims.name, "Agent agent-disp-room");
    assert_eq!(claims.kind, "agent");
    let v = claims.video();
    assert!(v.room_join && v.room == "disp-room" && v.agent);
    assert!(v.can_publish() && v.can_subscribe() && v.can_publish_data());

    let (_rtc, join) = rtc_join(&server, &a.token).await;
    let me = join.participant.expect("participant");
    assert_eq!(me.identity, "agent-disp-room");
    assert_eq!(me.kind, lk::participant_info::Kind::Agent as i32);
    assert_eq!(join.room.map(|r| r.name), Some("disp-room".to_string()));
    let parts = rooms(&server).list_participants("disp-room").await.unwrap();
    assert!(
        parts.iter().any(|p| p.identity == "agent-disp-room" && p.kind == lk::participant_info::Kind::Agent as i32),
        "{parts:?}"
    );

    // The job's status reaches the dispatch state.
    send(
        &mut ws,
        W::UpdateJob(lk::UpdateJobStatus {
            job_id: job.id.clone(),
            status: lk::JobStatus::JsRunning as i32,
            error: String::new(),
        }),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list = dispatches(&server).list_dispatch("disp-room").await.expect("list_dispatch");
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].id, job.dispatch_id);
        let st = list[0].state.clone().unwrap().jobs[0].state.clone().unwrap();
        if st.status == lk::JobStatus::JsRunning as i32 {
            assert_eq!(st.participant_identity, "agent-disp-room");
            assert_eq!(st.worker_id, worker_id);
            assert!(st.started_at > 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "status never reached the server: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The room goes away: the worker is told to end the job.
    rooms(&server).delete_room("disp-room").await.expect("delete_room");
    match next(&mut ws).await {
        S::Termination(t) => assert_eq!(t.job_id, job.id),
        other => panic!("expected termination, got {other:?}"),
    }
}

#[tokio::test]
async fn declined_or_unanswered_offers_go_to_the_next_worker() {
    let server = Devroom::start("dispatch_decline", &["--agent-offer-timeout-ms", "800"]);
    let (mut a, _) = register(&server, "").await;
    let (mut b, _) = register(&server, "").await;

    // Declined: offered to the other worker.
    rooms(&server).create_room("decline-room", Default::default()).await.unwrap();
    let (first, second) = tokio::select! {
        m = next(&mut a) => (m, 0),
        m = next(&mut b) => (m, 1),
    };
    let S::Availability(offer) = first else { panic!("{first:?}") };
    let job = offer.job.unwrap();
    assert_eq!(job.room.as_ref().unwrap().name, "decline-room");
    let (decliner, other) = if second == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
    answer(decliner, &job.id, false, "").await;
    let again = expect_offer(other).await.job.unwrap();
    assert_eq!(again.id, job.id);
    answer(other, &job.id, true, "agent-decline").await;
    assert_eq!(expect_assignment(other).await.job.unwrap().id, job.id);
    expect_silence(decliner, Duration::from_millis(300)).await;

    // Unanswered: after the offer timeout, offered to the other worker.
    rooms(&server).create_room("silent-room", Default::default()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let (first, second) = tokio::select! {
        m = next(&mut a) => (m, 0),
        m = next(&mut b) => (m, 1),
    };
    let S::Availability(offer) = first else { panic!("{first:?}") };
    let job = offer.job.unwrap();
    let other = if second == 0 { &mut b } else { &mut a };
    let again = expect_offer(other).await.job.unwrap();
    assert_eq!(again.id, job.id);
    assert!(t0.elapsed() >= Duration::from_millis(700), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn explicit_dispatch_reaches_only_the_named_worker() {
    let server = Devroom::start("dispatch_named", &[]);
    let (mut auto, _) = register(&server, "").await;
    let (mut intake, _) = register(&server, "incident-intake").await;
    let (mut other, _) = register(&server, "other-agent").await;

    let room = create_room_json(
        &server,
        serde_json::json!({"name": "named-room", "agents": [{"agentName": "incident-intake", "metadata": "{\"lang\":\"en\"}"}]}),
    )
    .await;
    assert_eq!(room["name"], "named-room");
    let job = expect_offer(&mut intake).await.job.unwrap();
    assert_eq!(job.agent_name, "incident-intake");
    assert_eq!(job.metadata, "{\"lang\":\"en\"}");
    assert_eq!(job.room.as_ref().unwrap().name, "named-room");
    answer(&mut intake, &job.id, true, "intake-1").await;
    let a = expect_assignment(&mut intake).await;
    assert_eq!(a.job.unwrap().id, job.id);
    // Naming agents turns automatic dispatch off for that room.
    expect_silence(&mut auto, Duration::from_millis(700)).await;
    expect_silence(&mut other, Duration::from_millis(100)).await;

    // AgentDispatchService: a second agent into the same room, then removed again.
    let d = dispatches(&server)
        .create_dispatch(lk::CreateAgentDispatchRequest {
            agent_name: "other-agent".into(),
            room: "named-room".into(),
            metadata: "extra".into(),
            ..Default::default()
        })
        .await
        .expect("create_dispatch");
    assert!(!d.id.is_empty());
    assert_eq!(d.agent_name, "other-agent");
    let job2 = expect_offer(&mut other).await.job.unwrap();
    assert_eq!((job2.dispatch_id.as_str(), job2.metadata.as_str()), (d.id.as_str(), "extra"));
    answer(&mut other, &job2.id, true, "other-1").await;
    expect_assignment(&mut other).await;
    let list = dispatches(&server).list_dispatch("named-room").await.unwrap();
    let mut names: Vec<&str> = list.iter().map(|d| d.agent_name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["incident-intake", "other-agent"]);
    dispatches(&server).delete_dispatch(&d.id, "named-room").await.expect("delete_dispatch");
    match next(&mut other).await {
        S::Termination(t) => assert_eq!(t.job_id, job2.id),
        m => panic!("expected termination, got {m:?}"),
    }
    assert_eq!(dispatches(&server).list_dispatch("named-room").await.unwrap().len(), 1);
    expect_silence(&mut intake, Duration::from_millis(100)).await;

    // A room auto-created by the first /rtc join gets the automatic agent.
    let (_rtc, _) = rtc_join(&server, &join_token("caller", "rtc-room")).await;
    let job3 = expect_offer(&mut auto).await.job.unwrap();
    assert_eq!((job3.room.unwrap().name.as_str(), job3.agent_name.as_str()), ("rtc-room", ""));
    expect_silence(&mut intake, Duration::from_millis(300)).await;

    // ... unless the joining token's roomConfig names the agents.
    let now = devroom::auth::unix_now() as u64;
    let token = devroom::auth::sign(
        &serde_json::json!({"iss": API_KEY, "sub": "caller2", "exp": now + 600,
            "video": {"roomJoin": true, "room": "token-room"},
            "roomConfig": {"agents": [{"agentName": "incident-intake", "metadata": "from-token"}]}}),
        API_SECRET,
    );
    let (_rtc2, _) = rtc_join(&server, &token).await;
    let job4 = expect_offer(&mut intake).await.job.unwrap();
    assert_eq!((job4.room.unwrap().name.as_str(), job4.metadata.as_str()), ("token-room", "from-token"));
    expect_silence(&mut auto, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn jobs_without_a_worker_are_dropped_as_livekit_server_does() {
    let server = Devroom::start("dispatch_pending", &[]);
    // No worker: the job is dropped (JS_FAILED), not kept for a worker that registers later
    // (livekit-server agentservice.go JobRequest → ResourceExhausted).
    rooms(&server).create_room("early-room", Default::default()).await.unwrap();
    let list = dispatches(&server).list_dispatch("early-room").await.unwrap();
    let st = list[0].state.clone().unwrap().jobs[0].state.clone().unwrap();
    assert_eq!(st.status, lk::JobStatus::JsFailed as i32, "{st:?}");
    let (mut ws, _) = register(&server, "").await;
    expect_silence(&mut ws, Duration::from_millis(500)).await;

    // A full worker is offered nothing: the job is dropped, and not offered when it frees up.
    send(
        &mut ws,
        W::UpdateWorker(lk::UpdateWorkerStatus {
            status: Some(lk::WorkerStatus::WsFull as i32),
            load: 1.0,
            job_count: 1,
            ..Default::default()
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    rooms(&server).create_room("full-room", Default::default()).await.unwrap();
    expect_silence(&mut ws, Duration::from_millis(500)).await;
    send(
        &mut ws,
        W::UpdateWorker(lk::UpdateWorkerStatus {
            status: Some(lk::WorkerStatus::WsAvailable as i32),
            load: 0.0,
            job_count: 0,
            ..Default::default()
        }),
    )
    .await;
    expect_silence(&mut ws, Duration::from_millis(500)).await;

    // Declined by the only worker: dropped, never offered again.
    rooms(&server).create_room("declined-room", Default::default()).await.unwrap();
    let job = expect_offer(&mut ws).await.job.unwrap();
    answer(&mut ws, &job.id, false, "").await;
    expect_silence(&mut ws, Duration::from_millis(800)).await;

    rooms(&server).create_room("busy-room", Default::default()).await.unwrap();
    let job = expect_offer(&mut ws).await.job.unwrap();
    assert_eq!(job.room.unwrap().name, "busy-room");

    // A finished job frees the worker's slot and no longer counts.
    answer(&mut ws, &job.id, true, "agent-busy").await;
    expect_assignment(&mut ws).await;
    send(
        &mut ws,
        W::UpdateJob(lk::UpdateJobStatus {
            job_id: job.id.clone(),
            status: lk::JobStatus::JsFailed as i32,
            error: "boom".into(),
        }),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list = dispatches(&server).list_dispatch("busy-room").await.unwrap();
        let st = list[0].state.clone().unwrap().jobs[0].state.clone().unwrap();
        if st.status == lk::JobStatus::JsFailed as i32 {
            assert_eq!(st.error, "boom");
            assert!(st.ended_at > 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Deleting its room sends no termination for a job that already ended.
    rooms(&server).delete_room("busy-room").await.unwrap();
    expect_silence(&mut ws, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_lost_worker_hands_on_jobs_whose_agent_has_not_joined() {
    let server = Devroom::start("dispatch_lost", &[]);
    let (mut a, _) = register(&server, "").await;
    rooms(&server).create_room("lost-room", Default::default()).await.unwrap();
    let job = expect_offer(&mut a).await.job.unwrap();
    answer(&mut a, &job.id, true, "agent-lost").await;
    expect_assignment(&mut a).await;
    let (mut b, _) = register(&server, "").await;
    // `a` goes away before its agent joined: the job is offered again, as resuming.
    drop(a);
    let offer = expect_offer(&mut b).await;
    assert!(offer.resuming);
    let job_b = offer.job.unwrap();
    assert_eq!(job_b.id, job.id);
    answer(&mut b, &job.id, true, "agent-lost").await;
    let assignment = expect_assignment(&mut b).await;
    // This time the agent joins; when `b` goes away the job stays with that agent.
    let (_rtc, _) = rtc_join(&server, &assignment.token).await;
    let (mut c, _) = register(&server, "").await;
    drop(b);
    expect_silence(&mut c, Duration::from_millis(1000)).await;
    let parts = rooms(&server).list_participants("lost-room").await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].identity, "agent-lost");
}
