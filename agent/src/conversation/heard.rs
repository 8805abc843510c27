//! What the caller heard of an agent utterance, as text.
//!
//! An utterance is spoken sentence by sentence; the playout records where each sentence's audio
//! starts and ends inside it. What was heard is every sentence that ended before `heard_ms`,
//! plus the part of the sentence being spoken proportional to the time heard of it
//! (`(heard_ms - start) / (end - start)` of its characters, cut back to a word boundary). With
//! one sentence this is exactly `heard_ms / total_ms` of the text.

/// A sentence of a reply and where its audio sits in the reply's utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub text: String,
    pub start_ms: u32,
    /// None while its audio is still being pushed.
    pub end_ms: Option<u32>,
}

/// The first `fraction` of `text`, cut back to a word boundary (nothing for < one word).
pub fn text_prefix(text: &str, fraction: f64) -> &str {
    if fraction >= 1.0 {
        return text;
    }
    if fraction <= 0.0 || !fraction.is_finite() {
        return "";
    }
    let chars = text.chars().count();
    let keep = (chars as f64 * fraction).floor() as usize;
    let byte = text
        .char_indices()
        .nth(keep)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    let head = &text[..byte];
    // Keep only whole words: a word is whole when the cut falls on a space or at its end.
    let cut_on_boundary = text[byte..].starts_with(char::is_whitespace) || byte == text.len();
    let head = if cut_on_boundary {
        head
    } else {
        head.rfind(char::is_whitespace).map_or("", |i| &head[..i])
    };
    head.trim_end()
}

/// The brief's rule for one utterance: `heard_ms / total_ms` of the text.
pub fn trim_to_heard(text: &str, heard_ms: u32, total_ms: u32) -> &str {
    if total_ms == 0 {
        return if heard_ms > 0 { text } else { "" };
    }
    text_prefix(text, heard_ms as f64 / total_ms as f64)
}

/// What was heard of a reply made of `segments`, `total_ms` long, after `heard_ms`.
pub fn heard_text(segments: &[Segment], heard_ms: u32, total_ms: u32) -> String {
    let mut out: Vec<&str> = Vec::new();
    for s in segments {
        let end = s.end_ms.unwrap_or(total_ms).max(s.start_ms);
        if heard_ms >= end && end > s.start_ms {
            out.push(s.text.trim());
        } else if heard_ms > s.start_ms {
            let part = text_prefix(
                s.text.trim(),
                (heard_ms - s.start_ms) as f64 / (end - s.start_ms) as f64,
            );
            if !part.is_empty() {
                out.push(part);
            }
            break;
        } else {
            break;
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(text: &str, a: u32, b: u32) -> Segment {
        Segment {
            text: text.into(),
            start_ms: a,
            end_ms: Some(b),
        }
    }

    #[test]
    fn prefix_on_word_boundaries() {
        assert_eq!(text_prefix("hello there world", 1.0), "hello there world");
        assert_eq!(text_prefix("hello there world", 0.0), "");
        assert_eq!(text_prefix("hello there world", 0.5), "hello"); // cut inside "there"
        assert_eq!(text_prefix("hello there world", 0.66), "hello there"); // cut after "there"
        assert_eq!(text_prefix("hello", 0.5), "");
        assert_eq!(trim_to_heard("one two three four", 1000, 2000), "one two");
        assert_eq!(trim_to_heard("héllo wörld", 1, 1), "héllo wörld");
    }

    #[test]
    fn heard_across_sentences() {
        let s = [
            seg("First sentence here.", 0, 1000),
            seg("Second one is longer.", 1300, 2300),
        ];
        assert_eq!(heard_text(&s, 500, 2300), "First");
        assert_eq!(heard_text(&s, 1000, 2300), "First sentence here.");
        assert_eq!(heard_text(&s, 1200, 2300), "First sentence here.");
        assert_eq!(
            heard_text(&s, 1800, 2300),
            "First sentence here. Second one"
        );
        assert_eq!(
            heard_text(&s, 5000, 2300),
            "First sentence here. Second one is longer."
        );
    }
}
