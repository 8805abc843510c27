//! Piper voice (feature `piper`): real speech from the ONNX model, streamed clause by clause,
//! understood by the offline recogniser, and stopped at once on cancel.
//! Needs `scripts/models.sh piper`; skips without the models unless AGENT_REQUIRE_MODELS=1.
#![cfg(feature = "piper")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent::config::AgentSpec;
use agent::providers::offline_stt::{recognize, SphinxModel, DEFAULT_MODEL_DIR};
use agent::providers::piper_tts::PiperTts;
use agent::providers::{TtsEvent, TtsProvider};
use agent::vad::level_dbfs;

/// The env var, or where scripts/models.sh puts the file in this checkout.
fn model_path(var: &str, default: &str) -> PathBuf {
    std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(default))
}

fn voice() -> Option<PiperTts> {
    let model = model_path("PIPER_MODEL", agent::providers::piper_tts::DEFAULT_MODEL);
    let dylib = model_path("ORT_DYLIB_PATH", agent::providers::piper_tts::DEFAULT_ORT_DYLIB);
    if !model.exists() || !dylib.exists() {
        assert!(
            std::env::var("AGENT_REQUIRE_MODELS").as_deref() != Ok("1"),
            "AGENT_REQUIRE_MODELS=1 but {} or {} is missing (scripts/models.sh piper)",
            model.display(),
            dylib.display()
        );
        eprintln!("skipped: no Piper model (run scripts/models.sh piper)");
        return None;
    }
    let get = move |k: &str| match k {
        "PIPER_MODEL" => Some(model.display().to_string()),
        "ORT_DYLIB_PATH" => Some(dylib.display().to_string()),
        _ => None,
    };
    Some(PiperTts::from_env(get, 16_000).expect("the voice loads"))
}

/// Speaks `sentences` through one stream; the audio chunks and when the first arrived.
async fn speak(tts: &PiperTts, sentences: &[&str]) -> (Vec<Vec<i16>>, Duration) {
    let t0 = Instant::now();
    let mut s = tts.start().await.unwrap();
    for text in sentences {
        s.push_text(text).await.unwrap();
    }
    s.finish().await.unwrap();
    let (mut chunks, mut first) = (Vec::new(), None);
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), s.next_event())
        .await
        .expect("piper answers")
    {
        match e {
            TtsEvent::Audio(a) => {
                first.get_or_insert_with(|| t0.elapsed());
                chunks.push(a);
            }
            TtsEvent::Done => break,
            TtsEvent::Error(e) => panic!("{e}"),
        }
    }
    (chunks, first.expect("some audio"))
}

#[tokio::test]
async fn piper_speaks_words_the_recogniser_understands() {
    let Some(tts) = voice() else { return };
    assert_eq!(tts.output_rate(), 16_000);
    let t0 = Instant::now();
    let (chunks, first) =
        speak(&tts, &["There was a fire,", "in the warehouse.", "It is critical."]).await;
    let took = t0.elapsed();
    let pcm: Vec<i16> = chunks.concat();
    let secs = pcm.len() as f32 / 16_000.0;
    eprintln!(
        "piper: {secs:.2} s of speech in {:.0} ms (RTF {:.3}), first audio after {:.0} ms, {} chunks",
        took.as_secs_f64() * 1e3,
        took.as_secs_f32() / secs,
        first.as_secs_f64() * 1e3,
        chunks.len()
    );
    // Ten words with two pauses: a few seconds, not a click and not a minute.
    assert!((1.5..8.0).contains(&secs), "duration {secs:.2} s");
    // One chunk per clause at least: the first is out before the last clause is made.
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let level = level_dbfs(&pcm);
    assert!(level > -35.0, "speech level {level:.1} dBFS");
    // Speech has syllables and pauses: loud and quiet 20 ms frames both occur.
    let levels: Vec<f32> = pcm.chunks(320).map(level_dbfs).collect();
    let loud = levels.iter().filter(|&&l| l > -30.0).count();
    let quiet = levels.iter().filter(|&&l| l < -45.0).count();
    assert!(loud > levels.len() / 4 && quiet >= 2, "loud {loud} quiet {quiet} of {}", levels.len());

    // The words are intelligible: the offline recogniser (phrase model of the default agent)
    // hears them.
    let spec = AgentSpec::load(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = SphinxModel::from_phrases(
        std::path::Path::new(DEFAULT_MODEL_DIR),
        &spec.expected_phrases(),
        &spec.expected_words(),
        dir.path(),
    )
    .unwrap();
    let mut padded = vec![0i16; 4800];
    padded.extend(&pcm);
    padded.extend(vec![0i16; 4800]);
    let heard = recognize(&model, &padded).unwrap();
    for w in ["fire", "warehouse", "critical"] {
        assert!(heard.split_whitespace().any(|h| h == w), "recognised {heard:?}, missing {w:?}");
    }
}

#[tokio::test]
async fn cancel_stops_the_voice_at_once() {
    let Some(tts) = voice() else { return };
    let mut s = tts.start().await.unwrap();
    for _ in 0..6 {
        s.push_text("This is a long sentence, with several clauses, that goes on and on.")
            .await
            .unwrap();
    }
    s.finish().await.unwrap();
    // Wait for the first audio, then cancel: no more audio, the stream ends.
    loop {
        match tokio::time::timeout(Duration::from_secs(60), s.next_event()).await.unwrap() {
            Some(TtsEvent::Audio(_)) => break,
            other => panic!("expected audio first, got {other:?}"),
        }
    }
    s.cancel().await;
    let mut after = 0usize;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(5), s.next_event())
        .await
        .expect("the stream ends after cancel")
    {
        if let TtsEvent::Audio(a) = e {
            after += a.len();
        }
    }
    assert_eq!(after, 0, "audio after cancel");
    // The voice still serves the next stream.
    let (chunks, _) = speak(&tts, &["Thank you."]).await;
    assert!(chunks.concat().len() > 4_000);
}
