//! The warm transfer's dialer against fakes of the bridge's LiveKit SIP API and of LiveKit's
//! RoomService, speaking Twirp's protobuf as livekit-server does: `CreateSIPParticipant` carries
//! the configured number, this room, the person's identity and `wait_until_answered` under a JWT
//! with the `sip.call` grant; the answer becomes `Answered`, a Twirp error `Failed` with its
//! message; hanging up removes the person's participant.

use std::sync::{Arc, Mutex};

use agent::conversation::TransferEvent;
use agent::dialer::Dialer;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use base64::Engine;
use livekit_protocol as lk;
use prost::Message;

#[derive(Default)]
struct Seen {
    create: Vec<(HeaderMap, lk::CreateSipParticipantRequest)>,
    removed: Vec<lk::RoomParticipantIdentity>,
}

async fn fake(busy: bool) -> (String, Arc<Mutex<Seen>>) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (s1, s2) = (seen.clone(), seen.clone());
    let app = Router::new()
        .route(
            "/twirp/livekit.SIP/CreateSIPParticipant",
            post(move |headers: HeaderMap, body: Bytes| {
                let s1 = s1.clone();
                async move {
                    let req = lk::CreateSipParticipantRequest::decode(body).unwrap();
                    s1.lock().unwrap().create.push((headers, req.clone()));
                    if busy {
                        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/json")], r#"{"code":"unavailable","msg":"busy here"}"#.as_bytes().to_vec()).into_response();
                    }
                    let info = lk::SipParticipantInfo { participant_id: "PA_1".into(), participant_identity: req.participant_identity, room_name: req.room_name, sip_call_id: "CA2".into() };
                    (StatusCode::OK, [("content-type", "application/protobuf")], info.encode_to_vec()).into_response()
                }
            }),
        )
        .route(
            "/twirp/livekit.RoomService/RemoveParticipant",
            post(move |body: Bytes| {
                let s2 = s2.clone();
                async move {
                    s2.lock().unwrap().removed.push(lk::RoomParticipantIdentity::decode(body).unwrap());
                    ([("content-type", "application/protobuf")], lk::RemoveParticipantResponse::default().encode_to_vec())
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
async fn dials_the_configured_number_into_the_room_and_hangs_up_by_removing_the_person() {
    let (url, seen) = fake(false).await;
    let ws = url.replace("http://", "ws://");
    let d = Dialer::new(&format!("{url}/"), &ws, "devkey", "secret");
    assert_eq!(d.dial("call-CA1", "sales", "+15550100201").await, TransferEvent::Answered);
    let (headers, req) = seen.lock().unwrap().create[0].clone();
    assert_eq!((req.sip_call_to.as_str(), req.room_name.as_str(), req.participant_identity.as_str()), ("+15550100201", "call-CA1", "transfer-sales"));
    assert!(req.wait_until_answered && req.sip_trunk_id.is_empty());
    let auth = headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_string();
    let claims: serde_json::Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(auth.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!((claims["iss"].as_str(), claims["sip"]["call"].as_bool()), (Some("devkey"), Some(true)), "{claims}");
    d.hang_up("call-CA1", "transfer-sales").await;
    let removed = seen.lock().unwrap().removed.clone();
    let removed: Vec<(&str, &str)> = removed.iter().map(|r| (r.room.as_str(), r.identity.as_str())).collect();
    assert_eq!(removed, [("call-CA1", "transfer-sales")]);

    // Busy (LiveKit SIP's Twirp error): a failure with its message, never an answer.
    let (url, _) = fake(true).await;
    let ev = Dialer::new(&url, &url, "devkey", "secret").dial("call-CA1", "sales", "+15550100201").await;
    assert!(matches!(&ev, TransferEvent::Failed { reason } if reason.contains("busy here")), "{ev:?}");
    // Nobody listening: a failure too.
    let ev = Dialer::new("http://127.0.0.1:9", "http://127.0.0.1:9", "devkey", "secret").dial("call-CA1", "sales", "+15550100201").await;
    assert!(matches!(ev, TransferEvent::Failed { .. }), "{ev:?}");
}
