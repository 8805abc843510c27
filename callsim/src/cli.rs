//! Command line: options, and what `main` does with them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::audio_source::AudioSpec;
use crate::config::{CallConfig, Pace};

/// Twilio call simulator and load generator.
///
/// Places inbound calls the way Twilio does: a signed POST to {url}/incoming-call, then the
/// <Connect><Stream> WebSocket (signed; plain ws:// when the stream host is loopback), 20 ms
/// μ-law frames, dtmf, stop, and a signed POST to {url}/call-status. Outbound audio is played
/// through a model of Twilio's buffer that echoes marks when their audio has played and
/// honours clear. Prints a JSON report on stdout (an aggregate with --calls N > 1).
///
/// Exit status: 0 when every call completed, 1 when any did not (rejected, refused, failed),
/// 2 for a usage or local error (bad option, unreadable audio file).
#[derive(Debug, Parser)]
#[command(name = "callsim", version, about, long_about)]
pub struct Args {
    /// Base URL of the bridge, e.g. http://127.0.0.1:8080 (webhooks are {url}/incoming-call
    /// and {url}/call-status).
    #[arg(long, env = "CALLSIM_URL")]
    pub url: String,

    /// Auth token that signs X-Twilio-Signature on every request.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true, default_value = "")]
    pub auth_token: String,

    /// Account SID (AC…) sent as AccountSid; random when not given.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub account_sid: Option<String>,

    /// Call SID (CA + 32 hex) of a single call; random when not given (always random with --calls > 1).
    #[arg(long)]
    pub call_sid: Option<String>,

    /// Caller number (From).
    #[arg(long, default_value = "+15005550006")]
    pub from: String,

    /// Called number (To).
    #[arg(long, default_value = "+15005550001")]
    pub to: String,

    /// Send this WAV file: any sample rate, mono or multi-channel (averaged), integer PCM or
    /// 32-bit float; rates other than 8 kHz are converted simply (box filter / linear).
    #[arg(long, value_name = "PATH", group = "audio")]
    pub wav: Option<PathBuf>,

    /// Send this headerless μ-law 8 kHz file.
    #[arg(long, value_name = "PATH", group = "audio")]
    pub mulaw: Option<PathBuf>,

    /// Send a sine tone at this frequency in Hz (e.g. 440).
    #[arg(long, value_name = "HZ", group = "audio")]
    pub tone: Option<f32>,

    /// Send silence (the default).
    #[arg(long, group = "audio")]
    pub silence: bool,

    /// Stream length in seconds; without it the stream ends with the file (5 s for tone/silence).
    /// A file shorter than the duration is followed by silence.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Do not wait: the clock jumps from frame to frame (timestamps still advance 20 ms per
    /// frame; marks fall due on this clock). Ignores --jitter-ms.
    #[arg(long, conflicts_with = "speed")]
    pub fast: bool,

    /// Run the clock this many times faster than real time (absolute deadlines, no drift).
    #[arg(long, value_name = "X")]
    pub speed: Option<f64>,

    /// Up to this many ms of random extra delay before each frame (timestamps unchanged).
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    pub jitter_ms: f64,

    /// Percentage of frames not sent; their chunk and timestamp are used up, so the server sees a gap.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub loss: f64,

    /// Seed for --jitter-ms and --loss (call i of --calls uses SEED+i).
    #[arg(long)]
    pub seed: Option<u64>,

    /// DTMF to send, as DIGIT@SECONDS pairs: "1@2.0,#@3.5".
    #[arg(long, value_name = "SCHEDULE")]
    pub dtmf: Option<String>,

    /// Write what the caller heard (silence where the buffer ran dry) to this WAV, PCM16 8 kHz
    /// mono. With --calls > 1, call i writes NAME-i.wav.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,

    /// Do not POST {url}/call-status after the call.
    #[arg(long)]
    pub no_status: bool,

    /// Number of concurrent calls.
    #[arg(long, default_value_t = 1)]
    pub calls: usize,

    /// Start this many calls per second (default: all at once).
    #[arg(long, value_name = "R")]
    pub ramp_per_sec: Option<f64>,

    /// With --calls > 1, print every call's report too, not only the aggregate.
    #[arg(long)]
    pub per_call: bool,

    /// HTTP and WebSocket connect timeout in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,

    /// Playback dry periods at least this long count as between utterances, shorter ones as
    /// gaps within an utterance.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub utterance_gap_ms: u64,

    /// Most audio the modelled Twilio buffer holds (seconds); more is dropped and counted.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub max_buffer_secs: u64,

    /// Path of the voice webhook.
    #[arg(long, default_value = "/incoming-call")]
    pub incoming_path: String,

    /// Path of the status callback.
    #[arg(long, default_value = "/call-status")]
    pub status_path: String,

    /// Pretty-print the JSON.
    #[arg(long)]
    pub pretty: bool,
}

impl Args {
    /// The call these options describe.
    pub fn to_config(&self) -> anyhow::Result<CallConfig> {
        let audio = match (&self.wav, &self.mulaw, self.tone) {
            (Some(p), _, _) => AudioSpec::Wav(p.clone()),
            (_, Some(p), _) => AudioSpec::Mulaw(p.clone()),
            (_, _, Some(hz)) => AudioSpec::Tone { hz },
            _ => AudioSpec::Silence,
        };
        let pace = match (self.fast, self.speed) {
            (true, _) => Pace::Fast,
            (_, Some(x)) => Pace::Speed(x),
            _ => Pace::RealTime,
        };
        let secs = |s: f64, what: &str| -> anyhow::Result<Duration> {
            anyhow::ensure!(s.is_finite() && s >= 0.0, "{what} must be a non-negative number of seconds, not {s}");
            Ok(Duration::from_secs_f64(s))
        };
        let mut cfg = CallConfig::new(self.url.clone()).auth_token(self.auth_token.clone()).audio(audio).pace(pace);
        cfg.account_sid = self.account_sid.clone();
        cfg.call_sid = self.call_sid.clone();
        cfg.from = self.from.clone();
        cfg.to = self.to.clone();
        cfg.duration = self.duration.map(|d| secs(d, "--duration")).transpose()?;
        cfg.jitter = secs(self.jitter_ms / 1000.0, "--jitter-ms")?;
        cfg.loss_pct = self.loss;
        cfg.seed = self.seed;
        if let Some(spec) = &self.dtmf {
            cfg = cfg.dtmf_schedule(spec)?;
        }
        cfg.record = self.record.clone();
        cfg.send_status = !self.no_status;
        cfg.timeout = secs(self.timeout, "--timeout")?;
        cfg.utterance_gap = Duration::from_millis(self.utterance_gap_ms);
        cfg.max_buffered = Duration::from_secs(self.max_buffer_secs);
        cfg.ramp_per_sec = self.ramp_per_sec;
        cfg.incoming_path = self.incoming_path.clone();
        cfg.status_path = self.status_path.clone();
        cfg.validate()?;
        Ok(cfg)
    }
}

/// What the binary does.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("callsim: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok((json, all_completed)) => {
            println!("{json}");
            if all_completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("callsim: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the calls; returns the JSON to print and whether every call completed.
pub async fn run(args: &Args) -> anyhow::Result<(String, bool)> {
    let cfg = args.to_config()?;
    anyhow::ensure!(args.calls >= 1, "--calls must be at least 1");
    if args.calls == 1 {
        let report = crate::run_call(cfg).await?;
        let ok = report.outcome == crate::Outcome::Completed;
        Ok((json(&report, args.pretty), ok))
    } else {
        let mut load = crate::run_calls(cfg, args.calls).await?;
        let ok = load.aggregate.not_completed == 0;
        if !args.per_call {
            load.calls.clear();
            Ok((json(&load.aggregate, args.pretty), ok))
        } else {
            Ok((json(&load, args.pretty), ok))
        }
    }
}

fn json<T: serde::Serialize>(v: &T, pretty: bool) -> String {
    let r = if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) };
    r.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_documents_every_option() {
        Args::command().debug_assert();
        let help = Args::command().render_long_help().to_string();
        for opt in [
            "--url", "--auth-token", "--account-sid", "--call-sid", "--from", "--to", "--wav", "--mulaw", "--tone",
            "--silence", "--duration", "--fast", "--speed", "--jitter-ms", "--loss", "--seed", "--dtmf", "--record",
            "--no-status", "--calls", "--ramp-per-sec", "--per-call", "--timeout", "--utterance-gap-ms",
            "--max-buffer-secs", "--incoming-path", "--status-path", "--pretty", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID",
        ] {
            assert!(help.contains(opt), "--help lacks {opt}");
        }
    }

    #[test]
    fn options_become_a_config() {
        let args = Args::try_parse_from([
            "callsim", "--url", "http://127.0.0.1:1", "--auth-token", "t", "--tone", "440", "--duration", "2", "--fast",
            "--loss", "5", "--dtmf", "1@0.5", "--no-status",
        ])
        .unwrap();
        let cfg = args.to_config().unwrap();
        assert_eq!(cfg.audio, AudioSpec::Tone { hz: 440.0 });
        assert_eq!(cfg.pace, Pace::Fast);
        assert_eq!(cfg.duration, Some(Duration::from_secs(2)));
        assert_eq!(cfg.actions.len(), 1);
        assert!(!cfg.send_status);
        assert!(Args::try_parse_from(["callsim", "--url", "http://x", "--tone", "1", "--wav", "a.wav"]).is_err());
        assert!(Args::try_parse_from(["callsim", "--url", "http://x", "--fast", "--speed", "2"]).is_err());
        let bad = Args::try_parse_from(["callsim", "--url", "http://x", "--dtmf", "z@1"]).unwrap();
        assert!(bad.to_config().is_err());
    }
}
