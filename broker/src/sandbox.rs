//! Completing a worker's sandbox spec with what the host needs for execution.
//!
//! The policy crate derives the client's paths and programs without I/O. When execution is
//! granted, programs also need their dynamic loader (executed by the kernel, so it needs the
//! Landlock `Execute` right), the interpreters of `#!` scripts, shared libraries (read-only),
//! the loader cache, and a few device files. This module looks them up on this host; nothing
//! here is reachable through the file tools (those only see the client's own roots).

use std::io::Read;
use std::path::{Path, PathBuf};

use mcpd_ipc::SandboxSpec;

/// Read-only system paths for programs: libraries and the loader's configuration. Only those
/// that exist are added; `/etc` itself (but for the loader cache, the time zone and the public
/// TLS configuration and certificates), home directories and `/proc` stay out.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/usr/share/zoneinfo",
    "/etc/ssl/openssl.cnf",
    "/etc/ssl/certs",
];

/// Device files commands may read and write.
pub const DEVICE_PATHS: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/urandom",
    "/dev/random",
];

/// Where bare program names are looked up (the same fixed `PATH` the worker gives commands).
pub const PROGRAM_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// Dynamic loaders (executed by the kernel for every dynamically linked program).
pub const LOADERS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/ld-linux-x86-64.so.2",
];

/// Longest `#!` chain followed (script → interpreter → ...).
const MAX_SHEBANG_DEPTH: usize = 4;

fn canonical(p: &str) -> Option<String> {
    std::fs::canonicalize(p)
        .ok()
        .and_then(|c| c.to_str().map(str::to_string))
}

/// The interpreter a `#!` line names, if `path` is a script.
fn shebang(path: &Path) -> Option<PathBuf> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf).ok()?;
    let head = buf.get(..n)?;
    let line = head.strip_prefix(b"#!")?;
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    let text = std::str::from_utf8(&line[..end]).ok()?.trim();
    let interp = text.split_whitespace().next()?;
    interp.starts_with('/').then(|| PathBuf::from(interp))
}

/// Add loaders, script interpreters, libraries and devices when the spec executes anything.
pub fn complete(spec: &mut SandboxSpec) {
    if spec.exec_paths.is_empty() {
        return;
    }
    let mut exec = spec.exec_paths.clone();
    // Spellings the worker's private view must resolve (its symlink chains are reproduced
    // there): the loaders, `#!` interpreters and program names as written, not canonical.
    let mut aliases: Vec<String> = LOADERS
        .iter()
        .filter(|l| Path::new(l).exists())
        .map(|l| (*l).to_string())
        .collect();
    if spec.exec.shell.is_some() {
        aliases.push("/bin/sh".into());
    }
    let names = spec
        .exec
        .programs
        .iter()
        .map(|p| p.name.as_str())
        .chain(spec.exec.languages.iter().map(|l| l.name.as_str()));
    for name in names {
        if name.starts_with('/') {
            aliases.push(name.to_string());
        } else {
            aliases.extend(PROGRAM_DIRS.iter().map(|d| format!("{d}/{name}")));
        }
    }
    let mut i = 0;
    let mut depth = 0;
    while i < exec.len() && depth < MAX_SHEBANG_DEPTH * 64 {
        if let Some(interp) = shebang(Path::new(&exec[i])) {
            if let Some(spelled) = interp.to_str() {
                aliases.push(spelled.to_string());
            }
            if let Some(c) = interp.to_str().and_then(canonical) {
                if !exec.contains(&c) {
                    exec.push(c);
                }
            }
        }
        i += 1;
        depth += 1;
    }
    exec.extend(LOADERS.iter().filter_map(|l| canonical(l)));
    exec.sort();
    exec.dedup();
    spec.exec_paths = exec;
    let mut sys: Vec<String> = SYSTEM_READ_PATHS
        .iter()
        .filter_map(|p| canonical(p))
        .collect();
    sys.sort();
    sys.dedup();
    spec.exec.system_read_paths = sys;
    spec.exec.device_paths = DEVICE_PATHS.iter().filter_map(|p| canonical(p)).collect();
    aliases.sort();
    aliases.dedup();
    spec.isolation.aliases = aliases;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nothing_is_added_without_execution() {
        let mut spec = SandboxSpec::default();
        complete(&mut spec);
        assert!(spec.exec.system_read_paths.is_empty());
        assert!(spec.exec.device_paths.is_empty());
    }

    #[test]
    fn scripts_bring_their_interpreter_and_programs_their_loader() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let mut spec = SandboxSpec {
            exec_paths: vec![script.to_str().unwrap().to_string()],
            ..SandboxSpec::default()
        };
        complete(&mut spec);
        let sh = canonical("/bin/sh").unwrap();
        assert!(spec.exec_paths.contains(&sh), "{:?}", spec.exec_paths);
        assert!(spec.exec.device_paths.contains(&"/dev/null".to_string()));
        assert!(!spec
            .exec
            .system_read_paths
            .iter()
            .any(|p| p == "/etc" || p == "/etc/ssl" || p.starts_with("/etc/ssl/private")));
        assert!(LOADERS
            .iter()
            .filter_map(|l| canonical(l))
            .all(|l| spec.exec_paths.contains(&l)));
    }
}
