//! Policy reload on SIGHUP: a valid configuration takes effect for the next request (decisions
//! and, through a fresh worker, the kernel sandbox) and clients hear `list_changed`; a broken
//! one changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mcpd_e2e::{signal, Server};
use serde_json::json;

#[test]
fn sighup_reloads_a_valid_policy_and_keeps_the_old_one_otherwise() {
    let top = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(top.path()).unwrap();
    let data = base.join("data");
    std::fs::create_dir(&data).unwrap();
    let cfg = base.join("mcpd.toml");
    let write_cfg = |grant: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[clients.local]\n{grant} = [\"{}\"]\n",
                data.to_str().unwrap()
            ),
        )
        .unwrap();
    };
    write_cfg("read");
    let mut s = Server::start(&["--config", cfg.to_str().unwrap()]);
    s.initialize();
    assert!(!s.tool_names().contains(&"write_file".to_string()));
    let target = data.join("new.txt");
    let before = s.request(
        "tools/call",
        json!({"name": "write_file", "arguments": {"path": target.to_str().unwrap(), "content": "x"}}),
    );
    assert_eq!(before["error"]["code"], -32602, "{before}");

    // A broken configuration: refused, nothing changes.
    std::fs::write(&cfg, "[clients.local\nread = 1").unwrap();
    signal(s.child.id() as i32, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.stderr().contains("policy reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!s.tool_names().contains(&"write_file".to_string()));

    // A valid one: write access now, announced, and enforced by a fresh worker.
    write_cfg("write");
    signal(s.child.id() as i32, libc::SIGHUP);
    let mut announced = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !announced {
        if let Some(m) = s.recv_timeout(Duration::from_millis(200)) {
            announced = m["method"] == "notifications/tools/list_changed";
        }
    }
    assert!(
        announced,
        "no notifications/tools/list_changed after the reload"
    );
    assert!(s.tool_names().contains(&"write_file".to_string()));
    let (t, err) = s.call_text(
        "write_file",
        json!({"path": target.to_str().unwrap(), "content": "written after reload"}),
    );
    assert!(!err, "{t}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "written after reload"
    );
    assert!(s.stderr().contains("policy reloaded (SIGHUP)"));
}
