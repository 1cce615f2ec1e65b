//! `[auth.jwt]`: the OAuth 2.1 resource-server settings of the HTTP listener (bearer JWTs), as
//! written ([`RawAuth`], [`RawJwt`]) and validated ([`JwtSettings`]), the `--jwt-*` flags, and
//! their `check-config` rendering.
//!
//! Validates the configuration only: issuer and audience are absolute `http(s)` URLs, every key
//! pins one asymmetric algorithm (no shared secrets, no `none`), key files exist (canonicalised
//! through the caller's `Canonicalize`), the leeway is bounded, scopes are printable tokens.
//! Reads no key material and verifies no token (the broker's `auth::jwt` does). Trusts the
//! operator's file only after these checks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mcpd_ipc::ToolAccess;
use serde::Deserialize;
use toml::Spanned;

use super::build::canonical;
use super::types::{Canonicalize, Policy};
use crate::config::{ConfigError, Source};
use crate::identity::IdentityKind;

/// Default clock leeway for `exp` / `nbf`, seconds.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 30;
/// Largest accepted `leeway_secs`.
pub const MAX_JWT_LEEWAY_SECS: u64 = 300;
/// The algorithms a key may pin (asymmetric only: a shared secret would let whoever verifies
/// tokens also mint them).
pub const JWT_ALGORITHMS: &[&str] = &[
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// `[auth]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `[auth.jwt]`: bearer tokens on the HTTP listener.
    pub jwt: Option<Spanned<RawJwt>>,
}

/// `[auth.jwt]`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// The one accepted `iss`.
    pub issuer: Spanned<String>,
    /// The one accepted `aud`: this server's canonical URL (RFC 8707).
    pub audience: Spanned<String>,
    /// A JWKS file (re-read on SIGHUP and, rate-limited, for an unknown `kid`).
    pub jwks: Option<Spanned<String>>,
    /// PEM public keys, each with its key id and pinned algorithm.
    #[serde(default)]
    pub keys: Vec<Spanned<RawJwtKey>>,
    /// Clock leeway for `exp` / `nbf`, seconds (default 30, at most 300).
    pub leeway_secs: Option<Spanned<u64>>,
    /// The claim naming the principal (default `sub`).
    pub principal_claim: Option<Spanned<String>>,
    /// A claim listing policy roles (`roles`, `groups`, ...): a token then holds only the roles
    /// of its client that the claim names (see [`JwtSettings::roles_claim`]).
    pub roles_claim: Option<Spanned<String>>,
    /// Authorization servers named in the Protected Resource Metadata.
    #[serde(default)]
    pub authorization_servers: Vec<Spanned<String>>,
    /// Scopes named in the Protected Resource Metadata and in challenges.
    #[serde(default)]
    pub scopes_supported: Vec<Spanned<String>>,
    /// The scope each tool access class needs.
    #[serde(default)]
    pub scopes: RawJwtScopes,
}

/// One `[[auth.jwt.keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKey {
    /// The `kid` tokens signed with it name.
    pub kid: Spanned<String>,
    /// The one algorithm it verifies.
    pub alg: Spanned<String>,
    /// The PEM file of the public key.
    pub pem: Spanned<String>,
}

/// `[auth.jwt.scopes]`: access class → the scope a token needs for tools of that class.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtScopes {
    /// Tools that touch no file (`list_allowed_directories`).
    pub none: Option<Spanned<String>>,
    /// File-reading tools.
    pub read: Option<Spanned<String>>,
    /// File-writing tools.
    pub write: Option<Spanned<String>>,
    /// `run_command`.
    pub command: Option<Spanned<String>>,
    /// `run_code`.
    pub code: Option<Spanned<String>>,
    /// Operator-defined tools.
    pub operator: Option<Spanned<String>>,
}

/// One PEM key of `[auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKey {
    /// Key id.
    pub kid: String,
    /// Pinned algorithm (one of [`JWT_ALGORITHMS`]).
    pub alg: String,
    /// The PEM file (canonical).
    pub pem: PathBuf,
}

/// Validated `[auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The accepted issuer.
    pub issuer: String,
    /// The accepted audience (the canonical server URL).
    pub audience: String,
    /// The JWKS file (canonical), if any.
    pub jwks: Option<PathBuf>,
    /// PEM keys.
    pub keys: Vec<JwtKey>,
    /// Leeway for `exp` / `nbf`, seconds (≤ [`MAX_JWT_LEEWAY_SECS`]).
    pub leeway_secs: u64,
    /// The principal claim (`sub` by default).
    pub principal_claim: String,
    /// The roles claim, if any. With it, a token narrows its client to the client's own grant
    /// plus those of the client's `roles` the claim names (an array of strings or a
    /// space-separated string); roles the client does not have are ignored, a token without
    /// the claim holds none. Never more than the client's policy: limits stay the client's.
    pub roles_claim: Option<String>,
    /// For the Protected Resource Metadata.
    pub authorization_servers: Vec<String>,
    /// For the Protected Resource Metadata and challenges.
    pub scopes_supported: Vec<String>,
    /// The scope each access class needs (a class not named needs none).
    pub scopes: BTreeMap<&'static str, String>,
}

/// The `[auth.jwt.scopes]` key of an access class.
pub fn access_key(a: ToolAccess) -> &'static str {
    match a {
        ToolAccess::None => "none",
        ToolAccess::FileRead => "read",
        ToolAccess::FileWrite => "write",
        ToolAccess::Command => "command",
        ToolAccess::Code => "code",
        ToolAccess::Operator => "operator",
    }
}

impl JwtSettings {
    /// The scope a token needs for a tool of class `access`, if any.
    pub fn scope_for(&self, access: ToolAccess) -> Option<&str> {
        self.scopes.get(access_key(access)).map(String::as_str)
    }

    /// The Protected Resource Metadata URL of the audience (RFC 9728 §3.1: the well-known
    /// suffix inserted between host and path).
    pub fn resource_metadata_url(&self) -> String {
        let (origin, path) = split_url(&self.audience);
        let path = path.trim_end_matches('/');
        format!("{origin}/.well-known/oauth-protected-resource{path}")
    }

    /// The scopes a challenge names: `scopes_supported`, else the mapped ones.
    pub fn challenge_scopes(&self) -> Vec<String> {
        if !self.scopes_supported.is_empty() {
            return self.scopes_supported.clone();
        }
        let mut v: Vec<String> = self.scopes.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

/// (`scheme://authority`, `/path`) of an absolute URL (validated at load).
fn split_url(url: &str) -> (&str, &str) {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => url.split_at(after + i),
        None => (url, ""),
    }
}

fn check_url(src: &Source, who: &str, v: &Spanned<String>) -> Result<String, ConfigError> {
    let s = v.get_ref();
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() <= 2048
        && !s.contains(['#', '?'])
        && s.bytes().all(|b| b.is_ascii_graphic())
        && !split_url(s).0.ends_with("://");
    if !ok {
        return Err(src.error(
            Some(v.span()),
            format!("{who}: '{s}' is not an absolute http(s) URL without query or fragment"),
        ));
    }
    Ok(s.clone())
}

fn check_token(src: &Source, who: &str, v: &Spanned<String>) -> Result<String, ConfigError> {
    let s = v.get_ref();
    // RFC 6749 scope-token / claim name: printable ASCII without space, quote or backslash.
    if s.is_empty()
        || s.len() > 256
        || !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(src.error(Some(v.span()), format!("{who}: invalid value '{s}'")));
    }
    Ok(s.clone())
}

/// Validate `[auth.jwt]`.
pub(crate) fn jwt_settings(
    src: &Source,
    raw: &Spanned<RawJwt>,
    canon: Canonicalize<'_>,
) -> Result<JwtSettings, ConfigError> {
    let r = raw.get_ref();
    let issuer = check_url(src, "auth.jwt.issuer", &r.issuer)?;
    let audience = check_url(src, "auth.jwt.audience", &r.audience)?;
    let jwks = match &r.jwks {
        Some(p) => Some(canonical(src, "auth.jwt.jwks", p, canon)?),
        None => None,
    };
    let mut keys = Vec::new();
    for k in &r.keys {
        let kr = k.get_ref();
        let kid = check_token(src, "auth.jwt.keys.kid", &kr.kid)?;
        if !JWT_ALGORITHMS.contains(&kr.alg.get_ref().as_str()) {
            return Err(src.error(
                Some(kr.alg.span()),
                format!(
                    "auth.jwt.keys.alg: '{}' is not one of {} (shared-secret and 'none' algorithms are refused)",
                    kr.alg.get_ref(),
                    JWT_ALGORITHMS.join(", ")
                ),
            ));
        }
        if keys.iter().any(|x: &JwtKey| x.kid == kid) {
            return Err(src.error(
                Some(kr.kid.span()),
                format!("auth.jwt.keys: kid '{kid}' appears twice"),
            ));
        }
        keys.push(JwtKey {
            kid,
            alg: kr.alg.get_ref().clone(),
            pem: canonical(src, "auth.jwt.keys.pem", &kr.pem, canon)?,
        });
    }
    if jwks.is_none() && keys.is_empty() {
        return Err(src.error(
            Some(raw.span()),
            "auth.jwt: no key: set jwks = \"FILE\" or keys = [{ kid, alg, pem }]",
        ));
    }
    let leeway_secs = match &r.leeway_secs {
        Some(l) if *l.get_ref() > MAX_JWT_LEEWAY_SECS => {
            return Err(src.error(
                Some(l.span()),
                format!("auth.jwt.leeway_secs: at most {MAX_JWT_LEEWAY_SECS}"),
            ))
        }
        Some(l) => *l.get_ref(),
        None => DEFAULT_JWT_LEEWAY_SECS,
    };
    let principal_claim = match &r.principal_claim {
        Some(c) => check_token(src, "auth.jwt.principal_claim", c)?,
        None => "sub".into(),
    };
    let roles_claim = r
        .roles_claim
        .as_ref()
        .map(|c| check_token(src, "auth.jwt.roles_claim", c))
        .transpose()?;
    let authorization_servers = r
        .authorization_servers
        .iter()
        .map(|a| check_url(src, "auth.jwt.authorization_servers", a))
        .collect::<Result<Vec<_>, _>>()?;
    let scopes_supported = r
        .scopes_supported
        .iter()
        .map(|s| check_token(src, "auth.jwt.scopes_supported", s))
        .collect::<Result<Vec<_>, _>>()?;
    let s = &r.scopes;
    let mut scopes = BTreeMap::new();
    for (key, v) in [
        ("none", &s.none),
        ("read", &s.read),
        ("write", &s.write),
        ("command", &s.command),
        ("code", &s.code),
        ("operator", &s.operator),
    ] {
        if let Some(v) = v {
            scopes.insert(key, check_token(src, &format!("auth.jwt.scopes.{key}"), v)?);
        }
    }
    Ok(JwtSettings {
        issuer,
        audience,
        jwks,
        keys,
        leeway_secs,
        principal_claim,
        roles_claim,
        authorization_servers,
        scopes_supported,
        scopes,
    })
}

/// The warnings of a policy with `[auth.jwt]`.
pub(crate) fn jwt_warnings(policy: &Policy) -> Vec<String> {
    match &policy.jwt {
        Some(_) if !policy.identities.any(&[IdentityKind::JwtSub]) => vec![
            "[auth.jwt] is set but no client names a jwt_sub identity ([clients.NAME.identity] jwt_sub = [...]): every bearer token will be refused".into(),
        ],
        _ => Vec::new(),
    }
}

/// `--jwt-jwks FILE --jwt-issuer URL --jwt-audience URL`: replace (or, with all three, make
/// up) `[auth.jwt]`. Validated exactly like the file.
pub(crate) fn apply_jwt_flags(
    policy: &mut Policy,
    jwks: Option<&std::path::Path>,
    issuer: Option<&str>,
    audience: Option<&str>,
    canon: Canonicalize<'_>,
) -> Result<(), ConfigError> {
    if jwks.is_none() && issuer.is_none() && audience.is_none() {
        return Ok(());
    }
    let src = Source::new("<flags>", "");
    let had = policy.jwt.is_some();
    let cur = policy.jwt.clone();
    let need = |v: Option<&str>, old: Option<String>, flag: &str| {
        v.map(str::to_string).or(old).ok_or_else(|| {
            src.error(
                None,
                format!("{flag} is required with --jwt-* flags when the configuration has no [auth.jwt]"),
            )
        })
    };
    let sp = |s: String| Spanned::new(0..0, s);
    let issuer = need(
        issuer,
        cur.as_ref().map(|c| c.issuer.clone()),
        "--jwt-issuer",
    )?;
    let audience = need(
        audience,
        cur.as_ref().map(|c| c.audience.clone()),
        "--jwt-audience",
    )?;
    let mut next = cur.unwrap_or(JwtSettings {
        issuer: String::new(),
        audience: String::new(),
        jwks: None,
        keys: Vec::new(),
        leeway_secs: DEFAULT_JWT_LEEWAY_SECS,
        principal_claim: "sub".into(),
        roles_claim: None,
        authorization_servers: Vec::new(),
        scopes_supported: Vec::new(),
        scopes: BTreeMap::new(),
    });
    next.issuer = check_url(&src, "--jwt-issuer", &sp(issuer))?;
    next.audience = check_url(&src, "--jwt-audience", &sp(audience))?;
    match jwks {
        Some(p) => {
            let s = p
                .to_str()
                .ok_or_else(|| src.error(None, "--jwt-jwks: not UTF-8"))?;
            next.jwks = Some(canonical(&src, "--jwt-jwks", &sp(s.to_string()), canon)?);
        }
        None if !had => return Err(src.error(
            None,
            "--jwt-jwks is required with --jwt-* flags when the configuration has no [auth.jwt]",
        )),
        None => {}
    }
    policy.jwt = Some(next);
    policy
        .warnings
        .retain(|w| !w.starts_with("[auth.jwt] is set"));
    let w = jwt_warnings(policy);
    policy.warnings.extend(w);
    Ok(())
}

impl Policy {
    /// `[auth.jwt]`, when bearer tokens are configured.
    pub fn jwt(&self) -> Option<&JwtSettings> {
        self.jwt.as_ref()
    }

    /// The `check-config` lines of `[auth.jwt]`.
    pub(crate) fn describe_jwt(&self) -> String {
        let Some(j) = &self.jwt else {
            return "auth.jwt: off\n".into();
        };
        let mut out = format!(
            "auth.jwt: issuer={} audience={} principal_claim={} leeway_secs={} metadata={}\n",
            j.issuer,
            j.audience,
            j.principal_claim,
            j.leeway_secs,
            j.resource_metadata_url()
        );
        if let Some(c) = &j.roles_claim {
            out.push_str(&format!(
                "  roles_claim {c}: a token holds only the roles of its client that this claim names\n"
            ));
        }
        if let Some(p) = &j.jwks {
            out.push_str(&format!("  jwks   {}\n", p.display()));
        }
        for k in &j.keys {
            out.push_str(&format!(
                "  key    kid={} alg={} pem={}\n",
                k.kid,
                k.alg,
                k.pem.display()
            ));
        }
        if !j.authorization_servers.is_empty() {
            out.push_str(&format!(
                "  authorization_servers {}\n",
                j.authorization_servers.join(" ")
            ));
        }
        if !j.scopes_supported.is_empty() {
            out.push_str(&format!(
                "  scopes_supported {}\n",
                j.scopes_supported.join(" ")
            ));
        }
        for (class, scope) in &j.scopes {
            out.push_str(&format!("  scope  {class} tools need '{scope}'\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn canon(p: &Path) -> std::io::Result<PathBuf> {
        if p.starts_with("/missing") {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        } else {
            Ok(p.to_path_buf())
        }
    }

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_toml("t.toml", text, &canon)
    }

    const BASE: &str = r#"
[auth.jwt]
issuer = "https://idp.example"
audience = "https://mcp.example/mcp"
jwks = "/etc/mcpd/jwks.json"
keys = [{ kid = "k1", alg = "ES256", pem = "/etc/mcpd/k1.pem" }]
authorization_servers = ["https://idp.example"]
scopes_supported = ["mcp:read", "mcp:exec"]
[auth.jwt.scopes]
read = "mcp:read"
command = "mcp:exec"
[clients.alice.identity]
jwt_sub = ["alice"]
"#;

    #[test]
    fn jwt_settings_are_validated_and_shown() {
        let p = policy(BASE).unwrap();
        let j = p.jwt().unwrap();
        assert_eq!(j.leeway_secs, 30);
        assert_eq!(j.principal_claim, "sub");
        assert_eq!(j.scope_for(ToolAccess::FileRead), Some("mcp:read"));
        assert_eq!(j.scope_for(ToolAccess::FileWrite), None);
        assert_eq!(
            j.resource_metadata_url(),
            "https://mcp.example/.well-known/oauth-protected-resource/mcp"
        );
        assert!(p.warnings().is_empty(), "{:?}", p.warnings());
        let d = p.describe();
        assert!(
            d.contains("auth.jwt: issuer=https://idp.example audience=https://mcp.example/mcp"),
            "{d}"
        );
        assert!(d.contains("key    kid=k1 alg=ES256"), "{d}");
        assert!(d.contains("identity jwt_sub = alice"), "{d}");
        assert!(policy("[clients.a]\n")
            .unwrap()
            .describe()
            .contains("auth.jwt: off"));
    }

    #[test]
    fn bad_jwt_settings_are_refused_with_their_line() {
        for (from, to, want) in [
            ("alg = \"ES256\"", "alg = \"HS256\"", "shared-secret"),
            ("alg = \"ES256\"", "alg = \"none\"", "'none'"),
            (
                "issuer = \"https://idp.example\"",
                "issuer = \"idp\"",
                "auth.jwt.issuer",
            ),
            (
                "audience = \"https://mcp.example/mcp\"",
                "audience = \"https://mcp.example/mcp?x=1\"",
                "auth.jwt.audience",
            ),
            (
                "jwks = \"/etc/mcpd/jwks.json\"",
                "jwks = \"/missing/jwks.json\"",
                "auth.jwt.jwks",
            ),
            (
                "read = \"mcp:read\"",
                "read = \"mcp read\"",
                "auth.jwt.scopes.read",
            ),
            (
                "[auth.jwt.scopes]",
                "leeway_secs = 301\n[auth.jwt.scopes]",
                "at most 300",
            ),
            (
                "[auth.jwt.scopes]",
                "algorithms = [\"ES256\"]\n[auth.jwt.scopes]",
                "algorithms",
            ),
        ] {
            let e = policy(&BASE.replace(from, to)).unwrap_err();
            assert!(e.message.contains(want), "{from} -> {to}: {e}");
            assert!(e.line.is_some(), "{e}");
        }
        let no_key =
            "[auth.jwt]\nissuer = \"https://i.example\"\naudience = \"https://a.example\"\n";
        assert!(policy(no_key).unwrap_err().message.contains("no key"));
    }

    #[test]
    fn jwt_without_a_jwt_identity_warns() {
        let p = policy(&BASE.replace("jwt_sub = [\"alice\"]", "unix_uid = [1]")).unwrap();
        assert_eq!(p.warnings().len(), 1);
        assert!(p.warnings()[0].contains("every bearer token will be refused"));
    }

    #[test]
    fn jwt_flags_make_up_or_replace_the_section() {
        let mut p = policy("[clients.alice.identity]\njwt_sub = [\"alice\"]\n").unwrap();
        let e = apply_jwt_flags(&mut p, None, Some("https://i.example"), None, &canon).unwrap_err();
        assert!(e.message.contains("--jwt-audience"), "{e}");
        apply_jwt_flags(
            &mut p,
            Some(Path::new("/k/jwks.json")),
            Some("https://i.example"),
            Some("http://127.0.0.1:8080/mcp"),
            &canon,
        )
        .unwrap();
        let j = p.jwt().unwrap();
        assert_eq!(j.jwks.as_deref(), Some(Path::new("/k/jwks.json")));
        assert_eq!(j.audience, "http://127.0.0.1:8080/mcp");
        let mut f = policy(BASE).unwrap();
        apply_jwt_flags(
            &mut f,
            None,
            None,
            Some("https://other.example/mcp"),
            &canon,
        )
        .unwrap();
        assert_eq!(f.jwt().unwrap().issuer, "https://idp.example");
        assert_eq!(f.jwt().unwrap().audience, "https://other.example/mcp");
        assert_eq!(f.jwt().unwrap().keys.len(), 1);
    }
}
