//! The offline speech stack: espeak-ng TTS makes real speech, pocketsphinx recognises it.

use std::sync::Arc;

use agent::config::AgentSpec;
use agent::providers::offline_stt::{recognize, OfflineStt, SphinxModel, DEFAULT_MODEL_DIR};
use agent::providers::offline_tts::OfflineTts;
use agent::providers::{SttEvent, SttProvider, TtsEvent, TtsProvider};
use agent::vad::{level_dbfs, VadConfig};

mod common;

fn rms_dbfs(pcm: &[i16]) -> f32 {
    level_dbfs(pcm)
}

#[tokio::test]
async fn offline_tts_makes_speech_of_plausible_duration() {
    let tts = OfflineTts::new("en-us", 165, 16_000);
    assert_eq!(tts.output_rate(), 16_000);
    let text = "Thank you. Where did it happen?";
    let pcm = tts.synthesize(text).await.expect("espeak-ng synthesises");
    let secs = pcm.len() as f32 / 16_000.0;
    // Six words at 165 words per minute plus a sentence pause: about 2 s.
    assert!((1.0..4.0).contains(&secs), "duration {secs:.2} s");
    assert!(
        rms_dbfs(&pcm) > -35.0,
        "speech level {:.1} dBFS",
        rms_dbfs(&pcm)
    );
    // Speech, not a tone or noise: loud and quiet 20 ms frames alternate (syllables, pauses).
    let levels: Vec<f32> = pcm.chunks(320).map(level_dbfs).collect();
    let loud = levels.iter().filter(|&&l| l > -30.0).count();
    let quiet = levels.iter().filter(|&&l| l < -45.0).count();
    assert!(
        loud > levels.len() / 3 && quiet >= 3,
        "loud {loud} quiet {quiet} of {}",
        levels.len()
    );

    // Streaming: audio comes out before the whole text is done, in several chunks, then Done.
    let mut s = tts.start().await.unwrap();
    s.push_text("This is the first sentence.").await.unwrap();
    s.push_text("And here is a second one.").await.unwrap();
    s.finish().await.unwrap();
    let (mut chunks, mut total, mut done) = (0, 0usize, false);
    while let Some(e) = s.next_event().await {
        match e {
            TtsEvent::Audio(a) => {
                chunks += 1;
                total += a.len();
            }
            TtsEvent::Done => {
                done = true;
                break;
            }
            TtsEvent::Error(e) => panic!("{e}"),
        }
    }
    assert!(
        done && chunks >= 4 && total > 16_000,
        "chunks {chunks} samples {total}"
    );

    // Other rates: 24 kHz is 1.5 × the 16 kHz length.
    let pcm24 = OfflineTts::new("en-us", 165, 24_000)
        .synthesize(text)
        .await
        .unwrap();
    let ratio = pcm24.len() as f32 / pcm.len() as f32;
    assert!((1.45..1.55).contains(&ratio), "{ratio}");
}

fn phrase_model(spec: &AgentSpec, dir: &std::path::Path) -> SphinxModel {
    SphinxModel::from_phrases(
        std::path::Path::new(DEFAULT_MODEL_DIR),
        &spec.expected_phrases(),
        &spec.expected_words(),
        dir,
    )
    .unwrap()
}

#[tokio::test]
async fn offline_stt_recognises_espeak_speech() {
    let spec = AgentSpec::load(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = phrase_model(&spec, dir.path());
    assert!(model.vocabulary.contains("john") && model.vocabulary.contains("warehouse"));
    // The caller's voice: espeak-ng's en-us with the m3 variant (a different voice from the agent's).
    let tts = OfflineTts::new("en-us+m3", 140, 16_000);
    for (said, want) in [
        ("my name is john", &["my", "name", "is", "john"][..]),
        (
            "it happened in the warehouse",
            &["happened", "warehouse"][..],
        ),
        ("there was a fire", &["fire"][..]),
    ] {
        let mut pcm = vec![0i16; 4800];
        pcm.extend(tts.synthesize(said).await.unwrap());
        pcm.extend(vec![0i16; 4800]);
        let heard = recognize(&model, &pcm).unwrap();
        for w in want {
            assert!(
                heard.split_whitespace().any(|h| h == *w),
                "said {said:?}, recognised {heard:?}, missing {w:?}"
            );
        }
    }
}

#[tokio::test]
async fn offline_stt_streams_with_endpointing() {
    let spec = Arc::new(AgentSpec::load(None).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let stt = OfflineStt::new(
        phrase_model(&spec, dir.path()),
        VadConfig::from_turn(&spec.turn),
    );
    assert_eq!(stt.input_rate(), 16_000);
    let mut s = stt.start().await.unwrap();
    let speech = OfflineTts::new("en-us+m3", 140, 16_000)
        .synthesize("it happened in the warehouse")
        .await
        .unwrap();
    // 0.5 s quiet, the phrase, 1 s quiet — in 20 ms frames as the session sends them.
    let mut pcm = vec![0i16; 8000];
    pcm.extend(speech);
    pcm.extend(vec![0i16; 16000]);
    for f in pcm.chunks(320) {
        s.send_audio(f).await.unwrap();
        tokio::task::yield_now().await;
    }
    let events = common::events_until_turn(&mut s, std::time::Duration::from_secs(20)).await;
    assert!(
        matches!(events.last(), Some(SttEvent::EndOfTurn { .. })),
        "no end of turn; events {events:?}"
    );
    assert_eq!(events.first(), Some(&SttEvent::SpeechStarted), "{events:?}");
    let Some(SttEvent::EndOfTurn { text }) = events.last() else {
        panic!("{events:?}")
    };
    assert!(text.contains("warehouse"), "{text:?}");
    s.close().await;
}
