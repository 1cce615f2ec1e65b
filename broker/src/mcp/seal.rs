//! Integrity-protected `requestState` for stateless-era input-required rounds.
//!
//! The client carries the state between rounds and controls it, so the broker seals what the
//! worker asked to get back: `base64url(payload) "." base64url(HMAC-SHA256(key, context))` where
//! the context binds the payload to the principal and to the tool or prompt it belongs to. The
//! key is 256 random bits drawn at broker start: a state never verifies on another broker or
//! after a restart (the client then starts over). Verification is constant-time.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Largest sealed state accepted from a client, bytes.
pub const MAX_STATE: usize = 64 * 1024;

/// The keyed HMAC, created once by [`init`] at broker start; every seal/open clones it.
static MAC: OnceLock<Hmac<Sha256>> = OnceLock::new();

/// Why the `requestState` key could not be created (a start-up error, never a request's).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The kernel CSPRNG failed or returned fewer bytes: no predictable key is ever used.
    #[error("getrandom: cannot create the requestState key: {0}")]
    Random(String),
}

/// Draw the 256-bit key from `fill` (the kernel CSPRNG in [`init`]) and key the HMAC.
fn keyed(
    fill: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>,
) -> Result<Hmac<Sha256>, KeyError> {
    let mut k = [0u8; 32];
    match fill(&mut k) {
        Ok(32) => {}
        Ok(n) => return Err(KeyError::Random(format!("{n} of 32 bytes"))),
        Err(e) => return Err(KeyError::Random(e.to_string())),
    }
    // HMAC accepts a key of any length; the error is only for fixed-size MACs.
    <Hmac<Sha256> as KeyInit>::new_from_slice(&k).map_err(|e| KeyError::Random(e.to_string()))
}

/// Create the key. Called once at broker start, before any request is read, so that a failure
/// is a start-up error (exit code `RUNTIME`) and no request path can fail or panic for it.
/// Calling it again keeps the first key.
pub fn init() -> Result<(), KeyError> {
    if MAC.get().is_some() {
        return Ok(());
    }
    let mac = keyed(|k| rustix::rand::getrandom(k, rustix::rand::GetRandomFlags::empty()))?;
    let _ = MAC.set(mac);
    Ok(())
}

/// `None` only if [`init`] was not called (a broker bug): sealing then fails closed.
fn mac(principal: &str, scope: &str, payload: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = MAC.get()?.clone();
    for part in [
        b"mcpd-request-state-v1".as_slice(),
        principal.as_bytes(),
        scope.as_bytes(),
    ] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.update(payload);
    Some(m)
}

/// Seal `payload` for `principal` and `scope` (e.g. `tool:NAME`); `None` without a key
/// ([`init`] not called).
pub fn seal(principal: &str, scope: &str, payload: &[u8]) -> Option<String> {
    let tag = mac(principal, scope, payload)?.finalize().into_bytes();
    Some(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag)
    ))
}

/// Verify a sealed state; `None` if it was altered, belongs to someone or something else, or is
/// malformed.
pub fn open(principal: &str, scope: &str, token: &str) -> Option<Vec<u8>> {
    if token.len() > MAX_STATE {
        return None;
    }
    let (p, t) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(p).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(t).ok()?;
    mac(principal, scope, &payload)?.verify_slice(&tag).ok()?;
    Some(payload)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seals_bind_payload_principal_and_scope() {
        init().unwrap();
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

    /// A CSPRNG failure (or short read) is an error for the start-up path, not a panic and
    /// never a weak key.
    #[test]
    fn a_failing_csprng_is_an_error_not_a_key() {
        let e = keyed(|_| Err(rustix::io::Errno::NOSYS)).unwrap_err();
        assert!(e.to_string().starts_with("getrandom: cannot create"), "{e}");
        let e = keyed(|_| Ok(16)).unwrap_err();
        assert!(e.to_string().contains("16 of 32 bytes"), "{e}");
        assert!(keyed(|k| Ok(k.len())).is_ok());
    }
}
