//! One call on OpenAI Realtime: the model hears the caller and speaks back itself.
//!
//! ```text
//! phone track ─▶ AudioStream @ 8 kHz ─▶ μ-law ─▶ link task ─▶ input_audio_buffer.append
//! link task ◀── RealtimeSession (server VAD, transcripts, tool calls, μ-law audio deltas)
//! audio deltas ─▶ decoded ─▶ PlayQueue (bounded) ─▶ player task: 20 ms frames ─▶ AudioSink @ 8 kHz
//! bridge control (playback, dtmf) ◀─▶ topic `callbridge.control`; transcripts on `transcript`
//! ```
//!
//! The session is configured for μ-law 8 kHz both ways (`audio/pcmu` / `g711_ulaw`) with server
//! VAD, so the caller's audio goes out as it comes (one 20 ms frame per append) and the model's
//! audio is only expanded from μ-law. The join, the call record and the helpers (transcripts,
//! control messages, `record_field`) are the cascaded session's ([`crate::session`]).
//!
//! * **Playback.** Each assistant item with audio is one *reply*: the player pushes it on an
//!   absolute 20 ms grid, fills late audio with silence inside a reply and keeps the agent
//!   file's `reply_gap_ms` of quiet between replies — so, as in the cascaded loop, the k-th
//!   reply heard is the bridge's utterance `bk` ([`crate::turn`]). At most 60 s of audio waits;
//!   beyond it audio is dropped and counted, never buffered without bound.
//! * **Barge-in.** `input_audio_buffer.speech_started` while the agent talks: the player stops,
//!   `interrupt` goes to the bridge, a response still in flight gets `response.cancel`, and the
//!   interrupted item gets `conversation.item.truncate` with `audio_end_ms` = what the caller
//!   heard — the bridge's final `playback` report for that utterance, or (none within 700 ms)
//!   what was pushed. Items never played are truncated at 0.
//! * **Tools.** `record_field`, `end_call`, `transfer` arrive as function calls; their outputs
//!   go back as `function_call_output` items once the response is done, then `response.create`.
//!   `end_call`/`transfer` ask the model to say the closing line (or the transfer line), and
//!   when that has played (the bridge says so, or 1.5 s after the last frame) `hangup` /
//!   `transfer` goes to the bridge.
//! * **Vendor failures** are logged and counted (`provider_errors`). A failed response or no
//!   reply within 10 s of the caller's turn: a local fallback line (the stack's TTS) asks the
//!   caller to repeat; the third failure in a row, a refused connection (401, 429, 500) or a
//!   closed socket: a local apology, then `hangup`. Never dead air, never a panic.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::control::Control;
use room::{AudioSink, Participant, RemoteAudioTrack, Room, RoomEvent};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;

use crate::call_events::{classify, CallEvent};
use crate::metrics::{Metrics, TurnClock};
use crate::providers::openai_realtime::{RealtimeConfig, RealtimeEvent, RealtimeSession};
use crate::providers::{Fields, TtsEvent, TtsProvider};
use crate::record::now_ms;
use crate::session::{self, EndAction, Outcome, SessionParams};
use crate::silence_fill::SilenceFill;
use crate::turn::{trim_to_heard, UtteranceMap};

/// Both directions run at the phone's rate: μ-law 8 kHz.
pub const RATE: u32 = 8_000;
const FRAME_SAMPLES: usize = 160;
const FRAME: Duration = Duration::from_millis(20);
/// Most agent audio waiting to be played.
const MAX_QUEUED: Duration = Duration::from_secs(60);
/// A reply starts once this much of it is there (absorbs the first deltas' jitter).
const PREBUFFER_FRAMES: usize = 3;
/// How long a barge-in waits for the bridge's final `playback` report before truncating at
/// what was pushed.
const REPORT_WAIT: Duration = Duration::from_millis(700);
/// A reply must begin this soon after the caller's turn (or our `response.create`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the closing line's last frame, how long to wait for the bridge to say it played.
const END_GRACE: Duration = Duration::from_millis(1500);
/// An ending (closing line, then hangup) never takes longer than this.
const END_DEADLINE: Duration = Duration::from_secs(20);
/// Failures in a row before the call is given up.
const MAX_FAILURES: u32 = 3;
/// Caller audio waiting for the socket: 2 s of 20 ms frames (beyond: dropped and counted).
const UPLINK_FRAMES: usize = 100;
/// Items remembered (for truncation, transcripts, the record).
const MAX_ITEMS: usize = 64;

const REPROMPT_LINE: &str = "Sorry, I had a problem there. Could you say that again?";
const APOLOGY_LINE: &str =
    "Sorry, I am having technical difficulties right now. Please call again later. Goodbye.";

// ---- the play queue (sans-IO) --------------------------------------------------------------

/// What the player reports.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayEvent {
    /// The first frame of `item` was pushed.
    Started { item: u64, at: Instant },
    /// All of `item` was pushed.
    Finished { item: u64, pushed_ms: u32 },
}

/// What the player does next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing to play until more audio (or a cancel) arrives.
    Idle,
    /// The next frame is due then.
    Wait(Instant),
    /// Push this 20 ms frame now.
    Frame(Vec<i16>),
}

#[derive(Debug)]
struct Entry {
    item: u64,
    buf: VecDeque<i16>,
    ended: bool,
    started: bool,
    pushed: u64,
}

/// Agent audio waiting to be played, per item, in order. Time is an argument.
#[derive(Debug)]
pub struct PlayQueue {
    entries: VecDeque<Entry>,
    queued: usize,
    max_queued: usize,
    /// Items at or below this are over (played or cancelled): their audio is refused.
    done_upto: u64,
    last_frame: Option<Instant>,
    next_at: Option<Instant>,
    gap: Duration,
    events: Vec<PlayEvent>,
    /// Samples refused because the queue was full.
    pub dropped: u64,
    /// Silence frames pushed inside a reply because its audio was late.
    pub underruns: u64,
}

fn samples_ms(samples: u64) -> u32 {
    (samples * 1000 / RATE as u64) as u32
}

impl PlayQueue {
    /// `gap`: quiet kept between two items.
    pub fn new(gap: Duration, max_queued: Duration) -> PlayQueue {
        PlayQueue {
            entries: VecDeque::new(),
            queued: 0,
            max_queued: (max_queued.as_millis() as usize) * RATE as usize / 1000,
            done_upto: 0,
            last_frame: None,
            next_at: None,
            gap,
            events: Vec::new(),
            dropped: 0,
            underruns: 0,
        }
    }

    /// Appends audio of `item` (items come in increasing order). False when it was refused:
    /// the item is over, older than the one queued last, or the queue is full.
    pub fn push(&mut self, item: u64, pcm: &[i16]) -> bool {
        if item <= self.done_upto {
            return false;
        }
        if pcm.is_empty() {
            return self.entries.back().is_none_or(|e| e.item <= item);
        }
        if self.queued + pcm.len() > self.max_queued {
            self.dropped += pcm.len() as u64;
            return false;
        }
        match self.entries.back_mut() {
            Some(e) if e.item == item => {
                if e.ended {
                    return false;
                }
                e.buf.extend(pcm);
            }
            Some(e) if e.item > item => return false,
            _ => self.entries.push_back(Entry {
                item,
                buf: pcm.iter().copied().collect(),
                ended: false,
                started: false,
                pushed: 0,
            }),
        }
        self.queued += pcm.len();
        true
    }

    /// No more audio for `item`.
    pub fn end(&mut self, item: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.item == item) {
            e.ended = true;
        }
    }

    /// Drops every item up to `upto`. Returns the item being heard and how much of it was
    /// pushed (ms), if one was playing.
    pub fn cancel(&mut self, upto: u64, now: Instant) -> Option<(u64, u32)> {
        self.done_upto = self.done_upto.max(upto);
        let mut cut = None;
        while self.entries.front().is_some_and(|e| e.item <= upto) {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.queued -= e.buf.len();
            if e.started {
                cut = Some((e.item, samples_ms(e.pushed)));
                self.last_frame = Some(now);
            }
        }
        self.next_at = None;
        cut
    }

    /// Audio is playing or waiting.
    pub fn busy(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The item whose frames are going out.
    pub fn playing(&self) -> Option<u64> {
        self.entries.front().filter(|e| e.started).map(|e| e.item)
    }

    pub fn take_events(&mut self) -> Vec<PlayEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn poll(&mut self, now: Instant) -> Step {
        loop {
            let Some(e) = self.entries.front_mut() else {
                self.next_at = None;
                return Step::Idle;
            };
            if e.ended && e.buf.is_empty() {
                let (item, started, pushed) = (e.item, e.started, e.pushed);
                self.entries.pop_front();
                self.done_upto = self.done_upto.max(item);
                if started {
                    self.events.push(PlayEvent::Finished {
                        item,
                        pushed_ms: samples_ms(pushed),
                    });
                }
                self.next_at = None;
                continue;
            }
            if !e.started && !e.ended && e.buf.len() < PREBUFFER_FRAMES * FRAME_SAMPLES {
                return Step::Idle;
            }
            let due = match self.next_at {
                Some(t) => t,
                None => {
                    let t = if e.started {
                        now
                    } else {
                        self.last_frame.map_or(now, |l| (l + self.gap).max(now))
                    };
                    self.next_at = Some(t);
                    t
                }
            };
            if now < due {
                return Step::Wait(due);
            }
            let mut frame = Vec::with_capacity(FRAME_SAMPLES);
            if e.buf.len() >= FRAME_SAMPLES || e.ended {
                let take = FRAME_SAMPLES.min(e.buf.len());
                frame.extend(e.buf.drain(..take));
                self.queued -= take;
            } else {
                // Started and the model is late: keep the utterance contiguous.
                self.underruns += 1;
            }
            frame.resize(FRAME_SAMPLES, 0);
            if !e.started {
                e.started = true;
                self.events.push(PlayEvent::Started {
                    item: e.item,
                    at: now,
                });
            }
            e.pushed += FRAME_SAMPLES as u64;
            self.last_frame = Some(now);
            // An absolute grid; more than 100 ms behind it, a new one from now (no burst).
            let next = due + FRAME;
            self.next_at = Some(if now > due + Duration::from_millis(100) {
                now + FRAME
            } else {
                next
            });
            return Step::Frame(frame);
        }
    }
}

type SharedQueue = Arc<Mutex<PlayQueue>>;

fn lock(q: &SharedQueue) -> std::sync::MutexGuard<'_, PlayQueue> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pushes the queue's frames into the published track.
async fn player(
    mut sink: AudioSink,
    q: SharedQueue,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<PlayEvent>,
) {
    loop {
        let (step, events, underruns) = {
            let mut g = lock(&q);
            let step = g.poll(Instant::now());
            (step, g.take_events(), std::mem::take(&mut g.underruns))
        };
        if underruns > 0 {
            metrics
                .tts_underruns
                .fetch_add(underruns, Ordering::Relaxed);
        }
        for e in events {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        match step {
            Step::Idle => wake.notified().await,
            Step::Wait(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            Step::Frame(pcm) => {
                if sink.push(&pcm).await.is_err() {
                    return;
                }
                metrics.frames_pushed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---- the link to the vendor ----------------------------------------------------------------

enum LinkCmd {
    Event(Value),
    Close,
}

/// Owns the socket: caller audio and client events out, server events in. A send that fails
/// ends the link with [`RealtimeEvent::Closed`].
async fn link(
    mut rt: RealtimeSession,
    mut audio_rx: mpsc::Receiver<Vec<u8>>,
    mut ctl_rx: mpsc::Receiver<LinkCmd>,
    ev_tx: mpsc::Sender<RealtimeEvent>,
) {
    loop {
        tokio::select! {
            biased;
            c = ctl_rx.recv() => match c {
                Some(LinkCmd::Event(v)) => {
                    if let Err(e) = rt.send_event(v).await {
                        let _ = ev_tx.send(RealtimeEvent::Closed(e)).await;
                        return;
                    }
                }
                Some(LinkCmd::Close) | None => {
                    rt.close().await;
                    return;
                }
            },
            ev = rt.next_event() => match ev {
                Some(ev) => {
                    let closed = matches!(ev, RealtimeEvent::Closed(_));
                    if ev_tx.send(ev).await.is_err() || closed {
                        return;
                    }
                }
                None => return,
            },
            a = audio_rx.recv() => match a {
                Some(ulaw) => {
                    if let Err(e) = rt.send_audio_ulaw(&ulaw).await {
                        let _ = ev_tx.send(RealtimeEvent::Closed(e)).await;
                        return;
                    }
                }
                None => {
                    rt.close().await;
                    return;
                }
            },
        }
    }
}

/// Speaks `text` with the stack's TTS, as 8 kHz PCM.
async fn synth_8k(tts: Arc<dyn TtsProvider>, text: String) -> Result<Vec<i16>, String> {
    let work = async {
        let mut s = tts.start().await.map_err(|e| e.to_string())?;
        s.push_text(&text).await.map_err(|e| e.to_string())?;
        s.finish().await.map_err(|e| e.to_string())?;
        let mut pcm = Vec::new();
        while let Some(ev) = s.next_event().await {
            match ev {
                TtsEvent::Audio(a) => pcm.extend(a),
                TtsEvent::Done => break,
                TtsEvent::Error(e) => return Err(e),
            }
        }
        Ok::<_, String>(pcm)
    };
    let pcm = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "tts timed out".to_string())??;
    let rate = tts.output_rate();
    if rate == RATE {
        return Ok(pcm);
    }
    let mut rs = proto::resample::Resampler::new(rate, RATE).map_err(|e| e.to_string())?;
    let n = rs.input_len();
    let mut out = Vec::with_capacity(pcm.len() * RATE as usize / rate as usize + n);
    for chunk in pcm.chunks(n) {
        let mut c = chunk.to_vec();
        c.resize(n, 0);
        rs.process(&c, &mut out).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

// ---- the conversation ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Played {
    /// Waiting in the queue (or no audio yet).
    Queued,
    Playing,
    /// All pushed.
    Finished(u32),
    /// Stopped by barge-in after this many ms pushed.
    Cancelled(u32),
}

/// One assistant item (or a local fallback line: `id` empty).
#[derive(Debug)]
struct Item {
    local: u64,
    id: String,
    response: String,
    text: String,
    /// μ-law bytes (= samples) of audio received.
    received: u64,
    /// No more audio or text will come.
    done: bool,
    played: Played,
    /// Cut short by barge-in.
    interrupted: bool,
    /// The bridge's final report of what was heard (interrupted items).
    bridge_heard: Option<u32>,
    /// Truncation sent / decided: what the caller heard, ms.
    heard_ms: Option<u32>,
    transcript_sent: bool,
    recorded: bool,
    started_ms: i64,
    clock: TurnClock,
}

impl Item {
    fn received_ms(&self) -> u32 {
        samples_ms(self.received)
    }
}

struct InFlight {
    id: String,
    clock: TurnClock,
}

struct PendingEnd {
    action: EndAction,
    /// The outcome when it is not the action's own (vendor failure).
    outcome: Option<String>,
    /// The closing response has not finished yet.
    waiting_response: bool,
    /// A local line is being synthesized.
    waiting_local: bool,
    /// Spoken replies when the ending was decided (did the closing line speak?).
    spoken_before: u64,
    idle_since: Option<Instant>,
    deadline: Instant,
}

struct PendingTruncate {
    local: u64,
    pushed_ms: u32,
    deadline: Instant,
}

/// A local line finished synthesizing (pushed into the queue) or failed.
struct LocalDone {
    local: u64,
    ok: bool,
}

struct Rt {
    room: Room,
    p: SessionParams,
    call_id: String,
    fields: Fields,
    items: VecDeque<Item>,
    next_local: u64,
    utterances: UtteranceMap,
    queue: SharedQueue,
    wake: Arc<Notify>,
    ctl_tx: mpsc::Sender<LinkCmd>,
    audio_tx: mpsc::Sender<Vec<u8>>,
    link_up: bool,
    response: Option<InFlight>,
    /// The in-flight response we cancelled: its late audio is dropped.
    cancelled_response: Option<String>,
    /// Function outputs of the in-flight response (sent once it is done).
    tool_outputs: Vec<(String, String)>,
    /// `end_call`/`transfer` in the in-flight response: the action and the line to say first.
    end_request: Option<(EndAction, String)>,
    pending_end: Option<PendingEnd>,
    truncates: Vec<PendingTruncate>,
    /// A reply is due by then (the watchdog against dead air).
    awaiting: Option<Instant>,
    failures: u32,
    /// The caller's current turn.
    clock: TurnClock,
    seq: u32,
    turns: u32,
    outcome: Option<String>,
    uplink_dropped: u64,
    /// Audio deltas refused by the full play queue.
    play_dropped: u64,
    local_tx: mpsc::Sender<LocalDone>,
}

impl Rt {
    fn now_deadline(d: Duration) -> Instant {
        Instant::now() + d
    }

    async fn send(&mut self, event: Value) {
        if !self.link_up {
            return;
        }
        if self.ctl_tx.send(LinkCmd::Event(event)).await.is_err() {
            tracing::debug!("realtime link gone; event not sent");
        }
    }

    async fn send_control(&self, c: &Control) {
        session::send_control(&self.room, c).await
    }

    async fn send_transcript(&self, role: &str, text: &str) {
        session::send_transcript(&self.room, role, text, true, &self.fields).await
    }

    fn record_turn(
        &mut self,
        role: &str,
        text: &str,
        started_ms: i64,
        interrupted: bool,
        heard: Option<String>,
        clock: Option<&TurnClock>,
    ) {
        self.seq += 1;
        session::write_turn(
            self.p.recorder.as_ref(),
            &self.call_id,
            self.seq,
            role,
            text,
            started_ms,
            Some(now_ms()),
            interrupted,
            heard,
            clock,
        );
    }

    fn item_mut(&mut self, local: u64) -> Option<&mut Item> {
        self.items.iter_mut().find(|i| i.local == local)
    }

    fn item_by_id(&mut self, id: &str) -> Option<&mut Item> {
        if id.is_empty() {
            return None;
        }
        self.items.iter_mut().rev().find(|i| i.id == id)
    }

    fn new_item(&mut self, id: &str, response: &str) -> u64 {
        let local = self.next_local;
        self.next_local += 1;
        let clock = self
            .response
            .as_ref()
            .filter(|r| r.id == response)
            .map(|r| r.clock)
            .unwrap_or_default();
        self.items.push_back(Item {
            local,
            id: id.to_string(),
            response: response.to_string(),
            text: String::new(),
            received: 0,
            done: false,
            played: Played::Queued,
            interrupted: false,
            bridge_heard: None,
            heard_ms: None,
            transcript_sent: false,
            recorded: false,
            started_ms: now_ms(),
            clock,
        });
        // Forget the oldest settled items.
        while self.items.len() > MAX_ITEMS {
            match self.items.iter().position(|i| i.recorded) {
                Some(ix) => {
                    self.items.remove(ix);
                }
                None => break,
            }
        }
        local
    }

    /// The item a server event names, created on first sight (inside the in-flight response).
    fn vendor_item(&mut self, id: &str) -> u64 {
        if let Some(i) = self.item_by_id(id) {
            return i.local;
        }
        let response = self
            .response
            .as_ref()
            .map(|r| r.id.clone())
            .unwrap_or_default();
        let cancelled =
            self.cancelled_response.as_deref() == Some(response.as_str()) && !response.is_empty();
        let local = self.new_item(id, &response);
        if cancelled {
            if let Some(i) = self.item_mut(local) {
                i.interrupted = true;
                i.heard_ms = Some(0);
            }
        }
        local
    }

    fn wake_player(&self) {
        self.wake.notify_one();
    }

    // -- caller audio ---------------------------------------------------------------------

    fn send_caller(&mut self, pcm: &[i16]) {
        if !self.link_up {
            return;
        }
        let ulaw: Vec<u8> = pcm.iter().map(|&s| proto::g711::ulaw_encode(s)).collect();
        if self.audio_tx.try_send(ulaw).is_err() {
            self.uplink_dropped += 1;
            if self.uplink_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.uplink_dropped,
                    "realtime: socket slow, caller audio dropped"
                );
            }
        }
    }

    // -- server events --------------------------------------------------------------------

    async fn on_event(&mut self, ev: RealtimeEvent) {
        if !self.link_up {
            return; // given up on the model: only the apology and the hangup are left
        }
        match ev {
            RealtimeEvent::SessionUpdated => tracing::debug!("realtime session updated"),
            RealtimeEvent::SpeechStarted { .. } => self.on_speech_started().await,
            RealtimeEvent::SpeechStopped { .. } => {
                self.clock = TurnClock {
                    end_of_speech: Some(Instant::now()),
                    ..Default::default()
                };
                self.awaiting = Some(Self::now_deadline(RESPONSE_TIMEOUT));
            }
            RealtimeEvent::UserTranscript { text, .. } => {
                let text = text.trim().to_string();
                self.clock.stt_final.get_or_insert(Instant::now());
                if let Some(r) = &mut self.response {
                    r.clock.stt_final.get_or_insert(Instant::now());
                }
                if text.is_empty() {
                    return;
                }
                tracing::info!(%text, "caller");
                self.turns += 1;
                self.p.metrics.turns.fetch_add(1, Ordering::Relaxed);
                self.record_turn("user", &text, now_ms(), false, None, None);
                self.send_transcript("user", &text).await;
            }
            RealtimeEvent::ResponseCreated { response_id } => {
                let mut clock = std::mem::take(&mut self.clock);
                clock.llm_first_token = Some(Instant::now());
                self.response = Some(InFlight {
                    id: response_id,
                    clock,
                });
            }
            RealtimeEvent::AudioDelta { item_id, audio } => self.on_audio(&item_id, &audio),
            RealtimeEvent::AssistantTranscriptDelta { item_id, delta } => {
                let local = self.vendor_item(&item_id);
                if let Some(i) = self.item_mut(local) {
                    if i.text.len() < 8_000 {
                        i.text.push_str(&delta);
                    }
                }
            }
            RealtimeEvent::FunctionCall {
                call_id,
                name,
                arguments,
            } => self.on_function_call(call_id, name, arguments).await,
            RealtimeEvent::ResponseDone {
                response_id,
                status,
            } => self.on_response_done(response_id, status).await,
            RealtimeEvent::Error { code, message } => {
                let code = code.unwrap_or_default();
                // Races we cause ourselves (cancel/truncate after the server moved on).
                let benign = code.contains("cancel")
                    || code.contains("truncat")
                    || message.contains("no active response");
                if benign {
                    tracing::debug!(%code, %message, "realtime: server refused a late event");
                    return;
                }
                tracing::warn!(%code, %message, "realtime: server error event");
                self.p
                    .metrics
                    .provider_errors
                    .fetch_add(1, Ordering::Relaxed);
                // Waiting for a reply that this error means will not come: say so now.
                let fatal_code = matches!(
                    code.as_str(),
                    "rate_limit_exceeded"
                        | "insufficient_quota"
                        | "server_error"
                        | "internal_error"
                ) || code.contains("limit");
                if fatal_code && (self.awaiting.is_some() || self.response.is_some()) {
                    self.response = None;
                    self.failure(format!("{code}: {message}"), false).await;
                }
            }
            RealtimeEvent::Closed(e) => {
                self.link_up = false;
                self.p
                    .metrics
                    .provider_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "realtime: connection lost");
                self.fatal(format!("realtime: {e}")).await;
            }
        }
    }

    fn on_audio(&mut self, item_id: &str, audio: &[u8]) {
        if audio.is_empty() || !self.link_up {
            return;
        }
        let local = self.vendor_item(item_id);
        let Some(i) = self.item_mut(local) else {
            return;
        };
        if i.interrupted || i.done {
            return; // a cancelled reply's leftovers
        }
        if i.received == 0 {
            i.clock.tts_first_audio = Some(Instant::now());
        }
        i.received += audio.len() as u64;
        let pcm: Vec<i16> = audio.iter().map(|&b| proto::g711::ulaw_decode(b)).collect();
        self.awaiting = None;
        if let Some(r) = &mut self.response {
            r.clock.tts_first_audio.get_or_insert(Instant::now());
        }
        let (accepted, full) = {
            let mut q = lock(&self.queue);
            let before = q.dropped;
            (q.push(local, &pcm), q.dropped > before)
        };
        if !accepted && full {
            self.play_dropped += 1;
            if self.play_dropped.is_power_of_two() {
                tracing::warn!(
                    deltas = self.play_dropped,
                    "realtime: play queue full, agent audio dropped"
                );
            }
        }
        self.wake_player();
    }

    async fn on_speech_started(&mut self) {
        self.clock = TurnClock::default();
        self.awaiting = None;
        let talking = lock(&self.queue).busy();
        let in_flight = self.response.as_ref().map(|r| r.id.clone());
        if talking {
            self.barge_in().await;
        }
        if let Some(id) = in_flight {
            if self.cancelled_response.as_deref() != Some(id.as_str()) {
                self.cancelled_response = Some(id.clone());
                self.send(json!({"type": "response.cancel", "response_id": id}))
                    .await;
                // Whatever it already said unheard is cut too.
                for i in self.items.iter_mut().filter(|i| i.response == id) {
                    if matches!(i.played, Played::Queued) && i.heard_ms.is_none() {
                        i.interrupted = true;
                        i.heard_ms = Some(0);
                    }
                }
            }
        }
    }

    /// The caller talks over the agent: stop, tell the bridge, truncate what was not heard.
    async fn barge_in(&mut self) {
        let now = Instant::now();
        self.p.metrics.interruptions.fetch_add(1, Ordering::Relaxed);
        let upto = self.next_local.saturating_sub(1);
        let cut = lock(&self.queue).cancel(upto, now);
        self.wake_player();
        // The utterance being heard (its Started report may still be on its way).
        let label = match cut {
            Some((local, pushed)) => {
                let k = match self.utterances.by_reply(local) {
                    Some(r) => r.k,
                    None => self.utterances.started(local),
                };
                if let Some(r) = self.utterances.by_reply(local) {
                    r.interrupted = true;
                    r.total_ms = pushed;
                    r.finished = true;
                }
                Some(self.utterances.label(k))
            }
            None => None,
        };
        tracing::info!(utterance = ?label, "barge-in");
        if label.is_some() {
            self.send_control(&Control::Interrupt {
                utterance_id: label,
            })
            .await;
        }
        let mut zero_truncates = Vec::new();
        for i in self.items.iter_mut() {
            if matches!(i.played, Played::Finished(_) | Played::Cancelled(_))
                || i.heard_ms.is_some()
            {
                continue;
            }
            if i.local > upto {
                continue;
            }
            i.interrupted = true;
            match cut {
                Some((local, pushed)) if local == i.local => {
                    i.played = Played::Cancelled(pushed);
                    self.truncates.push(PendingTruncate {
                        local,
                        pushed_ms: pushed,
                        deadline: now + REPORT_WAIT,
                    });
                }
                _ => {
                    // Never heard at all.
                    i.played = Played::Cancelled(0);
                    i.heard_ms = Some(0);
                    if !i.id.is_empty() && i.received > 0 {
                        zero_truncates.push(i.id.clone());
                    }
                }
            }
        }
        for id in zero_truncates {
            self.truncate(&id, 0).await;
        }
        // The caller talked over a normal goodbye: keep listening. (A failure's goodbye is not
        // cancelled: the line to the model is gone.)
        if self
            .pending_end
            .as_ref()
            .is_some_and(|pe| pe.outcome.is_none())
        {
            tracing::info!("caller spoke over the closing line; the call goes on");
            self.pending_end = None;
        }
        self.end_request = None;
        self.settle_all().await;
    }

    async fn truncate(&mut self, item_id: &str, audio_end_ms: u32) {
        tracing::info!(item = %item_id, audio_end_ms, "truncating the assistant item to what was heard");
        self.send(
            json!({"type": "conversation.item.truncate", "item_id": item_id,
            "content_index": 0, "audio_end_ms": audio_end_ms}),
        )
        .await;
    }

    /// Sends the truncations whose heard position is now known (the bridge's report, or the
    /// wait is over).
    async fn resolve_truncates(&mut self, now: Instant) {
        let mut ready = Vec::new();
        self.truncates.retain(|t| {
            let report = self
                .items
                .iter()
                .find(|i| i.local == t.local)
                .and_then(|i| i.bridge_heard);
            if report.is_some() || now >= t.deadline {
                ready.push((t.local, t.pushed_ms, report));
                false
            } else {
                true
            }
        });
        for (local, pushed, report) in ready {
            let Some(i) = self.item_mut(local) else {
                continue;
            };
            let heard = report.unwrap_or(pushed).min(pushed).min(i.received_ms());
            i.heard_ms = Some(heard);
            if report.is_none() {
                tracing::debug!(
                    local,
                    pushed,
                    "no playback report from the bridge; truncating at what was pushed"
                );
            }
            let id = i.id.clone();
            if !id.is_empty() {
                self.truncate(&id, heard).await;
            }
        }
        self.settle_all().await;
    }

    async fn on_function_call(&mut self, call_id: String, name: String, arguments: String) {
        let args: Value = serde_json::from_str(&arguments).unwrap_or(Value::Null);
        tracing::info!(%name, %arguments, "realtime tool call");
        let spec = self.p.spec.clone();
        let output = match name.as_str() {
            "record_field" => session::record_field(
                &spec,
                self.p.recorder.as_ref(),
                &self.call_id,
                &mut self.fields,
                &args,
            ),
            "end_call" => {
                let line = args["message"]
                    .as_str()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .unwrap_or(&spec.closing)
                    .to_string();
                self.end_request = Some((
                    EndAction::Hangup {
                        reason: "end_call".into(),
                    },
                    line,
                ));
                "ok: say the goodbye now; the call ends after it".into()
            }
            "transfer" => {
                let to = args["number"]
                    .as_str()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .or_else(|| spec.transfer_number.clone())
                    .unwrap_or_default();
                if to.is_empty() {
                    "error: no number".into()
                } else {
                    self.end_request =
                        Some((EndAction::Transfer { to }, spec.transfer_line.clone()));
                    "ok: transferring after this message".into()
                }
            }
            other => format!("error: no tool {other:?}"),
        };
        self.tool_outputs.push((call_id, output));
        // Fields ride on every transcript line; a field-only update has an empty text.
        self.send_transcript("fields", "").await;
        if self.response.is_none() {
            // The call came after its response was done (should not happen): answer now.
            self.flush_tools(true).await;
        }
    }

    /// Sends the function outputs, then asks for the next reply (the closing line when the
    /// call is ending).
    async fn flush_tools(&mut self, respond: bool) {
        let outputs = std::mem::take(&mut self.tool_outputs);
        let end = self.end_request.take();
        if outputs.is_empty() && end.is_none() {
            return;
        }
        for (call_id, output) in outputs {
            self.send(json!({"type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output}}))
                .await;
        }
        if !respond {
            return;
        }
        match end {
            Some((action, line)) => {
                let instructions = format!(
                    "Say exactly this to the caller, then stop: \"{}\"",
                    line.replace('"', "'")
                );
                self.send(json!({"type": "response.create",
                    "response": {"instructions": instructions, "tool_choice": "none"}}))
                    .await;
                self.pending_end = Some(PendingEnd {
                    action,
                    outcome: None,
                    waiting_response: true,
                    waiting_local: false,
                    spoken_before: self.utterances.spoken(),
                    idle_since: None,
                    deadline: Self::now_deadline(END_DEADLINE),
                });
            }
            None => self.send(json!({"type": "response.create"})).await,
        }
        self.awaiting = Some(Self::now_deadline(RESPONSE_TIMEOUT));
    }

    async fn on_response_done(&mut self, response_id: String, status: String) {
        let was = match &self.response {
            Some(r) if r.id == response_id || response_id.is_empty() => self.response.take(),
            _ => None,
        };
        let cancelled = status == "cancelled"
            || self.cancelled_response.as_deref() == Some(response_id.as_str());
        if self.cancelled_response.as_deref() == Some(response_id.as_str()) {
            self.cancelled_response = None;
        }
        let mut had_audio = false;
        let mut to_end = Vec::new();
        for i in self.items.iter_mut() {
            if i.done || (i.response != response_id && !response_id.is_empty()) || i.id.is_empty() {
                continue;
            }
            i.done = true;
            had_audio |= i.received > 0;
            if i.received > 0 {
                to_end.push(i.local);
            } else if i.played == Played::Queued {
                // Text only, or cut before any audio came.
                if i.interrupted {
                    i.played = Played::Cancelled(0);
                    i.heard_ms.get_or_insert(0);
                } else {
                    i.played = Played::Finished(0);
                }
            }
        }
        {
            let mut q = lock(&self.queue);
            for local in to_end {
                q.end(local);
            }
        }
        self.wake_player();
        // The model's lines, as soon as they are known.
        let lines: Vec<(u64, String)> = self
            .items
            .iter()
            .filter(|i| i.done && !i.transcript_sent && !i.text.trim().is_empty())
            .map(|i| (i.local, i.text.trim().to_string()))
            .collect();
        for (local, text) in lines {
            tracing::info!(%text, "agent");
            self.send_transcript("assistant", &text).await;
            if let Some(i) = self.item_mut(local) {
                i.transcript_sent = true;
            }
        }
        if let Some(pe) = &mut self.pending_end {
            if pe.waiting_response && was.is_some() {
                pe.waiting_response = false;
            }
        }
        match status.as_str() {
            "failed" => {
                self.tool_outputs.clear();
                self.end_request = None;
                self.failure(format!("response {response_id} failed"), true)
                    .await;
            }
            _ if cancelled => {
                // Tool calls it made still want their outputs; the caller is talking, so no
                // new reply is asked for (server VAD makes one when they stop).
                self.end_request = None;
                self.flush_tools(false).await;
            }
            _ => {
                if had_audio {
                    self.failures = 0;
                }
                self.awaiting = None;
                self.flush_tools(true).await;
            }
        }
        self.settle_all().await;
    }

    /// Something went wrong with a reply: apologise and ask again, or give up after
    /// [`MAX_FAILURES`] in a row.
    async fn failure(&mut self, what: String, count: bool) {
        if count {
            self.p
                .metrics
                .provider_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        self.failures += 1;
        self.awaiting = None;
        tracing::warn!(%what, failures = self.failures, "realtime reply failed");
        if !self.link_up || self.failures >= MAX_FAILURES {
            self.fatal(format!("realtime: {what}")).await;
        } else {
            self.say_local(REPROMPT_LINE);
        }
    }

    /// The model cannot go on: a local apology, then hang up.
    async fn fatal(&mut self, what: String) {
        if self
            .pending_end
            .as_ref()
            .is_some_and(|pe| pe.outcome.is_some())
        {
            return;
        }
        self.awaiting = None;
        // Nothing more goes to or comes from the model.
        if self.link_up {
            self.link_up = false;
            let _ = self.ctl_tx.try_send(LinkCmd::Close);
        }
        let upto = self.next_local.saturating_sub(1);
        let _ = lock(&self.queue).cancel(upto, Instant::now());
        self.wake_player();
        let spoken_before = self.utterances.spoken();
        self.say_local(APOLOGY_LINE);
        self.pending_end = Some(PendingEnd {
            action: EndAction::Hangup {
                reason: "agent unavailable".into(),
            },
            outcome: Some(format!("error: {what}")),
            waiting_response: false,
            waiting_local: true,
            spoken_before,
            idle_since: None,
            deadline: Self::now_deadline(END_DEADLINE),
        });
    }

    /// Speaks a line with the stack's own TTS (the fallback voice).
    fn say_local(&mut self, text: &str) -> u64 {
        let local = self.new_item("", "");
        if let Some(i) = self.item_mut(local) {
            i.text = text.to_string();
            i.done = true;
        }
        let (tts, q, wake, tx, text) = (
            self.p.stack.tts.clone(),
            self.queue.clone(),
            self.wake.clone(),
            self.local_tx.clone(),
            text.to_string(),
        );
        tokio::spawn(async move {
            let ok = match synth_8k(tts, text).await {
                Ok(pcm) if !pcm.is_empty() => {
                    let mut g = lock(&q);
                    let ok = g.push(local, &pcm);
                    g.end(local);
                    ok
                }
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "fallback line could not be synthesized");
                    false
                }
            };
            wake.notify_one();
            let _ = tx.send(LocalDone { local, ok }).await;
        });
        local
    }

    async fn on_local_done(&mut self, d: LocalDone) {
        let text = self.item_mut(d.local).map(|i| {
            if d.ok {
                i.received = 1; // has audio: settles when played
            } else {
                i.played = Played::Finished(0);
            }
            i.text.clone()
        });
        if let Some(pe) = &mut self.pending_end {
            pe.waiting_local = false;
        }
        if let Some(text) = text {
            if d.ok {
                self.send_transcript("assistant", &text).await;
            }
            if let Some(i) = self.item_mut(d.local) {
                i.transcript_sent = true;
            }
        }
        self.settle_all().await;
    }

    fn on_play_event(&mut self, ev: PlayEvent) {
        match ev {
            PlayEvent::Started { item, at } => {
                if self.utterances.by_reply(item).is_none() {
                    let k = self.utterances.started(item);
                    tracing::debug!(item, utterance = %self.utterances.label(k), "speaking");
                }
                if let Some(i) = self.item_mut(item) {
                    if i.played == Played::Queued {
                        i.played = Played::Playing;
                    }
                    i.clock.first_frame.get_or_insert(at);
                }
            }
            PlayEvent::Finished { item, pushed_ms } => {
                if let Some(r) = self.utterances.by_reply(item) {
                    r.total_ms = pushed_ms;
                    r.finished = true;
                }
                if let Some(i) = self.item_mut(item) {
                    if !matches!(i.played, Played::Cancelled(_)) {
                        i.played = Played::Finished(pushed_ms);
                    }
                }
            }
        }
    }

    /// Writes the call record's row for every item that is complete: its text is final and
    /// what the caller heard of it is known.
    async fn settle_all(&mut self) {
        let mut rows = Vec::new();
        for i in self.items.iter_mut() {
            if i.recorded || !i.done {
                continue;
            }
            let heard = match i.played {
                Played::Finished(_) => None,
                Played::Cancelled(_) => match i.heard_ms {
                    Some(h) => Some(h),
                    None => continue, // waiting for the bridge's report
                },
                Played::Queued | Played::Playing => {
                    if i.interrupted && i.heard_ms.is_some() {
                        i.heard_ms
                    } else {
                        continue;
                    }
                }
            };
            i.recorded = true;
            if i.text.trim().is_empty() {
                continue;
            }
            let heard_text = heard.map(|h| {
                let total = i.received_ms().max(h);
                trim_to_heard(i.text.trim(), h, total).to_string()
            });
            rows.push((
                i.text.trim().to_string(),
                i.started_ms,
                heard.is_some(),
                heard_text,
                i.clock,
                i.received > 0,
            ));
        }
        for (text, started, interrupted, heard, clock, audio) in rows {
            self.record_turn(
                "assistant",
                &text,
                started,
                interrupted,
                heard,
                Some(&clock),
            );
            if audio && clock.first_frame.is_some() {
                self.p.metrics.observe_turn(&clock.timings());
            }
        }
    }

    async fn on_control(&mut self, c: Control) {
        match c {
            Control::Playback {
                utterance_id,
                heard_ms,
                complete,
                interrupted,
            } => {
                let local = self
                    .utterances
                    .playback(&utterance_id, heard_ms, complete, interrupted)
                    .map(|r| (r.reply_id, r.heard_ms));
                if let (Some((local, Some(h))), true) = (local, interrupted) {
                    if let Some(i) = self.item_mut(local) {
                        i.bridge_heard = Some(h);
                    }
                    self.resolve_truncates(Instant::now()).await;
                }
            }
            Control::Dtmf { digit } => {
                tracing::info!(%digit, "caller pressed a key");
                self.record_turn("dtmf", &digit, now_ms(), false, None, None);
            }
            _ => {}
        }
    }

    async fn housekeeping(&mut self) {
        let now = Instant::now();
        if !self.truncates.is_empty() {
            self.resolve_truncates(now).await;
        }
        if self.awaiting.is_some_and(|t| now >= t) {
            self.awaiting = None;
            self.failure("no reply in time".into(), true).await;
        }
        let busy = lock(&self.queue).busy();
        let mut act = false;
        if let Some(pe) = &mut self.pending_end {
            if !pe.waiting_response && !pe.waiting_local && !busy {
                let since = *pe.idle_since.get_or_insert(now);
                let spoke = self.utterances.spoken() > pe.spoken_before;
                let heard = !spoke || self.utterances.latest().is_some_and(|r| r.complete);
                act = heard || now.saturating_duration_since(since) >= END_GRACE;
            } else {
                pe.idle_since = None;
            }
            act |= now >= pe.deadline;
        }
        if act {
            if let Some(pe) = self.pending_end.take() {
                let (control, outcome) =
                    session::end_action_effect(&self.p.spec, &self.fields, pe.action);
                self.send_control(&control).await;
                self.outcome = Some(pe.outcome.unwrap_or(outcome));
            }
        }
    }
}

/// Holds the call on OpenAI Realtime until it ends (called by [`session::run`] for a stack
/// with [`crate::stack::Stack::realtime`]).
pub(crate) async fn converse(
    room: &Room,
    events: &mut mpsc::Receiver<RoomEvent>,
    p: &SessionParams,
    mut cfg: RealtimeConfig,
    call_id: &str,
    phone: &Participant,
    track: RemoteAudioTrack,
) -> Outcome {
    let spec = p.spec.clone();
    let fail = |m: String| Outcome {
        outcome: format!("error: {m}"),
        fields: Fields::new(),
        turns: 0,
    };
    if cfg.instructions.trim().is_empty() {
        cfg.instructions = session::system_prompt(&spec);
    }
    if cfg.tools.is_empty() {
        cfg.tools = session::tools(&spec);
    }
    let sink = match session::publish_agent_track(&room, RATE).await {
        Ok(s) => s,
        Err(e) => return fail(format!("publish: {e}")),
    };
    let audio = match track.stream(RATE) {
        Ok(a) => a,
        Err(e) => return fail(format!("subscribe at {RATE} Hz: {e}")),
    };
    let gap = Duration::from_millis(spec.turn.reply_gap_ms as u64);
    let queue: SharedQueue = Arc::new(Mutex::new(PlayQueue::new(gap, MAX_QUEUED)));
    let wake = Arc::new(Notify::new());
    let (play_tx, mut play_rx) = mpsc::channel::<PlayEvent>(256);
    let player_h = tokio::spawn(player(
        sink,
        queue.clone(),
        wake.clone(),
        p.metrics.clone(),
        play_tx,
    ));

    let (ctl_tx, ctl_rx) = mpsc::channel::<LinkCmd>(64);
    let (audio_tx, audio_rx) = mpsc::channel::<Vec<u8>>(UPLINK_FRAMES);
    let (ev_tx, mut ev_rx) = mpsc::channel::<RealtimeEvent>(256);
    let (local_tx, mut local_rx) = mpsc::channel::<LocalDone>(8);
    tracing::info!(url = %cfg.url(), voice = %cfg.voice, "connecting to OpenAI Realtime");
    let connected = RealtimeSession::connect(cfg).await;
    let link_h = match connected {
        Ok(rt) => Some(tokio::spawn(link(rt, audio_rx, ctl_rx, ev_tx))),
        Err(e) => {
            drop((audio_rx, ctl_rx, ev_tx));
            p.metrics.provider_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "OpenAI Realtime refused the session");
            let mut s = Rt::new(
                room,
                p,
                call_id,
                queue.clone(),
                wake.clone(),
                ctl_tx.clone(),
                audio_tx.clone(),
                false,
                local_tx.clone(),
            );
            s.fatal(format!("realtime: {e}")).await;
            return finish(
                s,
                events,
                phone,
                audio,
                &mut play_rx,
                &mut ev_rx,
                &mut local_rx,
                player_h,
                None,
            )
            .await;
        }
    };
    let mut s = Rt::new(
        room,
        p,
        call_id,
        queue.clone(),
        wake.clone(),
        ctl_tx,
        audio_tx,
        true,
        local_tx,
    );
    // The greeting, in the model's voice.
    let greeting = spec.greeting.replace('"', "'");
    s.send(json!({"type": "response.create", "response": {
        "instructions": format!("Greet the caller by saying exactly: \"{greeting}\""),
    }}))
    .await;
    s.awaiting = Some(Rt::now_deadline(RESPONSE_TIMEOUT));
    finish(
        s,
        events,
        phone,
        audio,
        &mut play_rx,
        &mut ev_rx,
        &mut local_rx,
        player_h,
        link_h,
    )
    .await
}

impl Rt {
    #[allow(clippy::too_many_arguments)]
    fn new(
        room: &Room,
        p: &SessionParams,
        call_id: &str,
        queue: SharedQueue,
        wake: Arc<Notify>,
        ctl_tx: mpsc::Sender<LinkCmd>,
        audio_tx: mpsc::Sender<Vec<u8>>,
        link_up: bool,
        local_tx: mpsc::Sender<LocalDone>,
    ) -> Rt {
        Rt {
            room: room.clone(),
            p: p.clone(),
            call_id: call_id.to_string(),
            fields: Fields::new(),
            items: VecDeque::new(),
            next_local: 1,
            utterances: UtteranceMap::default(),
            queue,
            wake,
            ctl_tx,
            audio_tx,
            link_up,
            response: None,
            cancelled_response: None,
            tool_outputs: Vec::new(),
            end_request: None,
            pending_end: None,
            truncates: Vec::new(),
            awaiting: None,
            failures: 0,
            clock: TurnClock::default(),
            seq: 0,
            turns: 0,
            outcome: None,
            uplink_dropped: 0,
            play_dropped: 0,
            local_tx,
        }
    }
}

/// The main loop, then the wind-down.
#[allow(clippy::too_many_arguments)]
async fn finish(
    mut s: Rt,
    events: &mut mpsc::Receiver<RoomEvent>,
    phone: &Participant,
    mut audio: room::AudioStream,
    play_rx: &mut mpsc::Receiver<PlayEvent>,
    ev_rx: &mut mpsc::Receiver<RealtimeEvent>,
    local_rx: &mut mpsc::Receiver<LocalDone>,
    player_h: tokio::task::JoinHandle<()>,
    link_h: Option<tokio::task::JoinHandle<()>>,
) -> Outcome {
    let phone_id = phone.identity.clone();
    // DTX pauses in the caller's track become silence on the wall clock: server VAD needs
    // the quiet after speech to end the turn.
    let mut silence = SilenceFill::new();
    let silent = vec![0i16; FRAME_SAMPLES];
    let mut housekeeping = tokio::time::interval(Duration::from_millis(50));
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut audio_open = true;
    let mut link_events_open = s.link_up;
    while s.outcome.is_none() {
        tokio::select! {
            frame = audio.recv(), if audio_open => {
                let Some(frame) = frame else {
                    audio_open = false;
                    continue;
                };
                let pause = silence.on_frame(frame.rtp_timestamp, Instant::now());
                for _ in 0..pause.min(50) {
                    s.send_caller(&silent);
                }
                s.send_caller(&frame.samples);
            }
            _ = sleep_until_opt(silence.next_deadline()), if audio_open => {
                for _ in 0..silence.on_timer(Instant::now()).min(50) {
                    s.send_caller(&silent);
                }
            }
            ev = ev_rx.recv(), if link_events_open => {
                match ev {
                    Some(ev) => s.on_event(ev).await,
                    None => {
                        link_events_open = false;
                        if s.link_up {
                            s.link_up = false;
                            s.p.metrics.provider_errors.fetch_add(1, Ordering::Relaxed);
                            s.fatal("realtime: link ended".into()).await;
                        }
                    }
                }
            }
            ev = play_rx.recv() => {
                let Some(ev) = ev else {
                    s.outcome = Some("room_closed".into());
                    continue;
                };
                s.on_play_event(ev);
                s.settle_all().await;
            }
            d = local_rx.recv() => {
                if let Some(d) = d {
                    s.on_local_done(d).await;
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else {
                    s.outcome = Some("room_closed".into());
                    continue;
                };
                match classify(ev, &phone_id) {
                    CallEvent::Control(c) => s.on_control(c).await,
                    CallEvent::Ended(why) => s.outcome = Some(why.into()),
                    CallEvent::CallerTrack(track) => match track.stream(RATE) {
                        Ok(a) => {
                            tracing::info!(track = %track.sid(), "caller audio track (re)subscribed");
                            audio = a;
                            silence = SilenceFill::new();
                            audio_open = true;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot decode the caller's new track"),
                    },
                    CallEvent::Other => {}
                }
            }
            _ = housekeeping.tick() => s.housekeeping().await,
        }
    }
    // Wind down: stop talking, record what is left, close the socket, let the last control
    // messages out.
    let _ = lock(&s.queue).cancel(u64::MAX, Instant::now());
    s.wake_player();
    for i in s.items.iter_mut() {
        if !i.recorded {
            i.done = true;
            if !matches!(i.played, Played::Finished(_)) {
                let heard = match i.played {
                    Played::Cancelled(ms) => ms,
                    _ => 0,
                };
                i.played = Played::Cancelled(heard);
                i.heard_ms.get_or_insert(heard);
            }
        }
    }
    s.settle_all().await;
    if s.uplink_dropped > 0 {
        tracing::warn!(
            frames = s.uplink_dropped,
            "caller audio frames dropped on the way to the model"
        );
    }
    let _ = s.ctl_tx.try_send(LinkCmd::Close);
    if let Some(h) = link_h {
        let abort = h.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    player_h.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Outcome {
        outcome: s.outcome.clone().unwrap_or_default(),
        fields: s.fields.clone(),
        turns: s.turns,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(q: &mut PlayQueue, t0: Instant, until_ms: u64) -> Vec<(u64, usize)> {
        // (time ms, frame index) of every frame pushed, polling every 5 ms.
        let mut out = Vec::new();
        let mut t = 0;
        while t <= until_ms {
            while let Step::Frame(_) = q.poll(t0 + ms(t)) {
                out.push((t, out.len()));
            }
            t += 5;
        }
        out
    }

    #[test]
    fn items_play_on_a_20ms_grid_with_a_gap_between() {
        let t0 = Instant::now();
        let mut q = PlayQueue::new(ms(300), MAX_QUEUED);
        assert_eq!(q.poll(t0), Step::Idle);
        assert!(q.push(1, &vec![100; 800])); // 100 ms
        q.end(1);
        assert!(q.push(2, &vec![100; 480])); // 60 ms
        q.end(2);
        let frames = drain(&mut q, t0, 1000);
        assert_eq!(frames.len(), 8);
        let times: Vec<u64> = frames.iter().map(|f| f.0).collect();
        assert_eq!(&times[..5], &[0, 20, 40, 60, 80]);
        // Item 2 starts 300 ms after item 1's last frame.
        assert_eq!(times[5], 380);
        let ev = q.take_events();
        assert_eq!(ev.len(), 4, "{ev:?}");
        assert!(matches!(
            ev[1],
            PlayEvent::Finished {
                item: 1,
                pushed_ms: 100
            }
        ));
        assert!(matches!(
            ev[3],
            PlayEvent::Finished {
                item: 2,
                pushed_ms: 60
            }
        ));
        assert!(!q.busy());
    }

    #[test]
    fn late_audio_is_bridged_with_silence_and_cancel_reports_what_was_pushed() {
        let t0 = Instant::now();
        let mut q = PlayQueue::new(ms(300), MAX_QUEUED);
        // Less than the prebuffer: not started.
        q.push(1, &vec![100; 320]);
        assert_eq!(q.poll(t0), Step::Idle);
        q.push(1, &vec![100; 160]);
        assert!(matches!(q.poll(t0), Step::Frame(_)));
        assert!(matches!(q.poll(t0 + ms(20)), Step::Frame(_)));
        assert!(matches!(q.poll(t0 + ms(40)), Step::Frame(_)));
        // Out of audio, not ended: silence keeps the utterance going.
        assert_eq!(q.poll(t0 + ms(60)), Step::Frame(vec![0; FRAME_SAMPLES]));
        assert_eq!(q.underruns, 1);
        assert_eq!(q.playing(), Some(1));
        assert_eq!(q.cancel(1, t0 + ms(70)), Some((1, 80)));
        assert!(!q.busy());
        // Leftovers of a cancelled item are refused.
        assert!(!q.push(1, &[1; 160]));
        // The next item waits the gap after the cut.
        q.push(2, &vec![5; 800]);
        assert_eq!(q.poll(t0 + ms(80)), Step::Wait(t0 + ms(370)));
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut q = PlayQueue::new(ms(300), ms(100));
        assert!(q.push(1, &vec![1; 800]));
        assert!(!q.push(1, &[1; 160]));
        assert_eq!(q.dropped, 160);
        // Older items than the last queued are stale.
        assert!(q.push(3, &[]));
        assert!(!q.push(0, &[1]));
    }
}
