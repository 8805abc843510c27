//! The `callsim` binary against the fake bridge.

mod common;

use common::{Behavior, Peer, TOKEN};
use tokio::process::Command;

fn callsim() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_callsim"));
    c.env_remove("TWILIO_AUTH_TOKEN").env_remove("TWILIO_ACCOUNT_SID").env_remove("CALLSIM_URL");
    c
}

#[tokio::test]
async fn help_documents_the_options() {
    let out = callsim().arg("--help").output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in ["--url", "--auth-token", "--tone", "--wav", "--fast", "--jitter-ms", "--loss", "--dtmf", "--record", "--calls", "--ramp-per-sec", "--no-status", "TWILIO_AUTH_TOKEN"] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_prints_a_json_report_and_records() {
    let peer = Peer::start(Behavior { script: vec![common::Step::Media(common::tone_mulaw(440.0, 300))], ..Default::default() }).await;
    let dir = std::env::temp_dir().join(format!("callsim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("out.wav");
    let out = callsim()
        .args(["--url", &peer.base, "--tone", "440", "--duration", "1", "--fast", "--dtmf", "1@0.5", "--record"])
        .arg(&wav)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["frames_sent"], 50);
    assert_eq!(r["dtmf_sent"], 1);
    assert_eq!(r["status_callback_status"], 204);
    assert!(hound::WavReader::open(&wav).unwrap().len() >= 8000);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_exits_non_zero_and_load_prints_an_aggregate() {
    let peer = Peer::start(Behavior::default()).await;
    let out = callsim().args(["--url", &peer.base, "--auth-token", "nope", "--fast"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"], "webhook_refused");

    let out = callsim()
        .args(["--url", &peer.base, "--auth-token", TOKEN, "--fast", "--duration", "0.5", "--calls", "3", "--ramp-per-sec", "100"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((a["calls"].as_u64(), a["completed"].as_u64()), (Some(3), Some(3)), "{a}");
    assert_eq!(a["frames_sent"], 75);

    let out = callsim().args(["--url", &peer.base, "--loss", "200"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error");
}
