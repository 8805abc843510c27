//! Webhook delivery: a small HTTP listener in the test receives devroom's POSTs and verifies
//! them with the official `livekit-api` WebhookReceiver (HS256 JWT + `sha256` body claim), plus
//! the headers and the body hash by hand.

mod common;

use std::process::Command;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine as _;
use common::{py_script, python_has, run_with_timeout, Devroom, API_KEY, API_SECRET};
use livekit_api::access_token::TokenVerifier;
use livekit_api::services::room::{CreateRoomOptions, RoomClient};
use livekit_api::webhooks::WebhookReceiver;
use sha2::Digest;
use tokio::sync::mpsc;

struct Hook {
    content_type: String,
    authorization: String,
    body: String,
}

async fn listener() -> (String, mpsc::UnboundedReceiver<Hook>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(|State(tx): State<mpsc::UnboundedSender<Hook>>, headers: HeaderMap, body: Bytes| async move {
                let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let _ = tx.send(Hook {
                    content_type: h("content-type"),
                    authorization: h("authorization"),
                    body: String::from_utf8_lossy(&body).to_string(),
                });
                "ok"
            }),
        )
        .with_state(tx);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, rx)
}

/// Verifies one delivery and returns the event.
fn verify(h: &Hook) -> livekit_protocol::WebhookEvent {
    assert_eq!(h.content_type, "application/webhook+json");
    assert!(!h.authorization.starts_with("Bearer"), "bare JWT expected");
    // By hand: the sha256 claim is standard padded base64 of SHA-256(body).
    let claims = devroom::auth::verify(
        &h.authorization,
        &devroom::auth::Keys::single(API_KEY, API_SECRET),
        devroom::auth::unix_now(),
    )
    .expect("webhook JWT verifies with the API secret");
    let want = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(h.body.as_bytes()));
    assert_eq!(claims.sha256, want);
    assert_eq!(claims.iss, API_KEY);
    // A wrong secret must not verify.
    let wrong = WebhookReceiver::new(TokenVerifier::with_api_key(API_KEY, "wrong"));
    assert!(wrong.receive(&h.body, &h.authorization).is_err());
    // The official receiver accepts it and parses the protojson body.
    WebhookReceiver::new(TokenVerifier::with_api_key(API_KEY, API_SECRET))
        .receive(&h.body, &h.authorization)
        .expect("livekit-api WebhookReceiver accepts the delivery")
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Hook>, name: &str) -> livekit_protocol::WebhookEvent {
    loop {
        let h = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {name} webhook within 20 s"))
            .expect("listener alive");
        let ev = verify(&h);
        assert!(ev.id.starts_with("EV_"));
        assert!(ev.created_at > 0);
        if ev.event == name {
            return ev;
        }
        eprintln!("(skipping webhook {})", ev.event);
    }
}

#[tokio::test]
async fn webhooks_are_signed_and_delivered() {
    let (url, mut rx) = listener().await;
    let server = Devroom::start("webhooks", &["--webhook-url", &url, "--departure-timeout", "1"]);
    let client = RoomClient::with_api_key(&server.http_url(), API_KEY, API_SECRET);

    // An API-created room that nobody joins closes by itself after its empty_timeout.
    client
        .create_room("short-lived", CreateRoomOptions { empty_timeout: 1, ..Default::default() })
        .await
        .unwrap();
    let ev = next_event(&mut rx, "room_started").await;
    assert_eq!(ev.room.as_ref().unwrap().name, "short-lived");
    let ev = next_event(&mut rx, "room_finished").await;
    assert_eq!(ev.room.as_ref().unwrap().name, "short-lived");

    client.create_room("hook-room", Default::default()).await.unwrap();
    let ev = next_event(&mut rx, "room_started").await;
    assert_eq!(ev.room.as_ref().unwrap().name, "hook-room");

    if python_has("livekit.rtc, numpy", "pip install livekit numpy") {
        let (status, stdout, stderr) = run_with_timeout(
            Command::new("python3").arg(py_script("publish_tone.py")).args([
                "--url",
                &server.ws_url(),
                "--room",
                "hook-room",
                "--identity",
                "caller",
                "--kind",
                "sip",
                "--seconds",
                "1.5",
            ]),
            Duration::from_secs(60),
        );
        assert_eq!(
            status.map(|s| s.success()),
            Some(true),
            "publish_tone.py failed\n{stdout}\n{stderr}\n{}",
            server.log_tail(40)
        );
        let ev = next_event(&mut rx, "participant_joined").await;
        let p = ev.participant.unwrap();
        assert_eq!(p.identity, "caller");
        assert_eq!(p.kind, livekit_protocol::participant_info::Kind::Sip as i32);
        assert_eq!(ev.room.unwrap().name, "hook-room");
        let ev = next_event(&mut rx, "track_published").await;
        let t = ev.track.unwrap();
        assert!(t.sid.starts_with("TR_"));
        assert_eq!(t.r#type, livekit_protocol::TrackType::Audio as i32);
        assert_eq!(t.mime_type, "audio/opus");
        assert_eq!(ev.participant.unwrap().identity, "caller");
        let ev = next_event(&mut rx, "participant_left").await;
        assert_eq!(ev.participant.unwrap().identity, "caller");
        // departure_timeout 1 s: the room closes once the caller left.
        let ev = next_event(&mut rx, "room_finished").await;
        assert_eq!(ev.room.unwrap().name, "hook-room");
    } else {
        client.delete_room("hook-room").await.unwrap();
        let ev = next_event(&mut rx, "room_finished").await;
        assert_eq!(ev.room.unwrap().name, "hook-room");
    }
}

#[tokio::test]
async fn unreachable_webhook_does_not_block_the_server() {
    // Nothing listens on this port; deliveries fail and are logged, the API keeps answering.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = Devroom::start("webhooks_dead", &["--webhook-url", &format!("http://{dead}/x")]);
    let client = RoomClient::with_api_key(&server.http_url(), API_KEY, API_SECRET);
    for i in 0..20 {
        client.create_room(&format!("r{i}"), Default::default()).await.unwrap();
    }
    assert_eq!(client.list_rooms(vec![]).await.unwrap().len(), 20);
    let bad = Devroom::try_start_fails(&["--webhook-url", "https://example.invalid/hook"]);
    assert!(bad.contains("http://"), "{bad}");
}
