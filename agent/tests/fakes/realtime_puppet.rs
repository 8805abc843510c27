//! A fake OpenAI Realtime server (GA vocabulary) that the test drives step by step, for whole
//! calls: it checks the handshake (path, model, `Authorization`), sends `session.created`,
//! records every client event (audio appends separately, decoded, with their arrival time) and
//! checks their shape, and sends whatever server events the test scripts — or refuses the
//! handshake with an HTTP status, or drops the socket.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{b64, serve_ws, unb64, Violations, KEY};

enum Cmd {
    Send(Value),
    Cut,
}

/// One μ-law append as received.
#[derive(Debug, Clone)]
pub struct Append {
    pub at: Instant,
    pub ulaw: Vec<u8>,
}

#[derive(Clone)]
pub struct Puppet {
    pub addr: SocketAddr,
    pub violations: Violations,
    /// Every client event except appends, in order.
    pub log: Arc<Mutex<Vec<Value>>>,
    pub appends: Arc<Mutex<Vec<Append>>>,
    pub connections: Arc<Mutex<usize>>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>>,
    conn: Arc<Mutex<Option<mpsc::UnboundedSender<Cmd>>>>,
}

/// Level of μ-law audio in dBFS.
pub fn ulaw_dbfs(ulaw: &[u8]) -> f32 {
    if ulaw.is_empty() {
        return -100.0;
    }
    let e: f64 = ulaw
        .iter()
        .map(|&b| {
            let s = proto::g711::ulaw_decode(b) as f64 / 32768.0;
            s * s
        })
        .sum::<f64>()
        / ulaw.len() as f64;
    (10.0 * e.max(1e-10).log10()) as f32
}

/// A sine tone as μ-law 8 kHz.
pub fn tone_ulaw(ms: u32, freq: f32) -> Vec<u8> {
    let n = ms as usize * 8;
    (0..n)
        .map(|i| {
            let s = (i as f32 * freq * std::f32::consts::TAU / 8000.0).sin() * 9000.0;
            proto::g711::ulaw_encode(s as i16)
        })
        .collect()
}

impl Puppet {
    /// `refuse`: answer every handshake with this HTTP status.
    pub async fn start(refuse: Option<u16>) -> Puppet {
        let violations = Violations::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        let appends = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Value>();
        let conn: Arc<Mutex<Option<mpsc::UnboundedSender<Cmd>>>> = Arc::new(Mutex::new(None));
        let cv = violations.clone();
        let (hv, hl, ha, hc, hconn) = (
            violations.clone(),
            log.clone(),
            appends.clone(),
            connections.clone(),
            conn.clone(),
        );
        let addr = serve_ws(
            move |hs| {
                if hs.path != "/v1/realtime" {
                    cv.add(format!("path {}", hs.path));
                    return Some((404, "not found".into()));
                }
                if hs.query.get("model").is_none_or(|m| m.is_empty()) {
                    cv.add("no model in the query");
                }
                if hs.header("openai-beta").is_some() {
                    cv.add("GA session with an OpenAI-Beta header");
                }
                if let Some(status) = refuse {
                    return Some((status, super::error_body(status)));
                }
                if hs.header("authorization") != Some(&format!("Bearer {KEY}")) {
                    cv.add(format!("authorization {:?}", hs.header("authorization")));
                    return Some((401, super::error_body(401)));
                }
                None
            },
            move |ws, _hs| {
                let (v, log, appends, conns, slot, ev_tx) = (
                    hv.clone(),
                    hl.clone(),
                    ha.clone(),
                    hc.clone(),
                    hconn.clone(),
                    ev_tx.clone(),
                );
                async move {
                    *conns.lock().unwrap() += 1;
                    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
                    *slot.lock().unwrap() = Some(cmd_tx);
                    connection(ws, cmd_rx, v, log, appends, ev_tx).await;
                }
            },
        )
        .await;
        Puppet {
            addr,
            violations,
            log,
            appends,
            connections,
            events: Arc::new(tokio::sync::Mutex::new(ev_rx)),
            conn,
        }
    }

    pub fn base_url(&self) -> String {
        format!("ws://{}/v1", self.addr)
    }

    /// Sends a server event on the current connection.
    pub fn send(&self, v: Value) {
        let slot = self.conn.lock().unwrap();
        let tx = slot.as_ref().expect("no Realtime connection to send on");
        let _ = tx.send(Cmd::Send(v));
    }

    /// Drops the connection without a close frame.
    pub fn cut(&self) {
        if let Some(tx) = self.conn.lock().unwrap().as_ref() {
            let _ = tx.send(Cmd::Cut);
        }
    }

    /// The next client event of type `kind` (others are skipped; all stay in `log`).
    pub async fn expect(&self, kind: &str, secs: u64) -> Value {
        let mut rx = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(v)) if v["type"] == kind => return v,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("fake Realtime server gone while waiting for {kind}"),
                Err(_) => panic!(
                    "no {kind} from the agent within {secs} s; it sent: {:#?}",
                    self.log
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|v| v["type"].clone())
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits until the appended audio holds `ms` of loud (> -35 dBFS) 20 ms frames.
    pub async fn wait_loud(&self, ms: u32, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.loud_ms() >= ms {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the caller's speech never reached the model ({} ms loud of {} appended)",
                self.loud_ms(),
                self.appended_ms()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn loud_ms(&self) -> u32 {
        let a = self.appends.lock().unwrap();
        a.iter()
            .flat_map(|x| x.ulaw.chunks(160))
            .filter(|c| c.len() == 160 && ulaw_dbfs(c) > -35.0)
            .count() as u32
            * 20
    }

    pub fn appended_ms(&self) -> u32 {
        let a = self.appends.lock().unwrap();
        a.iter().map(|x| x.ulaw.len() as u32).sum::<u32>() / 8
    }

    /// A whole spoken reply (created, item, audio in 100 ms deltas, transcript, done), sent
    /// at once (faster than real time, as the real service does).
    pub fn spoken_reply(&self, resp: &str, item: &str, text: &str, audio: &[u8]) {
        self.send(
            json!({"type": "response.created", "response": {"id": resp, "status": "in_progress"}}),
        );
        self.send(
            json!({"type": "response.output_item.added", "response_id": resp, "output_index": 0,
            "item": {"id": item, "type": "message", "role": "assistant", "content": []}}),
        );
        for chunk in audio.chunks(800) {
            self.send(audio_delta(resp, item, chunk));
        }
        self.send(json!({"type": "response.output_audio.done", "response_id": resp, "item_id": item, "output_index": 0, "content_index": 0}));
        self.send(transcript_delta(resp, item, text));
        self.send(json!({"type": "response.done", "response": {"id": resp, "status": "completed", "output": []}}));
    }

    /// A response that only calls a function.
    pub fn function_call(&self, resp: &str, call_id: &str, name: &str, arguments: Value) {
        let args = arguments.to_string();
        let item = format!("item_{call_id}");
        self.send(
            json!({"type": "response.created", "response": {"id": resp, "status": "in_progress"}}),
        );
        self.send(json!({"type": "response.output_item.added", "response_id": resp, "output_index": 0,
            "item": {"id": item, "type": "function_call", "call_id": call_id, "name": name, "arguments": ""}}));
        self.send(json!({"type": "response.function_call_arguments.delta", "response_id": resp, "item_id": item,
            "call_id": call_id, "delta": args}));
        self.send(json!({"type": "response.function_call_arguments.done", "response_id": resp, "item_id": item,
            "output_index": 0, "call_id": call_id, "name": name, "arguments": args}));
        self.send(json!({"type": "response.output_item.done", "response_id": resp, "output_index": 0,
            "item": {"id": item, "type": "function_call", "call_id": call_id, "name": name, "arguments": args}}));
        self.send(
            json!({"type": "response.done", "response": {"id": resp, "status": "completed"}}),
        );
    }

    /// The caller's turn as server VAD and transcription report it.
    pub fn user_turn(&self, item: &str, transcript: &str) {
        self.send(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000, "item_id": item}));
        self.send(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1600, "item_id": item}));
        self.send(json!({"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": null}));
        self.send(
            json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
            "content_index": 0, "transcript": transcript}),
        );
    }
}

pub fn audio_delta(resp: &str, item: &str, ulaw: &[u8]) -> Value {
    json!({"type": "response.output_audio.delta", "response_id": resp, "item_id": item, "output_index": 0,
        "content_index": 0, "delta": b64(ulaw)})
}

pub fn transcript_delta(resp: &str, item: &str, text: &str) -> Value {
    json!({"type": "response.output_audio_transcript.delta", "response_id": resp, "item_id": item,
        "output_index": 0, "content_index": 0, "delta": text})
}

fn check(m: &Value, updated: bool, v: &Violations) {
    match m["type"].as_str().unwrap_or("") {
        "session.update" => {
            let s = &m["session"];
            if s["type"] != "realtime" {
                v.add(format!("session.type {}", s["type"]));
            }
            if s["audio"]["input"]["format"]["type"] != "audio/pcmu"
                || s["audio"]["output"]["format"]["type"] != "audio/pcmu"
            {
                v.add(format!("audio formats {}", s["audio"]));
            }
            if s["audio"]["input"]["turn_detection"]["type"] != "server_vad" {
                v.add("turn_detection is not server_vad");
            }
            for t in s["tools"].as_array().cloned().unwrap_or_default() {
                if t["type"] != "function" || !t["name"].is_string() || !t["parameters"].is_object()
                {
                    v.add(format!("bad tool {t}"));
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
        }
        "conversation.item.create" => {
            let item = &m["item"];
            if item["type"] != "function_call_output"
                || !item["call_id"].is_string()
                || !item["output"].is_string()
            {
                v.add(format!("bad conversation.item.create {m}"));
            }
        }
        "response.create"
        | "response.cancel"
        | "input_audio_buffer.commit"
        | "input_audio_buffer.clear" => {}
        other => v.add(format!("unexpected client event {other:?}")),
    }
    if !updated && m["type"] != "session.update" {
        v.add(format!("{} before session.update", m["type"]));
    }
}

async fn connection(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    v: Violations,
    log: Arc<Mutex<Vec<Value>>>,
    appends: Arc<Mutex<Vec<Append>>>,
    ev_tx: mpsc::UnboundedSender<Value>,
) {
    let (mut tx, mut rx) = ws.split();
    if tx
        .send(Message::text(
            json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1", "object": "realtime.session"}})
                .to_string(),
        ))
        .await
        .is_err()
    {
        return;
    }
    let mut updated = false;
    loop {
        tokio::select! {
            c = cmds.recv() => match c {
                Some(Cmd::Send(m)) => {
                    if tx.send(Message::text(m.to_string())).await.is_err() {
                        return;
                    }
                }
                Some(Cmd::Cut) | None => {
                    super::cut(tx, rx).await;
                    return;
                }
            },
            msg = rx.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let Ok(m) = serde_json::from_str::<Value>(&text) else {
                    v.add(format!("non-JSON event {text}"));
                    continue;
                };
                if m["type"] == "input_audio_buffer.append" {
                    if !updated {
                        v.add("audio before session.update");
                    }
                    let ulaw = unb64(m["audio"].as_str().unwrap_or(""));
                    if ulaw.is_empty() {
                        v.add("empty or undecodable append");
                    }
                    appends.lock().unwrap().push(Append { at: Instant::now(), ulaw });
                    continue;
                }
                check(&m, updated, &v);
                if m["type"] == "session.update" {
                    updated = true;
                    let _ = tx
                        .send(Message::text(json!({"type": "session.updated", "session": m["session"].clone()}).to_string()))
                        .await;
                }
                log.lock().unwrap().push(m.clone());
                let _ = ev_tx.send(m);
            }
        }
    }
}
