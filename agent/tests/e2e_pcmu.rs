//! The agent's voice codec follows the phone leg's: a caller's PCMU track (the bridge with
//! `PHONE_CODEC=auto` on a server that enables PCMU) gets a PCMU agent track at 8 kHz, which the
//! bridge forwards to the phone as it came; an Opus caller gets Opus as before.
//!
//! Needs `target/debug/devroom` (`cargo build -p devroom`).

use std::time::{Duration, Instant};

use room::{AudioCodec, AudioTrackOptions, PhoneAudio, Room, RoomEvent, RoomOptions};

mod common;
use common::{microphone, start_devroom, Kill};

/// What the phone saw of the agent's track: its published mime type, and per 20 ms frame
/// whether it came as μ-law and its level.
struct AgentTrack {
    mime: String,
    frames: Vec<(bool, f32)>,
}

async fn greeting_over(codec: AudioCodec, sid: &str) -> AgentTrack {
    let (_devroom, port) = start_devroom().await;
    let url = format!("ws://127.0.0.1:{port}");
    let room_name = format!("call-{sid}");
    let token = agent::token::sign(
        "devkey",
        "secret",
        serde_json::json!({"sub": format!("phone-{sid}"), "kind": "sip",
            "attributes": {"sip.phoneNumber": "+15551230001", "sip.twilio.callSid": sid},
            "video": {"roomJoin": true, "room": room_name, "canPublish": true, "canSubscribe": true, "canPublishData": true}}),
        3600,
    );
    let (phone, mut events) = Room::connect(&url, &token, RoomOptions::default()).await.unwrap();
    // As the bridge publishes the caller: 8 kHz, PCMU as it came or Opus.
    let sink = phone.publish_audio(AudioTrackOptions { name: "phone".into(), sample_rate: 8_000, codec, ..Default::default() }).await.unwrap();
    let (_mic, _mic_task) = microphone(sink, 160);

    let dir = tempfile::tempdir().unwrap();
    let _agent = Kill(
        std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
            .env("LIVEKIT_URL", &url)
            .env("LIVEKIT_API_KEY", "devkey")
            .env("LIVEKIT_API_SECRET", "secret")
            .env("AGENT_ROOM", &room_name)
            .env("CALL_DB", dir.path().join("calls.db"))
            .env("RUST_LOG", std::env::var("AGENT_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (track, participant) = loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(RoomEvent::TrackSubscribed { track, participant })) => break (track, participant),
            Ok(Some(_)) => continue,
            other => panic!("no agent track: {other:?}"),
        }
    };
    assert_eq!(participant.kind, room::ParticipantKind::Agent);
    let mime = participant.tracks.iter().find(|t| t.sid == track.sid()).map(|t| t.mime_type.clone()).unwrap_or_default();
    // The greeting: until the agent has spoken and then been quiet (or sent nothing: it sends
    // frames only while it speaks) for a second.
    let mut stream = track.phone_stream(100).unwrap();
    let mut frames = Vec::new();
    let mut last_loud: Option<Instant> = None;
    loop {
        let until = match last_loud {
            Some(_) => tokio::time::Instant::now() + Duration::from_secs(1),
            None => deadline,
        };
        let Ok(Some(f)) = tokio::time::timeout_at(until.min(deadline), stream.recv()).await else { break };
        let (ulaw, pcm) = match f.audio {
            PhoneAudio::Ulaw(b) => (true, b.iter().map(|&x| proto::g711::ulaw_decode(x)).collect::<Vec<i16>>()),
            PhoneAudio::Pcm(p) => (false, p),
        };
        let level = agent::vad::level_dbfs(&pcm);
        frames.push((ulaw, level));
        if level > -40.0 {
            last_loud = Some(Instant::now());
        }
        if last_loud.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
    }
    phone.close().await;
    AgentTrack { mime, frames }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcmu_caller_hears_a_pcmu_agent_and_an_opus_caller_opus() {
    let pcmu = greeting_over(AudioCodec::Pcmu, "CApcmu00000000000000000000000000001").await;
    assert!(pcmu.mime.eq_ignore_ascii_case("audio/PCMU"), "agent track {}", pcmu.mime);
    let loud = pcmu.frames.iter().filter(|(_, l)| *l > -40.0).count();
    assert!(loud > 50, "greeting: only {loud} loud frames");
    assert!(pcmu.frames.iter().all(|(ulaw, _)| *ulaw), "every frame of a PCMU track comes as μ-law");

    let opus = greeting_over(AudioCodec::Opus, "CApcmu00000000000000000000000000002").await;
    assert!(opus.mime.eq_ignore_ascii_case("audio/opus"), "agent track {}", opus.mime);
    let loud = opus.frames.iter().filter(|(_, l)| *l > -40.0).count();
    assert!(loud > 50, "greeting: only {loud} loud frames");
    assert!(opus.frames.iter().all(|(ulaw, _)| !*ulaw));
}
