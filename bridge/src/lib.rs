//! callbridge's bridge: Twilio Media Streams on one side, a LiveKit room on the other.
//! The media and timing rules live in `proto`; this crate is the I/O around them.

pub mod call_task;
pub mod config;
pub mod http;
pub mod livekit;
pub mod metrics;
pub mod outbound;
pub mod recording;
pub mod registry;
pub mod shared_state;
pub mod sip_setup;
pub mod twilio_rest;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

/// How often reservations whose stream never came are swept (and their rooms deleted).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// After the drain, how long open connections get to finish before the process exits.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves until SIGTERM/Ctrl-C, then drains: no new calls, active ones get `drain()` to finish,
/// while health, readiness and metrics keep answering.
pub async fn serve(app: Arc<http::App>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    serve_until(app, listener, shutdown_signal()).await
}

/// [`serve`] with the shutdown trigger given (tests).
pub async fn serve_until(
    app: Arc<http::App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let router = http::router(app.clone());
    let sweeper = tokio::spawn(sweep_expired_reservations(app.clone()));
    // Every open connection holds a permit; at the cap new ones are closed at once.
    let max_connections = app.cfg.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // A client that does not finish its request headers in time is dropped (slowloris); the
    // clock starts when the connection is accepted.
    http1.timer(TokioTimer::new()).header_read_timeout(app.cfg.http_request_timeout);

    tokio::pin!(shutdown);
    let mut drained: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        app.metrics.error("accept");
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    app.metrics.error("connection_cap");
                    continue; // dropping the socket closes it
                };
                let _ = tcp.set_nodelay(true);
                let conn = http1.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone())).with_upgrades();
                let mut closing = closing.clone();
                tokio::spawn(async move {
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = closing.changed() => {
                            // Finish the request in flight, then close.
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    drop(permit);
                });
            }
            _ = &mut shutdown, if drained.is_none() => {
                let app = app.clone();
                drained = Some(tokio::spawn(async move { drain(&app).await }));
            }
            _ = async { drained.as_mut().expect("guarded").await }, if drained.is_some() => break,
        }
    }
    sweeper.abort();
    let _ = closing_tx.send(true);
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    while permits.available_permits() < max_connections && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Reservations whose Media Stream never came: their rooms were created at the webhook and
/// would otherwise wait for LiveKit's empty timeout.
async fn sweep_expired_reservations(app: Arc<http::App>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        for info in app.registry.take_expired(std::time::Instant::now()) {
            let app = app.clone();
            tokio::spawn(async move {
                // The stream may have gone to another replica: its room is then in use.
                if !matches!(app.shared.stream_started(&app.livekit, &info.call_sid).await, Ok(false)) {
                    return;
                }
                app.metrics.error("stream_never_started");
                if let Err(e) = app.livekit.delete_room(&info.call_sid).await {
                    tracing::warn!(call_sid = %info.call_sid, error = %e, "could not delete the room of a call whose stream never started");
                }
            });
        }
    }
}

/// Stops admitting calls, waits for active ones (and outbound calls still ringing) up to the
/// drain deadline, then ends the rest and waits (bounded) for their cleanup.
pub async fn drain(app: &http::App) {
    app.registry.start_draining();
    let busy = || app.registry.active_count() + app.registry.dialing_count();
    let deadline = tokio::time::Instant::now() + app.cfg.drain();
    tracing::info!(active = app.registry.active_count(), dialing = app.registry.dialing_count(), "draining");
    while busy() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if busy() > 0 {
        tracing::warn!(active = app.registry.active_count(), dialing = app.registry.dialing_count(), "drain deadline: ending remaining calls");
        app.registry.end_all();
        let grace = tokio::time::Instant::now() + call_task::CLEANUP_TIMEOUT + Duration::from_secs(1);
        while busy() > 0 && tokio::time::Instant::now() < grace {
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
