//! Deepgram live speech-to-text over WebSocket (`/v1/listen`).
//!
//! Audio goes straight through as μ-law 8 kHz (the phone's own format): PCM16 from the caller
//! is encoded with `proto::g711` and sent in binary frames. A writer task sends `KeepAlive`
//! whenever no audio went out for [`DeepgramConfig::keepalive`] (Deepgram closes a stream that
//! is silent for 10 s); a reader task turns `Results` / `SpeechStarted` / `UtteranceEnd` into
//! [`SttEvent`]s and builds the turn: the `is_final` segments joined, ended on `speech_final`
//! or `UtteranceEnd`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::http_util::{self, WsSink, WsSource};
use super::{ProviderError, SttEvent, SttProvider, SttSession};

const VENDOR: &str = "deepgram";

#[derive(Debug, Clone)]
pub struct DeepgramConfig {
    /// `wss://api.deepgram.com` in production; `ws://127.0.0.1:port` for a fake.
    pub base_url: String,
    pub api_key: super::Secret,
    /// `nova-3`, `nova-2-phonecall`, …
    pub model: String,
    /// `en-US`; `None` leaves it to the model's default.
    pub language: Option<String>,
    /// Silence (ms) after which Deepgram marks `speech_final`.
    pub endpointing_ms: u32,
    /// Gap (ms) after the last final word that fires `UtteranceEnd`.
    pub utterance_end_ms: u32,
    pub smart_format: bool,
    /// Send `KeepAlive` after this long without audio (Deepgram wants 3–5 s; it closes at 10 s).
    pub keepalive: Duration,
    pub connect_timeout: Duration,
}

impl DeepgramConfig {
    pub fn new(api_key: impl Into<String>) -> Self {
        DeepgramConfig {
            base_url: "wss://api.deepgram.com".into(),
            api_key: super::Secret::new(api_key),
            model: "nova-3".into(),
            language: Some("en-US".into()),
            endpointing_ms: 300,
            utterance_end_ms: 1000,
            smart_format: true,
            keepalive: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The full listen URL with every query parameter.
    pub fn listen_url(&self) -> String {
        let mut url = format!(
            "{}?model={}&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true&endpointing={}&utterance_end_ms={}&vad_events=true&smart_format={}&punctuate=true",
            http_util::join_url(&self.base_url, "v1/listen"),
            enc(&self.model),
            self.endpointing_ms,
            self.utterance_end_ms,
            self.smart_format,
        );
        if let Some(lang) = &self.language {
            url.push_str("&language=");
            url.push_str(&enc(lang));
        }
        url
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The Deepgram recogniser: `DeepgramStt::new(DeepgramConfig::new(key))`.
pub struct DeepgramStt {
    cfg: DeepgramConfig,
}

impl DeepgramStt {
    pub fn new(cfg: DeepgramConfig) -> Self {
        DeepgramStt { cfg }
    }

    /// Opens a live stream (the concrete type; [`SttProvider::start`] boxes it).
    pub async fn connect(&self) -> Result<DeepgramSession, ProviderError> {
        let auth = format!("Token {}", self.cfg.api_key.expose());
        let ws = http_util::ws_connect(
            VENDOR,
            &self.cfg.listen_url(),
            &[("Authorization", &auth)],
            self.cfg.connect_timeout,
        )
        .await?;
        let (sink, source) = http_util::split(ws);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (event_tx, event_rx) = mpsc::channel(128);
        let closing = Arc::new(AtomicBool::new(false));
        tokio::spawn(writer(sink, cmd_rx, self.cfg.keepalive));
        tokio::spawn(reader(source, event_tx, closing.clone()));
        Ok(DeepgramSession {
            cmd_tx: Some(cmd_tx),
            events: event_rx,
            closing,
            buf: Vec::new(),
        })
    }
}

#[async_trait]
impl SttProvider for DeepgramStt {
    fn name(&self) -> &'static str {
        VENDOR
    }

    fn input_rate(&self) -> u32 {
        8000
    }

    async fn start(&self) -> Result<Box<dyn SttSession>, ProviderError> {
        Ok(Box::new(self.connect().await?))
    }
}

enum Cmd {
    Audio(Vec<u8>),
    Control(&'static str),
}

/// One live Deepgram stream.
pub struct DeepgramSession {
    cmd_tx: Option<mpsc::Sender<Cmd>>,
    events: mpsc::Receiver<SttEvent>,
    closing: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl DeepgramSession {
    async fn send(&mut self, cmd: Cmd) -> Result<(), ProviderError> {
        let Some(tx) = &self.cmd_tx else {
            return Err(ProviderError::Connection {
                vendor: VENDOR,
                msg: "stream already closed".into(),
            });
        };
        tx.send(cmd).await.map_err(|_| ProviderError::Connection {
            vendor: VENDOR,
            msg: "connection closed".into(),
        })
    }

    /// Sends μ-law bytes as they are (for callers that already hold the phone's payload).
    pub async fn send_ulaw(&mut self, ulaw: &[u8]) -> Result<(), ProviderError> {
        if ulaw.is_empty() {
            return Ok(());
        }
        self.send(Cmd::Audio(ulaw.to_vec())).await
    }
}

#[async_trait]
impl SttSession for DeepgramSession {
    async fn send_audio(&mut self, pcm: &[i16]) -> Result<(), ProviderError> {
        if pcm.is_empty() {
            return Ok(());
        }
        self.buf.resize(pcm.len(), 0);
        // Same length in and out: cannot fail.
        let _ = proto::g711::ulaw_encode_into(pcm, &mut self.buf);
        let bytes = std::mem::take(&mut self.buf);
        self.send(Cmd::Audio(bytes)).await
    }

    async fn finalize(&mut self) -> Result<(), ProviderError> {
        self.send(Cmd::Control(r#"{"type":"Finalize"}"#)).await
    }

    async fn next_event(&mut self) -> Option<SttEvent> {
        self.events.recv().await
    }

    /// Sends `CloseStream`: Deepgram flushes (the last results still arrive on
    /// [`next_event`](SttSession::next_event)), sends `Metadata` and closes.
    async fn close(&mut self) {
        if self.cmd_tx.is_none() {
            return;
        }
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.send(Cmd::Control(r#"{"type":"CloseStream"}"#)).await;
        self.cmd_tx = None;
    }
}

async fn writer(mut sink: WsSink, mut cmds: mpsc::Receiver<Cmd>, keepalive: Duration) {
    let mut last_sent = Instant::now();
    loop {
        let cmd = tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(cmd) => cmd,
                // Session dropped without close(): say goodbye so the server stops billing.
                None => {
                    let _ = sink.send(Message::text(r#"{"type":"CloseStream"}"#)).await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(last_sent + keepalive) => Cmd::Control(r#"{"type":"KeepAlive"}"#),
        };
        let (msg, end) = match cmd {
            Cmd::Audio(bytes) => (Message::binary(bytes), false),
            Cmd::Control(text) => (Message::text(text), text.contains("CloseStream")),
        };
        if let Err(e) = sink.send(msg).await {
            tracing::debug!(error = %e, "deepgram: send failed");
            return;
        }
        last_sent = Instant::now();
        if end {
            // The server closes after its final Metadata; keep the sink alive until then.
            while cmds.recv().await.is_some() {}
            return;
        }
    }
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    confidence: f32,
}

#[derive(Deserialize)]
struct Channel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum ServerMsg {
    Results {
        #[serde(default)]
        is_final: bool,
        #[serde(default)]
        speech_final: bool,
        channel: Channel,
    },
    SpeechStarted {},
    UtteranceEnd {},
    Metadata {},
    /// Deepgram reports some failures in-band before closing.
    Error {
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    #[serde(other)]
    Unknown,
}

/// A turn's text beyond this (minutes of speech without a pause Deepgram ends) is cut into
/// turns of at most this size, so what the assembler holds stays bounded.
const MAX_TURN_BYTES: usize = 8 * 1024;

/// Turn assembly: final segments are joined until `speech_final` or `UtteranceEnd`.
#[derive(Default)]
struct Turn {
    segments: Vec<String>,
    /// Bytes of the joined turn so far (each segment and its joining space).
    bytes: usize,
}

impl Turn {
    fn handle(&mut self, msg: ServerMsg, out: &mut Vec<SttEvent>) {
        match msg {
            ServerMsg::Results {
                is_final,
                speech_final,
                channel,
            } => {
                let (text, confidence) = channel
                    .alternatives
                    .into_iter()
                    .next()
                    .map(|a| (a.transcript.trim().to_string(), a.confidence))
                    .unwrap_or_default();
                if is_final {
                    if !text.is_empty() {
                        out.push(SttEvent::Final {
                            text: text.clone(),
                            confidence,
                        });
                        // Each segment costs its text and the space that joins it.
                        if self.bytes + text.len() + 1 > MAX_TURN_BYTES {
                            self.end_turn(out);
                        }
                        self.bytes += text.len() + 1;
                        self.segments.push(text);
                    }
                } else if !text.is_empty() {
                    out.push(SttEvent::Interim { text });
                }
                if speech_final {
                    self.end_turn(out);
                }
            }
            ServerMsg::SpeechStarted {} => out.push(SttEvent::SpeechStarted),
            ServerMsg::UtteranceEnd {} => self.end_turn(out),
            ServerMsg::Metadata {} | ServerMsg::Error { .. } | ServerMsg::Unknown => {}
        }
    }

    fn end_turn(&mut self, out: &mut Vec<SttEvent>) {
        if !self.segments.is_empty() {
            out.push(SttEvent::EndOfTurn {
                text: self.segments.join(" "),
            });
            self.segments.clear();
            self.bytes = 0;
        }
    }
}

/// The reader's sans-IO half: one text frame in, [`SttEvent`]s out. An error ends the stream.
#[derive(Default)]
pub struct DeepgramDecoder {
    turn: Turn,
}

impl DeepgramDecoder {
    pub fn on_text(&mut self, text: &str, out: &mut Vec<SttEvent>) -> Result<(), ProviderError> {
        match serde_json::from_str::<ServerMsg>(text) {
            Ok(ServerMsg::Error {
                description,
                message,
            }) => {
                let msg = description
                    .or(message)
                    .unwrap_or_else(|| http_util::truncate(text));
                Err(ProviderError::Other {
                    vendor: VENDOR,
                    msg,
                })
            }
            Ok(m) => {
                self.turn.handle(m, out);
                Ok(())
            }
            // Deepgram may also report an error as a JSON object without a `type` we know.
            Err(e) => Err(ProviderError::Protocol {
                vendor: VENDOR,
                msg: format!("bad message ({e}): {}", http_util::truncate(text)),
            }),
        }
    }

    /// The stream is over: whatever was final but not yet ended is still the caller's words.
    pub fn finish(&mut self, out: &mut Vec<SttEvent>) {
        self.turn.end_turn(out);
    }
}

async fn reader(mut source: WsSource, events: mpsc::Sender<SttEvent>, closing: Arc<AtomicBool>) {
    let mut decoder = DeepgramDecoder::default();
    let mut out = Vec::new();
    let error = loop {
        let msg = match source.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => break Some(http_util::ws_error(VENDOR, e)),
            None => break None,
        };
        match msg {
            Message::Text(text) => {
                if let Err(e) = decoder.on_text(&text, &mut out) {
                    break Some(e);
                }
            }
            Message::Close(frame) => {
                let normal = frame.as_ref().is_none_or(|f| u16::from(f.code) == 1000);
                if closing.load(Ordering::SeqCst) && normal {
                    break None;
                }
                break Some(ProviderError::Connection {
                    vendor: VENDOR,
                    msg: http_util::close_reason(frame.as_ref()),
                });
            }
            _ => {}
        }
        for ev in out.drain(..) {
            if events.send(ev).await.is_err() {
                return;
            }
        }
    };
    let error = match error {
        Some(e) => Some(e),
        None if !closing.load(Ordering::SeqCst) => Some(ProviderError::Connection {
            vendor: VENDOR,
            msg: "connection closed mid-stream".into(),
        }),
        None => None,
    };
    decoder.finish(&mut out);
    for ev in out.drain(..) {
        let _ = events.send(ev).await;
    }
    if let Some(e) = error {
        let _ = events.send(SttEvent::Error(e.to_string())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(text: &str, is_final: bool, speech_final: bool) -> ServerMsg {
        serde_json::from_value(serde_json::json!({
            "type": "Results", "is_final": is_final, "speech_final": speech_final,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.9}]}
        }))
        .unwrap()
    }

    /// Finals that never end (no speech_final, no UtteranceEnd) are cut into bounded turns.
    #[test]
    fn a_turn_that_never_ends_is_cut_to_a_bounded_size() {
        let mut t = Turn::default();
        let mut out = Vec::new();
        for _ in 0..10_000 {
            t.handle(results("and then another thing happened", true, false), &mut out);
            assert!(t.bytes <= MAX_TURN_BYTES);
        }
        let turns: Vec<&String> = out.iter().filter_map(|e| match e { SttEvent::EndOfTurn { text } => Some(text), _ => None }).collect();
        assert!(turns.len() >= 30, "{} turns", turns.len());
        assert!(turns.iter().all(|t| t.len() <= MAX_TURN_BYTES));
    }

    #[test]
    fn turn_joins_finals_and_ends_once() {
        let mut t = Turn::default();
        let mut out = Vec::new();
        t.handle(results("hel", false, false), &mut out);
        t.handle(results("hello there", true, false), &mut out);
        t.handle(results("how are you", true, true), &mut out);
        t.handle(
            serde_json::from_str(r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.1}"#)
                .unwrap(),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                SttEvent::Interim { text: "hel".into() },
                SttEvent::Final {
                    text: "hello there".into(),
                    confidence: 0.9
                },
                SttEvent::Final {
                    text: "how are you".into(),
                    confidence: 0.9
                },
                SttEvent::EndOfTurn {
                    text: "hello there how are you".into()
                },
            ]
        );
    }

    #[test]
    fn url_has_every_parameter() {
        let url = DeepgramConfig::new("k").listen_url();
        assert!(url.starts_with("wss://api.deepgram.com/v1/listen?model=nova-3&encoding=mulaw&sample_rate=8000&channels=1"));
        for p in [
            "interim_results=true",
            "endpointing=300",
            "utterance_end_ms=1000",
            "vad_events=true",
            "smart_format=true",
        ] {
            assert!(url.contains(p), "{url}");
        }
    }
}
