//! The command-line overlay of `mcpd serve`: what its flags add to a configuration file (or
//! make up without one), validated here so the broker only converts its parsed arguments into
//! an [`Overlay`] and calls [`Policy::load`]. Every flag goes through the same checks as the
//! file: quick-start grants through `build`, the audit path through the audit reach check, the
//! HTTP address through the loopback rule, tool sets against the known names.
//!
//! Does not parse the command line (the broker does, with clap), read the file, or look up the
//! working directory: the caller supplies the text, `cwd` and the [`Canonicalize`] function, so
//! this module does no I/O. Trusts the flags no more than the file: a flag that would widen
//! exposure (a non-loopback listener, test tool sets) is refused or recorded as a warning.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::types::{Canonicalize, Policy, QuickStart};
use crate::config::ConfigError;

/// The extra tool sets `--toolset` accepts.
pub const KNOWN_TOOLSETS: &[&str] = &["conformance"];

/// What `mcpd serve`'s flags contribute to the policy. The default (no flag) changes nothing:
/// a file is used as written, and without a file the embedded default serves the current
/// directory read-only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    /// `--allow-read DIR`: read roots of the stdio client (relative to `cwd`).
    pub read: Vec<PathBuf>,
    /// `--allow-write DIR`: write roots of the stdio client (relative to `cwd`).
    pub write: Vec<PathBuf>,
    /// `--allow-exec PROGRAM`: programs the stdio client may run.
    pub exec: Vec<String>,
    /// `--allow-code LANGUAGE`: languages of the stdio client's code sessions.
    pub code: Vec<String>,
    /// `--worker PATH`: the worker executable, replacing `server.worker`.
    pub worker: Option<PathBuf>,
    /// `--http ADDR`: the HTTP listener, replacing `http.listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--http localhost:PORT`: `http_listen` is `127.0.0.1:PORT`, and `[::1]:PORT` is bound too.
    pub http_localhost: bool,
    /// `--insecure-non-loopback-without-auth`: accept a non-loopback `--http` address.
    pub insecure_non_loopback: bool,
    /// `--toolset NAME` (repeatable): extra tool sets, each one of [`KNOWN_TOOLSETS`].
    pub toolsets: Vec<String>,
    /// `--http-session-idle-secs SECS`: replaces `http.session_idle_secs` (at least 1).
    pub http_idle_secs: Option<u64>,
    /// `--audit-log FILE`: the audit log (relative to `cwd`), keeping the file's other
    /// `[audit]` settings.
    pub audit_log: Option<PathBuf>,
    /// `--jwt-jwks FILE`, `--jwt-issuer URL`, `--jwt-audience URL`: `[auth.jwt]`'s key file,
    /// issuer and audience (all three without an `[auth.jwt]` in the file).
    pub jwt_jwks: Option<PathBuf>,
    /// `--jwt-issuer URL`.
    pub jwt_issuer: Option<String>,
    /// `--jwt-audience URL`.
    pub jwt_audience: Option<String>,
    /// `--unix PATH`: the Unix-socket listener (relative to `cwd`), replacing `unix.path`.
    pub unix: Option<PathBuf>,
    /// `--unix-systemd`: the Unix listening socket comes from systemd (`unix.systemd`).
    pub unix_systemd: bool,
    /// `--unix-protocol http|lines`: what the Unix listener speaks, replacing
    /// `unix.protocol`.
    pub unix_protocol: Option<String>,
    /// `--dbus system|session`: the D-Bus transport's bus, replacing `dbus.bus`.
    pub dbus: Option<String>,
    /// `--dbus-address ADDR`: the bus address, replacing `dbus.address` (needs a bus).
    pub dbus_address: Option<String>,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca` (relative to `cwd`).
    pub tls: super::tls::TlsOverlay,
    /// `--metrics ADDR`: the metrics listener (`IP:PORT`, `localhost:PORT` or `unix:PATH`,
    /// relative to `cwd`), replacing `metrics.listen`; loopback or a Unix socket only, unless
    /// the file's `[metrics] allow_non_loopback` allows more.
    pub metrics: Option<String>,
    /// `--instance NAME`: this instance's name, replacing `server.instance`.
    pub instance: Option<String>,
}

/// Why a policy could not be loaded from a configuration and an [`Overlay`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The configuration file, or a flag checked like one (grants, audit path), is invalid;
    /// names the file (or `<flags>`) and, when known, line and column.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--http` on a non-loopback address without the explicit opt-in.
    #[error("--http {0}: not a loopback address: it needs TLS (--tls-cert, --tls-key) and an authentication method (--tls-client-ca); or pass --insecure-non-loopback-without-auth to accept that anyone who reaches it acts as the HTTP client")]
    NonLoopbackHttp(SocketAddr),
    /// `--tls-*` flags that do not make a TLS configuration.
    #[error("{0}")]
    Tls(String),
    /// `--instance` with a name [`super::build::check_instance_name`] refuses.
    #[error("--instance {0}")]
    Instance(String),
    /// `--toolset` with a name not in [`KNOWN_TOOLSETS`].
    #[error("--toolset {0}: unknown tool set (known: {known})", known = KNOWN_TOOLSETS.join(", "))]
    UnknownToolset(String),
}

impl Overlay {
    fn quick_start(&self) -> QuickStart {
        QuickStart {
            read: self.read.clone(),
            write: self.write.clone(),
            exec: self.exec.clone(),
            code: self.code.clone(),
        }
    }
}

impl QuickStart {
    fn is_empty(&self) -> bool {
        self.read.is_empty()
            && self.write.is_empty()
            && self.exec.is_empty()
            && self.code.is_empty()
    }
}

impl Policy {
    /// The policy `mcpd serve` runs with: `config` (its name as the operator gave it, for error
    /// messages, and its text) or, without one, the quick-start policy of the flags, then every
    /// other flag of `overlay`, each validated. Relative paths of the overlay are resolved
    /// against `cwd`. The first invalid input is the error; nothing is partially applied.
    pub fn load(
        config: Option<(&str, &str)>,
        overlay: &Overlay,
        cwd: &Path,
        canon: Canonicalize<'_>,
    ) -> Result<Self, PolicyError> {
        let q = overlay.quick_start();
        let mut policy = match config {
            Some((name, text)) => {
                let mut p = Self::from_toml(name, text, canon)?;
                if !q.is_empty() {
                    p.add_quick_start(&q, cwd, canon)?;
                }
                p
            }
            None => Self::quick_start(&q, cwd, canon)?,
        };
        policy.apply_overlay(overlay, cwd, canon)?;
        Ok(policy)
    }

    /// The flags beyond the quick-start grants, in the order their errors are reported.
    fn apply_overlay(
        &mut self,
        o: &Overlay,
        cwd: &Path,
        canon: Canonicalize<'_>,
    ) -> Result<(), PolicyError> {
        if let Some(w) = &o.worker {
            self.worker_path = Some(w.clone());
        }
        if let Some(i) = &o.instance {
            self.instance =
                Some(super::build::check_instance_name(i).map_err(PolicyError::Instance)?);
        }
        self.http.tls = super::tls::apply_tls_overlay(self.http.tls.take(), &o.tls, cwd)
            .map_err(PolicyError::Tls)?;
        // Token flags before the listen check: they are an authentication method.
        let jwks = o.jwt_jwks.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                cwd.join(p)
            }
        });
        super::jwt::apply_jwt_flags(
            self,
            jwks.as_deref(),
            o.jwt_issuer.as_deref(),
            o.jwt_audience.as_deref(),
            canon,
        )?;
        if let Some(addr) = o.http_listen {
            let authenticated = self.http_tls().is_some() && !self.http_auth_methods().is_empty();
            if !addr.ip().is_loopback() && !o.insecure_non_loopback && !authenticated {
                return Err(PolicyError::NonLoopbackHttp(addr));
            }
            if o.insecure_non_loopback {
                self.warnings.push(format!(
                    "--insecure-non-loopback-without-auth: unauthenticated MCP over HTTP on {addr}"
                ));
            }
            self.http.listen = Some(addr);
            self.http.localhost = o.http_localhost;
        }
        for t in &o.toolsets {
            if !KNOWN_TOOLSETS.contains(&t.as_str()) {
                return Err(PolicyError::UnknownToolset(t.clone()));
            }
            self.warnings.push(format!(
                "--toolset {t}: test fixtures are served to clients"
            ));
            self.toolsets.push(t.clone());
        }
        if let Some(secs) = o.http_idle_secs {
            self.http.session_idle_secs = secs.max(1);
        }
        if let Some(a) = &o.audit_log {
            let a = if a.is_absolute() {
                a.clone()
            } else {
                cwd.join(a)
            };
            self.set_audit_path(&a, canon)?;
        }
        self.apply_unix_flags(
            o.unix.as_deref(),
            o.unix_systemd,
            o.unix_protocol.as_deref(),
            cwd,
        )?;
        if let Some(m) = &o.metrics {
            self.apply_metrics_flag(m, cwd)?;
        }
        self.apply_dbus_flags(o.dbus.as_deref(), o.dbus_address.as_deref())?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fake_canon(p: &Path) -> std::io::Result<PathBuf> {
        if p.starts_with("/missing") {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        } else {
            Ok(p.to_path_buf())
        }
    }

    fn load(config: Option<&str>, o: &Overlay) -> Result<Policy, PolicyError> {
        Policy::load(
            config.map(|t| ("test.toml", t)),
            o,
            Path::new("/cwd"),
            &fake_canon,
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_flags_change_nothing() {
        let cfg = "[clients.a]\nread = [\"/srv\"]\n[stdio]\nclient = \"a\"\n";
        let p = load(Some(cfg), &Overlay::default()).unwrap();
        let f = Policy::from_toml("test.toml", cfg, &fake_canon).unwrap();
        assert_eq!(p.describe(), f.describe());
        assert!(p.worker_path().is_none() && p.toolsets().is_empty());
        assert!(p.http().listen.is_none() && p.audit().is_none());
        // Without a file: the embedded default, cwd read-only.
        let d = load(None, &Overlay::default()).unwrap();
        let perms = d.permissions(d.stdio_client().unwrap()).unwrap();
        assert_eq!(perms.read, vec![PathBuf::from("/cwd")]);
        assert!(perms.write.is_empty());
        assert!(d.warnings().is_empty());
    }

    #[test]
    fn quick_start_flags_add_to_the_stdio_client_of_a_file() {
        let cfg = "[clients.a]\nread = [\"/srv\"]\n[stdio]\nclient = \"a\"\n";
        let o = Overlay {
            write: vec![PathBuf::from("out")],
            ..Overlay::default()
        };
        let p = load(Some(cfg), &o).unwrap();
        let perms = p.permissions(p.stdio_client().unwrap()).unwrap();
        assert_eq!(perms.read, vec![PathBuf::from("/srv")]);
        assert_eq!(perms.write, vec![PathBuf::from("/cwd/out")]);
        let e = load(
            None,
            &Overlay {
                read: vec![PathBuf::from("/missing/dir")],
                ..Overlay::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(&e, PolicyError::Config(c) if c.file == "<flags>"),
            "{e}"
        );
    }

    #[test]
    fn a_file_error_comes_first_and_names_the_file() {
        let o = Overlay {
            toolsets: vec!["nope".into()],
            ..Overlay::default()
        };
        let e = load(Some("[clients.a]\nsudo = true\n"), &o).unwrap_err();
        assert!(e.to_string().starts_with("test.toml:2:"), "{e}");
    }

    #[test]
    fn http_refuses_a_non_loopback_address_without_the_opt_in() {
        for a in ["0.0.0.0:8080", "192.0.2.1:80", "[::]:8080"] {
            let o = Overlay {
                http_listen: Some(addr(a)),
                ..Overlay::default()
            };
            let e = load(None, &o).unwrap_err();
            assert_eq!(e, PolicyError::NonLoopbackHttp(addr(a)));
            assert_eq!(
                e.to_string(),
                format!("--http {}: not a loopback address: it needs TLS (--tls-cert, --tls-key) and an authentication method (--tls-client-ca); or pass --insecure-non-loopback-without-auth to accept that anyone who reaches it acts as the HTTP client", addr(a))
            );
        }
        for a in ["127.0.0.1:0", "127.8.9.10:8080", "[::1]:8080"] {
            let o = Overlay {
                http_listen: Some(addr(a)),
                ..Overlay::default()
            };
            let p = load(None, &o).unwrap();
            assert_eq!(p.http().listen, Some(addr(a)));
            assert!(p.warnings().is_empty(), "{:?}", p.warnings());
        }
    }

    #[test]
    fn http_non_loopback_opt_in_is_loud() {
        let o = Overlay {
            http_listen: Some(addr("0.0.0.0:8080")),
            insecure_non_loopback: true,
            ..Overlay::default()
        };
        let p = load(None, &o).unwrap();
        assert_eq!(p.http().listen, Some(addr("0.0.0.0:8080")));
        assert_eq!(
            p.warnings(),
            ["--insecure-non-loopback-without-auth: unauthenticated MCP over HTTP on 0.0.0.0:8080"]
        );
        assert!(p
            .describe()
            .contains("WARNING: --insecure-non-loopback-without-auth"));
        // The opt-in alone (no --http) neither listens nor warns.
        let p = load(
            None,
            &Overlay {
                insecure_non_loopback: true,
                ..Overlay::default()
            },
        )
        .unwrap();
        assert!(p.http().listen.is_none() && p.warnings().is_empty());
    }

    #[test]
    fn http_flag_replaces_the_file_listener() {
        let cfg = "[clients.a]\n[stdio]\nclient = \"a\"\n[http]\nlisten = \"127.0.0.1:9000\"\n";
        let p = load(Some(cfg), &Overlay::default()).unwrap();
        assert_eq!(p.http().listen, Some(addr("127.0.0.1:9000")));
        let o = Overlay {
            http_listen: Some(addr("127.0.0.1:0")),
            ..Overlay::default()
        };
        let p = load(Some(cfg), &o).unwrap();
        assert_eq!(p.http().listen, Some(addr("127.0.0.1:0")));
    }

    #[test]
    fn unknown_toolset_is_refused_known_one_is_loud() {
        let o = Overlay {
            toolsets: vec!["conformance".into(), "everything".into()],
            ..Overlay::default()
        };
        let e = load(None, &o).unwrap_err();
        assert_eq!(e, PolicyError::UnknownToolset("everything".into()));
        assert_eq!(
            e.to_string(),
            "--toolset everything: unknown tool set (known: conformance)"
        );
        let o = Overlay {
            toolsets: vec!["conformance".into()],
            ..Overlay::default()
        };
        let p = load(None, &o).unwrap();
        assert_eq!(p.toolsets(), ["conformance"]);
        assert_eq!(
            p.warnings(),
            ["--toolset conformance: test fixtures are served to clients"]
        );
        assert_eq!(
            p.sandbox_spec(p.stdio_client().unwrap()).toolsets,
            vec!["conformance".to_string()]
        );
    }

    #[test]
    fn http_idle_secs_is_at_least_one() {
        let d = load(None, &Overlay::default()).unwrap();
        assert_eq!(d.http().session_idle_secs, 300);
        for (given, want) in [(0, 1), (1, 1), (42, 42)] {
            let o = Overlay {
                http_idle_secs: Some(given),
                ..Overlay::default()
            };
            assert_eq!(load(None, &o).unwrap().http().session_idle_secs, want);
        }
    }

    #[test]
    fn unix_protocol_flag_reaches_the_settings_and_is_checked() {
        let cfg = "[clients.a]\n[stdio]\nclient = \"a\"\n[unix]\npath = \"/run/m.sock\"\n";
        let p = load(Some(cfg), &Overlay::default()).unwrap();
        assert_eq!(p.unix().protocol, crate::UnixProtocol::Http);
        let o = Overlay {
            unix_protocol: Some("lines".into()),
            ..Overlay::default()
        };
        assert_eq!(
            load(Some(cfg), &o).unwrap().unix().protocol,
            crate::UnixProtocol::Lines
        );
        let o = Overlay {
            unix_protocol: Some("Lines".into()),
            ..Overlay::default()
        };
        let e = load(Some(cfg), &o).unwrap_err();
        assert!(
            matches!(&e, PolicyError::Config(c) if c.file == "<flags>" && c.message.contains("--unix-protocol must be")),
            "{e}"
        );
    }

    #[test]
    fn worker_flag_replaces_server_worker() {
        let cfg = "[server]\nworker = \"/opt/w\"\n[clients.a]\n";
        let p = load(Some(cfg), &Overlay::default()).unwrap();
        assert_eq!(p.worker_path(), Some(Path::new("/opt/w")));
        let o = Overlay {
            worker: Some(PathBuf::from("/usr/lib/mcpd/worker")),
            ..Overlay::default()
        };
        let p = load(Some(cfg), &o).unwrap();
        assert_eq!(p.worker_path(), Some(Path::new("/usr/lib/mcpd/worker")));
    }

    #[test]
    fn audit_log_relative_is_made_absolute_and_checked() {
        let o = Overlay {
            read: vec![PathBuf::from("/data")],
            audit_log: Some(PathBuf::from("logs/audit.jsonl")),
            ..Overlay::default()
        };
        let p = load(None, &o).unwrap();
        let a = p.audit().unwrap();
        assert_eq!(a.path, PathBuf::from("/cwd/logs/audit.jsonl"));
        assert!(!a.strict, "--audit-log alone: the defaults");
        // Absolute stays as given.
        let o = Overlay {
            read: vec![PathBuf::from("/data")],
            audit_log: Some(PathBuf::from("/var/log/mcpd.jsonl")),
            ..Overlay::default()
        };
        assert_eq!(
            load(None, &o).unwrap().audit().unwrap().path,
            PathBuf::from("/var/log/mcpd.jsonl")
        );
        // Inside a client's roots: refused (the default policy reads cwd).
        let o = Overlay {
            audit_log: Some(PathBuf::from("audit.jsonl")),
            ..Overlay::default()
        };
        let e = load(None, &o).unwrap_err();
        assert!(
            matches!(&e, PolicyError::Config(c) if c.file == "<flags>" && c.message.contains("lies inside /cwd")),
            "{e}"
        );
        // A missing directory: refused.
        let o = Overlay {
            read: vec![PathBuf::from("/data")],
            audit_log: Some(PathBuf::from("/missing/audit.jsonl")),
            ..Overlay::default()
        };
        assert!(load(None, &o).is_err());
    }

    #[test]
    fn audit_log_flag_keeps_the_files_other_settings() {
        let cfg = "[clients.a]\nread = [\"/srv\"]\n[audit]\npath = \"/var/log/a.jsonl\"\nmode = \"strict\"\n";
        let o = Overlay {
            audit_log: Some(PathBuf::from("/logs/b.jsonl")),
            ..Overlay::default()
        };
        let p = load(Some(cfg), &o).unwrap();
        let a = p.audit().unwrap();
        assert_eq!(a.path, PathBuf::from("/logs/b.jsonl"));
        assert!(a.strict);
    }
}
