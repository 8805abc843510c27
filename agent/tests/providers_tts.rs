//! Cartesia and ElevenLabs streaming TTS clients against their local fakes.

mod fakes;

use std::time::Duration;

use agent::providers::cartesia::{CartesiaConfig, CartesiaEncoding, CartesiaTts};
use agent::providers::elevenlabs::{ElevenLabsConfig, ElevenLabsFormat, ElevenLabsTts};
use agent::providers::{ProviderError, TtsEvent, TtsProvider, TtsStream};
use fakes::{cartesia, elevenlabs, tone, within, Fault, KEY};
use serde_json::json;

/// Reads until Done / Error / None; returns (samples, last event).
async fn drain(s: &mut Box<dyn TtsStream>) -> (Vec<i16>, Option<TtsEvent>) {
    let mut pcm = Vec::new();
    loop {
        match within(5, "tts event", s.next_event()).await {
            Some(TtsEvent::Audio(a)) => pcm.extend(a),
            other => return (pcm, other),
        }
    }
}

// ---- Cartesia ----------------------------------------------------------------------------

fn cartesia_cfg(fake: &cartesia::FakeCartesia) -> CartesiaConfig {
    CartesiaConfig {
        base_url: fake.base_url(),
        ..CartesiaConfig::new(KEY, "voice-uuid-1")
    }
}

#[tokio::test]
async fn cartesia_streams_sentences_as_pcm() {
    let fake = cartesia::FakeCartesia::start(cartesia::Options::default()).await;
    let tts = CartesiaTts::new(cartesia_cfg(&fake));
    assert_eq!(tts.output_rate(), 16000);
    let mut s = within(5, "start", tts.start()).await.unwrap();
    s.push_text("Hello there.").await.unwrap();
    s.push_text("How can I help? ").await.unwrap();
    s.finish().await.unwrap();
    let (pcm, last) = drain(&mut s).await;
    assert_eq!(last, Some(TtsEvent::Done));
    let per_chunk = 16000 * cartesia::CHUNK_MS / 1000;
    assert_eq!(pcm.len(), 2 * cartesia::CHUNKS_PER_TEXT * per_chunk);
    assert_eq!(
        &pcm[..per_chunk],
        &tone(per_chunk, 16000)[..],
        "PCM decoded from base64 s16le"
    );
    assert_eq!(within(5, "after done", s.next_event()).await, None);

    let msgs = fake.messages();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    let ctx = msgs[0]["context_id"].clone();
    assert!(
        msgs.iter().all(|m| m["context_id"] == ctx),
        "one context per reply"
    );
    assert_eq!(msgs[0]["transcript"], "Hello there. ");
    assert_eq!(msgs[0]["continue"], true);
    assert_eq!(msgs[1]["transcript"], "How can I help? ");
    assert_eq!(msgs[2]["transcript"], "");
    assert_eq!(msgs[2]["continue"], false);
    assert_eq!(
        msgs[0]["output_format"],
        json!({"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000})
    );
    assert_eq!(
        msgs[0]["voice"],
        json!({"mode": "id", "id": "voice-uuid-1"})
    );
    fake.violations.assert_none();
}

#[tokio::test]
async fn cartesia_mulaw_and_connection_reuse_with_new_context() {
    let fake = cartesia::FakeCartesia::start(cartesia::Options::default()).await;
    let tts = CartesiaTts::new(CartesiaConfig {
        encoding: CartesiaEncoding::PcmMulaw,
        sample_rate: 8000,
        ..cartesia_cfg(&fake)
    });
    let mut contexts = Vec::new();
    for _ in 0..2 {
        let mut s = within(5, "start", tts.start()).await.unwrap();
        s.push_text("Hi.").await.unwrap();
        s.finish().await.unwrap();
        let (pcm, last) = drain(&mut s).await;
        assert_eq!(last, Some(TtsEvent::Done));
        let per_chunk = 8000 * cartesia::CHUNK_MS / 1000;
        assert_eq!(pcm.len(), cartesia::CHUNKS_PER_TEXT * per_chunk);
        // μ-law decoded: close to the tone (G.711 is lossy).
        let want = tone(per_chunk, 8000);
        assert!(pcm
            .iter()
            .zip(&want)
            .all(|(a, b)| (*a as i32 - *b as i32).abs() < 600));
        contexts.push(fake.messages().last().unwrap()["context_id"].clone());
    }
    assert_ne!(contexts[0], contexts[1], "a new context_id per reply");
    assert_eq!(
        fake.log.lock().unwrap().connections,
        1,
        "the socket is reused across replies"
    );
    assert_eq!(fake.messages()[0]["output_format"]["encoding"], "pcm_mulaw");
    fake.violations.assert_none();
}

#[tokio::test]
async fn cartesia_cancel_stops_audio_and_connection_serves_next_reply() {
    let opts = cartesia::Options {
        chunk_interval: Duration::from_millis(40),
        ..Default::default()
    };
    let fake = cartesia::FakeCartesia::start(opts).await;
    let tts = CartesiaTts::new(cartesia_cfg(&fake));
    let mut s = within(5, "start", tts.start()).await.unwrap();
    s.push_text("This is a long sentence that will be interrupted.")
        .await
        .unwrap();
    s.push_text("And another one.").await.unwrap();
    assert!(matches!(
        within(5, "first audio", s.next_event()).await,
        Some(TtsEvent::Audio(_))
    ));
    s.cancel().await;
    assert_eq!(
        within(1, "after cancel", s.next_event()).await,
        None,
        "nothing after cancel"
    );
    within(5, "cancel reaches the server", async {
        while !fake.messages().iter().any(|m| m["cancel"] == true) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let msgs = fake.messages();
    let last = msgs.last().unwrap();
    assert_eq!(last["cancel"], true);
    assert_eq!(last["context_id"], msgs[0]["context_id"]);
    drop(s);

    // The next reply works on the same socket and does not get the cancelled context's audio.
    let mut s = within(5, "start 2", tts.start()).await.unwrap();
    s.push_text("Yes?").await.unwrap();
    s.finish().await.unwrap();
    let (pcm, last) = drain(&mut s).await;
    assert_eq!(last, Some(TtsEvent::Done));
    assert_eq!(
        pcm.len(),
        cartesia::CHUNKS_PER_TEXT * 16000 * cartesia::CHUNK_MS / 1000
    );
    fake.violations.assert_none();
}

#[tokio::test]
async fn cartesia_handshake_errors_map_to_classes() {
    for status in [401u16, 429, 500] {
        let fake = cartesia::FakeCartesia::start(cartesia::Options {
            fault: Fault::Status(status),
            ..Default::default()
        })
        .await;
        let tts = CartesiaTts::new(cartesia_cfg(&fake));
        let e = within(5, "start", tts.start())
            .await
            .err()
            .expect("must fail");
        let ok = match status {
            401 => matches!(e, ProviderError::Auth { status: 401, .. }),
            429 => matches!(e, ProviderError::RateLimited { .. }),
            _ => matches!(e, ProviderError::Server { status: 500, .. }),
        };
        assert!(ok, "HTTP {status} gave {e:?}");
    }
    let fake = cartesia::FakeCartesia::start(cartesia::Options::default()).await;
    let tts = CartesiaTts::new(CartesiaConfig {
        api_key: "bad".into(),
        ..cartesia_cfg(&fake)
    });
    let e = within(5, "start", tts.start())
        .await
        .err()
        .expect("must fail");
    assert!(matches!(e, ProviderError::Auth { .. }), "{e:?}");
}

#[tokio::test]
async fn cartesia_error_message_and_malformed_json_surface() {
    let fake = cartesia::FakeCartesia::start(cartesia::Options {
        error_status: Some(429),
        ..Default::default()
    })
    .await;
    let tts = CartesiaTts::new(cartesia_cfg(&fake));
    let mut s = tts.start().await.unwrap();
    s.push_text("Hi.").await.unwrap();
    match drain(&mut s).await.1 {
        Some(TtsEvent::Error(m)) => assert!(
            m.contains("rate limited") && m.contains("status 429"),
            "{m}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }

    let fake = cartesia::FakeCartesia::start(cartesia::Options {
        fault: Fault::Malformed,
        ..Default::default()
    })
    .await;
    let tts = CartesiaTts::new(cartesia_cfg(&fake));
    let mut s = tts.start().await.unwrap();
    s.push_text("Hi.").await.unwrap();
    match drain(&mut s).await.1 {
        Some(TtsEvent::Error(m)) => assert!(m.contains("malformed"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn cartesia_socket_closed_mid_stream_is_an_error_then_reconnects() {
    let fake = cartesia::FakeCartesia::start(cartesia::Options {
        fault: Fault::CloseMidStream,
        ..Default::default()
    })
    .await;
    let tts = CartesiaTts::new(cartesia_cfg(&fake));
    let mut s = tts.start().await.unwrap();
    s.push_text("Hello there.").await.unwrap();
    s.finish().await.unwrap();
    let (pcm, last) = drain(&mut s).await;
    assert!(!pcm.is_empty(), "the first chunk arrived");
    match last {
        Some(TtsEvent::Error(m)) => assert!(m.contains("connection"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
    drop(s);
    // A dead socket is not reused: the next reply connects again.
    let mut s = within(5, "start 2", tts.start()).await.unwrap();
    s.push_text("Again.").await.unwrap();
    assert!(matches!(
        within(5, "audio", s.next_event()).await,
        Some(TtsEvent::Audio(_))
    ));
    assert_eq!(fake.log.lock().unwrap().connections, 2);
}

#[tokio::test]
async fn cartesia_silent_server_is_an_error_not_a_hang() {
    let fake = cartesia::FakeCartesia::start(cartesia::Options {
        silent: true,
        ..Default::default()
    })
    .await;
    let tts = CartesiaTts::new(CartesiaConfig {
        stall_timeout: Duration::from_millis(300),
        ..cartesia_cfg(&fake)
    });
    let mut s = tts.start().await.unwrap();
    s.push_text("Hello?").await.unwrap();
    s.finish().await.unwrap();
    match within(3, "stall", s.next_event()).await {
        Some(TtsEvent::Error(m)) => assert!(m.contains("no audio"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

// ---- ElevenLabs --------------------------------------------------------------------------

fn eleven_cfg(fake: &elevenlabs::FakeElevenLabs) -> ElevenLabsConfig {
    ElevenLabsConfig {
        base_url: fake.base_url(),
        ..ElevenLabsConfig::new(KEY, elevenlabs::VOICE)
    }
}

#[tokio::test]
async fn elevenlabs_streams_ulaw_as_pcm() {
    let fake = elevenlabs::FakeElevenLabs::start(elevenlabs::Options::default()).await;
    let tts = ElevenLabsTts::new(eleven_cfg(&fake));
    assert_eq!(tts.output_rate(), 8000);
    let mut s = within(5, "start", tts.start()).await.unwrap();
    s.push_text("Hello there.").await.unwrap();
    s.push_text("Bye.").await.unwrap();
    s.finish().await.unwrap();
    let (pcm, last) = drain(&mut s).await;
    assert_eq!(last, Some(TtsEvent::Done));
    let per_chunk = 8000 * elevenlabs::CHUNK_MS / 1000;
    assert_eq!(pcm.len(), 2 * elevenlabs::CHUNKS_PER_TEXT * per_chunk);
    let want = tone(per_chunk, 8000);
    assert!(pcm
        .iter()
        .zip(&want)
        .all(|(a, b)| (*a as i32 - *b as i32).abs() < 600));

    let msgs = fake.messages();
    assert_eq!(msgs[0]["text"], " ");
    assert!(msgs[0]["voice_settings"]["stability"].is_number());
    assert_eq!(msgs[1]["text"], "Hello there. ");
    assert_eq!(msgs[1]["try_trigger_generation"], true);
    assert_eq!(msgs[2]["text"], "Bye. ");
    assert_eq!(msgs.last().unwrap(), &json!({"text": ""}));
    let query = fake.log.lock().unwrap().query.clone();
    assert!(query.contains(&("model_id".into(), "eleven_flash_v2_5".into())));
    assert!(query.contains(&("output_format".into(), "ulaw_8000".into())));
    fake.violations.assert_none();
}

#[tokio::test]
async fn elevenlabs_pcm_16000() {
    let fake = elevenlabs::FakeElevenLabs::start(elevenlabs::Options::default()).await;
    let tts = ElevenLabsTts::new(ElevenLabsConfig {
        output_format: ElevenLabsFormat::Pcm16000,
        ..eleven_cfg(&fake)
    });
    assert_eq!(tts.output_rate(), 16000);
    let mut s = tts.start().await.unwrap();
    s.push_text("Hi.").await.unwrap();
    s.finish().await.unwrap();
    let (pcm, last) = drain(&mut s).await;
    assert_eq!(last, Some(TtsEvent::Done));
    let per_chunk = 16000 * elevenlabs::CHUNK_MS / 1000;
    assert_eq!(
        pcm,
        tone(per_chunk, 16000).repeat(elevenlabs::CHUNKS_PER_TEXT)
    );
    fake.violations.assert_none();
}

#[tokio::test]
async fn elevenlabs_cancel_closes_the_socket_and_stops_audio() {
    let fake = elevenlabs::FakeElevenLabs::start(elevenlabs::Options {
        chunk_interval: Duration::from_millis(60),
        ..Default::default()
    })
    .await;
    let tts = ElevenLabsTts::new(eleven_cfg(&fake));
    let mut s = tts.start().await.unwrap();
    s.push_text("A long sentence that gets interrupted.")
        .await
        .unwrap();
    assert!(matches!(
        within(5, "first audio", s.next_event()).await,
        Some(TtsEvent::Audio(_))
    ));
    s.cancel().await;
    assert_eq!(within(1, "after cancel", s.next_event()).await, None);
    within(5, "server sees the close", async {
        while !fake.log.lock().unwrap().closed_early {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn elevenlabs_errors_map_to_classes() {
    for status in [401u16, 429, 500] {
        let fake = elevenlabs::FakeElevenLabs::start(elevenlabs::Options {
            fault: Fault::Status(status),
            ..Default::default()
        })
        .await;
        let tts = ElevenLabsTts::new(eleven_cfg(&fake));
        let e = within(5, "start", tts.start())
            .await
            .err()
            .expect("must fail");
        let ok = match status {
            401 => matches!(e, ProviderError::Auth { status: 401, .. }),
            429 => matches!(e, ProviderError::RateLimited { .. }),
            _ => matches!(e, ProviderError::Server { status: 500, .. }),
        };
        assert!(ok, "HTTP {status} gave {e:?}");
    }
    // In-band: a policy close naming the key.
    let fake = elevenlabs::FakeElevenLabs::start(elevenlabs::Options {
        policy_close: Some("Invalid API key".into()),
        ..Default::default()
    })
    .await;
    let tts = ElevenLabsTts::new(eleven_cfg(&fake));
    let mut s = tts.start().await.unwrap();
    let _ = s.push_text("Hi.").await;
    match drain(&mut s).await.1 {
        Some(TtsEvent::Error(m)) => assert!(m.contains("authentication failed"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn elevenlabs_socket_closed_mid_stream_and_malformed_json_surface() {
    let fake = elevenlabs::FakeElevenLabs::start(elevenlabs::Options {
        fault: Fault::CloseMidStream,
        ..Default::default()
    })
    .await;
    let tts = ElevenLabsTts::new(eleven_cfg(&fake));
    let mut s = tts.start().await.unwrap();
    s.push_text("Hello there.").await.unwrap();
    let (pcm, last) = drain(&mut s).await;
    assert!(!pcm.is_empty());
    match last {
        Some(TtsEvent::Error(m)) => assert!(m.contains("connection"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }

    let fake = elevenlabs::FakeElevenLabs::start(elevenlabs::Options {
        fault: Fault::Malformed,
        ..Default::default()
    })
    .await;
    let tts = ElevenLabsTts::new(eleven_cfg(&fake));
    let mut s = tts.start().await.unwrap();
    s.push_text("Hello there.").await.unwrap();
    match drain(&mut s).await.1 {
        Some(TtsEvent::Error(m)) => assert!(m.contains("malformed"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}
