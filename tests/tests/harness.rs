//! The test harness's own promise: a test whose prerequisite is missing never passes silently.
//! This binary runs itself again (`current_exe`, one helper test selected) under each
//! combination of `CI` and `MCPD_ALLOW_SKIP`, and checks the outcome and the skip log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// Only does something when run as the child of the test below.
#[test]
fn child_with_a_missing_prerequisite() {
    if std::env::var_os("MCPD_HARNESS_CHILD").is_none() {
        return;
    }
    if !mcpd_e2e::require(false, "the frobnicator", "apt install frobnicator") {
        return;
    }
    unreachable!("require(false) returned true");
}

fn child(ci: Option<&str>, allow: Option<&str>, log: &std::path::Path) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_with_a_missing_prerequisite",
        "--nocapture",
    ])
    .env("MCPD_HARNESS_CHILD", "1")
    .env("MCPD_SKIP_LOG", log)
    .env_remove("CI")
    .env_remove("MCPD_ALLOW_SKIP");
    if let Some(v) = ci {
        cmd.env("CI", v);
    }
    if let Some(v) = allow {
        cmd.env("MCPD_ALLOW_SKIP", v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_missing_prerequisite_fails_unless_skipping_is_allowed_and_never_under_ci() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");
    // Neither: the test fails and says how to install or how to skip.
    let (ok, text) = child(None, None, &log);
    assert!(!ok, "{text}");
    assert!(
        text.contains("the frobnicator unavailable: apt install frobnicator"),
        "{text}"
    );
    assert!(
        text.contains("bash tests/setup.sh") && text.contains("MCPD_ALLOW_SKIP=1"),
        "{text}"
    );
    assert!(!log.exists(), "nothing skipped yet");
    // Skipping allowed: it passes, loudly, and the skip is logged for the summary.
    let (ok, text) = child(None, Some("1"), &log);
    assert!(ok, "{text}");
    assert!(
        text.contains("SKIPPED: child_with_a_missing_prerequisite"),
        "{text}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged,
        "child_with_a_missing_prerequisite (the frobnicator)\n"
    );
    // Another value is not an opt-in.
    let (ok, _) = child(None, Some("yes"), &log);
    assert!(!ok);
    // Under CI nothing may skip, whatever MCPD_ALLOW_SKIP says.
    let (ok, text) = child(Some("true"), Some("1"), &log);
    assert!(!ok, "{text}");
    assert!(text.contains("is required when CI is set"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        logged,
        "no new skip"
    );
}
