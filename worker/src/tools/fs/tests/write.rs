//! Tests of the write and edit tools: create, overwrite, edits and diffs, moves, deletes.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::tools::fs::edit::{apply_edits, fenced_diff, unified_diff, Edit};

#[test]
fn write_file_create_overwrite_and_refusals() {
    let f = fx();
    let p = f.p("sub/new.txt");
    assert_eq!(
        f.ok("write_file", json!({"path": p, "content": "one"})),
        format!("Successfully wrote to {p}")
    );
    f.ok("write_file", json!({"path": p, "content": "two"}));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
    let ro = format!("{}/new.txt", f.ro);
    assert_eq!(
        f.err("write_file", json!({"path": ro, "content": "x"})),
        format!("Access denied - {ro} is in a read-only directory")
    );
    assert!(!std::path::Path::new(&ro).exists());
    // Missing parent directory.
    assert!(f
        .err(
            "write_file",
            json!({"path": f.p("nodir/x.txt"), "content": "x"})
        )
        .starts_with("No such file or directory"));
    // A final-component symlink pointing out is not followed.
    symlink(format!("{}/outside/secret.txt", f.base), f.p("out-link")).unwrap();
    assert_eq!(
        f.err(
            "write_file",
            json!({"path": f.p("out-link"), "content": "pwned"})
        ),
        paths::OUTSIDE_ALLOWED
    );
    assert_eq!(
        std::fs::read_to_string(format!("{}/outside/secret.txt", f.base)).unwrap(),
        "secret\n"
    );
}

#[test]
fn edit_file_exact_flexible_and_dry_run() {
    let f = fx();
    let p = f.p("code.py");
    std::fs::write(&p, "def f():\n    x = 1\n    return x\n").unwrap();
    let out = f.ok(
        "edit_file",
        json!({"path": p, "edits": [{"oldText": "x = 1", "newText": "x = 2"}], "dryRun": true}),
    );
    let expected = format!(
        "```diff\nIndex: {p}\n===================================================================\n--- {p}\toriginal\n+++ {p}\tmodified\n@@ -1,3 +1,3 @@\n def f():\n-    x = 1\n+    x = 2\n     return x\n```\n\n"
    );
    assert_eq!(out, expected);
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "def f():\n    x = 1\n    return x\n",
        "dryRun leaves the file unchanged"
    );
    let out2 = f.ok(
        "edit_file",
        json!({"path": p, "edits": [{"oldText": "x = 1", "newText": "x = 2"}]}),
    );
    assert_eq!(out2, expected);
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "def f():\n    x = 2\n    return x\n"
    );
    // Whitespace-flexible: indentation differs in oldText.
    f.ok(
        "edit_file",
        json!({"path": p, "edits": [{"oldText": "x = 2\nreturn x", "newText": "y = 3\n  return y"}]}),
    );
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "def f():\n    y = 3\n  return y\n"
    );
    let e = f.err(
        "edit_file",
        json!({"path": p, "edits": [{"oldText": "nope", "newText": "x"}]}),
    );
    assert_eq!(e, "Could not find exact match for edit:\nnope");
    // Read-only root.
    let ro = format!("{}/ro.txt", f.ro);
    assert!(f
        .err(
            "edit_file",
            json!({"path": ro, "edits": [], "dryRun": true})
        )
        .contains("read-only"));
}

#[test]
fn unified_diff_format_details() {
    // No trailing newline on either side.
    let d = unified_diff("a\nb", "a\nc", "f");
    assert_eq!(
        d,
        "Index: f\n===================================================================\n--- f\toriginal\n+++ f\tmodified\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"
    );
    // Insertion into an empty file: zero-length range quirk.
    let d = unified_diff("", "x\n", "f");
    assert!(d.ends_with("@@ -0,0 +1,1 @@\n+x\n"), "{d}");
    // Unchanged: headers only.
    assert!(unified_diff("a\n", "a\n", "f").ends_with("+++ f\tmodified\n"));
    // Far-apart changes make two hunks with 4 lines of context.
    let old: String = (0..30).map(|i| format!("l{i}\n")).collect();
    let new = old
        .replace("l2\n", "two\n")
        .replace("l25\n", "twenty-five\n");
    let d = unified_diff(&old, &new, "f");
    assert_eq!(d.matches("@@ -").count(), 2, "{d}");
    assert!(d.contains("@@ -1,7 +1,7 @@"), "{d}");
    // Fences grow past backticks in the diff.
    assert!(fenced_diff("```x\n").starts_with("````diff\n"));
}

#[test]
fn apply_edits_matches_reference_rules() {
    let c = "  a\n  b\n";
    assert_eq!(
        apply_edits(
            c,
            &[Edit {
                old_text: "a\nb".into(),
                new_text: "x\n    y".into()
            }]
        )
        .unwrap(),
        "  x\n    y\n"
    );
    assert_eq!(
        apply_edits(
            "a a",
            &[Edit {
                old_text: "a".into(),
                new_text: "$&b".into()
            }]
        )
        .unwrap(),
        "$&b a"
    );
}

#[test]
fn create_directory_and_list() {
    let f = fx();
    let p = f.p("x/y/z");
    assert_eq!(
        f.ok("create_directory", json!({"path": p})),
        format!("Successfully created directory {p}")
    );
    f.ok("create_directory", json!({"path": p}));
    assert!(std::path::Path::new(&p).is_dir());
    assert!(f
        .err("create_directory", json!({"path": format!("{}/d", f.ro)}))
        .contains("read-only"));
    let t = f.ok("list_directory", json!({"path": f.rw}));
    assert_eq!(t, "[FILE] a.txt\n[DIR] sub\n[DIR] x");
    assert_eq!(f.ok("list_directory", json!({"path": p})), "");
}

#[test]
fn move_file_rules() {
    let f = fx();
    let src = f.p("a.txt");
    let dst = f.p("sub/moved.txt");
    assert_eq!(
        f.ok("move_file", json!({"source": src, "destination": dst})),
        format!("Successfully moved {src} to {dst}")
    );
    assert_eq!(
        std::fs::read_to_string(&dst).unwrap(),
        "alpha\nbeta\ngamma\n"
    );
    // Existing destination refused, both files untouched.
    let other = f.p("sub/b.md");
    assert_eq!(
        f.err("move_file", json!({"source": dst, "destination": other})),
        format!("Destination already exists: {other}")
    );
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "Hello World\nhello again\n"
    );
    assert!(std::path::Path::new(&dst).exists());
    // Out of scope destination, read-only source.
    let out = format!("{}/outside/moved.txt", f.base);
    assert_eq!(
        f.err("move_file", json!({"source": dst, "destination": out})),
        paths::OUTSIDE_ALLOWED
    );
    assert!(!std::path::Path::new(&out).exists());
    let ro = format!("{}/ro.txt", f.ro);
    assert!(f
        .err(
            "move_file",
            json!({"source": ro, "destination": f.p("r.txt")})
        )
        .contains("read-only"));
    assert!(f
        .err(
            "move_file",
            json!({"source": f.rw, "destination": f.p("r")})
        )
        .starts_with("Cannot move an allowed directory"));
    assert!(f
        .err(
            "move_file",
            json!({"source": f.p("nope"), "destination": f.p("r")})
        )
        .starts_with("No such file or directory"));
}

#[test]
fn delete_file_rules() {
    let f = fx();
    std::fs::create_dir(f.p("empty")).unwrap();
    symlink(format!("{}/outside/secret.txt", f.base), f.p("link")).unwrap();
    for p in ["a.txt", "empty", "link"] {
        let p = f.p(p);
        assert_eq!(
            f.ok("delete_file", json!({"path": p})),
            format!("Successfully deleted {p}")
        );
        assert!(std::fs::symlink_metadata(&p).is_err());
    }
    // The symlink target survived.
    assert!(std::path::Path::new(&format!("{}/outside/secret.txt", f.base)).exists());
    assert!(f
        .err("delete_file", json!({"path": f.p("sub")}))
        .starts_with("Directory not empty"));
    assert!(f
        .err("delete_file", json!({"path": f.rw}))
        .starts_with("Cannot delete an allowed directory"));
    assert!(f
        .err("delete_file", json!({"path": format!("{}/ro.txt", f.ro)}))
        .contains("read-only"));
    assert!(f
        .err("delete_file", json!({"path": f.p("sub/..")}))
        .starts_with("Invalid path"));
    assert!(f
        .err("delete_file", json!({"path": f.p("missing")}))
        .starts_with("No such file or directory"));
}

/// Found by the `worker_edit` fuzz target: with lone `\r` line ends, `similar` groups ops whose
/// ranges are not in order, and the hunk header's `end - start` underflowed (a panic in debug
/// builds, a wrapped length in release). The header now spans the group's smallest start to
/// its largest end.
#[test]
fn unified_diff_of_carriage_return_lines_does_not_underflow() {
    let content = format!("f{}{}", "\0".repeat(21), "\r".repeat(10));
    let new_text = format!(
        "{}{}n ma4in({}ftnlaz\u{4}{},qqq{}{}{}{}",
        "\r".repeat(10),
        "\0".repeat(13),
        "\r".repeat(91),
        "q".repeat(16),
        "\r".repeat(13),
        "k".repeat(20),
        "\r".repeat(30),
        "\0".repeat(10)
    );
    let edits = [
        Edit {
            old_text: String::new(),
            new_text: String::new(),
        },
        Edit {
            old_text: String::new(),
            new_text,
        },
    ];
    let out = apply_edits(&content, &edits).unwrap();
    let d = unified_diff(&content, &out, "f");
    for header in d.lines().filter(|l| l.starts_with("@@ ")) {
        let nums: Vec<u64> = header
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(nums.len(), 4, "{header}");
        assert!(nums.iter().all(|&n| n <= 1000), "{header}");
    }
}
