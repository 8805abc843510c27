//! Local fake vendor servers for the provider tests. Each speaks its vendor's documented wire
//! format (shared/reference/protocols.md §6–10), checks what the client sends (auth scheme,
//! query, message order and shape) and records violations, and can be scripted to fail:
//! an HTTP status at the handshake/request, malformed JSON, or the socket dropped mid-stream.
#![allow(dead_code)]

pub mod cartesia;
pub mod chat;
pub mod deepgram;
pub mod elevenlabs;
pub mod realtime;
pub mod realtime_puppet;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::WebSocketStream;

pub const KEY: &str = "test-key-123";

/// How a fake misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    None,
    /// Refuse the handshake / request with this HTTP status.
    Status(u16),
    /// Send a message that is not JSON where the first real reply would go.
    Malformed,
    /// Drop the TCP connection (no close frame) after the first piece of output.
    CloseMidStream,
}

/// What the client sent in its WebSocket upgrade.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    pub path: String,
    pub query: HashMap<String, String>,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
}

impl Handshake {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Problems a fake found in what the client sent; a test asserts this stays empty.
#[derive(Clone, Default)]
pub struct Violations(pub Arc<Mutex<Vec<String>>>);

impl Violations {
    pub fn add(&self, v: impl Into<String>) {
        self.0.lock().unwrap().push(v.into());
    }
    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn assert_none(&self) {
        let v = self.list();
        assert!(v.is_empty(), "the fake saw protocol violations: {v:#?}");
    }
}

pub fn parse_query(q: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

/// Serves WebSockets on 127.0.0.1: `check` may refuse the upgrade with `(status, body)`;
/// `handler` gets each accepted socket.
pub async fn serve_ws<C, H, Fut>(check: C, handler: H) -> SocketAddr
where
    C: Fn(&Handshake) -> Option<(u16, String)> + Send + Sync + 'static,
    H: Fn(WebSocketStream<TcpStream>, Handshake) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let check = Arc::new(check);
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let check = check.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut seen = Handshake::default();
                // tungstenite's callback signature fixes the (large) error type.
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    seen.path = req.uri().path().to_string();
                    seen.query = parse_query(req.uri().query().unwrap_or(""));
                    seen.headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_ascii_lowercase(),
                                v.to_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect();
                    if let Some((status, body)) = check(&seen) {
                        let mut err = ErrorResponse::new(Some(body));
                        *err.status_mut() = StatusCode::from_u16(status).unwrap();
                        return Err(err);
                    }
                    Ok(resp)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await {
                    handler(ws, seen).await;
                }
            });
        }
    });
    addr
}

/// A JSON error body in the OpenAI style.
pub fn error_body(status: u16) -> String {
    serde_json::json!({"error": {"message": format!("fake says {status}"), "type": "fake", "code": status}}).to_string()
}

/// Runs `fut`, failing the test if it takes longer than `secs` ("no dead air").
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {secs} s"),
    }
}

/// A test tone as PCM16.
pub fn tone(samples: usize, rate: u32) -> Vec<i16> {
    (0..samples)
        .map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 8000.0) as i16)
        .collect()
}

pub fn pcm_to_le(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn ulaw(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().map(|&s| proto::g711::ulaw_encode(s)).collect()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

type WsTx = futures_util::stream::SplitSink<
    WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::Message,
>;
type WsRx = futures_util::stream::SplitStream<WebSocketStream<TcpStream>>;

/// Ends a connection the rude way: TCP FIN with no WebSocket close frame. The read side is
/// drained (not dropped) so the client's in-flight writes do not provoke a reset that would
/// discard what we sent before.
pub async fn cut(tx: WsTx, rx: WsRx) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut ws) = tx.reunite(rx) else { return };
    let tcp = ws.get_mut();
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
