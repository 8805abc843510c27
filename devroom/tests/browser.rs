//! livekit-client (the browser SDK, npm) in headless Chromium against devroom, with an official
//! Python SDK participant on the other side:
//! - the browser hears the Python participant's 440 Hz tone (WebAudio analyser) and its data;
//! - the Python participant hears the browser's 660 Hz oscillator track and its data.
//!
//! Needs `apt-get install -y chromium`, `npm ci --prefix devroom/tests/js` and
//! `pip install livekit numpy`. With `DEVROOM_REQUIRE_JS` set a missing piece fails the test; otherwise it skips.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use common::{join_token, py_script, python_has, run_with_timeout, Devroom};
use tokio::sync::mpsc;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn find_chromium() -> Option<String> {
    let candidates = [
        std::env::var("CHROMIUM").unwrap_or_default(),
        "chromium".into(),
        "chromium-browser".into(),
        "google-chrome".into(),
    ];
    candidates.into_iter().filter(|c| !c.is_empty()).find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

fn missing(what: &str) -> bool {
    let msg = format!("browser test prerequisite missing: {what}");
    // Not tied to `CI`: the workspace CI does not install Chromium / npm packages (yet).
    if std::env::var_os("DEVROOM_REQUIRE_JS").is_some() {
        panic!("DEVROOM_REQUIRE_JS is set and {msg}");
    }
    eprintln!("SKIP: {msg}");
    true
}

struct Chromium(std::process::Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn next_report(rx: &mut mpsc::UnboundedReceiver<serde_json::Value>, stage: &str, secs: u64) -> serde_json::Value {
    loop {
        let v = tokio::time::timeout(Duration::from_secs(secs), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no '{stage}' report from the browser within {secs} s"))
            .expect("report channel");
        if v["stage"] == stage {
            return v;
        }
        if v["stage"] == "done" {
            panic!("browser finished while waiting for '{stage}': {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_in_chromium_exchanges_audio_and_data() {
    browser_and_python("browser", &[]).await;
}

/// The same with devroom's embedded TURN server and `--force-relay`: both SDKs (Chromium's
/// WebRTC and libwebrtc under the Python SDK) take `iceTransportPolicy: relay`, so all their
/// media and data go through TURN/UDP allocations made with devroom's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_in_chromium_through_turn() {
    let Some(server) = browser_and_python("browser_turn", &["--turn-port", "0", "--force-relay"]).await else { return };
    let log = server.log_tail(100_000);
    let relays = log.matches("TURN relay allocated").count();
    eprintln!("{relays} TURN relays allocated");
    // The browser's and the Python participant's publisher and subscriber connections.
    assert!(relays >= 4, "{relays} relays allocated\n{}", server.log_tail(60));
}

/// One Chromium at a time: two would starve a small box.
static CHROMIUM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A livekit-client page in Chromium and a Python SDK participant in devroom (started with
/// `devroom_args`) exchange tones and data; `None` when a prerequisite is missing.
async fn browser_and_python(name: &str, devroom_args: &[&str]) -> Option<Devroom> {
    let _one = CHROMIUM.lock().await;
    let Some(chromium) = find_chromium() else {
        missing("chromium (apt-get install -y chromium)");
        return None;
    };
    let umd = js_dir().join("node_modules/livekit-client/dist/livekit-client.umd.js");
    if !umd.exists() {
        missing("livekit-client (npm ci --prefix devroom/tests/js)");
        return None;
    }
    if !python_has("livekit.rtc, numpy", "pip install livekit numpy") {
        return None;
    }

    let server = Devroom::start(name, devroom_args);
    let room = "browser-room";

    // Page server: the test page, the SDK bundle, and the report endpoint.
    let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
    let html = std::fs::read_to_string(js_dir().join("browser.html")).unwrap();
    let bundle = std::fs::read(&umd).unwrap();
    let app = axum::Router::new()
        .route("/page", get(move || async move { axum::response::Html(html) }))
        .route(
            "/livekit-client.umd.js",
            get(move || async move { ([("content-type", "text/javascript")], bundle) }),
        )
        .route(
            "/report",
            post(|State(tx): State<mpsc::UnboundedSender<serde_json::Value>>, body: String| async move {
                let v = serde_json::from_str(&body).unwrap_or(serde_json::json!({"stage":"bad-report","raw":body}));
                let _ = tx.send(v);
                "ok"
            }),
        )
        .with_state(tx);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });

    let token = join_token("browser", room);
    let page = format!(
        "http://{page_addr}/page?url={}&token={token}&report=http://{page_addr}/report&tone=660&seconds=2",
        server.ws_url()
    );
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-profile-{name}"));
    let _ = std::fs::remove_dir_all(&profile);
    let browser_log = std::fs::File::create(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{name}.log"))).unwrap();
    let _chromium = Chromium(
        Command::new(&chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream",
                "--remote-debugging-port=0",
                "--enable-logging=stderr",
                &format!("--user-data-dir={}", profile.display()),
                &page,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(browser_log))
            .spawn()
            .expect("start chromium"),
    );

    let ready = next_report(&mut rx, "ready", 60).await;
    assert!(ready["sid"].as_str().unwrap_or("").starts_with("PA_"), "{ready}");

    // The Python participant: publishes 440 Hz + data, measures the browser's tone.
    let url = server.ws_url();
    let py = tokio::task::spawn_blocking(move || {
        run_with_timeout(
            Command::new("python3").arg(py_script("publish_tone.py")).args([
                "--url",
                &url,
                "--room",
                room,
                "--identity",
                "python",
                "--seconds",
                "8",
                "--send-data",
                "hello-from-python",
                "--measure-from",
                "browser",
            ]),
            Duration::from_secs(90),
        )
    });

    let done = next_report(&mut rx, "done", 90).await;
    let (status, stdout, stderr) = py.await.unwrap();
    let py_res: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or(serde_json::Value::Null);
    let context = format!(
        "browser: {done}\npython: {py_res}\npython stderr tail: {}\ndevroom log tail:\n{}",
        stderr.lines().rev().take(15).collect::<Vec<_>>().join("\n"),
        server.log_tail(40)
    );

    eprintln!("browser result: {done}\npython result: {py_res}");
    assert_eq!(done["ok"], true, "{context}");
    let peak = done["audio"]["peak_hz"].as_f64().unwrap_or(0.0);
    assert!((peak - 440.0).abs() < 15.0, "browser heard {peak} Hz\n{context}");
    assert!(done["audio"]["rms"].as_f64().unwrap_or(0.0) > 0.05, "{context}");
    assert_eq!(done["remote"]["identity"], "python", "{context}");
    let got = done["data"].as_array().cloned().unwrap_or_default();
    assert!(
        got.iter().any(|d| d["text"] == "hello-from-python" && d["from"] == "python" && d["topic"] == "tone"),
        "{context}"
    );

    assert_eq!(status.map(|s| s.success()), Some(true), "{context}");
    let heard = &py_res["heard"];
    assert!((heard["peak_hz"].as_f64().unwrap_or(0.0) - 660.0).abs() < 15.0, "{context}");
    assert!(heard["rms"].as_f64().unwrap_or(0.0) > 1000.0, "{context}");
    let received = py_res["received"].as_array().cloned().unwrap_or_default();
    assert!(
        received
            .iter()
            .any(|d| d["data"] == "hello-from-browser" && d["from"] == "browser" && d["topic"] == "browser"),
        "{context}"
    );
    Some(server)
}
