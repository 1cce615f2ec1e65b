//! Text formats carried inside IPC messages that both sides must read the same way: `file://`
//! URIs of resources, and `{placeholder}` templates of operator tools' argv. Pure functions.

/// A `file://` URI for an absolute path: unreserved bytes and `/` as is, everything else
/// percent-encoded.
pub fn file_uri(path: &str) -> String {
    let mut s = String::from("file://");
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The absolute path of a `file://` URI (host empty or `localhost`), percent-decoded; `None`
/// for anything else, malformed escapes, non-UTF-8 or NUL.
pub fn file_uri_path(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("file://")?;
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return None;
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|p| !p.contains('\0'))
}

/// The `{name}` placeholders of a template element (`[A-Za-z0-9_]` names; `{{` and `}}` are
/// literal braces); `Err` describes a malformed element.
pub fn template_placeholders(element: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) if ch.is_ascii_alphanumeric() || ch == '_' => name.push(ch),
                        _ => return Err(format!("bad placeholder in '{element}'")),
                    }
                }
                if name.is_empty() {
                    return Err(format!("empty placeholder in '{element}'"));
                }
                names.push(name);
            }
            '}' => return Err(format!("unmatched '}}' in '{element}'")),
            _ => {}
        }
    }
    Ok(names)
}

/// Fill a template element: each `{name}` becomes `value(name)` (its text, inserted as is,
/// never re-parsed), `{{` and `}}` become literal braces. The element is assumed valid (see
/// [`template_placeholders`]).
pub fn fill_template(element: &str, mut value: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(element.len());
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                out.push_str(&value(&name));
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uris_round_trip_and_reject_what_they_must() {
        assert_eq!(
            file_uri_path("file:///a%20b/c.txt").as_deref(),
            Some("/a b/c.txt")
        );
        assert_eq!(file_uri_path("file://localhost/x").as_deref(), Some("/x"));
        assert_eq!(file_uri_path("file://host/x"), None);
        assert_eq!(file_uri_path("file:///%00"), None);
        assert_eq!(file_uri_path("file:///%zz"), None);
        assert_eq!(
            file_uri_path(&file_uri("/d/é f#?.md")).as_deref(),
            Some("/d/é f#?.md")
        );
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            template_placeholders("--x={a}{b_1}").unwrap(),
            vec!["a", "b_1"]
        );
        assert!(template_placeholders("{{literal}}").unwrap().is_empty());
        assert!(template_placeholders("{").is_err());
        assert!(template_placeholders("{}").is_err());
        assert!(template_placeholders("}").is_err());
        assert!(template_placeholders("{a-b}").is_err());
        let filled = fill_template("{{x}} {a}-{b}", |n| {
            if n == "a" {
                "{b}".into()
            } else {
                "2".into()
            }
        });
        assert_eq!(filled, "{x} {b}-2");
    }
}
