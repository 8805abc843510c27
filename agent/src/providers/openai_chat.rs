//! Streaming chat completions (`POST {base}/chat/completions`, SSE) for OpenAI and Groq — the
//! same wire with a different base URL, key and model (Groq's extra `x_groq` is ignored).
//!
//! `stream()` returns once the response headers are in (so 401/429/5xx come back as the
//! `Err` of the call itself); a task then parses `data:` events into [`LlmEvent`]s. Tool calls
//! are assembled by `index` across fragments and emitted whole before `Done`. Dropping the
//! receiver cancels the request: the task notices `Sender::closed` at once and drops the
//! response, closing the connection.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::http_util;
use super::{ChatMessage, LlmEvent, LlmProvider, ProviderError, Role, ToolCall, ToolSpec};

#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Shown in errors and logs: `openai`, `groq`.
    pub vendor: &'static str,
    /// Up to and including the version: `https://api.openai.com/v1`, `https://api.groq.com/openai/v1`.
    pub base_url: String,
    pub api_key: super::Secret,
    pub model: String,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub connect_timeout: Duration,
    /// Longest wait for the response headers.
    pub response_timeout: Duration,
    /// Longest silence between two body chunks once streaming.
    pub idle_timeout: Duration,
}

impl ChatConfig {
    pub fn openai(api_key: impl Into<String>, model: impl Into<String>) -> Self {
        ChatConfig {
            vendor: "openai",
            base_url: "https://api.openai.com/v1".into(),
            api_key: super::Secret::new(api_key),
            model: model.into(),
            temperature: None,
            max_tokens: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(20),
        }
    }

    pub fn groq(api_key: impl Into<String>, model: impl Into<String>) -> Self {
        ChatConfig {
            vendor: "groq",
            base_url: "https://api.groq.com/openai/v1".into(),
            ..ChatConfig::openai(api_key, model)
        }
    }
}

/// Chat completions client: `OpenAiChat::new(ChatConfig::openai(key, "gpt-4o-mini"))` or
/// `OpenAiChat::new(ChatConfig::groq(key, "llama-3.3-70b-versatile"))`.
pub struct OpenAiChat {
    cfg: ChatConfig,
    client: reqwest::Client,
}

impl OpenAiChat {
    pub fn new(cfg: ChatConfig) -> Self {
        let client = http_util::http_client(cfg.connect_timeout);
        OpenAiChat { cfg, client }
    }

    /// The JSON request body for these messages and tools.
    pub fn request_body(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Value {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(t) = self.cfg.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.cfg.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if !tools.is_empty() {
            body["tools"] = tools
                .iter()
                .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
                .collect();
            body["tool_choice"] = json!("auto");
        }
        body
    }
}

fn message_json(m: &ChatMessage) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut v = json!({"role": role, "content": m.content});
    if m.role == Role::Assistant && !m.tool_calls.is_empty() {
        if m.content.is_empty() {
            v["content"] = Value::Null;
        }
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

#[async_trait]
impl LlmProvider for OpenAiChat {
    fn name(&self) -> &'static str {
        self.cfg.vendor
    }

    async fn stream(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> Result<mpsc::Receiver<Result<LlmEvent, ProviderError>>, ProviderError> {
        let vendor = self.cfg.vendor;
        let url = http_util::join_url(&self.cfg.base_url, "chat/completions");
        let body = self.request_body(messages, tools);
        let request = self
            .client
            .post(url)
            .bearer_auth(&self.cfg.api_key.expose())
            .header("Accept", "text/event-stream")
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send();
        let response = match tokio::time::timeout(self.cfg.response_timeout, request).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(http_util::reqwest_error(vendor, e)),
            Err(_) => {
                return Err(ProviderError::Connection {
                    vendor,
                    msg: format!("no response within {:?}", self.cfg.response_timeout),
                })
            }
        };
        let status = response.status();
        if !status.is_success() {
            let text = tokio::time::timeout(Duration::from_secs(2), response.text()).await;
            let text = text.ok().and_then(Result::ok).unwrap_or_default();
            return Err(http_util::status_error(vendor, status.as_u16(), &text));
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(pump(vendor, response, tx, self.cfg.idle_timeout));
        Ok(rx)
    }
}

/// Reads the body, parses SSE and forwards events until `[DONE]`, an error or cancellation.
async fn pump(
    vendor: &'static str,
    response: reqwest::Response,
    tx: mpsc::Sender<Result<LlmEvent, ProviderError>>,
    idle: Duration,
) {
    let mut body = response.bytes_stream();
    let mut sse = SseParser::default();
    let mut state = ChatStream::default();
    let mut out = Vec::new();
    loop {
        let chunk = tokio::select! {
            // The receiver went away: drop the response, which closes the connection.
            _ = tx.closed() => return,
            next = tokio::time::timeout(idle, body.next()) => next,
        };
        let bytes = match chunk {
            Ok(Some(Ok(b))) => b,
            Ok(Some(Err(e))) => {
                let _ = tx.send(Err(http_util::reqwest_error(vendor, e))).await;
                return;
            }
            Ok(None) => {
                // Body ended without `[DONE]`.
                let result = state.finish_without_done(vendor);
                for ev in result {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Err(_) => {
                let msg = format!("stream stalled: nothing for {idle:?}");
                let _ = tx
                    .send(Err(ProviderError::Connection { vendor, msg }))
                    .await;
                return;
            }
        };
        for data in sse.push(&bytes) {
            let done = state.on_data(vendor, &data, &mut out);
            for ev in out.drain(..) {
                let is_err = ev.is_err();
                if tx.send(ev).await.is_err() {
                    return;
                }
                if is_err {
                    return;
                }
            }
            if done {
                return;
            }
        }
        if sse.overflowed() {
            let msg = "SSE event larger than 1 MiB".to_string();
            let _ = tx.send(Err(ProviderError::Protocol { vendor, msg })).await;
            return;
        }
    }
}

/// Splits a `text/event-stream` body into the data of each event.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    overflow: bool,
}

const MAX_EVENT: usize = 1 << 20;

impl SseParser {
    /// Feeds bytes; returns the `data` of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.on_line(&line, &mut events);
            } else {
                self.line.push(b);
                if self.line.len() > MAX_EVENT {
                    self.overflow = true;
                    self.line.clear();
                }
            }
        }
        events
    }

    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    fn on_line(&mut self, line: &[u8], events: &mut Vec<String>) {
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(&String::from_utf8_lossy(value));
            self.has_data = true;
            if self.data.len() > MAX_EVENT {
                self.overflow = true;
                self.data.clear();
            }
        }
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    x_groq: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallDelta>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Reply state across chunks: tool-call fragments by index, the finish reason. With
/// [`SseParser`], the sans-IO half of the response reader.
#[derive(Default)]
pub struct ChatStream {
    tools: BTreeMap<u32, ToolCall>,
    finish_reason: Option<String>,
    emitted_tools: bool,
}

impl ChatStream {
    /// Handles one event's data; true when the stream is over.
    pub fn on_data(
        &mut self,
        vendor: &'static str,
        data: &str,
        out: &mut Vec<Result<LlmEvent, ProviderError>>,
    ) -> bool {
        let data = data.trim();
        if data == "[DONE]" {
            self.emit_tools(out);
            let finish_reason = self.finish_reason.take().unwrap_or_else(|| "stop".into());
            out.push(Ok(LlmEvent::Done { finish_reason }));
            return true;
        }
        let chunk: Chunk = match serde_json::from_str(data) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("bad chunk ({e}): {}", http_util::truncate(data));
                out.push(Err(ProviderError::Protocol { vendor, msg }));
                return true;
            }
        };
        let groq_error = chunk
            .x_groq
            .as_ref()
            .and_then(|x| x.get("error"))
            .filter(|e| !e.is_null());
        if let Some(err) = chunk.error.as_ref().or(groq_error) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(http_util::truncate)
                .unwrap_or_else(|| http_util::truncate(&err.to_string()));
            out.push(Err(ProviderError::Other { vendor, msg }));
            return true;
        }
        if let Some(usage) = &chunk.usage {
            tracing::debug!(vendor, %usage, "llm usage");
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                out.push(Ok(LlmEvent::TextDelta(text)));
            }
            for frag in choice.delta.tool_calls {
                let call = self.tools.entry(frag.index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = frag.id.filter(|s| !s.is_empty()) {
                    call.id = id;
                }
                if let Some(f) = frag.function {
                    if let Some(name) = f.name.filter(|s| !s.is_empty()) {
                        call.name = name;
                    }
                    if let Some(args) = f.arguments {
                        call.arguments.push_str(&args);
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                // Tool calls are whole once the choice finishes; usage may still follow.
                self.emit_tools(out);
                self.finish_reason = Some(reason);
            }
        }
        false
    }

    fn emit_tools(&mut self, out: &mut Vec<Result<LlmEvent, ProviderError>>) {
        if self.emitted_tools {
            return;
        }
        self.emitted_tools = true;
        for (_, call) in std::mem::take(&mut self.tools) {
            if call.name.is_empty() {
                continue;
            }
            let arguments = if call.arguments.trim().is_empty() {
                "{}".to_string()
            } else {
                call.arguments
            };
            out.push(Ok(LlmEvent::ToolCall(ToolCall { arguments, ..call })));
        }
    }

    /// The body ended without `[DONE]`: complete if the model had finished, else an error.
    pub fn finish_without_done(
        &mut self,
        vendor: &'static str,
    ) -> Vec<Result<LlmEvent, ProviderError>> {
        let mut out = Vec::new();
        match self.finish_reason.take() {
            Some(finish_reason) => {
                self.emit_tools(&mut out);
                out.push(Ok(LlmEvent::Done { finish_reason }));
            }
            None => out.push(Err(ProviderError::Connection {
                vendor,
                msg: "stream ended before the reply was complete".into(),
            })),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_lines_crlf_and_comments() {
        let mut p = SseParser::default();
        let mut got = p.push(b": keep-alive\r\n\r\ndata: {\"a\"");
        got.extend(p.push(b":1}\r\n\r\nevent: x\ndata: [DO"));
        got.extend(p.push(b"NE]\n\n"));
        assert_eq!(got, vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]);
    }

    #[test]
    fn tool_fragments_assemble_by_index() {
        let mut s = ChatStream::default();
        let mut out = Vec::new();
        for d in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"lookup","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"hangup","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"x\"}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"total_tokens":3}}"#,
            "[DONE]",
        ] {
            s.on_data("t", d, &mut out);
        }
        let out: Vec<LlmEvent> = out.into_iter().map(|e| e.unwrap()).collect();
        assert_eq!(
            out,
            vec![
                LlmEvent::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "lookup".into(),
                    arguments: "{\"q\":\"x\"}".into()
                }),
                LlmEvent::ToolCall(ToolCall {
                    id: "call_2".into(),
                    name: "hangup".into(),
                    arguments: "{}".into()
                }),
                LlmEvent::Done {
                    finish_reason: "tool_calls".into()
                },
            ]
        );
    }
}
