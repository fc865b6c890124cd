//! The nonce that binds a RegisterUsage token to this run.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::TryRngCore as _;

/// Bytes of OS randomness per nonce: 256 bits, comfortably above the 128-bit floor.
const NONCE_BYTES: usize = 32;

/// A fresh random nonce: 43 URL-safe characters, well under RegisterUsage's 255.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce(String);

impl Nonce {
    /// Draws a new nonce from the operating system's CSPRNG; fails rather than fall back.
    pub fn generate() -> Result<Self, rand::rand_core::OsError> {
        let mut bytes = [0u8; NONCE_BYTES];
        OsRng.try_fill_bytes(&mut bytes)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nonces_are_url_safe_long_enough_and_fresh() {
        let nonces: HashSet<String> = (0..1000).map(|_| Nonce::generate().unwrap().0).collect();
        assert_eq!(nonces.len(), 1000, "a nonce repeated");
        for nonce in &nonces {
            assert_eq!(nonce.len(), 43);
            assert!(nonce
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            assert_eq!(URL_SAFE_NO_PAD.decode(nonce).unwrap().len() * 8, 256);
        }
    }
}
