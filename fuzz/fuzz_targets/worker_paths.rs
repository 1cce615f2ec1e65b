//! Client path arguments of the file tools, resolved by the worker's `Roots` (openat2
//! `RESOLVE_BENEATH` under each root) in a real directory tree with symlinks that point inside,
//! outside (relative and absolute) and into the writable root, plus a single-file root. Never
//! panics, and whatever resolves is inside a root that grants the access: `/proc/self/fd`
//! names the opened file.
#![no_main]

use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcpd_ipc::SandboxSpec;
use mcpd_worker::tools::paths::{Access, Roots};

struct Tree {
    _dir: tempfile::TempDir,
    base: String,
    root: String,
    write: String,
    file: String,
    roots: Roots,
}

fn tree() -> &'static Tree {
    static T: OnceLock<Tree> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(dir.path())
            .expect("canonical")
            .to_str()
            .expect("utf-8")
            .to_owned();
        let root = format!("{base}/root");
        let write = format!("{root}/a/w");
        let file = format!("{base}/single.txt");
        std::fs::create_dir_all(&write).expect("mkdir");
        std::fs::create_dir_all(format!("{base}/outside")).expect("mkdir");
        std::fs::write(format!("{base}/outside/secret"), "s").expect("write");
        std::fs::write(&file, "single").expect("write");
        std::fs::write(format!("{root}/f.txt"), "f").expect("write");
        std::fs::write(format!("{root}/a/g.txt"), "g").expect("write");
        symlink("a", format!("{root}/in")).expect("symlink");
        symlink("../outside", format!("{root}/out")).expect("symlink");
        symlink("/etc", format!("{root}/abs")).expect("symlink");
        symlink("../../f.txt", format!("{write}/up")).expect("symlink");
        symlink("w", format!("{root}/a/tow")).expect("symlink");
        symlink("loop", format!("{root}/loop")).expect("symlink");
        let spec = SandboxSpec {
            read_paths: vec![root.clone(), file.clone()],
            write_paths: vec![write.clone()],
            ..SandboxSpec::default()
        };
        let roots = Roots::open(&spec).expect("roots");
        Tree {
            _dir: dir,
            base,
            root,
            write,
            file,
            roots,
        }
    })
}

const PARTS: &[&str] = &[
    "a",
    "w",
    "f.txt",
    "g.txt",
    "in",
    "out",
    "abs",
    "up",
    "tow",
    "loop",
    "secret",
    "outside",
    "root",
    "single.txt",
    "..",
    ".",
    "",
    "passwd",
    "C:",
    "\\",
    "x",
];

#[derive(Debug, Arbitrary)]
struct Case {
    start: u8,
    parts: Vec<u8>,
    raw: Option<String>,
}

fn target(fd: &impl AsRawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn beneath(p: &str, root: &str) -> bool {
    p == root || Path::new(p).starts_with(root)
}

fuzz_target!(|c: Case| {
    let t = tree();
    let path = match c.raw {
        Some(r) => r,
        None => {
            let prefix = match c.start % 5 {
                0 => String::new(),
                1 => format!("{}/", t.root),
                2 => format!("{}/", t.base),
                3 => "/".to_owned(),
                _ => format!("{}/", t.write),
            };
            let body: Vec<&str> = c
                .parts
                .iter()
                .take(12)
                .map(|&i| PARTS[usize::from(i) % PARTS.len()])
                .collect();
            format!("{prefix}{}", body.join("/"))
        }
    };
    let _ = t.roots.display_path(&path);
    if let Ok(fd) = t.roots.open_path(&path, Access::Read) {
        let p = target(&fd);
        assert!(beneath(&p, &t.root) || p == t.file, "{path:?} opened {p:?}");
    }
    if let Ok(fd) = t.roots.open_path(&path, Access::Write) {
        let p = target(&fd);
        assert!(beneath(&p, &t.write), "{path:?} opened {p:?} for writing");
    }
    // A directory root itself comes back as its own descriptor named "." (`is_root`: callers
    // refuse to move or delete it); any other final component is a plain name.
    let name_ok = |p: &mcpd_worker::tools::paths::Parent| {
        if p.is_root {
            p.name == "."
        } else {
            !p.name.is_empty() && !p.name.contains('/') && p.name != "." && p.name != ".."
        }
    };
    if let Ok(parent) = t.roots.parent(&path, Access::Read) {
        let p = target(&parent.dir);
        assert!(name_ok(&parent), "{path:?} gave the name {:?}", parent.name);
        assert!(
            beneath(&p, &t.root) || (parent.file_root && format!("{p}/{}", parent.name) == t.file),
            "{path:?} parent {p:?}"
        );
    }
    if let Ok(parent) = t.roots.parent(&path, Access::Write) {
        let p = target(&parent.dir);
        assert!(name_ok(&parent), "{path:?} gave the name {:?}", parent.name);
        assert!(beneath(&p, &t.write), "{path:?} parent {p:?} for writing");
    }
});
