//! `mcpd audit verify|tail|query|keygen`: reads and verifies the tamper-evident audit log, or
//! creates the Ed25519 key pair for its signed checkpoints.
//!
//! What it does: resolves the named files (a base path brings in its rotated files, each file
//! once), runs `mcpd_audit`'s verification or query, and prints the report or one JSON record
//! per line on stdout. What it does not do: write to a log, repair one, or need the broker's
//! configuration. What it trusts: nothing in the log; verification checks every record's hash
//! chain (and the checkpoints' signatures with `--key`) and names the first broken one.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::AuditCommand;
use crate::error::BrokerError;

/// Every log file `args` names, in order, without duplicates.
fn audit_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, BrokerError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for a in args {
        let found = mcpd_audit::discover_files(a).map_err(BrokerError::AuditTool)?;
        if found.is_empty() {
            return Err(BrokerError::NoAuditLog(a.clone()));
        }
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// The records of `files` that `q` selects.
fn query(files: &[PathBuf], q: &mcpd_audit::Query) -> Result<Vec<serde_json::Value>, BrokerError> {
    mcpd_audit::query(&audit_files(files)?, q).map_err(BrokerError::AuditTool)
}

fn print_records(records: &[serde_json::Value]) {
    let mut out = std::io::stdout().lock();
    for r in records {
        let _ = writeln!(out, "{r}");
    }
}

/// Run one `mcpd audit` subcommand. A verification that finds the log broken is a verdict
/// (exit code 1), not an error.
pub fn run(cmd: AuditCommand) -> Result<ExitCode, BrokerError> {
    match cmd {
        AuditCommand::Verify { key, files } => {
            let files = audit_files(&files)?;
            let report = mcpd_audit::verify(&files, key.as_deref());
            print!("{report}");
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Tail { n, files } => {
            let q = mcpd_audit::Query {
                limit: Some(n),
                ..Default::default()
            };
            print_records(&query(&files, &q)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Query {
            client,
            since,
            event,
            files,
        } => {
            let q = mcpd_audit::Query {
                principal: client,
                since,
                event,
                limit: None,
            };
            print_records(&query(&files, &q)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Keygen { private, public } => {
            mcpd_audit::generate_key(&private, &public).map_err(BrokerError::AuditTool)?;
            println!(
                "wrote {} (private) and {} (public)",
                private.display(),
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
