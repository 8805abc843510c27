use std::io::Write;

use clap::Parser;
use devroom::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "devroom=info,str0m=warn".into());
    // turn-server-rustls logs every relayed packet's bytes at warn and stun-proto the normal 401
    // challenge of every allocation at error: quiet unless RUST_LOG names them.
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    for (target, directive) in [("turn_server_rustls", "turn_server_rustls=error"), ("stun_proto", "stun_proto=off")] {
        if !asked.contains(target) {
            filter = filter.add_directive(directive.parse().expect("static directive"));
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut running = devroom::start(cfg.clone()).await?;
    // Tests and scripts wait for this line (and read the bound ports from it).
    let turn = match &running.turn {
        Some(t) => format!(
            " turn_udp={} turn_tls_port={}",
            t.udp.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            t.tls_port.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
        ),
        None => String::new(),
    };
    println!(
        "devroom listening http={} rtc={} api_key={}{turn}",
        running.http_addr, running.rtc_addr, cfg.api_key
    );
    std::io::stdout().flush()?;
    let stop = tokio::select! {
        r = &mut running.server => { r??; false }
        _ = shutdown_signal() => true,
    };
    if stop {
        tracing::info!("shutting down");
        running.shutdown().await;
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
