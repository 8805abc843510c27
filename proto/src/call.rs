//! One phone call's media and control logic, sans-IO: the bridge's per-call task feeds it
//! Twilio messages, the room's audio and control packets, and the time; it returns what to send
//! where, and when to wake it next.
//!
//! ```text
//! Twilio media ─▶ InboundAudio (gap fill) ─▶ CallerAudio μ-law (to the room: PCMU as it is, or Opus)
//! room PCM 8k ─▶ Mixer ─▶ PCM→μ-law ─▶ Pacer (lead, marks) ─▶ TwilioMedia / TwilioMark
//! room μ-law (PCMU track, lone speaker) ─────────▶ Pacer: no decode, no encode
//! interrupt ─▶ Pacer::clear ─▶ TwilioClear + Playback{interrupted}
//! mark echo ─▶ Pacer heard position ─▶ Playback (throttled)
//! ```
//!
//! Utterances: the room's audio is cut into utterances by silence — a source quiet for
//! `utterance_gap` ends the current one — so nothing is sent to the caller between replies. An
//! agent that speaks control protocol v2 names each utterance before its first frame
//! (`utterance{utterance_id}`): the name also ends the utterance before it, and `playback`
//! reports carry it. Unnamed utterances (v1 agents, a browser speaking) are `b1`, `b2`, ….

use std::time::{Duration, Instant};

use crate::control::Control;
use crate::dial_policy::NumberAllowList;
use crate::dtmf::{DtmfError, DtmfTones, Press};
use crate::g711::{ulaw_decode, ulaw_encode};
use crate::inbound::{InboundAudio, InboundConfig, InboundStats};
use crate::mixer::{Mixer, MixerStats, SourceId, MIX_FRAME};
use crate::pacer::{Heard, MarkId, Output, Pacer, PacerConfig, PacerStats, UtteranceId, FRAME_BYTES};
use crate::twilio::{Inbound, StreamStart, TwilioError};

/// The mixer source of DTMF tones (drivers number room tracks from 1 up).
pub const DTMF_SOURCE: SourceId = SourceId(u32::MAX);

#[derive(Debug, Clone)]
pub struct CallConfig {
    pub pacer: PacerConfig,
    pub inbound: InboundConfig,
    /// Room audio silent this long ends the current utterance.
    pub utterance_gap: Duration,
    /// At most one `playback` report per this interval while an utterance plays (the final
    /// and interrupted reports are always sent).
    pub playback_report_every: Duration,
    /// Per-source cap of the mixer, in 20 ms frames.
    pub mixer_max_frames: usize,
    /// Numbers a `transfer` may go to (`TRANSFER_ALLOW`); empty: none.
    pub transfer_allow: NumberAllowList,
    /// An agent's name that comes this soon after its utterance's first audio still names it
    /// (the audio overtook the data packet).
    pub label_grace: Duration,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            pacer: PacerConfig::default(),
            inbound: InboundConfig::default(),
            utterance_gap: Duration::from_millis(200),
            playback_report_every: Duration::from_millis(250),
            mixer_max_frames: 25,
            transfer_allow: NumberAllowList::none(),
            label_grace: Duration::from_millis(120),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Twilio sent `stop`.
    Stop,
    /// `start` described a stream we cannot carry.
    BadStart(String),
    /// The driver ended it (socket closed, room gone, shutdown, …).
    Driver(String),
}

/// Who sent a control packet, as the room reports the participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlSender {
    /// A participant of LiveKit kind `agent` (set by dispatch or the token's `kind` claim).
    Agent,
    /// Anyone else: a browser viewer, another phone, the server API.
    Other,
}

/// Why a control command was not carried out (the call goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Only agents steer a call.
    NotAgent,
    /// The number is not on `TRANSFER_ALLOW`.
    TransferNotAllowed,
    /// A transfer for this call is already under way.
    TransferInFlight,
    /// A key press that is not a DTMF key, or too many waiting.
    BadDtmf,
}

impl Refusal {
    /// The `reason` label of `bridge_control_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAgent => "not_agent",
            Refusal::TransferNotAllowed => "transfer_not_allowed",
            Refusal::TransferInFlight => "transfer_in_flight",
            Refusal::BadDtmf => "bad_dtmf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutput {
    /// `start` arrived: the driver checks the per-call token and joins the room.
    Start(Box<StreamStart>),
    TwilioMedia([u8; FRAME_BYTES]),
    TwilioMark(MarkId),
    TwilioClear,
    /// 20 ms of the caller's voice, μ-law as Twilio sent it, for the room track (a PCMU track
    /// takes it as it is; [`CallOutput::caller_pcm`] decodes it). `filled`: made-up silence.
    CallerAudio { mulaw: [u8; FRAME_BYTES], filled: bool },
    /// Publish on the control topic.
    Control(Control),
    /// The caller pressed a key: also publish LiveKit SIP's DTMF packet.
    SipDtmf(String),
    /// The agent asked to end the call (Twilio REST `Status=completed`).
    Hangup { reason: Option<String> },
    /// The agent asked to transfer (Twilio REST `Twiml=<Dial>`) to an allowed number. Report
    /// a failed REST request with [`CallSession::transfer_failed`].
    Transfer { to: String },
    /// A control command was refused: count and log it.
    ControlRefused { command: &'static str, reason: Refusal },
    /// A mark came back this long after it was sent (for the mark round-trip metric).
    MarkEchoed { rtt: Duration },
    End(EndReason),
}

impl CallOutput {
    /// The 8 kHz PCM of a [`CallOutput::CallerAudio`] frame.
    pub fn caller_pcm(mulaw: &[u8; FRAME_BYTES]) -> [i16; MIX_FRAME] {
        let mut pcm = [0i16; MIX_FRAME];
        for (p, &b) in pcm.iter_mut().zip(mulaw) {
            *p = ulaw_decode(b);
        }
        pcm
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    pub twilio_messages: u64,
    pub twilio_malformed: u64,
    pub twilio_unknown: u64,
    pub media_before_start: u64,
    pub frames_in: u64,
    pub control_malformed: u64,
    pub control_refused: u64,
    pub interrupts: u64,
    pub playback_reports: u64,
    /// Room audio dropped right after an interrupt (still in flight from the agent).
    pub muted_samples: u64,
    /// Keys played to the caller as tones.
    pub dtmf_keys_played: u64,
    /// Room μ-law frames (a PCMU track, nobody else speaking) forwarded to the caller as they came.
    pub ulaw_passed_through: u64,
    pub inbound: InboundStats,
    pub pacer: PacerStats,
    pub mixer: MixerStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Streaming,
    Ended,
}

pub struct CallSession {
    cfg: CallConfig,
    phase: Phase,
    stream_sid: String,
    call_sid: String,
    inbound: InboundAudio,
    mixer: Mixer,
    pacer: Pacer,
    /// The utterance room audio currently goes to.
    speaking: Option<UtteranceId>,
    /// When the current utterance's first audio came.
    speaking_since: Option<Instant>,
    /// Names the agent gave utterances (newest last, at most [`LABELS_KEPT`]).
    labels: std::collections::VecDeque<(UtteranceId, String)>,
    /// A name waiting for the utterance it belongs to (its audio has not come yet).
    pending_label: Option<String>,
    next_utterance: u64,
    last_room_audio: Option<Instant>,
    /// After an interrupt, room audio is dropped until the room goes quiet.
    muted: bool,
    last_report: Option<(UtteranceId, Instant)>,
    /// A transfer was handed to the driver and has not failed: refuse another.
    transfer_in_flight: bool,
    /// Keys being played to the caller, and when their next 20 ms is due.
    dtmf: DtmfTones,
    dtmf_next: Option<Instant>,
    out: std::collections::VecDeque<CallOutput>,
    stats: CallStats,
}

/// Utterance names remembered; reports for older utterances fall back to `b<n>`.
const LABELS_KEPT: usize = 16;

impl CallSession {
    pub fn new(cfg: CallConfig) -> CallSession {
        CallSession {
            inbound: InboundAudio::new(cfg.inbound.clone()),
            mixer: Mixer::new(cfg.mixer_max_frames),
            pacer: Pacer::new(cfg.pacer.clone()),
            cfg,
            phase: Phase::Connecting,
            stream_sid: String::new(),
            call_sid: String::new(),
            speaking: None,
            speaking_since: None,
            labels: std::collections::VecDeque::new(),
            pending_label: None,
            next_utterance: 1,
            last_room_audio: None,
            muted: false,
            last_report: None,
            transfer_in_flight: false,
            dtmf: DtmfTones::new(),
            dtmf_next: None,
            out: std::collections::VecDeque::new(),
            stats: CallStats::default(),
        }
    }

    pub fn stream_sid(&self) -> &str {
        &self.stream_sid
    }

    pub fn call_sid(&self) -> &str {
        &self.call_sid
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    pub fn stats(&self) -> CallStats {
        CallStats {
            inbound: self.inbound.stats().clone(),
            pacer: self.pacer.stats().clone(),
            mixer: self.mixer.stats().clone(),
            dtmf_keys_played: self.dtmf.stats().keys_played,
            ..self.stats.clone()
        }
    }

    /// The bridge's own label of an utterance the agent did not name.
    pub fn utterance_label(id: UtteranceId) -> String {
        format!("b{}", id.0)
    }

    /// The utterance id as the agent sees it in `playback` messages: its own name (protocol
    /// v2), else the bridge's label.
    pub fn label_of(&self, id: UtteranceId) -> String {
        match self.labels.iter().rev().find(|(u, _)| *u == id) {
            Some((_, l)) => l.clone(),
            None => Self::utterance_label(id),
        }
    }

    fn set_label(&mut self, id: UtteranceId, label: String) {
        self.labels.push_back((id, label));
        while self.labels.len() > LABELS_KEPT {
            self.labels.pop_front();
        }
    }

    /// The agent names its next utterance (protocol v2).
    fn name_utterance(&mut self, label: String, now: Instant) {
        if self.phase != Phase::Streaming {
            return;
        }
        // The agent starts afresh after an interrupt: what follows is new speech.
        self.muted = false;
        let unnamed_and_new = |s: &Self, id: UtteranceId| {
            !s.labels.iter().any(|(u, _)| *u == id) && s.speaking_since.is_some_and(|t| now < t + s.cfg.label_grace)
        };
        match self.speaking {
            // Its first frames overtook the name: that utterance is the one named.
            Some(id) if unnamed_and_new(self, id) => self.set_label(id, label),
            Some(id) => {
                // The agent names an utterance only after the one before it: that one is over.
                self.speaking = None;
                self.pacer.end_utterance(id);
                self.pending_label = Some(label);
            }
            None => self.pending_label = Some(label),
        }
    }

    /// One text frame from Twilio. A malformed one is counted and returned; the call goes on.
    pub fn handle_twilio(&mut self, text: &str, now: Instant) -> Result<(), TwilioError> {
        self.stats.twilio_messages += 1;
        let msg = match Inbound::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.stats.twilio_malformed += 1;
                return Err(e);
            }
        };
        self.handle_inbound(msg, now);
        Ok(())
    }

    pub fn handle_inbound(&mut self, msg: Inbound, now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        match msg {
            Inbound::Connected { .. } => {}
            Inbound::Start { stream_sid, start, .. } => {
                if self.phase != Phase::Connecting {
                    self.stats.twilio_unknown += 1; // a second start: ignore
                    return;
                }
                if !start.media_format.is_mulaw_8k_mono() {
                    let f = &start.media_format;
                    let why = format!("{} {} Hz x{}", f.encoding, f.sample_rate, f.channels);
                    self.end(EndReason::BadStart(why));
                    return;
                }
                // It is echoed into every message we send: accept only what Twilio issues.
                if !crate::twilio::is_sid(&stream_sid, "MZ") {
                    self.end(EndReason::BadStart(format!("streamSid {stream_sid:?} is not a Twilio stream SID")));
                    return;
                }
                self.stream_sid = stream_sid;
                self.call_sid = start.call_sid.clone();
                self.phase = Phase::Streaming;
                self.out.push_back(CallOutput::Start(Box::new(start)));
            }
            Inbound::Media { media, .. } => {
                if self.phase != Phase::Streaming {
                    self.stats.media_before_start += 1;
                    return;
                }
                if media.track != "inbound" && media.track != "inbound_track" {
                    return; // outbound-track echoes of our own audio are not the caller
                }
                self.inbound.push(&media);
                while let Some(frame) = self.inbound.poll_frame() {
                    self.stats.frames_in += 1;
                    self.out.push_back(CallOutput::CallerAudio { mulaw: frame.mulaw, filled: frame.filled });
                }
            }
            Inbound::Mark { name, .. } => {
                self.pacer.handle_mark(&name, now);
                self.drain_pacer(now);
            }
            Inbound::Dtmf { digit, .. } => {
                self.out.push_back(CallOutput::Control(Control::Dtmf { digit: digit.clone() }));
                self.out.push_back(CallOutput::SipDtmf(digit));
            }
            Inbound::Stop { .. } => self.end(EndReason::Stop),
            Inbound::Unknown { .. } => self.stats.twilio_unknown += 1,
        }
    }

    /// 8 kHz PCM from one room participant's track.
    pub fn handle_room_audio(&mut self, src: SourceId, pcm: &[i16], now: Instant) {
        if self.room_audio_arrives(pcm.len(), now) {
            self.mix(src, pcm, now);
        }
    }

    /// μ-law from one room participant's PCMU track. While nobody else has audio waiting in
    /// the mixer and no key tone is playing it goes to the pacer as it came (no decode, no
    /// encode); otherwise it is decoded and mixed like any other voice. Returns true when it
    /// passed through.
    pub fn handle_room_ulaw(&mut self, src: SourceId, mulaw: &[u8], now: Instant) -> bool {
        if !self.room_audio_arrives(mulaw.len(), now) {
            return false;
        }
        if self.mixer.is_empty() && self.dtmf.is_idle() {
            let id = self.current_utterance(now);
            self.pacer.push(id, mulaw);
            self.stats.ulaw_passed_through += 1;
            self.drain_pacer(now);
            return true;
        }
        let mut pcm = [0i16; MIX_FRAME];
        for chunk in mulaw.chunks(MIX_FRAME) {
            for (p, &b) in pcm.iter_mut().zip(chunk) {
                *p = ulaw_decode(b);
            }
            self.mix(src, &pcm[..chunk.len()], now);
        }
        false
    }

    /// Bookkeeping common to all room audio; false when it is to be dropped.
    fn room_audio_arrives(&mut self, samples: usize, now: Instant) -> bool {
        if self.phase != Phase::Streaming {
            return false;
        }
        self.end_utterance_if_quiet(now);
        self.last_room_audio = Some(now);
        if self.muted {
            self.stats.muted_samples += samples as u64;
            return false;
        }
        true
    }

    /// Keys to press to the caller (an agent's `SipDTMF`, or an outbound call's dial string):
    /// played as tones, mixed with the room's voices. Refused whole when too many are waiting.
    pub fn send_dtmf(&mut self, presses: &[Press], now: Instant) -> Result<(), DtmfError> {
        if self.phase == Phase::Ended {
            return Ok(());
        }
        self.dtmf.push(presses)?;
        if self.dtmf_next.is_none() && !self.dtmf.is_idle() {
            self.dtmf_next = Some(now);
        }
        Ok(())
    }

    /// LiveKit's `SipDTMF` packet from the room: only agents press keys on the caller's line.
    pub fn handle_sip_dtmf(&mut self, code: u32, digit: &str, from: ControlSender, now: Instant) {
        if from != ControlSender::Agent {
            self.refuse("dtmf", Refusal::NotAgent);
            return;
        }
        // The code is authoritative (as in LiveKit SIP); the digit text is a fallback.
        let key = crate::dtmf::key_of(code).or_else(|e| {
            let mut chars = digit.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => crate::dtmf::key(c),
                _ => Err(e),
            }
        });
        match key.and_then(|k| self.send_dtmf(&[Press::Key(k)], now)) {
            Ok(()) => {}
            Err(_) => self.refuse("dtmf", Refusal::BadDtmf),
        }
    }

    /// Due DTMF frames join the mix as one more room source (never muted: keys are not speech).
    fn play_dtmf(&mut self, now: Instant) {
        while let Some(due) = self.dtmf_next.filter(|d| *d <= now) {
            let Some(frame) = self.dtmf.next_frame() else {
                self.dtmf_next = None;
                break;
            };
            self.end_utterance_if_quiet(now);
            self.last_room_audio = Some(now);
            self.mix(DTMF_SOURCE, &frame, now);
            self.dtmf_next = if self.dtmf.is_idle() { None } else { Some(due + crate::pacer::FRAME) };
        }
    }

    fn mix(&mut self, src: SourceId, pcm: &[i16], now: Instant) {
        self.mixer.push(src, pcm);
        while let Some(mixed) = self.mixer.poll_frame() {
            let id = self.current_utterance(now);
            let mut mulaw = [0u8; FRAME_BYTES];
            for (m, s) in mulaw.iter_mut().zip(mixed) {
                *m = ulaw_encode(s);
            }
            self.pacer.push(id, &mulaw);
        }
        self.drain_pacer(now);
    }

    /// The utterance room audio belongs to; the first frame after a pause starts a new one.
    fn current_utterance(&mut self, now: Instant) -> UtteranceId {
        if let Some(id) = self.speaking {
            return id;
        }
        let id = UtteranceId(self.next_utterance);
        self.next_utterance += 1;
        self.speaking = Some(id);
        self.speaking_since = Some(now);
        if let Some(label) = self.pending_label.take() {
            self.set_label(id, label);
        }
        id
    }

    /// A participant's audio track went away.
    pub fn remove_room_source(&mut self, src: SourceId) {
        self.mixer.remove(src);
    }

    /// A control packet from the room. Malformed ones are counted and returned; commands
    /// (`interrupt`, `hangup`, `transfer`) from anyone but an agent, and transfers to numbers
    /// not on the allow list, are refused ([`CallOutput::ControlRefused`]) and the call goes on.
    pub fn handle_control(&mut self, payload: &[u8], from: ControlSender, now: Instant) -> Result<(), crate::control::ControlError> {
        let msg = match Control::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                self.stats.control_malformed += 1;
                return Err(e);
            }
        };
        let command = match &msg {
            Control::Interrupt { .. } => "interrupt",
            Control::Utterance { .. } => "utterance",
            Control::Hangup { .. } => "hangup",
            Control::Transfer { .. } => "transfer",
            // Ours (playback, dtmf) or for browsers (transcript): nothing to do.
            Control::Playback { .. } | Control::Dtmf { .. } | Control::Transcript { .. } | Control::Unknown { .. } => return Ok(()),
        };
        if from != ControlSender::Agent {
            self.refuse(command, Refusal::NotAgent);
            return Ok(());
        }
        match msg {
            Control::Interrupt { .. } => self.interrupt(now),
            Control::Utterance { utterance_id } => self.name_utterance(utterance_id, now),
            Control::Hangup { reason } => self.out.push_back(CallOutput::Hangup { reason }),
            Control::Transfer { to } => {
                let to = to.trim();
                if !self.cfg.transfer_allow.allows(to) {
                    self.refuse(command, Refusal::TransferNotAllowed);
                } else if self.transfer_in_flight {
                    self.refuse(command, Refusal::TransferInFlight);
                } else {
                    self.transfer_in_flight = true;
                    self.out.push_back(CallOutput::Transfer { to: to.to_owned() });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The driver's transfer request failed: another may be tried.
    pub fn transfer_failed(&mut self) {
        self.transfer_in_flight = false;
    }

    fn refuse(&mut self, command: &'static str, reason: Refusal) {
        self.stats.control_refused += 1;
        self.out.push_back(CallOutput::ControlRefused { command, reason });
    }

    /// Barge-in: Twilio `clear` goes out on the next poll, before anything else.
    pub fn interrupt(&mut self, now: Instant) {
        if self.phase != Phase::Streaming {
            return;
        }
        self.stats.interrupts += 1;
        self.muted = true;
        self.pending_label = None;
        self.mixer.clear();
        self.speaking = None;
        if !self.pacer.is_active() {
            return;
        }
        let cleared = self.pacer.clear(now);
        // Marks and media not yet handed out must not follow the clear.
        self.out.retain(|o| !matches!(o, CallOutput::TwilioMedia(_) | CallOutput::TwilioMark(_)));
        self.out.push_front(CallOutput::TwilioClear);
        for h in cleared.heard {
            self.report(h, true, now);
        }
    }

    /// Ends the call (idempotent).
    pub fn end(&mut self, reason: EndReason) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        self.out.push_back(CallOutput::End(reason));
    }

    pub fn poll_output(&mut self, now: Instant) -> Option<CallOutput> {
        if self.out.is_empty() && self.phase == Phase::Streaming {
            self.play_dtmf(now);
            self.end_utterance_if_quiet(now);
            self.drain_pacer(now);
        }
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.out.is_empty() || self.phase != Phase::Streaming {
            return None;
        }
        let quiet_at = match (self.speaking.is_some() || self.muted, self.last_room_audio) {
            (true, Some(t)) => Some(t + self.cfg.utterance_gap),
            _ => None,
        };
        [self.pacer.poll_timeout(), quiet_at, self.dtmf_next].into_iter().flatten().min()
    }

    fn end_utterance_if_quiet(&mut self, now: Instant) {
        let quiet = self.last_room_audio.is_some_and(|t| now >= t + self.cfg.utterance_gap);
        if !quiet {
            return;
        }
        self.muted = false;
        if let Some(id) = self.speaking.take() {
            self.pacer.end_utterance(id);
        }
    }

    fn drain_pacer(&mut self, now: Instant) {
        while let Some(o) = self.pacer.poll_output(now) {
            match o {
                Output::Media(f) => self.out.push_back(CallOutput::TwilioMedia(f)),
                Output::Mark(m) => self.out.push_back(CallOutput::TwilioMark(m)),
                Output::Heard(h) => {
                    if let Some(rtt) = h.mark_rtt {
                        self.out.push_back(CallOutput::MarkEchoed { rtt });
                    }
                    self.report(h, false, now)
                }
            }
        }
    }

    fn report(&mut self, h: Heard, interrupted: bool, now: Instant) {
        let due = match self.last_report {
            Some((u, t)) if u == h.utterance => now >= t + self.cfg.playback_report_every,
            _ => true,
        };
        if !(due || h.complete || interrupted) {
            return;
        }
        self.last_report = Some((h.utterance, now));
        self.stats.playback_reports += 1;
        self.out.push_back(CallOutput::Control(Control::Playback {
            utterance_id: self.label_of(h.utterance),
            heard_ms: h.heard_ms,
            complete: h.complete,
            interrupted,
        }));
    }
}
