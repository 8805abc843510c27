//! End-to-end harness: devroom (in-process), the bridge (in-process), a fake Twilio REST API,
//! and a `room` participant playing the agent.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::Router;
use clap::Parser;
use livekit_api::access_token::{AccessToken, VideoGrants};
use room::{Room, RoomEvent, RoomOptions};
use tokio::sync::mpsc;

pub const AUTH_TOKEN: &str = "test-auth-token";
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000001";

pub fn call_sid(n: u32) -> String {
    format!("CA{n:032x}")
}

pub async fn start_devroom() -> devroom::Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let cfg = devroom::Config::try_parse_from(["devroom", "--listen", "127.0.0.1:0", "--rtc-port", "0"]).unwrap();
    devroom::start(cfg).await.expect("devroom starts")
}

/// One REST call update: (CallSid, form fields, Authorization header).
pub type RestUpdate = (String, Vec<(String, String)>, Option<String>);

/// Twilio's REST API as far as the bridge uses it: records each call update.
#[derive(Clone, Default)]
pub struct FakeRest {
    pub updates: Arc<Mutex<Vec<RestUpdate>>>,
}

impl FakeRest {
    pub async fn start(&self) -> String {
        async fn update(
            State(rest): State<FakeRest>,
            Path((_account, call)): Path<(String, String)>,
            headers: axum::http::HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
            rest.updates.lock().unwrap().push((call.trim_end_matches(".json").to_owned(), form, auth));
            axum::Json(serde_json::json!({"sid": call, "status": "completed"})).into_response()
        }
        use axum::response::IntoResponse;
        let app = Router::new().route("/2010-04-01/Accounts/{account}/Calls/{call}", post(update)).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }
}

pub struct BridgeHandle {
    pub base: String,
    pub app: Arc<bridge::http::App>,
}

/// Starts the bridge on a free port; `extra` are more command-line flags.
pub async fn start_bridge(livekit: &devroom::Running, rest_base: &str, extra: &[&str]) -> BridgeHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let lk = format!("ws://{}", livekit.http_addr);
    let mut args = vec![
        "bridge",
        "--public-url",
        &base,
        "--twilio-auth-token",
        AUTH_TOKEN,
        "--twilio-account-sid",
        ACCOUNT_SID,
        "--twilio-api-base",
        rest_base,
        "--livekit-url",
        &lk,
    ];
    args.extend_from_slice(extra);
    let cli = bridge::config::Cli::try_parse_from(args).unwrap();
    let app = bridge::http::App::new(cli.config);
    let serve_app = app.clone();
    tokio::spawn(async move { bridge::serve(serve_app, listener).await });
    BridgeHandle { base, app }
}

pub fn token(identity: &str, room: &str, kind: &str) -> String {
    AccessToken::with_api_key("devkey", "secret")
        .with_identity(identity)
        .with_kind(kind)
        .with_grants(VideoGrants {
            room_join: true,
            room: room.to_owned(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            ..Default::default()
        })
        .to_jwt()
        .unwrap()
}

pub async fn join(livekit: &devroom::Running, identity: &str, room_name: &str) -> (Room, mpsc::Receiver<RoomEvent>) {
    let url = format!("ws://{}", livekit.http_addr);
    Room::connect(&url, &token(identity, room_name, "agent"), RoomOptions::default()).await.expect("agent joins")
}

pub fn callsim(bridge: &BridgeHandle, sid: &str) -> callsim::CallConfig {
    callsim::CallConfig::new(bridge.base.clone())
        .auth_token(AUTH_TOKEN)
        .account_sid(ACCOUNT_SID)
        .call_sid(sid)
        .timeout(Duration::from_secs(20))
}

pub fn tone(freq: f64, rate: u32, start: usize, n: usize, amp: f64) -> Vec<i16> {
    (start..start + n)
        .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16)
        .collect()
}

/// Least-squares fit of a sinusoid at `freq`; returns (SNR dB, amplitude).
pub fn tone_snr(s: &[i16], rate: u32, freq: f64) -> (f64, f64) {
    let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
    let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, x) in s.iter().enumerate() {
        let (si, co) = ((w * i as f64).sin(), (w * i as f64).cos());
        ss += si * si;
        sc += si * co;
        cc += co * co;
        xs += *x as f64 * si;
        xc += *x as f64 * co;
    }
    let det = ss * cc - sc * sc;
    let a = (xs * cc - xc * sc) / det;
    let b = (xc * ss - xs * sc) / det;
    let (mut sig, mut noise) = (0.0, 0.0);
    for (i, x) in s.iter().enumerate() {
        let fit = a * (w * i as f64).sin() + b * (w * i as f64).cos();
        sig += fit * fit;
        noise += (*x as f64 - fit).powi(2);
    }
    (10.0 * (sig / noise.max(1e-9)).log10(), (a * a + b * b).sqrt())
}

/// The longest run of non-silent 20 ms frames (energy above a floor).
pub fn loudest_run(pcm: &[i16], frame: usize) -> &[i16] {
    let loud: Vec<bool> = pcm.chunks(frame).map(|c| c.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / c.len() as f64 > 1e5).collect();
    let (mut best, mut cur_start, mut best_range) = (0, 0, (0, 0));
    for (i, l) in loud.iter().enumerate() {
        if !l {
            cur_start = i + 1;
        } else if i + 1 - cur_start > best {
            best = i + 1 - cur_start;
            best_range = (cur_start, i + 1);
        }
    }
    &pcm[best_range.0 * frame..(best_range.1 * frame).min(pcm.len())]
}

pub fn ulaw_to_pcm(b: &[u8]) -> Vec<i16> {
    b.iter().map(|x| proto::g711::ulaw_decode(*x)).collect()
}

/// Median over 100 ms windows of the per-window SNR: a lost or concealed packet shifts the
/// tone's phase, which one fit over seconds would count as noise.
pub fn tone_snr_median(s: &[i16], rate: u32, freq: f64) -> f64 {
    let win = rate as usize / 10;
    let mut v: Vec<f64> = s.chunks_exact(win).map(|c| tone_snr(c, rate, freq).0).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(f64::NEG_INFINITY)
}
