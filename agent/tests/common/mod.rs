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
