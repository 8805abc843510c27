//! The Realtime reply engine: OpenAI Realtime hears the caller (server VAD) and speaks itself
//! (μ-law 8 kHz both ways); the conversation plays its items, cuts them when the caller talks
//! over them and truncates them on the server at what the caller heard.
//!
//! * Each assistant item with audio is a speech of the shared playout, named to the bridge.
//! * **Barge-in** (`speech_started` while the agent talks): the speech stops, `interrupt` goes to
//!   the bridge, a response in flight gets `response.cancel`, and once the bridge reports what
//!   was heard (or [`REPORT_WAIT`](super::REPORT_WAIT) passes) the item gets
//!   `conversation.item.truncate` at that position. Items never played are truncated at 0.
//! * **Tools** run through the shared implementation; their outputs go back once the response is
//!   done, then `response.create` — with the closing (or transfer) line as instructions when the
//!   call is ending, after which the ending waits for that line to be heard.
//! * **Failures**: a failed response or no reply within [`RESPONSE_TIMEOUT`] is a reprompt in the
//!   local voice; the third in a row, a refused session or a lost socket is an apology and a
//!   hang-up. Never dead air.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::speech::{Origin, SpeechState};
use super::tools::ToolEffect;
use super::{Conversation, EndAction, FinishReason, Metric, Output, SpeechId, Stage};
use crate::metrics::TurnClock;
use crate::providers::openai_realtime::RealtimeEvent;
use crate::record::now_ms;

/// A reply must begin this soon after the caller's turn (or our `response.create`).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest transcript kept per item.
const MAX_ITEM_TEXT: usize = 8_000;

#[derive(Debug)]
struct InFlight {
    id: String,
    clock: TurnClock,
}

#[derive(Debug, Default)]
pub(super) struct Realtime {
    link_up: bool,
    response: Option<InFlight>,
    /// The response we cancelled: its late audio is dropped.
    cancelled: Option<String>,
    /// Function outputs of the response in flight (sent once it is done).
    outputs: Vec<(String, String)>,
    /// `end_call` / `transfer` in the response in flight.
    end: Option<ToolEffect>,
    /// A reply is due by then (the watchdog against dead air).
    awaiting: Option<Instant>,
    /// The caller's current turn.
    clock: TurnClock,
    /// Vendor item id → our speech, newest last.
    items: Vec<(String, String, SpeechId)>,
    /// The closing response was asked for: its first item is the last line.
    closing: bool,
}

impl Realtime {
    pub fn new() -> Realtime {
        Realtime { link_up: true, ..Default::default() }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.awaiting
    }
}

impl Conversation {
    fn rt(&mut self) -> &mut Realtime {
        match &mut self.engine {
            super::Engine::Realtime(r) => r,
            super::Engine::Cascaded(_) => unreachable!("realtime engine asked for in cascaded mode"),
        }
    }

    fn rt_ref(&self) -> Option<&Realtime> {
        match &self.engine {
            super::Engine::Realtime(r) => Some(r),
            super::Engine::Cascaded(_) => None,
        }
    }

    fn send(&mut self, event: Value) {
        if self.rt().link_up {
            self.out.push_back(Output::RealtimeSend(event));
        }
    }

    /// The greeting, in the model's voice.
    pub(super) fn realtime_greet(&mut self) {
        let greeting = self.spec.greeting.replace('"', "'");
        self.send(json!({"type": "response.create", "response": {
            "instructions": format!("Greet the caller by saying exactly: \"{greeting}\""),
        }}));
        let t = self.now + RESPONSE_TIMEOUT;
        self.rt().awaiting = Some(t);
    }

    pub(super) fn realtime_timers(&mut self) {
        if self.rt().awaiting.is_some_and(|t| self.now >= t) {
            self.rt().awaiting = None;
            self.realtime_failure("no reply in time");
        }
    }

    pub(super) fn on_realtime(&mut self, ev: RealtimeEvent) {
        if !self.rt().link_up {
            return; // given up on the model: only the apology and the hang-up are left
        }
        let now = self.now;
        match ev {
            RealtimeEvent::SessionUpdated => tracing::debug!("realtime session updated"),
            RealtimeEvent::SpeechStarted { .. } => self.realtime_speech_started(),
            RealtimeEvent::SpeechStopped { .. } => {
                let r = self.rt();
                r.clock = TurnClock { end_of_speech: Some(now), ..Default::default() };
                r.awaiting = Some(now + RESPONSE_TIMEOUT);
            }
            RealtimeEvent::UserTranscript { text, .. } => {
                let text = text.trim().to_string();
                let r = self.rt();
                r.clock.stt_final.get_or_insert(now);
                if let Some(f) = &mut r.response {
                    f.clock.stt_final.get_or_insert(now);
                }
                if text.is_empty() {
                    return;
                }
                self.turns += 1;
                self.out.push_back(Output::Metric(Metric::Turn));
                tracing::info!(turn = self.turns, "caller turn");
                tracing::debug!(%text, "caller");
                let t = now_ms();
                self.write_turn(None, "user", &text, t, Some(t), false, None, None);
                self.transcript("user", &text, true);
            }
            RealtimeEvent::ResponseCreated { response_id } => {
                let r = self.rt();
                let mut clock = std::mem::take(&mut r.clock);
                clock.llm_first_token = Some(now);
                r.response = Some(InFlight { id: response_id, clock });
            }
            RealtimeEvent::AudioDelta { item_id, audio } => self.realtime_audio(&item_id, &audio),
            RealtimeEvent::AssistantTranscriptDelta { item_id, delta } => {
                let speech = self.item_speech(&item_id);
                if let Some(s) = self.speech_mut(speech) {
                    if s.texts.is_empty() {
                        s.texts.push(String::new());
                    }
                    if s.texts[0].len() + delta.len() <= MAX_ITEM_TEXT {
                        s.texts[0].push_str(&delta);
                    }
                }
            }
            RealtimeEvent::FunctionCall { call_id, name, arguments } => {
                tracing::info!(%name, "realtime tool call");
                let mut r = self.run_tool(&name, &arguments);
                if let ToolEffect::WarmTransfer { destination, number } = r.effect {
                    // The Realtime session cannot be put on hold and back yet: a cold transfer.
                    tracing::warn!(%destination, "warm transfer in Realtime mode: transferring cold");
                    r.effect = ToolEffect::Transfer { destination, number };
                }
                let rt = self.rt();
                rt.outputs.push((call_id, r.output));
                if matches!(r.effect, ToolEffect::EndCall { .. } | ToolEffect::Transfer { .. }) {
                    rt.end = Some(r.effect);
                }
                if rt.response.is_none() {
                    // The call came after its response was done (should not happen): answer now.
                    self.flush_tools(true);
                }
            }
            RealtimeEvent::ResponseDone { response_id, status } => self.realtime_response_done(response_id, &status),
            RealtimeEvent::Error { code, message } => {
                let code = code.unwrap_or_default();
                // Races we cause ourselves (cancel/truncate after the server moved on).
                if code.contains("cancel") || code.contains("truncat") || message.contains("no active response") {
                    tracing::debug!(%code, %message, "realtime: server refused a late event");
                    return;
                }
                tracing::warn!(%code, %message, "realtime: server error event");
                self.out.push_back(Output::Metric(Metric::ProviderError(Stage::Realtime)));
                let fatal = matches!(code.as_str(), "rate_limit_exceeded" | "insufficient_quota" | "server_error" | "internal_error")
                    || code.contains("limit");
                let waiting = self.rt().awaiting.is_some() || self.rt().response.is_some();
                if fatal && waiting {
                    self.rt().response = None;
                    self.failures += 1;
                    self.realtime_after_failure(&format!("{code}: {message}"));
                }
            }
            RealtimeEvent::Closed(e) => {
                self.out.push_back(Output::Metric(Metric::ProviderError(Stage::Realtime)));
                tracing::error!(error = %e, "realtime: connection lost");
                self.rt().link_up = false;
                self.give_up(Stage::Realtime, &e.to_string());
            }
        }
    }

    /// The speech of a vendor item, made on first sight (inside the response in flight).
    fn item_speech(&mut self, item_id: &str) -> SpeechId {
        if let Some(&(_, _, s)) = self.rt_ref().and_then(|r| r.items.iter().rev().find(|(i, _, _)| i == item_id)) {
            return s;
        }
        let response = self.rt().response.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        let speech = self.new_speech(Origin::Item { item_id: item_id.to_string(), response_id: response.clone() }, false);
        let clock = self.rt().response.as_ref().map(|r| r.clock).unwrap_or_default();
        let cancelled = !response.is_empty() && self.rt().cancelled.as_deref() == Some(response.as_str());
        if let Some(s) = self.speech_mut(speech) {
            s.clock = clock;
        }
        let r = self.rt();
        r.items.push((item_id.to_string(), response, speech));
        if r.items.len() > 64 {
            r.items.remove(0);
        }
        if std::mem::take(&mut r.closing) {
            if let Some(pe) = &mut self.pending_end {
                pe.speech = Some(speech);
                pe.await_item = false;
            }
        }
        if cancelled {
            self.cut(speech);
        }
        speech
    }

    fn realtime_audio(&mut self, item_id: &str, audio: &[u8]) {
        if audio.is_empty() {
            return;
        }
        let speech = self.item_speech(item_id);
        if self.speech(speech).is_none_or(|s| s.is_over()) {
            return; // a cancelled reply's leftovers
        }
        let now = self.now;
        if let Some(s) = self.speech_mut(speech) {
            s.clock.tts_first_audio.get_or_insert(now);
        }
        let r = self.rt();
        r.awaiting = None;
        if let Some(f) = &mut r.response {
            f.clock.tts_first_audio.get_or_insert(now);
        }
        let pcm: Vec<i16> = audio.iter().map(|&b| proto::g711::ulaw_decode(b)).collect();
        if !self.playout.push(speech, 0, &pcm) {
            tracing::debug!(samples = pcm.len(), "realtime: play queue refused agent audio");
        }
    }

    fn realtime_speech_started(&mut self) {
        let r = self.rt();
        r.clock = TurnClock::default();
        r.awaiting = None;
        if self.agent_talking() {
            self.commit_interruption();
        } else {
            self.cancel_response_in_flight();
        }
    }

    /// The caller is talking: the response in flight stops, and what it said unheard goes.
    fn cancel_response_in_flight(&mut self) {
        let Some(id) = self.rt().response.as_ref().map(|r| r.id.clone()) else { return };
        if self.rt().cancelled.as_deref() == Some(id.as_str()) {
            return;
        }
        self.rt().cancelled = Some(id.clone());
        self.send(json!({"type": "response.cancel", "response_id": id}));
        let queued: Vec<SpeechId> = self
            .rt()
            .items
            .iter()
            .filter(|(_, r, _)| *r == id)
            .map(|(_, _, s)| *s)
            .collect();
        for s in queued {
            if self.speech(s).is_some_and(|x| x.state == SpeechState::Queued) {
                self.cut(s);
            }
        }
    }

    pub(super) fn realtime_interrupted(&mut self, _speech: SpeechId) {
        self.cancel_response_in_flight();
        // The caller talked over the goodbye: keep listening (an apology's ending stands).
        self.rt().end = None;
        let queued: Vec<SpeechId> = self.speeches.iter().filter(|s| s.state == SpeechState::Queued && matches!(s.origin, Origin::Item { .. })).map(|s| s.id).collect();
        for s in queued {
            self.cut(s);
        }
    }

    /// What the caller heard of an item is known: truncate it on the server there.
    pub(super) fn realtime_settled(&mut self, speech: SpeechId, interrupted: bool, heard_ms: u32) {
        if !interrupted {
            return;
        }
        let Some(s) = self.speech(speech) else { return };
        let Origin::Item { item_id, .. } = &s.origin else { return };
        if item_id.is_empty() || s.length_ms == 0 && !s.spoke {
            return;
        }
        let item_id = item_id.clone();
        tracing::info!(item = %item_id, audio_end_ms = heard_ms, "truncating the assistant item to what was heard");
        self.send(json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": heard_ms}));
    }

    fn realtime_response_done(&mut self, response_id: String, status: &str) {
        let r = self.rt();
        let was = match &r.response {
            Some(f) if f.id == response_id || response_id.is_empty() => r.response.take(),
            _ => None,
        };
        let cancelled = status == "cancelled" || r.cancelled.as_deref() == Some(response_id.as_str());
        if r.cancelled.as_deref() == Some(response_id.as_str()) {
            r.cancelled = None;
        }
        let speeches: Vec<SpeechId> = r.items.iter().filter(|(_, resp, _)| *resp == response_id || response_id.is_empty()).map(|(_, _, s)| *s).collect();
        let mut had_audio = false;
        for s in speeches {
            if self.speech(s).is_none_or(|x| x.is_over()) {
                continue;
            }
            self.playout.end(s);
            if self.playout.length_ms(s).unwrap_or(0) == 0 {
                self.finish_silent(s);
            } else {
                had_audio = true;
            }
            // The model's words, as soon as they are known.
            if let Some(text) = self.speech(s).map(|x| x.full_text()).filter(|t| !t.is_empty()) {
                tracing::debug!(%text, "agent");
                self.transcript("assistant", &text, true);
            }
        }
        let closing = self.pending_end.as_ref().is_some_and(|pe| pe.await_item);
        if closing && was.is_some() && !had_audio {
            // The closing response said nothing: end now.
            if let Some(pe) = &mut self.pending_end {
                pe.await_item = false;
            }
            self.rt().closing = false;
        }
        match status {
            "failed" => {
                let r = self.rt();
                r.outputs.clear();
                r.end = None;
                self.realtime_failure(&format!("response {response_id} failed"));
            }
            _ if cancelled => {
                // Its tool calls still want their outputs; the caller is talking, so no new
                // reply is asked for (server VAD makes one when they stop).
                self.rt().end = None;
                self.flush_tools(false);
            }
            _ => {
                if had_audio {
                    self.failures = 0;
                }
                self.rt().awaiting = None;
                self.flush_tools(true);
            }
        }
    }

    /// Sends the function outputs, then asks for the next reply (the last line when the call
    /// is ending).
    fn flush_tools(&mut self, respond: bool) {
        let r = self.rt();
        let outputs = std::mem::take(&mut r.outputs);
        let end = r.end.take();
        if outputs.is_empty() && end.is_none() {
            return;
        }
        for (call_id, output) in outputs {
            self.send(json!({"type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output}}));
        }
        if !respond {
            return;
        }
        let (line, action, reason) = match end {
            Some(ToolEffect::EndCall { goodbye }) => {
                let reason = if self.form_complete() { FinishReason::Completed } else { FinishReason::CallerGoodbye };
                (Some(goodbye.unwrap_or_else(|| self.spec.closing.clone())), Some(EndAction::Hangup { reason: "end_call" }), reason)
            }
            Some(ToolEffect::Transfer { number, .. }) => {
                (Some(self.spec.transfer_line.clone()), Some(EndAction::Transfer { number }), FinishReason::Transferred)
            }
            _ => (None, None, FinishReason::Completed),
        };
        match (line, action) {
            (Some(line), Some(action)) => {
                let instructions = format!("Say exactly this to the caller, then stop: \"{}\"", line.replace('"', "'"));
                self.send(json!({"type": "response.create", "response": {"instructions": instructions, "tool_choice": "none"}}));
                self.rt().closing = true;
                self.end_after_next_item(action, reason);
            }
            _ => self.send(json!({"type": "response.create"})),
        }
        let t = self.now + RESPONSE_TIMEOUT;
        self.rt().awaiting = Some(t);
    }

    /// A reply failed: ask again in the local voice, or give up.
    fn realtime_failure(&mut self, what: &str) {
        self.failures += 1;
        self.out.push_back(Output::Metric(Metric::ProviderError(Stage::Realtime)));
        self.realtime_after_failure(what);
    }

    fn realtime_after_failure(&mut self, what: &str) {
        self.rt().awaiting = None;
        tracing::warn!(%what, failures = self.failures, "realtime reply failed");
        if !self.rt().link_up || self.failures >= super::MAX_FAILURES {
            self.give_up(Stage::Realtime, what);
        } else {
            self.say(super::speech::LineKind::Reprompt, super::REPROMPT_LINE, super::Voice::Fallback);
        }
    }

    /// No more talking to the model.
    pub(super) fn realtime_stop(&mut self) {
        let r = self.rt();
        r.awaiting = None;
        r.response = None;
        if std::mem::take(&mut r.link_up) {
            self.out.push_back(Output::RealtimeClose);
        }
    }
}
