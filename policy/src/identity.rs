//! Who a peer is, as the policy sees it: each client may name the identities that speak for it
//! (`[clients.NAME.identity]`: X.509 SAN URIs such as SPIFFE ids, SAN DNS names, e-mail
//! addresses, subject CNs; JWT subjects; Unix uids and gids), and [`Policy::client_for`] maps
//! what an authenticator *verified* ([`Presented`]) to exactly one client, or to none.
//!
//! Does not verify anything (certificate chains, token signatures and peer credentials are the
//! broker's authenticators' job) and does no I/O. Trusts the operator's rules; refuses at load
//! a value that would name two clients, and at run time a peer whose identities name two.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source};
use crate::model::{ClientId, Policy};

/// `[clients.NAME.identity]`, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Client-certificate SAN URIs (e.g. `spiffe://example.org/ns/prod/sa/agent`).
    #[serde(default)]
    pub x509_san_uri: Vec<Spanned<String>>,
    /// Client-certificate SAN DNS names.
    #[serde(default)]
    pub x509_san_dns: Vec<Spanned<String>>,
    /// Client-certificate e-mail addresses (SAN rfc822Name).
    #[serde(default)]
    pub x509_email: Vec<Spanned<String>>,
    /// Client-certificate subject common names (weakest: prefer a SAN).
    #[serde(default)]
    pub x509_cn: Vec<Spanned<String>>,
    /// JWT subjects (the `sub` claim, or the claim `[auth.jwt] principal_claim` names).
    #[serde(default)]
    pub jwt_sub: Vec<Spanned<String>>,
    /// Unix-socket peers by uid (`SO_PEERCRED`).
    #[serde(default)]
    pub unix_uid: Vec<Spanned<u32>>,
    /// Unix-socket peers by primary gid (`SO_PEERCRED`), when no uid rule matches.
    #[serde(default)]
    pub unix_gid: Vec<Spanned<u32>>,
}

/// The kind of an identity value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityKind {
    /// Certificate SAN URI.
    X509SanUri,
    /// Certificate SAN DNS name.
    X509SanDns,
    /// Certificate e-mail address.
    X509Email,
    /// Certificate subject CN.
    X509Cn,
    /// JWT subject.
    JwtSub,
    /// Unix uid.
    UnixUid,
    /// Unix gid.
    UnixGid,
}

impl IdentityKind {
    /// The configuration key.
    pub fn key(self) -> &'static str {
        match self {
            Self::X509SanUri => "x509_san_uri",
            Self::X509SanDns => "x509_san_dns",
            Self::X509Email => "x509_email",
            Self::X509Cn => "x509_cn",
            Self::JwtSub => "jwt_sub",
            Self::UnixUid => "unix_uid",
            Self::UnixGid => "unix_gid",
        }
    }
}

/// What an authenticator verified about a peer.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    /// A client certificate that chained to the configured CA.
    X509 {
        /// SAN URIs.
        san_uris: &'a [String],
        /// SAN DNS names.
        san_dns: &'a [String],
        /// SAN e-mail addresses.
        emails: &'a [String],
        /// Subject common names.
        cns: &'a [String],
    },
    /// A bearer token whose signature, issuer, audience and times were verified.
    Jwt {
        /// The subject (or the configured principal claim).
        subject: &'a str,
    },
    /// A D-Bus caller, from the bus daemon's `GetConnectionCredentials`: by uid, else by
    /// its groups (every group naming a client must name the same one).
    Bus {
        /// Caller uid.
        uid: u32,
        /// Caller groups (primary and supplementary, as the bus reports them).
        gids: &'a [u32],
    },
    /// A Unix-socket peer, from the kernel's `SO_PEERCRED`.
    Unix {
        /// Peer uid.
        uid: u32,
        /// Peer gid.
        gid: u32,
    },
}

/// Every identity rule of a policy: (kind, value) → client. Built once at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityRules {
    rules: BTreeMap<(IdentityKind, String), ClientId>,
}

/// Most identity values per client (a bound on the operator's table, not a security limit).
pub const MAX_IDENTITIES_PER_CLIENT: usize = 1024;

impl IdentityRules {
    /// Add one client's rules; a value already naming another client is an error.
    pub(crate) fn add(
        &mut self,
        src: &Source,
        client: &ClientId,
        raw: &Spanned<RawIdentity>,
    ) -> Result<(), ConfigError> {
        let r = raw.get_ref();
        let mut values: Vec<(IdentityKind, std::ops::Range<usize>, String)> = Vec::new();
        let mut strings = |kind, list: &Vec<Spanned<String>>| {
            for v in list {
                values.push((kind, v.span(), v.get_ref().clone()));
            }
        };
        strings(IdentityKind::X509SanUri, &r.x509_san_uri);
        strings(IdentityKind::X509SanDns, &r.x509_san_dns);
        strings(IdentityKind::X509Email, &r.x509_email);
        strings(IdentityKind::X509Cn, &r.x509_cn);
        strings(IdentityKind::JwtSub, &r.jwt_sub);
        for v in &r.unix_uid {
            values.push((IdentityKind::UnixUid, v.span(), v.get_ref().to_string()));
        }
        for v in &r.unix_gid {
            values.push((IdentityKind::UnixGid, v.span(), v.get_ref().to_string()));
        }
        if values.len() > MAX_IDENTITIES_PER_CLIENT {
            return Err(src.error(
                Some(raw.span()),
                format!(
                    "clients.{client}.identity: at most {MAX_IDENTITIES_PER_CLIENT} identities"
                ),
            ));
        }
        for (kind, span, value) in values {
            let value = normalise(kind, &value).ok_or_else(|| {
                src.error(
                    Some(span.clone()),
                    format!(
                        "clients.{client}.identity.{}: empty, too long or with control characters",
                        kind.key()
                    ),
                )
            })?;
            match self.rules.get(&(kind, value.clone())) {
                Some(other) if other != client => {
                    return Err(src.error(
                        Some(span),
                        format!(
                        "clients.{client}.identity.{}: '{value}' already names client '{other}'",
                        kind.key()
                    ),
                    ))
                }
                _ => {
                    self.rules.insert((kind, value), client.clone());
                }
            }
        }
        Ok(())
    }

    /// The rules of one client, for `check-config`.
    pub fn of(&self, client: &ClientId) -> Vec<(IdentityKind, &str)> {
        self.rules
            .iter()
            .filter(|(_, c)| *c == client)
            .map(|((k, v), _)| (*k, v.as_str()))
            .collect()
    }

    /// Whether any rule of this family exists (an authenticator with no rule to map to is a
    /// configuration the broker can warn about).
    pub fn any(&self, kinds: &[IdentityKind]) -> bool {
        self.rules.keys().any(|(k, _)| kinds.contains(k))
    }

    fn lookup(&self, kind: IdentityKind, value: &str) -> Option<&ClientId> {
        let v = normalise(kind, value)?;
        self.rules.get(&(kind, v))
    }
}

/// Identity values compare exactly, but DNS names and e-mail domains case-insensitively
/// (lower-cased). `None` for an empty or oversized value, or one with control characters.
fn normalise(kind: IdentityKind, v: &str) -> Option<String> {
    if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
        return None;
    }
    Some(match kind {
        IdentityKind::X509SanDns => v.to_ascii_lowercase(),
        IdentityKind::X509Email => match v.rsplit_once('@') {
            Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
            None => v.to_string(),
        },
        _ => v.to_string(),
    })
}

impl Policy {
    /// The client a verified peer speaks for: the one client its identities name. `None` when
    /// none does, or when its identities name two different clients (ambiguous: refused).
    ///
    /// Certificates: SAN URIs, SAN DNS names, e-mail addresses, then CNs — every one that
    /// matches must name the same client. Unix peers: the uid rule, else the gid rule.
    pub fn client_for(&self, presented: &Presented<'_>) -> Option<&ClientId> {
        let rules = &self.identities;
        match *presented {
            Presented::X509 {
                san_uris,
                san_dns,
                emails,
                cns,
            } => {
                let mut found: Option<&ClientId> = None;
                let all = [
                    (IdentityKind::X509SanUri, san_uris),
                    (IdentityKind::X509SanDns, san_dns),
                    (IdentityKind::X509Email, emails),
                    (IdentityKind::X509Cn, cns),
                ];
                for (kind, values) in all {
                    for v in values.iter().take(64) {
                        if let Some(c) = rules.lookup(kind, v) {
                            match found {
                                Some(f) if f != c => return None,
                                _ => found = Some(c),
                            }
                        }
                    }
                }
                found
            }
            Presented::Jwt { subject } => rules.lookup(IdentityKind::JwtSub, subject),
            Presented::Bus { uid, gids } => {
                match rules.lookup(IdentityKind::UnixUid, &uid.to_string()) {
                    Some(c) => Some(c),
                    None => {
                        let mut found: Option<&ClientId> = None;
                        for g in gids.iter().take(256) {
                            if let Some(c) = rules.lookup(IdentityKind::UnixGid, &g.to_string()) {
                                match found {
                                    Some(f) if f != c => return None,
                                    _ => found = Some(c),
                                }
                            }
                        }
                        found
                    }
                }
            }
            Presented::Unix { uid, gid } => rules
                .lookup(IdentityKind::UnixUid, &uid.to_string())
                .or_else(|| rules.lookup(IdentityKind::UnixGid, &gid.to_string())),
        }
        .filter(|c| self.permissions(c).is_some())
    }

    /// Every identity rule.
    pub fn identities(&self) -> &IdentityRules {
        &self.identities
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_toml("t.toml", text, &|p: &std::path::Path| Ok(p.to_path_buf()))
    }

    const TWO: &str = r#"
[clients.alice.identity]
x509_san_uri = ["spiffe://example.org/alice"]
x509_san_dns = ["Alice.Example.org"]
x509_cn = ["alice"]
jwt_sub = ["alice@example.org"]
unix_uid = [1000]

[clients.bob.identity]
x509_email = ["bob@EXAMPLE.org"]
unix_gid = [100]
"#;

    fn x509<'a>(
        uris: &'a [String],
        dns: &'a [String],
        mail: &'a [String],
        cn: &'a [String],
    ) -> Presented<'a> {
        Presented::X509 {
            san_uris: uris,
            san_dns: dns,
            emails: mail,
            cns: cn,
        }
    }

    #[test]
    fn verified_identities_map_to_exactly_one_client() {
        let p = policy(TWO).unwrap();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let none: Vec<String> = vec![];
        let alice = Some("alice");
        let got = |pr: Presented<'_>| p.client_for(&pr).map(|c| c.as_str().to_string());
        assert_eq!(
            got(x509(
                &s(&["spiffe://example.org/alice"]),
                &none,
                &none,
                &none
            ))
            .as_deref(),
            alice
        );
        assert_eq!(
            got(x509(&none, &s(&["alice.EXAMPLE.org"]), &none, &none)).as_deref(),
            alice
        );
        assert_eq!(
            got(x509(&none, &none, &s(&["bob@example.ORG"]), &none)).as_deref(),
            Some("bob")
        );
        // A certificate whose identities name two clients is refused, not resolved.
        assert_eq!(
            got(x509(&none, &none, &s(&["bob@example.org"]), &s(&["alice"]))),
            None
        );
        assert_eq!(
            got(x509(
                &s(&["spiffe://example.org/mallory"]),
                &none,
                &none,
                &none
            )),
            None
        );
        assert_eq!(
            got(Presented::Jwt {
                subject: "alice@example.org"
            })
            .as_deref(),
            alice
        );
        assert_eq!(
            got(Presented::Jwt {
                subject: "Alice@example.org"
            }),
            None
        );
        assert_eq!(
            got(Presented::Unix {
                uid: 1000,
                gid: 100
            })
            .as_deref(),
            alice
        );
        assert_eq!(
            got(Presented::Unix {
                uid: 1001,
                gid: 100
            })
            .as_deref(),
            Some("bob")
        );
        assert_eq!(
            got(Presented::Unix {
                uid: 1001,
                gid: 101
            }),
            None
        );
        assert_eq!(p.identities().of(&ClientId::parse("bob").unwrap()).len(), 2);
        // A D-Bus caller: by uid, else by any of its groups (two clients: none).
        let bus = |uid, gids: &[u32]| got(Presented::Bus { uid, gids });
        assert_eq!(bus(1000, &[]).as_deref(), alice);
        assert_eq!(bus(1001, &[5, 100]).as_deref(), Some("bob"));
        assert_eq!(bus(1001, &[5, 6]), None);
    }

    #[test]
    fn a_value_may_name_only_one_client_and_roles_have_no_identity() {
        let e =
            policy("[clients.a.identity]\nunix_uid = [7]\n[clients.b.identity]\nunix_uid = [7]\n")
                .unwrap_err();
        assert!(e.message.contains("already names client 'a'"), "{e}");
        assert_eq!(e.line, Some(4));
        let e = policy("[roles.r.identity]\nunix_uid = [7]\n[clients.a]\nroles = [\"r\"]\n")
            .unwrap_err();
        assert!(e.message.contains("identity"), "{e}");
        let e = policy("[clients.a.identity]\njwt_sub = [\"\"]\n").unwrap_err();
        assert!(e.message.contains("empty"), "{e}");
        let e = policy("[clients.a.identity]\nspiffe = [\"x\"]\n").unwrap_err();
        assert!(e.message.contains("spiffe"), "{e}");
    }
}
