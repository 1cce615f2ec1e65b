//! Tests of the read tools: heads, tails, limits, partial reads, media, FIFOs.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn read_text_file_full_head_tail() {
    let f = fx();
    let p = f.p("a.txt");
    assert_eq!(
        f.ok("read_text_file", json!({"path": p})),
        "alpha\nbeta\ngamma\n"
    );
    assert_eq!(
        f.ok("read_text_file", json!({"path": p, "head": 2})),
        "alpha\nbeta"
    );
    assert_eq!(
        f.ok("read_text_file", json!({"path": p, "head": 10})),
        "alpha\nbeta\ngamma"
    );
    assert_eq!(
        f.ok("read_text_file", json!({"path": p, "tail": 2})),
        "beta\ngamma"
    );
    assert_eq!(
        f.ok("read_text_file", json!({"path": p, "tail": 10})),
        "alpha\nbeta\ngamma"
    );
    assert_eq!(
        f.err("read_text_file", json!({"path": p, "head": 1, "tail": 1})),
        "Cannot specify both head and tail parameters simultaneously"
    );
    // Relative paths resolve against the first root (read-only `ro`).
    assert_eq!(
        f.ok("read_text_file", json!({"path": "ro.txt"})),
        "read only\n"
    );
    // Invalid UTF-8 is replaced, not refused.
    std::fs::write(f.p("bin"), b"a\xffb").unwrap();
    assert_eq!(
        f.ok("read_text_file", json!({"path": f.p("bin")})),
        "a\u{fffd}b"
    );
    // A directory is not a file.
    assert!(f
        .err("read_text_file", json!({"path": f.rw}))
        .starts_with("Is a directory"));
}

#[test]
fn read_limits_and_partial_reads() {
    let f = fx_with(ToolLimits {
        max_read_bytes: 64,
        ..Default::default()
    });
    let big: String = (0..100).map(|i| format!("line {i}\n")).collect();
    std::fs::write(f.p("big.txt"), &big).unwrap();
    let p = f.p("big.txt");
    let e = f.err("read_text_file", json!({"path": p}));
    assert!(e.starts_with(&format!("File too large: {p}")), "{e}");
    assert_eq!(
        f.ok("read_text_file", json!({"path": p, "head": 3})),
        "line 0\nline 1\nline 2"
    );
    assert_eq!(
        f.ok("read_text_file", json!({"path": p, "tail": 2})),
        "line 98\nline 99"
    );
    // More lines than the read limit allows: cut and marked.
    let t = f.ok("read_text_file", json!({"path": p, "head": 50}));
    assert!(
        t.ends_with("[truncated: read limit of 64 bytes reached]"),
        "{t}"
    );
    let t = f.ok("read_text_file", json!({"path": p, "tail": 50}));
    assert!(
        t.ends_with("line 99\n[truncated: read limit of 64 bytes reached]")
            || t.contains("[truncated"),
        "{t}"
    );
    // read_multiple_files reports per file.
    let t = f.ok("read_multiple_files", json!({"paths": [p, f.p("a.txt")]}));
    assert!(
        t.starts_with(&format!("{p}: Error - File too large")),
        "{t}"
    );
    assert!(
        t.ends_with(&format!("{}:\nalpha\nbeta\ngamma\n\n", f.p("a.txt"))),
        "{t}"
    );
}

#[test]
fn output_is_capped() {
    let f = fx_with(ToolLimits {
        max_output_bytes: 100,
        ..Default::default()
    });
    std::fs::write(f.p("big.txt"), "x".repeat(1000)).unwrap();
    let t = f.ok("read_text_file", json!({"path": f.p("big.txt")}));
    assert!(t.len() <= 100, "{}", t.len());
    assert!(t.contains("[output truncated"), "{t}");
}

#[test]
fn fifo_is_refused_promptly() {
    let f = fx();
    let p = f.p("fifo");
    rfs::mkfifoat(rfs::CWD, p.as_str(), rfs::Mode::from_raw_mode(0o644)).unwrap();
    let start = std::time::Instant::now();
    for tool in ["read_text_file", "read_media_file", "edit_file"] {
        let args = if tool == "edit_file" {
            json!({"path": p, "edits": []})
        } else {
            json!({"path": p})
        };
        assert_eq!(f.err(tool, args), format!("Not a regular file: {p}"));
    }
    let t = f.ok("read_multiple_files", json!({"paths": [p]}));
    assert_eq!(t, format!("{p}: Error - Not a regular file: {p}"));
    assert!(f
        .err("write_file", json!({"path": p, "content": "x"}))
        .contains("Not a regular file"));
    // grep over a directory with a FIFO skips it.
    assert_eq!(
        f.ok("grep", json!({"path": f.rw, "pattern": "zzz-none"})),
        "No matches found"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn read_media_file_blocks() {
    let f = fx();
    std::fs::write(f.p("pic.PNG"), b"\x89PNG").unwrap();
    std::fs::write(f.p("snd.wav"), b"RIFF").unwrap();
    std::fs::write(f.p("data.bin"), b"\x00\x01").unwrap();
    let r = f
        .call("read_media_file", json!({"path": f.p("pic.PNG")}))
        .unwrap();
    assert_eq!(
        r.content,
        vec![Content::Image {
            data: b"\x89PNG".to_vec(),
            mime_type: "image/png".into()
        }]
    );
    let r = f
        .call("read_media_file", json!({"path": f.p("snd.wav")}))
        .unwrap();
    assert_eq!(
        r.content,
        vec![Content::Audio {
            data: b"RIFF".to_vec(),
            mime_type: "audio/wav".into()
        }]
    );
    let r = f
        .call("read_media_file", json!({"path": f.p("data.bin")}))
        .unwrap();
    assert_eq!(
        r.content,
        vec![Content::Resource {
            uri: format!("file://{}", f.p("data.bin")),
            mime_type: Some("application/octet-stream".into()),
            body: ResourceBody::Blob(vec![0, 1]),
        }]
    );
}

#[test]
fn read_multiple_files_inline_errors() {
    let f = fx();
    let missing = f.p("missing.txt");
    let outside = format!("{}/outside/secret.txt", f.base);
    let t = f.ok(
        "read_multiple_files",
        json!({"paths": [f.p("a.txt"), missing, outside, format!("{}/ro.txt", f.ro)]}),
    );
    let r = format!("{}/ro.txt", f.ro);
    let expected = format!(
        "{a}:\nalpha\nbeta\ngamma\n\n\n---\n{m}: Error - No such file or directory: {m}\n---\n{o}: Error - {OUT}\n---\n{r}:\nread only\n\n",
        a = f.p("a.txt"),
        m = missing,
        o = outside,
        OUT = paths::OUTSIDE_ALLOWED,
    );
    assert_eq!(t, expected);
}

/// `read_limited` trusts the size from `fstat` only to size its buffer and to skip the probe
/// read: a file that grew or shrank since is read as it is now, the limit still holds.
#[test]
fn whole_file_reads_follow_the_file_not_its_opening_size() {
    use super::super::read::read_limited;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let read = |size, max| read_limited("f", &file, size, max).map_err(|_| ());
    let whole = |size, max| {
        let mut f = &file;
        std::io::Seek::rewind(&mut f).unwrap();
        read(size, max)
    };
    assert_eq!(whole(10_000, 1 << 20).unwrap(), data);
    // Grown since the fstat (it said 10 bytes, or nothing): all of it is read.
    assert_eq!(whole(10, 1 << 20).unwrap(), data);
    assert_eq!(whole(0, 1 << 20).unwrap(), data);
    // Shrunk since (it said more): what is there.
    assert_eq!(whole(20_000, 1 << 20).unwrap(), data);
    // The limit holds whatever the size said.
    assert!(whole(10, 9_999).is_err());
    assert!(whole(10_000, 9_999).is_err());
    assert_eq!(whole(10, 10_000).unwrap(), data);
    // An empty file.
    std::fs::write(dir.path().join("e"), b"").unwrap();
    let empty = std::fs::File::open(dir.path().join("e")).unwrap();
    assert!(read_limited("e", &empty, 0, 0).ok().unwrap().is_empty());
}
