//! The conversation core against a simulated caller, bridge, recogniser and reply tasks, on a
//! simulated clock (tests/sim): each test is a whole call, run in milliseconds.

mod sim;

use agent::conversation::heard::trim_to_heard;
use agent::config::OnMachine;
use agent::conversation::{AnsweredBy, FinishReason, Input, Metric, Stage, TransferEvent};
use agent::providers::{Role, SttEvent};
use proto::control::Control;
use serde_json::json;
use sim::*;

const GREETING: &str = "Hello, this is the Acme incident line. I will take a few details. May I have your name, please?";

/// Frames of the greeting (60 ms per character, 20 ms frames).
fn greeting_frames() -> usize {
    GREETING.len() * 3
}

/// The frame numbers the caller heard, in order.
fn heard_values(s: &Sim) -> Vec<i16> {
    s.heard.iter().map(|h| h.1).collect()
}

#[test]
fn the_greeting_plays_whole_and_is_named_to_the_bridge() {
    let mut s = Sim::new(spec());
    s.run(10_000);
    let v = heard_values(&s);
    assert_eq!(v, (1..=greeting_frames() as i16).collect::<Vec<_>>(), "every frame once, in order");
    // Named before its first frame; the bridge's reports come back under that name.
    assert!(matches!(&s.controls[0].1, Control::Utterance { utterance_id } if utterance_id == "a1"));
    let rows = s.assistant_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].text.as_str(), rows[0].interrupted), (GREETING, false));
    assert!(s.end.is_none());
}

#[test]
fn interruption_mid_sentence_trims_the_history_to_what_was_heard() {
    let mut s = Sim::new(spec());
    s.scripts.push_back(vec![tool("record_field", json!({"field": "name", "value": "John"})), say("Thank you, John. Where did it happen?"), done("stop")]);
    // The caller talks over the greeting; the recogniser has words 600 ms in.
    s.schedule(2000, Input::SpeechStarted);
    s.schedule(2600, Input::Stt(SttEvent::Interim { text: "my name is".into() }));
    s.schedule(3700, Input::SpeechEnded { at: s.at(3200) });
    s.schedule(3800, Input::Stt(SttEvent::EndOfTurn { text: "my name is john".into() }));
    s.run(3000);
    // Stopped at once: the interrupt at 2600, and the caller hears nothing after it.
    let interrupts = s.interrupts();
    assert_eq!(interrupts, [s.at(2600)]);
    assert!(s.last_heard().unwrap() <= s.at(2600));
    // The bridge heard 2 420 ms (frames pushed by 2 500 ms, 100 ms of lead): exactly that much.
    let heard = heard_values(&s);
    assert_eq!(heard, (1..=121).collect::<Vec<i16>>());
    s.run(12_000);
    // The greeting's record and its history message are what the caller heard.
    let total_ms = greeting_frames() as u32 * 20;
    let want = trim_to_heard(GREETING, 121 * 20, total_ms).to_string();
    assert!(!want.is_empty() && want.len() < GREETING.len());
    let g = s.assistant_rows()[0].clone();
    assert_eq!((g.text.as_str(), g.interrupted, g.heard_text.as_deref()), (GREETING, true, Some(want.as_str())));
    let req = &s.requests[0];
    let assistant: Vec<&str> = req.iter().filter(|m| m.role == Role::Assistant).map(|m| m.content.as_str()).collect();
    assert_eq!(assistant, [want.as_str()]);
    assert_eq!(req.last().unwrap().content, "my name is john");
    // Then the answer is spoken, named a2.
    assert!(s.said("assistant").iter().any(|t| t == "Thank you, John. Where did it happen?"));
    assert!(s.controls.iter().any(|(_, c)| matches!(c, Control::Utterance { utterance_id } if utterance_id == "a2")));
    assert_eq!(s.conv.fields().get("name").map(String::as_str), Some("John"));
    assert_eq!(s.count(|m| *m == Metric::Interruption), 1);
}

#[test]
fn a_false_interruption_resumes_from_what_the_caller_heard() {
    let mut s = Sim::new(spec());
    // 1.2 s of noise over the greeting: long enough to stop it, but no words come.
    s.noise(1500, 1200);
    s.run(3000);
    assert_eq!(s.interrupts(), [s.at(2500)], "stopped after vad_interrupt_ms of sound");
    let before: Vec<i16> = heard_values(&s);
    assert_eq!(before, (1..=116).collect::<Vec<i16>>(), "heard up to 2 500 ms");
    s.run(15_000);
    // Resumed 1.5 s after the sound ended, from the frame after the last one heard: the whole
    // greeting, nothing lost and nothing twice.
    let v = heard_values(&s);
    assert_eq!(v, (1..=greeting_frames() as i16).collect::<Vec<_>>());
    let resumed_at = s.heard[116].0;
    assert_eq!(resumed_at, s.at(4700 + sim::BRIDGE_LEAD), "resumed at the timeout");
    // Under a new name, and the bridge's report of it counts from where it resumed.
    let names: Vec<String> = s.controls.iter().filter_map(|(_, c)| if let Control::Utterance { utterance_id } = c { Some(utterance_id.clone()) } else { None }).collect();
    assert_eq!(names, ["a1", "a2"]);
    assert!(s.requests.is_empty(), "noise is not a turn");
    assert_eq!(s.count(|m| *m == Metric::FalseInterruption), 1);
    let g = s.assistant_rows()[0];
    assert!(!g.interrupted, "{g:?}");
}

#[test]
fn backchannels_do_not_interrupt() {
    let mut s = Sim::new(spec());
    // "uh-huh, okay" and a longer "yeah yeah, I see" over the greeting.
    s.schedule(1500, Input::SpeechStarted);
    s.schedule(1800, Input::Stt(SttEvent::Interim { text: "uh-huh okay".into() }));
    s.schedule(2400, Input::SpeechEnded { at: s.at(1900) });
    s.schedule(2500, Input::Stt(SttEvent::EndOfTurn { text: "uh-huh okay".into() }));
    s.schedule(3000, Input::SpeechStarted);
    s.schedule(3300, Input::Stt(SttEvent::Interim { text: "yeah yeah".into() }));
    s.schedule(4700, Input::SpeechEnded { at: s.at(4200) });
    s.schedule(4800, Input::Stt(SttEvent::EndOfTurn { text: "yeah yeah I see".into() }));
    s.run(12_000);
    assert!(s.requests.is_empty(), "not answered");
    assert_eq!(s.count(|m| *m == Metric::Backchannel), 2);
    // The long one stopped the greeting (1.2 s of sound) but its words were a backchannel: it
    // resumed at once from what was heard, nothing lost.
    assert_eq!(s.interrupts().len(), 1);
    assert_eq!(heard_values(&s), (1..=greeting_frames() as i16).collect::<Vec<_>>());
    let users: Vec<&str> = s.records.iter().filter(|r| r.role == "user").map(|r| r.text.as_str()).collect();
    assert_eq!(users, ["uh-huh okay", "yeah yeah I see"], "recorded, not answered");
}

/// Lets the greeting finish, then the caller says `text` (returns when the turn ends, ms).
fn after_greeting(s: &mut Sim, text: &str) -> u64 {
    s.run(7000);
    s.caller_says(7000, 1000, text);
    8600
}

#[test]
fn a_tool_call_then_the_spoken_result() {
    let mut s = Sim::new(spec());
    s.scripts.push_back(vec![tool("record_field", json!({"field": "name", "value": "John"})), done("tool_calls")]);
    s.scripts.push_back(vec![say("Thank you, John. Where did it happen?"), done("stop")]);
    after_greeting(&mut s, "my name is john");
    s.run(20_000);
    assert_eq!(s.fields, [("name".to_string(), "John".to_string())]);
    assert_eq!(s.requests.len(), 2, "a second round after the tool-only answer");
    let second = &s.requests[1];
    let tool_msg = second.iter().find(|m| m.role == Role::Tool).unwrap();
    assert!(tool_msg.content.starts_with("recorded; still missing: location"), "{}", tool_msg.content);
    assert_eq!(second.iter().filter(|m| !m.tool_calls.is_empty()).count(), 1);
    assert!(s.said("assistant").iter().any(|t| t == "Thank you, John. Where did it happen?"));
    // The fields ride on the transcript.
    assert!(s.transcripts.iter().any(|(r, _)| r == "fields"));
}

#[test]
fn end_call_says_goodbye_then_hangs_up() {
    let mut s = Sim::new(spec());
    s.scripts.push_back(vec![tool("end_call", json!({"message": "Goodbye, John."})), done("stop")]);
    after_greeting(&mut s, "bye");
    s.run(30_000);
    assert_eq!(s.hangups(), [Some("end_call".to_string())]);
    let hangup_at = s.controls.iter().find(|(_, c)| matches!(c, Control::Hangup { .. })).unwrap().0;
    // After the caller heard all of the goodbye.
    assert!(s.last_heard().unwrap() <= hangup_at);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some("Goodbye, John."));
    let end = s.end.clone().unwrap();
    assert_eq!(end.reason, FinishReason::CallerGoodbye);
    assert_eq!(end.reason.to_string(), "caller_goodbye");
}

#[test]
fn talking_over_the_goodbye_keeps_the_call_going() {
    let mut s = Sim::new(spec());
    s.scripts.push_back(vec![tool("end_call", json!({"message": "Thank you for calling, have a nice day, goodbye."})), done("stop")]);
    after_greeting(&mut s, "that is all");
    s.run(9_500);
    s.schedule(9_600, Input::SpeechStarted);
    s.schedule(9_900, Input::Stt(SttEvent::Interim { text: "wait one more thing".into() }));
    s.run(20_000);
    assert!(s.hangups().is_empty());
    assert!(s.end.is_none());
}

#[test]
fn transfer_goes_to_the_named_destination_only() {
    let named = spec_with(|s| {
        s.transfers.insert("sales".into(), "+15550100201".into());
        s.transfers.insert("support".into(), "+15550100202".into());
    });
    // The model (or a caller who said so) asks for a number: refused, nothing dialled.
    let mut s = Sim::new(named.clone());
    s.scripts.push_back(vec![tool("transfer", json!({"number": "+19005550100"})), done("tool_calls")]);
    s.scripts.push_back(vec![tool("transfer", json!({"destination": "+19005550100"})), done("tool_calls")]);
    s.scripts.push_back(vec![say("I can transfer you to sales or support."), done("stop")]);
    after_greeting(&mut s, "transfer me to plus one nine hundred five five five");
    s.run(30_000);
    assert!(s.transfers().is_empty());
    assert!(s.controls.iter().all(|(_, c)| !format!("{c:?}").contains("900555")));
    let refusals = s.requests[1].iter().chain(&s.requests[2]).filter(|m| m.role == Role::Tool && m.content.starts_with("error:")).count();
    assert!(refusals >= 2, "{:?}", s.requests);
    assert!(s.end.is_none());

    // By name: the transfer line, then the configured number.
    let mut s = Sim::new(named);
    s.scripts.push_back(vec![tool("transfer", json!({"destination": "sales"})), done("tool_calls")]);
    after_greeting(&mut s, "sales please");
    s.run(30_000);
    assert_eq!(s.transfers(), ["+15550100201"]);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some(spec().transfer_line.as_str()));
    assert_eq!(s.end.unwrap().reason, FinishReason::Transferred);
}

#[test]
fn a_failing_llm_is_an_apology_and_a_hangup_never_dead_air() {
    // Refused outright (bad key): apology at once.
    let mut s = Sim::new(spec());
    s.llm_fault = Some(Fault { stage: Stage::Llm, fatal: true });
    let end = after_greeting(&mut s, "my name is john");
    s.run(40_000);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some(agent::conversation::APOLOGY_LINE));
    assert_eq!(s.hangups(), [Some("agent unavailable".to_string())]);
    // The apology started within a second of the caller's turn.
    let apology_heard = s.heard.iter().find(|h| h.0 > s.at(end)).unwrap().0;
    assert!(apology_heard <= s.at(end + 1000), "{:?}", apology_heard - s.at(end));
    assert!(matches!(s.end.clone().unwrap().reason, FinishReason::Error { stage: Stage::Llm, .. }));
    assert_eq!(s.end.unwrap().reason.to_string(), "error: llm: llm down");

    // Failing now and then: ask again; the third failure in a row ends the call.
    let mut s = Sim::new(spec());
    s.llm_fault = Some(Fault { stage: Stage::Llm, fatal: false });
    after_greeting(&mut s, "my name is john");
    s.run(20_000);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some(agent::conversation::REPROMPT_LINE));
    assert!(s.end.is_none());
    s.caller_says(20_000, 800, "john");
    s.caller_says(30_000, 800, "john smith");
    s.run(60_000);
    let reprompts = s.said("assistant").iter().filter(|t| t.as_str() == agent::conversation::REPROMPT_LINE).count();
    assert_eq!(reprompts, 2);
    assert_eq!(s.hangups().len(), 1);
    assert_eq!(s.count(|m| matches!(m, Metric::ProviderError(Stage::Llm))), 3);
}

#[test]
fn a_failing_voice_apologises_in_the_fallback_voice() {
    let mut s = Sim::new(spec());
    s.run(7000);
    s.tts_fault = Some(Fault { stage: Stage::Tts, fatal: true });
    s.scripts.push_back(vec![say("Thank you."), done("stop")]);
    s.caller_says(7000, 1000, "my name is john");
    s.run(40_000);
    assert_eq!(s.fallback_lines, [agent::conversation::APOLOGY_LINE]);
    assert_eq!(s.hangups().len(), 1);
    assert!(matches!(s.end.unwrap().reason, FinishReason::Error { stage: Stage::Tts, .. }));
}

#[test]
fn a_failing_recogniser_is_an_apology_and_a_hangup() {
    let mut s = Sim::new(spec());
    s.schedule(7000, Input::Stt(SttEvent::Error("deepgram: connection closed".into())));
    s.run(40_000);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some(agent::conversation::APOLOGY_LINE));
    assert_eq!(s.hangups().len(), 1);
    assert!(matches!(s.end.unwrap().reason, FinishReason::Error { stage: Stage::Stt, .. }));
}

#[test]
fn the_caller_leaving_mid_reply_ends_the_call_with_what_was_heard() {
    let mut s = Sim::new(spec());
    s.schedule(2000, Input::CallerLeft);
    s.run(10_000);
    let end = s.end.clone().unwrap();
    assert_eq!(end.reason, FinishReason::CallerHungUp);
    assert!(s.cancels.contains(&1), "the greeting's task is stopped");
    let g = s.assistant_rows()[0];
    assert!(g.interrupted && g.heard_text.as_deref().is_some_and(|h| !h.is_empty() && GREETING.starts_with(h)), "{g:?}");
    assert!(s.heard.iter().all(|h| h.0 <= s.at(2000 + sim::BRIDGE_LEAD)));
}

#[test]
fn keys_stop_the_agent_and_become_a_turn_without_reaching_the_record() {
    for record_dtmf in [false, true] {
        let mut s = Sim::with(spec(), record_dtmf);
        for (t, d) in [(2000, "4"), (2300, "2"), (2600, "#")] {
            s.schedule(t, Input::Dtmf { digit: d.into() });
        }
        s.schedule(2700, Input::Dtmf { digit: "<script>".into() });
        s.run(10_000);
        assert_eq!(s.interrupts(), [s.at(2000)], "the first key stops the greeting");
        let last = s.requests[0].last().unwrap();
        assert_eq!(last.content, "(The caller typed 42 on the keypad.)");
        let rows: Vec<&str> = s.records.iter().filter(|r| r.role == "dtmf").map(|r| r.text.as_str()).collect();
        if record_dtmf {
            assert_eq!(rows, ["4", "2", "#"]);
        } else {
            assert_eq!(rows, ["", "", ""], "digits only with RECORD_DTMF");
        }
        assert!(s.records.iter().all(|r| !r.text.contains("42")), "never the entry as a whole");
    }
}

#[test]
fn words_without_caller_speech_are_noise_not_a_turn() {
    let mut s = Sim::new(spec());
    s.run(7000);
    // The recogniser made words of something the speech detector did not call speech.
    s.schedule(7500, Input::Stt(SttEvent::EndOfTurn { text: "my name is john".into() }));
    // And a real turn of fillers only.
    s.caller_says(9000, 600, "um uh");
    s.run(15_000);
    assert!(s.requests.is_empty());
    assert!(s.conv.fields().is_empty());
}

#[test]
fn a_preemptive_reply_plays_as_soon_as_the_final_transcript_confirms_it() {
    let mut s = Sim::new(spec());
    s.scripts.push_back(vec![say("Thank you, John."), done("stop")]);
    s.run(7000);
    s.schedule(7000, Input::SpeechStarted);
    s.schedule(7700, Input::Stt(SttEvent::Preflight { text: "my name is john".into() }));
    s.schedule(8500, Input::SpeechEnded { at: s.at(8000) });
    s.schedule(8600, Input::Stt(SttEvent::EndOfTurn { text: "My name is John.".into() }));
    s.run(8590);
    assert_eq!(s.requests.len(), 1, "asked on the early transcript");
    assert_eq!(s.heard.len(), greeting_frames(), "but nothing played before the final");
    s.run(15_000);
    // Its audio was ready: it plays the moment the final transcript confirms it.
    let first = s.heard[greeting_frames()].0;
    assert_eq!(first, s.at(8600 + sim::BRIDGE_LEAD));
    assert_eq!(s.count(|m| *m == Metric::Preemptive { kept: true }), 1);
    let users: Vec<&str> = s.conv.history().iter().filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect();
    assert_eq!(users, ["My name is John."]);

    // The final says something else: the early reply is thrown away, the final answered.
    let mut s = Sim::new(spec());
    s.scripts.push_back(vec![say("Thank you, John."), done("stop")]);
    s.scripts.push_back(vec![say("Thank you, Joan."), done("stop")]);
    s.run(7000);
    s.schedule(7000, Input::SpeechStarted);
    s.schedule(7700, Input::Stt(SttEvent::Preflight { text: "my name is john".into() }));
    s.schedule(8500, Input::SpeechEnded { at: s.at(8000) });
    s.schedule(8600, Input::Stt(SttEvent::EndOfTurn { text: "my name is joan".into() }));
    s.run(15_000);
    assert_eq!(s.requests.len(), 2);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some("Thank you, Joan."));
    assert!(!s.said("assistant").iter().any(|t| t == "Thank you, John."), "never said, never shown");
    assert_eq!(s.count(|m| *m == Metric::Preemptive { kept: false }), 1);
}

#[test]
fn a_turn_while_the_reply_is_still_thinking_is_answered_together() {
    let mut s = Sim::new(spec());
    s.scripts.push_back(vec![tool("record_field", json!({"field": "name", "value": "John"})), say("Thanks."), done("stop")]);
    s.scripts.push_back(vec![say("Thank you, John, and the warehouse."), done("stop")]);
    s.run(7000);
    s.caller_says(7000, 500, "my name is john");
    // The second turn ends 100 ms after the first: before the first reply could speak.
    s.schedule(8120, Input::SpeechStarted);
    s.schedule(8280, Input::SpeechEnded { at: s.at(8280) });
    s.schedule(8300, Input::Stt(SttEvent::EndOfTurn { text: "in the warehouse".into() }));
    s.run(20_000);
    assert_eq!(s.requests.len(), 2);
    let users: Vec<&str> = s.requests[1].iter().filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect();
    assert_eq!(users, ["my name is john", "in the warehouse"]);
    assert!(!s.said("assistant").iter().any(|t| t == "Thanks."));
}

#[test]
fn shutdown_says_goodbye_and_hangs_up() {
    let mut s = Sim::new(spec());
    s.schedule(2000, Input::Shutdown);
    s.run(30_000);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some(agent::conversation::SHUTDOWN_LINE));
    assert_eq!(s.hangups(), [Some("agent shutting down".to_string())]);
    assert_eq!(s.end.unwrap().reason, FinishReason::Drained);
}

#[test]
fn press_keys_presses_valid_keys_once_and_tells_the_model() {
    let ivr = spec_with(|s| s.outbound.press_keys = true);
    let mut s = Sim::new(ivr);
    // An IVR menu; the model presses 2 then (after its answer) tries something that is no key.
    s.scripts.push_back(vec![tool("press_keys", json!({"keys": "2 #"})), done("tool_calls")]);
    s.scripts.push_back(vec![tool("press_keys", json!({"keys": "+1900"})), done("tool_calls")]);
    s.scripts.push_back(vec![say("I pressed two."), done("stop")]);
    after_greeting(&mut s, "for sales press two");
    s.run(30_000);
    assert_eq!(s.keys_pressed.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(), ["2#"]);
    // Pressed when the model asked, right after the caller's turn (LLM latency).
    assert!(s.keys_pressed[0].0 <= s.at(8600 + 2 * sim::LLM_LATENCY), "{:?}", s.keys_pressed[0].0 - s.t0);
    let outputs: Vec<&str> = s.requests[2].iter().filter(|m| m.role == Role::Tool).map(|m| m.content.as_str()).collect();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert_eq!(outputs[0], "ok: pressed 2 keys");
    assert!(outputs[1].starts_with("error: keys are"), "{outputs:?}");
    assert_eq!(s.count(|m| matches!(m, Metric::ToolRefused(agent::conversation::tools::Refusal::BadKeys))), 1);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some("I pressed two."));
    // In the record as a row without the keys (RECORD_DTMF is off).
    let rows: Vec<&str> = s.records.iter().filter(|r| r.role == "dtmf_sent").map(|r| r.text.as_str()).collect();
    assert_eq!(rows, [""]);
    assert!(s.end.is_none());
}

const MACHINE_MESSAGE: &str = "Hello, this is Acme Facilities about your report. Please call us back. Goodbye.";

fn machine_spec(on_machine: OnMachine) -> std::sync::Arc<agent::config::AgentSpec> {
    spec_with(|s| {
        s.outbound.on_machine = on_machine;
        s.outbound.machine_message = MACHINE_MESSAGE.into();
        s.outbound.machine_wait_ms = 20_000;
    })
}

#[test]
fn on_a_machine_the_agent_waits_for_the_beep_then_leaves_its_message() {
    let mut s = Sim::new(machine_spec(OnMachine::Message));
    // The voicemail greeting talks over ours; Twilio says machine_start 2 s in.
    s.schedule(500, Input::SpeechStarted);
    s.schedule(1200, Input::Stt(SttEvent::Interim { text: "you have reached".into() }));
    s.schedule(1500, Input::Dtmf { digit: "5".into() }); // a key tone in the greeting, before the verdict
    s.schedule(2000, Input::AnsweredBy(AnsweredBy::MachineStart));
    s.schedule(4000, Input::SpeechEnded { at: s.at(3500) });
    s.schedule(4100, Input::Stt(SttEvent::EndOfTurn { text: "you have reached the voicemail of john leave a message".into() }));
    s.schedule(4300, Input::Dtmf { digit: "1".into() });
    s.run(6000);
    // Stopped at once, and the greeting is nobody's turn: nothing asked, nothing said.
    assert!(s.interrupts().iter().any(|t| *t <= s.at(2000)), "{:?}", s.interrupts());
    assert!(s.last_heard().unwrap() <= s.at(2000));
    assert!(s.requests.is_empty(), "the voicemail greeting was answered");
    assert!(s.records.iter().all(|r| r.role != "user"), "the greeting is not a caller turn");
    // The beep: the message, heard whole, then the hangup.
    s.schedule(6000, Input::AnsweredBy(AnsweredBy::MachineEndBeep));
    // Noise on the recording does not stop it (a final line).
    s.noise(7000, 1500);
    s.run(60_000);
    assert_eq!(s.said("assistant").last().map(String::as_str), Some(MACHINE_MESSAGE));
    let frames = MACHINE_MESSAGE.len() * 3;
    let message: Vec<i16> = s.heard.iter().filter(|h| h.0 > s.at(6000)).map(|h| h.1).collect();
    assert_eq!(message, (1..=frames as i16).collect::<Vec<_>>(), "every frame of the message once");
    assert_eq!(s.hangups(), [Some("voicemail message left".to_string())]);
    let hangup_at = s.controls.iter().find(|(_, c)| matches!(c, Control::Hangup { .. })).unwrap().0;
    assert!(s.last_heard().unwrap() <= hangup_at);
    assert!(s.transfers().is_empty());
    let end = s.end.unwrap();
    assert_eq!(end.reason, FinishReason::Machine { message_left: true });
    assert_eq!(end.reason.to_string(), "voicemail_left");
}

#[test]
fn a_greeting_whose_end_never_comes_gets_the_message_after_the_wait() {
    let mut s = Sim::new(machine_spec(OnMachine::Message));
    s.schedule(1000, Input::AnsweredBy(AnsweredBy::MachineStart));
    s.run(20_900);
    assert!(s.said("assistant").iter().all(|t| t != MACHINE_MESSAGE), "not before the wait is over");
    s.run(60_000);
    // 20 s after machine_start (machine_wait_ms), whatever Twilio says.
    let started = s.heard.iter().find(|h| h.0 > s.at(2000)).unwrap().0;
    assert!(started >= s.at(21_000) && started <= s.at(21_000 + sim::TTS_LATENCY + sim::BRIDGE_LEAD + 20), "{:?}", started - s.t0);
    assert_eq!(s.end.unwrap().reason, FinishReason::Machine { message_left: true });
}

#[test]
fn hangup_on_a_machine_or_a_fax_says_nothing_and_a_person_is_talked_to() {
    for (on_machine, verdict) in [
        (OnMachine::Hangup, AnsweredBy::MachineStart),
        (OnMachine::Hangup, AnsweredBy::MachineEndBeep),
        (OnMachine::Message, AnsweredBy::Fax),
    ] {
        let mut s = Sim::new(machine_spec(on_machine));
        s.schedule(1500, Input::AnsweredBy(verdict));
        s.run(30_000);
        assert_eq!(s.hangups(), [Some("answering machine".to_string())], "{verdict:?}");
        let hangup_at = s.controls.iter().find(|(_, c)| matches!(c, Control::Hangup { .. })).unwrap().0;
        assert_eq!(hangup_at, s.at(1500), "at once");
        assert!(s.last_heard().unwrap() <= s.at(1500 + sim::BRIDGE_LEAD));
        assert!(!s.said("assistant").iter().any(|t| t == MACHINE_MESSAGE));
        assert_eq!(s.end.clone().unwrap().reason, FinishReason::Machine { message_left: false });
    }
    // A person (or Twilio cannot tell): the conversation goes on as ever.
    for verdict in [AnsweredBy::Human, AnsweredBy::Unknown] {
        let mut s = Sim::new(machine_spec(OnMachine::Hangup));
        s.scripts.push_back(vec![say("Thank you, John."), done("stop")]);
        s.schedule(1500, Input::AnsweredBy(verdict));
        after_greeting(&mut s, "my name is john");
        s.run(20_000);
        assert!(s.hangups().is_empty() && s.end.is_none(), "{verdict:?}");
        assert_eq!(heard_values(&s)[..greeting_frames()], (1..=greeting_frames() as i16).collect::<Vec<_>>()[..]);
        assert_eq!(s.said("assistant").last().map(String::as_str), Some("Thank you, John."));
    }
}

fn warm_spec() -> std::sync::Arc<agent::config::AgentSpec> {
    spec_with(|s| {
        s.transfers.insert(
            "sales".into(),
            agent::config::TransferTarget::Table(agent::config::TransferTable { number: "+15550100201".into(), warm: true }),
        );
    })
}

/// The caller asks for sales (name known); runs until the person is dialled (returns when, ms).
fn ask_for_sales(s: &mut Sim) -> u64 {
    s.scripts.push_back(vec![tool("record_field", json!({"field": "name", "value": "John"})), tool("transfer", json!({"destination": "sales"})), done("tool_calls")]);
    after_greeting(s, "my name is john put me through to sales");
    let mut t = 8600;
    while s.dials.is_empty() && t < 30_000 {
        t += 20;
        s.run(t);
    }
    t
}

#[test]
fn warm_transfer_holds_the_caller_dials_briefs_then_leaves() {
    let mut s = Sim::new(warm_spec());
    ask_for_sales(&mut s);
    // The transfer line was heard whole, then the configured number was dialled; nothing cold.
    assert_eq!(s.dials.len(), 1);
    let (dialled_at, dest, number) = s.dials[0].clone();
    assert_eq!((dest.as_str(), number.as_str()), ("sales", "+15550100201"));
    assert!(s.transfers().is_empty() && s.hangups().is_empty());
    let line_text = spec().transfer_line.clone();
    assert!(s.said("assistant").contains(&line_text));
    let line_frames = line_text.len() * 3;
    let after_line: Vec<i16> = s.heard.iter().filter(|h| h.0 > s.at(8600)).map(|h| h.1).collect();
    assert_eq!(after_line[..line_frames], (1..=line_frames as i16).collect::<Vec<_>>()[..], "the whole line before dialling");
    let line_heard = s.heard.iter().filter(|h| h.0 > s.at(8600)).nth(line_frames - 1).unwrap().0;
    assert!(dialled_at >= line_heard, "dialled before the line was heard");
    // On hold: the caller hears the soft tone while the phone rings, and their words are no turn.
    let dial_ms = (dialled_at - s.t0).as_millis() as u64;
    s.caller_says(dial_ms + 1000, 800, "hello is anyone there");
    s.run(dial_ms + 6000);
    let hold: Vec<_> = s.heard.iter().filter(|h| h.0 > dialled_at).collect();
    assert!(hold.len() >= 100, "hold tone: {} frames", hold.len());
    assert_eq!(s.requests.len(), 1, "no turn while on hold");
    // Answered: the brief (with the form so far), then the agent leaves — no hangup, no <Dial>.
    s.schedule(dial_ms + 6000, Input::Transfer(TransferEvent::Answered));
    s.run(dial_ms + 60_000);
    let brief = s.said("assistant").last().cloned().unwrap();
    assert!(brief.contains("caller for sales") && brief.contains("name: John") && brief.contains("Press any key"), "{brief}");
    assert!(s.interrupts().iter().any(|t| *t >= s.at(dial_ms + 6000)), "the hold tone stops at once");
    let end = s.end.clone().expect("the agent left");
    assert_eq!(end.reason, FinishReason::Transferred);
    assert!(s.hangups().is_empty() && s.transfers().is_empty() && s.transfer_hangups.is_empty());
    let brief_frames = brief.len() * 3;
    let heard_brief = s.heard.iter().filter(|h| h.0 > s.at(dial_ms + 6000)).count();
    assert_eq!(heard_brief, brief_frames, "the whole brief was played before leaving");
}

#[test]
fn a_warm_transfer_nobody_takes_comes_back_to_the_caller() {
    for (ev_at_ms, events) in [
        (3000u64, vec![TransferEvent::Failed { reason: "busy".into() }]),
        // Declined with a key during the brief.
        (3000, vec![TransferEvent::Answered, TransferEvent::Key]),
    ] {
        let mut s = Sim::new(warm_spec());
        ask_for_sales(&mut s);
        s.scripts.push_back(vec![say("What else can I do for you?"), done("stop")]);
        let dial_ms = (s.dials[0].0 - s.t0).as_millis() as u64;
        for (k, ev) in events.iter().enumerate() {
            s.schedule(dial_ms + ev_at_ms + 2000 * k as u64, Input::Transfer(ev.clone()));
        }
        s.run(dial_ms + 20_000);
        let declined = events.contains(&TransferEvent::Key);
        assert_eq!(s.transfer_hangups.len(), declined as usize, "{events:?}: only an answered person's leg is hung up");
        let failed_line = "Sorry, nobody from sales could take the call right now. I am back with you.";
        assert_eq!(s.said("assistant").last().map(String::as_str), Some(failed_line), "{events:?}");
        assert!(s.end.is_none() && s.hangups().is_empty());
        // The caller talks to the agent again, and the model knows the transfer did not happen.
        let t = dial_ms + 20_000;
        s.caller_says(t, 800, "okay then");
        s.run(t + 10_000);
        assert_eq!(s.requests.len(), 2, "{events:?}");
        assert!(s.requests[1].iter().any(|m| m.role == Role::System && m.content.contains("transfer to sales did not happen")), "{:?}", s.requests[1]);
        assert_eq!(s.said("assistant").last().map(String::as_str), Some("What else can I do for you?"));
    }
    // Nobody answers at all: given up after the dial deadline.
    let mut s = Sim::new(warm_spec());
    ask_for_sales(&mut s);
    let dial_ms = (s.dials[0].0 - s.t0).as_millis() as u64;
    s.run(dial_ms + agent::conversation::transfer::DIAL_DEADLINE.as_millis() as u64 + 8000);
    assert!(s.said("assistant").last().unwrap().starts_with("Sorry, nobody from sales"));
    assert_eq!(s.transfer_hangups.len(), 1, "the ringing leg is cancelled");
    assert!(s.end.is_none());
}
