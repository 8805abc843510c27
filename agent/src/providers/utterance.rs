//! Utterance-at-a-time recognition for recognisers that decode a whole utterance in one pass
//! (pocketsphinx, Whisper): a thread cuts the caller's audio into utterances with a speech
//! detector (with pre-roll), recognises each, and gives an early transcript after a short pause.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::offline_stt::RATE;
use super::{ProviderError, SttEvent, SttSession};
use crate::vad::{Detector, SpeechDetector, VadConfig, VadEvent, VoiceActivity};

/// Something that turns one whole utterance into text, used by [`UtteranceSession`].
pub trait UtteranceRecognizer: Send + 'static {
    /// `pcm16k`: the utterance, mono PCM16 at 16 kHz. `""` when nothing was recognised.
    fn recognize(&mut self, pcm16k: &[i16]) -> Result<String, String>;
}

enum In {
    /// A frame, with the call's detector's reading of it when the call has one.
    Audio(Vec<i16>, Option<VoiceActivity>),
    Finalize,
}

/// A live stream over an [`UtteranceRecognizer`] running on its own thread.
pub struct UtteranceSession {
    vendor: &'static str,
    tx: Option<mpsc::Sender<In>>,
    rx: mpsc::Receiver<SttEvent>,
}

impl UtteranceSession {
    /// Never blocks the call on a slow decoder: audio is dropped (counted by the caller's logs).
    fn push_audio(&self, msg: In) -> Result<(), ProviderError> {
        let tx = self.tx.as_ref().ok_or(ProviderError::Other {
            vendor: self.vendor,
            msg: "session closed".into(),
        })?;
        match tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ProviderError::Other {
                vendor: self.vendor,
                msg: "decoder is behind; audio dropped".into(),
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ProviderError::Connection {
                vendor: self.vendor,
                msg: "decoder thread ended".into(),
            }),
        }
    }

    /// Starts the recogniser's thread (named `vendor`); `vendor` also names it in errors.
    pub fn spawn(
        vendor: &'static str,
        rec: impl UtteranceRecognizer,
        vad: VadConfig,
        detector: Detector,
    ) -> Result<UtteranceSession, ProviderError> {
        let (in_tx, in_rx) = mpsc::channel::<In>(200);
        let (ev_tx, ev_rx) = mpsc::channel::<SttEvent>(64);
        std::thread::Builder::new()
            .name(vendor.into())
            .spawn(move || run_utterances(rec, vad, detector, in_rx, ev_tx))
            .map_err(|e| ProviderError::Other {
                vendor,
                msg: e.to_string(),
            })?;
        Ok(UtteranceSession {
            vendor,
            tx: Some(in_tx),
            rx: ev_rx,
        })
    }
}

/// Trailing silence kept after the end of speech: the recogniser needs a little to close the
/// last word; the whole hangover (600 ms) only costs decode time and invites phantom words.
const TAIL_KEPT_MS: u32 = 200;

/// Drops the end-of-speech hangover (all but [`TAIL_KEPT_MS`]) from an utterance.
fn trim_hangover(pcm: &mut Vec<i16>, hangover_ms: u32) {
    let drop = (hangover_ms.saturating_sub(TAIL_KEPT_MS) * RATE / 1000) as usize;
    let keep = pcm.len().saturating_sub(drop).max(pcm.len().min(RATE as usize / 5));
    pcm.truncate(keep);
}

/// After this much quiet inside an utterance the speech so far is recognised at once and sent
/// as [`SttEvent::Preflight`]: the conversation can start its reply while the end-of-speech
/// wait runs out. When nothing more is said, that text is the final one (no second decode).
pub const PREFLIGHT_SILENCE_MS: u32 = 200;

/// The recogniser thread. Utterances are cut on the call's detector's edges (or on our own
/// detector's, for audio sent without them) with 300 ms of pre-roll so the first phoneme is kept,
/// or by `finalize`, and recognised in one pass over the whole utterance (for pocketsphinx
/// `full_utt`: batch cepstral normalisation over all of it — measurably more accurate than
/// frame-by-frame decoding with 5prealpha, at ~0.1× real time). A pause of
/// [`PREFLIGHT_SILENCE_MS`] gives an early transcript.
fn run_utterances<R: UtteranceRecognizer>(
    mut rec: R,
    vad: VadConfig,
    detector: Detector,
    mut rx: mpsc::Receiver<In>,
    tx: mpsc::Sender<SttEvent>,
) {
    const PREROLL_MS: usize = 300;
    const MAX_UTT_SECS: usize = 30;
    let vad_cfg = vad;
    // Our own detector, only for audio that comes without the call's reading of it.
    let mut own: Option<Box<dyn SpeechDetector>> = None;
    // Set when an utterance was cut while the caller still spoke: the next one starts at once.
    let mut cut_in_speech = false;
    let mut preroll: std::collections::VecDeque<Vec<i16>> = Default::default();
    let mut preroll_samples = 0usize;
    let mut utt: Option<Vec<i16>> = None;
    // The early transcript of this utterance, while nothing was said after it.
    let mut preflight: Option<String> = None;
    let end_utt = |rec: &mut R, pcm: Vec<i16>, early: Option<String>, tx: &mpsc::Sender<SttEvent>| -> bool {
        let text = match early {
            Some(t) => t,
            None => match rec.recognize(&pcm) {
                Ok(t) => t,
                Err(e) => {
                    let _ = tx.blocking_send(SttEvent::Error(e));
                    return false;
                }
            },
        };
        if !text.is_empty()
            && tx
                .blocking_send(SttEvent::Final {
                    text: text.clone(),
                    confidence: 1.0,
                })
                .is_err()
        {
            return false;
        }
        tx.blocking_send(SttEvent::EndOfTurn { text }).is_ok()
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            In::Audio(pcm, activity) => {
                let activity = match activity {
                    Some(a) => a,
                    None => VoiceActivity::read(own.get_or_insert_with(|| detector.make(vad_cfg.clone())).as_mut(), &pcm, RATE),
                };
                let ev = activity.edge;
                match utt.as_mut() {
                    None => {
                        preroll_samples += pcm.len();
                        preroll.push_back(pcm);
                        while preroll_samples > PREROLL_MS * RATE as usize / 1000 + 320 {
                            if let Some(f) = preroll.pop_front() {
                                preroll_samples -= f.len();
                            }
                        }
                        let restart = std::mem::take(&mut cut_in_speech) && activity.in_speech;
                        if restart || matches!(ev, Some(VadEvent::SpeechStart { .. })) {
                            if tx.blocking_send(SttEvent::SpeechStarted).is_err() {
                                return;
                            }
                            utt = Some(preroll.drain(..).flatten().collect());
                            preroll_samples = 0;
                        }
                    }
                    Some(buf) => {
                        buf.extend_from_slice(&pcm);
                        let too_long = buf.len() >= MAX_UTT_SECS * RATE as usize;
                        let ended = matches!(ev, Some(VadEvent::SpeechEnd { .. }));
                        let silence = activity.silence_ms;
                        if silence == 0 {
                            preflight = None; // more speech: the early text is not the turn
                        }
                        if ended || too_long {
                            let mut pcm = utt.take().unwrap_or_default();
                            if ended {
                                trim_hangover(&mut pcm, vad_cfg.hangover_ms);
                            }
                            if too_long && !ended {
                                cut_in_speech = true;
                            }
                            if !end_utt(&mut rec, pcm, preflight.take().filter(|_| ended), &tx) {
                                return;
                            }
                        } else if silence >= PREFLIGHT_SILENCE_MS && preflight.is_none() {
                            let mut pcm = buf.clone();
                            trim_hangover(&mut pcm, silence);
                            match rec.recognize(&pcm) {
                                Ok(text) => {
                                    if !text.is_empty() && tx.blocking_send(SttEvent::Preflight { text: text.clone() }).is_err() {
                                        return;
                                    }
                                    preflight = Some(text);
                                }
                                Err(e) => tracing::debug!(error = %e, "early recognition failed"),
                            }
                        }
                    }
                }
            }
            In::Finalize => {
                // The call's detector (same settings) saw the end of speech a hangover ago.
                if let Some(mut pcm) = utt.take() {
                    trim_hangover(&mut pcm, vad_cfg.hangover_ms);
                    own = None; // a fresh start for our own detector, if we run one
                    cut_in_speech = true; // the call's detector may still be in that speech
                    if !end_utt(&mut rec, pcm, preflight.take(), &tx) {
                        return;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl SttSession for UtteranceSession {
    async fn send_audio(&mut self, pcm: &[i16]) -> Result<(), ProviderError> {
        self.push_audio(In::Audio(pcm.to_vec(), None))
    }

    async fn send_audio_with_activity(&mut self, pcm: &[i16], activity: VoiceActivity) -> Result<(), ProviderError> {
        self.push_audio(In::Audio(pcm.to_vec(), Some(activity)))
    }

    async fn finalize(&mut self) -> Result<(), ProviderError> {
        let tx = self.tx.as_ref().ok_or(ProviderError::Other {
            vendor: self.vendor,
            msg: "session closed".into(),
        })?;
        tx.send(In::Finalize)
            .await
            .map_err(|_| ProviderError::Connection {
                vendor: self.vendor,
                msg: "decoder thread ended".into(),
            })
    }

    async fn next_event(&mut self) -> Option<SttEvent> {
        self.rx.recv().await
    }

    async fn close(&mut self) {
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangover_is_trimmed_to_a_short_tail() {
        let mut pcm = vec![1i16; RATE as usize * 2]; // 2 s: 1.4 s speech + 600 ms hangover
        trim_hangover(&mut pcm, 600);
        assert_eq!(pcm.len(), RATE as usize * 2 - (400 * RATE / 1000) as usize);
        let mut short = vec![1i16; 1000];
        trim_hangover(&mut short, 600);
        assert_eq!(short.len(), 1000, "never below 200 ms");
    }

    /// Records the length of each utterance it is given.
    struct Lengths(std::sync::mpsc::Sender<usize>);

    impl UtteranceRecognizer for Lengths {
        fn recognize(&mut self, pcm16k: &[i16]) -> Result<String, String> {
            let _ = self.0.send(pcm16k.len());
            Ok("words".into())
        }
    }

    fn reading(edge: Option<VadEvent>, in_speech: bool, silence_ms: u32) -> VoiceActivity {
        VoiceActivity { edge, in_speech, silence_ms }
    }

    /// The utterance is cut where the call's detector says, not where a detector of the
    /// recogniser's own would: the audio here is digital silence, in which no detector finds
    /// speech, so only the edges that come with it can start and end an utterance.
    #[tokio::test]
    async fn utterances_follow_the_calls_detector() {
        let (len_tx, len_rx) = std::sync::mpsc::channel();
        let cfg = VadConfig { margin_db: 9.0, min_dbfs: -45.0, min_speech_ms: 60, hangover_ms: 600 };
        let mut session = UtteranceSession::spawn("test", Lengths(len_tx), cfg, Detector::Energy).unwrap();
        let frame = vec![0i16; 320];
        session.send_audio_with_activity(&frame, reading(None, false, 0)).await.unwrap();
        session.send_audio_with_activity(&frame, reading(Some(VadEvent::SpeechStart { onset_ms: 60 }), true, 0)).await.unwrap();
        for _ in 0..48 {
            session.send_audio_with_activity(&frame, reading(None, true, 0)).await.unwrap();
        }
        session.send_audio_with_activity(&frame, reading(Some(VadEvent::SpeechEnd { speech_ms: 400 }), false, 0)).await.unwrap();
        let mut events = Vec::new();
        while let Ok(Some(ev)) = tokio::time::timeout(std::time::Duration::from_secs(5), session.next_event()).await {
            let end = matches!(ev, SttEvent::EndOfTurn { .. });
            events.push(ev);
            if end {
                break;
            }
        }
        assert!(matches!(events.first(), Some(SttEvent::SpeechStarted)), "{events:?}");
        assert!(matches!(events.last(), Some(SttEvent::EndOfTurn { text }) if text == "words"), "{events:?}");
        // 300 ms of pre-roll (here the one frame before the start, 20 ms) + 50 frames, less the
        // hangover beyond the 200 ms tail kept: 51 frames of 320 samples − 400 ms.
        assert_eq!(len_rx.recv().unwrap(), 51 * 320 - 400 * 16);

        // Audio sent without a reading is cut by the recogniser's own detector: silence is none.
        for _ in 0..50 {
            session.send_audio(&frame).await.unwrap();
        }
        session.close().await;
        while session.next_event().await.is_some() {}
        assert!(len_rx.try_recv().is_err(), "no utterance in silence");
    }
}
