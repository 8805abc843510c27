//! One task per call: the thin driver around `proto::call::CallSession`. It reads the Twilio
//! socket, the room and the clock, feeds the session, and carries out what it returns.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{BoxStream, SelectAll};
use futures_util::StreamExt;
use proto::call::{CallConfig, CallOutput, CallSession, EndReason};
use proto::control::CONTROL_TOPIC;
use proto::mixer::SourceId;
use proto::pacer::PacerConfig;
use room::{AudioSink, AudioTrackOptions, DataPacketBuilder, Room, RoomEvent, RoomOptions, SendLatencyObserver};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::http::{unix_now, App};
use crate::livekit::phone_identity;
use crate::registry::CallInfo;

/// Twilio must send `start` this soon after the socket opens.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A Twilio socket that will not take a frame for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Room audio: (source, PCM at 8 kHz, when its packet came off the network).
type AudioIn = SelectAll<BoxStream<'static, (SourceId, Vec<i16>, Instant)>>;

pub async fn run(app: Arc<App>, socket: WebSocket) {
    let span = tracing::info_span!("call", call_sid = tracing::field::Empty);
    Call::new(app, socket, span.clone()).run().instrument(span).await
}

/// The room side once joined.
struct Joined {
    room: Room,
    events: mpsc::Receiver<RoomEvent>,
    sink: AudioSink,
    info: CallInfo,
}

struct Call {
    app: Arc<App>,
    ws: WebSocket,
    span: tracing::Span,
    session: CallSession,
    joined: Option<Joined>,
    audio: AudioIn,
    sources: HashMap<String, SourceId>,
    next_source: u32,
    /// When the last interrupt arrived, until its `clear` is written.
    interrupt_at: Option<Instant>,
    /// When the Twilio message being handled arrived (start of the inbound latency).
    ws_at: Option<Instant>,
    out_buf: String,
    opened: Instant,
    frames_out: u64,
}

impl Call {
    fn new(app: Arc<App>, ws: WebSocket, span: tracing::Span) -> Call {
        let cfg = CallConfig {
            pacer: PacerConfig { lead: Duration::from_millis(app.cfg.pacer_lead_ms), ..Default::default() },
            ..Default::default()
        };
        Call {
            app,
            ws,
            span,
            session: CallSession::new(cfg),
            joined: None,
            audio: SelectAll::new(),
            sources: HashMap::new(),
            next_source: 1,
            interrupt_at: None,
            ws_at: None,
            out_buf: String::with_capacity(512),
            opened: Instant::now(),
            frames_out: 0,
        }
    }

    async fn run(mut self) {
        let mut end_all = self.app.registry.end_all_signal();
        let start_deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let wake = self.session.poll_timeout().map(tokio::time::Instant::from_std);
            let waiting_for_start = self.joined.is_none() && !self.session.is_ended();
            tokio::select! {
                biased;
                _ = end_all.changed() => self.session.end(EndReason::Driver("bridge shutting down".into())),
                msg = self.ws.recv() => self.on_ws(msg),
                ev = recv_event(&mut self.joined) => self.on_room_event(ev).await,
                Some((src, pcm, received)) = self.audio.next(), if !self.audio.is_empty() => {
                    self.session.handle_room_audio(src, &pcm, Instant::now());
                    // Packet off the network → decoded → queued for pacing (the pacer's wait excluded).
                    self.app.metrics.outbound_latency_seconds.observe(received.elapsed().as_secs_f64());
                }
                _ = sleep_until(wake) => {}
                _ = tokio::time::sleep_until(start_deadline), if waiting_for_start => {
                    self.app.metrics.error("start_timeout");
                    self.session.end(EndReason::Driver("no start message".into()));
                }
            }
            if !self.drain().await {
                break;
            }
        }
        self.cleanup().await;
    }

    fn on_ws(&mut self, msg: Option<Result<Message, axum::Error>>) {
        let now = Instant::now();
        self.ws_at = Some(now);
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

    async fn on_room_event(&mut self, ev: Option<RoomEvent>) {
        let now = Instant::now();
        let Some(ev) = ev else {
            self.session.end(EndReason::Driver("room event stream ended".into()));
            return;
        };
        match ev {
            RoomEvent::TrackSubscribed { track, participant } => {
                let Ok(stream) = track.stream(8_000) else {
                    self.app.metrics.error("room_stream");
                    return;
                };
                let src = SourceId(self.next_source);
                self.next_source += 1;
                self.sources.insert(track.sid().to_owned(), src);
                tracing::info!(participant = %participant.identity, track = %track.sid(), "hearing room track");
                let frames = futures_util::stream::unfold(stream, |mut s| async move {
                    s.recv().await.map(|f| ((f.samples, f.received), s))
                })
                .map(move |(pcm, received)| (src, pcm, received));
                self.audio.push(frames.boxed());
            }
            RoomEvent::TrackUnsubscribed { track_sid, .. } => {
                if let Some(src) = self.sources.remove(&track_sid) {
                    self.session.remove_room_source(src);
                }
            }
            RoomEvent::DataReceived(m) if m.topic.as_deref() == Some(CONTROL_TOPIC) => {
                let was_interrupts = self.session.stats().interrupts;
                match self.session.handle_control(&m.payload, now) {
                    Ok(()) if self.session.stats().interrupts > was_interrupts => self.interrupt_at = Some(now),
                    Ok(()) => {}
                    Err(e) => {
                        self.app.metrics.error("control_malformed");
                        tracing::warn!(from = %m.participant_identity, error = %e, "malformed control message");
                    }
                }
            }
            RoomEvent::Disconnected(reason) => {
                self.session.end(EndReason::Driver(format!("left the room: {reason:?}")));
            }
            _ => {}
        }
    }

    /// Carries out everything the session has to say. False once the call is over.
    async fn drain(&mut self) -> bool {
        loop {
            let now = Instant::now();
            let Some(out) = self.session.poll_output(now) else { break };
            match out {
                CallOutput::Start(start) => {
                    if let Err(why) = self.start(*start).await {
                        tracing::warn!(reason = %why, "stream refused");
                        self.session.end(EndReason::Driver(why));
                    }
                }
                CallOutput::TwilioMedia(frame) => {
                    self.out_buf.clear();
                    proto::twilio::write_media_json(self.session.stream_sid(), &frame, &mut self.out_buf);
                    self.frames_out += 1;
                    self.send_text().await;
                }
                CallOutput::TwilioMark(id) => {
                    self.out_buf.clear();
                    let _ = write!(self.out_buf, r#"{{"event":"mark","streamSid":"{}","mark":{{"name":"{id}"}}}}"#, self.session.stream_sid());
                    self.send_text().await;
                }
                CallOutput::TwilioClear => {
                    self.out_buf.clear();
                    let _ = write!(self.out_buf, r#"{{"event":"clear","streamSid":"{}"}}"#, self.session.stream_sid());
                    self.send_text().await;
                    if let Some(t) = self.interrupt_at.take() {
                        self.app.metrics.interrupt_to_clear_seconds.observe(t.elapsed().as_secs_f64());
                    }
                }
                CallOutput::CallerAudio { pcm, .. } => {
                    // Frames of a Twilio message date from its arrival; gap fill from now.
                    let captured = self.ws_at.take().unwrap_or(now);
                    if let Some(j) = &mut self.joined {
                        // Never wait on the room: a full queue drops the frame (and counts it).
                        let _ = j.sink.try_push_at(&pcm, captured);
                    }
                }
                CallOutput::Control(c) => self.publish(DataPacketBuilder::new(c.to_bytes()).topic(CONTROL_TOPIC)).await,
                CallOutput::SipDtmf(digit) => {
                    if let (Some(j), Some(code)) = (&self.joined, dtmf_code(&digit)) {
                        if let Err(e) = j.room.send_dtmf(code, &digit, vec![]).await {
                            tracing::warn!(error = %e, "could not publish DTMF");
                        }
                    }
                }
                CallOutput::Hangup { reason } => {
                    tracing::info!(reason = reason.as_deref().unwrap_or(""), "agent hung up");
                    self.rest_in_background(None);
                    // Closing the stream ends `<Connect>`, which also ends the call if REST fails.
                    self.session.end(EndReason::Driver("agent hung up".into()));
                }
                CallOutput::Transfer { to } => {
                    tracing::info!(to = %to, "agent transferred the call");
                    self.rest_in_background(Some(proto::twiml::dial_number(&to, None)));
                }
                CallOutput::MarkEchoed { rtt } => self.app.metrics.mark_rtt_seconds.observe(rtt.as_secs_f64()),
                CallOutput::End(reason) => {
                    tracing::info!(?reason, "call ending");
                    return false;
                }
            }
        }
        self.ws_at = None;
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

    async fn publish(&mut self, packet: DataPacketBuilder) {
        if let Some(j) = &self.joined {
            if let Err(e) = j.room.send_data(packet).await {
                self.app.metrics.error("room_data");
                tracing::warn!(error = %e, "could not publish a control message");
            }
        }
    }

    /// Hang-up (`twiml: None`) or transfer through Twilio's REST API, off the media path.
    fn rest_in_background(&self, twiml: Option<String>) {
        let Some(j) = &self.joined else { return };
        let app = self.app.clone();
        let sid = j.info.call_sid.clone();
        tokio::spawn(
            async move {
                let res = match &twiml {
                    None => app.twilio.hangup(&sid).await,
                    Some(t) => app.twilio.redirect(&sid, t).await,
                };
                if let Err(e) = res {
                    app.metrics.error("twilio_rest");
                    tracing::error!(error = %e, "Twilio REST call failed");
                }
            }
            .instrument(self.span.clone()),
        );
    }

    /// `start`: check the one-time token, then join the call's room as the phone.
    async fn start(&mut self, start: proto::twilio::StreamStart) -> Result<(), String> {
        let call_sid = start.call_sid.clone();
        self.span.record("call_sid", call_sid.as_str());
        let token = start.custom_parameters.get("token").map(String::as_str).unwrap_or("");
        let claims = proto::stream_token::verify(&self.app.stream_secret, token, &call_sid, unix_now()).map_err(|e| {
            self.app.metrics.error("stream_token_invalid");
            format!("stream token: {e}")
        })?;
        let info = self.app.registry.activate(&call_sid, &claims.nonce, Instant::now()).ok_or_else(|| {
            self.app.metrics.error("stream_token_reused");
            "stream token already used or reservation expired".to_string()
        })?;
        self.app.metrics.active_calls.set(self.app.registry.active_count() as i64);
        let jwt = self.app.livekit.phone_token(&info).map_err(|e| format!("token: {e}"))?;
        let (room, events) = Room::connect(self.app.livekit.url(), &jwt, RoomOptions::default()).await.map_err(|e| {
            self.app.metrics.error("room_join_failed");
            format!("joining the room: {e}")
        })?;
        let sink = room
            .publish_audio(AudioTrackOptions {
                name: "phone".into(),
                sample_rate: 8_000,
                complexity: self.app.cfg.opus_complexity,
                dtx: self.app.cfg.opus_dtx,
                on_sent: Some(SendLatencyObserver(Arc::new({
                    let h = self.app.metrics.inbound_latency_seconds.clone();
                    move |d| h.observe(d.as_secs_f64())
                }))),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                self.app.metrics.error("room_publish_failed");
                format!("publishing audio: {e}")
            })?;
        self.app.metrics.setup_seconds.observe(self.opened.elapsed().as_secs_f64());
        tracing::info!(room = %room.name(), identity = %phone_identity(&call_sid), "caller joined the room");
        self.joined = Some(Joined { room, events, sink, info });
        Ok(())
    }

    async fn cleanup(mut self) {
        let stats = self.session.stats();
        let m = &self.app.metrics;
        m.frames_in.inc_by(stats.frames_in);
        m.frames_out.inc_by(self.frames_out);
        m.inbound_gap_frames.inc_by(stats.inbound.filled_frames);
        m.outbound_underruns.inc_by(stats.pacer.underruns);
        let _ = self.ws.send(Message::Close(Some(CloseFrame { code: 1000, reason: "call ended".into() }))).await;
        if let Some(j) = self.joined.take() {
            let sink = j.sink.stats();
            tracing::info!(
                encoded = sink.frames_encoded.load(std::sync::atomic::Ordering::Relaxed),
                dropped = sink.frames_dropped.load(std::sync::atomic::Ordering::Relaxed),
                dtx = sink.frames_dtx.load(std::sync::atomic::Ordering::Relaxed),
                "caller track"
            );
            j.room.close().await;
            let call_sid = j.info.call_sid.clone();
            self.app.registry.finish(&call_sid);
            m.active_calls.set(self.app.registry.active_count() as i64);
            m.calls.with_label_values(&["completed"]).inc();
            if let Err(e) = self.app.livekit.delete_room(&call_sid).await {
                tracing::warn!(error = %e, "could not delete the room");
            }
        } else {
            m.calls.with_label_values(&["failed"]).inc();
        }
        tracing::info!(
            frames_in = stats.frames_in,
            frames_out = self.frames_out,
            gaps = stats.inbound.filled_frames,
            underruns = stats.pacer.underruns,
            interrupts = stats.interrupts,
            twilio_malformed = stats.twilio_malformed,
            "call ended"
        );
    }
}

async fn recv_event(joined: &mut Option<Joined>) -> Option<RoomEvent> {
    match joined {
        Some(j) => j.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// LiveKit SIP's DTMF codes: 0-9, `*` = 10, `#` = 11, A-D = 12-15.
fn dtmf_code(digit: &str) -> Option<u32> {
    match digit.as_bytes() {
        [d @ b'0'..=b'9'] => Some((d - b'0') as u32),
        [b'*'] => Some(10),
        [b'#'] => Some(11),
        [d @ (b'A'..=b'D' | b'a'..=b'd')] => Some((d.to_ascii_uppercase() - b'A') as u32 + 12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dtmf_codes() {
        use super::dtmf_code;
        assert_eq!(dtmf_code("0"), Some(0));
        assert_eq!(dtmf_code("9"), Some(9));
        assert_eq!(dtmf_code("*"), Some(10));
        assert_eq!(dtmf_code("#"), Some(11));
        assert_eq!(dtmf_code("d"), Some(15));
        assert_eq!(dtmf_code("12"), None);
        assert_eq!(dtmf_code(""), None);
    }
}
