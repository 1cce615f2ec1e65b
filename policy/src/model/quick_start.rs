//! The grant part of the CLI overlay: quick-start flags (`--allow-read`, `--allow-write`,
//! `--allow-exec`, `--allow-code`) become the same `RawConfig` a file would, or are added to
//! the stdio client of a loaded policy, and go through the same validation. Reached through
//! `Policy::load` (`overlay`). Does not parse the command line (the broker does). Trusts the
//! flags only after `build`'s checks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::build::dedup;
use super::types::{
    Canonicalize, ClientId, Limits, Permissions, Policy, QuickStart, ToolSet, DEFAULT_CLIENT,
};
use crate::config::{ConfigError, RawConfig, RawGrant, Source};
use crate::exec::ExecGrant;

impl Policy {
    /// The policy quick-start flags describe: one client, [`DEFAULT_CLIENT`], used by stdio.
    /// With no paths at all, `cwd` is served read-only (the embedded default).
    pub fn quick_start(
        q: &QuickStart,
        cwd: &Path,
        canon: Canonicalize<'_>,
    ) -> Result<Self, ConfigError> {
        let to_spanned = |v: &[PathBuf]| -> Result<Vec<Spanned<String>>, ConfigError> {
            v.iter()
                .map(|p| {
                    let p = if p.is_absolute() {
                        p.clone()
                    } else {
                        cwd.join(p)
                    };
                    p.to_str()
                        .map(|s| Spanned::new(0..0, s.to_string()))
                        .ok_or_else(|| {
                            Source::new("<flags>", "")
                                .error(None, format!("path is not UTF-8: {}", p.display()))
                        })
                })
                .collect()
        };
        let mut read = to_spanned(&q.read)?;
        let write = to_spanned(&q.write)?;
        if read.is_empty() && write.is_empty() {
            read = to_spanned(&[cwd.to_path_buf()])?;
        }
        let mut raw = RawConfig::default();
        let names = |v: &[String]| v.iter().map(|n| Spanned::new(0..0, n.clone())).collect();
        raw.clients.insert(
            DEFAULT_CLIENT.to_string(),
            Spanned::new(
                0..0,
                RawGrant {
                    read,
                    write,
                    exec: names(&q.exec),
                    code: names(&q.code),
                    ..RawGrant::default()
                },
            ),
        );
        Self::build(&Source::new("<flags>", ""), raw, canon)
    }

    /// Merge quick-start flags into a loaded policy: the paths are added to the stdio client.
    /// Crate-private: it patches a validated policy, which only [`Policy::load`] may do.
    pub(crate) fn add_quick_start(
        &mut self,
        q: &QuickStart,
        cwd: &Path,
        canon: Canonicalize<'_>,
    ) -> Result<(), ConfigError> {
        let extra = Self::quick_start(q, cwd, canon)?;
        let id = self
            .stdio_client
            .clone()
            .unwrap_or_else(|| ClientId(DEFAULT_CLIENT.into()));
        let add = extra.clients.get(&ClientId(DEFAULT_CLIENT.into())).cloned();
        let Some(add) = add else { return Ok(()) };
        let entry = self
            .clients
            .entry(id.clone())
            .or_insert_with(|| Permissions {
                read: vec![],
                write: vec![],
                global_write: false,
                tools: ToolSet::All,
                limits: Limits::default(),
                exec: ExecGrant::default(),
                operator_tools: BTreeSet::new(),
            });
        if !q.read.is_empty() {
            entry.read.extend(add.read);
        }
        entry.write.extend(add.write);
        for p in add.exec.programs {
            if !entry.exec.programs.iter().any(|e| e.path == p.path) {
                entry.exec.programs.push(p);
            }
        }
        for l in add.exec.languages {
            if !entry.exec.languages.iter().any(|e| e.name == l.name) {
                entry.exec.languages.push(l);
            }
        }
        dedup(&mut entry.read);
        dedup(&mut entry.write);
        if self.http.client.is_none() {
            self.http.client = Some(id.clone());
        }
        self.stdio_client = Some(id);
        Ok(())
    }
}
