//! Official LiveKit Python SDK (PyPI `livekit`) participants against devroom.
//!
//! Needs `pip install livekit numpy`. With `CI` set a missing module fails the test;
//! otherwise the test is skipped with the reason printed.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{py_script, python_has, run_with_timeout, Devroom};

const PIP: &str = "pip install livekit numpy";

fn run_script(server: &Devroom, script: &str, args: &[&str]) -> serde_json::Value {
    let (status, stdout, stderr) = run_with_timeout(
        Command::new("python3")
            .arg(py_script(script))
            .args(["--url", &server.ws_url()])
            .args(args),
        Duration::from_secs(120),
    );
    let last = stdout.lines().last().unwrap_or("").to_string();
    let parsed: serde_json::Value = serde_json::from_str(&last).unwrap_or(serde_json::Value::Null);
    if status.map(|s| s.success()) != Some(true) {
        panic!(
            "{script} failed ({status:?})\nresult: {last}\nstderr (tail):\n{}\ndevroom log (tail):\n{}",
            stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
            server.log_tail(60)
        );
    }
    parsed
}

/// Speaker publishes a 440 Hz sine; listener hears ~440 Hz well above silence; data packets
/// (topic, destination_identities) go both ways; token kind/attributes/metadata are visible.
#[test]
fn python_sdk_audio_and_data() {
    if !python_has("livekit.rtc, numpy", PIP) {
        return;
    }
    let server = Devroom::start("python_audio", &[]);
    let r = run_script(&server, "audio_data.py", &["--room", "py-audio"]);
    assert_eq!(r["ok"], true, "{r}");
    let peak = r["audio"]["peak_hz"].as_f64().unwrap();
    assert!((peak - 440.0).abs() < 10.0, "peak {peak}");
    assert!(r["audio"]["rms"].as_f64().unwrap() > 1000.0);
    assert_eq!(r["data"]["listener_got"]["from"], "speaker");
    assert_eq!(r["data"]["speaker_got"]["topic"], "reply");
    assert_eq!(r["data"]["bystander_leak"].as_array().map(|a| a.len()), Some(0));
}

/// Late joiner gets the already-published track; unpublish and republish renegotiate the
/// subscriber PC (stop m-line, new m-line, new track sid, 880 Hz heard); leave is seen.
#[test]
fn python_sdk_late_join_unpublish_republish() {
    if !python_has("livekit.rtc, numpy", PIP) {
        return;
    }
    let server = Devroom::start("python_reneg", &[]);
    let r = run_script(&server, "renegotiate.py", &["--room", "py-reneg"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["steps"]["republish"]["peak_hz"].as_f64().map(|f| (f - 880.0).abs() < 10.0), Some(true));
}
