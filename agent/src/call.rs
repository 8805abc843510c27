//! One call, driven: joins the conversation core ([`crate::conversation`]) to the room, the
//! recogniser, the reply tasks and (Realtime mode) the vendor's socket.
//!
//! ```text
//! phone track ─▶ Ears (VAD, DTX silence) ─▶ Input::Speech*, audio ─▶ STT task ─▶ Input::Stt
//! Output::StartReply ─▶ reply task (LLM ─▶ sentences ─▶ TTS) ─▶ Input::Reply
//! Output::Frame ─▶ AudioSink (never waits)     Output::Control/Transcript ─▶ Outbox
//! room events (bridge's playback, dtmf; the caller leaving) ─▶ Input::*
//! ```
//!
//! The loop owns nothing but I/O: every decision is the core's, made on the clock the loop
//! reads. Nothing here waits on the room: frames go with `try_push`, data packets through a
//! bounded outbox.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::control::{Control, CONTROL_TOPIC, TRANSCRIPT_TOPIC};
use room::{AudioCodec, AudioSink, AudioTrackOptions, Participant, ParticipantKind, RemoteAudioTrack, Room, RoomEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::call_events::{classify, CallEvent};
use crate::config::AgentSpec;
use crate::conversation::{self, Conversation, FinishReason, Input, Metric, Mode, Outcome, Output, RecordOp, ReplyEvent, ReplyId, Stage, TransferEvent};
use crate::ears::{spawn_stt, Ears, SttIn};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::providers::SttEvent;
use crate::record::{now_ms, CallInfo, Recorder};
use crate::reply_task::{self, Voices};
use crate::stack::{Pipeline, Stack};
use crate::vad::VadConfig;

/// Everything a call needs besides the room.
#[derive(Clone)]
pub struct CallParams {
    pub spec: Arc<AgentSpec>,
    pub stack: Stack,
    pub recorder: Option<Recorder>,
    pub metrics: Arc<Metrics>,
    /// How long to wait for the phone participant's audio.
    pub phone_wait: Duration,
    /// Keep DTMF digits in the call record (`RECORD_DTMF`).
    pub record_dtmf: bool,
    /// Fires when the agent shuts down: the call says goodbye and hangs up.
    pub shutdown: Shutdown,
    /// Dials the person of a warm transfer (`AGENT_SIP_URL`); None: warm transfers fail.
    pub dialer: Option<crate::dialer::Dialer>,
}

/// The agent's shutdown, as a call sees it (default: never).
#[derive(Clone, Default)]
pub struct Shutdown(Option<watch::Receiver<bool>>);

impl Shutdown {
    pub fn new(rx: watch::Receiver<bool>) -> Shutdown {
        Shutdown(Some(rx))
    }

    pub fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|r| *r.borrow())
    }

    /// Returns once the shutdown is asked for (never, for the default).
    pub async fn wait(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                if rx.wait_for(|v| *v).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Waits for the phone participant (kind `sip`, or identity `phone-…`) and its audio track.
pub(crate) async fn wait_for_phone(events: &mut mpsc::Receiver<RoomEvent>, room: &Room, wait: Duration) -> Option<(Participant, RemoteAudioTrack)> {
    let is_phone = |p: &Participant| p.kind == ParticipantKind::Sip || p.identity.starts_with("phone-");
    if let Some(p) = room.remote_participants().into_iter().find(is_phone) {
        tracing::info!(identity = %p.identity, "phone participant already in the room");
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(RoomEvent::TrackSubscribed { track, participant })) if is_phone(&participant) => return Some((participant, track)),
            Ok(Some(RoomEvent::Disconnected(r))) => {
                tracing::warn!(reason = ?r, "room closed while waiting for the caller");
                return None;
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The agent's voice track: `codec` at `rate`, no DTX (the playout pushes frames only while it
/// speaks, and names every utterance to the bridge).
pub(crate) async fn publish_agent_track(room: &Room, codec: AudioCodec, rate: u32) -> Result<AudioSink, room::RoomError> {
    room.publish_audio(AudioTrackOptions { name: "agent".into(), sample_rate: rate, codec, dtx: false, ..Default::default() }).await
}

/// The codec and playout rate of the agent's voice. PCMU at 8 kHz when the caller's track is
/// PCMU and the server enables it: the bridge then sends the agent's μ-law to the phone as it
/// came (no decode, mix or encode), and the phone hears 8 kHz anyway. Opus at `rate` otherwise,
/// and for a realtime vendor's voice (its 24 kHz audio goes to the playout unresampled) or voices
/// whose rate cannot be resampled to 8 kHz.
pub(crate) fn agent_voice(room: &Room, phone: &Participant, track: &RemoteAudioTrack, mode: Mode, rate: u32, voice_rates: &[u32]) -> (AudioCodec, u32) {
    let phone_pcmu = phone.tracks.iter().any(|t| t.sid == track.sid() && t.mime_type.eq_ignore_ascii_case(AudioCodec::Pcmu.mime_type()));
    let resamplable = voice_rates.iter().all(|&r| r == 8_000 || proto::resample::Resampler::new(r, 8_000).is_ok());
    if mode == Mode::Cascaded && phone_pcmu && resamplable && room.publish_codec_enabled(AudioCodec::Pcmu) {
        (AudioCodec::Pcmu, 8_000)
    } else {
        (AudioCodec::Opus, rate)
    }
}

/// Runs one call to its end. The room is closed when this returns.
pub async fn run(room: Room, events: mpsc::Receiver<RoomEvent>, p: CallParams) -> Outcome {
    let out = run_inner(room.clone(), events, p).await;
    room.close().await;
    out
}

async fn run_inner(room: Room, mut events: mpsc::Receiver<RoomEvent>, p: CallParams) -> Outcome {
    let room_name = room.name();
    let call_id = format!("{room_name}-{}", now_ms());
    let Some((phone, track)) = wait_for_phone(&mut events, &room, p.phone_wait).await else {
        return Outcome::new(FinishReason::NoCaller);
    };
    let attr = |k: &str| phone.attributes.get(k).filter(|v| !v.is_empty()).cloned();
    let caller = attr("sip.phoneNumber");
    tracing::info!(room = %room_name, phone = %phone.identity, caller = %proto::redact::Masked(caller.as_deref().unwrap_or("")), "caller present; starting the conversation");
    p.metrics.calls_started.fetch_add(1, Ordering::Relaxed);
    p.metrics.calls_active.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = &p.recorder {
        r.start_call(CallInfo {
            call_id: call_id.clone(),
            room: room_name.clone(),
            call_sid: attr("sip.twilio.callSid").or_else(|| phone.identity.strip_prefix("phone-").map(str::to_string)),
            caller,
            called: attr("sip.trunkPhoneNumber"),
            agent: p.spec.name.clone(),
        });
    }
    // The record's end is written whatever happens to this task (a job aborted by LiveKit, a
    // panic): see EndGuard.
    let mut guard = EndGuard { recorder: p.recorder.clone(), call_id: call_id.clone(), metrics: p.metrics.clone(), done: false };
    let outcome = converse(&room, &mut events, &p, &call_id, &phone, track).await;
    guard.finish(&outcome);
    if let Some(r) = &p.recorder {
        r.flush_async().await;
    }
    tracing::info!(room = %room_name, outcome = %outcome.reason, fields = outcome.fields.len(), turns = outcome.turns, "call ended");
    outcome
}

/// Writes the call's end when dropped without [`finish`](Self::finish): the task was aborted
/// (LiveKit terminated the job) or panicked.
struct EndGuard {
    recorder: Option<Recorder>,
    call_id: String,
    metrics: Arc<Metrics>,
    done: bool,
}

impl EndGuard {
    fn finish(&mut self, o: &Outcome) {
        self.done = true;
        self.metrics.calls_active.fetch_sub(1, Ordering::Relaxed);
        if let Some(r) = &self.recorder {
            r.end_call(&self.call_id, &o.reason.to_string(), &o.fields);
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.calls_active.fetch_sub(1, Ordering::Relaxed);
            if let Some(r) = &self.recorder {
                r.end_call(&self.call_id, "aborted", &Default::default());
            }
        }
    }
}

/// Carries out the core's outputs.
struct Driver {
    call_id: String,
    recorder: Option<Recorder>,
    metrics: Arc<Metrics>,
    sink: AudioSink,
    outbox: Outbox,
    voices: Voices,
    reply_tx: mpsc::Sender<(ReplyId, ReplyEvent)>,
    replies: HashMap<ReplyId, JoinHandle<()>>,
    ears: Option<Ears>,
    realtime_tx: Option<mpsc::Sender<crate::realtime_link::LinkCmd>>,
    room_name: String,
    dialer: Option<crate::dialer::Dialer>,
    /// The warm transfer's person (identity) once dialled, and the dial in flight.
    transfer_id: Option<String>,
    dial_task: Option<JoinHandle<()>>,
    /// Removals of the person's leg in flight (waited for, bounded, when the call ends).
    hangups: Vec<JoinHandle<()>>,
    transfer_tx: mpsc::Sender<TransferEvent>,
}

impl Driver {
    /// Everything the core has to say; the outcome once it is over.
    fn execute(&mut self, conv: &mut Conversation) -> Option<Outcome> {
        while let Some(o) = conv.poll_output() {
            match o {
                Output::Frame(pcm) => match self.sink.try_push(&pcm) {
                    Ok(()) => {
                        self.metrics.frames_pushed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.metrics.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Output::Control(c) => self.outbox.send(CONTROL_TOPIC, c.to_bytes()),
                Output::PressKeys { keys } => self.outbox.press_keys(&keys),
                Output::Dial { destination, number } => self.dial(destination, number),
                Output::HangUpTransfer => self.hang_up_transfer(),
                Output::Transcript { role, text, is_final, fields } => {
                    let c = Control::Transcript { role: role.into(), text, is_final, fields };
                    self.outbox.send(TRANSCRIPT_TOPIC, c.to_bytes());
                }
                Output::StartReply { reply, source, voice } => {
                    self.replies.retain(|_, h| !h.is_finished());
                    let h = reply_task::spawn(reply, source, voice, self.voices.clone(), self.reply_tx.clone());
                    self.replies.insert(reply, h);
                }
                Output::CancelReply { reply } => {
                    if let Some(h) = self.replies.remove(&reply) {
                        h.abort();
                    }
                }
                Output::SttFinalize => {
                    if let Some(e) = &mut self.ears {
                        e.finalize();
                    }
                }
                Output::RealtimeSend(v) => {
                    if let Some(tx) = &self.realtime_tx {
                        match tx.try_send(crate::realtime_link::LinkCmd::Event(v)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!("realtime: event queue full; event dropped"),
                            Err(mpsc::error::TrySendError::Closed(_)) => tracing::debug!("realtime: link closed; event not sent"),
                        }
                    }
                }
                Output::RealtimeClose => {
                    if let Some(tx) = self.realtime_tx.take() {
                        let _ = tx.try_send(crate::realtime_link::LinkCmd::Close);
                    }
                }
                Output::Record(op) => {
                    if let Some(r) = &self.recorder {
                        match op {
                            RecordOp::Turn(row) => r.turn(&self.call_id, row),
                            RecordOp::Field { name, value } => r.field(&self.call_id, &name, &value),
                        }
                    }
                }
                Output::Metric(m) => self.metric(m),
                Output::End(o) => return Some(o),
            }
        }
        None
    }

    fn metric(&self, m: Metric) {
        let c = |a: &std::sync::atomic::AtomicU64| {
            a.fetch_add(1, Ordering::Relaxed);
        };
        let m2 = &self.metrics;
        match m {
            Metric::Turn => c(&m2.turns),
            Metric::Interruption => c(&m2.interruptions),
            Metric::FalseInterruption => c(&m2.false_interruptions),
            Metric::Backchannel => c(&m2.backchannels),
            Metric::ProviderError(_) => c(&m2.provider_errors),
            Metric::TurnTimings(t) => m2.observe_turn(&t),
            Metric::ToolRefused(_) => c(&m2.tools_refused),
            Metric::Preemptive { kept: true } => c(&m2.preemptive_kept),
            Metric::Preemptive { kept: false } => c(&m2.preemptive_dropped),
        }
    }

    fn dial(&mut self, destination: String, number: String) {
        let tx = self.transfer_tx.clone();
        let Some(dialer) = self.dialer.clone() else {
            tracing::warn!("warm transfer asked for but AGENT_SIP_URL is not set");
            let _ = tx.try_send(TransferEvent::Failed { reason: "no SIP URL configured".into() });
            return;
        };
        self.transfer_id = Some(crate::dialer::Dialer::identity(&destination));
        let room = self.room_name.clone();
        self.dial_task = Some(tokio::spawn(async move {
            let ev = dialer.dial(&room, &destination, &number).await;
            let _ = tx.send(ev).await;
        }));
    }

    /// Hangs up the warm transfer's person only: their participant is removed from the room
    /// (the bridge ends their call, or cancels it while it rings). Never waits.
    fn hang_up_transfer(&mut self) {
        if let Some(h) = self.dial_task.take() {
            h.abort();
        }
        if let (Some(id), Some(dialer)) = (self.transfer_id.take(), self.dialer.clone()) {
            let room = self.room_name.clone();
            self.hangups.push(tokio::spawn(async move { dialer.hang_up(&room, &id).await }));
        }
    }

    /// Stops every task of the call and lets the last data packets out.
    async fn wind_down(mut self, outcome: &Outcome) {
        if outcome.reason != FinishReason::Transferred {
            // A person dialled for a transfer that did not complete is not left in the room.
            self.hang_up_transfer();
        }
        for h in std::mem::take(&mut self.hangups) {
            let abort = h.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), h).await.is_err() {
                abort.abort();
            }
        }
        for (_, h) in self.replies {
            h.abort();
        }
        if let Some(tx) = self.realtime_tx {
            let _ = tx.try_send(crate::realtime_link::LinkCmd::Close);
        }
        self.outbox.close(Duration::from_secs(2)).await;
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// A room event for the core (None: nothing for it). Control comes only from the phone
/// participant: nobody else in the room steers the call.
fn room_input(ev: RoomEvent, phone_id: &str, transfer_id: Option<&str>, track: &mut Option<RemoteAudioTrack>) -> Option<Input> {
    if let (RoomEvent::ParticipantDisconnected(p), Some(t)) = (&ev, transfer_id) {
        if p.identity == t {
            return Some(Input::Transfer(TransferEvent::Left));
        }
    }
    match classify(ev, phone_id) {
        // The warm transfer's person declines with a key.
        CallEvent::Control { from, control: Control::Dtmf { .. } } if Some(from.as_str()) == transfer_id => Some(Input::Transfer(TransferEvent::Key)),
        CallEvent::Control { from, control } if from == phone_id => match control {
            Control::Playback { utterance_id, heard_ms, complete, interrupted } => Some(Input::Playback { utterance_id, heard_ms, complete, interrupted }),
            Control::Dtmf { digit } => Some(Input::Dtmf { digit }),
            _ => None,
        },
        CallEvent::Control { from, .. } => {
            tracing::debug!(%from, "control message from someone other than the phone ignored");
            None
        }
        CallEvent::Ended(FinishReason::CallerHungUp) => Some(Input::CallerLeft),
        CallEvent::Ended(_) => Some(Input::RoomClosed),
        CallEvent::CallerTrack(t) => {
            *track = Some(t);
            None
        }
        CallEvent::AnsweredBy(v) => Some(Input::AnsweredBy(v)),
        CallEvent::Other => None,
    }
}

async fn converse(room: &Room, events: &mut mpsc::Receiver<RoomEvent>, p: &CallParams, call_id: &str, phone: &Participant, track: RemoteAudioTrack) -> Outcome {
    let (mode, rate, llm, main_tts, stt) = match &p.stack.pipeline {
        Pipeline::Cascaded { stt, llm, tts } => (Mode::Cascaded, tts.output_rate(), Some(llm.clone()), tts.clone(), Some(stt.clone())),
        Pipeline::Realtime { .. } => (Mode::Realtime, crate::realtime_link::RATE, None, p.stack.fallback_tts.clone(), None),
    };
    let fail = |m: String| Outcome::new(FinishReason::Error { stage: Stage::Setup, message: m });
    let (codec, rate) = agent_voice(room, phone, &track, mode, rate, &[main_tts.output_rate(), p.stack.fallback_tts.output_rate()]);
    tracing::info!(codec = codec.mime_type(), rate, "agent voice");
    let sink = match publish_agent_track(room, codec, rate).await {
        Ok(s) => s,
        Err(e) => return fail(format!("publish: {e}")),
    };
    let in_rate = match &stt {
        Some(s) => s.input_rate(),
        None => crate::realtime_link::RATE,
    };
    let mut audio = match track.stream(in_rate) {
        Ok(a) => a,
        Err(e) => return fail(format!("subscribe at {in_rate} Hz: {e}")),
    };
    let (reply_tx, mut reply_rx) = mpsc::channel(256);
    let (transfer_tx, mut transfer_rx) = mpsc::channel(4);
    let mut d = Driver {
        call_id: call_id.to_string(),
        recorder: p.recorder.clone(),
        metrics: p.metrics.clone(),
        sink,
        outbox: Outbox::new(room.clone(), p.metrics.clone()),
        voices: Voices { llm, main: main_tts, fallback: p.stack.fallback_tts.clone(), rate },
        reply_tx,
        replies: HashMap::new(),
        ears: None,
        realtime_tx: None,
        room_name: room.name(),
        dialer: p.dialer.clone(),
        transfer_id: None,
        dial_task: None,
        hangups: Vec::new(),
        transfer_tx,
    };
    let cfg = conversation::Config { spec: p.spec.clone(), mode, playout_rate: rate, record_dtmf: p.record_dtmf };
    let mut conv = Conversation::new(cfg, Instant::now());

    // The recogniser (cascaded) or the model's socket (Realtime).
    let (stt_ev_tx, mut stt_ev_rx) = mpsc::channel::<SttEvent>(64);
    let mut stt_task = None;
    if let Some(stt) = &stt {
        let (stt_in_tx, stt_in_rx) = mpsc::channel::<SttIn>(200);
        match stt.start().await {
            Ok(session) => stt_task = Some(spawn_stt(session, stt_in_rx, stt_ev_tx.clone())),
            Err(e) => {
                // No ears: the caller hears an apology and the call ends (never dead air).
                let _ = stt_ev_tx.try_send(SttEvent::Error(e.to_string()));
            }
        }
        d.ears = Some(Ears::new(p.stack.vad.make(VadConfig::from_turn(&p.spec.turn)), stt_in_tx, in_rate));
    }
    drop(stt_ev_tx);
    let mut link = match &p.stack.pipeline {
        Pipeline::Realtime { cfg } => Some(crate::realtime_link::Link::connect(cfg.clone(), &p.spec).await),
        Pipeline::Cascaded { .. } => None,
    };
    if let Some(l) = &link {
        d.realtime_tx = l.commands();
    }

    let phone_id = phone.identity.clone();
    let mut shutdown = p.shutdown.clone();
    let mut shutdown_sent = false;
    let mut audio_open = true;
    let mut stt_open = true;
    let mut inputs: Vec<Input> = Vec::new();
    // The verdict may have come before the agent joined.
    if let Some(v) = phone.attributes.get(crate::call_events::ANSWERED_BY).filter(|v| !v.is_empty()) {
        conv.handle(Input::AnsweredBy(crate::conversation::AnsweredBy::parse(v).unwrap_or(crate::conversation::AnsweredBy::Unknown)), Instant::now());
    }
    let outcome = loop {
        if let Some(o) = d.execute(&mut conv) {
            break o;
        }
        let deadline = conv.poll_timeout();
        let ears_deadline = d.ears.as_ref().and_then(Ears::next_deadline);
        let mut new_track = None;
        tokio::select! {
            f = audio.recv(), if audio_open => match f {
                Some(f) => {
                    let now = Instant::now();
                    match (&mut d.ears, &mut link) {
                        (Some(e), _) => e.frame(f.samples, f.rtp_timestamp, now, &mut inputs),
                        (None, Some(l)) => l.caller_audio(&f.samples, f.rtp_timestamp, now),
                        _ => {}
                    }
                }
                None => audio_open = false,
            },
            _ = sleep_until_opt(ears_deadline.or(link.as_ref().and_then(|l| l.silence_deadline()))), if audio_open => {
                let now = Instant::now();
                if let Some(e) = &mut d.ears {
                    e.timer(now, &mut inputs);
                } else if let Some(l) = &mut link {
                    l.silence_timer(now);
                }
            }
            ev = stt_ev_rx.recv(), if stt_open => match ev {
                Some(ev) => inputs.push(Input::Stt(ev)),
                None => {
                    stt_open = false;
                    if stt.is_some() {
                        inputs.push(Input::Stt(SttEvent::Error("speech recogniser ended".into())));
                    }
                }
            },
            t = transfer_rx.recv() => if let Some(ev) = t {
                inputs.push(Input::Transfer(ev));
            },
            r = reply_rx.recv() => if let Some((reply, event)) = r {
                inputs.push(Input::Reply { reply, event });
            },
            ev = async { match &mut link { Some(l) => l.next_event().await, None => std::future::pending().await } } => {
                inputs.push(Input::Realtime(ev));
            }
            ev = events.recv() => match ev {
                Some(ev) => inputs.extend(room_input(ev, &phone_id, d.transfer_id.as_deref(), &mut new_track)),
                None => inputs.push(Input::RoomClosed),
            },
            _ = sleep_until_opt(deadline) => inputs.push(Input::Timeout),
            _ = shutdown.wait(), if !shutdown_sent => {
                shutdown_sent = true;
                inputs.push(Input::Shutdown);
            }
        }
        if let Some(t) = new_track {
            match t.stream(in_rate) {
                Ok(a) => {
                    tracing::info!(track = %t.sid(), "caller audio track (re)subscribed");
                    audio = a;
                    audio_open = true;
                    if let Some(e) = &mut d.ears {
                        e.reset_track();
                    }
                    if let Some(l) = &mut link {
                        l.reset_track();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot decode the caller's new track"),
            }
        }
        let now = Instant::now();
        for i in inputs.drain(..) {
            conv.handle(i, now);
        }
    };
    d.wind_down(&outcome).await;
    if let Some(l) = link {
        l.close().await;
    }
    if let Some(h) = stt_task {
        h.abort();
    }
    outcome
}
