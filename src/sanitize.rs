//! Untrusted text (item names, response bodies, headers) made safe for a terminal.
//!
//! Escape sequences (CSI, OSC, DCS and the like) are removed whole; other C0 and C1 control
//! characters become `�`, except tab, which becomes a space. Newlines are kept only where the
//! caller asks for multi-line text. Unicode's bidirectional controls (which make a terminal
//! draw the rest of a line reversed, "Trojan Source") become `�` too, and zero-width
//! characters are dropped, so what is drawn is what the text says and as wide as it is
//! counted.

/// Strips escape sequences and control characters; newlines become spaces.
pub fn strip_controls(s: &str) -> String {
    clean(s, false)
}

/// Like [`strip_controls`], but keeps `\n` (for bodies shown over several lines).
pub fn strip_controls_multiline(s: &str) -> String {
    clean(s, true)
}

fn clean(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' | '\u{9b}' | '\u{9d}' | '\u{90}' | '\u{9e}' | '\u{9f}' | '\u{98}' => {
                // ESC [ … final byte (CSI), ESC ] … BEL/ST (OSC), ESC P/X/^/_ … ST (strings),
                // or a two-character escape. The C1 forms introduce the same sequences.
                let kind = if c == '\x1b' { chars.next() } else { Some(c) };
                match kind {
                    Some('[') | Some('\u{9b}') => {
                        for d in chars.by_ref() {
                            if ('\x40'..='\x7e').contains(&d) {
                                break;
                            }
                        }
                    }
                    Some(']') | Some('P') | Some('X') | Some('^') | Some('_') | Some('\u{9d}')
                    | Some('\u{90}') | Some('\u{98}') | Some('\u{9e}') | Some('\u{9f}') => {
                        while let Some(d) = chars.next() {
                            if d == '\x07' || d == '\u{9c}' {
                                break;
                            }
                            if d == '\x1b' {
                                if chars.peek() == Some(&'\\') {
                                    chars.next();
                                }
                                break;
                            }
                        }
                    }
                    _ => {}
                }
            }
            '\n' if keep_newlines => out.push('\n'),
            '\t' | '\n' => out.push(' '),
            '\r' => {}
            c if c.is_control() || is_bidi_control(c) => out.push('\u{fffd}'),
            '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}' | '\u{feff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Embeddings, overrides, isolates and directional marks.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_sequences_and_controls() {
        assert_eq!(strip_controls("a\x1b[2Jb"), "ab");
        assert_eq!(strip_controls("x\x1b]52;c;ZXZpbA==\x07y"), "xy");
        assert_eq!(
            strip_controls("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\"),
            "link"
        );
        assert_eq!(strip_controls("a\u{9b}31mb"), "ab");
        assert_eq!(strip_controls("a\u{85}b\x00c"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(strip_controls("a\nb\tc\r"), "a b c");
        assert_eq!(strip_controls_multiline("a\nb"), "a\nb");
        assert_eq!(
            strip_controls("unterminated \x1b]52;c;abc"),
            "unterminated "
        );
    }

    #[test]
    fn bidi_controls_are_shown_and_zero_width_characters_dropped() {
        assert_eq!(
            strip_controls("\u{202e}RTL override\u{200b}\u{301}"),
            "\u{fffd}RTL override\u{301}"
        );
        assert_eq!(
            strip_controls("a\u{2066}b\u{2069}c\u{feff}"),
            "a\u{fffd}b\u{fffd}c"
        );
        assert_eq!(strip_controls("naïve 日本語"), "naïve 日本語");
    }
}
