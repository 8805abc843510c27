//! Twilio's outbound playback buffer, as a sans-IO state machine: time is an argument.
//!
//! What the model does (protocols.md §1, "Server → Twilio"):
//! - outbound `media` payloads are appended to a queue that plays at 8 bytes (μ-law samples) per
//!   millisecond of the simulator's clock; audio that arrives while nothing is playing starts at
//!   once;
//! - a `mark` is queued behind the audio sent before it and is echoed when that audio has finished
//!   playing (at once when nothing is queued);
//! - `clear` drops all queued audio and echoes every pending mark immediately.
//!
//! It also keeps what the caller actually heard: a μ-law timeline from the stream's start with
//! silence (0xFF) wherever the buffer was dry, and the dry periods ("gaps") between two pieces
//! of audio. A gap is *within an utterance* when it is shorter than
//! [`PlaybackConfig::utterance_gap`] and no `clear` started it; otherwise it is *between
//! utterances*. The silence before the first audio and after the last is not a gap.
//!
//! The queue is bounded ([`PlaybackConfig::max_queued`]); audio past the bound is dropped and
//! counted, so a server that sends far faster than real time cannot grow memory without limit.

use std::collections::VecDeque;
use std::time::Duration;

/// μ-law samples (bytes) per millisecond at 8 kHz.
pub const BYTES_PER_MS: u64 = 8;
/// μ-law silence.
pub const SILENCE: u8 = 0xFF;
const NANOS_PER_SAMPLE: u64 = 125_000;

/// Whole 8 kHz samples elapsed at `t` (floor).
pub fn to_samples(t: Duration) -> u64 {
    u64::try_from(t.as_nanos() / u128::from(NANOS_PER_SAMPLE)).unwrap_or(u64::MAX)
}

/// The instant at which sample `s` begins.
pub fn from_samples(s: u64) -> Duration {
    Duration::from_nanos(s.saturating_mul(NANOS_PER_SAMPLE))
}

#[derive(Debug, Clone)]
pub struct PlaybackConfig {
    /// Keep the heard timeline (8 KB per second of call).
    pub record: bool,
    /// Most audio the buffer holds; more is dropped and counted in `overflow_bytes`.
    pub max_queued: Duration,
    /// Dry periods at least this long count as between utterances.
    pub utterance_gap: Duration,
}

impl Default for PlaybackConfig {
    fn default() -> Self {
        PlaybackConfig { record: false, max_queued: Duration::from_secs(120), utterance_gap: Duration::from_millis(300) }
    }
}

/// A mark to send back to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkEcho {
    pub name: String,
    /// When the mark arrived.
    pub received: Duration,
    /// When it fell due: the audio before it finished, or the `clear` that flushed it.
    pub due: Duration,
    /// Echoed because of a `clear`, not because its audio played.
    pub cleared: bool,
}

impl MarkEcho {
    /// Mark round trip as the model sees it: arrival to echo.
    pub fn round_trip(&self) -> Duration {
        self.due.saturating_sub(self.received)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    WithinUtterance,
    BetweenUtterances,
}

/// The buffer ran dry from `start` for `len`, then audio resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub start: Duration,
    pub len: Duration,
    pub kind: GapKind,
}

/// Running totals, in 8 kHz samples where it says so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaybackStats {
    pub played_samples: u64,
    /// Dry samples after the first audio (including a trailing dry period).
    pub silence_samples: u64,
    pub within_count: u64,
    pub within_samples: u64,
    pub between_count: u64,
    pub between_samples: u64,
    pub overflow_bytes: u64,
    pub marks_played: u64,
    pub marks_cleared: u64,
    pub clears: u64,
    /// When the first audio started playing.
    pub first_audio_at: Option<Duration>,
}

#[derive(Debug)]
struct PendingMark {
    name: String,
    /// Due when `played` reaches this byte count.
    at: u64,
    received: Duration,
}

/// Most gaps kept as a list; the counts in [`PlaybackStats`] go on past it.
const MAX_GAPS_KEPT: usize = 10_000;

#[derive(Debug)]
pub struct Playback {
    cfg: PlaybackConfig,
    queue: VecDeque<u8>,
    marks: VecDeque<PendingMark>,
    /// Bytes ever accepted into the queue (reset to `played` by `clear`).
    enqueued: u64,
    /// Bytes ever played.
    played: u64,
    /// Play head, in samples since the stream started.
    pos: u64,
    /// The buffer has been dry since this sample (only once some audio has played).
    dry_since: Option<u64>,
    dry_after_clear: bool,
    timeline: Vec<u8>,
    gaps: Vec<Gap>,
    stats: PlaybackStats,
    echoes: VecDeque<MarkEcho>,
    /// DTMF keys in what was played (`press_keys`, an outbound call's `dtmf`).
    dtmf: proto::dtmf::DtmfDetector,
    keys: VecDeque<HeardKey>,
}

/// A DTMF key the caller heard, and when (recognised ~50 ms into its tone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeardKey {
    pub key: char,
    pub at: Duration,
}

/// Keys kept until read; more are dropped (a stream of keys this long is not a keypad).
const MAX_KEYS_KEPT: usize = 1024;

impl Playback {
    pub fn new(cfg: PlaybackConfig) -> Self {
        Playback {
            cfg,
            queue: VecDeque::new(),
            marks: VecDeque::new(),
            enqueued: 0,
            played: 0,
            pos: 0,
            dry_since: None,
            dry_after_clear: false,
            timeline: Vec::new(),
            gaps: Vec::new(),
            stats: PlaybackStats::default(),
            echoes: VecDeque::new(),
            dtmf: proto::dtmf::DtmfDetector::new(),
            keys: VecDeque::new(),
        }
    }

    /// Listens for keys in `mulaw` (played) or `n` samples of silence.
    fn listen(&mut self, mulaw: Option<&[u8]>, n: u64) {
        let found = match mulaw {
            Some(b) => {
                let pcm: Vec<i16> = b.iter().map(|x| proto::g711::ulaw_decode(*x)).collect();
                self.dtmf.push(&pcm)
            }
            // One block of silence releases a held key; longer silence cannot hold one.
            None => self.dtmf.push_silence(n),
        };
        for k in found {
            if self.keys.len() < MAX_KEYS_KEPT {
                self.keys.push_back(HeardKey { key: k.key, at: from_samples(k.at_sample) });
            }
        }
    }

    /// The next DTMF key heard, if any.
    pub fn poll_key(&mut self) -> Option<HeardKey> {
        self.keys.pop_front()
    }

    /// Plays the buffer up to `now`. Marks whose audio finished are ready in [`poll_echo`](Self::poll_echo).
    /// A `now` earlier than a previous one is treated as that one (time never runs back).
    pub fn advance(&mut self, now: Duration) {
        let now = to_samples(now);
        if now <= self.pos {
            return;
        }
        let n = (self.queue.len() as u64).min(now - self.pos);
        if n > 0 {
            self.resume();
            let played_before = self.played;
            let pos_before = self.pos;
            let played: Vec<u8> = self.queue.drain(..n as usize).collect();
            self.listen(Some(&played), n);
            if self.cfg.record {
                self.timeline.extend(played);
            }
            self.played += n;
            self.pos += n;
            self.stats.played_samples += n;
            while self.marks.front().is_some_and(|m| m.at <= self.played) {
                let m = self.marks.pop_front().expect("checked");
                let due = from_samples(pos_before + m.at.saturating_sub(played_before));
                self.stats.marks_played += 1;
                self.echoes.push_back(MarkEcho { name: m.name, received: m.received, due, cleared: false });
            }
            if self.queue.is_empty() {
                self.dry_since = Some(self.pos);
            }
        }
        let rest = now - self.pos;
        if rest > 0 {
            self.listen(None, rest);
            if self.cfg.record {
                self.timeline.resize(self.timeline.len() + rest as usize, SILENCE);
            }
            if self.stats.first_audio_at.is_some() {
                self.stats.silence_samples += rest;
            }
            self.pos = now;
        }
    }

    /// Audio starts playing at `self.pos`: close the dry period, if any.
    fn resume(&mut self) {
        if self.stats.first_audio_at.is_none() {
            self.stats.first_audio_at = Some(from_samples(self.pos));
        }
        if let Some(start) = self.dry_since.take() {
            let len = self.pos.saturating_sub(start);
            if len > 0 {
                let kind = if self.dry_after_clear || from_samples(len) >= self.cfg.utterance_gap {
                    self.stats.between_count += 1;
                    self.stats.between_samples += len;
                    GapKind::BetweenUtterances
                } else {
                    self.stats.within_count += 1;
                    self.stats.within_samples += len;
                    GapKind::WithinUtterance
                };
                if self.gaps.len() < MAX_GAPS_KEPT {
                    self.gaps.push(Gap { start: from_samples(start), len: from_samples(len), kind });
                }
            }
        }
        self.dry_after_clear = false;
    }

    /// An outbound `media` payload arrived at `now`.
    pub fn push_media(&mut self, now: Duration, payload: &[u8]) {
        self.advance(now);
        let room = (to_samples(self.cfg.max_queued) as usize).saturating_sub(self.queue.len());
        let take = payload.len().min(room);
        self.queue.extend(&payload[..take]);
        self.enqueued += take as u64;
        self.stats.overflow_bytes += (payload.len() - take) as u64;
    }

    /// An outbound `mark` arrived at `now`.
    pub fn push_mark(&mut self, now: Duration, name: String) {
        self.advance(now);
        if self.enqueued <= self.played {
            // Nothing queued before it: it has "played" already.
            self.stats.marks_played += 1;
            self.echoes.push_back(MarkEcho { name, received: now, due: now.max(from_samples(self.pos)), cleared: false });
        } else {
            self.marks.push_back(PendingMark { name, at: self.enqueued, received: now });
        }
    }

    /// An outbound `clear` arrived at `now`: drop the queue, echo every pending mark now.
    pub fn clear(&mut self, now: Duration) {
        self.advance(now);
        self.stats.clears += 1;
        let had_audio = !self.queue.is_empty();
        self.queue.clear();
        self.enqueued = self.played;
        let due = now.max(from_samples(self.pos));
        for m in self.marks.drain(..) {
            self.stats.marks_cleared += 1;
            self.echoes.push_back(MarkEcho { name: m.name, received: m.received, due, cleared: true });
        }
        if had_audio {
            self.dry_since = Some(self.pos);
        }
        if self.dry_since.is_some() {
            self.dry_after_clear = true;
        }
    }

    /// Ends the call at `now` (plays up to it; the trailing dry period is not a gap).
    pub fn finish(&mut self, now: Duration) {
        self.advance(now);
    }

    /// The next mark echo to send, if any fell due.
    pub fn poll_echo(&mut self) -> Option<MarkEcho> {
        self.echoes.pop_front()
    }

    /// When the next pending mark falls due (if no `clear` comes first).
    pub fn next_deadline(&self) -> Option<Duration> {
        if let Some(e) = self.echoes.front() {
            return Some(e.due);
        }
        // Queued audio plays without a break from `pos`, so the byte count is the time.
        self.marks.front().map(|m| from_samples(self.pos + m.at.saturating_sub(self.played)))
    }

    /// Audio waiting to play.
    pub fn queued(&self) -> Duration {
        from_samples(self.queue.len() as u64)
    }

    pub fn pending_marks(&self) -> usize {
        self.marks.len()
    }

    /// What the caller heard from the stream's start up to the play head (μ-law, 8 kHz);
    /// empty unless `record` was set.
    pub fn timeline(&self) -> &[u8] {
        &self.timeline
    }

    pub fn take_timeline(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.timeline)
    }

    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }

    pub fn stats(&self) -> &PlaybackStats {
        &self.stats
    }

    /// The play head.
    pub fn position(&self) -> Duration {
        from_samples(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn recording() -> Playback {
        Playback::new(PlaybackConfig { record: true, ..Default::default() })
    }

    fn echoes(p: &mut Playback) -> Vec<MarkEcho> {
        std::iter::from_fn(|| p.poll_echo()).collect()
    }

    #[test]
    fn mark_echoes_exactly_when_its_audio_has_played() {
        let mut p = recording();
        p.push_media(ms(100), &[0x11; 8000]); // 1 s
        p.push_mark(ms(100), "m1".into());
        p.push_media(ms(100), &[0x22; 160]); // 20 ms after the mark
        p.push_mark(ms(100), "m2".into());
        assert_eq!(p.next_deadline(), Some(ms(1100)));
        p.advance(ms(1099));
        assert!(echoes(&mut p).is_empty());
        assert_eq!(p.queued(), ms(21));
        p.advance(ms(1100));
        let e = echoes(&mut p);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].name.as_str(), e[0].due, e[0].cleared), ("m1", ms(1100), false));
        assert_eq!(e[0].round_trip(), ms(1000));
        assert_eq!(p.next_deadline(), Some(ms(1120)));
        // A late advance still reports the exact due time.
        p.advance(ms(5000));
        let e = echoes(&mut p);
        assert_eq!((e[0].name.as_str(), e[0].due), ("m2", ms(1120)));
        assert_eq!(p.next_deadline(), None);
        // Timeline: 100 ms silence, 1 s of 0x11, 20 ms of 0x22, then silence.
        let t = p.timeline();
        assert_eq!(t.len(), 5000 * 8);
        assert!(t[..800].iter().all(|&b| b == SILENCE));
        assert!(t[800..8800].iter().all(|&b| b == 0x11));
        assert!(t[8800..8960].iter().all(|&b| b == 0x22));
        assert!(t[8960..].iter().all(|&b| b == SILENCE));
        assert_eq!(p.stats().first_audio_at, Some(ms(100)));
    }

    #[test]
    fn mark_with_nothing_queued_echoes_at_once() {
        let mut p = recording();
        p.push_mark(ms(40), "first".into());
        let e = echoes(&mut p);
        assert_eq!((e[0].name.as_str(), e[0].due, e[0].received), ("first", ms(40), ms(40)));
        p.push_media(ms(50), &[1; 80]); // 10 ms
        p.advance(ms(70));
        p.push_mark(ms(70), "after".into());
        assert_eq!(echoes(&mut p)[0].due, ms(70));
    }

    #[test]
    fn audio_arriving_while_playing_is_appended() {
        let mut p = recording();
        p.push_media(ms(0), &[1; 160]);
        p.push_media(ms(10), &[2; 160]); // arrives half way through the first frame
        p.push_mark(ms(10), "end".into());
        assert_eq!(p.next_deadline(), Some(ms(40)));
        p.advance(ms(40));
        assert_eq!(echoes(&mut p)[0].due, ms(40));
        assert!(p.gaps().is_empty());
    }

    #[test]
    fn clear_drops_audio_and_echoes_pending_marks_now() {
        let mut p = recording();
        p.push_media(ms(0), &[5; 800]); // 100 ms
        p.push_mark(ms(0), "a".into());
        p.push_media(ms(0), &[6; 800]);
        p.push_mark(ms(0), "b".into());
        p.advance(ms(30));
        p.clear(ms(30));
        let e = echoes(&mut p);
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.cleared && e.due == ms(30)));
        assert_eq!((e[0].name.as_str(), e[1].name.as_str()), ("a", "b"));
        assert_eq!(p.queued(), Duration::ZERO);
        assert_eq!(p.next_deadline(), None);
        p.advance(ms(100));
        // 30 ms were heard, the rest is silence.
        let t = p.timeline();
        assert!(t[..240].iter().all(|&b| b == 5));
        assert!(t[240..800].iter().all(|&b| b == SILENCE));
        // A mark after the clear with nothing queued comes straight back, not cleared.
        p.push_mark(ms(100), "c".into());
        let e = echoes(&mut p);
        assert!(!e[0].cleared);
        assert_eq!(p.stats().marks_cleared, 2);
        assert_eq!(p.stats().clears, 1);
    }

    #[test]
    fn audio_after_clear_plays_from_the_clear() {
        let mut p = recording();
        p.push_media(ms(0), &[5; 800]);
        p.clear(ms(20));
        p.push_media(ms(20), &[7; 160]);
        p.push_mark(ms(20), "x".into());
        assert_eq!(p.next_deadline(), Some(ms(40)));
        p.advance(ms(40));
        assert_eq!(echoes(&mut p)[0].due, ms(40));
        // Back-to-back: no gap recorded.
        assert!(p.gaps().is_empty());
    }

    #[test]
    fn underruns_are_gaps_classified_by_length_and_clear() {
        let mut p = Playback::new(PlaybackConfig { utterance_gap: ms(300), ..Default::default() });
        // Silence before the first audio is not a gap.
        p.push_media(ms(500), &[1; 160]); // plays 500..520
        // 40 ms underrun, then audio: within an utterance.
        p.push_media(ms(560), &[1; 160]); // 560..580
        // 1 s pause: between utterances.
        p.push_media(ms(1580), &[1; 160]); // 1580..1600
        // Clear mid-audio, then a short pause: still between (a barge-in ended the utterance).
        p.push_media(ms(1600), &[1; 800]); // 1600..1700
        p.clear(ms(1650));
        p.push_media(ms(1700), &[1; 160]); // 1700..1720
        // Exactly back to back: no gap.
        p.advance(ms(1720));
        p.push_media(ms(1720), &[1; 160]);
        // Trailing silence is not a gap.
        p.finish(ms(3000));
        let kinds: Vec<_> = p.gaps().iter().map(|g| (g.start, g.len, g.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (ms(520), ms(40), GapKind::WithinUtterance),
                (ms(580), ms(1000), GapKind::BetweenUtterances),
                (ms(1650), ms(50), GapKind::BetweenUtterances),
            ]
        );
        let s = p.stats();
        assert_eq!((s.within_count, s.within_samples), (1, 40 * 8));
        assert_eq!((s.between_count, s.between_samples), (2, 1050 * 8));
        assert_eq!(s.played_samples, (20 + 20 + 20 + 50 + 20 + 20) * 8);
        assert_eq!(s.first_audio_at, Some(ms(500)));
        assert!(p.timeline().is_empty(), "not recording");
    }

    #[test]
    fn sub_millisecond_payloads_keep_exact_sample_time() {
        let mut p = Playback::new(PlaybackConfig::default());
        p.push_media(ms(0), &[1; 4]); // half a millisecond
        p.push_mark(ms(0), "half".into());
        assert_eq!(p.next_deadline(), Some(Duration::from_micros(500)));
        p.advance(Duration::from_micros(499));
        assert!(p.poll_echo().is_none());
        p.advance(Duration::from_micros(500));
        assert_eq!(p.poll_echo().unwrap().due, Duration::from_micros(500));
    }

    #[test]
    fn queue_is_bounded() {
        let mut p = Playback::new(PlaybackConfig { max_queued: ms(100), ..Default::default() });
        p.push_media(ms(0), &[1; 600]);
        p.push_media(ms(0), &[1; 600]);
        assert_eq!(p.queued(), ms(100));
        assert_eq!(p.stats().overflow_bytes, 400);
        p.push_mark(ms(0), "m".into());
        assert_eq!(p.next_deadline(), Some(ms(100)));
    }

    #[test]
    fn time_never_runs_back() {
        let mut p = recording();
        p.push_media(ms(100), &[1; 160]);
        p.advance(ms(50));
        p.push_mark(ms(10), "m".into());
        p.advance(ms(120));
        let e = p.poll_echo().unwrap();
        assert_eq!(e.due, ms(120));
        assert_eq!(p.timeline().len(), 120 * 8);
    }
}
