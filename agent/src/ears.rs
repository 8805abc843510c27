//! The caller's audio on its way into a cascaded conversation: the voice activity detector's
//! edges for the conversation, every frame for the recogniser with the detector's reading of it
//! (one detector per call: utterance recognisers cut on the same edges; its own task, so a slow
//! vendor never blocks the call), and digital silence through Opus DTX pauses (see
//! [`crate::silence_fill`]).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::conversation::Input;
use crate::providers::{ProviderError, SttEvent, SttSession};
use crate::silence_fill::SilenceFill;
use crate::vad::{SpeechDetector, VadEvent, VoiceActivity};

pub enum SttIn {
    /// A frame and what the call's detector made of it.
    Audio(Vec<i16>, VoiceActivity),
    Finalize,
}

/// The recogniser's task: audio in, events out. Ends with an `Error` event when the vendor
/// closes or refuses the stream, so the conversation can apologise and hang up.
pub fn spawn_stt(mut session: Box<dyn SttSession>, mut rx: mpsc::Receiver<SttIn>, tx: mpsc::Sender<SttEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut send_errors = 0u64;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(SttIn::Audio(pcm, activity)) => {
                        if let Err(e) = session.send_audio_with_activity(&pcm, activity).await {
                            send_errors += 1;
                            if send_errors.is_power_of_two() {
                                tracing::warn!(error = %e, count = send_errors, "stt: audio not accepted");
                            }
                            if matches!(e, ProviderError::Connection { .. }) && !e.retryable() {
                                let _ = tx.send(SttEvent::Error(e.to_string())).await;
                                return;
                            }
                        }
                    }
                    Some(SttIn::Finalize) => {
                        if let Err(e) = session.finalize().await {
                            tracing::warn!(error = %e, "stt: finalize failed");
                        }
                    }
                    None => {
                        session.close().await;
                        return;
                    }
                },
                ev = session.next_event() => match ev {
                    Some(ev) => {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        let _ = tx.send(SttEvent::Error("speech recogniser closed".into())).await;
                        return;
                    }
                }
            }
        }
    })
}

/// Voice activity and the recogniser's feed for one call.
pub struct Ears {
    vad: Box<dyn SpeechDetector>,
    stt: mpsc::Sender<SttIn>,
    hangover: Duration,
    rate: u32,
    silence: SilenceFill,
    /// Frames the recogniser's queue refused.
    pub dropped: u64,
}

impl Ears {
    pub fn new(vad: Box<dyn SpeechDetector>, stt: mpsc::Sender<SttIn>, rate: u32) -> Ears {
        let hangover = Duration::from_millis(vad.config().hangover_ms as u64);
        Ears { vad, stt, hangover, rate, silence: SilenceFill::new(), dropped: 0 }
    }

    /// A new track: the DTX clock starts over.
    pub fn reset_track(&mut self) {
        self.silence = SilenceFill::new();
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.silence.next_deadline()
    }

    /// One decoded frame of the caller's track; the conversation's inputs it makes.
    pub fn frame(&mut self, samples: Vec<i16>, rtp_timestamp: u64, now: Instant, out: &mut Vec<Input>) {
        for _ in 0..self.silence.on_frame(rtp_timestamp, now).min(50) {
            self.hear(vec![0; (self.rate / 50) as usize], now, out);
        }
        self.hear(samples, now, out);
    }

    /// The DTX timer: silence up to now.
    pub fn timer(&mut self, now: Instant, out: &mut Vec<Input>) {
        for _ in 0..self.silence.on_timer(now).min(50) {
            self.hear(vec![0; (self.rate / 50) as usize], now, out);
        }
    }

    /// Tell the recogniser to finish the utterance.
    pub fn finalize(&mut self) {
        if self.stt.try_send(SttIn::Finalize).is_err() {
            self.dropped += 1;
        }
    }

    fn hear(&mut self, samples: Vec<i16>, now: Instant, out: &mut Vec<Input>) {
        let activity = VoiceActivity::read(self.vad.as_mut(), &samples, self.rate);
        let ev = activity.edge;
        if self.stt.try_send(SttIn::Audio(samples, activity)).is_err() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(dropped = self.dropped, "recogniser behind; caller audio dropped");
            }
        }
        match ev {
            Some(VadEvent::SpeechStart { .. }) => out.push(Input::SpeechStarted),
            Some(VadEvent::SpeechEnd { .. }) => out.push(Input::SpeechEnded { at: now.checked_sub(self.hangover).unwrap_or(now) }),
            None => {}
        }
    }
}
