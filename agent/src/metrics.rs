//! Per-turn latency and process counters, served as Prometheus text on `GET /metrics`.
//!
//! A turn's timeline: end of caller speech (the VAD's last voiced frame) → STT final (end of
//! turn) → LLM first token → TTS first audio → first frame pushed to the room. Each step is a
//! histogram (`agent_turn_stage_seconds{stage=…}`) and each turn's numbers also go into the
//! call record.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Instants of one turn, filled in as it goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnClock {
    pub end_of_speech: Option<Instant>,
    pub stt_final: Option<Instant>,
    pub llm_first_token: Option<Instant>,
    pub tts_first_audio: Option<Instant>,
    pub first_frame: Option<Instant>,
}

/// One turn's latencies in milliseconds (None: that step did not happen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TurnTimings {
    pub eos_to_stt_ms: Option<i64>,
    pub stt_to_llm_ms: Option<i64>,
    pub llm_to_tts_ms: Option<i64>,
    pub tts_to_push_ms: Option<i64>,
    pub eos_to_push_ms: Option<i64>,
}

fn between(a: Option<Instant>, b: Option<Instant>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_millis() as i64),
        _ => None,
    }
}

impl TurnClock {
    pub fn timings(&self) -> TurnTimings {
        TurnTimings {
            eos_to_stt_ms: between(self.end_of_speech, self.stt_final),
            stt_to_llm_ms: between(self.stt_final, self.llm_first_token),
            llm_to_tts_ms: between(self.llm_first_token, self.tts_first_audio),
            tts_to_push_ms: between(self.tts_first_audio, self.first_frame),
            eos_to_push_ms: between(self.end_of_speech.or(self.stt_final), self.first_frame),
        }
    }
}

const BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Process-wide metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub calls_started: AtomicU64,
    pub calls_active: AtomicI64,
    pub turns: AtomicU64,
    pub interruptions: AtomicU64,
    pub provider_errors: AtomicU64,
    pub jobs_accepted: AtomicU64,
    pub jobs_declined: AtomicU64,
    /// Successful worker registrations on `/agent` (a reconnected worker registers again).
    pub worker_registrations: AtomicU64,
    pub frames_pushed: AtomicU64,
    pub tts_underruns: AtomicU64,
    /// Data packets (control, transcripts) not sent: queue full, send failed or timed out.
    pub data_dropped: AtomicU64,
    /// Agent frames the track's queue refused.
    pub frames_dropped: AtomicU64,
    pub false_interruptions: AtomicU64,
    pub backchannels: AtomicU64,
    pub preemptive_kept: AtomicU64,
    pub preemptive_dropped: AtomicU64,
    pub tools_refused: AtomicU64,
    /// Call record rows dropped (queue full) and failed writes.
    pub record_dropped: AtomicU64,
    pub record_errors: AtomicU64,
    stages: Mutex<BTreeMap<&'static str, Histogram>>,
}

pub fn global() -> &'static Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::default()))
}

impl Metrics {
    pub fn observe_turn(&self, t: &TurnTimings) {
        let mut h = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        for (stage, v) in [
            ("eos_to_stt", t.eos_to_stt_ms),
            ("stt_to_llm", t.stt_to_llm_ms),
            ("llm_to_tts", t.llm_to_tts_ms),
            ("tts_to_push", t.tts_to_push_ms),
            ("eos_to_push", t.eos_to_push_ms),
        ] {
            if let Some(ms) = v {
                h.entry(stage).or_default().observe(ms as f64 / 1000.0);
            }
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let c = |s: &mut String, name: &str, help: &str, kind: &str, v: String| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        c(
            &mut s,
            "agent_calls_started_total",
            "Calls the agent joined.",
            "counter",
            self.calls_started.load(Ordering::Relaxed).to_string(),
        );
        c(
            &mut s,
            "agent_calls_active",
            "Calls in progress.",
            "gauge",
            self.calls_active.load(Ordering::Relaxed).to_string(),
        );
        c(
            &mut s,
            "agent_turns_total",
            "Caller turns answered.",
            "counter",
            self.turns.load(Ordering::Relaxed).to_string(),
        );
        c(
            &mut s,
            "agent_interruptions_total",
            "Barge-ins.",
            "counter",
            self.interruptions.load(Ordering::Relaxed).to_string(),
        );
        c(
            &mut s,
            "agent_provider_errors_total",
            "STT/LLM/TTS failures.",
            "counter",
            self.provider_errors.load(Ordering::Relaxed).to_string(),
        );
        c(
            &mut s,
            "agent_jobs_accepted_total",
            "Dispatch jobs accepted.",
            "counter",
            self.jobs_accepted.load(Ordering::Relaxed).to_string(),
        );
        c(
            &mut s,
            "agent_jobs_declined_total",
            "Dispatch jobs declined (full).",
            "counter",
            self.jobs_declined.load(Ordering::Relaxed).to_string(),
        );
        c(
            &mut s,
            "agent_frames_pushed_total",
            "20 ms frames of agent speech pushed.",
            "counter",
            self.frames_pushed.load(Ordering::Relaxed).to_string(),
        );
        c(
            &mut s,
            "agent_tts_underruns_total",
            "Frames of silence pushed because TTS was late mid-reply.",
            "counter",
            self.tts_underruns.load(Ordering::Relaxed).to_string(),
        );
        for (name, help, v) in [
            ("agent_data_dropped_total", "Data packets (control, transcripts) not sent.", &self.data_dropped),
            ("agent_frames_dropped_total", "Agent audio frames the track's queue refused.", &self.frames_dropped),
            ("agent_false_interruptions_total", "Stops for caller sound without words, resumed.", &self.false_interruptions),
            ("agent_backchannels_total", "Caller words while the agent talked that did not interrupt it.", &self.backchannels),
            ("agent_preemptive_kept_total", "Preemptive replies confirmed by the final transcript.", &self.preemptive_kept),
            ("agent_preemptive_dropped_total", "Preemptive replies thrown away.", &self.preemptive_dropped),
            ("agent_tools_refused_total", "Tool calls refused (unknown field, a transfer number, ...).", &self.tools_refused),
            ("agent_record_dropped_total", "Call record rows dropped because the disk was behind.", &self.record_dropped),
            ("agent_record_errors_total", "Call record writes that failed.", &self.record_errors),
        ] {
            c(&mut s, name, help, "counter", v.load(Ordering::Relaxed).to_string());
        }
        let h = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        s.push_str("# HELP agent_turn_stage_seconds Latency of each step of a turn.\n# TYPE agent_turn_stage_seconds histogram\n");
        for (stage, hist) in h.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                s.push_str(&format!(
                    "agent_turn_stage_seconds_bucket{{stage=\"{stage}\",le=\"{b}\"}} {}\n",
                    hist.counts[i]
                ));
            }
            s.push_str(&format!(
                "agent_turn_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}\n",
                hist.count
            ));
            s.push_str(&format!(
                "agent_turn_stage_seconds_sum{{stage=\"{stage}\"}} {}\n",
                hist.sum
            ));
            s.push_str(&format!(
                "agent_turn_stage_seconds_count{{stage=\"{stage}\"}} {}\n",
                hist.count
            ));
        }
        s
    }
}

/// Serve `GET /metrics` (and `GET /health`) until the process ends. Minimal HTTP/1.1: one
/// request per connection, 8 KiB request cap, 5 s to send it.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                let read = async {
                    while n < buf.len() {
                        let k = sock.read(&mut buf[n..]).await?;
                        if k == 0 {
                            break;
                        }
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                };
                if tokio::time::timeout(std::time::Duration::from_secs(5), read)
                    .await
                    .is_err()
                {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                    "/health" => (
                        "200 OK",
                        "application/json",
                        format!(
                            "{{\"status\":\"ok\",\"active_calls\":{}}}",
                            metrics.calls_active.load(Ordering::Relaxed)
                        ),
                    ),
                    _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
                };
                let resp = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}
