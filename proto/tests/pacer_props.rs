//! Pacer properties (proptest): any mix of audio, utterance ends, time, mark echoes (some lost,
//! some bogus) and clears, against a model of Twilio's playback buffer. Every frame is one
//! utterance's audio, the caller's buffer never holds more than the lead (frames go out on the
//! 20 ms grid), no heard position is beyond what was sent, the marks awaiting an echo stay
//! within their cap, and `clear` leaves a clean pacer.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proto::g711::ULAW_SILENCE;
use proto::pacer::{Heard, Output, Pacer, PacerConfig, UtteranceId};

const MS: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
enum Op {
    /// Audio for the current utterance, or (`next`) for a new one behind it.
    Push { next: bool, bytes: usize },
    End,
    Wait(u32),
    Clear,
    /// The next mark Twilio would echo never comes back.
    LoseEcho,
    /// An echo of a name we never sent.
    BogusEcho(String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0usize..3000).prop_map(|(next, bytes)| Op::Push { next, bytes }),
        1 => Just(Op::End),
        4 => (1u32..300).prop_map(Op::Wait),
        1 => Just(Op::Clear),
        1 => Just(Op::LoseEcho),
        1 => "[a-z0-9.]{0,12}".prop_map(Op::BogusEcho),
    ]
}

fn config() -> impl Strategy<Value = PacerConfig> {
    (1u64..200, 1u32..6, 0u64..120, 1u64..4, prop_oneof![Just(500usize), 1usize..12]).prop_map(
        |(lead, mark_every, prebuffer, max_s, max_pending_marks)| PacerConfig {
            lead: MS * lead as u32,
            mark_every,
            prebuffer: MS * prebuffer as u32,
            max_queued: Duration::from_secs(max_s),
            max_pending_marks,
        },
    )
}

/// Audio byte of utterance `u` (never μ-law silence, so padding is told apart).
fn byte_of(u: u64) -> u8 {
    (u % 200) as u8
}

/// Twilio's side: plays in real time what it gets, echoes a mark when the audio before it has
/// played, and on `clear` empties its buffer and echoes every pending mark at once.
struct Playback {
    playing_until: Instant,
    marks: VecDeque<(Instant, String)>,
}

struct Check {
    lead: Duration,
    lead_frames: usize,
    /// ms of each utterance sent (by the frames' content).
    sent_ms: HashMap<u64, u32>,
    /// Last heard position reported per utterance.
    heard_ms: HashMap<u64, u32>,
}

impl Check {
    fn heard(&mut self, h: &Heard) {
        let u = h.utterance.0;
        let sent = self.sent_ms.get(&u).copied().unwrap_or(0);
        assert!(h.heard_ms <= sent, "utterance {u}: heard {} ms of {sent} ms sent", h.heard_ms);
        let before = self.heard_ms.insert(u, h.heard_ms).unwrap_or(0);
        assert!(h.heard_ms >= before, "utterance {u}: heard went back from {before} to {}", h.heard_ms);
        if h.complete && h.mark_rtt.is_some() {
            assert_eq!(h.heard_ms, sent, "utterance {u} complete before all of it played");
        }
    }
}

fn poll(p: &mut Pacer, tw: &mut Playback, check: &mut Check, now: Instant) {
    let mut burst = 0;
    while let Some(o) = p.poll_output(now) {
        match o {
            Output::Media(frame) => {
                // One utterance's bytes, then (only in its last frame) silence padding.
                let b = frame[0];
                assert_ne!(b, ULAW_SILENCE, "a frame with no audio");
                let audio = frame.iter().take_while(|x| **x == b).count();
                assert!(frame[audio..].iter().all(|x| *x == ULAW_SILENCE), "frame mixes audio: {frame:?}");
                let u = check.sent_ms.keys().copied().find(|u| byte_of(*u) == b).expect("audio of a known utterance");
                *check.sent_ms.get_mut(&u).unwrap() += 20;
                tw.playing_until = tw.playing_until.max(now) + Duration::from_millis(20);
                burst += 1;
                // The 20 ms grid: never more than the lead ahead of the caller.
                assert!(tw.playing_until - now <= check.lead, "{:?} buffered, lead {:?}", tw.playing_until - now, check.lead);
            }
            Output::Mark(id) => tw.marks.push_back((tw.playing_until, id.to_string())),
            Output::Heard(h) => check.heard(&h),
        }
        assert!(burst <= check.lead_frames, "{burst} frames at one instant, lead {} frames", check.lead_frames);
    }
}

fn run(cfg: PacerConfig, ops: Vec<Op>) {
    let lead_frames = (cfg.lead.as_millis() as u32).div_ceil(20).max(1);
    let max_pending = cfg.max_pending_marks.max(1);
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = Pacer::new(cfg);
    let mut tw = Playback { playing_until: t0, marks: VecDeque::new() };
    let mut check = Check { lead: Duration::from_millis(20) * lead_frames, lead_frames: lead_frames as usize, sent_ms: HashMap::new(), heard_ms: HashMap::new() };
    let mut current = 1u64;
    let mut ended = false;
    check.sent_ms.insert(current, 0);
    for op in ops {
        match op {
            Op::Push { next, bytes } => {
                // Ids are never reused after an utterance ends (CallSession draws new ones).
                if next || ended {
                    ended = false;
                    current += 1;
                    check.sent_ms.insert(current, 0);
                }
                p.push(UtteranceId(current), &vec![byte_of(current); bytes]);
            }
            Op::End => {
                p.end_utterance(UtteranceId(current));
                ended = true;
            }
            Op::Wait(ms) => {
                for _ in 0..ms {
                    now += MS;
                    while tw.marks.front().is_some_and(|(t, _)| *t <= now) {
                        let (_, name) = tw.marks.pop_front().unwrap();
                        p.handle_mark(&name, now);
                        poll(&mut p, &mut tw, &mut check, now);
                    }
                    poll(&mut p, &mut tw, &mut check, now);
                }
            }
            Op::LoseEcho => {
                tw.marks.pop_front();
            }
            Op::BogusEcho(name) => {
                let unknown = p.stats().marks_unknown;
                p.handle_mark(&name, now);
                if proto::pacer::MarkId::parse(&name).is_none() {
                    assert_eq!(p.stats().marks_unknown, unknown + 1);
                }
            }
            Op::Clear => {
                let cleared = p.clear(now);
                for h in &cleared.heard {
                    assert!(!h.complete);
                    check.heard(h);
                }
                // Twilio echoes every pending mark at once: all stale, none may report.
                let unknown = p.stats().marks_unknown;
                let stale: Vec<String> = tw.marks.drain(..).map(|(_, n)| n).collect();
                tw.playing_until = now;
                for name in &stale {
                    p.handle_mark(name, now);
                }
                assert_eq!(p.stats().marks_unknown, unknown + stale.len() as u64, "a stale echo was taken");
                assert!(!p.is_active() && p.current().is_none(), "clear left an utterance");
                assert_eq!(p.pending_marks(), 0, "clear left marks");
                assert_eq!(p.poll_output(now), None, "clear left output");
                assert_eq!(p.poll_timeout(), None, "clear left a deadline");
                // The next audio is a new utterance and plays from its start.
                ended = true;
            }
        }
        poll(&mut p, &mut tw, &mut check, now);
        // However many echoes are lost, the marks awaiting one stay within the cap.
        assert!(p.pending_marks() <= max_pending, "{} marks pending, cap {max_pending}", p.pending_marks());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pacer_properties(cfg in config(), ops in prop::collection::vec(op(), 1..60)) {
        run(cfg, ops);
    }
}

/// After a clear the pacer behaves as a new one: the next utterance starts a fresh burst of the
/// lead, with its own bytes.
#[test]
fn clear_then_new_utterance_plays_like_a_fresh_pacer() {
    let t0 = Instant::now();
    let mut fresh = Pacer::new(PacerConfig::default());
    let mut used = Pacer::new(PacerConfig::default());
    used.push(UtteranceId(1), &[7; 8000]);
    while used.poll_output(t0).is_some() {}
    let _ = used.clear(t0 + MS * 30);
    let t1 = t0 + MS * 30;
    fresh.push(UtteranceId(2), &[9; 8000]);
    used.push(UtteranceId(2), &[9; 8000]);
    let a: Vec<Output> = std::iter::from_fn(|| fresh.poll_output(t1)).collect();
    let b: Vec<Output> = std::iter::from_fn(|| used.poll_output(t1)).collect();
    let media = |v: &[Output]| v.iter().filter(|o| matches!(o, Output::Media(f) if f.iter().all(|x| *x == 9))).count();
    assert_eq!(media(&a), 4);
    assert_eq!(media(&b), media(&a));
    assert_eq!(fresh.poll_timeout(), used.poll_timeout());
}
