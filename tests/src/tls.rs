//! TLS for the end-to-end tests: certificate authorities and certificates made with rcgen in
//! the test (server, client, expired, another CA's, revoked through a CRL), written as PEM files
//! with the permissions mcpd wants, and a blocking rustls client that speaks raw HTTP/1.1 over
//! a real handshake.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::http::{read_head, Response};

/// A date: (year, month, day).
pub type Ymd = (i32, u8, u8);

/// A certificate authority.
pub struct Ca {
    pub cert_pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub serial: Vec<u8>,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self {
            cert_pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    fn sign(&self, mut p: CertificateParams, serial: u64) -> Leaf {
        // Minimal DER: no leading zero bytes, and non-negative.
        let mut serial_bytes: Vec<u8> = serial
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        if serial_bytes.first().is_none_or(|b| *b >= 0x80) {
            serial_bytes.insert(0, 0);
        }
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial_bytes));
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial: serial_bytes,
        }
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn server(&self, serial: u64) -> Leaf {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name
            .push(DnType::CommonName, "mcpd test server");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p, serial)
    }

    /// A client certificate with subject CN `cn` and, if given, a SAN URI.
    pub fn client(&self, cn: &str, san_uri: Option<&str>, serial: u64) -> Leaf {
        self.client_valid(cn, san_uri, serial, None)
    }

    /// A client certificate valid only between the two dates (year, month, day).
    pub fn client_valid(
        &self,
        cn: &str,
        san_uri: Option<&str>,
        serial: u64,
        validity: Option<(Ymd, Ymd)>,
    ) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(u) = san_uri {
            p.subject_alt_names
                .push(SanType::URI(u.try_into().unwrap()));
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(((y1, m1, d1), (y2, m2, d2))) = validity {
            p.not_before = rcgen::date_time_ymd(y1, m1, d1);
            p.not_after = rcgen::date_time_ymd(y2, m2, d2);
        }
        self.sign(p, serial)
    }

    /// A CRL of this CA revoking the given serials.
    pub fn crl(&self, serials: &[&[u8]]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

impl Leaf {
    /// Write `name.pem` and `name.key` (mode 600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }
}

/// A blocking TLS client configuration trusting `ca`, with a client certificate if given,
/// speaking only the given protocol versions.
pub fn client_config(
    ca: &CertificateDer<'static>,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some(l) => {
            use rustls::pki_types::pem::PemObject;
            let key = PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(vec![l.der.clone()], key).unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A TLS connection to mcpd.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connect and complete the handshake (as far as the client can tell: in TLS 1.3 the server's
/// verdict on a client certificate may only arrive with the first read).
pub fn connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Write one request (`Host: localhost:PORT` unless given) on `s`, keeping the connection open.
pub fn send(
    s: &mut impl Write,
    port: u16,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut req = format!("{method} /mcp HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: localhost:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

/// Read one response with a `Content-Length` body (keep-alive).
pub fn read_one(s: &mut impl Read) -> std::io::Result<Response> {
    let mut r = BufReader::new(s);
    let (status, headers) = try_read_head(&mut r)?;
    let n: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    // A BufReader may have read ahead; responses here are read one at a time, in lock step.
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn try_read_head(r: &mut impl std::io::BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    // Surface a refused handshake (alert) or a closed connection as an error, not a panic.
    let buf = r.fill_buf()?;
    if buf.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    Ok(read_head(r))
}

/// POST a JSON-RPC message on an open connection and read the response (JSON body).
pub fn post(
    s: &mut TlsStream,
    port: u16,
    session: Option<&str>,
    msg: &serde_json::Value,
) -> std::io::Result<Response> {
    let body = msg.to_string();
    let mut h = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    if let Some(sid) = session {
        h.push(("Mcp-Session-Id", sid));
    }
    send(s, port, "POST", &h, body.as_bytes())?;
    read_one(s)
}
