//! Fake OpenAI Realtime server, GA or beta vocabulary: `session.created` on connect, checks
//! `session.update`, answers caller audio with VAD events, a transcript and a spoken reply
//! (or a function call), and records truncate / cancel / function output.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{b64, serve_ws, unb64, Fault, Violations, KEY};

/// Caller bytes (μ-law) after which the fake "hears" a turn.
pub const TURN_AT: usize = 1600;
/// Audio deltas per spoken reply and bytes in each (20 ms of μ-law).
pub const DELTAS: usize = 5;
pub const DELTA_BYTES: usize = 160;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Ga,
    Beta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The turn is answered with speech.
    Speak,
    /// The turn is answered with a function call; its output is answered with speech.
    CallTool,
}

#[derive(Default)]
pub struct Log {
    pub connections: usize,
    /// Every client event, in order.
    pub events: Vec<Value>,
    pub audio: Vec<u8>,
}

#[derive(Clone)]
pub struct FakeRealtime {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    pub violations: Violations,
}

#[derive(Clone)]
pub struct Options {
    pub api: Api,
    pub scenario: Scenario,
    pub fault: Fault,
    /// Accept the socket, then send `error` invalid_api_key and close (instead of HTTP 401).
    pub auth_error_event: bool,
}

impl FakeRealtime {
    pub fn base_url(&self) -> String {
        format!("ws://{}/v1", self.addr)
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    }

    pub async fn start(opts: Options) -> FakeRealtime {
        let log = Arc::new(Mutex::new(Log::default()));
        let violations = Violations::default();
        let (cv, copts) = (violations.clone(), opts.clone());
        let (hl, hv) = (log.clone(), violations.clone());
        let addr = serve_ws(
            move |hs| {
                if hs.path != "/v1/realtime" {
                    cv.add(format!("path {}", hs.path));
                    return Some((404, "not found".into()));
                }
                if hs.query.get("model").is_none_or(|m| m.is_empty()) {
                    cv.add("no model in the query");
                }
                match (copts.api, hs.header("openai-beta")) {
                    (Api::Beta, Some("realtime=v1")) | (Api::Ga, None) => {}
                    (api, h) => cv.add(format!("{api:?} with OpenAI-Beta {h:?}")),
                }
                if hs.header("authorization") != Some(&format!("Bearer {KEY}"))
                    && !copts.auth_error_event
                {
                    cv.add(format!("authorization {:?}", hs.header("authorization")));
                    return Some((401, super::error_body(401)));
                }
                match &copts.fault {
                    Fault::Status(s) => Some((*s, super::error_body(*s))),
                    _ => None,
                }
            },
            move |ws, hs| {
                let (log, v, opts) = (hl.clone(), hv.clone(), opts.clone());
                async move {
                    log.lock().unwrap().connections += 1;
                    let authed = hs.header("authorization") == Some(&format!("Bearer {KEY}"));
                    session(ws, log, v, opts, authed).await;
                }
            },
        )
        .await;
        FakeRealtime {
            addr,
            log,
            violations,
        }
    }
}

fn audio_delta(api: Api, resp: &str, item: &str) -> Value {
    let kind = match api {
        Api::Ga => "response.output_audio.delta",
        Api::Beta => "response.audio.delta",
    };
    json!({"type": kind, "event_id": "ev", "response_id": resp, "item_id": item, "output_index": 0, "content_index": 0,
        "delta": b64(&[0x55u8; DELTA_BYTES])})
}

fn transcript_delta(api: Api, resp: &str, item: &str, text: &str) -> Value {
    let kind = match api {
        Api::Ga => "response.output_audio_transcript.delta",
        Api::Beta => "response.audio_transcript.delta",
    };
    json!({"type": kind, "response_id": resp, "item_id": item, "output_index": 0, "content_index": 0, "delta": text})
}

fn spoken_reply(api: Api, resp: &str, item: &str, fault: &Fault) -> Vec<Value> {
    let mut out = vec![
        json!({"type": "response.created", "response": {"id": resp, "status": "in_progress"}}),
        json!({"type": "response.output_item.added", "response_id": resp, "output_index": 0,
            "item": {"id": item, "type": "message", "role": "assistant", "content": []}}),
    ];
    for i in 0..DELTAS {
        out.push(audio_delta(api, resp, item));
        if i == 0 {
            out.push(transcript_delta(api, resp, item, "Sure, "));
            if *fault == Fault::CloseMidStream {
                out.push(json!({"type": "__drop__"}));
            }
        }
    }
    out.push(transcript_delta(api, resp, item, "it is sunny."));
    out.push(json!({"type": "response.done", "response": {"id": resp, "status": "completed", "output": []}}));
    out
}

fn tool_reply(api: Api) -> Vec<Value> {
    let mut done = json!({"type": "response.function_call_arguments.done", "response_id": "resp_1", "item_id": "item_fc",
        "output_index": 0, "call_id": "call_1", "arguments": "{\"city\":\"Paris\"}"});
    if api == Api::Ga {
        done["name"] = json!("get_weather");
    }
    vec![
        json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}),
        json!({"type": "response.output_item.added", "response_id": "resp_1", "output_index": 0,
            "item": {"id": "item_fc", "type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": ""}}),
        json!({"type": "response.function_call_arguments.delta", "response_id": "resp_1", "item_id": "item_fc", "call_id": "call_1", "delta": "{\"city\":"}),
        json!({"type": "response.function_call_arguments.delta", "response_id": "resp_1", "item_id": "item_fc", "call_id": "call_1", "delta": "\"Paris\"}"}),
        done,
        json!({"type": "response.output_item.done", "response_id": "resp_1", "output_index": 0,
            "item": {"id": "item_fc", "type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}),
        json!({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}),
    ]
}

fn check_session_update(api: Api, m: &Value, v: &Violations) {
    let s = &m["session"];
    match api {
        Api::Ga => {
            if s["type"] != "realtime" {
                v.add(format!("GA session.type {}", s["type"]));
            }
            if s["audio"]["input"]["format"]["type"] != "audio/pcmu"
                || s["audio"]["output"]["format"]["type"] != "audio/pcmu"
            {
                v.add(format!("GA audio formats {}", s["audio"]));
            }
            if s["audio"]["input"]["turn_detection"]["type"] != "server_vad" {
                v.add("GA turn_detection is not server_vad");
            }
            if s.get("input_audio_format").is_some() {
                v.add("GA session.update with beta fields");
            }
        }
        Api::Beta => {
            if s["input_audio_format"] != "g711_ulaw" || s["output_audio_format"] != "g711_ulaw" {
                v.add(format!(
                    "beta formats {} {}",
                    s["input_audio_format"], s["output_audio_format"]
                ));
            }
            if s["turn_detection"]["type"] != "server_vad" {
                v.add("beta turn_detection is not server_vad");
            }
            if s.get("audio").is_some() || s.get("type").is_some() {
                v.add("beta session.update with GA fields");
            }
        }
    }
    for t in s["tools"].as_array().cloned().unwrap_or_default() {
        if t["type"] != "function" || !t["name"].is_string() || !t["parameters"].is_object() {
            v.add(format!("bad tool {t}"));
        }
    }
}

async fn session(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    log: Arc<Mutex<Log>>,
    v: Violations,
    opts: Options,
    authed: bool,
) {
    let (mut tx, mut rx) = ws.split();
    macro_rules! send {
        ($v:expr) => {{
            let m: Value = $v;
            if m["type"] == "__drop__" {
                super::cut(tx, rx).await;
                return;
            }
            if tx.send(Message::text(m.to_string())).await.is_err() {
                return;
            }
        }};
    }
    if !authed {
        send!(
            json!({"type": "error", "event_id": "e0", "error": {"type": "invalid_request_error", "code": "invalid_api_key",
            "message": "Incorrect API key provided", "param": null, "event_id": null}})
        );
        let _ = tx.send(Message::Close(None)).await;
        return;
    }
    send!(
        json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1", "object": "realtime.session"}})
    );
    let mut updated = false;
    let mut heard = false;
    while let Some(Ok(msg)) = rx.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return,
            _ => continue,
        };
        let Ok(m) = serde_json::from_str::<Value>(&text) else {
            v.add(format!("non-JSON event {text}"));
            continue;
        };
        log.lock().unwrap().events.push(m.clone());
        match m["type"].as_str().unwrap_or("") {
            "session.update" => {
                check_session_update(opts.api, &m, &v);
                updated = true;
                if opts.fault == Fault::Malformed {
                    let _ = tx
                        .send(Message::text("{\"type\": \"session.updated\" ..."))
                        .await;
                    continue;
                }
                send!(json!({"type": "session.updated", "session": m["session"].clone()}));
            }
            "input_audio_buffer.append" => {
                if !updated {
                    v.add("audio before session.update");
                }
                let bytes = unb64(m["audio"].as_str().unwrap_or(""));
                let total = {
                    let mut l = log.lock().unwrap();
                    l.audio.extend_from_slice(&bytes);
                    l.audio.len()
                };
                if total >= TURN_AT && !heard {
                    heard = true;
                    send!(
                        json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 40, "item_id": "item_user1"})
                    );
                    send!(
                        json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 180, "item_id": "item_user1"})
                    );
                    send!(
                        json!({"type": "input_audio_buffer.committed", "item_id": "item_user1", "previous_item_id": null})
                    );
                    send!(
                        json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_user1",
                        "content_index": 0, "transcript": "what's the weather in Paris"})
                    );
                    send!(json!({"type": "rate_limits.updated", "rate_limits": []}));
                    let reply = match opts.scenario {
                        Scenario::Speak => spoken_reply(opts.api, "resp_1", "item_a1", &opts.fault),
                        Scenario::CallTool => tool_reply(opts.api),
                    };
                    for r in reply {
                        send!(r);
                    }
                }
            }
            "conversation.item.truncate" => {
                if m["content_index"] != json!(0)
                    || !m["item_id"].is_string()
                    || !m["audio_end_ms"].is_u64()
                {
                    v.add(format!("bad truncate {m}"));
                }
                send!(
                    json!({"type": "conversation.item.truncated", "item_id": m["item_id"], "content_index": 0, "audio_end_ms": m["audio_end_ms"]})
                );
            }
            "response.cancel" => {
                send!(
                    json!({"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}})
                );
            }
            "conversation.item.create" => {
                let item = &m["item"];
                if item["type"] != "function_call_output"
                    || !item["call_id"].is_string()
                    || !item["output"].is_string()
                {
                    v.add(format!("bad conversation.item.create {m}"));
                }
                send!(json!({"type": "conversation.item.created", "item": item}));
            }
            "response.create" => {
                for r in spoken_reply(opts.api, "resp_2", "item_a2", &Fault::None) {
                    send!(r);
                }
            }
            "input_audio_buffer.commit" | "input_audio_buffer.clear" => {}
            other => v.add(format!("unexpected client event {other:?}")),
        }
    }
}
