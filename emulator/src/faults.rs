//! The faults the emulator can inject, as configured (the service decides per call when they fire).

use std::time::Duration;

/// Faults, applied to RegisterUsage calls in order: the first `drop_first` calls lose their
/// connection, the next `throttle_first` are throttled, the next `fail_first` get a 500; after
/// that `error` (if set) answers every call, else `status` (if set) answers every call, else
/// `token` (if set) spoils every token.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub drop_first: u32,
    pub throttle_first: u32,
    pub fail_first: u32,
    /// Wait this long before answering each call.
    pub delay: Duration,
    pub error: Option<InjectedError>,
    /// Send the injected error's code only in the `X-Amzn-ErrorType` header, with an empty body.
    pub error_in_header_only: bool,
    /// An HTTP status with no AWS error code, as a load balancer or proxy answers.
    pub status: Option<StatusFault>,
    pub token: Option<TokenFault>,
    /// Spoil every successful answer at the HTTP level.
    pub response: Option<ResponseFault>,
}

/// An error response: awsJson1_1 `__type` code and HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Ways to spoil a successful answer at the HTTP level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResponseFault {
    /// Announce the whole body, send half of it, close the connection.
    TruncatedBody,
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// 200 with an empty body.
    EmptyBody,
    /// 200 with an 8 MiB JSON body.
    HugeBody,
    /// 200 with an HTML page (`text/html`), as a captive portal or proxy sends.
    HtmlPage,
}

/// Ways to spoil the token in an otherwise successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
