//! Directory listings (`list_directory`, `list_directory_with_sizes`) of one directory, bounded
//! by `max_entries`. Does not recurse (see `walk`). Trusts `Roots` to open the directory
//! beneath a root; entry names are untrusted and shown lossily.

use std::os::fd::AsFd;

use serde::Deserialize;
use serde_json::Value;

use super::{parse, text, Outcome, PathArgs};
use crate::tools::paths::{self, Access, EntryKind, PathError};
use crate::tools::ToolContext;

pub(super) fn list_directory(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("list_directory", args)?;
    let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
    let max = usize::try_from(ctx.limits.max_entries).unwrap_or(usize::MAX);
    let (entries, more) =
        paths::read_dir(dir.as_fd(), max).map_err(|e| PathError::io(&a.path, e))?;
    let mut out = entries
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                if e.kind == EntryKind::Dir {
                    "[DIR]"
                } else {
                    "[FILE]"
                },
                e.name
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    if more {
        out.push_str(&format!("\n[truncated: showing the first {max} entries]"));
    }
    Ok(text(ctx, out))
}

/// Human-readable size, as the reference formats it.
pub(super) fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    if bytes == 0 {
        return "0 B".into();
    }
    let mut i = 0usize;
    while i + 1 < UNITS.len() && bytes >= 1024u64.pow(i as u32 + 1) {
        i += 1;
    }
    if i == 0 {
        return format!("{bytes} B");
    }
    format!("{:.2} {}", bytes as f64 / 1024f64.powi(i as i32), UNITS[i])
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum SortBy {
    #[default]
    Name,
    Size,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ListSizesArgs {
    path: String,
    #[serde(default)]
    sort_by: Option<SortBy>,
}

pub(super) fn list_directory_with_sizes(ctx: &ToolContext, args: Value) -> Outcome {
    let a: ListSizesArgs = parse("list_directory_with_sizes", args)?;
    let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
    let max = usize::try_from(ctx.limits.max_entries).unwrap_or(usize::MAX);
    let (entries, more) =
        paths::read_dir(dir.as_fd(), max).map_err(|e| PathError::io(&a.path, e))?;
    let mut detailed: Vec<(String, bool, u64)> = entries
        .iter()
        .map(|e| {
            let size = paths::stat_child(dir.as_fd(), &e.raw)
                .map(|st| u64::try_from(st.st_size).unwrap_or(0))
                .unwrap_or(0);
            (e.name.clone(), e.kind == EntryKind::Dir, size)
        })
        .collect();
    if a.sort_by.unwrap_or_default() == SortBy::Size {
        detailed.sort_by_key(|e| std::cmp::Reverse(e.2));
    } else {
        detailed.sort_by(|x, y| x.0.cmp(&y.0));
    }
    let mut lines: Vec<String> = detailed
        .iter()
        .map(|(name, is_dir, size)| {
            if *is_dir {
                format!("[DIR] {name:<30} ")
            } else {
                format!("[FILE] {name:<30} {:>10}", format_size(*size))
            }
        })
        .collect();
    let files = detailed.iter().filter(|e| !e.1).count();
    let dirs = detailed.len() - files;
    let total: u64 = detailed.iter().filter(|e| !e.1).map(|e| e.2).sum();
    lines.push(String::new());
    lines.push(format!("Total: {files} files, {dirs} directories"));
    lines.push(format!("Combined size: {}", format_size(total)));
    if more {
        lines.push(format!("[truncated: showing the first {max} entries]"));
    }
    Ok(text(ctx, lines.join("\n")))
}
