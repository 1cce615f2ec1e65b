//! Every file tool through the real pipeline (broker → IPC → confined worker), inside an
//! allowed root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use mcpd_e2e::Server;
use serde_json::{json, Value};

struct Fx {
    _t: tempfile::TempDir,
    root: PathBuf,
}

fn fx() -> Fx {
    let t = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(t.path()).unwrap().join("root");
    std::fs::create_dir_all(root.join("docs/deep")).unwrap();
    std::fs::write(root.join("a.txt"), "line1\nline2\nline3\nline4\nline5\n").unwrap();
    std::fs::write(
        root.join("docs/readme.md"),
        "# Title\nhello world\nHello again\n",
    )
    .unwrap();
    std::fs::write(root.join("docs/deep/notes.txt"), "deep hello\n").unwrap();
    // A 1x1 PNG.
    let png: [u8; 67] = [
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f,
        0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    std::fs::write(root.join("pixel.png"), png).unwrap();
    Fx { _t: t, root }
}

fn start(f: &Fx) -> Server {
    let mut s = Server::start(&["--allow-write", f.root.to_str().unwrap()]);
    s.initialize();
    s
}

fn path(f: &Fx, rel: &str) -> String {
    f.root.join(rel).to_str().unwrap().to_string()
}

fn ok_text(s: &mut Server, tool: &str, args: Value) -> String {
    let (t, err) = s.call_text(tool, args.clone());
    assert!(!err, "{tool} {args} failed: {t}");
    t
}

#[test]
fn read_tools() {
    let f = fx();
    let mut s = start(&f);
    assert_eq!(
        ok_text(&mut s, "read_text_file", json!({"path": path(&f, "a.txt")})),
        "line1\nline2\nline3\nline4\nline5\n"
    );
    let head = ok_text(
        &mut s,
        "read_text_file",
        json!({"path": path(&f, "a.txt"), "head": 2}),
    );
    assert_eq!(head.trim_end(), "line1\nline2");
    let tail = ok_text(
        &mut s,
        "read_text_file",
        json!({"path": path(&f, "a.txt"), "tail": 2}),
    );
    assert_eq!(tail.trim_end(), "line4\nline5");
    let both = s.request("tools/call", json!({"name": "read_text_file", "arguments": {"path": path(&f, "a.txt"), "head": 1, "tail": 1}}));
    assert!(
        both.get("error").is_some() || both["result"]["isError"] == json!(true),
        "head and tail together are refused: {both}"
    );

    let media = s.call("read_media_file", json!({"path": path(&f, "pixel.png")}));
    assert_eq!(media["content"][0]["type"], "image");
    assert_eq!(media["content"][0]["mimeType"], "image/png");
    assert!(media["content"][0]["data"]
        .as_str()
        .unwrap()
        .starts_with("iVBORw0KGgo"));

    let multi = ok_text(
        &mut s,
        "read_multiple_files",
        json!({"paths": [path(&f, "a.txt"), path(&f, "docs/readme.md"), path(&f, "missing.txt")]}),
    );
    assert!(
        multi.contains("line3") && multi.contains("hello world"),
        "{multi}"
    );
    assert!(
        multi.contains("missing.txt"),
        "per-file error inline: {multi}"
    );

    let info = ok_text(&mut s, "get_file_info", json!({"path": path(&f, "a.txt")}));
    assert!(info.contains("size: 30"), "{info}");
    assert!(info.to_lowercase().contains("isfile: true"), "{info}");

    let allowed = ok_text(&mut s, "list_allowed_directories", json!({}));
    assert!(allowed.contains(f.root.to_str().unwrap()), "{allowed}");
}

#[test]
fn listing_and_search_tools() {
    let f = fx();
    let mut s = start(&f);
    let ls = ok_text(
        &mut s,
        "list_directory",
        json!({"path": f.root.to_str().unwrap()}),
    );
    assert!(
        ls.contains("[FILE] a.txt") && ls.contains("[DIR] docs"),
        "{ls}"
    );
    let sized = ok_text(
        &mut s,
        "list_directory_with_sizes",
        json!({"path": f.root.to_str().unwrap(), "sortBy": "size"}),
    );
    assert!(sized.contains("a.txt") && sized.contains("docs"), "{sized}");
    let tree = ok_text(
        &mut s,
        "directory_tree",
        json!({"path": f.root.to_str().unwrap(), "excludePatterns": ["*.png"]}),
    );
    let tree: Value = serde_json::from_str(&tree)
        .unwrap_or_else(|e| panic!("directory_tree is JSON ({e}): {tree}"));
    let names: Vec<&str> = tree
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"docs") && names.contains(&"a.txt") && !names.contains(&"pixel.png"),
        "{names:?}"
    );
    let found = ok_text(
        &mut s,
        "search_files",
        json!({"path": f.root.to_str().unwrap(), "pattern": "**/*.txt"}),
    );
    assert!(
        found.contains("notes.txt") && found.contains("a.txt"),
        "{found}"
    );
    assert!(!found.contains("readme.md"));
    let grep = ok_text(
        &mut s,
        "grep",
        json!({"path": f.root.to_str().unwrap(), "pattern": "hello"}),
    );
    assert!(
        grep.contains("readme.md:2") && grep.contains("notes.txt:1"),
        "{grep}"
    );
}

#[test]
fn write_tools() {
    let f = fx();
    let mut s = start(&f);
    ok_text(
        &mut s,
        "write_file",
        json!({"path": path(&f, "new.txt"), "content": "fresh\n"}),
    );
    assert_eq!(
        std::fs::read_to_string(f.root.join("new.txt")).unwrap(),
        "fresh\n"
    );

    let dry = ok_text(
        &mut s,
        "edit_file",
        json!({"path": path(&f, "new.txt"), "edits": [{"oldText": "fresh", "newText": "edited"}], "dryRun": true}),
    );
    assert!(dry.contains("-fresh") && dry.contains("+edited"), "{dry}");
    assert_eq!(
        std::fs::read_to_string(f.root.join("new.txt")).unwrap(),
        "fresh\n",
        "dryRun changes nothing"
    );
    ok_text(
        &mut s,
        "edit_file",
        json!({"path": path(&f, "new.txt"), "edits": [{"oldText": "fresh", "newText": "edited"}]}),
    );
    assert_eq!(
        std::fs::read_to_string(f.root.join("new.txt")).unwrap(),
        "edited\n"
    );
    let (t, err) = s.call_text(
        "edit_file",
        json!({"path": path(&f, "new.txt"), "edits": [{"oldText": "not there", "newText": "x"}]}),
    );
    assert!(err, "a missing oldText is an error: {t}");

    ok_text(
        &mut s,
        "create_directory",
        json!({"path": path(&f, "x/y/z")}),
    );
    assert!(f.root.join("x/y/z").is_dir());
    ok_text(
        &mut s,
        "create_directory",
        json!({"path": path(&f, "x/y/z")}),
    );

    ok_text(
        &mut s,
        "move_file",
        json!({"source": path(&f, "new.txt"), "destination": path(&f, "x/moved.txt")}),
    );
    assert!(!f.root.join("new.txt").exists() && f.root.join("x/moved.txt").exists());
    let (_, err) = s.call_text(
        "move_file",
        json!({"source": path(&f, "a.txt"), "destination": path(&f, "x/moved.txt")}),
    );
    assert!(err, "move onto an existing destination is refused");
    assert_eq!(
        std::fs::read_to_string(f.root.join("x/moved.txt")).unwrap(),
        "edited\n"
    );

    ok_text(
        &mut s,
        "delete_file",
        json!({"path": path(&f, "x/moved.txt")}),
    );
    assert!(!f.root.join("x/moved.txt").exists());
}

#[test]
fn a_write_into_a_read_only_root_says_so() {
    let f = fx();
    let t = tempfile::tempdir().unwrap();
    let outside = std::fs::canonicalize(t.path()).unwrap();
    // A read root and a write root elsewhere: the write tools exist, and the read root says
    // it is read-only (the client lists its roots itself), a path elsewhere says nothing.
    let mut s = Server::start(&[
        "--allow-read",
        f.root.to_str().unwrap(),
        "--allow-write",
        outside.to_str().unwrap(),
    ]);
    s.initialize();
    let (t, err) = s.call_text(
        "write_file",
        json!({"path": path(&f, "new.txt"), "content": "x"}),
    );
    assert!(err);
    assert_eq!(
        t,
        "Access denied - read-only directory: this client may read here but not write"
    );
    assert!(!f.root.join("new.txt").exists());
    let (t, err) = s.call_text(
        "write_file",
        json!({"path": "/etc/mcpd-nope", "content": "x"}),
    );
    assert!(err);
    assert_eq!(t, "Access denied - path outside allowed directories");
    let written = outside.join("ok.txt");
    let (t, err) = s.call_text("write_file", json!({"path": written, "content": "x"}));
    assert!(!err, "{t}");
}
