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
    start_devroom_with(&[]).await
}

/// devroom with extra flags (e.g. `--g711-off`: a server before livekit-server 1.9.1).
pub async fn start_devroom_with(extra: &[&str]) -> devroom::Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let mut args = vec!["devroom", "--listen", "127.0.0.1:0", "--rtc-port", "0"];
    args.extend_from_slice(extra);
    let cfg = devroom::Config::try_parse_from(args).unwrap();
    devroom::start(cfg).await.expect("devroom starts")
}

/// A form's fields, in order.
pub type Form = Vec<(String, String)>;

/// One REST call update: (CallSid, form fields, Authorization header).
pub type RestUpdate = (String, Vec<(String, String)>, Option<String>);

/// Twilio's REST API as far as the bridge uses it: records each call update (and answers 500
/// while `fail` is set), and places outbound calls (`Calls.json`): the far end of each is played
/// by callsim as `far_end` says (per destination number, else the default).
#[derive(Clone, Default)]
pub struct FakeRest {
    pub updates: Arc<Mutex<Vec<RestUpdate>>>,
    pub fail: Arc<std::sync::atomic::AtomicBool>,
    /// `Calls.json` forms received.
    pub created: Arc<Mutex<Vec<Form>>>,
    /// The far end of the next calls to a number (`None`: the default one).
    pub far_ends: Arc<Mutex<std::collections::HashMap<Option<String>, callsim::far_end::FarEnd>>>,
    /// Calls placed, by CallSid.
    pub placed: Arc<Mutex<std::collections::HashMap<String, callsim::far_end::FarEndCall>>>,
}

impl FakeRest {
    /// How calls to `to` (or, with `None`, any number) are answered.
    pub fn far_end(&self, to: Option<&str>, far: callsim::far_end::FarEnd) {
        self.far_ends.lock().unwrap().insert(to.map(str::to_owned), far);
    }

    /// Waits for the far end of call `sid` to finish.
    pub async fn far_end_report(&self, sid: &str, within: Duration) -> callsim::far_end::FarEndReport {
        let call = self.placed.lock().unwrap().remove(sid).expect("a call placed with that sid");
        tokio::time::timeout(within, call.finish()).await.expect("the far end finishes")
    }

    pub async fn start(&self) -> String {
        async fn update(
            State(rest): State<FakeRest>,
            Path((_account, call)): Path<(String, String)>,
            headers: axum::http::HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
            if call == "Calls.json" {
                return create(rest, form).await;
            }
            let sid = call.trim_start_matches("Calls/").trim_end_matches(".json").to_owned();
            if let Some(far) = rest.placed.lock().unwrap().get(&sid) {
                match form_value(&form, "Status") {
                    Some("canceled") => far.update(callsim::far_end::Update::Cancel),
                    Some("completed") => far.update(callsim::far_end::Update::Hangup),
                    _ => {}
                }
            }
            rest.updates.lock().unwrap().push((sid, form, auth));
            if rest.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "fake outage").into_response();
            }
            axum::Json(serde_json::json!({"sid": call, "status": "completed"})).into_response()
        }
        async fn create(rest: FakeRest, form: Vec<(String, String)>) -> axum::response::Response {
            rest.created.lock().unwrap().push(form.clone());
            if rest.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "fake outage").into_response();
            }
            let p = match callsim::far_end::Placement::from_form(&form) {
                Ok(p) => p,
                Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e).into_response(),
            };
            let far = {
                let plans = rest.far_ends.lock().unwrap();
                plans.get(&Some(p.to.clone())).or_else(|| plans.get(&None)).cloned()
            };
            let Some(far) = far else {
                return (axum::http::StatusCode::BAD_REQUEST, "no far end configured").into_response();
            };
            let call = callsim::far_end::place(p, far, ACCOUNT_SID);
            let sid = call.call_sid.clone();
            rest.placed.lock().unwrap().insert(sid.clone(), call);
            (axum::http::StatusCode::CREATED, axum::Json(serde_json::json!({"sid": sid, "status": "queued"}))).into_response()
        }
        use axum::response::IntoResponse;
        let app = Router::new().route("/2010-04-01/Accounts/{account}/{*call}", post(update)).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }
}

/// A far end for the fake Twilio: `answer`, rings of 300 ms, the stream's Twilio signed with
/// the bridge's token.
pub fn far_end(answer: callsim::far_end::Answer) -> callsim::far_end::FarEnd {
    callsim::far_end::FarEnd {
        answer,
        ring: Duration::from_millis(300),
        amd_delay: Duration::from_millis(500),
        call: callsim::CallConfig::new("http://unused").auth_token(AUTH_TOKEN).duration_secs(30.0).timeout(Duration::from_secs(10)),
    }
}

pub struct BridgeHandle {
    pub base: String,
    pub app: Arc<bridge::http::App>,
}

/// Starts the bridge on a free port against devroom; `extra` are more command-line flags.
pub async fn start_bridge(livekit: &devroom::Running, rest_base: &str, extra: &[&str]) -> BridgeHandle {
    start_bridge_at(&format!("ws://{}", livekit.http_addr), rest_base, extra).await
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

/// Least-squares fit of a sinusoid at `freq`: its sine and cosine amplitudes.
fn fit_sinusoid(x: &[f64], rate: u32, freq: f64) -> (f64, f64) {
    let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
    let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let (si, co) = ((w * i as f64).sin(), (w * i as f64).cos());
        ss += si * si;
        sc += si * co;
        cc += co * co;
        xs += v * si;
        xc += v * co;
    }
    let det = ss * cc - sc * sc;
    ((xs * cc - xc * sc) / det, (xc * ss - xs * sc) / det)
}

/// `x` less its best-fitting sinusoid at each of `freqs`, one after the other.
fn without_tones(x: &[f64], rate: u32, freqs: &[f64]) -> Vec<f64> {
    let mut rest = x.to_vec();
    for f in freqs {
        let (a, b) = fit_sinusoid(&rest, rate, *f);
        let w = 2.0 * std::f64::consts::PI * f / rate as f64;
        for (i, v) in rest.iter_mut().enumerate() {
            *v -= a * (w * i as f64).sin() + b * (w * i as f64).cos();
        }
    }
    rest
}

/// Least-squares fit of a sinusoid at `freq`; returns (SNR dB, amplitude).
pub fn tone_snr(s: &[i16], rate: u32, freq: f64) -> (f64, f64) {
    let x: Vec<f64> = s.iter().map(|v| *v as f64).collect();
    let (a, b) = fit_sinusoid(&x, rate, freq);
    (tones_snr(s, rate, &[freq]), (a * a + b * b).sqrt())
}

/// SNR (dB) of `s` as the sum of sinusoids at `freqs` (e.g. a ringback's 440 + 480 Hz).
pub fn tones_snr(s: &[i16], rate: u32, freqs: &[f64]) -> f64 {
    let x: Vec<f64> = s.iter().map(|v| *v as f64).collect();
    let rest = without_tones(&x, rate, freqs);
    let energy = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
    let noise = energy(&rest);
    10.0 * ((energy(&x) - noise).max(0.0) / noise.max(1e-9)).log10()
}

/// Publishes a tone at 8 kHz in real time for `secs` seconds, its level gently modulated so
/// Opus DTX never takes it for background noise.
pub async fn speak_tone(room: &Room, freq: f64, secs: f64) -> tokio::task::JoinHandle<()> {
    let mut sink = room.publish_audio(room::AudioTrackOptions { sample_rate: 8_000, ..Default::default() }).await.unwrap();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for k in 0..(secs * 50.0) as usize {
            tick.tick().await;
            let amp = 6000.0 + 2000.0 * ((k as f64) * 0.3).sin();
            if sink.push(&tone(freq, 8_000, k * 160, 160, amp)).await.is_err() {
                break;
            }
        }
    })
}

/// Whether python3 can import `module`. In CI a missing one fails the test; elsewhere the
/// test is skipped with the reason (`install` says how to get it).
pub fn python_can_import(module: &str, install: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let msg = format!("python3 cannot import {module}; install with: {install}");
        assert!(std::env::var_os("CI").is_none(), "CI is set and {msg}");
        eprintln!("SKIP: {msg}");
    }
    ok
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

impl FakeRest {
    /// The updates so far: (CallSid, form).
    pub fn calls(&self) -> Vec<(String, Vec<(String, String)>)> {
        self.updates.lock().unwrap().iter().map(|(sid, form, _)| (sid.clone(), form.clone())).collect()
    }

    /// Waits until an update matching `pred` arrives.
    pub async fn wait_for(&self, within: Duration, pred: impl Fn(&str, &[(String, String)]) -> bool) -> Option<Vec<(String, String)>> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some((_, f)) = self.calls().into_iter().find(|(sid, f)| pred(sid, f)) {
                return Some(f);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

pub fn form_value<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A LiveKit whose RoomService and AgentDispatch answer (and are recorded) but whose signalling
/// (`/rtc`) is down: rooms are created, joining them fails.
#[derive(Clone, Default)]
pub struct SignalDownLiveKit {
    /// Twirp paths called, e.g. `/twirp/livekit.RoomService/DeleteRoom`.
    pub calls: Arc<Mutex<Vec<String>>>,
}

impl SignalDownLiveKit {
    pub async fn start(&self) -> String {
        use axum::response::IntoResponse;
        async fn twirp(State(lk): State<SignalDownLiveKit>, uri: axum::http::Uri) -> axum::response::Response {
            lk.calls.lock().unwrap().push(uri.path().to_owned());
            // An empty protobuf message is every field at its default.
            ([(axum::http::header::CONTENT_TYPE, "application/protobuf")], Vec::<u8>::new()).into_response()
        }
        async fn rtc() -> axum::response::Response {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "signalling down").into_response()
        }
        let app = Router::new()
            .route("/twirp/{*method}", post(twirp))
            .route("/rtc", axum::routing::get(rtc))
            .route("/rtc/v1", axum::routing::get(rtc))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("ws://{addr}")
    }

    pub fn called(&self, path_end: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|p| p.ends_with(path_end)).count()
    }
}

/// Starts the bridge against any LiveKit URL (see [`start_bridge`]).
pub async fn start_bridge_at(livekit_url: &str, rest_base: &str, extra: &[&str]) -> BridgeHandle {
    start_bridge_until(livekit_url, rest_base, extra, std::future::pending()).await.0
}

/// Starts the bridge; it drains and stops when `shutdown` completes (as on SIGTERM). The
/// handle's task ends when the server has stopped.
pub async fn start_bridge_until(
    livekit_url: &str,
    rest_base: &str,
    extra: &[&str],
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (BridgeHandle, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // `--public-url` among `extra` puts this bridge behind another address (a load balancer,
    // or another replica that Twilio's requests should reach).
    let public = match extra.iter().position(|a| *a == "--public-url") {
        Some(i) => extra.get(i + 1).copied().unwrap_or_default().to_owned(),
        None => base.clone(),
    };
    let extra: Vec<&str> = match extra.iter().position(|a| *a == "--public-url") {
        Some(i) => extra.iter().enumerate().filter(|(j, _)| *j != i && *j != i + 1).map(|(_, a)| *a).collect(),
        None => extra.to_vec(),
    };
    let mut args = vec![
        "bridge",
        "--public-url",
        &public,
        "--twilio-auth-token",
        AUTH_TOKEN,
        "--twilio-account-sid",
        ACCOUNT_SID,
        "--twilio-api-base",
        rest_base,
        "--livekit-url",
        livekit_url,
        "--dev",
    ];
    args.extend_from_slice(&extra);
    let cli = bridge::config::Cli::try_parse_from(args).unwrap();
    let app = bridge::http::App::new(cli.config).await.unwrap();
    let serve_app = app.clone();
    let server = tokio::spawn(async move { bridge::serve_until(serve_app, listener, shutdown).await });
    (BridgeHandle { base, app }, server)
}

pub type RawWs = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Twilio played by hand, for the faults a well-behaved simulator never makes.
pub struct RawTwilio {
    /// Where requests go (one replica).
    pub base: String,
    /// The `PUBLIC_URL` signatures are computed over (the load balancer's, with replicas).
    pub public: String,
    pub call_sid: String,
    pub stream_sid: String,
}

impl RawTwilio {
    pub fn new(bridge: &BridgeHandle, call_sid: &str) -> RawTwilio {
        RawTwilio::at(&bridge.base, &bridge.base, call_sid)
    }

    /// Requests to `base`, signed as if sent to `public`.
    pub fn at(base: &str, public: &str, call_sid: &str) -> RawTwilio {
        RawTwilio {
            base: base.to_owned(),
            public: public.to_owned(),
            call_sid: call_sid.to_owned(),
            stream_sid: format!("MZ{:032x}", 77),
        }
    }

    /// The same call's requests, sent to another replica.
    pub fn to(&self, base: &str) -> RawTwilio {
        RawTwilio { base: base.to_owned(), ..RawTwilio::at(&self.base, &self.public, &self.call_sid) }
    }

    /// The signed voice webhook: (HTTP status, body).
    pub async fn webhook(&self) -> (u16, String) {
        let http = callsim::webhook::client(Duration::from_secs(20)).unwrap();
        let params = [
            ("CallSid", self.call_sid.clone()),
            ("AccountSid", ACCOUNT_SID.to_owned()),
            ("From", "+15550000001".to_owned()),
            ("To", "+15550000002".to_owned()),
            ("CallStatus", "ringing".to_owned()),
        ];
        let sig = proto::signature::compute(AUTH_TOKEN, &format!("{}/incoming-call", self.public), &params);
        let resp = http
            .post(format!("{}/incoming-call", self.base))
            .header("X-Twilio-Signature", sig)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(callsim::webhook::form_body(&params))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The stream token from a `<Connect><Stream>` answer.
    pub fn token_from(twiml: &str) -> String {
        match proto::twiml::parse(twiml).unwrap() {
            proto::twiml::Answer::Stream(s) => s.parameters.into_iter().find(|(k, _)| k == "token").unwrap().1,
            other => panic!("not a stream answer: {other:?}"),
        }
    }

    /// A signed Media Streams upgrade (Err: the HTTP status of a refusal).
    pub async fn open(&self) -> Result<RawWs, u16> {
        let ws_url = self.base.replace("http://", "ws://") + "/media-stream";
        let stream_url = self.public.replace("http://", "wss://").replace("https://", "wss://") + "/media-stream";
        let sig = proto::signature::compute::<&str, &str>(AUTH_TOKEN, &stream_url, &[]);
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url.as_str()).unwrap();
        req.headers_mut().insert("X-Twilio-Signature", sig.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("upgrade: {e}"),
        }
    }

    pub fn start_msg(&self, token: &str) -> String {
        proto::twilio::Inbound::Start {
            sequence_number: 1,
            stream_sid: self.stream_sid.clone(),
            start: proto::twilio::StreamStart {
                account_sid: ACCOUNT_SID.to_owned(),
                call_sid: self.call_sid.clone(),
                stream_sid: self.stream_sid.clone(),
                tracks: vec!["inbound".into()],
                custom_parameters: [
                    ("token".to_string(), token.to_owned()),
                    ("callSid".to_string(), self.call_sid.clone()),
                    ("accountSid".to_string(), ACCOUNT_SID.to_owned()),
                    ("from".to_string(), "+15550000001".to_owned()),
                    ("to".to_string(), "+15550000002".to_owned()),
                ]
                .into(),
                ..Default::default()
            },
        }
        .to_json()
    }

    pub fn media_msg(&self, chunk: u64, payload: Vec<u8>) -> String {
        proto::twilio::Inbound::Media {
            sequence_number: chunk.saturating_add(1),
            stream_sid: self.stream_sid.clone(),
            media: proto::twilio::MediaChunk { track: "inbound".into(), chunk, timestamp_ms: chunk.saturating_sub(1).saturating_mul(20), payload },
        }
        .to_json()
    }

    pub fn stop_msg(&self) -> String {
        format!(
            r#"{{"event":"stop","sequenceNumber":"999","stop":{{"accountSid":"{ACCOUNT_SID}","callSid":"{}"}},"streamSid":"{}"}}"#,
            self.call_sid, self.stream_sid
        )
    }

    /// Webhook, upgrade and `start`: a stream the bridge has accepted.
    pub async fn connect(&self) -> RawWs {
        let (status, body) = self.webhook().await;
        assert_eq!(status, 200, "{body}");
        self.stream(&Self::token_from(&body)).await
    }

    /// Upgrade and `start` with this token.
    pub async fn stream(&self, token: &str) -> RawWs {
        let mut ws = self.open().await.expect("upgrade accepted");
        use futures_util::SinkExt;
        ws.send(text(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#)).await.unwrap();
        ws.send(text(&self.start_msg(token))).await.unwrap();
        ws
    }
}

pub fn text(s: &str) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Text(s.to_owned().into())
}

/// Reads until the server closes the socket (true) or `within` passes (false).
pub async fn closed_by_server(ws: &mut RawWs, within: Duration) -> bool {
    use futures_util::StreamExt;
    let res = tokio::time::timeout(within, async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    res.is_ok()
}

/// Rooms devroom has now (RoomService ListRooms).
pub async fn room_names(livekit: &devroom::Running) -> Vec<String> {
    let client = livekit_api::services::room::RoomClient::with_api_key(&format!("http://{}", livekit.http_addr), "devkey", "secret");
    client.list_rooms(vec![]).await.unwrap().into_iter().map(|r| r.name).collect()
}
