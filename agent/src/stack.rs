//! Which STT / LLM / TTS a call uses. With no vendor keys in the environment everything is
//! offline: pocketsphinx, the rule-based dialog, espeak-ng.

use std::sync::Arc;

use crate::config::{AgentSpec, Cli};
use crate::providers::offline_stt::OfflineStt;
use crate::providers::offline_tts::OfflineTts;
use crate::providers::rules_llm::RulesLlm;
use crate::providers::{LlmProvider, SttProvider, TtsProvider};
use crate::vad::VadConfig;

/// Output rate of the offline TTS (espeak's 22 050 Hz resampled): wideband, cheap for Opus.
pub const OFFLINE_TTS_RATE: u32 = 16_000;

#[derive(Clone)]
pub struct Stack {
    pub stt: Arc<dyn SttProvider>,
    pub llm: Arc<dyn LlmProvider>,
    pub tts: Arc<dyn TtsProvider>,
}

impl Stack {
    /// The offline stack for `spec`.
    pub fn offline(spec: &Arc<AgentSpec>) -> anyhow::Result<Stack> {
        let model = OfflineStt::model_for(spec)?;
        Ok(Stack {
            stt: Arc::new(OfflineStt::new(model, VadConfig::from_turn(&spec.turn))),
            llm: Arc::new(RulesLlm::new(spec.clone())),
            tts: Arc::new(OfflineTts::new(
                &spec.voice.espeak_voice,
                spec.voice.espeak_wpm,
                OFFLINE_TTS_RATE,
            )),
        })
    }

    /// What the command line / environment asks for. Cloud providers are chosen when their
    /// keys are set and `auto` is asked; until they are wired in here, `auto` is offline.
    pub fn from_cli(cli: &Cli, spec: &Arc<AgentSpec>) -> anyhow::Result<Stack> {
        for (what, v) in [("stt", &cli.stt), ("llm", &cli.llm), ("tts", &cli.tts)] {
            let ok = match what {
                "stt" => ["auto", "offline", "pocketsphinx"].contains(&v.as_str()),
                "llm" => ["auto", "rules", "offline"].contains(&v.as_str()),
                _ => ["auto", "offline", "espeak", "espeak-ng"].contains(&v.as_str()),
            };
            if !ok {
                anyhow::bail!("--{what} {v:?}: this build offers auto or offline");
            }
        }
        let keys: Vec<&str> = [
            "DEEPGRAM_API_KEY",
            "OPENAI_API_KEY",
            "GROQ_API_KEY",
            "CARTESIA_API_KEY",
            "ELEVENLABS_API_KEY",
        ]
        .into_iter()
        .filter(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
        .collect();
        if !keys.is_empty() {
            tracing::warn!(?keys, "vendor keys are set but the cloud stack is not wired into `agent` yet; using the offline stack");
        }
        Stack::offline(spec)
    }
}
