//! Which STT / LLM / TTS a call uses.
//!
//! `--stt/--llm/--tts auto` (the default) picks a cloud provider when its key is in the
//! environment and the offline one otherwise, so with no keys at all everything is offline:
//! pocketsphinx, the rule-based dialog, espeak-ng.
//!
//! | choice | needs | optional |
//! |---|---|---|
//! | stt `deepgram` | `DEEPGRAM_API_KEY` | `DEEPGRAM_BASE_URL` |
//! | llm `openai` | `OPENAI_API_KEY` | `OPENAI_MODEL` (gpt-4o-mini), `OPENAI_BASE_URL` |
//! | llm `groq` | `GROQ_API_KEY` | `GROQ_MODEL` (llama-3.3-70b-versatile), `GROQ_BASE_URL` |
//! | tts `cartesia` | `CARTESIA_API_KEY`, `CARTESIA_VOICE_ID` | `CARTESIA_BASE_URL` |
//! | tts `elevenlabs` | `ELEVENLABS_API_KEY` | `ELEVENLABS_VOICE_ID`, `ELEVENLABS_BASE_URL` |
//!
//! `auto` prefers, in order: deepgram; openai, groq; cartesia, elevenlabs.
//!
//! Optional local models, each behind a cargo feature (`scripts/models.sh` fetches them):
//!
//! | choice | feature | needs |
//! |---|---|---|
//! | stt `whisper` | `whisper` | `WHISPER_MODEL_DIR` (default `models/whisper-tiny.en/model`) |
//! | llm `llama` | `llama` | `LLAMA_MODEL` (default `models/smollm2/…gguf`) |
//! | tts `piper` | `piper` | `PIPER_MODEL`, `ORT_DYLIB_PATH` (defaults under `models/`) |
//!
//! Without keys, `auto` takes a local model when its feature is built and its variable is set,
//! and the embedded default (pocketsphinx, rules, espeak-ng) otherwise.
//!
//! **Realtime mode** (`--mode realtime`, or `--llm openai-realtime`): one OpenAI Realtime
//! session per call replaces STT, LLM and TTS ([`Pipeline::Realtime`]); no recogniser is built. Needs `OPENAI_API_KEY`; optional `OPENAI_REALTIME_BASE_URL`
//! (default `wss://api.openai.com/v1`), `OPENAI_REALTIME_API` (`ga`/`beta`),
//! `OPENAI_REALTIME_MODEL`, `OPENAI_REALTIME_VOICE`, `OPENAI_REALTIME_TRANSCRIBE`. The TTS
//! chosen as above still speaks the fallback lines when the vendor fails.

use std::sync::Arc;

use crate::config::{AgentSpec, Cli};
use crate::providers::cartesia::{CartesiaConfig, CartesiaTts};
use crate::providers::deepgram::{DeepgramConfig, DeepgramStt};
use crate::providers::elevenlabs::{ElevenLabsConfig, ElevenLabsTts};
use crate::providers::offline_stt::OfflineStt;
use crate::providers::offline_tts::OfflineTts;
use crate::providers::openai_chat::{ChatConfig, OpenAiChat};
use crate::providers::openai_realtime::{RealtimeApi, RealtimeConfig};
use crate::providers::rules_llm::RulesLlm;
use crate::providers::{LlmProvider, SttProvider, TtsProvider};
use crate::vad::{Detector, VadConfig};

/// Output rate of the offline TTS (espeak's 22 050 Hz resampled): wideband, cheap for Opus.
pub const OFFLINE_TTS_RATE: u32 = 16_000;
/// ElevenLabs' premade "Rachel" voice, used when `ELEVENLABS_VOICE_ID` is not set.
pub const ELEVENLABS_DEFAULT_VOICE: &str = "21m00Tcm4TlvDq8ikWAM";

/// How calls hear, think and speak.
#[derive(Clone)]
pub enum Pipeline {
    /// VAD → STT → LLM → TTS.
    Cascaded { stt: Arc<dyn SttProvider>, llm: Arc<dyn LlmProvider>, tts: Arc<dyn TtsProvider> },
    /// One OpenAI Realtime session per call (empty `instructions`/`tools` are filled from the
    /// agent file at call time).
    Realtime { cfg: RealtimeConfig },
}

#[derive(Clone)]
pub struct Stack {
    pub pipeline: Pipeline,
    /// The voice of last resort for apologies: espeak-ng in cascaded mode (when the call's own
    /// TTS is what failed), the chosen `--tts` in Realtime mode (when the model failed).
    pub fallback_tts: Arc<dyn TtsProvider>,
    /// The voice activity detector calls use (turn-taking and the utterance recognisers).
    pub vad: Detector,
}

impl Stack {
    /// Names of the providers, for the log.
    pub fn describe(&self) -> String {
        match &self.pipeline {
            Pipeline::Cascaded { stt, llm, tts } => format!("stt={} llm={} tts={} vad={}", stt.name(), llm.name(), tts.name(), self.vad.name()),
            Pipeline::Realtime { cfg } => format!("realtime model={} voice={} api={:?} fallback_tts={}", cfg.model, cfg.voice, cfg.api, self.fallback_tts.name()),
        }
    }

    /// The cascaded providers (None in Realtime mode).
    pub fn cascaded(&self) -> Option<(&Arc<dyn SttProvider>, &Arc<dyn LlmProvider>, &Arc<dyn TtsProvider>)> {
        match &self.pipeline {
            Pipeline::Cascaded { stt, llm, tts } => Some((stt, llm, tts)),
            Pipeline::Realtime { .. } => None,
        }
    }
}

/// Whether calls run on OpenAI Realtime, from `--mode` and `--llm`.
pub fn realtime_mode(mode: &str, llm: &str) -> Result<bool, String> {
    let realtime_llm = matches!(llm, "openai-realtime" | "realtime");
    match mode {
        "auto" => Ok(realtime_llm),
        "realtime" => Ok(true),
        "cascaded" | "pipeline" if realtime_llm => {
            Err(format!("--llm {llm} needs --mode realtime (or auto)"))
        }
        "cascaded" | "pipeline" => Ok(false),
        other => Err(format!("--mode {other:?}: use auto, cascaded or realtime")),
    }
}

/// The Realtime connection asked for: `api` (`ga`/`beta`), base URL, optional model and
/// voice (defaults per API), transcription model (`none`: off); the key from `OPENAI_API_KEY`.
pub fn realtime_config(
    api: &str,
    base_url: &str,
    model: Option<&str>,
    voice: Option<&str>,
    transcribe: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<RealtimeConfig, String> {
    let key = env("OPENAI_API_KEY")
        .filter(|k| !k.trim().is_empty())
        .ok_or("realtime mode needs OPENAI_API_KEY")?;
    let api = match api {
        "ga" | "GA" => RealtimeApi::Ga,
        "beta" => RealtimeApi::Beta,
        other => return Err(format!("--realtime-api {other:?}: use ga or beta")),
    };
    let mut cfg = RealtimeConfig::new(key, api);
    if base_url.trim().is_empty() {
        return Err("--realtime-base-url is empty".into());
    }
    cfg.base_url = base_url.trim().to_string();
    if let Some(m) = model.filter(|m| !m.trim().is_empty()) {
        cfg.model = m.trim().to_string();
    }
    if let Some(v) = voice.filter(|v| !v.trim().is_empty()) {
        cfg.voice = v.trim().to_string();
    }
    cfg.transcription_model = match transcribe.trim() {
        "" | "none" | "off" => None,
        m => Some(m.to_string()),
    };
    Ok(cfg)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub stt: &'static str,
    pub llm: &'static str,
    pub tts: &'static str,
}

/// Decide the providers from the three flags and the environment (`env(name)` → value).
pub fn choose(
    stt: &str,
    llm: &str,
    tts: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Choice, String> {
    let has = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let need = |what: &str, keys: &[&str]| -> Result<(), String> {
        match keys.iter().find(|k| !has(k)) {
            Some(k) => Err(format!("{what} needs {k}")),
            None => Ok(()),
        }
    };
    let built = |feature: &str, what: &str| -> Result<(), String> {
        if feature_built(feature) {
            Ok(())
        } else {
            Err(format!("{what} needs the agent built with `--features {feature}`"))
        }
    };
    let local = |feature: &str, var: &str| feature_built(feature) && has(var);
    let stt = match stt {
        "auto" => {
            if has("DEEPGRAM_API_KEY") {
                "deepgram"
            } else if local("whisper", "WHISPER_MODEL_DIR") {
                "whisper"
            } else {
                "offline"
            }
        }
        "offline" | "pocketsphinx" => "offline",
        "whisper" => {
            built("whisper", "--stt whisper")?;
            "whisper"
        }
        "deepgram" => {
            need("--stt deepgram", &["DEEPGRAM_API_KEY"])?;
            "deepgram"
        }
        other => return Err(format!("--stt {other:?}: use auto, offline, whisper or deepgram")),
    };
    let llm = match llm {
        "auto" => {
            if has("OPENAI_API_KEY") {
                "openai"
            } else if has("GROQ_API_KEY") {
                "groq"
            } else if local("llama", "LLAMA_MODEL") {
                "llama"
            } else {
                "rules"
            }
        }
        "rules" | "offline" => "rules",
        "llama" | "local" => {
            built("llama", "--llm llama")?;
            "llama"
        }
        "openai" => {
            need("--llm openai", &["OPENAI_API_KEY"])?;
            "openai"
        }
        "groq" => {
            need("--llm groq", &["GROQ_API_KEY"])?;
            "groq"
        }
        other => return Err(format!("--llm {other:?}: use auto, rules, llama, openai or groq")),
    };
    let tts = match tts {
        "auto" => {
            if has("CARTESIA_API_KEY") && has("CARTESIA_VOICE_ID") {
                "cartesia"
            } else if has("ELEVENLABS_API_KEY") {
                "elevenlabs"
            } else if local("piper", "PIPER_MODEL") {
                "piper"
            } else {
                "offline"
            }
        }
        "offline" | "espeak" | "espeak-ng" => "offline",
        "piper" => {
            built("piper", "--tts piper")?;
            "piper"
        }
        "cartesia" => {
            need("--tts cartesia", &["CARTESIA_API_KEY", "CARTESIA_VOICE_ID"])?;
            "cartesia"
        }
        "elevenlabs" => {
            need("--tts elevenlabs", &["ELEVENLABS_API_KEY"])?;
            "elevenlabs"
        }
        other => {
            return Err(format!(
                "--tts {other:?}: use auto, offline, piper, cartesia or elevenlabs"
            ))
        }
    };
    Ok(Choice { stt, llm, tts })
}

/// Whether this binary was built with an optional model feature.
pub fn feature_built(feature: &str) -> bool {
    match feature {
        "whisper" => cfg!(feature = "whisper"),
        "llama" => cfg!(feature = "llama"),
        "piper" => cfg!(feature = "piper"),
        _ => false,
    }
}

impl Stack {
    /// The offline stack for `spec`.
    pub fn offline(spec: &Arc<AgentSpec>) -> anyhow::Result<Stack> {
        let c = Choice {
            stt: "offline",
            llm: "rules",
            tts: "offline",
        };
        Stack::build(&c, spec, |_| None)
    }

    /// What the command line / environment asks for.
    pub fn from_cli(cli: &Cli, spec: &Arc<AgentSpec>) -> anyhow::Result<Stack> {
        let env = |k: &str| match k {
            "AGENT_VAD" => Some(cli.vad.clone()),
            "SILERO_VAD_MODEL" => cli.silero_vad_model.as_ref().map(|p| p.display().to_string()),
            _ => std::env::var(k).ok(),
        };
        if realtime_mode(&cli.mode, &cli.llm).map_err(anyhow::Error::msg)? {
            let rt = realtime_config(
                &cli.realtime_api,
                &cli.realtime_base_url,
                cli.realtime_model.as_deref(),
                cli.realtime_voice.as_deref(),
                &cli.realtime_transcribe,
                env,
            )
            .map_err(anyhow::Error::msg)?;
            // The model does the talking; the chosen TTS is only the fallback voice.
            let c = choose("offline", "rules", &cli.tts, env).map_err(anyhow::Error::msg)?;
            let fallback_tts = build_tts(c.tts, spec, env)?;
            return Ok(Stack { pipeline: Pipeline::Realtime { cfg: rt }, fallback_tts, vad: Detector::Energy });
        }
        let c = choose(&cli.stt, &cli.llm, &cli.tts, env).map_err(anyhow::Error::msg)?;
        Stack::build(&c, spec, env)
    }

    /// Calls on this stack talk to OpenAI Realtime (its TTS speaks the fallback lines).
    pub fn with_realtime(self, cfg: RealtimeConfig) -> Stack {
        let fallback_tts = match &self.pipeline {
            Pipeline::Cascaded { tts, .. } => tts.clone(),
            Pipeline::Realtime { .. } => self.fallback_tts.clone(),
        };
        Stack { pipeline: Pipeline::Realtime { cfg }, fallback_tts, vad: self.vad }
    }

    pub fn build(
        c: &Choice,
        spec: &Arc<AgentSpec>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Stack> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let key = |k: &str| get(k).unwrap_or_default();
        let vad = Detector::choose(get("AGENT_VAD").as_deref().unwrap_or("auto"), get("SILERO_VAD_MODEL").map(Into::into))
            .map_err(anyhow::Error::msg)?;
        let stt: Arc<dyn SttProvider> = match c.stt {
            #[cfg(feature = "whisper")]
            "whisper" => Arc::new(
                crate::providers::whisper_stt::WhisperStt::from_env(get, VadConfig::from_turn(&spec.turn), vad.clone())?
                .expecting(&spec.expected_examples().join(". ")),
            ),
            "deepgram" => {
                let mut cfg = DeepgramConfig::new(key("DEEPGRAM_API_KEY"));
                if let Some(b) = get("DEEPGRAM_BASE_URL") {
                    cfg.base_url = b;
                }
                Arc::new(DeepgramStt::new(cfg))
            }
            _ => Arc::new(
                OfflineStt::new(OfflineStt::model_for(spec)?, VadConfig::from_turn(&spec.turn)).with_detector(vad.clone()),
            ),
        };
        let llm: Arc<dyn LlmProvider> = match c.llm {
            #[cfg(feature = "llama")]
            "llama" => Arc::new(crate::providers::llama_llm::LlamaLlm::from_env(get)?),
            "openai" => {
                let mut cfg = ChatConfig::openai(
                    key("OPENAI_API_KEY"),
                    get("OPENAI_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
                );
                if let Some(b) = get("OPENAI_BASE_URL") {
                    cfg.base_url = b;
                }
                Arc::new(OpenAiChat::new(cfg))
            }
            "groq" => {
                let mut cfg = ChatConfig::groq(
                    key("GROQ_API_KEY"),
                    get("GROQ_MODEL").unwrap_or_else(|| "llama-3.3-70b-versatile".into()),
                );
                if let Some(b) = get("GROQ_BASE_URL") {
                    cfg.base_url = b;
                }
                Arc::new(OpenAiChat::new(cfg))
            }
            _ => Arc::new(RulesLlm::new(spec.clone())),
        };
        let tts = build_tts(c.tts, spec, &env)?;
        let fallback_tts: Arc<dyn TtsProvider> = if tts.name() == "espeak-ng" {
            tts.clone()
        } else {
            Arc::new(OfflineTts::new(&spec.voice.espeak_voice, spec.voice.espeak_wpm, OFFLINE_TTS_RATE))
        };
        Ok(Stack { pipeline: Pipeline::Cascaded { stt, llm, tts }, fallback_tts, vad })
    }
}

/// The TTS `choice` names.
fn build_tts(choice: &str, spec: &Arc<AgentSpec>, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Arc<dyn TtsProvider>> {
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let key = |k: &str| get(k).unwrap_or_default();
    let tts: Arc<dyn TtsProvider> = match choice {
            #[cfg(feature = "piper")]
            "piper" => Arc::new(crate::providers::piper_tts::PiperTts::from_env(
                get,
                OFFLINE_TTS_RATE,
            )?),
            "cartesia" => {
                let mut cfg =
                    CartesiaConfig::new(key("CARTESIA_API_KEY"), key("CARTESIA_VOICE_ID"));
                if let Some(b) = get("CARTESIA_BASE_URL") {
                    cfg.base_url = b;
                }
                Arc::new(CartesiaTts::new(cfg))
            }
            "elevenlabs" => {
                let voice =
                    get("ELEVENLABS_VOICE_ID").unwrap_or_else(|| ELEVENLABS_DEFAULT_VOICE.into());
                let mut cfg = ElevenLabsConfig::new(key("ELEVENLABS_API_KEY"), voice);
                if let Some(b) = get("ELEVENLABS_BASE_URL") {
                    cfg.base_url = b;
                }
                Arc::new(ElevenLabsTts::new(cfg))
            }
            _ => Arc::new(OfflineTts::new(
                &spec.voice.espeak_voice,
                spec.voice.espeak_wpm,
                OFFLINE_TTS_RATE,
            )),
        };
    Ok(tts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn local_models_are_chosen_only_when_built_and_configured() {
        let models = env(&[
            ("WHISPER_MODEL_DIR", "/m/w"),
            ("LLAMA_MODEL", "/m/l.gguf"),
            ("PIPER_MODEL", "/m/p.onnx"),
        ]);
        let auto = choose("auto", "auto", "auto", &models).unwrap();
        assert_eq!(auto.stt == "whisper", cfg!(feature = "whisper"), "{auto:?}");
        assert_eq!(auto.llm == "llama", cfg!(feature = "llama"), "{auto:?}");
        assert_eq!(auto.tts == "piper", cfg!(feature = "piper"), "{auto:?}");
        // Cloud keys still win over local models.
        let both = env(&[("DEEPGRAM_API_KEY", "d"), ("WHISPER_MODEL_DIR", "/m/w")]);
        assert_eq!(choose("auto", "auto", "auto", &both).unwrap().stt, "deepgram");
        // Asked for by name: works when built, else says which feature is missing.
        for (stt, llm, tts, feature) in [
            ("whisper", "auto", "auto", "whisper"),
            ("auto", "llama", "auto", "llama"),
            ("auto", "auto", "piper", "piper"),
        ] {
            match choose(stt, llm, tts, env(&[])) {
                Ok(_) => assert!(feature_built(feature)),
                Err(e) => {
                    assert!(!feature_built(feature));
                    assert!(e.contains(&format!("--features {feature}")), "{e}");
                }
            }
        }
    }

    #[test]
    fn no_keys_means_offline() {
        let c = choose("auto", "auto", "auto", env(&[])).unwrap();
        assert_eq!(
            c,
            Choice {
                stt: "offline",
                llm: "rules",
                tts: "offline"
            }
        );
    }

    #[test]
    fn keys_pick_cloud_providers() {
        let e = env(&[
            ("DEEPGRAM_API_KEY", "d"),
            ("GROQ_API_KEY", "g"),
            ("ELEVENLABS_API_KEY", "e"),
            ("CARTESIA_API_KEY", "c"),
        ]);
        // Cartesia without a voice id is not chosen automatically.
        assert_eq!(
            choose("auto", "auto", "auto", &e).unwrap(),
            Choice {
                stt: "deepgram",
                llm: "groq",
                tts: "elevenlabs"
            }
        );
        let e2 = env(&[
            ("OPENAI_API_KEY", "o"),
            ("GROQ_API_KEY", "g"),
            ("CARTESIA_API_KEY", "c"),
            ("CARTESIA_VOICE_ID", "v"),
        ]);
        assert_eq!(
            choose("auto", "auto", "auto", &e2).unwrap(),
            Choice {
                stt: "offline",
                llm: "openai",
                tts: "cartesia"
            }
        );
        // Forced offline despite keys.
        assert_eq!(
            choose("offline", "rules", "offline", &e2).unwrap(),
            Choice {
                stt: "offline",
                llm: "rules",
                tts: "offline"
            }
        );
        assert!(choose("deepgram", "auto", "auto", env(&[]))
            .unwrap_err()
            .contains("DEEPGRAM_API_KEY"));
        assert!(choose(
            "auto",
            "auto",
            "cartesia",
            env(&[("CARTESIA_API_KEY", "c")])
        )
        .unwrap_err()
        .contains("CARTESIA_VOICE_ID"));
        assert!(choose("kaldi", "auto", "auto", env(&[]))
            .unwrap_err()
            .contains("use auto, offline, whisper or deepgram"));
    }

    #[test]
    fn realtime_mode_from_flags() {
        assert_eq!(realtime_mode("auto", "auto"), Ok(false));
        assert_eq!(realtime_mode("auto", "openai-realtime"), Ok(true));
        assert_eq!(realtime_mode("realtime", "auto"), Ok(true));
        assert_eq!(realtime_mode("cascaded", "openai"), Ok(false));
        assert!(realtime_mode("cascaded", "openai-realtime").is_err());
        assert!(realtime_mode("duplex", "auto").is_err());
    }

    #[test]
    fn realtime_config_from_settings() {
        let none = env(&[]);
        assert!(
            realtime_config("ga", "wss://x/v1", None, None, "none", &none)
                .unwrap_err()
                .contains("OPENAI_API_KEY")
        );
        let e = env(&[("OPENAI_API_KEY", "sk")]);
        let c = realtime_config("ga", "ws://127.0.0.1:9/v1", None, None, "none", &e).unwrap();
        assert_eq!(
            (c.api, c.model.as_str(), c.voice.as_str()),
            (RealtimeApi::Ga, "gpt-realtime", "marin")
        );
        assert_eq!(c.url(), "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime");
        assert_eq!(c.transcription_model, None);
        let c = realtime_config(
            "beta",
            "wss://x/v1",
            Some("m"),
            Some("verse"),
            "whisper-1",
            &e,
        )
        .unwrap();
        assert_eq!(
            (c.api, c.model.as_str(), c.voice.as_str()),
            (RealtimeApi::Beta, "m", "verse")
        );
        assert_eq!(c.transcription_model.as_deref(), Some("whisper-1"));
        assert!(realtime_config("v2", "wss://x/v1", None, None, "", &e).is_err());
    }

    #[test]
    fn no_secret_in_debug_output() {
        use clap::Parser;
        let marker = "SECRET-MARKER-42";
        let dumps = [
            format!("{:?}", DeepgramConfig::new(marker)),
            format!("{:?}", ChatConfig::openai(marker, "m")),
            format!("{:?}", CartesiaConfig::new(marker, "v")),
            format!("{:?}", ElevenLabsConfig::new(marker, "v")),
            format!("{:?}", RealtimeConfig::new(marker, RealtimeApi::Ga)),
            format!("{:?}", Cli::parse_from(["agent", "--livekit-url", "ws://x", "--livekit-api-key", "k", "--livekit-api-secret", marker])),
        ];
        for d in dumps {
            assert!(!d.contains(marker), "{d}");
            assert!(d.contains("redacted"), "{d}");
        }
    }

    #[test]
    fn cloud_stack_builds_with_base_urls() {
        let spec = Arc::new(AgentSpec::load(None).unwrap());
        let e = env(&[
            ("DEEPGRAM_API_KEY", "d"),
            ("OPENAI_API_KEY", "o"),
            ("ELEVENLABS_API_KEY", "e"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:1/v1"),
        ]);
        let c = choose("auto", "auto", "auto", &e).unwrap();
        let s = Stack::build(&c, &spec, &e).unwrap();
        let (stt, llm, tts) = s.cascaded().unwrap();
        assert_eq!((stt.name(), stt.input_rate()), ("deepgram", 8000));
        assert_eq!(llm.name(), "openai");
        assert_eq!(tts.name(), "elevenlabs");
        assert_eq!(s.fallback_tts.name(), "espeak-ng", "the voice of last resort is local");
    }
}
