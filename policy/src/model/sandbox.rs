//! Deriving a client's worker [`SandboxSpec`] from the same permissions the broker decides
//! with, so the kernel's confinement and the broker's decisions cannot disagree. Pure: the
//! broker completes it with host facts (loader, libraries). Trusts a validated `Policy`.

use std::path::{Path, PathBuf};

use mcpd_ipc::{ExecSpec, LanguageGrant, ProgramGrant, SandboxSpec};

use super::types::{ClientId, Policy};

impl Policy {
    /// The namespaces and identity part of a client's sandbox.
    pub(super) fn isolation(&self, client: &ClientId) -> mcpd_ipc::Isolation {
        mcpd_ipc::Isolation {
            namespaces: true,
            uid: Some(self.worker_uid(client)),
            tmp_bytes: self.worker_tmp_bytes,
            aliases: Vec::new(),
        }
    }

    /// The sandbox a client's worker must enforce, derived from the same permissions the
    /// broker decides with. Unknown clients get an empty sandbox (no paths at all).
    pub fn sandbox_spec(&self, client: &ClientId) -> SandboxSpec {
        let Some(p) = self.permissions(client) else {
            return SandboxSpec {
                allow_degraded: self.allow_degraded_sandbox,
                isolation: self.isolation(client),
                ..SandboxSpec::default()
            };
        };
        let s = |v: &[PathBuf]| {
            v.iter()
                .filter_map(|p| p.to_str().map(str::to_string))
                .collect()
        };
        let path_str = |p: &Path| p.to_str().map(str::to_string);
        let operator_tools: Vec<_> = p
            .operator_tools
            .iter()
            .filter_map(|n| self.operator_tools.get(n))
            .map(|t| {
                let mut spec = t.spec.clone();
                if t.timeout_defaulted {
                    spec.timeout_secs = p.limits.command.timeout_secs;
                }
                spec
            })
            .collect();
        // Each program, shell command line, interpreter and operator tool runs in a nested
        // exec domain of its own (`exec_set`); the worker's outer domain executes their union.
        let programs: Vec<ProgramGrant> = p
            .exec
            .programs
            .iter()
            .filter_map(|g| {
                Some(ProgramGrant {
                    name: g.name.clone(),
                    path: path_str(&g.path)?,
                    exec_set: g.exec_set(),
                })
            })
            .collect();
        let languages: Vec<LanguageGrant> = p
            .exec
            .languages
            .iter()
            .filter_map(|l| {
                let interpreter = path_str(&l.interpreter)?;
                Some(LanguageGrant {
                    name: l.name.clone(),
                    exec_set: vec![interpreter.clone()],
                    interpreter,
                })
            })
            .collect();
        let shell = p.exec.shell.as_deref().and_then(path_str);
        // A command line cannot be argument-checked: it may run every listed program (with any
        // arguments), and nothing else; never the code-session interpreters or operator tools.
        let mut shell_exec_set: Vec<String> = match &shell {
            None => Vec::new(),
            Some(sh) => std::iter::once(sh.clone())
                .chain(programs.iter().flat_map(|g| g.exec_set.iter().cloned()))
                .collect(),
        };
        shell_exec_set.sort();
        shell_exec_set.dedup();
        let mut exec_paths: Vec<String> = programs
            .iter()
            .flat_map(|g| &g.exec_set)
            .chain(&shell_exec_set)
            .chain(languages.iter().flat_map(|l| &l.exec_set))
            .chain(operator_tools.iter().flat_map(|t| &t.exec_set))
            .cloned()
            .collect();
        exec_paths.sort();
        exec_paths.dedup();
        SandboxSpec {
            // A write root is also readable: a read root at or beneath one would only mount
            // read-only what the broker lets the client write.
            read_paths: s(&p
                .read
                .iter()
                .filter(|r| !p.write.iter().any(|w| r.starts_with(w)))
                .cloned()
                .collect::<Vec<_>>()),
            write_paths: s(&p.write),
            exec_paths,
            allow_network: p.exec.network,
            allow_degraded: self.allow_degraded_sandbox,
            rlimits: p.limits.rlimits.clone(),
            tool_limits: p.limits.tool.clone(),
            toolsets: self.toolsets.clone(),
            isolation: self.isolation(client),
            exec: ExecSpec {
                programs,
                shell,
                shell_exec_set,
                languages,
                env_allow: p.exec.env_allow.iter().cloned().collect(),
                env_fixed: p
                    .exec
                    .env_fixed
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                operator_tools,
                system_read_paths: Vec::new(),
                device_paths: Vec::new(),
                limits: p.limits.command.clone(),
            },
        }
    }
}
