//! A simulated call around the sans-IO [`Conversation`]: a caller, a bridge, a recogniser and
//! reply tasks, all on a simulated clock — the model of the other side the core is tested
//! against, faster than real time.
//!
//! * **Reply tasks**: a line is spoken at [`MS_PER_CHAR`] per character after [`TTS_LATENCY`];
//!   an LLM reply answers from a script after [`LLM_LATENCY`]. Every sample of a speech's audio
//!   holds its frame number (1, 2, …), so what the caller heard can be read back exactly.
//! * **Bridge**: plays each named utterance with [`BRIDGE_LEAD`] of delay, reports `playback`
//!   every 250 ms and when complete; on `interrupt` it reports what was heard, drops the rest and
//!   mutes until the next name.
//! * **Caller**: speech and noise as voice-activity edges plus the recogniser's transcripts.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::config::AgentSpec;
use agent::conversation::{Config, Conversation, Input, Metric, Mode, Output, RecordOp, ReplyEvent, ReplySource, Stage, Voice};
use agent::providers::{ChatMessage, LlmEvent, SttEvent, ToolCall};
use agent::record::TurnRow;
use proto::control::Control;

pub const RATE: u32 = 8000;
pub const FRAME: usize = 160;
pub const MS_PER_CHAR: u64 = 60;
pub const TTS_LATENCY: u64 = 100;
pub const LLM_LATENCY: u64 = 200;
pub const BRIDGE_LEAD: u64 = 100;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A scripted LLM answer: its events in order.
pub type Script = Vec<LlmEvent>;

pub fn say(text: &str) -> LlmEvent {
    LlmEvent::TextDelta(text.into())
}

pub fn tool(name: &str, args: serde_json::Value) -> LlmEvent {
    LlmEvent::ToolCall(ToolCall { id: format!("call_{name}"), name: name.into(), arguments: args.to_string() })
}

pub fn done(reason: &str) -> LlmEvent {
    LlmEvent::Done { finish_reason: reason.into() }
}

/// How a simulated reply task fails.
#[derive(Clone, Debug)]
pub struct Fault {
    pub stage: Stage,
    pub fatal: bool,
}

#[derive(Default)]
struct Bridge {
    /// The name audio goes to now, and frames of it received (time heard, frame value).
    current: Option<String>,
    frames: Vec<(Instant, i16)>,
    muted: bool,
    last_report: Option<Instant>,
    last_frame: Option<Instant>,
    completed: bool,
}

pub struct Sim {
    pub t0: Instant,
    pub now: Instant,
    pub conv: Conversation,
    events: Vec<(Instant, u64, Input)>,
    seq: u64,
    /// Reply tasks alive (cancelled ones are dropped).
    live: BTreeMap<u64, ()>,
    pub scripts: VecDeque<Script>,
    /// Every LLM request's messages.
    pub requests: Vec<Vec<ChatMessage>>,
    pub llm_fault: Option<Fault>,
    pub tts_fault: Option<Fault>,
    /// Lines spoken with the fallback voice.
    pub fallback_lines: Vec<String>,
    bridge: Bridge,
    /// (time heard at the phone, frame value) of everything the caller heard.
    pub heard: Vec<(Instant, i16)>,
    pub controls: Vec<(Instant, Control)>,
    pub transcripts: Vec<(String, String)>,
    pub records: Vec<TurnRow>,
    pub fields: Vec<(String, String)>,
    pub metrics: Vec<Metric>,
    pub end: Option<agent::conversation::Outcome>,
    pub finalizes: u32,
    pub cancels: Vec<u64>,
    /// Keys the agent pressed (time, keys).
    pub keys_pressed: Vec<(Instant, String)>,
    /// Warm transfers' dials (time, destination, number) and hang-ups of the person's leg.
    pub dials: Vec<(Instant, String, String)>,
    pub transfer_hangups: Vec<Instant>,
}

pub fn spec() -> Arc<AgentSpec> {
    Arc::new(AgentSpec::load(None).unwrap())
}

pub fn spec_with(f: impl FnOnce(&mut AgentSpec)) -> Arc<AgentSpec> {
    let mut s = AgentSpec::load(None).unwrap();
    f(&mut s);
    Arc::new(s)
}

impl Sim {
    pub fn new(spec: Arc<AgentSpec>) -> Sim {
        Sim::with(spec, false)
    }

    pub fn with(spec: Arc<AgentSpec>, record_dtmf: bool) -> Sim {
        let t0 = Instant::now();
        let conv = Conversation::new(Config { spec, mode: Mode::Cascaded, playout_rate: RATE, record_dtmf }, t0);
        let mut s = Sim {
            t0,
            now: t0,
            conv,
            events: Vec::new(),
            seq: 0,
            live: BTreeMap::new(),
            scripts: VecDeque::new(),
            requests: Vec::new(),
            llm_fault: None,
            tts_fault: None,
            fallback_lines: Vec::new(),
            bridge: Bridge::default(),
            heard: Vec::new(),
            controls: Vec::new(),
            transcripts: Vec::new(),
            records: Vec::new(),
            fields: Vec::new(),
            metrics: Vec::new(),
            end: None,
            finalizes: 0,
            cancels: Vec::new(),
            keys_pressed: Vec::new(),
            dials: Vec::new(),
            transfer_hangups: Vec::new(),
        };
        s.drain();
        s
    }

    pub fn ms(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }

    pub fn at(&self, t_ms: u64) -> Instant {
        self.t0 + ms(t_ms)
    }

    /// Delivers `input` at `t_ms`.
    pub fn schedule(&mut self, t_ms: u64, input: Input) {
        let at = self.t0 + ms(t_ms);
        self.seq += 1;
        self.events.push((at, self.seq, input));
    }

    /// The caller speaks `text` from `from_ms` for `len_ms`; the recogniser ends the turn after
    /// the detector's hangover (the agent file's `end_of_speech_ms`) and `decode_ms`.
    pub fn caller_says(&mut self, from_ms: u64, len_ms: u64, text: &str) {
        let end = from_ms + len_ms;
        self.schedule(from_ms, Input::SpeechStarted);
        self.schedule(end + 500, Input::SpeechEnded { at: self.t0 + ms(end) });
        self.schedule(end + 600, Input::Stt(SttEvent::EndOfTurn { text: text.into() }));
    }

    /// Caller sound with no words: the detector hears it, the recogniser gives nothing.
    pub fn noise(&mut self, from_ms: u64, len_ms: u64) {
        let end = from_ms + len_ms;
        self.schedule(from_ms, Input::SpeechStarted);
        self.schedule(end + 500, Input::SpeechEnded { at: self.t0 + ms(end) });
    }

    /// Runs until `until_ms` (or the end of the call).
    pub fn run(&mut self, until_ms: u64) {
        let until = self.t0 + ms(until_ms);
        loop {
            if self.end.is_some() {
                return;
            }
            let next_ev = self.events.iter().map(|e| e.0).min();
            let next = [next_ev, self.conv.poll_timeout(), self.bridge_deadline()].into_iter().flatten().min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.now = self.now.max(until);
                self.bridge_tick();
                return;
            };
            self.now = self.now.max(next);
            self.bridge_tick();
            self.events.sort_by_key(|e| (e.0, e.1));
            let due: Vec<Input> = {
                let n = self.events.iter().take_while(|e| e.0 <= self.now).count();
                self.events.drain(..n).map(|e| e.2).collect()
            };
            if due.is_empty() {
                self.conv.handle(Input::Timeout, self.now);
            }
            for input in due {
                let keep = match &input {
                    Input::Reply { reply, .. } => self.live.contains_key(reply),
                    _ => true,
                };
                if keep {
                    self.conv.handle(input, self.now);
                }
            }
            self.drain();
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.conv.poll_output() {
            match o {
                Output::Frame(f) => self.bridge_frame(f[0]),
                Output::Control(c) => self.bridge_control(c),
                Output::PressKeys { keys } => self.keys_pressed.push((self.now, keys)),
                Output::Dial { destination, number } => self.dials.push((self.now, destination, number)),
                Output::HangUpTransfer => self.transfer_hangups.push(self.now),
                Output::Transcript { role, text, .. } => self.transcripts.push((role.to_string(), text)),
                Output::StartReply { reply, source, voice } => self.start_reply(reply, source, voice),
                Output::CancelReply { reply } => {
                    self.live.remove(&reply);
                    self.cancels.push(reply);
                }
                Output::SttFinalize => self.finalizes += 1,
                Output::RealtimeSend(_) | Output::RealtimeClose => {}
                Output::Record(RecordOp::Turn(row)) => match self.records.iter_mut().find(|r| r.seq == row.seq) {
                    Some(r) => *r = row,
                    None => self.records.push(row),
                },
                Output::Record(RecordOp::Field { name, value }) => self.fields.push((name, value)),
                Output::Metric(m) => self.metrics.push(m),
                Output::End(o) => self.end = Some(o),
            }
        }
    }

    // ---- reply tasks -------------------------------------------------------------------

    fn start_reply(&mut self, reply: u64, source: ReplySource, voice: Voice) {
        self.live.insert(reply, ());
        let now = self.ms();
        let ev = |event| Input::Reply { reply, event };
        match source {
            ReplySource::Text(line) => {
                if voice == Voice::Fallback {
                    self.fallback_lines.push(line.clone());
                }
                let failing = self.tts_fault.clone().filter(|_| voice == Voice::Main);
                self.schedule(now, ev(ReplyEvent::Sentence { seg: 0, text: line.clone() }));
                let t = self.speak(reply, now, 0, &line, 0, failing);
                if let Some(t) = t {
                    self.schedule(t, ev(ReplyEvent::Done));
                }
            }
            ReplySource::Llm { messages, .. } => {
                self.requests.push(messages);
                if let Some(f) = self.llm_fault.clone() {
                    self.schedule(now + LLM_LATENCY, ev(ReplyEvent::Failed { stage: f.stage, error: "llm down".into(), fatal: f.fatal }));
                    return;
                }
                let script = self.scripts.pop_front().unwrap_or_else(|| vec![done("stop")]);
                let mut t = now + LLM_LATENCY;
                self.schedule(t, ev(ReplyEvent::FirstToken));
                let (mut seg, mut frames) = (0, 0usize);
                let mut audio_end = t;
                for e in script {
                    match e {
                        LlmEvent::TextDelta(text) => {
                            self.schedule(t, ev(ReplyEvent::Sentence { seg, text: text.clone() }));
                            let failing = self.tts_fault.clone();
                            match self.speak(reply, t, seg, &text, frames, failing) {
                                Some(end) => audio_end = end,
                                None => return,
                            }
                            frames += text.len() * MS_PER_CHAR as usize / 20;
                            seg += 1;
                        }
                        LlmEvent::ToolCall(c) => self.schedule(t, ev(ReplyEvent::ToolCall(c))),
                        LlmEvent::Done { finish_reason } => self.schedule(t, ev(ReplyEvent::LlmDone { finish_reason })),
                    }
                    t += 10;
                }
                self.schedule(audio_end.max(t), ev(ReplyEvent::Done));
            }
        }
    }

    /// TTS of one sentence: its audio after the TTS latency. Returns when it is all handed
    /// over (None: the TTS failed).
    fn speak(&mut self, reply: u64, at: u64, seg: usize, text: &str, first_frame: usize, fault: Option<Fault>) -> Option<u64> {
        let t = at + TTS_LATENCY;
        if let Some(f) = fault {
            self.schedule(t, Input::Reply { reply, event: ReplyEvent::Failed { stage: f.stage, error: "tts down".into(), fatal: f.fatal } });
            return None;
        }
        let frames = text.len() * MS_PER_CHAR as usize / 20;
        let mut pcm = Vec::with_capacity(frames * FRAME);
        for k in 0..frames {
            pcm.extend(std::iter::repeat_n((first_frame + k + 1) as i16, FRAME));
        }
        self.schedule(t, Input::Reply { reply, event: ReplyEvent::Audio { seg, pcm } });
        Some(t)
    }

    // ---- the bridge --------------------------------------------------------------------

    fn bridge_frame(&mut self, value: i16) {
        self.bridge.last_frame = Some(self.now);
        if self.bridge.muted || self.bridge.current.is_none() {
            return;
        }
        let at = self.now + ms(BRIDGE_LEAD);
        self.bridge.frames.push((at, value));
        self.heard.push((at, value));
    }

    fn heard_ms(&self) -> u32 {
        self.bridge.frames.iter().filter(|(t, _)| *t <= self.now).count() as u32 * 20
    }

    fn report(&mut self, complete: bool, interrupted: bool) {
        let Some(label) = self.bridge.current.clone() else { return };
        let heard_ms = if complete { self.bridge.frames.len() as u32 * 20 } else { self.heard_ms() };
        self.bridge.last_report = Some(self.now);
        self.schedule(self.ms(), Input::Playback { utterance_id: label, heard_ms, complete, interrupted });
    }

    fn bridge_control(&mut self, c: Control) {
        self.controls.push((self.now, c.clone()));
        match c {
            Control::Utterance { utterance_id } => {
                if self.bridge.current.is_some() && !self.bridge.completed {
                    self.report(true, false);
                }
                self.bridge = Bridge { current: Some(utterance_id), ..Bridge::default() };
            }
            Control::Interrupt { .. } => {
                // Twilio `clear`: what was not heard yet is gone.
                let now = self.now;
                self.heard.retain(|(t, _)| *t <= now);
                self.bridge.frames.retain(|(t, _)| *t <= now);
                if !self.bridge.completed {
                    self.report(false, true);
                }
                self.bridge.completed = true;
                self.bridge.muted = true;
            }
            _ => {}
        }
    }

    fn bridge_deadline(&self) -> Option<Instant> {
        if self.bridge.completed || self.bridge.current.is_none() {
            return None;
        }
        let last = self.bridge.frames.last()?.0;
        let every = self.bridge.last_report.map_or(self.now, |t| t + ms(250));
        Some(every.min(last.max(self.bridge.last_frame.unwrap_or(last) + ms(200))))
    }

    fn bridge_tick(&mut self) {
        if self.bridge.completed || self.bridge.current.is_none() {
            return;
        }
        let Some(&(last, _)) = self.bridge.frames.last() else { return };
        let quiet = self.bridge.last_frame.is_some_and(|t| self.now >= t + ms(200));
        if quiet && self.now >= last {
            self.bridge.completed = true;
            self.report(true, false);
        } else if self.bridge.last_report.is_none_or(|t| self.now >= t + ms(250)) {
            self.report(false, false);
        }
    }

    // ---- what happened -----------------------------------------------------------------

    /// Control messages of one kind.
    pub fn hangups(&self) -> Vec<Option<String>> {
        self.controls.iter().filter_map(|(_, c)| if let Control::Hangup { reason } = c { Some(reason.clone()) } else { None }).collect()
    }

    pub fn transfers(&self) -> Vec<String> {
        self.controls.iter().filter_map(|(_, c)| if let Control::Transfer { to } = c { Some(to.clone()) } else { None }).collect()
    }

    pub fn interrupts(&self) -> Vec<Instant> {
        self.controls.iter().filter(|(_, c)| matches!(c, Control::Interrupt { .. })).map(|(t, _)| *t).collect()
    }

    pub fn assistant_rows(&self) -> Vec<&TurnRow> {
        self.records.iter().filter(|r| r.role == "assistant").collect()
    }

    pub fn said(&self, role: &str) -> Vec<String> {
        self.transcripts.iter().filter(|(r, t)| r == role && !t.is_empty()).map(|(_, t)| t.clone()).collect()
    }

    pub fn count(&self, f: impl Fn(&Metric) -> bool) -> usize {
        self.metrics.iter().filter(|m| f(m)).count()
    }

    /// Last time the caller heard agent audio.
    pub fn last_heard(&self) -> Option<Instant> {
        self.heard.last().map(|h| h.0)
    }
}
