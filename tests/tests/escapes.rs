//! Escape attempts through the whole pipeline (broker policy → worker openat2 → Landlock).
//! Every escape must fail with the same generic message, whether or not the target exists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use mcpd_e2e::Server;
use serde_json::json;

const DENIED: &str = "Access denied - path outside allowed directories";
/// A write beneath a root the client may only read (a root it lists itself).
const READ_ONLY: &str =
    "Access denied - read-only directory: this client may read here but not write";

struct Fixture {
    _top: tempfile::TempDir,
    root: PathBuf,
    ro: PathBuf,
    evil: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let top = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(top.path()).unwrap();
    let root = base.join("root");
    let ro = base.join("ro");
    let evil = base.join("root-evil");
    let outside = base.join("outside");
    for d in [&root, &ro, &evil, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(root.join("inside.txt"), "inside").unwrap();
    std::fs::write(ro.join("ro.txt"), "read only").unwrap();
    std::fs::write(evil.join("secret.txt"), "evil secret").unwrap();
    std::fs::write(outside.join("secret.txt"), "outside secret").unwrap();
    symlink(outside.join("secret.txt"), root.join("link-out")).unwrap();
    symlink(outside.join("missing.txt"), root.join("link-missing")).unwrap();
    symlink(&outside, root.join("dirlink-out")).unwrap();
    symlink("inside.txt", root.join("link-in")).unwrap();
    Fixture {
        _top: top,
        root,
        ro,
        evil,
        outside,
    }
}

fn start(f: &Fixture) -> Server {
    let mut s = Server::start(&[
        "--allow-write",
        f.root.to_str().unwrap(),
        "--allow-read",
        f.ro.to_str().unwrap(),
    ]);
    s.initialize();
    s
}

fn p(x: &Path) -> String {
    x.to_str().unwrap().to_string()
}

fn assert_denied(s: &mut Server, tool: &str, args: serde_json::Value) {
    let r = s.call(tool, args.clone());
    assert_eq!(
        r["isError"],
        json!(true),
        "{tool} {args} was not denied: {r}"
    );
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(DENIED) || text == READ_ONLY,
        "{tool} {args}: unexpected message {text:?}"
    );
    assert!(!text.contains("outside secret") && !text.contains("evil secret"));
}

#[test]
fn reads_inside_work_including_symlinks_within_the_root() {
    let f = fixture();
    let mut s = start(&f);
    assert_eq!(
        s.call_text(
            "read_text_file",
            json!({"path": p(&f.root.join("inside.txt"))})
        ),
        ("inside".into(), false)
    );
    assert_eq!(
        s.call_text(
            "read_text_file",
            json!({"path": p(&f.root.join("link-in"))})
        ),
        ("inside".into(), false)
    );
    assert_eq!(
        s.call_text("read_text_file", json!({"path": p(&f.ro.join("ro.txt"))})),
        ("read only".into(), false)
    );
    let (text, is_error) = s.call_text(
        "read_text_file",
        json!({"path": p(&f.root.join("sub/../inside.txt"))}),
    );
    assert!(is_error, "sub does not exist: not found, inside scope");
    assert!(
        !text.contains(DENIED),
        "an in-scope miss is not an access denial: {text}"
    );
}

#[test]
fn dot_dot_absolute_prefix_sibling_and_proc_escapes_fail_identically() {
    let f = fixture();
    let mut s = start(&f);
    let cases = [
        p(&f.root.join("../outside/secret.txt")),
        p(&f.root.join("../outside/does-not-exist.txt")),
        p(&f.outside.join("secret.txt")),
        p(&f.outside.join("nope.txt")),
        "/etc/passwd".to_string(),
        "/etc/definitely-not-here".to_string(),
        p(&f.evil.join("secret.txt")),
        p(&f.evil.join("missing.txt")),
        format!("/proc/self/root{}", p(&f.outside.join("secret.txt"))),
        format!("/proc/self/root{}", p(&f.root.join("inside.txt"))),
        "../outside/secret.txt".to_string(),
    ];
    for c in &cases {
        assert_denied(&mut s, "read_text_file", json!({"path": c}));
        assert_denied(&mut s, "get_file_info", json!({"path": c}));
        assert_denied(&mut s, "list_directory", json!({"path": c}));
    }
    // The answer for an existing and a missing target outside is byte-for-byte the same.
    let a = s.call(
        "read_text_file",
        json!({"path": p(&f.outside.join("secret.txt"))}),
    );
    let b = s.call(
        "read_text_file",
        json!({"path": p(&f.outside.join("nope.txt"))}),
    );
    assert_eq!(a, b);
}

#[test]
fn symlinks_pointing_out_fail_identically() {
    let f = fixture();
    let mut s = start(&f);
    for link in [
        "link-out",
        "link-missing",
        "dirlink-out/secret.txt",
        "dirlink-out/missing",
    ] {
        assert_denied(
            &mut s,
            "read_text_file",
            json!({"path": p(&f.root.join(link))}),
        );
    }
    let a = s.call(
        "read_text_file",
        json!({"path": p(&f.root.join("link-out"))}),
    );
    let b = s.call(
        "read_text_file",
        json!({"path": p(&f.root.join("link-missing"))}),
    );
    assert_eq!(
        a, b,
        "existence of a symlink target outside must not be observable"
    );
    assert_denied(
        &mut s,
        "write_file",
        json!({"path": p(&f.root.join("dirlink-out/new.txt")), "content": "x"}),
    );
    assert_denied(
        &mut s,
        "write_file",
        json!({"path": p(&f.root.join("link-out")), "content": "pwned"}),
    );
    assert_eq!(
        std::fs::read_to_string(f.outside.join("secret.txt")).unwrap(),
        "outside secret"
    );
    assert!(!f.outside.join("new.txt").exists());
    assert_denied(
        &mut s,
        "list_directory",
        json!({"path": p(&f.root.join("dirlink-out"))}),
    );
}

#[test]
fn directory_swapped_for_a_symlink_between_calls() {
    let f = fixture();
    let mut s = start(&f);
    let sub = f.root.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("secret.txt"), "inside sub").unwrap();
    assert_eq!(
        s.call_text(
            "read_text_file",
            json!({"path": p(&sub.join("secret.txt"))})
        ),
        ("inside sub".into(), false)
    );
    std::fs::remove_dir_all(&sub).unwrap();
    symlink(&f.outside, &sub).unwrap();
    assert_denied(
        &mut s,
        "read_text_file",
        json!({"path": p(&sub.join("secret.txt"))}),
    );
    assert_denied(
        &mut s,
        "write_file",
        json!({"path": p(&sub.join("secret.txt")), "content": "x"}),
    );
    assert_eq!(
        std::fs::read_to_string(f.outside.join("secret.txt")).unwrap(),
        "outside secret"
    );
}

#[test]
fn writes_are_refused_in_a_read_only_root_and_outside() {
    let f = fixture();
    let mut s = start(&f);
    for (tool, args) in [
        (
            "write_file",
            json!({"path": p(&f.ro.join("ro.txt")), "content": "x"}),
        ),
        (
            "write_file",
            json!({"path": p(&f.ro.join("new.txt")), "content": "x"}),
        ),
        ("create_directory", json!({"path": p(&f.ro.join("newdir"))})),
        (
            "edit_file",
            json!({"path": p(&f.ro.join("ro.txt")), "edits": [{"oldText": "read", "newText": "write"}]}),
        ),
        (
            "move_file",
            json!({"source": p(&f.ro.join("ro.txt")), "destination": p(&f.root.join("moved.txt"))}),
        ),
        (
            "move_file",
            json!({"source": p(&f.root.join("inside.txt")), "destination": p(&f.ro.join("moved.txt"))}),
        ),
        (
            "move_file",
            json!({"source": p(&f.root.join("inside.txt")), "destination": p(&f.outside.join("moved.txt"))}),
        ),
        ("delete_file", json!({"path": p(&f.ro.join("ro.txt"))})),
        (
            "write_file",
            json!({"path": p(&f.evil.join("x.txt")), "content": "x"}),
        ),
        (
            "write_file",
            json!({"path": p(&f.root.join("../outside/x.txt")), "content": "x"}),
        ),
    ] {
        assert_denied(&mut s, tool, args);
    }
    assert_eq!(
        std::fs::read_to_string(f.ro.join("ro.txt")).unwrap(),
        "read only"
    );
    assert!(!f.ro.join("new.txt").exists() && !f.ro.join("newdir").exists());
    assert!(f.root.join("inside.txt").exists());
    assert!(
        !f.outside.join("moved.txt").exists()
            && !f.outside.join("x.txt").exists()
            && !f.evil.join("x.txt").exists()
    );
}
