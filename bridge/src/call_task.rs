//! One task per call: the thin driver around `proto::call::CallSession` (media and control) and
//! `proto::watchdog::CallWatchdog` (the rules that make every call end). It reads the Twilio
//! socket, the room and the clock, feeds them, and carries out what they return.
//!
//! Every place a call holds comes back on every path: the registry's slots are guards, the room
//! is deleted by a guard if cleanup does not get to it (a panic), and cleanup itself is bounded
//! in time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};
use proto::call::{CallConfig, CallOutput, CallSession, ControlSender, EndReason};
use proto::control::CONTROL_TOPIC;
use proto::mixer::SourceId;
use proto::outbound::{OutboundCall, OutboundOutput, SipCallStatus, ATTR_CALL_STATUS};
use proto::recording::CallRecorder;
use proto::pacer::PacerConfig;
use proto::redact::Masked;
use proto::watchdog::{CallWatchdog, WatchdogAction, WatchdogConfig};
use room::{
    AudioCodec, AudioSink, AudioTrackOptions, DataPacketBuilder, ParticipantKind, PhoneAudio, Room, RoomError, RoomEvent, RoomOptions,
    SendLatencyObserver,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::PhoneCodec;
use crate::http::{unix_now, App};
use crate::livekit::{phone_attributes, phone_identity, room_name};
use crate::outbound::{Handoff, OutboundEntry, OutboundEvent, PendingReply};
use crate::recording::Recording;
use crate::registry::{ActivateRefusal, CallInfo, CallSlot, Direction, StreamSlot};

/// Twilio must send `start` this soon after the socket opens.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A Twilio socket that will not take a frame for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Cleanup (closing the socket, leaving and deleting the room) never takes longer than this.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Recorded audio goes to disk in chunks of about this much.
const RECORDING_CHUNK: Duration = Duration::from_millis(200);
/// The phone participant's attribute naming the call's recording (a path on the bridge's disk).
pub const ATTR_RECORDING: &str = "callbridge.recording";
/// Leaving waits at most this long for queued packets, and again for the `hangup` status.
const LEAVE_STEP: Duration = Duration::from_millis(500);
/// Control messages and DTMF packets waiting to be sent to the room.
const ROOM_SEND_QUEUE: usize = 64;

/// Room audio: (source, μ-law as it came or PCM at 8 kHz, when its packet came off the network).
type AudioIn = SelectAll<BoxStream<'static, (SourceId, PhoneAudio, Instant)>>;
/// Room packets waiting for the call task per track (~1 s).
const ROOM_AUDIO_QUEUE: usize = 50;

pub async fn run(app: Arc<App>, socket: WebSocket, slot: StreamSlot) {
    let span = tracing::info_span!("call", call_sid = tracing::field::Empty);
    let call = Call::new(app.clone(), socket, slot, span.clone());
    // A panic must not take the process's accounting with it: the guards inside `Call` give the
    // slot and the room back as it unwinds; here it is counted.
    if std::panic::AssertUnwindSafe(call.run().instrument(span)).catch_unwind().await.is_err() {
        app.metrics.error("call_panicked");
        tracing::error!("call task panicked; its slot and room were released");
    }
}

/// Deletes the call's room when dropped, unless cleanup already did: the room was created at
/// the webhook, so every way out of a call — refusal, failure, panic — must delete it.
struct RoomDeleter {
    app: Arc<App>,
    call_sid: String,
    armed: bool,
}

impl RoomDeleter {
    async fn delete_now(&mut self) {
        self.armed = false;
        if let Err(e) = self.app.livekit.delete_room(&self.call_sid).await {
            tracing::warn!(error = %e, "could not delete the room");
        }
    }
}

impl Drop for RoomDeleter {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (app, sid) = (self.app.clone(), self.call_sid.clone());
            rt.spawn(async move {
                let _ = app.livekit.delete_room(&sid).await;
            });
        }
    }
}

/// Something a background task (REST, room send) reports back to the call.
enum Background {
    /// The transfer request failed: the call stays with us.
    TransferFailed,
    /// The fallback is with Twilio (or could not be): end the stream.
    FallbackDone,
}

/// A packet for the room, sent by the call's sender task so the audio loop never waits on it.
pub(crate) enum RoomSend {
    Data(DataPacketBuilder),
    Dtmf { code: u32, digit: String },
    /// Our own attributes (`sip.callStatus`, …).
    Attributes(HashMap<String, String>),
}

/// An outbound call carried by this task (see `crate::outbound`).
struct OutboundState {
    call: OutboundCall,
    events: mpsc::Receiver<OutboundEvent>,
    reply: Option<PendingReply>,
    _entry: OutboundEntry,
}

/// The room side once joined, as the phone participant.
pub(crate) struct Joined {
    pub(crate) room: Room,
    pub(crate) events: mpsc::Receiver<RoomEvent>,
    pub(crate) sink: AudioSink,
    pub(crate) sends: mpsc::Sender<RoomSend>,
    /// The sender task, so leaving waits for what is queued.
    sender: tokio::task::JoinHandle<()>,
}

impl Joined {
    /// Queues a packet for the room's sender task; a full queue drops it (counted) rather than
    /// stall the caller's audio behind a room that is reconnecting.
    pub(crate) fn send(&self, app: &App, packet: RoomSend) {
        if self.sends.try_send(packet).is_err() {
            app.metrics.room_sends_dropped.inc();
        }
    }

    /// Sends what is queued, sets `sip.callStatus` to `hangup` and leaves (LiveKit SIP's last
    /// word on a call).
    pub(crate) async fn leave(self) {
        let Joined { room, sends, sender, .. } = self;
        let queued = sends.capacity() < sends.max_capacity();
        drop(sends);
        if queued {
            let _ = tokio::time::timeout(LEAVE_STEP, sender).await;
        }
        let hangup = HashMap::from([(ATTR_CALL_STATUS.to_owned(), SipCallStatus::Hangup.as_str().to_owned())]);
        let _ = tokio::time::timeout(LEAVE_STEP, room.set_attributes(hangup)).await;
        room.close().await;
    }

    /// [`leave`](Self::leave), then make sure the participant is gone from a room the bridge
    /// does not delete (an outbound call's): a leave that did not reach the server would
    /// otherwise leave the phone "in the room" for the server's reconnect window.
    pub(crate) async fn leave_for_good(self, app: &App, info: &CallInfo) {
        let sid = self.room.local_participant().sid;
        self.leave().await;
        if let Ok(Some(p)) = app.livekit.participant(&info.room, &info.identity).await {
            if p.sid == sid {
                app.metrics.error("leave_lost");
                if let Err(e) = app.livekit.remove_participant(&info.room, &info.identity).await {
                    tracing::debug!(error = %e, "could not remove the phone participant (it may have left)");
                }
            }
        }
    }
}

struct Call {
    app: Arc<App>,
    ws: WebSocket,
    span: tracing::Span,
    session: CallSession,
    /// Our place while waiting for `start`.
    stream_slot: Option<StreamSlot>,
    /// Our place once the call is active (and what the webhook said about it).
    call_slot: Option<CallSlot>,
    room_deleter: Option<RoomDeleter>,
    joined: Option<Joined>,
    /// An outbound call's state, callbacks and pending reply, once its stream took it over.
    outbound: Option<OutboundState>,
    /// `RECORDINGS_DIR`: the two channels as they become final, and their file.
    recording: Option<(CallRecorder, Recording)>,
    started_unix_ms: u128,
    watchdog: Option<CallWatchdog>,
    audio: AudioIn,
    /// Subscribed room tracks: track sid → (mixer source, publisher identity).
    sources: HashMap<String, (SourceId, String)>,
    next_source: u32,
    background_tx: mpsc::Sender<Background>,
    background_rx: mpsc::Receiver<Background>,
    /// The fallback is under way: the stream ends when it is done.
    falling_back: bool,
    /// When the last interrupt arrived, until its `clear` is written.
    interrupt_at: Option<Instant>,
    /// When the Twilio message being handled arrived (start of the inbound latency).
    ws_at: Option<Instant>,
    out_buf: String,
    opened: Instant,
    frames_out: u64,
    outcome: &'static str,
}

impl Call {
    fn new(app: Arc<App>, ws: WebSocket, slot: StreamSlot, span: tracing::Span) -> Call {
        let cfg = CallConfig {
            pacer: PacerConfig { lead: Duration::from_millis(app.cfg.pacer_lead_ms), ..Default::default() },
            transfer_allow: app.cfg.transfer_allow.clone(),
            ..Default::default()
        };
        let (background_tx, background_rx) = mpsc::channel(8);
        Call {
            app,
            ws,
            span,
            session: CallSession::new(cfg),
            stream_slot: Some(slot),
            call_slot: None,
            room_deleter: None,
            joined: None,
            outbound: None,
            recording: None,
            started_unix_ms: 0,
            watchdog: None,
            audio: SelectAll::new(),
            sources: HashMap::new(),
            next_source: 1,
            background_tx,
            background_rx,
            falling_back: false,
            interrupt_at: None,
            ws_at: None,
            out_buf: String::with_capacity(512),
            opened: Instant::now(),
            frames_out: 0,
            outcome: "failed",
        }
    }

    fn info(&self) -> Option<&CallInfo> {
        self.call_slot.as_ref().map(|s| &s.info)
    }

    async fn run(mut self) {
        let mut end_all = self.app.registry.end_all_signal();
        let start_deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let wake = earliest(
                earliest(self.session.poll_timeout(), self.watchdog.as_ref().and_then(|w| w.poll_timeout())),
                self.outbound.as_ref().and_then(|o| o.call.poll_timeout()),
            );
            let waiting_for_start = self.call_slot.is_none() && !self.session.is_ended();
            tokio::select! {
                biased;
                _ = end_all.changed() => self.session.end(EndReason::Driver("bridge shutting down".into())),
                msg = self.ws.recv() => self.on_ws(msg),
                Some(bg) = self.background_rx.recv() => self.on_background(bg),
                ev = recv_event(&mut self.joined) => self.on_room_event(ev),
                Some(ev) = recv_outbound(&mut self.outbound) => self.on_outbound_event(ev),
                Some((src, audio, received)) = self.audio.next(), if !self.audio.is_empty() => {
                    match &audio {
                        PhoneAudio::Ulaw(mulaw) => {
                            if self.session.handle_room_ulaw(src, mulaw, Instant::now()) {
                                self.app.metrics.ulaw_passed_through.inc();
                            }
                        }
                        PhoneAudio::Pcm(pcm) => self.session.handle_room_audio(src, pcm, Instant::now()),
                    }
                    // Packet off the network → decoded → queued for pacing (the pacer's wait excluded).
                    self.app.metrics.outbound_latency_seconds.observe(received.elapsed().as_secs_f64());
                }
                _ = sleep_until(wake.map(tokio::time::Instant::from_std)) => {}
                _ = tokio::time::sleep_until(start_deadline), if waiting_for_start => {
                    self.app.metrics.error("start_timeout");
                    self.session.end(EndReason::Driver("no start message".into()));
                }
            }
            self.poll_watchdog();
            self.poll_outbound();
            if !self.drain().await {
                break;
            }
        }
        match tokio::time::timeout(CLEANUP_TIMEOUT, self.cleanup()).await {
            Ok(()) => {}
            Err(_) => tracing::warn!("cleanup took longer than {CLEANUP_TIMEOUT:?}: abandoned (guards release the call)"),
        }
    }

    fn on_ws(&mut self, msg: Option<Result<Message, axum::Error>>) {
        let now = Instant::now();
        self.ws_at = Some(now);
        if let (Some(w), Some(Ok(_))) = (&mut self.watchdog, &msg) {
            w.twilio_message(now);
        }
        match msg {
            Some(Ok(Message::Text(text))) => {
                if let Err(e) = self.session.handle_twilio(text.as_str(), now) {
                    self.app.metrics.error("twilio_malformed");
                    tracing::warn!(error = %e, "malformed Twilio message");
                }
            }
            Some(Ok(Message::Binary(_))) => {
                self.app.metrics.error("twilio_binary_frame");
                tracing::warn!("binary frame on the Media Streams socket ignored");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None => self.session.end(EndReason::Driver("Twilio closed the stream".into())),
            Some(Err(e)) => {
                self.app.metrics.error("twilio_socket");
                self.session.end(EndReason::Driver(format!("Twilio socket error: {e}")));
            }
        }
    }

    fn on_background(&mut self, bg: Background) {
        match bg {
            Background::TransferFailed => self.session.transfer_failed(),
            Background::FallbackDone => self.session.end(EndReason::Driver("fallback".into())),
        }
    }

    fn on_room_event(&mut self, ev: Option<RoomEvent>) {
        let now = Instant::now();
        let Some(ev) = ev else {
            self.session.end(EndReason::Driver("room event stream ended".into()));
            return;
        };
        match ev {
            RoomEvent::TrackSubscribed { track, participant } => {
                // PCMU tracks come as they are (forwarded without decode), others decoded to 8 kHz.
                let Ok(stream) = track.phone_stream(ROOM_AUDIO_QUEUE) else {
                    self.app.metrics.error("room_stream");
                    return;
                };
                let src = SourceId(self.next_source);
                self.next_source += 1;
                self.sources.insert(track.sid().to_owned(), (src, participant.identity.clone()));
                tracing::info!(participant = %participant.identity, track = %track.sid(), "hearing room track");
                let frames = futures_util::stream::unfold(stream, |mut s| async move {
                    s.recv().await.map(|f| ((f.audio, f.received), s))
                })
                .map(move |(audio, received)| (src, audio, received));
                self.audio.push(frames.boxed());
                self.publishers_changed(now);
            }
            RoomEvent::TrackUnsubscribed { track_sid, .. } => {
                if let Some((src, _)) = self.sources.remove(&track_sid) {
                    self.session.remove_room_source(src);
                }
                self.publishers_changed(now);
            }
            RoomEvent::ParticipantDisconnected(p) => {
                let gone: Vec<String> =
                    self.sources.iter().filter(|(_, (_, who))| *who == p.identity).map(|(sid, _)| sid.clone()).collect();
                for sid in gone {
                    if let Some((src, _)) = self.sources.remove(&sid) {
                        self.session.remove_room_source(src);
                    }
                }
                self.publishers_changed(now);
            }
            RoomEvent::DataReceived(m) if m.topic.as_deref() == Some(CONTROL_TOPIC) => {
                let from = self.sender_kind(&m.participant_identity);
                let was_interrupts = self.session.stats().interrupts;
                match self.session.handle_control(&m.payload, from, now) {
                    Ok(()) if self.session.stats().interrupts > was_interrupts => self.interrupt_at = Some(now),
                    Ok(()) => {}
                    Err(e) => {
                        self.app.metrics.error("control_malformed");
                        tracing::warn!(from = %m.participant_identity, error = %e, "malformed control message");
                    }
                }
            }
            RoomEvent::DtmfReceived(d) => {
                // LiveKit SDKs' publish_dtmf: an agent pressing keys on the caller's line.
                let from = self.sender_kind(&d.participant_identity);
                self.session.handle_sip_dtmf(d.code, &d.digit, from, now);
            }
            RoomEvent::Disconnected(reason) => {
                self.session.end(EndReason::Driver(format!("left the room: {reason:?}")));
            }
            RoomEvent::Reconnecting { kind } => tracing::warn!(kind = kind.as_str(), "room connection lost; reconnecting"),
            RoomEvent::Reconnected { kind } => {
                tracing::info!(kind = kind.as_str(), "room connection back");
                self.app.metrics.room_reconnects.with_label_values(&[kind.as_str()]).inc();
            }
            _ => {}
        }
    }

    /// LiveKit's kind of the participant that sent a packet: only agents steer the call.
    fn sender_kind(&self, identity: &str) -> ControlSender {
        let Some(j) = &self.joined else { return ControlSender::Other };
        let is_agent = !identity.is_empty()
            && j.room.remote_participants().iter().any(|p| p.identity == identity && p.kind == ParticipantKind::Agent);
        if is_agent {
            ControlSender::Agent
        } else {
            ControlSender::Other
        }
    }

    fn publishers_changed(&mut self, now: Instant) {
        let mut who: Vec<&str> = self.sources.values().map(|(_, id)| id.as_str()).collect();
        who.sort_unstable();
        who.dedup();
        if let Some(w) = &mut self.watchdog {
            w.others_publishing(who.len(), now);
        }
    }

    /// Carries out what the watchdog says is due.
    fn poll_watchdog(&mut self) {
        let now = Instant::now();
        while let Some(action) = self.watchdog.as_mut().and_then(|w| w.poll(now)) {
            let Some(info) = self.info().cloned() else { return };
            match action {
                WatchdogAction::Redispatch => {
                    tracing::warn!("nobody in the room is talking to the caller: dispatching an agent again");
                    self.app.metrics.error("agent_redispatch");
                    let app = self.app.clone();
                    tokio::spawn(
                        async move {
                            if let Err(e) = app.livekit.redispatch(&info).await {
                                app.metrics.error("agent_redispatch_failed");
                                tracing::error!(error = %e, "agent dispatch failed");
                            }
                        }
                        .instrument(self.span.clone()),
                    );
                }
                WatchdogAction::Fallback(why) => {
                    tracing::warn!(reason = why.as_str(), "nobody to talk to: the caller gets the fallback");
                    self.outcome = match why {
                        proto::watchdog::FallbackReason::NoAgent => "fallback_no_agent",
                        proto::watchdog::FallbackReason::AgentLeft => "fallback_agent_left",
                    };
                    self.fall_back(&info);
                }
                WatchdogAction::Hangup(why) => {
                    tracing::warn!(reason = why.as_str(), "ending the call");
                    self.outcome = why.as_str();
                    self.rest_in_background(&info, None);
                    self.session.end(EndReason::Driver(why.as_str().into()));
                }
            }
        }
    }

    /// The stream is over: the outbound call's last words (its reply, ending it at Twilio).
    fn finish_outbound(&mut self) {
        let Some(o) = &mut self.outbound else { return };
        o.call.stream_ended();
        let sid = self.call_slot.as_ref().map(|s| s.info.call_sid.clone()).unwrap_or_default();
        while let Some(out) = o.call.poll_output(Instant::now()) {
            match out {
                OutboundOutput::Reply(r) => {
                    if let Some(p) = o.reply.take() {
                        p.send(r);
                    }
                }
                OutboundOutput::EndTwilioCall { answered } => crate::outbound::end_at_twilio(&self.app, &sid, answered, &self.span),
                OutboundOutput::End(how) => {
                    self.app.metrics.outbound.with_label_values(&[how.as_str()]).inc();
                }
                _ => {}
            }
        }
        self.outbound = None;
    }

    fn on_outbound_event(&mut self, ev: OutboundEvent) {
        let Some(o) = &mut self.outbound else { return };
        match ev {
            OutboundEvent::Status(s) => o.call.twilio_status(s, Instant::now()),
            OutboundEvent::AnsweredBy(a) => {
                tracing::info!(answered_by = a.as_str(), "answering machine detection");
                o.call.answered_by_result(a);
            }
            // Already taken over (a second stream for this call): nothing to hand.
            OutboundEvent::Takeover { .. } => {}
        }
    }

    /// Carries out what the outbound call's state machine says.
    fn poll_outbound(&mut self) {
        let now = Instant::now();
        loop {
            let Some(o) = &mut self.outbound else { return };
            let Some(out) = o.call.poll_output(now) else { return };
            match out {
                OutboundOutput::Attributes(a) => {
                    self.send_to_room(RoomSend::Attributes(a.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
                }
                OutboundOutput::Reply(r) => {
                    if let Some(p) = o.reply.take() {
                        p.send(r);
                    }
                }
                OutboundOutput::Dtmf(presses) => {
                    if let Err(e) = self.session.send_dtmf(&presses, now) {
                        tracing::warn!(error = %e, "the request's dtmf keys were not played");
                    }
                }
                OutboundOutput::EndTwilioCall { answered } => {
                    let sid = self.info().map(|i| i.call_sid.clone()).unwrap_or_default();
                    crate::outbound::end_at_twilio(&self.app, &sid, answered, &self.span);
                }
                OutboundOutput::End(how) => {
                    self.session.end(EndReason::Driver(format!("outbound call {}", how.as_str())));
                }
                OutboundOutput::Dialtone(_) => {}
            }
        }
    }

    /// The caller hears the fallback: the call's TwiML is replaced through Twilio's REST API
    /// (the stream ends when Twilio has it, or when the request fails — the call ends then).
    fn fall_back(&mut self, info: &CallInfo) {
        if self.falling_back {
            return;
        }
        self.falling_back = true;
        let app = self.app.clone();
        let sid = info.call_sid.clone();
        let done = self.background_tx.clone();
        tokio::spawn(
            async move {
                if let Err(e) = app.twilio.redirect(&sid, &app.fallback_twiml()).await {
                    app.metrics.error("twilio_rest");
                    tracing::error!(error = %e, "Twilio REST fallback failed: ending the stream");
                }
                let _ = done.send(Background::FallbackDone).await;
            }
            .instrument(self.span.clone()),
        );
    }

    /// Carries out everything the session has to say. False once the call is over.
    async fn drain(&mut self) -> bool {
        loop {
            let now = Instant::now();
            let Some(out) = self.session.poll_output(now) else { break };
            match out {
                CallOutput::Start(start) => self.start(*start).await,
                CallOutput::TwilioMedia(frame) => {
                    if let Some((r, _)) = &mut self.recording {
                        r.played(&frame, now);
                    }
                    self.out_buf.clear();
                    proto::twilio::write_media_json(self.session.stream_sid(), &frame, &mut self.out_buf);
                    self.frames_out += 1;
                    self.send_text().await;
                }
                CallOutput::TwilioMark(id) => {
                    self.out_buf.clear();
                    proto::twilio::write_mark_json(self.session.stream_sid(), &id.to_string(), &mut self.out_buf);
                    self.send_text().await;
                }
                CallOutput::TwilioClear => {
                    if let Some((r, _)) = &mut self.recording {
                        r.cleared(now);
                    }
                    self.out_buf.clear();
                    proto::twilio::write_clear_json(self.session.stream_sid(), &mut self.out_buf);
                    self.send_text().await;
                    if let Some(t) = self.interrupt_at.take() {
                        self.app.metrics.interrupt_to_clear_seconds.observe(t.elapsed().as_secs_f64());
                    }
                }
                CallOutput::CallerAudio { mulaw, .. } => {
                    if let Some((r, _)) = &mut self.recording {
                        r.caller(&CallOutput::caller_pcm(&mulaw));
                    }
                    // Frames of a Twilio message date from its arrival; gap fill from now.
                    let captured = self.ws_at.take().unwrap_or(now);
                    if let Some(j) = &mut self.joined {
                        // PCMU: the bytes as Twilio sent them; Opus: decoded and encoded. Never
                        // wait on the room: a full queue drops the frame (and counts it).
                        let _ = j.sink.try_push_ulaw_at(&mulaw, captured);
                    }
                }
                CallOutput::Control(c) => self.send_to_room(RoomSend::Data(DataPacketBuilder::new(c.to_bytes()).topic(CONTROL_TOPIC))),
                CallOutput::SipDtmf(digit) => {
                    if let Some(code) = digit.chars().next().filter(|_| digit.len() == 1).and_then(|c| proto::dtmf::code_of(c).ok()) {
                        self.send_to_room(RoomSend::Dtmf { code, digit });
                    }
                }
                CallOutput::Hangup { reason } => {
                    tracing::info!(reason = reason.as_deref().unwrap_or(""), "agent hung up");
                    self.outcome = "completed";
                    if let Some(info) = self.info().cloned() {
                        self.rest_in_background(&info, None);
                    }
                    // Closing the stream ends `<Connect>`, which also ends the call if REST fails.
                    self.session.end(EndReason::Driver("agent hung up".into()));
                }
                CallOutput::Transfer { to } => {
                    tracing::info!(to = %Masked(&to), "agent transferred the call");
                    if let Some(info) = self.info().cloned() {
                        self.rest_in_background(&info, Some(proto::twiml::dial_number(&to, None)));
                    }
                }
                CallOutput::ControlRefused { command, reason } => {
                    self.app.metrics.control_refused.with_label_values(&[reason.as_str()]).inc();
                    tracing::warn!(command, reason = reason.as_str(), "control command refused; the call goes on");
                }
                CallOutput::MarkEchoed { rtt } => self.app.metrics.mark_rtt_seconds.observe(rtt.as_secs_f64()),
                CallOutput::End(reason) => {
                    tracing::info!(?reason, "call ending");
                    return false;
                }
            }
        }
        self.ws_at = None;
        if let Some((r, file)) = &mut self.recording {
            if let Some(chunk) = r.poll(Instant::now(), RECORDING_CHUNK) {
                file.write(chunk);
            }
        }
        !self.session.is_ended()
    }

    async fn send_text(&mut self) {
        let msg = Message::Text(self.out_buf.as_str().into());
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.session.end(EndReason::Driver(format!("Twilio socket write failed: {e}"))),
            Err(_) => {
                self.app.metrics.error("twilio_slow_peer");
                self.session.end(EndReason::Driver("Twilio socket stalled".into()));
            }
        }
    }

    fn send_to_room(&self, packet: RoomSend) {
        if let Some(j) = &self.joined {
            j.send(&self.app, packet);
        }
    }

    /// Hang-up (`twiml: None`) or transfer through Twilio's REST API, off the media path.
    fn rest_in_background(&self, info: &CallInfo, twiml: Option<String>) {
        let app = self.app.clone();
        let sid = info.call_sid.clone();
        let report = self.background_tx.clone();
        tokio::spawn(
            async move {
                let res = match &twiml {
                    None => app.twilio.hangup(&sid).await,
                    Some(t) => app.twilio.redirect(&sid, t).await,
                };
                if let Err(e) = res {
                    app.metrics.error("twilio_rest");
                    tracing::error!(error = %e, "Twilio REST call failed");
                    if twiml.is_some() {
                        let _ = report.send(Background::TransferFailed).await;
                    }
                }
            }
            .instrument(self.span.clone()),
        );
    }

    /// `start`: check the one-time token, then join the call's room as the phone. A refusal
    /// ends the stream; a failure after the token was good gives the caller the fallback. The
    /// webhook may have been answered by another replica: the token vouches for the call's
    /// description, which comes back with it in the custom parameters. An outbound call this
    /// replica is dialling is taken over with its room connection (the phone never leaves the
    /// room); one dialled elsewhere joins as its participant, which replaces the other's.
    async fn start(&mut self, start: proto::twilio::StreamStart) {
        let call_sid = start.call_sid.clone();
        self.span.record("call_sid", call_sid.as_str());
        let param = |k: &str| start.custom_parameters.get(k).cloned().unwrap_or_default();
        let or = |v: String, default: String| if v.is_empty() { default } else { v };
        let account_sid = or(param("accountSid"), start.account_sid.clone());
        let outbound = param("direction") == "outbound";
        let info = CallInfo {
            call_sid: call_sid.clone(),
            account_sid,
            from: param("from"),
            to: param("to"),
            room: or(param("room"), room_name(&call_sid)),
            identity: or(param("identity"), phone_identity(&call_sid)),
            direction: if outbound { Direction::Outbound } else { Direction::Inbound },
        };
        let token = param("token");
        let claims = match proto::stream_token::verify(&self.app.stream_secret, &token, &info.description(), unix_now()) {
            Ok(c) => c,
            Err(e) => {
                self.app.metrics.error("stream_token_invalid");
                tracing::warn!(reason = %e, "stream refused: stream token");
                self.session.end(EndReason::Driver(format!("stream token: {e}")));
                return;
            }
        };
        let handoff = if outbound { self.app.outbound.take_over(&param("dial"), &call_sid).await } else { None };
        let mut max_duration = self.app.cfg.max_call_duration;
        let mut taken: Option<Joined> = None;
        let activated = match handoff {
            Some(h) => {
                let Handoff { joined, call, slot, events, reply, entry, max_duration: d } = h;
                max_duration = d;
                self.outbound = Some(OutboundState { call, events, reply, _entry: entry });
                taken = Some(joined);
                self.app.registry.activate_dialed(info, slot, Instant::now())
            }
            None => self.app.registry.activate(info, &claims.nonce, Instant::now()),
        };
        let slot = match activated {
            Ok(slot) => slot,
            Err(why) => {
                let kind = match why {
                    ActivateRefusal::AlreadyStreamed => "stream_token_reused",
                    ActivateRefusal::Full | ActivateRefusal::Draining => "stream_refused_full",
                };
                self.app.metrics.error(kind);
                tracing::warn!(reason = ?why, "stream refused");
                if let Some(o) = &mut self.outbound {
                    o.call.hangup();
                }
                self.joined = taken;
                self.session.end(EndReason::Driver(format!("stream refused: {why:?}")));
                return;
            }
        };
        // One stream per call across every replica.
        let ttl = max_duration + Duration::from_secs(300);
        match self.app.shared.claim_stream(&self.app.livekit, &slot.info, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                self.app.metrics.error("stream_token_reused");
                tracing::warn!("stream refused: this call already streams on another replica");
                self.session.end(EndReason::Driver("stream already claimed".into()));
                return; // the slot drops; the room belongs to the live stream
            }
            Err(e) => {
                self.app.metrics.error("shared_state");
                tracing::error!(error = %e, "shared state unavailable: the caller gets the fallback");
                let info = slot.info.clone();
                self.call_slot = Some(slot);
                self.stream_slot = None;
                self.joined = taken;
                self.outcome = "room_failed";
                self.fall_back(&info);
                return;
            }
        }
        self.stream_slot = None;
        let info = slot.info.clone();
        self.call_slot = Some(slot);
        if info.direction == Direction::Inbound {
            // Rooms of inbound calls are the bridge's; an outbound call's room is its caller's.
            self.room_deleter = Some(RoomDeleter { app: self.app.clone(), call_sid: call_sid.clone(), armed: true });
        }
        self.app.metrics.active_calls.set(self.app.registry.active_count() as i64);
        let joined = match taken {
            Some(j) => Ok(j),
            None => {
                let (name, attributes) = Self::phone_participant(&self.app, &info).await;
                join_room(&self.app, &self.span, &info, &name, attributes).await
            }
        };
        match joined {
            Ok(joined) => {
                self.app.metrics.setup_seconds.observe(self.opened.elapsed().as_secs_f64());
                tracing::info!(room = %info.room, identity = %Masked(&info.identity), direction = ?info.direction, "caller joined the room");
                self.joined = Some(joined);
                let wd = WatchdogConfig {
                    agent_join_timeout: self.app.cfg.agent_join_timeout,
                    media_timeout: self.app.cfg.media_timeout,
                    max_duration,
                };
                self.watchdog = Some(CallWatchdog::new(wd, Instant::now()));
                self.start_recording(&info);
                if let Some(o) = &mut self.outbound {
                    o.call.stream_started(Instant::now());
                }
                self.outcome = "completed";
            }
            Err(why) => {
                tracing::error!(reason = %why, "could not join the room: the caller gets the fallback");
                self.outcome = "room_failed";
                self.fall_back(&info);
            }
        }
    }

    /// `RECORDINGS_DIR`: opens the call's WAV and record, and names it to the room.
    fn start_recording(&mut self, info: &CallInfo) {
        let Some(dir) = &self.app.cfg.recordings_dir else { return };
        self.started_unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        match Recording::start(dir, &info.call_sid, self.record(info, None)) {
            Ok(file) => {
                let path = file.path.display().to_string();
                self.send_to_room(RoomSend::Attributes(HashMap::from([(ATTR_RECORDING.to_owned(), path)])));
                self.recording = Some((CallRecorder::new(Instant::now()), file));
            }
            Err(e) => {
                self.app.metrics.error("recording");
                tracing::error!(error = %e, "cannot record this call; it goes on unrecorded");
            }
        }
    }

    /// The call's record beside its WAV: what the agent's call record links to.
    fn record(&self, info: &CallInfo, end: Option<(&proto::recording::RecordingStats, u64)>) -> serde_json::Value {
        let stats = self.session.stats();
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let mut v = serde_json::json!({
            "call_sid": info.call_sid,
            "direction": match info.direction { Direction::Inbound => "inbound", Direction::Outbound => "outbound" },
            "room": info.room,
            "identity": info.identity,
            "wav": format!("{}.wav", info.call_sid),
            "channels": {"left": "caller", "right": "heard by the caller"},
            "started_unix_ms": self.started_unix_ms as u64,
            "complete": end.is_some(),
        });
        if let Some((rec, dropped_chunks)) = end {
            v["ended_unix_ms"] = serde_json::json!(now_ms as u64);
            v["outcome"] = serde_json::json!(self.outcome);
            v["recording"] = serde_json::to_value(rec).unwrap_or_default();
            v["recording"]["dropped_chunks"] = serde_json::json!(dropped_chunks);
            v["pacer"] = serde_json::json!({
                "underruns": stats.pacer.underruns,
                "frames_sent": stats.pacer.frames_sent,
                "clears": stats.pacer.clears,
                "marks_expired": stats.pacer.marks_expired,
                "overflow_bytes": stats.pacer.overflow_bytes,
            });
            v["inbound"] = serde_json::json!({
                "frames": stats.frames_in,
                "filled_frames": stats.inbound.filled_frames,
                "gaps": stats.inbound.gaps,
                "late_chunks": stats.inbound.late_chunks,
                "resyncs": stats.inbound.resyncs,
            });
            v["interrupts"] = serde_json::json!(stats.interrupts);
            v["dtmf_keys_played"] = serde_json::json!(stats.dtmf_keys_played);
        }
        v
    }

    /// Name and attributes the phone joins with: an inbound caller's number and LiveKit SIP's
    /// attributes, or — for an outbound call dialled by another replica — what its
    /// participant already shows in the room.
    async fn phone_participant(app: &App, info: &CallInfo) -> (String, HashMap<String, String>) {
        let mut attributes = phone_attributes(info, SipCallStatus::Active.as_str());
        let mut name = info.remote_number().to_owned();
        if info.direction == Direction::Outbound {
            if let Ok(Some(p)) = app.livekit.participant(&info.room, &info.identity).await {
                name = p.name;
                for (k, v) in p.attributes {
                    attributes.entry(k).or_insert(v);
                }
            }
        }
        (name, attributes)
    }

    async fn cleanup(mut self) {
        self.finish_outbound();
        if let Some((mut r, file)) = self.recording.take() {
            let last = r.finish(Instant::now());
            let dropped = file.dropped();
            if let Some(info) = self.info().cloned() {
                let record = self.record(&info, Some((r.stats(), dropped)));
                file.finish(last, record);
            }
        }
        let stats = self.session.stats();
        let m = &self.app.metrics;
        m.frames_in.inc_by(stats.frames_in);
        m.frames_out.inc_by(self.frames_out);
        m.inbound_gap_frames.inc_by(stats.inbound.filled_frames);
        m.outbound_underruns.inc_by(stats.pacer.underruns);
        let close = Message::Close(Some(CloseFrame { code: 1000, reason: "call ended".into() }));
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.ws.send(close)).await;
        if let Some(j) = self.joined.take() {
            let sink = j.sink.stats();
            tracing::info!(
                encoded = sink.frames_encoded.load(std::sync::atomic::Ordering::Relaxed),
                dropped = sink.frames_dropped.load(std::sync::atomic::Ordering::Relaxed),
                dtx = sink.frames_dtx.load(std::sync::atomic::Ordering::Relaxed),
                "caller track"
            );
            match self.call_slot.as_ref().map(|s| &s.info).filter(|i| i.direction == Direction::Outbound) {
                Some(info) => j.leave_for_good(&self.app, info).await,
                None => j.leave().await, // the room is deleted next
            }
        }
        if let Some(d) = &mut self.room_deleter {
            d.delete_now().await;
        }
        let started = self.call_slot.is_some();
        m.calls.with_label_values(&[if started { self.outcome } else { "failed" }]).inc();
        // The slot goes last: /health and the drain count the call until its room is gone and
        // its outcome counted.
        self.call_slot = None;
        m.active_calls.set(self.app.registry.active_count() as i64);
        tracing::info!(
            outcome = if started { self.outcome } else { "failed" },
            frames_in = stats.frames_in,
            frames_out = self.frames_out,
            gaps = stats.inbound.filled_frames,
            underruns = stats.pacer.underruns,
            interrupts = stats.interrupts,
            twilio_malformed = stats.twilio_malformed,
            control_refused = stats.control_refused,
            "call ended"
        );
    }
}

/// Joins the call's room as the phone (named and with these attributes) and publishes the
/// caller's track.
pub(crate) async fn join_room(
    app: &Arc<App>,
    span: &tracing::Span,
    info: &CallInfo,
    name: &str,
    attributes: HashMap<String, String>,
) -> Result<Joined, String> {
    let jwt = app.livekit.phone_token(info, name, attributes).map_err(|e| format!("token: {e}"))?;
    let (room, events) = Room::connect(app.livekit.url(), &jwt, RoomOptions::default()).await.map_err(|e| {
        app.metrics.error("room_join_failed");
        format!("joining the room: {e}")
    })?;
    let codec = match app.cfg.phone_codec {
        PhoneCodec::Auto if room.publish_codec_enabled(AudioCodec::Pcmu) => AudioCodec::Pcmu,
        PhoneCodec::Pcmu => AudioCodec::Pcmu,
        PhoneCodec::Auto | PhoneCodec::Opus => AudioCodec::Opus,
    };
    let options = AudioTrackOptions {
        name: "phone".into(),
        sample_rate: 8_000,
        codec,
        complexity: app.cfg.opus_complexity,
        dtx: app.cfg.opus_dtx,
        on_sent: Some(SendLatencyObserver(Arc::new({
            let h = app.metrics.inbound_latency_seconds.clone();
            move |d| h.observe(d.as_secs_f64())
        }))),
        ..Default::default()
    };
    let sink = match room.publish_audio(options.clone()).await {
        // PHONE_CODEC=pcmu on a server that lists its codecs without PCMU: Opus it is.
        Err(RoomError::CodecNotEnabled(_)) => {
            tracing::warn!("the server does not enable PCMU: the caller's track is Opus");
            room.publish_audio(AudioTrackOptions { codec: AudioCodec::Opus, ..options }).await
        }
        other => other,
    };
    let sink = match sink {
        Ok(s) => {
            let label = if s.codec() == AudioCodec::Pcmu { "pcmu" } else { "opus" };
            app.metrics.phone_tracks.with_label_values(&[label]).inc();
            tracing::debug!(codec = label, "caller's track published");
            s
        }
        Err(e) => {
            app.metrics.error("room_publish_failed");
            room.close().await;
            return Err(format!("publishing audio: {e}"));
        }
    };
    let (sends, queue) = mpsc::channel(ROOM_SEND_QUEUE);
    let sender = tokio::spawn(send_to_room(room.clone(), queue, app.clone()).instrument(span.clone()));
    Ok(Joined { room, events, sink, sends, sender })
}

/// The call's sender task: control messages, DTMF and attributes to the room, in order,
/// waiting as long as the room needs (a reconnect) without holding up the call's audio.
async fn send_to_room(room: Room, mut queue: mpsc::Receiver<RoomSend>, app: Arc<App>) {
    while let Some(p) = queue.recv().await {
        let res = match p {
            RoomSend::Data(packet) => room.send_data(packet).await,
            RoomSend::Dtmf { code, digit } => room.send_dtmf(code, &digit, vec![]).await,
            RoomSend::Attributes(a) => room.set_attributes(a).await,
        };
        if let Err(e) = res {
            app.metrics.error("room_data");
            tracing::warn!(error = %e, "could not send to the room");
        }
    }
}

async fn recv_event(joined: &mut Option<Joined>) -> Option<RoomEvent> {
    match joined {
        Some(j) => j.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_outbound(o: &mut Option<OutboundState>) -> Option<OutboundEvent> {
    match o {
        Some(o) => o.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

