//! Barge-in end to end in `devroom`: the phone talks over the greeting; the agent stops its
//! audio, sends `interrupt` for the greeting's utterance (named `a1` before its first frame),
//! and — once the "bridge" (played here by the phone participant) reports what was heard under
//! that name — trims the greeting in its history and call record to that, then answers.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::providers::offline_tts::OfflineTts;
use agent::vad::level_dbfs;
use proto::control::{Control, CONTROL_TOPIC};
use room::{AudioTrackOptions, DataPacketBuilder, Room, RoomEvent, RoomOptions};
use tokio::sync::mpsc;

mod common;
use common::{start_devroom, Kill};

enum Obs {
    Frame(Instant, f32),
    Control(Control),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_interrupts_the_greeting_and_history_is_trimmed_to_what_was_heard() {
    let (_devroom, port) = start_devroom().await;
    let url = format!("ws://127.0.0.1:{port}");
    let room_name = "call-CAbarge000000000000000000000000001";
    let token = agent::token::sign(
        "devkey",
        "secret",
        serde_json::json!({"sub": "phone-CAbarge000000000000000000000000001", "kind": "sip",
            "video": {"roomJoin": true, "room": room_name, "canPublish": true, "canSubscribe": true, "canPublishData": true}}),
        3600,
    );
    let (phone, mut events) = Room::connect(&url, &token, RoomOptions::default())
        .await
        .unwrap();
    let sink = phone
        .publish_audio(AudioTrackOptions {
            name: "caller".into(),
            sample_rate: 16_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let speech = OfflineTts::new("en-us+m3", 140, 16_000)
        .synthesize("my name is john")
        .await
        .unwrap();
    let (say_tx, mic) = common::microphone(sink, 320);

    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("calls.db");
    let mut agent_proc = Kill(
        Command::new(env!("CARGO_BIN_EXE_agent"))
            .env("LIVEKIT_URL", &url)
            .env("LIVEKIT_API_KEY", "devkey")
            .env("LIVEKIT_API_SECRET", "secret")
            .env("AGENT_ROOM", room_name)
            .env("CALL_DB", &db)
            .env(
                "RUST_LOG",
                std::env::var("AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let (obs_tx, mut obs) = mpsc::channel::<Obs>(4096);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                RoomEvent::TrackSubscribed { track, .. } => {
                    let mut st = track.stream(16_000).unwrap();
                    let tx = obs_tx.clone();
                    tokio::spawn(async move {
                        while let Some(f) = st.recv().await {
                            if tx
                                .send(Obs::Frame(Instant::now(), level_dbfs(&f.samples)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                }
                RoomEvent::DataReceived(m) if m.topic.as_deref() == Some(CONTROL_TOPIC) => {
                    if let Ok(c) = Control::parse(&m.payload) {
                        let _ = obs_tx.send(Obs::Control(c)).await;
                    }
                }
                _ => {}
            }
        }
    });

    // Wait until the greeting has been playing for 1.2 s, then talk over it.
    let mut first_loud: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_loud.is_none_or(|t| t.elapsed() < Duration::from_millis(1200)) {
        assert!(Instant::now() < deadline, "no greeting");
        if let Ok(Some(Obs::Frame(t, l))) =
            tokio::time::timeout(Duration::from_millis(100), obs.recv()).await
        {
            if l > -40.0 && first_loud.is_none() {
                first_loud = Some(t);
            }
        }
    }
    say_tx.send(speech.clone()).await.unwrap();
    let barged_at = Instant::now();

    // The agent sends `interrupt` for the greeting, by the name it gave it.
    let mut interrupt_at = None;
    let mut frames: Vec<(Instant, f32)> = Vec::new();
    while interrupt_at.is_none() {
        assert!(
            barged_at.elapsed() < Duration::from_secs(5),
            "no interrupt"
        );
        match tokio::time::timeout(Duration::from_millis(100), obs.recv()).await {
            Ok(Some(Obs::Control(Control::Interrupt { utterance_id }))) => {
                assert_eq!(utterance_id.as_deref(), Some("a1"));
                interrupt_at = Some(Instant::now());
            }
            Ok(Some(Obs::Frame(t, l))) => frames.push((t, l)),
            _ => {}
        }
    }
    let interrupt_at = interrupt_at.unwrap();
    let reaction = interrupt_at - barged_at;
    eprintln!("barge-in: interrupt {reaction:?} after the caller started talking");
    // The offline recogniser has no interim words: long speech stops the agent after the agent
    // file's vad_interrupt_ms (1 s), plus the detector's onset and the trip through devroom.
    assert!(
        reaction >= Duration::from_millis(900) && reaction <= Duration::from_millis(2000),
        "interrupt {reaction:?} after the caller started (vad_interrupt_ms is 1 s)"
    );
    // The bridge's answer: the caller heard 1 000 ms of the greeting.
    let pb = Control::Playback {
        utterance_id: "a1".into(),
        heard_ms: 1000,
        complete: false,
        interrupted: true,
    };
    phone
        .send_data(DataPacketBuilder::new(pb.to_bytes()).topic(CONTROL_TOPIC))
        .await
        .unwrap();

    // Agent audio stops: from 150 ms after the interrupt until its reply, nothing loud.
    let caller_done = barged_at + Duration::from_millis(speech.len() as u64 / 16);
    let mut reply_at = None;
    let until = Instant::now() + Duration::from_secs(20);
    while reply_at.is_none() && Instant::now() < until {
        if let Ok(Some(Obs::Frame(t, l))) =
            tokio::time::timeout(Duration::from_millis(100), obs.recv()).await
        {
            if l > -40.0 && t > interrupt_at + Duration::from_millis(150) {
                assert!(
                    t > caller_done,
                    "agent audio {:?} after the interrupt, before the caller finished",
                    t - interrupt_at
                );
                reply_at = Some(t);
            }
        }
    }
    assert!(
        reply_at.is_some(),
        "the agent did not answer after the barge-in"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The caller hangs up; the agent ends the call and writes the record.
    mic.abort();
    phone.close().await;
    let t0 = Instant::now();
    while agent_proc.0.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "agent did not exit after the caller left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (text, interrupted, heard): (String, i64, Option<String>) = conn
        .query_row("SELECT text, interrupted, heard_text FROM turns WHERE role = 'assistant' ORDER BY seq LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert!(
        text.starts_with("Hello, this is the Acme incident line."),
        "{text}"
    );
    assert_eq!(interrupted, 1);
    let heard = heard.expect("heard text recorded");
    // 1 s of the first sentence (~2.5 s long at 165 wpm): a non-empty strict prefix of it.
    assert!(
        !heard.is_empty()
            && "Hello, this is the Acme incident line.".starts_with(heard.as_str())
            && heard.len() < 30,
        "heard {heard:?}"
    );
    let user: String = conn
        .query_row(
            "SELECT text FROM turns WHERE role = 'user' ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // (Recognition itself is tested elsewhere; here the caller's turn just has to be there.)
    assert!(!user.trim().is_empty(), "{user}");
    let outcome: String = conn
        .query_row("SELECT outcome FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outcome, "caller_hung_up");
}
