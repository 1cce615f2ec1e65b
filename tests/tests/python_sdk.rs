//! A real MCP client: the official Python SDK (`mcp==2.3.0`, default "auto" mode, which probes
//! `server/discover` first and falls back to `initialize`) lists and calls tools over stdio and
//! over Streamable HTTP (tests/python/sdk_client.py).
//!
//! `.ci/run` installs the SDK. Elsewhere, without it, the test says loudly that it skipped;
//! with `CI` set a missing SDK is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mcpd_e2e::http::HttpServer;
use mcpd_e2e::mcpd_bin;

fn python() -> Option<String> {
    let py = std::env::var("MCPD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import mcp, importlib.metadata as m; assert m.version('mcp') == '2.3.0', m.version('mcp')"])
        .status()
        .is_ok_and(|s| s.success());
    let why = format!("`{py}` cannot import it (.ci/run installs it: pip install mcp==2.3.0)");
    mcpd_e2e::require(ok, "the Python MCP SDK mcp==2.3.0", &why).then_some(py)
}

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
    let Some(py) = python() else { return };
    let (_top, root) = root();
    // auto: discover succeeds, so the SDK speaks the stateless 2026-07-28 era; legacy: initialize.
    for mode in ["auto", "legacy"] {
        run(&py, &["stdio", mcpd_bin().to_str().unwrap(), &root, mode]);
    }
}

#[test]
fn python_sdk_over_http_both_eras() {
    let Some(py) = python() else { return };
    let (_top, root) = root();
    let srv = HttpServer::start(&["--allow-read", &root]);
    let url = format!("http://{}/mcp", srv.addr);
    run(&py, &["http", &url, &root, "auto"]);
    assert!(srv.stderr().contains("http stateless session open"));
    run(&py, &["http", &url, &root, "legacy"]);
    assert!(srv.stderr().contains("http session open session="));
}
