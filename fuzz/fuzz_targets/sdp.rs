//! SDP as `room` and `devroom` receive it (str0m's parser through their code paths). The
//! first byte picks the path, the rest is the SDP text:
//! 0 room subscriber `offer`, 1 room publisher `answer`, 2 devroom publisher `offer`,
//! 3 devroom subscriber `answer`.

#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&path, sdp)) = data.split_first() else { return };
    // SDP travels inside a protobuf string: always UTF-8.
    let Ok(sdp) = std::str::from_utf8(sdp) else { return };
    match path % 4 {
        0 => room::fuzzing::subscriber_offer(sdp),
        1 => room::fuzzing::publisher_answer(sdp),
        2 => devroom::fuzzing::publisher_offer(sdp),
        _ => devroom::fuzzing::subscriber_answer(sdp),
    }
});
