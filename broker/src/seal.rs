//! Integrity-protected `requestState` for stateless-era input-required rounds.
//!
//! The client carries the state between rounds and controls it, so the broker seals what the
//! worker asked to get back: `base64url(payload) "." base64url(HMAC-SHA256(key, context))` where
//! the context binds the payload to the principal and to the tool or prompt it belongs to. The
//! key is 256 random bits drawn at broker start: a state never verifies on another broker or
//! after a restart (the client then starts over). Verification is constant-time.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Largest sealed state accepted from a client, bytes.
pub const MAX_STATE: usize = 64 * 1024;

static KEY: OnceLock<[u8; 32]> = OnceLock::new();

fn key() -> &'static [u8; 32] {
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        // The kernel CSPRNG; failure here means no randomness at all: refuse to continue with a
        // predictable key.
        if rustix::rand::getrandom(&mut k, rustix::rand::GetRandomFlags::empty()) != Ok(32) {
            panic!("getrandom failed: cannot create the requestState key");
        }
        k
    })
}

fn mac(principal: &str, scope: &str, payload: &[u8]) -> Hmac<Sha256> {
    // new_from_slice accepts any key length for HMAC.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key()).unwrap_or_else(|_| unreachable!());
    for part in [
        b"mcpd-request-state-v1".as_slice(),
        principal.as_bytes(),
        scope.as_bytes(),
    ] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.update(payload);
    m
}

/// Seal `payload` for `principal` and `scope` (e.g. `tool:NAME`).
pub fn seal(principal: &str, scope: &str, payload: &[u8]) -> String {
    let tag = mac(principal, scope, payload).finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag)
    )
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
    mac(principal, scope, &payload).verify_slice(&tag).ok()?;
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_bind_payload_principal_and_scope() {
        let s = seal("alice", "tool:t", b"step-1");
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
}
