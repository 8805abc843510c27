//! The load generator: N calls at once (or ramped), each in its own task.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::call::drive;
use crate::config::CallConfig;
use crate::report::{Aggregate, LoadReport, Outcome, Report};
use crate::webhook;

/// Runs `n` calls concurrently, started `cfg.ramp_per_sec` per second (all at once when
/// `None`), and waits for all of them. Each call gets its own CallSid; with a seed, call `i`
/// uses `seed + i`; with a recording path, call `i` writes `NAME-i.wav`.
pub async fn run_calls(cfg: CallConfig, n: usize) -> anyhow::Result<LoadReport> {
    cfg.validate()?;
    let mut cfg = cfg;
    cfg.audio = cfg.audio.load()?; // read files once for all calls
    let http = webhook::client(cfg.timeout)?;
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        if let Some(rate) = cfg.ramp_per_sec.filter(|r| r.is_finite() && *r > 0.0) {
            tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let mut c = cfg.clone();
        if n > 1 {
            c.call_sid = None;
            c.seed = cfg.seed.map(|s| s.wrapping_add(i as u64));
            c.record = cfg.record.as_deref().map(|p| indexed(p, i));
        }
        tasks.push(tokio::spawn(drive(c, http.clone(), None, None)));
    }
    let mut calls = Vec::with_capacity(n);
    for t in tasks {
        calls.push(match t.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => failed(e.to_string()),
            Err(e) => failed(format!("call task failed: {e}")),
        });
    }
    let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
    Ok(LoadReport { aggregate: Aggregate::of(&calls, wall_ms), calls })
}

fn failed(error: String) -> Report {
    Report { outcome: Outcome::Failed, error: Some(error), ..Default::default() }
}

/// `out.wav` → `out-3.wav`.
pub fn indexed(path: &Path, i: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{i}"),
    };
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_are_numbered() {
        assert_eq!(indexed(Path::new("/tmp/out.wav"), 3), PathBuf::from("/tmp/out-3.wav"));
        assert_eq!(indexed(Path::new("rec"), 0), PathBuf::from("rec-0"));
    }
}
