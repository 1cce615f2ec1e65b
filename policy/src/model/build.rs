//! Building a [`Policy`] from a parsed [`RawConfig`]: server settings, clients and roles,
//! operator tools, prompts, audit settings, with every path made absolute, free of `..` and
//! canonicalised through the caller's [`Canonicalize`]. Does no I/O itself and no matching
//! (see `crate::decide`). Trusts the operator's file only after these checks; every error
//! names the file and line.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use mcpd_ipc::CommandLimits;
use toml::Spanned;

use super::http::http_settings;
use super::merge::merge;
use super::types::{
    AuditSettings, Canonicalize, CgroupSetting, ClientId, Policy, UidRange, DEFAULT_CLIENT,
    DEFAULT_IPC_SPIN_US, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_STOP_GRACE_SECS,
    DEFAULT_WORKER_IDLE_SECS, DEFAULT_WORKER_TMP_BYTES, DEFAULT_WORKER_UIDS, MAX_IPC_SPIN_US,
    MAX_MESSAGE_BYTES_CEILING, MAX_STOP_GRACE_SECS, MAX_WORKER_TMP_BYTES,
};
use crate::config::{self, ConfigError, RawConfig, RawGrant, Source};
use crate::exec::{self as exec_grant};

impl Policy {
    /// Parse and validate a configuration file's text.
    pub fn from_toml(file: &str, text: &str, canon: Canonicalize<'_>) -> Result<Self, ConfigError> {
        let raw = config::parse(file, text)?;
        Self::build(&Source::new(file, text), raw, canon)
    }

    pub(super) fn build(
        src: &Source,
        raw: RawConfig,
        canon: Canonicalize<'_>,
    ) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let server = &raw.server;
        let max_message_bytes = server
            .max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes == 0 || max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            return Err(src.error(
                None,
                format!(
                    "server.max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES_CEILING}"
                ),
            ));
        }
        if server.allow_degraded_sandbox {
            warnings.push("server.allow_degraded_sandbox = true: workers may run without full Landlock enforcement".into());
        }
        for (name, role) in &raw.roles {
            if !role.get_ref().roles.is_empty() {
                return Err(src.error(
                    Some(role.span()),
                    format!("role '{name}': roles cannot include other roles"),
                ));
            }
            if let Some(i) = &role.get_ref().identity {
                return Err(src.error(
                    Some(i.span()),
                    format!("role '{name}': an identity belongs to a client, not a role"),
                ));
            }
        }
        let mut identities = crate::identity::IdentityRules::default();
        let mut clients = BTreeMap::new();
        for (name, grant) in &raw.clients {
            let id = ClientId::parse(name).ok_or_else(|| {
                src.error(
                    Some(grant.span()),
                    format!(
                        "invalid client id '{name}' (allowed: A-Z a-z 0-9 _ . @ -, at most 128)"
                    ),
                )
            })?;
            let mut parts: Vec<(&str, &Spanned<RawGrant>)> = vec![(name.as_str(), grant)];
            for r in &grant.get_ref().roles {
                let role = raw.roles.get(r.get_ref()).ok_or_else(|| {
                    src.error(
                        Some(r.span()),
                        format!("client '{name}': unknown role '{}'", r.get_ref()),
                    )
                })?;
                parts.push((r.get_ref().as_str(), role));
            }
            let perms = merge(src, name, &parts, canon, &mut warnings)?;
            if let Some(i) = &grant.get_ref().identity {
                identities.add(src, &id, i)?;
            }
            clients.insert(id, perms);
        }
        let stdio_client = match &raw.stdio.client {
            Some(c) => {
                let id = ClientId::parse(c.get_ref())
                    .filter(|id| clients.contains_key(id))
                    .ok_or_else(|| {
                        src.error(
                            Some(c.span()),
                            format!("stdio.client: unknown client '{}'", c.get_ref()),
                        )
                    })?;
                Some(id)
            }
            None => {
                let d = ClientId(DEFAULT_CLIENT.into());
                clients.contains_key(&d).then_some(d)
            }
        };
        let audit = match &raw.audit {
            None => None,
            Some(a) => Some(audit_settings(src, a, canon, &mut warnings)?),
        };
        let mut operator_tools = BTreeMap::new();
        for (name, t) in &raw.tools {
            let tool = exec_grant::operator_tool(
                src,
                name,
                t,
                canon,
                CommandLimits::default().timeout_secs,
            )?;
            for r in &t.get_ref().roles {
                if !raw.roles.contains_key(r.get_ref()) {
                    return Err(src.error(
                        Some(r.span()),
                        format!("tools.{name}: unknown role '{}'", r.get_ref()),
                    ));
                }
            }
            for c in &t.get_ref().clients {
                if !raw.clients.contains_key(c.get_ref()) {
                    return Err(src.error(
                        Some(c.span()),
                        format!("tools.{name}: unknown client '{}'", c.get_ref()),
                    ));
                }
            }
            operator_tools.insert(name.clone(), tool);
        }
        for (name, grant) in &raw.clients {
            let Some(id) = ClientId::parse(name) else {
                continue;
            };
            let Some(perms) = clients.get_mut(&id) else {
                continue;
            };
            for (tname, tool) in &operator_tools {
                let by_role = grant
                    .get_ref()
                    .roles
                    .iter()
                    .any(|r| tool.roles.contains(r.get_ref()));
                if tool.clients.contains(name) || by_role {
                    perms.operator_tools.insert(tname.clone());
                }
            }
        }
        let http = http_settings(
            src,
            raw.http.as_ref(),
            &clients,
            &stdio_client,
            &mut warnings,
        )?;
        let unix = super::unix::unix_settings(src, raw.unix.as_ref(), &mut warnings)?;
        let dbus = super::dbus::dbus_settings(src, raw.dbus.as_ref())?;
        let metrics = super::metrics::metrics_settings(src, raw.metrics.as_ref(), &mut warnings)?;
        let cgroup = match raw
            .server
            .cgroup
            .as_ref()
            .map(|c| (c.get_ref().as_str(), c.span()))
        {
            None | Some(("auto", _)) => CgroupSetting::Auto,
            Some(("off", _)) => {
                warnings.push("server.cgroup = \"off\": memory and process limits fall back to rlimits (see docs/cgroups.md)".into());
                CgroupSetting::Off
            }
            Some((p, _)) if p.starts_with('/') => CgroupSetting::Path(PathBuf::from(p)),
            Some((other, span)) => {
                return Err(src.error(
                    Some(span),
                    format!("server.cgroup must be \"auto\", \"off\" or an absolute path, not '{other}'"),
                ));
            }
        };
        let ipc_spin_us = match &raw.server.ipc_spin_us {
            None => DEFAULT_IPC_SPIN_US,
            Some(v) if *v.get_ref() <= MAX_IPC_SPIN_US => *v.get_ref(),
            Some(v) => {
                return Err(src.error(
                    Some(v.span()),
                    format!("server.ipc_spin_us must be at most {MAX_IPC_SPIN_US}"),
                ));
            }
        };
        let stop_grace_secs = match &raw.server.stop_grace_secs {
            None => DEFAULT_STOP_GRACE_SECS,
            Some(v) if *v.get_ref() <= MAX_STOP_GRACE_SECS => *v.get_ref(),
            Some(v) => {
                return Err(src.error(
                    Some(v.span()),
                    format!("server.stop_grace_secs must be at most {MAX_STOP_GRACE_SECS}"),
                ));
            }
        };
        let instance = match &raw.server.instance {
            None => None,
            Some(v) => Some(
                check_instance_name(v.get_ref())
                    .map_err(|m| src.error(Some(v.span()), format!("server.instance: {m}")))?,
            ),
        };
        let worker_uids = match &raw.server.worker_uids {
            None => DEFAULT_WORKER_UIDS,
            Some(v) => UidRange::parse(v.get_ref())
                .map_err(|m| src.error(Some(v.span()), format!("server.worker_uids: {m}")))?,
        };
        // One uid per client, and one for requests of unknown clients.
        if worker_uids.len() < clients.len() as u64 + 1 {
            return Err(src.error(
                raw.server.worker_uids.as_ref().map(|v| v.span()),
                format!(
                    "server.worker_uids ({worker_uids}) holds {} uids: {} clients need {}",
                    worker_uids.len(),
                    clients.len(),
                    clients.len() + 1
                ),
            ));
        }
        let worker_tmp_bytes = match &raw.server.worker_tmp_bytes {
            None => DEFAULT_WORKER_TMP_BYTES,
            Some(v) if (1024 * 1024..=MAX_WORKER_TMP_BYTES).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                return Err(src.error(
                    Some(v.span()),
                    format!(
                        "server.worker_tmp_bytes must be between 1048576 and {MAX_WORKER_TMP_BYTES}"
                    ),
                ));
            }
        };
        let jwt = match raw.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
            Some(j) => Some(super::jwt::jwt_settings(src, j, canon)?),
            None => None,
        };
        let (role_views, client_roles) = match &jwt {
            Some(j) if j.roles_claim.is_some() => {
                super::role_views::build(src, &raw, &clients, &operator_tools, canon)?
            }
            _ => Default::default(),
        };
        let mut policy = Self {
            clients,
            role_views,
            client_roles,
            stdio_client,
            worker_uids,
            worker_tmp_bytes,
            worker_path: server.worker.as_ref().map(PathBuf::from),
            allow_degraded_sandbox: server.allow_degraded_sandbox,
            max_message_bytes,
            worker_idle_secs: server
                .worker_idle_secs
                .unwrap_or(DEFAULT_WORKER_IDLE_SECS)
                .max(1),
            client_request_timeout_secs: server
                .client_request_timeout_secs
                .unwrap_or(60)
                .clamp(1, 3600),
            client_ping_secs: server.client_ping_secs.unwrap_or(60),
            warnings,
            audit: None,
            operator_tools,
            cgroup,
            ipc_spin_us,
            stop_grace_secs,
            instance,
            http,
            toolsets: Vec::new(),
            prompts: BTreeMap::new(),
            prompt_grants: BTreeMap::new(),
            identities,
            jwt,
            unix,
            dbus,
            metrics,
        };
        let jwt_warnings = super::jwt::jwt_warnings(&policy);
        policy.warnings.extend(jwt_warnings);
        for (name, p) in &raw.prompts {
            let prompt = crate::prompts::prompt(src, name, p)?;
            for r in &p.get_ref().roles {
                if !raw.roles.contains_key(r.get_ref()) {
                    return Err(src.error(
                        Some(r.span()),
                        format!("prompts.{name}: unknown role '{}'", r.get_ref()),
                    ));
                }
            }
            for c in &p.get_ref().clients {
                if !raw.clients.contains_key(c.get_ref()) {
                    return Err(src.error(
                        Some(c.span()),
                        format!("prompts.{name}: unknown client '{}'", c.get_ref()),
                    ));
                }
            }
            for (cname, grant) in &raw.clients {
                let by_role = grant
                    .get_ref()
                    .roles
                    .iter()
                    .any(|r| prompt.roles.contains(r.get_ref()));
                if prompt.clients.contains(cname) || by_role {
                    if let Some(id) = ClientId::parse(cname) {
                        policy
                            .prompt_grants
                            .entry(id)
                            .or_default()
                            .insert(name.clone());
                    }
                }
            }
            policy.prompts.insert(name.clone(), prompt);
        }
        if let Some(a) = audit {
            policy
                .check_audit_reach(&a.path)
                .map_err(|m| src.error(raw.audit.as_ref().map(|r| r.path.span()), m))?;
            policy.audit = Some(a);
        }
        if let Some(m) = policy.http_exposure_error() {
            let at = raw.http.as_ref().and_then(|h| h.listen.as_ref());
            return Err(src.error(at.map(Spanned::span), format!("http.listen: {m}")));
        }
        Ok(policy)
    }

    /// Use an audit log at `path` (`--audit-log`, through the overlay), keeping other settings
    /// if a config file set them. The path must lie outside every client's roots.
    pub(crate) fn set_audit_path(
        &mut self,
        path: &Path,
        canon: Canonicalize<'_>,
    ) -> Result<(), ConfigError> {
        let src = Source::new("<flags>", "");
        let path = canonical_log_path(&src, None, path, canon, &mut self.warnings)?;
        self.check_audit_reach(&path)
            .map_err(|m| src.error(None, m))?;
        if self.audit.is_none() {
            // (A configured [audit] without a key has warned already.)
            self.warnings.push(NO_CHECKPOINT_KEY.into());
        }
        let mut a = self
            .audit
            .take()
            .unwrap_or_else(|| AuditSettings::at(path.clone()));
        a.path = path;
        self.audit = Some(a);
        Ok(())
    }

    /// The audit log must be out of every worker's reach: not inside any client's read or write
    /// roots (Landlock rules are derived from those roots), and no root may be one of the log's
    /// sibling files (`<log>.head`, its temporary file, rotated `<log>.<seq>` files). `log` is
    /// the resolved path ([`canonical_log_path`]), as the roots are.
    pub(super) fn check_audit_reach(&self, log: &Path) -> Result<(), String> {
        let sibling_prefix = log
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| format!("{n}."));
        let ours = |r: &Path| {
            log.starts_with(r)
                || (r.parent() == log.parent()
                    && r.file_name()
                        .and_then(|n| n.to_str())
                        .zip(sibling_prefix.as_deref())
                        .is_some_and(|(rn, pre)| rn.starts_with(pre)))
        };
        for (id, p) in &self.clients {
            if let Some(root) = p.read.iter().chain(p.write.iter()).find(|r| ours(r)) {
                return Err(format!(
                    "audit log {} lies inside {} which client '{id}' may access: move the log out of every client's roots",
                    log.display(),
                    root.display()
                ));
            }
        }
        Ok(())
    }
}

/// The warning for an audit log without a checkpoint key (`check-config` and `serve` print it).
pub(crate) const NO_CHECKPOINT_KEY: &str = "audit.checkpoint_key is not set: anyone who can \
     write the audit log can rewrite it (re-hashing the chain) or cut records off its end \
     undetected; create a key with `mcpd audit keygen --private /etc/mcpd/audit.key \
     --public /etc/mcpd/audit.pub`, set audit.checkpoint_key to the private one and keep \
     the public one for `mcpd audit verify --key`";

/// Canonicalise a log file path: absolute, its directory must exist (the file may not). Every
/// symlink is resolved, the directory's and — when the file exists — the file's own, so that
/// [`Policy::check_audit_reach`] judges the file that will really be written (a log path that
/// is a link into a client's root is refused, not written through). The broker then opens the
/// resolved path without following symlinks (`O_NOFOLLOW`, and the directory
/// `O_DIRECTORY|O_NOFOLLOW`), so a link planted there after this check is refused at open.
/// An instance name (`server.instance`, `--instance`): 1 to 32 of `a-z`, `0-9` and `-`,
/// starting with a letter or digit. It starts every session id, so it stays a plain token
/// that balancers can match (`^NAME\.`).
pub fn check_instance_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' must be 1 to 32 characters of a-z, 0-9 and '-', not starting with '-'"
        ))
    }
}

pub(super) fn canonical_log_path(
    src: &Source,
    span: Option<std::ops::Range<usize>>,
    p: &Path,
    canon: Canonicalize<'_>,
    warnings: &mut Vec<String>,
) -> Result<PathBuf, ConfigError> {
    if !p.is_absolute() {
        return Err(src.error(
            span,
            format!("audit path must be absolute: '{}'", p.display()),
        ));
    }
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(src.error(span, format!("audit path names no file: '{}'", p.display())));
    };
    let dir = canon(dir).map_err(|e| {
        let msg = if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "audit directory '{d}' does not exist: create it for mcpd's user only (install -d -m 0750 {d}; the Debian package does)",
                d = dir.display()
            )
        } else {
            format!("audit directory '{}': {e}", dir.display())
        };
        src.error(span.clone(), msg)
    })?;
    let joined = dir.join(name);
    let resolved = match canon(&joined) {
        Ok(r) => r,
        // No file yet (or a dangling link, which the open refuses): the log is created there.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => joined.clone(),
        Err(e) => {
            return Err(src.error(span, format!("audit path '{}': {e}", p.display())));
        }
    };
    if resolved != p {
        warnings.push(format!(
            "audit path {} resolves to {} (a symbolic link): the log, its head file and rotated \
             files are written at {}; configure that path instead",
            p.display(),
            resolved.display(),
            resolved.display()
        ));
    }
    Ok(resolved)
}

pub(super) fn audit_settings(
    src: &Source,
    a: &crate::config::RawAudit,
    canon: Canonicalize<'_>,
    warnings: &mut Vec<String>,
) -> Result<AuditSettings, ConfigError> {
    let path = canonical_log_path(
        src,
        Some(a.path.span()),
        Path::new(a.path.get_ref()),
        canon,
        warnings,
    )?;
    let strict = match a.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("batch", _)) => false,
        Some(("strict", _)) => true,
        Some((other, span)) => {
            return Err(src.error(
                Some(span),
                format!("audit.mode must be \"batch\" or \"strict\", not '{other}'"),
            ))
        }
    };
    let checkpoint_key = match &a.checkpoint_key {
        None => None,
        Some(k) => {
            let kp = Path::new(k.get_ref());
            if !kp.is_absolute() {
                return Err(src.error(
                    Some(k.span()),
                    "audit.checkpoint_key must be an absolute path",
                ));
            }
            Some(
                canon(kp)
                    .map_err(|e| src.error(Some(k.span()), format!("audit.checkpoint_key: {e}")))?,
            )
        }
    };
    if checkpoint_key.is_none() {
        warnings.push(NO_CHECKPOINT_KEY.into());
    }
    if a.fail_open {
        warnings.push(
            "audit.fail_open = true: requests are served even when the audit log cannot be written"
                .into(),
        );
    }
    let d = AuditSettings::at(path.clone());
    Ok(AuditSettings {
        path,
        strict,
        batch_interval_ms: a.batch_interval_ms.unwrap_or(d.batch_interval_ms).max(1),
        rotate_bytes: a.rotate_bytes.unwrap_or(d.rotate_bytes),
        checkpoint_key,
        checkpoint_every: a.checkpoint_every.unwrap_or(d.checkpoint_every).max(1),
        checkpoint_secs: a.checkpoint_secs.unwrap_or(d.checkpoint_secs),
        preview_args: a.preview_args,
        fail_open: a.fail_open,
        journald: a.journald,
    })
}

pub(super) fn dedup(v: &mut Vec<PathBuf>) {
    v.sort();
    v.dedup();
}

/// A configured path, absolute and without `..`, canonicalised (a missing path is an error
/// naming the file and line).
pub(crate) fn canonical(
    src: &Source,
    who: &str,
    p: &Spanned<String>,
    canon: Canonicalize<'_>,
) -> Result<PathBuf, ConfigError> {
    let raw = Path::new(p.get_ref());
    if !raw.is_absolute() {
        return Err(src.error(
            Some(p.span()),
            format!("{who}: path must be absolute: '{}'", p.get_ref()),
        ));
    }
    if raw.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(src.error(
            Some(p.span()),
            format!("{who}: path must not contain '..': '{}'", p.get_ref()),
        ));
    }
    let c = canon(raw).map_err(|e| {
        src.error(
            Some(p.span()),
            format!("{who}: cannot resolve '{}': {e}", p.get_ref()),
        )
    })?;
    if c.to_str().is_none() {
        return Err(src.error(
            Some(p.span()),
            format!("{who}: path is not UTF-8: '{}'", c.display()),
        ));
    }
    Ok(c)
}
