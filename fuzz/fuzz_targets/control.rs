//! Control messages (topic `callbridge.control`): each line of the input is one data packet's
//! payload from the agent, fed to `Control::parse` and to `CallSession::handle_control` of a
//! streaming call, 20 ms apart. A line `#` plays 100 ms of agent audio first, so interrupts
//! meet a pacer with audio queued; a line starting with `!` comes from a participant that is
//! not an agent, whose commands must never reach Twilio.

#![no_main]
use callbridge_fuzz::CallDriver;
use libfuzzer_sys::fuzz_target;
use proto::call::{CallOutput, ControlSender};
use proto::control::Control;

fuzz_target!(|data: &[u8]| {
    let mut d = CallDriver::streaming();
    for payload in data.split(|b| *b == b'\n') {
        if payload == b"#" {
            d.room_audio(100);
            continue;
        }
        let (from, payload) = match payload.strip_prefix(b"!") {
            Some(rest) => (ControlSender::Other, rest),
            None => (ControlSender::Agent, payload),
        };
        let parsed = Control::parse(payload);
        let fed = d.call.handle_control(payload, from, d.now);
        assert_eq!(parsed.is_ok(), fed.is_ok());
        if let Ok(msg) = &parsed {
            if !matches!(msg, Control::Unknown { .. }) {
                assert_eq!(Control::parse(&msg.to_bytes()).as_ref(), Ok(msg), "round trip");
            }
        }
        d.drain();
        if from == ControlSender::Other {
            let obeyed = d.last.iter().find(|o| matches!(o, CallOutput::Hangup { .. } | CallOutput::Transfer { .. } | CallOutput::TwilioClear));
            assert!(obeyed.is_none(), "a non-agent steered the call: {obeyed:?}");
        }
        if let Ok(Control::Interrupt { .. }) = parsed {
            if let Some(i) = d.last.iter().position(|o| matches!(o, CallOutput::TwilioClear)) {
                assert_eq!(i, 0, "clear is not first: {:?}", d.last);
            }
        }
        d.advance(1);
    }
});
