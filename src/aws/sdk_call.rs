//! What every AWS API client here shares: the SDK configuration (the SDK's retries off, the
//! attempt bounded), a limit on how much of an answer is read, and the sorting of a failed
//! attempt into retry-or-stop for whatever the operation's own documented codes leave open.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder as HttpClientBuilder, ConnectorBuilder};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_types::origin::Origin;
use aws_types::request_id::RequestId;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
use http_body_util::{LengthLimitError, Limited};

use super::endpoint::Pinning;
use super::identity::error_chain;
use super::retry::{Attempt, TransientFailure, TransientKind};
use crate::domain::text;

/// The largest answer read from any AWS API; real ones are a few KiB at most.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Caps how much of an answer the SDK reads, so a broken proxy or a hostile endpoint cannot
/// exhaust a container's memory with an endless body.
#[derive(Debug)]
pub struct ResponseSizeLimit;

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

/// The roots Amazon Trust Services publishes (www.amazontrust.com/repository), which every AWS
/// endpoint's certificate chains to: a pinned client trusts nothing else.
const AMAZON_TRUST_ROOTS: [&str; 5] = [
    include_str!("amazon_trust/amazon-root-ca-1.pem"),
    include_str!("amazon_trust/amazon-root-ca-2.pem"),
    include_str!("amazon_trust/amazon-root-ca-3.pem"),
    include_str!("amazon_trust/amazon-root-ca-4.pem"),
    include_str!("amazon_trust/starfield-services-root-ca-g2.pem"),
];

/// The SDK configuration for `region`: `credentials` (none: unsigned calls, as GetAccessToken),
/// the SDK's retries off (the retry loop owns them: it knows the deadline and the jitter), each
/// attempt bounded. With [`Pinning::Configured`] the SDK reads the endpoint overrides
/// (`AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, the profile's) and the container's CA
/// store; with [`Pinning::AwsOnly`] every client made from it calls AWS's own endpoint for the
/// Region, over TLS that must chain to Amazon Trust Services' roots, so neither an endpoint
/// override nor a CA bundle, DNS entry or TLS-inspecting proxy of the buyer's can stand in for
/// AWS (a proxy still works as a CONNECT tunnel).
pub async fn sdk_config(
    region: Region,
    credentials: Option<SharedCredentialsProvider>,
    attempt_timeout: Duration,
    pinning: Pinning,
) -> SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                // Shorter than the attempt, so a connection that cannot be made fails as such (the
                // request provably unsent) instead of as the attempt's timeout.
                .connect_timeout((attempt_timeout / 2).min(Duration::from_secs(3)))
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        );
    let config = match credentials {
        Some(credentials) => loader.credentials_provider(credentials),
        None => loader.no_credentials(),
    }
    .load()
    .await;
    match pinning {
        Pinning::Configured => config,
        Pinning::AwsOnly => pinned(config),
    }
}

/// `config` with every endpoint setting the SDK read from the environment and the profile
/// dropped, and the HTTPS client that trusts only Amazon Trust Services' roots.
fn pinned(config: SdkConfig) -> SdkConfig {
    let mut builder = config.into_builder();
    // Each alone keeps a service's client on AWS: an endpoint "set in code" (none) is taken
    // over the service's own settings, and the service settings are empty anyway.
    builder.set_endpoint_url(None);
    builder.insert_origin("endpoint_url", Origin::shared_config());
    builder.set_service_config(Some(NoServiceSettings));
    builder.set_http_client(Some(pinned_https_client()));
    builder.build()
}

/// Service-specific settings from the environment: none.
#[derive(Debug)]
struct NoServiceSettings;

impl LoadServiceConfig for NoServiceSettings {
    fn load_config(&self, _: ServiceConfigKey<'_>) -> Option<String> {
        None
    }
}

/// The SDK's default HTTPS client (rustls on aws-lc, proxies from the environment), trusting
/// only Amazon Trust Services' roots.
fn pinned_https_client() -> SharedHttpClient {
    let trust = AMAZON_TRUST_ROOTS.iter().fold(
        TrustStore::empty().with_native_roots(false),
        |store, pem| store.with_pem_certificate(pem.as_bytes()),
    );
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .expect("a TLS context of embedded roots");
    HttpClientBuilder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = ConnectorBuilder::default()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// A failure the operation's documented codes did not decide, for its error type to name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undocumented {
    /// A code that means the credentials or their permissions are wrong.
    AccessDenied {
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    /// An answer the API does not document.
    Unexpected {
        status: u16,
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    TooLarge {
        limit: usize,
    },
    /// A success status whose body is not the operation's JSON.
    Unreadable {
        status: u16,
        detail: String,
    },
    RequestNotBuilt(String),
    Sdk(String),
}

impl std::fmt::Display for Undocumented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undocumented::AccessDenied {
                code, aws_message, ..
            } => write!(f, "{code}: {aws_message}"),
            Undocumented::Unexpected {
                status,
                code,
                aws_message,
                ..
            } => write!(
                f,
                "an answer AWS does not document: HTTP {status} {code}: {aws_message}"
            ),
            Undocumented::TooLarge { limit } => write!(f, "an answer of more than {limit} bytes"),
            Undocumented::Unreadable { status, detail } => {
                write!(
                    f,
                    "HTTP {status} with a body that is not the API's ({detail})"
                )
            }
            Undocumented::RequestNotBuilt(detail) => {
                write!(f, "the request could not be built: {detail}")
            }
            Undocumented::Sdk(detail) => write!(f, "the AWS SDK failed: {detail}"),
        }
    }
}

/// Codes that mean the credentials or their permissions are wrong, wherever AWS reports them.
pub(crate) const CREDENTIAL_ERROR_CODES: &[&str] = &[
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

/// Throttling codes outside the operations' models that AWS front ends also send.
pub(crate) const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
];

/// Sorts a failed attempt into retry-or-stop: a documented error code decides first (through
/// `documented`, which gets the error, its escaped code and message, and the request ID), then
/// the codes every AWS front end uses; otherwise the HTTP status does, before anything in the
/// body. What ends the call undocumented becomes the caller's error through `undocumented`.
pub fn classify<E, T, F>(
    error: &SdkError<E, aws_smithy_runtime_api::http::Response>,
    documented: impl Fn(&E, &str, &str, &Option<String>) -> Option<Attempt<T, F>>,
    undocumented: impl Fn(Undocumented) -> F,
) -> Attempt<T, F>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let request_id = error.request_id().map(text::quoted);
    let transient = |kind, detail| Attempt::Retry {
        failure: TransientFailure { kind, detail },
        request_id: request_id.clone(),
    };
    let failed = |failure| Attempt::Failed(undocumented(failure));
    let Some(response) = error.raw_response() else {
        return match error {
            SdkError::TimeoutError(_) => {
                transient(TransientKind::Timeout, "the attempt timed out".to_owned())
            }
            SdkError::DispatchFailure(failure) if failure.is_user() => {
                failed(Undocumented::RequestNotBuilt(error_chain(error)))
            }
            // Connection refused or reset, DNS, TLS.
            SdkError::DispatchFailure(_) => {
                transient(TransientKind::Network, text::quoted(&error_chain(error)))
            }
            SdkError::ConstructionFailure(_) => {
                failed(Undocumented::RequestNotBuilt(error_chain(error)))
            }
            _ => failed(Undocumented::Sdk(text::quoted(&error_chain(error)))),
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
        if let Some(decision) = documented(service.err(), &code, &aws_message, &request_id) {
            return decision;
        }
        if THROTTLING_CODES.contains(&code.as_str()) {
            return transient(TransientKind::Throttled, format!("{code}: {aws_message}"));
        }
        if CREDENTIAL_ERROR_CODES.contains(&code.as_str()) {
            return failed(Undocumented::AccessDenied {
                code,
                aws_message,
                request_id,
            });
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
        200..=299 => {
            if caused_by::<LengthLimitError>(error) {
                return failed(Undocumented::TooLarge {
                    limit: MAX_RESPONSE_BYTES,
                });
            }
            match error {
                // Not all of the body arrived: the connection was cut mid-way.
                SdkError::ResponseError(response) if response.raw().body().bytes().is_none() => {
                    transient(
                        TransientKind::Network,
                        format!(
                            "the answer was cut off ({})",
                            text::quoted(&error_chain(error))
                        ),
                    )
                }
                // The SDK kept the whole body but could not parse it (a proxy's page, broken
                // JSON).
                _ => failed(Undocumented::Unreadable {
                    status,
                    detail: text::quoted(&error_chain(error)),
                }),
            }
        }
        _ => failed(Undocumented::Unexpected {
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

/// Whether a failed attempt shows that the service did not act on the request: it was never
/// sent (not built, or no connection was made), or the service itself answered with an error
/// code. Anything else (a timeout, a connection lost after sending, a proxy's page, an answer
/// cut off) leaves open that the request was carried out.
pub fn proves_not_carried_out<E>(
    error: &SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ConstructionFailure(_) => true,
        SdkError::DispatchFailure(failure) => failure.is_user() || connection_never_made(error),
        SdkError::ServiceError(service) => {
            service.raw().status().as_u16() >= 400 && service.err().code().is_some()
        }
        _ => false,
    }
}

/// Whether the connection (TCP, TLS, or the DNS lookup before it) failed, so no byte of the
/// request left.
fn connection_never_made(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(cause) = current {
        if cause
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        current = cause.source();
    }
    false
}

/// A documented transient code: retried, with the code and message as the detail.
pub fn retry_later<T, F>(
    kind: TransientKind,
    code: &str,
    aws_message: &str,
    request_id: &Option<String>,
) -> Attempt<T, F> {
    Attempt::Retry {
        failure: TransientFailure {
            kind,
            detail: format!("{code}: {aws_message}"),
        },
        request_id: request_id.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
    use std::sync::{Arc, Mutex};

    /// Every endpoint setting the SDK can read from the environment or a profile, pointing away.
    #[derive(Debug)]
    struct ElsewhereForEveryService;

    impl LoadServiceConfig for ElsewhereForEveryService {
        fn load_config(&self, _: ServiceConfigKey<'_>) -> Option<String> {
            Some("http://127.0.0.1:1".to_owned())
        }
    }

    /// Records where a request would go, then stops it before it is sent.
    #[derive(Debug, Clone, Default)]
    struct Destination(Arc<Mutex<Option<String>>>);

    impl Intercept for Destination {
        fn name(&self) -> &'static str {
            "Destination"
        }

        fn read_before_transmit(
            &self,
            context: &BeforeTransmitInterceptorContextRef<'_>,
            _: &RuntimeComponents,
            _: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            *self.0.lock().unwrap() = Some(context.request().uri().to_owned());
            Err("stopped before sending".into())
        }
    }

    fn configured() -> SdkConfig {
        let mut builder = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::for_tests()))
            .endpoint_url("http://127.0.0.1:2")
            .service_config(ElsewhereForEveryService);
        builder.insert_origin(
            "endpoint_url",
            aws_types::origin::Origin::shared_environment_variable(),
        );
        builder.build()
    }

    /// Where each client made from `config` sends its first request.
    async fn destinations(config: &SdkConfig) -> [String; 3] {
        let metering = Destination::default();
        let _ = aws_sdk_marketplacemetering::Client::from_conf(
            aws_sdk_marketplacemetering::config::Builder::from(config)
                .interceptor(metering.clone())
                .build(),
        )
        .register_usage()
        .product_code("prod")
        .public_key_version(1)
        .send()
        .await;
        let license_manager = Destination::default();
        let _ = aws_sdk_licensemanager::Client::from_conf(
            aws_sdk_licensemanager::config::Builder::from(config)
                .interceptor(license_manager.clone())
                .build(),
        )
        .get_license()
        .license_arn("arn:aws:license-manager::1:license:l-1")
        .send()
        .await;
        let sts = Destination::default();
        let _ = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(config)
                .interceptor(sts.clone())
                .build(),
        )
        .assume_role_with_web_identity()
        .role_arn("arn:aws:iam::1:role/r")
        .role_session_name("s")
        .web_identity_token("t")
        .send()
        .await;
        [metering, license_manager, sts].map(|d| d.0.lock().unwrap().clone().expect("a request"))
    }

    #[tokio::test]
    async fn a_pinned_configuration_sends_every_client_to_aws_whatever_was_configured() {
        let followed = destinations(&configured()).await;
        assert!(
            followed
                .iter()
                .all(|uri| uri.starts_with("http://127.0.0.1:1")),
            "{followed:?}"
        );
        let pinned = destinations(&pinned(configured())).await;
        assert_eq!(
            pinned.map(|uri| uri.trim_end_matches('/').to_owned()),
            [
                "https://metering.marketplace.eu-west-1.amazonaws.com",
                "https://license-manager.eu-west-1.amazonaws.com",
                "https://sts.eu-west-1.amazonaws.com",
            ]
        );
    }

    #[test]
    fn the_pinned_roots_parse() {
        for pem in AMAZON_TRUST_ROOTS {
            let parsed = pem::parse(pem).expect("PEM");
            assert_eq!(parsed.tag(), "CERTIFICATE");
        }
        // Building the client loads them into rustls.
        let _ = pinned_https_client();
    }
}
