//! Shared plumbing for the vendor clients: one rustls configuration (aws-lc-rs, native roots
//! plus the webpki set) for both HTTPS (reqwest) and wss (tokio-tungstenite), WebSocket connect
//! with custom headers, and the mapping of HTTP statuses / socket failures to [`ProviderError`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::ProviderError;

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type WsSink = SplitSink<WsStream, Message>;
pub type WsSource = SplitStream<WsStream>;

/// Largest vendor message we accept (a base64 audio chunk is tens of KiB).
const MAX_WS_MESSAGE: usize = 16 << 20;
/// How much of an error body goes into an error message.
const MAX_ERROR_BODY: usize = 2048;

/// One TLS client configuration for every vendor connection. The crypto provider is named
/// explicitly so it works whichever rustls providers the rest of the build enables.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// A reqwest client on [`tls_config`]. Build one per provider and reuse it (connection pool).
pub fn http_client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls_config()).clone())
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Maps an HTTP status (handshake or request) to the error class that drives fallbacks.
pub fn status_error(vendor: &'static str, status: u16, body: &str) -> ProviderError {
    let msg = error_message(body);
    match status {
        401 | 403 => ProviderError::Auth {
            vendor,
            status,
            msg,
        },
        429 => ProviderError::RateLimited { vendor, msg },
        500..=599 => ProviderError::Server {
            vendor,
            status,
            msg,
        },
        // 408 (request timeout) behaves like a dropped connection: try again.
        408 => ProviderError::Connection {
            vendor,
            msg: format!("HTTP 408: {msg}"),
        },
        _ => ProviderError::Other {
            vendor,
            msg: format!("HTTP {status}: {msg}"),
        },
    }
}

/// The human part of a vendor error body: `error.message`, `message`, `err_msg`, `detail`, or
/// the (truncated) body itself.
pub fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let candidates = [
            v.pointer("/error/message"),
            v.get("message"),
            v.get("err_msg"),
            v.pointer("/detail/message"),
            v.get("detail"),
            v.get("error"),
        ];
        for c in candidates.into_iter().flatten() {
            if let Some(s) = c.as_str() {
                return truncate(s);
            }
        }
    }
    truncate(body.trim())
}

pub fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR_BODY {
        return s.to_string();
    }
    let mut end = MAX_ERROR_BODY;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Maps a reqwest failure (no HTTP status) to an error class.
pub fn reqwest_error(vendor: &'static str, e: reqwest::Error) -> ProviderError {
    if let Some(status) = e.status() {
        return status_error(vendor, status.as_u16(), &e.to_string());
    }
    // Connect refused, reset, timeout, body cut short (reqwest reports a body stream failure
    // as a "decode" error; we parse the bytes ourselves): all "the connection failed".
    ProviderError::Connection {
        vendor,
        msg: error_chain(&e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Maps a tungstenite failure to an error class (handshake HTTP statuses included).
pub fn ws_error(vendor: &'static str, e: tungstenite::Error) -> ProviderError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            status_error(vendor, status, &body)
        }
        tungstenite::Error::Utf8(_) => ProviderError::Protocol {
            vendor,
            msg: "invalid UTF-8 in a text frame".into(),
        },
        tungstenite::Error::Url(u) => ProviderError::Other {
            vendor,
            msg: format!("bad URL: {u}"),
        },
        tungstenite::Error::Capacity(c) => ProviderError::Protocol {
            vendor,
            msg: c.to_string(),
        },
        other => ProviderError::Connection {
            vendor,
            msg: error_chain(&other),
        },
    }
}

/// Opens a WebSocket with extra headers. HTTP errors at the upgrade map through
/// [`status_error`]; a refused or timed-out connect is [`ProviderError::Connection`].
pub async fn ws_connect(
    vendor: &'static str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<WsStream, ProviderError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ProviderError::Other {
            vendor,
            msg: format!("bad URL {url:?}: {e}"),
        })?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).map_err(|_| ProviderError::Other {
            vendor,
            msg: format!("header {name} has an invalid value"),
        })?;
        let name: tungstenite::http::HeaderName =
            name.parse().map_err(|_| ProviderError::Other {
                vendor,
                msg: format!("invalid header name {name}"),
            })?;
        request.headers_mut().insert(name, value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE));
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(Connector::Rustls(tls_config())),
    );
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((ws, _resp))) => Ok(ws),
        Ok(Err(e)) => Err(ws_error(vendor, e)),
        Err(_) => Err(ProviderError::Connection {
            vendor,
            msg: format!("connect timed out after {timeout:?}"),
        }),
    }
}

/// Splits a connected socket into its write and read halves.
pub fn split(ws: WsStream) -> (WsSink, WsSource) {
    ws.split()
}

/// Joins `base` (e.g. `wss://api.deepgram.com` or `http://127.0.0.1:1234/`) and `path`.
pub fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Describes a close frame for an error message.
pub fn close_reason(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if !f.reason.is_empty() => {
            format!("closed by server ({}: {})", u16::from(f.code), f.reason)
        }
        Some(f) => format!("closed by server ({})", u16::from(f.code)),
        None => "closed by server".to_string(),
    }
}

/// Little-endian PCM16 bytes to samples, carrying an odd trailing byte to the next chunk.
#[derive(Default)]
pub struct Pcm16Le {
    carry: Option<u8>,
}

impl Pcm16Le {
    pub fn decode(&mut self, bytes: &[u8]) -> Vec<i16> {
        let mut out = Vec::with_capacity(bytes.len() / 2 + 1);
        let mut rest = bytes;
        if let Some(lo) = self.carry.take() {
            match rest.split_first() {
                Some((&hi, tail)) => {
                    out.push(i16::from_le_bytes([lo, hi]));
                    rest = tail;
                }
                None => {
                    self.carry = Some(lo);
                    return out;
                }
            }
        }
        let mut chunks = rest.chunks_exact(2);
        out.extend(chunks.by_ref().map(|c| i16::from_le_bytes([c[0], c[1]])));
        if let [last] = chunks.remainder() {
            self.carry = Some(*last);
        }
        out
    }
}

/// μ-law bytes to PCM16 samples.
pub fn ulaw_to_pcm(bytes: &[u8]) -> Vec<i16> {
    bytes.iter().map(|&b| proto::g711::ulaw_decode(b)).collect()
}

/// PCM16 samples to μ-law bytes.
pub fn pcm_to_ulaw(pcm: &[i16]) -> Vec<u8> {
    let mut out = vec![0u8; pcm.len()];
    // Same length in and out, so this cannot fail.
    let _ = proto::g711::ulaw_encode_into(pcm, &mut out);
    out
}

/// Text chunks for streaming TTS must end in whitespace so words do not run together.
pub fn with_trailing_space(text: &str) -> String {
    if text.ends_with(char::is_whitespace) {
        text.to_string()
    } else {
        format!("{text} ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm16le_carries_odd_bytes() {
        let mut d = Pcm16Le::default();
        let samples: Vec<i16> = vec![1, -2, 300, -32768];
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = d.decode(&bytes[..3]);
        out.extend(d.decode(&bytes[3..4]));
        out.extend(d.decode(&bytes[4..]));
        assert_eq!(out, samples);
    }

    #[test]
    fn statuses_map_to_classes() {
        assert!(matches!(
            status_error("x", 401, ""),
            ProviderError::Auth { .. }
        ));
        assert!(matches!(
            status_error("x", 403, ""),
            ProviderError::Auth { .. }
        ));
        assert!(matches!(
            status_error("x", 429, ""),
            ProviderError::RateLimited { .. }
        ));
        assert!(matches!(
            status_error("x", 503, ""),
            ProviderError::Server { status: 503, .. }
        ));
        assert!(matches!(
            status_error("x", 400, ""),
            ProviderError::Other { .. }
        ));
        let e = status_error("x", 401, r#"{"error":{"message":"bad key"}}"#);
        assert!(e.to_string().contains("bad key"), "{e}");
    }
}
