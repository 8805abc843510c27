//! Configuration: every setting is an environment variable and a `--flag` (design.md contract).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use proto::dial_policy::NumberAllowList;
use secrecy::{ExposeSecret, SecretString};

/// The key and secret of `livekit-server --dev` (and devroom), used only with `--dev`.
pub const DEV_API_KEY: &str = "devkey";
pub const DEV_API_SECRET: &str = "secret";

/// A duration as a number of seconds (`10`, `0.5`) or with a unit (`500ms`, `15s`, `4h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 10, 500ms, 15s, 4h)"))
}

/// Why the configuration cannot run a bridge.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("TWILIO_AUTH_TOKEN is not set: refusing to accept unsigned Twilio requests (use --insecure-no-signature for local development)")]
    NoAuthToken,
    #[error("LIVEKIT_API_KEY and LIVEKIT_API_SECRET are not set: refusing to start (use --dev for a local livekit-server --dev or devroom, key devkey / secret secret)")]
    NoLiveKitKeys,
    #[error("BRIDGE_SECRET is set but shorter than {MIN_BRIDGE_SECRET} characters: stream tokens would be forgeable")]
    WeakBridgeSecret,
    #[error("{0} is set but empty: unset it or give it a value")]
    Empty(&'static str),
    #[error("TWILIO_FROM_NUMBER must be an E.164 number on the Twilio account (+ and up to 15 digits)")]
    BadFromNumber,
}

/// `BRIDGE_SECRET` keys the stream tokens: at least this long.
pub const MIN_BRIDGE_SECRET: usize = 16;

#[derive(Debug, Parser)]
#[command(name = "bridge", version, about = "Twilio phone calls into LiveKit rooms")]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP + Media Streams (the default).
    Serve,
    /// Create (idempotently) the LiveKit SIP inbound trunk and the dispatch rule for SIP mode.
    SipSetup,
}

/// Codec of the caller's track in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhoneCodec {
    /// PCMU when the server's `enabled_publish_codecs` lists it (livekit-server ≥ 1.9.1), else Opus.
    Auto,
    /// PCMU also when the server sends no codec list; Opus only when it lists others but not PCMU.
    Pcmu,
    /// Always Opus (decode the caller's μ-law, encode Opus).
    Opus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `<Connect><Stream>`: the bridge carries the audio itself.
    Stream,
    /// `<Dial><Sip>` to LiveKit SIP: the bridge only answers and provisions.
    Sip,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address.
    #[arg(long, env = "BRIDGE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Public base URL Twilio uses, e.g. https://bridge.example.com (signatures and the wss URL derive from it).
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    #[arg(long, env = "TWILIO_ACCOUNT_SID", default_value = "")]
    pub twilio_account_sid: String,
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<SecretString>,
    /// Twilio REST base URL (hang-up and transfer).
    #[arg(long, env = "TWILIO_API_BASE", default_value = "https://api.twilio.com")]
    pub twilio_api_base: String,
    /// Accept requests without a valid X-Twilio-Signature (development only).
    #[arg(long)]
    pub insecure_no_signature: bool,
    #[arg(long, env = "LIVEKIT_URL", default_value = "ws://127.0.0.1:7880")]
    pub livekit_url: String,
    /// Required unless --dev.
    #[arg(long, env = "LIVEKIT_API_KEY")]
    pub livekit_api_key: Option<String>,
    /// Required unless --dev.
    #[arg(long, env = "LIVEKIT_API_SECRET", hide_env_values = true)]
    pub livekit_api_secret: Option<SecretString>,
    /// Key for the stream tokens every replica must be able to check; by default derived from
    /// TWILIO_AUTH_TOKEN and LIVEKIT_API_SECRET, which every replica already shares.
    #[arg(long, env = "BRIDGE_SECRET", hide_env_values = true)]
    pub bridge_secret: Option<SecretString>,
    /// Redis shared by the replicas (redis://host:6379/0): one-time webhooks and streams across
    /// replicas, atomically. Without it the replicas use LiveKit itself (rooms and participants).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretString>,
    /// Development: without LIVEKIT_API_KEY/LIVEKIT_API_SECRET use devkey/secret (livekit-server --dev, devroom).
    #[arg(long)]
    pub dev: bool,
    /// Most concurrent calls; beyond it callers hear a busy message. 0 = no limit.
    #[arg(long, env = "MAX_CALLS", default_value_t = 0)]
    pub max_calls: usize,
    /// Numbers a transfer may dial: E.164 numbers or prefixes ending in `*`, comma-separated
    /// (`+15551234567,+44203*`). Empty: no transfer is allowed.
    #[arg(long, env = "TRANSFER_ALLOW", default_value = "")]
    pub transfer_allow: NumberAllowList,
    /// Numbers an outbound call may dial (same format as TRANSFER_ALLOW). Empty: none.
    #[arg(long, env = "DIAL_ALLOW", default_value = "")]
    pub dial_allow: NumberAllowList,
    /// Caller ID of outbound calls when the request gives no `sip_number` (a number on the
    /// Twilio account, E.164).
    #[arg(long, env = "TWILIO_FROM_NUMBER")]
    pub twilio_from_number: Option<String>,
    /// Answering-machine detection on outbound calls: DetectMessageEnd, Enable or off (a
    /// request's `X-Twilio-MachineDetection` header overrides it). The result becomes the phone
    /// participant's `sip.twilio.answeredBy`.
    #[arg(long, env = "OUTBOUND_AMD", default_value = "DetectMessageEnd")]
    pub outbound_amd: proto::outbound::AmdMode,
    /// How long an outbound call may ring when the request sets no `ringing_timeout` (LiveKit
    /// SIP's default).
    #[arg(long, env = "OUTBOUND_RINGING_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub outbound_ringing_timeout: Duration,
    /// Write a stereo WAV of every call here (left: the caller, right: what the caller heard),
    /// with its statistics in a JSON file beside it. Off when unset.
    #[arg(long, env = "RECORDINGS_DIR")]
    pub recordings_dir: Option<std::path::PathBuf>,
    /// Nobody else in the room publishing audio this long after the caller joined (or after
    /// everyone left): dispatch an agent again once, then the caller hears the fallback.
    #[arg(long, env = "AGENT_JOIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub agent_join_timeout: Duration,
    /// No message from Twilio for this long ends the call.
    #[arg(long, env = "MEDIA_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub media_timeout: Duration,
    /// Calls are ended after this long.
    #[arg(long, env = "MAX_CALL_DURATION", default_value = "4h", value_parser = parse_duration)]
    pub max_call_duration: Duration,
    /// What callers hear when nobody can take the call (no agent, LiveKit unreachable).
    #[arg(
        long,
        env = "FALLBACK_MESSAGE",
        default_value = "Sorry, we cannot take your call right now. Please try again later."
    )]
    pub fallback_message: String,
    /// Instead of the message, redirect the call to this TwiML URL (e.g. voicemail or a human queue).
    #[arg(long, env = "FALLBACK_URL")]
    pub fallback_url: Option<String>,
    /// Most open HTTP/WebSocket connections; beyond it new connections are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Time limit for one HTTP request (webhooks, API); also the time a client has to send its headers.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,
    /// On SIGTERM, how long active calls may go on before they are ended.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    #[arg(long, env = "BRIDGE_MODE", value_enum, default_value = "stream")]
    pub mode: Mode,
    /// Agent to dispatch explicitly into each call's room (LiveKit agent dispatch); empty = automatic.
    #[arg(long, env = "AGENT_NAME", default_value = "")]
    pub agent_name: String,
    /// Codec of the caller's track: PCMU carries Twilio's μ-law as it is (no decode, no
    /// encode); Opus is decoded and encoded.
    #[arg(long, env = "PHONE_CODEC", value_enum, default_value = "auto")]
    pub phone_codec: PhoneCodec,
    /// Opus complexity for the caller's track (0-10).
    #[arg(long, env = "OPUS_COMPLEXITY", default_value_t = 5)]
    pub opus_complexity: u8,
    /// Opus DTX on the caller's track: silence costs (almost) nothing. Note that Opus also
    /// classifies a steady pure tone as "not speech" and goes quiet on it.
    #[arg(long, env = "OPUS_DTX", default_value_t = true, action = clap::ArgAction::Set)]
    pub opus_dtx: bool,
    /// How far the pacer may run ahead of the caller's playback, ms.
    #[arg(long, env = "PACER_LEAD_MS", default_value_t = 80)]
    pub pacer_lead_ms: u64,
    /// Seconds a room stays after everyone left (CreateRoom empty_timeout).
    #[arg(long, env = "ROOM_EMPTY_TIMEOUT", default_value_t = 60)]
    pub room_empty_timeout: u32,
    /// Message callers hear when the bridge is full or draining.
    #[arg(long, env = "BUSY_MESSAGE", default_value = "All our agents are busy. Please call again later.")]
    pub busy_message: String,
    /// Log as JSON (one object per line, with call_sid on every call line).
    #[arg(long, env = "LOG_JSON", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_json: bool,
    // ---- SIP mode ----
    /// LiveKit SIP URI host, e.g. <project>.sip.livekit.cloud.
    #[arg(long, env = "LIVEKIT_SIP_HOST", default_value = "")]
    pub sip_host: String,
    #[arg(long, env = "LIVEKIT_SIP_USERNAME", default_value = "")]
    pub sip_username: String,
    #[arg(long, env = "LIVEKIT_SIP_PASSWORD", hide_env_values = true)]
    pub sip_password: Option<SecretString>,
    /// SIP transport parameter on the URI.
    #[arg(long, env = "LIVEKIT_SIP_TRANSPORT", default_value = "tcp")]
    pub sip_transport: String,
}

impl Config {
    /// Refuses configurations that would run insecurely without being asked to.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.twilio_auth_token.is_none() && !self.insecure_no_signature {
            return Err(ConfigError::NoAuthToken);
        }
        // An empty variable is "set" for clap: never let it stand for a secret or a URL.
        if self.bridge_secret.as_ref().is_some_and(|s| s.expose_secret().len() < MIN_BRIDGE_SECRET) {
            return Err(ConfigError::WeakBridgeSecret);
        }
        if self.twilio_token() == Some("") {
            return Err(ConfigError::Empty("TWILIO_AUTH_TOKEN"));
        }
        if self.livekit_api_secret.as_ref().is_some_and(|s| s.expose_secret().is_empty()) {
            return Err(ConfigError::Empty("LIVEKIT_API_SECRET"));
        }
        if self.fallback_url.as_deref() == Some("") {
            return Err(ConfigError::Empty("FALLBACK_URL"));
        }
        if self.redis_url.as_ref().is_some_and(|s| s.expose_secret().is_empty()) {
            return Err(ConfigError::Empty("REDIS_URL"));
        }
        if self.twilio_from_number.as_deref().is_some_and(|n| !proto::dial_policy::is_e164(n)) {
            return Err(ConfigError::BadFromNumber);
        }
        self.check_livekit()
    }

    /// LiveKit's key and secret are set, or `--dev` was given.
    pub fn check_livekit(&self) -> Result<(), ConfigError> {
        if (self.livekit_api_key.is_none() || self.livekit_api_secret.is_none()) && !self.dev {
            return Err(ConfigError::NoLiveKitKeys);
        }
        Ok(())
    }

    /// The LiveKit API key (devkey with `--dev` when none is set).
    pub fn livekit_key(&self) -> &str {
        self.livekit_api_key.as_deref().unwrap_or(DEV_API_KEY)
    }

    /// The LiveKit API secret (secret with `--dev` when none is set).
    pub fn livekit_secret(&self) -> &str {
        self.livekit_api_secret.as_ref().map(|s| s.expose_secret()).unwrap_or(DEV_API_SECRET)
    }

    /// The stream-token key: `BRIDGE_SECRET`, or derived from the Twilio auth token and the
    /// LiveKit API secret — the same on every replica with the same environment.
    pub fn stream_token_key(&self) -> [u8; 32] {
        match &self.bridge_secret {
            Some(s) => proto::stream_token::derive_key(&[s.expose_secret().as_bytes()]),
            None => proto::stream_token::derive_key(&[
                self.twilio_token().unwrap_or("").as_bytes(),
                self.livekit_secret().as_bytes(),
            ]),
        }
    }

    pub fn twilio_token(&self) -> Option<&str> {
        self.twilio_auth_token.as_ref().map(|s| s.expose_secret())
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    /// `PUBLIC_URL` without a trailing slash; falls back to the listen address for local runs.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }

    /// The URL Twilio signs for an HTTP path.
    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.public_base(), path_and_query)
    }

    /// The Media Streams URL: the public base with https→wss / http→ws… but TwiML only allows
    /// wss, so a plain-http base (local tests) still becomes wss; simulators connect with ws.
    pub fn stream_url(&self) -> String {
        let base = self.public_base();
        let rest = base.split_once("://").map(|(_, r)| r).unwrap_or(&base);
        format!("wss://{rest}/media-stream")
    }

    /// LiveKit's HTTP base for Twirp calls (ws→http, wss→https).
    pub fn livekit_http(&self) -> String {
        let u = self.livekit_url.trim_end_matches('/');
        if let Some(r) = u.strip_prefix("wss://") {
            format!("https://{r}")
        } else if let Some(r) = u.strip_prefix("ws://") {
            format!("http://{r}")
        } else {
            u.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["bridge"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().config
    }

    #[test]
    fn urls_derive_from_public_url() {
        let c = cfg(&["--public-url", "https://bridge.example.com/"]);
        assert_eq!(c.http_url("/incoming-call"), "https://bridge.example.com/incoming-call");
        assert_eq!(c.stream_url(), "wss://bridge.example.com/media-stream");
        let c = cfg(&["--public-url", "http://127.0.0.1:9000", "--livekit-url", "wss://lk.example.com"]);
        assert_eq!(c.stream_url(), "wss://127.0.0.1:9000/media-stream");
        assert_eq!(c.livekit_http(), "https://lk.example.com");
    }

    #[test]
    fn refuses_to_run_without_secrets_unless_told() {
        assert_eq!(cfg(&[]).check(), Err(ConfigError::NoAuthToken));
        assert_eq!(cfg(&["--twilio-auth-token", "t"]).check(), Err(ConfigError::NoLiveKitKeys));
        assert_eq!(cfg(&["--twilio-auth-token", "t", "--livekit-api-key", "k"]).check(), Err(ConfigError::NoLiveKitKeys));
        let c = cfg(&["--twilio-auth-token", "t", "--dev"]);
        assert_eq!(c.check(), Ok(()));
        assert_eq!((c.livekit_key(), c.livekit_secret()), ("devkey", "secret"));
        let c = cfg(&["--insecure-no-signature", "--livekit-api-key", "APIk", "--livekit-api-secret", "s3"]);
        assert_eq!(c.check(), Ok(()));
        assert_eq!((c.livekit_key(), c.livekit_secret()), ("APIk", "s3"));
    }

    #[test]
    fn empty_or_weak_secrets_are_refused() {
        let base = ["--twilio-auth-token", "t", "--dev"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            cfg(&v).check()
        };
        assert_eq!(with(&["--bridge-secret", ""]), Err(ConfigError::WeakBridgeSecret));
        assert_eq!(with(&["--bridge-secret", "short"]), Err(ConfigError::WeakBridgeSecret));
        assert_eq!(with(&["--bridge-secret", "0123456789abcdef"]), Ok(()));
        assert_eq!(with(&["--fallback-url", ""]), Err(ConfigError::Empty("FALLBACK_URL")));
        assert_eq!(with(&["--redis-url", ""]), Err(ConfigError::Empty("REDIS_URL")));
        assert!(Cli::try_parse_from(["bridge", "--recordings-dir", ""]).is_err(), "clap refuses an empty path");
        assert_eq!(with(&["--twilio-from-number", ""]), Err(ConfigError::BadFromNumber));
        assert_eq!(with(&["--twilio-from-number", "5550001111"]), Err(ConfigError::BadFromNumber));
        assert_eq!(with(&["--twilio-from-number", "+15550001111", "--recordings-dir", "/tmp/r"]), Ok(()));
        assert_eq!(cfg(&["--twilio-auth-token", "", "--dev"]).check(), Err(ConfigError::Empty("TWILIO_AUTH_TOKEN")));
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = cfg(&[
            "--twilio-auth-token",
            "SECRET-TWILIO",
            "--livekit-api-secret",
            "SECRET-LIVEKIT",
            "--sip-password",
            "SECRET-SIP",
            "--bridge-secret",
            "SECRET-BRIDGE-0123456789",
            "--redis-url",
            "redis://:SECRET-REDIS@localhost",
        ]);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("SECRET-"), "{dbg}");
        assert_eq!(c.twilio_token(), Some("SECRET-TWILIO"));
    }

    #[test]
    fn replicas_with_the_same_environment_share_the_stream_token_key() {
        let a = cfg(&["--twilio-auth-token", "t", "--livekit-api-secret", "s"]);
        let b = cfg(&["--twilio-auth-token", "t", "--livekit-api-secret", "s"]);
        assert_eq!(a.stream_token_key(), b.stream_token_key());
        assert_ne!(a.stream_token_key(), cfg(&["--twilio-auth-token", "t", "--livekit-api-secret", "x"]).stream_token_key());
        let explicit = cfg(&["--twilio-auth-token", "t", "--livekit-api-secret", "s", "--bridge-secret", "b"]);
        assert_ne!(explicit.stream_token_key(), a.stream_token_key());
        assert_eq!(explicit.stream_token_key(), cfg(&["--bridge-secret", "b"]).stream_token_key());
    }

    #[test]
    fn durations_and_allow_lists_parse() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        let c = cfg(&[]);
        assert_eq!(c.agent_join_timeout, Duration::from_secs(10));
        assert_eq!(c.media_timeout, Duration::from_secs(15));
        assert_eq!(c.max_call_duration, Duration::from_secs(4 * 3600));
        assert!(c.transfer_allow.is_empty() && c.dial_allow.is_empty());
        assert_eq!(c.outbound_amd, proto::outbound::AmdMode::DetectMessageEnd);
        assert_eq!(c.outbound_ringing_timeout, Duration::from_secs(30));
        assert!(c.recordings_dir.is_none() && c.twilio_from_number.is_none());
        assert_eq!(cfg(&["--outbound-amd", "off"]).outbound_amd, proto::outbound::AmdMode::Off);
        assert!(Cli::try_parse_from(["bridge", "--outbound-amd", "sometimes"]).is_err());
        let c = cfg(&["--transfer-allow", "+15551234567,+44203*"]);
        assert!(c.transfer_allow.allows("+442035550000"));
        assert!(Cli::try_parse_from(["bridge", "--transfer-allow", "*"]).is_err());
    }
}
