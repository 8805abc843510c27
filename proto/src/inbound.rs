//! Caller audio from Twilio, made continuous: gaps found from `media.chunk` are filled with
//! silence so the Opus track's clock (one 20 ms frame per 20 ms of call) never skips, and late
//! or repeated chunks are dropped. Everything is counted.
//!
//! Twilio numbers chunks from 1, one per 20 ms. Over a WebSocket (TCP) chunks cannot reorder in
//! transit, so a chunk behind the expected one is a duplicate or a Twilio-side glitch: dropping
//! it costs less than delaying every frame to wait for stragglers. No frame is held back, so
//! this adds no latency.

use std::collections::VecDeque;

use crate::g711::ULAW_SILENCE;
use crate::pacer::FRAME_BYTES;
use crate::twilio::MediaChunk;

#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// A jump of more chunks than this is taken as a restart, not a loss: no fill.
    pub max_fill_frames: u64,
    /// A payload longer than this is refused (Twilio sends 160 bytes).
    pub max_payload: usize,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig { max_fill_frames: 50, max_payload: 1600 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundStats {
    pub chunks: u64,
    /// Frames of silence inserted for missing chunks.
    pub filled_frames: u64,
    /// Gaps seen (each may fill several frames).
    pub gaps: u64,
    /// Chunks at or behind one already played: dropped.
    pub late_chunks: u64,
    /// Jumps too large to fill.
    pub resyncs: u64,
    /// Empty or oversized payloads: dropped.
    pub bad_payloads: u64,
}

/// One 20 ms μ-law frame for the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFrame {
    pub mulaw: [u8; FRAME_BYTES],
    /// Silence we made up for a lost chunk.
    pub filled: bool,
}

pub struct InboundAudio {
    cfg: InboundConfig,
    next_chunk: Option<u64>,
    /// Bytes of the last chunk: a lost chunk is assumed to have been this long.
    chunk_bytes: usize,
    /// Bytes not yet making a whole frame, and whether any of them are fill.
    partial: Vec<u8>,
    partial_filled: bool,
    frames: VecDeque<InFrame>,
    stats: InboundStats,
}

impl InboundAudio {
    pub fn new(cfg: InboundConfig) -> InboundAudio {
        InboundAudio {
            cfg,
            next_chunk: None,
            chunk_bytes: FRAME_BYTES,
            partial: Vec::with_capacity(FRAME_BYTES * 2),
            partial_filled: false,
            frames: VecDeque::with_capacity(4),
            stats: InboundStats::default(),
        }
    }

    pub fn stats(&self) -> &InboundStats {
        &self.stats
    }

    /// Takes one Twilio `media` chunk; whole frames become available from `poll_frame`.
    pub fn push(&mut self, media: &MediaChunk) {
        let len = media.payload.len();
        if len == 0 || len > self.cfg.max_payload {
            self.stats.bad_payloads += 1;
            return;
        }
        self.stats.chunks += 1;
        if let Some(next) = self.next_chunk {
            if media.chunk < next {
                self.stats.late_chunks += 1;
                return;
            }
            let missing = media.chunk - next;
            if missing > self.cfg.max_fill_frames {
                self.stats.resyncs += 1;
            } else if missing > 0 {
                self.stats.gaps += 1;
                let fill = missing as usize * self.chunk_bytes;
                self.append(fill, None);
            }
        }
        // `chunk` is Twilio's (untrusted) number: at u64::MAX there is no next one to expect.
        self.next_chunk = media.chunk.checked_add(1);
        self.chunk_bytes = len;
        self.append(len, Some(&media.payload));
    }

    /// The next whole frame, oldest first.
    pub fn poll_frame(&mut self) -> Option<InFrame> {
        self.frames.pop_front()
    }

    /// `Some(bytes)` appends audio, `None` appends that many bytes of silence.
    fn append(&mut self, len: usize, bytes: Option<&[u8]>) {
        let mut done = 0;
        while done < len {
            let take = (FRAME_BYTES - self.partial.len()).min(len - done);
            match bytes {
                Some(b) => self.partial.extend_from_slice(&b[done..done + take]),
                None => {
                    self.partial.resize(self.partial.len() + take, ULAW_SILENCE);
                    self.partial_filled = true;
                }
            }
            done += take;
            if self.partial.len() == FRAME_BYTES {
                let mut mulaw = [ULAW_SILENCE; FRAME_BYTES];
                mulaw.copy_from_slice(&self.partial);
                if self.partial_filled {
                    self.stats.filled_frames += 1;
                }
                self.frames.push_back(InFrame { mulaw, filled: self.partial_filled });
                self.partial.clear();
                self.partial_filled = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u64, byte: u8) -> MediaChunk {
        MediaChunk { track: "inbound".into(), chunk: n, timestamp_ms: n.saturating_sub(1).saturating_mul(20), payload: vec![byte; 160] }
    }

    fn drain(a: &mut InboundAudio) -> Vec<InFrame> {
        std::iter::from_fn(|| a.poll_frame()).collect()
    }

    #[test]
    fn in_order_chunks_pass_through() {
        let mut a = InboundAudio::new(InboundConfig::default());
        for n in 1..=5 {
            a.push(&chunk(n, n as u8));
        }
        let f = drain(&mut a);
        assert_eq!(f.len(), 5);
        assert!(f.iter().enumerate().all(|(i, f)| !f.filled && f.mulaw == [(i + 1) as u8; 160]));
        assert_eq!(a.stats().filled_frames, 0);
    }

    #[test]
    fn lost_chunks_become_silence() {
        let mut a = InboundAudio::new(InboundConfig::default());
        a.push(&chunk(1, 1));
        a.push(&chunk(4, 4)); // 2 and 3 lost
        let f = drain(&mut a);
        assert_eq!(f.len(), 4);
        assert!(f[1].filled && f[2].filled && f[1].mulaw == [0xFF; 160]);
        assert_eq!(f[3].mulaw, [4; 160]);
        assert_eq!((a.stats().gaps, a.stats().filled_frames), (1, 2));
    }

    #[test]
    fn late_and_duplicate_chunks_are_dropped() {
        let mut a = InboundAudio::new(InboundConfig::default());
        a.push(&chunk(1, 1));
        a.push(&chunk(2, 2));
        a.push(&chunk(2, 9));
        a.push(&chunk(1, 9));
        a.push(&chunk(3, 3));
        let f = drain(&mut a);
        assert_eq!(f.iter().map(|f| f.mulaw[0]).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(a.stats().late_chunks, 2);
    }

    #[test]
    fn huge_jump_is_a_resync_not_a_flood_of_silence() {
        let mut a = InboundAudio::new(InboundConfig::default());
        a.push(&chunk(1, 1));
        a.push(&chunk(1_000_000_000, 2));
        assert_eq!(drain(&mut a).len(), 2);
        assert_eq!(a.stats().resyncs, 1);
    }

    #[test]
    fn chunk_numbers_at_the_top_of_the_range_do_not_wrap() {
        let mut a = InboundAudio::new(InboundConfig::default());
        a.push(&chunk(u64::MAX - 1, 1));
        a.push(&chunk(u64::MAX, 2));
        // After the last representable chunk nothing is expected: the next is taken as it comes.
        a.push(&chunk(1, 3));
        a.push(&chunk(u64::MAX, 4));
        let f = drain(&mut a);
        assert_eq!(f.iter().map(|f| f.mulaw[0]).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(a.stats().filled_frames, 0);
    }

    #[test]
    fn odd_payload_sizes_are_reframed() {
        let mut a = InboundAudio::new(InboundConfig::default());
        let mut m = chunk(1, 7);
        m.payload = vec![7; 100];
        a.push(&m);
        assert!(a.poll_frame().is_none());
        m.chunk = 2;
        a.push(&m);
        assert_eq!(a.poll_frame().unwrap().mulaw, [7; 160]);
        // A lost 100-byte chunk fills 100 bytes.
        m.chunk = 4;
        a.push(&m);
        let f = drain(&mut a);
        assert_eq!(f.len(), 1); // 40 + 100 + 100 = 240 -> one frame, 80 left
        assert!(f[0].filled);
        assert_eq!(&f[0].mulaw[..40], &[7; 40]);
        assert_eq!(&f[0].mulaw[40..140], &[0xFF; 100]);
    }

    #[test]
    fn bad_payloads_are_counted_and_dropped() {
        let mut a = InboundAudio::new(InboundConfig::default());
        let mut m = chunk(1, 1);
        m.payload.clear();
        a.push(&m);
        m.payload = vec![0; 100_000];
        a.push(&m);
        assert_eq!(a.stats().bad_payloads, 2);
        assert!(a.poll_frame().is_none());
    }
}
