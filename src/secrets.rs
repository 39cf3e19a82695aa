//! Secret values and random tokens: [`Secret`] can be used but never printed.
//!
//! A `Secret` has no `Serialize` and its `Debug`/`Display` print `***`, so it cannot reach a reply,
//! a log line or an error by accident. This module draws randomness; it does no file IO.

use std::fmt;

/// A value that must never be shown: passwords, bearer tokens, provider keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself, for the few places that must hand it on (a child's environment, an auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `n_bytes` of OS randomness as lowercase hex (the original used `secrets.token_hex`).
pub(crate) fn random_hex(n_bytes: usize) -> Secret {
    let mut bytes = vec![0u8; n_bytes];
    // The OS random source failing is not something a caller can recover from.
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    Secret(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random number, for jitter.
pub(crate) fn random_u16() -> u16 {
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    u16::from_le_bytes(bytes)
}

/// A short random identifier (not secret), for launch ids and temporary names.
pub(crate) fn random_id() -> String {
    random_hex(6).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
    }

    #[test]
    fn tokens_are_hex_of_the_asked_length_and_differ() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
