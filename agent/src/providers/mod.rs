//! Vendor clients behind three small streaming interfaces, so the conversation loop does not
//! care who hears, thinks or speaks. One file per vendor; each takes a base URL so tests point
//! it at a local fake that speaks the vendor's documented wire format.
//!
//! Audio crossing these interfaces is mono PCM16 at the rate the provider asked for
//! ([`SttProvider::input_rate`], [`TtsProvider::output_rate`]); μ-law passthrough vendors
//! convert at their edge with `proto::g711`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// An API key: never shown by `Debug` (configs are logged and printed in panics).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The key itself, for the one header that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.into())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

/// Why a provider call failed. `retryable` drives the "no dead air" fallbacks.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{vendor}: authentication failed (HTTP {status}): {msg}")]
    Auth { vendor: &'static str, status: u16, msg: String },
    #[error("{vendor}: rate limited (HTTP 429): {msg}")]
    RateLimited { vendor: &'static str, msg: String },
    #[error("{vendor}: server error (HTTP {status}): {msg}")]
    Server { vendor: &'static str, status: u16, msg: String },
    #[error("{vendor}: connection failed or closed: {msg}")]
    Connection { vendor: &'static str, msg: String },
    #[error("{vendor}: malformed response: {msg}")]
    Protocol { vendor: &'static str, msg: String },
    #[error("{vendor}: {msg}")]
    Other { vendor: &'static str, msg: String },
}

impl ProviderError {
    pub fn retryable(&self) -> bool {
        matches!(self, ProviderError::RateLimited { .. } | ProviderError::Server { .. } | ProviderError::Connection { .. })
    }
}

// ---- speech to text ----------------------------------------------------------------------

/// What a streaming recogniser says.
#[derive(Debug, Clone, PartialEq)]
pub enum SttEvent {
    /// The recogniser heard speech begin (used for barge-in).
    SpeechStarted,
    /// Text that may still change.
    Interim { text: String },
    /// A segment whose text will not change.
    Final { text: String, confidence: f32 },
    /// The caller has probably finished: the turn's text, recognised early (a short pause).
    /// An `EndOfTurn` follows — with the same text unless the caller says more.
    Preflight { text: String },
    /// The caller finished a turn (endpointing / utterance end): the turn's whole text.
    EndOfTurn { text: String },
    /// The stream failed; the session is over.
    Error(String),
}

/// One live recognition stream (one per call).
#[async_trait]
pub trait SttSession: Send {
    /// 20 ms (or any length) of PCM16 at the provider's input rate.
    async fn send_audio(&mut self, pcm: &[i16]) -> Result<(), ProviderError>;
    /// The same audio with the call's speech detector's reading of it. Recognisers that cut
    /// utterances themselves use it instead of running a detector of their own; streaming
    /// vendors (which find their own endpoints) ignore it.
    async fn send_audio_with_activity(&mut self, pcm: &[i16], activity: crate::vad::VoiceActivity) -> Result<(), ProviderError> {
        let _ = activity;
        self.send_audio(pcm).await
    }
    /// Flush: recognise what was sent so far now.
    async fn finalize(&mut self) -> Result<(), ProviderError>;
    /// Next event; None when the stream has closed.
    async fn next_event(&mut self) -> Option<SttEvent>;
    async fn close(&mut self);
}

#[async_trait]
pub trait SttProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Sample rate the recogniser wants (8000 for μ-law passthrough, 16000 typical).
    fn input_rate(&self) -> u32;
    async fn start(&self) -> Result<Box<dyn SttSession>, ProviderError>;
}

// ---- language model ----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text of the arguments, as the model produced it.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Assistant turns that called tools carry them (to be replayed to the model).
    pub tool_calls: Vec<ToolCall>,
    /// Tool results name the call they answer.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A plain message: no tool calls, answering none.
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role, content: content.into(), tool_calls: vec![], tool_call_id: None }
    }
}

/// A tool the model may call: name, description, JSON Schema of its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    /// A piece of the reply text.
    TextDelta(String),
    /// A whole tool call, assembled from its fragments.
    ToolCall(ToolCall),
    /// The reply is complete (`finish_reason`).
    Done { finish_reason: String },
}

#[async_trait]
pub trait LlmProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Streams one reply. Dropping the receiver cancels the request.
    async fn stream(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> Result<mpsc::Receiver<Result<LlmEvent, ProviderError>>, ProviderError>;
}

// ---- text to speech ----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum TtsEvent {
    /// PCM16 at the provider's output rate.
    Audio(Vec<i16>),
    /// Everything pushed so far (after `flush`/`finish`) has been spoken.
    Done,
    Error(String),
}

/// One reply being spoken: text goes in sentence by sentence, audio comes out as it is made.
#[async_trait]
pub trait TtsStream: Send {
    async fn push_text(&mut self, text: &str) -> Result<(), ProviderError>;
    /// No more text: speak what is left, then `Done`.
    async fn finish(&mut self) -> Result<(), ProviderError>;
    /// Stop at once (barge-in): nothing more is generated.
    async fn cancel(&mut self);
    async fn next_event(&mut self) -> Option<TtsEvent>;
}

#[async_trait]
pub trait TtsProvider: Send + Sync {
    fn name(&self) -> &'static str;
    fn output_rate(&self) -> u32;
    async fn start(&self) -> Result<Box<dyn TtsStream>, ProviderError>;
}

/// Extracted form fields, by name.
pub type Fields = BTreeMap<String, String>;

pub mod cartesia;
pub mod deepgram;
pub mod elevenlabs;
pub mod http_util;
pub mod openai_chat;
pub mod openai_realtime;

// offline stack (no keys needed)
pub mod local_tts;
pub mod offline_stt;
pub mod offline_tts;
pub mod rules_llm;
pub mod utterance;

// optional offline models, each behind a cargo feature (scripts/models.sh fetches the models)
#[cfg(feature = "llama")]
pub mod llama_llm;
#[cfg(feature = "piper")]
pub mod piper_tts;
#[cfg(feature = "whisper")]
pub mod whisper_stt;
