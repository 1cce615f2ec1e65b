//! `mcpd manpages DIR` (hidden from `--help`): writes the man pages the Debian package ships
//! (packaging/man/): `mcpd.8` and one `mcpd-COMMAND.8` per visible subcommand (nested ones as
//! `mcpd-audit-verify.8`), rendered by clap_mangen from the clap definitions in `cli.rs`, and
//! `mcpd.toml.5` from the documented keys of packaging/mcpd.toml ([`super::config_manpage`]).
//!
//! What it does: builds every page in memory ([`pages`]), then writes each file. Each page is
//! clap_mangen's sections plus the ones it has no source for, generated here: EXIT STATUS
//! (from `BrokerError`'s codes), ENVIRONMENT and FILES (from `cli.rs`'s constants), SEE ALSO
//! (the other pages). Text goes through the `roff` crate, which escapes it; the only
//! post-processing is [`finish`]: non-ASCII characters as groff escapes, no trailing blanks.
//! What it does not do: install the pages, compress them, or put a date in them (the date
//! field is left empty, so the committed pages only change when their text does).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory as _;
use clap_mangen::Man;
use roff::{bold, roman, Roff};

use crate::cli::{Cli, DEFAULT_CONFIG};
use crate::error::BrokerError;

/// The `.TH` source field of every page: the package and its version.
pub const SOURCE: &str = concat!("mcpd ", env!("CARGO_PKG_VERSION"));

/// What every `Roff::render` (and so every clap_mangen section) begins with: the definition of
/// the apostrophe string. A page keeps the first one only.
const APOSTROPHE_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// An empty `.TH` argument (the date): the roff crate writes an empty string as nothing, which
/// would move the source into the date's place.
pub const EMPTY_ARG: &str = "\"\"";

/// One page: its file name (`mcpd-audit-verify.8`) and its roff text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The file name in DIR.
    pub file: String,
    /// The page.
    pub text: String,
}

/// Every page `mcpd manpages` writes, mcpd.8 first, then the subcommands' pages in the order
/// of `--help`, then mcpd.toml.5.
pub fn pages() -> Result<Vec<Page>, String> {
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut commands = Vec::new();
    collect(&root, &mut commands);
    let names: Vec<String> = commands.iter().map(page_name).collect();
    let mut out = Vec::new();
    for (cmd, name) in commands.iter().zip(&names) {
        out.push(Page {
            file: format!("{name}.8"),
            text: command_page(cmd, name, &names)?,
        });
    }
    out.push(Page {
        file: "mcpd.toml.5".into(),
        text: super::config_manpage::page()?,
    });
    Ok(out)
}

/// `mcpd manpages DIR`: write [`pages`] into `dir` (created when missing).
pub fn run(dir: &Path) -> Result<ExitCode, BrokerError> {
    let err = |what: &Path, source| BrokerError::Output {
        what: what.display().to_string(),
        source,
    };
    let pages = pages().map_err(|e| err(dir, std::io::Error::other(e)))?;
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    for page in pages {
        let path = dir.join(&page.file);
        std::fs::write(&path, page.text).map_err(|e| err(&path, e))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `cmd` and, depth first, its visible subcommands (never `help`).
fn collect(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
    out.push(cmd.clone());
    for sub in cmd.get_subcommands() {
        if !sub.is_hide_set() && sub.get_name() != "help" {
            collect(sub, out);
        }
    }
}

/// `mcpd`, `mcpd-serve`, `mcpd-audit-verify`: clap's display name of a built command.
fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

/// The rendered text of `roff`, without the preamble a page already has.
fn section(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Result<String, String> {
    let mut buf = Vec::new();
    render(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8(buf).map_err(|e| e.to_string())?;
    Ok(match text.strip_prefix(APOSTROPHE_PREAMBLE) {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// The page as written: non-ASCII characters as groff's `\[uXXXX]` escapes (read the same by
/// mandoc and by a formatter without a UTF-8 input filter), and no trailing blanks (clap_mangen
/// leaves some; one after a backslash would be an escaped space, and is kept).
pub fn finish(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_end_matches(' ');
        let line = if trimmed.ends_with('\\') {
            line
        } else {
            trimmed
        };
        for c in line.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
            }
        }
        out.push('\n');
    }
    out
}

/// The page of `cmd` (named `name`; `all` names every command page).
fn command_page(cmd: &clap::Command, name: &str, all: &[String]) -> Result<String, String> {
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("8")
        .date(EMPTY_ARG)
        .source(SOURCE);
    let mut page = String::from(APOSTROPHE_PREAMBLE);
    page += &section(|w| man.render_title(w))?;
    page += &section(|w| man.render_name_section(w))?;
    page += &section(|w| man.render_synopsis_section(w))?;
    page += &section(|w| man.render_description_section(w))?;
    if name == "mcpd" {
        let mut r = Roff::new();
        overview(&mut r);
        page += &section(|w| r.to_writer(w))?;
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        page += &section(|w| man.render_options_section(w))?;
    }
    if cmd
        .get_subcommands()
        .any(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        page += &section(|w| man.render_subcommands_section(w))?;
    }
    let mut extra = Roff::new();
    let top = name == "mcpd";
    if top {
        exit_status(&mut extra);
        environment(&mut extra);
        files(&mut extra);
    }
    see_also(&mut extra, cmd, name, all);
    page += &section(|w| extra.to_writer(w))?;
    if cmd.get_version().is_some() {
        page += &section(|w| man.render_version_section(w))?;
    }
    Ok(finish(&page))
}

/// The rest of mcpd.8's DESCRIPTION (README.md's opening, shortened).
fn overview(r: &mut Roff) {
    r.control("PP", []);
    r.text([
        roman("mcpd serves the Model Context Protocol to AI clients it does not trust. The broker, "),
        bold("mcpd"),
        roman(", speaks MCP on stdio, Streamable HTTP (optionally HTTPS, with bearer tokens or client certificates) or a Unix socket, decides every request against a deny-by-default policy ("),
        bold("mcpd.toml"),
        roman("(5)), writes a tamper-evident audit log, and starts one worker, "),
        bold("mcpd-worker"),
        roman(", per client session. The worker confines itself in the kernel before it reads a request: namespaces with a private root holding only the client's directories, no capabilities, rlimits and a cgroup, no_new_privs, Landlock and a seccomp filter."),
    ]);
    r.control("PP", []);
    r.text([
        bold("mcpd doctor"),
        roman(" shows what this kernel offers and what each client's view will hold; "),
        bold("mcpd check-config"),
        roman(" validates a configuration file. Each subcommand has its own page, named below."),
    ]);
}

/// EXIT STATUS of mcpd.8: `BrokerError`'s codes.
fn exit_status(r: &mut Roff) {
    r.control("SH", ["EXIT STATUS"]);
    let codes: [(u8, &str); 6] = [
        (0, "Success."),
        (
            1,
            "A negative verdict: mcpd doctor finds the workers cannot be fully confined, or mcpd audit verify finds the log broken or cut.",
        ),
        (
            BrokerError::CONFIG,
            "A configuration error, or a malformed command line.",
        ),
        (
            BrokerError::RUNTIME,
            "A runtime failure: the async runtime, no CSPRNG, or output that cannot be written.",
        ),
        (
            BrokerError::TRANSPORT,
            "A transport failure: a listener, the worker supervisor, or serving.",
        ),
        (
            BrokerError::AUDIT,
            "The audit log cannot be opened, written, or read.",
        ),
    ];
    for (code, what) in codes {
        r.control("TP", []);
        r.text([bold(code.to_string())]);
        r.text([roman(what)]);
    }
}

/// ENVIRONMENT of mcpd.8.
fn environment(r: &mut Roff) {
    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []);
    r.text([bold("MCPD_CONFIG")]);
    r.text([roman(format!(
        "The configuration file used when --config names none (set and non-empty: used whether or not it exists). Unset: {DEFAULT_CONFIG} when it exists, else the embedded default."
    ))]);
    r.control("TP", []);
    r.text([bold("MCPD_LOG")]);
    r.text([roman(
        "The log filter for stderr (tracing syntax, e.g. info or mcpd=debug), as --log.",
    )]);
}

/// FILES of mcpd.8.
fn files(r: &mut Roff) {
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([bold(DEFAULT_CONFIG)]);
    r.text([
        roman("The default configuration file; see "),
        bold("mcpd.toml"),
        roman("(5)."),
    ]);
}

/// SEE ALSO: mcpd.8 names every other page; a subcommand's page names mcpd(8), its parent,
/// its own subcommands, and mcpd.toml(5) when it reads a configuration file.
fn see_also(r: &mut Roff, cmd: &clap::Command, name: &str, all: &[String]) {
    let mut refs: Vec<(String, &str)> = Vec::new();
    if name == "mcpd" {
        refs.extend(all.iter().filter(|n| *n != name).map(|n| (n.clone(), "8")));
        refs.push(("mcpd.toml".into(), "5"));
    } else {
        refs.push(("mcpd".into(), "8"));
        if let Some((parent, _)) = name.rsplit_once('-') {
            if parent != "mcpd" && all.iter().any(|n| n == parent) {
                refs.push((parent.to_string(), "8"));
            }
        }
        refs.extend(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .map(|s| (page_name(s), "8")),
        );
        if cmd.get_arguments().any(|a| a.get_id() == "config") {
            refs.push(("mcpd.toml".into(), "5"));
        }
    }
    r.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    let last = refs.len().saturating_sub(1);
    for (i, (page, sect)) in refs.into_iter().enumerate() {
        line.push(bold(page));
        line.push(roman(if i == last {
            format!("({sect})")
        } else {
            format!("({sect}), ")
        }));
    }
    r.text(line);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn page(file: &str) -> String {
        pages()
            .unwrap()
            .into_iter()
            .find(|p| p.file == file)
            .unwrap_or_else(|| panic!("no {file}"))
            .text
    }

    #[test]
    fn every_visible_subcommand_has_a_page_and_the_hidden_one_none() {
        let files: Vec<String> = pages().unwrap().into_iter().map(|p| p.file).collect();
        assert_eq!(
            files,
            [
                "mcpd.8",
                "mcpd-serve.8",
                "mcpd-check-config.8",
                "mcpd-doctor.8",
                "mcpd-audit.8",
                "mcpd-audit-verify.8",
                "mcpd-audit-tail.8",
                "mcpd-audit-query.8",
                "mcpd-audit-keygen.8",
                "mcpd-completions.8",
                "mcpd.toml.5",
            ]
        );
    }

    #[test]
    fn the_pages_have_their_section_source_and_links() {
        let top = page("mcpd.8");
        assert!(
            top.starts_with(APOSTROPHE_PREAMBLE) && top.matches(APOSTROPHE_PREAMBLE).count() == 1,
            "{top}"
        );
        assert!(
            top.contains(&format!(".TH MCPD 8 \"\" \"{SOURCE}\"\n")),
            "{top}"
        );
        assert!(top.contains(".SH SUBCOMMANDS"), "{top}");
        assert!(top.contains("\\fBmcpd\\-audit\\-verify\\fR(8)"), "{top}");
        assert!(top.contains("\\fBmcpd.toml\\fR(5)"), "{top}");
        assert!(top.contains(".SH \"EXIT STATUS\"") && top.contains("\\fBMCPD_CONFIG\\fR"));
        assert!(
            !top.contains("manpages"),
            "the hidden subcommand is listed: {top}"
        );

        let verify = page("mcpd-audit-verify.8");
        assert!(verify.contains(".TH MCPD-AUDIT-VERIFY 8 "), "{verify}");
        assert!(verify.contains("\\fB\\-\\-key\\fR"), "{verify}");
        assert!(
            verify.contains("\\fBmcpd\\fR(8), \\fBmcpd\\-audit\\fR(8)\n"),
            "{verify}"
        );
        let audit = page("mcpd-audit.8");
        assert!(
            audit.contains("\\fBmcpd\\-audit\\-keygen\\fR(8)"),
            "{audit}"
        );
        let serve = page("mcpd-serve.8");
        assert!(serve.contains("\\fB\\-\\-allow\\-read\\fR"), "{serve}");
        assert!(serve.contains("\\fBmcpd.toml\\fR(5)"), "{serve}");
    }

    #[test]
    fn non_ascii_becomes_a_groff_escape_and_trailing_blanks_go() {
        assert_eq!(finish("a \u{2014} b\n"), "a \\[u2014] b\n");
        assert_eq!(finish(".TH A 8  \nx\\ \n"), ".TH A 8\nx\\ \n");
        for p in pages().unwrap() {
            assert!(p.text.is_ascii(), "{}", p.file);
            assert!(!p.text.lines().any(|l| l.ends_with(' ')), "{}", p.file);
        }
    }
}
