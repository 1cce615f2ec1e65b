//! The glob patterns of `search_files` and `grep` and the exclusion patterns of
//! `directory_tree`/`search_files`, compiled as the worker does (globset, literal separators,
//! backslash escapes), then matched against fuzzer-chosen relative paths. Never panics or
//! hangs; a pattern without `*`, `?`, `[`, `{` or `\` matches exactly itself.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcpd_worker::fuzzing::{exclude_set, glob};

#[derive(Debug, Arbitrary)]
struct Case {
    pattern: String,
    excludes: Vec<String>,
    paths: Vec<String>,
}

fuzz_target!(|c: Case| {
    if c.pattern.len() > 4096 || c.excludes.len() > 16 {
        return;
    }
    let paths: Vec<&str> = c.paths.iter().take(8).map(String::as_str).collect();
    if let Ok(m) = glob(&c.pattern) {
        for p in &paths {
            let _ = m.is_match(p);
        }
        let literal = !c.pattern.contains(['*', '?', '[', '{', '\\', ']', '}']);
        if literal {
            assert!(
                m.is_match(&c.pattern),
                "a literal pattern does not match itself: {:?}",
                c.pattern
            );
        }
    }
    if let Ok(set) = exclude_set(&c.excludes) {
        for p in &paths {
            let hit = set.is_match(p);
            // A plain name is excluded at any depth and everything beneath it.
            for e in &c.excludes {
                if !e.is_empty()
                    && !e.contains(['*', '?', '[', '{', '\\', ']', '}', '/'])
                    && *p == e.as_str()
                {
                    assert!(hit, "{e:?} does not exclude {p:?}");
                }
            }
        }
    }
});
