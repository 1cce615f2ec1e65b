//! mTLS: the principal of a peer whose client certificate the TLS layer verified (it chains to
//! the configured CA, is within its validity period, is not revoked). [`ClientCertificate`]
//! reads the end-entity certificate's SAN URIs, SAN DNS names, e-mail addresses (SAN and
//! subject) and subject CNs and asks the policy which client they name
//! ([`Policy::client_for`]); none, or two → refused.
//!
//! Does not verify the certificate (rustls did, during the handshake: a peer without a valid
//! one never gets a request in) and keeps no state. Trusts only the DER the transport took from
//! the verified TLS connection.
#![forbid(unsafe_code)]

use mcpd_policy::{Policy, Presented};
use x509_parser::extensions::GeneralName;

use super::{AuthError, Authenticator, Credentials, Principal};

/// Most identity values read from one certificate (a bound on hostile input).
const MAX_NAMES: usize = 64;

/// The identities a certificate presents, and what the audit log may say about it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// SAN URIs.
    pub san_uris: Vec<String>,
    /// SAN DNS names.
    pub san_dns: Vec<String>,
    /// SAN rfc822Names and subject e-mail addresses.
    pub emails: Vec<String>,
    /// Subject common names.
    pub cns: Vec<String>,
    /// The subject, RFC 4514.
    pub subject: String,
    /// The issuer, RFC 4514.
    pub issuer: String,
    /// The serial number, hex.
    pub serial: String,
}

/// Parse the identities of a DER certificate.
pub fn identity(der: &[u8]) -> Result<CertIdentity, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
    let mut id = CertIdentity {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        ..CertIdentity::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in san.value.general_names.iter().take(MAX_NAMES) {
            match name {
                GeneralName::URI(u) => id.san_uris.push((*u).to_string()),
                GeneralName::DNSName(d) => id.san_dns.push((*d).to_string()),
                GeneralName::RFC822Name(m) => id.emails.push((*m).to_string()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name().take(MAX_NAMES) {
        if let Ok(s) = cn.as_str() {
            id.cns.push(s.to_string());
        }
    }
    for m in cert.subject().iter_email().take(MAX_NAMES) {
        if let Ok(s) = m.as_str() {
            id.emails.push(s.to_string());
        }
    }
    Ok(id)
}

/// An HTTPS listener with client certificates: the certificate's identities name the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCertificate;

impl Authenticator for ClientCertificate {
    fn authenticate(
        &self,
        policy: &Policy,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        let refused = |reason: String| AuthError::Certificate {
            reason,
            peer: creds.peer.to_string(),
        };
        let der = creds
            .client_cert
            .ok_or_else(|| refused("no verified client certificate".into()))?;
        let id = identity(der).map_err(refused)?;
        let presented = Presented::X509 {
            san_uris: &id.san_uris,
            san_dns: &id.san_dns,
            emails: &id.emails,
            cns: &id.cns,
        };
        let Some(client) = policy.client_for(&presented).cloned() else {
            return Err(refused(format!(
                "certificate '{}' (serial {}) names no client, or more than one ([clients.NAME.identity] x509_*)",
                id.subject, id.serial
            )));
        };
        let mut p = Principal::new(client, "mtls");
        p.attributes.push(("cert_subject", id.subject));
        p.attributes.push(("cert_serial", id.serial));
        p.attributes.push(("cert_issuer", id.issuer));
        Ok(p)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_read_from_the_certificate_and_mapped() {
        let mut params =
            rcgen::CertificateParams::new(vec!["agent.example.org".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/alice".try_into().unwrap(),
        ));
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "a@example.org".try_into().unwrap(),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice-cn");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = identity(cert.der()).unwrap();
        assert_eq!(id.san_uris, ["spiffe://example.org/alice"]);
        assert_eq!(id.san_dns, ["agent.example.org"]);
        assert_eq!(id.emails, ["a@example.org"]);
        assert_eq!(id.cns, ["alice-cn"]);
        assert!(id.subject.contains("CN=alice-cn"), "{}", id.subject);
        assert!(!id.serial.is_empty());
        let policy = Policy::from_toml(
            "t.toml",
            "[clients.alice.identity]\nx509_san_uri = [\"spiffe://example.org/alice\"]\n[clients.bob.identity]\nx509_cn = [\"bob\"]\n",
            &|p: &std::path::Path| Ok(p.to_path_buf()),
        )
        .unwrap();
        let creds = Credentials::new("http", "127.0.0.1:1").with_client_cert(Some(cert.der()));
        let p = ClientCertificate.authenticate(&policy, &creds).unwrap();
        assert_eq!(p.client.as_str(), "alice");
        assert_eq!(p.method, "mtls");
        assert!(p.attributes.iter().any(|(k, _)| *k == "cert_serial"));
        let none = Credentials::new("http", "127.0.0.1:1");
        assert!(matches!(
            ClientCertificate.authenticate(&policy, &none),
            Err(AuthError::Certificate { .. })
        ));
    }
}
