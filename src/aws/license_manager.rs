//! The AWS License Manager client: CheckoutLicense, ExtendLicenseConsumption, CheckInLicense,
//! GetLicense for contract pricing, and GetAccessToken for the Anywhere credentials, with their
//! failure classes. The SDK's own retries are off; [`retry::until_deadline`] owns retries.
//!
//! License Manager's answers carry no signature a buyer's workload can check (AWS publishes no
//! key for AWS Marketplace licenses), so they are trusted through TLS to AWS's endpoint. A
//! locked build therefore pins both, as for every AWS call ([`Pinning::AwsOnly`], applied by
//! [`sdk_call::sdk_config`]).

use std::time::SystemTime;

use aws_config::Region;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_licensemanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_licensemanager::operation::check_in_license::CheckInLicenseError;
use aws_sdk_licensemanager::operation::checkout_license::CheckoutLicenseError;
use aws_sdk_licensemanager::operation::extend_license_consumption::ExtendLicenseConsumptionError;
use aws_sdk_licensemanager::operation::get_access_token::GetAccessTokenError;
use aws_sdk_licensemanager::operation::get_license::GetLicenseError;
use aws_sdk_licensemanager::operation::RequestId as _;
use aws_sdk_licensemanager::types::{EntitlementData, EntitlementDataUnit};
use aws_sdk_licensemanager::Client;
use tokio::time::Instant;

use super::endpoint::{self, Pinning, Service};
use super::identity::CredentialSource;
use super::retry::{self, Attempt, RetryError, RetryPolicy, TransientKind};
use super::sdk_call::{self, Undocumented};
use crate::domain::license::{CheckoutType, EntitlementAllowed, EntitlementRequest, LicenseStatus};
use crate::domain::text;

/// The License Manager operations the gate calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CheckoutLicense,
    ExtendLicenseConsumption,
    CheckInLicense,
    GetLicense,
    GetAccessToken,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::CheckoutLicense => "CheckoutLicense",
            Operation::ExtendLicenseConsumption => "ExtendLicenseConsumption",
            Operation::CheckInLicense => "CheckInLicense",
            Operation::GetLicense => "GetLicense",
            Operation::GetAccessToken => "GetAccessToken",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// License Manager calls that kept failing in a way worth retrying, until the deadline.
pub type Persisting = retry::Persisting<Operation>;

/// Why a License Manager call did not answer as hoped.
#[derive(Debug, thiserror::Error)]
pub enum LicenseManagerError {
    /// No license for this product and these entitlements, or every seat taken: License Manager
    /// answers both the same way.
    #[error("{code}: {aws_message}")]
    NoEntitlements {
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    /// The consumption token or license is unknown (expired, checked in, or deleted).
    #[error("{operation}: ResourceNotFoundException: {aws_message}")]
    NotFound {
        operation: Operation,
        aws_message: String,
        request_id: Option<String>,
    },
    /// The license lives in another Region; `location` is what AWS named (a Region or an
    /// endpoint URL), escaped.
    #[error("RedirectException to {}: {aws_message}", location.as_deref().unwrap_or("(no location)"))]
    Redirect {
        location: Option<String>,
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
    /// The request was refused as malformed: the product ID, an entitlement or a unit.
    #[error("{operation}: {code}: {aws_message}")]
    Invalid {
        operation: Operation,
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    /// CheckInLicense of what cannot be returned (a drawdown).
    #[error("CheckInLicense: ConflictException: {aws_message}")]
    Conflict {
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("throttled until the deadline ({} attempts); last: {}", .0.gave_up.attempts, .0.gave_up.last.detail)]
    Throttled(Persisting),
    #[error("kept failing until the deadline ({} attempts); last: {}", .0.gave_up.attempts, .0.gave_up.last.detail)]
    ServiceUnavailable(Persisting),
    #[error("unreachable until the deadline ({} attempts); last: {}", .0.gave_up.attempts, .0.gave_up.last.detail)]
    Unreachable(Persisting),
    #[error("{operation}: an answer AWS does not document: HTTP {status} {code}: {aws_message}")]
    UnexpectedResponse {
        operation: Operation,
        status: u16,
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("{operation} answered without {field}")]
    Incomplete {
        operation: Operation,
        field: &'static str,
    },
    #[error("{operation} answered with more than {limit} bytes")]
    ResponseTooLarge { operation: Operation, limit: usize },
    #[error("{operation} answered HTTP {status} with a body that is not its JSON ({detail})")]
    Unreadable {
        operation: Operation,
        status: u16,
        detail: String,
    },
    #[error("the request could not be built: {0}")]
    RequestNotBuilt(String),
    #[error("the AWS SDK failed: {0}")]
    Sdk(String),
}

impl LicenseManagerError {
    /// The AWS request ID of the last answer that led here, when there was one.
    pub fn request_id(&self) -> Option<&str> {
        use LicenseManagerError as E;
        match self {
            E::NoEntitlements { request_id, .. }
            | E::NotFound { request_id, .. }
            | E::Redirect { request_id, .. }
            | E::AccessDenied { request_id, .. }
            | E::Invalid { request_id, .. }
            | E::Conflict { request_id, .. }
            | E::UnexpectedResponse { request_id, .. } => request_id.as_deref(),
            E::Throttled(persisting)
            | E::ServiceUnavailable(persisting)
            | E::Unreachable(persisting) => persisting.gave_up.request_id.as_deref(),
            _ => None,
        }
    }

    /// Whether this is worth trying again later: AWS was slow or unreachable, not refusing.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LicenseManagerError::Throttled(_)
                | LicenseManagerError::ServiceUnavailable(_)
                | LicenseManagerError::Unreachable(_)
        )
    }
}

/// License Manager in one Region, as one identity, with one retry policy.
#[derive(Debug, Clone)]
pub struct LicenseManager {
    pub client: Client,
    pub region: String,
    /// The endpoint the SDK will call, for messages.
    pub endpoint: String,
    pub credentials_from: CredentialSource,
    pub retry: RetryPolicy,
    credentials: Option<SharedCredentialsProvider>,
    pinning: Pinning,
}

impl LicenseManager {
    /// The same identity and policy in another Region (a redirect to the license's home).
    pub async fn in_region(&self, region: Region) -> LicenseManager {
        LicenseManager::new(
            region,
            self.credentials.clone(),
            self.credentials_from,
            self.retry,
            self.pinning,
        )
        .await
    }

    /// A client for `region`; `credentials` `None` sends unsigned requests (GetAccessToken,
    /// which is how the Anywhere token is exchanged before there are credentials).
    pub async fn new(
        region: Region,
        credentials: Option<SharedCredentialsProvider>,
        credentials_from: CredentialSource,
        retry: RetryPolicy,
        pinning: Pinning,
    ) -> LicenseManager {
        let unsigned = credentials.is_none();
        let sdk = sdk_call::sdk_config(
            region.clone(),
            credentials.clone(),
            retry.attempt_timeout,
            pinning,
        )
        .await;
        let mut config = aws_sdk_licensemanager::config::Builder::from(&sdk)
            .interceptor(sdk_call::ResponseSizeLimit);
        if unsigned {
            config = config.allow_no_auth();
        }
        let endpoint = endpoint::resolve(Service::LicenseManager, region.as_ref(), pinning).await;
        let config = config.build();
        LicenseManager {
            client: Client::from_conf(config),
            region: region.to_string(),
            endpoint,
            credentials_from,
            retry,
            credentials,
            pinning,
        }
    }
}

/// What a checkout asks for.
#[derive(Debug, Clone)]
pub struct CheckoutRequest<'a> {
    pub product_id: &'a str,
    pub checkout_type: CheckoutType,
    pub key_fingerprint: &'a str,
    pub entitlements: &'a [EntitlementRequest],
    /// The same for every retry of this checkout, so a retried drawdown is not drawn twice.
    pub client_token: &'a str,
    pub node_id: Option<&'a str>,
}

/// A checkout AWS granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub license_arn: String,
    pub checkout_type: CheckoutType,
    pub entitlements_allowed: Vec<EntitlementAllowed>,
    pub consumption_token: String,
    pub issued_at: Option<u64>,
    pub expiration: Option<u64>,
    pub signed_token: Option<String>,
    pub node_id: Option<String>,
    pub request_id: Option<String>,
}

/// Checks out the requested entitlements, retrying transient failures until `deadline`.
pub async fn checkout(
    lm: &LicenseManager,
    request: &CheckoutRequest<'_>,
    deadline: Instant,
) -> Result<Checkout, LicenseManagerError> {
    let entitlements = request
        .entitlements
        .iter()
        .map(|wanted| {
            EntitlementData::builder()
                .name(&wanted.name)
                .unit(EntitlementDataUnit::from(wanted.unit.as_str()))
                .set_value(wanted.value.clone())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LicenseManagerError::RequestNotBuilt(e.to_string()))?;
    let operation = Operation::CheckoutLicense;
    let answer = retry::until_deadline(operation.name(), lm.retry, deadline, || async {
        let sent = lm
            .client
            .checkout_license()
            .product_sku(request.product_id)
            .checkout_type(aws_sdk_licensemanager::types::CheckoutType::from(
                request.checkout_type.as_str(),
            ))
            .key_fingerprint(request.key_fingerprint)
            .set_entitlements(Some(entitlements.clone()))
            .client_token(request.client_token)
            .set_node_id(request.node_id.map(str::to_owned))
            .send()
            .await;
        match sent {
            Ok(output) => Attempt::Answered(output),
            Err(error) => {
                // The model binds Location to a header, the JSON protocol to the body: read both.
                let location_header = error
                    .raw_response()
                    .and_then(|response| response.headers().get("Location"))
                    .map(str::to_owned);
                classify(
                    &error,
                    operation,
                    lm.credentials_from,
                    |error, code, message, id| {
                        use CheckoutLicenseError as C;
                        match error {
                            C::NoEntitlementsAllowedException(_) => {
                                Some(no_entitlements(code, message, id))
                            }
                            C::ResourceNotFoundException(_) => {
                                Some(not_found(operation, message, id))
                            }
                            C::RedirectException(redirect) => {
                                Some(Attempt::Failed(LicenseManagerError::Redirect {
                                    location: redirect
                                        .location()
                                        .map(str::to_owned)
                                        .or_else(|| location_header.clone())
                                        .map(|location| text::quoted(&location)),
                                    aws_message: message.to_owned(),
                                    request_id: id.clone(),
                                }))
                            }
                            C::ValidationException(_)
                            | C::InvalidParameterValueException(_)
                            | C::UnsupportedDigitalSignatureMethodException(_) => {
                                Some(invalid(operation, code, message, id))
                            }
                            C::RateLimitExceededException(_) => Some(sdk_call::retry_later(
                                TransientKind::Throttled,
                                code,
                                message,
                                id,
                            )),
                            C::ServerInternalException(_) => Some(sdk_call::retry_later(
                                TransientKind::ServerError,
                                code,
                                message,
                                id,
                            )),
                            C::AccessDeniedException(_) | C::AuthorizationException(_) => Some(
                                access_denied(operation, code, message, lm.credentials_from, id),
                            ),
                            _ => None,
                        }
                    },
                )
            }
        }
    })
    .await
    .map_err(|error| gave_up(error, operation, lm))?;
    let consumption_token = answer
        .license_consumption_token()
        .map(str::to_owned)
        .ok_or(LicenseManagerError::Incomplete {
            operation,
            field: "LicenseConsumptionToken",
        })?;
    let license_arn =
        answer
            .license_arn()
            .map(text::quoted)
            .ok_or(LicenseManagerError::Incomplete {
                operation,
                field: "LicenseArn",
            })?;
    Ok(Checkout {
        license_arn,
        checkout_type: match answer.checkout_type() {
            Some(aws_sdk_licensemanager::types::CheckoutType::Perpetual) => CheckoutType::Perpetual,
            _ => request.checkout_type,
        },
        entitlements_allowed: answer
            .entitlements_allowed()
            .iter()
            .map(|allowed| EntitlementAllowed {
                name: text::quoted(allowed.name()),
                unit: text::quoted(allowed.unit().as_str()),
                value: allowed.value().map(text::quoted),
            })
            .collect(),
        consumption_token,
        issued_at: answer.issued_at().and_then(parse_time),
        expiration: answer.expiration().and_then(parse_time),
        signed_token: answer.signed_token().map(str::to_owned),
        node_id: answer.node_id().map(text::quoted),
        request_id: answer.request_id().map(text::quoted),
    })
}

/// Extends a provisional checkout; returns the consumption token to use from now on (AWS may
/// answer with a new one) and the new expiration.
pub async fn extend(
    lm: &LicenseManager,
    consumption_token: &str,
    deadline: Instant,
) -> Result<(String, Option<u64>), LicenseManagerError> {
    let operation = Operation::ExtendLicenseConsumption;
    let answer = retry::until_deadline(operation.name(), lm.retry, deadline, || async {
        let sent = lm
            .client
            .extend_license_consumption()
            .license_consumption_token(consumption_token)
            .send()
            .await;
        match sent {
            Ok(output) => Attempt::Answered(output),
            Err(error) => classify(
                &error,
                operation,
                lm.credentials_from,
                |error, code, message, id| {
                    use ExtendLicenseConsumptionError as X;
                    match error {
                        X::ResourceNotFoundException(_) => Some(not_found(operation, message, id)),
                        X::ValidationException(_) | X::InvalidParameterValueException(_) => {
                            Some(invalid(operation, code, message, id))
                        }
                        X::RateLimitExceededException(_) => Some(sdk_call::retry_later(
                            TransientKind::Throttled,
                            code,
                            message,
                            id,
                        )),
                        X::ServerInternalException(_) => Some(sdk_call::retry_later(
                            TransientKind::ServerError,
                            code,
                            message,
                            id,
                        )),
                        X::AccessDeniedException(_) | X::AuthorizationException(_) => Some(
                            access_denied(operation, code, message, lm.credentials_from, id),
                        ),
                        _ => None,
                    }
                },
            ),
        }
    })
    .await
    .map_err(|error| gave_up(error, operation, lm))?;
    Ok((
        answer
            .license_consumption_token()
            .unwrap_or(consumption_token)
            .to_owned(),
        answer.expiration().and_then(parse_time),
    ))
}

/// Returns a provisional checkout's entitlements to the pool.
pub async fn check_in(
    lm: &LicenseManager,
    consumption_token: &str,
    deadline: Instant,
) -> Result<(), LicenseManagerError> {
    let operation = Operation::CheckInLicense;
    retry::until_deadline(operation.name(), lm.retry, deadline, || async {
        let sent = lm
            .client
            .check_in_license()
            .license_consumption_token(consumption_token)
            .send()
            .await;
        match sent {
            Ok(_) => Attempt::Answered(()),
            Err(error) => classify(
                &error,
                operation,
                lm.credentials_from,
                |error, code, message, id| {
                    use CheckInLicenseError as I;
                    match error {
                        I::ResourceNotFoundException(_) => Some(not_found(operation, message, id)),
                        I::ConflictException(_) => {
                            Some(Attempt::Failed(LicenseManagerError::Conflict {
                                aws_message: message.to_owned(),
                                request_id: id.clone(),
                            }))
                        }
                        I::ValidationException(_) | I::InvalidParameterValueException(_) => {
                            Some(invalid(operation, code, message, id))
                        }
                        I::RateLimitExceededException(_) => Some(sdk_call::retry_later(
                            TransientKind::Throttled,
                            code,
                            message,
                            id,
                        )),
                        I::ServerInternalException(_) => Some(sdk_call::retry_later(
                            TransientKind::ServerError,
                            code,
                            message,
                            id,
                        )),
                        I::AccessDeniedException(_) | I::AuthorizationException(_) => Some(
                            access_denied(operation, code, message, lm.credentials_from, id),
                        ),
                        _ => None,
                    }
                },
            ),
        }
    })
    .await
    .map_err(|error| gave_up(error, operation, lm))
}

/// The license as GetLicense describes it: its product, status, validity and entitlements.
pub async fn get_license(
    lm: &LicenseManager,
    license_arn: &str,
    deadline: Instant,
) -> Result<LicenseStatus, LicenseManagerError> {
    let operation = Operation::GetLicense;
    let answer = retry::until_deadline(operation.name(), lm.retry, deadline, || async {
        let sent = lm
            .client
            .get_license()
            .license_arn(license_arn)
            .send()
            .await;
        match sent {
            Ok(output) => Attempt::Answered(output),
            Err(error) => classify(
                &error,
                operation,
                lm.credentials_from,
                |error, code, message, id| {
                    use GetLicenseError as G;
                    match error {
                        G::ValidationException(_) | G::InvalidParameterValueException(_) => {
                            Some(invalid(operation, code, message, id))
                        }
                        // Not in GetLicense's model, but License Manager's code for a license
                        // that does not exist: an answer about the license, not an outage.
                        _ if code == "ResourceNotFoundException" => {
                            Some(not_found(operation, message, id))
                        }
                        G::RateLimitExceededException(_) => Some(sdk_call::retry_later(
                            TransientKind::Throttled,
                            code,
                            message,
                            id,
                        )),
                        G::ServerInternalException(_) => Some(sdk_call::retry_later(
                            TransientKind::ServerError,
                            code,
                            message,
                            id,
                        )),
                        G::AccessDeniedException(_) | G::AuthorizationException(_) => Some(
                            access_denied(operation, code, message, lm.credentials_from, id),
                        ),
                        _ => None,
                    }
                },
            ),
        }
    })
    .await
    .map_err(|error| gave_up(error, operation, lm))?;
    let license = answer.license().ok_or(LicenseManagerError::Incomplete {
        operation,
        field: "License",
    })?;
    Ok(LicenseStatus {
        product_sku: license.product_sku().map(text::quoted),
        status: license.status().map_or_else(
            || "UNKNOWN".to_owned(),
            |status| text::quoted(status.as_str()),
        ),
        ends: license
            .validity()
            .and_then(|validity| validity.end())
            .and_then(parse_time),
        entitlements: license
            .entitlements()
            .iter()
            .map(|entitlement| EntitlementAllowed {
                name: text::quoted(entitlement.name()),
                unit: text::quoted(entitlement.unit().as_str()),
                value: entitlement
                    .value()
                    .map(text::quoted)
                    .or_else(|| entitlement.max_count().map(|max| max.to_string())),
            })
            .collect(),
    })
}

/// Exchanges the buyer's license token (a refresh token) for an access token, unsigned.
pub async fn get_access_token(
    lm: &LicenseManager,
    refresh_token: &str,
    deadline: Instant,
) -> Result<String, LicenseManagerError> {
    let operation = Operation::GetAccessToken;
    let answer = retry::until_deadline(operation.name(), lm.retry, deadline, || async {
        let sent = lm
            .client
            .get_access_token()
            .token(refresh_token)
            .send()
            .await;
        match sent {
            Ok(output) => Attempt::Answered(output),
            Err(error) => classify(
                &error,
                operation,
                lm.credentials_from,
                |error, code, message, id| {
                    use GetAccessTokenError as T;
                    match error {
                        T::ValidationException(_) => Some(invalid(operation, code, message, id)),
                        T::RateLimitExceededException(_) => Some(sdk_call::retry_later(
                            TransientKind::Throttled,
                            code,
                            message,
                            id,
                        )),
                        T::ServerInternalException(_) => Some(sdk_call::retry_later(
                            TransientKind::ServerError,
                            code,
                            message,
                            id,
                        )),
                        T::AccessDeniedException(_) | T::AuthorizationException(_) => Some(
                            access_denied(operation, code, message, lm.credentials_from, id),
                        ),
                        _ => None,
                    }
                },
            ),
        }
    })
    .await
    .map_err(|error| gave_up(error, operation, lm))?;
    answer
        .access_token()
        .map(str::to_owned)
        .ok_or(LicenseManagerError::Incomplete {
            operation,
            field: "AccessToken",
        })
}

/// A time as License Manager writes it: ISO 8601, with or without a zone (UTC then).
fn parse_time(text: &str) -> Option<u64> {
    let text = text.trim();
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(text))
        .ok()
        .and_then(|time| time.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|since| since.as_secs())
}

/// Sorts a failed attempt: the operation's documented codes (`documented`), then what every
/// AWS API shares.
fn classify<E, T>(
    error: &SdkError<E>,
    operation: Operation,
    credentials_from: CredentialSource,
    documented: impl Fn(&E, &str, &str, &Option<String>) -> Option<Attempt<T, LicenseManagerError>>,
) -> Attempt<T, LicenseManagerError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    sdk_call::classify(error, documented, |failure| match failure {
        Undocumented::AccessDenied {
            code,
            aws_message,
            request_id,
        } => LicenseManagerError::AccessDenied {
            operation,
            code,
            aws_message,
            credentials_from,
            request_id,
        },
        Undocumented::Unexpected {
            status,
            code,
            aws_message,
            request_id,
        } => LicenseManagerError::UnexpectedResponse {
            operation,
            status,
            code,
            aws_message,
            request_id,
        },
        Undocumented::TooLarge { limit } => {
            LicenseManagerError::ResponseTooLarge { operation, limit }
        }
        Undocumented::Unreadable { status, detail } => LicenseManagerError::Unreadable {
            operation,
            status,
            detail,
        },
        Undocumented::RequestNotBuilt(detail) => LicenseManagerError::RequestNotBuilt(detail),
        Undocumented::Sdk(detail) => LicenseManagerError::Sdk(detail),
    })
}

fn no_entitlements<T>(
    code: &str,
    message: &str,
    request_id: &Option<String>,
) -> Attempt<T, LicenseManagerError> {
    Attempt::Failed(LicenseManagerError::NoEntitlements {
        code: code.to_owned(),
        aws_message: message.to_owned(),
        request_id: request_id.clone(),
    })
}

fn not_found<T>(
    operation: Operation,
    message: &str,
    request_id: &Option<String>,
) -> Attempt<T, LicenseManagerError> {
    Attempt::Failed(LicenseManagerError::NotFound {
        operation,
        aws_message: message.to_owned(),
        request_id: request_id.clone(),
    })
}

fn invalid<T>(
    operation: Operation,
    code: &str,
    message: &str,
    request_id: &Option<String>,
) -> Attempt<T, LicenseManagerError> {
    Attempt::Failed(LicenseManagerError::Invalid {
        operation,
        code: code.to_owned(),
        aws_message: message.to_owned(),
        request_id: request_id.clone(),
    })
}

fn access_denied<T>(
    operation: Operation,
    code: &str,
    message: &str,
    credentials_from: CredentialSource,
    request_id: &Option<String>,
) -> Attempt<T, LicenseManagerError> {
    Attempt::Failed(LicenseManagerError::AccessDenied {
        operation,
        code: code.to_owned(),
        aws_message: message.to_owned(),
        credentials_from,
        request_id: request_id.clone(),
    })
}

fn gave_up(
    error: RetryError<LicenseManagerError>,
    operation: Operation,
    lm: &LicenseManager,
) -> LicenseManagerError {
    match error {
        RetryError::Failed(error) => error,
        RetryError::GaveUp(gave_up) => {
            let persisting = Persisting {
                operation,
                gave_up,
                endpoint: lm.endpoint.clone(),
            };
            match persisting.gave_up.last.kind {
                TransientKind::Throttled => LicenseManagerError::Throttled(persisting),
                TransientKind::ServerError => LicenseManagerError::ServiceUnavailable(persisting),
                TransientKind::Network | TransientKind::Timeout => {
                    LicenseManagerError::Unreachable(persisting)
                }
            }
        }
    }
}

/// The Region a redirect names: a Region name, or AWS's License Manager endpoint URL for it.
/// Anything else is not followed (a locked build must never be sent to another host).
pub fn redirect_region(location: &str) -> Option<String> {
    let host = location
        .trim()
        .strip_prefix("https://")
        .map(|rest| rest.split(['/', ':']).next().unwrap_or(rest));
    let region = match host {
        Some(host) => host.strip_prefix("license-manager.").and_then(|rest| {
            rest.strip_suffix(".amazonaws.com")
                .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
        })?,
        None => location.trim(),
    };
    let valid = !region.is_empty()
        && region.len() <= 32
        && region.split('-').count() >= 3
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    valid.then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_followed_only_to_an_aws_region() {
        assert_eq!(redirect_region("us-west-2").as_deref(), Some("us-west-2"));
        assert_eq!(
            redirect_region("https://license-manager.eu-central-1.amazonaws.com").as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(
            redirect_region("https://license-manager.cn-north-1.amazonaws.com.cn/").as_deref(),
            Some("cn-north-1")
        );
        for elsewhere in [
            "https://evil.example.com",
            "https://license-manager.us-west-2.evil.com",
            "http://license-manager.us-west-2.amazonaws.com",
            "",
            "US-WEST-2",
            "us west 2",
        ] {
            assert_eq!(redirect_region(elsewhere), None, "{elsewhere:?}");
        }
    }

    #[test]
    fn times_are_read_with_or_without_a_zone() {
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_time("1970-01-01T00:01:00"), Some(60));
        assert_eq!(parse_time("soon"), None);
    }
}
