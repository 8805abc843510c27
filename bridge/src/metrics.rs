//! Prometheus metrics: the only global besides the call registry.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub active_calls: IntGauge,
    pub calls: IntCounterVec,
    pub setup_seconds: Histogram,
    pub frames_in: IntCounter,
    pub frames_out: IntCounter,
    pub inbound_gap_frames: IntCounter,
    pub outbound_underruns: IntCounter,
    pub mark_rtt_seconds: Histogram,
    pub interrupt_to_clear_seconds: Histogram,
    pub inbound_latency_seconds: Histogram,
    pub outbound_latency_seconds: Histogram,
    pub errors: IntCounterVec,
    pub control_refused: IntCounterVec,
    /// Control messages and DTMF packets for the room dropped because its queue was full.
    pub room_sends_dropped: IntCounter,
    /// Tasks alive in the process's tokio runtime (a leak shows as growth at constant load).
    pub tokio_tasks: IntGauge,
    pub pending_calls: IntGauge,
    pub unstarted_streams: IntGauge,
    /// Room connections recovered, by kind (`resume` | `full`), from `room`'s events.
    pub room_reconnects: IntCounterVec,
    /// Outbound calls (CreateSIPParticipant) by outcome.
    pub outbound: IntCounterVec,
    pub dialing_calls: IntGauge,
    pub phone_tracks: IntCounterVec,
    pub ulaw_passed_through: IntCounter,
}

/// 25 µs … 200 ms, doubling: resolves the ≤ 2 ms target and shows stalls.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.000_025, 2.0, 14).expect("static buckets")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let ms_buckets = || exponential_buckets(0.0001, 2.0, 16).expect("static buckets");
        let m = Metrics {
            active_calls: IntGauge::new("bridge_active_calls", "Calls in progress").unwrap(),
            calls: IntCounterVec::new(Opts::new("bridge_calls_total", "Calls by outcome"), &["outcome"]).unwrap(),
            setup_seconds: Histogram::with_opts(
                HistogramOpts::new("bridge_call_setup_seconds", "Media Streams start to joined room")
                    .buckets(exponential_buckets(0.005, 2.0, 12).unwrap()),
            )
            .unwrap(),
            frames_in: IntCounter::new("bridge_frames_in_total", "20 ms frames from callers").unwrap(),
            frames_out: IntCounter::new("bridge_frames_out_total", "20 ms frames sent to callers").unwrap(),
            inbound_gap_frames: IntCounter::new("bridge_inbound_gap_frames_total", "Caller frames lost and filled with silence")
                .unwrap(),
            outbound_underruns: IntCounter::new("bridge_outbound_underruns_total", "Caller playback ran dry mid-utterance")
                .unwrap(),
            mark_rtt_seconds: Histogram::with_opts(
                HistogramOpts::new("bridge_mark_rtt_seconds", "Mark sent to mark echoed (includes playback lead)")
                    .buckets(exponential_buckets(0.005, 2.0, 12).unwrap()),
            )
            .unwrap(),
            interrupt_to_clear_seconds: Histogram::with_opts(
                HistogramOpts::new("bridge_interrupt_to_clear_seconds", "Interrupt received to Twilio clear sent")
                    .buckets(ms_buckets()),
            )
            .unwrap(),
            inbound_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "bridge_inbound_latency_seconds",
                    "Twilio media message received to its RTP packet sent to LiveKit (PCMU as it came, or decode + Opus encode; queue, SRTP)",
                )
                .buckets(latency_buckets()),
            )
            .unwrap(),
            outbound_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "bridge_outbound_latency_seconds",
                    "LiveKit audio packet received to μ-law queued for the caller (PCMU as it came, or decode + mix; pacing excluded)",
                )
                .buckets(latency_buckets()),
            )
            .unwrap(),
            errors: IntCounterVec::new(Opts::new("bridge_errors_total", "Errors by kind"), &["kind"]).unwrap(),
            control_refused: IntCounterVec::new(
                Opts::new("bridge_control_refused_total", "Control commands refused (the call went on), by reason"),
                &["reason"],
            )
            .unwrap(),
            room_sends_dropped: IntCounter::new(
                "bridge_room_sends_dropped_total",
                "Control/DTMF packets for the room dropped: its send queue was full",
            )
            .unwrap(),
            tokio_tasks: IntGauge::new("bridge_tokio_tasks", "Tasks alive in the tokio runtime").unwrap(),
            pending_calls: IntGauge::new("bridge_pending_calls", "Calls admitted whose stream has not started").unwrap(),
            unstarted_streams: IntGauge::new("bridge_unstarted_streams", "Media Streams sockets waiting for start").unwrap(),
            room_reconnects: IntCounterVec::new(
                Opts::new("room_reconnects_total", "LiveKit connections recovered: resume (same session) or full (fresh join)"),
                &["kind"],
            )
            .unwrap(),
            outbound: IntCounterVec::new(
                Opts::new("bridge_outbound_calls_total", "Outbound calls (CreateSIPParticipant) by outcome"),
                &["outcome"],
            )
            .unwrap(),
            dialing_calls: IntGauge::new("bridge_dialing_calls", "Outbound calls placed and not yet streaming").unwrap(),
            phone_tracks: IntCounterVec::new(
                Opts::new("bridge_phone_tracks_total", "Callers' tracks published, by codec (pcmu: μ-law as it came; opus: transcoded)"),
                &["codec"],
            )
            .unwrap(),
            ulaw_passed_through: IntCounter::new(
                "bridge_outbound_ulaw_passthrough_frames_total",
                "Room audio frames (PCMU tracks, one voice at a time) forwarded to callers as they came: no decode, mix or encode",
            )
            .unwrap(),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.active_calls.clone())).unwrap();
        r.register(Box::new(m.calls.clone())).unwrap();
        r.register(Box::new(m.setup_seconds.clone())).unwrap();
        r.register(Box::new(m.frames_in.clone())).unwrap();
        r.register(Box::new(m.frames_out.clone())).unwrap();
        r.register(Box::new(m.inbound_gap_frames.clone())).unwrap();
        r.register(Box::new(m.outbound_underruns.clone())).unwrap();
        r.register(Box::new(m.inbound_latency_seconds.clone())).unwrap();
        r.register(Box::new(m.outbound_latency_seconds.clone())).unwrap();
        r.register(Box::new(m.mark_rtt_seconds.clone())).unwrap();
        r.register(Box::new(m.interrupt_to_clear_seconds.clone())).unwrap();
        r.register(Box::new(m.errors.clone())).unwrap();
        r.register(Box::new(m.control_refused.clone())).unwrap();
        r.register(Box::new(m.room_sends_dropped.clone())).unwrap();
        r.register(Box::new(m.tokio_tasks.clone())).unwrap();
        r.register(Box::new(m.pending_calls.clone())).unwrap();
        r.register(Box::new(m.unstarted_streams.clone())).unwrap();
        r.register(Box::new(m.room_reconnects.clone())).unwrap();
        r.register(Box::new(m.outbound.clone())).unwrap();
        r.register(Box::new(m.dialing_calls.clone())).unwrap();
        r.register(Box::new(m.phone_tracks.clone())).unwrap();
        r.register(Box::new(m.ulaw_passed_through.clone())).unwrap();
        m
    }

    /// Gauges read at scrape time.
    pub fn observe_runtime(&self, calls: &crate::registry::Registry) {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            self.tokio_tasks.set(h.metrics().num_alive_tasks() as i64);
        }
        self.active_calls.set(calls.active_count() as i64);
        self.pending_calls.set(calls.pending_count() as i64);
        self.unstarted_streams.set(calls.unstarted_count() as i64);
        self.dialing_calls.set(calls.dialing_count() as i64);
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
