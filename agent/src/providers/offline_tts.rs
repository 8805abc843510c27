//! Offline TTS: espeak-ng (Debian `libespeak-ng`) through a minimal FFI.
//!
//! libespeak-ng keeps global state, so one thread owns it and synthesises one request at a
//! time (far faster than real time, so calls hardly wait). It speaks at its native 22 050 Hz,
//! in chunks of ~50 ms as they are made; each stream resamples them to the rate it publishes
//! at (windowed-sinc, state kept across chunks) and hands them on at once, so the first audio
//! of a sentence is out long before the sentence is finished.

use std::ffi::{c_char, c_int, c_short, c_uint, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as smpsc;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{ProviderError, TtsEvent, TtsProvider, TtsStream};

const VENDOR: &str = "espeak-ng";

#[repr(C)]
struct EspeakEvent {
    kind: c_int,
    unique_identifier: c_uint,
    text_position: c_int,
    length: c_int,
    audio_position: c_int,
    sample: c_int,
    user_data: *mut c_void,
    id: [u8; 8],
}

type SynthCallback = unsafe extern "C" fn(*mut c_short, c_int, *mut EspeakEvent) -> c_int;

#[link(name = "espeak-ng")]
extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetSynthCallback(cb: SynthCallback);
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn espeak_Synth(
        text: *const c_void,
        size: usize,
        position: c_uint,
        position_type: c_int,
        end_position: c_uint,
        flags: c_uint,
        unique_identifier: *mut c_uint,
        user_data: *mut c_void,
    ) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
}

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const POS_CHARACTER: c_int = 1;
const ESPEAK_CHARS_UTF8: c_uint = 1;
const ESPEAK_RATE: c_int = 1;
const EE_OK: c_int = 0;
/// `phonememode` bit 1: phonemes as IPA (UTF-8), the alphabet Piper voices are trained on.
const PHONEMES_IPA: c_int = 0x02;

/// What the espeak-ng thread is asked to do.
enum Work {
    Speak(Job),
    Phonemize {
        text: String,
        voice: String,
        reply: smpsc::Sender<Vec<Clause>>,
    },
}

/// One clause of text as espeak-ng's IPA phonemes, and the punctuation that ended it
/// (`None` at the end of the text without any).
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub ipa: String,
    pub end: Option<char>,
}

/// A request to speak.
struct Job {
    text: String,
    voice: String,
    wpm: u32,
    /// 22 050 Hz chunks go here; `None` ends the job.
    out: mpsc::Sender<Option<Vec<i16>>>,
    cancel: Arc<AtomicBool>,
}

struct JobCtx<'a> {
    out: &'a mpsc::Sender<Option<Vec<i16>>>,
    cancel: &'a AtomicBool,
}

unsafe extern "C" fn synth_cb(wav: *mut c_short, n: c_int, events: *mut EspeakEvent) -> c_int {
    if events.is_null() {
        return 0;
    }
    // SAFETY: espeak passes the user_data we gave espeak_Synth in every event of this call;
    // it points at a JobCtx that lives on the synthesis thread's stack for the whole call.
    let ctx = unsafe { (*events).user_data as *const JobCtx };
    if ctx.is_null() {
        return 0;
    }
    let ctx = unsafe { &*ctx };
    if ctx.cancel.load(Ordering::Relaxed) {
        return 1; // abort synthesis
    }
    if !wav.is_null() && n > 0 {
        // SAFETY: espeak hands us `n` samples at `wav`, valid during this callback.
        let pcm = unsafe { std::slice::from_raw_parts(wav, n as usize) }.to_vec();
        if ctx.out.blocking_send(Some(pcm)).is_err() {
            return 1; // the stream is gone
        }
    }
    0
}

struct Engine {
    tx: Mutex<smpsc::Sender<Work>>,
    rate: u32,
}

fn engine() -> Result<&'static Engine, ProviderError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let (tx, rx) = smpsc::channel::<Work>();
            let (rate_tx, rate_rx) = smpsc::channel::<Result<u32, String>>();
            std::thread::Builder::new()
                .name("espeak-ng".into())
                .spawn(move || {
                    // SAFETY: plain C calls; this thread is the only user of libespeak-ng.
                    let rate = unsafe { espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 50, std::ptr::null(), 0) };
                    if rate <= 0 {
                        let _ = rate_tx.send(Err(format!("espeak_Initialize failed ({rate}): is espeak-ng-data installed?")));
                        return;
                    }
                    unsafe { espeak_SetSynthCallback(synth_cb) };
                    let _ = rate_tx.send(Ok(rate as u32));
                    let mut voice = String::new();
                    let mut set_voice = |want: &str| {
                        if want != voice {
                            let v = CString::new(want).unwrap_or_default();
                            if unsafe { espeak_SetVoiceByName(v.as_ptr()) } != EE_OK {
                                tracing::warn!(voice = %want, "espeak-ng voice not found; keeping the previous one");
                            }
                            voice = want.to_string();
                        }
                    };
                    while let Ok(work) = rx.recv() {
                        let job = match work {
                            Work::Speak(job) => job,
                            Work::Phonemize { text, voice, reply } => {
                                set_voice(&voice);
                                let _ = reply.send(text_to_clauses(&text));
                                continue;
                            }
                        };
                        set_voice(&job.voice);
                        unsafe { espeak_SetParameter(ESPEAK_RATE, job.wpm.clamp(80, 450) as c_int, 0) };
                        if !job.cancel.load(Ordering::Relaxed) {
                            let text = CString::new(job.text.replace('\0', " ")).unwrap_or_default();
                            let bytes = text.as_bytes_with_nul();
                            let ctx = JobCtx { out: &job.out, cancel: &job.cancel };
                            let r = unsafe {
                                espeak_Synth(
                                    bytes.as_ptr() as *const c_void,
                                    bytes.len(),
                                    0,
                                    POS_CHARACTER,
                                    0,
                                    ESPEAK_CHARS_UTF8,
                                    std::ptr::null_mut(),
                                    &ctx as *const JobCtx as *mut c_void,
                                )
                            };
                            if r != EE_OK {
                                tracing::warn!(code = r, "espeak_Synth failed");
                            }
                        }
                        let _ = job.out.blocking_send(None);
                    }
                })
                .map_err(|e| e.to_string())?;
            let rate = rate_rx.recv().map_err(|_| "espeak-ng thread died".to_string())??;
            Ok(Engine { tx: Mutex::new(tx), rate })
        })
        .as_ref()
        .map_err(|e| ProviderError::Other { vendor: VENDOR, msg: e.clone() })
}

/// Runs on the espeak-ng thread: `text` as IPA phonemes, clause by clause.
fn text_to_clauses(text: &str) -> Vec<Clause> {
    let Ok(c_text) = CString::new(text.replace('\0', " ")) else {
        return Vec::new();
    };
    let bytes = c_text.as_bytes();
    let base = c_text.as_ptr() as *const c_void;
    let mut ptr = base;
    let mut out = Vec::new();
    // espeak advances `ptr` past each clause and sets it to NULL at the end of the text.
    while !ptr.is_null() {
        let start = (ptr as usize).saturating_sub(base as usize).min(bytes.len());
        // SAFETY: `ptr` points into `c_text` (NUL-terminated, alive for this loop); the
        // returned string is espeak's own buffer, copied before the next call.
        let ipa = unsafe {
            let p = espeak_TextToPhonemes(&mut ptr, ESPEAK_CHARS_UTF8 as c_int, PHONEMES_IPA);
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let end = if ptr.is_null() {
            bytes.len()
        } else {
            (ptr as usize).saturating_sub(base as usize).clamp(start, bytes.len())
        };
        let consumed = String::from_utf8_lossy(&bytes[start..end]);
        // espeak reads one character past the clause ("Hello world, t"): skip that fragment
        // of the next word, then the spaces, to the punctuation that closed the clause.
        let is_punct = |c: char| matches!(c, '.' | ',' | ';' | ':' | '!' | '?');
        let punct = consumed
            .trim_end_matches(|c: char| !c.is_whitespace() && !is_punct(c))
            .trim_end()
            .chars()
            .next_back()
            .filter(|&c| is_punct(c));
        let ipa = ipa.trim().to_string();
        if !ipa.is_empty() {
            out.push(Clause { ipa, end: punct });
        }
        if end == start && !ptr.is_null() {
            break; // no progress: never loop forever on odd input
        }
    }
    out
}

/// `text` as espeak-ng's IPA phonemes in `voice`, clause by clause (Piper's front end).
/// Blocks until the espeak-ng thread has done it: call from a blocking context.
pub fn phonemize(text: &str, voice: &str) -> Result<Vec<Clause>, ProviderError> {
    let eng = engine()?;
    let (reply, answer) = smpsc::channel();
    let work = Work::Phonemize {
        text: text.to_string(),
        voice: voice.to_string(),
        reply,
    };
    let sent = eng.tx.lock().map(|tx| tx.send(work).is_ok()).unwrap_or(false);
    if !sent {
        return Err(ProviderError::Other { vendor: VENDOR, msg: "espeak-ng thread is gone".into() });
    }
    answer
        .recv()
        .map_err(|_| ProviderError::Other { vendor: VENDOR, msg: "espeak-ng thread is gone".into() })
}

/// Streaming windowed-sinc resampler for any rate pair (mono i16), state kept across chunks.
pub struct SincResampler {
    step: f64,
    cutoff: f64,
    half: usize,
    buf: Vec<f32>,
    pos: f64,
}

impl SincResampler {
    pub fn new(from_hz: u32, to_hz: u32) -> SincResampler {
        let step = from_hz as f64 / to_hz as f64;
        let cutoff = (to_hz as f64 / from_hz as f64).min(1.0) * 0.94;
        SincResampler {
            step,
            cutoff,
            half: 16,
            buf: Vec::new(),
            pos: 0.0,
        }
    }

    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if (self.step - 1.0).abs() < 1e-9 {
            out.extend_from_slice(input);
            return;
        }
        self.buf.extend(input.iter().map(|&s| s as f32));
        let half = self.half as isize;
        while self.pos + (half as f64) < self.buf.len() as f64 {
            let center = self.pos.floor() as isize;
            let mut acc = 0.0f64;
            for j in (center - half + 1)..=(center + half) {
                if j < 0 || j as usize >= self.buf.len() {
                    continue;
                }
                let t = self.pos - j as f64;
                let x = self.cutoff * t;
                let sinc = if x.abs() < 1e-9 {
                    1.0
                } else {
                    (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
                };
                let w = 0.5 + 0.5 * (std::f64::consts::PI * t / half as f64).cos(); // Hann
                acc += self.buf[j as usize] as f64 * self.cutoff * sinc * w;
            }
            out.push(acc.round().clamp(-32768.0, 32767.0) as i16);
            self.pos += self.step;
        }
        let drop = (self.pos.floor() as isize - half).max(0) as usize;
        if drop > 0 {
            self.buf.drain(..drop.min(self.buf.len()));
            self.pos -= drop as f64;
        }
    }

    /// Push the tail out (zeros after the last input).
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        let zeros = vec![0i16; self.half + 1];
        self.process(&zeros, out);
        self.buf.clear();
        self.pos = 0.0;
    }
}

/// espeak-ng as a [`TtsProvider`].
pub struct OfflineTts {
    voice: String,
    wpm: u32,
    rate: u32,
}

impl OfflineTts {
    /// `rate`: the output rate (espeak's 22 050 Hz is resampled to it).
    pub fn new(voice: &str, wpm: u32, rate: u32) -> OfflineTts {
        OfflineTts {
            voice: voice.into(),
            wpm,
            rate,
        }
    }

    /// Check that libespeak-ng initialises (voices data present).
    pub fn check() -> Result<u32, ProviderError> {
        engine().map(|e| e.rate)
    }

    /// Whole utterance at once (tests, tools).
    pub async fn synthesize(&self, text: &str) -> Result<Vec<i16>, ProviderError> {
        let mut s = self.start().await?;
        s.push_text(text).await?;
        s.finish().await?;
        let mut pcm = Vec::new();
        while let Some(e) = s.next_event().await {
            match e {
                TtsEvent::Audio(a) => pcm.extend(a),
                TtsEvent::Done => break,
                TtsEvent::Error(e) => {
                    return Err(ProviderError::Other {
                        vendor: VENDOR,
                        msg: e,
                    })
                }
            }
        }
        Ok(pcm)
    }
}

#[async_trait]
impl TtsProvider for OfflineTts {
    fn name(&self) -> &'static str {
        VENDOR
    }

    fn output_rate(&self) -> u32 {
        self.rate
    }

    async fn start(&self) -> Result<Box<dyn TtsStream>, ProviderError> {
        let eng = engine()?;
        let (stream, mut syn) = super::local_tts::start(VENDOR, eng.rate, self.rate);
        let (voice, wpm) = (self.voice.clone(), self.wpm);
        tokio::spawn(async move {
            while let Some(text) = syn.next_text().await {
                let (out_tx, mut out_rx) = mpsc::channel(32);
                let job = Job {
                    text,
                    voice: voice.clone(),
                    wpm,
                    out: out_tx,
                    cancel: syn.cancel.clone(),
                };
                let sent = eng
                    .tx
                    .lock()
                    .map(|tx| tx.send(Work::Speak(job)).is_ok())
                    .unwrap_or(false);
                if !sent {
                    syn.error("espeak-ng thread is gone").await;
                    return;
                }
                while let Some(Some(chunk)) = out_rx.recv().await {
                    if !syn.audio(&chunk).await {
                        return;
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

    #[test]
    fn text_becomes_ipa_clauses_with_their_punctuation() {
        let clauses = phonemize("Hello world, this is a test. Really?", "en-us").unwrap();
        assert_eq!(clauses.len(), 3, "{clauses:?}");
        assert_eq!(
            clauses.iter().map(|c| c.end).collect::<Vec<_>>(),
            vec![Some(','), Some('.'), Some('?')]
        );
        // IPA, with stress marks, words separated by spaces
        assert!(clauses[0].ipa.contains('ˈ') && clauses[0].ipa.contains(' '), "{clauses:?}");
        assert!(clauses[0].ipa.starts_with("həl"), "{clauses:?}");
        assert!(phonemize("", "en-us").unwrap().is_empty());
        // no trailing punctuation
        let c = phonemize("fire", "en-us").unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].end, None);
    }

    #[test]
    fn resampler_keeps_a_tone() {
        let from = 22050;
        let to = 16000;
        let tone: Vec<i16> = (0..22050)
            .map(|i| {
                (10000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / from as f64).sin())
                    as i16
            })
            .collect();
        let mut rs = SincResampler::new(from, to);
        let mut out = Vec::new();
        for c in tone.chunks(1103) {
            rs.process(c, &mut out);
        }
        rs.flush(&mut out);
        assert!((out.len() as i64 - 16000).abs() < 40, "{}", out.len());
        // Zero crossings ≈ 2 × 440 per second.
        let zc = out[100..15900]
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        assert!((zc as i64 - 2 * 440 * 15800 / 16000).abs() < 10, "{zc}");
        let peak = out[100..15900].iter().map(|s| s.abs()).max().unwrap();
        assert!((9000..11000).contains(&peak), "{peak}");
    }
}
