//! `RECORDINGS_DIR`: each call's stereo WAV (`<CallSid>.wav`: left the caller, right what the
//! caller heard, 8 kHz 16-bit) and its record beside it (`<CallSid>.json`: direction, room,
//! times, outcome, underrun and gap statistics).
//!
//! Written as the call goes, off the call's task: chunks go through a bounded queue (a full
//! queue drops the chunk and counts it) to a writer that appends them in the blocking pool and
//! rewrites the WAV header every second, so a crash leaves a playable file up to the last
//! second. The JSON record is written when the recording starts (`"complete": false`) and
//! replaced (write, then rename) when the call ends.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hound::{SampleFormat, WavSpec, WavWriter};
use tokio::sync::mpsc;

/// Chunks (of ~200 ms) waiting for the disk: 12 s.
const QUEUE: usize = 64;
/// The header is rewritten after this many sample frames (one second).
const CHECKPOINT: u32 = proto::recording::RATE;

enum Chunk {
    Samples(Vec<i16>),
    Finish(serde_json::Value),
}

/// One call's recording being written.
pub struct Recording {
    tx: mpsc::Sender<Chunk>,
    /// The WAV's path (also given to the room, attribute `callbridge.recording`).
    pub path: PathBuf,
    dropped: Arc<AtomicU64>,
}

fn write_json(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

impl Recording {
    /// Creates `<dir>/<call_sid>.wav` and its first record. The CallSid was checked to be
    /// Twilio's (letters and digits only), so it is a safe file name.
    pub fn start(dir: &Path, call_sid: &str, record: serde_json::Value) -> std::io::Result<Recording> {
        if !crate::twilio_rest::is_call_sid(call_sid) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a CallSid"));
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{call_sid}.wav"));
        let json = path.with_extension("json");
        let spec = WavSpec { channels: 2, sample_rate: proto::recording::RATE, bits_per_sample: 16, sample_format: SampleFormat::Int };
        let mut wav = WavWriter::create(&path, spec).map_err(std::io::Error::other)?;
        wav.flush().map_err(std::io::Error::other)?;
        write_json(&json, &record)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_chunks(wav, json, rx));
        Ok(Recording { tx, path, dropped: Arc::new(AtomicU64::new(0)) })
    }

    /// Interleaved (left, right) samples; never waits (a full queue drops them).
    pub fn write(&self, samples: Vec<i16>) {
        if self.tx.try_send(Chunk::Samples(samples)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Chunks dropped because the disk fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The last samples and the final record; the file is closed with the right header.
    pub fn finish(self, last: Vec<i16>, record: serde_json::Value) {
        let tx = self.tx;
        tokio::spawn(async move {
            let _ = tx.send(Chunk::Samples(last)).await;
            let _ = tx.send(Chunk::Finish(record)).await;
        });
    }
}

/// The writer: each chunk is appended in the blocking pool (the writer moves there and back).
async fn write_chunks(wav: WavWriter<BufWriter<File>>, json: PathBuf, mut rx: mpsc::Receiver<Chunk>) {
    let mut wav = Some(wav);
    let mut since_checkpoint = 0u32;
    while let Some(chunk) = rx.recv().await {
        let Some(mut w) = wav.take() else { return };
        let json = json.clone();
        let done = matches!(chunk, Chunk::Finish(_));
        let res = tokio::task::spawn_blocking(move || -> (Option<WavWriter<BufWriter<File>>>, u32, Result<(), String>) {
            match chunk {
                Chunk::Samples(s) => {
                    for x in &s {
                        if let Err(e) = w.write_sample(*x) {
                            return (Some(w), 0, Err(e.to_string()));
                        }
                    }
                    let frames = (s.len() / 2) as u32;
                    if since_checkpoint + frames >= CHECKPOINT {
                        // A crash from here on still leaves a file that plays up to this point.
                        let r = w.flush().map_err(|e| e.to_string());
                        return (Some(w), 0, r);
                    }
                    (Some(w), since_checkpoint + frames, Ok(()))
                }
                Chunk::Finish(record) => {
                    let r = w.finalize().map_err(|e| e.to_string()).and_then(|()| write_json(&json, &record).map_err(|e| e.to_string()));
                    (None, 0, r)
                }
            }
        })
        .await;
        match res {
            Ok((w, n, Ok(()))) => {
                wav = w;
                since_checkpoint = n;
            }
            Ok((_, _, Err(e))) => {
                tracing::error!(error = %e, "recording: write failed; the rest of this call is not recorded");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "recording: writer task failed");
                return;
            }
        }
        if done {
            return;
        }
    }
    // The call went away without finishing (a panic): the writer's drop closes the file.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recording_plays_while_it_is_written_and_after_it_is_closed() {
        let dir = std::env::temp_dir().join(format!("callbridge-rec-{}", std::process::id()));
        let sid = "CA0123456789abcdef0123456789abcdef";
        let rec = Recording::start(&dir, sid, serde_json::json!({"complete": false})).unwrap();
        let path = rec.path.clone();
        for _ in 0..15 {
            rec.write((0..3200).map(|i| i as i16).collect()); // 200 ms each
        }
        // Mid-call, after a checkpoint: a reader sees at least the first second.
        let mut seen = 0;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if let Ok(r) = hound::WavReader::open(&path) {
                seen = r.duration();
                if seen >= 8000 {
                    break;
                }
            }
        }
        assert!(seen >= 8000, "{seen}");
        let rec_json = path.with_extension("json");
        assert_eq!(std::fs::read_to_string(&rec_json).unwrap().trim(), "{\n  \"complete\": false\n}");
        rec.finish(vec![1, 2], serde_json::json!({"complete": true}));
        let mut done = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if std::fs::read_to_string(&rec_json).unwrap_or_default().contains("true") {
                done = true;
                break;
            }
        }
        assert!(done);
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!((r.spec().channels, r.spec().sample_rate), (2, 8000));
        assert_eq!(r.duration(), 15 * 1600 + 1);
        assert!(Recording::start(&dir, "../etc/passwd", serde_json::json!({})).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
