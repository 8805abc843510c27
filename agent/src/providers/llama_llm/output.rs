//! Streamed output: token bytes to UTF-8 text, and `<tool_call>` blocks cut out of it.

use super::*;

/// Token bytes to text: holds back an incomplete UTF-8 sequence until the next token
/// completes it; invalid bytes become U+FFFD.
#[derive(Default)]
pub(super) struct Utf8Stream {
    pub(super) pending: Vec<u8>,
}

impl Utf8Stream {
    pub(super) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // Valid prefix is UTF-8 by construction.
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    pub(super) fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// What [`ToolTagParser`] cuts streamed text into.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    /// Text to speak.
    Text(String),
    /// The inside of a `<tool_call>` block; `closed` false when the reply ended inside it.
    Call { body: String, closed: bool },
}

/// Splits streamed text into speakable text and `<tool_call>…</tool_call>` blocks. Text that
/// might be the start of a tag (`<`, `<tool`…) is held back until it is known not to be.
#[derive(Default)]
pub(super) struct ToolTagParser {
    pub(super) buf: String,
    pub(super) inside: bool,
}

impl ToolTagParser {
    pub(super) fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.inside {
                let Some(i) = self.buf.find(CLOSE_TAG) else {
                    break;
                };
                let body = self.buf[..i].to_string();
                self.buf.drain(..i + CLOSE_TAG.len());
                self.inside = false;
                out.push(Piece::Call { body, closed: true });
            } else if let Some(i) = self.buf.find(OPEN_TAG) {
                if i > 0 {
                    out.push(Piece::Text(self.buf[..i].to_string()));
                }
                self.buf.drain(..i + OPEN_TAG.len());
                self.inside = true;
            } else {
                // Keep a tail that could still grow into "<tool_call>".
                let keep = (1..OPEN_TAG.len())
                    .rev()
                    .find(|&k| self.buf.ends_with(&OPEN_TAG[..k]))
                    .unwrap_or(0);
                let cut = self.buf.len() - keep;
                if cut > 0 {
                    out.push(Piece::Text(self.buf[..cut].to_string()));
                    self.buf.drain(..cut);
                }
                break;
            }
        }
        out
    }

    /// End of the reply: a held-back partial tag was plain text; an open block is returned
    /// unclosed.
    pub(super) fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        if std::mem::take(&mut self.inside) {
            vec![Piece::Call {
                body: rest,
                closed: false,
            }]
        } else if rest.is_empty() {
            Vec::new()
        } else {
            vec![Piece::Text(rest)]
        }
    }
}

/// `{"name": …, "arguments": {…}}` (a JSON-string `arguments` or a `parameters` key are
/// accepted too) → (name, arguments JSON text). The name must be one of `tools`.
pub(super) fn parse_tool_call(body: &str, tools: &[String]) -> Result<(String, String), String> {
    let v: Value = serde_json::from_str(body.trim()).map_err(|e| format!("malformed JSON: {e}"))?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| "no \"name\" string".to_string())?
        .to_string();
    if !tools.iter().any(|t| *t == name) {
        return Err(format!("tool {name:?} was not offered"));
    }
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(a @ Value::Object(_)) => a.to_string(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(a @ Value::Object(_)) => a.to_string(),
            _ => return Err("\"arguments\" is a string that is not a JSON object".into()),
        },
        Some(_) => return Err("\"arguments\" is not an object".into()),
    };
    Ok((name, arguments))
}
