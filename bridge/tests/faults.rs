//! Production faults, each as a test: toll fraud through control messages, replayed webhooks,
//! LiveKit down at call start, a room that cannot be joined, nobody to talk to, an agent that
//! dies mid-call, a silent or vanished Twilio, calls that run too long, sockets that never start,
//! connection floods, and drain. Every call must end, and every place it held must come back.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use proto::control::{Control, CONTROL_TOPIC};
use room::{DataPacketBuilder, Room, RoomEvent, RoomOptions};
use tokio::sync::mpsc;
use tokio::time::timeout;

const FALLBACK: &str = "Sorry, we cannot take your call right now. Please try again later.";

fn metric(bridge: &BridgeHandle, line_start: &str) -> f64 {
    bridge.app.metrics.observe_runtime(&bridge.app.registry);
    bridge
        .app
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits until the phone participant's audio reaches this room member.
async fn wait_for_phone(events: &mut mpsc::Receiver<RoomEvent>) {
    let found = timeout(Duration::from_secs(15), async {
        while let Some(ev) = events.recv().await {
            if let RoomEvent::TrackSubscribed { participant, .. } = ev {
                if participant.identity.starts_with("phone-") {
                    return;
                }
            }
        }
        panic!("room closed before the phone joined");
    })
    .await;
    assert!(found.is_ok(), "the phone never joined the room");
}

/// Publishes a tone (440 Hz, 8 kHz) in real time for `secs` seconds.
async fn speak(room: &Room, secs: f64) -> tokio::task::JoinHandle<()> {
    speak_tone(room, 440.0, secs).await
}

async fn send_control(room: &Room, c: Control) {
    room.send_data(DataPacketBuilder::new(c.to_bytes()).topic(CONTROL_TOPIC)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_agents_steer_the_call_and_transfers_dial_only_allowed_numbers() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--transfer-allow", "+15551234567,+44203*"]).await;
    let sid = call_sid(101);
    let room_name = format!("call-{sid}");
    let (agent, mut agent_events) = join(&lk, "agent-101", &room_name).await;
    let url = format!("ws://{}", lk.http_addr);
    let (viewer, _viewer_events) =
        Room::connect(&url, &token("viewer-101", &room_name, "standard"), RoomOptions::default()).await.unwrap();
    let mut caller = callsim::spawn_call(callsim(&bridge, &sid).duration_secs(30.0));
    wait_for_phone(&mut agent_events).await;

    // A browser viewer cannot hang up, transfer or interrupt the call.
    send_control(&viewer, Control::Hangup { reason: None }).await;
    send_control(&viewer, Control::Transfer { to: "+15551234567".into() }).await;
    // The agent's model talked into a premium number: refused, whatever it says.
    send_control(&agent, Control::Transfer { to: "+19005550100".into() }).await;
    let refused = |reason: &str| metric(&bridge, &format!("bridge_control_refused_total{{reason=\"{reason}\"}}"));
    assert!(eventually(Duration::from_secs(5), || refused("not_agent") == 2.0 && refused("transfer_not_allowed") == 1.0).await);
    assert!(rest.calls().is_empty(), "nothing may reach Twilio: {:?}", rest.calls());
    assert_eq!(bridge.app.registry.active_count(), 1, "the call goes on");

    // An allowed number goes out, once: a second transfer while the first is under way is refused.
    send_control(&agent, Control::Transfer { to: "+442031234567".into() }).await;
    send_control(&agent, Control::Transfer { to: "+15551234567".into() }).await;
    let form = rest.wait_for(Duration::from_secs(5), |s, _| s == sid).await.expect("transfer request");
    assert_eq!(
        form_value(&form, "Twiml"),
        Some("<Response><Dial><Number>+442031234567</Number></Dial></Response>")
    );
    assert!(eventually(Duration::from_secs(5), || refused("transfer_in_flight") == 1.0).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rest.calls().len(), 1, "{:?}", rest.calls());

    caller.hangup().await;
    while caller.next_event().await.is_some() {}
    agent.close().await;
    viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transfer_lets_the_agent_try_again() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--transfer-allow", "+15551234567"]).await;
    let sid = call_sid(102);
    let (agent, mut events) = join(&lk, "agent-102", &format!("call-{sid}")).await;
    let mut caller = callsim::spawn_call(callsim(&bridge, &sid).duration_secs(30.0));
    wait_for_phone(&mut events).await;
    rest.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    send_control(&agent, Control::Transfer { to: "+15551234567".into() }).await;
    assert!(eventually(Duration::from_secs(5), || rest.calls().len() == 1).await);
    assert!(eventually(Duration::from_secs(5), || metric(&bridge, "bridge_errors_total{kind=\"twilio_rest\"}") == 1.0).await);
    rest.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    send_control(&agent, Control::Transfer { to: "+15551234567".into() }).await;
    assert!(eventually(Duration::from_secs(5), || rest.calls().len() == 2).await, "{:?}", rest.calls());
    caller.hangup().await;
    while caller.next_event().await.is_some() {}
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_webhook_is_refused_and_the_live_call_goes_on() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &[]).await;
    let sid = call_sid(103);
    let caller = callsim::spawn_call(callsim(&bridge, &sid).tone(700.0).duration_secs(4.0));
    assert!(eventually(Duration::from_secs(15), || bridge.app.registry.active_count() == 1).await);
    // A captured, correctly signed webhook for the live call, played again.
    let (status, body) = RawTwilio::new(&bridge, &sid).webhook().await;
    assert_eq!(status, 409, "{body}");
    assert!(!body.contains("token"), "no stream token for a replay: {body}");
    let report = caller.finish().await.unwrap();
    assert_eq!(report.outcome, callsim::Outcome::Completed, "{report:?}");
    assert!(report.frames_sent >= 190, "{report:?}");
    assert_eq!(metric(&bridge, "bridge_errors_total{kind=\"webhook_replay\"}"), 1.0);
    // And after the call it is still refused (within the hour).
    assert_eq!(RawTwilio::new(&bridge, &sid).webhook().await.0, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_unreachable_at_call_start_gives_the_fallback_and_keeps_no_place() {
    let rest = FakeRest::default();
    let rest_base = rest.start().await;
    // Nothing listens on port 1.
    let bridge = start_bridge_at("ws://127.0.0.1:1", &rest_base, &["--max-calls", "1"]).await;
    for n in [104, 105] {
        let report = callsim::run_call(callsim(&bridge, &call_sid(n)).duration_secs(1.0)).await.unwrap();
        assert_eq!(report.outcome, callsim::Outcome::Rejected, "{report:?}");
        assert_eq!(report.said.as_deref(), Some(FALLBACK), "call {n}: the fallback, not a busy signal");
    }
    assert_eq!(bridge.app.registry.pending_count(), 0);
    let with_url = start_bridge_at("ws://127.0.0.1:1", &rest_base, &["--fallback-url", "https://ops.example.com/voicemail"]).await;
    let report = callsim::run_call(callsim(&with_url, &call_sid(106)).duration_secs(1.0)).await.unwrap();
    assert_eq!(report.said.as_deref(), Some("<Redirect> https://ops.example.com/voicemail"), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_cannot_be_joined_returns_the_slot_deletes_the_room_and_plays_the_fallback() {
    let lk = SignalDownLiveKit::default();
    let lk_url = lk.start().await;
    let rest = FakeRest::default();
    let bridge = start_bridge_at(&lk_url, &rest.start().await, &["--max-calls", "1"]).await;
    // With MAX_CALLS=1 a leaked slot would turn the second caller away as busy.
    for (i, n) in [107u32, 108].into_iter().enumerate() {
        let sid = call_sid(n);
        let raw = RawTwilio::new(&bridge, &sid);
        let mut ws = raw.connect().await;
        let form = rest.wait_for(Duration::from_secs(20), |s, _| s == sid).await.expect("fallback through REST");
        assert!(form_value(&form, "Twiml").unwrap_or("").contains(FALLBACK), "{form:?}");
        assert!(closed_by_server(&mut ws, Duration::from_secs(5)).await, "the stream ends");
        assert!(eventually(Duration::from_secs(5), || bridge.app.registry.active_count() == 0).await);
        assert!(eventually(Duration::from_secs(5), || lk.called("/DeleteRoom") == i + 1).await, "room deleted");
    }
    assert_eq!(metric(&bridge, "bridge_calls_total{outcome=\"room_failed\"}"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_to_talk_to_redispatch_once_then_the_fallback() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--agent-join-timeout", "1s"]).await;
    let sid = call_sid(109);
    let caller = callsim::spawn_call(callsim(&bridge, &sid).duration_secs(30.0));
    let form = rest.wait_for(Duration::from_secs(15), |s, _| s == sid).await.expect("fallback through REST");
    assert!(form_value(&form, "Twiml").unwrap_or("").contains(FALLBACK), "{form:?}");
    assert_eq!(metric(&bridge, "bridge_errors_total{kind=\"agent_redispatch\"}"), 1.0, "an agent was asked for again first");
    let report = timeout(Duration::from_secs(10), caller.finish()).await.expect("the call ends").unwrap();
    assert_eq!(report.closed_by, Some(callsim::ClosedBy::Server), "{report:?}");
    assert!(report.stream_ms < 10_000.0, "ended by the fallback, not by the caller: {report:?}");
    assert!(eventually(Duration::from_secs(5), || metric(&bridge, "bridge_calls_total{outcome=\"fallback_no_agent\"}") == 1.0).await);
    assert!(!room_names(&lk).await.contains(&format!("call-{sid}")), "room deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_dies_mid_call_leads_to_the_fallback_unless_another_comes() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    // 3 s, not less: under a loaded test run the second agent's join (step 2) must land inside it.
    let bridge = start_bridge(&lk, &rest.start().await, &["--agent-join-timeout", "3s"]).await;

    // 1. The agent goes and nobody comes back: fallback.
    let sid = call_sid(110);
    let (agent, mut events) = join(&lk, "agent-110", &format!("call-{sid}")).await;
    let caller = callsim::spawn_call(callsim(&bridge, &sid).duration_secs(30.0));
    wait_for_phone(&mut events).await;
    let voice = speak(&agent, 30.0).await;
    tokio::time::sleep(Duration::from_millis(3500)).await; // past one join timeout: the agent counts
    assert!(rest.calls().is_empty());
    voice.abort();
    agent.close().await;
    let form = rest.wait_for(Duration::from_secs(15), |s, _| s == sid).await.expect("fallback through REST");
    assert!(form_value(&form, "Twiml").unwrap_or("").contains(FALLBACK), "{form:?}");
    let report = timeout(Duration::from_secs(10), caller.finish()).await.expect("the call ends").unwrap();
    assert_eq!(report.closed_by, Some(callsim::ClosedBy::Server), "{report:?}");
    assert!(eventually(Duration::from_secs(5), || metric(&bridge, "bridge_calls_total{outcome=\"fallback_agent_left\"}") == 1.0).await);

    // 2. The agent goes, the bridge asks for another, and one comes: the call goes on.
    let sid = call_sid(111);
    let (agent, mut events) = join(&lk, "agent-111a", &format!("call-{sid}")).await;
    let mut caller = callsim::spawn_call(callsim(&bridge, &sid).duration_secs(30.0));
    wait_for_phone(&mut events).await;
    let voice = speak(&agent, 30.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    voice.abort();
    agent.close().await;
    assert!(
        eventually(Duration::from_secs(10), || metric(&bridge, "bridge_errors_total{kind=\"agent_redispatch\"}") == 2.0).await,
        "the bridge asked for an agent again"
    );
    let (second, _ev) = join(&lk, "agent-111b", &format!("call-{sid}")).await;
    let voice = speak(&second, 30.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rest.calls().iter().all(|(s, _)| *s != sid), "no fallback once an agent is back: {:?}", rest.calls());
    assert_eq!(bridge.app.registry.active_count(), 1);
    caller.hangup().await;
    while caller.next_event().await.is_some() {}
    voice.abort();
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_twilio_socket_ends_the_call() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--media-timeout", "1s"]).await;
    let sid = call_sid(112);
    let raw = RawTwilio::new(&bridge, &sid);
    let mut ws = raw.connect().await; // then nothing more: no media, no stop
    assert!(closed_by_server(&mut ws, Duration::from_secs(10)).await);
    let form = rest.wait_for(Duration::from_secs(5), |s, _| s == sid).await.expect("hang-up through REST");
    assert_eq!(form_value(&form, "Status"), Some("completed"));
    assert!(eventually(Duration::from_secs(5), || metric(&bridge, "bridge_calls_total{outcome=\"media_timeout\"}") == 1.0).await);
    assert!(!room_names(&lk).await.contains(&format!("call-{sid}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_at_max_call_duration() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--max-call-duration", "2s"]).await;
    let sid = call_sid(113);
    let (agent, mut events) = join(&lk, "agent-113", &format!("call-{sid}")).await;
    let caller = callsim::spawn_call(callsim(&bridge, &sid).duration_secs(20.0));
    wait_for_phone(&mut events).await;
    let report = timeout(Duration::from_secs(15), caller.finish()).await.expect("the call ends").unwrap();
    assert_eq!(report.closed_by, Some(callsim::ClosedBy::Server), "{report:?}");
    assert!(report.stream_ms < 6_000.0, "{report:?}");
    let form = rest.wait_for(Duration::from_secs(5), |s, _| s == sid).await.expect("hang-up through REST");
    assert_eq!(form_value(&form, "Status"), Some("completed"));
    assert!(eventually(Duration::from_secs(5), || metric(&bridge, "bridge_calls_total{outcome=\"max_duration\"}") == 1.0).await);
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_vanishing_mid_utterance_releases_everything() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--max-calls", "1"]).await;
    let sid = call_sid(114);
    let (agent, mut events) = join(&lk, "agent-114", &format!("call-{sid}")).await;
    let raw = RawTwilio::new(&bridge, &sid);
    let mut ws = raw.connect().await;
    wait_for_phone(&mut events).await;
    let voice = speak(&agent, 20.0).await;
    // The agent is mid-sentence at the caller's end: media is arriving.
    let got_media = timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.to_text().unwrap_or("").contains("\"media\"") {
                return;
            }
        }
    })
    .await;
    assert!(got_media.is_ok());
    drop(ws); // TCP gone, no stop, no close frame
    assert!(eventually(Duration::from_secs(10), || bridge.app.registry.active_count() == 0).await);
    assert!(eventually(Duration::from_secs(5), || bridge.app.registry.unstarted_count() == 0).await);
    let rooms_gone = async {
        for _ in 0..100 {
            if !room_names(&lk).await.contains(&format!("call-{sid}")) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(rooms_gone.await, "room deleted");
    // The place is free again.
    let next = callsim::run_call(callsim(&bridge, &call_sid(115)).duration_secs(0.5)).await.unwrap();
    assert_eq!(next.outcome, callsim::Outcome::Completed, "{next:?}");
    voice.abort();
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_out_of_order_and_late_media_are_harmless() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &[]).await;
    let sid = call_sid(116);
    let raw = RawTwilio::new(&bridge, &sid);
    let mut ws = raw.connect().await;
    assert!(eventually(Duration::from_secs(15), || bridge.app.registry.active_count() == 1).await);
    // 1..=40 with a repeat, a step back, a lost stretch (20-22) and a chunk far in the future.
    let mut order: Vec<u64> = (1..=19).collect();
    order.extend([19, 12, 23, 24, 24, 5]);
    order.extend(25..=40);
    order.push(u64::MAX);
    for c in order {
        ws.send(text(&raw.media_msg(c, vec![0x7f; 160]))).await.unwrap();
    }
    ws.send(text(&raw.stop_msg())).await.unwrap();
    // Media after stop, and garbage.
    let _ = ws.send(text(&raw.media_msg(41, vec![0x7f; 160]))).await;
    let _ = ws.send(text("{\"event\":\"media\",\"media\":{\"chunk\":\"-1\"}}")).await;
    assert!(closed_by_server(&mut ws, Duration::from_secs(5)).await);
    assert!(eventually(Duration::from_secs(5), || metric(&bridge, "bridge_calls_total{outcome=\"completed\"}") == 1.0).await);
    assert_eq!(metric(&bridge, "bridge_inbound_gap_frames_total"), 3.0, "20-22 filled, repeats dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_start_cannot_pile_up() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--max-calls", "2"]).await;
    let raw = RawTwilio::new(&bridge, &call_sid(117));
    // A captured upgrade signature opens sockets that never send `start`.
    let a = raw.open().await.expect("first");
    let _b = raw.open().await.expect("second");
    assert_eq!(raw.open().await.err(), Some(503), "two silent sockets fill MAX_CALLS=2");
    drop(a);
    assert!(eventually(Duration::from_secs(5), || bridge.app.registry.unstarted_count() == 1).await);
    assert!(raw.open().await.is_ok(), "a closed socket gives its place back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_are_capped_and_idle_connections_time_out() {
    use tokio::io::AsyncReadExt;
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge =
        start_bridge(&lk, &rest.start().await, &["--max-connections", "3", "--http-request-timeout", "1s"]).await;
    let addr = bridge.base.trim_start_matches("http://").to_owned();
    let mut idle = vec![];
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Over the cap: closed at once.
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = timeout(Duration::from_millis(500), extra.read(&mut buf)).await.expect("closed at once").unwrap_or(0);
    assert_eq!(n, 0);
    assert!(metric(&bridge, "bridge_errors_total{kind=\"connection_cap\"}") >= 1.0);
    // A client that never sends its request is dropped after the header timeout (slowloris).
    let n = timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await.expect("idle connection dropped").unwrap_or(0);
    assert_eq!(n, 0);
    drop(idle);
    // And the server still answers.
    let body = reqwest_get(&format!("{}/health", bridge.base)).await;
    assert!(body.contains("\"status\":\"ok\""), "{body}");
}

async fn reqwest_get(url: &str) -> String {
    callsim::webhook::client(Duration::from_secs(5)).unwrap().get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dtmf_storm_never_stalls_the_callers_audio() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &[]).await;
    let sid = call_sid(118);
    let (agent, mut events) = join(&lk, "agent-118", &format!("call-{sid}")).await;
    let raw = RawTwilio::new(&bridge, &sid);
    let mut ws = raw.connect().await;
    wait_for_phone(&mut events).await;
    let voice = speak(&agent, 20.0).await;
    // Wait for the agent's voice at the caller, then press 3000 keys at once.
    let first = timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.to_text().unwrap_or("").contains("\"media\"") {
                return;
            }
        }
    })
    .await;
    assert!(first.is_ok());
    let storm: Vec<_> = (0..3000)
        .map(|i| {
            text(&format!(
                r#"{{"event":"dtmf","streamSid":"{}","sequenceNumber":"{}","dtmf":{{"track":"inbound_track","digit":"{}"}}}}"#,
                raw.stream_sid,
                i + 10,
                i % 10
            ))
        })
        .collect();
    let mut stream = futures_util::stream::iter(storm.into_iter().map(Ok));
    ws.send_all(&mut stream).await.unwrap();
    // The room sends are queued (and, past the queue, dropped and counted): the audio keeps
    // coming at its pace meanwhile.
    let mut media_at = vec![];
    let _ = timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.to_text().unwrap_or("").contains("\"media\"") {
                media_at.push(tokio::time::Instant::now());
            }
        }
    })
    .await;
    assert!(media_at.len() >= 80, "{} frames in 2 s", media_at.len());
    assert!(metric(&bridge, "bridge_room_sends_dropped_total") > 0.0, "the burst overflowed the room queue");
    voice.abort();
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_tells_the_load_balancer_and_drain_ends_calls_at_the_deadline() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bridge, server) = start_bridge_until(
        &format!("ws://{}", lk.http_addr),
        &rest.start().await,
        &["--max-calls", "1", "--drain-seconds", "2"],
        async move {
            let _ = stop_rx.await;
        },
    )
    .await;
    let http = callsim::webhook::client(Duration::from_secs(5)).unwrap();
    let ready = |http: reqwest::Client, base: String| async move {
        let r = http.get(format!("{base}/ready")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (code, body) = ready(http.clone(), bridge.base.clone()).await;
    assert_eq!(code, 200, "{body}");

    let sid = call_sid(119);
    let (agent, mut events) = join(&lk, "agent-119", &format!("call-{sid}")).await;
    let caller = callsim::spawn_call(callsim(&bridge, &sid).duration_secs(60.0));
    wait_for_phone(&mut events).await;
    let (code, body) = ready(http.clone(), bridge.base.clone()).await;
    assert_eq!((code, body.contains("\"full\"")), (503, true), "{body}");

    // SIGTERM: not ready, still alive, the call goes on until the drain deadline.
    stop_tx.send(()).unwrap();
    let mut draining = false;
    for _ in 0..50 {
        let (code, body) = ready(http.clone(), bridge.base.clone()).await;
        if code == 503 && body.contains("\"draining\"") {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(draining);
    let health = http.get(format!("{}/health", bridge.base)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(health.text().await.unwrap().contains("\"active_calls\":1"));
    let turned_away = callsim::run_call(callsim(&bridge, &call_sid(120)).duration_secs(1.0)).await.unwrap();
    assert_eq!(turned_away.outcome, callsim::Outcome::Rejected, "{turned_away:?}");

    let report = timeout(Duration::from_secs(20), caller.finish()).await.expect("the drain ends the call").unwrap();
    assert_eq!(report.closed_by, Some(callsim::ClosedBy::Server), "{report:?}");
    assert!(report.stream_ms < 30_000.0, "{report:?}");
    // The server stops only once the call is cleaned up: room deleted, nothing active.
    timeout(Duration::from_secs(20), server).await.expect("server stops").unwrap().unwrap();
    assert_eq!(bridge.app.registry.active_count(), 0);
    assert!(!room_names(&lk).await.contains(&format!("call-{sid}")), "room deleted before exit");
    agent.close().await;
}
