//! Deepgram live STT client against the local fake.

mod fakes;

use std::time::Duration;

use agent::providers::deepgram::{DeepgramConfig, DeepgramStt};
use agent::providers::{ProviderError, SttEvent, SttProvider, SttSession};
use fakes::deepgram::FakeDeepgram;
use fakes::{tone, ulaw, within, Fault, KEY};

fn config(base: String) -> DeepgramConfig {
    DeepgramConfig {
        base_url: base,
        ..DeepgramConfig::new(KEY)
    }
}

async fn send_tone(s: &mut Box<dyn SttSession>, frames: usize) -> Vec<i16> {
    let pcm = tone(160 * frames, 8000);
    for frame in pcm.chunks(160) {
        s.send_audio(frame).await.unwrap();
    }
    pcm
}

async fn next(s: &mut Box<dyn SttSession>) -> Option<SttEvent> {
    within(5, "deepgram event", s.next_event()).await
}

#[tokio::test]
async fn deepgram_streams_ulaw_and_assembles_turns() {
    let fake = FakeDeepgram::start(Fault::None).await;
    let stt = DeepgramStt::new(config(fake.base_url()));
    assert_eq!(stt.input_rate(), 8000);
    let mut s = within(5, "connect", stt.start()).await.unwrap();
    let pcm = send_tone(&mut s, 20).await; // 3200 bytes: both scripted turns

    let mut events = Vec::new();
    while events
        .iter()
        .filter(|e| matches!(e, SttEvent::EndOfTurn { .. }))
        .count()
        < 2
    {
        events.push(next(&mut s).await.expect("stream ended early"));
    }
    assert_eq!(
        events,
        vec![
            SttEvent::SpeechStarted,
            SttEvent::Interim { text: "hel".into() },
            SttEvent::Final {
                text: "hello there".into(),
                confidence: 0.97
            },
            SttEvent::Interim {
                text: "how are".into()
            },
            SttEvent::Final {
                text: "how are you".into(),
                confidence: 0.97
            },
            SttEvent::EndOfTurn {
                text: "hello there how are you".into()
            },
            SttEvent::SpeechStarted,
            SttEvent::Final {
                text: "book a table".into(),
                confidence: 0.97
            },
            // speech_final ended this turn; the UtteranceEnd after it must not end it again.
            SttEvent::EndOfTurn {
                text: "book a table".into()
            },
        ]
    );

    // Finalize flushes; CloseStream ends the stream cleanly (no error, then None).
    s.finalize().await.unwrap();
    assert_eq!(
        next(&mut s).await,
        Some(SttEvent::Final {
            text: "finalized words".into(),
            confidence: 0.97
        })
    );
    s.close().await;
    let mut rest = Vec::new();
    while let Some(ev) = next(&mut s).await {
        rest.push(ev);
    }
    // The finalized words were never ended by the server; closing hands them over as a turn.
    assert_eq!(
        rest,
        vec![SttEvent::EndOfTurn {
            text: "finalized words".into()
        }]
    );

    // μ-law straight through: exactly the G.711 encoding of what we sent.
    assert_eq!(fake.audio(), ulaw(&pcm));
    let controls: Vec<String> = fake
        .controls()
        .into_iter()
        .filter(|c| c != "KeepAlive")
        .collect();
    assert_eq!(controls, ["Finalize", "CloseStream"]);
    fake.violations.assert_none();
}

#[tokio::test]
async fn deepgram_sends_keepalive_during_silence() {
    let fake = FakeDeepgram::start(Fault::None).await;
    let stt = DeepgramStt::new(DeepgramConfig {
        keepalive: Duration::from_millis(100),
        ..config(fake.base_url())
    });
    let mut s = within(5, "connect", stt.start()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let keepalives = fake.controls().iter().filter(|c| *c == "KeepAlive").count();
    assert!(keepalives >= 3, "only {keepalives} KeepAlive in 450 ms");
    // Audio resets the timer: right after a frame there is no KeepAlive burst.
    send_tone(&mut s, 1).await;
    s.close().await;
    while within(5, "drain", s.next_event()).await.is_some() {}
    fake.violations.assert_none();
}

#[tokio::test]
async fn deepgram_bad_key_is_auth_error() {
    let fake = FakeDeepgram::start(Fault::None).await;
    let stt = DeepgramStt::new(DeepgramConfig {
        api_key: "wrong".into(),
        ..config(fake.base_url())
    });
    let err = within(5, "connect", stt.start())
        .await
        .err()
        .expect("connect must fail");
    assert!(
        matches!(err, ProviderError::Auth { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Invalid credentials"), "{err}");
    assert!(!err.retryable());
}

#[tokio::test]
async fn deepgram_http_statuses_map_to_classes() {
    for (status, check) in [
        (
            429u16,
            (|e: &ProviderError| matches!(e, ProviderError::RateLimited { .. }))
                as fn(&ProviderError) -> bool,
        ),
        (500, |e| {
            matches!(e, ProviderError::Server { status: 500, .. })
        }),
        (503, |e| {
            matches!(e, ProviderError::Server { status: 503, .. })
        }),
        (403, |e| {
            matches!(e, ProviderError::Auth { status: 403, .. })
        }),
    ] {
        let fake = FakeDeepgram::start(Fault::Status(status)).await;
        let stt = DeepgramStt::new(config(fake.base_url()));
        let err = within(5, "connect", stt.start())
            .await
            .err()
            .expect("connect must fail");
        assert!(check(&err), "HTTP {status} gave {err:?}");
    }
}

#[tokio::test]
async fn deepgram_connection_refused_is_connection_error() {
    // Bind then drop a listener so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stt = DeepgramStt::new(config(format!("ws://127.0.0.1:{port}")));
    let err = within(5, "connect", stt.start())
        .await
        .err()
        .expect("connect must fail");
    assert!(matches!(err, ProviderError::Connection { .. }), "{err:?}");
    assert!(err.retryable());
}

#[tokio::test]
async fn deepgram_socket_closed_mid_stream_surfaces_an_error() {
    let fake = FakeDeepgram::start(Fault::CloseMidStream).await;
    let stt = DeepgramStt::new(config(fake.base_url()));
    let mut s = within(5, "connect", stt.start()).await.unwrap();
    send_tone(&mut s, 10).await;
    assert_eq!(
        next(&mut s).await,
        Some(SttEvent::Interim { text: "hel".into() })
    );
    match next(&mut s).await {
        Some(SttEvent::Error(msg)) => assert!(msg.contains("connection"), "{msg}"),
        other => panic!("expected an error event, got {other:?}"),
    }
    assert_eq!(next(&mut s).await, None);
    // Sending on a dead stream fails promptly too.
    let mut failed = false;
    for _ in 0..50 {
        if s.send_audio(&[0; 160]).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed, "send_audio kept succeeding on a closed socket");
}

#[tokio::test]
async fn deepgram_malformed_json_is_protocol_error() {
    let fake = FakeDeepgram::start(Fault::Malformed).await;
    let stt = DeepgramStt::new(config(fake.base_url()));
    let mut s = within(5, "connect", stt.start()).await.unwrap();
    send_tone(&mut s, 10).await;
    match next(&mut s).await {
        Some(SttEvent::Error(msg)) => assert!(msg.contains("malformed"), "{msg}"),
        other => panic!("expected an error event, got {other:?}"),
    }
    assert_eq!(next(&mut s).await, None);
}
