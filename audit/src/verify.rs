//! Offline verification of audit log files.

use std::fmt;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Map, Value};

use crate::record::{self, GENESIS};
use crate::writer::with_suffix;
use crate::{keys, SCHEMA_VERSION};

/// What is wrong with the first broken record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Not a JSON object, a required field missing or of the wrong type, an empty line, or an
    /// unknown `schema_version`.
    Malformed,
    /// The record's `hash` does not match its content (a field was changed).
    Modified,
    /// Records are missing: a gap in `seq` that no later record fills, or a log whose first
    /// record is neither the genesis (seq 0) nor a `log.rotated` record.
    Deleted,
    /// Records are out of order: `seq` goes backwards, or a record appears before the record it
    /// chains from.
    Reordered,
    /// A record that does not belong to the chain although its own hash is valid: a duplicate
    /// `seq`, a `prev` that does not match the preceding record's hash, or a stray `seq`.
    Inserted,
    /// The signed head file (`<log>.head`) covers a record beyond the end of the files: the tail
    /// was cut off. Only detectable with checkpoints and a public key.
    Truncated,
    /// A checkpoint (record or head file) whose signature is invalid, or whose `covers_hash`
    /// does not match the covered record.
    BadSignature,
    /// A file could not be read.
    Unreadable,
    /// With a public key: the signed head file (`<log>.head`) does not exist. A log written with a
    /// checkpoint key always has one (the broker writes it at every start), so its absence means
    /// it was deleted, and records cut off the end of the log would go unnoticed.
    HeadMissing,
    /// With a public key: the head file names an older checkpoint than the last one in the log.
    /// The head was rolled back to an older copy (which hides a tail cut at a later checkpoint),
    /// or the broker died between syncing a checkpoint and replacing the head file.
    HeadStale,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Malformed => "malformed",
            Self::Modified => "modified",
            Self::Deleted => "deleted",
            Self::Reordered => "reordered",
            Self::Inserted => "inserted",
            Self::Truncated => "truncated",
            Self::BadSignature => "bad signature",
            Self::Unreadable => "unreadable",
            Self::HeadMissing => "head file missing",
            Self::HeadStale => "head file stale",
        };
        f.write_str(s)
    }
}

/// The first broken record found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// File holding the record (the head file for head problems).
    pub file: PathBuf,
    /// 1-based line number in `file` (for `Truncated`: the line after the last record).
    pub line: u64,
    /// The record's seq when known (for `Truncated`: the first missing seq).
    pub seq: Option<u64>,
    /// Category.
    pub kind: FailureKind,
    /// Human explanation.
    pub detail: String,
}

/// Result of [`verify`]: counts for a summary, warnings, and the first failure if any.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Files examined.
    pub files: usize,
    /// Records that passed (before the first failure).
    pub records: u64,
    /// Checkpoint records and head files whose signature was verified.
    pub checkpoints_verified: u64,
    /// Seq of the first record.
    pub first_seq: Option<u64>,
    /// Seq of the last good record.
    pub last_seq: Option<u64>,
    /// Hash of the last good record.
    pub last_hash: Option<String>,
    /// Whether a signed head file was checked against the end of the log.
    pub head_checked: bool,
    /// Whether the head check was skipped on request ([`verify_without_head`]).
    pub head_skipped: bool,
    /// Non-fatal findings (trailing incomplete line after a crash, missing head file, ...).
    pub warnings: Vec<String>,
    /// The first broken record; `None` when the log verified.
    pub failure: Option<VerifyFailure>,
}

impl VerifyReport {
    /// True when no failure was found.
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!(" (seq {a}..{b})"),
            _ => String::new(),
        };
        match &self.failure {
            None => writeln!(
                f,
                "audit log OK: {} records in {} file(s){range}, {} checkpoint signature(s) verified{}",
                self.records,
                self.files,
                self.checkpoints_verified,
                if self.head_checked {
                    ", head checked"
                } else if self.head_skipped {
                    ", HEAD FILE NOT CHECKED (--no-head)"
                } else {
                    ""
                }
            )?,
            Some(x) => writeln!(
                f,
                "audit log BROKEN: {} at {}{}{}: {}\n  {} good records before it in {} file(s){range}",
                x.kind,
                x.file.display(),
                if x.line > 0 {
                    format!(":{}", x.line)
                } else {
                    String::new()
                },
                x.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
                x.detail,
                self.records,
                self.files
            )?,
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Ckpt {
    covers_seq: u64,
    covers_hash: String,
    sig: String,
}

#[derive(Debug, Clone)]
struct Rec {
    seq: u64,
    prev: String,
    hash: String,
    event: String,
    ckpt: Option<Ckpt>,
}

#[derive(Debug)]
enum Line {
    Good(Rec),
    Malformed(String),
    Modified(u64, String),
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether every number in the record is one the hash binds exactly (the writer stores larger
/// integers as strings): otherwise a digit could change without changing the hash.
fn numbers_exact(m: &Map<String, Value>) -> bool {
    fn exact(v: &Value) -> bool {
        match v {
            Value::Number(n) => record::jcs_exact(n),
            Value::Array(a) => a.iter().all(exact),
            Value::Object(o) => o.values().all(exact),
            _ => true,
        }
    }
    m.values().all(exact)
}

fn parse_line(bytes: &[u8]) -> Line {
    let mut m: Map<String, Value> = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => return Line::Malformed(format!("not a JSON object: {e}")),
    };
    if !numbers_exact(&m) {
        return Line::Malformed(format!(
            "an integer beyond ±{} (its hash does not bind its value)",
            record::MAX_EXACT_INT
        ));
    }
    let Some(ver) = m.get("schema_version").and_then(Value::as_u64) else {
        return Line::Malformed("missing schema_version".into());
    };
    if ver == 0 || ver > u64::from(SCHEMA_VERSION) {
        return Line::Malformed(format!("unsupported schema_version {ver}"));
    }
    let Some(seq) = m.get("seq").and_then(Value::as_u64) else {
        return Line::Malformed("missing or invalid seq".into());
    };
    for k in ["ts", "id", "event"] {
        if !m.get(k).is_some_and(Value::is_string) {
            return Line::Malformed(format!("missing or invalid {k}"));
        }
    }
    let prev = m
        .get("prev")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !is_hash(&prev) {
        return Line::Malformed("missing or invalid prev".into());
    }
    let hash = match m.remove("hash") {
        Some(Value::String(h)) if is_hash(&h) => h,
        _ => return Line::Malformed("missing or invalid hash".into()),
    };
    let event = m
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ckpt = if event == "log.checkpoint" {
        let cs = m.get("covers_seq").and_then(Value::as_u64);
        let ch = m.get("covers_hash").and_then(Value::as_str);
        let sg = m.get("sig").and_then(Value::as_str);
        match (cs, ch, sg) {
            (Some(covers_seq), Some(ch), Some(sg)) => Some(Ckpt {
                covers_seq,
                covers_hash: ch.to_owned(),
                sig: sg.to_owned(),
            }),
            _ => return Line::Malformed("checkpoint without covers_seq/covers_hash/sig".into()),
        }
    } else {
        None
    };
    let actual = record::record_hash(&m);
    if actual != hash {
        return Line::Modified(
            seq,
            format!("content does not match its hash (computed {actual})"),
        );
    }
    Line::Good(Rec {
        seq,
        prev,
        hash,
        event,
        ckpt,
    })
}

/// The complete lines of `data` and whether an incomplete trailing line was present.
fn split_lines(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let trailing = lines.pop().map_or(0, <[u8]>::len);
    (lines, trailing)
}

fn first_seq_of(path: &Path) -> Option<u64> {
    let f = File::open(path).ok()?;
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let v: Option<Value> = serde_json::from_slice(&line).ok();
        if let Some(s) = v
            .as_ref()
            .and_then(|v| v.get("seq"))
            .and_then(Value::as_u64)
        {
            return Some(s);
        }
    }
}

/// Sorts log files by the seq of their first record (files without records go last).
pub(crate) fn sort_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut keyed: Vec<(u64, PathBuf)> = files
        .iter()
        .map(|p| (first_seq_of(p).unwrap_or(u64::MAX), p.clone()))
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, p)| p).collect()
}

/// The head file next to the live log among `files` (`<log>.head`).
fn default_head(files: &[PathBuf]) -> Option<PathBuf> {
    let base = |p: &PathBuf| -> (bool, PathBuf) {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some((stem, digits)) = name.rsplit_once('.') {
            if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
                return (true, p.with_file_name(stem));
            }
        }
        (false, p.clone())
    };
    let mut bases: Vec<(bool, PathBuf)> = files.iter().map(base).collect();
    bases.sort_by_key(|(rotated, _)| *rotated);
    bases
        .into_iter()
        .next()
        .map(|(_, b)| with_suffix(&b, ".head"))
}

#[derive(Debug)]
struct HeadInfo {
    path: PathBuf,
    covers_seq: u64,
    covers_hash: String,
    checkpoint_seq: Option<u64>,
    /// Signature problem, reported after the walk.
    bad: Option<String>,
}

fn load_head(path: &Path, key: &VerifyingKey) -> Result<Option<HeadInfo>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let covers_seq = v.get("covers_seq").and_then(Value::as_u64);
    let covers_hash = v.get("covers_hash").and_then(Value::as_str);
    let sig = v.get("sig").and_then(Value::as_str);
    let (Some(covers_seq), Some(covers_hash), Some(sig)) = (covers_seq, covers_hash, sig) else {
        return Err(format!(
            "{}: missing covers_seq/covers_hash/sig",
            path.display()
        ));
    };
    let bad = check_sig(key, covers_seq, covers_hash, sig).err();
    Ok(Some(HeadInfo {
        path: path.to_path_buf(),
        covers_seq,
        covers_hash: covers_hash.to_owned(),
        checkpoint_seq: v.get("checkpoint_seq").and_then(Value::as_u64),
        bad,
    }))
}

fn check_sig(key: &VerifyingKey, seq: u64, hash: &str, sig: &str) -> Result<(), String> {
    let bytes = hex::decode(sig).map_err(|_| "signature is not hex".to_owned())?;
    let sig =
        Signature::from_slice(&bytes).map_err(|_| "signature has the wrong length".to_owned())?;
    key.verify_strict(record::checkpoint_message(seq, hash).as_bytes(), &sig)
        .map_err(|_| format!("signature over seq {seq} / {hash} does not verify"))
}

#[derive(Debug)]
struct Last {
    seq: u64,
    hash: String,
    prev: String,
    file: PathBuf,
    line: u64,
}

/// Verifies audit log files (the live file and any rotated `<log>.<seq>` files, in any order).
///
/// Records are walked in seq order; the first broken one is reported with its file, line, seq
/// and [`FailureKind`]. With `public_key` (SPKI PEM or hex, see [`generate_key`]) every
/// `log.checkpoint` record's signature is checked, and the signed head file `<log>.head` next to
/// the live file is compared with the end of the log, which detects a cut-off tail
/// ([`FailureKind::Truncated`]); with a key, a missing head file ([`FailureKind::HeadMissing`])
/// or one naming an older checkpoint than the log's last ([`FailureKind::HeadStale`]) fails
/// verification too. **Without a key, removing records from the end of the log is
/// not detectable** (the remaining prefix is a valid chain). A trailing incomplete line (a crash
/// during a write) is reported as a warning, not a failure.
///
/// [`generate_key`]: crate::generate_key
pub fn verify(files: &[PathBuf], public_key: Option<&Path>) -> VerifyReport {
    verify_with_head(files, public_key, None)
}

/// Like [`verify`], with an explicit head file (default: `<live log>.head`), e.g. a copy kept
/// where whoever can write the log cannot.
pub fn verify_with_head(
    files: &[PathBuf],
    public_key: Option<&Path>,
    head_file: Option<&Path>,
) -> VerifyReport {
    run(files, public_key, HeadSel::Check(head_file))
}

/// Like [`verify`] with a public key, but without any head file: for a log that deliberately
/// has none (its head was lost and the operator knows it). The chain and every checkpoint
/// signature are checked; **records cut off the end of the log are not detected** and the
/// report says so (a warning, and [`VerifyReport::head_skipped`]).
pub fn verify_without_head(files: &[PathBuf], public_key: &Path) -> VerifyReport {
    run(files, Some(public_key), HeadSel::Skip)
}

#[derive(Debug, Clone, Copy)]
enum HeadSel<'a> {
    /// The given head file, or `<live log>.head`.
    Check(Option<&'a Path>),
    /// No head file at all (explicit operator choice).
    Skip,
}

fn run(files: &[PathBuf], public_key: Option<&Path>, sel: HeadSel<'_>) -> VerifyReport {
    let mut report = VerifyReport {
        files: files.len(),
        ..VerifyReport::default()
    };
    let key = match public_key.map(keys::load_verifying_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            report.failure = Some(VerifyFailure {
                file: public_key.map(Path::to_path_buf).unwrap_or_default(),
                line: 0,
                seq: None,
                kind: FailureKind::Unreadable,
                detail: e.to_string(),
            });
            return report;
        }
    };
    let head_path = match sel {
        HeadSel::Check(h) => h.map(Path::to_path_buf).or_else(|| default_head(files)),
        HeadSel::Skip => None,
    };
    let mut head = None;
    // With a key, a head file that should be there and is not: reported after the walk (a
    // broken record comes first).
    let mut head_missing: Option<PathBuf> = None;
    match (&key, &head_path) {
        (Some(_), None) if matches!(sel, HeadSel::Skip) => {
            report.head_skipped = true;
            report.warnings.push(
                "--no-head: the signed head file was NOT checked: records cut off the end of the \
                 log (after its last checkpoint, or together with later checkpoints) cannot be \
                 detected"
                    .into(),
            );
        }
        (Some(k), Some(hp)) => match load_head(hp, k) {
            Ok(Some(h)) => head = Some(h),
            Ok(None) => head_missing = Some(hp.clone()),
            Err(e) => {
                report.failure = Some(VerifyFailure {
                    file: hp.clone(),
                    line: 1,
                    seq: None,
                    kind: FailureKind::Malformed,
                    detail: format!("head file unreadable: {e}"),
                });
                return report;
            }
        },
        (Some(_), None) => head_missing = Some(PathBuf::new()),
        (None, _) => report.warnings.push(
            "no public key: checkpoint signatures not checked; a cut-off tail cannot be detected"
                .into(),
        ),
    }
    let mut last: Option<Last> = None;
    let mut last_file: Option<(PathBuf, u64)> = None;
    // The last checkpoint record seen: (seq, file, line).
    let mut last_ckpt: Option<(u64, PathBuf, u64)> = None;
    for path in sort_files(files) {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                report.failure = Some(VerifyFailure {
                    file: path,
                    line: 0,
                    seq: None,
                    kind: FailureKind::Unreadable,
                    detail: e.to_string(),
                });
                return report;
            }
        };
        let (lines, trailing) = split_lines(&data);
        if trailing > 0 {
            report.warnings.push(format!(
                "{}: incomplete last line ({trailing} bytes, probably a crash during a write) ignored",
                path.display()
            ));
        }
        let parsed: Vec<Line> = lines.iter().map(|l| parse_line(l)).collect();
        last_file = Some((path.clone(), parsed.len() as u64));
        for (i, line) in parsed.iter().enumerate() {
            let lineno = i as u64 + 1;
            let fail = |kind, seq, detail: String| VerifyFailure {
                file: path.clone(),
                line: lineno,
                seq,
                kind,
                detail,
            };
            let r = match line {
                Line::Malformed(d) => {
                    report.failure = Some(fail(FailureKind::Malformed, None, d.clone()));
                    return report;
                }
                Line::Modified(s, d) => {
                    report.failure = Some(fail(FailureKind::Modified, Some(*s), d.clone()));
                    return report;
                }
                Line::Good(r) => r,
            };
            if let Some(f) = check_link(&last, r, &parsed[i + 1..], &path, lineno, &mut report) {
                report.failure = Some(f);
                return report;
            }
            if let (Some(k), Some(c)) = (&key, &r.ckpt) {
                let covers_prev = last
                    .as_ref()
                    .is_some_and(|l| l.seq == c.covers_seq && l.hash == c.covers_hash);
                if !covers_prev {
                    report.failure = Some(fail(
                        FailureKind::BadSignature,
                        Some(r.seq),
                        format!(
                            "checkpoint covers seq {} / {} which is not the preceding record",
                            c.covers_seq, c.covers_hash
                        ),
                    ));
                    return report;
                }
                if let Err(e) = check_sig(k, c.covers_seq, &c.covers_hash, &c.sig) {
                    report.failure = Some(fail(FailureKind::BadSignature, Some(r.seq), e));
                    return report;
                }
                report.checkpoints_verified += 1;
            }
            if r.ckpt.is_some() {
                last_ckpt = Some((r.seq, path.clone(), lineno));
            }
            if let Some(h) = &head {
                if h.covers_seq == r.seq && h.covers_hash != r.hash {
                    report.failure = Some(fail(
                        FailureKind::BadSignature,
                        Some(r.seq),
                        format!(
                            "head file {} covers this seq with hash {}, the record has {}",
                            h.path.display(),
                            h.covers_hash,
                            r.hash
                        ),
                    ));
                    return report;
                }
            }
            report.records += 1;
            report.first_seq.get_or_insert(r.seq);
            report.last_seq = Some(r.seq);
            report.last_hash = Some(r.hash.clone());
            last = Some(Last {
                seq: r.seq,
                hash: r.hash.clone(),
                prev: r.prev.clone(),
                file: path.clone(),
                line: lineno,
            });
        }
    }
    if let Some(hp) = head_missing {
        let (file, lines) = last_file.unwrap_or_else(|| (hp.clone(), 0));
        report.failure = Some(VerifyFailure {
            file: if hp.as_os_str().is_empty() {
                file
            } else {
                hp.clone()
            },
            line: if hp.as_os_str().is_empty() { lines } else { 0 },
            seq: None,
            kind: FailureKind::HeadMissing,
            detail: format!(
                "the signed head file {} does not exist. A log written with a checkpoint key \
                 always has one (the broker writes it at every start and checkpoint), so it was \
                 removed: records cut off the end of the log cannot be detected without it. \
                 Verify against a copy kept elsewhere (--head FILE), or knowingly without one \
                 (--no-head)",
                if hp.as_os_str().is_empty() {
                    "<log>.head".to_owned()
                } else {
                    hp.display().to_string()
                }
            ),
        });
        return report;
    }
    if let Some(h) = head {
        if let Some(bad) = h.bad {
            report.failure = Some(VerifyFailure {
                file: h.path,
                line: 1,
                seq: Some(h.covers_seq),
                kind: FailureKind::BadSignature,
                detail: format!("head file: {bad}"),
            });
            return report;
        }
        report.checkpoints_verified += 1;
        let needed = h.checkpoint_seq.unwrap_or(h.covers_seq).max(h.covers_seq);
        let end = last.as_ref().map(|l| l.seq);
        if end.is_none_or(|e| e < needed) {
            let (file, lines) = last_file.unwrap_or_else(|| (h.path.clone(), 0));
            report.failure = Some(VerifyFailure {
                file,
                line: lines + 1,
                seq: Some(end.map_or(0, |e| e + 1)),
                kind: FailureKind::Truncated,
                detail: format!(
                    "the signed head checkpoint covers seq {} (checkpoint record {}), but the log \
                     ends at {}: its tail was cut off",
                    h.covers_seq,
                    needed,
                    end.map_or_else(|| "no record".to_owned(), |e| format!("seq {e}"))
                ),
            });
            return report;
        }
        if let Some((cseq, cfile, cline)) = last_ckpt.filter(|(s, _, _)| *s > needed) {
            report.failure = Some(VerifyFailure {
                file: h.path.clone(),
                line: 1,
                seq: Some(needed),
                kind: FailureKind::HeadStale,
                detail: format!(
                    "the head file names checkpoint seq {needed}, but the log holds a later \
                     checkpoint (seq {cseq}, {}:{cline}): the head was rolled back to an older \
                     copy, which is how a log cut at a later checkpoint is disguised (or the \
                     broker died between syncing that checkpoint and replacing its head file)",
                    cfile.display()
                ),
            });
            return report;
        }
        report.head_checked = true;
    }
    report
}

/// Checks that `r` continues the chain after `last`; `rest` are the following lines of the file.
fn check_link(
    last: &Option<Last>,
    r: &Rec,
    rest: &[Line],
    path: &Path,
    lineno: u64,
    report: &mut VerifyReport,
) -> Option<VerifyFailure> {
    let fail = |kind, detail: String| {
        Some(VerifyFailure {
            file: path.to_path_buf(),
            line: lineno,
            seq: Some(r.seq),
            kind,
            detail,
        })
    };
    let Some(l) = last else {
        if r.seq == 0 {
            if r.prev != GENESIS {
                return fail(
                    FailureKind::Inserted,
                    "seq 0 does not chain from the genesis value".into(),
                );
            }
        } else if r.event == "log.rotated" {
            report.warnings.push(format!(
                "the chain starts at seq {} in {} (earlier rotated files not given): its first link \
                 is not checked",
                r.seq,
                path.display()
            ));
        } else {
            return fail(
                FailureKind::Deleted,
                format!(
                    "the log starts at seq {} with a `{}` record: earlier records are missing",
                    r.seq, r.event
                ),
            );
        }
        return None;
    };
    let expected = l.seq + 1;
    let good = |x: &Line| match x {
        Line::Good(g) => Some(g.clone()),
        _ => None,
    };
    if r.seq == expected {
        if r.prev != l.hash {
            return fail(
                FailureKind::Inserted,
                format!(
                    "prev does not match the hash of the preceding record (seq {}, {}:{}): this \
                     record was forged, or that one was altered and re-hashed",
                    l.seq,
                    l.file.display(),
                    l.line
                ),
            );
        }
        None
    } else if r.seq > expected {
        let later: Vec<Rec> = rest.iter().filter_map(good).collect();
        let pred_later = later.iter().any(|x| x.seq + 1 == r.seq && x.hash == r.prev);
        let gap_filled = later.iter().any(|x| x.seq == expected);
        if pred_later {
            fail(
                FailureKind::Reordered,
                format!(
                    "seq {} appears before seq {expected}, which it chains from later",
                    r.seq
                ),
            )
        } else if gap_filled {
            fail(
                FailureKind::Inserted,
                format!(
                    "seq {} does not belong here: the chain continues with seq {expected} later",
                    r.seq
                ),
            )
        } else {
            fail(
                FailureKind::Deleted,
                format!(
                    "records seq {expected}..{} are missing (this record follows seq {})",
                    r.seq - 1,
                    l.seq
                ),
            )
        }
    } else if r.seq == l.seq {
        // Two records claim the same slot. If they claim the same predecessor and the chain goes
        // on from this one, the earlier one is the intruder.
        let next_chains = rest
            .first()
            .and_then(good)
            .is_some_and(|n| n.prev == r.hash);
        if r.prev == l.prev && next_chains {
            Some(VerifyFailure {
                file: l.file.clone(),
                line: l.line,
                seq: Some(l.seq),
                kind: FailureKind::Inserted,
                detail: format!(
                    "duplicate seq {}: the chain continues from the record at {}:{}, not from this one",
                    l.seq,
                    path.display(),
                    lineno
                ),
            })
        } else {
            fail(FailureKind::Inserted, format!("duplicate seq {}", r.seq))
        }
    } else {
        fail(
            FailureKind::Reordered,
            format!("seq goes backwards from {} to {}", l.seq, r.seq),
        )
    }
}
