//! Outcome: every way a run can end, its exit code, a stable reason identifier for machines,
//! and the one sentence an operator reads in `kubectl describe pod` or the ECS stopped reason.
//! This is the only place exit codes live: one `match` over every layer's errors.

use std::path::Path;
use std::time::Duration;

use crate::aws::endpoint::EndpointOverride;
use crate::aws::identity::{CredentialSource, IdentityError};
use crate::aws::metering::{MeteringError, Operation, Persisting, SetupRefusal};
use crate::doctor::{Diagnosis, Failure};
use crate::domain::files::{self, FileError};
use crate::domain::handoff::HandoffError;
use crate::domain::key::KeyError;
use crate::domain::mesh::Mesh;
use crate::domain::product_code::ProductCodeError;
use crate::domain::token::TokenError;
use crate::gate::check::{CheckError, Phase};
use crate::gate::verify::VerifyError;
use crate::license::LicenseError;
use crate::meter::store::StoreError;
use crate::meter::{HealthError, MeterError, Unbilled};

/// What an operator is told to do about a defect or an answer nobody documented: the seller
/// supports their buyers. `doctor`, run by the seller, says [`FOR_THE_SELLER`] instead.
pub const TELL_THE_SELLER: &str = "report this to the seller";
/// The same advice, for a seller reading `doctor`.
const FOR_THE_SELLER: &str =
    "if neither explains it, report it to entitlement-gate's maintainers with this output";

/// A sentence for the seller rather than the buyer's operator (`doctor`).
pub fn for_the_seller(message: &str) -> String {
    message.replace(TELL_THE_SELLER, FOR_THE_SELLER)
}

/// The termination log holds at most this many bytes (Kubernetes truncates beyond it).
pub const TERMINATION_LOG_MAX_BYTES: usize = 4096;

mod license;

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
    pub const UNBILLED: u8 = 9;

    /// What `code` means for the command at `command` (`["license", "watch"]`), for `--help`.
    pub fn meaning(code: u8, command: &[&str]) -> &'static str {
        match (code, command) {
            (0, ["check"]) => "entitled: the token was verified (and handed off)",
            (0, ["exec"]) => "never: PROGRAM replaces this process once entitled",
            (0, ["verify"]) => "the handoff or token is genuine, fresh and bound to this workload",
            (0, ["doctor"]) => "no check failed (warnings may remain)",
            (0, ["meter"]) => {
                "stopped on SIGTERM (or SIGINT, SIGHUP) after sending every closed hour"
            }
            (0, ["license", "check"]) => "AWS granted every entitlement; license.json written",
            (0, ["license", "watch"]) => {
                "stopped on SIGTERM (or SIGINT, SIGHUP); a floating seat was checked in"
            }
            (0, ["health"]) => "the sidecar answers and is ready",
            (0, _) => "success",
            (INTERNAL, ["doctor"]) => "a check failed",
            (INTERNAL, ["health"]) => {
                "not ready, or nothing answers there (the sentence says which)"
            }
            (INTERNAL, _) => "an answer AWS does not document, or an internal error",
            (CONFIG, ["meter"]) => {
                "the configuration (a flag, a variable, a file, a locked build's rule), or a \
                 state volume that stayed unwritable (full) until the sidecar gave up"
            }
            (CONFIG, _) => "the configuration (a flag, a variable, a file, a locked build's rule)",
            (NOT_ENTITLED, ["license", "watch"]) => {
                "no license at start-up, or the license was lost (--on-loss exit)"
            }
            (NOT_ENTITLED, ["license", "check"]) => {
                "nothing granted (no license, an ended contract, every seat in use), a counted \
                 entitlement not granted, or the license not AVAILABLE"
            }
            (NOT_ENTITLED, _) => "the buyer is not entitled (no subscription)",
            (TOKEN_REJECTED, ["verify"]) => "not genuine, too old, or not bound to this workload",
            (TOKEN_REJECTED, ["license", _]) => {
                "License Manager's answer failed verification: an entitlement not asked for, \
                 another unit, fewer units than asked, lapsed by AWS's clock, or another \
                 product's license"
            }
            (TOKEN_REJECTED, _) => "the token failed verification",
            (SETUP_REFUSED, _) => "AWS refused the setup (product, key version, Region, platform)",
            (CREDENTIALS, _) => "no credentials, or no permission for the call",
            (UNREACHABLE, ["meter"]) => {
                "AWS out of reach or throttled until the deadline, or usage left unsent at \
                 shutdown (kept in the state for the next start)"
            }
            (UNREACHABLE, ["license", "watch"]) => {
                "AWS out of reach at start-up, or the seat not checked in within the grace"
            }
            (UNREACHABLE, _) => "AWS out of reach, throttled or failing until the deadline",
            (INTERRUPTED, _) => "SIGTERM, SIGINT or SIGHUP before a decision",
            (UNBILLED, ["meter"]) => {
                "stopped with everything sent, but AWS refused acknowledged usage as a duplicate \
                 or may not hold it (in doubt): not billed by this sidecar"
            }
            _ => "",
        }
    }
}

/// Every way a run can fail, from every layer.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The command line (or an environment variable standing in for a flag) is wrong.
    #[error("invalid command line: {detail}")]
    Usage {
        detail: String,
        /// The `--help` that explains the command, e.g. `entitlement-gate check --help`.
        help: String,
    },
    #[error("cannot start {program}: {reason}")]
    ProgramNotStarted { program: String, reason: String },
    /// A setting the command line checks itself (the library takes typed values).
    #[error("{setting}: {problem}")]
    InvalidSetting {
        setting: &'static str,
        problem: String,
        remedy: &'static str,
    },
    /// A locked build is being pointed at another endpoint than AWS's (`doctor --call`).
    #[error("{0}, and this locked build calls AWS's own endpoints only")]
    EndpointOverridden(EndpointOverride),
    #[error(transparent)]
    ProductCode(#[from] ProductCodeError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Meter(#[from] MeterError),
    #[error(transparent)]
    Health(#[from] HealthError),
    /// Contract pricing. Boxed: the gate's errors stay small enough to return.
    #[error(transparent)]
    License(Box<LicenseError>),
    /// A stop signal came, and the graceful shutdown overran its grace.
    #[error("stopped by {signal}, and the shutdown overran its grace")]
    StopOverran { signal: &'static str },
    /// The process's watchdog: the run was stuck past its deadline.
    #[error("the {deadline:?} deadline passed while {phase}")]
    DeadlineExceeded { phase: Phase, deadline: Duration },
    #[error("stopped by {signal}")]
    Interrupted { signal: &'static str },
    #[error("{0}")]
    Internal(String),
}

impl From<LicenseError> for GateError {
    fn from(error: LicenseError) -> Self {
        GateError::License(Box::new(error))
    }
}

impl From<Failure> for GateError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Identity(e) => GateError::Check(CheckError::Identity(e)),
            Failure::ProductCode(e) => GateError::ProductCode(e),
            Failure::Key(e) => GateError::Key(e),
            Failure::Check(e) => GateError::Check(e),
            Failure::Metering(e) => GateError::Meter(MeterError::from(e)),
            Failure::License(e) => GateError::License(Box::new(e)),
            Failure::Endpoint(e) => GateError::EndpointOverridden(e),
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

/// `doctor`'s exit code: 0 when no check failed, else 1.
pub fn doctor_exit_code(diagnosis: &Diagnosis) -> u8 {
    if diagnosis.failed() {
        exit_code::INTERNAL
    } else {
        0
    }
}

/// Maps an error to its exit code, reason and one actionable sentence: what happened, what to
/// check.
pub fn report(error: &GateError) -> Report {
    use exit_code::*;
    use CheckError as C;
    use GateError as G;
    let token = token_rejected;
    let (exit_code, reason, message) = match error {
        G::Usage { help, .. } => (CONFIG, "usage", configuration(error, &format!("see {help}"))),
        G::ProgramNotStarted { .. } => (
            CONFIG,
            "program_not_started",
            configuration(
                error,
                "check the command after --: an absolute path or a program on PATH, executable \
                 in this image",
            ),
        ),
        G::ProductCode(e) => {
            let (reason, hint) = match e {
                ProductCodeError::Missing => (
                    "missing_product_code",
                    "set ENTITLEMENT_GATE_PRODUCT_CODE (or --product-code) to the product code \
                     from the AWS Marketplace Management Portal",
                ),
                ProductCodeError::Invalid { .. } => (
                    "malformed_product_code",
                    "copy the product code exactly from the AWS Marketplace Management Portal",
                ),
                ProductCodeError::Untrusted { .. } => (
                    "untrusted_product_code",
                    "this image only runs the product codes it was built for; use the seller's \
                     chart values unchanged",
                ),
            };
            (CONFIG, reason, configuration(error, hint))
        }
        G::Key(e) => {
            let (reason, hint) = match e {
                KeyError::Missing => (
                    "missing_key",
                    "set ENTITLEMENT_GATE_PUBLIC_KEY_FILE (or ENTITLEMENT_GATE_PUBLIC_KEY) to the \
                     public key AWS Marketplace Seller Operations issued for this key version",
                ),
                KeyError::Conflicting => (
                    "conflicting_keys",
                    "configure the public key once, as a file or as text",
                ),
                KeyError::RuntimeKeyRefused => (
                    "runtime_key_refused",
                    "unset ENTITLEMENT_GATE_PUBLIC_KEY and ENTITLEMENT_GATE_PUBLIC_KEY_FILE (the \
                     Helm value entitlementGate.publicKey) for this image",
                ),
                KeyError::NoEmbeddedKey { .. } => (
                    "no_embedded_key",
                    "set ENTITLEMENT_GATE_PUBLIC_KEY_VERSION to an embedded version, or use an \
                     image built with the new key",
                ),
                KeyError::Unreadable { .. } => (
                    "unreadable_key",
                    "check the file path and the volume that mounts it",
                ),
                KeyError::Invalid { .. } => (
                    "invalid_key",
                    "use the SPKI PEM (-----BEGIN PUBLIC KEY-----) AWS Marketplace issued",
                ),
                KeyError::Weak { .. } => (
                    "weak_key",
                    "use the RSA key AWS Marketplace issued for this product, never the 1024-bit \
                     sample key from AWS's documentation",
                ),
                KeyError::Published { .. } => (
                    "published_key",
                    "anyone can sign tokens this key accepts; use the RSA key AWS Marketplace \
                     issued for this product",
                ),
            };
            (CONFIG, reason, configuration(error, hint))
        }
        G::EndpointOverridden(_)
        | G::Check(C::EndpointOverridden(_))
        | G::Meter(MeterError::EndpointOverridden(_)) => endpoint_overridden(error),
        G::Check(C::Identity(e)) => identity(error, e, "aws-marketplace:RegisterUsage"),
        G::Meter(MeterError::Identity(e)) => identity(error, e, "aws-marketplace:MeterUsage"),
        G::InvalidSetting { remedy, .. } => (CONFIG, "invalid_setting", configuration(error, remedy)),
        G::Meter(MeterError::Metering(e)) => metering(error, e),
        G::Meter(MeterError::Store(e)) => {
            let (reason, hint) = match e {
                StoreError::InUse { .. } => (
                    "state_in_use",
                    "give every pod or task its own state volume (an emptyDir), never one shared \
                     by two sidecars",
                ),
                StoreError::OtherProduct { .. }
                | StoreError::OtherPeriod { .. }
                | StoreError::OtherFormat { .. } => (
                    "state_mismatch",
                    "point ENTITLEMENT_GATE_STATE_DIR at this product's own state, or at an empty \
                     directory",
                ),
                StoreError::Storage { .. } | StoreError::Unwritable { .. } => (
                    "state_unusable",
                    "check the volume at ENTITLEMENT_GATE_STATE_DIR: a directory writable by the \
                     container's user, not full",
                ),
            };
            (CONFIG, reason, configuration(error, hint))
        }
        G::Meter(MeterError::Listen { .. }) => (
            CONFIG,
            "listen",
            configuration(
                error,
                "set ENTITLEMENT_GATE_METER_LISTEN to a free loopback port (127.0.0.1:8478) or to \
                 unix:/path in a writable directory",
            ),
        ),
        G::Meter(MeterError::PeriodMismatch { emulator, .. }) => (
            CONFIG,
            "period_mismatch",
            configuration(
                error,
                &format!(
                    "start both with the same period: ENTITLEMENT_GATE_METER_PERIOD={emulator} (or \
                     --period) for the meter, or the emulator's --period to match"
                ),
            ),
        ),
        G::Meter(MeterError::StartupDeadline { phase, deadline }) => (
            UNREACHABLE,
            "deadline_exceeded",
            format!(
                "The {} s start-up deadline passed while {phase}; check that the credential and \
                 Region sources (IRSA, ECS task role, AWS_REGION) are reachable, or raise \
                 ENTITLEMENT_GATE_DEADLINE.",
                deadline.as_secs_f64()
            ),
        ),
        G::Meter(MeterError::Unbilled(unbilled)) => match unbilled.as_ref() {
        Unbilled::Unsent {
            hours,
            quantity,
            state_dir,
        } => (
            UNREACHABLE,
            "usage_unsent",
            format!(
                "{quantity} acknowledged units ({hours} closed hour records) could not be sent \
                 before the shutdown grace ended; they stay in {} and a sidecar restarted with \
                 the same state directory sends them, so keep that volume, and raise \
                 ENTITLEMENT_GATE_SHUTDOWN_GRACE with the pod's terminationGracePeriodSeconds if \
                 AWS was only slow.",
                state_dir.display()
            ),
        ),
        Unbilled::Refused { refused, in_doubt } => (
            UNBILLED,
            "usage_unbilled",
            format!(
                "Stopped with every hour sent, but {refused} acknowledged units were refused by AWS \
                 as duplicates (another workload reported this pod's hour with another quantity) \
                 and {in_doubt} are in doubt (an attempt got no answer, and none came before the \
                 hour left MeterUsage's window); this sidecar bills neither, so compare the ledger \
                 in its log (or /v1/status) with the product's metering records in AWS \
                 Marketplace's reports."
            ),
        ),
        },
        G::Meter(MeterError::Writer(e)) => internal(e),
        G::Meter(MeterError::StateUnwritable {
            state_dir,
            after,
            reason,
        }) => (
            CONFIG,
            "state_unwritable",
            format!(
                "The metering state in {} could not be written for {} s ({reason}); every \
                 report acknowledged before is in it and the sidecar restarted on the same \
                 volume sends it: free space on the volume (or give it more) and check it for \
                 I/O errors.",
                state_dir.display(),
                after.as_secs()
            ),
        ),
        G::StopOverran { signal } => (
            UNREACHABLE,
            "shutdown_overran",
            format!(
                "Stopped by {signal}, and sending the remaining usage overran the shutdown grace; \
                 what was not sent stays in the state directory and a sidecar restarted with the \
                 same directory sends it, so keep that volume."
            ),
        ),
        // A probe's answer is binary: not ready and nothing there both exit 1.
        G::Health(HealthError::NotReady { url, status }) => (
            INTERNAL,
            "not_ready",
            format!(
                "Not ready: {url} answered HTTP {status}; the sidecar there (meter or license \
                 watch) is starting, stopping, or failed its start-up: read its log."
            ),
        ),
        G::Health(HealthError::Unreachable { url, reason }) => (
            INTERNAL,
            "unreachable",
            format!(
                "Not ready: nothing answered at {url} ({reason}); check that the sidecar (meter \
                 or license watch) runs and listens there, as --url \
                 (ENTITLEMENT_GATE_METER_LISTEN) says."
            ),
        ),
        G::Check(C::Handoff(HandoffError::Directory { .. })) => (
            CONFIG,
            "handoff_dir",
            configuration(
                error,
                "mount a writable volume (e.g. an emptyDir) at ENTITLEMENT_GATE_HANDOFF_DIR",
            ),
        ),
        G::Check(C::Handoff(e)) => internal(e),
        G::Check(C::Workload(e)) => (
            INTERNAL,
            "workload_unknown",
            format!(
                "The workload identity could not be determined ({e}); the gate binds its proof \
                 to this workload, so set ENTITLEMENT_GATE_WORKLOAD_ID in the gate and the app \
                 container (the Helm chart sets it to the pod UID)."
            ),
        ),
        G::Verify(VerifyError::Workload(e)) => (
            INTERNAL,
            "workload_unknown",
            format!(
                "The workload identity could not be determined ({e}); verify checks that the \
                 handoff was made in this workload, so set ENTITLEMENT_GATE_WORKLOAD_ID in the \
                 gate and the app container (the Helm chart sets it to the pod UID)."
            ),
        ),
        G::Check(C::Metering(e)) => metering(error, e),
        G::Check(C::Token(e)) | G::Verify(VerifyError::Token(e)) => match e {
            TokenError::TooOld { .. } => token(
                "token_too_old",
                e,
                "restart the workload so the gate checks the entitlement again, or raise \
                 --max-age",
            ),
            _ => token("token_rejected", e, KEY_HINT),
        },
        G::Verify(e @ VerifyError::NoHandoff { .. }) => token(
            "no_handoff",
            e,
            "check that the entitlement-gate init container ran with ENTITLEMENT_GATE_HANDOFF_DIR \
             on a volume this container also mounts",
        ),
        G::Verify(e @ VerifyError::NonceNotWorkloadBound) => token(
            "nonce_not_bound",
            e,
            "restart the workload so its gate checks the entitlement again (a handoff or token \
             made by hand, or by an older gate, is never accepted)",
        ),
        G::Verify(e @ VerifyError::NonceForOtherWorkload { .. }) => token(
            "other_workload",
            e,
            "a handoff is valid only in the pod or task whose gate obtained it, so restart this \
             workload to let its own gate run, and give the gate and the app container the same \
             ENTITLEMENT_GATE_WORKLOAD_ID (the Helm chart sets the pod UID)",
        ),
        G::Verify(VerifyError::MissingNonce) => (
            CONFIG,
            "missing_nonce",
            configuration(error, "pass --nonce with --token, or verify the handoff file"),
        ),
        G::Verify(VerifyError::NoTokenGiven | VerifyError::Stdin(_)) => (
            CONFIG,
            "no_token",
            configuration(
                error,
                "pass --handoff, --handoff-dir (ENTITLEMENT_GATE_HANDOFF_DIR), --token, or a token \
                 on stdin",
            ),
        ),
        G::DeadlineExceeded { phase, deadline }
        | G::Check(C::DeadlineExceeded { phase, deadline }) => (
            UNREACHABLE,
            "deadline_exceeded",
            format!(
                "The {} s deadline passed while {phase}; {}.",
                deadline.as_secs_f64(),
                deadline_remedy(*phase)
            ),
        ),
        G::Interrupted { signal } => (
            INTERRUPTED,
            "interrupted",
            format!(
                "Stopped by {signal} before the entitlement was decided; the platform stopped \
                 the container (pod deleted, task stopped or node drained), retry by starting \
                 it again."
            ),
        ),
        G::License(e) => license::report(error, e),
        G::Check(e @ C::Randomness(_)) => internal(e),
        G::Internal(detail) => internal(detail),
    };
    Report {
        exit_code,
        reason,
        message,
        request_id: request_id(error).map(str::to_owned),
    }
}

/// The outcome of a locked build pointed at another endpoint, for whichever command refused it.
fn endpoint_overridden(error: &GateError) -> (u8, &'static str, String) {
    (
        exit_code::CONFIG,
        "endpoint_overridden",
        configuration(
            error,
            "remove that setting from this container: a locked build sends its Marketplace \
             Metering, License Manager and STS calls to AWS itself, over TLS that chains to \
             Amazon Trust Services",
        ),
    )
}

/// The outcome of an identity failure, for whichever use case resolved it.
/// `action` is the permission the role needs (`aws-marketplace:RegisterUsage`, ...).
fn identity(error: &GateError, e: &IdentityError, action: &str) -> (u8, &'static str, String) {
    use exit_code::*;
    match e {
        IdentityError::NoRegion => (
            CONFIG,
            "no_region",
            configuration(
                error,
                "run on ECS or EKS, where the platform sets AWS_REGION, or set AWS_REGION yourself",
            ),
        ),
        IdentityError::AwsFile { .. } => (
            CONFIG,
            "aws_file",
            configuration(
                error,
                "the AWS SDK reads this file whole, so point the variable at an ordinary file \
                 (or unset it)",
            ),
        ),
        IdentityError::NoCredentials {
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
                     allow {action}."
                ),
            )
        }
        IdentityError::CredentialsFailed { provider, detail } => (
            CREDENTIALS,
            "credentials_failed",
            format!(
                "AWS credentials from {provider} could not be loaded ({detail}); {}.",
                credential_remedy(*provider)
            ),
        ),
    }
}

/// The outcome of a Metering API failure, for whichever use case called it.
fn metering(error: &GateError, e: &MeteringError) -> (u8, &'static str, String) {
    use exit_code::*;
    use MeteringError as M;
    match e {
        M::NotEntitled {
            product_code,
            region,
            aws_message,
            ..
        } => (
            NOT_ENTITLED,
            "not_entitled",
            format!(
                "Not entitled: AWS Marketplace reports no active subscription to product \
                 {product_code} for this AWS account in {region} ({aws_message}); the buyer must \
                 subscribe to the product in AWS Marketplace with the account this workload runs \
                 in."
            ),
        ),
        M::SetupRefused {
            refusal,
            product_code,
            public_key_version,
            region,
            aws_message,
            ..
        } => (
            SETUP_REFUSED,
            setup_reason(*refusal),
            setup_message(
                *refusal,
                product_code,
                *public_key_version,
                region,
                aws_message,
            ),
        ),
        M::InvalidUsage {
            code, aws_message, ..
        } => (
            SETUP_REFUSED,
            "invalid_usage",
            format!(
                "AWS Marketplace refused the metering setup ({code}: {aws_message}); check \
                 ENTITLEMENT_GATE_DIMENSIONS against the dimension API names of the product in \
                 the AWS Marketplace Management Portal."
            ),
        ),
        M::AccessDenied {
            operation,
            code,
            aws_message,
            credentials_from,
            ..
        } => {
            let policy = match operation {
                Operation::RegisterUsage => "AWSMarketplaceMeteringRegisterUsage",
                // The RegisterUsage policy does not grant MeterUsage, whatever an AWS page says.
                Operation::MeterUsage => {
                    "AWSMarketplaceMeteringFullAccess (AWSMarketplaceMeteringRegisterUsage does not \
                     grant it)"
                }
            };
            (
                CREDENTIALS,
                "access_denied",
                format!(
                    "AWS rejected the credentials from {credentials_from} ({code}: \
                     {aws_message}); the IRSA or ECS task role (not the node or execution role) \
                     must allow aws-marketplace:{operation}, e.g. via the managed policy {policy}."
                ),
            )
        }
        M::Throttled(Persisting {
            operation, gave_up, ..
        }) => {
            let quota = match operation {
                Operation::RegisterUsage => 5,
                Operation::MeterUsage => 10,
            };
            (
                UNREACHABLE,
                "throttled",
                format!(
                    "AWS Marketplace Metering throttled {operation} for {:.1} s over {} attempts \
                     (last: {}); every workload of this AWS account in this Region shares a quota \
                     of {quota} {operation} calls per second, so raise ENTITLEMENT_GATE_DEADLINE \
                     (--deadline) to give a large rollout time, or start fewer pods at once.",
                    gave_up.elapsed.as_secs_f64(),
                    gave_up.attempts,
                    gave_up.last.detail
                ),
            )
        }
        M::ServiceUnavailable(Persisting {
            gave_up, endpoint, ..
        }) => (
            UNREACHABLE,
            "service_unavailable",
            format!(
                "AWS Marketplace Metering at {endpoint} kept failing for {:.1} s over {} attempts \
                 (last: {}); the service, or a proxy in front of it, is failing: Kubernetes \
                 restarts the container by itself, raise ENTITLEMENT_GATE_DEADLINE to wait \
                 longer, and check the AWS Health Dashboard and any proxy if it persists.",
                gave_up.elapsed.as_secs_f64(),
                gave_up.attempts,
                gave_up.last.detail
            ),
        ),
        M::Unreachable(Persisting {
            gave_up, endpoint, ..
        }) => (
            UNREACHABLE,
            "unreachable",
            format!(
                "AWS Marketplace Metering at {endpoint} kept failing for {:.1} s over {} attempts \
                 (last: {}); check network egress to the metering endpoint (security groups, \
                 NAT, VPC endpoint, proxy) or raise ENTITLEMENT_GATE_DEADLINE.",
                gave_up.elapsed.as_secs_f64(),
                gave_up.attempts,
                gave_up.last.detail
            ),
        ),
        M::UnexpectedResponse {
            operation,
            status,
            code,
            aws_message,
            ..
        } => (
            INTERNAL,
            "unexpected_response",
            format!(
                "{operation} got an answer AWS does not document (HTTP {status} {code}: \
                 {aws_message}); check the metering endpoint override and any proxy in between, \
                 and {TELL_THE_SELLER}."
            ),
        ),
        M::RequestNotBuilt(_) => (
            CONFIG,
            "request_not_built",
            configuration(
                error,
                "check AWS_REGION and any AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_MARKETPLACE_METERING",
            ),
        ),
        M::NoSignature
        | M::ResponseTooLarge {
            operation: Operation::RegisterUsage,
            ..
        } => token_rejected("token_rejected", e, KEY_HINT),
        M::Unreadable {
            operation: Operation::RegisterUsage,
            ..
        } => token_rejected(
            "token_rejected",
            &format!("the token is malformed: {e}"),
            KEY_HINT,
        ),
        M::ResponseTooLarge { .. } | M::Unreadable { .. } | M::NoMeteringRecordId { .. } => (
            INTERNAL,
            "unexpected_response",
            format!(
                "{e}; check the metering endpoint override and any proxy in between, and report \
                 this to the seller."
            ),
        ),
        M::TimestampOutOfBounds { .. }
        | M::DuplicateRequest { .. }
        | M::IdempotencyConflict { .. } => (
            INTERNAL,
            "metering_refused",
            format!("MeterUsage refused a record ({e}); {TELL_THE_SELLER}."),
        ),
        M::Sdk(_) => internal(e),
    }
}

/// The hint for a token failure that is not the app's doing.
const KEY_HINT: &str = "check that the configured public key is the one AWS Marketplace issued \
                        for this key version, and that nothing between the workload and the \
                        metering endpoint rewrites responses";

/// `The RegisterUsage token failed verification: <what>; <hint>.`
fn token_rejected(
    reason: &'static str,
    e: &dyn std::fmt::Display,
    hint: &str,
) -> (u8, &'static str, String) {
    (
        exit_code::TOKEN_REJECTED,
        reason,
        format!("The RegisterUsage token failed verification: {e}; {hint}."),
    )
}

/// The AWS request ID of the last answer that led to `error`, when there was one.
fn request_id(error: &GateError) -> Option<&str> {
    match error {
        GateError::Check(CheckError::Metering(e)) => e.request_id(),
        GateError::Meter(MeterError::Metering(e)) => e.request_id(),
        GateError::License(e) => license::request_id(e),
        _ => None,
    }
}

/// `Configuration error: <what>; <hint>.`
fn configuration(error: &GateError, hint: &str) -> String {
    format!("Configuration error: {error}; {hint}.")
}

fn internal(detail: &dyn std::fmt::Display) -> (u8, &'static str, String) {
    (
        exit_code::INTERNAL,
        "internal",
        format!("Unexpected internal error: {detail}; {TELL_THE_SELLER}."),
    )
}

fn setup_reason(refusal: SetupRefusal) -> &'static str {
    match refusal {
        SetupRefusal::PlatformNotSupported => "platform_not_supported",
        SetupRefusal::InvalidRegion => "invalid_region",
        SetupRefusal::InvalidProductCode => "invalid_product_code",
        SetupRefusal::InvalidPublicKeyVersion => "invalid_public_key_version",
        SetupRefusal::DisabledApi => "disabled_api",
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
        CredentialSource::LicenseToken => {
            "check the buyer's license secret (license_token and iam_role, mounted at \
             /var/run/secrets/product-license) and that the role trusts \
             openid-license-manager.amazonaws.com"
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

fn setup_message(
    refusal: SetupRefusal,
    product_code: &str,
    public_key_version: u32,
    region: &str,
    aws_message: &str,
) -> String {
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
            region
        ),
        SetupRefusal::InvalidProductCode => format!(
            "AWS Marketplace does not know product code {}; check ENTITLEMENT_GATE_PRODUCT_CODE \
             against the AWS Marketplace Management Portal",
            product_code
        ),
        SetupRefusal::InvalidPublicKeyVersion => format!(
            "public key version {} is not valid for this product; check \
             ENTITLEMENT_GATE_PUBLIC_KEY_VERSION with the seller",
            public_key_version
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

/// In a mesh, AWS out of reach usually means the mesh's proxy, not the network: says so in
/// the sentence of a run that could not reach AWS.
pub fn in_mesh(mut report: Report, mesh: Option<Mesh>) -> Report {
    let unreached = matches!(report.reason, "unreachable" | "deadline_exceeded");
    if let (Some(mesh), true) = (mesh, unreached) {
        let sentence = report.message.trim_end_matches('.');
        report.message = format!(
            "{sentence}; this pod has an injected {mesh} sidecar, whose proxy does not run yet while \
             init containers do: set the chart's mesh.type to {} with a mesh.strategy (README, \
             Service meshes).",
            mesh.chart_type()
        );
    }
    report
}

/// Ends a failed run: writes the operator sentence to the termination log (if any; first, as
/// it cannot block, while stderr can), logs it with its machine fields, and returns the exit
/// code. `mesh`: see [`in_mesh`].
pub fn conclude(error: &GateError, termination_log: Option<&Path>, mesh: Option<Mesh>) -> u8 {
    let report = in_mesh(report(error), mesh);
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
    use crate::aws::retry::{GaveUp, TransientFailure, TransientKind};
    use crate::aws::workload::WorkloadError;
    use crate::domain::key::KeySource;
    use crate::domain::token::Claim;
    use crate::domain::workload::WorkloadIdSource;

    #[test]
    fn a_mesh_is_named_only_when_aws_was_out_of_reach() {
        let unreachable = report(&GateError::DeadlineExceeded {
            phase: crate::gate::check::Phase::RegisterUsage,
            deadline: std::time::Duration::from_secs(120),
        });
        let plain = in_mesh(unreachable.clone(), None);
        assert_eq!(plain, unreachable);
        let meshed = in_mesh(unreachable, Some(Mesh::Istio));
        assert!(
            meshed.message.contains("injected Istio sidecar"),
            "{}",
            meshed.message
        );
        assert!(meshed.message.contains("mesh.type to istio"));
        assert!(meshed.message.ends_with('.') && !meshed.message.ends_with(".."));
        let refused = report(&GateError::Interrupted { signal: "SIGTERM" });
        assert_eq!(in_mesh(refused.clone(), Some(Mesh::Linkerd)), refused);
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

    fn metering(error: MeteringError) -> GateError {
        GateError::Check(CheckError::Metering(error))
    }

    #[test]
    fn a_metering_state_that_stayed_unwritable_exits_2_and_keeps_what_was_acknowledged() {
        let report = assert_report(
            GateError::Meter(MeterError::StateUnwritable {
                state_dir: "/var/lib/meter".into(),
                after: std::time::Duration::from_secs(300),
                reason: "No space left on device (os error 28)".into(),
            }),
            CONFIG,
            &[
                "/var/lib/meter",
                "300 s",
                "No space left on device",
                "every report acknowledged before is in it",
                "free space",
            ],
        );
        assert_eq!(report.reason, "state_unwritable");
    }

    #[test]
    fn configuration_errors_exit_2_and_say_what_to_set() {
        let cases: Vec<(GateError, &str)> = vec![
            (
                GateError::Usage {
                    detail: "bad flag".into(),
                    help: "entitlement-gate check --help".into(),
                },
                "check --help",
            ),
            (
                ProductCodeError::Missing.into(),
                "ENTITLEMENT_GATE_PRODUCT_CODE",
            ),
            (
                ProductCodeError::Invalid {
                    code: "a b".into(),
                    reason: "spaces",
                }
                .into(),
                "Management Portal",
            ),
            (
                ProductCodeError::Untrusted { code: "x".into() }.into(),
                "built for",
            ),
            (KeyError::Missing.into(), "ENTITLEMENT_GATE_PUBLIC_KEY_FILE"),
            (KeyError::Conflicting.into(), "once"),
            (
                KeyError::RuntimeKeyRefused.into(),
                "unset ENTITLEMENT_GATE_PUBLIC_KEY",
            ),
            (
                KeyError::NoEmbeddedKey {
                    version: 3,
                    available: vec![1],
                }
                .into(),
                "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION",
            ),
            (
                KeyError::Unreadable {
                    path: "/k.pem".into(),
                    source: FileError::NotRegular { kind: "FIFO" },
                }
                .into(),
                "/k.pem: it is a FIFO",
            ),
            (
                KeyError::Invalid {
                    origin: KeySource::Inline,
                    reason: "x".into(),
                }
                .into(),
                "BEGIN PUBLIC KEY",
            ),
            (
                KeyError::Weak {
                    origin: KeySource::Inline,
                    bits: 1024,
                }
                .into(),
                "1024-bit",
            ),
            (
                KeyError::Published {
                    origin: KeySource::Inline,
                    name: "jwt.io's demo key",
                }
                .into(),
                "anyone can sign",
            ),
            (
                CheckError::Handoff(HandoffError::Directory {
                    path: "/h".into(),
                    reason: "missing".into(),
                })
                .into(),
                "emptyDir",
            ),
            (
                CheckError::Identity(IdentityError::NoRegion).into(),
                "AWS_REGION",
            ),
            (
                CheckError::Identity(IdentityError::AwsFile {
                    variable: "AWS_CONFIG_FILE",
                    path: "/fifo".into(),
                    problem: FileError::NotRegular { kind: "FIFO" },
                })
                .into(),
                "AWS_CONFIG_FILE=/fifo",
            ),
            (
                metering(MeteringError::RequestNotBuilt("bad endpoint".into())),
                "AWS_ENDPOINT_URL",
            ),
            (
                GateError::ProgramNotStarted {
                    program: "/app".into(),
                    reason: "missing".into(),
                },
                "/app",
            ),
            (VerifyError::MissingNonce.into(), "--nonce"),
        ];
        for (error, mention) in cases {
            assert_report(error, CONFIG, &["Configuration error", mention]);
        }
    }

    #[test]
    fn not_entitled_exits_3_and_points_at_the_subscription() {
        let report = assert_report(
            metering(MeteringError::NotEntitled {
                product_code: "prod-abc".into(),
                region: "eu-west-1".into(),
                aws_message: "no subscription".into(),
                request_id: Some("req-1".into()),
            }),
            NOT_ENTITLED,
            &["prod-abc", "subscribe", "eu-west-1"],
        );
        assert_eq!(report.reason, "not_entitled");
        assert_eq!(report.request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn token_rejections_exit_4_and_name_the_problem() {
        let token = |e: TokenError| GateError::Check(CheckError::Token(e));
        let cases: Vec<(GateError, &str)> = vec![
            (metering(MeteringError::NoSignature), "without a Signature"),
            (
                metering(MeteringError::ResponseTooLarge {
                    operation: Operation::RegisterUsage,
                    limit: 65536,
                }),
                "more than 65536 bytes",
            ),
            (
                metering(MeteringError::Unreadable {
                    operation: Operation::RegisterUsage,
                    status: 200,
                    detail: "x".into(),
                }),
                "malformed: RegisterUsage answered HTTP 200 with a body that is not its JSON",
            ),
            (token(TokenError::TooLarge { len: 20000 }), "20000 bytes"),
            (token(TokenError::Malformed("x".into())), "malformed"),
            (token(TokenError::Algorithm("HS256".into())), "HS256"),
            (token(TokenError::BadSignature { version: 1 }), "signature"),
            (token(TokenError::MissingClaim(Claim::IssuedAt)), "iat"),
            (
                token(TokenError::ClaimMismatch {
                    claim: Claim::Nonce,
                    expected: "a".into(),
                    found: "b".into(),
                }),
                "nonce",
            ),
            (
                token(TokenError::IssuedInFuture { iat: 2, now: 1 }),
                "issued",
            ),
            (token(TokenError::Expired { exp: 1, now: 2 }), "expired"),
            (
                VerifyError::Token(TokenError::TooOld {
                    iat: 1,
                    max_age_secs: 60,
                    now: 100,
                })
                .into(),
                "--max-age",
            ),
            (
                VerifyError::NoHandoff {
                    path: "/h/entitlement.json".into(),
                    reason: "not found".into(),
                }
                .into(),
                "ENTITLEMENT_GATE_HANDOFF_DIR",
            ),
            (
                VerifyError::NonceNotWorkloadBound.into(),
                "restart the workload",
            ),
            (
                VerifyError::NonceForOtherWorkload {
                    identified_by: WorkloadIdSource::Configured,
                }
                .into(),
                "ENTITLEMENT_GATE_WORKLOAD_ID",
            ),
        ];
        for (error, mention) in cases {
            let report = assert_report(error, TOKEN_REJECTED, &[mention]);
            assert!(
                report
                    .message
                    .starts_with("The RegisterUsage token failed verification: "),
                "{}",
                report.message
            );
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
                metering(MeteringError::SetupRefused {
                    refusal,
                    product_code: "prod-abc".into(),
                    public_key_version: 1,
                    region: "eu-west-1".into(),
                    aws_message: "m".into(),
                    request_id: None,
                }),
                SETUP_REFUSED,
                &[refusal.code(), mention],
            );
        }
    }

    #[test]
    fn credential_problems_exit_6_and_name_the_role_to_fix() {
        let identity = |e| GateError::Check(CheckError::Identity(e));
        let not_configured = assert_report(
            identity(IdentityError::NoCredentials {
                tried: vec![
                    CredentialSource::Environment,
                    CredentialSource::WebIdentityToken,
                ],
                web_identity_configured: false,
            }),
            CREDENTIALS,
            &[
                "IRSA is not configured",
                "task role",
                "web identity token (IRSA)",
            ],
        );
        assert!(!not_configured.message.contains("trust policy"));
        assert_report(
            identity(IdentityError::CredentialsFailed {
                provider: CredentialSource::WebIdentityToken,
                detail: "denied".into(),
            }),
            CREDENTIALS,
            &["trust policy"],
        );
        let profile = assert_report(
            identity(IdentityError::CredentialsFailed {
                provider: CredentialSource::Profile,
                detail: "bad profile".into(),
            }),
            CREDENTIALS,
            &["AWS_CONFIG_FILE"],
        );
        assert!(
            !profile.message.contains("trust policy"),
            "{}",
            profile.message
        );
        assert_report(
            metering(MeteringError::AccessDenied {
                operation: Operation::RegisterUsage,
                code: "AccessDeniedException".into(),
                aws_message: "not authorized".into(),
                credentials_from: CredentialSource::WebIdentityToken,
                request_id: None,
            }),
            CREDENTIALS,
            &[
                "aws-marketplace:RegisterUsage",
                "AccessDeniedException",
                "not the node",
            ],
        );
    }

    fn persisting(kind: TransientKind, detail: &str) -> Persisting {
        Persisting {
            operation: Operation::RegisterUsage,
            gave_up: GaveUp {
                attempts: 9,
                elapsed: Duration::from_millis(2500),
                last: TransientFailure {
                    kind,
                    detail: detail.into(),
                },
                request_id: None,
            },
            endpoint: "https://metering.marketplace.eu-west-1.amazonaws.com".into(),
        }
    }

    #[test]
    fn exit_7_says_whether_it_was_throttling_the_service_or_the_network() {
        let throttled = assert_report(
            metering(MeteringError::Throttled(persisting(
                TransientKind::Throttled,
                "ThrottlingException: Rate exceeded",
            ))),
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
            metering(MeteringError::ServiceUnavailable(persisting(
                TransientKind::ServerError,
                "HTTP 503 without an AWS error code",
            ))),
            UNREACHABLE,
            &["HTTP 503", "metering.marketplace.eu-west-1"],
        );
        assert_eq!(server.reason, "service_unavailable");
        let network = assert_report(
            metering(MeteringError::Unreachable(persisting(
                TransientKind::Network,
                "connection refused",
            ))),
            UNREACHABLE,
            &[
                "egress",
                "metering.marketplace.eu-west-1",
                "connection refused",
            ],
        );
        assert_eq!(network.reason, "unreachable");
        for deadline_passed in [
            GateError::DeadlineExceeded {
                phase: Phase::Credentials,
                deadline: Duration::from_secs(120),
            },
            CheckError::DeadlineExceeded {
                phase: Phase::Credentials,
                deadline: Duration::from_secs(120),
            }
            .into(),
        ] {
            let report = assert_report(
                deadline_passed,
                UNREACHABLE,
                &["120 s", "resolving AWS credentials"],
            );
            assert_eq!(report.reason, "deadline_exceeded");
        }
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
            metering(MeteringError::UnexpectedResponse {
                operation: Operation::RegisterUsage,
                status: 418,
                code: "Teapot".into(),
                aws_message: "short".into(),
                request_id: Some("r".into()),
            }),
            INTERNAL,
            &["418", "Teapot", "does not document"],
        );
        assert_eq!(unexpected.reason, "unexpected_response");
        assert_report(
            GateError::Internal("handoff write failed".into()),
            INTERNAL,
            &["handoff write failed"],
        );
        assert_report(
            CheckError::Workload(WorkloadError::ConfiguredTooLong).into(),
            INTERNAL,
            &["ENTITLEMENT_GATE_WORKLOAD_ID"],
        );
    }

    #[test]
    fn the_seller_reading_doctor_is_never_told_to_report_to_the_seller() {
        let internal = report(&GateError::Internal("boom".into()));
        assert!(
            internal.message.contains(TELL_THE_SELLER),
            "{}",
            internal.message
        );
        let for_seller = for_the_seller(&internal.message);
        assert!(!for_seller.contains("seller"), "{for_seller}");
        assert!(for_seller.contains("maintainers"), "{for_seller}");
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
