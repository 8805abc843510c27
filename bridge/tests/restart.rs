//! The LiveKit server restarts in the middle of a phone call: devroom (a child process, so it
//! can be killed like a crashed node) is killed and started again on the same port. The bridge's
//! phone participant and the agent (a `room` participant, as the agent binary is) get
//! `leave{STATE_MISMATCH, RECONNECT}` on their resume and join again from scratch; audio flows
//! both ways again within 5 s of the server being back, the Twilio call never ends, and the
//! bridge's `/metrics` counts the reconnect. Then the same with UDP off on the restarted server.
//!
//! Needs the devroom binary: `cargo build -p devroom` (CI builds the workspace first).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use room::{AudioTrackOptions, ReconnectKind, Room, RoomEvent, RoomOptions};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A devroom process on a fixed port, killed on drop.
struct DevroomProcess {
    child: Child,
}

impl DevroomProcess {
    async fn start(port: u16, extra: &[&str]) -> DevroomProcess {
        let bin = std::env::var("DEVROOM_BIN").map(PathBuf::from).unwrap_or_else(|_| {
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
            target.join("debug").join("devroom")
        });
        assert!(bin.exists(), "devroom binary not found at {} — cargo build -p devroom", bin.display());
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--rtc-port", "0"])
            .args(extra)
            .env("RUST_LOG", std::env::var("DEVROOM_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn devroom");
        let t0 = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(15), "devroom did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        DevroomProcess { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevroomProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// When (since `t0`) each 20 ms frame of the phone's audio reached the agent.
fn agent_ears(mut events: mpsc::Receiver<RoomEvent>, t0: Instant) -> (mpsc::Receiver<(Duration, Vec<i16>)>, mpsc::Receiver<ReconnectKind>) {
    let (tx, heard) = mpsc::channel(4000);
    let (rtx, reconnects) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                RoomEvent::TrackSubscribed { track, participant } if participant.identity.starts_with("phone-") => {
                    let mut s = track.stream(8_000).unwrap();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while let Some(f) = s.recv().await {
                            if tx.try_send((t0.elapsed(), f.samples)).is_err() && tx.is_closed() {
                                break;
                            }
                        }
                    });
                }
                RoomEvent::Reconnected { kind } => {
                    let _ = rtx.try_send(kind);
                }
                // At the end of the call the bridge deletes the room.
                RoomEvent::Disconnected(r) => {
                    tracing::info!(reason = ?r, "agent left the room");
                    break;
                }
                _ => {}
            }
        }
    });
    (heard, reconnects)
}

/// Is this 8 kHz audio a tone at `freq` (SNR ≥ 15 dB, not silence)?
fn is_tone(pcm: &[i16], freq: f64) -> bool {
    let (snr, amp) = tone_snr(pcm, 8_000, freq);
    snr >= 15.0 && amp > 1000.0
}

async fn restart_mid_call(udp_off_after: bool) {
    let _ = tracing_subscriber::fmt().with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into())).with_test_writer().try_init();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lk_url = format!("ws://127.0.0.1:{port}");
    let mut dev = DevroomProcess::start(port, &[]).await;
    let rest = FakeRest::default();
    let rest_base = rest.start().await;
    // A steady test tone must not be taken for background noise and stopped. Recording on:
    // its attribute is set after the join, and must survive the rejoin (LiveKit refreshes the
    // token with the participant's current attributes, and the rejoin uses it).
    let recordings = std::env::temp_dir().join(format!("callbridge-restart-{}-{udp_off_after}", std::process::id()));
    let bridge = start_bridge_at(&lk_url, &rest_base, &["--opus-dtx", "false", "--recordings-dir", recordings.to_str().unwrap()]).await;
    let sid = call_sid(if udp_off_after { 11 } else { 10 });
    let t0 = Instant::now();

    // The agent: in the room first, speaking a 440 Hz tone all the time.
    let (agent, events) = Room::connect(&lk_url, &token("agent-1", &format!("call-{sid}"), "agent"), RoomOptions::default()).await.expect("agent joins");
    let (mut heard, mut agent_reconnects) = agent_ears(events, t0);
    let mut sink = agent.publish_audio(AudioTrackOptions { sample_rate: 8_000, ..Default::default() }).await.unwrap();
    let speaker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for k in 0.. {
            tick.tick().await;
            if sink.push(&tone(440.0, 8_000, k * 160, 160, 8000.0)).await.is_err() {
                break;
            }
        }
    });

    // The caller: a 1000 Hz tone for 30 s; we watch what it hears as it hears it.
    let mut caller = callsim::spawn_call(callsim(&bridge, &sid).tone(1000.0).duration_secs(30.0).timeout(Duration::from_secs(60)));
    let (media_tx, mut caller_heard) = mpsc::channel::<(Duration, Vec<i16>)>(8000);
    let caller_events = tokio::spawn(async move {
        while let Some(ev) = caller.next_event().await {
            if let callsim::CallEvent::Media { payload, .. } = ev {
                let _ = media_tx.try_send((t0.elapsed(), ulaw_to_pcm(&payload)));
            }
        }
        caller.finish().await
    });

    // Both directions flow before the restart.
    timeout(Duration::from_secs(20), until_tone(&mut heard, 1000.0, Duration::ZERO, "agent hears the caller")).await.expect("caller → agent before the restart");
    timeout(Duration::from_secs(20), until_tone(&mut caller_heard, 440.0, Duration::ZERO, "caller hears the agent")).await.expect("agent → caller before the restart");

    // The server dies (no leave for anyone) and comes back on the same port.
    dev.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let extra: &[&str] = if udp_off_after { &["--udp-off"] } else { &[] };
    let _dev2 = DevroomProcess::start(port, extra).await;
    let back = t0.elapsed();

    let caller_to_agent = timeout(Duration::from_secs(15), until_tone(&mut heard, 1000.0, back, "agent hears the caller again")).await.expect("caller → agent after the restart");
    let agent_to_caller = timeout(Duration::from_secs(15), until_tone(&mut caller_heard, 440.0, back, "caller hears the agent again")).await.expect("agent → caller after the restart");
    eprintln!(
        "server back at {back:?}; caller→agent after {:?}, agent→caller after {:?}",
        caller_to_agent - back,
        agent_to_caller - back
    );
    // 200 ms: the 1600-sample window that recognised the tone.
    assert!(caller_to_agent - back <= Duration::from_millis(5200), "caller → agent took {:?}", caller_to_agent - back);
    assert!(agent_to_caller - back <= Duration::from_millis(5200), "agent → caller took {:?}", agent_to_caller - back);
    assert_eq!(agent_reconnects.try_recv().ok(), Some(ReconnectKind::Full));

    // The bridge counted it.
    let metrics = reqwest_get(&format!("{}/metrics", bridge.base)).await;
    assert!(metrics.contains("room_reconnects_total{kind=\"full\"} 1"), "{}", metrics.lines().filter(|l| l.contains("reconnect")).collect::<Vec<_>>().join("\n"));

    assert!(!agent.is_closed(), "the agent is still in the call");
    // The phone participant rejoined with the attributes it had (here: where the call is
    // recorded, set after it first joined).
    let phone_attr = |k: &str| {
        agent.remote_participants().into_iter().find(|p| p.identity.starts_with("phone-")).and_then(|p| p.attributes.get(k).cloned())
    };
    assert!(
        eventually(Duration::from_secs(5), || phone_attr("callbridge.recording").is_some_and(|v| v.ends_with(&format!("{sid}.wav")))).await,
        "the recording's attribute survives the rejoin: {:?}",
        phone_attr("callbridge.recording")
    );
    // The Twilio call went on to its natural end: nobody hung up on the caller.
    let report = timeout(Duration::from_secs(60), caller_events).await.expect("call ends").expect("caller task").expect("call report");
    assert_eq!(report.outcome, callsim::Outcome::Completed, "{report:?}");
    assert!(rest.updates.lock().unwrap().iter().all(|(_, form, _)| !form.iter().any(|(k, v)| k == "Status" && v == "completed")), "the bridge hung up");
    speaker.abort();
    agent.close().await;
    let _ = std::fs::remove_dir_all(&recordings);
}

/// Waits for 200 ms of a `freq` tone that arrived at or after `after`; returns when it arrived.
async fn until_tone(rx: &mut mpsc::Receiver<(Duration, Vec<i16>)>, freq: f64, after: Duration, what: &str) -> Duration {
    let mut acc: Vec<i16> = Vec::new();
    loop {
        let (at, pcm) = rx.recv().await.unwrap_or_else(|| panic!("{what}: stream ended"));
        if at < after {
            continue;
        }
        acc.extend(pcm);
        if acc.len() >= 1600 {
            if is_tone(&acc[acc.len() - 1600..], freq) {
                return at;
            }
            acc.drain(..acc.len() - 1600);
        }
    }
}

async fn reqwest_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_restart_mid_call() {
    restart_mid_call(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_restart_mid_call_with_udp_blocked() {
    restart_mid_call(true).await;
}
