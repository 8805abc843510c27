//! Outbound pacer: audio for the caller, as Twilio wants it — one 160-byte μ-law frame per 20 ms,
//! a mark on every frame (or every N), and no more than a small lead ahead of what the caller
//! has actually heard.
//!
//! Why a lead and not a plain 20 ms tick: Twilio buffers whatever we send, so a short lead
//! (default 80 ms) absorbs network and scheduling jitter, and keeping it short is what makes
//! barge-in fast — on `clear` at most the lead is thrown away.
//!
//! The pacer models Twilio's playback buffer as "playing until" (`drain_at`): every frame sent
//! extends it by 20 ms from `max(drain_at, now)`. Mark echoes come back when the audio before
//! them has played, which turns them into the *heard position* of each utterance and also
//! corrects the model if the real playback runs late.
//!
//! Sans-IO: `push`/`handle_mark`/`clear` take input, `poll_output(now)` returns what to send,
//! `poll_timeout()` says when to call again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::g711::ULAW_SILENCE;

/// 20 ms of μ-law at 8 kHz.
pub const FRAME_BYTES: usize = 160;
pub const FRAME: Duration = Duration::from_millis(20);
const FRAME_MS: u32 = 20;

/// Names one stretch of speech (one agent reply), assigned by whoever feeds the pacer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UtteranceId(pub u64);

#[derive(Debug, Clone)]
pub struct PacerConfig {
    /// How far ahead of the caller's playback we may be. Rounded up to whole frames.
    pub lead: Duration,
    /// A mark after every N frames (1 = every frame). The last frame of an utterance always gets one.
    pub mark_every: u32,
    /// Audio queued and not yet sent is capped here; more is dropped and counted.
    pub max_queued: Duration,
    /// An utterance starts (and restarts after an underrun) only once this much is queued, so
    /// the jitter of the audio source is absorbed by the caller's buffer instead of starving it.
    pub prebuffer: Duration,
    /// Marks awaiting their echo are capped here. Twilio echoes a mark once the audio before it
    /// has played, so a peer that never echoes would otherwise grow this list by 50 a second:
    /// beyond the cap the oldest mark is presumed played (and counted).
    pub max_pending_marks: usize,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            lead: Duration::from_millis(80),
            mark_every: 1,
            max_queued: Duration::from_secs(30),
            prebuffer: Duration::from_millis(40),
            // 10 s of audio at a mark per frame; a live call has about lead/20 ms + one RTT.
            max_pending_marks: 500,
        }
    }
}

/// What the caller has heard of one utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub utterance: UtteranceId,
    pub heard_ms: u32,
    /// The whole utterance has been played (its last mark came back).
    pub complete: bool,
    /// Mark sent to mark echoed, when this report comes from an echo (not from `clear`).
    pub mark_rtt: Option<Duration>,
}

/// A mark's name on the wire is `u<utterance>.<seq>`; kept as numbers so no frame allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkId {
    pub utterance: UtteranceId,
    pub seq: u64,
}

impl std::fmt::Display for MarkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "u{}.{}", self.utterance.0, self.seq)
    }
}

impl MarkId {
    /// Reads a mark name back; `None` for names this pacer cannot have written.
    pub fn parse(name: &str) -> Option<MarkId> {
        let (u, seq) = name.strip_prefix('u')?.split_once('.')?;
        Some(MarkId { utterance: UtteranceId(u.parse().ok()?), seq: seq.parse().ok()? })
    }
}

/// What to send to Twilio (or tell the room), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Media([u8; FRAME_BYTES]),
    Mark(MarkId),
    /// A mark came back: the caller's heard position moved.
    Heard(Heard),
}

/// Returned by [`Pacer::clear`]: send Twilio `clear`, and this is what the caller got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Best estimate of what was heard of each utterance that was playing or queued, oldest first.
    pub heard: Vec<Heard>,
    /// Audio that was never heard (sent-but-unplayed plus never-sent), in ms.
    pub unplayed_ms: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacerStats {
    pub frames_sent: u64,
    pub marks_sent: u64,
    pub marks_echoed: u64,
    /// Echoes with a name we never sent or had already cleared.
    pub marks_unknown: u64,
    /// Times the caller's buffer ran dry inside an utterance and audio for it came later: a
    /// gap the caller heard mid-speech.
    pub underruns: u64,
    /// Bytes refused because the queue was full.
    pub overflow_bytes: u64,
    /// Marks given up on (never echoed, beyond `max_pending_marks`): presumed played.
    pub marks_expired: u64,
    pub clears: u64,
}

#[derive(Debug)]
struct PendingMark {
    id: MarkId,
    /// Position in the utterance at the end of the frame this mark follows.
    end_ms: u32,
    last_of_utterance: bool,
    /// `frames_sent` when this mark went out: on its echo, frames sent since are still to play.
    sent_at_frame: u64,
    sent_at: Instant,
}

#[derive(Debug)]
struct Utterance {
    id: UtteranceId,
    /// Bytes accepted but not yet framed and sent.
    queue: VecDeque<u8>,
    /// ms of this utterance already sent as frames.
    sent_ms: u32,
    /// ms confirmed heard by mark echoes.
    heard_ms: u32,
    /// No more audio will come.
    ended: bool,
    frames_since_mark: u32,
}

pub struct Pacer {
    cfg: PacerConfig,
    lead_frames: u32,
    /// Current utterance first, then those queued behind it.
    utterances: VecDeque<Utterance>,
    marks: VecDeque<PendingMark>,
    /// Outputs computed but not yet returned.
    out: VecDeque<Output>,
    /// When Twilio's buffer would run dry if we sent nothing more.
    drain_at: Option<Instant>,
    /// Set while an open utterance is starved, so one dry spell counts once.
    starving: bool,
    mark_seq: u64,
    stats: PacerStats,
}

impl Pacer {
    pub fn new(cfg: PacerConfig) -> Pacer {
        let lead_frames = (cfg.lead.as_millis() as u32).div_ceil(FRAME_MS).max(1);
        Pacer {
            cfg,
            lead_frames,
            utterances: VecDeque::new(),
            marks: VecDeque::new(),
            out: VecDeque::new(),
            drain_at: None,
            starving: false,
            mark_seq: 0,
            stats: PacerStats::default(),
        }
    }

    pub fn stats(&self) -> &PacerStats {
        &self.stats
    }

    /// Appends μ-law audio to utterance `id`. A new id starts a new utterance behind the current
    /// one (and ends any utterance before it). Returns the bytes accepted.
    pub fn push(&mut self, id: UtteranceId, mulaw: &[u8]) -> usize {
        if self.utterances.back().is_some_and(|u| u.id == id && u.ended) {
            // Audio for an utterance already ended (or cleared and re-used) cannot be placed.
            self.stats.overflow_bytes += mulaw.len() as u64;
            return 0;
        }
        if self.utterances.back().map(|u| u.id) != Some(id) {
            if let Some(prev) = self.utterances.back_mut() {
                prev.ended = true;
            }
            self.utterances.push_back(Utterance {
                id,
                queue: VecDeque::new(),
                sent_ms: 0,
                heard_ms: 0,
                ended: false,
                frames_since_mark: 0,
            });
        }
        let max_bytes = self.cfg.max_queued.as_millis() as usize * 8;
        let queued: usize = self.utterances.iter().map(|u| u.queue.len()).sum();
        let take = mulaw.len().min(max_bytes.saturating_sub(queued));
        self.stats.overflow_bytes += (mulaw.len() - take) as u64;
        if let Some(u) = self.utterances.back_mut() {
            u.queue.extend(&mulaw[..take]);
        }
        take
    }

    /// No more audio for `id`; a trailing partial frame is padded with silence and sent.
    pub fn end_utterance(&mut self, id: UtteranceId) {
        let Some(pos) = self.utterances.iter().position(|u| u.id == id) else { return };
        let u = &mut self.utterances[pos];
        u.ended = true;
        if !u.queue.is_empty() {
            return; // the padded last frame will carry the final mark
        }
        // Everything was already sent: its newest mark becomes the final one, or, if every
        // mark is back, the utterance is complete now.
        self.starving = false;
        let heard_ms = u.heard_ms;
        match self.marks.iter_mut().rev().find(|m| m.id.utterance == id) {
            Some(m) => m.last_of_utterance = true,
            None => {
                self.utterances.remove(pos);
                if heard_ms > 0 {
                    self.out.push_back(Output::Heard(Heard { utterance: id, heard_ms, complete: true, mark_rtt: None }));
                }
            }
        }
    }

    /// True while there is audio to send or an open utterance.
    pub fn is_active(&self) -> bool {
        !self.utterances.is_empty()
    }

    /// Marks sent and not yet echoed (bounded by `max_pending_marks`).
    pub fn pending_marks(&self) -> usize {
        self.marks.len()
    }

    /// The utterance currently being sent, if any.
    pub fn current(&self) -> Option<UtteranceId> {
        self.utterances.front().map(|u| u.id)
    }

    /// A `mark` came back from Twilio.
    pub fn handle_mark(&mut self, name: &str, now: Instant) {
        let id = MarkId::parse(name);
        let Some(pos) = self.marks.iter().position(|m| Some(m.id) == id) else {
            self.stats.marks_unknown += 1;
            return;
        };
        // Marks come back in order; any before this one have played too.
        for m in self.marks.drain(..=pos) {
            self.stats.marks_echoed += 1;
            let utterance = m.id.utterance;
            if let Some(u) = self.utterances.iter_mut().find(|u| u.id == utterance) {
                u.heard_ms = u.heard_ms.max(m.end_ms);
            }
            self.out.push_back(Output::Heard(Heard {
                utterance,
                heard_ms: m.end_ms,
                complete: m.last_of_utterance,
                mark_rtt: Some(now.saturating_duration_since(m.sent_at)),
            }));
            if m.last_of_utterance {
                self.utterances.retain(|u| u.id != utterance);
            }
            // The echo is ground truth: everything sent after this mark is still to play.
            let unplayed = Duration::from_millis((self.stats.frames_sent - m.sent_at_frame) * FRAME_MS as u64);
            self.drain_at = Some(now + unplayed);
        }
    }

    /// Barge-in: drop everything unplayed. Send Twilio `clear` after calling this; Twilio will
    /// echo the pending marks at once, and those echoes are ignored.
    pub fn clear(&mut self, now: Instant) -> Cleared {
        self.stats.clears += 1;
        // What is still in Twilio's buffer is the tail of what we sent, newest utterance last.
        let mut buffered = self.drain_at.map(|d| d.saturating_duration_since(now).as_millis() as u32).unwrap_or(0);
        let mut cleared = Cleared::default();
        for u in self.utterances.iter().rev() {
            let unplayed_sent = u.sent_ms.min(buffered);
            buffered -= unplayed_sent;
            let heard_ms = (u.sent_ms - unplayed_sent).max(u.heard_ms).min(u.sent_ms);
            let never_sent = (u.queue.len() / 8) as u32;
            cleared.unplayed_ms += u.sent_ms - heard_ms + never_sent;
            cleared.heard.push(Heard { utterance: u.id, heard_ms, complete: false, mark_rtt: None });
        }
        cleared.heard.reverse();
        self.utterances.clear();
        self.marks.clear();
        self.out.retain(|o| matches!(o, Output::Heard(_)));
        self.drain_at = None;
        self.starving = false;
        cleared
    }

    /// The next thing to send, if anything is due at `now`.
    pub fn poll_output(&mut self, now: Instant) -> Option<Output> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        self.fill(now);
        self.out.pop_front()
    }

    /// When to call `poll_output` next (None: only after new input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.out.is_empty() {
            return None; // the caller drains `out` before sleeping
        }
        let u = self.sending()?;
        let drain = self.drain_at?;
        if self.ready(u) {
            // Due when one more frame fits in the lead: drain + FRAME - now <= lead.
            Some((drain + FRAME).checked_sub(FRAME * self.lead_frames).unwrap_or(drain))
        } else if !u.ended && !self.starving && u.sent_ms > 0 {
            Some(drain) // wake when the caller's buffer runs dry, to count the underrun
        } else {
            None
        }
    }

    /// The utterance whose audio goes out next: the first one not fully sent.
    fn sending(&self) -> Option<&Utterance> {
        self.utterances.iter().find(|u| !u.fully_sent())
    }

    /// Whether `u` may send a frame now (the lead permitting).
    fn ready(&self, u: &Utterance) -> bool {
        let waiting = (u.sent_ms == 0 || self.starving) && !u.ended;
        if waiting {
            u.queue.len() >= (self.cfg.prebuffer.as_millis() as usize * 8).max(FRAME_BYTES)
        } else {
            u.has_frame()
        }
    }

    fn fill(&mut self, now: Instant) {
        let lead = FRAME * self.lead_frames;
        // An utterance that ended without any audio has nothing to play and no marks.
        self.utterances.retain(|u| !(u.fully_sent() && u.sent_ms == 0));
        loop {
            let drain = self.drain_at.filter(|d| *d > now).unwrap_or(now);
            let Some(idx) = self.utterances.iter().position(|u| !u.fully_sent()) else { return };
            if !self.ready(&self.utterances[idx]) {
                let u = &self.utterances[idx];
                // Dry inside an open utterance. It only counts as an underrun if more audio
                // comes (see below): an utterance that simply ends was not starved.
                let dry = self.drain_at.is_some_and(|d| d <= now);
                if dry && u.sent_ms > 0 {
                    self.starving = true;
                }
                return;
            }
            if drain - now + FRAME > lead {
                return;
            }
            if self.starving && self.utterances[idx].sent_ms > 0 {
                self.stats.underruns += 1;
            }
            self.starving = false;
            let u = &mut self.utterances[idx];
            let mut frame = [ULAW_SILENCE; FRAME_BYTES];
            let n = u.queue.len().min(FRAME_BYTES);
            for (dst, src) in frame.iter_mut().zip(u.queue.drain(..n)) {
                *dst = src;
            }
            u.sent_ms += FRAME_MS;
            u.frames_since_mark += 1;
            let last = u.fully_sent();
            self.drain_at = Some(drain + FRAME);
            self.stats.frames_sent += 1;
            self.out.push_back(Output::Media(frame));
            if last || u.frames_since_mark >= self.cfg.mark_every.max(1) {
                u.frames_since_mark = 0;
                self.mark_seq += 1;
                let id = MarkId { utterance: u.id, seq: self.mark_seq };
                self.marks.push_back(PendingMark {
                    id,
                    end_ms: u.sent_ms,
                    last_of_utterance: last,
                    sent_at_frame: self.stats.frames_sent,
                    sent_at: now,
                });
                self.stats.marks_sent += 1;
                self.out.push_back(Output::Mark(id));
                if self.marks.len() > self.cfg.max_pending_marks.max(1) {
                    self.expire_oldest_mark();
                }
            }
        }
    }
}

impl Pacer {
    /// The oldest mark never came back: take its audio as played, so an utterance whose last
    /// mark is lost still completes and leaves the queue.
    fn expire_oldest_mark(&mut self) {
        let Some(m) = self.marks.pop_front() else { return };
        self.stats.marks_expired += 1;
        let utterance = m.id.utterance;
        if let Some(u) = self.utterances.iter_mut().find(|u| u.id == utterance) {
            u.heard_ms = u.heard_ms.max(m.end_ms);
        }
        if m.last_of_utterance {
            self.utterances.retain(|u| u.id != utterance);
            self.out.push_back(Output::Heard(Heard { utterance, heard_ms: m.end_ms, complete: true, mark_rtt: None }));
        }
    }
}

impl Utterance {
    fn fully_sent(&self) -> bool {
        self.ended && self.queue.is_empty()
    }

    /// A whole frame is queued, or the utterance ended with a partial one (padded with silence).
    fn has_frame(&self) -> bool {
        self.queue.len() >= FRAME_BYTES || (self.ended && !self.queue.is_empty())
    }
}
