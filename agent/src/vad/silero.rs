//! Silero VAD, the 16 kHz network, in Rust on the weights of the PyPI `silero-vad` wheel's
//! `silero_vad_16k_op15.onnx` (unpacked by `scripts/models.sh silero`; its initializers are read
//! with a few lines of protobuf, the graph is the one below).
//!
//! Why not an ONNX runtime: tract (pure Rust) cannot translate the model's `If` nodes (in every
//! export, the op18 "ifless" one included), and ONNX Runtime would make a 60 MB shared library a
//! dependency of every call. The network is small, and the wheel documents it
//! (`tinygrad_model.py`): per 32 ms window (512 samples and 64 of context, reflected by 64 on the
//! right) an STFT as a strided convolution, magnitude, four convolutions with ReLU, an LSTM cell
//! carrying state across windows, and a 1×1 convolution with a sigmoid. The products run on
//! `ndarray`. (The wheel's `silero_vad_16k.safetensors` holds other, older weights: its output
//! is not the ONNX model's.) A unit test holds it to ONNX Runtime's output on the same input.
//!
//! Phone audio (8 kHz) is resampled to 16 kHz first. Speech starts once windows of probability
//! ≥ [`THRESHOLD`] have lasted `min_speech_ms` (a window below `THRESHOLD` − 0.15, Silero's own
//! hysteresis, resets the onset) and ends after `end_of_speech_ms` of windows below
//! `END_THRESHOLD`.

use std::path::Path;
use std::sync::Arc;

use ndarray::{s, Array1, Array2, ArrayView2};

use super::{SpeechDetector, VadConfig, VadEvent};

pub const DEFAULT_MODEL: &str = "models/silero-vad/silero_vad_16k_op15.onnx";
/// Speech probability from which a window is speech.
pub const THRESHOLD: f32 = 0.5;
const NEG_THRESHOLD: f32 = THRESHOLD - 0.15;
/// Inside speech, a window below this counts towards its end. Silero's own hysteresis
/// (`THRESHOLD - 0.15`) ended turns 20–100 ms after the energy detector on espeak speech; the
/// 500 ms hangover already keeps a pause from cutting a turn.
const END_THRESHOLD: f32 = THRESHOLD;
const RATE: u32 = 16_000;
const WINDOW: usize = 512;
const CONTEXT: usize = 64;
const WINDOW_MS: u32 = 32;
const HIDDEN: usize = 128;

/// One convolution: weight as [out, in·k] (im2col order), bias, kernel, stride; padding k/2.
struct Conv {
    w: Array2<f32>,
    b: Array1<f32>,
    k: usize,
    stride: usize,
}

impl Conv {
    /// `x`: [in, T] → [out, T'] (zero padding of 1 on each side for k = 3), ReLU.
    fn forward_relu(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let (cin, t) = x.dim();
        let pad = self.k / 2;
        let tout = (t + 2 * pad - self.k) / self.stride + 1;
        let mut cols = Array2::<f32>::zeros((cin * self.k, tout));
        for o in 0..tout {
            for i in 0..cin {
                for j in 0..self.k {
                    let src = (o * self.stride + j) as isize - pad as isize;
                    if src >= 0 && (src as usize) < t {
                        cols[[i * self.k + j, o]] = x[[i, src as usize]];
                    }
                }
            }
        }
        let mut y = self.w.dot(&cols);
        for (mut row, b) in y.rows_mut().into_iter().zip(self.b.iter()) {
            row.mapv_inplace(|v| (v + b).max(0.0));
        }
        y
    }
}

/// The network's weights, shared by every call of the process.
pub struct SileroModel {
    /// STFT basis: [258, 256] (real then imaginary parts of 129 bins).
    stft: Array2<f32>,
    convs: [Conv; 4],
    w_ih: Array2<f32>,
    w_hh: Array2<f32>,
    b: Array1<f32>,
    final_w: Array1<f32>,
    final_b: f32,
}

impl std::fmt::Debug for SileroModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SileroModel")
    }
}

/// The LSTM's state, one per stream.
#[derive(Clone)]
pub struct State {
    h: Array1<f32>,
    c: Array1<f32>,
    context: Vec<f32>,
}

impl Default for State {
    fn default() -> Self {
        State { h: Array1::zeros(HIDDEN), c: Array1::zeros(HIDDEN), context: vec![0.0; CONTEXT] }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The parts of ONNX's `ModelProto` that hold the weights (other fields are skipped).
mod onnx {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
    }
    /// `TensorProto.DataType.FLOAT`.
    pub const FLOAT: i32 = 1;
}

impl SileroModel {
    pub fn load(path: &Path) -> Result<SileroModel, String> {
        use prost::Message as _;
        let bytes = std::fs::read(path).map_err(|e| format!("Silero VAD model {}: {e}", path.display()))?;
        let model = onnx::ModelProto::decode(bytes.as_slice()).map_err(|e| format!("{}: not an ONNX model: {e}", path.display()))?;
        let inits = model.graph.map(|g| g.initializer).unwrap_or_default();
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
            let t = inits.iter().find(|t| t.name == name).ok_or_else(|| format!("{}: no weight {name}", path.display()))?;
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            if t.data_type != onnx::FLOAT || dims != shape {
                return Err(format!("{}: {name} is type {} {dims:?}, want float {shape:?}", path.display(), t.data_type));
            }
            let v: Vec<f32> = if t.raw_data.is_empty() {
                t.float_data.clone()
            } else {
                t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            };
            if v.len() != shape.iter().product::<usize>() {
                return Err(format!("{}: {name} has {} values", path.display(), v.len()));
            }
            Ok(v)
        };
        let mat = |name: &str, shape: &[usize], rows: usize| -> Result<Array2<f32>, String> {
            let v = get(name, shape)?;
            let cols = v.len() / rows;
            Array2::from_shape_vec((rows, cols), v).map_err(|e| e.to_string())
        };
        let conv = |i: usize, cout: usize, cin: usize, stride: usize| -> Result<Conv, String> {
            let n = format!("model.encoder.{i}.reparam_conv");
            Ok(Conv {
                w: mat(&format!("{n}.weight"), &[cout, cin, 3], cout)?,
                b: Array1::from(get(&format!("{n}.bias"), &[cout])?),
                k: 3,
                stride,
            })
        };
        let b_ih = Array1::from(get("model.decoder.rnn.bias_ih", &[4 * HIDDEN])?);
        let b_hh = Array1::from(get("model.decoder.rnn.bias_hh", &[4 * HIDDEN])?);
        Ok(SileroModel {
            stft: mat("model.stft.forward_basis_buffer", &[258, 1, 256], 258)?,
            convs: [conv(0, 128, 129, 1)?, conv(1, 64, 128, 2)?, conv(2, 64, 64, 2)?, conv(3, 128, 64, 1)?],
            w_ih: mat("model.decoder.rnn.weight_ih", &[4 * HIDDEN, HIDDEN], 4 * HIDDEN)?,
            w_hh: mat("model.decoder.rnn.weight_hh", &[4 * HIDDEN, HIDDEN], 4 * HIDDEN)?,
            b: b_ih + b_hh,
            final_w: Array1::from(get("model.decoder.decoder.2.weight", &[1, HIDDEN, 1])?),
            final_b: get("model.decoder.decoder.2.bias", &[1])?[0],
        })
    }

    /// Speech probability of one 512-sample window (16 kHz, samples in [-1, 1]).
    pub fn infer(&self, state: &mut State, window: &[f32]) -> f32 {
        // Context, then the window, then 64 samples of reflection on the right: 640 samples.
        let mut x: Vec<f32> = Vec::with_capacity(CONTEXT + WINDOW + CONTEXT);
        x.extend_from_slice(&state.context);
        x.extend_from_slice(window);
        let n = x.len();
        for i in 0..CONTEXT {
            x.push(x[n - 2 - i]);
        }
        state.context.copy_from_slice(&x[n - CONTEXT..n]);
        // STFT as a convolution of stride 128: 4 frames.
        let frames = (x.len() - 256) / 128 + 1;
        let mut cols = Array2::<f32>::zeros((256, frames));
        for f in 0..frames {
            for k in 0..256 {
                cols[[k, f]] = x[f * 128 + k];
            }
        }
        let spec = self.stft.dot(&cols);
        let mag = Array2::from_shape_fn((129, frames), |(i, f)| {
            let (re, im) = (spec[[i, f]], spec[[i + 129, f]]);
            (re * re + im * im).sqrt()
        });
        let mut h = mag;
        for c in &self.convs {
            h = c.forward_relu(h.view());
        }
        let feat = h.slice(s![.., 0]).to_owned();
        let gates: Array1<f32> = self.w_ih.dot(&feat) + self.w_hh.dot(&state.h) + &self.b;
        let mut c_new = Array1::zeros(HIDDEN);
        let mut h_new = Array1::zeros(HIDDEN);
        for j in 0..HIDDEN {
            let i = sigmoid(gates[j]);
            let f = sigmoid(gates[HIDDEN + j]);
            let g = gates[2 * HIDDEN + j].tanh();
            let o = sigmoid(gates[3 * HIDDEN + j]);
            c_new[j] = f * state.c[j] + i * g;
            h_new[j] = o * c_new[j].tanh();
        }
        state.c = c_new;
        state.h = h_new;
        let logit = self.final_w.iter().zip(state.h.iter()).map(|(w, v)| w * v.max(0.0)).sum::<f32>() + self.final_b;
        sigmoid(logit)
    }
}

/// Silero on a stream of frames at any rate, with the onset and hangover rules.
pub struct SileroVad {
    model: Arc<SileroModel>,
    cfg: VadConfig,
    state: State,
    pending: Vec<f32>,
    resampler: Option<(u32, proto::resample::Resampler, Vec<i16>)>,
    in_speech: bool,
    onset_ms: u32,
    speech_ms: u32,
    silence_ms: u32,
    /// Probability of the last window (for reports and tests).
    pub last_probability: f32,
}

impl SileroVad {
    pub fn new(model: Arc<SileroModel>, cfg: VadConfig) -> SileroVad {
        SileroVad { model, cfg, state: State::default(), pending: Vec::new(), resampler: None, in_speech: false, onset_ms: 0, speech_ms: 0, silence_ms: 0, last_probability: 0.0 }
    }

    /// `frame` at `rate` as 16 kHz samples in [-1, 1].
    fn to_16k(&mut self, frame: &[i16], rate: u32) -> Vec<f32> {
        if rate == RATE {
            return frame.iter().map(|&s| s as f32 / 32768.0).collect();
        }
        if self.resampler.as_ref().is_none_or(|(r, _, _)| *r != rate) {
            match proto::resample::Resampler::new(rate, RATE) {
                Ok(rs) => self.resampler = Some((rate, rs, Vec::new())),
                Err(e) => {
                    tracing::warn!(error = %e, rate, "Silero VAD: cannot resample; frame ignored");
                    return Vec::new();
                }
            }
        }
        let Some((_, rs, buf)) = &mut self.resampler else { return Vec::new() };
        buf.extend_from_slice(frame);
        let n = rs.input_len();
        let mut out = Vec::new();
        while buf.len() >= n {
            let chunk: Vec<i16> = buf.drain(..n).collect();
            if rs.process(&chunk, &mut out).is_err() {
                break;
            }
        }
        out.iter().map(|&s| s as f32 / 32768.0).collect()
    }

    /// One window's probability into the speech state.
    fn window(&mut self, p: f32) -> Option<VadEvent> {
        self.last_probability = p;
        if !self.in_speech {
            if p >= THRESHOLD {
                self.onset_ms += WINDOW_MS;
                if self.onset_ms >= self.cfg.min_speech_ms {
                    self.in_speech = true;
                    self.speech_ms = self.onset_ms;
                    self.silence_ms = 0;
                    let onset_ms = std::mem::take(&mut self.onset_ms);
                    return Some(VadEvent::SpeechStart { onset_ms });
                }
            } else if p < NEG_THRESHOLD {
                self.onset_ms = 0;
            }
            return None;
        }
        self.speech_ms += WINDOW_MS;
        if p >= END_THRESHOLD {
            self.silence_ms = 0;
            return None;
        }
        self.silence_ms += WINDOW_MS;
        if self.silence_ms < self.cfg.hangover_ms {
            return None;
        }
        self.in_speech = false;
        let speech_ms = self.speech_ms.saturating_sub(self.silence_ms);
        self.speech_ms = 0;
        self.silence_ms = 0;
        Some(VadEvent::SpeechEnd { speech_ms })
    }
}

impl SpeechDetector for SileroVad {
    fn push(&mut self, frame: &[i16], rate: u32) -> Option<VadEvent> {
        let samples = self.to_16k(frame, rate);
        self.pending.extend(samples);
        let mut ev = None;
        while self.pending.len() >= WINDOW {
            let w: Vec<f32> = self.pending.drain(..WINDOW).collect();
            let p = self.model.infer(&mut self.state, &w);
            // At most one edge per frame: a start and an end in one 20 ms frame cannot happen
            // with onset and hangover longer than a window.
            ev = self.window(p).or(ev);
        }
        ev
    }

    fn in_speech(&self) -> bool {
        self.in_speech
    }

    fn silence_ms(&self) -> u32 {
        if self.in_speech {
            self.silence_ms
        } else {
            0
        }
    }

    fn config(&self) -> &VadConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The weights, or None when they are not fetched (scripts/models.sh silero).
    pub(crate) fn model() -> Option<Arc<SileroModel>> {
        let path = std::env::var("SILERO_VAD_MODEL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DEFAULT_MODEL));
        match SileroModel::load(&path) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                assert!(std::env::var("AGENT_REQUIRE_MODELS_SILERO").as_deref() != Ok("1"), "{e}");
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    /// 1 s of silence, 1 s of a 150 Hz buzz with 20 harmonics at 4 Hz tremolo, 1 s of noise.
    fn signal() -> Vec<i16> {
        let mut x: u64 = 12345;
        (0..48_000u64)
            .map(|n| {
                let v = if n < 16_000 {
                    0.0
                } else if n < 32_000 {
                    let s: f64 = (1..=20).map(|h| (2.0 * std::f64::consts::PI * 150.0 * h as f64 * n as f64 / 16000.0).sin() / h as f64).sum();
                    4000.0 * 0.5 * (1.0 + (2.0 * std::f64::consts::PI * 4.0 * n as f64 / 16000.0).sin()) * s
                } else {
                    x = (x * 1103515245 + 12345) % (1 << 31);
                    (x as f64 / (1u64 << 31) as f64 - 0.5) * 8000.0
                };
                v.round().clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }

    /// ONNX Runtime 1.32 on the wheel's `silero_vad.onnx` (`silero_vad_16k_op15.onnx` gives
    /// the same), same signal, same windows.
    const ONNX: [f32; 93] = [0.0017, 0.0069, 0.0089, 0.0079, 0.0059, 0.0060, 0.0059, 0.0056, 0.0054, 0.0052, 0.0050, 0.0049, 0.0047, 0.0046, 0.0044, 0.0043, 0.0042, 0.0041, 0.0041, 0.0040, 0.0040, 0.0039, 0.0039, 0.0038, 0.0038, 0.0038, 0.0037, 0.0037, 0.0037, 0.0037, 0.0036, 0.5336, 0.6649, 0.7218, 0.6367, 0.3673, 0.5761, 0.5883, 0.2524, 0.2640, 0.0911, 0.0373, 0.0382, 0.0404, 0.0939, 0.1042, 0.0733, 0.0235, 0.0132, 0.0119, 0.0056, 0.0137, 0.0288, 0.0515, 0.0538, 0.0262, 0.0152, 0.0087, 0.0101, 0.0174, 0.0192, 0.0365, 0.0372, 0.0282, 0.0329, 0.0264, 0.0233, 0.0229, 0.0211, 0.0245, 0.0235, 0.0251, 0.0261, 0.0220, 0.0226, 0.0318, 0.0399, 0.0316, 0.0312, 0.0271, 0.0257, 0.0350, 0.0280, 0.0250, 0.0343, 0.0257, 0.0287, 0.0243, 0.0244, 0.0236, 0.0205, 0.0161, 0.0177];

    #[test]
    fn matches_the_onnx_model() {
        let Some(m) = model() else { return };
        let pcm: Vec<f32> = signal().iter().map(|&s| s as f32 / 32768.0).collect();
        let mut st = State::default();
        let probs: Vec<f32> = pcm.chunks_exact(WINDOW).map(|w| m.infer(&mut st, w)).collect();
        assert_eq!(probs.len(), ONNX.len());
        let worst = probs.iter().zip(ONNX).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 0.01, "max difference {worst}: {probs:?}");
    }
}
