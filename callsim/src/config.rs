//! What a simulated call does: [`CallConfig`] with defaults and builder methods.

use std::path::PathBuf;
use std::time::Duration;

use crate::audio_source::AudioSpec;

/// How the simulator's clock runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// 20 ms frames on the wall clock, at absolute deadlines (no drift).
    RealTime,
    /// The same, `x` times faster than the wall clock (`Speed(10.0)`: a 20 ms frame every 2 ms).
    Speed(f64),
    /// No waiting at all: the clock jumps from one event to the next. Timestamps still advance
    /// 20 ms per frame and marks fall due on this clock.
    Fast,
}

/// Something to do during the call: scheduled in [`CallConfig::actions`] or sent live through
/// [`Call::send`](crate::Call::send).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a `dtmf` message (`0-9`, `*`, `#`, `A-D`).
    Dtmf(char),
    /// Send this audio (PCM16, 8 kHz mono) in the next frames, ahead of the configured source.
    Audio(Vec<i16>),
    /// Send these μ-law bytes in the next frames, ahead of the configured source.
    Mulaw(Vec<u8>),
    /// The caller hangs up: `stop`, then close.
    Hangup,
}

/// One simulated call. `CallConfig::new(url)` gives Twilio-like defaults; chain the builder
/// methods to change them.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Base URL of the bridge, e.g. `http://127.0.0.1:8080` (no trailing slash needed).
    pub url: String,
    /// Path of the voice webhook (default `/incoming-call`).
    pub incoming_path: String,
    /// The whole voice webhook URL, query included, instead of `url` + `incoming_path`: the
    /// TwiML `Url` of an outbound call (see [`crate::far_end`]).
    pub webhook_url: Option<String>,
    /// An outbound call answered (`Direction=outbound-api`, `CallStatus=in-progress`) rather
    /// than an inbound one ringing.
    pub outbound: bool,
    /// Path of the status callback (default `/call-status`).
    pub status_path: String,
    /// Key for `X-Twilio-Signature`.
    pub auth_token: String,
    /// `AC…`; random when `None`.
    pub account_sid: Option<String>,
    /// `CA…`; random when `None` (and always random for each call of `run_calls` with n > 1).
    pub call_sid: Option<String>,
    pub from: String,
    pub to: String,
    pub audio: AudioSpec,
    /// Stream length; `None` means until the audio file ends (5 s for tone/silence).
    pub duration: Option<Duration>,
    pub pace: Pace,
    /// Up to this much random extra delay per frame (timestamps unchanged). Not applied under
    /// [`Pace::Fast`].
    pub jitter: Duration,
    /// Percentage of frames not sent (their chunk and timestamp are still used up).
    pub loss_pct: f64,
    /// Seed for jitter and loss; random when `None`.
    pub seed: Option<u64>,
    /// Actions at stream times (from the `start` message), e.g. DTMF.
    pub actions: Vec<(Duration, Action)>,
    /// Write what the caller heard to this WAV (PCM16 8 kHz mono).
    pub record: Option<PathBuf>,
    /// Keep what the caller heard in `Report::heard`.
    pub keep_heard: bool,
    /// POST `/call-status` after the call.
    pub send_status: bool,
    /// HTTP and WebSocket connect timeout.
    pub timeout: Duration,
    /// Dry periods in playback at least this long count as between utterances.
    pub utterance_gap: Duration,
    /// Most audio the modelled Twilio buffer holds.
    pub max_buffered: Duration,
    /// Capacity of the live event channel of [`spawn_call`](crate::spawn_call).
    pub event_capacity: usize,
    /// Calls started per second by `run_calls` (`None`: all at once).
    pub ramp_per_sec: Option<f64>,
}

impl CallConfig {
    pub fn new(url: impl Into<String>) -> CallConfig {
        CallConfig {
            url: url.into(),
            incoming_path: "/incoming-call".into(),
            webhook_url: None,
            outbound: false,
            status_path: "/call-status".into(),
            auth_token: String::new(),
            account_sid: None,
            call_sid: None,
            from: "+15005550006".into(),
            to: "+15005550001".into(),
            audio: AudioSpec::Silence,
            duration: None,
            pace: Pace::RealTime,
            jitter: Duration::ZERO,
            loss_pct: 0.0,
            seed: None,
            actions: Vec::new(),
            record: None,
            keep_heard: false,
            send_status: true,
            timeout: Duration::from_secs(10),
            utterance_gap: Duration::from_millis(300),
            max_buffered: Duration::from_secs(120),
            event_capacity: 1024,
            ramp_per_sec: None,
        }
    }

    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = token.into();
        self
    }
    pub fn account_sid(mut self, sid: impl Into<String>) -> Self {
        self.account_sid = Some(sid.into());
        self
    }
    pub fn call_sid(mut self, sid: impl Into<String>) -> Self {
        self.call_sid = Some(sid.into());
        self
    }
    pub fn from_number(mut self, from: impl Into<String>) -> Self {
        self.from = from.into();
        self
    }
    pub fn to_number(mut self, to: impl Into<String>) -> Self {
        self.to = to.into();
        self
    }
    pub fn audio(mut self, audio: AudioSpec) -> Self {
        self.audio = audio;
        self
    }
    pub fn tone(self, hz: f32) -> Self {
        self.audio(AudioSpec::Tone { hz })
    }
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }
    pub fn duration_secs(self, secs: f64) -> Self {
        self.duration(Duration::from_secs_f64(secs.max(0.0)))
    }
    pub fn pace(mut self, pace: Pace) -> Self {
        self.pace = pace;
        self
    }
    pub fn fast(self) -> Self {
        self.pace(Pace::Fast)
    }
    pub fn speed(self, x: f64) -> Self {
        self.pace(Pace::Speed(x))
    }
    pub fn jitter(mut self, max_extra: Duration) -> Self {
        self.jitter = max_extra;
        self
    }
    pub fn loss_pct(mut self, pct: f64) -> Self {
        self.loss_pct = pct;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    pub fn action_at(mut self, at: Duration, action: Action) -> Self {
        self.actions.push((at, action));
        self
    }
    pub fn dtmf_at(self, at: Duration, digit: char) -> Self {
        self.action_at(at, Action::Dtmf(digit))
    }
    /// Adds DTMF from a `"1@2.0,#@3.5"` schedule (digit `@` seconds).
    pub fn dtmf_schedule(mut self, spec: &str) -> Result<Self, ConfigError> {
        self.actions.extend(parse_dtmf(spec)?.into_iter().map(|(t, d)| (t, Action::Dtmf(d))));
        Ok(self)
    }
    pub fn record(mut self, path: impl Into<PathBuf>) -> Self {
        self.record = Some(path.into());
        self
    }
    pub fn keep_heard(mut self, keep: bool) -> Self {
        self.keep_heard = keep;
        self
    }
    pub fn no_status(mut self) -> Self {
        self.send_status = false;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn utterance_gap(mut self, g: Duration) -> Self {
        self.utterance_gap = g;
        self
    }
    pub fn ramp_per_sec(mut self, r: f64) -> Self {
        self.ramp_per_sec = Some(r);
        self
    }

    /// `{url}{incoming_path}` (or `webhook_url`): the exact URL posted to and signed.
    pub fn incoming_url(&self) -> String {
        match &self.webhook_url {
            Some(u) => u.clone(),
            None => join_url(&self.url, &self.incoming_path),
        }
    }

    pub fn status_url(&self) -> String {
        join_url(&self.url, &self.status_path)
    }

    /// Checks the values a caller can get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let u = url::Url::parse(&self.incoming_url()).map_err(|e| ConfigError::Url(format!("{}: {e}", self.url)))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(ConfigError::Url(format!("{}: must be http:// or https://", self.url)));
        }
        if !(0.0..=100.0).contains(&self.loss_pct) {
            return Err(ConfigError::Loss(self.loss_pct));
        }
        if let Pace::Speed(x) = self.pace {
            if !(x.is_finite() && x > 0.0) {
                return Err(ConfigError::Speed(x));
            }
        }
        for (_, a) in &self.actions {
            if let Action::Dtmf(d) = a {
                check_digit(*d)?;
            }
        }
        if let AudioSpec::Tone { hz } = self.audio {
            if !(hz.is_finite() && hz > 0.0 && hz < 4000.0) {
                return Err(ConfigError::Tone(hz));
            }
        }
        Ok(())
    }
}

fn join_url(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("loss must be 0..=100 percent, not {0}")]
    Loss(f64),
    #[error("speed must be a positive number, not {0}")]
    Speed(f64),
    #[error("tone must be between 0 and 4000 Hz (8 kHz sampling), not {0}")]
    Tone(f32),
    #[error("DTMF digit must be one of 0-9 * # A-D, not {0:?}")]
    Digit(char),
    #[error("DTMF schedule entry {0:?} is not DIGIT@SECONDS")]
    Dtmf(String),
}

fn check_digit(d: char) -> Result<char, ConfigError> {
    if d.is_ascii_digit() || matches!(d, '*' | '#' | 'A'..='D') {
        Ok(d)
    } else {
        Err(ConfigError::Digit(d))
    }
}

/// Parses `"1@2.0,#@3.5"` into (time, digit) pairs.
pub fn parse_dtmf(spec: &str) -> Result<Vec<(Duration, char)>, ConfigError> {
    let mut out = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::Dtmf(entry.to_owned());
        let (digit, secs) = entry.split_once('@').ok_or_else(bad)?;
        let mut chars = digit.trim().chars();
        let d = match (chars.next(), chars.next()) {
            (Some(d), None) => check_digit(d.to_ascii_uppercase())?,
            _ => return Err(bad()),
        };
        let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(bad());
        }
        out.push((Duration::from_secs_f64(secs), d));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_schedule_parses() {
        assert_eq!(
            parse_dtmf("1@2.0, #@3.5,a@0").unwrap(),
            vec![(Duration::from_secs(2), '1'), (Duration::from_millis(3500), '#'), (Duration::ZERO, 'A')]
        );
        assert_eq!(parse_dtmf("").unwrap(), vec![]);
        for bad in ["1", "12@1", "x@1", "1@-1", "1@abc", "@1"] {
            assert!(parse_dtmf(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_join_and_validate() {
        let c = CallConfig::new("http://127.0.0.1:8080/");
        assert_eq!(c.incoming_url(), "http://127.0.0.1:8080/incoming-call");
        assert_eq!(c.status_url(), "http://127.0.0.1:8080/call-status");
        assert!(c.validate().is_ok());
        assert!(CallConfig::new("ftp://x").validate().is_err());
        assert!(CallConfig::new("http://x").loss_pct(101.0).validate().is_err());
        assert!(CallConfig::new("http://x").speed(0.0).validate().is_err());
        assert!(CallConfig::new("http://x").dtmf_at(Duration::ZERO, 'x').validate().is_err());
    }
}
