//! The agent side of a load test: joins every `call-*` room on a LiveKit server and talks in it
//! by replaying pre-encoded Opus — 2 s of speech-like audio, 1 s pause (sent as DTX), on repeat —
//! so the bridge's outbound path (decode, mix, pace, marks) runs under load while this harness
//! spends nothing on encoding.
//!
//! ```sh
//! cargo run --release -p bridge --example load_agent -- --url ws://127.0.0.1:7880
//! ```
//! Prints one JSON line of totals when stopped (Ctrl-C / SIGTERM).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_api::services::room::RoomClient;
use room::{AudioTrackOptions, OpusEncoder, Room, RoomEvent, RoomOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:7880")]
    url: String,
    #[arg(long, default_value = "devkey")]
    api_key: String,
    #[arg(long, default_value = "secret")]
    api_secret: String,
    /// Look for new rooms this often (ms).
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
}

#[derive(Default)]
struct Totals {
    joined: AtomicU64,
    join_failed: AtomicU64,
    packets: AtomicU64,
    dropped: AtomicU64,
    late_ticks: AtomicU64,
}

/// 3 s of "speech": a 2 s gliding two-tone voice-band signal with a syllable-rate envelope, then
/// 1 s of nothing (DTX). Encoded once at 16 kHz.
fn script() -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new(16_000, 5, false).expect("opus encoder");
    let mut out = Vec::new();
    for f in 0..150usize {
        if f >= 100 {
            out.push(Vec::new());
            continue;
        }
        let frame: Vec<i16> = (0..320)
            .map(|i| {
                let t = (f * 320 + i) as f32 / 16_000.0;
                let env = 0.5 + 0.5 * (2.0 * std::f32::consts::PI * 4.0 * t).sin();
                let f0 = 180.0 + 40.0 * (2.0 * std::f32::consts::PI * 0.5 * t).sin();
                let s = (2.0 * std::f32::consts::PI * f0 * t).sin() + 0.5 * (2.0 * std::f32::consts::PI * 3.1 * f0 * t).sin();
                (6000.0 * env * s) as i16
            })
            .collect();
        out.push(enc.encode_frame(&frame).expect("encode").to_vec());
    }
    out
}

async fn talk(url: String, token: String, packets: Arc<Vec<Vec<u8>>>, totals: Arc<Totals>) {
    let (room, mut events) = match Room::connect(&url, &token, RoomOptions { auto_subscribe: false, ..Default::default() }).await {
        Ok(r) => r,
        Err(e) => {
            totals.join_failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("join failed: {e}");
            return;
        }
    };
    totals.joined.fetch_add(1, Ordering::Relaxed);
    let mut sink = match room.publish_audio(AudioTrackOptions { name: "agent".into(), sample_rate: 16_000, ..Default::default() }).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("publish failed: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0usize;
    loop {
        tokio::select! {
            t = tick.tick() => {
                if t.elapsed() > Duration::from_millis(10) {
                    totals.late_ticks.fetch_add(1, Ordering::Relaxed);
                }
                match sink.try_push_opus(&packets[i % packets.len()]) {
                    Ok(()) => { totals.packets.fetch_add(1, Ordering::Relaxed); }
                    Err(room::PushError::Full) => { totals.dropped.fetch_add(1, Ordering::Relaxed); }
                    Err(room::PushError::Closed | room::PushError::WrongCodec) => break,
                }
                i += 1;
            }
            ev = events.recv() => match ev {
                None | Some(RoomEvent::Disconnected(_)) => break,
                Some(RoomEvent::ParticipantDisconnected(p)) if p.identity.starts_with("phone-") => break,
                _ => {}
            },
        }
    }
    room.close().await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let packets = Arc::new(script());
    let totals = Arc::new(Totals::default());
    let http = args.url.replacen("ws://", "http://", 1).replacen("wss://", "https://", 1);
    let rooms = RoomClient::with_api_key(&http, &args.api_key, &args.api_secret);
    let mut seen = HashSet::new();
    let mut poll = tokio::time::interval(Duration::from_millis(args.poll_ms));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let Ok(list) = rooms.list_rooms(vec![]).await else { continue };
        for r in list {
            if !r.name.starts_with("call-") || !seen.insert(r.name.clone()) {
                continue;
            }
            let grants = VideoGrants {
                room_join: true,
                room: r.name.clone(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(true),
                ..Default::default()
            };
            let token = AccessToken::with_api_key(&args.api_key, &args.api_secret)
                .with_identity(&format!("agent-{}", r.name))
                .with_kind("agent")
                .with_grants(grants)
                .to_jwt()?;
            tokio::spawn(talk(args.url.clone(), token, packets.clone(), totals.clone()));
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "rooms_joined": totals.joined.load(Ordering::Relaxed),
            "join_failed": totals.join_failed.load(Ordering::Relaxed),
            "packets_sent": totals.packets.load(Ordering::Relaxed),
            "packets_dropped": totals.dropped.load(Ordering::Relaxed),
            "late_ticks": totals.late_ticks.load(Ordering::Relaxed),
        })
    );
    Ok(())
}
