//! Merging a client's own grants with its roles' into [`Permissions`] (a union) and their
//! limits field by field (own value, else the smallest role value, else the default). Does no
//! I/O and no decision. Trusts the grants' syntax (checked by `config`) and checks the rest.

use std::collections::BTreeSet;
use std::path::PathBuf;

use mcpd_ipc::{CommandLimits, ResourceLimits, ToolLimits};
use toml::Spanned;

use super::build::{canonical, dedup};
use super::types::{Canonicalize, Limits, Permissions, ToolSet, MAX_RESULT_BYTES_CEILING};
use crate::config::{ConfigError, RawGrant, RawLimits, Source};
use crate::exec::{self as exec_grant, ExecGrant, Language, Program};

pub(super) fn merge(
    src: &Source,
    client: &str,
    parts: &[(&str, &Spanned<RawGrant>)],
    canon: Canonicalize<'_>,
    warnings: &mut Vec<String>,
) -> Result<Permissions, ConfigError> {
    let mut read = Vec::new();
    let mut write = Vec::new();
    let mut global_write = false;
    let mut tools: Option<BTreeSet<String>> = None;
    let mut any_all = false;
    let mut any_specified = false;
    // One entry per part, the client's own first, so that a client without a `[limits]`
    // table does not take its first role's values as its own.
    let mut limits: Vec<Option<&RawLimits>> = Vec::new();
    let mut exec = ExecGrant::default();
    for (who, g) in parts {
        let g = g.get_ref();
        for name in &g.exec {
            let path =
                exec_grant::resolve_program(src, Some(name.span()), who, name.get_ref(), canon)?;
            let mut arg_patterns = Vec::new();
            if let Some(pats) = g.exec_args.get(name.get_ref()) {
                if pats.len() > exec_grant::MAX_ARG_PATTERNS {
                    return Err(src.error(
                        Some(name.span()),
                        format!(
                            "{who}: at most {} argument patterns per program",
                            exec_grant::MAX_ARG_PATTERNS
                        ),
                    ));
                }
                for p in pats {
                    arg_patterns.push(exec_grant::arg_pattern(src, who, p)?);
                }
            }
            let mut helpers = Vec::new();
            for h in g.exec_helpers.get(name.get_ref()).into_iter().flatten() {
                helpers.push(canonical(
                    src,
                    &format!("{who}: exec_helpers.{}", name.get_ref()),
                    h,
                    canon,
                )?);
            }
            match exec.programs.iter_mut().find(|p| p.path == path) {
                // The same program from two grants: the union of what they allow (an
                // unrestricted grant wins).
                Some(existing) => {
                    if existing.arg_patterns.is_empty() || arg_patterns.is_empty() {
                        existing.arg_patterns.clear();
                    } else {
                        existing.arg_patterns.extend(arg_patterns);
                    }
                    existing.helpers.extend(helpers);
                    dedup(&mut existing.helpers);
                }
                None => {
                    dedup(&mut helpers);
                    exec.programs.push(Program {
                        name: name.get_ref().clone(),
                        path,
                        arg_patterns,
                        helpers,
                    });
                }
            }
        }
        for key in g.exec_args.keys() {
            if !g.exec.iter().any(|e| e.get_ref() == key) {
                return Err(src.error(
                    None,
                    format!("{who}: exec_args.{key} names a program that is not in exec"),
                ));
            }
        }
        for (key, paths) in &g.exec_helpers {
            if !g.exec.iter().any(|e| e.get_ref() == key) {
                return Err(src.error(
                    paths.first().map(Spanned::span),
                    format!("{who}: exec_helpers.{key} names a program that is not in exec"),
                ));
            }
        }
        if g.shell && exec.shell.is_none() {
            exec.shell = Some(exec_grant::resolve_program(
                src, None, who, "/bin/sh", canon,
            )?);
            warnings.push(format!("client '{client}' may run shell command lines via '{who}' (only programs listed in exec can be executed from them)"));
        }
        for lang in &g.code {
            let Some(canonical) = exec_grant::language_alias(lang.get_ref()) else {
                return Err(src.error(
                    Some(lang.span()),
                    format!(
                        "{who}: unknown code language '{}' (python3, sh, bash, node)",
                        lang.get_ref()
                    ),
                ));
            };
            if exec.languages.iter().any(|l| l.name == canonical) {
                continue;
            }
            let interpreter =
                exec_grant::resolve_program(src, Some(lang.span()), who, canonical, canon)?;
            exec.languages.push(Language {
                name: canonical.to_string(),
                interpreter,
            });
        }
        for e in &g.env {
            exec_grant::env_entry(src, who, e, &mut exec)?;
        }
        if g.network {
            exec.network = true;
            warnings.push(format!("client '{client}' has network access via '{who}'"));
        }
        if let Some(s) = &g.sudo {
            if *s.get_ref() {
                return Err(src.error(Some(s.span()), format!(
                    "{who}: sudo (CODE_EXECUTION_SUDO) is refused by design: mcpd never runs anything with more privilege than the worker; see SECURITY.md")));
            }
        }
        for p in &g.read {
            read.push(canonical(src, who, p, canon)?);
        }
        for p in &g.write {
            write.push(canonical(src, who, p, canon)?);
        }
        if g.global_write {
            global_write = true;
            warnings.push(format!("client '{client}' has global_write (FILE_WRITE_GLOBAL) via '{who}': it may write anywhere the OS lets the worker"));
        }
        match &g.tools {
            // Unspecified contributes nothing; if no grant specifies tools at all, all are allowed.
            None => {}
            Some(list) => {
                any_specified = true;
                for t in list {
                    if t.get_ref() == "*" {
                        any_all = true;
                    } else if t.get_ref().is_empty() || t.get_ref().len() > 64 {
                        return Err(src.error(
                            Some(t.span()),
                            format!("{who}: invalid tool name '{}'", t.get_ref()),
                        ));
                    } else {
                        tools
                            .get_or_insert_with(BTreeSet::new)
                            .insert(t.get_ref().clone());
                    }
                }
            }
        }
        limits.push(g.limits.as_ref());
    }
    if global_write {
        write.push(PathBuf::from("/"));
    }
    dedup(&mut read);
    dedup(&mut write);
    let tools = if any_all || !any_specified {
        ToolSet::All
    } else {
        ToolSet::Only(tools.unwrap_or_default())
    };
    Ok(Permissions {
        read,
        write,
        global_write,
        tools,
        limits: merge_limits(&limits),
        exec,
        operator_tools: BTreeSet::new(),
    })
}

/// Field by field: the client's own value wins (it comes first), else the smallest value any
/// role sets, else the default.
pub(super) fn merge_limits(parts: &[Option<&RawLimits>]) -> Limits {
    let d = Limits::default();
    let pick = |f: &dyn Fn(&RawLimits) -> Option<u64>| -> Option<u64> {
        match parts.first().copied().flatten().and_then(f) {
            Some(v) => Some(v),
            None => parts.iter().skip(1).flatten().filter_map(|r| f(r)).min(),
        }
    };
    let dc = &d.command;
    let cpu_seconds = pick(&|l| l.cpu_seconds).or(d.rlimits.cpu_seconds);
    let address_space = pick(&|l| l.address_space).or(d.rlimits.address_space);
    let max_open_files = pick(&|l| l.max_open_files).or(d.rlimits.max_open_files);
    let max_file_size = pick(&|l| l.max_file_size).or(d.rlimits.max_file_size);
    let max_output_bytes = pick(&|l| l.max_output_bytes)
        .unwrap_or(d.tool.max_output_bytes)
        .min(MAX_RESULT_BYTES_CEILING);
    let max_lifetime_secs = pick(&|l| l.max_lifetime_secs)
        .unwrap_or(dc.max_lifetime_secs)
        .max(1);
    let max_processes = pick(&|l| l.max_processes).or(d.max_processes);
    Limits {
        command: CommandLimits {
            timeout_secs: pick(&|l| l.command_timeout_secs)
                .unwrap_or(dc.timeout_secs)
                .clamp(1, max_lifetime_secs),
            max_lifetime_secs,
            cpu_seconds,
            address_space,
            max_processes: pick(&|l| l.max_processes),
            max_open_files,
            max_file_size,
            // One key bounds command output and every other result alike.
            max_output_bytes,
        },
        memory_bytes: pick(&|l| l.memory_bytes).or(d.memory_bytes),
        max_processes,
        max_concurrent_calls: pick(&|l| l.max_concurrent_calls)
            .unwrap_or(d.max_concurrent_calls)
            .max(1),
        call_timeout_secs: pick(&|l| l.call_timeout_secs)
            .unwrap_or(d.call_timeout_secs)
            .max(1),
        calls_per_minute: pick(&|l| l.calls_per_minute).unwrap_or(d.calls_per_minute),
        max_sessions: pick(&|l| l.max_sessions).unwrap_or(d.max_sessions).max(1),
        tool: ToolLimits {
            max_read_bytes: pick(&|l| l.max_read_bytes)
                .unwrap_or(d.tool.max_read_bytes)
                .min(MAX_RESULT_BYTES_CEILING),
            max_output_bytes,
            max_entries: pick(&|l| l.max_entries).unwrap_or(d.tool.max_entries),
            max_matches: pick(&|l| l.max_matches).unwrap_or(d.tool.max_matches),
        },
        // The worker's own RLIMIT_CPU would count its whole session; CPU time is limited per
        // process it starts (`command.cpu_seconds`), and its own work by call timeouts.
        rlimits: ResourceLimits {
            max_open_files,
            max_file_size,
            cpu_seconds: None,
            address_space,
            max_processes: None,
        },
    }
}
