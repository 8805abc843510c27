//! Outbound calls through LiveKit's own SIP API, served by the bridge:
//! `POST /twirp/livekit.SIP/CreateSIPParticipant` places the call with Twilio REST, and the
//! phone participant appears in the requested room as LiveKit SIP's would (kind `sip`, `sip.*`
//! attributes, `sip.callStatus` dialing → ringing → active → hangup).
//!
//! ```text
//! request ─▶ checks (JWT sip.call, DIAL_ALLOW, limits) ─▶ dialing task: join the room (dialing)
//!   ─▶ Twilio POST Calls.json (Url=/outbound-call, StatusCallback=/outbound-status, AMD → /outbound-amd)
//!   ─▶ callbacks feed proto::outbound::OutboundCall ─▶ attributes, ringback, the reply
//!   ─▶ Twilio fetches /outbound-call ─▶ <Connect><Stream> ─▶ the call task takes the room over
//! ```
//!
//! The dialing task is a thin driver around [`OutboundCall`]. When the call's Media Stream
//! starts, the call task takes over its room connection, its state machine and the channel its
//! callbacks arrive on ([`Handoff`]), so the participant never leaves and rejoins. The URLs
//! Twilio calls back carry a token the bridge signed over the call's description (room,
//! identity, numbers): only calls this bridge placed get a stream, whichever replica Twilio
//! reaches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use livekit_api::access_token::TokenVerifier;
use livekit_protocol::{CreateSipParticipantRequest, SipParticipantInfo};
use proto::dial_policy::is_e164;
use proto::dtmf::{parse_dial_string, Press};
use proto::outbound::{
    AmdMode, AnsweredBy, DialFailure, OutboundCall, OutboundConfig, OutboundOutput, SipCallStatus, TwilioCallStatus,
    ATTR_ANSWERED_BY, ATTR_CALL_STATUS,
};
use proto::redact::Masked;
use proto::twirp::{TwirpCode, TwirpError};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::call_task::{join_room, Joined, RoomSend};
use crate::http::{unix_now, App};
use crate::registry::{CallInfo, DialSlot, Direction, Refusal};
use crate::twilio_rest::RestError;

/// The longest ring Twilio allows (`Timeout`).
pub const MAX_RINGING: Duration = Duration::from_secs(600);
/// Callbacks and the stream may come this long after the ringing timeout (Twilio's own timer,
/// HTTP delivery) before the call is given up.
const CALLBACK_GRACE: Duration = Duration::from_secs(10);
/// Answered, and no Media Stream this long after: hung up.
const STREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// Callback events waiting for the task that owns the call.
const EVENT_QUEUE: usize = 16;
/// Limits on what a request may ask for (LiveKit's own are looser; these keep memory bounded).
const MAX_NAME: usize = 256;
const MAX_METADATA: usize = 4096;
const MAX_ATTRIBUTES: usize = 32;
const MAX_ATTRIBUTE_KEY: usize = 128;
const MAX_ATTRIBUTE_VALUE: usize = 1024;
/// The request header that overrides `OUTBOUND_AMD` (LiveKit's `headers` map).
pub const AMD_HEADER: &str = "X-Twilio-MachineDetection";

/// What a `CreateSIPParticipant` request asks for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Dial {
    /// Whom to call (E.164, allowed by `DIAL_ALLOW`).
    pub to: String,
    /// Our caller ID.
    pub from: String,
    pub room: String,
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    pub dtmf: Vec<Press>,
    pub play_dialtone: bool,
    pub hide_phone_number: bool,
    pub wait_until_answered: bool,
    pub ringing_timeout: Duration,
    pub max_duration: Duration,
    pub amd: AmdMode,
}

fn invalid(msg: impl Into<String>) -> TwirpError {
    TwirpError::new(TwirpCode::InvalidArgument, msg)
}

fn duration_of(d: &Option<pbjson_types::Duration>) -> Option<Duration> {
    let d = d.as_ref()?;
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

impl Dial {
    /// Checks a request the way LiveKit does, plus the bridge's own rules: only E.164
    /// numbers on `DIAL_ALLOW`, bounded sizes, durations within the bridge's limits.
    pub fn from_request(req: CreateSipParticipantRequest, cfg: &crate::config::Config) -> Result<Dial, TwirpError> {
        let to = req.sip_call_to.trim().to_owned();
        if to.is_empty() {
            return Err(invalid("missing sip callee number"));
        }
        if !is_e164(&to) {
            return Err(invalid("sip_call_to must be an E.164 number (+ and up to 15 digits)"));
        }
        if !cfg.dial_allow.allows(&to) {
            return Err(TwirpError::new(TwirpCode::PermissionDenied, "sip_call_to is not an allowed destination (DIAL_ALLOW)"));
        }
        let from = match req.sip_number.trim() {
            "" => cfg.twilio_from_number.clone().unwrap_or_default(),
            n => n.to_owned(),
        };
        if from.is_empty() {
            return Err(TwirpError::new(TwirpCode::FailedPrecondition, "no sip_number given and TWILIO_FROM_NUMBER is not set"));
        }
        if !is_e164(&from) {
            return Err(invalid("sip_number must be an E.164 number on the Twilio account"));
        }
        if req.room_name.is_empty() {
            return Err(invalid("missing room name"));
        }
        let identity = if req.participant_identity.is_empty() { format!("sip_{to}") } else { req.participant_identity };
        for (what, v, max) in [
            ("room_name", &req.room_name, MAX_NAME),
            ("participant_identity", &identity, MAX_NAME),
            ("participant_name", &req.participant_name, MAX_NAME),
            ("participant_metadata", &req.participant_metadata, MAX_METADATA),
        ] {
            if v.len() > max {
                return Err(invalid(format!("{what} is longer than {max} bytes")));
            }
        }
        if req.participant_attributes.len() > MAX_ATTRIBUTES
            || req.participant_attributes.iter().any(|(k, v)| k.len() > MAX_ATTRIBUTE_KEY || v.len() > MAX_ATTRIBUTE_VALUE)
        {
            return Err(invalid(format!(
                "participant_attributes: at most {MAX_ATTRIBUTES}, keys up to {MAX_ATTRIBUTE_KEY} and values up to {MAX_ATTRIBUTE_VALUE} bytes"
            )));
        }
        let dtmf = parse_dial_string(&req.dtmf).map_err(|e| invalid(format!("dtmf: {e}")))?;
        let amd = match req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(AMD_HEADER)) {
            Some((_, v)) => v.parse().map_err(|e| invalid(format!("{AMD_HEADER}: {e}")))?,
            None => cfg.outbound_amd,
        };
        let ringing_timeout = duration_of(&req.ringing_timeout)
            .filter(|d| !d.is_zero())
            .unwrap_or(cfg.outbound_ringing_timeout)
            .clamp(Duration::from_secs(1), MAX_RINGING);
        let max_duration = duration_of(&req.max_call_duration)
            .filter(|d| !d.is_zero())
            .map_or(cfg.max_call_duration, |d| d.min(cfg.max_call_duration))
            .max(Duration::from_secs(1));
        #[allow(deprecated)] // LiveKit still honours the old name
        let play_dialtone = req.play_dialtone || req.play_ringtone;
        Ok(Dial {
            to,
            from,
            room: req.room_name,
            identity,
            name: req.participant_name,
            metadata: req.participant_metadata,
            attributes: req.participant_attributes,
            dtmf,
            play_dialtone,
            hide_phone_number: req.hide_phone_number,
            wait_until_answered: req.wait_until_answered,
            ringing_timeout,
            max_duration,
            amd,
        })
    }

    /// The call as the rest of the bridge sees it (no CallSid until Twilio gives one).
    fn info(&self, account_sid: &str) -> CallInfo {
        CallInfo {
            call_sid: String::new(),
            account_sid: account_sid.to_owned(),
            from: self.from.clone(),
            to: self.to.clone(),
            room: self.room.clone(),
            identity: self.identity.clone(),
            direction: Direction::Outbound,
        }
    }

    /// The phone participant's attributes as it joins: the request's, then LiveKit SIP's.
    fn attributes(&self, account_sid: &str) -> HashMap<String, String> {
        let mut a = self.attributes.clone();
        a.insert(ATTR_CALL_STATUS.into(), SipCallStatus::Dialing.as_str().into());
        a.insert("sip.twilio.accountSid".into(), account_sid.to_owned());
        if !self.hide_phone_number {
            a.insert("sip.phoneNumber".into(), self.to.clone());
            a.insert("sip.trunkPhoneNumber".into(), self.from.clone());
        }
        a
    }
}

/// What Twilio's callbacks tell the task that owns an outbound call.
pub enum OutboundEvent {
    Status(TwilioCallStatus),
    AnsweredBy(AnsweredBy),
    /// The call's stream started on this replica: hand the call over.
    Takeover { call_sid: String, reply: oneshot::Sender<Handoff> },
}

/// The answer waiting for the request that placed a call.
pub struct PendingReply {
    tx: oneshot::Sender<Result<SipParticipantInfo, TwirpError>>,
    info: SipParticipantInfo,
}

impl PendingReply {
    pub fn send(self, result: Result<(), DialFailure>) {
        let _ = self.tx.send(result.map(|()| self.info).map_err(DialFailure::to_twirp));
    }
}

/// Everything a call task needs to carry on an outbound call whose stream it accepted.
pub struct Handoff {
    pub(crate) joined: Joined,
    pub call: OutboundCall,
    pub slot: DialSlot,
    pub events: mpsc::Receiver<OutboundEvent>,
    pub reply: Option<PendingReply>,
    pub entry: OutboundEntry,
    pub max_duration: Duration,
}

/// The outbound calls this replica owns, by the key in their callback URLs.
#[derive(Default)]
pub struct OutboundCalls {
    map: Mutex<HashMap<String, mpsc::Sender<OutboundEvent>>>,
}

/// A call's place in [`OutboundCalls`]; removed when dropped.
pub struct OutboundEntry {
    app: Arc<App>,
    key: String,
}

impl Drop for OutboundEntry {
    fn drop(&mut self) {
        self.app.outbound.lock().remove(&self.key);
    }
}

impl OutboundCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<OutboundEvent>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls being dialled or talking that this replica owns.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Passes a callback to the call's task; false when this replica does not own the call.
    fn deliver(&self, key: &str, ev: OutboundEvent) -> Result<(), ()> {
        let tx = self.lock().get(key).cloned().ok_or(())?;
        // A task that cannot keep up with callbacks loses one (Twilio's statuses are few).
        tx.try_send(ev).map_err(|_| ())
    }

    /// The call's stream started here: take the call over from its dialing task.
    pub async fn take_over(&self, key: &str, call_sid: &str) -> Option<Handoff> {
        let (tx, rx) = oneshot::channel();
        let ev = OutboundEvent::Takeover { call_sid: call_sid.to_owned(), reply: tx };
        self.deliver(key, ev).ok()?;
        tokio::time::timeout(Duration::from_secs(2), rx).await.ok()?.ok()
    }
}

/// How the request's body is encoded (the answer uses the same).
#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Json,
    Protobuf,
}

fn twirp_response(e: &TwirpError) -> Response {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], e.to_json()).into_response()
}

fn encode(enc: Encoding, info: &SipParticipantInfo) -> Response {
    match enc {
        Encoding::Protobuf => {
            use prost::Message;
            ([(header::CONTENT_TYPE, "application/protobuf")], info.encode_to_vec()).into_response()
        }
        Encoding::Json => match serde_json::to_string(info) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => twirp_response(&TwirpError::new(TwirpCode::Internal, e.to_string())),
        },
    }
}

/// `POST /twirp/livekit.SIP/CreateSIPParticipant`.
pub async fn create_sip_participant(app: Arc<App>, headers: HeaderMap, body: Bytes) -> Response {
    let enc = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) if ct.starts_with("application/protobuf") => Encoding::Protobuf,
        _ => Encoding::Json,
    };
    match place(&app, &headers, &body, enc).await {
        Ok(info) => encode(enc, &info),
        Err(e) => {
            // Calls that rang and were not answered are counted by their task.
            if !e.meta.contains_key("sip_status_code") {
                app.metrics.outbound.with_label_values(&[outcome_of(&e)]).inc();
            }
            twirp_response(&e)
        }
    }
}

fn outcome_of(e: &TwirpError) -> &'static str {
    match e.code {
        TwirpCode::Unauthenticated | TwirpCode::PermissionDenied => "refused",
        TwirpCode::InvalidArgument | TwirpCode::Malformed => "invalid",
        TwirpCode::ResourceExhausted => "full",
        _ => "failed",
    }
}

async fn place(app: &Arc<App>, headers: &HeaderMap, body: &[u8], enc: Encoding) -> Result<SipParticipantInfo, TwirpError> {
    // LiveKit's rules: a JWT signed with the API secret, carrying the `sip.call` grant.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| TwirpError::new(TwirpCode::Unauthenticated, "authorization header missing"))?;
    let claims = TokenVerifier::with_api_key(app.cfg.livekit_key(), app.cfg.livekit_secret())
        .verify(token)
        .map_err(|_| TwirpError::new(TwirpCode::Unauthenticated, "invalid token"))?;
    if !claims.sip.call {
        return Err(TwirpError::new(TwirpCode::Unauthenticated, "permissions denied: the token lacks the sip.call grant"));
    }
    let req: CreateSipParticipantRequest = match enc {
        Encoding::Protobuf => {
            use prost::Message;
            CreateSipParticipantRequest::decode(body).map_err(|e| TwirpError::new(TwirpCode::Malformed, format!("the protobuf request could not be decoded: {e}")))?
        }
        Encoding::Json => serde_json::from_slice(body).map_err(|e| TwirpError::new(TwirpCode::Malformed, format!("the json request could not be decoded: {e}")))?,
    };
    let dial = Dial::from_request(req, &app.cfg).inspect_err(|e| {
        if e.code == TwirpCode::PermissionDenied {
            app.metrics.control_refused.with_label_values(&["dial_not_allowed"]).inc();
            tracing::warn!("outbound call refused: destination not on DIAL_ALLOW");
        }
    })?;
    let slot = app.registry.begin_dial(Instant::now()).map_err(|why| match why {
        Refusal::Draining => TwirpError::new(TwirpCode::Unavailable, "the bridge is draining"),
        _ => TwirpError::new(TwirpCode::ResourceExhausted, "the bridge is at MAX_CALLS"),
    })?;
    let mut key_bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut key_bytes);
    let key: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    app.outbound.lock().insert(key.clone(), events_tx);
    let entry = OutboundEntry { app: app.clone(), key };
    let (tx, rx) = oneshot::channel();
    let span = tracing::info_span!("call", call_sid = tracing::field::Empty, direction = "outbound");
    // The call lives in its own task: a client that stops waiting does not end it.
    let wait = dial.ringing_timeout + CALLBACK_GRACE + STREAM_TIMEOUT + Duration::from_secs(15);
    tokio::spawn(dial_task(app.clone(), dial, slot, entry, events, tx, span.clone()).instrument(span));
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(r)) => r,
        _ => Err(TwirpError::new(TwirpCode::Internal, "the call ended without an answer")),
    }
}

/// Query of the URLs Twilio calls for this call: the description and the bridge's token over it.
fn callback_query(app: &App, dial: &Dial, key: &str) -> String {
    let info = dial.info(&app.cfg.twilio_account_sid);
    let expires = unix_now() + (dial.ringing_timeout + dial.max_duration + Duration::from_secs(3600)).as_secs();
    let token = proto::stream_token::mint(&app.stream_secret, &info.description(), expires, key);
    serde_urlencoded::to_string([
        ("room", dial.room.as_str()),
        ("identity", dial.identity.as_str()),
        ("from", dial.from.as_str()),
        ("to", dial.to.as_str()),
        ("ref", token.as_str()),
    ])
    .unwrap_or_default()
}

/// The `Calls.json` form.
fn rest_form(app: &App, dial: &Dial, query: &str) -> Vec<(&'static str, String)> {
    let url = |path: &str| format!("{}?{query}", app.cfg.http_url(path));
    let mut form = vec![
        ("To", dial.to.clone()),
        ("From", dial.from.clone()),
        ("Url", url("/outbound-call")),
        ("Method", "POST".into()),
        ("StatusCallback", url("/outbound-status")),
        ("StatusCallbackMethod", "POST".into()),
    ];
    for ev in ["initiated", "ringing", "answered", "completed"] {
        form.push(("StatusCallbackEvent", ev.into()));
    }
    form.push(("Timeout", dial.ringing_timeout.as_secs().max(1).to_string()));
    form.push(("TimeLimit", dial.max_duration.as_secs().max(1).to_string()));
    if let Some(mode) = dial.amd.twilio_value() {
        form.push(("MachineDetection", mode.into()));
        form.push(("AsyncAmd", "true".into()));
        form.push(("AsyncAmdStatusCallback", url("/outbound-amd")));
        form.push(("AsyncAmdStatusCallbackMethod", "POST".into()));
    }
    form
}

fn rest_error(e: &RestError) -> TwirpError {
    match e {
        // Twilio refused the request itself (a number not on the account, a bad destination).
        RestError::Status { status, .. } if (400..500).contains(status) => {
            TwirpError::new(TwirpCode::FailedPrecondition, format!("Twilio refused the call (HTTP {status})"))
        }
        _ => TwirpError::new(TwirpCode::Unavailable, "Twilio REST is unavailable"),
    }
}

/// Ends a call at Twilio, off the task's path.
pub(crate) fn end_at_twilio(app: &Arc<App>, call_sid: &str, answered: bool, span: &tracing::Span) {
    if call_sid.is_empty() {
        return;
    }
    let (app, sid) = (app.clone(), call_sid.to_owned());
    tokio::spawn(
        async move {
            let res = if answered { app.twilio.hangup(&sid).await } else { app.twilio.cancel(&sid).await };
            if let Err(e) = res {
                app.metrics.error("twilio_rest");
                tracing::error!(error = %e, "could not end the outbound call at Twilio");
            }
        }
        .instrument(span.clone()),
    );
}

/// The dialing task: joins the room as the phone (dialing), places the call, and follows it
/// until it is answered and its stream takes over, or it ends unanswered.
async fn dial_task(
    app: Arc<App>,
    dial: Dial,
    slot: DialSlot,
    entry: OutboundEntry,
    mut events: mpsc::Receiver<OutboundEvent>,
    reply: oneshot::Sender<Result<SipParticipantInfo, TwirpError>>,
    span: tracing::Span,
) {
    let account = app.cfg.twilio_account_sid.clone();
    let info = dial.info(&account);
    let mut joined = match join_room(&app, &span, &info, &dial.name, dial.attributes(&account)).await {
        Ok(j) => j,
        Err(why) => {
            tracing::error!(reason = %why, "outbound call: could not join the room");
            let _ = reply.send(Err(TwirpError::new(TwirpCode::Unavailable, "could not join the room")));
            return;
        }
    };
    if !dial.metadata.is_empty() {
        let _ = joined.room.set_metadata(dial.metadata.clone()).await;
    }
    let query = callback_query(&app, &dial, &entry.key);
    let call_sid = match app.twilio.create_call(&rest_form(&app, &dial, &query)).await {
        Ok(sid) => sid,
        Err(e) => {
            app.metrics.error("twilio_rest");
            tracing::error!(error = %e, to = %Masked(&dial.to), "outbound call: Twilio did not place it");
            let _ = reply.send(Err(rest_error(&e)));
            joined.leave_for_good(&app, &info).await;
            return;
        }
    };
    span.record("call_sid", call_sid.as_str());
    tracing::info!(to = %Masked(&dial.to), room = %dial.room, amd = ?dial.amd, "outbound call placed");
    let mut call = OutboundCall::new(OutboundConfig {
        wait_until_answered: dial.wait_until_answered,
        ringing_timeout: dial.ringing_timeout,
        callback_grace: CALLBACK_GRACE,
        stream_timeout: STREAM_TIMEOUT,
        dtmf: dial.dtmf.clone(),
        play_dialtone: dial.play_dialtone,
    });
    let mut reply = Some(PendingReply {
        tx: reply,
        info: SipParticipantInfo {
            participant_id: joined.room.local_participant().sid,
            participant_identity: dial.identity.clone(),
            room_name: dial.room.clone(),
            sip_call_id: call_sid.clone(),
        },
    });
    call.placed(&call_sid, &account, Instant::now());
    let mut end_all = app.registry.end_all_signal();
    let mut ringback: Option<proto::tones::Ringback> = None;
    let mut tick = tokio::time::interval(proto::pacer::FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Carry out what the call says.
        while let Some(out) = call.poll_output(Instant::now()) {
            match out {
                OutboundOutput::Attributes(a) => {
                    let a = a.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                    joined.send(&app, RoomSend::Attributes(a));
                }
                OutboundOutput::Reply(r) => {
                    if let Some(p) = reply.take() {
                        p.send(r);
                    }
                }
                OutboundOutput::Dialtone(on) => ringback = on.then(proto::tones::Ringback::new),
                OutboundOutput::Dtmf(_) => {} // only once streaming, after the hand-over
                OutboundOutput::EndTwilioCall { answered } => end_at_twilio(&app, &call_sid, answered, &span),
                OutboundOutput::End(how) => {
                    app.metrics.outbound.with_label_values(&[how.as_str()]).inc();
                    tracing::info!(outcome = how.as_str(), "outbound call not answered");
                }
            }
        }
        if call.is_ended() {
            break;
        }
        let wake = call.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = end_all.changed() => call.hangup(),
            ev = events.recv() => match ev {
                Some(OutboundEvent::Status(s)) => call.twilio_status(s, Instant::now()),
                Some(OutboundEvent::AnsweredBy(a)) => call.answered_by_result(a),
                Some(OutboundEvent::Takeover { call_sid: sid, reply: handoff }) => {
                    if sid != call_sid {
                        tracing::warn!("a stream claimed this outbound call with another CallSid: refused");
                        continue;
                    }
                    let h = Handoff { joined, call, slot, events, reply, entry, max_duration: dial.max_duration };
                    if let Err(h) = handoff.send(h) {
                        // The stream gave up waiting: the call is still ours to end.
                        let Handoff { joined, mut call, reply, .. } = h;
                        call.hangup();
                        finish_unanswered(&app, call, reply, &call_sid, &span, joined, &info).await;
                    }
                    return;
                }
                None => call.hangup(),
            },
            ev = joined.events.recv() => match ev {
                Some(room::RoomEvent::Disconnected(reason)) => {
                    if reason == room::DisconnectReason::Server(room::proto::DisconnectReason::DuplicateIdentity) {
                        // The call's stream started on another replica, which joined as this
                        // participant: the call is its now.
                        tracing::info!("outbound call taken over by another replica");
                        if let Some(p) = reply.take() {
                            p.send(Ok(()));
                        }
                        return;
                    }
                    tracing::warn!(?reason, "outbound call: the phone participant lost its room");
                    call.hangup();
                }
                None => call.hangup(),
                Some(_) => {}
            },
            _ = tick.tick(), if ringback.is_some() => {
                if let Some(r) = &mut ringback {
                    let _ = joined.sink.try_push_at(&r.next_frame(), Instant::now());
                }
            }
            _ = sleep_until(wake) => {}
        }
    }
    joined.leave_for_good(&app, &info).await;
    drop(slot); // last: the drain counts the call until it has left the room
}

/// A call that ended before its stream took it: carry out the machine's last words and leave.
async fn finish_unanswered(
    app: &Arc<App>,
    mut call: OutboundCall,
    mut reply: Option<PendingReply>,
    call_sid: &str,
    span: &tracing::Span,
    joined: Joined,
    info: &CallInfo,
) {
    while let Some(out) = call.poll_output(Instant::now()) {
        match out {
            OutboundOutput::Reply(r) => {
                if let Some(p) = reply.take() {
                    p.send(r);
                }
            }
            OutboundOutput::EndTwilioCall { answered } => end_at_twilio(app, call_sid, answered, span),
            _ => {}
        }
    }
    joined.leave_for_good(app, info).await;
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// What a Twilio request to one of the outbound URLs says about the call, checked: the
/// bridge's token over the call's description (from the query) must hold.
pub struct Callback {
    pub key: String,
    pub info: CallInfo,
}

/// Reads and checks the query of `/outbound-call`, `/outbound-status` and `/outbound-amd`.
pub fn callback_from(app: &App, uri: &Uri, call_sid: &str) -> Result<Callback, &'static str> {
    let q: HashMap<String, String> = serde_urlencoded::from_str(uri.query().unwrap_or("")).map_err(|_| "bad query")?;
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let mut info = CallInfo {
        call_sid: String::new(),
        account_sid: app.cfg.twilio_account_sid.clone(),
        from: get("from"),
        to: get("to"),
        room: get("room"),
        identity: get("identity"),
        direction: Direction::Outbound,
    };
    let claims = proto::stream_token::verify(&app.stream_secret, &get("ref"), &info.description(), unix_now()).map_err(|_| "bad ref")?;
    info.call_sid = call_sid.to_owned();
    Ok(Callback { key: claims.nonce, info })
}

/// The status a callback received on a replica that does not own the call puts on the phone
/// participant (through the server API), so the room sees it all the same.
fn remote_attributes(status: TwilioCallStatus) -> Option<&'static str> {
    match status {
        TwilioCallStatus::Ringing => Some(SipCallStatus::Ringing.as_str()),
        TwilioCallStatus::Busy
        | TwilioCallStatus::NoAnswer
        | TwilioCallStatus::Failed
        | TwilioCallStatus::Canceled
        | TwilioCallStatus::Completed => Some(SipCallStatus::Hangup.as_str()),
        _ => None,
    }
}

/// A status callback or an AMD result: to the task that owns the call, or — on a replica
/// that does not — straight onto the phone participant.
pub async fn deliver(app: &Arc<App>, cb: &Callback, status: Option<TwilioCallStatus>, amd: Option<AnsweredBy>) {
    if let Some(s) = status {
        if app.outbound.deliver(&cb.key, OutboundEvent::Status(s)).is_err() {
            if let Some(v) = remote_attributes(s) {
                set_remote(app, cb, ATTR_CALL_STATUS, v).await;
            }
        }
    }
    if let Some(a) = amd {
        if app.outbound.deliver(&cb.key, OutboundEvent::AnsweredBy(a)).is_err() {
            set_remote(app, cb, ATTR_ANSWERED_BY, a.as_str()).await;
        }
    }
}

async fn set_remote(app: &Arc<App>, cb: &Callback, key: &str, value: &str) {
    let attrs = HashMap::from([(key.to_owned(), value.to_owned())]);
    if let Err(e) = app.livekit.update_attributes(&cb.info.room, &cb.info.identity, attrs).await {
        tracing::debug!(error = %e, "could not update a phone participant owned elsewhere (it may have left)");
    }
}

/// The stream parameters of an outbound call's `<Connect><Stream>` (the stream token is added
/// by the caller).
pub fn stream_parameters(cb: &Callback) -> Vec<(String, String)> {
    vec![
        ("direction".into(), "outbound".into()),
        ("room".into(), cb.info.room.clone()),
        ("identity".into(), cb.info.identity.clone()),
        ("dial".into(), cb.key.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg(extra: &[&str]) -> crate::config::Config {
        let mut args = vec!["bridge", "--dial-allow", "+1555*", "--twilio-from-number", "+15550001111"];
        args.extend_from_slice(extra);
        crate::config::Cli::try_parse_from(args).unwrap().config
    }

    fn req() -> CreateSipParticipantRequest {
        CreateSipParticipantRequest { sip_call_to: "+15551234567".into(), room_name: "room-1".into(), ..Default::default() }
    }

    #[test]
    fn requests_are_checked_as_livekit_does_and_bounded() {
        let d = Dial::from_request(req(), &cfg(&[])).unwrap();
        assert_eq!((d.from.as_str(), d.identity.as_str()), ("+15550001111", "sip_+15551234567"));
        assert_eq!(d.amd, AmdMode::DetectMessageEnd);
        assert_eq!(d.ringing_timeout, Duration::from_secs(30));
        let code = |r: CreateSipParticipantRequest| Dial::from_request(r, &cfg(&[])).unwrap_err().code;
        assert_eq!(code(CreateSipParticipantRequest { sip_call_to: "+19005550100".into(), ..req() }), TwirpCode::PermissionDenied);
        assert_eq!(code(CreateSipParticipantRequest { sip_call_to: "sip:a@b".into(), ..req() }), TwirpCode::InvalidArgument);
        assert_eq!(code(CreateSipParticipantRequest { room_name: "".into(), ..req() }), TwirpCode::InvalidArgument);
        assert_eq!(code(CreateSipParticipantRequest { dtmf: "12x".into(), ..req() }), TwirpCode::InvalidArgument);
        assert_eq!(code(CreateSipParticipantRequest { participant_name: "n".repeat(300), ..req() }), TwirpCode::InvalidArgument);
        let many = (0..40).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert_eq!(code(CreateSipParticipantRequest { participant_attributes: many, ..req() }), TwirpCode::InvalidArgument);
        let no_from = crate::config::Cli::try_parse_from(["bridge", "--dial-allow", "+1555*"]).unwrap().config;
        assert_eq!(Dial::from_request(req(), &no_from).unwrap_err().code, TwirpCode::FailedPrecondition);
    }

    #[test]
    fn amd_header_durations_and_dialtone() {
        let mut r = req();
        r.headers.insert("x-twilio-machinedetection".into(), "Enable".into());
        r.ringing_timeout = Some(pbjson_types::Duration { seconds: 5000, nanos: 0 });
        r.max_call_duration = Some(pbjson_types::Duration { seconds: 120, nanos: 0 });
        r.play_dialtone = true;
        r.dtmf = "1w2".into();
        let d = Dial::from_request(r, &cfg(&["--outbound-amd", "off"])).unwrap();
        assert_eq!(d.amd, AmdMode::Enable);
        assert_eq!(d.ringing_timeout, MAX_RINGING, "Twilio rings at most 10 minutes");
        assert_eq!(d.max_duration, Duration::from_secs(120));
        assert!(d.play_dialtone);
        assert_eq!(d.dtmf.len(), 3);
        let mut r = req();
        r.headers.insert(AMD_HEADER.into(), "off".into());
        r.max_call_duration = Some(pbjson_types::Duration { seconds: 999_999, nanos: 0 });
        let d = Dial::from_request(r, &cfg(&[])).unwrap();
        assert_eq!(d.amd, AmdMode::Off);
        assert_eq!(d.max_duration, Duration::from_secs(4 * 3600), "never past MAX_CALL_DURATION");
    }

    #[test]
    fn hidden_numbers_stay_out_of_the_attributes() {
        let mut r = req();
        r.participant_attributes.insert("sip.callStatus".into(), "active".into());
        r.participant_attributes.insert("team".into(), "sales".into());
        let d = Dial::from_request(r.clone(), &cfg(&[])).unwrap();
        let a = d.attributes("AC1");
        assert_eq!(a["sip.callStatus"], "dialing", "ours win over the request's");
        assert_eq!(a["team"], "sales");
        assert_eq!(a["sip.phoneNumber"], "+15551234567");
        r.hide_phone_number = true;
        let a = Dial::from_request(r, &cfg(&[])).unwrap().attributes("AC1");
        assert!(!a.contains_key("sip.phoneNumber") && !a.contains_key("sip.trunkPhoneNumber"));
    }
}
