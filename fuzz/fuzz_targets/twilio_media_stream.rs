//! Twilio Media Streams: each line of the input is one WebSocket text frame from Twilio,
//! fed to `Inbound::parse` and to a `CallSession` exactly as the bridge's call task does, with
//! 20 ms of simulated time between frames. Lines starting with `#` are not Twilio's: they
//! drive the other side (`#a` 100 ms of agent audio, `#i` an interrupt, `#t` 1 s passes), so
//! mark echoes and clears meet a pacer that has something to play.

#![no_main]
use callbridge_fuzz::CallDriver;
use libfuzzer_sys::fuzz_target;
use proto::call::CallOutput;
use proto::twilio::Inbound;

fuzz_target!(|data: &[u8]| {
    let mut d = CallDriver::new();
    for line in callbridge_fuzz::text_lines(data) {
        match line.as_bytes().first() {
            Some(b'#') => match line.as_bytes().get(1) {
                Some(b'a') => d.room_audio(100),
                Some(b'i') => {
                    d.call.interrupt(d.now);
                    d.drain();
                    // Nothing queued before the interrupt may reach Twilio after its clear.
                    if let Some(i) = d.last.iter().position(|o| matches!(o, CallOutput::TwilioClear)) {
                        assert_eq!(i, 0, "clear is not first: {:?}", d.last);
                    }
                }
                _ => d.advance(50),
            },
            _ => {
                let parsed = Inbound::parse(line);
                let fed = d.call.handle_twilio(line, d.now);
                assert_eq!(parsed.is_ok(), fed.is_ok());
                if let Ok(msg) = parsed {
                    // What the simulator writes, we read back the same.
                    if !matches!(msg, Inbound::Unknown { .. }) {
                        assert_eq!(Inbound::parse(&msg.to_json()).as_ref(), Ok(&msg));
                    }
                }
            }
        }
        d.drain();
        d.advance(1);
    }
});
