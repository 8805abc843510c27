//! Fake ElevenLabs `stream-input` WebSocket: first message `" "` with voice settings, text
//! chunks ending in a space, `{"text":""}` to end; replies `{"audio":…,"isFinal":…}`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{b64, pcm_to_le, serve_ws, tone, ulaw, Fault, Violations, KEY};

pub const CHUNKS_PER_TEXT: usize = 3;
pub const CHUNK_MS: usize = 20;
pub const VOICE: &str = "voice-abc";

#[derive(Default)]
pub struct Log {
    pub connections: usize,
    pub messages: Vec<Value>,
    pub query: Vec<(String, String)>,
    /// The client closed the socket before isFinal.
    pub closed_early: bool,
}

#[derive(Clone)]
pub struct FakeElevenLabs {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    pub violations: Violations,
}

#[derive(Clone)]
pub struct Options {
    pub fault: Fault,
    pub chunk_interval: Duration,
    /// Close with 1008 and this reason right after the first message (ElevenLabs' in-band
    /// auth / quota failures).
    pub policy_close: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault: Fault::None,
            chunk_interval: Duration::from_millis(5),
            policy_close: None,
        }
    }
}

impl FakeElevenLabs {
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn messages(&self) -> Vec<Value> {
        self.log.lock().unwrap().messages.clone()
    }

    pub async fn start(opts: Options) -> FakeElevenLabs {
        let log = Arc::new(Mutex::new(Log::default()));
        let violations = Violations::default();
        let (cv, fault) = (violations.clone(), opts.fault.clone());
        let (hl, hv) = (log.clone(), violations.clone());
        let addr = serve_ws(
            move |hs| {
                if hs.path != format!("/v1/text-to-speech/{VOICE}/stream-input") {
                    cv.add(format!("path {}", hs.path));
                    return Some((404, "not found".into()));
                }
                if hs.query.get("model_id").is_none_or(|m| m.is_empty()) {
                    cv.add("no model_id");
                }
                if !matches!(
                    hs.query.get("output_format").map(String::as_str),
                    Some("ulaw_8000" | "pcm_16000" | "pcm_8000" | "pcm_22050" | "pcm_24000")
                ) {
                    cv.add(format!("output_format {:?}", hs.query.get("output_format")));
                }
                if hs.header("xi-api-key") != Some(KEY) {
                    cv.add(format!("xi-api-key {:?}", hs.header("xi-api-key")));
                    return Some((
                        401,
                        r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#
                            .into(),
                    ));
                }
                match &fault {
                    Fault::Status(s) => {
                        Some((*s, format!(r#"{{"detail":{{"message":"status {s}"}}}}"#)))
                    }
                    _ => None,
                }
            },
            move |ws, hs| {
                let (log, v, opts) = (hl.clone(), hv.clone(), opts.clone());
                async move {
                    {
                        let mut l = log.lock().unwrap();
                        l.connections += 1;
                        l.query = hs.query.clone().into_iter().collect();
                    }
                    let format = hs.query.get("output_format").cloned().unwrap_or_default();
                    session(ws, log, v, opts, format).await;
                }
            },
        )
        .await;
        FakeElevenLabs {
            addr,
            log,
            violations,
        }
    }
}

async fn session(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    log: Arc<Mutex<Log>>,
    v: Violations,
    opts: Options,
    format: String,
) {
    let (mut tx, mut rx) = ws.split();
    let rate: usize = format
        .rsplit('_')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or(8000);
    let mut n = 0usize;
    let mut sent_audio = false;
    loop {
        let text = match rx.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                log.lock().unwrap().closed_early = true;
                return;
            }
            Some(Ok(_)) => continue,
        };
        let Ok(m) = serde_json::from_str::<Value>(&text) else {
            v.add(format!("non-JSON message {text}"));
            continue;
        };
        log.lock().unwrap().messages.push(m.clone());
        let t = m["text"].as_str();
        if n == 0 {
            if t != Some(" ") {
                v.add(format!("first message text must be a single space: {m}"));
            }
            if !m["voice_settings"].is_object() {
                v.add("first message without voice_settings");
            }
            n += 1;
            if let Some(reason) = &opts.policy_close {
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: 1008u16.into(),
                    reason: reason.clone().into(),
                };
                let _ = tx.send(Message::Close(Some(frame))).await;
                return;
            }
            continue;
        }
        n += 1;
        let Some(t) = t else {
            v.add(format!("message without text: {m}"));
            continue;
        };
        if t.is_empty() && m.get("flush").is_none() {
            // End of input: the last message is isFinal, then the server closes.
            let _ = tx.send(Message::text(json!({"audio": null, "isFinal": true, "normalizedAlignment": null, "alignment": null}).to_string())).await;
            let _ = tx.send(Message::Close(None)).await;
            while let Some(Ok(_)) = rx.next().await {}
            return;
        }
        if !t.ends_with(' ') {
            v.add(format!("text chunk does not end with a space: {t:?}"));
        }
        if m["try_trigger_generation"] != json!(true) {
            v.add(format!("text chunk without try_trigger_generation: {m}"));
        }
        if opts.fault == Fault::Malformed {
            let _ = tx
                .send(Message::text("{\"audio\": \"AAAA\", isFinal"))
                .await;
            continue;
        }
        for _ in 0..CHUNKS_PER_TEXT {
            tokio::time::sleep(opts.chunk_interval).await;
            if sent_audio && opts.fault == Fault::CloseMidStream {
                super::cut(tx, rx).await; // TCP closed without a close frame
                return;
            }
            let pcm = tone(rate * CHUNK_MS / 1000, rate as u32);
            let bytes = if format == "ulaw_8000" {
                ulaw(&pcm)
            } else {
                pcm_to_le(&pcm)
            };
            let msg = json!({"audio": b64(&bytes), "isFinal": null,
                "normalizedAlignment": {"chars": ["h"], "charStartTimesMs": [0], "charDurationsMs": [20]},
                "alignment": {"chars": ["h"], "charStartTimesMs": [0], "charDurationsMs": [20]}});
            if tx.send(Message::text(msg.to_string())).await.is_err() {
                log.lock().unwrap().closed_early = true;
                return;
            }
            sent_audio = true;
        }
    }
}
