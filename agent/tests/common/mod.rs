//! Shared by the agent's end-to-end tests: child processes that die with the test, a devroom
//! binary started on a free port, and reading a recogniser's events up to the end of a turn.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The debug `devroom` binary (`DEVROOM_BIN` overrides), built by `cargo build --workspace`.
pub fn devroom_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DEVROOM_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("debug").join("devroom")
}

/// Starts devroom on a free port and waits until it listens; returns it and the port.
pub async fn start_devroom() -> (Kill, u16) {
    let bin = devroom_bin();
    assert!(bin.exists(), "devroom binary not found at {} — build it first: cargo build -p devroom", bin.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--rtc-port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn devroom");
    let k = Kill(child);
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(t0.elapsed() < Duration::from_secs(15), "devroom did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (k, port)
}

/// The caller's microphone: one frame of `frame_len` samples every 20 ms into `sink`, silence
/// unless a line sent on the returned channel is queued.
pub fn microphone(
    mut sink: room::AudioSink,
    frame_len: usize,
) -> (tokio::sync::mpsc::Sender<Vec<i16>>, tokio::task::JoinHandle<()>) {
    let (say_tx, mut say_rx) = tokio::sync::mpsc::channel::<Vec<i16>>(8);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut queue: std::collections::VecDeque<i16> = Default::default();
        loop {
            tick.tick().await;
            while let Ok(s) = say_rx.try_recv() {
                queue.extend(s);
            }
            let mut f: Vec<i16> = queue.drain(..queue.len().min(frame_len)).collect();
            f.resize(frame_len, 0);
            if sink.push(&f).await.is_err() {
                return;
            }
        }
    });
    (say_tx, task)
}

/// A recogniser's events until an `EndOfTurn` (included), or all that came within `wait`.
pub async fn events_until_turn(
    s: &mut Box<dyn agent::providers::SttSession>,
    wait: Duration,
) -> Vec<agent::providers::SttEvent> {
    let mut events = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while let Some(e) = s.next_event().await {
            let done = matches!(e, agent::providers::SttEvent::EndOfTurn { .. });
            events.push(e);
            if done {
                break;
            }
        }
    })
    .await;
    events
}

/// What a phone participant sees of the agent.
pub enum Obs {
    /// Agent audio: a 20 ms frame's level (dBFS) and when it came.
    Frame(Instant, f32),
    Control(proto::control::Control),
    /// A `SipDTMF` packet (LiveKit's `publish_dtmf`): sender, code, key.
    Dtmf(String, u32, String),
}

/// A phone participant (kind `sip`, `phone-<sid>`) in `room_name`: the room, what it observes,
/// and its microphone.
pub async fn phone(url: &str, room_name: &str, sid: &str) -> (room::Room, tokio::sync::mpsc::Receiver<Obs>, tokio::sync::mpsc::Sender<Vec<i16>>) {
    use room::{AudioTrackOptions, Room, RoomEvent, RoomOptions};
    let token = agent::token::sign(
        "devkey",
        "secret",
        serde_json::json!({"sub": format!("phone-{sid}"), "kind": "sip",
            "attributes": {"sip.phoneNumber": "+15551230001", "sip.twilio.callSid": sid},
            "video": {"roomJoin": true, "room": room_name, "canPublish": true, "canSubscribe": true, "canPublishData": true, "canUpdateOwnMetadata": true}}),
        3600,
    );
    let (phone, mut events) = Room::connect(url, &token, RoomOptions::default()).await.unwrap();
    let sink = phone.publish_audio(AudioTrackOptions { name: "caller".into(), sample_rate: 16_000, ..Default::default() }).await.unwrap();
    let (say, _mic) = microphone(sink, 320);
    let (tx, rx) = tokio::sync::mpsc::channel::<Obs>(8192);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                RoomEvent::TrackSubscribed { track, .. } => {
                    let mut st = track.stream(16_000).unwrap();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while let Some(f) = st.recv().await {
                            if tx.send(Obs::Frame(Instant::now(), agent::vad::level_dbfs(&f.samples))).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                RoomEvent::DataReceived(m) if m.topic.as_deref() == Some(proto::control::CONTROL_TOPIC) => {
                    if let Ok(c) = proto::control::Control::parse(&m.payload) {
                        let _ = tx.send(Obs::Control(c)).await;
                    }
                }
                RoomEvent::DtmfReceived(d) => {
                    let _ = tx.send(Obs::Dtmf(d.participant_identity, d.code, d.digit)).await;
                }
                _ => {}
            }
        }
    });
    (phone, rx, say)
}

/// The Silero model for an agent under test, or None (the test is skipped; with
/// AGENT_REQUIRE_MODELS_SILERO=1 it fails).
pub fn silero_model() -> Option<PathBuf> {
    let p = std::env::var("SILERO_VAD_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(agent::vad::silero::DEFAULT_MODEL));
    if p.exists() {
        return Some(p);
    }
    assert!(std::env::var("AGENT_REQUIRE_MODELS_SILERO").as_deref() != Ok("1"), "no Silero model at {}", p.display());
    eprintln!("skipped: no Silero model (scripts/models.sh silero)");
    None
}

/// A call in a fresh devroom: the phone participant is in the room, the agent not yet.
pub struct TestCall {
    pub devroom: Kill,
    pub url: String,
    pub room_name: String,
    pub phone: room::Room,
    pub obs: tokio::sync::mpsc::Receiver<Obs>,
    pub mic: tokio::sync::mpsc::Sender<Vec<i16>>,
    pub db: PathBuf,
    pub dir: tempfile::TempDir,
}

pub async fn test_call(sid: &str) -> TestCall {
    let (devroom, port) = start_devroom().await;
    let url = format!("ws://127.0.0.1:{port}");
    let room_name = format!("call-{sid}");
    let (phone, obs, mic) = phone(&url, &room_name, sid).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("calls.db");
    TestCall { devroom, url, room_name, phone, obs, mic, db, dir }
}

impl TestCall {
    /// The agent binary for this call's room (`--room`), as a script would start it; add
    /// variables, then spawn.
    pub fn agent(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
        c.env("LIVEKIT_URL", &self.url)
            .env("LIVEKIT_API_KEY", "devkey")
            .env("LIVEKIT_API_SECRET", "secret")
            .env("AGENT_ROOM", &self.room_name)
            .env("CALL_DB", &self.db)
            .env("RUST_LOG", std::env::var("AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }
}
