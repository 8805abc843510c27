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
        let report = bridge::sip_setup::run(&cfg).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if cfg.twilio_auth_token.is_none() && !cfg.insecure_no_signature {
        anyhow::bail!("TWILIO_AUTH_TOKEN is not set: refusing to accept unsigned Twilio requests (use --insecure-no-signature for local development)");
    }
    if cfg.twilio_auth_token.is_none() {
        tracing::warn!("--insecure-no-signature: X-Twilio-Signature is NOT checked");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, public = %cfg.public_base(), livekit = %cfg.livekit_url, mode = ?cfg.mode, "bridge up");
    let app = bridge::http::App::new(cfg);
    bridge::serve(app, listener).await
}
