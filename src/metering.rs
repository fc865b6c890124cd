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

use aws_sdk_marketplacemetering::operation::RequestId as _;

use crate::aws_identity::error_chain;
use crate::config::ConfigError;
use crate::outcome::{CallContext, GateError, SetupRefusal, TransientFailure, TransientKind};
use crate::sources::CredentialSource;
use crate::text;
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
    pub credentials_from: CredentialSource,
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
    pub request_id: Option<String>,
}

/// How one failed attempt should be handled.
#[derive(Debug)]
pub enum AttemptFailure {
    /// Throttling, 5xx, timeouts, connection failures: try again if time allows.
    Transient {
        failure: TransientFailure,
        request_id: Option<String>,
    },
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

/// The smallest share of the attempt timeout worth starting an attempt with: one that would be
/// cut short by the deadline mostly reports its own timeout instead of the service's answer.
const MIN_ATTEMPT_SHARE: u32 = 2;

/// Calls RegisterUsage until it answers, fails for good, or no useful attempt fits before
/// `deadline`.
pub async fn register_usage(
    client: &Client,
    call: &RegisterUsageCall<'_>,
    deadline: Instant,
) -> Result<RegisterUsageAnswer, GateError> {
    let started = Instant::now();
    let useful_attempt = call.attempt_timeout / MIN_ATTEMPT_SHARE;
    let mut attempts = 0u32;
    let mut last: Option<(TransientFailure, Option<String>)> = None;
    loop {
        let budget = call
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let attempt = client
            .register_usage()
            .product_code(&call.context.product_code)
            .public_key_version(call.context.public_key_version as i32)
            .nonce(call.nonce)
            .send();
        attempts += 1;
        let (failure, request_id) = match tokio::time::timeout(budget, attempt).await {
            Ok(Ok(output)) => {
                return Ok(RegisterUsageAnswer {
                    request_id: output.request_id().map(text::quoted),
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
                AttemptFailure::Transient {
                    failure,
                    request_id,
                } => (failure, request_id),
            },
            Err(_) => (
                TransientFailure {
                    kind: TransientKind::Timeout,
                    detail: format!("no answer within {}", seconds(budget)),
                },
                None,
            ),
        };
        // A timeout says less than what an earlier attempt heard from AWS: keep that instead.
        let keeps_earlier = failure.kind == TransientKind::Timeout
            && last
                .as_ref()
                .is_some_and(|(earlier, _)| earlier.kind != TransientKind::Timeout);
        if !keeps_earlier {
            last = Some((failure, request_id));
        }
        let (failure, _) = last.as_ref().expect("set above");
        let delay = call.backoff.delay(attempts - 1);
        let next_attempt_gets = deadline.saturating_duration_since(Instant::now() + delay);
        if next_attempt_gets < useful_attempt {
            let (last, request_id) = last.expect("set above");
            return Err(GateError::Unreachable {
                attempts,
                elapsed: started.elapsed(),
                last,
                endpoint: call.endpoint.clone(),
                request_id,
            });
        }
        tracing::warn!(attempt = attempts, error = %failure.detail, retry_in_ms = delay.as_millis() as u64,
            "RegisterUsage attempt failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// `1.5 s`, `10 s`: durations as operators read them.
fn seconds(duration: Duration) -> String {
    format!("{} s", (duration.as_secs_f64() * 1000.0).round() / 1000.0)
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

/// Sorts a failed attempt into retry-or-stop, with the error that ends the run. A documented
/// error code decides first; otherwise the HTTP status does, before anything in the body.
pub fn classify(
    error: &SdkError<RegisterUsageError>,
    call: &RegisterUsageCall<'_>,
) -> AttemptFailure {
    let request_id = error.request_id().map(text::quoted);
    let transient = |kind, detail| AttemptFailure::Transient {
        failure: TransientFailure { kind, detail },
        request_id: request_id.clone(),
    };
    let Some(response) = error.raw_response() else {
        return match error {
            SdkError::TimeoutError(_) => {
                transient(TransientKind::Timeout, "the attempt timed out".to_owned())
            }
            SdkError::DispatchFailure(failure) if failure.is_user() => AttemptFailure::Final(
                GateError::Config(ConfigError::RequestNotBuilt(error_chain(error))),
            ),
            // Connection refused or reset, DNS, TLS.
            SdkError::DispatchFailure(_) => {
                transient(TransientKind::Network, text::quoted(&error_chain(error)))
            }
            SdkError::ConstructionFailure(_) => AttemptFailure::Final(GateError::Config(
                ConfigError::RequestNotBuilt(error_chain(error)),
            )),
            _ => AttemptFailure::Final(GateError::Internal(error_chain(error))),
        };
    };
    let status = response.status().as_u16();
    let (code, aws_message) = match error {
        SdkError::ServiceError(service) => (
            text::quoted(service.err().code().unwrap_or("")),
            text::quoted(service.err().message().unwrap_or("no message")),
        ),
        _ => (String::new(), "no message".to_owned()),
    };
    if let SdkError::ServiceError(service) = error {
        if let Some(decision) =
            classify_documented(service.err(), &code, &aws_message, call, &request_id)
        {
            return decision;
        }
    }
    let named = |code: &str| {
        if code.is_empty() {
            format!("HTTP {status} without an AWS error code")
        } else {
            format!("HTTP {status} {code}")
        }
    };
    match status {
        429 => transient(TransientKind::Throttled, named(&code)),
        500 | 502 | 503 | 504 => transient(
            TransientKind::ServerError,
            match aws_message.as_str() {
                "no message" => named(&code),
                message => format!("{}: {message}", named(&code)),
            },
        ),
        200..=299 => classify_unreadable_success(error, status, transient),
        _ => AttemptFailure::Final(GateError::UnexpectedResponse {
            status,
            code: if code.is_empty() {
                "(no error code)".to_owned()
            } else {
                code
            },
            aws_message,
            request_id,
        }),
    }
}

/// A success status whose body is not a RegisterUsage answer.
fn classify_unreadable_success(
    error: &SdkError<RegisterUsageError>,
    status: u16,
    transient: impl Fn(TransientKind, String) -> AttemptFailure,
) -> AttemptFailure {
    if caused_by::<LengthLimitError>(error) {
        return AttemptFailure::Final(GateError::Token(TokenError::ResponseTooLarge {
            limit: MAX_RESPONSE_BYTES,
        }));
    }
    match error {
        // The SDK kept the whole body but could not parse it (a proxy's page, broken JSON).
        SdkError::ResponseError(response) if response.raw().body().bytes().is_none() => transient(
            TransientKind::Network,
            format!("the answer was cut off ({})", error_chain(error)),
        ),
        _ => AttemptFailure::Final(GateError::Token(TokenError::Malformed(format!(
            "RegisterUsage answered HTTP {status} with a body that is not its JSON ({})",
            text::quoted(&error_chain(error))
        )))),
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

/// The decision for an error AWS documents by its code, or `None` for an undocumented one.
fn classify_documented(
    error: &RegisterUsageError,
    code: &str,
    aws_message: &str,
    call: &RegisterUsageCall<'_>,
    request_id: &Option<String>,
) -> Option<AttemptFailure> {
    let refused = |refusal| {
        AttemptFailure::Final(GateError::SetupRefused {
            refusal,
            context: call.context.clone(),
            aws_message: aws_message.to_owned(),
            request_id: request_id.clone(),
        })
    };
    let transient = |kind| AttemptFailure::Transient {
        failure: TransientFailure {
            kind,
            detail: format!("{code}: {aws_message}"),
        },
        request_id: request_id.clone(),
    };
    Some(match error {
        RegisterUsageError::CustomerNotEntitledException(_) => {
            AttemptFailure::Final(GateError::NotEntitled {
                context: call.context.clone(),
                aws_message: aws_message.to_owned(),
                request_id: request_id.clone(),
            })
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
        _ if THROTTLING_CODES.contains(&code) => transient(TransientKind::Throttled),
        _ if CREDENTIAL_ERROR_CODES.contains(&code) => {
            AttemptFailure::Final(GateError::AccessDenied {
                code: code.to_owned(),
                aws_message: aws_message.to_owned(),
                credentials_from: call.credentials_from,
                request_id: request_id.clone(),
            })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_marketplacemetering::config::http::HttpResponse;
    use aws_sdk_marketplacemetering::error::ErrorMetadata;
    use aws_sdk_marketplacemetering::types::error as model;
    use aws_smithy_runtime_api::http::StatusCode;

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
            credentials_from: CredentialSource::WebIdentityToken,
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

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(
            StatusCode::try_from(status).unwrap(),
            SdkBody::from(body.to_owned()),
        )
    }

    /// The exit code a failed attempt ends with, or `None` when it is retried.
    fn decide(error: SdkError<RegisterUsageError>) -> Result<u8, TransientKind> {
        with_call(|call| match classify(&error, call) {
            AttemptFailure::Transient { failure, .. } => Err(failure.kind),
            AttemptFailure::Final(error) => Ok(crate::outcome::report(&error).exit_code),
        })
    }

    fn exit_code_of(error: RegisterUsageError, status: u16) -> Option<u8> {
        decide(SdkError::service_error(error, response(status, "{}"))).ok()
    }

    /// An answer the SDK could not parse at all (a proxy's page, an empty body).
    fn unparseable(status: u16, body: &str) -> SdkError<RegisterUsageError> {
        SdkError::response_error("not the service's JSON", response(status, body))
    }

    #[test]
    fn the_http_status_decides_when_no_documented_code_does() {
        use TransientKind::*;
        let cases: Vec<(
            &str,
            SdkError<RegisterUsageError>,
            Result<u8, TransientKind>,
        )> = vec![
            ("empty 500", unparseable(500, ""), Err(ServerError)),
            (
                "500 with a body",
                unparseable(500, "oops"),
                Err(ServerError),
            ),
            (
                "proxy's 502 page",
                unparseable(502, "<html>Bad Gateway</html>"),
                Err(ServerError),
            ),
            (
                "503 with a message only",
                SdkError::service_error(
                    RegisterUsageError::generic(
                        ErrorMetadata::builder().message("slow down").build(),
                    ),
                    response(503, r#"{"message":"slow down"}"#),
                ),
                Err(ServerError),
            ),
            ("504", unparseable(504, ""), Err(ServerError)),
            ("bare 429", unparseable(429, ""), Err(Throttled)),
            ("302 redirect", unparseable(302, ""), Ok(1)),
            (
                "404 page",
                unparseable(404, "<html>not found</html>"),
                Ok(1),
            ),
            (
                "400 without a code",
                exit_code_source(generic(""), 400),
                Ok(1),
            ),
            ("501", unparseable(501, ""), Ok(1)),
            (
                "200 that is not JSON",
                unparseable(200, "<html>login</html>"),
                Ok(4),
            ),
        ];
        for (name, error, expected) in cases {
            assert_eq!(decide(error), expected, "{name}");
        }
    }

    fn exit_code_source(error: RegisterUsageError, status: u16) -> SdkError<RegisterUsageError> {
        SdkError::service_error(error, response(status, "{}"))
    }

    #[test]
    fn network_text_is_escaped_in_what_ends_up_in_the_sentence() {
        let error = RegisterUsageError::generic(
            ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("denied\n2026-11-23T00:00:00Z  INFO entitled: forged line")
                .build(),
        );
        let Err(GateError::AccessDenied { aws_message, .. }) =
            with_call(|call| match classify(&exit_code_source(error, 403), call) {
                AttemptFailure::Final(error) => Err(error),
                AttemptFailure::Transient { .. } => Ok(()),
            })
        else {
            panic!("expected an access denial");
        };
        assert!(!aws_message.contains('\n'), "{aws_message:?}");
        assert!(aws_message.contains("denied\\n2026"), "{aws_message:?}");
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
