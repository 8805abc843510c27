//! What the caller heard of each agent reply, and the history trimming barge-in needs.
//!
//! # Correlating replies with the bridge's utterances
//!
//! The bridge does not know our replies: it cuts the agent's track into utterances by silence
//! (a 200 ms gap ends one) and numbers them `b1`, `b2`, … in order
//! (`proto::call::CallSession::utterance_label`). Its `playback{utterance_id, heard_ms, …}`
//! reports refer to those labels. We make the two numberings agree by construction:
//!
//! * a reply counts as *spoken* only once its first audio frame was pushed (a reply cancelled
//!   before any audio, or with no audio, takes no number);
//! * within a reply the player never leaves a gap: when the TTS is late it pushes silence
//!   frames, so the bridge sees one utterance per reply;
//! * between replies the player keeps at least `reply_gap_ms` (default 300 > 200) of quiet, so
//!   two replies are never merged — and after an interrupt the bridge's mute (until quiet) ends
//!   before our next reply starts.
//!
//! So the k-th spoken reply is the bridge's `bk`. If that ever drifts — a network stall longer
//! than 200 ms splits one of our replies in two at the bridge — reports for a label beyond the
//! replies we have spoken re-anchor the mapping (`offset`) on the latest reply, heard
//! positions are clamped to the reply's length, and labels we cannot map are ignored.
//!
//! # Trimming
//!
//! A reply is spoken sentence by sentence; the player records where each sentence's audio
//! starts and ends inside the utterance. What was heard of a reply is every sentence that
//! ended before `heard_ms`, plus the part of the sentence being spoken proportional to the time
//! heard of it (`(heard_ms - start) / (end - start)` of its characters, cut back to a word
//! boundary). With one sentence this is exactly `heard_ms / total_ms` of the text.

pub use crate::conversation::heard::{heard_text, text_prefix, trim_to_heard, Segment};

/// One reply whose audio went out.
#[derive(Debug, Clone, PartialEq)]
pub struct SpokenReply {
    /// Our id for the reply (the session's counter).
    pub reply_id: u64,
    /// Its number among spoken replies (1-based): the bridge's `b<k>`.
    pub k: u64,
    pub segments: Vec<Segment>,
    /// Audio pushed so far, ms.
    pub total_ms: u32,
    /// All its audio was pushed.
    pub finished: bool,
    /// Cut short by barge-in.
    pub interrupted: bool,
    /// Latest heard position the bridge reported (None: no report yet).
    pub heard_ms: Option<u32>,
    /// The bridge said the whole utterance played.
    pub complete: bool,
}

impl SpokenReply {
    /// Best knowledge of what the caller heard: the bridge's report, or (no bridge report
    /// yet) everything pushed.
    pub fn heard_text(&self) -> String {
        let heard = if self.complete {
            self.total_ms
        } else {
            self.heard_ms.unwrap_or(self.total_ms).min(self.total_ms)
        };
        heard_text(&self.segments, heard, self.total_ms)
    }

    pub fn full_text(&self) -> String {
        self.segments
            .iter()
            .map(|s| s.text.trim())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Spoken replies by bridge utterance label. Keeps the last `cap` replies.
#[derive(Debug, Clone)]
pub struct UtteranceMap {
    replies: std::collections::VecDeque<SpokenReply>,
    spoken: u64,
    /// Bridge number = k + offset.
    offset: i64,
    cap: usize,
}

impl Default for UtteranceMap {
    fn default() -> Self {
        UtteranceMap {
            replies: Default::default(),
            spoken: 0,
            offset: 0,
            cap: 64,
        }
    }
}

impl UtteranceMap {
    /// The first frame of `reply_id` was pushed: it becomes the next spoken reply.
    pub fn started(&mut self, reply_id: u64) -> u64 {
        self.spoken += 1;
        self.replies.push_back(SpokenReply {
            reply_id,
            k: self.spoken,
            segments: Vec::new(),
            total_ms: 0,
            finished: false,
            interrupted: false,
            heard_ms: None,
            complete: false,
        });
        while self.replies.len() > self.cap {
            self.replies.pop_front();
        }
        self.spoken
    }

    pub fn spoken(&self) -> u64 {
        self.spoken
    }

    /// The bridge's label for a spoken reply.
    pub fn label(&self, k: u64) -> String {
        format!("b{}", k as i64 + self.offset)
    }

    pub fn by_reply(&mut self, reply_id: u64) -> Option<&mut SpokenReply> {
        self.replies
            .iter_mut()
            .rev()
            .find(|r| r.reply_id == reply_id)
    }

    pub fn latest(&self) -> Option<&SpokenReply> {
        self.replies.back()
    }

    /// A `playback` report: updates the reply it refers to and returns it.
    pub fn playback(
        &mut self,
        label: &str,
        heard_ms: u32,
        complete: bool,
        interrupted: bool,
    ) -> Option<&SpokenReply> {
        let n: i64 = label.strip_prefix('b')?.parse().ok()?;
        let mut k = n - self.offset;
        if k > self.spoken as i64 {
            // The bridge counted more utterances than we spoke (one of ours was split):
            // re-anchor on our latest reply.
            if self.spoken == 0 {
                return None;
            }
            self.offset = n - self.spoken as i64;
            k = self.spoken as i64;
        }
        if k < 1 {
            return None;
        }
        let r = self.replies.iter_mut().find(|r| r.k == k as u64)?;
        let clamped = heard_ms.min(
            r.total_ms
                .max(if r.finished { r.total_ms } else { heard_ms }),
        );
        // Heard positions only grow, except the final interrupted report which is exact.
        r.heard_ms = Some(match r.heard_ms {
            Some(h) if !interrupted => h.max(clamped),
            _ => clamped,
        });
        r.complete |= complete;
        r.interrupted |= interrupted;
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_spoken_order_and_resync() {
        let mut m = UtteranceMap::default();
        assert_eq!(m.started(7), 1);
        m.by_reply(7).unwrap().total_ms = 2000;
        assert_eq!(m.label(1), "b1");
        assert_eq!(m.playback("b1", 500, false, false).unwrap().reply_id, 7);
        assert_eq!(
            m.playback("b1", 400, false, false).unwrap().heard_ms,
            Some(500)
        );
        assert_eq!(m.started(9), 2);
        m.by_reply(9).unwrap().total_ms = 1000;
        // The bridge split reply 7 in two: it now reports b3 for our second reply.
        let r = m.playback("b3", 300, false, true).unwrap();
        assert_eq!(r.reply_id, 9);
        assert_eq!(m.label(2), "b3");
        assert!(m.playback("x1", 1, false, false).is_none());
        assert!(m.playback("b0", 1, false, false).is_none());
    }
}
