//! LiveKit signalling as `devroom` receives it: the input is length-prefixed frames (see
//! `length_prefixed`), each one WebSocket message from a joined participant — binary
//! (protobuf `SignalRequest`), or text (JSON `SignalRequest`) when flagged.

#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frames = callbridge_fuzz::length_prefixed(data);
    devroom::fuzzing::signal_requests(frames.into_iter());
});
