//! TLS on the HTTP listener (`[http.tls]`, `--tls-cert`, `--tls-key`, `--tls-client-ca`) and
//! the exposure rule of the listener: which authentication methods give each HTTP peer its own
//! principal ([`Policy::http_auth_methods`]), and when a non-loopback listener is allowed
//! ([`Policy::http_exposure_error`]).
//!
//! Does no I/O: file paths are stored as given (absolute in the file, made absolute against the
//! working directory for flags); the broker reads, parses and reloads them. Trusts the parsed
//! configuration only as far as it checks it.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::types::Policy;
use crate::config::{ConfigError, Source};

/// Most CRL files (a bound on the operator's list).
pub const MAX_CRL_FILES: usize = 64;

/// `[http.tls]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain of the server (end-entity first).
    pub cert: Option<Spanned<String>>,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1); readable by mcpd's user only.
    pub key: Option<Spanned<String>>,
    /// PEM CA bundle: when set, every client must present a certificate chaining to it (mTLS).
    pub client_ca: Option<Spanned<String>>,
    /// PEM or DER certificate revocation lists of the client CA.
    #[serde(default)]
    pub crls: Vec<Spanned<String>>,
    /// Lowest protocol version: `"1.3"` (default) or `"1.2"`.
    pub min_version: Option<Spanned<String>>,
}

/// The lowest TLS version the listener accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (opt-in).
    Tls12,
    /// TLS 1.3 only (the default).
    #[default]
    Tls13,
}

impl TlsVersion {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        }
    }
}

/// The validated TLS settings of the HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM client CA bundle (mTLS) or none.
    pub client_ca: Option<PathBuf>,
    /// CRL files of the client CA.
    pub crls: Vec<PathBuf>,
    /// Lowest protocol version.
    pub min_version: TlsVersion,
}

/// What `mcpd serve`'s TLS flags contribute (each replaces the file's value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOverlay {
    /// `--tls-cert FILE`.
    pub cert: Option<PathBuf>,
    /// `--tls-key FILE`.
    pub key: Option<PathBuf>,
    /// `--tls-client-ca FILE`.
    pub client_ca: Option<PathBuf>,
}

fn abs(src: &Source, key: &str, v: &Spanned<String>) -> Result<PathBuf, ConfigError> {
    let p = PathBuf::from(v.get_ref());
    if !p.is_absolute() {
        return Err(src.error(
            Some(v.span()),
            format!("http.tls.{key}: '{}' is not an absolute path", v.get_ref()),
        ));
    }
    Ok(p)
}

/// Validate `[http.tls]`.
pub(super) fn tls_settings(
    src: &Source,
    raw: Option<&Spanned<RawTls>>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let Some(spanned) = raw else {
        return Ok(None);
    };
    let r = spanned.get_ref();
    let (Some(cert), Some(key)) = (&r.cert, &r.key) else {
        return Err(src.error(
            Some(spanned.span()),
            "http.tls: both cert and key are required",
        ));
    };
    let min_version = match r.min_version.as_ref().map(|v| (v.get_ref().as_str(), v)) {
        None | Some(("1.3", _)) => TlsVersion::Tls13,
        Some(("1.2", _)) => TlsVersion::Tls12,
        Some((other, v)) => {
            return Err(src.error(
                Some(v.span()),
                format!("http.tls.min_version must be \"1.3\" or \"1.2\", not '{other}'"),
            ))
        }
    };
    if r.crls.len() > MAX_CRL_FILES {
        return Err(src.error(
            Some(spanned.span()),
            format!("http.tls.crls: at most {MAX_CRL_FILES} files"),
        ));
    }
    if !r.crls.is_empty() && r.client_ca.is_none() {
        return Err(src.error(
            Some(spanned.span()),
            "http.tls.crls: needs http.tls.client_ca (revocation lists are for client certificates)",
        ));
    }
    Ok(Some(TlsSettings {
        cert: abs(src, "cert", cert)?,
        key: abs(src, "key", key)?,
        client_ca: r
            .client_ca
            .as_ref()
            .map(|c| abs(src, "client_ca", c))
            .transpose()?,
        crls: r
            .crls
            .iter()
            .map(|c| abs(src, "crls", c))
            .collect::<Result<_, _>>()?,
        min_version,
    }))
}

/// Why the TLS flags cannot be applied.
pub(super) fn apply_tls_overlay(
    current: Option<TlsSettings>,
    o: &TlsOverlay,
    cwd: &Path,
) -> Result<Option<TlsSettings>, String> {
    let mk = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            cwd.join(p)
        }
    };
    if o.cert.is_none() && o.key.is_none() && o.client_ca.is_none() {
        return Ok(current);
    }
    let (cert, key) =
        match (&o.cert, &o.key, &current) {
            (Some(c), Some(k), _) => (mk(c), mk(k)),
            (None, None, Some(t)) => (t.cert.clone(), t.key.clone()),
            (Some(c), None, Some(t)) => (mk(c), t.key.clone()),
            (None, Some(k), Some(t)) => (t.cert.clone(), mk(k)),
            _ => return Err(
                "--tls-cert and --tls-key go together (or with [http.tls] in the configuration)"
                    .into(),
            ),
        };
    let mut t = current.unwrap_or(TlsSettings {
        cert: PathBuf::new(),
        key: PathBuf::new(),
        client_ca: None,
        crls: Vec::new(),
        min_version: TlsVersion::Tls13,
    });
    t.cert = cert;
    t.key = key;
    if let Some(ca) = &o.client_ca {
        t.client_ca = Some(mk(ca));
    }
    Ok(Some(t))
}

impl Policy {
    /// The TLS settings of the HTTP listener (`None`: plaintext, loopback only).
    pub fn http_tls(&self) -> Option<&TlsSettings> {
        self.http.tls.as_ref()
    }

    /// The authentication methods that give each HTTP peer its own principal: `mtls` (a client
    /// CA is configured). Another method (bearer tokens) adds its name here.
    pub fn http_auth_methods(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.http_tls().is_some_and(|t| t.client_ca.is_some()) {
            m.push("mtls");
        }
        if self.jwt().is_some() {
            m.push("jwt");
        }
        m
    }

    /// Why the HTTP listener may not listen where it is configured to: a non-loopback address
    /// needs TLS and an authentication method ([`Self::http_auth_methods`]), unless the loud
    /// insecure opt-in was given.
    pub fn http_exposure_error(&self) -> Option<String> {
        let addr = self.http.listen?;
        if addr.ip().is_loopback() || self.http.insecure_non_loopback {
            return None;
        }
        if self.http_tls().is_none() {
            return Some(format!("{addr} is not a loopback address: it needs TLS ([http.tls] or --tls-cert/--tls-key) and an authentication method (a client CA: [http.tls] client_ca or --tls-client-ca), or the explicit --insecure-non-loopback-without-auth / http.insecure_non_loopback = true"));
        }
        if self.http_auth_methods().is_empty() {
            return Some(format!("{addr} is not a loopback address: TLS alone does not say who a peer is; configure an authentication method (a client CA: [http.tls] client_ca or --tls-client-ca), or pass the explicit --insecure-non-loopback-without-auth / http.insecure_non_loopback = true"));
        }
        None
    }

    /// `check-config`'s lines for TLS.
    pub(crate) fn describe_tls(&self) -> String {
        let h = &self.http;
        let mut s = match h.listen {
            Some(addr) => format!(
                "http: listen {addr}, client {}, session idle {}, max sessions {}, connections at most {} in total, {} per source address, WebSocket ping every {}{}\n",
                h.client.as_ref().map_or("none (tokens only)".into(), |c| c.to_string()),
                super::types::units::secs(h.session_idle_secs),
                h.max_sessions,
                h.max_connections,
                h.max_connections_per_ip,
                super::types::units::secs(h.ws_ping_secs),
                if h.allowed_hosts.is_empty() {
                    String::new()
                } else {
                    format!(", extra hosts {}", h.allowed_hosts.join(" "))
                }
            ) + &format!(
                "http.state: {}, valid {}\n",
                match (&h.state_key_file, &h.state_key_previous_file) {
                    (None, _) => "random key per start (a state verifies only on this instance, until it restarts)".to_string(),
                    (Some(k), None) => format!("key {}", k.display()),
                    (Some(k), Some(p)) => format!("key {}, previous key {} (verification only, for the ttl after each load)", k.display(), p.display()),
                },
                super::types::units::secs(h.state_ttl_secs)
            ) + &if h.trusted_proxies.is_empty() {
                "http.proxies: none trusted (the source address is the TCP peer's)\n".to_string()
            } else {
                format!(
                    "http.proxies: {} name the client in {} (their connections are not capped per source address; their clients' requests are)\n",
                    h.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
                    h.forwarded_header.name()
                )
            },
            None => String::new(),
        };
        let Some(t) = self.http_tls() else {
            if h.listen.is_some() {
                s.push_str("http.tls: off (plaintext)\n");
            }
            return s;
        };
        s.push_str(&format!(
            "http.tls: cert {}, key {}, min_version {}\n",
            t.cert.display(),
            t.key.display(),
            t.min_version.as_str()
        ));
        match &t.client_ca {
            Some(ca) => {
                s.push_str(&format!(
                    "http.tls: client certificates required (mTLS), CA {}",
                    ca.display()
                ));
                if !t.crls.is_empty() {
                    let crls: Vec<String> =
                        t.crls.iter().map(|c| c.display().to_string()).collect();
                    s.push_str(&format!(", CRLs {}", crls.join(", ")));
                }
                s.push('\n');
            }
            None => s.push_str("http.tls: no client certificates (no client_ca)\n"),
        }
        if h.listen.is_none() {
            s.push_str(&format!(
                "http: connections at most {} in total, {} per source address\n",
                h.max_connections, h.max_connections_per_ip
            ));
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::overlay::Overlay;

    fn canon(p: &Path) -> std::io::Result<PathBuf> {
        Ok(p.to_path_buf())
    }

    fn load(text: Option<&str>, o: &Overlay) -> Result<Policy, String> {
        Policy::load(text.map(|t| ("t.toml", t)), o, Path::new("/cwd"), &canon)
            .map_err(|e| e.to_string())
    }

    const TLS: &str =
        "[clients.a]\n[stdio]\nclient = \"a\"\n[http]\nlisten = \"0.0.0.0:8443\"\n[http.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n";

    #[test]
    fn non_loopback_needs_tls_and_a_client_ca() {
        let e = load(Some(TLS), &Overlay::default()).unwrap_err();
        assert!(e.contains("TLS alone does not say who a peer is"), "{e}");
        let with_ca = format!("{TLS}client_ca = \"/ca.pem\"\ncrls = [\"/r.crl\"]\n");
        let p = load(Some(&with_ca), &Overlay::default()).unwrap();
        let t = p.http_tls().unwrap();
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(t.client_ca.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(p.http_auth_methods(), ["mtls"]);
        assert!(p.describe().contains("client certificates required (mTLS)"));
        let plain = "[clients.a]\n[stdio]\nclient = \"a\"\n[http]\nlisten = \"0.0.0.0:8443\"\n";
        let e = load(Some(plain), &Overlay::default()).unwrap_err();
        assert!(e.contains("needs TLS"), "{e}");
        // Flags: a quick start on the network.
        let o = Overlay {
            http_listen: Some("0.0.0.0:8443".parse().unwrap()),
            tls: TlsOverlay {
                cert: Some("c.pem".into()),
                key: Some("k.pem".into()),
                client_ca: Some("ca.pem".into()),
            },
            ..Overlay::default()
        };
        let p = load(None, &o).unwrap();
        assert_eq!(p.http_tls().unwrap().cert, PathBuf::from("/cwd/c.pem"));
        let o = Overlay {
            tls: TlsOverlay {
                cert: Some("c.pem".into()),
                ..TlsOverlay::default()
            },
            ..Overlay::default()
        };
        assert!(load(None, &o).unwrap_err().contains("go together"));
    }

    #[test]
    fn bad_tls_settings_are_refused_with_their_line() {
        for (extra, want) in [
            ("min_version = \"1.1\"\n", "min_version"),
            ("crls = [\"/r.crl\"]\n", "needs http.tls.client_ca"),
            ("client_ca = \"ca.pem\"\n", "not an absolute path"),
            ("ciphers = []\n", "ciphers"),
        ] {
            let text = format!("{TLS}{extra}").replace("0.0.0.0", "127.0.0.1");
            let e = load(Some(&text), &Overlay::default()).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
        }
        let text = "[clients.a]\n[http.tls]\ncert = \"/c.pem\"\n";
        assert!(load(Some(text), &Overlay::default())
            .unwrap_err()
            .contains("both cert and key"));
        let text = format!("{TLS}min_version = \"1.2\"\n").replace("0.0.0.0", "127.0.0.1");
        let p = load(Some(&text), &Overlay::default()).unwrap();
        assert_eq!(p.http_tls().unwrap().min_version, TlsVersion::Tls12);
        assert!(p.http_auth_methods().is_empty());
    }
}
