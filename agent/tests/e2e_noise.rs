//! The caller's line is noisy: half a second of noise early in the greeting, as a door slam or
//! a passing truck would make. With Silero VAD it is not speech: the greeting plays on whole, no
//! `interrupt` goes to the bridge, and nothing becomes an answer or a form value.

use std::time::{Duration, Instant};

use proto::control::Control;

mod common;
use common::{silero_model, test_call, Kill, Obs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noise_burst_neither_stops_the_greeting_nor_answers_it() {
    let Some(model) = silero_model() else { return };
    let call = test_call("CAnoise00000000000000000000000000001").await;
    let mut proc = Kill(call.agent().env("AGENT_VAD", "silero").env("SILERO_VAD_MODEL", &model).spawn().unwrap());
    let common::TestCall { phone: _phone, mut obs, mic, db, room_name, devroom: _devroom, dir: _dir, .. } = call;
    // Loud white noise, 500 ms, once the greeting has played for 800 ms.
    let mut x: u64 = 99;
    let burst: Vec<i16> = (0..8000)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((x >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 20000.0) as i16
        })
        .collect();
    let mut loud = Vec::new();
    let mut controls = Vec::new();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until the greeting has been quiet for 1.5 s after it began.
    loop {
        assert!(Instant::now() < deadline, "no greeting");
        match tokio::time::timeout(Duration::from_millis(100), obs.recv()).await {
            Ok(Some(Obs::Frame(t, l))) if l > -40.0 => loud.push(t),
            Ok(Some(Obs::Control(c))) => controls.push(c),
            _ => {}
        }
        if !sent && loud.len() >= 40 {
            mic.send(burst.clone()).await.unwrap();
            sent = true;
        }
        if sent && loud.last().is_some_and(|t| t.elapsed() > Duration::from_millis(1500)) {
            break;
        }
    }
    assert!(!controls.iter().any(|c| matches!(c, Control::Interrupt { .. })), "the noise interrupted the greeting: {controls:?}");
    // The whole greeting (~5.5 s of espeak at 165 wpm) reached the phone.
    assert!(loud.len() * 20 >= 4000, "only {} ms of greeting", loud.len() * 20);
    drop(mic);
    _phone.close().await;
    let t0 = Instant::now();
    while proc.0.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(15), "agent did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = agent::record::load_call(&db, &room_name).unwrap().unwrap();
    assert!(rec.turns.iter().all(|t| t.role != "user"), "noise became a turn: {:?}", rec.turns);
    assert!(rec.fields.is_empty(), "noise became a form value: {:?}", rec.fields);
    assert!(rec.turns.iter().all(|t| !t.interrupted), "{:?}", rec.turns);
}
