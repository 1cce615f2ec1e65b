//! Integrity-protected `requestState` for stateless-era input-required rounds.
//!
//! The client carries the state between rounds and controls it, so the broker seals what the
//! worker asked to get back: `base64url(iat ‖ payload) "." base64url(HMAC-SHA256(key, context))`
//! where `iat` is the sealing time (8 bytes, seconds since the epoch) and the context binds the
//! payload to the principal and to the tool or prompt it belongs to. A state older than
//! `[http] state_ttl_secs` (or dated in the future beyond [`CLOCK_SKEW_SECS`]) is refused.
//!
//! The key: `[http] state_key_file` (32 bytes or 64 hex digits; a regular file, not a link,
//! no access for group or others, owned by root or the broker), shared by every instance of a
//! deployment so that any of them verifies what another sealed. Without one, 256 random bits
//! drawn at start: a state then verifies only on this broker until it restarts. A rotation
//! keeps the key that sealed until now for verification only, for `state_ttl_secs` (after a
//! `SIGHUP` that brought a new key file, or with `state_key_previous_file` at start), so that
//! no round in progress fails and no old key lives on. Verification is constant-time.
#![forbid(unsafe_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Largest sealed state accepted from a client, bytes.
pub const MAX_STATE: usize = 64 * 1024;
/// How far in the future a state's sealing time may be (instances' clocks differ a little).
pub const CLOCK_SKEW_SECS: u64 = 60;
/// Largest key file read, bytes (a key is 32 bytes, or 64 hex digits and a newline).
const MAX_KEY_FILE: u64 = 256;

/// The keys: the one that seals, and those still accepted for verification until their time.
struct Keys {
    current: Hmac<Sha256>,
    /// The key bytes of `current`, to notice that a reload brought the same key again.
    current_raw: [u8; 32],
    previous: Vec<(Hmac<Sha256>, Instant)>,
    ttl: Duration,
}

/// Set by [`Prepared::apply`] at broker start (and again on reload); every seal/open reads
/// it.
static KEYS: RwLock<Option<Keys>> = RwLock::new(None);

/// Why the `requestState` key could not be created or read (a start-up or reload error,
/// never a request's).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The kernel CSPRNG failed or returned fewer bytes: no predictable key is ever used.
    #[error("getrandom: cannot create the requestState key: {0}")]
    Random(String),
    /// A configured key file is unsafe or unreadable.
    #[error("http.state_key_file {0}")]
    File(String),
}

/// Draw 256 bits from `fill` (the kernel CSPRNG).
fn random_key(
    fill: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>,
) -> Result<[u8; 32], KeyError> {
    let mut k = [0u8; 32];
    match fill(&mut k) {
        Ok(32) => Ok(k),
        Ok(n) => Err(KeyError::Random(format!("{n} of 32 bytes"))),
        Err(e) => Err(KeyError::Random(e.to_string())),
    }
}

fn hmac(k: &[u8; 32]) -> Result<Hmac<Sha256>, KeyError> {
    // HMAC accepts a key of any length; the error is only for fixed-size MACs.
    <Hmac<Sha256> as KeyInit>::new_from_slice(k).map_err(|e| KeyError::Random(e.to_string()))
}

/// Read a key file: a regular file (not a symbolic link), no permission for group or others,
/// owned by root or this process's user; exactly 32 bytes, or 64 hex digits (one trailing
/// newline allowed). Errors name the file, never its content.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], KeyError> {
    let e = |m: String| KeyError::File(format!("{}: {m}", path.display()));
    let md = std::fs::symlink_metadata(path).map_err(|x| e(x.to_string()))?;
    if md.file_type().is_symlink() {
        return Err(e("is a symbolic link: refused".into()));
    }
    if !md.is_file() {
        return Err(e("is not a regular file".into()));
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(e(format!(
            "mode {mode:04o}: group or others may access the key (chmod 600)"
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if md.uid() != 0 && md.uid() != me {
        return Err(e(format!(
            "owned by uid {}, neither root nor this broker ({me})",
            md.uid()
        )));
    }
    if md.len() > MAX_KEY_FILE {
        return Err(e("too large for a key".into()));
    }
    let bytes = std::fs::read(path).map_err(|x| e(x.to_string()))?;
    if let Ok(k) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(k);
    }
    let text = std::str::from_utf8(&bytes).unwrap_or("");
    let hex = text.strip_suffix('\n').unwrap_or(text);
    let mut k = [0u8; 32];
    if hex.len() == 64 && hex::decode_to_slice(hex, &mut k).is_ok() {
        return Ok(k);
    }
    Err(e(
        "holds neither 32 bytes nor 64 hex digits (e.g. openssl rand -hex 32)".into(),
    ))
}

/// The keys a policy asks for, read and checked but not yet in force (a reload takes them only
/// once the whole policy is accepted).
#[derive(Debug)]
pub struct Prepared {
    current: Option<[u8; 32]>,
    previous: Option<[u8; 32]>,
    ttl: Duration,
}

/// Read the key files `http` names (none: a random key).
pub fn prepare(http: &mcpd_policy::HttpSettings) -> Result<Prepared, KeyError> {
    Ok(Prepared {
        current: http
            .state_key_file
            .as_deref()
            .map(read_key_file)
            .transpose()?,
        previous: http
            .state_key_previous_file
            .as_deref()
            .map(read_key_file)
            .transpose()?,
        ttl: Duration::from_secs(http.state_ttl_secs),
    })
}

impl Prepared {
    /// Put the keys in force. A key that differs from the one sealing until now demotes that
    /// one to verification only, for the ttl; the configured previous key, likewise. Without a
    /// key file the random key drawn at start stays.
    pub fn apply(self) -> Result<(), KeyError> {
        let mut guard = KEYS
            .write()
            .map_err(|_| KeyError::Random("lock poisoned".into()))?;
        let old = guard.take();
        let fresh = match (&self.current, &old) {
            (None, None) => Some(random_key(|k| {
                rustix::rand::getrandom(k, rustix::rand::GetRandomFlags::empty())
            })?),
            _ => None,
        };
        *guard = Some(self.over(old, fresh, Instant::now())?);
        Ok(())
    }

    /// The keys after this load, given those in force (`old`) and a fresh random key for
    /// when neither names one.
    fn over(
        self,
        old: Option<Keys>,
        fresh: Option<[u8; 32]>,
        now: Instant,
    ) -> Result<Keys, KeyError> {
        let raw = match (self.current, &old, fresh) {
            (Some(k), _, _) => k,
            (None, Some(o), _) => o.current_raw,
            (None, None, Some(f)) => f,
            (None, None, None) => return Err(KeyError::Random("no key".into())),
        };
        let mut previous: Vec<(Hmac<Sha256>, Instant)> = Vec::new();
        if let Some(o) = old {
            previous.extend(o.previous.into_iter().filter(|(_, until)| *until > now));
            if o.current_raw != raw {
                previous.push((o.current, now + self.ttl));
            }
        }
        if let Some(p) = self.previous.filter(|p| *p != raw) {
            previous.push((hmac(&p)?, now + self.ttl));
        }
        Ok(Keys {
            current: hmac(&raw)?,
            current_raw: raw,
            previous,
            ttl: self.ttl,
        })
    }
}

/// A random key, unless keys are in force already (the fuzz targets and tests). The broker
/// puts its keys in force at start with [`Prepared::apply`], before any request is read, so
/// that a failure is a start-up error and no request path can fail or panic for it.
pub fn ensure() -> Result<(), KeyError> {
    if KEYS.read().is_ok_and(|k| k.is_some()) {
        return Ok(());
    }
    prepare(&mcpd_policy::HttpSettings::default())?.apply()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(key: &Hmac<Sha256>, principal: &str, scope: &str, sealed: &[u8]) -> Hmac<Sha256> {
    let mut m = key.clone();
    for part in [
        b"mcpd-request-state-v2".as_slice(),
        principal.as_bytes(),
        scope.as_bytes(),
    ] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.update(sealed);
    m
}

/// Seal `payload` for `principal` and `scope` (e.g. `tool:NAME`); `None` without a key
/// (none put in force: sealing fails closed).
pub fn seal(principal: &str, scope: &str, payload: &[u8]) -> Option<String> {
    let guard = KEYS.read().ok()?;
    Some(seal_with(
        guard.as_ref()?,
        principal,
        scope,
        payload,
        now_secs(),
    ))
}

fn seal_with(keys: &Keys, principal: &str, scope: &str, payload: &[u8], iat: u64) -> String {
    let mut sealed = iat.to_be_bytes().to_vec();
    sealed.extend_from_slice(payload);
    let tag = mac(&keys.current, principal, scope, &sealed)
        .finalize()
        .into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&sealed),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// Verify a sealed state; `None` if it was altered, belongs to someone or something else, was
/// sealed with a key not (or no longer) accepted, is older than the ttl, or is malformed.
pub fn open(principal: &str, scope: &str, token: &str) -> Option<Vec<u8>> {
    let guard = KEYS.read().ok()?;
    open_with(
        guard.as_ref()?,
        principal,
        scope,
        token,
        now_secs(),
        Instant::now(),
    )
}

fn open_with(
    keys: &Keys,
    principal: &str,
    scope: &str,
    token: &str,
    wall: u64,
    now: Instant,
) -> Option<Vec<u8>> {
    if token.len() > MAX_STATE {
        return None;
    }
    let (p, t) = token.split_once('.')?;
    let sealed = URL_SAFE_NO_PAD.decode(p).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(t).ok()?;
    let iat = u64::from_be_bytes(sealed.get(..8)?.try_into().ok()?);
    let verified = std::iter::once(&keys.current)
        .chain(
            keys.previous
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(k, _)| k),
        )
        .any(|k| mac(k, principal, scope, &sealed).verify_slice(&tag).is_ok());
    if !verified {
        return None;
    }
    if iat > wall.saturating_add(CLOCK_SKEW_SECS) || wall.saturating_sub(iat) > keys.ttl.as_secs() {
        return None;
    }
    Some(sealed[8..].to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn prepared(current: Option<u8>, previous: Option<u8>, ttl: u64) -> Prepared {
        Prepared {
            current: current.map(|b| [b; 32]),
            previous: previous.map(|b| [b; 32]),
            ttl: Duration::from_secs(ttl),
        }
    }

    #[test]
    fn seals_bind_payload_principal_and_scope() {
        ensure().unwrap();
        let s = seal("alice", "tool:t", b"step-1").unwrap();
        assert_eq!(open("alice", "tool:t", &s).as_deref(), Some(&b"step-1"[..]));
        assert_eq!(open("bob", "tool:t", &s), None);
        assert_eq!(open("alice", "tool:u", &s), None);
        assert_eq!(open("alice", "tool:t", &format!("{s}-TAMPERED")), None);
        let (p, t) = s.split_once('.').unwrap_or_default();
        let forged = format!("{}.{t}", URL_SAFE_NO_PAD.encode(b"step-9"));
        assert_eq!(open("alice", "tool:t", &forged), None);
        assert_eq!(open("alice", "tool:t", p), None);
        assert_eq!(open("alice", "tool:t", ""), None);
    }

    /// Two instances with the same key file verify each other's states; another deployment's
    /// key does not; a state past the ttl, or from the future, is refused.
    #[test]
    fn a_shared_key_verifies_everywhere_within_the_ttl() {
        let now = Instant::now();
        let a = prepared(Some(1), None, 600).over(None, None, now).unwrap();
        let b = prepared(Some(1), None, 600).over(None, None, now).unwrap();
        let other = prepared(Some(2), None, 600).over(None, None, now).unwrap();
        let t = 1_000_000;
        let s = seal_with(&a, "alice", "tool:t", b"x", t);
        assert_eq!(
            open_with(&b, "alice", "tool:t", &s, t + 5, now).as_deref(),
            Some(&b"x"[..])
        );
        assert_eq!(open_with(&other, "alice", "tool:t", &s, t + 5, now), None);
        assert!(open_with(&b, "alice", "tool:t", &s, t + 600, now).is_some());
        assert_eq!(open_with(&b, "alice", "tool:t", &s, t + 601, now), None);
        assert!(open_with(&b, "alice", "tool:t", &s, t - CLOCK_SKEW_SECS, now).is_some());
        assert_eq!(
            open_with(&b, "alice", "tool:t", &s, t - CLOCK_SKEW_SECS - 1, now),
            None
        );
    }

    /// A rotation: the key that sealed until now still verifies for the ttl, then no more; the
    /// new key seals. The configured previous key likewise, from the load on.
    #[test]
    fn a_rotated_key_verifies_for_the_ttl_only() {
        let t0 = Instant::now();
        let old = prepared(Some(1), None, 60).over(None, None, t0).unwrap();
        let sealed_old = seal_with(&old, "a", "s", b"old", 5_000);
        let new = prepared(Some(2), None, 60)
            .over(Some(old), None, t0)
            .unwrap();
        let sealed_new = seal_with(&new, "a", "s", b"new", 5_000);
        assert!(open_with(
            &new,
            "a",
            "s",
            &sealed_old,
            5_001,
            t0 + Duration::from_secs(59)
        )
        .is_some());
        assert_eq!(
            open_with(
                &new,
                "a",
                "s",
                &sealed_old,
                5_001,
                t0 + Duration::from_secs(61)
            ),
            None
        );
        assert!(open_with(
            &new,
            "a",
            "s",
            &sealed_new,
            5_001,
            t0 + Duration::from_secs(61)
        )
        .is_some());
        // The same key again (a reload that changed something else): nothing more demoted;
        // key 1 keeps its window, and once it has passed it is dropped.
        let same = prepared(Some(2), None, 60)
            .over(Some(new), None, t0)
            .unwrap();
        assert_eq!(same.previous.len(), 1);
        let later = prepared(Some(2), None, 60)
            .over(Some(same), None, t0 + Duration::from_secs(61))
            .unwrap();
        assert!(later.previous.is_empty());
        // At start with state_key_previous_file.
        let started = prepared(Some(3), Some(2), 60).over(None, None, t0).unwrap();
        assert!(open_with(&started, "a", "s", &sealed_new, 5_001, t0).is_some());
        assert_eq!(
            open_with(
                &started,
                "a",
                "s",
                &sealed_new,
                5_001,
                t0 + Duration::from_secs(61)
            ),
            None
        );
        // No key file: the random key in force stays; none at all: a fresh one.
        let r = prepared(None, None, 60)
            .over(Some(started), None, t0)
            .unwrap();
        assert_eq!(r.current_raw, [3; 32]);
        let f = prepared(None, None, 60)
            .over(None, Some([9; 32]), t0)
            .unwrap();
        assert_eq!(f.current_raw, [9; 32]);
    }

    #[test]
    fn key_files_are_checked_like_secrets() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("state.key");
        let write = |content: &[u8], mode: u32| {
            std::fs::write(&f, content).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&[7u8; 32], 0o600);
        assert_eq!(read_key_file(&f).unwrap(), [7u8; 32]);
        write(format!("{}\n", "ab".repeat(32)).as_bytes(), 0o400);
        assert_eq!(read_key_file(&f).unwrap(), [0xab; 32]);
        write(&[7u8; 32], 0o640);
        let e = read_key_file(&f).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        write(b"short", 0o600);
        let e = read_key_file(&f).unwrap_err().to_string();
        assert!(e.contains("neither 32 bytes nor 64 hex digits"), "{e}");
        assert!(!e.contains("short"), "the content is never echoed: {e}");
        let link = d.path().join("link.key");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = read_key_file(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        if rustix::process::geteuid().is_root() {
            write(&[7u8; 32], 0o600);
            std::os::unix::fs::chown(&f, Some(12345), None).unwrap();
            let e = read_key_file(&f).unwrap_err().to_string();
            assert!(e.contains("owned by uid 12345"), "{e}");
        }
        assert!(read_key_file(&d.path().join("missing")).is_err());
    }

    /// A CSPRNG failure (or short read) is an error for the start-up path, not a panic and
    /// never a weak key.
    #[test]
    fn a_failing_csprng_is_an_error_not_a_key() {
        let e = random_key(|_| Err(rustix::io::Errno::NOSYS)).unwrap_err();
        assert!(e.to_string().starts_with("getrandom: cannot create"), "{e}");
        let e = random_key(|_| Ok(16)).unwrap_err();
        assert!(e.to_string().contains("16 of 32 bytes"), "{e}");
        assert!(random_key(|k| Ok(k.len())).is_ok());
    }
}
