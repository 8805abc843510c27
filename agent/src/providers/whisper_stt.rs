//! Offline STT with OpenAI Whisper (tiny.en by default) on CTranslate2 through `ct2rs`, behind
//! the cargo feature `whisper`; `scripts/models.sh whisper` unpacks the model.
//!
//! Why: pocketsphinx ([`super::offline_stt`]) is only reliable on the agent file's expected
//! phrases; Whisper hears open speech (names, places, free answers) with no keys and no network.
//!
//! Whisper works on whole utterances, so it plugs into the same loop as pocketsphinx
//! ([`UtteranceSession`]): an energy VAD cuts utterances (with pre-roll), `finalize` ends one
//! early, and each is recognised in one pass on the session's own thread. The model is loaded
//! once per process and shared by every call (CTranslate2's model is `Send + Sync` and queues
//! concurrent requests itself).
//!
//! The front end is ours, not `ct2rs::Whisper`'s: that one normalises every 10 ms frame on its
//! own, fills the rest of the 30 s window with values that mean sound rather than silence, and
//! prompts English-only models with `<|en|><|transcribe|>`, none of which Whisper was trained
//! on (tiny.en then heard "Peter" as "Beaker" and silence as "Visitor"). Here the log-mel spectrogram is Whisper's own recipe (30 s window, one
//! normalisation over all of it) and the prompt fits the model. Whisper still invents text for
//! noise ("[BLANK_AUDIO]", "(music)", "Thank you."): results the model itself rates as
//! no speech are dropped, bracketed non-speech is removed, and empty results give no `Final`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use ct2rs::sys::{StorageView, Whisper, WhisperOptions};
use ct2rs::tokenizers::hf::Tokenizer;

use super::utterance::{UtteranceRecognizer, UtteranceSession};
use super::{ProviderError, SttProvider, SttSession};
use crate::vad::{level_dbfs, Detector, VadConfig};

const VENDOR: &str = "whisper";
pub const RATE: u32 = 16_000;
/// Where `scripts/models.sh whisper` puts the model (relative to the working directory).
pub const DEFAULT_MODEL_DIR: &str = "models/whisper-tiny.en/model";
/// Files read from the model directory.
const MODEL_FILES: [&str; 3] = ["model.bin", "config.json", "tokenizer.json"];

// Whisper's front end: 25 ms Hann windows every 10 ms over a 30 s chunk.
const N_FFT: usize = 400;
const HOP: usize = 160;
const CHUNK_SAMPLES: usize = 30 * RATE as usize;
const CHUNK_FRAMES: usize = CHUNK_SAMPLES / HOP;

/// Drop a result the model gives more than this probability of being no speech (Whisper's
/// own threshold). Whisper also keeps such a result when its words are likely (average
/// log-probability above -1), for long recordings; on a VAD-cut utterance that let silence
/// through as "you" (no speech 0.95, log-probability -0.76), while espeak phrases, also
/// through the phone path, scored 0.08-0.15.
const NO_SPEECH_PROB: f32 = 0.6;
/// Longest "previous text" prompt, in tokens (Whisper allows up to 223: half its text context).
pub const MAX_CONTEXT_TOKENS: usize = 200;
/// Utterances with no 20 ms frame louder than this are not worth a model run.
const AUDIBLE_DBFS: f32 = -60.0;

/// A loaded Whisper model (CTranslate2), shared by every call of the process.
pub struct WhisperModel {
    whisper: Whisper,
    tokenizer: Tokenizer,
    /// Decoder prompt: `<|startoftranscript|>` (+ `<|en|><|transcribe|>` if multilingual).
    prompt: Vec<&'static str>,
    mel: MelFilters,
    options: WhisperOptions,
    dir: PathBuf,
}

// The model is shared across call threads: make sure ct2rs keeps it thread-safe.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<WhisperModel>();
};

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("dir", &self.dir)
            .finish()
    }
}

fn model_error(msg: String) -> ProviderError {
    ProviderError::Other {
        vendor: VENDOR,
        msg,
    }
}

impl WhisperModel {
    /// Loads the model in `dir`, or returns the one this process already loaded from there.
    pub fn load(dir: &Path) -> Result<Arc<WhisperModel>, ProviderError> {
        static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<WhisperModel>>>> = OnceLock::new();
        for f in MODEL_FILES {
            if !dir.join(f).is_file() {
                return Err(model_error(format!(
                    "no Whisper model in {} ({f} missing): run `scripts/models.sh whisper` \
                     or set WHISPER_MODEL_DIR",
                    dir.display()
                )));
            }
        }
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        // Held while loading, so calls racing at start-up load it once.
        let mut loaded = LOADED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = loaded.get(&key) {
            return Ok(m.clone());
        }
        let failed = |e: anyhow::Error| {
            model_error(format!(
                "loading the Whisper model in {}: {e:#}",
                dir.display()
            ))
        };
        let config = ct2rs::sys::Config {
            // tiny.en ships as float16, which CPUs here run as float32 anyway (int8 through
            // ruy measured no faster).
            compute_type: ct2rs::sys::ComputeType::FLOAT32,
            ..Default::default()
        };
        let whisper = Whisper::new(&key, config).map_err(failed)?;
        let tokenizer = Tokenizer::new(&key).map_err(failed)?;
        let prompt = if whisper.is_multilingual() {
            vec![
                "<|startoftranscript|>",
                "<|en|>",
                "<|transcribe|>",
                "<|notimestamps|>",
            ]
        } else {
            vec!["<|startoftranscript|>", "<|notimestamps|>"]
        };
        let model = Arc::new(WhisperModel {
            mel: MelFilters::new(whisper.n_mels()),
            whisper,
            tokenizer,
            prompt,
            options: WhisperOptions {
                // Beam 5 (Whisper's default): on 12 espeak phrases through the phone path, word
                // errors 23.5 % against 27 % greedy, for about the same time (the 30 s encoder
                // pass dominates).
                beam_size: 5,
                return_no_speech_prob: true,
                ..Default::default()
            },
            dir: key.clone(),
        });
        loaded.insert(key, model.clone());
        Ok(model)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Text of one utterance (mono PCM16, 16 kHz) after [`clean_transcript`]; `""` for none.
    pub fn transcribe(&self, pcm16k: &[i16]) -> Result<String, String> {
        self.transcribe_with(pcm16k, &[])
    }

    /// Prompt tokens for `text` as previous context: at most [`MAX_CONTEXT_TOKENS`], the last
    /// ones when longer (Whisper keeps the most recent context).
    pub fn context_tokens(&self, text: &str) -> Vec<String> {
        let text = format!(" {}", text.trim());
        let mut tokens = match self.tokenizer.encode(text.as_str(), false) {
            Ok(e) => e.get_tokens().to_vec(),
            Err(e) => {
                tracing::warn!(error = %e, "whisper: context not tokenised; recognising without it");
                return Vec::new();
            }
        };
        if tokens.len() > MAX_CONTEXT_TOKENS {
            tokens.drain(..tokens.len() - MAX_CONTEXT_TOKENS);
        }
        tokens
    }

    /// [`WhisperModel::transcribe`] primed with `context` tokens (from [`Self::context_tokens`]).
    pub fn transcribe_with(&self, pcm16k: &[i16], context: &[String]) -> Result<String, String> {
        let mut text = Vec::new();
        for chunk in pcm16k.chunks(CHUNK_SAMPLES) {
            // ct2rs and CTranslate2 are not ours: a panic there must not end the call.
            let part = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.transcribe_chunk(chunk, context)
            }))
            .map_err(|_| "whisper panicked on an utterance".to_string())??;
            if !part.is_empty() {
                text.push(part);
            }
        }
        Ok(text.join(" "))
    }

    /// One chunk of at most 30 s.
    fn transcribe_chunk(&self, pcm: &[i16], context: &[String]) -> Result<String, String> {
        let loudest = pcm.chunks(320).map(level_dbfs).fold(f32::MIN, f32::max);
        if loudest < AUDIBLE_DBFS {
            return Ok(String::new());
        }
        let mut features = self.mel.log_mel(pcm);
        let shape = [1, self.mel.n_mels, CHUNK_FRAMES];
        let features = StorageView::new(&shape, &mut features, Default::default())
            .map_err(|e| format!("whisper features: {e:#}"))?;
        let mut prompt: Vec<&str> = Vec::with_capacity(context.len() + 5);
        if !context.is_empty() {
            prompt.push("<|startofprev|>");
            prompt.extend(context.iter().map(String::as_str));
        }
        prompt.extend(self.prompt.iter().copied());
        let results = self
            .whisper
            .generate(&features, &[prompt], &self.options)
            .map_err(|e| format!("whisper: {e:#}"))?;
        let Some(r) = results.into_iter().next() else {
            return Ok(String::new());
        };
        if r.no_speech_prob > NO_SPEECH_PROB {
            return Ok(String::new());
        }
        let ids: Vec<u32> = r
            .sequences_ids
            .first()
            .map(|s| s.iter().filter_map(|&i| u32::try_from(i).ok()).collect())
            .unwrap_or_default();
        let raw = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| format!("whisper tokens: {e}"))?;
        Ok(clean_transcript(&raw))
    }
}

/// Whisper's log-mel filter bank (librosa's Slaney mel scale and area normalisation), kept
/// sparse: each band's first FFT bin and its weights.
struct MelFilters {
    n_mels: usize,
    bands: Vec<(usize, Vec<f32>)>,
    window: Vec<f32>,
    fft: Arc<dyn realfft::RealToComplex<f32>>,
}

fn hz_to_mel(hz: f64) -> f64 {
    // Slaney: linear below 1 kHz, logarithmic above.
    let step = 6.4f64.ln() / 27.0;
    if hz < 1000.0 {
        hz * 3.0 / 200.0
    } else {
        15.0 + (hz / 1000.0).ln() / step
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let step = 6.4f64.ln() / 27.0;
    if mel < 15.0 {
        mel * 200.0 / 3.0
    } else {
        1000.0 * ((mel - 15.0) * step).exp()
    }
}

impl MelFilters {
    fn new(n_mels: usize) -> MelFilters {
        let n_bins = N_FFT / 2 + 1;
        let bin_hz = |k: usize| k as f64 * RATE as f64 / N_FFT as f64;
        let top = hz_to_mel(RATE as f64 / 2.0);
        // n_mels + 2 edges, evenly spaced in mel.
        let edges: Vec<f64> = (0..n_mels + 2)
            .map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64))
            .collect();
        let bands = (0..n_mels)
            .map(|m| {
                let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
                let norm = 2.0 / (hi - lo);
                let w: Vec<f32> = (0..n_bins)
                    .map(|k| {
                        let f = bin_hz(k);
                        let rise = (f - lo) / (mid - lo);
                        let fall = (hi - f) / (hi - mid);
                        (rise.min(fall).max(0.0) * norm) as f32
                    })
                    .collect();
                let first = w.iter().position(|&x| x > 0.0).unwrap_or(0);
                let last = w.iter().rposition(|&x| x > 0.0).map_or(first, |l| l + 1);
                (first, w[first..last.max(first)].to_vec())
            })
            .collect();
        let tau = std::f64::consts::TAU;
        MelFilters {
            n_mels,
            bands,
            // Periodic Hann, as torch.hann_window.
            window: (0..N_FFT)
                .map(|n| (0.5 - 0.5 * (tau * n as f64 / N_FFT as f64).cos()) as f32)
                .collect(),
            fft: realfft::RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
        }
    }

    /// `n_mels × 3000` features of up to 30 s of audio, zero-padded to 30 s, as Whisper's
    /// `log_mel_spectrogram`: centred STFT (reflected at the start), power, mel, log10 floored
    /// at 1e-10, clamped to 8 below the maximum, scaled `(x + 4) / 4`.
    fn log_mel(&self, pcm: &[i16]) -> Vec<f32> {
        let x: Vec<f32> = pcm
            .iter()
            .take(CHUNK_SAMPLES)
            .map(|&s| f32::from(s) / 32_768.0)
            .collect();
        let sample = |i: isize| -> f32 {
            let i = i.unsigned_abs(); // reflect: x[-i] = x[i]
            x.get(i).copied().unwrap_or(0.0)
        };
        // Frames past the audio see only padding: power 0, log10 floor -10.
        let mut out = vec![-10.0f32; self.n_mels * CHUNK_FRAMES];
        let audible = ((x.len() + N_FFT / 2) / HOP + 1).min(CHUNK_FRAMES);
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f32; N_FFT / 2 + 1];
        for t in 0..audible {
            let start = (t * HOP) as isize - (N_FFT / 2) as isize;
            for (n, v) in frame.iter_mut().enumerate() {
                *v = sample(start + n as isize) * self.window[n];
            }
            // Lengths come from the plan itself, so this cannot fail.
            if self.fft.process_with_scratch(&mut frame, &mut spectrum, &mut scratch).is_err() {
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, (first, w)) in self.bands.iter().enumerate() {
                let e: f32 = w.iter().zip(&power[*first..]).map(|(a, b)| a * b).sum();
                out[m * CHUNK_FRAMES + t] = e.max(1e-10).log10();
            }
        }
        let floor = out.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) - 8.0;
        for v in &mut out {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        out
    }
}

/// Whisper's text minus what is not speech: `[BLANK_AUDIO]`, `(music)`, `*laughs*`, `♪`,
/// `<|…|>` tokens; whitespace collapsed. `""` when no word is left. A bracket that never closes
/// is kept as text.
pub fn clean_transcript(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    // Inside a non-speech span: its closing mark and what it held so far.
    let mut span: Option<(char, String)> = None;
    for c in raw.chars() {
        match span.as_mut() {
            Some((end, _)) if c == *end => span = None,
            Some((_, held)) => held.push(c),
            None => match c {
                '[' => span = Some((']', c.to_string())),
                '(' => span = Some((')', c.to_string())),
                '{' => span = Some(('}', c.to_string())),
                '<' => span = Some(('>', c.to_string())),
                '*' => span = Some(('*', c.to_string())),
                '♪' | '♫' | '♬' | '♩' => out.push(' '),
                _ => out.push(c),
            },
        }
    }
    if let Some((_, held)) = span {
        out.push_str(&held);
    }
    if !out.chars().any(char::is_alphanumeric) {
        return String::new();
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One call's recogniser: the shared model.
struct Recognizer {
    model: Arc<WhisperModel>,
    context: Arc<Vec<String>>,
}

impl UtteranceRecognizer for Recognizer {
    fn recognize(&mut self, pcm16k: &[i16]) -> Result<String, String> {
        self.model.transcribe_with(pcm16k, &self.context)
    }
}

/// Whisper as an [`SttProvider`].
pub struct WhisperStt {
    model: Arc<WhisperModel>,
    vad: VadConfig,
    detector: Detector,
    /// Prompt tokens of the text the caller is expected to say (see [`WhisperStt::expecting`]).
    context: Arc<Vec<String>>,
}

impl WhisperStt {
    /// Cut utterances with this voice activity detector (default: energy).
    pub fn with_detector(mut self, detector: Detector) -> WhisperStt {
        self.detector = detector;
        self
    }

    pub fn new(model: Arc<WhisperModel>, vad: VadConfig) -> WhisperStt {
        WhisperStt { model, vad, detector: Detector::Energy, context: Arc::new(Vec::new()) }
    }

    /// Primes every utterance with `text` as Whisper's "previous text" (`<|startofprev|>`),
    /// the way its prompt carries context across 30 s windows: answers like those in the text
    /// (the agent file's example phrases) are then heard as such. The pocketsphinx phrase
    /// model does the same job for the embedded recogniser.
    pub fn expecting(mut self, text: &str) -> WhisperStt {
        self.context = Arc::new(self.model.context_tokens(text));
        self
    }

    /// The model in `WHISPER_MODEL_DIR` (default [`DEFAULT_MODEL_DIR`]), loaded once per process.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        vad: VadConfig,
        detector: Detector,
    ) -> Result<WhisperStt, ProviderError> {
        let dir = get("WHISPER_MODEL_DIR")
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_MODEL_DIR.to_string());
        Ok(WhisperStt::new(WhisperModel::load(Path::new(&dir))?, vad).with_detector(detector))
    }

    pub fn model(&self) -> &Arc<WhisperModel> {
        &self.model
    }
}

#[async_trait]
impl SttProvider for WhisperStt {
    fn name(&self) -> &'static str {
        VENDOR
    }

    fn input_rate(&self) -> u32 {
        RATE
    }

    async fn start(&self) -> Result<Box<dyn SttSession>, ProviderError> {
        Ok(Box::new(UtteranceSession::spawn(
            VENDOR,
            Recognizer { model: self.model.clone(), context: self.context.clone() },
            self.vad.clone(),
            self.detector.clone(),
        )?))
    }
}
