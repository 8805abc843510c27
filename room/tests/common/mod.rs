//! Shared helpers for the integration tests: a `devroom` child process, tokens, tone analysis.
#![allow(dead_code)]

pub mod token;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const API_KEY: &str = "devkey";
pub const API_SECRET: &str = "secret";

/// A `devroom --listen 127.0.0.1:<port>` child, killed on drop.
pub struct Devroom {
    child: Child,
    pub port: u16,
}

impl Devroom {
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn token(&self, room: &str, identity: &str) -> String {
        token::join_token(API_KEY, API_SECRET, &token::Grant { identity: identity.into(), room: room.into(), ..Default::default() })
    }

    /// POST a Twirp RoomService call (JSON) with an admin token for `room`; returns (status, body).
    pub async fn room_service(&self, room: &str, method: &str, body: serde_json::Value) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.to_string();
        let jwt = token::admin_token(API_KEY, API_SECRET, room);
        let req = format!(
            "POST /twirp/livekit.RoomService/{method} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {jwt}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    pub fn token_with(&self, grant: &token::Grant) -> String {
        token::join_token(API_KEY, API_SECRET, grant)
    }

    /// Start devroom on a free port and wait until it accepts TCP connections.
    pub async fn start() -> Devroom {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port, &[]).await
    }

    /// Start devroom on `port` with extra arguments (e.g. `--udp-off`).
    pub async fn start_on(port: u16, extra: &[&str]) -> Devroom {
        let bin = devroom_binary();
        assert!(
            bin.exists(),
            "devroom binary not found at {} — build it first: cargo build -p devroom",
            bin.display()
        );
        let child = Command::new(&bin)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--rtc-port")
            .arg("0")
            .args(extra)
            .env("RUST_LOG", std::env::var("DEVROOM_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn devroom");
        let d = Devroom { child, port };
        let start = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return d;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "devroom did not start listening on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill it (SIGKILL: no `leave` for anyone, as a crashed or restarted node).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Devroom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn devroom_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DEVROOM_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("debug").join("devroom")
}

/// Log to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `n` samples of a sine at `freq` Hz, sample rate `rate`, starting at sample index `start`.
pub fn tone(freq: f64, rate: u32, start: usize, n: usize, amp: f64) -> Vec<i16> {
    (start..start + n).map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()).round() as i16).collect()
}

/// Hear a tone at `freq` on `stream` (8 kHz): `secs` seconds of audio within `secs + 8` s,
/// judged on the last second (the first can start with a gap while a path settles, and audio
/// queued across a reconnect can carry a phase jump): within 10 Hz, SNR at least 20 dB.
pub async fn hear_tone_on(stream: &mut room::AudioStream, freq: f64, secs: usize) {
    let mut pcm = Vec::new();
    let limit = Duration::from_secs(secs as u64 + 8);
    tokio::time::timeout(limit, async {
        while pcm.len() < 8_000 * secs {
            pcm.extend(stream.recv().await.expect("audio stream ended").samples);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{secs} s of audio within {limit:?}"));
    let settled = &pcm[8_000 * (secs - 1)..];
    let f = estimate_frequency(settled, 8_000);
    assert!((f - freq).abs() <= 10.0, "heard {f:.1} Hz, expected {freq} Hz");
    let snr = snr_db(settled, 8_000, f);
    assert!(snr >= 20.0, "SNR {snr:.1} dB at {freq} Hz");
}

/// Frequency estimate: zero crossings refined by a least-squares sine fit around them.
pub fn estimate_frequency(s: &[i16], rate: u32) -> f64 {
    let mut first = None;
    let mut last = 0.0;
    let mut count = 0usize;
    for i in 1..s.len() {
        let (a, b) = (s[i - 1] as f64, s[i] as f64);
        if a < 0.0 && b >= 0.0 {
            let t = (i - 1) as f64 + (-a) / (b - a);
            if first.is_none() {
                first = Some(t);
            } else {
                count += 1;
            }
            last = t;
        }
    }
    let coarse = match first {
        Some(f) if count > 0 => count as f64 * rate as f64 / (last - f),
        _ => return 0.0,
    };
    // Refine: ternary search for the best-fitting frequency within ±2 Hz of the coarse one.
    let (mut lo, mut hi) = (coarse - 2.0, coarse + 2.0);
    for _ in 0..30 {
        let (m1, m2) = (lo + (hi - lo) / 3.0, hi - (hi - lo) / 3.0);
        if fit_residual(s, rate, m1).1 < fit_residual(s, rate, m2).1 {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    (lo + hi) / 2.0
}

/// Least-squares fit of `a·sin + b·cos + c` at `freq`; returns (signal power, residual power).
pub fn fit_residual(s: &[i16], rate: u32, freq: f64) -> (f64, f64) {
    let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
    // Normal equations for [sin, cos, 1].
    let mut m = [[0f64; 3]; 3];
    let mut v = [0f64; 3];
    for (i, &x) in s.iter().enumerate() {
        let b = [(w * i as f64).sin(), (w * i as f64).cos(), 1.0];
        for r in 0..3 {
            for c in 0..3 {
                m[r][c] += b[r] * b[c];
            }
            v[r] += b[r] * x as f64;
        }
    }
    let coef = solve3(m, v);
    let mut sig = 0.0;
    let mut res = 0.0;
    for (i, &x) in s.iter().enumerate() {
        let fit = coef[0] * (w * i as f64).sin() + coef[1] * (w * i as f64).cos() + coef[2];
        sig += (fit - coef[2]).powi(2);
        res += (x as f64 - fit).powi(2);
    }
    (sig / s.len() as f64, res / s.len() as f64)
}

/// SNR in dB of `s` against the best-fitting sine at `freq`.
pub fn snr_db(s: &[i16], rate: u32, freq: f64) -> f64 {
    let (sig, res) = fit_residual(s, rate, freq);
    10.0 * (sig / res.max(1e-9)).log10()
}

#[allow(clippy::needless_range_loop)]
fn solve3(mut m: [[f64; 3]; 3], mut v: [f64; 3]) -> [f64; 3] {
    for col in 0..3 {
        let piv = (col..3).max_by(|&a, &b| m[a][col].abs().partial_cmp(&m[b][col].abs()).unwrap()).unwrap();
        m.swap(col, piv);
        v.swap(col, piv);
        let d = m[col][col];
        if d.abs() < 1e-12 {
            return [0.0; 3];
        }
        for r in 0..3 {
            if r != col {
                let f = m[r][col] / d;
                for c in 0..3 {
                    m[r][c] -= f * m[col][c];
                }
                v[r] -= f * v[col];
            }
        }
    }
    [v[0] / m[0][0], v[1] / m[1][1], v[2] / m[2][2]]
}

#[test]
fn analysis_helpers_work() {
    let s = tone(440.0, 8000, 0, 8000, 10000.0);
    let f = estimate_frequency(&s, 8000);
    assert!((f - 440.0).abs() < 0.2, "{f}");
    assert!(snr_db(&s, 8000, f) > 40.0);
    let noisy: Vec<i16> = s.iter().enumerate().map(|(i, &x)| x + if i % 2 == 0 { 3000 } else { -3000 }).collect();
    let snr = snr_db(&noisy, 8000, 440.0);
    assert!(snr > 5.0 && snr < 12.0, "{snr}");
}
