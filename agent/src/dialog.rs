//! The rule-based dialog behind the offline "LLM" ([`crate::providers::rules_llm`]): intent
//! spotting and form filling, driven entirely by the agent file. Pure functions over the
//! conversation so far, so the same history the cloud LLMs get is all it needs.
//!
//! One caller turn in, one [`Reply`] out: the fields it could extract (→ `record_field` tool
//! calls), what to say, and whether to end or transfer the call.

use crate::config::{AgentSpec, FieldKind, FieldSpec};
use crate::providers::{ChatMessage, Fields, Role};

/// What the dialog decided for one caller turn.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// (field, value) pairs to record, in order.
    pub record: Vec<(String, String)>,
    /// What to say now (may be empty when `end_call` carries the words).
    pub say: String,
    /// End the call after saying this message.
    pub end_call: Option<String>,
    /// Transfer to this destination (a name from the agent file; the transfer line is said by
    /// the conversation, not here).
    pub transfer: Option<String>,
}

/// Lower case, letters/digits/apostrophes only, single spaces.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = true;
    for c in text.chars() {
        if c.is_alphanumeric() || c == '\'' {
            out.extend(c.to_lowercase());
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    out.trim_end().to_string()
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// Does `phrase` (normalized) occur in `text` (normalized) on word boundaries? Returns the word
/// index just after it.
fn find_phrase(text: &[&str], phrase: &str) -> Option<(usize, usize)> {
    let p = words(phrase);
    if p.is_empty() || p.len() > text.len() {
        return None;
    }
    (0..=text.len() - p.len())
        .find(|&i| text[i..i + p.len()] == p[..])
        .map(|i| (i, i + p.len()))
}

const FILLERS: [&str; 12] = [
    "uh", "um", "er", "erm", "well", "so", "yes", "yeah", "okay", "ok", "oh", "hmm",
];
const NAME_STOP: [&str; 12] = [
    "and", "i", "from", "at", "calling", "here", "speaking", "to", "with", "the", "about", "please",
];

fn title_case(ws: &[&str]) -> String {
    ws.iter()
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn strip_fillers<'a>(mut ws: &'a [&'a str]) -> &'a [&'a str] {
    while let Some((first, rest)) = ws.split_first() {
        if FILLERS.contains(first) {
            ws = rest;
        } else {
            break;
        }
    }
    ws
}

/// Extract `field` from the caller's words. `asked`: the agent just asked for this field, so a
/// bare answer counts.
pub fn extract(field: &FieldSpec, text: &str, asked: bool) -> Option<String> {
    let norm = normalize(text);
    let ws = words(&norm);
    if ws.is_empty() {
        return None;
    }
    match field.kind {
        FieldKind::Choice => {
            let cued = asked
                || field
                    .cues
                    .iter()
                    .any(|c| find_phrase(&ws, &normalize(c)).is_some());
            if !cued {
                return None;
            }
            // Longest matching synonym wins ("not serious" over "serious").
            let mut best: Option<(usize, &str)> = None;
            for (value, syns) in &field.choices {
                for s in std::iter::once(value).chain(syns.iter()) {
                    let s = normalize(s);
                    if find_phrase(&ws, &s).is_some() {
                        let n = words(&s).len();
                        if best.is_none_or(|(m, _)| n > m) {
                            best = Some((n, value.as_str()));
                        }
                    }
                }
            }
            best.map(|(_, v)| v.to_string())
        }
        FieldKind::Name | FieldKind::Text => {
            // An explicit phrase: take what follows it (longest phrase first).
            let mut afters: Vec<String> = field.after.iter().map(|a| normalize(a)).collect();
            afters.sort_by_key(|a| std::cmp::Reverse(a.len()));
            let mut value: Option<Vec<&str>> = None;
            for a in &afters {
                if let Some((_, end)) = find_phrase(&ws, a) {
                    if end < ws.len() {
                        // For text fields keep the phrase's own content words ("in the" lobby
                        // loses nothing useful, "there was" a fire keeps "a fire").
                        value = Some(ws[end..].to_vec());
                        break;
                    }
                }
            }
            if value.is_none()
                && asked
                && field.kind == FieldKind::Name
                && !field.vocabulary.is_empty()
            {
                // Extraction hint: known names in the answer (robust to a misheard "my name is").
                let vocab: Vec<String> = field.vocabulary.iter().map(|v| normalize(v)).collect();
                let known: Vec<&str> = ws
                    .iter()
                    .copied()
                    .filter(|w| vocab.iter().any(|v| v == w))
                    .collect();
                if !known.is_empty() {
                    value = Some(known);
                }
            }
            if value.is_none() && asked {
                value = Some(strip_fillers(&ws).to_vec());
            }
            let mut v = value?;
            if field.kind == FieldKind::Name {
                if let Some(stop) = v.iter().position(|w| NAME_STOP.contains(w)) {
                    v.truncate(stop);
                }
                // A bare answer longer than a name is not a name.
                if v.len() > field.max_words {
                    return None;
                }
            }
            v.truncate(field.max_words);
            if v.is_empty() {
                return None;
            }
            Some(if field.kind == FieldKind::Name {
                title_case(&v)
            } else {
                v.join(" ")
            })
        }
    }
}

/// Matches one of the intent phrases.
fn has_any(text: &str, phrases: &[String]) -> bool {
    let norm = normalize(text);
    let ws = words(&norm);
    phrases
        .iter()
        .any(|p| find_phrase(&ws, &normalize(p)).is_some())
}

/// What the conversation so far says: fields recorded (from `record_field` tool calls) and the
/// field the agent asked last (from its last words).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub fields: Fields,
    pub asked: Option<String>,
    /// Consecutive turns in which the asked field was not understood.
    pub misses: u32,
    pub last_question: Option<String>,
}

pub fn state_from_history(spec: &AgentSpec, messages: &[ChatMessage]) -> State {
    let mut st = State::default();
    for m in messages {
        if m.role != Role::Assistant {
            continue;
        }
        let mut recorded_now = false;
        for tc in &m.tool_calls {
            if tc.name == "record_field" {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&tc.arguments) {
                    if let (Some(f), Some(val)) = (v["field"].as_str(), v["value"].as_str()) {
                        st.fields.insert(f.to_string(), val.to_string());
                        recorded_now = true;
                    }
                }
            }
        }
        if !m.content.is_empty() {
            let asked = spec
                .fields
                .iter()
                .find(|f| m.content.contains(f.question.as_str()))
                .map(|f| f.name.clone());
            let reprompt = m.content.starts_with(spec.reprompt.as_str());
            if reprompt && asked.is_some() && asked == st.asked && !recorded_now {
                st.misses += 1;
            } else {
                st.misses = 0;
            }
            if asked.is_some() {
                st.last_question = spec
                    .field(asked.as_deref().unwrap_or_default())
                    .map(|f| f.question.clone());
            }
            st.asked = asked;
        }
    }
    st
}

/// The first field not yet recorded.
pub fn next_missing<'a>(spec: &'a AgentSpec, fields: &Fields) -> Option<&'a FieldSpec> {
    spec.fields.iter().find(|f| !fields.contains_key(&f.name))
}

/// Decide the reply to the caller's `text`, given the conversation `state`.
pub fn respond(spec: &AgentSpec, state: &State, text: &str) -> Reply {
    let mut reply = Reply::default();
    if has_any(text, &spec.intents.transfer) {
        if let Some((destination, _)) = spec.transfer_targets().into_iter().next() {
            reply.transfer = Some(destination);
            return reply;
        }
    }
    if has_any(text, &spec.intents.goodbye) {
        reply.end_call = Some(spec.closing.clone());
        return reply;
    }
    if has_any(text, &spec.intents.repeat) {
        reply.say = state
            .last_question
            .clone()
            .or_else(|| next_missing(spec, &state.fields).map(|f| f.question.clone()))
            .unwrap_or_else(|| spec.closing.clone());
        return reply;
    }

    let mut fields = state.fields.clone();
    let asked = state
        .asked
        .clone()
        .or_else(|| next_missing(spec, &fields).map(|f| f.name.clone()));
    let mut ack = String::new();
    // The asked field first (a bare answer counts), then any other field said explicitly.
    let mut order: Vec<&FieldSpec> = Vec::new();
    if let Some(f) = asked.as_deref().and_then(|n| spec.field(n)) {
        order.push(f);
    }
    order.extend(
        spec.fields
            .iter()
            .filter(|f| Some(f.name.as_str()) != asked.as_deref()),
    );
    for f in order {
        let is_asked = Some(f.name.as_str()) == asked.as_deref();
        if fields.contains_key(&f.name) && !is_asked {
            continue;
        }
        if let Some(v) = extract(f, text, is_asked) {
            if is_asked {
                if let Some(a) = &f.ack {
                    ack = a.replace("{value}", &v);
                }
            }
            fields.insert(f.name.clone(), v.clone());
            reply.record.push((f.name.clone(), v));
        }
    }
    let understood_asked = asked
        .as_deref()
        .is_some_and(|a| reply.record.iter().any(|(n, _)| n == a));
    match next_missing(spec, &fields) {
        None => {
            reply.say = ack;
            reply.end_call = Some(spec.closing.clone());
        }
        Some(next) => {
            let mut say = String::new();
            if !understood_asked && reply.record.is_empty() {
                say.push_str(&spec.reprompt);
                say.push(' ');
            } else if !ack.is_empty() {
                say.push_str(&ack);
                say.push(' ');
            }
            say.push_str(&next.question);
            reply.say = say;
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentSpec {
        AgentSpec::load(None).unwrap()
    }

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize("  My name's JOHN, thanks!"),
            "my name's john thanks"
        );
    }

    #[test]
    fn extracts_names_and_choices() {
        let s = spec();
        let name = s.field("name").unwrap();
        assert_eq!(
            extract(name, "my name is john smith", true).as_deref(),
            Some("John Smith")
        );
        assert_eq!(extract(name, "uh john", true).as_deref(), Some("John"));
        assert_eq!(
            extract(name, "there was a fire in the kitchen today", true),
            None
        );
        // Misheard lead-in, known name: the vocabulary hint still finds it.
        assert_eq!(
            extract(name, "my you is john", true).as_deref(),
            Some("John")
        );
        assert_eq!(extract(name, "hello there", false), None);
        let sev = s.field("severity").unwrap();
        assert_eq!(
            extract(sev, "it's not serious", true).as_deref(),
            Some("low")
        );
        assert_eq!(
            extract(sev, "it is critical", true).as_deref(),
            Some("critical")
        );
        assert_eq!(extract(sev, "it is critical", false), None);
        assert_eq!(
            extract(sev, "the severity is high", false).as_deref(),
            Some("high")
        );
        let loc = s.field("location").unwrap();
        assert_eq!(
            extract(loc, "it happened at the main office", true).as_deref(),
            Some("the main office")
        );
        assert_eq!(
            extract(loc, "warehouse", true).as_deref(),
            Some("warehouse")
        );
    }
}
