//! `@livekit/rtc-node` (npm) and the Python SDK in one devroom room: each hears the other's
//! tone and gets the other's data packet.
//!
//! Needs node, `npm ci --prefix devroom/tests/js` and `pip install livekit numpy`.
//! With `DEVROOM_REQUIRE_JS` set a missing piece fails the test; otherwise it skips.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{join_token, py_script, python_has, run_with_timeout, Devroom};

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn missing(what: &str) {
    let msg = format!("rtc-node test prerequisite missing: {what}");
    // Not tied to `CI`: the workspace CI does not install Chromium / npm packages (yet).
    if std::env::var_os("DEVROOM_REQUIRE_JS").is_some() {
        panic!("DEVROOM_REQUIRE_JS is set and {msg}");
    }
    eprintln!("SKIP: {msg}");
}

#[test]
fn rtc_node_and_python_exchange_audio_and_data() {
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !node_ok {
        return missing("node");
    }
    if !js_dir().join("node_modules/@livekit/rtc-node").exists() {
        return missing("@livekit/rtc-node (npm ci --prefix devroom/tests/js)");
    }
    if !python_has("livekit.rtc, numpy", "pip install livekit numpy") {
        return;
    }
    let server = Devroom::start("rtc_node", &[]);
    let token = join_token("node", "node-room");
    let url = server.ws_url();
    let node = {
        let (url, token) = (url.clone(), token.clone());
        std::thread::spawn(move || {
            run_with_timeout(
                Command::new("node").current_dir(js_dir()).args([
                    "rtc_node.mjs",
                    "--url",
                    &url,
                    "--token",
                    &token,
                    "--freq",
                    "523",
                    "--seconds",
                    "9",
                    "--listen-to",
                    "python",
                ]),
                Duration::from_secs(90),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let (py_status, py_out, py_err) = run_with_timeout(
        Command::new("python3").arg(py_script("publish_tone.py")).args([
            "--url",
            &url,
            "--room",
            "node-room",
            "--identity",
            "python",
            "--seconds",
            "6",
            "--send-data",
            "hello-from-python",
            "--measure-from",
            "node",
        ]),
        Duration::from_secs(90),
    );
    let (node_status, node_out, node_err) = node.join().unwrap();
    let last = |s: &str| serde_json::from_str::<serde_json::Value>(s.lines().last().unwrap_or("")).unwrap_or_default();
    let (py, nd) = (last(&py_out), last(&node_out));
    let ctx = format!(
        "python: {py}\n{}\nnode: {nd}\n{}\ndevroom:\n{}",
        py_err.lines().rev().take(10).collect::<Vec<_>>().join("\n"),
        node_err.lines().rev().take(10).collect::<Vec<_>>().join("\n"),
        server.log_tail(30)
    );
    assert_eq!(py_status.map(|s| s.success()), Some(true), "{ctx}");
    assert_eq!(node_status.map(|s| s.success()), Some(true), "{ctx}");
    assert!((py["heard"]["peak_hz"].as_f64().unwrap_or(0.0) - 523.0).abs() < 10.0, "{ctx}");
    assert!(py["heard"]["rms"].as_f64().unwrap_or(0.0) > 1000.0, "{ctx}");
    // rtc_node.mjs estimates by zero crossings, which a little codec noise near the crossings
    // pushes up (455 Hz seen on a loaded machine); 30 Hz still tells 440 from Python's 523.
    assert!((nd["heard"]["freq_hz"].as_f64().unwrap_or(0.0) - 440.0).abs() < 30.0, "{ctx}");
    assert!(nd["heard"]["rms"].as_f64().unwrap_or(0.0) > 1000.0, "{ctx}");
    assert!(
        nd["data"].as_array().into_iter().flatten().any(|d| d["text"] == "hello-from-python" && d["from"] == "python"),
        "{ctx}"
    );
    assert!(
        py["received"].as_array().into_iter().flatten().any(|d| d["data"] == "hello-from-node" && d["from"] == "node"),
        "{ctx}"
    );
}
