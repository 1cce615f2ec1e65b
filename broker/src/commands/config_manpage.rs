//! mcpd.toml(5), generated from the documented keys of the shipped sample configuration
//! packaging/mcpd.toml (embedded): each `[section]` (or commented-out `# [section]`) becomes a
//! subsection, each `key = value` or `# key = value` line a tagged paragraph (the key and its
//! sample value) holding the comment beside it and the comment block above it, and the other
//! comment blocks paragraphs where they stand. NAME, SYNOPSIS, DESCRIPTION, FILES and SEE ALSO
//! are written here (DESCRIPTION in place of the comment before the first section, the file's
//! own title).
//!
//! The sample's comment conventions, which [`parse`] follows:
//! - `key = value   # text` (or `# key = value   # text`): the text describes the key; the
//!   lines after it whose comment is itself a comment (`#      # more text`) continue it.
//! - a comment beside a key indented by more than one space (`#   more`) continues the
//!   description of what came before (a section's), not the key's.
//! - other comment lines are prose; a block of them directly above a key or a section (no
//!   blank line between) introduces it; a `#` line alone separates paragraphs; a prose line
//!   indented by more than one space is kept as written (a command line).
//!
//! What it does not do: check the keys or values (the policy crate does; broker/tests/cli.rs
//! checks that the sample's commented numbers and booleans are the real defaults, which is why
//! this page calls them defaults).
#![forbid(unsafe_code)]

use roff::{bold, italic, line_break, roman, Roff};

use super::manpages::{finish, EMPTY_ARG, SOURCE};
use crate::cli::DEFAULT_CONFIG;

/// The sample configuration the page documents.
pub const SAMPLE: &str = include_str!("../../../packaging/mcpd.toml");

/// A paragraph of prose: filled text, or lines kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Lines joined and filled.
    Text(Vec<String>),
    /// Lines shown as they are (a command line).
    Verbatim(Vec<String>),
}

/// A `key = value` line of the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key.
    pub name: String,
    /// Its value as written (may be empty: `# cpu_seconds =` is unset by default).
    pub value: String,
    /// Written as `# key = value`: not set by the sample.
    pub commented: bool,
    /// The comment block above it.
    pub intro: Vec<Block>,
    /// The comment beside it and its continuations.
    pub text: Vec<String>,
}

/// What a section holds, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A comment block on its own.
    Prose(Vec<Block>),
    /// A key.
    Key(Key),
}

/// A `[section]` (or the part before the first one, with no name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    /// `clients.dev.limits`; `None` before the first header.
    pub name: Option<String>,
    /// Written as `# [name]`.
    pub commented: bool,
    /// The comment block above the header.
    pub intro: Vec<Block>,
    /// The comment beside the header and its continuations.
    pub text: Vec<String>,
    /// Its keys and comment blocks.
    pub items: Vec<Item>,
}

/// Where a continued comment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Section,
    /// The key at this index of the section's items.
    Key(usize),
}

/// The comment blocks read but not yet attached to a key or a section.
#[derive(Debug, Default)]
struct Pending {
    blocks: Vec<Block>,
}

impl Pending {
    fn line(&mut self, line: &str, verbatim: bool) {
        let line = line.trim().to_string();
        match (self.blocks.last_mut(), verbatim) {
            (Some(Block::Text(l)), false) | (Some(Block::Verbatim(l)), true) => l.push(line),
            (_, false) => self.blocks.push(Block::Text(vec![line])),
            (_, true) => self.blocks.push(Block::Verbatim(vec![line])),
        }
    }

    /// A `#` line alone: the next line starts a new paragraph.
    fn paragraph(&mut self) {
        if let Some(Block::Text(l) | Block::Verbatim(l)) = self.blocks.last() {
            if !l.is_empty() {
                self.blocks.push(Block::Text(Vec::new()));
            }
        }
    }

    fn take(&mut self) -> Vec<Block> {
        std::mem::take(&mut self.blocks)
            .into_iter()
            .filter(|b| !matches!(b, Block::Text(l) | Block::Verbatim(l) if l.is_empty()))
            .collect()
    }
}

/// `[name]` or `[name]   # text`: the name and the text.
fn header(t: &str) -> Option<(String, Option<String>)> {
    let rest = t.strip_prefix('[')?;
    let end = rest.find(']')?;
    let name = &rest[..end];
    let after = rest[end + 1..].trim();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !valid {
        return None;
    }
    if after.is_empty() {
        return Some((name.to_string(), None));
    }
    let comment = after.strip_prefix('#')?;
    Some((name.to_string(), Some(comment.to_string())))
}

/// `key = value   # text`: the key, the value, and the comment (as written after its `#`).
fn key_line(t: &str) -> Option<(String, String, Option<String>)> {
    let (key, rest) = t.split_once('=')?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    // The comment starts at the first `#` outside a string.
    let mut in_string = false;
    let mut escaped = false;
    let mut cut = None;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '#' if !in_string => {
                cut = Some(i);
                break;
            }
            _ => {}
        }
    }
    let (value, comment) = match cut {
        Some(i) => (&rest[..i], Some(rest[i + 1..].to_string())),
        None => (rest, None),
    };
    Some((key.to_string(), value.trim().to_string(), comment))
}

/// The sections of `text` (the sample's format, described above). An error names the line.
pub fn parse(text: &str) -> Result<Vec<Section>, String> {
    let mut sections = vec![Section::default()];
    let mut pending = Pending::default();
    let mut target: Option<Target> = None;
    for (n, raw) in text.lines().enumerate() {
        let at = |what: &str| format!("packaging/mcpd.toml:{}: {what}", n + 1);
        let line = raw.trim_end();
        let Some(current) = sections.last_mut() else {
            return Err(at("no section"));
        };
        if line.is_empty() {
            let blocks = pending.take();
            if !blocks.is_empty() {
                current.items.push(Item::Prose(blocks));
            }
            target = None;
            continue;
        }
        let (commented, body) = match line.strip_prefix('#') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let t = body.trim_start();
        if commented && t.is_empty() {
            pending.paragraph();
            target = None;
            continue;
        }
        if let Some(more) = t.strip_prefix('#').filter(|_| commented) {
            let more = more.trim().to_string();
            match target {
                Some(Target::Section) => current.text.push(more),
                Some(Target::Key(i)) => match current.items.get_mut(i) {
                    Some(Item::Key(k)) => k.text.push(more),
                    _ => return Err(at("a continued comment follows no key")),
                },
                None => {
                    return Err(at(
                        "a continued comment (`#   # ...`) follows no key or section",
                    ))
                }
            }
            continue;
        }
        if let Some((name, comment)) = header(t) {
            sections.push(Section {
                name: Some(name),
                commented,
                intro: pending.take(),
                text: comment.map(|c| c.trim().to_string()).into_iter().collect(),
                items: Vec::new(),
            });
            target = Some(Target::Section);
            continue;
        }
        if let Some((name, value, comment)) = key_line(t) {
            let mut text = Vec::new();
            match comment {
                // Indented: the description of what came before goes on.
                Some(c) if c.starts_with("  ") => match target {
                    Some(Target::Section) => current.text.push(c.trim().to_string()),
                    Some(Target::Key(i)) => match current.items.get_mut(i) {
                        Some(Item::Key(k)) => k.text.push(c.trim().to_string()),
                        _ => return Err(at("an indented comment follows no key")),
                    },
                    None => return Err(at("an indented comment follows no key or section")),
                },
                Some(c) => {
                    text.push(c.trim().to_string());
                    target = Some(Target::Key(current.items.len()));
                }
                None => target = Some(Target::Key(current.items.len())),
            }
            current.items.push(Item::Key(Key {
                name,
                value,
                commented,
                intro: pending.take(),
                text,
            }));
            continue;
        }
        if !commented {
            return Err(at("neither a [section] nor a key = value line"));
        }
        pending.line(t, body.starts_with("  "));
        target = None;
    }
    let blocks = pending.take();
    if let Some(last) = sections.last_mut() {
        if !blocks.is_empty() {
            last.items.push(Item::Prose(blocks));
        }
    }
    Ok(sections)
}

/// The sections whose commented numbers and booleans broker/tests/cli.rs
/// (`the_shipped_samples_are_the_real_defaults`) checks to be the defaults; every section whose
/// name ends in `.limits` too. Keep the two lists alike.
const CHECKED_SECTIONS: &[&str] = &["server", "audit", "http", "unix", "dbus", "auth.jwt"];

/// A commented number or boolean of a checked section: the sample's value is the default.
fn is_checked_default(section: &str, value: &str) -> bool {
    let checked = CHECKED_SECTIONS.contains(&section) || section.ends_with(".limits");
    checked
        && (value == "true"
            || value == "false"
            || (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())))
}

/// Comment lines as one sentence: joined, with a final full stop unless it has one.
fn sentence(lines: &[String]) -> String {
    let mut text = lines.join(" ");
    if !text.is_empty() && !text.ends_with(['.', '!', '?', ':']) {
        text.push('.');
    }
    text
}

/// Prose blocks at the section level.
fn blocks(r: &mut Roff, blocks: &[Block]) {
    for b in blocks {
        match b {
            Block::Text(lines) => {
                r.control("PP", []);
                r.text([roman(lines.join(" "))]);
            }
            Block::Verbatim(lines) => {
                r.control("PP", []);
                r.control("RS", ["4"]);
                r.control("nf", []);
                for l in lines {
                    r.text([roman(l.as_str())]);
                }
                r.control("fi", []);
                r.control("RE", []);
            }
        }
    }
}

/// A key's tagged paragraph.
fn key(r: &mut Roff, section: &str, k: &Key) {
    r.control("TP", []);
    let mut tag = vec![bold(k.name.as_str()), roman(" =")];
    if !k.value.is_empty() {
        tag.push(roman(format!(" {}", k.value)));
    }
    r.text(tag);
    let mut paragraphs: Vec<Vec<roff::Inline>> = Vec::new();
    for b in &k.intro {
        match b {
            Block::Text(lines) | Block::Verbatim(lines) => {
                paragraphs.push(vec![roman(lines.join(" "))]);
            }
        }
    }
    let text = sentence(&k.text);
    let note = if k.commented && is_checked_default(section, &k.value) {
        vec![roman("Default: "), italic(k.value.as_str()), roman(".")]
    } else if !k.commented {
        vec![roman("Set in the shipped file.")]
    } else {
        Vec::new()
    };
    match (text.is_empty(), note.is_empty()) {
        (true, true) => {}
        (true, false) => paragraphs.push(note),
        (false, true) => paragraphs.push(vec![roman(text)]),
        (false, false) => {
            let mut p = vec![roman(text), line_break()];
            p.extend(note);
            paragraphs.push(p);
        }
    }
    for (i, p) in paragraphs.into_iter().enumerate() {
        if i > 0 {
            r.control("IP", []);
        }
        r.text(p);
    }
}

/// The KEYS section: every section of the sample and what it documents.
fn keys(r: &mut Roff, sections: &[Section]) {
    r.control("SH", ["KEYS"]);
    r.text([roman(
        "The sections and keys in the order of the shipped file, each key with the value the \
         file shows. A key the file sets is marked so; a default is marked as such (the test \
         suite checks those); other commented-out values are defaults or examples, as their \
         text says. The names dev, local, reader, agent, disk_usage and review are the \
         sample's: any name may stand in their place.",
    )]);
    for s in sections {
        let Some(name) = &s.name else { continue };
        r.control("SS", [format!("[{name}]").as_str()]);
        let mut lead = sentence(&s.text);
        if s.commented {
            if !lead.is_empty() {
                lead.push(' ');
            }
            lead.push_str("Commented out in the shipped file.");
        }
        if !lead.is_empty() {
            r.text([roman(lead)]);
        }
        blocks(r, &s.intro);
        for item in &s.items {
            match item {
                Item::Prose(b) => blocks(r, b),
                Item::Key(k) => key(r, name, k),
            }
        }
    }
}

/// The page mcpd.toml.5.
pub fn page() -> Result<String, String> {
    let sections = parse(SAMPLE)?;
    let mut r = Roff::new();
    r.control("TH", ["MCPD.TOML", "5", EMPTY_ARG, SOURCE]);
    r.control("SH", ["NAME"]);
    r.text([roman(
        "mcpd.toml - configuration file of mcpd, the confined MCP server",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([bold(DEFAULT_CONFIG)]);
    r.control("SH", ["DESCRIPTION"]);
    r.text([
        roman("The policy of "),
        bold("mcpd"),
        roman("(8), in TOML: which clients exist, how each is identified (stdio, HTTP with bearer tokens or client certificates, Unix socket peer credentials), what each may read, write and run, and its limits; the transports; the audit log. Deny by default: a client not listed gets nothing, a path not listed is outside its sandbox."),
    ]);
    r.control("PP", []);
    r.text([
        bold("mcpd serve"),
        roman(", "),
        bold("mcpd check-config"),
        roman(" and "),
        bold("mcpd doctor"),
        roman(format!(
            " read the file named by --config, else $MCPD_CONFIG, else {DEFAULT_CONFIG} when it exists (else an embedded default: stdio, the current directory read-only). "
        )),
        bold("mcpd serve"),
        roman(" reads it again on SIGHUP; a file that does not load keeps the previous policy. Validate a file with "),
        bold("mcpd check-config --config"),
        roman(" "),
        italic("FILE"),
        roman(", which prints the effective policy."),
    ]);
    keys(&mut r, &sections);
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([bold(DEFAULT_CONFIG)]);
    r.text([roman(
        "The configuration file: the shipped one is the sample this page is generated from.",
    )]);
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("mcpd"),
        roman("(8), "),
        bold("mcpd-check-config"),
        roman("(8), "),
        bold("mcpd-serve"),
        roman("(8), "),
        bold("mcpd-doctor"),
        roman("(8)"),
    ]);
    Ok(finish(&r.render()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_sample_parses_and_every_key_line_is_a_key() {
        let sections = parse(SAMPLE).unwrap();
        let keys: usize = sections
            .iter()
            .flat_map(|s| &s.items)
            .filter(|i| matches!(i, Item::Key(_)))
            .count();
        // Every line that looks like `key = value` (commented or not) is one key.
        let lines = SAMPLE
            .lines()
            .filter(|l| key_line(l.trim_start_matches('#').trim_start()).is_some())
            .count();
        assert_eq!(keys, lines);
        assert!(keys >= 90, "{keys}");
        let names: Vec<&str> = sections.iter().filter_map(|s| s.name.as_deref()).collect();
        for want in [
            "server",
            "audit",
            "http.tls",
            "auth.jwt.scopes",
            "unix",
            "prompts.review",
        ] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        // The text before the first section is the file's own header.
        assert!(sections[0].name.is_none() && !sections[0].items.is_empty());
    }

    #[test]
    fn comments_attach_to_their_key_or_section() {
        let text = "\
# intro of server
[server]
# worker = \"/x#y\"   # where it is
#                    # and more
# n = 3   # a number

# A block on its own.
#
#   a command line
#   another

# Above the section.
# [t.u]          # the section
# k = [\"a\"]    #   continues the section
#                #   and goes on
";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 3);
        let server = &s[1];
        assert_eq!(server.name.as_deref(), Some("server"));
        assert_eq!(
            server.intro,
            vec![Block::Text(vec!["intro of server".into()])]
        );
        let Item::Key(w) = &server.items[0] else {
            panic!()
        };
        assert_eq!((w.name.as_str(), w.value.as_str()), ("worker", "\"/x#y\""));
        assert_eq!(w.text, ["where it is", "and more"]);
        assert!(w.commented);
        let Item::Key(n) = &server.items[1] else {
            panic!()
        };
        assert_eq!(
            (n.name.as_str(), n.text.as_slice()),
            ("n", &["a number".to_string()][..])
        );
        assert_eq!(
            server.items[2],
            Item::Prose(vec![
                Block::Text(vec!["A block on its own.".into()]),
                Block::Verbatim(vec!["a command line".into(), "another".into()]),
            ])
        );
        let t = &s[2];
        assert!(t.commented);
        assert_eq!(
            t.intro,
            vec![Block::Text(vec!["Above the section.".into()])]
        );
        assert_eq!(
            t.text,
            ["the section", "continues the section", "and goes on"]
        );
        let Item::Key(k) = &t.items[0] else { panic!() };
        assert!(k.text.is_empty());

        let s =
            parse("[a]\n# x = 1   # about x\n# y = 2   #   more about x\n#         # and more\n")
                .unwrap();
        let Item::Key(x) = &s[1].items[0] else {
            panic!()
        };
        let Item::Key(y) = &s[1].items[1] else {
            panic!()
        };
        assert_eq!(x.text, ["about x", "more about x", "and more"]);
        assert!(y.text.is_empty());
    }

    #[test]
    fn a_stray_continuation_or_line_is_an_error_naming_it() {
        let e = parse("[a]\nx = 1\n\n#   # dangling\n").unwrap_err();
        assert!(e.starts_with("packaging/mcpd.toml:4: "), "{e}");
        let e = parse("[a]\nnot toml\n").unwrap_err();
        assert!(e.starts_with("packaging/mcpd.toml:2: "), "{e}");
    }

    #[test]
    fn roff_special_characters_are_escaped() {
        let s = parse("[a]\n# k = 'x'   # .starts with a dot, a \\backslash\n").unwrap();
        let mut r = Roff::new();
        keys(&mut r, &s);
        let out = r.to_roff();
        assert!(out.contains("\\fBk\\fR = 'x'"), "{out}");
        assert!(
            out.contains("\\&.starts with a dot, a \\\\backslash"),
            "{out}"
        );
        assert!(!out.lines().any(|l| l.starts_with(".starts")), "{out}");
    }

    #[test]
    fn the_page_documents_every_key_with_its_default() {
        let p = page().unwrap();
        assert!(p.starts_with(".ie \\n(.g .ds Aq \\(aq\n"), "{p}");
        assert!(
            p.contains(&format!(".TH MCPD.TOML 5 \"\" \"{SOURCE}\"\n")),
            "{p}"
        );
        assert!(p.contains(".SS [clients.dev.limits]"), "{p}");
        assert!(p.contains("\\fBmax_sessions\\fR = 32\n"), "{p}");
        assert!(p.contains("Default: \\fI32\\fR."), "{p}");
        assert!(
            p.contains("\\fBpath\\fR = \"/var/log/mcpd/audit.jsonl\"\n"),
            "{p}"
        );
        assert!(p.contains("\n.br\nSet in the shipped file.\n"), "{p}");
        assert!(p.is_ascii());
        // An operator tool's timeout defaults to the client's command timeout, not the
        // sample's 10: a section the defaults test does not check gets no "Default".
        let tool = &p[p.find(".SS [tools.disk_usage]").unwrap()..];
        let tool = &tool[..tool[1..].find(".SS").unwrap()];
        assert!(tool.contains("\\fBtimeout_secs\\fR = 10\n"), "{tool}");
        assert!(!tool.contains("Default"), "{tool}");
    }
}
