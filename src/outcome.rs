//! Outcome: every way a run can end, its exit code, and the one sentence an operator reads in
//! `kubectl describe pod` or the ECS stopped reason.

use std::path::Path;
use std::time::Duration;

use crate::config::ConfigError;
use crate::token::TokenError;

/// The termination log holds at most this many bytes (Kubernetes truncates beyond it).
pub const TERMINATION_LOG_MAX_BYTES: usize = 4096;

/// Exit codes, as documented in the README.
pub mod exit_code {
    pub const ENTITLED: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const NOT_ENTITLED: u8 = 3;
    pub const TOKEN_REJECTED: u8 = 4;
    pub const SETUP_REFUSED: u8 = 5;
    pub const CREDENTIALS: u8 = 6;
    pub const UNREACHABLE: u8 = 7;
    pub const INTERRUPTED: u8 = 8;
}

/// A setup problem AWS Marketplace reported; each has its own remedy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupRefusal {
    PlatformNotSupported,
    InvalidRegion,
    InvalidProductCode,
    InvalidPublicKeyVersion,
    DisabledApi,
}

impl SetupRefusal {
    pub fn code(self) -> &'static str {
        match self {
            SetupRefusal::PlatformNotSupported => "PlatformNotSupportedException",
            SetupRefusal::InvalidRegion => "InvalidRegionException",
            SetupRefusal::InvalidProductCode => "InvalidProductCodeException",
            SetupRefusal::InvalidPublicKeyVersion => "InvalidPublicKeyVersionException",
            SetupRefusal::DisabledApi => "DisabledApiException",
        }
    }
}

/// What a RegisterUsage call was about, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    pub product_code: String,
    pub public_key_version: u32,
    pub region: String,
}

/// Every way a run can fail.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("not entitled to {}: {aws_message}", context.product_code)]
    NotEntitled {
        context: CallContext,
        aws_message: String,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{}: {aws_message}", refusal.code())]
    SetupRefused {
        refusal: SetupRefusal,
        context: CallContext,
        aws_message: String,
    },
    #[error("no AWS credentials found: {detail}")]
    NoCredentials { detail: String },
    #[error("the {provider} credential provider failed: {detail}")]
    CredentialsFailed { provider: String, detail: String },
    #[error("{code}: {aws_message}")]
    AccessDenied {
        code: String,
        aws_message: String,
        credentials_from: String,
    },
    #[error(
        "RegisterUsage kept failing ({attempts} attempts in {elapsed:?}); last error: {last_error}"
    )]
    Unreachable {
        attempts: u32,
        elapsed: Duration,
        last_error: String,
        endpoint: String,
    },
    #[error("the {deadline:?} deadline passed while {phase}")]
    DeadlineExceeded {
        phase: &'static str,
        deadline: Duration,
    },
    #[error("stopped by {signal}")]
    Interrupted { signal: &'static str },
    #[error("RegisterUsage answered HTTP {status} {code}: {aws_message}")]
    UnexpectedResponse {
        status: u16,
        code: String,
        aws_message: String,
    },
    #[error("{0}")]
    Internal(String),
}

/// The exit code and operator sentence for one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub exit_code: u8,
    pub message: String,
}

/// Maps an error to its exit code and one actionable sentence: what happened, what to check.
pub fn report(error: &GateError) -> Report {
    use exit_code::*;
    let (exit_code, message) = match error {
        GateError::Config(e) => (CONFIG, config_message(e)),
        GateError::NotEntitled {
            context,
            aws_message,
        } => (
            NOT_ENTITLED,
            format!(
                "Not entitled: AWS Marketplace reports no active subscription to product {} for \
                 this AWS account in {} ({aws_message}); the buyer must subscribe to the product \
                 in AWS Marketplace with the account this workload runs in.",
                context.product_code, context.region
            ),
        ),
        GateError::Token(e) => {
            let hint = match e {
                TokenError::NoHandoff { .. } => {
                    "check that the entitlement-gate init container ran with \
                     ENTITLEMENT_GATE_HANDOFF_DIR on a volume this container also mounts"
                }
                TokenError::TooOld { .. } => {
                    "restart the workload so the gate checks the entitlement again, or raise \
                     --max-age"
                }
                _ => {
                    "check that the configured public key is the one AWS Marketplace issued for \
                     this key version, and that nothing between the workload and the metering \
                     endpoint rewrites responses"
                }
            };
            (
                TOKEN_REJECTED,
                format!("The RegisterUsage token failed verification: {e}; {hint}."),
            )
        }
        GateError::SetupRefused {
            refusal,
            context,
            aws_message,
        } => (SETUP_REFUSED, setup_message(*refusal, context, aws_message)),
        GateError::NoCredentials { detail } => (
            CREDENTIALS,
            format!(
                "No AWS credentials were found ({detail}); on EKS give the service account an \
                 IAM role with IRSA (annotation eks.amazonaws.com/role-arn), on ECS set the task \
                 role, and allow aws-marketplace:RegisterUsage."
            ),
        ),
        GateError::CredentialsFailed { provider, detail } => (
            CREDENTIALS,
            format!(
                "AWS credentials from {provider} could not be loaded ({detail}); check the IRSA \
                 role's trust policy and token file, or the ECS task role."
            ),
        ),
        GateError::AccessDenied {
            code,
            aws_message,
            credentials_from,
        } => (
            CREDENTIALS,
            format!(
                "AWS rejected the credentials from {credentials_from} ({code}: {aws_message}); \
                 the IRSA or ECS task role (not the node or execution role) must allow \
                 aws-marketplace:RegisterUsage, e.g. via the managed policy \
                 AWSMarketplaceMeteringRegisterUsage."
            ),
        ),
        GateError::Unreachable {
            attempts,
            elapsed,
            last_error,
            endpoint,
        } => (
            UNREACHABLE,
            format!(
                "AWS Marketplace Metering at {endpoint} kept failing for {:.1} s over {attempts} \
                 attempts (last: {last_error}); check network egress to the metering endpoint \
                 (security groups, NAT, VPC endpoint, proxy) or raise ENTITLEMENT_GATE_DEADLINE \
                 if many workloads start at once.",
                elapsed.as_secs_f64()
            ),
        ),
        GateError::DeadlineExceeded { phase, deadline } => (
            UNREACHABLE,
            format!(
                "The {} s deadline passed while {phase}; check that the credential and Region \
                 sources (IRSA, ECS task role, AWS_REGION) are reachable, or raise \
                 ENTITLEMENT_GATE_DEADLINE.",
                deadline.as_secs_f64()
            ),
        ),
        GateError::Interrupted { signal } => (
            INTERRUPTED,
            format!(
                "Stopped by {signal} before the entitlement was decided; the platform stopped \
                 the container (pod deleted, task stopped or node drained), retry by starting \
                 it again."
            ),
        ),
        GateError::UnexpectedResponse {
            status,
            code,
            aws_message,
        } => (
            INTERNAL,
            format!(
                "RegisterUsage answered with an unexpected error (HTTP {status} {code}: \
                 {aws_message}); check the metering endpoint override, if any, and report this \
                 to the seller."
            ),
        ),
        GateError::Internal(detail) => (
            INTERNAL,
            format!("Unexpected internal error: {detail}; report this to the seller."),
        ),
    };
    Report { exit_code, message }
}

fn config_message(error: &ConfigError) -> String {
    let hint = match error {
        ConfigError::InvalidArgument(_) => "see entitlement-gate check --help",
        ConfigError::MissingProductCode => {
            "set ENTITLEMENT_GATE_PRODUCT_CODE (or --product-code) to the product code from the \
             AWS Marketplace Management Portal"
        }
        ConfigError::InvalidProductCode { .. } => {
            "copy the product code exactly from the AWS Marketplace Management Portal"
        }
        ConfigError::UntrustedProductCode { .. } => {
            "this image only runs the product codes it was built for; use the seller's chart \
             values unchanged"
        }
        ConfigError::MissingKey => {
            "set ENTITLEMENT_GATE_PUBLIC_KEY_FILE (or ENTITLEMENT_GATE_PUBLIC_KEY) to the public \
             key AWS Marketplace Seller Operations issued for this key version"
        }
        ConfigError::ConflictingKeys => "configure the public key once, as a file or as text",
        ConfigError::RuntimeKeyRefused => {
            "unset ENTITLEMENT_GATE_PUBLIC_KEY and ENTITLEMENT_GATE_PUBLIC_KEY_FILE (the Helm \
             value entitlementGate.publicKey) for this image"
        }
        ConfigError::NoEmbeddedKey { .. } => {
            "set ENTITLEMENT_GATE_PUBLIC_KEY_VERSION to an embedded version, or use an image \
             built with the new key"
        }
        ConfigError::UnreadableKey { .. } => "check the file path and the volume that mounts it",
        ConfigError::InvalidKey { .. } => {
            "use the SPKI PEM (-----BEGIN PUBLIC KEY-----) AWS Marketplace issued"
        }
        ConfigError::WeakKey { .. } => {
            "use the RSA key AWS Marketplace issued for this product, never the 1024-bit sample \
             key from AWS's documentation"
        }
        ConfigError::PublishedKey { .. } => {
            "anyone can sign tokens this key accepts; use the RSA key AWS Marketplace issued for \
             this product"
        }
        ConfigError::HandoffDir { .. } => {
            "mount a writable volume (e.g. an emptyDir) at ENTITLEMENT_GATE_HANDOFF_DIR"
        }
        ConfigError::NoRegion => {
            "run on ECS or EKS, where the platform sets AWS_REGION, or set AWS_REGION yourself"
        }
        ConfigError::RequestNotBuilt(_) => {
            "check AWS_REGION and any AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_MARKETPLACE_METERING"
        }
        ConfigError::MissingNonce => "pass --nonce with --token, or verify the handoff file",
        ConfigError::NoTokenGiven => {
            "pass --handoff, --handoff-dir (ENTITLEMENT_GATE_HANDOFF_DIR), --token, or a token on \
             stdin"
        }
        ConfigError::ProgramNotStarted { .. } => {
            "check the command after --: an absolute path or a program on PATH, executable in \
             this image"
        }
    };
    format!("Configuration error: {error}; {hint}.")
}

fn setup_message(refusal: SetupRefusal, context: &CallContext, aws_message: &str) -> String {
    let code = refusal.code();
    let hint = match refusal {
        SetupRefusal::PlatformNotSupported => {
            "RegisterUsage only works from Amazon ECS, Amazon EKS or AWS Fargate; run the \
             workload there (locally, test against metering-emulator)"
                .to_owned()
        }
        SetupRefusal::InvalidRegion => format!(
            "the call was signed for {}, which is not where the workload runs; do not hard-code \
             a Region, leave AWS_REGION to the platform",
            context.region
        ),
        SetupRefusal::InvalidProductCode => format!(
            "AWS Marketplace does not know product code {}; check ENTITLEMENT_GATE_PRODUCT_CODE \
             against the AWS Marketplace Management Portal",
            context.product_code
        ),
        SetupRefusal::InvalidPublicKeyVersion => format!(
            "public key version {} is not valid for this product; check \
             ENTITLEMENT_GATE_PUBLIC_KEY_VERSION with the seller",
            context.public_key_version
        ),
        SetupRefusal::DisabledApi => {
            "RegisterUsage is disabled for this product or account; the seller must contact \
             AWS Marketplace Seller Operations"
                .to_owned()
        }
    };
    format!("AWS Marketplace refused the setup ({code}: {aws_message}); {hint}.")
}

/// Writes `message` to the termination log, cut to [`TERMINATION_LOG_MAX_BYTES`] on a character
/// boundary.
pub fn write_termination_log(path: &Path, message: &str) -> std::io::Result<()> {
    let mut end = message.len().min(TERMINATION_LOG_MAX_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    std::fs::write(path, &message[..end])
}

/// Ends a failed run: logs the operator sentence, writes it to the termination log (if any),
/// and returns the exit code.
pub fn conclude(error: &GateError, termination_log: Option<&Path>) -> u8 {
    let report = report(error);
    tracing::error!(exit_code = report.exit_code, "{}", report.message);
    if let Some(path) = termination_log {
        if let Err(e) = write_termination_log(path, &report.message) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the termination log");
        }
    }
    report.exit_code
}

#[cfg(test)]
mod tests {
    use super::exit_code::*;
    use super::*;
    use crate::token::Claim;

    fn context() -> CallContext {
        CallContext {
            product_code: "prod-abc".into(),
            public_key_version: 1,
            region: "eu-west-1".into(),
        }
    }

    fn assert_report(error: GateError, code: u8, mentions: &[&str]) {
        let report = report(&error);
        assert_eq!(report.exit_code, code, "{error:?}");
        for needle in mentions {
            assert!(
                report.message.contains(needle),
                "{:?} lacks {needle:?}",
                report.message
            );
        }
        // One sentence: ends with a period, no line breaks, no run-on second sentence start.
        assert!(report.message.ends_with('.'), "{}", report.message);
        assert!(!report.message.contains('\n'));
        assert!(
            report.message.contains("; "),
            "no remedy in {:?}",
            report.message
        );
    }

    #[test]
    fn configuration_errors_exit_2_and_say_what_to_set() {
        let cases: Vec<(ConfigError, &str)> = vec![
            (ConfigError::InvalidArgument("bad flag".into()), "--help"),
            (
                ConfigError::MissingProductCode,
                "ENTITLEMENT_GATE_PRODUCT_CODE",
            ),
            (
                ConfigError::InvalidProductCode {
                    code: "a b".into(),
                    reason: "spaces",
                },
                "Management Portal",
            ),
            (
                ConfigError::UntrustedProductCode { code: "x".into() },
                "built for",
            ),
            (ConfigError::MissingKey, "ENTITLEMENT_GATE_PUBLIC_KEY_FILE"),
            (ConfigError::ConflictingKeys, "once"),
            (
                ConfigError::RuntimeKeyRefused,
                "unset ENTITLEMENT_GATE_PUBLIC_KEY",
            ),
            (
                ConfigError::NoEmbeddedKey {
                    version: 3,
                    available: vec![1],
                },
                "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION",
            ),
            (
                ConfigError::UnreadableKey {
                    path: "/k.pem".into(),
                    source: std::io::ErrorKind::NotFound.into(),
                },
                "/k.pem",
            ),
            (
                ConfigError::InvalidKey {
                    origin: crate::config::KeySource::Inline,
                    reason: "x".into(),
                },
                "BEGIN PUBLIC KEY",
            ),
            (
                ConfigError::WeakKey {
                    origin: crate::config::KeySource::Inline,
                    bits: 1024,
                },
                "1024-bit",
            ),
            (
                ConfigError::HandoffDir {
                    path: "/h".into(),
                    reason: "missing".into(),
                },
                "emptyDir",
            ),
            (ConfigError::NoRegion, "AWS_REGION"),
            (
                ConfigError::RequestNotBuilt("bad endpoint".into()),
                "AWS_ENDPOINT_URL",
            ),
        ];
        for (error, mention) in cases {
            assert_report(
                GateError::Config(error),
                CONFIG,
                &["Configuration error", mention],
            );
        }
    }

    #[test]
    fn not_entitled_exits_3_and_points_at_the_subscription() {
        assert_report(
            GateError::NotEntitled {
                context: context(),
                aws_message: "no subscription".into(),
            },
            NOT_ENTITLED,
            &["prod-abc", "subscribe", "eu-west-1"],
        );
    }

    #[test]
    fn token_rejections_exit_4_and_name_the_problem() {
        for error in [
            TokenError::Missing,
            TokenError::TooLarge { len: 20000 },
            TokenError::ResponseTooLarge { limit: 65536 },
            TokenError::Malformed("x".into()),
            TokenError::Algorithm("HS256".into()),
            TokenError::BadSignature { version: 1 },
            TokenError::MissingClaim(Claim::IssuedAt),
            TokenError::ClaimMismatch {
                claim: Claim::Nonce,
                expected: "a".into(),
                found: "b".into(),
            },
            TokenError::IssuedInFuture { iat: 2, now: 1 },
            TokenError::Expired { exp: 1, now: 2 },
            TokenError::TooOld {
                iat: 1,
                max_age_secs: 60,
                now: 100,
            },
            TokenError::NoHandoff {
                path: "/h/entitlement.json".into(),
                reason: "not found".into(),
            },
        ] {
            let detail = error.to_string();
            let hint = match error {
                TokenError::NoHandoff { .. } => "ENTITLEMENT_GATE_HANDOFF_DIR",
                TokenError::TooOld { .. } => "--max-age",
                _ => "public key",
            };
            assert_report(GateError::Token(error), TOKEN_REJECTED, &[&detail, hint]);
        }
    }

    #[test]
    fn setup_refusals_exit_5_with_their_own_remedy() {
        for (refusal, mention) in [
            (SetupRefusal::PlatformNotSupported, "Amazon EKS"),
            (SetupRefusal::InvalidRegion, "hard-code"),
            (SetupRefusal::InvalidProductCode, "prod-abc"),
            (
                SetupRefusal::InvalidPublicKeyVersion,
                "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION",
            ),
            (SetupRefusal::DisabledApi, "Seller Operations"),
        ] {
            assert_report(
                GateError::SetupRefused {
                    refusal,
                    context: context(),
                    aws_message: "m".into(),
                },
                SETUP_REFUSED,
                &[refusal.code(), mention],
            );
        }
    }

    #[test]
    fn credential_problems_exit_6_and_name_the_role_to_fix() {
        assert_report(
            GateError::NoCredentials {
                detail: "none".into(),
            },
            CREDENTIALS,
            &["IRSA", "task role"],
        );
        assert_report(
            GateError::CredentialsFailed {
                provider: "web identity token (IRSA)".into(),
                detail: "denied".into(),
            },
            CREDENTIALS,
            &["trust policy"],
        );
        assert_report(
            GateError::AccessDenied {
                code: "AccessDeniedException".into(),
                aws_message: "not authorized".into(),
                credentials_from: "web identity token (IRSA)".into(),
            },
            CREDENTIALS,
            &[
                "aws-marketplace:RegisterUsage",
                "AccessDeniedException",
                "not the node",
            ],
        );
    }

    #[test]
    fn transient_failures_and_deadlines_exit_7_and_point_at_egress() {
        assert_report(
            GateError::Unreachable {
                attempts: 9,
                elapsed: Duration::from_millis(2500),
                last_error: "ThrottlingException".into(),
                endpoint: "https://metering.marketplace.eu-west-1.amazonaws.com".into(),
            },
            UNREACHABLE,
            &[
                "9 attempts",
                "2.5 s",
                "egress",
                "metering.marketplace.eu-west-1",
            ],
        );
        assert_report(
            GateError::DeadlineExceeded {
                phase: "resolving credentials",
                deadline: Duration::from_secs(120),
            },
            UNREACHABLE,
            &["120 s", "resolving credentials"],
        );
    }

    #[test]
    fn signals_exit_8() {
        assert_report(
            GateError::Interrupted { signal: "SIGTERM" },
            INTERRUPTED,
            &["SIGTERM"],
        );
    }

    #[test]
    fn unexpected_answers_and_internal_errors_exit_1() {
        assert_report(
            GateError::UnexpectedResponse {
                status: 418,
                code: "Teapot".into(),
                aws_message: "short".into(),
            },
            INTERNAL,
            &["418", "Teapot"],
        );
        assert_report(
            GateError::Internal("handoff write failed".into()),
            INTERNAL,
            &["handoff write failed"],
        );
    }

    #[test]
    fn termination_log_is_capped_at_4096_bytes_on_a_char_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        write_termination_log(&path, &"é".repeat(3000)).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(
            written.len() <= TERMINATION_LOG_MAX_BYTES
                && written.len() >= TERMINATION_LOG_MAX_BYTES - 1
        );
        write_termination_log(&path, "short").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short");
    }
}
