//! Human-readable units shared by the terminal and HTML outputs, and the escaping of the
//! job's text (kernel names, notes, paths) before it reaches a terminal.

use std::borrow::Cow;
use std::fmt::Write;

/// A character a terminal would act on rather than show: C0 controls (tab and newline too),
/// DEL, C1 controls (U+0080..U+009F: 0x9B is a one-byte CSI) and the bidirectional overrides
/// and isolates (which reorder the text around them on screen).
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

fn push_escaped(o: &mut String, c: char) {
    match c {
        '\n' => o.push_str("\\n"),
        '\t' => o.push_str("\\t"),
        '\r' => o.push_str("\\r"),
        c if (c as u32) < 0x80 => {
            let _ = write!(o, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(o, "\\u{{{:x}}}", c as u32);
        }
    }
}

fn escape_where(s: &str, unsafe_char: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unsafe_char(c) {
            push_escaped(&mut o, c);
        } else {
            o.push(c);
        }
    }
    Cow::Owned(o)
}

/// One field of job-controlled text (a kernel name, a note, a path) made safe for a terminal:
/// every control character, newline and tab included, is written as `\x1b`, `\n`, `\u{9b}`…
/// so a name can neither drive the terminal nor forge a line of the report.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape_where(s, is_unsafe)
}

/// JSON text made safe for a terminal: the characters JSON leaves raw inside strings (DEL, C1
/// controls, bidirectional overrides) written as `\\uXXXX`, which a JSON reader decodes back
/// to the same string. (serde_json already escapes C0 controls; newlines between values stay.)
pub fn escape_json(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c != '\n' && is_unsafe(c) {
            // Every such character is in the Basic Multilingual Plane: one \uXXXX.
            let _ = write!(o, "\\u{:04x}", c as u32);
        } else {
            o.push(c);
        }
    }
    Cow::Owned(o)
}

/// Whole lines of output made safe for a terminal: as [`escape_text`] but newlines are kept.
/// The last guard before stdout/stderr, for whatever text a field-level escape missed.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    escape_where(s, |c| c != '\n' && is_unsafe(c))
}

/// `n` bytes in B, KiB, MiB, GiB or TiB (one decimal above bytes).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn terminal_controls_are_escaped() {
        use super::{escape_lines, escape_text};
        assert_eq!(escape_text("void k<128>(float*)"), "void k<128>(float*)");
        assert!(matches!(escape_text("plain µs"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape_text("a\x1b[2Jb\tc\nd\u{7f}\u{9b}31m\u{202e}"), "a\\x1b[2Jb\\tc\\nd\\x7f\\u{9b}31m\\u{202e}");
        assert_eq!(escape_lines("x\x1b]0;t\x07\ny\n"), "x\\x1b]0;t\\x07\ny\n");
        let json = serde_json::to_string(&vec!["a\x1b[2J\u{7f}\u{9b}31m\u{202e}\n"]).unwrap();
        let safe = super::escape_json(&json);
        assert!(!safe.chars().any(super::is_unsafe), "{safe}");
        let back: Vec<String> = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, ["a\x1b[2J\u{7f}\u{9b}31m\u{202e}\n"], "the same string, read back");
    }
}
