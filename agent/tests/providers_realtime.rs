//! OpenAI Realtime session (GA and beta vocabularies) against the local fake.

mod fakes;

use agent::providers::openai_realtime::{
    RealtimeApi, RealtimeConfig, RealtimeEvent, RealtimeSession,
};
use agent::providers::{ProviderError, ToolSpec};
use fakes::realtime::{Api, FakeRealtime, Options, Scenario, DELTAS, DELTA_BYTES};
use fakes::{within, Fault, KEY};
use serde_json::json;

fn cfg(fake: &FakeRealtime, api: Api) -> RealtimeConfig {
    let api = match api {
        Api::Ga => RealtimeApi::Ga,
        Api::Beta => RealtimeApi::Beta,
    };
    RealtimeConfig {
        base_url: fake.base_url(),
        instructions: "You are a phone agent.".into(),
        transcription_model: Some("gpt-4o-mini-transcribe".into()),
        tools: vec![ToolSpec {
            name: "get_weather".into(),
            description: "Weather for a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }],
        ..RealtimeConfig::new(KEY, api)
    }
}

async fn start(api: Api, scenario: Scenario, fault: Fault) -> (FakeRealtime, RealtimeSession) {
    let fake = FakeRealtime::start(Options {
        api,
        scenario,
        fault,
        auth_error_event: false,
    })
    .await;
    let session = within(5, "connect", RealtimeSession::connect(cfg(&fake, api)))
        .await
        .unwrap();
    (fake, session)
}

async fn next(s: &mut RealtimeSession) -> RealtimeEvent {
    within(5, "realtime event", s.next_event())
        .await
        .expect("session ended")
}

/// Sends 20 ms μ-law frames until the fake has heard a turn.
async fn speak(s: &mut RealtimeSession) -> Vec<u8> {
    let mut sent = Vec::new();
    for i in 0..12u8 {
        let frame = vec![i.wrapping_mul(17); 160];
        s.send_audio_ulaw(&frame).await.unwrap();
        sent.extend(frame);
    }
    sent
}

async fn audio_passthrough_and_barge_in(api: Api) {
    let (fake, mut s) = start(api, Scenario::Speak, Fault::None).await;
    let sent = speak(&mut s).await;
    let mut audio = Vec::new();
    let mut item = String::new();
    let mut saw = (false, false, false, false);
    loop {
        match next(&mut s).await {
            RealtimeEvent::SessionUpdated => {}
            RealtimeEvent::SpeechStarted {
                item_id,
                audio_start_ms,
            } => {
                assert_eq!((item_id.as_str(), audio_start_ms), ("item_user1", 40));
                saw.0 = true;
            }
            RealtimeEvent::SpeechStopped { audio_end_ms, .. } => {
                assert_eq!(audio_end_ms, 180);
                saw.1 = true;
            }
            RealtimeEvent::UserTranscript { text, .. } => {
                assert_eq!(text, "what's the weather in Paris");
                saw.2 = true;
            }
            RealtimeEvent::ResponseCreated { response_id } => assert_eq!(response_id, "resp_1"),
            RealtimeEvent::AssistantTranscriptDelta { .. } => saw.3 = true,
            RealtimeEvent::AudioDelta { item_id, audio: a } => {
                item = item_id;
                audio.extend(a);
            }
            RealtimeEvent::ResponseDone { status, .. } => {
                assert_eq!(status, "completed");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(saw, (true, true, true, true));
    assert_eq!(item, "item_a1");
    assert_eq!(
        audio,
        vec![0x55; DELTAS * DELTA_BYTES],
        "μ-law passes through unchanged"
    );
    assert_eq!(
        fake.log.lock().unwrap().audio,
        sent,
        "caller μ-law passes through unchanged"
    );

    // Barge-in: the caller heard 60 ms of item_a1.
    s.truncate(&item, 60).await.unwrap();
    s.cancel_response().await.unwrap();
    assert!(
        matches!(next(&mut s).await, RealtimeEvent::ResponseDone { status, .. } if status == "cancelled")
    );
    let t = fake.events_of("conversation.item.truncate");
    assert_eq!(
        t,
        vec![
            json!({"type": "conversation.item.truncate", "item_id": "item_a1", "content_index": 0, "audio_end_ms": 60})
        ]
    );
    assert_eq!(fake.events_of("response.cancel").len(), 1);

    let update = &fake.events_of("session.update")[0];
    assert_eq!(update["session"]["instructions"], "You are a phone agent.");
    s.close().await;
    assert!(
        within(5, "end", s.next_event()).await.is_none(),
        "close is not an error"
    );
    fake.violations.assert_none();
}

#[tokio::test]
async fn realtime_ga_audio_passthrough_speech_started_truncate() {
    audio_passthrough_and_barge_in(Api::Ga).await;
}

#[tokio::test]
async fn realtime_beta_audio_passthrough_speech_started_truncate() {
    audio_passthrough_and_barge_in(Api::Beta).await;
}

async fn function_call_round_trip(api: Api) {
    let (fake, mut s) = start(api, Scenario::CallTool, Fault::None).await;
    speak(&mut s).await;
    let call = loop {
        match next(&mut s).await {
            RealtimeEvent::FunctionCall {
                call_id,
                name,
                arguments,
            } => break (call_id, name, arguments),
            RealtimeEvent::AudioDelta { .. } => panic!("no audio expected before the tool result"),
            _ => {}
        }
    };
    assert_eq!(
        call,
        (
            "call_1".to_string(),
            "get_weather".to_string(),
            "{\"city\":\"Paris\"}".to_string()
        )
    );
    // Only one FunctionCall although both arguments.done and output_item.done describe it.
    loop {
        match next(&mut s).await {
            RealtimeEvent::FunctionCall { .. } => panic!("function call reported twice"),
            RealtimeEvent::ResponseDone { .. } => break,
            _ => {}
        }
    }
    s.send_function_output("call_1", "{\"sky\":\"sunny\"}")
        .await
        .unwrap();
    let mut audio = 0;
    loop {
        match next(&mut s).await {
            RealtimeEvent::AudioDelta { item_id, audio: a } => {
                assert_eq!(item_id, "item_a2");
                audio += a.len();
            }
            RealtimeEvent::ResponseDone { response_id, .. } => {
                assert_eq!(response_id, "resp_2");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(audio, DELTAS * DELTA_BYTES);
    let log = fake.log.lock().unwrap();
    let kinds: Vec<&str> = log
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|k| *k != "input_audio_buffer.append")
        .collect();
    assert_eq!(
        kinds,
        [
            "session.update",
            "conversation.item.create",
            "response.create"
        ]
    );
    let create = log
        .events
        .iter()
        .find(|e| e["type"] == "conversation.item.create")
        .unwrap();
    assert_eq!(
        create["item"],
        json!({"type": "function_call_output", "call_id": "call_1", "output": "{\"sky\":\"sunny\"}"})
    );
    drop(log);
    fake.violations.assert_none();
}

#[tokio::test]
async fn realtime_ga_function_call_round_trip() {
    function_call_round_trip(Api::Ga).await;
}

#[tokio::test]
async fn realtime_beta_function_call_round_trip() {
    // The beta arguments.done carries no name: it comes from output_item.added.
    function_call_round_trip(Api::Beta).await;
}

#[tokio::test]
async fn realtime_handshake_errors_map_to_classes() {
    for status in [401u16, 403, 429, 500] {
        let fake = FakeRealtime::start(Options {
            api: Api::Ga,
            scenario: Scenario::Speak,
            fault: Fault::Status(status),
            auth_error_event: false,
        })
        .await;
        let e = within(5, "connect", RealtimeSession::connect(cfg(&fake, Api::Ga)))
            .await
            .err()
            .expect("must fail");
        let ok = match status {
            401 | 403 => matches!(e, ProviderError::Auth { .. }),
            429 => matches!(e, ProviderError::RateLimited { .. }),
            _ => matches!(e, ProviderError::Server { status: 500, .. }),
        };
        assert!(ok, "HTTP {status} gave {e:?}");
    }
}

#[tokio::test]
async fn realtime_bad_key_error_event_is_auth() {
    let fake = FakeRealtime::start(Options {
        api: Api::Beta,
        scenario: Scenario::Speak,
        fault: Fault::None,
        auth_error_event: true,
    })
    .await;
    let c = RealtimeConfig {
        api_key: "wrong".into(),
        ..cfg(&fake, Api::Beta)
    };
    let e = within(5, "connect", RealtimeSession::connect(c))
        .await
        .err()
        .expect("must fail");
    assert!(matches!(e, ProviderError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("invalid_api_key"), "{e}");
}

#[tokio::test]
async fn realtime_connection_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = RealtimeConfig {
        base_url: format!("ws://127.0.0.1:{port}/v1"),
        ..RealtimeConfig::new(KEY, RealtimeApi::Ga)
    };
    let e = within(5, "connect", RealtimeSession::connect(c))
        .await
        .err()
        .expect("must fail");
    assert!(matches!(e, ProviderError::Connection { .. }), "{e:?}");
}

#[tokio::test]
async fn realtime_socket_closed_mid_response_surfaces_promptly() {
    let (_fake, mut s) = start(Api::Ga, Scenario::Speak, Fault::CloseMidStream).await;
    speak(&mut s).await;
    let mut got_audio = false;
    loop {
        match next(&mut s).await {
            RealtimeEvent::AudioDelta { .. } => got_audio = true,
            RealtimeEvent::Closed(e) => {
                assert!(matches!(e, ProviderError::Connection { .. }), "{e:?}");
                break;
            }
            RealtimeEvent::ResponseDone { .. } => panic!("the response cannot complete"),
            _ => {}
        }
    }
    assert!(got_audio);
    assert!(within(5, "end", s.next_event()).await.is_none());
    // Sending now fails instead of hanging.
    let mut failed = false;
    for _ in 0..20 {
        if s.send_audio_ulaw(&[0xFF; 160]).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(failed);
}

#[tokio::test]
async fn realtime_malformed_event_is_protocol_error() {
    let (_fake, mut s) = start(Api::Beta, Scenario::Speak, Fault::Malformed).await;
    match next(&mut s).await {
        RealtimeEvent::Closed(e) => assert!(matches!(e, ProviderError::Protocol { .. }), "{e:?}"),
        other => panic!("expected Closed(Protocol), got {other:?}"),
    }
}
