//! The Unix-socket listener settings (`[unix]`, `--unix PATH`, `--unix-systemd`,
//! `--unix-protocol`): defaults, validation and bounds. Opens no socket and resolves no group name (the broker does both, at
//! start). Trusts the parsed config only as far as it checks it: the path must be absolute and
//! fit a socket address, the mode may hold permission bits only, numbers are clamped.
//!
//! Who may speak for which client over the socket is not configured here but per client
//! (`[clients.NAME.identity] unix_uid = [...]`, `unix_gid = [...]`, see `crate::identity`).

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::types::Policy;
use crate::config::{ConfigError, Source};

/// Default `[unix] mode`: owner and group may connect.
pub const DEFAULT_UNIX_MODE: u32 = 0o660;
/// Default `[unix] max_connections`: open connections (sessions) at once, every peer together.
pub const DEFAULT_UNIX_MAX_CONNECTIONS: u64 = 64;
/// Default `[unix] max_connections_per_uid`: open connections of one peer uid.
pub const DEFAULT_UNIX_MAX_CONNECTIONS_PER_UID: u64 = 8;
/// Ceiling of both connection caps.
pub const MAX_UNIX_CONNECTIONS: u64 = 4096;
/// Longest socket path (`sun_path` holds 108 bytes with its terminating NUL).
pub const MAX_UNIX_PATH_BYTES: usize = 107;

/// `[unix] mode`, as written: an octal string (`"0660"`) or a TOML integer (`0o660`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawMode {
    /// `0o660`.
    Int(u32),
    /// `"0660"` or `"660"`.
    Octal(String),
}

/// `[unix] group`, as written: a group name or a numeric gid.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawGroup {
    /// A gid.
    Gid(u32),
    /// A group name (or a gid written as a string).
    Name(String),
}

/// `[unix]`: the Unix-socket listener (Streamable HTTP, or newline-delimited JSON-RPC with one
/// session per connection).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnix {
    /// The socket path (absolute).
    pub path: Option<Spanned<String>>,
    /// Permission bits of the socket file (default 0660).
    pub mode: Option<Spanned<RawMode>>,
    /// The group the socket file is given (name or gid; default: the broker's).
    pub group: Option<Spanned<RawGroup>>,
    /// Take the listening socket from systemd (`LISTEN_FDS`) instead of binding `path`.
    #[serde(default)]
    pub systemd: bool,
    /// Most open connections at once.
    pub max_connections: Option<u64>,
    /// Most open connections of one peer uid.
    pub max_connections_per_uid: Option<u64>,
    /// What the socket speaks: `"http"` (default) or `"lines"`.
    pub protocol: Option<Spanned<String>>,
}

/// What the Unix listener speaks on each connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnixProtocol {
    /// Streamable HTTP (HTTP/1.1, endpoint `/mcp`), exactly as on the TCP listener.
    #[default]
    Http,
    /// Newline-delimited JSON-RPC, the stdio protocol, one session per connection.
    Lines,
}

impl UnixProtocol {
    /// Every value, as written in the configuration.
    pub const NAMES: [&'static str; 2] = ["http", "lines"];

    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Lines => "lines",
        }
    }

    /// The protocol named `s` (exactly as written: lower case).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(Self::Http),
            "lines" => Some(Self::Lines),
            _ => None,
        }
    }

    fn refusal(key: &str, given: &str) -> String {
        format!("{key} must be \"http\" (Streamable HTTP) or \"lines\" (newline-delimited JSON-RPC), not '{given}'")
    }
}

/// The group of the socket file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixGroup {
    /// A numeric gid.
    Gid(u32),
    /// A group name, resolved by the broker at start.
    Name(String),
}

impl std::fmt::Display for UnixGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gid(g) => write!(f, "gid {g}"),
            Self::Name(n) => write!(f, "{n}"),
        }
    }
}

/// Unix-socket listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSettings {
    /// Where to bind (`None` and not `systemd`: no Unix listener).
    pub path: Option<PathBuf>,
    /// Permission bits of the socket file.
    pub mode: u32,
    /// The socket file's group (`None`: the broker's own).
    pub group: Option<UnixGroup>,
    /// The listening socket comes from systemd socket activation.
    pub systemd: bool,
    /// Most open connections at once.
    pub max_connections: u64,
    /// Most open connections of one peer uid.
    pub max_connections_per_uid: u64,
    /// What each connection speaks.
    pub protocol: UnixProtocol,
}

impl Default for UnixSettings {
    fn default() -> Self {
        Self {
            path: None,
            mode: DEFAULT_UNIX_MODE,
            group: None,
            systemd: false,
            max_connections: DEFAULT_UNIX_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_UNIX_MAX_CONNECTIONS_PER_UID,
            protocol: UnixProtocol::Http,
        }
    }
}

impl UnixSettings {
    /// Whether a Unix listener is configured.
    pub fn enabled(&self) -> bool {
        self.path.is_some() || self.systemd
    }

    /// One line for `check-config`.
    pub fn describe(&self) -> String {
        if !self.enabled() {
            return "unix listener: off\n".into();
        }
        let wher = match (&self.path, self.systemd) {
            (_, true) => "socket from systemd (LISTEN_FDS)".to_string(),
            (Some(p), false) => p.display().to_string(),
            (None, false) => String::new(),
        };
        format!(
            "unix listener: {wher} protocol={} mode={:04o} group={} max_connections={} max_connections_per_uid={} (peers map to clients by identity unix_uid / unix_gid)\n",
            self.protocol.as_str(),
            self.mode,
            self.group
                .as_ref()
                .map_or("<the broker's>".to_string(), ToString::to_string),
            self.max_connections,
            self.max_connections_per_uid
        )
    }
}

/// A socket path is absolute, has no `.`/`..` component or NUL, and fits `sun_path`.
pub fn check_socket_path(p: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    if !p.is_absolute() {
        return Err(format!("'{}' is not an absolute path", p.display()));
    }
    if bytes.len() > MAX_UNIX_PATH_BYTES {
        return Err(format!(
            "'{}' is longer than {MAX_UNIX_PATH_BYTES} bytes (a socket address)",
            p.display()
        ));
    }
    if bytes.contains(&0)
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || p.file_name().is_none()
    {
        return Err(format!(
            "'{}' must name a file, without '.' or '..'",
            p.display()
        ));
    }
    Ok(())
}

fn parse_mode(m: &RawMode) -> Option<u32> {
    let v = match m {
        RawMode::Int(i) => *i,
        RawMode::Octal(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok()?,
    };
    (v <= 0o777).then_some(v)
}

pub(super) fn unix_settings(
    src: &Source,
    raw: Option<&RawUnix>,
    warnings: &mut Vec<String>,
) -> Result<UnixSettings, ConfigError> {
    let d = UnixSettings::default();
    let Some(raw) = raw else {
        return Ok(d);
    };
    let path = match &raw.path {
        None => None,
        Some(p) => {
            let path = PathBuf::from(p.get_ref());
            check_socket_path(&path)
                .map_err(|m| src.error(Some(p.span()), format!("unix.path: {m}")))?;
            Some(path)
        }
    };
    let mode = match &raw.mode {
        None => d.mode,
        Some(m) => parse_mode(m.get_ref()).ok_or_else(|| {
            src.error(
                Some(m.span()),
                "unix.mode: permission bits in octal, at most 0777 (e.g. \"0660\")",
            )
        })?,
    };
    let group = match &raw.group {
        None => None,
        Some(g) => Some(match g.get_ref() {
            RawGroup::Gid(n) => UnixGroup::Gid(*n),
            RawGroup::Name(s) if s.parse::<u32>().is_ok() => {
                UnixGroup::Gid(s.parse::<u32>().unwrap_or_default())
            }
            RawGroup::Name(s) => {
                let ok = !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                if !ok {
                    return Err(src.error(Some(g.span()), "unix.group: not a group name or gid"));
                }
                UnixGroup::Name(s.clone())
            }
        }),
    };
    if mode & 0o002 != 0 {
        warnings.push(format!(
            "unix.mode = {mode:04o}: every local user may connect to the Unix socket (clients are still mapped by uid/gid)"
        ));
    }
    let protocol = match &raw.protocol {
        None => d.protocol,
        Some(p) => UnixProtocol::parse(p.get_ref()).ok_or_else(|| {
            src.error(
                Some(p.span()),
                UnixProtocol::refusal("unix.protocol", p.get_ref()),
            )
        })?,
    };
    let clamp = |v: Option<u64>, dflt: u64| v.unwrap_or(dflt).clamp(1, MAX_UNIX_CONNECTIONS);
    Ok(UnixSettings {
        path,
        mode,
        group,
        systemd: raw.systemd,
        max_connections: clamp(raw.max_connections, d.max_connections),
        max_connections_per_uid: clamp(raw.max_connections_per_uid, d.max_connections_per_uid),
        protocol,
    })
}

impl Policy {
    /// The Unix-socket listener settings (`[unix]`, `--unix`, `--unix-systemd`,
    /// `--unix-protocol`).
    pub fn unix(&self) -> &UnixSettings {
        &self.unix
    }

    /// The command line's `--unix PATH` (relative to `cwd`), `--unix-systemd` and
    /// `--unix-protocol http|lines`.
    pub(super) fn apply_unix_flags(
        &mut self,
        path: Option<&Path>,
        systemd: bool,
        protocol: Option<&str>,
        cwd: &Path,
    ) -> Result<(), ConfigError> {
        if let Some(p) = protocol {
            self.unix.protocol = UnixProtocol::parse(p).ok_or_else(|| {
                Source::new("<flags>", "").error(None, UnixProtocol::refusal("--unix-protocol", p))
            })?;
        }
        if let Some(p) = path {
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            };
            check_socket_path(&p)
                .map_err(|m| Source::new("<flags>", "").error(None, format!("--unix: {m}")))?;
            self.unix.path = Some(p);
        }
        if systemd {
            self.unix.systemd = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_toml("t.toml", text, &|p: &Path| Ok(p.to_path_buf()))
    }

    #[test]
    fn defaults_and_values() {
        let p = policy("[clients.a]\n").unwrap();
        assert!(!p.unix().enabled());
        assert_eq!(p.unix(), &UnixSettings::default());
        let p = policy(
            "[unix]\npath = \"/run/mcpd/mcpd.sock\"\nmode = \"0600\"\ngroup = \"mcpd-clients\"\nmax_connections = 0\nmax_connections_per_uid = 99999\n",
        )
        .unwrap();
        let u = p.unix();
        assert_eq!(u.path.as_deref(), Some(Path::new("/run/mcpd/mcpd.sock")));
        assert_eq!(u.mode, 0o600);
        assert_eq!(u.group, Some(UnixGroup::Name("mcpd-clients".into())));
        assert_eq!(u.max_connections, 1);
        assert_eq!(u.max_connections_per_uid, MAX_UNIX_CONNECTIONS);
        assert_eq!(u.protocol, UnixProtocol::Http, "the default");
        assert!(p.describe().contains(
            "unix listener: /run/mcpd/mcpd.sock protocol=http mode=0600 group=mcpd-clients max_connections=1"
        ));
        let p = policy("[unix]\npath = \"/s\"\nprotocol = \"lines\"\n").unwrap();
        assert_eq!(p.unix().protocol, UnixProtocol::Lines);
        assert!(p.describe().contains("protocol=lines"), "{}", p.describe());
        let p = policy("[unix]\nsystemd = true\nmode = 0o640\ngroup = 123\n").unwrap();
        assert!(p.unix().enabled() && p.unix().systemd);
        assert_eq!(
            (p.unix().mode, p.unix().group.clone()),
            (0o640, Some(UnixGroup::Gid(123)))
        );
        let p = policy("[unix]\npath = \"/s\"\ngroup = \"42\"\nmode = \"666\"\n").unwrap();
        assert_eq!(p.unix().group, Some(UnixGroup::Gid(42)));
        assert!(
            p.warnings()[0].contains("every local user"),
            "{:?}",
            p.warnings()
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        for (text, msg) in [
            ("[unix]\npath = \"rel.sock\"\n", "not an absolute path"),
            ("[unix]\npath = \"/a/../b\"\n", "without '.' or '..'"),
            ("[unix]\nmode = \"0999\"\n", "unix.mode"),
            ("[unix]\nmode = 0o4777\n", "unix.mode"),
            ("[unix]\ngroup = \"a b\"\n", "unix.group"),
            ("[unix]\nbacklog = 3\n", "backlog"),
            (
                "[unix]\nprotocol = \"HTTP\"\n",
                "unix.protocol must be \"http\" (Streamable HTTP) or \"lines\" (newline-delimited JSON-RPC), not 'HTTP'",
            ),
            ("[unix]\nprotocol = \"stdio\"\n", "not 'stdio'"),
            ("[unix]\nprotocol = 1\n", "t.toml:2:12: invalid type: integer `1`, expected a string"),
        ] {
            let e = policy(text).unwrap_err();
            assert!(e.to_string().contains(msg), "{text}: {e}");
        }
        let long = format!("[unix]\npath = \"/{}\"\n", "x".repeat(120));
        let e = policy(&long).unwrap_err();
        assert!(e.message.contains("longer than 107"), "{e}");
        assert_eq!(e.line, Some(2));
        let e = policy("[clients.a]\n[unix]\nprotocol = \"tcp\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(3), Some(12)), "{e}");
    }

    #[test]
    fn the_protocol_flag_replaces_the_file_and_is_checked() {
        let mut p = policy("[unix]\npath = \"/s\"\nprotocol = \"lines\"\n").unwrap();
        p.apply_unix_flags(None, false, None, Path::new("/"))
            .unwrap();
        assert_eq!(p.unix().protocol, UnixProtocol::Lines, "no flag: the file");
        p.apply_unix_flags(None, false, Some("http"), Path::new("/"))
            .unwrap();
        assert_eq!(p.unix().protocol, UnixProtocol::Http);
        let e = p
            .apply_unix_flags(None, false, Some("json"), Path::new("/"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "<flags>: --unix-protocol must be \"http\" (Streamable HTTP) or \"lines\" (newline-delimited JSON-RPC), not 'json'"
        );
        assert_eq!(p.unix().protocol, UnixProtocol::Http, "unchanged");
        for n in UnixProtocol::NAMES {
            assert_eq!(UnixProtocol::parse(n).map(UnixProtocol::as_str), Some(n));
        }
    }
}
