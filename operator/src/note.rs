//! Event notes. `events.k8s.io/v1` refuses an Event whose note is over 1024 bytes, so one long
//! `lastError` (a drain naming many pods, an agent's message) would lose the whole Event.
//! Every Event the operator and the proxy publish passes its note through [`note`].

/// The API server's `NoteLengthLimit`, in bytes.
pub const NOTE_LIMIT: usize = 1024;

/// Marks a note that was cut.
const CUT: &str = "…";

/// `text` if it fits in [`NOTE_LIMIT`] bytes, else its longest prefix that ends on a UTF-8
/// character boundary and leaves room for `…`, followed by `…`.
pub fn note(text: &str) -> String {
    if text.len() <= NOTE_LIMIT {
        return text.to_string();
    }
    let mut end = NOTE_LIMIT - CUT.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_notes_are_kept() {
        assert_eq!(note("node n1 reached v2"), "node n1 reached v2");
        let exact = "a".repeat(NOTE_LIMIT);
        assert_eq!(note(&exact), exact);
    }

    #[test]
    fn long_notes_are_cut_at_a_character_boundary_and_marked() {
        for filler in ["a", "ü", "€", "😀"] {
            for extra in 0..5 {
                let text = format!("{}{}", "x".repeat(extra), filler.repeat(2000));
                let cut = note(&text);
                assert!(cut.len() <= NOTE_LIMIT, "{filler}: {} bytes", cut.len());
                assert!(cut.len() > NOTE_LIMIT - 4 - CUT.len(), "cut too short");
                assert!(cut.ends_with(CUT));
                assert!(text.starts_with(cut.trim_end_matches(CUT)));
            }
        }
    }
}
