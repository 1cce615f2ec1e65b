//! The one-shot subcommands (`check-config`, `doctor`, `audit`, `completions`, the hidden
//! `manpages`): they read, print (or write) and exit;
//! none of them serves a client. Also the reading of a configuration file that they share with
//! `serve` ([`read_config`], [`canon`]).
#![forbid(unsafe_code)]

pub mod audit;
pub mod check_config;
pub mod completions;
pub mod config_manpage;
pub mod doctor;
pub mod manpages;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mcpd_policy::{Overlay, Policy};

use crate::error::{BrokerError, LoadError};

/// The [`mcpd_policy::Canonicalize`] the broker gives the policy crate: the real `realpath`.
pub fn canon(p: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(p)
}

/// The text of the configuration file `path`.
pub fn read_config(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `mcpd doctor [--config FILE]`: the report of [`doctor::run`] for the file's policy, or for
/// the embedded default (the current directory read-only) without one.
pub fn doctor(config: Option<&Path>) -> Result<ExitCode, BrokerError> {
    let policy = match config {
        Some(path) => read_config(path).and_then(|text| {
            Policy::from_toml(&path.display().to_string(), &text, &canon)
                .map_err(|e| LoadError::Policy(e.into()))
        }),
        None => std::env::current_dir()
            .map_err(LoadError::CurrentDir)
            .and_then(|cwd| {
                Policy::load(None, &Overlay::default(), &cwd, &canon).map_err(LoadError::Policy)
            }),
    }
    .map_err(BrokerError::ConfigFile)?;
    Ok(doctor::run(&policy))
}
