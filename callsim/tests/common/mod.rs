//! A small fake bridge for the simulator's tests: an axum HTTP + WebSocket server that checks
//! Twilio signatures on both legs, answers `<Connect><Stream>` (or busy), logs everything the
//! simulator sends, and plays a script of outbound messages after `start`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use futures_util::{SinkExt, StreamExt};
use proto::twilio::{Inbound, Outbound};
use proto::twiml::ConnectStream;
use tokio::sync::watch;

pub const TOKEN: &str = "test-auth-token";

/// What the fake bridge sends after `start` (in order).
#[derive(Debug, Clone)]
pub enum Step {
    /// Outbound `media` with these μ-law bytes.
    Media(Vec<u8>),
    Mark(String),
    Clear,
    /// Raw text frame; `{sid}` is replaced by the stream SID.
    Text(String),
    Binary(Vec<u8>),
    Sleep(Duration),
    /// Wait until an inbound media timestamp of at least this many ms has arrived.
    UntilInboundTs(u64),
    /// Wait until the simulator has echoed this mark.
    UntilEcho(String),
    /// Close the WebSocket.
    Close,
}

#[derive(Debug, Clone)]
pub enum Answer {
    Stream { params: Vec<(String, String)> },
    Busy(String),
    /// Return this HTTP status with no TwiML.
    Status(u16),
}

#[derive(Debug, Clone)]
pub struct Behavior {
    pub check_webhook_signature: bool,
    pub check_ws_signature: bool,
    pub answer: Answer,
    pub script: Vec<Step>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            check_webhook_signature: true,
            check_ws_signature: true,
            answer: Answer::Stream { params: vec![("room".into(), "call-test".into()), ("token".into(), "a&b<c>".into())] },
            script: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub path: String,
    pub params: Vec<(String, String)>,
    pub signature_ok: bool,
}

impl Webhook {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// One thing the fake bridge saw or did on a stream, in the order it happened.
#[derive(Debug, Clone)]
pub enum Seen {
    In(Inbound),
    /// A text frame that did not parse as a Twilio message.
    BadText(String),
    Binary,
    Out(String),
}

#[derive(Debug, Default, Clone)]
pub struct StreamLog {
    pub signature_ok: bool,
    pub seen: Vec<Seen>,
    pub closed: bool,
}

impl StreamLog {
    pub fn inbound(&self) -> Vec<Inbound> {
        self.seen.iter().filter_map(|s| if let Seen::In(m) = s { Some(m.clone()) } else { None }).collect()
    }

    pub fn media(&self) -> Vec<proto::twilio::MediaChunk> {
        self.inbound().into_iter().filter_map(|m| if let Inbound::Media { media, .. } = m { Some(media) } else { None }).collect()
    }

    pub fn call_sid(&self) -> Option<String> {
        self.inbound().into_iter().find_map(|m| if let Inbound::Start { start, .. } = m { Some(start.call_sid) } else { None })
    }

    fn last_ts(&self) -> Option<u64> {
        self.seen.iter().rev().find_map(|s| match s {
            Seen::In(Inbound::Media { media, .. }) => Some(media.timestamp_ms),
            _ => None,
        })
    }

    fn echoed(&self, name: &str) -> bool {
        self.seen.iter().any(|s| matches!(s, Seen::In(Inbound::Mark { name: n, .. }) if n == name))
    }
}

#[derive(Default)]
pub struct Log {
    pub webhooks: Vec<Webhook>,
    pub streams: Vec<Arc<Mutex<StreamLog>>>,
    pub refused_streams: usize,
}

struct Shared {
    behavior: Behavior,
    base: String,
    log: Mutex<Log>,
}

pub struct Peer {
    pub base: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Peer {
    pub async fn start(behavior: Behavior) -> Peer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let shared = Arc::new(Shared { behavior, base: base.clone(), log: Mutex::new(Log::default()) });
        let app = Router::new()
            .route("/incoming-call", post(incoming))
            .route("/call-status", post(status))
            .route("/media-stream", get(media_stream))
            .with_state(shared.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Peer { base, addr, shared }
    }

    pub fn config(&self) -> callsim::CallConfig {
        callsim::CallConfig::new(self.base.clone()).auth_token(TOKEN)
    }

    pub fn webhooks(&self, path: &str) -> Vec<Webhook> {
        self.shared.log.lock().unwrap().webhooks.iter().filter(|w| w.path == path).cloned().collect()
    }

    pub fn streams(&self) -> Vec<Arc<Mutex<StreamLog>>> {
        self.shared.log.lock().unwrap().streams.clone()
    }

    /// A snapshot of stream `i` (in the order the streams were accepted).
    pub fn stream(&self, i: usize) -> StreamLog {
        let arc = self.shared.log.lock().unwrap().streams[i].clone();
        let snapshot = arc.lock().unwrap().clone();
        snapshot
    }

    pub fn refused_streams(&self) -> usize {
        self.shared.log.lock().unwrap().refused_streams
    }

    /// Waits until every stream the peer accepted has closed.
    pub async fn wait_closed(&self) {
        for _ in 0..500 {
            if self.streams().iter().all(|s| s.lock().unwrap().closed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("streams did not close");
    }
}

fn webhook_url(base: &str, path: &str) -> String {
    format!("{base}{path}")
}

async fn incoming(State(s): State<Arc<Shared>>, headers: HeaderMap, Form(params): Form<Vec<(String, String)>>) -> Response {
    let sig = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = proto::signature::validate_form(TOKEN, &webhook_url(&s.base, "/incoming-call"), &params, sig);
    s.log.lock().unwrap().webhooks.push(Webhook { path: "/incoming-call".into(), params, signature_ok: ok });
    if s.behavior.check_webhook_signature && !ok {
        return (StatusCode::FORBIDDEN, "bad signature").into_response();
    }
    let xml = match &s.behavior.answer {
        Answer::Stream { params } => ConnectStream {
            url: format!("wss://{}/media-stream", s.base.trim_start_matches("http://")),
            name: Some("callsim-test".into()),
            status_callback: None,
            parameters: params.clone(),
        }
        .to_twiml()
        .unwrap(),
        Answer::Busy(text) => proto::twiml::busy(text),
        Answer::Status(code) => return StatusCode::from_u16(*code).unwrap().into_response(),
    };
    ([("content-type", "text/xml")], xml).into_response()
}

async fn status(State(s): State<Arc<Shared>>, headers: HeaderMap, Form(params): Form<Vec<(String, String)>>) -> StatusCode {
    let sig = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = proto::signature::validate_form(TOKEN, &webhook_url(&s.base, "/call-status"), &params, sig);
    s.log.lock().unwrap().webhooks.push(Webhook { path: "/call-status".into(), params, signature_ok: ok });
    if ok { StatusCode::NO_CONTENT } else { StatusCode::FORBIDDEN }
}

async fn media_stream(State(s): State<Arc<Shared>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let sig = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let url = format!("wss://{}/media-stream", s.base.trim_start_matches("http://"));
    let ok = proto::signature::validate_websocket(TOKEN, &url, sig);
    if s.behavior.check_ws_signature && !ok {
        s.log.lock().unwrap().refused_streams += 1;
        return (StatusCode::FORBIDDEN, "bad signature").into_response();
    }
    let log = Arc::new(Mutex::new(StreamLog { signature_ok: ok, ..Default::default() }));
    s.log.lock().unwrap().streams.push(log.clone());
    let script = s.behavior.script.clone();
    ws.on_upgrade(move |socket| handle(socket, log, script))
}

async fn handle(socket: WebSocket, log: Arc<Mutex<StreamLog>>, script: Vec<Step>) {
    let (mut tx, mut rx) = socket.split();
    let (changed_tx, mut changed) = watch::channel(0u64);
    let (sid_tx, mut sid_rx) = watch::channel(None::<String>);
    let reader_log = log.clone();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(Ok(msg)) = rx.next().await {
            let seen = match msg {
                Message::Text(t) => match Inbound::parse(t.as_str()) {
                    Ok(m) => {
                        if let Inbound::Start { stream_sid, .. } = &m {
                            let _ = sid_tx.send(Some(stream_sid.clone()));
                        }
                        Seen::In(m)
                    }
                    Err(_) => Seen::BadText(t.to_string()),
                },
                Message::Binary(_) => Seen::Binary,
                Message::Close(_) => break,
                _ => continue,
            };
            reader_log.lock().unwrap().seen.push(seen);
            n += 1;
            let _ = changed_tx.send(n);
        }
        reader_log.lock().unwrap().closed = true;
        let _ = changed_tx.send(u64::MAX);
    });
    let sid = loop {
        if let Some(sid) = sid_rx.borrow().clone() {
            break sid;
        }
        if sid_rx.changed().await.is_err() {
            let _ = reader.await;
            return;
        }
    };
    for step in script {
        let out = match step {
            Step::Media(bytes) => Outbound::Media { stream_sid: sid.clone(), payload: bytes }.to_json(),
            Step::Mark(name) => Outbound::Mark { stream_sid: sid.clone(), name }.to_json(),
            Step::Clear => Outbound::Clear { stream_sid: sid.clone() }.to_json(),
            Step::Text(t) => t.replace("{sid}", &sid),
            Step::Binary(b) => {
                log.lock().unwrap().seen.push(Seen::Out("binary".into()));
                if tx.send(Message::Binary(b.into())).await.is_err() {
                    break;
                }
                continue;
            }
            Step::Sleep(d) => {
                tokio::time::sleep(d).await;
                continue;
            }
            Step::UntilInboundTs(ts) => {
                while log.lock().unwrap().last_ts().is_none_or(|t| t < ts) {
                    if changed.changed().await.is_err() || *changed.borrow() == u64::MAX {
                        break;
                    }
                }
                continue;
            }
            Step::UntilEcho(name) => {
                while !log.lock().unwrap().echoed(&name) {
                    if changed.changed().await.is_err() || *changed.borrow() == u64::MAX {
                        break;
                    }
                }
                continue;
            }
            Step::Close => {
                log.lock().unwrap().seen.push(Seen::Out("close".into()));
                let _ = tx.send(Message::Close(None)).await;
                break;
            }
        };
        // Log before sending so the order in `seen` is the order the simulator can observe.
        log.lock().unwrap().seen.push(Seen::Out(out.clone()));
        if tx.send(Message::Text(out.into())).await.is_err() {
            break;
        }
    }
    let _ = reader.await;
}

/// μ-law of a sine at `hz`, `ms` long.
pub fn tone_mulaw(hz: f64, ms: u64) -> Vec<u8> {
    (0..ms * 8)
        .map(|n| {
            let v = 12_000.0 * (std::f64::consts::TAU * hz * n as f64 / 8000.0).sin();
            proto::g711::ulaw_encode(v as i16)
        })
        .collect()
}

/// Power of `hz` in `samples` (Goertzel), normalised by length.
pub fn goertzel(samples: &[i16], hz: f64) -> f64 {
    let w = std::f64::consts::TAU * hz / 8000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len().max(1) as f64).powi(2)
}
