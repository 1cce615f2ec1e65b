//! The worker's parsers of untrusted tool arguments, for the fuzz targets in `fuzz/` (a
//! separate cargo workspace). Not an API: nothing else may use it.
//!
//! Client paths are fuzzed through the public [`crate::tools::paths::Roots`] directly; this
//! facade adds what the file tools keep private: the glob and exclusion patterns of
//! `search_files`, `grep` and `directory_tree`, and the text edits of `edit_file`.
#![forbid(unsafe_code)]

/// Compile a client glob as `search_files`/`grep` do; `Err` with the message the client sees.
pub fn glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
    crate::tools::fs::for_fuzzing::glob(pattern)
}

/// Build the exclusion set of `directory_tree`/`search_files` from client patterns.
pub fn exclude_set(patterns: &[String]) -> Result<globset::GlobSet, String> {
    crate::tools::fs::for_fuzzing::exclude_set(patterns)
}

/// Apply `edit_file`'s `(oldText, newText)` edits to `content`.
pub fn apply_edits(content: &str, edits: &[(String, String)]) -> Result<String, String> {
    crate::tools::fs::for_fuzzing::apply_edits(content, edits)
}

/// `edit_file`'s unified diff of `old` and `new`.
pub fn unified_diff(old: &str, new: &str, name: &str) -> String {
    crate::tools::fs::for_fuzzing::unified_diff(old, new, name)
}
