//! The official LiveKit Python SDK, in the call's room, hears the caller through the bridge.

mod common;

use std::time::Duration;

use common::*;

fn python_livekit_available() -> bool {
    python_can_import("livekit.rtc, numpy", "pip install livekit==1.2.1 numpy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_hears_the_caller() {
    if !python_livekit_available() {
        return;
    }
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    // Opus DTX would take a steady test tone for background noise and stop sending it.
    let bridge = start_bridge(&lk, &rest.start().await, &["--opus-dtx", "false"]).await;
    let sid = call_sid(0x77);
    let caller = callsim::spawn_call(callsim(&bridge, &sid).tone(1000.0).duration_secs(8.0));

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/hear_caller.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--url", &format!("ws://{}", lk.http_addr), "--room", &format!("call-{sid}"), "--call-sid", &sid])
        .args(["--freq", "1000", "--seconds", "2"])
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
    let report = caller.finish().await.unwrap();
    assert_eq!(report.outcome, callsim::Outcome::Completed, "{report:?}");
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
