//! The local llama.cpp provider against the real SmolLM2 model (`scripts/models.sh llama`).
//! Without the model file each test prints a skip line and passes, unless
//! `AGENT_REQUIRE_MODELS=1`, which makes a missing model a failure.
#![cfg(feature = "llama")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent::providers::llama_llm::LlamaLlm;
use agent::providers::{ChatMessage, LlmEvent, LlmProvider, Role};

fn model_path() -> PathBuf {
    match std::env::var("LLAMA_MODEL") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        // Tests run in agent/; the model lives under the workspace's models/.
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

/// The provider with `max_tokens`, or None (after a skip message) when the model is absent.
fn llm(max_tokens: u32) -> Option<LlamaLlm> {
    let path = model_path();
    if !path.is_file() {
        if std::env::var("AGENT_REQUIRE_MODELS").as_deref() == Ok("1") {
            panic!(
                "AGENT_REQUIRE_MODELS=1 but {} is missing (run scripts/models.sh llama)",
                path.display()
            );
        }
        eprintln!(
            "SKIP: {} not found (run scripts/models.sh llama)",
            path.display()
        );
        return None;
    }
    let started = Instant::now();
    let llm = LlamaLlm::from_env(|k| match k {
        "LLAMA_MODEL" => Some(path.display().to_string()),
        "LLAMA_MAX_TOKENS" => Some(max_tokens.to_string()),
        _ => std::env::var(k).ok(),
    })
    .expect("load the model");
    eprintln!(
        "model ready in {:?} (first load in this process includes reading the file)",
        started.elapsed()
    );
    Some(llm)
}


fn ask(question: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(
            Role::System,
            "You are a friendly phone assistant. Answer in one or two short sentences.",
        ),
        ChatMessage::new(Role::User, question),
    ]
}

struct Reply {
    deltas: Vec<String>,
    tool_calls: usize,
    finish_reason: String,
    first_delta: Duration,
    total: Duration,
}

impl Reply {
    fn text(&self) -> String {
        self.deltas.concat()
    }
}

async fn collect(llm: &LlamaLlm, messages: &[ChatMessage]) -> Reply {
    let started = Instant::now();
    let mut rx = llm.stream(messages, &[]).await.expect("stream");
    let mut reply = Reply {
        deltas: vec![],
        tool_calls: 0,
        finish_reason: String::new(),
        first_delta: Duration::ZERO,
        total: Duration::ZERO,
    };
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("event within 120 s")
    {
        match ev.expect("no error events") {
            LlmEvent::TextDelta(t) => {
                if reply.deltas.is_empty() {
                    reply.first_delta = started.elapsed();
                }
                reply.deltas.push(t);
            }
            LlmEvent::ToolCall(_) => reply.tool_calls += 1,
            LlmEvent::Done { finish_reason } => {
                reply.finish_reason = finish_reason;
                reply.total = started.elapsed();
                assert!(rx.recv().await.is_none(), "nothing after Done");
                return reply;
            }
        }
    }
    panic!("stream ended without Done");
}

fn rate(r: &Reply) -> f64 {
    let gen = (r.total - r.first_delta).as_secs_f64();
    if gen > 0.0 {
        (r.deltas.len().saturating_sub(1)) as f64 / gen
    } else {
        0.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_streams_several_deltas_then_done_and_greedy_is_deterministic() {
    let Some(llm) = llm(48) else { return };
    let messages = ask("What is the capital of France?");
    let a = collect(&llm, &messages).await;
    eprintln!(
        "reply {:?}: {} deltas, first after {:?}, {:.1} tokens/s, done ({}) after {:?}",
        a.text(),
        a.deltas.len(),
        a.first_delta,
        rate(&a),
        a.finish_reason,
        a.total
    );
    assert!(a.deltas.len() >= 3, "streamed in pieces: {:?}", a.deltas);
    assert!(!a.text().trim().is_empty());
    assert!(
        a.finish_reason == "stop" || a.finish_reason == "length",
        "{}",
        a.finish_reason
    );
    assert_eq!(a.tool_calls, 0);
    let b = collect(&llm, &messages).await;
    assert_eq!(
        a.text(),
        b.text(),
        "greedy sampling gives the same reply twice"
    );
    assert_eq!(a.finish_reason, b.finish_reason);
    assert_eq!(llm.running(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_limit_finishes_with_length() {
    let Some(llm) = llm(5) else { return };
    let r = collect(
        &llm,
        &ask("Tell me a long story about a dragon who learns to bake bread."),
    )
    .await;
    eprintln!("5-token reply {:?} ({})", r.text(), r.finish_reason);
    assert_eq!(r.finish_reason, "length");
    assert!(
        !r.deltas.is_empty() && r.deltas.len() <= 5,
        "{:?}",
        r.deltas
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_stops_generation() {
    let Some(llm) = llm(200) else { return };
    let story = ask("Tell me a long story about a dragon who learns to bake bread. Make it at least ten paragraphs.");
    // The same request left to run: long enough that an ignored cancel would show.
    let full = collect(&llm, &story).await;
    eprintln!(
        "full story: {} deltas in {:?} ({:.1} tokens/s, first after {:?})",
        full.deltas.len(),
        full.total,
        rate(&full),
        full.first_delta
    );
    assert!(
        full.deltas.len() >= 100,
        "the test needs a long reply, got {} deltas",
        full.deltas.len()
    );
    let left_after_first = full.total - full.first_delta;

    let mut rx = llm.stream(&story, &[]).await.expect("stream");
    match rx.recv().await {
        Some(Ok(LlmEvent::TextDelta(_))) => {}
        other => panic!("expected a first delta, got {other:?}"),
    }
    assert_eq!(llm.running(), 1);
    let dropped = Instant::now();
    drop(rx);
    while llm.running() > 0 {
        assert!(
            dropped.elapsed() < left_after_first / 4,
            "generation still running {:?} after the receiver was dropped (the whole reply takes {:?})",
            dropped.elapsed(),
            left_after_first
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "generation stopped {:?} after the receiver was dropped",
        dropped.elapsed()
    );

    // The provider is free for the next request at once.
    let next = collect(&llm, &ask("Say hello.")).await;
    assert!(!next.deltas.is_empty());
}
