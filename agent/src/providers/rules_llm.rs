//! The offline "LLM": the rule-based dialog of [`crate::dialog`] behind [`LlmProvider`], so the
//! conversation loop handles it exactly like a cloud model. It reads the conversation (fields
//! recorded by earlier `record_field` calls, the question asked last), answers the last user
//! message with `record_field` / `end_call` / `transfer` tool calls and streamed text.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{ChatMessage, LlmEvent, LlmProvider, ProviderError, Role, ToolCall, ToolSpec};
use crate::config::AgentSpec;
use crate::dialog;

pub struct RulesLlm {
    spec: Arc<AgentSpec>,
}

impl RulesLlm {
    pub fn new(spec: Arc<AgentSpec>) -> RulesLlm {
        RulesLlm { spec }
    }

    /// The events one reply is made of (used by `stream`, and directly by tests).
    pub fn reply_events(&self, messages: &[ChatMessage]) -> Vec<LlmEvent> {
        let state = dialog::state_from_history(&self.spec, messages);
        // The caller's words: the last user message (tool results after it are ours).
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or("");
        // After our own tool round trip (a tool result is the last message) there is nothing
        // more to say: the text went out with the calls.
        if messages.last().is_some_and(|m| m.role == Role::Tool) {
            return vec![LlmEvent::Done {
                finish_reason: "stop".into(),
            }];
        }
        let reply = dialog::respond(&self.spec, &state, last_user);
        let mut out = Vec::new();
        let mut n = 0;
        let mut call = |name: &str, args: serde_json::Value| {
            n += 1;
            LlmEvent::ToolCall(ToolCall {
                id: format!("rules_{n}"),
                name: name.into(),
                arguments: args.to_string(),
            })
        };
        for (field, value) in &reply.record {
            out.push(call(
                "record_field",
                serde_json::json!({"field": field, "value": value}),
            ));
        }
        // Stream the text a few words at a time, like a model would.
        let mut chunk = String::new();
        for (i, w) in reply.say.split_inclusive(' ').enumerate() {
            chunk.push_str(w);
            if i % 3 == 2 {
                out.push(LlmEvent::TextDelta(std::mem::take(&mut chunk)));
            }
        }
        if !chunk.is_empty() {
            out.push(LlmEvent::TextDelta(chunk));
        }
        if let Some(to) = &reply.transfer {
            // The single configured number needs no argument; named ones are chosen by name.
            let args = if self.spec.transfers.is_empty() { serde_json::json!({}) } else { serde_json::json!({"destination": to}) };
            out.push(call("transfer", args));
        }
        if let Some(msg) = &reply.end_call {
            out.push(call("end_call", serde_json::json!({"message": msg})));
        }
        out.push(LlmEvent::Done {
            finish_reason: "stop".into(),
        });
        out
    }
}

#[async_trait]
impl LlmProvider for RulesLlm {
    fn name(&self) -> &'static str {
        "rules"
    }

    async fn stream(
        &self,
        messages: &[ChatMessage],
        _tools: &[ToolSpec],
    ) -> Result<mpsc::Receiver<Result<LlmEvent, ProviderError>>, ProviderError> {
        let events = self.reply_events(messages);
        let (tx, rx) = mpsc::channel(events.len().max(1));
        for e in events {
            // The channel holds them all; the receiver may already be gone (cancelled).
            let _ = tx.try_send(Ok(e));
        }
        Ok(rx)
    }
}
