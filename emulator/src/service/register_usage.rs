//! RegisterUsage: entitlement for a container product, answered with a PS256 token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{
    check_entitlement, epoch_seconds, parse_input, product_code, Answer, Call, Service,
    ServiceError,
};
use crate::keys::{b64_json, shared_other_2048};
use crate::TokenFault;

pub(super) fn handle(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    let invalid = |message: &str| ServiceError::client("ValidationException", message);
    let product_code = product_code(&input)?;
    let key_version = input["PublicKeyVersion"]
        .as_u64()
        .filter(|version| *version >= 1)
        .ok_or_else(|| invalid("PublicKeyVersion must be an integer >= 1"))?;
    let nonce = match &input["Nonce"] {
        Value::Null => None,
        Value::String(nonce) if nonce.len() <= 255 => Some(nonce.as_str()),
        _ => return Err(invalid("Nonce must be a string of at most 255 characters")),
    };
    let config = &service.config;
    check_entitlement(config, product_code)?;
    if !u32::try_from(key_version).is_ok_and(|v| config.key_versions.contains(&v)) {
        return Err(ServiceError::client(
            "InvalidPublicKeyVersionException",
            "Public key version is not valid",
        ));
    }
    let now = epoch_seconds(call.now);
    let claims = json!({
        "productCode": product_code,
        "publicKeyVersion": key_version,
        "nonce": nonce,
        "iat": now,
    });
    let mut body = json!({ "Signature": token(service, claims, call.faults.token, now) });
    if call.faults.token == Some(TokenFault::MissingSignature) {
        body.as_object_mut().expect("object").remove("Signature");
    }
    service.count_token_issued();
    Ok(match &config.rotation_timestamp {
        None => Answer::ok(body),
        // Digit for digit, even a number no JSON library here would hold.
        Some(rotation) => {
            let mut text = body.to_string();
            text.pop();
            let separator = if text.len() > 1 { "," } else { "" };
            text.push_str(&format!(
                "{separator}\"PublicKeyRotationTimestamp\":{}}}",
                rotation.as_str()
            ));
            Answer::Raw {
                status: 200,
                content_type: Some("application/x-amz-json-1.1"),
                body: text.into_bytes(),
            }
        }
    })
}

/// The signed token, spoiled by `fault` if one is set.
fn token(service: &Service, mut claims: Value, fault: Option<TokenFault>, now: u64) -> String {
    let key = &service.config.signing_key;
    let ps256 = json!({ "alg": "PS256", "typ": "JWT" });
    let Some(fault) = fault else {
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
            claims["publicKeyVersion"] = json!(claims["publicKeyVersion"].as_u64().unwrap_or(1) + 1)
        }
        TokenFault::KeyVersionAsString => {
            claims["publicKeyVersion"] = json!(claims["publicKeyVersion"].to_string())
        }
        TokenFault::MissingIat => {
            claims.as_object_mut().expect("object").remove("iat");
        }
        TokenFault::FutureIat => claims["iat"] = json!(now + 3600),
        TokenFault::Expired => claims["exp"] = json!(now - 3600),
        TokenFault::MissingSignature => {}
        TokenFault::NotAJwt => return "this-is-not-a-jwt".to_owned(),
        TokenFault::Oversized => claims["padding"] = json!("x".repeat(17 * 1024)),
    }
    key.sign_jwt(&ps256, &claims)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{call_at, code_of, config, noon, with_faults};
    use super::*;
    use crate::{Faults, Operation, ResponseFault};

    fn request(code: &str) -> Value {
        json!({ "ProductCode": code, "PublicKeyVersion": 1, "Nonce": "n1" })
    }

    fn call(service: &Service, body: Value) -> Answer {
        call_at(service, Operation::RegisterUsage, &body, noon())
    }

    #[test]
    fn entitled_codes_get_a_token_bound_to_the_request() {
        let service = Service::new(config());
        let Answer::Json { status: 200, body } = call(&service, request("paid")) else {
            panic!("expected a token");
        };
        let token = body["Signature"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["productCode"], "paid");
        assert_eq!(claims["nonce"], "n1");
        assert_eq!(claims["publicKeyVersion"], 1);
        assert_eq!(
            claims["iat"],
            epoch_seconds(noon()),
            "iat is the injected clock"
        );
    }

    #[test]
    fn refusals_follow_the_product_lists_and_key_versions() {
        let service = Service::new(config());
        assert_eq!(
            code_of(&call(&service, request("unpaid"))).1,
            "CustomerNotEntitledException"
        );
        assert_eq!(
            code_of(&call(&service, request("unknown"))).1,
            "InvalidProductCodeException"
        );
        let v2 = json!({ "ProductCode": "paid", "PublicKeyVersion": 2 });
        assert_eq!(
            code_of(&call(&service, v2)).1,
            "InvalidPublicKeyVersionException"
        );
        let bad = json!({ "ProductCode": "p a i d", "PublicKeyVersion": 1 });
        assert_eq!(code_of(&call(&service, bad)).1, "ValidationException");
    }

    #[test]
    fn counted_faults_apply_in_order_then_clear() {
        let service = with_faults(Faults {
            drop_first: 1,
            throttle_first: 2,
            fail_first: 1,
            ..Faults::default()
        });
        let codes: Vec<(u16, String)> = (0..5)
            .map(|_| code_of(&call(&service, request("paid"))))
            .collect();
        assert_eq!(codes[0].1, "drop");
        assert_eq!(codes[1], (400, "ThrottlingException".into()));
        assert_eq!(codes[2], (400, "ThrottlingException".into()));
        assert_eq!(codes[3], (500, "InternalServiceErrorException".into()));
        assert_eq!(codes[4].0, 200);
    }

    #[test]
    fn the_quota_is_a_token_bucket_of_one_seconds_calls() {
        let mut config = config();
        config.quota_per_second = Some(5);
        let service = Service::new(config);
        let codes: Vec<u16> = (0..7)
            .map(|_| code_of(&call(&service, request("paid"))).0)
            .collect();
        assert_eq!(codes, [200, 200, 200, 200, 200, 400, 400]);
        let stats = service.stats();
        assert_eq!(
            (&stats["calls"], &stats["throttled"], &stats["entitled"]),
            (&json!(7), &json!(2), &json!(5))
        );
        assert_eq!(
            stats["operations"]["RegisterUsage"],
            json!({ "calls": 7, "throttled": 2 })
        );
        let later = noon() + Duration::from_millis(250);
        assert_eq!(
            code_of(&call_at(
                &service,
                Operation::RegisterUsage,
                &request("paid"),
                later
            ))
            .0,
            200,
            "refilled at 5/s"
        );
    }

    #[test]
    fn response_faults_spoil_only_successful_answers() {
        let service = with_faults(Faults {
            response: Some(ResponseFault::TruncatedBody),
            ..Faults::default()
        });
        let Answer::Truncated { sent, declared, .. } = call(&service, request("paid")) else {
            panic!("expected a truncated answer");
        };
        assert!(sent.len() < declared);
        assert_eq!(
            code_of(&call(&service, request("unpaid"))).1,
            "CustomerNotEntitledException"
        );
    }

    #[test]
    fn injected_errors_can_come_in_the_header_only_and_with_a_namespace() {
        let service = with_faults(Faults {
            error: Some(
                "com.amazonaws.marketplace#AccessDeniedException"
                    .parse()
                    .unwrap(),
            ),
            error_in_header_only: true,
            ..Faults::default()
        });
        assert_eq!(
            call(&service, request("paid")),
            Answer::ErrorHeader {
                status: 403,
                code: "com.amazonaws.marketplace#AccessDeniedException".into()
            }
        );
    }

    #[test]
    fn token_faults_use_the_injected_clock() {
        let service = with_faults(Faults {
            token: Some(TokenFault::FutureIat),
            ..Faults::default()
        });
        let Answer::Json { body, .. } = call(&service, request("paid")) else {
            panic!("expected a token");
        };
        let payload = body["Signature"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["iat"], epoch_seconds(noon()) + 3600);
    }
}
