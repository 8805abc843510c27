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
}

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const POS_CHARACTER: c_int = 1;
const ESPEAK_CHARS_UTF8: c_uint = 1;
const ESPEAK_RATE: c_int = 1;
const EE_OK: c_int = 0;

/// What the synthesis thread is asked to do.
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
    tx: Mutex<smpsc::Sender<Job>>,
    rate: u32,
}

fn engine() -> Result<&'static Engine, ProviderError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let (tx, rx) = smpsc::channel::<Job>();
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
                    while let Ok(job) = rx.recv() {
                        if job.voice != voice {
                            let v = CString::new(job.voice.clone()).unwrap_or_default();
                            if unsafe { espeak_SetVoiceByName(v.as_ptr()) } != EE_OK {
                                tracing::warn!(voice = %job.voice, "espeak-ng voice not found; keeping the previous one");
                            }
                            voice = job.voice.clone();
                        }
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

enum Input {
    Text(String),
    Finish,
}

pub struct OfflineTtsStream {
    tx: Option<mpsc::Sender<Input>>,
    rx: mpsc::Receiver<TtsEvent>,
    cancel: Arc<AtomicBool>,
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
        let (in_tx, mut in_rx) = mpsc::channel::<Input>(64);
        let (ev_tx, ev_rx) = mpsc::channel::<TtsEvent>(256);
        let cancel = Arc::new(AtomicBool::new(false));
        let (voice, wpm, rate, cancel2) = (self.voice.clone(), self.wpm, self.rate, cancel.clone());
        tokio::spawn(async move {
            let mut rs = SincResampler::new(eng.rate, rate);
            while let Some(inp) = in_rx.recv().await {
                let text = match inp {
                    Input::Finish => {
                        let mut tail = Vec::new();
                        rs.flush(&mut tail);
                        if !tail.is_empty() {
                            let _ = ev_tx.send(TtsEvent::Audio(tail)).await;
                        }
                        let _ = ev_tx.send(TtsEvent::Done).await;
                        return;
                    }
                    Input::Text(t) => t,
                };
                if text.trim().is_empty() {
                    continue;
                }
                let (out_tx, mut out_rx) = mpsc::channel(32);
                let job = Job {
                    text,
                    voice: voice.clone(),
                    wpm,
                    out: out_tx,
                    cancel: cancel2.clone(),
                };
                let sent = eng
                    .tx
                    .lock()
                    .map(|tx| tx.send(job).is_ok())
                    .unwrap_or(false);
                if !sent {
                    let _ = ev_tx
                        .send(TtsEvent::Error("espeak-ng thread is gone".into()))
                        .await;
                    return;
                }
                while let Some(Some(chunk)) = out_rx.recv().await {
                    if cancel2.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut pcm =
                        Vec::with_capacity(chunk.len() * rate as usize / eng.rate as usize + 8);
                    rs.process(&chunk, &mut pcm);
                    if !pcm.is_empty() && ev_tx.send(TtsEvent::Audio(pcm)).await.is_err() {
                        cancel2.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
        Ok(Box::new(OfflineTtsStream {
            tx: Some(in_tx),
            rx: ev_rx,
            cancel,
        }))
    }
}

#[async_trait]
impl TtsStream for OfflineTtsStream {
    async fn push_text(&mut self, text: &str) -> Result<(), ProviderError> {
        let tx = self.tx.as_ref().ok_or(ProviderError::Other {
            vendor: VENDOR,
            msg: "stream finished".into(),
        })?;
        tx.send(Input::Text(text.to_string()))
            .await
            .map_err(|_| ProviderError::Connection {
                vendor: VENDOR,
                msg: "synthesis task ended".into(),
            })
    }

    async fn finish(&mut self) -> Result<(), ProviderError> {
        if let Some(tx) = self.tx.take() {
            tx.send(Input::Finish)
                .await
                .map_err(|_| ProviderError::Connection {
                    vendor: VENDOR,
                    msg: "synthesis task ended".into(),
                })?;
        }
        Ok(())
    }

    async fn cancel(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.tx = None;
        self.rx.close();
    }

    async fn next_event(&mut self) -> Option<TtsEvent> {
        self.rx.recv().await
    }
}

impl Drop for OfflineTtsStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
