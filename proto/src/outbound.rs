//! An outbound call placed through Twilio for LiveKit's `CreateSIPParticipant`, sans-IO: from
//! the REST request to the end of the call, driven by Twilio's status callbacks, its async
//! answering-machine result, the Media Stream and the clock.
//!
//! ```text
//! placed ─▶ dialing ─(ringing)─▶ ringing ─(in-progress)─▶ answered ─(stream)─▶ automation? ─▶ active ─▶ hangup
//!    └──────────── busy / no-answer / failed / canceled / ringing timeout ──────────────────────────▶ hangup
//! ```
//!
//! The phone participant's `sip.callStatus` follows LiveKit SIP's values. The request is
//! answered once ([`OutboundOutput::Reply`]): when Twilio accepted the call, or — with
//! `wait_until_answered` — when the callee's audio flows (or with LiveKit SIP's error when it
//! never does). Callbacks may come late, twice or out of order: the status only moves forward.
//! Every deadline ends the call, so a call whose callbacks are lost still ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::dtmf::{duration_of, Press};
use crate::twirp::{TwirpCode, TwirpError};

/// `OUTBOUND_AMD` and the per-request `X-Twilio-MachineDetection` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdMode {
    Off,
    /// Twilio says human or machine as soon as it can tell.
    Enable,
    /// Twilio waits for the end of a machine's greeting (the beep) before saying so.
    DetectMessageEnd,
}

impl AmdMode {
    /// Twilio's `MachineDetection` value, or `None` for no detection.
    pub fn twilio_value(self) -> Option<&'static str> {
        match self {
            AmdMode::Off => None,
            AmdMode::Enable => Some("Enable"),
            AmdMode::DetectMessageEnd => Some("DetectMessageEnd"),
        }
    }
}

impl std::str::FromStr for AmdMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "false" | "" => Ok(AmdMode::Off),
            "enable" => Ok(AmdMode::Enable),
            "detectmessageend" => Ok(AmdMode::DetectMessageEnd),
            _ => Err(format!("{s:?}: expected DetectMessageEnd, Enable or off")),
        }
    }
}

/// Twilio's `CallStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwilioCallStatus {
    Queued,
    Initiated,
    Ringing,
    InProgress,
    Completed,
    Busy,
    Failed,
    NoAnswer,
    Canceled,
}

impl TwilioCallStatus {
    pub fn parse(s: &str) -> Option<TwilioCallStatus> {
        Some(match s {
            "queued" => TwilioCallStatus::Queued,
            "initiated" => TwilioCallStatus::Initiated,
            "ringing" => TwilioCallStatus::Ringing,
            "in-progress" | "answered" => TwilioCallStatus::InProgress,
            "completed" => TwilioCallStatus::Completed,
            "busy" => TwilioCallStatus::Busy,
            "failed" => TwilioCallStatus::Failed,
            "no-answer" => TwilioCallStatus::NoAnswer,
            "canceled" => TwilioCallStatus::Canceled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TwilioCallStatus::Queued => "queued",
            TwilioCallStatus::Initiated => "initiated",
            TwilioCallStatus::Ringing => "ringing",
            TwilioCallStatus::InProgress => "in-progress",
            TwilioCallStatus::Completed => "completed",
            TwilioCallStatus::Busy => "busy",
            TwilioCallStatus::Failed => "failed",
            TwilioCallStatus::NoAnswer => "no-answer",
            TwilioCallStatus::Canceled => "canceled",
        }
    }
}

/// Twilio's answering-machine verdict (`AnsweredBy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnsweredBy {
    Human,
    MachineStart,
    MachineEndBeep,
    MachineEndSilence,
    MachineEndOther,
    Fax,
    Unknown,
}

impl AnsweredBy {
    pub fn parse(s: &str) -> Option<AnsweredBy> {
        Some(match s {
            "human" => AnsweredBy::Human,
            "machine_start" => AnsweredBy::MachineStart,
            "machine_end_beep" => AnsweredBy::MachineEndBeep,
            "machine_end_silence" => AnsweredBy::MachineEndSilence,
            "machine_end_other" => AnsweredBy::MachineEndOther,
            "fax" => AnsweredBy::Fax,
            "unknown" => AnsweredBy::Unknown,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Human => "human",
            AnsweredBy::MachineStart => "machine_start",
            AnsweredBy::MachineEndBeep => "machine_end_beep",
            AnsweredBy::MachineEndSilence => "machine_end_silence",
            AnsweredBy::MachineEndOther => "machine_end_other",
            AnsweredBy::Fax => "fax",
            AnsweredBy::Unknown => "unknown",
        }
    }
}

/// LiveKit SIP's `sip.callStatus` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SipCallStatus {
    Dialing,
    Ringing,
    /// Answered; the request's `dtmf` keys are being pressed.
    Automation,
    Active,
    Hangup,
}

impl SipCallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SipCallStatus::Dialing => "dialing",
            SipCallStatus::Ringing => "ringing",
            SipCallStatus::Automation => "automation",
            SipCallStatus::Active => "active",
            SipCallStatus::Hangup => "hangup",
        }
    }
}

pub const ATTR_CALL_STATUS: &str = "sip.callStatus";
pub const ATTR_ANSWERED_BY: &str = "sip.twilio.answeredBy";
pub const ATTR_CALL_SID: &str = "sip.twilio.callSid";
pub const ATTR_ACCOUNT_SID: &str = "sip.twilio.accountSid";
pub const ATTR_CALL_ID: &str = "sip.callID";

/// Why a call never got to talk, as LiveKit SIP reports it: a SIP-like status in the Twirp
/// error's `meta` (`sip_status_code`, `sip_status`), under the Twirp code LiveKit maps it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// 486 Busy Here.
    Busy,
    /// Nobody answered in time: 408 Request Timeout.
    NoAnswer,
    /// Twilio could not place it (a bad number, the carrier): 500.
    Failed,
    /// Cancelled before it was answered (shutdown, the participant removed): 487.
    Canceled,
    /// Answered, but its Media Stream never came: 500.
    NoMedia,
}

impl DialFailure {
    pub fn sip_status(self) -> (u16, &'static str) {
        match self {
            DialFailure::Busy => (486, "Busy Here"),
            DialFailure::NoAnswer => (408, "Request Timeout"),
            DialFailure::Failed => (500, "Server Internal Error"),
            DialFailure::Canceled => (487, "Request Terminated"),
            DialFailure::NoMedia => (500, "Server Internal Error"),
        }
    }

    /// LiveKit's mapping of the SIP status to a Twirp code (protocol `livekit/sip.go`).
    pub fn twirp_code(self) -> TwirpCode {
        match self {
            DialFailure::Busy => TwirpCode::ResourceExhausted,
            DialFailure::NoAnswer => TwirpCode::DeadlineExceeded,
            DialFailure::Failed | DialFailure::NoMedia => TwirpCode::FailedPrecondition,
            DialFailure::Canceled => TwirpCode::Aborted,
        }
    }

    /// The metric/log label.
    pub fn as_str(self) -> &'static str {
        match self {
            DialFailure::Busy => "busy",
            DialFailure::NoAnswer => "no_answer",
            DialFailure::Failed => "failed",
            DialFailure::Canceled => "canceled",
            DialFailure::NoMedia => "no_media",
        }
    }

    pub fn to_twirp(self) -> TwirpError {
        let (code, status) = self.sip_status();
        TwirpError::new(self.twirp_code(), format!("sip status {code}: {status}"))
            .with_meta("sip_status_code", code.to_string())
            .with_meta("sip_status", status)
    }
}

#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Answer the request only once the callee's audio flows.
    pub wait_until_answered: bool,
    /// How long the phone may ring (Twilio's `Timeout` says the same; this also covers lost
    /// callbacks).
    pub ringing_timeout: Duration,
    /// Slack on top of the ringing timeout for Twilio's own timer and callback delivery.
    pub callback_grace: Duration,
    /// Answered, and no Media Stream this long after: give up.
    pub stream_timeout: Duration,
    /// Keys to press once answered (LiveKit's `dtmf`).
    pub dtmf: Vec<Press>,
    /// Ringback into the room while the phone rings (LiveKit's `play_dialtone`).
    pub play_dialtone: bool,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            wait_until_answered: false,
            ringing_timeout: Duration::from_secs(30),
            callback_grace: Duration::from_secs(10),
            stream_timeout: Duration::from_secs(15),
            dtmf: Vec::new(),
            play_dialtone: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundOutput {
    /// Set these attributes on the phone participant.
    Attributes(Vec<(&'static str, String)>),
    /// Answer the CreateSIPParticipant request (once).
    Reply(Result<(), DialFailure>),
    /// Start or stop the ringback in the room.
    Dialtone(bool),
    /// Press these keys in-band to the callee.
    Dtmf(Vec<Press>),
    /// End the call at Twilio (REST): `Status=canceled` before it was answered, else `completed`.
    EndTwilioCall { answered: bool },
    /// The call is over (its stream, if any, is closing or closed).
    End(OutboundEnd),
}

/// How an outbound call ended: its label for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundEnd {
    /// It was answered and talked.
    Completed,
    NotAnswered(DialFailure),
}

impl OutboundEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundEnd::Completed => "completed",
            OutboundEnd::NotAnswered(f) => f.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// The REST request is out.
    Placing,
    Dialing,
    Ringing,
    /// Twilio says in-progress; the stream is on its way.
    Answered,
    Streaming,
    Ended,
}

pub struct OutboundCall {
    cfg: OutboundConfig,
    phase: Phase,
    status: SipCallStatus,
    replied: bool,
    dialtone: bool,
    answered_by: Option<AnsweredBy>,
    /// When the current phase gives up (ringing, waiting for the stream) or `automation` ends.
    deadline: Option<Instant>,
    out: VecDeque<OutboundOutput>,
}

impl OutboundCall {
    /// A call about to be placed: the phone participant is in the room, `dialing`.
    pub fn new(cfg: OutboundConfig) -> OutboundCall {
        OutboundCall {
            cfg,
            phase: Phase::Placing,
            status: SipCallStatus::Dialing,
            replied: false,
            dialtone: false,
            answered_by: None,
            deadline: None,
            out: VecDeque::new(),
        }
    }

    /// The status to join the room with.
    pub fn status(&self) -> SipCallStatus {
        self.status
    }

    pub fn answered_by(&self) -> Option<AnsweredBy> {
        self.answered_by
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Whether Twilio said the call was answered.
    pub fn is_answered(&self) -> bool {
        self.phase >= Phase::Answered && self.phase != Phase::Ended
    }

    pub fn is_streaming(&self) -> bool {
        self.phase == Phase::Streaming
    }

    /// Twilio accepted the call (`Calls.json` answered with its CallSid).
    pub fn placed(&mut self, call_sid: &str, account_sid: &str, now: Instant) {
        if self.phase != Phase::Placing {
            return;
        }
        self.phase = Phase::Dialing;
        self.deadline = Some(now + self.cfg.ringing_timeout + self.cfg.callback_grace);
        self.out.push_back(OutboundOutput::Attributes(vec![
            (ATTR_CALL_SID, call_sid.to_owned()),
            (ATTR_ACCOUNT_SID, account_sid.to_owned()),
            (ATTR_CALL_ID, call_sid.to_owned()),
        ]));
        if self.cfg.play_dialtone {
            self.set_dialtone(true);
        }
        if !self.cfg.wait_until_answered {
            self.reply(Ok(()));
        }
    }

    /// Twilio refused to place the call. The driver answers the request with its own error.
    pub fn place_failed(&mut self) {
        if self.phase != Phase::Placing {
            return;
        }
        self.replied = true; // the driver answers with the REST error
        self.finish(OutboundEnd::NotAnswered(DialFailure::Failed));
    }

    /// A status callback.
    pub fn twilio_status(&mut self, status: TwilioCallStatus, now: Instant) {
        if matches!(self.phase, Phase::Ended | Phase::Placing) {
            return;
        }
        match status {
            TwilioCallStatus::Queued | TwilioCallStatus::Initiated => {}
            TwilioCallStatus::Ringing => {
                if self.phase == Phase::Dialing {
                    self.phase = Phase::Ringing;
                    self.set_status(SipCallStatus::Ringing);
                }
            }
            TwilioCallStatus::InProgress => {
                if self.phase < Phase::Answered {
                    self.phase = Phase::Answered;
                    self.set_dialtone(false);
                    self.deadline = Some(now + self.cfg.stream_timeout);
                }
            }
            TwilioCallStatus::Completed => {
                // Over after it was answered; before its stream came it never talked.
                let end = if self.phase == Phase::Streaming {
                    OutboundEnd::Completed
                } else {
                    OutboundEnd::NotAnswered(DialFailure::NoMedia)
                };
                self.finish(end);
            }
            TwilioCallStatus::Busy => self.finish(OutboundEnd::NotAnswered(DialFailure::Busy)),
            TwilioCallStatus::NoAnswer => self.finish(OutboundEnd::NotAnswered(DialFailure::NoAnswer)),
            TwilioCallStatus::Failed => self.finish(OutboundEnd::NotAnswered(DialFailure::Failed)),
            TwilioCallStatus::Canceled => self.finish(OutboundEnd::NotAnswered(DialFailure::Canceled)),
        }
    }

    /// Twilio's answering-machine verdict (any time after the answer; the last one wins).
    pub fn answered_by_result(&mut self, who: AnsweredBy) {
        if self.phase == Phase::Ended || self.answered_by == Some(who) {
            return;
        }
        self.answered_by = Some(who);
        self.out.push_back(OutboundOutput::Attributes(vec![(ATTR_ANSWERED_BY, who.as_str().to_owned())]));
    }

    /// The call's Media Stream started: the callee can hear the room and be heard.
    pub fn stream_started(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Ended | Phase::Streaming | Phase::Placing) {
            return;
        }
        self.phase = Phase::Streaming;
        self.set_dialtone(false);
        self.deadline = None;
        if self.cfg.dtmf.is_empty() {
            self.set_status(SipCallStatus::Active);
        } else {
            self.set_status(SipCallStatus::Automation);
            self.out.push_back(OutboundOutput::Dtmf(self.cfg.dtmf.clone()));
            self.deadline = Some(now + duration_of(&self.cfg.dtmf));
        }
        self.reply(Ok(()));
    }

    /// The stream ended (the callee or the agent hung up, or the bridge ended it).
    pub fn stream_ended(&mut self) {
        if self.phase == Phase::Streaming {
            self.finish(OutboundEnd::Completed);
        } else {
            self.hangup();
        }
    }

    /// End the call from our side (shutdown, the phone participant lost its room).
    pub fn hangup(&mut self) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.phase != Phase::Placing {
            self.out.push_back(OutboundOutput::EndTwilioCall { answered: self.phase >= Phase::Answered });
        }
        let end = if self.phase == Phase::Streaming {
            OutboundEnd::Completed
        } else {
            OutboundEnd::NotAnswered(DialFailure::Canceled)
        };
        self.finish(end);
    }

    pub fn poll_output(&mut self, now: Instant) -> Option<OutboundOutput> {
        if self.out.is_empty() {
            self.on_deadline(now);
        }
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.out.is_empty() {
            return None;
        }
        self.deadline
    }

    fn on_deadline(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d {
            return;
        }
        self.deadline = None;
        match self.phase {
            Phase::Dialing | Phase::Ringing => {
                self.out.push_back(OutboundOutput::EndTwilioCall { answered: false });
                self.finish(OutboundEnd::NotAnswered(DialFailure::NoAnswer));
            }
            Phase::Answered => {
                self.out.push_back(OutboundOutput::EndTwilioCall { answered: true });
                self.finish(OutboundEnd::NotAnswered(DialFailure::NoMedia));
            }
            Phase::Streaming => self.set_status(SipCallStatus::Active),
            Phase::Placing | Phase::Ended => {}
        }
    }

    fn finish(&mut self, end: OutboundEnd) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        self.deadline = None;
        self.set_dialtone(false);
        if let OutboundEnd::NotAnswered(f) = end {
            self.reply(Err(f));
        }
        self.set_status(SipCallStatus::Hangup);
        self.out.push_back(OutboundOutput::End(end));
    }

    fn reply(&mut self, r: Result<(), DialFailure>) {
        if !self.replied {
            self.replied = true;
            self.out.push_back(OutboundOutput::Reply(r));
        }
    }

    fn set_status(&mut self, s: SipCallStatus) {
        // Forward only (`active` after `automation` is forward too).
        if s > self.status {
            self.status = s;
            self.out.push_back(OutboundOutput::Attributes(vec![(ATTR_CALL_STATUS, s.as_str().to_owned())]));
        }
    }

    fn set_dialtone(&mut self, on: bool) {
        if self.dialtone != on {
            self.dialtone = on;
            self.out.push_back(OutboundOutput::Dialtone(on));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_twilio_values() {
        assert_eq!("DetectMessageEnd".parse(), Ok(AmdMode::DetectMessageEnd));
        assert_eq!("enable".parse(), Ok(AmdMode::Enable));
        assert_eq!("off".parse(), Ok(AmdMode::Off));
        assert!("maybe".parse::<AmdMode>().is_err());
        assert_eq!(AmdMode::Off.twilio_value(), None);
        for s in ["queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"] {
            assert_eq!(TwilioCallStatus::parse(s).unwrap().as_str(), s);
        }
        for s in ["human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"] {
            assert_eq!(AnsweredBy::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(AnsweredBy::parse("robot"), None);
    }

    #[test]
    fn failures_map_as_livekit_sip() {
        let e = DialFailure::Busy.to_twirp();
        assert_eq!(e.code, TwirpCode::ResourceExhausted);
        assert_eq!(e.meta["sip_status_code"], "486");
        assert_eq!(DialFailure::NoAnswer.to_twirp().code, TwirpCode::DeadlineExceeded);
        assert_eq!(DialFailure::Canceled.to_twirp().code, TwirpCode::Aborted);
    }
}
