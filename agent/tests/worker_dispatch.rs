//! Worker mode against a tiny fake of LiveKit's `/agent` endpoint: register, availability,
//! assignment, job status, worker status — the `livekit_agent.proto` exchange.

use std::sync::Arc;
use std::time::Duration;

use agent::config::AgentSpec;
use agent::session::SessionParams;
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
    let params = SessionParams {
        spec,
        stack,
        recorder: None,
        metrics: agent::metrics::global().clone(),
        phone_wait: Duration::from_secs(1),
    };
    let opts = WorkerOptions {
        url: format!("http://{addr}"),
        api_key: "devkey".into(),
        api_secret: "secret".into(),
        agent_name: "incident-intake".into(),
        max_jobs: 1,
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
