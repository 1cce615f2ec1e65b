//! OAuth bearer JWTs on the HTTP listener, end to end: the real `mcpd serve --http` with
//! `[auth.jwt]`, tokens signed here with keys made here (ECDSA P-256, rcgen), raw HTTP from
//! the test. The attack table (each row: status, `WWW-Authenticate`, the audited reject, the
//! token absent from the audit log and stderr), insufficient scope (403), a session replayed
//! by another principal (404), two principals served side by side with their own tools and
//! roots, the Protected Resource Metadata, key rotation (unknown `kid` → JWKS re-read,
//! rate-limited; SIGHUP), and the Python SDK with a bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mcpd_e2e::http::{read_response, request_at, HttpServer, Response};
use mcpd_e2e::jwt::{b64, Key};
use mcpd_e2e::{audit_records_so_far, signal, wait_until};
use serde_json::{json, Value};

const ISS: &str = "https://idp.example.test";
const AUD: &str = "https://mcp.example.test/mcp";
const PRM: &str = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, scope: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "scope": scope, "iat": now(), "exp": now() + 600})
}

fn write_jwks(path: &Path, keys: &[&Key]) {
    let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    std::fs::write(path, doc.to_string()).unwrap();
}

struct Fx {
    _top: tempfile::TempDir,
    alice_root: PathBuf,
    bob_root: PathBuf,
    jwks: PathBuf,
    log: PathBuf,
    cfg: PathBuf,
}

fn fx(keys: &[&Key]) -> Fx {
    let top = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(top.path()).unwrap();
    let (alice_root, bob_root, logdir) = (base.join("alice"), base.join("bob"), base.join("log"));
    for d in [&alice_root, &bob_root, &logdir] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(alice_root.join("a.txt"), "alice's file\n").unwrap();
    std::fs::write(bob_root.join("b.txt"), "bob's file\n").unwrap();
    let jwks = base.join("jwks.json");
    write_jwks(&jwks, keys);
    let log = logdir.join("audit.jsonl");
    let cfg = base.join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[auth.jwt]
issuer = "{ISS}"
audience = "{AUD}"
jwks = "{jwks}"
authorization_servers = ["{ISS}"]
scopes_supported = ["mcp:read", "mcp:exec"]
[auth.jwt.scopes]
read = "mcp:read"
command = "mcp:exec"

[audit]
path = "{log}"

[clients.alice]
read = ["{a}"]
tools = ["read_text_file", "list_allowed_directories"]
[clients.alice.identity]
jwt_sub = ["alice"]

[clients.bob]
read = ["{b}"]
exec = ["echo"]
[clients.bob.identity]
jwt_sub = ["bob@example.test"]
"#,
            jwks = jwks.display(),
            log = log.display(),
            a = alice_root.display(),
            b = bob_root.display(),
        ),
    )
    .unwrap();
    Fx {
        _top: top,
        alice_root,
        bob_root,
        jwks,
        log,
        cfg,
    }
}

fn serve(f: &Fx) -> HttpServer {
    HttpServer::start(&["--config", f.cfg.to_str().unwrap()])
}

fn post(srv: &HttpServer, token: Option<&str>, sid: Option<&str>, msg: &Value) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    if let Some(s) = sid {
        h.push(("Mcp-Session-Id", s));
    }
    request_at(srv.addr, "POST", &h, msg.to_string().as_bytes())
}

/// A request to any path (the harness's helpers go to /mcp).
fn raw(
    srv: &HttpServer,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {}\r\n", srv.addr));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    read_response(&mut s)
}

fn initialize(srv: &HttpServer, token: &str) -> String {
    let r = post(
        srv,
        Some(token),
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "jwt-e2e", "version": "0"}}}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let n = post(
        srv,
        Some(token),
        Some(&sid),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(n.status, 202);
    sid
}

fn rpc(
    srv: &HttpServer,
    token: &str,
    sid: &str,
    id: i64,
    method: &str,
    params: Value,
) -> (u16, Value) {
    let r = post(
        srv,
        Some(token),
        Some(sid),
        &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
    );
    let status = r.status;
    (status, r.response_to(&json!(id)))
}

fn tool_names(srv: &HttpServer, token: &str, sid: &str) -> Vec<String> {
    let (st, r) = rpc(srv, token, sid, 50, "tools/list", json!({}));
    assert_eq!(st, 200, "{r}");
    let mut v: Vec<String> = r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Wait until the audit log holds a record matching `f`.
fn audited(path: &Path, f: impl Fn(&Value) -> bool) -> bool {
    wait_until(Duration::from_secs(5), || {
        audit_records_so_far(path).iter().any(&f)
    })
}

#[test]
fn the_attack_table_is_refused_with_a_challenge_and_audited() {
    let k1 = Key::new("k1");
    let k2 = Key::new("k2"); // never published
    let f = fx(&[&k1]);
    let srv = serve(&f);
    let ok_claims = claims("alice", "mcp:read");
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = ok_claims.clone();
        edit(&mut c);
        k1.sign(&c)
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        b64(ok_claims.to_string().as_bytes())
    );
    // HS256 "signed" with the published public key: a verifier that trusted the header's
    // algorithm would check it with the public key bytes as the HMAC secret.
    let hs_confusion = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let public_pem = k1.kp.public_key_pem();
        encode(
            &h,
            &ok_claims,
            &EncodingKey::from_secret(public_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let crit = {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        h.crit = Some(vec!["exp".into()]);
        let k = EncodingKey::from_ec_pem(k1.kp.serialize_pem().as_bytes()).unwrap();
        encode(&h, &ok_claims, &k).unwrap()
    };
    let no_exp = with(&|c| {
        c.as_object_mut().unwrap().remove("exp");
    });
    // (row, Authorization header, reason audited)
    let rows: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing_token"),
        (
            "malformed token",
            Some("Bearer not.a-token".into()),
            "malformed_token",
        ),
        (
            "not a bearer scheme",
            Some(format!("Basic {}", b64(b"alice:pw"))),
            "not_a_bearer_token",
        ),
        (
            "alg none",
            Some(format!("Bearer {alg_none}")),
            "alg_not_allowed",
        ),
        (
            "HS256 with the public key",
            Some(format!("Bearer {hs_confusion}")),
            "alg_not_allowed",
        ),
        (
            "unknown crit",
            Some(format!("Bearer {crit}")),
            "unsupported_crit",
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                with(&|c| c["exp"] = json!(now() - 3600))
            )),
            "expired",
        ),
        ("no exp", Some(format!("Bearer {no_exp}")), "missing_claim"),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                with(&|c| c["nbf"] = json!(now() + 3600))
            )),
            "not_yet_valid",
        ),
        (
            "wrong aud",
            Some(format!(
                "Bearer {}",
                with(&|c| c["aud"] = json!("https://mcp.example.test"))
            )),
            "wrong_audience",
        ),
        (
            "another resource",
            Some(format!(
                "Bearer {}",
                with(&|c| c["aud"] = json!("https://other.example.test/mcp"))
            )),
            "wrong_audience",
        ),
        (
            "wrong iss",
            Some(format!(
                "Bearer {}",
                with(&|c| c["iss"] = json!("https://evil.example.test"))
            )),
            "wrong_issuer",
        ),
        (
            "bad signature",
            Some(format!("Bearer {}", k2.sign_as(Some("k1"), &ok_claims))),
            "bad_signature",
        ),
        (
            "unknown kid",
            Some(format!("Bearer {}", k2.sign(&ok_claims))),
            "unknown_kid",
        ),
        (
            "unknown subject",
            Some(format!("Bearer {}", with(&|c| c["sub"] = json!("mallory")))),
            "unknown_subject",
        ),
    ];
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}});
    let mut secrets = Vec::new();
    for (row, authz, reason) in &rows {
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(a) = authz {
            h.push(("Authorization", a.as_str()));
            secrets.push(a.split_once(' ').unwrap().1.to_string());
        }
        let r = request_at(srv.addr, "POST", &h, init.to_string().as_bytes());
        assert_eq!(r.status, 401, "{row}: {}", String::from_utf8_lossy(&r.body));
        let www = r
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("{row}: no challenge"));
        assert!(www.starts_with("Bearer "), "{row}: {www}");
        assert!(
            www.contains(&format!("resource_metadata=\"{PRM}\"")),
            "{row}: {www}"
        );
        assert!(www.contains("scope=\"mcp:read mcp:exec\""), "{row}: {www}");
        assert_eq!(
            www.contains("error=\"invalid_token\""),
            authz.is_some(),
            "{row}: error only when a token was presented: {www}"
        );
        assert!(r.header("mcp-session-id").is_none(), "{row}");
        assert!(
            audited(&f.log, |rec| rec["event"] == "auth.failure"
                && rec["method"] == "jwt-bearer"
                && rec["stage"] == "http-request"
                && rec["http_status"] == 401
                && rec["reason"] == *reason
                && rec["principal"] == "<unauthenticated>"),
            "{row}: no audited reject with reason {reason}"
        );
    }
    // A (valid) token in the query string: refused before anything else, audited.
    let good = k1.sign(&ok_claims);
    let r = raw(
        &srv,
        "POST",
        &format!("/mcp?access_token={good}"),
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        &init.to_string(),
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_request\""));
    assert!(audited(&f.log, |rec| rec["http_status"] == 400
        && rec["reason"] == "token_in_query"));
    secrets.push(good);
    // No session was opened by any of them.
    assert!(!audit_records_so_far(&f.log)
        .iter()
        .any(|r| r["event"] == "session.open"));
    // The tokens are in neither the audit log nor stderr.
    let log = std::fs::read_to_string(&f.log).unwrap();
    let stderr = srv.stderr();
    for t in &secrets {
        let sig = t.rsplit('.').next().unwrap();
        let needle = if sig.len() >= 16 { sig } else { t.as_str() };
        assert!(!log.contains(needle), "a token is in the audit log");
        assert!(!stderr.contains(needle), "a token is in stderr");
    }
}

#[test]
fn two_principals_at_once_insufficient_scope_and_session_replay() {
    let k1 = Key::new("k1");
    let f = fx(&[&k1]);
    let srv = serve(&f);
    let alice = k1.sign(&claims("alice", "mcp:read"));
    let bob = k1.sign(&claims("bob@example.test", "mcp:read mcp:exec"));
    let bob_ro = k1.sign(&claims("bob@example.test", "mcp:read"));
    let (sa, sb) = (initialize(&srv, &alice), initialize(&srv, &bob));
    // Each sees its own tools.
    assert_eq!(
        tool_names(&srv, &alice, &sa),
        ["list_allowed_directories", "read_text_file"]
    );
    let bob_tools = tool_names(&srv, &bob, &sb);
    assert!(
        bob_tools.contains(&"run_command".to_string()),
        "{bob_tools:?}"
    );
    assert!(
        bob_tools.contains(&"list_directory".to_string()),
        "{bob_tools:?}"
    );
    // ... and its own roots, interleaved.
    let read = |tok: &str, sid: &str, id, p: &Path| {
        let (st, r) = rpc(
            &srv,
            tok,
            sid,
            id,
            "tools/call",
            json!({"name": "read_text_file", "arguments": {"path": p}}),
        );
        assert_eq!(st, 200, "{r}");
        (
            r["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string(),
            r["result"]["isError"] == true,
        )
    };
    assert_eq!(
        read(&alice, &sa, 2, &f.alice_root.join("a.txt")),
        ("alice's file\n".into(), false)
    );
    assert_eq!(
        read(&bob, &sb, 2, &f.bob_root.join("b.txt")),
        ("bob's file\n".into(), false)
    );
    assert!(
        read(&alice, &sa, 3, &f.bob_root.join("b.txt")).1,
        "alice reads bob's root"
    );
    assert!(
        read(&bob, &sb, 3, &f.alice_root.join("a.txt")).1,
        "bob reads alice's root"
    );
    let (_, dirs) = rpc(
        &srv,
        &alice,
        &sa,
        4,
        "tools/call",
        json!({"name": "list_allowed_directories", "arguments": {}}),
    );
    let text = dirs["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(f.alice_root.to_str().unwrap())
            && !text.contains(f.bob_root.to_str().unwrap()),
        "{text}"
    );
    // Alice's session id with bob's token: not found, exactly like an unknown id.
    let r = post(
        &srv,
        Some(&bob),
        Some(&sa),
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
    );
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], -32001);
    assert!(audited(&f.log, |rec| rec["http_status"] == 404
        && rec["principal"] == "bob"));
    // Bob with a read-only token: run_command is not listed, and calling it is a 403.
    let sr = initialize(&srv, &bob_ro);
    assert!(!tool_names(&srv, &bob_ro, &sr).contains(&"run_command".to_string()));
    let r = post(
        &srv,
        Some(&bob_ro),
        Some(&sr),
        &json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
            "name": "run_command", "arguments": {"command": "echo", "args": ["hi"]}}}),
    );
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let www = r.header("www-authenticate").unwrap();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert!(www.contains("scope=\"mcp:exec\""), "{www}");
    assert!(
        www.contains(&format!("resource_metadata=\"{PRM}\"")),
        "{www}"
    );
    let body = r.json();
    assert_eq!(body["error"]["code"], -32040);
    assert_eq!(body["error"]["data"]["scope"], "mcp:exec");
    assert!(audited(&f.log, |rec| rec["event"] == "request"
        && rec["principal"] == "bob"
        && rec["tool"] == "run_command"
        && rec["decision"] == "deny"
        && rec["reason"] == "insufficient_scope"));
    // The same call with the full token runs (same client, its own session).
    let (st, r) = rpc(
        &srv,
        &bob,
        &sb,
        7,
        "tools/call",
        json!({"name": "run_command", "arguments": {"command": "echo", "args": ["hi"]}}),
    );
    assert_eq!(st, 200);
    assert_eq!(r["result"]["structuredContent"]["stdout"], "hi\n", "{r}");
    // The read-only token does not find the full token's session either.
    let r = post(
        &srv,
        Some(&bob_ro),
        Some(&sb),
        &json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}),
    );
    assert_eq!(r.status, 404);
    // auth.success names the principal, issuer, key id and a token digest, never the token.
    let recs = audit_records_so_far(&f.log);
    let success: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "auth.success")
        .collect();
    assert_eq!(success.len(), 3, "{success:?}");
    for s in &success {
        assert_eq!(s["method"], "jwt-bearer");
        assert_eq!(s["issuer"], ISS);
        assert_eq!(s["kid"], "k1");
        assert_eq!(s["token_sha256"].as_str().unwrap().len(), 16);
    }
    let log = std::fs::read_to_string(&f.log).unwrap();
    for t in [&alice, &bob, &bob_ro] {
        assert!(!log.contains(t.rsplit('.').next().unwrap()));
        assert!(!srv.stderr().contains(t.rsplit('.').next().unwrap()));
    }
}

#[test]
fn protected_resource_metadata_is_served_without_a_token_behind_the_host_gate() {
    let k1 = Key::new("k1");
    let f = fx(&[&k1]);
    let srv = serve(&f);
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let r = raw(&srv, "GET", path, &[], "");
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        let d = r.json();
        assert_eq!(d["resource"], AUD);
        assert_eq!(d["authorization_servers"], json!([ISS]));
        assert_eq!(d["scopes_supported"], json!(["mcp:read", "mcp:exec"]));
        assert_eq!(d["bearer_methods_supported"], json!(["header"]));
        let r = raw(&srv, "GET", path, &[("Host", "evil.example.test")], "");
        assert_eq!(r.status, 403, "{path}: the Host gate applies");
    }
    let r = raw(
        &srv,
        "GET",
        "/.well-known/oauth-protected-resource/other",
        &[],
        "",
    );
    assert_eq!(r.status, 404, "only the audience's path has metadata");
    assert!(audited(&f.log, |rec| rec["http_status"] == 403
        && rec["http_method"] == "GET"));
    // check-config shows the settings and the identities.
    let out = Command::new(mcpd_e2e::mcpd_bin())
        .args(["check-config", "--config", f.cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("auth.jwt: issuer={ISS} audience={AUD}")),
        "{text}"
    );
    assert!(text.contains(&format!("metadata={PRM}")), "{text}");
    assert!(
        text.contains("identity jwt_sub = bob@example.test"),
        "{text}"
    );
    assert!(
        text.contains("scope  command tools need 'mcp:exec'"),
        "{text}"
    );
}

#[test]
fn an_unknown_kid_rereads_the_jwks_rate_limited_and_sighup_reloads_it() {
    let (k1, k2, k3) = (Key::new("k1"), Key::new("k2"), Key::new("k3"));
    let f = fx(&[&k1]);
    let srv = serve(&f);
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}});
    let status = |k: &Key| {
        post(
            &srv,
            Some(&k.sign(&claims("alice", "mcp:read"))),
            None,
            &ping,
        )
        .status
    };
    assert_eq!(status(&k1), 200);
    // The issuer rotates: k2 is published. The first token naming it makes mcpd re-read.
    write_jwks(&f.jwks, &[&k1, &k2]);
    assert_eq!(status(&k2), 200, "{}", srv.stderr());
    assert!(srv.stderr().contains("JWKS re-read for an unknown key id"));
    // Another rotation at once: re-reads are rate-limited, so k3 is refused for now.
    write_jwks(&f.jwks, &[&k1, &k2, &k3]);
    assert_eq!(status(&k3), 401);
    // SIGHUP reloads the keys: k1 retired, k3 accepted.
    write_jwks(&f.jwks, &[&k3]);
    signal(srv.child.id() as i32, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || status(&k3) == 200));
    assert_eq!(status(&k1), 401);
    // A broken JWKS on reload changes nothing.
    std::fs::write(&f.jwks, "{\"keys\": []}").unwrap();
    signal(srv.child.id() as i32, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || srv
        .stderr()
        .contains("policy reload refused")));
    assert_eq!(status(&k3), 200);
}

#[test]
fn a_policy_without_jwt_identities_warns_and_the_flags_configure_tokens() {
    let k1 = Key::new("k1");
    let f = fx(&[&k1]);
    // Flags only (no [auth.jwt] in the file): tokens for the flags' audience are accepted.
    let cfg = f.cfg.with_file_name("flags.toml");
    let text = std::fs::read_to_string(&f.cfg).unwrap();
    let clients = &text[text.find("[audit]").unwrap()..];
    std::fs::write(&cfg, clients).unwrap();
    let srv = HttpServer::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--jwt-jwks",
        f.jwks.to_str().unwrap(),
        "--jwt-issuer",
        ISS,
        "--jwt-audience",
        "http://127.0.0.1:9/mcp",
    ]);
    let mut c = claims("alice", "");
    c["aud"] = json!("http://127.0.0.1:9/mcp");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}});
    assert_eq!(post(&srv, Some(&k1.sign(&c)), None, &init).status, 200);
    let r = post(&srv, Some(&k1.sign(&claims("alice", ""))), None, &init);
    assert_eq!(r.status, 401, "the file's audience is not the flag's");
    assert!(r.header("www-authenticate").unwrap().contains(
        "resource_metadata=\"http://127.0.0.1:9/.well-known/oauth-protected-resource/mcp\""
    ));
    drop(srv);
    // [auth.jwt] but no client with a jwt_sub identity: a load warning.
    let lonely = f.cfg.with_file_name("lonely.toml");
    std::fs::write(
        &lonely,
        text.replace("jwt_sub = [\"alice\"]", "")
            .replace("jwt_sub = [\"bob@example.test\"]", ""),
    )
    .unwrap();
    let out = Command::new(mcpd_e2e::mcpd_bin())
        .args(["check-config", "--config", lonely.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("WARNING: [auth.jwt] is set but no client names a jwt_sub identity"),
        "{stdout}"
    );
}

#[test]
fn python_sdk_with_a_bearer_token() {
    let Some(py) = mcpd_e2e::python_sdk() else {
        return;
    };
    let k1 = Key::new("k1");
    let f = fx(&[&k1]);
    let srv = serve(&f);
    let url = format!("http://{}/mcp", srv.addr);
    let token = k1.sign(&claims("alice", "mcp:read"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sdk_bearer.py");
    let file = f.alice_root.join("a.txt");
    for mode in ["legacy", "auto"] {
        let out = Command::new(&py)
            .arg(&script)
            .args([&url, &token, file.to_str().unwrap(), mode])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("ok ("),
            "python SDK with a bearer token failed ({mode}, {:?}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(audited(&f.log, |r| r["event"] == "auth.success"
        && r["principal"] == "alice"));
    assert!(!srv.stderr().contains(token.rsplit('.').next().unwrap()));
}

#[test]
fn stateless_era_calls_get_the_same_scope_checks() {
    let k1 = Key::new("k1");
    let f = fx(&[&k1]);
    let srv = serve(&f);
    let bob_ro = format!(
        "Bearer {}",
        k1.sign(&claims("bob@example.test", "mcp:read"))
    );
    let bob = format!(
        "Bearer {}",
        k1.sign(&claims("bob@example.test", "mcp:read mcp:exec"))
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let call = |authz: &str, id: i64| {
        let h = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "run_command"),
            ("Authorization", authz),
        ];
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "run_command", "arguments": {"command": "echo", "args": ["hi"]}, "_meta": meta}});
        request_at(srv.addr, "POST", &h, body.to_string().as_bytes())
    };
    let r = call(&bob_ro, 1);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\", scope=\"mcp:exec\""));
    assert_eq!(r.json()["error"]["data"]["scope"], "mcp:exec");
    let r = call(&bob, 2);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.response_to(&json!(2))["result"]["structuredContent"]["stdout"],
        "hi\n"
    );
    // One stateless session per (principal, token scopes).
    assert_eq!(
        audit_records_so_far(&f.log)
            .iter()
            .filter(|r| r["event"] == "session.open" && r["transport"] == "http-stateless")
            .count(),
        2
    );
}

#[test]
fn a_roles_claim_narrows_the_client_to_the_roles_it_names() {
    let k1 = Key::new("k1");
    let f = fx(&[&k1]);
    // Carol: her own grant reads `own`; role `reader` reads `data`, role `writer` writes it.
    let base = f.alice_root.parent().unwrap().to_path_buf();
    let (own, data) = (base.join("own"), base.join("data"));
    for d in [&own, &data] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(own.join("o.txt"), "own\n").unwrap();
    std::fs::write(data.join("d.txt"), "data\n").unwrap();
    let cfg = base.join("roles.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[auth.jwt]
issuer = "{ISS}"
audience = "{AUD}"
jwks = "{jwks}"
roles_claim = "roles"

[audit]
path = "{log}"

[clients.carol]
read = ["{own}"]
tools = ["read_text_file", "list_allowed_directories"]
roles = ["reader", "writer"]
[clients.carol.identity]
jwt_sub = ["carol"]

[roles.reader]
read = ["{data}"]

[roles.writer]
write = ["{data}"]
tools = ["write_file"]
"#,
            jwks = f.jwks.display(),
            log = f.log.display(),
            own = own.display(),
            data = data.display(),
        ),
    )
    .unwrap();
    let srv = HttpServer::start(&["--config", cfg.to_str().unwrap()]);
    let token = |roles: Option<Value>| {
        let mut c = claims("carol", "");
        if let Some(r) = roles {
            c["roles"] = r;
        }
        k1.sign(&c)
    };
    let read = |tok: &str, sid: &str, p: &Path| {
        let (st, r) = rpc(
            &srv,
            tok,
            sid,
            2,
            "tools/call",
            json!({"name": "read_text_file", "arguments": {"path": p}}),
        );
        assert_eq!(st, 200, "{r}");
        r["result"]["isError"] != true
    };
    let write = |tok: &str, sid: &str| {
        let (_, r) = rpc(
            &srv,
            tok,
            sid,
            3,
            "tools/call",
            json!({"name": "write_file", "arguments": {"path": data.join("w.txt"), "content": "x"}}),
        );
        r.get("result").is_some() && r["result"]["isError"] != true
    };
    // Both roles (plus one carol does not have): everything carol's policy gives.
    let full = token(Some(json!(["reader", "writer", "admin"])));
    let s = initialize(&srv, &full);
    assert!(tool_names(&srv, &full, &s).contains(&"write_file".to_string()));
    assert!(read(&full, &s, &own.join("o.txt")) && read(&full, &s, &data.join("d.txt")));
    assert!(write(&full, &s), "the full token writes");
    // `reader` only (a space-separated string works too): reads data, writes nothing.
    let reader = token(Some(json!("reader")));
    let s = initialize(&srv, &reader);
    assert!(!tool_names(&srv, &reader, &s).contains(&"write_file".to_string()));
    assert!(read(&reader, &s, &own.join("o.txt")) && read(&reader, &s, &data.join("d.txt")));
    assert!(!write(&reader, &s), "a reader token writes");
    // No roles claim: carol's own grant alone.
    let bare = token(None);
    let s = initialize(&srv, &bare);
    assert!(read(&bare, &s, &own.join("o.txt")));
    assert!(
        !read(&bare, &s, &data.join("d.txt")),
        "no roles, yet data is read"
    );
    // Only roles carol lacks: the same as none.
    let alien = token(Some(json!(["admin"])));
    let s = initialize(&srv, &alien);
    assert!(!read(&alien, &s, &data.join("d.txt")));
    // The audit log names the view and the roles the token carried.
    assert!(audited(&f.log, |r| r["event"] == "auth.success"
        && r["principal"] == "carol+reader"
        && r["roles"] == "reader"));
    assert!(audited(&f.log, |r| r["event"] == "auth.success"
        && r["principal"] == "carol"
        && r["roles"] == "admin reader writer"));
    assert!(audited(&f.log, |r| r["event"] == "auth.success"
        && r["principal"] == "carol+"
        && r["roles"] == ""));
}

#[test]
fn doctor_and_start_check_the_key_files() {
    use std::os::unix::fs::PermissionsExt;
    let k1 = Key::new("k1");
    let f = fx(&[&k1]);
    let cfg = f.cfg.to_str().unwrap();
    let doctor = || {
        let out = Command::new(mcpd_e2e::mcpd_bin())
            .args(["doctor", "--config", cfg])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let d = doctor();
    assert!(
        d.contains(&format!(
            "jwt: jwks {}: 1 usable key(s): k1:ES256",
            f.jwks.display()
        )),
        "{d}"
    );
    assert!(
        d.contains(&format!("jwt: issuer {ISS} audience {AUD}")),
        "{d}"
    );
    assert!(d.contains("the JWT key files are usable"), "{d}");
    // A JWKS others could rewrite (and so mint tokens with): doctor says so, the start is
    // refused.
    std::fs::set_permissions(&f.jwks, std::fs::Permissions::from_mode(0o666)).unwrap();
    let d = doctor();
    assert!(
        d.contains("jwt: PROBLEM: jwks:") && d.contains("writable by group or others"),
        "{d}"
    );
    assert!(d.contains("the JWT key files are NOT usable"), "{d}");
    let out = Command::new(mcpd_e2e::mcpd_bin())
        .args(["serve", "--config", cfg])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("writable by group or others"), "{e}");
    // A JWKS without one usable key (only a shared secret): named as such.
    std::fs::set_permissions(&f.jwks, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        &f.jwks,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#,
    )
    .unwrap();
    let d = doctor();
    assert!(d.contains("no usable signature key"), "{d}");
}
