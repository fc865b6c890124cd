//! Offline re-verification: lets the main container (or a seller's CI) confirm, without calling
//! AWS, that the gate of this same workload really verified a token for this product.
//!
//! ```no_run
//! use std::time::{Duration, SystemTime};
//! use entitlement_gate::aws::workload;
//! use entitlement_gate::domain::key::{KeySource, VerifyingKey};
//! use entitlement_gate::domain::product_code::ProductCode;
//! use entitlement_gate::gate::verify::Requirements;
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

use crate::aws::workload::WorkloadError;
use crate::domain::handoff::{self, Handoff};
use crate::domain::key::VerifyingKey;
use crate::domain::nonce::{self, NonceProblem};
use crate::domain::product_code::ProductCode;
use crate::domain::time::epoch_seconds;
use crate::domain::token::{self, Binding, TokenError, VerifiedToken, MAX_TOKEN_BYTES};
use crate::domain::workload::{WorkloadId, WorkloadIdSource};

/// Why a re-check refused, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(
        "the token's nonce is not bound to a workload, as the gate binds every nonce it makes"
    )]
    NonceNotWorkloadBound,
    #[error("the token was obtained by another workload's gate, not this one's (identified by {identified_by})")]
    NonceForOtherWorkload { identified_by: WorkloadIdSource },
    #[error("no readable handoff at {} ({reason}); the gate has not verified an entitlement for this workload", path.display())]
    NoHandoff { path: PathBuf, reason: String },
    #[error("a token needs the nonce it was issued for")]
    MissingNonce,
    #[error("nothing to verify: no handoff file and no token")]
    NoTokenGiven,
    #[error("cannot read a token from stdin: {0}")]
    Stdin(String),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
}

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
    ) -> Result<VerifiedToken, VerifyError> {
        let now = epoch_seconds(now);
        let expected = Binding {
            product_code: self.product_code.clone(),
            public_key_version: self.key.version,
            nonce: nonce.to_owned(),
        };
        let verified = token::verify(token, self.key, &expected, now)?;
        nonce::check_binding(&verified.nonce, self.workload).map_err(|problem| match problem {
            NonceProblem::NotWorkloadBound => VerifyError::NonceNotWorkloadBound,
            NonceProblem::OtherWorkload => VerifyError::NonceForOtherWorkload {
                identified_by: self.workload.source,
            },
        })?;
        if let Some(max_age) = self.max_age {
            if verified.issued_at.saturating_add(max_age.as_secs()) < now {
                return Err(VerifyError::Token(TokenError::TooOld {
                    iat: verified.issued_at,
                    max_age_secs: max_age.as_secs(),
                    now,
                }));
            }
        }
        Ok(verified)
    }

    /// Verifies a handoff: its token, bound to the nonce recorded beside it.
    pub fn verify_handoff(
        &self,
        handoff: &Handoff,
        now: SystemTime,
    ) -> Result<VerifiedToken, VerifyError> {
        self.verify_token(&handoff.signature, &handoff.nonce, now)
    }

    /// Reads and verifies `entitlement.json`; a missing or unreadable file is a refusal.
    pub fn verify_handoff_file(
        &self,
        path: &Path,
        now: SystemTime,
    ) -> Result<VerifiedToken, VerifyError> {
        let handoff = handoff::read(path).map_err(|e| VerifyError::NoHandoff {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        self.verify_handoff(&handoff, now)
    }
}

/// What `verify` was given to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    HandoffFile(PathBuf),
    Token { token: String, nonce: String },
}

/// What a caller asked to check: the inputs from which [`Evidence::choose`] picks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvidenceRequest {
    /// An explicit handoff file.
    pub handoff: Option<PathBuf>,
    /// The directory holding `entitlement.json`.
    pub handoff_dir: Option<PathBuf>,
    /// A token; `-` means stdin.
    pub token: Option<String>,
    pub nonce: Option<String>,
}

impl Evidence {
    /// Picks the evidence: a token, else a handoff file, else the handoff directory, else a
    /// token from `stdin`.
    pub fn choose(request: &EvidenceRequest, stdin: impl Read) -> Result<Evidence, VerifyError> {
        let handoff = request
            .handoff
            .clone()
            .or_else(|| request.handoff_dir.as_deref().map(handoff::path_in));
        let token = match (&request.token, handoff) {
            (Some(token), _) if token != "-" => token.clone(),
            (None, Some(path)) => return Ok(Evidence::HandoffFile(path)),
            _ => read_token(stdin)?,
        };
        let nonce = request.nonce.clone().ok_or(VerifyError::MissingNonce)?;
        Ok(Evidence::Token { token, nonce })
    }
}

/// A token from stdin, read no further than a token may be long.
fn read_token(stdin: impl Read) -> Result<String, VerifyError> {
    let mut text = String::new();
    stdin
        .take(MAX_TOKEN_BYTES as u64 + 2)
        .read_to_string(&mut text)
        .map_err(|e| VerifyError::Stdin(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(VerifyError::NoTokenGiven);
    }
    Ok(token.to_owned())
}

impl Requirements<'_> {
    /// Verifies whichever `evidence` was given.
    pub fn verify(
        &self,
        evidence: &Evidence,
        now: SystemTime,
    ) -> Result<VerifiedToken, VerifyError> {
        let verified = match evidence {
            Evidence::HandoffFile(path) => self.verify_handoff_file(path, now),
            Evidence::Token { token, nonce } => self.verify_token(token, nonce, now),
        }?;
        tracing::info!(product_code = %verified.product_code, public_key_version = verified.public_key_version,
            iat = verified.issued_at, "valid: the token verifies");
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::KeySource;
    use crate::domain::nonce::Nonce;
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
            Err(VerifyError::Token(TokenError::ClaimMismatch { .. }))
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
        assert!(matches!(
            requirements.verify_handoff(&copied, at(NOW)),
            Err(VerifyError::NonceForOtherWorkload {
                identified_by: WorkloadIdSource::Configured
            })
        ));
        let unbound = token("n-1", NOW - 10);
        assert!(matches!(
            requirements.verify_token(&unbound, "n-1", at(NOW)),
            Err(VerifyError::NonceNotWorkloadBound)
        ));
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
        assert!(matches!(
            requirements.verify_handoff(&handoff(&this_pod, NOW - 61), at(NOW)),
            Err(VerifyError::Token(TokenError::TooOld {
                iat,
                max_age_secs: 60,
                now: NOW
            })) if iat == NOW - 61
        ));
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
        assert!(matches!(result, Err(VerifyError::NoHandoff { .. })));
    }

    #[test]
    fn evidence_prefers_token_then_handoff_then_directory_then_stdin() {
        let empty: &[u8] = b"";
        let with_token = EvidenceRequest {
            token: Some("a.b.c".into()),
            nonce: Some("n".into()),
            handoff_dir: Some("/h".into()),
            ..EvidenceRequest::default()
        };
        assert_eq!(
            Evidence::choose(&with_token, empty).unwrap(),
            Evidence::Token {
                token: "a.b.c".into(),
                nonce: "n".into()
            }
        );
        let with_file = EvidenceRequest {
            handoff: Some("/f.json".into()),
            handoff_dir: Some("/h".into()),
            ..EvidenceRequest::default()
        };
        assert_eq!(
            Evidence::choose(&with_file, empty).unwrap(),
            Evidence::HandoffFile("/f.json".into())
        );
        let with_dir = EvidenceRequest {
            handoff_dir: Some("/h".into()),
            ..EvidenceRequest::default()
        };
        assert_eq!(
            Evidence::choose(&with_dir, empty).unwrap(),
            Evidence::HandoffFile("/h/entitlement.json".into())
        );
        let from_stdin = EvidenceRequest {
            nonce: Some("n".into()),
            ..EvidenceRequest::default()
        };
        assert_eq!(
            Evidence::choose(&from_stdin, &b" x.y.z\n"[..]).unwrap(),
            Evidence::Token {
                token: "x.y.z".into(),
                nonce: "n".into()
            }
        );
        let dash = EvidenceRequest {
            token: Some("-".into()),
            nonce: Some("n".into()),
            handoff_dir: Some("/h".into()),
            ..EvidenceRequest::default()
        };
        assert_eq!(
            Evidence::choose(&dash, &b"x.y.z"[..]).unwrap(),
            Evidence::Token {
                token: "x.y.z".into(),
                nonce: "n".into()
            }
        );
    }

    #[test]
    fn a_token_needs_a_nonce_and_stdin_must_hold_one() {
        let empty: &[u8] = b"";
        let no_nonce = EvidenceRequest {
            token: Some("a.b.c".into()),
            ..EvidenceRequest::default()
        };
        assert!(matches!(
            Evidence::choose(&no_nonce, empty),
            Err(VerifyError::MissingNonce)
        ));
        let nothing = EvidenceRequest {
            nonce: Some("n".into()),
            ..EvidenceRequest::default()
        };
        assert!(matches!(
            Evidence::choose(&nothing, empty),
            Err(VerifyError::NoTokenGiven)
        ));
    }
}
