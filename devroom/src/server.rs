//! HTTP side: the axum router (signalling, Twirp, health) and server start-up.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::auth::Keys;
use crate::config::Config;
use crate::engine::{self, EngineHandle};
use crate::webhook::Webhooks;
use crate::{signal, twirp};

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
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { "OK" }))
        .route("/rtc", get(signal::rtc_handler))
        .route("/rtc/validate", get(signal::validate_handler))
        .route("/rtc/v1", get(signal::v1_not_found))
        .route("/rtc/v1/validate", get(signal::v1_not_found))
        .route("/twirp/livekit.RoomService/{method}", post(twirp::handle))
        .with_state(app)
}

/// Binds the HTTP listener and the RTC socket and starts serving (needs a tokio runtime).
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let cfg = Arc::new(cfg);
    let webhooks = Webhooks::start(&cfg.webhook_urls, &cfg.api_key, &cfg.api_secret)?;
    let engine = engine::start(cfg.clone(), webhooks).await?;
    let rtc_addr = engine.rtc_addr;
    let app = Arc::new(App {
        keys: Keys::single(&cfg.api_key, &cfg.api_secret),
        cfg: cfg.clone(),
        engine,
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let http_addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });
    Ok(Running {
        http_addr,
        rtc_addr,
        server,
    })
}
