//! Outbound calls on a simulated clock, against a model of Twilio that places the call and sends
//! its status callbacks (late, twice, out of order, or not at all) and opens the Media Stream.

use std::time::{Duration, Instant};

use proto::dtmf::parse_dial_string;
use proto::outbound::{
    AnsweredBy, DialFailure, OutboundCall, OutboundConfig, OutboundEnd, OutboundOutput, TwilioCallStatus as S,
    ATTR_ANSWERED_BY, ATTR_CALL_SID, ATTR_CALL_STATUS,
};

const MS: Duration = Duration::from_millis(1);
const SID: &str = "CA00000000000000000000000000000001";

/// What Twilio does, at simulated milliseconds.
#[derive(Clone)]
enum Event {
    Status(S),
    Amd(AnsweredBy),
    StreamStart,
    StreamEnd,
    Hangup,
}

/// What the call said, with the millisecond it said it.
#[derive(Default, Debug)]
struct Seen {
    statuses: Vec<(u64, String)>,
    attributes: Vec<(u64, &'static str, String)>,
    replies: Vec<(u64, Result<(), DialFailure>)>,
    dialtone: Vec<(u64, bool)>,
    dtmf: Vec<(u64, String)>,
    rest_ends: Vec<(u64, bool)>,
    end: Option<(u64, OutboundEnd)>,
}

/// Places the call at 0 ms (Twilio answers the REST request at 150 ms), then plays `script`,
/// polling the call on its own deadlines, until `until_ms`.
fn run(cfg: OutboundConfig, script: &[(u64, Event)], until_ms: u64) -> Seen {
    let t0 = Instant::now();
    let mut call = OutboundCall::new(cfg);
    let mut seen = Seen::default();
    let mut script: Vec<(u64, Event)> = script.to_vec();
    script.sort_by_key(|(t, _)| *t);
    let mut next_event = 0;
    let mut t = 0u64;
    let mut wakeups = 0u32;
    while t <= until_ms {
        let now = t0 + MS * t as u32;
        if t == 150 {
            call.placed(SID, "AC1", now);
        }
        while next_event < script.len() && script[next_event].0 <= t {
            match script[next_event].1.clone() {
                Event::Status(s) => call.twilio_status(s, now),
                Event::Amd(a) => call.answered_by_result(a),
                Event::StreamStart => call.stream_started(now),
                Event::StreamEnd => call.stream_ended(),
                Event::Hangup => call.hangup(),
            }
            next_event += 1;
        }
        while let Some(o) = call.poll_output(now) {
            match o {
                OutboundOutput::Attributes(a) => {
                    for (k, v) in a {
                        if k == ATTR_CALL_STATUS {
                            seen.statuses.push((t, v.clone()));
                        }
                        seen.attributes.push((t, k, v));
                    }
                }
                OutboundOutput::Reply(r) => seen.replies.push((t, r)),
                OutboundOutput::Dialtone(on) => seen.dialtone.push((t, on)),
                OutboundOutput::Dtmf(p) => seen.dtmf.push((t, format!("{p:?}"))),
                OutboundOutput::EndTwilioCall { answered } => seen.rest_ends.push((t, answered)),
                OutboundOutput::End(e) => seen.end = Some((t, e)),
            }
        }
        // Jump to the next thing that can happen: a script event, the REST answer or a deadline.
        let mut next = until_ms + 1;
        if t < 150 {
            next = 150;
        }
        if let Some((at, _)) = script.get(next_event) {
            next = next.min(*at);
        }
        if let Some(d) = call.poll_timeout() {
            let d_ms = d.duration_since(t0).as_millis() as u64;
            assert!(d_ms >= t, "a deadline in the past is never returned");
            next = next.min(d_ms.max(t + 1));
            wakeups += 1;
        }
        t = next.max(t + 1);
    }
    assert!(wakeups < 1000, "polled on deadlines, not in a loop");
    seen
}

fn statuses(seen: &Seen) -> Vec<&str> {
    seen.statuses.iter().map(|(_, s)| s.as_str()).collect()
}

fn wait(cfg: OutboundConfig) -> OutboundConfig {
    OutboundConfig { wait_until_answered: true, ..cfg }
}

#[test]
fn answered_after_two_rings_replies_when_the_audio_flows() {
    let cfg = wait(OutboundConfig { play_dialtone: true, ..Default::default() });
    let seen = run(
        cfg,
        &[
            (300, Event::Status(S::Initiated)),
            (700, Event::Status(S::Ringing)),
            (12_700, Event::Status(S::InProgress)),
            (13_100, Event::StreamStart),
            (20_000, Event::Amd(AnsweredBy::Human)),
            (60_000, Event::StreamEnd),
            (60_200, Event::Status(S::Completed)),
        ],
        70_000,
    );
    assert_eq!(statuses(&seen), ["ringing", "active", "hangup"]);
    assert_eq!(seen.statuses[0].0, 700);
    assert_eq!(seen.statuses[1].0, 13_100, "active when the stream starts");
    assert_eq!(seen.replies, vec![(13_100, Ok(()))], "wait_until_answered: the reply waits for the audio");
    assert_eq!(seen.dialtone, vec![(150, true), (12_700, false)], "ringback from placing until the answer");
    assert!(seen.attributes.contains(&(150, ATTR_CALL_SID, SID.to_owned())));
    assert!(seen.attributes.contains(&(20_000, ATTR_ANSWERED_BY, "human".to_owned())));
    assert_eq!(seen.end, Some((60_000, OutboundEnd::Completed)));
    assert!(seen.rest_ends.is_empty(), "the callee hung up: nothing to end at Twilio");
}

#[test]
fn busy_no_answer_and_failed_answer_as_livekit_sip() {
    for (status, failure) in [(S::Busy, DialFailure::Busy), (S::NoAnswer, DialFailure::NoAnswer), (S::Failed, DialFailure::Failed)] {
        let seen = run(wait(Default::default()), &[(500, Event::Status(S::Ringing)), (9_000, Event::Status(status))], 60_000);
        assert_eq!(seen.replies, vec![(9_000, Err(failure))], "{status:?}");
        assert_eq!(statuses(&seen), ["ringing", "hangup"]);
        assert_eq!(seen.end, Some((9_000, OutboundEnd::NotAnswered(failure))));
        assert!(seen.rest_ends.is_empty(), "Twilio ended it already");
    }
}

#[test]
fn without_wait_the_reply_comes_when_twilio_accepts_and_only_once() {
    let seen = run(Default::default(), &[(500, Event::Status(S::Busy)), (600, Event::Status(S::Busy))], 5_000);
    assert_eq!(seen.replies, vec![(150, Ok(()))]);
    assert_eq!(statuses(&seen), ["hangup"]);
    assert_eq!(seen.end, Some((500, OutboundEnd::NotAnswered(DialFailure::Busy))));
}

#[test]
fn lost_callbacks_still_end_the_call() {
    // Twilio never calls back: the ringing timeout (+ grace) cancels the call.
    let cfg = wait(OutboundConfig { ringing_timeout: Duration::from_secs(20), callback_grace: Duration::from_secs(5), ..Default::default() });
    let seen = run(cfg, &[], 60_000);
    assert_eq!(seen.rest_ends, vec![(25_150, false)], "Status=canceled at the deadline");
    assert_eq!(seen.replies, vec![(25_150, Err(DialFailure::NoAnswer))]);
    assert_eq!(statuses(&seen), ["hangup"]);

    // Answered, but the stream never comes: hung up (completed), reported as no media.
    let seen = run(wait(Default::default()), &[(500, Event::Status(S::InProgress))], 60_000);
    assert_eq!(seen.rest_ends, vec![(15_500, true)]);
    assert_eq!(seen.replies, vec![(15_500, Err(DialFailure::NoMedia))]);
}

#[test]
fn callbacks_late_twice_or_out_of_order_never_move_the_status_back() {
    let seen = run(
        wait(Default::default()),
        &[
            (400, Event::Status(S::InProgress)),
            (450, Event::StreamStart),
            (500, Event::Status(S::Ringing)),
            (510, Event::Status(S::Initiated)),
            (520, Event::Status(S::InProgress)),
            (530, Event::StreamStart),
            (5_000, Event::Status(S::Completed)),
            (5_100, Event::StreamEnd),
            (5_200, Event::Status(S::Busy)),
            (5_300, Event::Amd(AnsweredBy::MachineEndBeep)),
        ],
        10_000,
    );
    assert_eq!(statuses(&seen), ["active", "hangup"]);
    assert_eq!(seen.replies, vec![(450, Ok(()))]);
    assert_eq!(seen.end, Some((5_000, OutboundEnd::Completed)));
    assert!(!seen.attributes.iter().any(|(_, k, _)| *k == ATTR_ANSWERED_BY), "nothing after the end");
}

#[test]
fn dtmf_on_answer_is_automation_then_active() {
    let cfg = OutboundConfig { dtmf: parse_dial_string("12w#").unwrap(), ..Default::default() };
    let seen = run(cfg, &[(1_000, Event::Status(S::InProgress)), (1_200, Event::StreamStart), (9_000, Event::StreamEnd)], 10_000);
    assert_eq!(statuses(&seen), ["automation", "active", "hangup"]);
    assert_eq!(seen.dtmf.len(), 1);
    // Three keys (170 ms each) and a 500 ms pause.
    assert_eq!(seen.statuses[1].0, 1_200 + 1_010);
}

#[test]
fn hanging_up_while_it_rings_cancels_at_twilio() {
    let seen = run(wait(Default::default()), &[(500, Event::Status(S::Ringing)), (2_000, Event::Hangup), (2_500, Event::Status(S::Canceled))], 5_000);
    assert_eq!(seen.rest_ends, vec![(2_000, false)]);
    assert_eq!(seen.replies, vec![(2_000, Err(DialFailure::Canceled))]);
    assert_eq!(statuses(&seen), ["ringing", "hangup"]);

    // Once it talks, hanging up ends an answered call.
    let seen = run(wait(Default::default()), &[(500, Event::Status(S::InProgress)), (600, Event::StreamStart), (2_000, Event::Hangup)], 5_000);
    assert_eq!(seen.rest_ends, vec![(2_000, true)]);
    assert_eq!(seen.end, Some((2_000, OutboundEnd::Completed)));
}

#[test]
fn a_refused_rest_request_ends_without_a_reply_of_its_own() {
    let t0 = Instant::now();
    let mut call = OutboundCall::new(wait(Default::default()));
    call.place_failed();
    let outs: Vec<_> = std::iter::from_fn(|| call.poll_output(t0)).collect();
    assert!(!outs.iter().any(|o| matches!(o, OutboundOutput::Reply(_))), "{outs:?}");
    assert!(outs.contains(&OutboundOutput::End(OutboundEnd::NotAnswered(DialFailure::Failed))));
    assert!(call.is_ended() && call.poll_timeout().is_none());
}
