//! Outbound calls end to end: an agent in a devroom room asks the bridge to dial out through
//! LiveKit's SIP API (`CreateSIPParticipant`), the bridge places the call with a fake Twilio
//! REST whose far end callsim plays (answers after N rings, busy, no answer, a voicemail), and
//! the phone participant shows up in the room as LiveKit SIP's would.

mod common;

use std::time::Duration;

use callsim::far_end::{Answer, BEEP};
use common::*;
use livekit_api::access_token::{AccessToken, SIPGrants};
use proto::control::{Control, CONTROL_TOPIC};
use room::{DataPacketBuilder, Room, RoomEvent, RoomOptions};
use tokio::sync::mpsc;

const CALLEE: &str = "+15551234567";
const OUR_NUMBER: &str = "+15550001111";

fn sip_token(call: bool) -> String {
    AccessToken::with_api_key("devkey", "secret")
        .with_identity("dialer")
        .with_sip_grants(SIPGrants { admin: false, call })
        .to_jwt()
        .unwrap()
}

async fn bridge_for_outbound(lk: &devroom::Running, rest: &FakeRest, extra: &[&str]) -> BridgeHandle {
    let mut args = vec!["--dial-allow", "+1555*", "--twilio-from-number", OUR_NUMBER, "--opus-dtx", "false"];
    args.extend_from_slice(extra);
    start_bridge(lk, &rest.start().await, &args).await
}

/// `CreateSIPParticipant` as JSON: (HTTP status, body).
async fn create(base: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/twirp/livekit.SIP/CreateSIPParticipant"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// What the room shows of the phone participant.
#[derive(Default, Debug)]
struct Phone {
    statuses: Vec<String>,
    answered_by: Option<String>,
    attributes: std::collections::HashMap<String, String>,
    kind: Option<room::ParticipantKind>,
    track: Option<room::RemoteAudioTrack>,
    left: bool,
}

impl Phone {
    fn status(&mut self, s: &str) {
        if self.statuses.last().map(String::as_str) != Some(s) {
            self.statuses.push(s.to_owned());
        }
    }
}

/// Reads room events until `done` holds (true) or `within` passes (false).
async fn watch(events: &mut mpsc::Receiver<RoomEvent>, phone: &mut Phone, identity: &str, within: Duration, done: impl Fn(&Phone) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !done(phone) {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => ev,
            _ => return false,
        };
        match ev {
            RoomEvent::ParticipantConnected(p) | RoomEvent::ParticipantRejoined { participant: p, .. } if p.identity == identity => {
                phone.kind = Some(p.kind);
                phone.attributes = p.attributes.clone();
                if let Some(s) = p.attributes.get("sip.callStatus") {
                    phone.status(s);
                }
            }
            RoomEvent::AttributesChanged { participant, changed } if participant.identity == identity => {
                phone.attributes = participant.attributes.clone();
                if let Some(s) = changed.get("sip.callStatus") {
                    phone.status(s);
                }
                if let Some(a) = changed.get("sip.twilio.answeredBy") {
                    phone.answered_by = Some(a.clone());
                }
            }
            RoomEvent::TrackSubscribed { track, participant } if participant.identity == identity => phone.track = Some(track),
            RoomEvent::ParticipantDisconnected(p) if p.identity == identity => phone.left = true,
            _ => {}
        }
    }
    true
}

/// Seconds of what the far end heard, as PCM.
fn heard(report: &callsim::far_end::FarEndReport) -> Vec<i16> {
    ulaw_to_pcm(&report.call.as_ref().expect("the call was answered").heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_dials_out_waits_for_the_answer_and_talks_with_the_callee() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let mut far = far_end(Answer::Human { rings: 8 });
    far.call = far.call.tone(700.0).duration_secs(6.0).keep_heard(true);
    rest.far_end(Some(CALLEE), far);
    let bridge = bridge_for_outbound(&lk, &rest, &[]).await;
    let (agent, mut events) = join(&lk, "agent-out-1", "sales-1").await;

    let request = serde_json::json!({
        "sip_trunk_id": "",
        "sip_call_to": CALLEE,
        "room_name": "sales-1",
        "participant_identity": "callee",
        "participant_name": "The callee",
        "participant_attributes": {"lead": "42"},
        "wait_until_answered": true,
        "play_dialtone": true,
        "some_future_field": 1,
    });
    let dial = tokio::spawn({
        let base = bridge.base.clone();
        async move { create(&base, &sip_token(true), request).await }
    });
    let mut phone = Phone::default();
    // The phone participant joins at once, dialing, then rings, then is answered.
    assert!(watch(&mut events, &mut phone, "callee", Duration::from_secs(10), |p| p.statuses.contains(&"ringing".to_string())).await, "{phone:?}");
    assert!(!dial.is_finished(), "wait_until_answered: no reply while it rings");
    // play_dialtone: the room hears ringback (440 + 480 Hz) while it rings.
    assert!(watch(&mut events, &mut phone, "callee", Duration::from_secs(5), |p| p.track.is_some()).await);
    let mut ring = phone.track.as_ref().unwrap().stream(8_000).unwrap();
    let mut pcm = Vec::new();
    while pcm.len() < 10_400 {
        match tokio::time::timeout(Duration::from_secs(2), ring.recv()).await {
            Ok(Some(f)) => pcm.extend(f.samples),
            _ => break,
        }
    }
    drop(ring);
    // Skip the track's first 0.8 s: room's Opus path can overshoot on a steady two-tone signal
    // as a stream starts (seen with a plain publisher too), which is not the bridge's doing.
    let mut snrs: Vec<f64> = pcm.get(6_400..).unwrap_or_default().chunks_exact(800).map(|w| tones_snr(w, 8_000, &[440.0, 480.0])).collect();
    snrs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert!(snrs.len() >= 4 && snrs[1] > 10.0, "ringback while ringing: {snrs:?}");
    let (status, info) = dial.await.unwrap();
    assert_eq!(status, 200, "{info}");
    let call_sid = info["sipCallId"].as_str().unwrap().to_owned();
    assert!(call_sid.starts_with("CA") && call_sid.len() == 34, "{info}");
    assert_eq!(info["participantIdentity"], "callee");
    assert_eq!(info["roomName"], "sales-1");
    assert!(info["participantId"].as_str().unwrap().starts_with("PA_"), "{info}");

    assert!(watch(&mut events, &mut phone, "callee", Duration::from_secs(10), |p| p.statuses.contains(&"active".to_string()) && p.track.is_some()).await, "{phone:?}");
    assert_eq!(phone.kind, Some(room::ParticipantKind::Sip));
    for (k, v) in [("sip.phoneNumber", CALLEE), ("sip.trunkPhoneNumber", OUR_NUMBER), ("sip.twilio.callSid", call_sid.as_str()), ("lead", "42")] {
        assert_eq!(phone.attributes.get(k).map(String::as_str), Some(v), "{k}: {:?}", phone.attributes);
    }
    // The agent hears the callee and the callee hears the agent.
    let mut stream = phone.track.as_ref().unwrap().stream(8_000).unwrap();
    let talking = speak_tone(&agent, 440.0, 3.0).await;
    let mut pcm = Vec::new();
    while pcm.len() < 8_000 * 2 {
        match tokio::time::timeout(Duration::from_secs(5), stream.recv()).await {
            Ok(Some(f)) => pcm.extend(f.samples),
            _ => break,
        }
    }
    assert!(tone_snr_median(&pcm[4_000..], 8_000, 700.0) > 15.0, "the agent hears the callee's 700 Hz");
    // Twilio's detector says human; the callee hangs up after 6 s.
    assert!(watch(&mut events, &mut phone, "callee", Duration::from_secs(15), |p| p.left).await, "{phone:?}");
    talking.abort();
    assert_eq!(phone.statuses, ["dialing", "ringing", "active", "hangup"]);
    assert_eq!(phone.answered_by.as_deref(), Some("human"));

    let report = rest.far_end_report(&call_sid, Duration::from_secs(10)).await;
    let statuses: Vec<(&str, Option<u16>)> = report.statuses.iter().map(|(s, c)| (s.as_str(), *c)).collect();
    assert_eq!(
        statuses,
        [("initiated", Some(204)), ("ringing", Some(204)), ("in-progress", Some(204)), ("completed", Some(204))]
    );
    let heard = heard(&report);
    assert!(tone_snr_median(loudest_run(&heard, 160), 8_000, 440.0) > 15.0, "the callee hears the agent");
    // What the bridge asked Twilio for.
    let form = rest.created.lock().unwrap()[0].clone();
    assert_eq!(form_value(&form, "To"), Some(CALLEE));
    assert_eq!(form_value(&form, "From"), Some(OUR_NUMBER));
    assert_eq!(form_value(&form, "MachineDetection"), Some("DetectMessageEnd"));
    assert_eq!(form_value(&form, "AsyncAmd"), Some("true"));
    assert_eq!(form.iter().filter(|(k, _)| k == "StatusCallbackEvent").count(), 4);
    assert!(form_value(&form, "Url").unwrap().starts_with(&format!("{}/outbound-call?", bridge.base)));
    // The room is the agent's: it stays; the bridge's places came back.
    assert!(room_names(&lk).await.contains(&"sales-1".to_string()));
    assert!(eventually(Duration::from_secs(5), || bridge.app.registry.active_count() + bridge.app.registry.dialing_count() == 0).await);
    assert!(bridge.app.outbound.is_empty());
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_no_answer_and_refusals_answer_as_livekit_sip_does() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    rest.far_end(Some("+15551110001"), far_end(Answer::Busy));
    rest.far_end(Some("+15551110002"), far_end(Answer::NoAnswer));
    rest.far_end(Some("+15551110003"), far_end(Answer::Fail));
    let bridge = bridge_for_outbound(&lk, &rest, &[]).await;
    let (agent, mut events) = join(&lk, "agent-out-2", "sales-2").await;
    let req = |to: &str| serde_json::json!({"sip_call_to": to, "room_name": "sales-2", "wait_until_answered": true, "ringing_timeout": "2s"});

    let (status, e) = create(&bridge.base, &sip_token(true), req("+15551110001")).await;
    assert_eq!((status, e["code"].as_str()), (429, Some("resource_exhausted")), "{e}");
    assert_eq!(e["meta"]["sip_status_code"], "486");
    let (status, e) = create(&bridge.base, &sip_token(true), req("+15551110002")).await;
    assert_eq!((status, e["code"].as_str()), (408, Some("deadline_exceeded")), "{e}");
    let (status, e) = create(&bridge.base, &sip_token(true), req("+15551110003")).await;
    assert_eq!((status, e["code"].as_str()), (412, Some("failed_precondition")), "{e}");
    // The busy callee's participant came and went: dialing, ringing, hangup.
    let mut phone = Phone::default();
    assert!(watch(&mut events, &mut phone, "sip_+15551110001", Duration::from_secs(5), |p| p.left).await, "{phone:?}");
    assert_eq!(phone.statuses, ["dialing", "ringing", "hangup"]);

    // Refused before anything reaches Twilio: a number not on DIAL_ALLOW, a token without the
    // sip.call grant, no token, a request that is not one.
    let placed = rest.created.lock().unwrap().len();
    let (status, e) = create(&bridge.base, &sip_token(true), req("+19005550100")).await;
    assert_eq!((status, e["code"].as_str()), (403, Some("permission_denied")), "{e}");
    let (status, e) = create(&bridge.base, &sip_token(false), req("+15551110001")).await;
    assert_eq!((status, e["code"].as_str()), (401, Some("unauthenticated")), "{e}");
    let (status, _) = create(&bridge.base, "not-a-jwt", req("+15551110001")).await;
    assert_eq!(status, 401);
    let (status, e) = create(&bridge.base, &sip_token(true), serde_json::json!({"sip_call_to": CALLEE})).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("invalid_argument")), "{e}");
    let resp = reqwest::Client::new()
        .post(format!("{}/twirp/livekit.SIP/CreateSIPParticipant", bridge.base))
        .bearer_auth(sip_token(true))
        .header("content-type", "application/protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(rest.created.lock().unwrap().len(), placed, "nothing refused reached Twilio");

    // Without wait_until_answered the answer comes as soon as Twilio takes the call.
    rest.far_end(Some("+15551110004"), far_end(Answer::Human { rings: 20 }));
    let t = std::time::Instant::now();
    let body = {
        use prost::Message;
        livekit_protocol::CreateSipParticipantRequest {
            sip_call_to: "+15551110004".into(),
            room_name: "sales-2".into(),
            ringing_timeout: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let resp = reqwest::Client::new()
        .post(format!("{}/twirp/livekit.SIP/CreateSIPParticipant", bridge.base))
        .bearer_auth(sip_token(true))
        .header("content-type", "application/protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let info = {
        use prost::Message;
        livekit_protocol::SipParticipantInfo::decode(resp.bytes().await.unwrap()).unwrap()
    };
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(info.participant_identity, "sip_+15551110004");
    // Nobody answers within its 1 s ringing timeout, which Twilio was told.
    let form = rest.created.lock().unwrap().last().cloned().unwrap();
    assert_eq!(form_value(&form, "Timeout"), Some("1"));
    let mut phone = Phone::default();
    assert!(watch(&mut events, &mut phone, "sip_+15551110004", Duration::from_secs(10), |p| p.left).await, "{phone:?}");
    assert_eq!(phone.statuses, ["dialing", "ringing", "hangup"]);
    assert!(eventually(Duration::from_secs(5), || bridge.app.registry.dialing_count() == 0 && bridge.app.outbound.is_empty()).await);
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_is_detected_and_the_agent_speaks_after_the_beep() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let greeting = tone(400.0, 8_000, 0, 8_000 * 2, 6000.0);
    let mut far = far_end(Answer::Voicemail { rings: 1, greeting });
    far.call = far.call.keep_heard(true);
    rest.far_end(None, far);
    let bridge = bridge_for_outbound(&lk, &rest, &[]).await;
    let (agent, mut events) = join(&lk, "agent-out-3", "sales-3").await;
    let (status, info) = create(
        &bridge.base,
        &sip_token(true),
        serde_json::json!({"sip_call_to": CALLEE, "room_name": "sales-3", "wait_until_answered": true}),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    let call_sid = info["sipCallId"].as_str().unwrap().to_owned();
    let mut phone = Phone::default();
    let answered = std::time::Instant::now();
    // DetectMessageEnd: the verdict comes after the greeting and its beep.
    assert!(watch(&mut events, &mut phone, "sip_+15551234567", Duration::from_secs(10), |p| p.answered_by.is_some()).await, "{phone:?}");
    assert_eq!(phone.answered_by.as_deref(), Some("machine_end_beep"));
    assert!(answered.elapsed() >= Duration::from_secs(2), "not before the beep: {:?}", answered.elapsed());
    // The agent leaves its message, then hangs up.
    speak_tone(&agent, 900.0, 1.5).await.await.unwrap();
    agent.send_data(DataPacketBuilder::new(Control::Hangup { reason: Some("message left".into()) }.to_bytes()).topic(CONTROL_TOPIC)).await.unwrap();
    let report = rest.far_end_report(&call_sid, Duration::from_secs(15)).await;
    assert_eq!(report.answered_by.as_deref(), Some("machine_end_beep"));
    let heard = heard(&report);
    let beep_end = (2_000 + BEEP.as_millis() as usize) * 8;
    assert!(heard.len() > beep_end, "{}", heard.len());
    // 1.5 s of message after the beep (a busy machine may put holes in it).
    let loud_frames = heard[beep_end..].chunks(160).filter(|f| f.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / 160.0 > 1e5).count();
    assert!(loud_frames >= 50, "a second or more of message: {loud_frames} frames");
    let message = loudest_run(&heard[beep_end..], 160);
    assert!(tone_snr_median(message, 8_000, 900.0) > 15.0, "the voicemail recorded the agent's message");
    assert!(rest.wait_for(Duration::from_secs(5), |sid, f| sid == call_sid && form_value(f, "Status") == Some("completed")).await.is_some());
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_pressed_in_the_room_reach_the_callee_as_tones() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let mut far = far_end(Answer::Human { rings: 1 });
    far.call = far.call.duration_secs(8.0);
    rest.far_end(None, far);
    let bridge = bridge_for_outbound(&lk, &rest, &["--outbound-amd", "off"]).await;
    let (agent, mut events) = join(&lk, "agent-out-4", "sales-4").await;
    let url = format!("ws://{}", lk.http_addr);
    let (viewer, _viewer_events) = Room::connect(&url, &token("viewer-4", "sales-4", "standard"), RoomOptions::default()).await.unwrap();
    // The request's own dial string is pressed on answer (LiveKit's `dtmf`, status automation).
    let (status, info) = create(
        &bridge.base,
        &sip_token(true),
        serde_json::json!({"sip_call_to": CALLEE, "room_name": "sales-4", "wait_until_answered": true, "dtmf": "9w"}),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    let call_sid = info["sipCallId"].as_str().unwrap().to_owned();
    let mut phone = Phone::default();
    assert!(watch(&mut events, &mut phone, "sip_+15551234567", Duration::from_secs(10), |p| p.statuses.contains(&"active".to_string())).await, "{phone:?}");
    assert!(phone.statuses.contains(&"automation".to_string()), "{phone:?}");
    // An agent presses keys (as LiveKit SDKs' publish_dtmf); a browser viewer cannot.
    viewer.send_dtmf(5, "5", vec![]).await.unwrap();
    for (code, digit) in [(1, "1"), (2, "2"), (11, "#")] {
        agent.send_dtmf(code, digit, vec![]).await.unwrap();
    }
    let report = rest.far_end_report(&call_sid, Duration::from_secs(20)).await;
    let call = report.call.unwrap();
    assert_eq!(call.dtmf_heard, "912#", "{call:?}");
    assert!(report.answered_by.is_none(), "OUTBOUND_AMD=off");
    let form = rest.created.lock().unwrap()[0].clone();
    assert_eq!(form_value(&form, "MachineDetection"), None);
    assert!(eventually(Duration::from_secs(5), || bridge.app.metrics.render().contains("bridge_control_refused_total{reason=\"not_agent\"} 1")).await);
    agent.close().await;
    viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dialled_on_one_replica_can_stream_on_another() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let mut far = far_end(Answer::Human { rings: 2 });
    far.call = far.call.tone(700.0).duration_secs(6.0);
    rest.far_end(None, far);
    // Twilio's requests for calls A places all reach B (as a load balancer might send them).
    let b = bridge_for_outbound(&lk, &rest, &[]).await;
    let a = bridge_for_outbound(&lk, &rest, &["--public-url", &b.base]).await;
    let (agent, mut events) = join(&lk, "agent-out-5", "sales-5").await;
    let (status, info) = create(
        &a.base,
        &sip_token(true),
        serde_json::json!({"sip_call_to": CALLEE, "room_name": "sales-5", "participant_identity": "callee", "wait_until_answered": true}),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    // B's stream joined as the phone participant, replacing A's (the room sees it rejoin);
    // B's callbacks set its status and Twilio's AMD verdict through the server API.
    let mut phone = Phone::default();
    let heard = watch(&mut events, &mut phone, "callee", Duration::from_secs(10), |p| {
        p.statuses.last().map(String::as_str) == Some("active") && p.answered_by.as_deref() == Some("human") && p.track.is_some()
    })
    .await;
    assert!(heard, "{phone:?}");
    assert!(phone.statuses.starts_with(&["dialing".to_string(), "ringing".to_string()]), "{phone:?}");
    assert_eq!(phone.attributes.get("sip.phoneNumber").map(String::as_str), Some(CALLEE), "B carried the attributes over");
    assert!(eventually(Duration::from_secs(5), || a.app.registry.dialing_count() == 0 && a.app.outbound.is_empty()).await, "A let go");
    assert_eq!(b.app.registry.active_count(), 1);
    // The callee's audio reaches the agent through B. The track seen first may still be A's
    // (replaced a moment later): when a stream ends, listen to the callee's newer track.
    let mut track = phone.track.take().unwrap();
    let mut pcm = Vec::new();
    for _attempt in 0..3 {
        pcm.clear();
        let mut stream = track.stream(8_000).unwrap();
        while pcm.len() < 8_000 {
            match tokio::time::timeout(Duration::from_secs(2), stream.recv()).await {
                Ok(Some(f)) => pcm.extend(f.samples),
                _ => break,
            }
        }
        if pcm.len() >= 8_000 {
            break;
        }
        let newer = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(ev) = events.recv().await {
                if let RoomEvent::TrackSubscribed { track, participant } = ev {
                    if participant.identity == "callee" {
                        return Some(track);
                    }
                }
            }
            None
        })
        .await;
        match newer {
            Ok(Some(t)) => track = t,
            _ => break,
        }
    }
    assert!(pcm.len() >= 8_000, "heard only {} samples of the callee", pcm.len());
    assert!(tone_snr_median(&pcm[2_000..], 8_000, 700.0) > 15.0);
    assert!(eventually(Duration::from_secs(15), || b.app.registry.active_count() == 0).await, "B's call ended");
    agent.close().await;
}
