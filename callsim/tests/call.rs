//! End-to-end: the simulator against a fake bridge (tests/common) over real HTTP and WebSocket.

mod common;

use std::time::Duration;

use callsim::sid::is_sid;
use callsim::{Action, CallEvent, ClosedBy, Outcome};
use common::{goertzel, tone_mulaw, Answer, Behavior, Peer, Seen, Step};
use proto::twilio::Inbound;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn events_until_end(call: &mut callsim::Call) -> Vec<CallEvent> {
    let mut out = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), call.next_event()).await.expect("events stalled") {
        let end = matches!(ev, CallEvent::Ended { .. });
        out.push(ev);
        if end {
            break;
        }
    }
    out
}

/// The last inbound media timestamp the peer had seen before entry `idx` of its log.
fn last_ts_before(seen: &[Seen], idx: usize) -> u64 {
    seen[..idx]
        .iter()
        .rev()
        .find_map(|s| match s {
            Seen::In(Inbound::Media { media, .. }) => Some(media.timestamp_ms),
            _ => None,
        })
        .unwrap_or(0)
}

fn index_of(seen: &[Seen], pred: impl Fn(&Seen) -> bool) -> usize {
    seen.iter().position(pred).expect("entry not in the peer's log")
}

fn is_out_mark(s: &Seen, name: &str) -> bool {
    matches!(s, Seen::Out(t) if t.contains(r#""event":"mark""#) && t.contains(&format!(r#""name":"{name}""#)))
}

fn is_echo(s: &Seen, name: &str) -> bool {
    matches!(s, Seen::In(Inbound::Mark { name: n, .. }) if n == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_streams_signed_frames_with_custom_parameters() {
    let peer = Peer::start(Behavior::default()).await;
    let report = callsim::run_call(peer.config().tone(440.0).duration_secs(1.0).speed(10.0)).await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!(report.closed_by, Some(ClosedBy::Sim));
    assert_eq!((report.frames_sent, report.frames_lost), (50, 0));
    peer.wait_closed().await;

    let hooks = peer.webhooks("/incoming-call");
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert!(h.signature_ok);
    let call_sid = h.get("CallSid").unwrap().to_owned();
    assert!(is_sid(&call_sid, "CA"), "{call_sid}");
    assert_eq!(report.call_sid, call_sid);
    assert!(is_sid(h.get("AccountSid").unwrap(), "AC"));
    assert_eq!(h.get("From"), Some("+15005550006"));
    assert_eq!(h.get("To"), Some("+15005550001"));
    assert_eq!(h.get("CallStatus"), Some("ringing"));
    assert_eq!(h.get("Direction"), Some("inbound"));
    assert_eq!(h.get("ApiVersion"), Some("2010-04-01"));

    let st = peer.stream(0);
    assert!(st.signature_ok);
    let msgs = st.inbound();
    assert_eq!(msgs.len(), 1 + 1 + 50 + 1, "connected, start, 50 media, stop");
    assert_eq!(msgs[0], Inbound::Connected { protocol: "Call".into(), version: "1.0.0".into() });
    let Inbound::Start { sequence_number, stream_sid, start } = &msgs[1] else { panic!("{:?}", msgs[1]) };
    assert_eq!(*sequence_number, 1);
    assert!(is_sid(stream_sid, "MZ"));
    assert_eq!(Some(stream_sid), report.stream_sid.as_ref());
    assert_eq!(start.call_sid, call_sid);
    assert_eq!(start.account_sid, h.get("AccountSid").unwrap());
    assert_eq!(start.tracks, vec!["inbound".to_string()]);
    assert!(start.media_format.is_mulaw_8k_mono());
    assert_eq!(start.custom_parameters.get("room").map(String::as_str), Some("call-test"));
    assert_eq!(start.custom_parameters.get("token").map(String::as_str), Some("a&b<c>"));
    for (i, m) in msgs[2..52].iter().enumerate() {
        let Inbound::Media { sequence_number, stream_sid: sid, media } = m else { panic!("{m:?}") };
        assert_eq!(*sequence_number, 2 + i as u64);
        assert_eq!(sid, stream_sid);
        assert_eq!(media.chunk, 1 + i as u64);
        assert_eq!(media.timestamp_ms, 20 * i as u64);
        assert_eq!(media.payload.len(), 160);
        assert_eq!(media.track, "inbound");
    }
    let Inbound::Stop { sequence_number, call_sid: stop_call, account_sid, .. } = &msgs[52] else { panic!("{:?}", msgs[52]) };
    assert_eq!(*sequence_number, 52);
    assert_eq!(stop_call, &call_sid);
    assert_eq!(account_sid, h.get("AccountSid").unwrap());

    // The frames carry the tone.
    let Inbound::Media { media, .. } = &msgs[10] else { unreachable!() };
    let pcm = callsim::audio_source::decode(&media.payload);
    assert!(goertzel(&pcm, 440.0) > 50.0 * goertzel(&pcm, 1000.0));

    let status = peer.webhooks("/call-status");
    assert_eq!(status.len(), 1);
    assert!(status[0].signature_ok);
    assert_eq!(status[0].get("CallStatus"), Some("completed"));
    assert_eq!(status[0].get("CallDuration"), Some("1"));
    assert_eq!(status[0].get("CallSid"), Some(call_sid.as_str()));
    assert_eq!(report.status_callback_status, Some(204));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_time_pacing_takes_the_stream_length() {
    let peer = Peer::start(Behavior::default()).await;
    let t0 = std::time::Instant::now();
    let report = callsim::run_call(peer.config().duration_secs(0.4).no_status()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!(report.frames_sent, 20);
    // Lower bounds only: the frames cannot go out before their time.
    assert!(t0.elapsed() >= ms(400), "{:?}", t0.elapsed());
    assert!(report.stream_ms >= 400.0, "{}", report.stream_ms);
    assert!(peer.webhooks("/call-status").is_empty(), "--no-status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_refused_on_both_legs() {
    // Webhook leg.
    let peer = Peer::start(Behavior::default()).await;
    let report = callsim::run_call(peer.config().auth_token("wrong").duration_secs(0.2).fast()).await.unwrap();
    assert_eq!(report.outcome, Outcome::WebhookRefused, "{report:?}");
    assert_eq!(report.webhook_status, Some(403));
    assert!(!peer.webhooks("/incoming-call")[0].signature_ok);
    assert!(peer.streams().is_empty());
    assert!(peer.webhooks("/call-status").is_empty());

    // WebSocket leg: a bridge that only checks the upgrade.
    let peer = Peer::start(Behavior { check_webhook_signature: false, ..Default::default() }).await;
    let report = callsim::run_call(peer.config().auth_token("wrong").duration_secs(0.2).fast()).await.unwrap();
    assert_eq!(report.outcome, Outcome::StreamRefused, "{report:?}");
    assert!(report.error.as_deref().unwrap().contains("403"), "{report:?}");
    assert_eq!(peer.refused_streams(), 1);

    // And the right token passes both.
    let report = callsim::run_call(peer.config().duration_secs(0.2).fast()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert!(peer.stream(0).signature_ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answer_is_rejected_with_its_text() {
    let peer = Peer::start(Behavior { answer: Answer::Busy("All lines are busy".into()), ..Default::default() }).await;
    let report = callsim::run_call(peer.config().fast()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Rejected);
    assert_eq!(report.said.as_deref(), Some("All lines are busy"));
    assert!(peer.streams().is_empty());
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["outcome"], "rejected");

    let peer = Peer::start(Behavior { answer: Answer::Status(503), ..Default::default() }).await;
    let report = callsim::run_call(peer.config().fast()).await.unwrap();
    assert_eq!((report.outcome, report.webhook_status), (Outcome::WebhookRefused, Some(503)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_echo_when_their_audio_has_played() {
    let script = vec![
        Step::UntilInboundTs(100),
        Step::Media(tone_mulaw(1000.0, 500)),
        Step::Mark("half".into()),
        Step::Media(tone_mulaw(1000.0, 500)),
        Step::Mark("end".into()),
        Step::UntilEcho("end".into()),
    ];
    let peer = Peer::start(Behavior { script, ..Default::default() }).await;
    let mut call = callsim::spawn_call(peer.config().duration_secs(3.0).speed(10.0).no_status());
    let events = events_until_end(&mut call).await;
    let report = call.finish().await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!((report.marks_received, report.marks_echoed, report.marks_echoed_by_clear), (2, 2, 0));
    assert_eq!(report.frames_received, 2);
    assert_eq!(report.bytes_received, 8000);
    assert!(report.first_audio_latency_ms.is_some());

    // Exact, on the simulator's clock: the buffer plays 8 bytes per ms from the first audio.
    let first_audio = events.iter().find_map(|e| if let CallEvent::Media { at, .. } = e { Some(*at) } else { None }).unwrap();
    let echoed = |name: &str| {
        events
            .iter()
            .find_map(|e| match e {
                CallEvent::MarkEchoed { at, name: n, cleared: false } if n == name => Some(*at),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} not echoed: {events:?}"))
    };
    // Playback starts at the first whole 8 kHz sample at or before the arrival (125 µs grid).
    let start = callsim::playback::from_samples(callsim::playback::to_samples(first_audio));
    assert_eq!(echoed("half"), start + ms(500));
    assert_eq!(echoed("end"), start + ms(1000));
    let rtt = &report.mark_rtt_ms;
    assert_eq!(rtt.count, 2);
    assert!(rtt.min.unwrap() > 400.0 && rtt.min.unwrap() <= 500.0, "{rtt:?}");

    // As the bridge sees it: the echo comes only after ~500 ms more of the caller's frames.
    let st = peer.stream(0);
    let sent = last_ts_before(&st.seen, index_of(&st.seen, |s| is_out_mark(s, "half")));
    let echo = last_ts_before(&st.seen, index_of(&st.seen, |s| is_echo(s, "half")));
    assert!(echo >= sent + 400, "mark sent after ts {sent}, echoed after ts {echo}");
    assert!(index_of(&st.seen, |s| is_echo(s, "half")) < index_of(&st.seen, |s| is_echo(s, "end")));
    // Audio played back to back: no gap within the utterance.
    assert_eq!(report.gaps.within_utterance_count, 0);
    assert!((report.played_ms - 1000.0).abs() < 0.01, "{}", report.played_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_echoes_pending_marks_at_once() {
    let script = vec![
        Step::UntilInboundTs(100),
        Step::Media(tone_mulaw(1000.0, 10_000)),
        Step::Mark("long".into()),
        Step::UntilInboundTs(400),
        Step::Clear,
        Step::UntilEcho("long".into()),
    ];
    let peer = Peer::start(Behavior { script, ..Default::default() }).await;
    let mut call = callsim::spawn_call(peer.config().duration_secs(2.0).speed(10.0).keep_heard(true).no_status());
    let events = events_until_end(&mut call).await;
    let report = call.finish().await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!((report.marks_echoed, report.marks_echoed_by_clear, report.clears_received), (0, 1, 1));

    let clear_at = events.iter().find_map(|e| if let CallEvent::Clear { at } = e { Some(*at) } else { None }).unwrap();
    let echo = events.iter().find_map(|e| match e {
        CallEvent::MarkEchoed { at, name, cleared } if name == "long" => Some((*at, *cleared)),
        _ => None,
    });
    assert_eq!(echo, Some((clear_at, true)));

    // The bridge gets the echo right after its clear, not after 10 s of audio.
    let st = peer.stream(0);
    let sent = last_ts_before(&st.seen, index_of(&st.seen, |s| matches!(s, Seen::Out(t) if t.contains(r#""clear""#))));
    let echo = last_ts_before(&st.seen, index_of(&st.seen, |s| is_echo(s, "long")));
    assert!(echo < sent + 1000, "clear after ts {sent}, echo after ts {echo}");

    // The caller heard the tone until the clear, then silence.
    let first_audio = events.iter().find_map(|e| if let CallEvent::Media { at, .. } = e { Some(*at) } else { None }).unwrap();
    let heard_ms = report.played_ms;
    let expected = (clear_at - first_audio).as_secs_f64() * 1000.0;
    assert!((heard_ms - expected).abs() <= 0.125, "played {heard_ms} ms, clear came {expected} ms after the audio");
    let clear_sample = callsim::playback::to_samples(clear_at) as usize;
    assert!(report.heard[clear_sample + 8..].iter().all(|&b| b == 0xFF), "silence after the clear");
    assert!(report.heard[clear_sample - 800..clear_sample - 8].iter().any(|&b| b != 0xFF), "tone before the clear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_wav_contains_the_tone() {
    let script = vec![
        Step::UntilInboundTs(200),
        Step::Media(tone_mulaw(1000.0, 1000)),
        Step::Mark("done".into()),
        Step::UntilEcho("done".into()),
    ];
    let peer = Peer::start(Behavior { script, ..Default::default() }).await;
    let dir = std::env::temp_dir().join(format!("callsim-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("heard.wav");
    let report = callsim::run_call(peer.config().duration_secs(2.0).speed(10.0).record(&path).no_status()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let mut reader = hound::WavReader::open(&path).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 8000, 16));
    let pcm: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    assert!((pcm.len() as f64 - report.stream_ms * 8.0).abs() <= 8.0, "{} samples for {} ms", pcm.len(), report.stream_ms);
    let loud: Vec<usize> = pcm.iter().enumerate().filter(|(_, s)| s.abs() > 1000).map(|(i, _)| i).collect();
    let (a, b) = (*loud.first().unwrap(), *loud.last().unwrap());
    assert!((b - a) as i64 - 8000 <= 0 && (b - a) as i64 - 8000 > -16, "tone spans {a}..{b}");
    let tone = &pcm[a..=b];
    assert!(goertzel(tone, 1000.0) > 100.0 * goertzel(tone, 440.0));
    assert!(pcm[..a.saturating_sub(8)].iter().all(|&s| s == 0), "silence before the tone");
    assert!(pcm[b + 8..].iter().all(|&s| s == 0), "silence after the tone");
    assert_eq!(report.gaps.within_utterance_count, 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_shows_as_timestamp_gaps_at_the_peer() {
    let peer = Peer::start(Behavior::default()).await;
    let report =
        callsim::run_call(peer.config().tone(300.0).duration_secs(4.0).fast().loss_pct(25.0).seed(7).no_status()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!(report.frames_sent + report.frames_lost, 200);
    assert!(report.frames_lost > 20 && report.frames_lost < 80, "{}", report.frames_lost);
    peer.wait_closed().await;
    let st = peer.stream(0);
    let media = st.media();
    assert_eq!(media.len() as u64, report.frames_sent);
    let mut missing = 0;
    let mut prev_chunk = 0;
    for m in &media {
        assert_eq!(m.timestamp_ms, (m.chunk - 1) * 20, "timestamps keep advancing 20 ms per chunk");
        assert!(m.chunk > prev_chunk);
        missing += m.chunk - prev_chunk - 1;
        prev_chunk = m.chunk;
    }
    missing += 200 - prev_chunk;
    assert_eq!(missing, report.frames_lost, "every lost frame is a gap in chunk/timestamp");
    // sequenceNumber counts messages, so it has no gaps.
    let seqs: Vec<u64> = st
        .inbound()
        .iter()
        .filter_map(|m| match m {
            Inbound::Start { sequence_number, .. } | Inbound::Media { sequence_number, .. } | Inbound::Stop { sequence_number, .. } => {
                Some(*sequence_number)
            }
            _ => None,
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_delays_frames_but_keeps_order_and_timestamps() {
    let peer = Peer::start(Behavior::default()).await;
    let report = callsim::run_call(peer.config().duration_secs(1.0).speed(5.0).jitter(ms(60)).seed(3).no_status()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    peer.wait_closed().await;
    let media = peer.stream(0).media();
    assert_eq!(media.len(), 50);
    for (i, m) in media.iter().enumerate() {
        assert_eq!((m.chunk, m.timestamp_ms), (i as u64 + 1, 20 * i as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_calls_complete() {
    let peer = Peer::start(Behavior {
        script: vec![Step::Media(tone_mulaw(500.0, 200)), Step::Mark("m".into())],
        ..Default::default()
    })
    .await;
    let load = callsim::run_calls(peer.config().tone(440.0).duration_secs(1.0).speed(10.0).ramp_per_sec(200.0), 20).await.unwrap();
    let a = &load.aggregate;
    assert_eq!((a.calls, a.completed, a.not_completed), (20, 20, 0), "{:?}", a.failures);
    assert_eq!(a.frames_sent, 20 * 50);
    assert_eq!(a.marks_echoed, 20);
    assert_eq!(a.first_audio_latency_ms.count, 20);
    assert_eq!(a.mark_rtt_ms.count, 20);
    let mut sids: Vec<String> = load.calls.iter().map(|r| r.call_sid.clone()).collect();
    sids.sort();
    sids.dedup();
    assert_eq!(sids.len(), 20);
    peer.wait_closed().await;
    let streams = peer.streams();
    assert_eq!(streams.len(), 20);
    for s in &streams {
        let s = s.lock().unwrap();
        assert_eq!(s.media().len(), 50);
        assert!(s.signature_ok);
    }
    assert_eq!(peer.webhooks("/call-status").len(), 20);
    let json: serde_json::Value = serde_json::to_value(a).unwrap();
    assert_eq!(json["outcomes"]["completed"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_injected_audio_and_hangup_from_a_test() {
    let peer = Peer::start(Behavior::default()).await;
    let cfg = peer.config().duration_secs(10.0).speed(10.0).dtmf_schedule("5@0.2,#@0.4").unwrap().no_status();
    let mut call = callsim::spawn_call(cfg);
    let mut dtmf = Vec::new();
    while let Some(ev) = call.next_event().await {
        match ev {
            CallEvent::Started { custom_parameters, .. } => {
                assert!(custom_parameters.contains(&("room".into(), "call-test".into())));
                assert!(call.send_audio(vec![4000; 800]).await);
            }
            CallEvent::DtmfSent { at, digit } => {
                dtmf.push((at, digit));
                if dtmf.len() == 2 {
                    assert!(call.send(Action::Hangup).await);
                }
            }
            CallEvent::Ended { by } => {
                assert_eq!(by, ClosedBy::Sim);
                break;
            }
            _ => {}
        }
    }
    let report = call.finish().await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!(report.dtmf_sent, 2);
    assert!(dtmf[0].0 >= ms(200) && dtmf[1].0 >= ms(400), "{dtmf:?}");
    assert!(report.stream_ms < 5000.0, "hung up early: {}", report.stream_ms);
    peer.wait_closed().await;
    let st = peer.stream(0);
    let digits: Vec<(String, String)> = st
        .inbound()
        .into_iter()
        .filter_map(|m| if let Inbound::Dtmf { digit, track, .. } = m { Some((digit, track)) } else { None })
        .collect();
    assert_eq!(digits, vec![("5".into(), "inbound_track".into()), ("#".into(), "inbound_track".into())]);
    // The injected 100 ms of a constant level went out in the frames.
    let loud = st.media().iter().filter(|m| callsim::audio_source::decode(&m.payload).iter().all(|&s| (s - 4000).abs() < 200)).count();
    assert_eq!(loud, 5);
    assert!(matches!(st.inbound().last(), Some(Inbound::Stop { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_first_ends_the_call() {
    let peer = Peer::start(Behavior { script: vec![Step::UntilInboundTs(200), Step::Close], ..Default::default() }).await;
    let report = callsim::run_call(peer.config().duration_secs(10.0).speed(10.0)).await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!(report.closed_by, Some(ClosedBy::Server));
    assert!(report.stream_ms < 5000.0, "{}", report.stream_ms);
    peer.wait_closed().await;
    assert!(!peer.stream(0).inbound().iter().any(|m| matches!(m, Inbound::Stop { .. })), "no stop after the server closed");
    assert_eq!(peer.webhooks("/call-status").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_server_input_is_counted_not_fatal() {
    let script = vec![
        Step::UntilInboundTs(60),
        Step::Binary(vec![1, 2, 3]),
        Step::Text("not json".into()),
        Step::Text(r#"{"event":"start","streamSid":"{sid}"}"#.into()),
        Step::Text(r#"{"event":"media","streamSid":"{sid}","media":{"payload":"!!"}}"#.into()),
        Step::Text(r#"{"event":"mark","streamSid":"MZ00000000000000000000000000000000","mark":{"name":"x"}}"#.into()),
        Step::Text(r#"{"event":"mark","streamSid":"{sid}"}"#.into()),
        Step::Text(r#"{"event":"media","streamSid":"{sid}","media":{"payload":""}}"#.into()),
        Step::Text(r#"[1,2,3]"#.into()),
        Step::Mark("ok".into()),
        Step::UntilEcho("ok".into()),
    ];
    let peer = Peer::start(Behavior { script, ..Default::default() }).await;
    let mut call = callsim::spawn_call(peer.config().duration_secs(2.0).speed(10.0).no_status());
    let events = events_until_end(&mut call).await;
    let report = call.finish().await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!(report.invalid_messages, 7, "{:?}", report.invalid_reasons);
    assert!(report.invalid_reasons.iter().any(|r| r.contains("31950")), "{:?}", report.invalid_reasons);
    assert_eq!(events.iter().filter(|e| matches!(e, CallEvent::Invalid { .. })).count(), 7);
    // The empty media payload is valid; the mark behind it came back.
    assert_eq!((report.frames_received, report.marks_echoed), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_fails_the_call_cleanly() {
    let huge = format!(r#"{{"event":"media","streamSid":"{{sid}}","media":{{"payload":"{}"}}}}"#, "A".repeat(2 << 20));
    let peer = Peer::start(Behavior { script: vec![Step::UntilInboundTs(40), Step::Text(huge)], ..Default::default() }).await;
    let report = callsim::run_call(peer.config().duration_secs(5.0).speed(10.0).no_status()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert!(report.stream_ms < 5000.0);
    assert!(report.error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_mode_echoes_marks_on_its_own_clock() {
    // No waiting: the stream's 20 s go by as fast as the socket allows, and the mark still
    // falls due 1 s of stream time after its audio started.
    let script = vec![Step::Media(tone_mulaw(700.0, 1000)), Step::Mark("m".into()), Step::UntilEcho("m".into())];
    let peer = Peer::start(Behavior { script, ..Default::default() }).await;
    let mut call = callsim::spawn_call(peer.config().duration_secs(20.0).fast().no_status());
    let events = events_until_end(&mut call).await;
    let report = call.finish().await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_eq!(report.frames_sent, 1000);
    if report.marks_echoed == 1 {
        let first = events.iter().find_map(|e| if let CallEvent::Media { at, .. } = e { Some(*at) } else { None }).unwrap();
        let echo = events.iter().find_map(|e| if let CallEvent::MarkEchoed { at, .. } = e { Some(*at) } else { None }).unwrap();
        assert_eq!(echo, first + ms(1000));
        let st = peer.stream(0);
        let sent = last_ts_before(&st.seen, index_of(&st.seen, |s| is_out_mark(s, "m")));
        let echoed = last_ts_before(&st.seen, index_of(&st.seen, |s| is_echo(s, "m")));
        assert!(echoed >= sent + 960, "mark sent after ts {sent}, echoed after ts {echoed}");
    } else {
        // The bridge's answer came after the last frame; the stream still ended cleanly.
        assert_eq!(report.marks_echoed, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wav_and_mulaw_files_stream_until_they_end() {
    let dir = std::env::temp_dir().join(format!("callsim-src-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 0.5 s of 600 Hz at 16 kHz stereo: resampled to 8 kHz mono, 25 frames.
    let wav = dir.join("tone16k.wav");
    let spec = hound::WavSpec { channels: 2, sample_rate: 16_000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for n in 0..8000 {
        let v = (12_000.0 * (std::f64::consts::TAU * 600.0 * n as f64 / 16_000.0).sin()) as i16;
        w.write_sample(v).unwrap();
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
    let raw = dir.join("tone.ulaw");
    std::fs::write(&raw, tone_mulaw(1200.0, 300)).unwrap();

    let peer = Peer::start(Behavior::default()).await;
    let r = callsim::run_call(peer.config().audio(callsim::AudioSpec::Wav(wav)).fast().no_status()).await.unwrap();
    assert_eq!((r.outcome, r.frames_sent), (Outcome::Completed, 25), "{r:?}");
    let r = callsim::run_call(peer.config().audio(callsim::AudioSpec::Mulaw(raw)).fast().no_status()).await.unwrap();
    assert_eq!((r.outcome, r.frames_sent), (Outcome::Completed, 15), "{r:?}");
    peer.wait_closed().await;
    let pcm = |i: usize| -> Vec<i16> { peer.stream(i).media().iter().flat_map(|m| callsim::audio_source::decode(&m.payload)).collect() };
    let wav_pcm = pcm(0);
    assert!(goertzel(&wav_pcm, 600.0) > 50.0 * goertzel(&wav_pcm, 1200.0));
    let raw_pcm = pcm(1);
    assert!(goertzel(&raw_pcm, 1200.0) > 50.0 * goertzel(&raw_pcm, 600.0));
    // An unreadable file is a local error, not a call outcome.
    assert!(callsim::run_call(peer.config().audio(callsim::AudioSpec::Wav(dir.join("none.wav")))).await.is_err());
    std::fs::remove_dir_all(&dir).ok();
}
