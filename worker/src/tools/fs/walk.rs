//! The bounded recursive walk shared by `directory_tree`, `search_files` and `grep`: depth,
//! entry and cancellation limits, glob and exclude matching, and `directory_tree` itself.
//! Never follows symlinks and never leaves the directory fd it starts from. Trusts `Roots` for
//! the starting directory; names found on the way are untrusted.

use std::os::fd::{AsFd, BorrowedFd};

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    cancelled, parse, text, Fail, Outcome, MAX_DIR_ENTRIES, MAX_WALK_DEPTH, PROGRESS_EVERY,
};
use crate::tools::paths::{self, Access, DirEntryInfo, EntryKind};
use crate::tools::{invalid_args, ToolContext};

pub(super) fn glob(pattern: &str) -> Result<GlobMatcher, Fail> {
    Ok(build_glob(pattern)?.compile_matcher())
}

pub(super) fn build_glob(pattern: &str) -> Result<globset::Glob, Fail> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Fail::Call(invalid_args(format!("Invalid glob pattern: {e}"))))
}

/// Exclusion patterns as the reference's `directory_tree` applies them: a pattern with `*` is
/// matched against the relative path; one without also matches that name at any depth and
/// anything beneath it.
pub(super) fn exclude_set(patterns: &[String]) -> Result<GlobSet, Fail> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        if p.is_empty() {
            continue;
        }
        b.add(build_glob(p)?);
        if !p.contains('*') {
            b.add(build_glob(&format!("**/{p}"))?);
            b.add(build_glob(&format!("**/{p}/**"))?);
        }
    }
    b.build()
        .map_err(|e| Fail::Call(invalid_args(format!("Invalid glob pattern: {e}"))))
}

/// Bookkeeping shared by the recursive walks.
pub(super) struct Walk<'a> {
    ctx: &'a ToolContext,
    pub(super) visited: u64,
    max_visits: u64,
    pub(super) truncated: bool,
}

/// Callback of [`Walk::walk`]: the walk, the entry's directory, its relative path, the entry.
pub(super) type VisitFn<'f, 'a> =
    dyn FnMut(&mut Walk<'a>, BorrowedFd<'_>, &str, &DirEntryInfo) -> Result<Visit, Fail> + 'f;

pub(super) enum Visit {
    Descend,
    Skip,
    Stop,
}

impl<'a> Walk<'a> {
    pub(super) fn new(ctx: &'a ToolContext) -> Self {
        Self {
            ctx,
            visited: 0,
            max_visits: ctx.limits.max_entries.saturating_mul(100).max(100_000),
            truncated: false,
        }
    }

    /// Account for one entry; false when the walk must stop.
    fn tick(&mut self) -> Result<bool, Fail> {
        if self.ctx.is_cancelled() {
            return Err(cancelled());
        }
        self.visited += 1;
        if self.visited.is_multiple_of(PROGRESS_EVERY) {
            self.ctx.progress(
                self.visited as f64,
                None,
                Some(format!("{} entries scanned", self.visited)),
            );
        }
        if self.visited > self.max_visits {
            self.truncated = true;
            return Ok(false);
        }
        Ok(true)
    }

    /// Visit every entry below `dir` (depth first, sorted by name). `rel` is the relative path
    /// of `dir` ("" at the start). Returns true if the walk was stopped.
    pub(super) fn walk(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &str,
        depth: usize,
        f: &mut VisitFn<'_, 'a>,
    ) -> Result<bool, Fail> {
        let Ok((entries, more)) = paths::read_dir(dir, MAX_DIR_ENTRIES) else {
            return Ok(false);
        };
        self.truncated |= more;
        for e in &entries {
            if !self.tick()? {
                return Ok(true);
            }
            let child_rel = join_rel(rel, &e.name);
            match f(self, dir, &child_rel, e)? {
                Visit::Stop => return Ok(true),
                Visit::Skip => {}
                Visit::Descend => {
                    if e.kind != EntryKind::Dir {
                        continue;
                    }
                    if depth + 1 >= MAX_WALK_DEPTH {
                        self.truncated = true;
                        continue;
                    }
                    if let Ok(child) = paths::open_child_dir(dir, &e.raw) {
                        if self.walk(child.as_fd(), &child_rel, depth + 1, f)? {
                            return Ok(true);
                        }
                    }
                }
            }
        }
        Ok(false)
    }
}

pub(super) fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

pub(super) fn join_display(base: &str, rel: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct TreeArgs {
    path: String,
    #[serde(default)]
    exclude_patterns: Vec<String>,
}

#[derive(Serialize)]
pub(super) struct TreeEntry {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    children: Option<Vec<TreeEntry>>,
}

pub(super) struct TreeState<'a> {
    walk: Walk<'a>,
    exclude: GlobSet,
    entries: u64,
    max_entries: u64,
}

pub(super) fn build_tree(
    st: &mut TreeState<'_>,
    dir: BorrowedFd<'_>,
    rel: &str,
    depth: usize,
) -> Result<Vec<TreeEntry>, Fail> {
    let mut out = Vec::new();
    let Ok((entries, more)) = paths::read_dir(dir, MAX_DIR_ENTRIES) else {
        return Ok(out);
    };
    st.walk.truncated |= more;
    for e in &entries {
        if !st.walk.tick()? || st.entries >= st.max_entries {
            st.walk.truncated = true;
            break;
        }
        let child_rel = join_rel(rel, &e.name);
        if st.exclude.is_match(&child_rel) {
            continue;
        }
        st.entries += 1;
        let is_dir = e.kind == EntryKind::Dir;
        let children = if is_dir {
            let mut kids = Vec::new();
            if depth + 1 >= MAX_WALK_DEPTH {
                st.walk.truncated = true;
            } else if let Ok(child) = paths::open_child_dir(dir, &e.raw) {
                kids = build_tree(st, child.as_fd(), &child_rel, depth + 1)?;
            }
            Some(kids)
        } else {
            None
        };
        out.push(TreeEntry {
            name: e.name.clone(),
            kind: if is_dir { "directory" } else { "file" },
            children,
        });
    }
    Ok(out)
}

pub(super) fn directory_tree(ctx: &ToolContext, args: Value) -> Outcome {
    let a: TreeArgs = parse("directory_tree", args)?;
    let exclude = exclude_set(&a.exclude_patterns)?;
    let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
    let mut st = TreeState {
        walk: Walk::new(ctx),
        exclude,
        entries: 0,
        max_entries: ctx.limits.max_entries,
    };
    let tree = build_tree(&mut st, dir.as_fd(), "", 0)?;
    let mut out = serde_json::to_string_pretty(&tree)
        .map_err(|e| Fail::Tool(format!("Cannot format the tree: {e}")))?;
    if st.walk.truncated {
        out.push_str(&format!(
            "\n[truncated: the tree has more entries than the limit of {}; narrow the path or add excludePatterns]",
            ctx.limits.max_entries
        ));
    }
    Ok(text(ctx, out))
}
