//! Entry points for the fuzz targets in `fuzz/`; not an API. Each feeds signal frames to the
//! engine exactly as a participant's `/rtc` session hands them over (same decoding, same
//! commands), on an engine with one room and two participants. Nothing is sent: sfu.rs drops
//! datagrams under `cfg(fuzzing)`, since the remote ICE candidates are the fuzzer's choice.

use std::sync::OnceLock;

use clap::Parser;

use super::*;
use crate::signal::{decode_binary, decode_text, MAX_FRAME};

/// The engine's socket is only used to send (never, here); one serves every input.
fn runtime_and_socket() -> &'static (tokio::runtime::Runtime, Arc<UdpSocket>) {
    static RT: OnceLock<(tokio::runtime::Runtime, Arc<UdpSocket>)> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let socket = rt.block_on(UdpSocket::bind("127.0.0.1:0")).expect("loopback UDP socket");
        (rt, Arc::new(socket))
    })
}

struct Harness {
    engine: Engine,
    /// The participant whose frames the input is, and its session.
    key: u64,
    session: u64,
    queues: Vec<mpsc::Receiver<Outbound>>,
}

impl Harness {
    fn new() -> Harness {
        let (rt, socket) = runtime_and_socket();
        let _enter = rt.enter();
        let cfg = Arc::new(Config::parse_from(["devroom"]));
        let local_addr = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 7882);
        let webhooks = Webhooks::start(&[], &cfg.api_key, &cfg.api_secret).expect("no webhook URLs");
        let signal_queue = cfg.signal_queue.max(1);
        let mut engine = Engine::new(cfg, socket.clone(), local_addr, None, webhooks, None);
        let mut queues = Vec::new();
        let mut join = |engine: &mut Engine, identity: &str, kind, publish: bool| {
            let (tx, rx) = mpsc::channel(signal_queue);
            queues.push(rx);
            let req = JoinRequest {
                room: "call-fuzz".into(),
                identity: identity.into(),
                name: String::new(),
                kind,
                metadata: String::new(),
                attributes: HashMap::new(),
                permission: Permission {
                    can_publish: publish,
                    can_subscribe: true,
                    can_publish_data: true,
                    can_update_metadata: true,
                    hidden: false,
                    agent: false,
                },
                auto_subscribe: true,
                room_agents: Vec::new(),
                protocol: 16,
                video: Default::default(),
                token_exp: f64::MAX,
                tx,
            };
            engine.join(req).expect("join of a fresh identity")
        };
        let phone = join(&mut engine, "phone-CA00000000000000000000000000000000", lk::participant_info::Kind::Sip, true);
        join(&mut engine, "agent-1", lk::participant_info::Kind::Agent, true);
        let mut h = Harness { engine, key: phone.key, session: phone.session, queues };
        h.settle();
        h
    }

    /// What the engine's loop does after each command, and the sessions reading their queues.
    fn settle(&mut self) {
        let (rt, _) = runtime_and_socket();
        let _enter = rt.enter();
        self.engine.drive();
        self.engine.reap();
        self.engine.on_timeout(Instant::now());
        for q in &mut self.queues {
            while q.try_recv().is_ok() {}
        }
    }

    /// One WebSocket message as `signal::session` takes it; false once the session would close.
    fn frame(&mut self, text: bool, bytes: &[u8]) -> bool {
        if bytes.len() > MAX_FRAME {
            return false; // refused by the WebSocket layer
        }
        let decoded = if text {
            // tungstenite refuses text frames that are not UTF-8.
            let Ok(t) = std::str::from_utf8(bytes) else { return false };
            decode_text(t)
        } else {
            decode_binary(bytes)
        };
        let Ok(req) = decoded else { return false };
        let Some(msg) = req.message else { return true };
        if matches!(msg, Req::PingReq(_) | Req::Ping(_)) {
            return true; // answered by the session itself
        }
        self.signal(msg);
        true
    }

    fn signal(&mut self, msg: Req) {
        let (rt, _) = runtime_and_socket();
        let _enter = rt.enter();
        self.engine.on_command(Command::Signal { key: self.key, session: self.session, msg });
        self.settle();
    }
}

/// WebSocket messages from one participant: `(is_text, bytes)` each.
pub fn signal_requests<'a>(frames: impl IntoIterator<Item = (bool, &'a [u8])>) {
    let mut h = Harness::new();
    for (text, bytes) in frames {
        if !h.frame(text, bytes) {
            break;
        }
    }
}

/// SDP text of a client's publisher `offer`.
pub fn publisher_offer(sdp: &str) {
    let mut h = Harness::new();
    h.signal(Req::Offer(lk::SessionDescription { r#type: "offer".into(), sdp: sdp.into(), id: 1, ..Default::default() }));
}

/// SDP text of a client's `answer` to the subscriber offer the engine sent on join.
pub fn subscriber_answer(sdp: &str) {
    let mut h = Harness::new();
    h.signal(Req::Answer(lk::SessionDescription { r#type: "answer".into(), sdp: sdp.into(), id: 1, ..Default::default() }));
}
