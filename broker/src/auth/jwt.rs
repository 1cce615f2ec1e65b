//! OAuth 2.1 resource server: bearer JWTs on the HTTP listener (`[auth.jwt]`).
//!
//! [`BearerToken`] verifies the `Authorization: Bearer` token of every request: the header's
//! `alg` must be the one its key pins (so `none`, and HS256 "signed" with a public key, never
//! verify), an unknown `crit` is refused, the signature, then `iss`, `aud` (this server's
//! canonical URL), `exp` (required) and `nbf` within the bounded leeway; the principal claim
//! (`sub` by default) maps to a client through `Policy::client_for`. The token's `scope`/`scp`
//! becomes [`Principal::scopes`]; with `[auth.jwt] roles_claim`, that claim's values narrow the
//! client to the roles of it they name (`Policy::role_view`: the principal's client is then a
//! role view, never more than the client). [`HttpAuthenticator`] is what the HTTP listener asks: bearer
//! tokens when the policy has `[auth.jwt]`, else the listener's one client.
//!
//! Keys come from PEM files and/or a JWKS file, read at start ([`load_keys`], also run by the
//! policy loader so a broken key file refuses a start or a reload), again after each reload
//! (SIGHUP) and, rate-limited, when a token names an unknown `kid`.
//!
//! Never logs, audits or forwards a token: a refusal carries a short reason code; a success
//! carries the issuer, the key id, the subject and a SHA-256 prefix of the token. Trusts the
//! key files and the policy; everything in the token is hostile until verified.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mcpd_policy::{ClientId, JwtSettings, Policy, Presented, JWT_ALGORITHMS};
use serde_json::{Map, Value};
use sha2::Digest as _;

use super::{AuthError, Authenticator, Credentials, ListenerClient, Principal};

/// Longest token accepted (bytes); longer is malformed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most scopes taken from one token.
pub const MAX_SCOPES: usize = 256;
/// Shortest time between two reads of the JWKS file caused by unknown key ids.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// The `method` of a token principal (audit `auth.success`).
pub const METHOD: &str = "jwt-bearer";

/// One verification key: its id (if it has one), the algorithm it pins, the key.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn pinned(alg: &str) -> Option<Algorithm> {
    JWT_ALGORITHMS
        .contains(&alg)
        .then(|| Algorithm::from_str(alg).ok())
        .flatten()
}

/// Why a key file is not trustworthy: whoever can change it (or replace it in its directory)
/// chooses which tokens verify, i.e. can mint tokens. Refused: a file writable by group or
/// others, owned by a uid that is neither root nor mcpd's, or in a directory others may write
/// without the sticky bit.
pub fn key_file_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = rustix::process::geteuid().as_raw();
    let md = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    let mode = md.permissions().mode();
    if mode & 0o022 != 0 {
        return Some(format!(
            "{}: writable by group or others (mode {:04o}): whoever can write a verification key can mint tokens (chmod go-w)",
            path.display(),
            mode & 0o7777
        ));
    }
    if md.uid() != 0 && md.uid() != me {
        return Some(format!(
            "{}: belongs to uid {}, neither root nor mcpd's uid {me}: that user can replace the key",
            path.display(),
            md.uid()
        ));
    }
    let dir = path.parent()?;
    let d = std::fs::metadata(dir).ok()?;
    let dmode = d.permissions().mode();
    if dmode & 0o002 != 0 && dmode & 0o1000 == 0 {
        return Some(format!(
            "{}: its directory is writable by every user without the sticky bit: anyone can replace the key",
            path.display()
        ));
    }
    None
}

fn read(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    if let Some(p) = key_file_problem(path) {
        return Err(p);
    }
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > max {
        return Err(format!("{}: larger than {max} bytes", path.display()));
    }
    Ok(buf)
}

/// The keys of a JWKS document: every signature key with a usable pinned algorithm (its
/// `alg`, or the one its curve implies: P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA).
/// Symmetric (`oct`) and encryption keys, and keys without a determinable algorithm, are
/// skipped (logged).
pub fn parse_jwks(text: &[u8]) -> Result<Vec<Key>, String> {
    let doc: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(list) = doc.get("keys").and_then(Value::as_array) else {
        return Err("no \"keys\" array".into());
    };
    let mut out = Vec::new();
    for (i, k) in list.iter().enumerate().take(1024) {
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
        let name = kid.clone().unwrap_or_else(|| format!("#{i}"));
        let kty = k.get("kty").and_then(Value::as_str).unwrap_or("");
        if k.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
            || kty == "oct"
        {
            tracing::warn!("jwks key {name}: not an asymmetric signature key; skipped");
            continue;
        }
        let alg = match k.get("alg").and_then(Value::as_str) {
            Some(a) => pinned(a),
            None => match (kty, k.get("crv").and_then(Value::as_str)) {
                ("EC", Some("P-256")) => Some(Algorithm::ES256),
                ("EC", Some("P-384")) => Some(Algorithm::ES384),
                ("OKP", Some("Ed25519")) => Some(Algorithm::EdDSA),
                _ => None,
            },
        };
        let Some(alg) = alg else {
            tracing::warn!("jwks key {name}: no usable pinned algorithm (alg); skipped");
            continue;
        };
        let key = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(k.clone())
            .map_err(|e| e.to_string())
            .and_then(|j| DecodingKey::from_jwk(&j).map_err(|e| e.to_string()));
        match key {
            Ok(key) if key.family() == alg.family() => out.push(Key { kid, alg, key }),
            Ok(_) => tracing::warn!("jwks key {name}: its type does not fit alg {alg:?}; skipped"),
            Err(e) => tracing::warn!("jwks key {name}: {e}; skipped"),
        }
    }
    Ok(out)
}

fn pem_key(alg: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    let r = match alg.family() {
        jsonwebtoken::AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        jsonwebtoken::AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        jsonwebtoken::AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
        jsonwebtoken::AlgorithmFamily::Hmac => return Err("shared secrets are refused".into()),
    };
    r.map_err(|e| e.to_string())
}

/// Every key of `[auth.jwt]`: its PEM files and its JWKS file. An unreadable file, a PEM that
/// is not a public key of its pinned algorithm's type, or a JWKS without one usable key is an
/// error (the start or reload is refused).
pub fn load_keys(j: &JwtSettings) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for k in &j.keys {
        let alg = pinned(&k.alg).ok_or_else(|| format!("key {}: algorithm {}", k.kid, k.alg))?;
        let pem = read(&k.pem, 1024 * 1024)?;
        let key = pem_key(alg, &pem).map_err(|e| format!("{}: {e}", k.pem.display()))?;
        keys.push(Key {
            kid: Some(k.kid.clone()),
            alg,
            key,
        });
    }
    if let Some(p) = &j.jwks {
        let from =
            parse_jwks(&read(p, 4 * 1024 * 1024)?).map_err(|e| format!("{}: {e}", p.display()))?;
        if from.is_empty() {
            return Err(format!("{}: no usable signature key", p.display()));
        }
        keys.extend(from);
    }
    Ok(keys)
}

/// `mcpd doctor`: each key file of `[auth.jwt]` — trustworthy (see [`key_file_problem`]),
/// readable, and holding usable keys (their ids and algorithms) — as (fine, line) pairs.
pub fn inspect(j: &JwtSettings) -> Vec<(bool, String)> {
    let mut out = vec![(
        true,
        format!(
            "issuer {} audience {} (tokens for another resource are refused)",
            j.issuer, j.audience
        ),
    )];
    let describe = |keys: &[Key]| {
        keys.iter()
            .map(|k| format!("{}:{:?}", k.kid.as_deref().unwrap_or("(no kid)"), k.alg))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for k in &j.keys {
        let one = JwtSettings {
            keys: vec![k.clone()],
            jwks: None,
            ..j.clone()
        };
        out.push(match load_keys(&one) {
            Ok(keys) => (
                true,
                format!("key {}: {}", k.pem.display(), describe(&keys)),
            ),
            Err(e) => (false, format!("key {}: {e}", k.kid)),
        });
    }
    if let Some(p) = &j.jwks {
        let one = JwtSettings {
            keys: Vec::new(),
            ..j.clone()
        };
        out.push(match load_keys(&one) {
            Ok(keys) => (
                true,
                format!(
                    "jwks {}: {} usable key(s): {}",
                    p.display(),
                    keys.len(),
                    describe(&keys)
                ),
            ),
            Err(e) => (false, format!("jwks: {e}")),
        });
    }
    out
}

#[derive(Debug)]
struct Store {
    /// The settings the keys were loaded for.
    settings: Option<JwtSettings>,
    keys: Vec<Key>,
}

/// Verifies bearer JWTs under the policy's `[auth.jwt]`.
#[derive(Debug)]
pub struct BearerToken {
    store: RwLock<Store>,
    /// The last JWKS read caused by an unknown `kid`.
    refreshed: Mutex<Option<Instant>>,
}

/// The verified parts of a token a principal is built from.
struct Verified {
    subject: String,
    kid: String,
    scopes: Vec<String>,
    /// The roles claim's values, when `[auth.jwt] roles_claim` is set (empty without the
    /// claim).
    roles: Option<Vec<String>>,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// A short, non-reversible name of a token for the audit log.
pub fn token_digest(token: &str) -> String {
    let d = sha2::Sha256::digest(token.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    names_of(claims.get("scope").or_else(|| claims.get("scp")))
}

/// The names a scope or roles claim lists: a space-separated string or an array of strings
/// (other members ignored), sorted, deduplicated, each at most 256 bytes without control
/// characters, at most [`MAX_SCOPES`] of them.
fn names_of(claim: Option<&Value>) -> Vec<String> {
    let mut set = BTreeSet::new();
    match claim {
        Some(Value::String(s)) => set.extend(s.split_ascii_whitespace().map(str::to_string)),
        Some(Value::Array(a)) => set.extend(a.iter().filter_map(Value::as_str).map(str::to_string)),
        _ => {}
    }
    set.into_iter()
        .filter(|s| s.len() <= 256 && !s.chars().any(char::is_control))
        .take(MAX_SCOPES)
        .collect()
}

impl Default for BearerToken {
    fn default() -> Self {
        Self::new()
    }
}

impl BearerToken {
    /// An authenticator with no keys yet: they are loaded on first use and after each reload.
    pub fn new() -> Self {
        Self {
            store: RwLock::new(Store {
                settings: None,
                keys: Vec::new(),
            }),
            refreshed: Mutex::new(None),
        }
    }

    /// Read the key files of `policy` again (a reload). On error the old keys stay (the policy
    /// loader already refused a reload with broken key files; this is a later change).
    pub fn reload(&self, policy: &Policy) {
        let Some(j) = policy.jwt() else {
            return;
        };
        match load_keys(j) {
            Ok(keys) => {
                let n = keys.len();
                if let Ok(mut s) = self.store.write() {
                    *s = Store {
                        settings: Some(j.clone()),
                        keys,
                    };
                }
                tracing::info!(keys = n, "jwt: verification keys loaded");
            }
            Err(e) => tracing::error!("jwt: keys not reloaded, the previous ones stay: {e}"),
        }
    }

    fn key_for(&self, j: &JwtSettings, kid: Option<&str>) -> Option<Key> {
        let current = self
            .store
            .read()
            .ok()
            .is_some_and(|s| s.settings.as_ref() == Some(j));
        if !current {
            // The policy changed since the keys were read: read them for this policy.
            match load_keys(j) {
                Ok(keys) => {
                    if let Ok(mut s) = self.store.write() {
                        *s = Store {
                            settings: Some(j.clone()),
                            keys,
                        };
                    }
                }
                Err(e) => {
                    tracing::error!("jwt: keys cannot be loaded: {e}");
                    return None;
                }
            }
        }
        let find = |s: &Store| -> Option<Key> {
            match kid {
                Some(k) => s.keys.iter().find(|x| x.kid.as_deref() == Some(k)).cloned(),
                None if s.keys.len() == 1 => s.keys.first().cloned(),
                None => None,
            }
        };
        if let Some(k) = self.store.read().ok().and_then(|s| find(&s)) {
            return Some(k);
        }
        // An unknown kid: the issuer may have rotated its keys. Read the JWKS again, at most
        // once per interval.
        let path = j.jwks.as_ref()?;
        kid?;
        {
            let mut last = self.refreshed.lock().ok()?;
            if last.is_some_and(|t| t.elapsed() < JWKS_REFRESH_INTERVAL) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match load_keys(j) {
            Ok(keys) => {
                tracing::info!(jwks = %path.display(), keys = keys.len(), "jwt: JWKS re-read for an unknown key id");
                let mut s = self.store.write().ok()?;
                *s = Store {
                    settings: Some(j.clone()),
                    keys,
                };
                find(&s)
            }
            Err(e) => {
                tracing::warn!("jwt: JWKS re-read failed: {e}");
                None
            }
        }
    }

    fn verify(&self, j: &JwtSettings, token: &str) -> Result<Verified, &'static str> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err("malformed_token");
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header_b64, _, _] = parts[..] else {
            return Err("malformed_token");
        };
        let header: Map<String, Value> = b64url(header_b64)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed_token")?;
        if header.contains_key("crit") {
            // No header extension is understood here (RFC 7515 §4.1.11).
            return Err("unsupported_crit");
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(pinned)
            .ok_or("alg_not_allowed")?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) if k.len() <= 256 => Some(k.as_str()),
            Some(_) => return Err("malformed_token"),
        };
        let key = self.key_for(j, kid).ok_or("unknown_kid")?;
        if key.alg != alg {
            return Err("alg_not_allowed");
        }
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[&j.issuer]);
        v.set_audience(&[&j.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = j.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v).map_err(|e| match e
                .kind()
            {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                ErrorKind::InvalidAudience => "wrong_audience",
                ErrorKind::InvalidIssuer => "wrong_issuer",
                ErrorKind::InvalidSignature => "bad_signature",
                ErrorKind::InvalidAlgorithm => "alg_not_allowed",
                ErrorKind::MissingRequiredClaim(_) => "missing_claim",
                _ => "malformed_token",
            })?;
        // RFC 7519 §4.1.1: `iss` is one StringOrURI. jsonwebtoken also takes an array with the
        // issuer among its members; refuse it (found by the `jwt` fuzz target).
        if !data.claims.get("iss").is_some_and(Value::is_string) {
            return Err("wrong_issuer");
        }
        let subject = match data.claims.get(&j.principal_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err("missing_subject"),
        };
        Ok(Verified {
            subject,
            kid: key.kid.unwrap_or_default(),
            scopes: scopes_of(&data.claims),
            roles: j.roles_claim.as_ref().map(|c| names_of(data.claims.get(c))),
        })
    }
}

impl Authenticator for BearerToken {
    fn authenticate(
        &self,
        policy: &Policy,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        let peer = creds.peer.to_string();
        let Some(j) = policy.jwt() else {
            return Err(AuthError::InvalidToken {
                reason: "no_jwt_configuration",
                peer,
            });
        };
        let Some(h) = creds.authorization else {
            return Err(AuthError::MissingToken { peer });
        };
        let token = match h.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(AuthError::InvalidToken {
                    reason: "not_a_bearer_token",
                    peer,
                })
            }
        };
        let v = self
            .verify(j, token)
            .map_err(|reason| AuthError::InvalidToken {
                reason,
                peer: peer.clone(),
            })?;
        let client = policy
            .client_for(&Presented::Jwt {
                subject: &v.subject,
            })
            .cloned()
            .ok_or(AuthError::InvalidToken {
                reason: "unknown_subject",
                peer,
            })?;
        // A roles claim narrows the client to the roles it names (never more: role views).
        let client = match &v.roles {
            Some(roles) => policy.role_view(&client, roles),
            None => client,
        };
        let mut p = Principal::new(client, METHOD);
        p.attributes = vec![
            ("issuer", j.issuer.clone()),
            ("kid", v.kid),
            ("subject", v.subject.chars().take(256).collect()),
            ("token_sha256", token_digest(token)),
        ];
        if let Some(roles) = v.roles {
            p.attributes.push(("roles", roles.join(" ")));
        }
        p.scopes = Some(v.scopes);
        Ok(p)
    }
}

/// The HTTP listener's authenticator: bearer tokens when the policy in force has
/// `[auth.jwt]`, else every peer speaks for the listener's client. A listener that started
/// with tokens never falls back to no authentication: if a reload removes `[auth.jwt]`, every
/// request is refused until a restart.
#[derive(Debug)]
pub struct HttpAuthenticator {
    bearer: Arc<BearerToken>,
    listener: Option<ListenerClient>,
    started_with_tokens: bool,
}

impl HttpAuthenticator {
    /// For a listener whose unauthenticated peers speak for `client` (if any), under the
    /// policy in force at start. Keys are read now; `cell`'s reloads read them again.
    pub fn new(client: Option<ClientId>, cell: &crate::reload::PolicyCell) -> Self {
        let policy = cell.get();
        let bearer = Arc::new(BearerToken::new());
        bearer.reload(&policy);
        let weak = Arc::downgrade(&bearer);
        let (c, mut reloads) = (cell.clone(), cell.subscribe());
        tokio::spawn(async move {
            while reloads.recv().await.is_ok() {
                let Some(b) = weak.upgrade() else { break };
                b.reload(&c.get());
            }
        });
        Self {
            bearer,
            listener: client.map(ListenerClient::new),
            started_with_tokens: policy.jwt().is_some(),
        }
    }
}

impl Authenticator for HttpAuthenticator {
    fn authenticate(
        &self,
        policy: &Policy,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        if policy.jwt().is_some() {
            return self.bearer.authenticate(policy, creds);
        }
        match &self.listener {
            Some(l) if !self.started_with_tokens => l.authenticate(policy, creds),
            _ => Err(AuthError::NoClient {
                transport: creds.transport,
                setting: "[auth.jwt] (removed by a reload: restart to serve without tokens) or [http] client",
                peer: creds.peer.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn jwks_keys_need_a_pinned_asymmetric_algorithm() {
        // A P-256 point (the generator), valid as a key.
        let x = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
        let y = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "inferred", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "pinned", "alg": "ES256", "use": "sig", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "hs", "alg": "HS256", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "wrong-family", "alg": "RS256", "x": x, "y": y},
            {"kty": "oct", "kid": "secret", "alg": "HS256", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "rsa-no-alg", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "broken", "alg": "ES256", "x": "!", "y": y}
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["inferred", "pinned"]);
        assert!(keys.iter().all(|k| k.alg == Algorithm::ES256));
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"not json").is_err());
    }

    #[test]
    fn an_issuer_array_is_refused_even_when_it_holds_the_issuer() {
        // Regression (fuzz target `jwt`): `"iss": [ISSUER, other]` was accepted.
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate().unwrap();
        let pem = dir.path().join("k.pub");
        std::fs::write(&pem, kp.public_key_pem()).unwrap();
        let toml = format!(
            "[auth.jwt]\nissuer = \"https://idp.example\"\naudience = \"https://mcp.example/mcp\"\n\
             keys = [{{ kid = \"k\", alg = \"ES256\", pem = \"{}\" }}]\n\
             [clients.alice.identity]\njwt_sub = [\"alice\"]\n",
            pem.display()
        );
        let policy = Policy::from_toml("t.toml", &toml, &|p| std::fs::canonicalize(p)).unwrap();
        let j = policy.jwt().unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("k".into());
        let token = |iss: Value| {
            let exp = jsonwebtoken::get_current_timestamp() + 600;
            let claims =
                json!({"iss": iss, "aud": "https://mcp.example/mcp", "sub": "alice", "exp": exp});
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        };
        let b = BearerToken::new();
        assert_eq!(
            b.verify(j, &token(json!("https://idp.example")))
                .unwrap()
                .subject,
            "alice"
        );
        for iss in [
            json!(["https://idp.example", "https://evil.example"]),
            json!(["https://idp.example"]),
            json!("https://evil.example"),
        ] {
            assert_eq!(
                b.verify(j, &token(iss.clone())).err(),
                Some("wrong_issuer"),
                "{iss}"
            );
        }
        assert_eq!(b.verify(j, &token(json!(7))).err(), Some("missing_claim"));
    }

    #[test]
    fn scopes_come_from_scope_or_scp_sorted_and_bounded() {
        let c = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            scopes_of(&c(json!({"scope": "b a  a\tc"}))),
            ["a", "b", "c"]
        );
        assert_eq!(scopes_of(&c(json!({"scp": ["x", 1, "w"]}))), ["w", "x"]);
        assert!(scopes_of(&c(json!({"scope": 7}))).is_empty());
        let many: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
        assert_eq!(scopes_of(&c(json!({"scp": many}))).len(), MAX_SCOPES);
        // A roles claim reads the same way.
        assert_eq!(
            names_of(Some(&json!(["writer", "bad\u{7}", "reader", "reader"]))),
            ["reader", "writer"]
        );
        assert!(names_of(None).is_empty());
        assert_eq!(token_digest("abc").len(), 16);
        assert_ne!(token_digest("abc"), token_digest("abd"));
    }
}
