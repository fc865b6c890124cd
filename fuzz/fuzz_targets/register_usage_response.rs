//! Any HTTP answer to RegisterUsage, through the real SDK client the gate builds (its
//! deserialisers and the gate's response-size limit), then the gate's classification, reading of
//! the answer (the rotation timestamp formatted as the gate logs it, whatever number it holds)
//! and token verification. Never a panic; never an accepted token; a success status never
//! "retried".
//!
//! Input: byte 0 picks the status, byte 1 the headers, the rest is the body.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::shared::IntoShared;
use aws_smithy_types::body::SdkBody;
use entitlement_gate::aws::identity::CredentialSource;
use entitlement_gate::aws::metering::{
    classify, client_from, RegisterUsageAnswer, RegisterUsageCall,
};
use entitlement_gate::aws::retry::{Attempt, Backoff, RetryPolicy};
use entitlement_gate::domain::key::{KeySource, VerifyingKey};
use entitlement_gate::domain::product_code::ProductCode;
use entitlement_gate::domain::token::{verify, Binding};
use entitlement_gate::gate::check::CheckError;
use entitlement_gate::outcome::{report, GateError};
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 8] = [200, 200, 400, 403, 404, 429, 500, 503];
const ERROR_TYPES: [&str; 6] = [
    "",
    "CustomerNotEntitledException",
    "ThrottlingException:http://internal.amazon.com/coral/",
    "com.amazonaws.awsmpmeteringservice#InvalidRegionException",
    "AccessDeniedException",
    "UnknownError",
];

/// The next answer, set by the fuzz target before each call.
#[derive(Debug, Clone, Default)]
struct CannedAnswer(Arc<Mutex<Option<(u16, u8, Vec<u8>)>>>);

impl HttpConnector for CannedAnswer {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let (status, headers, body) = self.0.lock().unwrap().take().expect("an answer per call");
        let mut response = http::Response::builder().status(status);
        response = response.header(
            "content-type",
            if headers & 0x80 != 0 {
                "text/html"
            } else {
                "application/x-amz-json-1.1"
            },
        );
        let error_type = ERROR_TYPES[usize::from(headers) % ERROR_TYPES.len()];
        if !error_type.is_empty() {
            response = response.header("x-amzn-errortype", error_type);
        }
        let response = response.body(SdkBody::from(body)).expect("valid response");
        HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).expect("convertible")))
    }
}

impl HttpClient for CannedAnswer {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.clone().into_shared()
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    answer: CannedAnswer,
    client: aws_sdk_marketplacemetering::Client,
    key: VerifyingKey,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let answer = CannedAnswer::default();
        let http_client: SharedHttpClient = answer.clone().into_shared();
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new("AKID", "secret", None, None, "fuzz"),
                ),
            )
            .http_client(http_client)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        let pem = &metering_emulator::keys::shared_2048().public_spki_pem;
        Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            answer,
            client: client_from(&config),
            key: VerifyingKey::from_pem(pem, 1, KeySource::Inline).unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [status, headers, body @ ..] = data else {
        return;
    };
    let status = STATUSES[usize::from(*status) % STATUSES.len()];
    let harness = harness();
    *harness.answer.0.lock().unwrap() = Some((status, *headers, body.to_vec()));
    let result = harness.runtime.block_on(
        harness
            .client
            .register_usage()
            .product_code("prod-abc")
            .public_key_version(1)
            .nonce("nonce-123")
            .send(),
    );
    let binding = Binding {
        product_code: ProductCode::parse("prod-abc").expect("valid product code"),
        public_key_version: 1,
        nonce: "nonce-123".to_owned(),
    };
    match result {
        Ok(output) => {
            if let Ok(answer) = RegisterUsageAnswer::from_output(output) {
                // What the gate logs and hands off of the answer, before any verdict.
                let _ = answer.key_expired_at();
                let _ = serde_json::to_string(&answer.public_key_rotation_timestamp);
                assert!(
                    verify(&answer.signature, &harness.key, &binding, 1_800_000_000).is_err(),
                    "accepted a forged token"
                );
            }
        }
        Err(error) => {
            let call = RegisterUsageCall {
                binding: &binding,
                region: "us-east-1",
                credentials_from: CredentialSource::WebIdentityToken,
                endpoint: "http://fuzz".into(),
                retry: RetryPolicy {
                    attempt_timeout: Duration::from_secs(1),
                    backoff: Backoff {
                        base: Duration::from_millis(1),
                        cap: Duration::from_millis(1),
                    },
                },
            };
            // Nothing an answer carries may reach a log line unescaped.
            let escaped = |text: &str| !text.contains(['\n', '\r', '\u{1b}']);
            match classify::<()>(&error, &call) {
                Attempt::Answered(()) => unreachable!("classify never answers"),
                Attempt::Retry { failure, .. } => {
                    assert!(
                        status >= 429 || !(200..300).contains(&status),
                        "a {status} answer was deemed transient: {failure:?}"
                    );
                    assert!(escaped(&failure.detail), "{failure:?}");
                }
                Attempt::Failed(error) => {
                    let report = report(&GateError::Check(CheckError::Metering(error)));
                    assert!(report.exit_code != 0 && !report.message.is_empty());
                    assert!(escaped(&report.message), "{}", report.message);
                }
            }
        }
    }
});
