//! Helpers shared by the fuzz targets: how one fuzz input becomes the messages a program
//! receives, and the call-session driver used by the Twilio and control targets.

use std::time::{Duration, Instant};

use proto::call::{CallConfig, CallOutput, CallSession};
use proto::mixer::SourceId;

/// WebSocket text frames, one per line (JSON from these peers never holds a raw newline).
/// Lines that are not UTF-8 are skipped: a WebSocket text frame always is.
pub fn text_lines(data: &[u8]) -> impl Iterator<Item = &str> {
    data.split(|b| *b == b'\n').filter_map(|l| std::str::from_utf8(l).ok())
}

/// Binary frames: each a little-endian u16 header — low 15 bits the length, top bit a flag the
/// target gives a meaning to — then that many bytes. A short tail is the last frame.
pub fn length_prefixed(mut data: &[u8]) -> Vec<(bool, &[u8])> {
    let mut frames = Vec::new();
    while data.len() >= 2 {
        let header = u16::from_le_bytes([data[0], data[1]]);
        let len = (header & 0x7fff) as usize;
        let flag = header & 0x8000 != 0;
        let rest = &data[2..];
        let len = len.min(rest.len());
        frames.push((flag, &rest[..len]));
        data = &rest[len..];
    }
    frames
}

/// The inverse of [`length_prefixed`], for writing seeds.
pub fn encode_frame(flag: bool, bytes: &[u8]) -> Vec<u8> {
    let len = bytes.len().min(0x7fff) as u16 | if flag { 0x8000 } else { 0 };
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(&bytes[..bytes.len().min(0x7fff)]);
    v
}

pub const STREAM_SID: &str = "MZ00000000000000000000000000000000";
pub const CALL_SID: &str = "CA00000000000000000000000000000000";

/// `connected` and `start` as Twilio sends them.
pub fn start_lines() -> [String; 2] {
    [
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_string(),
        format!(
            r#"{{"event":"start","sequenceNumber":"1","start":{{"accountSid":"AC00000000000000000000000000000000","streamSid":"{STREAM_SID}","callSid":"{CALL_SID}","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{{"token":"1.n.s"}}}},"streamSid":"{STREAM_SID}"}}"#
        ),
    ]
}

/// Outputs one input may cause: a media chunk of at most 1600 bytes plus a fill of at most
/// 50 chunks of that size is 510 frames; the pacer adds its lead and reports.
pub const MAX_OUTPUTS_PER_INPUT: usize = 1024;

/// A [`CallSession`] on a simulated clock, drained after every input as the bridge's call task
/// does, checking what every output promises.
pub struct CallDriver {
    pub call: CallSession,
    pub now: Instant,
    pub t0: Instant,
    /// Outputs seen since the last [`CallDriver::drain`].
    pub last: Vec<CallOutput>,
    ended: bool,
}

impl CallDriver {
    pub fn new() -> CallDriver {
        let now = Instant::now();
        CallDriver { call: CallSession::new(CallConfig::default()), now, t0: now, last: Vec::new(), ended: false }
    }

    /// A call past `start`, streaming.
    pub fn streaming() -> CallDriver {
        let mut d = CallDriver::new();
        for l in start_lines() {
            d.call.handle_twilio(&l, d.now).expect("a valid start");
        }
        d.drain();
        assert!(!d.call.is_ended());
        d
    }

    /// 20 ms steps of simulated time.
    pub fn advance(&mut self, frames: u32) {
        self.now += Duration::from_millis(20) * frames;
    }

    /// `ms` of agent audio (a 400 Hz tone) from room participant 1, in 20 ms pieces.
    pub fn room_audio(&mut self, ms: u32) {
        for _ in 0..ms / 20 {
            let pcm: Vec<i16> = (0..160).map(|i| ((i as f32 * 0.314).sin() * 8000.0) as i16).collect();
            self.call.handle_room_audio(SourceId(1), &pcm, self.now);
            self.drain();
            self.advance(1);
        }
    }

    /// Polls every output due now; checks the bounds and the order rules.
    pub fn drain(&mut self) {
        self.last.clear();
        while let Some(o) = self.call.poll_output(self.now) {
            assert!(!self.ended, "output after End: {o:?}");
            if matches!(o, CallOutput::End(_)) {
                self.ended = true;
            }
            self.last.push(o);
            assert!(self.last.len() <= MAX_OUTPUTS_PER_INPUT, "one input gave more than {MAX_OUTPUTS_PER_INPUT} outputs");
        }
        if let Some(deadline) = self.call.poll_timeout() {
            // A deadline is never in the distant past (a driver would spin).
            assert!(deadline + Duration::from_secs(1) >= self.now, "deadline {:?} behind now", self.now - deadline);
        }
    }
}

impl Default for CallDriver {
    fn default() -> Self {
        CallDriver::new()
    }
}
