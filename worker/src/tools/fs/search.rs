//! Searches: `search_files` (names matching a glob) and `grep` (literal text in files,
//! skipping binary ones), both over `walk`, bounded by `max_entries`, `max_matches` and the
//! line-length cap. Does not write. Trusts `Roots` and `walk`; file contents are untrusted.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;

use rustix::fs::{self as rfs, FileType};
use serde::Deserialize;
use serde_json::Value;

use super::walk::{exclude_set, glob, join_display, Visit, Walk};
use super::{opt_count, parse, text, Outcome, BINARY_SNIFF_BYTES, MAX_GREP_LINE_CHARS};
use crate::tools::paths::{self, Access, EntryKind, PathError};
use crate::tools::{invalid_args, ToolContext};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SearchArgs {
    path: String,
    pattern: String,
    #[serde(default)]
    exclude_patterns: Vec<String>,
}

pub(super) fn search_files(ctx: &ToolContext, args: Value) -> Outcome {
    let a: SearchArgs = parse("search_files", args)?;
    let matcher = glob(&a.pattern)?;
    let exclude = exclude_set(&a.exclude_patterns)?;
    let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
    let base = ctx.roots.display_path(&a.path);
    let max = ctx.limits.max_entries;
    let mut results: Vec<String> = Vec::new();
    let mut walk = Walk::new(ctx);
    walk.walk(dir.as_fd(), "", 0, &mut |w, _dir, rel, _e| {
        if exclude.is_match(rel) {
            return Ok(Visit::Skip);
        }
        if matcher.is_match(rel) {
            if results.len() as u64 >= max {
                w.truncated = true;
                return Ok(Visit::Stop);
            }
            results.push(join_display(&base, rel));
        }
        Ok(Visit::Descend)
    })?;
    let mut out = if results.is_empty() {
        "No matches found".to_owned()
    } else {
        results.join("\n")
    };
    if walk.truncated {
        out.push_str(&format!(
            "\n[truncated: stopped after {} results or {} scanned entries]",
            results.len(),
            walk.visited
        ));
    }
    Ok(text(ctx, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct GrepArgs {
    path: String,
    pattern: String,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    include: Option<String>,
    #[serde(default, deserialize_with = "opt_count")]
    max_results: Option<u64>,
}

pub(super) struct Grep {
    needle: String,
    case_insensitive: bool,
    max_read: u64,
    max_results: u64,
    results: Vec<String>,
    truncated: bool,
}

impl Grep {
    /// Search one open file; returns false once the result limit is reached.
    fn file(&mut self, display: &str, file: &File) -> bool {
        let mut buf = Vec::new();
        if file.take(self.max_read).read_to_end(&mut buf).is_err() {
            return true;
        }
        if buf[..buf.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
            return true;
        }
        let text = String::from_utf8_lossy(&buf);
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let hit = if self.case_insensitive {
                line.to_lowercase().contains(&self.needle)
            } else {
                line.contains(&self.needle)
            };
            if !hit {
                continue;
            }
            if self.results.len() as u64 >= self.max_results {
                self.truncated = true;
                return false;
            }
            let shown: String = if line.chars().count() > MAX_GREP_LINE_CHARS {
                let mut s: String = line.chars().take(MAX_GREP_LINE_CHARS).collect();
                s.push('…');
                s
            } else {
                line.to_owned()
            };
            self.results.push(format!("{display}:{}: {shown}", i + 1));
        }
        true
    }
}

pub(super) fn grep(ctx: &ToolContext, args: Value) -> Outcome {
    let a: GrepArgs = parse("grep", args)?;
    if a.pattern.is_empty() {
        return Err(invalid_args("pattern must not be empty").into());
    }
    let include = a.include.as_deref().map(glob).transpose()?;
    let include_path = a.include.as_deref().is_some_and(|p| p.contains('/'));
    let cap = ctx.limits.max_matches.max(1);
    let max_results = a.max_results.filter(|&n| n > 0).unwrap_or(cap).min(cap);
    let mut g = Grep {
        needle: if a.case_insensitive {
            a.pattern.to_lowercase()
        } else {
            a.pattern.clone()
        },
        case_insensitive: a.case_insensitive,
        max_read: ctx.limits.max_read_bytes,
        max_results,
        results: Vec::new(),
        truncated: false,
    };
    let target = ctx.roots.open_path(&a.path, Access::Read)?;
    let st = rfs::fstat(&target).map_err(|e| PathError::io(&a.path, e))?;
    let base = ctx.roots.display_path(&a.path);
    let mut walk_truncated = false;
    match paths::file_type(&st) {
        FileType::Directory => {
            let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
            let mut walk = Walk::new(ctx);
            walk.walk(dir.as_fd(), "", 0, &mut |_w, dir, rel, e| {
                if e.kind != EntryKind::File {
                    return Ok(Visit::Descend);
                }
                if let Some(m) = &include {
                    let subject = if include_path { rel } else { e.name.as_str() };
                    if !m.is_match(subject) {
                        return Ok(Visit::Skip);
                    }
                }
                if let Ok((f, _)) = paths::open_child_regular(dir, &e.raw) {
                    if !g.file(&join_display(&base, rel), &f) {
                        return Ok(Visit::Stop);
                    }
                }
                Ok(Visit::Skip)
            })?;
            walk_truncated = walk.truncated;
        }
        FileType::RegularFile => {
            let (f, _) = ctx.roots.open_regular(&a.path, Access::Read)?;
            g.file(&base, &f);
        }
        _ => return Err(PathError::Other(format!("Not a regular file: {}", a.path)).into()),
    }
    let mut out = if g.results.is_empty() {
        "No matches found".to_owned()
    } else {
        g.results.join("\n")
    };
    if g.truncated {
        out.push_str(&format!(
            "\n[truncated: showing the first {} matches]",
            g.results.len()
        ));
    } else if walk_truncated {
        out.push_str("\n[truncated: not every file was searched (walk limit reached)]");
    }
    Ok(text(ctx, out))
}
