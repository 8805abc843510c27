//! The offline dialog (rules "LLM") fills the incident form from caller transcripts, through the
//! same tool-calling interface a cloud model uses, and ends the call with the closing line.

use std::sync::Arc;

use agent::config::AgentSpec;
use agent::providers::rules_llm::RulesLlm;
use agent::providers::{ChatMessage, LlmEvent, LlmProvider, Role, ToolCall};

fn m(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.into(),
        tool_calls: vec![],
        tool_call_id: None,
    }
}

/// One turn through the LlmProvider interface, folded into the history the way the session does.
async fn turn(
    llm: &RulesLlm,
    history: &mut Vec<ChatMessage>,
    user: &str,
) -> (String, Vec<ToolCall>) {
    history.push(m(Role::User, user));
    let mut rx = llm.stream(history, &[]).await.unwrap();
    let (mut text, mut calls, mut done) = (String::new(), Vec::new(), false);
    while let Some(ev) = rx.recv().await {
        match ev.unwrap() {
            LlmEvent::TextDelta(d) => text.push_str(&d),
            LlmEvent::ToolCall(c) => calls.push(c),
            LlmEvent::Done { finish_reason } => {
                assert_eq!(finish_reason, "stop");
                done = true;
            }
        }
    }
    assert!(done, "stream must end with Done");
    let mut a = m(Role::Assistant, text.trim());
    a.tool_calls = calls.clone();
    history.push(a);
    for c in &calls {
        history.push(ChatMessage {
            role: Role::Tool,
            content: "ok".into(),
            tool_calls: vec![],
            tool_call_id: Some(c.id.clone()),
        });
    }
    (text.trim().to_string(), calls)
}

fn recorded(calls: &[ToolCall]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter(|c| c.name == "record_field")
        .map(|c| {
            let v: serde_json::Value = serde_json::from_str(&c.arguments).unwrap();
            (
                v["field"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn rules_dialog_fills_the_incident_form_and_ends_the_call() {
    let spec = Arc::new(AgentSpec::load(None).unwrap());
    let llm = RulesLlm::new(spec.clone());
    let mut h = vec![
        m(Role::System, "persona"),
        m(Role::Assistant, &spec.greeting),
    ];

    let (say, calls) = turn(&llm, &mut h, "my name is john smith").await;
    assert_eq!(
        recorded(&calls),
        [("name".to_string(), "John Smith".to_string())]
    );
    assert!(
        say.contains("John Smith") && say.ends_with("Where did it happen?"),
        "{say}"
    );

    // Not understood: the agent asks again (no field recorded).
    let (say, calls) = turn(&llm, &mut h, "").await;
    assert!(calls.is_empty());
    assert!(
        say.starts_with("Sorry") && say.ends_with("Where did it happen?"),
        "{say}"
    );

    let (say, calls) = turn(&llm, &mut h, "it happened at the main office").await;
    assert_eq!(
        recorded(&calls),
        [("location".to_string(), "the main office".to_string())]
    );
    assert!(say.ends_with("What happened?"), "{say}");

    // Two fields in one answer: the description, and the severity said with a cue word.
    let (say, calls) = turn(
        &llm,
        &mut h,
        "there was a fire in the kitchen and the severity is high",
    )
    .await;
    let r = recorded(&calls);
    assert_eq!(r[0].0, "what_happened");
    assert!(r[0].1.starts_with("a fire in the kitchen"), "{r:?}");
    assert_eq!(r[1], ("severity".to_string(), "high".to_string()));
    // Form complete: end_call with the closing line.
    let end: Vec<_> = calls.iter().filter(|c| c.name == "end_call").collect();
    assert_eq!(end.len(), 1, "{calls:?}");
    let args: serde_json::Value = serde_json::from_str(&end[0].arguments).unwrap();
    assert_eq!(args["message"], spec.closing.as_str());
    let _ = say;
}

#[tokio::test]
async fn rules_dialog_asks_in_order_and_handles_intents() {
    let spec = Arc::new(AgentSpec::load(None).unwrap());
    let llm = RulesLlm::new(spec.clone());
    let mut h = vec![m(Role::System, "p"), m(Role::Assistant, &spec.greeting)];
    let (_, calls) = turn(&llm, &mut h, "uh mary").await;
    assert_eq!(recorded(&calls), [("name".to_string(), "Mary".to_string())]);
    let (_, calls) = turn(&llm, &mut h, "in the warehouse").await;
    assert_eq!(
        recorded(&calls),
        [("location".to_string(), "warehouse".to_string())]
    );
    let (say, calls) = turn(&llm, &mut h, "can you repeat that").await;
    assert!(calls.is_empty());
    assert_eq!(say, "What happened?");
    let (_, calls) = turn(&llm, &mut h, "a pipe burst").await;
    assert_eq!(
        recorded(&calls),
        [("what_happened".to_string(), "a pipe burst".to_string())]
    );
    let (say, calls) = turn(&llm, &mut h, "it's not serious").await;
    assert_eq!(
        recorded(&calls),
        [("severity".to_string(), "low".to_string())]
    );
    assert!(calls.iter().any(|c| c.name == "end_call"));
    let _ = say;

    // A caller who wants a person is transferred.
    let mut h2 = vec![m(Role::Assistant, &spec.greeting)];
    let (say, calls) = turn(&llm, &mut h2, "i want to talk to a person please operator").await;
    assert_eq!(say, "", "the conversation says the transfer line");
    let t: Vec<_> = calls.iter().filter(|c| c.name == "transfer").collect();
    assert_eq!(t.len(), 1);
    // The single configured number: no argument, and never a number from the dialog.
    assert_eq!(t[0].arguments, "{}");
}
