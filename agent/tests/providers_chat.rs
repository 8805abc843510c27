//! Chat completions (OpenAI / Groq) client against the local SSE fake.

mod fakes;

use std::sync::atomic::Ordering;
use std::time::Duration;

use agent::providers::openai_chat::{ChatConfig, OpenAiChat};
use agent::providers::{
    ChatMessage, LlmEvent, LlmProvider, ProviderError, Role, ToolCall, ToolSpec,
};
use fakes::chat::{text_reply, tool_reply, FakeChat, Script};
use fakes::{within, KEY};
use serde_json::json;
use tokio::sync::mpsc::Receiver;


fn openai(fake: &FakeChat) -> OpenAiChat {
    OpenAiChat::new(ChatConfig {
        base_url: fake.base_url(),
        temperature: Some(0.3),
        max_tokens: Some(200),
        ..ChatConfig::openai(KEY, "gpt-4o-mini")
    })
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Weather for a city".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    }
}

async fn collect(
    mut rx: Receiver<Result<LlmEvent, ProviderError>>,
) -> Vec<Result<LlmEvent, ProviderError>> {
    let mut out = Vec::new();
    while let Some(ev) = within(5, "llm event", rx.recv()).await {
        out.push(ev);
    }
    out
}

fn ok_events(evs: Vec<Result<LlmEvent, ProviderError>>) -> Vec<LlmEvent> {
    evs.into_iter()
        .map(|e| e.expect("unexpected error"))
        .collect()
}

#[tokio::test]
async fn chat_streams_text_split_across_chunks() {
    let fake = FakeChat::start(false).await;
    fake.push(Script::Reply(text_reply(&["Hel", "lo the", "re!"])));
    let llm = openai(&fake);
    let rx = within(
        5,
        "request",
        llm.stream(&[ChatMessage::new(Role::System, "be brief"), ChatMessage::new(Role::User, "hi")], &[]),
    )
    .await
    .unwrap();
    let events = ok_events(collect(rx).await);
    assert_eq!(
        events,
        vec![
            LlmEvent::TextDelta("Hel".into()),
            LlmEvent::TextDelta("lo the".into()),
            LlmEvent::TextDelta("re!".into()),
            LlmEvent::Done {
                finish_reason: "stop".into()
            },
        ]
    );
    let req = fake.last_request();
    assert_eq!(req["model"], "gpt-4o-mini");
    assert_eq!(
        req["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(req["max_tokens"], 200);
    assert!(req.get("tools").is_none());
    assert_eq!(
        fake.paths.lock().unwrap().as_slice(),
        ["/v1/chat/completions"]
    );
    fake.violations.assert_none();
}

#[tokio::test]
async fn chat_assembles_tool_call_fragments_and_replays_results() {
    let fake = FakeChat::start(false).await;
    fake.push(Script::Reply(tool_reply(
        "Let me check. ",
        "call_abc",
        "get_weather",
        &["{\"ci", "ty\": \"Par", "is\"}"],
    )));
    fake.push(Script::Reply(text_reply(&["It is sunny."])));
    let llm = openai(&fake);
    let mut history = vec![ChatMessage::new(Role::User, "weather in Paris?")];
    let events = ok_events(collect(llm.stream(&history, &[weather_tool()]).await.unwrap()).await);
    let call = ToolCall {
        id: "call_abc".into(),
        name: "get_weather".into(),
        arguments: "{\"city\": \"Paris\"}".into(),
    };
    assert_eq!(
        events,
        vec![
            LlmEvent::TextDelta("Let me check. ".into()),
            LlmEvent::ToolCall(call.clone()),
            LlmEvent::Done {
                finish_reason: "tool_calls".into()
            },
        ]
    );
    let req = fake.last_request();
    assert_eq!(req["tools"][0]["type"], "function");
    assert_eq!(req["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        req["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    assert_eq!(req["tool_choice"], "auto");

    // Replay: the assistant turn with its tool_calls, then the tool result.
    history.push(ChatMessage {
        role: Role::Assistant,
        content: "Let me check. ".into(),
        tool_calls: vec![call],
        tool_call_id: None,
    });
    history.push(ChatMessage {
        role: Role::Tool,
        content: "{\"sky\":\"sunny\"}".into(),
        tool_calls: vec![],
        tool_call_id: Some("call_abc".into()),
    });
    let events = ok_events(collect(llm.stream(&history, &[weather_tool()]).await.unwrap()).await);
    assert_eq!(
        events.first(),
        Some(&LlmEvent::TextDelta("It is sunny.".into()))
    );
    let req = fake.last_request();
    assert_eq!(
        req["messages"][1],
        json!({"role": "assistant", "content": "Let me check. ", "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]})
    );
    assert_eq!(
        req["messages"][2],
        json!({"role": "tool", "content": "{\"sky\":\"sunny\"}", "tool_call_id": "call_abc"})
    );
    fake.violations.assert_none();
}

#[tokio::test]
async fn groq_same_wire_with_x_groq_tolerated() {
    let fake = FakeChat::start(true).await;
    fake.push(Script::Reply(text_reply(&["Hi", " there"])));
    let llm = OpenAiChat::new(ChatConfig {
        base_url: fake.base_url(),
        ..ChatConfig::groq(KEY, "llama-3.3-70b-versatile")
    });
    assert_eq!(llm.name(), "groq");
    let events = ok_events(collect(llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.unwrap()).await);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        events[2],
        LlmEvent::Done {
            finish_reason: "stop".into()
        }
    );
    assert_eq!(
        fake.paths.lock().unwrap().as_slice(),
        ["/openai/v1/chat/completions"]
    );
    assert_eq!(fake.last_request()["model"], "llama-3.3-70b-versatile");
    fake.violations.assert_none();
}

#[tokio::test]
async fn chat_dropping_the_receiver_cancels_the_request() {
    let fake = FakeChat::start(false).await;
    fake.push(Script::Endless);
    let llm = openai(&fake);
    let mut rx = llm
        .stream(&[ChatMessage::new(Role::User, "talk forever")], &[])
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            within(5, "delta", rx.recv()).await,
            Some(Ok(LlmEvent::TextDelta(_)))
        ));
    }
    drop(rx);
    within(5, "server sees the client go", async {
        while !fake.body_dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn chat_http_errors_map_to_classes() {
    let fake = FakeChat::start(false).await;
    for s in [401u16, 403, 429, 500, 502] {
        fake.push(Script::Status(s));
    }
    let llm = openai(&fake);
    let m = [ChatMessage::new(Role::User, "hi")];
    let e = within(5, "401", llm.stream(&m, &[])).await.err().unwrap();
    assert!(
        matches!(e, ProviderError::Auth { status: 401, .. })
            && e.to_string().contains("fake says 401"),
        "{e}"
    );
    let e = within(5, "403", llm.stream(&m, &[])).await.err().unwrap();
    assert!(matches!(e, ProviderError::Auth { status: 403, .. }), "{e}");
    let e = within(5, "429", llm.stream(&m, &[])).await.err().unwrap();
    assert!(
        matches!(e, ProviderError::RateLimited { .. }) && e.retryable(),
        "{e}"
    );
    let e = within(5, "500", llm.stream(&m, &[])).await.err().unwrap();
    assert!(
        matches!(e, ProviderError::Server { status: 500, .. }) && e.retryable(),
        "{e}"
    );
    let e = within(5, "502", llm.stream(&m, &[])).await.err().unwrap();
    assert!(
        matches!(e, ProviderError::Server { status: 502, .. }),
        "{e}"
    );

    // A wrong key is refused by the fake itself.
    let bad = OpenAiChat::new(ChatConfig {
        base_url: fake.base_url(),
        ..ChatConfig::openai("nope", "gpt-4o-mini")
    });
    let e = within(5, "bad key", bad.stream(&m, &[]))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ProviderError::Auth { .. }), "{e}");
}

#[tokio::test]
async fn chat_connection_refused_is_connection_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let llm = OpenAiChat::new(ChatConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        ..ChatConfig::openai(KEY, "m")
    });
    let e = within(5, "refused", llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ProviderError::Connection { .. }), "{e:?}");
}

#[tokio::test]
async fn chat_stream_cut_mid_reply_is_connection_error() {
    let fake = FakeChat::start(false).await;
    let mut partial = text_reply(&["Hello", " wor"]);
    partial.truncate(3); // role chunk + two deltas, no finish
    fake.push(Script::CloseAfter(partial));
    let llm = openai(&fake);
    let evs = collect(llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.unwrap()).await;
    assert!(matches!(evs[0], Ok(LlmEvent::TextDelta(ref t)) if t == "Hello"));
    assert!(matches!(evs[1], Ok(LlmEvent::TextDelta(ref t)) if t == " wor"));
    match evs.last() {
        Some(Err(e @ ProviderError::Connection { .. })) => assert!(e.retryable()),
        other => panic!("expected a connection error last, got {other:?}"),
    }
}

#[tokio::test]
async fn chat_malformed_chunk_is_protocol_error() {
    let fake = FakeChat::start(false).await;
    fake.push(Script::Malformed(vec![
        json!({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}),
    ]));
    let llm = openai(&fake);
    let evs = collect(llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.unwrap()).await;
    assert!(matches!(evs[0], Ok(LlmEvent::TextDelta(ref t)) if t == "Hi"));
    assert!(
        matches!(evs.last(), Some(Err(ProviderError::Protocol { .. }))),
        "{evs:?}"
    );
}

#[tokio::test]
async fn chat_in_band_error_surfaces() {
    let fake = FakeChat::start(false).await;
    fake.push(Script::Reply(vec![
        json!({"error": {"message": "model overloaded", "type": "server_error"}}),
    ]));
    let llm = openai(&fake);
    let evs = collect(llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.unwrap()).await;
    match evs.last() {
        Some(Err(e)) => assert!(e.to_string().contains("model overloaded"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
}
