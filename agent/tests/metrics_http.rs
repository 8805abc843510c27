//! `--metrics-listen`: per-turn latency histograms and counters as Prometheus text.

use std::sync::Arc;

use agent::metrics::{serve, Metrics, TurnTimings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text() {
    let m = Arc::new(Metrics::default());
    m.turns.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
    m.observe_turn(&TurnTimings {
        eos_to_stt_ms: Some(750),
        stt_to_llm_ms: Some(2),
        llm_to_tts_ms: Some(60),
        tts_to_push_ms: Some(1),
        eos_to_push_ms: Some(813),
    });
    m.observe_turn(&TurnTimings {
        eos_to_push_ms: Some(2500),
        ..Default::default()
    });
    let addr = serve("127.0.0.1:0".parse().unwrap(), m.clone())
        .await
        .unwrap();
    let body = get(addr, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
    assert!(body.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(body.contains("\nagent_turns_total 3\n"), "{body}");
    assert!(
        body.contains("agent_turn_stage_seconds_bucket{stage=\"eos_to_push\",le=\"1\"} 1\n"),
        "{body}"
    );
    assert!(body.contains("agent_turn_stage_seconds_bucket{stage=\"eos_to_push\",le=\"+Inf\"} 2\n"));
    assert!(body.contains("agent_turn_stage_seconds_count{stage=\"eos_to_stt\"} 1\n"));
    assert!(
        body.contains("agent_turn_stage_seconds_sum{stage=\"eos_to_push\"} 3.31"),
        "{body}"
    );
    assert!(get(addr, "/health").await.contains("\"status\":\"ok\""));
    assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
}
