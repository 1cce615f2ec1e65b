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
    assert!(out.contains("call timeout 7 s"), "{out}");
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

use mcpd_e2e::require;

#[test]
fn doctor_reports_kernel_features() {
    let (code, out, _err) = mcpd(&["doctor"]);
    let abi_line = out.lines().find(|l| l.starts_with("landlock:")).unwrap();
    if !require(
        !abi_line.contains("NOT AVAILABLE"),
        "Landlock",
        "the kernel has none (checked only that doctor says so and fails)",
    ) {
        assert_eq!(code, 1);
        return;
    }
    assert_eq!(code, 0, "{out}");
    assert!(abi_line.starts_with("landlock: ABI "), "{out}");
    assert!(out.contains("seccomp: filters available"), "{out}");
    assert!(out.contains("user namespaces:"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("cgroups: ")), "{out}");
    // The namespaces a worker builds are tried for real, and the embedded default's view is
    // listed (the current directory read-only, plus the private parts).
    assert!(
        out.lines()
            .any(|l| l.starts_with("worker namespaces (") && l.ends_with("available (tried)")),
        "{out}"
    );
    assert!(out.contains("view of client local:"), "{out}");
    let cwd = std::fs::canonicalize(".").unwrap();
    assert!(
        out.contains(&format!("  {} (ro,nosuid,nodev,noexec", cwd.display())),
        "{out}"
    );
    assert!(out.contains("/proc of its own PID namespace"), "{out}");
    if rustix::process::geteuid().is_root() {
        assert!(out.contains("server.worker_uids = 60578-61183"), "{out}");
        assert!(
            out.contains("idmapped (its owner appears as the worker)"),
            "{out}"
        );
    }
    assert!(
        out.contains("verdict: workers can be fully confined"),
        "{out}"
    );
}

/// The same report for an unprivileged broker: the user namespace is part of what is tried.
/// Needs root to become another uid; with CI=true that is required, not skipped.
#[test]
fn doctor_as_an_unprivileged_broker_tries_user_namespaces() {
    use std::os::unix::process::CommandExt;
    if !require(
        rustix::process::geteuid().is_root(),
        "root",
        "running mcpd as another uid",
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(d.path(), Some(4242), Some(4242)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mcpd"))
        .args(["doctor"])
        .current_dir(d.path())
        .uid(4242)
        .gid(4242)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "worker namespaces (unprivileged broker): user, mount, PID, IPC, UTS, network: available (tried)"
        ),
        "{text}"
    );
    assert!(
        text.contains("the broker's uid 4242 inside the worker's user namespace"),
        "{text}"
    );
}

#[test]
fn check_config_shows_worker_uids_and_refuses_bad_ranges() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("mcpd.toml");
    let data = std::fs::canonicalize(d.path()).unwrap();
    let body = |range: &str| {
        format!(
            "[server]\nworker_uids = \"{range}\"\n[clients.a]\nread = [\"{0}\"]\n[clients.b]\nread = [\"{0}\"]\n",
            data.display()
        )
    };
    std::fs::write(&cfg, body("70000-70009")).unwrap();
    let (code, out, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("worker uids 70000-70009"), "{out}");
    let uid_of = |c: &str| -> u32 {
        let l = out
            .lines()
            .find(|l| l.starts_with(&format!("client {c}: (worker uid/gid ")))
            .unwrap_or_else(|| panic!("{out}"));
        l.split("uid/gid ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (a, b) = (uid_of("a"), uid_of("b"));
    assert!(
        (70000..=70009).contains(&a) && (70000..=70009).contains(&b),
        "{out}"
    );
    assert_ne!(a, b, "two tenants never share a uid");
    for bad in ["0-10", "65000-65600", "70000-70001", "5-3", "x-y"] {
        std::fs::write(&cfg, body(bad)).unwrap();
        let (code, _out, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("server.worker_uids"), "{bad}: {err}");
    }
}

/// `mcpd` with `MCPD_CONFIG` set (or removed) and stdin empty.
fn mcpd_env(args: &[&str], config: Option<&std::path::Path>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcpd"));
    cmd.args(args).stdin(std::process::Stdio::null());
    match config {
        Some(c) => cmd.env("MCPD_CONFIG", c),
        None => cmd.env_remove("MCPD_CONFIG"),
    };
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_default_configuration_file_short_flag_and_no_config() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[clients.local]\nread = [\"{}\"]\n", d.path().display()),
    )
    .unwrap();
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, "[clients.local]\nread = 7\n").unwrap();
    // The default file (here through MCPD_CONFIG) is what serve, check-config and doctor read.
    let (code, _, err) = mcpd_env(&["serve", "--stdio"], Some(&bad));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml:2:"), "{err}");
    let (code, out, _) = mcpd_env(&["check-config"], Some(&good));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("client local:"), "{out}");
    let (code, out, _) = mcpd_env(&["doctor"], Some(&good));
    assert!(
        out.contains(&format!("{} (ro", d.path().display())),
        "{code} {out}"
    );
    // --no-config: the embedded default, whatever the default file says.
    let (code, _, err) = mcpd_env(&["serve", "--stdio", "--no-config"], Some(&bad));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("bad.toml"), "{err}");
    // A configuration named with -c wins over the default.
    let (code, _, err) = mcpd_env(
        &["serve", "--stdio", "-c", good.to_str().unwrap()],
        Some(&bad),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = mcpd_env(&["check-config", "-c", good.to_str().unwrap()], Some(&bad));
    assert_eq!(code, 0, "{out}");
    // A default that is named but missing is an error, not a silent fallback.
    let (code, _, err) = mcpd_env(&["serve", "--stdio"], Some(&d.path().join("typo.toml")));
    assert_eq!(code, 2);
    assert!(err.contains("typo.toml"), "{err}");
    // Without any: check-config says what to do (on a host without /etc/mcpd/mcpd.toml).
    if !std::path::Path::new("/etc/mcpd/mcpd.toml").exists() {
        let (code, _, err) = mcpd_env(&["check-config"], None);
        assert_eq!(code, 2);
        assert!(
            err.contains("--config FILE") && err.contains("/etc/mcpd/mcpd.toml does not exist"),
            "{err}"
        );
    }
    let (_, help, _) = mcpd_env(&["serve", "--help"], None);
    assert!(
        help.contains("/etc/mcpd/mcpd.toml") && help.contains("-c, --config"),
        "{help}"
    );
}

#[test]
fn json_log_lines_are_one_object_each() {
    let d = tempfile::tempdir().unwrap();
    let (code, _, err) = mcpd_env(
        &[
            "serve",
            "--stdio",
            "--no-config",
            "--allow-read",
            d.path().to_str().unwrap(),
            "--log-format",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    let (code, _, err) = mcpd_env(&["serve", "--log-format", "xml"], None);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'xml'"), "{err}");
}

#[test]
fn listener_address_errors_name_the_address_and_the_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = mcpd_env(&["serve", "--no-config", "--http", &addr], None);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!("HTTP listener {addr}: Address already in use"))
            && err.contains("another process listens there"),
        "{err}"
    );
    let (code, _, err) = mcpd_env(&["serve", "--no-config", "--http", "example.org:80"], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("host names other than localhost are not resolved"),
        "{err}"
    );
    let (code, _, err) = mcpd_env(&["serve", "--no-config", "--http", "localhost:http"], None);
    assert_eq!(code, 2);
    assert!(err.contains("'http' is not a port number"), "{err}");
}

/// Every commented sample value of a number or a boolean in packaging/mcpd.toml is the real
/// default: setting it changes nothing `check-config` prints, while another value does (so the
/// key is one check-config shows; the few it does not show are listed).
#[test]
fn the_shipped_samples_are_the_real_defaults() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/mcpd.toml"
    ))
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let logdir = d.path().join("log");
    std::fs::create_dir(&logdir).unwrap();
    // The sections checked here are CHECKED_SECTIONS in broker/src/commands/config_manpage.rs:
    // mcpd.toml(5) calls their commented numbers and booleans defaults. Keep the two alike.
    let base = |section: &str, line: &str| -> Option<String> {
        let client = "[clients.c]\nread = [\"/usr/share\"]\n";
        Some(match section {
            "server" => format!("[server]\n{line}\n{client}"),
            s if s.ends_with(".limits") => format!("{client}[clients.c.limits]\n{line}\n"),
            "http" => {
                format!("{client}[http]\nlisten = \"127.0.0.1:8080\"\nclient = \"c\"\n{line}\n")
            }
            "audit" => format!(
                "{client}[audit]\npath = \"{}/a.jsonl\"\n{line}\n",
                logdir.display()
            ),
            "unix" => format!(
                "{client}[unix]\npath = \"{}/s.sock\"\n{line}\n",
                logdir.display()
            ),
            "metrics" => format!("{client}[metrics]\nlisten = \"127.0.0.1:9464\"\n{line}\n"),
            "dbus" => format!("{client}[dbus]\nbus = \"session\"\n{line}\n"),
            "auth.jwt" => format!(
                "{client}[auth.jwt]\nissuer = \"https://idp.test\"\naudience = \"https://mcp.test/mcp\"\njwks = \"/etc/hostname\"\n{line}\n"
            ),
            _ => return None,
        })
    };
    let check = |cfg: &str| {
        let f = d.path().join("t.toml");
        std::fs::write(&f, cfg).unwrap();
        let (code, out, err) = mcpd(&["check-config", "--config", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{cfg}\n{out}{err}");
        out
    };
    // Keys check-config does not print (their defaults are documented beside them).
    const NOT_SHOWN: &[&str] = &["batch_interval_ms", "checkpoint_every", "checkpoint_secs"];
    let mut section = String::new();
    let mut checked = 0;
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if !line.starts_with('#') {
            continue;
        }
        let Some((key, rest)) = l.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let value = rest.split('#').next().unwrap().trim();
        let other = match value {
            "true" => "false".to_string(),
            "false" => "true".to_string(),
            v if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                (v.parse::<u64>().unwrap() / 2 + 1).to_string()
            }
            _ => continue,
        };
        if key.contains(' ') || key.is_empty() {
            continue;
        }
        let Some(default) = base(&section, "") else {
            continue;
        };
        let default = check(&default);
        let sample = check(&base(&section, &format!("{key} = {value}")).unwrap());
        assert_eq!(
            sample, default,
            "[{section}] {key} = {value}: the sample is not the default"
        );
        if !NOT_SHOWN.contains(&key) {
            let changed = check(&base(&section, &format!("{key} = {other}")).unwrap());
            assert_ne!(
                changed, default,
                "[{section}] {key}: check-config does not show it"
            );
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} samples checked");
}

#[test]
fn the_shipped_configuration_passes_once_its_directories_exist() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/mcpd.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    if !std::path::Path::new("/var/log/mcpd").exists() {
        let (code, _, err) = mcpd(&["check-config", "--config", shipped]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("audit directory '/var/log/mcpd' does not exist")
                && err.contains("install -d -m 0750 /var/log/mcpd"),
            "{err}"
        );
    }
    // With the package's directories and key in place (here: elsewhere; the key made as the
    // package's postinst makes it).
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("audit.key");
    let (code, _, err) = mcpd(&[
        "audit",
        "keygen",
        "--private",
        key.to_str().unwrap(),
        "--public",
        d.path().join("audit.pub").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let cfg = d.path().join("mcpd.toml");
    std::fs::write(
        &cfg,
        text.replace("/var/log/mcpd", d.path().to_str().unwrap())
            .replace("/etc/mcpd/audit.key", key.to_str().unwrap()),
    )
    .unwrap();
    let (code, out, err) = mcpd(&["check-config", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("memory 2 GiB") && out.contains("cpu unlimited"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("configuration OK"), "{out}");
    // The package signs its audit log: no warning about a missing checkpoint key.
    assert!(!out.contains("checkpoint_key is not set"), "{out}");
    assert!(out.contains(&format!("key {}", key.display())), "{out}");
}

#[test]
fn check_config_json_is_the_effective_policy() {
    let d = tempfile::tempdir().unwrap();
    let data = std::fs::canonicalize(d.path()).unwrap();
    let cfg = d.path().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clients.alice]\nread = [\"{}\"]\ntools = [\"read_text_file\"]\n[clients.alice.limits]\nmemory_bytes = 1073741824\ncalls_per_minute = 30\n",
            data.display()
        ),
    )
    .unwrap();
    let (code, out, err) = mcpd(&["check-config", "--json", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v["clients"]["alice"];
    assert_eq!(a["read"][0], data.display().to_string());
    assert_eq!(a["tools"][0], "read_text_file");
    assert_eq!(a["limits"]["memory_bytes"], 1_073_741_824u64);
    assert_eq!(a["limits"]["calls_per_minute"], 30);
    assert_eq!(
        a["limits"]["cpu_seconds"],
        serde_json::Value::Null,
        "unlimited"
    );
    assert_eq!(v["server"]["max_message_bytes"], 4_194_304u64);
    assert_eq!(v["audit"], serde_json::Value::Null);
    assert_eq!(
        v["metrics"],
        serde_json::json!({"listen": null, "allow_non_loopback": false}),
        "off by default"
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[metrics]\nlisten = \"unix:/run/mcpd/metrics.sock\"\n");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = mcpd(&["check-config", "--json", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["metrics"]["listen"], "unix:/run/mcpd/metrics.sock");
}
