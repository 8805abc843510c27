//! Mixes the room's voices (agent, supervisor, …) into the one stream the caller hears.
//!
//! Push model with no clock of its own: a mixed frame is produced as soon as any source has a
//! whole 20 ms frame, taking a frame from every other source that has one ready. A lone
//! speaker (the usual case) therefore goes straight through with no added delay. Each source's
//! queue is capped (oldest audio dropped and counted), so a source that sends faster than real
//! time cannot grow memory.

use std::collections::VecDeque;

/// 20 ms at 8 kHz.
pub const MIX_FRAME: usize = 160;

/// Names a source; the driver maps participant/track identities to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(pub u32);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MixerStats {
    pub frames_out: u64,
    /// Frames that summed more than one source.
    pub frames_mixed: u64,
    /// Samples dropped because a source's queue was full.
    pub dropped_samples: u64,
}

struct Source {
    id: SourceId,
    queue: VecDeque<i16>,
}

pub struct Mixer {
    sources: Vec<Source>,
    max_queued: usize,
    stats: MixerStats,
}

impl Mixer {
    /// `max_queued_frames`: per-source cap, in 20 ms frames.
    pub fn new(max_queued_frames: usize) -> Mixer {
        Mixer { sources: Vec::new(), max_queued: max_queued_frames.max(1) * MIX_FRAME, stats: MixerStats::default() }
    }

    pub fn stats(&self) -> &MixerStats {
        &self.stats
    }

    /// 8 kHz PCM from one source, any length.
    pub fn push(&mut self, id: SourceId, pcm: &[i16]) {
        let max = self.max_queued;
        let src = match self.sources.iter_mut().position(|s| s.id == id) {
            Some(i) => &mut self.sources[i],
            None => {
                self.sources.push(Source { id, queue: VecDeque::with_capacity(max) });
                self.sources.last_mut().expect("just pushed")
            }
        };
        src.queue.extend(pcm);
        let excess = src.queue.len().saturating_sub(max);
        if excess > 0 {
            src.queue.drain(..excess);
            self.stats.dropped_samples += excess as u64;
        }
    }

    /// The next mixed frame, if any source has a whole one.
    pub fn poll_frame(&mut self) -> Option<[i16; MIX_FRAME]> {
        let mut acc = [0i32; MIX_FRAME];
        let mut contributors = 0;
        for s in self.sources.iter_mut().filter(|s| s.queue.len() >= MIX_FRAME) {
            for (a, x) in acc.iter_mut().zip(s.queue.drain(..MIX_FRAME)) {
                *a += x as i32;
            }
            contributors += 1;
        }
        if contributors == 0 {
            return None;
        }
        self.stats.frames_out += 1;
        if contributors > 1 {
            self.stats.frames_mixed += 1;
        }
        let mut out = [0i16; MIX_FRAME];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = a.clamp(i16::MIN as i32, i16::MAX as i32) as i16;
        }
        Some(out)
    }

    /// True when no source has audio waiting (a lone voice can bypass the mixer).
    pub fn is_empty(&self) -> bool {
        self.sources.iter().all(|s| s.queue.is_empty())
    }

    /// Drops a source that left.
    pub fn remove(&mut self, id: SourceId) {
        self.sources.retain(|s| s.id != id);
    }

    /// Drops every queued sample (barge-in).
    pub fn clear(&mut self) {
        for s in &mut self.sources {
            s.queue.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_source_passes_through_without_delay() {
        let mut m = Mixer::new(5);
        m.push(SourceId(1), &[7; 100]);
        assert!(m.poll_frame().is_none());
        m.push(SourceId(1), &[7; 100]);
        assert_eq!(m.poll_frame(), Some([7; MIX_FRAME]));
        assert!(m.poll_frame().is_none());
    }

    #[test]
    fn two_sources_sum_with_saturation() {
        let mut m = Mixer::new(5);
        m.push(SourceId(1), &[30_000; MIX_FRAME]);
        m.push(SourceId(2), &[10_000; MIX_FRAME]);
        assert_eq!(m.poll_frame(), Some([i16::MAX; MIX_FRAME]));
        m.push(SourceId(1), &[-30_000; MIX_FRAME]);
        m.push(SourceId(2), &[-10_000; MIX_FRAME]);
        assert_eq!(m.poll_frame(), Some([i16::MIN; MIX_FRAME]));
        m.push(SourceId(1), &[100; MIX_FRAME]);
        m.push(SourceId(2), &[-40; MIX_FRAME]);
        assert_eq!(m.poll_frame(), Some([60; MIX_FRAME]));
        assert_eq!(m.stats().frames_mixed, 3);
    }

    #[test]
    fn queue_is_capped_oldest_dropped() {
        let mut m = Mixer::new(2);
        for i in 0..5 {
            m.push(SourceId(1), &[i; MIX_FRAME]);
        }
        assert_eq!(m.stats().dropped_samples, 3 * MIX_FRAME as u64);
        assert_eq!(m.poll_frame(), Some([3; MIX_FRAME]));
        assert_eq!(m.poll_frame(), Some([4; MIX_FRAME]));
        assert!(m.poll_frame().is_none());
    }

    #[test]
    fn clear_and_remove() {
        let mut m = Mixer::new(5);
        m.push(SourceId(1), &[1; MIX_FRAME]);
        m.clear();
        assert!(m.poll_frame().is_none());
        m.push(SourceId(2), &[1; MIX_FRAME]);
        m.remove(SourceId(2));
        assert!(m.poll_frame().is_none());
    }
}
