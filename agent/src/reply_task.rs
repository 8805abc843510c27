//! A reply task: one LLM answer (or one line) spoken sentence by sentence, reported to the
//! conversation as [`ReplyEvent`]s. The LLM keeps streaming while a second task speaks the
//! sentences (one TTS stream each), so the first sentence plays while the rest is written.
//! Audio is resampled to the playout's rate here. Aborting the task stops both.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::conversation::{ReplyEvent, ReplyId, ReplySource, Stage, Voice};
use crate::providers::{LlmEvent, LlmProvider, ProviderError, TtsEvent, TtsProvider};

/// What reply tasks need.
#[derive(Clone)]
pub struct Voices {
    pub llm: Option<Arc<dyn LlmProvider>>,
    pub main: Arc<dyn TtsProvider>,
    pub fallback: Arc<dyn TtsProvider>,
    /// The playout's sample rate.
    pub rate: u32,
}

type Events = mpsc::Sender<(ReplyId, ReplyEvent)>;

/// Only a refused key is worth giving up on at once; the rest may pass.
fn fatal(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Auth { .. })
}

pub fn spawn(reply: ReplyId, source: ReplySource, voice: Voice, v: Voices, tx: Events) -> JoinHandle<()> {
    tokio::spawn(run(reply, source, voice, v, tx))
}

async fn run(reply: ReplyId, source: ReplySource, voice: Voice, v: Voices, tx: Events) {
    let ev = |e: ReplyEvent| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((reply, e)).await;
        }
    };
    let tts = match voice {
        Voice::Main => v.main.clone(),
        Voice::Fallback => v.fallback.clone(),
    };
    // Sentences are spoken by a task of their own so the LLM keeps streaming meanwhile.
    let (sent_tx, mut sent_rx) = mpsc::channel::<(usize, String)>(32);
    let speaker = {
        let (tx, rate) = (tx.clone(), v.rate);
        tokio::spawn(async move {
            while let Some((seg, text)) = sent_rx.recv().await {
                if let Err((e, fatal)) = speak(&tts, rate, reply, seg, &text, &tx).await {
                    let _ = tx.send((reply, ReplyEvent::Failed { stage: Stage::Tts, error: e, fatal })).await;
                    return false;
                }
            }
            true
        })
    };
    let mut seg = 0usize;
    let mut sentence = |text: String| {
        let s = seg;
        seg += 1;
        let (sent_tx, ev) = (sent_tx.clone(), ev.clone());
        async move {
            ev(ReplyEvent::Sentence { seg: s, text: text.clone() }).await;
            let _ = sent_tx.send((s, text)).await;
        }
    };
    match source {
        ReplySource::Text(t) => sentence(t).await,
        ReplySource::Llm { messages, tools } => {
            let Some(llm) = v.llm.clone() else {
                ev(ReplyEvent::Failed { stage: Stage::Llm, error: "no language model in this pipeline".into(), fatal: true }).await;
                return;
            };
            let mut rx = match llm.stream(&messages, &tools).await {
                Ok(rx) => rx,
                Err(e) => {
                    let fatal = fatal(&e);
                    ev(ReplyEvent::Failed { stage: Stage::Llm, error: e.to_string(), fatal }).await;
                    return;
                }
            };
            let mut split = SentenceSplitter::new(12);
            let mut first = true;
            let mut finish = "stop".to_string();
            while let Some(item) = rx.recv().await {
                if first && matches!(item, Ok(LlmEvent::TextDelta(_) | LlmEvent::ToolCall(_))) {
                    first = false;
                    ev(ReplyEvent::FirstToken).await;
                }
                match item {
                    Ok(LlmEvent::TextDelta(d)) => {
                        for s in split.push(&d) {
                            sentence(s).await;
                        }
                    }
                    Ok(LlmEvent::ToolCall(call)) => ev(ReplyEvent::ToolCall(call)).await,
                    Ok(LlmEvent::Done { finish_reason }) => {
                        finish = finish_reason;
                        break;
                    }
                    Err(e) => {
                        let fatal = fatal(&e);
                        ev(ReplyEvent::Failed { stage: Stage::Llm, error: e.to_string(), fatal }).await;
                        return;
                    }
                }
            }
            if let Some(s) = split.finish() {
                sentence(s).await;
            }
            ev(ReplyEvent::LlmDone { finish_reason: finish }).await;
        }
    }
    drop(sentence);
    drop(sent_tx);
    if speaker.await.unwrap_or(false) {
        ev(ReplyEvent::Done).await;
    }
}

/// Speaks one sentence with a TTS stream of its own; audio goes out as it comes.
async fn speak(tts: &Arc<dyn TtsProvider>, rate: u32, reply: ReplyId, seg: usize, text: &str, tx: &Events) -> Result<(), (String, bool)> {
    let err = |e: ProviderError| (e.to_string(), fatal(&e));
    let mut s = tts.start().await.map_err(err)?;
    s.push_text(text).await.map_err(err)?;
    s.finish().await.map_err(err)?;
    let mut rs = Rechunk::new(tts.output_rate(), rate).map_err(|e| (e, true))?;
    while let Some(e) = s.next_event().await {
        match e {
            TtsEvent::Audio(pcm) => {
                let pcm = rs.push(&pcm);
                if !pcm.is_empty() && tx.send((reply, ReplyEvent::Audio { seg, pcm })).await.is_err() {
                    return Ok(());
                }
            }
            TtsEvent::Done => break,
            TtsEvent::Error(e) => return Err((e, false)),
        }
    }
    let tail = rs.finish();
    if !tail.is_empty() {
        let _ = tx.send((reply, ReplyEvent::Audio { seg, pcm: tail })).await;
    }
    Ok(())
}

/// Audio from a TTS at its rate to the playout's (nothing to do when they match).
struct Rechunk {
    rs: Option<proto::resample::Resampler>,
    pending: Vec<i16>,
}

impl Rechunk {
    fn new(from: u32, to: u32) -> Result<Rechunk, String> {
        let rs = if from == to { None } else { Some(proto::resample::Resampler::new(from, to).map_err(|e| e.to_string())?) };
        Ok(Rechunk { rs, pending: Vec::new() })
    }

    fn push(&mut self, pcm: &[i16]) -> Vec<i16> {
        let Some(rs) = &mut self.rs else { return pcm.to_vec() };
        self.pending.extend_from_slice(pcm);
        let n = rs.input_len();
        let mut out = Vec::new();
        while self.pending.len() >= n {
            let chunk: Vec<i16> = self.pending.drain(..n).collect();
            if let Err(e) = rs.process(&chunk, &mut out) {
                tracing::warn!(error = %e, "resampling failed; audio dropped");
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<i16> {
        let Some(rs) = &mut self.rs else { return Vec::new() };
        if self.pending.is_empty() {
            return Vec::new();
        }
        let mut chunk = std::mem::take(&mut self.pending);
        chunk.resize(rs.input_len(), 0);
        let mut out = Vec::new();
        let _ = rs.process(&chunk, &mut out);
        out
    }
}

/// Splits streamed text into sentences for the TTS: at `.`, `?`, `!`, `;` or a newline followed
/// by whitespace, once a sentence has at least `min_chars` (short ones join the next).
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buf: String,
    min_chars: usize,
}

impl SentenceSplitter {
    pub fn new(min_chars: usize) -> Self {
        SentenceSplitter {
            buf: String::new(),
            min_chars,
        }
    }

    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            let bytes = self.buf.as_bytes();
            let mut cut = None;
            for i in 0..bytes.len() {
                let c = bytes[i];
                let end = matches!(c, b'.' | b'?' | b'!' | b';')
                    && bytes.get(i + 1).is_some_and(|n| n.is_ascii_whitespace());
                if (end || c == b'\n') && i + 1 >= self.min_chars {
                    cut = Some(i + 1);
                    break;
                }
            }
            match cut {
                Some(i) => {
                    let s: String = self.buf.drain(..i).collect();
                    if !s.trim().is_empty() {
                        out.push(s.trim().to_string());
                    }
                }
                None => break,
            }
        }
        out
    }

    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        (!s.trim().is_empty()).then(|| s.trim().to_string())
    }
}
