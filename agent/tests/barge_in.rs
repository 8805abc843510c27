//! Barge-in trimming: what the caller heard of an interrupted reply, from the bridge's
//! `playback` reports, mapped to our replies by order (k-th spoken reply = bridge `bk`).

use agent::turn::{heard_text, trim_to_heard, Segment, UtteranceMap};

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
fn interrupted_reply_is_trimmed_to_the_bridge_report() {
    let mut map = UtteranceMap::default();
    // Reply 1 (the greeting) played completely.
    assert_eq!(map.started(1), 1);
    {
        let r = map.by_reply(1).unwrap();
        r.segments.push(Segment {
            text: "Hello, this is the incident line.".into(),
            start_ms: 0,
            end_ms: Some(2000),
        });
        r.total_ms = 2000;
        r.finished = true;
    }
    assert!(map.playback("b1", 2000, true, false).unwrap().complete);

    // Reply 3 (reply 2 was cancelled before any audio, so it took no number) is bridge b2.
    assert_eq!(map.started(3), 2);
    assert_eq!(map.label(2), "b2");
    {
        let r = map.by_reply(3).unwrap();
        r.segments.push(Segment {
            text: "Thank you, John.".into(),
            start_ms: 0,
            end_ms: Some(1000),
        });
        r.segments.push(Segment {
            text: "Where did it happen?".into(),
            start_ms: 1000,
            end_ms: Some(1600),
        });
        r.total_ms = 1600; // pushed when the caller barged in
        r.finished = true;
        r.interrupted = true;
    }
    // Before any report: everything pushed counts as heard.
    assert_eq!(
        map.by_reply(3).unwrap().heard_text(),
        "Thank you, John. Where did it happen?"
    );
    // The bridge says 1 300 ms were heard (the rest was in its lead / Twilio's buffer).
    let r = map.playback("b2", 1300, false, true).unwrap();
    assert_eq!(r.reply_id, 3);
    // Second sentence: 300 of its 600 ms heard → half its 20 characters → "Where did".
    assert_eq!(r.heard_text(), "Thank you, John. Where did");
    // Heard earlier than the first sentence's end: part of it only.
    let r = map.playback("b2", 500, false, true).unwrap();
    // 500 of 1 000 ms: 8 of 16 characters, "Thank yo", back to a word boundary.
    assert_eq!(r.heard_text(), "Thank");
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

#[test]
fn unknown_or_future_labels_are_handled() {
    let mut map = UtteranceMap::default();
    assert!(
        map.playback("b1", 100, false, false).is_none(),
        "nothing spoken yet"
    );
    map.started(10);
    map.by_reply(10).unwrap().total_ms = 500;
    map.by_reply(10).unwrap().finished = true;
    // Heard positions are clamped to what was pushed.
    assert_eq!(
        map.playback("b1", 900, false, false).unwrap().heard_ms,
        Some(500)
    );
    assert!(map.playback("u1", 1, false, false).is_none());
    assert!(map.playback("bx", 1, false, false).is_none());
}
