//! Outcome: every way a run can end, its exit code, a stable reason identifier for machines,
//! and the one sentence an operator reads in `kubectl describe pod` or the ECS stopped reason.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigError;
use crate::files::{self, FileError};
use crate::sources::CredentialSource;
use crate::token::TokenError;

/// The termination log holds at most this many bytes (Kubernetes truncates beyond it).
pub const TERMINATION_LOG_MAX_BYTES: usize = 4096;

/// Exit codes, as documented in the README.
pub mod exit_code {
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

    fn reason(self) -> &'static str {
        match self {
            SetupRefusal::PlatformNotSupported => "platform_not_supported",
            SetupRefusal::InvalidRegion => "invalid_region",
            SetupRefusal::InvalidProductCode => "invalid_product_code",
            SetupRefusal::InvalidPublicKeyVersion => "invalid_public_key_version",
            SetupRefusal::DisabledApi => "disabled_api",
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

/// What kind of failure is worth another attempt; the sentence at the deadline depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientKind {
    /// ThrottlingException, HTTP 429: the account's call quota.
    Throttled,
    /// HTTP 500, 502, 503, 504 or InternalServiceErrorException.
    ServerError,
    /// Connection refused or reset, DNS, TLS, a body cut off mid-way.
    Network,
    /// No answer within the attempt timeout.
    Timeout,
}

/// One failed attempt that may be retried, described for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientFailure {
    pub kind: TransientKind,
    pub detail: String,
}

/// Where a run was when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Configuration,
    Region,
    Credentials,
    Workload,
    RegisterUsage,
    Handoff,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Configuration,
        Phase::Region,
        Phase::Credentials,
        Phase::Workload,
        Phase::RegisterUsage,
        Phase::Handoff,
    ];
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Configuration => "reading the configuration",
            Phase::Region => "resolving the AWS Region",
            Phase::Credentials => "resolving AWS credentials",
            Phase::Workload => "resolving the workload identity",
            Phase::RegisterUsage => "calling RegisterUsage",
            Phase::Handoff => "writing the handoff",
        })
    }
}

/// The phase a run is in, shared with whoever must describe a run that stopped making progress
/// (the binary's watchdog, which does not depend on the async runtime).
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU8>);

impl Progress {
    pub fn enter(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }

    pub fn current(&self) -> Phase {
        let value = self.0.load(Ordering::SeqCst);
        Phase::ALL
            .into_iter()
            .find(|phase| *phase as u8 == value)
            .unwrap_or(Phase::Configuration)
    }
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
        request_id: Option<String>,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{}: {aws_message}", refusal.code())]
    SetupRefused {
        refusal: SetupRefusal,
        context: CallContext,
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("no AWS credentials found")]
    NoCredentials {
        tried: Vec<CredentialSource>,
        /// Whether `AWS_WEB_IDENTITY_TOKEN_FILE` is set, i.e. whether IRSA is configured at all.
        web_identity_configured: bool,
    },
    #[error("the {provider} credential provider failed: {detail}")]
    CredentialsFailed {
        provider: CredentialSource,
        detail: String,
    },
    #[error("{code}: {aws_message}")]
    AccessDenied {
        code: String,
        aws_message: String,
        credentials_from: CredentialSource,
        request_id: Option<String>,
    },
    #[error("RegisterUsage kept failing ({attempts} attempts in {elapsed:?}); last error: {}", last.detail)]
    Unreachable {
        attempts: u32,
        elapsed: Duration,
        last: TransientFailure,
        endpoint: String,
        request_id: Option<String>,
    },
    #[error("the {deadline:?} deadline passed while {phase}")]
    DeadlineExceeded { phase: Phase, deadline: Duration },
    #[error("stopped by {signal}")]
    Interrupted { signal: &'static str },
    #[error("RegisterUsage answered HTTP {status} {code}: {aws_message}")]
    UnexpectedResponse {
        status: u16,
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("{0}")]
    Internal(String),
}

impl GateError {
    /// The AWS request ID of the last answer that led here, when there was one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            GateError::NotEntitled { request_id, .. }
            | GateError::SetupRefused { request_id, .. }
            | GateError::AccessDenied { request_id, .. }
            | GateError::Unreachable { request_id, .. }
            | GateError::UnexpectedResponse { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

/// The exit code, reason and operator sentence for one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub exit_code: u8,
    /// A stable identifier for machines (`not_entitled`, `throttled`, ...), in JSON logs.
    pub reason: &'static str,
    pub message: String,
    pub request_id: Option<String>,
}

/// Maps an error to its exit code, reason and one actionable sentence: what happened, what to
/// check.
pub fn report(error: &GateError) -> Report {
    use exit_code::*;
    let (exit_code, reason, message) = match error {
        GateError::Config(e) => (CONFIG, e.reason(), config_message(e)),
        GateError::NotEntitled {
            context,
            aws_message,
            ..
        } => (
            NOT_ENTITLED,
            "not_entitled",
            format!(
                "Not entitled: AWS Marketplace reports no active subscription to product {} for \
                 this AWS account in {} ({aws_message}); the buyer must subscribe to the product \
                 in AWS Marketplace with the account this workload runs in.",
                context.product_code, context.region
            ),
        ),
        GateError::Token(e) => {
            let (reason, hint) = match e {
                TokenError::NoHandoff { .. } => (
                    "no_handoff",
                    "check that the entitlement-gate init container ran with \
                     ENTITLEMENT_GATE_HANDOFF_DIR on a volume this container also mounts",
                ),
                TokenError::NonceNotWorkloadBound => (
                    "nonce_not_bound",
                    "restart the workload so its gate checks the entitlement again (a handoff or \
                     token made by hand, or by an older gate, is never accepted)",
                ),
                TokenError::NonceForOtherWorkload { .. } => (
                    "other_workload",
                    "a handoff is valid only in the pod or task whose gate obtained it, so restart \
                     this workload to let its own gate run, and give the gate and the app \
                     container the same ENTITLEMENT_GATE_WORKLOAD_ID (the Helm chart sets the pod \
                     UID)",
                ),
                TokenError::TooOld { .. } => (
                    "token_too_old",
                    "restart the workload so the gate checks the entitlement again, or raise \
                     --max-age",
                ),
                _ => (
                    "token_rejected",
                    "check that the configured public key is the one AWS Marketplace issued for \
                     this key version, and that nothing between the workload and the metering \
                     endpoint rewrites responses",
                ),
            };
            (
                TOKEN_REJECTED,
                reason,
                format!("The RegisterUsage token failed verification: {e}; {hint}."),
            )
        }
        GateError::SetupRefused {
            refusal,
            context,
            aws_message,
            ..
        } => (
            SETUP_REFUSED,
            refusal.reason(),
            setup_message(*refusal, context, aws_message),
        ),
        GateError::NoCredentials {
            tried,
            web_identity_configured,
        } => {
            let tried = tried
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let remedy = if *web_identity_configured {
                "the IRSA web identity token file is set but gave no credentials: check the \
                 projected service-account token volume"
            } else {
                "IRSA is not configured for this pod (AWS_WEB_IDENTITY_TOKEN_FILE is not set): on \
                 EKS annotate its service account with eks.amazonaws.com/role-arn and recreate the \
                 pod, on ECS set the task role (taskRoleArn)"
            };
            (
                CREDENTIALS,
                "no_credentials",
                format!(
                    "No AWS credentials were found (tried {tried}); {remedy}, and let the role \
                     allow aws-marketplace:RegisterUsage."
                ),
            )
        }
        GateError::CredentialsFailed { provider, detail } => (
            CREDENTIALS,
            "credentials_failed",
            format!(
                "AWS credentials from {provider} could not be loaded ({detail}); {}.",
                credential_remedy(*provider)
            ),
        ),
        GateError::AccessDenied {
            code,
            aws_message,
            credentials_from,
            ..
        } => (
            CREDENTIALS,
            "access_denied",
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
            last,
            endpoint,
            ..
        } => {
            let seconds = elapsed.as_secs_f64();
            let detail = &last.detail;
            let (reason, message) = match last.kind {
                TransientKind::Throttled => (
                    "throttled",
                    format!(
                        "AWS Marketplace Metering throttled RegisterUsage for {seconds:.1} s over \
                         {attempts} attempts (last: {detail}); every workload of this AWS account \
                         in this Region shares a quota of 5 RegisterUsage calls per second, so \
                         raise ENTITLEMENT_GATE_DEADLINE (--deadline) to give a large rollout \
                         time, or start fewer pods at once."
                    ),
                ),
                TransientKind::ServerError => (
                    "service_unavailable",
                    format!(
                        "AWS Marketplace Metering at {endpoint} kept failing for {seconds:.1} s \
                         over {attempts} attempts (last: {detail}); the service, or a proxy in \
                         front of it, is failing: Kubernetes restarts the init container by \
                         itself, raise ENTITLEMENT_GATE_DEADLINE to wait longer, and check the AWS \
                         Health Dashboard and any proxy if it persists."
                    ),
                ),
                TransientKind::Network | TransientKind::Timeout => (
                    "unreachable",
                    format!(
                        "AWS Marketplace Metering at {endpoint} kept failing for {seconds:.1} s \
                         over {attempts} attempts (last: {detail}); check network egress to the \
                         metering endpoint (security groups, NAT, VPC endpoint, proxy) or raise \
                         ENTITLEMENT_GATE_DEADLINE."
                    ),
                ),
            };
            (UNREACHABLE, reason, message)
        }
        GateError::DeadlineExceeded { phase, deadline } => (
            UNREACHABLE,
            "deadline_exceeded",
            format!(
                "The {} s deadline passed while {phase}; {}.",
                deadline.as_secs_f64(),
                deadline_remedy(*phase)
            ),
        ),
        GateError::Interrupted { signal } => (
            INTERRUPTED,
            "interrupted",
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
            ..
        } => (
            INTERNAL,
            "unexpected_response",
            format!(
                "RegisterUsage got an answer AWS does not document (HTTP {status} {code}: \
                 {aws_message}); check the metering endpoint override and any proxy in between, \
                 and report this to the seller."
            ),
        ),
        GateError::Internal(detail) => (
            INTERNAL,
            "internal",
            format!("Unexpected internal error: {detail}; report this to the seller."),
        ),
    };
    Report {
        exit_code,
        reason,
        message,
        request_id: error.request_id().map(str::to_owned),
    }
}

/// What to fix when a credential provider failed, by provider.
fn credential_remedy(source: CredentialSource) -> &'static str {
    match source {
        CredentialSource::WebIdentityToken => {
            "check the IRSA role's trust policy (its OIDC provider and the \
             system:serviceaccount:<namespace>:<name> condition) and the projected token file \
             named by AWS_WEB_IDENTITY_TOKEN_FILE"
        }
        CredentialSource::Profile => {
            "fix AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE in this container, \
             or remove them so the workload's own IRSA or ECS task role is used"
        }
        CredentialSource::Environment => {
            "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or neither; AWS Marketplace does \
             not support long-term keys for metering, so prefer IRSA or the ECS task role"
        }
        CredentialSource::EcsContainer => {
            "check the task definition's task role (taskRoleArn) and that the ECS agent's \
             credentials endpoint is reachable from the container"
        }
        CredentialSource::EksPodIdentity => {
            "AWS Marketplace does not support EKS Pod Identity for metering; give the service \
             account an IRSA role instead"
        }
        CredentialSource::InstanceMetadata => {
            "AWS Marketplace does not support the node's instance role for metering; give the \
             workload its own IRSA or ECS task role"
        }
    }
}

/// What to check when the deadline passed, by where the run was.
fn deadline_remedy(phase: Phase) -> &'static str {
    match phase {
        Phase::Configuration => {
            "a file the configuration names did not finish reading, so check that \
             ENTITLEMENT_GATE_PUBLIC_KEY_FILE, AWS_CONFIG_FILE and AWS_WEB_IDENTITY_TOKEN_FILE are \
             ordinary files on a healthy volume"
        }
        Phase::Region | Phase::Credentials => {
            "check that the credential and Region sources (IRSA, ECS task role, AWS_REGION) are \
             reachable, or raise ENTITLEMENT_GATE_DEADLINE"
        }
        Phase::Workload => {
            "the ECS task metadata endpoint did not answer, so check ECS_CONTAINER_METADATA_URI_V4 \
             or set ENTITLEMENT_GATE_WORKLOAD_ID"
        }
        Phase::RegisterUsage => {
            "check network egress to the metering endpoint (security groups, NAT, VPC endpoint, \
             proxy) or raise ENTITLEMENT_GATE_DEADLINE"
        }
        Phase::Handoff => {
            "writing entitlement.json did not finish, so check the volume mounted at \
             ENTITLEMENT_GATE_HANDOFF_DIR"
        }
    }
}

fn config_message(error: &ConfigError) -> String {
    let see_help;
    let hint = match error {
        ConfigError::InvalidArgument { help, .. } => {
            see_help = format!("see {help}");
            &see_help
        }
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
        ConfigError::AwsFile { .. } => {
            "the AWS SDK reads this file whole, so point the variable at an ordinary file (or \
             unset it)"
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
/// boundary. Only a regular file is written (the kubelet's `/dev/termination-log` is one); a
/// symlink planted at the path, a FIFO or a device is refused.
pub fn write_termination_log(path: &Path, message: &str) -> Result<(), FileError> {
    let mut end = message.len().min(TERMINATION_LOG_MAX_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    files::overwrite_regular(path, &message.as_bytes()[..end])
}

/// Ends a failed run: writes the operator sentence to the termination log (if any; first, as
/// it cannot block, while stderr can), logs it with its machine fields, and returns the exit
/// code.
pub fn conclude(error: &GateError, termination_log: Option<&Path>) -> u8 {
    let report = report(error);
    let log_failure = termination_log.and_then(|path| {
        write_termination_log(path, &report.message)
            .err()
            .map(|e| (path, e))
    });
    tracing::error!(
        exit_code = report.exit_code,
        reason = report.reason,
        request_id = report.request_id.as_deref(),
        "{}",
        report.message
    );
    if let Some((path, e)) = log_failure {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination log");
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

    fn assert_report(error: GateError, code: u8, mentions: &[&str]) -> Report {
        let report = report(&error);
        assert_eq!(report.exit_code, code, "{error:?}");
        for needle in mentions {
            assert!(
                report.message.contains(needle),
                "{:?} lacks {needle:?}",
                report.message
            );
        }
        // One sentence: ends with a period, no line breaks, a remedy after the semicolon.
        assert!(report.message.ends_with('.'), "{}", report.message);
        assert!(!report.message.contains('\n'));
        assert!(
            report.message.contains("; "),
            "no remedy in {:?}",
            report.message
        );
        // Reasons are stable snake_case identifiers.
        assert!(
            !report.reason.is_empty()
                && report
                    .reason
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_'),
            "{}",
            report.reason
        );
        report
    }

    #[test]
    fn configuration_errors_exit_2_and_say_what_to_set() {
        let cases: Vec<(ConfigError, &str)> = vec![
            (
                ConfigError::InvalidArgument {
                    detail: "bad flag".into(),
                    help: "entitlement-gate check --help".into(),
                },
                "check --help",
            ),
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
                    source: FileError::NotRegular { kind: "FIFO" },
                },
                "/k.pem: it is a FIFO",
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
                ConfigError::PublishedKey {
                    origin: crate::config::KeySource::Inline,
                    name: "jwt.io's demo key",
                },
                "anyone can sign",
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
                ConfigError::AwsFile {
                    variable: "AWS_CONFIG_FILE",
                    path: "/fifo".into(),
                    problem: FileError::NotRegular { kind: "FIFO" },
                },
                "AWS_CONFIG_FILE=/fifo",
            ),
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
        let report = assert_report(
            GateError::NotEntitled {
                context: context(),
                aws_message: "no subscription".into(),
                request_id: Some("req-1".into()),
            },
            NOT_ENTITLED,
            &["prod-abc", "subscribe", "eu-west-1"],
        );
        assert_eq!(report.reason, "not_entitled");
        assert_eq!(report.request_id.as_deref(), Some("req-1"));
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
            TokenError::NonceNotWorkloadBound,
            TokenError::NonceForOtherWorkload {
                identified_by: crate::workload::WorkloadIdSource::Configured,
            },
        ] {
            let detail = error.to_string();
            let hint = match error {
                TokenError::NoHandoff { .. } => "ENTITLEMENT_GATE_HANDOFF_DIR",
                TokenError::TooOld { .. } => "--max-age",
                TokenError::NonceNotWorkloadBound => "restart the workload",
                TokenError::NonceForOtherWorkload { .. } => "ENTITLEMENT_GATE_WORKLOAD_ID",
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
                    request_id: None,
                },
                SETUP_REFUSED,
                &[refusal.code(), mention],
            );
        }
    }

    #[test]
    fn credential_problems_exit_6_and_name_the_role_to_fix() {
        let not_configured = assert_report(
            GateError::NoCredentials {
                tried: vec![
                    CredentialSource::Environment,
                    CredentialSource::WebIdentityToken,
                ],
                web_identity_configured: false,
            },
            CREDENTIALS,
            &[
                "IRSA is not configured",
                "task role",
                "web identity token (IRSA)",
            ],
        );
        assert!(!not_configured.message.contains("trust policy"));
        assert_report(
            GateError::CredentialsFailed {
                provider: CredentialSource::WebIdentityToken,
                detail: "denied".into(),
            },
            CREDENTIALS,
            &["trust policy"],
        );
        let profile = assert_report(
            GateError::CredentialsFailed {
                provider: CredentialSource::Profile,
                detail: "bad profile".into(),
            },
            CREDENTIALS,
            &["AWS_CONFIG_FILE"],
        );
        assert!(
            !profile.message.contains("trust policy"),
            "{}",
            profile.message
        );
        assert_report(
            GateError::AccessDenied {
                code: "AccessDeniedException".into(),
                aws_message: "not authorized".into(),
                credentials_from: CredentialSource::WebIdentityToken,
                request_id: None,
            },
            CREDENTIALS,
            &[
                "aws-marketplace:RegisterUsage",
                "AccessDeniedException",
                "not the node",
            ],
        );
    }

    fn unreachable(kind: TransientKind, detail: &str) -> GateError {
        GateError::Unreachable {
            attempts: 9,
            elapsed: Duration::from_millis(2500),
            last: TransientFailure {
                kind,
                detail: detail.into(),
            },
            endpoint: "https://metering.marketplace.eu-west-1.amazonaws.com".into(),
            request_id: None,
        }
    }

    #[test]
    fn exit_7_says_whether_it_was_throttling_the_service_or_the_network() {
        let throttled = assert_report(
            unreachable(
                TransientKind::Throttled,
                "ThrottlingException: Rate exceeded",
            ),
            UNREACHABLE,
            &[
                "throttled",
                "9 attempts",
                "2.5 s",
                "5 RegisterUsage calls per second",
                "--deadline",
            ],
        );
        assert_eq!(throttled.reason, "throttled");
        assert!(!throttled.message.contains("NAT"), "{}", throttled.message);
        let server = assert_report(
            unreachable(
                TransientKind::ServerError,
                "HTTP 503 without an AWS error code",
            ),
            UNREACHABLE,
            &["HTTP 503", "metering.marketplace.eu-west-1"],
        );
        assert_eq!(server.reason, "service_unavailable");
        let network = assert_report(
            unreachable(TransientKind::Network, "connection refused"),
            UNREACHABLE,
            &[
                "egress",
                "metering.marketplace.eu-west-1",
                "connection refused",
            ],
        );
        assert_eq!(network.reason, "unreachable");
        let deadline = assert_report(
            GateError::DeadlineExceeded {
                phase: Phase::Credentials,
                deadline: Duration::from_secs(120),
            },
            UNREACHABLE,
            &["120 s", "resolving AWS credentials"],
        );
        assert_eq!(deadline.reason, "deadline_exceeded");
        assert_report(
            GateError::DeadlineExceeded {
                phase: Phase::Configuration,
                deadline: Duration::from_secs(2),
            },
            UNREACHABLE,
            &[
                "reading the configuration",
                "ENTITLEMENT_GATE_PUBLIC_KEY_FILE",
            ],
        );
    }

    #[test]
    fn progress_reports_the_phase_last_entered() {
        let progress = Progress::default();
        assert_eq!(progress.current(), Phase::Configuration);
        for phase in Phase::ALL {
            progress.clone().enter(phase);
            assert_eq!(progress.current(), phase);
        }
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
        let unexpected = assert_report(
            GateError::UnexpectedResponse {
                status: 418,
                code: "Teapot".into(),
                aws_message: "short".into(),
                request_id: Some("r".into()),
            },
            INTERNAL,
            &["418", "Teapot", "does not document"],
        );
        assert_eq!(unexpected.reason, "unexpected_response");
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
