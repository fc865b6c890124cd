//! Text that came from the network (AWS error messages and codes, request IDs, response bodies)
//! on its way into a log line or the termination log.
//!
//! An answer can carry a newline (a fake second log line), an ESC sequence (a terminal that
//! rewrites what the operator sees) or a bidirectional override; it can also be long. Everything
//! quoted from an answer goes through [`untrusted`] first.

/// The most characters of one quoted piece of network text.
pub const MAX_QUOTED_CHARS: usize = 512;

/// `text` with every control and bidirectional-formatting character escaped (`\n`, `\r`, `\t`,
/// `\u{1b}`, ...), cut to `max_chars` characters with `...` appended when longer.
pub fn untrusted(text: &str, max_chars: usize) -> String {
    let mut escaped = String::with_capacity(text.len().min(max_chars + 8));
    for (count, c) in text.chars().enumerate() {
        if count == max_chars {
            escaped.push_str("...");
            break;
        }
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_control() || is_bidi_or_invisible_format(c) => {
                escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => escaped.push(c),
        }
    }
    escaped
}

/// [`untrusted`] with the usual length limit.
pub fn quoted(text: &str) -> String {
    untrusted(text, MAX_QUOTED_CHARS)
}

/// Format characters that reorder or hide text on screen (zero-width marks, bidi embeddings,
/// overrides and isolates).
fn is_bidi_or_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_line_breaks_escape_sequences_and_bidi_overrides() {
        assert_eq!(
            quoted("denied\n2026-11-23T00:00:00Z  INFO entitled"),
            "denied\\n2026-11-23T00:00:00Z  INFO entitled"
        );
        assert_eq!(quoted("a\r\tb"), "a\\r\\tb");
        assert_eq!(quoted("\u{1b}[2Jcleared"), "\\u{1b}[2Jcleared");
        assert_eq!(quoted("\u{7f}\u{85}"), "\\u{7f}\\u{85}");
        assert_eq!(quoted("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(quoted("plain text, ünïcode ok"), "plain text, ünïcode ok");
    }

    #[test]
    fn cuts_long_text_on_a_character_boundary() {
        assert_eq!(untrusted("abcdef", 3), "abc...");
        assert_eq!(untrusted("ééééé", 2), "éé...");
        assert_eq!(untrusted("abc", 3), "abc");
        assert_eq!(quoted(&"x".repeat(10_000)).len(), MAX_QUOTED_CHARS + 3);
    }
}
