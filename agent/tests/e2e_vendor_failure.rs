//! Cascaded mode with a language model that refuses the agent (HTTP 401, the fake speaks
//! OpenAI's wire format): after the caller's first turn the caller hears an apology and the
//! call is hung up — never dead air. The agent's log, with the API key set to a marker, never
//! shows the key or the caller's number.

mod common;
mod fakes;

use std::time::{Duration, Instant};

use common::{test_call, Kill, Obs};
use fakes::chat::{FakeChat, Script};
use proto::control::Control;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_llm_ends_in_an_apology_and_a_hangup() {
    let fake = FakeChat::start(false).await;
    // A refused key stays refused (the preemptive request on the early transcript gets one too).
    for _ in 0..4 {
        fake.push(Script::Status(401));
    }
    let call = test_call("CAvendor0000000000000000000000000001").await;
    let log = call.dir.path().join("agent.log");
    let mut proc = Kill(
        call.agent()
            .env("AGENT_LLM", "openai")
            .env("OPENAI_API_KEY", fakes::KEY)
            .env("OPENAI_BASE_URL", fake.base_url())
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let common::TestCall { phone: _phone, mut obs, mic, db, room_name, devroom: _devroom, dir: _dir, .. } = call;
    // The greeting, then the caller's line.
    let mut loud = Vec::new();
    let mut controls = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while loud.last().is_none_or(|t: &Instant| t.elapsed() < Duration::from_millis(1200)) || loud.len() < 50 {
        assert!(Instant::now() < deadline, "no greeting");
        match tokio::time::timeout(Duration::from_millis(100), obs.recv()).await {
            Ok(Some(Obs::Frame(t, l))) if l > -40.0 => loud.push(t),
            Ok(Some(Obs::Control(c))) => controls.push(c),
            _ => {}
        }
    }
    let line = agent::providers::offline_tts::OfflineTts::new("en-us+m3", 140, 16_000).synthesize("my name is john").await.unwrap();
    let line_ms = line.len() as u64 / 16;
    mic.send(line).await.unwrap();
    let said_at = Instant::now();
    let mut apology = 0;
    let hangup_at = loop {
        assert!(said_at.elapsed() < Duration::from_secs(30), "no hangup; controls {controls:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        match tokio::time::timeout(Duration::from_millis(100), obs.recv()).await {
            Ok(Some(Obs::Frame(t, l))) if l > -40.0 && t > said_at + Duration::from_millis(line_ms) => apology += 1,
            Ok(Some(Obs::Control(c))) => {
                let h = matches!(c, Control::Hangup { .. });
                controls.push(c);
                if h {
                    break Instant::now();
                }
            }
            _ => {}
        }
    };
    assert!(apology * 20 >= 2000, "only {} ms of apology before the hangup", apology * 20);
    assert!(hangup_at - said_at < Duration::from_secs(20));
    let t0 = Instant::now();
    while proc.0.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(15), "agent did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = agent::record::load_call(&db, &room_name).unwrap().unwrap();
    let outcome = rec.outcome.unwrap_or_default();
    assert!(outcome.starts_with("error: llm:") && outcome.contains("401"), "{outcome}");
    let last = rec.turns.iter().rfind(|t| t.role == "assistant").unwrap();
    assert!(last.text.contains("technical difficulties"), "{last:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains(fakes::KEY), "the API key is in the log");
    assert!(!log.contains("+15551230001") && log.contains("+1555***0001"), "the caller's number is not masked");
}
