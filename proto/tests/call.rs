//! The per-call state machine, driven by a simulated Twilio and room on a simulated clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proto::call::{CallConfig, CallOutput, CallSession, ControlSender, EndReason, Refusal};
use proto::control::Control;
use proto::g711::{ulaw_decode, ulaw_encode};
use proto::mixer::SourceId;
use proto::twilio::{Inbound, MediaChunk, MediaFormat, StreamStart};

const MS: Duration = Duration::from_millis(1);
const AGENT: SourceId = SourceId(1);

fn start_msg() -> String {
    Inbound::Start {
        sequence_number: 1,
        stream_sid: "MZ00000000000000000000000000000001".into(),
        start: StreamStart {
            account_sid: "AC1".into(),
            stream_sid: "MZ00000000000000000000000000000001".into(),
            call_sid: "CA1".into(),
            tracks: vec!["inbound".into()],
            media_format: MediaFormat::default(),
            custom_parameters: [("token".to_string(), "t".to_string())].into(),
        },
    }
    .to_json()
}

fn media_msg(chunk: u64, payload: Vec<u8>) -> String {
    Inbound::Media {
        sequence_number: chunk + 1,
        stream_sid: "MZ00000000000000000000000000000001".into(),
        media: MediaChunk { track: "inbound".into(), chunk, timestamp_ms: (chunk - 1) * 20, payload },
    }
    .to_json()
}

fn tone(freq: f64, start_sample: usize, n: usize) -> Vec<i16> {
    (start_sample..start_sample + n)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// Twilio's side of the call: plays media in real time, echoes marks when played, honours clear.
#[derive(Default)]
struct Twilio {
    playing_until: Option<Instant>,
    marks: VecDeque<(Instant, String)>,
    /// (time sent, payload)
    media: Vec<(Instant, [u8; 160])>,
    clears: Vec<Instant>,
}

/// Everything the session said, besides what went to Twilio.
#[derive(Default)]
struct Seen {
    caller_audio: Vec<([i16; 160], bool)>,
    controls: Vec<(Instant, Control)>,
    other: Vec<CallOutput>,
}

struct Sim {
    t0: Instant,
    now: Instant,
    call: CallSession,
    tw: Twilio,
    seen: Seen,
}

impl Sim {
    fn new() -> Sim {
        Sim::with_config(CallConfig::default())
    }
    fn with_config(cfg: CallConfig) -> Sim {
        let t0 = Instant::now();
        let mut s = Sim { t0, now: t0, call: CallSession::new(cfg), tw: Twilio::default(), seen: Seen::default() };
        s.twilio(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#);
        s.twilio(&start_msg());
        s
    }
    fn ms(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }
    fn twilio(&mut self, text: &str) {
        self.call.handle_twilio(text, self.now).unwrap();
        self.drain();
    }
    fn drain(&mut self) {
        while let Some(o) = self.call.poll_output(self.now) {
            match o {
                CallOutput::TwilioMedia(f) => {
                    let p = self.tw.playing_until.filter(|p| *p > self.now).unwrap_or(self.now);
                    self.tw.playing_until = Some(p + MS * 20);
                    self.tw.media.push((self.now, f));
                }
                CallOutput::TwilioMark(m) => {
                    let at = self.tw.playing_until.unwrap_or(self.now).max(self.now);
                    self.tw.marks.push_back((at, m.to_string()));
                }
                CallOutput::TwilioClear => {
                    self.tw.clears.push(self.now);
                    self.tw.playing_until = Some(self.now);
                    // Twilio echoes every pending mark at once.
                    let pending: Vec<String> = self.tw.marks.drain(..).map(|(_, n)| n).collect();
                    for n in pending {
                        let echo = format!(r#"{{"event":"mark","streamSid":"MZ1","mark":{{"name":"{n}"}}}}"#);
                        self.call.handle_twilio(&echo, self.now).unwrap();
                    }
                }
                CallOutput::CallerAudio { mulaw, filled } => self.seen.caller_audio.push((CallOutput::caller_pcm(&mulaw), filled)),
                CallOutput::Control(c) => self.seen.controls.push((self.now, c)),
                CallOutput::MarkEchoed { .. } => {}
                o => self.seen.other.push(o),
            }
        }
    }
    /// Advances time to `until_ms`, 1 ms per step; `room(t_ms, sim)` may push room audio.
    fn run(&mut self, until_ms: u64, mut room: impl FnMut(u64, &mut Sim)) {
        while self.ms() < until_ms {
            self.now += MS;
            let t = self.ms();
            room(t, self);
            while self.tw.marks.front().is_some_and(|(at, _)| *at <= self.now) {
                let (_, n) = self.tw.marks.pop_front().unwrap();
                let echo = format!(r#"{{"event":"mark","streamSid":"MZ1","mark":{{"name":"{n}"}}}}"#);
                self.call.handle_twilio(&echo, self.now).unwrap();
            }
            self.drain();
        }
    }
    fn agent_says(&mut self, pcm: &[i16]) {
        self.call.handle_room_audio(AGENT, pcm, self.now);
        self.drain();
    }
    fn playbacks(&self) -> Vec<(u64, String, u32, bool, bool)> {
        self.seen
            .controls
            .iter()
            .filter_map(|(t, c)| match c {
                Control::Playback { utterance_id, heard_ms, complete, interrupted } => {
                    Some(((*t - self.t0).as_millis() as u64, utterance_id.clone(), *heard_ms, *complete, *interrupted))
                }
                _ => None,
            })
            .collect()
    }
}

/// Agent speaking in real time: 20 ms of tone every 20 ms from `from_ms` for `len_ms`.
fn speak(from_ms: u64, len_ms: u64) -> impl FnMut(u64, &mut Sim) {
    move |t, sim| {
        if t >= from_ms && t < from_ms + len_ms && (t - from_ms).is_multiple_of(20) {
            let k = ((t - from_ms) / 20) as usize;
            sim.agent_says(&tone(440.0, k * 160, 160));
        }
    }
}

#[test]
fn start_is_reported_and_caller_audio_decoded_with_gaps_filled() {
    let mut sim = Sim::new();
    match &sim.seen.other[..] {
        [CallOutput::Start(s)] => {
            assert_eq!(s.call_sid, "CA1");
            assert_eq!(s.custom_parameters["token"], "t");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.call.stream_sid(), "MZ00000000000000000000000000000001");
    let voice = tone(300.0, 0, 160 * 3);
    let enc = |k: usize| voice[k * 160..(k + 1) * 160].iter().map(|s| ulaw_encode(*s)).collect::<Vec<u8>>();
    sim.twilio(&media_msg(1, enc(0)));
    sim.twilio(&media_msg(3, enc(2))); // chunk 2 lost
    let got = &sim.seen.caller_audio;
    assert_eq!(got.len(), 3);
    assert!(!got[0].1 && got[1].1 && !got[2].1);
    assert_eq!(got[1].0, [0i16; 160]);
    for (i, s) in got[2].0.iter().enumerate() {
        assert_eq!(*s, ulaw_decode(ulaw_encode(voice[320 + i])));
    }
    assert_eq!(sim.call.stats().inbound.filled_frames, 1);
}

#[test]
fn agent_audio_is_paced_marked_and_reported_heard() {
    let mut sim = Sim::new();
    sim.run(1500, speak(100, 1000));
    // 1000 ms of speech: 50 frames, each with a mark, none sent before the agent spoke.
    assert_eq!(sim.tw.media.len(), 50);
    assert!(sim.tw.media.iter().all(|(t, _)| *t >= sim.t0 + MS * 100));
    // Sent at one frame per 20 ms once started (after the 40 ms prebuffer), never > 80 ms ahead.
    let first = sim.tw.media[0].0;
    for (i, (t, _)) in sim.tw.media.iter().enumerate() {
        assert!(*t <= first + MS * (20 * i as u32), "frame {i} late");
    }
    // The tone arrives intact (μ-law of the same samples).
    let heard: Vec<i16> = sim.tw.media.iter().flat_map(|(_, f)| f.iter().map(|b| ulaw_decode(*b))).collect();
    let sent = tone(440.0, 0, 8000);
    for (a, b) in heard.iter().zip(sent.iter()) {
        assert_eq!(*a, ulaw_decode(ulaw_encode(*b)));
    }
    let pb = sim.playbacks();
    // Throttled reports of utterance b1, heard increasing, ending with a complete one at 1000 ms.
    assert!(pb.len() >= 4 && pb.len() <= 8, "{pb:?}");
    assert!(pb.windows(2).all(|w| w[0].2 < w[1].2));
    let last = pb.last().unwrap();
    assert_eq!((last.1.as_str(), last.2, last.3, last.4), ("b1", 1000, true, false));
    // The final report comes when the caller has heard it all: not before the audio played.
    assert!(last.0 >= 1100, "{last:?}");
    assert_eq!(sim.call.stats().pacer.underruns, 0);
}

/// A PCMU agent track alone reaches the caller byte for byte (no decode, no encode), paced and
/// marked like any other; with a second voice speaking at the same time it is mixed.
#[test]
fn pcmu_room_audio_passes_through_unless_mixed() {
    const SUPERVISOR: SourceId = SourceId(2);
    // A μ-law pattern no PCM round trip keeps (0x7f and 0xff both decode to 0).
    let frame = |k: usize| -> Vec<u8> { (0..160).map(|i| if (i + k).is_multiple_of(2) { 0x7f } else { 0x15 }).collect() };
    let mut sim = Sim::new();
    sim.run(800, |t, s| {
        if (100..600).contains(&t) && (t - 100).is_multiple_of(20) {
            let k = ((t - 100) / 20) as usize;
            assert!(s.call.handle_room_ulaw(AGENT, &frame(k), s.now));
            s.drain();
        }
    });
    assert_eq!(sim.tw.media.len(), 25);
    for (k, (_, f)) in sim.tw.media.iter().enumerate() {
        assert_eq!(&f[..], &frame(k)[..], "frame {k} is the agent's bytes");
    }
    assert_eq!(sim.call.stats().ulaw_passed_through, 25);
    assert_eq!(sim.call.stats().pacer.underruns, 0);
    assert!(sim.playbacks().last().unwrap().3, "the utterance completes");

    // Another voice has audio waiting in the mixer: the agent's μ-law goes through the mixer
    // (decoded, mixed with whatever is whole, encoded) instead of jumping the queue.
    let mut sim = Sim::new();
    sim.run(100, |_, _| {});
    sim.call.handle_room_audio(SUPERVISOR, &[1000; 80], sim.now);
    assert!(!sim.call.handle_room_ulaw(AGENT, &[ulaw_encode(2000); 160], sim.now));
    sim.run(300, |_, _| {});
    assert_eq!(sim.call.stats().ulaw_passed_through, 0);
    assert_eq!(sim.call.stats().mixer.frames_out, 1);
    assert_eq!(sim.tw.media[0].1[0], ulaw_encode(ulaw_decode(ulaw_encode(2000))));

    // While a key tone plays, the agent's μ-law goes through the mixer (as a PCM voice would);
    // after the key, straight through again.
    let mut sim = Sim::new();
    sim.call.handle_sip_dtmf(5, "5", ControlSender::Agent, sim.now);
    let mut passed = Vec::new();
    sim.run(600, |t, s| {
        if t < 400 && t % 20 == 0 {
            passed.push(s.call.handle_room_ulaw(AGENT, &[ulaw_encode(300); 160], s.now));
            s.drain();
        }
    });
    let first_passed = passed.iter().position(|p| *p).expect("passes through after the key");
    assert!(first_passed >= 5 && passed[first_passed..].iter().all(|p| *p), "{passed:?}");
    assert_eq!(sim.call.stats().dtmf_keys_played, 1);
}

#[test]
fn interrupt_clears_at_once_and_reports_what_was_heard() {
    let mut sim = Sim::new();
    sim.run(600, speak(100, 2000));
    let at = sim.now;
    sim.call.handle_control(&Control::Interrupt { utterance_id: None }.to_bytes(), ControlSender::Agent, at).unwrap();
    // The very next output is the clear: no media or mark may precede it.
    assert!(matches!(sim.call.poll_output(at), Some(CallOutput::TwilioClear)));
    sim.tw.clears.push(at);
    sim.tw.playing_until = Some(at);
    sim.tw.marks.clear();
    sim.drain();
    let pb = sim.playbacks();
    let (t, id, heard, complete, interrupted) = pb.last().unwrap().clone();
    assert_eq!((t, id.as_str(), complete, interrupted), (600, "b1", false, true));
    // Speech started at 100 ms plus the 40 ms prebuffer: by 600 ms the caller heard 460 ms.
    assert!((440..=480).contains(&heard), "{heard}");
    // The agent's audio still in flight for the next 100 ms is dropped, not played.
    let sent_before = sim.tw.media.len();
    sim.run(700, speak(100, 2000));
    assert_eq!(sim.tw.media.len(), sent_before);
    // After the room goes quiet, the next reply is a new utterance and plays.
    sim.run(1000, |_, _| {});
    sim.run(1600, speak(1020, 300));
    assert_eq!(sim.tw.media.len(), sent_before + 15);
    let pb = sim.playbacks();
    assert_eq!(pb.last().unwrap().1, "b2");
    assert!(pb.last().unwrap().3);
    assert_eq!(sim.call.stats().interrupts, 1);
}

#[test]
fn no_audio_between_utterances() {
    let mut sim = Sim::new();
    sim.run(3000, |t, s| {
        speak(100, 400)(t, s);
        speak(1500, 400)(t, s);
    });
    assert_eq!(sim.tw.media.len(), 40);
    let gap: Vec<_> = sim.tw.media.iter().filter(|(t, _)| *t > sim.t0 + MS * 600 && *t < sim.t0 + MS * 1500).collect();
    assert!(gap.is_empty());
    let ids: Vec<String> = sim.playbacks().into_iter().filter(|p| p.3).map(|p| p.1).collect();
    assert_eq!(ids, vec!["b1", "b2"]);
}

#[test]
fn dtmf_hangup_transfer_and_stop() {
    let mut sim = Sim::with_config(CallConfig { transfer_allow: "+1555*".parse().unwrap(), ..Default::default() });
    sim.twilio(r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"7"}}"#);
    assert_eq!(sim.seen.controls.last().unwrap().1, Control::Dtmf { digit: "7".into() });
    assert_eq!(sim.seen.other.last().unwrap(), &CallOutput::SipDtmf("7".into()));
    sim.call.handle_control(&Control::Hangup { reason: Some("done".into()) }.to_bytes(), ControlSender::Agent, sim.now).unwrap();
    sim.call.handle_control(&Control::Transfer { to: " +15550001111".into() }.to_bytes(), ControlSender::Agent, sim.now).unwrap();
    sim.drain();
    let n = sim.seen.other.len();
    assert_eq!(sim.seen.other[n - 2], CallOutput::Hangup { reason: Some("done".into()) });
    assert_eq!(sim.seen.other[n - 1], CallOutput::Transfer { to: "+15550001111".into() });
    sim.twilio(r#"{"event":"stop","sequenceNumber":"9","stop":{"accountSid":"AC1","callSid":"CA1"},"streamSid":"MZ1"}"#);
    assert_eq!(sim.seen.other.last().unwrap(), &CallOutput::End(EndReason::Stop));
    assert!(sim.call.is_ended());
    // Nothing more comes out after the end.
    sim.agent_says(&tone(440.0, 0, 1600));
    sim.twilio(&media_msg(1, vec![0; 160]));
    assert!(sim.call.poll_output(sim.now + MS * 100).is_none());
}

#[test]
fn malformed_and_early_messages_are_counted_and_harmless() {
    let t0 = Instant::now();
    let mut call = CallSession::new(CallConfig::default());
    assert!(call.handle_twilio("{not json", t0).is_err());
    call.handle_twilio(&media_msg(1, vec![0; 160]), t0).unwrap(); // before start
    call.handle_twilio(r#"{"event":"brandNew"}"#, t0).unwrap();
    assert!(call.handle_control(b"\x00garbage", ControlSender::Agent, t0).is_err());
    let s = call.stats();
    assert_eq!((s.twilio_malformed, s.media_before_start, s.twilio_unknown, s.control_malformed), (1, 1, 1, 1));
    assert!(call.poll_output(t0).is_none());
    call.handle_twilio(&start_msg(), t0).unwrap();
    assert!(matches!(call.poll_output(t0), Some(CallOutput::Start(_))));
}

#[test]
fn stream_sid_that_is_not_twilios_ends_the_call() {
    let t0 = Instant::now();
    let mut call = CallSession::new(CallConfig::default());
    let bad = start_msg().replace("MZ00000000000000000000000000000001", r#"MZ\"injected"#);
    call.handle_twilio(&bad, t0).unwrap();
    assert!(matches!(call.poll_output(t0), Some(CallOutput::End(EndReason::BadStart(_)))));
}

#[test]
fn unsupported_media_format_ends_the_call() {
    let t0 = Instant::now();
    let mut call = CallSession::new(CallConfig::default());
    let bad = start_msg().replace("8000", "16000");
    call.handle_twilio(&bad, t0).unwrap();
    assert!(matches!(call.poll_output(t0), Some(CallOutput::End(EndReason::BadStart(_)))));
    assert!(call.is_ended());
}

#[test]
fn timeout_wakes_for_pacing_and_for_end_of_utterance() {
    let mut sim = Sim::new();
    assert_eq!(sim.call.poll_timeout(), None);
    sim.agent_says(&tone(440.0, 0, 160 * 3)); // 60 ms at once: prebuffer met, 3 frames out
    assert_eq!(sim.tw.media.len(), 3);
    // Next wakes: when the caller's buffer runs dry (60 ms), then when the utterance gap
    // (200 ms) passes without more audio.
    let t0 = sim.now;
    assert_eq!(sim.call.poll_timeout(), Some(t0 + MS * 60));
    sim.now = t0 + MS * 60;
    sim.drain();
    assert_eq!(sim.call.poll_timeout(), Some(t0 + MS * 200));
}

#[test]
fn only_agents_steer_the_call_and_only_to_allowed_numbers() {
    let mut sim = Sim::with_config(CallConfig { transfer_allow: "+15551234567,+44203*".parse().unwrap(), ..Default::default() });
    let send = |sim: &mut Sim, c: Control, from: ControlSender| {
        sim.call.handle_control(&c.to_bytes(), from, sim.now).unwrap();
        sim.drain();
    };
    let refused = |sim: &Sim| -> Vec<(&'static str, Refusal)> {
        sim.seen.other.iter().filter_map(|o| match o {
            CallOutput::ControlRefused { command, reason } => Some((*command, *reason)),
            _ => None,
        }).collect()
    };
    // A browser viewer (any non-agent) can neither hang up, transfer nor interrupt.
    sim.run(400, speak(100, 2000));
    send(&mut sim, Control::Hangup { reason: None }, ControlSender::Other);
    send(&mut sim, Control::Transfer { to: "+15551234567".into() }, ControlSender::Other);
    send(&mut sim, Control::Interrupt { utterance_id: None }, ControlSender::Other);
    assert_eq!(refused(&sim), vec![("hangup", Refusal::NotAgent), ("transfer", Refusal::NotAgent), ("interrupt", Refusal::NotAgent)]);
    assert!(sim.tw.clears.is_empty(), "a viewer's interrupt must not clear the caller's audio");
    // Playback and transcripts from anyone are harmless and not refusals.
    send(&mut sim, Control::Transcript { role: "user".into(), text: "hi".into(), is_final: true, fields: Default::default() }, ControlSender::Other);
    assert_eq!(refused(&sim).len(), 3);

    // The agent: numbers off the list are refused, whatever the model made up.
    for bad in ["+19005550100", "+1555123456", "+15551234567 ext 9", "sales", "+4420*"] {
        send(&mut sim, Control::Transfer { to: bad.into() }, ControlSender::Agent);
    }
    assert_eq!(refused(&sim).len(), 8);
    assert!(refused(&sim)[3..].iter().all(|r| *r == ("transfer", Refusal::TransferNotAllowed)));
    // One transfer at a time; after the driver reports a failure another may go.
    send(&mut sim, Control::Transfer { to: "+442031234567".into() }, ControlSender::Agent);
    send(&mut sim, Control::Transfer { to: "+15551234567".into() }, ControlSender::Agent);
    assert_eq!(refused(&sim).last(), Some(&("transfer", Refusal::TransferInFlight)));
    sim.call.transfer_failed();
    send(&mut sim, Control::Transfer { to: "+15551234567".into() }, ControlSender::Agent);
    let transfers: Vec<_> = sim.seen.other.iter().filter_map(|o| match o {
        CallOutput::Transfer { to } => Some(to.as_str()),
        _ => None,
    }).collect();
    assert_eq!(transfers, vec!["+442031234567", "+15551234567"]);
    assert_eq!(sim.call.stats().control_refused, 9);
    assert!(!sim.call.is_ended());
}

#[test]
fn keys_an_agent_presses_reach_the_caller_as_tones_paced_and_mixed() {
    use proto::dtmf::{parse_dial_string, DtmfDetector};
    let mut sim = Sim::new();
    // A browser viewer's key press is refused; an agent's keys play while it also speaks.
    sim.call.handle_sip_dtmf(5, "5", ControlSender::Other, sim.now);
    sim.call.handle_sip_dtmf(99, "xx", ControlSender::Agent, sim.now);
    sim.drain();
    let refused: Vec<_> = sim.seen.other.iter().filter(|o| matches!(o, CallOutput::ControlRefused { .. })).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    sim.call.handle_sip_dtmf(1, "1", ControlSender::Agent, sim.now);
    sim.call.send_dtmf(&parse_dial_string("w#A").unwrap(), sim.now).unwrap();
    sim.call.handle_sip_dtmf(11, "", ControlSender::Agent, sim.now);
    sim.run(3000, |t, sim| {
        if (2000..2400).contains(&t) && t % 20 == 0 {
            sim.agent_says(&tone(300.0, 0, 160));
        }
    });
    let heard: Vec<i16> = sim.tw.media.iter().flat_map(|(_, f)| f.iter().map(|b| ulaw_decode(*b))).collect();
    let keys: String = DtmfDetector::new().push(&heard).iter().map(|d| d.key).collect();
    assert_eq!(keys, "1#A#");
    // Four keys and a pause: 4·170 + 500 ms, sent at the pace they play (never far ahead).
    let first = sim.tw.media[0].0;
    let span = sim.tw.media[58].0 - first;
    assert!(span >= MS * 1080 && span <= MS * 1200, "{span:?}");
    assert_eq!(sim.call.stats().dtmf_keys_played, 4);
}

fn name(sim: &mut Sim, id: &str) {
    let at = sim.now;
    sim.call.handle_control(&Control::Utterance { utterance_id: id.into() }.to_bytes(), ControlSender::Agent, at).unwrap();
    sim.drain();
}

/// Ids of the final (complete or interrupted) reports, in order.
fn finals(sim: &Sim) -> Vec<String> {
    sim.playbacks().into_iter().filter(|p| p.3 || p.4).map(|p| p.1).collect()
}

#[test]
fn named_utterances_are_reported_by_the_agents_names() {
    let mut sim = Sim::new();
    // Named before its audio, as a v2 agent does.
    sim.run(99, |_, _| {});
    name(&mut sim, "a1");
    sim.run(800, speak(100, 400));
    // Named after its first frame: the audio overtook the data packet.
    sim.run(1000, speak(900, 400));
    name(&mut sim, "a2");
    sim.run(1700, speak(900, 400));
    assert_eq!(finals(&sim), ["a1", "a2"]);
    // Every report after the name carries it (one sent before it came has the bridge's label).
    let pb = sim.playbacks();
    assert!(pb.iter().filter(|p| p.0 >= 1000).all(|p| p.1 == "a2"), "{pb:?}");
    assert!(pb.iter().filter(|p| p.0 < 900).all(|p| p.1 == "a1"), "{pb:?}");
    // An agent that does not name its utterance gets the bridge's label.
    sim.run(2500, speak(1800, 300));
    assert_eq!(finals(&sim), ["a1", "a2", "b3"]);
}

#[test]
fn a_name_ends_the_utterance_before_it_without_a_silence() {
    let mut sim = Sim::new();
    name(&mut sim, "a1");
    sim.run(500, speak(0, 500));
    // The next reply follows with no gap at all: the name alone cuts it.
    name(&mut sim, "a2");
    sim.run(1500, speak(500, 500));
    let pb = sim.playbacks();
    let a1 = pb.iter().rfind(|p| p.1 == "a1").unwrap();
    let a2 = pb.iter().rfind(|p| p.1 == "a2").unwrap();
    assert!(a1.3 && a2.3, "{pb:?}");
    // Each heard in full: 500 ms apiece (one frame of slack for the cut).
    assert!(a1.2.abs_diff(500) <= 20 && a2.2.abs_diff(500) <= 20, "{pb:?}");
}

#[test]
fn after_an_interrupt_a_named_utterance_plays_at_once() {
    let mut sim = Sim::new();
    name(&mut sim, "a1");
    sim.run(600, speak(0, 2000));
    let at = sim.now;
    sim.call.handle_control(&Control::Interrupt { utterance_id: Some("a1".into()) }.to_bytes(), ControlSender::Agent, at).unwrap();
    sim.drain();
    let sent = sim.tw.media.len();
    // The agent resumes 100 ms later, before the room was quiet for the 200 ms utterance gap:
    // the name says this is new speech, so it is not muted as the tail of the interrupted one.
    sim.run(700, |_, _| {});
    name(&mut sim, "a2");
    sim.run(1400, speak(720, 400));
    assert_eq!(sim.tw.media.len(), sent + 20);
    assert_eq!(finals(&sim), ["a1", "a2"]);
    let i = sim.playbacks().into_iter().find(|p| p.4).unwrap();
    assert_eq!(i.1, "a1");
}

#[test]
fn bad_names_are_refused_and_counted() {
    let mut sim = Sim::new();
    let at = sim.now;
    let long = format!(r#"{{"v":2,"type":"utterance","utterance_id":"{}"}}"#, "x".repeat(100));
    assert!(sim.call.handle_control(long.as_bytes(), ControlSender::Agent, at).is_err());
    assert_eq!(sim.call.stats().control_malformed, 1);
    sim.run(600, speak(100, 300));
    assert_eq!(finals(&sim), ["b1"]);
}
