//! The stream plumbing shared by the voices that run in this process (espeak-ng, Piper): text
//! goes in sentence by sentence, audio comes out as it is made, resampled to the call's rate,
//! and cancel stops it at once — including audio already queued, which must not be played.
//!
//! [`start`] returns both halves: the [`TtsStream`] the conversation loop holds, and the
//! [`Synthesis`] the voice's task works from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::offline_tts::SincResampler;
use super::{ProviderError, TtsEvent, TtsStream};

/// The conversation loop's half.
pub struct LocalStream {
    vendor: &'static str,
    /// `None` after `finish` or `cancel`: the voice's task sees the end of the text.
    tx: Option<mpsc::Sender<String>>,
    rx: mpsc::Receiver<TtsEvent>,
    cancel: Arc<AtomicBool>,
}

/// The voice's half: the text to speak, and where its audio goes.
pub struct Synthesis {
    texts: mpsc::Receiver<String>,
    events: mpsc::Sender<TtsEvent>,
    pub cancel: Arc<AtomicBool>,
    resampler: SincResampler,
    out_rate: u32,
    voice_rate: u32,
}

/// A stream for a voice that speaks at `voice_rate`, published at `out_rate`.
pub fn start(vendor: &'static str, voice_rate: u32, out_rate: u32) -> (Box<dyn TtsStream>, Synthesis) {
    let (tx, texts) = mpsc::channel::<String>(64);
    let (events, rx) = mpsc::channel::<TtsEvent>(256);
    let cancel = Arc::new(AtomicBool::new(false));
    let stream = LocalStream { vendor, tx: Some(tx), rx, cancel: cancel.clone() };
    let synthesis = Synthesis {
        texts,
        events,
        cancel,
        resampler: SincResampler::new(voice_rate, out_rate),
        out_rate,
        voice_rate,
    };
    (Box::new(stream), synthesis)
}

impl Synthesis {
    /// The next text to speak; `None` when the reply is finished (or cancelled).
    pub async fn next_text(&mut self) -> Option<String> {
        loop {
            let text = self.texts.recv().await?;
            if !text.trim().is_empty() {
                return Some(text);
            }
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Hands on a chunk of the voice's audio. False when the stream was cancelled or dropped:
    /// stop synthesising.
    pub async fn audio(&mut self, pcm: &[i16]) -> bool {
        if self.cancelled() {
            return false;
        }
        let mut out = Vec::with_capacity(pcm.len() * self.out_rate as usize / self.voice_rate as usize + 8);
        self.resampler.process(pcm, &mut out);
        if !out.is_empty() && self.events.send(TtsEvent::Audio(out)).await.is_err() {
            self.cancel.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub async fn error(&self, msg: impl Into<String>) {
        let _ = self.events.send(TtsEvent::Error(msg.into())).await;
    }

    /// Everything was spoken: the resampler's tail, then `Done`.
    pub async fn done(mut self) {
        if self.cancelled() {
            return;
        }
        let mut tail = Vec::new();
        self.resampler.flush(&mut tail);
        if !tail.is_empty() {
            let _ = self.events.send(TtsEvent::Audio(tail)).await;
        }
        let _ = self.events.send(TtsEvent::Done).await;
    }
}

#[async_trait]
impl TtsStream for LocalStream {
    async fn push_text(&mut self, text: &str) -> Result<(), ProviderError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or(ProviderError::Other { vendor: self.vendor, msg: "stream finished".into() })?;
        tx.send(text.to_string())
            .await
            .map_err(|_| ProviderError::Connection { vendor: self.vendor, msg: "synthesis task ended".into() })
    }

    async fn finish(&mut self) -> Result<(), ProviderError> {
        self.tx = None;
        Ok(())
    }

    async fn cancel(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.tx = None;
        self.rx.close();
        // Audio already queued is not to be played either.
        while self.rx.try_recv().is_ok() {}
    }

    async fn next_event(&mut self) -> Option<TtsEvent> {
        self.rx.recv().await
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn text_in_audio_out_then_done() {
        let (mut stream, mut syn) = start("test", 16_000, 8_000);
        stream.push_text("one").await.unwrap();
        stream.push_text("  ").await.unwrap();
        stream.push_text("two").await.unwrap();
        stream.finish().await.unwrap();
        assert!(stream.push_text("late").await.is_err());
        let voice = tokio::spawn(async move {
            let mut said = Vec::new();
            while let Some(t) = syn.next_text().await {
                assert!(syn.audio(&vec![1000i16; 1600]).await);
                said.push(t);
            }
            syn.done().await;
            said
        });
        let mut samples = 0;
        loop {
            match stream.next_event().await {
                Some(TtsEvent::Audio(a)) => samples += a.len(),
                Some(TtsEvent::Done) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(voice.await.unwrap(), vec!["one", "two"], "blank text is skipped");
        // 2 × 1600 samples at 16 kHz → ~1600 at 8 kHz (resampler delay flushed at the end)
        assert!((1500..=1700).contains(&samples), "{samples}");
    }

    #[tokio::test]
    async fn cancel_drops_queued_audio_and_stops_the_voice() {
        let (mut stream, mut syn) = start("test", 8_000, 8_000);
        stream.push_text("hello").await.unwrap();
        assert_eq!(syn.next_text().await.as_deref(), Some("hello"));
        assert!(syn.audio(&vec![1000i16; 800]).await);
        stream.cancel().await;
        assert_eq!(stream.next_event().await, None, "queued audio is gone");
        assert!(!syn.audio(&vec![1000i16; 800]).await, "the voice is told to stop");
        assert_eq!(syn.next_text().await, None);
    }
}
