//! Bearer JWTs on the HTTP listener: hostile `Authorization` header values through the
//! listener's authenticator (`mcpd::fuzzing::jwt_verifier`: a policy with `[auth.jwt]` loaded
//! from TOML as at start, keys from the fixed test PEMs and JWKS under `fixtures/jwt/`).
//!
//! Structure-aware: header JSON, claims JSON and signature are built from an `Arbitrary` value
//! (algorithms, key ids, issuers, audiences, subjects and times near the policies' own, as
//! well as any JSON), base64url-encoded, then signed with a key the policy trusts (Ed25519,
//! P-256, RSA PKCS#1 and PSS), with an untrusted key, with HMAC keyed by a public PEM (the
//! algorithm-confusion attack), or not at all, so that the claims checks are reached. One input
//! in sixteen is instead a raw header value (the seeds are real tokens).
//!
//! Differential: a reference of the rules, written here, decides every header value: `Bearer`
//! scheme; three base64url segments; a JSON-object header without `crit`; an asymmetric `alg`
//! equal to the one the key (by `kid`, or the only key) pins; a signature that verifies under
//! that key (checked with `ring`, not the broker's crypto); then `exp` (required) and `nbf`
//! within the leeway, `iss` the one issuer (a string), `aud` the audience (or an array holding
//! it), a non-empty principal claim (`sub`, or the policy's `principal_claim`) that names a
//! client. A token is accepted only if the reference accepts it, and then for the client the
//! principal claim names, with the key id and the token's scopes; a refusal gives one of the
//! reasons the reference found. Cases the rules leave open (a time within two seconds of a
//! bound, duplicate or oddly typed registered members) may go either way.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use mcpd::fuzzing::{jwt_verifier, JwtVerifier, Principal};
use ring::signature::{self as sig, KeyPair as _};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt");
const ISS: &str = "https://idp.example.test";
const ISS2: &str = "https://login.example.test/tenant";
const AUD: &str = "https://mcp.example.test/mcp";
/// The asymmetric algorithms a key may pin (`mcpd_policy::JWT_ALGORITHMS`).
const ASYMMETRIC: &[&str] = &[
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];
/// Header members jsonwebtoken gives a type (anything else is an ignored extension).
const REGISTERED_HEADER: &[&str] = &[
    "typ", "cty", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit", "enc", "zip", "url",
    "nonce", "b64",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Material {
    Ed,
    Ec,
    Rsa,
}

struct TrustedKey {
    kid: &'static str,
    alg: &'static str,
    material: Material,
}

struct Pol {
    verifier: JwtVerifier,
    /// In the broker's lookup order: PEM keys, then the JWKS's usable keys.
    keys: Vec<TrustedKey>,
    issuer: &'static str,
    leeway: u64,
    claim: &'static str,
    /// principal claim value → client.
    subjects: &'static [(&'static str, &'static str)],
}

struct Keys {
    ed: sig::Ed25519KeyPair,
    evil: sig::Ed25519KeyPair,
    ec: sig::EcdsaKeyPair,
    rsa: sig::RsaKeyPair,
    rng: ring::rand::SystemRandom,
    /// The trusted public keys' PEM text (HMAC secrets of the confusion attack).
    public_pems: Vec<String>,
}

struct World {
    keys: Keys,
    policies: Vec<Pol>,
}

fn der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD.decode(body).expect("fixture PEM")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let keys = Keys {
            ed: sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der(&fixture("ed.pem")))
                .expect("ed key"),
            evil: sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der(&fixture("evil.pem")))
                .expect("evil key"),
            ec: sig::EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der(&fixture("ec.pem")),
                &rng,
            )
            .expect("ec key"),
            rsa: sig::RsaKeyPair::from_pkcs8(&der(&fixture("rsa.pem"))).expect("rsa key"),
            rng,
            public_pems: vec![fixture("ed.pub"), fixture("ec.pub"), fixture("rsa.pub")],
        };
        let f = FIXTURES;
        let multi = format!(
            r#"
[auth.jwt]
issuer = "{ISS}"
audience = "{AUD}"
keys = [
  {{ kid = "ed", alg = "EdDSA", pem = "{f}/ed.pub" }},
  {{ kid = "ec", alg = "ES256", pem = "{f}/ec.pub" }},
  {{ kid = "rsa", alg = "RS256", pem = "{f}/rsa.pub" }},
  {{ kid = "ps", alg = "PS256", pem = "{f}/rsa.pub" }},
]
[auth.jwt.scopes]
read = "mcp:read"
[clients.alice]
read = ["/tmp"]
[clients.alice.identity]
jwt_sub = ["alice"]
[clients.bob.identity]
jwt_sub = ["bob@example.test"]
"#
        );
        let single = format!(
            r#"
[auth.jwt]
issuer = "{ISS}"
audience = "{AUD}"
keys = [{{ kid = "ed", alg = "EdDSA", pem = "{f}/ed.pub" }}]
leeway_secs = 0
principal_claim = "email"
[clients.alice.identity]
jwt_sub = ["alice@example.test"]
[clients.bob.identity]
jwt_sub = ["bob@example.test"]
"#
        );
        let jwks = format!(
            r#"
[auth.jwt]
issuer = "{ISS2}"
audience = "{AUD}"
jwks = "{f}/jwks.json"
keys = [{{ kid = "rsa", alg = "RS256", pem = "{f}/rsa.pub" }}]
leeway_secs = 300
[clients.alice.identity]
jwt_sub = ["alice"]
[clients.carol.identity]
jwt_sub = ["carol"]
"#
        );
        let load = |name: &str, text: &str| jwt_verifier(name, text).expect("fuzz policy loads");
        let k = |kid, alg, material| TrustedKey { kid, alg, material };
        let policies = vec![
            Pol {
                verifier: load("multi.toml", &multi),
                keys: vec![
                    k("ed", "EdDSA", Material::Ed),
                    k("ec", "ES256", Material::Ec),
                    k("rsa", "RS256", Material::Rsa),
                    k("ps", "PS256", Material::Rsa),
                ],
                issuer: ISS,
                leeway: 30,
                claim: "sub",
                subjects: &[("alice", "alice"), ("bob@example.test", "bob")],
            },
            Pol {
                verifier: load("single.toml", &single),
                keys: vec![k("ed", "EdDSA", Material::Ed)],
                issuer: ISS,
                leeway: 0,
                claim: "email",
                subjects: &[("alice@example.test", "alice"), ("bob@example.test", "bob")],
            },
            Pol {
                verifier: load("jwks.toml", &jwks),
                keys: vec![
                    k("rsa", "RS256", Material::Rsa),
                    k("jwk-ec", "ES256", Material::Ec),
                    k("jwk-ed", "EdDSA", Material::Ed),
                ],
                issuer: ISS2,
                leeway: 300,
                claim: "sub",
                subjects: &[("alice", "alice"), ("carol", "carol")],
            },
        ];
        World { keys, policies }
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// The reference.

/// A JSON object's members in order, duplicates kept.
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry::<String, Value>()? {
                    out.push(e);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A segment decoded to a JSON object (the last of duplicate members wins, RFC 7519 §4) and
/// the names that appear more than once.
fn object(seg: &str) -> Option<(Map<String, Value>, BTreeSet<String>)> {
    let bytes = URL_SAFE_NO_PAD.decode(seg).ok()?;
    let Members(members) = serde_json::from_slice(&bytes).ok()?;
    let mut map = Map::new();
    let mut dups = BTreeSet::new();
    for (k, v) in members {
        if map.insert(k.clone(), v).is_some() {
            dups.insert(k);
        }
    }
    Some((map, dups))
}

fn ring_verifies(k: &Keys, material: Material, alg: &str, msg: &[u8], s: &[u8]) -> bool {
    let (algorithm, public): (&dyn sig::VerificationAlgorithm, &[u8]) = match (material, alg) {
        (Material::Ed, "EdDSA") => (&sig::ED25519, k.ed.public_key().as_ref()),
        (Material::Ec, "ES256") => (&sig::ECDSA_P256_SHA256_FIXED, k.ec.public_key().as_ref()),
        (Material::Rsa, "RS256") => (
            &sig::RSA_PKCS1_2048_8192_SHA256,
            k.rsa.public_key().as_ref(),
        ),
        (Material::Rsa, "PS256") => (&sig::RSA_PSS_2048_8192_SHA256, k.rsa.public_key().as_ref()),
        _ => return false,
    };
    sig::UnparsedPublicKey::new(algorithm, public)
        .verify(msg, s)
        .is_ok()
}

#[derive(Debug)]
enum Verdict {
    /// Accepted for this client, subject (principal claim), key id and scopes; or refused
    /// with one of `soft`, the open cases.
    Accept {
        client: &'static str,
        subject: String,
        kid: &'static str,
        scopes: Vec<String>,
        soft: Vec<&'static str>,
    },
    /// Refused, with one of these reasons.
    Refuse(Vec<&'static str>),
}

fn refuse(hard: &[&'static str], soft: &[&'static str]) -> Verdict {
    Verdict::Refuse(hard.iter().chain(soft).copied().collect())
}

const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// Scopes: `scope` (space-separated) or else `scp` (array), sorted and deduplicated, without
/// long ones or control characters, at most 256.
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut set = BTreeSet::new();
    match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => set.extend(s.split_ascii_whitespace().map(str::to_string)),
        Some(Value::Array(a)) => set.extend(a.iter().filter_map(Value::as_str).map(str::to_string)),
        _ => {}
    }
    set.into_iter()
        .filter(|s| s.len() <= 256 && !s.chars().any(char::is_control))
        .take(256)
        .collect()
}

fn reference(p: &Pol, k: &Keys, authorization: Option<&str>, now0: u64, now1: u64) -> Verdict {
    let malformed = || refuse(&["malformed_token"], &[]);
    let Some(h) = authorization else {
        return refuse(&["missing_token"], &[]);
    };
    let token = match h.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => return refuse(&["not_a_bearer_token"], &[]),
    };
    if token.is_empty() || token.len() > 16 * 1024 {
        return malformed();
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h64, c64, s64] = parts[..] else {
        return malformed();
    };
    let Some((header, header_dups)) = object(h64) else {
        return malformed();
    };
    if header.contains_key("crit") {
        return refuse(&["unsupported_crit"], &[]);
    }
    let Some(alg) = header
        .get("alg")
        .and_then(Value::as_str)
        .filter(|a| ASYMMETRIC.contains(a))
    else {
        return refuse(&["alg_not_allowed"], &[]);
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(s)) if s.len() <= 256 => Some(s.as_str()),
        Some(_) => return malformed(),
    };
    let key = match kid {
        Some(kid) => p.keys.iter().find(|x| x.kid == kid),
        None if p.keys.len() == 1 => p.keys.first(),
        None => None,
    };
    let Some(key) = key else {
        return refuse(&["unknown_kid"], &[]);
    };
    if key.alg != alg {
        return refuse(&["alg_not_allowed"], &[]);
    }
    // Registered header members of an unexpected type, or repeated, may make the token
    // malformed to the JWS library; it is never a reason to accept.
    let mut soft: Vec<&'static str> = Vec::new();
    let odd_header = !header_dups.is_empty()
        || header.iter().any(|(name, v)| match name.as_str() {
            "alg" | "kid" => false,
            "typ" | "cty" => !v.is_string(),
            n => REGISTERED_HEADER.contains(&n),
        });
    if odd_header {
        soft.push("malformed_token");
    }
    let Ok(signature) = URL_SAFE_NO_PAD.decode(s64) else {
        return refuse(&["malformed_token"], &soft);
    };
    let signed = format!("{h64}.{c64}");
    if !ring_verifies(k, key.material, alg, signed.as_bytes(), &signature) {
        return refuse(&["bad_signature", "malformed_token"], &soft);
    }
    let Some((claims, claim_dups)) = object(c64) else {
        return refuse(&["malformed_token"], &soft);
    };
    if claim_dups
        .iter()
        .any(|c| ["exp", "nbf", "iss", "aud", "sub"].contains(&c.as_str()))
    {
        soft.push("malformed_token");
    }
    let mut hard: Vec<&'static str> = Vec::new();
    // jsonwebtoken reads `exp`, `nbf` and `sub` without consuming an object or array it does
    // not expect there, and then fails to read the rest: such a token is malformed to it.
    let composite = |c: &str| claims.get(c).is_some_and(|v| v.is_object() || v.is_array());
    if composite("sub") {
        soft.push("malformed_token");
    }
    let leeway = p.leeway as f64;
    let (lo, hi) = (now0 as f64, now1 as f64);
    // exp: required, a NumericDate not before now − leeway.
    match claims.get("exp").and_then(Value::as_f64) {
        None if composite("exp") => hard.extend(["missing_claim", "malformed_token"]),
        None => hard.push("missing_claim"),
        Some(v) if v < 0.0 => hard.extend(["missing_claim", "expired"]),
        Some(v) if v >= TWO_POW_64 => soft.push("missing_claim"),
        Some(v) if v + 1.0 < lo - leeway => hard.push("expired"),
        Some(v) if v - 1.0 >= hi - leeway => {}
        Some(_) => soft.push("expired"),
    }
    // nbf: optional, a NumericDate not after now + leeway.
    match claims.get("nbf").map(Value::as_f64) {
        None => {}
        Some(None) => hard.push("malformed_token"),
        Some(Some(v)) if v < 0.0 => soft.push("malformed_token"),
        Some(Some(v)) if v >= TWO_POW_64 => hard.extend(["not_yet_valid", "malformed_token"]),
        Some(Some(v)) if v - 1.0 > hi + leeway => hard.push("not_yet_valid"),
        Some(Some(v)) if v + 1.0 <= lo + leeway => {}
        Some(Some(_)) => soft.push("not_yet_valid"),
    }
    // iss: required, exactly the issuer (RFC 7519 §4.1.1: one StringOrURI).
    match claims.get("iss") {
        Some(Value::String(s)) if s == p.issuer => {}
        Some(Value::String(_)) => hard.push("wrong_issuer"),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => hard.push("wrong_issuer"),
        _ => hard.extend(["missing_claim", "malformed_token"]),
    }
    // aud: required, the audience or an array of strings holding it.
    match claims.get("aud") {
        Some(Value::String(s)) if s == AUD => {}
        Some(Value::String(_)) => hard.push("wrong_audience"),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            if !a.iter().any(|x| x == AUD) {
                hard.push("wrong_audience");
            }
        }
        _ => hard.extend(["missing_claim", "malformed_token"]),
    }
    let subject = match claims.get(p.claim) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => {
            hard.push("missing_subject");
            None
        }
    };
    let client = subject.as_deref().and_then(|s| {
        p.subjects
            .iter()
            .find(|(want, _)| *want == s)
            .map(|(_, c)| *c)
    });
    if subject.is_some() && client.is_none() {
        hard.push("unknown_subject");
    }
    match (hard.is_empty(), client, subject) {
        (true, Some(client), Some(subject)) => Verdict::Accept {
            client,
            subject,
            kid: key.kid,
            scopes: scopes(&claims),
            soft,
        },
        _ => refuse(&hard, &soft),
    }
}

fn attribute<'a>(p: &'a Principal, name: &str) -> Option<&'a str> {
    p.attributes
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn check(p: &Pol, k: &Keys, authorization: Option<&str>) {
    let now0 = now();
    let got = p.verifier.authenticate(authorization);
    let now1 = now();
    let want = reference(p, k, authorization, now0, now1);
    match (&want, &got) {
        (
            Verdict::Accept {
                client,
                subject,
                kid,
                scopes,
                ..
            },
            Ok(principal),
        ) => {
            assert_eq!(principal.client.as_str(), *client, "{authorization:?}");
            assert_eq!(principal.method, "jwt-bearer");
            let short: String = subject.chars().take(256).collect();
            assert_eq!(attribute(principal, "subject"), Some(short.as_str()));
            assert_eq!(attribute(principal, "kid"), Some(*kid));
            assert_eq!(attribute(principal, "issuer"), Some(p.issuer));
            assert_eq!(principal.scopes.as_ref(), Some(scopes), "{authorization:?}");
        }
        (Verdict::Accept { soft, .. }, Err(reason)) => assert!(
            soft.contains(reason),
            "refused ({reason}) a token the rules accept ({want:?}): {authorization:?}"
        ),
        (Verdict::Refuse(reasons), Ok(principal)) => panic!(
            "accepted a token the rules refuse ({reasons:?}): {authorization:?} -> {principal:?}"
        ),
        (Verdict::Refuse(reasons), Err(reason)) => assert!(
            reasons.contains(reason),
            "refused for {reason}, the rules say one of {reasons:?}: {authorization:?}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The structure-aware token. Every choice's first variant (what `arbitrary` takes when the
// input runs out) makes a token the policy accepts: mutations then take it apart.

const STRINGS: &[&str] = &[
    ISS,
    ISS2,
    AUD,
    "https://mcp.example.test/mcp/",
    "alice",
    "bob@example.test",
    "carol",
    "alice@example.test",
    "",
    "mcp:read",
    "mcp:read mcp:exec",
    "JWT",
    "at+jwt",
    "exp",
];
const ALGS: &[&str] = &[
    "EdDSA", "ES256", "RS256", "PS256", "ES384", "RS512", "HS256", "none", "NONE", "eddsa", "",
];
const KIDS: &[&str] = &[
    "ed", "ec", "rsa", "ps", "jwk-ec", "jwk-ed", "jwk-enc", "jwk-oct", "", "ED", "unknown",
];
const SUBJECTS: &[&str] = &[
    "alice",
    "bob@example.test",
    "carol",
    "alice@example.test",
    "",
    "Alice",
    "alice\n",
    "mallory",
];
const ISSUERS: &[&str] = &[
    ISS,
    ISS2,
    "https://idp.example.test/",
    "https://evil.example.test",
];
const AUDS: &[&str] = &[
    AUD,
    "https://mcp.example.test/mcp/",
    "https://other.example.test/mcp",
];
const HEADER_NAMES: &[&str] = &[
    "typ", "cty", "jku", "jwk", "x5c", "x5t", "b64", "enc", "zip", "nonce", "url", "x-extra",
];
const CLAIM_NAMES: &[&str] = &[
    "jti",
    "scope",
    "scp",
    "email",
    "sub",
    "azp",
    "client_id",
    "roles",
    "iat",
];

fn pick(list: &[&str], i: u8) -> String {
    list[usize::from(i) % list.len()].to_string()
}

#[derive(Arbitrary, Debug)]
enum Leaf {
    Pick(u8),
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
}

impl Leaf {
    fn value(&self) -> Value {
        match self {
            Leaf::Pick(i) => Value::String(pick(STRINGS, *i)),
            Leaf::Null => Value::Null,
            Leaf::Bool(b) => Value::Bool(*b),
            Leaf::Int(i) => Value::from(*i),
            Leaf::Num(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Leaf::Str(s) => Value::String(s.clone()),
        }
    }
}

/// Any JSON (two levels).
#[derive(Arbitrary, Debug)]
enum J {
    Leaf(Leaf),
    Arr(Vec<Leaf>),
    Obj(Vec<(String, Leaf)>),
}

impl J {
    fn value(&self) -> Value {
        match self {
            J::Leaf(l) => l.value(),
            J::Arr(a) => Value::Array(a.iter().map(Leaf::value).collect()),
            J::Obj(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), v.value())).collect()),
        }
    }
}

/// A member: the coherent value, one from the member's list, any JSON, or absent.
#[derive(Arbitrary, Debug)]
enum Field {
    Good,
    Pick(u8),
    Value(J),
    Absent,
}

impl Field {
    fn value(&self, good: Option<&str>, list: &[&str]) -> Option<Value> {
        match self {
            Field::Good => good.map(|g| Value::String(g.to_string())),
            Field::Pick(i) => Some(Value::String(pick(list, *i))),
            Field::Value(j) => Some(j.value()),
            Field::Absent => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Aud {
    Good,
    Pick(u8),
    Many(Vec<u8>, Option<Leaf>),
    Value(J),
    Absent,
}

#[derive(Arbitrary, Debug)]
enum Time {
    /// `exp`: in ten minutes; `nbf`: absent; `iat`: now.
    Good,
    /// Seconds from now.
    Rel(i16),
    /// Seconds from now plus a fraction.
    Frac(i16, u8),
    Abs(u64),
    Value(J),
    Absent,
}

impl Time {
    fn value(&self, now: u64, good: Option<u64>) -> Option<Value> {
        let at = |d: i16| now.saturating_add_signed(i64::from(d));
        match self {
            Time::Good => good.map(Value::from),
            Time::Rel(d) => Some(Value::from(at(*d))),
            Time::Frac(d, f) => serde_json::Number::from_f64(at(*d) as f64 + f64::from(*f) / 256.0)
                .map(Value::Number),
            Time::Abs(t) => Some(Value::from(*t)),
            Time::Value(j) => Some(j.value()),
            Time::Absent => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Header {
    alg: Field,
    kid: Field,
    typ: Option<Field>,
    crit: Option<J>,
    extra: Vec<(u8, J)>,
    /// A member repeated at the end (0: alg, 1: kid, else an extra name).
    dup: Option<(u8, Field)>,
}

#[derive(Arbitrary, Debug)]
struct Claims {
    iss: Field,
    aud: Aud,
    /// The principal claim (`sub` or the policy's) and the other one.
    principal: Field,
    other: Field,
    exp: Time,
    nbf: Time,
    iat: Time,
    scope: Option<J>,
    extra: Vec<(u8, J)>,
    /// A member repeated at the end.
    dup: Option<(u8, Field)>,
}

/// How a segment is written.
#[derive(Arbitrary, Debug)]
enum Seg {
    Json,
    /// The JSON in base64url with padding, or in the standard alphabet.
    Padded,
    Standard,
    /// Other bytes, base64url-encoded.
    Bytes(Vec<u8>),
    /// A literal segment.
    Text(String),
}

#[derive(Clone, Copy, Debug)]
enum SignWith {
    Ed,
    Ec,
    Rs256,
    Ps256,
    Evil,
}

#[derive(Arbitrary, Debug)]
enum Signer {
    /// One of the policy's keys (its kid and alg are the header's coherent values).
    Trusted(u8),
    /// A fixed key under its own name (maybe not one this policy trusts).
    Ed,
    Ec,
    Rs256,
    Ps256,
    /// A key no policy trusts.
    Evil,
    /// HMAC-SHA256 keyed with a trusted public key's PEM text (alg HS256).
    HmacPem(u8),
    /// No signature (alg none).
    Empty,
    Bytes(Vec<u8>),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Scheme {
    Bearer,
    Lower,
    Upper,
    Spaces,
    Basic,
    NoSpace,
    Missing,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Mangle {
    Flip(u16, u8),
    Insert(u16, char),
    Remove(u16),
    Append(String),
}

#[derive(Arbitrary, Debug)]
struct Built {
    signer: Signer,
    scheme: Scheme,
    header: Header,
    header_seg: Seg,
    claims: Claims,
    claims_seg: Seg,
    mangle: Vec<Mangle>,
}

fn render(members: &[(String, Value)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn segment(json: &str, how: &Seg) -> String {
    match how {
        Seg::Json => URL_SAFE_NO_PAD.encode(json),
        Seg::Padded => URL_SAFE.encode(json),
        Seg::Standard => STANDARD.encode(json),
        Seg::Bytes(b) => URL_SAFE_NO_PAD.encode(b),
        Seg::Text(t) => t.clone(),
    }
}

fn header_json(h: &Header, alg: &str, kid: &str) -> String {
    let mut m = Vec::new();
    let mut put = |name: String, v: Option<Value>| {
        if let Some(v) = v {
            m.push((name, v));
        }
    };
    put("alg".into(), h.alg.value(Some(alg), ALGS));
    put("kid".into(), h.kid.value(Some(kid), KIDS));
    if let Some(t) = &h.typ {
        put("typ".into(), t.value(Some("JWT"), STRINGS));
    }
    put("crit".into(), h.crit.as_ref().map(J::value));
    for (n, v) in &h.extra {
        put(pick(HEADER_NAMES, *n), Some(v.value()));
    }
    if let Some((n, f)) = &h.dup {
        match n {
            0 => put("alg".into(), f.value(Some(alg), ALGS)),
            1 => put("kid".into(), f.value(Some(kid), KIDS)),
            n => put(pick(HEADER_NAMES, *n), f.value(None, STRINGS)),
        }
    }
    render(&m)
}

fn claims_json(c: &Claims, p: &Pol, now: u64) -> String {
    let mut m = Vec::new();
    let mut put = |name: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.push((name.to_string(), v));
        }
    };
    put("iss", c.iss.value(Some(p.issuer), ISSUERS));
    put(
        "aud",
        match &c.aud {
            Aud::Good => Some(Value::String(AUD.into())),
            Aud::Pick(i) => Some(Value::String(pick(AUDS, *i))),
            Aud::Many(list, odd) => {
                let mut a: Vec<Value> =
                    list.iter().map(|i| Value::String(pick(AUDS, *i))).collect();
                a.extend(odd.as_ref().map(Leaf::value));
                Some(Value::Array(a))
            }
            Aud::Value(j) => Some(j.value()),
            Aud::Absent => None,
        },
    );
    let (mapped, other) = (
        p.subjects[0].0,
        if p.claim == "sub" { "email" } else { "sub" },
    );
    put(p.claim, c.principal.value(Some(mapped), SUBJECTS));
    put(other, c.other.value(Some(p.subjects[1].0), SUBJECTS));
    put("exp", c.exp.value(now, Some(now + 600)));
    put("nbf", c.nbf.value(now, None));
    put("iat", c.iat.value(now, Some(now)));
    put("scope", c.scope.as_ref().map(J::value));
    for (n, v) in &c.extra {
        put(&pick(CLAIM_NAMES, *n), Some(v.value()));
    }
    if let Some((n, f)) = &c.dup {
        let names = ["exp", "nbf", "iss", "aud", "sub", "email"];
        let name = names[usize::from(*n) % names.len()];
        let v = match name {
            "exp" | "nbf" => Some(Value::from(now + u64::from(*n) * 1000)),
            "iss" => f.value(Some(p.issuer), ISSUERS),
            "aud" => f.value(Some(AUD), AUDS),
            _ => f.value(Some(p.subjects[1].0), SUBJECTS),
        };
        put(name, v);
    }
    render(&m)
}

/// The signer's key, alg and kid (the header's coherent values).
fn signer_key(p: &Pol, s: &Signer) -> (Option<SignWith>, &'static str, &'static str) {
    match s {
        Signer::Trusted(i) => {
            let k = &p.keys[usize::from(*i) % p.keys.len()];
            let with = match (k.material, k.alg) {
                (Material::Ed, _) => SignWith::Ed,
                (Material::Ec, _) => SignWith::Ec,
                (Material::Rsa, "PS256") => SignWith::Ps256,
                (Material::Rsa, _) => SignWith::Rs256,
            };
            (Some(with), k.alg, k.kid)
        }
        Signer::Ed => (Some(SignWith::Ed), "EdDSA", "ed"),
        Signer::Ec => (Some(SignWith::Ec), "ES256", "ec"),
        Signer::Rs256 => (Some(SignWith::Rs256), "RS256", "rsa"),
        Signer::Ps256 => (Some(SignWith::Ps256), "PS256", "ps"),
        Signer::Evil => (Some(SignWith::Evil), "EdDSA", "ed"),
        Signer::HmacPem(_) => (None, "HS256", "ed"),
        Signer::Empty => (None, "none", "ed"),
        Signer::Bytes(_) | Signer::Text(_) => (None, "EdDSA", "ed"),
    }
}

fn signature(k: &Keys, s: &Signer, with: Option<SignWith>, msg: &[u8]) -> String {
    let rsa = |padding: &'static dyn sig::RsaEncoding| {
        let mut out = vec![0; k.rsa.public().modulus_len()];
        k.rsa
            .sign(padding, &k.rng, msg, &mut out)
            .expect("rsa signs");
        out
    };
    let bytes = match (with, s) {
        (Some(SignWith::Ed), _) => k.ed.sign(msg).as_ref().to_vec(),
        (Some(SignWith::Evil), _) => k.evil.sign(msg).as_ref().to_vec(),
        (Some(SignWith::Ec), _) => {
            k.ec.sign(&k.rng, msg)
                .expect("ecdsa signs")
                .as_ref()
                .to_vec()
        }
        (Some(SignWith::Rs256), _) => rsa(&sig::RSA_PKCS1_SHA256),
        (Some(SignWith::Ps256), _) => rsa(&sig::RSA_PSS_SHA256),
        (None, Signer::HmacPem(i)) => {
            let pem = &k.public_pems[usize::from(*i) % k.public_pems.len()];
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes());
            ring::hmac::sign(&key, msg).as_ref().to_vec()
        }
        (None, Signer::Bytes(b)) => b.clone(),
        (None, Signer::Text(t)) => return t.clone(),
        (None, _) => Vec::new(),
    };
    URL_SAFE_NO_PAD.encode(bytes)
}

fn build(k: &Keys, p: &Pol, b: &Built) -> Option<String> {
    let now = now();
    let (with, alg, kid) = signer_key(p, &b.signer);
    let h = segment(&header_json(&b.header, alg, kid), &b.header_seg);
    let c = segment(&claims_json(&b.claims, p, now), &b.claims_seg);
    let signed = format!("{h}.{c}");
    let s = signature(k, &b.signer, with, signed.as_bytes());
    let mut token = format!("{signed}.{s}");
    for m in &b.mangle {
        let at = |i: u16| {
            let mut i = usize::from(i) % (token.len() + 1);
            while !token.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        match m {
            Mangle::Flip(i, x) => {
                let i = at(*i);
                if let Some(ch) = token[i..].chars().next() {
                    let flipped = char::from_u32(u32::from(ch) ^ u32::from(*x)).unwrap_or('A');
                    token.replace_range(i..i + ch.len_utf8(), &flipped.to_string());
                }
            }
            Mangle::Insert(i, ch) => {
                let i = at(*i);
                token.insert(i, *ch);
            }
            Mangle::Remove(i) => {
                let i = at(*i);
                if i < token.len() {
                    token.remove(i);
                }
            }
            Mangle::Append(s) => token.push_str(s),
        }
    }
    Some(match &b.scheme {
        Scheme::Bearer => format!("Bearer {token}"),
        Scheme::Lower => format!("bearer {token}"),
        Scheme::Upper => format!("BEARER {token}"),
        Scheme::Spaces => format!("Bearer   {token}  "),
        Scheme::Basic => format!("Basic {token}"),
        Scheme::NoSpace => format!("Bearer{token}"),
        Scheme::Missing => return None,
        Scheme::Other(s) => format!("{s} {token}"),
    })
}

fuzz_target!(|data: &[u8]| {
    let [first, rest @ ..] = data else {
        return;
    };
    let w = world();
    let p = &w.policies[usize::from(*first) % w.policies.len()];
    if first >> 4 == 0xF {
        // A raw header value (the seeds: real tokens).
        check(p, &w.keys, Some(&String::from_utf8_lossy(rest)));
        return;
    }
    let Ok(b) = Built::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let header = build(&w.keys, p, &b);
    check(p, &w.keys, header.as_deref());
});
