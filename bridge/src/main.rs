use anyhow::Context;
use bridge::config::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = cli.config;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if cfg.log_json {
        tracing_subscriber::fmt().json().with_current_span(true).with_span_list(false).with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    if let Some(Command::SipSetup) = cli.command {
        cfg.check_livekit()?;
        let report = bridge::sip_setup::run(&cfg).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    cfg.check()?;
    if cfg.twilio_auth_token.is_none() {
        tracing::warn!("--insecure-no-signature: X-Twilio-Signature is NOT checked");
    }
    if cfg.livekit_api_secret.is_none() {
        tracing::warn!("--dev: using LiveKit's development key and secret (devkey / secret)");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, public = %cfg.public_base(), livekit = %cfg.livekit_url, mode = ?cfg.mode, "bridge up");
    let app = bridge::http::App::new(cfg).await?;
    tracing::info!(shared_state = app.shared.name(), "replica state");
    bridge::serve(app, listener).await
}
