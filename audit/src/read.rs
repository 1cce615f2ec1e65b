//! Reading records back for `tail` / `query`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::verify::sort_files;
use crate::writer::rotated_siblings;
use crate::AuditError;

/// The files of the log at `path`: its rotated files `<path>.<20-digit seq>` (oldest first)
/// followed by `path` itself when it exists. The head file and temporary files are not included.
pub fn discover_files(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut out: Vec<PathBuf> = rotated_siblings(path)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    Ok(out)
}

/// Reads every complete record of `files` (any order; sorted by their first seq) as JSON
/// objects, in log order. An incomplete trailing line (crash during a write) is skipped. A line
/// that is not a JSON object is an error naming the file and line: run [`verify`] to diagnose.
/// No integrity check is done here.
///
/// [`verify`]: crate::verify
pub fn read_records(files: &[PathBuf]) -> Result<Vec<Value>, AuditError> {
    let mut out = Vec::new();
    for path in sort_files(files) {
        let data = std::fs::read(&path)
            .map_err(|e| AuditError::Unavailable(format!("{}: {e}", path.display())))?;
        let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        lines.pop(); // incomplete trailing line (or the empty remainder after the last `\n`)
        for (i, l) in lines.into_iter().enumerate() {
            match serde_json::from_slice::<Value>(l) {
                Ok(v) if v.is_object() => out.push(v),
                _ => {
                    return Err(AuditError::Unavailable(format!(
                        "{}:{}: malformed record",
                        path.display(),
                        i + 1
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// A filter over records for `query` / `tail`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Keep only records whose `principal` field equals this.
    pub principal: Option<String>,
    /// Keep only records with `ts >= since`. `ts` is RFC 3339 UTC with a fixed width
    /// (`2025-01-31T12:00:00.000000Z`), so any prefix of that form works: `2025-01-31`,
    /// `2025-01-31T12:00`, or a full timestamp with or without fractional seconds and `Z`
    /// (normalised, then compared as strings). Time-zone offsets other than `Z` are not supported.
    pub since: Option<String>,
    /// Keep only records with `ts <= until` (same forms as `since`; a prefix such as a date
    /// compares as that prefix, so `until = 2025-01-31` keeps records up to the start of that
    /// day, and the CLI passes full timestamps).
    pub until: Option<String>,
    /// Keep only records of this event name.
    pub event: Option<String>,
    /// Keep only the last `limit` matching records (like `tail -n`).
    pub limit: Option<usize>,
}

impl Query {
    /// True if `record` passes the principal/since/event filters (`limit` is not applied).
    pub fn matches(&self, record: &Value) -> bool {
        if let Some(p) = &self.principal {
            if record.get("principal").and_then(Value::as_str) != Some(p.as_str()) {
                return false;
            }
        }
        if let Some(since) = &self.since {
            match record.get("ts").and_then(Value::as_str) {
                Some(ts) if ts >= normalize_since(since).as_str() => {}
                _ => return false,
            }
        }
        if let Some(until) = &self.until {
            match record.get("ts").and_then(Value::as_str) {
                // Without the `Z` both ways, so that a full timestamp keeps its own record.
                Some(ts) if ts.trim_end_matches('Z') <= normalize_since(until).as_str() => {}
                _ => return false,
            }
        }
        if let Some(e) = &self.event {
            if record.get("event").and_then(Value::as_str) != Some(e.as_str()) {
                return false;
            }
        }
        true
    }
}

/// Brings a UTC timestamp prefix to the log's fixed-width form so that string comparison is
/// chronological: drops a trailing `Z` and pads fractional seconds to six digits
/// (`12:00:00Z` -> `12:00:00.000000`, `12:00:00.5Z` -> `12:00:00.500000`).
fn normalize_since(since: &str) -> String {
    let s = since.trim().trim_end_matches(['Z', 'z']);
    let Some((_, time)) = s.split_once('T') else {
        return s.to_owned();
    };
    match time.split_once('.') {
        Some((_, frac)) if frac.len() < 6 => format!("{s}{}", "0".repeat(6 - frac.len())),
        Some(_) => s.to_owned(),
        None if time.len() == 8 => format!("{s}.000000"),
        None => s.to_owned(),
    }
}

/// Reads `files` (see [`read_records`]) and returns the records matching `q`, in log order.
pub fn query(files: &[PathBuf], q: &Query) -> Result<Vec<Value>, AuditError> {
    let mut v: Vec<Value> = read_records(files)?
        .into_iter()
        .filter(|r| q.matches(r))
        .collect();
    if let Some(n) = q.limit {
        let cut = v.len().saturating_sub(n);
        v.drain(..cut);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::normalize_since;

    #[test]
    fn since_normalisation() {
        assert_eq!(normalize_since("2025-01-31"), "2025-01-31");
        assert_eq!(normalize_since("2025-01-31T12:00"), "2025-01-31T12:00");
        assert_eq!(
            normalize_since("2025-01-31T12:00:00Z"),
            "2025-01-31T12:00:00.000000"
        );
        assert_eq!(
            normalize_since("2025-01-31T12:00:00.5Z"),
            "2025-01-31T12:00:00.500000"
        );
        assert_eq!(
            normalize_since("2025-01-31T12:00:00.123456Z"),
            "2025-01-31T12:00:00.123456"
        );
        assert!("2025-01-31T12:00:00.500000Z" >= normalize_since("2025-01-31T12:00:00Z").as_str());
        assert!("2025-01-31T11:59:59.999999Z" < normalize_since("2025-01-31T12:00:00Z").as_str());
    }
}
