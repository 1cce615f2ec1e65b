//! Completing a worker's sandbox spec with what the host needs for execution.
//!
//! The policy crate derives the client's paths and programs without I/O. When execution is
//! granted, programs also need their dynamic loader (executed by the kernel, so it needs the
//! Landlock `Execute` right), the interpreters of `#!` scripts, shared libraries (read-only),
//! the loader cache, and a few device files. This module looks them up on this host; nothing
//! here is reachable through the file tools (those only see the client's own roots).
//!
//! Does not decide what a client may run or read (the policy did) and adds nothing when the
//! spec executes nothing; it confines nothing itself (the worker applies the spec). Trusts the
//! host's file system as the broker sees it: the fixed system paths below, and the `#!` lines of
//! the granted programs (their first 256 bytes, at most four interpreters deep), which decide
//! the interpreters that join an exec set, so a granted program's `#!` line is trusted as much
//! as the program itself. Nothing the worker sends reaches this module.
#![forbid(unsafe_code)]

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

/// Complete an exec set: for each file in it, the interpreters its `#!` chain names (at most
/// [`MAX_SHEBANG_DEPTH`] deep, as the kernel), then the dynamic loaders. Sorted, deduplicated.
/// Used for every per-program set and for the worker's outer `exec_paths`, so the two cannot
/// disagree. A `#!/usr/bin/env NAME` script brings `env`, not `NAME`: the operator declares
/// `NAME` as a helper if the script needs it.
/// The `#!` interpreters as spelled go to `aliases` (the worker's view reproduces them).
fn close_exec_set(set: &[String], loaders: &[String], aliases: &mut Vec<String>) -> Vec<String> {
    if set.is_empty() {
        return Vec::new();
    }
    let mut out = set.to_vec();
    for start in set {
        let mut at = PathBuf::from(start);
        for _ in 0..MAX_SHEBANG_DEPTH {
            let Some(spelled) = shebang(&at).and_then(|i| i.to_str().map(str::to_string)) else {
                break;
            };
            aliases.push(spelled.clone());
            let Some(c) = canonical(&spelled) else {
                break;
            };
            if out.contains(&c) {
                break;
            }
            out.push(c.clone());
            at = PathBuf::from(c);
        }
    }
    out.extend(loaders.iter().cloned());
    out.sort();
    out.dedup();
    out
}

/// Add loaders, script interpreters, libraries and devices when the spec executes anything:
/// to each program's, the shell's, each interpreter's and each operator tool's own exec set,
/// and to the worker's `exec_paths`, which is made the union of all of them.
pub fn complete(spec: &mut SandboxSpec) {
    if spec.exec_paths.is_empty() {
        return;
    }
    let loaders: Vec<String> = LOADERS.iter().filter_map(|l| canonical(l)).collect();
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
    let exec = &mut spec.exec;
    let sets = exec
        .programs
        .iter_mut()
        .map(|g| &mut g.exec_set)
        .chain(std::iter::once(&mut exec.shell_exec_set))
        .chain(exec.languages.iter_mut().map(|l| &mut l.exec_set))
        .chain(exec.operator_tools.iter_mut().map(|t| &mut t.exec_set));
    let mut all = close_exec_set(&spec.exec_paths, &loaders, &mut aliases);
    for set in sets {
        *set = close_exec_set(set, &loaders, &mut aliases);
        all.extend(set.iter().cloned());
    }
    all.sort();
    all.dedup();
    spec.exec_paths = all;
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

    #[test]
    fn each_exec_set_is_completed_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(dir.path()).unwrap();
        // script -> second (a script too) -> /bin/sh: the whole chain, as the kernel follows it.
        let second = dir.join("second");
        std::fs::write(&second, "#!/bin/sh\n").unwrap();
        let script = dir.join("script");
        std::fs::write(&script, format!("#!{} -x\n", second.display())).unwrap();
        let helper = dir.join("helpers");
        std::fs::create_dir(&helper).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let cat = canonical("/bin/cat").unwrap();
        let sh = canonical("/bin/sh").unwrap();
        let mut spec = SandboxSpec {
            exec_paths: vec![s(&script), s(&helper), cat.clone()],
            ..SandboxSpec::default()
        };
        spec.exec.programs = vec![
            mcpd_ipc::ProgramGrant {
                name: "script".into(),
                path: s(&script),
                exec_set: vec![s(&script), s(&helper)],
            },
            mcpd_ipc::ProgramGrant {
                name: "cat".into(),
                path: cat.clone(),
                exec_set: vec![cat.clone()],
            },
        ];
        complete(&mut spec);
        let loaders: Vec<String> = LOADERS.iter().filter_map(|l| canonical(l)).collect();
        assert!(!loaders.is_empty());
        let mut want = vec![s(&script), s(&second), sh.clone(), s(&helper)];
        want.extend(loaders.iter().cloned());
        want.sort();
        want.dedup();
        assert_eq!(spec.exec.programs[0].exec_set, want);
        let mut want_cat = vec![cat.clone()];
        want_cat.extend(loaders.iter().cloned());
        want_cat.sort();
        assert_eq!(spec.exec.programs[1].exec_set, want_cat);
        // No shell grant: no shell set, and nothing added to it.
        assert!(spec.exec.shell_exec_set.is_empty());
        // The outer domain executes the union of every set.
        for p in want.iter().chain(&want_cat) {
            assert!(spec.exec_paths.contains(p), "{p} missing");
        }
    }
}
