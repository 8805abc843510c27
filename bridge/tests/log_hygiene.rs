//! No secret and no caller's personal data in the bridge's logs: the real binary, every secret
//! set to a marker, a whole call (webhook, stream, DTMF, the agent's transcript and hang-up,
//! the status callback), logs at debug — then grep.

mod common;

use std::process::Stdio;

use clap::Parser;
use std::time::Duration;

use common::*;
use proto::control::{Control, CONTROL_TOPIC};
use room::DataPacketBuilder;
use tokio::io::AsyncReadExt;

const CALLER: &str = "+15557654321";
const MARKERS: [&str; 4] = ["MARKER-TWILIO-TOKEN", "MARKER-LIVEKIT-SECRET", "MARKER-SIP-PASSWORD", "MARKERLIVEKITKEY"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_call_logs_no_secret_and_no_caller_number() {
    let cfg = devroom::Config::try_parse_from([
        "devroom",
        "--listen",
        "127.0.0.1:0",
        "--rtc-port",
        "0",
        "--api-key",
        "MARKERLIVEKITKEY",
        "--api-secret",
        "MARKER-LIVEKIT-SECRET",
    ])
    .unwrap();
    let lk = devroom::start(cfg).await.unwrap();
    let rest = FakeRest::default();
    let rest_base = rest.start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut bridge = tokio::process::Command::new(env!("CARGO_BIN_EXE_bridge"))
        .env("BRIDGE_LISTEN", format!("127.0.0.1:{port}"))
        .env("PUBLIC_URL", &base)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", "MARKER-TWILIO-TOKEN")
        .env("TWILIO_API_BASE", &rest_base)
        .env("LIVEKIT_URL", format!("ws://{}", lk.http_addr))
        .env("LIVEKIT_API_KEY", "MARKERLIVEKITKEY")
        .env("LIVEKIT_API_SECRET", "MARKER-LIVEKIT-SECRET")
        .env("LIVEKIT_SIP_PASSWORD", "MARKER-SIP-PASSWORD")
        .env("TRANSFER_ALLOW", "+15551234567")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = callsim::webhook::client(Duration::from_secs(5)).unwrap();
    assert!(
        eventually_async(Duration::from_secs(15), || {
            let http = http.clone();
            let url = format!("{base}/health");
            async move { http.get(url).send().await.is_ok() }
        })
        .await,
        "bridge up"
    );

    let sid = call_sid(301);
    let jwt = livekit_api::access_token::AccessToken::with_api_key("MARKERLIVEKITKEY", "MARKER-LIVEKIT-SECRET")
        .with_identity("agent-301")
        .with_kind("agent")
        .with_grants(livekit_api::access_token::VideoGrants {
            room_join: true,
            room: format!("call-{sid}"),
            can_publish_data: Some(true),
            can_subscribe: Some(true),
            ..Default::default()
        })
        .to_jwt()
        .unwrap();
    let (agent, mut events) =
        room::Room::connect(&format!("ws://{}", lk.http_addr), &jwt, room::RoomOptions::default()).await.unwrap();
    let cfg = callsim::CallConfig::new(base.clone())
        .auth_token("MARKER-TWILIO-TOKEN")
        .account_sid(ACCOUNT_SID)
        .call_sid(&sid)
        .from_number(CALLER)
        .duration_secs(30.0)
        .dtmf_at(Duration::from_millis(300), '7');
    let caller = callsim::spawn_call(cfg);
    // The agent hears the caller, says a transcript line with the form's values, then hangs up.
    let joined = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ev) = events.recv().await {
            if let room::RoomEvent::TrackSubscribed { participant, .. } = ev {
                if participant.identity.starts_with("phone-") {
                    return;
                }
            }
        }
    })
    .await;
    assert!(joined.is_ok());
    tokio::time::sleep(Duration::from_millis(800)).await; // the DTMF goes through
    let line = Control::Transcript {
        role: "user".into(),
        text: format!("my number is {CALLER}"),
        is_final: true,
        fields: [("callback".to_string(), CALLER.to_string())].into(),
    };
    agent.send_data(DataPacketBuilder::new(line.to_bytes()).topic(CONTROL_TOPIC)).await.unwrap();
    agent.send_data(DataPacketBuilder::new(Control::Transfer { to: "+15551234567".into() }.to_bytes()).topic(CONTROL_TOPIC)).await.unwrap();
    agent
        .send_data(DataPacketBuilder::new(Control::Hangup { reason: Some("done".into()) }.to_bytes()).topic(CONTROL_TOPIC))
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), caller.finish()).await.unwrap().unwrap();
    assert_eq!(report.outcome, callsim::Outcome::Completed, "{report:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.close().await;

    let _ = bridge.start_kill();
    let mut out = String::new();
    bridge.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
    bridge.stderr.take().unwrap().read_to_string(&mut out).await.unwrap();
    assert!(out.contains("call admitted") && out.contains("call ended"), "the call was logged:\n{out}");
    for m in MARKERS {
        assert!(!out.contains(m), "secret {m} in the logs:\n{}", lines_with(&out, m));
    }
    assert!(!out.contains(CALLER), "the caller's number in the logs:\n{}", lines_with(&out, CALLER));
    assert!(!out.contains("+15551234567"), "the transfer number in the logs:\n{}", lines_with(&out, "+15551234567"));
    assert!(out.contains("+1555***4321"), "numbers are logged masked");
    assert!(!out.contains("\"digit\"") && !out.contains("digit="), "DTMF digits in the logs:\n{}", lines_with(&out, "digit"));
}

fn lines_with(out: &str, needle: &str) -> String {
    out.lines().filter(|l| l.contains(needle)).take(5).collect::<Vec<_>>().join("\n")
}

async fn eventually_async<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
