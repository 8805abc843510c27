//! Join a LiveKit room and publish a 440 Hz tone.
//!
//! ```text
//! cargo run -p room --example tone -- [room] [identity] [seconds]
//! ```
//! Environment: `LIVEKIT_URL` (default `ws://127.0.0.1:7880`), `LIVEKIT_API_KEY` /
//! `LIVEKIT_API_SECRET` (default `devkey` / `secret`, as `livekit-server --dev` and `devroom`), or
//! `LIVEKIT_TOKEN` to use a ready-made token. `TONE_RATE` picks the PCM rate fed to Opus
//! (default 48000). Prints room events; seconds = 0 runs until Ctrl-C.

#[path = "../tests/common/token.rs"]
mod token;

use std::time::Duration;

use room::{AudioTrackOptions, Room, RoomEvent, RoomOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut args = std::env::args().skip(1);
    let room_name = args.next().unwrap_or_else(|| "tone".into());
    let identity = args.next().unwrap_or_else(|| "tone-bot".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let url = std::env::var("LIVEKIT_URL").unwrap_or_else(|_| "ws://127.0.0.1:7880".into());
    let rate: u32 = std::env::var("TONE_RATE").ok().and_then(|s| s.parse().ok()).unwrap_or(48_000);
    let token = match std::env::var("LIVEKIT_TOKEN") {
        Ok(t) => t,
        Err(_) => {
            let key = std::env::var("LIVEKIT_API_KEY").unwrap_or_else(|_| "devkey".into());
            let secret = std::env::var("LIVEKIT_API_SECRET").unwrap_or_else(|_| "secret".into());
            token::join_token(
                &key,
                &secret,
                &token::Grant { identity: identity.clone(), name: "Tone".into(), room: room_name.clone(), ..Default::default() },
            )
        }
    };

    let (room, mut events) = Room::connect(&url, &token, RoomOptions::default()).await?;
    println!("joined room {:?} as {:?}", room.name(), room.local_participant().identity);
    let mut sink = room.publish_audio(AudioTrackOptions { name: "tone".into(), sample_rate: rate, ..Default::default() }).await?;
    println!("publishing track {} ({} Hz PCM -> Opus)", sink.track_sid(), rate);

    let pusher = tokio::spawn(async move {
        let n = (rate / 50) as usize;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut i = 0usize;
        let frames = if seconds == 0 { usize::MAX } else { seconds as usize * 50 };
        for _ in 0..frames {
            tick.tick().await;
            let pcm: Vec<i16> = (i..i + n)
                .map(|k| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * k as f64 / rate as f64).sin()) as i16)
                .collect();
            i += n;
            if sink.push(&pcm).await.is_err() {
                break;
            }
        }
    });

    let watch = async {
        while let Some(ev) = events.recv().await {
            match &ev {
                RoomEvent::Disconnected(reason) => {
                    println!("disconnected: {reason:?}");
                    break;
                }
                other => println!("event: {other:?}"),
            }
        }
    };
    tokio::select! {
        _ = pusher => println!("done publishing"),
        _ = watch => {}
        _ = tokio::signal::ctrl_c() => println!("interrupted"),
    }
    println!("stats: {:?}", room.stats());
    room.close().await;
    Ok(())
}
