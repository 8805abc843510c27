//! Configuration: the command line / environment ([`Cli`]) and the agent file ([`AgentSpec`],
//! one TOML file per agent, e.g. `agent/agents/incident.toml`).
//!
//! Everything a script needs is an environment variable, so `agent` can be started with no
//! flags at all: `LIVEKIT_URL`, `LIVEKIT_API_KEY`, `LIVEKIT_API_SECRET`, and optionally
//! `AGENT_ROOM` (join one room), `AGENT_NAME` (explicit dispatch), `AGENT_CONFIG`, `CALL_DB`,
//! `AGENT_METRICS_LISTEN`; `AGENT_MODE=realtime` (with `OPENAI_API_KEY`) for OpenAI Realtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The seed agent, compiled in so the binary runs without its source tree.
pub const DEFAULT_AGENT_TOML: &str = include_str!("../agents/incident.toml");

#[derive(Clone, clap::Parser)]
#[command(
    name = "agent",
    version,
    about = "callbridge voice agent: joins call rooms and answers the phone participant (VAD → STT → LLM → TTS, or OpenAI Realtime)"
)]
pub struct Cli {
    /// Join this one room directly (e.g. `call-CA…`) instead of registering as a worker.
    #[arg(long, env = "AGENT_ROOM")]
    pub room: Option<String>,
    /// LiveKit server URL (ws://, wss://, http:// or https://).
    #[arg(long, env = "LIVEKIT_URL")]
    pub livekit_url: String,
    #[arg(long, env = "LIVEKIT_API_KEY")]
    pub livekit_api_key: String,
    #[arg(long, env = "LIVEKIT_API_SECRET", hide_env_values = true)]
    pub livekit_api_secret: String,
    /// Worker mode: register under this name for explicit dispatch. Empty: automatic dispatch
    /// (a job for every new room).
    #[arg(long, env = "AGENT_NAME", default_value = "")]
    pub agent_name: String,
    /// Participant identity in `--room` mode (default `agent-<room>`).
    #[arg(long, env = "AGENT_IDENTITY")]
    pub identity: Option<String>,
    /// Agent file (TOML). Default: the built-in incident-intake agent.
    #[arg(long, env = "AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// SQLite file for call records.
    #[arg(long, env = "CALL_DB", default_value = "callbridge-calls.db")]
    pub db: PathBuf,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long, env = "AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Worker mode: most calls at once (beyond it the worker reports itself full).
    #[arg(long, env = "AGENT_MAX_JOBS", default_value_t = 8)]
    pub max_jobs: u32,
    /// Speech recogniser: `auto` (Deepgram when DEEPGRAM_API_KEY is set, else Whisper when
    /// built with `--features whisper` and WHISPER_MODEL_DIR is set, else offline),
    /// `offline` (pocketsphinx), `whisper` or `deepgram`.
    #[arg(long, env = "AGENT_STT", default_value = "auto")]
    pub stt: String,
    /// Language model: `auto` (OpenAI, then Groq, by key; else rules), `rules` (the offline
    /// rule-based dialog), `llama` (local GGUF model, `--features llama`, LLAMA_MODEL),
    /// `openai` or `groq`; `openai-realtime` selects `--mode realtime`.
    #[arg(long, env = "AGENT_LLM", default_value = "auto")]
    pub llm: String,
    /// Speech synthesiser: `auto` (Cartesia with CARTESIA_API_KEY + CARTESIA_VOICE_ID, then
    /// ElevenLabs, by key; else Piper when built with `--features piper` and PIPER_MODEL is
    /// set; else offline), `offline` (espeak-ng), `piper`, `cartesia` or `elevenlabs`.
    #[arg(long, env = "AGENT_TTS", default_value = "auto")]
    pub tts: String,
    /// How long to wait for the phone participant after joining, in seconds.
    #[arg(long, env = "AGENT_PHONE_WAIT_SECS", default_value_t = 60)]
    pub phone_wait_secs: u64,
    /// Conversation mode: `cascaded` (VAD → STT → LLM → TTS), `realtime` (OpenAI Realtime
    /// speech to speech over WebSocket, μ-law 8 kHz both ways, server VAD; needs
    /// OPENAI_API_KEY) or `auto` (realtime when `--llm openai-realtime`, else cascaded). In
    /// realtime mode `--tts` only speaks the fallback lines when the vendor fails.
    #[arg(long, env = "AGENT_MODE", default_value = "auto")]
    pub mode: String,
    /// Realtime mode: WebSocket base URL up to the API version (`…/realtime` is appended).
    #[arg(
        long,
        env = "OPENAI_REALTIME_BASE_URL",
        default_value = "wss://api.openai.com/v1"
    )]
    pub realtime_base_url: String,
    /// Realtime mode: event vocabulary, `ga` or `beta` (header `OpenAI-Beta: realtime=v1`).
    #[arg(long, env = "OPENAI_REALTIME_API", default_value = "ga")]
    pub realtime_api: String,
    /// Realtime mode: model (default gpt-realtime; beta: gpt-4o-realtime-preview).
    #[arg(long, env = "OPENAI_REALTIME_MODEL")]
    pub realtime_model: Option<String>,
    /// Realtime mode: voice (alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin,
    /// cedar; default marin, beta alloy).
    #[arg(long, env = "OPENAI_REALTIME_VOICE")]
    pub realtime_voice: Option<String>,
    /// Realtime mode: model transcribing the caller for transcripts and the call record
    /// (`none` turns it off).
    #[arg(
        long,
        env = "OPENAI_REALTIME_TRANSCRIBE",
        default_value = "gpt-4o-mini-transcribe"
    )]
    pub realtime_transcribe: String,
    /// Voice activity detector: `auto` (Silero when its weights are found, else energy),
    /// `silero` or `energy`.
    #[arg(long, env = "AGENT_VAD", default_value = "auto")]
    pub vad: String,
    /// Silero VAD model (`silero_vad_16k_op15.onnx` from the PyPI wheel; scripts/models.sh
    /// silero). Default `models/silero-vad/silero_vad_16k_op15.onnx`.
    #[arg(long, env = "SILERO_VAD_MODEL")]
    pub silero_vad_model: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, how long running calls may go on before the agent says goodbye
    /// and hangs up, in seconds.
    #[arg(long = "drain-timeout", env = "AGENT_DRAIN_TIMEOUT", default_value_t = 120)]
    pub drain_timeout_secs: u64,
    /// Warm transfers: the base URL of LiveKit's SIP API that dials the person in — the
    /// bridge's (`CreateSIPParticipant` with the `sip.call` grant). Unset: a warm transfer tells
    /// the caller nobody could take the call.
    #[arg(long, env = "AGENT_SIP_URL")]
    pub sip_url: Option<String>,
    /// Store the keys callers press in the call record (never in the logs).
    #[arg(long, env = "RECORD_DTMF", default_value_t = false, action = clap::ArgAction::Set)]
    pub record_dtmf: bool,
}

/// Shown without the API secret.
impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("room", &self.room)
            .field("livekit_url", &self.livekit_url)
            .field("livekit_api_key", &self.livekit_api_key)
            .field("livekit_api_secret", &"<redacted>")
            .field("agent_name", &self.agent_name)
            .field("config", &self.config)
            .field("db", &self.db)
            .field("stt", &self.stt)
            .field("llm", &self.llm)
            .field("tts", &self.tts)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// One agent: who it is, what it says, what it collects. See `agents/incident.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub name: String,
    /// System prompt for a cloud LLM (the rules dialog does not need it).
    pub persona: String,
    /// First thing said when the caller is there.
    pub greeting: String,
    /// Said when the form is complete, before hanging up.
    pub closing: String,
    /// The one number `transfer` goes to when the caller asks for a person (E.164). With
    /// `[transfers]` the model names a destination instead; it never chooses a number.
    #[serde(default)]
    pub transfer_number: Option<String>,
    /// Named transfer destinations: `sales = "+1555…"` (E.164, a cold transfer), or a table
    /// `[transfers.sales] number = "+1555…", warm = true` (the agent dials the person into the
    /// room, briefs them, then leaves).
    #[serde(default)]
    pub transfers: BTreeMap<String, TransferTarget>,
    /// Said to the caller when a warm transfer's person did not answer or declined
    /// (`{destination}` is replaced).
    #[serde(default = "default_transfer_failed_line")]
    pub transfer_failed_line: String,
    /// Said before a transfer.
    #[serde(default = "default_transfer_line")]
    pub transfer_line: String,
    /// Said when the rules dialog did not understand.
    #[serde(default = "default_reprompt")]
    pub reprompt: String,
    #[serde(default)]
    pub voice: VoiceSpec,
    #[serde(default)]
    pub turn: TurnSpec,
    #[serde(default)]
    pub intents: IntentSpec,
    #[serde(default)]
    pub stt: SttSpec,
    /// Calls the agent places (or answers) where the far end may be a machine: keypad tones,
    /// what to do on an answering machine.
    #[serde(default)]
    pub outbound: OutboundSpec,
    /// The form, asked in this order.
    pub fields: Vec<FieldSpec>,
}

fn default_transfer_line() -> String {
    "Please hold while I transfer you.".into()
}
fn default_transfer_failed_line() -> String {
    "Sorry, nobody from {destination} could take the call right now. I am back with you.".into()
}
fn default_reprompt() -> String {
    "Sorry, I did not catch that.".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceSpec {
    /// espeak-ng voice name.
    #[serde(default = "default_voice")]
    pub espeak_voice: String,
    /// Words per minute for espeak-ng.
    #[serde(default = "default_wpm")]
    pub espeak_wpm: u32,
}

fn default_voice() -> String {
    "en-us".into()
}
fn default_wpm() -> u32 {
    165
}

impl Default for VoiceSpec {
    fn default() -> Self {
        VoiceSpec {
            espeak_voice: default_voice(),
            espeak_wpm: default_wpm(),
        }
    }
}

/// Turn-taking: voice activity, end of turn and barge-in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnSpec {
    /// Caller speech while the agent talks must last this long to interrupt it.
    pub min_interrupt_ms: u32,
    /// Silence after speech that ends the caller's turn (VAD hangover).
    pub end_of_speech_ms: u32,
    /// Speech shorter than this is a click or a cough, not a turn.
    pub min_speech_ms: u32,
    /// Frames louder than the noise floor by this many dB are speech (floor adapts).
    pub vad_margin_db: f32,
    /// Frames below this level (dBFS) are never speech.
    pub vad_min_dbfs: f32,
    /// Quiet between two agent replies (each is named to the bridge, so this is for the
    /// caller's ear, not for the bridge's bookkeeping).
    pub reply_gap_ms: u32,
    /// After the STT is told to finalize, how long to wait for its end of turn.
    pub stt_final_timeout_ms: u32,
    /// Words the recogniser must hear before the caller's speech stops the agent: "uh-huh",
    /// "okay" and "yeah" while it talks are backchannels, not interruptions.
    pub min_interruption_words: u32,
    /// Caller speech this long stops the agent even before any words are recognised (a long
    /// turn the recogniser has not caught up with). It may turn out a false interruption.
    pub vad_interrupt_ms: u32,
    /// After a stop without words, how long after the caller's sound ends to wait for words
    /// before the agent resumes from what the caller heard.
    pub false_interruption_timeout_ms: u32,
    /// Resume after a false interruption (else the reply is dropped, as a real interruption).
    pub resume_false_interruption: bool,
    /// Start the reply on the recogniser's early transcript of a turn and keep it if the final
    /// transcript matches.
    pub preemptive_reply: bool,
}

impl Default for TurnSpec {
    fn default() -> Self {
        TurnSpec {
            min_interrupt_ms: 300,
            end_of_speech_ms: 500,
            min_speech_ms: 120,
            vad_margin_db: 12.0,
            vad_min_dbfs: -50.0,
            reply_gap_ms: 300,
            stt_final_timeout_ms: 1500,
            min_interruption_words: 2,
            vad_interrupt_ms: 1000,
            false_interruption_timeout_ms: 1500,
            resume_false_interruption: true,
            preemptive_reply: true,
        }
    }
}

/// Phrases that mean something whatever field is being asked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntentSpec {
    pub repeat: Vec<String>,
    pub transfer: Vec<String>,
    pub goodbye: Vec<String>,
}

impl Default for IntentSpec {
    fn default() -> Self {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        IntentSpec {
            repeat: v(&[
                "repeat that",
                "say that again",
                "pardon",
                "what did you say",
            ]),
            transfer: v(&[
                "operator",
                "real person",
                "a human",
                "transfer me",
                "speak to someone",
            ]),
            goodbye: v(&["goodbye", "bye bye", "hang up"]),
        }
    }
}

/// The offline recogniser's language model is built from these plus every field's examples.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SttSpec {
    /// `phrases` (default): a small language model made from the agent's expected phrases;
    /// `general`: pocketsphinx's general en-us model.
    pub model: Option<String>,
    /// More sentences callers might say.
    pub phrases: Vec<String>,
    /// More single words (names, places).
    pub vocabulary: Vec<String>,
}

/// One `[transfers]` destination.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TransferTarget {
    /// `sales = "+1555…"`: a cold transfer (Twilio `<Dial>`).
    Number(String),
    /// `[transfers.sales] number = "+1555…", warm = true`.
    Table(TransferTable),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferTable {
    pub number: String,
    #[serde(default)]
    pub warm: bool,
}

impl TransferTarget {
    pub fn number(&self) -> &str {
        match self {
            TransferTarget::Number(n) => n,
            TransferTarget::Table(t) => &t.number,
        }
    }

    pub fn is_warm(&self) -> bool {
        matches!(self, TransferTarget::Table(TransferTable { warm: true, .. }))
    }
}

impl From<&str> for TransferTarget {
    fn from(n: &str) -> Self {
        TransferTarget::Number(n.to_string())
    }
}

/// What to do when Twilio's answering-machine detection (`sip.twilio.answeredBy` on the phone
/// participant) says a machine answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMachine {
    /// Hang up at once: no message on anyone's voicemail.
    #[default]
    Hangup,
    /// Wait for the greeting's end (the beep), say `machine_message`, hang up.
    Message,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSpec {
    /// Offer the model the `press_keys` tool (keypad tones to the far end, e.g. an IVR menu).
    pub press_keys: bool,
    pub on_machine: OnMachine,
    /// Left on the voicemail with `on_machine = "message"`.
    pub machine_message: String,
    /// After `machine_start`, how long to wait for the greeting's end before leaving the
    /// message anyway (Twilio's `Enable` mode never says when it ends).
    pub machine_wait_ms: u32,
}

impl Default for OutboundSpec {
    fn default() -> Self {
        OutboundSpec { press_keys: false, on_machine: OnMachine::Hangup, machine_message: String::new(), machine_wait_ms: 30_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// A person's name: a few words, title-cased.
    Name,
    /// Free text (a place, a description).
    Text,
    /// One of `choices`.
    Choice,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    /// What the agent asks.
    pub question: String,
    pub kind: FieldKind,
    /// Human description (tool schema for a cloud LLM).
    #[serde(default)]
    pub description: String,
    /// Extraction hint: the value follows one of these phrases ("my name is", "it happened at").
    #[serde(default)]
    pub after: Vec<String>,
    /// Extraction hint: only when one of these words is said is the field taken without being
    /// asked (for choice fields; `after` phrases always count).
    #[serde(default)]
    pub cues: Vec<String>,
    /// Choice fields: value → words that mean it.
    #[serde(default)]
    pub choices: BTreeMap<String, Vec<String>>,
    /// Longest value in words.
    #[serde(default = "default_max_words")]
    pub max_words: usize,
    /// Sentences a caller might answer with (for the offline recogniser).
    #[serde(default)]
    pub examples: Vec<String>,
    /// Words the answer may contain (names, places) for the offline recogniser.
    #[serde(default)]
    pub vocabulary: Vec<String>,
    /// Acknowledgement before the next question; `{value}` is replaced.
    #[serde(default)]
    pub ack: Option<String>,
}

fn default_max_words() -> usize {
    12
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("agent file {path}: {err}")]
    Parse { path: String, err: String },
    #[error("agent file {path}: {msg}")]
    Invalid { path: String, msg: String },
}

impl AgentSpec {
    pub fn from_toml(text: &str, path: &str) -> Result<AgentSpec, ConfigError> {
        let spec: AgentSpec = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            err: e.to_string(),
        })?;
        spec.validate().map_err(|msg| ConfigError::Invalid {
            path: path.into(),
            msg,
        })?;
        Ok(spec)
    }

    pub fn load(path: Option<&std::path::Path>) -> Result<AgentSpec, ConfigError> {
        match path {
            None => AgentSpec::from_toml(DEFAULT_AGENT_TOML, "<built-in incident.toml>"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|err| ConfigError::Read {
                    path: p.display().to_string(),
                    err,
                })?;
                AgentSpec::from_toml(&text, &p.display().to_string())
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.fields.is_empty() {
            return Err("the form has no fields".into());
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fields {
            if f.name.is_empty() || !seen.insert(f.name.as_str()) {
                return Err(format!("field name {:?} is empty or repeated", f.name));
            }
            if f.kind == FieldKind::Choice && f.choices.is_empty() {
                return Err(format!("choice field {:?} has no choices", f.name));
            }
            if f.max_words == 0 {
                return Err(format!("field {:?}: max_words must be at least 1", f.name));
            }
        }
        if self.turn.min_interrupt_ms > 5_000 || self.turn.end_of_speech_ms < 100 {
            return Err("turn: min_interrupt_ms must be ≤ 5000 and end_of_speech_ms ≥ 100".into());
        }
        if self.turn.vad_interrupt_ms < self.turn.min_interrupt_ms || self.turn.false_interruption_timeout_ms > 30_000 {
            return Err("turn: vad_interrupt_ms must be ≥ min_interrupt_ms, false_interruption_timeout_ms ≤ 30000".into());
        }
        let numbers = self.transfer_number.iter().map(|n| ("transfer_number", n.as_str())).chain(self.transfers.iter().map(|(k, t)| (k.as_str(), t.number())));
        for (name, n) in numbers {
            if !is_e164(n) {
                return Err(format!("transfer destination {name:?}: {n:?} is not an E.164 number (+ and 7 to 15 digits)"));
            }
        }
        if self.transfers.keys().any(|k| k.trim().is_empty() || k.len() > 40) {
            return Err("[transfers]: destination names must be 1-40 characters".into());
        }
        let o = &self.outbound;
        if o.on_machine == OnMachine::Message && o.machine_message.trim().is_empty() {
            return Err("[outbound]: on_machine = \"message\" needs a machine_message".into());
        }
        if o.machine_message.chars().count() > 1000 || !(1_000..=120_000).contains(&o.machine_wait_ms) {
            return Err("[outbound]: machine_message must be at most 1000 characters, machine_wait_ms 1000-120000".into());
        }
        Ok(())
    }

    /// Where `transfer` may go: the named destinations, else the single `transfer_number`
    /// (named `default`), else nowhere.
    pub fn transfer_targets(&self) -> Vec<(String, String)> {
        if !self.transfers.is_empty() {
            return self.transfers.iter().map(|(k, v)| (k.clone(), v.number().to_string())).collect();
        }
        self.transfer_number.iter().map(|n| ("default".to_string(), n.clone())).collect()
    }

    /// The destination is configured as a warm transfer.
    pub fn is_warm_transfer(&self, destination: &str) -> bool {
        self.transfers.get(destination).is_some_and(TransferTarget::is_warm)
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Every sentence the caller is expected to say (offline recogniser corpus).
    pub fn expected_phrases(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in &self.fields {
            out.extend(f.examples.iter().cloned());
            for words in f.choices.values() {
                out.extend(words.iter().cloned());
            }
        }
        out.extend(self.stt.phrases.iter().cloned());
        out.extend(self.intents.repeat.iter().cloned());
        out.extend(self.intents.transfer.iter().cloned());
        out.extend(self.intents.goodbye.iter().cloned());
        out
    }

    /// Extra words for the offline recogniser (unigrams).
    /// The fields' example answers: what a caller typically says, as whole sentences.
    pub fn expected_examples(&self) -> Vec<String> {
        self.fields.iter().flat_map(|f| f.examples.iter().cloned()).collect()
    }

    pub fn expected_words(&self) -> Vec<String> {
        let mut out: Vec<String> = self.stt.vocabulary.clone();
        for f in &self.fields {
            out.extend(f.vocabulary.iter().cloned());
        }
        out
    }
}

/// `+` and 7 to 15 digits, the first not 0.
pub fn is_e164(n: &str) -> bool {
    let Some(d) = n.strip_prefix('+') else { return false };
    (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_incident_agent_parses() {
        let a = AgentSpec::load(None).unwrap();
        assert_eq!(a.name, "incident");
        let names: Vec<_> = a.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["name", "location", "what_happened", "severity"]);
        assert_eq!(a.turn.min_interrupt_ms, 300);
        assert!(!a.expected_phrases().is_empty());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(matches!(
            AgentSpec::from_toml("name = 1", "x"),
            Err(ConfigError::Parse { .. })
        ));
        let t = r#"name="a"
persona="p"
greeting="g"
closing="c"
fields=[]"#;
        assert!(matches!(
            AgentSpec::from_toml(t, "x"),
            Err(ConfigError::Invalid { .. })
        ));
        let bad = DEFAULT_AGENT_TOML.replace("transfer_number = \"+15550100200\"", "transfer_number = \"0800 CALL ME\"");
        assert!(matches!(AgentSpec::from_toml(&bad, "x"), Err(ConfigError::Invalid { .. })));
        assert!(is_e164("+15550100200") && !is_e164("+1555") && !is_e164("15550100200") && !is_e164("+0555010020"));
    }

    #[test]
    fn outbound_settings_are_checked() {
        let with = |t: &str| AgentSpec::from_toml(&format!("{DEFAULT_AGENT_TOML}\n[outbound]\n{t}"), "x");
        let a = AgentSpec::load(None).unwrap();
        assert_eq!((a.outbound.press_keys, a.outbound.on_machine), (false, OnMachine::Hangup), "off unless asked for");
        let o = with("press_keys = true\non_machine = \"message\"\nmachine_message = \"Call us back.\"").unwrap().outbound;
        assert_eq!((o.press_keys, o.on_machine, o.machine_wait_ms), (true, OnMachine::Message, 30_000));
        for bad in ["on_machine = \"message\"", "on_machine = \"sing\"", "machine_wait_ms = 0", "dial = \"+1900\""] {
            assert!(with(bad).is_err(), "{bad}");
        }
    }
}
