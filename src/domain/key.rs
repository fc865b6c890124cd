//! The seller's RSA public key that verifies RegisterUsage tokens, one per key version.

use std::fmt;
use std::path::PathBuf;

use jsonwebtoken::DecodingKey;

pub use super::anchor_rules::MIN_RSA_BITS;
use super::anchor_rules::{self, KeyProblem};
use super::files::FileError;

/// The largest key file read: a PEM public key is under 2 KiB, even at 8192 bits.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// Why no usable verifying key was found.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no public key configured")]
    Missing,
    #[error("both a public key file and inline public key are configured")]
    Conflicting,
    #[error("this build embeds its trusted public keys and refuses run-time keys")]
    RuntimeKeyRefused,
    #[error("this build embeds no public key for version {version}")]
    NoEmbeddedKey { version: u32, available: Vec<u32> },
    #[error("cannot read public key file {path}: {source}")]
    Unreadable { path: PathBuf, source: FileError },
    #[error("public key from {origin} is not usable: {reason}")]
    Invalid { origin: KeySource, reason: String },
    #[error("public key from {origin} is RSA-{bits}, below the {MIN_RSA_BITS}-bit minimum")]
    Weak { origin: KeySource, bits: u32 },
    #[error("public key from {origin} is {name}, whose private half is published")]
    Published {
        origin: KeySource,
        name: &'static str,
    },
}

/// Where the verifying key came from, for logs and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Inline,
    Embedded,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Inline => f.write_str("ENTITLEMENT_GATE_PUBLIC_KEY/--public-key"),
            KeySource::Embedded => f.write_str("the keys embedded in this build"),
        }
    }
}

/// The key a run asks for: its version, and the run-time key if one was configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRequest {
    pub version: u32,
    pub file: Option<PathBuf>,
    pub pem: Option<String>,
}

/// The seller's RSA public key for one `PublicKeyVersion`, checked to be at least 2048 bits.
#[derive(Clone)]
pub struct VerifyingKey {
    pub(crate) decoding: DecodingKey,
    pub version: u32,
    pub bits: u32,
    pub source: KeySource,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("version", &self.version)
            .field("bits", &self.bits)
            .field("source", &self.source)
            .finish()
    }
}

impl VerifyingKey {
    /// Parses an RSA public key from PEM: SPKI (`BEGIN PUBLIC KEY`, what AWS hands sellers) or
    /// PKCS#1 (`BEGIN RSA PUBLIC KEY`), under the same rule `build.rs` applies to embedded keys.
    pub fn from_pem(pem: &str, version: u32, source: KeySource) -> Result<Self, KeyError> {
        let key = anchor_rules::rsa_public_key(pem).map_err(|problem| match problem {
            KeyProblem::Weak { bits } => KeyError::Weak {
                origin: source.clone(),
                bits,
            },
            KeyProblem::PublishedSample { name } => KeyError::Published {
                origin: source.clone(),
                name,
            },
            problem => KeyError::Invalid {
                origin: source.clone(),
                reason: problem.to_string(),
            },
        })?;
        // The rule read the DER; aws-lc-rs has the last word on whether it is a usable key.
        aws_lc_rs::rsa::PublicKey::from_der(&key.pkcs1).map_err(|e| KeyError::Invalid {
            origin: source.clone(),
            reason: format!("not an RSA public key ({e})"),
        })?;
        Ok(Self {
            decoding: DecodingKey::from_rsa_der(&key.pkcs1),
            version,
            bits: key.bits,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metering_emulator::keys::{ec_p256_public_pem, shared_2048, RsaKey};

    #[test]
    fn accepts_spki_and_pkcs1_rsa_keys_of_2048_bits_or_more() {
        let key = shared_2048();
        let spki = VerifyingKey::from_pem(&key.public_spki_pem, 1, KeySource::Inline).unwrap();
        assert_eq!(spki.bits, 2048);
        let pkcs1 = VerifyingKey::from_pem(&key.public_pkcs1_pem, 1, KeySource::Inline).unwrap();
        assert_eq!(pkcs1.bits, 2048);
        let big = VerifyingKey::from_pem(
            &RsaKey::generate(3072).public_spki_pem,
            2,
            KeySource::Inline,
        );
        assert_eq!(big.unwrap().bits, 3072);
    }

    #[test]
    fn refuses_the_1024_bit_key_from_aws_java_sample() {
        let err = VerifyingKey::from_pem(
            anchor_rules::AWS_JAVA_SAMPLE_PUBLIC_KEY,
            1,
            KeySource::Inline,
        )
        .unwrap_err();
        assert!(matches!(err, KeyError::Weak { bits: 1024, .. }), "{err:?}");
    }

    #[test]
    fn refuses_private_keys_garbage_and_non_rsa_keys() {
        let key = shared_2048();
        let private = VerifyingKey::from_pem(&key.private_pkcs8_pem, 1, KeySource::Inline);
        assert!(format!("{:?}", private.unwrap_err()).contains("never the private one"));
        for bad in [
            "not a pem",
            "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
            &ec_p256_public_pem(),
        ] {
            let err = VerifyingKey::from_pem(bad, 1, KeySource::Inline).unwrap_err();
            assert!(matches!(err, KeyError::Invalid { .. }), "{bad:?}: {err:?}");
        }
    }
}
