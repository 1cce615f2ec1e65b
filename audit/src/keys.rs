//! Ed25519 checkpoint keys: loading and generation.
//!
//! Key files are PEM: the private key as PKCS#8 (`-----BEGIN PRIVATE KEY-----`), the public key
//! as SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), the formats `openssl genpkey
//! -algorithm ed25519` / `openssl pkey -pubout` produce. As a fallback, a file holding exactly
//! 64 hex digits (optionally followed by a newline) is read as the raw 32-byte seed (private) or
//! the raw 32-byte public key.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::AuditError;

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

fn bad(path: &Path, what: &str) -> AuditError {
    AuditError::Unavailable(format!("{}: not a valid {what}", path.display()))
}

/// Loads a signing key (PKCS#8 PEM or 64 hex digits of seed).
pub(crate) fn load_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuditError::Unavailable(format!("checkpoint key {}: {e}", path.display())))?;
    if text.contains("-----BEGIN") {
        return SigningKey::from_pkcs8_pem(&text)
            .map_err(|_| bad(path, "Ed25519 PKCS#8 private key"));
    }
    hex32(&text)
        .map(|b| SigningKey::from_bytes(&b))
        .ok_or_else(|| bad(path, "Ed25519 private key"))
}

/// Loads a verifying key (SPKI PEM or 64 hex digits).
pub(crate) fn load_verifying_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuditError::Unavailable(format!("public key {}: {e}", path.display())))?;
    if text.contains("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(&text)
            .map_err(|_| bad(path, "Ed25519 public key"));
    }
    hex32(&text)
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| bad(path, "Ed25519 public key"))
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), AuditError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| AuditError::Unavailable(format!("{}: {e}", path.display())))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Generates a fresh Ed25519 key pair for signed checkpoints.
///
/// Writes the private key as PKCS#8 PEM to `private_out` (created with mode 0600; an existing
/// file is never overwritten) and the public key as SPKI PEM to `public_out` (mode 0644). Give
/// the private key to the broker (`AuditConfig::checkpoint_key`) and keep the public key with the
/// verifier (`verify(.., Some(public_out))`).
pub fn generate_key(private_out: &Path, public_out: &Path) -> Result<(), AuditError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| AuditError::Unavailable(format!("getrandom: {e}")))?;
    let sk = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let pem = sk
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| AuditError::Unavailable(format!("encoding private key: {e}")))?;
    let pubpem = sk
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| AuditError::Unavailable(format!("encoding public key: {e}")))?;
    write_new(private_out, pem.as_bytes(), 0o600)?;
    write_new(public_out, pubpem.as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::{Signer as _, Verifier as _};

    #[test]
    fn generate_and_load() {
        let d = tempfile::tempdir().unwrap();
        let (sk, pk) = (d.path().join("k"), d.path().join("k.pub"));
        generate_key(&sk, &pk).unwrap();
        assert!(generate_key(&sk, &pk).is_err(), "must not overwrite");
        let s = load_signing_key(&sk).unwrap();
        let p = load_verifying_key(&pk).unwrap();
        let sig = s.sign(b"m");
        assert!(p.verify(b"m", &sig).is_ok());
        // hex forms
        std::fs::write(d.path().join("h"), hex::encode(s.to_bytes()) + "\n").unwrap();
        std::fs::write(d.path().join("h.pub"), hex::encode(p.to_bytes())).unwrap();
        assert_eq!(
            load_signing_key(&d.path().join("h")).unwrap().to_bytes(),
            s.to_bytes()
        );
        assert_eq!(load_verifying_key(&d.path().join("h.pub")).unwrap(), p);
        std::fs::write(d.path().join("bad"), "nope").unwrap();
        assert!(load_signing_key(&d.path().join("bad")).is_err());
    }
}
