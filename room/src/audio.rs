//! Opus audio: the encoder behind [`AudioSink`] and the decoder behind [`AudioStream`].
//!
//! * Sending: [`Room::publish_audio`](crate::Room::publish_audio) returns an [`AudioSink`].
//!   The caller pushes mono PCM `i16` at the rate it has (8, 16, 24 or 48 kHz); the sink cuts
//!   it into 20 ms frames and encodes each with Opus **at that input rate** (no resampling:
//!   libopus accepts 8/16/24/48 kHz input and the RTP clock stays 48 kHz). Encoding runs in the
//!   caller's task, so one busy room never stalls another; only the small encoded packet
//!   crosses into the room's driver task, through a bounded queue.
//! * Receiving: a [`RemoteAudioTrack`] (from [`RoomEvent::TrackSubscribed`](crate::RoomEvent))
//!   hands out [`AudioStream`]s. Each stream owns an Opus decoder created at the rate the
//!   caller asked for (8 kHz for a phone leg: no resampler needed), decodes in the consumer's
//!   task and conceals short losses (up to [`MAX_CONCEALED_FRAMES`] × 20 ms) with Opus PLC.
//!
//! Every queue is bounded: a slow consumer loses frames and the `dropped` counters say so.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;
use tokio::sync::mpsc;

use crate::error::RoomError;

/// Sample rates Opus can encode from / decode to directly.
pub const SUPPORTED_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];
/// RTP clock rate of Opus (RFC 7587), whatever the input rate.
pub const RTP_CLOCK: u32 = 48_000;
/// Samples of one 20 ms frame at the 48 kHz RTP clock.
pub const RTP_SAMPLES_PER_FRAME: u32 = 960;
/// Longest gap (in 20 ms frames) the decoder fills with packet-loss concealment; longer gaps
/// (e.g. DTX silence) produce no frames, the next frame's `rtp_timestamp` shows the jump.
pub const MAX_CONCEALED_FRAMES: u64 = 5;
/// Largest Opus packet we produce (RFC 6716 recommends 1275 max).
const MAX_PACKET: usize = 1500;

fn check_rate(rate: u32) -> Result<(), RoomError> {
    if SUPPORTED_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(RoomError::InvalidSampleRate(rate))
    }
}

/// Samples in 20 ms at `rate`.
pub fn samples_per_frame(rate: u32) -> usize {
    (rate / 50) as usize
}

/// Called by the room's driver with how long each frame took from [`AudioSink`] push (or the
/// capture time given to [`AudioSink::try_push_at`]) to its RTP packet leaving the socket:
/// encode, queue and SRTP, the latency the sending side adds. Must be cheap (an atomic add).
#[derive(Clone)]
pub struct SendLatencyObserver(pub Arc<dyn Fn(std::time::Duration) + Send + Sync>);

impl std::fmt::Debug for SendLatencyObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendLatencyObserver")
    }
}

/// Options for a published audio track.
#[derive(Debug, Clone)]
pub struct AudioTrackOptions {
    /// Track name shown to other participants.
    pub name: String,
    /// Sample rate of the PCM the caller will push: 8000, 12000, 16000, 24000 or 48000.
    pub sample_rate: u32,
    /// Opus complexity 0..=10 (CPU vs quality; 5 is a good default for speech).
    pub complexity: u8,
    /// Opus discontinuous transmission: silence is sent as (almost) nothing.
    pub dtx: bool,
    /// Target bitrate in bit/s. None: 20 kbit/s for 8-12 kHz input, 24 kbit/s for 16 kHz,
    /// 32 kbit/s (libwebrtc's default) for 24/48 kHz. (libopus' own automatic choice for 8 kHz
    /// is ~8 kbit/s, too thin for speech recognition.)
    pub bitrate: Option<u32>,
    /// Opus in-band FEC (helps the receiver conceal single losses).
    pub fec: bool,
    /// LiveKit track source (microphone by default).
    pub source: livekit_protocol::TrackSource,
    /// Capacity of the queue between the sink and the room's driver, in 20 ms frames.
    pub queue_frames: usize,
    /// Told the send latency of every frame (None: not measured).
    pub on_sent: Option<SendLatencyObserver>,
    /// Codec of the track. [`AudioCodec::Pcmu`] / [`AudioCodec::Pcma`] (8 kHz input only) need a
    /// server that enables them ([`Room::publish_codec_enabled`](crate::Room::publish_codec_enabled));
    /// a phone leg's μ-law then goes out as it came ([`AudioSink::try_push_ulaw_at`]): no
    /// decode, no encode, the RTP clock at 8 kHz. The Opus-only settings are ignored.
    pub codec: AudioCodec,
}

impl Default for AudioTrackOptions {
    fn default() -> Self {
        Self {
            name: "audio".into(),
            sample_rate: 48_000,
            complexity: 5,
            dtx: false,
            bitrate: None,
            fec: true,
            source: livekit_protocol::TrackSource::Microphone,
            queue_frames: 50,
            on_sent: None,
            codec: AudioCodec::Opus,
        }
    }
}

/// A 20 ms-framed Opus encoder at a fixed input rate (mono).
pub struct OpusEncoder {
    enc: opus::Encoder,
    rate: u32,
    dtx: bool,
    out: Vec<u8>,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").field("rate", &self.rate).field("dtx", &self.dtx).finish()
    }
}

impl OpusEncoder {
    /// Create an encoder for mono PCM at `rate` (8/12/16/24/48 kHz).
    pub fn new(rate: u32, complexity: u8, dtx: bool) -> Result<Self, RoomError> {
        check_rate(rate)?;
        let mut enc = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)
            .map_err(|e| RoomError::Opus(e.to_string()))?;
        enc.set_complexity(complexity.min(10) as i32).map_err(|e| RoomError::Opus(e.to_string()))?;
        enc.set_dtx(dtx).map_err(|e| RoomError::Opus(e.to_string()))?;
        Ok(Self { enc, rate, dtx, out: vec![0; MAX_PACKET] })
    }

    /// Bitrate used when none is configured (see [`AudioTrackOptions::bitrate`]).
    pub fn default_bitrate(rate: u32) -> u32 {
        match rate {
            0..=12_000 => 20_000,
            12_001..=16_000 => 24_000,
            _ => 32_000,
        }
    }

    /// Apply bitrate (None: [`OpusEncoder::default_bitrate`]) and in-band FEC settings.
    pub fn configure(&mut self, bitrate: Option<u32>, fec: bool) -> Result<(), RoomError> {
        let b = bitrate.unwrap_or_else(|| Self::default_bitrate(self.rate));
        let br = opus::Bitrate::Bits(b.clamp(6_000, 510_000) as i32);
        self.enc.set_bitrate(br).map_err(|e| RoomError::Opus(e.to_string()))?;
        self.enc.set_inband_fec(fec).map_err(|e| RoomError::Opus(e.to_string()))?;
        if fec {
            self.enc.set_packet_loss_perc(5).map_err(|e| RoomError::Opus(e.to_string()))?;
        }
        Ok(())
    }

    /// Input sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Encode exactly one 20 ms frame. Returns the Opus packet; with DTX on, packets of one
    /// or two bytes mean "silence, nothing worth sending".
    pub fn encode_frame(&mut self, pcm: &[i16]) -> Result<&[u8], RoomError> {
        if pcm.len() != samples_per_frame(self.rate) {
            return Err(RoomError::Opus(format!(
                "frame has {} samples, expected {} (20 ms at {} Hz)",
                pcm.len(),
                samples_per_frame(self.rate),
                self.rate
            )));
        }
        let n = self.enc.encode(pcm, &mut self.out).map_err(|e| RoomError::Opus(e.to_string()))?;
        Ok(&self.out[..n])
    }
}

/// A mono Opus decoder producing PCM at a fixed output rate.
pub struct OpusDecoder {
    dec: opus::Decoder,
    rate: u32,
    buf: Vec<i16>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").field("rate", &self.rate).finish()
    }
}

impl OpusDecoder {
    /// Create a decoder whose output is mono PCM at `rate` (8/12/16/24/48 kHz).
    pub fn new(rate: u32) -> Result<Self, RoomError> {
        check_rate(rate)?;
        let dec = opus::Decoder::new(rate, opus::Channels::Mono).map_err(|e| RoomError::Opus(e.to_string()))?;
        // 120 ms is the longest Opus packet.
        Ok(Self { dec, rate, buf: vec![0; (rate as usize * 120) / 1000] })
    }

    /// Output sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Decode one packet. Malformed packets give an error (never a panic).
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, RoomError> {
        if packet.is_empty() {
            return Err(RoomError::Opus("empty packet".into()));
        }
        let n = self.dec.decode(packet, &mut self.buf, false).map_err(|e| RoomError::Opus(e.to_string()))?;
        Ok(self.buf[..n].to_vec())
    }

    /// Packet-loss concealment for one lost 20 ms frame.
    pub fn conceal(&mut self) -> Result<Vec<i16>, RoomError> {
        let n = samples_per_frame(self.rate);
        let n = self.dec.decode(&[], &mut self.buf[..n], false).map_err(|e| RoomError::Opus(e.to_string()))?;
        Ok(self.buf[..n].to_vec())
    }
}

/// RFC 6464 audio level (0 = loudest, 127 = silence) of a PCM frame, in -dBov.
pub fn audio_level(pcm: &[i16]) -> i8 {
    if pcm.is_empty() {
        return 127;
    }
    let sum: f64 = pcm.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum / pcm.len() as f64).sqrt() / 32768.0;
    if rms <= 1e-7 {
        return 127;
    }
    let db = -20.0 * rms.log10();
    db.clamp(0.0, 127.0) as i8
}

// ---------------------------------------------------------------------------------------------
// Sending side
// ---------------------------------------------------------------------------------------------

/// One encoded frame on its way from an [`AudioSink`] to the room driver.
#[derive(Debug)]
pub(crate) struct OutgoingAudio {
    pub track_cid: Arc<str>,
    pub codec: AudioCodec,
    pub payload: Vec<u8>,
    /// RTP time of the first sample, at the codec's clock (48 kHz Opus, 8 kHz G.711).
    pub rtp_time: u64,
    pub audio_level: i8,
    /// First packet after a DTX pause (sets the RTP marker).
    pub talkspurt_start: bool,
    /// When its audio was handed to the sink.
    pub captured: Instant,
}

/// Why [`AudioSink::try_push`] could not take a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue to the driver was full: the frame was dropped (and counted).
    #[error("audio queue full, frame dropped")]
    Full,
    /// The room is gone.
    #[error("room closed")]
    Closed,
    /// This kind of audio cannot go on this track (Opus packets on a G.711 track, μ-law on
    /// an Opus track that is not 8 kHz).
    #[error("audio does not fit the track's codec")]
    WrongCodec,
}

/// Counters shared between an [`AudioSink`] and the room.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// 20 ms frames encoded.
    pub frames_encoded: AtomicU64,
    /// Frames dropped because the queue to the driver was full.
    pub frames_dropped: AtomicU64,
    /// Frames not sent because DTX said silence.
    pub frames_dtx: AtomicU64,
}

/// What turns pushed audio into RTP payloads for one track.
enum SinkEncoder {
    Opus(OpusEncoder),
    /// G.711 (`Pcmu` or `Pcma`): one byte per 8 kHz sample, no state.
    G711(AudioCodec),
}

/// Where audio for a published track goes in. Obtained from
/// [`Room::publish_audio`](crate::Room::publish_audio).
///
/// Push mono `i16` PCM at the track's sample rate, in any chunk size; it is framed to 20 ms.
/// A phone leg pushes its μ-law with [`AudioSink::try_push_ulaw_at`] instead: on a PCMU track
/// it is sent as it is. Push in real time (the sink does not pace). Dropping the sink
/// unpublishes the track.
pub struct AudioSink {
    pub(crate) track_sid: String,
    pub(crate) cid: Arc<str>,
    encoder: SinkEncoder,
    rate: u32,
    dtx: bool,
    pub(crate) pending: Vec<i16>,
    /// G.711 bytes waiting for a whole 20 ms frame.
    pending_g711: Vec<u8>,
    /// RTP time of the next frame, at the codec's clock.
    pub(crate) rtp_time: u64,
    pub(crate) in_dtx: bool,
    /// When the audio being encoded was handed to us.
    pub(crate) captured: Instant,
    pub(crate) tx: mpsc::Sender<OutgoingAudio>,
    pub(crate) stats: Arc<SinkStats>,
    /// Tells the room to unpublish the track when the sink goes away.
    pub(crate) on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Drop for AudioSink {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

impl std::fmt::Debug for AudioSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioSink").field("track_sid", &self.track_sid).field("codec", &self.codec()).field("rate", &self.rate).finish()
    }
}

/// G.711 samples (and RTP ticks at 8 kHz) in one 20 ms frame.
pub const G711_FRAME: usize = 160;

impl AudioSink {
    pub(crate) fn new(
        track_sid: String,
        cid: Arc<str>,
        opts: &AudioTrackOptions,
        tx: mpsc::Sender<OutgoingAudio>,
    ) -> Result<Self, RoomError> {
        let encoder = match opts.codec {
            AudioCodec::Opus => {
                let mut enc = OpusEncoder::new(opts.sample_rate, opts.complexity, opts.dtx)?;
                enc.configure(opts.bitrate, opts.fec)?;
                SinkEncoder::Opus(enc)
            }
            g711 => {
                if opts.sample_rate != 8_000 {
                    return Err(RoomError::InvalidSampleRate(opts.sample_rate));
                }
                SinkEncoder::G711(g711)
            }
        };
        Ok(Self {
            track_sid,
            cid,
            encoder,
            rate: opts.sample_rate,
            dtx: opts.dtx && opts.codec == AudioCodec::Opus,
            pending: Vec::with_capacity(samples_per_frame(opts.sample_rate) * 2),
            pending_g711: Vec::new(),
            rtp_time: rand::random::<u32>() as u64,
            in_dtx: false,
            captured: Instant::now(),
            tx,
            stats: Arc::new(SinkStats::default()),
            on_drop: None,
        })
    }

    /// The server-assigned track sid (`TR_…`).
    pub fn track_sid(&self) -> &str {
        &self.track_sid
    }

    /// Sample rate the sink expects.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Codec of the track.
    pub fn codec(&self) -> AudioCodec {
        match &self.encoder {
            SinkEncoder::Opus(_) => AudioCodec::Opus,
            SinkEncoder::G711(c) => *c,
        }
    }

    /// Counters (frames encoded / dropped / suppressed by DTX).
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Unpublish the track (same as dropping the sink).
    pub fn unpublish(self) {}

    /// Frames dropped because the driver queue was full.
    pub fn dropped_frames(&self) -> u64 {
        self.stats.frames_dropped.load(Ordering::Relaxed)
    }

    /// RTP ticks of one 20 ms frame at the track's clock.
    fn rtp_step(&self) -> u64 {
        match self.encoder {
            SinkEncoder::Opus(_) => RTP_SAMPLES_PER_FRAME as u64,
            SinkEncoder::G711(_) => G711_FRAME as u64,
        }
    }

    fn outgoing(&mut self, payload: Vec<u8>, audio_level: i8) -> OutgoingAudio {
        let rtp_time = self.rtp_time;
        self.rtp_time += self.rtp_step();
        let talkspurt_start = std::mem::replace(&mut self.in_dtx, false);
        OutgoingAudio { track_cid: self.cid.clone(), codec: self.codec(), payload, rtp_time, audio_level, talkspurt_start, captured: self.captured }
    }

    fn encode_next(&mut self) -> Result<Option<OutgoingAudio>, RoomError> {
        let n = samples_per_frame(self.rate);
        if self.pending.len() < n {
            return Ok(None);
        }
        let frame: Vec<i16> = self.pending.drain(..n).collect();
        let level = audio_level(&frame);
        let packet = match &mut self.encoder {
            SinkEncoder::G711(AudioCodec::Pcma) => frame.iter().map(|&s| ::proto::g711::alaw_encode(s)).collect(),
            SinkEncoder::G711(_) => frame.iter().map(|&s| ::proto::g711::ulaw_encode(s)).collect(),
            SinkEncoder::Opus(enc) => {
                let packet = enc.encode_frame(&frame)?;
                if self.dtx && packet.len() <= 2 {
                    self.stats.frames_encoded.fetch_add(1, Ordering::Relaxed);
                    self.in_dtx = true;
                    self.stats.frames_dtx.fetch_add(1, Ordering::Relaxed);
                    self.rtp_time += RTP_SAMPLES_PER_FRAME as u64;
                    return Ok(Some(OutgoingAudio {
                        track_cid: self.cid.clone(),
                        codec: AudioCodec::Opus,
                        payload: Vec::new(), // marker: nothing to send
                        rtp_time: self.rtp_time - RTP_SAMPLES_PER_FRAME as u64,
                        audio_level: level,
                        talkspurt_start: false,
                        captured: self.captured,
                    }));
                }
                packet.to_vec()
            }
        };
        self.stats.frames_encoded.fetch_add(1, Ordering::Relaxed);
        Ok(Some(self.outgoing(packet, level)))
    }

    /// Push PCM, waiting for room in the driver queue (back-pressure).
    pub async fn push(&mut self, pcm: &[i16]) -> Result<(), PushError> {
        self.captured = Instant::now();
        self.pending.extend_from_slice(pcm);
        loop {
            match self.encode_next() {
                Ok(Some(f)) if f.payload.is_empty() => continue,
                Ok(Some(f)) => self.tx.send(f).await.map_err(|_| PushError::Closed)?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "opus encode failed; frame dropped");
                    self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Push PCM without waiting. Frames that do not fit in the queue are dropped and counted;
    /// returns [`PushError::Full`] if any frame of this call was dropped.
    pub fn try_push(&mut self, pcm: &[i16]) -> Result<(), PushError> {
        self.try_push_at(pcm, Instant::now())
    }

    fn try_send(&mut self, f: OutgoingAudio) -> Result<(), PushError> {
        match self.tx.try_send(f) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                Err(PushError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
        }
    }

    /// Send one already-encoded 20 ms Opus packet (e.g. a recording replayed by a load test),
    /// bypassing the encoder; an empty packet is a DTX pause (the RTP clock still advances).
    /// Never waits: a full queue drops the packet and counts it. Opus tracks only.
    pub fn try_push_opus(&mut self, packet: &[u8]) -> Result<(), PushError> {
        if !matches!(self.encoder, SinkEncoder::Opus(_)) {
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return Err(PushError::WrongCodec);
        }
        if packet.is_empty() {
            self.rtp_time += RTP_SAMPLES_PER_FRAME as u64;
            self.in_dtx = true;
            self.stats.frames_dtx.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.captured = Instant::now();
        let f = self.outgoing(packet.to_vec(), 30);
        self.try_send(f)
    }

    /// [`try_push`](Self::try_push) audio that reached the application at `captured` (e.g. when
    /// its network message arrived), so the send latency covers the application's part too.
    pub fn try_push_at(&mut self, pcm: &[i16], captured: Instant) -> Result<(), PushError> {
        self.captured = captured;
        self.pending.extend_from_slice(pcm);
        let mut result = Ok(());
        loop {
            match self.encode_next() {
                Ok(Some(f)) if f.payload.is_empty() => continue,
                Ok(Some(f)) => match self.try_send(f) {
                    Ok(()) => {}
                    Err(PushError::Full) => result = Err(PushError::Full),
                    Err(e) => return Err(e),
                },
                Ok(None) => return result,
                Err(e) => {
                    tracing::warn!(error = %e, "opus encode failed; frame dropped");
                    self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Push G.711 μ-law (8 kHz, e.g. a Twilio Media Streams payload) that reached the
    /// application at `captured`. On a PCMU track the bytes are the RTP payload as they are, in
    /// 20 ms packets (no decode, no encode); on a PCMA track they are re-mapped to A-law; on
    /// an Opus track (an 8 kHz one) they are decoded and encoded. Never waits: a full queue
    /// drops frames and counts them.
    pub fn try_push_ulaw_at(&mut self, ulaw: &[u8], captured: Instant) -> Result<(), PushError> {
        let codec = match self.encoder {
            SinkEncoder::G711(c) => c,
            SinkEncoder::Opus(_) => {
                if self.rate != 8_000 {
                    return Err(PushError::WrongCodec);
                }
                let pcm: Vec<i16> = ulaw.iter().map(|&b| ::proto::g711::ulaw_decode(b)).collect();
                return self.try_push_at(&pcm, captured);
            }
        };
        self.captured = captured;
        let mut result = Ok(());
        let mut rest = ulaw;
        while !rest.is_empty() {
            // Whole frames straight from the input when nothing is pending (the usual case:
            // Twilio sends 20 ms messages); otherwise through the pending buffer.
            let payload: Vec<u8> = if self.pending_g711.is_empty() && rest.len() >= G711_FRAME {
                let (frame, tail) = rest.split_at(G711_FRAME);
                rest = tail;
                frame.to_vec()
            } else {
                let take = (G711_FRAME - self.pending_g711.len()).min(rest.len());
                self.pending_g711.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.pending_g711.len() < G711_FRAME {
                    break;
                }
                std::mem::replace(&mut self.pending_g711, Vec::with_capacity(G711_FRAME))
            };
            // The level extension (LiveKit's active speaker) needs the samples: a table lookup each.
            let level = ulaw_level(&payload);
            let payload = match codec {
                AudioCodec::Pcma => payload.iter().map(|&b| ::proto::g711::alaw_encode(::proto::g711::ulaw_decode(b))).collect(),
                _ => payload,
            };
            self.stats.frames_encoded.fetch_add(1, Ordering::Relaxed);
            let f = self.outgoing(payload, level);
            match self.try_send(f) {
                Ok(()) => {}
                Err(PushError::Full) => result = Err(PushError::Full),
                Err(e) => return Err(e),
            }
        }
        result
    }
}

/// [`audio_level`] of μ-law bytes.
fn ulaw_level(ulaw: &[u8]) -> i8 {
    if ulaw.is_empty() {
        return 127;
    }
    let sum: i64 = ulaw.iter().map(|&b| ::proto::g711::ulaw_decode(b) as i64).map(|s| s * s).sum();
    let rms = ((sum as f64) / ulaw.len() as f64).sqrt() / 32768.0;
    if rms <= 1e-7 {
        return 127;
    }
    (-20.0 * rms.log10()).clamp(0.0, 127.0) as i8
}

// ---------------------------------------------------------------------------------------------
// Receiving side
// ---------------------------------------------------------------------------------------------

/// Decoded audio handed to the application.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioFrame {
    /// Mono PCM samples at `sample_rate`.
    pub samples: Vec<i16>,
    /// Sample rate of `samples`.
    pub sample_rate: u32,
    /// RTP time (48 kHz clock, extended to 64 bits) of the first sample.
    pub rtp_timestamp: u64,
    /// True when this frame was synthesised by packet-loss concealment.
    pub concealed: bool,
    /// When the packet it was decoded from came off the network (for concealed frames: the
    /// packet after the gap). Receive latency = consumer's now − this.
    pub received: Instant,
}

impl AudioFrame {
    /// Duration of the frame in milliseconds.
    pub fn duration_ms(&self) -> u32 {
        (self.samples.len() as u64 * 1000 / self.sample_rate.max(1) as u64) as u32
    }
}

/// Codec of a remote audio track's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    /// Opus, 48 kHz RTP clock.
    Opus,
    /// G.711 μ-law, 8 kHz (livekit-server ≥ 1.9.1 forwards it; SIP participants publish it).
    Pcmu,
    /// G.711 A-law, 8 kHz.
    Pcma,
}

impl AudioCodec {
    /// Its mime type as LiveKit writes it (`audio/opus`, `audio/PCMU`, `audio/PCMA`).
    pub fn mime_type(self) -> &'static str {
        match self {
            AudioCodec::Opus => "audio/opus",
            AudioCodec::Pcmu => "audio/PCMU",
            AudioCodec::Pcma => "audio/PCMA",
        }
    }

    pub(crate) fn mime_type_lower(self) -> &'static str {
        match self {
            AudioCodec::Opus => "audio/opus",
            AudioCodec::Pcmu => "audio/pcmu",
            AudioCodec::Pcma => "audio/pcma",
        }
    }
}

/// An encoded packet from the network, on its way to an [`AudioStream`].
#[derive(Debug, Clone)]
pub(crate) struct IncomingAudio {
    pub codec: AudioCodec,
    pub rtp_time: u64,
    pub payload: Arc<[u8]>,
    /// When the driver got the packet from the network.
    pub received: Instant,
}

#[derive(Debug)]
struct StreamSlot {
    tx: mpsc::Sender<IncomingAudio>,
    dropped: Arc<AtomicU64>,
}

/// State shared between the driver (producer) and the track handles (consumers).
#[derive(Debug, Default)]
pub(crate) struct TrackShared {
    slots: Mutex<Vec<StreamSlot>>,
    closed: AtomicBool,
    pub(crate) packets: AtomicU64,
}

impl TrackShared {
    /// Fan an encoded packet out to every open stream (never blocks).
    pub(crate) fn dispatch(&self, pkt: IncomingAudio) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        slots.retain(|slot| match slot.tx.try_send(pkt.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                slot.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// End every stream of this track.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        match self.slots.lock() {
            Ok(mut s) => s.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }
}

/// A remote participant's audio track we are subscribed to.
#[derive(Debug, Clone)]
pub struct RemoteAudioTrack {
    pub(crate) sid: String,
    pub(crate) name: String,
    pub(crate) participant_identity: String,
    pub(crate) participant_sid: String,
    pub(crate) shared: Arc<TrackShared>,
}

impl RemoteAudioTrack {
    /// Track sid (`TR_…`).
    pub fn sid(&self) -> &str {
        &self.sid
    }
    /// Track name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Identity of the publishing participant.
    pub fn participant_identity(&self) -> &str {
        &self.participant_identity
    }
    /// Sid of the publishing participant.
    pub fn participant_sid(&self) -> &str {
        &self.participant_sid
    }
    /// Encoded packets received so far on this track.
    pub fn packets_received(&self) -> u64 {
        self.shared.packets.load(Ordering::Relaxed)
    }

    /// Decoded PCM at `sample_rate`, with a default queue of 50 packets (~1 s).
    pub fn stream(&self, sample_rate: u32) -> Result<AudioStream, RoomError> {
        self.stream_with_capacity(sample_rate, 50)
    }

    /// Decoded PCM at `sample_rate`; at most `capacity` undecoded packets wait for the
    /// consumer, later ones are dropped and counted ([`AudioStream::dropped_packets`]).
    pub fn stream_with_capacity(&self, sample_rate: u32, capacity: usize) -> Result<AudioStream, RoomError> {
        check_rate(sample_rate)?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        if !self.shared.closed.load(Ordering::Relaxed) {
            let mut slots = match self.shared.slots.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            slots.push(StreamSlot { tx, dropped: dropped.clone() });
        }
        Ok(AudioStream {
            rx,
            rate: sample_rate,
            decoder: None,
            g711: None,
            dropped,
            next_rtp: None,
            ready: VecDeque::new(),
            decode_errors: 0,
            track_sid: self.sid.clone(),
        })
    }
    /// The phone leg's view of this track at 8 kHz: μ-law as it came when the track is PCMU
    /// (forwarded to the phone with no decode and no encode), decoded PCM otherwise. At most
    /// `capacity` packets wait for the consumer.
    pub fn phone_stream(&self, capacity: usize) -> Result<PhoneStream, RoomError> {
        Ok(PhoneStream { inner: self.stream_with_capacity(8_000, capacity)?, ready: VecDeque::new() })
    }
}

/// Decoded audio of one remote track, as a [`Stream`] of [`AudioFrame`]s (or via
/// [`AudioStream::recv`]). Ends when the track is unsubscribed or the room closes.
pub struct AudioStream {
    rx: mpsc::Receiver<IncomingAudio>,
    /// Output sample rate.
    rate: u32,
    /// Made on the first Opus packet (a G.711 track never needs one).
    decoder: Option<OpusDecoder>,
    /// G.711 packets: 8 kHz samples cut into 20 ms chunks and resampled to the stream's rate.
    g711: Option<G711Decoder>,
    dropped: Arc<AtomicU64>,
    next_rtp: Option<u64>,
    ready: VecDeque<AudioFrame>,
    decode_errors: u64,
    track_sid: String,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream").field("track_sid", &self.track_sid).field("rate", &self.rate).finish()
    }
}

impl AudioStream {
    /// Packets dropped because this stream's consumer was too slow.
    pub fn dropped_packets(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Packets that failed to decode (malformed); they are skipped.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }
    /// Output sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn opus_decoder(&mut self) -> Result<&mut OpusDecoder, RoomError> {
        if self.decoder.is_none() {
            self.decoder = Some(OpusDecoder::new(self.rate)?);
        }
        self.decoder.as_mut().ok_or(RoomError::Opus("no decoder".into()))
    }

    /// Next decoded frame; `None` once the track is gone.
    pub async fn recv(&mut self) -> Option<AudioFrame> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    fn handle_packet(&mut self, pkt: IncomingAudio) {
        // Conceal short gaps (lost packets), skip long ones (DTX / pauses).
        if let Some(expected) = self.next_rtp {
            if pkt.rtp_time > expected {
                let gap = (pkt.rtp_time - expected) / RTP_SAMPLES_PER_FRAME as u64;
                if (1..=MAX_CONCEALED_FRAMES).contains(&gap) {
                    for i in 0..gap {
                        let concealed = match pkt.codec {
                            AudioCodec::Opus => self.opus_decoder().and_then(|d| d.conceal()),
                            // G.711 has no PLC of its own: silence.
                            AudioCodec::Pcmu | AudioCodec::Pcma => Ok(vec![0; samples_per_frame(self.rate)]),
                        };
                        match concealed {
                            Ok(samples) => self.ready.push_back(AudioFrame {
                                samples,
                                sample_rate: self.rate,
                                rtp_timestamp: expected + i * RTP_SAMPLES_PER_FRAME as u64,
                                concealed: true,
                                received: pkt.received,
                            }),
                            Err(_) => break,
                        }
                    }
                }
            } else if pkt.rtp_time < expected {
                // Late or duplicate packet: its slot was already played or concealed.
                return;
            }
        }
        if pkt.codec != AudioCodec::Opus {
            self.handle_g711(pkt);
            return;
        }
        let rate = self.rate;
        match self.opus_decoder().and_then(|d| d.decode(&pkt.payload)) {
            Ok(samples) => {
                let dur48 = samples.len() as u64 * RTP_CLOCK as u64 / rate as u64;
                self.next_rtp = Some(pkt.rtp_time + dur48);
                self.ready.push_back(AudioFrame {
                    samples,
                    sample_rate: rate,
                    rtp_timestamp: pkt.rtp_time,
                    concealed: false,
                    received: pkt.received,
                });
            }
            Err(e) => {
                self.decode_errors += 1;
                tracing::debug!(track = %self.track_sid, error = %e, "opus decode failed; packet skipped");
            }
        }
    }

    fn handle_g711(&mut self, pkt: IncomingAudio) {
        let rate = self.rate;
        if self.g711.is_none() {
            match ::proto::resample::Resampler::new(8_000, rate) {
                Ok(resampler) => self.g711 = Some(G711Decoder { resampler, pending: Vec::with_capacity(320), pending_rtp: 0 }),
                Err(e) => {
                    self.decode_errors += 1;
                    tracing::debug!(track = %self.track_sid, error = %e, "no G.711 resampler to this rate; packet skipped");
                    return;
                }
            }
        }
        let Some(g) = self.g711.as_mut() else { return };
        if pkt.payload.is_empty() || pkt.payload.len() > MAX_PACKET {
            self.decode_errors += 1;
            return;
        }
        if g.pending.is_empty() {
            g.pending_rtp = pkt.rtp_time;
        }
        g.pending.extend(pkt.payload.iter().map(|&b| match pkt.codec {
            AudioCodec::Pcma => ::proto::g711::alaw_decode(b),
            _ => ::proto::g711::ulaw_decode(b),
        }));
        // 8 kHz samples are 6 ticks of the 48 kHz RTP time base.
        self.next_rtp = Some(pkt.rtp_time + pkt.payload.len() as u64 * 6);
        let chunk = ::proto::resample::chunk_len(8_000);
        while g.pending.len() >= chunk {
            let mut out = Vec::with_capacity(samples_per_frame(rate));
            let r = g.resampler.process(&g.pending[..chunk], &mut out);
            g.pending.drain(..chunk);
            let rtp_timestamp = g.pending_rtp;
            g.pending_rtp += RTP_SAMPLES_PER_FRAME as u64;
            match r {
                Ok(_) => self.ready.push_back(AudioFrame { samples: out, sample_rate: rate, rtp_timestamp, concealed: false, received: pkt.received }),
                Err(e) => {
                    self.decode_errors += 1;
                    tracing::debug!(track = %self.track_sid, error = %e, "G.711 resampling failed; chunk skipped");
                }
            }
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<AudioFrame>> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Poll::Ready(Some(f));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(pkt)) => self.handle_packet(pkt),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// G.711 state of an [`AudioStream`]: decoded 8 kHz samples waiting for a whole 20 ms chunk.
#[derive(Debug)]
struct G711Decoder {
    resampler: ::proto::resample::Resampler,
    pending: Vec<i16>,
    /// RTP time (48 kHz) of `pending[0]`.
    pending_rtp: u64,
}

impl Stream for AudioStream {
    type Item = AudioFrame;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AudioFrame>> {
        self.get_mut().poll_frame(cx)
    }
}

/// 20 ms (or whatever one packet carries) of a room track, as the phone leg takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum PhoneAudio {
    /// μ-law bytes exactly as a PCMU packet carried them (or μ-law silence for a lost one).
    Ulaw(Arc<[u8]>),
    /// 8 kHz PCM decoded from Opus or PCMA.
    Pcm(Vec<i16>),
}

/// One frame of a [`PhoneStream`].
#[derive(Debug, Clone, PartialEq)]
pub struct PhoneFrame {
    /// The audio, as it came (PCMU) or decoded.
    pub audio: PhoneAudio,
    /// Synthesised for a lost packet (silence for G.711, Opus PLC).
    pub concealed: bool,
    /// When its packet came off the network.
    pub received: Instant,
}

/// A room track for a phone leg (from [`RemoteAudioTrack::phone_stream`]): PCMU packets are
/// handed over as they are, anything else is decoded to 8 kHz PCM. Losses of up to
/// [`MAX_CONCEALED_FRAMES`] are concealed, late packets dropped, as in [`AudioStream`].
pub struct PhoneStream {
    inner: AudioStream,
    ready: VecDeque<PhoneFrame>,
}

impl std::fmt::Debug for PhoneStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneStream").field("track_sid", &self.inner.track_sid).finish()
    }
}

/// μ-law of a zero sample.
const ULAW_SILENCE: u8 = 0xff;

impl PhoneStream {
    /// Packets dropped because this stream's consumer was too slow.
    pub fn dropped_packets(&self) -> u64 {
        self.inner.dropped_packets()
    }
    /// Packets that could not be decoded (or were empty / oversized); they are skipped.
    pub fn decode_errors(&self) -> u64 {
        self.inner.decode_errors
    }

    /// Next frame; `None` once the track is gone.
    pub async fn recv(&mut self) -> Option<PhoneFrame> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    fn handle_packet(&mut self, pkt: IncomingAudio) {
        if pkt.codec != AudioCodec::Pcmu {
            self.inner.handle_packet(pkt);
            while let Some(f) = self.inner.ready.pop_front() {
                self.ready.push_back(PhoneFrame { audio: PhoneAudio::Pcm(f.samples), concealed: f.concealed, received: f.received });
            }
            return;
        }
        if pkt.payload.is_empty() || pkt.payload.len() > MAX_PACKET {
            self.inner.decode_errors += 1;
            return;
        }
        if let Some(expected) = self.inner.next_rtp {
            if pkt.rtp_time > expected {
                let gap = (pkt.rtp_time - expected) / RTP_SAMPLES_PER_FRAME as u64;
                if (1..=MAX_CONCEALED_FRAMES).contains(&gap) {
                    for _ in 0..gap {
                        let silence: Arc<[u8]> = vec![ULAW_SILENCE; G711_FRAME].into();
                        self.ready.push_back(PhoneFrame { audio: PhoneAudio::Ulaw(silence), concealed: true, received: pkt.received });
                    }
                }
            } else if pkt.rtp_time < expected {
                return; // late or duplicate: its slot was already played or concealed
            }
        }
        // 8 kHz samples are 6 ticks of the 48 kHz RTP time base.
        self.inner.next_rtp = Some(pkt.rtp_time + pkt.payload.len() as u64 * 6);
        self.ready.push_back(PhoneFrame { audio: PhoneAudio::Ulaw(pkt.payload), concealed: false, received: pkt.received });
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<PhoneFrame>> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Poll::Ready(Some(f));
            }
            match self.inner.rx.poll_recv(cx) {
                Poll::Ready(Some(pkt)) => self.handle_packet(pkt),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Stream for PhoneStream {
    type Item = PhoneFrame;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PhoneFrame>> {
        self.get_mut().poll_frame(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tone generator: `n` samples of `freq` Hz at `rate`, amplitude `amp`, starting at sample `start`.
    pub fn tone(freq: f64, rate: u32, start: usize, n: usize, amp: f64) -> Vec<i16> {
        (start..start + n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16)
            .collect()
    }

    /// Dominant frequency by zero-crossing counting with interpolation.
    pub fn zero_cross_freq(s: &[i16], rate: u32) -> f64 {
        let mut first = None;
        let mut last = 0.0;
        let mut count = 0;
        for i in 1..s.len() {
            let (a, b) = (s[i - 1] as f64, s[i] as f64);
            if a < 0.0 && b >= 0.0 {
                let t = (i - 1) as f64 + (-a) / (b - a);
                if first.is_none() {
                    first = Some(t);
                } else {
                    count += 1;
                }
                last = t;
            }
        }
        match first {
            Some(f) if count > 0 => count as f64 * rate as f64 / (last - f),
            _ => 0.0,
        }
    }

    fn roundtrip(enc_rate: u32, dec_rate: u32) {
        let mut enc = OpusEncoder::new(enc_rate, 5, false).unwrap();
        enc.configure(None, false).unwrap();
        let mut dec = OpusDecoder::new(dec_rate).unwrap();
        let n = samples_per_frame(enc_rate);
        let mut out = Vec::new();
        for f in 0..50 {
            let pcm = tone(440.0, enc_rate, f * n, n, 10_000.0);
            let pkt = enc.encode_frame(&pcm).unwrap().to_vec();
            assert!(pkt.len() > 2 && pkt.len() < 400, "packet size {}", pkt.len());
            let d = dec.decode(&pkt).unwrap();
            assert_eq!(d.len(), samples_per_frame(dec_rate));
            out.extend(d);
        }
        // Skip the codec's start-up (first 200 ms).
        let tail = &out[out.len() / 2..];
        let f = zero_cross_freq(tail, dec_rate);
        assert!((f - 440.0).abs() < 5.0, "{enc_rate}->{dec_rate}: got {f} Hz");
        let rms = (tail.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        let expected = 10_000.0 / 2f64.sqrt();
        assert!((rms / expected - 1.0).abs() < 0.2, "{enc_rate}->{dec_rate}: rms {rms} vs {expected}");
    }

    #[test]
    fn opus_roundtrip_8k() {
        roundtrip(8_000, 8_000);
    }

    #[test]
    fn opus_roundtrip_48k() {
        roundtrip(48_000, 48_000);
    }

    #[test]
    fn opus_roundtrip_8k_in_48k_out_and_back() {
        roundtrip(8_000, 48_000);
        roundtrip(48_000, 8_000);
        roundtrip(16_000, 24_000);
    }

    #[test]
    fn rejects_bad_rates_and_frames() {
        assert!(matches!(OpusEncoder::new(44_100, 5, false), Err(RoomError::InvalidSampleRate(44_100))));
        assert!(OpusDecoder::new(11_025).is_err());
        let mut enc = OpusEncoder::new(8_000, 5, false).unwrap();
        assert!(enc.encode_frame(&[0; 100]).is_err());
    }

    #[test]
    fn malformed_packets_do_not_panic() {
        let mut dec = OpusDecoder::new(8_000).unwrap();
        assert!(dec.decode(&[]).is_err());
        // Code 3 packet with an absurd frame count.
        let _ = dec.decode(&[0xff, 0xff, 0xff]);
        let _ = dec.decode(&[0x03; 7]);
        for seed in 0..200u32 {
            let junk: Vec<u8> = (0..(seed % 60 + 1)).map(|i| (i * 31 + seed * 17) as u8).collect();
            let _ = dec.decode(&junk);
        }
        assert_eq!(dec.conceal().unwrap().len(), 160);
    }

    #[test]
    fn dtx_suppresses_silence() {
        let mut enc = OpusEncoder::new(16_000, 5, true).unwrap();
        let silence = vec![0i16; 320];
        let mut small = 0;
        for _ in 0..50 {
            if enc.encode_frame(&silence).unwrap().len() <= 2 {
                small += 1;
            }
        }
        assert!(small > 30, "only {small} DTX frames");
    }

    #[test]
    fn audio_level_range() {
        assert_eq!(audio_level(&[0; 160]), 127);
        let loud = tone(440.0, 8000, 0, 160, 32767.0);
        assert!(audio_level(&loud) <= 4);
        let quiet = tone(440.0, 8000, 0, 160, 100.0);
        assert!(audio_level(&quiet) > 40);
    }

    #[tokio::test]
    async fn sink_frames_and_counts_drops() {
        let (tx, mut rx) = mpsc::channel(2);
        let opts = AudioTrackOptions { sample_rate: 8_000, ..Default::default() };
        let mut sink = AudioSink::new("TR_x".into(), "cid".into(), &opts, tx).unwrap();
        // 50 ms of audio in odd chunks: 2 whole frames, 10 ms left pending.
        let pcm = tone(440.0, 8000, 0, 400, 8000.0);
        sink.try_push(&pcm[..123]).unwrap();
        sink.try_push(&pcm[123..]).unwrap();
        assert_eq!(sink.pending.len(), 80);
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!(b.rtp_time - a.rtp_time, 960);
        // Queue of 2: the third frame of 3 is dropped and counted.
        let more = tone(440.0, 8000, 400, 480, 8000.0);
        assert_eq!(sink.try_push(&more), Err(PushError::Full));
        assert_eq!(sink.dropped_frames(), 1);
    }

    #[tokio::test]
    async fn pre_encoded_packets_pass_through_with_rtp_time_and_talkspurts() {
        let (tx, mut rx) = mpsc::channel(4);
        let opts = AudioTrackOptions { sample_rate: 16_000, ..Default::default() };
        let mut sink = AudioSink::new("TR_x".into(), "cid".into(), &opts, tx).unwrap();
        let mut enc = OpusEncoder::new(16_000, 5, false).unwrap();
        let pkt = enc.encode_frame(&tone(440.0, 16_000, 0, 320, 8000.0)).unwrap().to_vec();
        sink.try_push_opus(&pkt).unwrap();
        sink.try_push_opus(&[]).unwrap(); // a DTX pause of one frame
        sink.try_push_opus(&pkt).unwrap();
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!(a.payload, pkt);
        assert!(!a.talkspurt_start);
        assert_eq!(b.rtp_time - a.rtp_time, 2 * 960, "the pause advanced the clock");
        assert!(b.talkspurt_start, "first packet after the pause marks a talkspurt");
        assert_eq!(sink.stats().frames_dtx.load(Ordering::Relaxed), 1);
        assert!(rx.try_recv().is_err());
    }

    /// PCMU/PCMA tracks (livekit-server ≥ 1.9.1 forwards them; SIP participants publish them)
    /// are decoded and brought to the stream's rate, lost packets filled with silence.
    #[tokio::test]
    async fn g711_tracks_are_decoded_at_the_asked_rate() {
        for (codec, encode) in [(AudioCodec::Pcmu, ::proto::g711::ulaw_encode as fn(i16) -> u8), (AudioCodec::Pcma, ::proto::g711::alaw_encode)] {
            let shared = Arc::new(TrackShared::default());
            let track = RemoteAudioTrack {
                sid: "TR_g".into(),
                name: "phone".into(),
                participant_identity: "sip".into(),
                participant_sid: "PA_s".into(),
                shared: shared.clone(),
            };
            let mut s8 = track.stream(8_000).unwrap();
            let mut s16 = track.stream(16_000).unwrap();
            // 1 s of 440 Hz in 20 ms PCMU packets, packet 10 lost.
            for k in 0..50usize {
                if k == 10 {
                    continue;
                }
                let payload: Vec<u8> = tone(440.0, 8_000, k * 160, 160, 8000.0).into_iter().map(encode).collect();
                shared.dispatch(IncomingAudio { codec, rtp_time: 5_000 + k as u64 * 960, payload: payload.into(), received: Instant::now() });
            }
            let mut pcm8 = Vec::new();
            let mut concealed = 0;
            for _ in 0..50 {
                let f = s8.recv().await.unwrap();
                assert_eq!((f.sample_rate, f.samples.len()), (8_000, 160));
                concealed += f.concealed as usize;
                pcm8.extend(f.samples);
            }
            assert_eq!(concealed, 1, "{codec:?}: the lost packet");
            let f = zero_cross_freq(&pcm8[2000..], 8_000);
            assert!((f - 440.0).abs() < 5.0, "{codec:?}: {f} Hz");
            let mut pcm16 = Vec::new();
            while pcm16.len() < 16_000 * 3 / 4 {
                let f = s16.recv().await.unwrap();
                assert_eq!(f.sample_rate, 16_000);
                pcm16.extend(f.samples);
            }
            let f = zero_cross_freq(&pcm16[4000..], 16_000);
            assert!((f - 440.0).abs() < 5.0, "{codec:?} at 16 kHz: {f} Hz");
            assert_eq!(s8.decode_errors(), 0);
        }
    }

    /// A PCMU track sends the phone's μ-law as it is: 20 ms packets cut from any chunking,
    /// RTP time at 8 kHz, no codec state; an Opus sink takes no μ-law at 16 kHz.
    #[tokio::test]
    async fn pcmu_sink_passes_ulaw_through() {
        let (tx, mut rx) = mpsc::channel(8);
        let opts = AudioTrackOptions { sample_rate: 8_000, codec: AudioCodec::Pcmu, ..Default::default() };
        let mut sink = AudioSink::new("TR_u".into(), "cid".into(), &opts, tx).unwrap();
        let ulaw: Vec<u8> = tone(440.0, 8_000, 0, 480, 8000.0).into_iter().map(::proto::g711::ulaw_encode).collect();
        sink.try_push_ulaw_at(&ulaw[..160], Instant::now()).unwrap();
        sink.try_push_ulaw_at(&ulaw[160..250], Instant::now()).unwrap();
        sink.try_push_ulaw_at(&ulaw[250..], Instant::now()).unwrap();
        let frames: Vec<OutgoingAudio> = (0..3).map(|_| rx.try_recv().unwrap()).collect();
        assert!(rx.try_recv().is_err());
        for (k, f) in frames.iter().enumerate() {
            assert_eq!(f.codec, AudioCodec::Pcmu);
            assert_eq!(f.payload, ulaw[k * 160..(k + 1) * 160], "frame {k} is the input, byte for byte");
            assert_eq!(f.rtp_time - frames[0].rtp_time, k as u64 * 160, "8 kHz RTP clock");
            assert!(f.audio_level < 40, "level of a loud tone: {}", f.audio_level);
        }
        assert_eq!(sink.stats().frames_encoded.load(Ordering::Relaxed), 3);
        // PCM into a PCMU track is encoded; Opus packets are refused.
        sink.try_push(&tone(440.0, 8_000, 0, 160, 8000.0)).unwrap();
        assert_eq!(rx.try_recv().unwrap().payload, ulaw[..160]);
        assert_eq!(sink.try_push_opus(&[1, 2, 3]), Err(PushError::WrongCodec));
        // G.711 needs 8 kHz; an Opus sink at 16 kHz cannot take μ-law.
        let (tx, _rx) = mpsc::channel(8);
        assert!(AudioSink::new("TR_u".into(), "cid".into(), &AudioTrackOptions { sample_rate: 16_000, codec: AudioCodec::Pcmu, ..Default::default() }, tx.clone()).is_err());
        let mut opus16 = AudioSink::new("TR_o".into(), "cid".into(), &AudioTrackOptions { sample_rate: 16_000, ..Default::default() }, tx).unwrap();
        assert_eq!(opus16.try_push_ulaw_at(&ulaw, Instant::now()), Err(PushError::WrongCodec));
    }

    /// μ-law into an 8 kHz Opus track is decoded and encoded (the Opus phone leg).
    #[tokio::test]
    async fn opus_sink_takes_ulaw() {
        let (tx, mut rx) = mpsc::channel(8);
        let opts = AudioTrackOptions { sample_rate: 8_000, ..Default::default() };
        let mut sink = AudioSink::new("TR_o".into(), "cid".into(), &opts, tx).unwrap();
        let ulaw: Vec<u8> = tone(440.0, 8_000, 0, 320, 8000.0).into_iter().map(::proto::g711::ulaw_encode).collect();
        sink.try_push_ulaw_at(&ulaw, Instant::now()).unwrap();
        let (a, b) = (rx.try_recv().unwrap(), rx.try_recv().unwrap());
        assert_eq!((a.codec, b.rtp_time - a.rtp_time), (AudioCodec::Opus, 960));
        assert!(a.payload.len() > 2 && a.payload.len() < 200);
    }

    /// The phone's view of a PCMU track is its bytes as they came, losses filled with μ-law
    /// silence and late packets dropped; an Opus track comes decoded at 8 kHz.
    #[tokio::test]
    async fn phone_stream_forwards_pcmu_and_decodes_opus() {
        let shared = Arc::new(TrackShared::default());
        let track = RemoteAudioTrack { sid: "TR_p".into(), name: "agent".into(), participant_identity: "a".into(), participant_sid: "PA_a".into(), shared: shared.clone() };
        let mut phone = track.phone_stream(16).unwrap();
        let packets: Vec<Arc<[u8]>> = (0..4).map(|k| Arc::<[u8]>::from(vec![k as u8 + 1; 160])).collect();
        for k in [0usize, 1, 3] {
            shared.dispatch(IncomingAudio { codec: AudioCodec::Pcmu, rtp_time: 9_600 + k as u64 * 960, payload: packets[k].clone(), received: Instant::now() });
        }
        // A duplicate of packet 1 arrives late.
        shared.dispatch(IncomingAudio { codec: AudioCodec::Pcmu, rtp_time: 9_600 + 960, payload: packets[1].clone(), received: Instant::now() });
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(phone.recv().await.unwrap());
        }
        assert_eq!(got[0].audio, PhoneAudio::Ulaw(packets[0].clone()));
        assert!(matches!(&got[0].audio, PhoneAudio::Ulaw(p) if Arc::ptr_eq(p, &packets[0])), "the very bytes, not a copy");
        assert_eq!(got[1].audio, PhoneAudio::Ulaw(packets[1].clone()));
        assert_eq!((got[2].concealed, &got[2].audio), (true, &PhoneAudio::Ulaw(vec![0xff; 160].into())));
        assert_eq!(got[3].audio, PhoneAudio::Ulaw(packets[3].clone()));
        // Opus from another track comes as 8 kHz PCM.
        let shared = Arc::new(TrackShared::default());
        let track = RemoteAudioTrack { shared: shared.clone(), ..track };
        let mut phone = track.phone_stream(16).unwrap();
        let mut enc = OpusEncoder::new(48_000, 5, false).unwrap();
        let pkt = Arc::<[u8]>::from(enc.encode_frame(&tone(440.0, 48_000, 0, 960, 8000.0)).unwrap());
        shared.dispatch(IncomingAudio { codec: AudioCodec::Opus, rtp_time: 0, payload: pkt, received: Instant::now() });
        shared.dispatch(IncomingAudio { codec: AudioCodec::Pcmu, rtp_time: 960, payload: Arc::from(vec![]), received: Instant::now() });
        let f = phone.recv().await.unwrap();
        assert!(matches!(&f.audio, PhoneAudio::Pcm(s) if s.len() == 160));
        shared.close();
        assert!(phone.recv().await.is_none());
        assert_eq!(phone.decode_errors(), 1, "the empty PCMU packet");
    }

    #[tokio::test]
    async fn stream_decodes_conceals_and_drops() {
        let shared = Arc::new(TrackShared::default());
        let track = RemoteAudioTrack {
            sid: "TR_a".into(),
            name: "a".into(),
            participant_identity: "p".into(),
            participant_sid: "PA_p".into(),
            shared: shared.clone(),
        };
        let mut stream = track.stream_with_capacity(8_000, 4).unwrap();
        let mut enc = OpusEncoder::new(48_000, 5, false).unwrap();
        let mut pkts = Vec::new();
        for f in 0..6 {
            let pcm = tone(440.0, 48_000, f * 960, 960, 8000.0);
            pkts.push(Arc::<[u8]>::from(enc.encode_frame(&pcm).unwrap()));
        }
        // Frames 0, 1, then 4 (2 and 3 lost -> concealed).
        shared.dispatch(IncomingAudio { codec: AudioCodec::Opus, rtp_time: 1000, payload: pkts[0].clone(), received: Instant::now() });
        shared.dispatch(IncomingAudio { codec: AudioCodec::Opus, rtp_time: 1960, payload: pkts[1].clone(), received: Instant::now() });
        shared.dispatch(IncomingAudio { codec: AudioCodec::Opus, rtp_time: 1000 + 4 * 960, payload: pkts[4].clone(), received: Instant::now() });
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(stream.recv().await.unwrap());
        }
        assert_eq!(got.iter().map(|f| f.concealed).collect::<Vec<_>>(), vec![false, false, true, true, false]);
        assert!(got.iter().all(|f| f.samples.len() == 160 && f.sample_rate == 8000));
        assert_eq!(got[3].rtp_timestamp, 1000 + 3 * 960);
        // Slow consumer: capacity 4, 6 packets -> 2 dropped.
        for i in 0..6u64 {
            shared.dispatch(IncomingAudio { codec: AudioCodec::Opus, rtp_time: 1000 + (5 + i) * 960, payload: pkts[0].clone(), received: Instant::now() });
        }
        assert_eq!(stream.dropped_packets(), 2);
        shared.close();
        let mut n = 0;
        while stream.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
    }
}
