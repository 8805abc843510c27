//! A simulated Twilio call through the bridge into a devroom room, with a `room` participant
//! playing the agent.

mod common;

use std::time::Duration;

use common::*;
use proto::control::{Control, CONTROL_TOPIC};
use room::{AudioCodec, AudioTrackOptions, DataPacketBuilder, RoomEvent};
use tokio::time::timeout;

/// Collects what the agent hears from the phone and the control messages the bridge sends.
struct AgentSide {
    heard: tokio::sync::mpsc::Receiver<Vec<i16>>,
    controls: tokio::sync::mpsc::Receiver<Control>,
    dtmf: tokio::sync::mpsc::Receiver<String>,
}

fn watch_room(mut events: tokio::sync::mpsc::Receiver<RoomEvent>) -> AgentSide {
    let (heard_tx, heard) = tokio::sync::mpsc::channel(1000);
    let (ctl_tx, controls) = tokio::sync::mpsc::channel(1000);
    let (dtmf_tx, dtmf) = tokio::sync::mpsc::channel(100);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                RoomEvent::TrackSubscribed { track, participant } if participant.identity.starts_with("phone-") => {
                    let mut s = track.stream(8_000).unwrap();
                    let tx = heard_tx.clone();
                    tokio::spawn(async move {
                        while let Some(f) = s.recv().await {
                            if tx.send(f.samples).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                RoomEvent::DataReceived(m) if m.topic.as_deref() == Some(CONTROL_TOPIC) => {
                    let _ = ctl_tx.send(Control::parse(&m.payload).unwrap()).await;
                }
                RoomEvent::DtmfReceived(d) => {
                    let _ = dtmf_tx.send(d.digit).await;
                }
                _ => {}
            }
        }
    });
    AgentSide { heard, controls, dtmf }
}

/// One call's audio both ways, on a server that enables G.711 or not, with the bridge's
/// `PHONE_CODEC` and the agent publishing `agent_codec`.
struct Audio {
    devroom: &'static [&'static str],
    bridge: &'static [&'static str],
    agent_codec: AudioCodec,
    /// Codec the bridge must have published the caller's track with.
    phone_codec: &'static str,
    /// The agent's μ-law reaches the caller as it came (PCMU agent track).
    passthrough: bool,
}

/// Zero transcode both ways: the caller's μ-law goes into the room as a PCMU track, and the
/// agent's PCMU comes back to the caller without decode, mix or encode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_and_agent_hear_each_other() {
    hear_each_other(Audio { devroom: &[], bridge: &[], agent_codec: AudioCodec::Pcmu, phone_codec: "pcmu", passthrough: true }).await;
}

/// `PHONE_CODEC=opus`: the Opus path as before (decode + encode), an Opus agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_and_agent_hear_each_other_over_opus() {
    hear_each_other(Audio { devroom: &[], bridge: &["--phone-codec", "opus"], agent_codec: AudioCodec::Opus, phone_codec: "opus", passthrough: false }).await;
}

/// A server without G.711 (livekit-server before 1.9.1): `auto` falls back to Opus, and even
/// `PHONE_CODEC=pcmu` does rather than lose the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_only_server_gets_an_opus_phone_track() {
    hear_each_other(Audio { devroom: &["--g711-off"], bridge: &[], agent_codec: AudioCodec::Opus, phone_codec: "opus", passthrough: false }).await;
    hear_each_other(Audio { devroom: &["--g711-off"], bridge: &["--phone-codec", "pcmu"], agent_codec: AudioCodec::Opus, phone_codec: "opus", passthrough: false }).await;
}

async fn hear_each_other(case: Audio) {
    let lk = start_devroom_with(case.devroom).await;
    let rest = FakeRest::default();
    let rest_base = rest.start().await;
    // Opus DTX would take a steady test tone for background noise and stop sending it.
    let mut args = vec!["--opus-dtx", "false"];
    args.extend_from_slice(case.bridge);
    let bridge = start_bridge(&lk, &rest_base, &args).await;
    let sid = call_sid(1);

    // The agent is in the room first and speaks a 440 Hz tone for 3 s, in real time, within the
    // caller's 5 s (the room goes when the call ends).
    let (agent, events) = join(&lk, "agent-1", &format!("call-{sid}")).await;
    let mut side = watch_room(events);
    let mut sink = agent.publish_audio(AudioTrackOptions { sample_rate: 8_000, codec: case.agent_codec, ..Default::default() }).await.unwrap();

    let caller = callsim::spawn_call(callsim(&bridge, &sid).tone(1000.0).duration_secs(5.0).keep_heard(true));
    // Start speaking once the phone is in the room (its first frames reach the agent).
    let first = timeout(Duration::from_secs(15), side.heard.recv()).await.expect("phone audio reaches the agent");
    assert!(first.is_some());
    let speaker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for k in 0..150 {
            tick.tick().await;
            if let Err(e) = sink.push(&tone(440.0, 8_000, k * 160, 160, 8000.0)).await {
                return Err(format!("agent frame {k}: {e}"));
            }
        }
        Ok(sink)
    });

    let report = timeout(Duration::from_secs(30), caller.finish()).await.expect("call ends").expect("call report");
    assert_eq!(report.outcome, callsim::Outcome::Completed, "{report:?}");
    let _sink = speaker.await.unwrap().expect("the agent spoke for 3 s");
    assert_eq!(report.invalid_messages, 0, "{:?}", report.invalid_reasons);

    let phone = |codec: &str| bridge.app.metrics.phone_tracks.with_label_values(&[codec]).get();
    assert_eq!((phone(case.phone_codec), phone("pcmu") + phone("opus")), (1, 1), "the caller's track is {}", case.phone_codec);
    let passed = bridge.app.metrics.ulaw_passed_through.get();
    if case.passthrough {
        assert!(passed >= 140, "only {passed} of the agent's 150 PCMU frames went to the caller as they came");
    } else {
        assert_eq!(passed, 0);
    }

    // What the caller heard: the agent's 440 Hz (through Opus, or as μ-law all the way).
    let heard = ulaw_to_pcm(&report.heard);
    let run = loudest_run(&heard, 160);
    assert!(run.len() >= 8_000 * 2, "caller heard only {} ms of the agent", run.len() / 8);
    let mid = &run[1600..run.len() - 1600];
    let snr = tone_snr_median(mid, 8_000, 440.0);
    eprintln!("{:?} agent -> caller ({} phone track): median SNR {snr:.1} dB", case.agent_codec, case.phone_codec);
    assert!(snr >= 20.0, "caller-side SNR {snr:.1} dB");
    assert!(report.marks_echoed > 50, "marks echoed: {}", report.marks_echoed);

    // What the agent heard: the caller's 1 kHz through μ-law and Opus.
    let mut from_phone = first.unwrap();
    while let Ok(Some(f)) = timeout(Duration::from_millis(200), side.heard.recv()).await {
        from_phone.extend(f);
    }
    let run = loudest_run(&from_phone, 160);
    if std::env::var_os("E2E_DEBUG").is_some() {
        let pattern: String = from_phone
            .chunks(160)
            .map(|c| if c.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / 160.0 > 1e5 { '#' } else { '.' })
            .collect();
        eprintln!("agent heard {} frames: {pattern}", from_phone.len() / 160);
        let snrs: Vec<i32> = from_phone.chunks_exact(800).map(|c| tone_snr(c, 8_000, 1000.0).0 as i32).collect();
        eprintln!("agent-side SNR per 100 ms: {snrs:?}");
        let snrs: Vec<i32> = heard.chunks_exact(800).map(|c| tone_snr(c, 8_000, 440.0).0 as i32).collect();
        eprintln!("caller-side SNR per 100 ms: {snrs:?}");
    }
    assert!(run.len() >= 8_000 * 2, "agent heard only {} ms of the caller", run.len() / 8);
    let snr = tone_snr_median(&run[1600..run.len() - 1600], 8_000, 1000.0);
    eprintln!("caller -> agent ({} phone track): median SNR {snr:.1} dB", case.phone_codec);
    assert!(snr >= 20.0, "agent-side SNR {snr:.1} dB");

    // The bridge reported what the caller heard, ending with the whole utterance.
    let mut playbacks = vec![];
    while let Ok(c) = side.controls.try_recv() {
        if let Control::Playback { heard_ms, complete, .. } = c {
            playbacks.push((heard_ms, complete));
        }
    }
    assert!(playbacks.len() >= 3, "{playbacks:?}");
    assert!(playbacks.windows(2).all(|w| w[0].0 <= w[1].0), "{playbacks:?}");
    let _ = side.dtmf.try_recv();

    // Bridge-added latency was measured for every frame each way (4 s of caller tone, DTX off;
    // 3 s of agent tone), and on loopback it is far below a frame.
    let inbound = &bridge.app.metrics.inbound_latency_seconds;
    let outbound = &bridge.app.metrics.outbound_latency_seconds;
    assert!(inbound.get_sample_count() >= 150, "inbound samples {}", inbound.get_sample_count());
    assert!(outbound.get_sample_count() >= 100, "outbound samples {}", outbound.get_sample_count());
    let mean_ms = |h: &prometheus::Histogram| h.get_sample_sum() / h.get_sample_count() as f64 * 1e3;
    assert!(mean_ms(inbound) < 20.0, "inbound mean {:.2} ms", mean_ms(inbound));
    assert!(mean_ms(outbound) < 20.0, "outbound mean {:.2} ms", mean_ms(outbound));
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_clears_dtmf_reaches_the_room_and_hangup_ends_the_call() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &[]).await;
    let sid = call_sid(2);
    let (agent, events) = join(&lk, "agent-2", &format!("call-{sid}")).await;
    let mut side = watch_room(events);
    let mut sink = agent.publish_audio(AudioTrackOptions { sample_rate: 8_000, ..Default::default() }).await.unwrap();

    let mut caller = callsim::spawn_call(callsim(&bridge, &sid).duration_secs(20.0).dtmf_at(Duration::from_millis(500), '7'));
    // DTMF arrives as LiveKit SIP's DTMF packet and as a control message.
    let digit = timeout(Duration::from_secs(15), side.dtmf.recv()).await.expect("dtmf packet").unwrap();
    assert_eq!(digit, "7");

    // The agent talks; once the caller is hearing it, the agent interrupts itself.
    let speaker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for k in 0..100 {
            tick.tick().await;
            if sink.push(&tone(440.0, 8_000, k * 160, 160, 8000.0)).await.is_err() {
                break;
            }
        }
    });
    loop {
        match timeout(Duration::from_secs(10), caller.next_event()).await.expect("caller hears audio") {
            Some(callsim::CallEvent::Media { .. }) => break,
            Some(_) => {}
            None => panic!("call ended early"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent
        .send_data(DataPacketBuilder::new(Control::Interrupt { utterance_id: None }.to_bytes()).topic(CONTROL_TOPIC))
        .await
        .unwrap();
    let cleared = async {
        loop {
            match caller.next_event().await {
                Some(callsim::CallEvent::Clear { .. }) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    };
    assert!(timeout(Duration::from_secs(5), cleared).await.expect("clear arrives"));
    // The bridge reports the interrupted utterance with what the caller heard (300+ ms).
    let interrupted = async {
        while let Some(c) = side.controls.recv().await {
            if let Control::Playback { interrupted: true, heard_ms, .. } = c {
                return heard_ms;
            }
        }
        0
    };
    let heard_ms = timeout(Duration::from_secs(5), interrupted).await.expect("playback report");
    assert!(heard_ms >= 300, "the caller had been hearing the agent for 300+ ms: heard {heard_ms} ms");
    speaker.abort();
    // Inside the bridge, interrupt to clear took well under a frame.
    let m = bridge.app.metrics.interrupt_to_clear_seconds.clone();
    assert_eq!(m.get_sample_count(), 1);
    assert!(m.get_sample_sum() < 0.020, "interrupt→clear {} s", m.get_sample_sum());

    // Hang-up: the REST API is told, the stream closes, the room goes away.
    agent
        .send_data(DataPacketBuilder::new(Control::Hangup { reason: Some("done".into()) }.to_bytes()).topic(CONTROL_TOPIC))
        .await
        .unwrap();
    let report = timeout(Duration::from_secs(10), caller.finish()).await.expect("call ends").unwrap();
    assert_eq!(report.closed_by, Some(callsim::ClosedBy::Server), "{report:?}");
    // The reported position is what the caller's side actually played, to the frame: after the
    // clear nothing more was played (the bridge mutes the interrupted utterance's tail).
    assert!(
        (report.played_ms - heard_ms as f64).abs() <= 20.0,
        "bridge says {heard_ms} ms heard, the caller played {} ms",
        report.played_ms
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let updates = rest.updates.lock().unwrap().clone();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].0, sid);
    assert!(updates[0].1.contains(&("Status".to_string(), "completed".to_string())));
    assert!(updates[0].2.as_deref().unwrap_or("").starts_with("Basic "));
    assert_eq!(bridge.app.registry.active_count(), 0);
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_on_both_legs() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &[]).await;
    // Webhook signed with the wrong token.
    let report = callsim::run_call(callsim(&bridge, &call_sid(3)).auth_token("wrong-token").duration_secs(1.0))
        .await
        .unwrap();
    assert_eq!(report.webhook_status, Some(403), "{report:?}");
    assert_ne!(report.outcome, callsim::Outcome::Completed);

    // Media Streams upgrade without a valid signature.
    let ws_url = bridge.base.replace("http://", "ws://") + "/media-stream";
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url.as_str()).unwrap();
    req.headers_mut().insert("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("upgrade should be refused: {other:?}"),
    }
    // A correctly signed socket whose `start` carries no valid stream token is closed.
    let sig = proto::signature::compute::<&str, &str>(AUTH_TOKEN, &bridge.app.cfg.stream_url(), &[]);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url.as_str()).unwrap();
    req.headers_mut().insert("X-Twilio-Signature", sig.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("signed upgrade accepted");
    use futures_util::{SinkExt, StreamExt};
    let start = proto::twilio::Inbound::Start {
        sequence_number: 1,
        stream_sid: format!("MZ{:032x}", 9),
        start: proto::twilio::StreamStart {
            call_sid: call_sid(9),
            stream_sid: format!("MZ{:032x}", 9),
            custom_parameters: [("token".to_string(), "1.2.3".to_string())].into(),
            ..Default::default()
        },
    };
    ws.send(tokio_tungstenite::tungstenite::Message::Text(start.to_json().into())).await.unwrap();
    let closed = timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => return true,
                Ok(_) => {}
            }
        }
        true
    })
    .await
    .expect("socket closed");
    assert!(closed);
    assert!(bridge.app.metrics.render().contains("bridge_errors_total{kind=\"stream_token_invalid\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answer_at_max_calls() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--max-calls", "1"]).await;
    let first = callsim::spawn_call(callsim(&bridge, &call_sid(4)).duration_secs(3.0));
    // Wait until the first call is in.
    for _ in 0..100 {
        if bridge.app.registry.active_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bridge.app.registry.active_count(), 1);
    let second = callsim::run_call(callsim(&bridge, &call_sid(5)).duration_secs(1.0)).await.unwrap();
    assert_eq!(second.outcome, callsim::Outcome::Rejected, "{second:?}");
    assert!(second.said.unwrap_or_default().contains("busy"));
    let first = first.finish().await.unwrap();
    assert_eq!(first.outcome, callsim::Outcome::Completed);
    // Room deleted and place freed: a new call gets in.
    let third = callsim::run_call(callsim(&bridge, &call_sid(6)).duration_secs(0.5)).await.unwrap();
    assert_eq!(third.outcome, callsim::Outcome::Completed, "{third:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_calls() {
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &[]).await;
    // The most calls up at once, sampled throughout.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (peak, app) = (peak.clone(), bridge.app.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(app.registry.active_count(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut calls = vec![];
    for i in 0..100u32 {
        calls.push(callsim::spawn_call(callsim(&bridge, &call_sid(1000 + i)).tone(500.0).duration_secs(4.0)));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut completed = 0;
    for c in calls {
        let r = timeout(Duration::from_secs(60), c.finish()).await.expect("call ends").unwrap();
        if r.outcome == callsim::Outcome::Completed && r.frames_sent >= 190 {
            completed += 1;
        } else {
            eprintln!("{r:?}");
        }
    }
    assert_eq!(completed, 100);
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak >= 50, "calls overlapped: peak {peak}");
    // The callers are gone; the bridge finishes cleaning up (rooms deleted) a moment later.
    for _ in 0..50 {
        if bridge.app.registry.active_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bridge.app.registry.active_count(), 0);
    let m = bridge.app.metrics.render();
    assert!(m.contains("bridge_calls_total{outcome=\"completed\"} 100"), "{m}");
}
