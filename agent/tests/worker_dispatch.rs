//! Worker mode against a tiny fake of LiveKit's `/agent` endpoint: register, availability,
//! assignment, job status, worker status — the `livekit_agent.proto` exchange.

use std::sync::Arc;
use std::time::Duration;

use agent::config::AgentSpec;
use agent::call::CallParams;
use agent::stack::Stack;
use agent::worker::{run_worker, WorkerOptions};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use prost::Message as _;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

fn server_msg(m: lk::server_message::Message) -> Message {
    Message::Binary(
        lk::ServerMessage { message: Some(m) }
            .encode_to_vec()
            .into(),
    )
}

fn job(id: &str, room: &str) -> lk::Job {
    lk::Job {
        id: id.into(),
        room: Some(lk::Room {
            name: room.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
#[allow(deprecated, clippy::result_large_err)]
async fn worker_registers_accepts_jobs_and_reports_status() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spec = Arc::new(AgentSpec::load(None).unwrap());
    let stack = Stack::offline(&spec).unwrap();
    let params = CallParams {
        spec,
        stack,
        recorder: None,
        metrics: agent::metrics::global().clone(),
        phone_wait: Duration::from_secs(1),
        record_dtmf: false,
        shutdown: Default::default(),
        dialer: None,
    };
    let opts = WorkerOptions {
        url: format!("http://{addr}"),
        api_key: "devkey".into(),
        api_secret: "secret".into(),
        agent_name: "incident-intake".into(),
        max_jobs: 1,
        drain: None,
        max_retries: Some(0),
    };
    let worker = tokio::spawn(run_worker(opts, params));

    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut path = String::new();
    let mut auth = String::new();
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Ok(resp)
    })
    .await
    .unwrap();
    assert_eq!(path, "/agent");
    let token = auth.strip_prefix("Bearer ").expect("bearer token");
    let claims = agent::token::claims(token).unwrap();
    assert_eq!(claims["iss"], "devkey");
    assert_eq!(claims["video"]["agent"], true);

    use lk::worker_message::Message as W;
    let W::Register(reg) = recv_any(&mut ws).await else {
        panic!("register first")
    };
    assert_eq!(reg.agent_name, "incident-intake");
    assert_eq!(reg.r#type, lk::JobType::JtRoom as i32);
    assert!(reg.allowed_permissions.unwrap().agent);
    ws.send(server_msg(lk::server_message::Message::Register(
        lk::RegisterWorkerResponse {
            worker_id: "AW_test".into(),
            ..Default::default()
        },
    )))
    .await
    .unwrap();

    // Offered a job: accepted, with the agent's identity for that room.
    ws.send(server_msg(lk::server_message::Message::Availability(
        lk::AvailabilityRequest {
            job: Some(job("AJ_1", "call-CA1")),
            resuming: false,
        },
    )))
    .await
    .unwrap();
    let m = recv_non_status(&mut ws).await;
    let W::Availability(av) = m else {
        panic!("{m:?}")
    };
    assert_eq!(av.job_id, "AJ_1");
    assert!(av.available);
    assert_eq!(av.participant_identity, "agent-call-CA1");

    // A second job while the only slot is promised: declined.
    ws.send(server_msg(lk::server_message::Message::Availability(
        lk::AvailabilityRequest {
            job: Some(job("AJ_2", "call-CA2")),
            resuming: false,
        },
    )))
    .await
    .unwrap();
    let W::Availability(av2) = recv_non_status(&mut ws).await else {
        panic!()
    };
    assert_eq!(av2.job_id, "AJ_2");
    assert!(!av2.available);

    // Assigned, but the room's server is unreachable: the job is reported failed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    ws.send(server_msg(lk::server_message::Message::Assignment(
        lk::JobAssignment {
            job: Some(job("AJ_1", "call-CA1")),
            url: Some(format!("ws://{dead}")),
            token: "t".into(),
        },
    )))
    .await
    .unwrap();
    let W::UpdateJob(u) = recv_non_status(&mut ws).await else {
        panic!()
    };
    assert_eq!(u.job_id, "AJ_1");
    assert_eq!(u.status, lk::JobStatus::JsFailed as i32);
    assert!(!u.error.is_empty());

    // Worker status updates report load; after the failed job the worker is available again.
    let mut saw_available = false;
    for _ in 0..4 {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m {
            if let Some(W::UpdateWorker(u)) = lk::WorkerMessage::decode(b.as_ref()).unwrap().message
            {
                if u.status == Some(lk::WorkerStatus::WsAvailable as i32) && u.job_count == 0 {
                    saw_available = true;
                    break;
                }
            }
        }
    }
    assert!(saw_available);

    // The server goes away: with max_retries 0 the worker gives up with an error.
    drop(ws);
    let r = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker ends")
        .unwrap();
    assert!(r.is_err());
}

async fn recv_non_status(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> lk::worker_message::Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("worker message")
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m {
            match lk::WorkerMessage::decode(b.as_ref())
                .unwrap()
                .message
                .unwrap()
            {
                lk::worker_message::Message::UpdateWorker(_) => continue,
                other => return other,
            }
        }
    }
}

async fn recv_any(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> lk::worker_message::Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("worker message")
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m {
            return lk::WorkerMessage::decode(b.as_ref())
                .unwrap()
                .message
                .unwrap();
        }
    }
}

/// Worker mode end to end: the fake `/agent` server dispatches a job for a real `devroom` room;
/// the worker joins with the assignment's token, greets the phone participant, and reports the
/// job running and then finished when the caller leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn dispatched_job_joins_the_room_and_talks() {
    let devroom_bin = std::env::var("DEVROOM_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"))
                .join("debug")
                .join("devroom")
        });
    assert!(
        devroom_bin.exists(),
        "devroom binary not found at {} — cargo build -p devroom",
        devroom_bin.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _devroom = Kill(
        std::process::Command::new(&devroom_bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--rtc-port", "0"])
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(t0.elapsed() < Duration::from_secs(15));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lk_url = format!("ws://127.0.0.1:{port}");
    let room_name = "call-CAdispatch00000000000000000000000001";
    let phone_token = agent::token::sign(
        "devkey",
        "secret",
        serde_json::json!({"sub": "phone-CAdispatch00000000000000000000000001", "kind": "sip",
            "video": {"roomJoin": true, "room": room_name, "canPublish": true, "canSubscribe": true, "canPublishData": true}}),
        3600,
    );
    let (phone, mut events) =
        room::Room::connect(&lk_url, &phone_token, room::RoomOptions::default())
            .await
            .unwrap();
    let mut sink = phone
        .publish_audio(room::AudioTrackOptions {
            sample_rate: 16_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mic = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if sink.push(&[0i16; 320]).await.is_err() {
                return;
            }
        }
    });

    // The fake /agent server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = listener.local_addr().unwrap();
    let spec = Arc::new(AgentSpec::load(None).unwrap());
    let stack = Stack::offline(&spec).unwrap();
    let params = CallParams {
        spec,
        stack,
        recorder: None,
        metrics: agent::metrics::global().clone(),
        phone_wait: Duration::from_secs(20),
        record_dtmf: false,
        shutdown: Default::default(),
        dialer: None,
    };
    let opts = WorkerOptions {
        url: format!("http://{agent_addr}"),
        api_key: "devkey".into(),
        api_secret: "secret".into(),
        agent_name: String::new(),
        max_jobs: 2,
        drain: None,
        max_retries: Some(0),
    };
    let worker = tokio::spawn(run_worker(opts, params));
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let lk::worker_message::Message::Register(reg) = recv_any(&mut ws).await else {
        panic!("register first")
    };
    assert_eq!(reg.agent_name, "", "automatic dispatch");
    ws.send(server_msg(lk::server_message::Message::Register(
        lk::RegisterWorkerResponse {
            worker_id: "AW_1".into(),
            ..Default::default()
        },
    )))
    .await
    .unwrap();
    ws.send(server_msg(lk::server_message::Message::Availability(
        lk::AvailabilityRequest {
            job: Some(job("AJ_live", room_name)),
            resuming: false,
        },
    )))
    .await
    .unwrap();
    let lk::worker_message::Message::Availability(av) = recv_non_status(&mut ws).await else {
        panic!()
    };
    assert!(av.available);
    // The server mints the agent's token with the identity the worker asked for.
    let agent_token = agent::token::sign(
        "devkey",
        "secret",
        serde_json::json!({"sub": av.participant_identity, "name": av.participant_name, "kind": "agent",
            "video": {"roomJoin": true, "room": room_name, "canPublish": true, "canSubscribe": true, "canPublishData": true, "agent": true}}),
        3600,
    );
    ws.send(server_msg(lk::server_message::Message::Assignment(
        lk::JobAssignment {
            job: Some(job("AJ_live", room_name)),
            url: Some(lk_url.clone()),
            token: agent_token,
        },
    )))
    .await
    .unwrap();
    let lk::worker_message::Message::UpdateJob(u) = recv_non_status(&mut ws).await else {
        panic!()
    };
    assert_eq!(
        (u.job_id.as_str(), u.status),
        ("AJ_live", lk::JobStatus::JsRunning as i32)
    );

    // The phone hears the agent's greeting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut loud = 0;
    while loud < 25 {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("agent audio")
            .unwrap();
        if let room::RoomEvent::TrackSubscribed { track, participant } = ev {
            assert_eq!(participant.identity, format!("agent-{room_name}"));
            let mut st = track.stream(16_000).unwrap();
            while loud < 25 {
                let f = tokio::time::timeout_at(deadline, st.recv())
                    .await
                    .expect("agent audio")
                    .unwrap();
                if agent::vad::level_dbfs(&f.samples) > -40.0 {
                    loud += 1;
                }
            }
        }
    }

    // The caller leaves: the job ends and is reported done.
    mic.abort();
    phone.close().await;
    let lk::worker_message::Message::UpdateJob(u) = recv_non_status(&mut ws).await else {
        panic!()
    };
    assert_eq!(
        (u.job_id.as_str(), u.status),
        ("AJ_live", lk::JobStatus::JsSuccess as i32)
    );
    drop(ws);
    let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
}

/// Draining (SIGTERM): the worker says it is full at once, declines what it is offered, and
/// returns when it has no call left.
#[tokio::test]
async fn a_draining_worker_takes_no_more_jobs_and_returns() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spec = Arc::new(AgentSpec::load(None).unwrap());
    let params = CallParams {
        stack: Stack::offline(&spec).unwrap(),
        spec,
        recorder: None,
        metrics: agent::metrics::global().clone(),
        phone_wait: Duration::from_secs(1),
        record_dtmf: false,
        shutdown: Default::default(),
        dialer: None,
    };
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let opts = WorkerOptions {
        url: format!("http://{addr}"),
        api_key: "devkey".into(),
        api_secret: "secret".into(),
        agent_name: String::new(),
        max_jobs: 4,
        drain: Some(drain_rx),
        max_retries: Some(0),
    };
    let worker = tokio::spawn(run_worker(opts, params));
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    use lk::worker_message::Message as W;
    let W::Register(_) = recv_any(&mut ws).await else { panic!("register first") };
    ws.send(server_msg(lk::server_message::Message::Register(lk::RegisterWorkerResponse {
        worker_id: "AW_drain".into(),
        ..Default::default()
    })))
    .await
    .unwrap();

    drain_tx.send(true).unwrap();
    // WS_FULL comes at once (not at the next 2.5 s tick).
    let t0 = std::time::Instant::now();
    loop {
        match recv_any(&mut ws).await {
            W::UpdateWorker(u) if u.status == Some(lk::WorkerStatus::WsFull as i32) => break,
            _ => assert!(t0.elapsed() < Duration::from_secs(2), "no WS_FULL after the drain"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // With no call running, the worker is done: it closes the connection and returns Ok.
    let r = tokio::time::timeout(Duration::from_secs(10), worker).await.expect("worker returns").unwrap();
    assert!(r.is_ok(), "{r:?}");
}
