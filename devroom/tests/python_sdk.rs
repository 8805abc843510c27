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

/// `audio_data.py`'s result: the 440 Hz tone heard well above silence, data both ways.
fn assert_audio_and_data(r: &serde_json::Value) {
    assert_eq!(r["ok"], true, "{r}");
    let peak = r["audio"]["peak_hz"].as_f64().unwrap();
    assert!((peak - 440.0).abs() < 10.0, "peak {peak}");
    assert!(r["audio"]["rms"].as_f64().unwrap() > 1000.0);
    assert_eq!(r["data"]["listener_got"]["from"], "speaker");
    assert_eq!(r["data"]["speaker_got"]["topic"], "reply");
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
    assert_audio_and_data(&r);
    assert_eq!(r["data"]["bystander_leak"].as_array().map(|a| a.len()), Some(0));
}

/// The official SDK (libwebrtc) through devroom's embedded TURN server: `--force-relay` makes
/// it gather relayed candidates only (`iceTransportPolicy: relay`) with the credentials of the
/// join's `ice_servers`, so its every packet goes through a TURN/UDP allocation; the tone is
/// heard and data flows as in the direct test.
#[test]
fn python_sdk_audio_and_data_through_turn() {
    if !python_has("livekit.rtc, numpy", PIP) {
        return;
    }
    let server = Devroom::start("python_turn", &["--turn-port", "0", "--force-relay"]);
    let r = run_script(&server, "audio_data.py", &["--room", "py-turn"]);
    assert_audio_and_data(&r);
    // Three participants, two peer connections each: every one of them allocated a relay
    // (libwebrtc's credentials accepted).
    let log = server.log_tail(100_000);
    let relays = log.matches("TURN relay allocated").count();
    eprintln!("{relays} TURN relays allocated");
    assert!(relays >= 6, "{relays} relays allocated\n{}", server.log_tail(60));
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

/// RoomService calls as seen by official Python SDK participants: SendData (broadcast and
/// targeted), UpdateParticipant (attributes/metadata/name), ListParticipants/GetParticipant,
/// RemoveParticipant (reason PARTICIPANT_REMOVED), DeleteRoom (reason ROOM_DELETED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_sees_room_service_operations() {
    use livekit_api::services::room::{RoomClient, SendDataOptions, UpdateParticipantOptions};
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    if !python_has("livekit.rtc, numpy", PIP) {
        return;
    }
    let server = Devroom::start("python_admin", &[]);
    let spawn = |identity: &str| {
        let mut child = Command::new("python3")
            .arg(py_script("observe.py"))
            .args(["--url", &server.ws_url(), "--room", "ops", "--identity", identity, "--timeout", "40"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(30)).expect("observer joined");
        assert!(first.starts_with("joined PA_"), "{first}");
        (child, rx)
    };
    let (mut obs, obs_rx) = spawn("obs");
    let (mut other, other_rx) = spawn("other");

    let client = RoomClient::with_api_key(&server.http_url(), common::API_KEY, common::API_SECRET);
    let listed = client.list_participants("ops").await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|p| p.identity.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["obs", "other"]);
    let p = client.get_participant("ops", "obs").await.unwrap();
    assert_eq!(p.attributes.get("initial").map(String::as_str), Some("yes"));
    tokio::time::sleep(Duration::from_millis(500)).await; // data channels open

    client
        .send_data("ops", b"to-all".to_vec(), SendDataOptions { topic: Some("server".into()), ..Default::default() })
        .await
        .unwrap();
    client
        .send_data(
            "ops",
            b"to-obs".to_vec(),
            SendDataOptions {
                topic: Some("server".into()),
                destination_identities: vec!["obs".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let updated = client
        .update_participant(
            "ops",
            "obs",
            UpdateParticipantOptions {
                attributes: [("role".to_string(), "agent".to_string())].into(),
                metadata: "meta-2".into(),
                name: "Observer".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.attributes.get("role").map(String::as_str), Some("agent"));
    assert_eq!(updated.metadata, "meta-2");
    tokio::time::sleep(Duration::from_millis(800)).await;

    client.remove_participant("ops", "obs").await.unwrap();
    let last_json = |rx: std::sync::mpsc::Receiver<String>| -> serde_json::Value {
        let mut last = String::new();
        while let Ok(l) = rx.recv_timeout(Duration::from_secs(20)) {
            last = l;
        }
        serde_json::from_str(&last).unwrap_or(serde_json::Value::Null)
    };
    let obs_res = last_json(obs_rx);
    let _ = obs.wait();
    client.delete_room("ops").await.unwrap();
    let other_res = last_json(other_rx);
    let _ = other.wait();
    let ctx = format!("obs: {obs_res}\nother: {other_res}\nlog:\n{}", server.log_tail(30));

    let texts = |r: &serde_json::Value| -> Vec<String> {
        r["data"].as_array().into_iter().flatten().map(|d| d["data"].as_str().unwrap_or("").to_string()).collect()
    };
    assert_eq!(texts(&obs_res), vec!["to-all", "to-obs"], "{ctx}");
    assert_eq!(texts(&other_res), vec!["to-all"], "{ctx}");
    assert!(obs_res["data"][0]["from"].is_null(), "server data has no sender: {ctx}");
    assert_eq!(obs_res["data"][0]["topic"], "server", "{ctx}");
    // obs sees its own attribute change; other sees obs's.
    let saw_role = |r: &serde_json::Value| {
        r["attributes"].as_array().into_iter().flatten().any(|a| a["who"] == "obs" && a["changed"]["role"] == "agent")
    };
    assert!(saw_role(&obs_res) && saw_role(&other_res), "{ctx}");
    assert!(
        other_res["metadata"].as_array().into_iter().flatten().any(|m| m["who"] == "obs" && m["new"] == "meta-2"),
        "{ctx}"
    );
    assert_eq!(obs_res["disconnected"], livekit_protocol::DisconnectReason::ParticipantRemoved as i32, "{ctx}");
    assert_eq!(other_res["disconnected"], livekit_protocol::DisconnectReason::RoomDeleted as i32, "{ctx}");
}
