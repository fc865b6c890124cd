//! Configuration: turns flags and environment variables into a validated [`CheckConfig`] before
//! any network call, so a typo never costs a metered RegisterUsage.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use jsonwebtoken::DecodingKey;

pub use crate::anchor_rules::MIN_RSA_BITS;
use crate::anchor_rules::{self, product_code_problem, KeyProblem};
use crate::files::{self, FileError};
use crate::metering::Backoff;
use crate::trust::TrustAnchors;

/// Why the configuration cannot be used. Every variant maps to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid command line: {detail}")]
    InvalidArgument {
        detail: String,
        /// The `--help` that explains the command, e.g. `entitlement-gate check --help`.
        help: String,
    },
    #[error("no product code configured")]
    MissingProductCode,
    #[error("product code {code:?} is invalid: {reason}")]
    InvalidProductCode { code: String, reason: &'static str },
    #[error("product code {code:?} is not one this build trusts")]
    UntrustedProductCode { code: String },
    #[error("no public key configured")]
    MissingKey,
    #[error("both a public key file and inline public key are configured")]
    ConflictingKeys,
    #[error("this build embeds its trusted public keys and refuses run-time keys")]
    RuntimeKeyRefused,
    #[error("this build embeds no public key for version {version}")]
    NoEmbeddedKey { version: u32, available: Vec<u32> },
    #[error("cannot read public key file {path}: {source}")]
    UnreadableKey { path: PathBuf, source: FileError },
    #[error("public key from {origin} is not usable: {reason}")]
    InvalidKey { origin: KeySource, reason: String },
    #[error("public key from {origin} is RSA-{bits}, below the {MIN_RSA_BITS}-bit minimum")]
    WeakKey { origin: KeySource, bits: u32 },
    #[error("public key from {origin} is {name}, whose private half is published")]
    PublishedKey {
        origin: KeySource,
        name: &'static str,
    },
    #[error("handoff directory {path} is not a writable directory: {reason}")]
    HandoffDir { path: PathBuf, reason: String },
    #[error("no AWS Region found")]
    NoRegion,
    #[error("{variable}={} is not usable: {problem}", path.display())]
    AwsFile {
        variable: &'static str,
        path: PathBuf,
        problem: FileError,
    },
    #[error("the RegisterUsage request could not be built: {0}")]
    RequestNotBuilt(String),
    #[error("a token needs the nonce it was issued for")]
    MissingNonce,
    #[error("nothing to verify: no handoff file and no token")]
    NoTokenGiven,
    #[error("cannot start {program}: {reason}")]
    ProgramNotStarted { program: String, reason: String },
}

impl ConfigError {
    /// A stable identifier for machines, in JSON logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigError::InvalidArgument { .. } => "usage",
            ConfigError::MissingProductCode => "missing_product_code",
            ConfigError::InvalidProductCode { .. } => "invalid_product_code",
            ConfigError::UntrustedProductCode { .. } => "untrusted_product_code",
            ConfigError::MissingKey => "missing_key",
            ConfigError::ConflictingKeys => "conflicting_keys",
            ConfigError::RuntimeKeyRefused => "runtime_key_refused",
            ConfigError::NoEmbeddedKey { .. } => "no_embedded_key",
            ConfigError::UnreadableKey { .. } => "unreadable_key",
            ConfigError::InvalidKey { .. } => "invalid_key",
            ConfigError::WeakKey { .. } => "weak_key",
            ConfigError::PublishedKey { .. } => "published_key",
            ConfigError::HandoffDir { .. } => "handoff_dir",
            ConfigError::NoRegion => "no_region",
            ConfigError::AwsFile { .. } => "aws_file",
            ConfigError::RequestNotBuilt(_) => "request_not_built",
            ConfigError::MissingNonce => "missing_nonce",
            ConfigError::NoTokenGiven => "no_token",
            ConfigError::ProgramNotStarted { .. } => "program_not_started",
        }
    }
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

/// A product code that satisfies the RegisterUsage model: 1-255 of `[-a-zA-Z0-9/=:_.@]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductCode(String);

impl ProductCode {
    pub fn parse(code: &str) -> Result<Self, ConfigError> {
        match product_code_problem(code) {
            Some(reason) => Err(ConfigError::InvalidProductCode {
                code: code.to_owned(),
                reason,
            }),
            None => Ok(Self(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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
    pub fn from_pem(pem: &str, version: u32, source: KeySource) -> Result<Self, ConfigError> {
        let key = anchor_rules::rsa_public_key(pem).map_err(|problem| match problem {
            KeyProblem::Weak { bits } => ConfigError::WeakKey {
                origin: source.clone(),
                bits,
            },
            KeyProblem::PublishedSample { name } => ConfigError::PublishedKey {
                origin: source.clone(),
                name,
            },
            problem => ConfigError::InvalidKey {
                origin: source.clone(),
                reason: problem.to_string(),
            },
        })?;
        // The rule read the DER; aws-lc-rs has the last word on whether it is a usable key.
        aws_lc_rs::rsa::PublicKey::from_der(&key.pkcs1).map_err(|e| ConfigError::InvalidKey {
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

/// The longest duration any option takes: a run bound beyond a day is a typo, and larger values
/// overflow the clock arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses durations as operators write them (`90s`, `2m`, `1m30s`, `2min`, `1.5s`, `1500ms`,
/// `1h`; the `humantime` syntax); a bare number means seconds. Zero and anything above
/// [`MAX_DURATION`] are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like 90s, 1m30s or 2h ({e})"))?,
    };
    if duration.is_zero() {
        return Err("the duration must be greater than zero".to_owned());
    }
    if duration > MAX_DURATION {
        return Err(format!(
            "{text:?} is longer than the {}h maximum",
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Ok(duration)
}

/// The largest key file read: a PEM public key is under 2 KiB, even at 8192 bits.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// Which product and which key: shared by every command that checks a token.
#[derive(Debug, Clone, Default, Args)]
pub struct ProductArgs {
    /// AWS Marketplace product code of the paid product.
    #[arg(long, env = "ENTITLEMENT_GATE_PRODUCT_CODE")]
    pub product_code: Option<String>,

    /// Public key version sent to RegisterUsage; selects the key that verifies the token.
    #[arg(long, env = "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub public_key_version: u32,

    /// PEM file with the seller's RSA public key for that version.
    #[arg(long, env = "ENTITLEMENT_GATE_PUBLIC_KEY_FILE", value_name = "PATH")]
    pub public_key_file: Option<PathBuf>,

    /// The seller's RSA public key as PEM text (`--public-key "$(cat key.pem)"` works: the
    /// value may start with dashes).
    #[arg(
        long,
        env = "ENTITLEMENT_GATE_PUBLIC_KEY",
        value_name = "PEM",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub public_key: Option<String>,
}

impl ProductArgs {
    /// Validates the product code and loads the key, honouring this build's trust anchors.
    pub fn resolve(
        &self,
        anchors: &TrustAnchors,
    ) -> Result<(ProductCode, VerifyingKey), ConfigError> {
        Ok((self.product_code(anchors)?, self.key(anchors)?))
    }

    /// The product code, checked against the RegisterUsage model and the trusted list.
    pub fn product_code(&self, anchors: &TrustAnchors) -> Result<ProductCode, ConfigError> {
        let code = self
            .product_code
            .as_deref()
            .ok_or(ConfigError::MissingProductCode)?;
        let product_code = ProductCode::parse(code)?;
        if !anchors.trusts_product_code(code) {
            return Err(ConfigError::UntrustedProductCode {
                code: code.to_owned(),
            });
        }
        Ok(product_code)
    }

    /// The verifying key for the configured version: embedded in a locked build, else run-time.
    pub fn key(&self, anchors: &TrustAnchors) -> Result<VerifyingKey, ConfigError> {
        let version = self.public_key_version;
        if !anchors.keys.is_empty() {
            if self.public_key_file.is_some() || self.public_key.is_some() {
                return Err(ConfigError::RuntimeKeyRefused);
            }
            let pem =
                anchors
                    .key_for_version(version)
                    .ok_or_else(|| ConfigError::NoEmbeddedKey {
                        version,
                        available: anchors.key_versions(),
                    })?;
            return VerifyingKey::from_pem(pem, version, KeySource::Embedded);
        }
        match (&self.public_key_file, &self.public_key) {
            (Some(_), Some(_)) => Err(ConfigError::ConflictingKeys),
            (None, None) => Err(ConfigError::MissingKey),
            (None, Some(pem)) => VerifyingKey::from_pem(pem, version, KeySource::Inline),
            (Some(path), None) => {
                let pem =
                    files::read_limited_to_string(path, MAX_KEY_FILE_BYTES).map_err(|source| {
                        ConfigError::UnreadableKey {
                            path: path.clone(),
                            source,
                        }
                    })?;
                VerifyingKey::from_pem(&pem, version, KeySource::File(path.clone()))
            }
        }
    }
}

/// Flags and environment variables of `entitlement-gate check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub product: ProductArgs,

    /// Bound on the whole run (Region, credentials, every RegisterUsage attempt, verification).
    #[arg(long, env = "ENTITLEMENT_GATE_DEADLINE", default_value = "120s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub deadline: Duration,

    /// Bound on one RegisterUsage attempt; a slower attempt is retried.
    #[arg(long, env = "ENTITLEMENT_GATE_ATTEMPT_TIMEOUT", default_value = "10s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub attempt_timeout: Duration,

    /// Jitter window before the first retry; it doubles with each retry up to --retry-cap.
    /// The defaults were tuned on a 200-gate storm against the 5 calls/s quota (README).
    #[arg(long, env = "ENTITLEMENT_GATE_RETRY_BASE", default_value = "2s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub retry_base: Duration,

    /// Largest jitter window between retries (each wait is uniform in [0, window]).
    #[arg(long, env = "ENTITLEMENT_GATE_RETRY_CAP", default_value = "8s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub retry_cap: Duration,

    /// Directory (e.g. a shared emptyDir) that receives entitlement.json on success.
    #[arg(long, env = "ENTITLEMENT_GATE_HANDOFF_DIR", value_name = "DIR")]
    pub handoff_dir: Option<PathBuf>,

    /// Region override for local testing only; on ECS/EKS the platform sets AWS_REGION.
    #[arg(long, env = "ENTITLEMENT_GATE_REGION")]
    pub region: Option<String>,
}

/// A validated configuration for one `check` run.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub product_code: ProductCode,
    pub key: VerifyingKey,
    pub deadline: Duration,
    pub attempt_timeout: Duration,
    pub backoff: Backoff,
    pub handoff_dir: Option<PathBuf>,
    pub region_override: Option<String>,
}

impl CheckArgs {
    pub fn validate(&self, anchors: &TrustAnchors) -> Result<CheckConfig, ConfigError> {
        let (product_code, key) = self.product.resolve(anchors)?;
        if let Some(dir) = &self.handoff_dir {
            check_handoff_dir(dir)?;
        }
        Ok(CheckConfig {
            product_code,
            key,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout.min(self.deadline),
            backoff: Backoff {
                base: self.retry_base,
                cap: self.retry_cap.max(self.retry_base),
            },
            handoff_dir: self.handoff_dir.clone(),
            region_override: self.region.clone(),
        })
    }
}

/// Proves the handoff directory writable by creating and removing a file in it, before any
/// metered call: mode bits alone miss read-only mounts, ownership and full volumes.
fn check_handoff_dir(dir: &Path) -> Result<(), ConfigError> {
    let reason = match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => "it is not a directory".to_owned(),
        Ok(_) => match tempfile::Builder::new()
            .prefix(".entitlement-gate-probe")
            .tempfile_in(dir)
        {
            Ok(probe) => {
                // Dropping the probe removes it; a failure to remove is caught by the next write.
                drop(probe);
                return Ok(());
            }
            Err(e) => {
                let (user, group) = files::effective_ids();
                format!("cannot create a file in it as user {user} (group {group}): {e}")
            }
        },
        Err(e) => e.to_string(),
    };
    Err(ConfigError::HandoffDir {
        path: dir.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use metering_emulator::keys::{
        ec_p256_public_pem, shared_2048, RsaKey, AWS_JAVA_SAMPLE_1024_BIT_PUBLIC_KEY,
    };

    fn product_args(code: &str, pem: &str) -> ProductArgs {
        ProductArgs {
            product_code: Some(code.to_owned()),
            public_key_version: 1,
            public_key_file: None,
            public_key: Some(pem.to_owned()),
        }
    }

    #[test]
    fn product_codes_follow_the_register_usage_model() {
        assert!(ProductCode::parse("6ddn58fjsl1cb6yfd8r9j7dzx").is_ok());
        assert!(ProductCode::parse("a-b/c=d:e_f.g@h").is_ok());
        assert!(ProductCode::parse(&"a".repeat(255)).is_ok());
        for bad in ["", "has space", "semi;colon", "ünï", &"a".repeat(256)] {
            assert!(
                matches!(
                    ProductCode::parse(bad),
                    Err(ConfigError::InvalidProductCode { .. })
                ),
                "{bad:?} should be refused"
            );
        }
    }

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
        let err = VerifyingKey::from_pem(AWS_JAVA_SAMPLE_1024_BIT_PUBLIC_KEY, 1, KeySource::Inline)
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::WeakKey { bits: 1024, .. }),
            "{err:?}"
        );
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
            assert!(
                matches!(err, ConfigError::InvalidKey { .. }),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn open_build_requires_exactly_one_run_time_key() {
        let pem = shared_2048().public_spki_pem.clone();
        let mut args = product_args("prod", &pem);
        assert!(args.resolve(&TrustAnchors::OPEN).is_ok());
        args.public_key_file = Some("/nonexistent".into());
        assert!(matches!(
            args.resolve(&TrustAnchors::OPEN),
            Err(ConfigError::ConflictingKeys)
        ));
        args.public_key = None;
        assert!(matches!(
            args.resolve(&TrustAnchors::OPEN),
            Err(ConfigError::UnreadableKey { .. })
        ));
        args.public_key_file = None;
        assert!(matches!(
            args.resolve(&TrustAnchors::OPEN),
            Err(ConfigError::MissingKey)
        ));
        args.product_code = None;
        assert!(matches!(
            args.resolve(&TrustAnchors::OPEN),
            Err(ConfigError::MissingProductCode)
        ));
    }

    #[test]
    fn locked_build_refuses_untrusted_codes_and_run_time_keys() {
        let pem: &'static str = shared_2048().public_spki_pem.clone().leak();
        let keys: &'static [(u32, &'static str)] = Box::leak(Box::new([(1, pem)]));
        let anchors = TrustAnchors {
            product_codes: Some(&["trusted"]),
            keys,
        };
        let mut args = product_args("other", pem);
        assert!(matches!(
            args.resolve(&anchors),
            Err(ConfigError::UntrustedProductCode { .. })
        ));
        args.product_code = Some("trusted".into());
        assert!(matches!(
            args.resolve(&anchors),
            Err(ConfigError::RuntimeKeyRefused)
        ));
        args.public_key = None;
        let (_, key) = args.resolve(&anchors).unwrap();
        assert_eq!(key.source, KeySource::Embedded);
        args.public_key_version = 2;
        assert!(matches!(
            args.resolve(&anchors),
            Err(ConfigError::NoEmbeddedKey { version: 2, .. })
        ));
    }

    #[test]
    fn durations_accept_what_operators_write() {
        for (text, expected) in [
            ("90s", Duration::from_secs(90)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("1500ms", Duration::from_millis(1500)),
            ("1h", Duration::from_secs(3600)),
            ("45", Duration::from_secs(45)),
            (" 24h ", MAX_DURATION),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        for bad in ["", "s", "0s", "0", "-1s", "1.5", "ten", "25h", "2d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let huge = parse_duration("18446744073709551615s").unwrap_err();
        assert!(huge.contains("maximum"), "{huge}");
    }

    #[test]
    fn handoff_dir_must_exist_and_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_handoff_dir(dir.path()).is_ok());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(check_handoff_dir(&file).is_err());
        assert!(check_handoff_dir(&dir.path().join("missing")).is_err());
    }
}
