//! Fake Cartesia TTS WebSocket (`/tts/websocket`): generation requests per `context_id` in,
//! base64 `chunk`s (one every few ms, so cancel can land mid-reply), `done`, `error` out.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{b64, pcm_to_le, serve_ws, tone, ulaw, Fault, Violations, KEY};

/// Chunks generated per transcript, each `CHUNK_MS` of audio.
pub const CHUNKS_PER_TEXT: usize = 4;
pub const CHUNK_MS: usize = 20;

#[derive(Default)]
pub struct Log {
    pub connections: usize,
    /// Every client message, in order.
    pub messages: Vec<Value>,
    pub chunks_sent: usize,
}

#[derive(Clone)]
pub struct FakeCartesia {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    pub violations: Violations,
}

#[derive(Clone)]
pub struct Options {
    pub fault: Fault,
    /// Pause between chunks.
    pub chunk_interval: Duration,
    /// Answer each generation request with an `error` message of this status instead.
    pub error_status: Option<u16>,
    /// Never answer (stall tests).
    pub silent: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault: Fault::None,
            chunk_interval: Duration::from_millis(5),
            error_status: None,
            silent: false,
        }
    }
}

impl FakeCartesia {
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn messages(&self) -> Vec<Value> {
        self.log.lock().unwrap().messages.clone()
    }

    pub async fn start(opts: Options) -> FakeCartesia {
        let log = Arc::new(Mutex::new(Log::default()));
        let violations = Violations::default();
        let (cv, fault) = (violations.clone(), opts.fault.clone());
        let (hl, hv) = (log.clone(), violations.clone());
        let addr = serve_ws(
            move |hs| {
                if hs.path != "/tts/websocket" {
                    cv.add(format!("path {}", hs.path));
                    return Some((404, "not found".into()));
                }
                if hs.header("cartesia-version").is_none_or(|v| v.len() != 10) {
                    cv.add(format!(
                        "Cartesia-Version {:?}",
                        hs.header("cartesia-version")
                    ));
                }
                if hs.header("authorization") != Some(&format!("Bearer {KEY}")) {
                    cv.add(format!("authorization {:?}", hs.header("authorization")));
                    return Some((401, r#"{"error":"Invalid API key"}"#.into()));
                }
                match &fault {
                    Fault::Status(s) => Some((*s, format!(r#"{{"error":"status {s}"}}"#))),
                    _ => None,
                }
            },
            move |ws, _hs| {
                let (log, v, opts) = (hl.clone(), hv.clone(), opts.clone());
                async move {
                    log.lock().unwrap().connections += 1;
                    session(ws, log, v, opts).await;
                }
            },
        )
        .await;
        FakeCartesia {
            addr,
            log,
            violations,
        }
    }
}

struct Ctx {
    queue: VecDeque<Value>,
    /// `continue:false` seen: send `done` once the queue is empty.
    ending: bool,
    cancelled: bool,
}

fn check_request(m: &Value, v: &Violations) {
    for f in ["context_id", "model_id", "transcript"] {
        if !m[f].is_string() {
            v.add(format!("generation request without string {f}: {m}"));
        }
    }
    if m["voice"]["mode"] != "id" || !m["voice"]["id"].is_string() {
        v.add(format!("bad voice {}", m["voice"]));
    }
    let of = &m["output_format"];
    if of["container"] != "raw" {
        v.add(format!("container {}", of["container"]));
    }
    if !matches!(
        of["encoding"].as_str(),
        Some("pcm_s16le" | "pcm_mulaw" | "pcm_f32le" | "pcm_alaw")
    ) {
        v.add(format!("encoding {}", of["encoding"]));
    }
    if !matches!(
        of["sample_rate"].as_u64(),
        Some(8000 | 16000 | 22050 | 24000 | 44100 | 48000)
    ) {
        v.add(format!("sample_rate {}", of["sample_rate"]));
    }
    if !m["continue"].is_boolean() {
        v.add(format!("continue is not a bool: {m}"));
    }
}

async fn session(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    log: Arc<Mutex<Log>>,
    v: Violations,
    opts: Options,
) {
    let (mut tx, mut rx) = ws.split();
    let mut ctxs: HashMap<String, Ctx> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(opts.chunk_interval);
    let mut sent_any = false;
    loop {
        tokio::select! {
            msg = rx.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let Ok(m) = serde_json::from_str::<Value>(&text) else {
                    v.add(format!("non-JSON message {text}"));
                    continue;
                };
                log.lock().unwrap().messages.push(m.clone());
                let Some(id) = m["context_id"].as_str().map(String::from) else {
                    v.add(format!("message without context_id: {m}"));
                    continue;
                };
                if m["cancel"] == json!(true) {
                    if let Some(c) = ctxs.get_mut(&id) {
                        c.cancelled = true;
                        c.queue.clear();
                    }
                    continue;
                }
                check_request(&m, &v);
                if opts.fault == Fault::Malformed {
                    let _ = tx.send(Message::text("{\"type\":\"chunk\",,,")).await;
                    continue;
                }
                if opts.silent {
                    continue;
                }
                if let Some(status) = opts.error_status {
                    let err = json!({"type": "error", "context_id": id, "status_code": status, "done": true,
                        "title": "Fake error", "message": format!("status {status}"), "error_code": "fake", "request_id": "r1"});
                    let _ = tx.send(Message::text(err.to_string())).await;
                    continue;
                }
                let ctx = ctxs.entry(id.clone()).or_insert_with(|| {
                    order.push(id.clone());
                    Ctx { queue: VecDeque::new(), ending: false, cancelled: false }
                });
                if ctx.ending {
                    v.add(format!("request after continue:false for {id}"));
                }
                if ctx.cancelled {
                    continue;
                }
                let transcript = m["transcript"].as_str().unwrap_or("");
                let rate = m["output_format"]["sample_rate"].as_u64().unwrap_or(16000) as usize;
                let mulaw = m["output_format"]["encoding"] == "pcm_mulaw";
                if !transcript.is_empty() {
                    let samples = rate * CHUNK_MS / 1000;
                    for _ in 0..CHUNKS_PER_TEXT {
                        let pcm = tone(samples, rate as u32);
                        let bytes = if mulaw { ulaw(&pcm) } else { pcm_to_le(&pcm) };
                        ctx.queue.push_back(json!({"type": "chunk", "context_id": id, "status_code": 206, "done": false,
                            "data": b64(&bytes), "step_time": 12.5}));
                    }
                    ctx.queue.push_back(json!({"type": "timestamps", "context_id": id, "status_code": 206, "done": false,
                        "word_timestamps": {"words": ["x"], "start": [0.0], "end": [0.1]}}));
                }
                if m["continue"] == json!(false) {
                    ctx.ending = true;
                }
            }
            _ = tick.tick() => {
                // One message per tick from the oldest context with output.
                let mut out = None;
                for id in &order {
                    let c = ctxs.get_mut(id).unwrap();
                    if c.cancelled { continue; }
                    if let Some(m) = c.queue.pop_front() {
                        out = Some(m);
                        break;
                    }
                    if c.ending {
                        c.ending = false;
                        c.cancelled = true; // finished: nothing more for it
                        out = Some(json!({"type": "done", "context_id": id, "status_code": 206, "done": true}));
                        break;
                    }
                }
                if let Some(m) = out {
                    if m["type"] == "chunk" {
                        log.lock().unwrap().chunks_sent += 1;
                        if sent_any && opts.fault == Fault::CloseMidStream {
                            super::cut(tx, rx).await; // TCP closed without a close frame
                            return;
                        }
                        sent_any = true;
                    }
                    if tx.send(Message::text(m.to_string())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
