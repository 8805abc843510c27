//! The cascaded reply engine: the recogniser's turns go to the LLM, its words to the TTS, and
//! the history is kept here — trimmed to what the caller heard when they interrupted.
//!
//! * One LLM reply at a time. A turn that comes while the reply has not spoken yet is answered
//!   together with the one before (its tool calls stand).
//! * **Preemptive reply.** On the recogniser's early transcript of a turn (`Preflight`) the LLM
//!   starts at once, but its audio is held and its tool calls wait; when the final transcript
//!   matches it plays, otherwise it is thrown away and the final is answered.
//! * Tool-only answers get up to [`MAX_ROUNDS`] more LLM rounds; an ending (`end_call`,
//!   `transfer`, or the form complete) speaks its line, then hangs up or transfers.

use std::time::{Duration, Instant};

use super::speech::{LineKind, Origin, SpeechState};
use super::tools::{self, ToolEffect};
use super::turn_taking::{real_words, WordsVerdict};
use super::{Conversation, EndAction, FinishReason, Metric, Output, ReplyEvent, ReplyId, ReplySource, SpeechId, Stage, Voice};
use crate::config::AgentSpec;
use crate::dialog::normalize;
use crate::metrics::TurnClock;
use crate::providers::{ChatMessage, Role, SttEvent, ToolCall, ToolSpec};
use crate::record::now_ms;

/// LLM round trips for one caller turn (tool follow-ups).
pub const MAX_ROUNDS: u32 = 3;
/// Keys pressed within this of each other are one entry.
const DTMF_PAUSE: Duration = Duration::from_millis(1500);
/// Most keys in one entry.
const DTMF_MAX: usize = 32;

#[derive(Debug)]
struct LlmReply {
    id: ReplyId,
    speech: SpeechId,
    round: u32,
    /// Started on this early transcript; held until the final one matches.
    preemptive: Option<String>,
    clock: TurnClock,
    llm_done: Option<String>,
    tool_calls: Vec<ToolCall>,
    tool_results: Vec<ChatMessage>,
    /// Tool calls of a held reply, run once it is confirmed.
    deferred: Vec<ToolCall>,
    end: Option<ToolEffect>,
}

#[derive(Debug)]
pub(super) struct Cascaded {
    history: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    reply: Option<LlmReply>,
    /// The history index of each spoken reply's message, to trim it to what was heard.
    spoken: Vec<(SpeechId, usize)>,
    finals: Vec<String>,
    final_deadline: Option<Instant>,
    dtmf: String,
    dtmf_deadline: Option<Instant>,
}

impl Cascaded {
    pub fn new(spec: &AgentSpec) -> Cascaded {
        Cascaded {
            history: vec![ChatMessage::new(Role::System, tools::system_prompt(spec))],
            tools: tools::specs(spec),
            reply: None,
            spoken: Vec::new(),
            finals: Vec::new(),
            final_deadline: None,
            dtmf: String::new(),
            dtmf_deadline: None,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        [self.final_deadline, self.dtmf_deadline].into_iter().flatten().min()
    }

    /// The conversation as the LLM sees it (tests).
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }
}

impl Conversation {
    fn cascaded(&mut self) -> &mut Cascaded {
        match &mut self.engine {
            super::Engine::Cascaded(c) => c,
            super::Engine::Realtime(_) => unreachable!("cascaded engine asked for in Realtime mode"),
        }
    }

    fn cascaded_ref(&self) -> &Cascaded {
        match &self.engine {
            super::Engine::Cascaded(c) => c,
            super::Engine::Realtime(_) => unreachable!("cascaded engine asked for in Realtime mode"),
        }
    }

    /// The LLM's view of the conversation (cascaded mode; empty otherwise).
    pub fn history(&self) -> &[ChatMessage] {
        match &self.engine {
            super::Engine::Cascaded(c) => c.history(),
            super::Engine::Realtime(_) => &[],
        }
    }

    pub(super) fn on_stt(&mut self, ev: SttEvent) {
        if self.mode != super::Mode::Cascaded {
            return;
        }
        match ev {
            SttEvent::SpeechStarted => {}
            SttEvent::Interim { text } => {
                tracing::debug!(%text, "caller (interim)");
                self.transcript("user", &text, false);
                self.caller_words(&text, false);
            }
            SttEvent::Final { text, .. } => {
                if !text.trim().is_empty() {
                    self.caller_words(&text, false);
                    self.cascaded().finals.push(text);
                }
            }
            SttEvent::Preflight { text } => self.preflight(text),
            SttEvent::EndOfTurn { text } => {
                let c = self.cascaded();
                let text = if text.trim().is_empty() { c.finals.join(" ") } else { text };
                c.finals.clear();
                c.final_deadline = None;
                self.user_turn(text.trim().to_string());
            }
            SttEvent::Error(e) => self.give_up(Stage::Stt, &e),
        }
    }

    pub(super) fn cascaded_speech_started(&mut self) {
        if self.mode != super::Mode::Cascaded {
            return;
        }
        // The caller goes on: an early transcript is no longer the turn.
        if self.cascaded().reply.as_ref().is_some_and(|r| r.preemptive.is_some()) {
            self.drop_preemptive();
        }
    }

    pub(super) fn cascaded_speech_ended(&mut self) {
        if self.mode != super::Mode::Cascaded {
            return;
        }
        self.out.push_back(Output::SttFinalize);
        let t = self.now + Duration::from_millis(self.spec.turn.stt_final_timeout_ms as u64);
        self.cascaded().final_deadline = Some(t);
    }

    pub(super) fn cascaded_timers(&mut self) {
        let now = self.now;
        if self.cascaded().final_deadline.is_some_and(|d| now >= d) {
            // The recogniser gave finals but no end of turn: take what we have.
            let c = self.cascaded();
            c.final_deadline = None;
            let text = c.finals.join(" ");
            c.finals.clear();
            if !text.trim().is_empty() {
                self.user_turn(text);
            }
        }
        if self.cascaded().dtmf_deadline.is_some_and(|d| now >= d) {
            self.flush_dtmf();
        }
    }

    /// Is this a turn at all: words, and speech the detector heard.
    fn is_turn(&self, text: &str) -> bool {
        if real_words(text) == 0 {
            tracing::debug!("transcript without words ignored");
            return false;
        }
        if self.caller_speech_ms() < self.spec.turn.min_speech_ms {
            tracing::info!("transcript without caller speech ignored (noise)");
            return false;
        }
        true
    }

    fn user_turn(&mut self, text: String) {
        if text.is_empty() || !self.is_turn(&text) {
            return;
        }
        match self.caller_words(&text, true) {
            WordsVerdict::TalkOn => {
                tracing::debug!(%text, "caller spoke over the agent without interrupting; not answered");
                self.record_user(&text);
                self.caller.speech_ms = 0;
                return;
            }
            WordsVerdict::Interrupted | WordsVerdict::NotTalking => {}
        }
        if let Some(p) = self.cascaded().reply.as_ref().and_then(|r| r.preemptive.clone()) {
            if normalize(&p) == normalize(&text) {
                self.confirm_preemptive(text);
                return;
            }
            self.drop_preemptive();
        }
        self.answer(text);
    }

    /// A caller turn to answer: into the history and the record, then the LLM.
    fn answer(&mut self, text: String) {
        self.replace_unspoken_reply();
        self.turns += 1;
        self.out.push_back(Output::Metric(Metric::Turn));
        tracing::info!(turn = self.turns, "caller turn");
        tracing::debug!(%text, "caller");
        self.record_user(&text);
        self.cascaded().history.push(ChatMessage::new(Role::User, text));
        let clock = self.turn_clock();
        self.caller.speech_ms = 0;
        self.start_llm(clock, 0, None);
    }

    fn turn_clock(&self) -> TurnClock {
        TurnClock { end_of_speech: self.caller.eos_at, stt_final: Some(self.now), ..Default::default() }
    }

    fn record_user(&mut self, text: &str) {
        let now = now_ms();
        self.write_turn(None, "user", text, now, Some(now), false, None, None);
        self.transcript("user", text, true);
    }

    fn start_llm(&mut self, clock: TurnClock, round: u32, preemptive: Option<String>) {
        let id = self.next_reply;
        self.next_reply += 1;
        let speech = self.new_speech(Origin::Reply(id), preemptive.is_some());
        let c = self.cascaded();
        let mut messages = c.history.clone();
        if let Some(p) = &preemptive {
            messages.push(ChatMessage::new(Role::User, p.clone()));
        }
        let tools = c.tools.clone();
        c.reply = Some(LlmReply {
            id,
            speech,
            round,
            preemptive,
            clock,
            llm_done: None,
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            deferred: Vec::new(),
            end: None,
        });
        if let Some(s) = self.speech_mut(speech) {
            s.clock = clock;
        }
        self.out.push_back(Output::StartReply { reply: id, source: ReplySource::Llm { messages, tools }, voice: Voice::Main });
    }

    fn preflight(&mut self, text: String) {
        let busy = self.cascaded().reply.is_some() || self.agent_talking() || self.pending_end.is_some();
        if !self.spec.turn.preemptive_reply || busy || !self.is_turn(&text) {
            return;
        }
        tracing::debug!("preemptive reply on the early transcript");
        let clock = self.turn_clock();
        self.start_llm(clock, 0, Some(text));
    }

    fn confirm_preemptive(&mut self, text: String) {
        self.turns += 1;
        self.out.push_back(Output::Metric(Metric::Turn));
        self.out.push_back(Output::Metric(Metric::Preemptive { kept: true }));
        tracing::info!(turn = self.turns, "caller turn (preemptive reply kept)");
        self.record_user(&text);
        self.caller.speech_ms = 0;
        let stt_final = self.now;
        let c = self.cascaded();
        c.history.push(ChatMessage::new(Role::User, text));
        let Some(r) = c.reply.as_mut() else { return };
        r.preemptive = None;
        r.clock.stt_final = Some(stt_final);
        let (speech, deferred) = (r.speech, std::mem::take(&mut r.deferred));
        self.playout.release(speech);
        // The turn's clock: the end of speech is known now (the early transcript came before).
        let eos = self.caller.eos_at;
        let texts = match self.speech_mut(speech) {
            Some(s) => {
                s.clock.end_of_speech = eos.or(s.clock.end_of_speech);
                s.clock.stt_final = Some(stt_final);
                s.texts.clone()
            }
            None => Vec::new(),
        };
        for t in texts.iter().filter(|t| !t.is_empty()) {
            self.transcript("assistant", t, true);
        }
        for call in deferred {
            self.reply_tool(call);
        }
        self.maybe_reply_complete();
    }

    fn drop_preemptive(&mut self) {
        let Some(r) = self.cascaded().reply.take() else { return };
        self.out.push_back(Output::Metric(Metric::Preemptive { kept: false }));
        self.out.push_back(Output::CancelReply { reply: r.id });
        self.cut(r.speech);
    }

    /// The reply in flight has not said anything yet: answer the new turn instead (keeping
    /// what its tools did).
    fn replace_unspoken_reply(&mut self) {
        let unspoken = match &self.cascaded_ref().reply {
            Some(r) => !self.speech(r.speech).is_some_and(|s| s.spoke),
            None => false,
        };
        if unspoken {
            let Some(r) = self.cascaded().reply.take() else { return };
            self.out.push_back(Output::CancelReply { reply: r.id });
            self.cut(r.speech);
            self.commit(r, Some(String::new()));
        }
    }

    /// Puts a reply into the history: the words heard (`heard`, or all of it), its tool calls
    /// and their results.
    fn commit(&mut self, r: LlmReply, heard: Option<String>) {
        let full = self.speech(r.speech).map(|s| s.full_text()).unwrap_or_default();
        let content = heard.unwrap_or(full);
        let c = self.cascaded();
        if !content.is_empty() || !r.tool_calls.is_empty() {
            let mut m = ChatMessage::new(Role::Assistant, content);
            m.tool_calls = r.tool_calls;
            c.history.push(m);
            let ix = c.history.len() - 1;
            c.spoken.push((r.speech, ix));
            if c.spoken.len() > 16 {
                c.spoken.remove(0);
            }
            c.history.extend(r.tool_results);
        }
    }

    pub(super) fn on_reply(&mut self, reply: ReplyId, event: ReplyEvent) {
        let Some(speech) = self.speech_of_reply(reply) else { return };
        if self.mode == super::Mode::Realtime {
            return self.on_line_event(speech, event);
        }
        if self.speech(speech).is_some_and(|s| s.is_over() && !matches!(event, ReplyEvent::Done)) {
            return; // a cut reply's leftovers
        }
        let current = self.cascaded().reply.as_ref().is_some_and(|r| r.id == reply);
        let now = self.now;
        match event {
            ReplyEvent::FirstToken => {
                if let Some(r) = self.cascaded().reply.as_mut().filter(|r| r.id == reply) {
                    r.clock.llm_first_token.get_or_insert(now);
                }
            }
            ReplyEvent::Sentence { seg, text } => {
                let held = self.cascaded().reply.as_ref().is_some_and(|r| r.id == reply && r.preemptive.is_some());
                if let Some(s) = self.speech_mut(speech) {
                    if s.texts.len() <= seg {
                        s.texts.resize(seg + 1, String::new());
                    }
                    s.texts[seg] = text.clone();
                }
                if !held {
                    tracing::debug!(%text, "agent");
                    self.transcript("assistant", &text, true);
                }
            }
            ReplyEvent::Audio { seg, pcm } => {
                let llm_first = self.cascaded().reply.as_ref().filter(|r| r.id == reply).and_then(|r| r.clock.llm_first_token);
                if let Some(s) = self.speech_mut(speech) {
                    s.clock.tts_first_audio.get_or_insert(now);
                    if let Some(t) = llm_first {
                        s.clock.llm_first_token.get_or_insert(t);
                    }
                }
                if !self.playout.push(speech, seg, &pcm) {
                    tracing::debug!(samples = pcm.len(), "agent audio refused by the playout");
                }
            }
            ReplyEvent::ToolCall(call) if current => {
                if self.cascaded().reply.as_ref().is_some_and(|r| r.preemptive.is_some()) {
                    if let Some(r) = self.cascaded().reply.as_mut() {
                        r.deferred.push(call);
                    }
                } else {
                    self.reply_tool(call);
                }
            }
            ReplyEvent::ToolCall(_) => {}
            ReplyEvent::LlmDone { finish_reason } => {
                if let Some(r) = self.cascaded().reply.as_mut().filter(|r| r.id == reply) {
                    r.llm_done = Some(finish_reason);
                }
            }
            ReplyEvent::Done => {
                self.playout.end(speech);
                if self.playout.length_ms(speech) == Some(0) {
                    self.finish_silent(speech);
                }
                self.maybe_reply_complete();
            }
            ReplyEvent::Failed { stage, error, fatal } => self.reply_failed(speech, current, stage, &error, fatal),
        }
    }

    /// Realtime mode: only lines of ours (fallback voice) run as reply tasks.
    fn on_line_event(&mut self, speech: SpeechId, event: ReplyEvent) {
        match event {
            ReplyEvent::Sentence { seg, text } => {
                if let Some(s) = self.speech_mut(speech) {
                    s.texts.resize(seg + 1, String::new());
                    s.texts[seg] = text.clone();
                }
                self.transcript("assistant", &text, true);
            }
            ReplyEvent::Audio { seg, pcm } => {
                self.playout.push(speech, seg, &pcm);
            }
            ReplyEvent::Done => {
                self.playout.end(speech);
                if self.playout.length_ms(speech) == Some(0) {
                    self.finish_silent(speech);
                }
            }
            ReplyEvent::Failed { stage, error, .. } => {
                self.out.push_back(Output::Metric(Metric::ProviderError(stage)));
                tracing::error!(stage = stage.as_str(), %error, "a line of ours could not be spoken");
                self.cut(speech);
            }
            _ => {}
        }
    }

    fn reply_failed(&mut self, speech: SpeechId, current: bool, stage: Stage, error: &str, fatal: bool) {
        let line = self.speech(speech).and_then(|s| s.line_kind());
        let held = current && self.cascaded().reply.as_ref().is_some_and(|r| r.preemptive.is_some());
        if held {
            // Only a guess failed: the final transcript is answered the normal way.
            self.drop_preemptive();
            return;
        }
        let spoke = self.speech(speech).is_some_and(|s| s.spoke);
        self.cut(speech);
        if current {
            if let Some(r) = self.cascaded().reply.take() {
                let heard = self.speech(speech).map(|s| s.heard_text());
                self.commit(r, heard);
            }
        }
        match line {
            // The last words cannot be said: the ending goes on without them.
            Some(k) if k.is_final() => {
                self.out.push_back(Output::Metric(Metric::ProviderError(stage)));
                tracing::error!(stage = stage.as_str(), %error, "the last line could not be spoken");
            }
            _ if spoke && !fatal => {
                self.out.push_back(Output::Metric(Metric::ProviderError(stage)));
                tracing::warn!(stage = stage.as_str(), %error, "reply failed after it began; the caller heard part of it");
                self.failures += 1;
                if self.failures >= super::MAX_FAILURES {
                    self.give_up(stage, error);
                }
            }
            _ => self.provider_failed(stage, error, fatal),
        }
    }

    fn reply_tool(&mut self, call: ToolCall) {
        let r = self.run_tool(&call.name, &call.arguments);
        let Some(reply) = self.cascaded().reply.as_mut() else { return };
        reply.tool_results.push(ChatMessage {
            role: Role::Tool,
            content: r.output,
            tool_calls: vec![],
            tool_call_id: Some(call.id.clone()),
        });
        reply.tool_calls.push(call);
        if matches!(r.effect, ToolEffect::EndCall { .. } | ToolEffect::Transfer { .. } | ToolEffect::WarmTransfer { .. }) {
            reply.end = Some(r.effect);
        }
    }

    pub(super) fn cascaded_speech_finished(&mut self, _speech: SpeechId) {
        self.maybe_reply_complete();
    }

    /// The LLM is done and all its audio was pushed: into the history, then what comes next.
    fn maybe_reply_complete(&mut self) {
        let ready = match &self.cascaded_ref().reply {
            Some(r) => r.preemptive.is_none() && r.llm_done.is_some() && self.speech(r.speech).is_some_and(|s| s.state == SpeechState::Finished),
            None => false,
        };
        if !ready {
            return;
        }
        let Some(r) = self.cascaded().reply.take() else { return };
        let (speech, round, end) = (r.speech, r.round, r.end.clone());
        let spoke = self.speech(speech).is_some_and(|s| s.spoke);
        let said_nothing = self.speech(speech).is_none_or(|s| s.full_text().is_empty());
        let follow_up = r.llm_done.as_deref() == Some("tool_calls") && said_nothing && end.is_none() && round + 1 < MAX_ROUNDS;
        let clock = r.clock;
        self.commit(r, None);
        if spoke {
            self.failures = 0;
        }
        match end {
            Some(ToolEffect::EndCall { goodbye }) => {
                let line = goodbye.unwrap_or_else(|| self.spec.closing.clone());
                let s = self.say(LineKind::Goodbye, &line, Voice::Main);
                let reason = if self.form_complete() { FinishReason::Completed } else { FinishReason::CallerGoodbye };
                self.end_after(Some(s), EndAction::Hangup { reason: "end_call" }, reason);
            }
            Some(ToolEffect::Transfer { number, .. }) => {
                let line = self.spec.transfer_line.clone();
                let s = self.say(LineKind::TransferLine, &line, Voice::Main);
                self.end_after(Some(s), EndAction::Transfer { number }, FinishReason::Transferred);
            }
            Some(ToolEffect::WarmTransfer { destination, number }) => self.start_warm_transfer(destination, number),
            _ if follow_up => self.start_llm(clock, round + 1, None),
            _ if self.form_complete() && self.pending_end.is_none() => {
                // The form is complete but the model did not end the call: do it for it.
                let line = self.spec.closing.clone();
                let s = self.say(LineKind::Closing, &line, Voice::Main);
                self.end_after(Some(s), EndAction::Hangup { reason: "form complete" }, FinishReason::Completed);
            }
            _ => {}
        }
    }

    /// The caller interrupted `speech`: its reply stops, and what was queued behind it goes.
    pub(super) fn cascaded_interrupted(&mut self, speech: SpeechId) {
        let current = self.cascaded().reply.as_ref().is_some_and(|r| r.speech == speech);
        if current {
            if let Some(r) = self.cascaded().reply.take() {
                self.out.push_back(Output::CancelReply { reply: r.id });
                let heard = self.speech(speech).map(|s| s.heard_text());
                self.commit(r, heard);
            }
        }
        // Lines queued behind it answer a conversation that moved on (final ones stay).
        let queued: Vec<(SpeechId, Option<ReplyId>)> = self
            .speeches
            .iter()
            .filter(|s| s.state == SpeechState::Queued && !s.line_kind().is_some_and(|k| k.is_final()))
            .map(|s| (s.id, s.reply()))
            .collect();
        for (id, reply) in queued {
            if let Some(r) = reply {
                self.out.push_back(Output::CancelReply { reply: r });
            }
            self.cut(id);
            self.cancel_pending_end_for(id);
        }
    }

    /// A line of ours was said (or cut): the model hears of it as an assistant message.
    pub(super) fn cascaded_line_over(&mut self, speech: SpeechId) {
        let Some(s) = self.speech(speech) else { return };
        if s.line_kind().is_none() || !s.spoke {
            return;
        }
        let text = s.heard_text();
        if text.is_empty() {
            return;
        }
        let c = self.cascaded();
        c.history.push(ChatMessage::new(Role::Assistant, text));
        let ix = c.history.len() - 1;
        c.spoken.push((speech, ix));
        if c.spoken.len() > 16 {
            c.spoken.remove(0);
        }
    }

    /// What the caller heard of a reply is known: its message says exactly that.
    pub(super) fn cascaded_settled(&mut self, speech: SpeechId, interrupted: bool, heard: &str) {
        if !interrupted {
            return;
        }
        let c = self.cascaded();
        if let Some(&(_, ix)) = c.spoken.iter().find(|(s, _)| *s == speech) {
            if let Some(m) = c.history.get_mut(ix) {
                if m.content != heard {
                    tracing::debug!(speech, "assistant message trimmed to what was heard");
                    m.content = heard.to_string();
                }
            }
        }
    }

    pub(super) fn cascaded_stop(&mut self) {
        if let Some(r) = self.cascaded().reply.take() {
            self.out.push_back(Output::CancelReply { reply: r.id });
            let heard = self.speech(r.speech).map(|s| s.heard_text());
            self.commit(r, heard);
        }
    }

    /// A note for the model about what happened outside the conversation (a transfer that did
    /// not happen).
    pub(super) fn cascaded_note(&mut self, text: &str) {
        if let super::Engine::Cascaded(c) = &mut self.engine {
            c.history.push(ChatMessage::new(Role::System, text));
        }
    }

    /// Drops the caller's turn in the making (finals, keys): the far end is a machine.
    pub(super) fn cascaded_forget_turn(&mut self) {
        if let super::Engine::Cascaded(c) = &mut self.engine {
            c.finals.clear();
            c.final_deadline = None;
            c.dtmf.clear();
            c.dtmf_deadline = None;
        }
    }

    /// A key: it stops the agent, and the keys of one entry become a turn.
    pub(super) fn cascaded_dtmf(&mut self, digit: &str) {
        if self.agent_talking() {
            self.commit_interruption();
        }
        let now = self.now;
        let c = self.cascaded();
        if digit == "#" || c.dtmf.len() >= DTMF_MAX {
            c.dtmf_deadline = Some(now);
        } else {
            c.dtmf.push_str(digit);
            c.dtmf_deadline = Some(now + DTMF_PAUSE);
        }
        if digit == "#" {
            self.flush_dtmf();
        }
    }

    fn flush_dtmf(&mut self) {
        let c = self.cascaded();
        c.dtmf_deadline = None;
        let keys = std::mem::take(&mut c.dtmf);
        if keys.is_empty() {
            return;
        }
        // The model needs the keys; the record and the logs do not get them (see on_dtmf).
        self.replace_unspoken_reply();
        self.turns += 1;
        self.out.push_back(Output::Metric(Metric::Turn));
        let text = format!("(The caller typed {keys} on the keypad.)");
        self.cascaded().history.push(ChatMessage::new(Role::User, text));
        let clock = TurnClock { stt_final: Some(self.now), ..Default::default() };
        self.start_llm(clock, 0, None);
    }
}
