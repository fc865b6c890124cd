//! The RegisterUsage call: one SDK client with the SDK's own retries off, and a retry loop that
//! knows which failures are worth another attempt and stops at the run's deadline.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_marketplacemetering::config::endpoint::{
    DefaultResolver, Params as EndpointParams, ResolveEndpoint as _,
};
use aws_sdk_marketplacemetering::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_marketplacemetering::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_marketplacemetering::error::BoxError;
use aws_sdk_marketplacemetering::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_marketplacemetering::operation::register_usage::RegisterUsageError;
use aws_sdk_marketplacemetering::Client;
use aws_smithy_types::body::SdkBody;
use http_body_util::{LengthLimitError, Limited};
use rand::rngs::OsRng;
use rand::{Rng as _, TryRngCore as _};
use tokio::time::Instant;

use crate::aws_identity::error_chain;
use crate::config::ConfigError;
use crate::outcome::{CallContext, GateError, SetupRefusal};
use crate::token::TokenError;

/// How long to wait between attempts: exponential backoff with full jitter, i.e. a uniform draw
/// from `[0, min(cap, base * 2^attempt)]`, which spreads a crowd of gates over the quota window
/// instead of retrying in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling of the jitter window before retry number `retry` (0 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.base
            .checked_mul(1u32 << retry.min(20))
            .map_or(self.cap, |window| window.min(self.cap))
    }

    /// A random delay in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry).as_micros() as u64;
        Duration::from_micros(OsRng.unwrap_err().random_range(0..=ceiling))
    }
}

/// What one RegisterUsage call is for.
#[derive(Debug, Clone)]
pub struct RegisterUsageCall<'a> {
    pub context: &'a CallContext,
    pub nonce: &'a str,
    pub credentials_from: String,
    pub endpoint: String,
    pub attempt_timeout: Duration,
    pub backoff: Backoff,
}

/// A successful RegisterUsage answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterUsageAnswer {
    pub signature: String,
    /// Epoch seconds; AWS sends it when the public key version has expired.
    pub public_key_rotation_timestamp: Option<i64>,
}

/// How one failed attempt should be handled.
#[derive(Debug)]
pub enum AttemptFailure {
    /// Throttling, 5xx, timeouts, connection failures: try again if time allows.
    Transient(String),
    /// Anything else ends the run.
    Final(GateError),
}

/// The largest RegisterUsage answer the gate reads; real ones are about 1 KiB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Caps how much of an answer the SDK reads, so a broken proxy or a hostile endpoint cannot
/// exhaust the init container's memory with an endless body.
#[derive(Debug)]
struct ResponseSizeLimit;

impl Intercept for ResponseSizeLimit {
    fn name(&self) -> &'static str {
        "ResponseSizeLimit"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        let body = response.take_body();
        *response.body_mut() = SdkBody::from_body_1_x(Limited::new(body, MAX_RESPONSE_BYTES));
        Ok(())
    }
}

/// Builds a client for `region` with fixed credentials; the SDK still reads the endpoint
/// overrides (`AWS_ENDPOINT_URL_MARKETPLACE_METERING`, `AWS_ENDPOINT_URL`) and profile settings.
pub async fn client(region: Region, credentials: Credentials, attempt_timeout: Duration) -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(credentials)
        // The retry loop below owns retries: it knows the deadline and the jitter policy.
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(attempt_timeout.min(Duration::from_secs(3)))
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        )
        .load()
        .await;
    client_from(&config)
}

/// A RegisterUsage client from an SDK configuration, with the gate's response-size limit.
pub fn client_from(config: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_marketplacemetering::config::Builder::from(config)
        .interceptor(ResponseSizeLimit)
        .build();
    Client::from_conf(config)
}

/// The endpoint the SDK will call, resolved by the SDK's own rules (partitions, FIPS, dual-stack)
/// from the same environment variables the SDK reads.
pub async fn endpoint_for(region: &str) -> String {
    endpoint_with(region, |name| std::env::var(name).ok()).await
}

async fn endpoint_with(region: &str, env: impl Fn(&str) -> Option<String>) -> String {
    let flag = |name: &str| env(name).is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let endpoint_override = ["AWS_ENDPOINT_URL_MARKETPLACE_METERING", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|name| env(name).filter(|url| !url.is_empty()));
    let resolved = match EndpointParams::builder()
        .region(region)
        .use_fips(flag("AWS_USE_FIPS_ENDPOINT"))
        .use_dual_stack(flag("AWS_USE_DUALSTACK_ENDPOINT"))
        .set_endpoint(endpoint_override)
        .build()
    {
        Ok(params) => DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map(|endpoint| endpoint.url().to_owned())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    resolved.unwrap_or_else(|e| format!("(no metering endpoint for Region {region}: {e})"))
}

/// Calls RegisterUsage until it answers, fails for good, or no attempt fits before `deadline`.
pub async fn register_usage(
    client: &Client,
    call: &RegisterUsageCall<'_>,
    deadline: Instant,
) -> Result<RegisterUsageAnswer, GateError> {
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = client
            .register_usage()
            .product_code(&call.context.product_code)
            .public_key_version(call.context.public_key_version as i32)
            .nonce(call.nonce)
            .send();
        attempts += 1;
        let last_error =
            match tokio::time::timeout(call.attempt_timeout.min(remaining), attempt).await {
                Ok(Ok(output)) => {
                    return Ok(RegisterUsageAnswer {
                        signature: output
                            .signature
                            .ok_or(GateError::Token(TokenError::Missing))?,
                        public_key_rotation_timestamp: output
                            .public_key_rotation_timestamp
                            .map(|time| time.secs()),
                    })
                }
                Ok(Err(error)) => match classify(&error, call) {
                    AttemptFailure::Final(error) => return Err(error),
                    AttemptFailure::Transient(reason) => reason,
                },
                Err(_) => format!("no answer within {:?}", call.attempt_timeout.min(remaining)),
            };
        let delay = call.backoff.delay(attempts - 1);
        tracing::warn!(attempt = attempts, error = %last_error, retry_in_ms = delay.as_millis() as u64,
            "RegisterUsage attempt failed; retrying");
        if Instant::now() + delay >= deadline {
            return Err(GateError::Unreachable {
                attempts,
                elapsed: started.elapsed(),
                last_error,
                endpoint: call.endpoint.clone(),
            });
        }
        tokio::time::sleep(delay).await;
    }
}

/// Codes that mean the credentials or their permissions are wrong, wherever AWS reports them.
const CREDENTIAL_ERROR_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "IncompleteSignatureException",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "RequestExpired",
    "NotAuthorized",
];

/// Throttling codes outside the RegisterUsage model that AWS front ends also send.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
];

/// Sorts a failed attempt into retry-or-stop, with the error that ends the run.
pub fn classify(
    error: &SdkError<RegisterUsageError>,
    call: &RegisterUsageCall<'_>,
) -> AttemptFailure {
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            classify_service_error(service.err(), status, call)
        }
        SdkError::TimeoutError(_) => AttemptFailure::Transient("the attempt timed out".to_owned()),
        SdkError::DispatchFailure(failure) if failure.is_user() => AttemptFailure::Final(
            GateError::Config(ConfigError::RequestNotBuilt(error_chain(error))),
        ),
        SdkError::ResponseError(_) if caused_by::<LengthLimitError>(error) => {
            AttemptFailure::Final(GateError::Token(TokenError::ResponseTooLarge {
                limit: MAX_RESPONSE_BYTES,
            }))
        }
        // The SDK read the whole body (it is kept) but could not parse it: a success status with
        // a body that is not a RegisterUsage answer, such as a proxy's HTML page. Not transient.
        SdkError::ResponseError(response) if response.raw().body().bytes().is_some() => {
            AttemptFailure::Final(GateError::Token(TokenError::Malformed(format!(
                "RegisterUsage answered HTTP {} with a body that is not its JSON ({})",
                response.raw().status().as_u16(),
                error_chain(error)
            ))))
        }
        // Connection refused or reset, DNS, TLS, or a response cut off mid-body.
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            AttemptFailure::Transient(error_chain(error))
        }
        SdkError::ConstructionFailure(_) => AttemptFailure::Final(GateError::Config(
            ConfigError::RequestNotBuilt(error_chain(error)),
        )),
        _ => AttemptFailure::Final(GateError::Internal(error_chain(error))),
    }
}

/// Whether `error` or any of its sources is a `T`.
fn caused_by<T: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(cause) = current {
        if cause.is::<T>() {
            return true;
        }
        current = cause.source();
    }
    false
}

fn classify_service_error(
    error: &RegisterUsageError,
    status: u16,
    call: &RegisterUsageCall<'_>,
) -> AttemptFailure {
    let code = error.code().unwrap_or("");
    let aws_message = error.message().unwrap_or("no message").to_owned();
    let refused = |refusal| {
        AttemptFailure::Final(GateError::SetupRefused {
            refusal,
            context: call.context.clone(),
            aws_message: aws_message.clone(),
        })
    };
    match error {
        RegisterUsageError::CustomerNotEntitledException(_) => {
            return AttemptFailure::Final(GateError::NotEntitled {
                context: call.context.clone(),
                aws_message,
            })
        }
        RegisterUsageError::PlatformNotSupportedException(_) => {
            return refused(SetupRefusal::PlatformNotSupported)
        }
        RegisterUsageError::InvalidRegionException(_) => {
            return refused(SetupRefusal::InvalidRegion)
        }
        RegisterUsageError::InvalidProductCodeException(_) => {
            return refused(SetupRefusal::InvalidProductCode)
        }
        RegisterUsageError::InvalidPublicKeyVersionException(_) => {
            return refused(SetupRefusal::InvalidPublicKeyVersion)
        }
        RegisterUsageError::DisabledApiException(_) => return refused(SetupRefusal::DisabledApi),
        RegisterUsageError::ThrottlingException(_)
        | RegisterUsageError::InternalServiceErrorException(_) => {
            return AttemptFailure::Transient(format!("{code}: {aws_message}"))
        }
        _ => {}
    }
    if (200..300).contains(&status) {
        // A success status whose body is not a RegisterUsage answer.
        return AttemptFailure::Final(GateError::Token(TokenError::Malformed(format!(
            "RegisterUsage answered HTTP {status} with an unreadable body ({})",
            error_chain(error)
        ))));
    }
    if CREDENTIAL_ERROR_CODES.contains(&code) {
        return AttemptFailure::Final(GateError::AccessDenied {
            code: code.to_owned(),
            aws_message,
            credentials_from: call.credentials_from.clone(),
        });
    }
    if status >= 500 || status == 429 || THROTTLING_CODES.contains(&code) {
        let code = if code.is_empty() {
            "no error code"
        } else {
            code
        };
        return AttemptFailure::Transient(format!("HTTP {status} {code}: {aws_message}"));
    }
    AttemptFailure::Final(GateError::UnexpectedResponse {
        status,
        code: if code.is_empty() {
            "(no error code)".to_owned()
        } else {
            code.to_owned()
        },
        aws_message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_marketplacemetering::error::ErrorMetadata;
    use aws_sdk_marketplacemetering::types::error as model;

    fn context() -> CallContext {
        CallContext {
            product_code: "prod".into(),
            public_key_version: 1,
            region: "us-east-1".into(),
        }
    }

    fn with_call<T>(f: impl FnOnce(&RegisterUsageCall<'_>) -> T) -> T {
        let context = context();
        let call = RegisterUsageCall {
            context: &context,
            nonce: "n",
            credentials_from: "web identity token (IRSA)".into(),
            endpoint: "http://127.0.0.1:1".into(),
            attempt_timeout: Duration::from_secs(1),
            backoff: Backoff {
                base: Duration::from_millis(200),
                cap: Duration::from_secs(10),
            },
        };
        f(&call)
    }

    fn generic(code: &str) -> RegisterUsageError {
        RegisterUsageError::generic(ErrorMetadata::builder().code(code).message("m").build())
    }

    fn exit_code_of(error: RegisterUsageError, status: u16) -> Option<u8> {
        with_call(|call| match classify_service_error(&error, status, call) {
            AttemptFailure::Transient(_) => None,
            AttemptFailure::Final(error) => Some(crate::outcome::report(&error).exit_code),
        })
    }

    #[test]
    fn modelled_errors_map_to_their_exit_codes() {
        let meta = || ErrorMetadata::builder().message("m").build();
        let cases: Vec<(RegisterUsageError, Option<u8>)> = vec![
            (
                RegisterUsageError::CustomerNotEntitledException(
                    model::CustomerNotEntitledException::builder()
                        .meta(meta())
                        .build(),
                ),
                Some(3),
            ),
            (
                RegisterUsageError::PlatformNotSupportedException(
                    model::PlatformNotSupportedException::builder()
                        .meta(meta())
                        .build(),
                ),
                Some(5),
            ),
            (
                RegisterUsageError::InvalidRegionException(
                    model::InvalidRegionException::builder()
                        .meta(meta())
                        .build(),
                ),
                Some(5),
            ),
            (
                RegisterUsageError::InvalidProductCodeException(
                    model::InvalidProductCodeException::builder()
                        .meta(meta())
                        .build(),
                ),
                Some(5),
            ),
            (
                RegisterUsageError::InvalidPublicKeyVersionException(
                    model::InvalidPublicKeyVersionException::builder()
                        .meta(meta())
                        .build(),
                ),
                Some(5),
            ),
            (
                RegisterUsageError::DisabledApiException(
                    model::DisabledApiException::builder().meta(meta()).build(),
                ),
                Some(5),
            ),
            (
                RegisterUsageError::ThrottlingException(
                    model::ThrottlingException::builder().meta(meta()).build(),
                ),
                None,
            ),
            (
                RegisterUsageError::InternalServiceErrorException(
                    model::InternalServiceErrorException::builder()
                        .meta(meta())
                        .build(),
                ),
                None,
            ),
        ];
        for (error, expected) in cases {
            let name = format!("{error:?}");
            assert_eq!(exit_code_of(error, 400), expected, "{name}");
        }
    }

    #[test]
    fn credential_codes_exit_6() {
        for code in CREDENTIAL_ERROR_CODES {
            assert_eq!(exit_code_of(generic(code), 403), Some(6), "{code}");
        }
    }

    #[test]
    fn unmodelled_throttling_and_server_errors_are_retried() {
        for code in THROTTLING_CODES {
            assert_eq!(exit_code_of(generic(code), 400), None, "{code}");
        }
        assert_eq!(exit_code_of(generic("ServiceUnavailable"), 503), None);
        assert_eq!(exit_code_of(generic(""), 502), None);
        assert_eq!(exit_code_of(generic("Whatever"), 429), None);
    }

    #[test]
    fn unknown_client_errors_exit_1_and_unreadable_success_exits_4() {
        assert_eq!(exit_code_of(generic("ValidationException"), 400), Some(1));
        assert_eq!(
            exit_code_of(generic("UnknownOperationException"), 404),
            Some(1)
        );
        assert_eq!(
            exit_code_of(RegisterUsageError::unhandled("bad json"), 200),
            Some(4)
        );
    }

    #[test]
    fn backoff_windows_double_up_to_the_cap_and_jitter_within_them() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (0..6).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 150,
            "full jitter should rarely repeat: {}",
            distinct.len()
        );
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(400)));
    }

    #[tokio::test]
    async fn endpoint_prefers_the_service_override_then_the_global_one_then_the_region() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            endpoint_with("eu-central-1", env(&[])).await,
            "https://metering.marketplace.eu-central-1.amazonaws.com"
        );
        assert_eq!(
            endpoint_with("x", env(&[("AWS_ENDPOINT_URL", "http://g")])).await,
            "http://g"
        );
        assert_eq!(
            endpoint_with(
                "x",
                env(&[
                    ("AWS_ENDPOINT_URL", "http://g"),
                    ("AWS_ENDPOINT_URL_MARKETPLACE_METERING", "http://m")
                ])
            )
            .await,
            "http://m"
        );
        assert_eq!(
            endpoint_with("x", env(&[("AWS_ENDPOINT_URL", "")])).await,
            "https://metering.marketplace.x.amazonaws.com"
        );
    }

    #[tokio::test]
    async fn endpoint_follows_the_partition_and_fips_settings() {
        let none = |_: &str| None;
        assert_eq!(
            endpoint_with("cn-north-1", none).await,
            "https://metering.marketplace.cn-north-1.amazonaws.com.cn"
        );
        let fips = |name: &str| (name == "AWS_USE_FIPS_ENDPOINT").then(|| "true".to_owned());
        assert_eq!(
            endpoint_with("us-east-1", fips).await,
            "https://metering.marketplace-fips.us-east-1.amazonaws.com"
        );
    }
}
