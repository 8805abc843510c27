//! The agent's voice, one 20 ms frame at a time, on an absolute 20 ms grid — sans-IO, time is an
//! argument. Both reply engines feed it: each *speech* (a reply, a scripted line, a Realtime item)
//! is queued in order; it plays when the one before it is over and `gap` of quiet has passed.
//!
//! * Inside a speech there is never a hole: when its audio is late, silence frames keep it going
//!   (counted as underruns), so the bridge hears one utterance.
//! * A speech keeps all of its audio until it is over, so a paused speech (a possible false
//!   interruption) can resume from what the caller heard.
//! * A speech can be *held*: queued but not started (a preemptive reply waiting for the
//!   transcript to be confirmed).
//! * At most `max_queued` of audio waits; more is refused and counted, never buffered.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::heard::Segment;

/// Our id of one stretch of agent speech.
pub type SpeechId = u64;

const FRAME: Duration = Duration::from_millis(20);
/// Further behind the grid than this, a new grid starts from now (no burst).
const MAX_LATE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct PlayoutConfig {
    /// Sample rate of the agent's track.
    pub rate: u32,
    /// Quiet between two speeches.
    pub gap: Duration,
    /// Most audio held (played-but-kept included).
    pub max_queued: Duration,
    /// A speech starts once this many frames of it are there (or all of it).
    pub prebuffer_frames: usize,
}

/// What the playout reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayEvent {
    /// The first frame of `speech` goes out now, `from_ms` into it (0, or where a resumed speech
    /// picks up): a new utterance for the bridge.
    Started { speech: SpeechId, from_ms: u32 },
    /// Every frame of `speech` was pushed; it is `total_ms` long.
    Finished { speech: SpeechId, total_ms: u32 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    pub frames: u64,
    /// Silence frames pushed inside a speech because its audio was late.
    pub underruns: u64,
    /// Samples refused because the queue was full or the speech was over.
    pub dropped_samples: u64,
}

#[derive(Debug)]
struct Entry {
    speech: SpeechId,
    pcm: Vec<i16>,
    /// Next sample to push.
    cursor: usize,
    ended: bool,
    /// Frames of it are going out (since its last start).
    playing: bool,
    held: bool,
    /// (segment index, first sample) of each sentence.
    segments: Vec<(usize, usize)>,
}

#[derive(Debug)]
pub struct Playout {
    cfg: PlayoutConfig,
    frame: usize,
    entries: VecDeque<Entry>,
    queued: usize,
    max_queued: usize,
    paused: bool,
    last_frame: Option<Instant>,
    next_at: Option<Instant>,
    events: VecDeque<PlayEvent>,
    stats: PlayoutStats,
}

impl Playout {
    pub fn new(cfg: PlayoutConfig) -> Playout {
        let frame = (cfg.rate / 50).max(1) as usize;
        let max_queued = (cfg.max_queued.as_millis() as usize).saturating_mul(cfg.rate as usize) / 1000;
        Playout {
            cfg,
            frame,
            entries: VecDeque::new(),
            queued: 0,
            max_queued,
            paused: false,
            last_frame: None,
            next_at: None,
            events: VecDeque::new(),
            stats: PlayoutStats::default(),
        }
    }

    pub fn rate(&self) -> u32 {
        self.cfg.rate
    }

    pub fn stats(&self) -> &PlayoutStats {
        &self.stats
    }

    fn ms(&self, samples: usize) -> u32 {
        (samples as u64 * 1000 / self.cfg.rate as u64) as u32
    }

    fn entry_mut(&mut self, speech: SpeechId) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.speech == speech)
    }

    fn entry(&self, speech: SpeechId) -> Option<&Entry> {
        self.entries.iter().find(|e| e.speech == speech)
    }

    /// Queues `speech` (before any audio), `held` until [`release`](Self::release) if asked.
    pub fn open(&mut self, speech: SpeechId, held: bool) {
        if self.entry(speech).is_none() {
            self.entries.push_back(Entry {
                speech,
                pcm: Vec::new(),
                cursor: 0,
                ended: false,
                playing: false,
                held,
                segments: Vec::new(),
            });
        }
    }

    /// Appends audio of sentence `seg` of `speech`. False when refused: the speech is not
    /// queued (over, or never opened), already ended, or the queue is full.
    pub fn push(&mut self, speech: SpeechId, seg: usize, pcm: &[i16]) -> bool {
        if pcm.is_empty() {
            return true;
        }
        let full = self.queued + pcm.len() > self.max_queued;
        let Some(e) = self.entries.iter_mut().find(|e| e.speech == speech) else {
            self.stats.dropped_samples += pcm.len() as u64;
            return false;
        };
        if e.ended || full {
            self.stats.dropped_samples += pcm.len() as u64;
            return false;
        }
        if e.segments.last().is_none_or(|&(s, _)| s != seg) {
            e.segments.push((seg, e.pcm.len()));
        }
        e.pcm.extend_from_slice(pcm);
        self.queued += pcm.len();
        true
    }

    /// No more audio for `speech`.
    pub fn end(&mut self, speech: SpeechId) {
        if let Some(e) = self.entry_mut(speech) {
            e.ended = true;
        }
    }

    pub fn release(&mut self, speech: SpeechId) {
        if let Some(e) = self.entry_mut(speech) {
            e.held = false;
        }
    }

    /// Drops `speech`. Returns how much of it was pushed (ms) if it had started.
    pub fn cancel(&mut self, speech: SpeechId, now: Instant) -> Option<u32> {
        let ix = self.entries.iter().position(|e| e.speech == speech)?;
        let e = self.entries.remove(ix)?;
        self.queued -= e.pcm.len();
        let pushed = (e.playing || e.cursor > 0).then(|| self.ms(e.cursor));
        if ix == 0 {
            self.next_at = None;
            self.paused = false;
            if e.playing {
                self.last_frame = Some(now);
            }
        }
        pushed
    }

    /// Stops pushing (the speech being played stays, for [`resume`](Self::resume) or
    /// [`cancel`](Self::cancel)). Returns it and how much of it was pushed, if one was playing.
    pub fn pause(&mut self, now: Instant) -> Option<(SpeechId, u32)> {
        let rate = self.cfg.rate as u64;
        let e = self.entries.front_mut().filter(|e| e.playing)?;
        e.playing = false;
        let r = (e.speech, (e.cursor as u64 * 1000 / rate) as u32);
        self.paused = true;
        self.next_at = None;
        self.last_frame = Some(now);
        Some(r)
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Plays the paused speech again from `from_ms` into it (never past what was pushed).
    pub fn resume(&mut self, from_ms: u32) {
        if !self.paused {
            return;
        }
        self.paused = false;
        let rate = self.cfg.rate as usize;
        if let Some(e) = self.entries.front_mut() {
            let from = (from_ms as usize * rate / 1000).min(e.cursor);
            // whole frames, so the resumed audio stays on the sample grid of the original
            e.cursor = from - from % self.frame;
        }
    }

    /// The speech whose frames are going out.
    pub fn playing(&self) -> Option<SpeechId> {
        self.entries.front().filter(|e| e.playing).map(|e| e.speech)
    }

    pub fn is_queued(&self, speech: SpeechId) -> bool {
        self.entry(speech).is_some()
    }

    /// How much of `speech` was pushed, ms.
    pub fn pushed_ms(&self, speech: SpeechId) -> Option<u32> {
        self.entry(speech).map(|e| self.ms(e.cursor))
    }

    /// Where each sentence of `speech` lies (ms), its audio so far counted.
    pub fn segments(&self, speech: SpeechId, texts: &[String]) -> Vec<Segment> {
        let Some(e) = self.entry(speech) else { return Vec::new() };
        e.segments
            .iter()
            .enumerate()
            .map(|(i, &(seg, start))| {
                let end = e.segments.get(i + 1).map_or(e.pcm.len(), |s| s.1);
                Segment {
                    text: texts.get(seg).cloned().unwrap_or_default(),
                    start_ms: self.ms(start),
                    end_ms: Some(self.ms(end)),
                }
            })
            .collect()
    }

    /// Total audio of `speech` so far, ms.
    pub fn length_ms(&self, speech: SpeechId) -> Option<u32> {
        self.entry(speech).map(|e| self.ms(e.pcm.len()))
    }

    pub fn poll_event(&mut self) -> Option<PlayEvent> {
        self.events.pop_front()
    }

    /// When [`poll_frame`](Self::poll_frame) next has something to do (None: not before more
    /// input), as of `now`.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if self.paused {
            return None;
        }
        let e = self.entries.front()?;
        if let Some(t) = self.next_at {
            return Some(t);
        }
        if e.held || (!e.ended && e.pcm.len() - e.cursor < self.cfg.prebuffer_frames * self.frame) {
            return None;
        }
        Some(self.last_frame.map_or(now, |l| (l + self.cfg.gap).max(now)))
    }

    /// The next frame, if one is due at `now`.
    pub fn poll_frame(&mut self, now: Instant) -> Option<Vec<i16>> {
        if self.paused {
            return None;
        }
        loop {
            let frame = self.frame;
            let e = self.entries.front_mut()?;
            if e.ended && e.cursor >= e.pcm.len() {
                let (speech, started, total) = (e.speech, e.playing, e.pcm.len());
                self.queued -= total;
                self.entries.pop_front();
                if started {
                    let total_ms = self.ms(total);
                    self.events.push_back(PlayEvent::Finished { speech, total_ms });
                }
                self.next_at = None;
                continue;
            }
            if !e.playing && (e.held || (!e.ended && e.pcm.len() - e.cursor < self.cfg.prebuffer_frames * frame)) {
                return None;
            }
            let due = match self.next_at {
                Some(t) => t,
                None => {
                    let t = if e.playing { now } else { self.last_frame.map_or(now, |l| (l + self.cfg.gap).max(now)) };
                    self.next_at = Some(t);
                    t
                }
            };
            if now < due {
                return None;
            }
            let mut out = Vec::with_capacity(frame);
            let start = e.cursor;
            let avail = e.pcm.len() - e.cursor;
            if avail >= frame || e.ended {
                let take = frame.min(avail);
                out.extend_from_slice(&e.pcm[e.cursor..e.cursor + take]);
                e.cursor += take;
            } else {
                self.stats.underruns += 1;
            }
            out.resize(frame, 0);
            if !e.playing {
                e.playing = true;
                let from_ms = (start as u64 * 1000 / self.cfg.rate as u64) as u32;
                self.events.push_back(PlayEvent::Started { speech: e.speech, from_ms });
            }
            self.stats.frames += 1;
            self.last_frame = Some(now);
            self.next_at = Some(if now > due + MAX_LATE { now + FRAME } else { due + FRAME });
            return Some(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> PlayoutConfig {
        PlayoutConfig { rate: 8000, gap: ms(300), max_queued: ms(60_000), prebuffer_frames: 3 }
    }

    /// Times (ms) of every frame pushed, polling every 5 ms up to `until_ms`.
    fn drain(p: &mut Playout, t0: Instant, from_ms: u64, until_ms: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut t = from_ms;
        while t <= until_ms {
            while p.poll_frame(t0 + ms(t)).is_some() {
                out.push(t);
            }
            t += 5;
        }
        out
    }

    #[test]
    fn speeches_play_on_a_20ms_grid_with_a_gap_between() {
        let t0 = Instant::now();
        let mut p = Playout::new(cfg());
        assert_eq!(p.poll_frame(t0), None);
        p.open(1, false);
        assert!(p.push(1, 0, &[100; 800])); // 100 ms
        p.end(1);
        p.open(2, false);
        assert!(p.push(2, 0, &[100; 480])); // 60 ms
        p.end(2);
        let times = drain(&mut p, t0, 0, 1000);
        assert_eq!(times, [0, 20, 40, 60, 80, 380, 400, 420]);
        let ev: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
        assert_eq!(
            ev,
            [
                PlayEvent::Started { speech: 1, from_ms: 0 },
                PlayEvent::Finished { speech: 1, total_ms: 100 },
                PlayEvent::Started { speech: 2, from_ms: 0 },
                PlayEvent::Finished { speech: 2, total_ms: 60 },
            ]
        );
    }

    #[test]
    fn late_audio_is_bridged_with_silence_and_cancel_reports_what_was_pushed() {
        let t0 = Instant::now();
        let mut p = Playout::new(cfg());
        p.open(1, false);
        p.push(1, 0, &[100; 320]); // less than the prebuffer: not started
        assert_eq!(p.poll_frame(t0), None);
        p.push(1, 0, &[100; 160]);
        assert!(p.poll_frame(t0).is_some());
        assert!(p.poll_frame(t0 + ms(20)).is_some());
        assert!(p.poll_frame(t0 + ms(40)).is_some());
        assert_eq!(p.poll_frame(t0 + ms(60)), Some(vec![0; 160]), "silence keeps the utterance going");
        assert_eq!(p.stats().underruns, 1);
        assert_eq!(p.playing(), Some(1));
        assert_eq!(p.cancel(1, t0 + ms(70)), Some(60));
        assert!(!p.push(1, 0, &[1; 160]), "leftovers of a cancelled speech are refused");
        p.open(2, false);
        p.push(2, 0, &[5; 800]);
        assert_eq!(p.next_deadline(t0 + ms(80)), Some(t0 + ms(370)), "the next one waits the gap after the cut");
    }

    #[test]
    fn a_paused_speech_resumes_from_the_heard_position() {
        let t0 = Instant::now();
        let mut p = Playout::new(PlayoutConfig { gap: ms(100), ..cfg() });
        p.open(1, false);
        let audio: Vec<i16> = (0..8000).map(|i| i as i16).collect(); // 1 s, samples count up
        p.push(1, 0, &audio);
        p.end(1);
        assert_eq!(drain(&mut p, t0, 0, 500).len(), 26);
        assert_eq!(p.pause(t0 + ms(505)), Some((1, 520)));
        assert!(drain(&mut p, t0, 510, 900).is_empty(), "nothing while paused");
        // The caller heard 430 ms: play on from there (frame-aligned: 420 ms).
        p.resume(430);
        let f = p.poll_frame(t0 + ms(905)).unwrap();
        assert_eq!(f[0], 3360, "first sample of the frame at 420 ms");
        assert_eq!(p.poll_event(), Some(PlayEvent::Started { speech: 1, from_ms: 0 }));
        assert_eq!(p.poll_event(), Some(PlayEvent::Started { speech: 1, from_ms: 420 }));
        let rest = drain(&mut p, t0, 925, 3000).len();
        assert_eq!(rest, 28, "580 ms left after the first resumed frame");
        assert_eq!(p.poll_event(), Some(PlayEvent::Finished { speech: 1, total_ms: 1000 }));
    }

    #[test]
    fn held_speech_waits_for_release_and_segments_map_sentences() {
        let t0 = Instant::now();
        let mut p = Playout::new(cfg());
        p.open(4, true);
        p.push(4, 0, &[1; 1600]);
        p.push(4, 1, &[1; 800]);
        p.end(4);
        assert_eq!(p.poll_frame(t0), None);
        assert_eq!(p.next_deadline(t0), None);
        p.release(4);
        assert!(p.poll_frame(t0).is_some());
        let segs = p.segments(4, &["One.".into(), "Two.".into()]);
        assert_eq!(segs.iter().map(|s| (s.start_ms, s.end_ms)).collect::<Vec<_>>(), [(0, Some(200)), (200, Some(300))]);
        assert_eq!(segs[1].text, "Two.");
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut p = Playout::new(PlayoutConfig { max_queued: ms(100), ..cfg() });
        p.open(1, false);
        assert!(p.push(1, 0, &[1; 800]));
        assert!(!p.push(1, 0, &[1; 160]));
        assert!(!p.push(9, 0, &[1; 10]), "never opened");
        assert_eq!(p.stats().dropped_samples, 170);
    }
}
