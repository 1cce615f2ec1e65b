//! The `requestState` tokens a client carries between input-required rounds: `open` must never
//! panic and never accept a token it did not seal. Base64url without padding is canonical, so
//! the only token `open` may accept for a payload is the one `seal` produces for it; a sealed
//! token altered in one byte, or opened for another principal or scope, is refused.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcpd::fuzzing::{open, seal};

#[derive(Debug, Arbitrary)]
struct Case {
    principal: String,
    scope: String,
    token: String,
    payload: Vec<u8>,
    flip: (usize, u8),
    other: String,
}

fuzz_target!(|c: Case| {
    // Arbitrary tokens.
    if let Some(p) = open(&c.principal, &c.scope, &c.token) {
        assert_eq!(
            seal(&c.principal, &c.scope, &p).as_deref(),
            Some(c.token.as_str()),
            "accepted a token it did not seal"
        );
    }
    // A real token, altered.
    let Some(t) = seal(&c.principal, &c.scope, &c.payload) else {
        panic!("seal failed");
    };
    if t.len() <= 64 * 1024 {
        assert_eq!(
            open(&c.principal, &c.scope, &t).as_deref(),
            Some(c.payload.as_slice())
        );
    }
    let mut bytes = t.clone().into_bytes();
    if !bytes.is_empty() {
        let i = c.flip.0 % bytes.len();
        bytes[i] ^= c.flip.1.max(1);
        if let Ok(altered) = String::from_utf8(bytes) {
            assert_eq!(
                open(&c.principal, &c.scope, &altered),
                None,
                "accepted an altered token"
            );
        }
    }
    if c.other != c.principal {
        assert_eq!(
            open(&c.other, &c.scope, &t),
            None,
            "accepted another principal's token"
        );
    }
    if c.other != c.scope {
        assert_eq!(
            open(&c.principal, &c.other, &t),
            None,
            "accepted another scope's token"
        );
    }
});
