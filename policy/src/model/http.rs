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
    /// `listen` was written `localhost:PORT`: it is `127.0.0.1:PORT`, and `[::1]:PORT` is
    /// bound too (where the host has IPv6).
    pub localhost: bool,
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
    /// The `requestState` sealing key (`state_key_file`): shared by every instance of a
    /// deployment, so a state sealed by one verifies on all. `None`: a random key per start.
    pub state_key_file: Option<std::path::PathBuf>,
    /// The previous key (`state_key_previous_file`), accepted for verification only, for
    /// `state_ttl_secs` after the broker started or reloaded with it (a key rotation).
    pub state_key_previous_file: Option<std::path::PathBuf>,
    /// A sealed `requestState` older than this is refused, seconds.
    pub state_ttl_secs: u64,
    /// WebSocket keep-alive (`GET /mcp/ws`): a Ping every this many seconds; a socket whose
    /// peer has not answered the previous one by then is closed.
    pub ws_ping_secs: u64,
}

/// Default of `[http] ws_ping_secs`.
pub const DEFAULT_WS_PING_SECS: u64 = 30;
/// Upper bound of `[http] ws_ping_secs`.
pub const MAX_WS_PING_SECS: u64 = 3600;

/// Default of `[http] state_ttl_secs`: an input-required round is answered within minutes.
pub const DEFAULT_STATE_TTL_SECS: u64 = 600;
/// Upper bound of `[http] state_ttl_secs`.
pub const MAX_STATE_TTL_SECS: u64 = 86_400;

/// Default of `[http] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
/// Default of `[http] max_connections_per_ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u64 = 64;

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: None,
            localhost: false,
            client: None,
            allowed_hosts: Vec::new(),
            session_idle_secs: 300,
            max_sessions: 64,
            insecure_non_loopback: false,
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            state_key_file: None,
            state_key_previous_file: None,
            state_ttl_secs: DEFAULT_STATE_TTL_SECS,
            ws_ping_secs: DEFAULT_WS_PING_SECS,
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
    let (listen, localhost) = match &raw.listen {
        None => (None, false),
        Some(l) => {
            let (a, lo) = parse_listen(l.get_ref())
                .map_err(|m| src.error(Some(l.span()), format!("http.listen: {m}")))?;
            (Some(a), lo)
        }
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
    let key_path = |v: &Option<toml::Spanned<String>>, key: &str| match v {
        None => Ok(None),
        Some(p) if std::path::Path::new(p.get_ref()).is_absolute() => {
            Ok(Some(std::path::PathBuf::from(p.get_ref())))
        }
        Some(p) => Err(src.error(
            Some(p.span()),
            format!("http.{key} must be an absolute path"),
        )),
    };
    let state_key_file = key_path(&raw.state_key_file, "state_key_file")?;
    let state_key_previous_file =
        key_path(&raw.state_key_previous_file, "state_key_previous_file")?;
    if state_key_previous_file.is_some() && state_key_file.is_none() {
        return Err(src.error(
            raw.state_key_previous_file.as_ref().map(|p| p.span()),
            "http.state_key_previous_file needs http.state_key_file (the key that seals)",
        ));
    }
    let state_ttl_secs = match &raw.state_ttl_secs {
        None => DEFAULT_STATE_TTL_SECS,
        Some(v) if (1..=MAX_STATE_TTL_SECS).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            return Err(src.error(
                Some(v.span()),
                format!("http.state_ttl_secs must be between 1 and {MAX_STATE_TTL_SECS}"),
            ))
        }
    };
    Ok(HttpSettings {
        state_key_file,
        state_key_previous_file,
        state_ttl_secs,
        listen,
        localhost,
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
        ws_ping_secs: raw
            .ws_ping_secs
            .unwrap_or(d.ws_ping_secs)
            .clamp(1, MAX_WS_PING_SECS),
    })
}

/// A listener address: `IP:PORT` (`[v6]:PORT`), or `localhost:PORT` — `127.0.0.1:PORT` plus
/// `[::1]:PORT` (the `bool`). No other host name: what mcpd binds never depends on name
/// resolution (`localhost` is loopback by definition, RFC 6761).
pub fn parse_listen(s: &str) -> Result<(std::net::SocketAddr, bool), String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok((a, false));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("'{s}': '{port}' is not a port number"))?;
            Ok(((std::net::Ipv4Addr::LOCALHOST, port).into(), true))
        }
        Some((_, port)) if port.parse::<u16>().is_ok() => Err(format!(
            "'{s}': host names other than localhost are not resolved (give the interface's IP address, e.g. 192.0.2.10:{port} or [2001:db8::10]:{port})"
        )),
        _ => Err(format!(
            "'{s}' is not IP:PORT, [IPv6]:PORT or localhost:PORT (e.g. 127.0.0.1:8080)"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listen_addresses_are_ips_or_localhost() {
        assert_eq!(
            parse_listen("127.0.0.1:8080").unwrap(),
            ("127.0.0.1:8080".parse().unwrap(), false)
        );
        assert_eq!(
            parse_listen("[::1]:80").unwrap(),
            ("[::1]:80".parse().unwrap(), false)
        );
        assert_eq!(
            parse_listen("LOCALHOST:8080").unwrap(),
            ("127.0.0.1:8080".parse().unwrap(), true)
        );
        assert!(parse_listen("example.org:80")
            .unwrap_err()
            .contains("not resolved"));
        assert!(parse_listen("localhost:99999")
            .unwrap_err()
            .contains("port"));
        assert!(parse_listen("8080").unwrap_err().contains("not IP:PORT"));
        // The same rule in the file, with its line and column.
        let canon = |p: &std::path::Path| Ok(p.to_path_buf());
        let p = crate::Policy::from_toml(
            "t.toml",
            "[clients.local]\nread = [\"/x\"]\n[http]\nlisten = \"localhost:9000\"\n",
            &canon,
        )
        .unwrap();
        assert_eq!(p.http().listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert!(p.http().localhost);
        let e =
            crate::Policy::from_toml("t.toml", "[http]\nlisten = \"db.internal:9000\"\n", &canon)
                .unwrap_err();
        assert!(e.to_string().contains("t.toml:2:"), "{e}");
    }

    #[test]
    fn the_websocket_ping_interval_has_a_default_and_bounds() {
        let canon = |p: &std::path::Path| Ok(p.to_path_buf());
        let ping = |http: &str| {
            crate::Policy::from_toml(
                "t.toml",
                &format!("[clients.local]\nread = [\"/x\"]\n[http]\n{http}"),
                &canon,
            )
            .unwrap()
            .http()
            .ws_ping_secs
        };
        assert_eq!(ping(""), DEFAULT_WS_PING_SECS);
        assert_eq!(ping("ws_ping_secs = 5\n"), 5);
        assert_eq!(ping("ws_ping_secs = 0\n"), 1);
        assert_eq!(ping("ws_ping_secs = 99999\n"), MAX_WS_PING_SECS);
    }
}
