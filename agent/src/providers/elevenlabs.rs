//! ElevenLabs text-to-speech over the `stream-input` WebSocket.
//!
//! One socket per reply: the first message is a single space with the voice settings, then
//! each sentence goes as `{"text":"… ","try_trigger_generation":true}` (with `flush` so a short
//! sentence is spoken now rather than waiting for more text), and `{"text":""}` ends the input.
//! Audio comes back as base64 in `{"audio":…,"isFinal":…}` messages; the last has
//! `isFinal:true`. There is no cancel message: barge-in closes the socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::http_util::{self, Pcm16Le, WsSink, WsSource};
use super::{ProviderError, TtsEvent, TtsProvider, TtsStream};

const VENDOR: &str = "elevenlabs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElevenLabsFormat {
    /// G.711 μ-law, 8 kHz (the phone's own format).
    Ulaw8000,
    Pcm8000,
    Pcm16000,
    Pcm22050,
    Pcm24000,
}

impl ElevenLabsFormat {
    pub fn wire(self) -> &'static str {
        match self {
            ElevenLabsFormat::Ulaw8000 => "ulaw_8000",
            ElevenLabsFormat::Pcm8000 => "pcm_8000",
            ElevenLabsFormat::Pcm16000 => "pcm_16000",
            ElevenLabsFormat::Pcm22050 => "pcm_22050",
            ElevenLabsFormat::Pcm24000 => "pcm_24000",
        }
    }

    pub fn rate(self) -> u32 {
        match self {
            ElevenLabsFormat::Ulaw8000 | ElevenLabsFormat::Pcm8000 => 8000,
            ElevenLabsFormat::Pcm16000 => 16000,
            ElevenLabsFormat::Pcm22050 => 22050,
            ElevenLabsFormat::Pcm24000 => 24000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ElevenLabsConfig {
    /// `wss://api.elevenlabs.io` in production.
    pub base_url: String,
    pub api_key: super::Secret,
    pub voice_id: String,
    /// `eleven_flash_v2_5`, `eleven_turbo_v2_5`, …
    pub model_id: String,
    pub output_format: ElevenLabsFormat,
    pub stability: f32,
    pub similarity_boost: f32,
    /// Characters buffered before generation starts (each 50..=500).
    pub chunk_length_schedule: Vec<u32>,
    /// Send `flush:true` with every sentence so it is spoken without waiting for more text.
    pub flush_each_push: bool,
    pub connect_timeout: Duration,
    /// While audio is owed, this long without a message is an error.
    pub stall_timeout: Duration,
}

impl ElevenLabsConfig {
    pub fn new(api_key: impl Into<String>, voice_id: impl Into<String>) -> Self {
        ElevenLabsConfig {
            base_url: "wss://api.elevenlabs.io".into(),
            api_key: super::Secret::new(api_key),
            voice_id: voice_id.into(),
            model_id: "eleven_flash_v2_5".into(),
            output_format: ElevenLabsFormat::Ulaw8000,
            stability: 0.5,
            similarity_boost: 0.8,
            chunk_length_schedule: vec![50],
            flush_each_push: true,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(8),
        }
    }

    pub fn stream_url(&self) -> String {
        let path = format!("v1/text-to-speech/{}/stream-input", enc(&self.voice_id));
        format!(
            "{}?model_id={}&output_format={}",
            http_util::join_url(&self.base_url, &path),
            enc(&self.model_id),
            self.output_format.wire()
        )
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The ElevenLabs voice: `ElevenLabsTts::new(ElevenLabsConfig::new(key, voice_id))`.
pub struct ElevenLabsTts {
    cfg: Arc<ElevenLabsConfig>,
}

impl ElevenLabsTts {
    pub fn new(cfg: ElevenLabsConfig) -> Self {
        ElevenLabsTts { cfg: Arc::new(cfg) }
    }

    /// Starts one reply (the concrete type; [`TtsProvider::start`] boxes it).
    pub async fn open(&self) -> Result<ElevenLabsStream, ProviderError> {
        let ws = http_util::ws_connect(
            VENDOR,
            &self.cfg.stream_url(),
            &[("xi-api-key", &self.cfg.api_key.expose())],
            self.cfg.connect_timeout,
        )
        .await?;
        let (mut sink, source) = http_util::split(ws);
        let first = json!({
            "text": " ",
            "voice_settings": {"stability": self.cfg.stability, "similarity_boost": self.cfg.similarity_boost},
            "generation_config": {"chunk_length_schedule": self.cfg.chunk_length_schedule},
        });
        sink.send(Message::text(first.to_string()))
            .await
            .map_err(|e| http_util::ws_error(VENDOR, e))?;
        let (tx, rx) = mpsc::channel(64);
        let shared = Arc::new(Shared::default());
        tokio::spawn(reader(source, tx, shared.clone(), self.cfg.clone()));
        Ok(ElevenLabsStream {
            sink,
            events: rx,
            shared,
            state: State::Open,
            flush: self.cfg.flush_each_push,
        })
    }
}

#[async_trait]
impl TtsProvider for ElevenLabsTts {
    fn name(&self) -> &'static str {
        VENDOR
    }

    fn output_rate(&self) -> u32 {
        self.cfg.output_format.rate()
    }

    async fn start(&self) -> Result<Box<dyn TtsStream>, ProviderError> {
        Ok(Box::new(self.open().await?))
    }
}

#[derive(Default)]
struct Shared {
    /// Text was sent whose audio has not fully arrived.
    owed: AtomicBool,
    /// We closed the socket (cancel): its end is not an error.
    cancelled: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Finished,
    Over,
}

pub struct ElevenLabsStream {
    sink: WsSink,
    events: mpsc::Receiver<TtsEvent>,
    shared: Arc<Shared>,
    state: State,
    flush: bool,
}

impl ElevenLabsStream {
    async fn send(&mut self, v: serde_json::Value) -> Result<(), ProviderError> {
        if let Err(e) = self.sink.send(Message::text(v.to_string())).await {
            self.state = State::Over;
            return Err(http_util::ws_error(VENDOR, e));
        }
        Ok(())
    }
}

#[async_trait]
impl TtsStream for ElevenLabsStream {
    async fn push_text(&mut self, text: &str) -> Result<(), ProviderError> {
        if self.state != State::Open {
            return Err(ProviderError::Other {
                vendor: VENDOR,
                msg: "reply already finished or cancelled".into(),
            });
        }
        if text.trim().is_empty() {
            return Ok(());
        }
        let mut msg =
            json!({"text": http_util::with_trailing_space(text), "try_trigger_generation": true});
        if self.flush {
            msg["flush"] = json!(true);
            self.shared.owed.store(true, Ordering::SeqCst);
        }
        self.send(msg).await
    }

    async fn finish(&mut self) -> Result<(), ProviderError> {
        if self.state != State::Open {
            return Err(ProviderError::Other {
                vendor: VENDOR,
                msg: "reply already finished or cancelled".into(),
            });
        }
        self.send(json!({"text": ""})).await?;
        self.shared.owed.store(true, Ordering::SeqCst);
        self.state = State::Finished;
        Ok(())
    }

    async fn cancel(&mut self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        self.state = State::Over;
        self.events.close();
        while self.events.try_recv().is_ok() {}
        let _ = tokio::time::timeout(Duration::from_millis(500), self.sink.close()).await;
    }

    async fn next_event(&mut self) -> Option<TtsEvent> {
        let ev = self.events.recv().await;
        if matches!(ev, Some(TtsEvent::Done) | Some(TtsEvent::Error(_))) {
            self.state = State::Over;
        }
        ev
    }
}

impl Drop for ElevenLabsStream {
    fn drop(&mut self) {
        // The reader task ends when the socket does; dropping the sink alone does not close
        // it, so tell the reader to stop treating the end as an error and let it close.
        self.shared.cancelled.store(true, Ordering::SeqCst);
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerMsg {
    #[serde(default)]
    audio: Option<String>,
    #[serde(default)]
    is_final: Option<bool>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

/// What one server message gives the stream.
pub struct Decoded {
    /// Samples at the output format's rate (empty: none in this message).
    pub audio: Vec<i16>,
    /// The reply is complete.
    pub is_final: bool,
}

/// The reader's sans-IO half: one text frame in; an error (vendor error, bad JSON or audio)
/// ends the reply. `pcm` carries odd bytes across chunks.
pub fn decode_message(
    text: &str,
    format: ElevenLabsFormat,
    pcm: &mut Pcm16Le,
) -> Result<Decoded, ProviderError> {
    let msg: ServerMsg = serde_json::from_str(text).map_err(|e| ProviderError::Protocol {
        vendor: VENDOR,
        msg: format!("bad message ({e}): {}", http_util::truncate(text)),
    })?;
    let mut audio = Vec::new();
    if let Some(b64) = msg.audio.as_deref().filter(|a| !a.is_empty()) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| ProviderError::Protocol {
                vendor: VENDOR,
                msg: format!("bad base64 audio: {e}"),
            })?;
        audio = match format {
            ElevenLabsFormat::Ulaw8000 => http_util::ulaw_to_pcm(&bytes),
            _ => pcm.decode(&bytes),
        };
    } else if msg.is_final != Some(true) {
        let err = msg.error.filter(|e| !e.is_null()).map(|e| {
            e.as_str()
                .map(String::from)
                .unwrap_or_else(|| e.to_string())
        });
        if let Some(err) = err.or(msg.message) {
            let lower = err.to_lowercase();
            return Err(
                if lower.contains("api key")
                    || lower.contains("api_key")
                    || lower.contains("unauthori")
                {
                    ProviderError::Auth {
                        vendor: VENDOR,
                        status: 401,
                        msg: err,
                    }
                } else if lower.contains("quota") || lower.contains("rate") {
                    ProviderError::RateLimited {
                        vendor: VENDOR,
                        msg: err,
                    }
                } else {
                    ProviderError::Other {
                        vendor: VENDOR,
                        msg: err,
                    }
                },
            );
        }
    }
    Ok(Decoded {
        audio,
        is_final: msg.is_final == Some(true),
    })
}

async fn reader(
    mut source: WsSource,
    events: mpsc::Sender<TtsEvent>,
    shared: Arc<Shared>,
    cfg: Arc<ElevenLabsConfig>,
) {
    let mut pcm = Pcm16Le::default();
    let error = loop {
        let next = tokio::select! {
            // The stream was dropped or cancelled: stop reading, which lets the socket close.
            _ = events.closed() => return,
            next = tokio::time::timeout(cfg.stall_timeout, source.next()) => next,
        };
        let next = match next {
            Ok(next) => next,
            Err(_) if events.is_closed() || shared.cancelled.load(Ordering::SeqCst) => return,
            Err(_) if shared.owed.load(Ordering::SeqCst) => {
                break Some(ProviderError::Connection {
                    vendor: VENDOR,
                    msg: format!("no audio for {:?}", cfg.stall_timeout),
                });
            }
            Err(_) => continue,
        };
        let text = match next {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                let reason = frame
                    .as_ref()
                    .map(|f| f.reason.to_lowercase())
                    .unwrap_or_default();
                let msg = http_util::close_reason(frame.as_ref());
                // Policy-violation closes carry auth and quota failures.
                let err = if reason.contains("api key")
                    || reason.contains("api_key")
                    || reason.contains("unauthori")
                {
                    ProviderError::Auth {
                        vendor: VENDOR,
                        status: code.unwrap_or(1008),
                        msg,
                    }
                } else if reason.contains("quota")
                    || reason.contains("rate limit")
                    || reason.contains("too many")
                {
                    ProviderError::RateLimited {
                        vendor: VENDOR,
                        msg,
                    }
                } else {
                    ProviderError::Connection {
                        vendor: VENDOR,
                        msg,
                    }
                };
                break Some(err);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break Some(http_util::ws_error(VENDOR, e)),
            None => {
                break Some(ProviderError::Connection {
                    vendor: VENDOR,
                    msg: "connection closed mid-reply".into(),
                })
            }
        };
        let decoded = match decode_message(&text, cfg.output_format, &mut pcm) {
            Ok(d) => d,
            Err(e) => break Some(e),
        };
        if !decoded.audio.is_empty() && events.send(TtsEvent::Audio(decoded.audio)).await.is_err() {
            return;
        }
        if decoded.is_final {
            shared.owed.store(false, Ordering::SeqCst);
            let _ = events.send(TtsEvent::Done).await;
            return;
        }
    };
    if shared.cancelled.load(Ordering::SeqCst) {
        return;
    }
    if let Some(e) = error {
        let _ = events.send(TtsEvent::Error(e.to_string())).await;
    }
}
