//! Worker mode against devroom's own agent dispatch (in process, no fakes): rooms created with
//! Twirp `CreateRoom` are dispatched to the real worker (`run_worker`), whose agent joins them as
//! `agent-<room>`; the job's status reaches devroom (`AgentDispatchService.ListDispatch`);
//! `DeleteRoom` terminates a running job and the worker takes the next one.

use std::sync::Arc;
use std::time::Duration;

use agent::config::AgentSpec;
use agent::call::CallParams;
use agent::stack::Stack;
use agent::worker::{run_worker, WorkerOptions};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "devkey";
const SECRET: &str = "secret";

/// One Twirp call in protojson over plain HTTP/1.1; returns (status, body as JSON).
async fn twirp(
    addr: std::net::SocketAddr,
    service: &str,
    method: &str,
    video: serde_json::Value,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let token = agent::token::sign(KEY, SECRET, serde_json::json!({"sub": "test-admin", "video": video}), 600);
    let body = body.to_string();
    let req = format!(
        "POST /twirp/livekit.{service}/{method} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect devroom");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("twirp answer")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

async fn create_room(addr: std::net::SocketAddr, room: &str) {
    let (st, body) = twirp(
        addr,
        "RoomService",
        "CreateRoom",
        serde_json::json!({"roomCreate": true}),
        serde_json::json!({"name": room}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
}

async fn participants(addr: std::net::SocketAddr, room: &str) -> Vec<serde_json::Value> {
    let (st, body) = twirp(
        addr,
        "RoomService",
        "ListParticipants",
        serde_json::json!({"roomAdmin": true, "room": room}),
        serde_json::json!({"room": room}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    body["participants"].as_array().cloned().unwrap_or_default()
}

/// The state of the room's only job, as devroom knows it.
async fn job_state(addr: std::net::SocketAddr, room: &str) -> serde_json::Value {
    let (st, body) = twirp(
        addr,
        "AgentDispatchService",
        "ListDispatch",
        serde_json::json!({"roomAdmin": true, "room": room}),
        serde_json::json!({"room": room}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let d = &body["agentDispatches"];
    assert_eq!(d.as_array().map(Vec::len), Some(1), "one automatic dispatch: {body}");
    d[0]["state"]["jobs"][0]["state"].clone()
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_takes_jobs_that_devroom_dispatches() {
    let cfg = devroom::Config::parse_from(["devroom", "--listen", "127.0.0.1:0", "--rtc-port", "0"]);
    let running = devroom::start(cfg).await.expect("devroom starts");
    let addr = running.http_addr;

    let spec = Arc::new(AgentSpec::load(None).unwrap());
    let stack = Stack::offline(&spec).unwrap();
    let metrics = agent::metrics::global().clone();
    let params = CallParams {
        spec,
        stack,
        recorder: None,
        metrics: metrics.clone(),
        // No caller joins: a job ends by itself ("no_caller") after this.
        phone_wait: Duration::from_secs(8),
        record_dtmf: false,
        shutdown: Default::default(),
        dialer: None,
    };
    let opts = WorkerOptions {
        url: format!("http://{addr}"),
        api_key: KEY.into(),
        api_secret: SECRET.into(),
        agent_name: String::new(),
        // One slot: the second room is only taken once the first job's slot is given back
        // (termination) and the worker reports itself available again.
        max_jobs: 1,
        drain: None,
        max_retries: Some(2),
    };
    let registered = metrics.worker_registrations.load(std::sync::atomic::Ordering::Relaxed);
    let worker = tokio::spawn(run_worker(opts, params));
    // A job nobody can take is dropped (as livekit-server does): wait for the registration.
    wait_for("the worker to register", 15, async || {
        (metrics.worker_registrations.load(std::sync::atomic::Ordering::Relaxed) > registered).then_some(())
    })
    .await;

    // 1. A room made through Twirp: the automatic agent joins it.
    let room1 = "call-CAworkerdevroom000000000000000000001";
    create_room(addr, room1).await;
    let agent_identity = format!("agent-{room1}");
    let agent = wait_for("the agent participant", 30, async || {
        participants(addr, room1)
            .await
            .into_iter()
            .find(|p| p["identity"] == agent_identity.as_str())
    })
    .await;
    assert_eq!(agent["kind"], "AGENT", "{agent}");
    let st = wait_for("JS_RUNNING", 10, async || {
        let st = job_state(addr, room1).await;
        (st["status"] == "JS_RUNNING").then_some(st)
    })
    .await;
    assert_eq!(st["participantIdentity"], agent_identity.as_str(), "{st}");
    assert!(st["workerId"].as_str().is_some_and(|w| w.starts_with("AW_")), "{st}");

    // 2. DeleteRoom terminates the job; the worker's slot is free for the next room.
    let (code, body) = twirp(
        addr,
        "RoomService",
        "DeleteRoom",
        serde_json::json!({"roomCreate": true}),
        serde_json::json!({"room": room1}),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // 3. The next room's job runs to its end (no caller) and the worker reports success.
    // The worker says it is available again once the first job ended; a room made while it is
    // still full has its job dropped, so make it again (a new room, a new job) until one lands.
    let room2 = "call-CAworkerdevroom000000000000000000002";
    wait_for("a job the free worker takes", 20, async || {
        create_room(addr, room2).await;
        let st = job_state(addr, room2).await;
        if st["status"] == "JS_FAILED" {
            let _ = twirp(addr, "RoomService", "DeleteRoom", serde_json::json!({"roomCreate": true}), serde_json::json!({"room": room2})).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            return None;
        }
        Some(())
    })
    .await;
    let st = wait_for("JS_SUCCESS", 40, async || {
        let st = job_state(addr, room2).await;
        (st["status"] == "JS_SUCCESS").then_some(st)
    })
    .await;
    assert_eq!(st["participantIdentity"], format!("agent-{room2}").as_str(), "{st}");
    assert!(st.get("startedAt").is_some() && st.get("endedAt").is_some(), "{st}");
    // The agent left when its job ended.
    wait_for("the agent to leave", 10, async || participants(addr, room2).await.is_empty().then_some(())).await;

    worker.abort();
    running.shutdown().await;
}
