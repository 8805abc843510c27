//! `/rtc` signalling at the protocol level (raw WebSocket + livekit-protocol types):
//! auth refusals, join response, subscriber offer, ping/pong, add_track, participant updates,
//! and clean errors for undecodable frames and bad SDP.

mod common;

use std::time::Duration;

use common::{join_token, Devroom, API_KEY, API_SECRET};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use prost::Message as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &Devroom, token: &str) -> Ws {
    let mut req = format!("{}/rtc?protocol=16&sdk=rust", server.ws_url())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws connect");
    ws
}

/// Next SignalResponse (or None when the socket closed); panics after 5 s.
async fn next(ws: &mut Ws) -> Option<Resp> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for a signal message");
        match msg {
            Some(Ok(Message::Binary(b))) => {
                return Some(lk::SignalResponse::decode(b.as_ref()).expect("decode").message.expect("message"))
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            _ => continue,
        }
    }
}

/// Waits for a message matching `f`, skipping others.
async fn wait_for<T>(ws: &mut Ws, mut f: impl FnMut(Resp) -> Option<T>) -> T {
    loop {
        let m = next(ws).await.expect("socket closed while waiting");
        if let Some(t) = f(m) {
            return t;
        }
    }
}

async fn send(ws: &mut Ws, m: Req) {
    let bytes = lk::SignalRequest { message: Some(m) }.encode_to_vec();
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

/// Reads until the close frame; returns (code, reason).
async fn close_frame(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for close");
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            _ => continue,
        }
    }
}

async fn http_refusal(url: String) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
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

#[tokio::test]
async fn rtc_refuses_bad_tokens_with_401() {
    let server = Devroom::start("signal_auth", &[]);
    let ws = server.ws_url();

    let (st, body) = http_refusal(format!("{ws}/rtc?access_token=garbage")).await;
    assert_eq!(st, 401);
    assert!(body.contains("invalid authorization token"), "{body}");

    let (st, _) = http_refusal(format!("{ws}/rtc")).await;
    assert_eq!(st, 401);

    let now = devroom::auth::unix_now() as u64;
    let expired = devroom::auth::sign(
        &serde_json::json!({"iss": API_KEY, "sub": "a", "exp": now - 3600, "video": {"roomJoin": true, "room": "r"}}),
        API_SECRET,
    );
    let (st, body) = http_refusal(format!("{ws}/rtc?access_token={expired}")).await;
    assert_eq!(st, 401);
    assert!(body.contains("expired"), "{body}");

    let forged = devroom::auth::sign(
        &serde_json::json!({"iss": API_KEY, "sub": "a", "exp": now + 600, "video": {"roomJoin": true, "room": "r"}}),
        "wrong-secret",
    );
    let (st, body) = http_refusal(format!("{ws}/rtc?access_token={forged}")).await;
    assert_eq!(st, 401);
    assert!(body.contains("signature"), "{body}");

    let no_join = devroom::auth::sign(
        &serde_json::json!({"iss": API_KEY, "sub": "a", "exp": now + 600, "video": {"room": "r"}}),
        API_SECRET,
    );
    let (st, body) = http_refusal(format!("{ws}/rtc?access_token={no_join}")).await;
    assert_eq!(st, 401);
    assert!(body.contains("permissions denied"), "{body}");

    // v1 (single PC) is answered 404 so the SDKs fall back to v0.
    let good = join_token("alice", "r");
    let (st, _) = http_refusal(format!("{ws}/rtc/v1?join_request=abc&access_token={good}")).await;
    assert_eq!(st, 404);

    let (st, _, body) = common::http(
        "GET",
        &format!("{}/rtc/validate?access_token={good}", server.http_url()),
        &[],
        vec![],
    )
    .await;
    assert_eq!((st, body.as_slice()), (200, &b"success"[..]));
    let (st, _, _) = common::http(
        "GET",
        &format!("{}/rtc/validate?access_token={expired}", server.http_url()),
        &[],
        vec![],
    )
    .await;
    assert_eq!(st, 401);
}

/// livekit-server ≥ 1.9.1 enables PCMU and PCMA besides Opus (the phone leg's zero-transcode
/// track); `--g711-off` is a server before that: Opus is the only audio codec it lists.
#[tokio::test]
async fn join_lists_the_enabled_publish_codecs() {
    for (extra, g711) in [(&[][..], true), (&["--g711-off"][..], false)] {
        let server = Devroom::start("signal_codecs", extra);
        let mut a = connect(&server, &join_token("alice", "codecs")).await;
        let join = match next(&mut a).await {
            Some(Resp::Join(j)) => j,
            other => panic!("expected join first, got {other:?}"),
        };
        let audio: Vec<&str> =
            join.enabled_publish_codecs.iter().map(|c| c.mime.as_str()).filter(|m| m.starts_with("audio/")).collect();
        let want: &[&str] = if g711 { &["audio/opus", "audio/PCMU", "audio/PCMA"] } else { &["audio/opus"] };
        assert_eq!(audio, want, "{extra:?}");
        let room_codecs: Vec<&str> = join.room.as_ref().unwrap().enabled_codecs.iter().map(|c| c.mime.as_str()).collect();
        assert_eq!(room_codecs.contains(&"audio/PCMU"), g711, "{extra:?}");
    }
}

/// With the embedded TURN server on, `join` offers it as livekit-server does: one IceServer
/// with a `turn:` (UDP) and a `turns:` (TLS) url, realm credentials made for this participant
/// (username base62(`key|sid|expiry`), expiry the TTL ahead; password base62(sha256(
/// `secret|sid|expiry`))), and `force_relay` when asked. Without TURN, no ice_servers.
#[tokio::test]
async fn join_offers_turn_with_livekit_server_credentials() {
    let server = Devroom::start("signal_turn", &["--turn-port", "0", "--turn-tls-port", "0", "--turn-ttl-secs", "600", "--force-relay"]);
    let mut a = connect(&server, &join_token("alice", "turn")).await;
    let join = match next(&mut a).await {
        Some(Resp::Join(j)) => j,
        other => panic!("expected join first, got {other:?}"),
    };
    let sid = join.participant.as_ref().unwrap().sid.clone();
    assert_eq!(join.ice_servers.len(), 1, "{:?}", join.ice_servers);
    let ice = &join.ice_servers[0];
    assert_eq!(ice.urls.len(), 2, "{:?}", ice.urls);
    let udp = ice.urls[0].strip_prefix("turn:127.0.0.1:").and_then(|r| r.strip_suffix("?transport=udp"));
    assert!(udp.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)), "{:?}", ice.urls);
    let tls = ice.urls[1].strip_prefix("turns:localhost:").and_then(|r| r.strip_suffix("?transport=tcp"));
    assert!(tls.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)), "{:?}", ice.urls);
    let (key, user_sid, expiry) = devroom::turn_auth::parse_username(&ice.username).expect("username as livekit-server's");
    assert_eq!((key.as_str(), user_sid.as_str()), (API_KEY, sid.as_str()));
    let ahead = expiry - devroom::auth::unix_now() as i64;
    assert!((590..=600).contains(&ahead), "expiry {ahead} s ahead");
    assert_eq!(ice.credential, devroom::turn_auth::password(API_SECRET, &sid, expiry));
    assert_eq!(
        join.client_configuration.as_ref().map(|c| c.force_relay),
        Some(lk::ClientConfigSetting::Enabled as i32)
    );

    let plain = Devroom::start("signal_no_turn", &[]);
    let mut b = connect(&plain, &join_token("bob", "turn")).await;
    let Some(Resp::Join(join)) = next(&mut b).await else { panic!("expected join") };
    assert!(join.ice_servers.is_empty());
    assert_ne!(join.client_configuration.map(|c| c.force_relay), Some(lk::ClientConfigSetting::Enabled as i32));
}

#[tokio::test]
async fn signal_join_offer_ping_track_and_updates() {
    let server = Devroom::start("signal_flow", &[]);
    let mut a = connect(&server, &join_token("alice", "flow")).await;

    let join = match next(&mut a).await {
        Some(Resp::Join(j)) => j,
        other => panic!("expected join first, got {other:?}"),
    };
    let me = join.participant.clone().unwrap();
    assert!(me.sid.starts_with("PA_"));
    assert_eq!(me.identity, "alice");
    assert_eq!(join.room.as_ref().unwrap().name, "flow");
    assert!(join.room.as_ref().unwrap().sid.starts_with("RM_"));
    assert!(join.subscriber_primary);
    assert!(join.ping_interval > 0 && join.ping_timeout > join.ping_interval);
    assert!(join.other_participants.is_empty());
    // A first token refresh comes at once (livekit-server rtcSessionWorker).
    let token = wait_for(&mut a, |m| match m {
        Resp::RefreshToken(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(token.split('.').count(), 3, "a JWT");

    // The server offers the subscriber PC right away, data channels included.
    let offer = wait_for(&mut a, |m| match m {
        Resp::Offer(o) => Some(o),
        _ => None,
    })
    .await;
    assert_eq!(offer.r#type, "offer");
    assert!(offer.sdp.contains("m=application"), "{}", offer.sdp);
    // As livekit-server: full ICE (not lite unless --ice-lite), candidates trickled, not in the SDP.
    assert!(!offer.sdp.contains("a=ice-lite"), "{}", offer.sdp);
    assert!(!offer.sdp.contains("a=candidate:"), "{}", offer.sdp);
    let trickle = wait_for(&mut a, |m| match m {
        Resp::Trickle(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(trickle.target, lk::SignalTarget::Subscriber as i32);
    assert!(trickle.candidate_init.contains("candidate:"), "{}", trickle.candidate_init);

    send(&mut a, Req::PingReq(lk::Ping { timestamp: 1234, rtt: 0 })).await;
    let pong = wait_for(&mut a, |m| match m {
        Resp::PongResp(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(pong.last_ping_timestamp, 1234);
    assert!(pong.timestamp > 0);
    send(&mut a, Req::Ping(99)).await;
    wait_for(&mut a, |m| matches!(m, Resp::Pong(_)).then_some(())).await;

    send(
        &mut a,
        Req::AddTrack(lk::AddTrackRequest {
            cid: "my-cid".into(),
            name: "mic".into(),
            r#type: lk::TrackType::Audio as i32,
            source: lk::TrackSource::Microphone as i32,
            ..Default::default()
        }),
    )
    .await;
    let published = wait_for(&mut a, |m| match m {
        Resp::TrackPublished(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(published.cid, "my-cid");
    let track = published.track.unwrap();
    assert!(track.sid.starts_with("TR_"));
    assert_eq!(track.name, "mic");

    // A second participant: both sides learn about each other.
    let mut b = connect(&server, &join_token("bob", "flow")).await;
    let join_b = match next(&mut b).await {
        Some(Resp::Join(j)) => j,
        other => panic!("expected join, got {other:?}"),
    };
    assert_eq!(join_b.other_participants.len(), 1);
    assert_eq!(join_b.other_participants[0].identity, "alice");
    let update = wait_for(&mut a, |m| match m {
        Resp::Update(u) => u.participants.into_iter().find(|p| p.identity == "bob"),
        _ => None,
    })
    .await;
    assert!(update.sid.starts_with("PA_"));

    // Undecodable frame: closed with 1007 and a reason, server keeps running.
    a.send(Message::Binary(vec![0xff, 0xff, 0xff, 0xff, 0x0f].into())).await.unwrap();
    let (code, reason) = close_frame(&mut a).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("invalid SignalRequest"), "{reason}");
    // bob hears that alice left
    let gone = wait_for(&mut b, |m| match m {
        Resp::Update(u) => u.participants.into_iter().find(|p| p.identity == "alice"),
        _ => None,
    })
    .await;
    assert_eq!(gone.state, lk::participant_info::State::Disconnected as i32);

    // Bad SDP: leave, then close 1007 with the reason.
    send(
        &mut b,
        Req::Offer(lk::SessionDescription {
            r#type: "offer".into(),
            sdp: "this is not an SDP".into(),
            ..Default::default()
        }),
    )
    .await;
    let leave = wait_for(&mut b, |m| match m {
        Resp::Leave(l) => Some(l),
        _ => None,
    })
    .await;
    assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
    let (code, reason) = close_frame(&mut b).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("SDP"), "{reason}");

    // Still serving.
    let mut c = connect(&server, &join_token("carol", "flow")).await;
    assert!(matches!(next(&mut c).await, Some(Resp::Join(_))));
}

/// A participant that stops reading its signal socket is dropped once its bounded queue fills;
/// the room and the server carry on.
#[tokio::test]
async fn slow_signal_reader_is_dropped() {
    use livekit_api::services::room::{RoomClient, UpdateParticipantOptions};
    let server = Devroom::start("signal_slow", &["--signal-queue", "8"]);
    let mut slow = connect(&server, &join_token("slow", "slowroom")).await;
    assert!(matches!(next(&mut slow).await, Some(Resp::Join(_))));
    // From here on `slow` never reads again.
    let client = RoomClient::with_api_key(&server.http_url(), API_KEY, API_SECRET);
    let big = "x".repeat(60_000);
    let mut dropped_after = None;
    for i in 0..600 {
        let r = client
            .update_participant(
                "slowroom",
                "slow",
                UpdateParticipantOptions {
                    metadata: format!("{i}{big}"),
                    ..Default::default()
                },
            )
            .await;
        if r.is_err() {
            dropped_after = Some(i);
            break;
        }
    }
    let n = dropped_after.expect("slow participant was never dropped");
    eprintln!("slow participant dropped after {n} updates of 60 kB");
    let left = client.list_participants("slowroom").await.unwrap();
    assert!(left.iter().all(|p| p.identity != "slow"));
    // Others can still join and get served.
    let mut other = connect(&server, &join_token("fast", "slowroom")).await;
    assert!(matches!(next(&mut other).await, Some(Resp::Join(_))));
    drop(slow);
}

/// A signal connection that drops without `leave` can be resumed with `reconnect=1&sid=…`:
/// same participant, `reconnect` response, the unanswered subscriber offer is sent again.
/// Without a resume the participant is removed after `--resume-window`; an unknown sid gets
/// `leave` with action RECONNECT.
#[tokio::test]
async fn dropped_signal_connection_can_resume() {
    use livekit_api::services::room::RoomClient;
    let server = Devroom::start("signal_resume", &["--resume-window", "2"]);
    let client = RoomClient::with_api_key(&server.http_url(), API_KEY, API_SECRET);
    let token = join_token("alice", "resume");

    let mut a = connect(&server, &token).await;
    let sid = match next(&mut a).await {
        Some(Resp::Join(j)) => j.participant.unwrap().sid,
        other => panic!("expected join, got {other:?}"),
    };
    let first_offer = wait_for(&mut a, |m| match m {
        Resp::Offer(o) => Some(o),
        _ => None,
    })
    .await;
    drop(a); // TCP closed without a WebSocket close or leave

    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = client.list_participants("resume").await.unwrap();
    assert_eq!(listed.len(), 1, "kept during the resume window");
    assert_eq!(listed[0].sid, sid);

    let resume_url = |sid: &str| {
        let mut req = format!("{}/rtc?reconnect=1&sid={sid}&protocol=16", server.ws_url())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let (mut a2, _) = tokio_tungstenite::connect_async(resume_url(&sid)).await.unwrap();
    assert!(matches!(next(&mut a2).await, Some(Resp::Reconnect(_))), "reconnect response first");
    let again = wait_for(&mut a2, |m| match m {
        Resp::Offer(o) => Some(o),
        _ => None,
    })
    .await;
    assert_eq!(again.sdp, first_offer.sdp, "the unanswered offer is sent again");
    send(&mut a2, Req::PingReq(lk::Ping { timestamp: 7, rtt: 0 })).await;
    wait_for(&mut a2, |m| matches!(m, Resp::PongResp(_)).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // longer than the window: still here
    let listed = client.list_participants("resume").await.unwrap();
    assert_eq!(listed.iter().map(|p| p.sid.clone()).collect::<Vec<_>>(), vec![sid.clone()]);

    // Unknown sid: leave with action RECONNECT.
    let (mut bad, _) = tokio_tungstenite::connect_async(resume_url("PA_doesnotexist")).await.unwrap();
    let leave = wait_for(&mut bad, |m| match m {
        Resp::Leave(l) => Some(l),
        _ => None,
    })
    .await;
    assert_eq!(leave.action, lk::leave_request::Action::Reconnect as i32);

    // Dropped again and never resumed: gone after the window.
    drop(a2);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(client.list_participants("resume").await.map(|l| l.is_empty()).unwrap_or(true));
}

/// SIGTERM: every participant gets `leave` SERVER_SHUTDOWN and devroom exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_leave_and_exits_cleanly() {
    let mut server = Devroom::start("signal_sigterm", &[]);
    let mut a = connect(&server, &join_token("alice", "bye")).await;
    assert!(matches!(next(&mut a).await, Some(Resp::Join(_))));
    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(status.map(|s| s.success()).unwrap_or(false), "exit status {status:?}");
    let leave = wait_for(&mut a, |m| match m {
        Resp::Leave(l) => Some(l),
        _ => None,
    })
    .await;
    assert_eq!(leave.reason, lk::DisconnectReason::ServerShutdown as i32);
}

/// Odd but decodable requests (unknown sids, garbage candidates, silly enum values, requests
/// without permission, empty messages) are logged and ignored; the session and server carry on.
#[tokio::test]
async fn odd_requests_are_ignored_without_breaking_anything() {
    let mut server = Devroom::start("signal_odd", &[]);
    let mut a = connect(&server, &join_token("alice", "odd")).await;
    assert!(matches!(next(&mut a).await, Some(Resp::Join(_))));
    let odd = vec![
        Req::Trickle(lk::TrickleRequest { candidate_init: "not json".into(), target: 0, ..Default::default() }),
        Req::Trickle(lk::TrickleRequest {
            candidate_init: r#"{"candidate":"candidate:garbage"}"#.into(),
            target: 1,
            ..Default::default()
        }),
        Req::Trickle(lk::TrickleRequest {
            candidate_init: r#"{"candidate":"candidate:1 1 udp 1 abc.local 9 typ host"}"#.into(),
            target: 77,
            ..Default::default()
        }),
        Req::AddTrack(lk::AddTrackRequest { cid: "x".repeat(10_000), r#type: 99, source: 99, ..Default::default() }),
        Req::Mute(lk::MuteTrackRequest { sid: "TR_nope".into(), muted: true }),
        Req::Subscription(lk::UpdateSubscription { track_sids: vec!["TR_nope".into()], subscribe: true, ..Default::default() }),
        Req::Subscription(lk::UpdateSubscription { track_sids: vec!["TR_nope".into()], subscribe: false, ..Default::default() }),
        Req::TrackSetting(Default::default()),
        Req::SyncState(Default::default()),
        Req::Simulate(Default::default()),
        Req::SubscriptionPermission(Default::default()),
        Req::UpdateMetadata(lk::UpdateParticipantMetadata { metadata: "m".into(), request_id: 5, ..Default::default() }),
    ];
    for m in odd {
        send(&mut a, m).await;
    }
    a.send(Message::Binary(lk::SignalRequest { message: None }.encode_to_vec().into())).await.unwrap();
    // An unknown track type is refused (livekit-server: UNSUPPORTED_TYPE) …
    let rr = wait_for(&mut a, |m| match m {
        Resp::RequestResponse(r) if r.request_id == 0 => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(rr.reason, lk::request_response::Reason::UnsupportedType as i32);
    assert!(matches!(rr.request, Some(lk::request_response::Request::AddTrack(_))));
    // … and no permission to update own metadata: a RequestResponse says so.
    let rr = wait_for(&mut a, |m| match m {
        Resp::RequestResponse(r) if r.request_id == 5 => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(rr.request_id, 5);
    assert_eq!(rr.reason, lk::request_response::Reason::NotAllowed as i32);
    send(&mut a, Req::PingReq(lk::Ping { timestamp: 42, rtt: 0 })).await;
    let pong = wait_for(&mut a, |m| match m {
        Resp::PongResp(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(pong.last_ping_timestamp, 42);

    // An offer that parses but has no m-lines: leave + close with the reason.
    send(
        &mut a,
        Req::Offer(lk::SessionDescription { r#type: "offer".into(), sdp: "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n".into(), ..Default::default() }),
    )
    .await;
    let (code, reason) = close_frame(&mut a).await;
    assert_eq!(code, 1007, "{reason}");
    assert!(server.is_running());
    let mut b = connect(&server, &join_token("bob", "odd")).await;
    assert!(matches!(next(&mut b).await, Some(Resp::Join(_))));
}

async fn connect_with(server: &Devroom, token: &str, query: &str) -> Ws {
    let mut req = format!("{}/rtc?{query}", server.ws_url()).into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.expect("ws connect").0
}

fn token_without_publish(identity: &str, room: &str) -> String {
    use livekit_api::access_token::{AccessToken, VideoGrants};
    AccessToken::with_api_key(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_grants(VideoGrants { room_join: true, room: room.to_string(), can_publish: Some(false), ..Default::default() })
        .to_jwt()
        .unwrap()
}

/// What livekit-server does and a lenient server would not: refuse add_track without
/// canPublish, queue a second add_track with a cid in use, answer a resume it cannot honour
/// with leave{STATE_MISMATCH, RECONNECT}, and (protocol > 11) send no DISCONNECTED for an
/// identity that joined again.
#[tokio::test]
async fn strict_as_livekit_server() {
    let server = Devroom::start("signal_strict", &[]);
    // add_track without canPublish: NOT_ALLOWED, naming the request.
    let mut viewer = connect(&server, &token_without_publish("viewer", "strict")).await;
    wait_for(&mut viewer, |m| matches!(m, Resp::Join(_)).then_some(())).await;
    let add = lk::AddTrackRequest { cid: "c1".into(), r#type: lk::TrackType::Audio as i32, ..Default::default() };
    send(&mut viewer, Req::AddTrack(add.clone())).await;
    let rr = wait_for(&mut viewer, |m| match m {
        Resp::RequestResponse(r) => Some(r),
        Resp::TrackPublished(t) => panic!("published without permission: {t:?}"),
        _ => None,
    })
    .await;
    assert_eq!(rr.reason, lk::request_response::Reason::NotAllowed as i32);
    assert_eq!(rr.request, Some(lk::request_response::Request::AddTrack(add.clone())));

    // A cid in use: the second add_track is QUEUED, not published twice.
    let mut a = connect_with(&server, &join_token("alice", "strict"), "protocol=17&sdk=rust").await;
    wait_for(&mut a, |m| matches!(m, Resp::Join(_)).then_some(())).await;
    send(&mut a, Req::AddTrack(add.clone())).await;
    wait_for(&mut a, |m| matches!(m, Resp::TrackPublished(t) if t.cid == "c1").then_some(())).await;
    send(&mut a, Req::AddTrack(add.clone())).await;
    let rr = wait_for(&mut a, |m| match m {
        Resp::RequestResponse(r) => Some(r),
        Resp::TrackPublished(t) => panic!("published a second track for a cid in use: {t:?}"),
        _ => None,
    })
    .await;
    assert_eq!(rr.reason, lk::request_response::Reason::Queued as i32);

    // A resume of a participant the server does not have: leave{STATE_MISMATCH, RECONNECT}.
    let mut r = connect_with(&server, &join_token("ghost", "strict"), "protocol=17&sdk=rust&reconnect=1&sid=PA_nope").await;
    let leave = wait_for(&mut r, |m| match m {
        Resp::Leave(l) => Some(l),
        _ => None,
    })
    .await;
    assert_eq!(leave.reason, lk::DisconnectReason::StateMismatch as i32);
    assert_eq!(leave.action, lk::leave_request::Action::Reconnect as i32);

    // Bob (protocol 17) and an old client (protocol 8) watch carol join twice.
    let mut bob = connect_with(&server, &join_token("bob", "strict"), "protocol=17&sdk=rust").await;
    wait_for(&mut bob, |m| matches!(m, Resp::Join(_)).then_some(())).await;
    let mut old = connect_with(&server, &join_token("old", "strict"), "protocol=8&sdk=js").await;
    wait_for(&mut old, |m| matches!(m, Resp::Join(_)).then_some(())).await;
    let mut c1 = connect_with(&server, &join_token("carol", "strict"), "protocol=17&sdk=rust").await;
    let first = wait_for(&mut c1, |m| match m {
        Resp::Join(j) => j.participant,
        _ => None,
    })
    .await;
    let mut c2 = connect_with(&server, &join_token("carol", "strict"), "protocol=17&sdk=rust").await;
    let second = wait_for(&mut c2, |m| match m {
        Resp::Join(j) => j.participant,
        _ => None,
    })
    .await;
    assert_ne!(first.sid, second.sid);
    let leave = wait_for(&mut c1, |m| match m {
        Resp::Leave(l) => Some(l),
        _ => None,
    })
    .await;
    assert_eq!(leave.reason, lk::DisconnectReason::DuplicateIdentity as i32);
    // The old client hears of the old sid's DISCONNECTED; bob sees only the new sid.
    wait_for(&mut old, |m| match m {
        Resp::Update(u) => u
            .participants
            .iter()
            .any(|p| p.sid == first.sid && p.state == lk::participant_info::State::Disconnected as i32)
            .then_some(()),
        _ => None,
    })
    .await;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut saw_new = false;
    while let Ok(Some(Ok(Message::Binary(b)))) = tokio::time::timeout_at(until, bob.next()).await {
        if let Some(Resp::Update(u)) = lk::SignalResponse::decode(b.as_ref()).unwrap().message {
            for p in u.participants {
                assert!(
                    !(p.sid == first.sid && p.state == lk::participant_info::State::Disconnected as i32),
                    "protocol 17 got a DISCONNECTED for a replaced identity"
                );
                saw_new |= p.sid == second.sid;
            }
        }
    }
    assert!(saw_new, "bob hears of carol's new session");
}

/// A subscriber offer left unanswered is a failed negotiation: livekit-server tells the client to
/// join again (`leave{STATE_MISMATCH, RECONNECT}`) and closes the session.
#[tokio::test]
async fn unanswered_offer_asks_for_a_full_reconnect() {
    let server = Devroom::start("signal_negotiation_timeout", &["--negotiation-timeout-secs", "1"]);
    let mut a = connect(&server, &join_token("mute", "negotiation")).await;
    wait_for(&mut a, |m| matches!(m, Resp::Offer(_)).then_some(())).await;
    // No answer.
    let leave = wait_for(&mut a, |m| match m {
        Resp::Leave(l) => Some(l),
        _ => None,
    })
    .await;
    assert_eq!(leave.reason, lk::DisconnectReason::StateMismatch as i32);
    assert_eq!(leave.action, lk::leave_request::Action::Reconnect as i32);
    assert!(next(&mut a).await.is_none(), "then the session closes");
}
