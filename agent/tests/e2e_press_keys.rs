//! `press_keys` end to end: a language model (the fake speaks OpenAI's wire format) asks to
//! press keys after the caller's turn; the agent publishes them into the room as LiveKit
//! `SipDTMF` packets (as the SDKs' `publish_dtmf`), in order, from its agent-kind identity — what
//! the bridge turns into tones (bridge/tests/outbound.rs checks the tones reach the callee).
//! A request for something that is no key presses nothing.

mod common;
mod fakes;

use std::time::{Duration, Instant};

use common::{test_call, Kill, Obs};
use fakes::chat::{text_reply, tool_reply, FakeChat, Script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_presses_keys_into_the_room() {
    let fake = FakeChat::start(false).await;
    fake.push(Script::Reply(tool_reply("", "call_1", "press_keys", &[r#"{"keys":"#, r#""1 2 #"}"#])));
    fake.push(Script::Reply(tool_reply("", "call_2", "press_keys", &[r#"{"keys":"+1900"}"#])));
    fake.push(Script::Reply(text_reply(&["Done."])));
    for _ in 0..4 {
        fake.push(Script::Reply(text_reply(&["Okay."])));
    }
    let call = test_call("CAkeys00000000000000000000000000001").await;
    let agent_file = call.dir.path().join("ivr.toml");
    let toml = agent::config::DEFAULT_AGENT_TOML.replace("preemptive_reply = true", "preemptive_reply = false");
    std::fs::write(&agent_file, format!("{toml}\n[outbound]\npress_keys = true\n")).unwrap();
    let log = call.dir.path().join("agent.log");
    let _proc = Kill(
        call.agent()
            .env("AGENT_LLM", "openai")
            .env("AGENT_CONFIG", &agent_file)
            .env("OPENAI_API_KEY", fakes::KEY)
            .env("OPENAI_BASE_URL", fake.base_url())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let common::TestCall { phone: _phone, mut obs, mic, devroom: _devroom, dir: _dir, room_name, .. } = call;
    // The greeting, then the caller's line.
    let mut loud = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while loud.last().is_none_or(|t: &Instant| t.elapsed() < Duration::from_millis(1200)) || loud.len() < 50 {
        assert!(Instant::now() < deadline, "no greeting\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        if let Ok(Some(Obs::Frame(t, l))) = tokio::time::timeout(Duration::from_millis(100), obs.recv()).await {
            if l > -40.0 {
                loud.push(t);
            }
        }
    }
    let line = agent::providers::offline_tts::OfflineTts::new("en-us+m3", 140, 16_000).synthesize("for sales press one").await.unwrap();
    mic.send(line).await.unwrap();
    let mut keys = Vec::new();
    let said = Instant::now();
    // Wait for the third request (after both tool calls), then a little for stray packets.
    let mut settled: Option<Instant> = None;
    while settled.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        assert!(said.elapsed() < Duration::from_secs(30), "keys {keys:?}; requests {}\n{}", fake.requests.lock().unwrap().len(), std::fs::read_to_string(&log).unwrap_or_default());
        if settled.is_none() && fake.requests.lock().unwrap().len() >= 3 {
            settled = Some(Instant::now());
        }
        if let Ok(Some(Obs::Dtmf(from, code, digit))) = tokio::time::timeout(Duration::from_millis(100), obs.recv()).await {
            keys.push((from, code, digit));
        }
    }
    let who = format!("agent-{room_name}");
    assert_eq!(keys, [(who.clone(), 1, "1".to_string()), (who.clone(), 2, "2".to_string()), (who, 11, "#".to_string())]);
    // The model was told what happened each time.
    let third = fake.requests.lock().unwrap()[2].clone();
    let tools: Vec<String> = third["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "tool").map(|m| m["content"].as_str().unwrap().to_string()).collect();
    assert_eq!(tools.len(), 2, "{third}");
    assert_eq!(tools[0], "ok: pressed 3 keys");
    assert!(tools[1].starts_with("error:"), "{tools:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("pressing keys"), "{log}");
    fake.violations.assert_none();
}
