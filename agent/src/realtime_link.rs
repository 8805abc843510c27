//! The socket to OpenAI Realtime for one call: caller audio out as 20 ms μ-law appends, the
//! conversation's client events out, server events in — on a task of its own, so a slow socket
//! never holds the call's loop. Caller audio that does not fit in the queue (2 s) is dropped and
//! counted. A refused session or a lost socket shows up as [`RealtimeEvent::Closed`], which the
//! conversation answers with an apology and a hang-up.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::AgentSpec;
use crate::conversation::tools;
use crate::providers::openai_realtime::{RealtimeConfig, RealtimeEvent, RealtimeSession};
use crate::silence_fill::SilenceFill;

/// Both directions run at the phone's rate: μ-law 8 kHz.
pub const RATE: u32 = 8_000;
const FRAME_SAMPLES: usize = 160;
/// Caller audio waiting for the socket: 2 s of 20 ms frames.
const UPLINK_FRAMES: usize = 100;

pub enum LinkCmd {
    Event(Value),
    Close,
}

pub struct Link {
    cmd_tx: Option<mpsc::Sender<LinkCmd>>,
    audio_tx: Option<mpsc::Sender<Vec<u8>>>,
    ev_rx: mpsc::Receiver<RealtimeEvent>,
    task: Option<JoinHandle<()>>,
    silence: SilenceFill,
    /// Caller frames dropped because the socket was slow.
    pub uplink_dropped: u64,
}

impl Link {
    /// Opens the session (the agent file's persona and tools unless the config has its own).
    /// A refusal is the link's first event.
    pub async fn connect(mut cfg: RealtimeConfig, spec: &AgentSpec) -> Link {
        if cfg.instructions.trim().is_empty() {
            cfg.instructions = tools::system_prompt(spec);
        }
        if cfg.tools.is_empty() {
            cfg.tools = tools::specs(spec);
        }
        let (cmd_tx, cmd_rx) = mpsc::channel::<LinkCmd>(256);
        let (audio_tx, audio_rx) = mpsc::channel::<Vec<u8>>(UPLINK_FRAMES);
        let (ev_tx, ev_rx) = mpsc::channel::<RealtimeEvent>(256);
        tracing::info!(url = %cfg.url(), voice = %cfg.voice, "connecting to OpenAI Realtime");
        let task = match RealtimeSession::connect(cfg).await {
            Ok(rt) => Some(tokio::spawn(pump(rt, audio_rx, cmd_rx, ev_tx))),
            Err(e) => {
                tracing::error!(error = %e, "OpenAI Realtime refused the session");
                let _ = ev_tx.try_send(RealtimeEvent::Closed(e));
                None
            }
        };
        Link { cmd_tx: Some(cmd_tx), audio_tx: Some(audio_tx), ev_rx, task, silence: SilenceFill::new(), uplink_dropped: 0 }
    }

    /// Where the conversation's client events go.
    pub fn commands(&self) -> Option<mpsc::Sender<LinkCmd>> {
        self.cmd_tx.clone()
    }

    /// The next server event (never returns once the link is over).
    pub async fn next_event(&mut self) -> RealtimeEvent {
        match self.ev_rx.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }

    /// One decoded frame of the caller's track (8 kHz); DTX pauses become silence, because the
    /// server's VAD needs the quiet after speech to end the turn.
    pub fn caller_audio(&mut self, pcm: &[i16], rtp_timestamp: u64, now: Instant) {
        for _ in 0..self.silence.on_frame(rtp_timestamp, now).min(50) {
            self.send_caller(&[0; FRAME_SAMPLES]);
        }
        self.send_caller(pcm);
    }

    pub fn silence_deadline(&self) -> Option<Instant> {
        self.silence.next_deadline()
    }

    pub fn silence_timer(&mut self, now: Instant) {
        for _ in 0..self.silence.on_timer(now).min(50) {
            self.send_caller(&[0; FRAME_SAMPLES]);
        }
    }

    pub fn reset_track(&mut self) {
        self.silence = SilenceFill::new();
    }

    fn send_caller(&mut self, pcm: &[i16]) {
        let Some(tx) = &self.audio_tx else { return };
        let ulaw: Vec<u8> = pcm.iter().map(|&s| proto::g711::ulaw_encode(s)).collect();
        if tx.try_send(ulaw).is_err() {
            self.uplink_dropped += 1;
            if self.uplink_dropped.is_power_of_two() {
                tracing::warn!(dropped = self.uplink_dropped, "realtime: socket slow, caller audio dropped");
            }
        }
    }

    /// Closes the socket (at most 2 s).
    pub async fn close(mut self) {
        if let Some(tx) = self.cmd_tx.take() {
            let _ = tx.try_send(LinkCmd::Close);
        }
        self.audio_tx = None;
        if self.uplink_dropped > 0 {
            tracing::warn!(frames = self.uplink_dropped, "caller audio frames dropped on the way to the model");
        }
        if let Some(h) = self.task.take() {
            let abort = h.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), h).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// Owns the socket. A send that fails ends the link with [`RealtimeEvent::Closed`].
async fn pump(mut rt: RealtimeSession, mut audio_rx: mpsc::Receiver<Vec<u8>>, mut cmd_rx: mpsc::Receiver<LinkCmd>, ev_tx: mpsc::Sender<RealtimeEvent>) {
    loop {
        tokio::select! {
            biased;
            c = cmd_rx.recv() => match c {
                Some(LinkCmd::Event(v)) => {
                    if let Err(e) = rt.send_event(v).await {
                        let _ = ev_tx.send(RealtimeEvent::Closed(e)).await;
                        return;
                    }
                }
                Some(LinkCmd::Close) | None => {
                    rt.close().await;
                    return;
                }
            },
            ev = rt.next_event() => match ev {
                Some(ev) => {
                    let closed = matches!(ev, RealtimeEvent::Closed(_));
                    if ev_tx.send(ev).await.is_err() || closed {
                        return;
                    }
                }
                None => {
                    let _ = ev_tx.send(RealtimeEvent::Closed(crate::providers::ProviderError::Connection { vendor: "openai-realtime", msg: "link ended".into() })).await;
                    return;
                }
            },
            a = audio_rx.recv() => match a {
                Some(ulaw) => {
                    if let Err(e) = rt.send_audio_ulaw(&ulaw).await {
                        let _ = ev_tx.send(RealtimeEvent::Closed(e)).await;
                        return;
                    }
                }
                None => {
                    rt.close().await;
                    return;
                }
            },
        }
    }
}
