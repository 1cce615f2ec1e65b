//! Differential: the policy's lexical path check (`Policy::decide` on `Request::CallTool` paths,
//! through `lexical_normalize`) against a naive reference written here on strings: split on
//! `/`, drop empty and `.` components, pop on `..` (an escape above `/` is outside), then a
//! component-wise prefix test against the read and write roots. Same verdict, same reason and
//! the same normalised paths, or the fuzzer has found a disagreement.
#![no_main]

use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcpd_ipc::ToolAccess;
use mcpd_policy::{base_dir, ClientId, Decision, DenyReason, Policy, Request};

/// Few, colliding names, so that roots and paths overlap often.
const NAMES: &[&str] = &[
    "a", "b", "ab", "a.b", "srv", "data", "..a", "a..", "...", " ", "é",
];
/// What a client path is made of.
const PARTS: &[&str] = &[
    "a", "b", "ab", "srv", "data", ".", "..", "", "a..", "...", "é", "\\",
];

#[derive(Debug, Arbitrary)]
struct Case {
    read: Vec<Vec<u8>>,
    write: Vec<Vec<u8>>,
    paths: Vec<(bool, Vec<u8>, bool, Option<String>)>,
}

fn root(comps: &[u8]) -> String {
    let mut s = String::new();
    for &c in comps.iter().take(4) {
        s.push('/');
        s.push_str(NAMES[usize::from(c) % NAMES.len()]);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

fn fake_canon(p: &Path) -> std::io::Result<PathBuf> {
    Ok(p.to_path_buf())
}

fn toml_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

/// The reference normalisation: components of the absolute path, `None` above `/`.
fn normalize(abs: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for c in abs.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            n => out.push(n),
        }
    }
    Some(out)
}

fn comps(root: &Path) -> Vec<String> {
    root.to_str()
        .unwrap_or_default()
        .split('/')
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

fn under(path: &[&str], roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| {
        let r = comps(r);
        r.len() <= path.len() && r.iter().zip(path).all(|(a, b)| a == b)
    })
}

fuzz_target!(|c: Case| {
    let read: Vec<String> = c.read.iter().take(3).map(|r| root(r)).collect();
    let write: Vec<String> = c.write.iter().take(3).map(|r| root(r)).collect();
    let text = format!(
        "[clients.c]\ntools = [\"*\"]\nread = {}\nwrite = {}\n",
        toml_list(&read),
        toml_list(&write)
    );
    let Ok(policy) = Policy::from_toml("fuzz.toml", &text, &fake_canon) else {
        return;
    };
    let Some(id) = ClientId::parse("c") else {
        return;
    };
    let Some(perms) = policy.permissions(&id) else {
        return;
    };
    let base = base_dir(perms).map(|b| b.to_str().unwrap_or_default().to_owned());
    let mut paths: Vec<(String, bool)> = Vec::new();
    for (absolute, parts, write, raw) in c.paths.into_iter().take(4) {
        let p = match raw {
            Some(r) => r,
            None => {
                let body: Vec<&str> = parts
                    .iter()
                    .map(|&i| PARTS[usize::from(i) % PARTS.len()])
                    .collect();
                format!("{}{}", if absolute { "/" } else { "" }, body.join("/"))
            }
        };
        paths.push((p, write));
    }
    let any_write = paths.iter().any(|(_, w)| *w);
    let access = if any_write {
        ToolAccess::FileWrite
    } else {
        ToolAccess::FileRead
    };
    // The reference verdict.
    let mut expected: Result<Vec<String>, DenyReason> = Ok(Vec::new());
    let has_perm = if any_write {
        !perms.write.is_empty()
    } else {
        !perms.read.is_empty() || !perms.write.is_empty()
    };
    if !has_perm {
        expected = Err(DenyReason::MissingPermission);
    } else {
        let mut out = Vec::new();
        for (p, w) in &paths {
            if p.is_empty() || p.len() > 4096 || p.contains('\0') {
                expected = Err(DenyReason::InvalidPath);
                break;
            }
            let abs = if p.starts_with('/') {
                p.clone()
            } else if let Some(b) = &base {
                format!("{b}/{p}")
            } else {
                expected = Err(DenyReason::PathOutsideScope);
                break;
            };
            let Some(n) = normalize(&abs) else {
                expected = Err(DenyReason::PathOutsideScope);
                break;
            };
            let ok = if *w {
                under(&n, &perms.write)
            } else {
                under(&n, &perms.read) || under(&n, &perms.write)
            };
            if !ok {
                // A write beneath a root it may only read says so; anywhere else, nothing.
                expected = Err(if *w && under(&n, &perms.read) {
                    DenyReason::ReadOnlyRoot
                } else {
                    DenyReason::PathOutsideScope
                });
                break;
            }
            out.push(format!("/{}", n.join("/")));
        }
        if expected.is_ok() {
            expected = Ok(out);
        }
    }
    let req = Request::CallTool {
        tool: "read_text_file",
        access,
        paths: paths.iter().map(|(p, w)| (p.as_str(), *w)).collect(),
        exec: None,
    };
    let got = match policy.decide(&id, &req) {
        Decision::Allow(a) => Ok(a
            .paths()
            .iter()
            .map(|p| p.to_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()),
        Decision::Deny(r) => Err(r),
    };
    assert_eq!(got, expected, "policy {text:?} paths {paths:?}");
    // The normaliser alone agrees with the reference on every path.
    for (p, _) in &paths {
        if p.starts_with('/') && !p.contains('\0') {
            let a = mcpd_policy::lexical_normalize(Path::new(p))
                .map(|x| x.to_str().unwrap_or_default().to_owned());
            let b = normalize(p).map(|n| format!("/{}", n.join("/")));
            assert_eq!(a, b, "{p:?}");
        }
    }
});
