//! The AWS Marketplace Metering API client: RegisterUsage for the gate, MeterUsage for the
//! metering sidecar, with their failure classes.
//! The SDK's own retries are off; [`retry::until_deadline`] owns retries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use aws_config::Region;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_marketplacemetering::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_marketplacemetering::operation::meter_usage::{MeterUsageError, MeterUsageOutput};
use aws_sdk_marketplacemetering::operation::register_usage::{
    RegisterUsageError, RegisterUsageOutput,
};
use aws_sdk_marketplacemetering::operation::RequestId as _;
use aws_sdk_marketplacemetering::primitives::DateTime;
use aws_sdk_marketplacemetering::types::{Tag, UsageAllocation};
use aws_sdk_marketplacemetering::Client;
use tokio::time::Instant;

use super::endpoint::Pinning;
use super::identity::CredentialSource;
use super::retry::{self, Attempt, GaveUp, RetryError, RetryPolicy, TransientKind};
use super::sdk_call::{self, Undocumented};
use crate::domain::product_code::ProductCode;
use crate::domain::quantity::{Quantity, MICROS_PER_UNIT};
use crate::domain::text;
use crate::domain::time::epoch_text;
use crate::domain::token::Binding;

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

/// The Metering operations the gate calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    RegisterUsage,
    MeterUsage,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::RegisterUsage => "RegisterUsage",
            Operation::MeterUsage => "MeterUsage",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Metering calls that kept failing in a way worth retrying, until the deadline.
pub type Persisting = retry::Persisting<Operation>;

/// Why a Metering call did not give an answer to verify.
#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    #[error("not entitled to {product_code}: {aws_message}")]
    NotEntitled {
        product_code: String,
        region: String,
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("{}: {aws_message}", refusal.code())]
    SetupRefused {
        refusal: SetupRefusal,
        product_code: String,
        public_key_version: u32,
        region: String,
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("{code}: {aws_message}")]
    AccessDenied {
        operation: Operation,
        code: String,
        aws_message: String,
        credentials_from: CredentialSource,
        request_id: Option<String>,
    },
    #[error("throttled until the deadline ({} attempts); last: {}", .0.gave_up.attempts, .0.gave_up.last.detail)]
    Throttled(Persisting),
    #[error("kept failing until the deadline ({} attempts); last: {}", .0.gave_up.attempts, .0.gave_up.last.detail)]
    ServiceUnavailable(Persisting),
    #[error("unreachable until the deadline ({} attempts); last: {}", .0.gave_up.attempts, .0.gave_up.last.detail)]
    Unreachable(Persisting),
    #[error("an answer AWS does not document: HTTP {status} {code}: {aws_message}")]
    UnexpectedResponse {
        operation: Operation,
        status: u16,
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("the request could not be built: {0}")]
    RequestNotBuilt(String),
    #[error("RegisterUsage answered without a Signature token")]
    NoSignature,
    /// MeterUsage answered with success but without the record AWS keeps, which AWS always
    /// returns: not a receipt, since nothing says AWS holds the usage (or that it does not).
    #[error("MeterUsage answered without a MeteringRecordId, which AWS always returns")]
    NoMeteringRecordId { request_id: Option<String> },
    #[error("{operation} answered with more than {limit} bytes")]
    ResponseTooLarge { operation: Operation, limit: usize },
    /// A success status whose body is not the operation's JSON.
    #[error("{operation} answered HTTP {status} with a body that is not its JSON ({detail})")]
    Unreadable {
        operation: Operation,
        status: u16,
        detail: String,
    },
    /// MeterUsage refused a dimension, tag or allocation the sidecar sent.
    #[error("{code}: {aws_message}")]
    InvalidUsage {
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    /// MeterUsage: the hour is outside the window AWS accepts.
    #[error("TimestampOutOfBoundsException: {aws_message}")]
    TimestampOutOfBounds {
        aws_message: String,
        request_id: Option<String>,
    },
    /// MeterUsage: AWS already holds another quantity for this task or pod, dimension and hour.
    #[error("DuplicateRequestException: {aws_message}")]
    DuplicateRequest {
        aws_message: String,
        request_id: Option<String>,
    },
    /// MeterUsage: the `ClientToken` was used with other parameters.
    #[error("IdempotencyConflictException: {aws_message}")]
    IdempotencyConflict {
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("the AWS SDK failed: {0}")]
    Sdk(String),
}

impl MeteringError {
    /// The AWS request ID of the last answer that led here, when there was one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            MeteringError::NotEntitled { request_id, .. }
            | MeteringError::SetupRefused { request_id, .. }
            | MeteringError::AccessDenied { request_id, .. }
            | MeteringError::UnexpectedResponse { request_id, .. }
            | MeteringError::InvalidUsage { request_id, .. }
            | MeteringError::TimestampOutOfBounds { request_id, .. }
            | MeteringError::DuplicateRequest { request_id, .. }
            | MeteringError::IdempotencyConflict { request_id, .. }
            | MeteringError::NoMeteringRecordId { request_id } => request_id.as_deref(),
            MeteringError::Throttled(persisting)
            | MeteringError::ServiceUnavailable(persisting)
            | MeteringError::Unreachable(persisting) => persisting.gave_up.request_id.as_deref(),
            _ => None,
        }
    }

    fn persisting(operation: Operation, gave_up: GaveUp, endpoint: &str) -> Self {
        let persisting = Persisting {
            operation,
            gave_up,
            endpoint: endpoint.to_owned(),
        };
        match persisting.gave_up.last.kind {
            TransientKind::Throttled => MeteringError::Throttled(persisting),
            TransientKind::ServerError => MeteringError::ServiceUnavailable(persisting),
            TransientKind::Network | TransientKind::Timeout => {
                MeteringError::Unreachable(persisting)
            }
        }
    }
}

/// One RegisterUsage call: what it binds, where it goes, with whose credentials, how patiently.
#[derive(Debug, Clone)]
pub struct RegisterUsageCall<'a> {
    pub binding: &'a Binding,
    pub region: &'a str,
    pub credentials_from: CredentialSource,
    pub endpoint: String,
    pub retry: RetryPolicy,
}

/// A successful RegisterUsage answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterUsageAnswer {
    pub signature: String,
    /// Epoch seconds; AWS sends it when the public key version has expired. Any number the
    /// answer held, saturated to `i64`: format it with [`RegisterUsageAnswer::key_expired_at`].
    pub public_key_rotation_timestamp: Option<i64>,
    pub request_id: Option<String>,
}

impl RegisterUsageAnswer {
    /// What the SDK made of a successful answer.
    pub fn from_output(output: RegisterUsageOutput) -> Result<Self, MeteringError> {
        Ok(RegisterUsageAnswer {
            request_id: output.request_id().map(text::quoted),
            public_key_rotation_timestamp: output
                .public_key_rotation_timestamp
                .map(|time| time.secs()),
            signature: output.signature.ok_or(MeteringError::NoSignature)?,
        })
    }

    /// When AWS says the public key version expired, as text (whatever number it sent).
    pub fn key_expired_at(&self) -> Option<String> {
        self.public_key_rotation_timestamp.map(epoch_text)
    }
}

/// Builds a client for `region` with `credentials` (fixed ones for a one-shot gate, the
/// provider that supplied them for a long-running sidecar, refreshed behind the SDK's cache);
/// `pinning` says whether it follows the endpoint overrides (`AWS_ENDPOINT_URL_MARKETPLACE_METERING`,
/// `AWS_ENDPOINT_URL`, the profile's) or calls AWS only ([`sdk_call::sdk_config`]).
pub async fn client(
    region: Region,
    credentials: impl ProvideCredentials + 'static,
    attempt_timeout: Duration,
    pinning: Pinning,
) -> Client {
    client_from(
        &sdk_call::sdk_config(
            region,
            Some(SharedCredentialsProvider::new(credentials)),
            attempt_timeout,
            pinning,
        )
        .await,
    )
}

/// A RegisterUsage client from an SDK configuration, with the gate's response-size limit.
pub fn client_from(config: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_marketplacemetering::config::Builder::from(config)
        .interceptor(sdk_call::ResponseSizeLimit)
        .build();
    Client::from_conf(config)
}

/// Calls RegisterUsage until it answers, fails for good, or no useful attempt fits before
/// `deadline`.
pub async fn register_usage(
    client: &Client,
    call: &RegisterUsageCall<'_>,
    deadline: Instant,
) -> Result<RegisterUsageAnswer, MeteringError> {
    let answer = retry::until_deadline("RegisterUsage", call.retry, deadline, || async {
        let sent = client
            .register_usage()
            .product_code(call.binding.product_code.as_str())
            .public_key_version(call.binding.public_key_version as i32)
            .nonce(&call.binding.nonce)
            .send()
            .await;
        match sent {
            Ok(output) => Attempt::Answered(output),
            Err(error) => classify(&error, call),
        }
    })
    .await
    .map_err(|error| match error {
        RetryError::Failed(error) => error,
        RetryError::GaveUp(gave_up) => {
            MeteringError::persisting(Operation::RegisterUsage, gave_up, &call.endpoint)
        }
    })?;
    RegisterUsageAnswer::from_output(answer)
}

/// What a call's classification needs to know about it, whatever the operation.
#[derive(Debug, Clone, Copy)]
struct Classifying<'a> {
    operation: Operation,
    product_code: &'a str,
    public_key_version: u32,
    region: &'a str,
    credentials_from: CredentialSource,
}

/// Sorts a failed RegisterUsage attempt into retry-or-stop, with the error that ends the call.
pub fn classify<T>(
    error: &SdkError<RegisterUsageError>,
    call: &RegisterUsageCall<'_>,
) -> Attempt<T, MeteringError> {
    let context = Classifying {
        operation: Operation::RegisterUsage,
        product_code: call.binding.product_code.as_str(),
        public_key_version: call.binding.public_key_version,
        region: call.region,
        credentials_from: call.credentials_from,
    };
    classify_sdk(error, &context, |error, code, aws_message, request_id| {
        register_usage_documented(error, code, aws_message, &context, request_id)
    })
}

/// Sorts a failed attempt into retry-or-stop: the operation's documented codes first, then
/// what every AWS API shares ([`sdk_call::classify`]).
fn classify_sdk<E, T>(
    error: &SdkError<E>,
    context: &Classifying<'_>,
    documented: impl Fn(&E, &str, &str, &Option<String>) -> Option<Attempt<T, MeteringError>>,
) -> Attempt<T, MeteringError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    sdk_call::classify(error, documented, |failure| match failure {
        Undocumented::AccessDenied {
            code,
            aws_message,
            request_id,
        } => MeteringError::AccessDenied {
            operation: context.operation,
            code,
            aws_message,
            credentials_from: context.credentials_from,
            request_id,
        },
        Undocumented::Unexpected {
            status,
            code,
            aws_message,
            request_id,
        } => MeteringError::UnexpectedResponse {
            operation: context.operation,
            status,
            code,
            aws_message,
            request_id,
        },
        Undocumented::TooLarge { limit } => MeteringError::ResponseTooLarge {
            operation: context.operation,
            limit,
        },
        Undocumented::Unreadable { status, detail } => MeteringError::Unreadable {
            operation: context.operation,
            status,
            detail,
        },
        Undocumented::RequestNotBuilt(detail) => MeteringError::RequestNotBuilt(detail),
        Undocumented::Sdk(detail) => MeteringError::Sdk(detail),
    })
}

/// The decision for a RegisterUsage error AWS documents by its code, or `None`.
fn register_usage_documented<T>(
    error: &RegisterUsageError,
    code: &str,
    aws_message: &str,
    context: &Classifying<'_>,
    request_id: &Option<String>,
) -> Option<Attempt<T, MeteringError>> {
    let refused = |refusal| refuse(refusal, aws_message, context, request_id);
    let transient = |kind| sdk_call::retry_later(kind, code, aws_message, request_id);
    Some(match error {
        RegisterUsageError::CustomerNotEntitledException(_) => {
            not_entitled(aws_message, context, request_id)
        }
        RegisterUsageError::PlatformNotSupportedException(_) => {
            refused(SetupRefusal::PlatformNotSupported)
        }
        RegisterUsageError::InvalidRegionException(_) => refused(SetupRefusal::InvalidRegion),
        RegisterUsageError::InvalidProductCodeException(_) => {
            refused(SetupRefusal::InvalidProductCode)
        }
        RegisterUsageError::InvalidPublicKeyVersionException(_) => {
            refused(SetupRefusal::InvalidPublicKeyVersion)
        }
        RegisterUsageError::DisabledApiException(_) => refused(SetupRefusal::DisabledApi),
        RegisterUsageError::ThrottlingException(_) => transient(TransientKind::Throttled),
        RegisterUsageError::InternalServiceErrorException(_) => {
            transient(TransientKind::ServerError)
        }
        _ => return None,
    })
}

fn refuse<T>(
    refusal: SetupRefusal,
    aws_message: &str,
    context: &Classifying<'_>,
    request_id: &Option<String>,
) -> Attempt<T, MeteringError> {
    Attempt::Failed(MeteringError::SetupRefused {
        refusal,
        product_code: context.product_code.to_owned(),
        public_key_version: context.public_key_version,
        region: context.region.to_owned(),
        aws_message: aws_message.to_owned(),
        request_id: request_id.clone(),
    })
}

fn not_entitled<T>(
    aws_message: &str,
    context: &Classifying<'_>,
    request_id: &Option<String>,
) -> Attempt<T, MeteringError> {
    Attempt::Failed(MeteringError::NotEntitled {
        product_code: context.product_code.to_owned(),
        region: context.region.to_owned(),
        aws_message: aws_message.to_owned(),
        request_id: request_id.clone(),
    })
}

/// One MeterUsage call: one dimension's usage for one hour, sent idempotently.
#[derive(Debug, Clone)]
pub struct MeterUsageCall<'a> {
    pub product_code: &'a ProductCode,
    pub dimension: &'a str,
    /// The start of the hour: MeterUsage rounds it down to the hour anyway.
    pub timestamp: SystemTime,
    /// A whole number of [`BILLABLE_STEP`]s.
    pub quantity: Quantity,
    /// Quantities by tag set (sorted key/value pairs); empty when no usage was tagged. The
    /// untagged set, if any, is an allocation without tags.
    pub allocations: &'a [(Vec<(String, String)>, Quantity)],
    /// The same for every resend of this hour, so AWS answers a resend with the same record.
    pub client_token: &'a str,
    pub region: &'a str,
    pub credentials_from: CredentialSource,
    pub endpoint: &'a str,
    pub retry: RetryPolicy,
}

/// MeterUsage's answer: the record AWS keeps for this dimension and hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterUsageAnswer {
    pub metering_record_id: String,
    pub request_id: Option<String>,
}

/// A MeterUsage call that did not get its record back.
#[derive(Debug)]
pub struct MeterUsageFailure {
    pub error: MeteringError,
    /// An attempt ended without proof that AWS did not record the usage (a timeout, a
    /// connection lost after sending): AWS may hold the record.
    pub may_be_recorded: bool,
}

/// Sends one MeterUsage record, retrying until it answers, fails for good, or no useful attempt
/// fits before `deadline`.
pub async fn meter_usage(
    client: &Client,
    call: &MeterUsageCall<'_>,
    deadline: Instant,
) -> Result<MeterUsageAnswer, MeterUsageFailure> {
    let allocations = usage_allocations(call.allocations).map_err(|error| MeterUsageFailure {
        error,
        may_be_recorded: false,
    })?;
    // Counted up as an attempt starts and down when its failure proves nothing was recorded:
    // an attempt abandoned at its timeout stays counted.
    let uncertain = AtomicU32::new(0);
    retry::until_deadline("MeterUsage", call.retry, deadline, || async {
        uncertain.fetch_add(1, Ordering::Relaxed);
        let sent = meter_usage_request(client, call, allocations.clone(), false)
            .send()
            .await;
        match sent {
            Ok(output) => receipt(output),
            Err(error) => {
                if sdk_call::proves_not_carried_out(&error) {
                    uncertain.fetch_sub(1, Ordering::Relaxed);
                }
                classify_meter_usage(&error, call)
            }
        }
    })
    .await
    .map_err(|error| MeterUsageFailure {
        error: match error {
            RetryError::Failed(error) => error,
            RetryError::GaveUp(gave_up) => {
                MeteringError::persisting(Operation::MeterUsage, gave_up, call.endpoint)
            }
        },
        may_be_recorded: uncertain.load(Ordering::Relaxed) > 0,
    })
}

/// A MeterUsage answer is a receipt only with the record AWS keeps. AWS always returns a
/// `MeteringRecordId`, so an answer without one is undocumented: the call ends as failed, and
/// since the request was answered (so AWS may have recorded it) the attempt stays counted as
/// one that may be recorded. The hour is then sent again under the same token, and left in doubt
/// if no receipt comes before its carry time.
fn receipt(output: MeterUsageOutput) -> Attempt<MeterUsageAnswer, MeteringError> {
    let request_id = output.request_id().map(text::quoted);
    match output.metering_record_id {
        Some(id) if !id.trim().is_empty() => Attempt::Answered(MeterUsageAnswer {
            metering_record_id: text::quoted(&id),
            request_id,
        }),
        _ => Attempt::Failed(MeteringError::NoMeteringRecordId { request_id }),
    }
}

/// A MeterUsage `DryRun`: checks the permission and the request without recording anything.
/// AWS answers `DryRunOperation` when the call would succeed.
pub async fn dry_run_meter_usage(
    client: &Client,
    call: &MeterUsageCall<'_>,
    deadline: Instant,
) -> Result<(), MeteringError> {
    let allocations = usage_allocations(call.allocations)?;
    retry::until_deadline("MeterUsage (DryRun)", call.retry, deadline, || async {
        let sent = meter_usage_request(client, call, allocations.clone(), true)
            .send()
            .await;
        match sent {
            // An answer without the error means the service recorded nothing either.
            Ok(_) => Attempt::Answered(()),
            Err(error) if error.code() == Some("DryRunOperation") => Attempt::Answered(()),
            Err(error) => classify_meter_usage(&error, call),
        }
    })
    .await
    .map_err(|error| match error {
        RetryError::Failed(error) => error,
        RetryError::GaveUp(gave_up) => {
            MeteringError::persisting(Operation::MeterUsage, gave_up, call.endpoint)
        }
    })
}

fn meter_usage_request(
    client: &Client,
    call: &MeterUsageCall<'_>,
    allocations: Option<Vec<UsageAllocation>>,
    dry_run: bool,
) -> aws_sdk_marketplacemetering::operation::meter_usage::builders::MeterUsageFluentBuilder {
    client
        .meter_usage()
        .product_code(call.product_code.as_str())
        .usage_dimension(call.dimension)
        .timestamp(DateTime::from(call.timestamp))
        .usage_quantity(wire_quantity(call.quantity))
        .set_usage_allocations(allocations)
        .client_token(call.client_token)
        .dry_run(dry_run)
}

/// The micro-units MeterUsage is sent in one piece: a whole unit, as long as the AWS SDK for
/// Rust has no `UsageQuantityAsDecimal` (1.124.0 does not). The meter bills whole steps and
/// carries the rest (`meter::billing`). The day the SDK sends decimals, this becomes 1 and
/// [`wire_quantity`] sets the decimal fields: the one place that changes.
pub const BILLABLE_STEP: u64 = MICROS_PER_UNIT;

/// A quantity as MeterUsage's `UsageQuantity` (and `AllocatedUsageQuantity`): whole units.
/// Quantities are whole steps by construction, and at most MeterUsage's maximum.
fn wire_quantity(quantity: Quantity) -> i32 {
    debug_assert_eq!(
        quantity.micros() % BILLABLE_STEP,
        0,
        "billed in whole steps"
    );
    i32::try_from(quantity.whole_units()).unwrap_or(i32::MAX)
}

/// The SDK's allocations; none when no usage was tagged.
fn usage_allocations(
    allocations: &[(Vec<(String, String)>, Quantity)],
) -> Result<Option<Vec<UsageAllocation>>, MeteringError> {
    if allocations.iter().all(|(tags, _)| tags.is_empty()) {
        return Ok(None);
    }
    let built = allocations
        .iter()
        .map(|(tags, quantity)| {
            let tags = tags
                .iter()
                .map(|(key, value)| Tag::builder().key(key).value(value).build())
                .collect::<Result<Vec<_>, _>>()?;
            UsageAllocation::builder()
                .allocated_usage_quantity(wire_quantity(*quantity))
                .set_tags((!tags.is_empty()).then_some(tags))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MeteringError::RequestNotBuilt(e.to_string()))?;
    Ok(Some(built))
}

/// Sorts a failed MeterUsage attempt into retry-or-stop.
fn classify_meter_usage<T>(
    error: &SdkError<MeterUsageError>,
    call: &MeterUsageCall<'_>,
) -> Attempt<T, MeteringError> {
    let context = Classifying {
        operation: Operation::MeterUsage,
        product_code: call.product_code.as_str(),
        public_key_version: 0,
        region: call.region,
        credentials_from: call.credentials_from,
    };
    classify_sdk(error, &context, |error, code, aws_message, request_id| {
        let failed = |error| Some(Attempt::Failed(error));
        let (aws_message, request_id) = (aws_message.to_owned(), request_id.clone());
        match error {
            MeterUsageError::CustomerNotEntitledException(_) => {
                Some(not_entitled(&aws_message, &context, &request_id))
            }
            MeterUsageError::InvalidProductCodeException(_) => Some(refuse(
                SetupRefusal::InvalidProductCode,
                &aws_message,
                &context,
                &request_id,
            )),
            MeterUsageError::InvalidEndpointRegionException(_) => Some(refuse(
                SetupRefusal::InvalidRegion,
                &aws_message,
                &context,
                &request_id,
            )),
            MeterUsageError::InvalidUsageDimensionException(_)
            | MeterUsageError::InvalidTagException(_)
            | MeterUsageError::InvalidUsageAllocationsException(_) => {
                failed(MeteringError::InvalidUsage {
                    code: code.to_owned(),
                    aws_message,
                    request_id,
                })
            }
            MeterUsageError::TimestampOutOfBoundsException(_) => {
                failed(MeteringError::TimestampOutOfBounds {
                    aws_message,
                    request_id,
                })
            }
            MeterUsageError::DuplicateRequestException(_) => {
                failed(MeteringError::DuplicateRequest {
                    aws_message,
                    request_id,
                })
            }
            MeterUsageError::IdempotencyConflictException(_) => {
                failed(MeteringError::IdempotencyConflict {
                    aws_message,
                    request_id,
                })
            }
            MeterUsageError::ThrottlingException(_) => Some(sdk_call::retry_later(
                TransientKind::Throttled,
                code,
                &aws_message,
                &request_id,
            )),
            MeterUsageError::InternalServiceErrorException(_) => Some(sdk_call::retry_later(
                TransientKind::ServerError,
                code,
                &aws_message,
                &request_id,
            )),
            // DryRun's refusal of a permission is documented under this name.
            _ if code == "UnauthorizedException" => failed(MeteringError::AccessDenied {
                operation: Operation::MeterUsage,
                code: code.to_owned(),
                aws_message,
                credentials_from: context.credentials_from,
                request_id,
            }),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::retry::Backoff;
    use crate::aws::sdk_call::{CREDENTIAL_ERROR_CODES, THROTTLING_CODES};
    use crate::domain::product_code::ProductCode;
    use aws_sdk_marketplacemetering::config::http::HttpResponse;
    use aws_sdk_marketplacemetering::error::ErrorMetadata;
    use aws_sdk_marketplacemetering::types::error as model;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    /// How a failed attempt is handled: retried (of what kind), or the error that ends it.
    #[derive(Debug, PartialEq, Eq)]
    enum Decision {
        Retry(TransientKind),
        NotEntitled,
        Refused(SetupRefusal),
        AccessDenied,
        Undocumented,
        Unreadable,
    }

    fn decide(error: SdkError<RegisterUsageError>) -> Decision {
        let binding = Binding {
            product_code: ProductCode::parse("prod").unwrap(),
            public_key_version: 1,
            nonce: "n".into(),
        };
        let call = RegisterUsageCall {
            binding: &binding,
            region: "us-east-1",
            credentials_from: CredentialSource::WebIdentityToken,
            endpoint: "http://127.0.0.1:1".into(),
            retry: RetryPolicy {
                attempt_timeout: Duration::from_secs(1),
                backoff: Backoff {
                    base: Duration::from_millis(200),
                    cap: Duration::from_secs(10),
                },
            },
        };
        match classify::<()>(&error, &call) {
            Attempt::Retry { failure, .. } => Decision::Retry(failure.kind),
            Attempt::Failed(MeteringError::NotEntitled { .. }) => Decision::NotEntitled,
            Attempt::Failed(MeteringError::SetupRefused { refusal, .. }) => {
                Decision::Refused(refusal)
            }
            Attempt::Failed(MeteringError::AccessDenied { .. }) => Decision::AccessDenied,
            Attempt::Failed(MeteringError::UnexpectedResponse { .. }) => Decision::Undocumented,
            Attempt::Failed(MeteringError::Unreadable { .. }) => Decision::Unreadable,
            other => panic!("unexpected decision {other:?}"),
        }
    }

    fn generic(code: &str) -> RegisterUsageError {
        RegisterUsageError::generic(ErrorMetadata::builder().code(code).message("m").build())
    }

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(
            StatusCode::try_from(status).unwrap(),
            SdkBody::from(body.to_owned()),
        )
    }

    fn service(error: RegisterUsageError, status: u16) -> SdkError<RegisterUsageError> {
        SdkError::service_error(error, response(status, "{}"))
    }

    /// An answer the SDK could not parse at all (a proxy's page, an empty body).
    fn unparseable(status: u16, body: &str) -> SdkError<RegisterUsageError> {
        SdkError::response_error("not the service's JSON", response(status, body))
    }

    #[test]
    fn modelled_errors_decide_by_their_code() {
        let meta = || ErrorMetadata::builder().message("m").build();
        use RegisterUsageError as E;
        let cases = vec![
            (
                E::CustomerNotEntitledException(
                    model::CustomerNotEntitledException::builder()
                        .meta(meta())
                        .build(),
                ),
                Decision::NotEntitled,
            ),
            (
                E::PlatformNotSupportedException(
                    model::PlatformNotSupportedException::builder()
                        .meta(meta())
                        .build(),
                ),
                Decision::Refused(SetupRefusal::PlatformNotSupported),
            ),
            (
                E::InvalidRegionException(
                    model::InvalidRegionException::builder()
                        .meta(meta())
                        .build(),
                ),
                Decision::Refused(SetupRefusal::InvalidRegion),
            ),
            (
                E::InvalidProductCodeException(
                    model::InvalidProductCodeException::builder()
                        .meta(meta())
                        .build(),
                ),
                Decision::Refused(SetupRefusal::InvalidProductCode),
            ),
            (
                E::InvalidPublicKeyVersionException(
                    model::InvalidPublicKeyVersionException::builder()
                        .meta(meta())
                        .build(),
                ),
                Decision::Refused(SetupRefusal::InvalidPublicKeyVersion),
            ),
            (
                E::DisabledApiException(
                    model::DisabledApiException::builder().meta(meta()).build(),
                ),
                Decision::Refused(SetupRefusal::DisabledApi),
            ),
            (
                E::ThrottlingException(model::ThrottlingException::builder().meta(meta()).build()),
                Decision::Retry(TransientKind::Throttled),
            ),
            (
                E::InternalServiceErrorException(
                    model::InternalServiceErrorException::builder()
                        .meta(meta())
                        .build(),
                ),
                Decision::Retry(TransientKind::ServerError),
            ),
        ];
        for (error, expected) in cases {
            let name = format!("{error:?}");
            assert_eq!(decide(service(error, 400)), expected, "{name}");
        }
    }

    #[test]
    fn credential_codes_are_access_denied() {
        for code in CREDENTIAL_ERROR_CODES {
            assert_eq!(
                decide(service(generic(code), 403)),
                Decision::AccessDenied,
                "{code}"
            );
        }
    }

    #[test]
    fn unmodelled_throttling_and_server_errors_are_retried() {
        for code in THROTTLING_CODES {
            assert_eq!(
                decide(service(generic(code), 400)),
                Decision::Retry(TransientKind::Throttled),
                "{code}"
            );
        }
        assert_eq!(
            decide(service(generic("ServiceUnavailable"), 503)),
            Decision::Retry(TransientKind::ServerError)
        );
        assert_eq!(
            decide(service(generic("Whatever"), 429)),
            Decision::Retry(TransientKind::Throttled)
        );
    }

    #[test]
    fn the_http_status_decides_when_no_documented_code_does() {
        use TransientKind::*;
        let message_only =
            RegisterUsageError::generic(ErrorMetadata::builder().message("slow down").build());
        let cases = vec![
            (
                "empty 500",
                unparseable(500, ""),
                Decision::Retry(ServerError),
            ),
            (
                "500 with a body",
                unparseable(500, "oops"),
                Decision::Retry(ServerError),
            ),
            (
                "proxy's 502 page",
                unparseable(502, "<html>Bad Gateway</html>"),
                Decision::Retry(ServerError),
            ),
            (
                "503 with a message only",
                SdkError::service_error(message_only, response(503, r#"{"message":"slow down"}"#)),
                Decision::Retry(ServerError),
            ),
            ("504", unparseable(504, ""), Decision::Retry(ServerError)),
            ("bare 429", unparseable(429, ""), Decision::Retry(Throttled)),
            ("302 redirect", unparseable(302, ""), Decision::Undocumented),
            (
                "404 page",
                unparseable(404, "<html>not found</html>"),
                Decision::Undocumented,
            ),
            (
                "400 without a code",
                service(generic(""), 400),
                Decision::Undocumented,
            ),
            (
                "400 ValidationException",
                service(generic("ValidationException"), 400),
                Decision::Undocumented,
            ),
            ("501", unparseable(501, ""), Decision::Undocumented),
            (
                "200 that is not JSON",
                unparseable(200, "<html>login</html>"),
                Decision::Unreadable,
            ),
        ];
        for (name, error, expected) in cases {
            assert_eq!(decide(error), expected, "{name}");
        }
    }

    #[test]
    fn a_meter_usage_answer_is_a_receipt_only_with_its_metering_record_id() {
        let answered = |id: Option<&str>| {
            receipt(
                MeterUsageOutput::builder()
                    .set_metering_record_id(id.map(str::to_owned))
                    .build(),
            )
        };
        let Attempt::Answered(answer) = answered(Some("rec-1")) else {
            panic!("a record ID is a receipt");
        };
        assert_eq!(answer.metering_record_id, "rec-1");
        for (name, id) in [("200 {}", None), ("empty", Some("")), ("blank", Some(" "))] {
            assert!(
                matches!(
                    answered(id),
                    Attempt::Failed(MeteringError::NoMeteringRecordId { .. })
                ),
                "{name}: not a receipt"
            );
        }
    }

    #[test]
    fn network_text_is_escaped_in_what_reaches_a_message() {
        let error = RegisterUsageError::generic(
            ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("denied\n2026-11-23T00:00:00Z  INFO entitled: forged line")
                .build(),
        );
        let binding = Binding {
            product_code: ProductCode::parse("prod").unwrap(),
            public_key_version: 1,
            nonce: "n".into(),
        };
        let call = RegisterUsageCall {
            binding: &binding,
            region: "us-east-1",
            credentials_from: CredentialSource::WebIdentityToken,
            endpoint: String::new(),
            retry: RetryPolicy {
                attempt_timeout: Duration::from_secs(1),
                backoff: Backoff {
                    base: Duration::from_millis(1),
                    cap: Duration::from_millis(1),
                },
            },
        };
        let Attempt::<(), _>::Failed(MeteringError::AccessDenied { aws_message, .. }) =
            classify(&service(error, 403), &call)
        else {
            panic!("expected an access denial");
        };
        assert!(!aws_message.contains('\n'), "{aws_message:?}");
        assert!(aws_message.contains("denied\\n2026"), "{aws_message:?}");
    }
}
