//! An answering machine end to end, as the bridge reports it: the phone participant's
//! `sip.twilio.answeredBy` attribute (Twilio's async AMD verdict) changes while the agent greets.
//! On `machine_start` the agent goes quiet and waits; on `machine_end_beep` it speaks the agent
//! file's message, then hangs up; the call record says `voicemail_left`. (callsim's voicemail far
//! end through the bridge is bridge/tests/outbound.rs's part; the bridge sets the attribute.)

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{test_call, Kill, Obs};
use proto::control::Control;

const MESSAGE: &str = "Hello, this is Acme Facilities about your incident report. Please call us back. Goodbye.";

/// Loud frames (agent speech) seen within `within`, and the controls.
async fn listen(obs: &mut tokio::sync::mpsc::Receiver<Obs>, within: Duration, controls: &mut Vec<(Instant, Control)>) -> Vec<Instant> {
    let end = Instant::now() + within;
    let mut loud = Vec::new();
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_millis(50), obs.recv()).await {
            Ok(Some(Obs::Frame(t, l))) if l > -40.0 => loud.push(t),
            Ok(Some(Obs::Control(c))) => controls.push((Instant::now(), c)),
            _ => {}
        }
    }
    loud
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_gets_the_message_after_the_beep_then_a_hangup() {
    let call = test_call("CAmachine000000000000000000000000001").await;
    let agent_file = call.dir.path().join("outbound.toml");
    let toml = format!("{}\n[outbound]\non_machine = \"message\"\nmachine_message = \"{MESSAGE}\"\n", agent::config::DEFAULT_AGENT_TOML);
    std::fs::write(&agent_file, toml).unwrap();
    let log = call.dir.path().join("agent.log");
    let mut proc = Kill(call.agent().env("AGENT_CONFIG", &agent_file).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap());
    let common::TestCall { phone, mut obs, mic: _mic, db, room_name, devroom: _devroom, dir: _dir, .. } = call;
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut controls = Vec::new();
    // The greeting starts.
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(60), "no greeting\n{}", logs());
        if listen(&mut obs, Duration::from_millis(300), &mut controls).await.len() >= 10 {
            break;
        }
    }
    // Twilio: a machine; the greeting is still playing.
    phone.set_attributes(HashMap::from([("sip.twilio.answeredBy".to_string(), "machine_start".to_string())])).await.unwrap();
    let set_at = Instant::now();
    let during = listen(&mut obs, Duration::from_secs(3), &mut controls).await;
    let late: Vec<_> = during.iter().filter(|t| **t > set_at + Duration::from_millis(800)).collect();
    assert!(late.is_empty(), "the agent talked on into the voicemail greeting: {} loud frames", late.len());
    assert!(controls.iter().any(|(_, c)| matches!(c, Control::Interrupt { .. })), "{controls:?}");
    assert!(!controls.iter().any(|(_, c)| matches!(c, Control::Hangup { .. })));
    // The beep: the message, then the hangup.
    phone.set_attributes(HashMap::from([("sip.twilio.answeredBy".to_string(), "machine_end_beep".to_string())])).await.unwrap();
    let beep_at = Instant::now();
    let mut message = Vec::new();
    let hangup = loop {
        assert!(beep_at.elapsed() < Duration::from_secs(40), "no hangup; {} loud frames, {controls:?}\n{}", message.len(), logs());
        message.extend(listen(&mut obs, Duration::from_millis(200), &mut controls).await);
        if let Some((t, Control::Hangup { reason })) = controls.iter().find(|(_, c)| matches!(c, Control::Hangup { .. })) {
            break (*t, reason.clone());
        }
    };
    assert_eq!(hangup.1.as_deref(), Some("voicemail message left"));
    // espeak says the message in a few seconds: most of it was heard before the hangup.
    assert!(message.len() * 20 >= 3000, "only {} ms of message", message.len() * 20);
    assert!(message.iter().all(|t| *t <= hangup.0), "speech after the hangup");
    let t1 = Instant::now();
    while proc.0.try_wait().unwrap().is_none() {
        assert!(t1.elapsed() < Duration::from_secs(15), "agent did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = agent::record::load_call(&db, &room_name).unwrap().unwrap();
    assert_eq!(rec.outcome.as_deref(), Some("voicemail_left"), "{rec:?}");
    assert_eq!(rec.turns.iter().rfind(|t| t.role == "assistant").map(|t| t.text.as_str()), Some(MESSAGE));
    assert!(rec.turns.iter().all(|t| t.role != "user"), "{:?}", rec.turns);
}
