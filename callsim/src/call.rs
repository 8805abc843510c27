//! One simulated call, as Twilio places it: the signed voice webhook, the TwiML answer, the
//! signed Media Streams WebSocket (connected, start, 20 ms media, dtmf, stop), the modelled
//! playback buffer echoing marks and honouring `clear`, and the signed status callback.
//!
//! Everything the server sends is untrusted: it is parsed into typed errors and counted,
//! never unwrapped.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use proto::twilio::{Inbound, MediaChunk, Outbound, StreamStart};
use proto::twiml::{Answer, ConnectStream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::audio_source::{self, AudioSource, FRAME, FRAME_BYTES};
use crate::clock::SimClock;
use crate::config::{Action, CallConfig};
use crate::playback::{Playback, PlaybackConfig};
use crate::report::{ClosedBy, Outcome, Report, MAX_RTTS};
use crate::{sid, webhook};

/// Largest WebSocket message or frame accepted from the server.
pub const MAX_WS_MESSAGE: usize = 1 << 20;
/// How long to wait for the server's close after `stop`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Most messages handled in one go in fast mode before the clock moves on.
const FAST_DRAIN: usize = 256;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What happened during a call, as it happens (see [`spawn_call`]). Times are stream times.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// `connected` and `start` have been sent.
    Started { call_sid: String, stream_sid: String, custom_parameters: Vec<(String, String)> },
    /// An outbound `media` payload from the server (μ-law).
    Media { at: Duration, payload: Vec<u8> },
    /// A `mark` from the server.
    Mark { at: Duration, name: String },
    /// The simulator echoed a mark: its audio played, or a `clear` flushed it.
    MarkEchoed { at: Duration, name: String, cleared: bool },
    Clear { at: Duration },
    /// A message Twilio would reject.
    Invalid { at: Duration, reason: String },
    /// A `dtmf` message was sent.
    DtmfSent { at: Duration, digit: char },
    /// A DTMF key was heard in the audio from the server.
    DtmfHeard { at: Duration, key: char },
    /// The stream is over.
    Ended { by: ClosedBy },
}

/// A call running in its own task, with a way in (actions) and a way out (events).
pub struct Call {
    actions: mpsc::Sender<Action>,
    events: mpsc::Receiver<CallEvent>,
    task: JoinHandle<anyhow::Result<Report>>,
}

impl Call {
    /// Sends an action to the running call; `false` once the call is over.
    pub async fn send(&self, action: Action) -> bool {
        self.actions.send(action).await.is_ok()
    }

    pub async fn dtmf(&self, digit: char) -> bool {
        self.send(Action::Dtmf(digit)).await
    }

    /// PCM16 8 kHz mono to send next.
    pub async fn send_audio(&self, pcm: Vec<i16>) -> bool {
        self.send(Action::Audio(pcm)).await
    }

    pub async fn hangup(&self) -> bool {
        self.send(Action::Hangup).await
    }

    /// The next live event; `None` after the call ended and all events were read. The channel
    /// is bounded: events a test does not read in time are dropped and counted
    /// (`Report::events_dropped`), the call never waits for the reader.
    pub async fn next_event(&mut self) -> Option<CallEvent> {
        self.events.recv().await
    }

    pub fn events(&mut self) -> &mut mpsc::Receiver<CallEvent> {
        &mut self.events
    }

    /// Waits for the call to end.
    pub async fn finish(self) -> anyhow::Result<Report> {
        let Call { actions, events, task } = self;
        drop(events);
        let r = task.await;
        drop(actions);
        r.map_err(|e| anyhow::anyhow!("call task failed: {e}"))?
    }
}

/// Places one call and waits for it to end. `Err` only for local problems (bad config, an
/// unreadable audio file); everything the server does is in the [`Report`].
pub async fn run_call(cfg: CallConfig) -> anyhow::Result<Report> {
    cfg.validate()?;
    let http = webhook::client(cfg.timeout)?;
    drive(cfg, http, None, None).await
}

/// Places one call in a new task, returning a [`Call`] to act on it and watch it.
pub fn spawn_call(cfg: CallConfig) -> Call {
    let (action_tx, action_rx) = mpsc::channel(64);
    let (event_tx, event_rx) = mpsc::channel(cfg.event_capacity.max(1));
    let task = tokio::spawn(async move {
        cfg.validate()?;
        let http = webhook::client(cfg.timeout)?;
        drive(cfg, http, Some(action_rx), Some(event_tx)).await
    });
    Call { actions: action_tx, events: event_rx, task }
}

/// The URLs of a `<Stream>`: the one signed (wss, as Twilio connects) and the one dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUrls {
    pub sign: String,
    pub connect: String,
    pub tls: bool,
    pub warnings: Vec<String>,
}

/// Resolves a `<Stream url>` the way Twilio does: relative URLs against the webhook URL,
/// `wss` only (error 31922), the query string dropped. Twilio cannot reach loopback, so a
/// loopback host (127.x, ::1, localhost) is dialled with plain `ws://` while the signature
/// still covers the `wss://` URL.
pub fn stream_urls(incoming_url: &str, given: &str) -> Result<StreamUrls, String> {
    let given = given.trim();
    if given.is_empty() {
        return Err("<Stream> has no url".into());
    }
    let mut warnings = Vec::new();
    let absolute = if let Some((scheme, _)) = given.split_once("://").filter(|(s, _)| !s.contains('/')) {
        if !scheme.eq_ignore_ascii_case("wss") {
            return Err(format!("<Stream url> must be wss:// (Twilio error 31922): {given}"));
        }
        given.to_owned()
    } else {
        let base = url::Url::parse(incoming_url).map_err(|e| format!("webhook URL {incoming_url}: {e}"))?;
        let joined = base.join(given).map_err(|e| format!("<Stream url> {given}: {e}"))?;
        let rest = joined.as_str().split_once("://").map(|(_, r)| r.to_owned()).unwrap_or_default();
        warnings.push(format!("relative <Stream url> {given} resolved against the webhook URL"));
        format!("wss://{rest}")
    };
    let mut sign = absolute;
    if let Some(i) = sign.find('#') {
        sign.truncate(i);
    }
    if let Some(i) = sign.find('?') {
        warnings.push(format!("Twilio drops the query string of <Stream url> (error 31920): {sign}"));
        sign.truncate(i);
    }
    let parsed = url::Url::parse(&sign).map_err(|e| format!("<Stream url> {sign}: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(format!("<Stream url> has no host: {sign}")),
    };
    let connect = if loopback { format!("ws://{}", &sign["wss://".len()..]) } else { sign.clone() };
    Ok(StreamUrls { sign, connect, tls: !loopback, warnings })
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS setup: {e}"))
        })
        .clone()
}

/// Opens the Media Streams WebSocket with `X-Twilio-Signature` over the wss URL.
async fn connect(urls: &StreamUrls, auth_token: &str, timeout: Duration) -> Result<Ws, (Outcome, String)> {
    let failed = |e: String| (Outcome::Failed, e);
    let mut req = urls.connect.as_str().into_client_request().map_err(|e| failed(format!("{}: {e}", urls.connect)))?;
    let no_params: [(&str, &str); 0] = [];
    let signature = proto::signature::compute(auth_token, &urls.sign, &no_params);
    let headers = req.headers_mut();
    headers.insert("X-Twilio-Signature", HeaderValue::from_str(&signature).map_err(|e| failed(e.to_string()))?);
    headers.insert("User-Agent", HeaderValue::from_static("Twilio.TmeWs/1.0"));
    let config = WebSocketConfig::default().max_message_size(Some(MAX_WS_MESSAGE)).max_frame_size(Some(MAX_WS_MESSAGE));
    let connector = if urls.tls { Connector::Rustls(tls_config().map_err(failed)?) } else { Connector::Plain };
    let attempt = tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, Some(connector));
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(failed(format!("WebSocket {}: no answer in {timeout:?}", urls.connect))),
        Ok(Err(tungstenite::Error::Http(resp))) => Err((
            Outcome::StreamRefused,
            format!("WebSocket {} refused: HTTP {}", urls.connect, resp.status().as_u16()),
        )),
        Ok(Err(e)) => Err(failed(format!("WebSocket {}: {e}", urls.connect))),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// Runs the whole call. `Err` only for a local problem with the audio source.
pub(crate) async fn drive(
    cfg: CallConfig,
    http: reqwest::Client,
    control: Option<mpsc::Receiver<Action>>,
    events: Option<mpsc::Sender<CallEvent>>,
) -> anyhow::Result<Report> {
    let source = AudioSource::new(&cfg.audio, cfg.duration)?;
    let wall0 = Instant::now();
    let call_sid = cfg.call_sid.clone().unwrap_or_else(|| sid::sid("CA"));
    let account_sid = cfg.account_sid.clone().unwrap_or_else(|| sid::sid("AC"));
    let mut report = Report::new(call_sid.clone());
    let incoming_url = cfg.incoming_url();
    let mut params: Vec<(&str, String)> = vec![
        ("CallSid", call_sid.clone()),
        ("AccountSid", account_sid.clone()),
        ("From", cfg.from.clone()),
        ("To", cfg.to.clone()),
        ("CallStatus", if cfg.outbound { "in-progress" } else { "ringing" }.into()),
        ("Direction", if cfg.outbound { "outbound-api" } else { "inbound" }.into()),
        ("ApiVersion", "2010-04-01".into()),
    ];

    let answer = match webhook::post_signed(&http, &incoming_url, &cfg.auth_token, &params).await {
        Err(e) => {
            report.fail(Outcome::Failed, e);
            None
        }
        Ok((status, body)) => {
            report.webhook_status = Some(status);
            if !(200..300).contains(&status) {
                let snippet: String = body.chars().take(200).collect();
                report.fail(Outcome::WebhookRefused, format!("POST {incoming_url}: HTTP {status} {snippet}"));
                None
            } else {
                match proto::twiml::parse(&body) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        report.fail(Outcome::Failed, format!("invalid TwiML (Twilio error 12100): {e}"));
                        None
                    }
                }
            }
        }
    };

    let mut stream_time = Duration::ZERO;
    match answer {
        None => {}
        Some(Answer::Hangup { said }) => {
            report.outcome = Outcome::Rejected;
            report.said = said;
        }
        Some(Answer::Redirect { url }) => {
            // Twilio would fetch that TwiML; for the simulator the bridge turned the call away.
            report.outcome = Outcome::Rejected;
            report.said = Some(format!("<Redirect> {url}"));
        }
        Some(Answer::Sip(sip)) => {
            report.fail(Outcome::Sip, "the simulator does not place SIP calls");
            report.sip_uri = sip.full_uri().ok().or(Some(sip.uri));
        }
        Some(Answer::Stream(stream)) => {
            let ids = Ids { call_sid: call_sid.clone(), account_sid: account_sid.clone(), stream_sid: sid::sid("MZ") };
            stream_time = run_stream(&cfg, &incoming_url, stream, ids, source, control, events, &mut report).await;
        }
    }
    report.stream_ms = ms(stream_time);

    if let Some(path) = &cfg.record {
        if let Err(e) = write_wav(path, &report.heard) {
            report.warnings.push(format!("cannot write {}: {e}", path.display()));
        }
    }
    if !cfg.keep_heard {
        report.heard = Vec::new();
    }

    let answered = matches!(report.outcome, Outcome::Completed | Outcome::Rejected) || report.stream_sid.is_some();
    if cfg.send_status && answered {
        params.retain(|(k, _)| *k != "CallStatus");
        params.push(("CallStatus", "completed".into()));
        params.push(("CallDuration", stream_time.as_secs_f64().round().to_string()));
        match webhook::post_signed(&http, &cfg.status_url(), &cfg.auth_token, &params).await {
            Ok((status, _)) => report.status_callback_status = Some(status),
            Err(e) => report.warnings.push(e),
        }
    }
    report.duration_ms = ms(wall0.elapsed());
    Ok(report)
}

/// Writes μ-law as PCM16 8 kHz mono.
pub fn write_wav(path: &std::path::Path, mulaw: &[u8]) -> Result<(), hound::Error> {
    let spec = hound::WavSpec { channels: 1, sample_rate: 8000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec)?;
    for s in audio_source::decode(mulaw) {
        w.write_sample(s)?;
    }
    w.finalize()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Ids {
    call_sid: String,
    account_sid: String,
    stream_sid: String,
}

/// Why the media loop stopped.
enum End {
    /// Duration reached, end of file, or a hangup action: send `stop` and close.
    Sim,
    /// The server closed the socket (cleanly).
    ServerClosed,
    /// The connection broke.
    Broken(String),
}

/// The open stream: the socket's write half and everything the messages change.
struct Session {
    tx: SplitSink<Ws, Message>,
    ids: Ids,
    seq: u64,
    playback: Playback,
    events: Option<mpsc::Sender<CallEvent>>,
    start_sent: Instant,
}

impl Session {
    async fn send(&mut self, msg: &Inbound) -> Result<(), End> {
        self.tx.send(Message::Text(msg.to_json().into())).await.map_err(ws_end)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn emit(&mut self, ev: CallEvent, report: &mut Report) {
        if let Some(tx) = &self.events {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(ev) {
                report.events_dropped += 1;
            }
        }
    }

    /// Sends every mark that fell due.
    async fn flush_echoes(&mut self, report: &mut Report) -> Result<(), End> {
        while let Some(e) = self.playback.poll_echo() {
            let seq = self.next_seq();
            let msg = Inbound::Mark { sequence_number: seq, stream_sid: self.ids.stream_sid.clone(), name: e.name.clone() };
            self.send(&msg).await?;
            if e.cleared {
                report.marks_echoed_by_clear += 1;
            } else {
                report.marks_echoed += 1;
            }
            if report.mark_rtts.len() < MAX_RTTS {
                report.mark_rtts.push(ms(e.round_trip()));
            }
            self.emit(CallEvent::MarkEchoed { at: e.due, name: e.name, cleared: e.cleared }, report);
        }
        while let Some(k) = self.playback.poll_key() {
            report.dtmf_heard.push(k.key);
            self.emit(CallEvent::DtmfHeard { at: k.at, key: k.key }, report);
        }
        Ok(())
    }

    /// One message from the server, at stream time `now`.
    async fn on_message(&mut self, msg: Option<Result<Message, tungstenite::Error>>, now: Duration, report: &mut Report) -> Result<(), End> {
        let text = match msg {
            None => return Err(End::Broken("connection dropped without a close frame".into())),
            Some(Err(e)) => return Err(ws_end(e)),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(b))) => {
                self.invalid(now, format!("binary frame of {} bytes (Twilio warning 31950)", b.len()), report);
                return Ok(());
            }
            Some(Ok(Message::Close(_))) => return Err(End::ServerClosed),
            Some(Ok(_)) => return Ok(()), // ping/pong: tungstenite answers pings itself
        };
        let parsed = match Outbound::parse(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                self.invalid(now, format!("{e} (Twilio error 31924)"), report);
                return Ok(());
            }
        };
        let sid = match &parsed {
            Outbound::Media { stream_sid, .. } | Outbound::Mark { stream_sid, .. } | Outbound::Clear { stream_sid } => stream_sid,
        };
        if *sid != self.ids.stream_sid {
            let reason = format!("streamSid {sid:?} is not this stream's");
            self.invalid(now, reason, report);
            return Ok(());
        }
        match parsed {
            Outbound::Media { payload, .. } => {
                report.frames_received += 1;
                report.bytes_received += payload.len() as u64;
                if report.first_audio_latency_ms.is_none() {
                    report.first_audio_latency_ms = Some(ms(self.start_sent.elapsed()));
                }
                self.playback.push_media(now, &payload);
                if self.events.is_some() {
                    self.emit(CallEvent::Media { at: now, payload }, report);
                }
            }
            Outbound::Mark { name, .. } => {
                report.marks_received += 1;
                self.playback.push_mark(now, name.clone());
                self.emit(CallEvent::Mark { at: now, name }, report);
            }
            Outbound::Clear { .. } => {
                report.clears_received += 1;
                self.playback.clear(now);
                self.emit(CallEvent::Clear { at: now }, report);
            }
        }
        self.flush_echoes(report).await
    }

    fn invalid(&mut self, now: Duration, reason: String, report: &mut Report) {
        tracing::debug!(call_sid = %self.ids.call_sid, %reason, "invalid message from server");
        report.invalid(reason.clone());
        self.emit(CallEvent::Invalid { at: now, reason }, report);
    }
}

fn ws_end(e: tungstenite::Error) -> End {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => End::ServerClosed,
        other => End::Broken(other.to_string()),
    }
}

/// Frame pacing: which frame is next and when it is due.
struct Frames {
    /// 1-based index of the next frame (its `chunk`).
    next: u64,
    due: Duration,
    jitter: Duration,
    loss: f64,
    rng: StdRng,
}

impl Frames {
    fn new(cfg: &CallConfig, fast: bool) -> Frames {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let jitter = if fast { Duration::ZERO } else { cfg.jitter };
        let mut f = Frames { next: 1, due: Duration::ZERO, jitter, loss: cfg.loss_pct / 100.0, rng };
        f.due = f.due_of(1, Duration::ZERO);
        f
    }

    /// Frame k carries audio from (k-1)·20 ms and goes out when that audio is complete, at
    /// k·20 ms, plus jitter; never before the frame ahead of it.
    fn due_of(&mut self, k: u64, prev: Duration) -> Duration {
        let extra = if self.jitter.is_zero() { Duration::ZERO } else { self.jitter.mul_f64(self.rng.gen::<f64>()) };
        (FRAME * k as u32 + extra).max(prev)
    }

    fn advance(&mut self) {
        self.next += 1;
        self.due = self.due_of(self.next, self.due);
    }

    fn lose(&mut self) -> bool {
        self.loss > 0.0 && self.rng.gen::<f64>() < self.loss
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_stream(
    cfg: &CallConfig,
    incoming_url: &str,
    stream: ConnectStream,
    ids: Ids,
    mut source: AudioSource,
    mut control: Option<mpsc::Receiver<Action>>,
    events: Option<mpsc::Sender<CallEvent>>,
    report: &mut Report,
) -> Duration {
    let urls = match stream_urls(incoming_url, &stream.url) {
        Ok(u) => u,
        Err(e) => {
            report.fail(Outcome::Failed, e);
            return Duration::ZERO;
        }
    };
    report.warnings.extend(urls.warnings.iter().cloned());
    let ws = match connect(&urls, &cfg.auth_token, cfg.timeout).await {
        Ok(ws) => ws,
        Err((outcome, e)) => {
            report.fail(outcome, e);
            return Duration::ZERO;
        }
    };
    let (tx, mut rx) = ws.split();
    let playback = Playback::new(PlaybackConfig {
        record: cfg.record.is_some() || cfg.keep_heard,
        max_queued: cfg.max_buffered,
        utterance_gap: cfg.utterance_gap,
    });
    report.stream_sid = Some(ids.stream_sid.clone());
    let mut s = Session { tx, ids, seq: 0, playback, events, start_sent: Instant::now() };

    let mut clock = SimClock::start(cfg.pace);
    let end = match stream_loop(cfg, &stream, &mut s, &mut rx, &mut clock, &mut source, &mut control, report).await {
        Ok(()) => End::Sim,
        Err(e) => e,
    };
    let now = clock.now();
    let closed_by = match end {
        End::Sim => {
            // Caller hangs up: stop, close, wait briefly for the server's close.
            let seq = s.next_seq();
            let stop = Inbound::Stop {
                sequence_number: seq,
                stream_sid: s.ids.stream_sid.clone(),
                account_sid: s.ids.account_sid.clone(),
                call_sid: s.ids.call_sid.clone(),
            };
            if s.send(&stop).await.is_ok() {
                let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                let _ = s.tx.send(Message::Close(Some(close))).await;
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(m)) = rx.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                })
                .await;
            }
            report.outcome = Outcome::Completed;
            ClosedBy::Sim
        }
        End::ServerClosed => {
            // Finish the closing handshake (tungstenite queued our close reply).
            let _ = tokio::time::timeout(CLOSE_WAIT, s.tx.close()).await;
            report.outcome = Outcome::Completed;
            ClosedBy::Server
        }
        End::Broken(e) => {
            report.fail(Outcome::Failed, e);
            ClosedBy::Server
        }
    };
    report.closed_by = Some(closed_by);
    s.playback.finish(now);
    while let Some(k) = s.playback.poll_key() {
        report.dtmf_heard.push(k.key);
    }
    s.emit(CallEvent::Ended { by: closed_by }, report);

    let st = s.playback.stats().clone();
    report.played_ms = st.played_samples as f64 / 8.0;
    report.audio_received_ms = report.bytes_received as f64 / 8.0;
    report.gaps.within_utterance_count = st.within_count;
    report.gaps.within_utterance_ms = st.within_samples as f64 / 8.0;
    report.gaps.between_utterances_count = st.between_count;
    report.gaps.between_utterances_ms = st.between_samples as f64 / 8.0;
    report.buffer_overflow_bytes = st.overflow_bytes;
    report.mark_rtt_ms = crate::report::Summary::of(&report.mark_rtts);
    report.heard = s.playback.take_timeline();
    now
}

/// `connected`, `start`, then frames, dtmf and actions until the stream is over.
#[allow(clippy::too_many_arguments)]
async fn stream_loop(
    cfg: &CallConfig,
    stream: &ConnectStream,
    s: &mut Session,
    rx: &mut SplitStream<Ws>,
    clock: &mut SimClock,
    source: &mut AudioSource,
    control: &mut Option<mpsc::Receiver<Action>>,
    report: &mut Report,
) -> Result<(), End> {
    s.send(&Inbound::Connected { protocol: "Call".into(), version: "1.0.0".into() }).await?;
    let custom_parameters: std::collections::BTreeMap<String, String> = stream.parameters.iter().cloned().collect();
    let start = StreamStart {
        account_sid: s.ids.account_sid.clone(),
        stream_sid: s.ids.stream_sid.clone(),
        call_sid: s.ids.call_sid.clone(),
        tracks: vec!["inbound".into()],
        media_format: Default::default(),
        custom_parameters,
    };
    let seq = s.next_seq();
    s.send(&Inbound::Start { sequence_number: seq, stream_sid: s.ids.stream_sid.clone(), start }).await?;
    s.start_sent = Instant::now();
    *clock = SimClock::start(cfg.pace);
    let started = CallEvent::Started {
        call_sid: s.ids.call_sid.clone(),
        stream_sid: s.ids.stream_sid.clone(),
        custom_parameters: stream.parameters.clone(),
    };
    s.emit(started, report);

    let mut actions: VecDeque<(Duration, Action)> = {
        let mut a = cfg.actions.clone();
        a.sort_by_key(|(t, _)| *t);
        a.into()
    };
    let mut frames = Frames::new(cfg, clock.is_fast());
    let total = source.total_frames();
    if total == 0 {
        return Ok(());
    }
    loop {
        let mut next = frames.due;
        if let Some((t, _)) = actions.front() {
            next = next.min(*t);
        }
        if let Some(t) = s.playback.next_deadline() {
            next = next.min(t);
        }
        if clock.is_fast() {
            for _ in 0..FAST_DRAIN {
                match rx.next().now_or_never() {
                    Some(m) => s.on_message(m, clock.now(), report).await?,
                    None => break,
                }
            }
            while let Some(a) = control.as_mut().and_then(|c| c.try_recv().ok()) {
                if do_action(a, s, source, clock.now(), report).await? {
                    return Ok(());
                }
            }
            clock.jump_to(next);
            if on_due(next, s, source, &mut frames, &mut actions, total, report).await? {
                return Ok(());
            }
            tokio::task::yield_now().await;
        } else {
            // Deadlines first, so a server flooding messages cannot hold the frames back.
            let now = clock.now();
            if now >= next {
                if on_due(now, s, source, &mut frames, &mut actions, total, report).await? {
                    return Ok(());
                }
                continue;
            }
            let wake = clock.instant_of(next);
            tokio::select! {
                biased;
                m = rx.next() => s.on_message(m, clock.now(), report).await?,
                a = recv_action(control) => match a {
                    Some(a) => if do_action(a, s, source, clock.now(), report).await? { return Ok(()) },
                    None => *control = None,
                },
                _ = tokio::time::sleep_until(wake) => {
                    // Timers fire at or after the deadline; never handle a due event early.
                    let now = clock.now().max(next);
                    if on_due(now, s, source, &mut frames, &mut actions, total, report).await? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

async fn recv_action(control: &mut Option<mpsc::Receiver<Action>>) -> Option<Action> {
    match control {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// Everything due at `now`: mark echoes, scheduled actions, frames. `true` when the stream is over.
async fn on_due(
    now: Duration,
    s: &mut Session,
    source: &mut AudioSource,
    frames: &mut Frames,
    actions: &mut VecDeque<(Duration, Action)>,
    total: u64,
    report: &mut Report,
) -> Result<bool, End> {
    s.playback.advance(now);
    s.flush_echoes(report).await?;
    while actions.front().is_some_and(|(t, _)| *t <= now) {
        let (_, a) = actions.pop_front().expect("checked");
        if do_action(a, s, source, now, report).await? {
            return Ok(true);
        }
    }
    let mut buf = [0u8; FRAME_BYTES];
    while frames.due <= now {
        if !source.next_frame(&mut buf) {
            return Ok(true);
        }
        let k = frames.next;
        if frames.lose() {
            report.frames_lost += 1;
        } else {
            let seq = s.next_seq();
            let media = Inbound::Media {
                sequence_number: seq,
                stream_sid: s.ids.stream_sid.clone(),
                media: MediaChunk {
                    track: "inbound".into(),
                    chunk: k,
                    timestamp_ms: (k - 1) * FRAME.as_millis() as u64,
                    payload: buf.to_vec(),
                },
            };
            s.send(&media).await?;
            report.frames_sent += 1;
        }
        if k >= total {
            return Ok(true);
        }
        frames.advance();
    }
    Ok(false)
}

/// Carries out one action; `true` for a hangup.
async fn do_action(a: Action, s: &mut Session, source: &mut AudioSource, now: Duration, report: &mut Report) -> Result<bool, End> {
    match a {
        Action::Dtmf(digit) => {
            if !(digit.is_ascii_digit() || matches!(digit, '*' | '#' | 'A'..='D')) {
                report.warnings.push(format!("DTMF digit {digit:?} not sent: not one of 0-9 * # A-D"));
                return Ok(false);
            }
            let seq = s.next_seq();
            let msg = Inbound::Dtmf {
                sequence_number: seq,
                stream_sid: s.ids.stream_sid.clone(),
                track: "inbound_track".into(),
                digit: digit.to_string(),
            };
            s.send(&msg).await?;
            report.dtmf_sent += 1;
            s.emit(CallEvent::DtmfSent { at: now, digit }, report);
        }
        Action::Audio(pcm) => {
            source.inject(&audio_source::encode(&pcm));
        }
        Action::Mulaw(bytes) => {
            source.inject(&bytes);
        }
        Action::Hangup => return Ok(true),
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_follow_twilio_rules() {
        let hook = "https://bridge.example.com/incoming-call";
        let u = stream_urls(hook, "wss://bridge.example.com/media-stream").unwrap();
        assert_eq!((u.sign.as_str(), u.connect.as_str(), u.tls), ("wss://bridge.example.com/media-stream", "wss://bridge.example.com/media-stream", true));
        let u = stream_urls(hook, "wss://127.0.0.1:8080/media-stream").unwrap();
        assert_eq!((u.sign.as_str(), u.connect.as_str(), u.tls), ("wss://127.0.0.1:8080/media-stream", "ws://127.0.0.1:8080/media-stream", false));
        for host in ["localhost:1", "[::1]:9", "127.9.9.9", "LOCALHOST"] {
            assert!(!stream_urls(hook, &format!("wss://{host}/m")).unwrap().tls, "{host}");
        }
        assert!(stream_urls(hook, "ws://127.0.0.1/m").unwrap_err().contains("31922"));
        assert!(stream_urls(hook, "https://x/m").unwrap_err().contains("31922"));
        let q = stream_urls(hook, "wss://x.example/m?token=1").unwrap();
        assert_eq!(q.sign, "wss://x.example/m");
        assert_eq!(q.warnings.len(), 1);
        let rel = stream_urls("http://127.0.0.1:9000/incoming-call", "/media-stream").unwrap();
        assert_eq!((rel.sign.as_str(), rel.connect.as_str()), ("wss://127.0.0.1:9000/media-stream", "ws://127.0.0.1:9000/media-stream"));
        assert!(stream_urls(hook, "").is_err());
        assert!(stream_urls(hook, "wss://").is_err());
    }
}
