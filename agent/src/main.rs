//! `agent`: the callbridge voice agent. See `agent --help`; everything is also an environment
//! variable, so a script can start it with `LIVEKIT_URL`, `LIVEKIT_API_KEY`, `LIVEKIT_API_SECRET`
//! (and `AGENT_ROOM` for one room) and no flags.
//!
//! SIGTERM or Ctrl-C drains: no more jobs (the worker reports itself full), running calls go on
//! for up to `AGENT_DRAIN_TIMEOUT`, then each says goodbye and hangs up; every call record is
//! flushed and the process exits 0. A second signal stops at once.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use agent::config::{AgentSpec, Cli};
use agent::record::Recorder;
use agent::call::{CallParams, Shutdown};
use agent::stack::Stack;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // llama.cpp's model-load chatter is INFO; keep it out unless asked for
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,llama-cpp-2=warn".into()),
        )
        .with_writer(std::io::stderr)
        // colours only for a terminal: logs written to files stay greppable
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("agent: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let spec = Arc::new(AgentSpec::load(cli.config.as_deref())?);
    let stack = Stack::from_cli(&cli, &spec)?;
    tracing::info!(agent = %spec.name, providers = %stack.describe(), "providers");
    let recorder = Recorder::open(&cli.db)
        .map_err(|e| anyhow::anyhow!("call record {}: {e}", cli.db.display()))?;
    let metrics = agent::metrics::global().clone();
    if let Some(addr) = cli.metrics_listen {
        let bound = agent::metrics::serve(addr, metrics.clone()).await?;
        tracing::info!(%bound, "metrics on /metrics");
    }
    // Draining: `drain` stops new jobs at the signal; `stop` ends the calls after the timeout.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain_timeout = Duration::from_secs(cli.drain_timeout_secs);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(timeout_s = drain_timeout.as_secs(), "shutting down: no new calls, running calls may finish");
        let _ = drain_tx.send(true);
        tokio::select! {
            _ = tokio::time::sleep(drain_timeout) => tracing::info!("drain timeout: ending the calls still running"),
            _ = wait_for_signal() => tracing::warn!("second signal: ending the calls now"),
        }
        let _ = stop_tx.send(true);
    });
    let params = CallParams {
        spec,
        stack,
        recorder: Some(recorder.clone()),
        metrics,
        phone_wait: Duration::from_secs(cli.phone_wait_secs),
        record_dtmf: cli.record_dtmf,
        shutdown: Shutdown::new(stop_rx.clone()),
        dialer: cli.sip_url.as_deref().map(|u| agent::dialer::Dialer::new(u, &cli.livekit_url, &cli.livekit_api_key, &cli.livekit_api_secret)),
    };
    match &cli.room {
        Some(room) => {
            let call = agent::worker::run_room(
                &cli.livekit_url,
                &cli.livekit_api_key,
                &cli.livekit_api_secret,
                room,
                cli.identity.as_deref(),
                params,
            );
            let out = tokio::select! {
                out = call => out?,
                // Asked to stop and the call did not end within its last minute: record, exit.
                _ = stopped_for(stop_rx, Duration::from_secs(60)) => {
                    recorder.flush_async().await;
                    return Ok(());
                }
            };
            recorder.flush_async().await;
            println!(
                "{}",
                serde_json::json!({"room": room, "outcome": out.reason.to_string(), "fields": out.fields, "turns": out.turns})
            );
            Ok(())
        }
        None => {
            let opts = agent::worker::WorkerOptions {
                url: cli.livekit_url.clone(),
                api_key: cli.livekit_api_key.clone(),
                api_secret: cli.livekit_api_secret.clone(),
                agent_name: cli.agent_name.clone(),
                max_jobs: cli.max_jobs.max(1),
                max_retries: None,
                drain: Some(drain_rx),
            };
            let r = tokio::select! {
                r = agent::worker::run_worker(opts, params) => r,
                _ = stopped_for(stop_rx, Duration::from_secs(60)) => Ok(()),
            };
            recorder.flush_async().await;
            r
        }
    }
}

/// SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Returns `grace` after the calls were told to end.
async fn stopped_for(mut stop: tokio::sync::watch::Receiver<bool>, grace: Duration) {
    if stop.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}
