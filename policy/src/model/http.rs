//! The Streamable HTTP transport settings (`[http]`): defaults, validation and bounds. Opens
//! no socket (the broker does). Trusts the parsed config only as far as it checks it: the
//! client it names must exist, numbers are clamped.

use std::collections::BTreeMap;

use super::types::{ClientId, Permissions};
use crate::config::{ConfigError, Source};

/// Streamable HTTP transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where to listen (`None`: no HTTP unless `--http` is given).
    pub listen: Option<std::net::SocketAddr>,
    /// The client HTTP sessions speak for.
    pub client: Option<ClientId>,
    /// Extra accepted `Host` values.
    pub allowed_hosts: Vec<String>,
    /// Idle time before a session is reaped, seconds.
    pub session_idle_secs: u64,
    /// Most sessions at once.
    pub max_sessions: u64,
    /// Non-loopback listening without authentication was explicitly allowed.
    pub insecure_non_loopback: bool,
    /// `[http.tls]` (`None`: plaintext).
    pub tls: Option<super::tls::TlsSettings>,
    /// Most open connections in total.
    pub max_connections: u64,
    /// Most open connections per source IP address.
    pub max_connections_per_ip: u64,
}

/// Default of `[http] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
/// Default of `[http] max_connections_per_ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u64 = 64;

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: None,
            client: None,
            allowed_hosts: Vec::new(),
            session_idle_secs: 300,
            max_sessions: 64,
            insecure_non_loopback: false,
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

pub(super) fn http_settings(
    src: &Source,
    raw: Option<&crate::config::RawHttp>,
    clients: &BTreeMap<ClientId, Permissions>,
    stdio_client: &Option<ClientId>,
    warnings: &mut Vec<String>,
) -> Result<HttpSettings, ConfigError> {
    let d = HttpSettings::default();
    let Some(raw) = raw else {
        return Ok(HttpSettings {
            client: stdio_client.clone(),
            ..d
        });
    };
    let listen = match &raw.listen {
        None => None,
        Some(l) => Some(l.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
            src.error(
                Some(l.span()),
                format!("http.listen: '{}' is not an address:port", l.get_ref()),
            )
        })?),
    };
    let client = match &raw.client {
        Some(c) => Some(
            ClientId::parse(c.get_ref())
                .filter(|id| clients.contains_key(id))
                .ok_or_else(|| {
                    src.error(
                        Some(c.span()),
                        format!("http.client: unknown client '{}'", c.get_ref()),
                    )
                })?,
        ),
        None => stdio_client.clone(),
    };
    // A non-loopback `listen` is checked once the whole policy is built
    // (`Policy::http_exposure_error`: TLS and an authentication method, or the opt-in).
    if raw.insecure_non_loopback {
        warnings.push("http.insecure_non_loopback = true: unauthenticated MCP over HTTP may be reachable from the network".into());
    }
    let mut allowed_hosts = Vec::new();
    for h in &raw.allowed_hosts {
        let v = h.get_ref().to_ascii_lowercase();
        if v.is_empty() || v.len() > 255 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(src.error(Some(h.span()), "http.allowed_hosts: invalid host"));
        }
        allowed_hosts.push(v);
    }
    Ok(HttpSettings {
        listen,
        client,
        allowed_hosts,
        session_idle_secs: raw.session_idle_secs.unwrap_or(d.session_idle_secs).max(1),
        max_sessions: raw.max_sessions.unwrap_or(d.max_sessions).clamp(1, 10_000),
        insecure_non_loopback: raw.insecure_non_loopback,
        tls: super::tls::tls_settings(src, raw.tls.as_ref())?,
        max_connections: raw
            .max_connections
            .unwrap_or(d.max_connections)
            .clamp(1, 1_000_000),
        max_connections_per_ip: raw
            .max_connections_per_ip
            .unwrap_or(d.max_connections_per_ip)
            .clamp(1, 1_000_000),
    })
}
