//! What one simulated call saw ([`Report`]) and what a load run saw ([`Aggregate`]).

use std::collections::BTreeMap;

use serde::Serialize;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The stream ran and ended (by the simulator's `stop` or the server closing the socket).
    Completed,
    /// The webhook answered `<Say>…<Hangup/>` / `<Reject/>` (e.g. busy).
    Rejected,
    /// The webhook answered `<Dial><Sip>`; the simulator does not place SIP calls.
    Sip,
    /// `/incoming-call` answered with a non-2xx status (e.g. 403 for a bad signature).
    WebhookRefused,
    /// The WebSocket upgrade was refused (e.g. 403 for a bad signature).
    StreamRefused,
    /// Anything else: network error, invalid TwiML, a non-wss stream URL, a dropped socket.
    #[default]
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rejected => "rejected",
            Outcome::Sip => "sip",
            Outcome::WebhookRefused => "webhook_refused",
            Outcome::StreamRefused => "stream_refused",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// The simulator sent `stop` and closed (duration reached, end of file, or hangup action).
    Sim,
    /// The server closed the WebSocket first.
    Server,
}

/// Dry periods in what the caller heard (see `playback.rs` for the classification).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GapReport {
    pub within_utterance_count: u64,
    pub within_utterance_ms: f64,
    pub between_utterances_count: u64,
    pub between_utterances_ms: f64,
}

/// Distribution of a set of values (nearest-rank percentiles).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min: Option<f64>,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Summary {
            count: v.len() as u64,
            min: v.first().copied(),
            mean: Some(v.iter().sum::<f64>() / v.len() as f64),
            p50: Some(pct(50.0)),
            p95: Some(pct(95.0)),
            p99: Some(pct(99.0)),
            max: v.last().copied(),
        }
    }
}

/// Most distinct invalid-message reasons kept per call.
pub const MAX_REASONS: usize = 10;
/// Most raw mark round trips kept per call (for aggregate percentiles).
pub const MAX_RTTS: usize = 4096;

/// Everything one call saw. Times ending in `_ms` are milliseconds; stream times are on the
/// simulator's clock (accelerated under `--fast`/`--speed`), latencies on the wall clock.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub outcome: Outcome,
    pub error: Option<String>,
    /// `<Say>` text of a rejecting answer.
    pub said: Option<String>,
    /// `<Dial><Sip>` URI of a SIP answer.
    pub sip_uri: Option<String>,
    pub call_sid: String,
    pub stream_sid: Option<String>,
    /// HTTP status of `/incoming-call`.
    pub webhook_status: Option<u16>,
    /// HTTP status of `/call-status` (None when skipped or unreachable).
    pub status_callback_status: Option<u16>,
    pub closed_by: Option<ClosedBy>,
    /// Things Twilio would have warned about but that did not stop the call.
    pub warnings: Vec<String>,

    /// `media` messages sent (lost frames not included).
    pub frames_sent: u64,
    /// Frames skipped by `--loss` (their chunk/timestamp were used up).
    pub frames_lost: u64,
    pub dtmf_sent: u64,
    /// DTMF keys heard in the audio from the server (Goertzel), in order.
    pub dtmf_heard: String,

    /// Outbound `media` messages from the server.
    pub frames_received: u64,
    pub bytes_received: u64,
    /// `bytes_received / 8`.
    pub audio_received_ms: f64,
    /// Audio the caller heard (played from the buffer).
    pub played_ms: f64,
    pub gaps: GapReport,
    /// Audio dropped because the modelled buffer was full.
    pub buffer_overflow_bytes: u64,

    pub marks_received: u64,
    /// Echoed after their audio played.
    pub marks_echoed: u64,
    /// Echoed at once by a `clear`.
    pub marks_echoed_by_clear: u64,
    /// Mark received → echoed, stream clock.
    pub mark_rtt_ms: Summary,
    pub clears_received: u64,
    /// `start` sent → first outbound `media` received, wall clock.
    pub first_audio_latency_ms: Option<f64>,
    /// Messages Twilio would reject: binary frames (warning 31950), events other than
    /// media/mark/clear (31924), bad JSON, missing fields, bad base64, another stream's SID.
    pub invalid_messages: u64,
    /// The first few distinct reasons.
    pub invalid_reasons: Vec<String>,
    /// Live events a test did not read fast enough.
    pub events_dropped: u64,

    /// Webhook to end of call, wall clock.
    pub duration_ms: f64,
    /// Length of the stream on the simulator's clock.
    pub stream_ms: f64,

    /// Raw mark round trips (bounded), for aggregation.
    #[serde(skip)]
    pub mark_rtts: Vec<f64>,
    /// What the caller heard (μ-law 8 kHz, silence where the buffer ran dry) when recording
    /// was asked for (`CallConfig::record` or `keep_heard`).
    #[serde(skip)]
    pub heard: Vec<u8>,
}

impl Report {
    pub fn new(call_sid: String) -> Report {
        Report { call_sid, ..Default::default() }
    }

    pub(crate) fn invalid(&mut self, reason: String) {
        self.invalid_messages += 1;
        if self.invalid_reasons.len() < MAX_REASONS && !self.invalid_reasons.contains(&reason) {
            self.invalid_reasons.push(reason);
        }
    }

    pub(crate) fn fail(&mut self, outcome: Outcome, error: impl Into<String>) {
        self.outcome = outcome;
        self.error = Some(error.into());
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One call that did not complete.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub index: usize,
    pub call_sid: String,
    pub outcome: Outcome,
    pub error: Option<String>,
}

/// Sums and distributions over a load run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Aggregate {
    pub calls: u64,
    pub completed: u64,
    pub not_completed: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub frames_sent: u64,
    pub frames_lost: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub gaps: GapReport,
    pub marks_received: u64,
    pub marks_echoed: u64,
    pub marks_echoed_by_clear: u64,
    pub clears_received: u64,
    pub invalid_messages: u64,
    pub first_audio_latency_ms: Summary,
    pub mark_rtt_ms: Summary,
    pub duration_ms: Summary,
    /// Whole run, wall clock.
    pub wall_ms: f64,
    /// Calls that did not complete (first 100).
    pub failures: Vec<Failure>,
}

impl Aggregate {
    pub fn of(reports: &[Report], wall_ms: f64) -> Aggregate {
        let mut a = Aggregate { calls: reports.len() as u64, wall_ms, ..Default::default() };
        let mut latency = Vec::new();
        let mut rtts = Vec::new();
        let mut durations = Vec::new();
        for (index, r) in reports.iter().enumerate() {
            *a.outcomes.entry(r.outcome.as_str()).or_default() += 1;
            if r.outcome == Outcome::Completed {
                a.completed += 1;
            } else {
                a.not_completed += 1;
                if a.failures.len() < 100 {
                    a.failures.push(Failure {
                        index,
                        call_sid: r.call_sid.clone(),
                        outcome: r.outcome,
                        error: r.error.clone().or_else(|| r.said.clone()),
                    });
                }
            }
            a.frames_sent += r.frames_sent;
            a.frames_lost += r.frames_lost;
            a.frames_received += r.frames_received;
            a.bytes_received += r.bytes_received;
            a.gaps.within_utterance_count += r.gaps.within_utterance_count;
            a.gaps.within_utterance_ms += r.gaps.within_utterance_ms;
            a.gaps.between_utterances_count += r.gaps.between_utterances_count;
            a.gaps.between_utterances_ms += r.gaps.between_utterances_ms;
            a.marks_received += r.marks_received;
            a.marks_echoed += r.marks_echoed;
            a.marks_echoed_by_clear += r.marks_echoed_by_clear;
            a.clears_received += r.clears_received;
            a.invalid_messages += r.invalid_messages;
            latency.extend(r.first_audio_latency_ms);
            rtts.extend_from_slice(&r.mark_rtts);
            durations.push(r.duration_ms);
        }
        a.first_audio_latency_ms = Summary::of(&latency);
        a.mark_rtt_ms = Summary::of(&rtts);
        a.duration_ms = Summary::of(&durations);
        a
    }
}

/// The result of [`run_calls`](crate::run_calls).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub aggregate: Aggregate,
    pub calls: Vec<Report>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.count, s.min, s.p50, s.p95, s.p99, s.max), (100, Some(1.0), Some(50.0), Some(95.0), Some(99.0), Some(100.0)));
        assert_eq!(Summary::of(&[]).count, 0);
        assert_eq!(Summary::of(&[7.0]).p99, Some(7.0));
        assert_eq!(Summary::of(&[f64::NAN, 2.0]).count, 1);
    }

    #[test]
    fn aggregate_sums_and_lists_failures() {
        let mut ok = Report::new("CA1".into());
        ok.outcome = Outcome::Completed;
        ok.frames_sent = 10;
        ok.first_audio_latency_ms = Some(5.0);
        ok.mark_rtts = vec![1.0, 2.0];
        let mut busy = Report::new("CA2".into());
        busy.outcome = Outcome::Rejected;
        busy.said = Some("busy".into());
        let a = Aggregate::of(&[ok.clone(), ok, busy], 1.0);
        assert_eq!((a.calls, a.completed, a.not_completed, a.frames_sent), (3, 2, 1, 20));
        assert_eq!(a.outcomes["completed"], 2);
        assert_eq!(a.failures[0].error.as_deref(), Some("busy"));
        assert_eq!(a.mark_rtt_ms.count, 4);
        assert_eq!(a.first_audio_latency_ms.p50, Some(5.0));
    }
}
