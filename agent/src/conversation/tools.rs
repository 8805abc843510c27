//! The tools every agent offers its model, implemented once for both reply engines: a call
//! comes in as (name, JSON arguments) and goes out as the answer for the model plus a typed
//! [`ToolEffect`] the conversation carries out.
//!
//! The model never chooses a phone number: `transfer` takes a destination *name* from the agent
//! file (`[transfers] sales = "+1555…"`), or no argument when the file has the single
//! `transfer_number`. A number, an unknown name or anything else is refused back to the model
//! (toll fraud: "transfer me to +1 900…" must never be dialled).

use serde_json::{json, Value};

use crate::config::{AgentSpec, FieldKind};
use crate::providers::{Fields, ToolSpec};

pub const RECORD_FIELD: &str = "record_field";
pub const END_CALL: &str = "end_call";
pub const TRANSFER: &str = "transfer";
pub const PRESS_KEYS: &str = "press_keys";
/// Most keys in one `press_keys` call (the bridge queues at most 64 presses).
pub const MAX_KEYS: usize = 32;
/// Longest form value kept (characters).
pub const MAX_VALUE_CHARS: usize = 200;

/// What a tool call does to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEffect {
    /// Nothing (refused).
    None,
    FieldRecorded { field: String, value: String },
    /// Say `goodbye` (or the agent file's closing line), then hang up.
    EndCall { goodbye: Option<String> },
    /// Say the transfer line, then hand the call to `number` (configured as `destination`).
    Transfer { destination: String, number: String },
    /// Put the caller on hold, dial the person at `number` (configured as `destination`, warm)
    /// into the room, brief them, then leave the two together.
    WarmTransfer { destination: String, number: String },
    /// Press these keys on the far end's line (validated: 0-9 * # A-D, at most [`MAX_KEYS`]).
    PressKeys { keys: String },
}

/// Why a tool call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownTool,
    BadArguments,
    UnknownField,
    EmptyValue,
    ValueTooLong,
    NotAChoice,
    NoTransfer,
    UnknownDestination,
    NumberNotAllowed,
    BadKeys,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownTool => "unknown_tool",
            Refusal::BadArguments => "bad_arguments",
            Refusal::UnknownField => "unknown_field",
            Refusal::EmptyValue => "empty_value",
            Refusal::ValueTooLong => "value_too_long",
            Refusal::NotAChoice => "not_a_choice",
            Refusal::NoTransfer => "no_transfer",
            Refusal::UnknownDestination => "unknown_destination",
            Refusal::NumberNotAllowed => "number_not_allowed",
            Refusal::BadKeys => "bad_keys",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The answer the model gets.
    pub output: String,
    pub effect: ToolEffect,
    pub refused: Option<Refusal>,
}

fn refuse(why: Refusal, output: String) -> ToolResult {
    ToolResult { output: format!("error: {output}"), effect: ToolEffect::None, refused: Some(why) }
}

/// The tools of an agent, with its form's fields and transfer destinations in their schemas.
pub fn specs(spec: &AgentSpec) -> Vec<ToolSpec> {
    let names: Vec<&str> = spec.fields.iter().map(|f| f.name.as_str()).collect();
    let mut tools = vec![
        ToolSpec {
            name: RECORD_FIELD.into(),
            description: "Record one field of the form as soon as the caller gives it.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"field": {"type": "string", "enum": names}, "value": {"type": "string"}},
                "required": ["field", "value"]
            }),
        },
        ToolSpec {
            name: END_CALL.into(),
            description: "Say a last message and hang up (when the form is complete or the caller says goodbye).".into(),
            parameters: json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}),
        },
    ];
    let targets = spec.transfer_targets();
    if !targets.is_empty() {
        let parameters = if spec.transfers.is_empty() {
            json!({"type": "object", "properties": {}})
        } else {
            let dests: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
            json!({"type": "object",
                   "properties": {"destination": {"type": "string", "enum": dests, "description": "Who to transfer to."}},
                   "required": ["destination"]})
        };
        tools.push(ToolSpec {
            name: TRANSFER.into(),
            description: "Transfer the caller to a person (by destination name, never a number).".into(),
            parameters,
        });
    }
    if spec.outbound.press_keys {
        tools.push(ToolSpec {
            name: PRESS_KEYS.into(),
            description: "Press keys on the phone keypad, as in an automated menu (\"press 1 for sales\").".into(),
            parameters: json!({"type": "object",
                "properties": {"keys": {"type": "string", "pattern": "^[0-9*#A-Da-d]{1,32}$", "description": "The keys in order: 0-9, *, #, A-D."}},
                "required": ["keys"]}),
        });
    }
    tools
}

/// The system prompt: persona plus the form (no phone numbers: the model never needs one).
pub fn system_prompt(spec: &AgentSpec) -> String {
    let mut s = spec.persona.trim().to_string();
    s.push_str("\n\nFields to collect (call record_field for each):\n");
    for f in &spec.fields {
        let desc = if f.description.is_empty() { &f.question } else { &f.description };
        s.push_str(&format!("- {}: {} (ask: \"{}\")\n", f.name, desc, f.question));
    }
    if !spec.transfers.is_empty() {
        let names: Vec<&str> = spec.transfers.keys().map(String::as_str).collect();
        s.push_str(&format!("Transfer destinations: {}\n", names.join(", ")));
    }
    s.push_str(&format!("When every field is recorded, call end_call with: \"{}\"\n", spec.closing));
    s
}

/// Carries out one tool call against the form so far (`fields` is not changed: the effect says
/// what to record).
pub fn apply(spec: &AgentSpec, fields: &Fields, name: &str, arguments: &str) -> ToolResult {
    let args: Value = match serde_json::from_str(arguments) {
        Ok(v @ Value::Object(_)) => v,
        Ok(Value::Null) | Err(_) if arguments.trim().is_empty() => json!({}),
        _ => return refuse(Refusal::BadArguments, "arguments must be a JSON object".into()),
    };
    match name {
        RECORD_FIELD => record_field(spec, fields, &args),
        END_CALL => {
            let goodbye = args["message"].as_str().map(str::trim).filter(|m| !m.is_empty()).map(str::to_string);
            ToolResult { output: "ok: say goodbye; the call ends after it".into(), effect: ToolEffect::EndCall { goodbye }, refused: None }
        }
        TRANSFER => transfer(spec, &args),
        PRESS_KEYS if spec.outbound.press_keys => press_keys(&args),
        other => refuse(Refusal::UnknownTool, format!("no tool {other:?}")),
    }
}

fn record_field(spec: &AgentSpec, fields: &Fields, args: &Value) -> ToolResult {
    let field = args["field"].as_str().unwrap_or_default();
    let Some(f) = spec.field(field) else {
        return refuse(Refusal::UnknownField, format!("unknown field {field:?}"));
    };
    let mut value = args["value"].as_str().unwrap_or_default().trim().to_string();
    if value.is_empty() {
        return refuse(Refusal::EmptyValue, format!("empty value for {field}"));
    }
    if value.chars().count() > MAX_VALUE_CHARS {
        return refuse(Refusal::ValueTooLong, format!("value for {field} is longer than {MAX_VALUE_CHARS} characters"));
    }
    if f.kind == FieldKind::Choice {
        match f.choices.keys().find(|c| c.eq_ignore_ascii_case(&value)) {
            Some(c) => value = c.clone(),
            None => {
                let choices: Vec<&str> = f.choices.keys().map(String::as_str).collect();
                return refuse(Refusal::NotAChoice, format!("{field} must be one of: {}", choices.join(", ")));
            }
        }
    }
    let missing: Vec<&str> = spec
        .fields
        .iter()
        .filter(|g| g.name != f.name && !fields.contains_key(&g.name))
        .map(|g| g.name.as_str())
        .collect();
    let output = format!("recorded; still missing: {}", if missing.is_empty() { "nothing".into() } else { missing.join(", ") });
    ToolResult { output, effect: ToolEffect::FieldRecorded { field: f.name.clone(), value }, refused: None }
}

fn transfer(spec: &AgentSpec, args: &Value) -> ToolResult {
    let targets = spec.transfer_targets();
    if targets.is_empty() {
        return refuse(Refusal::NoTransfer, "no transfer is configured for this line".into());
    }
    let obj = args.as_object().cloned().unwrap_or_default();
    if obj.keys().any(|k| k != "destination") {
        return refuse(Refusal::NumberNotAllowed, "transfer takes only a destination name, never a number".into());
    }
    let asked = obj.get("destination").and_then(Value::as_str).map(str::trim).unwrap_or("");
    let found = if spec.transfers.is_empty() {
        // The single configured number: no destination to choose.
        asked.is_empty().then(|| targets[0].clone())
    } else {
        targets.iter().find(|(n, _)| n.eq_ignore_ascii_case(asked)).cloned()
    };
    match found {
        Some((destination, number)) if spec.is_warm_transfer(&destination) => ToolResult {
            output: format!("ok: the caller is put on hold while {destination} is called"),
            effect: ToolEffect::WarmTransfer { destination, number },
            refused: None,
        },
        Some((destination, number)) => ToolResult {
            output: format!("ok: transferring to {destination} after the transfer line"),
            effect: ToolEffect::Transfer { destination, number },
            refused: None,
        },
        None => {
            let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
            let choose = if spec.transfers.is_empty() { "call transfer without arguments".to_string() } else { format!("choose one of: {}", names.join(", ")) };
            refuse(Refusal::UnknownDestination, format!("unknown destination; {choose}"))
        }
    }
}

fn press_keys(args: &Value) -> ToolResult {
    let asked = args["keys"].as_str().unwrap_or_default();
    // Spaces and dashes are how people write key sequences ("1 2 #"); anything else is refused.
    let keys: Result<String, _> = asked.chars().filter(|c| !matches!(c, ' ' | '-' | ',')).map(proto::dtmf::key).collect();
    match keys {
        Ok(k) if k.is_empty() => refuse(Refusal::BadKeys, "no keys given".into()),
        Ok(k) if k.len() > MAX_KEYS => refuse(Refusal::BadKeys, format!("at most {MAX_KEYS} keys at a time")),
        Ok(keys) => ToolResult { output: format!("ok: pressed {} keys", keys.len()), effect: ToolEffect::PressKeys { keys }, refused: None },
        Err(_) => refuse(Refusal::BadKeys, "keys are 0-9, *, # and A-D only".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in agent with `extra` instead of its transfer number (tables go at the end).
    fn spec(extra: &str) -> AgentSpec {
        let (top, tables) = if extra.starts_with('[') { ("", extra) } else { (extra, "") };
        let base = crate::config::DEFAULT_AGENT_TOML.replace("transfer_number = \"+15550100200\"\n", top);
        AgentSpec::from_toml(&format!("{base}\n{tables}"), "test").unwrap()
    }

    #[test]
    fn record_field_checks_the_form() {
        let s = spec("");
        let f = Fields::new();
        let r = apply(&s, &f, RECORD_FIELD, r#"{"field":"name","value":" Ada "}"#);
        assert_eq!(r.effect, ToolEffect::FieldRecorded { field: "name".into(), value: "Ada".into() });
        assert!(r.output.starts_with("recorded; still missing: location"), "{}", r.output);
        assert_eq!(apply(&s, &f, RECORD_FIELD, r#"{"field":"shoe","value":"9"}"#).refused, Some(Refusal::UnknownField));
        assert_eq!(apply(&s, &f, RECORD_FIELD, r#"{"field":"name","value":""}"#).refused, Some(Refusal::EmptyValue));
        let long = format!(r#"{{"field":"name","value":"{}"}}"#, "x".repeat(201));
        assert_eq!(apply(&s, &f, RECORD_FIELD, &long).refused, Some(Refusal::ValueTooLong));
        let r = apply(&s, &f, RECORD_FIELD, r#"{"field":"severity","value":"Critical"}"#);
        assert_eq!(r.effect, ToolEffect::FieldRecorded { field: "severity".into(), value: "critical".into() });
        assert_eq!(apply(&s, &f, RECORD_FIELD, r#"{"field":"severity","value":"meh"}"#).refused, Some(Refusal::NotAChoice));
        assert_eq!(apply(&s, &f, RECORD_FIELD, "[1]").refused, Some(Refusal::BadArguments));
        assert_eq!(apply(&s, &f, "format_disk", "{}").refused, Some(Refusal::UnknownTool));
    }

    #[test]
    fn transfer_goes_only_to_named_destinations() {
        let s = spec("[transfers]\nsales = \"+15550100201\"\nsupport = \"+15550100202\"\n");
        let names: Vec<String> = specs(&s).into_iter().map(|t| t.name).collect();
        assert_eq!(names, [RECORD_FIELD, END_CALL, TRANSFER]);
        let r = apply(&s, &Fields::new(), TRANSFER, r#"{"destination":"Sales"}"#);
        assert_eq!(r.effect, ToolEffect::Transfer { destination: "sales".into(), number: "+15550100201".into() });
        // A number from the caller or the model is never dialled, whatever it is called.
        for bad in [
            r#"{"destination":"+19005550100"}"#,
            r#"{"number":"+19005550100"}"#,
            r#"{"destination":"sales","number":"+19005550100"}"#,
            r#"{"to":"+15550100201"}"#,
            r#"{}"#,
        ] {
            let r = apply(&s, &Fields::new(), TRANSFER, bad);
            assert_eq!(r.effect, ToolEffect::None, "{bad}");
            assert!(r.output.starts_with("error:"), "{bad}");
        }
        assert!(!system_prompt(&s).contains("+1555"), "no number in the prompt");
    }

    #[test]
    fn a_warm_destination_is_a_warm_transfer_and_the_plain_form_stays_cold() {
        let s = spec("[transfers]\nbilling = \"+15550100203\"\n[transfers.sales]\nnumber = \"+15550100201\"\nwarm = true\n");
        let r = apply(&s, &Fields::new(), TRANSFER, r#"{"destination":"sales"}"#);
        assert_eq!(r.effect, ToolEffect::WarmTransfer { destination: "sales".into(), number: "+15550100201".into() });
        let r = apply(&s, &Fields::new(), TRANSFER, r#"{"destination":"billing"}"#);
        assert_eq!(r.effect, ToolEffect::Transfer { destination: "billing".into(), number: "+15550100203".into() });
        assert!(crate::config::AgentSpec::from_toml(&format!("{}\n[transfers.x]\nnumber = \"+1900\"\nwarm = true\n", crate::config::DEFAULT_AGENT_TOML.replace("transfer_number = \"+15550100200\"\n", "")), "x").is_err());
    }

    #[test]
    fn the_single_configured_number_needs_no_argument() {
        let s = spec("transfer_number = \"+15550100200\"\n");
        let t = specs(&s).into_iter().find(|t| t.name == TRANSFER).unwrap();
        assert_eq!(t.parameters["properties"], json!({}));
        let r = apply(&s, &Fields::new(), TRANSFER, "{}");
        assert_eq!(r.effect, ToolEffect::Transfer { destination: "default".into(), number: "+15550100200".into() });
        assert_eq!(apply(&s, &Fields::new(), TRANSFER, "").refused, None);
        assert_eq!(apply(&s, &Fields::new(), TRANSFER, r#"{"number":"+15550100200"}"#).refused, Some(Refusal::NumberNotAllowed));
        assert_eq!(apply(&s, &Fields::new(), TRANSFER, r#"{"destination":"+19005550100"}"#).refused, Some(Refusal::UnknownDestination));
        // Nothing configured: no tool, and a call anyway is refused.
        let none = spec("");
        assert!(specs(&none).iter().all(|t| t.name != TRANSFER));
        assert_eq!(apply(&none, &Fields::new(), TRANSFER, "{}").refused, Some(Refusal::NoTransfer));
    }

    #[test]
    fn press_keys_takes_keypad_keys_only_and_only_when_configured() {
        let off = spec("");
        assert!(specs(&off).iter().all(|t| t.name != PRESS_KEYS));
        assert_eq!(apply(&off, &Fields::new(), PRESS_KEYS, r#"{"keys":"1"}"#).refused, Some(Refusal::UnknownTool));
        let s = spec("[outbound]\npress_keys = true\n");
        assert!(specs(&s).iter().any(|t| t.name == PRESS_KEYS));
        let r = apply(&s, &Fields::new(), PRESS_KEYS, r#"{"keys":"1 2-3,#*0d"}"#);
        assert_eq!(r.effect, ToolEffect::PressKeys { keys: "123#*0D".into() });
        assert_eq!(r.output, "ok: pressed 7 keys");
        for bad in [r#"{"keys":""}"#, r#"{"keys":"12e"}"#, r#"{"keys":"+1555"}"#, r#"{"keys":5}"#, r#"{}"#, r#"{"keys":"１"}"#] {
            let r = apply(&s, &Fields::new(), PRESS_KEYS, bad);
            assert_eq!((r.effect, r.refused), (ToolEffect::None, Some(Refusal::BadKeys)), "{bad}");
        }
        let long = format!(r#"{{"keys":"{}"}}"#, "1".repeat(MAX_KEYS + 1));
        assert_eq!(apply(&s, &Fields::new(), PRESS_KEYS, &long).refused, Some(Refusal::BadKeys));
        let max = format!(r#"{{"keys":"{}"}}"#, "1".repeat(MAX_KEYS));
        assert_eq!(apply(&s, &Fields::new(), PRESS_KEYS, &max).refused, None);
    }

    #[test]
    fn end_call_carries_the_goodbye() {
        let s = spec("");
        let r = apply(&s, &Fields::new(), END_CALL, r#"{"message":" Bye now. "}"#);
        assert_eq!(r.effect, ToolEffect::EndCall { goodbye: Some("Bye now.".into()) });
        assert_eq!(apply(&s, &Fields::new(), END_CALL, "{}").effect, ToolEffect::EndCall { goodbye: None });
    }
}
