//! A real MCP client: the official Python SDK (`mcp==2.3.0`, default "auto" mode, which probes
//! `server/discover` first and falls back to `initialize`) lists and calls tools over stdio and
//! over Streamable HTTP, on TCP and on mcpd's Unix socket (tests/python/sdk_client.py).
//!
//! `.ci/run` installs the SDK. Elsewhere, without it, the test says loudly that it skipped;
//! with `CI` set a missing SDK is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mcpd_e2e::http::HttpServer;
use mcpd_e2e::mcpd_bin;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sdk_client.py")
}

fn root() -> (tempfile::TempDir, String) {
    let top = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(top.path()).unwrap();
    std::fs::write(root.join("hello.txt"), "hello from mcpd\n").unwrap();
    (top, root.to_str().unwrap().to_string())
}

fn run(py: &str, args: &[&str]) {
    let out = Command::new(py).arg(script()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok ("),
        "python SDK client failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_sdk_over_stdio_both_eras() {
    let Some(py) = mcpd_e2e::python_sdk() else {
        return;
    };
    let (_top, root) = root();
    // auto: discover succeeds, so the SDK speaks the stateless 2026-07-28 era; legacy: initialize.
    for mode in ["auto", "legacy"] {
        run(&py, &["stdio", mcpd_bin().to_str().unwrap(), &root, mode]);
    }
}

#[test]
fn python_sdk_over_http_both_eras() {
    let Some(py) = mcpd_e2e::python_sdk() else {
        return;
    };
    let (_top, root) = root();
    let srv = HttpServer::start(&["--allow-read", &root]);
    let url = format!("http://{}/mcp", srv.addr);
    run(&py, &["http", &url, &root, "auto"]);
    assert!(srv.stderr().contains("http stateless session open"));
    run(&py, &["http", &url, &root, "legacy"]);
    assert!(srv.stderr().contains("http session open session="));
}

/// The SDK over HTTPS (a CA it trusts) and over mTLS (a client certificate naming the client),
/// through its own Streamable HTTP transport on an httpx2 client with an ssl context.
#[test]
fn python_sdk_over_https_and_mtls() {
    let Some(py) = mcpd_e2e::python_sdk() else {
        return;
    };
    let (_top, root) = root();
    let dir = tempfile::tempdir().unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    let ca = mcpd_e2e::tls::Ca::new("sdk test CA");
    let (cert, key) = ca.server(1).write(&d, "server");
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let (cert, key, ca_file) = (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
        ca_file.to_str().unwrap().to_string(),
    );
    // HTTPS, no client certificate: every peer is the listener's client.
    let srv = HttpServer::start(&[
        "--allow-read",
        &root,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let url = format!("https://localhost:{}/mcp", srv.addr.port());
    for mode in ["auto", "legacy"] {
        run(&py, &["https", &url, &root, mode, &ca_file]);
    }
    drop(srv);
    // mTLS: the SDK's certificate names client `agent`, whose root is `root`.
    let (ccert, ckey) = ca
        .client("agent", Some("spiffe://mcpd.test/agent"), 2)
        .write(&d, "agent");
    let config = d.join("mcpd.toml");
    std::fs::write(
        &config,
        format!(
            "[stdio]\nclient = \"nobody\"\n[clients.nobody]\n[clients.agent]\nread = [\"{root}\"]\n[clients.agent.identity]\nx509_san_uri = [\"spiffe://mcpd.test/agent\"]\n[http]\nlisten = \"127.0.0.1:0\"\n[http.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca_file}\"\n"
        ),
    )
    .unwrap();
    let srv = HttpServer::start_with(&["--config", config.to_str().unwrap()], &[]);
    let url = format!("https://localhost:{}/mcp", srv.addr.port());
    let (ccert, ckey) = (ccert.to_str().unwrap(), ckey.to_str().unwrap());
    for mode in ["auto", "legacy"] {
        run(&py, &["https", &url, &root, mode, &ca_file, ccert, ckey]);
    }
}

/// The SDK's Streamable HTTP transport over mcpd's Unix socket (an httpx2 transport with
/// `uds=`): the peer's uid (this test's) names the client, in both eras.
#[test]
fn python_sdk_over_a_unix_socket() {
    let Some(py) = mcpd_e2e::python_sdk() else {
        return;
    };
    let (_top, root) = root();
    let dir = tempfile::tempdir().unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    // This process's uid: the owner of the directory it just made.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&d).unwrap());
    let config = d.join("mcpd.toml");
    std::fs::write(
        &config,
        format!(
            "[stdio]\nclient = \"nobody\"\n[clients.nobody]\n[clients.sdk]\nread = [\"{root}\"]\n[clients.sdk.identity]\nunix_uid = [{uid}]\n"
        ),
    )
    .unwrap();
    let sock = d.join("mcpd.sock");
    let audit = d.join("audit.jsonl");
    let err = d.join("stderr.log");
    let mut child = Command::new(mcpd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--unix")
        .arg(&sock)
        .arg("--audit-log")
        .arg(&audit)
        .env("MCPD_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let listening = mcpd_e2e::wait_until(std::time::Duration::from_secs(20), || {
        std::fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("listening on unix:")
    });
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
    if !listening {
        let _ = child.kill();
        panic!("mcpd did not listen: {}", stderr());
    }
    for mode in ["auto", "legacy"] {
        run(&py, &["unix", sock.to_str().unwrap(), &root, mode]);
    }
    let log = std::fs::read_to_string(&audit).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        stderr().contains("http stateless session open"),
        "{}",
        stderr()
    );
    assert!(
        stderr().contains("http session open session="),
        "{}",
        stderr()
    );
    assert!(
        log.lines().any(|l| l.contains("\"event\":\"auth.success\"")
            && l.contains("\"principal\":\"sdk\"")
            && l.contains("\"transport\":\"unix-http\"")),
        "{log}"
    );
}
