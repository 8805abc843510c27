//! The prompt: the conversation as chat-template turns, the tools described in the system
//! message, the oldest turns trimmed to fit, and special tokens defused.

use super::*;

/// One chat-template message: role (`system`, `user`, `assistant`) and text.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Turn {
    pub(super) role: &'static str,
    pub(super) content: String,
    /// A tool result (rendered as a user turn); trimmed together with the call before it.
    pub(super) tool_result: bool,
}

/// Maps the conversation onto plain system/user/assistant turns: the tools are described in
/// the (first) system message, assistant tool calls are written back as `<tool_call>` blocks
/// and tool results become a user turn of `<tool_response>` blocks (small chat templates know
/// no `tool` role).
pub(super) fn build_turns(messages: &[ChatMessage], tools: &[ToolSpec]) -> Vec<Turn> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut turns: Vec<Turn> = Vec::new();
    for m in messages {
        match m.role {
            Role::System => turns.push(Turn {
                role: "system",
                content: m.content.clone(),
                tool_result: false,
            }),
            Role::User => turns.push(Turn {
                role: "user",
                content: m.content.clone(),
                tool_result: false,
            }),
            Role::Assistant => {
                let mut content = m.content.clone();
                for c in &m.tool_calls {
                    names.insert(c.id.as_str(), c.name.as_str());
                    let args: Value =
                        serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!(c.arguments));
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&format!(
                        "{OPEN_TAG}{}{CLOSE_TAG}",
                        json!({"name": c.name, "arguments": args})
                    ));
                }
                turns.push(Turn {
                    role: "assistant",
                    content,
                    tool_result: false,
                });
            }
            Role::Tool => {
                let name = m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| names.get(id))
                    .copied()
                    .unwrap_or("tool");
                let block = format!(
                    "<tool_response>{}</tool_response>",
                    json!({"name": name, "content": m.content})
                );
                // Results of one round of calls share one turn.
                match turns.last_mut() {
                    Some(t) if t.tool_result => {
                        t.content.push('\n');
                        t.content.push_str(&block);
                    }
                    _ => turns.push(Turn {
                        role: "user",
                        content: block,
                        tool_result: true,
                    }),
                }
            }
        }
    }
    if !tools.is_empty() {
        let text = tools_prompt(tools);
        match turns.iter_mut().find(|t| t.role == "system") {
            Some(sys) if !sys.content.is_empty() => {
                sys.content = format!("{}\n\n{text}", sys.content)
            }
            Some(sys) => sys.content = text,
            None => turns.insert(
                0,
                Turn {
                    role: "system",
                    content: text,
                    tool_result: false,
                },
            ),
        }
    }
    turns
}

/// The tools as one line each, `name(param: type, …): description`, and how to call one, with
/// the first tool as the example (a 135M model follows a concrete example better than a schema).
pub(super) fn tools_prompt(tools: &[ToolSpec]) -> String {
    let params = |t: &ToolSpec| -> Vec<(String, String)> {
        t.parameters
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("any")
                                .to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut s = String::from("You can use these tools:\n");
    for t in tools {
        let sig: Vec<String> = params(t)
            .iter()
            .map(|(k, ty)| format!("{k}: {ty}"))
            .collect();
        s.push_str(&format!(
            "- {}({}): {}\n",
            t.name,
            sig.join(", "),
            t.description
        ));
    }
    let example = &tools[0];
    let args: serde_json::Map<String, Value> = params(example)
        .into_iter()
        .map(|(k, _)| (k, json!("...")))
        .collect();
    s.push_str(&format!(
        "To use a tool, write it like this: {OPEN_TAG}{{\"name\": {}, \"arguments\": {}}}{CLOSE_TAG}\n\
         Otherwise answer in plain, short sentences.",
        json!(example.name),
        Value::Object(args)
    ));
    s
}

/// Drops the oldest non-system turn (and the tool results that answer it). False when
/// nothing but system turns and the last turn is left.
pub(super) fn trim_oldest(turns: &mut Vec<Turn>) -> bool {
    let last = turns.len().saturating_sub(1);
    let Some(i) = turns.iter().position(|t| t.role != "system") else {
        return false;
    };
    if i >= last {
        return false;
    }
    turns.remove(i);
    // Orphaned tool results go with their call (but never the last turn).
    while i < turns.len() - 1 && turns[i].tool_result {
        turns.remove(i);
    }
    true
}

/// ChatML, the format SmolLM2 (and many small models) were tuned on.
pub(super) fn render_chatml(turns: &[(&str, String)]) -> String {
    let mut s = String::new();
    for (role, content) in turns {
        s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

/// Message text must not smuggle in the model's control tokens (the prompt is tokenized with
/// special-token parsing so the template's own markers work): break them up with a zero-width
/// space, and drop NULs.
pub(super) fn defuse(content: &str, specials: &[String]) -> String {
    let mut out = content.replace('\0', "");
    for s in specials {
        if out.contains(s.as_str()) {
            let mut chars = s.chars();
            let first = chars.next().unwrap_or_default();
            out = out.replace(s.as_str(), &format!("{first}\u{200B}{}", chars.as_str()));
        }
    }
    out
}
