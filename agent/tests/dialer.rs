//! The warm transfer's dialer against a fake of the bridge's LiveKit SIP API: the request is
//! `CreateSIPParticipant` as livekit-server's Twirp takes it (JSON, a JWT with the `sip.call`
//! grant signed with the API secret, `wait_until_answered`, the configured number, this room),
//! and the answer becomes `Answered`, or `Failed` with LiveKit's error message.

use std::sync::{Arc, Mutex};

use agent::conversation::TransferEvent;
use agent::dialer::Dialer;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;

type Seen = Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>;

async fn fake(status: StatusCode, body: &'static str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/twirp/livekit.SIP/CreateSIPParticipant",
        post(move |headers: HeaderMap, body_in: String| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push((headers, serde_json::from_str(&body_in).unwrap_or_default()));
                (status, [("content-type", "application/json")], body)
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, seen)
}

#[tokio::test]
async fn dials_the_configured_number_into_the_room_and_reads_the_answer() {
    let (url, seen) = fake(StatusCode::OK, r#"{"participantId":"PA_1","participantIdentity":"transfer-sales","roomName":"call-CA1","sipCallId":"CA2"}"#).await;
    let d = Dialer::new(&format!("{url}/"), "devkey", "secret");
    assert_eq!(d.dial("call-CA1", "sales", "+15550100201").await, TransferEvent::Answered);
    let (headers, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(body["sip_call_to"], "+15550100201");
    assert_eq!(body["room_name"], "call-CA1");
    assert_eq!(body["participant_identity"], "transfer-sales");
    assert_eq!(body["wait_until_answered"], true);
    let auth = headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_string();
    let claims: serde_json::Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(auth.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!((claims["iss"].as_str(), claims["sip"]["call"].as_bool()), (Some("devkey"), Some(true)));
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());

    // Busy (LiveKit SIP's Twirp error): a failure with its message, never an answer.
    let (url, _) = fake(StatusCode::from_u16(486).unwrap_or(StatusCode::CONFLICT), r#"{"code":"unavailable","msg":"busy here"}"#).await;
    let ev = Dialer::new(&url, "devkey", "secret").dial("call-CA1", "sales", "+15550100201").await;
    assert!(matches!(&ev, TransferEvent::Failed { reason } if reason.contains("busy here")), "{ev:?}");
    // Nobody listening: a failure too.
    let ev = Dialer::new("http://127.0.0.1:9", "devkey", "secret").dial("call-CA1", "sales", "+15550100201").await;
    assert!(matches!(ev, TransferEvent::Failed { .. }), "{ev:?}");
}
