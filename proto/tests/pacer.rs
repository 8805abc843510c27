//! Pacer timing, driven on a simulated clock with a model of Twilio's playback buffer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proto::pacer::{Heard, Output, Pacer, PacerConfig, UtteranceId, FRAME_BYTES};

const MS: Duration = Duration::from_millis(1);

/// Twilio's side: plays what it receives in real time, echoes marks when the audio before
/// them has played, and on `clear` echoes every pending mark at once.
struct Twilio {
    playing_until: Instant,
    /// (time the mark's audio finishes, name)
    marks: VecDeque<(Instant, String)>,
    /// Send time of each frame received.
    frames: Vec<(Instant, [u8; FRAME_BYTES])>,
    /// Buffer ran dry while audio was expected (measured by the test, not the pacer).
    max_buffered: Duration,
}

impl Twilio {
    fn new(t0: Instant) -> Twilio {
        Twilio { playing_until: t0, marks: VecDeque::new(), frames: vec![], max_buffered: Duration::ZERO }
    }
    fn receive(&mut self, now: Instant, out: Output) {
        match out {
            Output::Media(f) => {
                self.playing_until = self.playing_until.max(now) + Duration::from_millis(20);
                self.max_buffered = self.max_buffered.max(self.playing_until - now);
                self.frames.push((now, f));
            }
            Output::Mark(id) => self.marks.push_back((self.playing_until, id.to_string())),
            Output::Heard(_) => unreachable!("filtered by the driver"),
        }
    }
    fn due_echoes(&mut self, now: Instant) -> Vec<String> {
        let mut v = vec![];
        while self.marks.front().is_some_and(|(t, _)| *t <= now) {
            v.push(self.marks.pop_front().unwrap().1);
        }
        v
    }
    fn clear(&mut self, now: Instant) -> Vec<String> {
        self.playing_until = now;
        self.marks.drain(..).map(|(_, n)| n).collect()
    }
}

/// Runs the pacer against Twilio for `ms` milliseconds of simulated time, 1 ms steps.
/// `feed(t_ms, pacer)` is called every step to push audio.
fn run(
    pacer: &mut Pacer,
    tw: &mut Twilio,
    t0: Instant,
    from_ms: u64,
    to_ms: u64,
    mut feed: impl FnMut(u64, &mut Pacer),
) -> Vec<(u64, Heard)> {
    let mut heard = vec![];
    for t in from_ms..to_ms {
        let now = t0 + MS * t as u32;
        feed(t, pacer);
        for name in tw.due_echoes(now) {
            pacer.handle_mark(&name, now);
        }
        while let Some(o) = pacer.poll_output(now) {
            match o {
                Output::Heard(h) => heard.push((t, h)),
                o => tw.receive(now, o),
            }
        }
        if let Some(next) = pacer.poll_timeout() {
            assert!(next >= now - MS * 20, "deadline far in the past");
        }
    }
    heard
}

#[test]
fn burst_of_lead_then_one_frame_per_20ms() {
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::default());
    let mut tw = Twilio::new(t0);
    p.push(UtteranceId(1), &vec![0x11; 8 * 1000]); // 1 s of audio, all at once
    run(&mut p, &mut tw, t0, 0, 400, |_, _| {});
    // 80 ms lead: 4 frames at t=0, then one each 20 ms.
    let at_zero = tw.frames.iter().filter(|(t, _)| *t == t0).count();
    assert_eq!(at_zero, 4);
    for w in tw.frames[4..].windows(2) {
        assert_eq!(w[1].0 - w[0].0, Duration::from_millis(20));
    }
    // 400 ms of time: 4 + 400/20 = 24 frames (the 24th is due at exactly 400 ms, not yet).
    assert_eq!(tw.frames.len(), 23);
    assert!(tw.max_buffered <= Duration::from_millis(80), "{:?}", tw.max_buffered);
    assert!(tw.frames.iter().all(|(_, f)| f.iter().all(|b| *b == 0x11)));
}

#[test]
fn without_prebuffer_source_jitter_starves_the_caller() {
    // The same awkward real-time source as below: with no prebuffer the caller's buffer runs dry
    // whenever a 37-byte piece arrives a few ms after the previous frame finished playing.
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig { prebuffer: Duration::ZERO, ..Default::default() });
    let mut tw = Twilio::new(t0);
    let mut pushed = 0usize;
    run(&mut p, &mut tw, t0, 0, 1000, |t, p| {
        while (pushed as u64) < t * 8 + 37 {
            p.push(UtteranceId(7), &[0; 37]);
            pushed += 37;
        }
    });
    assert!(p.stats().underruns > 0);
}

#[test]
fn odd_chunks_in_real_time_give_steady_frames_and_no_underrun() {
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::default());
    let mut tw = Twilio::new(t0);
    let mut pushed = 0usize;
    let mut next_byte = 0u8;
    // 37 bytes every ~4.6 ms is 8 bytes/ms: real time, arriving in awkward pieces.
    let heard = run(&mut p, &mut tw, t0, 0, 2000, |t, p| {
        while (pushed as u64) < t * 8 + 37 && t < 1500 {
            let chunk: Vec<u8> = (0..37).map(|_| { next_byte = next_byte.wrapping_add(1); next_byte }).collect();
            p.push(UtteranceId(7), &chunk);
            pushed += 37;
        }
        if t == 1500 {
            p.end_utterance(UtteranceId(7));
        }
    });
    assert_eq!(p.stats().underruns, 0);
    // Every byte pushed came out, in order, padded with silence to a whole frame.
    let sent: Vec<u8> = tw.frames.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    assert_eq!(sent.len(), pushed.div_ceil(FRAME_BYTES) * FRAME_BYTES);
    let mut expect = 0u8;
    for b in &sent[..pushed] {
        expect = expect.wrapping_add(1);
        assert_eq!(*b, expect);
    }
    assert!(sent[pushed..].iter().all(|b| *b == 0xFF));
    assert!(tw.max_buffered <= Duration::from_millis(80));
    // A mark per frame, all echoed; the last Heard is complete and covers the whole utterance.
    assert_eq!(p.stats().marks_sent, tw.frames.len() as u64);
    assert_eq!(p.stats().marks_echoed, p.stats().marks_sent);
    let (_, last) = heard.last().unwrap();
    assert!(last.complete);
    assert_eq!(last.heard_ms as usize, tw.frames.len() * 20);
    assert!(!p.is_active());
}

#[test]
fn heard_position_follows_playback() {
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig { mark_every: 5, ..Default::default() });
    let mut tw = Twilio::new(t0);
    p.push(UtteranceId(3), &vec![0x22; 8 * 1000]);
    p.end_utterance(UtteranceId(3));
    let heard = run(&mut p, &mut tw, t0, 0, 1200, |_, _| {});
    // One mark per 5 frames (100 ms): heard reports 100, 200, ... 1000, echoed when played.
    let positions: Vec<(u64, u32)> = heard.iter().map(|(t, h)| (*t, h.heard_ms)).collect();
    let expect: Vec<(u64, u32)> = (1..=10).map(|i| (i * 100, i as u32 * 100)).collect();
    assert_eq!(positions, expect);
    assert!(heard.iter().take(9).all(|(_, h)| !h.complete));
    assert!(heard[9].1.complete);
}

#[test]
fn clear_returns_heard_position_and_ignores_stale_echoes() {
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::default());
    let mut tw = Twilio::new(t0);
    p.push(UtteranceId(1), &vec![0x33; 8 * 2000]);
    run(&mut p, &mut tw, t0, 0, 500, |_, _| {});
    let now = t0 + MS * 500;
    let frames_before = tw.frames.len();
    let cleared = p.clear(now);
    // 500 ms played; the pacer had sent 80 ms more that the caller never heard.
    assert_eq!(cleared.heard, vec![Heard { utterance: UtteranceId(1), heard_ms: 500, complete: false, mark_rtt: None }]);
    assert_eq!(cleared.unplayed_ms, 2000 - 500);
    // Twilio echoes the pending marks at once; they must not move anything.
    for name in tw.clear(now) {
        p.handle_mark(&name, now);
    }
    assert!(p.poll_output(now).is_none());
    assert!(!p.is_active());
    let heard = run(&mut p, &mut tw, t0, 501, 700, |_, _| {});
    assert!(heard.is_empty());
    assert_eq!(tw.frames.len(), frames_before, "nothing sent after clear");
    // A new utterance starts at once, with the full lead.
    p.push(UtteranceId(2), &vec![0x44; 800]);
    let mut n = 0;
    while let Some(o) = p.poll_output(t0 + MS * 700) {
        n += matches!(o, Output::Media(_)) as usize;
    }
    assert_eq!(n, 4);
}

#[test]
fn clear_across_two_utterances_splits_buffered_audio() {
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig { lead: Duration::from_millis(200), ..Default::default() });
    let mut tw = Twilio::new(t0);
    p.push(UtteranceId(1), &vec![1; 8 * 100]); // 100 ms
    p.push(UtteranceId(2), &vec![2; 8 * 300]); // starts behind it
    run(&mut p, &mut tw, t0, 0, 60, |_, _| {});
    // At 60 ms: utterance 1 heard 60 ms; utterance 2's first 20 ms... not yet played.
    let c = p.clear(t0 + MS * 60);
    assert_eq!(c.heard[0], Heard { utterance: UtteranceId(1), heard_ms: 60, complete: false, mark_rtt: None });
    assert_eq!(c.heard[1], Heard { utterance: UtteranceId(2), heard_ms: 0, complete: false, mark_rtt: None });
    assert_eq!(c.unplayed_ms, 40 + 300);
}

#[test]
fn underrun_counted_once_per_dry_spell_and_none_between_utterances() {
    // An utterance that runs dry and then simply ends is not an underrun.
    {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        let mut tw = Twilio::new(t0);
        p.push(UtteranceId(1), &vec![5; 8 * 200]);
        run(&mut p, &mut tw, t0, 0, 500, |_, _| {});
        p.end_utterance(UtteranceId(1));
        let heard = run(&mut p, &mut tw, t0, 500, 900, |_, _| {});
        assert_eq!(p.stats().underruns, 0);
        // Ending after everything played still reports it complete, and frees it.
        assert_eq!(heard, vec![(500, Heard { utterance: UtteranceId(1), heard_ms: 200, complete: true, mark_rtt: None })]);
        assert!(!p.is_active());
    }
    // Ending while the last marks are still out makes the newest one final.
    {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        let mut tw = Twilio::new(t0);
        p.push(UtteranceId(1), &vec![5; 8 * 200]);
        run(&mut p, &mut tw, t0, 0, 150, |_, _| {});
        p.end_utterance(UtteranceId(1));
        let heard = run(&mut p, &mut tw, t0, 150, 400, |_, _| {});
        let (t, last) = heard.last().unwrap();
        assert_eq!((*t, last.utterance, last.heard_ms, last.complete), (200, UtteranceId(1), 200, true));
        // The last frame went out at 120 ms and played until 200 ms.
        assert_eq!(last.mark_rtt, Some(Duration::from_millis(80)));
        assert!(!p.is_active());
    }
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::default());
    let mut tw = Twilio::new(t0);
    // 200 ms of audio, then the source stalls for 300 ms mid-utterance, then 200 ms more.
    p.push(UtteranceId(1), &vec![5; 8 * 200]);
    run(&mut p, &mut tw, t0, 0, 500, |_, _| {});
    assert_eq!(p.stats().underruns, 0, "not an underrun until audio for the utterance resumes");
    p.push(UtteranceId(1), &vec![5; 8 * 200]);
    p.end_utterance(UtteranceId(1));
    run(&mut p, &mut tw, t0, 500, 1500, |_, _| {});
    assert_eq!(p.stats().underruns, 1);
    // A finished utterance followed by silence is not an underrun, and sends nothing.
    let frames = tw.frames.len();
    run(&mut p, &mut tw, t0, 1500, 3000, |_, _| {});
    assert_eq!(tw.frames.len(), frames);
    p.push(UtteranceId(2), &vec![6; 8 * 100]);
    p.end_utterance(UtteranceId(2));
    run(&mut p, &mut tw, t0, 3000, 3500, |_, _| {});
    assert_eq!(p.stats().underruns, 1);
    assert_eq!(tw.frames.len(), frames + 5);
}

#[test]
fn timeout_says_when_next_frame_is_due() {
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::default());
    assert_eq!(p.poll_timeout(), None);
    p.push(UtteranceId(1), &vec![0; 8 * 500]);
    while p.poll_output(t0).is_some() {}
    // Sent 80 ms at t0: the next frame is due when only 60 ms would remain, i.e. at t0+20ms.
    assert_eq!(p.poll_timeout(), Some(t0 + MS * 20));
    assert!(p.poll_output(t0 + MS * 19).is_none());
    assert!(matches!(p.poll_output(t0 + MS * 20), Some(Output::Media(_))));
}

#[test]
fn late_mark_echo_slows_the_pacer() {
    // If Twilio plays later than the model (e.g. its buffer started late), the echo says so and
    // the pacer keeps the lead relative to real playback.
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::default());
    p.push(UtteranceId(1), &vec![0; 8 * 1000]);
    let mut marks = vec![];
    while let Some(o) = p.poll_output(t0) {
        if let Output::Mark(n) = o {
            marks.push(n.to_string());
        }
    }
    assert_eq!(marks.len(), 4);
    // First frame's echo arrives 100 ms late (at 120 ms instead of 20 ms): 3 frames still queued.
    let now = t0 + MS * 120;
    p.handle_mark(&marks[0], now);
    // The model now knows 60 ms are still buffered, so one frame tops the lead up to 80 ms;
    // without the echo it would think the buffer empty and burst 4 frames.
    let mut media = 0;
    while let Some(o) = p.poll_output(now) {
        media += matches!(o, Output::Media(_)) as usize;
    }
    assert_eq!(media, 1);
    assert_eq!(p.poll_timeout(), Some(now + MS * 20));
}

#[test]
fn queue_is_bounded_and_late_audio_is_refused() {
    let mut p = Pacer::new(PacerConfig { max_queued: Duration::from_millis(100), ..Default::default() });
    assert_eq!(p.push(UtteranceId(1), &vec![0; 8 * 150]), 800);
    assert_eq!(p.stats().overflow_bytes, 400);
    p.end_utterance(UtteranceId(1));
    assert_eq!(p.push(UtteranceId(1), &[0; 10]), 0);
    assert_eq!(p.stats().overflow_bytes, 410);
}

#[test]
fn unknown_mark_is_counted_not_fatal() {
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::default());
    p.handle_mark("nonsense", t0);
    assert_eq!(p.stats().marks_unknown, 1);
    assert!(p.poll_output(t0).is_none());
}

#[test]
fn mark_names_round_trip() {
    use proto::pacer::MarkId;
    let id = MarkId { utterance: UtteranceId(12), seq: 345 };
    assert_eq!(id.to_string(), "u12.345");
    assert_eq!(MarkId::parse("u12.345"), Some(id));
    for bad in ["", "u", "u1", "x1.2", "u1.", "u.2", "u-1.2", "u1.2.3"] {
        assert_eq!(MarkId::parse(bad), None, "{bad}");
    }
}

#[test]
fn marks_that_never_come_back_are_bounded_and_utterances_still_complete() {
    let t0 = Instant::now();
    let mut tw = Twilio::new(t0);
    let mut pacer = Pacer::new(PacerConfig { max_pending_marks: 50, ..Default::default() });
    // 30 s of speech in three utterances; this Twilio plays the audio but never echoes a mark.
    let mut heard = vec![];
    for t in 0..30_000u64 {
        let now = t0 + MS * t as u32;
        let (n, from) = (t / 10_000 + 1, t / 10_000 * 10_000);
        if t < from + 9_000 && (t - from) % 20 == 0 {
            pacer.push(UtteranceId(n), &[0x55; FRAME_BYTES]);
        }
        if t == from + 9_000 {
            pacer.end_utterance(UtteranceId(n));
        }
        while let Some(o) = pacer.poll_output(now) {
            match o {
                Output::Heard(h) => heard.push(h),
                o => tw.receive(now, o),
            }
        }
        assert!(pacer.pending_marks() <= 50, "{} pending at {t} ms", pacer.pending_marks());
    }
    assert_eq!(tw.frames.len(), 1350, "the audio itself still plays");
    assert_eq!(pacer.stats().marks_expired, 1300, "{:?}", pacer.stats());
    // Each utterance is reported complete once its last mark is given up on, and leaves the pacer.
    let complete: Vec<_> = heard.iter().filter(|h| h.complete).map(|h| (h.utterance.0, h.heard_ms)).collect();
    assert_eq!(complete, vec![(1, 9_000), (2, 9_000)]);
    // The third's last mark is among the newest 50, still pending.
    assert_eq!(pacer.pending_marks(), 50);
    assert!(pacer.is_active());
}
