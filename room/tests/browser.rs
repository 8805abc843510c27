//! livekit-client (the browser SDK, npm) in headless Chromium and a `room` participant in one
//! devroom room:
//! - the browser hears our 440 Hz tone: WebRTC stats of its inbound audio (`bytesReceived`,
//!   `audioLevel`, `totalAudioEnergy`, codec) and a WebAudio analyser (peak frequency, RMS);
//! - we hear the browser's 660 Hz oscillator track (frequency and SNR of the decoded PCM);
//! - a data packet each way.
//!
//! Reuses devroom's test page (`devroom/tests/js/browser.html`) and its `livekit-client` bundle;
//! a small script injected in front of the page records the page's `RTCPeerConnection`s, polls
//! their `getStats()` and adds the last figures to the page's final report.
//!
//! Needs Chromium (`apt-get install -y chromium`, or `CHROMIUM=/path`), `npm ci --prefix
//! devroom/tests/js` and a built devroom (`cargo build -p devroom`). With `DEVROOM_REQUIRE_JS`
//! set a missing browser or bundle fails the test; otherwise it skips.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{estimate_frequency, snr_db, tone, Devroom};
use room::{AudioCodec, AudioTrackOptions, DataPacketBuilder, Room, RoomEvent, RoomOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../devroom/tests/js")
}

fn find_chromium() -> Option<String> {
    let candidates = [
        std::env::var("CHROMIUM").unwrap_or_default(),
        "chromium".into(),
        "chromium-browser".into(),
        "google-chrome".into(),
    ];
    candidates.into_iter().filter(|c| !c.is_empty()).find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// A missing prerequisite: fails under `DEVROOM_REQUIRE_JS`, otherwise skips.
fn missing(what: &str) {
    let msg = format!("browser test prerequisite missing: {what}");
    if std::env::var_os("DEVROOM_REQUIRE_JS").is_some() {
        panic!("DEVROOM_REQUIRE_JS is set and {msg}");
    }
    eprintln!("SKIP: {msg}");
}

/// Injected before the page's own scripts: remembers every RTCPeerConnection the SDK creates,
/// polls their audio RTP stats while they are open, and adds the last figures (`rtc`) to the
/// page's `done` report. It also unmutes the page's `<audio>` elements (see below).
const STATS_HOOK: &str = r#"
"use strict";
(() => {
  const pcs = [];
  const Orig = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Orig {
    constructor(...args) { super(...args); pcs.push(this); }
  };
  const rtc = { polls: 0, inbound: {}, outbound: {} };
  window.__rtc = rtc;
  async function poll() {
    // The page mutes the element it attaches the remote track to. Chrome applies the element's
    // volume to the receive stream before it measures audioLevel/totalAudioEnergy, so a muted
    // element reads as silence there; unmute it (Chromium runs with --mute-audio, so nothing
    // is actually played).
    document.querySelectorAll("audio").forEach((a) => { if (a.muted) { a.muted = false; a.volume = 1; } });
    for (const pc of pcs) {
      if (pc.connectionState === "closed") continue;
      let report;
      try { report = await pc.getStats(); } catch (e) { continue; }
      const codecs = {};
      report.forEach((s) => { if (s.type === "codec") codecs[s.id] = s.mimeType; });
      report.forEach((s) => {
        if (s.kind !== "audio") return;
        if (s.type === "inbound-rtp") {
          const prev = rtc.inbound[s.id] || { first_bytes: s.bytesReceived || 0, max_audio_level: 0 };
          rtc.inbound[s.id] = {
            first_bytes: prev.first_bytes,
            bytesReceived: s.bytesReceived || 0,
            packetsReceived: s.packetsReceived || 0,
            packetsLost: s.packetsLost || 0,
            audioLevel: s.audioLevel || 0,
            max_audio_level: Math.max(prev.max_audio_level, s.audioLevel || 0),
            totalAudioEnergy: s.totalAudioEnergy || 0,
            totalSamplesDuration: s.totalSamplesDuration || 0,
            concealedSamples: s.concealedSamples || 0,
            totalSamplesReceived: s.totalSamplesReceived || 0,
            codec: codecs[s.codecId] || null,
          };
        } else if (s.type === "outbound-rtp") {
          rtc.outbound[s.id] = {
            bytesSent: s.bytesSent || 0,
            packetsSent: s.packetsSent || 0,
            codec: codecs[s.codecId] || null,
          };
        }
      });
    }
    rtc.polls++;
  }
  setInterval(poll, 250);
  const origFetch = window.fetch.bind(window);
  window.fetch = async (url, init) => {
    if (init && typeof init.body === "string" && init.body.startsWith("{")) {
      try {
        const o = JSON.parse(init.body);
        if (o.stage === "done") {
          await poll().catch(() => {});
          o.rtc = rtc;
          init = Object.assign({}, init, { body: JSON.stringify(o) });
        }
      } catch (e) {}
    }
    return origFetch(url, init);
  };
})();
"#;

/// The page (devroom's test page with the stats hook in front), the SDK bundle and `/report`.
/// Plain HTTP/1.1 on tokio, one request per connection.
async fn serve_page(bundle: Vec<u8>, html: String, reports: mpsc::UnboundedSender<serde_json::Value>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let bundle: std::sync::Arc<[u8]> = bundle.into();
    let html: std::sync::Arc<str> = html.into();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (bundle, html, reports) = (bundle.clone(), html.clone(), reports.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if buf.len() > 1 << 20 {
                        return;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = &buf[head_end..head_end + len];
                let (ctype, content): (&str, Vec<u8>) = match (method, path.split('?').next().unwrap_or("")) {
                    ("GET", "/page") => ("text/html; charset=utf-8", html.as_bytes().to_vec()),
                    ("GET", "/stats-hook.js") => ("text/javascript", STATS_HOOK.as_bytes().to_vec()),
                    ("GET", "/livekit-client.umd.js") => ("text/javascript", bundle.to_vec()),
                    ("POST", "/report") => {
                        let text = String::from_utf8_lossy(body).to_string();
                        let v = serde_json::from_str(&text).unwrap_or(serde_json::json!({"stage": "bad-report", "raw": text}));
                        let _ = reports.send(v);
                        ("text/plain", b"ok".to_vec())
                    }
                    _ => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                        return;
                    }
                };
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", content.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&content).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

struct Chromium(std::process::Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn next_report(rx: &mut mpsc::UnboundedReceiver<serde_json::Value>, stage: &str, secs: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let v = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no '{stage}' report from the browser within {secs} s"))
            .expect("report channel");
        if v["stage"] == stage {
            return v;
        }
        if v["stage"] == "done" {
            panic!("browser finished while waiting for '{stage}': {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_in_chromium_hears_us_and_we_hear_it() {
    browser_round_trip(AudioCodec::Opus).await;
}

/// A phone leg's PCMU track (livekit-server ≥ 1.9.1 forwards it as it is): the browser decodes
/// it natively.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_in_chromium_hears_our_pcmu_track() {
    browser_round_trip(AudioCodec::Pcmu).await;
}

async fn browser_round_trip(codec: AudioCodec) {
    let Some(chromium) = find_chromium() else {
        return missing("chromium (apt-get install -y chromium)");
    };
    let umd = js_dir().join("node_modules/livekit-client/dist/livekit-client.umd.js");
    if !umd.exists() {
        return missing("livekit-client (npm ci --prefix devroom/tests/js)");
    }
    common::init_tracing();
    let dev = Devroom::start().await;
    let room_name = if codec == AudioCodec::Opus { "browser-hears-room" } else { "browser-hears-pcmu-room" };

    let page_html = std::fs::read_to_string(js_dir().join("browser.html")).expect("devroom/tests/js/browser.html");
    let sdk_tag = r#"<script src="/livekit-client.umd.js"></script>"#;
    assert!(page_html.contains(sdk_tag), "devroom's test page no longer loads {sdk_tag}");
    let html = page_html.replacen(sdk_tag, &format!("<script src=\"/stats-hook.js\"></script>\n{sdk_tag}"), 1);
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let page_addr = serve_page(std::fs::read(&umd).unwrap(), html, report_tx).await;

    let page = format!(
        "http://{page_addr}/page?url={}&token={}&report=http://{page_addr}/report&tone=660&seconds=3&hear_hz=440",
        dev.url(),
        dev.token(room_name, "browser")
    );
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let profile = tmp.join(format!("room-chromium-profile-{codec:?}"));
    let _ = std::fs::remove_dir_all(&profile);
    let log_path = tmp.join(format!("room-chromium-{codec:?}.log"));
    let _chromium = Chromium(
        Command::new(&chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--autoplay-policy=no-user-gesture-required",
                "--mute-audio",
                "--remote-debugging-port=0",
                "--enable-logging=stderr",
                &format!("--user-data-dir={}", profile.display()),
                &page,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
            .spawn()
            .expect("start chromium"),
    );

    let ready = next_report(&mut reports, "ready", 60).await;
    assert!(ready["sid"].as_str().unwrap_or("").starts_with("PA_"), "{ready}");

    // Our participant: joins after the browser, publishes 440 Hz, listens to the browser.
    let (rusty, mut events) = Room::connect(&dev.url(), &dev.token(room_name, "rusty"), RoomOptions::default()).await.expect("join");
    // Opus from 48 kHz, or PCMU as a phone leg sends it: 8 kHz μ-law.
    let rate = if codec == AudioCodec::Opus { 48_000 } else { 8_000 };
    assert!(rusty.publish_codec_enabled(codec), "devroom enables {codec:?} as livekit-server ≥ 1.9.1 does");
    let mut sink = rusty
        .publish_audio(AudioTrackOptions { name: "rusty-tone".into(), sample_rate: rate, codec, ..Default::default() })
        .await
        .expect("publish");
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let n = rate as usize / 50;
        for f in 0..(50 * 60) {
            tick.tick().await;
            // Its level swells and fades (0.5 Hz): a frozen or repeated frame shows in the fit.
            let amp = 12_000.0 + 4_000.0 * (std::f64::consts::PI * f as f64 / 50.0).sin();
            let pcm = tone(440.0, rate, f * n, n, amp);
            let sent = if codec == AudioCodec::Pcmu {
                let ulaw: Vec<u8> = pcm.iter().map(|&s| proto::g711::ulaw_encode(s)).collect();
                sink.try_push_ulaw_at(&ulaw, std::time::Instant::now())
            } else {
                sink.push(&pcm).await
            };
            if matches!(sent, Err(room::PushError::Closed)) {
                break;
            }
        }
    });

    let mut early = Vec::new();
    let track = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("TrackSubscribed(browser)").expect("events") {
            RoomEvent::TrackSubscribed { track, participant } if participant.identity == "browser" => break track,
            other => early.push(other),
        }
    };
    assert_eq!(track.name(), "browser-tone");
    let mut stream = track.stream(48_000).expect("stream");
    let mut pcm: Vec<i16> = Vec::new();
    let mut concealed = 0;
    tokio::time::timeout(Duration::from_secs(15), async {
        while pcm.len() < 48_000 * 3 {
            let f = stream.recv().await.expect("browser audio stream ended");
            concealed += f.concealed as u32;
            pcm.extend(f.samples);
        }
    })
    .await
    .expect("3 s of the browser's audio within 15 s");
    // 200 ms windows after 1 s of settling; a loaded machine may glitch one or two.
    let windows: Vec<(f64, f64)> = pcm[48_000..]
        .chunks(9600)
        .map(|w| {
            let f = estimate_frequency(w, 48_000);
            (f, snr_db(w, 48_000, f))
        })
        .collect();
    let clean = windows.iter().filter(|(f, snr)| (f - 660.0).abs() <= 10.0 && *snr >= 20.0).count();
    eprintln!(
        "we heard the browser: {concealed} concealed frames, {} packets; 200 ms windows (Hz/dB): {}",
        track.packets_received(),
        windows.iter().map(|(f, s)| format!("{f:.1}/{s:.0}")).collect::<Vec<_>>().join(" ")
    );
    assert!(clean * 10 >= windows.len() * 7, "only {clean}/{} windows at 660±10 Hz with SNR >= 20 dB", windows.len());
    drop(stream);

    // The browser sends its data once it has analysed our tone; we answer.
    let got = loop {
        let ev = match early.pop() {
            Some(e) => e,
            None => tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("data from the browser").expect("events"),
        };
        if let RoomEvent::DataReceived(m) = ev {
            if m.participant_identity == "browser" {
                break m;
            }
        }
    };
    assert_eq!((got.payload.as_slice(), got.topic.as_deref()), (&b"hello-from-browser"[..], Some("browser")));
    rusty.send_data(DataPacketBuilder::new(b"hello-from-rust".to_vec()).topic("rs")).await.expect("send data");

    let done = next_report(&mut reports, "done", 60).await;
    pusher.abort();
    let context = || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        format!("browser report: {done}\nchromium log tail:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    };
    eprintln!("browser report: {done}");
    assert_eq!(done["ok"], true, "{}", context());
    assert_eq!(done["remote"]["identity"], "rusty", "{}", context());

    // WebAudio analyser on the subscribed track.
    let peak = done["audio"]["peak_hz"].as_f64().unwrap_or(0.0);
    assert!((peak - 440.0).abs() < 15.0, "browser heard {peak} Hz\n{}", context());
    assert!(done["audio"]["rms"].as_f64().unwrap_or(0.0) > 0.05, "browser heard (near) silence\n{}", context());
    // Median over 20 ms windows of a 440 Hz fit: Opus at 48 kHz and μ-law both sit far above it.
    let snr = done["audio"]["snr_db"].as_f64().unwrap_or(f64::NEG_INFINITY);
    eprintln!("browser heard our {codec:?} track: median SNR {snr:.1} dB");
    assert!(snr >= 30.0, "browser-side SNR {snr:.1} dB\n{}", context());

    // WebRTC stats of the browser's inbound audio (our track; the only one in the room).
    let rtc = &done["rtc"];
    assert!(rtc["polls"].as_u64().unwrap_or(0) > 0, "stats hook never ran\n{}", context());
    let inbound: Vec<&serde_json::Value> = rtc["inbound"].as_object().map(|m| m.values().collect()).unwrap_or_default();
    let best = inbound
        .iter()
        .max_by_key(|s| s["bytesReceived"].as_u64().unwrap_or(0))
        .unwrap_or_else(|| panic!("no inbound-rtp audio in the browser's stats\n{}", context()));
    let bytes = best["bytesReceived"].as_u64().unwrap_or(0);
    let packets = best["packetsReceived"].as_u64().unwrap_or(0);
    let level = best["max_audio_level"].as_f64().unwrap_or(0.0);
    let energy = best["totalAudioEnergy"].as_f64().unwrap_or(0.0);
    let duration = best["totalSamplesDuration"].as_f64().unwrap_or(0.0);
    eprintln!("browser inbound-rtp: {bytes} bytes, {packets} packets, max audioLevel {level:.3}, energy {energy:.3} over {duration:.1} s");
    let want = if codec == AudioCodec::Opus { "audio/opus" } else { "audio/PCMU" };
    assert_eq!(best["codec"], want, "{}", context());
    assert!(bytes > best["first_bytes"].as_u64().unwrap_or(0) && bytes > 10_000, "{}", context());
    assert!(packets >= 200, "{packets} packets\n{}", context());
    // 12000/32768 full scale: audioLevel ≈ 0.37 (silence is 0).
    assert!(level > 0.1, "audioLevel {level}\n{}", context());
    // Sum of audioLevel² × seconds: ~0.14 per second of that sine (less while the element was
    // still muted); silence adds nothing.
    assert!(duration > 1.0 && energy / duration > 0.01, "energy {energy} / {duration} s\n{}", context());
    let outbound: Vec<&serde_json::Value> = rtc["outbound"].as_object().map(|m| m.values().collect()).unwrap_or_default();
    assert!(outbound.iter().any(|s| s["bytesSent"].as_u64().unwrap_or(0) > 10_000), "browser sent no audio\n{}", context());

    let data = done["data"].as_array().cloned().unwrap_or_default();
    assert!(data.iter().any(|d| d["text"] == "hello-from-rust" && d["from"] == "rusty" && d["topic"] == "rs"), "{}", context());
    rusty.close().await;
}
