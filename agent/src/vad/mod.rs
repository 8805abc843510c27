//! Voice activity: is the caller speaking? Two detectors behind one [`SpeechDetector`] trait:
//!
//! * [`silero`]: Silero VAD (the field's standard, as LiveKit Agents and pipecat ship it), its
//!   16 kHz network run in pure Rust on the weights the PyPI `silero-vad` wheel ships
//!   (`scripts/models.sh silero`). Noise, hum, breath and keypad tones are not speech to it.
//! * [`energy`]: the level above an adaptive noise floor. Cheap, needs no model, and takes a
//!   noise burst for speech: the fallback when the Silero weights are not there.
//!
//! Both cut speech with the same onset (`min_speech_ms`) and hangover (`end_of_speech_ms`)
//! rules, so the conversation and the recognisers see the same edges whichever runs.

pub mod energy;
pub mod silero;

use std::path::PathBuf;
use std::sync::Arc;

pub use energy::{level_dbfs, Vad, VadConfig};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VadEvent {
    /// Speech began `onset_ms` ago (the frames that confirmed it).
    SpeechStart { onset_ms: u32 },
    /// Speech ended `hangover_ms` ago, after `speech_ms` of speech.
    SpeechEnd { speech_ms: u32 },
}

/// What the call's detector made of one frame, handed to a recogniser with that frame so it can
/// cut utterances on the same edges without running a second detector (one Silero per call).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceActivity {
    pub edge: Option<VadEvent>,
    pub in_speech: bool,
    /// Unvoiced time at the end of the current speech (0 when not in speech).
    pub silence_ms: u32,
}

impl VoiceActivity {
    /// Pushes `frame` through `detector` and reads the result.
    pub fn read(detector: &mut dyn SpeechDetector, frame: &[i16], rate: u32) -> VoiceActivity {
        let edge = detector.push(frame, rate);
        VoiceActivity { edge, in_speech: detector.in_speech(), silence_ms: detector.silence_ms() }
    }
}

/// A voice activity detector on a stream of frames.
pub trait SpeechDetector: Send {
    /// One frame (any length; its duration comes from `rate`).
    fn push(&mut self, frame: &[i16], rate: u32) -> Option<VadEvent>;
    fn in_speech(&self) -> bool;
    /// Unvoiced time at the end of the current speech (0 when not in speech).
    fn silence_ms(&self) -> u32;
    fn config(&self) -> &VadConfig;
}

impl SpeechDetector for Vad {
    fn push(&mut self, frame: &[i16], rate: u32) -> Option<VadEvent> {
        Vad::push(self, frame, rate)
    }
    fn in_speech(&self) -> bool {
        Vad::in_speech(self)
    }
    fn silence_ms(&self) -> u32 {
        Vad::silence_ms(self)
    }
    fn config(&self) -> &VadConfig {
        Vad::config(self)
    }
}

/// Which detector calls get, made once per process (the Silero weights are loaded once).
#[derive(Clone)]
pub enum Detector {
    Energy,
    Silero(Arc<silero::SileroModel>),
}

impl Detector {
    /// `choice`: `auto` (Silero when its weights are found, else energy), `silero` (required) or
    /// `energy`. The weights: `SILERO_VAD_MODEL`, else `models/silero-vad/silero_vad_16k_op15.onnx`.
    pub fn choose(choice: &str, model: Option<PathBuf>) -> Result<Detector, String> {
        let path = model.unwrap_or_else(|| PathBuf::from(silero::DEFAULT_MODEL));
        match choice {
            "energy" => Ok(Detector::Energy),
            "silero" => silero::SileroModel::load(&path).map(|m| Detector::Silero(Arc::new(m))),
            "auto" => match silero::SileroModel::load(&path) {
                Ok(m) => Ok(Detector::Silero(Arc::new(m))),
                Err(e) => {
                    tracing::warn!(error = %e, "Silero VAD weights not found; using the energy detector (scripts/models.sh silero)");
                    Ok(Detector::Energy)
                }
            },
            other => Err(format!("--vad {other:?}: use auto, silero or energy")),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Detector::Energy => "energy",
            Detector::Silero(_) => "silero",
        }
    }

    /// A detector for one stream.
    pub fn make(&self, cfg: VadConfig) -> Box<dyn SpeechDetector> {
        match self {
            Detector::Energy => Box::new(Vad::new(cfg)),
            Detector::Silero(m) => Box::new(silero::SileroVad::new(m.clone(), cfg)),
        }
    }
}
