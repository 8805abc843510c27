//! The official LiveKit Python SDK, in the call's room, hears the caller through the bridge.

mod common;

use std::time::Duration;

use common::*;

fn python_livekit_available() -> bool {
    python_can_import("livekit.rtc, numpy", "pip install livekit==1.2.1 numpy")
}

/// The default (`PHONE_CODEC=auto` on a server that enables PCMU): the caller's μ-law goes into
/// the room as it came, and the SDK's WebRTC stack decodes the PCMU track.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_hears_the_caller() {
    let snr = hears_the_caller(&[], "audio/PCMU").await;
    // μ-law's own quantisation noise is ~38 dB below a tone at this level; nothing else is added.
    assert!(snr.is_none_or(|s| s >= 30.0), "PCMU SNR {snr:?} dB");
}

/// `PHONE_CODEC=opus`: decoded and encoded as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_hears_the_caller_over_opus() {
    let snr = hears_the_caller(&["--phone-codec", "opus"], "audio/opus").await;
    assert!(snr.is_none_or(|s| s >= 20.0), "Opus SNR {snr:?} dB");
}

/// The caller plays 1 kHz whose level swells and fades (0.5 Hz) for 8 s; a supervisor on the
/// official SDK hears it at 8 kHz (no resampling of PCMU). Returns the median SNR (None: no SDK).
async fn hears_the_caller(bridge_args: &[&str], mime: &str) -> Option<f64> {
    if !python_livekit_available() {
        return None;
    }
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    // Opus DTX would take a steady test tone for background noise and stop sending it.
    let mut args = vec!["--opus-dtx", "false"];
    args.extend_from_slice(bridge_args);
    let bridge = start_bridge(&lk, &rest.start().await, &args).await;
    let sid = call_sid(0x77);
    let voice: Vec<i16> = (0..8 * 8_000)
        .map(|i| {
            let t = i as f64 / 8_000.0;
            let amp = 6_000.0 + 3_000.0 * (2.0 * std::f64::consts::PI * 0.5 * t).sin();
            (amp * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()) as i16
        })
        .collect();
    let caller = callsim::spawn_call(callsim(&bridge, &sid).audio(callsim::AudioSpec::Pcm8k(voice.into())).duration_secs(8.0));

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/hear_caller.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--url", &format!("ws://{}", lk.http_addr), "--room", &format!("call-{sid}"), "--call-sid", &sid])
        .args(["--freq", "1000", "--seconds", "2", "--rate", "8000"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("python finishes").expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python listener failed ({:?}):\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["mime_type"], mime, "the phone track as the server published it: {v}");
    let decoded = v["decoded_codecs"].as_array().cloned().unwrap_or_default();
    assert!(decoded.iter().any(|c| c.as_str().is_some_and(|c| c.eq_ignore_ascii_case(mime))), "the SDK decoded {mime}: {v}");
    let snr = v["snr_db"].as_f64().expect("snr");
    eprintln!("official Python SDK hears the caller over {mime}: median SNR {snr:.1} dB");
    let report = caller.finish().await.unwrap();
    assert_eq!(report.outcome, callsim::Outcome::Completed, "{report:?}");
    Some(snr)
}

fn python_livekit_api_available() -> bool {
    python_can_import("livekit.api", "pip install livekit-api")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_server_sdk_dials_out_through_the_bridge() {
    if !python_livekit_api_available() {
        return;
    }
    use callsim::far_end::Answer;
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    rest.far_end(Some("+15557770001"), far_end(Answer::Human { rings: 1 }));
    rest.far_end(Some("+15557770002"), far_end(Answer::Busy));
    let bridge = start_bridge(&lk, &rest.start().await, &["--dial-allow", "+1555777*", "--twilio-from-number", "+15550001111"]).await;
    let (agent, _events) = join(&lk, "agent-py", "py-room").await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/dial_out.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--url", &bridge.base, "--room", "py-room", "--to", "+15557770001", "--busy", "+15557770002"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("python finishes").expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python failed ({:?}):\n{stdout}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!((v["identity"].as_str(), v["room"].as_str()), (Some("py-callee"), Some("py-room")), "{v}");
    assert!(v["call_id"].as_str().unwrap().starts_with("CA"), "{v}");
    assert_eq!(v["busy"]["code"], "resource_exhausted", "{v}");
    assert_eq!(v["busy"]["sip_status_code"], 486, "{v}");
    // The per-request AMD override reached Twilio.
    let form = rest.created.lock().unwrap()[0].clone();
    assert_eq!(form_value(&form, "MachineDetection"), Some("Enable"));
    agent.close().await;
}
