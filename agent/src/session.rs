//! One call's conversation loop.
//!
//! ```text
//! phone track ─▶ AudioStream @ STT rate ─▶ VAD (barge-in, end of speech) ─▶ STT task ─▶ end of turn
//!   end of turn ─▶ reply task: LLM stream ─▶ sentences ─▶ TTS (one stream per sentence) ─▶ player
//!   player: 20 ms frames on an absolute 20 ms grid ─▶ AudioSink (published at the TTS rate)
//! bridge control (playback, dtmf) ◀─▶ data topic `callbridge.control`; transcripts on `transcript`
//! ```
//!
//! The main loop owns the history, the form and the call record; the STT session, each reply
//! (LLM + TTS) and the player run as their own tasks and talk to it through bounded channels,
//! so a slow vendor never blocks the caller's audio. Barge-in aborts the reply task, empties
//! the player, sends `interrupt` to the bridge and trims the assistant's last message to what
//! the bridge says was heard (see [`crate::turn`] for how replies map to bridge utterances).
//!
//! With a Realtime model in the stack ([`Stack::realtime`]) the same join (phone participant,
//! call record) leads to [`crate::realtime_session`] instead of this loop.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::control::{Control, CONTROL_TOPIC, TRANSCRIPT_TOPIC};
use room::{
    AudioSink, AudioTrackOptions, DataPacketBuilder, Participant, ParticipantKind,
    RemoteAudioTrack, Room, RoomEvent,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::config::AgentSpec;
use crate::metrics::{Metrics, TurnClock};
use crate::providers::{
    ChatMessage, Fields, LlmEvent, LlmProvider, Role, SttEvent, SttSession, ToolCall, ToolSpec,
    TtsEvent, TtsProvider,
};
use crate::record::{now_ms, CallInfo, Recorder, TurnRow};
use crate::call_events::{classify, CallEvent};
use crate::silence_fill::SilenceFill;
use crate::stack::Stack;
use crate::turn::{Segment, UtteranceMap};
use crate::vad::{Vad, VadConfig, VadEvent};

/// Everything a session needs besides the room.
#[derive(Clone)]
pub struct SessionParams {
    pub spec: Arc<AgentSpec>,
    pub stack: Stack,
    pub recorder: Option<Recorder>,
    pub metrics: Arc<Metrics>,
    /// How long to wait for the phone participant's audio.
    pub phone_wait: Duration,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `completed` (form done, hung up), `transferred`, `caller_hung_up`, `caller_goodbye`,
    /// `no_caller`, `room_closed`, `error: …`.
    pub outcome: String,
    pub fields: Fields,
    pub turns: u32,
}

// ---- helpers -------------------------------------------------------------------------------

/// The tools every agent offers the model.
pub fn tools(spec: &AgentSpec) -> Vec<ToolSpec> {
    let names: Vec<&str> = spec.fields.iter().map(|f| f.name.as_str()).collect();
    vec![
        ToolSpec {
            name: "record_field".into(),
            description: "Record one field of the form as soon as the caller gives it.".into(),
            parameters: serde_json::json!({
                "type": "object",
                "properties": {"field": {"type": "string", "enum": names}, "value": {"type": "string"}},
                "required": ["field", "value"]
            }),
        },
        ToolSpec {
            name: "end_call".into(),
            description: "Say a last message and hang up (when the form is complete or the caller says goodbye).".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}),
        },
        ToolSpec {
            name: "transfer".into(),
            description: "Transfer the caller to a person at this phone number.".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]}),
        },
    ]
}

/// The system prompt: persona plus the form.
pub fn system_prompt(spec: &AgentSpec) -> String {
    let mut s = spec.persona.trim().to_string();
    s.push_str("\n\nFields to collect (call record_field for each):\n");
    for f in &spec.fields {
        let desc = if f.description.is_empty() {
            &f.question
        } else {
            &f.description
        };
        s.push_str(&format!(
            "- {}: {} (ask: \"{}\")\n",
            f.name, desc, f.question
        ));
    }
    if let Some(n) = &spec.transfer_number {
        s.push_str(&format!("Transfer number: {n}\n"));
    }
    s.push_str(&format!(
        "When every field is recorded, call end_call with: \"{}\"\n",
        spec.closing
    ));
    s
}

/// Splits streamed text into sentences for the TTS: at `.`, `?`, `!`, `;` or a newline followed
/// by whitespace, once a sentence has at least `min_chars` (short ones join the next).
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buf: String,
    min_chars: usize,
}

impl SentenceSplitter {
    pub fn new(min_chars: usize) -> Self {
        SentenceSplitter {
            buf: String::new(),
            min_chars,
        }
    }

    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            let bytes = self.buf.as_bytes();
            let mut cut = None;
            for i in 0..bytes.len() {
                let c = bytes[i];
                let end = matches!(c, b'.' | b'?' | b'!' | b';')
                    && bytes.get(i + 1).is_some_and(|n| n.is_ascii_whitespace());
                if (end || c == b'\n') && i + 1 >= self.min_chars {
                    cut = Some(i + 1);
                    break;
                }
            }
            match cut {
                Some(i) => {
                    let s: String = self.buf.drain(..i).collect();
                    if !s.trim().is_empty() {
                        out.push(s.trim().to_string());
                    }
                }
                None => break,
            }
        }
        out
    }

    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        (!s.trim().is_empty()).then(|| s.trim().to_string())
    }
}

// ---- the player --------------------------------------------------------------------------

#[derive(Debug)]
enum PlayerCmd {
    Audio {
        reply: u64,
        seg: usize,
        pcm: Vec<i16>,
    },
    End {
        reply: u64,
    },
    Cancel {
        reply: u64,
    },
}

#[derive(Debug)]
enum PlayerEvent {
    Started {
        reply: u64,
        at: Instant,
    },
    /// All audio pushed. `segs`: (segment, start ms, end ms) of each sentence's audio.
    Finished {
        reply: u64,
        total_ms: u32,
        segs: Vec<(usize, u32, u32)>,
    },
    /// Stopped by barge-in after `pushed_ms`; `segs` as enqueued (audio past `pushed_ms` was
    /// never sent).
    Cancelled {
        reply: u64,
        pushed_ms: u32,
        segs: Vec<(usize, u32, u32)>,
    },
}

/// Pushes replies into the published track, one 20 ms frame per tick of an absolute 20 ms grid
/// (never faster than real time; if the task falls more than 100 ms behind the grid is reset
/// instead of bursting). Mid-reply underruns are filled with silence so the bridge sees one
/// utterance per reply; between replies it keeps `gap` of quiet.
async fn player(
    mut sink: AudioSink,
    rate: u32,
    gap: Duration,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<PlayerCmd>,
    mut ctl_rx: mpsc::Receiver<PlayerCmd>,
    tx: mpsc::Sender<PlayerEvent>,
) {
    const FRAME: Duration = Duration::from_millis(20);
    // At most this much audio waits here; beyond it the TTS is held back (bounded memory),
    // while cancels still come through on their own channel.
    let max_queue = rate as usize * 60;
    let n = (rate / 50) as usize;
    let mut queue: VecDeque<i16> = VecDeque::new();
    // Where each segment starts, in samples of the reply.
    let mut seg_marks: Vec<(usize, u64)> = Vec::new();
    let mut enqueued: u64 = 0;
    let mut pushed: u64 = 0;
    let mut current: Option<u64> = None;
    let mut ended = false;
    let mut started = false;
    let mut last_frame: Option<Instant> = None;
    // Replies are numbered upwards: anything at or below this one is over (leftovers of a
    // cancelled reply still in the channel are dropped).
    let mut done_upto: u64 = 0;
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let ms = |samples: u64| (samples * 1000 / rate as u64) as u32;
    let table = |marks: &[(usize, u64)], total: u64| -> Vec<(usize, u32, u32)> {
        marks
            .iter()
            .enumerate()
            .map(|(i, &(seg, start))| (seg, ms(start), ms(marks.get(i + 1).map_or(total, |m| m.1))))
            .collect()
    };
    loop {
        let active = current.is_some() && (!queue.is_empty() || started);
        let full = queue.len() >= max_queue;
        tokio::select! {
            cmd = async {
                tokio::select! {
                    biased;
                    c = ctl_rx.recv() => c,
                    c = rx.recv(), if !full => c,
                }
            } => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    PlayerCmd::Audio { reply, seg, pcm } => {
                        if reply <= done_upto {
                            continue;
                        }
                        if current != Some(reply) {
                            if current.is_some() {
                                // The session starts a reply only after the previous one
                                // finished or was cancelled; anything else is stale.
                                continue;
                            }
                            current = Some(reply);
                            queue.clear();
                            seg_marks.clear();
                            enqueued = 0;
                            pushed = 0;
                            ended = false;
                            started = false;
                        }
                        if seg_marks.last().is_none_or(|(s, _)| *s != seg) {
                            seg_marks.push((seg, enqueued));
                        }
                        enqueued += pcm.len() as u64;
                        queue.extend(pcm);
                        if !started {
                            // Start on the grid, after the inter-reply gap.
                            let at = last_frame.map_or_else(Instant::now, |t| (t + gap).max(Instant::now()));
                            tick.reset_at(at.into());
                        }
                    }
                    PlayerCmd::End { reply } => {
                        if current == Some(reply) {
                            ended = true;
                            if !started && queue.is_empty() {
                                current = None;
                                done_upto = done_upto.max(reply);
                                let _ = tx.send(PlayerEvent::Finished { reply, total_ms: 0, segs: vec![] }).await;
                            }
                        } else if reply > done_upto {
                            // A reply without any audio.
                            done_upto = reply;
                            let _ = tx.send(PlayerEvent::Finished { reply, total_ms: 0, segs: vec![] }).await;
                        }
                    }
                    PlayerCmd::Cancel { reply } => {
                        done_upto = done_upto.max(reply);
                        if current == Some(reply) {
                            current = None;
                            queue.clear();
                            let segs = table(&seg_marks, enqueued);
                            seg_marks.clear();
                            if started {
                                last_frame = Some(Instant::now());
                            }
                            let _ = tx.send(PlayerEvent::Cancelled { reply, pushed_ms: ms(pushed), segs }).await;
                        }
                    }
                }
            }
            scheduled = tick.tick(), if active => {
                let Some(reply) = current else { continue };
                let now = Instant::now();
                if now.saturating_duration_since(scheduled.into_std()) > Duration::from_millis(100) {
                    tick.reset(); // fell behind: a new grid from now, no burst
                }
                let mut frame: Vec<i16> = Vec::with_capacity(n);
                if queue.len() >= n || (ended && !queue.is_empty()) {
                    let take = n.min(queue.len());
                    frame.extend(queue.drain(..take));
                    frame.resize(n, 0);
                } else if ended {
                    // Done: everything pushed.
                    current = None;
                    done_upto = done_upto.max(reply);
                    last_frame = Some(now);
                    let segs = table(&seg_marks, pushed);
                    let _ = tx.send(PlayerEvent::Finished { reply, total_ms: ms(pushed), segs }).await;
                    continue;
                } else if started {
                    frame.resize(n, 0); // TTS is late: keep the utterance contiguous
                    metrics.tts_underruns.fetch_add(1, Ordering::Relaxed);
                } else {
                    continue;
                }
                if !started {
                    started = true;
                    let _ = tx.send(PlayerEvent::Started { reply, at: now }).await;
                }
                if sink.push(&frame).await.is_err() {
                    return;
                }
                metrics.frames_pushed.fetch_add(1, Ordering::Relaxed);
                pushed += n as u64;
                last_frame = Some(now);
            }
        }
    }
}

// ---- the STT task ------------------------------------------------------------------------

enum SttIn {
    Audio(Vec<i16>),
    Finalize,
}

async fn stt_task(
    mut session: Box<dyn SttSession>,
    mut rx: mpsc::Receiver<SttIn>,
    tx: mpsc::Sender<SttEvent>,
) {
    let mut send_errors = 0u64;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(SttIn::Audio(pcm)) => {
                    if let Err(e) = session.send_audio(&pcm).await {
                        send_errors += 1;
                        if send_errors.is_power_of_two() {
                            tracing::warn!(error = %e, count = send_errors, "stt: audio not accepted");
                        }
                        if !e.retryable() && matches!(e, crate::providers::ProviderError::Connection { .. }) {
                            let _ = tx.send(SttEvent::Error(e.to_string())).await;
                            return;
                        }
                    }
                }
                Some(SttIn::Finalize) => {
                    if let Err(e) = session.finalize().await {
                        tracing::warn!(error = %e, "stt: finalize failed");
                    }
                }
                None => {
                    session.close().await;
                    return;
                }
            },
            ev = session.next_event() => match ev {
                Some(ev) => {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = tx.send(SttEvent::Error("speech recogniser closed".into())).await;
                    return;
                }
            }
        }
    }
}

// ---- the reply task ----------------------------------------------------------------------

#[derive(Debug)]
enum ReplyEvent {
    FirstToken {
        reply: u64,
        at: Instant,
    },
    FirstAudio {
        reply: u64,
        at: Instant,
    },
    /// A sentence went to the TTS (segment `seg`).
    Sentence {
        reply: u64,
        seg: usize,
        text: String,
    },
    Tool {
        reply: u64,
        call: ToolCall,
    },
    /// The LLM is done and all audio was handed to the player.
    Done {
        reply: u64,
        finish_reason: String,
    },
    Error {
        reply: u64,
        msg: String,
    },
}

enum ReplySource {
    Llm {
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
    },
    Text(String),
}

/// Speaks one sentence: a TTS stream of its own, audio to the player as it comes.
async fn speak_sentence(
    tts: &Arc<dyn TtsProvider>,
    reply: u64,
    seg: usize,
    text: &str,
    player: &mpsc::Sender<PlayerCmd>,
    ev: &mpsc::Sender<ReplyEvent>,
    first_audio: &mut bool,
) -> Result<(), String> {
    let mut s = tts.start().await.map_err(|e| e.to_string())?;
    s.push_text(text).await.map_err(|e| e.to_string())?;
    s.finish().await.map_err(|e| e.to_string())?;
    while let Some(e) = s.next_event().await {
        match e {
            TtsEvent::Audio(pcm) => {
                if pcm.is_empty() {
                    continue;
                }
                if !*first_audio {
                    *first_audio = true;
                    let _ = ev
                        .send(ReplyEvent::FirstAudio {
                            reply,
                            at: Instant::now(),
                        })
                        .await;
                }
                if player
                    .send(PlayerCmd::Audio { reply, seg, pcm })
                    .await
                    .is_err()
                {
                    return Err("player gone".into());
                }
            }
            TtsEvent::Done => return Ok(()),
            TtsEvent::Error(e) => return Err(e),
        }
    }
    Ok(())
}

async fn reply_task(
    reply: u64,
    source: ReplySource,
    llm: Arc<dyn LlmProvider>,
    tts: Arc<dyn TtsProvider>,
    player: mpsc::Sender<PlayerCmd>,
    ev: mpsc::Sender<ReplyEvent>,
) {
    // Sentences are spoken by a second task so the LLM keeps streaming while TTS works.
    let (sent_tx, mut sent_rx) = mpsc::channel::<(usize, String)>(32);
    let speaker = {
        let (tts, player, ev) = (tts.clone(), player.clone(), ev.clone());
        tokio::spawn(async move {
            let mut first_audio = false;
            while let Some((seg, text)) = sent_rx.recv().await {
                if let Err(e) =
                    speak_sentence(&tts, reply, seg, &text, &player, &ev, &mut first_audio).await
                {
                    let _ = ev
                        .send(ReplyEvent::Error {
                            reply,
                            msg: format!("tts: {e}"),
                        })
                        .await;
                    return false;
                }
            }
            true
        })
    };
    let mut seg = 0usize;
    let mut send_sentence = |text: String| {
        let s = seg;
        seg += 1;
        let (sent_tx, ev) = (sent_tx.clone(), ev.clone());
        async move {
            let _ = ev
                .send(ReplyEvent::Sentence {
                    reply,
                    seg: s,
                    text: text.clone(),
                })
                .await;
            let _ = sent_tx.send((s, text)).await;
        }
    };
    let mut finish_reason = "stop".to_string();
    match source {
        ReplySource::Text(t) => send_sentence(t).await,
        ReplySource::Llm { messages, tools } => {
            let mut rx = match llm.stream(&messages, &tools).await {
                Ok(rx) => rx,
                Err(e) => {
                    let _ = ev
                        .send(ReplyEvent::Error {
                            reply,
                            msg: format!("llm: {e}"),
                        })
                        .await;
                    return;
                }
            };
            let mut split = SentenceSplitter::new(12);
            let mut first = true;
            // end_call's message is spoken after whatever the reply says.
            let mut last_words: Option<String> = None;
            while let Some(item) = rx.recv().await {
                // The first text or tool call, whichever comes first, is the reply's first token.
                if first && matches!(item, Ok(LlmEvent::TextDelta(_) | LlmEvent::ToolCall(_))) {
                    first = false;
                    let _ = ev.send(ReplyEvent::FirstToken { reply, at: Instant::now() }).await;
                }
                match item {
                    Ok(LlmEvent::TextDelta(d)) => {
                        for s in split.push(&d) {
                            send_sentence(s).await;
                        }
                    }
                    Ok(LlmEvent::ToolCall(call)) => {
                        if call.name == "end_call" {
                            let m = serde_json::from_str::<serde_json::Value>(&call.arguments)
                                .ok()
                                .and_then(|v| v["message"].as_str().map(str::to_string))
                                .filter(|m| !m.trim().is_empty());
                            last_words = m.or(last_words);
                        }
                        let _ = ev.send(ReplyEvent::Tool { reply, call }).await;
                    }
                    Ok(LlmEvent::Done { finish_reason: f }) => {
                        finish_reason = f;
                        break;
                    }
                    Err(e) => {
                        let _ = ev
                            .send(ReplyEvent::Error {
                                reply,
                                msg: format!("llm: {e}"),
                            })
                            .await;
                        break;
                    }
                }
            }
            if let Some(s) = split.finish() {
                send_sentence(s).await;
            }
            if let Some(s) = last_words {
                send_sentence(s).await;
            }
        }
    }
    drop(sent_tx);
    let ok = speaker.await.unwrap_or(false);
    let _ = player.send(PlayerCmd::End { reply }).await;
    if ok {
        let _ = ev
            .send(ReplyEvent::Done {
                reply,
                finish_reason,
            })
            .await;
    }
}

// ---- the session -------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EndAction {
    Hangup { reason: String },
    Transfer { to: String },
}

struct ActiveReply {
    id: u64,
    task: JoinHandle<()>,
    clock: TurnClock,
    sentences: Vec<String>,
    tool_calls: Vec<ToolCall>,
    tool_results: Vec<ChatMessage>,
    llm_done: Option<String>,
    /// Round trips to the LLM in this turn (tool follow-ups).
    round: u32,
    /// Spoken without the LLM (greeting, closing line).
    scripted: bool,
    end_action: Option<EndAction>,
    started_ms: i64,
    /// The player pushed all its audio (or it had none).
    audio_done: bool,
}

struct Session {
    room: Room,
    p: SessionParams,
    call_id: String,
    history: Vec<ChatMessage>,
    fields: Fields,
    utterances: UtteranceMap,
    /// history index of each reply's assistant message
    reply_msgs: Vec<(u64, usize)>,
    next_reply: u64,
    active: Option<ActiveReply>,
    /// The reply whose audio is being pushed.
    speaking: Option<u64>,
    player_tx: mpsc::Sender<PlayerCmd>,
    /// Cancels go to the player on their own channel, ahead of queued audio.
    player_ctl: mpsc::Sender<PlayerCmd>,
    seq: u32,
    turns: u32,
    /// Replies finished whose end action waits for the bridge to report them played.
    pending_end: Option<(u64, EndAction, Instant)>,
    outcome: Option<String>,
    /// Pending user turn clock (end of speech) before STT's end of turn.
    eos_at: Option<Instant>,
    finals: Vec<String>,
    final_deadline: Option<Instant>,
    tools: Vec<ToolSpec>,
    /// Turns of the call record, by reply id: (seq, started_ms).
    reply_rows: Vec<(u64, u32, i64)>,
    reply_tx: mpsc::Sender<ReplyEvent>,
}

/// Sends a control message to the bridge (topic `callbridge.control`); failures are logged.
pub(crate) async fn send_control(room: &Room, c: &Control) {
    if let Err(e) = room
        .send_data(DataPacketBuilder::new(c.to_bytes()).topic(CONTROL_TOPIC))
        .await
    {
        tracing::warn!(error = %e, "control message not sent");
    }
}

/// Publishes a line of the conversation (and the form so far) on topic `transcript`.
pub(crate) async fn send_transcript(
    room: &Room,
    role: &str,
    text: &str,
    is_final: bool,
    fields: &Fields,
) {
    let c = Control::Transcript {
        role: role.into(),
        text: text.into(),
        is_final,
        fields: fields.clone(),
    };
    if let Err(e) = room
        .send_data(DataPacketBuilder::new(c.to_bytes()).topic(TRANSCRIPT_TOPIC))
        .await
    {
        tracing::warn!(error = %e, "transcript not sent");
    }
}

/// Writes (or rewrites: same `seq`) one turn of the call record.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_turn(
    recorder: Option<&Recorder>,
    call_id: &str,
    seq: u32,
    role: &str,
    text: &str,
    started_ms: i64,
    ended_ms: Option<i64>,
    interrupted: bool,
    heard: Option<String>,
    clock: Option<&TurnClock>,
) {
    if let Some(r) = recorder {
        r.turn(
            call_id,
            TurnRow {
                seq,
                role: role.into(),
                text: text.into(),
                started_ms,
                ended_ms,
                interrupted,
                heard_text: heard,
                timings: clock.map(|c| c.timings()),
            },
        );
    }
}

/// The `record_field` tool: checks the field against the agent file, stores it in `fields`
/// and the call record, and returns the tool's answer for the model.
pub(crate) fn record_field(
    spec: &AgentSpec,
    recorder: Option<&Recorder>,
    call_id: &str,
    fields: &mut Fields,
    args: &serde_json::Value,
) -> String {
    let field = args["field"].as_str().unwrap_or_default().to_string();
    let value = args["value"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string();
    if spec.field(&field).is_none() || value.is_empty() {
        return format!("error: unknown field {field:?} or empty value");
    }
    tracing::info!(%field, %value, "field recorded");
    fields.insert(field.clone(), value.clone());
    if let Some(r) = recorder {
        r.field(call_id, &field, &value);
    }
    let missing: Vec<&str> = spec
        .fields
        .iter()
        .filter(|f| !fields.contains_key(&f.name))
        .map(|f| f.name.as_str())
        .collect();
    format!(
        "recorded; still missing: {}",
        if missing.is_empty() {
            "nothing".into()
        } else {
            missing.join(", ")
        }
    )
}

/// What ending the call looks like: the control message for the bridge and the outcome
/// (`completed` when every field is in, else `caller_goodbye`; `transferred`).
pub(crate) fn end_action_effect(
    spec: &AgentSpec,
    fields: &Fields,
    action: EndAction,
) -> (Control, String) {
    match action {
        EndAction::Hangup { reason } => {
            tracing::info!(%reason, "hanging up");
            let complete = spec.fields.iter().all(|f| fields.contains_key(&f.name));
            (
                Control::Hangup {
                    reason: Some(reason),
                },
                if complete {
                    "completed".into()
                } else {
                    "caller_goodbye".into()
                },
            )
        }
        EndAction::Transfer { to } => {
            tracing::info!(%to, "transferring");
            (Control::Transfer { to }, "transferred".into())
        }
    }
}

impl Session {
    async fn send_control(&self, c: &Control) {
        send_control(&self.room, c).await
    }

    async fn send_transcript(&self, role: &str, text: &str, is_final: bool) {
        send_transcript(&self.room, role, text, is_final, &self.fields).await
    }

    #[allow(clippy::too_many_arguments)]
    fn record_turn(
        &mut self,
        role: &str,
        text: &str,
        started_ms: i64,
        ended_ms: Option<i64>,
        interrupted: bool,
        heard: Option<String>,
        clock: Option<&TurnClock>,
    ) -> u32 {
        self.seq += 1;
        let seq = self.seq;
        self.write_turn(
            seq,
            role,
            text,
            started_ms,
            ended_ms,
            interrupted,
            heard,
            clock,
        );
        seq
    }

    #[allow(clippy::too_many_arguments)]
    fn write_turn(
        &self,
        seq: u32,
        role: &str,
        text: &str,
        started_ms: i64,
        ended_ms: Option<i64>,
        interrupted: bool,
        heard: Option<String>,
        clock: Option<&TurnClock>,
    ) {
        write_turn(
            self.p.recorder.as_ref(),
            &self.call_id,
            seq,
            role,
            text,
            started_ms,
            ended_ms,
            interrupted,
            heard,
            clock,
        );
    }

    fn start_reply(
        &mut self,
        source: ReplySource,
        clock: TurnClock,
        round: u32,
        scripted: bool,
    ) -> u64 {
        let id = self.next_reply;
        self.next_reply += 1;
        let (ev_tx, llm, tts, player) = (
            self.reply_tx.clone(),
            self.p.stack.llm.clone(),
            self.p.stack.tts.clone(),
            self.player_tx.clone(),
        );
        let task = tokio::spawn(reply_task(id, source, llm, tts, player, ev_tx));
        let started_ms = now_ms();
        self.active = Some(ActiveReply {
            id,
            task,
            clock,
            sentences: Vec::new(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            llm_done: None,
            round,
            scripted,
            end_action: None,
            started_ms,
            audio_done: false,
        });
        id
    }

    fn llm_reply(&mut self, clock: TurnClock, round: u32) {
        let source = ReplySource::Llm {
            messages: self.history.clone(),
            tools: self.tools.clone(),
        };
        self.start_reply(source, clock, round, false);
    }

    /// Close the active reply into the history: the assistant message (text heard so far,
    /// tool calls) and the tool results.
    fn commit_reply(&mut self, interrupted: bool) -> Option<ActiveReply> {
        let a = self.active.take()?;
        a.task.abort();
        if let Some(r) = self.utterances.by_reply(a.id) {
            // Keep the texts: a later report (cancel, playback) re-trims from them.
            if r.segments.is_empty() {
                r.segments = a
                    .sentences
                    .iter()
                    .map(|t| Segment {
                        text: t.clone(),
                        start_ms: u32::MAX,
                        end_ms: None,
                    })
                    .collect();
            }
        }
        let full = a.sentences.join(" ");
        let spoken = self.utterances.by_reply(a.id).map(|r| r.heard_text());
        let content = if interrupted {
            spoken.clone().unwrap_or_default()
        } else {
            full.clone()
        };
        let spoke = self.utterances.by_reply(a.id).is_some();
        if !content.is_empty() || !a.tool_calls.is_empty() || (interrupted && spoke) {
            let mut m = ChatMessage::new(Role::Assistant, content.clone());
            m.tool_calls = a.tool_calls.clone();
            self.history.push(m);
            self.reply_msgs.push((a.id, self.history.len() - 1));
            self.history.extend(a.tool_results.iter().cloned());
        }
        if !full.is_empty() {
            let seq = self.record_turn(
                "assistant",
                &full,
                a.started_ms,
                Some(now_ms()),
                interrupted,
                interrupted.then(|| content.clone()),
                Some(&a.clock),
            );
            self.reply_rows.push((a.id, seq, a.started_ms));
            self.p.metrics.observe_turn(&a.clock.timings());
        }
        Some(a)
    }

    /// A bridge report changed what we know was heard of reply `reply_id`: fix its message.
    fn retrim(&mut self, reply_id: u64) {
        let Some(r) = self.utterances.by_reply(reply_id) else {
            return;
        };
        if !r.interrupted {
            return;
        }
        let heard = r.heard_text();
        let full = r.full_text();
        if let Some(&(_, idx)) = self.reply_msgs.iter().find(|(id, _)| *id == reply_id) {
            if let Some(m) = self.history.get_mut(idx) {
                if m.content != heard {
                    tracing::debug!(reply = reply_id, heard = %heard, "assistant message trimmed to what was heard");
                    m.content = heard.clone();
                }
            }
        }
        if let Some(&(_, seq, started)) = self.reply_rows.iter().find(|(id, _, _)| *id == reply_id)
        {
            self.write_turn(
                seq,
                "assistant",
                &full,
                started,
                Some(now_ms()),
                true,
                Some(heard),
                None,
            );
        }
    }

    async fn barge_in(&mut self) {
        let Some(speaking) = self.speaking.take() else {
            return;
        };
        self.p.metrics.interruptions.fetch_add(1, Ordering::Relaxed);
        let label = self
            .utterances
            .by_reply(speaking)
            .map(|r| r.k)
            .map(|k| self.utterances.label(k));
        tracing::info!(reply = speaking, utterance = ?label, "barge-in");
        let _ = self
            .player_ctl
            .send(PlayerCmd::Cancel { reply: speaking })
            .await;
        self.send_control(&Control::Interrupt {
            utterance_id: label,
        })
        .await;
        if let Some(r) = self.utterances.by_reply(speaking) {
            r.interrupted = true;
        }
        if self
            .pending_end
            .as_ref()
            .is_some_and(|(id, _, _)| *id == speaking)
        {
            self.pending_end = None; // the caller talked over the goodbye: keep listening
        }
        if self.active.as_ref().is_some_and(|a| a.id == speaking) {
            if let Some(a) = &mut self.active {
                a.end_action = None;
            }
            self.commit_reply(true);
        }
    }

    async fn on_tool(&mut self, call: ToolCall) {
        let args: serde_json::Value =
            serde_json::from_str(&call.arguments).unwrap_or(serde_json::Value::Null);
        let result = match call.name.as_str() {
            "record_field" => record_field(
                &self.p.spec,
                self.p.recorder.as_ref(),
                &self.call_id,
                &mut self.fields,
                &args,
            ),
            "end_call" => {
                if let Some(a) = &mut self.active {
                    a.end_action = Some(EndAction::Hangup {
                        reason: "end_call".into(),
                    });
                }
                "ok: hanging up after the message".into()
            }
            "transfer" => {
                let to = args["number"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| self.p.spec.transfer_number.clone())
                    .unwrap_or_default();
                if to.is_empty() {
                    "error: no number".into()
                } else {
                    if let Some(a) = &mut self.active {
                        a.end_action = Some(EndAction::Transfer { to });
                    }
                    "ok: transferring after this message".into()
                }
            }
            other => format!("error: no tool {other:?}"),
        };
        if let Some(a) = &mut self.active {
            a.tool_results.push(ChatMessage {
                role: Role::Tool,
                content: result,
                tool_calls: vec![],
                tool_call_id: Some(call.id.clone()),
            });
            a.tool_calls.push(call);
        }
        self.send_transcript_fields().await;
    }

    async fn send_transcript_fields(&self) {
        // Fields ride on every transcript line; a field-only update has an empty text.
        self.send_transcript("fields", "", true).await;
    }
}

/// Waits for the phone participant (kind `sip`, or identity `phone-…`) and its audio track.
pub(crate) async fn wait_for_phone(
    events: &mut mpsc::Receiver<RoomEvent>,
    room: &Room,
    wait: Duration,
) -> Option<(Participant, RemoteAudioTrack)> {
    let is_phone =
        |p: &Participant| p.kind == ParticipantKind::Sip || p.identity.starts_with("phone-");
    if let Some(p) = room.remote_participants().into_iter().find(is_phone) {
        tracing::info!(identity = %p.identity, "phone participant already in the room");
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(RoomEvent::TrackSubscribed { track, participant }))
                if is_phone(&participant) =>
            {
                return Some((participant, track))
            }
            Ok(Some(RoomEvent::Disconnected(r))) => {
                tracing::warn!(reason = ?r, "room closed while waiting for the caller");
                return None;
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Runs one call to its end. The room is closed when this returns.
pub async fn run(room: Room, events: mpsc::Receiver<RoomEvent>, p: SessionParams) -> Outcome {
    let out = run_inner(room.clone(), events, p).await;
    room.close().await;
    out
}

async fn run_inner(room: Room, mut events: mpsc::Receiver<RoomEvent>, p: SessionParams) -> Outcome {
    let room_name = room.name();
    let call_id = format!("{room_name}-{}", now_ms());
    let Some((phone, track)) = wait_for_phone(&mut events, &room, p.phone_wait).await else {
        return Outcome {
            outcome: "no_caller".into(),
            fields: Fields::new(),
            turns: 0,
        };
    };
    tracing::info!(room = %room_name, phone = %phone.identity, "caller present; starting the conversation");
    p.metrics.calls_started.fetch_add(1, Ordering::Relaxed);
    p.metrics.calls_active.fetch_add(1, Ordering::Relaxed);
    let attr = |k: &str| phone.attributes.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(r) = &p.recorder {
        r.start_call(CallInfo {
            call_id: call_id.clone(),
            room: room_name.clone(),
            call_sid: attr("sip.twilio.callSid")
                .or_else(|| phone.identity.strip_prefix("phone-").map(str::to_string)),
            caller: attr("sip.phoneNumber"),
            called: attr("sip.trunkPhoneNumber"),
            agent: p.spec.name.clone(),
        });
    }
    let outcome = match &p.stack.realtime {
        Some(cfg) => {
            crate::realtime_session::converse(
                &room,
                &mut events,
                &p,
                cfg.clone(),
                &call_id,
                &phone,
                track,
            )
            .await
        }
        None => converse(&room, &mut events, &p, &call_id, &phone, track).await,
    };
    p.metrics.calls_active.fetch_sub(1, Ordering::Relaxed);
    if let Some(r) = &p.recorder {
        r.end_call(&call_id, &outcome.outcome, &outcome.fields);
        r.flush_async().await;
    }
    tracing::info!(room = %room_name, outcome = %outcome.outcome, fields = ?outcome.fields, "call ended");
    outcome
}

async fn converse(
    room: &Room,
    events: &mut mpsc::Receiver<RoomEvent>,
    p: &SessionParams,
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
    let tts_rate = p.stack.tts.output_rate();
    let sink = match publish_agent_track(&room, tts_rate).await {
        Ok(s) => s,
        Err(e) => return fail(format!("publish: {e}")),
    };
    let stt_rate = p.stack.stt.input_rate();
    let mut audio = match track.stream(stt_rate) {
        Ok(a) => a,
        Err(e) => return fail(format!("subscribe at {stt_rate} Hz: {e}")),
    };
    let stt = match p.stack.stt.start().await {
        Ok(s) => s,
        Err(e) => {
            p.metrics.provider_errors.fetch_add(1, Ordering::Relaxed);
            return fail(format!("stt: {e}"));
        }
    };
    let (stt_in_tx, stt_in_rx) = mpsc::channel::<SttIn>(200);
    let (stt_ev_tx, mut stt_ev_rx) = mpsc::channel::<SttEvent>(64);
    let stt_task_h = tokio::spawn(stt_task(stt, stt_in_rx, stt_ev_tx));
    let (player_tx, player_rx) = mpsc::channel::<PlayerCmd>(512);
    let (player_ctl, player_ctl_rx) = mpsc::channel::<PlayerCmd>(16);
    let (player_ev_tx, mut player_ev_rx) = mpsc::channel::<PlayerEvent>(256);
    let gap = Duration::from_millis(spec.turn.reply_gap_ms as u64);
    let player_h = tokio::spawn(player(
        sink,
        tts_rate,
        gap,
        p.metrics.clone(),
        player_rx,
        player_ctl_rx,
        player_ev_tx,
    ));
    let (reply_tx, mut reply_rx) = mpsc::channel::<ReplyEvent>(256);

    let mut s = Session {
        room: room.clone(),
        p: p.clone(),
        call_id: call_id.to_string(),
        history: vec![ChatMessage::new(Role::System, system_prompt(&spec))],
        fields: Fields::new(),
        utterances: UtteranceMap::default(),
        reply_msgs: Vec::new(),
        next_reply: 1,
        active: None,
        speaking: None,
        player_tx,
        player_ctl,
        seq: 0,
        turns: 0,
        pending_end: None,
        outcome: None,
        eos_at: None,
        finals: Vec::new(),
        final_deadline: None,
        tools: tools(&spec),
        reply_rows: Vec::new(),
        reply_tx,
    };

    // The greeting.
    s.start_reply(
        ReplySource::Text(spec.greeting.clone()),
        TurnClock::default(),
        0,
        true,
    );

    let mut ears = Ears {
        vad: Vad::new(VadConfig::from_turn(&spec.turn)),
        stt_in_tx: stt_in_tx.clone(),
        min_interrupt: spec.turn.min_interrupt_ms,
        hangover: Duration::from_millis(spec.turn.end_of_speech_ms as u64),
        final_timeout: Duration::from_millis(spec.turn.stt_final_timeout_ms as u64),
    };
    // DTX pauses in the caller's track become silence on the wall clock (see silence_fill).
    let mut silence = SilenceFill::new();
    let silent_len = (stt_rate / 50) as usize;
    let phone_id = phone.identity.clone();
    let mut housekeeping = tokio::time::interval(Duration::from_millis(50));
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut audio_open = true;

    while s.outcome.is_none() {
        tokio::select! {
            frame = audio.recv(), if audio_open => {
                let Some(frame) = frame else {
                    audio_open = false;
                    continue;
                };
                let pause = silence.on_frame(frame.rtp_timestamp, Instant::now());
                for _ in 0..pause {
                    ears.hear(&mut s, vec![0; silent_len], stt_rate).await;
                }
                ears.hear(&mut s, frame.samples, frame.sample_rate).await;
            }
            _ = sleep_until_opt(silence.next_deadline()), if audio_open => {
                for _ in 0..silence.on_timer(Instant::now()) {
                    ears.hear(&mut s, vec![0; silent_len], stt_rate).await;
                }
            }
            ev = stt_ev_rx.recv() => {
                let Some(ev) = ev else {
                    s.outcome = Some("error: speech recogniser ended".into());
                    continue;
                };
                match ev {
                    SttEvent::SpeechStarted | SttEvent::Preflight { .. } => {}
                    SttEvent::Interim { text } => s.send_transcript("user", &text, false).await,
                    SttEvent::Final { text, .. } => {
                        if !text.trim().is_empty() {
                            s.finals.push(text);
                        }
                    }
                    SttEvent::EndOfTurn { text } => {
                        let text = if text.trim().is_empty() { s.finals.join(" ") } else { text };
                        s.finals.clear();
                        s.final_deadline = None;
                        user_turn(&mut s, text.trim().to_string()).await;
                    }
                    SttEvent::Error(e) => {
                        p.metrics.provider_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "speech recogniser failed");
                        s.outcome = Some(format!("error: stt: {e}"));
                    }
                }
            }
            ev = reply_rx.recv() => {
                let Some(ev) = ev else { continue };
                on_reply_event(&mut s, ev).await;
            }
            ev = player_ev_rx.recv() => {
                let Some(ev) = ev else {
                    s.outcome = Some("room_closed".into());
                    continue;
                };
                on_player_event(&mut s, ev).await;
            }
            ev = events.recv() => {
                let Some(ev) = ev else {
                    s.outcome = Some("room_closed".into());
                    continue;
                };
                match classify(ev, &phone_id) {
                    CallEvent::Control(Control::Playback { utterance_id, heard_ms, complete, interrupted }) => {
                        let id = s.utterances.playback(&utterance_id, heard_ms, complete, interrupted).map(|r| r.reply_id);
                        if let Some(id) = id {
                            s.retrim(id);
                        }
                    }
                    CallEvent::Control(Control::Dtmf { digit }) => {
                        tracing::info!(%digit, "caller pressed a key");
                        s.record_turn("dtmf", &digit, now_ms(), Some(now_ms()), false, None, None);
                    }
                    CallEvent::Control(_) | CallEvent::Other => {}
                    CallEvent::Ended(why) => s.outcome = Some(why.into()),
                    CallEvent::CallerTrack(track) => match track.stream(stt_rate) {
                        Ok(a) => {
                            tracing::info!(track = %track.sid(), "caller audio track (re)subscribed");
                            audio = a;
                            silence = SilenceFill::new();
                            audio_open = true;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot decode the caller's new track"),
                    },
                }
            }
            _ = housekeeping.tick() => {
                let now = Instant::now();
                if s.final_deadline.is_some_and(|d| now >= d) {
                    // The recogniser gave finals but no end of turn: take what we have.
                    s.final_deadline = None;
                    if !s.finals.is_empty() {
                        let text = s.finals.join(" ");
                        s.finals.clear();
                        user_turn(&mut s, text).await;
                    }
                }
                if let Some((id, action, deadline)) = s.pending_end.clone() {
                    let played = s.utterances.by_reply(id).is_none_or(|r| r.complete);
                    if played || now >= deadline {
                        s.pending_end = None;
                        run_end_action(&mut s, action).await;
                    }
                }
            }
        }
    }
    // Wind down: stop talking, let the last control messages out.
    if let Some(id) = s.speaking.take() {
        let _ = s.player_ctl.send(PlayerCmd::Cancel { reply: id }).await;
    }
    s.commit_reply(s.outcome.as_deref() != Some("completed"));
    drop(stt_in_tx);
    drop(ears);
    stt_task_h.abort();
    player_h.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Outcome {
        outcome: s.outcome.clone().unwrap_or_default(),
        fields: s.fields.clone(),
        turns: s.turns,
    }
}

async fn run_end_action(s: &mut Session, action: EndAction) {
    let (control, outcome) = end_action_effect(&s.p.spec, &s.fields, action);
    s.send_control(&control).await;
    s.outcome = Some(outcome);
}

async fn user_turn(s: &mut Session, text: String) {
    if text.is_empty() {
        return;
    }
    let eos = s.eos_at.take();
    let now = Instant::now();
    if s.speaking.is_some() {
        // Speech that did not interrupt us (shorter than min_interrupt_ms): a backchannel.
        tracing::debug!(%text, "caller spoke over the agent without interrupting; not answered");
        s.record_turn("user", &text, now_ms(), Some(now_ms()), false, None, None);
        s.send_transcript("user", &text, true).await;
        return;
    }
    if s.active.is_some() {
        // Still thinking about the previous turn (nothing spoken yet): answer both together.
        s.commit_reply(true);
    }
    s.turns += 1;
    s.p.metrics.turns.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%text, "caller");
    s.history.push(ChatMessage::new(Role::User, text.clone()));
    s.record_turn("user", &text, now_ms(), Some(now_ms()), false, None, None);
    s.send_transcript("user", &text, true).await;
    let clock = TurnClock {
        end_of_speech: eos,
        stt_final: Some(now),
        ..Default::default()
    };
    s.llm_reply(clock, 0);
}

async fn on_reply_event(s: &mut Session, ev: ReplyEvent) {
    let id = match &ev {
        ReplyEvent::FirstToken { reply, .. }
        | ReplyEvent::FirstAudio { reply, .. }
        | ReplyEvent::Sentence { reply, .. }
        | ReplyEvent::Tool { reply, .. }
        | ReplyEvent::Done { reply, .. }
        | ReplyEvent::Error { reply, .. } => *reply,
    };
    if s.active.as_ref().is_none_or(|a| a.id != id) {
        return; // a cancelled reply's leftovers
    }
    match ev {
        ReplyEvent::FirstToken { at, .. } => {
            if let Some(a) = &mut s.active {
                a.clock.llm_first_token.get_or_insert(at);
            }
        }
        ReplyEvent::FirstAudio { at, .. } => {
            if let Some(a) = &mut s.active {
                a.clock.tts_first_audio.get_or_insert(at);
            }
        }
        ReplyEvent::Sentence { seg, text, .. } => {
            if let Some(a) = &mut s.active {
                a.sentences.push(text.clone());
            }
            s.send_transcript("assistant", &text, true).await;
            let _ = seg;
        }
        ReplyEvent::Tool { call, .. } => s.on_tool(call).await,
        ReplyEvent::Done { finish_reason, .. } => {
            if let Some(a) = &mut s.active {
                a.llm_done = Some(finish_reason);
            }
            maybe_finish_reply(s).await;
        }
        ReplyEvent::Error { msg: m, .. } => {
            s.p.metrics.provider_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %m, "reply failed");
            let spoke = s.speaking == Some(id);
            if let Some(a) = &mut s.active {
                a.llm_done = Some("error".into());
            }
            if !spoke {
                // No dead air: say something rather than nothing.
                s.commit_reply(true);
                s.start_reply(
                    ReplySource::Text(
                        "Sorry, I had a problem there. Could you say that again?".into(),
                    ),
                    TurnClock::default(),
                    9,
                    true,
                );
            }
        }
    }
}

/// A reply is finished when the LLM is done and the player has pushed all of its audio.
async fn maybe_finish_reply(s: &mut Session) {
    let Some(a) = &s.active else { return };
    let Some(reason) = a.llm_done.clone() else {
        return;
    };
    let id = a.id;
    if !a.audio_done {
        return;
    }
    let needs_followup = reason == "tool_calls"
        && a.sentences.is_empty()
        && a.end_action.is_none()
        && a.round < 3
        && !a.scripted;
    let round = a.round;
    let clock = a.clock;
    let Some(a) = s.commit_reply(false) else {
        return;
    };
    if let Some(action) = a.end_action.clone() {
        // Wait for the bridge to say the last words played (or a generous timeout).
        let spoken = s.utterances.by_reply(id).is_some();
        let wait = if spoken {
            Duration::from_millis(1500)
        } else {
            Duration::ZERO
        };
        s.pending_end = Some((id, action, Instant::now() + wait));
        return;
    }
    if needs_followup {
        s.llm_reply(clock, round + 1);
        return;
    }
    // Form complete but the model did not end the call: do it for it.
    let complete =
        s.p.spec
            .fields
            .iter()
            .all(|f| s.fields.contains_key(&f.name));
    if complete && !a.scripted {
        let closing = s.p.spec.closing.clone();
        s.start_reply(ReplySource::Text(closing), TurnClock::default(), 0, true);
        if let Some(na) = &mut s.active {
            na.end_action = Some(EndAction::Hangup {
                reason: "form complete".into(),
            });
        }
    }
}

async fn on_player_event(s: &mut Session, ev: PlayerEvent) {
    match ev {
        PlayerEvent::Started { reply, at } => {
            if s.active.as_ref().is_none_or(|a| a.id != reply) {
                let _ = s.player_ctl.send(PlayerCmd::Cancel { reply }).await;
            } else {
                s.speaking = Some(reply);
                let k = s.utterances.started(reply);
                tracing::debug!(reply, utterance = %s.utterances.label(k), "speaking");
                if let Some(a) = &mut s.active {
                    a.clock.first_frame.get_or_insert(at);
                }
            }
        }
        PlayerEvent::Finished {
            reply,
            total_ms,
            segs,
        } => {
            if s.speaking == Some(reply) {
                s.speaking = None;
            }
            set_segments(s, reply, total_ms, &segs);
            if let Some(a) = &mut s.active {
                if a.id == reply {
                    a.audio_done = true;
                }
            }
            maybe_finish_reply(s).await;
        }
        PlayerEvent::Cancelled {
            reply,
            pushed_ms,
            segs,
        } => {
            if s.speaking == Some(reply) {
                s.speaking = None;
            }
            set_segments(s, reply, pushed_ms, &segs);
            s.retrim(reply);
        }
    }
}

/// The player's segment table (where each sentence's audio lies) goes into the reply's record.
fn set_segments(s: &mut Session, reply: u64, total_ms: u32, segs: &[(usize, u32, u32)]) {
    let active_texts = s
        .active
        .as_ref()
        .filter(|a| a.id == reply)
        .map(|a| a.sentences.clone());
    let Some(r) = s.utterances.by_reply(reply) else {
        return;
    };
    let texts: Vec<String> =
        active_texts.unwrap_or_else(|| r.segments.iter().map(|x| x.text.clone()).collect());
    r.segments = segs
        .iter()
        .map(|&(seg, start, end)| Segment {
            text: texts.get(seg).cloned().unwrap_or_default(),
            start_ms: start,
            end_ms: Some(end),
        })
        .collect();
    r.total_ms = total_ms;
    r.finished = true;
}

/// The caller's audio path into the conversation: VAD (end of speech, barge-in) and the STT.
struct Ears {
    vad: Vad,
    stt_in_tx: mpsc::Sender<SttIn>,
    min_interrupt: u32,
    hangover: Duration,
    final_timeout: Duration,
}

impl Ears {
    async fn hear(&mut self, s: &mut Session, samples: Vec<i16>, rate: u32) {
        let ev = self.vad.push(&samples, rate);
        let _ = self.stt_in_tx.try_send(SttIn::Audio(samples));
        match ev {
            Some(VadEvent::SpeechStart { .. }) => s.eos_at = None,
            Some(VadEvent::SpeechEnd { .. }) => {
                s.eos_at = Some(Instant::now() - self.hangover);
                let _ = self.stt_in_tx.try_send(SttIn::Finalize);
                s.final_deadline = Some(Instant::now() + self.final_timeout);
            }
            None => {}
        }
        if s.speaking.is_some()
            && self.vad.in_speech()
            && self.vad.speech_ms() >= self.min_interrupt
        {
            s.barge_in().await;
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The agent's voice track: Opus at `rate`, no DTX (the bridge ends an utterance when frames
/// stop, and the player stops pushing between replies anyway).
pub(crate) async fn publish_agent_track(room: &Room, rate: u32) -> Result<room::AudioSink, room::RoomError> {
    room.publish_audio(AudioTrackOptions {
        name: "agent".into(),
        sample_rate: rate,
        dtx: false,
        ..Default::default()
    })
    .await
}
