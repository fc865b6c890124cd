//! RegisterUsage as the Metering Service answers it: pure request-in, answer-out logic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::keys::{b64_json, shared_other_2048};
use crate::{Config, InjectedError, ResponseFault, StatusBody, StatusFault, TokenFault};

pub(crate) const REGISTER_USAGE_TARGET: &str = "AWSMPMeteringService.RegisterUsage";
const SIGNING_SERVICE: &str = "aws-marketplace";

/// What the server should do with one request.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    /// Close the connection without answering.
    Drop,
    Json {
        status: u16,
        body: Value,
    },
    /// An error named only by the `X-Amzn-ErrorType` header.
    ErrorHeader {
        status: u16,
        code: String,
    },
    Raw {
        status: u16,
        content_type: Option<&'static str>,
        body: Vec<u8>,
    },
    /// Headers announce `declared` bytes, `sent` arrive, then the connection closes.
    Truncated {
        sent: Vec<u8>,
        declared: usize,
    },
}

impl Answer {
    fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Answer::Json {
            status,
            body: json!({ "__type": code, "message": message.into() }),
        }
    }

    fn injected(error: &InjectedError, header_only: bool) -> Self {
        if header_only {
            return Answer::ErrorHeader {
                status: error.status,
                code: error.code.clone(),
            };
        }
        Self::error(error.status, &error.code, "injected by metering-emulator")
    }

    /// A bare HTTP status, as something in front of the service would send it.
    fn status_only(fault: &StatusFault) -> Self {
        let reason = hyper::StatusCode::from_u16(fault.status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Error");
        let (content_type, body) = match fault.body {
            StatusBody::Empty => (None, String::new()),
            StatusBody::Html => (
                Some("text/html; charset=utf-8"),
                format!(
                    "<html><head><title>{0} {reason}</title></head>\
                     <body><h1>{0} {reason}</h1></body></html>",
                    fault.status
                ),
            ),
            StatusBody::Message => (
                Some("application/x-amz-json-1.1"),
                json!({ "message": reason }).to_string(),
            ),
            StatusBody::Text => (Some("text/plain; charset=utf-8"), reason.to_owned()),
        };
        Answer::Raw {
            status: fault.status,
            content_type,
            body: body.into_bytes(),
        }
    }

    /// A successful answer spoiled at the HTTP level.
    fn spoiled(self, fault: ResponseFault) -> Self {
        let Answer::Json { status: 200, body } = self else {
            return self;
        };
        let json = |body: Vec<u8>| Answer::Raw {
            status: 200,
            content_type: Some("application/x-amz-json-1.1"),
            body,
        };
        match fault {
            ResponseFault::TruncatedBody => {
                let full = body.to_string().into_bytes();
                Answer::Truncated {
                    declared: full.len(),
                    sent: full[..full.len() / 2].to_vec(),
                }
            }
            ResponseFault::MalformedJson => json(b"{\"Signature\": \"eyJhbGciOi".to_vec()),
            ResponseFault::EmptyBody => json(Vec::new()),
            ResponseFault::HugeBody => json(
                json!({ "Signature": "A".repeat(8 * 1024 * 1024) })
                    .to_string()
                    .into_bytes(),
            ),
            ResponseFault::HtmlPage => Answer::Raw {
                status: 200,
                content_type: Some("text/html; charset=utf-8"),
                body: b"<html><body><h1>Network login required</h1></body></html>".to_vec(),
            },
        }
    }
}

/// A token bucket: `capacity` tokens, refilled at `per_second`.
struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            capacity: rate,
            per_second: rate,
            tokens: rate,
            refilled: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The parts of an HTTP request RegisterUsage looks at.
pub(crate) struct Request<'a> {
    pub target: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
}

pub(crate) struct Service {
    pub config: Config,
    /// RegisterUsage calls received, faulted and throttled ones included.
    pub calls: AtomicU64,
    /// Calls refused by the quota.
    pub throttled: AtomicU64,
    /// Tokens issued.
    pub entitled: AtomicU64,
    quota: Option<Mutex<TokenBucket>>,
}

impl Service {
    pub fn new(config: Config) -> Self {
        Self {
            quota: config
                .quota_per_second
                .map(|rate| Mutex::new(TokenBucket::new(rate))),
            config,
            calls: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            entitled: AtomicU64::new(0),
        }
    }

    /// Counters, for `GET /_emulator/stats`.
    pub fn stats(&self) -> Value {
        json!({
            "calls": self.calls.load(Ordering::SeqCst),
            "throttled": self.throttled.load(Ordering::SeqCst),
            "entitled": self.entitled.load(Ordering::SeqCst),
        })
    }

    pub fn register_usage(&self, request: &Request) -> Answer {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let faults = &self.config.faults;
        let dropped = u64::from(faults.drop_first);
        let throttled = dropped + u64::from(faults.throttle_first);
        let failed = throttled + u64::from(faults.fail_first);
        if call < dropped {
            return Answer::Drop;
        }
        if let Err(answer) = self.check_envelope(request) {
            return answer;
        }
        let over_quota = self
            .quota
            .as_ref()
            .is_some_and(|bucket| !bucket.lock().expect("quota lock").take());
        if over_quota {
            self.throttled.fetch_add(1, Ordering::SeqCst);
            return Answer::error(400, "ThrottlingException", "Rate exceeded");
        }
        if call < throttled {
            return Answer::error(400, "ThrottlingException", "Rate exceeded");
        }
        if call < failed {
            return Answer::error(500, "InternalServiceErrorException", "Internal error");
        }
        if let Some(error) = &faults.error {
            return Answer::injected(error, faults.error_in_header_only);
        }
        if let Some(fault) = &faults.status {
            return Answer::status_only(fault);
        }
        match self.entitle(request.body) {
            Ok(answer) => {
                self.entitled.fetch_add(1, Ordering::SeqCst);
                match faults.response {
                    Some(fault) => answer.spoiled(fault),
                    None => answer,
                }
            }
            Err(answer) => answer,
        }
    }

    /// Target header and SigV4 scope, checked before the body as the service front end does.
    fn check_envelope(&self, request: &Request) -> Result<(), Answer> {
        if request.target != Some(REGISTER_USAGE_TARGET) {
            return Err(Answer::error(
                400,
                "UnknownOperationException",
                format!("X-Amz-Target must be {REGISTER_USAGE_TARGET}"),
            ));
        }
        let Some(authorization) = request.authorization else {
            return Err(Answer::error(
                403,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ));
        };
        let scope = sigv4_scope(authorization).ok_or_else(|| {
            Answer::error(
                403,
                "IncompleteSignatureException",
                "Authorization header is not AWS4-HMAC-SHA256 with a Credential scope",
            )
        })?;
        if scope.service != SIGNING_SERVICE {
            return Err(Answer::error(
                403,
                "InvalidSignatureException",
                format!("Credential should be scoped to correct service: '{SIGNING_SERVICE}'"),
            ));
        }
        if scope.region != self.config.region {
            return Err(Answer::error(
                400,
                "InvalidRegionException",
                format!(
                    "RegisterUsage must be called in the Region the task runs in ({}), not {}",
                    self.config.region, scope.region
                ),
            ));
        }
        Ok(())
    }

    fn entitle(&self, body: &[u8]) -> Result<Answer, Answer> {
        let input: Value = serde_json::from_slice(body).map_err(|e| {
            Answer::error(
                400,
                "SerializationException",
                format!("body is not JSON: {e}"),
            )
        })?;
        let invalid = |message: &str| Answer::error(400, "ValidationException", message);
        let product_code = input["ProductCode"]
            .as_str()
            .filter(|code| valid_product_code(code))
            .ok_or_else(|| invalid("ProductCode must be 1-255 of [-a-zA-Z0-9/=:_.@]"))?;
        let key_version = input["PublicKeyVersion"]
            .as_u64()
            .filter(|version| *version >= 1)
            .ok_or_else(|| invalid("PublicKeyVersion must be an integer >= 1"))?;
        let nonce = match &input["Nonce"] {
            Value::Null => None,
            Value::String(nonce) if nonce.len() <= 255 => Some(nonce.as_str()),
            _ => return Err(invalid("Nonce must be a string of at most 255 characters")),
        };
        let config = &self.config;
        if config.not_entitled.contains(product_code) {
            return Err(Answer::error(
                400,
                "CustomerNotEntitledException",
                "Customer does not have a valid subscription for the product",
            ));
        }
        if !config.entitled.contains(product_code) {
            return Err(Answer::error(
                400,
                "InvalidProductCodeException",
                "Product code is not valid",
            ));
        }
        if !u32::try_from(key_version).is_ok_and(|v| config.key_versions.contains(&v)) {
            return Err(Answer::error(
                400,
                "InvalidPublicKeyVersionException",
                "Public key version is not valid",
            ));
        }
        let claims = json!({
            "productCode": product_code,
            "publicKeyVersion": key_version,
            "nonce": nonce,
            "iat": now(),
        });
        let mut body = json!({ "Signature": self.token(claims) });
        if let Some(rotation) = config.rotation_timestamp {
            body["PublicKeyRotationTimestamp"] = json!(rotation);
        }
        if config.faults.token == Some(TokenFault::MissingSignature) {
            body.as_object_mut().expect("object").remove("Signature");
        }
        Ok(Answer::Json { status: 200, body })
    }

    fn token(&self, mut claims: Value) -> String {
        let key = &self.config.signing_key;
        let ps256 = json!({ "alg": "PS256", "typ": "JWT" });
        let Some(fault) = self.config.faults.token else {
            return key.sign_jwt(&ps256, &claims);
        };
        match fault {
            TokenFault::BadSignature => return shared_other_2048().sign_jwt(&ps256, &claims),
            TokenFault::Tampered => {
                let token = key.sign_jwt(&ps256, &claims);
                claims["productCode"] = json!("someone-elses-product");
                let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
                parts[1] = b64_json(&claims);
                return parts.join(".");
            }
            TokenFault::AlgNone => {
                return format!(
                    "{}.{}.",
                    b64_json(&json!({ "alg": "none" })),
                    b64_json(&claims)
                )
            }
            TokenFault::AlgHs256 => {
                let input = format!(
                    "{}.{}",
                    b64_json(&json!({ "alg": "HS256", "typ": "JWT" })),
                    b64_json(&claims)
                );
                let mac_key = aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA256,
                    key.public_spki_pem.as_bytes(),
                );
                let tag = aws_lc_rs::hmac::sign(&mac_key, input.as_bytes());
                return format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
            }
            TokenFault::AlgRs256 => {
                // A PS256 signature under an RS256 header: the header alone must sink it.
                let header = json!({ "alg": "RS256", "typ": "JWT" });
                return key.sign_jwt(&header, &claims);
            }
            TokenFault::WrongNonce => claims["nonce"] = json!("a-nonce-from-another-run"),
            TokenFault::WrongProductCode => claims["productCode"] = json!("someone-elses-product"),
            TokenFault::WrongKeyVersion => {
                claims["publicKeyVersion"] =
                    json!(claims["publicKeyVersion"].as_u64().unwrap_or(1) + 1)
            }
            TokenFault::KeyVersionAsString => {
                claims["publicKeyVersion"] = json!(claims["publicKeyVersion"].to_string())
            }
            TokenFault::MissingIat => {
                claims.as_object_mut().expect("object").remove("iat");
            }
            TokenFault::FutureIat => claims["iat"] = json!(now() + 3600),
            TokenFault::Expired => claims["exp"] = json!(now() - 3600),
            TokenFault::MissingSignature => {}
            TokenFault::NotAJwt => return "this-is-not-a-jwt".to_owned(),
            TokenFault::Oversized => claims["padding"] = json!("x".repeat(17 * 1024)),
        }
        key.sign_jwt(&ps256, &claims)
    }
}

struct SigV4Scope<'a> {
    region: &'a str,
    service: &'a str,
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20261123/us-east-1/aws-marketplace/aws4_request, ...`
fn sigv4_scope(authorization: &str) -> Option<SigV4Scope<'_>> {
    let params = authorization.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let credential = params
        .split(',')
        .map(str::trim)
        .find_map(|param| param.strip_prefix("Credential="))?;
    let mut parts = credential.split('/');
    let (_key, _date, region, service, terminator) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (terminator == "aws4_request" && params.contains("Signature="))
        .then_some(SigV4Scope { region, service })
}

fn valid_product_code(code: &str) -> bool {
    (1..=255).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/=:_.@".contains(c))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::shared_2048;
    use crate::Faults;

    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261123/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc";

    fn service(faults: Faults) -> Service {
        let mut config = Config::new(shared_2048()).entitle("paid").refuse("unpaid");
        config.faults = faults;
        Service::new(config)
    }

    fn call(service: &Service, auth: Option<&str>, body: Value) -> Answer {
        let body = body.to_string();
        service.register_usage(&Request {
            target: Some(REGISTER_USAGE_TARGET),
            authorization: auth,
            body: body.as_bytes(),
        })
    }

    fn code_of(answer: &Answer) -> (u16, String) {
        match answer {
            Answer::Json { status, body } => {
                (*status, body["__type"].as_str().unwrap_or("").to_owned())
            }
            Answer::Drop => (0, "drop".to_owned()),
            Answer::ErrorHeader { status, code } => (*status, code.clone()),
            Answer::Raw { status, .. } => (*status, "raw".to_owned()),
            Answer::Truncated { .. } => (0, "truncated".to_owned()),
        }
    }

    fn request(code: &str) -> Value {
        json!({ "ProductCode": code, "PublicKeyVersion": 1, "Nonce": "n1" })
    }

    #[test]
    fn entitled_codes_get_a_token_bound_to_the_request() {
        let service = service(Faults::default());
        let Answer::Json { status: 200, body } = call(&service, Some(AUTH), request("paid")) else {
            panic!("expected a token");
        };
        let token = body["Signature"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["productCode"], "paid");
        assert_eq!(claims["nonce"], "n1");
        assert_eq!(claims["publicKeyVersion"], 1);
        assert!(claims["iat"].as_u64().unwrap() > 1_700_000_000);
    }

    #[test]
    fn refusals_follow_the_product_lists_and_key_versions() {
        let service = service(Faults::default());
        assert_eq!(
            code_of(&call(&service, Some(AUTH), request("unpaid"))).1,
            "CustomerNotEntitledException"
        );
        assert_eq!(
            code_of(&call(&service, Some(AUTH), request("unknown"))).1,
            "InvalidProductCodeException"
        );
        let v2 = json!({ "ProductCode": "paid", "PublicKeyVersion": 2 });
        assert_eq!(
            code_of(&call(&service, Some(AUTH), v2)).1,
            "InvalidPublicKeyVersionException"
        );
        let bad = json!({ "ProductCode": "p a i d", "PublicKeyVersion": 1 });
        assert_eq!(
            code_of(&call(&service, Some(AUTH), bad)).1,
            "ValidationException"
        );
    }

    #[test]
    fn envelope_checks_authorization_scope_and_region() {
        let service = service(Faults::default());
        assert_eq!(
            code_of(&call(&service, None, request("paid"))),
            (403, "MissingAuthenticationTokenException".into())
        );
        let other_region = AUTH.replace("us-east-1", "eu-west-1");
        assert_eq!(
            code_of(&call(&service, Some(&other_region), request("paid"))),
            (400, "InvalidRegionException".into())
        );
        let other_service = AUTH.replace("aws-marketplace", "s3");
        assert_eq!(
            code_of(&call(&service, Some(&other_service), request("paid"))).1,
            "InvalidSignatureException"
        );
        let wrong_target = service.register_usage(&Request {
            target: Some("AWSMPMeteringService.MeterUsage"),
            authorization: Some(AUTH),
            body: b"{}",
        });
        assert_eq!(code_of(&wrong_target).1, "UnknownOperationException");
    }

    #[test]
    fn faults_apply_in_order_then_clear() {
        let service = service(Faults {
            drop_first: 1,
            throttle_first: 2,
            fail_first: 1,
            ..Faults::default()
        });
        let codes: Vec<(u16, String)> = (0..5)
            .map(|_| code_of(&call(&service, Some(AUTH), request("paid"))))
            .collect();
        assert_eq!(codes[0].1, "drop");
        assert_eq!(codes[1], (400, "ThrottlingException".into()));
        assert_eq!(codes[2], (400, "ThrottlingException".into()));
        assert_eq!(codes[3], (500, "InternalServiceErrorException".into()));
        assert_eq!(codes[4].0, 200);
    }

    #[test]
    fn injected_errors_parse_with_sensible_statuses() {
        let parse = |text: &str| text.parse::<InjectedError>().unwrap();
        assert_eq!(parse("AccessDeniedException").status, 403);
        assert_eq!(parse("InternalServiceErrorException").status, 500);
        assert_eq!(parse("DisabledApiException").status, 400);
        assert_eq!(
            parse("Whatever:503"),
            InjectedError {
                code: "Whatever".into(),
                status: 503
            }
        );
        assert!("X:abc".parse::<InjectedError>().is_err());
    }

    #[test]
    fn the_quota_is_a_token_bucket_of_one_seconds_calls() {
        let mut config = Config::new(shared_2048()).entitle("paid");
        config.quota_per_second = Some(5);
        let service = Service::new(config);
        let codes: Vec<u16> = (0..7)
            .map(|_| code_of(&call(&service, Some(AUTH), request("paid"))).0)
            .collect();
        assert_eq!(codes, [200, 200, 200, 200, 200, 400, 400]);
        assert_eq!(
            service.stats(),
            json!({ "calls": 7, "throttled": 2, "entitled": 5 })
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(
            code_of(&call(&service, Some(AUTH), request("paid"))).0,
            200,
            "refilled at 5/s"
        );
    }

    #[test]
    fn response_faults_spoil_only_successful_answers() {
        let service = service(Faults {
            response: Some(ResponseFault::TruncatedBody),
            ..Faults::default()
        });
        let Answer::Truncated { sent, declared } = call(&service, Some(AUTH), request("paid"))
        else {
            panic!("expected a truncated answer");
        };
        assert!(sent.len() < declared);
        assert_eq!(
            code_of(&call(&service, Some(AUTH), request("unpaid"))).1,
            "CustomerNotEntitledException"
        );
    }

    #[test]
    fn injected_errors_can_come_in_the_header_only_and_with_a_namespace() {
        let error: InjectedError = "com.amazonaws.marketplace#AccessDeniedException"
            .parse()
            .unwrap();
        assert_eq!(error.status, 403);
        let service = service(Faults {
            error: Some(error),
            error_in_header_only: true,
            ..Faults::default()
        });
        assert_eq!(
            call(&service, Some(AUTH), request("paid")),
            Answer::ErrorHeader {
                status: 403,
                code: "com.amazonaws.marketplace#AccessDeniedException".into()
            }
        );
    }

    #[test]
    fn status_faults_answer_a_bare_status_after_the_counted_faults() {
        let service = service(Faults {
            throttle_first: 1,
            status: Some("503:html".parse().unwrap()),
            ..Faults::default()
        });
        assert_eq!(
            code_of(&call(&service, Some(AUTH), request("paid"))).1,
            "ThrottlingException"
        );
        let Answer::Raw {
            status,
            content_type,
            body,
        } = call(&service, Some(AUTH), request("paid"))
        else {
            panic!("expected a bare status");
        };
        assert_eq!(
            (status, content_type),
            (503, Some("text/html; charset=utf-8"))
        );
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("503 Service Unavailable"));
    }

    #[test]
    fn status_fault_bodies_carry_no_error_code() {
        let answer = |text: &str| Answer::status_only(&text.parse().unwrap());
        assert_eq!(
            answer("429"),
            Answer::Raw {
                status: 429,
                content_type: None,
                body: Vec::new()
            }
        );
        let Answer::Raw { body, .. } = answer("500:message") else {
            panic!("expected a bare status");
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({ "message": "Internal Server Error" })
        );
        let Answer::Raw {
            content_type, body, ..
        } = answer("502:text")
        else {
            panic!("expected a bare status");
        };
        assert_eq!(content_type, Some("text/plain; charset=utf-8"));
        assert_eq!(body, b"Bad Gateway");
    }

    #[test]
    fn status_faults_parse_an_error_status_and_a_body_kind() {
        let parse = |text: &str| text.parse::<StatusFault>();
        assert_eq!(
            parse("503"),
            Ok(StatusFault {
                status: 503,
                body: StatusBody::Empty
            })
        );
        assert_eq!(parse("429:TEXT").unwrap().body, StatusBody::Text);
        assert!(parse("200").is_err());
        assert!(parse("abc").is_err());
        assert!(parse("503:xml").unwrap_err().contains("not a body kind"));
    }

    #[test]
    fn sigv4_scope_needs_credential_and_signature() {
        assert!(sigv4_scope(AUTH).is_some());
        assert!(sigv4_scope("Bearer x").is_none());
        assert!(sigv4_scope("AWS4-HMAC-SHA256 Credential=A/d/r/s/aws4_request").is_none());
    }
}
