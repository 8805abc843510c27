//! One call's conversation as a sans-IO state machine, for both reply engines.
//!
//! ```text
//! driver ──handle(Input, now)──▶ Conversation ──poll_output()──▶ frames, control, replies, records
//!        ◀──────────────── poll_timeout(): when to call handle(Timeout) again
//! ```
//!
//! No sockets, tasks or clock inside: the driver ([`crate::call`]) reads the room, the
//! recogniser, the reply tasks and the Realtime socket, feeds what happened with the time, and
//! carries out what comes back. Turn-taking, interruptions (and false ones), tools, fallbacks and
//! the end of the call live here once, and are tested faster than real time
//! (`agent/tests/conversation.rs`).
//!
//! * [`playout`]: the agent's voice on a 20 ms grid; each speech is named to the bridge before
//!   its first frame (control protocol v2), and the bridge's `playback` reports come back under
//!   that name — what the caller heard is never inferred from timing.
//! * [`turn_taking`]: when caller sound stops the agent (words, or long speech), backchannels,
//!   and resuming after a false interruption.
//! * Reply engines: [`cascaded`] (VAD → STT → LLM → TTS, history here) and [`realtime`]
//!   (OpenAI Realtime: the model hears and speaks, we play, cut and truncate).
//! * [`machine`]: an answering machine on the line (Twilio's AMD verdict): leave the agent
//!   file's message after the greeting, or hang up.
//! * [`transfer`]: warm transfer — hold, dial the person into the room, brief them, leave.
//! * [`tools`]: `record_field`, `end_call`, `transfer`, `press_keys` with typed effects.

pub mod heard;
pub mod io;
pub mod machine;
pub mod transfer;
pub mod outcome;
pub mod playout;
pub mod tools;

mod cascaded;
mod ending;
mod realtime;
mod speech;
mod turn_taking;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::control::Control;

use crate::config::AgentSpec;
use crate::metrics::TurnClock;
use crate::providers::Fields;
use crate::record::{now_ms, TurnRow};

pub use io::{Input, Metric, Output, RecordOp, ReplyEvent, ReplyId, ReplySource, Voice};
pub use machine::AnsweredBy;
use machine::Machine;
pub use transfer::TransferEvent;
use transfer::Transfer;
pub use outcome::{FinishReason, Outcome, Stage};
pub use playout::SpeechId;
use playout::{PlayEvent, Playout, PlayoutConfig};
use speech::{LineKind, Origin, Speech, SpeechState};
use tools::{ToolEffect, ToolResult};

/// How long an interrupted speech waits for the bridge's final report of what was heard.
pub const REPORT_WAIT: Duration = Duration::from_millis(700);
/// After a closing line's last frame, how long to wait for the bridge to say it played.
pub const END_GRACE: Duration = Duration::from_millis(1500);
/// An ending (last line, then hang-up) never takes longer than this.
pub const END_DEADLINE: Duration = Duration::from_secs(20);
/// Failed replies in a row before the call is given up.
pub const MAX_FAILURES: u32 = 3;
/// Resuming without a report from the bridge: go back this much before what was pushed (the
/// bridge's buffer and Twilio's were dropped unheard).
pub const LEAD_ESTIMATE: Duration = Duration::from_millis(200);
/// Speeches remembered once settled (for late bridge reports).
const SPEECHES_KEPT: usize = 32;
/// Most agent audio queued.
const MAX_QUEUED: Duration = Duration::from_secs(60);

pub const REPROMPT_LINE: &str = "Sorry, I had a problem there. Could you say that again?";
pub const APOLOGY_LINE: &str = "Sorry, I am having technical difficulties right now. Please call again later. Goodbye.";
pub const SHUTDOWN_LINE: &str = "Sorry, I have to end the call now. Please call again later. Goodbye.";

/// Which reply engine holds the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Cascaded,
    Realtime,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub spec: Arc<AgentSpec>,
    pub mode: Mode,
    /// Sample rate of the agent's track (the TTS's, or 8 kHz for Realtime).
    pub playout_rate: u32,
    /// Store DTMF digits in the call record (`RECORD_DTMF`); never in logs either way.
    pub record_dtmf: bool,
}

/// What ends the call once a speech has been heard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EndAction {
    Hangup { reason: &'static str },
    Transfer { number: String },
}

#[derive(Debug)]
struct PendingEnd {
    /// The last line (None: nothing to say).
    speech: Option<SpeechId>,
    /// The last line is a Realtime response not come yet.
    await_item: bool,
    action: EndAction,
    reason: FinishReason,
    deadline: Instant,
}

enum Engine {
    Cascaded(cascaded::Cascaded),
    Realtime(realtime::Realtime),
}

pub struct Conversation {
    spec: Arc<AgentSpec>,
    mode: Mode,
    record_dtmf: bool,
    now: Instant,
    playout: Playout,
    speeches: VecDeque<Speech>,
    next_speech: SpeechId,
    next_wire: u64,
    next_reply: ReplyId,
    fields: Fields,
    turns: u32,
    seq: u32,
    /// Failed replies in a row.
    failures: u32,
    caller: turn_taking::Caller,
    pending_end: Option<PendingEnd>,
    /// A machine answered (None: a person, or nobody said otherwise).
    machine: Option<Machine>,
    /// A warm transfer under way.
    transfer: Option<Transfer>,
    engine: Engine,
    out: VecDeque<Output>,
    over: bool,
}

impl Conversation {
    /// A call that starts now: the greeting is queued.
    pub fn new(cfg: Config, now: Instant) -> Conversation {
        let spec = cfg.spec.clone();
        let prebuffer_frames = match cfg.mode {
            Mode::Cascaded => 1,
            Mode::Realtime => 3, // absorbs the jitter of the model's first deltas
        };
        let playout = Playout::new(PlayoutConfig {
            rate: cfg.playout_rate,
            gap: Duration::from_millis(spec.turn.reply_gap_ms as u64),
            max_queued: MAX_QUEUED,
            prebuffer_frames,
        });
        let engine = match cfg.mode {
            Mode::Cascaded => Engine::Cascaded(cascaded::Cascaded::new(&spec)),
            Mode::Realtime => Engine::Realtime(realtime::Realtime::new()),
        };
        let mut c = Conversation {
            caller: turn_taking::Caller::default(),
            spec,
            mode: cfg.mode,
            record_dtmf: cfg.record_dtmf,
            now,
            playout,
            speeches: VecDeque::new(),
            next_speech: 1,
            next_wire: 1,
            next_reply: 1,
            fields: Fields::new(),
            turns: 0,
            seq: 0,
            failures: 0,
            pending_end: None,
            machine: None,
            transfer: None,
            engine,
            out: VecDeque::new(),
            over: false,
        };
        c.greet();
        c
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    pub fn turns(&self) -> u32 {
        self.turns
    }

    /// The call is over (`Output::End` was queued).
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Something happened at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        self.now = self.now.max(now);
        if self.over {
            return;
        }
        if (self.machine_on_line() || self.transferring()) && input.is_from_caller() {
            // A voicemail greeting (or its beep) is nobody's turn, nor a caller on hold.
            self.pump();
            return;
        }
        match input {
            Input::Timeout => {}
            Input::AnsweredBy(v) => self.on_answered_by(v),
            Input::Transfer(ev) => self.on_transfer_event(ev),
            Input::SpeechStarted => self.on_speech_started(),
            Input::SpeechEnded { at } => self.on_speech_ended(at),
            Input::Stt(ev) => self.on_stt(ev),
            Input::Reply { reply, event } => self.on_reply(reply, event),
            Input::Realtime(ev) => {
                if self.mode == Mode::Realtime {
                    self.on_realtime(ev)
                }
            }
            Input::Playback { utterance_id, heard_ms, complete, interrupted } => {
                self.on_playback(&utterance_id, heard_ms, complete, interrupted)
            }
            Input::Dtmf { digit } => self.on_dtmf(digit),
            Input::CallerLeft => self.finish(FinishReason::CallerHungUp),
            Input::RoomClosed => self.finish(FinishReason::RoomClosed),
            Input::Shutdown => self.shut_down(),
        }
        self.pump();
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call `handle(Input::Timeout, …)` next (None: only on new input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.over {
            return None;
        }
        let mut t = [
            self.playout.next_deadline(self.now),
            self.caller_deadline(),
            self.speeches.iter().filter_map(|s| s.cut_at.filter(|_| !s.settled).map(|c| c + REPORT_WAIT)).min(),
            self.pending_end.as_ref().map(|p| p.deadline),
            self.pending_end_grace(),
            self.machine_deadline(),
            self.transfer_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(e) = self.engine_deadline() {
            t = Some(t.map_or(e, |t| t.min(e)));
        }
        t
    }

    // ---- time ------------------------------------------------------------------------

    /// Everything due at `self.now`: timers, then the playout's frames.
    fn pump(&mut self) {
        if self.over {
            return;
        }
        self.machine_timers();
        self.transfer_timers();
        self.caller_timers();
        self.engine_timers();
        self.settle_ready();
        self.check_pending_end();
        if self.over {
            return;
        }
        loop {
            let frame = self.playout.poll_frame(self.now);
            while let Some(ev) = self.playout.poll_event() {
                self.on_play_event(ev);
            }
            match frame {
                Some(f) => self.out.push_back(Output::Frame(f)),
                None => break,
            }
        }
        self.settle_ready();
        self.check_pending_end();
    }

    // ---- speeches ----------------------------------------------------------------------

    fn new_speech(&mut self, origin: Origin, held: bool) -> SpeechId {
        let id = self.next_speech;
        self.next_speech += 1;
        self.playout.open(id, held);
        self.speeches.push_back(Speech::new(id, origin));
        while self.speeches.len() > SPEECHES_KEPT {
            match self.speeches.iter().position(|s| s.settled) {
                Some(ix) => {
                    self.speeches.remove(ix);
                }
                None => break,
            }
        }
        id
    }

    fn speech(&self, id: SpeechId) -> Option<&Speech> {
        self.speeches.iter().find(|s| s.id == id)
    }

    fn speech_mut(&mut self, id: SpeechId) -> Option<&mut Speech> {
        self.speeches.iter_mut().find(|s| s.id == id)
    }

    fn speech_of_reply(&self, reply: ReplyId) -> Option<SpeechId> {
        self.speeches.iter().rev().find(|s| s.reply() == Some(reply)).map(|s| s.id)
    }

    /// Says a line of ours with a reply task; the speech it becomes.
    fn say(&mut self, kind: LineKind, text: &str, voice: Voice) -> SpeechId {
        let reply = self.next_reply;
        self.next_reply += 1;
        let id = self.new_speech(Origin::Line { reply, kind }, false);
        self.out.push_back(Output::StartReply { reply, source: ReplySource::Text(text.to_string()), voice });
        id
    }

    fn greet(&mut self) {
        match self.mode {
            Mode::Cascaded => {
                let g = self.spec.greeting.clone();
                self.say(LineKind::Greeting, &g, Voice::Main);
            }
            Mode::Realtime => self.realtime_greet(),
        }
    }

    fn on_play_event(&mut self, ev: PlayEvent) {
        let now = self.now;
        match ev {
            PlayEvent::Started { speech, from_ms } => {
                let label = format!("a{}", self.next_wire);
                self.next_wire += 1;
                self.out.push_back(Output::Control(Control::Utterance { utterance_id: label.clone() }));
                let Some(s) = self.speech_mut(speech) else { return };
                s.wires.push((label, from_ms));
                s.state = SpeechState::Playing;
                s.spoke = true;
                s.clock.first_frame.get_or_insert(now);
                if s.record.is_none() {
                    // Written as it starts, so a crash keeps what was being said.
                    let (text, clock) = (s.full_text(), s.clock);
                    let started = now_ms();
                    let seq = self.write_turn(None, "assistant", &text, started, None, false, None, Some(&clock));
                    if let Some(s) = self.speech_mut(speech) {
                        s.record = Some((seq, started));
                    }
                }
            }
            PlayEvent::Finished { speech, total_ms } => {
                let segments = self.snapshot_segments(speech);
                let Some(s) = self.speech_mut(speech) else { return };
                s.segments = segments;
                s.length_ms = total_ms;
                if !s.is_over() {
                    s.state = SpeechState::Finished;
                    s.finished_at = Some(now);
                }
                self.on_speech_finished(speech);
                self.engine_speech_over(speech);
            }
        }
    }

    fn snapshot_segments(&self, speech: SpeechId) -> Vec<heard::Segment> {
        let texts = self.speech(speech).map(|s| s.texts.clone()).unwrap_or_default();
        self.playout.segments(speech, &texts)
    }

    /// A speech left the playout unheard-of (no audio at all): it is finished.
    fn finish_silent(&mut self, speech: SpeechId) {
        let now = self.now;
        self.playout.cancel(speech, now);
        if let Some(s) = self.speech_mut(speech) {
            if !s.is_over() {
                s.state = SpeechState::Finished;
                s.finished_at = Some(now);
            }
        }
        self.on_speech_finished(speech);
        self.engine_speech_over(speech);
    }

    /// Stops `speech` for good: what was pushed is all the caller may have heard.
    fn cut(&mut self, speech: SpeechId) {
        let now = self.now;
        let segments = self.snapshot_segments(speech);
        let length = self.playout.length_ms(speech);
        let pushed = self.playout.cancel(speech, now);
        let Some(s) = self.speech_mut(speech) else { return };
        if s.is_over() {
            return;
        }
        let pushed = match s.state {
            SpeechState::Paused { pushed_ms } => pushed_ms,
            _ => pushed.unwrap_or(0),
        };
        if !segments.is_empty() {
            s.segments = segments;
        }
        if let Some(l) = length {
            s.length_ms = l;
        }
        s.state = SpeechState::Cut { pushed_ms: pushed };
        s.cut_at = Some(now);
        if !s.spoke || pushed == 0 {
            s.bridge_final = true; // nothing was heard: no report to wait for
        }
        self.engine_speech_over(speech);
    }

    /// A bridge report: what the caller heard of one of our utterances.
    fn on_playback(&mut self, label: &str, heard_ms: u32, complete: bool, interrupted: bool) {
        let Some(s) = self.speeches.iter_mut().rev().find(|s| s.wires.iter().any(|(l, _)| l == label)) else {
            tracing::debug!(utterance = %label, "playback report for an utterance we do not know");
            return;
        };
        let (ix, base) = s.wires.iter().enumerate().find(|(_, (l, _))| l == label).map(|(i, (_, b))| (i, *b)).unwrap_or((0, 0));
        let latest = ix + 1 == s.wires.len();
        let abs = base.saturating_add(heard_ms);
        if interrupted {
            if latest {
                s.bridge_heard = Some(abs);
                s.bridge_final = true;
            }
        } else if latest {
            s.bridge_heard = Some(s.bridge_heard.map_or(abs, |h| h.max(abs)));
            s.complete |= complete;
        }
        self.settle_ready();
    }

    /// Settles every speech whose heard part is known: finished ones, and cut ones once the
    /// bridge reported (or the wait is over).
    fn settle_ready(&mut self) {
        let now = self.now;
        let ready: Vec<SpeechId> = self
            .speeches
            .iter()
            .filter(|s| !s.settled)
            .filter(|s| match s.state {
                SpeechState::Finished => true,
                SpeechState::Cut { .. } => s.bridge_final || s.cut_at.is_some_and(|c| now >= c + REPORT_WAIT),
                _ => false,
            })
            .map(|s| s.id)
            .collect();
        for id in ready {
            self.settle(id);
        }
    }

    fn settle(&mut self, id: SpeechId) {
        let Some(s) = self.speech_mut(id) else { return };
        s.settled = true;
        let interrupted = matches!(s.state, SpeechState::Cut { .. });
        let (full, heard, heard_ms, clock, record, spoke) =
            (s.full_text(), s.heard_text(), s.heard_ms(), s.clock, s.record, s.spoke);
        if !full.is_empty() && (spoke || record.is_some()) {
            let (seq, started) = record.unwrap_or((0, now_ms()));
            let seq = (seq > 0).then_some(seq);
            self.write_turn(seq, "assistant", &full, started, Some(now_ms()), interrupted, interrupted.then(|| heard.clone()), Some(&clock));
            if spoke && clock.first_frame.is_some() {
                self.out.push_back(Output::Metric(Metric::TurnTimings(clock.timings())));
            }
        }
        self.engine_settled(id, interrupted, &heard, heard_ms);
    }

    // ---- the record and the room ------------------------------------------------------

    /// Writes a turn (`seq` None: a new one). Returns its seq.
    #[allow(clippy::too_many_arguments)]
    fn write_turn(
        &mut self,
        seq: Option<u32>,
        role: &str,
        text: &str,
        started_ms: i64,
        ended_ms: Option<i64>,
        interrupted: bool,
        heard: Option<String>,
        clock: Option<&TurnClock>,
    ) -> u32 {
        let seq = seq.unwrap_or_else(|| {
            self.seq += 1;
            self.seq
        });
        self.out.push_back(Output::Record(RecordOp::Turn(TurnRow {
            seq,
            role: role.into(),
            text: text.into(),
            started_ms,
            ended_ms,
            interrupted,
            heard_text: heard,
            timings: clock.map(|c| c.timings()),
        })));
        seq
    }

    fn transcript(&mut self, role: &'static str, text: &str, is_final: bool) {
        self.out.push_back(Output::Transcript { role, text: text.to_string(), is_final, fields: self.fields.clone() });
    }

    /// A tool call from either engine: its effect on the form here, the rest for the caller.
    fn run_tool(&mut self, name: &str, arguments: &str) -> ToolResult {
        let r = tools::apply(&self.spec, &self.fields, name, arguments);
        match &r.effect {
            ToolEffect::FieldRecorded { field, value } => {
                tracing::info!(%field, "field recorded");
                tracing::debug!(%field, %value, "field value");
                self.fields.insert(field.clone(), value.clone());
                self.out.push_back(Output::Record(RecordOp::Field { name: field.clone(), value: value.clone() }));
                // Fields ride on every transcript line; a field-only update has no text.
                self.transcript("fields", "", true);
            }
            ToolEffect::Transfer { destination, .. } => tracing::info!(%destination, "transfer asked for"),
            ToolEffect::WarmTransfer { destination, .. } => tracing::info!(%destination, "warm transfer asked for"),
            ToolEffect::PressKeys { keys } => {
                // Which keys never reach the logs (an IVR PIN); the record has them only with
                // RECORD_DTMF, as the caller's own.
                tracing::info!(keys = keys.len(), "pressing keys");
                let text = if self.record_dtmf { keys.clone() } else { String::new() };
                let now = now_ms();
                self.write_turn(None, "dtmf_sent", &text, now, Some(now), false, None, None);
                self.out.push_back(Output::PressKeys { keys: keys.clone() });
            }
            ToolEffect::EndCall { .. } | ToolEffect::None => {}
        }
        if let Some(why) = r.refused {
            tracing::warn!(tool = %name, reason = why.as_str(), "tool call refused");
            self.out.push_back(Output::Metric(Metric::ToolRefused(why)));
        }
        r
    }

    fn form_complete(&self) -> bool {
        self.spec.fields.iter().all(|f| self.fields.contains_key(&f.name))
    }

    // ---- DTMF ---------------------------------------------------------------------------

    fn on_dtmf(&mut self, digit: String) {
        // Never in the logs; in the record only when the operator asked for it.
        let valid = digit.len() == 1 && digit.bytes().all(|b| b.is_ascii_digit() || b"*#ABCD".contains(&b));
        if !valid {
            tracing::debug!("malformed DTMF digit ignored");
            return;
        }
        tracing::info!("caller pressed a key");
        let text = if self.record_dtmf { digit.clone() } else { String::new() };
        let now = now_ms();
        self.write_turn(None, "dtmf", &text, now, Some(now), false, None, None);
        self.engine_dtmf(&digit);
    }

    // ---- engine dispatch ----------------------------------------------------------------

    fn engine_deadline(&self) -> Option<Instant> {
        match &self.engine {
            Engine::Cascaded(c) => c.deadline(),
            Engine::Realtime(r) => r.deadline(),
        }
    }

    fn engine_timers(&mut self) {
        match self.mode {
            Mode::Cascaded => self.cascaded_timers(),
            Mode::Realtime => self.realtime_timers(),
        }
    }

    fn on_speech_finished(&mut self, speech: SpeechId) {
        if self.mode == Mode::Cascaded {
            self.cascaded_speech_finished(speech);
        }
    }

    fn engine_settled(&mut self, speech: SpeechId, interrupted: bool, heard: &str, heard_ms: u32) {
        match self.mode {
            Mode::Cascaded => self.cascaded_settled(speech, interrupted, heard),
            Mode::Realtime => self.realtime_settled(speech, interrupted, heard_ms),
        }
    }

    /// A speech is over (played or cut).
    fn engine_speech_over(&mut self, speech: SpeechId) {
        if self.mode == Mode::Cascaded {
            self.cascaded_line_over(speech);
        }
    }

    fn engine_interrupted(&mut self, speech: SpeechId) {
        match self.mode {
            Mode::Cascaded => self.cascaded_interrupted(speech),
            Mode::Realtime => self.realtime_interrupted(speech),
        }
    }

    fn engine_stop(&mut self) {
        match self.mode {
            Mode::Cascaded => self.cascaded_stop(),
            Mode::Realtime => self.realtime_stop(),
        }
    }

    fn engine_finish(&mut self) {
        if self.mode == Mode::Realtime {
            self.realtime_stop();
        }
    }

    fn engine_dtmf(&mut self, digit: &str) {
        match self.mode {
            Mode::Cascaded => self.cascaded_dtmf(digit),
            // The model hears the caller itself; keys only stop the agent.
            Mode::Realtime => {
                let _ = digit;
                if self.agent_talking() {
                    self.commit_interruption();
                }
            }
        }
    }
}
