//! The Debian package's documentation assets, committed under packaging/: the man pages
//! (packaging/man/, from `mcpd manpages`) and the completion scripts (packaging/completions/,
//! from `mcpd completions SHELL`) are exactly what the `mcpd` built here generates, so they
//! never go stale; the pages render without a formatter warning, and the bash script completes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mcpd_e2e::require;

fn packaging(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(dir)
}

fn mcpd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcpd"))
        .args(args)
        .output()
        .unwrap()
}

/// Every file of `dir` by name.
fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().into_string().unwrap(), text)
        })
        .collect()
}

/// The first line where `committed` and `generated` differ, for the failure message.
fn first_difference(committed: &str, generated: &str) -> String {
    let (mut c, mut g) = (committed.lines(), generated.lines());
    for n in 1.. {
        match (c.next(), g.next()) {
            (None, None) => break,
            (a, b) if a == b => {}
            (a, b) => return format!("line {n}: committed {a:?}, generated {b:?}"),
        }
    }
    "they differ only in line endings".into()
}

const REGENERATE_MAN: &str =
    "run `cargo run -p mcpd -- manpages packaging/man` and commit packaging/man/";

#[test]
fn the_committed_man_pages_are_the_generated_ones() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("man");
    let out = mcpd(&["manpages", out_dir.to_str().unwrap()]);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = files(&out_dir);
    let committed = files(&packaging("man"));
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&generated),
        "packaging/man/ (left) does not hold the pages `mcpd manpages` writes (right): \
         {REGENERATE_MAN} (and `git rm` a page no longer written)"
    );
    for (name, text) in &generated {
        assert!(
            committed[name] == *text,
            "packaging/man/{name} is stale ({}): {REGENERATE_MAN}",
            first_difference(&committed[name], text)
        );
    }
    // One page per visible subcommand, nested ones included; the hidden one has none.
    for page in [
        "mcpd.8",
        "mcpd-serve.8",
        "mcpd-check-config.8",
        "mcpd-doctor.8",
        "mcpd-audit.8",
        "mcpd-audit-verify.8",
        "mcpd-completions.8",
        "mcpd.toml.5",
    ] {
        assert!(generated.contains_key(page), "no {page}");
    }
    assert!(!generated.keys().any(|p| p.contains("manpages")));
}

#[test]
fn the_committed_completion_scripts_are_the_generated_ones() {
    for (shell, file) in [
        ("bash", "mcpd.bash"),
        ("zsh", "_mcpd"),
        ("fish", "mcpd.fish"),
    ] {
        let out = mcpd(&["completions", shell]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let generated = String::from_utf8(out.stdout).unwrap();
        let path = packaging("completions").join(file);
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            committed == generated,
            "packaging/completions/{file} is stale ({}): run `cargo run -p mcpd -- completions \
             {shell} > packaging/completions/{file}` and commit it",
            first_difference(&committed, &generated)
        );
    }
    // `completions` is on --help, `manpages` is not.
    let help = String::from_utf8(mcpd(&["--help"]).stdout).unwrap();
    assert!(
        help.contains("completions") && !help.contains("manpages"),
        "{help}"
    );
    let out = mcpd(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `groff -man` over `page`: the text as a terminal shows it, without bold or underlining
/// (grotty -cbou) and with hyphens and minus signs as `-`, after checking the formatter said
/// nothing.
fn render(page: &Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou", "-ww", "-rLL=200n"])
        .arg(page)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "groff on {}: {err}",
        page.display()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .replace(['\u{2212}', '\u{2010}'], "-")
}

/// Needs groff (Debian: groff-base, which tests/setup.sh installs).
#[test]
fn the_man_pages_render_without_warnings() {
    let groff = Command::new("groff")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(
        groff,
        "groff",
        "it renders the man pages (apt-get install groff-base)",
    ) {
        return;
    }
    let dir = packaging("man");
    let mut pages = 0;
    for name in files(&dir).keys() {
        let text = render(&dir.join(name));
        assert!(
            text.contains("NAME") && text.contains("SEE ALSO"),
            "{name}:\n{text}"
        );
        pages += 1;
    }
    assert!(pages >= 11, "{pages} pages");

    let top = render(&dir.join("mcpd.8"));
    for want in [
        "mcpd - A confined, privilege-separated MCP server",
        "EXIT STATUS",
        "MCPD_CONFIG",
        "mcpd-serve(8)",
        "mcpd-audit-verify(8)",
        "mcpd.toml(5)",
    ] {
        assert!(top.contains(want), "mcpd.8 lacks {want:?}:\n{top}");
    }
    let serve = render(&dir.join("mcpd-serve.8"));
    for want in [
        "mcpd serve",
        "--allow-read <DIR>",
        "--tls-client-ca <FILE>",
        "mcpd.toml(5)",
    ] {
        assert!(
            serve.contains(want),
            "mcpd-serve.8 lacks {want:?}:\n{serve}"
        );
    }

    // mcpd.toml(5): every section and every key of the sample, each key's tag first on its line.
    let config = render(&dir.join("mcpd.toml.5"));
    let sample = std::fs::read_to_string(packaging("mcpd.toml")).unwrap();
    let mut keys = 0;
    for line in sample.lines() {
        let l = line.trim_start_matches('#').trim();
        if l.starts_with('[') && l.contains(']') {
            let name = &l[..=l.find(']').unwrap()];
            if !name.contains(' ') {
                assert!(config.contains(name), "mcpd.toml.5 lacks {name}");
            }
            continue;
        }
        let Some((key, _)) = l.split_once(" =") else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        assert!(
            config
                .lines()
                .any(|t| t.trim_start().starts_with(&format!("{key} ="))),
            "mcpd.toml.5 has no entry for {key}"
        );
        keys += 1;
    }
    assert!(keys >= 80, "{keys} keys");
    assert!(
        config.contains("max_sessions = 32") && config.contains("Default: 32."),
        "{config}"
    );
}

/// The bash script, sourced into a real bash, completes subcommands and their flags.
#[test]
fn the_bash_script_completes_subcommands_and_flags() {
    let script = packaging("completions").join("mcpd.bash");
    let complete = |words: &[&str]| -> Vec<String> {
        let words_arr = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let n = words.len() - 1;
        let prog = format!(
            "source '{}'; COMP_WORDS=({words_arr}); COMP_CWORD={n}; \
             _mcpd mcpd \"${{COMP_WORDS[{n}]}}\" \"${{COMP_WORDS[{}]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            n - 1
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &prog])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(complete(&["mcpd", "che"]), ["check-config"]);
    assert_eq!(complete(&["mcpd", "co"]), ["completions"]);
    assert!(complete(&["mcpd", "ma"]).is_empty());
    assert_eq!(complete(&["mcpd", "serve", "--allow-w"]), ["--allow-write"]);
    assert_eq!(
        complete(&["mcpd", "completions", ""]),
        ["-h", "--help", "bash", "zsh", "fish"]
    );
    assert_eq!(complete(&["mcpd", "completions", "z"]), ["zsh"]);
    let audit = complete(&["mcpd", "audit", ""]);
    for sub in ["verify", "tail", "query", "keygen"] {
        assert!(audit.iter().any(|w| w == sub), "{audit:?}");
    }
}
