//! `agent`: the callbridge voice agent. See `agent --help`; everything is also an environment
//! variable, so a script can start it with `LIVEKIT_URL`, `LIVEKIT_API_KEY`, `LIVEKIT_API_SECRET`
//! (and `AGENT_ROOM` for one room) and no flags.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use agent::config::{AgentSpec, Cli};
use agent::record::Recorder;
use agent::call::CallParams;
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
    let params = CallParams {
        spec,
        stack,
        recorder: Some(recorder.clone()),
        metrics,
        phone_wait: Duration::from_secs(cli.phone_wait_secs),
        record_dtmf: false,
        shutdown: Default::default(),
    };
    match &cli.room {
        Some(room) => {
            let out = agent::worker::run_room(
                &cli.livekit_url,
                &cli.livekit_api_key,
                &cli.livekit_api_secret,
                room,
                cli.identity.as_deref(),
                params,
            )
            .await?;
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
            };
            tokio::select! {
                r = agent::worker::run_worker(opts, params) => r,
                _ = tokio::signal::ctrl_c() => {
                    recorder.flush_async().await;
                    Ok(())
                }
            }
        }
    }
}
