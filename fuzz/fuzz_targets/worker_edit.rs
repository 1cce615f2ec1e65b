//! `edit_file`'s text edits (exact or whitespace-flexible replacement, re-indentation) and its
//! unified diff, on arbitrary text: never panics, never hangs; an exact `oldText` that occurs
//! in the content is replaced once, and the diff of a text with itself has no hunk.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcpd_worker::fuzzing::{apply_edits, unified_diff};

#[derive(Debug, Arbitrary)]
struct Case {
    content: String,
    edits: Vec<(String, String)>,
}

fuzz_target!(|c: Case| {
    if c.content.len() > 16 * 1024 || c.edits.len() > 8 {
        return;
    }
    if let Ok(out) = apply_edits(&c.content, &c.edits) {
        let _ = unified_diff(&c.content, &out, "f.txt");
    }
    if let Some((old, new)) = c.edits.first() {
        if !old.contains('\r') && !new.contains('\r') && c.content.contains(old.as_str()) {
            let single = [(old.clone(), new.clone())];
            assert_eq!(
                apply_edits(&c.content, &single).ok(),
                Some(c.content.replacen(old.as_str(), new, 1))
            );
        }
    }
    assert!(!unified_diff(&c.content, &c.content, "f.txt").contains("@@"));
});
