//! Fake Deepgram live STT (`/v1/listen`): μ-law binary frames in, Results / SpeechStarted /
//! UtteranceEnd / Metadata out; KeepAlive, Finalize and CloseStream control messages.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{serve_ws, Fault, Handshake, Violations, KEY};

/// Bytes of audio (100 ms at 8 kHz μ-law) after which the first turn is "heard".
pub const FIRST_TURN_AT: usize = 800;
/// After this many bytes a second turn ends with `speech_final`.
pub const SECOND_TURN_AT: usize = 2400;

#[derive(Default)]
pub struct Log {
    pub handshake: Option<Handshake>,
    /// Every μ-law byte received, in order.
    pub audio: Vec<u8>,
    /// `type` of each control message, in order.
    pub controls: Vec<String>,
    pub connections: usize,
}

#[derive(Clone)]
pub struct FakeDeepgram {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    pub violations: Violations,
}

impl FakeDeepgram {
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn controls(&self) -> Vec<String> {
        self.log.lock().unwrap().controls.clone()
    }

    pub fn audio(&self) -> Vec<u8> {
        self.log.lock().unwrap().audio.clone()
    }

    pub async fn start(fault: Fault) -> FakeDeepgram {
        let log = Arc::new(Mutex::new(Log::default()));
        let violations = Violations::default();
        let check_fault = fault.clone();
        let check_v = violations.clone();
        let (h_log, h_v) = (log.clone(), violations.clone());
        let addr = serve_ws(
            move |hs| {
                if hs.path != "/v1/listen" {
                    check_v.add(format!("path {}", hs.path));
                    return Some((404, "not found".into()));
                }
                // Deepgram API keys use the Token scheme; Bearer is only for temporary JWTs.
                if hs.header("authorization") != Some(&format!("Token {KEY}")) {
                    check_v.add(format!("authorization {:?}", hs.header("authorization")));
                    return Some((
                        401,
                        r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}"#.into(),
                    ));
                }
                for (k, v) in [
                    ("model", "nova-3"),
                    ("encoding", "mulaw"),
                    ("sample_rate", "8000"),
                    ("channels", "1"),
                    ("interim_results", "true"),
                    ("endpointing", "300"),
                    ("utterance_end_ms", "1000"),
                    ("vad_events", "true"),
                    ("smart_format", "true"),
                ] {
                    if hs.query.get(k).map(String::as_str) != Some(v) {
                        check_v.add(format!("query {k}={:?}, want {v}", hs.query.get(k)));
                    }
                }
                match &check_fault {
                    Fault::Status(s) => Some((
                        *s,
                        format!(r#"{{"err_code":"FAKE","err_msg":"status {s}"}}"#),
                    )),
                    _ => None,
                }
            },
            move |ws, hs| {
                let (log, v, fault) = (h_log.clone(), h_v.clone(), fault.clone());
                async move {
                    {
                        let mut l = log.lock().unwrap();
                        l.handshake = Some(hs);
                        l.connections += 1;
                    }
                    session(ws, log, v, fault).await;
                }
            },
        )
        .await;
        FakeDeepgram {
            addr,
            log,
            violations,
        }
    }
}

fn results(text: &str, is_final: bool, speech_final: bool) -> Value {
    json!({
        "type": "Results", "channel_index": [0, 1], "start": 0.0, "duration": 1.0,
        "is_final": is_final, "speech_final": speech_final, "from_finalize": false,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.97,
            "words": text.split_whitespace().map(|w| json!({"word": w, "start": 0.1, "end": 0.2, "confidence": 0.97, "punctuated_word": w})).collect::<Vec<_>>()}]},
        "metadata": {"request_id": "req-1", "model_info": {"name": "nova-3"}, "model_uuid": "uuid-1"}
    })
}

async fn session(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    log: Arc<Mutex<Log>>,
    v: Violations,
    fault: Fault,
) {
    let (mut tx, mut rx) = ws.split();
    let mut first_done = false;
    let mut second_done = false;
    while let Some(Ok(msg)) = rx.next().await {
        let mut replies: Vec<Message> = Vec::new();
        match msg {
            Message::Binary(bytes) => {
                let total = {
                    let mut l = log.lock().unwrap();
                    l.audio.extend_from_slice(&bytes);
                    l.audio.len()
                };
                if total >= FIRST_TURN_AT && !first_done {
                    first_done = true;
                    match fault {
                        Fault::Malformed => {
                            replies.push(Message::text("{\"type\":\"Results\", this is not json"));
                        }
                        Fault::CloseMidStream => {
                            let _ = tx
                                .send(Message::text(results("hel", false, false).to_string()))
                                .await;
                            super::cut(tx, rx).await; // TCP closed without a close frame
                            return;
                        }
                        _ => {
                            replies.push(Message::text(
                                json!({"type": "SpeechStarted", "channel": [0], "timestamp": 0.1})
                                    .to_string(),
                            ));
                            replies.push(Message::text(results("hel", false, false).to_string()));
                            replies.push(Message::text(
                                results("hello there", true, false).to_string(),
                            ));
                            replies
                                .push(Message::text(results("how are", false, false).to_string()));
                            replies.push(Message::text(
                                results("how are you", true, false).to_string(),
                            ));
                            replies.push(Message::text(json!({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.9}).to_string()));
                        }
                    }
                }
                if total >= SECOND_TURN_AT && !second_done && fault == Fault::None {
                    second_done = true;
                    replies.push(Message::text(
                        json!({"type": "SpeechStarted", "channel": [0], "timestamp": 2.1})
                            .to_string(),
                    ));
                    replies.push(Message::text(
                        results("book a table", true, true).to_string(),
                    ));
                    // Deepgram also sends UtteranceEnd later; the turn must not end twice.
                    replies.push(Message::text(
                        json!({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 3.0})
                            .to_string(),
                    ));
                }
            }
            Message::Text(text) => {
                let parsed: Value = match serde_json::from_str(&text) {
                    Ok(p) => p,
                    Err(_) => {
                        v.add(format!("non-JSON text frame {text}"));
                        continue;
                    }
                };
                let kind = parsed["type"].as_str().unwrap_or("").to_string();
                log.lock().unwrap().controls.push(kind.clone());
                match kind.as_str() {
                    "KeepAlive" => {}
                    "Finalize" => {
                        let mut r = results("finalized words", true, false);
                        r["from_finalize"] = json!(true);
                        replies.push(Message::text(r.to_string()));
                    }
                    "CloseStream" => {
                        replies.push(Message::text(
                            json!({"type": "Metadata", "request_id": "req-1", "created": "2026-01-01T00:00:00Z", "duration": 1.0, "channels": 1}).to_string(),
                        ));
                        for r in replies.drain(..) {
                            let _ = tx.send(r).await;
                        }
                        let _ = tx.send(Message::Close(None)).await;
                        // Drain until the client's close reply.
                        while let Some(Ok(_)) = rx.next().await {}
                        return;
                    }
                    other => v.add(format!("unknown control message {other:?}")),
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
        for r in replies {
            if tx.send(r).await.is_err() {
                return;
            }
        }
    }
}
