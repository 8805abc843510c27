//! A small local LLM behind [`LlmProvider`]: SmolLM2-135M-Instruct (GGUF) on llama.cpp through
//! the `llama-cpp-2` crate, as an offline alternative to the OpenAI/Groq chat providers — no
//! keys, no network, answers on the machine the agent runs on (cargo feature `llama`).
//!
//! The model is loaded once per process (per file) and shared by every [`LlamaLlm`] and every
//! call through an `Arc`. Each `stream()` call renders the conversation with the model's own chat
//! template (from the GGUF metadata, ChatML if it has none or llama.cpp cannot apply it), trims
//! the oldest turns if the prompt does not fit, creates its own llama.cpp context and generates
//! on a blocking thread, sending a `TextDelta` per token and then `Done`. Sampling is greedy
//! (deterministic) unless a temperature is set. Dropping the receiver stops generation before the
//! next token.
//!
//! Tools: the model has no native function calling, so the offered tools are described in the
//! system prompt and the model is asked to write `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
//! `ToolTagParser` cuts those blocks out of the streamed text (tags may arrive split across
//! tokens) so they become [`LlmEvent::ToolCall`]s and are never spoken; a block that is not
//! valid JSON or names a tool that was not offered is logged and dropped. This is the
//! Hermes/Qwen2.5 tool format: SmolLM2-135M follows it poorly (it tends to answer in text, or
//! recite the tool list), a GGUF trained on it can be dropped in through `LLAMA_MODEL`.
//!
//! llama.cpp's own log goes to tracing under the target `llama-cpp-2` instead of stderr (its
//! model-load lines are INFO; `RUST_LOG=info,llama-cpp-2=warn` hides them).
//!
//! Configuration ([`LlamaLlm::from_env`]): `LLAMA_MODEL` (GGUF path, default
//! `models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, unpacked by `scripts/models.sh llama`),
//! `LLAMA_MAX_TOKENS` (default 256), `LLAMA_THREADS` (default 1), `LLAMA_CTX`
//! (context tokens, default 4096), `LLAMA_TEMPERATURE` (default 0 = greedy), `LLAMA_SEED`,
//! `LLAMA_REPEAT_PENALTY` (default 1.1 over the last 64 tokens, 1.0 = off).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::{ChatMessage, LlmEvent, LlmProvider, ProviderError, Role, ToolCall, ToolSpec};

mod output;
mod prompt;
#[cfg(test)]
mod tests;

use output::*;
use prompt::*;

const VENDOR: &str = "llama";
const DEFAULT_MODEL: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const OPEN_TAG: &str = "<tool_call>";
const CLOSE_TAG: &str = "</tool_call>";

fn err(msg: impl Into<String>) -> ProviderError {
    ProviderError::Other {
        vendor: VENDOR,
        msg: msg.into(),
    }
}

// ---- configuration -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Most tokens one reply may have; reaching it ends the reply with `finish_reason: "length"`.
    pub max_tokens: u32,
    /// CPU threads per generation. Default 1: ggml's threads spin-wait on each other, so on a
    /// busy machine (other calls, other processes) two threads were 2-4x slower than one.
    pub threads: i32,
    /// Largest context (prompt + reply) in tokens; capped by what the model was trained on.
    pub n_ctx: u32,
    /// `None` (or <= 0): greedy, deterministic. Otherwise top-k 40, top-p 0.95, this temperature.
    pub temperature: Option<f32>,
    /// Seed of the sampler when a temperature is set.
    pub seed: u32,
    /// Penalty on tokens repeated within the last 64 (1.0 = off); keeps a small model out of loops.
    pub repeat_penalty: f32,
}

impl LlamaConfig {
    /// Reads the `LLAMA_*` variables through `get` (see the module docs).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<LlamaConfig, ProviderError> {
        fn num<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            key: &str,
            default: T,
        ) -> Result<T, ProviderError> {
            match get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
            {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| err(format!("{key}={v:?} is not a valid number"))),
            }
        }
        let cfg = LlamaConfig {
            model_path: get("LLAMA_MODEL")
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_MODEL.into())
                .into(),
            max_tokens: num(&get, "LLAMA_MAX_TOKENS", 256u32)?,
            threads: num(&get, "LLAMA_THREADS", 1i32)?,
            n_ctx: num(&get, "LLAMA_CTX", 4096u32)?,
            temperature: Some(num(&get, "LLAMA_TEMPERATURE", 0.0f32)?).filter(|t| *t > 0.0),
            seed: num(&get, "LLAMA_SEED", 0u32)?,
            repeat_penalty: num(&get, "LLAMA_REPEAT_PENALTY", 1.1f32)?,
        };
        if cfg.max_tokens == 0 || cfg.threads <= 0 || cfg.n_ctx < 64 || !(cfg.repeat_penalty > 0.0)
        {
            return Err(err("LLAMA_MAX_TOKENS, LLAMA_THREADS and LLAMA_REPEAT_PENALTY must be > 0, LLAMA_CTX >= 64"));
        }
        Ok(cfg)
    }
}

// ---- the shared model --------------------------------------------------------------------

/// One loaded GGUF, shared by every provider and call in the process.
struct Loaded {
    model: LlamaModel,
    /// The model's own template, if llama.cpp can apply it; otherwise we render ChatML.
    template: Option<LlamaChatTemplate>,
    /// Text of the model's control tokens (`<|im_start|>` …), defused in message content.
    specials: Vec<String>,
    n_ctx_train: u32,
    /// llama.cpp's context creation writes to the model: one at a time.
    new_context: Mutex<()>,
}

fn backend() -> Result<&'static LlamaBackend, ProviderError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs to stderr by default; send it to tracing (target `llama-cpp-2`).
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| err(format!("llama.cpp backend init failed: {e}")))
}

/// Loads `path` once per process; later calls get the same `Arc`.
fn load_shared(path: &Path) -> Result<Arc<Loaded>, ProviderError> {
    static MODELS: OnceLock<Mutex<HashMap<PathBuf, Arc<Loaded>>>> = OnceLock::new();
    if !path.is_file() {
        return Err(err(format!(
            "model file {} not found: run `scripts/models.sh llama` (or set LLAMA_MODEL to a GGUF file)",
            path.display()
        )));
    }
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let backend = backend()?;
    // Held while loading, so two first callers do not load the file twice.
    let mut models = MODELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(m) = models.get(&key) {
        return Ok(m.clone());
    }
    let started = Instant::now();
    let model = LlamaModel::load_from_file(backend, &key, &LlamaModelParams::default())
        .map_err(|e| err(format!("loading {}: {e}", key.display())))?;
    let vocab = model.vocab();
    let specials: Vec<String> = vocab
        .tokens()
        .filter(|t| vocab.is_control(*t))
        .filter_map(|t| {
            vocab
                .text(t)
                .and_then(|c| c.to_str().ok())
                .map(str::to_string)
        })
        .filter(|s| s.len() >= 2)
        .collect();
    // Use the GGUF's template only if llama.cpp's template engine knows it.
    let template = match model.chat_template(None) {
        Ok(t) => {
            let probe = LlamaChatMessage::new("user".into(), "hi".into()).ok();
            match probe.map(|m| model.apply_chat_template(&t, &[m], true)) {
                Some(Ok(_)) => Some(t),
                _ => {
                    tracing::warn!("llama: the model's chat template is not supported by llama.cpp; using ChatML");
                    None
                }
            }
        }
        Err(_) => {
            tracing::info!("llama: model has no chat template; using ChatML");
            None
        }
    };
    let loaded = Arc::new(Loaded {
        n_ctx_train: model.n_ctx_train(),
        model,
        template,
        specials,
        new_context: Mutex::new(()),
    });
    tracing::info!(
        model = %key.display(),
        ms = started.elapsed().as_millis() as u64,
        params = loaded.model.n_params(),
        "llama: model loaded"
    );
    models.insert(key, loaded.clone());
    Ok(loaded)
}

// ---- the provider ------------------------------------------------------------------------

/// The local llama.cpp chat model. Constructing more than one is cheap: the model is shared.
pub struct LlamaLlm {
    cfg: LlamaConfig,
    shared: Arc<Loaded>,
    running: Arc<AtomicUsize>,
}

impl LlamaLlm {
    /// Reads `LLAMA_*` (see the module docs) and loads the model (or reuses it if this process
    /// already loaded that file). A missing file is an error naming `scripts/models.sh`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<LlamaLlm, ProviderError> {
        LlamaLlm::new(LlamaConfig::from_env(get)?)
    }

    pub fn new(cfg: LlamaConfig) -> Result<LlamaLlm, ProviderError> {
        let shared = load_shared(&cfg.model_path)?;
        Ok(LlamaLlm {
            cfg,
            shared,
            running: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Generations of this provider still running (each ends at `Done`, an error or
    /// cancellation; the count drops before the receiver sees the stream close).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LlmProvider for LlamaLlm {
    fn name(&self) -> &'static str {
        VENDOR
    }

    async fn stream(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> Result<mpsc::Receiver<Result<LlmEvent, ProviderError>>, ProviderError> {
        let job = Job {
            cfg: self.cfg.clone(),
            shared: self.shared.clone(),
            turns: build_turns(messages, tools),
            tool_names: tools.iter().map(|t| t.name.clone()).collect(),
        };
        let (tx, rx) = mpsc::channel(64);
        let (ready_tx, ready_rx) = oneshot::channel();
        let guard = RunningGuard::new(self.running.clone());
        tokio::task::spawn_blocking(move || {
            job.run(&tx, ready_tx);
            // Counted down before the receiver sees the stream end.
            drop(guard);
            drop(tx);
        });
        // Prompt and context problems come back as the error of the call itself.
        match ready_rx.await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(err(
                "generation thread ended before the prompt was evaluated",
            )),
        }
    }
}

struct RunningGuard(Arc<AtomicUsize>);

impl RunningGuard {
    fn new(n: Arc<AtomicUsize>) -> RunningGuard {
        n.fetch_add(1, Ordering::SeqCst);
        RunningGuard(n)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Events = mpsc::Sender<Result<LlmEvent, ProviderError>>;

/// One request, run on a blocking thread.
struct Job {
    cfg: LlamaConfig,
    shared: Arc<Loaded>,
    turns: Vec<Turn>,
    tool_names: Vec<String>,
}

impl Job {
    fn run(self, tx: &Events, ready: oneshot::Sender<Result<(), ProviderError>>) {
        let started = Instant::now();
        let (mut ctx, prompt) = match self.prepare() {
            Ok(p) => p,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if ready.send(Ok(())).is_err() {
            return;
        }
        let n_prompt = prompt.len();
        match self.generate(&mut ctx, prompt, tx, started) {
            Ok(Some((n, first_token))) => {
                let total = started.elapsed().as_secs_f64();
                let gen_secs = first_token.map_or(0.0, |t| total - t);
                tracing::debug!(
                    prompt_tokens = n_prompt,
                    tokens = n,
                    first_token_ms = first_token.map(|t| (t * 1000.0) as u64),
                    tokens_per_s = if gen_secs > 0.0 {
                        (n.saturating_sub(1)) as f64 / gen_secs
                    } else {
                        0.0
                    },
                    "llama: reply done"
                );
            }
            Ok(None) => tracing::debug!("llama: generation cancelled (receiver dropped)"),
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
            }
        }
    }

    /// Renders and tokenizes the prompt (trimming old turns to fit), creates the context and
    /// evaluates the prompt.
    fn prepare(&self) -> Result<(LlamaContext<'_>, Vec<LlamaToken>), ProviderError> {
        let model = &self.shared.model;
        let n_ctx = self.cfg.n_ctx.min(self.shared.n_ctx_train.max(64));
        // Room kept for the reply; a longer reply still stops when the context is full.
        let reserve = (self.cfg.max_tokens as usize).min(n_ctx as usize / 2);
        let mut turns = self.turns.clone();
        let tokens = loop {
            let prompt = self.render(&turns)?;
            let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
            if tokens.len() + reserve <= n_ctx as usize {
                break tokens;
            }
            if !trim_oldest(&mut turns) {
                return Err(err(format!(
                    "prompt of {} tokens does not fit the {n_ctx}-token context even without history",
                    tokens.len()
                )));
            }
            tracing::debug!(
                tokens = tokens.len(),
                n_ctx,
                "llama: prompt too long, dropped the oldest turn"
            );
        };
        if tokens.is_empty() {
            return Err(err("empty prompt"));
        }
        // Size this request's context to what it needs, in steps of 256.
        let want = (tokens.len() + reserve).div_ceil(256) * 256;
        let size = (want as u32).clamp(256, n_ctx.max(256));
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(size))
            .with_n_batch(size)
            .with_n_threads(self.cfg.threads)
            .with_n_threads_batch(self.cfg.threads);
        let mut ctx = {
            let _one_at_a_time = self
                .shared
                .new_context
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            model
                .new_context(backend()?, params)
                .map_err(|e| err(format!("creating a llama.cpp context: {e}")))?
        };
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        let last = tokens.len() - 1;
        for (i, t) in tokens.iter().enumerate() {
            batch
                .add(*t, i as i32, &[0], i == last)
                .map_err(|e| err(format!("prompt batch: {e}")))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| err(format!("evaluating the prompt: {e}")))?;
        Ok((ctx, tokens))
    }

    /// The model's chat template over `turns`, or ChatML.
    fn render(&self, turns: &[Turn]) -> Result<String, ProviderError> {
        let specials = &self.shared.specials;
        let defused: Vec<(&'static str, String)> = turns
            .iter()
            .map(|t| (t.role, defuse(&t.content, specials)))
            .collect();
        if let Some(tmpl) = &self.shared.template {
            let chat: Result<Vec<_>, _> = defused
                .iter()
                .map(|(role, content)| LlamaChatMessage::new(role.to_string(), content.clone()))
                .collect();
            let chat = chat.map_err(|e| err(format!("chat message: {e}")))?;
            match self.shared.model.apply_chat_template(tmpl, &chat, true) {
                Ok(p) => return Ok(p),
                Err(e) => {
                    tracing::warn!("llama: applying the chat template failed ({e}); using ChatML")
                }
            }
        }
        Ok(render_chatml(&defused))
    }

    /// Samples until end of generation, the token limit, a full context or cancellation.
    /// `Ok(None)`: cancelled. `Ok(Some((tokens, seconds from `started` to the first token)))`:
    /// finished.
    fn generate(
        &self,
        ctx: &mut LlamaContext<'_>,
        prompt: Vec<LlamaToken>,
        tx: &Events,
        started: Instant,
    ) -> Result<Option<(u32, Option<f64>)>, ProviderError> {
        let vocab = self.shared.model.vocab();
        let penalty = LlamaSampler::penalties(
            self.shared.model.n_vocab(),
            64,
            self.cfg.repeat_penalty,
            0.0,
            0.0,
        );
        let mut sampler = match self.cfg.temperature {
            None => LlamaSampler::chain_simple([penalty, LlamaSampler::greedy()]),
            Some(t) => LlamaSampler::chain_simple([
                penalty,
                LlamaSampler::top_k(40),
                LlamaSampler::top_p(0.95, 1),
                LlamaSampler::temp(t),
                LlamaSampler::dist(self.cfg.seed),
            ]),
        };
        let n_ctx = ctx.n_ctx() as usize;
        let mut pos = prompt.len();
        let mut batch = LlamaBatch::new(1, 1);
        let mut utf8 = Utf8Stream::default();
        let mut tags = ToolTagParser::default();
        let mut piece = Vec::new();
        let mut n = 0u32;
        let mut first_token = None;
        let mut logits_at = batch_last(prompt.len());
        let finish_reason = loop {
            // The receiver is gone: stop before spending time on another token.
            if tx.is_closed() {
                return Ok(None);
            }
            let token = sampler.sample(ctx, logits_at);
            if vocab.is_eog(token) {
                break "stop";
            }
            // A control token that is not end-of-generation (e.g. the model opening a new
            // turn itself): the reply is over.
            if vocab.is_control(token) {
                break "stop";
            }
            n += 1;
            first_token.get_or_insert_with(|| started.elapsed().as_secs_f64());
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let text = utf8.push(&piece);
            if !text.is_empty() && !self.emit(tags.push(&text), tx) {
                return Ok(None);
            }
            if n >= self.cfg.max_tokens || pos + 1 >= n_ctx {
                break "length";
            }
            batch.clear();
            batch
                .add(token, pos as i32, &[0], true)
                .map_err(|e| err(format!("batch: {e}")))?;
            ctx.decode(&mut batch)
                .map_err(|e| err(format!("decoding: {e}")))?;
            pos += 1;
            logits_at = 0;
        };
        let rest = utf8.finish();
        let mut pieces = if rest.is_empty() {
            Vec::new()
        } else {
            tags.push(&rest)
        };
        pieces.extend(tags.finish());
        if !self.emit(pieces, tx) {
            return Ok(None);
        }
        let done = LlmEvent::Done {
            finish_reason: finish_reason.into(),
        };
        if tx.blocking_send(Ok(done)).is_err() {
            return Ok(None);
        }
        Ok(Some((n, first_token)))
    }

    /// Sends text and tool calls; bad tool blocks are logged, never spoken.
    /// False when the receiver has gone.
    fn emit(&self, pieces: Vec<Piece>, tx: &Events) -> bool {
        for p in pieces {
            let ev = match p {
                Piece::Text(t) => LlmEvent::TextDelta(t),
                Piece::Call { body, closed } => match parse_tool_call(&body, &self.tool_names) {
                    Ok((name, arguments)) => {
                        if !closed {
                            tracing::warn!(%name, "llama: tool call without </tool_call> at the end of the reply; accepted");
                        }
                        LlmEvent::ToolCall(ToolCall {
                            id: next_call_id(),
                            name,
                            arguments,
                        })
                    }
                    Err(why) => {
                        tracing::error!(block = %shorten(&body, 300), "llama: dropped a <tool_call> block: {why}");
                        continue;
                    }
                },
            };
            if tx.blocking_send(Ok(ev)).is_err() {
                return false;
            }
        }
        true
    }
}

/// Index of the prompt's last token in the prompt batch (its logits are the ones computed).
fn batch_last(n: usize) -> i32 {
    n.saturating_sub(1) as i32
}

fn next_call_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("llama_call_{}", N.fetch_add(1, Ordering::Relaxed) + 1)
}

fn shorten(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
