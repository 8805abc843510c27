//! The far end of an outbound call, as Twilio and the phone it rings play it: given the form of
//! a `POST Calls.json` (what the bridge asked Twilio), it sends the signed status callbacks
//! (initiated, ringing, answered, completed — only those asked for), rings, and then answers
//! (fetches the TwiML `Url` and opens the Media Stream, as Twilio does), is busy, never answers,
//! fails, or is a voicemail that plays a greeting and a beep. With `MachineDetection` and
//! `AsyncAmd`, it posts the answering-machine verdict Twilio would.
//!
//! A fake Twilio REST server (a test's) calls [`place`] for each `Calls.json` and passes later
//! `Calls/{sid}.json` updates (`Status=canceled|completed`) to [`FarEndCall::update`].

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::call::{spawn_call, CallEvent};
use crate::config::{Action, CallConfig};
use crate::report::Report;
use crate::{sid, webhook};

/// What the phone at the other end does.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A person picks up after `rings` rings and talks (the call's configured audio).
    Human { rings: u32 },
    /// The line is busy.
    Busy,
    /// It rings until Twilio gives up (`Timeout`).
    NoAnswer,
    /// Twilio cannot place the call (a bad number, the carrier).
    Fail,
    /// A voicemail picks up after `rings` rings: `greeting` (8 kHz PCM), a beep, then it
    /// listens (records) until the caller hangs up.
    Voicemail { rings: u32, greeting: Vec<i16> },
}

/// The voicemail's beep: 1 kHz for 500 ms.
pub const BEEP_HZ: f64 = 1000.0;
pub const BEEP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct FarEnd {
    pub answer: Answer,
    /// One ring (6 s on a real line; tests use less).
    pub ring: Duration,
    /// How long Twilio's detector takes to say `human` / `machine_start`.
    pub amd_delay: Duration,
    /// The answered call's stream: auth token, audio, duration, recording. Its URLs, numbers
    /// and CallSid are filled in from the request.
    pub call: CallConfig,
}

/// The `Calls.json` request, as far as the far end needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub to: String,
    pub from: String,
    /// TwiML fetched when answered.
    pub url: String,
    pub status_callback: Option<String>,
    /// `StatusCallbackEvent`s asked for (Twilio's default is `completed` only).
    pub events: Vec<String>,
    /// Seconds to ring (`Timeout`, default 60).
    pub timeout: Duration,
    pub machine_detection: Option<String>,
    pub async_amd: bool,
    pub amd_callback: Option<String>,
}

impl Placement {
    /// Reads the form; `Err` names what Twilio would refuse (HTTP 400).
    pub fn from_form(form: &[(String, String)]) -> Result<Placement, String> {
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let required = |k: &str| get(k).filter(|v| !v.is_empty()).ok_or_else(|| format!("missing {k}"));
        let timeout = match get("Timeout") {
            Some(t) => t.parse::<u64>().map_err(|_| format!("Timeout {t:?} is not a number of seconds"))?,
            None => 60,
        };
        let mut events: Vec<String> = form.iter().filter(|(k, _)| k == "StatusCallbackEvent").flat_map(|(_, v)| v.split(' ').map(str::to_owned)).collect();
        if events.is_empty() {
            events.push("completed".into());
        }
        Ok(Placement {
            to: required("To")?,
            from: required("From")?,
            url: required("Url")?,
            status_callback: get("StatusCallback"),
            events,
            timeout: Duration::from_secs(timeout.clamp(1, 600)),
            machine_detection: get("MachineDetection"),
            async_amd: get("AsyncAmd").as_deref() == Some("true"),
            amd_callback: get("AsyncAmdStatusCallback"),
        })
    }
}

/// A `Calls/{sid}.json` update the far end obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// `Status=canceled`: stop ringing.
    Cancel,
    /// `Status=completed`: hang up.
    Hangup,
}

/// What happened at the far end.
#[derive(Debug, Clone, Default)]
pub struct FarEndReport {
    pub call_sid: String,
    /// Status callbacks sent: (`CallStatus`, HTTP status of the bridge's answer).
    pub statuses: Vec<(String, Option<u16>)>,
    /// The answering-machine verdict posted, if any.
    pub answered_by: Option<String>,
    /// The answered call's stream (what it heard, DTMF keys in it).
    pub call: Option<Report>,
    pub error: Option<String>,
}

/// One placed call, running in its own task.
pub struct FarEndCall {
    pub call_sid: String,
    updates: mpsc::Sender<Update>,
    task: JoinHandle<FarEndReport>,
}

impl FarEndCall {
    /// A REST update for this call.
    pub fn update(&self, u: Update) {
        let _ = self.updates.try_send(u);
    }

    pub async fn finish(self) -> FarEndReport {
        self.task.await.unwrap_or_else(|e| FarEndReport { error: Some(format!("far end task failed: {e}")), ..Default::default() })
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Places the call: Twilio's part starts at once (callbacks, ringing, the answer).
pub fn place(p: Placement, far: FarEnd, account_sid: &str) -> FarEndCall {
    let call_sid = sid::sid("CA");
    let (updates, rx) = mpsc::channel(8);
    let task = tokio::spawn(run(p, far, account_sid.to_owned(), call_sid.clone(), rx));
    FarEndCall { call_sid, updates, task }
}

/// Twilio's callbacks for one call.
struct Callbacks {
    http: reqwest::Client,
    p: Placement,
    token: String,
    call_sid: String,
    account_sid: String,
    seq: u32,
    report: FarEndReport,
}

impl Callbacks {
    /// A status callback, if its event was asked for.
    async fn status(&mut self, status: &str, extra: &[(&str, String)]) {
        let event = match status {
            "initiated" => "initiated",
            "ringing" => "ringing",
            "in-progress" => "answered",
            _ => "completed",
        };
        let Some(url) = self.p.status_callback.clone().filter(|_| self.p.events.iter().any(|e| e == event)) else { return };
        let mut params = self.params();
        params.push(("CallStatus", status.to_owned()));
        params.push(("SequenceNumber", self.seq.to_string()));
        params.push(("CallbackSource", "call-progress-events".into()));
        params.extend(extra.iter().cloned());
        self.seq += 1;
        let code = webhook::post_signed(&self.http, &url, &self.token, &params).await.ok().map(|(c, _)| c);
        self.report.statuses.push((status.to_owned(), code));
    }

    async fn amd(&mut self, answered_by: &str, after: Duration) {
        let Some(url) = self.p.amd_callback.clone() else { return };
        let mut params = self.params();
        params.push(("AnsweredBy", answered_by.to_owned()));
        params.push(("MachineDetectionDuration", after.as_millis().to_string()));
        let _ = webhook::post_signed(&self.http, &url, &self.token, &params).await;
        self.report.answered_by = Some(answered_by.to_owned());
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CallSid", self.call_sid.clone()),
            ("AccountSid", self.account_sid.clone()),
            ("From", self.p.from.clone()),
            ("To", self.p.to.clone()),
            ("Direction", "outbound-api".into()),
            ("ApiVersion", "2010-04-01".into()),
        ]
    }
}

/// Waits `d`; `Some` when a REST update came first.
async fn wait(d: Duration, rx: &mut mpsc::Receiver<Update>) -> Option<Update> {
    tokio::select! {
        u = rx.recv() => u,
        _ = tokio::time::sleep(d) => None,
    }
}

async fn run(p: Placement, far: FarEnd, account_sid: String, call_sid: String, mut rx: mpsc::Receiver<Update>) -> FarEndReport {
    let http = match webhook::client(far.call.timeout) {
        Ok(h) => h,
        Err(e) => return FarEndReport { call_sid, error: Some(e.to_string()), ..Default::default() },
    };
    let mut cb = Callbacks {
        http,
        p: p.clone(),
        token: far.call.auth_token.clone(),
        call_sid: call_sid.clone(),
        account_sid: account_sid.clone(),
        seq: 0,
        report: FarEndReport { call_sid: call_sid.clone(), ..Default::default() },
    };
    // Twilio answers the REST request first, then starts calling.
    tokio::time::sleep(Duration::from_millis(30)).await;
    cb.status("initiated", &[]).await;
    if far.answer == Answer::Fail {
        cb.status("failed", &[]).await;
        return cb.report;
    }
    cb.status("ringing", &[]).await;
    let rings = match &far.answer {
        Answer::Human { rings } | Answer::Voicemail { rings, .. } => *rings,
        Answer::Busy => 1,
        _ => u32::MAX,
    };
    let ringing = (far.ring * rings.min(1000)).min(p.timeout);
    if let Some(u) = wait(ringing, &mut rx).await {
        let status = if u == Update::Cancel { "canceled" } else { "completed" };
        cb.status(status, &[]).await;
        return cb.report;
    }
    match far.answer {
        Answer::Busy => {
            cb.status("busy", &[]).await;
            return cb.report;
        }
        Answer::NoAnswer | Answer::Fail => {
            cb.status("no-answer", &[]).await;
            return cb.report;
        }
        Answer::Human { .. } | Answer::Voicemail { .. } => {}
    }
    if far.ring * rings.min(1000) > p.timeout {
        cb.status("no-answer", &[]).await;
        return cb.report;
    }

    // Answered: Twilio fetches the TwiML and streams, while the answered callback goes out.
    let mut call_cfg = far.call.clone();
    call_cfg.webhook_url = Some(p.url.clone());
    call_cfg.outbound = true;
    call_cfg.call_sid = Some(call_sid.clone());
    call_cfg.account_sid = Some(account_sid.clone());
    call_cfg.from = p.from.clone();
    call_cfg.to = p.to.clone();
    call_cfg.send_status = false;
    let machine = matches!(far.answer, Answer::Voicemail { .. });
    let mut greeting_len = Duration::ZERO;
    if let Answer::Voicemail { greeting, .. } = &far.answer {
        let mut audio = greeting.clone();
        audio.extend((0..(BEEP.as_millis() as usize * 8)).map(|n| (8000.0 * (std::f64::consts::TAU * BEEP_HZ * n as f64 / 8000.0).sin()) as i16));
        greeting_len = Duration::from_millis(audio.len() as u64 / 8);
        call_cfg = call_cfg.action_at(Duration::ZERO, Action::Audio(audio));
    }
    let started = tokio::time::Instant::now();
    let mut call = spawn_call(call_cfg);
    cb.status("in-progress", &[]).await;
    // Twilio's verdict: a person is heard quickly; a machine's end is its beep.
    let amd = match (&p.machine_detection, p.async_amd, machine) {
        (Some(_), true, false) => Some(("human", far.amd_delay)),
        (Some(m), true, true) if m == "DetectMessageEnd" => Some(("machine_end_beep", greeting_len + Duration::from_millis(100))),
        (Some(_), true, true) => Some(("machine_start", far.amd_delay)),
        _ => None,
    };
    let mut amd_at = amd.map(|(_, d)| started + d);
    let mut hung_up = false;
    loop {
        tokio::select! {
            ev = call.next_event() => match ev {
                None | Some(CallEvent::Ended { .. }) => break,
                Some(_) => {}
            },
            u = rx.recv(), if !hung_up => match u {
                Some(_) => {
                    hung_up = true;
                    call.hangup().await;
                }
                None => hung_up = true,
            },
            _ = tokio::time::sleep_until(amd_at.unwrap_or(started)), if amd_at.is_some() => {
                amd_at = None;
                if let Some((who, after)) = amd {
                    cb.amd(who, after).await;
                }
            }
        }
    }
    let report = call.finish().await.ok();
    let secs = started.elapsed().as_secs().to_string();
    cb.status("completed", &[("CallDuration", secs)]).await;
    cb.report.call = report;
    cb.report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn placement_reads_twilios_fields() {
        let p = Placement::from_form(&form(&[
            ("To", "+15551234567"),
            ("From", "+15550001111"),
            ("Url", "http://b/outbound-call?x=1"),
            ("StatusCallback", "http://b/outbound-status?x=1"),
            ("StatusCallbackEvent", "initiated"),
            ("StatusCallbackEvent", "ringing answered"),
            ("Timeout", "20"),
            ("MachineDetection", "DetectMessageEnd"),
            ("AsyncAmd", "true"),
            ("AsyncAmdStatusCallback", "http://b/outbound-amd?x=1"),
        ]))
        .unwrap();
        assert_eq!(p.events, ["initiated", "ringing", "answered"]);
        assert_eq!(p.timeout, Duration::from_secs(20));
        assert!(p.async_amd);
        assert!(Placement::from_form(&form(&[("To", "+1")])).unwrap_err().contains("From"));
        let p = Placement::from_form(&form(&[("To", "+1"), ("From", "+2"), ("Url", "u")])).unwrap();
        assert_eq!((p.events.as_slice(), p.timeout), (&["completed".to_string()][..], Duration::from_secs(60)));
    }
}
