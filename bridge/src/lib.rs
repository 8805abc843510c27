//! callbridge's bridge: Twilio Media Streams on one side, a LiveKit room on the other.
//! The media and timing rules live in `proto`; this crate is the I/O around them.

pub mod call_task;
pub mod config;
pub mod http;
pub mod livekit;
pub mod metrics;
pub mod registry;
pub mod sip_setup;
pub mod twilio_rest;

use std::sync::Arc;

/// Serves until SIGTERM/Ctrl-C, then drains: no new calls, active ones get `drain()` to finish.
pub async fn serve(app: Arc<http::App>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let router = http::router(app.clone());
    let drain_app = app.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            drain(&drain_app).await;
        })
        .await?;
    Ok(())
}

/// Stops admitting calls, waits for active ones up to the drain deadline, then ends the rest.
pub async fn drain(app: &http::App) {
    app.registry.start_draining();
    let deadline = tokio::time::Instant::now() + app.cfg.drain();
    tracing::info!(active = app.registry.active_count(), "draining");
    while app.registry.active_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if app.registry.active_count() > 0 {
        tracing::warn!(active = app.registry.active_count(), "drain deadline: ending remaining calls");
        app.registry.end_all();
        let grace = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while app.registry.active_count() > 0 && tokio::time::Instant::now() < grace {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
