//! TLS on the HTTP listener: the rustls server configuration built from the policy's
//! `[http.tls]` files (certificate chain, key, client CA and CRLs for mTLS), swapped whole on
//! reload so that new connections get the new certificate while open ones keep theirs; the
//! inspection of those files for `mcpd doctor`.
//!
//! TLS 1.3 only unless `min_version = "1.2"`; ALPN `http/1.1`; the ring provider. With a client
//! CA every client must present a certificate that chains to it, is within its validity period
//! and is not revoked by a configured CRL (`WebPkiClientVerifier`): anything else fails the
//! handshake. Who the certificate names is the authenticator's business (`auth::x509`).
//!
//! Trusts the operator's files (after checking their permissions) and rustls; nothing the peer
//! sends.
#![forbid(unsafe_code)]

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, RwLock};

use mcpd_policy::{TlsSettings, TlsVersion};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

/// The DER of the verified end-entity certificate of a connection's client (mTLS), put on
/// every request of that connection.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<Vec<u8>>);

/// The listener's TLS state: the configuration new connections get.
#[derive(Debug)]
pub struct Tls {
    current: RwLock<Arc<ServerConfig>>,
    mtls: bool,
}

impl Tls {
    /// Load the files of `s` (start-up: an error refuses the start).
    pub fn load(s: &TlsSettings) -> Result<Self, String> {
        Ok(Self {
            current: RwLock::new(Arc::new(server_config(s)?)),
            mtls: s.client_ca.is_some(),
        })
    }

    /// Whether client certificates are required.
    pub fn mtls(&self) -> bool {
        self.mtls
    }

    /// The acceptor for a new connection (the configuration in force now).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        tokio_rustls::TlsAcceptor::from(cfg)
    }

    /// Load the files again (SIGHUP): on success new connections use them; on any error the
    /// previous configuration stays and the error is returned. mTLS cannot be switched on or
    /// off without a restart (the authenticator is chosen at start).
    pub fn reload(&self, s: Option<&TlsSettings>) -> Result<(), String> {
        let Some(s) = s else {
            return Err("the new policy has no [http.tls]; TLS stays on with the previous certificate until a restart".into());
        };
        if s.client_ca.is_some() != self.mtls {
            return Err("client certificates (client_ca) cannot be switched on or off by a reload; restart mcpd".into());
        }
        let cfg = server_config(s)?;
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(cfg),
            Err(p) => *p.into_inner() = Arc::new(cfg),
        }
        Ok(())
    }
}

/// How open a key file is: an error when others may read or anyone but the owner may write it;
/// a warning when its group may read it.
pub fn key_permissions(path: &Path) -> Result<Option<String>, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = md.mode() & 0o777;
    if mode & 0o026 != 0 {
        return Err(format!(
            "{}: private key with mode {mode:04o} is readable by others or writable by its group; chmod 600 it",
            path.display()
        ));
    }
    if mode & 0o040 != 0 {
        return Ok(Some(format!(
            "{}: private key with mode {mode:04o} is readable by its group (gid {}); prefer 600",
            path.display(),
            md.gid()
        )));
    }
    Ok(None)
}

/// The certificates of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// The rustls configuration of `s`: every file read and checked.
pub fn server_config(s: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS: {e}"))?;
    let certs = read_certs(&s.cert)?;
    if let Some(w) = key_permissions(&s.key)? {
        tracing::warn!("TLS: {w}");
    }
    let key = PrivateKeyDer::from_pem_file(&s.key)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", s.key.display()))?;
    let builder = match &s.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: not a CA certificate: {e}", ca.display()))?;
            }
            let mut crls = Vec::new();
            for f in &s.crls {
                crls.extend(read_crls(f)?);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                // A CRL revokes what its CA issued; clients of a CA without one are not refused
                // for that, and intermediates are the CA bundle's business.
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| format!("TLS client verification ({}): {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} / {}: {e}", s.cert.display(), s.key.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Why a handshake failed, from tokio-rustls' error: rustls' own message when there is one.
pub fn handshake_reason(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no client certificate".into(),
        Some(rustls::Error::InvalidCertificate(c)) => format!("client certificate refused: {c:?}"),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// Whether a handshake failure is about the client's certificate (an authentication failure).
pub fn is_certificate_failure(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertificate(_)
                | rustls::Error::InvalidCertRevocationList(_)
        )
    )
}

/// One line of `mcpd doctor` about a certificate file: its subject and validity.
fn describe_cert(label: &str, der: &[u8]) -> (bool, String) {
    match x509_parser::parse_x509_certificate(der) {
        Err(e) => (false, format!("{label}: not a parseable certificate: {e}")),
        Ok((_, c)) => {
            let v = c.validity();
            let now = x509_parser::time::ASN1Time::now();
            let when = format!("valid {} to {}", v.not_before, v.not_after);
            if v.not_after < now {
                (false, format!("{label}: {} EXPIRED ({when})", c.subject()))
            } else if v.not_before > now {
                (
                    false,
                    format!("{label}: {} NOT YET VALID ({when})", c.subject()),
                )
            } else {
                let days = (v.not_after.timestamp() - now.timestamp()) / 86_400;
                (
                    true,
                    format!("{label}: {} ({when}; {days} days left)", c.subject()),
                )
            }
        }
    }
}

/// `mcpd doctor`'s checks of the TLS files: each line says whether it is fine.
pub fn inspect(s: &TlsSettings) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    match read_certs(&s.cert) {
        Err(e) => out.push((false, format!("certificate: {e}"))),
        Ok(certs) => {
            let label = format!("certificate {}", s.cert.display());
            out.push(describe_cert(&label, &certs[0]));
            if certs.len() > 1 {
                out.push((
                    true,
                    format!("  chain: {} more certificate(s)", certs.len() - 1),
                ));
            }
        }
    }
    match key_permissions(&s.key) {
        Err(e) => out.push((false, format!("key: {e}"))),
        Ok(Some(w)) => out.push((true, format!("key: warning: {w}"))),
        Ok(None) => out.push((
            true,
            format!("key {}: owner-only permissions", s.key.display()),
        )),
    }
    if let Some(ca) = &s.client_ca {
        match read_certs(ca) {
            Err(e) => out.push((false, format!("client CA: {e}"))),
            Ok(certs) => {
                for c in certs {
                    out.push(describe_cert(&format!("client CA {}", ca.display()), &c));
                }
            }
        }
        for f in &s.crls {
            match read_crls(f) {
                Err(e) => out.push((false, format!("CRL: {e}"))),
                Ok(l) => out.push((true, format!("CRL {}: {} list(s)", f.display(), l.len()))),
            }
        }
    }
    match server_config(s) {
        Ok(_) => out.push((
            true,
            format!(
                "TLS configuration loads (min_version {}, {})",
                s.min_version.as_str(),
                if s.client_ca.is_some() {
                    "client certificates required"
                } else {
                    "no client certificates"
                }
            ),
        )),
        Err(e) => out.push((false, format!("TLS configuration does not load: {e}"))),
    }
    out
}
