//! Bearer tokens for the tests: an ES256 key pair with its key id, its JWK, and tokens signed
//! with it (jsonwebtoken), as an identity provider would issue them.

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Base64url without padding (JWT segments, JWK coordinates).
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An ES256 key pair with its key id.
pub struct Key {
    /// The key id tokens name.
    pub kid: String,
    /// The key pair.
    pub kp: rcgen::KeyPair,
}

impl Key {
    /// A fresh key pair.
    pub fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            kp: rcgen::KeyPair::generate().unwrap(),
        }
    }
    /// Its public JWK.
    pub fn jwk(&self) -> Value {
        let raw = self.kp.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
               "x": b64(&raw[1..33]), "y": b64(&raw[33..])})
    }
    /// A token with these claims, naming `kid` (or none) in its header.
    pub fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_string);
        let k = EncodingKey::from_ec_pem(self.kp.serialize_pem().as_bytes()).unwrap();
        encode(&h, claims, &k).unwrap()
    }
    /// A token with these claims, naming this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), claims)
    }
}
