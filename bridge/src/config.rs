//! Configuration: every setting is an environment variable and a `--flag` (design.md contract).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    pub twilio_auth_token: Option<String>,
    /// Twilio REST base URL (hang-up and transfer).
    #[arg(long, env = "TWILIO_API_BASE", default_value = "https://api.twilio.com")]
    pub twilio_api_base: String,
    /// Accept requests without a valid X-Twilio-Signature (development only).
    #[arg(long)]
    pub insecure_no_signature: bool,
    #[arg(long, env = "LIVEKIT_URL", default_value = "ws://127.0.0.1:7880")]
    pub livekit_url: String,
    #[arg(long, env = "LIVEKIT_API_KEY", default_value = "devkey")]
    pub livekit_api_key: String,
    #[arg(long, env = "LIVEKIT_API_SECRET", default_value = "secret", hide_env_values = true)]
    pub livekit_api_secret: String,
    /// Most concurrent calls; beyond it callers hear a busy message. 0 = no limit.
    #[arg(long, env = "MAX_CALLS", default_value_t = 0)]
    pub max_calls: usize,
    /// On SIGTERM, how long active calls may go on before they are ended.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    #[arg(long, env = "BRIDGE_MODE", value_enum, default_value = "stream")]
    pub mode: Mode,
    /// Agent to dispatch explicitly into each call's room (LiveKit agent dispatch); empty = automatic.
    #[arg(long, env = "AGENT_NAME", default_value = "")]
    pub agent_name: String,
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
    #[arg(long, env = "LIVEKIT_SIP_PASSWORD", default_value = "", hide_env_values = true)]
    pub sip_password: String,
    /// SIP transport parameter on the URI.
    #[arg(long, env = "LIVEKIT_SIP_TRANSPORT", default_value = "tcp")]
    pub sip_transport: String,
}

impl Config {
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
}
