//! `edit_file`: exact or whitespace-flexible text replacements, applied like the reference
//! server, and the unified diff it returns (`dryRun` only shows it). Trusts `Roots` for the
//! read and the write; the file's contents and the edits are untrusted text.

use serde::Deserialize;
use serde_json::Value;

use super::read::{read_limited, too_large};
use super::{parse, text, Fail, Outcome, DIFF_CONTEXT};
use crate::tools::paths::Access;
use crate::tools::ToolContext;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Edit {
    pub(super) old_text: String,
    pub(super) new_text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct EditArgs {
    path: String,
    edits: Vec<Edit>,
    #[serde(default)]
    dry_run: bool,
}

pub(super) fn leading_ws(s: &str) -> &str {
    &s[..s.len() - s.trim_start().len()]
}

/// Apply the edits in order, as the reference does: an exact (first) occurrence, else a
/// window of lines equal after trimming, re-indented to the first matched line.
pub(super) fn apply_edits(content: &str, edits: &[Edit]) -> Result<String, String> {
    let mut modified = content.to_owned();
    for edit in edits {
        let old = edit.old_text.replace("\r\n", "\n");
        let new = edit.new_text.replace("\r\n", "\n");
        if modified.contains(&old) {
            modified = modified.replacen(&old, &new, 1);
            continue;
        }
        let old_lines: Vec<&str> = old.split('\n').collect();
        let mut content_lines: Vec<String> = modified.split('\n').map(String::from).collect();
        let mut found = false;
        if old_lines.len() <= content_lines.len() {
            for i in 0..=(content_lines.len() - old_lines.len()) {
                let window = &content_lines[i..i + old_lines.len()];
                if !old_lines
                    .iter()
                    .zip(window)
                    .all(|(o, c)| o.trim() == c.trim())
                {
                    continue;
                }
                let original_indent = leading_ws(&content_lines[i]).to_owned();
                let new_lines: Vec<String> = new
                    .split('\n')
                    .enumerate()
                    .map(|(j, line)| {
                        if j == 0 {
                            return format!("{original_indent}{}", line.trim_start());
                        }
                        let old_indent = old_lines.get(j).map(|l| leading_ws(l)).unwrap_or("");
                        let new_indent = leading_ws(line);
                        if !old_indent.is_empty() && !new_indent.is_empty() {
                            let rel = new_indent
                                .chars()
                                .count()
                                .saturating_sub(old_indent.chars().count());
                            format!("{original_indent}{}{}", " ".repeat(rel), line.trim_start())
                        } else {
                            line.to_owned()
                        }
                    })
                    .collect();
                content_lines.splice(i..i + old_lines.len(), new_lines);
                modified = content_lines.join("\n");
                found = true;
                break;
            }
        }
        if !found {
            return Err(format!(
                "Could not find exact match for edit:\n{}",
                edit.old_text
            ));
        }
    }
    Ok(modified)
}

/// A unified diff in the format of the `diff` package's `createTwoFilesPatch(name, name, old,
/// new, 'original', 'modified')`.
pub(super) fn unified_diff(old: &str, new: &str, name: &str) -> String {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = format!(
        "Index: {name}\n===================================================================\n--- {name}\toriginal\n+++ {name}\tmodified\n"
    );
    for group in diff.grouped_ops(DIFF_CONTEXT) {
        // The group's extent: the smallest start to the largest end (with lone `\r` line ends
        // `similar` may emit ops out of order, so first/last would underflow).
        let (Some(o0), Some(o1), Some(n0), Some(n1)) = (
            group.iter().map(|op| op.old_range().start).min(),
            group.iter().map(|op| op.old_range().end).max(),
            group.iter().map(|op| op.new_range().start).min(),
            group.iter().map(|op| op.new_range().end).max(),
        ) else {
            continue;
        };
        let start = |s: usize, len: usize| if len == 0 { s } else { s + 1 };
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            start(o0, o1 - o0),
            o1 - o0,
            start(n0, n1 - n0),
            n1 - n0
        ));
        for op in &group {
            for change in diff.iter_changes(op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Equal => ' ',
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                };
                let value = change.value();
                out.push(sign);
                out.push_str(value.strip_suffix('\n').unwrap_or(value));
                out.push('\n');
                if change.missing_newline() {
                    out.push_str("\\ No newline at end of file\n");
                }
            }
        }
    }
    out
}

pub(super) fn fenced_diff(diff: &str) -> String {
    let mut n = 3;
    while diff.contains(&"`".repeat(n)) {
        n += 1;
    }
    let fence = "`".repeat(n);
    format!("{fence}diff\n{diff}{fence}\n\n")
}

pub(super) fn edit_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: EditArgs = parse("edit_file", args)?;
    let max = ctx.limits.max_read_bytes;
    let (file, st) = ctx.roots.open_regular(&a.path, Access::Write)?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > max {
        return Err(too_large(&a.path, Some(size), max));
    }
    let bytes = read_limited(&a.path, &file, size, max)?;
    drop(file);
    let original = String::from_utf8(bytes)
        .map_err(|_| Fail::Tool(format!("File is not valid UTF-8 text: {}", a.path)))?
        .replace("\r\n", "\n");
    let modified = apply_edits(&original, &a.edits).map_err(Fail::Tool)?;
    let diff = unified_diff(&original, &modified, &ctx.roots.display_path(&a.path));
    if !a.dry_run {
        ctx.roots.write_file(&a.path, modified.as_bytes())?;
    }
    Ok(text(ctx, fenced_diff(&diff)))
}
