//! Realtime mode end to end: devroom (in process), a `room` participant playing the phone
//! (kind `sip`), the `agent` binary started with `AGENT_MODE=realtime` and pointed at a fake
//! OpenAI Realtime server (`fakes::realtime_puppet`) that the test drives event by event.
//!
//! * the caller's audio reaches the model as μ-law appends, the model's audio deltas reach the
//!   phone, a `record_field` call lands in the call record, `end_call` ends with the closing
//!   line and a `hangup` control message;
//! * barge-in: `speech_started` while the agent talks → `interrupt` for the utterance, the
//!   response cancelled, and `conversation.item.truncate` at what the caller heard (the
//!   bridge's `playback` report, or what was pushed when none comes);
//! * vendor failures (handshake 401/429/500, a rate-limit error, the socket dropped) end in a
//!   spoken fallback line and a clean hangup, never silence.

mod fakes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::vad::level_dbfs;
use clap::Parser;
use fakes::realtime_puppet::{audio_delta, tone_ulaw, transcript_delta, Puppet};
use fakes::KEY;
use proto::control::{Control, CONTROL_TOPIC, TRANSCRIPT_TOPIC};
use room::{AudioTrackOptions, DataPacketBuilder, Room, RoomEvent, RoomOptions};
use serde_json::json;
use tokio::sync::mpsc;

const LOUD_DB: f32 = -40.0;

mod common;
use common::Kill;

enum Obs {
    Frame(Instant, f32),
    Control(Control),
    Transcript(String, String, BTreeMap<String, String>),
}

/// One call: devroom, the phone participant, the agent process.
struct Call {
    devroom: devroom::Running,
    phone: Room,
    obs: mpsc::Receiver<Obs>,
    mic: mpsc::Sender<Vec<i16>>,
    agent: Kill,
    db: PathBuf,
    _dir: tempfile::TempDir,
    frames: Vec<(Instant, f32)>,
    controls: Vec<(Instant, Control)>,
    transcripts: Vec<(String, String, BTreeMap<String, String>)>,
}

async fn start_call(tag: &str, puppet: &Puppet) -> Call {
    let cfg =
        devroom::Config::parse_from(["devroom", "--listen", "127.0.0.1:0", "--rtc-port", "0"]);
    let devroom = devroom::start(cfg).await.expect("devroom starts");
    let url = format!("ws://{}", devroom.http_addr);
    let sid = format!("CArealtime{tag:0>22}");
    let room_name = format!("call-{sid}");
    let token = agent::token::sign(
        "devkey",
        "secret",
        json!({
            "sub": format!("phone-{sid}"), "name": "Phone", "kind": "sip",
            "attributes": {"sip.phoneNumber": "+15551230001", "sip.trunkPhoneNumber": "+15559870002",
                           "sip.callStatus": "active", "sip.twilio.callSid": sid},
            "video": {"roomJoin": true, "room": room_name, "canPublish": true, "canSubscribe": true, "canPublishData": true}
        }),
        3600,
    );
    let (phone, mut events) = Room::connect(&url, &token, RoomOptions::default())
        .await
        .expect("phone joins");
    let sink = phone
        .publish_audio(AudioTrackOptions {
            name: "caller".into(),
            sample_rate: 8_000,
            ..Default::default()
        })
        .await
        .unwrap();
    // The caller's microphone: 20 ms frames in real time, silence unless something is queued.
    let (mic, _mic_task) = common::microphone(sink, 160);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("calls.db");
    let agent = Kill(
        Command::new(env!("CARGO_BIN_EXE_agent"))
            .env("LIVEKIT_URL", &url)
            .env("LIVEKIT_API_KEY", "devkey")
            .env("LIVEKIT_API_SECRET", "secret")
            .env("AGENT_ROOM", &room_name)
            .env("CALL_DB", &db)
            .env("AGENT_MODE", "realtime")
            .env("OPENAI_API_KEY", KEY)
            .env("OPENAI_REALTIME_BASE_URL", puppet.base_url())
            .env_remove("DEEPGRAM_API_KEY")
            .env_remove("CARTESIA_API_KEY")
            .env_remove("ELEVENLABS_API_KEY")
            .env(
                "RUST_LOG",
                std::env::var("AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );

    let (obs_tx, obs) = mpsc::channel::<Obs>(8192);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                RoomEvent::TrackSubscribed { track, .. } => {
                    let mut st = track.stream(8_000).unwrap();
                    let tx = obs_tx.clone();
                    tokio::spawn(async move {
                        while let Some(f) = st.recv().await {
                            let o = Obs::Frame(Instant::now(), level_dbfs(&f.samples));
                            if tx.send(o).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                RoomEvent::DataReceived(m) => {
                    let Ok(c) = Control::parse(&m.payload) else {
                        continue;
                    };
                    let o = match (c, m.topic.as_deref()) {
                        (
                            Control::Transcript {
                                role, text, fields, ..
                            },
                            Some(TRANSCRIPT_TOPIC),
                        ) => Obs::Transcript(role, text, fields),
                        (c, Some(CONTROL_TOPIC)) => Obs::Control(c),
                        _ => continue,
                    };
                    let _ = obs_tx.send(o).await;
                }
                _ => {}
            }
        }
    });
    Call {
        devroom,
        phone,
        obs,
        mic,
        agent,
        db,
        _dir: dir,
        frames: Vec::new(),
        controls: Vec::new(),
        transcripts: Vec::new(),
    }
}

impl Call {
    fn absorb(&mut self, o: Obs) {
        match o {
            Obs::Frame(t, l) => self.frames.push((t, l)),
            Obs::Control(c) => self.controls.push((Instant::now(), c)),
            Obs::Transcript(r, t, f) => self.transcripts.push((r, t, f)),
        }
    }

    /// Takes observations until `pred` holds (panics with `what` after `secs`).
    async fn wait_for(&mut self, what: &str, secs: u64, mut pred: impl FnMut(&Call) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !pred(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if let Ok(Some(o)) =
                tokio::time::timeout(Duration::from_millis(50), self.obs.recv()).await
            {
                self.absorb(o);
            }
        }
    }

    /// Takes observations for `d`.
    async fn pump(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Ok(Some(o)) = tokio::time::timeout(until - Instant::now(), self.obs.recv()).await
            {
                self.absorb(o);
            }
        }
    }

    fn loud_ms_since(&self, t: Instant) -> u32 {
        self.frames
            .iter()
            .filter(|(at, l)| *at >= t && *l > LOUD_DB)
            .count() as u32
            * 20
    }

    fn first_loud_since(&self, t: Instant) -> Option<Instant> {
        self.frames
            .iter()
            .find(|(at, l)| *at >= t && *l > LOUD_DB)
            .map(|f| f.0)
    }

    fn last_loud(&self) -> Option<Instant> {
        self.frames
            .iter()
            .rev()
            .find(|(_, l)| *l > LOUD_DB)
            .map(|f| f.0)
    }

    /// The caller says something (a 300 Hz tone, 8 kHz).
    async fn say(&self, ms: u32) {
        let pcm: Vec<i16> = (0..ms as usize * 8)
            .map(|i| ((i as f32 * 300.0 * std::f32::consts::TAU / 8000.0).sin() * 9000.0) as i16)
            .collect();
        self.mic.send(pcm).await.unwrap();
    }

    fn interrupts(&self) -> Vec<(Instant, Option<String>)> {
        self.controls
            .iter()
            .filter_map(|(t, c)| match c {
                Control::Interrupt { utterance_id } => Some((*t, utterance_id.clone())),
                _ => None,
            })
            .collect()
    }

    fn hangup(&self) -> Option<Option<String>> {
        self.controls.iter().find_map(|(_, c)| match c {
            Control::Hangup { reason } => Some(reason.clone()),
            _ => None,
        })
    }

    async fn send_control(&self, c: Control) {
        self.phone
            .send_data(DataPacketBuilder::new(c.to_bytes()).topic(CONTROL_TOPIC))
            .await
            .unwrap();
    }

    /// The agent process ends by itself.
    async fn wait_exit(&mut self, secs: u64) {
        let t0 = Instant::now();
        while self.agent.0.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "agent did not exit"
            );
            self.pump(Duration::from_millis(100)).await;
        }
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db).unwrap()
    }

    fn outcome(&self) -> String {
        self.db()
            .query_row("SELECT outcome FROM calls", [], |r| r.get(0))
            .unwrap()
    }

    /// (role, text, interrupted, heard_text) of every turn, in order.
    fn turns(&self) -> Vec<(String, String, i64, Option<String>)> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT role, text, interrupted, heard_text FROM turns ORDER BY seq")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    async fn end(mut self) {
        self.phone.close().await;
        self.wait_exit(15).await;
        self.devroom.shutdown().await;
    }
}

const GREETING: &str =
    "Hello, this is the Acme incident line. I will take a few details. May I have your name, please?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_call_passes_audio_both_ways_fills_the_form_and_hangs_up() {
    let puppet = Puppet::start(None).await;
    let mut call = start_call("1", &puppet).await;

    // The session: μ-law both ways, server VAD, the agent file's tools and persona.
    let update = puppet.expect("session.update", 60).await;
    let s = &update["session"];
    assert_eq!(s["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(s["audio"]["output"]["format"]["type"], "audio/pcmu");
    assert_eq!(s["audio"]["input"]["turn_detection"]["type"], "server_vad");
    let tools: Vec<&str> = s["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tools, ["record_field", "end_call", "transfer"]);
    assert!(s["instructions"].as_str().unwrap().contains("Robin"), "{s}");
    assert!(
        s["audio"]["input"]["transcription"]["model"].is_string(),
        "{s}"
    );

    // The greeting, in the model's voice: its audio reaches the phone.
    let create = puppet.expect("response.create", 10).await;
    assert!(
        create["response"]["instructions"]
            .as_str()
            .is_some_and(|i| i.contains("Acme incident line")),
        "{create}"
    );
    let t_greet = Instant::now();
    puppet.spoken_reply(
        "resp_greet",
        "item_greet",
        GREETING,
        &tone_ulaw(1500, 440.0),
    );
    call.wait_for("the greeting's audio", 15, |c| {
        c.loud_ms_since(t_greet) >= 1200
    })
    .await;
    call.wait_for("the greeting's transcript", 5, |c| {
        c.transcripts
            .iter()
            .any(|(r, t, _)| r == "assistant" && t == GREETING)
    })
    .await;
    // Played in real time, not in a burst: 1.5 s of audio took about that long to arrive.
    let first = call.first_loud_since(t_greet).unwrap();
    call.wait_for("the greeting to end", 10, |c| {
        c.last_loud()
            .is_some_and(|t| t.elapsed() > Duration::from_millis(400))
    })
    .await;
    let spread = call.last_loud().unwrap() - first;
    assert!(
        spread >= Duration::from_millis(1200),
        "greeting played in {spread:?}"
    );

    // The caller speaks: their audio reaches the model as 20 ms μ-law appends.
    call.say(800).await;
    puppet.wait_loud(500, 10).await;
    {
        let a = puppet.appends.lock().unwrap();
        assert!(
            a.iter().all(|x| x.ulaw.len() == 160),
            "appends are 20 ms frames"
        );
    }
    let appended_before = puppet.appended_ms();
    assert!(
        appended_before >= 1500,
        "caller audio flows continuously ({appended_before} ms)"
    );

    // Server VAD hears a turn; the model records the name.
    puppet.user_turn("item_user1", "my name is John");
    puppet.function_call(
        "resp_1",
        "call_1",
        "record_field",
        json!({"field": "name", "value": "John"}),
    );
    let out = puppet.expect("conversation.item.create", 10).await;
    assert_eq!(out["item"]["type"], "function_call_output");
    assert_eq!(out["item"]["call_id"], "call_1");
    assert!(
        out["item"]["output"]
            .as_str()
            .unwrap()
            .starts_with("recorded"),
        "{out}"
    );
    let create = puppet.expect("response.create", 5).await;
    assert!(
        create["response"].is_null() || create["response"]["instructions"].is_null(),
        "{create}"
    );
    call.wait_for("the name in a transcript", 10, |c| {
        c.transcripts
            .iter()
            .any(|(_, _, f)| f.get("name").map(String::as_str) == Some("John"))
    })
    .await;
    assert!(call
        .transcripts
        .iter()
        .any(|(r, t, _)| r == "user" && t == "my name is John"));

    // The model ends the call: the closing line is spoken, then `hangup`.
    puppet.function_call(
        "resp_2",
        "call_2",
        "end_call",
        json!({"message": "Thank you John, goodbye."}),
    );
    let out = puppet.expect("conversation.item.create", 10).await;
    assert_eq!(out["item"]["call_id"], "call_2");
    let create = puppet.expect("response.create", 5).await;
    assert!(
        create["response"]["instructions"]
            .as_str()
            .is_some_and(|i| i.contains("Thank you John, goodbye.")),
        "{create}"
    );
    assert_eq!(create["response"]["tool_choice"], "none");
    assert!(call.hangup().is_none(), "hung up before the goodbye");
    let t_bye = Instant::now();
    puppet.spoken_reply(
        "resp_3",
        "item_bye",
        "Thank you John, goodbye.",
        &tone_ulaw(800, 520.0),
    );
    call.wait_for("hangup", 15, |c| c.hangup().is_some()).await;
    assert!(
        call.loud_ms_since(t_bye) >= 600,
        "the goodbye was not heard before the hangup ({} ms)",
        call.loud_ms_since(t_bye)
    );
    assert_eq!(call.hangup(), Some(Some("end_call".into())));
    call.wait_exit(15).await;

    // The call record.
    assert_eq!(call.outcome(), "caller_goodbye");
    let name: String = call
        .db()
        .query_row("SELECT value FROM fields WHERE name = 'name'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(name, "John");
    let turns = call.turns();
    let find = |role: &str, text: &str| turns.iter().any(|t| t.0 == role && t.1 == text);
    assert!(find("assistant", GREETING), "{turns:#?}");
    assert!(find("user", "my name is John"), "{turns:#?}");
    assert!(find("assistant", "Thank you John, goodbye."), "{turns:#?}");
    assert!(
        turns.iter().all(|t| t.2 == 0),
        "nothing was interrupted: {turns:#?}"
    );
    puppet.violations.assert_none();
    assert_eq!(*puppet.connections.lock().unwrap(), 1);
    call.end().await;
}

/// Streams `ms` of tone as deltas of `item` at twice real time until stopped.
fn stream_reply(
    puppet: &Puppet,
    resp: &str,
    item: &str,
    ms: u32,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (p, resp, item) = (puppet.clone(), resp.to_string(), item.to_string());
    p.send(json!({"type": "response.created", "response": {"id": resp, "status": "in_progress"}}));
    p.send(
        json!({"type": "response.output_item.added", "response_id": resp, "output_index": 0,
        "item": {"id": item, "type": "message", "role": "assistant", "content": []}}),
    );
    p.send(transcript_delta(
        &resp,
        &item,
        "This is a long answer that goes on and on ",
    ));
    tokio::spawn(async move {
        let audio = tone_ulaw(ms, 440.0);
        let mut stopped = false;
        for chunk in audio.chunks(800) {
            if stop_rx.try_recv().is_ok() {
                stopped = true;
                break;
            }
            p.send(audio_delta(&resp, &item, chunk));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !stopped {
            let _ = stop_rx.await;
        }
        p.send(transcript_delta(&resp, &item, "and on."));
        p.send(json!({"type": "response.done", "response": {"id": resp, "status": "cancelled"}}));
    });
    stop_tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_barge_in_interrupts_the_bridge_and_truncates_to_what_was_heard() {
    let puppet = Puppet::start(None).await;
    let mut call = start_call("2", &puppet).await;
    puppet.expect("session.update", 60).await;
    puppet.expect("response.create", 10).await;

    // 1. A long greeting, still streaming when the caller talks over it; the "bridge" (the
    //    phone) reports what was heard.
    let t0 = Instant::now();
    let stop = stream_reply(&puppet, "resp_g", "item_g", 6000);
    call.wait_for("the greeting", 15, |c| c.loud_ms_since(t0) >= 1000)
        .await;
    let first = call.first_loud_since(t0).unwrap();
    call.say(1000).await;
    puppet.wait_loud(200, 10).await;
    puppet.send(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 3000, "item_id": "item_u1"}));
    call.wait_for("interrupt", 5, |c| !c.interrupts().is_empty())
        .await;
    let (t_int, label) = call.interrupts()[0].clone();
    assert_eq!(label.as_deref(), Some("a1"));
    let heard_ms = (t_int - first).as_millis() as u32;
    call.send_control(Control::Playback {
        utterance_id: "a1".into(),
        heard_ms,
        complete: false,
        interrupted: true,
    })
    .await;
    let cancel = puppet.expect("response.cancel", 5).await;
    assert_eq!(cancel["response_id"], "resp_g");
    let _ = stop.send(());
    let tr = puppet.expect("conversation.item.truncate", 5).await;
    assert_eq!(tr["item_id"], "item_g");
    assert_eq!(tr["content_index"], 0);
    let end_ms = tr["audio_end_ms"].as_u64().unwrap() as u32;
    eprintln!("barge-in 1: phone heard {heard_ms} ms, truncate at {end_ms} ms");
    // The bridge's report is what counts (it never exceeds what was pushed).
    assert!(
        end_ms <= heard_ms && heard_ms - end_ms <= 200,
        "truncate at {end_ms} ms, the caller heard {heard_ms} ms"
    );
    // The agent went quiet right away (what was in flight aside).
    call.pump(Duration::from_millis(1200)).await;
    let late = call.loud_ms_since(t_int + Duration::from_millis(300));
    assert!(late == 0, "{late} ms of agent audio after the interrupt");

    // 2. Another reply, interrupted with no report from the bridge: truncated at what was
    //    pushed, close to what the phone heard.
    puppet.user_turn("item_u1", "wait, I have a question");
    let t1 = Instant::now();
    let stop = stream_reply(&puppet, "resp_2", "item_2", 6000);
    call.wait_for("the second reply", 15, |c| c.loud_ms_since(t1) >= 1500)
        .await;
    let first = call.first_loud_since(t1).unwrap();
    puppet.send(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 9000, "item_id": "item_u2"}));
    call.wait_for("second interrupt", 5, |c| c.interrupts().len() >= 2)
        .await;
    let (t_int, label) = call.interrupts()[1].clone();
    assert_eq!(label.as_deref(), Some("a2"));
    let heard_ms = (t_int - first).as_millis() as u32;
    puppet.expect("response.cancel", 5).await;
    let _ = stop.send(());
    let tr = puppet.expect("conversation.item.truncate", 5).await;
    assert_eq!(tr["item_id"], "item_2");
    let end_ms = tr["audio_end_ms"].as_u64().unwrap() as u32;
    eprintln!("barge-in 2: phone heard {heard_ms} ms, truncate at {end_ms} ms (no report)");
    assert!(
        end_ms.abs_diff(heard_ms) <= 400,
        "truncate at {end_ms} ms, the caller heard about {heard_ms} ms"
    );

    // The caller hangs up; the record has both replies as interrupted, cut to what was heard.
    call.pump(Duration::from_millis(500)).await;
    call.phone.close().await;
    call.wait_exit(15).await;
    assert_eq!(call.outcome(), "caller_hung_up");
    let turns = call.turns();
    let cut: Vec<_> = turns.iter().filter(|t| t.0 == "assistant").collect();
    assert_eq!(cut.len(), 2, "{turns:#?}");
    for t in cut {
        assert_eq!(t.2, 1, "{t:?}");
        let heard = t.3.as_deref().unwrap_or_default();
        assert!(heard.len() < t.1.len() && t.1.starts_with(heard), "{t:?}");
    }
    puppet.violations.assert_none();
    call.devroom.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_vendor_failures_end_with_a_spoken_fallback_and_a_hangup() {
    // Refused handshakes: the caller hears an apology (the local voice), then `hangup`.
    for (i, status) in [401u16, 429, 500].into_iter().enumerate() {
        let puppet = Puppet::start(Some(status)).await;
        let mut call = start_call(&format!("3{i}"), &puppet).await;
        let t0 = Instant::now();
        call.wait_for(&format!("hangup after HTTP {status}"), 60, |c| {
            c.hangup().is_some()
        })
        .await;
        assert!(
            call.loud_ms_since(t0) >= 1000,
            "HTTP {status}: no fallback line before the hangup"
        );
        call.wait_exit(15).await;
        let outcome = call.outcome();
        assert!(
            outcome.starts_with("error: realtime") && outcome.contains(&status.to_string()),
            "{outcome}"
        );
        call.end().await;
    }

    // Mid-call: a rate-limit error instead of the greeting → the fallback line asks again and
    // the call goes on; then the socket drops → apology and hangup.
    let puppet = Puppet::start(None).await;
    let mut call = start_call("39", &puppet).await;
    puppet.expect("session.update", 60).await;
    puppet.expect("response.create", 10).await;
    let t0 = Instant::now();
    puppet.send(json!({"type": "error", "event_id": "e9", "error": {"type": "rate_limit_error",
        "code": "rate_limit_exceeded", "message": "Rate limit reached", "param": null, "event_id": null}}));
    call.wait_for("the fallback line", 20, |c| c.loud_ms_since(t0) >= 1000)
        .await;
    call.wait_for("a fallback transcript", 10, |c| {
        c.transcripts
            .iter()
            .any(|(r, t, _)| r == "assistant" && t.contains("say that again"))
    })
    .await;
    assert!(call.hangup().is_none(), "one error must not end the call");
    call.wait_for("the line to end", 15, |c| {
        c.last_loud()
            .is_some_and(|t| t.elapsed() > Duration::from_millis(500))
    })
    .await;
    let t1 = Instant::now();
    puppet.cut();
    call.wait_for("hangup after the socket dropped", 30, |c| {
        c.hangup().is_some()
    })
    .await;
    assert!(
        call.loud_ms_since(t1) >= 1000,
        "no apology before the hangup"
    );
    call.wait_exit(15).await;
    let outcome = call.outcome();
    assert!(outcome.starts_with("error: realtime"), "{outcome}");
    call.end().await;
}
