//! LiveKit signalling as `room` receives it: the input is length-prefixed frames (see
//! `length_prefixed`); a frame without the flag is one binary WebSocket frame (protobuf
//! `SignalResponse`) for the room driver, a flagged one a `DataPacket` from another
//! participant on a data channel (its first byte picks reliable or lossy).

#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frames = callbridge_fuzz::length_prefixed(data);
    let signal: Vec<&[u8]> = frames.iter().filter(|(data, _)| !data).map(|(_, f)| *f).collect();
    let packets: Vec<&[u8]> = frames.iter().filter(|(data, _)| *data).map(|(_, f)| *f).collect();
    room::fuzzing::signal_responses(&signal);
    room::fuzzing::data_packets(&packets);
});
