//! Offline re-verification: lets the main container (or a seller's CI) confirm, without calling
//! AWS, that the init container really verified a token for this product.
//!
//! ```no_run
//! use std::time::{Duration, SystemTime};
//! use entitlement_gate::config::{KeySource, ProductCode, VerifyingKey};
//! use entitlement_gate::verify::Requirements;
//! use entitlement_gate::workload;
//!
//! # async fn check() -> Result<(), Box<dyn std::error::Error>> {
//! let pem = std::fs::read_to_string("/etc/my-product/marketplace-key.pem")?;
//! let product_code = ProductCode::parse("abc123xyz")?;
//! let key = VerifyingKey::from_pem(&pem, 1, KeySource::Inline)?;
//! // The pod or task this process runs in: the gate bound its token to the same one.
//! let workload = workload::resolve(|name| std::env::var(name).ok(), Duration::from_secs(2)).await?;
//! let requirements = Requirements {
//!     product_code: &product_code,
//!     key: &key,
//!     workload: &workload,
//!     max_age: Some(Duration::from_secs(3600)),
//! };
//! let token = requirements.verify_handoff_file(
//!     "/var/run/entitlement-gate/entitlement.json".as_ref(),
//!     SystemTime::now(),
//! )?;
//! println!("entitled since {}", token.issued_at);
//! # Ok(()) }
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;

use crate::check::epoch_seconds;
use crate::config::{parse_duration, ConfigError, ProductArgs, ProductCode, VerifyingKey};
use crate::handoff::{self, Handoff};
use crate::nonce::{self, NonceProblem};
use crate::outcome::GateError;
use crate::token::{self, Expected, TokenError, VerifiedToken, MAX_TOKEN_BYTES};
use crate::trust::TrustAnchors;
use crate::workload::{self, WorkloadId};

/// What a re-check demands of a token: the same rules as `check`, a nonce bound to this
/// workload, and an optional age limit.
#[derive(Debug, Clone, Copy)]
pub struct Requirements<'a> {
    pub product_code: &'a ProductCode,
    pub key: &'a VerifyingKey,
    /// The workload this process runs in: the token's nonce must be bound to it.
    pub workload: &'a WorkloadId,
    /// Refuse tokens whose `iat` is older than this.
    pub max_age: Option<Duration>,
}

impl Requirements<'_> {
    /// Verifies a token against the nonce it was issued for, and that nonce against this
    /// workload.
    pub fn verify_token(
        &self,
        token: &str,
        nonce: &str,
        now: SystemTime,
    ) -> Result<VerifiedToken, TokenError> {
        let now = epoch_seconds(now);
        let expected = Expected {
            product_code: self.product_code.as_str(),
            nonce,
            public_key_version: self.key.version,
        };
        let verified = token::verify(token, self.key, &expected, now)?;
        nonce::check_binding(&verified.nonce, self.workload).map_err(|problem| match problem {
            NonceProblem::NotWorkloadBound => TokenError::NonceNotWorkloadBound,
            NonceProblem::OtherWorkload => TokenError::NonceForOtherWorkload {
                identified_by: self.workload.source,
            },
        })?;
        if let Some(max_age) = self.max_age {
            if verified.issued_at.saturating_add(max_age.as_secs()) < now {
                return Err(TokenError::TooOld {
                    iat: verified.issued_at,
                    max_age_secs: max_age.as_secs(),
                    now,
                });
            }
        }
        Ok(verified)
    }

    /// Verifies a handoff: its token, bound to the nonce recorded beside it.
    pub fn verify_handoff(
        &self,
        handoff: &Handoff,
        now: SystemTime,
    ) -> Result<VerifiedToken, TokenError> {
        self.verify_token(&handoff.signature, &handoff.nonce, now)
    }

    /// Reads and verifies `entitlement.json`; a missing or unreadable file is a refusal.
    pub fn verify_handoff_file(
        &self,
        path: &Path,
        now: SystemTime,
    ) -> Result<VerifiedToken, TokenError> {
        let handoff = handoff::read(path).map_err(|e| TokenError::NoHandoff {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        self.verify_handoff(&handoff, now)
    }
}

/// Flags and environment variables of `entitlement-gate verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub product: ProductArgs,

    /// The handoff file to check [default: <handoff-dir>/entitlement.json].
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub handoff: Option<PathBuf>,

    /// Directory holding entitlement.json (the same variable the gate writes with).
    #[arg(long, env = "ENTITLEMENT_GATE_HANDOFF_DIR", value_name = "DIR")]
    pub handoff_dir: Option<PathBuf>,

    /// A token (JWT) to check instead of a handoff; `-` reads it from stdin, as does giving
    /// neither a token nor a handoff. Needs --nonce.
    #[arg(long, value_name = "JWT")]
    pub token: Option<String>,

    /// The nonce the token was issued for.
    #[arg(long)]
    pub nonce: Option<String>,

    /// Bound on the whole re-check (including the ECS task metadata lookup on ECS).
    #[arg(long, env = "ENTITLEMENT_GATE_DEADLINE", default_value = "10s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub deadline: Duration,

    /// Refuse tokens issued longer ago than this (e.g. 1h).
    #[arg(long, env = "ENTITLEMENT_GATE_MAX_AGE", value_parser = parse_duration, value_name = "DURATION")]
    pub max_age: Option<Duration>,
}

/// What `verify` was given to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    HandoffFile(PathBuf),
    Token { token: String, nonce: String },
}

impl VerifyArgs {
    /// Picks the evidence: `--token`, else `--handoff`, else the handoff directory, else stdin.
    pub fn evidence(&self, stdin: impl Read) -> Result<Evidence, ConfigError> {
        let handoff = self
            .handoff
            .clone()
            .or_else(|| self.handoff_dir.as_deref().map(handoff::path_in));
        let token = match (&self.token, handoff) {
            (Some(token), _) if token != "-" => token.clone(),
            (None, Some(path)) => return Ok(Evidence::HandoffFile(path)),
            _ => read_token(stdin)?,
        };
        let nonce = self.nonce.clone().ok_or(ConfigError::MissingNonce)?;
        Ok(Evidence::Token { token, nonce })
    }
}

/// A token from stdin, read no further than a token may be long.
fn read_token(stdin: impl Read) -> Result<String, ConfigError> {
    let mut text = String::new();
    stdin
        .take(MAX_TOKEN_BYTES as u64 + 2)
        .read_to_string(&mut text)
        .map_err(|e| ConfigError::InvalidArgument {
            detail: format!("cannot read a token from stdin: {e}"),
            help: "entitlement-gate verify --help".to_owned(),
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::NoTokenGiven);
    }
    Ok(token.to_owned())
}

/// How long the ECS task metadata endpoint may take when `verify` resolves the workload.
const TASK_METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// `entitlement-gate verify`: checks the evidence without calling AWS.
pub async fn command(
    args: &VerifyArgs,
    anchors: &TrustAnchors,
) -> Result<VerifiedToken, GateError> {
    let (product_code, key) = args.product.resolve(anchors)?;
    let workload = workload::resolve(|name| std::env::var(name).ok(), TASK_METADATA_TIMEOUT)
        .await
        .map_err(|e| GateError::Internal(e.to_string()))?;
    tracing::debug!(source = %workload.source, "resolved the workload identity");
    let requirements = Requirements {
        product_code: &product_code,
        key: &key,
        workload: &workload,
        max_age: args.max_age,
    };
    let evidence = args.evidence(std::io::stdin().lock())?;
    let now = SystemTime::now();
    let verified = match &evidence {
        Evidence::HandoffFile(path) => requirements.verify_handoff_file(path, now),
        Evidence::Token { token, nonce } => requirements.verify_token(token, nonce, now),
    }?;
    tracing::info!(product_code = %verified.product_code, public_key_version = verified.public_key_version,
        iat = verified.issued_at, "valid: the token verifies");
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySource;
    use crate::nonce::Nonce;
    use crate::workload::WorkloadIdSource;
    use metering_emulator::keys::shared_2048;
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn fixture() -> (ProductCode, VerifyingKey) {
        let key =
            VerifyingKey::from_pem(&shared_2048().public_spki_pem, 1, KeySource::Inline).unwrap();
        (ProductCode::parse("prod").unwrap(), key)
    }

    fn pod(id: &str) -> WorkloadId {
        WorkloadId {
            id: id.to_owned(),
            source: WorkloadIdSource::Configured,
        }
    }

    fn token(nonce: &str, iat: u64) -> String {
        let claims =
            json!({ "productCode": "prod", "nonce": nonce, "publicKeyVersion": 1, "iat": iat });
        shared_2048().sign_jwt(&json!({ "alg": "PS256" }), &claims)
    }

    /// A genuine handoff made by the gate of workload `made_in`.
    fn handoff(made_in: &WorkloadId, iat: u64) -> Handoff {
        let nonce = Nonce::generate(made_in).unwrap().as_str().to_owned();
        Handoff {
            product_code: "prod".into(),
            public_key_version: 1,
            signature: token(&nonce, iat),
            nonce,
            issued_at: iat,
            verified_at: "2027-01-15T08:00:00Z".into(),
            region: "us-east-1".into(),
            gate_version: "0.1.0".into(),
            public_key_rotation_timestamp: None,
            workload_id_source: Some("configured".into()),
        }
    }

    #[test]
    fn a_handoff_verifies_against_its_recorded_nonce_in_its_own_workload() {
        let (code, key) = fixture();
        let this_pod = pod("pod-a");
        let requirements = Requirements {
            product_code: &code,
            key: &key,
            workload: &this_pod,
            max_age: None,
        };
        let genuine = handoff(&this_pod, NOW - 10);
        assert_eq!(
            requirements
                .verify_handoff(&genuine, at(NOW))
                .unwrap()
                .nonce,
            genuine.nonce
        );
        let swapped = Handoff {
            nonce: Nonce::generate(&this_pod).unwrap().as_str().to_owned(),
            ..genuine
        };
        assert!(matches!(
            requirements.verify_handoff(&swapped, at(NOW)),
            Err(TokenError::ClaimMismatch { .. })
        ));
    }

    #[test]
    fn a_genuine_handoff_from_another_workload_is_refused() {
        let (code, key) = fixture();
        let this_pod = pod("pod-a");
        let requirements = Requirements {
            product_code: &code,
            key: &key,
            workload: &this_pod,
            max_age: None,
        };
        let copied = handoff(&pod("pod-b"), NOW - 10);
        assert_eq!(
            requirements.verify_handoff(&copied, at(NOW)),
            Err(TokenError::NonceForOtherWorkload {
                identified_by: WorkloadIdSource::Configured
            })
        );
        let unbound = token("n-1", NOW - 10);
        assert_eq!(
            requirements.verify_token(&unbound, "n-1", at(NOW)),
            Err(TokenError::NonceNotWorkloadBound)
        );
    }

    #[test]
    fn max_age_refuses_old_tokens() {
        let (code, key) = fixture();
        let this_pod = pod("pod-a");
        let requirements = Requirements {
            product_code: &code,
            key: &key,
            workload: &this_pod,
            max_age: Some(Duration::from_secs(60)),
        };
        assert!(requirements
            .verify_handoff(&handoff(&this_pod, NOW - 60), at(NOW))
            .is_ok());
        assert_eq!(
            requirements.verify_handoff(&handoff(&this_pod, NOW - 61), at(NOW)),
            Err(TokenError::TooOld {
                iat: NOW - 61,
                max_age_secs: 60,
                now: NOW
            })
        );
    }

    #[test]
    fn a_missing_handoff_file_is_a_refusal() {
        let (code, key) = fixture();
        let this_pod = pod("pod-a");
        let requirements = Requirements {
            product_code: &code,
            key: &key,
            workload: &this_pod,
            max_age: None,
        };
        let result =
            requirements.verify_handoff_file(Path::new("/nonexistent/entitlement.json"), at(NOW));
        assert!(matches!(result, Err(TokenError::NoHandoff { .. })));
    }

    fn args() -> VerifyArgs {
        VerifyArgs {
            product: ProductArgs::default(),
            handoff: None,
            handoff_dir: None,
            token: None,
            nonce: None,
            deadline: Duration::from_secs(10),
            max_age: None,
        }
    }

    #[test]
    fn evidence_prefers_token_then_handoff_then_directory_then_stdin() {
        let empty: &[u8] = b"";
        let with_token = VerifyArgs {
            token: Some("a.b.c".into()),
            nonce: Some("n".into()),
            handoff_dir: Some("/h".into()),
            ..args()
        };
        assert_eq!(
            with_token.evidence(empty).unwrap(),
            Evidence::Token {
                token: "a.b.c".into(),
                nonce: "n".into()
            }
        );
        let with_file = VerifyArgs {
            handoff: Some("/f.json".into()),
            handoff_dir: Some("/h".into()),
            ..args()
        };
        assert_eq!(
            with_file.evidence(empty).unwrap(),
            Evidence::HandoffFile("/f.json".into())
        );
        let with_dir = VerifyArgs {
            handoff_dir: Some("/h".into()),
            ..args()
        };
        assert_eq!(
            with_dir.evidence(empty).unwrap(),
            Evidence::HandoffFile("/h/entitlement.json".into())
        );
        let from_stdin = VerifyArgs {
            nonce: Some("n".into()),
            ..args()
        };
        assert_eq!(
            from_stdin.evidence(&b" x.y.z\n"[..]).unwrap(),
            Evidence::Token {
                token: "x.y.z".into(),
                nonce: "n".into()
            }
        );
        let dash = VerifyArgs {
            token: Some("-".into()),
            nonce: Some("n".into()),
            handoff_dir: Some("/h".into()),
            ..args()
        };
        assert_eq!(
            dash.evidence(&b"x.y.z"[..]).unwrap(),
            Evidence::Token {
                token: "x.y.z".into(),
                nonce: "n".into()
            }
        );
    }

    #[test]
    fn a_token_needs_a_nonce_and_stdin_must_hold_one() {
        let empty: &[u8] = b"";
        let no_nonce = VerifyArgs {
            token: Some("a.b.c".into()),
            ..args()
        };
        assert!(matches!(
            no_nonce.evidence(empty),
            Err(ConfigError::MissingNonce)
        ));
        let nothing = VerifyArgs {
            nonce: Some("n".into()),
            ..args()
        };
        assert!(matches!(
            nothing.evidence(empty),
            Err(ConfigError::NoTokenGiven)
        ));
    }
}
