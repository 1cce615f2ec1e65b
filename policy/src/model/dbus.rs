//! The D-Bus transport settings (`[dbus]`, `--dbus system|session`, `--dbus-address ADDR`):
//! which bus, the well-known name, and the bounds. Connects to nothing (the broker does, at
//! start). Trusts the parsed config only as far as it checks it: the name must be a valid
//! well-known bus name, the address a plain D-Bus address, numbers are clamped.
//!
//! Which callers speak for which client is not configured here but per client, with the same
//! rules as the Unix socket (`[clients.NAME.identity] unix_uid = [...]`, else `unix_gid`): the
//! bus daemon's `GetConnectionCredentials` gives the caller's uid and groups.

use serde::Deserialize;
use toml::Spanned;

use super::types::Policy;
use crate::config::{ConfigError, Source};

/// Default `[dbus] name`.
pub const DEFAULT_DBUS_NAME: &str = "org.mcpd.Server1";
/// Default `[dbus] max_message_bytes`: the longest JSON-RPC message a `Call` or `Reply` takes.
pub const DEFAULT_DBUS_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
/// Ceiling of `[dbus] max_message_bytes` (below the D-Bus protocol's 128 MiB per message).
pub const MAX_DBUS_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;
/// Default `[dbus] max_callers`: callers (unique names, each with its session) at once.
pub const DEFAULT_DBUS_MAX_CALLERS: u64 = 64;
/// Ceiling of `[dbus] max_callers`.
pub const MAX_DBUS_CALLERS: u64 = 4096;
/// Longest `[dbus] address` / `--dbus-address`.
pub const MAX_DBUS_ADDRESS_BYTES: usize = 1024;

/// `[dbus]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDbus {
    /// `"system"` or `"session"`; absent: no D-Bus transport.
    pub bus: Option<Spanned<String>>,
    /// A bus address to connect to instead of the bus's usual one (tests, private buses).
    pub address: Option<Spanned<String>>,
    /// The well-known name to own.
    pub name: Option<Spanned<String>>,
    /// The longest message a `Call` or `Reply` takes.
    pub max_message_bytes: Option<u64>,
    /// Most callers at once.
    pub max_callers: Option<u64>,
}

/// Which bus mcpd serves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbusBus {
    /// The system bus (`/run/dbus/system_bus_socket`, or `DBUS_SYSTEM_BUS_ADDRESS`).
    System,
    /// The session bus (`DBUS_SESSION_BUS_ADDRESS`).
    Session,
}

impl DbusBus {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Session => "session",
        }
    }

    /// The bus named `s` (exactly as written: lower case).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Self::System),
            "session" => Some(Self::Session),
            _ => None,
        }
    }

    fn refusal(key: &str, given: &str) -> String {
        format!("{key} must be \"system\" or \"session\", not '{given}'")
    }
}

/// D-Bus transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbusSettings {
    /// The bus (`None`: no D-Bus transport).
    pub bus: Option<DbusBus>,
    /// An explicit bus address, replacing the bus's usual one.
    pub address: Option<String>,
    /// The well-known name owned.
    pub name: String,
    /// The longest message a `Call` or `Reply` takes.
    pub max_message_bytes: u64,
    /// Most callers at once.
    pub max_callers: u64,
}

impl Default for DbusSettings {
    fn default() -> Self {
        Self {
            bus: None,
            address: None,
            name: DEFAULT_DBUS_NAME.into(),
            max_message_bytes: DEFAULT_DBUS_MAX_MESSAGE_BYTES,
            max_callers: DEFAULT_DBUS_MAX_CALLERS,
        }
    }
}

impl DbusSettings {
    /// Whether the D-Bus transport is configured.
    pub fn enabled(&self) -> bool {
        self.bus.is_some()
    }

    /// One line for `check-config`.
    pub fn describe(&self) -> String {
        let Some(bus) = self.bus else {
            return "dbus: off\n".into();
        };
        format!(
            "dbus: {} bus{} name={} max_message_bytes={} max_callers={} (callers map to clients by identity unix_uid / unix_gid)\n",
            bus.as_str(),
            self.address
                .as_ref()
                .map_or(String::new(), |a| format!(" at {a}")),
            self.name,
            self.max_message_bytes,
            self.max_callers
        )
    }
}

/// A well-known bus name: 2 to 255 bytes, at least two dot-separated elements of
/// `[A-Za-z0-9_-]`, none empty or starting with a digit, not starting with `:`.
pub fn check_bus_name(n: &str) -> Result<(), String> {
    let elements: Vec<&str> = n.split('.').collect();
    let ok = n.len() <= 255
        && elements.len() >= 2
        && elements.iter().all(|e| {
            !e.is_empty()
                && !e.as_bytes()[0].is_ascii_digit()
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{n}' is not a well-known bus name (like org.mcpd.Server1: dot-separated elements of letters, digits, '_' and '-', none starting with a digit)"
        ))
    }
}

/// A bus address as D-Bus writes them (`unix:path=/run/dbus/system_bus_socket`): printable
/// ASCII, no spaces, a transport prefix, bounded.
pub fn check_bus_address(a: &str) -> Result<(), String> {
    let ok = !a.is_empty()
        && a.len() <= MAX_DBUS_ADDRESS_BYTES
        && a.contains(':')
        && a.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "not a D-Bus address (like unix:path=/run/dbus/system_bus_socket, at most {MAX_DBUS_ADDRESS_BYTES} bytes)"
        ))
    }
}

pub(super) fn dbus_settings(
    src: &Source,
    raw: Option<&RawDbus>,
) -> Result<DbusSettings, ConfigError> {
    let d = DbusSettings::default();
    let Some(raw) = raw else {
        return Ok(d);
    };
    let bus =
        match &raw.bus {
            None => None,
            Some(b) => Some(DbusBus::parse(b.get_ref()).ok_or_else(|| {
                src.error(Some(b.span()), DbusBus::refusal("dbus.bus", b.get_ref()))
            })?),
        };
    let address = match &raw.address {
        None => None,
        Some(a) => {
            check_bus_address(a.get_ref())
                .map_err(|m| src.error(Some(a.span()), format!("dbus.address: {m}")))?;
            Some(a.get_ref().clone())
        }
    };
    let name = match &raw.name {
        None => d.name,
        Some(n) => {
            check_bus_name(n.get_ref())
                .map_err(|m| src.error(Some(n.span()), format!("dbus.name: {m}")))?;
            n.get_ref().clone()
        }
    };
    Ok(DbusSettings {
        bus,
        address,
        name,
        max_message_bytes: raw
            .max_message_bytes
            .unwrap_or(d.max_message_bytes)
            .clamp(1024, MAX_DBUS_MESSAGE_BYTES),
        max_callers: raw
            .max_callers
            .unwrap_or(d.max_callers)
            .clamp(1, MAX_DBUS_CALLERS),
    })
}

impl Policy {
    /// The D-Bus transport settings (`[dbus]`, `--dbus`, `--dbus-address`).
    pub fn dbus(&self) -> &DbusSettings {
        &self.dbus
    }

    /// The command line's `--dbus system|session` and `--dbus-address ADDR` (which needs a
    /// bus: from `--dbus` or the file).
    pub(super) fn apply_dbus_flags(
        &mut self,
        bus: Option<&str>,
        address: Option<&str>,
    ) -> Result<(), ConfigError> {
        let flags = || Source::new("<flags>", "");
        if let Some(b) = bus {
            self.dbus.bus = Some(
                DbusBus::parse(b)
                    .ok_or_else(|| flags().error(None, DbusBus::refusal("--dbus", b)))?,
            );
        }
        if let Some(a) = address {
            check_bus_address(a)
                .map_err(|m| flags().error(None, format!("--dbus-address: {m}")))?;
            if self.dbus.bus.is_none() {
                return Err(flags().error(
                    None,
                    "--dbus-address needs a bus: --dbus system|session or [dbus] bus",
                ));
            }
            self.dbus.address = Some(a.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_toml("t.toml", text, &|p: &std::path::Path| Ok(p.to_path_buf()))
    }

    #[test]
    fn defaults_values_and_refusals() {
        let p = policy("[clients.a]\n").unwrap();
        assert!(!p.dbus().enabled());
        assert_eq!(p.dbus(), &DbusSettings::default());
        let p = policy(
            "[dbus]\nbus = \"system\"\nname = \"org.example.Mcp\"\nmax_message_bytes = 1\nmax_callers = 99999\n",
        )
        .unwrap();
        let d = p.dbus();
        assert_eq!(d.bus, Some(DbusBus::System));
        assert_eq!(d.name, "org.example.Mcp");
        assert_eq!(
            (d.max_message_bytes, d.max_callers),
            (1024, MAX_DBUS_CALLERS)
        );
        assert!(p
            .describe()
            .contains("dbus: system bus name=org.example.Mcp max_message_bytes=1024"));
        for (text, msg) in [
            (
                "[dbus]\nbus = \"System\"\n",
                "dbus.bus must be \"system\" or \"session\", not 'System'",
            ),
            ("[dbus]\nname = \"nodots\"\n", "dbus.name"),
            ("[dbus]\nname = \"org.1bad\"\n", "dbus.name"),
            ("[dbus]\nname = \":1.5\"\n", "dbus.name"),
            ("[dbus]\naddress = \"no colon\"\n", "dbus.address"),
            ("[dbus]\nfoo = 1\n", "foo"),
        ] {
            let e = policy(text).unwrap_err();
            assert!(e.to_string().contains(msg), "{text}: {e}");
            assert_eq!(e.line, Some(2), "{e}");
        }
    }

    #[test]
    fn flags_replace_the_file_and_are_checked() {
        let mut p = policy("[dbus]\nbus = \"system\"\n").unwrap();
        p.apply_dbus_flags(Some("session"), Some("unix:path=/tmp/b"))
            .unwrap();
        assert_eq!(p.dbus().bus, Some(DbusBus::Session));
        assert_eq!(p.dbus().address.as_deref(), Some("unix:path=/tmp/b"));
        let e = p.apply_dbus_flags(Some("user"), None).unwrap_err();
        assert!(e.to_string().contains("--dbus must be"), "{e}");
        let mut p = policy("[clients.a]\n").unwrap();
        let e = p.apply_dbus_flags(None, Some("unix:path=/b")).unwrap_err();
        assert!(e.to_string().contains("needs a bus"), "{e}");
    }
}
