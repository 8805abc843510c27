//! The README's first command, end to end: `callbridge-demo` starts devroom, bridge and the
//! offline agent, and a simulated Twilio caller talks to the agent through the bridge — the
//! whole path a phone call takes. The agent's form fills from spoken answers, `end_call` hangs
//! up through the bridge (Twilio REST `Status=completed`), and the record is in SQLite.
//!
//! Needs the debug `agent`, `devroom` and `bridge` binaries beside `callbridge-demo`
//! (`cargo build --workspace`).
//! Built with `--features piper,whisper` and their models present, the same call also runs with
//! Whisper hearing the caller and Piper speaking (`scripts/models.sh piper whisper`).

#[allow(unused_imports)] // Path: only the models variant
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn demo_holds_a_conversation_through_the_bridge() {
    // The embedded stack, whatever features this binary has.
    let log = run_demo(&[("AGENT_STT", "offline"), ("AGENT_LLM", "rules"), ("AGENT_TTS", "offline")], true);
    let providers = providers_line(&log);
    assert!(providers.contains("pocketsphinx") && providers.contains("espeak-ng"), "{providers}");
}

#[cfg(all(feature = "piper", feature = "whisper"))]
#[test]
fn demo_with_whisper_and_piper() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| root.join(default).display().to_string());
    let whisper = model("WHISPER_MODEL_DIR", "models/whisper-tiny.en/model");
    let piper = model("PIPER_MODEL", "models/piper/en_US-joe-medium.onnx");
    let ort = model("ORT_DYLIB_PATH", "models/onnxruntime/libonnxruntime.so");
    if ![&whisper, &piper, &ort].iter().all(|p| Path::new(p).exists()) {
        assert!(std::env::var("AGENT_REQUIRE_MODELS").as_deref() != Ok("1"), "models missing (scripts/models.sh piper whisper)");
        eprintln!("skipped: no models (scripts/models.sh piper whisper)");
        return;
    }
    let log = run_demo(&[
        ("AGENT_STT", "whisper"),
        ("AGENT_LLM", "rules"),
        ("AGENT_TTS", "piper"),
        ("WHISPER_MODEL_DIR", &whisper),
        ("PIPER_MODEL", &piper),
        ("ORT_DYLIB_PATH", &ort),
    ],
    // Whisper tiny.en through the 8 kHz phone path is shaky on espeak's robot voice for the
    // open answer: unprimed it heard "there was a fire" as "everyone have higher"; primed with
    // the agent's example answers it got it right in our runs, but only the fields with a fixed
    // set of answers (name, location, severity) are held to exact words.
    false);
    let providers = providers_line(&log);
    assert!(providers.contains("whisper") && providers.contains("piper"), "{providers}");
}

/// The agent's log line that names its providers.
fn providers_line(log: &str) -> String {
    log.lines().find(|l| l.contains("providers")).unwrap_or("(no providers line)").to_string()
}

/// Runs the demo with `env` for the agent and checks the call end to end; returns agent.log.
/// `free_answer_exact`: the open answer ("there was a fire") must come through word for word.
fn run_demo(env: &[(&str, &str)], free_answer_exact: bool) -> String {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_callbridge-demo"))
        .parent()
        .unwrap()
        .to_path_buf();
    for b in ["agent", "devroom", "bridge"] {
        assert!(
            bin_dir.join(b).exists(),
            "{} missing: cargo build --workspace first",
            bin_dir.join(b).display()
        );
    }
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_callbridge-demo"))
        .arg("--out")
        .arg(out.path())
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--max-secs", "150"])
        .envs(env.iter().copied())
        .output()
        .expect("run callbridge-demo");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let agent_log = std::fs::read_to_string(out.path().join("agent.log")).unwrap_or_default();
    let tail: String = agent_log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    assert!(
        run.status.success(),
        "demo failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- agent.log (last lines, reversed)\n{tail}"
    );

    // Who said what, live: the greeting, every caller line, the closing line.
    assert!(stdout.contains("agent  : Hello, this is the Acme incident line"), "{stdout}");
    for line in ["my name is peter", "it happened in the warehouse", "there was a fire", "it is critical"] {
        assert!(stdout.contains(&format!("caller : {line}")), "missing {line:?}:\n{stdout}");
    }
    assert!(stdout.contains("someone from our team will follow up"), "{stdout}");
    assert!(stdout.contains("the bridge asked to hang up"), "{stdout}");
    assert!(stdout.contains("ms after line 1 ended"), "no per-turn latency:\n{stdout}");

    // The record, from SQLite: completed, with the form filled from what was said.
    let db = out.path().join("calls.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (outcome, fields): (String, String) = conn
        .query_row("SELECT outcome, fields_json FROM calls", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(outcome, "completed", "{stdout}");
    let fields: serde_json::Value = serde_json::from_str(&fields).unwrap();
    assert_eq!(fields["name"], "Peter", "{fields}");
    assert!(fields["location"].as_str().unwrap_or("").contains("warehouse"), "{fields}");
    assert_eq!(fields["severity"], "critical", "{fields}");
    let what = fields["what_happened"].as_str().unwrap_or("");
    assert!(if free_answer_exact { what.contains("fire") } else { !what.is_empty() }, "{fields}");
    let turns: i64 = conn
        .query_row("SELECT count(*) FROM turns WHERE role = 'user'", [], |r| r.get(0))
        .unwrap();
    assert!(turns >= 4, "{turns} caller turns");

    // Both sides saved as WAV: the caller's lines, and non-silent agent speech heard by the caller.
    // (speech frames: 20 ms with RMS above -35 dBFS; the caller says ~5 s, the agent ~20 s)
    for (name, min_secs, min_speech_frames) in [("caller.wav", 4.0, 120), ("heard.wav", 10.0, 500)] {
        let r = hound::WavReader::open(out.path().join(name)).unwrap();
        let secs = r.duration() as f64 / r.spec().sample_rate as f64;
        assert!(secs >= min_secs, "{name}: {secs} s");
        let pcm: Vec<i16> = r.into_samples::<i16>().map(Result::unwrap).collect();
        let speech = pcm
            .chunks(160)
            .filter(|f| {
                let e: f64 = f.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / f.len() as f64;
                20.0 * (e.sqrt() / 32768.0).log10() > -35.0
            })
            .count();
        assert!(speech >= min_speech_frames, "{name}: only {speech} speech frames");
    }
    agent_log
}
