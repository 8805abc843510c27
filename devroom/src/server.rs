//! HTTP side: the axum router (signalling, Twirp, health) and server start-up.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::Keys;
use crate::config::Config;
use crate::engine::{self, EngineHandle};
use crate::webhook::Webhooks;
use crate::{dispatch, signal, twirp};

/// Shared state of the HTTP handlers.
pub struct App {
    pub cfg: Arc<Config>,
    pub keys: Keys,
    pub engine: EngineHandle,
}

/// A running devroom.
pub struct Running {
    /// Bound HTTP address (useful with port 0).
    pub http_addr: SocketAddr,
    /// Address advertised in ICE candidates (the one UDP socket).
    pub rtc_addr: SocketAddr,
    /// The embedded TURN server (`--turn-port`, `--turn-tls-port`), if enabled.
    pub turn: Option<crate::turn::Turn>,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    engine: EngineHandle,
    webhooks: Webhooks,
}

impl Running {
    /// Graceful stop: every participant gets `leave` (SERVER_SHUTDOWN), rooms finish (webhooks
    /// `room_finished` are given a moment to go out).
    pub async fn shutdown(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.engine.send(engine::Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rx).await;
        }
        // let the signal sessions flush their `leave`
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        self.webhooks.drain(std::time::Duration::from_secs(3)).await;
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { "OK" }))
        .route("/rtc", get(signal::rtc_handler))
        .route("/rtc/validate", get(signal::validate_handler))
        .route("/rtc/v1", get(signal::v1_not_found))
        .route("/rtc/v1/validate", get(signal::v1_not_found))
        .route("/agent", get(dispatch::agent_handler))
        .route("/twirp/livekit.RoomService/{method}", post(twirp::handle))
        .route("/twirp/livekit.AgentDispatchService/{method}", post(twirp::handle_agent_dispatch))
        .layer(middleware::from_fn(cors))
        .with_state(app)
}

/// CORS as livekit-server allows it: any origin. Browsers need it for `/rtc/v1/validate`
/// (livekit-client fetches it after a failed WebSocket to learn why, e.g. to fall back to v0)
/// and for Twirp calls made from a page.
async fn cors(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let req_headers = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let mut res = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    if preflight {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            req_headers.unwrap_or_else(|| HeaderValue::from_static("*")),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    res
}

/// Binds the HTTP listener and the RTC socket and starts serving (needs a tokio runtime).
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let cfg = Arc::new(cfg);
    let webhooks = Webhooks::start(&cfg.webhook_urls, &cfg.api_key, &cfg.api_secret)?;
    let turn = crate::turn::start(&cfg).await?;
    let turn_info = turn.clone();
    let engine = engine::start(cfg.clone(), webhooks.clone(), turn).await?;
    let rtc_addr = engine.rtc_addr;
    let app = Arc::new(App {
        keys: Keys::single(&cfg.api_key, &cfg.api_secret),
        cfg: cfg.clone(),
        engine: engine.clone(),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let http_addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });
    Ok(Running {
        http_addr,
        rtc_addr,
        turn: turn_info,
        server,
        engine,
        webhooks,
    })
}
