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
    /// Proxies whose [`Self::forwarded_header`] names the client (`trusted_proxies`).
    pub trusted_proxies: Vec<ProxyNet>,
    /// The header trusted proxies set.
    pub forwarded_header: ForwardedHeader,
    /// WebSocket keep-alive (`GET /mcp/ws`): a Ping every this many seconds; a socket whose
    /// peer has not answered the previous one by then is closed.
    pub ws_ping_secs: u64,
}

/// Most entries of `[http] trusted_proxies`.
pub const MAX_TRUSTED_PROXIES: usize = 64;

/// One entry of `[http] trusted_proxies`: an address, or a network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl ProxyNet {
    /// `192.0.2.7`, `10.0.0.0/8`, `::1` or `fd00::/8`. Host bits set below the prefix are
    /// refused (`10.1.2.3/8` is probably a typo for something narrower).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR network"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0..={max}"))?,
        };
        let net = Self { addr, prefix };
        if net.network() != addr {
            return Err(format!(
                "'{s}' has host bits set below /{prefix} (the network is {}/{prefix})",
                net.network()
            ));
        }
        Ok(net)
    }

    fn mask(&self, bits: u32) -> u128 {
        let p = u32::from(self.prefix);
        if p == 0 {
            0
        } else {
            (!0u128 << (bits - p)) & (!0u128 >> (128 - bits))
        }
    }

    fn network(&self) -> std::net::IpAddr {
        match self.addr {
            std::net::IpAddr::V4(v) => {
                let m = self.mask(32) as u32;
                std::net::IpAddr::V4((u32::from(v) & m).into())
            }
            std::net::IpAddr::V6(v) => {
                std::net::IpAddr::V6((u128::from(v) & self.mask(128)).into())
            }
        }
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                let m = self.mask(32) as u32;
                u32::from(n) & m == u32::from(a) & m
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                let m = self.mask(128);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for ProxyNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx `$proxy_add_x_forwarded_for`, HAProxy
    /// `option forwardfor`).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
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
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
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
    if raw.trusted_proxies.len() > MAX_TRUSTED_PROXIES {
        return Err(src.error(
            raw.trusted_proxies
                .get(MAX_TRUSTED_PROXIES)
                .map(|p| p.span()),
            format!("http.trusted_proxies: at most {MAX_TRUSTED_PROXIES} entries"),
        ));
    }
    let mut trusted_proxies = Vec::new();
    for p in &raw.trusted_proxies {
        let net = ProxyNet::parse(p.get_ref().trim())
            .map_err(|m| src.error(Some(p.span()), format!("http.trusted_proxies: {m}")))?;
        if net.prefix == 0 {
            return Err(src.error(
                Some(p.span()),
                "http.trusted_proxies: a /0 network would let every peer name its own address",
            ));
        }
        trusted_proxies.push(net);
    }
    let forwarded_header = match &raw.forwarded_header {
        None => ForwardedHeader::default(),
        Some(h) => match h.get_ref().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            _ => {
                return Err(src.error(
                    Some(h.span()),
                    "http.forwarded_header must be \"x-forwarded-for\" or \"forwarded\"",
                ))
            }
        },
    };
    if raw.forwarded_header.is_some() && trusted_proxies.is_empty() {
        warnings.push(
            "http.forwarded_header is set but http.trusted_proxies is empty: no forwarded address is used".into(),
        );
    }
    Ok(HttpSettings {
        trusted_proxies,
        forwarded_header,
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
    fn trusted_proxies_are_addresses_or_networks() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let n = ProxyNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains(ip("10.255.1.2")));
        assert!(!n.contains(ip("11.0.0.1")));
        // An IPv4-mapped IPv6 peer (a dual-stack socket) is the IPv4 address.
        assert!(n.contains(ip("::ffff:10.1.2.3")));
        let one = ProxyNet::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = ProxyNet::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(ProxyNet::parse("::1").unwrap().contains(ip("::1")));
        assert!(ProxyNet::parse("10.1.2.3/8")
            .unwrap_err()
            .contains("host bits"));
        assert!(ProxyNet::parse("10.0.0.0/33").is_err());
        assert!(ProxyNet::parse("proxy.internal").is_err());
        let canon = |p: &std::path::Path| Ok(p.to_path_buf());
        let p = crate::Policy::from_toml(
            "t.toml",
            "[http]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\nforwarded_header = \"Forwarded\"\n",
            &canon,
        )
        .unwrap();
        assert_eq!(p.http().trusted_proxies.len(), 2);
        assert_eq!(p.http().forwarded_header, ForwardedHeader::Forwarded);
        for bad in [
            "trusted_proxies = [\"0.0.0.0/0\"]",
            "trusted_proxies = [\"10.0.0.1/8\"]",
            "forwarded_header = \"x-real-ip\"",
        ] {
            let e = crate::Policy::from_toml("t.toml", &format!("[http]\n{bad}\n"), &canon)
                .unwrap_err();
            assert!(e.to_string().contains("t.toml:2:"), "{bad}: {e}");
        }
        let d = crate::Policy::from_toml("t.toml", "", &canon).unwrap();
        assert!(d.http().trusted_proxies.is_empty());
    }

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
