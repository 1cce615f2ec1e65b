//! `mcpd check-config --config FILE`: validates a configuration file and prints the effective
//! policy (`Policy::describe`, warnings first), then `configuration OK`; with `--json`, the
//! policy as one JSON document (`Policy::describe_json`).
//!
//! What it does: reads the file and runs the policy crate's full validation, exactly as
//! `serve` would for that file without flags (paths are canonicalised, so they must exist).
//! It also reads the `[http]` requestState key files, as `serve` does (mode, owner, content).
//! What it does not do: apply command-line flags, open the audit log, probe the kernel or
//! start anything. What it trusts: the policy crate's verdict, printed as it renders it
//! (`FILE:LINE:COL: message` on stderr, exit code CONFIG).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use mcpd_policy::Policy;

use crate::error::BrokerError;

/// Validate `config` and print the effective policy (as JSON with `json`).
pub fn run(config: &Path, json: bool) -> Result<ExitCode, BrokerError> {
    let text = super::read_config(config).map_err(BrokerError::ConfigFile)?;
    let policy = Policy::from_toml(&config.display().to_string(), &text, &super::canon)
        .map_err(|e| BrokerError::ConfigInvalid(e.into()))?;
    // The requestState key files, checked as `serve` checks them at start.
    crate::mcp::seal::prepare(policy.http())
        .map_err(|e| BrokerError::Config(crate::error::LoadError::StateKey(e.to_string())))?;
    if json {
        println!("{:#}", policy.describe_json());
    } else {
        print!("{}", policy.describe());
        println!("configuration OK");
    }
    Ok(ExitCode::SUCCESS)
}
