//! The decision function: deny by default, explicit reasons, an `Allow` token only this crate
//! can create.

use std::path::{Component, Path, PathBuf};

use mcpd_ipc::ToolAccess;

use crate::model::{ClientId, Permissions, Policy};

/// What is being asked.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// May this tool be shown to / called by the client? (Used for `tools/list`.)
    SeeTool {
        /// tool name
        tool: &'a str,
        /// its access class
        access: ToolAccess,
    },
    /// A tool call, with the paths it names.
    CallTool {
        /// tool name
        tool: &'a str,
        /// its access class
        access: ToolAccess,
        /// (path as the client wrote it, whether it is written)
        paths: Vec<(&'a str, bool)>,
        /// For command and code tools: what would be executed.
        exec: Option<ExecRequest<'a>>,
    },
    /// Read a file as an MCP resource (`file://` URI): needs a read grant covering the path
    /// (the tool allow-list is about tools, not resources).
    ReadResource {
        /// The path from the URI.
        path: &'a str,
    },
}

/// What a command or code tool call would execute, as the client asked.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest<'a> {
    /// The program (or, with `shell`, the command line).
    pub program: Option<&'a str>,
    /// Its arguments.
    pub args: Vec<&'a str>,
    /// Run through `/bin/sh -c`.
    pub shell: bool,
    /// Code-session language.
    pub language: Option<&'a str>,
}

/// Why a request was denied. Stable codes for the audit log; client messages never carry paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The principal is not a configured client.
    UnknownClient,
    /// The tool is not in the client's allow-list.
    ToolNotAllowed,
    /// The client lacks the permission class the tool needs.
    MissingPermission,
    /// A path lies outside the client's read (or write) paths.
    PathOutsideScope,
    /// A write beneath a root the client may only read (it can list that root itself, so
    /// saying so reveals nothing outside its scope).
    ReadOnlyRoot,
    /// A path argument is malformed (empty, NUL byte, too long).
    InvalidPath,
    /// The program is not allow-listed for the client.
    ProgramNotAllowed,
    /// An argument matches none of the program's argument patterns.
    ArgumentNotAllowed,
    /// Shell command lines are not allowed for the client.
    ShellNotAllowed,
    /// The code language is not allowed for the client.
    LanguageNotAllowed,
}

impl DenyReason {
    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::UnknownClient => "unknown_client",
            DenyReason::ToolNotAllowed => "tool_not_allowed",
            DenyReason::MissingPermission => "missing_permission",
            DenyReason::PathOutsideScope => "path_outside_scope",
            DenyReason::ReadOnlyRoot => "read_only_root",
            DenyReason::InvalidPath => "invalid_path",
            DenyReason::ProgramNotAllowed => "program_not_allowed",
            DenyReason::ArgumentNotAllowed => "argument_not_allowed",
            DenyReason::ShellNotAllowed => "shell_not_allowed",
            DenyReason::LanguageNotAllowed => "language_not_allowed",
        }
    }
}

/// Proof that the policy allowed one request. Only this crate can construct it; dispatching a
/// call to a worker takes it by value.
#[derive(Debug)]
pub struct Allow {
    tool: String,
    rule: String,
    paths: Vec<PathBuf>,
}

impl Allow {
    /// The tool that was allowed.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// Which grants allowed it, for the audit log (e.g. `clients.alice tools=* read:/srv/data`).
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The paths of the request as they were checked, in the request's order: absolute
    /// (a relative path is joined to [`base_dir`]) and lexically normalised (`.` and `..`
    /// folded, repeated and trailing slashes dropped), each beneath a root that granted it.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

/// The outcome of [`Policy::decide`].
#[must_use = "a decision must be acted on: dispatch needs the Allow token"]
#[derive(Debug)]
pub enum Decision {
    /// Allowed.
    Allow(Allow),
    /// Denied, with the reason.
    Deny(DenyReason),
}

/// Longest path argument accepted, bytes.
pub const MAX_PATH_BYTES: usize = 4096;

impl Policy {
    /// Decide a request for a principal. Pure: no I/O, no clock.
    ///
    /// Paths are checked lexically against the canonical roots (`..` is folded without
    /// following symlinks). This is the first of three layers: the worker then resolves each
    /// path beneath an open root with `RESOLVE_BENEATH`, and Landlock enforces the same roots
    /// in the kernel. A lexical allow never widens what those layers permit.
    pub fn decide(&self, client: &ClientId, req: &Request<'_>) -> Decision {
        let Some(p) = self.permissions(client) else {
            return Decision::Deny(DenyReason::UnknownClient);
        };
        if let Request::ReadResource { path } = req {
            return match check_path(p, path, false) {
                Ok((root, checked)) => Decision::Allow(Allow {
                    tool: "resources/read".into(),
                    rule: format!("clients.{client} read:{}", root.display()),
                    paths: vec![checked],
                }),
                Err(r) => Decision::Deny(r),
            };
        }
        let (tool, access) = match req {
            Request::SeeTool { tool, access } | Request::CallTool { tool, access, .. } => {
                (*tool, *access)
            }
            Request::ReadResource { .. } => return Decision::Deny(DenyReason::InvalidPath),
        };
        if !p.tools.contains(tool) {
            return Decision::Deny(DenyReason::ToolNotAllowed);
        }
        let has = match access {
            ToolAccess::None => true,
            ToolAccess::FileRead => !p.read.is_empty() || !p.write.is_empty(),
            ToolAccess::FileWrite => !p.write.is_empty(),
            ToolAccess::Command => !p.exec.programs.is_empty() || p.exec.shell.is_some(),
            ToolAccess::Code => !p.exec.languages.is_empty(),
            ToolAccess::Operator => p.operator_tools.contains(tool),
        };
        if !has {
            return Decision::Deny(DenyReason::MissingPermission);
        }
        let mut rule = format!(
            "clients.{client} tools={}",
            if matches!(p.tools, crate::model::ToolSet::All) {
                "*"
            } else {
                tool
            }
        );
        if let Request::CallTool { exec, .. } = req {
            match (access, exec) {
                (ToolAccess::Command | ToolAccess::Code, None) => {
                    // A command or code tool that does not say what it runs is never called.
                    return Decision::Deny(DenyReason::MissingPermission);
                }
                (_, Some(e)) => match check_exec(p, access, e) {
                    Ok(what) => rule.push_str(&what),
                    Err(r) => return Decision::Deny(r),
                },
                _ => {}
            }
        }
        let mut checked = Vec::new();
        if let Request::CallTool { paths, .. } = req {
            for (path, write) in paths {
                match check_path(p, path, *write) {
                    Ok((root, norm)) => {
                        checked.push(norm);
                        let grant = format!(
                            " {}:{}",
                            if *write { "write" } else { "read" },
                            root.display()
                        );
                        if !rule.contains(&grant) {
                            rule.push_str(&grant);
                        }
                    }
                    Err(r) => return Decision::Deny(r),
                }
            }
        }
        Decision::Allow(Allow {
            tool: tool.to_string(),
            rule,
            paths: checked,
        })
    }
}

/// Check a command or code request against the client's execution grant; on success, the
/// part of the audit rule it used.
fn check_exec(
    p: &Permissions,
    access: ToolAccess,
    e: &ExecRequest<'_>,
) -> Result<String, DenyReason> {
    let mut rule = String::new();
    if let Some(lang) = e.language {
        let l = p
            .exec
            .language(lang)
            .ok_or(DenyReason::LanguageNotAllowed)?;
        rule.push_str(&format!(" code:{}", l.name));
    }
    if e.shell {
        if p.exec.shell.is_none() {
            return Err(DenyReason::ShellNotAllowed);
        }
        rule.push_str(" shell");
    } else if let Some(program) = e.program {
        let g = p
            .exec
            .program(program)
            .ok_or(DenyReason::ProgramNotAllowed)?;
        if !g.arg_patterns.is_empty()
            && !e
                .args
                .iter()
                .all(|a| g.arg_patterns.iter().any(|pat| pat.matches(a)))
        {
            return Err(DenyReason::ArgumentNotAllowed);
        }
        rule.push_str(&format!(" exec:{}", g.path.display()));
    } else if e.language.is_none() && access != ToolAccess::Code {
        // A command tool must name its program. (A code tool without a language, such as
        // resetting every session, only needs the code grant checked above.)
        return Err(DenyReason::ProgramNotAllowed);
    }
    Ok(rule)
}

/// The directory relative client paths are resolved against: the first read root, else the
/// first write root (the worker uses the same order: `SandboxSpec` read paths, then write paths).
pub fn base_dir(p: &Permissions) -> Option<&Path> {
    p.read.first().or(p.write.first()).map(PathBuf::as_path)
}

/// Check one client path; on success, the root that grants it and the normalised absolute path.
fn check_path<'p>(
    p: &'p Permissions,
    raw: &str,
    write: bool,
) -> Result<(&'p Path, PathBuf), DenyReason> {
    if raw.is_empty() || raw.len() > MAX_PATH_BYTES || raw.contains('\0') {
        return Err(DenyReason::InvalidPath);
    }
    let given = Path::new(raw);
    let abs = if given.is_absolute() {
        given.to_path_buf()
    } else {
        match base_dir(p) {
            Some(b) => b.join(given),
            None => return Err(DenyReason::PathOutsideScope),
        }
    };
    let norm = lexical_normalize(&abs).ok_or(DenyReason::PathOutsideScope)?;
    let inside = |roots: &'p [PathBuf]| {
        roots
            .iter()
            .find(|r| norm.starts_with(r))
            .map(PathBuf::as_path)
    };
    let found = if write {
        inside(&p.write)
    } else {
        inside(&p.read).or_else(|| inside(&p.write))
    };
    match found {
        Some(root) => Ok((root, norm)),
        None if write && inside(&p.read).is_some() => Err(DenyReason::ReadOnlyRoot),
        None => Err(DenyReason::PathOutsideScope),
    }
}

/// Fold `.` and `..` lexically. `None` if `..` climbs above `/`.
pub fn lexical_normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Limits, QuickStart, ToolSet};
    use proptest::prelude::*;

    fn fake_canon(p: &Path) -> std::io::Result<PathBuf> {
        if p.starts_with("/missing") {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        } else {
            Ok(p.to_path_buf())
        }
    }

    fn policy(text: &str) -> Policy {
        Policy::from_toml("test.toml", text, &fake_canon).unwrap()
    }

    fn id(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }

    fn call<'a>(tool: &'a str, access: ToolAccess, paths: Vec<(&'a str, bool)>) -> Request<'a> {
        Request::CallTool {
            tool,
            access,
            paths,
            exec: None,
        }
    }

    const CFG: &str = r#"
[stdio]
client = "alice"

[clients.alice]
roles = ["reader"]
write = ["/srv/out"]

[clients.bob]
read = ["/home/bob"]
tools = ["read_text_file"]

[roles.reader]
read = ["/srv/data"]
[roles.reader.limits]
call_timeout_secs = 30
"#;

    #[test]
    fn deny_by_default_unknown_client() {
        let p = policy(CFG);
        assert!(matches!(
            p.decide(
                &id("mallory"),
                &call(
                    "read_text_file",
                    ToolAccess::FileRead,
                    vec![("/srv/data/x", false)]
                )
            ),
            Decision::Deny(DenyReason::UnknownClient)
        ));
        let empty = policy("");
        assert!(matches!(
            empty.decide(
                &id("local"),
                &Request::SeeTool {
                    tool: "read_text_file",
                    access: ToolAccess::FileRead
                }
            ),
            Decision::Deny(DenyReason::UnknownClient)
        ));
        assert!(empty.stdio_client().is_none());
    }

    #[test]
    fn paths_must_be_inside_the_right_root() {
        let p = policy(CFG);
        let a = id("alice");
        let ok = |path, write| {
            matches!(
                p.decide(
                    &a,
                    &call(
                        "t",
                        if write {
                            ToolAccess::FileWrite
                        } else {
                            ToolAccess::FileRead
                        },
                        vec![(path, write)]
                    )
                ),
                Decision::Allow(_)
            )
        };
        assert!(ok("/srv/data/a.txt", false));
        match p.decide(
            &a,
            &call(
                "t",
                ToolAccess::FileWrite,
                vec![("/srv/out/x", true), ("/srv/data/y", false)],
            ),
        ) {
            Decision::Allow(al) => assert_eq!(
                al.rule(),
                "clients.alice tools=* write:/srv/out read:/srv/data"
            ),
            d => panic!("{d:?}"),
        }
        assert!(ok("/srv/out/a.txt", false), "write roots are readable");
        assert!(ok("/srv/out/a.txt", true));
        assert!(
            !ok("/srv/data/a.txt", true),
            "read-only root is not writable"
        );
        // ... and the refusal says so (a root the client lists); elsewhere it says nothing.
        let write = |path| p.decide(&a, &call("t", ToolAccess::FileWrite, vec![(path, true)]));
        assert!(matches!(
            write("/srv/data/a.txt"),
            Decision::Deny(DenyReason::ReadOnlyRoot)
        ));
        assert!(matches!(
            write("/srv/data-evil/a.txt"),
            Decision::Deny(DenyReason::PathOutsideScope)
        ));
        assert!(matches!(
            write("/srv/data/../etc/x"),
            Decision::Deny(DenyReason::PathOutsideScope)
        ));
        assert!(!ok("/srv/data-evil/a.txt", false), "prefix sibling");
        assert!(!ok("/srv/data/../secret", false), "dot-dot");
        assert!(!ok("/etc/passwd", false));
        assert!(!ok("/proc/self/root/srv/data/x", false));
        assert!(!ok("/../../srv", false));
        assert!(ok("/srv/data/sub/../b", false));
        assert!(ok("rel/file", false), "relative to the first root");
        assert!(!ok("../escape", false));
        assert!(!ok("", false));
        assert!(!ok("/srv/data/a\0b", false));
    }

    #[test]
    fn an_allow_carries_the_paths_as_checked() {
        let p = policy(CFG);
        let checked = |paths: Vec<(&str, bool)>| -> Vec<String> {
            match p.decide(&id("alice"), &call("t", ToolAccess::FileWrite, paths)) {
                Decision::Allow(a) => a
                    .paths()
                    .iter()
                    .map(|p| p.to_str().unwrap().to_string())
                    .collect(),
                d => panic!("{d:?}"),
            }
        };
        // Relative paths are joined to the first read root; option-looking values become
        // plain names beneath it; `.`, `..` and extra slashes are folded; order is kept.
        assert_eq!(
            checked(vec![
                ("-rf", false),
                ("--files0-from=/etc/passwd", false),
                ("-", false),
                ("/srv/out//new/./x/", true),
                ("sub/../b", false),
                ("/srv/data", false),
            ]),
            vec![
                "/srv/data/-rf",
                "/srv/data/--files0-from=/etc/passwd",
                "/srv/data/-",
                "/srv/out/new/x",
                "/srv/data/b",
                "/srv/data",
            ]
        );
        assert!(checked(vec![]).is_empty());
        match p.decide(&id("alice"), &Request::ReadResource { path: "a/./b" }) {
            Decision::Allow(a) => assert_eq!(a.paths(), [PathBuf::from("/srv/data/a/b")]),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn tool_allow_list_and_permission_classes() {
        let p = policy(CFG);
        let b = id("bob");
        assert!(matches!(
            p.decide(
                &b,
                &Request::SeeTool {
                    tool: "read_text_file",
                    access: ToolAccess::FileRead
                }
            ),
            Decision::Allow(_)
        ));
        assert!(matches!(
            p.decide(
                &b,
                &Request::SeeTool {
                    tool: "list_directory",
                    access: ToolAccess::FileRead
                }
            ),
            Decision::Deny(DenyReason::ToolNotAllowed)
        ));
        let a = id("alice");
        assert!(matches!(
            p.decide(
                &a,
                &Request::SeeTool {
                    tool: "write_file",
                    access: ToolAccess::FileWrite
                }
            ),
            Decision::Allow(_)
        ));
        let bob_write = policy("[clients.bob]\nread=[\"/home/bob\"]\n");
        assert!(matches!(
            bob_write.decide(
                &b,
                &Request::SeeTool {
                    tool: "write_file",
                    access: ToolAccess::FileWrite
                }
            ),
            Decision::Deny(DenyReason::MissingPermission)
        ));
        assert!(matches!(
            p.decide(
                &a,
                &Request::SeeTool {
                    tool: "run_command",
                    access: ToolAccess::Command
                }
            ),
            Decision::Deny(DenyReason::MissingPermission)
        ));
    }

    #[test]
    fn limits_merge_client_first_then_min_of_roles() {
        let p = policy(CFG);
        let a = p.permissions(&id("alice")).unwrap();
        assert_eq!(a.limits.call_timeout_secs, 30);
        assert_eq!(a.read, vec![PathBuf::from("/srv/data")]);
        assert_eq!(a.write, vec![PathBuf::from("/srv/out")]);
        assert_eq!(a.tools, ToolSet::All);
        // A role's tool list restricts a client that specifies none itself.
        let r = policy("[clients.c]\nroles = [\"r\"]\n[roles.r]\nread = [\"/x\"]\ntools = [\"read_text_file\"]\n");
        assert_eq!(
            r.permissions(&id("c")).unwrap().tools,
            ToolSet::Only(["read_text_file".to_string()].into())
        );
        let spec = p.sandbox_spec(&id("alice"));
        assert_eq!(spec.read_paths, vec!["/srv/data".to_string()]);
        assert_eq!(spec.write_paths, vec!["/srv/out".to_string()]);
        assert!(spec.exec_paths.is_empty());
        assert!(!spec.allow_network);
        // A root both read and written (here through two roles), or read beneath a written
        // one, is mounted writable: write implies read, and a read-only mount on top would
        // refuse in the kernel what the broker allows.
        let both = policy("[clients.c]\nread = [\"/own\", \"/d/sub\"]\nroles = [\"r\", \"w\"]\n[roles.r]\nread = [\"/d\"]\n[roles.w]\nwrite = [\"/d\"]\n");
        let spec = both.sandbox_spec(&id("c"));
        assert_eq!(spec.read_paths, vec!["/own".to_string()]);
        assert_eq!(spec.write_paths, vec!["/d".to_string()]);
        // Without a limits table of its own, a client gets the smallest of its roles' values,
        // not its first role's.
        let r = policy("[clients.c]\nread = [\"/x\"]\nroles = [\"big\", \"small\"]\n[roles.big.limits]\ncall_timeout_secs = 90\n[roles.small.limits]\ncall_timeout_secs = 20\n");
        assert_eq!(
            r.permissions(&id("c")).unwrap().limits.call_timeout_secs,
            20
        );
    }

    #[test]
    fn config_errors_name_file_line_and_column() {
        let e = Policy::from_toml(
            "c.toml",
            "[clients.a]\nread = [\"/x\"]\nbogus = 1\n",
            &fake_canon,
        )
        .unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("c.toml", Some(3)));
        assert!(e.to_string().starts_with("c.toml:3:1:"), "{e}");
        let e = Policy::from_toml("c.toml", "[clients.a]\nroles = [\"nope\"]\n", &fake_canon)
            .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("unknown role 'nope'"));
        let e = Policy::from_toml(
            "c.toml",
            "[clients.a]\nread = [\"relative/p\"]\n",
            &fake_canon,
        )
        .unwrap_err();
        assert!(e.message.contains("must be absolute"));
        let e = Policy::from_toml(
            "c.toml",
            "[clients.a]\nread = [\"/missing/p\"]\n",
            &fake_canon,
        )
        .unwrap_err();
        assert!(e.message.contains("cannot resolve"));
        let e =
            Policy::from_toml("c.toml", "[clients.a]\n\nsudo = true\n", &fake_canon).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("refused by design"));
        let e =
            Policy::from_toml("c.toml", "[stdio]\nclient = \"ghost\"\n", &fake_canon).unwrap_err();
        assert!(e.message.contains("unknown client"));
        let e = Policy::from_toml("c.toml", "[clients.\"bad id!\"]\n", &fake_canon).unwrap_err();
        assert!(e.message.contains("invalid client id"));
        let e = Policy::from_toml("c.toml", "[server]\nmax_message_bytes = 0\n", &fake_canon)
            .unwrap_err();
        assert!(e.message.contains("max_message_bytes"));
        let e = Policy::from_toml("c.toml", "[server]\nipc_spin_us = 10001\n", &fake_canon)
            .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(
            e.message.contains("ipc_spin_us must be at most 10000"),
            "{e}"
        );
    }

    #[test]
    fn ipc_spin_defaults_and_can_be_turned_off() {
        assert_eq!(policy("").ipc_spin_us, crate::model::DEFAULT_IPC_SPIN_US);
        assert_eq!(policy("[server]\nipc_spin_us = 0\n").ipc_spin_us, 0);
        assert_eq!(
            policy("[server]\nipc_spin_us = 10000\n").ipc_spin_us,
            10_000
        );
    }

    #[test]
    fn request_state_keys_are_absolute_paired_and_the_ttl_bounded() {
        let h = policy("[http]\nstate_key_file = \"/etc/mcpd/state.key\"\n");
        assert_eq!(
            h.http().state_key_file.as_deref(),
            Some(std::path::Path::new("/etc/mcpd/state.key"))
        );
        assert_eq!(h.http().state_ttl_secs, 600);
        for (text, want) in [
            (
                "[http]\nstate_key_file = \"state.key\"\n",
                "must be an absolute path",
            ),
            (
                "[http]\nstate_key_previous_file = \"/etc/mcpd/old.key\"\n",
                "needs http.state_key_file",
            ),
            ("[http]\nstate_ttl_secs = 0\n", "between 1 and 86400"),
            ("[http]\nstate_ttl_secs = 86401\n", "between 1 and 86400"),
        ] {
            let e = Policy::from_toml("c.toml", text, &fake_canon).unwrap_err();
            assert!(e.message.contains(want), "{text}: {e}");
            assert_eq!(e.line, Some(2), "{text}: {e}");
        }
    }

    #[test]
    fn an_instance_name_is_a_plain_token() {
        assert_eq!(policy("").instance, None);
        assert_eq!(
            policy("[server]\ninstance = \"edge-2\"\n")
                .instance
                .as_deref(),
            Some("edge-2")
        );
        for bad in ["", "-a", "A", "a.b", "a b", &"x".repeat(33)] {
            let text = format!("[server]\ninstance = \"{bad}\"\n");
            let e = Policy::from_toml("c.toml", &text, &fake_canon).unwrap_err();
            assert_eq!(e.line, Some(2), "{bad}: {e}");
            assert!(e.message.contains("server.instance"), "{bad}: {e}");
        }
        // The flag, checked the same way.
        let cwd = std::path::Path::new("/");
        let o = |name: &str| crate::Overlay {
            instance: Some(name.into()),
            ..Default::default()
        };
        let p = Policy::load(Some(("c.toml", "")), &o("b"), cwd, &fake_canon).unwrap();
        assert_eq!(p.instance.as_deref(), Some("b"));
        assert!(
            Policy::load(Some(("c.toml", "")), &o("B.1"), cwd, &fake_canon)
                .unwrap_err()
                .to_string()
                .starts_with("--instance 'B.1' must be")
        );
    }

    #[test]
    fn stop_grace_defaults_and_is_bounded() {
        assert_eq!(policy("").stop_grace_secs, 10);
        assert_eq!(policy("[server]\nstop_grace_secs = 0\n").stop_grace_secs, 0);
        let e = Policy::from_toml("c.toml", "[server]\nstop_grace_secs = 3601\n", &fake_canon)
            .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(
            e.message.contains("stop_grace_secs must be at most 3600"),
            "{e}"
        );
    }

    #[test]
    fn audit_log_must_be_out_of_every_workers_reach() {
        let ok = policy("[clients.c]\nread = [\"/srv/data\"]\n[audit]\npath = \"/var/log/mcpd/audit.jsonl\"\nmode = \"strict\"\n");
        let a = ok.audit.as_ref().unwrap();
        assert!(a.strict);
        assert_eq!(a.path, PathBuf::from("/var/log/mcpd/audit.jsonl"));
        let e = Policy::from_toml(
            "c.toml",
            "[clients.c]\nread = [\"/var/log\"]\n[audit]\npath = \"/var/log/mcpd/audit.jsonl\"\n",
            &fake_canon,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(
            e.message
                .contains("lies inside /var/log which client 'c' may access"),
            "{e}"
        );
        let e = Policy::from_toml(
            "c.toml",
            "[clients.c]\nglobal_write = true\n[audit]\npath = \"/var/log/a.jsonl\"\n",
            &fake_canon,
        )
        .unwrap_err();
        assert!(e.message.contains("lies inside /"), "{e}");
        let e = Policy::from_toml(
            "c.toml",
            "[audit]\npath = \"/x/a\"\nmode = \"sometimes\"\n",
            &fake_canon,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3));
        let mut q = Policy::quick_start(
            &QuickStart {
                read: vec![PathBuf::from("/data")],
                write: vec![],
                ..QuickStart::default()
            },
            Path::new("/"),
            &fake_canon,
        )
        .unwrap();
        assert!(q
            .set_audit_path(Path::new("/data/audit.jsonl"), &fake_canon)
            .is_err());
        q.set_audit_path(Path::new("/logs/audit.jsonl"), &fake_canon)
            .unwrap();
        assert!(!q.audit.as_ref().unwrap().strict);
    }

    #[test]
    fn the_audit_path_is_judged_after_resolving_its_symlinks() {
        // /var/log/mcpd/link.jsonl -> /srv/data/stolen.jsonl; /var/log/dirlink -> /srv/data.
        let links = |p: &Path| -> std::io::Result<PathBuf> {
            if p == Path::new("/var/log/mcpd/link.jsonl") {
                Ok(PathBuf::from("/srv/data/stolen.jsonl"))
            } else if let Ok(rest) = p.strip_prefix("/var/log/dirlink") {
                Ok(Path::new("/srv/data").join(rest))
            } else if p == Path::new("/var/log/mcpd/new.jsonl") {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            } else {
                fake_canon(p)
            }
        };
        let cfg = |path: &str| {
            format!("[clients.c]\nwrite = [\"/srv/data\"]\n[audit]\npath = \"{path}\"\n")
        };
        for path in ["/var/log/mcpd/link.jsonl", "/var/log/dirlink/audit.jsonl"] {
            let e = Policy::from_toml("c.toml", &cfg(path), &links).unwrap_err();
            assert_eq!(e.line, Some(4), "{path}: {e}");
            assert!(
                e.message.contains("audit log /srv/data/")
                    && e.message
                        .contains("lies inside /srv/data which client 'c' may access"),
                "{path}: {e}"
            );
        }
        // A file that does not exist yet is created at the resolved directory.
        let p = Policy::from_toml("c.toml", &cfg("/var/log/mcpd/new.jsonl"), &links).unwrap();
        assert_eq!(
            p.audit.as_ref().unwrap().path,
            PathBuf::from("/var/log/mcpd/new.jsonl")
        );
        // A link to somewhere out of reach is followed, loudly.
        let elsewhere = |p: &Path| -> std::io::Result<PathBuf> {
            if p == Path::new("/var/log/mcpd/link.jsonl") {
                Ok(PathBuf::from("/srv/logs/real.jsonl"))
            } else {
                fake_canon(p)
            }
        };
        let p = Policy::from_toml("c.toml", &cfg("/var/log/mcpd/link.jsonl"), &elsewhere).unwrap();
        assert_eq!(
            p.audit.as_ref().unwrap().path,
            PathBuf::from("/srv/logs/real.jsonl")
        );
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("resolves to /srv/logs/real.jsonl")),
            "{:?}",
            p.warnings
        );
        // A client root that is one of the log's sibling files (head, rotated) is refused too.
        for sib in [
            "/var/log/mcpd/a.jsonl.head",
            "/var/log/mcpd/a.jsonl.00000000000000000041",
        ] {
            let e = Policy::from_toml(
                "c.toml",
                &format!(
                    "[clients.c]\nread = [\"{sib}\"]\n[audit]\npath = \"/var/log/mcpd/a.jsonl\"\n"
                ),
                &fake_canon,
            )
            .unwrap_err();
            assert!(
                e.message.contains("which client 'c' may access"),
                "{sib}: {e}"
            );
        }
    }

    #[test]
    fn an_audit_log_without_a_checkpoint_key_is_loud() {
        let p = policy("[audit]\npath = \"/var/log/mcpd/a.jsonl\"\n");
        assert!(p.describe().contains(
            "WARNING: audit.checkpoint_key is not set: anyone who can write the audit log can rewrite it"
        ));
        assert!(p.describe().contains("mcpd audit keygen"));
        let p = policy(
            "[audit]\npath = \"/var/log/mcpd/a.jsonl\"\ncheckpoint_key = \"/etc/mcpd/k.pem\"\n",
        );
        assert!(
            !p.describe().contains("checkpoint_key is not set"),
            "{}",
            p.describe()
        );
        // --audit-log without a configured [audit]: loud as well.
        let mut q =
            Policy::quick_start(&QuickStart::default(), Path::new("/work"), &fake_canon).unwrap();
        q.set_audit_path(Path::new("/logs/audit.jsonl"), &fake_canon)
            .unwrap();
        assert!(q
            .warnings
            .iter()
            .any(|w| w.contains("checkpoint_key is not set")));
    }

    #[test]
    fn global_write_is_explicit_and_loud() {
        let p = policy("[clients.root]\nglobal_write = true\n");
        let perms = p.permissions(&id("root")).unwrap();
        assert_eq!(perms.write, vec![PathBuf::from("/")]);
        assert!(p.warnings.iter().any(|w| w.contains("global_write")));
        assert!(p.describe().contains("GLOBAL WRITE"));
    }

    #[test]
    fn quick_start_and_embedded_default() {
        let d = Policy::quick_start(&QuickStart::default(), Path::new("/work/proj"), &fake_canon)
            .unwrap();
        let c = d.stdio_client().unwrap().clone();
        let perms = d.permissions(&c).unwrap();
        assert_eq!(perms.read, vec![PathBuf::from("/work/proj")]);
        assert!(perms.write.is_empty(), "embedded default is read-only");
        let q = QuickStart {
            read: vec![PathBuf::from("/a")],
            write: vec![PathBuf::from("b")],
            ..QuickStart::default()
        };
        let p = Policy::quick_start(&q, Path::new("/cwd"), &fake_canon).unwrap();
        let perms = p.permissions(p.stdio_client().unwrap()).unwrap();
        assert_eq!(perms.read, vec![PathBuf::from("/a")]);
        assert_eq!(perms.write, vec![PathBuf::from("/cwd/b")]);
    }

    #[test]
    fn output_limit_default_ceiling_and_merge() {
        // The documented default (packaging/mcpd.toml, docs/ARCHITECTURE.md): 10 MiB, for
        // command output and every other result alike, with a flag-only policy or a config.
        assert_eq!(crate::DEFAULT_MAX_OUTPUT_BYTES, 10_485_760);
        let q = Policy::quick_start(&QuickStart::default(), Path::new("/w"), &fake_canon).unwrap();
        let p = policy(CFG);
        for l in [
            &q.permissions(q.stdio_client().unwrap()).unwrap().limits,
            &p.permissions(&id("alice")).unwrap().limits,
            &Limits::default(),
        ] {
            assert_eq!(l.tool.max_output_bytes, 10_485_760);
            assert_eq!(l.command.max_output_bytes, 10_485_760);
        }
        let spec = p.sandbox_spec(&id("alice"));
        assert_eq!(spec.tool_limits.max_output_bytes, 10_485_760);
        assert_eq!(spec.exec.limits.max_output_bytes, 10_485_760);
        // A configured value applies to both; a client's own value wins over its roles',
        // which merge to the smallest.
        let p = policy(
            "[clients.a]\nread = [\"/x\"]\nroles = [\"r\", \"s\"]\n[roles.r.limits]\nmax_output_bytes = 5000\n[roles.s.limits]\nmax_output_bytes = 3000\n[clients.b]\nread = [\"/x\"]\nroles = [\"r\"]\n[clients.b.limits]\nmax_output_bytes = 65536\n",
        );
        let l = &p.permissions(&id("a")).unwrap().limits;
        assert_eq!(
            (l.tool.max_output_bytes, l.command.max_output_bytes),
            (3000, 3000)
        );
        let l = &p.permissions(&id("b")).unwrap().limits;
        assert_eq!(
            (l.tool.max_output_bytes, l.command.max_output_bytes),
            (65536, 65536)
        );
        // Above the ceiling (a result must fit one IPC frame): lowered to it.
        assert_eq!(crate::MAX_RESULT_BYTES_CEILING, 12 * 1024 * 1024);
        let p = policy("[clients.a]\nread = [\"/x\"]\n[clients.a.limits]\nmax_output_bytes = 100000000\nmax_read_bytes = 100000000\n");
        let l = &p.permissions(&id("a")).unwrap().limits;
        assert_eq!(l.tool.max_output_bytes, crate::MAX_RESULT_BYTES_CEILING);
        assert_eq!(l.command.max_output_bytes, crate::MAX_RESULT_BYTES_CEILING);
        assert_eq!(l.tool.max_read_bytes, crate::MAX_RESULT_BYTES_CEILING);
    }

    /// Naive reference: a path is inside a root iff, after folding, its string equals the root
    /// or starts with the root followed by '/'.
    fn naive_inside(path: &str, root: &str) -> bool {
        let mut stack: Vec<&str> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if stack.pop().is_none() {
                        return false;
                    }
                }
                s => stack.push(s),
            }
        }
        let folded = format!("/{}", stack.join("/"));
        folded == root || folded.starts_with(&format!("{root}/"))
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_naive_reference(parts in proptest::collection::vec(prop_oneof![
            Just("srv"), Just("data"), Just("data-evil"), Just(".."), Just("."), Just("x"), Just("")
        ], 0..8)) {
            let p = policy("[clients.c]\nread = [\"/srv/data\"]\n");
            let path = format!("/{}", parts.join("/"));
            let got = matches!(p.decide(&id("c"), &call("t", ToolAccess::FileRead, vec![(&path, false)])), Decision::Allow(_));
            prop_assert_eq!(got, naive_inside(&path, "/srv/data"), "path {}", path);
        }
    }

    const EXEC_CFG: &str = r#"
[clients.dev]
read = ["/srv/code"]
exec = ["git", "/usr/bin/cat"]
code = ["python"]
env = ["LANG", "TZ=UTC"]
[clients.dev.exec_args]
git = ["status", "log", "--oneline", "-n", "[0-9]{1,3}"]

[clients.ops]
roles = ["operators"]

[roles.operators]
read = ["/srv/data"]

[tools.disk_usage]
description = "Disk usage of a directory"
command = ["/usr/bin/du", "-s", "--", "{path}"]
input_schema = { type = "object", properties = { path = { type = "string", maxLength = 256 } }, required = ["path"], additionalProperties = false }
read_path_args = ["path"]
roles = ["operators"]
"#;

    fn exec_call<'a>(tool: &'a str, access: ToolAccess, e: ExecRequest<'a>) -> Request<'a> {
        Request::CallTool {
            tool,
            access,
            paths: vec![],
            exec: Some(e),
        }
    }

    #[test]
    fn commands_are_allow_listed_and_argument_patterns_apply() {
        let p = policy(EXEC_CFG);
        let dev = id("dev");
        let run = |program: &'static str, args: Vec<&'static str>| {
            p.decide(
                &dev,
                &exec_call(
                    "run_command",
                    ToolAccess::Command,
                    ExecRequest {
                        program: Some(program),
                        args,
                        ..ExecRequest::default()
                    },
                ),
            )
        };
        match run("git", vec!["log", "--oneline", "-n", "5"]) {
            Decision::Allow(a) => {
                assert!(a.rule().contains("exec:/usr/local/bin/git"), "{}", a.rule())
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            run("git", vec!["push"]),
            Decision::Deny(DenyReason::ArgumentNotAllowed)
        ));
        // Anchored: a pattern never matches a prefix or suffix.
        assert!(matches!(
            run("git", vec!["statusx"]),
            Decision::Deny(DenyReason::ArgumentNotAllowed)
        ));
        assert!(matches!(
            run("git", vec!["-n", "1234"]),
            Decision::Deny(DenyReason::ArgumentNotAllowed)
        ));
        // No patterns: any argument.
        assert!(matches!(
            run("/usr/bin/cat", vec!["--anything"]),
            Decision::Allow(_)
        ));
        assert!(matches!(
            run("cat", vec![]),
            Decision::Deny(DenyReason::ProgramNotAllowed)
        ));
        assert!(matches!(
            run("rm", vec![]),
            Decision::Deny(DenyReason::ProgramNotAllowed)
        ));
        assert!(matches!(
            run("/usr/local/bin/../bin/git", vec![]),
            Decision::Deny(DenyReason::ProgramNotAllowed)
        ));
        let shell = p.decide(
            &dev,
            &exec_call(
                "run_command",
                ToolAccess::Command,
                ExecRequest {
                    program: Some("git status"),
                    shell: true,
                    ..ExecRequest::default()
                },
            ),
        );
        assert!(matches!(shell, Decision::Deny(DenyReason::ShellNotAllowed)));
        // A command tool that does not say what it runs is denied.
        assert!(matches!(
            p.decide(&dev, &call("run_command", ToolAccess::Command, vec![])),
            Decision::Deny(DenyReason::MissingPermission)
        ));
        // Another client has no execution grant at all.
        assert!(matches!(
            p.decide(
                &id("ops"),
                &Request::SeeTool {
                    tool: "run_command",
                    access: ToolAccess::Command
                }
            ),
            Decision::Deny(DenyReason::MissingPermission)
        ));
    }

    #[test]
    fn code_languages_and_environment() {
        let p = policy(EXEC_CFG);
        let dev = id("dev");
        let code = |lang: &'static str| {
            p.decide(
                &dev,
                &exec_call(
                    "run_code",
                    ToolAccess::Code,
                    ExecRequest {
                        language: Some(lang),
                        ..ExecRequest::default()
                    },
                ),
            )
        };
        assert!(matches!(code("python3"), Decision::Allow(_)));
        assert!(matches!(code("python"), Decision::Allow(_)));
        assert!(matches!(
            code("node"),
            Decision::Deny(DenyReason::LanguageNotAllowed)
        ));
        let spec = p.sandbox_spec(&dev);
        assert_eq!(spec.exec.languages[0].name, "python3");
        assert!(spec.exec_paths.contains(&"/usr/local/bin/git".to_string()));
        assert!(spec.exec_paths.contains(&"/usr/bin/cat".to_string()));
        assert!(spec
            .exec_paths
            .contains(&"/usr/local/bin/python3".to_string()));
        assert_eq!(spec.exec.env_allow, vec!["LANG".to_string()]);
        assert_eq!(
            spec.exec.env_fixed,
            vec![("TZ".to_string(), "UTC".to_string())]
        );
        assert!(!spec.allow_network);
        // A client may never be handed the loader's environment.
        let err = Policy::from_toml(
            "t.toml",
            "[clients.x]\nread=[\"/a\"]\nenv=[\"LD_PRELOAD\"]\n",
            &fake_canon,
        )
        .unwrap_err();
        assert!(err.to_string().contains("LD_PRELOAD"), "{err}");
        assert_eq!(err.line, Some(3));
    }

    #[test]
    fn operator_tools_follow_roles_and_validate_arguments() {
        let p = policy(EXEC_CFG);
        let see = |who: &str| {
            matches!(
                p.decide(
                    &id(who),
                    &Request::SeeTool {
                        tool: "disk_usage",
                        access: ToolAccess::Operator
                    }
                ),
                Decision::Allow(_)
            )
        };
        assert!(see("ops"));
        assert!(!see("dev"));
        let t = p.operator_tool("disk_usage").unwrap();
        assert_eq!(t.spec.argv, vec!["/usr/bin/du", "-s", "--", "{path}"]);
        assert!(t
            .validate(&serde_json::json!({"path": "/srv/data"}))
            .is_ok());
        let e = t.validate(&serde_json::json!({"path": 5})).unwrap_err();
        assert!(e.contains("/path"), "{e}");
        assert!(t.validate(&serde_json::json!({})).is_err());
        assert!(t
            .validate(&serde_json::json!({"path": "a", "x": 1}))
            .is_err());
        let spec = p.sandbox_spec(&id("ops"));
        assert_eq!(spec.exec.operator_tools.len(), 1);
        assert!(spec.exec_paths.contains(&"/usr/bin/du".to_string()));
        assert!(p.sandbox_spec(&id("dev")).exec.operator_tools.is_empty());
    }

    #[test]
    fn every_program_interpreter_and_tool_gets_its_own_exec_set() {
        let p = policy(
            r#"
[clients.dev]
write = ["/srv/code"]
exec = ["git", "/usr/bin/env"]
code = ["python3"]
shell = true
[clients.dev.exec_helpers]
git = ["/usr/lib/git-core", "/usr/lib/git-core"]

[tools.du]
description = "du"
command = ["/usr/bin/du", "{p}"]
input_schema = { type = "object", properties = { p = { type = "string" } } }
helpers = ["/usr/lib/du-helpers"]
clients = ["dev"]
"#,
        );
        let dev = id("dev");
        let perms = p.permissions(&dev).unwrap();
        assert_eq!(
            perms.exec.programs[0].helpers,
            vec![PathBuf::from("/usr/lib/git-core")]
        );
        assert!(p.describe().contains("helpers: /usr/lib/git-core"));
        let spec = p.sandbox_spec(&dev);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let git = &spec.exec.programs[0];
        assert_eq!(git.path, "/usr/local/bin/git");
        assert_eq!(
            git.exec_set,
            set(&["/usr/local/bin/git", "/usr/lib/git-core"])
        );
        assert_eq!(spec.exec.programs[1].exec_set, set(&["/usr/bin/env"]));
        // The interpreter executes only itself; never the client's programs.
        assert_eq!(
            spec.exec.languages[0].exec_set,
            set(&["/usr/local/bin/python3"])
        );
        // A command line: the shell and every listed program (with its helpers), no
        // interpreter and no operator tool.
        assert_eq!(
            spec.exec.shell_exec_set,
            set(&[
                "/bin/sh",
                "/usr/bin/env",
                "/usr/lib/git-core",
                "/usr/local/bin/git"
            ])
        );
        assert_eq!(
            spec.exec.operator_tools[0].exec_set,
            set(&["/usr/bin/du", "/usr/lib/du-helpers"])
        );
        // The worker's outer domain executes the union.
        for s in spec
            .exec
            .programs
            .iter()
            .flat_map(|g| &g.exec_set)
            .chain(&spec.exec.shell_exec_set)
            .chain(spec.exec.languages.iter().flat_map(|l| &l.exec_set))
            .chain(spec.exec.operator_tools.iter().flat_map(|t| &t.exec_set))
        {
            assert!(spec.exec_paths.contains(s), "{s} not in exec_paths");
        }
        // Without a shell grant there is no shell set.
        let q = policy("[clients.c]\nread = [\"/a\"]\nexec = [\"cat\"]\n");
        assert!(q.sandbox_spec(&id("c")).exec.shell_exec_set.is_empty());
    }

    #[test]
    fn exec_helpers_are_checked_at_load() {
        // A missing helper: an error naming the file and the helper's line.
        let err = Policy::from_toml(
            "t.toml",
            "[clients.c]\nexec = [\"git\"]\n[clients.c.exec_helpers]\ngit = [\"/missing/git-core\"]\n",
            &fake_canon,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("t.toml:4:"), "{err}");
        assert!(err.to_string().contains("/missing/git-core"), "{err}");
        for (text, want, line) in [
            (
                "[clients.c]\nexec = [\"git\"]\n[clients.c.exec_helpers]\ngit = [\"lib/git-core\"]\n",
                "must be absolute",
                4,
            ),
            (
                "[clients.c]\nexec = [\"git\"]\n[clients.c.exec_helpers]\ngit = [\"/usr/lib/../bin\"]\n",
                "must not contain '..'",
                4,
            ),
            (
                "[clients.c]\nexec = [\"git\"]\n[clients.c.exec_helpers]\ncat = [\"/usr/lib\"]\n",
                "exec_helpers.cat names a program that is not in exec",
                4,
            ),
            (
                "[tools.t]\ndescription = \"d\"\ncommand = [\"/bin/echo\"]\nclients = [\"c\"]\nhelpers = [\"/missing/x\"]\n[clients.c]\n",
                "/missing/x",
                5,
            ),
        ] {
            let err = Policy::from_toml("t.toml", text, &fake_canon).unwrap_err();
            assert!(err.to_string().contains(want), "{text}: {err}");
            assert_eq!(err.line, Some(line), "{err}");
        }
    }

    #[test]
    fn operator_tool_config_errors_are_located() {
        let bad = [
            ("[tools.t]\ndescription = \"d\"\ncommand = [\"/bin/echo\", \"{nope}\"]\nroles = []\nclients = [\"c\"]\n[clients.c]\nread = [\"/a\"]\n", "placeholder {nope}"),
            ("[tools.t]\ndescription = \"d\"\ncommand = [\"/bin/echo\"]\n", "deny by default"),
            ("[tools.t]\ndescription = \"d\"\ncommand = [\"{x}\"]\nclients = [\"c\"]\n[clients.c]\n", "cannot be a placeholder"),
            ("[tools.t]\ndescription = \"d\"\ncommand = [\"/bin/echo\"]\nroles = [\"ghost\"]\n", "unknown role"),
            ("[tools.t]\ndescription = \"d\"\ncommand = [\"/bin/echo\"]\nclients = [\"c\"]\ninput_schema = { type = \"array\" }\n[clients.c]\n", "type = \"object\""),
            ("[clients.c]\nexec = [\"bin/ls\"]\n", "bare name or an absolute path"),
            ("[clients.c]\nexec = [\"/missing/ls\"]\n", "program '/missing/ls'"),
            ("[clients.c]\nexec = [\"ls\"]\n[clients.c.exec_args]\nls = [\"(\"]\n", "invalid argument pattern"),
            ("[clients.c]\ncode = [\"cobol\"]\n", "unknown code language"),
        ];
        for (text, want) in bad {
            let err = Policy::from_toml("t.toml", text, &fake_canon).unwrap_err();
            assert!(err.to_string().contains(want), "{text}: {err}");
            assert!(err.to_string().starts_with("t.toml"), "{err}");
        }
    }
}
