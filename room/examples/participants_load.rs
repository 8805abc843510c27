//! CPU and memory per joined `room` participant, and what devroom spends on it.
//!
//! Starts a release `devroom`, joins N participants in N/2 rooms of two (a call's shape: each
//! publishes a 440 Hz tone as 20 ms Opus frames and is subscribed to the other's track, decoding
//! it), lets it settle, then measures T seconds: CPU (utime+stime from `/proc/<pid>/stat`) and
//! RSS (`/proc/<pid>/status`) of this process and of devroom, per participant.
//!
//! ```text
//! cargo build --release -p devroom && cargo build --release -p room --example participants_load
//! target/release/examples/participants_load --participants 50 --seconds 30 [--rate 8000] [--warmup 5]
//! ```
//! `--devroom PATH` (or `DEVROOM_BIN`) picks the server binary; default
//! `$CARGO_TARGET_DIR/release/devroom` or `target/release/devroom`. `--url ws://…` uses a server
//! that is already running instead (then only this process is measured).

#[path = "../tests/common/token.rs"]
mod token;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use room::{AudioTrackOptions, DisconnectReason, Room, RoomEvent, RoomOptions};

#[derive(Default)]
struct Counters {
    joined: AtomicU64,
    subscribed: AtomicU64,
    frames_out: AtomicU64,
    frames_in: AtomicU64,
    concealed: AtomicU64,
    push_errors: AtomicU64,
    /// Packets that reached a track (before the stream's queue and decoder).
    packets_in: AtomicU64,
    /// Packets a stream's bounded queue dropped because its consumer was behind.
    stream_dropped: AtomicU64,
}

struct Args {
    participants: usize,
    seconds: u64,
    warmup: u64,
    rate: u32,
    devroom: Option<PathBuf>,
    url: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args { participants: 20, seconds: 30, warmup: 5, rate: 8_000, devroom: None, url: None };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--participants" => a.participants = v.parse().expect("--participants N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds T"),
            "--warmup" => a.warmup = v.parse().expect("--warmup S"),
            "--rate" => a.rate = v.parse().expect("--rate 8000|16000|24000|48000"),
            "--devroom" => a.devroom = Some(v.into()),
            "--url" => a.url = Some(v),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.participants >= 2 && a.participants % 2 == 0, "--participants must be even (rooms of two)");
    a
}

/// CPU time (utime + stime) of a process, from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // CLK_TCK = 100
}

/// VmRSS of a process in kB.
fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_devroom(bin: &PathBuf) -> (Server, u16) {
    assert!(bin.exists(), "devroom not found at {} (cargo build --release -p devroom, or --devroom PATH)", bin.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--rtc-port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn devroom");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(15), "devroom did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server(child), port)
}

/// One second of a 440 Hz tone as 50 frames (440 whole cycles: it loops seamlessly).
fn tone_frames(rate: u32) -> Arc<Vec<Vec<i16>>> {
    let n = (rate / 50) as usize;
    let frames = (0..50)
        .map(|f| {
            (f * n..(f + 1) * n)
                .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate as f64).sin()) as i16)
                .collect()
        })
        .collect();
    Arc::new(frames)
}

async fn participant(url: String, token: String, index: usize, total: usize, rate: u32, tone: Arc<Vec<Vec<i16>>>, c: Arc<Counters>) -> Room {
    let (room, mut events) = Room::connect(&url, &token, RoomOptions::default()).await.expect("join");
    c.joined.fetch_add(1, Ordering::Relaxed);
    let mut sink = room.publish_audio(AudioTrackOptions { name: "tone".into(), sample_rate: rate, ..Default::default() }).await.expect("publish");
    // Spread the participants' frames over the 20 ms period.
    let offset = Duration::from_micros((20_000 * index / total) as u64);
    let cp = c.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_millis(20));
        for f in 0usize.. {
            tick.tick().await;
            match sink.push(&tone[f % tone.len()]).await {
                Ok(()) => cp.frames_out.fetch_add(1, Ordering::Relaxed),
                Err(_) => cp.push_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    let ce = c.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                RoomEvent::TrackSubscribed { track, .. } => {
                    ce.subscribed.fetch_add(1, Ordering::Relaxed);
                    let mut stream = track.stream(rate).expect("stream");
                    let cs = ce.clone();
                    tokio::spawn(async move {
                        let (mut seen_packets, mut seen_dropped) = (0, 0);
                        while let Some(f) = stream.recv().await {
                            cs.frames_in.fetch_add(1, Ordering::Relaxed);
                            if f.concealed {
                                cs.concealed.fetch_add(1, Ordering::Relaxed);
                            }
                            let (p, d) = (track.packets_received(), stream.dropped_packets());
                            cs.packets_in.fetch_add(p - seen_packets, Ordering::Relaxed);
                            cs.stream_dropped.fetch_add(d - seen_dropped, Ordering::Relaxed);
                            (seen_packets, seen_dropped) = (p, d);
                        }
                    });
                }
                RoomEvent::Disconnected(reason) => {
                    if reason != DisconnectReason::ClientInitiated {
                        eprintln!("participant {index} disconnected: {reason:?}");
                    }
                    break;
                }
                _ => {}
            }
        }
    });
    room
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let n = args.participants;
    let me = std::process::id();
    let rss_base = rss_kb(me);

    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = args.devroom.clone().or_else(|| std::env::var("DEVROOM_BIN").ok().map(PathBuf::from)).unwrap_or_else(|| target.join("release/devroom"));
    let (server, url) = match &args.url {
        Some(u) => (None, u.clone()),
        None => {
            let (s, port) = start_devroom(&bin);
            (Some(s), format!("ws://127.0.0.1:{port}"))
        }
    };
    let dev_pid = server.as_ref().map(|s| s.0.id());
    let dev_rss_base = dev_pid.map(rss_kb).unwrap_or(0);

    let c = Arc::new(Counters::default());
    let tone = tone_frames(args.rate);
    let t_join = Instant::now();
    let mut rooms = Vec::with_capacity(n);
    // Join in small batches: each join is a WebSocket + two DTLS handshakes on both sides.
    for batch in (0..n).collect::<Vec<_>>().chunks(4) {
        let joins: Vec<_> = batch
            .iter()
            .map(|&i| {
                let grant = token::Grant { identity: format!("p{i}"), room: format!("load-{}", i / 2), ..Default::default() };
                let tok = token::join_token("devkey", "secret", &grant);
                tokio::spawn(participant(url.clone(), tok, i, n, args.rate, tone.clone(), c.clone()))
            })
            .collect();
        for j in joins {
            rooms.push(j.await.expect("participant task"));
        }
    }
    let t = Instant::now();
    while c.subscribed.load(Ordering::Relaxed) < n as u64 {
        assert!(t.elapsed() < Duration::from_secs(60), "only {} of {n} subscribed", c.subscribed.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let join_s = t_join.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let load_start = loadavg();
    let (w0, m0, d0) = (Instant::now(), cpu_time(me), dev_pid.map(cpu_time).unwrap_or_default());
    let (in0, out0, con0) = (c.frames_in.load(Ordering::Relaxed), c.frames_out.load(Ordering::Relaxed), c.concealed.load(Ordering::Relaxed));
    let (pk0, sd0) = (c.packets_in.load(Ordering::Relaxed), c.stream_dropped.load(Ordering::Relaxed));
    // RSS at the window's start and end: growth here means audio is queueing somewhere.
    let rss_window_start = rss_kb(me);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let wall = w0.elapsed().as_secs_f64();
    let me_cpu = (cpu_time(me) - m0).as_secs_f64() / wall;
    let dev_cpu = dev_pid.map(|p| (cpu_time(p) - d0).as_secs_f64() / wall).unwrap_or(0.0);
    let (me_rss, dev_rss) = (rss_kb(me), dev_pid.map(rss_kb).unwrap_or(0));
    let frames_in = c.frames_in.load(Ordering::Relaxed) - in0;
    let frames_out = c.frames_out.load(Ordering::Relaxed) - out0;
    let concealed = c.concealed.load(Ordering::Relaxed) - con0;
    let packets_in = c.packets_in.load(Ordering::Relaxed) - pk0;
    let stream_dropped = c.stream_dropped.load(Ordering::Relaxed) - sd0;
    let expected = n as f64 * 50.0 * wall;
    let all: Vec<room::RoomStats> = rooms.iter().map(|r| r.stats()).collect();
    let sum = |f: fn(&room::RoomStats) -> u64| all.iter().map(f).sum::<u64>();
    let nf = n as f64;

    println!("participants={n} rooms={} rate={} seconds={wall:.1} join_s={join_s:.1} load_start={load_start} load_end={}", n / 2, args.rate, loadavg());
    println!(
        "room process: cpu {:.1}% of a core = {:.2}% per participant; rss {:.1} MB (+{:.1} MB) = {:.0} kB per participant \
         (during the window {:+.1} MB)",
        100.0 * me_cpu,
        100.0 * me_cpu / nf,
        me_rss as f64 / 1024.0,
        me_rss.saturating_sub(rss_base) as f64 / 1024.0,
        me_rss.saturating_sub(rss_base) as f64 / nf,
        (me_rss as f64 - rss_window_start as f64) / 1024.0
    );
    if dev_pid.is_some() {
        println!(
            "devroom: cpu {:.1}% of a core = {:.2}% per participant; rss {:.1} MB (+{:.1} MB) = {:.0} kB per participant",
            100.0 * dev_cpu,
            100.0 * dev_cpu / nf,
            dev_rss as f64 / 1024.0,
            dev_rss.saturating_sub(dev_rss_base) as f64 / 1024.0,
            dev_rss.saturating_sub(dev_rss_base) as f64 / nf
        );
    }
    println!(
        "audio: frames out {frames_out} in {frames_in} of {expected:.0} expected ({:.2}%), concealed {concealed}; packets at the tracks \
         {packets_in}, dropped by slow streams {stream_dropped}; push errors {}, frames dropped before send {}, events dropped {}",
        100.0 * frames_in as f64 / expected,
        c.push_errors.load(Ordering::Relaxed),
        sum(|s| s.audio_frames_dropped),
        sum(|s| s.events_dropped)
    );
    println!(
        "room stats since join (all participants): opus frames out {} in {}, datagrams out {} in {} bad {}",
        sum(|s| s.audio_frames_out),
        sum(|s| s.audio_frames_in),
        sum(|s| s.datagrams_out),
        sum(|s| s.datagrams_in),
        sum(|s| s.datagrams_bad)
    );
    println!(
        "RESULT participants={n} rate={} room_cpu_pct={:.2} room_cpu_pct_per_participant={:.3} room_rss_kb_per_participant={:.0} \
         devroom_cpu_pct={:.2} devroom_cpu_pct_per_participant={:.3} devroom_rss_kb_per_participant={:.0} delivery_pct={:.2}",
        args.rate,
        100.0 * me_cpu,
        100.0 * me_cpu / nf,
        me_rss.saturating_sub(rss_base) as f64 / nf,
        100.0 * dev_cpu,
        100.0 * dev_cpu / nf,
        dev_rss.saturating_sub(dev_rss_base) as f64 / nf,
        100.0 * frames_in as f64 / expected
    );
    for r in &rooms {
        r.close().await;
    }
    drop(server);
}
