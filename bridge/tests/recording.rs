//! `RECORDINGS_DIR` end to end: a call through devroom and callsim leaves a stereo WAV of what
//! the caller said and what the caller heard (an interrupt's cut shows), playable while the
//! call is still up, and its record beside it.

mod common;

use std::time::Duration;

use common::*;
use proto::control::{Control, CONTROL_TOPIC};
use room::{AudioTrackOptions, DataPacketBuilder, RoomEvent};
use tokio::time::timeout;

fn channels(path: &std::path::Path) -> (Vec<i16>, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!((r.spec().channels, r.spec().sample_rate, r.spec().bits_per_sample), (2, 8000, 16));
    let all: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    (all.iter().step_by(2).copied().collect(), all.iter().skip(1).step_by(2).copied().collect())
}

fn energy(s: &[i16]) -> f64 {
    s.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / s.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_recorded_as_the_caller_lived_it() {
    let dir = std::env::temp_dir().join(format!("callbridge-recordings-{}", std::process::id()));
    let lk = start_devroom().await;
    let rest = FakeRest::default();
    let bridge = start_bridge(&lk, &rest.start().await, &["--recordings-dir", dir.to_str().unwrap(), "--opus-dtx", "false"]).await;
    let sid = call_sid(0x5ec);
    let (agent, mut events) = join(&lk, "agent-rec", &format!("call-{sid}")).await;
    let mut caller = callsim::spawn_call(callsim(&bridge, &sid).tone(300.0).duration_secs(6.0).loss_pct(5.0).seed(7));

    // The phone participant names its recording.
    let wav = timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.recv().await {
            let attrs = match ev {
                RoomEvent::ParticipantConnected(p) => p.attributes,
                RoomEvent::AttributesChanged { participant, .. } => participant.attributes,
                _ => continue,
            };
            if let Some(p) = attrs.get("callbridge.recording") {
                return std::path::PathBuf::from(p);
            }
        }
        panic!("room closed");
    })
    .await
    .expect("the recording is named in the room");
    assert_eq!(wav, dir.join(format!("{sid}.wav")));

    // The agent talks; a second after the caller starts hearing it, it interrupts itself.
    let mut sink = agent.publish_audio(AudioTrackOptions { sample_rate: 8_000, ..Default::default() }).await.unwrap();
    let speaker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for k in 0..150 {
            tick.tick().await;
            let amp = 7000.0 + 1000.0 * ((k as f64) * 0.3).sin();
            if sink.push(&tone(440.0, 8_000, k * 160, 160, amp)).await.is_err() {
                break;
            }
        }
    });
    loop {
        match timeout(Duration::from_secs(10), caller.next_event()).await.expect("the caller hears the agent") {
            Some(callsim::CallEvent::Media { .. }) => break,
            Some(_) => {}
            None => panic!("call ended early"),
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    speaker.abort();
    agent.send_data(DataPacketBuilder::new(Control::Interrupt { utterance_id: None }.to_bytes()).topic(CONTROL_TOPIC)).await.unwrap();

    // While the call is up the file already plays (its header is kept current).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mid = hound::WavReader::open(&wav).unwrap().duration();
    assert!(mid >= 8_000, "a second or more is playable mid-call: {mid} samples");

    let report = caller.finish().await.unwrap();
    assert_eq!(report.outcome, callsim::Outcome::Completed);
    let record_path = wav.with_extension("json");
    let complete = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&record_path).is_ok_and(|s| s.contains("\"complete\": true"))
    })
    .await;
    assert!(complete, "the record is finished");
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();

    let (left, right) = channels(&wav);
    let secs = left.len() as f64 / 8000.0;
    assert!((5.5..7.5).contains(&secs), "the call's length: {secs} s");
    // Left: the caller's 300 Hz, lost frames filled.
    assert!(tone_snr_median(&left[8_000..40_000], 8_000, 300.0) > 15.0);
    // Right: the agent's 440 Hz as heard, about a second of it, then the cut: nothing after.
    let said = loudest_run(&right, 160);
    let said_ms = said.len() / 8;
    assert!((700..=1600).contains(&said_ms), "heard {said_ms} ms before the interrupt");
    assert!(tone_snr_median(said, 8_000, 440.0) > 15.0);
    let start = right.windows(said.len()).position(|w| w.as_ptr() == said.as_ptr()).unwrap();
    assert!(energy(&right[start + said.len() + 800..]) < 1e3, "silence after the interrupt");

    assert_eq!(record["call_sid"], sid.as_str());
    assert_eq!(record["direction"], "inbound");
    assert_eq!(record["outcome"], "completed");
    assert_eq!(record["recording"]["clears"], 1);
    assert!(record["inbound"]["filled_frames"].as_u64().unwrap() > 0, "{record}");
    assert!(record["pacer"]["underruns"].is_u64());
    assert!(record["recording"]["heard_ms"].as_u64().unwrap() >= 700, "{record}");
    agent.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
