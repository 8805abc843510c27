//! Command line / environment configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;

/// devroom: a single-node LiveKit-protocol server for tests and the offline demo
/// (like `livekit-server --dev`). Never for production.
#[derive(Parser, Debug, Clone)]
#[command(name = "devroom", version, about, long_about = None)]
pub struct Config {
    /// HTTP/WebSocket listen address (`/rtc`, `/agent`, `/twirp/livekit.RoomService/*`,
    /// `/twirp/livekit.AgentDispatchService/*`). Port 0 picks a free port.
    #[arg(long, env = "DEVROOM_LISTEN", default_value = "127.0.0.1:7880")]
    pub listen: SocketAddr,

    /// API key accepted in tokens (the JWT `iss`).
    #[arg(long, env = "DEVROOM_API_KEY", default_value = "devkey")]
    pub api_key: String,

    /// API secret used to verify tokens (HS256) and sign webhooks.
    #[arg(long, env = "DEVROOM_API_SECRET", default_value = "secret", hide_env_values = true)]
    pub api_secret: String,

    /// UDP port carrying all WebRTC traffic (ICE/DTLS/SRTP/SCTP). 0 picks a free port.
    #[arg(long, env = "DEVROOM_RTC_PORT", default_value_t = 7882)]
    pub rtc_port: u16,

    /// TCP port for ICE over TCP (passive candidates, as livekit-server's `rtc.tcp_port`).
    /// Default 7881, or a free port when `--rtc-port 0` (tests run many servers at once).
    #[arg(long, env = "DEVROOM_TCP_PORT")]
    pub tcp_port: Option<u16>,

    /// Offer no UDP candidates and drop UDP traffic: clients must use ICE over TCP (a network
    /// that blocks UDP).
    #[arg(long, env = "DEVROOM_UDP_OFF")]
    pub udp_off: bool,

    /// IP address advertised in ICE candidates. Defaults to the listen IP, or 127.0.0.1
    /// when listening on an unspecified address.
    #[arg(long, env = "DEVROOM_NODE_IP")]
    pub node_ip: Option<IpAddr>,

    /// Webhook receiver URL (repeatable, or comma-separated).
    #[arg(long = "webhook-url", env = "DEVROOM_WEBHOOK_URLS", value_delimiter = ',')]
    pub webhook_urls: Vec<String>,

    /// Seconds an auto-created room stays open when nobody joins.
    #[arg(long, env = "DEVROOM_EMPTY_TIMEOUT", default_value_t = 300)]
    pub empty_timeout: u32,

    /// Seconds a room stays open after its last participant left.
    #[arg(long, env = "DEVROOM_DEPARTURE_TIMEOUT", default_value_t = 20)]
    pub departure_timeout: u32,

    /// Seconds a participant whose signal connection dropped (without `leave`) is kept so the
    /// client can resume (`/rtc?reconnect=1&sid=…`) without losing its media.
    #[arg(long, env = "DEVROOM_RESUME_WINDOW", default_value_t = 15)]
    pub resume_window: u32,

    /// Outgoing signal messages queued per participant before it is dropped as too slow.
    #[arg(long, env = "DEVROOM_SIGNAL_QUEUE", default_value_t = 256)]
    pub signal_queue: usize,

    /// Agent dispatch: milliseconds a worker has to answer a job offer (`availability`) before
    /// the job is offered to the next worker. Workers register on `/agent` (token with
    /// `video.agent`); every new room gets a job for the automatic agent (workers with no agent
    /// name) or for each agent named in `CreateRoom.agents`.
    #[arg(long, env = "DEVROOM_AGENT_OFFER_TIMEOUT_MS", default_value_t = 5000)]
    pub agent_offer_timeout_ms: u64,

    /// Seconds between `refresh_token` messages to each participant (livekit-server: 5 min;
    /// one is also sent at join and whenever a participant's claims change).
    #[arg(long, env = "DEVROOM_TOKEN_REFRESH_SECS", default_value_t = 300)]
    pub token_refresh_secs: u64,

    /// Seconds a subscriber offer may wait for its answer before the participant is told to
    /// reconnect (`leave{STATE_MISMATCH, RECONNECT}`), as livekit-server's negotiation timeout.
    #[arg(long, env = "DEVROOM_NEGOTIATION_TIMEOUT_SECS", default_value_t = 15)]
    pub negotiation_timeout_secs: u64,

    /// Publish a track on its first RTP packet, as livekit-server up to 1.8.1 did, instead of
    /// when the offer carrying its m-line arrives (1.8.2 and later, `FireOnTrackBySdp`): a
    /// client that only works with the latter stays silent on older servers.
    #[arg(long, env = "DEVROOM_PUBLISH_ON_RTP")]
    pub publish_on_rtp: bool,

    /// ICE-lite on the server side (livekit-server's `rtc.use_ice_lite`; off by default, so the
    /// server runs full ICE and clients must answer its connectivity checks).
    #[arg(long, env = "DEVROOM_ICE_LITE")]
    pub ice_lite: bool,

    /// Leave PCMU and PCMA out of the enabled codecs (`enabled_publish_codecs`, the media
    /// engine), as livekit-server before 1.9.1: Opus is the only audio codec.
    #[arg(long, env = "DEVROOM_G711_OFF")]
    pub g711_off: bool,

    /// Embedded TURN over UDP on this port (livekit.yaml `turn.udp_port`; 0 picks a free one).
    /// Offered in every `join` as `turn:<node ip>:<port>?transport=udp`.
    #[arg(long, env = "DEVROOM_TURN_PORT")]
    pub turn_port: Option<u16>,

    /// Embedded TURN over TLS on this port (`turn.tls_port`; 0 picks a free one), offered as
    /// `turns:<--turn-domain>:<port>?transport=tcp`. livekit-server always advertises port
    /// 443 (a TLS load balancer or `tls_port: 443` is expected in front); devroom advertises
    /// the port it listens on.
    #[arg(long, env = "DEVROOM_TURN_TLS_PORT")]
    pub turn_tls_port: Option<u16>,

    /// Name in the `turns:` url and in the certificate (`turn.domain`).
    #[arg(long, env = "DEVROOM_TURN_DOMAIN", default_value = "localhost")]
    pub turn_domain: String,

    /// Certificate chain and key (PEM) for TURN over TLS (`turn.cert_file`, `turn.key_file`).
    /// Without them devroom makes a self-signed certificate for `--turn-domain`.
    #[arg(long, env = "DEVROOM_TURN_CERT_FILE", requires = "turn_key_file")]
    pub turn_cert_file: Option<std::path::PathBuf>,

    #[arg(long, env = "DEVROOM_TURN_KEY_FILE", requires = "turn_cert_file")]
    pub turn_key_file: Option<std::path::PathBuf>,

    /// Write the self-signed TURN/TLS certificate (PEM) here, for clients to trust.
    #[arg(long, env = "DEVROOM_TURN_CERT_OUT")]
    pub turn_cert_out: Option<std::path::PathBuf>,

    /// Lifetime of the TURN credentials handed out at join (`turn.ttl_seconds`).
    #[arg(long, env = "DEVROOM_TURN_TTL_SECS", default_value_t = 300)]
    pub turn_ttl_secs: u64,

    /// Tell clients to use relayed candidates only (`ClientConfiguration.force_relay`, which
    /// the official SDKs honour as `iceTransportPolicy: "relay"`).
    #[arg(long, env = "DEVROOM_FORCE_RELAY")]
    pub force_relay: bool,
}

impl Config {
    /// The address put into ICE candidates.
    pub fn advertised_ip(&self) -> IpAddr {
        if let Some(ip) = self.node_ip {
            return ip;
        }
        let ip = self.listen.ip();
        if ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            ip
        }
    }

    pub fn rtc_bind(&self) -> SocketAddr {
        SocketAddr::new(self.listen.ip(), self.rtc_port)
    }

    pub fn tcp_bind(&self) -> SocketAddr {
        let port = self.tcp_port.unwrap_or(if self.rtc_port == 0 { 0 } else { 7881 });
        SocketAddr::new(self.listen.ip(), port)
    }

    pub fn empty_timeout(&self) -> Duration {
        Duration::from_secs(self.empty_timeout as u64)
    }

    pub fn departure_timeout(&self) -> Duration {
        Duration::from_secs(self.departure_timeout as u64)
    }
}
