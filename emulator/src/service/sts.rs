//! STS AssumeRoleWithWebIdentity, the last step of the Anywhere credential flow: a License
//! Manager access token and a buyer role in, temporary credentials out. STS speaks the awsQuery
//! protocol: a form-encoded POST, XML answers.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::{iso8601, opaque_id, Answer, Call, Family, Service, ServiceError};

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
/// Where the emulator's credential IDs are drawn from, apart from other opaque IDs.
const CREDENTIAL_IDS: u64 = 3 << 40;

/// Whether a request is an awsQuery call (a form-encoded body).
pub(super) fn is_query(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|content_type| {
        content_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    })
}

/// The form's `Action`.
pub(super) fn action(body: &[u8]) -> String {
    form(body).remove("Action").unwrap_or_default()
}

/// `application/x-www-form-urlencoded` fields, percent-decoded.
fn form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                index += 1;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn xml(status: u16, body: String) -> Answer {
    Answer::Raw {
        status,
        content_type: Some("text/xml"),
        body: body.into_bytes(),
    }
}

/// STS's error document: the code, whose fault it is, and the request ID.
pub(super) fn error(error: &ServiceError, request_id: &str) -> Answer {
    let fault = if error.status >= 500 {
        "Receiver"
    } else {
        "Sender"
    };
    xml(
        error.status,
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{fault}</Type><Code>{}</Code>\
             <Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
            escape(&error.code),
            escape(&error.message),
            escape(request_id)
        ),
    )
}

/// A form field within the model's length limits (in characters).
fn field<'a>(
    form: &'a BTreeMap<String, String>,
    name: &str,
    lengths: std::ops::RangeInclusive<usize>,
) -> Result<Option<&'a str>, ServiceError> {
    match form.get(name) {
        None => Ok(None),
        Some(value) if lengths.contains(&value.chars().count()) => Ok(Some(value)),
        Some(_) => Err(Family::Sts.validation(format!(
            "1 validation error detected: {name} must be {} to {} characters",
            lengths.start(),
            lengths.end()
        ))),
    }
}

fn required<'a>(
    form: &'a BTreeMap<String, String>,
    name: &str,
    lengths: std::ops::RangeInclusive<usize>,
) -> Result<&'a str, ServiceError> {
    field(form, name, lengths)?.ok_or_else(|| {
        Family::Sts.validation(format!(
            "1 validation error detected: Value null at '{name}' failed to satisfy constraint: \
             Member must not be null"
        ))
    })
}

pub(super) fn assume_role_with_web_identity(
    service: &Service,
    call: &Call,
) -> Result<Answer, ServiceError> {
    let form = form(call.body);
    service.check_permission(call.operation, false)?;
    let role_arn = required(&form, "RoleArn", 20..=2048)?;
    let session_name = required(&form, "RoleSessionName", 2..=64)?;
    if !session_name
        .chars()
        .all(|c| c.is_alphanumeric() || "_+=,.@-".contains(c))
    {
        return Err(Family::Sts
            .validation("1 validation error detected: RoleSessionName must match [\\w+=,.@-]*"));
    }
    let web_identity_token = required(&form, "WebIdentityToken", 4..=20000)?;
    let duration = match form.get("DurationSeconds") {
        None => service.config.session_ttl,
        Some(seconds) => seconds
            .parse::<u64>()
            .ok()
            .filter(|seconds| (900..=43200).contains(seconds))
            .map(Duration::from_secs)
            .ok_or_else(|| Family::Sts.validation("DurationSeconds must be from 900 to 43200"))?,
    };
    let (subject, credential_number) = {
        let mut licenses = service.licenses();
        let token = licenses.access_token(web_identity_token).ok_or_else(|| {
            ServiceError::client(
                "InvalidIdentityToken",
                "The web identity token is not a License Manager access token",
            )
        })?;
        if token.expires <= call.now {
            return Err(ServiceError::client(
                "ExpiredTokenException",
                "Token expired: the access token is past its expiration",
            ));
        }
        let subject = token.subject.clone();
        (subject, licenses.next_id())
    };
    if !service.config.buyer_roles.contains(role_arn) {
        return Err(ServiceError::new(
            403,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        ));
    }
    Ok(xml(
        200,
        credentials_xml(
            role_arn,
            session_name,
            &subject,
            credential_number,
            call.now + duration,
            call.request_id,
        ),
    ))
}

/// The response document, with credentials derived from `number` so each call's differ.
fn credentials_xml(
    role_arn: &str,
    session_name: &str,
    subject: &str,
    number: u64,
    expiration: SystemTime,
    request_id: &str,
) -> String {
    let id = opaque_id(CREDENTIAL_IDS + number)
        .replace('-', "")
        .to_ascii_uppercase();
    let account = role_arn.split(':').nth(4).unwrap_or_default();
    let role_name = role_arn.rsplit('/').next().unwrap_or(role_arn);
    let assumed_role_arn =
        format!("arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}");
    format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"{XMLNS}\">\
         <AssumeRoleWithWebIdentityResult>\
         <SubjectFromWebIdentityToken>{subject}</SubjectFromWebIdentityToken>\
         <Audience>sts.amazonaws.com</Audience>\
         <AssumedRoleUser><Arn>{}</Arn><AssumedRoleId>AROA{}:{}</AssumedRoleId></AssumedRoleUser>\
         <Credentials><AccessKeyId>ASIA{}</AccessKeyId>\
         <SecretAccessKey>emulated/{id}</SecretAccessKey>\
         <SessionToken>emulated-session-{id}</SessionToken>\
         <Expiration>{}</Expiration></Credentials>\
         <Provider>openid-license-manager.amazonaws.com</Provider>\
         </AssumeRoleWithWebIdentityResult>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
         </AssumeRoleWithWebIdentityResponse>",
        escape(&assumed_role_arn),
        &id[..16],
        escape(session_name),
        &id[..16],
        iso8601(expiration),
        escape(request_id),
        subject = escape(subject),
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::{config, noon, signed_call};
    use super::super::Request;
    use super::*;
    use crate::{Operation, RefreshToken};

    const ROLE: &str = "arn:aws:iam::111122223333:role/LicenseConsumer";

    /// The `<Code>` of an STS error document.
    pub fn error_code(body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        text.split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map(|(code, _)| code.to_owned())
            .unwrap_or_default()
    }

    fn service() -> Service {
        let mut config = config()
            .refresh_token(RefreshToken::new("refresh-1"))
            .buyer_role(ROLE);
        config.access_token_ttl = Duration::from_secs(60);
        config.session_ttl = Duration::from_secs(120);
        Service::new(config)
    }

    /// GetAccessToken, unsigned, at `now`.
    fn access_token(service: &Service, now: SystemTime) -> String {
        let body = serde_json::json!({ "Token": "refresh-1" });
        match signed_call(service, Operation::GetAccessToken, &body, None, now) {
            Answer::Json { status: 200, body } => body["AccessToken"].as_str().unwrap().to_owned(),
            other => panic!("expected an access token, got {other:?}"),
        }
    }

    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// POSTs `fields` as an STS form, unsigned.
    fn post_form(service: &Service, fields: &[(&str, &str)], now: SystemTime) -> Answer {
        let body = fields
            .iter()
            .map(|(name, value)| format!("{name}={}", encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let request = Request {
            target: None,
            content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
            authorization: None,
            body: body.as_bytes(),
        };
        service.handle(&request, now).answer
    }

    fn assume(service: &Service, fields: &[(&str, &str)], now: SystemTime) -> (u16, String) {
        match post_form(service, fields, now) {
            Answer::Raw {
                status,
                content_type: Some("text/xml"),
                body,
            } => (status, String::from_utf8(body).unwrap()),
            other => panic!("expected XML, got {other:?}"),
        }
    }

    fn request<'a>(token: &'a str, role: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role),
            ("RoleSessionName", "gate-session"),
            ("WebIdentityToken", token),
        ]
    }

    #[test]
    fn a_live_access_token_and_a_buyer_role_give_credentials() {
        let service = service();
        let token = access_token(&service, noon());
        let (status, xml) = assume(&service, &request(&token, ROLE), noon());
        assert_eq!(status, 200, "{xml}");
        assert!(xml.starts_with("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"));
        assert!(xml.contains("<AccessKeyId>ASIA"));
        assert!(
            xml.contains("<Expiration>2026-11-23T12:36:56Z</Expiration>"),
            "session TTL: {xml}"
        );
        assert!(xml.contains(
            "<Arn>arn:aws:sts::111122223333:assumed-role/LicenseConsumer/gate-session</Arn>"
        ));
        assert!(xml.contains("<RequestId>emulated-"));
        let mut longer = request(&token, ROLE);
        longer.push(("DurationSeconds", "900"));
        let (_, xml) = assume(&service, &longer, noon());
        assert!(
            xml.contains("<Expiration>2026-11-23T12:49:56Z</Expiration>"),
            "{xml}"
        );
    }

    #[test]
    fn bad_tokens_and_roles_get_stss_own_codes() {
        let service = service();
        let token = access_token(&service, noon());
        let code =
            |fields: &[(&str, &str)], now| error_code(assume(&service, fields, now).1.as_bytes());
        assert_eq!(
            code(&request("not-a-token", ROLE), noon()),
            "InvalidIdentityToken"
        );
        let later = noon() + Duration::from_secs(60);
        assert_eq!(code(&request(&token, ROLE), later), "ExpiredTokenException");
        let (status, xml) = assume(
            &service,
            &request(&token, "arn:aws:iam::1:role/Other"),
            noon(),
        );
        assert_eq!(
            (status, error_code(xml.as_bytes())),
            (403, "AccessDenied".into())
        );
        assert!(xml.contains("<Type>Sender</Type>"));
        let mut short = request(&token, ROLE);
        short[3] = ("RoleSessionName", "x");
        assert_eq!(code(&short, noon()), "ValidationError");
        let mut bad_duration = request(&token, ROLE);
        bad_duration.push(("DurationSeconds", "60"));
        assert_eq!(code(&bad_duration, noon()), "ValidationError");
        assert_eq!(code(&request(&token, ROLE)[..4], noon()), "ValidationError");
        let other_action = [("Action", "GetCallerIdentity")];
        assert_eq!(code(&other_action, noon()), "InvalidAction");
    }

    #[test]
    fn denial_faults_and_throttling_speak_xml() {
        let mut config = config().deny(Operation::AssumeRoleWithWebIdentity);
        config.faults.throttle_first = 1;
        let service = Service::new(config);
        let code = || {
            error_code(
                assume(&service, &request("token", ROLE), noon())
                    .1
                    .as_bytes(),
            )
        };
        assert_eq!(code(), "Throttling");
        assert_eq!(code(), "AccessDenied");
        let mut failing = super::super::tests::config();
        failing.faults.fail_first = 1;
        let (status, xml) = assume(&Service::new(failing), &request("t", ROLE), noon());
        assert_eq!(
            (status, error_code(xml.as_bytes())),
            (500, "InternalFailure".into())
        );
        assert!(xml.contains("<Type>Receiver</Type>"));
    }

    #[test]
    fn response_faults_spoil_xml_answers_too() {
        let service = service();
        let token = access_token(&service, noon());
        service.set_faults(crate::Faults {
            response: Some(crate::ResponseFault::TruncatedBody),
            ..crate::Faults::default()
        });
        let answer = post_form(&service, &request(&token, ROLE), noon());
        let Answer::Truncated {
            content_type,
            sent,
            declared,
        } = answer
        else {
            panic!("expected a truncated answer");
        };
        assert_eq!(content_type, "text/xml");
        assert!(sent.len() < declared);
    }

    #[test]
    fn forms_decode_and_xml_escapes() {
        let fields = form(b"Action=Assume&RoleArn=arn%3Aaws%3Aiam&Name=a+b&Empty=&Bad=%zz");
        assert_eq!(fields["RoleArn"], "arn:aws:iam");
        assert_eq!(fields["Name"], "a b");
        assert_eq!(fields["Empty"], "");
        assert_eq!(fields["Bad"], "%zz");
        assert_eq!(escape("<a & 'b'>"), "&lt;a &amp; &apos;b&apos;&gt;");
        assert!(is_query(Some("application/x-www-form-urlencoded")));
        assert!(!is_query(Some("application/x-amz-json-1.1")));
        assert!(!is_query(None));
    }
}
