//! The faults the emulator can inject, as configured (the service decides per call when they fire).
//!
//! `POST /_emulator/faults` takes the same settings as JSON: the field names in camelCase,
//! durations in milliseconds (`delayMs`, `slowMs`), errors and statuses as on the command line.
//!
//! ```json
//! {"operations": ["meter-usage"], "throttleFirst": 2, "error": "DisabledApiException:400",
//!  "random": {"seed": 7, "throttle": 0.1, "loseResponse": 0.05, "slow": 0.1, "slowMs": 3000},
//!  "licenseFault": "fewer-units"}
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use crate::Operation;

/// Faults, applied to each operation's calls in order (each operation counts its own calls):
/// the first `drop_first` calls lose their connection, the next `throttle_first` are throttled,
/// the next `fail_first` get a 500; after that the random faults (if set) draw for every call,
/// then `error` (if set) answers every call, else `status` (if set) answers every call, else
/// `token` (if set) spoils every token.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// The operations the faults apply to; `None` means all of them.
    pub operations: Option<BTreeSet<Operation>>,
    pub drop_first: u32,
    pub throttle_first: u32,
    pub fail_first: u32,
    /// Wait this long before answering each call.
    #[serde(rename = "delayMs", deserialize_with = "milliseconds")]
    pub delay: Duration,
    pub error: Option<InjectedError>,
    /// Send the injected error's code only in the `X-Amzn-ErrorType` header, with an empty body.
    pub error_in_header_only: bool,
    /// An HTTP status with no AWS error code, as a load balancer or proxy answers.
    pub status: Option<StatusFault>,
    pub token: Option<TokenFault>,
    /// Spoil every successful answer at the HTTP level.
    pub response: Option<ResponseFault>,
    /// Faults that strike calls at random, for chaos tests.
    pub random: Option<RandomFaults>,
    /// BatchMeterUsage: return the first N records received (counted across calls) in
    /// `UnprocessedRecords`, unrecorded, for the client to resend.
    pub unprocessed_first: u32,
    /// Spoil License Manager's answers in a way its model allows but AWS never answers.
    pub license_fault: Option<LicenseFault>,
}

impl Faults {
    /// Whether the faults apply to `operation`.
    pub fn apply_to(&self, operation: Operation) -> bool {
        self.operations
            .as_ref()
            .is_none_or(|operations| operations.contains(&operation))
    }
}

/// Faults drawn independently for every call from a seeded generator, so a chaos run can be
/// replayed. Each probability is per call (0 never, 1 always); `drop`, `throttle`, `fail` and
/// `lose_response` are drawn in that order and the first that fires wins; slowness is drawn
/// on its own and combines with any outcome.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RandomFaults {
    pub seed: u64,
    /// Close the connection before the call is processed.
    pub drop: f64,
    /// Answer the operation's throttling error.
    pub throttle: f64,
    /// Answer the operation's internal error (a 500).
    pub fail: f64,
    /// Process the call (and record its usage), then close the connection without answering:
    /// the client must resend, and only idempotency keeps the usage from counting twice.
    pub lose_response: f64,
    /// Answer `slow_delay` late.
    pub slow: f64,
    #[serde(rename = "slowMs", deserialize_with = "milliseconds")]
    pub slow_delay: Duration,
    /// BatchMeterUsage: leave each record unprocessed with this probability.
    pub unprocessed: f64,
}

fn milliseconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// An error response: awsJson1_1 `__type` code and HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct InjectedError {
    pub code: String,
    pub status: u16,
}

impl std::str::FromStr for InjectedError {
    type Err = String;

    /// `CODE` or `CODE:STATUS`; the status defaults to 500 for InternalServiceErrorException,
    /// 403 for authentication and authorization codes and 400 otherwise.
    fn from_str(text: &str) -> Result<Self, String> {
        let (code, status) = match text.split_once(':') {
            Some((code, status)) => {
                let status = status
                    .parse()
                    .map_err(|_| format!("{status:?} is not an HTTP status"))?;
                (code, status)
            }
            None => (text, default_status(text)),
        };
        if code.is_empty() {
            return Err("empty error code".to_owned());
        }
        Ok(Self {
            code: code.to_owned(),
            status,
        })
    }
}

impl TryFrom<String> for InjectedError {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

fn default_status(code: &str) -> u16 {
    // A `namespace#Code` form has the same status as the bare code.
    let code = code.rsplit('#').next().unwrap_or(code);
    match code {
        "InternalServiceErrorException" => 500,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "ExpiredTokenException"
        | "InvalidSignatureException"
        | "MissingAuthenticationTokenException" => 403,
        _ => 400,
    }
}

/// An error status that carries no AWS error code: what a load balancer, proxy or overloaded
/// front end sends instead of the service's JSON error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct StatusFault {
    /// 400 to 599.
    pub status: u16,
    pub body: StatusBody,
}

/// The body a [`StatusFault`] answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusBody {
    /// No body at all.
    Empty,
    /// An HTML error page (`text/html`).
    Html,
    /// JSON with only `{"message": "..."}`: no `__type`, so no error code.
    Message,
    /// A plain-text reason phrase (`text/plain`).
    Text,
}

impl std::str::FromStr for StatusFault {
    type Err = String;

    /// `STATUS` or `STATUS:BODY`, BODY one of `empty` (the default), `html`, `message`, `text`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (status, body) = match text.split_once(':') {
            Some((status, body)) => {
                let body = <StatusBody as clap::ValueEnum>::from_str(body, true).map_err(|_| {
                    format!("{body:?} is not a body kind (empty, html, message or text)")
                })?;
                (status, body)
            }
            None => (text, StatusBody::Empty),
        };
        let status = status
            .parse()
            .ok()
            .filter(|status| (400..=599).contains(status))
            .ok_or_else(|| format!("{status:?} is not an HTTP error status (400 to 599)"))?;
        Ok(Self { status, body })
    }
}

impl TryFrom<String> for StatusFault {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// Ways to spoil a successful answer at the HTTP level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseFault {
    /// Announce the whole body, send half of it, close the connection.
    TruncatedBody,
    /// 200 with a body that is not JSON (or XML, for STS): the first half of the real one.
    MalformedJson,
    /// 200 with an empty body.
    EmptyBody,
    /// 200 with `{}`: well-formed JSON without any of the answer's members (a MeterUsage answer
    /// without its `MeteringRecordId`). JSON APIs only: an XML answer is left as it is.
    EmptyObject,
    /// 200 with an 8 MiB body: the real one padded with whitespace.
    HugeBody,
    /// 200 with an HTML page (`text/html`), as a captive portal or proxy sends.
    HtmlPage,
}

/// Ways to spoil the token in an otherwise successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenFault {
    /// Signed by a different RSA key.
    BadSignature,
    /// The payload changed after signing.
    Tampered,
    /// `alg: none` and no signature.
    AlgNone,
    /// HS256, keyed with the public key text (the classic algorithm-confusion attack).
    AlgHs256,
    /// RS256 (PKCS#1 v1.5) instead of PS256.
    AlgRs256,
    WrongNonce,
    WrongProductCode,
    WrongKeyVersion,
    /// `publicKeyVersion` as a string instead of a JSON number.
    KeyVersionAsString,
    MissingIat,
    /// `iat` an hour in the future.
    FutureIat,
    /// `exp` an hour in the past.
    Expired,
    /// 200 with no Signature member.
    MissingSignature,
    /// A Signature that is not a JWT.
    NotAJwt,
    /// A validly signed token larger than 16 KiB.
    Oversized,
}

/// License Manager answers that are well-formed but not what was asked for, or not current:
/// what a client must refuse rather than trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LicenseFault {
    /// CheckoutLicense answers an `Expiration` a minute before its `IssuedAt`: the checkout has
    /// lapsed before it is answered (and holds no seat).
    ExpirationPassed,
    /// CheckoutLicense grants one unit fewer than asked of each counted entitlement
    /// (`EntitlementsAllowed[].Value`), and holds that many.
    FewerUnits,
    /// CheckoutLicense grants the negative of the units asked (`Value` "-1" for 1), holding none.
    NegativeUnits,
    /// GetLicense describes the license as another product's (`ProductSKU`, `ProductName`).
    OtherProductSku,
    /// ExtendLicenseConsumption extends, but answers without `Expiration`.
    ExtendWithoutExpiration,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn faults_read_from_json_as_on_the_command_line() {
        let faults: Faults = serde_json::from_str(
            r#"{"operations": ["meter-usage"], "throttleFirst": 2, "delayMs": 1500,
                "error": "DisabledApiException", "status": "503:html",
                "token": "bad-signature", "response": "truncated-body",
                "random": {"seed": 7, "loseResponse": 0.5, "slowMs": 10},
                "licenseFault": "other-product-sku"}"#,
        )
        .unwrap();
        assert_eq!(faults.throttle_first, 2);
        assert_eq!(faults.delay, Duration::from_millis(1500));
        assert_eq!(faults.error.as_ref().unwrap().status, 400);
        assert_eq!(faults.status.unwrap().body, StatusBody::Html);
        assert_eq!(faults.token, Some(TokenFault::BadSignature));
        assert_eq!(faults.response, Some(ResponseFault::TruncatedBody));
        assert_eq!(faults.license_fault, Some(LicenseFault::OtherProductSku));
        let random = faults.random.as_ref().unwrap();
        assert_eq!((random.seed, random.lose_response), (7, 0.5));
        assert_eq!(random.slow_delay, Duration::from_millis(10));
        assert!(faults.apply_to(Operation::MeterUsage));
        assert!(!faults.apply_to(Operation::RegisterUsage));
        assert!(
            Faults::default().apply_to(Operation::RegisterUsage),
            "no list: all"
        );
        assert_eq!(
            serde_json::from_str::<Faults>("{}").unwrap(),
            Faults::default()
        );
        for bad in [
            r#"{"dropFrist": 1}"#,
            r#"{"status": "200"}"#,
            r#"{"operations": ["nope"]}"#,
        ] {
            assert!(serde_json::from_str::<Faults>(bad).is_err(), "{bad}");
        }
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
}
