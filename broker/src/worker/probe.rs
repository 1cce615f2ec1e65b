//! The worker executable, checked before `mcpd serve` accepts a client (and by `mcpd doctor`):
//! it exists, is a regular executable file, and answers `--version` with the IPC protocol this
//! broker speaks. Without the check, a missing or mismatched worker would only show when the
//! first tool call fails.
//!
//! Runs the executable once, unconfined, with an empty environment and no input, for at most
//! [`PROBE_TIMEOUT`], reading at most [`MAX_ANSWER`] bytes of its answer. Trusts nothing it
//! prints beyond the one line it parses; the executable is the one the operator configured,
//! which the broker runs for every session anyway.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the worker may take to answer `--version`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of the answer read.
const MAX_ANSWER: u64 = 4096;

const FIX: &str = "install mcpd-worker from the same release next to mcpd, or name it with server.worker = \"PATH\" / --worker PATH";

/// `Ok` with a description (`mcpd-worker 0.1.0, ipc 6`), or why this worker cannot serve,
/// with how to fix it.
pub fn check(path: &Path) -> Result<String, String> {
    let at = path.display();
    let md = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("worker executable {at} does not exist: {FIX}")
        }
        _ => format!("worker executable {at}: {e}: {FIX}"),
    })?;
    if !md.is_file() {
        return Err(format!(
            "worker executable {at} is not a regular file: {FIX}"
        ));
    }
    if md.permissions().mode() & 0o111 == 0
        || rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_err()
    {
        return Err(format!(
            "worker executable {at} is not executable by mcpd (mode {:04o}): chmod 0755 it, or {FIX}",
            md.permissions().mode() & 0o7777
        ));
    }
    let mut child = Command::new(path)
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("worker executable {at} cannot be started: {e}: {FIX}"))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "worker executable {at} did not answer `--version` within {} s: not an mcpd worker? {FIX}",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
        }
    };
    let mut answer = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = out.take(MAX_ANSWER).read_to_string(&mut answer);
    }
    let line = answer.lines().next().unwrap_or("").trim();
    let printable: String = line.chars().take(120).filter(|c| !c.is_control()).collect();
    let parsed = parse(line);
    match parsed {
        Some((version, ipc)) if status.success() && ipc == mcpd_ipc::PROTOCOL_VERSION => {
            Ok(format!("mcpd-worker {version}, ipc protocol {ipc}"))
        }
        Some((version, ipc)) if status.success() => Err(format!(
            "worker executable {at} is mcpd-worker {version} speaking ipc protocol {ipc}; this mcpd ({}) speaks {}: install mcpd and mcpd-worker of the same release",
            env!("CARGO_PKG_VERSION"),
            mcpd_ipc::PROTOCOL_VERSION
        )),
        _ => Err(format!(
            "worker executable {at} did not answer the version handshake (`--version` exited {status} and printed '{printable}'): not an mcpd worker? {FIX}"
        )),
    }
}

/// `mcpd-worker VERSION ipc N` → (VERSION, N).
fn parse(line: &str) -> Option<(&str, u32)> {
    let mut w = line.split_ascii_whitespace();
    let (name, version, ipc, n) = (w.next()?, w.next()?, w.next()?, w.next()?);
    if name != "mcpd-worker" || ipc != "ipc" || w.next().is_some() || version.len() > 64 {
        return None;
    }
    Some((version, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_answer_is_one_exact_line() {
        assert_eq!(parse("mcpd-worker 0.1.0 ipc 6"), Some(("0.1.0", 6)));
        assert_eq!(parse("mcpd-worker 0.1.0 ipc x"), None);
        assert_eq!(parse("bash 5.2 ipc 6"), None);
        assert_eq!(parse("mcpd-worker 0.1.0 ipc 6 extra"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn missing_non_executable_and_foreign_executables_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = check(&d.path().join("nope")).unwrap_err();
        assert!(
            e.contains("does not exist") && e.contains("--worker"),
            "{e}"
        );
        let e = check(d.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let f = d.path().join("w");
        std::fs::write(&f, "#!/bin/sh\necho mcpd-worker 9.9 ipc 999999\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check(&f).unwrap_err().contains("not executable"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check(&f).unwrap_err();
        assert!(
            e.contains("ipc protocol 999999") && e.contains("same release"),
            "{e}"
        );
        std::fs::write(&f, "#!/bin/sh\necho hello\n").unwrap();
        let e = check(&f).unwrap_err();
        assert!(
            e.contains("did not answer the version handshake") && e.contains("'hello'"),
            "{e}"
        );
        let ok = format!(
            "#!/bin/sh\necho mcpd-worker 1.2.3 ipc {}\n",
            mcpd_ipc::PROTOCOL_VERSION
        );
        std::fs::write(&f, ok).unwrap();
        assert_eq!(
            check(&f).unwrap(),
            format!(
                "mcpd-worker 1.2.3, ipc protocol {}",
                mcpd_ipc::PROTOCOL_VERSION
            )
        );
    }
}
