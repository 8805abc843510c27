//! The SQLite call record: a row per call, per turn (with latency), per field, outcome at the end.

use agent::metrics::TurnTimings;
use agent::record::{CallInfo, Recorder, TurnRow};

#[test]
#[allow(clippy::type_complexity)]
fn call_record_is_written_per_turn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    let rec = Recorder::open(&path).unwrap();
    rec.start_call(CallInfo {
        call_id: "call-CA1-1".into(),
        room: "call-CA1".into(),
        call_sid: Some("CA1".into()),
        caller: Some("+15551230001".into()),
        called: Some("+15559870002".into()),
        agent: "incident".into(),
    });
    rec.turn(
        "call-CA1-1",
        TurnRow {
            seq: 1,
            role: "assistant".into(),
            text: "Hello".into(),
            started_ms: 1,
            ended_ms: Some(2),
            interrupted: false,
            heard_text: None,
            timings: None,
        },
    );
    rec.flush();
    // Written as the call goes: readable before the call ends.
    let db = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM turns WHERE call_id = 'call-CA1-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    let ended: Option<i64> = db
        .query_row("SELECT ended_ms FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ended, None);

    let t = TurnTimings {
        eos_to_stt_ms: Some(610),
        stt_to_llm_ms: Some(2),
        llm_to_tts_ms: Some(30),
        tts_to_push_ms: Some(5),
        eos_to_push_ms: Some(650),
    };
    rec.turn(
        "call-CA1-1",
        TurnRow {
            seq: 2,
            role: "user".into(),
            text: "my name is John".into(),
            started_ms: 3,
            ended_ms: Some(4),
            interrupted: false,
            heard_text: None,
            timings: None,
        },
    );
    rec.turn(
        "call-CA1-1",
        TurnRow {
            seq: 3,
            role: "assistant".into(),
            text: "Thank you, John. Where did it happen?".into(),
            started_ms: 5,
            ended_ms: Some(6),
            interrupted: true,
            heard_text: Some("Thank you, John.".into()),
            timings: Some(t),
        },
    );
    rec.field("call-CA1-1", "name", "John");
    rec.field("call-CA1-1", "name", "John Smith"); // corrected: latest wins
    let fields = [("name".to_string(), "John Smith".to_string())]
        .into_iter()
        .collect();
    rec.end_call("call-CA1-1", "completed", &fields);
    rec.flush();

    let (caller, called, outcome, fj, ended): (String, String, String, String, Option<i64>) = db
        .query_row("SELECT caller, called, outcome, fields_json, ended_ms FROM calls WHERE call_id = 'call-CA1-1'", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap();
    assert_eq!(
        (caller.as_str(), called.as_str(), outcome.as_str()),
        ("+15551230001", "+15559870002", "completed")
    );
    assert_eq!(fj, r#"{"name":"John Smith"}"#);
    assert!(ended.is_some());
    let rows: Vec<(i64, String, String, i64, Option<String>, Option<i64>)> = db
        .prepare("SELECT seq, role, text, interrupted, heard_text, eos_to_push_ms FROM turns ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].1, "user");
    assert_eq!(
        rows[2],
        (
            3,
            "assistant".into(),
            "Thank you, John. Where did it happen?".into(),
            1,
            Some("Thank you, John.".into()),
            Some(650)
        )
    );
    let v: String = db
        .query_row("SELECT value FROM fields WHERE name = 'name'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, "John Smith");
    assert_eq!(rec.errors(), 0);
    assert_eq!(rec.dropped(), 0);

    // Read back whole, as the demo prints it.
    let back = agent::record::load_call(&path, "call-CA1").unwrap().expect("the call");
    assert_eq!(back.info.call_sid.as_deref(), Some("CA1"));
    assert_eq!(back.outcome.as_deref(), Some("completed"));
    assert_eq!(back.turns.len(), 3);
    assert_eq!(back.turns[2].timings, Some(t));
    assert!(back.turns[2].interrupted);
    assert_eq!(back.turns[0].timings, None);
    assert_eq!(back.fields, vec![("name".to_string(), "John Smith".to_string())]);
    assert!(agent::record::load_call(&path, "call-other").unwrap().is_none());
}

#[test]
fn a_full_queue_drops_turns_and_counts_them_but_never_a_calls_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    let rec = Recorder::open(&path).unwrap();
    rec.start_call(CallInfo { call_id: "c".into(), room: "call-CA2".into(), agent: "incident".into(), ..Default::default() });
    rec.flush();
    // Far more turns than the queue holds, faster than the disk: the excess is dropped, counted.
    let n = agent::record::MAX_QUEUED * 3;
    for seq in 0..n {
        rec.turn("c", TurnRow { seq: seq as u32, role: "user".into(), text: "x".repeat(200), started_ms: 0, ended_ms: None, interrupted: false, heard_text: None, timings: None });
    }
    rec.end_call("c", "completed", &Default::default());
    rec.flush();
    let written: i64 = rusqlite::Connection::open(&path).unwrap().query_row("SELECT count(*) FROM turns", [], |r| r.get(0)).unwrap();
    assert_eq!(written as u64 + rec.dropped(), n as u64, "every turn written or counted");
    let outcome: Option<String> = rusqlite::Connection::open(&path).unwrap().query_row("SELECT outcome FROM calls", [], |r| r.get(0)).unwrap();
    assert_eq!(outcome.as_deref(), Some("completed"), "the end is never dropped");
    assert!(agent::metrics::global().render().contains("agent_record_dropped_total"));
}
