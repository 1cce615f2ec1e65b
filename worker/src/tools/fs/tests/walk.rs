//! Tests of listings, walks, searches and metadata.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::tools::fs::info::{iso_date, js_date_string};
use crate::tools::fs::list::format_size;

#[test]
fn list_directory_with_sizes_format() {
    let f = fx();
    std::fs::write(f.p("big.bin"), vec![0u8; 2048]).unwrap();
    let t = f.ok("list_directory_with_sizes", json!({"path": f.rw}));
    let expected = [
        format!("[FILE] {:<30} {:>10}", "a.txt", "17 B"),
        format!("[FILE] {:<30} {:>10}", "big.bin", "2.00 KB"),
        format!("[DIR] {:<30} ", "sub"),
        String::new(),
        "Total: 2 files, 1 directories".into(),
        "Combined size: 2.02 KB".into(),
    ]
    .join("\n");
    assert_eq!(t, expected);
    let t = f.ok(
        "list_directory_with_sizes",
        json!({"path": f.rw, "sortBy": "size"}),
    );
    // Directories have a size too (as with the reference's stat), and sort by it.
    let order: Vec<_> = t
        .lines()
        .take(3)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(order, ["sub", "big.bin", "a.txt"], "{t}");
    assert_eq!(format_size(0), "0 B");
    assert_eq!(format_size(1023), "1023 B");
    assert_eq!(format_size(1024), "1.00 KB");
    assert_eq!(format_size(1536 * 1024), "1.50 MB");
}

#[test]
fn listing_truncation_is_marked() {
    let f = fx_with(ToolLimits {
        max_entries: 2,
        ..Default::default()
    });
    for i in 0..5 {
        std::fs::write(f.p(&format!("f{i}.txt")), "x").unwrap();
    }
    let t = f.ok("list_directory", json!({"path": f.rw}));
    assert_eq!(t.lines().count(), 3);
    assert!(
        t.ends_with("[truncated: showing the first 2 entries]"),
        "{t}"
    );
    let t = f.ok("list_directory_with_sizes", json!({"path": f.rw}));
    assert!(t.contains("[truncated"), "{t}");
    let t = f.ok("directory_tree", json!({"path": f.rw}));
    assert!(t.contains("[truncated"), "{t}");
    let t = f.ok("search_files", json!({"path": f.rw, "pattern": "*.txt"}));
    assert!(t.contains("[truncated"), "{t}");
    assert_eq!(t.lines().filter(|l| l.ends_with(".txt")).count(), 2);
}

#[test]
fn directory_tree_json_excludes_and_symlinks() {
    let f = fx();
    std::fs::create_dir(f.p("sub/empty")).unwrap();
    std::fs::create_dir(f.p("node_modules")).unwrap();
    std::fs::write(f.p("node_modules/m.js"), "").unwrap();
    symlink(format!("{}/outside", f.base), f.p("out")).unwrap();
    let t = f.ok(
        "directory_tree",
        json!({"path": f.rw, "excludePatterns": ["node_modules", "*.txt"]}),
    );
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(
        v,
        json!([
            {"name": "out", "type": "file"},
            {"name": "sub", "type": "directory", "children": [
                {"name": "b.md", "type": "file"},
                {"name": "empty", "type": "directory", "children": []},
            ]},
        ])
    );
    assert!(
        t.starts_with("[\n  {\n    \"name\": \"out\",\n    \"type\": \"file\"\n  },"),
        "{t}"
    );
    assert!(!t.contains("secret"));
}

#[test]
fn search_files_globs() {
    let f = fx();
    std::fs::create_dir(f.p("sub/deep")).unwrap();
    std::fs::write(f.p("sub/deep/c.txt"), "").unwrap();
    std::fs::write(f.p(".hidden.txt"), "").unwrap();
    symlink(format!("{}/outside", f.base), f.p("out")).unwrap();
    let t = f.ok("search_files", json!({"path": f.rw, "pattern": "*.txt"}));
    assert_eq!(t, format!("{}\n{}", f.p(".hidden.txt"), f.p("a.txt")));
    let t = f.ok("search_files", json!({"path": f.rw, "pattern": "**/*.txt"}));
    assert_eq!(
        t,
        [f.p(".hidden.txt"), f.p("a.txt"), f.p("sub/deep/c.txt")].join("\n")
    );
    let t = f.ok(
        "search_files",
        json!({"path": f.rw, "pattern": "**/*.txt", "excludePatterns": ["deep"]}),
    );
    assert!(!t.contains("c.txt"), "{t}");
    assert_eq!(
        f.ok(
            "search_files",
            json!({"path": f.rw, "pattern": "**/secret*"})
        ),
        "No matches found"
    );
    // Relative base.
    let t = f.ok("search_files", json!({"path": ".", "pattern": "*.txt"}));
    assert_eq!(t, format!("{}/ro.txt", f.ro));
}

#[test]
fn get_file_info_and_allowed_directories() {
    let f = fx();
    let r = f
        .call("get_file_info", json!({"path": f.p("a.txt")}))
        .unwrap();
    let t = only_text(&r);
    let lines: Vec<_> = t.lines().collect();
    assert_eq!(lines[0], "size: 17");
    assert!(lines[1].starts_with("created: "));
    assert!(
        lines[2].starts_with("modified: ")
            && lines[2].ends_with("GMT+0000 (Coordinated Universal Time)")
    );
    assert!(lines[3].starts_with("accessed: "));
    assert_eq!(lines[4], "isDirectory: false");
    assert_eq!(lines[5], "isFile: true");
    assert!(lines[6].starts_with("permissions: "));
    let s: Value = serde_json::from_str(r.structured_json.as_deref().unwrap()).unwrap();
    assert_eq!(s["size"], 17);
    assert_eq!(s["isFile"], true);
    assert_eq!(s["content"], t);
    assert!(s["modified"].as_str().unwrap().ends_with('Z'));
    let t = f.ok("get_file_info", json!({"path": f.rw}));
    assert!(t.contains("isDirectory: true"));

    let r = f.call("list_allowed_directories", json!({})).unwrap();
    assert_eq!(
        only_text(&r),
        format!("Allowed directories:\n{}\n{}", f.ro, f.rw)
    );
    let s: Value = serde_json::from_str(r.structured_json.as_deref().unwrap()).unwrap();
    assert_eq!(
        s["directories"],
        json!([{"path": f.ro, "writable": false}, {"path": f.rw, "writable": true}])
    );
    // Also without arguments at all.
    assert!(f.call("list_allowed_directories", Value::Null).is_ok());
}

#[test]
fn dates_format_like_javascript() {
    assert_eq!(
        js_date_string(0),
        "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)"
    );
    assert_eq!(
        js_date_string(1_709_647_381),
        "Tue Mar 05 2024 14:03:01 GMT+0000 (Coordinated Universal Time)"
    );
    assert_eq!(iso_date(951_782_400, 5_000_000), "2000-02-29T00:00:00.005Z");
}

#[test]
fn grep_literal_search() {
    let f = fx();
    std::fs::write(f.p("bin.dat"), b"hello\0world").unwrap();
    symlink(format!("{}/outside", f.base), f.p("out")).unwrap();
    std::fs::write(format!("{}/outside/h.txt", f.base), "hello outside").unwrap();
    let t = f.ok("grep", json!({"path": f.rw, "pattern": "hello"}));
    assert_eq!(t, format!("{}:2: hello again", f.p("sub/b.md")));
    let t = f.ok(
        "grep",
        json!({"path": f.rw, "pattern": "HELLO", "caseInsensitive": true}),
    );
    assert_eq!(
        t,
        format!("{0}:1: Hello World\n{0}:2: hello again", f.p("sub/b.md"))
    );
    assert_eq!(
        f.ok(
            "grep",
            json!({"path": f.rw, "pattern": "a", "include": "*.txt"})
        ),
        format!("{0}:1: alpha\n{0}:2: beta\n{0}:3: gamma", f.p("a.txt"))
    );
    let t = f.ok(
        "grep",
        json!({"path": f.rw, "pattern": "a", "maxResults": 2}),
    );
    assert_eq!(t.lines().count(), 3);
    assert!(
        t.ends_with("[truncated: showing the first 2 matches]"),
        "{t}"
    );
    // A single file.
    assert_eq!(
        f.ok("grep", json!({"path": f.p("a.txt"), "pattern": "mm"})),
        format!("{}:3: gamma", f.p("a.txt"))
    );
    assert_eq!(
        f.ok("grep", json!({"path": f.rw, "pattern": "secret"})),
        "No matches found"
    );
}

#[test]
fn grep_respects_max_matches_limit() {
    let f = fx_with(ToolLimits {
        max_matches: 1,
        ..Default::default()
    });
    let t = f.ok(
        "grep",
        json!({"path": f.rw, "pattern": "a", "maxResults": 100}),
    );
    assert_eq!(t.lines().count(), 2, "{t}");
}
