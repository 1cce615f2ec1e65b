//! `mcpd`: the broker. Terminates MCP transports, decides every request against the policy,
//! and runs each session's tools in a confined `mcpd-worker` process.
//!
//! This crate root only declares the modules and dispatches the parsed command line ([`main`]):
//! `serve` to `daemon`, the one-shot subcommands to `commands`. A failure is one
//! `error::BrokerError`: printed on stderr, its exit code returned. The `mcpd` binary
//! (`src/main.rs`) calls [`main`]; every module stays private. The only other public item is
//! the [`fuzzing`] facade: the parsers on a trust boundary, for the targets in `fuzz/`.
// Unsafe code is structurally contained: every module but `sys` (the pre_exec hook and the
// kernel probes, each block with its own SAFETY comment) declares `#![forbid(unsafe_code)]`,
// and this crate root, which cannot forbid what `sys` allows, denies it.
#![deny(unsafe_code)]

mod auditing;
mod auth;
mod cli;
mod commands;
mod daemon;
mod error;
mod mcp;
mod metrics;
mod reload;
mod sys;
mod systemd;
mod transport;
mod worker;

pub mod fuzzing;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// The `mcpd` command: parse the command line, run the subcommand, map a failure to its exit
/// code (after printing it on stderr).
pub fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(args) => daemon::serve(args).map(|()| ExitCode::SUCCESS),
        Command::CheckConfig { config, json } => match config.or_else(cli::default_config) {
            Some(c) => commands::check_config::run(&c, json),
            None => Err(error::BrokerError::NoConfig),
        },
        Command::Doctor { config } => {
            commands::doctor(config.or_else(cli::default_config).as_deref())
        }
        Command::Audit(cmd) => commands::audit::run(cmd),
        Command::Completions { shell } => commands::completions::run(shell),
        Command::Manpages { dir } => commands::manpages::run(&dir),
    };
    result.unwrap_or_else(|e| {
        eprintln!("{e}");
        e.exit_code()
    })
}
