//! The `mcpd` command line: check-config and doctor, run as real processes.
//! (Its presence also makes `cargo test --workspace` build the `mcpd` binary the end-to-end
//! tests in `tests/` start.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn mcpd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcpd"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_policy() {
    let d = tempfile::tempdir().unwrap();
    let data = std::fs::canonicalize(d.path()).unwrap();
    let cfg = d.path().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[stdio]\nclient = \"alice\"\n[clients.alice]\nroles = [\"r\"]\n[roles.r]\nread = [\"{}\"]\ntools = [\"read_text_file\"]\n[roles.r.limits]\ncall_timeout_secs = 7\n",
            data.display()
        ),
    )
    .unwrap();
    let (code, out, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("client alice:"), "{out}");
    assert!(out.contains(&format!("read   {}", data.display())), "{out}");
    assert!(out.contains("tools  read_text_file"), "{out}");
    assert!(out.contains("timeout=7s"), "{out}");
    assert!(out.contains("stdio client: alice"), "{out}");
    assert!(out.trim_end().ends_with("configuration OK"));
}

#[test]
fn check_config_errors_name_file_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[clients.a]\nread = [\"/\"]\nwrite = [\"/definitely/missing/dir\"]\n",
    )
    .unwrap();
    let (code, _out, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    let want = format!(
        "{}:3:10: a: cannot resolve '/definitely/missing/dir'",
        cfg.display()
    );
    assert!(err.starts_with(&want), "got {err:?}, want prefix {want:?}");

    std::fs::write(&cfg, "[clients.a]\nsudo = true\n").unwrap();
    let (code, _out, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(":2:8:") && err.contains("refused by design"),
        "{err}"
    );

    std::fs::write(&cfg, "[clients.a]\nread = [\"/\"\n").unwrap();
    let (code, _out, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.starts_with(&format!("{}:", cfg.display())), "{err}");
}

#[test]
fn global_write_is_loud() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("g.toml");
    std::fs::write(&cfg, "[clients.admin]\nglobal_write = true\n").unwrap();
    let (code, out, _err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("WARNING: client 'admin' has global_write"),
        "{out}"
    );
    assert!(out.contains("(GLOBAL WRITE)"));
}

#[test]
fn serve_refuses_a_bad_config_before_serving() {
    let (code, out, err) = mcpd(&[
        "serve",
        "--stdio",
        "--allow-read",
        "/definitely/missing/dir",
    ]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "nothing on the MCP stream");
    assert!(
        err.contains("configuration error") && err.contains("cannot resolve"),
        "{err}"
    );
}

#[test]
fn doctor_reports_kernel_features() {
    let (code, out, _err) = mcpd(&["doctor"]);
    let abi_line = out.lines().find(|l| l.starts_with("landlock:")).unwrap();
    if abi_line.contains("NOT AVAILABLE") {
        eprintln!("SKIPPED (partly): this kernel has no Landlock; doctor must say so and fail");
        assert_eq!(code, 1);
        return;
    }
    assert_eq!(code, 0, "{out}");
    assert!(abi_line.starts_with("landlock: ABI "), "{out}");
    assert!(out.contains("seccomp: filters available"), "{out}");
    assert!(out.contains("user namespaces:"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("cgroups: ")), "{out}");
    assert!(
        out.contains("verdict: workers can be fully confined"),
        "{out}"
    );
}
