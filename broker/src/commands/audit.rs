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

/// Whether `p` is the head file (or its temporary file) of a log that exists next to it, as
/// `audit.jsonl*` brings in: not a log file (verification finds and checks it by itself).
fn is_head_of_a_log(p: &std::path::Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    [".head", ".head.tmp"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|stem| !stem.is_empty() && p.with_file_name(stem).is_file())
    })
}

/// Every log file `args` names, in order, without duplicates (and without the logs' head files).
fn audit_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, BrokerError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for a in args.iter().filter(|a| !is_head_of_a_log(a)) {
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

fn print_records(records: &[serde_json::Value], json: bool) {
    let mut out = std::io::stdout().lock();
    for r in records {
        let _ = if json {
            writeln!(out, "{r}")
        } else {
            writeln!(out, "{}", human_line(r))
        };
    }
}

/// The envelope and chain fields a human line leaves out (the time, event and principal are
/// its first columns).
const ENVELOPE: &[&str] = &[
    "schema_version",
    "seq",
    "ts",
    "id",
    "event",
    "principal",
    "prev",
    "hash",
];
/// The fields shown first, when present, in this order; the rest follow sorted.
const FIRST: &[&str] = &[
    "method",
    "tool",
    "decision",
    "outcome",
    "reason",
    "rule",
    "http_status",
    "transport",
    "session",
    "peer",
];
/// Longest value shown in a human line (longer ones are cut, marked with `…`).
const MAX_VALUE_CHARS: usize = 96;

/// A value for a terminal: a string as it is when it is plain printable text, else (control
/// characters, quotes, spaces) JSON-escaped, so that nothing a client put in a field can move
/// the cursor or forge a column; other values as JSON. Bounded to [`MAX_VALUE_CHARS`].
fn show(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s)
            if !s.is_empty() && s.chars().all(|c| !c.is_control() && c != '"' && c != ' ') =>
        {
            s.clone()
        }
        other => other.to_string(),
    };
    if s.chars().count() > MAX_VALUE_CHARS {
        let cut: String = s.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// `TIME  EVENT  PRINCIPAL  key=value ...`, columns aligned for the usual widths.
fn human_line(r: &serde_json::Value) -> String {
    let field = |k: &str| r.get(k).map(show).unwrap_or_else(|| "-".into());
    let mut line = format!(
        "{:<27}  {:<14}  {:<16}",
        field("ts"),
        field("event"),
        field("principal")
    );
    if let Some(obj) = r.as_object() {
        let mut rest: Vec<(&String, &serde_json::Value)> = obj
            .iter()
            .filter(|(k, _)| !ENVELOPE.contains(&k.as_str()))
            .collect();
        rest.sort_by_key(|(k, _)| {
            (
                FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()),
                k.to_string(),
            )
        });
        for (k, v) in rest {
            line.push_str(&format!(
                "  {}={}",
                show(&serde_json::Value::String(k.clone())),
                show(v)
            ));
        }
    }
    line.trim_end().to_string()
}

/// `--since` / `--until`: an RFC 3339 time (any offset), a date (`2026-11-25`: midnight UTC),
/// or a time ago (`90s`, `15m`, `1h`, `2d`, `1w`), as the log's fixed-width UTC form
/// (`2026-11-25T08:00:00.000000Z`). Anything else is refused with the accepted forms.
pub fn parse_time(s: &str) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;
    let refuse = || {
        format!(
            "'{s}' is not a time: use RFC 3339 (2026-11-25T08:00:00Z), a date (2026-11-25) or a time ago (90s, 15m, 1h, 2d, 1w)"
        )
    };
    let t = s.trim();
    let at = if let Some((num, unit)) = t
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map(|(i, _)| t.split_at(i))
        .filter(|(n, u)| !n.is_empty() && ["s", "m", "h", "d", "w"].contains(u))
    {
        let n: i64 = num.parse().map_err(|_| refuse())?;
        let secs = match unit {
            "s" => Some(n),
            "m" => n.checked_mul(60),
            "h" => n.checked_mul(3600),
            "d" => n.checked_mul(86_400),
            _ => n.checked_mul(604_800),
        }
        .filter(|s| *s <= 100 * 366 * 86_400)
        .ok_or_else(refuse)?;
        OffsetDateTime::now_utc() - time::Duration::seconds(secs)
    } else if t.len() == 10 && t.as_bytes().get(4) == Some(&b'-') {
        OffsetDateTime::parse(&format!("{t}T00:00:00Z"), &Rfc3339).map_err(|_| refuse())?
    } else {
        OffsetDateTime::parse(t, &Rfc3339).map_err(|_| refuse())?
    };
    let u = at.to_offset(time::UtcOffset::UTC);
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        u.year(),
        u8::from(u.month()),
        u.day(),
        u.hour(),
        u.minute(),
        u.second(),
        u.microsecond()
    ))
}

/// Run one `mcpd audit` subcommand. A verification that finds the log broken is a verdict
/// (exit code 1), not an error.
pub fn run(cmd: AuditCommand) -> Result<ExitCode, BrokerError> {
    match cmd {
        AuditCommand::Verify {
            key,
            head,
            no_head,
            files,
        } => {
            let files = audit_files(&files)?;
            let report = match (key.as_deref(), no_head) {
                (Some(k), true) => mcpd_audit::verify_without_head(&files, k),
                (k, _) => mcpd_audit::verify_with_head(&files, k, head.as_deref()),
            };
            print!("{report}");
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Tail { n, json, files } => {
            let q = mcpd_audit::Query {
                limit: Some(n),
                ..Default::default()
            };
            print_records(&query(&files, &q)?, json);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Query {
            client,
            since,
            until,
            event,
            json,
            files,
        } => {
            let q = mcpd_audit::Query {
                principal: client,
                since,
                until,
                event,
                limit: None,
            };
            print_records(&query(&files, &q)?, json);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn times_in_the_accepted_forms_and_nothing_else() {
        assert_eq!(
            parse_time("2026-11-25T08:00:00Z").unwrap(),
            "2026-11-25T08:00:00.000000Z"
        );
        assert_eq!(
            parse_time("2026-11-25T09:30:00.5+01:30").unwrap(),
            "2026-11-25T08:00:00.500000Z"
        );
        assert_eq!(
            parse_time("2026-11-25").unwrap(),
            "2026-11-25T00:00:00.000000Z"
        );
        let now = parse_time("0s").unwrap();
        let hour_ago = parse_time("1h").unwrap();
        assert!(hour_ago < now && parse_time("2d").unwrap() < hour_ago);
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-11-25T08:00",
            "1y",
            "h",
            "-1h",
            "",
            "1 h",
            "99999999999999999999d",
            "40000w",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
    }

    #[test]
    fn human_lines_are_aligned_bounded_and_escape_what_a_client_wrote() {
        let r = json!({"schema_version": 1, "seq": 7, "ts": "2026-11-25T08:00:00.000000Z",
            "event": "request", "principal": "alice", "tool": "read_text_file",
            "method": "tools/call", "decision": "allow", "duration_us": 120,
            "peer": "\u{1b}[2Jevil", "prev": "x", "hash": "y"});
        let l = human_line(&r);
        assert!(
            l.starts_with("2026-11-25T08:00:00.000000Z  request         alice           "),
            "{l}"
        );
        assert!(
            l.contains("method=tools/call  tool=read_text_file  decision=allow"),
            "{l}"
        );
        assert!(!l.contains('\u{1b}') && l.contains("\\u001b[2Jevil"), "{l}");
        assert!(!l.contains("hash=") && !l.contains("seq="), "{l}");
        let long = json!({"ts": "t", "event": "e", "x": "a".repeat(500)});
        assert!(human_line(&long).chars().count() < 200);
    }
}
