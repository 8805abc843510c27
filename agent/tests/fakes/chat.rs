//! Fake chat completions server (OpenAI and Groq paths): checks the request and streams a
//! scripted SSE reply (`data: {chunk}\n\n` … `data: [DONE]\n\n`), or fails as scripted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::{error_body, Violations, KEY};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Script {
    /// Stream these `data:` payloads, then `[DONE]`.
    Reply(Vec<Value>),
    /// Refuse with this status and an error body.
    Status(u16),
    /// Stream these payloads, then a line that is not JSON.
    Malformed(Vec<Value>),
    /// Stream these payloads, then cut the connection.
    CloseAfter(Vec<Value>),
    /// A chunk every 20 ms for a long time (cancellation tests).
    Endless,
}

#[derive(Clone)]
pub struct FakeChat {
    pub addr: SocketAddr,
    scripts: Arc<Mutex<VecDeque<Script>>>,
    /// Each request's JSON body.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// Request paths, in order.
    pub paths: Arc<Mutex<Vec<String>>>,
    /// Set when a streaming body was dropped before it finished (the client went away).
    pub body_dropped: Arc<AtomicBool>,
    pub violations: Violations,
    /// Put `x_groq` in the first and last chunks, as Groq does.
    pub groq: bool,
}

struct DropFlag(Arc<AtomicBool>, bool);

impl DropFlag {
    fn disarm(&mut self) {
        self.1 = true;
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl FakeChat {
    pub async fn start(groq: bool) -> FakeChat {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeChat {
            addr: listener.local_addr().unwrap(),
            scripts: Arc::default(),
            requests: Arc::default(),
            paths: Arc::default(),
            body_dropped: Arc::default(),
            violations: Violations::default(),
            groq,
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/openai/v1/chat/completions", post(handle))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    /// `http://addr/v1` (OpenAI layout) or `http://addr/openai/v1` (Groq layout).
    pub fn base_url(&self) -> String {
        if self.groq {
            format!("http://{}/openai/v1", self.addr)
        } else {
            format!("http://{}/v1", self.addr)
        }
    }

    pub fn push(&self, s: Script) {
        self.scripts.lock().unwrap().push_back(s);
    }

    pub fn last_request(&self) -> Value {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "fake-model",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]
    })
}

/// A text reply split across chunks, then finish_reason stop and a usage chunk.
pub fn text_reply(pieces: &[&str]) -> Vec<Value> {
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    out.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)));
    out.push(chunk(json!({}), Some("stop")));
    out.push(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}));
    out
}

/// Some text, then a tool call whose name comes first and whose arguments are cut in pieces.
pub fn tool_reply(text: &str, call_id: &str, name: &str, arg_pieces: &[&str]) -> Vec<Value> {
    let mut out = vec![chunk(json!({"role": "assistant", "content": text}), None)];
    out.push(chunk(
        json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        None,
    ));
    for p in arg_pieces {
        out.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
            None,
        ));
    }
    out.push(chunk(json!({}), Some("tool_calls")));
    out.push(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 20}}));
    out
}

async fn handle(
    State(fake): State<FakeChat>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.paths.lock().unwrap().push(uri.path().to_string());
    let v = &fake.violations;
    if headers.get("authorization").and_then(|h| h.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        v.add(format!("authorization {:?}", headers.get("authorization")));
        return status_response(401);
    }
    if !headers
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .starts_with("application/json")
    {
        v.add("content-type is not application/json");
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            v.add(format!("request body is not JSON: {e}"));
            return status_response(400);
        }
    };
    if req["stream"] != json!(true) {
        v.add("stream is not true");
    }
    if req["stream_options"]["include_usage"] != json!(true) {
        v.add("stream_options.include_usage is not true");
    }
    if !req["model"].is_string() {
        v.add("no model");
    }
    for m in req["messages"].as_array().cloned().unwrap_or_default() {
        match m["role"].as_str() {
            Some("system" | "user") => {}
            Some("assistant") => {
                if let Some(calls) = m.get("tool_calls") {
                    for c in calls.as_array().cloned().unwrap_or_default() {
                        if !c["id"].is_string()
                            || c["type"] != "function"
                            || !c["function"]["name"].is_string()
                            || !c["function"]["arguments"].is_string()
                        {
                            v.add(format!("bad assistant tool_call {c}"));
                        }
                    }
                }
            }
            Some("tool") => {
                if !m["tool_call_id"].is_string() {
                    v.add("tool message without tool_call_id");
                }
            }
            other => v.add(format!("bad role {other:?}")),
        }
    }
    if let Some(tools) = req.get("tools") {
        for t in tools.as_array().cloned().unwrap_or_default() {
            if t["type"] != "function"
                || !t["function"]["name"].is_string()
                || !t["function"]["parameters"].is_object()
            {
                v.add(format!("bad tool {t}"));
            }
        }
    }
    fake.requests.lock().unwrap().push(req);
    let script = fake
        .scripts
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Script::Reply(text_reply(&["ok"])));
    let (payloads, tail): (Vec<Value>, Tail) = match script {
        Script::Status(s) => return status_response(s),
        Script::Reply(p) => (p, Tail::Done),
        Script::Malformed(p) => (p, Tail::Garbage),
        Script::CloseAfter(p) => (p, Tail::Cut),
        Script::Endless => (
            (0..500)
                .map(|i| chunk(json!({"content": format!("w{i} ")}), None))
                .collect(),
            Tail::Done,
        ),
    };
    let endless = payloads.len() >= 500;
    let groq = fake.groq;
    let n = payloads.len();
    let mut events: Vec<Result<Bytes, std::io::Error>> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            if groq && (i == 0 || i + 1 == n) {
                p["x_groq"] = if i == 0 {
                    json!({"id": "req_1"})
                } else {
                    json!({"id": "req_1", "usage": {"total_tokens": 3}})
                };
            }
            Ok(Bytes::from(format!("data: {p}\n\n")))
        })
        .collect();
    match tail {
        Tail::Done => events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n"))),
        Tail::Garbage => events.push(Ok(Bytes::from_static(b"data: {\"choices\": [oops\n\n"))),
        Tail::Cut => events.push(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fake cut",
        ))),
    }
    let flag = DropFlag(fake.body_dropped.clone(), false);
    let delay = if endless {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(2)
    };
    let stream = futures_util::stream::unfold(
        (events.into_iter(), flag),
        move |(mut it, mut flag)| async move {
            tokio::time::sleep(delay).await;
            match it.next() {
                Some(item) => Some((item, (it, flag))),
                None => {
                    flag.disarm(); // finished normally
                    None
                }
            }
        },
    );
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

enum Tail {
    Done,
    Garbage,
    Cut,
}

fn status_response(status: u16) -> Response {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json");
    if status == 429 {
        r = r.header("retry-after", "1");
    }
    r.body(Body::from(error_body(status))).unwrap()
}
