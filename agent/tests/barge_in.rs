//! Barge-in trimming: what the caller heard of an interrupted reply, as text, from the heard
//! position the bridge reports (the whole flow is in tests/conversation.rs).

use agent::conversation::heard::{heard_text, trim_to_heard, Segment};

#[test]
fn proportional_trim_of_one_utterance() {
    let text = "The quick brown fox jumps over the lazy dog";
    // 43 characters; 50 % heard → first 21 chars "The quick brown fox j" → whole words only.
    assert_eq!(trim_to_heard(text, 1000, 2000), "The quick brown fox");
    assert_eq!(trim_to_heard(text, 0, 2000), "");
    assert_eq!(trim_to_heard(text, 2000, 2000), text);
    assert_eq!(trim_to_heard(text, 9999, 2000), text);
    assert_eq!(trim_to_heard(text, 100, 0), text);
}

#[test]
fn segments_map_heard_time_to_text() {
    let segs = vec![
        Segment {
            text: "One two three four.".into(),
            start_ms: 0,
            end_ms: Some(1000),
        },
        Segment {
            text: "Five six seven eight.".into(),
            start_ms: 1400,
            end_ms: Some(2400),
        },
    ];
    assert_eq!(heard_text(&segs, 0, 2400), "");
    assert_eq!(heard_text(&segs, 520, 2400), "One two");
    assert_eq!(heard_text(&segs, 1200, 2400), "One two three four.");
    assert_eq!(
        heard_text(&segs, 2400, 2400),
        "One two three four. Five six seven eight."
    );
}
