//! OpenAI Realtime (speech in, speech out) over WebSocket, with μ-law 8 kHz both ways so the
//! phone's payload passes straight through.
//!
//! Not one of the STT/LLM/TTS traits: a session with its own small API.
//! [`RealtimeSession::connect`] opens the socket, waits for `session.created` (so a bad key is
//! an `Err` here, not a silent session), and sends `session.update` in the GA or beta shape
//! chosen by [`RealtimeConfig::api`]. Server events of either naming are understood.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::http_util::{self, WsSink, WsSource};
use super::{ProviderError, ToolSpec};

const VENDOR: &str = "openai-realtime";

/// Which event vocabulary to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealtimeApi {
    /// GA: `session.update` with `session.type:"realtime"` and `audio.{input,output}.format`.
    Ga,
    /// Beta: header `OpenAI-Beta: realtime=v1`, `input_audio_format:"g711_ulaw"`.
    Beta,
}

#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// Up to the version: `wss://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: super::Secret,
    /// `gpt-realtime` (GA) or `gpt-4o-realtime-preview` (beta).
    pub model: String,
    pub api: RealtimeApi,
    pub instructions: String,
    /// alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin, cedar.
    pub voice: String,
    pub tools: Vec<ToolSpec>,
    /// Server VAD: threshold, prefix padding and silence before end of turn.
    pub vad_threshold: f32,
    pub vad_prefix_padding_ms: u32,
    pub vad_silence_ms: u32,
    /// The server cancels its own reply when the caller speaks over it.
    pub interrupt_response: bool,
    /// Transcribe the caller (`gpt-4o-mini-transcribe`, `whisper-1`); None: no user transcripts.
    pub transcription_model: Option<String>,
    pub connect_timeout: Duration,
}

impl RealtimeConfig {
    pub fn new(api_key: impl Into<String>, api: RealtimeApi) -> Self {
        RealtimeConfig {
            base_url: "wss://api.openai.com/v1".into(),
            api_key: super::Secret::new(api_key),
            model: match api {
                RealtimeApi::Ga => "gpt-realtime".into(),
                RealtimeApi::Beta => "gpt-4o-realtime-preview".into(),
            },
            api,
            instructions: String::new(),
            voice: match api {
                RealtimeApi::Ga => "marin".into(),
                RealtimeApi::Beta => "alloy".into(),
            },
            tools: Vec::new(),
            vad_threshold: 0.5,
            vad_prefix_padding_ms: 300,
            vad_silence_ms: 500,
            interrupt_response: true,
            transcription_model: None,
            connect_timeout: Duration::from_secs(8),
        }
    }

    pub fn url(&self) -> String {
        let model: String = url::form_urlencoded::byte_serialize(self.model.as_bytes()).collect();
        format!(
            "{}?model={model}",
            http_util::join_url(&self.base_url, "realtime")
        )
    }

    /// The `session.update` event for this configuration.
    pub fn session_update(&self) -> Value {
        let turn_detection = json!({
            "type": "server_vad",
            "threshold": self.vad_threshold,
            "prefix_padding_ms": self.vad_prefix_padding_ms,
            "silence_duration_ms": self.vad_silence_ms,
            "create_response": true,
            "interrupt_response": self.interrupt_response,
        });
        let tools: Vec<Value> = self
            .tools
            .iter()
            .map(|t| json!({"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        let mut session = match self.api {
            RealtimeApi::Ga => {
                let mut input =
                    json!({"format": {"type": "audio/pcmu"}, "turn_detection": turn_detection});
                if let Some(m) = &self.transcription_model {
                    input["transcription"] = json!({"model": m});
                }
                json!({
                    "type": "realtime",
                    "model": self.model,
                    "instructions": self.instructions,
                    "output_modalities": ["audio"],
                    "audio": {"input": input, "output": {"format": {"type": "audio/pcmu"}, "voice": self.voice}},
                })
            }
            RealtimeApi::Beta => {
                let mut s = json!({
                    "modalities": ["text", "audio"],
                    "instructions": self.instructions,
                    "voice": self.voice,
                    "input_audio_format": "g711_ulaw",
                    "output_audio_format": "g711_ulaw",
                    "turn_detection": turn_detection,
                });
                if let Some(m) = &self.transcription_model {
                    s["input_audio_transcription"] = json!({"model": m});
                }
                s
            }
        };
        if !tools.is_empty() {
            session["tools"] = Value::Array(tools);
            session["tool_choice"] = json!("auto");
        }
        json!({"type": "session.update", "session": session})
    }
}

/// What the model and its VAD say.
#[derive(Debug)]
pub enum RealtimeEvent {
    /// The server applied a `session.update`.
    SessionUpdated,
    /// The caller started speaking (barge-in: clear playback, then [`RealtimeSession::truncate`]).
    SpeechStarted {
        item_id: String,
        audio_start_ms: u64,
    },
    SpeechStopped {
        item_id: String,
        audio_end_ms: u64,
    },
    /// What the caller said (needs [`RealtimeConfig::transcription_model`]).
    UserTranscript {
        item_id: String,
        text: String,
    },
    ResponseCreated {
        response_id: String,
    },
    /// μ-law 8 kHz of the assistant item `item_id`.
    AudioDelta {
        item_id: String,
        audio: Vec<u8>,
    },
    AssistantTranscriptDelta {
        item_id: String,
        delta: String,
    },
    /// The model calls a tool; answer with [`RealtimeSession::send_function_output`].
    FunctionCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    /// `status`: completed, cancelled, incomplete, failed.
    ResponseDone {
        response_id: String,
        status: String,
    },
    /// A server `error` event; the session goes on.
    Error {
        code: Option<String>,
        message: String,
    },
    /// The session is over: the socket failed or closed (`next_event` then returns None).
    Closed(ProviderError),
}

/// One live Realtime conversation.
pub struct RealtimeSession {
    sink: WsSink,
    events: mpsc::Receiver<RealtimeEvent>,
    closing: Arc<AtomicBool>,
    api: RealtimeApi,
}

impl RealtimeSession {
    pub async fn connect(cfg: RealtimeConfig) -> Result<RealtimeSession, ProviderError> {
        let auth = format!("Bearer {}", cfg.api_key.expose());
        let mut headers: Vec<(&str, &str)> = vec![("Authorization", &auth)];
        if cfg.api == RealtimeApi::Beta {
            headers.push(("OpenAI-Beta", "realtime=v1"));
        }
        let ws = http_util::ws_connect(VENDOR, &cfg.url(), &headers, cfg.connect_timeout).await?;
        let (mut sink, mut source) = http_util::split(ws);
        // The first server event tells whether the session exists.
        match tokio::time::timeout(cfg.connect_timeout, first_event(&mut source)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ProviderError::Connection {
                    vendor: VENDOR,
                    msg: "no session.created in time".into(),
                });
            }
        }
        let update = cfg.session_update().to_string();
        sink.send(Message::text(update))
            .await
            .map_err(|e| http_util::ws_error(VENDOR, e))?;
        let (tx, rx) = mpsc::channel(256);
        let closing = Arc::new(AtomicBool::new(false));
        tokio::spawn(reader(source, tx, closing.clone()));
        Ok(RealtimeSession {
            sink,
            events: rx,
            closing,
            api: cfg.api,
        })
    }

    pub fn api(&self) -> RealtimeApi {
        self.api
    }

    /// Sends any client event as it is.
    pub async fn send_event(&mut self, event: Value) -> Result<(), ProviderError> {
        self.sink
            .send(Message::text(event.to_string()))
            .await
            .map_err(|e| http_util::ws_error(VENDOR, e))
    }

    /// Appends caller audio (μ-law 8 kHz, e.g. a Twilio payload decoded from base64).
    pub async fn send_audio_ulaw(&mut self, ulaw: &[u8]) -> Result<(), ProviderError> {
        if ulaw.is_empty() {
            return Ok(());
        }
        let audio = base64::engine::general_purpose::STANDARD.encode(ulaw);
        self.send_event(json!({"type": "input_audio_buffer.append", "audio": audio}))
            .await
    }

    /// Cuts the assistant item at what the caller actually heard.
    pub async fn truncate(
        &mut self,
        item_id: &str,
        audio_end_ms: u64,
    ) -> Result<(), ProviderError> {
        self.send_event(json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}))
            .await
    }

    /// Stops the reply in flight (not needed when `interrupt_response` is on and the caller
    /// barged in: the server cancels itself then).
    pub async fn cancel_response(&mut self) -> Result<(), ProviderError> {
        self.send_event(json!({"type": "response.cancel"})).await
    }

    /// Answers a [`RealtimeEvent::FunctionCall`] and asks for the next reply.
    pub async fn send_function_output(
        &mut self,
        call_id: &str,
        output: &str,
    ) -> Result<(), ProviderError> {
        self.send_event(json!({
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }))
        .await?;
        self.create_response().await
    }

    pub async fn create_response(&mut self) -> Result<(), ProviderError> {
        self.send_event(json!({"type": "response.create"})).await
    }

    pub async fn next_event(&mut self) -> Option<RealtimeEvent> {
        self.events.recv().await
    }

    pub async fn close(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
    }
}

/// Milliseconds of μ-law 8 kHz audio in `bytes` (for `audio_end_ms`).
pub fn ulaw_ms(bytes: usize) -> u64 {
    bytes as u64 / 8
}

async fn first_event(source: &mut WsSource) -> Result<(), ProviderError> {
    loop {
        let text = match source.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                return Err(ProviderError::Connection {
                    vendor: VENDOR,
                    msg: http_util::close_reason(frame.as_ref()),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(http_util::ws_error(VENDOR, e)),
            None => {
                return Err(ProviderError::Connection {
                    vendor: VENDOR,
                    msg: "closed before session.created".into(),
                })
            }
        };
        return check_first_event(&text);
    }
}

/// The first event of a session must be `session.created`; `error` is classed by its code.
pub fn check_first_event(text: &str) -> Result<(), ProviderError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ProviderError::Protocol {
        vendor: VENDOR,
        msg: format!("bad first event ({e})"),
    })?;
    match v.get("type").and_then(Value::as_str) {
        Some("session.created") => Ok(()),
        Some("error") => Err(server_error(&v)),
        _ => Err(ProviderError::Protocol {
            vendor: VENDOR,
            msg: format!(
                "expected session.created, got {}",
                http_util::truncate(text)
            ),
        }),
    }
}

/// An `error` event before the session exists, classed by its code.
fn server_error(v: &Value) -> ProviderError {
    let code = str_at(v, "/error/code");
    let message = str_at(v, "/error/message");
    let msg = if code.is_empty() {
        message
    } else {
        format!("{code}: {message}")
    };
    match code.as_str() {
        "invalid_api_key" | "unauthorized" | "authentication_error" | "permission_denied" => {
            ProviderError::Auth {
                vendor: VENDOR,
                status: 401,
                msg,
            }
        }
        "rate_limit_exceeded" | "insufficient_quota" | "session_limit_reached" => {
            ProviderError::RateLimited {
                vendor: VENDOR,
                msg,
            }
        }
        "server_error" | "internal_error" => ProviderError::Server {
            vendor: VENDOR,
            status: 500,
            msg,
        },
        _ => ProviderError::Other {
            vendor: VENDOR,
            msg,
        },
    }
}

fn str_at(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn u64_at(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or_default()
}

/// Function calls one response may make; the vendor's further calls are dropped (and logged),
/// so what the decoder remembers stays bounded whatever the vendor sends.
const MAX_CALLS_PER_RESPONSE: usize = 64;

/// Turns server events (GA or beta names) into [`RealtimeEvent`]s: the reader's sans-IO half.
/// It remembers function calls only until their response is done.
#[derive(Default)]
pub struct Decoder {
    /// Function-call names seen in `output_item.added`, by call id.
    names: HashMap<String, String>,
    /// Calls already reported (both `arguments.done` and `output_item.done` describe one).
    reported: HashSet<String>,
}

impl Decoder {
    /// True the first time a call is described (both `arguments.done` and `output_item.done`
    /// describe it); false again, and for calls beyond [`MAX_CALLS_PER_RESPONSE`].
    fn first_report(&mut self, call_id: &str) -> bool {
        if self.reported.contains(call_id) {
            return false;
        }
        if self.reported.len() >= MAX_CALLS_PER_RESPONSE {
            tracing::warn!(limit = MAX_CALLS_PER_RESPONSE, "openai-realtime: too many function calls in one response; dropped");
            return false;
        }
        self.reported.insert(call_id.to_string());
        true
    }

    /// One text frame; `Ok(None)` for events the session does not use. An error ends the stream.
    pub fn on_text(&mut self, text: &str) -> Result<Option<RealtimeEvent>, ProviderError> {
        let v = serde_json::from_str::<Value>(text).map_err(|e| ProviderError::Protocol {
            vendor: VENDOR,
            msg: format!("bad event ({e}): {}", http_util::truncate(text)),
        })?;
        self.decode(&v)
    }

    fn decode(&mut self, v: &Value) -> Result<Option<RealtimeEvent>, ProviderError> {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        let ev = match kind {
            "session.updated" => RealtimeEvent::SessionUpdated,
            "input_audio_buffer.speech_started" => RealtimeEvent::SpeechStarted {
                item_id: str_at(v, "/item_id"),
                audio_start_ms: u64_at(v, "/audio_start_ms"),
            },
            "input_audio_buffer.speech_stopped" => RealtimeEvent::SpeechStopped {
                item_id: str_at(v, "/item_id"),
                audio_end_ms: u64_at(v, "/audio_end_ms"),
            },
            "conversation.item.input_audio_transcription.completed" => {
                RealtimeEvent::UserTranscript {
                    item_id: str_at(v, "/item_id"),
                    text: str_at(v, "/transcript"),
                }
            }
            "response.created" => RealtimeEvent::ResponseCreated {
                response_id: str_at(v, "/response/id"),
            },
            "response.output_audio.delta" | "response.audio.delta" => {
                let delta = v.get("delta").and_then(Value::as_str).unwrap_or_default();
                let audio = base64::engine::general_purpose::STANDARD
                    .decode(delta.as_bytes())
                    .map_err(|e| ProviderError::Protocol {
                        vendor: VENDOR,
                        msg: format!("bad base64 audio: {e}"),
                    })?;
                RealtimeEvent::AudioDelta {
                    item_id: str_at(v, "/item_id"),
                    audio,
                }
            }
            "response.output_audio_transcript.delta"
            | "response.audio_transcript.delta"
            | "response.output_text.delta"
            | "response.text.delta" => RealtimeEvent::AssistantTranscriptDelta {
                item_id: str_at(v, "/item_id"),
                delta: str_at(v, "/delta"),
            },
            "response.output_item.added" => {
                if v.pointer("/item/type").and_then(Value::as_str) == Some("function_call")
                    && self.names.len() < MAX_CALLS_PER_RESPONSE
                {
                    self.names
                        .insert(str_at(v, "/item/call_id"), str_at(v, "/item/name"));
                }
                return Ok(None);
            }
            "response.function_call_arguments.done" => {
                let call_id = str_at(v, "/call_id");
                let name = Some(str_at(v, "/name"))
                    .filter(|n| !n.is_empty())
                    .or_else(|| self.names.get(&call_id).cloned());
                match name {
                    Some(name) if self.first_report(&call_id) => {
                        RealtimeEvent::FunctionCall {
                            call_id,
                            name,
                            arguments: str_at(v, "/arguments"),
                        }
                    }
                    // Without a name yet, wait for output_item.done.
                    _ => return Ok(None),
                }
            }
            "response.output_item.done" => {
                let item = v.get("item").cloned().unwrap_or_default();
                if item.get("type").and_then(Value::as_str) != Some("function_call") {
                    return Ok(None);
                }
                let call_id = str_at(&item, "/call_id");
                if !self.first_report(&call_id) {
                    return Ok(None);
                }
                RealtimeEvent::FunctionCall {
                    call_id,
                    name: str_at(&item, "/name"),
                    arguments: str_at(&item, "/arguments"),
                }
            }
            "response.done" => {
                // Every call of the response has been described: nothing more to match.
                self.names.clear();
                self.reported.clear();
                RealtimeEvent::ResponseDone {
                    response_id: str_at(v, "/response/id"),
                    status: str_at(v, "/response/status"),
                }
            }
            "error" => {
                let code = v
                    .pointer("/error/code")
                    .and_then(Value::as_str)
                    .map(String::from);
                RealtimeEvent::Error {
                    code,
                    message: str_at(v, "/error/message"),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(ev))
    }
}

async fn reader(
    mut source: WsSource,
    events: mpsc::Sender<RealtimeEvent>,
    closing: Arc<AtomicBool>,
) {
    let mut decoder = Decoder::default();
    let error = loop {
        let text = match source.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                break ProviderError::Connection {
                    vendor: VENDOR,
                    msg: http_util::close_reason(frame.as_ref()),
                };
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break http_util::ws_error(VENDOR, e),
            None => {
                break ProviderError::Connection {
                    vendor: VENDOR,
                    msg: "connection closed".into(),
                }
            }
        };
        match decoder.on_text(&text) {
            Ok(Some(ev)) => {
                if events.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => break e,
        }
    };
    if !closing.load(Ordering::SeqCst) {
        let _ = events.send(RealtimeEvent::Closed(error)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_update_shapes() {
        let ga = RealtimeConfig::new("k", RealtimeApi::Ga).session_update();
        assert_eq!(ga["session"]["type"], "realtime");
        assert_eq!(
            ga["session"]["audio"]["input"]["format"]["type"],
            "audio/pcmu"
        );
        assert_eq!(
            ga["session"]["audio"]["output"]["format"]["type"],
            "audio/pcmu"
        );
        assert_eq!(
            ga["session"]["audio"]["input"]["turn_detection"]["type"],
            "server_vad"
        );
        let beta = RealtimeConfig::new("k", RealtimeApi::Beta).session_update();
        assert_eq!(beta["session"]["input_audio_format"], "g711_ulaw");
        assert_eq!(beta["session"]["output_audio_format"], "g711_ulaw");
        assert_eq!(beta["session"]["turn_detection"]["type"], "server_vad");
    }

    #[test]
    fn function_call_reported_once_from_either_event() {
        let mut d = Decoder::default();
        let added = json!({"type":"response.output_item.added","item":{"type":"function_call","call_id":"c1","name":"lookup"}});
        assert!(d.decode(&added).unwrap().is_none());
        let done =
            json!({"type":"response.function_call_arguments.done","call_id":"c1","arguments":"{}"});
        assert!(
            matches!(d.decode(&done).unwrap(), Some(RealtimeEvent::FunctionCall { name, .. }) if name == "lookup")
        );
        let item_done = json!({"type":"response.output_item.done","item":{"type":"function_call","call_id":"c1","name":"lookup","arguments":"{}"}});
        assert!(d.decode(&item_done).unwrap().is_none());
    }

    /// A vendor that sends call after call never grows the decoder: at most
    /// MAX_CALLS_PER_RESPONSE are remembered (and reported) per response, none after it.
    #[test]
    fn function_calls_are_remembered_only_within_their_response() {
        let mut d = Decoder::default();
        let mut reported = 0;
        for i in 0..1000 {
            let added = json!({"type":"response.output_item.added","item":{"type":"function_call","call_id":format!("c{i}"),"name":"lookup"}});
            d.decode(&added).unwrap();
            let done = json!({"type":"response.output_item.done","item":{"type":"function_call","call_id":format!("c{i}"),"name":"lookup","arguments":"{}"}});
            if d.decode(&done).unwrap().is_some() {
                reported += 1;
            }
        }
        assert_eq!(reported, MAX_CALLS_PER_RESPONSE);
        assert!(d.names.len() <= MAX_CALLS_PER_RESPONSE && d.reported.len() <= MAX_CALLS_PER_RESPONSE);
        d.decode(&json!({"type":"response.done","response":{"id":"r1","status":"completed"}})).unwrap();
        assert!(d.names.is_empty() && d.reported.is_empty());
        // The next response's calls are reported again.
        let done = json!({"type":"response.output_item.done","item":{"type":"function_call","call_id":"c0","name":"lookup","arguments":"{}"}});
        assert!(d.decode(&done).unwrap().is_some());
    }
}
