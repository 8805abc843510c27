//! Cartesia text-to-speech over its WebSocket (`/tts/websocket`).
//!
//! One `context_id` per reply: every sentence is a generation request with `continue:true`,
//! the reply ends with an empty transcript and `continue:false`, and barge-in sends
//! `cancel:true`. Audio comes back as base64 `chunk`s (raw `pcm_s16le` or `pcm_mulaw`) and is
//! handed out as PCM16 at [`CartesiaConfig::sample_rate`].
//!
//! Sockets are reused: each connection has a driver task that serves one context at a time and
//! ignores messages for any other (late chunks of a cancelled reply). When a reply is done or
//! cancelled its connection goes back to the provider's small idle pool, so the next reply
//! skips the TCP + TLS + upgrade round trips. Idle connections close after
//! [`CartesiaConfig::idle_close`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::http_util::{self, Pcm16Le, WsStream};
use super::{ProviderError, TtsEvent, TtsProvider, TtsStream};

const VENDOR: &str = "cartesia";
const MAX_IDLE_CONNECTIONS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartesiaEncoding {
    /// Little-endian PCM16.
    PcmS16le,
    /// G.711 μ-law (decoded to PCM16 here; 8 kHz is the phone's own rate).
    PcmMulaw,
}

impl CartesiaEncoding {
    fn wire(self) -> &'static str {
        match self {
            CartesiaEncoding::PcmS16le => "pcm_s16le",
            CartesiaEncoding::PcmMulaw => "pcm_mulaw",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CartesiaConfig {
    /// `wss://api.cartesia.ai` in production.
    pub base_url: String,
    pub api_key: super::Secret,
    /// `Cartesia-Version` header.
    pub version: String,
    /// `sonic-2`, `sonic-3`, …
    pub model_id: String,
    pub voice_id: String,
    pub language: Option<String>,
    pub encoding: CartesiaEncoding,
    /// 8000, 16000, 22050, 24000, 44100 or 48000.
    pub sample_rate: u32,
    pub max_buffer_delay_ms: Option<u32>,
    pub connect_timeout: Duration,
    /// While output is owed, this long without a message from Cartesia is an error.
    pub stall_timeout: Duration,
    /// Close a pooled connection unused for this long.
    pub idle_close: Duration,
}

impl CartesiaConfig {
    pub fn new(api_key: impl Into<String>, voice_id: impl Into<String>) -> Self {
        CartesiaConfig {
            base_url: "wss://api.cartesia.ai".into(),
            api_key: super::Secret::new(api_key),
            version: "2025-04-16".into(),
            model_id: "sonic-2".into(),
            voice_id: voice_id.into(),
            language: Some("en".into()),
            encoding: CartesiaEncoding::PcmS16le,
            sample_rate: 16000,
            max_buffer_delay_ms: None,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(8),
            idle_close: Duration::from_secs(120),
        }
    }
}

type Pool = Mutex<Vec<mpsc::Sender<DriverCmd>>>;

/// The Cartesia voice: `CartesiaTts::new(CartesiaConfig::new(key, voice_id))`.
pub struct CartesiaTts {
    cfg: Arc<CartesiaConfig>,
    pool: Arc<Pool>,
    contexts: AtomicU64,
}

impl CartesiaTts {
    pub fn new(cfg: CartesiaConfig) -> Self {
        CartesiaTts {
            cfg: Arc::new(cfg),
            pool: Arc::new(Mutex::new(Vec::new())),
            contexts: AtomicU64::new(0),
        }
    }

    /// Opens a connection now so the first reply does not pay for it.
    pub async fn prewarm(&self) -> Result<(), ProviderError> {
        let cmd = self.connect().await?;
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cmd);
        Ok(())
    }

    async fn connect(&self) -> Result<mpsc::Sender<DriverCmd>, ProviderError> {
        let url = http_util::join_url(&self.cfg.base_url, "tts/websocket");
        let auth = format!("Bearer {}", self.cfg.api_key.expose());
        let ws = http_util::ws_connect(
            VENDOR,
            &url,
            &[
                ("Cartesia-Version", &self.cfg.version),
                ("Authorization", &auth),
            ],
            self.cfg.connect_timeout,
        )
        .await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(driver(ws, rx, self.cfg.clone()));
        Ok(tx)
    }

    fn context_id(&self) -> String {
        let n = self.contexts.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("cb-{:x}-{:x}-{n}", std::process::id(), nanos)
    }

    /// Starts one reply (the concrete type; [`TtsProvider::start`] boxes it).
    pub async fn open(&self) -> Result<CartesiaStream, ProviderError> {
        let ctx = self.context_id();
        let (events_tx, events_rx) = mpsc::channel(64);
        let attach = || DriverCmd::Attach {
            ctx: ctx.clone(),
            events: events_tx.clone(),
        };
        loop {
            let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(cmd) = pooled else { break };
            if !cmd.is_closed() && cmd.send(attach()).await.is_ok() {
                return Ok(self.stream(ctx, cmd, events_rx));
            }
        }
        let cmd = self.connect().await?;
        cmd.send(attach())
            .await
            .map_err(|_| ProviderError::Connection {
                vendor: VENDOR,
                msg: "connection closed at once".into(),
            })?;
        Ok(self.stream(ctx, cmd, events_rx))
    }

    fn stream(
        &self,
        ctx: String,
        cmd: mpsc::Sender<DriverCmd>,
        events: mpsc::Receiver<TtsEvent>,
    ) -> CartesiaStream {
        CartesiaStream {
            ctx,
            cmd,
            events,
            state: State::Open,
            cfg: self.cfg.clone(),
            pool: Arc::downgrade(&self.pool),
        }
    }
}

#[async_trait]
impl TtsProvider for CartesiaTts {
    fn name(&self) -> &'static str {
        VENDOR
    }

    fn output_rate(&self) -> u32 {
        self.cfg.sample_rate
    }

    async fn start(&self) -> Result<Box<dyn TtsStream>, ProviderError> {
        Ok(Box::new(self.open().await?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Text may still come.
    Open,
    /// `finish` sent, audio still coming.
    Finished,
    /// `done` seen (or cancelled): the connection went back to the pool.
    Released,
    /// The connection failed.
    Failed,
}

/// One reply on a Cartesia connection.
pub struct CartesiaStream {
    ctx: String,
    cmd: mpsc::Sender<DriverCmd>,
    events: mpsc::Receiver<TtsEvent>,
    state: State,
    cfg: Arc<CartesiaConfig>,
    pool: Weak<Pool>,
}

impl CartesiaStream {
    pub fn context_id(&self) -> &str {
        &self.ctx
    }

    fn request(&self, transcript: &str, cont: bool) -> String {
        let mut req = json!({
            "context_id": self.ctx,
            "model_id": self.cfg.model_id,
            "transcript": transcript,
            "voice": {"mode": "id", "id": self.cfg.voice_id},
            "output_format": {"container": "raw", "encoding": self.cfg.encoding.wire(), "sample_rate": self.cfg.sample_rate},
            "continue": cont,
            "add_timestamps": false,
        });
        if let Some(lang) = &self.cfg.language {
            req["language"] = json!(lang);
        }
        if let Some(ms) = self.cfg.max_buffer_delay_ms {
            req["max_buffer_delay_ms"] = json!(ms);
        }
        req.to_string()
    }

    async fn send(&mut self, json: String, expect_output: bool) -> Result<(), ProviderError> {
        let cmd = DriverCmd::Send {
            ctx: self.ctx.clone(),
            json,
            expect_output,
        };
        if self.cmd.send(cmd).await.is_err() {
            self.state = State::Failed;
            return Err(ProviderError::Connection {
                vendor: VENDOR,
                msg: "connection closed".into(),
            });
        }
        Ok(())
    }

    /// Detach from the connection and offer it to the next reply.
    fn release(&mut self) {
        if matches!(self.state, State::Released | State::Failed) {
            return;
        }
        self.state = State::Released;
        let _ = self.cmd.try_send(DriverCmd::Detach {
            ctx: self.ctx.clone(),
        });
        if let Some(pool) = self.pool.upgrade() {
            let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < MAX_IDLE_CONNECTIONS && !self.cmd.is_closed() {
                pool.push(self.cmd.clone());
            }
        }
    }

    fn not_open(&self) -> ProviderError {
        ProviderError::Other {
            vendor: VENDOR,
            msg: "reply already finished or cancelled".into(),
        }
    }
}

#[async_trait]
impl TtsStream for CartesiaStream {
    async fn push_text(&mut self, text: &str) -> Result<(), ProviderError> {
        if self.state != State::Open {
            return Err(self.not_open());
        }
        if text.trim().is_empty() {
            return Ok(());
        }
        let req = self.request(&http_util::with_trailing_space(text), true);
        self.send(req, true).await
    }

    async fn finish(&mut self) -> Result<(), ProviderError> {
        if self.state != State::Open {
            return Err(self.not_open());
        }
        let req = self.request("", false);
        self.send(req, true).await?;
        self.state = State::Finished;
        Ok(())
    }

    async fn cancel(&mut self) {
        if matches!(self.state, State::Released | State::Failed) {
            self.state = State::Released;
            return;
        }
        let cancel = json!({"context_id": self.ctx, "cancel": true}).to_string();
        let _ = self.send(cancel, false).await;
        self.release();
        // Whatever audio was queued is not to be played.
        self.events.close();
        while self.events.try_recv().is_ok() {}
    }

    async fn next_event(&mut self) -> Option<TtsEvent> {
        let ev = self.events.recv().await;
        match &ev {
            Some(TtsEvent::Done) => self.release(),
            Some(TtsEvent::Error(_)) => self.state = State::Failed,
            Some(TtsEvent::Audio(_)) => {}
            None if matches!(self.state, State::Open | State::Finished) => {
                self.state = State::Failed;
                return Some(TtsEvent::Error(
                    ProviderError::Connection {
                        vendor: VENDOR,
                        msg: "connection closed mid-reply".into(),
                    }
                    .to_string(),
                ));
            }
            None => {}
        }
        ev
    }
}

impl Drop for CartesiaStream {
    fn drop(&mut self) {
        if matches!(self.state, State::Open | State::Finished) {
            // Dropped mid-reply: stop generating, then the connection can serve the next one.
            let cancel = json!({"context_id": self.ctx, "cancel": true}).to_string();
            let _ = self.cmd.try_send(DriverCmd::Send {
                ctx: self.ctx.clone(),
                json: cancel,
                expect_output: false,
            });
            self.release();
        }
    }
}

enum DriverCmd {
    Attach {
        ctx: String,
        events: mpsc::Sender<TtsEvent>,
    },
    Send {
        ctx: String,
        json: String,
        expect_output: bool,
    },
    Detach {
        ctx: String,
    },
}

struct Route {
    ctx: String,
    events: mpsc::Sender<TtsEvent>,
    pcm: Pcm16Le,
    /// Output is owed until this instant (refreshed by every message for the context).
    deadline: Option<Instant>,
}

/// One server message (`chunk`, `done`, `error`, timestamps, …).
#[derive(Deserialize)]
pub struct Response {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    status_code: Option<u16>,
}

impl Response {
    /// A text frame; an error ends the connection.
    pub fn parse(text: &str) -> Result<Response, ProviderError> {
        serde_json::from_str(text).map_err(|e| ProviderError::Protocol {
            vendor: VENDOR,
            msg: format!("bad message ({e}): {}", http_util::truncate(text)),
        })
    }

    /// Whether it belongs to context `ctx` (messages of earlier, cancelled contexts do not).
    pub fn is_for(&self, ctx: &str) -> bool {
        self.context_id.as_deref().is_none_or(|c| c == ctx)
    }
}

pub enum Outcome {
    Events(Vec<TtsEvent>),
    /// The context is over (done or error) after these events.
    Finished(Vec<TtsEvent>),
}

/// What one message of the current context gives its stream; `pcm` carries odd bytes across chunks.
pub fn handle_response(resp: Response, pcm: &mut Pcm16Le, encoding: CartesiaEncoding) -> Outcome {
    match resp.kind.as_str() {
        "chunk" => {
            let Some(data) = resp.data.filter(|d| !d.is_empty()) else {
                return Outcome::Events(Vec::new());
            };
            let bytes = match base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) {
                Ok(b) => b,
                Err(e) => {
                    let err = ProviderError::Protocol {
                        vendor: VENDOR,
                        msg: format!("bad base64 audio: {e}"),
                    };
                    return Outcome::Finished(vec![TtsEvent::Error(err.to_string())]);
                }
            };
            let pcm = match encoding {
                CartesiaEncoding::PcmS16le => pcm.decode(&bytes),
                CartesiaEncoding::PcmMulaw => http_util::ulaw_to_pcm(&bytes),
            };
            let events = if pcm.is_empty() {
                Vec::new()
            } else {
                vec![TtsEvent::Audio(pcm)]
            };
            Outcome::Events(events)
        }
        "done" => Outcome::Finished(vec![TtsEvent::Done]),
        "error" => {
            let status = resp.status_code.unwrap_or(500);
            let msg = [resp.title, resp.message, resp.error]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            let err = http_util::status_error(VENDOR, status, &msg);
            Outcome::Finished(vec![TtsEvent::Error(err.to_string())])
        }
        // flush_done, timestamps, phoneme_timestamps: nothing to play.
        _ => Outcome::Events(Vec::new()),
    }
}

async fn driver(ws: WsStream, mut cmds: mpsc::Receiver<DriverCmd>, cfg: Arc<CartesiaConfig>) {
    let (mut sink, mut source) = ws.split();
    let mut route: Option<Route> = None;
    let mut idle_since = Instant::now();
    let fail = |route: &mut Option<Route>, err: ProviderError| {
        if let Some(r) = route.take() {
            let _ = r.events.try_send(TtsEvent::Error(err.to_string()));
        }
    };
    loop {
        let stall = route.as_ref().and_then(|r| r.deadline);
        let idle_deadline = route.is_none().then(|| idle_since + cfg.idle_close);
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => break,
                Some(DriverCmd::Attach { ctx, events }) => {
                    route = Some(Route { ctx, events, pcm: Pcm16Le::default(), deadline: None });
                }
                Some(DriverCmd::Send { ctx, json, expect_output }) => {
                    if let Err(e) = sink.send(Message::text(json)).await {
                        fail(&mut route, http_util::ws_error(VENDOR, e));
                        return;
                    }
                    if let Some(r) = route.as_mut().filter(|r| r.ctx == ctx && expect_output) {
                        r.deadline = Some(Instant::now() + cfg.stall_timeout);
                    }
                }
                Some(DriverCmd::Detach { ctx }) => {
                    if route.as_ref().is_some_and(|r| r.ctx == ctx) {
                        route = None;
                        idle_since = Instant::now();
                    }
                }
            },
            msg = source.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => {
                        let msg = http_util::close_reason(frame.as_ref());
                        fail(&mut route, ProviderError::Connection { vendor: VENDOR, msg });
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        fail(&mut route, http_util::ws_error(VENDOR, e));
                        return;
                    }
                    None => {
                        fail(&mut route, ProviderError::Connection { vendor: VENDOR, msg: "connection closed".into() });
                        return;
                    }
                };
                let resp = match Response::parse(&text) {
                    Ok(r) => r,
                    Err(e) => {
                        fail(&mut route, e);
                        return;
                    }
                };
                let Some(r) = route.as_mut() else { continue };
                // Messages for other (cancelled, earlier) contexts are dropped here.
                if !resp.is_for(&r.ctx) {
                    continue;
                }
                let (events, finished) = match handle_response(resp, &mut r.pcm, cfg.encoding) {
                    Outcome::Events(e) => (e, false),
                    Outcome::Finished(e) => (e, true),
                };
                r.deadline = if finished { None } else { r.deadline.map(|_| Instant::now() + cfg.stall_timeout) };
                for ev in events {
                    let is_err = matches!(ev, TtsEvent::Error(_));
                    if r.events.send(ev).await.is_err() {
                        break;
                    }
                    if is_err {
                        // A context error leaves the socket usable, but the reply is over.
                        break;
                    }
                }
            }
            _ = sleep_until_opt(stall) => {
                let msg = format!("no audio for {:?}", cfg.stall_timeout);
                fail(&mut route, ProviderError::Connection { vendor: VENDOR, msg });
                return;
            }
            _ = sleep_until_opt(idle_deadline) => break,
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
