//! The agent process on SIGTERM in the middle of a call: running calls may finish for
//! `AGENT_DRAIN_TIMEOUT`, then the caller hears a goodbye, the bridge gets `hangup`, the record
//! is complete and the process exits 0. And killed with SIGKILL instead: what was said up to
//! the kill is in the record when it is opened again.

use std::time::{Duration, Instant};

use proto::control::Control;
use tokio::sync::mpsc;

mod common;
use common::{test_call, Kill, Obs};

/// Waits until the agent has talked for `ms` (loud frames at the phone).
async fn heard_for(obs: &mut mpsc::Receiver<Obs>, ms: u32, controls: &mut Vec<Control>) {
    let mut loud = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while loud * 20 < ms {
        assert!(Instant::now() < deadline, "the agent did not talk");
        match tokio::time::timeout(Duration::from_millis(200), obs.recv()).await {
            Ok(Some(Obs::Frame(_, l))) if l > -40.0 => loud += 1,
            Ok(Some(Obs::Control(c))) => controls.push(c),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_call_finish_then_says_goodbye_and_exits_0() {
    let mut call = test_call("CAdrain00000000000000000000000000001").await;
    let mut proc = Kill(call.agent().env("AGENT_VAD", "energy").env("AGENT_DRAIN_TIMEOUT", "1").spawn().unwrap());
    let (obs, db, room_name) = (&mut call.obs, call.db.clone(), call.room_name.clone());
    let mut controls = Vec::new();
    heard_for(obs, 1000, &mut controls).await;
    unsafe { libc_kill(proc.0.id() as i32, 15) };
    let signalled = Instant::now();
    // The call goes on for the drain timeout (1 s), then the goodbye, then `hangup`.
    let mut loud_after = 0;
    let hangup_at = loop {
        assert!(signalled.elapsed() < Duration::from_secs(30), "no hangup; controls {controls:?}");
        match tokio::time::timeout(Duration::from_millis(200), obs.recv()).await {
            Ok(Some(Obs::Frame(t, l))) if l > -40.0 && t > signalled + Duration::from_millis(1200) => loud_after += 1,
            Ok(Some(Obs::Control(c))) => {
                let hangup = matches!(&c, Control::Hangup { .. });
                controls.push(c);
                if hangup {
                    break Instant::now();
                }
            }
            _ => {}
        }
    };
    assert!(hangup_at >= signalled + Duration::from_secs(1), "hung up before the drain timeout");
    assert!(loud_after * 20 >= 1000, "no goodbye before the hangup ({} ms)", loud_after * 20);
    assert!(controls.iter().any(|c| matches!(c, Control::Hangup { reason: Some(r) } if r == "agent shutting down")), "{controls:?}");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "agent did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    let rec = agent::record::load_call(&db, &room_name).unwrap().unwrap();
    assert_eq!(rec.outcome.as_deref(), Some("drained"));
    assert!(rec.ended_ms.is_some());
    let said: Vec<&str> = rec.turns.iter().filter(|t| t.role == "assistant").map(|t| t.text.as_str()).collect();
    assert!(said.last().is_some_and(|t| t.contains("have to end the call")), "{said:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_said_survives_a_kill_9() {
    let sid = "CAkill000000000000000000000000000001";
    let mut call = test_call(sid).await;
    let mut proc = Kill(call.agent().env("AGENT_VAD", "energy").spawn().unwrap());
    let (obs, db, room_name, say) = (&mut call.obs, call.db.clone(), call.room_name.clone(), call.mic.clone());
    let mut controls = Vec::new();
    // The greeting plays out, the caller answers, the agent starts its reply: then kill -9.
    heard_for(obs, 2000, &mut controls).await;
    let line = agent::providers::offline_tts::OfflineTts::new("en-us+m3", 140, 16_000).synthesize("my name is john").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await; // past the greeting
    say.send(line).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no user turn in the record");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rows = agent::record::load_call(&db, &room_name).ok().flatten().map(|c| c.turns).unwrap_or_default();
        if rows.iter().any(|t| t.role == "user") {
            break;
        }
    }
    proc.0.kill().unwrap(); // SIGKILL: no flush, no goodbye
    proc.0.wait().unwrap();
    // A restarted agent opens the same file: the call and what was said are there.
    let _restarted = agent::record::Recorder::open(&db).unwrap();
    let rec = agent::record::load_call(&db, &room_name).unwrap().unwrap();
    assert_eq!(rec.info.call_sid.as_deref(), Some(sid));
    assert!(rec.ended_ms.is_none(), "killed: no end was written");
    let roles: Vec<&str> = rec.turns.iter().map(|t| t.role.as_str()).collect();
    assert_eq!(&roles[..2], ["assistant", "user"], "{:?}", rec.turns);
    assert!(rec.turns[0].text.starts_with("Hello, this is the Acme incident line"));
    assert!(rec.turns[1].text.contains("name"), "{:?}", rec.turns[1]);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
