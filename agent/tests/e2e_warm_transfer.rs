//! Warm transfer end to end in a devroom room: the agent binary (cascaded; the language model is
//! a fake speaking OpenAI's wire format) is asked to transfer to `sales`, configured warm. It
//! says the transfer line, puts the caller on hold (a soft tone), and asks "the bridge" — here a
//! fake of LiveKit's SIP API that joins the person into the room as a `sip` participant and
//! answers when they are there — then briefs the person and leaves: no hangup, no `<Dial>`.
//! When the person declines with a key instead, only their leg is hung up (their participant
//! removed through RoomService, which the bridge turns into a hangup) and the caller hears that
//! nobody could take the call. (Two callsim legs through the real bridge are not run here.)

mod common;
mod fakes;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use common::{test_call, Kill, Obs};
use fakes::chat::{text_reply, tool_reply, FakeChat, Script};
use proto::control::{Control, CONTROL_TOPIC};
use room::{DataPacketBuilder, Room, RoomEvent, RoomOptions};
use tokio::sync::mpsc;

/// What the dialled person observes.
#[derive(Debug)]
enum Seen {
    Loud,
    Control(Control),
    AgentLeft,
    /// The person's own connection was closed (removed from the room).
    Removed,
}

struct Person {
    room: Option<Room>,
    seen: Option<mpsc::Receiver<Seen>>,
    requests: Vec<livekit_protocol::CreateSipParticipantRequest>,
}

/// A fake `CreateSIPParticipant`: joins the person (`participant_identity`, kind `sip`) into
/// the room, waits `ring`, answers 200.
async fn fake_sip(url: String, ring: Duration) -> (String, Arc<Mutex<Person>>) {
    let person = Arc::new(Mutex::new(Person { room: None, seen: None, requests: vec![] }));
    let p2 = person.clone();
    let app = Router::new().route(
        "/twirp/livekit.SIP/CreateSIPParticipant",
        post(move |body: axum::body::Bytes| {
            let (p2, url) = (p2.clone(), url.clone());
            async move {
                use prost::Message;
                let req = livekit_protocol::CreateSipParticipantRequest::decode(body).unwrap();
                p2.lock().unwrap().requests.push(req.clone());
                tokio::time::sleep(ring).await;
                let identity = req.participant_identity.clone();
                let token = agent::token::sign(
                    "devkey",
                    "secret",
                    serde_json::json!({"sub": identity, "kind": "sip",
                        "video": {"roomJoin": true, "room": req.room_name, "canPublish": true, "canSubscribe": true, "canPublishData": true}}),
                    600,
                );
                let (room, mut events) = Room::connect(&url, &token, RoomOptions::default()).await.unwrap();
                let (tx, rx) = mpsc::channel(4096);
                tokio::spawn(async move {
                    while let Some(ev) = events.recv().await {
                        match ev {
                            RoomEvent::TrackSubscribed { track, .. } => {
                                let mut st = track.stream(16_000).unwrap();
                                let tx = tx.clone();
                                tokio::spawn(async move {
                                    while let Some(f) = st.recv().await {
                                        if agent::vad::level_dbfs(&f.samples) > -40.0 {
                                            let _ = tx.send(Seen::Loud).await;
                                        }
                                    }
                                });
                            }
                            RoomEvent::DataReceived(m) if m.topic.as_deref() == Some(CONTROL_TOPIC) => {
                                if let Ok(c) = Control::parse(&m.payload) {
                                    let _ = tx.send(Seen::Control(c)).await;
                                }
                            }
                            RoomEvent::ParticipantDisconnected(p) if p.identity.starts_with("agent-") => {
                                let _ = tx.send(Seen::AgentLeft).await;
                            }
                            RoomEvent::Disconnected(_) => {
                                let _ = tx.send(Seen::Removed).await;
                            }
                            _ => {}
                        }
                    }
                });
                let mut p = p2.lock().unwrap();
                p.room = Some(room);
                p.seen = Some(rx);
                let info = livekit_protocol::SipParticipantInfo { participant_identity: identity, room_name: req.room_name, sip_call_id: "CAperson".into(), ..Default::default() };
                ([("content-type", "application/protobuf")], info.encode_to_vec())
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (base, person)
}

/// Runs a call up to the transfer: returns the caller's observations, the agent and the fakes.
async fn call_to_sales(sid: &str, ring: Duration) -> (common::TestCall, Kill, Arc<Mutex<Person>>, FakeChat, std::path::PathBuf) {
    let fake = FakeChat::start(false).await;
    fake.push(Script::Reply(tool_reply("", "call_1", "transfer", &[r#"{"destination":"sales"}"#])));
    for _ in 0..4 {
        fake.push(Script::Reply(text_reply(&["What else can I do for you?"])));
    }
    let call = test_call(sid).await;
    let (sip_url, person) = fake_sip(call.url.clone(), ring).await;
    let agent_file = call.dir.path().join("warm.toml");
    let toml = agent::config::DEFAULT_AGENT_TOML
        .replace("preemptive_reply = true", "preemptive_reply = false")
        .replace("transfer_number = \"+15550100200\"\n", "");
    std::fs::write(&agent_file, format!("{toml}\n[transfers.sales]\nnumber = \"+15550100201\"\nwarm = true\n")).unwrap();
    let log = call.dir.path().join("agent.log");
    let proc = Kill(
        call.agent()
            .env("AGENT_LLM", "openai")
            .env("AGENT_CONFIG", &agent_file)
            .env("OPENAI_API_KEY", fakes::KEY)
            .env("OPENAI_BASE_URL", fake.base_url())
            .env("AGENT_SIP_URL", &sip_url)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    (call, proc, person, fake, log)
}

/// Waits for the greeting, then the caller asks for sales; returns when they finished saying so.
async fn ask(call: &mut common::TestCall, log: &std::path::Path) -> Instant {
    let mut loud = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while loud.last().is_none_or(|t: &Instant| t.elapsed() < Duration::from_millis(1200)) || loud.len() < 50 {
        assert!(Instant::now() < deadline, "no greeting\n{}", std::fs::read_to_string(log).unwrap_or_default());
        if let Ok(Some(Obs::Frame(t, l))) = tokio::time::timeout(Duration::from_millis(100), call.obs.recv()).await {
            if l > -40.0 {
                loud.push(t);
            }
        }
    }
    let line = agent::providers::offline_tts::OfflineTts::new("en-us+m3", 140, 16_000).synthesize("put me through to sales").await.unwrap();
    let ms = line.len() as u64 / 16;
    call.mic.send(line).await.unwrap();
    Instant::now() + Duration::from_millis(ms)
}

/// The person's observations once they joined (waits for the dial).
async fn person_seen(person: &Arc<Mutex<Person>>, within: Duration, log: &std::path::Path) -> mpsc::Receiver<Seen> {
    let t0 = Instant::now();
    loop {
        if let Some(rx) = person.lock().unwrap().seen.take() {
            return rx;
        }
        assert!(t0.elapsed() < within, "nobody was dialled\n{}", std::fs::read_to_string(log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_is_briefed_and_the_agent_leaves_them_with_the_caller() {
    let (mut call, mut proc, person, _fake, log) = call_to_sales("CAwarm00000000000000000000000000001", Duration::from_secs(3)).await;
    let said = ask(&mut call, &log).await;
    // The caller hears the transfer line, then the hold tone while the person's phone rings.
    let mut caller_loud = Vec::new();
    let mut caller_controls = Vec::new();
    let t0 = Instant::now();
    while person.lock().unwrap().requests.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no dial\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        match tokio::time::timeout(Duration::from_millis(50), call.obs.recv()).await {
            Ok(Some(Obs::Frame(t, l))) if l > -40.0 && t > said => caller_loud.push(t),
            Ok(Some(Obs::Control(c))) => caller_controls.push(c),
            _ => {}
        }
    }
    let dialled = Instant::now();
    assert!(caller_loud.len() * 20 >= 1000, "the transfer line before dialling: {} ms", caller_loud.len() * 20);
    let req = person.lock().unwrap().requests[0].clone();
    assert_eq!((req.sip_call_to.as_str(), req.wait_until_answered), ("+15550100201", true), "{req:?}");
    assert_eq!(req.room_name, call.room_name);
    let mut seen = person_seen(&person, Duration::from_secs(10), &log).await;
    let hold: usize = {
        let mut n = 0;
        while let Ok(Some(o)) = tokio::time::timeout(Duration::from_millis(10), call.obs.recv()).await {
            if let Obs::Frame(t, l) = o {
                n += usize::from(l > -40.0 && t > dialled);
            }
        }
        n
    };
    assert!(hold >= 10, "the caller heard no hold tone while it rang ({hold} frames)");
    // The brief reaches the person; then the agent leaves, hanging up nobody.
    let mut brief = 0;
    let mut person_controls = Vec::new();
    let t1 = Instant::now();
    loop {
        assert!(t1.elapsed() < Duration::from_secs(40), "the agent did not leave; brief {brief} frames\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        match tokio::time::timeout(Duration::from_millis(100), seen.recv()).await {
            Ok(Some(Seen::Loud)) => brief += 1,
            Ok(Some(Seen::Control(c))) => person_controls.push(c),
            Ok(Some(Seen::AgentLeft)) => break,
            Ok(Some(Seen::Removed)) => panic!("the person was removed from the room"),
            _ => {}
        }
    }
    assert!(brief * 20 >= 3000, "only {} ms of brief", brief * 20);
    assert!(!person_controls.iter().any(|c| matches!(c, Control::Hangup { .. } | Control::Transfer { .. })), "{person_controls:?}");
    while let Ok(Some(o)) = tokio::time::timeout(Duration::from_millis(10), call.obs.recv()).await {
        if let Obs::Control(c) = o {
            caller_controls.push(c);
        }
    }
    assert!(!caller_controls.iter().any(|c| matches!(c, Control::Hangup { .. } | Control::Transfer { .. })), "{caller_controls:?}");
    let t2 = Instant::now();
    while proc.0.try_wait().unwrap().is_none() {
        assert!(t2.elapsed() < Duration::from_secs(15), "agent did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = agent::record::load_call(&call.db, &call.room_name).unwrap().unwrap();
    assert_eq!(rec.outcome.as_deref(), Some("transferred"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_who_declines_with_a_key_is_hung_up_and_the_caller_is_told() {
    let (mut call, _proc, person, fake, log) = call_to_sales("CAwarm00000000000000000000000000002", Duration::from_millis(500)).await;
    ask(&mut call, &log).await;
    let mut seen = person_seen(&person, Duration::from_secs(30), &log).await;
    // The brief starts: the person presses a key (their bridge leg reports it as `dtmf`).
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(20), "no brief\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        if let Ok(Some(Seen::Loud)) = tokio::time::timeout(Duration::from_millis(100), seen.recv()).await {
            break;
        }
    }
    let room = person.lock().unwrap().room.clone().unwrap();
    room.send_data(DataPacketBuilder::new(Control::Dtmf { digit: "1".into() }.to_bytes()).topic(CONTROL_TOPIC)).await.unwrap();
    // Their leg (only theirs) is hung up; the caller hears the agent again, and the model is told.
    let t1 = Instant::now();
    loop {
        assert!(t1.elapsed() < Duration::from_secs(10), "the person was not removed\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        if let Ok(Some(Seen::Removed)) = tokio::time::timeout(Duration::from_millis(100), seen.recv()).await {
            break;
        }
    }
    let after = Instant::now() + Duration::from_millis(300);
    let mut caller_loud = 0;
    let mut caller_controls = Vec::new();
    let t2 = Instant::now();
    while t2.elapsed() < Duration::from_secs(6) {
        match tokio::time::timeout(Duration::from_millis(100), call.obs.recv()).await {
            Ok(Some(Obs::Frame(t, l))) if l > -40.0 && t > after => caller_loud += 1,
            Ok(Some(Obs::Control(c))) => caller_controls.push(c),
            _ => {}
        }
    }
    assert!(caller_loud * 20 >= 1500, "the caller was not told ({} ms)", caller_loud * 20);
    assert!(!caller_controls.iter().any(|c| matches!(c, Control::Hangup { .. })), "the caller's leg was hung up: {caller_controls:?}");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("warm transfer failed"), "{log_text}");
    drop(fake);
}
