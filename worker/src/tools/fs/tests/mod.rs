//! Unit tests of the file tools, calling them through the registry on a temporary tree:
//! the shared fixture, descriptor checks, escapes refused identically by every tool,
//! cancellation and progress. Per-part tests are in `read`, `walk` (listings, walks, searches,
//! metadata) and `write` (writes and edits).
#![allow(clippy::unwrap_used)]
use super::schema::path_arg;
use super::*;
use crate::tools::paths;
use mcpd_ipc::{Content, ResourceBody, SandboxSpec, ToolAccess, ToolLimits};
use rustix::fs as rfs;
use std::os::unix::fs::symlink;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

mod read;
mod walk;
mod write;

pub(super) struct Fx {
    _tmp: tempfile::TempDir,
    base: String,
    ro: String,
    rw: String,
    ctx: ToolContext,
    reg: Registry,
}

pub(super) fn fx_with(limits: ToolLimits) -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path())
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let ro = format!("{base}/ro");
    let rw = format!("{base}/rw");
    for d in [
        &ro,
        &rw,
        &format!("{base}/rw-evil"),
        &format!("{base}/outside"),
    ] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(format!("{base}/outside/secret.txt"), "secret\n").unwrap();
    std::fs::write(format!("{base}/rw-evil/secret.txt"), "secret\n").unwrap();
    std::fs::write(format!("{ro}/ro.txt"), "read only\n").unwrap();
    std::fs::create_dir(format!("{rw}/sub")).unwrap();
    std::fs::write(format!("{rw}/a.txt"), "alpha\nbeta\ngamma\n").unwrap();
    std::fs::write(format!("{rw}/sub/b.md"), "Hello World\nhello again\n").unwrap();
    let spec = SandboxSpec {
        read_paths: vec![ro.clone()],
        write_paths: vec![rw.clone()],
        ..Default::default()
    };
    let roots = paths::Roots::open(&spec).unwrap();
    let ctx = ToolContext::new(
        Arc::new(roots),
        limits,
        Arc::new(AtomicBool::new(false)),
        None,
    );
    let mut reg = Registry::new();
    register(&mut reg);
    Fx {
        _tmp: tmp,
        base,
        ro,
        rw,
        ctx,
        reg,
    }
}

pub(super) fn fx() -> Fx {
    fx_with(ToolLimits::default())
}

impl Fx {
    fn call(&self, tool: &str, args: Value) -> Result<ToolResult, CallError> {
        self.reg.get(tool).unwrap().call(&self.ctx, args)
    }
    /// Successful text.
    fn ok(&self, tool: &str, args: Value) -> String {
        let r = self.call(tool, args.clone()).unwrap();
        assert!(!r.is_error, "{tool} {args}: {:?}", r.content);
        only_text(&r)
    }
    /// Tool-level error text.
    fn err(&self, tool: &str, args: Value) -> String {
        let r = self.call(tool, args.clone()).unwrap();
        assert!(
            r.is_error,
            "{tool} {args}: expected an error, got {:?}",
            r.content
        );
        only_text(&r)
    }
    fn p(&self, rel: &str) -> String {
        format!("{}/{rel}", self.rw)
    }
}

pub(super) fn only_text(r: &ToolResult) -> String {
    match r.content.as_slice() {
        [Content::Text { text }] => text.clone(),
        other => panic!("not a single text block: {other:?}"),
    }
}

pub(super) const ALL: [&str; 15] = [
    "create_directory",
    "delete_file",
    "directory_tree",
    "edit_file",
    "get_file_info",
    "grep",
    "list_allowed_directories",
    "list_directory",
    "list_directory_with_sizes",
    "move_file",
    "read_media_file",
    "read_multiple_files",
    "read_text_file",
    "search_files",
    "write_file",
];

#[test]
pub(super) fn descriptors_are_well_formed() {
    let f = fx();
    let ds = f.reg.descriptors();
    let mut names: Vec<_> = ds.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ALL);
    for d in &ds {
        let schema: Value = serde_json::from_str(&d.input_schema_json).unwrap();
        assert_eq!(schema["type"], "object", "{}", d.name);
        assert_eq!(schema["additionalProperties"], false, "{}", d.name);
        assert!(schema["properties"].is_object(), "{}", d.name);
        for req in schema["required"].as_array().unwrap() {
            assert!(schema["properties"].get(req.as_str().unwrap()).is_some());
        }
        for pa in &d.path_args {
            assert!(schema["properties"].get(&pa.name).is_some(), "{}", d.name);
        }
        if let Some(o) = &d.output_schema_json {
            let o: Value = serde_json::from_str(o).unwrap();
            assert_eq!(o["type"], "object");
        }
        let write = matches!(
            d.name.as_str(),
            "write_file" | "edit_file" | "create_directory" | "move_file" | "delete_file"
        );
        assert_eq!(d.annotations.read_only, !write, "{}", d.name);
        assert_eq!(d.access == ToolAccess::FileWrite, write, "{}", d.name);
        assert!(d.path_args.iter().all(|p| p.write == write), "{}", d.name);
        if d.name == "list_allowed_directories" {
            assert_eq!(d.access, ToolAccess::None);
            assert!(d.path_args.is_empty());
        } else {
            assert!(!d.path_args.is_empty(), "{}", d.name);
            assert!(d.description.contains("allowed directories"), "{}", d.name);
        }
        if matches!(
            d.name.as_str(),
            "write_file" | "edit_file" | "move_file" | "delete_file"
        ) {
            assert!(d.annotations.destructive, "{}", d.name);
        }
    }
    let mv = ds.iter().find(|d| d.name == "move_file").unwrap();
    assert_eq!(
        mv.path_args,
        vec![
            path_arg("source", false, true),
            path_arg("destination", false, true)
        ]
    );
    let many = ds.iter().find(|d| d.name == "read_multiple_files").unwrap();
    assert_eq!(many.path_args, vec![path_arg("paths", true, false)]);
}

#[test]
pub(super) fn invalid_arguments_are_protocol_errors() {
    let f = fx();
    for (tool, args) in [
        ("read_text_file", json!({})),
        ("read_text_file", json!({"path": 3})),
        ("read_text_file", json!({"path": "a.txt", "bogus": 1})),
        ("read_text_file", json!({"path": "a.txt", "head": -1})),
        ("read_text_file", json!({"path": "a.txt", "head": 1.5})),
        ("read_multiple_files", json!({"paths": []})),
        (
            "edit_file",
            json!({"path": "a", "edits": [{"oldText": "x"}]}),
        ),
        (
            "list_directory_with_sizes",
            json!({"path": "a", "sortBy": "date"}),
        ),
        ("search_files", json!({"path": "a", "pattern": "[bad"})),
        ("grep", json!({"path": "a", "pattern": ""})),
        ("list_allowed_directories", json!({"x": 1})),
        ("write_file", Value::Null),
    ] {
        let e = f.call(tool, args.clone()).unwrap_err();
        assert_eq!(e.kind, CallErrorKind::InvalidArguments, "{tool} {args}");
    }
    // Integral floats are accepted as counts.
    let t = f.ok("read_text_file", json!({"path": f.p("a.txt"), "head": 1.0}));
    assert_eq!(t, "alpha");
}

/// Every path-taking tool answers every escape with the same text, whether or not the
/// outside target exists.
#[test]
pub(super) fn escapes_are_identical_for_every_tool() {
    let f = fx();
    let outside = format!("{}/outside", f.base);
    symlink(format!("{outside}/secret.txt"), f.p("abs-existing")).unwrap();
    symlink(format!("{outside}/missing.txt"), f.p("abs-missing")).unwrap();
    symlink("../outside/secret.txt", f.p("rel-existing")).unwrap();
    symlink("../outside/missing.txt", f.p("rel-missing")).unwrap();
    symlink("../outside", f.p("dir-link")).unwrap();
    // (existing target, missing target, the final component itself is a symlink)
    let pairs: Vec<(String, String)> = vec![
        (f.p("../outside/secret.txt"), f.p("../outside/missing.txt")),
        (
            "../outside/secret.txt".into(),
            "../outside/missing.txt".into(),
        ),
        (
            format!("{outside}/secret.txt"),
            format!("{outside}/missing.txt"),
        ),
        (
            format!("{}/rw-evil/secret.txt", f.base),
            format!("{}/rw-evil/missing.txt", f.base),
        ),
        (f.p("abs-existing"), f.p("abs-missing")),
        (f.p("rel-existing"), f.p("rel-missing")),
        (f.p("dir-link/secret.txt"), f.p("dir-link/missing.txt")),
        (
            format!("/proc/self/root{}/../outside/secret.txt", f.rw),
            format!("/proc/self/root{}/../outside/missing.txt", f.rw),
        ),
        (
            format!("/proc/self/root{}/..", f.rw),
            format!("/proc/self/root{}/../nope", f.rw),
        ),
        ("/etc/passwd".into(), "/etc/definitely-missing".into()),
    ];
    let calls = |p: &str| -> Vec<(&'static str, Value)> {
        vec![
            ("read_text_file", json!({"path": p})),
            ("read_text_file", json!({"path": p, "head": 1})),
            ("read_media_file", json!({"path": p})),
            ("write_file", json!({"path": p, "content": "x"})),
            ("edit_file", json!({"path": p, "edits": [], "dryRun": true})),
            ("create_directory", json!({"path": p})),
            ("list_directory", json!({"path": p})),
            ("list_directory_with_sizes", json!({"path": p})),
            ("directory_tree", json!({"path": p})),
            ("search_files", json!({"path": p, "pattern": "*"})),
            ("get_file_info", json!({"path": p})),
            ("delete_file", json!({"path": p})),
            ("grep", json!({"path": p, "pattern": "secret"})),
            (
                "move_file",
                json!({"source": p, "destination": f.p("dest")}),
            ),
            (
                "move_file",
                json!({"source": f.p("sub/b.md"), "destination": p}),
            ),
        ]
    };
    for (existing, missing) in &pairs {
        // delete_file and move_file act on a final-component symlink itself (which lives
        // inside the root, so that is in scope); they are checked on the links below.
        let final_link = existing.ends_with("-existing");
        for ((tool, a1), (_, a2)) in calls(existing).into_iter().zip(calls(missing)) {
            if final_link && matches!(tool, "delete_file" | "move_file") {
                continue;
            }
            let t1 = f.err(tool, a1.clone());
            let t2 = f.err(tool, a2);
            assert_eq!(t1, paths::OUTSIDE_ALLOWED, "{tool} {a1}");
            assert_eq!(t1, t2, "{tool} {a1}");
        }
        let t = f.ok("read_multiple_files", json!({"paths": [existing, missing]}));
        assert_eq!(
            t,
            format!(
                "{existing}: Error - {o}\n---\n{missing}: Error - {o}",
                o = paths::OUTSIDE_ALLOWED
            )
        );
    }
    // Final-component links: moved/deleted as links, same answer whatever the target.
    for kind in ["abs", "rel"] {
        let (e, m) = (
            f.p(&format!("{kind}-existing")),
            f.p(&format!("{kind}-missing")),
        );
        assert_eq!(
            f.err(
                "move_file",
                json!({"source": f.p("sub/b.md"), "destination": e})
            ),
            format!("Destination already exists: {e}")
        );
        assert_eq!(
            f.err(
                "move_file",
                json!({"source": f.p("sub/b.md"), "destination": m})
            ),
            format!("Destination already exists: {m}")
        );
        for p in [e, m] {
            f.ok(
                "move_file",
                json!({"source": p, "destination": format!("{p}-moved")}),
            );
            f.ok("delete_file", json!({"path": format!("{p}-moved")}));
        }
    }
    // Nothing outside changed; the in-scope source of the moves is still there.
    assert_eq!(
        std::fs::read_to_string(format!("{outside}/secret.txt")).unwrap(),
        "secret\n"
    );
    assert!(!std::path::Path::new(&format!("{outside}/missing.txt")).exists());
    assert!(std::path::Path::new(&f.p("sub/b.md")).exists());
}

#[test]
pub(super) fn swapped_directory_between_calls() {
    let f = fx();
    let p = f.p("sub/b.md");
    f.ok("read_text_file", json!({"path": p}));
    std::fs::rename(f.p("sub"), f.p("sub-old")).unwrap();
    std::fs::write(format!("{}/outside/b.md", f.base), "outside").unwrap();
    symlink(format!("{}/outside", f.base), f.p("sub")).unwrap();
    assert_eq!(
        f.err("read_text_file", json!({"path": p})),
        paths::OUTSIDE_ALLOWED
    );
    assert_eq!(
        f.err("write_file", json!({"path": p, "content": "x"})),
        paths::OUTSIDE_ALLOWED
    );
    assert_eq!(
        f.err("list_directory", json!({"path": f.p("sub")})),
        paths::OUTSIDE_ALLOWED
    );
    assert_eq!(
        std::fs::read_to_string(format!("{}/outside/b.md", f.base)).unwrap(),
        "outside"
    );
}

#[test]
pub(super) fn walks_honour_cancellation_and_report_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let base = base.to_str().unwrap().to_owned();
    for i in 0..2500 {
        std::fs::write(format!("{base}/f{i}.txt"), "needle\n").unwrap();
    }
    let spec = SandboxSpec {
        read_paths: vec![base.clone()],
        ..Default::default()
    };
    let roots = Arc::new(paths::Roots::open(&spec).unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let progress: super::super::ProgressFn =
        Arc::new(move |u| seen2.lock().unwrap().push(u.progress));
    let ctx = ToolContext::new(
        roots.clone(),
        ToolLimits::default(),
        Arc::new(AtomicBool::new(false)),
        Some(progress),
    );
    let r = search_files(&ctx, json!({"path": base, "pattern": "*.txt"}));
    assert!(r.is_ok());
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let cancelled = Arc::new(AtomicBool::new(true));
    let ctx = ToolContext::new(roots, ToolLimits::default(), cancelled, None);
    let mut reg = Registry::new();
    register(&mut reg);
    for (tool, args) in [
        ("search_files", json!({"path": base, "pattern": "*"})),
        ("directory_tree", json!({"path": base})),
        ("grep", json!({"path": base, "pattern": "needle"})),
    ] {
        let e = reg.get(tool).unwrap().call(&ctx, args).unwrap_err();
        assert_eq!(e.kind, CallErrorKind::Cancelled, "{tool}");
    }
}
