//! A scriptable fake LiveKit signalling server for the driver's tests (keepalive, resume,
//! leave, malformed frames, participant events) — things a real server will not do on cue.
//!
//! It speaks `/rtc` over tokio-tungstenite, answers the publisher offer with a str0m [`Peer`] on
//! a real UDP socket (so [`Room::connect`](crate::Room::connect) sees a working connection),
//! answers `add_track` with `track_published`, and records everything the client sends.
#![allow(clippy::large_enum_variant, clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as HsRequest, Response as HsResponse};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::peer::{Peer, Role};

pub(crate) type Req = proto::signal_request::Message;
pub(crate) type Resp = proto::signal_response::Message;

/// What the fake server saw.
#[derive(Debug)]
pub(crate) enum Seen {
    Connect { query: HashMap<String, String>, auth: Option<String> },
    Request(Req),
    Closed,
}

/// What a test can make the server do on the current connection.
#[derive(Debug)]
pub(crate) enum Ctl {
    Send(Resp),
    Raw(WsMessage),
    /// Drop the TCP connection without a close frame.
    Drop,
}

#[derive(Debug, Clone)]
pub(crate) struct FakeConfig {
    pub answer_pings: bool,
    pub allow_resume: bool,
    /// Answer resumes with a fresh `join` (a server without resume support).
    pub resume_with_join: bool,
    /// Refuse resume attempts with this HTTP status.
    pub reject_resume_status: Option<u16>,
    pub ping_interval: i32,
    pub ping_timeout: i32,
    pub others: Vec<proto::ParticipantInfo>,
    /// Refuse add_track and update_metadata with NOT_ALLOWED (as for a token without
    /// canPublish / canUpdateOwnMetadata).
    pub refuse: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self { answer_pings: true, allow_resume: true, resume_with_join: false, reject_resume_status: None, ping_interval: 1, ping_timeout: 3, others: vec![], refuse: false }
    }
}

pub(crate) struct FakeServer {
    pub url: String,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub cfg: Arc<Mutex<FakeConfig>>,
    ctl: Arc<Mutex<Option<mpsc::UnboundedSender<Ctl>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub(crate) async fn start(cfg: FakeConfig) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let cfg = Arc::new(Mutex::new(cfg));
        let ctl: Arc<Mutex<Option<mpsc::UnboundedSender<Ctl>>>> = Arc::new(Mutex::new(None));
        let (cfg2, ctl2) = (cfg.clone(), ctl.clone());
        // One server-side peer per session: a fresh join gets a new one, a resume keeps it.
        let session_peer: Arc<Mutex<Option<mpsc::Sender<PeerCmd>>>> = Arc::new(Mutex::new(None));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
                *ctl2.lock().unwrap() = Some(ctl_tx);
                tokio::spawn(conn_task(tcp, ctl_rx, seen_tx.clone(), session_peer.clone(), cfg2.clone()));
            }
        });
        FakeServer { url, seen, cfg, ctl, task }
    }

    /// Act on the current connection.
    pub(crate) fn ctl(&self, c: Ctl) {
        if let Some(tx) = self.ctl.lock().unwrap().as_ref() {
            let _ = tx.send(c);
        }
    }

    pub(crate) fn send(&self, r: Resp) {
        self.ctl(Ctl::Send(r));
    }

    /// Wait for the next recorded item matching `f`.
    pub(crate) async fn wait_for(&mut self, what: &str, mut f: impl FnMut(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) if f(&s) => return s,
                Ok(Some(_)) => {}
                Ok(None) => panic!("fake server gone while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

type PeerCmd = (String, oneshot::Sender<Result<String, String>>);

/// The server side of the client's publisher connection: answers offers, runs ICE/DTLS/SCTP.
async fn spawn_server_peer() -> mpsc::Sender<PeerCmd> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = sock.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel::<PeerCmd>(8);
    tokio::spawn(async move {
        let mut peer = Peer::new(Role::Subscriber, addr, false, Instant::now()).unwrap();
        let mut buf = vec![0u8; 2048];
        loop {
            for t in peer.transmits.drain(..) {
                let _ = sock.try_send_to(&t.contents, t.destination);
            }
            peer.events.clear();
            let deadline = peer.next_timeout().max(Instant::now()).min(Instant::now() + Duration::from_millis(200));
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        peer.handle_datagram(Instant::now(), from, &buf[..n]);
                    }
                }
                c = rx.recv() => {
                    let Some((offer, reply)) = c else { return };
                    let _ = reply.send(peer.accept_offer(&offer).map(|(a, _)| a).map_err(|e| e.to_string()));
                }
                _ = tokio::time::sleep_until(deadline.into()) => peer.handle_timeout(Instant::now()),
            }
        }
    });
    tx
}

fn encode(r: Resp) -> WsMessage {
    WsMessage::Binary(proto::SignalResponse { message: Some(r) }.encode_to_vec().into())
}

async fn conn_task(
    tcp: tokio::net::TcpStream,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    seen: mpsc::UnboundedSender<Seen>,
    session_peer: Arc<Mutex<Option<mpsc::Sender<PeerCmd>>>>,
    cfg: Arc<Mutex<FakeConfig>>,
) {
    let conf = cfg.lock().unwrap().clone();
    let mut query = HashMap::new();
    let mut auth = None;
    let cb = |req: &HsRequest, resp: HsResponse| -> Result<HsResponse, ErrorResponse> {
        query = req.uri().query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let resuming = query.get("reconnect").map(String::as_str) == Some("1");
        if resuming {
            if let Some(status) = conf.reject_resume_status {
                let mut e = ErrorResponse::new(Some("no".into()));
                *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status).unwrap();
                return Err(e);
            }
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(tcp, cb).await;
    let resuming = query.get("reconnect").map(String::as_str) == Some("1");
    let _ = seen.send(Seen::Connect { query: query.clone(), auth });
    let Ok(ws) = ws else { return };
    let (mut sink, mut stream) = ws.split();
    let resumed = resuming && conf.allow_resume && !conf.resume_with_join;
    let existing = session_peer.lock().unwrap().clone();
    let peer = match (resumed, existing) {
        (true, Some(p)) => p,
        _ => {
            let p = spawn_server_peer().await;
            *session_peer.lock().unwrap() = Some(p.clone());
            p
        }
    };
    let first = if resumed {
        Resp::Reconnect(proto::ReconnectResponse::default())
    } else if resuming && !conf.resume_with_join {
        // As livekit-server (roommanager.go StartSession): a resume it cannot honour.
        Resp::Leave(proto::LeaveRequest {
            reason: proto::DisconnectReason::StateMismatch as i32,
            action: proto::leave_request::Action::Reconnect as i32,
            ..Default::default()
        })
    } else {
        Resp::Join(proto::JoinResponse {
            room: Some(proto::Room { sid: "RM_fake".into(), name: "fake".into(), ..Default::default() }),
            participant: Some(proto::ParticipantInfo {
                sid: "PA_test".into(),
                identity: "tester".into(),
                name: "Tester".into(),
                kind: proto::participant_info::Kind::Sip as i32,
                attributes: [("a".to_string(), "1".to_string())].into_iter().collect(),
                version: 1,
                ..Default::default()
            }),
            other_participants: conf.others.clone(),
            ping_interval: conf.ping_interval,
            ping_timeout: conf.ping_timeout,
            subscriber_primary: true,
            ..Default::default()
        })
    };
    if sink.send(encode(first)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            m = stream.next() => {
                let Some(Ok(m)) = m else {
                    let _ = seen.send(Seen::Closed);
                    return;
                };
                let WsMessage::Binary(b) = m else { continue };
                let Ok(proto::SignalRequest { message: Some(req) }) = proto::SignalRequest::decode(&b[..]) else { continue };
                let reply = match &req {
                    Req::Offer(o) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = peer.send((o.sdp.clone(), tx)).await;
                        match rx.await {
                            Ok(Ok(answer)) => Some(Resp::Answer(proto::SessionDescription { r#type: "answer".into(), sdp: answer, ..Default::default() })),
                            _ => None,
                        }
                    }
                    Req::PingReq(p) if cfg.lock().unwrap().answer_pings => Some(Resp::PongResp(proto::Pong { last_ping_timestamp: p.timestamp, timestamp: p.timestamp })),
                    Req::AddTrack(a) if conf.refuse => Some(Resp::RequestResponse(proto::RequestResponse {
                        reason: proto::request_response::Reason::NotAllowed as i32,
                        request: Some(proto::request_response::Request::AddTrack(a.clone())),
                        ..Default::default()
                    })),
                    Req::UpdateMetadata(u) => Some(Resp::RequestResponse(proto::RequestResponse {
                        request_id: u.request_id,
                        reason: if conf.refuse { proto::request_response::Reason::NotAllowed } else { proto::request_response::Reason::Ok } as i32,
                        message: if conf.refuse { "does not have permission to update own metadata".into() } else { String::new() },
                        request: Some(proto::request_response::Request::UpdateMetadata(u.clone())),
                    })),
                    Req::AddTrack(a) => Some(Resp::TrackPublished(proto::TrackPublishedResponse {
                        cid: a.cid.clone(),
                        track: Some(proto::TrackInfo { sid: format!("TR_{}", a.cid), name: a.name.clone(), r#type: a.r#type, source: a.source, ..Default::default() }),
                    })),
                    _ => None,
                };
                let _ = seen.send(Seen::Request(req));
                if let Some(r) = reply {
                    if sink.send(encode(r)).await.is_err() {
                        return;
                    }
                }
            }
            c = ctl.recv() => match c {
                Some(Ctl::Send(r)) => { let _ = sink.send(encode(r)).await; }
                Some(Ctl::Raw(m)) => { let _ = sink.send(m).await; }
                Some(Ctl::Drop) | None => return,
            }
        }
    }
}
