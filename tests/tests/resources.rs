//! The client's allowed files as `file://` resources, through the real broker and worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::symlink;

use mcpd_e2e::Server;
use serde_json::json;

#[test]
fn allowed_files_are_resources_and_nothing_else_is() {
    let top = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(top.path()).unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("sub dir")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(root.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(root.join("sub dir/b.md"), "# beta\n").unwrap();
    std::fs::write(root.join("pic.png"), [0x89u8, b'P', b'N', b'G', 0, 1, 2]).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret\n").unwrap();
    symlink(outside.join("secret.txt"), root.join("link-out")).unwrap();
    let mut srv = Server::start(&["--allow-read", root.to_str().unwrap()]);
    let init = srv.initialize();
    assert_eq!(init["capabilities"]["resources"]["subscribe"], true);
    let list = srv.result("resources/list", json!({}));
    let uris: Vec<String> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap().to_string())
        .collect();
    let r = root.to_str().unwrap();
    assert!(uris.contains(&format!("file://{r}/a.txt")), "{uris:?}");
    assert!(
        uris.contains(&format!("file://{r}/sub%20dir/b.md")),
        "{uris:?}"
    );
    assert!(uris.contains(&format!("file://{r}/pic.png")), "{uris:?}");
    assert!(
        !uris
            .iter()
            .any(|u| u.contains("secret") || u.contains("link-out")),
        "{uris:?}"
    );

    let text = srv.result(
        "resources/read",
        json!({"uri": format!("file://{r}/sub%20dir/b.md")}),
    );
    assert_eq!(text["contents"][0]["text"], "# beta\n");
    let bin = srv.result(
        "resources/read",
        json!({"uri": format!("file://{r}/pic.png")}),
    );
    assert_eq!(bin["contents"][0]["mimeType"], "image/png");
    assert_eq!(bin["contents"][0]["blob"], "iVBORwABAg==");

    // Outside (existing or not), through a symlink, or malformed: the same "not found".
    let o = outside.to_str().unwrap();
    for uri in [
        format!("file://{o}/secret.txt"),
        format!("file://{o}/missing.txt"),
        format!("file://{r}/link-out"),
        format!("file://{r}/../outside/secret.txt"),
        "file:///etc/passwd".to_string(),
    ] {
        let resp = srv.request("resources/read", json!({"uri": uri}));
        assert_eq!(resp["error"]["code"], -32602, "{uri}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Resource not found"),
            "{resp}"
        );
        assert_eq!(resp["error"]["data"]["uri"], uri);
        assert!(!resp.to_string().contains("secret\\n"));
    }
    // A text file whose JSON form would not fit one IPC frame (3 MiB of control characters
    // are 18 MiB as JSON) is refused; the worker lives on.
    std::fs::write(root.join("controls.txt"), vec![1u8; 3 << 20]).unwrap();
    let workers = srv.worker_pids();
    let resp = srv.request(
        "resources/read",
        json!({"uri": format!("file://{r}/controls.txt")}),
    );
    assert_eq!(resp["error"]["code"], -32602, "{resp}");
    let msg = resp["error"]["message"].as_str().unwrap();
    let size: u64 = msg
        .strip_prefix("Resource too large: its encoding (")
        .and_then(|m| m.strip_suffix(" bytes) exceeds what one result can carry"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{resp}"));
    // 6 bytes per character, plus the JSON object around it with the URI.
    let uri_len = format!("file://{r}/controls.txt").len() as u64;
    assert_eq!(size, 6 * (3 << 20) + uri_len + 44, "{resp}");
    assert_eq!(srv.worker_pids(), workers);
    assert_eq!(
        srv.result(
            "resources/read",
            json!({"uri": format!("file://{r}/sub%20dir/b.md")}),
        )["contents"][0]["text"],
        "# beta\n"
    );
    let t = srv.result("resources/templates/list", json!({}));
    assert_eq!(t["resourceTemplates"][0]["uriTemplate"], "file://{+path}");
    assert_eq!(
        srv.result(
            "resources/subscribe",
            json!({"uri": format!("file://{r}/a.txt")})
        ),
        json!({})
    );
    assert_eq!(
        srv.result(
            "resources/unsubscribe",
            json!({"uri": format!("file://{r}/a.txt")})
        ),
        json!({})
    );
    assert_eq!(
        srv.result("prompts/list", json!({})),
        json!({"prompts": []})
    );
    let c = srv.result(
        "completion/complete",
        json!({"ref": {"type": "ref/prompt", "name": "none"}, "argument": {"name": "a", "value": "x"}}),
    );
    assert_eq!(c["completion"]["values"], json!([]));
    // Completion of the file template's path, beneath the roots only.
    let c = srv.result(
        "completion/complete",
        json!({"ref": {"type": "ref/resource", "uri": "file://{+path}"}, "argument": {"name": "path", "value": format!("{r}/s")}}),
    );
    assert_eq!(c["completion"]["values"], json!([format!("{r}/sub dir/")]));
    let c = srv.result(
        "completion/complete",
        json!({"ref": {"type": "ref/resource", "uri": "file://{+path}"}, "argument": {"name": "path", "value": format!("{o}/")}}),
    );
    assert_eq!(
        c["completion"]["values"],
        json!([]),
        "outside the roots: nothing"
    );
}

#[test]
fn a_subscribed_file_that_changes_is_announced() {
    let top = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(top.path()).unwrap();
    let file = root.join("watched.txt");
    std::fs::write(&file, "v1\n").unwrap();
    let mut srv = Server::start(&["--allow-read", root.to_str().unwrap()]);
    srv.initialize();
    let uri = format!("file://{}", file.to_str().unwrap());
    assert_eq!(
        srv.result("resources/subscribe", json!({"uri": uri})),
        json!({})
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::write(&file, "v2, longer\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = false;
    while std::time::Instant::now() < deadline && !seen {
        if let Some(m) = srv.recv_timeout(std::time::Duration::from_millis(200)) {
            seen = m["method"] == "notifications/resources/updated" && m["params"]["uri"] == uri;
        }
    }
    assert!(seen, "no notifications/resources/updated for {uri}");
    // After unsubscribing, changes are quiet.
    assert_eq!(
        srv.result("resources/unsubscribe", json!({"uri": uri})),
        json!({})
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    std::fs::write(&file, "v3\n").unwrap();
    let quiet_until = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    while std::time::Instant::now() < quiet_until {
        if let Some(m) = srv.recv_timeout(std::time::Duration::from_millis(200)) {
            assert_ne!(m["method"], "notifications/resources/updated", "{m}");
        }
    }
}
