//! Offline STT: CMU pocketsphinx (Debian `libpocketsphinx3` 5prealpha + `pocketsphinx-en-us`)
//! through a minimal FFI, 16 kHz.
//!
//! The language model is made at start from the agent file: every expected phrase (field
//! examples, choices, intents, `[stt] phrases`) becomes the corpus of a small bigram ARPA model
//! (absolute discounting, backoff to add-½ unigrams over the corpus words plus the extra
//! `vocabulary`), and the dictionary is the matching subset of CMUdict. A handful of words
//! instead of 130 000 makes recognition of the expected answers far more reliable and the
//! decoder fast. `model = "general"` (or no phrases) uses the general en-us model instead.
//!
//! One decoder per call, on its own thread (`ps_decoder_t` is single-threaded and blocking).
//! The stream endpoints itself with an energy VAD (pre-roll kept so the first phoneme is not
//! lost), ends an utterance early on [`SttSession::finalize`], and decodes each utterance in
//! one full-utterance pass (no interim results). That loop ([`UtteranceSession`]) works over any
//! [`UtteranceRecognizer`]; the Whisper provider (cargo feature `whisper`) uses it too.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::utterance::{UtteranceRecognizer, UtteranceSession};
use super::{ProviderError, SttProvider, SttSession};
use crate::vad::{Detector, VadConfig};

const VENDOR: &str = "pocketsphinx";
pub const RATE: u32 = 16_000;
pub const DEFAULT_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

#[link(name = "pocketsphinx")]
#[link(name = "sphinxbase")]
extern "C" {
    fn ps_args() -> *const c_void;
    fn cmd_ln_parse_r(
        inout: *mut c_void,
        defn: *const c_void,
        argc: i32,
        argv: *mut *mut c_char,
        strict: i32,
    ) -> *mut c_void;
    fn cmd_ln_free_r(cmdln: *mut c_void) -> c_int;
    fn ps_init(config: *mut c_void) -> *mut c_void;
    fn ps_free(ps: *mut c_void) -> c_int;
    fn ps_start_utt(ps: *mut c_void) -> c_int;
    fn ps_process_raw(
        ps: *mut c_void,
        data: *const i16,
        n_samples: usize,
        no_search: c_int,
        full_utt: c_int,
    ) -> c_int;
    fn ps_end_utt(ps: *mut c_void) -> c_int;
    fn ps_get_hyp(ps: *mut c_void, out_best_score: *mut i32) -> *const c_char;
}

/// One pocketsphinx decoder.
pub struct Decoder {
    ps: *mut c_void,
    in_utt: bool,
    dither_lsb: u32,
}

// SAFETY: a decoder is used by one thread at a time (it is moved into its session's thread).
unsafe impl Send for Decoder {}

impl Decoder {
    /// `hmm`: acoustic model dir; `lm`: ARPA or binary LM; `dict`: pronunciation dictionary.
    pub fn new(hmm: &Path, lm: &Path, dict: &Path) -> Result<Decoder, String> {
        Decoder::with_args(hmm, lm, dict, &[])
    }

    /// [`Decoder::new`] with more pocketsphinx options (`("-cmn", "live")`, …); later ones win.
    pub fn with_args(
        hmm: &Path,
        lm: &Path,
        dict: &Path,
        extra: &[(&str, &str)],
    ) -> Result<Decoder, String> {
        let mut args = vec![
            "pocketsphinx".to_string(),
            "-hmm".into(),
            hmm.display().to_string(),
            "-lm".into(),
            lm.display().to_string(),
            "-dict".into(),
            dict.display().to_string(),
            "-samprate".into(),
            RATE.to_string(),
            "-logfn".into(),
            "/dev/null".into(),
            // A stronger language-model weight suits the small phrase model (chosen by
            // measurement on espeak-ng speech). Dither is ours (see `dither`): pocketsphinx's
            // draws from a process-wide generator, so concurrent calls would not be repeatable.
            "-dither".into(),
            "no".into(),
            "-lw".into(),
            "10".into(),
        ];
        for (k, v) in extra {
            args.push(k.to_string());
            args.push(v.to_string());
        }
        let cstrs: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let mut argv: Vec<*mut c_char> = cstrs.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        // SAFETY: argv holds argc valid C strings that outlive the call (cmd_ln copies them).
        let config = unsafe {
            cmd_ln_parse_r(
                std::ptr::null_mut(),
                ps_args(),
                (argv.len() - 1) as i32,
                argv.as_mut_ptr().add(1),
                1,
            )
        };
        if config.is_null() {
            return Err("pocketsphinx rejected its configuration".into());
        }
        let ps = unsafe { ps_init(config) };
        // ps_init retains the config; drop our reference.
        unsafe { cmd_ln_free_r(config) };
        if ps.is_null() {
            return Err(format!(
                "pocketsphinx failed to load the model (hmm {}, lm {}, dict {})",
                hmm.display(),
                lm.display(),
                dict.display()
            ));
        }
        Ok(Decoder {
            ps,
            in_utt: false,
            dither_lsb: DITHER_LSB,
        })
    }

    /// Amplitude of the added noise in LSB (0: none); see [`dither`].
    pub fn set_dither(&mut self, lsb: u32) {
        self.dither_lsb = lsb;
    }

    pub fn start(&mut self) -> Result<(), String> {
        if self.in_utt {
            return Ok(());
        }
        if unsafe { ps_start_utt(self.ps) } < 0 {
            return Err("ps_start_utt failed".into());
        }
        self.in_utt = true;
        Ok(())
    }

    pub fn process(&mut self, pcm: &[i16]) -> Result<(), String> {
        self.process_ext(pcm, false)
    }

    /// `full_utt`: `pcm` is the whole utterance (batch normalisation over all of it).
    pub fn process_ext(&mut self, pcm: &[i16], full_utt: bool) -> Result<(), String> {
        if !self.in_utt {
            self.start()?;
        }
        let pcm = dither(pcm, self.dither_lsb);
        if unsafe { ps_process_raw(self.ps, pcm.as_ptr(), pcm.len(), 0, full_utt as c_int) } < 0 {
            return Err("ps_process_raw failed".into());
        }
        Ok(())
    }

    /// Current hypothesis (partial while in an utterance).
    pub fn hypothesis(&self) -> String {
        let mut score = 0i32;
        let p = unsafe { ps_get_hyp(self.ps, &mut score) };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: a NUL-terminated string owned by the decoder, valid until the next call.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        clean_hyp(&s)
    }

    /// End the utterance and return its text.
    pub fn end(&mut self) -> String {
        if !self.in_utt {
            return String::new();
        }
        unsafe { ps_end_utt(self.ps) };
        self.in_utt = false;
        self.hypothesis()
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        unsafe { ps_free(self.ps) };
    }
}

impl UtteranceRecognizer for Decoder {
    fn recognize(&mut self, pcm16k: &[i16]) -> Result<String, String> {
        self.start()?;
        self.process_ext(pcm16k, true)?;
        Ok(self.end())
    }
}

/// Default dither: ±16 LSB (about -66 dBFS). Measured on espeak-ng phrases through the phrase
/// model: none 5-6/10 right, ±1 6-8/10, ±4 7-9/10, ±8 and ±16 9-10/10 — a faint noise floor
/// is what the acoustic model (trained on real recordings) expects.
pub const DITHER_LSB: u32 = 16;

/// ±`lsb` of deterministic noise. Phone silence is often exact zeros, whose log energies are
/// -inf to the front end. Seeded by the chunk length so the same audio always decodes the same
/// way (pocketsphinx's own `-dither` draws from a process-wide generator).
pub fn dither(pcm: &[i16], lsb: u32) -> Vec<i16> {
    if lsb == 0 {
        return pcm.to_vec();
    }
    let span = 2 * lsb + 1;
    let mut x: u32 = 0x9E37_79B9 ^ pcm.len() as u32;
    pcm.iter()
        .map(|&s| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            s.saturating_add((x % span) as i16 - lsb as i16)
        })
        .collect()
}

fn clean_hyp(s: &str) -> String {
    s.split_whitespace()
        .filter(|w| !w.starts_with('<') && !w.starts_with('[') && !w.starts_with('+'))
        .map(|w| w.split('(').next().unwrap_or(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tokens(s: &str) -> Vec<String> {
    crate::dialog::normalize(s)
        .split_whitespace()
        .map(|w| w.to_string())
        .collect()
}

/// A bigram ARPA language model over `sentences` (+ `extra_words` as unigrams), restricted to
/// words `known` accepts. Returns the ARPA text and the vocabulary used.
pub fn build_arpa(
    sentences: &[String],
    extra_words: &[String],
    known: impl Fn(&str) -> bool,
) -> (String, BTreeSet<String>) {
    let mut uni: BTreeMap<String, f64> = BTreeMap::new();
    let mut bi: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut hist: BTreeMap<String, f64> = BTreeMap::new();
    for s in sentences {
        let ws: Vec<String> = tokens(s).into_iter().filter(|w| known(w)).collect();
        if ws.is_empty() {
            continue;
        }
        let mut seq = vec!["<s>".to_string()];
        seq.extend(ws);
        seq.push("</s>".to_string());
        for w in &seq[1..] {
            *uni.entry(w.clone()).or_default() += 1.0;
        }
        for p in seq.windows(2) {
            *bi.entry(p[0].clone())
                .or_default()
                .entry(p[1].clone())
                .or_default() += 1.0;
            *hist.entry(p[0].clone()).or_default() += 1.0;
        }
    }
    for w in extra_words.iter().flat_map(|w| tokens(w)) {
        if known(&w) {
            uni.entry(w).or_default();
        }
    }
    uni.entry("</s>".into()).or_default();
    let total: f64 = uni.values().sum();
    let v = uni.len() as f64;
    let p_uni: BTreeMap<&str, f64> = uni
        .iter()
        .map(|(w, c)| (w.as_str(), (c + 0.5) / (total + 0.5 * v)))
        .collect();
    const D: f64 = 0.5;
    let mut backoff: BTreeMap<&str, f64> = BTreeMap::new();
    let mut bigrams: Vec<(String, String, f64)> = Vec::new();
    for (h, fs) in &bi {
        let ch = hist[h];
        let mass: f64 = fs
            .keys()
            .map(|f| p_uni.get(f.as_str()).copied().unwrap_or(0.0))
            .sum();
        let alpha = (D * fs.len() as f64 / ch) / (1.0 - mass).max(1e-6);
        backoff.insert(h.as_str(), alpha);
        for (f, c) in fs {
            bigrams.push((h.clone(), f.clone(), (c - D) / ch));
        }
    }
    let mut out = String::new();
    out.push_str("\\data\\\n");
    out.push_str(&format!("ngram 1={}\n", uni.len() + 1));
    out.push_str(&format!("ngram 2={}\n\n", bigrams.len()));
    out.push_str("\\1-grams:\n");
    let bo = |w: &str| backoff.get(w).map(|a| a.log10()).unwrap_or(0.0);
    out.push_str(&format!("-99.0000 <s> {:.4}\n", bo("<s>")));
    for (w, p) in &p_uni {
        if *w == "</s>" {
            out.push_str(&format!("{:.4} </s>\n", p.log10()));
        } else {
            out.push_str(&format!("{:.4} {} {:.4}\n", p.log10(), w, bo(w)));
        }
    }
    out.push_str("\n\\2-grams:\n");
    for (h, f, p) in &bigrams {
        out.push_str(&format!("{:.4} {} {}\n", p.log10(), h, f));
    }
    out.push_str("\n\\end\\\n");
    let vocab = uni
        .keys()
        .filter(|w| !w.starts_with('<'))
        .cloned()
        .collect();
    (out, vocab)
}

/// Pronunciations of `words` from a CMUdict-format file (alternates `word(2)` included).
pub fn dict_subset(cmudict: &Path, words: &BTreeSet<String>) -> std::io::Result<String> {
    let text = std::fs::read_to_string(cmudict)?;
    let mut out = String::new();
    for line in text.lines() {
        let Some(head) = line.split_whitespace().next() else {
            continue;
        };
        let base = head.split('(').next().unwrap_or(head);
        if words.contains(base) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Which words a CMUdict file knows (first column, alternates folded).
fn dict_words(cmudict: &Path) -> std::io::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(cmudict)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|h| h.split('(').next().unwrap_or(h).to_string())
        .collect())
}

/// The files a decoder is made from.
#[derive(Debug, Clone)]
pub struct SphinxModel {
    pub hmm: PathBuf,
    pub lm: PathBuf,
    pub dict: PathBuf,
    /// Words the LM knows (empty for the general model).
    pub vocabulary: BTreeSet<String>,
}

impl SphinxModel {
    /// The general en-us model under `model_dir`.
    pub fn general(model_dir: &Path) -> SphinxModel {
        SphinxModel {
            hmm: model_dir.join("en-us"),
            lm: model_dir.join("en-us.lm.bin"),
            dict: model_dir.join("cmudict-en-us.dict"),
            vocabulary: BTreeSet::new(),
        }
    }

    /// A phrase model for `phrases` + `words`, written under `work_dir`.
    pub fn from_phrases(
        model_dir: &Path,
        phrases: &[String],
        words: &[String],
        work_dir: &Path,
    ) -> Result<SphinxModel, ProviderError> {
        let err = |m: String| ProviderError::Other {
            vendor: VENDOR,
            msg: m,
        };
        let general = SphinxModel::general(model_dir);
        let known = dict_words(&general.dict)
            .map_err(|e| err(format!("cannot read {}: {e}", general.dict.display())))?;
        let (arpa, vocab) = build_arpa(phrases, words, |w| known.contains(w));
        if vocab.is_empty() {
            return Err(err(
                "no expected phrase has a word the dictionary knows".into()
            ));
        }
        let dict = dict_subset(&general.dict, &vocab).map_err(|e| err(e.to_string()))?;
        std::fs::create_dir_all(work_dir)
            .map_err(|e| err(format!("cannot create {}: {e}", work_dir.display())))?;
        let lm = work_dir.join("phrases.arpa");
        let dict_path = work_dir.join("phrases.dict");
        std::fs::write(&lm, arpa).map_err(|e| err(e.to_string()))?;
        std::fs::write(&dict_path, dict).map_err(|e| err(e.to_string()))?;
        Ok(SphinxModel {
            hmm: general.hmm,
            lm,
            dict: dict_path,
            vocabulary: vocab,
        })
    }
}

/// Recognise a whole buffer of 16 kHz PCM (tests, tools).
pub fn recognize(model: &SphinxModel, pcm: &[i16]) -> Result<String, String> {
    Decoder::new(&model.hmm, &model.lm, &model.dict)?.recognize(pcm)
}

/// pocketsphinx as an [`SttProvider`].
pub struct OfflineStt {
    model: Arc<SphinxModel>,
    vad: VadConfig,
    detector: Detector,
}

impl OfflineStt {
    pub fn new(model: SphinxModel, vad: VadConfig) -> OfflineStt {
        OfflineStt {
            model: Arc::new(model),
            vad,
            detector: Detector::Energy,
        }
    }

    /// Cut utterances with this voice activity detector (default: energy).
    pub fn with_detector(mut self, detector: Detector) -> OfflineStt {
        self.detector = detector;
        self
    }

    /// The model the agent file asks for: its phrase model unless `[stt] model = "general"`.
    pub fn model_for(spec: &crate::config::AgentSpec) -> Result<SphinxModel, ProviderError> {
        let dir = std::env::var("POCKETSPHINX_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(DEFAULT_MODEL_DIR));
        if spec.stt.model.as_deref() == Some("general") {
            return Ok(SphinxModel::general(&dir));
        }
        let phrases = spec.expected_phrases();
        let words = spec.expected_words();
        // A per-content directory so concurrent agents never trample each other's files.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(&phrases, &words), &mut h);
        let work = std::env::temp_dir().join(format!(
            "callbridge-sphinx-{:016x}-{}",
            std::hash::Hasher::finish(&h),
            std::process::id()
        ));
        SphinxModel::from_phrases(&dir, &phrases, &words, &work)
    }
}

#[async_trait]
impl SttProvider for OfflineStt {
    fn name(&self) -> &'static str {
        VENDOR
    }

    fn input_rate(&self) -> u32 {
        RATE
    }

    async fn start(&self) -> Result<Box<dyn SttSession>, ProviderError> {
        let model = self.model.clone();
        let dec =
            tokio::task::spawn_blocking(move || Decoder::new(&model.hmm, &model.lm, &model.dict))
                .await
                .map_err(|e| ProviderError::Other {
                    vendor: VENDOR,
                    msg: e.to_string(),
                })?
                .map_err(|msg| ProviderError::Other {
                    vendor: VENDOR,
                    msg,
                })?;
        Ok(Box::new(UtteranceSession::spawn(
            VENDOR,
            dec,
            self.vad.clone(),
            self.detector.clone(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arpa_is_well_formed() {
        let (arpa, vocab) = build_arpa(
            &["my name is john".into(), "my name is mary".into()],
            &["peter".into()],
            |w| w != "zzz",
        );
        assert!(vocab.contains("john") && vocab.contains("peter"));
        assert!(
            arpa.starts_with("\\data\\\nngram 1=8\nngram 2=7\n"),
            "{arpa}"
        );
        assert!(
            arpa.contains("<s> my\n") && arpa.contains("is john\n") && arpa.ends_with("\\end\\\n")
        );
        // Bigram probabilities after "is": two followers, each (1 - 0.5) / 2.
        assert!(arpa.contains(&format!("{:.4} is john", (0.25f64).log10())));
    }

    #[test]
    fn hypotheses_are_cleaned() {
        assert_eq!(
            clean_hyp("<s> my name(2) is [NOISE] john </s>"),
            "my name is john"
        );
    }
}
